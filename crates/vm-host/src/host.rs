//! The host state of one module instance and the key-value host ABI (`db_read`, `db_write`,
//! `db_remove`, `db_scan`, `db_next` in import module `env`), and the encoding of the state the
//! host commits besides key-value data (the mutable globals).

use serde::{Deserialize, Serialize};
use store_commit::{KvHandle, KvIter, KvQuota, Namespace, Order, StoreError};
use wasmtime::{Caller, Extern, Global, Linker, Memory, StoreLimits};

use crate::rewrite::{GLOBAL_EXPORT_PREFIX, GlobalKind, MEMORY_EXPORT};
use crate::{HostCosts, StateError, VmConfig, VmError, WasmtimeError};

/// The data of a wasmtime store running one module: its key-value space and its limits.
///
/// Embedders' host functions (see [`crate::Vm::open_with_host`]) reach it through
/// `Caller::data` and `Caller::data_mut`.
///
/// The key-value data is the module's space in the store session ([`KvHandle`]): reads go to
/// the session's writes, then to the committed tables, which are mapped, never loaded whole.
/// Three rules bound the memory it holds, whatever the contract does:
/// - the keys and values together stay within the module's quotas
///   ([`VmConfig::max_kv_bytes`], [`VmConfig::max_kv_keys`]): a write over one fails with
///   [`VmError::KvQuotaExceeded`] or [`VmError::KvKeysExceeded`];
/// - the undo log of the running call keeps at most one old value per key, the value from
///   before the call (the one a failed call restores), so rewriting one key again and again
///   holds no more than writing it once;
/// - at most [`VmConfig::max_iterators`] iterators of `db_scan` live at once; they end with
///   the call.
pub struct HostState {
    kv: KvHandle,
    /// The iterators of `db_scan`, by id; `None` once exhausted.
    iterators: Vec<Option<KvIter>>,
    pub(crate) limits: StoreLimits,
    max_key: usize,
    max_value: usize,
    max_iterators: usize,
    costs: HostCosts,
}

/// The store's error for a key-value write over a quota, as a `VmError`.
pub(crate) fn quota_error(e: &StoreError) -> Option<VmError> {
    match e {
        StoreError::KvQuota(store_commit::KvQuotaExceeded::Bytes { would_be, quota }) => {
            Some(VmError::KvQuotaExceeded {
                would_be: *would_be,
                quota: *quota,
            })
        }
        StoreError::KvQuota(store_commit::KvQuotaExceeded::Keys { would_be, quota }) => {
            Some(VmError::KvKeysExceeded {
                would_be: *would_be,
                quota: *quota,
            })
        }
        _ => None,
    }
}

impl HostState {
    pub(crate) fn new(kv: KvHandle, limits: StoreLimits, config: &VmConfig) -> Self {
        kv.set_quota(KvQuota {
            bytes: config.max_kv_bytes,
            keys: config.max_kv_keys,
        });
        HostState {
            kv,
            iterators: Vec::new(),
            limits,
            max_key: config.max_key_bytes,
            max_value: config.max_value_bytes,
            max_iterators: config.max_iterators,
            costs: config.host_costs,
        }
    }

    /// An empty state, for listing a linker's definitions.
    pub(crate) fn for_probe() -> Self {
        let id = store_index::ModuleId::of_wasm(b"");
        HostState::new(
            KvHandle::detached(Namespace::of_module(&id)),
            StoreLimits::default(),
            &VmConfig::default(),
        )
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(key)
    }

    /// Stores `value` under `key`; undone if the call fails. Refused, with nothing changed, if
    /// it would take the data over the module's quotas (a write that does not grow the figure
    /// over its quota is always allowed, also over a quota lowered since the data was written).
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.kv.insert(key, value)
    }

    /// Removes `key`; undone if the call fails.
    pub fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.kv.remove(key).map(drop)
    }

    /// The entries with `start <= key < end` in `order`, as they are now (later writes do not
    /// show in the iterator).
    pub fn range(
        &self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        order: Order,
    ) -> Result<KvIter, StoreError> {
        self.kv.range(start, end, order)
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.kv.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Total bytes of the keys and values, the figure the quota limits.
    pub fn kv_bytes(&self) -> u64 {
        self.kv.bytes()
    }

    /// Number of entries in the undo log of the running call: the distinct keys it changed.
    pub fn undo_len(&self) -> usize {
        self.kv.undo_len()
    }

    /// Iterators of `db_scan` not yet exhausted in the running call.
    pub fn live_iterators(&self) -> usize {
        self.iterators.iter().flatten().count()
    }

    /// Ends the call's iterators (they live for one call).
    pub(crate) fn end_call(&mut self) {
        self.iterators.clear();
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

/// What the host commits for a module besides its memory and key-value space: its mutable
/// globals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostBlob {
    pub(crate) globals: Vec<(u32, GlobalValue)>,
}

/// First byte of an encoded blob: bump it when the layout changes (2: key-value data moved to
/// the store's key-value spaces).
const BLOB_VERSION: u8 = 2;

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

/// An optional bound of `db_scan`: a length of -1 means none (the pointer is then ignored).
fn bound(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    what: &str,
) -> wasmtime::Result<Option<Vec<u8>>> {
    if len == -1 {
        return Ok(None);
    }
    let max_key = caller.data().max_key;
    let r = checked_range(ptr, len, what, max_key)?;
    read_bytes(caller, r, what).map(Some)
}

/// Copies `bytes` (at most `cap` of them) to guest memory at `ptr`.
fn copy_out(guest: &mut [u8], ptr: usize, bytes: &[u8], what: &str) -> wasmtime::Result<()> {
    ptr.checked_add(bytes.len())
        .and_then(|end| guest.get_mut(ptr..end))
        .ok_or_else(|| {
            wasmtime::format_err!(
                "{what} buffer at {ptr}..{} is out of bounds",
                ptr.saturating_add(bytes.len())
            )
        })?
        .copy_from_slice(bytes);
    Ok(())
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
                let Some(len) = caller.data().kv.get_with(&key, <[u8]>::len)? else {
                    return Ok(-1);
                };
                let n = len.min(val_cap);
                let per_byte = caller.data().costs.write_byte;
                charge_fuel(&mut caller, (n as u64).saturating_mul(per_byte))?;
                let memory = memory(&mut caller)?;
                let (guest, state) = memory.data_and_store_mut(&mut caller);
                state
                    .kv
                    .get_with(&key, |value| copy_out(guest, val_ptr, &value[..n], "value"))?
                    .transpose()?;
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
                caller.data_mut().insert(&key, &value)?;
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
                caller.data_mut().remove(&key)?;
                Ok(())
            },
        )
        .map_err(VmError::wasmtime)?;
    linker
        .func_wrap(
            "env",
            "db_scan",
            |mut caller: Caller<'_, HostState>,
             start_ptr: i32,
             start_len: i32,
             end_ptr: i32,
             end_len: i32,
             order: i32|
             -> wasmtime::Result<i32> {
                let order = match order {
                    0 => Order::Ascending,
                    1 => Order::Descending,
                    _ => return Err(wasmtime::format_err!("scan order {order} is not 0 or 1")),
                };
                let state = caller.data();
                if state.live_iterators() >= state.max_iterators {
                    return Err(wasmtime::format_err!(
                        "too many live iterators: the limit is {}",
                        state.max_iterators
                    ));
                }
                let bytes = |len: i32| usize::try_from(len).unwrap_or(0);
                charge(&mut caller, bytes(start_len) + bytes(end_len), 0)?;
                let start = bound(&mut caller, start_ptr, start_len, "scan start")?;
                let end = bound(&mut caller, end_ptr, end_len, "scan end")?;
                // The iterator copies the call's writes inside its range, paid per byte as a
                // read (a shared snapshot would make the next write copy all the writes, unpaid).
                let kv = caller.data().kv.clone();
                let per_byte = caller.data().costs.read_byte;
                let iter =
                    kv.range_charged(start.as_deref(), end.as_deref(), order, &mut |bytes| {
                        charge_fuel(&mut caller, bytes.saturating_mul(per_byte)).is_ok()
                    })?;
                let Some(iter) = iter else {
                    return Err(wasmtime::Trap::OutOfFuel.into());
                };
                let state = caller.data_mut();
                // Exhausted slots are reused, so ids stay below the limit.
                let id = match state.iterators.iter().position(Option::is_none) {
                    Some(free) => {
                        state.iterators[free] = Some(iter);
                        free
                    }
                    None => {
                        state.iterators.push(Some(iter));
                        state.iterators.len() - 1
                    }
                };
                i32::try_from(id).map_err(|_| wasmtime::format_err!("iterator id overflow"))
            },
        )
        .map_err(VmError::wasmtime)?;
    linker
        .func_wrap(
            "env",
            "db_next",
            |mut caller: Caller<'_, HostState>,
             iterator: i32,
             key_ptr: i32,
             key_cap: i32,
             val_ptr: i32,
             val_cap: i32,
             lens_ptr: i32|
             -> wasmtime::Result<i32> {
                let (key_ptr, key_cap) = range(key_ptr, key_cap, "key buffer")?;
                let (val_ptr, val_cap) = range(val_ptr, val_cap, "value buffer")?;
                let (lens_ptr, _) = range(lens_ptr, 8, "lengths")?;
                charge(&mut caller, 0, 0)?;
                let slot = usize::try_from(iterator)
                    .ok()
                    .and_then(|i| caller.data_mut().iterators.get_mut(i))
                    .ok_or_else(|| wasmtime::format_err!("no iterator {iterator}"))?;
                let Some(iter) = slot else {
                    return Ok(0);
                };
                let Some(entry) = iter.next() else {
                    *slot = None;
                    return Ok(0);
                };
                let (key, value) = entry?;
                let (nk, nv) = (key.len().min(key_cap), value.len().min(val_cap));
                let per_byte = caller.data().costs.write_byte;
                charge_fuel(&mut caller, ((nk + nv + 8) as u64).saturating_mul(per_byte))?;
                let memory = memory(&mut caller)?;
                let guest = memory.data_mut(&mut caller);
                copy_out(guest, key_ptr, &key[..nk], "key")?;
                copy_out(guest, val_ptr, &value[..nv], "value")?;
                let mut lens = [0u8; 8];
                lens[..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
                lens[4..].copy_from_slice(&(value.len() as u32).to_le_bytes());
                copy_out(guest, lens_ptr, &lens, "lengths")?;
                Ok(1)
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

    fn state(max_kv_bytes: u64) -> HostState {
        let config = VmConfig {
            max_kv_bytes,
            ..VmConfig::for_tests()
        };
        let id = store_index::ModuleId::of_wasm(b"m");
        HostState::new(
            KvHandle::detached(Namespace::of_module(&id)),
            StoreLimits::default(),
            &config,
        )
    }

    #[test]
    fn quota_errors_map_to_their_vm_errors() {
        let mut s = state(10);
        s.insert(b"ab", &[0; 8]).expect("exactly the quota");
        let err = s.insert(b"c", b"").expect_err("over the quota");
        assert!(matches!(
            quota_error(&err),
            Some(VmError::KvQuotaExceeded {
                would_be: 11,
                quota: 10
            })
        ));
        assert_eq!(s.kv_bytes(), 10);
        assert_eq!(s.get(b"c").expect("reads"), None);
        s.insert(b"ab", &[1; 2]).expect("smaller");
        assert_eq!((s.len(), s.kv_bytes()), (1, 4));
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
