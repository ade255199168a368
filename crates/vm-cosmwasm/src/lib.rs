//! The CosmWasm contract ABI on the Strata wasmtime host (work in progress: see issue 14).

#![deny(missing_docs)]

pub mod backend;
mod env;
pub mod gas;

pub use env::{CallError, DebugHandler, DebugInfo};
