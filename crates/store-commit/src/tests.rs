//! Unit tests that need crate internals: the dirty-page fallbacks give the same commits as
//! `PAGEMAP_SCAN`; call checkpoints cost what a call writes with write tracking, and both they
//! and their fallback roll back exactly.

use crate::mapping::{DirtySource, set_dirty_source};
use crate::{Bytecode, ModuleId, PAGE_SIZE, Root, Store, StoreConfig};

/// A store in `dir` holding one committed module (its code tagged with `tag`) whose memory is
/// `pages` wasm pages of `byte`.
fn store_with_module(
    dir: &std::path::Path,
    config: StoreConfig,
    tag: u8,
    pages: usize,
    byte: u8,
) -> (Store, ModuleId, Root) {
    let store = Store::open(dir, config).unwrap();
    let code = [b"\0asm\x01\0\0\0".as_slice(), &[tag]].concat();
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None).unwrap();
    s.deploy(
        Bytecode::hash(&code[..]),
        vec![byte; pages * PAGE_SIZE],
        vec![],
    )
    .unwrap();
    let root = s.commit().unwrap();
    (store, id, root)
}

fn no_fsync() -> StoreConfig {
    StoreConfig {
        fsync: false,
        ..StoreConfig::default()
    }
}

/// A history with deltas, a full image, grows, rollbacks and rewrites of identical bytes.
fn history(dir: &std::path::Path, source: DirtySource) -> Vec<(Root, Vec<u8>)> {
    set_dirty_source(source);
    let config = StoreConfig {
        fsync: false,
        delta_ratio: 4,
        ..StoreConfig::default()
    };
    let (store, id, mut root) = store_with_module(dir, config, b'x', 4, 3);
    let mut out = Vec::new();
    for i in 0..12usize {
        let mut s = store.session(Some(root)).unwrap();
        let m = s.memory(&id, 16 * PAGE_SIZE).unwrap();
        let write = |at: usize, data: &[u8]| {
            assert!(at + data.len() <= m.len());
            // SAFETY: inside the memory; nothing else uses it.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), m.base().add(at), data.len()) }
        };
        let checkpoint = s.checkpoint().unwrap();
        write(i * 9000, &[i as u8 + 1; 5000]);
        if i % 4 == 3 {
            s.rollback(&checkpoint).unwrap();
        }
        // Rewriting a page with the bytes it already holds is not a change.
        write(PAGE_SIZE + 17, &[3]);
        if i % 5 == 0 {
            m.grow_to(m.len() + PAGE_SIZE).unwrap();
            write(m.len() - 4096, &[i as u8; 4096]);
        }
        // SAFETY: inside the memory; nothing writes it meanwhile.
        let content = unsafe { std::slice::from_raw_parts(m.base(), m.len()) }.to_vec();
        root = s.commit().unwrap();
        assert_eq!(store.read_memory(&root, &id).unwrap(), content);
        out.push((root, content));
    }
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    set_dirty_source(DirtySource::Auto);
    out
}

#[test]
fn dirty_page_fallbacks_give_the_same_commits() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let scan = history(dirs[0].path(), DirtySource::Auto);
    let read = history(dirs[1].path(), DirtySource::PagemapRead);
    let compare = history(dirs[2].path(), DirtySource::Compare);
    assert_eq!(scan, read);
    assert_eq!(scan, compare);
}

#[test]
fn a_plan_that_breaks_an_index_invariant_is_an_internal_error_with_its_source() {
    use store_index::{CommitIndex, MemoryTree, ModuleEntry, hash};
    let tree = MemoryTree::from_memory(&[]);
    let entry = ModuleEntry::new(ModuleId::of_wasm(b"m"), 1, &tree, hash::blob(b""), 0);
    let source = CommitIndex::new(1, None, vec![entry.clone(), entry]).unwrap_err();
    let err = crate::StoreError::InvalidPlan { source };
    let message = err.to_string();
    assert!(message.starts_with("internal error: "), "{message}");
    assert!(!message.contains('\n'), "{message}");
    let source = std::error::Error::source(&err).expect("the index error is kept");
    assert!(source.downcast_ref::<store_index::IndexError>().is_some());
}

/// A hostile session: it dirties a 16 MiB memory, then makes many small "calls" (a call
/// checkpoint, a page written, some rolled back after writing more). Returns the bytes each call
/// checkpoint copied; checks every rollback and the final commit against a model.
fn small_calls_after_dirtying(dir: &std::path::Path, tracking: bool) -> Vec<usize> {
    crate::mapping::set_tracking(tracking);
    let (store, id, root) = store_with_module(dir, no_fsync(), b'h', 4, 7);
    let mut s = store.session(Some(root)).unwrap();
    let m = s.memory(&id, 1 << 30).unwrap();
    m.grow_to(16 << 20).unwrap();
    let mut model = vec![7u8; 4 * PAGE_SIZE];
    model.resize(16 << 20, 0);
    let write = |model: &mut Vec<u8>, at: usize, byte: u8| {
        model[at] = byte;
        // SAFETY: inside the memory; nothing else uses it.
        unsafe { *m.base().add(at) = byte };
    };
    for page in 0..(16 << 20) / 4096 {
        write(&mut model, page * 4096 + 1, 1);
    }
    let mut saved = Vec::new();
    for i in 0..60usize {
        let checkpoint = s.call_checkpoint().unwrap();
        saved.push(checkpoint.saved_bytes());
        let before = model.clone();
        let page = (i * 7919) % ((16 << 20) / 4096);
        write(&mut model, page * 4096 + 9, i as u8);
        if i % 5 == 4 {
            // A failing call: it wrote more, grew the memory, then is undone.
            write(&mut model, ((i * 104_729) % (16 << 20)) & !7, 0xee);
            m.grow_to(m.len() + PAGE_SIZE).unwrap();
            // SAFETY: inside the grown memory.
            unsafe { *m.base().add(m.len() - 1) = 1 };
            s.rollback(&checkpoint).unwrap();
            // Twice is the same as once.
            s.rollback(&checkpoint).unwrap();
            model = before;
            assert_eq!(m.len(), 16 << 20);
        }
        // SAFETY: inside the memory; nothing writes it meanwhile.
        let now = unsafe { std::slice::from_raw_parts(m.base(), m.len()) };
        assert!(now == model.as_slice(), "memory diverged at call {i}");
    }
    // Only the latest call checkpoint can be rolled back to.
    let old = s.call_checkpoint().unwrap();
    s.call_checkpoint().unwrap();
    assert!(matches!(
        s.rollback(&old),
        Err(crate::StoreError::InvalidInput { .. })
    ));
    drop(m);
    let root = s.commit().unwrap();
    assert!(store.read_memory(&root, &id).unwrap() == model);
    crate::mapping::set_tracking(true);
    saved
}

#[test]
fn call_checkpoints_cost_what_the_previous_call_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let saved = small_calls_after_dirtying(dir.path(), true);
    if crate::mapping::tracking_available() {
        // The first copies what the session dirtied so far; each later one the page or two
        // the previous call wrote, however dirty the memory is.
        assert!(saved[0] >= 16 << 20, "{}", saved[0]);
        assert!(saved[1..].iter().all(|b| *b <= 2 * 4096), "{saved:?}");
    } else {
        // FIXME: without userfaultfd write-protection every checkpoint copies the dirty memory.
        assert!(saved.iter().all(|b| *b >= 16 << 20), "{saved:?}");
    }
}

#[test]
fn call_checkpoints_without_write_tracking_copy_the_dirty_memory_and_roll_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let saved = small_calls_after_dirtying(dir.path(), false);
    assert!(saved.iter().all(|b| *b >= 16 << 20), "{saved:?}");
}

/// Random sessions of small calls against a model, with write tracking from the first written
/// page and without it: writes (some of them restoring a page's base content), growth, full
/// and call checkpoints, rollbacks (also to stale ones, refused), commits read back.
#[test]
fn call_checkpoints_match_a_model() {
    crate::session::TRACK_AFTER.with(|t| t.set(0));
    for tracking in [true, false] {
        crate::mapping::set_tracking(tracking);
        let dir = tempfile::tempdir().unwrap();
        let (store, id, mut root) = store_with_module(dir.path(), no_fsync(), b'm', 2, 5);
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(tracking);
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _session in 0..20 {
            let mut s = store.session(Some(root)).unwrap();
            let m = s.memory(&id, 64 * PAGE_SIZE).unwrap();
            // SAFETY: nothing else uses the memory.
            let mut model = unsafe { std::slice::from_raw_parts(m.base(), m.len()) }.to_vec();
            // The checkpoint to roll back to, its state, and whether it is a call checkpoint.
            let mut saved: Option<(crate::Checkpoint, Vec<u8>, bool)> = None;
            let mut stale: Option<crate::Checkpoint> = None;
            for _op in 0..200 {
                match next(10) {
                    0..=4 => {
                        let at = next(model.len() as u64) as usize;
                        // Often the base content back (5 or 0), else something new.
                        let byte = [5, 0, next(256) as u8][next(3) as usize];
                        model[at] = byte;
                        // SAFETY: inside the memory.
                        unsafe { *m.base().add(at) = byte };
                    }
                    5 if m.len() < 8 * PAGE_SIZE => {
                        m.grow_to(m.len() + PAGE_SIZE).unwrap();
                        model.resize(m.len(), 0);
                    }
                    6 => {
                        if let Some((c, _, true)) = saved.take() {
                            stale = Some(c);
                        }
                        saved = Some((s.call_checkpoint().unwrap(), model.clone(), true));
                    }
                    7 => saved = Some((s.checkpoint().unwrap(), model.clone(), false)),
                    8 => {
                        if let Some((c, state, _)) = &saved {
                            s.rollback(c).unwrap();
                            model = state.clone();
                            assert_eq!(m.len(), model.len());
                        }
                    }
                    _ => {
                        if let Some(c) = stale.take() {
                            assert!(s.rollback(&c).is_err(), "a stale call checkpoint");
                        }
                    }
                }
                // SAFETY: nothing writes the memory meanwhile.
                let now = unsafe { std::slice::from_raw_parts(m.base(), m.len()) };
                assert!(
                    now == model.as_slice(),
                    "memory diverged (tracking {tracking})"
                );
            }
            drop(m);
            root = s.commit().unwrap();
            assert!(store.read_memory(&root, &id).unwrap() == model);
        }
    }
    crate::mapping::set_tracking(true);
    crate::session::TRACK_AFTER.with(|t| t.set(64));
}

/// vm-host takes no call checkpoint before a call that cannot write (a read-only export): the
/// next call checkpoint then follows a stretch of reads, and a failed writing call still rolls
/// back to the state the last successful call left, with and without write tracking.
#[test]
fn reads_without_a_call_checkpoint_keep_rollbacks_exact() {
    for (track_after, tracking) in [(0, true), (0, false), (64, true)] {
        crate::session::TRACK_AFTER.with(|t| t.set(track_after));
        crate::mapping::set_tracking(tracking);
        let dir = tempfile::tempdir().unwrap();
        let (store, id, root) = store_with_module(dir.path(), no_fsync(), b'r', 8, 7);
        let mut s = store.session(Some(root)).unwrap();
        let m = s.memory(&id, 68 * PAGE_SIZE).unwrap();
        let mut model = vec![7u8; 8 * PAGE_SIZE];
        let write = |model: &mut Vec<u8>, at: usize, byte: u8| {
            model[at] = byte;
            // SAFETY: inside the memory; nothing else uses it.
            unsafe { *m.base().add(at) = byte };
        };
        let read = || {
            // SAFETY: nothing writes the memory meanwhile.
            unsafe { std::slice::from_raw_parts(m.base(), m.len()) }.to_vec()
        };
        for round in 0..4u8 {
            // A writing call: a checkpoint, then pages written (more than 64 OS pages in the
            // first two rounds, so the default threshold starts tracking too).
            let _before = s.call_checkpoint().unwrap();
            let pages = if round < 2 { 80 } else { 3 };
            let len = model.len();
            for page in 0..pages {
                let at = (page * 4096 + usize::from(round) * 13) % len;
                write(&mut model, at, round + 1);
            }
            // Read-only calls: no checkpoint, no writes.
            assert!(read() == model, "round {round}");
            assert!(read() == model, "round {round}");
            // A failing writing call: everything it did is undone.
            let checkpoint = s.call_checkpoint().unwrap();
            for page in (0..(8 * PAGE_SIZE) / 4096).step_by(3) {
                // SAFETY: inside the memory.
                unsafe { *m.base().add(page * 4096 + 5) = 0xee };
            }
            m.grow_to(m.len() + PAGE_SIZE).unwrap();
            // SAFETY: inside the grown memory.
            unsafe { *m.base().add(m.len() - 1) = 1 };
            s.rollback(&checkpoint).unwrap();
            assert_eq!(m.len(), 8 * PAGE_SIZE);
            assert!(read() == model, "round {round}, tracking {tracking}");
        }
        drop(m);
        let root = s.commit().unwrap();
        assert!(store.read_memory(&root, &id).unwrap() == model);
    }
    crate::mapping::set_tracking(true);
    crate::session::TRACK_AFTER.with(|t| t.set(64));
}
