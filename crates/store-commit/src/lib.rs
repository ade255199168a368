//! A copy-on-write commit store for wasm module state: one directory per commit, hard links for what
//! did not change, cumulative compressed deltas, and memories mapped copy-on-write into sessions.
//!
//! A [`Store`] holds commits; each commit is named by its [`Root`], a merkle root over its modules'
//! bytecode, linear memory and host-owned blob. A [`Session`] starts from a commit (or the empty
//! state), deploys modules, changes memories through a [`MemoryHandle`] (a fixed reservation whose
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
//! Commits are atomic and durable (temporary directory, fsync, rename, fsync of the parent),
//! deletion of one commit changes no other, and every file-system operation goes through the
//! [`fs::Fs`] trait so tests can inject faults. The crate knows nothing of wasmtime. The on-disk
//! format is described in `docs/STORE-FORMAT.md`.
//!
//! # Example
//!
//! ```
//! use store_commit::{Deletion, ModuleId, Store, StoreConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let config = StoreConfig { fsync: false, ..StoreConfig::default() };
//! let store = Store::open(dir.path(), config.clone())?;
//!
//! // Deploy a module with a one-page (64 KiB) genesis memory and commit.
//! let wasm = b"\0asm\x01\0\0\0".to_vec();
//! let id = ModuleId::of_wasm(&wasm);
//! let mut session = store.session(None)?;
//! session.deploy(id, &wasm, &vec![0u8; 65536], b"globals".to_vec())?;
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
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod blob;
mod delta;
pub mod fs;
mod mapping;
mod session;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use store_index::{
    CommitIndex, MemoryTree, ModuleEntry, RecordKind, StoreMarker, decode_record, encode_record,
};
pub use store_index::{Digest, IndexError, ModuleId, PAGE_SIZE, Root};

use crate::delta::DeltaPages;
use crate::fs::{Fs, RealFs};
pub use crate::mapping::MemoryHandle;
pub use crate::session::{Checkpoint, Session};

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
    #[error("corrupted store data at {path}: {reason}")]
    Corrupted {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        reason: String,
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
    /// An argument was out of range or inconsistent.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
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

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

pub(crate) fn index_err(path: &Path, e: IndexError) -> StoreError {
    match e {
        IndexError::Incompatible { .. } => StoreError::Incompatible {
            path: path.to_path_buf(),
            source: e,
        },
        e => StoreError::Corrupted {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

/// Settings of a [`Store`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Flush files and directories to stable storage at commit and delete (default `true`). Turn it
    /// off only for tests and benchmarks: without it a power loss can lose recent commits.
    pub fsync: bool,
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: true,
            delta_ratio: 8,
            max_delta_bytes: 64 << 20,
            blob_diff_min: 64 << 10,
            zstd_level: 1,
        }
    }
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
    /// files are removed when the last of those sessions ends.
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

/// The commit store. Cheap to clone (shared state); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) fs: Arc<dyn Fs>,
    /// Held for the life of the store: one `Store` per directory.
    _lock: std::fs::File,
    poisoned: AtomicBool,
    pub(crate) state: Mutex<State>,
    tmp_counter: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// Every commit on disk, including those awaiting deferred deletion.
    pub(crate) commits: HashMap<Root, Arc<CommitIndex>>,
    /// Live sessions per base.
    pub(crate) sessions: HashMap<Root, usize>,
    pub(crate) pending_delete: HashSet<Root>,
    pub(crate) next_seq: u64,
    /// Commit directories that failed to load at open.
    pub(crate) broken: Vec<Problem>,
}

const MARKER: &str = "FORMAT";
const LOCK: &str = "LOCK";
const TMP_PREFIX: &str = ".tmp-";
const DEL_PREFIX: &str = ".del-";

impl Store {
    /// Opens (creating if missing) the store in `dir`: locks it (one `Store` per directory, else
    /// [`StoreError::Busy`]), checks its format version, removes leftovers of interrupted commits
    /// and deletions, and reads every commit's index (no memory file).
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_fs(dir, config, Arc::new(RealFs))
    }

    /// [`open`](Self::open) through another file system (tests inject faults with
    /// [`fs::FaultFs`]).
    pub fn open_with_fs(
        dir: &Path,
        config: StoreConfig,
        fs: Arc<dyn Fs>,
    ) -> Result<Store, StoreError> {
        if config.delta_ratio == 0 {
            return Err(StoreError::InvalidInput {
                reason: "delta_ratio must be at least 1".into(),
            });
        }
        create_dir_all(&*fs, dir, config.fsync)?;
        let lock_path = dir.join(LOCK);
        // A child process between fork and exec briefly shares the lock's file description, so a
        // store closed just before a spawn can still look locked: retry for a moment.
        let started = std::time::Instant::now();
        let lock = loop {
            match fs.lock(&lock_path) {
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && started.elapsed() < std::time::Duration::from_secs(1) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => break r,
            }
        }
        .map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                StoreError::Busy {
                    path: dir.to_path_buf(),
                }
            } else {
                io_err("lock", &lock_path)(e)
            }
        })?;
        let marker = dir.join(MARKER);
        if fs.exists(&marker).map_err(io_err("stat", &marker))? {
            let bytes = fs.read_file(&marker).map_err(io_err("read", &marker))?;
            decode_record::<StoreMarker>(RecordKind::Store, &bytes)
                .map_err(|e| index_err(&marker, e))?;
        } else {
            let bytes = encode_record(
                RecordKind::Store,
                &StoreMarker {
                    created_by: format!("store-commit {}", env!("CARGO_PKG_VERSION")),
                },
            )
            .map_err(|e| index_err(&marker, e))?;
            let tmp = dir.join(format!("{TMP_PREFIX}format"));
            fs.remove_all(&tmp).map_err(io_err("remove", &tmp))?;
            fs.write_file(&tmp, &bytes, false)
                .map_err(io_err("write", &tmp))?;
            if config.fsync {
                fs.sync_file(&tmp).map_err(io_err("fsync", &tmp))?;
            }
            fs.rename(&tmp, &marker).map_err(io_err("rename", &tmp))?;
            if config.fsync {
                fs.sync_dir(dir).map_err(io_err("fsync", dir))?;
            }
        }
        let mut state = State::default();
        let mut cleaned = false;
        let mut names = fs.read_dir(dir).map_err(io_err("read dir", dir))?;
        names.sort();
        for name in names {
            let Some(name) = name.to_str().map(str::to_owned) else {
                continue;
            };
            let path = dir.join(&name);
            if name.starts_with(TMP_PREFIX) || name.starts_with(DEL_PREFIX) {
                fs.remove_all(&path).map_err(io_err("remove", &path))?;
                cleaned = true;
                continue;
            }
            let Ok(root) = Root::from_hex(&name) else {
                continue;
            };
            let index_path = path.join("index");
            let loaded = fs
                .read_file(&index_path)
                .map_err(io_err("read", &index_path))
                .and_then(|b| CommitIndex::decode(&b).map_err(|e| index_err(&index_path, e)));
            match loaded {
                Ok(index) if index.state_root() == root => {
                    state.next_seq = state.next_seq.max(index.seq() + 1);
                    state.commits.insert(root, Arc::new(index));
                }
                Ok(_) => state.broken.push(Problem {
                    path,
                    reason: "index does not hash to the directory's root".into(),
                }),
                Err(e @ StoreError::Incompatible { .. }) => return Err(e),
                Err(e) => state.broken.push(Problem {
                    path,
                    reason: e.to_string(),
                }),
            }
        }
        if cleaned && config.fsync {
            fs.sync_dir(dir).map_err(io_err("fsync", dir))?;
        }
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                config,
                fs,
                _lock: lock,
                poisoned: AtomicBool::new(false),
                state: Mutex::new(state),
                tmp_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Every commit (except deleted ones), oldest first.
    pub fn commits(&self) -> Vec<CommitInfo> {
        let state = self.inner.state.lock();
        let mut v: Vec<CommitInfo> = state
            .commits
            .iter()
            .filter(|(r, _)| !state.pending_delete.contains(r))
            .map(|(r, i)| CommitInfo {
                root: *r,
                parent: i.parent(),
                modules: i.modules().iter().map(|m| m.id()).collect(),
                seq: i.seq(),
            })
            .collect();
        v.sort_by_key(|c| c.seq);
        v
    }

    /// The newest commit.
    pub fn latest(&self) -> Option<Root> {
        let state = self.inner.state.lock();
        state
            .commits
            .iter()
            .filter(|(r, _)| !state.pending_delete.contains(r))
            .max_by_key(|(_, i)| i.seq())
            .map(|(r, _)| *r)
    }

    /// Whether a commit exists (and is not deleted).
    pub fn contains(&self, root: &Root) -> bool {
        let state = self.inner.state.lock();
        state.commits.contains_key(root) && !state.pending_delete.contains(root)
    }

    /// The index of a commit.
    pub fn index(&self, root: &Root) -> Result<Arc<CommitIndex>, StoreError> {
        let state = self.inner.state.lock();
        match state.commits.get(root) {
            Some(i) if !state.pending_delete.contains(root) => Ok(Arc::clone(i)),
            _ => Err(StoreError::NotFound(Missing::Commit(*root))),
        }
    }

    /// Starts a session from `base` (`None`: the empty state). The base is kept on disk while the
    /// session lives, even if deleted meanwhile.
    pub fn session(&self, base: Option<Root>) -> Result<Session, StoreError> {
        let index = match base {
            None => None,
            Some(root) => {
                let mut state = self.inner.state.lock();
                let index = match state.commits.get(&root) {
                    Some(i) if !state.pending_delete.contains(&root) => Arc::clone(i),
                    _ => return Err(StoreError::NotFound(Missing::Commit(root))),
                };
                *state.sessions.entry(root).or_insert(0) += 1;
                Some(index)
            }
        };
        Ok(Session::new(self.clone(), base, index))
    }

    /// Deletes a commit. Other commits are unaffected (their files are their own hard links). If live
    /// sessions are based on it, it disappears from the listing at once and its files go when the last
    /// of them ends.
    pub fn delete(&self, root: &Root) -> Result<Deletion, StoreError> {
        self.check_writable()?;
        let mut state = self.inner.state.lock();
        if !state.commits.contains_key(root) {
            return Err(StoreError::NotFound(Missing::Commit(*root)));
        }
        let sessions = state.sessions.get(root).copied().unwrap_or(0);
        if sessions > 0 {
            state.pending_delete.insert(*root);
            return Ok(Deletion::Deferred { sessions });
        }
        if state.pending_delete.contains(root) {
            return Err(StoreError::NotFound(Missing::Commit(*root)));
        }
        let doomed = self.unlink_commit_locked(&mut state, root)?;
        drop(state);
        self.remove_doomed(&doomed)?;
        Ok(Deletion::Deleted)
    }

    /// Renames a commit directory out of the way (the deletion's commit point) and forgets it.
    fn unlink_commit_locked(&self, state: &mut State, root: &Root) -> Result<PathBuf, StoreError> {
        let from = self.commit_dir(root);
        let doomed = self.doomed_dir(root);
        self.inner
            .fs
            .rename(&from, &doomed)
            .map_err(io_err("rename", &from))
            .inspect_err(|_| self.poison())?;
        state.commits.remove(root);
        state.pending_delete.remove(root);
        Ok(doomed)
    }

    fn remove_doomed(&self, doomed: &Path) -> Result<(), StoreError> {
        let fs = &self.inner.fs;
        let result = (|| {
            if self.inner.config.fsync {
                fs.sync_dir(&self.inner.dir)
                    .map_err(io_err("fsync", &self.inner.dir))?;
            }
            fs.remove_all(doomed).map_err(io_err("remove", doomed))
        })();
        result.inspect_err(|_| self.poison())
    }

    /// Called when a session ends: releases its base and finishes a deferred deletion.
    pub(crate) fn release(&self, base: &Root) {
        let mut state = self.inner.state.lock();
        let count = state.sessions.entry(*base).or_insert(1);
        *count -= 1;
        if *count > 0 {
            return;
        }
        state.sessions.remove(base);
        if !state.pending_delete.contains(base) {
            return;
        }
        if let Ok(doomed) = self.unlink_commit_locked(&mut state, base) {
            drop(state);
            // An error poisons the store; the next open removes the leftover.
            let _ = self.remove_doomed(&doomed);
        }
    }

    /// Recomputes every commit's root and file hashes from its files, and reports the commit
    /// directories that failed to load at open. Reads every file; holds one memory at a time.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let (roots, broken) = {
            let state = self.inner.state.lock();
            let mut roots: Vec<(u64, Root)> =
                state.commits.iter().map(|(r, i)| (i.seq(), *r)).collect();
            roots.sort();
            (roots, state.broken.clone())
        };
        let mut report = VerifyReport {
            checked: 0,
            problems: broken,
        };
        for (_, root) in roots {
            let dir = self.commit_dir(&root);
            if let Err(e) = self.verify_commit(&root) {
                report.problems.push(Problem {
                    path: dir,
                    reason: e.to_string(),
                });
            }
            report.checked += 1;
        }
        Ok(report)
    }

    fn verify_commit(&self, root: &Root) -> Result<(), StoreError> {
        let fs = &self.inner.fs;
        let dir = self.commit_dir(root);
        let index_path = dir.join("index");
        let bytes = fs
            .read_file(&index_path)
            .map_err(io_err("read", &index_path))?;
        let index = CommitIndex::decode(&bytes).map_err(|e| index_err(&index_path, e))?;
        let corrupt = |path: &Path, reason: &str| StoreError::Corrupted {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if index.state_root() != *root {
            return Err(corrupt(&index_path, "index does not hash to the root"));
        }
        for m in index.modules() {
            let hex = m.id().to_hex();
            let path = dir.join("bytecode").join(&hex);
            let code = fs.read_file(&path).map_err(io_err("read", &path))?;
            if Sha256::digest(&code).as_slice() != m.bytecode_hash().as_bytes()
                || m.bytecode_hash().as_bytes() != m.id().as_bytes()
                || code.len() as u64 != m.bytecode_len()
            {
                return Err(corrupt(&path, "bytecode does not match its hash"));
            }
            blob::read(self, &dir, m)?;
            let tree_path = dir.join("memory").join(format!("{hex}.tree"));
            let tree_bytes = fs
                .read_file(&tree_path)
                .map_err(io_err("read", &tree_path))?;
            let tree = MemoryTree::decode(&tree_bytes).map_err(|e| index_err(&tree_path, e))?;
            let image_path = dir.join("memory").join(&hex);
            let image = fs
                .read_file(&image_path)
                .map_err(io_err("read", &image_path))?;
            if image.len() as u64 != m.memory().image().len {
                return Err(corrupt(&image_path, "image has the wrong length"));
            }
            let image_tree = MemoryTree::from_memory(&image);
            if image_tree != tree || tree.root() != m.memory().image().root {
                return Err(corrupt(&tree_path, "page tree does not match the image"));
            }
            let memory = self.reconstruct(&dir, m, image)?;
            if MemoryTree::from_memory(&memory).root() != m.memory().root() {
                return Err(corrupt(&image_path, "memory does not hash to its root"));
            }
        }
        Ok(())
    }

    /// Image zero-extended to the memory length, with the delta applied.
    fn reconstruct(
        &self,
        dir: &Path,
        m: &ModuleEntry,
        mut image: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let len = usize::try_from(m.memory().len()).map_err(|_| StoreError::InvalidInput {
            reason: "memory too large for this platform".into(),
        })?;
        // The length comes from the index: a forged one is an error, not an allocation abort.
        image
            .try_reserve_exact(len.saturating_sub(image.len()))
            .map_err(|_| StoreError::Corrupted {
                path: dir.to_path_buf(),
                reason: format!("cannot allocate a memory of {len} bytes"),
            })?;
        image.resize(len, 0);
        if let Some(d) = &m.memory().delta() {
            let path = dir.join("memory").join(format!("{}.diff", m.id().to_hex()));
            let pages = self.read_delta(&path, d, m.memory().len())?;
            for (i, page) in pages.iter() {
                let at = i as usize * mapping::OS_PAGE;
                image[at..at + mapping::OS_PAGE].copy_from_slice(page);
            }
        }
        Ok(image)
    }

    pub(crate) fn read_delta(
        &self,
        path: &Path,
        d: &store_index::DeltaRef,
        memory_len: u64,
    ) -> Result<DeltaPages, StoreError> {
        let bytes = self
            .inner
            .fs
            .read_file(path)
            .map_err(io_err("read", path))?;
        if bytes.len() as u64 != d.file_len || Digest::sha256(&bytes) != d.file_hash {
            return Err(StoreError::Corrupted {
                path: path.to_path_buf(),
                reason: "delta does not match its hash".into(),
            });
        }
        DeltaPages::decode(&bytes, d.pages, memory_len).map_err(|reason| StoreError::Corrupted {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// A module's memory bytes in a commit, read from its files (image + delta).
    pub fn read_memory(&self, root: &Root, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let index = self.index(root)?;
        let m = index
            .module(id)
            .ok_or(StoreError::NotFound(Missing::Module(*id)))?;
        let dir = self.commit_dir(root);
        let path = dir.join("memory").join(id.to_hex());
        let image = self
            .inner
            .fs
            .read_file(&path)
            .map_err(io_err("read", &path))?;
        if image.len() as u64 != m.memory().image().len {
            return Err(StoreError::Corrupted {
                path,
                reason: "image has the wrong length".into(),
            });
        }
        self.reconstruct(&dir, m, image)
    }

    /// A module's blob in a commit.
    pub fn read_blob(&self, root: &Root, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let index = self.index(root)?;
        let m = index
            .module(id)
            .ok_or(StoreError::NotFound(Missing::Module(*id)))?;
        blob::read(self, &self.commit_dir(root), m)
    }

    /// Whether an earlier I/O error makes the store refuse writes.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    pub(crate) fn poison(&self) {
        self.inner.poisoned.store(true, Ordering::SeqCst);
    }

    pub(crate) fn check_writable(&self) -> Result<(), StoreError> {
        if self.is_poisoned() {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    pub(crate) fn commit_dir(&self, root: &Root) -> PathBuf {
        self.inner.dir.join(root.to_hex())
    }

    /// A fresh name to rename a commit directory to before removing it.
    pub(crate) fn doomed_dir(&self, root: &Root) -> PathBuf {
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.inner.dir.join(format!(
            "{DEL_PREFIX}{}-{}-{n}",
            root.to_hex(),
            std::process::id()
        ))
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .dir
            .join(format!("{TMP_PREFIX}{}-{n}", std::process::id()))
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
    pub fn decode_delta(bytes: &[u8], pages: u32, memory_len: u64) -> Result<usize, String> {
        crate::delta::DeltaPages::decode(bytes, pages, memory_len).map(|d| d.len())
    }
}

/// Creates `dir` and its missing parents. With `fsync`, each new directory's entry is made durable
/// by syncing its parent: otherwise a power loss could lose a new store directory, and with it
/// every commit acknowledged in it (syncing a directory does not persist its own name).
fn create_dir_all(fs: &dyn Fs, dir: &Path, fsync: bool) -> Result<(), StoreError> {
    if fs.exists(dir).map_err(io_err("stat", dir))? {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_all(fs, parent, fsync)?;
    }
    match fs.create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(io_err("create dir", dir)(e));
        }
        _ => {}
    }
    if fsync {
        let parent = parent.unwrap_or(Path::new("."));
        fs.sync_dir(parent).map_err(io_err("fsync", parent))?;
    }
    Ok(())
}
