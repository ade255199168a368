//! A copy-on-write commit store for wasm module state: one directory per commit, hard links for what
//! did not change, cumulative compressed deltas, and memories mapped copy-on-write into sessions.
//!
//! A [`Store`] holds commits; each commit is named by its [`Root`], a merkle root over its modules'
//! bytecode, linear memory and host-owned blob, and its key-value spaces. A [`Session`] starts
//! from a commit (or the empty state), deploys modules, changes memories through a [`MemoryHandle`] (a fixed reservation whose
//! start maps the committed image `MAP_PRIVATE`), changes blobs, can [`checkpoint`](Session::checkpoint)
//! and [`rollback`](Session::rollback), and ends with at most one [`commit`](Session::commit).
//!
//! Costs follow what changed: opening a memory maps it (the same for 1 MiB and 1 GiB), a commit finds
//! written pages through `/proc/self/pagemap`, hashes only them, updates the memory tree along their
//! paths and writes a delta of them; everything else of the commit is hard-linked from its base.
//! Reading any commit's memory costs at most one full image plus one delta.
//!
//! Trade-offs, measured in `benches/store.rs`: the merkle leaves are 64 KiB (the wasm page), so one
//! dirty 4 KiB page costs hashing 64 KiB, and scattered writes hash up to 16x the bytes written; in
//! exchange a 1 GiB memory's tree is 1 MiB and is only rewritten with a new full image. Deltas are
//! cumulative (one image + one delta per read), so a history that keeps writing *new* pages stores
//! those pages again in every later delta until the delta passes `1/delta_ratio` of the memory and a
//! new image is written; rewriting the same pages costs nothing extra. Blobs of 64 KiB or more are
//! stored as a zstd patch against an earlier full blob when the patch is under a quarter of the
//! blob (shifted data, such as serialized key-value maps, diffs well); smaller blobs are stored whole.
//!
//! Key-value data lives next to memories, per [`Namespace`] (a module's, or one instance's of
//! a code): [`Session::kv`] opens a space as a [`KvHandle`] (get, insert, remove, range scans in
//! either order whose iterators are snapshots, quotas of bytes and keys, undone by
//! [`rollback`](Session::rollback)). A space is up to three sorted tables, a base and two
//! cumulative deltas, mapped and searched in place, so opening one costs the same for 1 k and
//! 1 M keys; a commit writes only the newest delta and links the rest, and its root is an LtHash
//! of the pairs, updated in O(changed keys) and independent of the history.
//!
//! Commits are atomic and durable (temporary directory, fsync, rename, fsync of the parent),
//! deletion of one commit changes no other, and every file-system operation goes through the
//! [`strata_fs::Fs`] trait so tests can inject faults. Inside, the crate is layered: the registry
//! ([`Store`]: commits, session counts, deferred deletion, poisoning), sessions ([`Session`]:
//! memories, checkpoints, rollback), a planner that turns a session into the files of a commit
//! without writing anything, and the files layer that owns every on-disk name, checks every read
//! and is the one writer (temporary directory, fsync, rename). The crate knows nothing of
//! wasmtime. The on-disk format is described in `docs/STORE-FORMAT.md`.
//!
//! # Example
//!
//! ```
//! use store_commit::{Bytecode, Deletion, Store, StoreConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let config = StoreConfig { fsync: false, ..StoreConfig::default() };
//! let store = Store::open(dir.path(), config.clone())?;
//!
//! // Deploy a module (named by the sha256 of its wasm) with a one-page (64 KiB) genesis memory.
//! let code = Bytecode::hash(b"\0asm\x01\0\0\0".as_slice());
//! let id = code.id();
//! let mut session = store.session(None)?;
//! session.deploy(code, vec![0u8; 65536], b"globals".to_vec())?;
//! let first = session.commit()?;
//!
//! // Change one byte through the mapped memory, grow it, and commit again.
//! let mut session = store.session(Some(first))?;
//! let memory = session.memory(&id, 1 << 20)?;
//! // SAFETY: the memory is 64 KiB long, no one else uses it.
//! unsafe { *memory.base().add(100) = 7 };
//! memory.grow_to(2 * 65536)?;
//! let second = session.commit()?;
//!
//! // Commits persist across reopening; deleting the first leaves the second intact.
//! drop(store);
//! let store = Store::open(dir.path(), config)?;
//! assert_eq!(store.latest(), Some(second));
//! assert_eq!(store.delete(&first)?, Deletion::Deleted);
//! assert_eq!(store.read_memory(&second, &id)?[100], 7);
//! assert!(store.verify()?.is_ok());
//!
//! // Key-value data per namespace: writes over the committed tables, ordered scans.
//! let space = store_commit::Namespace::of_module(&id);
//! let mut session = store.session(Some(second))?;
//! let kv = session.kv(&space)?;
//! kv.insert(b"b", b"2")?;
//! kv.insert(b"a", b"1")?;
//! let scan: Vec<_> = kv.range(None, None, store_commit::Order::Descending)?.collect::<Result<_, _>>()?;
//! assert_eq!(scan, [(b"b".to_vec(), b"2".to_vec()), (b"a".to_vec(), b"1".to_vec())]);
//! let third = session.commit()?;
//! assert_eq!(store.session(Some(third))?.kv(&space)?.get(b"a")?, Some(b"1".to_vec()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod blob;
mod delta;
mod files;
mod kv;
mod mapping;
mod plan;
mod pool;
mod session;
mod store;
#[cfg(test)]
mod tests;
mod warm;

use std::io;
use std::path::PathBuf;

pub use store_index::{Bytecode, Digest, IndexError, ModuleId, Namespace, PAGE_SIZE, Root};

pub use crate::blob::PatchError;
pub use crate::delta::DeltaError;
pub use crate::kv::{KvHandle, KvIter, KvQuota, KvQuotaExceeded, Order, TableError};
pub use crate::mapping::MemoryHandle;
pub use crate::session::{Checkpoint, Session};
pub use crate::store::Store;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation failed. During a commit or delete this also poisons the store.
    #[error("i/o error in {op} of {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Stored data failed a check (checksum, hash, length, structure).
    #[error("corrupted store data at {path}: {source}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Corruption,
    },
    /// The store was written by another format version.
    #[error("store data at {path} cannot be read by this build: {source}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The version mismatch ("upgrade required").
        #[source]
        source: IndexError,
    },
    /// A commit or module does not exist (or was deleted).
    #[error("{0} not found")]
    NotFound(Missing),
    /// [`Session::deploy`] of a module the session already has.
    #[error("module {id} is already deployed")]
    AlreadyDeployed {
        /// The module.
        id: ModuleId,
    },
    /// Another [`Store`] (in this or another process) has the directory open.
    #[error("store directory {path} is in use by another store handle or process")]
    Busy {
        /// The store directory.
        path: PathBuf,
    },
    /// An earlier I/O error left the store refusing writes; reopen it.
    #[error("the store refuses writes after an earlier i/o error: reopen it")]
    Poisoned,
    /// Mapping, protecting or discarding the pages of a session memory failed.
    #[error("memory mapping failed in {op}: {source}")]
    Mapping {
        /// The operation (`mmap image`, `mprotect`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// zstd failed to compress a memory delta or a blob patch.
    #[error("cannot compress the {what}: {source}")]
    Compression {
        /// What was being compressed.
        what: &'static str,
        /// zstd's error.
        #[source]
        source: io::Error,
    },
    /// An argument was out of range or inconsistent.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },
    /// A key-value write over its space's quota; nothing was changed.
    #[error("{0}")]
    KvQuota(#[source] KvQuotaExceeded),
    /// The commit planner made an index record that fails store-index's checked constructor
    /// (`CommitIndex::new`, `MemoryEntry::new`): a fault inside the store, not bad input from
    /// the caller. Nothing was written.
    #[error("internal error: the commit plan breaks an index invariant: {source}")]
    InvalidPlan {
        /// The check that failed.
        #[source]
        source: IndexError,
    },
}

/// What [`StoreError::NotFound`] could not find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// A commit (never made, deleted, or awaiting deferred deletion).
    Commit(Root),
    /// A module in a session or commit.
    Module(ModuleId),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Commit(r) => write!(f, "commit {r}"),
            Missing::Module(m) => write!(f, "module {m}"),
        }
    }
}

/// What [`StoreError::Corrupted`] found wrong with a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The file's hash or length is not what the commit's index records.
    #[error("{file} does not match its hash or length in the index")]
    Mismatch {
        /// Which file (`bytecode`, `image`, `page tree`, `delta`, `blob`, ...).
        file: &'static str,
    },
    /// The index does not hash to the root its directory is named after.
    #[error("index does not hash to the directory's root")]
    WrongRoot,
    /// A record (index, page tree, format marker) failed to decode.
    #[error("{0}")]
    Record(#[source] IndexError),
    /// A memory delta failed to decode.
    #[error("{0}")]
    Delta(#[source] DeltaError),
    /// A blob patch failed to apply.
    #[error("{0}")]
    Patch(#[source] PatchError),
    /// A key-value space's content does not match its index entry.
    #[error("{reason}")]
    KvContent {
        /// What differs.
        reason: String,
    },
    /// A key-value table file is malformed.
    #[error("{0}")]
    Table(#[source] TableError),
    /// The store directory has no format marker (`FORMAT`): not a store, or one that lost it.
    /// Only [`Store::open_existing_with_fs`] reports it; an ordinary open makes a new store.
    #[error("no format marker: not a commit store, or a damaged one")]
    NoFormatMarker,
    /// The index claims a memory too large to allocate.
    #[error("the index claims a memory of {len} bytes, more than can be allocated")]
    TooLarge {
        /// The claimed length.
        len: u64,
    },
}

/// Settings of a [`Store`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Flush files and directories to stable storage at commit and delete (default `true`). Turn it
    /// off only for tests and benchmarks: without it a power loss can lose recent commits.
    pub fsync: bool,
    /// How a commit's new files and directories are flushed, with `fsync` (default
    /// [`SyncMode::EachFile`]).
    pub sync: SyncMode,
    /// A memory whose cumulative delta would exceed `1/delta_ratio` of its length gets a new full
    /// image instead (default 8).
    pub delta_ratio: u32,
    /// ... or whose delta would exceed this many bytes before compression (default 64 MiB).
    pub max_delta_bytes: usize,
    /// Blobs at least this long are stored as a zstd patch against an earlier full blob when the
    /// patch is under a quarter of the blob (default 64 KiB; `usize::MAX` stores every blob whole).
    pub blob_diff_min: usize,
    /// zstd level of deltas (default 1: commits are latency-bound; higher levels save little on
    /// memory pages).
    pub zstd_level: i32,
    /// Most idle address-space reservations kept for the next memory to open (default 16; each
    /// is address space only, 4 GiB + 32 MiB for a wasm memory, no RAM, and at most three
    /// mappings). A reservation that held a committed memory keeps its image mapped (clean), so
    /// the next session on that commit and module opens it without a system call; deleting the
    /// commit unmaps it. More are unmapped.
    pub pooled_reservations: usize,
    /// Most (commit, module) memory deltas kept decoded across sessions (default 1024).
    pub warm_memories: usize,
    /// Bytes of deltas and blobs kept decoded and checked across sessions (default 64 MiB); a
    /// delta or blob over a quarter of this is read again by every session.
    pub warm_bytes: usize,
    /// A key-value space's top delta is folded into its middle delta once it holds more entries
    /// than this (default 256): a plain commit writes at most this many entries plus its own.
    pub kv_top_entries: usize,
    /// A key-value space is rebased (one new base table, no deltas) once its middle delta holds
    /// more than `1/kv_delta_ratio` of the base's entries (default 16) ...
    pub kv_delta_ratio: u32,
    /// ... and more than this many entries (default 4096), so small spaces keep their deltas.
    pub kv_min_delta: u64,
    /// Fold and rebase key-value spaces on a background thread (default `true`): the commit
    /// that passes a bound writes its top delta (up to 16 times `kv_top_entries`) and starts
    /// the merge; a later commit descending from it adopts the merged table. Off, the commit
    /// that passes a bound merges itself.
    pub kv_background: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: true,
            sync: SyncMode::EachFile,
            delta_ratio: 8,
            max_delta_bytes: 64 << 20,
            blob_diff_min: 64 << 10,
            zstd_level: 1,
            pooled_reservations: 16,
            warm_memories: 1024,
            warm_bytes: 64 << 20,
            kv_top_entries: 256,
            kv_delta_ratio: 16,
            kv_min_delta: 4096,
            kv_background: true,
        }
    }
}

/// How a commit makes its new files and directories durable before the rename that publishes
/// it (which is then made durable by an fsync of the store directory either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncMode {
    /// An fsync of every new file and directory of the commit, one after another (a 1-page
    /// commit: about 7).
    #[default]
    EachFile,
    /// One `syncfs` of the file system holding the store: every file and directory on it, so
    /// one journal commit instead of one per file. For a store that owns its file system:
    /// `syncfs` also flushes whatever else is dirty on it, which other tenants can make slow.
    WholeFileSystem,
}

/// A commit as [`Store::commits`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Its root (and directory name).
    pub root: Root,
    /// The commit its session started from.
    pub parent: Option<Root>,
    /// Its modules, sorted.
    pub modules: Vec<ModuleId>,
    /// Store-wide sequence number: later commits have larger numbers, also across restarts.
    pub seq: u64,
}

/// What [`Store::delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The commit is gone.
    Deleted,
    /// Live sessions are based on the commit: it is no longer listed nor usable as a base, and its
    /// files are removed when the last of those sessions ends. The deletion is durable already (a
    /// marker in the commit directory): after a crash, the next open removes the commit.
    /// Committing its state again before then revives it.
    Deferred {
        /// How many sessions hold it.
        sessions: usize,
    },
}

/// One problem [`Store::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The commit directory concerned (or the store directory).
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The result of [`Store::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Commits checked.
    pub checked: usize,
    /// Everything that did not match.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Entry points for fuzz targets (the workspace's `strata-tests` fuzz functions and `fuzz/`). Not
/// part of the store's API: it may change with any release.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `bytes` as a memory delta record expected to hold `pages` pages of a memory of
    /// `memory_len` bytes, and returns the decoded page count. It exists for fuzz targets: for any
    /// input it returns an error rather than panicking, and allocates at most the memory's size
    /// plus 8 bytes per 4 KiB page (the page index, twice), whatever `pages` claims.
    pub fn decode_delta(
        bytes: &[u8],
        pages: u32,
        memory_len: u64,
    ) -> Result<usize, crate::DeltaError> {
        crate::delta::DeltaPages::decode(bytes, pages, memory_len).map(|d| d.len())
    }
}
