//! The CosmWasm contract ABI on the Strata wasmtime host (work in progress: see issue 14).

#![deny(missing_docs)]
// The engine that calls check, metering and env is being written (issue 14); drop this then.
#![allow(dead_code)]

pub mod backend;
mod check;
mod env;
pub mod gas;
mod metering;

pub use check::CheckError;
pub use env::{CallError, DebugHandler, DebugInfo};
