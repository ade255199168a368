//! Key-value spaces: the sorted table files a space is read from, a session's view of one space
//! ([`KvHandle`]: reads, writes, range iterators, quotas, the undo log of checkpoints), and the
//! planning of a space's files at commit.
//!
//! A space is read from up to three sorted tables, newest first: the top delta, the middle delta
//! and the base (`kv/<namespace>.{2,1,0}`), then the session's own writes on top. A table file is
//! `entries ‖ index ‖ footer`, mapped read-only and searched in place (binary search over the
//! index, which carries the first 8 bytes of each key), so opening a space costs the same for
//! 1 k and 1 M keys. At commit:
//! - a space with one table gets a middle delta of the session's writes;
//! - with two or three, a new top delta merging the old top (if any) with the writes, or, once
//!   that passes `kv_top_entries`, a new middle delta merging the middle with it (no top);
//! - when the middle delta passes `max(base entries / kv_delta_ratio, kv_min_delta)` the space is
//!   rebased: one new base, no deltas.
//!
//! Unchanged tables are hard-linked. With `kv_background` (the default) the fold or rebase runs
//! on a thread ([`Compactions`]): the commit that passes the bound writes its top delta (up to
//! [`TOP_CAP`] times `kv_top_entries`) and starts the merge; a later commit whose tables descend
//! from that commit's links the merged table and keeps above it only the entries that differ.
//! So every commit writes O(top delta + keys written); without it, a fold writes O(middle
//! delta) and a rebase O(state). See docs/STORE-FORMAT.md for the rule and its bounds.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use store_index::{Digest, KvEntry, KvHash, Namespace, TableRef};

use crate::{Corruption, StoreConfig, StoreError};

/// Magic of a key-value table's footer.
const MAGIC: &[u8; 8] = b"STRATAkv";
/// Version of the table layout (inside the store's format version).
const TABLE_VERSION: u32 = 1;
/// count u64 ‖ index offset u64 ‖ magic ‖ version u32 ‖ reserved u32.
const FOOTER: usize = 32;
/// Per entry in the index: key prefix u64 (big-endian, zero-padded) ‖ offset u64.
const INDEX_ENTRY: usize = 16;
/// One fence (the key prefix of every `FENCE_EVERY`th entry, u64 big-endian) per index page,
/// so that a lookup in a freshly mapped table touches few pages: the fences, one index page,
/// the entry.
const FENCE_EVERY: u64 = 256;
/// The value length that marks a tombstone (a removed key) in a delta table.
const TOMBSTONE: u32 = u32::MAX;

/// Why a key-value table could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The footer is missing or damaged.
    #[error("bad key-value table footer: {0}")]
    Footer(&'static str),
    /// An entry lies outside the table's data or is malformed.
    #[error("key-value table entry {0} is out of bounds")]
    Entry(u64),
    /// Keys are not strictly increasing, or a base table holds a tombstone.
    #[error("key-value table is not sorted or holds a tombstone in its base")]
    Order,
}

/// A key-value write over a space's quota (see [`KvQuota`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvQuotaExceeded {
    /// The bytes of keys and values would pass the quota.
    #[error(
        "key-value quota exceeded: the write would make the space's data {would_be} bytes, over the quota of {quota} bytes"
    )]
    Bytes {
        /// The bytes the write would have made.
        would_be: u64,
        /// The quota.
        quota: u64,
    },
    /// The number of keys would pass the quota.
    #[error(
        "key-value quota exceeded: the write would make {would_be} keys, over the quota of {quota} keys"
    )]
    Keys {
        /// The keys the write would have made.
        would_be: u64,
        /// The quota.
        quota: u64,
    },
}

/// The limits of one key-value space, set by the host ([`KvHandle::set_quota`]). A write that
/// would take the space over either is refused with nothing changed; a write that does not grow
/// the figure it would pass is always allowed (also over a quota lowered since).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Most bytes of keys plus values.
    pub bytes: u64,
    /// Most keys.
    pub keys: u64,
}

impl Default for KvQuota {
    fn default() -> Self {
        KvQuota {
            bytes: u64::MAX,
            keys: u64::MAX,
        }
    }
}

/// Order of a range scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Increasing keys.
    Ascending,
    /// Decreasing keys.
    Descending,
}

/// Encodes a table, entry by entry, in increasing key order.
#[derive(Default)]
pub(crate) struct TableWriter {
    data: Vec<u8>,
    index: Vec<u8>,
    count: u64,
}

fn prefix(key: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = key.len().min(8);
    p[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(p)
}

impl TableWriter {
    fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.index.extend_from_slice(&prefix(key).to_be_bytes());
        self.index
            .extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        self.data
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        let vlen = value.map_or(TOMBSTONE, |v| v.len() as u32);
        self.data.extend_from_slice(&vlen.to_le_bytes());
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value.unwrap_or_default());
        self.count += 1;
    }

    fn finish(mut self) -> (Vec<u8>, u64) {
        let index_at = self.data.len() as u64;
        let fences: Vec<u8> = self
            .index
            .chunks(INDEX_ENTRY * FENCE_EVERY as usize)
            .flat_map(|page| page[..8].to_vec())
            .collect();
        self.data.append(&mut self.index);
        self.data.extend_from_slice(&fences);
        self.data.extend_from_slice(&self.count.to_le_bytes());
        self.data.extend_from_slice(&index_at.to_le_bytes());
        self.data.extend_from_slice(MAGIC);
        self.data.extend_from_slice(&TABLE_VERSION.to_le_bytes());
        self.data.extend_from_slice(&0u32.to_le_bytes());
        (self.data, self.count)
    }
}

/// The bytes of a table: a read-only mapping of its file, or owned bytes (verify, tests).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// One table file, searched in place.
pub(crate) struct Table {
    bytes: Bytes,
    count: u64,
    index_at: usize,
    pub(crate) path: PathBuf,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({}, {} entries)", self.path.display(), self.count)
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

type Entry<'a> = (&'a [u8], Option<&'a [u8]>);

impl Table {
    /// Maps `file`, which the caller checked is `len` bytes long (committed files never change).
    pub(crate) fn map(
        file: &strata_fs::File,
        len: usize,
        path: PathBuf,
    ) -> Result<Table, StoreError> {
        if len < FOOTER {
            return Err(table_corrupt(&path, TableError::Footer("too short")));
        }
        // SAFETY: memmap2's contract is that the file is not modified or truncated while mapped.
        // Committed files are never written in place and are read-only on disk (`0o444`); a
        // removed file lives on while mapped; the file is `len` bytes long (checked by the caller
        // against the index), and every read below is bounds-checked against `len`.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }.map_err(|source| {
            StoreError::Mapping {
                op: "mmap key-value table",
                source,
            }
        })?;
        Table::new(Bytes::Mapped(map), path)
    }

    /// A table over owned bytes.
    pub(crate) fn owned(bytes: Vec<u8>, path: PathBuf) -> Result<Table, StoreError> {
        Table::new(Bytes::Owned(bytes), path)
    }

    fn new(bytes: Bytes, path: PathBuf) -> Result<Table, StoreError> {
        let b: &[u8] = match &bytes {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        };
        let footer = |reason| table_corrupt(&path, TableError::Footer(reason));
        if b.len() < FOOTER {
            return Err(footer("too short"));
        }
        let f = b.len() - FOOTER;
        if &b[f + 16..f + 24] != MAGIC {
            return Err(footer("bad magic number"));
        }
        if u32_at(b, f + 24) != TABLE_VERSION {
            return Err(footer("unknown table version"));
        }
        let count = u64_at(b, f);
        let index_at = u64_at(b, f + 8);
        let index_len = count.checked_mul(INDEX_ENTRY as u64);
        let fences_len = count.div_ceil(FENCE_EVERY) * 8;
        if index_len
            .and_then(|l| l.checked_add(index_at))
            .and_then(|l| l.checked_add(fences_len))
            != Some(f as u64)
        {
            return Err(footer("index does not fit the file"));
        }
        Ok(Table {
            count,
            index_at: index_at as usize,
            bytes,
            path,
        })
    }

    fn b(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    fn prefix_at(&self, i: u64) -> u64 {
        let at = self.index_at + i as usize * INDEX_ENTRY;
        let mut x = [0u8; 8];
        x.copy_from_slice(&self.b()[at..at + 8]);
        u64::from_be_bytes(x)
    }

    /// Entry `i` (`i < len`): its key, and its value or `None` for a tombstone.
    pub(crate) fn entry(&self, i: u64) -> Result<Entry<'_>, StoreError> {
        let b = self.b();
        let bad = || table_corrupt(&self.path, TableError::Entry(i));
        let off = u64_at(b, self.index_at + i as usize * INDEX_ENTRY + 8);
        let data = &b[..self.index_at];
        let off = usize::try_from(off).map_err(|_| bad())?;
        let head = data
            .get(off..off.checked_add(8).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        let klen = u32_at(head, 0) as usize;
        let vlen = u32_at(head, 4);
        let key_at = off + 8;
        let key = data.get(key_at..key_at + klen).ok_or_else(bad)?;
        if vlen == TOMBSTONE {
            return Ok((key, None));
        }
        let v_at = key_at + klen;
        let value = data.get(v_at..v_at + vlen as usize).ok_or_else(bad)?;
        Ok((key, Some(value)))
    }

    fn key(&self, i: u64) -> Result<&[u8], StoreError> {
        Ok(self.entry(i)?.0)
    }

    /// The first entry whose key is at least `key` (`len` when none).
    pub(crate) fn lower_bound(&self, key: &[u8]) -> Result<u64, StoreError> {
        let p = prefix(key);
        // The fences narrow the search to the entries between the last fence below the key's
        // prefix and the first above it (fences equal to it may hide equal prefixes on both
        // sides).
        let fences = self.count.div_ceil(FENCE_EVERY);
        let fence = |j: u64| {
            let at = self.index_at + self.count as usize * INDEX_ENTRY + j as usize * 8;
            let mut x = [0u8; 8];
            x.copy_from_slice(&self.b()[at..at + 8]);
            u64::from_be_bytes(x)
        };
        let partition = |pred: &dyn Fn(u64) -> bool| {
            let (mut lo, mut hi) = (0, fences);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if pred(fence(mid)) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let below = partition(&|f| f < p);
        let not_above = partition(&|f| f <= p);
        let mut lo = below.saturating_sub(1) * FENCE_EVERY;
        let mut hi = (not_above * FENCE_EVERY).min(self.count);
        if lo > hi {
            (lo, hi) = (0, self.count);
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mp = self.prefix_at(mid);
            let less = match mp.cmp(&p) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => self.key(mid)? < key,
            };
            if less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The entry of `key`: `None` if absent, `Some(None)` for a tombstone.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Option<&[u8]>>, StoreError> {
        let i = self.lower_bound(key)?;
        if i == self.count {
            return Ok(None);
        }
        let (k, v) = self.entry(i)?;
        Ok((k == key).then_some(v))
    }
}

fn table_corrupt(path: &std::path::Path, e: TableError) -> StoreError {
    StoreError::Corrupted {
        path: path.to_path_buf(),
        source: Corruption::Table(e),
    }
}

type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// A key and its value.
type Pair = (Vec<u8>, Vec<u8>);
/// A key and what the session's writes held for it before (`None`: nothing).
type UndoEntry = (Vec<u8>, Option<Option<Vec<u8>>>);

/// A live checkpoint of a space: where its undo log stood.
#[derive(Debug)]
struct Mark {
    checkpoint: u64,
    alive: Weak<()>,
    undo_len: usize,
    keys: u64,
    bytes: u64,
}

/// One key-value space as a session sees it.
#[derive(Debug)]
pub(crate) struct KvSpace {
    pub(crate) namespace: Namespace,
    /// The space's entry in the base commit (`None`: empty there).
    pub(crate) base: Option<KvEntry>,
    /// The base's tables, base first.
    pub(crate) levels: Vec<Arc<Table>>,
    /// What this session wrote: a value, or `None` for a removal.
    pub(crate) writes: Arc<Writes>,
    keys: u64,
    bytes: u64,
    quota: KvQuota,
    /// For the first change of a key since the newest live checkpoint: its previous write.
    undo: Vec<UndoEntry>,
    logged: HashSet<Vec<u8>>,
    marks: Vec<Mark>,
    live_iterators: usize,
}

/// A session's handle on one key-value space (cheap to clone; all clones share the space).
///
/// Reads see the session's writes over the base commit. Writes are checked against the space's
/// [`KvQuota`] and undone by [`Session::rollback`](crate::Session::rollback). Iterators from
/// [`range`](Self::range) see the space as it was when they were made (a snapshot, as
/// cosmwasm-vm's `MockStorage` gives at `db_scan`), however the space changes afterwards.
#[derive(Clone, Debug)]
pub struct KvHandle(pub(crate) Arc<Mutex<KvSpace>>);

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl KvSpace {
    pub(crate) fn new(namespace: Namespace, base: Option<KvEntry>, levels: Vec<Table>) -> KvSpace {
        let (keys, bytes) = base.as_ref().map_or((0, 0), |e| (e.keys(), e.bytes()));
        KvSpace {
            namespace,
            base,
            levels: levels.into_iter().map(Arc::new).collect(),
            writes: Arc::default(),
            keys,
            bytes,
            quota: KvQuota::default(),
            undo: Vec::new(),
            logged: HashSet::new(),
            marks: Vec::new(),
            live_iterators: 0,
        }
    }

    /// The committed entry of `key` in the base's tables.
    fn committed(&self, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        for t in self.levels.iter().rev() {
            if let Some(v) = t.get(key)? {
                return Ok(v);
            }
        }
        Ok(None)
    }

    fn lookup(&self, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        match self.writes.get(key) {
            Some(w) => Ok(w.as_deref()),
            None => self.committed(key),
        }
    }

    /// Drops the checkpoints that no longer exist (newest first); their undo entries then belong
    /// to the checkpoint below, which keeps one entry per key (the oldest).
    fn prune(&mut self) {
        let mut popped = false;
        while self
            .marks
            .last()
            .is_some_and(|m| m.alive.strong_count() == 0)
        {
            self.marks.pop();
            popped = true;
        }
        if !popped {
            return;
        }
        let Some(last) = self.marks.last() else {
            self.undo.clear();
            self.logged.clear();
            return;
        };
        let from = last.undo_len;
        self.logged.clear();
        let tail: Vec<_> = self.undo.drain(from..).collect();
        for (key, old) in tail {
            if self.logged.insert(key.clone()) {
                self.undo.push((key, old));
            }
        }
    }

    fn log(&mut self, key: &[u8]) {
        if self.marks.is_empty() || self.logged.contains(key) {
            return;
        }
        self.logged.insert(key.to_vec());
        self.undo
            .push((key.to_vec(), self.writes.get(key).cloned()));
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        self.log(key);
        Arc::make_mut(&mut self.writes).insert(key.to_vec(), value);
    }

    pub(crate) fn mark(&mut self, checkpoint: u64, alive: Weak<()>) {
        self.prune();
        self.logged.clear();
        self.marks.push(Mark {
            checkpoint,
            alive,
            undo_len: self.undo.len(),
            keys: self.keys,
            bytes: self.bytes,
        });
    }

    pub(crate) fn has_mark(&self, checkpoint: u64) -> bool {
        self.marks.iter().any(|m| m.checkpoint == checkpoint)
    }

    /// Undoes every change since checkpoint `checkpoint` (which [`has_mark`](Self::has_mark)).
    pub(crate) fn rollback(&mut self, checkpoint: u64) {
        let Some(at) = self.marks.iter().position(|m| m.checkpoint == checkpoint) else {
            return;
        };
        self.marks.truncate(at + 1);
        let mark = &self.marks[at];
        let (from, keys, bytes) = (mark.undo_len, mark.keys, mark.bytes);
        let entries: Vec<_> = self.undo.drain(from..).collect();
        let writes = Arc::make_mut(&mut self.writes);
        for (key, old) in entries.into_iter().rev() {
            match old {
                Some(w) => writes.insert(key, w),
                None => writes.remove(&key),
            };
        }
        self.keys = keys;
        self.bytes = bytes;
        self.logged.clear();
    }

    /// Back to the base commit's content.
    pub(crate) fn reset(&mut self) {
        self.writes = Arc::default();
        (self.keys, self.bytes) = self.base.as_ref().map_or((0, 0), |e| (e.keys(), e.bytes()));
        self.undo.clear();
        self.logged.clear();
        self.marks.clear();
    }
}

impl KvHandle {
    /// An empty space of its own, part of no session (nothing commits it): for hosts that need
    /// a space outside a session, and for tests.
    pub fn detached(namespace: Namespace) -> KvHandle {
        KvHandle(Arc::new(Mutex::new(KvSpace::new(
            namespace,
            None,
            Vec::new(),
        ))))
    }

    /// The space this handle reads and writes.
    pub fn namespace(&self) -> Namespace {
        self.0.lock().namespace
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// `f` of the value of `key`, without copying it first.
    pub fn get_with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        let space = self.0.lock();
        Ok(space.lookup(key)?.map(f))
    }

    /// Stores `value` under `key`. Refused with [`StoreError::KvQuota`], nothing changed, if it
    /// would take the space over its quota.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut space = self.0.lock();
        let old = space.lookup(key)?.map(|v| entry_bytes(key, v));
        let new = entry_bytes(key, value);
        let bytes = space.bytes - old.unwrap_or(0) + new;
        if bytes > space.quota.bytes && bytes > space.bytes {
            return Err(StoreError::KvQuota(KvQuotaExceeded::Bytes {
                would_be: bytes,
                quota: space.quota.bytes,
            }));
        }
        let keys = space.keys + u64::from(old.is_none());
        if keys > space.quota.keys && keys > space.keys {
            return Err(StoreError::KvQuota(KvQuotaExceeded::Keys {
                would_be: keys,
                quota: space.quota.keys,
            }));
        }
        space.write(key, Some(value.to_vec()));
        space.bytes = bytes;
        space.keys = keys;
        Ok(())
    }

    /// Removes `key`; returns whether it was there (removing an absent key writes nothing).
    pub fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        let mut space = self.0.lock();
        let Some(old) = space.lookup(key)?.map(|v| entry_bytes(key, v)) else {
            return Ok(false);
        };
        space.write(key, None);
        space.bytes -= old;
        space.keys -= 1;
        Ok(true)
    }

    /// The entries with `start <= key < end` (`None`: unbounded), in `order`, as they are now:
    /// later writes do not show in the iterator. Making one costs O(log n) (plus, at the next
    /// write, one copy of this session's writes while the iterator lives).
    pub fn range(
        &self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        order: Order,
    ) -> Result<KvIter, StoreError> {
        let mut space = self.0.lock();
        let writes = Arc::clone(&space.writes);
        space.iter(self, start, end, order, writes)
    }

    /// [`range`](Self::range) for a host that bills its guest: the iterator takes its own copy
    /// of the session's writes inside the range (the space's writes stay unshared, so a later
    /// write copies nothing), and `charge` is called with the bytes of each entry before it is
    /// copied. `Ok(None)` when `charge` refuses one (nothing is kept).
    pub fn range_charged(
        &self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        order: Order,
        charge: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Option<KvIter>, StoreError> {
        let mut space = self.0.lock();
        let mut copy = Writes::new();
        if !matches!((start, end), (Some(l), Some(h)) if l > h) {
            let lo = start.map_or(Bound::Unbounded, Bound::Included);
            let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
            for (k, v) in space.writes.range::<[u8], _>((lo, hi)) {
                let bytes = (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
                if !charge(bytes) {
                    return Ok(None);
                }
                copy.insert(k.clone(), v.clone());
            }
        }
        Ok(Some(space.iter(self, start, end, order, Arc::new(copy))?))
    }
}

impl KvSpace {
    /// An iterator over the tables and `writes` (the session's writes, or a copy of a range).
    fn iter(
        &mut self,
        handle: &KvHandle,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        order: Order,
        writes: Arc<Writes>,
    ) -> Result<KvIter, StoreError> {
        let space = self;
        let (lo, hi) = (start.map(<[u8]>::to_vec), end.map(<[u8]>::to_vec));
        let mut cursors = Vec::with_capacity(space.levels.len());
        for t in &space.levels {
            let pos = match order {
                Order::Ascending => match &lo {
                    Some(k) => t.lower_bound(k)?,
                    None => 0,
                },
                Order::Descending => match &hi {
                    Some(k) => t.lower_bound(k)?,
                    None => t.len(),
                },
            };
            cursors.push((Arc::clone(t), pos));
        }
        space.live_iterators += 1;
        // An empty range (start past end) yields nothing, as in cosmwasm-vm.
        let done = matches!((&lo, &hi), (Some(l), Some(h)) if l > h);
        Ok(KvIter {
            space: Arc::downgrade(&handle.0),
            writes,
            tables: cursors,
            after: None,
            lo,
            hi,
            order,
            done,
        })
    }
}

impl KvHandle {
    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.0.lock().keys
    }

    /// Whether the space has no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and values, the figure the byte quota limits.
    pub fn bytes(&self) -> u64 {
        self.0.lock().bytes
    }

    /// Sets the space's quota for the following writes.
    pub fn set_quota(&self, quota: KvQuota) {
        self.0.lock().quota = quota;
    }

    /// Entries in the undo log of the newest checkpoint: the distinct keys changed since it.
    pub fn undo_len(&self) -> usize {
        let mut space = self.0.lock();
        space.prune();
        let from = space.marks.last().map_or(space.undo.len(), |m| m.undo_len);
        space.undo.len() - from
    }

    /// Iterators of this space not yet dropped.
    pub fn live_iterators(&self) -> usize {
        self.0.lock().live_iterators
    }
}

/// An iterator over a range of a key-value space, from [`KvHandle::range`]: the space as it was
/// when the iterator was made. Yields `(key, value)` pairs, or an error for a damaged table.
#[derive(Debug)]
pub struct KvIter {
    space: Weak<Mutex<KvSpace>>,
    writes: Arc<Writes>,
    /// Each table (base first) and the position of its next entry (descending: one past it).
    tables: Vec<(Arc<Table>, u64)>,
    /// The last key returned.
    after: Option<Vec<u8>>,
    lo: Option<Vec<u8>>,
    hi: Option<Vec<u8>>,
    order: Order,
    done: bool,
}

impl Drop for KvIter {
    fn drop(&mut self) {
        if let Some(space) = self.space.upgrade() {
            let mut space = space.lock();
            space.live_iterators = space.live_iterators.saturating_sub(1);
        }
    }
}

impl KvIter {
    fn in_range(&self, key: &[u8]) -> bool {
        self.lo.as_deref().is_none_or(|lo| key >= lo)
            && self.hi.as_deref().is_none_or(|hi| key < hi)
    }

    /// The next write of the session's snapshot past the cursor.
    fn next_write(&self) -> Option<(&[u8], Option<&[u8]>)> {
        let (lo, hi): (Bound<&[u8]>, Bound<&[u8]>) = match self.order {
            Order::Ascending => (
                match &self.after {
                    Some(k) => Bound::Excluded(k),
                    None => self.lo.as_deref().map_or(Bound::Unbounded, Bound::Included),
                },
                self.hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            ),
            Order::Descending => (
                self.lo.as_deref().map_or(Bound::Unbounded, Bound::Included),
                match &self.after {
                    Some(k) => Bound::Excluded(k),
                    None => self.hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                },
            ),
        };
        let mut r = self.writes.range::<[u8], _>((lo, hi));
        let e = match self.order {
            Order::Ascending => r.next(),
            Order::Descending => r.next_back(),
        };
        e.map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// The entry at table `t`'s cursor, if inside the range.
    fn peek(&self, t: usize) -> Result<Option<Entry<'_>>, StoreError> {
        let (table, pos) = &self.tables[t];
        let i = match self.order {
            Order::Ascending if *pos < table.len() => *pos,
            Order::Descending if *pos > 0 => pos - 1,
            _ => return Ok(None),
        };
        let e = table.entry(i)?;
        Ok(self.in_range(e.0).then_some(e))
    }

    fn step(&mut self) -> Result<Option<Pair>, StoreError> {
        loop {
            // The nearest key of every source, newest first; on a tie the newest source wins.
            // Each table's entry is decoded once per step.
            let mut advance = [false; store_index::KV_MAX_LEVELS];
            let (key, value) = {
                let ascending = self.order == Order::Ascending;
                let closer = |k: &[u8], b: &[u8]| if ascending { k < b } else { k > b };
                let mut peeks: [Option<&[u8]>; store_index::KV_MAX_LEVELS] =
                    [None; store_index::KV_MAX_LEVELS];
                let mut best: Option<Entry<'_>> = self.next_write();
                for t in (0..self.tables.len()).rev() {
                    if let Some(e) = self.peek(t)? {
                        peeks[t] = Some(e.0);
                        if best.is_none_or(|(b, _)| closer(e.0, b)) {
                            best = Some(e);
                        }
                    }
                }
                let Some((k, v)) = best else {
                    return Ok(None);
                };
                for (a, p) in advance.iter_mut().zip(peeks) {
                    *a = p == Some(k);
                }
                (k.to_vec(), v.map(<[u8]>::to_vec))
            };
            for (t, _) in advance.iter().enumerate().filter(|(_, a)| **a) {
                let pos = &mut self.tables[t].1;
                match self.order {
                    Order::Ascending => *pos += 1,
                    Order::Descending => *pos -= 1,
                }
            }
            // Only the writes are searched from the last key; the tables keep positions.
            if !self.writes.is_empty() {
                self.after = Some(key.clone());
            }
            if let Some(value) = value {
                return Ok(Some((key, value)));
            }
        }
    }
}

impl Iterator for KvIter {
    type Item = Result<Pair, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

/// What a commit writes for one space.
pub(crate) struct PlannedSpace {
    /// The new entry (`None`: the space is empty and has no entry, no files).
    pub(crate) entry: Option<KvEntry>,
    /// Per level, where the table comes from.
    pub(crate) files: Vec<KvSource>,
    /// The compaction to start once the commit is written.
    pub(crate) compaction: Option<JobSpec>,
}

/// A background compaction a commit asks for: merge `tables` (the commit's levels from `from`
/// up), adoptable by commits sharing the `shared` files and holding every key of `top`.
pub(crate) struct JobSpec {
    namespace: Namespace,
    from: usize,
    shared: Vec<Digest>,
    top: Option<Arc<Table>>,
    tables: Vec<Arc<Table>>,
}

/// A merge of sorted sources, oldest first; a newer source's entry for a key wins.
fn merge(
    tables: &[&Table],
    writes: Option<&Writes>,
    drop_tombstones: bool,
) -> Result<TableWriter, StoreError> {
    let mut out = TableWriter::default();
    let mut pos = vec![0u64; tables.len()];
    let mut w = writes.map(|w| w.iter().peekable());
    loop {
        let mut best: Option<Entry<'_>> = None;
        for (t, table) in tables.iter().enumerate() {
            if pos[t] < table.len() {
                let e = table.entry(pos[t])?;
                if best.is_none_or(|(b, _)| e.0 <= b) {
                    best = Some(e);
                }
            }
        }
        if let Some(w) = w.as_mut()
            && let Some((k, v)) = w.peek()
            && best.is_none_or(|(b, _)| k.as_slice() <= b)
        {
            best = Some((k.as_slice(), v.as_deref()));
        }
        let Some((key, value)) = best else { break };
        let key = key.to_vec();
        let value = value.map(<[u8]>::to_vec);
        for (t, table) in tables.iter().enumerate() {
            if pos[t] < table.len() && table.entry(pos[t])?.0 == key.as_slice() {
                pos[t] += 1;
            }
        }
        if let Some(w) = w.as_mut()
            && w.peek().is_some_and(|(k, _)| **k == key)
        {
            w.next();
        }
        if value.is_some() || !drop_tombstones {
            out.push(&key, value.as_deref());
        }
    }
    Ok(out)
}

fn table_ref(bytes: &[u8], entries: u64) -> TableRef {
    TableRef {
        entries,
        file_len: bytes.len() as u64,
        file_hash: Digest::sha256(bytes),
    }
}

/// A table a background compaction built: the merge of the levels of one commit from `from` up
/// (`from` 0: a new base, tombstones dropped; 1: a new middle delta).
///
/// Its file is removed when the last holder lets go: the compaction registry, or a commit in
/// flight that links it (a commit directory's link keeps the data).
#[derive(Debug)]
pub(crate) struct Staged {
    path: PathBuf,
    table: Arc<Table>,
    table_ref: TableRef,
    files: crate::files::StagedFiles,
}

impl Staged {
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.files.remove(&self.path);
    }
}

#[derive(Debug)]
enum JobState {
    Running,
    Ready(Arc<Staged>),
    Failed,
}

/// One background compaction of a space.
#[derive(Debug)]
struct Job {
    from: usize,
    /// The file hashes of the commit's base and middle delta (what an adopter must share).
    shared: Vec<Digest>,
    /// The commit's top delta, whose keys an adopter's top must all hold (so that the adopter
    /// descends from that commit: its tops are cumulative since the middle delta).
    top: Option<Arc<Table>>,
    state: Arc<Mutex<JobState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The background compactions of a store: at most one per space. A commit that would fold or
/// rebase a space writes its top delta instead (up to [`TOP_CAP`] times `kv_top_entries`) and
/// starts the merge on a thread; a later commit whose tables descend from that commit adopts
/// the merged table (a hard link) and keeps only what changed since. The registry joins its
/// threads and removes their staged files when the store closes.
#[derive(Debug)]
pub(crate) struct Compactions {
    staged: crate::files::StagedFiles,
    jobs: Mutex<std::collections::HashMap<Namespace, Job>>,
}

/// A top delta grows past `kv_top_entries` while a compaction runs, up to this many times it;
/// past that, the commit folds or rebases itself.
pub(crate) const TOP_CAP: usize = 16;

/// The most compactions a store runs at once.
const MAX_RUNNING: usize = 2;

impl Compactions {
    pub(crate) fn new(staged: crate::files::StagedFiles) -> Compactions {
        Compactions {
            staged,
            jobs: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Waits for every running compaction (tests and benchmarks; dropping does the same).
    pub(crate) fn wait(&self) {
        let threads: Vec<_> = self
            .jobs
            .lock()
            .values_mut()
            .filter_map(|j| j.thread.take())
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Whether a compaction of `namespace` is running.
    fn running(&self, namespace: &Namespace) -> bool {
        self.jobs
            .lock()
            .get(namespace)
            .is_some_and(|j| matches!(*j.state.lock(), JobState::Running))
    }

    /// The staged table a space with `levels` can adopt, and from which level it replaces.
    fn adoptable(
        &self,
        namespace: &Namespace,
        refs: &[TableRef],
        levels: &[Arc<Table>],
    ) -> Result<Option<(usize, Arc<Staged>)>, StoreError> {
        let jobs = self.jobs.lock();
        let Some(job) = jobs.get(namespace) else {
            return Ok(None);
        };
        let JobState::Ready(staged) = &*job.state.lock() else {
            return Ok(None);
        };
        let shared: Vec<Digest> = refs.iter().take(2).map(|r| r.file_hash).collect();
        if shared != job.shared {
            return Ok(None);
        }
        if let Some(top) = &job.top {
            let Some(mine) = levels.get(2) else {
                return Ok(None);
            };
            for i in 0..top.len() {
                if mine.get(top.entry(i)?.0)?.is_none() {
                    return Ok(None);
                }
            }
        }
        Ok(Some((job.from, Arc::clone(staged))))
    }

    /// Starts a compaction that a written commit asked for, replacing any finished compaction
    /// of the space (never a running one: then nothing starts).
    pub(crate) fn start(&self, spec: JobSpec) {
        let JobSpec {
            namespace,
            from,
            shared,
            top,
            tables,
        } = spec;
        let mut jobs = self.jobs.lock();
        let running = |j: &Job| matches!(*j.state.lock(), JobState::Running);
        // One per space, and a bounded number per store: past it, tops grow to their cap and
        // the commits merge themselves.
        if jobs.get(&namespace).is_some_and(running)
            || jobs.values().filter(|j| running(j)).count() >= MAX_RUNNING
        {
            return;
        }
        // The finished compaction it replaces ends on the new thread: unlinking its staged
        // table (as large as the state for a rebase) is not the commit's work.
        let old = jobs.remove(&namespace);
        let state = Arc::new(Mutex::new(JobState::Running));
        let staged = self.staged.clone();
        let job_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("strata-kv-compaction".into())
            .spawn(move || {
                if let Some(old) = old {
                    Compactions::end(old);
                }
                let result = (|| {
                    let refs: Vec<&Table> = tables.iter().map(|t| &**t).collect();
                    let (bytes, entries) = merge(&refs, None, from == 0)?.finish();
                    let table_ref = table_ref(&bytes, entries);
                    let (path, table) = staged.write(&bytes)?;
                    Ok::<_, StoreError>(Arc::new(Staged {
                        path,
                        table: Arc::new(table),
                        table_ref,
                        files: staged,
                    }))
                })();
                *job_state.lock() = match result {
                    Ok(staged) => JobState::Ready(staged),
                    Err(_) => JobState::Failed,
                };
            });
        let Ok(thread) = thread else {
            return;
        };
        jobs.insert(
            namespace,
            Job {
                from,
                shared,
                top,
                state,
                thread: Some(thread),
            },
        );
    }

    /// Ends a compaction: waits for its thread; its staged file goes with its last holder.
    fn end(mut job: Job) {
        if let Some(t) = job.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Compactions {
    fn drop(&mut self) {
        let jobs: Vec<Job> = self.jobs.lock().drain().map(|(_, j)| j).collect();
        for job in jobs {
            Compactions::end(job);
        }
    }
}

/// Where one table of a planned space comes from.
pub(crate) use crate::plan::KvSource;

/// Plans the commit of one space opened in a session.
pub(crate) fn plan_space(
    space: &KvSpace,
    config: &StoreConfig,
    compactions: &Compactions,
) -> Result<PlannedSpace, StoreError> {
    let n = space.levels.len();
    if space.writes.is_empty() {
        return Ok(PlannedSpace {
            entry: space.base.clone(),
            files: (0..n).map(|_| KvSource::Base).collect(),
            compaction: None,
        });
    }
    // The set hash moves by the pairs that changed: O(keys written).
    let mut hash = space
        .base
        .as_ref()
        .map_or_else(KvHash::empty, |e| e.hash().clone());
    for (k, w) in space.writes.iter() {
        let old = space.committed(k)?;
        if old == w.as_deref() {
            continue;
        }
        if let Some(old) = old {
            hash.remove(k, old);
        }
        if let Some(new) = w {
            hash.insert(k, new);
        }
    }
    if space.keys == 0 {
        return Ok(PlannedSpace {
            entry: None,
            files: Vec::new(),
            compaction: None,
        });
    }
    let levels: Vec<&Table> = space.levels.iter().map(|t| &**t).collect();
    let writes = Some(&*space.writes);
    let base_refs = space.base.as_ref().map_or(&[][..], |e| e.levels());
    let entry = |refs| {
        KvEntry::new(space.namespace, space.keys, space.bytes, hash.clone(), refs)
            .map_err(|source| StoreError::InvalidPlan { source })
    };
    // A finished background compaction this space descends from: link its table and keep
    // above it only what differs from it.
    if config.kv_background
        && n >= 2
        && let Some((from, staged)) =
            compactions.adoptable(&space.namespace, base_refs, &space.levels)?
    {
        let merged = &staged.table;
        let newer = merge(&levels[2.min(n)..], writes, false)?;
        let (bytes, _) = newer.finish();
        let newer = Table::owned(bytes, PathBuf::new())?;
        let mut rest = TableWriter::default();
        for i in 0..newer.len() {
            let (k, v) = newer.entry(i)?;
            let below = merged.get(k)?;
            // Equal to the merged table, or a removal of what only the merged base lacked.
            if below == Some(v) || (from == 0 && v.is_none() && below.is_none()) {
                continue;
            }
            rest.push(k, v);
        }
        let mut refs: Vec<TableRef> = base_refs[..from].to_vec();
        let mut files: Vec<KvSource> = (0..from).map(|_| KvSource::Base).collect();
        refs.push(staged.table_ref);
        files.push(KvSource::Staged(Arc::clone(&staged)));
        if rest.count > 0 {
            let (bytes, entries) = rest.finish();
            refs.push(table_ref(&bytes, entries));
            files.push(KvSource::Bytes(bytes));
        }
        return Ok(PlannedSpace {
            entry: Some(entry(refs)?),
            files,
            compaction: None,
        });
    }
    let mut compaction = None;
    let bound = |base_entries: u64| {
        (base_entries / u64::from(config.kv_delta_ratio.max(1))).max(config.kv_min_delta)
    };
    // (bytes, entries) of each level of the new commit; `None` links the base's.
    let mut files: Vec<Option<(Vec<u8>, u64)>> = match n {
        0 => vec![Some(merge(&[], writes, true)?.finish())],
        1 => vec![None, Some(merge(&[], writes, false)?.finish())],
        _ => {
            // With two tables `levels[2..]` is empty: the top is the writes alone.
            let top = merge(&levels[2..], writes, false)?;
            let count = top.count as usize;
            let background =
                config.kv_background && count <= config.kv_top_entries.saturating_mul(TOP_CAP);
            if count <= config.kv_top_entries
                || (background && compactions.running(&space.namespace))
            {
                // Within its bound, or past it while a compaction runs.
                vec![None, None, Some(top.finish())]
            } else if background {
                // Write the top and merge in the background: a new middle delta, or a new
                // base when the middle delta would pass its bound.
                let (bytes, entries) = top.finish();
                let top_table = Arc::new(Table::owned(bytes.clone(), PathBuf::new())?);
                let from = if levels[1].len() + entries > bound(levels[0].len()) {
                    0
                } else {
                    1
                };
                let mut tables: Vec<Arc<Table>> = space.levels[from..2].to_vec();
                tables.push(Arc::clone(&top_table));
                let shared = base_refs.iter().take(2).map(|r| r.file_hash).collect();
                compaction = Some(JobSpec {
                    namespace: space.namespace,
                    from,
                    shared,
                    top: Some(top_table),
                    tables,
                });
                vec![None, None, Some((bytes, entries))]
            } else {
                vec![None, Some(merge(&levels[1..], writes, false)?.finish())]
            }
        }
    };
    let base_entries = levels.first().map_or(0, |t| t.len());
    let mid_entries = match (files.get(1), levels.get(1)) {
        (Some(Some((_, e))), _) => *e,
        (Some(None), Some(t)) => t.len(),
        _ => 0,
    };
    if n > 0 && mid_entries > bound(base_entries) {
        if config.kv_background
            && n == 1
            && let Some(Some((bytes, _))) = files.get(1)
        {
            // A middle delta past the bound at once: rebase in the background.
            let mid = Arc::new(Table::owned(bytes.clone(), PathBuf::new())?);
            let shared = vec![base_refs[0].file_hash, Digest::sha256(bytes)];
            let tables = vec![Arc::clone(&space.levels[0]), mid];
            compaction = Some(JobSpec {
                namespace: space.namespace,
                from: 0,
                shared,
                top: None,
                tables,
            });
        } else {
            files = vec![Some(merge(&levels, writes, true)?.finish())];
        }
    }
    let mut refs = Vec::with_capacity(files.len());
    let mut out = Vec::with_capacity(files.len());
    for (l, f) in files.into_iter().enumerate() {
        match f {
            Some((bytes, entries)) => {
                refs.push(table_ref(&bytes, entries));
                out.push(KvSource::Bytes(bytes));
            }
            None => {
                let r = base_refs
                    .get(l)
                    .copied()
                    .ok_or_else(|| StoreError::InvalidInput {
                        reason: "a key-value table linked from a base that lacks it".into(),
                    })?;
                refs.push(r);
                out.push(KvSource::Base);
            }
        }
    }
    Ok(PlannedSpace {
        entry: Some(entry(refs)?),
        files: out,
        compaction,
    })
}

/// Recomputes a space's content from its tables (each already checked against its hash) and
/// checks it against `entry`: sorted tables, no tombstone in the base, and the key count, bytes
/// and set hash the entry claims. Returns the mismatch as a reason.
pub(crate) fn check_space(
    entry: &KvEntry,
    tables: &[Table],
) -> Result<Result<(), String>, StoreError> {
    for (l, t) in tables.iter().enumerate() {
        let mut prev: Option<&[u8]> = None;
        for i in 0..t.len() {
            let (k, v) = t.entry(i)?;
            if prev.is_some_and(|p| p >= k) || (l == 0 && v.is_none()) {
                return Err(table_corrupt(&t.path, TableError::Order));
            }
            prev = Some(k);
        }
    }
    let refs: Vec<&Table> = tables.iter().collect();
    let (merged, _) = merge(&refs, None, true)?.finish();
    let merged = Table::owned(merged, PathBuf::new())?;
    let (mut keys, mut bytes, mut hash) = (0u64, 0u64, KvHash::empty());
    for i in 0..merged.len() {
        let (k, v) = merged.entry(i)?;
        let v = v.unwrap_or_default();
        keys += 1;
        bytes += entry_bytes(k, v);
        hash.insert(k, v);
    }
    if keys != entry.keys() || bytes != entry.bytes() {
        return Ok(Err(format!(
            "key-value space {} holds {keys} keys and {bytes} bytes, the index says {} and {}",
            entry.namespace(),
            entry.keys(),
            entry.bytes()
        )));
    }
    if &hash != entry.hash() {
        return Ok(Err(format!(
            "key-value space {} does not match its hash",
            entry.namespace()
        )));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&[u8], Option<&[u8]>)]) -> Table {
        let mut w = TableWriter::default();
        for (k, v) in entries {
            w.push(k, *v);
        }
        Table::owned(w.finish().0, PathBuf::from("t")).expect("valid table")
    }

    #[test]
    fn tables_find_keys_by_binary_search() {
        let keys: Vec<Vec<u8>> = (0u32..1000)
            .map(|i| (i * 2).to_be_bytes().to_vec())
            .collect();
        let entries: Vec<(&[u8], Option<&[u8]>)> =
            keys.iter().map(|k| (k.as_slice(), Some(&k[..]))).collect();
        let t = table(&entries);
        assert_eq!(t.len(), 1000);
        for i in 0u32..2000 {
            let k = i.to_be_bytes();
            let found = t.get(&k).expect("reads");
            assert_eq!(found, (i % 2 == 0).then_some(Some(&k[..])), "{i}");
        }
        // Keys that share their first 8 bytes are told apart by the full compare.
        let t = table(&[
            (b"aaaaaaaa1", Some(b"1")),
            (b"aaaaaaaa2", None),
            (b"b", Some(b"")),
        ]);
        assert_eq!(t.get(b"aaaaaaaa2").expect("reads"), Some(None));
        assert_eq!(t.get(b"aaaaaaaa").expect("reads"), None);
        assert_eq!(t.lower_bound(b"aaaaaaaa15").expect("reads"), 1);
        // Runs of equal prefixes across many fences, between other keys.
        let mut keys: Vec<Vec<u8>> = (0u32..2000)
            .map(|i| [b"samepref".as_slice(), &i.to_be_bytes()].concat())
            .collect();
        keys.extend((0u32..700).map(|i| i.to_be_bytes().to_vec()));
        keys.extend((0u32..700).map(|i| [b"z".as_slice(), &i.to_be_bytes()].concat()));
        keys.sort();
        let entries: Vec<(&[u8], Option<&[u8]>)> =
            keys.iter().map(|k| (k.as_slice(), Some(&k[..]))).collect();
        let t = table(&entries);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.lower_bound(k).expect("reads"), i as u64);
            let mut after = k.clone();
            after.push(0);
            assert_eq!(t.lower_bound(&after).expect("reads"), i as u64 + 1);
        }
        assert_eq!(t.lower_bound(b"").expect("reads"), 0);
        assert_eq!(t.lower_bound(b"zz").expect("reads"), keys.len() as u64);
    }

    #[test]
    fn damaged_tables_are_errors_not_panics() {
        let t = table(&[(b"k", Some(b"v"))]);
        let Bytes::Owned(bytes) = &t.bytes else {
            unreachable!("owned")
        };
        for cut in 0..bytes.len() {
            let _ = Table::owned(bytes[..cut].to_vec(), PathBuf::new());
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xff;
            if let Ok(t) = Table::owned(bad, PathBuf::new()) {
                for e in 0..t.len().min(4) {
                    let _ = t.entry(e);
                }
            }
        }
        let mut bad = bytes.clone();
        bad[0] = 0xff; // key length far past the data
        let t = Table::owned(bad, PathBuf::new()).expect("footer intact");
        assert!(matches!(
            t.entry(0),
            Err(StoreError::Corrupted {
                source: Corruption::Table(TableError::Entry(0)),
                ..
            })
        ));
    }
}
