//! An in-memory module cache layer bounded by bytes of compiled artifact.
//!
//! [`LruCache`] is a [moka](https://docs.rs/moka) sync cache with the least-recently-used
//! eviction policy, in which every entry weighs [`module_size`] (its compiled code image), so
//! the capacity is a number of bytes, not of modules: many small modules or one large one.
//! Evictions made to respect the capacity are counted; replacements and explicit removals are
//! not. A module larger than the whole capacity is not admitted (counted as `rejected`).
//!
//! [`ThreadLocalCache`] keeps modules in a map of each thread instead, bounded by entries per
//! thread (measured against the pinned layer in `tests/benches/cache.rs`, `thread_local/*`).
//!
//! # Example
//!
//! ```
//! use cache_core::{CacheKey, ModuleCache};
//! use cache_lru::LruCache;
//! use wasmtime::{Engine, Module};
//!
//! # fn main() -> anyhow::Result<()> {
//! let engine = Engine::default();
//! let wat = r#"(module (func (export "f") (result i32) i32.const 1))"#;
//! let key = CacheKey::new(&engine, wat.as_bytes());
//!
//! let lru = LruCache::new(64 << 20); // 64 MiB of compiled code
//! assert!(lru.load(&key)?.is_none());
//! lru.save(&key, &Module::new(&engine, wat)?)?;
//! assert!(lru.load(&key)?.is_some());
//! let stats = &lru.stats()[0];
//! assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod local;

use std::sync::Arc;

pub use cache_core::CacheError;
use cache_core::{CacheKey, LayerStats, ModuleCache, StatCounters, module_size};
pub use local::ThreadLocalCache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use wasmtime::Module;

/// The default capacity: 2 GiB of compiled code.
pub const DEFAULT_CAPACITY_BYTES: u64 = 2 << 30;

/// The weight of a module in the cache. moka weighs entries with a `u32`; a module of 4 GiB or
/// more weighs `u32::MAX` (it can only be admitted into a cache larger than 4 GiB anyway).
fn weight(module: &Module) -> u32 {
    u32::try_from(module_size(module)).unwrap_or(u32::MAX)
}

/// A byte-bounded LRU cache of compiled modules. See the crate docs.
pub struct LruCache {
    cache: moka::sync::Cache<CacheKey, Module>,
    capacity: u64,
    counters: Arc<StatCounters>,
}

impl std::fmt::Debug for LruCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LruCache")
            .field("capacity_bytes", &self.capacity)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Default for LruCache {
    /// An LRU cache of [`DEFAULT_CAPACITY_BYTES`] (2 GiB).
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY_BYTES)
    }
}

impl LruCache {
    /// An empty cache holding at most `capacity_bytes` of compiled code.
    pub fn new(capacity_bytes: u64) -> Self {
        let counters = Arc::new(StatCounters::default());
        let listener_counters = Arc::clone(&counters);
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_key: &CacheKey, module: &Module| weight(module))
            .eviction_listener(move |_key, _module, cause| {
                if cause == RemovalCause::Size {
                    listener_counters.evictions.incr();
                }
            })
            .build();
        LruCache {
            cache,
            capacity: capacity_bytes,
            counters,
        }
    }

    /// The capacity in bytes of compiled code.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
}

impl ModuleCache for LruCache {
    fn name(&self) -> &str {
        "lru"
    }

    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        let found = self.cache.get(key);
        self.counters.record_lookup(found.is_some());
        Ok(found)
    }

    /// Inserts (or replaces) `key`. A module larger than the capacity is not admitted and
    /// counted as `rejected`; this is still `Ok(())`.
    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        if module_size(module) > self.capacity {
            self.counters.rejected.incr();
            return Ok(());
        }
        self.cache.insert(*key, module.clone());
        self.counters.inserts.incr();
        // Apply evictions now, so that memory and stats follow the capacity right after a save
        // (moka otherwise batches them). A save follows a compile or a disk load: this is cheap
        // next to either.
        self.cache.run_pending_tasks();
        Ok(())
    }

    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.cache.remove(key).is_some())
    }

    fn stats(&self) -> Vec<LayerStats> {
        self.cache.run_pending_tasks();
        vec![self.counters.snapshot(
            self.name(),
            self.cache.entry_count(),
            self.cache.weighted_size(),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Engine;

    /// A module whose code size grows with `funcs`.
    fn module(engine: &Engine, tag: u32, funcs: u32) -> (CacheKey, Module) {
        let mut wat = format!("(module (global i32 (i32.const {tag}))");
        for i in 0..funcs {
            wat.push_str(&format!(
                "(func (export \"f{i}\") (param i32) (result i32) local.get 0 i32.const {i} i32.add i32.const 3 i32.mul)"
            ));
        }
        wat.push(')');
        (
            CacheKey::new(engine, wat.as_bytes()),
            Module::new(engine, &wat).unwrap(),
        )
    }

    #[test]
    fn evicts_by_bytes_not_count() {
        let engine = Engine::default();
        let small: Vec<_> = (0..20).map(|t| module(&engine, t, 1)).collect();
        let (big_key, big) = module(&engine, 1000, 400);
        let small_size = module_size(&small[0].1);
        let big_size = module_size(&big);
        assert!(big_size > 8 * small_size, "{big_size} vs {small_size}");

        // Room for all the small ones, not for them and the big one.
        let capacity = small_size * 20 + big_size / 2;
        let lru = LruCache::new(capacity);
        for (k, m) in &small {
            lru.save(k, m).unwrap();
        }
        let s = &lru.stats()[0];
        assert_eq!((s.entries, s.evictions), (20, 0));

        lru.save(&big_key, &big).unwrap();
        let s = &lru.stats()[0];
        assert!(s.bytes <= capacity, "{} > {capacity}", s.bytes);
        assert!(
            s.evictions > 1,
            "one big module must evict several small ones"
        );
        assert_eq!(s.evictions + s.entries, 21);
        // LRU order: the big one, inserted last, is still there.
        assert!(lru.load(&big_key).unwrap().is_some());
    }

    #[test]
    fn too_large_is_rejected_and_replacement_is_not_an_eviction() {
        let engine = Engine::default();
        let (key, m) = module(&engine, 1, 4);
        let lru = LruCache::new(module_size(&m) - 1);
        lru.save(&key, &m).unwrap();
        let s = &lru.stats()[0];
        assert_eq!((s.entries, s.rejected, s.inserts), (0, 1, 0));

        let lru = LruCache::new(1 << 20);
        lru.save(&key, &m).unwrap();
        lru.save(&key, &m).unwrap();
        assert!(lru.remove(&key).unwrap());
        assert!(!lru.remove(&key).unwrap());
        let s = &lru.stats()[0];
        assert_eq!((s.entries, s.bytes, s.evictions, s.inserts), (0, 0, 0, 2));
    }

    #[test]
    fn default_capacity() {
        assert_eq!(LruCache::default().capacity_bytes(), 2 << 30);
    }

    #[test]
    fn contention_from_many_threads() {
        let engine = Engine::default();
        let modules: Vec<_> = (0..16).map(|t| module(&engine, t, 2)).collect();
        let size = module_size(&modules[0].1);
        // Room for about half of them: constant eviction while eight threads hammer it.
        let lru = LruCache::new(size * 8);
        std::thread::scope(|s| {
            for t in 0..8usize {
                let lru = &lru;
                let modules = &modules;
                s.spawn(move || {
                    for i in 0..500usize {
                        let (key, m) = &modules[(t * 7 + i * 3) % modules.len()];
                        match lru.load(key).unwrap() {
                            // A hit must be the module saved under that key.
                            Some(found) => assert!(std::ptr::eq(
                                found.image_range().start,
                                m.image_range().start
                            )),
                            None => lru.save(key, m).unwrap(),
                        }
                    }
                });
            }
        });
        let s = &lru.stats()[0];
        assert_eq!(s.hits + s.misses, 8 * 500);
        assert!(s.bytes <= size * 8 + size, "{} bytes", s.bytes);
        assert!(s.entries <= 9);
        assert!(s.evictions > 0);
        assert_eq!(s.inserts, s.misses);
    }
}
