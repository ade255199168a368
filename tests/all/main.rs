//! The cross-crate integration tests of Strata, in one test binary (as wasmtime does) so that
//! it links once.

mod cache;
mod crash_vm;
mod fuzz;
mod hostile_kv;
mod load;
mod pins;
mod power_vm;
mod reliability;
mod tables;
mod vm;
