//! The commit planner: turns a session's modules into a [`CommitPlan`] (each module's index entry
//! and the files of the new commit) for the files layer to write. It writes nothing: it reads the
//! base commit's page trees and full blobs through [`CommitDir`] and the session's mapped memories.
//!
//! Per module: a file is either new content or a hard link of the same file in the base commit.
//! A memory is linked when unchanged, gets a new cumulative delta when that stays under
//! `1/delta_ratio` of the memory (and `max_delta_bytes`), and a new full image otherwise; a
//! module deployed in the session always gets a full image. [`full_image`] is the one place that
//! plans a full image.

use std::borrow::Cow;
use std::collections::BTreeMap;

use store_index::{
    BlobDelta, CommitIndex, DeltaRef, Digest, KvEntry, MemoryEntry, MemoryTree, ModuleEntry,
    ModuleId, Namespace, PAGE_SIZE, hash, zero_page_hash,
};

use crate::blob;
use crate::delta::DeltaPages;
use crate::files::{CommitDir, File};
use crate::kv::{self, KvHandle};
use crate::mapping::{Mapping, OS_PAGE};
use crate::session::{ModState, OpenMemory};
use crate::{StoreConfig, StoreError};

const PAGES_PER_LEAF: u32 = (PAGE_SIZE / OS_PAGE) as u32;

/// What a commit writes: the index entries, sorted by module, the key-value spaces, sorted by
/// namespace, and the files.
pub(crate) struct CommitPlan<'a> {
    pub(crate) entries: Vec<ModuleEntry>,
    pub(crate) files: Vec<Planned<'a>>,
    pub(crate) kv: Vec<KvEntry>,
    pub(crate) kv_files: Vec<PlannedKv>,
    /// Background compactions to start once the commit is written.
    pub(crate) compactions: Vec<kv::JobSpec>,
}

/// One table file of a key-value space in a planned commit.
pub(crate) struct PlannedKv {
    pub(crate) namespace: Namespace,
    pub(crate) level: usize,
    pub(crate) source: KvSource,
}

/// Where a planned key-value table comes from.
pub(crate) enum KvSource {
    /// A hard link of the same level's file in the base commit.
    Base,
    /// New bytes.
    Bytes(Vec<u8>),
    /// A hard link of a table a background compaction staged.
    Staged(std::sync::Arc<kv::Staged>),
}

/// One file of a planned commit.
pub(crate) struct Planned<'a> {
    pub(crate) id: ModuleId,
    pub(crate) file: File,
    pub(crate) source: Source<'a>,
}

/// Where a planned file's content comes from.
pub(crate) enum Source<'a> {
    /// A hard link of the same file in the base commit.
    Base,
    /// New bytes, written whole.
    Bytes(Cow<'a, [u8]>),
    /// A memory image, written sparse (zero blocks may stay holes).
    Memory(&'a [u8]),
    /// A page tree, encoded by the files layer.
    Tree(MemoryTree),
}

/// Plans the commit of `modules` on top of `base` (the session's base commit, if any).
pub(crate) fn plan<'a>(
    base: Option<&CommitDir<'_>>,
    config: &StoreConfig,
    modules: &'a BTreeMap<ModuleId, ModState>,
    base_index: Option<&CommitIndex>,
    spaces: &BTreeMap<Namespace, KvHandle>,
    compactions: &kv::Compactions,
) -> Result<CommitPlan<'a>, StoreError> {
    let mut plan = CommitPlan {
        entries: Vec::with_capacity(modules.len()),
        files: Vec::new(),
        kv: Vec::new(),
        kv_files: Vec::new(),
        compactions: Vec::new(),
    };
    // Spaces the session did not open are the base's, linked whole.
    for entry in base_index.iter().flat_map(|i| i.kv()) {
        if spaces.contains_key(&entry.namespace()) {
            continue;
        }
        for level in 0..entry.levels().len() {
            plan.kv_files.push(PlannedKv {
                namespace: entry.namespace(),
                level,
                source: KvSource::Base,
            });
        }
        plan.kv.push(entry.clone());
    }
    for (namespace, handle) in spaces {
        let planned = kv::plan_space(&handle.0.lock(), config, compactions)?;
        plan.compactions.extend(planned.compaction);
        let Some(entry) = planned.entry else { continue };
        for (level, source) in planned.files.into_iter().enumerate() {
            plan.kv_files.push(PlannedKv {
                namespace: *namespace,
                level,
                source,
            });
        }
        plan.kv.push(entry);
    }
    plan.kv.sort_by_key(KvEntry::namespace);
    for (id, m) in modules {
        let mut files = Files {
            id: *id,
            out: &mut plan.files,
        };
        plan.entries.push(plan_module(base, config, m, &mut files)?);
    }
    Ok(plan)
}

/// The files of one module being planned.
struct Files<'p, 'a> {
    id: ModuleId,
    out: &'p mut Vec<Planned<'a>>,
}

impl<'a> Files<'_, 'a> {
    fn push(&mut self, file: File, source: Source<'a>) {
        self.out.push(Planned {
            id: self.id,
            file,
            source,
        });
    }

    fn link(&mut self, file: File) {
        self.push(file, Source::Base);
    }

    /// Links the base's memory files: image, tree and, with `delta`, the delta.
    fn link_memory(&mut self, delta: bool) {
        self.link(File::Image);
        self.link(File::Tree);
        if delta {
            self.link(File::Delta);
        }
    }
}

/// Plans a full image of `memory` and its tree; returns the memory entry of exactly that image.
fn full_image<'a>(files: &mut Files<'_, 'a>, memory: &'a [u8], tree: MemoryTree) -> MemoryEntry {
    let entry = MemoryEntry::of_image(&tree);
    files.push(File::Image, Source::Memory(memory));
    files.push(File::Tree, Source::Tree(tree));
    entry
}

fn no_base() -> StoreError {
    StoreError::InvalidInput {
        reason: "module has neither base nor deployment".into(),
    }
}

/// Decides the entry and the files of one module.
fn plan_module<'a>(
    base_dir: Option<&CommitDir<'_>>,
    config: &StoreConfig,
    m: &'a ModState,
    files: &mut Files<'_, 'a>,
) -> Result<ModuleEntry, StoreError> {
    let (blob_hash, blob_len, blob_delta) = plan_blob(base_dir, config, m, files)?;
    let Some(base) = &m.base else {
        // Deployed in this session: everything is new.
        let deployed = m.deployed.as_ref().ok_or_else(no_base)?;
        files.push(
            File::Bytecode,
            Source::Bytes(Cow::Borrowed(deployed.bytecode.bytes())),
        );
        let memory: &[u8] = match &m.memory {
            // SAFETY: the whole length is mapped; per the handle contract no wasm runs now.
            Some(open) => unsafe { open.handle.0.bytes(0, open.handle.len()) },
            None => &deployed.genesis,
        };
        let tree = MemoryTree::from_memory(memory);
        let entry = ModuleEntry::new(
            files.id,
            deployed.bytecode.len() as u64,
            &tree,
            blob_hash,
            blob_len,
        );
        full_image(files, memory, tree);
        return Ok(entry.with_blob(blob_hash, blob_len, blob_delta));
    };
    files.link(File::Bytecode);
    let entry = base.clone().with_blob(blob_hash, blob_len, blob_delta);
    let memory = match &m.memory {
        Some(open) => {
            let base_dir = base_dir.ok_or_else(no_base)?;
            plan_memory(base_dir, config, base, open, files)?
        }
        None => None,
    };
    match memory {
        Some(memory) => Ok(entry.with_memory(memory)),
        None => {
            files.link_memory(base.memory().delta().is_some());
            Ok(entry)
        }
    }
}

/// The new memory entry of an opened memory of a base module, and its files; `None` when the
/// memory is unchanged (its files are then the base's).
fn plan_memory<'a>(
    base_dir: &CommitDir<'_>,
    config: &StoreConfig,
    base: &ModuleEntry,
    open: &'a OpenMemory,
    files: &mut Files<'_, 'a>,
) -> Result<Option<MemoryEntry>, StoreError> {
    let mapping = &open.handle.0;
    let len = mapping.len();
    let changed = changed_pages(open, base_dir, base)?;
    if changed.is_empty() && len == open.base_len {
        return Ok(None);
    }
    // New leaf hashes of the touched 64 KiB pages, merged into the cumulative changes.
    let mut leaves: BTreeMap<u32, Digest> = base.memory().changed_pages().iter().copied().collect();
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
    let mut tree = base_dir.tree(base)?;
    tree.resize(len / PAGE_SIZE);
    // Keep only leaves that differ from the (zero-extended) image.
    leaves.retain(|i, h| tree.leaves().get(*i as usize) != Some(h));
    let changed_leaves: Vec<(u32, Digest)> = leaves.into_iter().collect();
    for (i, h) in &changed_leaves {
        tree.set_leaf(*i as usize, *h);
    }
    tree.update();
    let memory = MemoryEntry::new(
        len as u64,
        tree.root(),
        base.memory().image(),
        changed_leaves,
        None,
    )
    .map_err(|source| StoreError::InvalidPlan { source })?;
    if memory.changed_pages().is_empty() {
        // Equal to the zero-extended image: no delta needed.
        files.link_memory(false);
        return Ok(Some(memory));
    }
    let delta_pages = merge_sorted(&open.delta.indices, &changed);
    let delta_bytes = delta_pages.len() * OS_PAGE;
    if delta_bytes.saturating_mul(config.delta_ratio as usize) > len
        || delta_bytes > config.max_delta_bytes
    {
        // A new full image: its tree is the one just computed.
        // SAFETY: the whole length is mapped; per the handle contract no wasm runs now.
        let bytes = unsafe { mapping.bytes(0, len) };
        return Ok(Some(full_image(files, bytes, tree)));
    }
    let pages = delta_pages.len() as u32;
    let bytes = encode_delta(mapping, delta_pages, config.zstd_level)?;
    let memory = memory.with_delta(DeltaRef {
        pages,
        file_len: bytes.len() as u64,
        file_hash: Digest::sha256(&bytes),
    });
    files.link(File::Image);
    files.link(File::Tree);
    files.push(File::Delta, Source::Bytes(Cow::Owned(bytes)));
    Ok(Some(memory))
}

/// The delta record of pages `indices` of `mapping`.
fn encode_delta(mapping: &Mapping, indices: Vec<u32>, level: i32) -> Result<Vec<u8>, StoreError> {
    let mut delta = DeltaPages {
        data: Vec::with_capacity(indices.len() * OS_PAGE),
        indices,
    };
    for &p in &delta.indices {
        // SAFETY: the page lies inside the length; per the handle contract no wasm runs now.
        let page = unsafe { mapping.bytes(p as usize * OS_PAGE, OS_PAGE) };
        delta.data.extend_from_slice(page);
    }
    delta
        .encode(level)
        .map_err(|source| StoreError::Compression {
            what: "memory delta",
            source,
        })
}

/// The blob's hash, length and patch, and its files: linked when unchanged, else a patch against
/// the base's full blob when that pays, else the whole blob.
fn plan_blob<'a>(
    base_dir: Option<&CommitDir<'_>>,
    config: &StoreConfig,
    m: &'a ModState,
    files: &mut Files<'_, 'a>,
) -> Result<(Digest, u64, Option<BlobDelta>), StoreError> {
    // A set blob equal to the base's is linked; its hash is computed once.
    let changed = match (&m.blob, m.blob_dirty) {
        (Some(b), true) => {
            let h = hash::blob(b);
            match &m.base {
                Some(base) if base.blob_hash() == h => None,
                _ => Some((b, h)),
            }
        }
        _ => None,
    };
    let Some((blob, blob_hash)) = changed else {
        let base = m.base.as_ref().ok_or_else(|| StoreError::InvalidInput {
            reason: "module without blob".into(),
        })?;
        files.link(File::Blob);
        if base.blob_delta().is_some() {
            files.link(File::BlobPatch);
        }
        return Ok((base.blob_hash(), base.blob_len(), base.blob_delta()));
    };
    if let (Some(base), Some(dir), true) = (&m.base, base_dir, blob.len() >= config.blob_diff_min) {
        let full = base
            .blob_delta()
            .map_or((base.blob_len(), base.blob_hash()), |d| {
                (d.base_len, d.base_hash)
            });
        let image = dir.full_blob(base, full)?;
        let patch = blob::diff(&image, blob).map_err(|source| StoreError::Compression {
            what: "blob patch",
            source,
        })?;
        if patch.len().saturating_mul(blob::DIFF_RATIO) < blob.len() {
            let delta = BlobDelta {
                base_len: full.0,
                base_hash: full.1,
                file_len: patch.len() as u64,
                file_hash: Digest::sha256(&patch),
            };
            files.link(File::Blob);
            files.push(File::BlobPatch, Source::Bytes(Cow::Owned(patch)));
            return Ok((blob_hash, blob.len() as u64, Some(delta)));
        }
    }
    files.push(File::Blob, Source::Bytes(Cow::Borrowed(blob)));
    Ok((blob_hash, blob.len() as u64, None))
}

/// OS pages whose content differs from the base state, sorted.
fn changed_pages(
    open: &OpenMemory,
    dir: &CommitDir<'_>,
    entry: &ModuleEntry,
) -> Result<Vec<u32>, StoreError> {
    let mapping = &open.handle.0;
    let image_len = entry.memory().image().len as usize;
    let mut out = Vec::new();
    for p in mapping.written_pages() {
        let at = p as usize * OS_PAGE;
        // SAFETY: the page lies inside the length; per the handle contract no wasm runs now.
        let now = unsafe { mapping.bytes(at, OS_PAGE) };
        let same = if let Some(d) = open.delta.get(p) {
            d == now
        } else if at < image_len {
            let image = open
                .image(dir, entry)?
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

fn page_hash(bytes: &[u8]) -> Digest {
    if store_index::is_zero(bytes) {
        zero_page_hash()
    } else {
        hash::page(bytes)
    }
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
