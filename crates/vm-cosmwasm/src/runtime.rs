//! The engine CosmWasm contracts run on, their module cache, and one call of an entry point.
//!
//! CosmWasm contracts keep no memory between calls: each call gets a fresh instance, its data
//! segments applied by wasmtime's copy-on-write memory initialisation, from the pooling
//! allocator (no mmap per call). The persistent memories of vm-host's own ABI are not used.
//! Modules load through pinned -> LRU -> file cache -> compile, keyed by the checksum, the
//! metering rewrite's version, [`Abi::CosmWasm`], the tier and the engine.

use std::collections::HashMap;
use std::path::Path;

use cache_core::{
    Abi, CacheKey, EngineFingerprint, FallbackCache, Form, ModuleCache, Tier, WasmHash,
};
use cache_fs::{FsCache, FsCacheConfig, Verification};
use cache_lru::LruCache;
use cache_pinned::PinnedCache;
use parking_lot::Mutex;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, StoreLimitsBuilder, Strategy,
};

use crate::env::{self, CallError, Environment, Exports};
use crate::{CallFailure, CwError, FailureKind, check, imports, memory, metering};

type Chain = FallbackCache<PinnedCache, FallbackCache<LruCache, FsCache>>;

/// The most instance-pre-resolutions kept (one per module); past it the map starts afresh.
const MAX_PRES: usize = 1024;

/// How many instances may live at once (pool slots).
pub(crate) const POOL_INSTANCES: u32 = 128;

pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<Environment>,
    chain: Chain,
    pres: Mutex<HashMap<[u8; 32], InstancePre<Environment>>>,
    pub(crate) memory_limit: usize,
    compiles: std::sync::atomic::AtomicU64,
}

impl Runtime {
    pub(crate) fn new(
        cache_dir: &Path,
        mode: Verification,
        memory_limit: usize,
        lru_bytes: u64,
        fsync: bool,
    ) -> Result<Runtime, CwError> {
        let mut config = Config::new();
        check::configure_engine(&mut config);
        config.strategy(Strategy::Cranelift);
        config.memory_init_cow(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(memory_limit);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(CwError::wasmtime)?;
        let mut linker = Linker::new(&engine);
        imports::define(&mut linker).map_err(CwError::wasmtime)?;
        let fs = FsCache::open(
            cache_dir,
            &engine,
            FsCacheConfig {
                mode,
                fsync,
                ..FsCacheConfig::default()
            },
        )
        .map_err(CwError::Cache)?;
        let chain = FallbackCache::new(
            PinnedCache::new(),
            FallbackCache::new(LruCache::new(lru_bytes), fs),
        );
        Ok(Runtime {
            engine,
            linker,
            chain,
            pres: Mutex::new(HashMap::new()),
            memory_limit,
            compiles: Default::default(),
        })
    }

    fn key(&self, checksum: &[u8; 32]) -> CacheKey {
        CacheKey::from_parts(
            WasmHash::from_bytes(*checksum),
            Form::Runtime {
                rewrite: metering::METERING_VERSION,
            },
            Abi::CosmWasm,
            Tier::Cranelift,
            EngineFingerprint::of(&self.engine),
        )
    }

    /// Compiles the metered form of `wasm` (already checked) into the cache chain, unless it
    /// is there.
    pub(crate) fn prepare(&self, checksum: &[u8; 32], wasm: &[u8]) -> Result<Module, CwError> {
        let key = self.key(checksum);
        if let Some(module) = self.chain.load(&key).map_err(CwError::Cache)? {
            return Ok(module);
        }
        let metered = metering::instrument(wasm).map_err(CwError::Check)?;
        let module = Module::new(&self.engine, &metered).map_err(CwError::wasmtime)?;
        self.compiles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.chain.save(&key, &module).map_err(CwError::Cache)?;
        Ok(module)
    }

    /// The module of `checksum` from the chain, or compiled from `wasm()` on a miss.
    pub(crate) fn load(
        &self,
        checksum: &[u8; 32],
        wasm: impl FnOnce() -> Result<Vec<u8>, CwError>,
    ) -> Result<Module, CwError> {
        let key = self.key(checksum);
        match self.chain.load(&key).map_err(CwError::Cache)? {
            Some(module) => Ok(module),
            None => self.prepare(checksum, &wasm()?),
        }
    }

    /// Pins the module of `checksum` (loading it first).
    pub(crate) fn pin(&self, checksum: &[u8; 32], module: Module) {
        self.chain.primary().pin(self.key(checksum), module);
    }

    /// Unpins `checksum`; whether it was pinned.
    pub(crate) fn unpin(&self, checksum: &[u8; 32]) -> bool {
        self.chain.primary().unpin(&self.key(checksum))
    }

    pub(crate) fn stats(&self) -> Vec<cache_core::LayerStats> {
        self.chain.stats()
    }

    pub(crate) fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn pre(
        &self,
        checksum: &[u8; 32],
        module: &Module,
    ) -> Result<InstancePre<Environment>, CwError> {
        let mut pres = self.pres.lock();
        if let Some(pre) = pres.get(checksum)
            && Module::same(pre.module(), module)
        {
            return Ok(pre.clone());
        }
        let pre = self
            .linker
            .instantiate_pre(module)
            .map_err(CwError::wasmtime)?;
        if pres.len() >= MAX_PRES {
            pres.clear();
        }
        pres.insert(*checksum, pre.clone());
        Ok(pre)
    }

    /// A fresh instance of `module` over `env`, with `gas_limit` in its counter.
    pub(crate) fn instantiate(
        &self,
        checksum: &[u8; 32],
        module: &Module,
        mut env: Environment,
        gas_limit: u64,
    ) -> Result<Instance, CwError> {
        let pre = self.pre(checksum, module)?;
        env.limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .instances(1)
            .tables(1)
            .memories(1)
            .build();
        env.gas.gas_limit = gas_limit;
        let mut store = Store::new(&self.engine, env);
        store.limiter(|env| &mut env.limits);
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| CwError::Instantiation(e.to_string()))?;
        let missing = |name: &str| CwError::Instantiation(format!("missing export `{name}`"));
        let exports = Exports {
            memory: instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| missing("memory"))?,
            allocate: instance
                .get_typed_func(&mut store, "allocate")
                .map_err(|_| missing("allocate"))?,
            deallocate: instance
                .get_typed_func(&mut store, "deallocate")
                .map_err(|_| missing("deallocate"))?,
            gas_left: instance
                .get_global(&mut store, metering::GAS_LEFT_EXPORT)
                .ok_or_else(|| missing(metering::GAS_LEFT_EXPORT))?,
            gas_exhausted: instance
                .get_global(&mut store, metering::GAS_EXHAUSTED_EXPORT)
                .ok_or_else(|| missing(metering::GAS_EXHAUSTED_EXPORT))?,
        };
        store.data_mut().exports = Some(exports);
        env::set_gas_left(&mut store, gas_limit)
            .map_err(|e| CwError::Instantiation(e.to_string()))?;
        Ok(Instance { store, instance })
    }
}

/// A live instance for one call.
pub(crate) struct Instance {
    pub(crate) store: Store<Environment>,
    instance: wasmtime::Instance,
}

/// What a call's gas came to (cosmwasm-vm's `GasReport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GasReport {
    /// The call's limit.
    pub limit: u64,
    /// What is left of it.
    pub remaining: u64,
    /// Gas the backend used outside the VM.
    pub used_externally: u64,
    /// Gas used inside the VM (`limit - used_externally - remaining`, saturating).
    pub used_internally: u64,
}

impl GasReport {
    /// All gas used: `limit - remaining`.
    pub fn used(&self) -> u64 {
        self.limit.saturating_sub(self.remaining)
    }
}

impl Instance {
    pub(crate) fn gas_report(&mut self) -> GasReport {
        let limit = self.store.data().gas.gas_limit;
        let used_externally = self.store.data().gas.externally_used;
        let remaining = env::gas_left(&mut self.store).unwrap_or(0);
        GasReport {
            limit,
            remaining,
            used_externally,
            used_internally: limit
                .saturating_sub(used_externally)
                .saturating_sub(remaining),
        }
    }

    fn exhausted(&mut self) -> bool {
        let Some(global) = self.store.data().exports.as_ref().map(|e| e.gas_exhausted) else {
            return false;
        };
        let flag = Some(global.get(&mut self.store));
        matches!(flag, Some(wasmtime::Val::I32(v)) if v != 0)
    }

    /// What a failed wasm or host call means: out of gas when the injected check tripped (or a
    /// host function ran out), else the host function's error, else the trap.
    fn failure(&mut self, err: wasmtime::Error) -> CallFailure {
        if self.exhausted() {
            return CallFailure::new(FailureKind::OutOfGas, "ran out of gas");
        }
        if let Some(e) = err.downcast_ref::<CallError>() {
            let kind = match e {
                CallError::GasDepletion => FailureKind::OutOfGas,
                CallError::Aborted(_) => FailureKind::Aborted,
                CallError::WriteAccessDenied => FailureKind::WriteAccessDenied,
                CallError::Communication(_) => FailureKind::Communication,
                CallError::Backend(_) => FailureKind::Backend,
                _ => FailureKind::Host,
            };
            return CallFailure::new(kind, e.to_string());
        }
        let message = match err.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{err:#}"),
        };
        CallFailure::new(FailureKind::Trap, message)
    }

    fn failure_of(&mut self, err: CallError) -> CallFailure {
        self.failure(wasmtime::Error::new(err))
    }

    /// Copies `data` into the contract through its `allocate` (as cosmwasm-vm passes the
    /// arguments of an entry point).
    fn pass(&mut self, data: &[u8]) -> Result<u32, CallFailure> {
        let len = u32::try_from(data.len())
            .map_err(|_| CallFailure::new(FailureKind::Communication, "argument too large"))?;
        let allocate = self.exports().allocate.clone();
        let ptr = match allocate.call(&mut self.store, len) {
            Ok(ptr) => ptr,
            Err(e) => return Err(self.failure(e)),
        };
        if ptr == 0 {
            return Err(self.failure_of(CallError::Communication(
                "allocate returned the zero address".into(),
            )));
        }
        memory::write_region(&mut self.store, ptr, data).map_err(|e| self.failure_of(e))?;
        Ok(ptr)
    }

    fn exports(&self) -> &Exports {
        self.store
            .data()
            .exports
            .as_ref()
            .expect("set at instantiation")
    }

    /// Calls the entry point `name` with `args` (each passed as a region) and returns the
    /// bytes of the region it returns (at most `max_result` of them), freed afterwards.
    pub(crate) fn call_raw(
        &mut self,
        name: &str,
        args: &[&[u8]],
        max_result: usize,
    ) -> Result<Vec<u8>, CallFailure> {
        let mut ptrs = Vec::with_capacity(args.len());
        for arg in args {
            ptrs.push(wasmtime::Val::I32(self.pass(arg)? as i32));
        }
        let func = self
            .instance
            .get_func(&mut self.store, name)
            .ok_or_else(|| {
                CallFailure::new(
                    FailureKind::Communication,
                    format!("missing export `{name}`"),
                )
            })?;
        let mut result = [wasmtime::Val::I32(0)];
        let results = if func.ty(&self.store).results().len() == 1 {
            &mut result[..]
        } else {
            return Err(CallFailure::new(
                FailureKind::Communication,
                format!("export `{name}` does not return one value"),
            ));
        };
        if let Err(e) = func.call(&mut self.store, &ptrs, results) {
            return Err(self.failure(e));
        }
        let ptr = results[0].unwrap_i32() as u32;
        let data = memory::read_region(&mut self.store, ptr, max_result)
            .map_err(|e| self.failure_of(e))?;
        let deallocate = self.exports().deallocate.clone();
        if let Err(e) = deallocate.call(&mut self.store, ptr) {
            return Err(self.failure(e));
        }
        Ok(data)
    }

    /// The number of parameters of export `name`, if the instance exports a function by it.
    pub(crate) fn arity(&mut self, name: &str) -> Option<usize> {
        let func = self.instance.get_func(&mut self.store, name)?;
        Some(func.ty(&self.store).params().len())
    }
}
