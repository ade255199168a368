//! Test layers: [`FaultFs`] counts, logs and fails operations; [`NoSyncFs`] skips the syncs.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::{Fs, RealFs, Zeros};

/// Which operation a [`FaultFs`] saw: one variant per required [`Fs`] method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Fs::create_dir`]
    CreateDir,
    /// [`Fs::create_dir_all`]
    CreateDirAll,
    /// [`Fs::read_dir`]
    ReadDir,
    /// [`Fs::sync_dir`]
    SyncDir,
    /// [`Fs::write_file`]
    WriteFile,
    /// [`Fs::read_file`]
    ReadFile,
    /// [`Fs::sync_file`]
    SyncFile,
    /// [`Fs::rename`]
    Rename,
    /// [`Fs::hard_link`]
    HardLink,
    /// [`Fs::remove_file`]
    RemoveFile,
    /// [`Fs::remove_all`]
    RemoveAll,
    /// [`Fs::metadata`]
    Metadata,
    /// [`Fs::exists`]
    Exists,
    /// [`Fs::lock`]
    Lock,
    /// [`Fs::create_new`]
    CreateNew,
    /// [`Fs::open_read`]
    OpenRead,
    /// [`Fs::open_for_mapping`]
    OpenForMapping,
    /// [`Fs::file_metadata`]
    FileMetadata,
    /// [`Fs::read`]
    Read,
    /// [`Fs::read_at`]
    ReadAt,
    /// [`Fs::write`]
    Write,
    /// [`Fs::write_at`]
    WriteAt,
    /// [`Fs::sync_data`]
    SyncData,
    /// [`Fs::syncfs`]
    Syncfs,
    /// [`Fs::set_mtime`]
    SetMtime,
}

/// How an armed [`FaultFs`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultMode {
    /// Only the chosen operation fails.
    Once,
    /// The chosen operation and every later one fail (a disk that filled up or went away).
    FromThenOn,
}

/// A test layer: counts and logs every operation, and fails the n-th one on request (once or from
/// then on, with any errno), or every operation of one kind, at once or after the next n of them
/// (say `EMLINK` on every [`hard_link`](Fs::hard_link): a file at its link limit). A failed
/// operation fails before it reaches the inner file system, so it has no effect.
///
/// The log holds each operation with its path; an operation on an open file logs the path the
/// kernel gives for that file (`/proc/self/fd/<n>`: where it is now, after renames), or an
/// empty path where there is none.
#[derive(Debug)]
pub struct FaultFs {
    inner: Arc<dyn Fs>,
    count: AtomicU64,
    fail_at: AtomicU64,
    mode: Mutex<FaultMode>,
    errno: Mutex<i32>,
    every: Mutex<Option<Every>>,
    log_enabled: AtomicBool,
    log: Mutex<Vec<(Op, PathBuf)>>,
}

/// Fails every operation of one kind once `pass` more of them went through.
#[derive(Debug)]
struct Every {
    op: Op,
    errno: i32,
    pass: u64,
}

impl FaultFs {
    /// Wraps `inner`, unarmed, logging.
    pub fn new(inner: Arc<dyn Fs>) -> FaultFs {
        FaultFs {
            inner,
            count: AtomicU64::new(0),
            fail_at: AtomicU64::new(u64::MAX),
            mode: Mutex::new(FaultMode::Once),
            errno: Mutex::new(rustix::io::Errno::NOSPC.raw_os_error()),
            every: Mutex::new(None),
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

    /// Fails the operation numbered `op` (as counted by [`ops`](Self::ops), so `ops()` fails the
    /// next one) with the OS error `errno` (e.g. `libc::ENOSPC`, 28), in `mode`.
    pub fn fail_at(&self, op: u64, mode: FaultMode, errno: i32) {
        *self.mode.lock() = mode;
        *self.errno.lock() = errno;
        self.fail_at.store(op, Ordering::SeqCst);
    }

    /// Fails every later operation of kind `op` with `errno` (e.g. `Op::HardLink` with
    /// `libc::EMLINK`, 31), until [`heal`](Self::heal).
    pub fn fail_every(&self, op: Op, errno: i32) {
        self.fail_after(op, 0, errno);
    }

    /// Lets the next `n` operations of kind `op` through, then fails every later one with
    /// `errno`, until [`heal`](Self::heal) (`Op::HardLink`, `n`, `libc::EMLINK`: a file that
    /// reaches its link limit after `n` more links). Replaces an earlier `fail_every`/`fail_after`.
    pub fn fail_after(&self, op: Op, n: u64, errno: i32) {
        *self.every.lock() = Some(Every { op, errno, pass: n });
    }

    /// Disarms: every later operation reaches the inner file system.
    pub fn heal(&self) {
        self.fail_at.store(u64::MAX, Ordering::SeqCst);
        *self.every.lock() = None;
    }

    /// Turns the operation log on or off (on by default).
    pub fn set_logging(&self, on: bool) {
        self.log_enabled.store(on, Ordering::SeqCst);
    }

    /// Takes the logged operations with their paths.
    pub fn take_log(&self) -> Vec<(Op, PathBuf)> {
        std::mem::take(&mut *self.log.lock())
    }

    /// Takes the logged operations, without their paths.
    pub fn take_ops(&self) -> Vec<Op> {
        self.take_log().into_iter().map(|(op, _)| op).collect()
    }

    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if self.log_enabled.load(Ordering::SeqCst) {
            self.log.lock().push((op, path.to_path_buf()));
        }
        if let Some(every) = &mut *self.every.lock()
            && every.op == op
        {
            if every.pass == 0 {
                return Err(io::Error::from_raw_os_error(every.errno));
            }
            every.pass -= 1;
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

    fn check_file(&self, op: Op, file: &File) -> io::Result<()> {
        let path = if self.log_enabled.load(Ordering::SeqCst) {
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap_or_default()
        } else {
            PathBuf::new()
        };
        self.check(op, &path)
    }
}

impl Fs for FaultFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDir, path)?;
        self.inner.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDirAll, path)?;
        self.inner.create_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.check(Op::ReadDir, path)?;
        self.inner.read_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, path)?;
        self.inner.sync_dir(path)
    }
    fn write_file(&self, path: &Path, data: &[u8], zeros: Zeros, mode: u32) -> io::Result<()> {
        self.check(Op::WriteFile, path)?;
        self.inner.write_file(path, data, zeros, mode)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check(Op::ReadFile, path)?;
        self.inner.read_file(path)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncFile, path)?;
        self.inner.sync_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, from)?;
        self.inner.rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.check(Op::HardLink, link)?;
        self.inner.hard_link(original, link)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveFile, path)?;
        self.inner.remove_file(path)
    }
    fn remove_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveAll, path)?;
        self.inner.remove_all(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        self.check(Op::Metadata, path)?;
        self.inner.metadata(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.check(Op::Exists, path)?;
        self.inner.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Lock, path)?;
        self.inner.lock(path)
    }
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
        self.check(Op::CreateNew, path)?;
        self.inner.create_new(path, mode)
    }
    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.check(Op::OpenRead, path)?;
        self.inner.open_read(path)
    }
    fn open_for_mapping(&self, file: &File) -> io::Result<File> {
        self.check_file(Op::OpenForMapping, file)?;
        self.inner.open_for_mapping(file)
    }
    fn file_metadata(&self, file: &File) -> io::Result<Metadata> {
        self.check_file(Op::FileMetadata, file)?;
        self.inner.file_metadata(file)
    }
    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        self.check_file(Op::Read, file)?;
        self.inner.read(file, buf, max)
    }
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_file(Op::ReadAt, file)?;
        self.inner.read_at(file, buf, offset)
    }
    fn write(&self, file: &File, data: &[u8]) -> io::Result<()> {
        self.check_file(Op::Write, file)?;
        self.inner.write(file, data)
    }
    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        self.check_file(Op::WriteAt, file)?;
        self.inner.write_at(file, data, offset)
    }
    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.check_file(Op::SyncData, file)?;
        self.inner.sync_data(file)
    }
    fn syncfs(&self, file: &File) -> io::Result<()> {
        self.check_file(Op::Syncfs, file)?;
        self.inner.syncfs(file)
    }
    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()> {
        self.check_file(Op::SetMtime, file)?;
        self.inner.set_mtime(file, time)
    }
}

/// A test layer whose syncs return at once without syncing: for tests that count the syncs, or
/// model them in a [`PowerLossFs`](crate::PowerLossFs) above, but need not wait for the disk.
/// Every other operation reaches the inner file system.
#[derive(Debug)]
pub struct NoSyncFs {
    inner: Arc<dyn Fs>,
}

impl NoSyncFs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Fs>) -> NoSyncFs {
        NoSyncFs { inner }
    }

    /// Wraps the real file system.
    pub fn real() -> NoSyncFs {
        NoSyncFs::new(Arc::new(RealFs))
    }
}

impl Fs for NoSyncFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.inner.read_dir(path)
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn write_file(&self, path: &Path, data: &[u8], zeros: Zeros, mode: u32) -> io::Result<()> {
        self.inner.write_file(path, data, zeros, mode)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }
    fn sync_file(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.inner.hard_link(original, link)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_all(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        self.inner.metadata(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<File> {
        self.inner.lock(path)
    }
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
        self.inner.create_new(path, mode)
    }
    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.inner.open_read(path)
    }
    fn open_for_mapping(&self, file: &File) -> io::Result<File> {
        self.inner.open_for_mapping(file)
    }
    fn file_metadata(&self, file: &File) -> io::Result<Metadata> {
        self.inner.file_metadata(file)
    }
    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        self.inner.read(file, buf, max)
    }
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(file, buf, offset)
    }
    fn write(&self, file: &File, data: &[u8]) -> io::Result<()> {
        self.inner.write(file, data)
    }
    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(file, data, offset)
    }
    fn sync_data(&self, _: &File) -> io::Result<()> {
        Ok(())
    }
    fn syncfs(&self, _: &File) -> io::Result<()> {
        Ok(())
    }
    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()> {
        self.inner.set_mtime(file, time)
    }
}
