//! A bounded pool of address-space reservations, so that opening a memory maps its image into a
//! reservation made earlier instead of reserving 4 GiB + 32 MiB afresh, and closing one resets a
//! few pages instead of unmapping the whole reservation (the `mmap`/`munmap` pair of a session was
//! its largest cost). A reservation that held a committed memory goes back still mapping that
//! memory's image, its private pages dropped (`MADV_DONTNEED`), so the next session on the same
//! commit and module opens it with no system call at all.

use std::ffi::c_void;

use parking_lot::Mutex;
use rustix::mm::{self, Advice, MapFlags, ProtFlags};
use store_index::{ModuleId, Root};

use crate::StoreError;

/// What a reservation holds besides `PROT_NONE`: the image of a committed memory mapped privately
/// over `[0, file_len)` and anonymous read-write memory over `[file_len, len)`, no private page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prepared {
    /// The commit and module whose image it maps (content-addressed: the same bytes whichever
    /// file of that commit held them).
    pub(crate) tag: (Root, ModuleId),
    pub(crate) file_len: usize,
    pub(crate) len: usize,
}

/// An idle reservation.
#[derive(Debug)]
struct Slot {
    base: usize,
    size: usize,
    /// `None`: all `PROT_NONE` with no page present, what a fresh reservation is.
    prepared: Option<Prepared>,
}

/// Idle reservations, at most `max_idle` of them (of any size and state); more are unmapped.
#[derive(Debug)]
pub(crate) struct ReservationPool {
    max_idle: usize,
    idle: Mutex<Vec<Slot>>,
}

fn reserve(size: usize) -> Result<usize, StoreError> {
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses aliases nothing.
    let base = unsafe {
        mm::mmap_anonymous(
            std::ptr::null_mut(),
            size,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }
    .map_err(|e| StoreError::Mapping {
        op: "mmap reservation",
        source: e.into(),
    })?;
    Ok(base as usize)
}

/// Makes `[base, base + len)` a fresh reservation again: `PROT_NONE`, no page present.
///
/// # Safety
///
/// The range must lie in a reservation the caller owns, which nothing refers into.
unsafe fn reset_range(base: usize, len: usize) -> rustix::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: per the caller's contract; MAP_FIXED replaces exactly the range.
    unsafe {
        mm::mmap_anonymous(
            base as *mut c_void,
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
        )
    }
    .map(|_| ())
}

/// [`reset_range`] of a reservation's first `used` bytes.
///
/// # Safety
///
/// As [`reset_range`].
unsafe fn reset(base: usize, used: usize) -> rustix::io::Result<()> {
    // SAFETY: per the caller's contract.
    unsafe { reset_range(base, used) }
}

/// Unmaps a reservation.
///
/// # Safety
///
/// `base..base + size` must be a reservation the caller owns, which nothing refers into.
unsafe fn unmap(base: usize, size: usize) {
    // SAFETY: per the caller's contract.
    let _ = unsafe { mm::munmap(base as *mut c_void, size) };
}

impl ReservationPool {
    pub(crate) fn new(max_idle: usize) -> ReservationPool {
        ReservationPool {
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A reservation of `size` bytes (a multiple of the OS page) and whether it is `want` already:
    /// an idle one prepared as `want`, else a fresh idle one, else a new one. (A slot prepared
    /// for another memory is reset first.)
    pub(crate) fn take(
        &self,
        size: usize,
        want: Option<Prepared>,
    ) -> Result<(usize, bool), StoreError> {
        let slot = {
            let mut idle = self.idle.lock();
            let ready = want.and_then(|w| {
                idle.iter()
                    .rposition(|s| s.size == size && s.prepared == Some(w))
            });
            let i = ready
                .or_else(|| {
                    idle.iter()
                        .rposition(|s| s.size == size && s.prepared.is_none())
                })
                .or_else(|| idle.iter().rposition(|s| s.size == size));
            i.map(|i| idle.swap_remove(i))
        };
        match slot {
            Some(slot) if slot.prepared.is_some() && slot.prepared == want => Ok((slot.base, true)),
            Some(slot) => {
                if let Some(p) = slot.prepared {
                    // SAFETY: an idle slot is owned by the pool alone, now by us.
                    if unsafe { reset(slot.base, p.len) }.is_err() {
                        // SAFETY: as above.
                        unsafe { unmap(slot.base, slot.size) };
                        return Ok((reserve(size)?, false));
                    }
                }
                Ok((slot.base, false))
            }
            None => Ok((reserve(size)?, false)),
        }
    }

    /// Takes back the reservation `base..base + size`, of which only `[0, used)` may be mapped
    /// otherwise than `PROT_NONE` anonymous (an image, written pages). When it was opened as
    /// `prepared` and is still at least that long, it goes back in that state: its private pages
    /// dropped, anything grown past `prepared.len` made `PROT_NONE` again. Otherwise the prefix is
    /// replaced by a fresh `PROT_NONE` mapping. Past the bound, or if a reset fails, the
    /// reservation is unmapped instead.
    ///
    /// # Safety
    ///
    /// The reservation must come from [`take`](Self::take) with this `size`, and nothing may refer
    /// into it any more.
    pub(crate) unsafe fn give(
        &self,
        base: usize,
        size: usize,
        used: usize,
        prepared: Option<Prepared>,
    ) {
        if self.idle.lock().len() < self.max_idle {
            let used = used.min(size);
            let kept = match prepared {
                Some(p) if used >= p.len => {
                    // SAFETY: inside the caller's reservation, which nothing refers into: the
                    // private pages of `[0, p.len)` go (the image reads through again, the
                    // anonymous part reads zero), the grown part becomes a fresh reservation.
                    let ok = unsafe {
                        mm::madvise(base as *mut c_void, p.len, Advice::LinuxDontNeed).is_ok()
                            && reset_range(base + p.len, used - p.len).is_ok()
                    };
                    ok.then_some(Some(p))
                }
                // SAFETY: as above; the whole used prefix becomes a fresh reservation.
                _ => unsafe { reset(base, used) }.is_ok().then_some(None),
            };
            if let Some(prepared) = kept {
                let mut idle = self.idle.lock();
                if idle.len() < self.max_idle {
                    idle.push(Slot {
                        base,
                        size,
                        prepared,
                    });
                    return;
                }
            }
        }
        // SAFETY: per the caller's contract the reservation is ours and unreferenced.
        unsafe { unmap(base, size) };
    }

    /// Resets the idle slots that map an image of commit `root` (deleted: its files must not stay
    /// mapped).
    pub(crate) fn forget(&self, root: &Root) {
        let mut idle = self.idle.lock();
        idle.retain_mut(|slot| match slot.prepared {
            Some(p) if p.tag.0 == *root => {
                // SAFETY: an idle slot is owned by the pool alone.
                if unsafe { reset(slot.base, p.len) }.is_ok() {
                    slot.prepared = None;
                    true
                } else {
                    // SAFETY: as above.
                    unsafe { unmap(slot.base, slot.size) };
                    false
                }
            }
            _ => true,
        });
    }

    /// Idle slots that map an image now.
    #[cfg(test)]
    pub(crate) fn prepared(&self) -> usize {
        self.idle
            .lock()
            .iter()
            .filter(|s| s.prepared.is_some())
            .count()
    }

    /// Idle reservations held now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().len()
    }
}

impl Drop for ReservationPool {
    fn drop(&mut self) {
        for slot in self.idle.get_mut().drain(..) {
            // SAFETY: idle slots are owned by the pool alone.
            unsafe { unmap(slot.base, slot.size) };
        }
    }
}
