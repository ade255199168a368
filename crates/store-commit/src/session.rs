//! Sessions: the mutable view of one base commit, its checkpoints, and the commit that writes it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use store_index::{
    BlobDelta, CommitIndex, DeltaRef, Digest, MemoryEntry, MemoryTree, ModuleEntry, ModuleId,
    PAGE_SIZE, Root, hash, state_root, zero_page_hash,
};

use crate::blob;
use crate::delta::DeltaPages;
use crate::mapping::{ImageView, Mapping, MemoryHandle, OS_PAGE};
use crate::{Missing, Store, StoreError, io_err};

const PAGES_PER_LEAF: u32 = (PAGE_SIZE / OS_PAGE) as u32;

/// A mutable view of one commit (or of the empty state) that ends with at most one commit.
///
/// `Send`, not shared: a session and the wasm instances using its memories live on one thread at a
/// time. Dropping a session without [`commit`](Self::commit) discards its changes.
#[derive(Debug)]
pub struct Session {
    store: Store,
    id: u64,
    base: Option<Root>,
    modules: BTreeMap<ModuleId, ModState>,
    next_checkpoint: u64,
}

#[derive(Debug)]
struct ModState {
    /// The module's entry in the base commit; `None` when deployed in this session.
    base: Option<ModuleEntry>,
    deployed: Option<Deployed>,
    /// The blob when loaded or set.
    blob: Option<Arc<Vec<u8>>>,
    blob_dirty: bool,
    memory: Option<OpenMemory>,
}

#[derive(Debug)]
struct Deployed {
    bytecode: Vec<u8>,
    genesis: Vec<u8>,
}

#[derive(Debug)]
struct OpenMemory {
    handle: MemoryHandle,
    /// Length at open (the base length).
    base_len: usize,
    /// The image, to compare written pages with.
    image: Option<ImageView>,
    /// The pages written at open (the base delta, or the genesis pages of a new module).
    delta: DeltaPages,
}

/// A point a session can [`rollback`](Session::rollback) to. Only valid for the session that made it.
#[derive(Debug)]
pub struct Checkpoint {
    session: u64,
    modules: Vec<ModuleId>,
    /// Per module: the blob if loaded or set, and whether it changed.
    blobs: HashMap<ModuleId, BlobState>,
    memories: HashMap<ModuleId, (usize, DeltaPages)>,
}

impl Checkpoint {
    /// Bytes of memory pages this checkpoint holds.
    pub fn saved_bytes(&self) -> usize {
        self.memories.values().map(|(_, d)| d.data.len()).sum()
    }
}

type BlobState = (Option<Arc<Vec<u8>>>, bool);

/// One file of a planned commit.
enum Source<'a> {
    /// Hard link from the base commit.
    Link(PathBuf),
    /// New content; `sparse` leaves zero blocks as holes.
    Write(Cow<'a, [u8]>, bool),
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            self.store.release(&base);
        }
    }
}

impl Session {
    pub(crate) fn new(
        store: Store,
        base: Option<Root>,
        index: Option<Arc<CommitIndex>>,
    ) -> Session {
        let modules = index
            .iter()
            .flat_map(|i| i.modules().iter())
            .map(|m| {
                (
                    m.id(),
                    ModState {
                        base: Some(m.clone()),
                        deployed: None,
                        blob: None,
                        blob_dirty: false,
                        memory: None,
                    },
                )
            })
            .collect();
        // Process-wide, so a checkpoint is never mistaken for one of another store's session.
        static SESSIONS: AtomicU64 = AtomicU64::new(0);
        let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
        Session {
            store,
            id,
            base,
            modules,
            next_checkpoint: 0,
        }
    }

    /// The commit this session started from.
    pub fn base(&self) -> Option<Root> {
        self.base
    }

    /// The modules, sorted.
    pub fn modules(&self) -> Vec<ModuleId> {
        self.modules.keys().copied().collect()
    }

    /// Whether the session has a module.
    pub fn contains(&self, id: &ModuleId) -> bool {
        self.modules.contains_key(id)
    }

    fn base_dir(&self) -> Option<PathBuf> {
        self.base.map(|r| self.store.commit_dir(&r))
    }

    fn module(&self, id: &ModuleId) -> Result<&ModState, StoreError> {
        self.modules
            .get(id)
            .ok_or(StoreError::NotFound(Missing::Module(*id)))
    }

    fn module_mut(&mut self, id: &ModuleId) -> Result<&mut ModState, StoreError> {
        self.modules
            .get_mut(id)
            .ok_or(StoreError::NotFound(Missing::Module(*id)))
    }

    fn base_file(&self, sub: &str, name: String) -> Result<PathBuf, StoreError> {
        let dir = self.base_dir().ok_or_else(|| StoreError::InvalidInput {
            reason: "no base commit".into(),
        })?;
        Ok(dir.join(sub).join(name))
    }

    /// Adds a module: `id` must be the sha256 of `bytecode`; `memory` is its genesis linear memory
    /// (a multiple of 64 KiB, possibly empty); `blob` its initial host-owned state.
    pub fn deploy(
        &mut self,
        id: ModuleId,
        bytecode: &[u8],
        memory: &[u8],
        blob: Vec<u8>,
    ) -> Result<(), StoreError> {
        if self.modules.contains_key(&id) {
            return Err(StoreError::AlreadyDeployed { id });
        }
        if ModuleId::of_wasm(bytecode) != id {
            return Err(StoreError::InvalidInput {
                reason: format!("module id {id} is not the sha256 of the bytecode"),
            });
        }
        if !memory.len().is_multiple_of(PAGE_SIZE) || memory.len() / OS_PAGE > u32::MAX as usize {
            return Err(StoreError::InvalidInput {
                reason: format!(
                    "memory length {} is not a multiple of 64 KiB or too large",
                    memory.len()
                ),
            });
        }
        self.modules.insert(
            id,
            ModState {
                base: None,
                deployed: Some(Deployed {
                    bytecode: bytecode.to_vec(),
                    genesis: memory.to_vec(),
                }),
                blob: Some(Arc::new(blob)),
                blob_dirty: true,
                memory: None,
            },
        );
        Ok(())
    }

    /// A module's bytecode.
    pub fn bytecode(&self, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let m = self.module(id)?;
        if let Some(d) = &m.deployed {
            return Ok(d.bytecode.clone());
        }
        let path = self.base_file("bytecode", id.to_hex())?;
        let code = self
            .store
            .inner
            .fs
            .read_file(&path)
            .map_err(io_err("read", &path))?;
        if ModuleId::of_wasm(&code) != *id {
            return Err(StoreError::Corrupted {
                path,
                reason: "bytecode does not match its module id".into(),
            });
        }
        Ok(code)
    }

    /// A module's blob: the one set in this session, else the base commit's (read and checked
    /// against its hash on every call; the host keeps its own copy while it runs).
    pub fn blob(&self, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let m = self.module(id)?;
        if let Some(b) = &m.blob {
            return Ok(b.as_ref().clone());
        }
        let (Some(dir), Some(entry)) = (self.base_dir(), m.base.as_ref()) else {
            return Err(StoreError::InvalidInput {
                reason: "module has neither blob nor base".into(),
            });
        };
        blob::read(&self.store, &dir, entry)
    }

    /// Replaces a module's blob.
    pub fn set_blob(&mut self, id: &ModuleId, blob: Vec<u8>) -> Result<(), StoreError> {
        let m = self.module_mut(id)?;
        m.blob = Some(Arc::new(blob));
        m.blob_dirty = true;
        Ok(())
    }

    /// Opens a module's memory into a reservation of `reservation` bytes (at least its length). The
    /// first call maps the committed image copy-on-write and applies the delta; later calls return
    /// the same handle whatever the reservation.
    pub fn memory(
        &mut self,
        id: &ModuleId,
        reservation: usize,
    ) -> Result<MemoryHandle, StoreError> {
        let base_dir = self.base_dir();
        let store = self.store.clone();
        let m = self.module_mut(id)?;
        if let Some(open) = &m.memory {
            return Ok(open.handle.clone());
        }
        let open = if let Some(d) = &m.deployed {
            let len = d.genesis.len();
            check_reservation(len, reservation)?;
            let mapping = Mapping::new(None, 0, len, reservation)?;
            // The genesis pages play the part of a delta over an empty image.
            let mut patched = DeltaPages::default();
            for (i, page) in d.genesis.chunks_exact(OS_PAGE).enumerate() {
                if !store_index::is_zero(page) {
                    // SAFETY: the mapping is fresh and `len` long; no handle exists yet.
                    unsafe { mapping.write(i * OS_PAGE, page) };
                    patched.indices.push(i as u32);
                    patched.data.extend_from_slice(page);
                }
            }
            OpenMemory {
                handle: MemoryHandle(Arc::new(mapping)),
                base_len: len,
                image: None,
                delta: patched,
            }
        } else {
            let entry = m.base.as_ref().map(|b| b.memory().clone()).ok_or_else(|| {
                StoreError::InvalidInput {
                    reason: "module has neither base nor deployment".into(),
                }
            })?;
            let dir = base_dir.ok_or_else(|| StoreError::InvalidInput {
                reason: "no base commit".into(),
            })?;
            let too_big = || StoreError::InvalidInput {
                reason: "memory too large for this platform".into(),
            };
            let len = usize::try_from(entry.len()).map_err(|_| too_big())?;
            let image_len = usize::try_from(entry.image().len).map_err(|_| too_big())?;
            check_reservation(len, reservation)?;
            let fs = &store.inner.fs;
            let path = dir.join("memory").join(id.to_hex());
            let file = fs.open_read(&path).map_err(io_err("open", &path))?;
            let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
            if file_len != entry.image().len {
                return Err(StoreError::Corrupted {
                    path,
                    reason: format!("image is {file_len} bytes, the index says {image_len}"),
                });
            }
            let delta = match &entry.delta() {
                None => DeltaPages::default(),
                Some(d) => {
                    let p = dir.join("memory").join(format!("{}.diff", id.to_hex()));
                    store.read_delta(&p, d, entry.len())?
                }
            };
            let mapping = Mapping::new(Some(&file), image_len, len, reservation)?;
            for (i, page) in delta.iter() {
                // SAFETY: page indices were checked against the length; the mapping is fresh.
                unsafe { mapping.write(i as usize * OS_PAGE, page) };
            }
            OpenMemory {
                handle: MemoryHandle(Arc::new(mapping)),
                base_len: len,
                image: ImageView::new(&file, image_len)?,
                delta,
            }
        };
        let handle = open.handle.clone();
        m.memory = Some(open);
        Ok(handle)
    }

    /// Saves the current state of blobs, module set and opened memories. Costs the pages written
    /// since the memories were opened (they are copied), not the memory size.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, StoreError> {
        self.next_checkpoint += 1;
        let mut memories = HashMap::new();
        let mut blobs = HashMap::new();
        for (id, m) in &self.modules {
            blobs.insert(*id, (m.blob.clone(), m.blob_dirty));
            let Some(open) = &m.memory else { continue };
            let mapping = &open.handle.0;
            let mut saved = DeltaPages::default();
            for p in mapping.written_pages() {
                // SAFETY: the page is inside the length; per the handle contract no wasm runs now.
                let now = unsafe { mapping.bytes(p as usize * OS_PAGE, OS_PAGE) };
                if open.delta.get(p) == Some(now) {
                    continue;
                }
                saved.indices.push(p);
                saved.data.extend_from_slice(now);
            }
            memories.insert(*id, (mapping.len(), saved));
        }
        Ok(Checkpoint {
            session: self.id,
            modules: self.modules.keys().copied().collect(),
            blobs,
            memories,
        })
    }

    /// Restores blobs, module set, and the content and length of every opened memory to
    /// `checkpoint`. Memories opened after it return to their base state.
    pub fn rollback(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        if checkpoint.session != self.id {
            return Err(StoreError::InvalidInput {
                reason: "checkpoint belongs to another session".into(),
            });
        }
        self.modules.retain(|id, _| checkpoint.modules.contains(id));
        for (id, m) in self.modules.iter_mut() {
            if let Some((blob, dirty)) = checkpoint.blobs.get(id) {
                m.blob = blob.clone();
                m.blob_dirty = *dirty;
            }
            let Some(open) = &m.memory else { continue };
            let empty = DeltaPages::default();
            let (len, saved) = match checkpoint.memories.get(id) {
                Some((len, saved)) => (*len, saved),
                None => (open.base_len, &empty),
            };
            restore(open, len, saved)?;
        }
        Ok(())
    }

    /// Writes the session as a new commit and returns its root. A state equal to an existing commit
    /// (for example an unchanged session) returns that commit's root and writes nothing.
    pub fn commit(self) -> Result<Root, StoreError> {
        self.store.check_writable()?;
        let mut entries = Vec::with_capacity(self.modules.len());
        let mut files: Vec<(String, Source<'_>)> = Vec::new();
        for (id, m) in &self.modules {
            entries.push(self.plan_module(id, m, &mut files)?);
        }
        let root = state_root(entries.iter().map(|e| (e.id(), e.leaf())));
        // Also covers an unchanged session: its base is listed while the session lives.
        if self.reuse_existing(&root) {
            return Ok(root);
        }
        self.store.check_writable()?;
        let seq = {
            let mut state = self.store.inner.state.lock();
            state.next_seq += 1;
            state.next_seq - 1
        };
        let index =
            CommitIndex::new(seq, self.base, entries).map_err(|e| StoreError::InvalidInput {
                reason: e.to_string(),
            })?;
        let tmp = self.store.tmp_dir();
        let written = self.write_tmp(&tmp, &index, files);
        let result = written.and_then(|()| self.publish(&tmp, &root, index));
        if result.is_err() {
            self.store.poison();
            let _ = self.store.inner.fs.remove_all(&tmp);
        }
        result.map(|()| root)
    }

    /// Whether `root` exists already; a commit awaiting deferred deletion is revived.
    fn reuse_existing(&self, root: &Root) -> bool {
        let mut state = self.store.inner.state.lock();
        if state.commits.contains_key(root) {
            state.pending_delete.remove(root);
            return true;
        }
        false
    }

    fn write_tmp(
        &self,
        tmp: &Path,
        index: &CommitIndex,
        files: Vec<(String, Source<'_>)>,
    ) -> Result<(), StoreError> {
        let fs = &*self.store.inner.fs;
        let fsync = self.store.inner.config.fsync;
        let dirs = [
            tmp.to_path_buf(),
            tmp.join("bytecode"),
            tmp.join("memory"),
            tmp.join("blob"),
        ];
        for d in &dirs {
            fs.create_dir(d).map_err(io_err("create dir", d))?;
        }
        let mut to_sync = Vec::new();
        for (rel, source) in files {
            let path = tmp.join(&rel);
            match source {
                Source::Link(from) => fs.hard_link(&from, &path).map_err(io_err("link", &path))?,
                Source::Write(data, sparse) => {
                    fs.write_file(&path, &data, sparse)
                        .map_err(io_err("write", &path))?;
                    to_sync.push(path);
                }
            }
        }
        let path = tmp.join("index");
        let bytes = index.encode().map_err(|e| crate::index_err(&path, e))?;
        fs.write_file(&path, &bytes, false)
            .map_err(io_err("write", &path))?;
        to_sync.push(path);
        if fsync {
            for p in &to_sync {
                fs.sync_file(p).map_err(io_err("fsync", p))?;
            }
            for d in dirs.iter().rev() {
                fs.sync_dir(d).map_err(io_err("fsync", d))?;
            }
        }
        Ok(())
    }

    /// Renames the finished directory into place and registers the commit.
    fn publish(&self, tmp: &Path, root: &Root, index: CommitIndex) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        let target = self.store.commit_dir(root);
        // The lock spans rename and parent fsync, so a commit is listed only once durable and two
        // sessions committing the same state never race on the directory name.
        let mut state = inner.state.lock();
        if state.commits.contains_key(root) {
            state.pending_delete.remove(root);
            drop(state);
            let _ = inner.fs.remove_all(tmp);
            return Ok(());
        }
        // A directory that failed to load at open holds this root: replace it.
        let broken = state.broken.iter().position(|p| p.path == target);
        let doomed = match broken {
            Some(i) => {
                let doomed = self.store.doomed_dir(root);
                inner
                    .fs
                    .rename(&target, &doomed)
                    .map_err(io_err("rename", &target))?;
                state.broken.remove(i);
                Some(doomed)
            }
            None => None,
        };
        inner
            .fs
            .rename(tmp, &target)
            .map_err(io_err("rename", tmp))?;
        if let Some(doomed) = doomed {
            // Best effort: the next open removes it otherwise.
            let _ = inner.fs.remove_all(&doomed);
        }
        if inner.config.fsync {
            inner
                .fs
                .sync_dir(&inner.dir)
                .map_err(io_err("fsync", &inner.dir))?;
        }
        state.commits.insert(*root, Arc::new(index));
        Ok(())
    }

    /// Decides the entry and the files of one module.
    fn plan_module<'a>(
        &'a self,
        id: &ModuleId,
        m: &'a ModState,
        files: &mut Vec<(String, Source<'a>)>,
    ) -> Result<ModuleEntry, StoreError> {
        let hex = id.to_hex();
        let link = |sub: &str, name: String| -> Result<Source<'a>, StoreError> {
            Ok(Source::Link(self.base_file(sub, name)?))
        };
        // Blob.
        let (blob_hash, blob_len, blob_delta) = self.plan_blob(&hex, m, files)?;
        // Bytecode and memory of a module deployed in this session: everything is new.
        if let Some(d) = &m.deployed {
            files.push((
                format!("bytecode/{hex}"),
                Source::Write(Cow::Borrowed(&d.bytecode), false),
            ));
            let memory: &[u8] = match &m.memory {
                // SAFETY: the whole length is mapped; per the handle contract no wasm runs now.
                Some(open) => unsafe { open.handle.0.bytes(0, open.handle.len()) },
                None => &d.genesis,
            };
            let tree = MemoryTree::from_memory(memory);
            files.push((
                format!("memory/{hex}"),
                Source::Write(Cow::Borrowed(memory), true),
            ));
            files.push((
                format!("memory/{hex}.tree"),
                Source::Write(encode_tree(&tree)?, false),
            ));
            let entry = ModuleEntry::new(*id, d.bytecode.len() as u64, &tree, blob_hash, blob_len);
            return Ok(entry.with_blob(blob_hash, blob_len, blob_delta));
        }
        let base = m.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
            reason: "module has neither base nor deployment".into(),
        })?;
        files.push((format!("bytecode/{hex}"), link("bytecode", hex.clone())?));
        let mut entry = base.clone().with_blob(blob_hash, blob_len, blob_delta);
        let link_memory = |files: &mut Vec<(String, Source<'a>)>, delta: bool| {
            files.push((format!("memory/{hex}"), link("memory", hex.clone())?));
            files.push((
                format!("memory/{hex}.tree"),
                link("memory", format!("{hex}.tree"))?,
            ));
            if delta {
                files.push((
                    format!("memory/{hex}.diff"),
                    link("memory", format!("{hex}.diff"))?,
                ));
            }
            Ok::<(), StoreError>(())
        };
        let Some(open) = &m.memory else {
            link_memory(files, base.memory().delta().is_some())?;
            return Ok(entry);
        };
        let mapping = &open.handle.0;
        let len = mapping.len();
        let changed = self.changed_pages(open, base.memory())?;
        if changed.is_empty() && len == open.base_len {
            link_memory(files, base.memory().delta().is_some())?;
            return Ok(entry);
        }
        // New leaf hashes of the touched 64 KiB pages, merged into the cumulative changes.
        let mut leaves: BTreeMap<u32, Digest> =
            base.memory().changed_pages().iter().copied().collect();
        let mut last = None;
        for p in &changed {
            let leaf = p / PAGES_PER_LEAF;
            if last == Some(leaf) {
                continue;
            }
            last = Some(leaf);
            // SAFETY: the leaf lies inside the length; per the handle contract no wasm runs now.
            let bytes = unsafe { mapping.bytes(leaf as usize * PAGE_SIZE, PAGE_SIZE) };
            leaves.insert(leaf, page_hash(bytes));
        }
        let path = self.base_file("memory", format!("{hex}.tree"))?;
        let tree_bytes = self
            .store
            .inner
            .fs
            .read_file(&path)
            .map_err(io_err("read", &path))?;
        let mut tree = MemoryTree::decode(&tree_bytes).map_err(|e| crate::index_err(&path, e))?;
        if tree.memory_len() != base.memory().image().len
            || tree.root() != base.memory().image().root
        {
            return Err(StoreError::Corrupted {
                path,
                reason: "page tree does not match the image it belongs to".into(),
            });
        }
        tree.resize(len / PAGE_SIZE);
        // Keep only leaves that differ from the (zero-extended) image.
        leaves.retain(|i, h| tree.leaves().get(*i as usize) != Some(h));
        let changed_leaves: Vec<(u32, Digest)> = leaves.into_iter().collect();
        for (i, h) in &changed_leaves {
            tree.set_leaf(*i as usize, *h);
        }
        tree.update();
        let root = tree.root();
        let memory = MemoryEntry::new(
            len as u64,
            root,
            base.memory().image(),
            changed_leaves,
            None,
        )
        .map_err(|e| StoreError::InvalidInput {
            reason: e.to_string(),
        })?;
        entry = entry.with_memory(memory);
        if entry.memory().changed_pages().is_empty() {
            // Equal to the zero-extended image: no delta needed.
            link_memory(files, false)?;
            return Ok(entry);
        }
        let delta_pages = merge_sorted(&open.delta.indices, &changed);
        let delta_bytes = delta_pages.len() * OS_PAGE;
        let config = &self.store.inner.config;
        if delta_bytes.saturating_mul(config.delta_ratio as usize) > len
            || delta_bytes > config.max_delta_bytes
        {
            // A new full image: its tree is the one just computed.
            // SAFETY: the whole length is mapped; per the handle contract no wasm runs now.
            let memory = unsafe { mapping.bytes(0, len) };
            files.push((
                format!("memory/{hex}"),
                Source::Write(Cow::Borrowed(memory), true),
            ));
            files.push((
                format!("memory/{hex}.tree"),
                Source::Write(encode_tree(&tree)?, false),
            ));
            return Ok(entry.with_memory(MemoryEntry::of_image(&tree)));
        }
        let mut delta = DeltaPages {
            indices: delta_pages,
            data: Vec::with_capacity(delta_bytes),
        };
        for &p in &delta.indices {
            // SAFETY: the page lies inside the length; per the handle contract no wasm runs now.
            delta
                .data
                .extend_from_slice(unsafe { mapping.bytes(p as usize * OS_PAGE, OS_PAGE) });
        }
        let bytes = delta
            .encode(config.zstd_level)
            .map_err(io_err("compress", Path::new("<delta>")))?;
        let memory = entry.memory().clone().with_delta(DeltaRef {
            pages: delta.len() as u32,
            file_len: bytes.len() as u64,
            file_hash: Digest::sha256(&bytes),
        });
        entry = entry.with_memory(memory);
        files.push((format!("memory/{hex}"), link("memory", hex.clone())?));
        files.push((
            format!("memory/{hex}.tree"),
            link("memory", format!("{hex}.tree"))?,
        ));
        files.push((
            format!("memory/{hex}.diff"),
            Source::Write(Cow::Owned(bytes), false),
        ));
        Ok(entry)
    }

    /// The blob's hash, length and patch, and its files: linked when unchanged, else a patch against
    /// the base's full blob when that pays, else the whole blob.
    fn plan_blob<'a>(
        &'a self,
        hex: &str,
        m: &'a ModState,
        files: &mut Vec<(String, Source<'a>)>,
    ) -> Result<(Digest, u64, Option<BlobDelta>), StoreError> {
        let changed = match (&m.blob, m.blob_dirty, &m.base) {
            (Some(b), true, Some(base)) if base.blob_hash() == hash::blob(b) => None,
            (Some(b), true, _) => Some(b),
            _ => None,
        };
        let Some(blob) = changed else {
            let base = m.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
                reason: "module without blob".into(),
            })?;
            files.push((
                format!("blob/{hex}"),
                Source::Link(self.base_file("blob", hex.to_string())?),
            ));
            if base.blob_delta().is_some() {
                files.push((
                    format!("blob/{hex}.diff"),
                    Source::Link(self.base_file("blob", format!("{hex}.diff"))?),
                ));
            }
            return Ok((base.blob_hash(), base.blob_len(), base.blob_delta()));
        };
        let blob_hash = hash::blob(blob);
        if let (Some(base), Some(dir), true) = (
            &m.base,
            self.base_dir(),
            blob.len() >= self.store.inner.config.blob_diff_min,
        ) {
            let full = base
                .blob_delta()
                .map_or((base.blob_len(), base.blob_hash()), |d| {
                    (d.base_len, d.base_hash)
                });
            let image = blob::read_full(&self.store, &dir, base, full)?;
            let patch = blob::diff(&image, blob).map_err(io_err("diff", Path::new("<blob>")))?;
            if patch.len().saturating_mul(blob::DIFF_RATIO) < blob.len() {
                let delta = BlobDelta {
                    base_len: full.0,
                    base_hash: full.1,
                    file_len: patch.len() as u64,
                    file_hash: Digest::sha256(&patch),
                };
                files.push((
                    format!("blob/{hex}"),
                    Source::Link(self.base_file("blob", hex.to_string())?),
                ));
                files.push((
                    format!("blob/{hex}.diff"),
                    Source::Write(Cow::Owned(patch), false),
                ));
                return Ok((blob_hash, blob.len() as u64, Some(delta)));
            }
        }
        files.push((
            format!("blob/{hex}"),
            Source::Write(Cow::Borrowed(blob), false),
        ));
        Ok((blob_hash, blob.len() as u64, None))
    }

    /// OS pages whose content differs from the base state, sorted.
    fn changed_pages(&self, open: &OpenMemory, base: &MemoryEntry) -> Result<Vec<u32>, StoreError> {
        let mapping = &open.handle.0;
        let image_len = base.image().len as usize;
        let mut out = Vec::new();
        for p in mapping.written_pages() {
            let at = p as usize * OS_PAGE;
            // SAFETY: the page lies inside the length; per the handle contract no wasm runs now.
            let now = unsafe { mapping.bytes(at, OS_PAGE) };
            let same = if let Some(d) = open.delta.get(p) {
                d == now
            } else if at < image_len {
                let image = open
                    .image
                    .as_ref()
                    .ok_or_else(|| StoreError::InvalidInput {
                        reason: "memory without image".into(),
                    })?;
                image.bytes(at, OS_PAGE) == now
            } else {
                store_index::is_zero(now)
            };
            if !same {
                out.push(p);
            }
        }
        Ok(out)
    }
}

fn check_reservation(len: usize, reservation: usize) -> Result<(), StoreError> {
    if reservation < len {
        return Err(StoreError::InvalidInput {
            reason: format!("reservation of {reservation} bytes is below the memory length {len}"),
        });
    }
    Ok(())
}

fn page_hash(bytes: &[u8]) -> Digest {
    if store_index::is_zero(bytes) {
        zero_page_hash()
    } else {
        hash::page(bytes)
    }
}

fn encode_tree(tree: &MemoryTree) -> Result<Cow<'static, [u8]>, StoreError> {
    tree.encode()
        .map(Cow::Owned)
        .map_err(|e| crate::index_err(Path::new("<page tree>"), e))
}

fn merge_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x == y => {
                i += 1;
                j += 1;
                x
            }
            (Some(&x), Some(&y)) if x < y => {
                i += 1;
                x
            }
            (Some(_), Some(&y)) => {
                j += 1;
                y
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (None, Some(&y)) => {
                j += 1;
                y
            }
            (None, None) => break,
        };
        out.push(next);
    }
    out
}

/// Puts an opened memory back to `len` bytes with `saved` pages over its base state.
fn restore(open: &OpenMemory, len: usize, saved: &DeltaPages) -> Result<(), StoreError> {
    let mapping = &open.handle.0;
    let written = mapping.written_pages();
    mapping.truncate_or_grow(len)?;
    let pages = (len / OS_PAGE) as u32;
    // Pages written since the base and not saved go back to the base content.
    let mut run: Option<(u32, u32)> = None;
    let mut runs = Vec::new();
    for p in written.into_iter().filter(|p| *p < pages) {
        if saved.get(p).is_some() {
            continue;
        }
        if let Some(base) = open.delta.get(p) {
            // SAFETY: the page is inside the length; per the handle contract no wasm runs now.
            if unsafe { mapping.bytes(p as usize * OS_PAGE, OS_PAGE) } == base {
                continue;
            }
        }
        run = match run {
            Some((s, e)) if e == p => Some((s, p + 1)),
            Some(r) => {
                runs.push(r);
                Some((p, p + 1))
            }
            None => Some((p, p + 1)),
        };
    }
    runs.extend(run);
    for (s, e) in runs {
        mapping.discard(s as usize * OS_PAGE, (e - s) as usize * OS_PAGE)?;
        for p in s..e {
            if let Some(base) = open.delta.get(p) {
                // SAFETY: the page is inside the length; per the handle contract no wasm runs now.
                unsafe { mapping.write(p as usize * OS_PAGE, base) };
            }
        }
    }
    for (p, data) in saved.iter().filter(|(p, _)| *p < pages) {
        // SAFETY: the page is inside the length; per the handle contract no wasm runs now.
        unsafe { mapping.write(p as usize * OS_PAGE, data) };
    }
    Ok(())
}
