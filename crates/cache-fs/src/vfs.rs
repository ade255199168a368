//! The one file-system interface of the file cache, its real implementation and a fault
//! injector for tests.
//!
//! Every file-system operation of [`FsCache`](crate::FsCache) goes through [`CacheFs`], so a
//! test can count the operations of a save or a load and fail any one of them, once or from
//! then on, with any errno ([`FaultFs`]). The real implementation is one system call (or one
//! std call) per method: the trait is for dispatch only, nothing is copied on the way.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

/// The file-system operations of the file cache. Implementations must be thread-safe.
pub trait CacheFs: Send + Sync + fmt::Debug {
    /// Creates a directory and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a new file for writing, failing if `path` exists (`O_EXCL`).
    fn create_temp(&self, path: &Path) -> io::Result<File>;
    /// Writes all of `data` at the file's position.
    fn write(&self, file: &File, data: &[u8]) -> io::Result<()>;
    /// Flushes a file's data to stable storage (`fdatasync`).
    fn sync_file(&self, file: &File) -> io::Result<()>;
    /// Renames atomically, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Flushes a directory's entries to stable storage.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Opens a cache entry for reading without following a symlink (`ELOOP` if `path` is one)
    /// and without blocking on a FIFO.
    fn open_read(&self, path: &Path) -> io::Result<File>;
    /// The metadata of an open file (`fstat`).
    fn file_metadata(&self, file: &File) -> io::Result<Metadata>;
    /// The metadata of a path, not following a symlink (`lstat`).
    fn metadata(&self, path: &Path) -> io::Result<Metadata>;
    /// Appends to `buf` up to `max` bytes read from the file's position, until `max` or end of
    /// file; returns how many were read.
    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Fills `buf` from `offset` (`pread`); `ErrorKind::UnexpectedEof` if the file ends first.
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// A second handle on an open file, handed to wasmtime to map (`dup`).
    fn open_for_mapping(&self, file: &File) -> io::Result<File>;
    /// Sets a file's modification time.
    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()>;
    /// Removes a file (or a symlink).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory tree.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of a directory's entries.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl CacheFs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create_temp(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    fn write(&self, mut file: &File, data: &[u8]) -> io::Result<()> {
        file.write_all(data)
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(path)
    }

    fn file_metadata(&self, file: &File) -> io::Result<Metadata> {
        file.metadata()
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        std::fs::symlink_metadata(path)
    }

    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        file.take(max as u64).read_to_end(buf)
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    fn open_for_mapping(&self, file: &File) -> io::Result<File> {
        file.try_clone()
    }

    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()> {
        file.set_modified(time)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }
}

/// Which operation a [`FaultFs`] saw; one variant per [`CacheFs`] method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`CacheFs::create_dir_all`]
    CreateDirAll,
    /// [`CacheFs::create_temp`]
    CreateTemp,
    /// [`CacheFs::write`]
    Write,
    /// [`CacheFs::sync_file`]
    SyncFile,
    /// [`CacheFs::rename`]
    Rename,
    /// [`CacheFs::sync_dir`]
    SyncDir,
    /// [`CacheFs::open_read`]
    OpenRead,
    /// [`CacheFs::file_metadata`]
    FileMetadata,
    /// [`CacheFs::metadata`]
    Metadata,
    /// [`CacheFs::read`]
    Read,
    /// [`CacheFs::read_at`]
    ReadAt,
    /// [`CacheFs::open_for_mapping`]
    OpenForMapping,
    /// [`CacheFs::set_mtime`]
    SetMtime,
    /// [`CacheFs::remove_file`]
    RemoveFile,
    /// [`CacheFs::remove_dir_all`]
    RemoveDirAll,
    /// [`CacheFs::read_dir`]
    ReadDir,
}

/// How an armed [`FaultFs`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the chosen operation fails.
    Once,
    /// The chosen operation and every later one fail (a disk that filled up or went away).
    FromThenOn,
}

/// A test tool: a [`CacheFs`] wrapper that counts and logs every operation and fails the n-th
/// one on request, before it reaches the wrapped file system (so a failed operation has no
/// effect). Give it to [`FsCache::open_with_fs`](crate::FsCache::open_with_fs).
#[derive(Debug)]
pub struct FaultFs {
    inner: Arc<dyn CacheFs>,
    count: AtomicU64,
    fail_at: AtomicU64,
    mode: Mutex<FaultMode>,
    errno: Mutex<i32>,
    log_enabled: AtomicBool,
    log: Mutex<Vec<Op>>,
}

impl FaultFs {
    /// Wraps `inner`, unarmed, logging.
    pub fn new(inner: Arc<dyn CacheFs>) -> FaultFs {
        FaultFs {
            inner,
            count: AtomicU64::new(0),
            fail_at: AtomicU64::new(u64::MAX),
            mode: Mutex::new(FaultMode::Once),
            errno: Mutex::new(rustix::io::Errno::NOSPC.raw_os_error()),
            log_enabled: AtomicBool::new(true),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Wraps the real file system.
    pub fn real() -> FaultFs {
        FaultFs::new(Arc::new(RealFs))
    }

    /// Operations seen so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Fails the operation numbered `op` (as counted by [`ops`](Self::ops), so `ops()` fails
    /// the next one) with the OS error `errno` (e.g. `libc::ENOSPC`, 28), in `mode`.
    pub fn fail_at(&self, op: u64, mode: FaultMode, errno: i32) {
        *self.mode.lock() = mode;
        *self.errno.lock() = errno;
        self.fail_at.store(op, Ordering::SeqCst);
    }

    /// Disarms: every later operation reaches the wrapped file system.
    pub fn heal(&self) {
        self.fail_at.store(u64::MAX, Ordering::SeqCst);
    }

    /// Turns the operation log on or off (on by default).
    pub fn set_logging(&self, on: bool) {
        self.log_enabled.store(on, Ordering::SeqCst);
    }

    /// Takes the logged operations.
    pub fn take_log(&self) -> Vec<Op> {
        std::mem::take(&mut *self.log.lock())
    }

    fn check(&self, op: Op) -> io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if self.log_enabled.load(Ordering::SeqCst) {
            self.log.lock().push(op);
        }
        let at = self.fail_at.load(Ordering::SeqCst);
        let fail = match *self.mode.lock() {
            FaultMode::Once => n == at,
            FaultMode::FromThenOn => n >= at,
        };
        if fail {
            return Err(io::Error::from_raw_os_error(*self.errno.lock()));
        }
        Ok(())
    }
}

impl CacheFs for FaultFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDirAll)?;
        self.inner.create_dir_all(path)
    }
    fn create_temp(&self, path: &Path) -> io::Result<File> {
        self.check(Op::CreateTemp)?;
        self.inner.create_temp(path)
    }
    fn write(&self, file: &File, data: &[u8]) -> io::Result<()> {
        self.check(Op::Write)?;
        self.inner.write(file, data)
    }
    fn sync_file(&self, file: &File) -> io::Result<()> {
        self.check(Op::SyncFile)?;
        self.inner.sync_file(file)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename)?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncDir)?;
        self.inner.sync_dir(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.check(Op::OpenRead)?;
        self.inner.open_read(path)
    }
    fn file_metadata(&self, file: &File) -> io::Result<Metadata> {
        self.check(Op::FileMetadata)?;
        self.inner.file_metadata(file)
    }
    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        self.check(Op::Metadata)?;
        self.inner.metadata(path)
    }
    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        self.check(Op::Read)?;
        self.inner.read(file, buf, max)
    }
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(Op::ReadAt)?;
        self.inner.read_at(file, buf, offset)
    }
    fn open_for_mapping(&self, file: &File) -> io::Result<File> {
        self.check(Op::OpenForMapping)?;
        self.inner.open_for_mapping(file)
    }
    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()> {
        self.check(Op::SetMtime)?;
        self.inner.set_mtime(file, time)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveFile)?;
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveDirAll)?;
        self.inner.remove_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.check(Op::ReadDir)?;
        self.inner.read_dir(path)
    }
}
