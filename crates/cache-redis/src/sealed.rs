//! A checked artifact as a sealed memfd, for `Module::deserialize_open_file`.
//!
//! `Module::deserialize` copies the artifact into a fresh anonymous mapping: one page fault per
//! 4 KiB page as the copy touches it, then wasmtime's own copy. Written into a memfd instead, the
//! kernel allocates the pages inside one `write` and wasmtime maps the file, faulting it in 64
//! KiB at a time (fault-around). Measured (release, this 2-core VM, where a fault costs 2-3
//! µs): hackatom's 0.78 MB artifact 0.55 ms against 0.73 ms, sql.js's 2.4 MB 1.6 against
//! 2.0 ms. The seals make the file immutable for as long as anything maps it, which is what
//! `deserialize_open_file` asks of a file, and only this process holds it.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, memfd_create};

/// An anonymous in-memory file holding `bytes`, sealed: no write, no size change, no unsealing.
pub(crate) fn memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
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

    #[test]
    fn the_memfd_holds_the_bytes_and_refuses_every_change() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = std::fs::File::from(memfd(&bytes).expect("memfd"));
        let mut back = Vec::new();
        file.rewind().expect("rewind");
        file.read_to_end(&mut back).expect("read");
        assert_eq!(back, bytes);
        file.rewind().expect("rewind");
        assert!(file.write_all(b"x").is_err(), "write sealed");
        assert!(file.set_len(10).is_err(), "shrink sealed");
        assert!(file.set_len(1 << 20).is_err(), "grow sealed");
    }
}
