//! The vocabulary shared by every module cache layer of Strata: the [`ModuleCache`] trait over
//! compiled [`wasmtime::Module`]s, the content-addressed [`CacheKey`] (module id, form, ABI,
//! compiler tier and engine fingerprint), per-layer [`LayerStats`], the typed [`CacheError`], and the [`FallbackCache`]
//! combinator that stacks layers (pinned -> LRU -> file system) into one cache.
//!
//! Architecture invariant: this crate knows no file system. Layers that touch the disk live in
//! their own crates (`cache-fs`).
//!
//! A cache is an optimisation: a [`FallbackCache`] never returns an error. A layer that fails is
//! treated as a miss for that layer (counted in its `errors`), and the caller recompiles.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use cache_core::{CacheError, CacheKey, LayerStats, ModuleCache, ModuleCacheExt, StatCounters};
//! use parking_lot::Mutex;
//! use std::collections::HashMap;
//! use wasmtime::{Engine, Module};
//!
//! /// A toy layer: a map behind a mutex.
//! #[derive(Default)]
//! struct MapCache {
//!     name: String,
//!     map: Mutex<HashMap<CacheKey, Module>>,
//!     counters: StatCounters,
//! }
//!
//! impl ModuleCache for MapCache {
//!     fn name(&self) -> &str {
//!         &self.name
//!     }
//!     fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
//!         let found = self.map.lock().get(key).cloned();
//!         self.counters.record_lookup(found.is_some());
//!         Ok(found)
//!     }
//!     fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
//!         self.map.lock().insert(*key, module.clone());
//!         self.counters.inserts.incr();
//!         Ok(())
//!     }
//!     fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
//!         Ok(self.map.lock().remove(key).is_some())
//!     }
//!     fn stats(&self) -> Vec<LayerStats> {
//!         let map = self.map.lock();
//!         vec![self.counters.snapshot(&self.name, map.len() as u64, 0)]
//!     }
//! }
//!
//! # fn main() -> anyhow::Result<()> {
//! let engine = Engine::default();
//! // With wasmtime's `wat` feature, `Module::new` also accepts the text format.
//! let wasm = r#"(module (func (export "f") (result i32) i32.const 7))"#;
//! let key = CacheKey::new(&engine, wasm.as_bytes());
//!
//! let top = MapCache { name: "top".into(), ..Default::default() };
//! let bottom = Arc::new(MapCache { name: "bottom".into(), ..Default::default() });
//! bottom.save(&key, &Module::new(&engine, wasm)?)?;
//!
//! let chain = top.with_fallback(Arc::clone(&bottom));
//! assert!(chain.load(&key)?.is_some()); // found below, promoted into `top`
//! let stats = chain.stats();
//! assert_eq!((stats[0].name.as_str(), stats[0].misses, stats[0].inserts), ("top", 1, 1));
//! assert_eq!((stats[1].name.as_str(), stats[1].hits), ("bottom", 1));
//! assert!(chain.load(&key)?.is_some());
//! assert_eq!(chain.stats()[0].hits, 1); // now served by the top layer
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod error;
mod fallback;
mod key;
mod lease;
mod stats;

use std::sync::Arc;

pub use error::{CacheError, ConfigError, HexError};
pub use fallback::{FallbackCache, ModuleCacheExt};
pub use key::{Abi, CacheKey, EngineFingerprint, Form, Tier, WASMTIME_VERSION, WasmHash};
pub use lease::{CompileLease, Lease, LeaseAttempt};
pub use stats::{Counter, LayerStats, StatCounters};

use wasmtime::Module;

/// One layer of a module cache (or a chain of layers), keyed by [`CacheKey`].
///
/// Implementations must be safe to share between threads. A layer reports its own
/// [`LayerStats`]; a chain reports the stats of all its layers, top first.
pub trait ModuleCache: Send + Sync {
    /// A short human-readable name of this layer, used in stats (`"pinned"`, `"lru"`, `"fs"`).
    fn name(&self) -> &str;

    /// Looks a module up. `Ok(None)` is a miss. A layer returns `Err` only for failures the
    /// caller may want to hear about (I/O errors, a key of another engine); a bad entry is a
    /// miss, not an error.
    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError>;

    /// Looks up the first of `keys` this layer holds, in order (e.g. one module by compiler
    /// tier, best first), and returns it with its key. A chain asks each layer for all the keys
    /// before asking the next layer, so a lower tier in a fast layer wins over a better tier in a
    /// slow one. `Err` only if no key hit and some lookup failed.
    fn load_first(&self, keys: &[CacheKey]) -> Result<Option<(CacheKey, Module)>, CacheError> {
        let mut failed = None;
        for key in keys {
            match self.load(key) {
                Ok(Some(module)) => return Ok(Some((*key, module))),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// Stores a module under `key`. Layers may decline to store (e.g. a pinned layer only
    /// stores through its own `pin`), which is still `Ok(())`.
    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError>;

    /// Removes `key`; returns whether an entry was removed.
    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError>;

    /// Statistics of this layer (one entry) or of every layer of a chain (top first).
    fn stats(&self) -> Vec<LayerStats>;
}

impl<T: ModuleCache + ?Sized> ModuleCache for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        (**self).load(key)
    }
    fn load_first(&self, keys: &[CacheKey]) -> Result<Option<(CacheKey, Module)>, CacheError> {
        (**self).load_first(keys)
    }
    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        (**self).save(key, module)
    }
    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        (**self).remove(key)
    }
    fn stats(&self) -> Vec<LayerStats> {
        (**self).stats()
    }
}

impl<T: ModuleCache + ?Sized> ModuleCache for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        (**self).load(key)
    }
    fn load_first(&self, keys: &[CacheKey]) -> Result<Option<(CacheKey, Module)>, CacheError> {
        (**self).load_first(keys)
    }
    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        (**self).save(key, module)
    }
    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        (**self).remove(key)
    }
    fn stats(&self) -> Vec<LayerStats> {
        (**self).stats()
    }
}

/// The size in bytes of a module's compiled artifact (its code image in memory).
///
/// Used as the weight of an entry in the LRU layer and for the `bytes` stats. It is close to,
/// but not exactly, the length of [`Module::serialize`]'s output.
pub fn module_size(module: &Module) -> u64 {
    let range = module.image_range();
    (range.end as usize).saturating_sub(range.start as usize) as u64
}
