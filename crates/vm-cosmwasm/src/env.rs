//! The data of one instance's wasmtime `Store` ([`Environment`]): the backend the imports
//! use, the call's gas state, and the instance's exports the host calls back into.

use std::sync::Arc;

use wasmtime::{AsContext, AsContextMut, Global, Memory, StoreLimits, TypedFunc, Val};

use crate::backend::{BackendApi, BackendError, Querier, Storage};
use crate::gas::{self, GasConfig, GasInfo, GasState};

/// What a `debug` import receives besides the message.
#[derive(Debug, Clone, Copy)]
pub struct DebugInfo {
    /// Gas left after `debug`'s own charges (the host call and reading the message), as
    /// cosmwasm-vm reports it.
    pub gas_remaining: u64,
}

/// Handles a contract's `debug` messages.
pub type DebugHandler = Box<dyn FnMut(&str, DebugInfo) + Send>;

/// The exports of an instance the host needs during a call.
#[derive(Clone)]
pub(crate) struct Exports {
    pub(crate) memory: Memory,
    pub(crate) allocate: TypedFunc<u32, u32>,
    pub(crate) deallocate: TypedFunc<u32, ()>,
    /// The metering counter (`i64`, read as `u64`) injected by `metering`.
    pub(crate) gas_left: Global,
    /// Set to 1 by the injected checks when a block did not fit in what was left.
    pub(crate) gas_exhausted: Global,
}

/// The store data of a CosmWasm instance.
pub(crate) struct Environment {
    pub(crate) gas_config: Arc<GasConfig>,
    pub(crate) gas: GasState,
    pub(crate) storage: Box<dyn Storage>,
    /// Queries run with read-only storage: `db_write` and `db_remove` fail the call.
    pub(crate) storage_readonly: bool,
    pub(crate) api: Arc<dyn BackendApi>,
    pub(crate) querier: Box<dyn Querier>,
    /// Set once the instance exists (the imports run only after that).
    pub(crate) exports: Option<Exports>,
    /// The memory and table bounds of the instance.
    pub(crate) limits: StoreLimits,
    pub(crate) debug: Option<DebugHandler>,
    /// Depth of host-to-guest calls in progress (`allocate` from inside an import).
    pub(crate) call_depth: usize,
}

/// Why a host function failed the call (carried through the trap as the `wasmtime::Error`'s
/// source, and turned into the call's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Gas ran out in a host function.
    #[error("ran out of gas")]
    GasDepletion,
    /// A query tried to write.
    #[error("write access to storage not allowed in this context")]
    WriteAccessDenied,
    /// The contract passed a bad region or pointer.
    #[error("error in guest/host communication: {0}")]
    Communication(String),
    /// The contract called `abort`.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The backend failed.
    #[error("backend error: {0}")]
    Backend(#[from] BackendError),
    /// Anything else (a generic error of cosmwasm-vm's, such as a value too big to store).
    #[error("{0}")]
    Generic(String),
}

impl Environment {
    fn exports(&self) -> Result<Exports, CallError> {
        self.exports
            .clone()
            .ok_or_else(|| CallError::Communication("instance exports are not set".into()))
    }
}

/// The gas left in the instance's counter: 0 once the metering marked it exhausted, as
/// cosmwasm-vm's `get_gas_left` reads it (a call that ran out reports its whole limit used).
pub(crate) fn gas_left(
    store: &mut impl AsContextMut<Data = Environment>,
) -> Result<u64, CallError> {
    let exports = store.as_context().data().exports()?;
    // Once the metering marked the counter exhausted, nothing is left (wasmer's
    // `MeteringPoints::Exhausted`, which cosmwasm-vm reads as 0).
    if matches!(exports.gas_exhausted.get(store.as_context_mut()), Val::I32(v) if v != 0) {
        return Ok(0);
    }
    match exports.gas_left.get(store.as_context_mut()) {
        Val::I64(v) => Ok(v as u64),
        _ => Err(CallError::Communication("gas counter is not an i64".into())),
    }
}

/// Sets the instance's counter to `value`.
pub(crate) fn set_gas_left(
    store: &mut impl AsContextMut<Data = Environment>,
    value: u64,
) -> Result<(), CallError> {
    let exports = store.as_context().data().exports()?;
    exports
        .gas_left
        .set(store.as_context_mut(), Val::I64(value as i64))
        .map_err(|e| CallError::Communication(format!("setting the gas counter: {e}")))
}

/// Charges `info` to the call (cosmwasm-vm's `process_gas_info`): on running out the counter
/// is left at what remained after the saturating charge and the call fails.
pub(crate) fn process_gas_info(
    store: &mut impl AsContextMut<Data = Environment>,
    info: GasInfo,
) -> Result<(), CallError> {
    let left = gas_left(store)?;
    let mut ctx = store.as_context_mut();
    let (new_left, outcome) = gas::charge(&mut ctx.data_mut().gas, left, info);
    set_gas_left(store, new_left)?;
    outcome.map_err(|_| CallError::GasDepletion)
}
