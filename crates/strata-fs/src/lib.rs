//! The one file-system interface of Strata: every file-system operation of the commit store, the
//! file cache and the VM host goes through the [`Fs`] trait (redb's `StorageBackend` is the
//! model), so that a test can count the operations of any call, fail any one of them, or cut the
//! power at any one and check what a reopen reads.
//!
//! - [`RealFs`] is the real file system: one std or rustix call per method, nothing copied on
//!   the way.
//! - With the `testing` feature (off by default): `FaultFs` counts and logs operations and
//!   fails chosen ones with any errno; `NoSyncFs` skips the real syncs (fast tests that only
//!   model them); `PowerLossFs` tracks what a power cut may lose under a directory and applies
//!   it. Several power-loss layers on one `Clock` stop together, as one machine.
//!
//! Paths are plain [`Path`]s; open files are [`File`]s the caller keeps (across sessions if it
//! likes): operations on an open file take `&File`.
//!
//! ```
//! use std::sync::Arc;
//! use strata_fs::{Fs, RealFs, Zeros};
//!
//! # fn main() -> std::io::Result<()> {
//! let tmp = tempfile::tempdir()?;
//! let fs: Arc<dyn Fs> = Arc::new(RealFs);
//! let dir = tmp.path().join("data");
//! // A new directory whose name survives a power cut (its parent is synced).
//! fs.create_dir_all_durable(&dir)?;
//! let path = dir.join("a");
//! fs.write_file(&path, b"hello", Zeros::Write, 0o644)?;
//! fs.sync_file(&path)?;
//! fs.sync_dir(&dir)?;
//! assert_eq!(fs.read_file(&path)?, b"hello");
//! // A key file only its owner reads.
//! let key = fs.create_new(&dir.join("key"), 0o600)?;
//! fs.write(&key, &[7; 32])?;
//! fs.sync_data(&key)?;
//! fs.create_marker(&dir.join("ready"))?;
//! assert!(fs.has_marker(&dir.join("ready"))?);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[cfg(feature = "testing")]
mod fault;
#[cfg(feature = "testing")]
mod powerloss;
mod real;

#[cfg(feature = "testing")]
pub use fault::{FaultFs, FaultMode, NoSyncFs, Op};
#[cfg(feature = "testing")]
pub use powerloss::{Clock, Loss, PowerLossFs};
pub use real::RealFs;
/// The open-file and metadata types of the trait (std's), so that users need not name `std::fs`.
pub use std::fs::{File, Metadata};

/// What [`Fs::write_file`] does with the zero blocks of its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zeros {
    /// Every byte is written.
    Write,
    /// Aligned 4 KiB blocks of zeros may be left as holes (a sparse file), read back as zeros.
    Holes,
}

/// The file-system operations of Strata. Implementations must be thread-safe; wrappers (the test
/// layers) forward every method to an inner [`Fs`].
///
/// No method truncates a file or opens an existing one for writing, apart from
/// [`lock`](Fs::lock), which opens its lock file without truncating it: bytes reach a file only
/// through a file this trait created ([`write_file`](Fs::write_file), or
/// [`create_new`](Fs::create_new) then [`write`](Fs::write)/[`write_at`](Fs::write_at)). So a
/// file another part of the program maps, once written, changes only if someone outside Strata
/// changes it.
///
/// The provided methods ([`create_dir_all_durable`](Fs::create_dir_all_durable), the marker
/// files, [`sync_batch`](Fs::sync_batch)) are built from the others, so a wrapper sees (and may
/// fail) each of their steps; `RealFs` overrides `sync_batch` to issue its syncs at once.
pub trait Fs: Send + Sync + fmt::Debug {
    // Directories.

    /// Creates one directory; its parent exists.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its missing parents. Syncs nothing: see
    /// [`create_dir_all_durable`](Fs::create_dir_all_durable).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of a directory's entries.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Flushes a directory's entries to stable storage (names created, renamed or removed in it).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    // Whole files by path.

    /// Creates a new file (failing if `path` exists) with permission bits `mode` (before the
    /// umask; `0o444` for a file nobody may write again, not even its creator through a new
    /// open) holding `data`; `zeros` says whether zero blocks may be left as holes. Does not sync.
    fn write_file(&self, path: &Path, data: &[u8], zeros: Zeros, mode: u32) -> io::Result<()>;
    /// Reads a whole file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Flushes a file's data and metadata to stable storage (`fsync`); its name is not (sync the
    /// directory).
    fn sync_file(&self, path: &Path) -> io::Result<()>;

    // Names.

    /// Renames atomically, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates `link` as a hard link to `original` (`EMLINK` when `original` has too many).
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// Removes a file (or a symlink).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory tree or a file; a missing path is not an error.
    fn remove_all(&self, path: &Path) -> io::Result<()>;
    /// The metadata of a path, not following a symlink (`lstat`).
    fn metadata(&self, path: &Path) -> io::Result<Metadata>;
    /// Whether a path exists (following symlinks).
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Opens (creating if needed) a lock file and takes an exclusive `flock` on it without
    /// waiting; the lock lives as long as the returned file. `ErrorKind::WouldBlock` when someone
    /// holds it.
    fn lock(&self, path: &Path) -> io::Result<File>;

    // Open files.

    /// Creates a new file for writing with permission bits `mode` (before the umask; e.g. `0o600`
    /// for a key file), failing if `path` exists (`O_EXCL`).
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File>;
    /// Opens a file for reading without following a symlink (`ELOOP` if `path` is one) and
    /// without blocking on a FIFO.
    fn open_read(&self, path: &Path) -> io::Result<File>;
    /// A second handle on an open file, for a mapping to own (`dup`).
    fn open_for_mapping(&self, file: &File) -> io::Result<File>;
    /// The metadata of an open file (`fstat`).
    fn file_metadata(&self, file: &File) -> io::Result<Metadata>;
    /// Appends to `buf` up to `max` bytes read from the file's position, until `max` or end of
    /// file; returns how many were read.
    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Fills `buf` from `offset` (`pread`); `ErrorKind::UnexpectedEof` if the file ends first.
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at the file's position.
    fn write(&self, file: &File, data: &[u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset` (`pwrite`).
    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<()>;
    /// Flushes an open file's data to stable storage (`fdatasync`).
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// Flushes the whole file system holding `file` (`syncfs`): every file and directory on it.
    fn syncfs(&self, file: &File) -> io::Result<()>;
    /// Sets an open file's modification time.
    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()>;

    // Built from the above.

    /// Makes every file of `files` (data and metadata, as [`sync_file`](Fs::sync_file)) and
    /// every directory of `dirs` (as [`sync_dir`](Fs::sync_dir)) durable, in no promised order:
    /// a crash part-way may leave any of them durable and the others not. For a set whose order
    /// does not matter (the inside of a directory not yet renamed into place), so that the file
    /// system can batch them. The default syncs them one by one; [`RealFs`] issues them at once.
    fn sync_batch(&self, files: &[PathBuf], dirs: &[PathBuf]) -> io::Result<()> {
        for file in files {
            self.sync_file(file)?;
        }
        for dir in dirs {
            self.sync_dir(dir)?;
        }
        Ok(())
    }

    /// Creates `path` and its missing parents, each new directory made durable by syncing its
    /// parent (syncing a directory does not persist its own name, so without this a power cut
    /// can lose a new directory and everything made durable inside it).
    fn create_dir_all_durable(&self, path: &Path) -> io::Result<()> {
        if self.exists(path)? {
            return Ok(());
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            self.create_dir_all_durable(parent)?;
        }
        match self.create_dir(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        self.sync_dir(parent.unwrap_or(Path::new(".")))
    }

    /// Creates the empty marker file `path` durably (its name synced in its parent); an existing
    /// marker is kept.
    fn create_marker(&self, path: &Path) -> io::Result<()> {
        match self.create_new(path, 0o644) {
            Ok(file) => drop(file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        self.sync_dir(parent.unwrap_or(Path::new(".")))
    }

    /// Whether the marker file `path` exists (a regular file, not followed through a symlink).
    fn has_marker(&self, path: &Path) -> io::Result<bool> {
        match self.metadata(path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The size of a block [`Zeros::Holes`] may leave as a hole.
const BLOCK: usize = 4096;

/// Whether `bytes` are all zero.
fn is_zero(bytes: &[u8]) -> bool {
    // SAFETY: reinterpreting initialised bytes as u64 words is valid for any bit pattern, and
    // `align_to` returns a correctly aligned middle slice.
    let (prefix, words, suffix) = unsafe { bytes.align_to::<u64>() };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests;
