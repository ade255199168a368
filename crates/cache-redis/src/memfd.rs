//! A checked artifact as a memfd, for `Module::deserialize_open_file`, from a pool of memfds
//! whose pages are reused once no module maps them.
//!
//! `Module::deserialize` copies the artifact into a fresh anonymous mapping: one page fault per
//! 4 KiB page as the copy touches it, then wasmtime's own copy. Written into a memfd instead,
//! wasmtime maps the file, faulting it in 64 KiB at a time (fault-around), as it maps a file of
//! the file cache. What is left is the cost of the memfd's pages: on this 2-core VM a fresh page
//! costs 2-3 µs to allocate and free, 0.5 ms for hackatom's 0.78 MB artifact. So the pages are
//! kept: a memfd no module maps any more is overwritten in place for the next hit.
//!
//! **Why a pooled memfd cannot change under a module.** `deserialize_open_file` asks that the
//! file stay unchanged while anything maps it. Each pooled memfd is held by one read-only
//! descriptor of the pool's own; wasmtime gets a second open file description of it (opened
//! through `/proc/self/fd`, not a `dup`, which would share the pool's). Before the pool writes a
//! memfd again, it takes a write lease on its own descriptor (`F_SETLEASE`, `F_WRLCK`), and the
//! kernel grants one only when no other open file description of the file exists: wasmtime's is
//! closed only once its mapping is gone. A file whose lease is refused, for any reason, is not
//! written. Only this process holds these files (close-on-exec, no path), and a pooled file is
//! taken out of the pool while it is written, so no two loads write one file.
//!
//! A file the pool cannot keep (over its byte budget or its 8 files, or on a system that grants
//! no leases) is a one-off memfd, sealed against writes, size changes and unsealing, as every
//! memfd was before the pool. Without `/proc` no memfd can be reopened: `MemfdPool::file`
//! fails and the caller falls back to `Module::deserialize`'s copy.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use parking_lot::Mutex;
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags, fcntl_add_seals, memfd_create};

/// At most this many pooled memfds (each lease check is two system calls).
const MAX_FILES: usize = 8;

/// Memfds whose pages are reused once nothing maps them, holding at most `budget` bytes.
pub(crate) struct MemfdPool {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Pooled files not being written now.
    files: Vec<Pooled>,
    /// Bytes held by every pooled file, including those being written.
    held: u64,
}

struct Pooled {
    /// The pool's own read-only description: the only one while no module maps the file.
    own: OwnedFd,
    len: u64,
}

impl MemfdPool {
    /// A pool keeping at most `budget` bytes of memfds (0: no pool, every file a one-off).
    pub(crate) fn new(budget: u64) -> Self {
        MemfdPool {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A read-only descriptor of a memfd holding exactly `bytes`, for wasmtime to map; it must
    /// stay unchanged while anything maps it (see the module documentation).
    pub(crate) fn file(&self, bytes: &[u8]) -> io::Result<OwnedFd> {
        let Some(pooled) = self.take(bytes.len() as u64)? else {
            return sealed(bytes);
        };
        match fill(&pooled.own, bytes).and_then(|()| reopen(&pooled.own, OFlags::RDONLY)) {
            Ok(file) => {
                self.inner.lock().files.push(pooled);
                Ok(file)
            }
            Err(e) => {
                // Its content is unknown: out of the pool.
                self.inner.lock().held -= pooled.len;
                Err(e)
            }
        }
    }

    /// A pooled file nothing maps, or a new one if the budget allows, taken out of the pool and
    /// counted at `len` bytes; `None` when neither.
    fn take(&self, len: u64) -> io::Result<Option<Pooled>> {
        let mut inner = self.inner.lock();
        let Inner { files, held } = &mut *inner;
        // The free file nearest in size: the fewest pages to allocate or free.
        let free = files
            .iter()
            .enumerate()
            .filter(|(_, f)| unshared(f.own.as_fd()))
            .min_by_key(|(_, f)| f.len.abs_diff(len))
            .map(|(i, _)| i);
        if let Some(i) = free
            && (*held - files[i].len).saturating_add(len) <= self.budget
        {
            let mut pooled = files.swap_remove(i);
            *held = *held - pooled.len + len;
            pooled.len = len;
            return Ok(Some(pooled));
        }
        if files.len() >= MAX_FILES || held.saturating_add(len) > self.budget {
            return Ok(None);
        }
        let file = memfd_create("strata-redis-artifact", MemfdFlags::CLOEXEC)?;
        let own = reopen(&file, OFlags::RDONLY)?;
        drop(file);
        if !unshared(own.as_fd()) {
            // A file nothing else holds, refused a lease: this kernel grants none (leases
            // disabled), so no pooled file could ever be written again. No pool.
            *held = u64::MAX;
            tracing::warn!("no file leases on this system: Redis hits load from fresh memory");
            return Ok(None);
        }
        *held += len;
        Ok(Some(Pooled { own, len }))
    }

    /// The files in the pool now (not counting those being written).
    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.inner.lock().files.len()
    }
}

/// Whether `own` is the only open file description of its file: a write lease is granted, and
/// at once given back. Any refusal (another description, leases disabled) counts as shared.
fn unshared(own: BorrowedFd<'_>) -> bool {
    // SAFETY: `fcntl` with `F_SETLEASE` takes an int argument and touches no memory of ours;
    // `own` is an open descriptor for the whole call.
    let granted = unsafe { libc::fcntl(own.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } == 0;
    if granted {
        // SAFETY: as above; the lease is ours to give back.
        unsafe { libc::fcntl(own.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
    granted
}

/// A new open file description of the file `fd` refers to (through `/proc/self/fd`, the
/// kernel's way to reopen an anonymous file; no storage is involved).
fn reopen(fd: &OwnedFd, flags: OFlags) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Makes the file of `own` hold exactly `bytes`, through a writable description of its own.
fn fill(own: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    let writer = reopen(own, OFlags::RDWR)?;
    rustix::fs::ftruncate(&writer, bytes.len() as u64)?;
    let mut written = 0;
    while written < bytes.len() {
        match rustix::io::pwrite(&writer, &bytes[written..], written as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A one-off anonymous in-memory file holding `bytes`, sealed: no write, no size change, no
/// unsealing.
fn sealed(bytes: &[u8]) -> io::Result<OwnedFd> {
    let memfd = memfd_create(
        "strata-redis-artifact",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut written = 0;
    while written < bytes.len() {
        match rustix::io::write(&memfd, &bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    fcntl_add_seals(
        &memfd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    Ok(memfd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// Whether this system grants file leases. Where it does not (`fs.leases-enable = 0`), the
    /// pool must not exist: checked here, and the pool tests stop after this check.
    fn leases_granted() -> bool {
        let file = memfd_create("lease-probe", MemfdFlags::CLOEXEC).expect("memfd");
        let own = reopen(&file, OFlags::RDONLY).expect("reopen");
        drop(file);
        if unshared(own.as_fd()) {
            return true;
        }
        let pool = MemfdPool::new(1 << 20);
        let fd = pool.file(&bytes(10, 1)).expect("file");
        assert_eq!((pool.pooled(), read_all(&fd)), (0, bytes(10, 1)));
        let mut file = std::fs::File::from(fd);
        assert!(
            file.write_all(b"x").is_err(),
            "without leases every file is sealed"
        );
        false
    }

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        let mut file = std::fs::File::from(fd.try_clone().expect("dup"));
        let mut back = Vec::new();
        file.rewind().expect("rewind");
        file.read_to_end(&mut back).expect("read");
        back
    }

    #[test]
    fn a_one_off_memfd_holds_the_bytes_and_refuses_every_change() {
        let bytes = bytes(100_000, 0);
        let fd = sealed(&bytes).expect("memfd");
        assert_eq!(read_all(&fd), bytes);
        let mut file = std::fs::File::from(fd);
        assert!(file.write_all(b"x").is_err(), "write sealed");
        assert!(file.set_len(10).is_err(), "shrink sealed");
        assert!(file.set_len(1 << 20).is_err(), "grow sealed");
    }

    #[test]
    fn a_pooled_file_is_reused_only_once_nothing_holds_it() {
        if !leases_granted() {
            return;
        }
        let pool = MemfdPool::new(1 << 20);
        let a = bytes(100_000, 1);
        let first = pool.file(&a).expect("file");
        assert_eq!(read_all(&first), a);
        assert_eq!(pool.pooled(), 1);
        // `first` is still open: the next file is another one, and `first` keeps its bytes.
        let b = bytes(50_000, 2);
        let second = pool.file(&b).expect("file");
        assert_eq!(pool.pooled(), 2);
        assert_eq!(read_all(&first), a);
        assert_eq!(read_all(&second), b);
        // A mapping keeps a file busy after its descriptor is closed.
        let len = a.len();
        // SAFETY: a private read-only mapping of a file of this test, unmapped below.
        let map = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                &first,
                0,
            )
        }
        .expect("mmap");
        drop(first);
        drop(second);
        // Only the second is free now: reused (still two files), shrunk to the new bytes.
        let c = bytes(30_000, 3);
        let third = pool.file(&c).expect("file");
        assert_eq!(pool.pooled(), 2);
        assert_eq!(read_all(&third), c);
        // SAFETY: the mapping is `len` bytes of the first file, which nothing wrote since.
        let mapped = unsafe { std::slice::from_raw_parts(map.cast::<u8>(), len) };
        assert_eq!(mapped, &a[..], "a mapped file is never rewritten");
        // SAFETY: the mapping made above, not used after this.
        unsafe { rustix::mm::munmap(map, len) }.expect("munmap");
        drop(third);
        // Both free: the next one reuses a file, and none is added.
        let d = bytes(100_000, 4);
        let fourth = pool.file(&d).expect("file");
        assert_eq!((pool.pooled(), read_all(&fourth)), (2, d));
    }

    #[test]
    fn the_pool_holds_at_most_its_budget_and_serves_past_it_with_sealed_files() {
        if !leases_granted() {
            return;
        }
        let pool = MemfdPool::new(150_000);
        let a = pool.file(&bytes(100_000, 1)).expect("file");
        // Over the budget with `a` held: a one-off sealed file, not pooled.
        let b = pool.file(&bytes(100_000, 2)).expect("file");
        assert_eq!(pool.pooled(), 1);
        assert_eq!(read_all(&b), bytes(100_000, 2));
        let mut b = std::fs::File::from(b);
        assert!(b.write_all(b"x").is_err(), "the one-off is sealed");
        // Larger than the whole budget: never pooled.
        drop(a);
        let big = pool.file(&bytes(200_000, 3)).expect("file");
        assert_eq!(read_all(&big), bytes(200_000, 3));
        assert_eq!(pool.inner.lock().held, 100_000);
        // No pool at all.
        let none = MemfdPool::new(0);
        let c = none.file(&bytes(10, 4)).expect("file");
        assert_eq!((none.pooled(), read_all(&c)), (0, bytes(10, 4)));
    }

    #[test]
    fn a_module_mapped_from_a_pooled_file_keeps_its_code_while_later_hits_reuse_the_pool() {
        if !leases_granted() {
            return;
        }
        let engine = wasmtime::Engine::default();
        let artifact = |n: i32| {
            let wat = format!(r#"(module (func (export "n") (result i32) i32.const {n}))"#);
            wasmtime::Module::new(&engine, wat)
                .and_then(|m| m.serialize())
                .expect("compiles")
        };
        let load = |pool: &MemfdPool, bytes: &[u8]| {
            let file = pool.file(bytes).expect("file");
            // SAFETY: `bytes` is `Module::serialize` output of this engine, and the pool
            // keeps the file unchanged while the module maps it (what this test checks).
            unsafe { wasmtime::Module::deserialize_open_file(&engine, file.into()) }.expect("loads")
        };
        let call = |module: &wasmtime::Module| {
            let mut store = wasmtime::Store::new(&engine, ());
            let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instance");
            let n = instance
                .get_typed_func::<(), i32>(&mut store, "n")
                .expect("n");
            n.call(&mut store, ()).expect("call")
        };
        let pool = MemfdPool::new(64 << 20);
        let kept = load(&pool, &artifact(7));
        for i in 0..20 {
            let other = load(&pool, &artifact(100 + i));
            assert_eq!(call(&other), 100 + i);
            assert_eq!(call(&kept), 7, "a live module's file is never rewritten");
        }
        // Every later module was dropped before the next load: one more file served them all.
        assert_eq!(pool.pooled(), 2);
        drop(kept);
        let again = load(&pool, &artifact(8));
        assert_eq!((call(&again), pool.pooled()), (8, 2));
    }
}
