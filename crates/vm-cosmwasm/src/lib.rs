//! The CosmWasm contract ABI on the Strata wasmtime host: unmodified CosmWasm contracts
//! (cosmwasm-std 2.x/3.x), with the results and the gas of cosmwasm-vm 3.0.
//!
//! [`CwVm`] sits on a [`vm_host::Vm`]: the VM's commit store keeps the codes, the contracts
//! (code id, creator, admin, label) and each contract's key-value storage, all covered by the
//! root; its cache key authenticates this crate's file cache of compiled modules too.
//!
//! - **Memory model.** A CosmWasm contract keeps no memory between calls: every call gets a
//!   fresh instance from wasmtime's pooling allocator, its data segments applied by
//!   copy-on-write. vm-host's persistent memories are not used.
//! - **store_code** runs cosmwasm-vm's static checks (`check_wasm`: exports, imports, memory
//!   and table limits, function and local limits, `requires_*` capabilities, wasm features),
//!   stores the wasm once under its checksum, and compiles the *metered* form: a bytecode
//!   rewrite that injects cosmwasm-vm's gas metering (its cost per operator, its accounting
//!   points) into the module, so gas is identical whatever compiles it. Cranelift compiles the
//!   checks inline; Winch, whose compile a deploy waits for, a call of one charging function
//!   per check (less code to compile, the same gas at the same points).
//! - **Calls.** `instantiate`, `execute`, `query` (read-only), `migrate` (two or three
//!   arguments), `sudo` and `reply`, with `Env`, `MessageInfo` and `MigrateInfo` as
//!   cosmwasm-vm passes them. A call returns the contract's raw `ContractResult` and its
//!   [`GasReport`]; a failed call (a VM failure or a contract error) leaves no trace.
//! - **Imports.** Every `env` import of cosmwasm-vm 3.0 (storage and iterators, addresses,
//!   secp256k1/secp256r1/ed25519/BLS12-381 through `cosmwasm-crypto`, `debug`, `abort`,
//!   `query_chain`), with cosmwasm-vm's host-call gas ([`GasConfig`]). The default backend
//!   charges what cosmwasm-vm's mock backend charges ([`backends`]); the bank answers from
//!   [`CwConfig::bank`], and wasm queries run against the session's other contracts.
//!
//! ```
//! use vm_cosmwasm::{CallContext, CwConfig, CwVm};
//!
//! # fn main() -> Result<(), vm_cosmwasm::CwError> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
//! let mut session = vm.session(vm.latest())?;
//! let (code_id, _checksum) = session.store_code(&vm_cosmwasm::counter_wasm())?;
//! let ctx = CallContext::new("cosmwasm1creator", 10_000_000_000);
//! let (counter, out) = session.instantiate(&ctx, code_id, br#"{"count":7}"#, "counter", None)?;
//! assert!(out.is_ok(), "{}", out.text());
//! let out = session.execute(&ctx, &counter, br#"{"increment":{}}"#)?;
//! assert!(out.is_ok(), "{}", out.text());
//! let root = session.commit()?;
//!
//! let mut session = vm.session(Some(root))?;
//! let out = session.query(&ctx, &counter, br#"{"get_count":{}}"#)?;
//! assert_eq!(out.text(), r#"{"ok":"eyJjb3VudCI6OH0="}"#); // base64 of {"count":8}
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod backend;
pub mod backends;
mod check;
mod env;
pub mod gas;
mod imports;
mod memory;
mod metering;
pub mod registry;
mod runtime;
mod session;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

pub use backends::BankConfig;
pub use check::CheckError;
pub use env::{CallError, DebugHandler, DebugInfo};
pub use gas::{GasConfig, GasInfo};
pub use registry::ContractRecord;
pub use runtime::GasReport;
pub use session::{CallContext, CallOutcome, CwSession, Entry, MAX_QUERY_DEPTH, parse_response};
pub use vm_host::{CompileBudget, Root, TierPolicy, Vm, VmConfig, VmError};

/// A CosmWasm contract of our own, in WAT: a counter with JSON messages
/// (`{"count":N}` at instantiate, `{"increment":{}}`, `{"reset":{"count":N}}`, and the query
/// `{"get_count":{}}`), for the demo and the tests on a machine without the corpus.
pub const COUNTER_WAT: &str = include_str!("../contracts/counter.wat");

/// [`COUNTER_WAT`] as wasm.
pub fn counter_wasm() -> Vec<u8> {
    wat::parse_str(COUNTER_WAT).expect("the committed counter contract is valid WAT")
}

/// The settings of a [`CwVm`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CwConfig {
    /// The settings of the underlying [`Vm`] (its store, fsync, cache verification).
    pub vm: VmConfig,
    /// The host-call gas table. Default: cosmwasm-vm 3.0's.
    pub gas_config: GasConfig,
    /// The largest linear memory of an instance, in bytes. Default 32 MiB (cosmwasm-vm's
    /// default instance memory limit); `memory.grow` past it returns -1.
    pub memory_limit: usize,
    /// The capabilities the host offers; a contract requiring another is refused at
    /// store_code. Default: cosmwasm-vm 3.0's (`iterator`, `staking`, `cosmwasm_1_1` ..
    /// `cosmwasm_2_2`, `cosmwasm_3_0`).
    pub capabilities: BTreeSet<String>,
    /// The bech32 prefix of addresses. Default `cosmwasm` (as cosmwasm-vm's mock API).
    pub bech32_prefix: String,
    /// What bank queries answer.
    pub bank: BankConfig,
    /// Whether `WasmQuery` requests run against the session's contracts (default `true`);
    /// without, they answer as cosmwasm-vm's mock querier without a wasm handler does.
    pub wasm_queries: bool,
    /// Capacity of the in-memory LRU layer of compiled contracts, in bytes.
    pub lru_bytes: u64,
    /// Which compilers make a contract's module. Default [`TierPolicy::CraneliftOnly`];
    /// [`TierPolicy::WinchThenCranelift`] compiles with Winch at store_code (milliseconds) and
    /// with Cranelift on a background thread, later loads taking the Cranelift module. Gas and
    /// results are the same on both: the metering is in the bytecode.
    pub tier: TierPolicy,
}

impl Default for CwConfig {
    fn default() -> Self {
        CwConfig::with_vm(VmConfig::default())
    }
}

impl CwConfig {
    /// Defaults over the given VM settings.
    pub fn with_vm(vm: VmConfig) -> CwConfig {
        let capabilities = [
            "iterator",
            "staking",
            "cosmwasm_1_1",
            "cosmwasm_1_2",
            "cosmwasm_1_3",
            "cosmwasm_1_4",
            "cosmwasm_2_0",
            "cosmwasm_2_1",
            "cosmwasm_2_2",
            "cosmwasm_3_0",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        CwConfig {
            vm,
            gas_config: GasConfig::default(),
            memory_limit: 32 << 20,
            capabilities,
            bech32_prefix: "cosmwasm".into(),
            bank: BankConfig::default(),
            wasm_queries: true,
            lru_bytes: 256 << 20,
            tier: TierPolicy::CraneliftOnly,
        }
    }

    /// For tests: no fsync, a plain (Trusted) file cache.
    pub fn for_tests() -> CwConfig {
        CwConfig::with_vm(VmConfig::for_tests())
    }
}

/// A failure of a call inside the VM (the contract never returned a result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The message.
    pub message: String,
}

impl CallFailure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> CallFailure {
        CallFailure {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The kinds of [`CallFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Gas ran out (in wasm or in a host function).
    OutOfGas,
    /// The contract trapped (a panic, `unreachable`, an out-of-bounds access).
    Trap,
    /// The contract called `abort`.
    Aborted,
    /// A query tried to write.
    WriteAccessDenied,
    /// A bad region or pointer from the contract.
    Communication,
    /// The backend failed.
    Backend,
    /// Another host function error.
    Host,
}

/// The errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CwError {
    /// The VM (its store or its sessions) failed.
    #[error(transparent)]
    Vm(#[from] vm_host::VmError),
    /// The commit store failed.
    #[error(transparent)]
    Store(#[from] store_commit::StoreError),
    /// A cache layer failed.
    #[error("module cache: {0}")]
    Cache(#[source] cache_core::CacheError),
    /// store_code refused the wasm.
    #[error("invalid contract: {0}")]
    Check(#[source] check::CheckError),
    /// wasmtime failed (compiling, linking).
    #[error("wasmtime: {0}")]
    Wasmtime(String),
    /// The contract could not be instantiated.
    #[error("instantiation failed: {0}")]
    Instantiation(String),
    /// No code with this id.
    #[error("no code with id {0}")]
    NoSuchCode(u64),
    /// No contract at this address.
    #[error("no contract at {0}")]
    NoSuchContract(String),
    /// The sender may not do this (migrate a contract it is not the admin of).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Bad input from the caller.
    #[error("{0}")]
    BadInput(String),
    /// Registry data that does not decode.
    #[error("corrupt registry: {0}")]
    Corrupt(String),
    /// A contract query ran out of gas (its gas used).
    #[error("out of gas in a contract query after {0} gas")]
    OutOfGasInQuery(u64),
}

impl CwError {
    fn wasmtime(e: wasmtime::Error) -> CwError {
        CwError::Wasmtime(format!("{e:#}"))
    }
}

struct Inner {
    host: Vm,
    runtime: runtime::Runtime,
    config: CwConfig,
    gas_config: Arc<GasConfig>,
    api: Arc<dyn backend::BackendApi>,
}

/// A CosmWasm VM over one VM directory. Cheap to clone; sessions may run on many threads.
#[derive(Clone)]
pub struct CwVm {
    inner: Arc<Inner>,
}

impl CwVm {
    /// Opens (or creates) the VM directory `dir`: the [`Vm`] in it, and the CosmWasm file cache
    /// in `dir/cosmwasm-cache`, checked as the VM's own file cache is.
    pub fn open(dir: &Path, config: CwConfig) -> Result<CwVm, CwError> {
        let host = Vm::open(dir, config.vm.clone())?;
        let runtime = runtime::Runtime::new(
            &dir.join("cosmwasm-cache"),
            host.file_cache_verification(),
            config.memory_limit,
            config.lru_bytes,
            config.vm.fsync,
            config.tier,
            config.vm.cranelift_budget,
        )?;
        let api: Arc<dyn backend::BackendApi> =
            Arc::new(backends::Bech32Api::new(config.bech32_prefix.clone()));
        Ok(CwVm {
            inner: Arc::new(Inner {
                host,
                runtime,
                gas_config: Arc::new(config.gas_config.clone()),
                config,
                api,
            }),
        })
    }

    /// The underlying VM.
    pub fn host(&self) -> &Vm {
        &self.inner.host
    }

    /// The latest commit.
    pub fn latest(&self) -> Option<Root> {
        self.inner.host.latest()
    }

    /// A session over `base` (`None`: the empty state).
    pub fn session(&self, base: Option<Root>) -> Result<CwSession, CwError> {
        CwSession::new(self.clone(), base)
    }

    /// Pins the compiled form of the code with `checksum` (stored in the state `base`) in memory.
    pub fn pin(&self, base: Option<Root>, checksum: &[u8; 32]) -> Result<(), CwError> {
        let session = self.session(base)?;
        let module = self
            .inner
            .runtime
            .load(checksum, || session.wasm(checksum))?;
        self.inner.runtime.pin(checksum, module);
        Ok(())
    }

    /// Unpins `checksum`; whether it was pinned.
    pub fn unpin(&self, checksum: &[u8; 32]) -> bool {
        self.inner.runtime.unpin(checksum)
    }

    /// The module cache layers' counters (pinned, LRU, file cache).
    pub fn cache_stats(&self) -> Vec<cache_core::LayerStats> {
        self.inner.runtime.stats()
    }

    /// How many contracts this VM compiled (cache misses in every layer, and tier-ups).
    pub fn compiles(&self) -> u64 {
        self.inner.runtime.compiles()
    }

    /// Waits (at most `timeout`) until the background thread is idle: no Cranelift tier-up and
    /// no write of a compiled contract to the file cache queued or running; whether it is.
    pub fn wait_tier_up(&self, timeout: std::time::Duration) -> bool {
        self.inner.runtime.wait_tier_up(timeout)
    }

    /// How many tier-ups were skipped because the contract's estimated Cranelift compile time
    /// is over `VmConfig::cranelift_budget` (the contract stays on Winch; under
    /// [`TierPolicy::CraneliftOnly`] store_code refuses such a contract instead).
    pub fn over_budget(&self) -> u64 {
        self.inner.runtime.over_budget()
    }

    /// How many Winch modules a background Cranelift compile replaced.
    pub fn tier_ups(&self) -> u64 {
        self.inner.runtime.tier_ups()
    }
}
