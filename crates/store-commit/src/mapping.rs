//! Copy-on-write memory mappings of committed images, the [`MemoryHandle`] handed to the host, and
//! dirty-page discovery through `/proc/self/pagemap`.

use std::ffi::c_void;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use strata_fs::File;

use parking_lot::Mutex;
use rustix::mm::{self, Advice, MapFlags, MprotectFlags, ProtFlags};
use store_index::PAGE_SIZE;

use crate::StoreError;
use crate::pool::{Prepared, ReservationPool};
use store_index::{ModuleId, Root};

/// The operating-system page: the granularity of dirty tracking and of deltas.
pub const OS_PAGE: usize = 4096;

fn map_err(op: &'static str, e: rustix::io::Errno) -> StoreError {
    StoreError::Mapping {
        op,
        source: e.into(),
    }
}

/// One reservation of address space holding one linear memory.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: usize,
    /// Bytes reserved (what the caller asked for).
    reservation: usize,
    /// Bytes actually mapped (reservation rounded up to whole OS pages, at least one page).
    mapped: usize,
    /// Current byte length; bytes past it are PROT_NONE.
    len: AtomicUsize,
    /// Bytes at the start backed by the image file (MAP_PRIVATE); never changes.
    file_len: usize,
    grow: Mutex<()>,
    /// Where the reservation came from and goes back to.
    pool: Arc<ReservationPool>,
    /// The committed memory it opened, for the pool to keep it mapped.
    prepared: Option<Prepared>,
    /// Whether the reservation is registered for write tracking ([`Mapping::track`]).
    tracked: std::sync::atomic::AtomicBool,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Everything past the larger of the length and the image is PROT_NONE and never held a page.
        let used = self.len().max(self.file_len.div_ceil(OS_PAGE) * OS_PAGE);
        // SAFETY: `base..base+mapped` was taken from the pool by `Mapping::new` with this size and is
        // owned by this value; the last handle is gone, so nothing refers into it any more.
        unsafe { self.pool.give(self.base, self.mapped, used, self.prepared) };
    }
}

impl Mapping {
    /// Takes a reservation of `reservation` bytes from `pool`, maps the first `file_len` bytes of
    /// the file `image` opens privately over the start and makes `[file_len, len)` anonymous
    /// read-write memory. `tag` names the committed memory the file holds: a reservation that
    /// mapped it before comes back from the pool ready, with no system call and no file opened.
    pub(crate) fn new(
        image: Option<&mut dyn FnMut() -> Result<File, StoreError>>,
        file_len: usize,
        len: usize,
        reservation: usize,
        pool: &Arc<ReservationPool>,
        tag: Option<(Root, ModuleId)>,
    ) -> Result<Mapping, StoreError> {
        debug_assert!(file_len <= len && len <= reservation);
        let mapped = reservation.max(1).div_ceil(OS_PAGE) * OS_PAGE;
        let prepared = tag.map(|tag| Prepared { tag, file_len, len });
        let (base, ready) = pool.take(mapped, prepared)?;
        let base = base as *mut c_void;
        // From here on, dropping `mapping` returns the reservation (reset) to the pool.
        let mapping = Mapping {
            base: base as usize,
            reservation,
            mapped,
            len: AtomicUsize::new(len),
            file_len,
            grow: Mutex::new(()),
            pool: pool.clone(),
            prepared,
            tracked: std::sync::atomic::AtomicBool::new(false),
        };
        if ready {
            return Ok(mapping);
        }
        if file_len > 0 {
            let file = image.ok_or_else(|| StoreError::InvalidInput {
                reason: "image mapping without a file".into(),
            })?()?;
            // SAFETY: the range lies inside our own reservation, which nothing else refers into
            // (MAP_FIXED replaces only it); the caller checked the file is at least `file_len` long, so no access can fault past its end.
            unsafe {
                mm::mmap(
                    base,
                    file_len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                    &file,
                    0,
                )
            }
            .map_err(|e| map_err("mmap image", e))?;
        }
        mapping.protect(file_len, len)?;
        Ok(mapping)
    }

    /// Makes `[from, to)` (anonymous part) readable and writable.
    fn protect(&self, from: usize, to: usize) -> Result<(), StoreError> {
        if to > from {
            // SAFETY: the range is inside our reservation and past the file mapping; making reserved
            // anonymous memory accessible cannot invalidate any reference.
            unsafe {
                mm::mprotect(
                    (self.base + from) as *mut c_void,
                    to - from,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }
            .map_err(|e| map_err("mprotect", e))?;
        }
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn grow_to(&self, new_len: usize) -> Result<(), StoreError> {
        let _guard = self.grow.lock();
        let len = self.len();
        if !new_len.is_multiple_of(PAGE_SIZE) || new_len > self.reservation {
            return Err(StoreError::InvalidInput {
                reason: format!(
                    "cannot grow memory to {new_len} bytes: must be a multiple of 64 KiB and at most the reservation of {} bytes",
                    self.reservation
                ),
            });
        }
        if new_len < len {
            return Err(StoreError::InvalidInput {
                reason: format!("cannot shrink memory from {len} to {new_len} bytes"),
            });
        }
        self.protect(len, new_len)?;
        self.len.store(new_len, Ordering::Release);
        Ok(())
    }

    /// Sets the length back to `new_len`, decommitting everything past it (rollback only).
    pub(crate) fn truncate_or_grow(&self, new_len: usize) -> Result<(), StoreError> {
        let _guard = self.grow.lock();
        let len = self.len();
        if new_len > len {
            self.protect(len, new_len)?;
        } else if new_len < len {
            debug_assert!(new_len >= self.file_len);
            // SAFETY: the range is anonymous memory of our reservation past the file mapping; a fresh
            // PROT_NONE mapping over it drops its pages. The caller guarantees no wasm runs meanwhile.
            unsafe {
                mm::mmap_anonymous(
                    (self.base + new_len) as *mut c_void,
                    len - new_len,
                    ProtFlags::empty(),
                    MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
                )
            }
            .map_err(|e| map_err("mmap decommit", e))?;
            // The fresh mapping is not registered: register it, so growing back is tracked.
            if self.tracked.load(Ordering::Acquire) {
                uffd::register(self.base + new_len, len - new_len)
                    .map_err(|e| map_err("userfaultfd register", e))?;
            }
        }
        self.len.store(new_len, Ordering::Release);
        Ok(())
    }

    /// Starts write tracking: from now on [`written_since_scan`](Self::written_since_scan)
    /// reports the pages written since the last scan (or this call). `false` when the kernel
    /// lacks userfaultfd's asynchronous write-protection or `PAGEMAP_SCAN`, or tracking is off
    /// on this thread; then nothing changed.
    pub(crate) fn track(&self) -> Result<bool, StoreError> {
        if !tracking_enabled() || !uffd::available() {
            return Ok(false);
        }
        if !self.tracked.load(Ordering::Acquire) {
            uffd::register(self.base, self.mapped)
                .map_err(|e| map_err("userfaultfd register", e))?;
            self.tracked.store(true, Ordering::Release);
        }
        uffd::write_protect(self.base, self.len())
            .map_err(|e| map_err("userfaultfd write-protect", e))?;
        Ok(true)
    }

    /// OS pages of `[0, len)` written since the last scan or [`track`](Self::track), write-protected
    /// again by the same `PAGEMAP_SCAN` (atomically: a write after the scan is seen by the next).
    /// Costs a walk of the page tables of the length and the pages found, not the memory size.
    pub(crate) fn written_since_scan(&self) -> Result<Vec<u32>, StoreError> {
        const PAGE_IS_WRITTEN: u64 = 1 << 1;
        const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
        const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
        debug_assert!(self.tracked.load(Ordering::Acquire));
        scan(
            self.base,
            self.len() / OS_PAGE,
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            (0, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN),
        )
        .map_err(|e| map_err("pagemap scan", e))
    }

    /// The bytes of `[offset, offset + len)`.
    ///
    /// # Safety
    ///
    /// The range must be inside the current length, and nothing may write the memory while the
    /// returned slice lives (the session contract: no wasm runs during commit, checkpoint, rollback).
    pub(crate) unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        debug_assert!(offset + len <= self.len());
        // SAFETY: per the caller's contract the range is mapped readable and not written meanwhile.
        unsafe { std::slice::from_raw_parts((self.base + offset) as *const u8, len) }
    }

    /// Copies `data` into the memory at `offset`.
    ///
    /// # Safety
    ///
    /// The range must be inside the current length and no slice from [`bytes`](Self::bytes) may be
    /// alive; no wasm may run meanwhile.
    pub(crate) unsafe fn write(&self, offset: usize, data: &[u8]) {
        debug_assert!(offset + data.len() <= self.len());
        // SAFETY: per the caller's contract the range is mapped writable and unaliased.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base + offset) as *mut u8,
                data.len(),
            )
        }
    }

    /// Drops private copies of `[offset, offset + len)`: file-backed pages read the image again,
    /// anonymous pages read zero.
    pub(crate) fn discard(&self, offset: usize, len: usize) -> Result<(), StoreError> {
        debug_assert!(offset.is_multiple_of(OS_PAGE) && offset + len <= self.len());
        // SAFETY: the range is inside the mapping; MADV_DONTNEED on a private mapping only resets
        // content, which the caller (rollback) intends; no wasm runs meanwhile.
        unsafe {
            mm::madvise(
                (self.base + offset) as *mut c_void,
                len,
                Advice::LinuxDontNeed,
            )
        }
        .map_err(|e| map_err("madvise", e))
    }

    /// OS pages of `[0, len)` that may differ from what the mapping started with: pages written
    /// since mapped (private copies), per `/proc/self/pagemap`, or every page when it is unreadable.
    pub(crate) fn written_pages(&self) -> Vec<u32> {
        let len = self.len();
        let pages = len / OS_PAGE;
        let found = match dirty_source() {
            DirtySource::Auto => {
                pagemap_scan(self.base, pages).or_else(|| pagemap_written(self.base, pages))
            }
            DirtySource::PagemapRead => pagemap_written(self.base, pages),
            DirtySource::Compare => None,
        };
        found.unwrap_or_else(|| (0..pages as u32).collect())
    }
}

/// How dirty pages are found; tests force each fallback on their own thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirtySource {
    /// `PAGEMAP_SCAN`, else reading pagemap, else every page.
    Auto,
    /// Reading `/proc/self/pagemap` (8 bytes per page).
    #[cfg_attr(not(test), allow(dead_code))]
    PagemapRead,
    /// Every page is a candidate; the commit compares each with its base.
    #[cfg_attr(not(test), allow(dead_code))]
    Compare,
}

thread_local! {
    static DIRTY_SOURCE: std::cell::Cell<DirtySource> = const { std::cell::Cell::new(DirtySource::Auto) };
}

fn dirty_source() -> DirtySource {
    DIRTY_SOURCE.with(|s| s.get())
}

/// Forces a dirty-page source on this thread (tests of the fallbacks).
#[cfg(test)]
pub(crate) fn set_dirty_source(source: DirtySource) {
    DIRTY_SOURCE.with(|s| s.set(source));
}

/// A read-only shared mapping of a committed image, to compare written pages with their base
/// without a system call per page.
#[derive(Debug)]
pub(crate) struct ImageView {
    map: memmap2::Mmap,
}

impl ImageView {
    /// Maps the first `len` bytes of `file` read-only (the caller checked it is exactly that long;
    /// committed files never change in place). `None` when `len` is zero.
    pub(crate) fn new(file: &File, len: usize) -> Result<Option<ImageView>, StoreError> {
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: memmap2's contract is that the file is not modified or truncated while mapped.
        // Committed files are never written in place (the store replaces directories by rename
        // and deletes whole commits only when no session is based on them; a removed file lives
        // on while mapped) and are read-only on disk (`0o444`, so no other program of the node's
        // user can open one for writing); the file is `len` bytes long, so no access within
        // `len` faults past its end. A disk failing a page-in is outside this contract
        // (docs/RELIABILITY.md, threat model).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }.map_err(|source| {
            StoreError::Mapping {
                op: "mmap image view",
                source,
            }
        })?;
        Ok(Some(ImageView { map }))
    }

    /// The bytes of `[offset, offset + len)`, which must lie inside the image.
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self.map[offset..offset + len]
    }
}

fn pagemap() -> Option<&'static File> {
    static PAGEMAP: OnceLock<Option<File>> = OnceLock::new();
    PAGEMAP
        .get_or_init(|| {
            // The pagemap layout assumed here (4 KiB pages) holds on x86-64 Linux.
            if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
                File::open("/proc/self/pagemap").ok()
            } else {
                None
            }
        })
        .as_ref()
}

/// `struct pm_scan_arg` of `<linux/fs.h>` (Linux 6.7+).
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGEMAP_SCAN: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::read_write::<PmScanArg>(b'f', 16);

/// Like [`pagemap_written`], through the `PAGEMAP_SCAN` ioctl, which returns only the matching
/// ranges instead of 8 bytes per page: a 1 GiB memory with one written page costs a page-table walk,
/// not a 2 MiB read. `None` when the kernel lacks it.
fn pagemap_scan(base: usize, pages: usize) -> Option<Vec<u32>> {
    use std::sync::atomic::AtomicBool;
    const IS_FILE: u64 = 1 << 2;
    const IS_PRESENT: u64 = 1 << 3;
    const IS_SWAPPED: u64 = 1 << 4;
    const IS_PFNZERO: u64 = 1 << 5;
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    // Private pages: (present or swapped), not file-backed, not the shared zero page (read-only
    // faults of anonymous memory map it; it always reads zero, which no base page can be
    // mistaken for, see `Mapping::truncate_or_grow`).
    let found = scan(
        base,
        pages,
        0,
        (
            IS_FILE | IS_PFNZERO,
            IS_FILE | IS_PFNZERO,
            IS_PRESENT | IS_SWAPPED,
            IS_PRESENT,
        ),
    );
    if found.is_err() {
        UNSUPPORTED.store(true, Ordering::Relaxed);
    }
    found.ok()
}

/// One `PAGEMAP_SCAN` of `[base, base + pages * 4096)` with `flags` and the categories
/// `(inverted, mask, anyof, return)`: the OS pages matched, sorted.
fn scan(
    base: usize,
    pages: usize,
    flags: u64,
    (inverted, mask, anyof, returned): (u64, u64, u64, u64),
) -> Result<Vec<u32>, rustix::io::Errno> {
    let file = pagemap().ok_or(rustix::io::Errno::NOSYS)?;
    let end = (base + pages * OS_PAGE) as u64;
    let mut start = base as u64;
    let mut regions = [PageRegion::default(); 16];
    let mut out = Vec::new();
    while start < end {
        regions.fill(PageRegion::default());
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: inverted,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: returned,
        };
        // SAFETY: PAGEMAP_SCAN reads and writes a `pm_scan_arg` (laid out by `PmScanArg`) and
        // writes at most `vec_len` `page_region`s to `vec`, which points to that many. With
        // `PM_SCAN_WP_MATCHING` it write-protects (asynchronously, see `uffd`) the pages it
        // reports, which only changes what later scans report.
        unsafe {
            rustix::ioctl::ioctl(
                file,
                rustix::ioctl::Updater::<PAGEMAP_SCAN, PmScanArg>::new(&mut arg),
            )
        }?;
        for r in regions.iter().take_while(|r| r.end > r.start) {
            let first = (r.start.max(start) - base as u64) / OS_PAGE as u64;
            let last = (r.end.min(end) - base as u64) / OS_PAGE as u64;
            out.extend(first as u32..last as u32);
        }
        if arg.walk_end <= start {
            return Err(rustix::io::Errno::INVAL);
        }
        start = arg.walk_end;
    }
    out.dedup();
    Ok(out)
}

// Whether `Mapping::track` may use userfaultfd on this thread; tests turn it off to check the
// fallback (a checkpoint that copies every page written so far).
thread_local! {
    static TRACKING: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn tracking_enabled() -> bool {
    TRACKING.with(|t| t.get())
}

/// Turns write tracking off (or on again) on this thread (tests of the fallback).
#[cfg(test)]
pub(crate) fn set_tracking(on: bool) {
    TRACKING.with(|t| t.set(on));
}

/// Whether this kernel offers write tracking.
#[cfg(test)]
pub(crate) fn tracking_available() -> bool {
    uffd::available()
}

/// Write tracking through userfaultfd's asynchronous write-protection (Linux 6.7+): a registered
/// range's pages are write-protected; the first write to one (from wasm, or the host writing into
/// guest memory) is resolved by the kernel itself, which only clears the page's protection (no
/// fault reaches user space, no signal, no trap), and `PAGEMAP_SCAN` reports the unprotected
/// ("written") pages and protects them again. Unlike soft-dirty bits (`clear_refs`), this is per
/// range, so concurrent sessions do not disturb each other. One userfaultfd serves the process.
mod uffd {
    use std::os::fd::OwnedFd;
    use std::sync::OnceLock;

    use rustix::io::Errno;
    use rustix::ioctl::{Updater, ioctl, opcode};

    const UFFD_API: u64 = 0xAA;
    const UFFD_USER_MODE_ONLY: u32 = 1;
    const FEATURE_WP_ASYNC: u64 = 1 << 15;
    const REGISTER_MODE_WP: u64 = 1 << 1;
    const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

    #[repr(C)]
    struct Api {
        api: u64,
        features: u64,
        ioctls: u64,
    }

    #[repr(C)]
    struct Range {
        start: u64,
        len: u64,
    }

    #[repr(C)]
    struct Register {
        range: Range,
        mode: u64,
        ioctls: u64,
    }

    #[repr(C)]
    struct WriteProtect {
        range: Range,
        mode: u64,
    }

    const UFFDIO_API: rustix::ioctl::Opcode = opcode::read_write::<Api>(0xAA, 0x3F);
    const UFFDIO_REGISTER: rustix::ioctl::Opcode = opcode::read_write::<Register>(0xAA, 0x00);
    const UFFDIO_WRITEPROTECT: rustix::ioctl::Opcode =
        opcode::read_write::<WriteProtect>(0xAA, 0x06);

    fn open() -> Option<OwnedFd> {
        use rustix::mm::UserfaultfdFlags as F;
        // SAFETY: creating the descriptor has no effect on memory; it acts only on ranges we
        // register, always within our own reservations, and only in write-protect mode.
        let fd = unsafe {
            rustix::mm::userfaultfd(
                F::CLOEXEC | F::NONBLOCK | F::from_bits_retain(UFFD_USER_MODE_ONLY),
            )
        }
        .ok()?;
        // Not `WP_UNPOPULATED`: protecting would then fill the page tables of the whole length
        // with markers. Without it a write to a page never mapped is still seen (its new entry
        // carries no protection); reads of the image may be reported once as writes, which only
        // costs a copy.
        let want = FEATURE_WP_ASYNC;
        let mut api = Api {
            api: UFFD_API,
            features: want,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, laid out by `Api`.
        unsafe { ioctl(&fd, Updater::<UFFDIO_API, Api>::new(&mut api)) }.ok()?;
        (api.features & want == want).then_some(fd)
    }

    fn fd() -> Option<&'static OwnedFd> {
        static FD: OnceLock<Option<OwnedFd>> = OnceLock::new();
        FD.get_or_init(|| {
            if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
                open()
            } else {
                None
            }
        })
        .as_ref()
    }

    pub(super) fn available() -> bool {
        fd().is_some() && super::pagemap().is_some()
    }

    /// Registers `[start, start + len)` (whole mappings of ours) for write-protect tracking.
    pub(super) fn register(start: usize, len: usize) -> Result<(), Errno> {
        let fd = fd().ok_or(Errno::NOSYS)?;
        let mut arg = Register {
            range: Range {
                start: start as u64,
                len: len as u64,
            },
            mode: REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`; registering in
        // asynchronous write-protect mode changes no content and makes no access fail.
        unsafe { ioctl(fd, Updater::<UFFDIO_REGISTER, Register>::new(&mut arg)) }
    }

    /// Write-protects `[start, start + len)` of a registered range: all of it counts as not
    /// written from now on.
    pub(super) fn write_protect(start: usize, len: usize) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        let fd = fd().ok_or(Errno::NOSYS)?;
        let mut arg = WriteProtect {
            range: Range {
                start: start as u64,
                len: len as u64,
            },
            mode: WRITEPROTECT_MODE_WP,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads and writes a `struct uffdio_writeprotect`; in
        // asynchronous mode a protected page stays readable and writable.
        unsafe {
            ioctl(
                fd,
                Updater::<UFFDIO_WRITEPROTECT, WriteProtect>::new(&mut arg),
            )
        }
    }
}

/// Pages of `[base, base + pages * 4096)` holding private data: present and not file-backed (bit 63
/// set, bit 61 clear), or swapped (bit 62). `None` when pagemap cannot be read.
fn pagemap_written(base: usize, pages: usize) -> Option<Vec<u32>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE: u64 = 1 << 61;
    let file = pagemap()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8 * 8192];
    let first = (base / OS_PAGE) as u64;
    let mut done = 0usize;
    while done < pages {
        let n = (pages - done).min(8192);
        let bytes = &mut buf[..8 * n];
        file.read_exact_at(bytes, (first + done as u64) * 8).ok()?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(e);
            let e = u64::from_le_bytes(a);
            if (e & PRESENT != 0 && e & FILE == 0) || e & SWAPPED != 0 {
                out.push((done + i) as u32);
            }
        }
        done += n;
    }
    Some(out)
}

/// A linear memory opened by a [`Session`](crate::Session): a fixed reservation whose start maps the
/// committed image copy-on-write.
///
/// Cheap to clone; the mapping lives until the last clone is dropped, also after its session ended.
///
/// # Contract
///
/// - [`base`](Self::base) never moves; `[base, base + len)` is readable and writable, the rest of the
///   reservation is inaccessible (`PROT_NONE`) until grown.
/// - Writes stay private: they never reach the committed files.
/// - The host must not access the memory (run wasm against it) while its session commits,
///   checkpoints or rolls back. In practice the session and the wasm instance live on one thread.
/// - Lengths are multiples of 64 KiB ([`PAGE_SIZE`]).
#[derive(Clone, Debug)]
pub struct MemoryHandle(pub(crate) Arc<Mapping>);

impl MemoryHandle {
    /// The start of the memory. Never changes.
    pub fn base(&self) -> *mut u8 {
        self.0.base as *mut u8
    }

    /// The current length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of address space reserved; the memory can grow up to it.
    pub fn reservation(&self) -> usize {
        self.0.reservation
    }

    /// Grows the memory to `new_len` bytes (a multiple of 64 KiB, at most the reservation). The new
    /// pages read zero. Growing to the current length does nothing; shrinking is an error.
    pub fn grow_to(&self, new_len: usize) -> Result<(), StoreError> {
        self.0.grow_to(new_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn written_pages_are_found_and_reads_are_not() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![1u8; PAGE_SIZE]).unwrap();
        let pool = Arc::new(ReservationPool::new(1));
        let mapping = Mapping::new(
            Some(&mut || Ok(file.try_clone().unwrap())),
            PAGE_SIZE,
            2 * PAGE_SIZE,
            4 * PAGE_SIZE,
            &pool,
            None,
        )
        .unwrap();
        // SAFETY: inside the length; nothing else uses the mapping.
        unsafe {
            mapping.write(OS_PAGE, &[2]);
            mapping.write(5 * OS_PAGE + 9, &[2]);
            mapping.write(20 * OS_PAGE, &[3]);
            assert_eq!(mapping.bytes(3 * OS_PAGE, 1), &[1]);
            assert_eq!(mapping.bytes(21 * OS_PAGE, 1), &[0]);
        }
        let written = mapping.written_pages();
        for p in [1, 5, 20] {
            assert!(written.contains(&p), "{written:?}");
        }
        assert!(
            !written.contains(&3),
            "a read of the file mapping is not a write"
        );
        if let Some(scan) = pagemap_scan(mapping.base, 32) {
            assert_eq!(
                scan,
                vec![1, 5, 20],
                "reading the zero page is not a write either"
            );
        }
        if let Some(read) = pagemap_written(mapping.base, 32) {
            assert!(read.iter().all(|p| [1, 5, 20, 21].contains(p)), "{read:?}");
        }
        // Discarding restores the file content and clears the mark.
        mapping.discard(OS_PAGE, OS_PAGE).unwrap();
        // SAFETY: inside the length.
        assert_eq!(unsafe { mapping.bytes(OS_PAGE, 1) }, &[1]);
        assert!(!mapping.written_pages().contains(&1));
        mapping.grow_to(3 * PAGE_SIZE).unwrap();
        mapping.truncate_or_grow(2 * PAGE_SIZE).unwrap();
        assert_eq!(mapping.len(), 2 * PAGE_SIZE);
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use std::io::Write;

    fn image(byte: u8) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![byte; PAGE_SIZE]).unwrap();
        file
    }

    #[test]
    fn pooled_reservations_come_back_clean_and_stay_within_the_bound() {
        let pool = Arc::new(ReservationPool::new(2));
        let reservation = 64 * PAGE_SIZE;
        let (one, two) = (image(1), image(2));
        let first = Mapping::new(
            Some(&mut || Ok(one.try_clone().unwrap())),
            PAGE_SIZE,
            2 * PAGE_SIZE,
            reservation,
            &pool,
            None,
        )
        .unwrap();
        // SAFETY: inside the length; nothing else uses the mapping.
        unsafe {
            first.write(0, &[9]);
            first.write(PAGE_SIZE + 5, &[9]);
        }
        first.grow_to(4 * PAGE_SIZE).unwrap();
        // SAFETY: inside the (grown) length.
        unsafe { first.write(3 * PAGE_SIZE, &[9]) };
        let base = first.base;
        drop(first);
        assert_eq!(pool.idle(), 1);
        // The same slot, another image: nothing of the first memory shows through.
        let second = Mapping::new(
            Some(&mut || Ok(two.try_clone().unwrap())),
            PAGE_SIZE,
            2 * PAGE_SIZE,
            reservation,
            &pool,
            None,
        )
        .unwrap();
        assert_eq!(second.base, base, "the idle reservation is reused");
        assert_eq!(pool.idle(), 0);
        // SAFETY: inside the length.
        unsafe {
            assert_eq!(second.bytes(0, 1), &[2]);
            assert!(second.bytes(PAGE_SIZE, PAGE_SIZE).iter().all(|b| *b == 0));
        }
        assert!(
            second.written_pages().is_empty(),
            "a reused slot has no written page"
        );
        second.grow_to(4 * PAGE_SIZE).unwrap();
        // SAFETY: inside the (grown) length.
        assert_eq!(unsafe { second.bytes(3 * PAGE_SIZE, 1) }, &[0]);
        // More mappings than the bound: only `max_idle` reservations stay when they close.
        let many: Vec<Mapping> = (0..5)
            .map(|_| Mapping::new(None, 0, PAGE_SIZE, reservation, &pool, None).unwrap())
            .collect();
        drop(many);
        drop(second);
        assert_eq!(pool.idle(), 2);
    }

    #[test]
    fn a_reservation_that_held_a_committed_memory_comes_back_ready_and_clean() {
        let pool = Arc::new(ReservationPool::new(2));
        let reservation = 64 * PAGE_SIZE;
        let file = image(7);
        let root = Root::from_hex(&"1".repeat(64)).unwrap();
        let tag = Some((root, ModuleId::of_wasm(b"m")));
        let open = || {
            Mapping::new(
                Some(&mut || Ok(file.try_clone().unwrap())),
                PAGE_SIZE,
                2 * PAGE_SIZE,
                reservation,
                &pool,
                tag,
            )
            .unwrap()
        };
        let first = open();
        // SAFETY: inside the length; nothing else uses the mapping.
        unsafe {
            first.write(3, &[1]);
            first.write(PAGE_SIZE + 3, &[1]);
        }
        first.grow_to(3 * PAGE_SIZE).unwrap();
        // SAFETY: inside the (grown) length.
        unsafe { first.write(2 * PAGE_SIZE, &[1]) };
        let base = first.base;
        drop(first);
        assert_eq!(pool.prepared(), 1);
        let second = open();
        assert_eq!(second.base, base);
        assert_eq!(second.len(), 2 * PAGE_SIZE);
        // SAFETY: inside the length.
        unsafe {
            assert_eq!(second.bytes(0, 4), &[7; 4], "the image reads through again");
            assert_eq!(second.bytes(PAGE_SIZE + 3, 1), &[0]);
        }
        assert!(second.written_pages().is_empty());
        second.grow_to(3 * PAGE_SIZE).unwrap();
        // SAFETY: inside the (grown) length.
        assert_eq!(unsafe { second.bytes(2 * PAGE_SIZE, 1) }, &[0]);
        drop(second);
        // Deleting the commit unmaps its image from the idle slots.
        pool.forget(&root);
        assert_eq!((pool.prepared(), pool.idle()), (0, 1));
    }
}
