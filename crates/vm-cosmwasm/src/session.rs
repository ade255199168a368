//! [`CwSession`]: store_code, instantiate, execute, query, migrate, sudo and reply over one
//! base commit, ending in at most one commit.

use std::sync::Arc;

use cosmwasm_std::{
    Addr, Binary, BlockInfo, Coin, ContractInfo, ContractInfoResponse, ContractResult, Env,
    MessageInfo, MigrateInfo, Response, SystemError, SystemResult, TransactionInfo, WasmQuery,
};
use parking_lot::Mutex;
use store_commit::KvHandle;
use vm_host::Root;

use crate::backend::{BackendError, BackendResult};
use crate::backends::{DefaultQuerier, KvStorage, WasmQuerier};
use crate::env::Environment;
use crate::gas::GasInfo;
use crate::registry::{self, ContractRecord};
use crate::runtime::{GasReport, Instance};
use crate::{CallFailure, CwError, CwVm, FailureKind, check, metering};

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The most bytes an entry point may return (cosmwasm-vm's read limit for results).
const MAX_RESULT: usize = 64 << 20;

/// How deep contract queries may nest (a query from a query from a call...).
pub const MAX_QUERY_DEPTH: usize = 5;

/// Who calls, with what, in which block, and the gas of the call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The block the call runs in.
    pub block: BlockInfo,
    /// The transaction's position in the block, if any.
    pub transaction: Option<TransactionInfo>,
    /// The sender (ignored by query and sudo).
    pub sender: String,
    /// Funds sent with the call (ignored by query, sudo and migrate).
    pub funds: Vec<Coin>,
    /// The call's gas limit (in CosmWasm gas).
    pub gas_limit: u64,
}

impl CallContext {
    /// A context for `sender` in a fixed block (cosmwasm-std's `mock_env` block: height 12,345,
    /// chain id `cosmos-testnet-14002`), with no funds and `gas_limit`.
    pub fn new(sender: impl Into<String>, gas_limit: u64) -> CallContext {
        CallContext {
            block: BlockInfo {
                height: 12_345,
                time: cosmwasm_std::Timestamp::from_nanos(1_571_797_419_879_305_533),
                chain_id: "cosmos-testnet-14002".to_string(),
            },
            transaction: Some(TransactionInfo::new(3, Binary::default())),
            sender: sender.into(),
            funds: Vec::new(),
            gas_limit,
        }
    }
}

/// What a call returned and what it cost.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The contract's raw result (the JSON of its `ContractResult`), or why the call failed in
    /// the VM (out of gas, trap, abort...). A contract error is `Ok` bytes holding `{"error":..}`.
    pub result: Result<Vec<u8>, CallFailure>,
    /// The call's gas.
    pub gas: GasReport,
}

impl CallOutcome {
    /// Whether the call succeeded (a VM success and a contract `ok`).
    pub fn is_ok(&self) -> bool {
        match &self.result {
            Ok(bytes) => contract_ok(bytes),
            Err(_) => false,
        }
    }

    /// The result as text, for display.
    pub fn text(&self) -> String {
        match &self.result {
            Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Err(f) => format!("error: {f}"),
        }
    }
}

fn contract_ok(bytes: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<ContractResult<serde_json::Value>>(bytes),
        Ok(ContractResult::Ok(_))
    )
}

/// A session of CosmWasm calls over one base commit. Dropping it without
/// [`commit`](Self::commit) discards everything it did; a failed call leaves no trace in it.
pub struct CwSession {
    vm: CwVm,
    host: Arc<Mutex<vm_host::Session>>,
    registry: KvHandle,
}

impl CwSession {
    pub(crate) fn new(vm: CwVm, base: Option<Root>) -> Result<CwSession, CwError> {
        let mut host = vm.inner.host.session(base)?;
        let registry = host.kv_space(&registry::namespace())?;
        Ok(CwSession {
            vm,
            host: Arc::new(Mutex::new(host)),
            registry,
        })
    }

    /// Checks `wasm` as cosmwasm-vm's `check_wasm` does, stores it under a new code id and
    /// compiles its metered form into the caches. Returns the code id and the checksum.
    pub fn store_code(&mut self, wasm: &[u8]) -> Result<(u64, [u8; 32]), CwError> {
        let capabilities = &self.vm.inner.config.capabilities;
        let runtime = &self.vm.inner.runtime;
        let checksum: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(wasm).into();
        if runtime.cached(&checksum)?.is_some() {
            check::check_wasm(wasm, capabilities).map_err(CwError::Check)?;
        } else {
            // The check and the metering rewrite each read the whole module: run them side by
            // side. The check's verdict comes first, as if they ran in turn.
            let form = runtime.deploy_form();
            let (checked, metered) = std::thread::scope(|scope| {
                let metered = scope.spawn(|| metering::instrument(wasm, form));
                let checked = check::check_wasm(wasm, capabilities);
                let metered = metered
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (checked, metered)
            });
            checked.map_err(CwError::Check)?;
            runtime.compile(&checksum, wasm, metered.map_err(CwError::Check)?)?;
        }
        let code_id = registry::store_code(&self.registry, checksum, wasm)?;
        Ok((code_id, checksum))
    }

    /// The wasm stored under `checksum`.
    pub fn wasm(&self, checksum: &[u8; 32]) -> Result<Vec<u8>, CwError> {
        registry::wasm(&self.registry, checksum)
    }

    /// The contracts of this session's state, by address.
    pub fn contracts(&self) -> Result<Vec<(String, ContractRecord)>, CwError> {
        registry::contracts(&self.registry)
    }

    /// The record of the contract at `address`.
    pub fn contract(&self, address: &str) -> Result<ContractRecord, CwError> {
        registry::contract(&self.registry, address)
    }

    /// The whole storage of the contract at `address`, sorted by key.
    pub fn storage(&mut self, address: &str) -> Result<Vec<Entry>, CwError> {
        registry::contract(&self.registry, address)?;
        let space = self
            .host
            .lock()
            .kv_space(&registry::contract_namespace(address))?;
        let mut out = Vec::new();
        for entry in space.range(None, None, store_commit::Order::Ascending)? {
            out.push(entry?);
        }
        Ok(out)
    }

    /// Instantiates code `code_id` at a new address (wasmd's classic derivation,
    /// [`registry::classic_address`]) and calls its `instantiate`. On failure nothing is kept,
    /// the address included.
    pub fn instantiate(
        &mut self,
        ctx: &CallContext,
        code_id: u64,
        msg: &[u8],
        label: &str,
        admin: Option<&str>,
    ) -> Result<(String, CallOutcome), CwError> {
        let code = registry::code(&self.registry, code_id)?;
        let savepoint = self.host.lock().savepoint()?;
        let instance_id = registry::next_instance(&self.registry)?;
        let address =
            registry::classic_address(&self.vm.inner.config.bech32_prefix, code_id, instance_id)?;
        if registry::has_contract(&self.registry, &address)? {
            self.host.lock().rollback_to(&savepoint)?;
            return Err(CwError::BadInput(format!(
                "a contract already lives at {address}"
            )));
        }
        let record = ContractRecord {
            code_id,
            creator: ctx.sender.clone(),
            admin: admin.map(str::to_owned),
            label: label.to_owned(),
        };
        registry::set_contract(&self.registry, &address, &record)?;
        let env = self.env(ctx, &address)?;
        let info = info_json(ctx)?;
        let outcome = self.run(
            ctx,
            &address,
            &code.checksum,
            false,
            "instantiate",
            &[&env, &info, msg],
        )?;
        self.settle(&savepoint, &outcome)?;
        Ok((address, outcome))
    }

    /// Calls `execute` of the contract at `address`.
    pub fn execute(
        &mut self,
        ctx: &CallContext,
        address: &str,
        msg: &[u8],
    ) -> Result<CallOutcome, CwError> {
        self.writing_call(ctx, address, "execute", true, msg)
    }

    /// Calls `sudo` of the contract at `address` (the chain's privileged entry point).
    pub fn sudo(
        &mut self,
        ctx: &CallContext,
        address: &str,
        msg: &[u8],
    ) -> Result<CallOutcome, CwError> {
        self.writing_call(ctx, address, "sudo", false, msg)
    }

    /// Calls `reply` of the contract at `address` with the JSON `Reply` `msg`.
    pub fn reply(
        &mut self,
        ctx: &CallContext,
        address: &str,
        msg: &[u8],
    ) -> Result<CallOutcome, CwError> {
        self.writing_call(ctx, address, "reply", false, msg)
    }

    /// A call that may write: `entry` of the contract at `address` with `(env, [info,] msg)`,
    /// after a savepoint it rolls back to when the call fails.
    fn writing_call(
        &mut self,
        ctx: &CallContext,
        address: &str,
        entry: &str,
        with_info: bool,
        msg: &[u8],
    ) -> Result<CallOutcome, CwError> {
        let record = registry::contract(&self.registry, address)?;
        let code = registry::code(&self.registry, record.code_id)?;
        let savepoint = self.host.lock().savepoint()?;
        let env = self.env(ctx, address)?;
        let info = if with_info {
            info_json(ctx)?
        } else {
            Vec::new()
        };
        let args: &[&[u8]] = if with_info {
            &[&env, &info, msg]
        } else {
            &[&env, msg]
        };
        let outcome = self.run(ctx, address, &code.checksum, false, entry, args)?;
        self.settle(&savepoint, &outcome)?;
        Ok(outcome)
    }

    /// Makes a fresh instance of the contract at `address`, ready for a call, and drops it:
    /// the cost every call pays before the contract runs (cosmwasm-vm's `get_instance`), for
    /// benchmarks and warm-up.
    pub fn prepare_instance(&mut self, ctx: &CallContext, address: &str) -> Result<(), CwError> {
        let record = registry::contract(&self.registry, address)?;
        let code = registry::code(&self.registry, record.code_id)?;
        self.instance(ctx, address, &code.checksum, false, 0)
            .map(drop)
    }

    /// Calls `query` of the contract at `address`, read-only: a write fails the call.
    pub fn query(
        &mut self,
        ctx: &CallContext,
        address: &str,
        msg: &[u8],
    ) -> Result<CallOutcome, CwError> {
        let record = registry::contract(&self.registry, address)?;
        let code = registry::code(&self.registry, record.code_id)?;
        let env = self.env(ctx, address)?;
        self.run(ctx, address, &code.checksum, true, "query", &[&env, msg])
    }

    /// Migrates the contract at `address` to code `new_code_id` (only its admin may) and calls
    /// the new code's `migrate` (with `MigrateInfo` when it takes three arguments). The
    /// contract keeps its storage; on failure it keeps its code too.
    pub fn migrate(
        &mut self,
        ctx: &CallContext,
        address: &str,
        new_code_id: u64,
        msg: &[u8],
    ) -> Result<CallOutcome, CwError> {
        let mut record = registry::contract(&self.registry, address)?;
        if record.admin.as_deref() != Some(ctx.sender.as_str()) {
            return Err(CwError::Unauthorized(format!(
                "{} is not the admin of {address}",
                ctx.sender
            )));
        }
        let old = registry::code(&self.registry, record.code_id)?;
        let code = registry::code(&self.registry, new_code_id)?;
        let savepoint = self.host.lock().savepoint()?;
        record.code_id = new_code_id;
        registry::set_contract(&self.registry, address, &record)?;
        let env = self.env(ctx, address)?;
        let old_wasm = registry::wasm(&self.registry, &old.checksum)?;
        let info = serde_json::to_vec(&MigrateInfo {
            sender: Addr::unchecked(&ctx.sender),
            old_migrate_version: migrate_version(&old_wasm),
        })
        .map_err(|e| CwError::BadInput(e.to_string()))?;
        let outcome = self.run_migrate(ctx, address, &code.checksum, &env, msg, &info)?;
        self.settle(&savepoint, &outcome)?;
        Ok(outcome)
    }

    /// Commits the session's state and returns its root.
    pub fn commit(self) -> Result<Root, CwError> {
        let host = Arc::try_unwrap(self.host)
            .map_err(|_| CwError::BadInput("the session is still in use".into()))?
            .into_inner();
        Ok(host.commit()?)
    }

    /// Keeps a successful call's effects; rolls a failed one back.
    fn settle(
        &mut self,
        savepoint: &vm_host::Savepoint,
        outcome: &CallOutcome,
    ) -> Result<(), CwError> {
        if !outcome.is_ok() {
            self.host.lock().rollback_to(savepoint)?;
        }
        Ok(())
    }

    fn env(&self, ctx: &CallContext, address: &str) -> Result<Vec<u8>, CwError> {
        serde_json::to_vec(&Env {
            block: ctx.block.clone(),
            transaction: ctx.transaction.clone(),
            contract: ContractInfo {
                address: Addr::unchecked(address),
            },
        })
        .map_err(|e| CwError::BadInput(e.to_string()))
    }

    fn instance(
        &mut self,
        ctx: &CallContext,
        address: &str,
        checksum: &[u8; 32],
        readonly: bool,
        depth: usize,
    ) -> Result<Instance, CwError> {
        let storage = self
            .host
            .lock()
            .kv_space(&registry::contract_namespace(address))?;
        make_instance(
            &self.vm,
            &self.host,
            &self.registry,
            ctx,
            storage,
            checksum,
            readonly,
            depth,
        )
    }

    fn run(
        &mut self,
        ctx: &CallContext,
        address: &str,
        checksum: &[u8; 32],
        readonly: bool,
        entry: &str,
        args: &[&[u8]],
    ) -> Result<CallOutcome, CwError> {
        let mut instance = self.instance(ctx, address, checksum, readonly, 0)?;
        if instance.arity(entry).is_none() {
            return Err(CwError::BadInput(format!(
                "the contract has no `{entry}` entry point"
            )));
        }
        let result = instance.call_raw(entry, args, MAX_RESULT);
        let gas = instance.gas_report();
        Ok(CallOutcome { result, gas })
    }

    fn run_migrate(
        &mut self,
        ctx: &CallContext,
        address: &str,
        checksum: &[u8; 32],
        env: &[u8],
        msg: &[u8],
        info: &[u8],
    ) -> Result<CallOutcome, CwError> {
        let mut instance = self.instance(ctx, address, checksum, false, 0)?;
        let result = match instance.arity("migrate") {
            Some(3) => instance.call_raw("migrate", &[env, msg, info], MAX_RESULT),
            Some(_) => instance.call_raw("migrate", &[env, msg], MAX_RESULT),
            None => {
                return Err(CwError::BadInput(
                    "the new code has no `migrate` entry point".into(),
                ));
            }
        };
        let gas = instance.gas_report();
        Ok(CallOutcome { result, gas })
    }
}

fn info_json(ctx: &CallContext) -> Result<Vec<u8>, CwError> {
    serde_json::to_vec(&MessageInfo {
        sender: Addr::unchecked(&ctx.sender),
        funds: ctx.funds.clone(),
    })
    .map_err(|e| CwError::BadInput(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
fn make_instance(
    vm: &CwVm,
    host: &Arc<Mutex<vm_host::Session>>,
    registry: &KvHandle,
    ctx: &CallContext,
    storage: KvHandle,
    checksum: &[u8; 32],
    readonly: bool,
    depth: usize,
) -> Result<Instance, CwError> {
    let inner = &vm.inner;
    let module = inner
        .runtime
        .load(checksum, || registry::wasm(registry, checksum))?;
    let wasm_queries: Option<Box<dyn WasmQuerier>> = if inner.config.wasm_queries {
        Some(Box::new(SessionQuerier {
            vm: vm.clone(),
            host: Arc::clone(host),
            registry: registry.clone(),
            ctx: ctx.clone(),
            depth: depth + 1,
        }))
    } else {
        None
    };
    let env = Environment {
        gas_config: Arc::clone(&inner.gas_config),
        gas: Default::default(),
        storage: Box::new(KvStorage::new(storage)),
        storage_readonly: readonly,
        api: Arc::clone(&inner.api),
        querier: Box::new(DefaultQuerier::new(inner.config.bank.clone(), wasm_queries)),
        exports: None,
        limits: Default::default(),
        debug: None,
        call_depth: 0,
    };
    inner
        .runtime
        .instantiate(checksum, &module, env, ctx.gas_limit)
}

/// Answers `WasmQuery` against the contracts of the session, read-only, to a depth limit.
struct SessionQuerier {
    vm: CwVm,
    host: Arc<Mutex<vm_host::Session>>,
    registry: KvHandle,
    ctx: CallContext,
    depth: usize,
}

impl SessionQuerier {
    fn smart(
        &mut self,
        address: &str,
        msg: &[u8],
        gas_limit: u64,
    ) -> Result<(SystemResult<ContractResult<Binary>>, u64), CwError> {
        let record = registry::contract(&self.registry, address)?;
        let code = registry::code(&self.registry, record.code_id)?;
        let storage = self
            .host
            .lock()
            .kv_space(&registry::contract_namespace(address))?;
        let mut ctx = self.ctx.clone();
        ctx.gas_limit = gas_limit;
        let env = serde_json::to_vec(&Env {
            block: ctx.block.clone(),
            transaction: ctx.transaction.clone(),
            contract: ContractInfo {
                address: Addr::unchecked(address),
            },
        })
        .map_err(|e| CwError::BadInput(e.to_string()))?;
        let mut instance = make_instance(
            &self.vm,
            &self.host,
            &self.registry,
            &ctx,
            storage,
            &code.checksum,
            true,
            self.depth,
        )?;
        let result = instance.call_raw("query", &[&env, msg], MAX_RESULT);
        let used = instance.gas_report().used();
        let answer = match result {
            Ok(bytes) => match serde_json::from_slice::<ContractResult<Binary>>(&bytes) {
                Ok(r) => SystemResult::Ok(r),
                Err(e) => SystemResult::Err(SystemError::InvalidResponse {
                    error: e.to_string(),
                    response: Binary::from(bytes),
                }),
            },
            Err(failure) if failure.kind == FailureKind::OutOfGas => {
                return Err(CwError::OutOfGasInQuery(used));
            }
            Err(failure) => SystemResult::Ok(ContractResult::Err(failure.to_string())),
        };
        Ok((answer, used))
    }
}

impl WasmQuerier for SessionQuerier {
    fn query(
        &mut self,
        query: &WasmQuery,
        gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>> {
        let no_such = |addr: &str| {
            SystemResult::Err(SystemError::NoSuchContract {
                addr: addr.to_owned(),
            })
        };
        if self.depth > MAX_QUERY_DEPTH {
            return (
                Ok(SystemResult::Err(SystemError::Unknown {})),
                GasInfo::free(),
            );
        }
        match query {
            WasmQuery::Smart { contract_addr, msg } => {
                match self.smart(contract_addr, msg, gas_limit) {
                    Ok((answer, used)) => (Ok(answer), GasInfo::with_externally_used(used)),
                    Err(CwError::NoSuchContract(_)) => {
                        (Ok(no_such(contract_addr)), GasInfo::free())
                    }
                    Err(CwError::OutOfGasInQuery(used)) => (
                        Err(BackendError::OutOfGas),
                        GasInfo::with_externally_used(used),
                    ),
                    Err(e) => (
                        Err(BackendError::Unknown { msg: e.to_string() }),
                        GasInfo::free(),
                    ),
                }
            }
            WasmQuery::Raw { contract_addr, key } => {
                if !matches!(
                    registry::has_contract(&self.registry, contract_addr),
                    Ok(true)
                ) {
                    return (Ok(no_such(contract_addr)), GasInfo::free());
                }
                let space = match self
                    .host
                    .lock()
                    .kv_space(&registry::contract_namespace(contract_addr))
                {
                    Ok(s) => s,
                    Err(e) => {
                        return (
                            Err(BackendError::Unknown { msg: e.to_string() }),
                            GasInfo::free(),
                        );
                    }
                };
                match space.get(key) {
                    Ok(v) => (
                        Ok(SystemResult::Ok(ContractResult::Ok(Binary::from(
                            v.unwrap_or_default(),
                        )))),
                        GasInfo::free(),
                    ),
                    Err(e) => (
                        Err(BackendError::Unknown { msg: e.to_string() }),
                        GasInfo::free(),
                    ),
                }
            }
            WasmQuery::ContractInfo { contract_addr } => {
                let record = match registry::contract(&self.registry, contract_addr) {
                    Ok(r) => r,
                    Err(_) => return (Ok(no_such(contract_addr)), GasInfo::free()),
                };
                let mut response = ContractInfoResponse::new(
                    record.code_id,
                    Addr::unchecked(record.creator),
                    record.admin.map(Addr::unchecked),
                    false,
                    None,
                    None,
                );
                response.pinned = false;
                let bytes = serde_json::to_vec(&response).unwrap_or_default();
                (
                    Ok(SystemResult::Ok(ContractResult::Ok(Binary::from(bytes)))),
                    GasInfo::free(),
                )
            }
            _ => (
                Ok(SystemResult::Err(SystemError::UnsupportedRequest {
                    kind: "wasm query".to_string(),
                })),
                GasInfo::free(),
            ),
        }
    }
}

/// A result of a contract that returned a `Response` (used by the CLI and tests).
pub fn parse_response(bytes: &[u8]) -> Result<ContractResult<Response>, CwError> {
    serde_json::from_slice(bytes)
        .map_err(|e| CwError::BadInput(format!("not a contract result: {e}")))
}

/// The version a contract declares in its `cw_migrate_version` custom section (what wasmd
/// passes as `MigrateInfo::old_migrate_version`), if it declares one.
fn migrate_version(wasm: &[u8]) -> Option<u64> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::CustomSection(section)) = payload
            && section.name() == "cw_migrate_version"
        {
            return std::str::from_utf8(section.data())
                .ok()?
                .trim()
                .parse()
                .ok();
        }
    }
    None
}
