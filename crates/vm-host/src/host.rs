//! The host state of one module instance and the key-value host ABI (`db_read`, `db_write`,
//! `db_remove` in import module `env`), and the encoding of the state the host commits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmtime::{Caller, Extern, Global, Linker, Memory, StoreLimits};

use crate::rewrite::{GLOBAL_EXPORT_PREFIX, GlobalKind, MEMORY_EXPORT};
use crate::{StateError, VmError, WasmtimeError};

/// The data of a wasmtime store running one module: its key-value data and its limits.
///
/// Embedders' host functions (see [`crate::Vm::open_with_host`]) reach it through
/// `Caller::data` and `Caller::data_mut`.
pub struct HostState {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Old values of the keys changed by the current call, to undo a failed call.
    undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(crate) limits: StoreLimits,
    max_key: usize,
    max_value: usize,
}

impl HostState {
    pub(crate) fn new(
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
        limits: StoreLimits,
        max_key: usize,
        max_value: usize,
    ) -> Self {
        HostState {
            kv,
            undo: Vec::new(),
            limits,
            max_key,
            max_value,
        }
    }

    /// An empty state, for listing a linker's definitions.
    pub(crate) fn for_probe() -> Self {
        HostState::new(BTreeMap::new(), StoreLimits::default(), 0, 0)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.kv.get(key).map(Vec::as_slice)
    }

    /// Stores `value` under `key`; undone if the call fails.
    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let old = self.kv.insert(key.clone(), value);
        self.undo.push((key, old));
    }

    /// Removes `key`; undone if the call fails.
    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.kv.remove(key) {
            self.undo.push((key.to_vec(), Some(old)));
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Keeps the changes of the call that just succeeded.
    pub(crate) fn keep(&mut self) {
        self.undo.clear();
    }

    /// Undoes the changes of the call that just failed.
    pub(crate) fn undo(&mut self) {
        while let Some((key, old)) = self.undo.pop() {
            match old {
                Some(value) => self.kv.insert(key, value),
                None => self.kv.remove(&key),
            };
        }
    }

    pub(crate) fn into_kv(self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.kv
    }
}

/// The value of a mutable global, as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

/// What the host commits for a module besides its memory: mutable globals and key-value data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostBlob {
    pub(crate) globals: Vec<(u32, GlobalValue)>,
    pub(crate) kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// First byte of an encoded blob: bump it when the layout changes.
const BLOB_VERSION: u8 = 1;

impl HostBlob {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![BLOB_VERSION];
        // A map of byte strings and numbers always serializes.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        match bytes.split_first() {
            None => Ok(HostBlob::default()),
            Some((&BLOB_VERSION, rest)) => postcard::from_bytes(rest).map_err(StateError::Decode),
            Some((&found, _)) => Err(StateError::Version {
                found,
                expected: BLOB_VERSION,
            }),
        }
    }
}

/// The instance's mutable globals, found once through the exports the rewrite added, so that
/// saving them after every call costs no name lookups.
pub(crate) fn exported_globals(
    store: &mut wasmtime::Store<HostState>,
    instance: &wasmtime::Instance,
    kinds: &[(u32, GlobalKind)],
) -> Result<Vec<(u32, Global)>, StateError> {
    kinds
        .iter()
        .map(|(index, _)| {
            instance
                .get_global(&mut *store, &format!("{GLOBAL_EXPORT_PREFIX}{index}"))
                .map(|global| (*index, global))
                .ok_or(StateError::UnknownGlobal(*index))
        })
        .collect()
}

/// Reads the values of `globals`.
pub(crate) fn read_globals(
    store: &mut wasmtime::Store<HostState>,
    globals: &[(u32, Global)],
) -> Result<Vec<(u32, GlobalValue)>, StateError> {
    let mut out = Vec::with_capacity(globals.len());
    for (index, global) in globals {
        let value = match global.get(&mut *store) {
            wasmtime::Val::I32(v) => GlobalValue::I32(v),
            wasmtime::Val::I64(v) => GlobalValue::I64(v),
            wasmtime::Val::F32(v) => GlobalValue::F32(v),
            wasmtime::Val::F64(v) => GlobalValue::F64(v),
            wasmtime::Val::V128(v) => GlobalValue::V128(v.as_u128()),
            _ => return Err(StateError::NotANumber(*index)),
        };
        out.push((*index, value));
    }
    Ok(out)
}

/// Sets `globals` to committed values.
pub(crate) fn write_globals(
    store: &mut wasmtime::Store<HostState>,
    globals: &[(u32, Global)],
    values: &[(u32, GlobalValue)],
) -> Result<(), StateError> {
    for (index, value) in values {
        let global = globals
            .iter()
            .find(|(i, _)| i == index)
            .map(|(_, global)| global)
            .ok_or(StateError::UnknownGlobal(*index))?;
        let val = match *value {
            GlobalValue::I32(v) => wasmtime::Val::I32(v),
            GlobalValue::I64(v) => wasmtime::Val::I64(v),
            GlobalValue::F32(v) => wasmtime::Val::F32(v),
            GlobalValue::F64(v) => wasmtime::Val::F64(v),
            GlobalValue::V128(v) => wasmtime::Val::V128(v.into()),
        };
        global
            .set(&mut *store, val)
            .map_err(|e| StateError::Restore {
                index: *index,
                source: WasmtimeError::new(e),
            })?;
    }
    Ok(())
}

fn memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<Memory> {
    match caller.get_export(MEMORY_EXPORT) {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmtime::format_err!(
            "the module has no memory for the host to read"
        )),
    }
}

/// A (pointer, length) pair from wasm as a checked range.
fn range(ptr: i32, len: i32, what: &str) -> wasmtime::Result<(usize, usize)> {
    let ptr = u32::try_from(ptr)
        .map_err(|_| wasmtime::format_err!("{what} pointer {ptr} is negative"))?;
    let len =
        u32::try_from(len).map_err(|_| wasmtime::format_err!("{what} length {len} is negative"))?;
    Ok((ptr as usize, len as usize))
}

fn read_bytes(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    what: &str,
    limit: usize,
) -> wasmtime::Result<Vec<u8>> {
    let (ptr, len) = range(ptr, len, what)?;
    if len > limit {
        return Err(wasmtime::format_err!(
            "{what} of {len} bytes is over the limit of {limit} bytes"
        ));
    }
    let memory = memory(caller)?;
    let mut buf = vec![0; len];
    memory
        .read(&*caller, ptr, &mut buf)
        .map_err(|_| wasmtime::format_err!("{what} at {ptr}..{} is out of bounds", ptr + len))?;
    Ok(buf)
}

/// Defines the key-value host ABI in `linker`.
pub(crate) fn define_abi(linker: &mut Linker<HostState>) -> Result<(), VmError> {
    linker
        .func_wrap(
            "env",
            "db_read",
            |mut caller: Caller<'_, HostState>,
             key_ptr: i32,
             key_len: i32,
             val_ptr: i32,
             val_cap: i32|
             -> wasmtime::Result<i32> {
                let max_key = caller.data().max_key;
                let key = read_bytes(&mut caller, key_ptr, key_len, "key", max_key)?;
                let Some(value) = caller.data().kv.get(&key).cloned() else {
                    return Ok(-1);
                };
                let (val_ptr, val_cap) = range(val_ptr, val_cap, "value buffer")?;
                let n = value.len().min(val_cap);
                let memory = memory(&mut caller)?;
                memory
                    .write(&mut caller, val_ptr, &value[..n])
                    .map_err(|_| {
                        wasmtime::format_err!(
                            "value buffer at {val_ptr}..{} is out of bounds",
                            val_ptr + n
                        )
                    })?;
                i32::try_from(value.len())
                    .map_err(|_| wasmtime::format_err!("value is too large for i32 length"))
            },
        )
        .map_err(VmError::wasmtime)?;
    linker
        .func_wrap(
            "env",
            "db_write",
            |mut caller: Caller<'_, HostState>,
             key_ptr: i32,
             key_len: i32,
             val_ptr: i32,
             val_len: i32|
             -> wasmtime::Result<()> {
                let (max_key, max_value) = (caller.data().max_key, caller.data().max_value);
                let key = read_bytes(&mut caller, key_ptr, key_len, "key", max_key)?;
                let value = read_bytes(&mut caller, val_ptr, val_len, "value", max_value)?;
                caller.data_mut().insert(key, value);
                Ok(())
            },
        )
        .map_err(VmError::wasmtime)?;
    linker
        .func_wrap(
            "env",
            "db_remove",
            |mut caller: Caller<'_, HostState>,
             key_ptr: i32,
             key_len: i32|
             -> wasmtime::Result<()> {
                let max_key = caller.data().max_key;
                let key = read_bytes(&mut caller, key_ptr, key_len, "key", max_key)?;
                caller.data_mut().remove(&key);
                Ok(())
            },
        )
        .map_err(VmError::wasmtime)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trips_and_refuses_other_versions() {
        let mut blob = HostBlob::default();
        blob.globals.push((3, GlobalValue::I64(-9)));
        blob.kv.insert(b"k".to_vec(), b"v".to_vec());
        let bytes = blob.encode();
        assert_eq!(HostBlob::decode(&bytes).expect("decodes"), blob);
        assert_eq!(HostBlob::decode(&[]).expect("empty"), HostBlob::default());
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(
            HostBlob::decode(&other),
            Err(StateError::Version {
                found: 9,
                expected: BLOB_VERSION
            })
        ));
        let err = HostBlob::decode(&bytes[..2]).expect_err("truncated");
        assert!(matches!(err, StateError::Decode(_)), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn undo_restores_the_state_before_the_call() {
        let mut state = HostState::new(BTreeMap::new(), StoreLimits::default(), 8, 8);
        state.insert(b"a".to_vec(), b"1".to_vec());
        state.keep();
        state.insert(b"a".to_vec(), b"2".to_vec());
        state.insert(b"b".to_vec(), b"3".to_vec());
        state.remove(b"a");
        state.undo();
        assert_eq!(state.get(b"a"), Some(&b"1"[..]));
        assert_eq!(state.get(b"b"), None);
        assert_eq!(state.len(), 1);
    }
}
