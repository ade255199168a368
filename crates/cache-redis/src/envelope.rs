//! The value stored under a key: an authenticated envelope around a serialized artifact.
//!
//! All integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `STRTREDS` |
//! | 8..12 | format version, u32 = 1 |
//! | 12..16 | flags, u32 (bit 0: the payload is zstd; other bits must be 0) |
//! | 16..88 | the whole cache key, `CacheKey::to_bytes` (must equal the key looked up) |
//! | 88..96 | artifact length, u64 (after decompression) |
//! | 96..104 | payload length, u64 (must equal value length - 136) |
//! | 104..136 | tag: keyed BLAKE3 of bytes 0..104 followed by the payload |
//! | 136.. | payload: the artifact, or its zstd frame |
//!
//! The tag covers the key, both lengths and the stored bytes, and is checked (in constant time)
//! before anything is decompressed or deserialized.

use cache_core::CacheKey;

/// The envelope's magic number.
const MAGIC: [u8; 8] = *b"STRTREDS";
/// The envelope's format version.
const VERSION: u32 = 1;
const FLAG_ZSTD: u32 = 1;
const TAG_AT: usize = 104;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 136;
/// The context string of the tag key, derived from the caller's MAC key.
const TAG_CONTEXT: &str = "strata cache-redis 2026-11-30 envelope v1 tag key";

/// Why a stored value is not a valid envelope for the key looked up. Any of these is a miss:
/// the value is deleted (best effort) and counted as `rejected`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadEntry {
    /// Shorter than the header.
    #[error("value of {len} bytes is shorter than the envelope header")]
    Short {
        /// The value's length.
        len: u64,
    },
    /// The value is longer than `max_artifact_bytes` plus the header; it was not downloaded.
    #[error("value of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The value's length.
        len: u64,
        /// The largest value accepted.
        limit: u64,
    },
    /// Not an envelope (wrong magic).
    #[error("wrong magic")]
    Magic,
    /// An envelope of another format version.
    #[error("format version {0}, expected {VERSION}")]
    Version(u32),
    /// Unknown flag bits.
    #[error("unknown flags {0:#x}")]
    Flags(u32),
    /// The envelope of another key (another module, form, ABI, tier or engine).
    #[error("envelope of another key")]
    OtherKey,
    /// The lengths disagree with each other or with the value.
    #[error("inconsistent lengths")]
    Length,
    /// The tag does not match: damaged, forged, or written under another MAC key.
    #[error("wrong tag")]
    Tag,
    /// The payload does not decompress to the announced length.
    #[error("payload does not decompress to its announced length")]
    Decompress,
    /// The value is not a string (another type was stored under the key).
    #[error("not a string value")]
    WrongType,
    /// Wasmtime refused the authenticated artifact (for example built by another build).
    #[error("wasmtime refused the artifact: {0}")]
    Refused(String),
}

/// The key of the tags, derived from the caller's secret.
pub(crate) fn tag_key(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key(TAG_CONTEXT, secret)
}

fn tag(tag_key: &[u8; 32], header: &[u8], payload: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(tag_key);
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Wraps `artifact` (already compressed into `payload` when `zstd`) for `key`.
pub(crate) fn seal(
    tag_key: &[u8; 32],
    key: &CacheKey,
    artifact_len: u64,
    payload: &[u8],
    zstd: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(if zstd { FLAG_ZSTD } else { 0 }).to_le_bytes());
    out.extend_from_slice(&key.to_bytes());
    out.extend_from_slice(&artifact_len.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    debug_assert_eq!(out.len(), TAG_AT);
    let tag = tag(tag_key, &out, payload);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The tag of a value hashed as it arrives: [`Tagger::feed`] with every longer prefix of the
/// value, then [`open`] with [`Tagger::finish`]. Hashing trusts nothing in the value: it covers
/// bytes `0..104` and everything from 136, whatever they say.
pub(crate) struct Tagger {
    hasher: blake3::Hasher,
    /// Bytes of the value hashed so far (0, or `HEADER_LEN` and more).
    done: usize,
}

impl Tagger {
    pub(crate) fn new(tag_key: &[u8; 32]) -> Self {
        Tagger {
            hasher: blake3::Hasher::new_keyed(tag_key),
            done: 0,
        }
    }

    /// Hashes what `prefix` adds to the prefix fed before. Every prefix fed must be a prefix of
    /// the value later given to [`open`]: bytes already hashed are not read again (the reader
    /// feeds the buffer it fills, whose filled bytes never change).
    pub(crate) fn feed(&mut self, prefix: &[u8]) {
        if prefix.len() < HEADER_LEN {
            return;
        }
        if self.done == 0 {
            self.hasher.update(&prefix[..TAG_AT]);
            self.done = HEADER_LEN;
        }
        if prefix.len() > self.done {
            self.hasher.update(&prefix[self.done..]);
            self.done = prefix.len();
        }
    }

    /// The tag of `value`, the whole of what was fed in parts.
    pub(crate) fn finish(mut self, value: &[u8]) -> blake3::Hash {
        self.feed(value);
        self.hasher.finalize()
    }
}

/// A checked envelope: the payload's tag matched.
pub(crate) struct Opened<'a> {
    pub(crate) payload: &'a [u8],
    pub(crate) zstd: bool,
    pub(crate) artifact_len: u64,
}

impl Opened<'_> {
    /// The artifact bytes: the payload itself, or its decompression, bounded by the length the
    /// (authenticated) header announces.
    pub(crate) fn artifact(&self) -> Result<std::borrow::Cow<'_, [u8]>, BadEntry> {
        if !self.zstd {
            return Ok(self.payload.into());
        }
        let len = usize::try_from(self.artifact_len).map_err(|_| BadEntry::Length)?;
        let out = zstd::bulk::decompress(self.payload, len).map_err(|_| BadEntry::Decompress)?;
        if out.len() != len {
            return Err(BadEntry::Decompress);
        }
        Ok(out.into())
    }
}

/// Checks `value` as the envelope of `key` under the key of `tagger`, with an artifact of at
/// most `max_artifact` bytes. Nothing after the header is trusted before the tag matched.
/// `tagger` has hashed parts of `value` already, or nothing ([`Tagger::new`]).
pub(crate) fn open<'a>(
    key: &CacheKey,
    value: &'a [u8],
    max_artifact: u64,
    tagger: Tagger,
) -> Result<Opened<'a>, BadEntry> {
    if value.len() < HEADER_LEN {
        return Err(BadEntry::Short {
            len: value.len() as u64,
        });
    }
    let u32_at = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    if value[..8] != MAGIC {
        return Err(BadEntry::Magic);
    }
    if u32_at(8) != VERSION {
        return Err(BadEntry::Version(u32_at(8)));
    }
    let flags = u32_at(12);
    if flags & !FLAG_ZSTD != 0 {
        return Err(BadEntry::Flags(flags));
    }
    if value[16..88] != key.to_bytes() {
        return Err(BadEntry::OtherKey);
    }
    let (artifact_len, payload_len) = (u64_at(88), u64_at(96));
    let payload = &value[HEADER_LEN..];
    let zstd = flags & FLAG_ZSTD != 0;
    if payload_len != payload.len() as u64
        || artifact_len > max_artifact
        || (!zstd && artifact_len != payload_len)
    {
        return Err(BadEntry::Length);
    }
    let expected: [u8; 32] = value[TAG_AT..HEADER_LEN].try_into().expect("32 bytes");
    // `blake3::Hash`'s equality is constant-time.
    if tagger.finish(value) != blake3::Hash::from_bytes(expected) {
        return Err(BadEntry::Tag);
    }
    Ok(Opened {
        payload,
        zstd,
        artifact_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::{Abi, EngineFingerprint, Form, Tier, WasmHash};

    fn key(n: u8) -> CacheKey {
        CacheKey::from_parts(
            WasmHash::from_bytes([n; 32]),
            Form::Runtime { rewrite: 1 },
            Abi::Strata,
            Tier::Cranelift,
            EngineFingerprint::from_bytes([9; 32]),
        )
    }

    fn open_all<'a>(
        tag_key: &[u8; 32],
        key: &CacheKey,
        value: &'a [u8],
        max: u64,
    ) -> Result<Opened<'a>, BadEntry> {
        open(key, value, max, Tagger::new(tag_key))
    }

    #[test]
    fn a_tag_hashed_in_parts_as_the_value_arrives_is_the_tag_of_the_whole() {
        let secret = tag_key(b"fleet secret");
        let artifact: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sealed = seal(&secret, &key(1), artifact.len() as u64, &artifact, false);
        for step in [1, 100, 135, 136, 137, 4096, 131_072, 1 << 20] {
            let mut tagger = Tagger::new(&secret);
            let mut at = 0;
            while at < sealed.len() {
                at = (at + step).min(sealed.len());
                tagger.feed(&sealed[..at]);
            }
            let opened = open(&key(1), &sealed, 1 << 20, tagger).expect("valid");
            assert_eq!(
                &*opened.artifact().expect("plain"),
                &artifact[..],
                "step {step}"
            );
            // Fed with part of the value only, then opened with a damaged rest: refused.
            let mut tagger = Tagger::new(&secret);
            tagger.feed(&sealed[..step.min(sealed.len() - 1)]);
            let mut bad = sealed.clone();
            *bad.last_mut().expect("bytes") ^= 1;
            assert_eq!(
                open(&key(1), &bad, 1 << 20, tagger).err(),
                Some(BadEntry::Tag),
                "step {step}"
            );
        }
    }

    #[test]
    fn every_damage_of_an_envelope_is_refused() {
        let secret = tag_key(b"fleet secret");
        let artifact = b"an artifact, not really".to_vec();
        let sealed = seal(&secret, &key(1), artifact.len() as u64, &artifact, false);
        let opened = open_all(&secret, &key(1), &sealed, 1 << 20).expect("valid");
        assert_eq!(&*opened.artifact().expect("plain"), &artifact[..]);

        assert_eq!(
            open_all(&secret, &key(2), &sealed, 1 << 20).err(),
            Some(BadEntry::OtherKey)
        );
        assert_eq!(
            open_all(&tag_key(b"other"), &key(1), &sealed, 1 << 20).err(),
            Some(BadEntry::Tag)
        );
        assert_eq!(
            open_all(&secret, &key(1), &sealed[..sealed.len() - 1], 1 << 20).err(),
            Some(BadEntry::Length)
        );
        assert_eq!(
            open_all(&secret, &key(1), &sealed[..10], 1 << 20).err(),
            Some(BadEntry::Short { len: 10 })
        );
        assert_eq!(
            open_all(&secret, &key(1), &sealed, 4).err(),
            Some(BadEntry::Length)
        );
        // Every single flipped bit is caught, wherever it is.
        for at in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x10;
            assert!(
                open_all(&secret, &key(1), &bad, 1 << 20).is_err(),
                "byte {at}"
            );
        }
    }

    #[test]
    fn compressed_payloads_are_bounded_by_their_authenticated_length() {
        let secret = tag_key(b"fleet secret");
        let artifact = vec![7u8; 100_000];
        let payload = zstd::bulk::compress(&artifact, 3).expect("compress");
        let sealed = seal(&secret, &key(1), artifact.len() as u64, &payload, true);
        let opened = open_all(&secret, &key(1), &sealed, 1 << 20).expect("valid");
        assert_eq!(&*opened.artifact().expect("decompresses"), &artifact[..]);
        // A header announcing fewer bytes than the frame holds (sealed with the key: only a
        // holder of the key could do this) still cannot make the reader allocate more.
        let sealed = seal(&secret, &key(1), 10, &payload, true);
        let opened = open_all(&secret, &key(1), &sealed, 1 << 20).expect("tag matches");
        assert_eq!(opened.artifact().err(), Some(BadEntry::Decompress));
        // Over the artifact limit: refused before decompressing.
        let sealed = seal(&secret, &key(1), artifact.len() as u64, &payload, true);
        assert_eq!(
            open_all(&secret, &key(1), &sealed, 1000).err(),
            Some(BadEntry::Length)
        );
    }
}
