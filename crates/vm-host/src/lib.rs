//! A wasmtime host for contract VMs over the Strata module cache chain and commit store.
//!
//! [`Vm`] owns one directory holding a commit store ([`store_commit`]) and a file cache of
//! compiled modules ([`cache_fs`]). Contracts are deployed once: the wasm is validated against
//! the host ABI, stored under its module id (the sha256 of its bytes), and its genesis
//! initialisation (active data segments and start function) runs exactly once, producing the
//! genesis memory and globals that the deploy commits. Sessions run calls over any commit; a
//! module's linear memory is the session's copy-on-write mapping of the committed memory, so
//! instantiating a module over a 1 GiB memory copies nothing, and restored memory and globals are
//! exactly as committed. A call that fails (trap, out of fuel, host error) leaves no trace.
//!
//! Modules load through pinned -> LRU -> file cache -> compile (with [`VmConfig::remote`], a
//! Redis server shared by a fleet sits below the file cache, and a fleet-wide lease lets one
//! node compile while the others wait for its artifact); the stored bytecode is checked
//! against its id before it is compiled, and concurrent loads of one module compile it once.
//! By default the file cache is Authenticated under the VM's own key (`<dir>/cache.key`, made
//! with the directory; [`CacheVerification`]), so a writer of the cache folder cannot plant
//! native code.
//!
//! The host ABI (import module `env`) gives each module a key-value store committed with it,
//! the module's key-value space in the commit store ([`KvHandle`], [`Namespace::of_module`]):
//!
//! - `db_read(key_ptr, key_len, val_ptr, val_cap) -> i32`: copies up to `val_cap` bytes of the
//!   value of the key and returns its full length, or -1 when absent;
//! - `db_write(key_ptr, key_len, val_ptr, val_len)` and `db_remove(key_ptr, key_len)`;
//! - `db_scan(start_ptr, start_len, end_ptr, end_len, order) -> i32`: opens an iterator over
//!   the keys `start <= key < end` (a length of -1 means no bound, the pointer is then ignored;
//!   `order` 0 is ascending, 1 descending) and returns its id. The iterator sees the data as it
//!   was at `db_scan` (as cosmwasm-vm's `MockStorage`): the call's later writes do not show in
//!   it. At most [`VmConfig::max_iterators`] iterators live at once; all end with the call;
//! - `db_next(id, key_ptr, key_cap, val_ptr, val_cap, lens_ptr) -> i32`: returns 0 at the end;
//!   otherwise copies up to `key_cap` bytes of the next key and up to `val_cap` of its value,
//!   writes their full lengths as two u32 little-endian at `lens_ptr`, and returns 1 (an entry
//!   larger than the buffers is consumed, truncated: size them by [`VmConfig::max_key_bytes`]
//!   and [`VmConfig::max_value_bytes`]).
//!
//! Each host call pays fuel per call and per byte it moves ([`HostCosts`]; `db_scan` the bytes
//! of its bounds and of the session's uncommitted writes inside its range, which its snapshot
//! copies; `db_next` those it copies out plus the 8 of the lengths), and a module's
//! key-value data is held to quotas ([`VmConfig::max_kv_bytes`], [`VmConfig::max_kv_keys`]).
//! Embedders add host functions with [`Vm::open_with_host`].
//!
//! ```
//! use vm_host::{Value, Vm, VmConfig};
//!
//! # fn main() -> Result<(), vm_host::VmError> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let vm = Vm::open(dir.path(), VmConfig::for_tests())?;
//! let wasm = wat::parse_str(
//!     r#"(module
//!          (global $n (mut i64) (i64.const 0))
//!          (func (export "bump") (param i64) (result i64)
//!            (global.set $n (i64.add (global.get $n) (local.get 0)))
//!            (global.get $n)))"#,
//! )
//! .expect("valid wat");
//! let (module, _genesis) = vm.deploy(&wasm)?;
//!
//! let mut session = vm.session(vm.latest())?;
//! assert_eq!(session.call(&module, "bump", &[Value::I64(5)])?, vec![Value::I64(5)]);
//! let root = session.commit()?;
//!
//! // The committed global is restored, not re-initialised.
//! let mut session = vm.session(Some(root))?;
//! assert_eq!(session.call(&module, "bump", &[Value::I64(1)])?, vec![Value::I64(6)]);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod budget;
mod host;
mod loader;
mod memory;
mod rewrite;
mod session;
mod value;
mod vm;

use std::path::PathBuf;

pub use budget::{CompileBudget, CompileCost, OverBudget};
pub use cache_core::{LayerStats, Tier};
pub use cache_fs::{PruneReport, Verification};
pub use cache_redis::{Compression, Held, RedisConfig, RemoteStats};
pub use host::HostState;
pub use session::{Savepoint, Session};
pub use store_commit::{CommitInfo, Deletion};
pub use store_commit::{KvHandle, KvIter, KvQuota, KvQuotaExceeded, Namespace, Order};
pub use store_index::{ModuleId, Root};
pub use value::{Value, ValueType, parse_args};
pub use vm::{
    CacheFolderStats, DiskStats, FailedPin, TierStats, VerifyOutcome, Vm, VmFiles, VmStats,
};

/// The settings of a [`Vm`].
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Capacity of the in-memory LRU layer, in bytes of compiled artifact.
    pub lru_bytes: u64,
    /// How the file cache checks an artifact before deserializing it. Default:
    /// [`CacheVerification::VmKey`], Authenticated under the VM's own key.
    pub fs_verification: CacheVerification,
    /// Byte limit of the file cache directory; `None` for no limit.
    pub fs_cache_bytes: Option<u64>,
    /// Whether the store and the file cache fsync what they write (turn off only for tests).
    pub fsync: bool,
    /// Fuel of a call that does not name its own.
    pub default_fuel: u64,
    /// Fuel of a module's genesis initialisation (its start function).
    pub deploy_fuel: u64,
    /// The largest linear memory a module may grow to, in bytes.
    pub memory_limit: usize,
    /// The most elements a table may hold (enforced by wasmtime's `StoreLimits`, like
    /// `memory_limit`; a module declaring a larger table is refused at deploy). Tables cost host
    /// memory outside `memory_limit` (a few bytes per element).
    pub table_elements: usize,
    /// The largest key `db_write` accepts, in bytes.
    pub max_key_bytes: usize,
    /// The largest value `db_write` accepts, in bytes.
    pub max_value_bytes: usize,
    /// The quota of one module's key-value data: the total bytes of its keys and values. A
    /// write that would take the total over it (and grow it) fails the call with
    /// [`VmError::KvQuotaExceeded`]. Default 64 MiB.
    pub max_kv_bytes: u64,
    /// The quota of one module's key count: a write of a new key over it fails the call with
    /// [`VmError::KvKeysExceeded`]. Default 1 Mi keys (each key costs about 24 bytes of table
    /// overhead on disk besides its bytes).
    pub max_kv_keys: u64,
    /// The most `db_scan` iterators a call may hold at once (exhausted ones do not count; all
    /// end with the call). Default 32.
    pub max_iterators: usize,
    /// The fuel the host functions charge (per call and per byte moved).
    pub host_costs: HostCosts,
    /// A cache shared by a fleet, below the file cache: `pinned -> LRU -> fs -> remote ->
    /// compile`, with a fleet-wide compile lease. `None` (the default): this node alone.
    pub remote: Option<RemoteCache>,
    /// Which compilers make the runtime (and genesis) forms. Default
    /// [`TierPolicy::CraneliftOnly`].
    pub tier: TierPolicy,
    /// The most Cranelift compiles waiting for the tier-up thread
    /// ([`TierPolicy::WinchThenCranelift`]); more are dropped (counted in
    /// [`TierStats::dropped`]) and queued again by a later load. Default 256.
    pub tier_up_queue: usize,
    /// The most a module may cost Cranelift to compile, by its structural estimate
    /// ([`CompileCost`], read at deploy in the same pass as the ABI checks). A module over it
    /// is compiled with Winch only, and never tiered up, under a policy that has Winch
    /// (counted in [`TierStats::over_budget`], with a warning), and refused with
    /// [`VmError::OverCompileBudget`] under [`TierPolicy::CraneliftOnly`]. Checked on every
    /// Cranelift compile path: deploy, loads after a miss, the tier-up queue, and the Cranelift
    /// fallback for modules Winch cannot compile. Default [`CompileBudget::default`] (3 s per
    /// function, 60 s per module, estimated); `None` for no limit.
    pub cranelift_budget: Option<CompileBudget>,
}

/// Which compiler tiers a [`Vm`] uses. The tier is part of every cache key; Winch artifacts
/// stay on the node (the remote layer holds Cranelift only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TierPolicy {
    /// Cranelift only: every miss waits for Cranelift.
    #[default]
    CraneliftOnly,
    /// A miss of every layer compiles with Winch (milliseconds) and runs at once; a background
    /// thread (one compile at a time, bounded queue) compiles with Cranelift and saves through
    /// the layers. Loads probe each layer for Cranelift, then Winch; sessions already running
    /// keep the module they loaded. Deploy runs genesis on Winch.
    WinchThenCranelift,
    /// Winch only (deploy and runtime): the fastest compile, slower code.
    WinchOnly,
}

/// The remote layer of a [`VmConfig`]: a Redis server shared by the fleet.
#[derive(Debug, Clone)]
pub struct RemoteCache {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// Timeouts, breaker, MAC key (mandatory, shared by the fleet), compression, lease.
    pub config: RedisConfig,
    /// The longest a load waits for another node's compile (holding the lease) before it
    /// compiles by itself. Default 60 s: esbuild compiles in 14 s here.
    pub max_lease_wait: std::time::Duration,
}

impl RemoteCache {
    /// The server at `url`, with the fleet's MAC key and the default settings.
    pub fn new(url: impl Into<String>, mac_key: Vec<u8>) -> Self {
        RemoteCache {
            url: url.into(),
            config: RedisConfig::new(mac_key),
            max_lease_wait: std::time::Duration::from_secs(60),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            lru_bytes: 512 << 20,
            fs_verification: CacheVerification::VmKey,
            fs_cache_bytes: Some(4 << 30),
            fsync: true,
            default_fuel: 1_000_000_000,
            deploy_fuel: 1_000_000_000,
            memory_limit: 1 << 30,
            table_elements: 1 << 20,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_kv_bytes: 64 << 20,
            max_kv_keys: 1 << 20,
            max_iterators: 32,
            host_costs: HostCosts::default(),
            remote: None,
            tier: TierPolicy::CraneliftOnly,
            tier_up_queue: 256,
            cranelift_budget: Some(CompileBudget::default()),
        }
    }
}

/// How a [`Vm`]'s file cache checks a compiled artifact before wasmtime deserializes it as
/// native code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheVerification {
    /// [`Verification::Authenticated`] under the VM's own key: 32 random bytes in
    /// `<dir>/cache.key` (mode 0600, beside the `cache` folder, not in it), made durably when
    /// [`Vm::open`] finds none. [`Vm::open_existing`] never makes one: a VM directory without
    /// it (made before keys existed, or whose key was deleted) is refused with
    /// [`VmError::CacheKey`] rather than read with a weaker check; open it once with
    /// [`Vm::open`], or name a mode with [`CacheVerification::Mode`]. A writer of the cache
    /// folder who cannot read the key cannot forge an artifact.
    #[default]
    VmKey,
    /// Exactly this mode: [`Verification::Authenticated`] with a key of the caller's (which
    /// takes precedence over the VM's own key; `vmhost --hmac-key-file`),
    /// [`Verification::Verified`] (detects damage, not forgery) or the `unsafe`
    /// [`Verification::trusted`].
    Mode(Verification),
}

impl From<Verification> for CacheVerification {
    fn from(mode: Verification) -> Self {
        CacheVerification::Mode(mode)
    }
}

/// The fuel the key-value host functions charge, in the shape of CosmWasm's `GasConfig`: a flat
/// cost per host call plus a linear cost per byte moved between guest memory and the host, in
/// each direction. A call that cannot pay fails with [`VmError::OutOfFuel`] before the host
/// does the work.
///
/// The defaults price host work like the wasm it stands for. Wasmtime 48 charges one unit of
/// fuel per instruction (about 0.4 ns for i64 arithmetic here) and, for `memory.copy` and
/// `memory.fill`, one more unit per byte. So a byte the host copies costs what a byte of
/// `memory.copy` costs, and a call costs what the instructions doing its fixed work would.
/// They await measurement in a release build: the `host_costs_ns_per_fuel` group of
/// `crates/vm-host/benches/vm.rs` reports nanoseconds per unit of fuel for plain and host
/// loops. The target is that the slowest host loop stays within 10x of the slowest plain loop
/// (docs/RELIABILITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCosts {
    /// Flat cost of every host call (`db_read`, `db_write`, `db_remove`, `db_scan`, `db_next`). Default 500: a call
    /// crosses wasmtime's host trampoline, finds the memory export by name, allocates the key
    /// and walks the key-value tree, about 200 ns, the time of some 500 simple wasm
    /// instructions. (CosmWasm charges 18,000 gas, 156 wasm instructions at its 115 gas each,
    /// on a single-pass compiler whose instructions are slower.)
    pub call: u64,
    /// Cost per byte the host reads from guest memory: keys of every call, values of
    /// `db_write`. Default 1, as wasmtime's `memory.copy`: each byte is copied once out of
    /// guest memory into the host's tree (what the tree holds is bounded by
    /// [`VmConfig::max_kv_bytes`], not by fuel).
    pub read_byte: u64,
    /// Cost per byte the host writes into guest memory: the value `db_read` returns (what it
    /// copies, at most the buffer's capacity). Default 1, as wasmtime's `memory.copy`.
    pub write_byte: u64,
}

impl Default for HostCosts {
    fn default() -> Self {
        HostCosts {
            call: 500,
            read_byte: 1,
            write_byte: 1,
        }
    }
}

impl HostCosts {
    /// The fuel of one host call that reads `read` bytes from guest memory and writes
    /// `written` bytes into it (saturating).
    pub fn fuel(&self, read: usize, written: usize) -> u64 {
        let per = |bytes: usize, cost: u64| (bytes as u64).saturating_mul(cost);
        self.call
            .saturating_add(per(read, self.read_byte))
            .saturating_add(per(written, self.write_byte))
    }
}

impl VmConfig {
    /// The default settings without fsync: fast, and not durable across power loss.
    pub fn for_tests() -> Self {
        VmConfig {
            fsync: false,
            ..VmConfig::default()
        }
    }
}

/// Errors of the VM host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The wasm is not a valid module, or uses a feature the host cannot run or persist.
    #[error("invalid module: {0}")]
    InvalidModule(#[source] ModuleError),
    /// The module imports something the host does not offer. (The names come from the module,
    /// so the message shows them escaped and quoted: any bytes, one line.)
    #[error("module imports {module:?}::{name:?}, which the host does not offer")]
    UnsupportedImport {
        /// The import's module name.
        module: String,
        /// The import's field name.
        name: String,
    },
    /// The module is already deployed in this state.
    #[error("module {0} is already deployed")]
    AlreadyDeployed(ModuleId),
    /// No module with this id is deployed in the state.
    #[error("unknown module {0}")]
    UnknownModule(ModuleId),
    /// The module exports no function of this name (escaped and quoted in the message).
    #[error("module exports no function {0:?}")]
    UnknownFunction(String),
    /// The arguments do not match the function's parameters.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// The call used up its fuel (in wasm code or paying for a host function).
    #[error("out of fuel: the call used all of its {0} units of fuel")]
    OutOfFuel(u64),
    /// A key-value write would take the module's data over [`VmConfig::max_kv_bytes`].
    #[error(
        "key-value quota exceeded: the write would make the module's data {would_be} bytes, over the quota of {quota} bytes"
    )]
    KvQuotaExceeded {
        /// The total bytes of keys and values the write would have made.
        would_be: u64,
        /// The quota.
        quota: u64,
    },
    /// A key-value write of a new key would take the module's key count over
    /// [`VmConfig::max_kv_keys`].
    #[error(
        "key-value quota exceeded: the write would make {would_be} keys, over the quota of {quota} keys"
    )]
    KvKeysExceeded {
        /// The keys the write would have made.
        would_be: u64,
        /// The quota.
        quota: u64,
    },
    /// Wasm code trapped: a call, or a module's genesis initialisation at deploy.
    #[error("{during} trapped: {trap}")]
    Trap {
        /// What was running.
        during: Phase,
        /// The trap.
        #[source]
        trap: wasmtime::Trap,
    },
    /// A host function refused the call's input (the message is the host function's own).
    #[error("host function failed: {0}")]
    Host(#[source] WasmtimeError),
    /// The committed host state (mutable globals, key-value data) of a module is corrupt.
    #[error("committed host state of module {module} is corrupt: {source}")]
    CorruptState {
        /// The module.
        module: ModuleId,
        /// What is wrong with it.
        #[source]
        source: StateError,
    },
    /// The module defines no memory to read.
    #[error("module {0} has no memory")]
    NoMemory(ModuleId),
    /// The stored bytecode does not hash to its module id.
    #[error("stored bytecode of module {0} does not match its id")]
    CorruptBytecode(ModuleId),
    /// The commit store failed.
    #[error("store: {0}")]
    Store(#[from] store_commit::StoreError),
    /// The module cache could not be opened.
    #[error("module cache: {0}")]
    Cache(#[from] cache_core::CacheError),
    /// An I/O error on the VM directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The VM's cache key (`<dir>/cache.key`, [`CacheVerification::VmKey`]) is missing from an
    /// existing VM directory, or is not a usable key.
    #[error("cache key {}: {reason}", path.display())]
    CacheKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The remote cache layer's settings are unusable (a bad URL, a short MAC key). A remote
    /// layer that is down is not an error: its loads are misses.
    #[error("remote cache: {0}")]
    RemoteCache(#[source] cache_redis::RedisCacheError),
    /// The module's estimated Cranelift compile cost is over [`VmConfig::cranelift_budget`] and
    /// the policy ([`TierPolicy::CraneliftOnly`], or a module Winch cannot compile) leaves no
    /// other compiler.
    #[error("module refused: {0}")]
    OverCompileBudget(OverBudget),
    /// An error from wasmtime outside a call (engine setup, linking, instantiation).
    #[error("wasmtime: {0}")]
    Wasmtime(#[source] WasmtimeError),
}

impl VmError {
    pub(crate) fn wasmtime(err: wasmtime::Error) -> Self {
        VmError::Wasmtime(WasmtimeError::new(err))
    }

    /// Wasmtime refused to compile or link a module.
    pub(crate) fn invalid_wasmtime(err: wasmtime::Error) -> Self {
        VmError::InvalidModule(ModuleError::Compile(WasmtimeError::new(err)))
    }

    pub(crate) fn corrupt_state(module: &ModuleId) -> impl FnOnce(StateError) -> VmError + '_ {
        |source| VmError::CorruptState {
            module: *module,
            source,
        }
    }
}

impl From<wasmtime::Error> for VmError {
    /// An error of wasmtime outside a call, e.g. of an embedder's `Linker::func_wrap`.
    fn from(err: wasmtime::Error) -> Self {
        VmError::wasmtime(err)
    }
}

/// What was running when wasm code trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// A call of a session.
    Call,
    /// A module's genesis initialisation (data segments and start function) at deploy.
    Genesis,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Call => "call",
            Phase::Genesis => "genesis initialisation",
        })
    }
}

/// An error of wasmtime, kept whole as the source; its message is folded onto one line
/// (wasmtime's own spans several: causes, wasm backtraces).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct WasmtimeError {
    message: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl WasmtimeError {
    /// The whole chain of causes, on one line.
    pub(crate) fn new(err: wasmtime::Error) -> Self {
        WasmtimeError {
            message: one_line(&format!("{err:#}")),
            source: err.into_boxed_dyn_error(),
        }
    }

    /// Only the root cause on one line, without the context wasmtime wraps it in (a host
    /// function's own message, without the wasm backtrace).
    pub(crate) fn root(err: wasmtime::Error) -> Self {
        WasmtimeError {
            message: one_line(&err.root_cause().to_string()),
            source: err.into_boxed_dyn_error(),
        }
    }
}

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The bytes are not a well-formed module (its message folded onto one line).
    #[error("{message}")]
    Parse {
        /// The message, on one line.
        message: String,
        /// wasmparser's error.
        #[source]
        source: wasmparser::BinaryReaderError,
    },
    /// Wasmtime refused to compile or link it.
    #[error("{0}")]
    Compile(#[source] WasmtimeError),
    /// It uses a feature the host cannot run or persist (one line; names from the module
    /// are escaped and quoted).
    #[error("{0}")]
    Unsupported(String),
    /// Its code mutates a table or drops a segment (`table.set`, `table.grow`, `table.fill`,
    /// `table.copy`, `table.init`, `elem.drop`, `data.drop`): state the host does not persist
    /// across calls, so the module is refused rather than silently losing it.
    #[error(
        "function {function} uses `{instruction}`: tables and dropped segments are not persisted, so modules that mutate them are refused"
    )]
    StatefulInstruction {
        /// The instruction, in the text format.
        instruction: &'static str,
        /// The index of the function that uses it (imports included).
        function: u32,
    },
    /// A table is larger than [`VmConfig::table_elements`] allows.
    #[error("a table of {elements} elements exceeds the limit of {limit}")]
    TableTooLarge {
        /// The table's initial size, in elements.
        elements: u64,
        /// The limit.
        limit: usize,
    },
}

/// Why a module's committed host state cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Written by another version of the host.
    #[error("version {found}, this host reads {expected}")]
    Version {
        /// The version found.
        found: u8,
        /// The version this host reads.
        expected: u8,
    },
    /// The bytes do not decode.
    #[error("undecodable: {0}")]
    Decode(#[source] postcard::Error),
    /// A global the state names is not a mutable global of the module.
    #[error("global {0} is not a mutable global of the module")]
    UnknownGlobal(u32),
    /// A global of the module holds no number.
    #[error("global {0} is not a number")]
    NotANumber(u32),
    /// Wasmtime refused to set a global to its committed value.
    #[error("global {index} cannot be restored: {source}")]
    Restore {
        /// The global's index.
        index: u32,
        /// Wasmtime's error.
        #[source]
        source: WasmtimeError,
    },
}

/// Folds a message onto one line: error texts of wasmparser and wasmtime may span several
/// (pretty-printed values, backtraces), and every `VmError` is one line. They may also quote
/// names from the module as they are, so any other control character is escaped (`\u{1b}`).
pub(crate) fn one_line(message: &str) -> String {
    let folded = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if !folded.chars().any(char::is_control) {
        return folded;
    }
    folded
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_folds_whitespace_and_escapes_control_characters() {
        assert_eq!(
            super::one_line("a\n  b\tc\x1b[2J\0"),
            "a b c\\u{1b}[2J\\u{0}"
        );
        assert_eq!(super::one_line(" plain "), "plain");
    }
}
