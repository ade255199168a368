//! The per-commit index ([`CommitIndex`]) and its parts, and the state root over modules.
//!
//! The records keep their fields private: [`MemoryEntry::new`] and [`CommitIndex::new`] check the
//! same invariants that [`CommitIndex::decode`] checks, so every value of these types, however it
//! was made, satisfies them. Decoding goes through private mirror types (`raw`); the public types
//! implement `Serialize` only, so serde cannot make an unchecked one.

use serde::{Deserialize, Serialize};

use crate::kv::{KvEntry, RawKvEntry};
use crate::record::{RecordKind, decode_record, encode_record};
use crate::{Digest, IndexError, MemoryTree, ModuleId, Namespace, PAGE_SIZE, Root, hash};

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

/// A blob stored as a patch (`blob/<module>.diff`) against a full blob (`blob/<module>`).
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
///
/// Invariants, checked by [`new`](Self::new) and by [`CommitIndex::decode`]: the memory and image
/// lengths are multiples of [`PAGE_SIZE`], the image is no longer than the memory, and the changed
/// pages are sorted, unique and inside the memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryEntry {
    len: u64,
    root: Digest,
    image: ImageRef,
    changed_pages: Vec<(u32, Digest)>,
    delta: Option<DeltaRef>,
}

impl MemoryEntry {
    /// A memory of `len` bytes with root `root`, read from `image` with the pages `changed_pages`
    /// (page index and leaf hash) differing from the image's zero-extended tree, cumulative since
    /// the image like `delta`. Fails with [`IndexError::Invalid`] when an invariant is broken.
    pub fn new(
        len: u64,
        root: Digest,
        image: ImageRef,
        changed_pages: Vec<(u32, Digest)>,
        delta: Option<DeltaRef>,
    ) -> Result<MemoryEntry, IndexError> {
        let entry = MemoryEntry {
            len,
            root,
            image,
            changed_pages,
            delta,
        };
        entry.check().map_err(invalid)?;
        Ok(entry)
    }

    /// A memory that is exactly the image described by `tree`: no changed pages, no delta.
    pub fn of_image(tree: &MemoryTree) -> MemoryEntry {
        let (len, root) = (tree.memory_len(), tree.root());
        MemoryEntry {
            len,
            root,
            image: ImageRef { len, root },
            changed_pages: Vec::new(),
            delta: None,
        }
    }

    /// This memory, carried by `delta` (the invariants do not involve the delta).
    pub fn with_delta(self, delta: DeltaRef) -> MemoryEntry {
        MemoryEntry {
            delta: Some(delta),
            ..self
        }
    }

    /// Byte length (a multiple of [`PAGE_SIZE`]).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the memory has no pages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory root.
    pub fn root(&self) -> Digest {
        self.root
    }

    /// The full image this memory is read from.
    pub fn image(&self) -> ImageRef {
        self.image
    }

    /// Page hashes that differ from the image's (zero-extended) tree, sorted by page index;
    /// cumulative since the image, like the delta.
    pub fn changed_pages(&self) -> &[(u32, Digest)] {
        &self.changed_pages
    }

    /// The delta, absent when the memory is the image (zero-extended to `len`).
    pub fn delta(&self) -> Option<DeltaRef> {
        self.delta
    }

    fn check(&self) -> Result<(), &'static str> {
        let page = PAGE_SIZE as u64;
        if !self.len.is_multiple_of(page) || !self.image.len.is_multiple_of(page) {
            return Err("memory length not a multiple of 64 KiB");
        }
        if self.image.len > self.len {
            return Err("image longer than memory");
        }
        let pages = self.len / page;
        let sorted = self.changed_pages.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted
            || self
                .changed_pages
                .iter()
                .any(|(i, _)| u64::from(*i) >= pages)
        {
            return Err("changed pages unsorted or out of range");
        }
        Ok(())
    }
}

/// One module of a commit: what the state root covers, plus the identities of its files.
///
/// Its bytecode hash is always the module id's bytes (the id is the sha256 of the bytecode); its
/// memory satisfies the [`MemoryEntry`] invariants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleEntry {
    id: ModuleId,
    bytecode_hash: Digest,
    bytecode_len: u64,
    memory: MemoryEntry,
    blob_hash: Digest,
    blob_len: u64,
    blob_delta: Option<BlobDelta>,
}

impl ModuleEntry {
    /// An entry whose memory is exactly the image described by `tree` (no delta) and whose blob
    /// is stored whole.
    pub fn new(
        id: ModuleId,
        bytecode_len: u64,
        tree: &MemoryTree,
        blob_hash: Digest,
        blob_len: u64,
    ) -> ModuleEntry {
        ModuleEntry {
            id,
            bytecode_hash: Digest::from_bytes(*id.as_bytes()),
            bytecode_len,
            memory: MemoryEntry::of_image(tree),
            blob_hash,
            blob_len,
            blob_delta: None,
        }
    }

    /// This entry with another memory.
    pub fn with_memory(self, memory: MemoryEntry) -> ModuleEntry {
        ModuleEntry { memory, ..self }
    }

    /// This entry with another blob: its [`hash::blob`], its length, and the patch it is stored
    /// as (`None`: stored whole).
    pub fn with_blob(self, hash: Digest, len: u64, delta: Option<BlobDelta>) -> ModuleEntry {
        ModuleEntry {
            blob_hash: hash,
            blob_len: len,
            blob_delta: delta,
            ..self
        }
    }

    /// The module.
    pub fn id(&self) -> ModuleId {
        self.id
    }

    /// sha256 of the stored bytecode (equals the id's bytes).
    pub fn bytecode_hash(&self) -> Digest {
        self.bytecode_hash
    }

    /// Byte length of the bytecode.
    pub fn bytecode_len(&self) -> u64 {
        self.bytecode_len
    }

    /// The linear memory.
    pub fn memory(&self) -> &MemoryEntry {
        &self.memory
    }

    /// [`hash::blob`] of the host-owned state blob.
    pub fn blob_hash(&self) -> Digest {
        self.blob_hash
    }

    /// Byte length of the blob.
    pub fn blob_len(&self) -> u64 {
        self.blob_len
    }

    /// When set, the blob is this patch applied to the full blob file.
    pub fn blob_delta(&self) -> Option<BlobDelta> {
        self.blob_delta
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

impl ModuleEntry {
    fn check(&self) -> Result<(), &'static str> {
        if self.bytecode_hash.as_bytes() != self.id.as_bytes() {
            return Err("bytecode hash differs from the module id");
        }
        self.memory.check()
    }
}

/// The index of one commit, also its commit record: what `<root>/index` holds.
///
/// Its modules are sorted by id and unique, and each satisfies the [`ModuleEntry`] invariants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommitIndex {
    seq: u64,
    parent: Option<Root>,
    modules: Vec<ModuleEntry>,
    kv: Vec<KvEntry>,
}

impl CommitIndex {
    /// The index of commit number `seq` made from `parent` (`None`: from the empty state), with
    /// `modules` sorted by id. Fails with [`IndexError::Invalid`] when they are not sorted or not
    /// unique, or when `seq` is `u64::MAX` (the next commit's number must exist).
    pub fn new(
        seq: u64,
        parent: Option<Root>,
        modules: Vec<ModuleEntry>,
    ) -> Result<CommitIndex, IndexError> {
        CommitIndex::with_kv(seq, parent, modules, Vec::new())
    }

    /// [`new`](Self::new) with key-value spaces, which must be sorted by namespace and unique.
    pub fn with_kv(
        seq: u64,
        parent: Option<Root>,
        modules: Vec<ModuleEntry>,
        kv: Vec<KvEntry>,
    ) -> Result<CommitIndex, IndexError> {
        let index = CommitIndex {
            seq,
            parent,
            modules,
            kv,
        };
        index.check().map_err(invalid)?;
        Ok(index)
    }

    /// The key-value spaces, sorted by namespace.
    pub fn kv(&self) -> &[KvEntry] {
        &self.kv
    }

    /// The entry of a key-value space (`None`: the space is empty).
    pub fn kv_space(&self, namespace: &Namespace) -> Option<&KvEntry> {
        self.kv
            .binary_search_by(|k| k.namespace().cmp(namespace))
            .ok()
            .map(|i| &self.kv[i])
    }

    /// Store-wide sequence number, increasing in commit order; persists the order across restarts.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The commit this one was made from (`None` when made from the empty state).
    pub fn parent(&self) -> Option<Root> {
        self.parent
    }

    /// The modules, sorted by id.
    pub fn modules(&self) -> &[ModuleEntry] {
        &self.modules
    }

    /// The state root of this commit (not covering `seq` or `parent`).
    pub fn state_root(&self) -> Root {
        commit_root(
            self.modules.iter().map(|m| (m.id, m.leaf())),
            self.kv.iter().map(|k| (k.namespace(), k.root())),
        )
    }

    /// The checksummed encoding.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        encode_record(RecordKind::Index, self)
    }

    /// Decodes and checks the invariants of [`new`](Self::new), [`ModuleEntry`] and
    /// [`MemoryEntry`]; a record that breaks one is [`IndexError::Corrupted`].
    pub fn decode(bytes: &[u8]) -> Result<CommitIndex, IndexError> {
        let raw: raw::CommitIndex = decode_record(RecordKind::Index, bytes)?;
        let corrupt = |reason: &str| IndexError::Corrupted {
            kind: RecordKind::Index,
            reason: reason.to_string(),
        };
        let index = CommitIndex::from_raw(raw).map_err(corrupt)?;
        index.check().map_err(corrupt)?;
        Ok(index)
    }

    /// The entry of a module.
    pub fn module(&self, id: &ModuleId) -> Option<&ModuleEntry> {
        self.modules
            .binary_search_by(|m| m.id.cmp(id))
            .ok()
            .map(|i| &self.modules[i])
    }

    fn check(&self) -> Result<(), &'static str> {
        // The store numbers the next commit `seq + 1`: a forged `u64::MAX` must not overflow it.
        if self.seq == u64::MAX {
            return Err("sequence number out of range");
        }
        if !self.modules.windows(2).all(|w| w[0].id < w[1].id) {
            return Err("modules not sorted or not unique");
        }
        if !self
            .kv
            .windows(2)
            .all(|w| w[0].namespace() < w[1].namespace())
        {
            return Err("key-value spaces not sorted or not unique");
        }
        self.kv.iter().try_for_each(KvEntry::check)?;
        self.modules.iter().try_for_each(ModuleEntry::check)
    }
}

fn invalid(reason: &'static str) -> IndexError {
    IndexError::Invalid {
        kind: RecordKind::Index,
        reason,
    }
}

/// The serde shape of the records above, decoded before any check. The fields are those of the
/// public types, in the same order (postcard encodes a struct as its fields in order).
mod raw {
    use super::{BlobDelta, DeltaRef, Deserialize, Digest, ImageRef, ModuleId, RawKvEntry, Root};

    #[derive(Deserialize)]
    pub(super) struct CommitIndex {
        pub(super) seq: u64,
        pub(super) parent: Option<Root>,
        pub(super) modules: Vec<ModuleEntry>,
        pub(super) kv: Vec<RawKvEntry>,
    }

    #[derive(Deserialize)]
    pub(super) struct ModuleEntry {
        pub(super) id: ModuleId,
        pub(super) bytecode_hash: Digest,
        pub(super) bytecode_len: u64,
        pub(super) memory: MemoryEntry,
        pub(super) blob_hash: Digest,
        pub(super) blob_len: u64,
        pub(super) blob_delta: Option<BlobDelta>,
    }

    #[derive(Deserialize)]
    pub(super) struct MemoryEntry {
        pub(super) len: u64,
        pub(super) root: Digest,
        pub(super) image: ImageRef,
        pub(super) changed_pages: Vec<(u32, Digest)>,
        pub(super) delta: Option<DeltaRef>,
    }
}

impl CommitIndex {
    /// Unchecked: [`decode`](Self::decode) checks the result.
    fn from_raw(raw: raw::CommitIndex) -> Result<CommitIndex, &'static str> {
        let modules = raw.modules.into_iter().map(|m| {
            let memory = MemoryEntry {
                len: m.memory.len,
                root: m.memory.root,
                image: m.memory.image,
                changed_pages: m.memory.changed_pages,
                delta: m.memory.delta,
            };
            ModuleEntry {
                id: m.id,
                bytecode_hash: m.bytecode_hash,
                bytecode_len: m.bytecode_len,
                memory,
                blob_hash: m.blob_hash,
                blob_len: m.blob_len,
                blob_delta: m.blob_delta,
            }
        });
        let kv = raw
            .kv
            .into_iter()
            .map(RawKvEntry::into_entry)
            .collect::<Result<_, _>>()?;
        Ok(CommitIndex {
            seq: raw.seq,
            parent: raw.parent,
            modules: modules.collect(),
            kv,
        })
    }
}

/// The root of the empty state (no modules).
pub fn empty_state_root() -> Root {
    hash::state_root(0, None)
}

/// The state root over a set of module leaves (`(id, leaf)`); they are sorted by id here.
pub fn state_root(modules: impl IntoIterator<Item = (ModuleId, Digest)>) -> Root {
    commit_root(modules, std::iter::empty())
}

/// The state root over module leaves (`(id, leaf)`, sorted by id here) followed by the roots of
/// the non-empty key-value spaces (`(namespace, root)`, sorted by namespace here). A module leaf
/// and a space root carry different hash tags, so the sequence of leaves says which is which;
/// a state without key-value data has the root of format version 1.
pub fn commit_root(
    modules: impl IntoIterator<Item = (ModuleId, Digest)>,
    kv: impl IntoIterator<Item = (Namespace, Digest)>,
) -> Root {
    let mut leaves: Vec<(ModuleId, Digest)> = modules.into_iter().collect();
    leaves.sort_by_key(|&(id, _)| id);
    let mut spaces: Vec<(Namespace, Digest)> = kv.into_iter().collect();
    spaces.sort_by_key(|&(ns, _)| ns);
    let hashes: Vec<Digest> = leaves
        .into_iter()
        .map(|(_, d)| d)
        .chain(spaces.into_iter().map(|(_, d)| d))
        .collect();
    let top = tree_top(&hashes, hash::state_node);
    hash::state_root(hashes.len() as u64, top.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_root_sorts_modules() {
        let a = ModuleId::of_wasm(b"a");
        let b = ModuleId::of_wasm(b"b");
        let (la, lb) = (Digest::sha256(b"1"), Digest::sha256(b"2"));
        assert_eq!(
            state_root([(a, la), (b, lb)]),
            state_root([(b, lb), (a, la)])
        );
        assert_ne!(
            state_root([(a, la), (b, lb)]),
            state_root([(a, lb), (b, la)])
        );
    }

    fn sample_index() -> CommitIndex {
        let id = ModuleId::of_wasm(b"m");
        let tree = MemoryTree::from_memory(&vec![1u8; 2 * PAGE_SIZE]);
        let entry = ModuleEntry::new(id, 1, &tree, hash::blob(b"x"), 1);
        CommitIndex::new(9, Some(hash::state_root(7, None)), vec![entry]).unwrap()
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
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        let err = CommitIndex::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                IndexError::Incompatible {
                    found: 3,
                    expected: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade required"));
    }

    /// Encodes `index` without its checks, as a forged or damaged writer would.
    fn forge(index: CommitIndex) -> Vec<u8> {
        encode_record(RecordKind::Index, &index).unwrap()
    }

    #[test]
    fn unsorted_modules_are_refused_by_new_and_corrupt_on_decode() {
        let index = sample_index();
        let mut second = index.modules[0].clone();
        second.id = ModuleId::from_bytes([0; 32]);
        second.bytecode_hash = Digest::from_bytes([0; 32]);
        let modules = vec![index.modules[0].clone(), second];
        assert!(matches!(
            CommitIndex::new(1, None, modules.clone()),
            Err(IndexError::Invalid {
                reason: "modules not sorted or not unique",
                ..
            })
        ));
        let duplicate = vec![index.modules[0].clone(), index.modules[0].clone()];
        assert!(CommitIndex::new(1, None, duplicate).is_err());
        let bytes = forge(CommitIndex {
            modules,
            ..index.clone()
        });
        assert!(matches!(
            CommitIndex::decode(&bytes),
            Err(IndexError::Corrupted { .. })
        ));
    }

    #[test]
    fn memory_entry_invariants_are_checked_by_new_and_decode() {
        let image = ImageRef {
            len: PAGE_SIZE as u64,
            root: Digest::sha256(b"image"),
        };
        let root = Digest::sha256(b"memory");
        let two = 2 * PAGE_SIZE as u64;
        let page = |i: u32| (i, Digest::sha256(&i.to_le_bytes()));
        let good = MemoryEntry::new(two, root, image, vec![page(0), page(1)], None).unwrap();
        assert_eq!(good.changed_pages().len(), 2);
        let bad = [
            (
                two + 1,
                image,
                vec![],
                "memory length not a multiple of 64 KiB",
            ),
            (
                two,
                ImageRef { len: 1, ..image },
                vec![],
                "memory length not a multiple of 64 KiB",
            ),
            (0, image, vec![], "image longer than memory"),
            (
                two,
                image,
                vec![page(1), page(0)],
                "changed pages unsorted or out of range",
            ),
            (
                two,
                image,
                vec![page(2)],
                "changed pages unsorted or out of range",
            ),
        ];
        let entry = sample_index().modules[0].clone();
        for (len, image, pages, expected) in bad {
            let err = MemoryEntry::new(len, root, image, pages.clone(), None).unwrap_err();
            assert!(
                matches!(err, IndexError::Invalid { reason, .. } if reason == expected),
                "{err}"
            );
            let memory = MemoryEntry {
                len,
                root,
                image,
                changed_pages: pages,
                delta: None,
            };
            let forged = forge(CommitIndex {
                seq: 1,
                parent: None,
                modules: vec![entry.clone().with_memory(memory)],
                kv: Vec::new(),
            });
            let err = CommitIndex::decode(&forged).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn bytecode_hash_must_be_the_module_id() {
        let mut entry = sample_index().modules[0].clone();
        entry.bytecode_hash = Digest::sha256(b"other");
        let forged = forge(CommitIndex {
            seq: 1,
            parent: None,
            modules: vec![entry],
            kv: Vec::new(),
        });
        let err = CommitIndex::decode(&forged).unwrap_err();
        assert!(matches!(err, IndexError::Corrupted { .. }), "{err}");
    }

    #[test]
    fn getters_and_with_methods() {
        let index = sample_index();
        assert_eq!(
            (index.seq(), index.parent()),
            (9, Some(hash::state_root(7, None)))
        );
        let m = &index.modules()[0];
        assert_eq!(index.module(&m.id()), Some(m));
        assert_eq!(m.bytecode_hash().as_bytes(), m.id().as_bytes());
        assert_eq!(m.memory().image().root, m.memory().root());
        assert_eq!(m.memory().len(), 2 * PAGE_SIZE as u64);
        let delta = DeltaRef {
            pages: 3,
            file_len: 10,
            file_hash: Digest::sha256(b"d"),
        };
        let patch = BlobDelta {
            base_len: 5,
            base_hash: hash::blob(b"base!"),
            file_len: 2,
            file_hash: Digest::sha256(b"p"),
        };
        let changed = m
            .clone()
            .with_memory(m.memory().clone().with_delta(delta))
            .with_blob(hash::blob(b"y"), 1, Some(patch));
        assert_eq!(changed.memory().delta(), Some(delta));
        assert_eq!(changed.blob_delta(), Some(patch));
        assert_eq!(
            (changed.blob_hash(), changed.blob_len()),
            (hash::blob(b"y"), 1)
        );
        assert_ne!(changed.leaf(), m.leaf());
        assert!(changed.files().iter().any(|f| f.ends_with(".diff")));
    }
}
