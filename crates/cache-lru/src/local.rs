//! [`ThreadLocalCache`]: a per-thread map of modules in front of shared layers (the
//! `ThreadLocalCache` of wasmer's design).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use cache_core::{CacheError, CacheKey, LayerStats, ModuleCache, StatCounters, module_size};
use wasmtime::Module;

/// One thread's map of one [`ThreadLocalCache`].
struct Local {
    /// Alive while the cache is: a thread's maps of dropped caches are purged at its next save.
    owner: Weak<()>,
    /// The cache's generation when the map was filled: a `remove` (on any thread) empties it.
    generation: u64,
    map: HashMap<CacheKey, Module>,
}

thread_local! {
    /// By cache id: a thread uses few caches, so a short vector beats hashing the id.
    static LOCAL: RefCell<Vec<(u64, Local)>> = const { RefCell::new(Vec::new()) };
}

fn find(local: &[(u64, Local)], id: u64) -> Option<&Local> {
    local.iter().find(|(i, _)| *i == id).map(|(_, l)| l)
}

/// A layer that keeps modules in a map of the calling thread: a hit takes no lock shared with
/// other threads (the counters are shared atomics, as in every layer).
///
/// - `load` looks in this thread's map only; `save` inserts there (each thread fills its own,
///   typically from the shared layer below it in a chain).
/// - Bounded per thread: at most `max_entries` modules; a full map starts over.
/// - `remove` empties every thread's map (lazily, at its next use), so nothing removed is ever
///   returned again; it reports whether this thread held the key.
/// - `stats` reports the calling thread's entries and bytes, and the counters of all threads.
/// - A thread's maps of a dropped cache are freed at that thread's next save into any
///   `ThreadLocalCache`, or when the thread ends.
#[derive(Debug)]
pub struct ThreadLocalCache {
    id: u64,
    alive: Arc<()>,
    max_entries: usize,
    generation: AtomicU64,
    counters: StatCounters,
}

impl ThreadLocalCache {
    /// An empty cache keeping at most `max_entries` modules per thread.
    pub fn new(max_entries: usize) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        ThreadLocalCache {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            max_entries,
            generation: AtomicU64::new(0),
            counters: StatCounters::default(),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl ModuleCache for ThreadLocalCache {
    fn name(&self) -> &str {
        "thread-local"
    }

    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        let generation = self.generation();
        let found = LOCAL.with_borrow(|local| {
            find(local, self.id)
                .filter(|l| l.generation == generation)
                .and_then(|l| l.map.get(key).cloned())
        });
        self.counters.record_lookup(found.is_some());
        Ok(found)
    }

    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        if self.max_entries == 0 {
            self.counters.rejected.incr();
            return Ok(());
        }
        let generation = self.generation();
        LOCAL.with_borrow_mut(|local| {
            local.retain(|(_, l)| l.owner.strong_count() > 0);
            let i = match local.iter().position(|(i, _)| *i == self.id) {
                Some(i) => i,
                None => {
                    local.push((
                        self.id,
                        Local {
                            owner: Arc::downgrade(&self.alive),
                            generation,
                            map: HashMap::new(),
                        },
                    ));
                    local.len() - 1
                }
            };
            let l = &mut local[i].1;
            if l.generation != generation || l.map.len() >= self.max_entries {
                if l.map.len() >= self.max_entries {
                    self.counters.evictions.add(l.map.len() as u64);
                }
                l.map.clear();
                l.generation = generation;
            }
            l.map.insert(*key, module.clone());
        });
        self.counters.inserts.incr();
        Ok(())
    }

    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let generation = self.generation();
        let here = LOCAL.with_borrow(|local| {
            find(local, self.id)
                .is_some_and(|l| l.generation == generation && l.map.contains_key(key))
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(here)
    }

    fn stats(&self) -> Vec<LayerStats> {
        let generation = self.generation();
        let (entries, bytes) = LOCAL.with_borrow(|local| {
            find(local, self.id)
                .filter(|l| l.generation == generation)
                .map(|l| {
                    let bytes = l.map.values().map(module_size).sum();
                    (l.map.len() as u64, bytes)
                })
                .unwrap_or((0, 0))
        });
        vec![self.counters.snapshot(self.name(), entries, bytes)]
    }
}

#[cfg(test)]
mod tests {
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
    fn each_thread_has_its_own_bounded_map_and_remove_empties_them_all() {
        let engine = Engine::default();
        let modules: Vec<_> = (0..5).map(|n| module(&engine, n)).collect();
        let cache = ThreadLocalCache::new(3);
        let (k0, m0) = &modules[0];
        cache.save(k0, m0).unwrap();
        assert!(cache.load(k0).unwrap().is_some());
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(cache.load(k0).unwrap().is_none(), "another thread's map");
                cache.save(k0, m0).unwrap();
                assert!(cache.load(k0).unwrap().is_some());
            });
        });
        for (k, m) in &modules {
            cache.save(k, m).unwrap();
            assert!(cache.stats()[0].entries <= 3);
        }
        let (k4, _) = &modules[4];
        assert!(cache.load(k4).unwrap().is_some());
        // Removing on another thread empties this thread's map too.
        std::thread::scope(|s| {
            s.spawn(|| assert!(!cache.remove(k4).unwrap(), "not held by that thread"));
        });
        assert!(cache.load(k4).unwrap().is_none());
        assert_eq!(cache.stats()[0].entries, 0);
        // A dropped cache's map is freed at the next save into another one.
        drop(cache);
        let other = ThreadLocalCache::new(1);
        other.save(k0, m0).unwrap();
        assert_eq!(LOCAL.with_borrow(|l| l.len()), 1);
    }
}
