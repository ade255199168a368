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
//! Modules load through pinned -> LRU -> file cache -> compile; the stored bytecode is checked
//! against its id before it is compiled, and concurrent loads of one module compile it once.
//!
//! The host ABI (import module `env`) gives each module a key-value store committed with it:
//! `db_read(key_ptr, key_len, val_ptr, val_cap) -> i32`, `db_write(key_ptr, key_len, val_ptr,
//! val_len)` and `db_remove(key_ptr, key_len)`. Embedders add host functions with
//! [`Vm::open_with_host`].
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

mod host;
mod loader;
mod memory;
mod rewrite;
mod session;
mod value;
mod vm;

use std::path::PathBuf;

pub use cache_core::LayerStats;
pub use cache_fs::{PruneReport, Verification};
pub use host::HostState;
pub use session::Session;
pub use store_commit::{CommitInfo, Deletion};
pub use store_index::{ModuleId, Root};
pub use value::{Value, ValueType, parse_args};
pub use vm::{CacheFolderStats, DiskStats, FailedPin, VerifyOutcome, Vm, VmFiles, VmStats};

/// The settings of a [`Vm`].
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Capacity of the in-memory LRU layer, in bytes of compiled artifact.
    pub lru_bytes: u64,
    /// How the file cache checks an artifact before deserializing it.
    pub fs_verification: Verification,
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
    /// The largest key `db_write` accepts, in bytes.
    pub max_key_bytes: usize,
    /// The largest value `db_write` accepts, in bytes.
    pub max_value_bytes: usize,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            lru_bytes: 512 << 20,
            fs_verification: Verification::Verified,
            fs_cache_bytes: Some(4 << 30),
            fsync: true,
            default_fuel: 1_000_000_000,
            deploy_fuel: 1_000_000_000,
            memory_limit: 1 << 30,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
        }
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
    /// The call used up its fuel.
    #[error("out of fuel: the call used all of its {0} units of fuel")]
    OutOfFuel(u64),
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
