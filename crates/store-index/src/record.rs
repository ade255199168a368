//! The envelope of every record on disk: magic number, format version, length, payload and sha256
//! checksum ([`encode_raw`], [`decode_raw`]), postcard payloads inside it ([`encode_record`],
//! [`decode_record`]), and the store marker record.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::IndexError;

/// The on-disk format version of every record this crate encodes.
///
/// Bump it on any change of an encoding or of a hash definition; older builds then refuse the new
/// records with [`IndexError::Incompatible`] instead of misreading them.
///
/// Version 2 added key-value spaces to the index and the state root (docs/STORE-FORMAT.md).
pub const FORMAT_VERSION: u32 = 2;

/// Which record a byte string holds; each kind has its own magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordKind {
    /// The per-commit index (`<root>/index`).
    Index,
    /// A memory image's page tree (`memory/<module>.tree`).
    Tree,
    /// A memory delta (`memory/<module>.diff`).
    Delta,
    /// The store marker (`<store>/FORMAT`).
    Store,
}

impl RecordKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            RecordKind::Index => b"STRATAix",
            RecordKind::Tree => b"STRATAtr",
            RecordKind::Delta => b"STRATAdf",
            RecordKind::Store => b"STRATAst",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Index => "index",
            RecordKind::Tree => "page tree",
            RecordKind::Delta => "memory delta",
            RecordKind::Store => "store marker",
        })
    }
}

const HEADER: usize = 8 + 4 + 8;
const CHECKSUM: usize = 32;

/// Wraps a payload: magic (8) | version u32 LE | payload length u64 LE | payload | sha256 of all before.
pub fn encode_raw(kind: RecordKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + CHECKSUM);
    out.extend_from_slice(kind.magic());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Unwraps a record written by [`encode_raw`]. The version is checked before the checksum, so a
/// record of another version is reported as [`IndexError::Incompatible`], never as corruption.
pub fn decode_raw(kind: RecordKind, bytes: &[u8]) -> Result<&[u8], IndexError> {
    let corrupt = |reason: String| IndexError::Corrupted { kind, reason };
    if bytes.len() < 12 || &bytes[..8] != kind.magic() {
        return Err(corrupt("bad magic number".into()));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    let found = u32::from_le_bytes(v);
    if found != FORMAT_VERSION {
        return Err(IndexError::Incompatible {
            kind,
            found,
            expected: FORMAT_VERSION,
        });
    }
    if bytes.len() < HEADER + CHECKSUM {
        return Err(corrupt("truncated header".into()));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(l);
    if Some(bytes.len() as u64) != len.checked_add((HEADER + CHECKSUM) as u64) {
        return Err(corrupt(format!(
            "length {} does not match payload length {len}",
            bytes.len()
        )));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if Sha256::digest(body).as_slice() != sum {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(&body[HEADER..])
}

/// Encodes a serde value with postcard inside a checksummed envelope.
pub fn encode_record<T: Serialize>(kind: RecordKind, value: &T) -> Result<Vec<u8>, IndexError> {
    let payload = postcard::to_stdvec(value).map_err(|e| IndexError::Encode {
        kind,
        reason: e.to_string(),
    })?;
    Ok(encode_raw(kind, &payload))
}

/// Decodes a record written by [`encode_record`].
pub fn decode_record<T: for<'de> Deserialize<'de>>(
    kind: RecordKind,
    bytes: &[u8],
) -> Result<T, IndexError> {
    let payload = decode_raw(kind, bytes)?;
    let (value, rest) = postcard::take_from_bytes(payload).map_err(|e| IndexError::Corrupted {
        kind,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(IndexError::Corrupted {
            kind,
            reason: "trailing bytes after the record".into(),
        });
    }
    Ok(value)
}

/// The store marker record (`<store>/FORMAT`): its version is the store's format version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMarker {
    /// Free text naming the writer, for humans.
    pub created_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_checks() {
        let bytes = encode_raw(RecordKind::Delta, b"payload");
        assert_eq!(decode_raw(RecordKind::Delta, &bytes).unwrap(), b"payload");
        // The wrong kind of record is refused as corrupt.
        assert!(matches!(
            decode_raw(RecordKind::Tree, &bytes),
            Err(IndexError::Corrupted { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_raw(RecordKind::Delta, &longer),
            Err(IndexError::Corrupted { .. })
        ));
        let marker = StoreMarker {
            created_by: "test".into(),
        };
        let bytes = encode_record(RecordKind::Store, &marker).unwrap();
        let back: StoreMarker = decode_record(RecordKind::Store, &bytes).unwrap();
        assert_eq!(back, marker);
    }
}
