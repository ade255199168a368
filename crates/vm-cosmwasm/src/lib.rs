//! The CosmWasm contract ABI on the Strata wasmtime host (work in progress: see issue 14).

#![deny(missing_docs)]

pub mod backend;
mod check;
mod env;
pub mod gas;
mod metering;

pub use check::CheckError;
pub use env::{CallError, DebugHandler, DebugInfo};
