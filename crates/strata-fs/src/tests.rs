//! Unit tests: the real file system's calls, and (with `testing`) the fault layer and the
//! power-loss model on their own.

use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn sparse_files_read_back_whole_and_new_files_are_exclusive() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = RealFs;
    let mut data = vec![0u8; 5 * BLOCK + 10];
    data[BLOCK + 3] = 1;
    data[5 * BLOCK + 9] = 2;
    for (name, zeros) in [("dense", Zeros::Write), ("sparse", Zeros::Holes)] {
        let path = tmp.path().join(name);
        fs.write_file(&path, &data, zeros, 0o644).unwrap();
        assert_eq!(fs.read_file(&path).unwrap(), data, "{name}");
        let err = fs.write_file(&path, b"x", zeros, 0o644).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }
    let all_zero = tmp.path().join("zeros");
    fs.write_file(&all_zero, &[0; 3 * BLOCK], Zeros::Holes, 0o644)
        .unwrap();
    assert_eq!(fs.read_file(&all_zero).unwrap(), vec![0; 3 * BLOCK]);
}

#[test]
fn a_sync_batch_syncs_from_threads_and_reports_a_failed_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = RealFs;
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("d{i}"))).collect();
    let mut files = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        fs.create_dir(dir).unwrap();
        for j in 0..7 {
            let file = dir.join(format!("f{j}"));
            fs.write_file(&file, &[i as u8; 100], Zeros::Write, 0o444)
                .unwrap();
            files.push(file);
        }
    }
    // More paths than threads, and none.
    fs.sync_batch(&files, &dirs).unwrap();
    fs.sync_batch(&[], &[]).unwrap();
    fs.sync_batch(&files[..1], &[]).unwrap();
    // A path that cannot be synced fails the batch, in whichever share it falls.
    for at in [0, 5, 20] {
        let mut with_missing = files.clone();
        with_missing.insert(at, tmp.path().join("missing"));
        let err = fs.sync_batch(&with_missing, &dirs).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "missing at {at}");
    }
}

#[test]
fn write_file_sets_the_mode() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, zeros) in [("dense", Zeros::Write), ("sparse", Zeros::Holes)] {
        let path = tmp.path().join(name);
        RealFs
            .write_file(&path, &[1; 2 * BLOCK], zeros, 0o444)
            .unwrap();
        let meta = RealFs.metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444, "{name}");
        assert_eq!(RealFs.read_file(&path).unwrap(), vec![1; 2 * BLOCK]);
    }
}

#[test]
fn create_new_sets_the_mode_and_refuses_an_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("key");
    let file = RealFs.create_new(&path, 0o600).unwrap();
    RealFs.write(&file, b"secret").unwrap();
    RealFs.write_at(&file, b"S", 0).unwrap();
    RealFs.sync_data(&file).unwrap();
    RealFs.syncfs(&file).unwrap();
    assert_eq!(
        RealFs.file_metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(RealFs.read_file(&path).unwrap(), b"Secret");
    let err = RealFs.create_new(&path, 0o600).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    let read = RealFs.open_read(&path).unwrap();
    let mut buf = Vec::new();
    assert_eq!(RealFs.read(&read, &mut buf, 3).unwrap(), 3);
    assert_eq!(buf, b"Sec");
    let mut tail = [0; 3];
    RealFs.read_at(&read, &mut tail, 3).unwrap();
    assert_eq!(&tail, b"ret");
    let err = RealFs.read_at(&read, &mut tail, 5).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn open_read_refuses_a_symlink_and_remove_all_a_missing_path_is_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("t");
    RealFs
        .write_file(&target, b"t", Zeros::Write, 0o644)
        .unwrap();
    let link = tmp.path().join("l");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = RealFs.open_read(&link).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::LOOP.raw_os_error())
    );
    assert!(
        !RealFs.has_marker(&link).unwrap(),
        "a symlink is not a marker"
    );
    RealFs.remove_all(&tmp.path().join("missing")).unwrap();
    RealFs.create_dir_all(&tmp.path().join("a/b/c")).unwrap();
    RealFs.remove_all(&tmp.path().join("a")).unwrap();
    assert!(!RealFs.exists(&tmp.path().join("a")).unwrap());
}

#[test]
fn markers_and_durable_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x/y");
    RealFs.create_dir_all_durable(&dir).unwrap();
    RealFs.create_dir_all_durable(&dir).unwrap();
    let marker = dir.join("done");
    assert!(!RealFs.has_marker(&marker).unwrap());
    RealFs.create_marker(&marker).unwrap();
    RealFs.create_marker(&marker).unwrap();
    assert!(RealFs.has_marker(&marker).unwrap());
    assert_eq!(RealFs.metadata(&marker).unwrap().len(), 0);
}

#[test]
fn a_lock_is_exclusive_while_its_file_lives() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lock");
    let held = RealFs.lock(&path).unwrap();
    let err = RealFs.lock(&path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(held);
    RealFs.lock(&path).unwrap();
}

#[cfg(feature = "testing")]
mod testing {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    const EIO: i32 = 5;
    const EMLINK: i32 = 31;
    const ENOSPC: i32 = 28;

    #[test]
    fn a_fault_fails_the_chosen_operation_before_it_has_an_effect() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        let fs = FaultFs::real();
        fs.fail_at(fs.ops() + 1, FaultMode::Once, ENOSPC);
        fs.create_dir(&p("a")).unwrap();
        let err = fs.create_dir(&p("b")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert!(!p("b").exists(), "a failed operation has no effect");
        fs.create_dir(&p("b")).unwrap();
        fs.fail_at(fs.ops(), FaultMode::FromThenOn, EIO);
        for _ in 0..3 {
            let err = fs.exists(&p("a")).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(EIO));
        }
        fs.heal();
        assert!(fs.exists(&p("a")).unwrap());
        let log = fs.take_log();
        assert_eq!(log[0], (Op::CreateDir, p("a")));
        assert_eq!(log.len(), 7);
        assert_eq!(fs.ops(), 7);
    }

    #[test]
    fn emlink_on_every_hard_link_until_healed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        let fs = FaultFs::real();
        fs.write_file(&p("a"), b"a", Zeros::Write, 0o644).unwrap();
        fs.fail_every(Op::HardLink, EMLINK);
        for name in ["b", "c"] {
            let err = fs.hard_link(&p("a"), &p(name)).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(EMLINK));
        }
        // Other operations go on.
        fs.write_file(&p("d"), b"d", Zeros::Write, 0o644).unwrap();
        fs.heal();
        fs.hard_link(&p("a"), &p("b")).unwrap();
        assert_eq!(
            fs.take_ops(),
            [
                Op::WriteFile,
                Op::HardLink,
                Op::HardLink,
                Op::WriteFile,
                Op::HardLink
            ]
        );
    }

    #[test]
    fn emlink_after_n_hard_links() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        let fs = FaultFs::real();
        fs.write_file(&p("a"), b"a", Zeros::Write, 0o644).unwrap();
        fs.fail_after(Op::HardLink, 2, EMLINK);
        fs.hard_link(&p("a"), &p("b")).unwrap();
        // Other operations do not count.
        fs.write_file(&p("d"), b"d", Zeros::Write, 0o644).unwrap();
        fs.hard_link(&p("a"), &p("c")).unwrap();
        for name in ["e", "f"] {
            let err = fs.hard_link(&p("a"), &p(name)).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(EMLINK));
            assert!(!p(name).exists());
        }
        assert_eq!(std::fs::metadata(p("a")).unwrap().nlink(), 3);
        fs.heal();
        fs.hard_link(&p("a"), &p("e")).unwrap();
    }

    #[test]
    fn provided_methods_go_through_the_layer_one_step_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = FaultFs::real();
        let marker = tmp.path().join("m");
        fs.create_marker(&marker).unwrap();
        assert!(fs.has_marker(&marker).unwrap());
        fs.create_dir_all_durable(&tmp.path().join("d")).unwrap();
        assert_eq!(
            fs.take_ops(),
            [
                Op::CreateNew,
                Op::SyncDir,
                Op::Metadata,
                Op::Exists,
                Op::Exists,
                Op::CreateDir,
                Op::SyncDir
            ]
        );
    }

    /// A batch is modelled as its syncs in reverse order, one step each: a cut part-way keeps
    /// the directory's entries synced before the files in it.
    #[test]
    fn a_cut_inside_a_sync_batch_keeps_the_syncs_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fs = PowerLossFs::real(root);
        let p = |n: &str| root.join(n);
        fs.create_dir(&p("d")).unwrap();
        fs.sync_dir(root).unwrap();
        for n in ["d/a", "d/b"] {
            fs.write_file(&p(n), n.as_bytes(), Zeros::Write, 0o444)
                .unwrap();
        }
        // Cut after the batch's first step: the directory synced, neither file.
        fs.cut_at(fs.ops() + 1);
        let err = fs.sync_batch(&[p("d/a"), p("d/b")], &[p("d")]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        fs.power_cut(Loss::Unsynced).unwrap();
        // Entries kept, contents lost: what a commit directory never renamed into place may
        // hold after a crash (open removes it).
        assert_eq!(std::fs::read(p("d/a")).unwrap(), b"");
        assert_eq!(std::fs::read(p("d/b")).unwrap(), b"");
    }

    /// The loss model on its own, by path: what each kind of sync makes durable, and what the
    /// cut undoes.
    #[test]
    fn power_cut_keeps_exactly_what_was_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("old")).unwrap();
        std::fs::write(root.join("old/kept"), b"before").unwrap();
        let fs = PowerLossFs::real(root);
        let p = |n: &str| root.join(n);
        // Synced file, unsynced entry: lost. Synced entry, unsynced file: empty.
        fs.write_file(&p("b"), b"bbbb", Zeros::Holes, 0o644)
            .unwrap();
        fs.write_file(&p("c"), b"cccc", Zeros::Write, 0o644)
            .unwrap();
        fs.sync_file(&p("c")).unwrap();
        fs.create_dir(&p("d")).unwrap();
        fs.write_file(&p("d/x"), b"xx", Zeros::Write, 0o444)
            .unwrap();
        fs.sync_file(&p("d/x")).unwrap();
        fs.hard_link(&p("c"), &p("d/y")).unwrap();
        fs.sync_dir(&p("d")).unwrap();
        fs.sync_dir(root).unwrap();
        // After the last sync: a rename, a removal of a synced tree, a new link.
        fs.rename(&p("c"), &p("e")).unwrap();
        fs.remove_all(&p("old")).unwrap();
        fs.hard_link(&p("e"), &p("f")).unwrap();
        fs.write_file(&p("a"), b"aaaa", Zeros::Write, 0o644)
            .unwrap();
        fs.sync_file(&p("a")).unwrap();
        fs.write_file(&p("d/z"), b"zz", Zeros::Write, 0o644)
            .unwrap();
        fs.sync_file(&p("d/z")).unwrap();
        let before = fs.ops();
        fs.cut_at(before + 1);
        fs.sync_dir(&p("d")).unwrap();
        let err = fs.sync_dir(root).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        assert!(fs.read_file(&p("e")).is_err(), "the machine is off");
        fs.power_cut(Loss::Unsynced).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c", "d", "old"]);
        assert_eq!(std::fs::read(p("b")).unwrap(), b"");
        assert_eq!(std::fs::read(p("c")).unwrap(), b"cccc");
        assert_eq!(std::fs::read(p("old/kept")).unwrap(), b"before");
        // `d` was synced after `z` was written and synced: all three entries survive.
        assert_eq!(std::fs::read(p("d/x")).unwrap(), b"xx");
        assert_eq!(std::fs::read(p("d/z")).unwrap(), b"zz");
        let ino = |n: &str| std::fs::metadata(p(n)).unwrap().ino();
        assert_eq!(ino("c"), ino("d/y"), "a hard link stays a hard link");
        // A file's mode is set with its inode: a power cut keeps it.
        let mode = |n: &str| std::fs::metadata(p(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("d/x"), mode("d/z")), (0o444, 0o644));
        // The layer starts over on the directory as it is now.
        fs.cut_at(u64::MAX);
        fs.rename(&p("c"), &p("g")).unwrap();
        fs.sync_dir(root).unwrap();
        fs.power_cut(Loss::Unsynced).unwrap();
        assert_eq!(std::fs::read(p("g")).unwrap(), b"cccc");
        assert!(!p("c").exists());
    }

    /// The open-file side of the model (the file cache's way of writing): create, write, maybe
    /// sync, rename, under both kinds of loss.
    #[test]
    fn open_file_writes_are_lost_or_torn_unless_synced() {
        for loss in [Loss::Unsynced, Loss::TornData] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            let p = |n: &str| root.join(n);
            std::fs::write(p("old"), b"old").unwrap();
            let fs = PowerLossFs::real(root);
            // Synced content and entry: kept.
            let f = fs.create_new(&p("t1"), 0o644).unwrap();
            fs.write(&f, b"one").unwrap();
            fs.sync_data(&f).unwrap();
            drop(f);
            fs.rename(&p("t1"), &p("one")).unwrap();
            fs.sync_dir(root).unwrap();
            // Renamed without a data sync: empty or torn.
            let f = fs.create_new(&p("t2"), 0o644).unwrap();
            fs.write(&f, b"two!").unwrap();
            drop(f);
            fs.rename(&p("t2"), &p("two")).unwrap();
            // Synced data, unsynced name: gone (Unsynced) or kept (TornData).
            let f = fs.create_new(&p("t3"), 0o644).unwrap();
            fs.write(&f, b"3").unwrap();
            fs.write_at(&f, b"33", 1).unwrap();
            fs.sync_data(&f).unwrap();
            drop(f);
            // A removal not synced: back (Unsynced) or gone (TornData).
            fs.remove_file(&p("old")).unwrap();
            fs.power_cut(loss).unwrap();
            let read = |n: &str| std::fs::read(p(n)).ok();
            assert_eq!(read("one").as_deref(), Some(&b"one"[..]), "{loss:?}");
            match loss {
                Loss::Unsynced => {
                    assert_eq!(read("two").as_deref(), None);
                    assert_eq!(read("t2").as_deref(), None);
                    assert_eq!(read("t3").as_deref(), None);
                    assert_eq!(read("old").as_deref(), Some(&b"old"[..]));
                }
                _ => {
                    assert_eq!(read("two").as_deref(), Some(&[0u8; 4][..]), "torn");
                    assert_eq!(read("t3").as_deref(), Some(&b"333"[..]));
                    assert_eq!(read("old").as_deref(), None);
                }
            }
        }
    }

    /// A file written by path and never synced, its name synced: empty, or torn to zeros.
    #[test]
    fn a_file_written_by_path_comes_back_empty_or_torn() {
        for (loss, want) in [(Loss::Unsynced, &[][..]), (Loss::TornData, &[0u8; 5][..])] {
            let tmp = tempfile::tempdir().unwrap();
            let fs = PowerLossFs::real(tmp.path());
            let path = tmp.path().join("w");
            fs.write_file(&path, b"hello", Zeros::Write, 0o644).unwrap();
            fs.sync_dir(tmp.path()).unwrap();
            fs.power_cut(loss).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), want, "{loss:?}");
        }
    }

    /// A directory created without syncing its parent is lost; `create_dir_all_durable` keeps it,
    /// and `syncfs` makes everything durable.
    #[test]
    fn a_new_directory_survives_only_if_its_parent_was_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fs = PowerLossFs::real(root);
        fs.create_dir_all_durable(&root.join("kept/inner")).unwrap();
        fs.create_marker(&root.join("kept/inner/m")).unwrap();
        // (Syncing the root for `kept` would have kept `lost` too: it comes after.)
        fs.create_dir_all(&root.join("lost/inner")).unwrap();
        fs.create_marker(&root.join("lost/inner/m")).unwrap();
        fs.power_cut(Loss::Unsynced).unwrap();
        assert!(!root.join("lost").exists());
        assert!(RealFs.has_marker(&root.join("kept/inner/m")).unwrap());

        fs.create_dir_all(&root.join("a/b")).unwrap();
        let f = fs.create_new(&root.join("a/b/f"), 0o644).unwrap();
        fs.write(&f, b"data").unwrap();
        fs.syncfs(&f).unwrap();
        drop(f);
        fs.power_cut(Loss::Unsynced).unwrap();
        assert_eq!(std::fs::read(root.join("a/b/f")).unwrap(), b"data");
    }

    /// Two layers over two directories on one clock stop together.
    #[test]
    fn layers_on_one_clock_are_cut_together() {
        let tmp = tempfile::tempdir().unwrap();
        let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
        std::fs::create_dir(&x).unwrap();
        std::fs::create_dir(&y).unwrap();
        let clock = Clock::new();
        let fx = PowerLossFs::new(Arc::new(NoSyncFs::real()), &x, clock.clone());
        let fy = PowerLossFs::new(Arc::new(RealFs), &y, clock.clone());
        fx.write_file(&x.join("a"), b"a", Zeros::Write, 0o644)
            .unwrap();
        fy.write_file(&y.join("b"), b"b", Zeros::Write, 0o644)
            .unwrap();
        assert_eq!((clock.ops(), fx.ops(), fy.ops()), (2, 2, 2));
        clock.cut_at(3);
        fx.sync_dir(&x).unwrap();
        let err = fy.sync_dir(&y).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        assert!(fx.exists(&x).is_err());
        fx.power_cut(Loss::Unsynced).unwrap();
        fy.power_cut(Loss::Unsynced).unwrap();
        assert_eq!(
            std::fs::read(x.join("a")).unwrap(),
            b"",
            "entry synced, data not"
        );
        assert!(!y.join("b").exists());
    }
}
