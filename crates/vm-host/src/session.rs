//! [`Session`]: deploys and calls over one base commit, ending in at most one commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use rustc_hash::FxBuildHasher;

use store_index::{Bytecode, ModuleId, Namespace, Root};
use wasmtime::{Instance, Module, ValRaw};

use crate::host::{self, GlobalValue, HostBlob, HostState};
use crate::loader::{Loaded, Source};
use crate::memory::{self, GUARD, RESERVATION};
use crate::rewrite::{self, Form, MEMORY_EXPORT, RESERVED_PREFIX};
use crate::{ModuleError, Phase, TierPolicy, Value, ValueType, Vm, VmError, WasmtimeError};

/// A point a [`Session`] can return to ([`Session::savepoint`]).
pub struct Savepoint(store_commit::Checkpoint);

/// A module instantiated in this session.
struct Live {
    store: wasmtime::Store<HostState>,
    instance: Instance,
    loaded: Loaded,
    /// The instance's mutable globals, resolved once at instantiation.
    global_handles: Vec<(u32, wasmtime::Global)>,
    /// The mutable globals after the last successful call.
    globals: Vec<(u32, GlobalValue)>,
    /// Exported functions called so far, looked up once per instance, not at every call: at
    /// most one entry per export, found by name through `func_index`.
    funcs: Vec<(Box<str>, Export)>,
    func_index: HashMap<Box<str>, usize, FxBuildHasher>,
    /// The entry of `funcs` the latest call used: a repeated call compares one name and hashes
    /// nothing.
    last_func: usize,
    /// The argument and result buffer of `Func::call_unchecked`, reused by every call.
    raw: Vec<ValRaw>,
}

/// An exported function of a live instance.
struct Export {
    func: wasmtime::Func,
    /// The function's own parameter and result types, read from it at lookup (a function with
    /// other than number types is refused there).
    params: Box<[ValueType]>,
    results: Box<[ValueType]>,
    /// No call of it can change the session's state ([`rewrite::Shape::read_only`]): it runs
    /// without a checkpoint, and the globals are not read back after it.
    read_only: bool,
}

/// The host state of a module this session touched.
enum Slot {
    Live(Box<Live>),
    /// Not instantiated (again, after a failed call): the state to restore from.
    Idle(HostBlob),
}

/// The fuel the last call of a session consumed, or where to read it.
#[derive(Debug, Clone, Copy)]
enum LastFuel {
    /// No call has run.
    None,
    Known(u64),
    /// The last call succeeded in the hot module's store, given this much fuel: it consumed
    /// that minus what the store has left, read when asked (or when the module is parked),
    /// not after every call.
    InHot(u64),
}

/// A session over one base commit: deploys, calls, and at most one commit at the end.
///
/// Dropping a session without committing discards everything it did. A session is `Send`:
/// many sessions run at once on different threads.
pub struct Session {
    vm: Vm,
    inner: store_commit::Session,
    /// The module of the latest call, kept out of `modules` so that the next call of it finds
    /// it without a lookup. A module is in `hot` or in `modules`, never in both.
    hot: Option<(ModuleId, Box<Live>)>,
    modules: HashMap<ModuleId, Slot, FxBuildHasher>,
    fuel: Option<u64>,
    /// The fuel the last call consumed.
    last_fuel: LastFuel,
}

fn call_error(err: wasmtime::Error, fuel: u64, during: Phase) -> VmError {
    if let Some(e) = err.downcast_ref::<store_commit::StoreError>()
        && let Some(quota) = host::quota_error(e)
    {
        return quota;
    }
    let err = match err.downcast::<store_commit::StoreError>() {
        Ok(e) => return VmError::Store(e),
        Err(err) => err,
    };
    match err.downcast_ref::<wasmtime::Trap>() {
        // Also raised by a host function that cannot pay its cost.
        Some(wasmtime::Trap::OutOfFuel) => VmError::OutOfFuel(fuel),
        Some(trap) => VmError::Trap {
            during,
            trap: *trap,
        },
        // The host function's own message, without the wasm backtrace wasmtime wraps it in.
        None => VmError::Host(WasmtimeError::root(err)),
    }
}

impl Session {
    pub(crate) fn new(vm: Vm, base: Option<Root>) -> Result<Session, VmError> {
        let inner = vm.inner.store.session(base)?;
        Ok(Session {
            vm,
            inner,
            hot: None,
            modules: HashMap::default(),
            fuel: None,
            last_fuel: LastFuel::None,
        })
    }

    /// The commit this session started from.
    pub fn base(&self) -> Option<Root> {
        self.inner.base()
    }

    /// The modules deployed in this session's state.
    pub fn modules(&self) -> Vec<ModuleId> {
        self.inner.modules()
    }

    /// Sets the fuel of each following call (default: the VM's `default_fuel`).
    pub fn set_fuel(&mut self, fuel: u64) {
        self.fuel = Some(fuel);
    }

    /// The fuel the last call of this session that ran consumed (in wasm code and in host
    /// functions), whether it succeeded or failed; a call refused before it ran (unknown
    /// function, bad arguments) leaves it unchanged. `None` before the first call that ran.
    pub fn last_call_fuel(&self) -> Option<u64> {
        match self.last_fuel {
            LastFuel::None => None,
            LastFuel::Known(used) => Some(used),
            LastFuel::InHot(given) => self
                .hot
                .as_ref()
                .map(|(_, live)| given - live.store.get_fuel().unwrap_or(0)),
        }
    }

    /// Deploys `wasm`: validates it against the host ABI, runs its genesis initialisation
    /// (active data segments and start function) once, and stores the bytecode and the
    /// resulting state under its module id. The runtime form is compiled into the caches.
    /// A module whose estimated Cranelift compile cost ([`crate::CompileCost`]) is over
    /// [`crate::VmConfig::cranelift_budget`] is refused under [`TierPolicy::CraneliftOnly`]
    /// ([`VmError::OverCompileBudget`]) and otherwise runs on Winch only, never tiered up.
    ///
    /// The wasm is hashed once (its module id, [`Bytecode::hash`]), copied once (into that
    /// `Bytecode`, which the store keeps until commit), parsed once for its shape and rewritten
    /// once per form.
    pub fn deploy(&mut self, wasm: &[u8]) -> Result<ModuleId, VmError> {
        let code = Bytecode::hash(wasm);
        let id = code.id();
        if self.inner.contains(&id) {
            return Err(VmError::AlreadyDeployed(id));
        }
        let shape = rewrite::shape(wasm)?;
        self.vm.check_imports(&shape)?;
        let vm = &self.vm.inner;
        if shape.largest_table > vm.config.table_elements as u64 {
            return Err(VmError::InvalidModule(ModuleError::TableTooLarge {
                elements: shape.largest_table,
                limit: vm.config.table_elements,
            }));
        }
        // Over the Cranelift compile budget: refused when Cranelift is the only compiler, else
        // on Winch only (genesis too; the loader never queues its tier-up).
        let over_budget = vm.loader.check_budget(&id, &shape.cost).err();
        if let Some(over) = over_budget
            && vm.config.tier == TierPolicy::CraneliftOnly
        {
            return Err(over.into());
        }
        let limits = self.vm.limits();
        // Genesis writes go to the module's key-value space; a failed genesis leaves none.
        let kv = self.inner.kv(&Namespace::of_module(&id))?;
        let checkpoint = self.inner.checkpoint()?;
        // Genesis runs once: with a policy that uses Winch it runs on Winch (the tiers agree:
        // the differential test); a module Winch cannot compile runs on Cranelift (as its
        // runtime form will).
        let run_genesis = || -> Result<(Vec<u8>, HostBlob), VmError> {
            let genesis = rewrite::rewrite(wasm, &shape, Form::Genesis)?;
            let winch = vm.genesis_winch.as_ref().and_then(|(engine, linker)| {
                Some((engine, linker, Module::new(engine, &genesis).ok()?))
            });
            let (genesis_engine, genesis_linker, module) = match (winch, over_budget) {
                (Some(winch), _) => winch,
                (None, Some(over)) => return Err(over.into()),
                (None, None) => (
                    &vm.genesis_engine,
                    &vm.genesis_linker,
                    Module::new(&vm.genesis_engine, &genesis).map_err(VmError::invalid_wasmtime)?,
                ),
            };
            drop(genesis);
            let pre = genesis_linker
                .instantiate_pre(&module)
                .map_err(VmError::invalid_wasmtime)?;
            let state = HostState::new(kv, limits, &vm.config);
            let mut store = wasmtime::Store::new(genesis_engine, state);
            store.limiter(|s| &mut s.limits);
            store
                .set_fuel(vm.config.deploy_fuel)
                .map_err(VmError::wasmtime)?;
            let instance = pre
                .instantiate(&mut store)
                .map_err(|e| call_error(e, vm.config.deploy_fuel, Phase::Genesis))?;
            let image = match instance.get_memory(&mut store, MEMORY_EXPORT) {
                // The one copy of the genesis memory: the store takes this vector as it is.
                Some(memory) => memory.data(&store).to_vec(),
                None => Vec::new(),
            };
            let globals = host::exported_globals(&mut store, &instance, &shape.mutable_globals)
                .and_then(|exported| host::read_globals(&mut store, &exported))
                .map_err(VmError::corrupt_state(&id))?;
            Ok((image, HostBlob { globals }))
        };
        // The runtime form compiles (unless a cache has it) on a second thread while genesis
        // compiles and runs: the first call finds it, and a deploy takes the longer of the two
        // compiles, not their sum. (A genesis that fails leaves that artifact in the caches,
        // like a precompile.)
        let (genesis, runtime) = std::thread::scope(|scope| {
            let runtime = scope.spawn(|| {
                vm.loader.load(
                    &id,
                    Source::Checked {
                        wasm: code.bytes(),
                        shape: &shape,
                    },
                )
            });
            let genesis = run_genesis();
            let runtime = runtime
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (genesis, runtime)
        });
        let (image, blob) = match genesis {
            Ok(genesis) => genesis,
            Err(e) => {
                self.inner.rollback(&checkpoint)?;
                return Err(e);
            }
        };
        runtime?;
        self.inner.deploy(code.clone(), image, blob.encode())?;
        tracing::info!(module = %id, bytes = wasm.len(), "deployed");
        Ok(id)
    }

    /// The parameter and result types of `module`'s exported function `function`.
    pub fn signature(
        &mut self,
        module: &ModuleId,
        function: &str,
    ) -> Result<(Vec<ValueType>, Vec<ValueType>), VmError> {
        let loaded = self.load(module)?;
        let ty = Some(function)
            .filter(|f| !f.starts_with(RESERVED_PREFIX))
            .and_then(|f| loaded.module.get_export(f))
            .and_then(|e| e.func().cloned())
            .ok_or_else(|| VmError::UnknownFunction(function.to_owned()))?;
        let (params, results) = value_types(&ty)?;
        Ok((params.into_vec(), results.into_vec()))
    }

    /// Puts the hot module back among the others.
    fn park(&mut self) {
        if let Some((id, live)) = self.hot.take() {
            if let LastFuel::InHot(given) = self.last_fuel {
                self.last_fuel = LastFuel::Known(given - live.store.get_fuel().unwrap_or(0));
            }
            self.modules.insert(id, Slot::Live(live));
        }
    }

    fn load(&mut self, module: &ModuleId) -> Result<Loaded, VmError> {
        self.park();
        if let Some(Slot::Live(live)) = self.modules.get(module) {
            return Ok(live.loaded.clone());
        }
        if !self.inner.contains(module) {
            return Err(VmError::UnknownModule(*module));
        }
        let inner = &self.inner;
        let read = || Ok(inner.bytecode(module)?);
        self.vm.inner.loader.load(module, Source::Stored(&read))
    }

    /// Calls `function` of `module` with `args`. A call that fails (trap, out of fuel, host
    /// error) leaves no trace: memory, globals and key-value data are as before it.
    ///
    /// A call of an export that cannot change state (no function it reaches by direct calls
    /// writes memory or a global, calls a host function or calls indirectly; decided at the
    /// rewrite) takes no checkpoint and reads no globals back: on failure there is nothing to
    /// undo.
    pub fn call(
        &mut self,
        module: &ModuleId,
        function: &str,
        args: &[Value],
    ) -> Result<Vec<Value>, VmError> {
        let fuel = self.fuel.unwrap_or(self.vm.inner.config.default_fuel);
        if !matches!(&self.hot, Some((id, _)) if id == module) {
            self.ensure_live(module)?;
            let Some(Slot::Live(live)) = self.modules.remove(module) else {
                unreachable!("ensure_live made the module live");
            };
            self.hot = Some((*module, live));
        }
        let Some((_, live)) = &mut self.hot else {
            unreachable!("the module was made hot");
        };
        let Live {
            store,
            instance,
            loaded,
            global_handles,
            globals,
            funcs,
            func_index,
            last_func,
            raw,
        } = &mut **live;
        if funcs
            .get(*last_func)
            .is_none_or(|(name, _)| **name != *function)
        {
            *last_func = match func_index.get(function) {
                Some(index) => *index,
                None => {
                    let export = lookup(store, instance, loaded, function)?;
                    funcs.push((function.into(), export));
                    func_index.insert(function.into(), funcs.len() - 1);
                    funcs.len() - 1
                }
            };
        }
        let export = &funcs[*last_func].1;
        if export.params.len() != args.len()
            || export.params.iter().zip(args).any(|(p, a)| *p != a.ty())
        {
            let given: Vec<ValueType> = args.iter().map(Value::ty).collect();
            return Err(VmError::BadArguments(format!(
                "{function:?} takes ({}), given ({})",
                join(&export.params),
                join(&given)
            )));
        }
        let checkpoint = if export.read_only {
            None
        } else {
            Some(self.inner.call_checkpoint()?)
        };
        raw.clear();
        raw.extend(args.iter().copied().map(Value::to_raw));
        raw.resize(args.len().max(export.results.len()), ValRaw::i32(0));
        store.set_fuel(fuel).map_err(VmError::wasmtime)?;
        let buffer: *mut [ValRaw] = raw.as_mut_slice();
        // SAFETY: `func` was looked up in this store's instance; `buffer` is valid for the call
        // (`raw` is not touched meanwhile), starts with one value of each parameter's type (the
        // arguments' types equal `params`, the function's own, checked above) and has room for
        // every result; all are numbers, so there is no reference to keep alive, and the store
        // is synchronous, so the call is not inside an async one.
        let outcome = unsafe { export.func.call_unchecked(&mut *store, buffer) }
            .map_err(|e| call_error(e, fuel, Phase::Call));
        let outcome = match (outcome, export.read_only) {
            (Ok(()), true) => Ok(None),
            (Ok(()), false) => host::read_globals(store, global_handles)
                .map(Some)
                .map_err(VmError::corrupt_state(module)),
            (Err(err), _) => Err(err),
        };
        match outcome {
            Ok(written) => {
                self.last_fuel = LastFuel::InHot(fuel);
                if let Some(written) = written {
                    *globals = written;
                    store.data_mut().end_call();
                }
                self.vm.inner.calls.fetch_add(1, Ordering::Relaxed);
                let mut values = Vec::with_capacity(export.results.len());
                for (ty, raw) in export.results.iter().zip(raw.iter()) {
                    values.push(Value::from_raw(*ty, raw));
                }
                Ok(values)
            }
            Err(err) => {
                self.last_fuel = LastFuel::Known(fuel - store.get_fuel().unwrap_or(0));
                // Undo the call: memory (content and size) and key-value data (its undo log)
                // from the checkpoint, globals from the last good values; a read-only call has
                // nothing to undo. The instance is dropped, as wasmtime's view of the memory
                // size may be stale now.
                let Some((_, live)) = self.hot.take() else {
                    unreachable!("the module was hot");
                };
                let Live { globals, .. } = *live;
                self.modules
                    .insert(*module, Slot::Idle(HostBlob { globals }));
                if let Some(checkpoint) = checkpoint {
                    self.inner.rollback(&checkpoint)?;
                }
                Err(err)
            }
        }
    }

    /// Makes `module` live in `modules` (the hot module is parked first).
    fn ensure_live(&mut self, module: &ModuleId) -> Result<(), VmError> {
        self.park();
        if let Some(Slot::Live(_)) = self.modules.get(module) {
            return Ok(());
        }
        let loaded = self.load(module)?;
        let blob = match self.modules.remove(module) {
            Some(Slot::Idle(blob)) => blob,
            _ => HostBlob::decode(&self.inner.blob(module)?)
                .map_err(VmError::corrupt_state(module))?,
        };
        let restore = blob.clone();
        let result = self.instantiate(module, loaded, blob);
        match result {
            Ok(live) => {
                self.modules.insert(*module, Slot::Live(Box::new(live)));
                Ok(())
            }
            Err(err) => {
                self.modules.insert(*module, Slot::Idle(restore));
                Err(err)
            }
        }
    }

    fn instantiate(
        &mut self,
        module: &ModuleId,
        loaded: Loaded,
        blob: HostBlob,
    ) -> Result<Live, VmError> {
        let vm = &self.vm.inner;
        let handle = if loaded.shape.has_memory {
            Some(self.inner.memory(module, RESERVATION + GUARD)?)
        } else {
            None
        };
        let kv = self.inner.kv(&Namespace::of_module(module))?;
        let state = HostState::new(kv, self.vm.limits(), &vm.config);
        // The engine of the module's tier.
        let mut store = wasmtime::Store::new(loaded.module.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Instantiation evaluates element expressions (`ref.func` of a passive segment) as
        // compiled code, which consumes fuel: give it the budget of a call (each call sets its
        // own fuel again).
        store
            .set_fuel(self.fuel.unwrap_or(vm.config.default_fuel))
            .map_err(VmError::wasmtime)?;
        let instance = memory::with_next_memory(handle, || loaded.pre.instantiate(&mut store))
            .map_err(VmError::wasmtime)?;
        let global_handles =
            host::exported_globals(&mut store, &instance, &loaded.shape.mutable_globals)
                .and_then(|handles| {
                    host::write_globals(&mut store, &handles, &blob.globals)?;
                    Ok(handles)
                })
                .map_err(VmError::corrupt_state(module))?;
        vm.instantiations.fetch_add(1, Ordering::Relaxed);
        Ok(Live {
            store,
            instance,
            loaded,
            global_handles,
            globals: blob.globals,
            funcs: Vec::new(),
            func_index: HashMap::default(),
            last_func: 0,
            raw: Vec::new(),
        })
    }

    /// Reads `len` bytes of `module`'s memory at `offset` as the session sees it.
    pub fn read_memory(
        &mut self,
        module: &ModuleId,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u8>, VmError> {
        self.ensure_live(module)?;
        let Some(Slot::Live(live)) = self.modules.get_mut(module) else {
            unreachable!("ensure_live made the module live");
        };
        let memory = live
            .instance
            .get_memory(&mut live.store, MEMORY_EXPORT)
            .ok_or(VmError::NoMemory(*module))?;
        let mut buf = vec![0; len];
        memory
            .read(&live.store, offset, &mut buf)
            .map_err(|_| VmError::BadArguments(format!("{offset}+{len} is out of bounds")))?;
        Ok(buf)
    }

    /// The value `module` stores under `key`, as the session sees it.
    pub fn kv_get(&mut self, module: &ModuleId, key: &[u8]) -> Result<Option<Vec<u8>>, VmError> {
        Ok(self.kv(module)?.get(key)?)
    }

    /// `module`'s key-value space as the session sees it (reads, range scans, and writes that
    /// the next commit stores).
    pub fn kv(&mut self, module: &ModuleId) -> Result<store_commit::KvHandle, VmError> {
        if !self.inner.contains(module) {
            return Err(VmError::UnknownModule(*module));
        }
        Ok(self.inner.kv(&Namespace::of_module(module))?)
    }

    /// The key-value space `namespace` as the session sees it: for ABIs built on the host that
    /// name their own spaces (vm-cosmwasm keys a contract's space by its address,
    /// [`Namespace::named`]). Its data is committed with the session and covered by the root.
    pub fn kv_space(&mut self, namespace: &Namespace) -> Result<store_commit::KvHandle, VmError> {
        Ok(self.inner.kv(namespace)?)
    }

    /// A point the session's key-value spaces and deploys can [`rollback_to`](Self::rollback_to)
    /// (for ABIs built on the host, whose failed calls must leave no trace). Only for sessions
    /// that have instantiated no module of the host's own ABI: their live state is not covered,
    /// so such a session is refused with [`VmError::BadArguments`].
    pub fn savepoint(&mut self) -> Result<Savepoint, VmError> {
        self.refuse_live_modules()?;
        Ok(Savepoint(self.inner.checkpoint()?))
    }

    /// Returns the session's key-value spaces and deploys to `savepoint`; spaces opened after
    /// it return to their committed state.
    pub fn rollback_to(&mut self, savepoint: &Savepoint) -> Result<(), VmError> {
        self.refuse_live_modules()?;
        Ok(self.inner.rollback(&savepoint.0)?)
    }

    fn refuse_live_modules(&self) -> Result<(), VmError> {
        if self.hot.is_some() || self.modules.values().any(|s| matches!(s, Slot::Live(_))) {
            return Err(VmError::BadArguments(
                "savepoints need a session that has instantiated no module of the host ABI".into(),
            ));
        }
        Ok(())
    }

    /// Commits the session's state and returns its root (an existing commit's root when the
    /// state equals it).
    pub fn commit(mut self) -> Result<Root, VmError> {
        self.park();
        for (id, slot) in std::mem::take(&mut self.modules) {
            let blob = match slot {
                Slot::Live(live) => HostBlob {
                    globals: live.globals,
                },
                Slot::Idle(blob) => blob,
            };
            self.inner.set_blob(&id, blob.encode())?;
        }
        let root = self.inner.commit()?;
        self.vm.inner.commits.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%root, "committed");
        Ok(root)
    }
}

/// Parameter and result types.
type Signature = (Box<[ValueType]>, Box<[ValueType]>);

/// The parameter and result types of `ty`; an error if one is not a number type.
fn value_types(ty: &wasmtime::FuncType) -> Result<Signature, VmError> {
    let params = ty
        .params()
        .map(|p| ValueType::from_wasmtime(&p))
        .collect::<Result<_, _>>()?;
    let results = ty
        .results()
        .map(|r| ValueType::from_wasmtime(&r))
        .collect::<Result<_, _>>()?;
    Ok((params, results))
}

/// Looks `function` up among the instance's exports (not the host's own, `__strata_`), with its
/// types and whether it is read-only.
fn lookup(
    store: &mut wasmtime::Store<HostState>,
    instance: &Instance,
    loaded: &Loaded,
    function: &str,
) -> Result<Export, VmError> {
    let func = if function.starts_with(RESERVED_PREFIX) {
        None
    } else {
        instance.get_func(&mut *store, function)
    }
    .ok_or_else(|| VmError::UnknownFunction(function.to_owned()))?;
    // A result the caller cannot be given is refused before the call runs, like a parameter.
    let (params, results) = value_types(&func.ty(&*store))?;
    Ok(Export {
        func,
        params,
        results,
        read_only: loaded.shape.read_only.contains(function),
    })
}

fn join(types: &[ValueType]) -> String {
    types
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
