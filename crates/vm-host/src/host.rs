//! The host state of one module instance and the key-value host ABI (`db_read`, `db_write`,
//! `db_remove` in import module `env`), and the encoding of the state the host commits.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use wasmtime::{Caller, Extern, Global, Linker, Memory, StoreLimits};

use crate::rewrite::{GLOBAL_EXPORT_PREFIX, GlobalKind, MEMORY_EXPORT};
use crate::{HostCosts, StateError, VmConfig, VmError, WasmtimeError};

/// The data of a wasmtime store running one module: its key-value data and its limits.
///
/// Embedders' host functions (see [`crate::Vm::open_with_host`]) reach it through
/// `Caller::data` and `Caller::data_mut`.
///
/// Two rules bound the memory it holds, whatever the contract does:
/// - the keys and values together stay within the module's quota
///   ([`VmConfig::max_kv_bytes`]): a write over it fails with [`KvQuotaExceeded`];
/// - the undo log of the running call keeps at most one old value per key, the value from
///   before the call (the one a failed call restores), so rewriting one key again and again
///   holds no more than writing it once.
pub struct HostState {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Total bytes of the keys and values in `kv`.
    kv_bytes: u64,
    /// For each key the current call changed, its value before the call (`None`: absent).
    undo: HashMap<Vec<u8>, Option<Vec<u8>>>,
    pub(crate) limits: StoreLimits,
    max_key: usize,
    max_value: usize,
    quota: u64,
    costs: HostCosts,
}

/// A key-value write would take a module's data over its quota ([`VmConfig::max_kv_bytes`]).
/// A call that hits it fails as [`VmError::KvQuotaExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "key-value quota exceeded: the write would make the module's data {would_be} bytes, over the quota of {quota} bytes"
)]
pub struct KvQuotaExceeded {
    /// The total bytes of keys and values the write would have made.
    pub would_be: u64,
    /// The quota.
    pub quota: u64,
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl HostState {
    pub(crate) fn new(
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
        limits: StoreLimits,
        config: &VmConfig,
    ) -> Self {
        let kv_bytes = kv.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        HostState {
            kv,
            kv_bytes,
            undo: HashMap::new(),
            limits,
            max_key: config.max_key_bytes,
            max_value: config.max_value_bytes,
            quota: config.max_kv_bytes,
            costs: config.host_costs,
        }
    }

    /// An empty state, for listing a linker's definitions.
    pub(crate) fn for_probe() -> Self {
        HostState::new(
            BTreeMap::new(),
            StoreLimits::default(),
            &VmConfig::default(),
        )
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.kv.get(key).map(Vec::as_slice)
    }

    /// Stores `value` under `key`; undone if the call fails. Refused, with nothing changed, if
    /// it would take the data over the module's quota (a write that shrinks the data is
    /// always allowed, also over a quota lowered since the data was written).
    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), KvQuotaExceeded> {
        let old_bytes = self.kv.get(&key).map_or(0, |old| entry_bytes(&key, old));
        let would_be = self.kv_bytes - old_bytes + entry_bytes(&key, &value);
        if would_be > self.quota && would_be > self.kv_bytes {
            return Err(KvQuotaExceeded {
                would_be,
                quota: self.quota,
            });
        }
        self.kv_bytes = would_be;
        if self.undo.contains_key(&key) {
            // An intermediate value of this call: nothing restores it.
            self.kv.insert(key, value);
        } else {
            let old = self.kv.insert(key.clone(), value);
            self.undo.insert(key, old);
        }
        Ok(())
    }

    /// Removes `key`; undone if the call fails.
    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.kv.remove(key) {
            self.kv_bytes -= entry_bytes(key, &old);
            if !self.undo.contains_key(key) {
                self.undo.insert(key.to_vec(), Some(old));
            }
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

    /// Total bytes of the keys and values, the figure the quota limits.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes
    }

    /// Number of entries in the undo log of the running call: the distinct keys it changed.
    pub fn undo_len(&self) -> usize {
        self.undo.len()
    }

    /// Keeps the changes of the call that just succeeded.
    pub(crate) fn keep(&mut self) {
        self.undo.clear();
    }

    /// Undoes the changes of the call that just failed.
    pub(crate) fn undo(&mut self) {
        for (key, old) in std::mem::take(&mut self.undo) {
            if let Some(current) = self.kv.remove(&key) {
                self.kv_bytes -= entry_bytes(&key, &current);
            }
            if let Some(value) = old {
                self.kv_bytes += entry_bytes(&key, &value);
                self.kv.insert(key, value);
            }
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

/// Checks a (pointer, length) pair and its length against `limit`.
fn checked_range(ptr: i32, len: i32, what: &str, limit: usize) -> wasmtime::Result<(usize, usize)> {
    let (ptr, len) = range(ptr, len, what)?;
    if len > limit {
        return Err(wasmtime::format_err!(
            "{what} of {len} bytes is over the limit of {limit} bytes"
        ));
    }
    Ok((ptr, len))
}

fn read_bytes(
    caller: &mut Caller<'_, HostState>,
    (ptr, len): (usize, usize),
    what: &str,
) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let mut buf = vec![0; len];
    memory
        .read(&*caller, ptr, &mut buf)
        .map_err(|_| wasmtime::format_err!("{what} at {ptr}..{} is out of bounds", ptr + len))?;
    Ok(buf)
}

/// Charges the fuel of a host call that reads `read` bytes from guest memory and writes
/// `written` into it, before the host does the work. A call that cannot pay runs out of fuel.
fn charge(caller: &mut Caller<'_, HostState>, read: usize, written: usize) -> wasmtime::Result<()> {
    let cost = caller.data().costs.fuel(read, written);
    charge_fuel(caller, cost)
}

fn charge_fuel(caller: &mut Caller<'_, HostState>, cost: u64) -> wasmtime::Result<()> {
    let left = caller.get_fuel()?;
    match left.checked_sub(cost) {
        Some(rest) => caller.set_fuel(rest),
        None => {
            caller.set_fuel(0)?;
            Err(wasmtime::Trap::OutOfFuel.into())
        }
    }
}

/// Defines the key-value host ABI in `linker`. Every function first charges its fuel
/// ([`HostCosts`]), then does the work.
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
                let key_range = checked_range(key_ptr, key_len, "key", max_key)?;
                let (val_ptr, val_cap) = range(val_ptr, val_cap, "value buffer")?;
                charge(&mut caller, key_range.1, 0)?;
                let key = read_bytes(&mut caller, key_range, "key")?;
                let Some(len) = caller.data().kv.get(&key).map(Vec::len) else {
                    return Ok(-1);
                };
                let n = len.min(val_cap);
                let per_byte = caller.data().costs.write_byte;
                charge_fuel(&mut caller, (n as u64).saturating_mul(per_byte))?;
                let memory = memory(&mut caller)?;
                let (guest, state) = memory.data_and_store_mut(&mut caller);
                let value = state.kv.get(&key).map_or(&[][..], Vec::as_slice);
                let out = val_ptr
                    .checked_add(n)
                    .and_then(|end| guest.get_mut(val_ptr..end))
                    .ok_or_else(|| {
                        wasmtime::format_err!(
                            "value buffer at {val_ptr}..{} is out of bounds",
                            val_ptr + n
                        )
                    })?;
                out.copy_from_slice(&value[..n]);
                i32::try_from(len)
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
                let key_range = checked_range(key_ptr, key_len, "key", max_key)?;
                let value_range = checked_range(val_ptr, val_len, "value", max_value)?;
                charge(&mut caller, key_range.1 + value_range.1, 0)?;
                let key = read_bytes(&mut caller, key_range, "key")?;
                let value = read_bytes(&mut caller, value_range, "value")?;
                caller.data_mut().insert(key, value)?;
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
                let key_range = checked_range(key_ptr, key_len, "key", max_key)?;
                charge(&mut caller, key_range.1, 0)?;
                let key = read_bytes(&mut caller, key_range, "key")?;
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
        let mut state = HostState::new(BTreeMap::new(), StoreLimits::default(), &config(100));
        state.insert(b"a".to_vec(), b"1".to_vec()).expect("fits");
        state.keep();
        state.insert(b"a".to_vec(), b"2".to_vec()).expect("fits");
        state.insert(b"b".to_vec(), b"3".to_vec()).expect("fits");
        state.remove(b"a");
        state.insert(b"a".to_vec(), b"45".to_vec()).expect("fits");
        assert_eq!(state.kv_bytes(), 5);
        state.undo();
        assert_eq!(state.get(b"a"), Some(&b"1"[..]));
        assert_eq!(state.get(b"b"), None);
        assert_eq!(state.len(), 1);
        assert_eq!(state.kv_bytes(), 2);
        assert_eq!(state.undo_len(), 0);
    }

    fn config(max_kv_bytes: u64) -> VmConfig {
        VmConfig {
            max_kv_bytes,
            ..VmConfig::for_tests()
        }
    }

    #[test]
    fn undo_log_keeps_one_old_value_per_key() {
        let mut kv = BTreeMap::new();
        kv.insert(b"k".to_vec(), b"old".to_vec());
        let mut state = HostState::new(kv, StoreLimits::default(), &config(1 << 20));
        for i in 0..1000u32 {
            state
                .insert(b"k".to_vec(), i.to_le_bytes().repeat(64))
                .expect("fits");
            if i % 3 == 0 {
                state.remove(b"k");
            }
        }
        state.insert(b"new".to_vec(), b"v".to_vec()).expect("fits");
        assert_eq!(state.undo_len(), 2);
        state.undo();
        assert_eq!(state.get(b"k"), Some(&b"old"[..]));
        assert_eq!(state.get(b"new"), None);
        assert_eq!(state.kv_bytes(), 4);
    }

    #[test]
    fn quota_counts_keys_and_values_and_allows_shrinking() {
        let mut state = HostState::new(BTreeMap::new(), StoreLimits::default(), &config(10));
        state
            .insert(b"ab".to_vec(), vec![0; 8])
            .expect("exactly the quota");
        assert_eq!(
            state.insert(b"c".to_vec(), vec![]),
            Err(KvQuotaExceeded {
                would_be: 11,
                quota: 10
            })
        );
        // Overwriting with a value of the same size or smaller still works.
        state.insert(b"ab".to_vec(), vec![1; 8]).expect("same size");
        state.insert(b"ab".to_vec(), vec![1; 2]).expect("smaller");
        assert_eq!(state.kv_bytes(), 4);
        assert_eq!(state.get(b"c"), None);
        // Over a quota lowered since: shrinking is allowed, growing is not.
        let kv = state.into_kv();
        let mut state = HostState::new(kv, StoreLimits::default(), &config(1));
        assert!(state.insert(b"ab".to_vec(), vec![1; 3]).is_err());
        state.insert(b"ab".to_vec(), vec![1; 1]).expect("shrinks");
        assert_eq!(state.kv_bytes(), 3);
    }

    #[test]
    fn host_costs_are_linear_and_saturate() {
        let costs = HostCosts {
            call: 10,
            read_byte: 2,
            write_byte: 3,
        };
        assert_eq!(costs.fuel(0, 0), 10);
        assert_eq!(costs.fuel(1, 0), 12);
        assert_eq!(costs.fuel(1024, 1024), 10 + 2048 + 3072);
        let huge = HostCosts {
            call: u64::MAX,
            ..costs
        };
        assert_eq!(huge.fuel(usize::MAX, usize::MAX), u64::MAX);
        assert_eq!(costs.fuel(usize::MAX, 0), u64::MAX);
    }
}
