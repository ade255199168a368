//! Loads runtime modules through pinned -> LRU -> file cache -> remote (optional) -> compile,
//! one compile per module however many threads ask at once, and, with a remote layer, however
//! many nodes of the fleet ask at once (a [`CompileLease`]).
//!
//! With a [`TierPolicy`] that uses Winch, a miss of every layer compiles with Winch (locally, no
//! fleet lease: it takes milliseconds) and hands the runtime form to the tier-up thread, which
//! compiles it with Cranelift one module at a time from a bounded queue and saves it through
//! the layers; loads probe each layer for Cranelift, then Winch ([`ModuleCache::load_first`]).
//!
//! The cache key of a module is computed from its id alone (module id, runtime form of
//! [`rewrite::REWRITE_VERSION`], the Strata ABI, the tier, that tier's engine's fingerprint),
//! so a hit in any layer reads no bytecode: the stored bytecode is read, checked against its
//! id, rewritten and compiled only on a miss of every layer. What the host needs of the module
//! (its memory and mutable globals) is read from the compiled module's exports.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use cache_core::{
    Abi, CacheKey, CompileLease, EngineFingerprint, FallbackCache, LeaseAttempt, ModuleCache,
    ModuleCacheExt, Tier, WasmHash,
};
use cache_fs::FsCache;
use cache_lru::LruCache;
use cache_pinned::PinnedCache;
use cache_redis::RedisCache;
use parking_lot::{Condvar, Mutex, RwLock};
use store_index::ModuleId;
use wasmtime::{Engine, InstancePre, Linker, Module};

use crate::host::HostState;
use crate::rewrite::{self, Form, Shape};
use crate::{CompileBudget, CompileCost, OverBudget, TierPolicy, VmError};

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
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) cache: Arc<RedisCache>,
    pub(crate) max_lease_wait: Duration,
}

/// The longest pause between two looks for another node's artifact.
const MAX_POLL: Duration = Duration::from_millis(200);

/// The runtime engine of the Winch tier and its linker.
pub(crate) struct WinchEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
}

/// The remote layer seen through the chain: only keys of its own engine (Cranelift) reach it.
/// Winch artifacts stay on the node: compiling one takes less than fetching it.
struct RemoteCranelift {
    cache: Arc<RedisCache>,
    fingerprint: EngineFingerprint,
}

impl ModuleCache for RemoteCranelift {
    fn name(&self) -> &str {
        self.cache.name()
    }
    fn load(&self, key: &CacheKey) -> Result<Option<Module>, cache_core::CacheError> {
        if key.engine() != self.fingerprint {
            return Ok(None);
        }
        self.cache.load(key)
    }
    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), cache_core::CacheError> {
        if key.engine() != self.fingerprint {
            return Ok(());
        }
        self.cache.save(key, module)
    }
    fn remove(&self, key: &CacheKey) -> Result<bool, cache_core::CacheError> {
        if key.engine() != self.fingerprint {
            return Ok(false);
        }
        self.cache.remove(key)
    }
    fn stats(&self) -> Vec<cache_core::LayerStats> {
        self.cache.stats()
    }
}

pub(crate) struct Loader {
    engine: Engine,
    fingerprint: EngineFingerprint,
    linker: Linker<HostState>,
    winch: Option<(WinchEngine, EngineFingerprint)>,
    policy: TierPolicy,
    budget: Option<CompileBudget>,
    /// Modules found over the budget since the VM opened: never queued for a tier-up (and
    /// their bytecode not read again to try).
    over_budget: Mutex<HashSet<ModuleId>>,
    pinned: Arc<PinnedCache>,
    lru: Arc<LruCache>,
    fs: Arc<FsCache>,
    remote: Option<Remote>,
    chain: Arc<Chain>,
    tier_up: Option<TierUp>,
    /// The tier of the latest load of each module (what `VmStats::tiers` counts).
    tiers: RwLock<HashMap<ModuleId, Tier>>,
    pub(crate) winch_compiles: AtomicU64,
    /// One lock per module being compiled, holding the module once compiled: the single flight.
    inflight: Mutex<HashMap<CacheKey, Arc<Mutex<Option<Module>>>>>,
    /// The shape (memory, mutable globals) of each runtime form loaded so far, read once from
    /// its compiled module's exports: a key names one runtime form, so the shape never changes.
    shapes: RwLock<HashMap<CacheKey, Arc<Shape>>>,
    /// Imports resolved once per module (`InstancePre`), reused while the chain returns the same
    /// compiled module. An entry keeps its module alive, so they are bounded: at most
    /// [`PRE_ENTRIES`] and [`PRE_BYTES`] of compiled code that no layer may hold any more.
    pres: Mutex<Pres>,
    pub(crate) compiles: Arc<AtomicU64>,
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        engine: Engine,
        linker: Linker<HostState>,
        winch: Option<WinchEngine>,
        policy: TierPolicy,
        tier_up_queue: usize,
        budget: Option<CompileBudget>,
        lru: LruCache,
        fs: FsCache,
        remote: Option<Remote>,
    ) -> Self {
        let fingerprint = EngineFingerprint::of(&engine);
        let fs = Arc::new(fs);
        let lru = Arc::new(lru);
        let pinned = Arc::new(PinnedCache::new());
        let below: Box<dyn ModuleCache> = match &remote {
            Some(remote) => Box::new(fs.clone().with_fallback(RemoteCranelift {
                cache: remote.cache.clone(),
                fingerprint,
            })),
            None => Box::new(fs.clone()),
        };
        let chain = Arc::new(
            pinned
                .clone()
                .with_fallback(lru.clone().with_fallback(below)),
        );
        let compiles = Arc::new(AtomicU64::new(0));
        let winch = winch.map(|w| {
            let fingerprint = EngineFingerprint::of(&w.engine);
            (w, fingerprint)
        });
        let tier_up = (policy == TierPolicy::WinchThenCranelift).then(|| {
            TierUp::start(
                Arc::new(TierUpShared {
                    engine: engine.clone(),
                    chain: chain.clone(),
                    pinned: pinned.clone(),
                    lru: lru.clone(),
                    fs: fs.clone(),
                    remote: remote.clone(),
                    compiles: compiles.clone(),
                    pending: Mutex::new(0),
                    idle: Condvar::new(),
                    queued: Mutex::new(HashSet::new()),
                    done: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    #[cfg(test)]
                    gate: Gate::default(),
                }),
                tier_up_queue,
            )
        });
        Loader {
            fingerprint,
            engine,
            linker,
            winch,
            policy,
            budget,
            over_budget: Mutex::new(HashSet::new()),
            pinned,
            lru,
            fs,
            remote,
            chain,
            tier_up,
            tiers: RwLock::new(HashMap::new()),
            winch_compiles: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            shapes: RwLock::new(HashMap::new()),
            pres: Mutex::new(Pres::default()),
            compiles,
            lease_waits: AtomicU64::new(0),
            lease_wait_hits: AtomicU64::new(0),
        }
    }

    pub(crate) fn remote(&self) -> Option<&RedisCache> {
        self.remote.as_ref().map(|r| &*r.cache)
    }

    pub(crate) fn fs(&self) -> &FsCache {
        &self.fs
    }

    pub(crate) fn stats(&self) -> Vec<cache_core::LayerStats> {
        self.chain.stats()
    }

    /// The cache key of `id`'s runtime form compiled by Cranelift: computed without reading
    /// anything.
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

    /// The key of `id`'s runtime form compiled by Winch (`None` when the policy has no Winch).
    fn winch_key(&self, id: &ModuleId) -> Option<CacheKey> {
        let (_, fingerprint) = self.winch.as_ref()?;
        let key = self.key(id);
        Some(CacheKey::from_parts(
            key.module(),
            key.form(),
            key.abi(),
            Tier::Winch,
            *fingerprint,
        ))
    }

    /// The keys a load probes, in order, and the one a miss compiles first. A module Winch
    /// cannot compile (e.g. SIMD it lacks) is compiled with Cranelift under every policy, so
    /// `WinchOnly` probes Cranelift too (after Winch).
    fn keys(&self, id: &ModuleId) -> (Vec<CacheKey>, CacheKey) {
        let cranelift = self.key(id);
        match (self.policy, self.winch_key(id)) {
            (TierPolicy::WinchOnly, Some(winch)) => (vec![winch, cranelift], winch),
            (TierPolicy::WinchThenCranelift, Some(winch)) => (vec![cranelift, winch], winch),
            _ => (vec![cranelift], cranelift),
        }
    }

    fn engine_of(&self, tier: Tier) -> &Engine {
        match (tier, &self.winch) {
            (Tier::Winch, Some((winch, _))) => &winch.engine,
            _ => &self.engine,
        }
    }

    fn linker_of(&self, tier: Tier) -> &Linker<HostState> {
        match (tier, &self.winch) {
            (Tier::Winch, Some((winch, _))) => &winch.linker,
            _ => &self.linker,
        }
    }

    /// Modules by the tier of their latest load (Cranelift, Winch).
    pub(crate) fn modules_per_tier(&self) -> (u64, u64) {
        let tiers = self.tiers.read();
        let winch = tiers.values().filter(|t| **t == Tier::Winch).count() as u64;
        (tiers.len() as u64 - winch, winch)
    }

    /// The tier-up counters: (done, queued or running, dropped by a full queue, failed).
    pub(crate) fn tier_up_stats(&self) -> (u64, u64, u64, u64) {
        match &self.tier_up {
            None => (0, 0, 0, 0),
            Some(t) => (
                t.shared.done.load(Ordering::Relaxed),
                *t.shared.pending.lock(),
                t.shared.dropped.load(Ordering::Relaxed),
                t.shared.failed.load(Ordering::Relaxed),
            ),
        }
    }

    /// Modules found over the compile budget since the VM opened.
    pub(crate) fn over_budget(&self) -> u64 {
        self.over_budget.lock().len() as u64
    }

    /// Checks `cost` against the Cranelift compile budget; a module over it is noted, with a
    /// warning the first time.
    pub(crate) fn check_budget(&self, id: &ModuleId, cost: &CompileCost) -> Result<(), OverBudget> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        budget.check(cost).inspect_err(|over| {
            if self.over_budget.lock().insert(*id) {
                if self.policy == TierPolicy::CraneliftOnly {
                    tracing::warn!(module = %id, %over, "refused: over the Cranelift compile budget");
                } else {
                    tracing::warn!(
                        module = %id,
                        %over,
                        "over the Cranelift compile budget: Winch only, never tiered up"
                    );
                }
            }
        })
    }

    /// Waits up to `timeout` until the tier-up queue is empty and no compile runs; whether it
    /// is (true without a tier-up thread).
    pub(crate) fn wait_tier_up(&self, timeout: Duration) -> bool {
        let Some(t) = &self.tier_up else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let mut pending = t.shared.pending.lock();
        while *pending > 0 {
            if t.shared.idle.wait_until(&mut pending, deadline).timed_out() {
                return *pending == 0;
            }
        }
        true
    }

    /// Queues the Cranelift compile of `id` (once per module while queued or running), unless
    /// its `cost` is over the budget: the one way into the tier-up thread.
    fn queue_tier_up(&self, id: &ModuleId, runtime: Vec<u8>, cost: &CompileCost) {
        let (Some(t), Some(winch)) = (&self.tier_up, self.winch_key(id)) else {
            return;
        };
        if self.check_budget(id, cost).is_err() {
            return;
        }
        t.queue(Job {
            id: *id,
            cranelift: self.key(id),
            winch,
            runtime,
        });
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
        let (keys, first) = self.keys(id);
        let compiles_before = self.compiles.load(Ordering::Acquire);
        let (key, module) = match self.chain.load_first(&keys).ok().flatten() {
            Some((key, module)) => {
                // A Winch artifact from a cache: its Cranelift compile was lost (a restart, a
                // full queue) or is under way; queue it (again), once per module.
                if key.tier() == Tier::Winch
                    && let Some(t) = &self.tier_up
                    && !t.shared.queued.lock().contains(id)
                    && !self.over_budget.lock().contains(id)
                {
                    match runtime_form(id, source) {
                        Ok((runtime, cost)) => self.queue_tier_up(id, runtime, &cost),
                        Err(e) => tracing::warn!(module = %id, error = %e, "no tier-up"),
                    }
                }
                (key, module)
            }
            None => match self.compile_once(id, &first, source, compiles_before) {
                Ok(module) => (first, module),
                Err(VmError::InvalidModule(e)) if first.tier() == Tier::Winch => {
                    tracing::info!(module = %id, error = %e, "winch cannot compile it: cranelift");
                    let key = self.key(id);
                    (key, self.compile_once(id, &key, source, compiles_before)?)
                }
                Err(e) => return Err(e),
            },
        };
        if self.tiers.read().get(id) != Some(&key.tier()) {
            self.tiers.write().insert(*id, key.tier());
        }
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
                    .linker_of(key.tier())
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
        // Winch compiles here at once: a lease would make a loser wait for what it compiles in
        // milliseconds.
        let Some(remote) = self
            .remote
            .as_ref()
            .filter(|_| key.tier() == Tier::Cranelift)
        else {
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
        let (runtime, cost) = runtime_form(id, source)?;
        if key.tier() == Tier::Cranelift {
            self.check_budget(id, &cost)?;
        }
        let module =
            Module::new(self.engine_of(key.tier()), &runtime).map_err(VmError::invalid_wasmtime)?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if key.tier() == Tier::Winch {
            self.winch_compiles.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(module = %id, tier = %key.tier(), ms = start.elapsed().as_millis() as u64, "compiled");
        // A cache that cannot take the module costs a recompile later, never this call.
        let _ = self.chain.save(key, &module);
        if key.tier() == Tier::Winch {
            self.queue_tier_up(id, runtime, &cost);
        }
        Ok(module)
    }

    /// Pins `loaded`, the best tier available. A Winch module is replaced by its Cranelift
    /// form when the tier-up saves it (here if it did already: the tier-up pins Cranelift only
    /// if it sees Winch pinned, and saves Cranelift before it looks).
    pub(crate) fn pin(&self, loaded: &Loaded) {
        self.pinned.pin(loaded.key, loaded.module.clone());
        if loaded.key.tier() == Tier::Winch {
            let key = loaded.key;
            let cranelift = CacheKey::from_parts(
                key.module(),
                key.form(),
                key.abi(),
                Tier::Cranelift,
                self.fingerprint,
            );
            if let Ok(Some(module)) = self.lru.load(&cranelift) {
                self.pinned.pin(cranelift, module);
                self.pinned.unpin(&loaded.key);
            }
        }
    }

    pub(crate) fn unpin(&self, id: &ModuleId) -> bool {
        let winch = self
            .winch_key(id)
            .is_some_and(|key| self.pinned.unpin(&key));
        self.pinned.unpin(&self.key(id)) || winch
    }

    pub(crate) fn is_pinned(&self, id: &ModuleId) -> bool {
        self.pinned.is_pinned(&self.key(id))
            || self
                .winch_key(id)
                .is_some_and(|key| self.pinned.is_pinned(&key))
    }
}

/// The runtime form of `id` from `source` (stored bytecode is checked against the id) and the
/// estimate of its Cranelift compile cost (of the original bytecode: the rewrite leaves the
/// code section as it is).
fn runtime_form(id: &ModuleId, source: Source<'_>) -> Result<(Vec<u8>, CompileCost), VmError> {
    match source {
        Source::Stored(read) => {
            let wasm = read()?;
            check_bytecode(id, &wasm)?;
            let shape = rewrite::shape(&wasm)?;
            Ok((rewrite::rewrite(&wasm, &shape, Form::Runtime)?, shape.cost))
        }
        Source::Checked { wasm, shape } => {
            Ok((rewrite::rewrite(wasm, shape, Form::Runtime)?, shape.cost))
        }
    }
}

/// A Cranelift compile for the tier-up thread.
struct Job {
    id: ModuleId,
    cranelift: CacheKey,
    winch: CacheKey,
    /// The runtime form (already checked against the id and rewritten).
    runtime: Vec<u8>,
}

/// The tier-up thread's handle: a bounded queue; the thread ends when the loader is dropped.
struct TierUp {
    jobs: SyncSender<Job>,
    shared: Arc<TierUpShared>,
}

struct TierUpShared {
    engine: Engine,
    chain: Arc<Chain>,
    pinned: Arc<PinnedCache>,
    lru: Arc<LruCache>,
    fs: Arc<FsCache>,
    remote: Option<Remote>,
    compiles: Arc<AtomicU64>,
    /// Jobs queued or running; `idle` is notified when it drops to zero.
    pending: Mutex<u64>,
    idle: Condvar,
    /// Modules queued or running, so that each is queued once.
    queued: Mutex<HashSet<ModuleId>>,
    done: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// Holds the thread between taking a job and compiling it (tests of the queue's bound).
    #[cfg(test)]
    gate: Gate,
}

/// A gate the tier-up thread passes after taking a job: closed, it holds that job, so the
/// queue fills by its bound alone, whatever the timing.
#[cfg(test)]
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

#[cfg(test)]
impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock() = closed;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock();
        while *closed {
            self.opened.wait(&mut closed);
        }
    }
}

impl TierUp {
    fn start(shared: Arc<TierUpShared>, bound: usize) -> TierUp {
        let (jobs, receiver) = std::sync::mpsc::sync_channel(bound.max(1));
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-tier-up".into())
            .spawn(move || worker.run(receiver));
        if let Err(e) = spawned {
            // Without the thread every job is dropped (counted): modules stay on Winch.
            tracing::warn!(error = %e, "no tier-up thread");
        }
        TierUp { jobs, shared }
    }

    fn queue(&self, job: Job) {
        let id = job.id;
        if !self.shared.queued.lock().insert(id) {
            return;
        }
        *self.shared.pending.lock() += 1;
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // A later load of the module, still on Winch, queues it again.
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.queued.lock().remove(&id);
                self.shared.finish_one();
            }
        }
    }
}

impl TierUpShared {
    fn run(&self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            #[cfg(test)]
            self.gate.pass();
            self.tier_up(&job);
            self.queued.lock().remove(&job.id);
            self.finish_one();
        }
    }

    fn finish_one(&self) {
        let mut pending = self.pending.lock();
        *pending -= 1;
        if *pending == 0 {
            self.idle.notify_all();
        }
    }

    fn tier_up(&self, job: &Job) {
        let start = Instant::now();
        let module = match self.compile_in_fleet(job) {
            Ok(module) => module,
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(module = %job.id, error = %e, "the Cranelift compile failed");
                return;
            }
        };
        // Saved (by `compile_in_fleet`) before the pin check: see `Loader::pin`.
        if self.pinned.is_pinned(&job.winch) {
            self.pinned.pin(job.cranelift, module);
            self.pinned.unpin(&job.winch);
        }
        // Later loads find Cranelift first in every layer; the Winch artifact leaves memory
        // (its file stays, under the file cache's byte limit, until the limit evicts it).
        let _ = self.lru.remove(&job.winch);
        self.done.fetch_add(1, Ordering::Relaxed);
        tracing::info!(module = %job.id, ms = start.elapsed().as_millis() as u64, "tiered up");
    }

    /// Compiles with Cranelift and saves through the layers, or with a remote layer takes the
    /// fleet's artifact: under the lease one node compiles; in the background a loser simply
    /// waits for it.
    fn compile_in_fleet(&self, job: &Job) -> Result<Module, wasmtime::Error> {
        let compile = || {
            let module = Module::new(&self.engine, &job.runtime)?;
            self.compiles.fetch_add(1, Ordering::Relaxed);
            // A layer that cannot take it costs a later compile, never a call.
            let _ = self.chain.save(&job.cranelift, &module);
            Ok(module)
        };
        let Some(remote) = &self.remote else {
            return compile();
        };
        let fetched = || {
            let module = remote.cache.load(&job.cranelift).ok().flatten()?;
            let _ = self.fs.save(&job.cranelift, &module);
            let _ = self.lru.save(&job.cranelift, &module);
            Some(module)
        };
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match remote.cache.try_acquire(&job.cranelift) {
                LeaseAttempt::Won(lease) => {
                    // Released after `compile` queued the upload: a waiting node then finds it.
                    let result = fetched().map_or_else(compile, Ok);
                    lease.release();
                    return result;
                }
                LeaseAttempt::Held => {
                    let left = remote.max_lease_wait.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return compile();
                    }
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(MAX_POLL);
                    if let Some(module) = fetched() {
                        return Ok(module);
                    }
                }
                _ => return compile(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Value, Vm, VmConfig};

    #[test]
    fn a_full_tier_up_queue_drops_and_later_loads_queue_again_until_all_are_on_cranelift() {
        const MODULES: u64 = 4;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = VmConfig {
            tier: TierPolicy::WinchThenCranelift,
            tier_up_queue: 1,
            ..VmConfig::for_tests()
        };
        let vm = Vm::open(dir.path(), config).expect("vm");
        let gate = &vm
            .inner
            .loader
            .tier_up
            .as_ref()
            .expect("tier-up")
            .shared
            .gate;
        // Closed, the thread holds at most the one job it took: the queue's bound alone
        // decides what is dropped.
        gate.set(true);
        let mut root = None;
        let mut ids = Vec::new();
        for n in 0..MODULES {
            let wasm = wat::parse_str(format!(
                r#"(module (func (export "f") (result i32) (i32.const {n})))"#
            ))
            .expect("wat");
            let (id, r) = vm.deploy(&wasm).expect("deploys");
            ids.push(id);
            root = Some(r);
        }
        let tiers = vm.stats().tiers;
        // One job held by the thread (or still in the queue), at most one in the queue.
        assert!(tiers.dropped >= MODULES - 2, "{tiers:?}");
        assert_eq!(tiers.dropped + tiers.queue_depth, MODULES, "{tiers:?}");
        assert_eq!(tiers.winch_modules, MODULES, "{tiers:?}");
        gate.set(false);
        let load_all = || {
            let mut session = vm.session(root).expect("session");
            for (n, id) in ids.iter().enumerate() {
                let result = session.call(id, "f", &[]).expect("call");
                assert_eq!(result, vec![Value::I32(n as i32)]);
            }
        };
        // Each round queues every module still on Winch; at least the first one queued after
        // an idle wait fits, so every round tiers up at least one.
        for _ in 0..MODULES {
            assert!(vm.wait_tier_up(Duration::from_secs(120)));
            load_all();
        }
        assert!(vm.wait_tier_up(Duration::from_secs(120)));
        load_all();
        let tiers = vm.stats().tiers;
        assert_eq!(tiers.tier_ups, MODULES, "{tiers:?}");
        assert_eq!(
            (tiers.cranelift_modules, tiers.winch_modules),
            (MODULES, 0),
            "{tiers:?}"
        );
        assert!(tiers.dropped >= MODULES - 2, "{tiers:?}");
        assert_eq!((tiers.failed, tiers.over_budget), (0, 0), "{tiers:?}");
    }

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
