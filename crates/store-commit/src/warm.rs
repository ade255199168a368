//! What sessions read of a commit's module, kept across sessions: its delta decoded, its blob
//! checked. (Its image stays mapped in the reservation pool instead, which holds no file open.)
//! Committed files never change (read-only, replaced only by whole directories), and a commit's
//! content is named by its root, so an entry is valid as long as its commit exists; deleting the
//! commit drops its entries.
//!
//! Bounded: at most `StoreConfig::warm_memories` deltas and `StoreConfig::warm_bytes` bytes of
//! deltas and blobs; anything larger than a quarter of the byte bound is never kept. A full cache
//! drops an arbitrary entry (`HashMap` order).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use store_index::{ModuleId, Root};

use crate::delta::DeltaPages;

/// A module's memory delta as a commit holds it, checked and decoded.
pub(crate) type WarmMemory = DeltaPages;

/// A map bounded by entries and by a weight.
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, (V, usize)>,
    weight: usize,
    max_entries: usize,
    max_weight: usize,
}

impl<K: Hash + Eq + Copy, V: Clone> Bounded<K, V> {
    fn new(max_entries: usize, max_weight: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            weight: 0,
            max_entries,
            max_weight,
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).map(|(v, _)| v.clone())
    }

    fn insert(&mut self, key: K, value: V, weight: usize) {
        if self.max_entries == 0 || weight > self.max_weight / 4 || self.map.contains_key(&key) {
            return;
        }
        while self.map.len() >= self.max_entries || self.weight + weight > self.max_weight {
            let Some(victim) = self.map.keys().next().copied() else {
                break;
            };
            self.remove(&victim);
        }
        self.weight += weight;
        self.map.insert(key, (value, weight));
    }

    fn remove(&mut self, key: &K) {
        if let Some((_, w)) = self.map.remove(key) {
            self.weight -= w;
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let doomed: Vec<K> = self.map.keys().filter(|k| !keep(k)).copied().collect();
        for k in doomed {
            self.remove(&k);
        }
    }
}

type Key = (Root, ModuleId);

/// The warm state of a store.
#[derive(Debug)]
pub(crate) struct Warm {
    memories: Mutex<Bounded<Key, Arc<WarmMemory>>>,
    blobs: Mutex<Bounded<Key, Arc<Vec<u8>>>>,
}

impl Warm {
    pub(crate) fn new(warm_memories: usize, warm_bytes: usize) -> Warm {
        // The byte bound is shared: half for deltas, half for blobs.
        Warm {
            memories: Mutex::new(Bounded::new(warm_memories, warm_bytes / 2)),
            blobs: Mutex::new(Bounded::new(usize::MAX, warm_bytes / 2)),
        }
    }

    pub(crate) fn memory(&self, root: &Root, id: &ModuleId) -> Option<Arc<WarmMemory>> {
        self.memories.lock().get(&(*root, *id))
    }

    pub(crate) fn keep_memory(&self, root: &Root, id: &ModuleId, memory: Arc<WarmMemory>) {
        let weight = memory.data.len() + memory.indices.len() * 4;
        self.memories.lock().insert((*root, *id), memory, weight);
    }

    pub(crate) fn blob(&self, root: &Root, id: &ModuleId) -> Option<Arc<Vec<u8>>> {
        self.blobs.lock().get(&(*root, *id))
    }

    pub(crate) fn keep_blob(&self, root: &Root, id: &ModuleId, blob: Arc<Vec<u8>>) {
        let weight = blob.len();
        self.blobs.lock().insert((*root, *id), blob, weight);
    }

    /// Drops everything of commit `root` (deleted: its files must not stay open).
    pub(crate) fn forget(&self, root: &Root) {
        self.memories.lock().retain(|(r, _)| r != root);
        self.blobs.lock().retain(|(r, _)| r != root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_both_bounds() {
        let mut b = Bounded::new(3, 100);
        for k in 0..10u32 {
            b.insert(k, k, 10);
            assert!(b.map.len() <= 3 && b.weight <= 100);
        }
        assert_eq!(b.map.len(), 3);
        b.insert(99, 0, 26);
        assert!(b.get(&99).is_none(), "over a quarter of the weight bound");
        let mut b = Bounded::new(10, 100);
        for k in 0..10u32 {
            b.insert(k, k, 25);
            assert!(b.weight <= 100);
        }
        assert_eq!(b.map.len(), 4);
        b.retain(|_| false);
        assert_eq!((b.map.len(), b.weight), (0, 0));
    }
}
