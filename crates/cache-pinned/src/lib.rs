//! A module cache layer of explicitly pinned modules that are never evicted.
//!
//! Pinning is a decision of the host (for example the contracts a chain calls most), so only
//! [`PinnedCache::pin`] adds entries: a [`ModuleCache::save`] through a chain (a promotion from
//! a lower layer, or a write-through after a compile) is a no-op that returns `Ok(())`, as in
//! CosmWasm's pinned cache. Lookups take a read lock on a `HashMap`: a hit is a hash lookup and
//! an `Arc` clone.
//!
//! # Example
//!
//! ```
//! use cache_core::{CacheKey, ModuleCache};
//! use cache_pinned::PinnedCache;
//! use wasmtime::{Engine, Module};
//!
//! # fn main() -> anyhow::Result<()> {
//! let engine = Engine::default();
//! let wat = r#"(module (func (export "f") (result i32) i32.const 1))"#;
//! let key = CacheKey::new(&engine, wat.as_bytes());
//! let module = Module::new(&engine, wat)?;
//!
//! let pinned = PinnedCache::new();
//! pinned.save(&key, &module)?; // a promotion does not pin
//! assert!(pinned.load(&key)?.is_none());
//!
//! pinned.pin(key, module);
//! assert!(pinned.is_pinned(&key));
//! assert!(pinned.load(&key)?.is_some());
//! assert!(pinned.unpin(&key));
//! assert!(pinned.load(&key)?.is_none());
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

use std::collections::HashMap;

pub use cache_core::CacheError;
use cache_core::{CacheKey, LayerStats, ModuleCache, StatCounters, module_size};
use parking_lot::RwLock;
use wasmtime::Module;

/// A pinned entry with its weight, computed once.
struct Entry {
    module: Module,
    bytes: u64,
}

/// Modules pinned in memory until explicitly unpinned. See the crate docs.
#[derive(Default)]
pub struct PinnedCache {
    map: RwLock<HashMap<CacheKey, Entry>>,
    counters: StatCounters,
}

impl std::fmt::Debug for PinnedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCache")
            .field("entries", &self.map.read().len())
            .finish()
    }
}

impl PinnedCache {
    /// An empty pinned cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `module` under `key`, replacing any module pinned there before.
    pub fn pin(&self, key: CacheKey, module: Module) {
        let bytes = module_size(&module);
        self.map.write().insert(key, Entry { module, bytes });
        self.counters.inserts.incr();
    }

    /// Unpins `key`; returns whether it was pinned.
    pub fn unpin(&self, key: &CacheKey) -> bool {
        self.map.write().remove(key).is_some()
    }

    /// Whether `key` is pinned.
    pub fn is_pinned(&self, key: &CacheKey) -> bool {
        self.map.read().contains_key(key)
    }

    /// The pinned keys, in no particular order.
    pub fn pinned(&self) -> Vec<CacheKey> {
        self.map.read().keys().copied().collect()
    }
}

impl ModuleCache for PinnedCache {
    fn name(&self) -> &str {
        "pinned"
    }

    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        let found = self.map.read().get(key).map(|e| e.module.clone());
        self.counters.record_lookup(found.is_some());
        Ok(found)
    }

    /// A no-op: only [`PinnedCache::pin`] adds modules.
    fn save(&self, _key: &CacheKey, _module: &Module) -> Result<(), CacheError> {
        Ok(())
    }

    /// Same as [`PinnedCache::unpin`].
    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.unpin(key))
    }

    fn stats(&self) -> Vec<LayerStats> {
        let map = self.map.read();
        let bytes = map.values().map(|e| e.bytes).sum();
        vec![self.counters.snapshot(self.name(), map.len() as u64, bytes)]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use wasmtime::Engine;

    fn module(engine: &Engine, n: i32) -> (CacheKey, Module) {
        let wat = format!(r#"(module (func (export "f") (result i32) i32.const {n}))"#);
        (
            CacheKey::new(engine, wat.as_bytes()),
            Module::new(engine, &wat).unwrap(),
        )
    }

    #[test]
    fn pin_unpin_and_stats() {
        let engine = Engine::default();
        let (k1, m1) = module(&engine, 1);
        let (k2, m2) = module(&engine, 2);
        let cache = PinnedCache::new();
        cache.save(&k1, &m1).unwrap();
        assert!(!cache.is_pinned(&k1));
        cache.pin(k1, m1.clone());
        cache.pin(k2, m2);
        let mut keys = cache.pinned();
        keys.sort();
        let mut want = vec![k1, k2];
        want.sort();
        assert_eq!(keys, want);
        assert!(cache.load(&k1).unwrap().is_some());
        assert!(cache.remove(&k2).unwrap());
        assert!(!cache.unpin(&k2));
        assert!(cache.load(&k2).unwrap().is_none());
        let s = &cache.stats()[0];
        assert_eq!((s.hits, s.misses, s.inserts, s.entries), (1, 1, 2, 1));
        assert_eq!(s.bytes, module_size(&m1));
        assert_eq!(s.evictions, 0);
    }

    #[test]
    fn concurrent_readers_and_pinners() {
        let engine = Engine::default();
        let entries: Vec<_> = (0..8).map(|i| module(&engine, i)).collect();
        let cache = Arc::new(PinnedCache::new());
        let entries = &entries;
        std::thread::scope(|s| {
            for (i, (key, m)) in entries.iter().enumerate() {
                let cache = Arc::clone(&cache);
                s.spawn(move || {
                    cache.pin(*key, m.clone());
                    for _ in 0..200 {
                        assert!(cache.load(key).unwrap().is_some());
                        if i % 2 == 0 {
                            let (other, _) = &entries[(i + 1) % entries.len()];
                            let _ = cache.load(other).unwrap();
                        }
                    }
                });
            }
        });
        assert_eq!(cache.pinned().len(), 8);
        let s = &cache.stats()[0];
        assert_eq!(s.hits + s.misses, 8 * 200 + 4 * 200);
    }
}
