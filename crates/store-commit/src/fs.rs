//! The one file-system interface of the store, its real implementation, a fault injector and a
//! power-loss simulator.
//!
//! Every file-system operation of the store goes through [`Fs`], so a test can count operations,
//! fail any one of them (once or from then on, e.g. with ENOSPC; [`FaultFs`]), or cut the power at
//! any one and keep only what was synced ([`PowerLossFs`]), and check what a reopen reads.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

/// The file-system operations the store uses. Implementations must be thread-safe.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Creates one directory (its parent exists).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a new file (failing if it exists) holding `data`. With `sparse`, 4 KiB blocks of zeroes
    /// may be left as holes. Does not sync.
    fn write_file(&self, path: &Path, data: &[u8], sparse: bool) -> io::Result<()>;
    /// Flushes a file's data and metadata to stable storage.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Flushes a directory's entries to stable storage.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Renames atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates `link` as a hard link to `original`.
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// Removes a directory tree or a file; a missing path is not an error.
    fn remove_all(&self, path: &Path) -> io::Result<()>;
    /// Names of a directory's entries.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Reads a whole file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens a file for reading (and mapping).
    fn open_read(&self, path: &Path) -> io::Result<File>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Opens (creating if needed) a lock file and takes an exclusive lock on it without waiting;
    /// the lock lives as long as the returned file. `ErrorKind::WouldBlock` when someone holds it.
    fn lock(&self, path: &Path) -> io::Result<File>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

const BLOCK: usize = 4096;

impl Fs for RealFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn write_file(&self, path: &Path, data: &[u8], sparse: bool) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        if !sparse {
            return file.write_all(data);
        }
        // Write runs of non-zero blocks; the zero runs stay holes.
        let mut start = None;
        let mut at = 0;
        while at < data.len() {
            let end = (at + BLOCK).min(data.len());
            let zero = store_index::is_zero(&data[at..end]);
            match (zero, start) {
                (false, None) => start = Some(at),
                (true, Some(s)) => {
                    file.write_all_at(&data[s..at], s as u64)?;
                    start = None;
                }
                _ => {}
            }
            at = end;
        }
        if let Some(s) = start {
            file.write_all_at(&data[s..], s as u64)?;
        }
        file.set_len(data.len() as u64)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        std::fs::hard_link(original, link)
    }

    fn remove_all(&self, path: &Path) -> io::Result<()> {
        let result = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn lock(&self, path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(file)
    }
}

/// Which operation a [`FaultFs`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Fs::create_dir`]
    CreateDir,
    /// [`Fs::write_file`]
    WriteFile,
    /// [`Fs::sync_file`]
    SyncFile,
    /// [`Fs::sync_dir`]
    SyncDir,
    /// [`Fs::rename`]
    Rename,
    /// [`Fs::hard_link`]
    HardLink,
    /// [`Fs::remove_all`]
    RemoveAll,
    /// [`Fs::read_dir`]
    ReadDir,
    /// [`Fs::read_file`]
    ReadFile,
    /// [`Fs::open_read`]
    OpenRead,
    /// [`Fs::exists`]
    Exists,
    /// [`Fs::lock`]
    Lock,
}

/// How an armed [`FaultFs`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the chosen operation fails.
    Once,
    /// The chosen operation and every later one fail (a disk that filled up or went away).
    FromThenOn,
}

/// A [`Fs`] wrapper for tests: logs every operation and fails the n-th one on request.
#[derive(Debug)]
pub struct FaultFs {
    inner: Arc<dyn Fs>,
    count: AtomicU64,
    fail_at: AtomicU64,
    mode: Mutex<FaultMode>,
    errno: Mutex<i32>,
    log_enabled: AtomicBool,
    log: Mutex<Vec<(Op, PathBuf)>>,
}

impl FaultFs {
    /// Wraps `inner`, unarmed.
    pub fn new(inner: Arc<dyn Fs>) -> FaultFs {
        FaultFs {
            inner,
            count: AtomicU64::new(0),
            fail_at: AtomicU64::new(u64::MAX),
            mode: Mutex::new(FaultMode::Once),
            errno: Mutex::new(28), // ENOSPC
            log_enabled: AtomicBool::new(true),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Operations seen so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Fails the operation numbered `op` (as counted by [`ops`](Self::ops), so `ops()` fails the
    /// next one) with the OS error `errno`, in `mode`.
    pub fn fail_at(&self, op: u64, mode: FaultMode, errno: i32) {
        *self.mode.lock() = mode;
        *self.errno.lock() = errno;
        self.fail_at.store(op, Ordering::SeqCst);
    }

    /// Disarms.
    pub fn heal(&self) {
        self.fail_at.store(u64::MAX, Ordering::SeqCst);
    }

    /// Turns the operation log on or off (on by default).
    pub fn set_logging(&self, on: bool) {
        self.log_enabled.store(on, Ordering::SeqCst);
    }

    /// Takes the logged operations.
    pub fn take_log(&self) -> Vec<(Op, PathBuf)> {
        std::mem::take(&mut *self.log.lock())
    }

    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if self.log_enabled.load(Ordering::SeqCst) {
            self.log.lock().push((op, path.to_path_buf()));
        }
        let at = self.fail_at.load(Ordering::SeqCst);
        let fail = match *self.mode.lock() {
            FaultMode::Once => n == at,
            FaultMode::FromThenOn => n >= at,
        };
        if fail {
            return Err(io::Error::from_raw_os_error(*self.errno.lock()));
        }
        Ok(())
    }
}

impl Fs for FaultFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDir, path)?;
        self.inner.create_dir(path)
    }
    fn write_file(&self, path: &Path, data: &[u8], sparse: bool) -> io::Result<()> {
        self.check(Op::WriteFile, path)?;
        self.inner.write_file(path, data, sparse)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncFile, path)?;
        self.inner.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, path)?;
        self.inner.sync_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, from)?;
        self.inner.rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.check(Op::HardLink, link)?;
        self.inner.hard_link(original, link)
    }
    fn remove_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveAll, path)?;
        self.inner.remove_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.check(Op::ReadDir, path)?;
        self.inner.read_dir(path)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check(Op::ReadFile, path)?;
        self.inner.read_file(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.check(Op::OpenRead, path)?;
        self.inner.open_read(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.check(Op::Exists, path)?;
        self.inner.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Lock, path)?;
        self.inner.lock(path)
    }
}

/// A [`Fs`] wrapper for tests that simulates losing power: it tracks what a crash may lose, and
/// [`power_cut`](Self::power_cut) applies that loss to the real directory.
///
/// The model follows what Linux documents for ext4 (and POSIX leaves no stronger), taking the worst
/// case everywhere:
///
/// - A file's content is durable only once the file is synced (`fsync`). The store writes every
///   file once (create, write, maybe sync, never rewritten), so the loss truncates a file to its
///   content at its last sync: an unsynced new file comes back empty.
/// - A directory entry (created, hard-linked, renamed, removed) is durable only once its directory
///   is synced; syncing a file does not persist its name. At the cut every directory goes back to its
///   entries at its last sync, independently of the others. A rename within one directory is atomic
///   (both names are in the same journal); a rename across directories could leave both names, and
///   restores the directory at the first.
/// - Removed entries whose removal was not synced come back with their durable content (the wrapper
///   copies what it needs before removing anything).
///
/// The first path the wrapper sees must be an existing directory (the store directory: wrap the
/// file system before [`Store::open_with_fs`](crate::Store::open_with_fs) on an existing
/// directory): it is the simulated disk, taken as durable as found. Paths outside it pass through
/// untracked. The simulation reads and writes the directory with `std::fs`; it keeps copies of the
/// synced files it tracks, so it is meant for test-sized stores.
#[derive(Debug)]
pub struct PowerLossFs {
    inner: Arc<dyn Fs>,
    count: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
    model: Mutex<Model>,
}

/// The volatile (what the running system sees) and durable (what survives a power loss) namespaces
/// of the simulated disk, sharing their nodes (inodes).
#[derive(Debug, Default)]
struct Model {
    root: Option<PathBuf>,
    /// Node 0 is the root directory once set.
    nodes: Vec<Node>,
    /// Files found on disk by (device, inode), so hard links stay hard links.
    by_ino: std::collections::HashMap<(u64, u64), usize>,
}

type Entries = std::collections::BTreeMap<OsString, usize>;

#[derive(Debug)]
enum Node {
    /// A file and its content at its last sync.
    File(Arc<Vec<u8>>),
    /// A directory. `loaded: false` means untouched since tracking started: durable as it is on
    /// disk, children not modelled yet.
    Dir {
        loaded: bool,
        volatile: Entries,
        durable: Entries,
    },
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl Model {
    /// Path components of `path` under the root, `None` when outside (or no root yet).
    fn rel(&self, path: &Path) -> Option<Vec<OsString>> {
        let rest = path.strip_prefix(self.root.as_ref()?).ok()?;
        rest.components()
            .map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect()
    }

    fn track(&mut self, path: &Path) {
        if self.root.is_none() && path.is_dir() {
            self.root = Some(path.to_path_buf());
            self.nodes = vec![Node::Dir {
                loaded: false,
                volatile: Entries::new(),
                durable: Entries::new(),
            }];
            self.by_ino.clear();
        }
    }

    fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Reads an untouched directory from disk into the model; what is there counts as durable.
    fn load(&mut self, id: usize, real: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if !matches!(self.nodes[id], Node::Dir { loaded: false, .. }) {
            return Ok(());
        }
        let mut entries = Entries::new();
        for e in std::fs::read_dir(real)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            let child = if meta.is_dir() {
                self.add(Node::Dir {
                    loaded: false,
                    volatile: Entries::new(),
                    durable: Entries::new(),
                })
            } else if let Some(&n) = self.by_ino.get(&(meta.dev(), meta.ino())) {
                n
            } else {
                let n = self.add(Node::File(Arc::new(std::fs::read(e.path())?)));
                self.by_ino.insert((meta.dev(), meta.ino()), n);
                n
            };
            entries.insert(e.file_name(), child);
        }
        self.nodes[id] = Node::Dir {
            loaded: true,
            volatile: entries.clone(),
            durable: entries,
        };
        Ok(())
    }

    /// The node at `comps` in the volatile namespace, loading directories on the way.
    fn lookup(&mut self, comps: &[OsString]) -> io::Result<Option<usize>> {
        let mut id = 0;
        let mut real = self.root.clone().ok_or_else(eio)?;
        for c in comps {
            self.load(id, &real)?;
            let Node::Dir { volatile, .. } = &self.nodes[id] else {
                return Ok(None);
            };
            match volatile.get(c) {
                Some(&n) => id = n,
                None => return Ok(None),
            }
            real.push(c);
        }
        Ok(Some(id))
    }

    /// The parent directory's node and the entry name, loading the parent first (so an entry
    /// created next is not mistaken for a durable one).
    fn parent(&mut self, path: &Path) -> io::Result<Option<(usize, OsString)>> {
        let Some(mut comps) = self.rel(path) else {
            return Ok(None);
        };
        let Some(name) = comps.pop() else {
            return Ok(None);
        };
        let Some(id) = self.lookup(&comps)? else {
            return Ok(None);
        };
        let mut real = self.root.clone().ok_or_else(eio)?;
        real.extend(&comps);
        self.load(id, &real)?;
        Ok(Some((id, name)))
    }

    fn entries(&mut self, dir: usize) -> io::Result<&mut Entries> {
        match &mut self.nodes[dir] {
            Node::Dir { volatile, .. } => Ok(volatile),
            Node::File(_) => Err(io::Error::from_raw_os_error(20)), // ENOTDIR
        }
    }

    /// Loads the whole subtree at `real` (about to leave the volatile namespace: a power loss may
    /// bring it back, so the model must know it).
    fn capture(&mut self, id: usize, real: &Path) -> io::Result<()> {
        self.load(id, real)?;
        let children: Vec<(OsString, usize)> = match &self.nodes[id] {
            Node::Dir { volatile, .. } => volatile.iter().map(|(n, c)| (n.clone(), *c)).collect(),
            Node::File(_) => return Ok(()),
        };
        for (name, child) in children {
            self.capture(child, &real.join(name))?;
        }
        Ok(())
    }

    /// Where node `target` (an untouched directory) is now, searching the volatile namespace.
    fn volatile_path(&self, at: usize, real: &Path, target: usize) -> Option<PathBuf> {
        if at == target {
            return Some(real.to_path_buf());
        }
        let Node::Dir {
            loaded: true,
            volatile,
            ..
        } = &self.nodes[at]
        else {
            return None;
        };
        volatile
            .iter()
            .find_map(|(n, c)| self.volatile_path(*c, &real.join(n), target))
    }

    /// Writes node `id` as it would be after a power loss at `dest`.
    fn build(
        &self,
        id: usize,
        dest: &Path,
        placed: &mut std::collections::HashMap<usize, PathBuf>,
    ) -> io::Result<()> {
        let root = self.root.as_deref().ok_or_else(eio)?;
        match &self.nodes[id] {
            Node::File(content) => match placed.get(&id) {
                Some(first) => std::fs::hard_link(first, dest)?,
                None => {
                    std::fs::write(dest, content.as_slice())?;
                    placed.insert(id, dest.to_path_buf());
                }
            },
            Node::Dir { loaded: false, .. } => {
                // Untouched: durable as it is; moved over whole. A second durable name (a rename
                // across directories) is dropped.
                if placed.contains_key(&id) {
                    return Ok(());
                }
                let from = self.volatile_path(0, root, id).ok_or_else(eio)?;
                std::fs::rename(from, dest)?;
                placed.insert(id, dest.to_path_buf());
            }
            Node::Dir { durable, .. } => {
                if placed.contains_key(&id) {
                    return Ok(());
                }
                std::fs::create_dir(dest)?;
                placed.insert(id, dest.to_path_buf());
                for (name, child) in durable {
                    self.build(*child, &dest.join(name), placed)?;
                }
            }
        }
        Ok(())
    }
}

impl PowerLossFs {
    /// Wraps `inner`, with power on.
    pub fn new(inner: Arc<dyn Fs>) -> PowerLossFs {
        PowerLossFs::with_clock(
            inner,
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(u64::MAX)),
        )
    }

    /// Wraps `inner` on a shared clock: operations are numbered on `ops`, and every operation
    /// numbered `cut_at` or later fails. Give other wrappers (a file cache's power-loss file
    /// system, say) the same two counters and one cut switches off the whole machine.
    pub fn with_clock(
        inner: Arc<dyn Fs>,
        ops: Arc<AtomicU64>,
        cut_at: Arc<AtomicU64>,
    ) -> PowerLossFs {
        PowerLossFs {
            inner,
            count: ops,
            cut_at,
            model: Mutex::new(Model::default()),
        }
    }

    /// Operations seen so far on the clock (failed ones included).
    pub fn ops(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// From operation number `op` on (as counted by [`ops`](Self::ops)), every operation fails with
    /// EIO: the machine is off. `u64::MAX` disarms.
    pub fn cut_at(&self, op: u64) {
        self.cut_at.store(op, Ordering::SeqCst);
    }

    /// Applies the power loss to the real directory: every directory goes back to its entries at its
    /// last sync and every file to its content at its last sync. Close the store first. Afterwards
    /// the wrapper starts over (the directory as it is now counts as durable); the cut stays armed.
    pub fn power_cut(&self) -> io::Result<()> {
        let mut model = self.model.lock();
        let Some(root) = model.root.clone() else {
            return Ok(());
        };
        let parent = root.parent().ok_or_else(eio)?;
        static CUTS: AtomicU64 = AtomicU64::new(0);
        let staging = parent.join(format!(
            ".powerloss-{}-{}",
            std::process::id(),
            CUTS.fetch_add(1, Ordering::Relaxed)
        ));
        // The root is rebuilt in place, so it must be modelled (untouched, it costs one listing).
        model.load(0, &root)?;
        let mut placed = std::collections::HashMap::new();
        model.build(0, &staging, &mut placed)?;
        for e in std::fs::read_dir(&root)? {
            let path = e?.path();
            if std::fs::symlink_metadata(&path)?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        for e in std::fs::read_dir(&staging)? {
            let e = e?;
            std::fs::rename(e.path(), root.join(e.file_name()))?;
        }
        std::fs::remove_dir(&staging)?;
        *model = Model::default();
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if n >= self.cut_at.load(Ordering::SeqCst) {
            return Err(eio());
        }
        Ok(())
    }
}

impl Fs for PowerLossFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(path);
        let at = m.parent(path)?;
        self.inner.create_dir(path)?;
        if let Some((dir, name)) = at {
            let node = m.add(Node::Dir {
                loaded: true,
                volatile: Entries::new(),
                durable: Entries::new(),
            });
            m.entries(dir)?.insert(name, node);
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, data: &[u8], sparse: bool) -> io::Result<()> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(path);
        let at = m.parent(path)?;
        let existed = path.exists();
        // A failed write may still leave a (partial) new file behind.
        let result = self.inner.write_file(path, data, sparse);
        if let Some((dir, name)) = at
            && !existed
            && path.exists()
        {
            let node = m.add(Node::File(Arc::new(Vec::new())));
            m.entries(dir)?.insert(name, node);
        }
        result
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(path);
        self.inner.sync_file(path)?;
        if let Some(comps) = m.rel(path)
            && let Some(id) = m.lookup(&comps)?
            && let Node::File(content) = &mut m.nodes[id]
        {
            *content = Arc::new(std::fs::read(path)?);
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(path);
        self.inner.sync_dir(path)?;
        if let Some(comps) = m.rel(path)
            && let Some(id) = m.lookup(&comps)?
        {
            m.load(id, path)?;
            if let Node::Dir {
                volatile, durable, ..
            } = &mut m.nodes[id]
            {
                *durable = volatile.clone();
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(from);
        let src = m.parent(from)?;
        let dst = m.parent(to)?;
        let node = match (&src, m.rel(from)) {
            (Some(_), Some(comps)) => m.lookup(&comps)?,
            _ => None,
        };
        // A replaced target leaves the volatile namespace: capture it.
        if let Some(comps) = m.rel(to)
            && let Some(old) = m.lookup(&comps)?
        {
            m.capture(old, to)?;
        }
        self.inner.rename(from, to)?;
        if let (Some((sd, sn)), Some((dd, dn)), Some(node)) = (src, dst, node) {
            m.entries(sd)?.remove(&sn);
            m.entries(dd)?.insert(dn, node);
        }
        Ok(())
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(link);
        let at = m.parent(link)?;
        let node = match m.rel(original) {
            Some(comps) => m.lookup(&comps)?,
            None => None,
        };
        self.inner.hard_link(original, link)?;
        if let (Some((dir, name)), Some(node)) = (at, node) {
            m.entries(dir)?.insert(name, node);
        }
        Ok(())
    }

    fn remove_all(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(path);
        let at = m.parent(path)?;
        let node = match m.rel(path) {
            Some(comps) if at.is_some() => m.lookup(&comps)?,
            _ => None,
        };
        if let Some(node) = node {
            m.capture(node, path)?;
        }
        let result = self.inner.remove_all(path);
        // Even a failed removal may have removed part of the tree; the model only drops the top
        // entry once it is gone (the entries inside stay as last synced, the worst case).
        if let Some((dir, name)) = at
            && !path.exists()
        {
            m.entries(dir)?.remove(&name);
        }
        result
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.check()?;
        self.model.lock().track(path);
        self.inner.read_dir(path)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check()?;
        self.inner.read_file(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.check()?;
        self.inner.open_read(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.check()?;
        self.model.lock().track(path);
        self.inner.exists(path)
    }

    fn lock(&self, path: &Path) -> io::Result<File> {
        self.check()?;
        let mut m = self.model.lock();
        m.track(path);
        let at = m.parent(path)?;
        let existed = path.exists();
        let file = self.inner.lock(path)?;
        if let Some((dir, name)) = at
            && !existed
        {
            let node = m.add(Node::File(Arc::new(Vec::new())));
            m.entries(dir)?.insert(name, node);
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss model on its own: what each kind of sync makes durable, and what the cut undoes.
    #[test]
    fn power_cut_keeps_exactly_what_was_synced() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("old")).unwrap();
        std::fs::write(root.join("old/kept"), b"before").unwrap();
        let fs = PowerLossFs::new(Arc::new(RealFs));
        assert!(fs.exists(root).unwrap()); // the first path seen is the simulated disk
        let p = |n: &str| root.join(n);
        // Synced file, unsynced entry: lost. Synced entry, unsynced file: empty.
        fs.write_file(&p("b"), b"bbbb", true).unwrap();
        fs.write_file(&p("c"), b"cccc", false).unwrap();
        fs.sync_file(&p("c")).unwrap();
        fs.create_dir(&p("d")).unwrap();
        fs.write_file(&p("d/x"), b"xx", false).unwrap();
        fs.sync_file(&p("d/x")).unwrap();
        fs.hard_link(&p("c"), &p("d/y")).unwrap();
        fs.sync_dir(&p("d")).unwrap();
        fs.sync_dir(root).unwrap();
        // After the last sync: a rename, a removal of a synced tree, a new link.
        fs.rename(&p("c"), &p("e")).unwrap();
        fs.remove_all(&p("old")).unwrap();
        fs.hard_link(&p("e"), &p("f")).unwrap();
        fs.write_file(&p("a"), b"aaaa", false).unwrap();
        fs.sync_file(&p("a")).unwrap();
        fs.write_file(&p("d/z"), b"zz", false).unwrap();
        fs.sync_file(&p("d/z")).unwrap();
        let before = fs.ops();
        fs.cut_at(before + 1);
        fs.sync_dir(&p("d")).unwrap();
        let err = fs.sync_dir(root).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5));
        assert!(fs.read_file(&p("e")).is_err(), "the machine is off");
        fs.power_cut().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c", "d", "old"]);
        assert_eq!(std::fs::read(p("b")).unwrap(), b"");
        assert_eq!(std::fs::read(p("c")).unwrap(), b"cccc");
        assert_eq!(std::fs::read(p("old/kept")).unwrap(), b"before");
        // `d` was synced after `z` was written and synced: all three entries survive.
        assert_eq!(std::fs::read(p("d/x")).unwrap(), b"xx");
        assert_eq!(std::fs::read(p("d/z")).unwrap(), b"zz");
        let ino = |n: &str| std::fs::metadata(p(n)).unwrap().ino();
        assert_eq!(ino("c"), ino("d/y"), "a hard link stays a hard link");
        // The wrapper starts over on the directory as it is now.
        fs.cut_at(u64::MAX);
        fs.rename(&p("c"), &p("g")).unwrap();
        fs.sync_dir(root).unwrap();
        fs.power_cut().unwrap();
        assert_eq!(std::fs::read(p("g")).unwrap(), b"cccc");
        assert!(!p("c").exists());
    }
}
