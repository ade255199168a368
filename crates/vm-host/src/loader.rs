//! Loads runtime modules through pinned -> LRU -> file cache -> compile, one compile per module
//! however many threads ask at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_core::{CacheKey, FallbackCache, ModuleCache, ModuleCacheExt};
use cache_fs::FsCache;
use cache_lru::LruCache;
use cache_pinned::PinnedCache;
use parking_lot::{Mutex, RwLock};
use store_index::ModuleId;
use wasmtime::{Engine, InstancePre, Linker, Module};

use crate::VmError;
use crate::host::HostState;
use crate::rewrite::{self, Form, Shape};

/// What the host derives from a module's bytecode once: its shape and the runtime form's key.
pub(crate) struct Prepared {
    pub(crate) shape: Shape,
    pub(crate) key: CacheKey,
}

/// A loaded module, ready to instantiate.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) prepared: Arc<Prepared>,
    pub(crate) module: Module,
    pub(crate) pre: InstancePre<HostState>,
}

type Chain = FallbackCache<Arc<PinnedCache>, FallbackCache<LruCache, Arc<FsCache>>>;

pub(crate) struct Loader {
    engine: Engine,
    linker: Linker<HostState>,
    pinned: Arc<PinnedCache>,
    fs: Arc<FsCache>,
    chain: Chain,
    prepared: RwLock<HashMap<ModuleId, Arc<Prepared>>>,
    /// One lock per module being compiled, holding the module once compiled: the single flight.
    inflight: Mutex<HashMap<CacheKey, Arc<Mutex<Option<Module>>>>>,
    pub(crate) compiles: AtomicU64,
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
    ) -> Self {
        let fs = Arc::new(fs);
        let pinned = Arc::new(PinnedCache::new());
        let chain = pinned.clone().with_fallback(lru.with_fallback(fs.clone()));
        Loader {
            engine,
            linker,
            pinned,
            fs,
            chain,
            prepared: RwLock::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
        }
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

    /// The shape and key of `id`, reading its bytecode with `bytecode` the first time.
    pub(crate) fn prepare(
        &self,
        id: &ModuleId,
        bytecode: impl FnOnce() -> Result<Vec<u8>, VmError>,
    ) -> Result<Arc<Prepared>, VmError> {
        if let Some(prepared) = self.prepared.read().get(id) {
            return Ok(prepared.clone());
        }
        let wasm = bytecode()?;
        check_bytecode(id, &wasm)?;
        let shape = rewrite::shape(&wasm)?;
        let runtime = rewrite::rewrite(&wasm, &shape, Form::Runtime)?;
        let key = CacheKey::new(&self.engine, &runtime);
        let prepared = Arc::new(Prepared { shape, key });
        self.prepared.write().insert(*id, prepared.clone());
        Ok(prepared)
    }

    /// Loads the runtime form of `id` from the caches, compiling it on a miss.
    pub(crate) fn load(
        &self,
        id: &ModuleId,
        bytecode: &dyn Fn() -> Result<Vec<u8>, VmError>,
    ) -> Result<Loaded, VmError> {
        let prepared = self.prepare(id, bytecode)?;
        let compiles_before = self.compiles.load(Ordering::Acquire);
        let module = match self.chain.load(&prepared.key).ok().flatten() {
            Some(module) => module,
            None => self.compile_once(id, &prepared, bytecode, compiles_before)?,
        };
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(VmError::wasmtime)?;
        Ok(Loaded {
            prepared,
            module,
            pre,
        })
    }

    /// Compiles after a miss of the whole chain, once however many threads missed together.
    /// `compiles_before` is the compile count read before that miss.
    fn compile_once(
        &self,
        id: &ModuleId,
        prepared: &Prepared,
        bytecode: &dyn Fn() -> Result<Vec<u8>, VmError>,
        compiles_before: u64,
    ) -> Result<Module, VmError> {
        let flight = self
            .inflight
            .lock()
            .entry(prepared.key)
            .or_default()
            .clone();
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
            self.chain.load(&prepared.key).ok().flatten()
        } else {
            None
        };
        let result = match again {
            Some(module) => Ok(module),
            None => self.compile(id, prepared, bytecode()?),
        };
        if let Ok(module) = &result {
            *slot = Some(module.clone());
        }
        drop(slot);
        let mut inflight = self.inflight.lock();
        if inflight
            .get(&prepared.key)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            inflight.remove(&prepared.key);
        }
        result
    }

    fn compile(
        &self,
        id: &ModuleId,
        prepared: &Prepared,
        wasm: Vec<u8>,
    ) -> Result<Module, VmError> {
        check_bytecode(id, &wasm)?;
        let runtime = rewrite::rewrite(&wasm, &prepared.shape, Form::Runtime)?;
        let start = std::time::Instant::now();
        let module = Module::new(&self.engine, &runtime)
            .map_err(|e| VmError::InvalidModule(crate::one_line(&format!("{e:#}"))))?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        tracing::info!(module = %id, ms = start.elapsed().as_millis() as u64, "compiled");
        // A cache that cannot take the module costs a recompile later, never this call.
        let _ = self.chain.save(&prepared.key, &module);
        Ok(module)
    }

    /// Compiles `wasm`'s runtime form into the caches unless it is there already.
    pub(crate) fn precompile(&self, wasm: &[u8]) -> Result<ModuleId, VmError> {
        let id = ModuleId::of_wasm(wasm);
        let owned = wasm.to_vec();
        self.load(&id, &|| Ok(owned.clone()))?;
        Ok(id)
    }

    pub(crate) fn pin(&self, loaded: &Loaded) {
        self.pinned.pin(loaded.prepared.key, loaded.module.clone());
    }

    pub(crate) fn unpin(&self, id: &ModuleId) -> bool {
        match self.prepared.read().get(id) {
            Some(prepared) => self.pinned.unpin(&prepared.key),
            None => false,
        }
    }

    pub(crate) fn is_pinned(&self, id: &ModuleId) -> bool {
        self.prepared
            .read()
            .get(id)
            .is_some_and(|p| self.pinned.is_pinned(&p.key))
    }
}
