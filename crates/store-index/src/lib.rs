//! The per-commit index of the Strata commit store: typed hashes, merkle roots and record encoding.
//!
//! This crate is the pure, I/O-free half of the store. It defines
//!
//! - the identifiers [`ModuleId`] (sha256 of a module's original wasm bytes), [`Root`] (the merkle root
//!   naming a commit) and [`Digest`] (any other sha256 hash);
//! - the hash functions, each domain-separated by its own tag ([`hash`]): page leaves, memory tree
//!   nodes, memory roots, blobs, module leaves, state tree nodes and state roots;
//! - the memory merkle tree ([`MemoryTree`]) over fixed-size pages of [`PAGE_SIZE`] bytes, updated
//!   incrementally from dirty pages, and the state root over modules sorted by id ([`state_root`]);
//! - the per-commit index ([`CommitIndex`]: module -> bytecode hash, memory root and length, image and
//!   delta identities, changed page hashes, blob hash; plus the parent root and a sequence number),
//!   which doubles as the commit record (commit -> module -> files, see [`ModuleEntry::files`]);
//! - the envelope of every record on disk ([`encode_record`], [`decode_record`]): a magic number, a
//!   format version, a length and a sha256 checksum. A record of another format version is refused
//!   with [`IndexError::Incompatible`] ("upgrade required"), never misread.
//!
//! The on-disk layout that uses these records is described in `docs/STORE-FORMAT.md`.
//!
//! # Example
//!
//! ```
//! use store_index::{CommitIndex, MemoryTree, ModuleEntry, ModuleId, PAGE_SIZE, RecordKind, hash};
//!
//! // A module is named by the sha256 of its wasm.
//! let wasm = b"\0asm\x01\0\0\0";
//! let id = ModuleId::of_wasm(wasm);
//! assert_eq!(ModuleId::from_hex(&id.to_hex())?, id);
//!
//! // The memory root covers every 64 KiB page; one dirty page costs one page hash and a path update.
//! let mut memory = vec![0u8; 4 * PAGE_SIZE];
//! let mut tree = MemoryTree::from_memory(&memory);
//! memory[PAGE_SIZE + 7] = 42;
//! tree.set_leaf(1, hash::page(&memory[PAGE_SIZE..2 * PAGE_SIZE]));
//! tree.update();
//! assert_eq!(tree.root(), MemoryTree::from_memory(&memory).root());
//!
//! // A commit's index names its state root and round-trips through its checksummed encoding.
//! let entry = ModuleEntry::new(id, wasm.len() as u64, &tree, hash::blob(b"globals"), 7);
//! let index = CommitIndex { seq: 1, parent: None, modules: vec![entry] };
//! let bytes = index.encode()?;
//! let back = CommitIndex::decode(&bytes)?;
//! assert_eq!(back.state_root(), index.state_root());
//! assert_ne!(index.state_root(), store_index::empty_state_root());
//! # let _ = RecordKind::Index;
//! # Ok::<(), store_index::IndexError>(())
//! ```

#![deny(missing_docs)]

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Size of one memory page as the merkle tree sees it: the wasm page size, 64 KiB.
///
/// Every memory length in the store is a multiple of it.
pub const PAGE_SIZE: usize = 64 * 1024;

/// The on-disk format version of every record this crate encodes.
///
/// Bump it on any change of an encoding or of a hash definition; older builds then refuse the new
/// records with [`IndexError::Incompatible`] instead of misreading them.
pub const FORMAT_VERSION: u32 = 1;

/// Errors of decoding identifiers and records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// A hex identifier was not exactly 64 hex digits.
    #[error("invalid hex identifier {input:?}: expected exactly 64 hex digits")]
    InvalidHex {
        /// The rejected input (truncated to 80 characters).
        input: String,
    },
    /// A record was written by another format version of the store.
    #[error(
        "{kind} record has format version {found}, this build reads version {expected}: upgrade required"
    )]
    Incompatible {
        /// Which record.
        kind: RecordKind,
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },
    /// A record failed its magic, length, checksum or structural checks.
    #[error("corrupted {kind} record: {reason}")]
    Corrupted {
        /// Which record.
        kind: RecordKind,
        /// What was wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode {kind} record: {reason}")]
    Encode {
        /// Which record.
        kind: RecordKind,
        /// Why.
        reason: String,
    },
}

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
    /// Any other sha256 hash (pages, tree nodes, blobs, files), always domain-separated.
    Digest
);

impl ModuleId {
    /// The id of a module: sha256 of its wasm bytes (no domain tag, so it matches `sha256sum`).
    pub fn of_wasm(wasm: &[u8]) -> ModuleId {
        ModuleId(Sha256::digest(wasm).into())
    }

    /// The id with these raw bytes. Only for bytes that came from a `ModuleId` (e.g. a database key).
    pub fn from_bytes(bytes: [u8; 32]) -> ModuleId {
        ModuleId(bytes)
    }
}

impl Root {
    /// The root with these raw bytes. Only for bytes that came from a `Root`.
    pub fn from_bytes(bytes: [u8; 32]) -> Root {
        Root(bytes)
    }
}

impl Digest {
    /// The digest with these raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
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

/// The domain-separated hash functions of the store.
///
/// Each function prefixes its input with its own tag, so a page can never be confused with a node,
/// a memory root with a state root, and so on. Changing any of them changes every root: bump
/// [`FORMAT_VERSION`].
pub mod hash {
    use super::{Digest, ModuleId, Root};
    use sha2::{Digest as _, Sha256};

    const PAGE: &[u8] = b"strata/v1/page\0";
    const MEMORY_NODE: &[u8] = b"strata/v1/memory-node\0";
    const MEMORY_ROOT: &[u8] = b"strata/v1/memory-root\0";
    const BLOB: &[u8] = b"strata/v1/blob\0";
    const MODULE_LEAF: &[u8] = b"strata/v1/module\0";
    const STATE_NODE: &[u8] = b"strata/v1/state-node\0";
    const STATE_ROOT: &[u8] = b"strata/v1/state-root\0";

    fn tagged(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(tag);
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    /// The leaf hash of one memory page (normally [`PAGE_SIZE`](crate::PAGE_SIZE) bytes).
    pub fn page(bytes: &[u8]) -> Digest {
        Digest(tagged(PAGE, &[bytes]))
    }

    /// An inner node of a memory tree.
    pub fn memory_node(left: &Digest, right: &Digest) -> Digest {
        Digest(tagged(MEMORY_NODE, &[&left.0, &right.0]))
    }

    /// The memory root: binds the byte length to the top of the page tree (`None` when empty).
    pub fn memory_root(len: u64, top: Option<&Digest>) -> Digest {
        let top = top.map(|d| d.0).unwrap_or([0; 32]);
        Digest(tagged(MEMORY_ROOT, &[&len.to_le_bytes(), &top]))
    }

    /// The hash of a module's host-owned state blob.
    pub fn blob(bytes: &[u8]) -> Digest {
        Digest(tagged(BLOB, &[&(bytes.len() as u64).to_le_bytes(), bytes]))
    }

    /// The leaf of one module in the state tree.
    pub fn module_leaf(
        id: &ModuleId,
        bytecode: &Digest,
        memory_root: &Digest,
        blob: &Digest,
    ) -> Digest {
        Digest(tagged(
            MODULE_LEAF,
            &[&id.0, &bytecode.0, &memory_root.0, &blob.0],
        ))
    }

    /// An inner node of the state tree.
    pub fn state_node(left: &Digest, right: &Digest) -> Digest {
        Digest(tagged(STATE_NODE, &[&left.0, &right.0]))
    }

    /// The state root: binds the module count to the top of the state tree (`None` when empty).
    pub fn state_root(count: u64, top: Option<&Digest>) -> Root {
        let top = top.map(|d| d.0).unwrap_or([0; 32]);
        Root(tagged(STATE_ROOT, &[&count.to_le_bytes(), &top]))
    }
}

/// The hash of a page of zeroes, the leaf of every untouched page.
pub fn zero_page_hash() -> Digest {
    static ZERO: OnceLock<Digest> = OnceLock::new();
    *ZERO.get_or_init(|| hash::page(&vec![0u8; PAGE_SIZE]))
}

/// `zero_subtree(l)` is the node over 2^l zero pages.
fn zero_subtree(level: usize) -> Digest {
    static ZEROES: OnceLock<Vec<Digest>> = OnceLock::new();
    let all = ZEROES.get_or_init(|| {
        let mut v = vec![zero_page_hash()];
        for l in 1..64 {
            let below = v[l - 1];
            v.push(hash::memory_node(&below, &below));
        }
        v
    });
    all[level]
}

/// The root of an empty memory (length 0).
pub fn empty_memory_root() -> Digest {
    hash::memory_root(0, None)
}

/// The root of the empty state (no modules).
pub fn empty_state_root() -> Root {
    hash::state_root(0, None)
}

fn tree_top(leaves: &[Digest], node: fn(&Digest, &Digest) -> Digest) -> Option<Digest> {
    let mut level: Vec<Digest> = leaves.to_vec();
    if level.is_empty() {
        return None;
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
    }
    Some(level[0])
}

/// The merkle tree over the pages of one linear memory.
///
/// Level 0 holds one [`hash::page`] per [`PAGE_SIZE`] page; each level above pairs neighbours with
/// [`hash::memory_node`], and an odd last node is promoted unchanged. All levels are kept, so a
/// changed page costs one page hash plus one node hash per level ([`set_leaf`](Self::set_leaf), then
/// [`update`](Self::update)); growing by zero pages uses precomputed zero subtrees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryTree {
    levels: Vec<Vec<Digest>>,
    /// Per level, indices whose node must be recomputed (level 0 entries mark changed leaves).
    dirty: Vec<Vec<usize>>,
}

impl Default for MemoryTree {
    fn default() -> Self {
        MemoryTree::from_leaves(Vec::new())
    }
}

impl MemoryTree {
    /// Builds the whole tree from its leaves.
    pub fn from_leaves(leaves: Vec<Digest>) -> MemoryTree {
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > 1 {
            let below = levels.last().map(Vec::as_slice).unwrap_or(&[]);
            let next = below
                .chunks(2)
                .map(|c| {
                    if c.len() == 2 {
                        hash::memory_node(&c[0], &c[1])
                    } else {
                        c[0]
                    }
                })
                .collect();
            levels.push(next);
        }
        let dirty = vec![Vec::new(); levels.len()];
        MemoryTree { levels, dirty }
    }

    /// Builds the tree of a memory image (`memory.len()` must be a multiple of [`PAGE_SIZE`]; a
    /// trailing partial page is hashed as it is).
    pub fn from_memory(memory: &[u8]) -> MemoryTree {
        let zero = zero_page_hash();
        let leaves = memory
            .chunks(PAGE_SIZE)
            .map(|p| {
                if p.len() == PAGE_SIZE && is_zero(p) {
                    zero
                } else {
                    hash::page(p)
                }
            })
            .collect();
        MemoryTree::from_leaves(leaves)
    }

    /// Number of pages.
    pub fn leaf_count(&self) -> usize {
        self.levels[0].len()
    }

    /// The page hashes.
    pub fn leaves(&self) -> &[Digest] {
        &self.levels[0]
    }

    /// Memory length covered, in bytes.
    pub fn memory_len(&self) -> u64 {
        (self.leaf_count() * PAGE_SIZE) as u64
    }

    /// Replaces the hash of page `index` (call [`update`](Self::update) before reading the root).
    ///
    /// Returns `false` (and changes nothing) when `index` is out of range.
    pub fn set_leaf(&mut self, index: usize, leaf: Digest) -> bool {
        match self.levels[0].get_mut(index) {
            Some(slot) => {
                if *slot != leaf {
                    *slot = leaf;
                    self.dirty[0].push(index);
                }
                true
            }
            None => false,
        }
    }

    /// Changes the number of pages. New pages are zero pages; their subtrees come precomputed, so
    /// growing costs O(new pages) copies plus O(log n) hashes. Shrinking rebuilds the tree.
    pub fn resize(&mut self, leaves: usize) {
        let old = self.leaf_count();
        if leaves == old {
            return;
        }
        if leaves < old {
            self.update();
            let mut l = std::mem::take(&mut self.levels[0]);
            l.truncate(leaves);
            *self = MemoryTree::from_leaves(l);
            return;
        }
        self.levels[0].resize(leaves, zero_page_hash());
        if old > 0 {
            self.dirty[0].push(old - 1);
        }
        self.dirty[0].extend(old..leaves);
        let mut level = 0;
        while self.levels[level].len() > 1 {
            let size = self.levels[level].len().div_ceil(2);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
                self.dirty.push(Vec::new());
            }
            let above = level + 1;
            let old_size = self.levels[above].len();
            // Nodes over a full run of new zero pages are known; the rest is recomputed.
            let span = 1usize << above;
            for j in old_size..size {
                let (lo, hi) = (j * span, (j + 1) * span);
                let node = if lo >= old && hi <= leaves {
                    zero_subtree(above)
                } else {
                    self.dirty[above].push(j);
                    Digest([0; 32])
                };
                self.levels[above].push(node);
            }
            if old_size > 0 {
                self.dirty[above].push(old_size - 1);
            }
            level = above;
        }
        // Zero-subtree nodes of level 0 are already right; the dirty marks above keep the edges exact.
        self.dirty[0].retain(|&i| i < old);
    }

    /// Recomputes every node above the changed leaves.
    pub fn update(&mut self) {
        for level in 0..self.levels.len() {
            let mut d = std::mem::take(&mut self.dirty[level]);
            if d.is_empty() {
                continue;
            }
            d.sort_unstable();
            d.dedup();
            if level > 0 {
                for &j in &d {
                    let below = &self.levels[level - 1];
                    let node = match (below.get(2 * j), below.get(2 * j + 1)) {
                        (Some(l), Some(r)) => hash::memory_node(l, r),
                        (Some(l), None) => *l,
                        _ => continue,
                    };
                    self.levels[level][j] = node;
                }
            }
            if level + 1 < self.levels.len() {
                let parents = d.iter().map(|i| i / 2);
                self.dirty[level + 1].extend(parents);
            }
        }
    }

    /// Whether [`update`](Self::update) has work to do.
    pub fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|d| !d.is_empty())
    }

    /// The top node, `None` for an empty memory. Call [`update`](Self::update) first.
    pub fn top(&self) -> Option<Digest> {
        self.levels.last().and_then(|l| l.first()).copied()
    }

    /// The memory root (binds length and top). Call [`update`](Self::update) first.
    pub fn root(&self) -> Digest {
        hash::memory_root(self.memory_len(), self.top().as_ref())
    }

    /// Encodes all levels as a [`RecordKind::Tree`] record.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        let mut payload = Vec::with_capacity(8 + 64 * self.leaf_count());
        payload.extend_from_slice(&(self.leaf_count() as u64).to_le_bytes());
        for level in &self.levels {
            for d in level {
                payload.extend_from_slice(&d.0);
            }
        }
        Ok(encode_raw(RecordKind::Tree, &payload))
    }

    /// Decodes a [`RecordKind::Tree`] record, checking its checksum and shape.
    pub fn decode(bytes: &[u8]) -> Result<MemoryTree, IndexError> {
        let payload = decode_raw(RecordKind::Tree, bytes)?;
        let corrupt = |reason: &str| IndexError::Corrupted {
            kind: RecordKind::Tree,
            reason: reason.to_string(),
        };
        let count_bytes: [u8; 8] = payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("missing leaf count"))?;
        let count = usize::try_from(u64::from_le_bytes(count_bytes))
            .map_err(|_| corrupt("leaf count out of range"))?;
        let body = &payload[8..];
        // A tree holds at least its leaves: refuse a count the body cannot hold before doing
        // arithmetic on it (a forged count near usize::MAX overflowed the sum below).
        if count > body.len() / 32 {
            return Err(corrupt("leaf count exceeds the record"));
        }
        let mut sizes = vec![count];
        while sizes.last().copied().unwrap_or(0) > 1 {
            let s = sizes.last().copied().unwrap_or(0).div_ceil(2);
            sizes.push(s);
        }
        let total = sizes
            .iter()
            .try_fold(0usize, |sum, &s| sum.checked_add(s))
            .ok_or_else(|| corrupt("leaf count out of range"))?;
        if Some(body.len()) != total.checked_mul(32) {
            return Err(corrupt("length does not match leaf count"));
        }
        let mut hashes = body.chunks_exact(32).map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            Digest(a)
        });
        let levels: Vec<Vec<Digest>> = sizes
            .iter()
            .map(|&s| hashes.by_ref().take(s).collect())
            .collect();
        let dirty = vec![Vec::new(); levels.len()];
        Ok(MemoryTree { levels, dirty })
    }

    /// Checks every node against its children (the leaves are taken as given).
    pub fn is_consistent(&self) -> bool {
        MemoryTree::from_leaves(self.levels[0].clone()).levels == self.levels
    }
}

/// Whether all bytes are zero (fast path for zero pages).
pub fn is_zero(bytes: &[u8]) -> bool {
    let (prefix, words, suffix) = {
        // SAFETY: reinterpreting initialised bytes as u64 words is valid for any bit pattern; align_to
        // returns correctly aligned middle slice.
        unsafe { bytes.align_to::<u64>() }
    };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

/// The state root over a set of module leaves (`(id, leaf)`); they are sorted by id here.
pub fn state_root<'a>(modules: impl IntoIterator<Item = (&'a ModuleId, Digest)>) -> Root {
    let mut leaves: Vec<(&ModuleId, Digest)> = modules.into_iter().collect();
    leaves.sort_by(|a, b| a.0.cmp(b.0));
    let hashes: Vec<Digest> = leaves.into_iter().map(|(_, d)| d).collect();
    let top = tree_top(&hashes, hash::state_node);
    hash::state_root(hashes.len() as u64, top.as_ref())
}

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

/// The full memory image a commit's memory is based on (`memory/<module>` and `.tree`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Byte length of the image file.
    pub len: u64,
    /// The memory root of the image: its identity. Two images with the same root are the same bytes.
    pub root: Digest,
}

/// The cumulative delta of a commit's memory against its image (`memory/<module>.diff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// Number of 4 KiB pages the delta carries.
    pub pages: u32,
    /// Size in bytes of the encoded delta file.
    pub file_len: u64,
    /// sha256 of the delta file: its identity.
    pub file_hash: Digest,
}

/// A blob stored as a qbsdiff patch (`blob/<module>.diff`) against a full blob (`blob/<module>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDelta {
    /// Byte length of the full blob the patch applies to.
    pub base_len: u64,
    /// [`hash::blob`] of that full blob.
    pub base_hash: Digest,
    /// Size in bytes of the patch file.
    pub file_len: u64,
    /// sha256 of the patch file.
    pub file_hash: Digest,
}

/// One module's memory in a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEntry {
    /// Byte length (a multiple of [`PAGE_SIZE`]).
    pub len: u64,
    /// The memory root.
    pub root: Digest,
    /// The full image this memory is read from.
    pub image: ImageRef,
    /// Page hashes that differ from the image's (zero-extended) tree, sorted by page index;
    /// cumulative since the image, like the delta.
    pub changed_pages: Vec<(u32, Digest)>,
    /// The delta, absent when the memory is the image (zero-extended to `len`).
    pub delta: Option<DeltaRef>,
}

/// One module of a commit: what the state root covers, plus the identities of its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntry {
    /// The module.
    pub id: ModuleId,
    /// sha256 of the stored bytecode (equals the id's bytes).
    pub bytecode_hash: Digest,
    /// Byte length of the bytecode.
    pub bytecode_len: u64,
    /// The linear memory.
    pub memory: MemoryEntry,
    /// [`hash::blob`] of the host-owned state blob.
    pub blob_hash: Digest,
    /// Byte length of the blob.
    pub blob_len: u64,
    /// When set, the blob is this patch applied to the full blob file.
    pub blob_delta: Option<BlobDelta>,
}

impl ModuleEntry {
    /// An entry whose memory is exactly the image described by `tree` (no delta).
    pub fn new(
        id: ModuleId,
        bytecode_len: u64,
        tree: &MemoryTree,
        blob_hash: Digest,
        blob_len: u64,
    ) -> ModuleEntry {
        let root = tree.root();
        ModuleEntry {
            id,
            bytecode_hash: Digest(id.0),
            bytecode_len,
            memory: MemoryEntry {
                len: tree.memory_len(),
                root,
                image: ImageRef {
                    len: tree.memory_len(),
                    root,
                },
                changed_pages: Vec::new(),
                delta: None,
            },
            blob_hash,
            blob_len,
            blob_delta: None,
        }
    }

    /// The leaf of this module in the state tree.
    pub fn leaf(&self) -> Digest {
        hash::module_leaf(
            &self.id,
            &self.bytecode_hash,
            &self.memory.root,
            &self.blob_hash,
        )
    }

    /// The files of this module inside its commit directory (relative paths).
    pub fn files(&self) -> Vec<String> {
        let m = self.id.to_hex();
        let mut f = vec![
            format!("bytecode/{m}"),
            format!("memory/{m}"),
            format!("memory/{m}.tree"),
            format!("blob/{m}"),
        ];
        if self.memory.delta.is_some() {
            f.push(format!("memory/{m}.diff"));
        }
        if self.blob_delta.is_some() {
            f.push(format!("blob/{m}.diff"));
        }
        f
    }
}

/// The index of one commit, also its commit record: what `<root>/index` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitIndex {
    /// Store-wide sequence number, increasing in commit order; persists the order across restarts.
    pub seq: u64,
    /// The commit this one was made from (`None` when made from the empty state).
    pub parent: Option<Root>,
    /// The modules, sorted by id.
    pub modules: Vec<ModuleEntry>,
}

impl CommitIndex {
    /// The state root of this commit (not covering `seq` or `parent`).
    pub fn state_root(&self) -> Root {
        state_root(self.modules.iter().map(|m| (&m.id, m.leaf())))
    }

    /// The checksummed encoding.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        encode_record(RecordKind::Index, self)
    }

    /// Decodes and checks structure (modules sorted and unique, lengths page-aligned).
    pub fn decode(bytes: &[u8]) -> Result<CommitIndex, IndexError> {
        let index: CommitIndex = decode_record(RecordKind::Index, bytes)?;
        let corrupt = |reason: &str| IndexError::Corrupted {
            kind: RecordKind::Index,
            reason: reason.to_string(),
        };
        if !index.modules.windows(2).all(|w| w[0].id < w[1].id) {
            return Err(corrupt("modules not sorted or not unique"));
        }
        for m in &index.modules {
            let mem = &m.memory;
            if !mem.len.is_multiple_of(PAGE_SIZE as u64)
                || !mem.image.len.is_multiple_of(PAGE_SIZE as u64)
            {
                return Err(corrupt("memory length not a multiple of 64 KiB"));
            }
            if mem.image.len > mem.len {
                return Err(corrupt("image longer than memory"));
            }
            let pages = mem.len / PAGE_SIZE as u64;
            if !mem.changed_pages.windows(2).all(|w| w[0].0 < w[1].0)
                || mem
                    .changed_pages
                    .iter()
                    .any(|(i, _)| u64::from(*i) >= pages)
            {
                return Err(corrupt("changed pages unsorted or out of range"));
            }
        }
        Ok(index)
    }

    /// The entry of a module.
    pub fn module(&self, id: &ModuleId) -> Option<&ModuleEntry> {
        self.modules
            .binary_search_by(|m| m.id.cmp(id))
            .ok()
            .map(|i| &self.modules[i])
    }
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
    use proptest::prelude::*;

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
    }

    #[test]
    fn domain_separation() {
        let z = Digest([0; 32]);
        assert_ne!(hash::memory_node(&z, &z), hash::state_node(&z, &z));
        assert_ne!(empty_memory_root().0, empty_state_root().0);
        assert_ne!(hash::page(b""), hash::blob(b""));
        // Length is bound into the memory root.
        assert_ne!(
            MemoryTree::from_memory(&vec![0; PAGE_SIZE]).root(),
            MemoryTree::from_memory(&vec![0; 2 * PAGE_SIZE]).root()
        );
        assert_eq!(MemoryTree::default().root(), empty_memory_root());
        assert_eq!(state_root(std::iter::empty()), empty_state_root());
    }

    fn page_of(seed: u8) -> Digest {
        if seed == 0 {
            zero_page_hash()
        } else {
            hash::page(&[seed; 16])
        }
    }

    proptest! {
        #[test]
        fn incremental_tree_matches_full_build(
            start in 0usize..40,
            ops in proptest::collection::vec((0usize..80, 0u8..4, any::<bool>()), 0..30),
        ) {
            let mut leaves: Vec<Digest> = (0..start).map(|i| page_of((i % 3) as u8)).collect();
            let mut tree = MemoryTree::from_leaves(leaves.clone());
            for (i, seed, grow) in ops {
                if grow {
                    let n = leaves.len() + i % 17;
                    leaves.resize(n, zero_page_hash());
                    tree.resize(n);
                } else if !leaves.is_empty() {
                    let i = i % leaves.len();
                    leaves[i] = page_of(seed);
                    prop_assert!(tree.set_leaf(i, page_of(seed)));
                }
                if seed == 3 {
                    tree.update();
                    prop_assert_eq!(tree.root(), MemoryTree::from_leaves(leaves.clone()).root());
                }
            }
            tree.update();
            let full = MemoryTree::from_leaves(leaves.clone());
            prop_assert_eq!(&tree, &full);
            prop_assert!(tree.is_consistent());
            let back = MemoryTree::decode(&tree.encode().unwrap()).unwrap();
            prop_assert_eq!(back, full);
        }
    }

    #[test]
    fn state_root_sorts_modules() {
        let a = ModuleId::of_wasm(b"a");
        let b = ModuleId::of_wasm(b"b");
        let (la, lb) = (Digest::sha256(b"1"), Digest::sha256(b"2"));
        assert_eq!(
            state_root([(&a, la), (&b, lb)]),
            state_root([(&b, lb), (&a, la)])
        );
        assert_ne!(
            state_root([(&a, la), (&b, lb)]),
            state_root([(&a, lb), (&b, la)])
        );
    }

    fn sample_index() -> CommitIndex {
        let id = ModuleId::of_wasm(b"m");
        let tree = MemoryTree::from_memory(&vec![1u8; 2 * PAGE_SIZE]);
        CommitIndex {
            seq: 9,
            parent: Some(Root([7; 32])),
            modules: vec![ModuleEntry::new(id, 1, &tree, hash::blob(b"x"), 1)],
        }
    }

    #[test]
    fn index_round_trip_and_corruption() {
        let index = sample_index();
        let bytes = index.encode().unwrap();
        assert_eq!(CommitIndex::decode(&bytes).unwrap(), index);
        for i in [0, 10, 15, 30, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            let err = CommitIndex::decode(&bad).unwrap_err();
            if (8..12).contains(&i) {
                assert!(matches!(err, IndexError::Incompatible { .. }), "{err}");
            } else {
                assert!(matches!(err, IndexError::Corrupted { .. }), "{err}");
            }
        }
        assert!(CommitIndex::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(CommitIndex::decode(&[]).is_err());
        // The wrong kind of record is refused.
        assert!(MemoryTree::decode(&bytes).is_err());
    }

    #[test]
    fn other_version_is_incompatible_not_corrupted() {
        let mut bytes = sample_index().encode().unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = CommitIndex::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                IndexError::Incompatible {
                    found: 2,
                    expected: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade required"));
    }

    #[test]
    fn unsorted_modules_are_corrupt() {
        let mut index = sample_index();
        let mut second = index.modules[0].clone();
        second.id = ModuleId([0; 32]);
        index.modules.push(second);
        let bytes = index.encode().unwrap();
        assert!(matches!(
            CommitIndex::decode(&bytes),
            Err(IndexError::Corrupted { .. })
        ));
    }
}
