//! [`PowerLossFs`]: a [`CacheFs`] wrapper for tests that simulates losing power.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::vfs::{CacheFs, RealFs};

/// What a [`PowerLossFs::power_cut`] leaves of what was not made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loss {
    /// The worst case POSIX allows (and ext4 documents): every directory goes back to its entries
    /// at its last sync, every file to its content at its last sync; a new file never synced
    /// comes back empty, a name never synced in its directory is gone.
    Unsynced,
    /// A file system whose metadata reached the journal but whose data did not: every directory
    /// keeps its entries as they were at the cut, and every file written since its last sync
    /// comes back at its length with zeros in place of everything not synced (the torn file an
    /// unsynced rename can leave on a real disk).
    TornData,
}

/// A [`CacheFs`] wrapper for tests that simulates losing power: it tracks what a crash may lose,
/// and [`power_cut`](Self::power_cut) applies that loss to the real directories.
///
/// Every directory a file operation touches is tracked from then on: its regular files at that
/// moment count as durable. The cache writes each file once (create, write, maybe sync, rename),
/// removes files and renames within one folder, which is what is modelled. Creating and removing
/// whole directories (`create_dir_all`, `remove_dir_all`) counts as durable at once. Operations
/// are numbered; from [`cut_at`](Self::cut_at) on every one fails with EIO (the machine is off).
/// The wrapper keeps copies of the synced files it tracks, so it is meant for test-sized caches.
#[derive(Debug)]
pub struct PowerLossFs {
    inner: Arc<dyn CacheFs>,
    ops: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
    model: Mutex<Model>,
}

#[derive(Debug, Default)]
struct Model {
    nodes: Vec<Node>,
    by_ino: HashMap<(u64, u64), usize>,
    dirs: BTreeMap<PathBuf, Entries>,
}

/// A file: its content at its last sync, and whether it was written since.
#[derive(Debug)]
struct Node {
    synced: Arc<Vec<u8>>,
    dirty: bool,
}

/// A tracked directory: its entries now and at its last sync.
#[derive(Debug, Default, Clone)]
struct Entries {
    volatile: BTreeMap<OsString, usize>,
    durable: BTreeMap<OsString, usize>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

fn split(path: &Path) -> io::Result<(&Path, OsString)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name.to_owned())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no parent or name: {}", path.display()),
        )),
    }
}

impl Model {
    /// Starts tracking `dir` (if it is not yet): its regular files count as durable.
    fn track(&mut self, dir: &Path) -> io::Result<()> {
        if self.dirs.contains_key(dir) {
            return Ok(());
        }
        let mut entries = Entries::default();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            if !meta.is_file() {
                continue;
            }
            let node = self.node_of(&meta, Arc::new(std::fs::read(e.path())?));
            entries.volatile.insert(e.file_name(), node);
        }
        entries.durable = entries.volatile.clone();
        self.dirs.insert(dir.to_path_buf(), entries);
        Ok(())
    }

    fn node_of(&mut self, meta: &Metadata, synced: Arc<Vec<u8>>) -> usize {
        let ino = (meta.dev(), meta.ino());
        if let Some(&n) = self.by_ino.get(&ino) {
            return n;
        }
        self.nodes.push(Node {
            synced,
            dirty: false,
        });
        self.by_ino.insert(ino, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn node_of_file(&self, file: &File) -> Option<usize> {
        let meta = file.metadata().ok()?;
        self.by_ino.get(&(meta.dev(), meta.ino())).copied()
    }

    /// Where `node` is now, if it has a name in a tracked directory.
    fn path_of(&self, node: usize) -> Option<PathBuf> {
        self.dirs.iter().find_map(|(dir, e)| {
            e.volatile
                .iter()
                .find(|&(_, &n)| n == node)
                .map(|(name, _)| dir.join(name))
        })
    }

    fn volatile(&mut self, dir: &Path) -> Option<&mut BTreeMap<OsString, usize>> {
        self.dirs.get_mut(dir).map(|e| &mut e.volatile)
    }
}

impl PowerLossFs {
    /// Wraps `inner`, with power on.
    pub fn new(inner: Arc<dyn CacheFs>) -> PowerLossFs {
        PowerLossFs::with_clock(
            inner,
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(u64::MAX)),
        )
    }

    /// Wraps the real file system.
    pub fn real() -> PowerLossFs {
        PowerLossFs::new(Arc::new(RealFs))
    }

    /// Wraps `inner` on a shared clock: operations are numbered on `ops`, and every operation
    /// numbered `cut_at` or later fails. Give other wrappers (the commit store's power-loss file
    /// system, say) the same two counters and one cut switches off the whole machine.
    pub fn with_clock(
        inner: Arc<dyn CacheFs>,
        ops: Arc<AtomicU64>,
        cut_at: Arc<AtomicU64>,
    ) -> PowerLossFs {
        PowerLossFs {
            inner,
            ops,
            cut_at,
            model: Mutex::new(Model::default()),
        }
    }

    /// Operations seen so far on the clock (failed ones included).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// From operation number `op` on (as counted by [`ops`](Self::ops)), every operation fails
    /// with EIO: the machine is off. `u64::MAX` disarms.
    pub fn cut_at(&self, op: u64) {
        self.cut_at.store(op, Ordering::SeqCst);
    }

    /// Applies the power loss to the real directories, as `loss` says. Drop the cache first.
    /// Afterwards the wrapper starts over (what is on disk now counts as durable); the cut stays
    /// armed.
    pub fn power_cut(&self, loss: Loss) -> io::Result<()> {
        let mut model = self.model.lock();
        let dirs = std::mem::take(&mut model.dirs);
        for (dir, entries) in &dirs {
            if !dir.is_dir() {
                continue;
            }
            let target = match loss {
                Loss::Unsynced => &entries.durable,
                Loss::TornData => &entries.volatile,
            };
            let mut contents = Vec::new();
            for (name, &node) in target {
                let n = &model.nodes[node];
                let data = if loss == Loss::TornData && n.dirty {
                    let len = std::fs::symlink_metadata(dir.join(name))?.len() as usize;
                    let mut data = vec![0; len];
                    let keep = n.synced.len().min(len);
                    data[..keep].copy_from_slice(&n.synced[..keep]);
                    Arc::new(data)
                } else {
                    n.synced.clone()
                };
                contents.push((dir.join(name), data));
            }
            for e in std::fs::read_dir(dir)? {
                let path = e?.path();
                if std::fs::symlink_metadata(&path)?.is_file() {
                    std::fs::remove_file(&path)?;
                }
            }
            for (path, data) in contents {
                std::fs::write(&path, &*data)?;
            }
        }
        *model = Model::default();
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n >= self.cut_at.load(Ordering::SeqCst) {
            return Err(eio());
        }
        Ok(())
    }

    /// Checks the power, then tracks the parent of `path`.
    fn enter(&self, path: &Path) -> io::Result<(PathBuf, OsString)> {
        self.check()?;
        let (dir, name) = split(path)?;
        self.model.lock().track(dir)?;
        Ok((dir.to_path_buf(), name))
    }
}

impl CacheFs for PowerLossFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.create_dir_all(path)
    }

    fn create_temp(&self, path: &Path) -> io::Result<File> {
        let (dir, name) = self.enter(path)?;
        let file = self.inner.create_temp(path)?;
        let meta = file.metadata()?;
        let mut model = self.model.lock();
        // A new file, even if its inode number was a removed file's.
        model.nodes.push(Node {
            synced: Arc::new(Vec::new()),
            dirty: false,
        });
        let node = model.nodes.len() - 1;
        model.by_ino.insert((meta.dev(), meta.ino()), node);
        if let Some(v) = model.volatile(&dir) {
            v.insert(name, node);
        }
        Ok(file)
    }

    fn write(&self, file: &File, data: &[u8]) -> io::Result<()> {
        self.check()?;
        // Marked first: a write that fails halfway may still have changed the file.
        let mut model = self.model.lock();
        if let Some(node) = model.node_of_file(file) {
            model.nodes[node].dirty = true;
        }
        drop(model);
        self.inner.write(file, data)
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        self.check()?;
        self.inner.sync_file(file)?;
        let mut model = self.model.lock();
        if let Some(node) = model.node_of_file(file)
            && let Some(path) = model.path_of(node)
        {
            model.nodes[node] = Node {
                synced: Arc::new(std::fs::read(path)?),
                dirty: false,
            };
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = self.enter(from)?;
        let (to_dir, to_name) = split(to)?;
        self.model.lock().track(to_dir)?;
        self.inner.rename(from, to)?;
        let mut model = self.model.lock();
        let node = model.volatile(&from_dir).and_then(|v| v.remove(&from_name));
        if let (Some(node), Some(v)) = (node, model.volatile(to_dir)) {
            v.insert(to_name, node);
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.sync_dir(path)?;
        if let Some(e) = self.model.lock().dirs.get_mut(path) {
            e.durable = e.volatile.clone();
        }
        Ok(())
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.check()?;
        self.inner.open_read(path)
    }

    fn file_metadata(&self, file: &File) -> io::Result<Metadata> {
        self.check()?;
        self.inner.file_metadata(file)
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        self.check()?;
        self.inner.metadata(path)
    }

    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        self.check()?;
        self.inner.read(file, buf, max)
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check()?;
        self.inner.read_at(file, buf, offset)
    }

    fn open_for_mapping(&self, file: &File) -> io::Result<File> {
        self.check()?;
        self.inner.open_for_mapping(file)
    }

    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()> {
        self.check()?;
        self.inner.set_mtime(file, time)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.enter(path)?;
        self.inner.remove_file(path)?;
        if let Some(v) = self.model.lock().volatile(&dir) {
            v.remove(&name);
        }
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.remove_dir_all(path)?;
        self.model
            .lock()
            .dirs
            .retain(|dir, _| !dir.starts_with(path));
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.check()?;
        self.inner.read_dir(path)
    }
}
