//! The reference side: cosmwasm-vm 3.0.10 with its mock backend, driven as a chain drives it.
//!
//! Every call gets a fresh instance from a `Cache` (pinned after store_code), a fresh
//! `MockStorage` filled with the contract's committed entries, `MockApi` and a querier that is
//! cosmwasm-vm's `MockQuerier` (same gas formula, same answers) widened by the denom metadata of
//! the setup and by `WasmQuery` against the contracts of this side. A call's writes are kept
//! only when it succeeds (the VM returned and the contract's result is `ok`), as a chain's
//! cached store does; vm-cosmwasm's sessions do the same.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use anyhow::{Context as _, anyhow, bail};
use cosmwasm_std::testing::MockQuerier as StdMockQuerier;
use cosmwasm_std::{
    Addr, Binary, Checksum, ContractInfo, ContractResult, Empty, Env, MessageInfo, MigrateInfo,
    Order, QueryRequest, SystemError, SystemResult, WasmQuery, to_json_binary,
};
use cosmwasm_vm::testing::{MockApi, MockStorage};
use cosmwasm_vm::{
    Backend, BackendError, BackendResult, Cache, CacheOptions, GasInfo, Instance, InstanceOptions,
    Querier, Size, Storage as _, VmError, VmResult, call_execute_raw, call_instantiate_raw,
    call_migrate_with_info_raw, call_query_raw, call_sudo_raw,
};

use crate::common::{
    Call, Ctx, Entries, FailKind, Failure, Gas, Outcome, Setup, Side, block, json, transaction,
};

/// cosmwasm-vm's `MockQuerier` costs (testing/querier.rs): a flat cost per query plus a cost
/// per byte of the JSON of the response.
const GAS_COST_QUERY_FLAT: u64 = 100_000;
const GAS_COST_QUERY_RESPONSE_MULTIPLIER: u64 = 100;

/// How deep wasm queries may nest: vm-cosmwasm's default querier's limit (cosmwasm-vm's mock
/// has no wasm querier at all; this one answers as the Strata side's does).
const MAX_QUERY_DEPTH: u32 = 5;

type RefCache = Cache<MockApi, MockStorage, RefQuerier>;
type RefInstance = Instance<MockApi, MockStorage, RefQuerier>;

struct Contract {
    address: String,
    code: usize,
    storage: BTreeMap<Vec<u8>, Vec<u8>>,
}

struct World {
    cache: RefCache,
    setup: Setup,
    codes: RefCell<Vec<Checksum>>,
    contracts: RefCell<Vec<Contract>>,
}

/// cosmwasm-vm with its mock backend.
pub struct Reference {
    world: Rc<World>,
    _dir: tempfile::TempDir,
}

impl Reference {
    pub fn new(setup: &Setup) -> anyhow::Result<Reference> {
        let dir = tempfile::tempdir()?;
        let options = CacheOptions::new(
            dir.path(),
            setup
                .capabilities
                .iter()
                .cloned()
                .collect::<std::collections::HashSet<_>>(),
            Size::mebi(64),
            Size::new(setup.memory_limit as usize),
        );
        // SAFETY: the cache directory is a fresh temporary directory nothing else writes.
        let cache = unsafe { RefCache::new(options) }.map_err(|e| anyhow!("cache: {e}"))?;
        Ok(Reference {
            world: Rc::new(World {
                cache,
                setup: setup.clone(),
                codes: RefCell::new(Vec::new()),
                contracts: RefCell::new(Vec::new()),
            }),
            _dir: dir,
        })
    }
}

fn env(address: &str) -> Env {
    Env {
        block: block(),
        transaction: Some(transaction()),
        contract: ContractInfo {
            address: Addr::unchecked(address),
        },
    }
}

/// The kind of a cosmwasm-vm error, as `common::FailKind` compares it.
pub fn fail_kind(error: &VmError) -> FailKind {
    match error {
        VmError::GasDepletion { .. } => FailKind::OutOfGas,
        // wasmer wraps what a host function failed with into a runtime error: an abort, or
        // gas running out inside an import (db_write's charge), is recognised by its text.
        VmError::RuntimeErr { msg, .. } => {
            if let Some((_, text)) = msg.split_once("RuntimeError: Aborted: ") {
                FailKind::Aborted(text.to_owned())
            } else if msg.contains("Ran out of gas during contract execution") {
                FailKind::OutOfGas
            } else {
                FailKind::Trap
            }
        }
        VmError::Aborted { msg, .. } => FailKind::Aborted(msg.clone()),
        VmError::WriteAccessDenied { .. } => FailKind::WriteAccessDenied,
        VmError::BackendErr { source, .. } => match source {
            BackendError::OutOfGas {} => FailKind::OutOfGas,
            _ => FailKind::Backend,
        },
        VmError::CommunicationErr { .. } => FailKind::Communication,
        other => FailKind::Other(
            format!("{other:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

impl World {
    fn contract_index(&self, address: &str) -> Option<usize> {
        self.contracts
            .borrow()
            .iter()
            .position(|c| c.address == address)
    }

    /// Runs `f` on a fresh instance of `code` over `storage`; returns the outcome and, when
    /// the call succeeded, the storage after it.
    fn run(
        self: &Rc<Self>,
        code: usize,
        storage: &BTreeMap<Vec<u8>, Vec<u8>>,
        gas_limit: u64,
        depth: u32,
        f: impl FnOnce(&mut RefInstance) -> VmResult<Vec<u8>>,
    ) -> anyhow::Result<(Outcome, Option<BTreeMap<Vec<u8>, Vec<u8>>>)> {
        let checksum = *self
            .codes
            .borrow()
            .get(code)
            .ok_or_else(|| anyhow!("no code {code}"))?;
        let mut mock = MockStorage::new();
        for (k, v) in storage {
            let _ = mock.set(k, v);
        }
        let backend = Backend {
            api: MockApi::default().with_prefix(self.setup.bech32_prefix),
            storage: mock,
            querier: RefQuerier {
                world: Rc::clone(self),
                bank: bank_querier(&self.setup),
                depth,
            },
        };
        let mut instance =
            match self
                .cache
                .get_instance(&checksum, backend, InstanceOptions { gas_limit })
            {
                Ok(instance) => instance,
                Err(e) => {
                    return Ok((
                        Outcome {
                            result: Err(failure(&e)),
                            gas: Gas {
                                limit: gas_limit,
                                remaining: gas_limit,
                                ..Gas::default()
                            },
                        },
                        None,
                    ));
                }
            };
        let result = f(&mut instance);
        let report = instance.create_gas_report();
        let outcome = Outcome {
            result: result.map_err(|e| failure(&e)),
            gas: Gas {
                limit: report.limit,
                remaining: report.remaining,
                used_externally: report.used_externally,
                used_internally: report.used_internally,
            },
        };
        let after = if outcome.succeeded() {
            let mut backend = instance
                .recycle()
                .ok_or_else(|| anyhow!("instance gave no backend back"))?;
            let (id, _) = backend.storage.scan(None, None, Order::Ascending);
            let id = id.map_err(|e| anyhow!("scan: {e}"))?;
            let (all, _) = backend.storage.all(id);
            Some(
                all.map_err(|e| anyhow!("read storage: {e}"))?
                    .into_iter()
                    .collect(),
            )
        } else {
            None
        };
        Ok((outcome, after))
    }
}

fn failure(error: &VmError) -> Failure {
    Failure {
        kind: fail_kind(error),
        message: error.to_string(),
    }
}

fn bank_querier(setup: &Setup) -> StdMockQuerier {
    let balances: Vec<(&str, &[cosmwasm_std::Coin])> = setup
        .balances
        .iter()
        .map(|(a, c)| (a.as_str(), c.as_slice()))
        .collect();
    let mut q = StdMockQuerier::new(&balances);
    q.bank.set_denom_metadata(&setup.denom_metadata);
    q
}

impl Side for Reference {
    fn store_code(&mut self, wasm: &[u8]) -> anyhow::Result<()> {
        let checksum = self
            .world
            .cache
            .store_code(wasm, true, true)
            .map_err(|e| anyhow!("store_code: {e}"))?;
        self.world
            .cache
            .pin(&checksum)
            .map_err(|e| anyhow!("pin: {e}"))?;
        self.world.codes.borrow_mut().push(checksum);
        Ok(())
    }

    fn call(
        &mut self,
        ctx: &Ctx,
        call: &Call,
        address: Option<&str>,
    ) -> anyhow::Result<(Outcome, Option<String>)> {
        let world = &self.world;
        let info = json(&MessageInfo {
            sender: Addr::unchecked(&ctx.sender),
            funds: ctx.funds.clone(),
        })?;
        let contract = |i: usize| -> anyhow::Result<(String, usize, BTreeMap<Vec<u8>, Vec<u8>>)> {
            let contracts = world.contracts.borrow();
            let c = contracts.get(i).ok_or_else(|| anyhow!("no contract {i}"))?;
            Ok((c.address.clone(), c.code, c.storage.clone()))
        };
        match call {
            Call::Instantiate { code, msg, .. } => {
                let n = world.contracts.borrow().len();
                let address = match address {
                    Some(a) => a.to_owned(),
                    None => MockApi::default().addr_make(&format!("contract{n}")),
                };
                let env = json(&env(&address))?;
                let (outcome, after) =
                    world.run(*code, &BTreeMap::new(), ctx.gas_limit, 0, |i| {
                        call_instantiate_raw(i, &env, &info, msg)
                    })?;
                if let Some(storage) = after {
                    world.contracts.borrow_mut().push(Contract {
                        address: address.clone(),
                        code: *code,
                        storage,
                    });
                }
                Ok((outcome, Some(address)))
            }
            Call::Execute { contract: i, msg } => {
                let (address, code, storage) = contract(*i)?;
                let env = json(&env(&address))?;
                let (outcome, after) = world.run(code, &storage, ctx.gas_limit, 0, |inst| {
                    call_execute_raw(inst, &env, &info, msg)
                })?;
                if let Some(storage) = after {
                    world.contracts.borrow_mut()[*i].storage = storage;
                }
                Ok((outcome, None))
            }
            Call::Query { contract: i, msg } => {
                let (address, code, storage) = contract(*i)?;
                let env = json(&env(&address))?;
                let (outcome, _) = world.run(code, &storage, ctx.gas_limit, 0, |inst| {
                    call_query_raw(inst, &env, msg)
                })?;
                Ok((outcome, None))
            }
            Call::Sudo { contract: i, msg } => {
                let (address, code, storage) = contract(*i)?;
                let env = json(&env(&address))?;
                let (outcome, after) = world.run(code, &storage, ctx.gas_limit, 0, |inst| {
                    call_sudo_raw(inst, &env, msg)
                })?;
                if let Some(storage) = after {
                    world.contracts.borrow_mut()[*i].storage = storage;
                }
                Ok((outcome, None))
            }
            Call::Migrate {
                contract: i,
                code: new_code,
                msg,
            } => {
                let (address, old_code, storage) = contract(*i)?;
                // wasmd passes the old code's `cw_migrate_version` (None without one).
                let old_checksum = world.codes.borrow()[old_code];
                let old_migrate_version = world
                    .cache
                    .analyze(&old_checksum)
                    .map_err(|e| anyhow!("analyze: {e}"))?
                    .contract_migrate_version;
                let migrate_info = json(&MigrateInfo {
                    sender: Addr::unchecked(&ctx.sender),
                    old_migrate_version,
                })?;
                let env = json(&env(&address))?;
                let (outcome, after) =
                    world.run(*new_code, &storage, ctx.gas_limit, 0, |inst| {
                        call_migrate_with_info_raw(inst, &env, msg, &migrate_info)
                    })?;
                if let Some(storage) = after {
                    let mut contracts = world.contracts.borrow_mut();
                    contracts[*i].storage = storage;
                    contracts[*i].code = *new_code;
                }
                Ok((outcome, None))
            }
        }
    }

    fn storage(&mut self, contract: usize) -> anyhow::Result<Entries> {
        let contracts = self.world.contracts.borrow();
        let c = contracts
            .get(contract)
            .with_context(|| format!("no contract {contract}"))?;
        Ok(c.storage
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// cosmwasm-vm's `MockQuerier` (its gas formula and bank answers) with denom metadata and
/// `WasmQuery` against this side's contracts.
pub struct RefQuerier {
    world: Rc<World>,
    bank: StdMockQuerier,
    depth: u32,
}

/// What the wasm part of the querier answered.
enum WasmAnswer {
    Answer(SystemResult<ContractResult<Binary>>, u64),
    /// The nested query ran out of gas after using this much.
    OutOfGas(u64),
}

impl RefQuerier {
    fn answer(&self, request: &[u8], gas_limit: u64) -> WasmAnswer {
        use cosmwasm_std::Querier as _;
        let parsed: Result<QueryRequest<Empty>, _> = cosmwasm_std::from_json(request);
        let wasm = match parsed {
            Ok(QueryRequest::Wasm(query)) => query,
            _ => return WasmAnswer::Answer(self.bank.raw_query(request), 0),
        };
        // The depth limit holds for every wasm query, before the contract is looked up.
        if self.depth >= MAX_QUERY_DEPTH {
            return WasmAnswer::Answer(SystemResult::Err(SystemError::Unknown {}), 0);
        }
        let no_such = |addr: &str| {
            WasmAnswer::Answer(
                SystemResult::Err(SystemError::NoSuchContract {
                    addr: addr.to_owned(),
                }),
                0,
            )
        };
        match wasm {
            WasmQuery::Smart { contract_addr, msg } => {
                match self.world.contract_index(&contract_addr) {
                    None => no_such(&contract_addr),
                    Some(index) => self.smart(index, &contract_addr, &msg, gas_limit),
                }
            }
            WasmQuery::Raw { contract_addr, key } => {
                let contracts = self.world.contracts.borrow();
                match contracts.iter().find(|c| c.address == contract_addr) {
                    None => no_such(&contract_addr),
                    Some(c) => {
                        let value = c.storage.get(key.as_slice()).cloned().unwrap_or_default();
                        WasmAnswer::Answer(
                            SystemResult::Ok(ContractResult::Ok(Binary::from(value))),
                            0,
                        )
                    }
                }
            }
            _ => WasmAnswer::Answer(
                SystemResult::Err(SystemError::UnsupportedRequest {
                    kind: "wasm query".to_owned(),
                }),
                0,
            ),
        }
    }

    /// Runs a smart query on a fresh instance, read-only, with what is left of the gas; its
    /// gas counts as the querier's (external) gas. A VM failure of the nested call is a
    /// contract error of the query, except running out of gas, which fails the caller.
    fn smart(&self, index: usize, address: &str, msg: &[u8], gas_limit: u64) -> WasmAnswer {
        let (code, storage) = {
            let contracts = self.world.contracts.borrow();
            (contracts[index].code, contracts[index].storage.clone())
        };
        let Ok(env) = json(&env(address)) else {
            return WasmAnswer::Answer(SystemResult::Err(SystemError::Unknown {}), 0);
        };
        let run = self
            .world
            .run(code, &storage, gas_limit, self.depth + 1, |inst| {
                call_query_raw(inst, &env, msg)
            });
        let Ok((outcome, _)) = run else {
            return WasmAnswer::Answer(SystemResult::Err(SystemError::Unknown {}), 0);
        };
        let used = outcome.gas.used();
        match outcome.result {
            Ok(bytes) => match cosmwasm_std::from_json::<ContractResult<Binary>>(&bytes) {
                Ok(result) => WasmAnswer::Answer(SystemResult::Ok(result), used),
                Err(e) => WasmAnswer::Answer(
                    SystemResult::Err(SystemError::InvalidResponse {
                        error: e.to_string(),
                        response: Binary::from(bytes),
                    }),
                    used,
                ),
            },
            Err(f) if f.kind == FailKind::OutOfGas => WasmAnswer::OutOfGas(used),
            Err(f) => WasmAnswer::Answer(SystemResult::Ok(ContractResult::Err(f.message)), used),
        }
    }
}

impl Querier for RefQuerier {
    fn query_raw(
        &self,
        request: &[u8],
        gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>> {
        let (response, nested_gas) = match self.answer(request, gas_limit) {
            WasmAnswer::Answer(response, gas) => (response, gas),
            WasmAnswer::OutOfGas(used) => {
                return (
                    Err(BackendError::out_of_gas()),
                    GasInfo::with_externally_used(used),
                );
            }
        };
        let response_len = to_json_binary(&response).map(|b| b.len()).unwrap_or(0) as u64;
        let gas_info = GasInfo::with_externally_used(
            GAS_COST_QUERY_FLAT
                .saturating_add(GAS_COST_QUERY_RESPONSE_MULTIPLIER.saturating_mul(response_len))
                .saturating_add(nested_gas),
        );
        if gas_info.externally_used > gas_limit {
            return (Err(BackendError::out_of_gas()), gas_info);
        }
        (Ok(response), gas_info)
    }
}

/// Refuses a setup the reference cannot express.
pub fn check_setup(setup: &Setup) -> anyhow::Result<()> {
    if setup.memory_limit % 65536 != 0 {
        bail!("the memory limit must be whole wasm pages");
    }
    Ok(())
}
