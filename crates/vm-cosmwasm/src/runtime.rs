//! The engine CosmWasm contracts run on, their module cache, and one call of an entry point.
//!
//! CosmWasm contracts keep no memory between calls: each call gets a fresh instance, its data
//! segments applied by wasmtime's copy-on-write memory initialisation, from the pooling
//! allocator (no mmap per call). The persistent memories of vm-host's own ABI are not used.
//! Modules load through pinned -> LRU -> file cache -> compile, keyed by the checksum, the
//! metering rewrite's form and version, [`Abi::CosmWasm`], the tier and the engine. Each tier
//! compiles its own form of the rewrite ([`form`]): Winch the compact call form (a deploy waits
//! for that compile), Cranelift the inline form (the fastest code).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use cache_core::{
    Abi, CacheKey, EngineFingerprint, FallbackCache, Form, ModuleCache, Tier, WasmHash,
};
use cache_fs::{FsCache, FsCacheConfig, Verification};
use cache_lru::LruCache;
use cache_pinned::PinnedCache;
use parking_lot::Mutex;
use wasmtime::{
    Config, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker, Module, ModuleExport,
    PoolingAllocationConfig, Store, StoreLimitsBuilder, Strategy,
};

use vm_host::{CompileBudget, CompileCost, VmError};

use crate::env::{self, CallError, Environment, Exports};
use crate::metering::CheckForm;
use crate::{CallFailure, CwError, FailureKind, TierPolicy, check, imports, memory, metering};

type Chain = FallbackCache<PinnedCache, FallbackCache<LruCache, FsCache>>;

/// The most instance-pre-resolutions kept (one per module); past it the map starts afresh.
const MAX_PRES: usize = 1024;

/// How many instances may live at once (pool slots).
pub(crate) const POOL_INSTANCES: u32 = 128;

/// The most jobs waiting for the background thread. Past it a Cranelift tier-up is dropped
/// (the contract keeps running on Winch, and its next load from the chain queues it again),
/// and an artifact is written to the file cache by the caller itself.
const BACKGROUND_QUEUE: usize = 64;

/// Work for the background thread, in the order it was queued.
enum Job {
    /// Write a compiled module to the file cache: after it has been served, off the deploy's
    /// critical path. The memory layers got it at once.
    Save(CacheKey, Module),
    /// Meter a contract's wasm (checked, stored) in Cranelift's form, compile it with
    /// Cranelift, save it through every layer, and move a Winch pin to it.
    TierUp([u8; 32], Vec<u8>),
    /// End the thread (the runtime is dropping).
    Stop,
}

/// An engine and the linker of the imports on it.
struct Compiler {
    engine: Engine,
    /// The engine's fingerprint, computed once (it hashes every engine setting).
    fingerprint: EngineFingerprint,
    linker: Linker<Environment>,
}

/// What the runtime and its background thread share.
struct Shared {
    cranelift: Compiler,
    chain: Chain,
    compiles: AtomicU64,
    tier_ups: AtomicU64,
    /// Background jobs queued and not finished.
    pending: AtomicU64,
    /// Set when the runtime drops: queued tier-ups are skipped (queued saves still run).
    closing: AtomicBool,
    /// The most a Cranelift compile may be estimated to take (vm-host's estimate).
    budget: Option<CompileBudget>,
    /// Tier-ups skipped because the contract is over the budget: it stays on Winch.
    over_budget: AtomicU64,
}

pub(crate) struct Runtime {
    shared: Arc<Shared>,
    /// With [`TierPolicy::WinchThenCranelift`] or [`TierPolicy::WinchOnly`].
    winch: Option<Compiler>,
    policy: TierPolicy,
    /// The background thread's queue.
    jobs: SyncSender<Job>,
    worker: Option<JoinHandle<()>>,
    pres: Mutex<HashMap<[u8; 32], Prepared>>,
    /// Contracts whose Winch module was found in the chain and queued for a tier-up.
    queued: Mutex<std::collections::HashSet<[u8; 32]>>,
    pub(crate) memory_limit: usize,
}

fn engine_config(tier: Tier, memory_limit: usize) -> Config {
    let mut config = Config::new();
    check::configure_engine(&mut config);
    match tier {
        Tier::Winch => {
            config.strategy(Strategy::Winch);
            // A deploy waits for this compile; none of these change what the code computes.
            // Winch leaves the trampolines between the host and wasm (one per exported or
            // table function, one per imported type) to Cranelift: compile them without
            // optimisation and with the single-pass register allocator. And no address map
            // (machine code to wasm offsets): it only puts offsets into the backtraces of
            // traps, which no result, message or log of this crate shows.
            config
                .cranelift_opt_level(wasmtime::OptLevel::None)
                .cranelift_regalloc_algorithm(wasmtime::RegallocAlgorithm::SinglePass)
                .generate_address_map(false);
        }
        _ => {
            config.strategy(Strategy::Cranelift);
        }
    }
    config.memory_init_cow(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(POOL_INSTANCES)
        .total_memories(POOL_INSTANCES)
        .total_tables(POOL_INSTANCES)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_memory_size(memory_limit);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

fn compiler(tier: Tier, memory_limit: usize) -> Result<Compiler, CwError> {
    let engine = Engine::new(&engine_config(tier, memory_limit)).map_err(CwError::wasmtime)?;
    let mut linker = Linker::new(&engine);
    imports::define(&mut linker).map_err(CwError::wasmtime)?;
    Ok(Compiler {
        fingerprint: EngineFingerprint::of(&engine),
        engine,
        linker,
    })
}

/// The form of the metering rewrite `tier` compiles: Winch the call form (less code to
/// compile), Cranelift the inline form (faster code).
pub(crate) fn form(tier: Tier) -> CheckForm {
    match tier {
        Tier::Winch => CheckForm::Call,
        _ => CheckForm::Inline,
    }
}

/// The cache key of `checksum` on `tier`: its rewrite number is the version of the tier's form,
/// so that an artifact of another rewrite is never loaded.
fn key(engine: EngineFingerprint, tier: Tier, checksum: &[u8; 32]) -> CacheKey {
    CacheKey::from_parts(
        WasmHash::from_bytes(*checksum),
        Form::Runtime {
            rewrite: form(tier).version(),
        },
        Abi::CosmWasm,
        tier,
        engine,
    )
}

impl Shared {
    /// The background thread: runs each job in turn, until [`Job::Stop`].
    fn run(&self, jobs: Receiver<Job>, winch: Option<EngineFingerprint>) {
        for job in jobs {
            match job {
                Job::Save(key, module) => self.save_files(&key, &module),
                Job::TierUp(checksum, wasm) => {
                    if let Some(winch) = winch
                        && !self.closing.load(Ordering::Acquire)
                    {
                        self.tier_up(checksum, &wasm, winch);
                    }
                }
                Job::Stop => return,
            }
            self.pending.fetch_sub(1, Ordering::Release);
        }
    }

    /// Whether Cranelift may compile `metered`: its estimated compile time within the budget.
    fn within_budget(&self, metered: &[u8]) -> Result<(), CwError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let cost = CompileCost::of(metered)?;
        budget
            .check(&cost)
            .map_err(|over| CwError::Vm(VmError::from(over)))
    }

    /// Writes `module` to the file cache. A failure costs a compile after a restart, no more:
    /// it is counted in the file cache layer's `errors`, as the chain counts its own saves.
    fn save_files(&self, key: &CacheKey, module: &Module) {
        self.chain.fallback().save_fallback(key, module);
    }

    fn tier_up(&self, checksum: [u8; 32], wasm: &[u8], winch: EngineFingerprint) {
        {
            let ckey = key(self.cranelift.fingerprint, Tier::Cranelift, &checksum);
            if matches!(self.chain.load(&ckey), Ok(Some(_))) {
                return;
            }
            let metered = match metering::instrument(wasm, form(Tier::Cranelift)) {
                Ok(metered) => metered,
                Err(e) => {
                    tracing::warn!(error = %e, "metering a contract for its tier-up failed");
                    return;
                }
            };
            let metered = &metered[..];
            if let Err(over) = self.within_budget(metered) {
                self.over_budget.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    contract = %WasmHash::from_bytes(checksum),
                    "{over}: the contract stays on Winch"
                );
                return;
            }
            match Module::new(&self.cranelift.engine, metered) {
                Ok(module) => {
                    self.compiles.fetch_add(1, Ordering::Relaxed);
                    self.tier_ups.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.chain.save(&ckey, &module) {
                        tracing::warn!(error = %e, "saving a tier-up failed");
                    }
                    let wkey = key(winch, Tier::Winch, &checksum);
                    if self.chain.primary().unpin(&wkey) {
                        self.chain.primary().pin(ckey, module);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a Cranelift tier-up failed"),
            }
        }
    }
}

/// Drop waits for the background thread: queued file writes finish (so a VM opened next on
/// the same directory finds them), a Cranelift compile under way finishes, queued ones are
/// skipped (the next load of such a contract queues it again).
impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if self.jobs.send(Job::Stop).is_ok()
            && let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!("the background thread of the CosmWasm runtime panicked");
        }
    }
}

impl Runtime {
    pub(crate) fn new(
        cache_dir: &Path,
        mode: Verification,
        memory_limit: usize,
        lru_bytes: u64,
        fsync: bool,
        policy: TierPolicy,
        budget: Option<CompileBudget>,
    ) -> Result<Runtime, CwError> {
        let cranelift = compiler(Tier::Cranelift, memory_limit)?;
        let winch = match policy {
            TierPolicy::CraneliftOnly => None,
            _ => Some(compiler(Tier::Winch, memory_limit)?),
        };
        let mut engines = vec![cranelift.engine.clone()];
        engines.extend(winch.as_ref().map(|w| w.engine.clone()));
        let fs = FsCache::open_engines(
            cache_dir,
            &engines,
            FsCacheConfig {
                mode,
                fsync,
                ..FsCacheConfig::default()
            },
            Arc::new(strata_fs::RealFs),
        )
        .map_err(CwError::Cache)?;
        let chain = FallbackCache::new(
            PinnedCache::new(),
            FallbackCache::new(LruCache::new(lru_bytes), fs),
        );
        let shared = Arc::new(Shared {
            cranelift,
            chain,
            compiles: AtomicU64::new(0),
            tier_ups: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            budget,
            over_budget: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(BACKGROUND_QUEUE);
        let worker = {
            let shared = Arc::clone(&shared);
            let winch = winch.as_ref().map(|w| w.fingerprint);
            std::thread::Builder::new()
                .name("cw-background".into())
                .spawn(move || shared.run(rx, winch))
                .map_err(|e| {
                    CwError::Wasmtime(format!("cannot start the background thread: {e}"))
                })?
        };
        Ok(Runtime {
            shared,
            winch,
            policy,
            jobs: tx,
            worker: Some(worker),
            pres: Mutex::new(HashMap::new()),
            queued: Mutex::new(Default::default()),
            memory_limit,
        })
    }

    /// The keys to probe, best first: Cranelift, then Winch.
    fn keys(&self, checksum: &[u8; 32]) -> Vec<CacheKey> {
        let mut keys = Vec::with_capacity(2);
        if self.policy != TierPolicy::WinchOnly {
            keys.push(key(
                self.shared.cranelift.fingerprint,
                Tier::Cranelift,
                checksum,
            ));
        }
        if let Some(w) = &self.winch {
            keys.push(key(w.fingerprint, Tier::Winch, checksum));
        }
        keys
    }

    fn best(&self, checksum: &[u8; 32]) -> Result<Option<(CacheKey, Module)>, CwError> {
        self.shared
            .chain
            .load_first(&self.keys(checksum))
            .map_err(CwError::Cache)
    }

    /// The module of `checksum` if a layer holds it (its best tier).
    pub(crate) fn cached(&self, checksum: &[u8; 32]) -> Result<Option<Module>, CwError> {
        Ok(self.best(checksum)?.map(|(_, module)| module))
    }

    /// The compiler a cache miss compiles with: Winch when the policy has it.
    fn deploy_compiler(&self) -> (&Compiler, Tier) {
        match &self.winch {
            Some(w) if self.policy != TierPolicy::CraneliftOnly => (w, Tier::Winch),
            _ => (&self.shared.cranelift, Tier::Cranelift),
        }
    }

    /// The form of the metering rewrite [`Runtime::compile`] takes.
    pub(crate) fn deploy_form(&self) -> CheckForm {
        form(self.deploy_compiler().1)
    }

    /// Compiles `metered` (the metering rewrite of `wasm`, in [`Runtime::deploy_form`], for
    /// `checksum`), with Winch when the policy has it. The memory layers get the module at
    /// once; the file cache gets it from the background thread, after this returns. With
    /// [`TierPolicy::WinchThenCranelift`] its Cranelift compile is queued (the thread meters
    /// `wasm` in Cranelift's form).
    pub(crate) fn compile(
        &self,
        checksum: &[u8; 32],
        wasm: &[u8],
        metered: Vec<u8>,
    ) -> Result<Module, CwError> {
        let (compiler, tier) = self.deploy_compiler();
        // Winch compiles in linear time; a Cranelift compile is estimated first (for a tier-up
        // that happens on the background thread, off the deploy's path).
        if tier == Tier::Cranelift {
            self.shared.within_budget(&metered)?;
        }
        let module = Module::new(&compiler.engine, &metered).map_err(CwError::wasmtime)?;
        self.shared.compiles.fetch_add(1, Ordering::Relaxed);
        self.save(key(compiler.fingerprint, tier, checksum), &module);
        if self.claims_tier_up(tier, checksum) {
            self.queue_tier_up(checksum, wasm.to_vec());
        }
        Ok(module)
    }

    /// Saves `module` in the LRU layer now and queues its write to the file cache (written
    /// here when the queue is full: an artifact is never dropped). The pinned layer takes
    /// modules only through `pin`.
    fn save(&self, key: CacheKey, module: &Module) {
        self.shared.chain.fallback().save_primary(&key, module);
        // Full, or the thread gone: written here.
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.send(Job::Save(key, module.clone()))
            && let Job::Save(key, module) = job
        {
            self.shared.save_files(&key, &module);
        }
    }

    /// Queues `job` for the background thread; the job back if the queue is full.
    fn send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        self.shared.pending.fetch_add(1, Ordering::Acquire);
        self.jobs.try_send(job).inspect_err(|_| {
            self.shared.pending.fetch_sub(1, Ordering::Release);
        })
    }

    /// Whether a module of `tier` for `checksum` is to be tiered up now: a Winch module under
    /// [`TierPolicy::WinchThenCranelift`] not queued already (it is marked queued).
    fn claims_tier_up(&self, tier: Tier, checksum: &[u8; 32]) -> bool {
        tier == Tier::Winch
            && self.policy == TierPolicy::WinchThenCranelift
            && self.queued.lock().insert(*checksum)
    }

    fn queue_tier_up(&self, checksum: &[u8; 32], wasm: Vec<u8>) {
        if self.send(Job::TierUp(*checksum, wasm)).is_err() {
            self.queued.lock().remove(checksum);
            tracing::warn!("the tier-up queue is full: the contract stays on Winch for now");
        }
    }

    /// Waits until the background thread has nothing queued or running (tier-ups and file
    /// writes; at most `timeout`); whether it got there.
    pub(crate) fn wait_tier_up(&self, timeout: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while self.shared.pending.load(Ordering::Acquire) > 0 {
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        true
    }

    /// The module of `checksum` from the chain (its best tier), or compiled from `wasm()` on
    /// a miss.
    pub(crate) fn load(
        &self,
        checksum: &[u8; 32],
        wasm: impl FnOnce() -> Result<Vec<u8>, CwError>,
    ) -> Result<Module, CwError> {
        match self.best(checksum)? {
            Some((key, module)) => {
                // A Winch module still in the chain (after a restart, or a full queue): tier
                // it up, unless it is queued already.
                if self.claims_tier_up(key.tier(), checksum) {
                    self.queue_tier_up(checksum, wasm()?);
                }
                Ok(module)
            }
            None => {
                // Already checked at store_code; metered in the form the deploy tier takes.
                let wasm = wasm()?;
                let metered =
                    metering::instrument(&wasm, self.deploy_form()).map_err(CwError::Check)?;
                self.compile(checksum, &wasm, metered)
            }
        }
    }

    /// Pins `module` (the best tier the chain had for `checksum`).
    pub(crate) fn pin(&self, checksum: &[u8; 32], module: Module) {
        let key = match &self.winch {
            Some(w) if self.is_winch(&module) => key(w.fingerprint, Tier::Winch, checksum),
            _ => key(self.shared.cranelift.fingerprint, Tier::Cranelift, checksum),
        };
        self.shared.chain.primary().pin(key, module);
    }

    /// Unpins `checksum` (either tier); whether it was pinned.
    pub(crate) fn unpin(&self, checksum: &[u8; 32]) -> bool {
        let mut any = false;
        for key in self.keys(checksum) {
            any |= self.shared.chain.primary().unpin(&key);
        }
        any
    }

    fn is_winch(&self, module: &Module) -> bool {
        self.winch
            .as_ref()
            .is_some_and(|w| Engine::same(&w.engine, module.engine()))
    }

    pub(crate) fn stats(&self) -> Vec<cache_core::LayerStats> {
        self.shared.chain.stats()
    }

    pub(crate) fn compiles(&self) -> u64 {
        self.shared.compiles.load(Ordering::Relaxed)
    }

    /// Tier-ups skipped because the contract's estimated Cranelift compile is over the budget.
    pub(crate) fn over_budget(&self) -> u64 {
        self.shared.over_budget.load(Ordering::Relaxed)
    }

    /// Cranelift compiles that replaced a Winch module.
    pub(crate) fn tier_ups(&self) -> u64 {
        self.shared.tier_ups.load(Ordering::Relaxed)
    }

    fn prepared(&self, checksum: &[u8; 32], module: &Module) -> Result<Prepared, CwError> {
        let mut pres = self.pres.lock();
        if let Some(p) = pres.get(checksum)
            && Module::same(p.pre.module(), module)
        {
            return Ok(p.clone());
        }
        let linker = match &self.winch {
            Some(w) if self.is_winch(module) => &w.linker,
            _ => &self.shared.cranelift.linker,
        };
        let pre = linker.instantiate_pre(module).map_err(CwError::wasmtime)?;
        let export = |name: &str| {
            module
                .get_export_index(name)
                .ok_or_else(|| CwError::Instantiation(format!("missing export `{name}`")))
        };
        let prepared = Prepared {
            memory: export("memory")?,
            allocate: export("allocate")?,
            deallocate: export("deallocate")?,
            gas_left: export(metering::GAS_LEFT_EXPORT)?,
            gas_exhausted: export(metering::GAS_EXHAUSTED_EXPORT)?,
            pre,
        };
        if pres.len() >= MAX_PRES {
            pres.clear();
        }
        pres.insert(*checksum, prepared.clone());
        Ok(prepared)
    }

    /// A fresh instance of `module` over `env`, with `gas_limit` in its counter.
    pub(crate) fn instantiate(
        &self,
        checksum: &[u8; 32],
        module: &Module,
        mut env: Environment,
        gas_limit: u64,
    ) -> Result<Instance, CwError> {
        let prepared = self.prepared(checksum, module)?;
        env.limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .instances(1)
            .tables(1)
            .memories(1)
            .build();
        env.gas.gas_limit = gas_limit;
        let mut store = Store::new(module.engine(), env);
        store.limiter(|env| &mut env.limits);
        let instance = prepared
            .pre
            .instantiate(&mut store)
            .map_err(|e| CwError::Instantiation(cause(&e)))?;
        let missing = |name: &str| CwError::Instantiation(format!("missing export `{name}`"));
        let mut get = |export: &ModuleExport| instance.get_module_export(&mut store, export);
        let memory = get(&prepared.memory).and_then(Extern::into_memory);
        let allocate = get(&prepared.allocate).and_then(Extern::into_func);
        let deallocate = get(&prepared.deallocate).and_then(Extern::into_func);
        let gas_left = get(&prepared.gas_left).and_then(Extern::into_global);
        let gas_exhausted = get(&prepared.gas_exhausted).and_then(Extern::into_global);
        let exports = Exports {
            memory: memory.ok_or_else(|| missing("memory"))?,
            allocate: allocate
                .and_then(|f| f.typed(&store).ok())
                .ok_or_else(|| missing("allocate"))?,
            deallocate: deallocate
                .and_then(|f| f.typed(&store).ok())
                .ok_or_else(|| missing("deallocate"))?,
            gas_left: gas_left.ok_or_else(|| missing(metering::GAS_LEFT_EXPORT))?,
            gas_exhausted: gas_exhausted.ok_or_else(|| missing(metering::GAS_EXHAUSTED_EXPORT))?,
        };
        store.data_mut().exports = Some(exports);
        env::set_gas_left(&mut store, gas_limit)
            .map_err(|e| CwError::Instantiation(e.to_string()))?;
        Ok(Instance { store, instance })
    }
}

/// What went wrong in a wasm call or an instantiation: the trap, else the root cause. Never the
/// wasm backtrace a trap carries: its frames and offsets are those of the metered module, whose
/// form differs between the tiers (and Winch modules have no address map), so it would make a
/// message depend on the tier.
fn cause(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    }
}

/// A module's instance-pre and its exports the host uses, resolved once per module.
#[derive(Clone)]
struct Prepared {
    pre: InstancePre<Environment>,
    memory: ModuleExport,
    allocate: ModuleExport,
    deallocate: ModuleExport,
    gas_left: ModuleExport,
    gas_exhausted: ModuleExport,
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
        CallFailure::new(FailureKind::Trap, cause(&err))
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
            return Err(self.failure_of(CallError::Communication("Got a zero Wasm address".into())));
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
