//! [`PowerLossFs`]: a test layer that simulates losing power, on a [`Clock`] that several layers
//! can share.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::{Fs, RealFs, Zeros};

/// The operation clock of one simulated machine: every operation of every [`PowerLossFs`] on it
/// takes the next number, and from the cut on every one fails with EIO. Clones share the clock.
#[derive(Clone, Debug)]
pub struct Clock(Arc<ClockState>);

#[derive(Debug)]
struct ClockState {
    ops: AtomicU64,
    cut_at: AtomicU64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    /// A new clock at operation 0, power on.
    pub fn new() -> Clock {
        Clock(Arc::new(ClockState {
            ops: AtomicU64::new(0),
            cut_at: AtomicU64::new(u64::MAX),
        }))
    }

    /// Operations seen so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.0.ops.load(Ordering::SeqCst)
    }

    /// From operation number `op` on (as counted by [`ops`](Self::ops), so `ops()` cuts at the
    /// next one), every operation fails with EIO: the machine is off. `u64::MAX` disarms.
    pub fn cut_at(&self, op: u64) {
        self.0.cut_at.store(op, Ordering::SeqCst);
    }

    /// Takes the next operation number; EIO once the power is off.
    fn tick(&self) -> io::Result<()> {
        let n = self.0.ops.fetch_add(1, Ordering::SeqCst);
        if n >= self.0.cut_at.load(Ordering::SeqCst) {
            return Err(eio());
        }
        Ok(())
    }
}

/// What [`PowerLossFs::power_cut`] leaves of what was not made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loss {
    /// The worst case POSIX allows (and ext4 documents): every directory goes back to its entries
    /// at its last sync, every file to its content at its last sync; a new file never synced
    /// comes back empty, a name never synced in its directory is gone (and a removed one back).
    Unsynced,
    /// A file system whose metadata reached the journal but whose data did not: every directory
    /// keeps its entries as they were at the cut, and every file written since its last sync
    /// comes back at its length with zeros in place of everything not synced (the torn file an
    /// unsynced rename can leave on a real disk).
    TornData,
}

/// A test layer that simulates losing power: it tracks what a crash may lose under one directory
/// (the simulated disk), and [`power_cut`](Self::power_cut) applies that loss to it.
///
/// The model follows what Linux documents for ext4 (and POSIX leaves no stronger), taking the
/// worst case everywhere:
///
/// - A file's content is durable only once the file is synced ([`sync_file`](Fs::sync_file),
///   [`sync_data`](Fs::sync_data)). Files are written once, by path ([`write_file`](Fs::write_file))
///   or through an open file ([`create_new`](Fs::create_new) then [`write`](Fs::write)); the loss
///   takes a file back to its content at its last sync (an unsynced new file comes back empty),
///   or, under [`Loss::TornData`], to its length with the unsynced bytes zeroed.
/// - A directory entry (created, hard-linked, renamed, removed) is durable only once its directory
///   is synced; syncing a file does not persist its name, nor does syncing a directory persist its
///   own. Under [`Loss::Unsynced`] every directory goes back to its entries at its last sync,
///   independently of the others. A rename within one directory is atomic; a rename across
///   directories could leave both names, and the cut restores the directory at the first.
/// - Removed entries whose removal was not synced come back with their durable content (the layer
///   copies what it needs before removing anything).
/// - [`syncfs`](Fs::syncfs) makes everything durable.
///
/// The directory `root` must exist; what is in it when first touched counts as durable. Paths
/// outside it pass through untracked. Operations take numbers on the [`Clock`]; from its cut on
/// every one fails with EIO. The simulation reads and writes the directory with `std::fs` and
/// keeps copies of the synced files it tracks, so it is meant for test-sized data.
#[derive(Debug)]
pub struct PowerLossFs {
    inner: Arc<dyn Fs>,
    clock: Clock,
    model: Mutex<Model>,
}

/// The volatile (what the running system sees) and durable (what survives a power loss)
/// namespaces of the simulated disk, sharing their nodes (inodes).
#[derive(Debug)]
struct Model {
    root: PathBuf,
    /// Node 0 is the root directory.
    nodes: Vec<Node>,
    /// Files by (device, inode): hard links stay hard links, and open files find their node.
    by_ino: HashMap<(u64, u64), usize>,
}

type Entries = BTreeMap<OsString, usize>;

#[derive(Debug)]
enum Node {
    File(FileNode),
    /// A directory. `loaded: false` means untouched since tracking started: durable as it is on
    /// disk, children not modelled yet.
    Dir {
        loaded: bool,
        volatile: Entries,
        durable: Entries,
    },
}

/// A file: its content at its last sync, whether it was written since, and its length now.
#[derive(Debug)]
struct FileNode {
    synced: Arc<Vec<u8>>,
    dirty: bool,
    len: u64,
}

impl FileNode {
    fn synced(content: Vec<u8>) -> Node {
        let len = content.len() as u64;
        Node::File(FileNode {
            synced: Arc::new(content),
            dirty: false,
            len,
        })
    }

    /// What a power cut leaves of the file under `loss`.
    fn after(&self, loss: Loss) -> Arc<Vec<u8>> {
        if loss == Loss::Unsynced || !self.dirty {
            return self.synced.clone();
        }
        let mut data = vec![0; self.len as usize];
        let keep = self.synced.len().min(data.len());
        data[..keep].copy_from_slice(&self.synced[..keep]);
        Arc::new(data)
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

fn empty_dir(loaded: bool) -> Node {
    Node::Dir {
        loaded,
        volatile: Entries::new(),
        durable: Entries::new(),
    }
}

fn ino(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl Model {
    fn new(root: PathBuf) -> Model {
        Model {
            root,
            nodes: vec![empty_dir(false)],
            by_ino: HashMap::new(),
        }
    }

    /// Path components of `path` under the root, `None` when outside.
    fn rel(&self, path: &Path) -> Option<Vec<OsString>> {
        let rest = path.strip_prefix(&self.root).ok()?;
        rest.components()
            .map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect()
    }

    fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Reads an untouched directory from disk into the model; what is there counts as durable.
    fn load(&mut self, id: usize, real: &Path) -> io::Result<()> {
        if !matches!(self.nodes[id], Node::Dir { loaded: false, .. }) {
            return Ok(());
        }
        let mut entries = Entries::new();
        for e in std::fs::read_dir(real)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            let child = if meta.is_dir() {
                self.add(empty_dir(false))
            } else if let Some(&n) = self.by_ino.get(&ino(&meta)) {
                n
            } else {
                let n = self.add(FileNode::synced(std::fs::read(e.path())?));
                self.by_ino.insert(ino(&meta), n);
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
        let mut real = self.root.clone();
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

    /// The node at `path`, if it is under the root and in the volatile namespace.
    fn node_at(&mut self, path: &Path) -> io::Result<Option<usize>> {
        match self.rel(path) {
            Some(comps) => self.lookup(&comps),
            None => Ok(None),
        }
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
        let mut real = self.root.clone();
        real.extend(&comps);
        self.load(id, &real)?;
        Ok(Some((id, name)))
    }

    fn entries(&mut self, dir: usize) -> io::Result<&mut Entries> {
        match &mut self.nodes[dir] {
            Node::Dir { volatile, .. } => Ok(volatile),
            Node::File(_) => Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOTDIR.raw_os_error(),
            )),
        }
    }

    fn file(&mut self, id: usize) -> Option<&mut FileNode> {
        match &mut self.nodes[id] {
            Node::File(f) => Some(f),
            Node::Dir { .. } => None,
        }
    }

    fn node_of_file(&self, file: &File) -> Option<usize> {
        let meta = file.metadata().ok()?;
        self.by_ino.get(&ino(&meta)).copied()
    }

    /// A new empty file named `name` in `dir` (its content durable as such, its name not yet).
    fn insert_file(&mut self, at: Option<(usize, OsString)>, ino: Option<(u64, u64)>) -> usize {
        let node = self.add(FileNode::synced(Vec::new()));
        if let Some(ino) = ino {
            // A new file, even if its inode number was a removed file's.
            self.by_ino.insert(ino, node);
        }
        if let Some((dir, name)) = at
            && let Ok(entries) = self.entries(dir)
        {
            entries.insert(name, node);
        }
        node
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

    /// Where node `target` is now, searching the loaded part of the volatile namespace.
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

    /// Reads a file's content now as its synced content.
    fn sync_node(&mut self, id: usize, real: &Path) -> io::Result<()> {
        if let Some(f) = self.file(id) {
            let content = std::fs::read(real)?;
            *f = FileNode {
                len: content.len() as u64,
                synced: Arc::new(content),
                dirty: false,
            };
        }
        Ok(())
    }

    /// Makes everything in the loaded volatile namespace under `id` durable (`syncfs`).
    fn sync_tree(&mut self, id: usize, real: &Path) -> io::Result<()> {
        let children: Vec<(OsString, usize)> = match &mut self.nodes[id] {
            Node::Dir {
                loaded: true,
                volatile,
                durable,
            } => {
                *durable = volatile.clone();
                volatile.iter().map(|(n, c)| (n.clone(), *c)).collect()
            }
            Node::Dir { loaded: false, .. } => return Ok(()),
            Node::File(_) => return self.sync_node(id, real),
        };
        for (name, child) in children {
            self.sync_tree(child, &real.join(name))?;
        }
        Ok(())
    }

    /// Writes node `id` as it would be after a power loss at `dest`.
    fn build(
        &self,
        id: usize,
        dest: &Path,
        loss: Loss,
        placed: &mut HashMap<usize, PathBuf>,
    ) -> io::Result<()> {
        match &self.nodes[id] {
            Node::File(file) => match placed.get(&id) {
                Some(first) => std::fs::hard_link(first, dest)?,
                None => {
                    std::fs::write(dest, file.after(loss).as_slice())?;
                    // The mode is set with the inode (at creation): a power cut keeps it.
                    let now = self.volatile_path(0, &self.root, id);
                    if let Some(meta) = now.and_then(|p| std::fs::symlink_metadata(p).ok()) {
                        std::fs::set_permissions(dest, meta.permissions())?;
                    }
                    placed.insert(id, dest.to_path_buf());
                }
            },
            Node::Dir { loaded: false, .. } => {
                // Untouched: durable as it is; moved over whole. A second durable name (a rename
                // across directories) is dropped.
                if placed.contains_key(&id) {
                    return Ok(());
                }
                let from = self.volatile_path(0, &self.root, id).ok_or_else(eio)?;
                std::fs::rename(from, dest)?;
                placed.insert(id, dest.to_path_buf());
            }
            Node::Dir {
                volatile, durable, ..
            } => {
                if placed.contains_key(&id) {
                    return Ok(());
                }
                std::fs::create_dir(dest)?;
                placed.insert(id, dest.to_path_buf());
                let entries = match loss {
                    Loss::Unsynced => durable,
                    Loss::TornData => volatile,
                };
                for (name, child) in entries {
                    self.build(*child, &dest.join(name), loss, placed)?;
                }
            }
        }
        Ok(())
    }
}

impl PowerLossFs {
    /// Wraps `inner` over the simulated disk `root` (an existing directory), on `clock`.
    pub fn new(inner: Arc<dyn Fs>, root: &Path, clock: Clock) -> PowerLossFs {
        PowerLossFs {
            inner,
            clock,
            model: Mutex::new(Model::new(root.to_path_buf())),
        }
    }

    /// Wraps the real file system over `root`, on a clock of its own.
    pub fn real(root: &Path) -> PowerLossFs {
        PowerLossFs::new(Arc::new(RealFs), root, Clock::new())
    }

    /// The clock this layer counts on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Operations seen so far on the clock (failed ones included).
    pub fn ops(&self) -> u64 {
        self.clock.ops()
    }

    /// Cuts the power at operation `op` of the clock (see [`Clock::cut_at`]).
    pub fn cut_at(&self, op: u64) {
        self.clock.cut_at(op);
    }

    /// Applies the power loss to the simulated disk, as `loss` says. Close what uses it first.
    /// Afterwards the layer starts over (the directory as it is now counts as durable); the cut
    /// stays armed.
    pub fn power_cut(&self, loss: Loss) -> io::Result<()> {
        let mut model = self.model.lock();
        let root = model.root.clone();
        let parent = root.parent().ok_or_else(eio)?;
        static CUTS: AtomicU64 = AtomicU64::new(0);
        let staging = parent.join(format!(
            ".powerloss-{}-{}",
            std::process::id(),
            CUTS.fetch_add(1, Ordering::Relaxed)
        ));
        // The root is rebuilt in place, so it must be modelled (untouched, it costs one listing).
        model.load(0, &root)?;
        let mut placed = HashMap::new();
        model.build(0, &staging, loss, &mut placed)?;
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
        *model = Model::new(root);
        Ok(())
    }
}

impl Fs for PowerLossFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        let at = m.parent(path)?;
        self.inner.create_dir(path)?;
        if let Some((dir, name)) = at {
            let node = m.add(empty_dir(true));
            m.entries(dir)?.insert(name, node);
        }
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        // The missing directories, outermost first; the parent of the first is loaded before
        // anything is created in it.
        let mut missing = Vec::new();
        let mut at = Some(path);
        while let Some(p) = at.filter(|p| m.rel(p).is_some_and(|c| !c.is_empty())) {
            if m.node_at(p)?.is_some() {
                break;
            }
            missing.push(p.to_path_buf());
            at = p.parent();
        }
        missing.reverse();
        if let Some(first) = missing.first() {
            m.parent(first)?;
        }
        let result = self.inner.create_dir_all(path);
        // Even a failed call may have created some of them.
        for p in &missing {
            if !p.is_dir() {
                break;
            }
            if let Some((dir, name)) = m.parent(p)? {
                let node = m.add(empty_dir(true));
                m.entries(dir)?.insert(name, node);
            }
        }
        result
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.clock.tick()?;
        self.inner.read_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        self.inner.sync_dir(path)?;
        if let Some(id) = m.node_at(path)? {
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

    fn write_file(&self, path: &Path, data: &[u8], zeros: Zeros, mode: u32) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        let at = m.parent(path)?;
        let existed = path.exists();
        // A failed write may still leave a (partial) new file behind.
        let result = self.inner.write_file(path, data, zeros, mode);
        if at.is_some()
            && !existed
            && let Ok(meta) = std::fs::symlink_metadata(path)
        {
            let node = m.insert_file(at, None);
            if let Some(f) = m.file(node) {
                f.dirty = true;
                f.len = meta.len();
            }
        }
        result
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.clock.tick()?;
        self.inner.read_file(path)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        self.inner.sync_file(path)?;
        if let Some(id) = m.node_at(path)? {
            m.sync_node(id, path)?;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        let src = m.parent(from)?;
        let dst = m.parent(to)?;
        let node = match src {
            Some(_) => m.node_at(from)?,
            None => None,
        };
        // A replaced target leaves the volatile namespace: capture it.
        if let Some(old) = m.node_at(to)? {
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
        self.clock.tick()?;
        let mut m = self.model.lock();
        let at = m.parent(link)?;
        let node = m.node_at(original)?;
        self.inner.hard_link(original, link)?;
        if let (Some((dir, name)), Some(node)) = (at, node) {
            m.entries(dir)?.insert(name, node);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        let at = m.parent(path)?;
        self.inner.remove_file(path)?;
        if let Some((dir, name)) = at {
            m.entries(dir)?.remove(&name);
        }
        Ok(())
    }

    fn remove_all(&self, path: &Path) -> io::Result<()> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        let at = m.parent(path)?;
        let node = match at {
            Some(_) => m.node_at(path)?,
            None => None,
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

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        self.clock.tick()?;
        self.inner.metadata(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.clock.tick()?;
        self.inner.exists(path)
    }

    fn lock(&self, path: &Path) -> io::Result<File> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        let at = m.parent(path)?;
        let existed = path.exists();
        let file = self.inner.lock(path)?;
        if at.is_some() && !existed {
            m.insert_file(at, Some(ino(&file.metadata()?)));
        }
        Ok(file)
    }

    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
        self.clock.tick()?;
        let mut m = self.model.lock();
        let at = m.parent(path)?;
        let file = self.inner.create_new(path, mode)?;
        if at.is_some() {
            m.insert_file(at, Some(ino(&file.metadata()?)));
        }
        Ok(file)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.clock.tick()?;
        self.inner.open_read(path)
    }

    fn open_for_mapping(&self, file: &File) -> io::Result<File> {
        self.clock.tick()?;
        self.inner.open_for_mapping(file)
    }

    fn file_metadata(&self, file: &File) -> io::Result<Metadata> {
        self.clock.tick()?;
        self.inner.file_metadata(file)
    }

    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        self.clock.tick()?;
        self.inner.read(file, buf, max)
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.clock.tick()?;
        self.inner.read_at(file, buf, offset)
    }

    fn write(&self, file: &File, data: &[u8]) -> io::Result<()> {
        self.clock.tick()?;
        self.written(file, || self.inner.write(file, data))
    }

    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        self.clock.tick()?;
        self.written(file, || self.inner.write_at(file, data, offset))
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.clock.tick()?;
        self.inner.sync_data(file)?;
        let mut m = self.model.lock();
        if let Some(node) = m.node_of_file(file)
            && let Some(path) = m.volatile_path(0, &m.root.clone(), node)
        {
            m.sync_node(node, &path)?;
        }
        Ok(())
    }

    /// The batch in the reverse of its lists' order, each sync a step of its own: a crash
    /// part-way leaves the directories durable before the files in them, an order the real
    /// batch, which issues them at once, may produce (and the sequential order never did).
    fn sync_batch(&self, files: &[PathBuf], dirs: &[PathBuf]) -> io::Result<()> {
        for dir in dirs.iter().rev() {
            self.sync_dir(dir)?;
        }
        for file in files.iter().rev() {
            self.sync_file(file)?;
        }
        Ok(())
    }

    fn syncfs(&self, file: &File) -> io::Result<()> {
        self.clock.tick()?;
        self.inner.syncfs(file)?;
        let mut m = self.model.lock();
        let root = m.root.clone();
        m.sync_tree(0, &root)
    }

    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()> {
        self.clock.tick()?;
        self.inner.set_mtime(file, time)
    }
}

impl PowerLossFs {
    /// Runs a write to `file`, keeping its node's dirty flag and length.
    fn written(&self, file: &File, write: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        // Marked first: a write that fails halfway may still have changed the file.
        let node = self.model.lock().node_of_file(file);
        if let Some(node) = node
            && let Some(f) = self.model.lock().file(node)
        {
            f.dirty = true;
        }
        let result = write();
        if let Some(node) = node
            && let Ok(meta) = file.metadata()
            && let Some(f) = self.model.lock().file(node)
        {
            f.len = meta.len();
        }
        result
    }
}
