//! The one file-system interface of the store, its real implementation, and a fault injector.
//!
//! Every file-system operation of the store goes through [`Fs`], so a test can count operations,
//! fail any one of them (once or from then on, e.g. with ENOSPC) and check what a reopen reads.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

/// The file-system operations the store uses. Implementations must be thread-safe.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Creates one directory (its parent exists).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a new file (failing if it exists) holding `data`. With `sparse`, 4 KiB blocks of zeroes
    /// may be left as holes. Does not sync.
    fn write_file(&self, path: &Path, data: &[u8], sparse: bool) -> io::Result<()>;
    /// Flushes a file's data and metadata to stable storage.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Flushes a directory's entries to stable storage.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Renames atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates `link` as a hard link to `original`.
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// Removes a directory tree or a file; a missing path is not an error.
    fn remove_all(&self, path: &Path) -> io::Result<()>;
    /// Names of a directory's entries.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Reads a whole file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens a file for reading (and mapping).
    fn open_read(&self, path: &Path) -> io::Result<File>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Opens (creating if needed) a lock file and takes an exclusive lock on it without waiting;
    /// the lock lives as long as the returned file. `ErrorKind::WouldBlock` when someone holds it.
    fn lock(&self, path: &Path) -> io::Result<File>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

const BLOCK: usize = 4096;

impl Fs for RealFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn write_file(&self, path: &Path, data: &[u8], sparse: bool) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        if !sparse {
            return file.write_all(data);
        }
        // Write runs of non-zero blocks; the zero runs stay holes.
        let mut start = None;
        let mut at = 0;
        while at < data.len() {
            let end = (at + BLOCK).min(data.len());
            let zero = store_index::is_zero(&data[at..end]);
            match (zero, start) {
                (false, None) => start = Some(at),
                (true, Some(s)) => {
                    file.write_all_at(&data[s..at], s as u64)?;
                    start = None;
                }
                _ => {}
            }
            at = end;
        }
        if let Some(s) = start {
            file.write_all_at(&data[s..], s as u64)?;
        }
        file.set_len(data.len() as u64)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        std::fs::hard_link(original, link)
    }

    fn remove_all(&self, path: &Path) -> io::Result<()> {
        let result = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn lock(&self, path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(file)
    }
}

/// Which operation a [`FaultFs`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Fs::create_dir`]
    CreateDir,
    /// [`Fs::write_file`]
    WriteFile,
    /// [`Fs::sync_file`]
    SyncFile,
    /// [`Fs::sync_dir`]
    SyncDir,
    /// [`Fs::rename`]
    Rename,
    /// [`Fs::hard_link`]
    HardLink,
    /// [`Fs::remove_all`]
    RemoveAll,
    /// [`Fs::read_dir`]
    ReadDir,
    /// [`Fs::read_file`]
    ReadFile,
    /// [`Fs::open_read`]
    OpenRead,
    /// [`Fs::exists`]
    Exists,
    /// [`Fs::lock`]
    Lock,
}

/// How an armed [`FaultFs`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the chosen operation fails.
    Once,
    /// The chosen operation and every later one fail (a disk that filled up or went away).
    FromThenOn,
}

/// A [`Fs`] wrapper for tests: logs every operation and fails the n-th one on request.
#[derive(Debug)]
pub struct FaultFs {
    inner: Arc<dyn Fs>,
    count: AtomicU64,
    fail_at: AtomicU64,
    mode: Mutex<FaultMode>,
    errno: Mutex<i32>,
    log_enabled: AtomicBool,
    log: Mutex<Vec<(Op, PathBuf)>>,
}

impl FaultFs {
    /// Wraps `inner`, unarmed.
    pub fn new(inner: Arc<dyn Fs>) -> FaultFs {
        FaultFs {
            inner,
            count: AtomicU64::new(0),
            fail_at: AtomicU64::new(u64::MAX),
            mode: Mutex::new(FaultMode::Once),
            errno: Mutex::new(28), // ENOSPC
            log_enabled: AtomicBool::new(true),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Operations seen so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Fails the operation numbered `op` (as counted by [`ops`](Self::ops), so `ops()` fails the
    /// next one) with the OS error `errno`, in `mode`.
    pub fn fail_at(&self, op: u64, mode: FaultMode, errno: i32) {
        *self.mode.lock() = mode;
        *self.errno.lock() = errno;
        self.fail_at.store(op, Ordering::SeqCst);
    }

    /// Disarms.
    pub fn heal(&self) {
        self.fail_at.store(u64::MAX, Ordering::SeqCst);
    }

    /// Turns the operation log on or off (on by default).
    pub fn set_logging(&self, on: bool) {
        self.log_enabled.store(on, Ordering::SeqCst);
    }

    /// Takes the logged operations.
    pub fn take_log(&self) -> Vec<(Op, PathBuf)> {
        std::mem::take(&mut *self.log.lock())
    }

    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if self.log_enabled.load(Ordering::SeqCst) {
            self.log.lock().push((op, path.to_path_buf()));
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

impl Fs for FaultFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDir, path)?;
        self.inner.create_dir(path)
    }
    fn write_file(&self, path: &Path, data: &[u8], sparse: bool) -> io::Result<()> {
        self.check(Op::WriteFile, path)?;
        self.inner.write_file(path, data, sparse)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncFile, path)?;
        self.inner.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, path)?;
        self.inner.sync_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, from)?;
        self.inner.rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.check(Op::HardLink, link)?;
        self.inner.hard_link(original, link)
    }
    fn remove_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveAll, path)?;
        self.inner.remove_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.check(Op::ReadDir, path)?;
        self.inner.read_dir(path)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check(Op::ReadFile, path)?;
        self.inner.read_file(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.check(Op::OpenRead, path)?;
        self.inner.open_read(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.check(Op::Exists, path)?;
        self.inner.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Lock, path)?;
        self.inner.lock(path)
    }
}
