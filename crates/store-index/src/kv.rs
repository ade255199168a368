//! Key-value spaces in the index: [`KvEntry`] (one namespace of a commit: its counts, its state
//! hash and the table files it is read from) and [`KvHash`], the history-independent hash of a
//! key-value set.
//!
//! [`KvHash`] is the lattice hash LtHash (Bellare and Micciancio's incremental hashing over
//! `Z_{2^16}^{1024}`, analysed for this use by Lewi, Kim, Maykov and Weis, "Securing Update
//! Propagation with Homomorphic Hashing", 2019), as implemented by the maintained
//! `solana-lattice-hash` crate that Solana's accounts state uses. The hash of a set is the sum of
//! the hashes of its elements, so adding or removing one (key, value) pair costs one element hash,
//! whatever the size of the set, and the result does not depend on the order of the changes or
//! on how the set is split between a base table and its deltas. No membership proof: a set hash
//! proves nothing about one key without the whole set.

use serde::{Deserialize, Serialize};
use solana_lattice_hash::lt_hash::LtHash;

use crate::record::RecordKind;
use crate::{Digest, IndexError, Namespace, hash};

/// The most table levels of a key-value space: a base, a middle delta and a top delta.
pub const KV_MAX_LEVELS: usize = 3;

/// Bytes of an encoded [`KvHash`].
const KV_HASH_BYTES: usize = LtHash::NUM_ELEMENTS * 2;

/// The history-independent hash of a set of (key, value) pairs (LtHash, see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct KvHash(LtHash);

impl std::fmt::Debug for KvHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvHash({})", self.checksum())
    }
}

impl Default for KvHash {
    fn default() -> Self {
        KvHash(LtHash::identity())
    }
}

fn element(key: &[u8], value: &[u8]) -> LtHash {
    let mut h = blake3::Hasher::new();
    h.update(b"strata/v1/kv-entry\0");
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(value);
    LtHash::with(&h)
}

impl KvHash {
    /// The hash of the empty set.
    pub fn empty() -> KvHash {
        KvHash::default()
    }

    /// Adds the pair (`key`, `value`) to the set.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.0.mix_in(&element(key, value));
    }

    /// Removes the pair (`key`, `value`), which must be in the set.
    pub fn remove(&mut self, key: &[u8], value: &[u8]) {
        self.0.mix_out(&element(key, value));
    }

    /// The 32-byte checksum of the hash (blake3 of its 2 KiB), what the root covers.
    pub fn checksum(&self) -> Digest {
        Digest::from_bytes(self.0.checksum().0)
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.0.0.iter().flat_map(|e| e.to_le_bytes()).collect()
    }

    fn from_bytes(bytes: &[u8]) -> Option<KvHash> {
        if bytes.len() != KV_HASH_BYTES {
            return None;
        }
        let mut out = LtHash::identity();
        for (e, b) in out.0.iter_mut().zip(bytes.chunks_exact(2)) {
            *e = u16::from_le_bytes([b[0], b[1]]);
        }
        Some(KvHash(out))
    }
}

impl Serialize for KvHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_bytes())
    }
}

/// One sorted table file of a key-value space (`kv/<namespace>.<level>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRef {
    /// Number of entries (tombstones included).
    pub entries: u64,
    /// Size in bytes of the file.
    pub file_len: u64,
    /// sha256 of the file: its identity.
    pub file_hash: Digest,
}

/// One key-value space of a commit.
///
/// Invariants, checked by [`new`](Self::new) and by [`CommitIndex::decode`](crate::CommitIndex::decode):
/// at least one key (an empty space has no entry, so the root does not depend on whether a space
/// was ever written), between 1 and [`KV_MAX_LEVELS`] tables, the base (level 0) first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KvEntry {
    namespace: Namespace,
    keys: u64,
    bytes: u64,
    hash: KvHash,
    levels: Vec<TableRef>,
}

impl KvEntry {
    /// A space of `keys` keys holding `bytes` bytes of keys and values, whose pairs hash to
    /// `hash`, read from `levels` (base first, newest last).
    pub fn new(
        namespace: Namespace,
        keys: u64,
        bytes: u64,
        hash: KvHash,
        levels: Vec<TableRef>,
    ) -> Result<KvEntry, IndexError> {
        let entry = KvEntry {
            namespace,
            keys,
            bytes,
            hash,
            levels,
        };
        entry.check().map_err(|reason| IndexError::Invalid {
            kind: RecordKind::Index,
            reason,
        })?;
        Ok(entry)
    }

    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.keys == 0 {
            return Err("empty key-value space");
        }
        if self.levels.is_empty() || self.levels.len() > KV_MAX_LEVELS {
            return Err("key-value space without tables or with too many");
        }
        Ok(())
    }

    /// The key space.
    pub fn namespace(&self) -> Namespace {
        self.namespace
    }

    /// Number of keys.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The set hash of the pairs.
    pub fn hash(&self) -> &KvHash {
        &self.hash
    }

    /// The tables, base first.
    pub fn levels(&self) -> &[TableRef] {
        &self.levels
    }

    /// The space's root, its leaf in the state tree.
    pub fn root(&self) -> Digest {
        hash::kv_root(
            &self.namespace,
            self.keys,
            self.bytes,
            &self.hash.checksum(),
        )
    }

    /// The files of this space inside its commit directory (relative paths).
    pub fn files(&self) -> Vec<String> {
        let ns = self.namespace.to_hex();
        (0..self.levels.len())
            .map(|l| format!("kv/{ns}.{l}"))
            .collect()
    }
}

/// The serde shape of [`KvEntry`], decoded before any check.
#[derive(Deserialize)]
pub(crate) struct RawKvEntry {
    namespace: Namespace,
    keys: u64,
    bytes: u64,
    hash: Vec<u8>,
    levels: Vec<TableRef>,
}

impl RawKvEntry {
    /// Unchecked but for the hash's length: [`KvEntry::check`] is the caller's.
    pub(crate) fn into_entry(self) -> Result<KvEntry, &'static str> {
        Ok(KvEntry {
            namespace: self.namespace,
            keys: self.keys,
            bytes: self.bytes,
            hash: KvHash::from_bytes(&self.hash).ok_or("key-value hash of the wrong length")?,
            levels: self.levels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_hash_ignores_order_and_history() {
        let mut a = KvHash::empty();
        a.insert(b"k1", b"v1");
        a.insert(b"k2", b"v2");
        let mut b = KvHash::empty();
        b.insert(b"k2", b"v2");
        b.insert(b"k3", b"x");
        b.insert(b"k1", b"v1");
        b.remove(b"k3", b"x");
        assert_eq!(a, b);
        assert_eq!(a.checksum(), b.checksum());
        // The key length is bound: (k, 1v) and (k1, v) differ.
        let mut c = KvHash::empty();
        c.insert(b"k", b"1v1");
        let mut d = KvHash::empty();
        d.insert(b"k1", b"v1");
        assert_ne!(c, d);
        assert_eq!(KvHash::from_bytes(&a.to_bytes()), Some(a));
        assert_eq!(KvHash::from_bytes(&[0; 3]), None);
    }

    #[test]
    fn an_empty_space_has_no_entry() {
        let ns = Namespace::of_module(&crate::ModuleId::of_wasm(b"m"));
        let t = TableRef {
            entries: 1,
            file_len: 1,
            file_hash: Digest::sha256(b""),
        };
        assert!(KvEntry::new(ns, 0, 0, KvHash::empty(), vec![t]).is_err());
        assert!(KvEntry::new(ns, 1, 1, KvHash::empty(), vec![]).is_err());
        assert!(KvEntry::new(ns, 1, 1, KvHash::empty(), vec![t; 4]).is_err());
        let e = KvEntry::new(ns, 1, 1, KvHash::empty(), vec![t, t]).expect("valid");
        assert_eq!(e.files().len(), 2);
        assert_ne!(
            Namespace::of_instance(&crate::ModuleId::of_wasm(b"m"), b"a"),
            ns
        );
    }
}
