//! The integration tests of the commit store (store-index + store-commit) through its public API,
//! in one test binary (`cargo test -p store-commit --test store`), split by concern. They build
//! without wasmtime.

mod basics;
mod concurrency;
mod crash;
mod deletion;
mod faults;
mod format;
mod kv;
mod mapped;
mod model;
mod power_loss;

use std::collections::BTreeMap;

use store_commit::{MemoryHandle, ModuleId, PAGE_SIZE, Root, StoreConfig};
use store_index::{MemoryTree, hash, state_root};

const RES: usize = 16 * PAGE_SIZE;

fn quick() -> StoreConfig {
    StoreConfig {
        fsync: false,
        ..StoreConfig::default()
    }
}

fn wasm(n: u8) -> Vec<u8> {
    let mut w = b"\0asm\x01\0\0\0".to_vec();
    w.push(n);
    w
}

fn write(mem: &MemoryHandle, at: usize, data: &[u8]) {
    assert!(at + data.len() <= mem.len());
    // SAFETY: the range is inside the memory's length and nothing else uses it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mem.base().add(at), data.len()) }
}

/// Overwrites a file of a store as an outsider would: committed files are read-only (`0o444`),
/// so it is made writable first (root needs no such step; other users do).
fn overwrite(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    std::fs::write(path, bytes)
}

fn read(mem: &MemoryHandle) -> Vec<u8> {
    // SAFETY: `[base, base + len)` is mapped readable and nothing writes it meanwhile.
    unsafe { std::slice::from_raw_parts(mem.base(), mem.len()).to_vec() }
}

/// Per module: bytecode, memory, blob.
type ModelState = BTreeMap<ModuleId, (Vec<u8>, Vec<u8>, Vec<u8>)>;

/// Per key-value space: its pairs.
type KvModel = BTreeMap<store_commit::Namespace, BTreeMap<Vec<u8>, Vec<u8>>>;

/// The root the model expects with key-value spaces, each space's set hash computed from its
/// whole content.
fn model_root_kv(state: &ModelState, kv: &KvModel) -> Root {
    let leaves = state.iter().map(|(id, (code, mem, blob))| {
        let code_hash = store_index::Digest::sha256(code);
        let leaf = hash::module_leaf(
            id,
            &code_hash,
            &MemoryTree::from_memory(mem).root(),
            &hash::blob(blob),
        );
        (*id, leaf)
    });
    let spaces = kv.iter().filter(|(_, m)| !m.is_empty()).map(|(ns, m)| {
        let mut set = store_index::KvHash::empty();
        let mut bytes = 0;
        for (k, v) in m {
            set.insert(k, v);
            bytes += (k.len() + v.len()) as u64;
        }
        (
            *ns,
            hash::kv_root(ns, m.len() as u64, bytes, &set.checksum()),
        )
    });
    store_index::commit_root(leaves, spaces)
}

/// The root the model expects, computed from full contents, independently of the store's
/// incremental bookkeeping.
fn model_root(state: &ModelState) -> Root {
    let leaves: Vec<(ModuleId, store_index::Digest)> = state
        .iter()
        .map(|(id, (code, mem, blob))| {
            let code_hash = store_index::Digest::sha256(code);
            let leaf = hash::module_leaf(
                id,
                &code_hash,
                &MemoryTree::from_memory(mem).root(),
                &hash::blob(blob),
            );
            (*id, leaf)
        })
        .collect();
    state_root(leaves.iter().map(|(id, l)| (*id, *l)))
}
