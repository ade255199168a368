//! [`RealFs`]: the real file system, one std or rustix call per method.

use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{BLOCK, Fs, Zeros, is_zero};

/// The most threads [`RealFs::sync_batch`] syncs from.
const SYNC_THREADS: usize = 8;

/// Syncs every `step`-th path of `paths` from the `first`.
fn sync_share(paths: &[&Path], first: usize, step: usize) -> io::Result<()> {
    paths
        .iter()
        .skip(first)
        .step_by(step)
        .try_for_each(|path| File::open(path)?.sync_all())
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl Fs for RealFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn write_file(&self, path: &Path, data: &[u8], zeros: Zeros, mode: u32) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        if zeros == Zeros::Write {
            return file.write_all(data);
        }
        // Write runs of non-zero blocks; the zero runs stay holes.
        let mut start = None;
        let mut at = 0;
        while at < data.len() {
            let end = (at + BLOCK).min(data.len());
            match (is_zero(&data[at..end]), start) {
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

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    /// Issued at once from up to 8 threads: a journaling file system (ext4's
    /// jbd2, XFS's log) commits the syncs that wait together in one journal commit, where one
    /// after another each waits for a commit of its own.
    fn sync_batch(&self, files: &[PathBuf], dirs: &[PathBuf]) -> io::Result<()> {
        let all: Vec<&Path> = files.iter().chain(dirs).map(PathBuf::as_path).collect();
        let threads = all.len().min(SYNC_THREADS);
        if threads <= 1 {
            return sync_share(&all, 0, 1);
        }
        std::thread::scope(|scope| {
            let all = &all;
            let mut here = vec![0];
            let mut workers = Vec::new();
            for share in 1..threads {
                match std::thread::Builder::new()
                    .name("strata-sync".into())
                    .spawn_scoped(scope, move || sync_share(all, share, threads))
                {
                    Ok(worker) => workers.push(worker),
                    // No thread: this one syncs that share too.
                    Err(_) => here.push(share),
                }
            }
            let mut result = here
                .into_iter()
                .try_for_each(|share| sync_share(all, share, threads));
            for worker in workers {
                let synced = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                result = result.and(synced);
            }
            result
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        std::fs::hard_link(original, link)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
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

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        std::fs::symlink_metadata(path)
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

    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(path)
    }

    fn open_for_mapping(&self, file: &File) -> io::Result<File> {
        file.try_clone()
    }

    fn file_metadata(&self, file: &File) -> io::Result<Metadata> {
        file.metadata()
    }

    fn read(&self, file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        file.take(max as u64).read_to_end(buf)
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    fn write(&self, mut file: &File, data: &[u8]) -> io::Result<()> {
        file.write_all(data)
    }

    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(data, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn syncfs(&self, file: &File) -> io::Result<()> {
        Ok(rustix::fs::syncfs(file)?)
    }

    fn set_mtime(&self, file: &File, time: SystemTime) -> io::Result<()> {
        file.set_modified(time)
    }
}
