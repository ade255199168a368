//! The Region protocol: how a contract and the host pass byte strings through the instance's
//! memory. A Region is 12 bytes, little-endian `{offset, capacity, length}` u32s, that the
//! contract allocates and points to.
//!
//! Checks and charges are cosmwasm-vm 3.0.10's, in its order:
//! - a Region must lie inside memory, have a non-zero offset, `length <= capacity`, and
//!   `offset + capacity` within the 32-bit address space;
//! - reading charges `read_region_cost(length)` *before* the length is checked against the
//!   caller's maximum, writing charges `write_region_cost(data.len())` before the capacity check;
//! - the bytes must lie inside memory.
//!
//! Every refusal is a [`CallError::Communication`] whose text is cosmwasm-vm's
//! `CommunicationError` text.

use wasmtime::AsContextMut;

use crate::env::{CallError, Environment, process_gas_info};
use crate::gas::GasInfo;

/// Bytes of a Region in memory.
pub(crate) const REGION_SIZE: usize = 12;

/// A contract's Region descriptor (the `Debug` form is the one cosmwasm-vm prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Region {
    /// Where the bytes start in memory.
    pub(crate) offset: u32,
    /// Bytes reserved at `offset`.
    pub(crate) capacity: u32,
    /// Bytes in use.
    pub(crate) length: u32,
}

impl Region {
    pub(crate) fn from_bytes(b: [u8; REGION_SIZE]) -> Region {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Region {
            offset: word(0),
            capacity: word(4),
            length: word(8),
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; REGION_SIZE] {
        let mut b = [0u8; REGION_SIZE];
        b[0..4].copy_from_slice(&self.offset.to_le_bytes());
        b[4..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.length.to_le_bytes());
        b
    }
}

/// cosmwasm-vm's `CommunicationError`s that the Region protocol raises, with its texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Communication {
    #[error(
        "The Wasm memory address {offset} provided by the contract could not be dereferenced: {msg}"
    )]
    Deref { offset: u32, msg: &'static str },
    #[error("Got an invalid value for iteration order: {0}")]
    InvalidOrder(i32),
    #[error("Got an invalid region: Got a zero Wasm address in the offset")]
    ZeroOffset,
    #[error(
        "Got an invalid region: Region length exceeds capacity. Length {length}, capacity {capacity}"
    )]
    LengthExceedsCapacity { length: u32, capacity: u32 },
    #[error(
        "Got an invalid region: Region exceeds address space. Offset {offset}, capacity {capacity}"
    )]
    OutOfRange { offset: u32, capacity: u32 },
    #[error("Got an invalid section: {0}")]
    InvalidSection(&'static str),
    #[error("Region length too big. Got {length}, limit {max_length}")]
    LengthTooBig { length: usize, max_length: usize },
    #[error("Region too small. Got {size}, required {required}")]
    TooSmall { size: usize, required: usize },
    #[error(
        "Tried to access memory of region {region:?} in Wasm memory of size {memory_size} bytes. This typically happens when the given Region pointer does not point to a proper Region struct."
    )]
    Access { region: Region, memory_size: usize },
    #[error("Got a zero Wasm address")]
    ZeroAddress,
}

impl From<Communication> for CallError {
    fn from(e: Communication) -> CallError {
        CallError::Communication(e.to_string())
    }
}

const DEREF_MSG: &str = "Could not dereference this pointer to a Region";

fn memory(
    store: &mut impl AsContextMut<Data = Environment>,
) -> Result<wasmtime::Memory, CallError> {
    store
        .as_context_mut()
        .data()
        .exports
        .as_ref()
        .map(|e| e.memory)
        .ok_or_else(|| CallError::Communication("instance exports are not set".into()))
}

/// Reads and validates the Region at `ptr`.
fn get_region(
    store: &mut impl AsContextMut<Data = Environment>,
    ptr: u32,
) -> Result<Region, CallError> {
    let mem = memory(store)?;
    let mut bytes = [0u8; REGION_SIZE];
    mem.read(store.as_context_mut(), ptr as usize, &mut bytes)
        .map_err(|_| Communication::Deref {
            offset: ptr,
            msg: DEREF_MSG,
        })?;
    let region = Region::from_bytes(bytes);
    if region.offset == 0 {
        return Err(Communication::ZeroOffset.into());
    }
    if region.length > region.capacity {
        return Err(Communication::LengthExceedsCapacity {
            length: region.length,
            capacity: region.capacity,
        }
        .into());
    }
    if region.capacity > u32::MAX - region.offset {
        return Err(Communication::OutOfRange {
            offset: region.offset,
            capacity: region.capacity,
        }
        .into());
    }
    Ok(region)
}

/// Reads the bytes of the Region at `ptr`, at most `max_length` of them, charging the read.
pub(crate) fn read_region(
    store: &mut impl AsContextMut<Data = Environment>,
    ptr: u32,
    max_length: usize,
) -> Result<Vec<u8>, CallError> {
    read_region_or(store, ptr, max_length, |length, max_length| {
        Communication::LengthTooBig { length, max_length }.into()
    })
}

/// [`read_region`], with `too_long(length, max_length)` as the error of an over-long region.
pub(crate) fn read_region_or(
    store: &mut impl AsContextMut<Data = Environment>,
    ptr: u32,
    max_length: usize,
    too_long: impl FnOnce(usize, usize) -> CallError,
) -> Result<Vec<u8>, CallError> {
    let region = get_region(store, ptr)?;
    let cost = store
        .as_context_mut()
        .data()
        .gas_config
        .read_region_cost(region.length as usize)
        .ok_or(CallError::GasDepletion)?;
    process_gas_info(store, GasInfo::with_cost(cost))?;
    if region.length as usize > max_length {
        return Err(too_long(region.length as usize, max_length));
    }
    let mem = memory(store)?;
    let mut out = vec![0u8; region.length as usize];
    mem.read(store.as_context_mut(), region.offset as usize, &mut out)
        .map_err(|_| Communication::Access {
            region,
            memory_size: mem.data_size(store.as_context_mut()),
        })?;
    Ok(out)
}

/// [`read_region`], with a zero pointer meaning "absent" (the optional bounds of `db_scan`).
pub(crate) fn maybe_read_region(
    store: &mut impl AsContextMut<Data = Environment>,
    ptr: u32,
    max_length: usize,
) -> Result<Option<Vec<u8>>, CallError> {
    if ptr == 0 {
        Ok(None)
    } else {
        read_region(store, ptr, max_length).map(Some)
    }
}

/// Writes `data` into the Region at `ptr` (which the contract allocated) and sets its length,
/// charging the write.
pub(crate) fn write_region(
    store: &mut impl AsContextMut<Data = Environment>,
    ptr: u32,
    data: &[u8],
) -> Result<(), CallError> {
    let mut region = get_region(store, ptr)?;
    let cost = store
        .as_context_mut()
        .data()
        .gas_config
        .write_region_cost
        .total_cost(data.len() as u64)
        .ok_or(CallError::GasDepletion)?;
    process_gas_info(store, GasInfo::with_cost(cost))?;
    if data.len() > region.capacity as usize {
        return Err(Communication::TooSmall {
            size: region.capacity as usize,
            required: data.len(),
        }
        .into());
    }
    let mem = memory(store)?;
    mem.write(store.as_context_mut(), region.offset as usize, data)
        .map_err(|_| Communication::Access {
            region,
            memory_size: mem.data_size(store.as_context_mut()),
        })?;
    // Fits in u32: at most `capacity`.
    region.length = data.len() as u32;
    mem.write(store.as_context_mut(), ptr as usize, &region.to_bytes())
        .map_err(|_| Communication::Deref {
            offset: ptr,
            msg: DEREF_MSG,
        })?;
    Ok(())
}

/// Splits `data` into its sections: each section is followed by its length as a big-endian u32
/// (cosmwasm-vm's `decode_sections`, read from the end).
pub(crate) fn decode_sections(data: &[u8]) -> Result<Vec<&[u8]>, Communication> {
    let mut sections = Vec::new();
    let mut end = data.len();
    while end >= 4 {
        let len_at = end - 4;
        let len = u32::from_be_bytes([
            data[len_at],
            data[len_at + 1],
            data[len_at + 2],
            data[len_at + 3],
        ]) as usize;
        let start = len_at
            .checked_sub(len)
            .ok_or(Communication::InvalidSection("section length overflow"))?;
        sections.push(&data[start..len_at]);
        end = start;
    }
    if end > 0 {
        return Err(Communication::InvalidSection(
            "extra data outside of any section",
        ));
    }
    sections.reverse();
    Ok(sections)
}

/// Joins `sections`, each followed by its length as a big-endian u32.
pub(crate) fn encode_sections(sections: &[&[u8]]) -> Result<Vec<u8>, CallError> {
    let total = sections.iter().map(|s| s.len() + 4).sum();
    let mut out = Vec::with_capacity(total);
    for s in sections {
        let len = u32::try_from(s.len())
            .map_err(|_| CallError::Generic(format!("section of {} bytes", s.len())))?;
        out.extend_from_slice(s);
        out.extend_from_slice(&len.to_be_bytes());
    }
    Ok(out)
}
