//! Loads runtime modules through pinned -> LRU -> file cache -> remote (optional) -> compile,
//! one compile per module however many threads ask at once, and, with a remote layer, however
//! many nodes of the fleet ask at once (a [`CompileLease`]).
//!
//! The cache key of a module is computed from its id alone (module id, runtime form of
//! [`rewrite::REWRITE_VERSION`], the Strata ABI, Cranelift, the runtime engine's fingerprint),
//! so a hit in any layer reads no bytecode: the stored bytecode is read, checked against its
//! id, rewritten and compiled only on a miss of every layer. What the host needs of the module
//! (its memory and mutable globals) is read from the compiled module's exports.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_core::{
    Abi, CacheKey, CompileLease, EngineFingerprint, FallbackCache, LeaseAttempt, ModuleCache,
    ModuleCacheExt, Tier, WasmHash,
};
use cache_fs::FsCache;
use cache_lru::LruCache;
use cache_pinned::PinnedCache;
use cache_redis::RedisCache;
use parking_lot::{Mutex, RwLock};
use store_index::ModuleId;
use wasmtime::{Engine, InstancePre, Linker, Module};

use crate::VmError;
use crate::host::HostState;
use crate::rewrite::{self, Form, Shape};

/// A loaded module, ready to instantiate.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) key: CacheKey,
    /// Its memory and mutable globals (no imports: it was checked at deploy).
    pub(crate) shape: Arc<Shape>,
    pub(crate) module: Module,
    pub(crate) pre: InstancePre<HostState>,
}

/// Where the runtime form of a module comes from if no cache layer has it.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    /// The stored bytecode, read (and checked against the id) only on a miss.
    Stored(&'a dyn Fn() -> Result<Vec<u8>, VmError>),
    /// Bytecode whose id was just computed from it and whose shape was just checked (deploy,
    /// precompile): rewritten only on a miss.
    Checked { wasm: &'a [u8], shape: &'a Shape },
}

/// pinned -> LRU -> below, where below is the file cache, or the file cache then the remote
/// layer (a remote hit is promoted into the file cache, then into the LRU).
type Chain = FallbackCache<Arc<PinnedCache>, FallbackCache<Arc<LruCache>, Box<dyn ModuleCache>>>;

/// The remote layer and how long a load waits for another node's compile.
pub(crate) struct Remote {
    pub(crate) cache: Arc<RedisCache>,
    pub(crate) max_lease_wait: Duration,
}

/// The longest pause between two looks for another node's artifact.
const MAX_POLL: Duration = Duration::from_millis(200);

pub(crate) struct Loader {
    engine: Engine,
    fingerprint: EngineFingerprint,
    linker: Linker<HostState>,
    pinned: Arc<PinnedCache>,
    lru: Arc<LruCache>,
    fs: Arc<FsCache>,
    remote: Option<Remote>,
    chain: Chain,
    /// One lock per module being compiled, holding the module once compiled: the single flight.
    inflight: Mutex<HashMap<CacheKey, Arc<Mutex<Option<Module>>>>>,
    /// The shape (memory, mutable globals) of each runtime form loaded so far, read once from
    /// its compiled module's exports: a key names one runtime form, so the shape never changes.
    shapes: RwLock<HashMap<CacheKey, Arc<Shape>>>,
    /// Imports resolved once per module (`InstancePre`), reused while the chain returns the same
    /// compiled module. An entry keeps its module alive, so they are bounded: at most
    /// [`PRE_ENTRIES`] and [`PRE_BYTES`] of compiled code that no layer may hold any more.
    pres: Mutex<Pres>,
    pub(crate) compiles: AtomicU64,
    /// Loads that waited for another node holding the compile lease.
    pub(crate) lease_waits: AtomicU64,
    /// Of those, the loads that got the other node's artifact.
    pub(crate) lease_wait_hits: AtomicU64,
}

/// The most resolved modules kept.
const PRE_ENTRIES: usize = 64;
/// The most bytes of compiled code (`cache_core::module_size`) they keep alive.
const PRE_BYTES: u64 = 64 << 20;

#[derive(Default)]
struct Pres {
    map: HashMap<CacheKey, (InstancePre<HostState>, u64)>,
    bytes: u64,
}

impl Pres {
    fn get(&self, key: &CacheKey, module: &Module) -> Option<InstancePre<HostState>> {
        let (pre, _) = self.map.get(key)?;
        Module::same(pre.module(), module).then(|| pre.clone())
    }

    fn insert(&mut self, key: CacheKey, pre: InstancePre<HostState>) {
        let size = cache_core::module_size(pre.module());
        if size > PRE_BYTES / 4 {
            return;
        }
        if let Some((_, old)) = self.map.remove(&key) {
            self.bytes -= old;
        }
        if self.map.len() >= PRE_ENTRIES || self.bytes + size > PRE_BYTES {
            // Rare (more hot modules than the bound): start over rather than track recency.
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.map.insert(key, (pre, size));
    }
}

/// Checks that `wasm` is the bytecode of `id`.
pub(crate) fn check_bytecode(id: &ModuleId, wasm: &[u8]) -> Result<(), VmError> {
    if ModuleId::of_wasm(wasm) == *id {
        Ok(())
    } else {
        Err(VmError::CorruptBytecode(*id))
    }
}

impl Loader {
    pub(crate) fn new(
        engine: Engine,
        linker: Linker<HostState>,
        lru: LruCache,
        fs: FsCache,
        remote: Option<Remote>,
    ) -> Self {
        let fs = Arc::new(fs);
        let lru = Arc::new(lru);
        let pinned = Arc::new(PinnedCache::new());
        let below: Box<dyn ModuleCache> = match &remote {
            Some(remote) => Box::new(fs.clone().with_fallback(remote.cache.clone())),
            None => Box::new(fs.clone()),
        };
        let chain = pinned
            .clone()
            .with_fallback(lru.clone().with_fallback(below));
        Loader {
            fingerprint: EngineFingerprint::of(&engine),
            engine,
            linker,
            pinned,
            lru,
            fs,
            remote,
            chain,
            inflight: Mutex::new(HashMap::new()),
            shapes: RwLock::new(HashMap::new()),
            pres: Mutex::new(Pres::default()),
            compiles: AtomicU64::new(0),
            lease_waits: AtomicU64::new(0),
            lease_wait_hits: AtomicU64::new(0),
        }
    }

    pub(crate) fn remote(&self) -> Option<&RedisCache> {
        self.remote.as_ref().map(|r| &*r.cache)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn fs(&self) -> &FsCache {
        &self.fs
    }

    pub(crate) fn stats(&self) -> Vec<cache_core::LayerStats> {
        self.chain.stats()
    }

    /// The cache key of `id`'s runtime form: computed without reading anything.
    pub(crate) fn key(&self, id: &ModuleId) -> CacheKey {
        CacheKey::from_parts(
            WasmHash::from_bytes(*id.as_bytes()),
            cache_core::Form::Runtime {
                rewrite: rewrite::REWRITE_VERSION,
            },
            Abi::Strata,
            Tier::Cranelift,
            self.fingerprint,
        )
    }

    /// Hands `loaded` to the remote layer for upload unless it holds the key already (or
    /// cannot be asked); returns whether it was handed over (the layer may still drop it when
    /// its queue is full, counted in `uploads_dropped`).
    pub(crate) fn publish(&self, loaded: &Loaded) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        if remote.cache.contains(&loaded.key) != Some(false) {
            return false;
        }
        remote.cache.save(&loaded.key, &loaded.module).is_ok()
    }

    /// Loads the runtime form of `id` from the caches, compiling it from `source` on a miss.
    pub(crate) fn load(&self, id: &ModuleId, source: Source<'_>) -> Result<Loaded, VmError> {
        let key = self.key(id);
        let compiles_before = self.compiles.load(Ordering::Acquire);
        let module = match self.chain.load(&key).ok().flatten() {
            Some(module) => module,
            None => self.compile_once(id, &key, source, compiles_before)?,
        };
        let known = self.shapes.read().get(&key).cloned();
        let shape = match known {
            Some(shape) => shape,
            None => {
                let shape = Arc::new(rewrite::runtime_shape(&module)?);
                self.shapes.write().insert(key, shape.clone());
                shape
            }
        };
        let known = self.pres.lock().get(&key, &module);
        let pre = match known {
            Some(pre) => pre,
            None => {
                let pre = self
                    .linker
                    .instantiate_pre(&module)
                    .map_err(VmError::wasmtime)?;
                self.pres.lock().insert(key, pre.clone());
                pre
            }
        };
        Ok(Loaded {
            key,
            shape,
            module,
            pre,
        })
    }

    /// Compiles after a miss of the whole chain, once however many threads missed together.
    /// `compiles_before` is the compile count read before that miss.
    fn compile_once(
        &self,
        id: &ModuleId,
        key: &CacheKey,
        source: Source<'_>,
        compiles_before: u64,
    ) -> Result<Module, VmError> {
        let flight = self.inflight.lock().entry(*key).or_default().clone();
        let mut slot = flight.lock();
        // The thread we waited for compiled it.
        if let Some(module) = slot.as_ref() {
            return Ok(module.clone());
        }
        // A compile that finished (and left its flight) between our miss and now may have
        // been this module: look again then, and only then, so that an ordinary miss counts
        // once per layer. (Racing that compile's save can cost a second compile, never a wrong
        // module.)
        let again = if self.compiles.load(Ordering::Acquire) != compiles_before {
            self.chain.load(key).ok().flatten()
        } else {
            None
        };
        let result = match again {
            Some(module) => Ok(module),
            None => self.compile_in_fleet(id, key, source),
        };
        if let Ok(module) = &result {
            *slot = Some(module.clone());
        }
        drop(slot);
        let mut inflight = self.inflight.lock();
        if inflight.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(key);
        }
        result
    }

    /// Compiles under the fleet's lease when there is a remote layer: one node compiles and
    /// publishes, the others wait for its artifact (polling with backoff) until the lease ends,
    /// then take it themselves. A lease store that cannot be asked, or a wait past
    /// `max_lease_wait`, means compiling here: leases only save work.
    fn compile_in_fleet(
        &self,
        id: &ModuleId,
        key: &CacheKey,
        source: Source<'_>,
    ) -> Result<Module, VmError> {
        let Some(remote) = &self.remote else {
            return self.compile(id, key, source);
        };
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        let mut waited = false;
        loop {
            match remote.cache.try_acquire(key) {
                LeaseAttempt::Won(lease) => {
                    // Taken after another holder let go: its artifact may be there now.
                    if waited && let Some(module) = self.fleet_artifact(remote, key) {
                        lease.release();
                        return Ok(module);
                    }
                    let result = self.compile(id, key, source);
                    // After the upload `compile` queued: a waiting node that sees the lease
                    // gone finds the artifact.
                    lease.release();
                    return result;
                }
                LeaseAttempt::Held => {
                    if !waited {
                        waited = true;
                        self.lease_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    let left = remote.max_lease_wait.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        tracing::warn!(module = %id, "gave up waiting for the fleet's compile");
                        return self.compile(id, key, source);
                    }
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(MAX_POLL);
                    if let Some(module) = self.fleet_artifact(remote, key) {
                        self.lease_wait_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(module);
                    }
                }
                _ => return self.compile(id, key, source),
            }
        }
    }

    /// Another node's artifact from the remote layer, promoted as a chain hit would be.
    fn fleet_artifact(&self, remote: &Remote, key: &CacheKey) -> Option<Module> {
        let module = remote.cache.load(key).ok().flatten()?;
        // A layer that cannot take it costs a later load, never this one.
        let _ = self.fs.save(key, &module);
        let _ = self.lru.save(key, &module);
        Some(module)
    }

    fn compile(
        &self,
        id: &ModuleId,
        key: &CacheKey,
        source: Source<'_>,
    ) -> Result<Module, VmError> {
        let start = std::time::Instant::now();
        let runtime = match source {
            Source::Stored(read) => {
                let wasm = read()?;
                check_bytecode(id, &wasm)?;
                let shape = rewrite::shape(&wasm)?;
                rewrite::rewrite(&wasm, &shape, Form::Runtime)?
            }
            Source::Checked { wasm, shape } => rewrite::rewrite(wasm, shape, Form::Runtime)?,
        };
        let module = Module::new(&self.engine, &runtime).map_err(VmError::invalid_wasmtime)?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        tracing::info!(module = %id, ms = start.elapsed().as_millis() as u64, "compiled");
        // A cache that cannot take the module costs a recompile later, never this call.
        let _ = self.chain.save(key, &module);
        Ok(module)
    }

    pub(crate) fn pin(&self, loaded: &Loaded) {
        self.pinned.pin(loaded.key, loaded.module.clone());
    }

    pub(crate) fn unpin(&self, id: &ModuleId) -> bool {
        self.pinned.unpin(&self.key(id))
    }

    pub(crate) fn is_pinned(&self, id: &ModuleId) -> bool {
        self.pinned.is_pinned(&self.key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_modules_are_bounded_and_follow_the_module_the_chain_returns() {
        let engine = Engine::default();
        let linker = Linker::<HostState>::new(&engine);
        let fingerprint = EngineFingerprint::of(&engine);
        let key = |n: u8| {
            CacheKey::from_parts(
                WasmHash::from_bytes([n; 32]),
                cache_core::Form::Original,
                Abi::Strata,
                Tier::Cranelift,
                fingerprint,
            )
        };
        let module = Module::new(&engine, "(module)").expect("compiles");
        let mut pres = Pres::default();
        for n in 0..=PRE_ENTRIES as u8 {
            pres.insert(key(n), linker.instantiate_pre(&module).expect("pre"));
            assert!(pres.map.len() <= PRE_ENTRIES && pres.bytes <= PRE_BYTES);
        }
        let last = key(PRE_ENTRIES as u8);
        assert!(pres.get(&last, &module).is_some());
        // The same code compiled again (an LRU eviction, then a file-cache hit): resolved anew.
        let again = Module::new(&engine, "(module)").expect("compiles");
        assert!(pres.get(&last, &again).is_none());
    }
}
