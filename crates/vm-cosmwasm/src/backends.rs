//! The default backend of a CosmWasm call: [`KvStorage`] (a contract's key-value space in the
//! commit store), [`Bech32Api`] (addresses) and [`DefaultQuerier`] (bank queries from a
//! [`BankConfig`], wasm queries through a [`WasmQuerier`] hook).
//!
//! Each behaves and charges exactly as cosmwasm-vm 3.0.10's mock backend (`MockStorage`,
//! `MockApi`, `MockQuerier`), so that the same call reports the same `gas_used` on both. That gas
//! is the backend's part, what a chain charges outside the VM; a chain with other costs plugs in
//! its own [`Storage`], [`BackendApi`] and [`Querier`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use cosmwasm_std::{
    AllDenomMetadataResponse, BalanceResponse, BankQuery, Binary, Coin, ContractResult,
    DenomMetadata, DenomMetadataResponse, Empty, Order, QueryRequest, Record, SupplyResponse,
    SystemError, SystemResult, Uint256, WasmQuery,
};
use sha2::{Digest, Sha256};
use vm_host::{KvHandle, KvIter};

use crate::backend::{BackendApi, BackendError, BackendResult, Querier, Storage};
use crate::gas::GasInfo;

/// `MockStorage`'s charge for opening an iterator (external).
const GAS_COST_RANGE: u64 = 11;
/// `MockStorage`'s charge for a `next` at the end of an iterator (external).
const GAS_COST_LAST_ITERATION: u64 = 37;

/// Default bound on the iterators of one [`KvStorage`] not yet at their end.
pub const DEFAULT_MAX_LIVE_ITERATORS: usize = 1024;
/// Bound on the iterators one [`KvStorage`] opens in all (ids are never reused).
pub const MAX_ITERATOR_IDS: usize = 1 << 20;

fn unknown(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unknown { msg: e.to_string() }
}

/// A contract's [`Storage`] over its key-value space in the commit store.
///
/// Charges as `MockStorage`: a read the key's bytes, a write the key's and value's, a removal
/// the key's, opening an iterator 11, all as external gas; a step of an iterator the bytes of
/// the entry as VM gas, and a step at the end 37 as external gas. Iterators are snapshots of the
/// space when opened (later writes do not show), ids count from 1 and are never reused, and
/// `next` at the end keeps answering `None`. Store errors (a quota exceeded included) are
/// [`BackendError::Unknown`].
///
/// Bounds: at most `max_live_iterators` iterators not at their end (an exhausted one is
/// dropped, keeping its id) and [`MAX_ITERATOR_IDS`] in all; past either, `scan` fails.
pub struct KvStorage {
    kv: KvHandle,
    /// By id - 1; `None` once the iterator reached its end.
    iterators: Vec<Option<Box<KvIter>>>,
    live: usize,
    max_live_iterators: usize,
}

impl KvStorage {
    /// Storage over `kv`, with at most [`DEFAULT_MAX_LIVE_ITERATORS`] live iterators.
    pub fn new(kv: KvHandle) -> KvStorage {
        KvStorage {
            kv,
            iterators: Vec::new(),
            live: 0,
            max_live_iterators: DEFAULT_MAX_LIVE_ITERATORS,
        }
    }

    /// Sets the bound on live iterators.
    pub fn with_max_live_iterators(mut self, max: usize) -> KvStorage {
        self.max_live_iterators = max;
        self
    }

    /// The key-value space.
    pub fn handle(&self) -> &KvHandle {
        &self.kv
    }

    /// Iterators opened and not yet at their end.
    pub fn live_iterators(&self) -> usize {
        self.live
    }
}

impl Storage for KvStorage {
    fn get(&self, key: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        let gas = GasInfo::with_externally_used(key.len() as u64);
        (self.kv.get(key).map_err(unknown), gas)
    }

    fn scan(
        &mut self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        order: Order,
    ) -> BackendResult<u32> {
        let gas = GasInfo::with_externally_used(GAS_COST_RANGE);
        if self.live >= self.max_live_iterators {
            let msg = format!(
                "too many open iterators: at most {} may be open at once",
                self.max_live_iterators
            );
            return (Err(BackendError::Unknown { msg }), gas);
        }
        if self.iterators.len() >= MAX_ITERATOR_IDS {
            let msg = format!("too many iterators: at most {MAX_ITERATOR_IDS} in one call");
            return (Err(BackendError::Unknown { msg }), gas);
        }
        let order = match order {
            Order::Ascending => vm_host::Order::Ascending,
            Order::Descending => vm_host::Order::Descending,
        };
        let iter = match self.kv.range(start, end, order) {
            Ok(iter) => iter,
            Err(e) => return (Err(unknown(e)), gas),
        };
        self.iterators.push(Some(Box::new(iter)));
        self.live += 1;
        // At most MAX_ITERATOR_IDS, which fits.
        (Ok(self.iterators.len() as u32), gas)
    }

    fn next(&mut self, id: u32) -> BackendResult<Option<Record>> {
        let Some(slot) = (id as usize)
            .checked_sub(1)
            .and_then(|i| self.iterators.get_mut(i))
        else {
            return (
                Err(BackendError::IteratorDoesNotExist { id }),
                GasInfo::free(),
            );
        };
        let at_end = (
            Ok(None),
            GasInfo::with_externally_used(GAS_COST_LAST_ITERATION),
        );
        let Some(iter) = slot else {
            return at_end;
        };
        match iter.next() {
            Some(Ok((key, value))) => {
                let gas = GasInfo::with_cost((key.len() + value.len()) as u64);
                (Ok(Some((key, value))), gas)
            }
            end => {
                *slot = None;
                self.live -= 1;
                match end {
                    Some(Err(e)) => (
                        Err(unknown(e)),
                        GasInfo::with_externally_used(GAS_COST_LAST_ITERATION),
                    ),
                    _ => at_end,
                }
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> BackendResult<()> {
        let gas = GasInfo::with_externally_used((key.len() + value.len()) as u64);
        (self.kv.insert(key, value).map_err(unknown), gas)
    }

    fn remove(&mut self, key: &[u8]) -> BackendResult<()> {
        let gas = GasInfo::with_externally_used(key.len() as u64);
        (self.kv.remove(key).map(|_| ()).map_err(unknown), gas)
    }
}

/// wasmd's gas multiplier, which `MockApi`'s costs are expressed in.
const WASMD_GAS_MULTIPLIER: u64 = 140_000;
/// `MockApi`'s charge for `addr_canonicalize` (VM gas).
const GAS_COST_CANONICALIZE: u64 = 5 * WASMD_GAS_MULTIPLIER;
/// `MockApi`'s charge for `addr_humanize` (VM gas).
const GAS_COST_HUMANIZE: u64 = 4 * WASMD_GAS_MULTIPLIER;

/// Bech32 addresses with a configurable prefix, behaving, failing and charging as
/// cosmwasm-vm's `MockApi`: the canonical form is the bech32 data (1 to 255 bytes), the prefix
/// is compared without case, an address must be given in its normal (lower-case) form to
/// validate, and the messages a contract receives are `MockApi`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bech32Api {
    prefix: String,
}

impl Default for Bech32Api {
    /// The prefix `cosmwasm`, as cosmwasm-vm's `MockApi`.
    fn default() -> Self {
        Bech32Api::new("cosmwasm")
    }
}

impl Bech32Api {
    /// Addresses with `prefix` (checked when an address is made, as `MockApi` does).
    pub fn new(prefix: impl Into<String>) -> Bech32Api {
        Bech32Api {
            prefix: prefix.into(),
        }
    }

    /// The bech32 prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The address whose canonical form is the sha256 of `input` (`MockApi::addr_make`).
    pub fn addr_make(&self, input: &str) -> Result<String, BackendError> {
        let (result, _) = self.addr_humanize(&Sha256::digest(input.as_bytes()));
        result
    }
}

fn user_err(msg: &str) -> BackendError {
    BackendError::UserErr { msg: msg.into() }
}

fn validate_length(bytes: &[u8]) -> Result<(), BackendError> {
    if (1..=255).contains(&bytes.len()) {
        Ok(())
    } else {
        Err(user_err("Invalid canonical address length"))
    }
}

impl BackendApi for Bech32Api {
    fn addr_validate(&self, input: &str) -> BackendResult<()> {
        let (canonical, mut gas) = self.addr_canonicalize(input);
        let canonical = match canonical {
            Ok(c) => c,
            Err(e) => return (Err(e), gas),
        };
        let (human, humanize_gas) = self.addr_humanize(&canonical);
        gas += humanize_gas;
        match human {
            Ok(h) if h == input => (Ok(()), gas),
            Ok(_) => (Err(user_err("Invalid input: address not normalized")), gas),
            Err(e) => (Err(e), gas),
        }
    }

    fn addr_canonicalize(&self, human: &str) -> BackendResult<Vec<u8>> {
        let gas = GasInfo::with_cost(GAS_COST_CANONICALIZE);
        let parsed = match CheckedHrpstring::new::<Bech32>(human) {
            Ok(p) => p,
            Err(_) => return (Err(user_err("Error decoding bech32")), gas),
        };
        if !parsed
            .hrp()
            .as_bytes()
            .eq_ignore_ascii_case(self.prefix.as_bytes())
        {
            return (Err(user_err("Wrong bech32 prefix")), gas);
        }
        let bytes: Vec<u8> = parsed.byte_iter().collect();
        (validate_length(&bytes).map(|()| bytes), gas)
    }

    fn addr_humanize(&self, canonical: &[u8]) -> BackendResult<String> {
        let gas = GasInfo::with_cost(GAS_COST_HUMANIZE);
        if let Err(e) = validate_length(canonical) {
            return (Err(e), gas);
        }
        let Ok(hrp) = Hrp::parse(&self.prefix) else {
            return (Err(user_err("Invalid bech32 prefix")), gas);
        };
        let result = bech32::encode::<Bech32>(hrp, canonical)
            .map_err(|_| user_err("Invalid data to be encoded to bech32"));
        (result, gas)
    }
}

/// The bank state the [`DefaultQuerier`] answers from: balances per address, and denom
/// metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BankConfig {
    /// Balances by (bech32) address.
    pub balances: BTreeMap<String, Vec<Coin>>,
    /// Denom metadata (keyed by its `base` denom).
    pub denom_metadata: Vec<DenomMetadata>,
}

impl BankConfig {
    /// Sets the balance of `address`.
    pub fn with_balance(mut self, address: impl Into<String>, coins: Vec<Coin>) -> BankConfig {
        self.balances.insert(address.into(), coins);
        self
    }

    /// Adds denom metadata.
    pub fn with_denom_metadata(mut self, metadata: DenomMetadata) -> BankConfig {
        self.denom_metadata.push(metadata);
        self
    }
}

/// Answers bank queries from a [`BankConfig`], byte for byte as cosmwasm-std's mock
/// `BankQuerier` (which cosmwasm-vm's `MockQuerier` uses). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct BankQuerier(Arc<BankState>);

#[derive(Debug, Default)]
struct BankState {
    balances: BTreeMap<String, Vec<Coin>>,
    supplies: BTreeMap<String, Uint256>,
    /// By the bytes of the base denom (a later entry replaces an earlier one).
    metadata: BTreeMap<Vec<u8>, DenomMetadata>,
}

impl BankQuerier {
    /// The querier of `config`; the supply of a denom is the sum of its balances.
    pub fn new(config: BankConfig) -> BankQuerier {
        let mut supplies = BTreeMap::new();
        for coin in config.balances.values().flatten() {
            *supplies
                .entry(coin.denom.clone())
                .or_insert_with(Uint256::zero) += coin.amount;
        }
        let metadata = config
            .denom_metadata
            .into_iter()
            .map(|m| (m.base.as_bytes().to_vec(), m))
            .collect();
        BankQuerier(Arc::new(BankState {
            balances: config.balances,
            supplies,
            metadata,
        }))
    }

    /// The answer to `query`.
    pub fn query(&self, query: &BankQuery) -> SystemResult<ContractResult<Binary>> {
        let bank = &self.0;
        let result = match query {
            BankQuery::Supply { denom } => {
                let amount = bank.supplies.get(denom).copied().unwrap_or_default();
                cosmwasm_std::to_json_binary(&SupplyResponse::new(Coin::new(amount, denom)))
            }
            BankQuery::Balance { address, denom } => {
                let amount = bank
                    .balances
                    .get(address)
                    .and_then(|coins| coins.iter().find(|c| &c.denom == denom))
                    .map(|c| c.amount)
                    .unwrap_or_default();
                cosmwasm_std::to_json_binary(&BalanceResponse::new(Coin::new(amount, denom)))
            }
            BankQuery::DenomMetadata { denom } => match bank.metadata.get(denom.as_bytes()) {
                Some(m) => cosmwasm_std::to_json_binary(&DenomMetadataResponse::new(m.clone())),
                None => return SystemResult::Err(SystemError::Unknown {}),
            },
            BankQuery::AllDenomMetadata { pagination } => {
                let (key, limit, reverse) = match pagination {
                    Some(p) => (p.key.as_ref().map(|k| k.as_slice()), p.limit, p.reverse),
                    None => (None, 100, false),
                };
                let range = match (reverse, key) {
                    (_, None) => (Bound::Unbounded, Bound::Unbounded),
                    (true, Some(k)) => (Bound::Unbounded, Bound::Included(k)),
                    (false, Some(k)) => (Bound::Included(k), Bound::Unbounded),
                };
                let entries = bank.metadata.range::<[u8], _>(range);
                // One more than asked for: its base is the next page's key.
                let take = limit.saturating_add(1) as usize;
                let mut metadata: Vec<DenomMetadata> = if reverse {
                    entries.rev().take(take).map(|(_, m)| m.clone()).collect()
                } else {
                    entries.take(take).map(|(_, m)| m.clone()).collect()
                };
                let next_key = if metadata.len() > limit as usize {
                    metadata.pop().map(|m| Binary::from(m.base.as_bytes()))
                } else {
                    None
                };
                cosmwasm_std::to_json_binary(&AllDenomMetadataResponse::new(metadata, next_key))
            }
            _ => {
                return SystemResult::Err(SystemError::UnsupportedRequest {
                    kind: "bank".into(),
                });
            }
        };
        SystemResult::Ok(result.into())
    }
}

/// Answers the `WasmQuery`s of a contract (for example by querying other contracts of the same
/// session, read-only). `gas_limit` is the gas the querying call has left; the answer's gas is
/// charged to it.
pub trait WasmQuerier: Send {
    /// The answer to `query`.
    fn query(
        &mut self,
        query: &WasmQuery,
        gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>>;
}

/// `MockQuerier`'s flat charge per query (external).
const GAS_COST_QUERY_FLAT: u64 = 100_000;
/// `MockQuerier`'s charge per byte of the JSON-serialized answer (external).
const GAS_COST_QUERY_RESPONSE_MULTIPLIER: u64 = 100;

/// The default [`Querier`], answering as cosmwasm-vm's `MockQuerier` (cosmwasm-std's mock
/// querier behind it) does, with its charges: 100,000 plus 100 per byte of the JSON answer, as
/// external gas, and out of gas when that is more than the call has left.
///
/// - bank queries: from a [`BankQuerier`];
/// - distribution queries: from an empty distribution state, as `MockQuerier`'s default;
/// - anything cosmwasm-std's features leave out of `QueryRequest` (staking, stargate, IBC):
///   an invalid request, as `MockQuerier` built with the same features answers;
/// - wasm queries: through the [`WasmQuerier`] hook, whose own gas is charged on top; without
///   one, `no such contract` (`no such code` for a code info query);
/// - custom and gRPC queries: unsupported; a request that does not parse: an invalid request
///   naming the parse error.
pub struct DefaultQuerier {
    /// The bank's configuration until the first bank query prepares it into `bank` (most
    /// calls make none, and a querier lives for one call).
    bank_config: BankConfig,
    bank: Option<BankQuerier>,
    wasm: Option<Box<dyn WasmQuerier>>,
}

impl DefaultQuerier {
    /// A querier answering bank queries from `bank` and wasm queries through `wasm`.
    pub fn new(bank: BankConfig, wasm: Option<Box<dyn WasmQuerier>>) -> DefaultQuerier {
        DefaultQuerier {
            bank_config: bank,
            bank: None,
            wasm,
        }
    }

    /// A querier answering bank queries from an already prepared `bank`.
    pub fn with_bank(bank: BankQuerier, wasm: Option<Box<dyn WasmQuerier>>) -> DefaultQuerier {
        DefaultQuerier {
            bank_config: BankConfig::default(),
            bank: Some(bank),
            wasm,
        }
    }

    fn bank(&mut self) -> &BankQuerier {
        let config = &mut self.bank_config;
        self.bank
            .get_or_insert_with(|| BankQuerier::new(std::mem::take(config)))
    }

    fn answer(
        &mut self,
        request: &[u8],
        gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>> {
        let free = GasInfo::free();
        let request: QueryRequest<Empty> = match cosmwasm_std::from_json(request) {
            Ok(r) => r,
            Err(e) => {
                let error = format!("Parsing query request: {e}");
                let request = Binary::from(request);
                return (
                    Ok(SystemResult::Err(SystemError::InvalidRequest {
                        error,
                        request,
                    })),
                    free,
                );
            }
        };
        let unsupported =
            |kind: &str| SystemResult::Err(SystemError::UnsupportedRequest { kind: kind.into() });
        let answer = match &request {
            QueryRequest::Bank(q) => self.bank().query(q),
            QueryRequest::Custom(_) => unsupported("custom"),
            QueryRequest::Distribution(q) => {
                cosmwasm_std::testing::DistributionQuerier::default().query(q)
            }
            QueryRequest::Wasm(q) => match self.wasm.as_mut() {
                Some(hook) => return hook.query(q, gas_limit),
                None => SystemResult::Err(no_wasm_handler(q)),
            },
            QueryRequest::Grpc(_) => unsupported("GRPC"),
            _ => unsupported("unknown"),
        };
        (Ok(answer), free)
    }
}

/// What `MockQuerier` answers a wasm query with no handler.
fn no_wasm_handler(query: &WasmQuery) -> SystemError {
    match query {
        WasmQuery::Smart { contract_addr, .. }
        | WasmQuery::Raw { contract_addr, .. }
        | WasmQuery::ContractInfo { contract_addr } => SystemError::NoSuchContract {
            addr: contract_addr.clone(),
        },
        WasmQuery::CodeInfo { code_id } => SystemError::NoSuchCode { code_id: *code_id },
        _ => SystemError::UnsupportedRequest {
            kind: "wasm".into(),
        },
    }
}

impl Querier for DefaultQuerier {
    fn query_raw(
        &mut self,
        request: &[u8],
        gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>> {
        let (answer, mut gas) = self.answer(request, gas_limit);
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return (Err(e), gas),
        };
        let answer_len = match cosmwasm_std::to_json_vec(&answer) {
            Ok(bytes) => bytes.len() as u64,
            Err(e) => return (Err(unknown(e)), gas),
        };
        let own = GAS_COST_QUERY_RESPONSE_MULTIPLIER
            .saturating_mul(answer_len)
            .saturating_add(GAS_COST_QUERY_FLAT);
        gas += GasInfo::with_externally_used(own);
        // As MockQuerier: an answer that cost more than what is left is out of gas.
        if gas.externally_used.saturating_add(gas.cost) > gas_limit {
            return (Err(BackendError::OutOfGas), gas);
        }
        (Ok(answer), gas)
    }
}

#[cfg(test)]
mod tests;
