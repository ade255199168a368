//! Cross-crate tests of the layered module cache: promotion through pinned -> LRU -> FS, pins
//! under LRU pressure, every kind of bad file seen through the whole chain, two processes
//! writing one key, the FS byte limit under a chain, and a file-system fault at every
//! operation of a save and of a load.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use cache_core::{CacheKey, LayerStats, ModuleCache, ModuleCacheExt, module_size};
use cache_fs::{FsCache, FsCacheConfig, TRAILER_LEN, Verification};
use cache_lru::LruCache;
use cache_pinned::PinnedCache;
use strata_fs::{FaultFs, FaultMode};
use wasmtime::{Engine, Instance, Module, OptLevel, Store};

/// A module with an `answer` export returning `n`, and `funcs` extra functions to make it
/// bigger.
fn wat(n: i32, funcs: u32) -> String {
    let mut s = format!(r#"(module (func (export "answer") (result i32) i32.const {n})"#);
    for i in 0..funcs {
        s.push_str(&format!(
            "(func (export \"f{i}\") (param i32) (result i32) local.get 0 i32.const {i} i32.add)"
        ));
    }
    s.push(')');
    s
}

fn answer(engine: &Engine, module: &Module) -> Result<i32> {
    let mut store = Store::new(engine, ());
    let instance = Instance::new(&mut store, module, &[])?;
    let f = instance.get_typed_func::<(), i32>(&mut store, "answer")?;
    Ok(f.call(&mut store, ())?)
}

/// What a host does: load through the cache, else compile and save through it.
fn get_or_compile(cache: &dyn ModuleCache, engine: &Engine, source: &str) -> Result<Module> {
    let key = CacheKey::new(engine, source.as_bytes());
    if let Some(module) = cache.load(&key)? {
        return Ok(module);
    }
    let module = Module::new(engine, source)?;
    cache.save(&key, &module)?;
    Ok(module)
}

fn layer<'a>(stats: &'a [LayerStats], name: &str) -> &'a LayerStats {
    stats
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no layer {name} in {stats:?}"))
}

struct Layers {
    pinned: Arc<PinnedCache>,
    lru: Arc<LruCache>,
    fs: Arc<FsCache>,
}

impl Layers {
    fn open(dir: &Path, engine: &Engine, lru_bytes: u64, mode: Verification) -> Result<Self> {
        let config = FsCacheConfig {
            mode,
            max_bytes: None,
            fsync: false,
            ..FsCacheConfig::default()
        };
        Ok(Layers {
            pinned: Arc::new(PinnedCache::new()),
            lru: Arc::new(LruCache::new(lru_bytes)),
            fs: Arc::new(FsCache::open(dir, engine, config)?),
        })
    }

    fn chain(&self) -> impl ModuleCache + use<> {
        Arc::clone(&self.pinned)
            .with_fallback(Arc::clone(&self.lru).with_fallback(Arc::clone(&self.fs)))
    }
}

#[test]
fn three_layer_chain_promotes_an_fs_hit_into_the_lru() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::default();
    let source = wat(7, 0);
    let key = CacheKey::new(&engine, source.as_bytes());

    // First process: compile and write through every layer.
    let first = Layers::open(dir.path(), &engine, 64 << 20, Verification::Verified)?;
    let chain = first.chain();
    assert_eq!(
        answer(&engine, &get_or_compile(&chain, &engine, &source)?)?,
        7
    );
    let stats = chain.stats();
    let names: Vec<_> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pinned", "lru", "fs"]);
    assert_eq!(layer(&stats, "lru").inserts, 1);
    assert_eq!(layer(&stats, "fs").inserts, 1);
    assert_eq!(layer(&stats, "pinned").entries, 0, "a save does not pin");

    // Second process: empty memory layers over the same directory.
    let second = Layers::open(dir.path(), &engine, 64 << 20, Verification::Verified)?;
    let chain = second.chain();
    let module = chain.load(&key)?.context("fs hit")?;
    assert_eq!(answer(&engine, &module)?, 7);
    let stats = chain.stats();
    let (pinned, lru, fs) = (
        layer(&stats, "pinned"),
        layer(&stats, "lru"),
        layer(&stats, "fs"),
    );
    assert_eq!((pinned.misses, pinned.entries), (1, 0));
    assert_eq!((lru.misses, lru.inserts, lru.entries), (1, 1, 1));
    assert_eq!(lru.bytes, module_size(&module));
    assert_eq!((fs.hits, fs.misses), (1, 0));
    assert!(second.lru.load(&key)?.is_some(), "promoted into the lru");

    // Next load is served by the LRU; the FS is not asked again.
    chain.load(&key)?.context("lru hit")?;
    let stats = chain.stats();
    assert_eq!(layer(&stats, "lru").hits, 2); // one above, one here
    assert_eq!(layer(&stats, "fs").hits, 1);

    // Pinning makes the top layer answer.
    second.pinned.pin(key, module);
    chain.load(&key)?.context("pinned hit")?;
    assert_eq!(layer(&chain.stats(), "pinned").hits, 1);

    // Remove goes through every layer.
    assert!(chain.remove(&key)?);
    assert!(chain.load(&key)?.is_none());
    assert!(!second.pinned.is_pinned(&key));
    Ok(())
}

#[test]
fn a_pin_survives_lru_pressure() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::default();
    let hot = wat(1, 0);
    let hot_key = CacheKey::new(&engine, hot.as_bytes());
    let hot_module = Module::new(&engine, &hot)?;
    let size = module_size(&hot_module);

    // An LRU with room for two modules, and a stream of ten others through the chain.
    let layers = Layers::open(dir.path(), &engine, size * 2, Verification::Verified)?;
    layers.pinned.pin(hot_key, hot_module);
    let chain = layers.chain();
    for n in 100..110 {
        get_or_compile(&chain, &engine, &wat(n, 0))?;
    }
    // The FS is not the one answering: remove the hot module from it.
    layers.fs.remove(&hot_key)?;
    let stats = chain.stats();
    assert!(layer(&stats, "lru").evictions >= 8, "{stats:?}");
    assert!(layer(&stats, "lru").entries <= 2);
    let module = chain.load(&hot_key)?.context("pinned")?;
    assert_eq!(answer(&engine, &module)?, 1);
    assert_eq!(layer(&chain.stats(), "pinned").hits, 1);
    assert_eq!(layers.pinned.pinned(), vec![hot_key]);
    Ok(())
}

#[test]
fn lru_evicts_by_bytes_not_by_count() -> Result<()> {
    let engine = Engine::default();
    let small: Vec<_> = (0..10)
        .map(|n| {
            let s = wat(n, 0);
            Ok((
                CacheKey::new(&engine, s.as_bytes()),
                Module::new(&engine, &s)?,
            ))
        })
        .collect::<Result<_>>()?;
    let big_source = wat(99, 300);
    let big_key = CacheKey::new(&engine, big_source.as_bytes());
    let big = Module::new(&engine, &big_source)?;
    let small_size = module_size(&small[0].1);
    assert!(module_size(&big) > 10 * small_size);

    // Ten small modules fit; one big module alone fits too, but not together.
    let lru = LruCache::new(module_size(&big) + small_size);
    for (key, module) in &small {
        lru.save(key, module)?;
    }
    assert_eq!(lru.stats()[0].entries, 10);
    lru.save(&big_key, &big)?;
    let s = &lru.stats()[0];
    assert!(s.entries <= 2, "{s:?}");
    assert!(s.evictions >= 9, "{s:?}");
    assert!(s.bytes <= lru.capacity_bytes());
    assert!(lru.load(&big_key)?.is_some());
    Ok(())
}

/// Ways to damage the FS entry of `key`; each must make the next load through the chain a
/// miss that removes the file, counts a rejection and recompiles.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipHeader,
    FlipCode,
    Truncate,
    SwapWithOther,
    OtherEngineFile,
    WrongHmacKey,
}

/// Writes `bytes` in place of a saved file, which is read-only: remove, then write anew.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::remove_file(path)?;
    std::fs::write(path, bytes)?;
    Ok(())
}

fn damage(how: Damage, dir: &Path, engine: &Engine, fs: &FsCache, key: &CacheKey) -> Result<()> {
    let path = fs.path_of(key);
    let mut bytes = std::fs::read(&path)?;
    match how {
        Damage::FlipHeader => {
            let at = bytes.len() - TRAILER_LEN + 70; // artifact length field
            bytes[at] ^= 0x01;
            replace(&path, &bytes)?;
        }
        Damage::FlipCode => {
            let at = bytes.len() / 3;
            bytes[at] ^= 0xFF;
            replace(&path, &bytes)?;
        }
        Damage::Truncate => replace(&path, &bytes[..bytes.len() - 500])?,
        Damage::SwapWithOther => {
            let other = wat(555, 0);
            let other_key = CacheKey::new(engine, other.as_bytes());
            fs.save(&other_key, &Module::new(engine, &other)?)?;
            replace(&path, &std::fs::read(fs.path_of(&other_key))?)?;
        }
        Damage::OtherEngineFile => {
            // The same wasm compiled with other settings, planted under this engine's name.
            let mut config = wasmtime::Config::new();
            config.cranelift_opt_level(OptLevel::None);
            let other_engine = Engine::new(&config)?;
            let other_fs = FsCache::open(dir, &other_engine, FsCacheConfig::default())?;
            let source = wat(3, 0);
            let other_key = CacheKey::new(&other_engine, source.as_bytes());
            other_fs.save(&other_key, &Module::new(&other_engine, &source)?)?;
            replace(&path, &std::fs::read(other_fs.path_of(&other_key))?)?;
        }
        Damage::WrongHmacKey => {
            let writer = FsCache::open(
                dir,
                engine,
                FsCacheConfig {
                    mode: Verification::Authenticated {
                        key: b"not the operator's key".to_vec(),
                    },
                    ..FsCacheConfig::default()
                },
            )?;
            writer.save(key, &Module::new(engine, wat(3, 0))?)?;
        }
    }
    Ok(())
}

/// The Trusted mode, for tests.
fn trusted() -> Verification {
    // SAFETY: the tests' cache folders are private temp dirs, written only by the tests' own
    // saves; a test damages a file under Trusted only in ways the trailer check catches
    // (header, length, swap, engine), or only reads it without deserializing (`verify_all`).
    unsafe { Verification::trusted() }
}

#[test]
fn every_bad_file_is_a_miss_and_a_correct_module_afterwards() -> Result<()> {
    let engine = Engine::default();
    let source = wat(3, 0);
    let key = CacheKey::new(&engine, source.as_bytes());
    let verified = Verification::Verified;
    let authenticated = Verification::Authenticated {
        key: b"the operator's key".to_vec(),
    };
    let cases = [
        (Damage::FlipHeader, verified.clone()),
        (Damage::FlipHeader, trusted()),
        (Damage::FlipCode, verified.clone()),
        (Damage::FlipCode, authenticated.clone()),
        (Damage::Truncate, verified.clone()),
        (Damage::Truncate, trusted()),
        (Damage::SwapWithOther, verified.clone()),
        (Damage::SwapWithOther, trusted()),
        (Damage::OtherEngineFile, verified.clone()),
        (Damage::OtherEngineFile, trusted()),
        (Damage::WrongHmacKey, authenticated.clone()),
    ];
    for (how, mode) in cases {
        let dir = tempfile::tempdir()?;
        let writer = Layers::open(dir.path(), &engine, 64 << 20, mode.clone())?;
        get_or_compile(&writer.chain(), &engine, &source)?;
        damage(how, dir.path(), &engine, &writer.fs, &key)?;

        // A fresh process: only the FS has the (damaged) entry.
        let layers = Layers::open(dir.path(), &engine, 64 << 20, mode.clone())?;
        let chain = layers.chain();
        assert!(chain.load(&key)?.is_none(), "{how:?} in {mode:?} must miss");
        let fs = layer(&chain.stats(), "fs").clone();
        assert_eq!(
            (fs.rejected, fs.hits),
            (1, 0),
            "{how:?} in {mode:?}: {fs:?}"
        );
        assert!(
            !layers.fs.path_of(&key).exists(),
            "{how:?}: bad file removed"
        );

        // The host recompiles through the chain; the next process gets a correct module.
        let module = get_or_compile(&chain, &engine, &source)?;
        assert_eq!(answer(&engine, &module)?, 3);
        let next = Layers::open(dir.path(), &engine, 64 << 20, mode.clone())?;
        let module = next.chain().load(&key)?.context("hit after recompile")?;
        assert_eq!(answer(&engine, &module)?, 3, "{how:?} in {mode:?}");
        assert_eq!(next.fs.verify_all()?.bad, vec![]);
    }
    Ok(())
}

const CHILD_DIR: &str = "STRATA_CACHE_CHILD_DIR";
const CHILD_SAVES: usize = 25;

#[test]
fn two_processes_write_the_same_key() -> Result<()> {
    let engine = Engine::default();
    let source = wat(11, 20);
    let key = CacheKey::new(&engine, source.as_bytes());
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        // Child: save the same key over and over, loading in between.
        let fs = FsCache::open(Path::new(&dir), &engine, FsCacheConfig::default())?;
        let module = Module::new(&engine, &source)?;
        for _ in 0..CHILD_SAVES {
            fs.save(&key, &module)?;
            if let Some(loaded) = fs.load(&key)? {
                assert_eq!(answer(&engine, &loaded)?, 11);
            }
        }
        let s = &fs.stats()[0];
        assert_eq!(s.rejected, 0, "a reader never sees a half-written file");
        return Ok(());
    }

    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let children = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "cache::two_processes_write_the_same_key",
                    "--nocapture",
                ])
                .env(CHILD_DIR, dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for mut child in children {
        assert!(child.wait()?.success(), "child failed");
    }

    let fs = FsCache::open(dir.path(), &engine, FsCacheConfig::default())?;
    let module = fs.load(&key)?.context("the entry is there")?;
    assert_eq!(answer(&engine, &module)?, 11);
    let report = fs.verify_all()?;
    assert_eq!((report.checked, report.valid), (1, 1));
    let leftovers: Vec<_> = std::fs::read_dir(fs.engine_dir())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    Ok(())
}

#[test]
fn fs_byte_limit_holds_under_a_chain() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::default();
    let probe = Module::new(&engine, wat(0, 0))?;
    let file_size = probe.serialize()?.len() as u64 + TRAILER_LEN as u64;
    let max = file_size * 4;
    let fs = FsCache::open(
        dir.path(),
        &engine,
        FsCacheConfig {
            max_bytes: Some(max),
            ..FsCacheConfig::default()
        },
    )?;
    let chain = LruCache::new(1 << 20).with_fallback(fs);
    for n in 0..12 {
        get_or_compile(&chain, &engine, &wat(n, 0))?;
        let on_disk: u64 = std::fs::read_dir(chain.fallback().engine_dir())?
            .map(|e| Ok(e?.metadata()?.len()))
            .sum::<Result<u64>>()?;
        assert!(on_disk <= max, "{on_disk} > {max} after {n}");
    }
    let fs = layer(&chain.stats(), "fs").clone();
    assert!(fs.evictions >= 8, "{fs:?}");
    assert!(fs.bytes <= max);
    Ok(())
}

#[test]
fn prune_removes_the_folders_of_other_engines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::default();
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(OptLevel::None);
    let old_engine = Engine::new(&config)?;
    let old = FsCache::open(dir.path(), &old_engine, FsCacheConfig::default())?;
    get_or_compile(&old, &old_engine, &wat(1, 0))?;

    let current = FsCache::open(dir.path(), &engine, FsCacheConfig::default())?;
    get_or_compile(&current, &engine, &wat(1, 0))?;
    let report = current.prune()?;
    assert_eq!(report.removed_folders, vec![old.engine_dir().to_path_buf()]);
    assert_eq!(report.removed_files, 1);
    assert!(!old.engine_dir().exists());
    assert_eq!(current.verify_all()?.valid, 1);
    Ok(())
}

#[test]
fn a_broken_fs_layer_never_fails_the_chain() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::default();
    let layers = Layers::open(dir.path(), &engine, 64 << 20, Verification::Verified)?;
    let chain = layers.chain();
    // The folder disappears under the layer (an operator's rm -rf, a full or failing disk).
    std::fs::remove_dir_all(layers.fs.engine_dir())?;

    let source = wat(5, 0);
    let key = CacheKey::new(&engine, source.as_bytes());
    assert_eq!(
        answer(&engine, &get_or_compile(&chain, &engine, &source)?)?,
        5
    );
    let fs = layer(&chain.stats(), "fs").clone();
    assert_eq!(
        (fs.errors, fs.inserts),
        (1, 0),
        "the failed write is counted"
    );
    assert!(
        chain.load(&key)?.is_some(),
        "the memory layers still serve it"
    );

    // A key of another engine is an error of the fs layer, a plain miss for the chain.
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(OptLevel::None);
    let other_key = CacheKey::new(&Engine::new(&config)?, source.as_bytes());
    assert!(chain.load(&other_key)?.is_none());
    let fs = layer(&chain.stats(), "fs").clone();
    assert_eq!((fs.errors, fs.misses), (2, 2), "{fs:?}");
    Ok(())
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// No temp file in the folder, and a fresh healthy process loads a correct module.
fn assert_clean_and_loadable(
    dir: &Path,
    engine: &Engine,
    config: &FsCacheConfig,
    key: &CacheKey,
    what: &str,
) -> Result<()> {
    let fs = FsCache::open(dir, engine, config.clone())?;
    let names: Vec<String> = std::fs::read_dir(fs.engine_dir())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    assert!(
        names.iter().all(|n| !n.starts_with(".tmp-")),
        "{what}: temp files left: {names:?}"
    );
    let module = fs.load(key)?.with_context(|| format!("{what}: a hit"))?;
    assert_eq!(answer(engine, &module)?, 9, "{what}");
    assert_eq!(fs.stats()[0].rejected, 0, "{what}");
    Ok(())
}

/// Issue 6: fail each file-system operation of a save and of a load in turn (once, and from
/// then on; ENOSPC and EIO) under a pinned -> fs chain. The chain never returns `Err`, a load
/// is a miss or a correct module, no partial file is ever visible under the final name, and
/// once the disk heals a compile + save makes the next load (of this and of a new process) a
/// correct module with no temp file left.
#[test]
fn cache_faults_at_every_operation_only_cost_a_recompile() -> Result<()> {
    let engine = Engine::default();
    let source = wat(9, 3);
    let key = CacheKey::new(&engine, source.as_bytes());
    let compiled = Module::new(&engine, &source)?;
    let faults = [
        (FaultMode::Once, ENOSPC),
        (FaultMode::Once, EIO),
        (FaultMode::FromThenOn, ENOSPC),
        (FaultMode::FromThenOn, EIO),
    ];
    let open = |dir: &Path, config: &FsCacheConfig| -> Result<_> {
        let fault = Arc::new(FaultFs::real());
        let fs = Arc::new(FsCache::open_with_fs(
            dir,
            &engine,
            config.clone(),
            fault.clone(),
        )?);
        let chain = Arc::new(PinnedCache::new()).with_fallback(Arc::clone(&fs));
        Ok((fault, fs, chain))
    };
    let mut injected = 0;
    for mode in [Verification::Verified, trusted()] {
        // With a byte limit, so that the rescan of a save and the mtime bump of a hit count too.
        let config = FsCacheConfig {
            mode: mode.clone(),
            max_bytes: Some(64 << 20),
            fsync: true,
            ..FsCacheConfig::default()
        };
        // The operations of one save and of one load.
        let dir = tempfile::tempdir()?;
        let (fault, _, chain) = open(dir.path(), &config)?;
        let base = fault.ops();
        chain.save(&key, &compiled)?;
        let save_ops = fault.ops() - base;
        let base = fault.ops();
        chain.load(&key)?.context("a hit")?;
        let load_ops = fault.ops() - base;
        assert!(save_ops >= 6 && load_ops >= 3, "{save_ops} {load_ops}");

        for k in 0..save_ops {
            for (fault_mode, errno) in faults {
                let what = format!("{mode:?}: save op {k}, {fault_mode:?}, errno {errno}");
                let dir = tempfile::tempdir()?;
                let (fault, fs, chain) = open(dir.path(), &config)?;
                assert!(chain.load(&key)?.is_none());
                let base = fault.ops();
                fault.fail_at(base + k, fault_mode, errno);
                chain.save(&key, &Module::new(&engine, &source)?)?;
                assert!(fault.ops() > base + k, "{what}: not reached");
                injected += 1;
                // Another process sees a miss or a correct module, never a partial file.
                let reader = FsCache::open(dir.path(), &engine, config.clone())?;
                match reader.load(&key)? {
                    Some(module) => assert_eq!(answer(&engine, &module)?, 9, "{what}"),
                    None => assert!(!reader.path_of(&key).exists(), "{what}"),
                }
                assert_eq!(reader.stats()[0].rejected, 0, "{what}");
                // This process, still on the failing disk: the chain's load is Ok.
                if let Some(module) = chain.load(&key)? {
                    assert_eq!(answer(&engine, &module)?, 9, "{what}");
                }
                fault.heal();
                let module = get_or_compile(&chain, &engine, &source)?;
                assert_eq!(answer(&engine, &module)?, 9, "{what}");
                let module = chain.load(&key)?.with_context(|| format!("{what}: hit"))?;
                assert_eq!(answer(&engine, &module)?, 9, "{what}");
                assert_eq!(fs.stats()[0].rejected, 0, "{what}");
                assert_clean_and_loadable(dir.path(), &engine, &config, &key, &what)?;
            }
        }

        for k in 0..load_ops {
            for (fault_mode, errno) in faults {
                let what = format!("{mode:?}: load op {k}, {fault_mode:?}, errno {errno}");
                let dir = tempfile::tempdir()?;
                let (fault, fs, chain) = open(dir.path(), &config)?;
                chain.save(&key, &compiled)?;
                let base = fault.ops();
                fault.fail_at(base + k, fault_mode, errno);
                let loaded = chain.load(&key)?;
                assert!(fault.ops() > base + k, "{what}: not reached");
                injected += 1;
                if let Some(module) = &loaded {
                    assert_eq!(answer(&engine, module)?, 9, "{what}");
                }
                fault.heal();
                if loaded.is_none() {
                    // The host recompiles and saves on the healed disk.
                    let module = Module::new(&engine, &source)?;
                    chain.save(&key, &module)?;
                }
                let module = chain.load(&key)?.with_context(|| format!("{what}: hit"))?;
                assert_eq!(answer(&engine, &module)?, 9, "{what}");
                // An I/O error is not evidence against a file: nothing was rejected.
                assert_eq!(fs.stats()[0].rejected, 0, "{what}");
                assert_clean_and_loadable(dir.path(), &engine, &config, &key, &what)?;
            }
        }
    }
    // Verified: 8 save + 5 load ops (the trailer's pread, then the artifact's read); Trusted:
    // 8 + 5; four faults each.
    assert_eq!(injected, (8 + 5 + 8 + 5) * 4);
    Ok(())
}
