//! Sessions: the mutable view of one base commit. A session holds its modules, opens their
//! memories, checkpoints and rolls back; [`Session::commit`] hands its modules to the planner
//! ([`crate::plan`]) and the plan to the store, and reads the base commit only through
//! [`CommitDir`]. It knows no file name and no store internals.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use store_index::{Bytecode, CommitIndex, ModuleEntry, ModuleId, Namespace, PAGE_SIZE, Root};

use crate::delta::DeltaPages;
use crate::files::CommitDir;
use crate::kv::{KvHandle, KvSpace};
use crate::mapping::{ImageView, Mapping, MemoryHandle, OS_PAGE};
use crate::warm::WarmMemory;
use crate::{Missing, Store, StoreError, plan};

/// A mutable view of one commit (or of the empty state) that ends with at most one commit.
///
/// `Send`, not shared: a session and the wasm instances using its memories live on one thread at a
/// time. Dropping a session without [`commit`](Self::commit) discards its changes.
#[derive(Debug)]
pub struct Session {
    store: Store,
    id: u64,
    base: Option<Root>,
    index: Option<Arc<CommitIndex>>,
    modules: BTreeMap<ModuleId, ModState>,
    /// Counts call checkpoints and rollbacks: only the latest call checkpoint can be rolled back to.
    generation: u64,
    /// Modules deployed, given a blob or a memory in this session (the others are as in the base,
    /// so a checkpoint costs what the session touched, not the size of the state).
    touched: BTreeSet<ModuleId>,
    /// The key-value spaces opened in this session.
    spaces: BTreeMap<Namespace, KvHandle>,
}

/// A module of a session (read by the planner).
#[derive(Debug)]
pub(crate) struct ModState {
    /// The module's entry in the base commit; `None` when deployed in this session.
    pub(crate) base: Option<ModuleEntry>,
    pub(crate) deployed: Option<Deployed>,
    /// The blob when loaded or set.
    pub(crate) blob: Option<Arc<Vec<u8>>>,
    pub(crate) blob_dirty: bool,
    pub(crate) memory: Option<OpenMemory>,
}

/// A module deployed in this session.
#[derive(Debug)]
pub(crate) struct Deployed {
    pub(crate) bytecode: Bytecode,
    pub(crate) genesis: Vec<u8>,
}

/// An opened memory.
#[derive(Debug)]
pub(crate) struct OpenMemory {
    pub(crate) handle: MemoryHandle,
    /// Length at open (the base length).
    pub(crate) base_len: usize,
    /// The read-only view of the base image, to compare written pages with: mapped at the first
    /// comparison, not at open (most sessions never compare).
    view: OnceLock<Option<ImageView>>,
    /// The pages written at open (the base delta, or the genesis pages of a new module).
    pub(crate) delta: Arc<DeltaPages>,
    /// With write tracking (`Session::call_checkpoint`): the content, as of the latest
    /// checkpoint, of every page written since open. A page not in it held its base content then.
    shadow: Option<HashMap<u32, Box<[u8]>>>,
}

impl OpenMemory {
    /// The base image as committed (`entry` in `dir`); `None` when it is empty.
    pub(crate) fn image(
        &self,
        dir: &CommitDir<'_>,
        entry: &ModuleEntry,
    ) -> Result<Option<&ImageView>, StoreError> {
        if let Some(view) = self.view.get() {
            return Ok(view.as_ref());
        }
        let len = entry.memory().image().len as usize;
        let view = match len {
            0 => None,
            _ => ImageView::new(&dir.open_image(entry)?, len)?,
        };
        Ok(self.view.get_or_init(|| view).as_ref())
    }
}

/// A point a session can [`rollback`](Session::rollback) to. Only valid for the session that made it.
#[derive(Debug)]
pub struct Checkpoint {
    session: u64,
    /// `Some` for a [`Session::call_checkpoint`]: the session's generation when it was taken.
    generation: Option<u64>,
    /// The modules deployed in the session by then.
    deployed: Vec<ModuleId>,
    /// Per module with a blob set or deployed: the blob and whether it changed.
    blobs: HashMap<ModuleId, BlobState>,
    memories: HashMap<ModuleId, (usize, Saved)>,
    /// Bytes of memory pages copied to take it.
    saved: usize,
    /// The key-value spaces open at the checkpoint; each holds a mark of it in its undo log,
    /// which lives as long as this token.
    spaces: Vec<Namespace>,
    token: Arc<()>,
    number: u64,
}

/// How a checkpoint saved a memory.
#[derive(Debug)]
enum Saved {
    /// Every page that differed from the base then.
    Pages(DeltaPages),
    /// In the memory's shadow, kept up to date by write tracking.
    Tracked,
}

impl Checkpoint {
    /// Bytes of memory pages copied to take this checkpoint: every page written since the
    /// memories opened for [`Session::checkpoint`], the pages written since the previous
    /// checkpoint for [`Session::call_checkpoint`] with write tracking.
    pub fn saved_bytes(&self) -> usize {
        self.saved
    }
}

type BlobState = (Option<Arc<Vec<u8>>>, bool);

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
            index,
            modules,
            generation: 0,
            touched: BTreeSet::new(),
            spaces: BTreeMap::new(),
        }
    }

    /// Opens a key-value space (the first call maps its tables; later calls return the same
    /// space). A space no commit wrote is empty. Costs the same whatever the space's size.
    pub fn kv(&mut self, namespace: &Namespace) -> Result<KvHandle, StoreError> {
        if let Some(h) = self.spaces.get(namespace) {
            return Ok(h.clone());
        }
        let entry = self
            .index
            .as_ref()
            .and_then(|i| i.kv_space(namespace))
            .cloned();
        let tables = match &entry {
            Some(e) => self.base_dir()?.kv_tables(e)?,
            None => Vec::new(),
        };
        let handle = KvHandle(Arc::new(Mutex::new(KvSpace::new(
            *namespace, entry, tables,
        ))));
        self.spaces.insert(*namespace, handle.clone());
        Ok(handle)
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

    /// The base commit's directory.
    fn base_dir(&self) -> Result<CommitDir<'_>, StoreError> {
        let root = self.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
            reason: "no base commit".into(),
        })?;
        Ok(self.store.commit_dir(root))
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

    /// Adds a module under its id: `bytecode` pairs the wasm with its sha256 (made by
    /// [`Bytecode::hash`], so the store does not hash it again); `memory` is its genesis linear
    /// memory (a multiple of 64 KiB, possibly empty), kept without a copy until commit; `blob` its
    /// initial host-owned state.
    pub fn deploy(
        &mut self,
        bytecode: Bytecode,
        memory: Vec<u8>,
        blob: Vec<u8>,
    ) -> Result<(), StoreError> {
        let id = bytecode.id();
        if self.modules.contains_key(&id) {
            return Err(StoreError::AlreadyDeployed { id });
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
                    bytecode,
                    genesis: memory,
                }),
                blob: Some(Arc::new(blob)),
                blob_dirty: true,
                memory: None,
            },
        );
        self.touched.insert(id);
        Ok(())
    }

    /// A module's bytecode.
    pub fn bytecode(&self, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let m = self.module(id)?;
        if let Some(d) = &m.deployed {
            return Ok(d.bytecode.bytes().to_vec());
        }
        let entry = m
            .base
            .as_ref()
            .ok_or(StoreError::NotFound(Missing::Module(*id)))?;
        self.base_dir()?.bytecode(entry)
    }

    /// A module's blob: the one set in this session, else the base commit's (read and checked
    /// against its hash once, then kept across sessions within `StoreConfig::warm_bytes`; the
    /// host keeps its own copy while it runs).
    pub fn blob(&self, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let m = self.module(id)?;
        if let Some(b) = &m.blob {
            return Ok(b.as_ref().clone());
        }
        let entry = m.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
            reason: "module has neither blob nor base".into(),
        })?;
        let root = self.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
            reason: "no base commit".into(),
        })?;
        if let Some(blob) = self.store.warm().blob(root, id) {
            return Ok(blob.as_ref().clone());
        }
        let blob = self.base_dir()?.blob(entry)?;
        self.store
            .warm()
            .keep_blob(root, id, Arc::new(blob.clone()));
        Ok(blob)
    }

    /// Replaces a module's blob.
    pub fn set_blob(&mut self, id: &ModuleId, blob: Vec<u8>) -> Result<(), StoreError> {
        let m = self.module_mut(id)?;
        m.blob = Some(Arc::new(blob));
        m.blob_dirty = true;
        self.touched.insert(*id);
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
        let m = self.module(id)?;
        if let Some(open) = &m.memory {
            return Ok(open.handle.clone());
        }
        let open = if let Some(d) = &m.deployed {
            let len = d.genesis.len();
            check_reservation(len, reservation)?;
            let mapping = Mapping::new(None, 0, len, reservation, self.store.pool(), None)?;
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
                view: OnceLock::new(),
                delta: Arc::new(patched),
                shadow: None,
            }
        } else {
            let entry = m.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
                reason: "module has neither base nor deployment".into(),
            })?;
            let too_big = || StoreError::InvalidInput {
                reason: "memory too large for this platform".into(),
            };
            let len = usize::try_from(entry.memory().len()).map_err(|_| too_big())?;
            let image_len = usize::try_from(entry.memory().image().len).map_err(|_| too_big())?;
            check_reservation(len, reservation)?;
            let root = self.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
                reason: "no base commit".into(),
            })?;
            let delta = match self.store.warm().memory(root, id) {
                Some(delta) => delta,
                None => {
                    let delta: Arc<WarmMemory> = Arc::new(self.base_dir()?.delta(entry)?);
                    self.store.warm().keep_memory(root, id, delta.clone());
                    delta
                }
            };
            // Opened only when no pooled reservation maps this image already.
            let mut image = || self.base_dir()?.open_image(entry);
            let mapping = Mapping::new(
                Some(&mut image),
                image_len,
                len,
                reservation,
                self.store.pool(),
                Some((*root, *id)),
            )?;
            for (i, page) in delta.iter() {
                // SAFETY: page indices were checked against the length; the mapping is fresh.
                unsafe { mapping.write(i as usize * OS_PAGE, page) };
            }
            OpenMemory {
                handle: MemoryHandle(Arc::new(mapping)),
                base_len: len,
                view: OnceLock::new(),
                delta,
                shadow: None,
            }
        };
        let handle = open.handle.clone();
        self.module_mut(id)?.memory = Some(open);
        self.touched.insert(*id);
        Ok(handle)
    }

    /// Saves the current state of blobs, module set and opened memories. Costs the pages written
    /// since the memories were opened (they are copied), not the memory size.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, StoreError> {
        let mut memories = HashMap::new();
        let (deployed, blobs) = self.touched_state();
        for id in &self.touched {
            let Some(open) = self.modules.get(id).and_then(|m| m.memory.as_ref()) else {
                continue;
            };
            let saved = changed_since_open(open);
            memories.insert(*id, (open.handle.len(), Saved::Pages(saved)));
        }
        let saved = memories
            .values()
            .map(|(_, s)| match s {
                Saved::Pages(d) => d.data.len(),
                Saved::Tracked => 0,
            })
            .sum();
        Ok(self.new_checkpoint(None, deployed, blobs, memories, saved))
    }

    /// A checkpoint for one call: like [`checkpoint`](Self::checkpoint), but it can be rolled
    /// back to only while it is the session's latest call checkpoint (a later call checkpoint
    /// or any rollback ends that), and with write tracking (userfaultfd asynchronous
    /// write-protection and `PAGEMAP_SCAN`, Linux 6.7+) it costs the pages written since the
    /// previous call checkpoint, not every page written since the memories opened: a long
    /// session that dirtied a large memory pays per call only for what its calls write. Without
    /// tracking it copies what [`checkpoint`](Self::checkpoint) copies.
    pub fn call_checkpoint(&mut self) -> Result<Checkpoint, StoreError> {
        self.generation += 1;
        let mut memories = HashMap::new();
        let (deployed, blobs) = self.touched_state();
        let mut saved = 0;
        for id in &self.touched {
            let Some(open) = self.modules.get_mut(id).and_then(|m| m.memory.as_mut()) else {
                continue;
            };
            let len = open.handle.len();
            match save_written(open)? {
                Some(bytes) => {
                    saved += bytes;
                    memories.insert(*id, (len, Saved::Tracked));
                }
                None => {
                    let pages = changed_since_open(open);
                    saved += pages.data.len();
                    if pages.len() > track_after_pages() && open.handle.0.track()? {
                        // From now on only what each call writes: the shadow starts as these
                        // pages (nothing was written between the copy and the protection).
                        open.shadow = Some(
                            pages
                                .iter()
                                .map(|(p, data)| (p, Box::<[u8]>::from(data)))
                                .collect(),
                        );
                        memories.insert(*id, (len, Saved::Tracked));
                    } else {
                        memories.insert(*id, (len, Saved::Pages(pages)));
                    }
                }
            }
        }
        Ok(self.new_checkpoint(Some(self.generation), deployed, blobs, memories, saved))
    }

    /// A checkpoint of what the caller saved, marked in the undo log of every open key-value
    /// space (the token's life keeps the marks).
    fn new_checkpoint(
        &self,
        generation: Option<u64>,
        deployed: Vec<ModuleId>,
        blobs: HashMap<ModuleId, BlobState>,
        memories: HashMap<ModuleId, (usize, Saved)>,
        saved: usize,
    ) -> Checkpoint {
        static CHECKPOINTS: AtomicU64 = AtomicU64::new(0);
        let number = CHECKPOINTS.fetch_add(1, Ordering::Relaxed);
        let token = Arc::new(());
        for space in self.spaces.values() {
            space.0.lock().mark(number, Arc::downgrade(&token));
        }
        Checkpoint {
            session: self.id,
            generation,
            deployed,
            blobs,
            memories,
            saved,
            spaces: self.spaces.keys().copied().collect(),
            token,
            number,
        }
    }

    /// Restores blobs, module set, and the content and length of every opened memory to
    /// `checkpoint`. Memories opened after it return to their base state.
    pub fn rollback(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        if checkpoint.session != self.id {
            return Err(StoreError::InvalidInput {
                reason: "checkpoint belongs to another session".into(),
            });
        }
        if checkpoint.generation.is_some_and(|g| g != self.generation) {
            return Err(StoreError::InvalidInput {
                reason: "a call checkpoint can be rolled back to only while it is the latest"
                    .into(),
            });
        }
        // A space's undo log reaches back only to its newest live checkpoints: rolling back to a
        // checkpoint older than one rolled back to before is refused, before anything changes.
        for (ns, space) in &self.spaces {
            if checkpoint.spaces.contains(ns) && !space.0.lock().has_mark(checkpoint.number) {
                return Err(StoreError::InvalidInput {
                    reason: "checkpoint was discarded by a rollback to an earlier one".into(),
                });
            }
        }
        // A rollback changes memories behind the shadows' backs: no older call checkpoint
        // stays valid (the one rolled back to does: its shadows are unchanged).
        if checkpoint.generation.is_none() {
            self.generation += 1;
        }
        let _alive = &checkpoint.token;
        for (ns, space) in &self.spaces {
            let mut space = space.0.lock();
            if checkpoint.spaces.contains(ns) {
                space.rollback(checkpoint.number);
            } else {
                space.reset();
            }
        }
        for id in &self.touched {
            let Some(m) = self.modules.get_mut(id) else {
                continue;
            };
            if m.deployed.is_some() && !checkpoint.deployed.contains(id) {
                self.modules.remove(id);
                continue;
            }
            (m.blob, m.blob_dirty) = checkpoint.blobs.get(id).cloned().unwrap_or((None, false));
            let Some(open) = &mut m.memory else { continue };
            let empty = DeltaPages::default();
            match checkpoint.memories.get(id) {
                Some((len, Saved::Tracked)) => restore_tracked(open, *len)?,
                Some((len, Saved::Pages(saved))) => {
                    restore(open, *len, saved)?;
                    open.shadow = None;
                }
                None => {
                    restore(open, open.base_len, &empty)?;
                    open.shadow = None;
                }
            }
        }
        Ok(())
    }

    /// What a checkpoint keeps of the touched modules: those deployed, and the blobs set.
    fn touched_state(&self) -> (Vec<ModuleId>, HashMap<ModuleId, BlobState>) {
        let mut deployed = Vec::new();
        let mut blobs = HashMap::new();
        for id in &self.touched {
            let Some(m) = self.modules.get(id) else {
                continue;
            };
            if m.deployed.is_some() {
                deployed.push(*id);
            }
            if m.blob.is_some() {
                blobs.insert(*id, (m.blob.clone(), m.blob_dirty));
            }
        }
        (deployed, blobs)
    }

    /// Writes the session as a new commit and returns its root. A state equal to an existing commit
    /// (for example an unchanged session) returns that commit's root and writes nothing.
    pub fn commit(self) -> Result<Root, StoreError> {
        self.store.check_writable()?;
        let base = self.base.as_ref().map(|r| self.store.commit_dir(r));
        let plan = plan::plan(
            base.as_ref(),
            self.store.config(),
            &self.modules,
            self.index.as_deref(),
            &self.spaces,
            self.store.compactions(),
        )?;
        self.store.write_commit(self.base, plan)
    }
}

/// Every page written since `open` that differs from its base delta page (the pages a full
/// checkpoint saves).
fn changed_since_open(open: &OpenMemory) -> DeltaPages {
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
    saved
}

/// A memory is tracked once a call checkpoint would copy more pages than this: below it, the
/// copy is cheaper than setting tracking up (a short session never pays for it).
const TRACK_AFTER_PAGES: usize = 64;

#[cfg(not(test))]
fn track_after_pages() -> usize {
    TRACK_AFTER_PAGES
}

#[cfg(test)]
thread_local! {
    /// Tests track memories from their first written page.
    pub(crate) static TRACK_AFTER: std::cell::Cell<usize> = const { std::cell::Cell::new(TRACK_AFTER_PAGES) };
}

#[cfg(test)]
fn track_after_pages() -> usize {
    TRACK_AFTER.with(|t| t.get())
}

/// Brings a tracked memory's shadow up to date: copies the pages written since the last scan.
/// Returns the bytes copied, `None` when the memory is not tracked.
fn save_written(open: &mut OpenMemory) -> Result<Option<usize>, StoreError> {
    let mapping = &open.handle.0;
    let Some(shadow) = &mut open.shadow else {
        return Ok(None);
    };
    let written = mapping.written_since_scan()?;
    for &p in &written {
        // SAFETY: the page is inside the length; per the handle contract no wasm runs now.
        let now = unsafe { mapping.bytes(p as usize * OS_PAGE, OS_PAGE) };
        shadow.insert(p, now.into());
    }
    Ok(Some(written.len() * OS_PAGE))
}

/// Puts a tracked memory back to its latest call checkpoint: length `len`, and every page
/// written since from the shadow, else from its base. Costs the pages written since.
fn restore_tracked(open: &mut OpenMemory, len: usize) -> Result<(), StoreError> {
    let mapping = &open.handle.0;
    let shadow = open
        .shadow
        .as_ref()
        .ok_or_else(|| StoreError::InvalidInput {
            reason: "memory was not tracked at the checkpoint".into(),
        })?;
    let written = mapping.written_since_scan()?;
    mapping.truncate_or_grow(len)?;
    let pages = (len / OS_PAGE) as u32;
    for p in written.into_iter().filter(|p| *p < pages) {
        let at = p as usize * OS_PAGE;
        match shadow.get(&p) {
            // SAFETY: the page is inside the length; per the handle contract no wasm runs now.
            Some(data) => unsafe { mapping.write(at, data) },
            None => {
                mapping.discard(at, OS_PAGE)?;
                if let Some(base) = open.delta.get(p) {
                    // SAFETY: as above.
                    unsafe { mapping.write(at, base) };
                }
            }
        }
    }
    // The restores wrote pages back to what the shadow holds: not news for the next scan.
    mapping.written_since_scan()?;
    Ok(())
}

fn check_reservation(len: usize, reservation: usize) -> Result<(), StoreError> {
    if reservation < len {
        return Err(StoreError::InvalidInput {
            reason: format!("reservation of {reservation} bytes is below the memory length {len}"),
        });
    }
    Ok(())
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
