//! Wasmtime linear memories backed by the commit store's copy-on-write session memories.
//!
//! Wasmtime's memory creator is engine-wide and is not told which module or state a memory is
//! for (DESIGN-NOTES fact 1), so the session puts the store's [`MemoryHandle`] in a thread-local
//! slot just before it instantiates a module on that thread, and the creator takes it from there.
//! A memory asked for with no handle in the slot is refused: the runtime engine never creates a
//! memory of its own.

use std::cell::RefCell;

use store_commit::MemoryHandle;
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Address space wasmtime is configured to expect for each 32-bit memory ...
pub(crate) const RESERVATION: usize = 1 << 32;
/// ... followed by this much unmapped guard space, so compiled code can elide bounds checks.
pub(crate) const GUARD: usize = 32 << 20;

thread_local! {
    static NEXT: RefCell<Option<MemoryHandle>> = const { RefCell::new(None) };
}

/// Makes `handle` the memory of the next instantiation on this thread, for the duration of `f`.
pub(crate) fn with_next_memory<R>(handle: Option<MemoryHandle>, f: impl FnOnce() -> R) -> R {
    NEXT.with(|slot| *slot.borrow_mut() = handle);
    let result = f();
    NEXT.with(|slot| slot.borrow_mut().take());
    result
}

/// The engine-wide creator that hands out the slot's store memory.
pub(crate) struct StoreMemoryCreator;

// SAFETY: every memory it returns is a `StoreMemory`, whose invariants are argued below.
unsafe impl MemoryCreator for StoreMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        _maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let handle = NEXT
            .with(|slot| slot.borrow_mut().take())
            .ok_or("no session memory was prepared for this instantiation")?;
        let reserved =
            reserved_size_in_bytes.ok_or("the engine must reserve memories statically")?;
        if handle.reservation() < reserved + guard_size_in_bytes {
            return Err(format!(
                "session memory reserves {} bytes, wasmtime needs {}",
                handle.reservation(),
                reserved + guard_size_in_bytes
            ));
        }
        if handle.len() < minimum {
            return Err(format!(
                "committed memory has {} bytes, the module needs at least {minimum}",
                handle.len()
            ));
        }
        Ok(Box::new(StoreMemory { handle, reserved }))
    }
}

/// A session memory as wasmtime sees it.
struct StoreMemory {
    handle: MemoryHandle,
    reserved: usize,
}

// SAFETY: the store maps the memory at a base that never moves, reserves
// `handle.reservation()` bytes of address space there (checked above to cover wasmtime's
// reservation plus its guard), keeps everything past `len()` inaccessible, and `grow_to`
// maps zeroed pages in place; the mapping lives as long as any handle clone.
unsafe impl LinearMemory for StoreMemory {
    fn byte_size(&self) -> usize {
        self.handle.len()
    }

    fn byte_capacity(&self) -> usize {
        self.reserved
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.reserved {
            return Err(wasmtime::format_err!(
                "cannot grow memory to {new_size} bytes: {} are reserved",
                self.reserved
            ));
        }
        self.handle
            .grow_to(new_size)
            .map_err(|e| wasmtime::format_err!("cannot grow memory: {e}"))
    }

    fn as_ptr(&self) -> *mut u8 {
        self.handle.base()
    }
}
