//! The files layer: every on-disk name of the store, the checked reads of a commit's files, and
//! the one way a commit reaches the disk (temporary directory, write, fsync, rename, fsync of the
//! parent).
//!
//! No other module spells a file name or calls the file system: the registry ([`crate::store`])
//! asks [`StoreFiles`] to open, list, publish and remove commit directories, and the planner and
//! the session read a commit through [`CommitDir`], whose reads check every file against its
//! index (hash and length) before returning it.
//!
//! Layout (docs/STORE-FORMAT.md): `<store>/{LOCK, FORMAT, <root>/{index, deleted, bytecode/<id>,
//! memory/<id>{,.tree,.diff}, blob/<id>{,.diff}}}`; `.tmp-*` and `.del-*` are leftovers of an
//! interrupted commit or deletion, removed at open, and a commit directory holding the `deleted`
//! marker is a deferred deletion that open finishes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};
use store_index::{
    CommitIndex, Digest, KvEntry, MemoryTree, ModuleEntry, ModuleId, Namespace, PAGE_SIZE,
    RecordKind, Root, StoreMarker, decode_record, encode_record, hash,
};
use strata_fs::{Fs, Zeros};

use crate::delta::DeltaPages;
use crate::kv::{self, Table};
use crate::plan::{KvSource, Planned, PlannedKv, Source};
use crate::{Corruption, StoreError, SyncMode, blob, mapping};

/// Whether opening a store may create its directory and format marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// A missing directory or marker makes a new, empty store.
    IfMissing,
    /// Only an existing store opens; nothing is created but the lock file.
    Never,
}

const LOCK: &str = "LOCK";
const MARKER: &str = "FORMAT";
const INDEX: &str = "index";
/// In a commit directory: the commit awaits a deferred deletion (empty, durable).
const DELETED: &str = "deleted";
const TMP_PREFIX: &str = ".tmp-";
const DEL_PREFIX: &str = ".del-";
/// The subdirectories of a commit directory, in creation order.
const SUBDIRS: [&str; 4] = ["bytecode", "memory", "blob", "kv"];
/// The permission bits of every file the store writes (committed files and the format marker):
/// read-only, so that nothing, not even a later open by the store itself, can write or truncate
/// a file a session may have mapped (the store's own writes go through the descriptor that
/// created the file). The lock file is the one writable file.
const READ_ONLY: u32 = 0o444;
/// The most of a file [`StoreFiles::copy_file`] holds in memory at once.
const COPY_CHUNK: usize = 16 * PAGE_SIZE;

/// One file of a module in a commit directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum File {
    /// The original wasm (`bytecode/<id>`).
    Bytecode,
    /// The full memory image (`memory/<id>`), sparse.
    Image,
    /// The image's page tree (`memory/<id>.tree`).
    Tree,
    /// The cumulative delta over the image (`memory/<id>.diff`).
    Delta,
    /// The full blob (`blob/<id>`).
    Blob,
    /// The blob's patch against the full blob (`blob/<id>.diff`).
    BlobPatch,
}

impl File {
    /// The path relative to the commit directory.
    fn relative(self, id: &ModuleId) -> PathBuf {
        let hex = id.to_hex();
        let (dir, name) = match self {
            File::Bytecode => ("bytecode", hex),
            File::Image => ("memory", hex),
            File::Tree => ("memory", format!("{hex}.tree")),
            File::Delta => ("memory", format!("{hex}.diff")),
            File::Blob => ("blob", hex),
            File::BlobPatch => ("blob", format!("{hex}.diff")),
        };
        Path::new(dir).join(name)
    }
}

/// The path of level `level` of a key-value space, relative to the commit directory.
fn kv_relative(namespace: &Namespace, level: usize) -> PathBuf {
    Path::new("kv").join(format!("{}.{level}", namespace.to_hex()))
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

fn corrupt(path: &Path, source: Corruption) -> StoreError {
    StoreError::Corrupted {
        path: path.to_path_buf(),
        source,
    }
}

fn mismatch(path: &Path, file: &'static str) -> StoreError {
    corrupt(path, Corruption::Mismatch { file })
}

pub(crate) fn index_err(path: &Path, e: store_index::IndexError) -> StoreError {
    match e {
        store_index::IndexError::Incompatible { .. } => StoreError::Incompatible {
            path: path.to_path_buf(),
            source: e,
        },
        e => corrupt(path, Corruption::Record(e)),
    }
}

fn too_big() -> StoreError {
    StoreError::InvalidInput {
        reason: "memory too large for this platform".into(),
    }
}

/// Writes the tables that background compactions build, as `.tmp-kv-*` files of the store
/// directory (leftovers like any `.tmp-*`: removed at open). A commit that adopts one hard-links
/// it into its own directory.
#[derive(Clone)]
pub(crate) struct StagedFiles {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
}

impl std::fmt::Debug for StagedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagedFiles({})", self.dir.display())
    }
}

impl StagedFiles {
    /// Writes `bytes` as a new read-only staged table, synced, and maps it.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<(PathBuf, Table), StoreError> {
        static STAGED: AtomicU64 = AtomicU64::new(0);
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{TMP_PREFIX}kv-{}-{n}", std::process::id()));
        let fs = &*self.fs;
        fs.write_file(&path, bytes, Zeros::Write, READ_ONLY)
            .map_err(io_err("write", &path))?;
        // Synced even without `fsync`: the write-back of a merged table (as large as the state
        // for a rebase) is the compaction's work, not that of the commits running meanwhile.
        fs.sync_file(&path).map_err(io_err("fsync", &path))?;
        let file = fs.open_read(&path).map_err(io_err("open", &path))?;
        let table = Table::map(&file, bytes.len(), path.clone())?;
        Ok((path, table))
    }

    /// Removes a staged table, best effort (open removes what is left).
    pub(crate) fn remove(&self, path: &Path) {
        let _ = self.fs.remove_file(path);
    }
}

/// A commit directory found at open.
pub(crate) struct Listed {
    pub(crate) root: Root,
    pub(crate) path: PathBuf,
    /// Its index, checked against the directory's name.
    pub(crate) index: Result<CommitIndex, StoreError>,
}

/// The store directory: its lock, format marker and commit directories.
#[derive(Debug)]
pub(crate) struct StoreFiles {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    fsync: bool,
    sync: SyncMode,
    tmp_counter: AtomicU64,
    /// Held for the life of the store: one `Store` per directory (and the file `syncfs` names).
    lock: strata_fs::File,
}

impl StoreFiles {
    /// Creates the directory if missing (syncing each new entry into its parent), locks it, and
    /// checks (or writes) the format marker.
    pub(crate) fn open(
        dir: &Path,
        fs: Arc<dyn Fs>,
        fsync: bool,
        sync: SyncMode,
        create: Create,
    ) -> Result<StoreFiles, StoreError> {
        // A new directory's entry is made durable in its parent: otherwise a power loss could lose
        // a new store directory, and with it every commit acknowledged in it.
        match create {
            Create::IfMissing if fsync => fs.create_dir_all_durable(dir),
            Create::IfMissing => fs.create_dir_all(dir),
            Create::Never => fs.metadata(dir).and_then(|m| {
                if m.is_dir() {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::NotFound, "not a directory"))
                }
            }),
        }
        .map_err(io_err("create dir", dir))?;
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
        let files = StoreFiles {
            dir: dir.to_path_buf(),
            fs,
            fsync,
            sync,
            tmp_counter: AtomicU64::new(0),
            lock,
        };
        files.check_marker(create)?;
        Ok(files)
    }

    fn check_marker(&self, create: Create) -> Result<(), StoreError> {
        let (fs, dir) = (&self.fs, &self.dir);
        let marker = dir.join(MARKER);
        // One read, no separate existence check: a missing marker is a new store.
        match fs.read_file(&marker) {
            Ok(bytes) => {
                decode_record::<StoreMarker>(RecordKind::Store, &bytes)
                    .map_err(|e| index_err(&marker, e))?;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create == Create::IfMissing => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupted {
                    path: marker,
                    source: Corruption::NoFormatMarker,
                });
            }
            Err(e) => return Err(io_err("read", &marker)(e)),
        }
        let created_by = format!("store-commit {}", env!("CARGO_PKG_VERSION"));
        let bytes = encode_record(RecordKind::Store, &StoreMarker { created_by })
            .map_err(|e| index_err(&marker, e))?;
        let tmp = dir.join(format!("{TMP_PREFIX}format"));
        fs.remove_all(&tmp).map_err(io_err("remove", &tmp))?;
        fs.write_file(&tmp, &bytes, Zeros::Write, READ_ONLY)
            .map_err(io_err("write", &tmp))?;
        if self.fsync {
            fs.sync_file(&tmp).map_err(io_err("fsync", &tmp))?;
        }
        fs.rename(&tmp, &marker).map_err(io_err("rename", &tmp))?;
        self.sync_store_dir()
    }

    /// Removes the leftovers of interrupted commits and deletions, finishes deferred deletions
    /// (commit directories holding the `deleted` marker), and reads every other commit's index.
    pub(crate) fn scan(&self) -> Result<Vec<Listed>, StoreError> {
        let (fs, dir) = (&self.fs, &self.dir);
        let mut cleaned = false;
        let mut names = fs.read_dir(dir).map_err(io_err("read dir", dir))?;
        names.sort();
        let mut listed = Vec::new();
        let mut doomed = Vec::new();
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
            // Only the exact name of a root (lower-case hex) is a commit: `ABC...` parses to the
            // root of `abc...`, whose files are read under the other name.
            let Ok(root) = Root::from_hex(&name) else {
                continue;
            };
            if root.to_hex() != name {
                continue;
            }
            let marker = path.join(DELETED);
            if fs.has_marker(&marker).map_err(io_err("stat", &marker))? {
                doomed.push(self.unlink(&root)?);
                continue;
            }
            let commit = self.commit(&root);
            let index = commit.index().and_then(|index| {
                if index.state_root() == root {
                    Ok(index)
                } else {
                    Err(corrupt(&commit.file_index(), Corruption::WrongRoot))
                }
            });
            listed.push(Listed { root, path, index });
        }
        // The renames are durable before anything inside is removed: a crash never leaves a
        // commit directory half removed under its own name. One sync covers every rename and the
        // leftovers removed above; what a crash leaves of a removal below is a leftover too.
        if cleaned || !doomed.is_empty() {
            self.sync_store_dir()?;
        }
        for doomed in &doomed {
            self.fs
                .remove_all(doomed)
                .map_err(io_err("remove", doomed))?;
        }
        Ok(listed)
    }

    /// The store directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The writer of background compactions' tables.
    pub(crate) fn staged(&self) -> StagedFiles {
        StagedFiles {
            dir: self.dir.clone(),
            fs: Arc::clone(&self.fs),
        }
    }

    /// The directory of commit `root` (whether or not it exists).
    pub(crate) fn commit(&self, root: &Root) -> CommitDir<'_> {
        CommitDir {
            files: self,
            path: self.dir.join(root.to_hex()),
        }
    }

    fn sync_store_dir(&self) -> Result<(), StoreError> {
        if self.fsync {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync", &self.dir))?;
        }
        Ok(())
    }

    fn fresh_name(&self, prefix: &str, what: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        self.dir.join(format!("{prefix}{what}{pid}-{n}"))
    }

    /// Writes a planned commit into a fresh temporary directory and syncs it: the planned files
    /// (written, or hard-linked from `base`), then the index. Returns the directory; on error it
    /// is removed (best effort).
    pub(crate) fn write_commit(
        &self,
        base: Option<&Root>,
        index: &CommitIndex,
        planned: Vec<Planned<'_>>,
        kv: Vec<PlannedKv>,
    ) -> Result<PathBuf, StoreError> {
        let tmp = self.fresh_name(TMP_PREFIX, "");
        self.write_tmp(&tmp, base, index, planned, kv)
            .inspect_err(|_| self.discard(&tmp))?;
        Ok(tmp)
    }

    fn write_tmp(
        &self,
        tmp: &Path,
        base: Option<&Root>,
        index: &CommitIndex,
        planned: Vec<Planned<'_>>,
        kv: Vec<PlannedKv>,
    ) -> Result<(), StoreError> {
        let fs = &*self.fs;
        let mut dirs = vec![tmp.to_path_buf()];
        dirs.extend(SUBDIRS.iter().map(|d| tmp.join(d)));
        for d in &dirs {
            fs.create_dir(d).map_err(io_err("create dir", d))?;
        }
        let base = base.map(|r| self.commit(r));
        let mut to_sync = Vec::new();
        for Planned { id, file, source } in planned {
            let path = tmp.join(file.relative(&id));
            let (data, zeros) = match source {
                Source::Base => {
                    let from = base
                        .as_ref()
                        .ok_or_else(|| StoreError::InvalidInput {
                            reason: "a file linked from a base, without a base commit".into(),
                        })?
                        .file(file, &id);
                    match fs.hard_link(&from, &path) {
                        Ok(()) => continue,
                        // The base's file is at its link limit (about 65,000 on ext4): a copy, same
                        // bytes, so the index does not change; the next commit links to the copy.
                        Err(e) if e.kind() == io::ErrorKind::TooManyLinks => {
                            let zeros = match file {
                                File::Image => Zeros::Holes,
                                _ => Zeros::Write,
                            };
                            self.copy_file(&from, &path, zeros)?;
                            to_sync.push(path);
                            continue;
                        }
                        Err(e) => return Err(io_err("link", &path)(e)),
                    }
                }
                Source::Bytes(data) => (data, Zeros::Write),
                Source::Memory(data) => (data.into(), Zeros::Holes),
                Source::Tree(tree) => {
                    let bytes = tree.encode().map_err(|e| index_err(&path, e))?;
                    (bytes.into(), Zeros::Write)
                }
            };
            fs.write_file(&path, &data, zeros, READ_ONLY)
                .map_err(io_err("write", &path))?;
            to_sync.push(path);
        }
        for PlannedKv {
            namespace,
            level,
            source,
        } in kv
        {
            let relative = kv_relative(&namespace, level);
            let path = tmp.join(&relative);
            let bytes = match source {
                KvSource::Bytes(bytes) => Some(bytes),
                KvSource::Base => None,
                KvSource::Staged(staged) => {
                    // A new file of this store: linking cannot meet the link limit.
                    fs.hard_link(staged.path(), &path)
                        .map_err(io_err("link", &path))?;
                    continue;
                }
            };
            let Some(bytes) = bytes else {
                let from = base
                    .as_ref()
                    .ok_or_else(|| StoreError::InvalidInput {
                        reason: "a file linked from a base, without a base commit".into(),
                    })?
                    .path
                    .join(&relative);
                match fs.hard_link(&from, &path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::TooManyLinks => {
                        self.copy_file(&from, &path, Zeros::Write)?;
                        to_sync.push(path);
                    }
                    Err(e) => return Err(io_err("link", &path)(e)),
                }
                continue;
            };
            fs.write_file(&path, &bytes, Zeros::Write, READ_ONLY)
                .map_err(io_err("write", &path))?;
            to_sync.push(path);
        }
        let path = tmp.join(INDEX);
        let bytes = index.encode().map_err(|e| index_err(&path, e))?;
        fs.write_file(&path, &bytes, Zeros::Write, READ_ONLY)
            .map_err(io_err("write", &path))?;
        to_sync.push(path);
        match (self.fsync, self.sync) {
            (false, _) => {}
            (true, SyncMode::WholeFileSystem) => {
                fs.syncfs(&self.lock).map_err(io_err("syncfs", tmp))?;
            }
            // In any order, so all at once: nothing in the directory counts until it is renamed
            // into place, after every one of these.
            (true, _) => fs
                .sync_batch(&to_sync, &dirs)
                .map_err(io_err("fsync", tmp))?,
        }
        Ok(())
    }

    /// Copies `from` into the new read-only file `to`, a bounded chunk at a time; with
    /// [`Zeros::Holes`], zero 64 KiB pages stay holes. Does not sync.
    fn copy_file(&self, from: &Path, to: &Path, zeros: Zeros) -> Result<(), StoreError> {
        let fs = &*self.fs;
        let src = fs.open_read(from).map_err(io_err("open", from))?;
        let len = fs.file_metadata(&src).map_err(io_err("stat", from))?.len();
        let dst = fs.create_new(to, READ_ONLY).map_err(io_err("create", to))?;
        let mut buf = vec![0; COPY_CHUNK];
        let (mut at, mut written) = (0, 0);
        while at < len {
            let n = usize::try_from((len - at).min(COPY_CHUNK as u64)).map_err(|_| too_big())?;
            let chunk = &mut buf[..n];
            fs.read_at(&src, chunk, at).map_err(io_err("read", from))?;
            for (i, page) in chunk.chunks(PAGE_SIZE).enumerate() {
                if zeros == Zeros::Holes && store_index::is_zero(page) {
                    continue;
                }
                let offset = at + (i * PAGE_SIZE) as u64;
                fs.write_at(&dst, page, offset)
                    .map_err(io_err("write", to))?;
                written = offset + page.len() as u64;
            }
            at += n as u64;
        }
        // A trailing hole still counts in the length.
        if written < len {
            fs.write_at(&dst, &[0], len - 1)
                .map_err(io_err("write", to))?;
        }
        Ok(())
    }

    /// Renames a written temporary directory into place as commit `root` (the commit point) and
    /// makes the rename durable. With `replace`, a directory already at that name (one that failed
    /// to load at open) is moved out of the way first.
    pub(crate) fn publish(&self, tmp: &Path, root: &Root, replace: bool) -> Result<(), StoreError> {
        let fs = &self.fs;
        let target = self.commit(root).path;
        let doomed = if replace {
            let doomed = self.fresh_name(DEL_PREFIX, &format!("{}-", root.to_hex()));
            fs.rename(&target, &doomed)
                .map_err(io_err("rename", &target))?;
            Some(doomed)
        } else {
            None
        };
        fs.rename(tmp, &target).map_err(io_err("rename", tmp))?;
        if let Some(doomed) = doomed {
            // Best effort: the next open removes it otherwise.
            let _ = fs.remove_all(&doomed);
        }
        self.sync_store_dir()
    }

    /// Removes a temporary directory, best effort (the next open removes what is left).
    pub(crate) fn discard(&self, tmp: &Path) {
        let _ = self.fs.remove_all(tmp);
    }

    /// Renames commit `root` out of the way (the deletion's commit point); returns where to.
    pub(crate) fn unlink(&self, root: &Root) -> Result<PathBuf, StoreError> {
        let from = self.commit(root).path;
        let doomed = self.fresh_name(DEL_PREFIX, &format!("{}-", root.to_hex()));
        self.fs
            .rename(&from, &doomed)
            .map_err(io_err("rename", &from))?;
        Ok(doomed)
    }

    /// Records durably that commit `root` awaits a deferred deletion (the `deleted` marker, its
    /// name synced in the commit directory): from then on open removes the commit, never lists it.
    pub(crate) fn mark_deleted(&self, root: &Root) -> Result<(), StoreError> {
        let marker = self.commit(root).path.join(DELETED);
        if self.fsync {
            return self
                .fs
                .create_marker(&marker)
                .map_err(io_err("create", &marker));
        }
        // Without fsync nothing is durable anyway: the marker without the directory sync.
        match self.fs.create_new(&marker, 0o644) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err("create", &marker)(e)),
        }
    }

    /// Withdraws a deferred deletion: removes the `deleted` marker, durably.
    pub(crate) fn unmark_deleted(&self, root: &Root) -> Result<(), StoreError> {
        let dir = self.commit(root).path;
        let marker = dir.join(DELETED);
        match self.fs.remove_file(&marker) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            r => r.map_err(io_err("remove", &marker))?,
        }
        if self.fsync {
            self.fs.sync_dir(&dir).map_err(io_err("fsync", &dir))?;
        }
        Ok(())
    }

    /// Makes an [`unlink`](Self::unlink) durable, then removes the renamed directory.
    pub(crate) fn remove_unlinked(&self, doomed: &Path) -> Result<(), StoreError> {
        self.sync_store_dir()?;
        self.fs.remove_all(doomed).map_err(io_err("remove", doomed))
    }
}

/// One commit directory. Every read is checked against the index entry it is given: a file that
/// does not match is [`StoreError::Corrupted`], naming the file.
#[derive(Debug)]
pub(crate) struct CommitDir<'a> {
    files: &'a StoreFiles,
    path: PathBuf,
}

impl CommitDir<'_> {
    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, file: File, id: &ModuleId) -> PathBuf {
        self.path.join(file.relative(id))
    }

    fn file_index(&self) -> PathBuf {
        self.path.join(INDEX)
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, StoreError> {
        self.files.fs.read_file(path).map_err(io_err("read", path))
    }

    /// The commit's index (decoded; its root is the caller's to check).
    pub(crate) fn index(&self) -> Result<CommitIndex, StoreError> {
        let path = self.file_index();
        let bytes = self.read(&path)?;
        CommitIndex::decode(&bytes).map_err(|e| index_err(&path, e))
    }

    /// A module's bytecode, checked against its id, hash and length.
    pub(crate) fn bytecode(&self, m: &ModuleEntry) -> Result<Vec<u8>, StoreError> {
        let path = self.file(File::Bytecode, &m.id());
        let code = self.read(&path)?;
        if Sha256::digest(&code).as_slice() != m.bytecode_hash().as_bytes()
            || m.bytecode_hash().as_bytes() != m.id().as_bytes()
            || code.len() as u64 != m.bytecode_len()
        {
            return Err(mismatch(&path, "bytecode"));
        }
        Ok(code)
    }

    /// The full blob file of a module, checked against `expect` (length, hash).
    pub(crate) fn full_blob(
        &self,
        m: &ModuleEntry,
        expect: (u64, Digest),
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.file(File::Blob, &m.id());
        let bytes = self.read(&path)?;
        if bytes.len() as u64 != expect.0 || hash::blob(&bytes) != expect.1 {
            return Err(mismatch(&path, "blob"));
        }
        Ok(bytes)
    }

    /// A module's blob (the full blob, or the full blob patched), checked against the index.
    pub(crate) fn blob(&self, m: &ModuleEntry) -> Result<Vec<u8>, StoreError> {
        let Some(d) = &m.blob_delta() else {
            return self.full_blob(m, (m.blob_len(), m.blob_hash()));
        };
        let base = self.full_blob(m, (d.base_len, d.base_hash))?;
        let path = self.file(File::BlobPatch, &m.id());
        let patch = self.read(&path)?;
        if patch.len() as u64 != d.file_len || Digest::sha256(&patch) != d.file_hash {
            return Err(mismatch(&path, "blob patch"));
        }
        // The length is not covered by the root: a forged one is refused, never allocated.
        let blob = blob::apply(&base, &patch, m.blob_len())
            .map_err(|e| corrupt(&path, Corruption::Patch(e)))?;
        if hash::blob(&blob) != m.blob_hash() {
            return Err(mismatch(&path, "patched blob"));
        }
        Ok(blob)
    }

    /// The page tree of a module's image, checked against the image's length and root.
    pub(crate) fn tree(&self, m: &ModuleEntry) -> Result<MemoryTree, StoreError> {
        let path = self.file(File::Tree, &m.id());
        let tree = MemoryTree::decode(&self.read(&path)?).map_err(|e| index_err(&path, e))?;
        if tree.memory_len() != m.memory().image().len || tree.root() != m.memory().image().root {
            return Err(mismatch(&path, "page tree"));
        }
        Ok(tree)
    }

    /// A module's image file opened for mapping, with its length checked.
    pub(crate) fn open_image(&self, m: &ModuleEntry) -> Result<strata_fs::File, StoreError> {
        let path = self.file(File::Image, &m.id());
        let fs = &self.files.fs;
        let file = fs.open_read(&path).map_err(io_err("open", &path))?;
        let len = fs
            .file_metadata(&file)
            .map_err(io_err("stat", &path))?
            .len();
        if len != m.memory().image().len {
            return Err(mismatch(&path, "image"));
        }
        Ok(file)
    }

    /// A module's image bytes, with its length checked.
    pub(crate) fn image(&self, m: &ModuleEntry) -> Result<Vec<u8>, StoreError> {
        let path = self.file(File::Image, &m.id());
        let image = self.read(&path)?;
        if image.len() as u64 != m.memory().image().len {
            return Err(mismatch(&path, "image"));
        }
        Ok(image)
    }

    /// A module's delta pages (none without a delta), checked against the index.
    pub(crate) fn delta(&self, m: &ModuleEntry) -> Result<DeltaPages, StoreError> {
        let Some(d) = &m.memory().delta() else {
            return Ok(DeltaPages::default());
        };
        let path = self.file(File::Delta, &m.id());
        let bytes = self.read(&path)?;
        if bytes.len() as u64 != d.file_len || Digest::sha256(&bytes) != d.file_hash {
            return Err(mismatch(&path, "delta"));
        }
        DeltaPages::decode(&bytes, d.pages, m.memory().len())
            .map_err(|e| corrupt(&path, Corruption::Delta(e)))
    }

    /// A module's memory: the image zero-extended to the memory length, with the delta applied.
    pub(crate) fn memory(&self, m: &ModuleEntry) -> Result<Vec<u8>, StoreError> {
        self.reconstruct(m, self.image(m)?)
    }

    fn reconstruct(&self, m: &ModuleEntry, mut image: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let len = usize::try_from(m.memory().len()).map_err(|_| too_big())?;
        // The length comes from the index: a forged one is an error, not an allocation abort.
        image
            .try_reserve_exact(len.saturating_sub(image.len()))
            .map_err(|_| {
                let path = self.file(File::Image, &m.id());
                corrupt(
                    &path,
                    Corruption::TooLarge {
                        len: m.memory().len(),
                    },
                )
            })?;
        image.resize(len, 0);
        for (i, page) in self.delta(m)?.iter() {
            let at = i as usize * mapping::OS_PAGE;
            image[at..at + mapping::OS_PAGE].copy_from_slice(page);
        }
        Ok(image)
    }

    /// The tables of a key-value space, mapped, base first; each checked against its length and
    /// entry count in the index (not its hash: opening costs O(1), [`verify`](Self::verify)
    /// hashes every file).
    pub(crate) fn kv_tables(&self, entry: &KvEntry) -> Result<Vec<Table>, StoreError> {
        let fs = &self.files.fs;
        let mut out = Vec::with_capacity(entry.levels().len());
        for (level, r) in entry.levels().iter().enumerate() {
            let path = self.path.join(kv_relative(&entry.namespace(), level));
            let file = fs.open_read(&path).map_err(io_err("open", &path))?;
            let len = fs
                .file_metadata(&file)
                .map_err(io_err("stat", &path))?
                .len();
            if len != r.file_len {
                return Err(mismatch(&path, "key-value table"));
            }
            let len = usize::try_from(len).map_err(|_| too_big())?;
            let table = Table::map(&file, len, path.clone())?;
            if table.len() != r.entries {
                return Err(mismatch(&path, "key-value table"));
            }
            out.push(table);
        }
        Ok(out)
    }

    /// Reads every table of a key-value space whole, checks each against its hash, and checks
    /// the content against the entry (keys, bytes, set hash).
    fn verify_kv(&self, entry: &KvEntry) -> Result<(), StoreError> {
        let mut tables = Vec::with_capacity(entry.levels().len());
        for (level, r) in entry.levels().iter().enumerate() {
            let path = self.path.join(kv_relative(&entry.namespace(), level));
            let bytes = self.read(&path)?;
            if bytes.len() as u64 != r.file_len || Digest::sha256(&bytes) != r.file_hash {
                return Err(mismatch(&path, "key-value table"));
            }
            let table = Table::owned(bytes, path.clone())?;
            if table.len() != r.entries {
                return Err(mismatch(&path, "key-value table"));
            }
            tables.push(table);
        }
        if let Err(reason) = kv::check_space(entry, &tables)? {
            let path = self.path.join(kv_relative(&entry.namespace(), 0));
            return Err(corrupt(&path, Corruption::KvContent { reason }));
        }
        Ok(())
    }

    /// Recomputes the commit's root and every file's hash from the files (one memory at a time).
    pub(crate) fn verify(&self, root: &Root) -> Result<(), StoreError> {
        let index = self.index()?;
        if index.state_root() != *root {
            return Err(corrupt(&self.file_index(), Corruption::WrongRoot));
        }
        for entry in index.kv() {
            self.verify_kv(entry)?;
        }
        for m in index.modules() {
            self.bytecode(m)?;
            self.blob(m)?;
            let tree = self.tree(m)?;
            let image = self.image(m)?;
            if MemoryTree::from_memory(&image) != tree {
                return Err(mismatch(&self.file(File::Tree, &m.id()), "page tree"));
            }
            let memory = self.reconstruct(m, image)?;
            if MemoryTree::from_memory(&memory).root() != m.memory().root() {
                return Err(mismatch(&self.file(File::Image, &m.id()), "memory"));
            }
        }
        Ok(())
    }
}
