//! Unit tests of the file cache: the layout, every corruption case in every mode, the byte
//! limit, prune and verify.

use super::*;
use std::fs;
use strata_fs::{FaultFs, FaultMode, Loss, Op, PowerLossFs};

const WAT: &str = r#"(module (func (export "answer") (result i32) i32.const 42))"#;

fn answer(engine: &Engine, module: &Module) -> i32 {
    let mut store = wasmtime::Store::new(engine, ());
    let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
    let f = instance
        .get_typed_func::<(), i32>(&mut store, "answer")
        .unwrap();
    f.call(&mut store, ()).unwrap()
}

#[test]
fn wasmtime_accepts_bytes_after_the_artifact() {
    // The layout relies on this: a file = artifact || trailer still maps as an artifact.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let module = Module::new(&engine, WAT).unwrap();
    let mut bytes = module.serialize().unwrap();
    bytes.extend_from_slice(&[0xAB; TRAILER_LEN]);
    let path = dir.path().join("x.cwasm");
    fs::write(&path, &bytes).unwrap();
    // SAFETY: the file is a fresh `Module::serialize` output plus padding, written just above.
    let loaded = unsafe { Module::deserialize_file(&engine, &path) }.unwrap();
    assert_eq!(answer(&engine, &loaded), 42);
    // SAFETY: as above.
    let loaded = unsafe { Module::deserialize(&engine, &bytes) }.unwrap();
    assert_eq!(answer(&engine, &loaded), 42);
}

/// Replaces a saved file's bytes, as a damaging writer would: saved files are read-only
/// (`CACHE_FILE_MODE`), so the test removes the file and writes a new one in its place.
fn overwrite(path: &Path, bytes: &[u8]) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", path.display()),
    }
    fs::write(path, bytes).unwrap();
}

fn wat_n(n: i32) -> String {
    format!(r#"(module (func (export "answer") (result i32) i32.const {n}))"#)
}

struct Fixture {
    dir: tempfile::TempDir,
    engine: Engine,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            engine: Engine::default(),
        }
    }

    fn open(&self, mode: Verification) -> FsCache {
        self.open_with(FsCacheConfig {
            mode,
            max_bytes: None,
            fsync: false,
            ..FsCacheConfig::default()
        })
    }

    fn open_with(&self, config: FsCacheConfig) -> FsCache {
        FsCache::open(self.dir.path(), &self.engine, config).unwrap()
    }

    /// Compiles `wat` and saves it; returns its key.
    fn save(&self, cache: &FsCache, wat: &str) -> CacheKey {
        let key = CacheKey::new(&self.engine, wat.as_bytes());
        cache
            .save(&key, &Module::new(&self.engine, wat).unwrap())
            .unwrap();
        key
    }
}

/// The Trusted mode, for tests.
fn trusted() -> Verification {
    // SAFETY: the tests' cache folders are private temp dirs, written only by the tests' own
    // saves; a test damages a file under Trusted only in ways the trailer check catches
    // (header, length, swap, engine), or only reads it without deserializing (`verify_all`).
    unsafe { Verification::trusted() }
}

fn modes() -> Vec<Verification> {
    vec![
        trusted(),
        Verification::Verified,
        Verification::Authenticated {
            key: b"a secret kept elsewhere".to_vec(),
        },
    ]
}

/// Asserts that loading `key` is a miss that removes the file and counts a rejection, and
/// that a recompile + save makes the next load a correct module.
fn assert_rejected_then_recovers(
    fx: &Fixture,
    cache: &FsCache,
    key: &CacheKey,
    wat: &str,
    want: i32,
) {
    let before = cache.stats()[0].clone();
    assert!(
        cache.load(key).unwrap().is_none(),
        "{:?}",
        cache.config().mode
    );
    let after = cache.stats()[0].clone();
    assert_eq!(after.rejected, before.rejected + 1);
    assert_eq!(after.misses, before.misses + 1);
    assert!(!cache.path_of(key).exists(), "a rejected file is removed");
    fx.save(cache, wat);
    let module = cache.load(key).unwrap().expect("hit after recompile");
    assert_eq!(answer(&fx.engine, &module), want);
}

#[test]
fn round_trip_in_every_mode() {
    for mode in modes() {
        let fx = Fixture::new();
        let cache = fx.open(mode.clone());
        let key = CacheKey::new(&fx.engine, WAT.as_bytes());
        assert!(cache.load(&key).unwrap().is_none());
        fx.save(&cache, WAT);
        let module = cache.load(&key).unwrap().expect("hit");
        assert_eq!(answer(&fx.engine, &module), 42);
        let s = &cache.stats()[0];
        assert_eq!(
            (s.hits, s.misses, s.inserts, s.entries, s.rejected),
            (1, 1, 1, 1, 0)
        );
        let file_len = fs::metadata(cache.path_of(&key)).unwrap().len();
        assert_eq!(s.bytes, file_len);
        // Layout: <dir>/v2-<fingerprint>/<whole key>.cwasm, and nothing else left behind.
        let expected = fx
            .dir
            .path()
            .join(format!(
                "v{FORMAT_VERSION}-{}",
                EngineFingerprint::of(&fx.engine)
            ))
            .join(format!(
                "{}-original-plain-cranelift-{}.cwasm",
                key.module(),
                key.engine()
            ));
        assert_eq!(cache.path_of(&key), expected);
        assert_eq!(fs::read_dir(cache.engine_dir()).unwrap().count(), 1);
        assert!(cache.remove(&key).unwrap());
        assert!(!cache.remove(&key).unwrap());
        assert_eq!(cache.stats()[0].entries, 0);
    }
}

#[test]
fn flipped_byte_in_trailer_is_a_miss_in_every_mode() {
    for mode in modes() {
        let fx = Fixture::new();
        let cache = fx.open(mode);
        let key = fx.save(&cache, WAT);
        let path = cache.path_of(&key);
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - TRAILER_LEN + 40; // inside the key digest
        bytes[at] ^= 0x80;
        overwrite(&path, &bytes);
        assert_rejected_then_recovers(&fx, &cache, &key, WAT, 42);
    }
}

#[test]
fn flipped_byte_in_code_is_a_miss_when_verified() {
    for mode in &modes()[1..] {
        let fx = Fixture::new();
        let cache = fx.open(mode.clone());
        let key = fx.save(&cache, WAT);
        let path = cache.path_of(&key);
        let mut bytes = fs::read(&path).unwrap();
        // Flip a byte inside the compiled function's machine code.
        let module = Module::new(&fx.engine, WAT).unwrap();
        let text = module.text();
        let serialized = module.serialize().unwrap();
        let offset = serialized
            .windows(text.len())
            .position(|w| w == text)
            .expect("text section in the artifact");
        bytes[offset] ^= 0xFF;
        overwrite(&path, &bytes);
        assert_rejected_then_recovers(&fx, &cache, &key, WAT, 42);
        // Authenticated checks the artifact's keyed BLAKE3 tag in place of its sha256.
        let why = cache.last_rejection().unwrap();
        let want = match mode {
            Verification::Authenticated { .. } => "authentication tag",
            _ => "sha256",
        };
        assert!(why.contains(want), "{mode:?}: {why}");
    }
}

#[test]
fn authenticated_loads_map_files_only_their_owner_can_write_and_copy_the_others() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    let cache = fx.open(Verification::Authenticated {
        key: b"a secret kept elsewhere".to_vec(),
    });
    let key = fx.save(&cache, WAT);
    let path = cache.path_of(&key);
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "saved files are read-only: {mode:o}");
    let module = cache.load(&key).unwrap().expect("hit");
    assert_eq!(answer(&fx.engine, &module), 42);
    assert_eq!(cache.loads_in_place(), 1);

    // A file others may write could change after its check: it is read into memory and
    // checked there instead, with the same result.
    for mode in [0o666, 0o646, 0o464] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let module = cache.load(&key).unwrap().expect("hit");
        assert_eq!(answer(&fx.engine, &module), 42);
        assert_eq!(cache.loads_in_place(), 1, "{mode:o}");
    }
    // ... and a forged artifact is refused on that path too.
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    overwrite(&path, &bytes);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    assert_rejected_then_recovers(&fx, &cache, &key, WAT, 42);
    assert!(
        cache
            .last_rejection()
            .unwrap()
            .contains("authentication tag"),
        "{:?}",
        cache.last_rejection()
    );
    // The recompiled file is the owner's own again: mapped in place.
    assert_eq!(cache.loads_in_place(), 2);
}

#[test]
fn truncated_file_is_a_miss_in_every_mode() {
    for mode in modes() {
        for cut in [1usize, TRAILER_LEN, 1000] {
            let fx = Fixture::new();
            let cache = fx.open(mode.clone());
            let key = fx.save(&cache, WAT);
            let path = cache.path_of(&key);
            let bytes = fs::read(&path).unwrap();
            overwrite(&path, &bytes[..bytes.len().saturating_sub(cut)]);
            assert_rejected_then_recovers(&fx, &cache, &key, WAT, 42);
        }
        // Empty file.
        let fx = Fixture::new();
        let cache = fx.open(mode.clone());
        let key = fx.save(&cache, WAT);
        overwrite(&cache.path_of(&key), b"");
        assert_rejected_then_recovers(&fx, &cache, &key, WAT, 42);
    }
}

#[test]
fn swapped_files_are_misses_in_every_mode() {
    for mode in modes() {
        let fx = Fixture::new();
        let cache = fx.open(mode);
        let (wat1, wat2) = (wat_n(1), wat_n(2));
        let k1 = fx.save(&cache, &wat1);
        let k2 = fx.save(&cache, &wat2);
        let (p1, p2) = (cache.path_of(&k1), cache.path_of(&k2));
        let tmp = p1.with_extension("swap");
        fs::rename(&p1, &tmp).unwrap();
        fs::rename(&p2, &p1).unwrap();
        fs::rename(&tmp, &p2).unwrap();
        assert_rejected_then_recovers(&fx, &cache, &k1, &wat1, 1);
        assert!(cache.last_rejection().unwrap().contains("key digest"));
        assert_rejected_then_recovers(&fx, &cache, &k2, &wat2, 2);
    }
}

#[test]
fn wrong_hmac_key_and_unauthenticated_files_are_misses() {
    let fx = Fixture::new();
    let writer = fx.open(Verification::Authenticated {
        key: b"key one".to_vec(),
    });
    let key = fx.save(&writer, WAT);
    let reader = fx.open(Verification::Authenticated {
        key: b"key two".to_vec(),
    });
    assert_rejected_then_recovers(&fx, &reader, &key, WAT, 42);
    assert!(
        reader
            .last_rejection()
            .unwrap()
            .contains("authentication tag")
    );

    // A file written without a key (by a Verified cache, or by an attacker who recomputed the
    // sha256) is refused by an authenticated reader.
    let plain = fx.open(Verification::Verified);
    fx.save(&plain, WAT);
    assert_rejected_then_recovers(&fx, &reader, &key, WAT, 42);
    // An authenticated file is still a valid Verified entry.
    assert!(plain.load(&key).unwrap().is_some());
}

#[test]
fn empty_hmac_key_is_a_config_error() {
    let fx = Fixture::new();
    let err = FsCache::open(
        fx.dir.path(),
        &fx.engine,
        FsCacheConfig {
            mode: Verification::Authenticated { key: Vec::new() },
            ..FsCacheConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, CacheError::Config(_)), "{err}");
    let debug = format!(
        "{:?}",
        Verification::Authenticated {
            key: b"secret".to_vec()
        }
    );
    assert!(!debug.contains("secret"));
}

#[test]
fn other_engine_config_never_sees_the_file() {
    let fx = Fixture::new();
    let cache = fx.open(Verification::Verified);
    let key = fx.save(&cache, WAT);

    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let other_engine = Engine::new(&config).unwrap();
    let other = FsCache::open(fx.dir.path(), &other_engine, FsCacheConfig::default()).unwrap();
    assert_ne!(other.engine_dir(), cache.engine_dir());
    let other_key = CacheKey::new(&other_engine, WAT.as_bytes());
    assert!(other.load(&other_key).unwrap().is_none());
    assert_eq!(other.stats()[0].rejected, 0);
    // A key of the wrong engine is an error, not a silent miss.
    let err = other.load(&key).unwrap_err();
    assert!(
        matches!(err, CacheError::Incompatible { engine } if engine == key.engine()),
        "{err}"
    );
    let module = Module::new(&fx.engine, WAT).unwrap();
    assert!(matches!(
        other.save(&other_key, &module),
        Err(CacheError::EngineMismatch { .. })
    ));

    // A file of the first engine planted in the second engine's folder is rejected in every
    // mode (for Trusted too: the trailer names the engine).
    for mode in modes() {
        let other = FsCache::open(
            fx.dir.path(),
            &other_engine,
            FsCacheConfig {
                mode,
                max_bytes: None,
                fsync: false,
                ..FsCacheConfig::default()
            },
        )
        .unwrap();
        fs::copy(cache.path_of(&key), other.path_of(&other_key)).unwrap();
        assert!(other.load(&other_key).unwrap().is_none());
        assert_eq!(other.stats()[0].rejected, 1);
        assert!(other.last_rejection().unwrap().contains("another engine"));
        assert!(!other.path_of(&other_key).exists());
    }
    assert!(
        cache.path_of(&key).exists(),
        "the first engine's file is untouched"
    );
}

#[test]
fn garbage_symlinks_and_folders_are_misses() {
    for mode in modes() {
        let fx = Fixture::new();
        let cache = fx.open(mode);
        let key = CacheKey::new(&fx.engine, WAT.as_bytes());
        let path = cache.path_of(&key);
        fs::write(&path, vec![0x7F; 5000]).unwrap();
        assert_rejected_then_recovers(&fx, &cache, &key, WAT, 42);

        fs::remove_file(&path).unwrap();
        let target = fx.dir.path().join("elsewhere");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(cache.load(&key).unwrap().is_none());
        assert!(fs::symlink_metadata(&path).is_err(), "symlink removed");
        assert!(target.exists(), "its target is not");

        fs::create_dir(&path).unwrap();
        assert!(cache.load(&key).unwrap().is_none());
        fs::remove_dir(&path).unwrap();

        // A huge (sparse) file is refused without being read into memory.
        File::create(&path).unwrap().set_len(5 << 30).unwrap();
        assert!(cache.load(&key).unwrap().is_none());
        assert!(!path.exists());
        assert_eq!(cache.stats()[0].rejected, 4);
    }
}

#[test]
fn byte_limit_evicts_least_recently_used_files() {
    let fx = Fixture::new();
    let probe = fx.open(Verification::Verified);
    let k0 = fx.save(&probe, &wat_n(0));
    let size = fs::metadata(probe.path_of(&k0)).unwrap().len();
    probe.remove(&k0).unwrap();

    let max = size * 3 + size / 2;
    let cache = fx.open_with(FsCacheConfig {
        mode: Verification::Verified,
        max_bytes: Some(max),
        fsync: false,
        ..FsCacheConfig::default()
    });
    let keys: Vec<_> = (0..3).map(|i| fx.save(&cache, &wat_n(i))).collect();
    assert_eq!(cache.stats()[0].evictions, 0);
    // Use key 0 so that key 1 becomes the least recently used. mtime granularity is fine
    // but make sure the clock moves.
    std::thread::sleep(Duration::from_millis(20));
    assert!(cache.load(&keys[0]).unwrap().is_some());
    let k3 = fx.save(&cache, &wat_n(3));
    let s = &cache.stats()[0];
    assert_eq!((s.evictions, s.entries), (1, 3));
    assert!(s.bytes <= max);
    assert!(!cache.path_of(&keys[1]).exists(), "the LRU file went");
    assert!(cache.path_of(&keys[0]).exists());
    assert!(cache.path_of(&k3).exists());
    let on_disk: u64 = fs::read_dir(cache.engine_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= max);

    // The limit also holds against files another process wrote (found by the rescan).
    let other = fx.open(Verification::Verified);
    for i in 10..14 {
        fx.save(&other, &wat_n(i));
    }
    fx.save(&cache, &wat_n(20));
    let on_disk: u64 = fs::read_dir(cache.engine_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= max, "{on_disk} > {max}");

    // A module bigger than the whole limit is not written.
    let tiny = fx.open_with(FsCacheConfig {
        mode: Verification::Verified,
        max_bytes: Some(100),
        fsync: false,
        ..FsCacheConfig::default()
    });
    let key = fx.save(&tiny, WAT);
    assert!(!tiny.path_of(&key).exists());
    assert_eq!(tiny.stats()[0].rejected, 1);
}

#[test]
fn byte_limit_counts_files_of_other_processes() {
    let fx = Fixture::new();
    let probe = fx.open(Verification::Verified);
    let k0 = fx.save(&probe, &wat_n(0));
    let size = fs::metadata(probe.path_of(&k0)).unwrap().len();
    let max = size * 3 + size / 2;
    let limited = fx.open_with(FsCacheConfig {
        mode: Verification::Verified,
        max_bytes: Some(max),
        fsync: false,
        ..FsCacheConfig::default()
    });
    // Another process (no limit of its own) fills the folder behind our back.
    for i in 1..6 {
        fx.save(&probe, &wat_n(i));
    }
    // Our own view is small, but the save still brings the folder under the limit.
    fx.save(&limited, &wat_n(9));
    let on_disk: u64 = fs::read_dir(limited.engine_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= max, "{on_disk} > {max}");
    assert_eq!(limited.stats()[0].evictions, 4);
    assert!(
        limited
            .path_of(&CacheKey::new(&fx.engine, wat_n(9).as_bytes()))
            .exists()
    );
}

#[test]
fn open_scans_existing_entries_and_cleans_stale_temps() {
    let fx = Fixture::new();
    let cache = fx.open(Verification::Verified);
    fx.save(&cache, &wat_n(1));
    fx.save(&cache, &wat_n(2));
    let stale = cache.engine_dir().join(".tmp-1-2-3");
    fs::write(&stale, b"half written").unwrap();
    File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    // pid 1 is alive: its fresh temp file may still be renamed into place.
    let fresh = cache.engine_dir().join(".tmp-1-2-4");
    fs::write(&fresh, b"being written right now").unwrap();
    // A writer that has exited (killed mid-save) never renames its temp file: it goes at once.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = child.id();
    child.wait().unwrap();
    let orphan = cache.engine_dir().join(format!(".tmp-{gone_pid}-7-8"));
    fs::write(&orphan, b"half written by a killed writer").unwrap();
    // Names that carry no pid are left to the age rule.
    let odd = cache.engine_dir().join(".tmp--5-2");
    fs::write(&odd, b"?").unwrap();

    let reopened = fx.open(Verification::Verified);
    let s = &reopened.stats()[0];
    assert_eq!(s.entries, 2);
    assert_eq!(s.bytes, cache.stats()[0].bytes);
    assert!(!stale.exists());
    assert!(fresh.exists(), "another writer's temp file is left alone");
    assert!(
        !orphan.exists(),
        "the temp file of an exited writer is removed"
    );
    assert!(odd.exists());
}

#[test]
fn prune_removes_only_foreign_cache_folders() {
    let fx = Fixture::new();
    let cache = fx.open(Verification::Verified);
    let key = fx.save(&cache, WAT);
    let old_version = fx.dir.path().join(format!("v0-{}", "ab".repeat(32)));
    let other_engine = fx.dir.path().join(format!("v1-{}", "cd".repeat(32)));
    let unrelated = fx.dir.path().join("not-a-cache-folder");
    for d in [&old_version, &other_engine, &unrelated] {
        fs::create_dir(d).unwrap();
        fs::write(d.join("x.cwasm"), b"12345").unwrap();
    }
    let report = cache.prune().unwrap();
    let mut removed = report.removed_folders.clone();
    removed.sort();
    let mut want = vec![old_version.clone(), other_engine.clone()];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!((report.removed_files, report.removed_bytes), (2, 10));
    assert!(unrelated.exists());
    assert!(cache.load(&key).unwrap().is_some());
}

/// A build that uses two engines (two memory models or two tiers) opens one cache for both.
fn two_engine_cache(fx: &Fixture, max_bytes: Option<u64>) -> (FsCache, Engine) {
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let second = Engine::new(&config).unwrap();
    let cache = FsCache::open_engines(
        fx.dir.path(),
        &[fx.engine.clone(), second.clone()],
        FsCacheConfig {
            max_bytes,
            fsync: false,
            ..FsCacheConfig::default()
        },
        Arc::new(RealFs),
    )
    .unwrap();
    (cache, second)
}

#[test]
fn one_cache_serves_every_engine_of_the_build_and_prune_keeps_them_all() {
    let fx = Fixture::new();
    let (cache, second) = two_engine_cache(&fx, None);
    assert_eq!(cache.fingerprints().len(), 2);
    let first_key = fx.save(&cache, WAT);
    let second_key = CacheKey::new(&second, WAT.as_bytes());
    cache
        .save(&second_key, &Module::new(&second, WAT).unwrap())
        .unwrap();
    assert_ne!(
        cache.path_of(&first_key).parent(),
        cache.path_of(&second_key).parent()
    );
    // A third engine's folder (another build) goes; both of ours stay.
    let foreign = fx
        .dir
        .path()
        .join(format!("v{FORMAT_VERSION}-{}", "cd".repeat(32)));
    fs::create_dir(&foreign).unwrap();
    let report = cache.prune().unwrap();
    assert_eq!(report.removed_folders, vec![foreign]);
    let reopened = two_engine_cache(&fx, None).0;
    assert!(reopened.load(&first_key).unwrap().is_some());
    assert!(reopened.load(&second_key).unwrap().is_some());
    assert_eq!(reopened.stats()[0].entries, 2);
    assert_eq!(reopened.verify_all().unwrap().valid, 2);
    // A cache of the first engine alone prunes the second engine's folder.
    let alone = fx.open(Verification::Verified);
    let report = alone.prune().unwrap();
    assert_eq!(report.removed_folders.len(), 1);
    assert!(!cache.path_of(&second_key).exists());
    assert!(alone.load(&first_key).unwrap().is_some());
}

#[test]
fn the_byte_limit_covers_the_folders_of_all_engines() {
    let fx = Fixture::new();
    let (probe, second) = two_engine_cache(&fx, None);
    let first_key = fx.save(&probe, &wat_n(1));
    let one = fs::metadata(probe.path_of(&first_key)).unwrap().len();
    drop(probe);
    // Room for about two files: the second engine's save evicts the first engine's file.
    let (cache, _) = two_engine_cache(&fx, Some(one * 2 + one / 2));
    let second_key = CacheKey::new(&second, wat_n(2).as_bytes());
    cache
        .save(&second_key, &Module::new(&second, wat_n(2)).unwrap())
        .unwrap();
    let third_key = CacheKey::new(&second, wat_n(3).as_bytes());
    cache
        .save(&third_key, &Module::new(&second, wat_n(3)).unwrap())
        .unwrap();
    assert!(
        !cache.path_of(&first_key).exists(),
        "the oldest file, of the other engine"
    );
    assert!(cache.path_of(&third_key).exists());
    let s = &cache.stats()[0];
    assert!(s.evictions >= 1 && s.bytes <= one * 2 + one / 2, "{s:?}");
}

/// A file larger than `max_artifact_bytes` is rejected from its size alone: a planted sparse
/// file of 1 GiB (with a valid-looking trailer position) is never read or allocated.
#[test]
fn a_file_over_the_artifact_limit_is_rejected_before_it_is_read() {
    let fx = Fixture::new();
    let key = CacheKey::new(&fx.engine, WAT.as_bytes());
    for mode in modes() {
        let config = FsCacheConfig {
            mode: mode.clone(),
            max_artifact_bytes: 1 << 20,
            fsync: false,
            ..FsCacheConfig::default()
        };
        let (fault, cache) = open_faulty(fx.dir.path(), &fx.engine, config.clone());
        // A sparse 1 GiB file: the size of a huge artifact, no blocks on disk.
        let path = cache.path_of(&key);
        let file = fs::File::create(&path).unwrap();
        file.set_len(1 << 30).unwrap();
        drop(file);
        fault.take_log();
        assert!(cache.load(&key).unwrap().is_none(), "{mode:?}");
        let ops = fault.take_ops();
        assert!(
            !ops.contains(&Op::Read) && !ops.contains(&Op::ReadAt),
            "{mode:?} read the file: {ops:?}"
        );
        assert_eq!(cache.stats()[0].rejected, 1, "{mode:?}");
        let why = cache.last_rejection().unwrap();
        assert!(why.contains("over the limit of 1048576 bytes"), "{why}");
        assert!(!path.exists(), "{mode:?}: the planted file is removed");
        let report = cache.verify_all().unwrap();
        assert_eq!(report.bad.len(), 0);

        // A module larger than the limit is not saved.
        let tiny = FsCacheConfig {
            max_artifact_bytes: 100,
            ..config
        };
        let tiny = FsCache::open(fx.dir.path(), &fx.engine, tiny).unwrap();
        fx.save(&tiny, WAT);
        assert!(!tiny.path_of(&key).exists());
        assert_eq!(tiny.stats()[0].rejected, 1);
    }
}

#[test]
fn verify_all_reports_bad_files_without_touching_them() {
    let fx = Fixture::new();
    let cache = fx.open(trusted());
    let good = fx.save(&cache, &wat_n(1));
    let bad = fx.save(&cache, &wat_n(2));
    let path = cache.path_of(&bad);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    overwrite(&path, &bytes);
    fs::write(cache.engine_dir().join("nonsense.cwasm"), b"x").unwrap();

    let report = cache.verify_all().unwrap();
    assert_eq!((report.checked, report.valid), (3, 1));
    assert_eq!(
        report.valid_bytes,
        fs::metadata(cache.path_of(&good)).unwrap().len()
    );
    let reasons: Vec<_> = report.bad.iter().map(|b| b.reason.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("sha256")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("file name")),
        "{reasons:?}"
    );
    assert!(path.exists());
}

#[test]
fn concurrent_threads_share_one_folder() {
    let fx = Fixture::new();
    let cache = fx.open(Verification::Verified);
    let wats: Vec<_> = (0..4).map(wat_n).collect();
    let modules: Vec<_> = wats
        .iter()
        .map(|w| {
            (
                CacheKey::new(&fx.engine, w.as_bytes()),
                Module::new(&fx.engine, w).unwrap(),
            )
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (cache, modules, engine) = (&cache, &modules, &fx.engine);
            s.spawn(move || {
                for i in 0..20 {
                    let (key, module) = &modules[(t + i) % modules.len()];
                    cache.save(key, module).unwrap();
                    let loaded = cache.load(key).unwrap().expect("a saved key loads");
                    assert_eq!(answer(engine, &loaded), ((t + i) % 4) as i32);
                }
            });
        }
    });
    let s = &cache.stats()[0];
    assert_eq!((s.entries, s.rejected, s.hits), (4, 0, 80));
    assert_eq!(
        fs::read_dir(cache.engine_dir()).unwrap().count(),
        4,
        "no temp files left"
    );
}

// Fault injection: every file-system operation of a save and of a load fails in turn.

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn faults() -> [(FaultMode, i32); 4] {
    [
        (FaultMode::Once, ENOSPC),
        (FaultMode::Once, EIO),
        (FaultMode::FromThenOn, ENOSPC),
        (FaultMode::FromThenOn, EIO),
    ]
}

fn configs(mode: Verification) -> [FsCacheConfig; 2] {
    [
        FsCacheConfig {
            mode: mode.clone(),
            max_bytes: None,
            fsync: true,
            ..FsCacheConfig::default()
        },
        FsCacheConfig {
            mode,
            max_bytes: Some(1 << 30),
            fsync: true,
            ..FsCacheConfig::default()
        },
    ]
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

fn open_faulty(dir: &Path, engine: &Engine, config: FsCacheConfig) -> (Arc<FaultFs>, FsCache) {
    let fault = Arc::new(FaultFs::real());
    let cache = FsCache::open_with_fs(dir, engine, config, fault.clone()).unwrap();
    fault.take_log();
    (fault, cache)
}

/// Runs `f` against a fresh cache and returns the operations it logged.
fn ops_of(config: FsCacheConfig, f: impl Fn(&FsCache, &Fixture, &CacheKey)) -> Vec<Op> {
    let fx = Fixture::new();
    let key = CacheKey::new(&fx.engine, WAT.as_bytes());
    let (fault, cache) = open_faulty(fx.dir.path(), &fx.engine, config);
    f(&cache, &fx, &key);
    fault.take_ops()
}

#[test]
fn operations_of_a_save_and_of_a_load() {
    use Op::*;
    let module = Module::new(&Engine::default(), WAT).unwrap();
    let file_len = (module.serialize().unwrap().len() + TRAILER_LEN) as u64;
    let [unlimited, limited] = configs(Verification::Verified);
    let save = |cache: &FsCache, fx: &Fixture, key: &CacheKey| {
        cache
            .save(key, &Module::new(&fx.engine, WAT).unwrap())
            .unwrap();
    };
    let durable = [CreateNew, Write, Write, SyncData, Rename, SyncDir];
    assert_eq!(ops_of(unlimited.clone(), save), durable);
    // With a byte limit the folder is rescanned after the save (one entry here).
    assert_eq!(
        ops_of(limited.clone(), save),
        [&durable[..], &[ReadDir, Metadata]].concat()
    );
    let no_fsync = FsCacheConfig {
        fsync: false,
        ..unlimited.clone()
    };
    assert_eq!(ops_of(no_fsync, save), [CreateNew, Write, Write, Rename]);

    // A load: Verified reads the trailer, then the artifact in READ_CHUNK pieces (4 KiB in
    // unit tests, 1 MiB otherwise); Trusted reads the trailer and maps; Authenticated (of a
    // file only its owner can write) reads the trailer, then maps the file to hash it and
    // hands that same mapping descriptor to wasmtime. A limit adds the mtime bump of a hit.
    for (config, hit_tail) in [(unlimited, vec![]), (limited, vec![SetMtime])] {
        let fx = Fixture::new();
        let key = CacheKey::new(&fx.engine, WAT.as_bytes());
        let authenticated = Verification::Authenticated {
            key: b"a secret kept elsewhere".to_vec(),
        };
        for mode in [Verification::Verified, trusted(), authenticated] {
            let config = FsCacheConfig {
                mode: mode.clone(),
                ..config.clone()
            };
            let (fault, cache) = open_faulty(fx.dir.path(), &fx.engine, config.clone());
            save(&cache, &fx, &key);
            fault.take_log();
            assert!(cache.load(&key).unwrap().is_some());
            let log = fault.take_ops();
            let artifact_len = file_len - TRAILER_LEN as u64;
            if matches!(mode, Verification::Trusted(_)) {
                let want = [
                    &[OpenRead, FileMetadata, ReadAt, OpenForMapping][..],
                    &hit_tail,
                ]
                .concat();
                assert_eq!(log, want);
            } else if matches!(mode, Verification::Authenticated { .. }) {
                // In place: the trailer, then one mapping to hash and to hand to wasmtime.
                let want = [
                    &[OpenRead, FileMetadata, ReadAt, OpenForMapping][..],
                    &hit_tail,
                ]
                .concat();
                assert_eq!(log, want);
            } else {
                let reads = artifact_len.div_ceil(READ_CHUNK as u64) as usize;
                let head = [OpenRead, FileMetadata, ReadAt];
                let want = [&head[..], &vec![Read; reads], &hit_tail].concat();
                assert_eq!(log, want, "{file_len} bytes");
            }
        }
    }
}

#[test]
fn a_fault_at_any_operation_of_a_save_leaves_no_partial_file_and_no_temp_file() {
    let engine = Engine::default();
    let module = Module::new(&engine, WAT).unwrap();
    let key = CacheKey::new(&engine, WAT.as_bytes());
    let mut injected = 0;
    for config in configs(Verification::Verified) {
        let ops = ops_of(config.clone(), |cache, _, key| {
            cache.save(key, &module).unwrap();
        })
        .len() as u64;
        for k in 0..ops {
            for (mode, errno) in faults() {
                let dir = tempfile::tempdir().unwrap();
                let (fault, cache) = open_faulty(dir.path(), &engine, config.clone());
                let base = fault.ops();
                fault.fail_at(base + k, mode, errno);
                let result = cache.save(&key, &module);
                assert!(fault.ops() > base + k, "op {k} was reached");
                injected += 1;
                let what = format!(
                    "op {k} ({:?}) {mode:?} errno {errno}",
                    fault.take_ops()[k as usize]
                );
                // The six operations of the write itself fail the save; later ones (the
                // rescan of the byte limit) are absorbed.
                match &result {
                    Err(CacheError::Io { source, .. }) => {
                        assert_eq!(source.raw_os_error(), Some(errno), "{what}")
                    }
                    Err(e) => panic!("{what}: {e}"),
                    Ok(()) => {
                        assert!(k >= 6, "{what}: the save succeeded");
                        assert_eq!(cache.stats()[0].inserts, 1);
                    }
                }
                // A healthy reader sees a miss or a valid module, never a partial file.
                let reader = FsCache::open(dir.path(), &engine, FsCacheConfig::default()).unwrap();
                match reader.load(&key).unwrap() {
                    Some(m) => assert_eq!(answer(&engine, &m), 42, "{what}"),
                    None => assert!(!cache.path_of(&key).exists(), "{what}"),
                }
                assert_eq!(reader.stats()[0].rejected, 0, "{what}");
                // Once healed: the next save works and no temp file is left.
                fault.heal();
                cache.save(&key, &module).unwrap();
                assert_eq!(
                    temp_files(cache.engine_dir()),
                    Vec::<String>::new(),
                    "{what}"
                );
                let m = cache.load(&key).unwrap().expect("a hit once healed");
                assert_eq!(answer(&engine, &m), 42);
                assert_eq!(cache.verify_all().unwrap().bad, vec![]);
            }
        }
    }
    assert_eq!(injected, (6 + 8) * 4);
}

#[test]
fn a_fault_at_any_operation_of_a_load_is_an_error_or_a_hit_never_a_rejection() {
    let engine = Engine::default();
    let module = Module::new(&engine, WAT).unwrap();
    let key = CacheKey::new(&engine, WAT.as_bytes());
    for mode in modes() {
        for config in configs(mode.clone()) {
            let dir = tempfile::tempdir().unwrap();
            let (fault, cache) = open_faulty(dir.path(), &engine, config.clone());
            cache.save(&key, &module).unwrap();
            let base = fault.ops();
            cache.load(&key).unwrap().unwrap();
            let ops = fault.ops() - base;
            for k in 0..ops {
                for (fault_mode, errno) in faults() {
                    let base = fault.ops();
                    fault.fail_at(base + k, fault_mode, errno);
                    let result = cache.load(&key);
                    assert!(fault.ops() > base + k);
                    let what = format!("{mode:?} {config:?} op {k} {fault_mode:?} errno {errno}");
                    match result {
                        Ok(Some(m)) => assert_eq!(answer(&engine, &m), 42, "{what}"),
                        Ok(None) => panic!("{what}: a miss for a valid file"),
                        Err(CacheError::Io { source, .. }) => {
                            assert_eq!(source.raw_os_error(), Some(errno), "{what}")
                        }
                        Err(e) => panic!("{what}: {e}"),
                    }
                    fault.heal();
                    // An I/O error is not evidence against the file: it stays.
                    assert_eq!(cache.stats()[0].rejected, 0, "{what}");
                    let m = cache.load(&key).unwrap().expect("a hit once healed");
                    assert_eq!(answer(&engine, &m), 42, "{what}");
                }
            }
        }
    }
}

#[test]
fn temp_files_a_failing_disk_left_are_removed_once_healed() {
    let engine = Engine::default();
    let module = Module::new(&engine, WAT).unwrap();
    let key = CacheKey::new(&engine, WAT.as_bytes());
    for removed_by in ["next save", "drop", "prune"] {
        let dir = tempfile::tempdir().unwrap();
        let config = FsCacheConfig::default();
        let (fault, cache) = open_faulty(dir.path(), &engine, config);
        // Fail the rename and everything after it: the temp file cannot be removed.
        fault.fail_at(fault.ops() + 4, FaultMode::FromThenOn, EIO);
        assert!(cache.save(&key, &module).is_err());
        let engine_dir = cache.engine_dir().to_path_buf();
        assert_eq!(
            temp_files(&engine_dir).len(),
            1,
            "the disk refused the unlink"
        );
        assert!(!cache.path_of(&key).exists());
        fault.heal();
        match removed_by {
            "next save" => cache.save(&key, &module).unwrap(),
            "drop" => drop(cache),
            _ => {
                cache.prune().unwrap();
            }
        }
        assert_eq!(
            temp_files(&engine_dir),
            Vec::<String>::new(),
            "{removed_by}"
        );
    }
}

/// One run of the power-loss scenario: save A, load A, save B (the byte limit evicts A); the
/// power goes at operation `cut` (counted from after the open). Returns the operations the
/// scenario took and, per key, whether its save returned `Ok`.
fn power_scenario(
    dir: &Path,
    engine: &Engine,
    config: &FsCacheConfig,
    cut: u64,
    modules: &[(CacheKey, Module); 2],
) -> (Arc<PowerLossFs>, u64, [bool; 2]) {
    let fs = Arc::new(PowerLossFs::real(dir));
    let cache = FsCache::open_with_fs(dir, engine, config.clone(), fs.clone()).unwrap();
    let base = fs.ops();
    fs.cut_at(base.saturating_add(cut));
    let [(a, module_a), (b, module_b)] = modules;
    let saved_a = cache.save(a, module_a).is_ok();
    // Once the power is gone the load fails with EIO, and never finds a bad file.
    match cache.load(a) {
        Ok(Some(m)) => assert_eq!(answer(engine, &m), 1),
        Ok(None) => assert!(!saved_a),
        Err(CacheError::Io { .. }) => {}
        Err(e) => panic!("cut at {cut}: {e}"),
    }
    assert_eq!(cache.stats()[0].rejected, 0);
    let saved_b = cache.save(b, module_b).is_ok();
    let ops = fs.ops() - base;
    drop(cache);
    (fs, ops, [saved_a, saved_b])
}

#[test]
fn power_loss_at_every_operation_leaves_misses_or_the_saved_modules() {
    let engine = Engine::default();
    let modules = [1, 2].map(|n| {
        let wat = wat_n(n);
        (
            CacheKey::new(&engine, wat.as_bytes()),
            Module::new(&engine, &wat).unwrap(),
        )
    });
    let file_len = (modules[0].1.serialize().unwrap().len() + TRAILER_LEN) as u64;
    let (mut cuts, mut rejected) = (0, 0);
    for mode in [trusted(), Verification::Verified] {
        for fsync in [true, false] {
            let config = FsCacheConfig {
                mode: mode.clone(),
                // Room for one file: saving B evicts A.
                max_bytes: Some(file_len * 3 / 2),
                fsync,
                ..FsCacheConfig::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let (_, ops, saved) = power_scenario(dir.path(), &engine, &config, u64::MAX, &modules);
            assert_eq!(saved, [true, true]);
            assert!(ops >= 10, "the scenario took only {ops} operations");
            for cut in 0..=ops {
                for loss in [Loss::Unsynced, Loss::TornData] {
                    let what = format!("{mode:?} fsync {fsync} cut at {cut} of {ops} {loss:?}");
                    let dir = tempfile::tempdir().unwrap();
                    let (fs, _, saved) =
                        power_scenario(dir.path(), &engine, &config, cut, &modules);
                    fs.power_cut(loss).unwrap();
                    cuts += 1;
                    let cache = FsCache::open(dir.path(), &engine, config.clone()).unwrap();
                    for (i, (key, _)) in modules.iter().enumerate() {
                        match cache.load(key) {
                            Ok(Some(m)) => assert_eq!(answer(&engine, &m), i as i32 + 1, "{what}"),
                            Ok(None) => {
                                // With fsync, a save that returned is durable (A may be evicted).
                                assert!(!(fsync && i == 1 && saved[1]), "{what}: B was lost");
                            }
                            Err(e) => panic!("{what}: {e}"),
                        }
                    }
                    rejected += cache.stats()[0].rejected;
                    // The cache works on: both saves succeed, and what is left verifies.
                    for (key, module) in &modules {
                        cache.save(key, module).unwrap();
                    }
                    let m = cache.load(&modules[1].0).unwrap().expect("a hit");
                    assert_eq!(answer(&engine, &m), 2, "{what}");
                    assert_eq!(cache.verify_all().unwrap().bad, vec![], "{what}");
                }
            }
        }
    }
    // Torn files without fsync were met, and refused.
    assert!(rejected > 0, "no cut left a torn file ({cuts} cuts)");
    eprintln!("{cuts} power cuts, {rejected} torn files refused");
}

#[test]
fn open_without_creating_creates_nothing_until_a_save() {
    let fx = Fixture::new();
    let dir = fx.dir.path().join("cache");
    let config = FsCacheConfig {
        fsync: true,
        ..FsCacheConfig::default()
    };
    let cache = FsCache::open_without_creating(
        &dir,
        std::slice::from_ref(&fx.engine),
        config.clone(),
        Arc::new(RealFs),
    )
    .unwrap();
    // A missing folder is an empty cache: loads miss, verify and prune find nothing.
    let key = CacheKey::new(&fx.engine, WAT.as_bytes());
    assert!(cache.load(&key).unwrap().is_none());
    assert_eq!(cache.verify_all().unwrap().checked, 0);
    assert!(cache.prune().unwrap().removed_folders.is_empty());
    assert_eq!(cache.stats()[0].entries, 0);
    assert!(
        !dir.exists(),
        "open, load, verify or prune created the cache directory"
    );
    // The first save creates the folder it writes to; the next load hits.
    fx.save(&cache, WAT);
    assert!(cache.engine_dir().is_dir());
    assert_eq!(answer(&fx.engine, &cache.load(&key).unwrap().unwrap()), 42);
    // `open_engines` still creates its folders at open.
    let other = fx.dir.path().join("eager");
    FsCache::open_engines(
        &other,
        std::slice::from_ref(&fx.engine),
        config,
        Arc::new(RealFs),
    )
    .unwrap();
    assert!(other.is_dir());
}

#[test]
fn config_and_wasmtime_errors_are_typed_with_sources_on_one_line() {
    let fx = Fixture::new();
    let err = FsCache::open_engines(
        fx.dir.path(),
        &[],
        FsCacheConfig::default(),
        Arc::new(RealFs),
    )
    .unwrap_err();
    assert!(
        matches!(err, CacheError::Config(ConfigError::NoEngine)),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
    // wasmtime's error (any of them; here a refused compile) is kept as the rejection's source.
    let refused = Module::new(&fx.engine, b"not wasm").unwrap_err();
    let reject = format::Reject::Wasmtime(format::Refusal::new(refused));
    let message = reject.to_string();
    assert!(
        message.starts_with("wasmtime refused the artifact: "),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
    assert!(std::error::Error::source(&reject).is_some());
}
