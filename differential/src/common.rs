//! What both sides share: the chain setup each is configured from, the call context, and the
//! outcome of one call in a form the two implementations can be compared on.

use std::collections::BTreeSet;

use cosmwasm_std::{
    Binary, BlockInfo, Coin, DenomMetadata, DenomUnit, Timestamp, TransactionInfo, coin,
};

/// The memory limit of an instance, the same on both sides (vm-cosmwasm's default).
pub const MEMORY_LIMIT: u64 = 32 * 1024 * 1024;

/// Everything that configures a side before the first call. Both sides are built from one
/// `Setup`, so their backends answer alike.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Bank balances by address (the bank querier's).
    pub balances: Vec<(String, Vec<Coin>)>,
    /// Denom metadata the bank querier serves (cyberpunk's `denoms` and `denom`).
    pub denom_metadata: Vec<DenomMetadata>,
    /// Capabilities the host offers (`requires_*` exports are checked against them).
    pub capabilities: BTreeSet<String>,
    /// The bech32 prefix of the address API.
    pub bech32_prefix: &'static str,
    /// The instance memory limit in bytes.
    pub memory_limit: u64,
}

impl Setup {
    /// The setup of the scenarios: capabilities up to cosmwasm_2_2 (what both corpus contracts
    /// require, and what the pinned cosmwasm-std features cover), 12 denoms of metadata (more
    /// than one page of cyberpunk's `denoms` loop, which asks 10 at a time).
    pub fn standard(balances: Vec<(String, Vec<Coin>)>) -> Setup {
        let capabilities = [
            "iterator",
            "cosmwasm_1_1",
            "cosmwasm_1_2",
            "cosmwasm_1_3",
            "cosmwasm_1_4",
            "cosmwasm_2_0",
            "cosmwasm_2_1",
            "cosmwasm_2_2",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let denom_metadata = (0..12)
            .map(|i| DenomMetadata {
                description: format!("Test coin {i}"),
                denom_units: vec![
                    DenomUnit {
                        denom: format!("utest{i}"),
                        exponent: 0,
                        aliases: vec![format!("microtest{i}")],
                    },
                    DenomUnit {
                        denom: format!("test{i}"),
                        exponent: 6,
                        aliases: vec![],
                    },
                ],
                base: format!("utest{i}"),
                display: format!("test{i}"),
                name: format!("Test {i}"),
                symbol: format!("TST{i}"),
                uri: format!("https://example.com/test{i}.json"),
                uri_hash: String::new(),
            })
            .collect();
        Setup {
            balances,
            denom_metadata,
            capabilities,
            bech32_prefix: "cosmwasm",
            memory_limit: MEMORY_LIMIT,
        }
    }
}

/// The funds the contract under test holds (hackatom's `release` sends them on).
pub fn contract_funds() -> Vec<Coin> {
    vec![coin(1000, "earth"), coin(555, "moon")]
}

/// The block of every call (the same Env both sides pass).
pub fn block() -> BlockInfo {
    BlockInfo {
        height: 12_345,
        time: Timestamp::from_nanos(1_571_797_419_879_305_533),
        chain_id: "cosmos-testnet-14002".to_owned(),
    }
}

/// The transaction of every call (cosmwasm-std's `mock_env`'s).
pub fn transaction() -> TransactionInfo {
    TransactionInfo::new(
        3,
        Binary::from_hex("E5469DACEC17CEF8A260FD37675ED87E7FB6A2B5AD95193C51308006C7E494B3")
            .expect("hex"),
    )
}

/// Who calls, with what, under which gas limit.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub sender: String,
    pub funds: Vec<Coin>,
    pub gas_limit: u64,
}

/// One call of a scenario. Contracts and codes are named by their index in the scenario (the
/// order of `store_code` and `instantiate` steps), the same on both sides.
#[derive(Clone, Debug)]
pub enum Call {
    Instantiate {
        code: usize,
        msg: Vec<u8>,
        label: String,
        admin: Option<String>,
    },
    Execute {
        contract: usize,
        msg: Vec<u8>,
    },
    Query {
        contract: usize,
        msg: Vec<u8>,
    },
    Migrate {
        contract: usize,
        code: usize,
        msg: Vec<u8>,
    },
    Sudo {
        contract: usize,
        msg: Vec<u8>,
    },
}

/// Why a call failed, as far as the two implementations can agree on it: the kind, not the
/// text (wasmer and wasmtime word traps differently), except where the text is the contract's
/// (`abort` messages) or the backend's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailKind {
    OutOfGas,
    /// A wasm trap (unreachable, out-of-bounds access, stack overflow).
    Trap,
    /// The contract called `abort` (a Rust panic); the message is compared.
    Aborted(String),
    /// A query tried to write.
    WriteAccessDenied,
    /// The backend failed (the wording of the message is the implementation's).
    Backend,
    /// A bad region or pointer from the contract.
    Communication,
    /// Anything else, by name.
    Other(String),
}

/// A failed call: its kind and the full message for the table.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: FailKind,
    pub message: String,
}

/// The gas of one call, as cosmwasm-vm's `GasReport` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Gas {
    pub limit: u64,
    pub remaining: u64,
    pub used_externally: u64,
    pub used_internally: u64,
}

impl Gas {
    /// What the call used: limit - remaining.
    pub fn used(&self) -> u64 {
        self.limit.saturating_sub(self.remaining)
    }
}

/// What one call did on one side.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The contract's raw `ContractResult` JSON, or why the VM failed the call.
    pub result: Result<Vec<u8>, Failure>,
    pub gas: Gas,
}

impl Outcome {
    /// Whether the call changed state: the VM returned and the contract's result is `ok`.
    pub fn succeeded(&self) -> bool {
        match &self.result {
            Ok(bytes) => is_contract_ok(bytes),
            Err(_) => false,
        }
    }
}

/// Whether `bytes`, a `ContractResult` JSON, is `{"ok": ...}`.
pub fn is_contract_ok(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.contains_key("ok")))
        .unwrap_or(false)
}

/// A contract's whole storage, sorted by key.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One implementation under comparison.
pub trait Side {
    /// Stores `wasm`; codes are then named by the order they were stored in.
    fn store_code(&mut self, wasm: &[u8]) -> anyhow::Result<()>;
    /// Runs `call`; an `Instantiate` adds a contract, whose address it returns with the outcome
    /// (`address` is the address to use, when the other side chose it).
    fn call(
        &mut self,
        ctx: &Ctx,
        call: &Call,
        address: Option<&str>,
    ) -> anyhow::Result<(Outcome, Option<String>)>;
    /// The storage of contract `contract`.
    fn storage(&mut self, contract: usize) -> anyhow::Result<Entries>;
}

/// The JSON cosmwasm-std writes for `value` (what both VMs pass to entry points).
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    cosmwasm_std::to_json_vec(value).map_err(|e| anyhow::anyhow!("json: {e}"))
}
