//! What the chain plugs in: the contract's [`Storage`], the address [`BackendApi`] and the
//! [`Querier`], each returning what it cost ([`GasInfo`]) next to its result, as cosmwasm-vm's
//! backend does. The default implementations (in `testing`-free code, used by `CwVm`) charge
//! exactly what cosmwasm-vm's mock backend charges, so gas totals compare.

use cosmwasm_std::{Binary, ContractResult, Order, Record, SystemResult};

use crate::gas::GasInfo;

/// A backend result and its cost; the cost is charged whether or not the result is an error.
pub type BackendResult<T> = (Result<T, BackendError>, GasInfo);

/// A failure of a backend call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A bad argument from the VM.
    #[error("bad argument")]
    BadArgument,
    /// The backend returned bytes that are not UTF-8 where text was expected.
    #[error("vm received invalid utf-8 data from backend")]
    InvalidUtf8,
    /// No iterator with this id.
    #[error("iterator with id {id} does not exist")]
    IteratorDoesNotExist {
        /// The id asked for.
        id: u32,
    },
    /// The backend ran out of gas.
    #[error("ran out of gas during call into backend")]
    OutOfGas,
    /// The backend failed (storage I/O, quota).
    #[error("unknown error during call into backend: {msg}")]
    Unknown {
        /// What failed.
        msg: String,
    },
    /// The contract's input was wrong (an invalid address): the contract gets the message.
    #[error("user error during call into backend: {msg}")]
    UserErr {
        /// The message the contract receives.
        msg: String,
    },
}

/// A contract's key-value storage, as the call sees it.
pub trait Storage: Send {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> BackendResult<Option<Vec<u8>>>;
    /// Opens an iterator over `start <= key < end` (`None`: unbounded) and returns its id
    /// (ids start at 1 in a call).
    fn scan(
        &mut self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        order: Order,
    ) -> BackendResult<u32>;
    /// The next entry of iterator `id`, or `None` at its end.
    fn next(&mut self, id: u32) -> BackendResult<Option<Record>>;
    /// The next key of iterator `id`.
    fn next_key(&mut self, id: u32) -> BackendResult<Option<Vec<u8>>> {
        let (result, gas) = self.next(id);
        (result.map(|r| r.map(|(k, _)| k)), gas)
    }
    /// The next value of iterator `id`.
    fn next_value(&mut self, id: u32) -> BackendResult<Option<Vec<u8>>> {
        let (result, gas) = self.next(id);
        (result.map(|r| r.map(|(_, v)| v)), gas)
    }
    /// Sets `key` to `value`.
    fn set(&mut self, key: &[u8], value: &[u8]) -> BackendResult<()>;
    /// Removes `key`.
    fn remove(&mut self, key: &[u8]) -> BackendResult<()>;
}

/// Address functions: validation and the conversion between human and canonical forms.
pub trait BackendApi: Send + Sync {
    /// Checks that `input` is a valid, normalised address.
    fn addr_validate(&self, input: &str) -> BackendResult<()>;
    /// The canonical bytes of the human address `human`.
    fn addr_canonicalize(&self, human: &str) -> BackendResult<Vec<u8>>;
    /// The human address of `canonical`.
    fn addr_humanize(&self, canonical: &[u8]) -> BackendResult<String>;
}

/// Answers a contract's queries of the chain (`query_chain`).
pub trait Querier: Send {
    /// Answers the JSON `QueryRequest` `request`, spending at most `gas_limit` gas.
    fn query_raw(
        &mut self,
        request: &[u8],
        gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>>;
}
