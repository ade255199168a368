//! [`FallbackCache`]: two caches stacked into one, with promotion of lower hits.

use wasmtime::Module;

use crate::{CacheError, CacheKey, Counter, LayerStats, ModuleCache};

/// Errors a chain absorbed on behalf of one of its two sides.
#[derive(Debug, Default)]
struct SideErrors {
    /// Failed loads (also counted as misses).
    load: Counter,
    /// Failed saves and removes.
    other: Counter,
}

impl SideErrors {
    fn add_to(&self, stats: &mut [LayerStats]) {
        // A side that can fail is a single layer (a chain never fails), so its errors belong
        // to its first (only) stats entry.
        if let Some(first) = stats.first_mut() {
            let load = self.load.get();
            first.misses += load;
            first.errors += load + self.other.get();
        }
    }
}

/// A `primary` cache in front of a `fallback` cache, built with
/// [`ModuleCacheExt::with_fallback`]. Chains nest to any depth:
/// `pinned.with_fallback(lru.with_fallback(fs))`.
///
/// Contract (a cache is an optimisation, so no method of a chain ever returns `Err`):
/// - `load` tries the primary, then the fallback. A fallback hit is promoted (saved) into the
///   primary. A layer that fails is treated as a miss of that layer and counted in its
///   `misses` and `errors`.
/// - `save` writes through to both sides and returns `Ok(())`; a side that fails is counted
///   in its `errors`.
/// - `remove` removes from both sides and returns `Ok(true)` if either side removed an entry;
///   failures are counted.
/// - `stats` is the primary's stats followed by the fallback's: top layer first.
#[derive(Debug)]
pub struct FallbackCache<P, F> {
    name: String,
    primary: P,
    fallback: F,
    primary_errors: SideErrors,
    fallback_errors: SideErrors,
}

impl<P: ModuleCache, F: ModuleCache> FallbackCache<P, F> {
    /// Stacks `primary` in front of `fallback`.
    pub fn new(primary: P, fallback: F) -> Self {
        let name = format!("{}>{}", primary.name(), fallback.name());
        FallbackCache {
            name,
            primary,
            fallback,
            primary_errors: SideErrors::default(),
            fallback_errors: SideErrors::default(),
        }
    }

    /// The front layer.
    pub fn primary(&self) -> &P {
        &self.primary
    }

    /// The layer (or chain) behind it.
    pub fn fallback(&self) -> &F {
        &self.fallback
    }

    /// Saves `module` in the front layer only, a failure counted in its `errors` as
    /// [`ModuleCache::save`] counts it (for a caller that fills the layers at different times,
    /// e.g. the memory layer at once and the disk behind it from a background thread).
    pub fn save_primary(&self, key: &CacheKey, module: &Module) {
        if self.primary.save(key, module).is_err() {
            self.primary_errors.other.incr();
        }
    }

    /// Saves `module` in the layer behind only, a failure counted in its `errors`.
    pub fn save_fallback(&self, key: &CacheKey, module: &Module) {
        if self.fallback.save(key, module).is_err() {
            self.fallback_errors.other.incr();
        }
    }
}

impl<P: ModuleCache, F: ModuleCache> ModuleCache for FallbackCache<P, F> {
    fn name(&self) -> &str {
        &self.name
    }

    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        match self.primary.load(key) {
            Ok(Some(module)) => return Ok(Some(module)),
            Ok(None) => {}
            Err(_) => self.primary_errors.load.incr(),
        }
        match self.fallback.load(key) {
            Ok(Some(module)) => {
                if self.primary.save(key, &module).is_err() {
                    self.primary_errors.other.incr();
                }
                Ok(Some(module))
            }
            Ok(None) => Ok(None),
            Err(_) => {
                self.fallback_errors.load.incr();
                Ok(None)
            }
        }
    }

    fn load_first(&self, keys: &[CacheKey]) -> Result<Option<(CacheKey, Module)>, CacheError> {
        match self.primary.load_first(keys) {
            Ok(Some(hit)) => return Ok(Some(hit)),
            Ok(None) => {}
            Err(_) => self.primary_errors.load.incr(),
        }
        match self.fallback.load_first(keys) {
            Ok(Some((key, module))) => {
                if self.primary.save(&key, &module).is_err() {
                    self.primary_errors.other.incr();
                }
                Ok(Some((key, module)))
            }
            Ok(None) => Ok(None),
            Err(_) => {
                self.fallback_errors.load.incr();
                Ok(None)
            }
        }
    }

    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        self.save_primary(key, module);
        self.save_fallback(key, module);
        Ok(())
    }

    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let primary = self.primary.remove(key).unwrap_or_else(|_| {
            self.primary_errors.other.incr();
            false
        });
        let fallback = self.fallback.remove(key).unwrap_or_else(|_| {
            self.fallback_errors.other.incr();
            false
        });
        Ok(primary || fallback)
    }

    fn stats(&self) -> Vec<LayerStats> {
        let mut primary = self.primary.stats();
        self.primary_errors.add_to(&mut primary);
        let mut fallback = self.fallback.stats();
        self.fallback_errors.add_to(&mut fallback);
        primary.extend(fallback);
        primary
    }
}

/// Combinators for every [`ModuleCache`].
pub trait ModuleCacheExt: ModuleCache + Sized {
    /// Puts `self` in front of `fallback`; see [`FallbackCache`].
    fn with_fallback<F: ModuleCache>(self, fallback: F) -> FallbackCache<Self, F> {
        FallbackCache::new(self, fallback)
    }
}

impl<T: ModuleCache + Sized> ModuleCacheExt for T {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use parking_lot::Mutex;
    use wasmtime::Engine;

    use super::*;
    use crate::StatCounters;

    /// A map layer that can be told to fail.
    struct MapLayer {
        name: &'static str,
        map: Mutex<HashMap<CacheKey, Module>>,
        counters: StatCounters,
        fail: bool,
        // A pinned-like layer: save stores nothing.
        read_only: bool,
    }

    impl MapLayer {
        fn new(name: &'static str) -> Self {
            MapLayer {
                name,
                map: Mutex::default(),
                counters: StatCounters::default(),
                fail: false,
                read_only: false,
            }
        }
        fn failing(name: &'static str) -> Self {
            MapLayer {
                fail: true,
                ..Self::new(name)
            }
        }
        fn err(&self) -> CacheError {
            // Any error will do: a chain must absorb every kind.
            CacheError::Incompatible {
                engine: crate::EngineFingerprint::from_bytes([0; 32]),
            }
        }
    }

    impl ModuleCache for MapLayer {
        fn name(&self) -> &str {
            self.name
        }
        fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
            if self.fail {
                return Err(self.err());
            }
            let found = self.map.lock().get(key).cloned();
            self.counters.record_lookup(found.is_some());
            Ok(found)
        }
        fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
            if self.fail {
                return Err(self.err());
            }
            if !self.read_only {
                self.map.lock().insert(*key, module.clone());
                self.counters.inserts.incr();
            }
            Ok(())
        }
        fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
            if self.fail {
                return Err(self.err());
            }
            Ok(self.map.lock().remove(key).is_some())
        }
        fn stats(&self) -> Vec<LayerStats> {
            vec![
                self.counters
                    .snapshot(self.name, self.map.lock().len() as u64, 0),
            ]
        }
    }

    fn module(engine: &Engine) -> (CacheKey, Module) {
        let wat = r#"(module (func (export "f") (result i32) i32.const 42))"#;
        (
            CacheKey::new(engine, wat.as_bytes()),
            Module::new(engine, wat).unwrap(),
        )
    }

    #[test]
    fn three_layers_promote_and_concatenate_stats() {
        let engine = Engine::default();
        let (key, m) = module(&engine);
        let bottom = MapLayer::new("c");
        bottom.save(&key, &m).unwrap();
        let top = MapLayer {
            read_only: true,
            ..MapLayer::new("a")
        };
        let chain = top.with_fallback(MapLayer::new("b").with_fallback(bottom));
        assert_eq!(chain.name(), "a>b>c");

        assert!(chain.load(&key).unwrap().is_some());
        let s = chain.stats();
        let names: Vec<_> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!((s[0].misses, s[0].entries), (1, 0)); // read-only: promotion stores nothing
        assert_eq!((s[1].misses, s[1].inserts, s[1].entries), (1, 1, 1));
        assert_eq!(s[2].hits, 1);

        assert!(chain.load(&key).unwrap().is_some());
        let s = chain.stats();
        assert_eq!((s[1].hits, s[2].hits), (1, 1)); // served by "b" this time
    }

    #[test]
    fn load_first_asks_each_layer_for_every_key_before_the_next_layer() {
        let engine = Engine::default();
        let (best, m) = module(&engine);
        let second = CacheKey::from_parts(
            best.module(),
            best.form(),
            best.abi(),
            crate::Tier::Winch,
            best.engine(),
        );
        let top = MapLayer::new("top");
        let bottom = MapLayer::new("bottom");
        top.save(&second, &m).unwrap();
        bottom.save(&best, &m).unwrap();
        let chain = top.with_fallback(bottom);
        // The second key in the top layer wins over the first key in the bottom one.
        let (key, _) = chain.load_first(&[best, second]).unwrap().unwrap();
        assert_eq!(key, second);
        // Only the bottom has the first key: found there and promoted into the top.
        let chain_bottom_only = MapLayer::new("a").with_fallback(MapLayer::new("b"));
        chain_bottom_only.fallback().save(&best, &m).unwrap();
        let (key, _) = chain_bottom_only
            .load_first(&[best, second])
            .unwrap()
            .unwrap();
        assert_eq!(key, best);
        assert!(chain_bottom_only.primary().load(&best).unwrap().is_some());
        assert!(chain_bottom_only.load_first(&[second]).unwrap().is_none());
    }

    #[test]
    fn failing_layers_are_misses_and_counted() {
        let engine = Engine::default();
        let (key, m) = module(&engine);
        let chain = MapLayer::failing("top").with_fallback(MapLayer::new("bottom"));
        // Save: the failing top is counted, the bottom still gets the module.
        chain.save(&key, &m).unwrap();
        // Load: the top fails (miss + error), the bottom hits, promotion fails (error).
        assert!(chain.load(&key).unwrap().is_some());
        let s = chain.stats();
        assert_eq!((s[0].misses, s[0].errors), (1, 3));
        assert_eq!((s[1].hits, s[1].entries), (1, 1));
        // Remove: the bottom removed it; the top's failure is counted.
        assert!(chain.remove(&key).unwrap());
        assert!(!chain.remove(&key).unwrap());
        assert_eq!(chain.stats()[0].errors, 5);
    }

    #[test]
    fn failing_bottom_is_a_miss_never_an_error() {
        let engine = Engine::default();
        let (key, _) = module(&engine);
        let chain = MapLayer::new("top").with_fallback(MapLayer::failing("bottom"));
        assert!(chain.load(&key).unwrap().is_none());
        let s = chain.stats();
        assert_eq!((s[0].misses, s[0].errors), (1, 0));
        assert_eq!((s[1].misses, s[1].errors), (1, 1));
    }

    #[test]
    fn arc_and_box_are_caches() {
        use std::sync::Arc;
        let engine = Engine::default();
        let (key, m) = module(&engine);
        let shared: Arc<dyn ModuleCache> = Arc::new(MapLayer::new("shared"));
        let boxed: Box<dyn ModuleCache> = Box::new(MapLayer::new("boxed"));
        let chain = boxed.with_fallback(Arc::clone(&shared));
        chain.save(&key, &m).unwrap();
        assert!(shared.load(&key).unwrap().is_some());
        assert_eq!(chain.stats().len(), 2);
    }

    #[test]
    fn module_size_is_the_image() {
        let engine = Engine::default();
        let (_, m) = module(&engine);
        let size = crate::module_size(&m);
        assert!(size > 0);
        let serialized = m.serialize().unwrap().len() as u64;
        // The image is the artifact wasmtime keeps in memory: about the serialized size.
        assert!(
            size >= serialized / 2 && size <= serialized * 2,
            "{size} vs {serialized}"
        );
    }
}
