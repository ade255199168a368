//! The on-disk format: corruption and forged indexes are detected, large blobs are patches, an
//! incompatible format is refused, unchanged files are hard links and deltas are bounded, reopening
//! reads no memory file.

use crate::{RES, overwrite, quick, wasm, write};
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::sync::Arc;
use store_commit::{Bytecode, ModuleId, PAGE_SIZE, Root, Store, StoreError};
use strata_fs::{FaultFs, Op, RealFs};

#[test]
fn corruption_is_detected_and_a_broken_commit_can_be_rewritten() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![1; 2 * PAGE_SIZE], vec![1])?;
    let base = s.commit()?;
    let change = |store: &Store| -> Result<Root> {
        let mut s = store.session(Some(base))?;
        let m = s.memory(&id, RES)?;
        write(&m, 70_000, &[2; 3]);
        Ok(s.commit()?)
    };
    let root = change(&store)?;
    drop(store);
    let commit = dir.path().join(root.to_hex());
    let base_dir = dir.path().join(base.to_hex());
    // A flipped bit in an image (shared by both commits through a hard link) fails verify.
    let image = base_dir.join("memory").join(id.to_hex());
    let mut bytes = std::fs::read(&image)?;
    bytes[5] ^= 1;
    overwrite(&image, &bytes)?;
    let store = Store::open(dir.path(), quick())?;
    let report = store.verify()?;
    assert_eq!(
        (report.checked, report.problems.len()),
        (2, 2),
        "{report:?}"
    );
    bytes[5] ^= 1;
    overwrite(&image, &bytes)?;
    // A truncated image is refused at open of the memory, not mapped (no SIGBUS).
    overwrite(&image, &bytes[..PAGE_SIZE])?;
    let mut s = store.session(Some(base))?;
    let err = s.memory(&id, RES).unwrap_err();
    assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
    drop(s);
    overwrite(&image, &bytes)?;
    drop(store);
    // A damaged index: the commit is not listed, verify names it, committing it again repairs it.
    let index = commit.join("index");
    let mut bytes = std::fs::read(&index)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    overwrite(&index, &bytes)?;
    let store = Store::open(dir.path(), quick())?;
    assert!(!store.contains(&root));
    let report = store.verify()?;
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].path.ends_with(root.to_hex()));
    assert_eq!(change(&store)?, root);
    assert!(store.verify()?.is_ok());
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    assert!(store.verify()?.is_ok());
    assert_eq!(store.read_memory(&root, &id)?[70_000], 2);
    Ok(())
}

/// A forged index (valid checksum, same root: the delta's page count is not part of the root) that
/// claims a huge delta is refused as corrupt, not allocated (which aborted the process).
#[test]
fn a_forged_delta_page_count_is_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![1; 2 * PAGE_SIZE], vec![1])?;
    let base = s.commit()?;
    let mut s = store.session(Some(base))?;
    write(&s.memory(&id, RES)?, 5000, &[2; 3]);
    let root = s.commit()?;
    drop(store);
    let index_path = dir.path().join(root.to_hex()).join("index");
    let original = std::fs::read(&index_path)?;
    for pages in [3, 1 << 24, u32::MAX] {
        let index = store_index::CommitIndex::decode(&original)?;
        let entry = &index.modules()[0];
        let mut delta = entry.memory().delta().context("a delta")?;
        delta.pages = pages;
        let entry = entry
            .clone()
            .with_memory(entry.memory().clone().with_delta(delta));
        let index = store_index::CommitIndex::new(index.seq(), index.parent(), vec![entry])?;
        overwrite(&index_path, &index.encode()?)?;
        let store = Store::open(dir.path(), quick())?;
        assert!(store.contains(&root), "the forged index still loads");
        let err = store.read_memory(&root, &id).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        let mut s = store.session(Some(root))?;
        let err = s.memory(&id, RES).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        drop(s);
        let report = store.verify()?;
        assert_eq!(report.problems.len(), 1, "{report:?}");
    }
    overwrite(&index_path, &original)?;
    let store = Store::open(dir.path(), quick())?;
    assert_eq!(store.read_memory(&root, &id)?[5000], 2);
    assert!(store.verify()?.is_ok());
    Ok(())
}

/// Index fields the root does not cover, forged behind a valid envelope: a patched blob's length
/// (allocated before any check, which aborted the process) and a sequence number of `u64::MAX`
/// (whose successor overflowed) are errors that `verify` reports, and a commit directory named
/// in upper-case hex is not a commit.
#[test]
fn forged_blob_lengths_sequence_numbers_and_names_are_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut blob: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), Vec::new(), blob.clone())?;
    let base = s.commit()?;
    blob[10] ^= 1;
    let mut s = store.session(Some(base))?;
    s.set_blob(&id, blob.clone())?;
    let root = s.commit()?;
    drop(store);
    let index_path = dir.path().join(root.to_hex()).join("index");
    let original = std::fs::read(&index_path)?;
    let index = store_index::CommitIndex::decode(&original)?;
    let entry = &index.modules()[0];
    let delta = entry.blob_delta().context("a patched blob")?;
    for len in [blob.len() as u64 + 1, 1 << 40, 1 << 46, u64::MAX] {
        let forged = entry.clone().with_blob(entry.blob_hash(), len, Some(delta));
        let index = store_index::CommitIndex::new(index.seq(), index.parent(), vec![forged])?;
        overwrite(&index_path, &index.encode()?)?;
        let store = Store::open(dir.path(), quick())?;
        assert!(store.contains(&root), "the forged index still loads");
        let err = store.read_blob(&root, &id).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        let err = store.session(Some(root))?.blob(&id).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        let report = store.verify()?;
        assert_eq!(report.problems.len(), 1, "{len}: {report:?}");
    }

    // `u64::MAX` is refused by the index itself, whether built or decoded.
    let err = store_index::CommitIndex::new(u64::MAX, index.parent(), index.modules().to_vec())
        .unwrap_err();
    assert!(
        matches!(err, store_index::IndexError::Invalid { .. }),
        "{err}"
    );
    let mut forged = original.clone();
    // The payload is postcard: the sequence number is its first field, a varint; u64::MAX takes
    // ten bytes. Rebuild the record around the forged payload.
    let payload = store_index::decode_raw(store_index::RecordKind::Index, &original)?;
    let seq_len = payload
        .iter()
        .position(|b| b & 0x80 == 0)
        .context("a varint")?
        + 1;
    let mut raw = vec![0xff; 9];
    raw.push(0x01);
    raw.extend_from_slice(&payload[seq_len..]);
    forged.clone_from(&store_index::encode_raw(
        store_index::RecordKind::Index,
        &raw,
    ));
    let err = store_index::CommitIndex::decode(&forged).unwrap_err();
    assert!(
        matches!(err, store_index::IndexError::Corrupted { .. }),
        "{err}"
    );
    overwrite(&index_path, &forged)?;
    let store = Store::open(dir.path(), quick())?;
    assert!(
        !store.contains(&root),
        "a commit numbered u64::MAX is not listed"
    );
    let report = store.verify()?;
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let mut s = store.session(Some(base))?;
    s.set_blob(&id, vec![7])?;
    s.commit()?;
    drop(store);
    overwrite(&index_path, &original)?;

    // An upper-case copy of a commit directory parses to the same root: it is not a commit.
    let upper = dir.path().join(root.to_hex().to_uppercase());
    std::fs::create_dir(&upper)?;
    for sub in ["bytecode", "memory", "blob"] {
        std::fs::create_dir(upper.join(sub))?;
    }
    let from = dir.path().join(root.to_hex());
    for file in [
        "index".to_owned(),
        format!("blob/{id}"),
        format!("blob/{id}.diff"),
    ] {
        std::fs::copy(from.join(&file), upper.join(&file))?;
    }
    std::fs::remove_dir_all(&from)?;
    let store = Store::open(dir.path(), quick())?;
    assert!(!store.contains(&root), "an upper-case name was listed");
    assert_eq!(store.commits().len(), 2, "{:?}", store.commits());
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn large_blobs_are_stored_as_patches_that_survive_deleting_the_base() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut blob: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![], blob.clone())?;
    let mut roots = vec![s.commit()?];
    for i in 0..5usize {
        // Shifted data: an insertion near the start moves everything after it.
        blob.splice(i * 10..i * 10, [i as u8; 7]);
        let mut s = store.session(roots.last().copied())?;
        s.set_blob(&id, blob.clone())?;
        roots.push(s.commit()?);
        let patch = dir
            .path()
            .join(roots[i + 1].to_hex())
            .join(format!("blob/{id}.diff"));
        assert!(patch.exists(), "commit {i} stored the whole blob");
        assert!(std::fs::metadata(&patch)?.len() < 10_000);
    }
    // A completely different blob is stored whole.
    let mut s = store.session(roots.last().copied())?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let other: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    s.set_blob(&id, other.clone())?;
    let whole = s.commit()?;
    assert!(
        !dir.path()
            .join(whole.to_hex())
            .join(format!("blob/{id}.diff"))
            .exists()
    );
    store.delete(&roots[0])?;
    store.delete(&roots[3])?;
    assert_eq!(store.read_blob(&roots[5], &id)?, blob);
    assert_eq!(store.session(Some(roots[5]))?.blob(&id)?, blob);
    assert_eq!(store.read_blob(&whole, &id)?, other);
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn incompatible_format_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    drop(Store::open(dir.path(), quick())?);
    let marker = dir.path().join("FORMAT");
    let mut bytes = std::fs::read(&marker)?;
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    overwrite(&marker, &bytes)?;
    let err = Store::open(dir.path(), quick()).unwrap_err();
    assert!(matches!(err, StoreError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("cannot be read"), "{err}");
    Ok(())
}

#[test]
fn unchanged_files_are_hard_links_and_deltas_are_bounded() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let (a, b) = (wasm(1), wasm(2));
    let (ia, ib) = (ModuleId::of_wasm(&a), ModuleId::of_wasm(&b));
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&a[..]), vec![1; 16 * PAGE_SIZE], vec![1])?;
    s.deploy(Bytecode::hash(&b[..]), vec![2; PAGE_SIZE], vec![2])?;
    let r0 = s.commit()?;
    let mut s = store.session(Some(r0))?;
    let m = s.memory(&ia, RES)?;
    write(&m, 3 * 4096, &[7; 4096]);
    let r1 = s.commit()?;
    let ino = |r: &Root, f: String| -> Result<u64> {
        Ok(std::fs::metadata(dir.path().join(r.to_hex()).join(f))?.ino())
    };
    let (ha, hb) = (ia.to_hex(), ib.to_hex());
    for f in [
        format!("bytecode/{ha}"),
        format!("bytecode/{hb}"),
        format!("memory/{ha}"),
        format!("memory/{ha}.tree"),
        format!("memory/{hb}"),
        format!("blob/{ha}"),
    ] {
        assert_eq!(ino(&r0, f.clone())?, ino(&r1, f)?);
    }
    assert!(
        dir.path()
            .join(r1.to_hex())
            .join(format!("memory/{ha}.diff"))
            .exists()
    );
    // Keep writing new pages: past 1/8 of the memory the commit writes a new image instead.
    let mut root = r1;
    let mut images = HashSet::new();
    for i in 0..40usize {
        let mut s = store.session(Some(root))?;
        let m = s.memory(&ia, RES)?;
        write(&m, (10 + i * 3) * 4096, &[i as u8; 4096]);
        root = s.commit()?;
        images.insert(ino(&root, format!("memory/{ha}"))?);
        let index = store.index(&root)?;
        let delta = index
            .module(&ia)
            .and_then(|e| e.memory().delta())
            .map_or(0, |d| d.pages);
        assert!(
            delta as usize * 4096 * 8 <= 16 * PAGE_SIZE,
            "delta of {delta} pages"
        );
    }
    assert!(images.len() >= 2, "no new full image was written");
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn reopen_with_a_thousand_commits_reads_no_memory_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![1; PAGE_SIZE], vec![])?;
    let mut root = s.commit()?;
    const N: usize = 1000;
    for i in 1..N {
        let mut s = store.session(Some(root))?;
        s.set_blob(&id, (i as u32).to_le_bytes().to_vec())?;
        root = s.commit()?;
    }
    drop(store);
    let fs = Arc::new(FaultFs::new(Arc::new(RealFs)));
    let store = Store::open_with_fs(dir.path(), quick(), fs.clone())?;
    let log = fs.take_log();
    let reads: Vec<_> = log
        .iter()
        .filter(|(op, _)| matches!(op, Op::ReadFile | Op::OpenRead))
        .collect();
    assert_eq!(reads.len(), N + 1, "one index per commit plus the marker");
    assert!(
        log.iter()
            .all(|(_, p)| !p.to_string_lossy().contains("/memory")),
        "reopen touched a memory file"
    );
    let commits = store.commits();
    assert_eq!(commits.len(), N);
    assert!(commits.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.latest(), Some(root));
    Ok(())
}

#[test]
fn open_existing_never_makes_a_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fs = || Arc::new(RealFs);
    // No directory: an Io NotFound, and still no directory.
    let missing = dir.path().join("missing");
    match Store::open_existing_with_fs(&missing, quick(), fs()) {
        Err(StoreError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected NotFound, got {:?}", other.map(|_| ())),
    }
    assert!(!missing.exists());
    // A directory without the format marker (here: one that lost it) stays without one.
    let store = Store::open(dir.path(), quick())?;
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&wasm(1)[..]), vec![1; PAGE_SIZE], vec![1])?;
    let root = s.commit()?;
    drop(store);
    let marker = dir.path().join("FORMAT");
    std::fs::remove_file(&marker)?;
    match Store::open_existing_with_fs(dir.path(), quick(), fs()) {
        Err(StoreError::Corrupted { path, source }) => {
            assert_eq!(path, marker);
            assert!(matches!(source, store_commit::Corruption::NoFormatMarker));
        }
        other => panic!("expected NoFormatMarker, got {:?}", other.map(|_| ())),
    }
    assert!(!marker.exists());
    // An intact store opens as usual.
    Store::open(dir.path(), quick())?;
    let store = Store::open_existing_with_fs(dir.path(), quick(), fs())?;
    assert!(store.contains(&root));
    Ok(())
}
