//! The typed identifiers [`ModuleId`], [`Root`], [`Namespace`] and [`Digest`], and their hex form.
//!
//! Each is a newtype over `[u8; 32]`. Outside this crate an id is made only by hashing
//! ([`ModuleId::of_wasm`], [`Digest::sha256`], the functions of [`hash`](crate::hash)), by parsing
//! exactly 64 hex digits (`from_hex`, [`FromStr`](std::str::FromStr)), or by deserializing a
//! record that stored one (the store's records are checksummed). There is no public constructor
//! from raw bytes.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::IndexError;

macro_rules! hash_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Parses exactly 64 hex digits (either case).
            pub fn from_hex(hex: &str) -> Result<Self, IndexError> {
                parse_hex(hex).map(Self)
            }

            /// The 64 lower-case hex digits of the hash.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }

            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IndexError;
            fn from_str(s: &str) -> Result<Self, IndexError> {
                Self::from_hex(s)
            }
        }
    };
}

hash_newtype!(
    /// A module's identity: the sha256 of its original wasm bytes.
    ModuleId
);
hash_newtype!(
    /// The merkle root of a state; it names a commit and its directory.
    Root
);
hash_newtype!(
    /// A key-value space of the store: the key space of one module today, of one contract
    /// instance once several instances share a code. Each has its own data, quota and root.
    Namespace
);
hash_newtype!(
    /// Any other sha256 hash (pages, tree nodes, blobs, files), always domain-separated.
    Digest
);

impl ModuleId {
    /// The id of a module: sha256 of its wasm bytes (no domain tag, so it matches `sha256sum`).
    pub fn of_wasm(wasm: &[u8]) -> ModuleId {
        ModuleId(Sha256::digest(wasm).into())
    }

    /// Any id, for tests that forge records.
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> ModuleId {
        ModuleId(bytes)
    }
}

impl Namespace {
    /// The key space of a module: the module id's bytes (a module has one key space).
    pub fn of_module(id: &ModuleId) -> Namespace {
        Namespace(id.0)
    }

    /// The key space of one instance of a code: sha256 of a tag, the code's id and the
    /// instance's label (for example a contract address), so instances of one code never share
    /// a key space with each other or with the code's own module space.
    pub fn of_instance(code: &ModuleId, label: &[u8]) -> Namespace {
        let mut h = Sha256::new();
        h.update(b"strata/v1/namespace\0");
        h.update(code.0);
        h.update((label.len() as u64).to_le_bytes());
        h.update(label);
        Namespace(h.finalize().into())
    }

    /// A key space named by the embedder (for example a CosmWasm contract's address, whose
    /// space outlives a migration to another code): sha256 of another tag and `name`, so it never
    /// equals a module's or an instance's space.
    pub fn named(name: &[u8]) -> Namespace {
        let mut h = Sha256::new();
        h.update(b"strata/v1/named-namespace\0");
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        Namespace(h.finalize().into())
    }
}

impl Root {
    /// The root with these raw bytes: only for this crate's hash functions.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Root {
        Root(bytes)
    }
}

impl Digest {
    /// The digest with these raw bytes: only for this crate's hash functions and decoders.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The plain (untagged) sha256 of `data`, for file identities and checksums.
    pub fn sha256(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }
}

fn parse_hex(hex: &str) -> Result<[u8; 32], IndexError> {
    let invalid = || IndexError::InvalidHex {
        input: hex.chars().take(80).collect(),
    };
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(invalid());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = digit(pair[0]).ok_or_else(invalid)?;
        let lo = digit(pair[1]).ok_or_else(invalid)?;
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn to_hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let id = ModuleId::of_wasm(b"abc");
        assert_eq!(
            id.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ModuleId::from_hex(&id.to_hex().to_uppercase()).unwrap(), id);
        assert!(matches!(
            ModuleId::from_hex("abc"),
            Err(IndexError::InvalidHex { .. })
        ));
        let mut bad = id.to_hex();
        bad.replace_range(0..1, "g");
        assert!(Root::from_hex(&bad).is_err());
        assert!(Root::from_hex(&format!("{}0", id.to_hex())).is_err());
        assert_eq!(format!("{id}"), id.to_hex());
        assert!(format!("{id:?}").starts_with("ModuleId("));
        assert_eq!(id.as_bytes(), Digest::sha256(b"abc").as_bytes());
    }
}
