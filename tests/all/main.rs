//! The cross-crate integration tests of Strata, in one test binary (as wasmtime does) so that
//! it links once.

mod budget;
mod cache;
mod cosmwasm;
mod crash_vm;
mod cw_backend;
mod fuzz;
mod hostile_kv;
mod kv;
mod load;
mod pins;
mod power_vm;
mod reliability;
mod remote;
mod tables;
mod tiers;
mod vm;

/// Overwrites a file of a store as an outsider would: committed files are read-only (`0o444`),
/// so it is made writable first (root needs no such step; other users do).
fn overwrite(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    std::fs::write(path, bytes)
}
