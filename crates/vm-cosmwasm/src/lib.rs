//! The CosmWasm contract ABI on the Strata wasmtime host (work in progress: see issue 14).

#![deny(missing_docs)]

pub mod backend;
pub mod backends;
// Until the engine (issue 14, the lead's part) links `imports::define` and runs calls, only
// the tests use the store environment, the imports and the Region protocol.
#[allow(dead_code)]
mod env;
#[allow(dead_code)]
pub mod gas;
#[allow(dead_code)]
mod imports;
#[allow(dead_code)]
mod memory;

pub use env::{CallError, DebugHandler, DebugInfo};
