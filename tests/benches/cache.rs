//! Criterion benchmarks of the module cache on real modules (sql.js, tree-sitter, CosmWasm's
//! hackatom): a hit in each layer against compiling from wasm, against the floors
//! (`Module::deserialize_file`, `sha256 + Module::deserialize`) and against wasmtime's own
//! built-in cache (`Config::cache`).
//!
//! Two groups per module, each with one `baseline*` id (see `cargo xtask bench`):
//! `cache/<module>/vs_compile` (baseline: `Module::new` from wasm) and
//! `cache/<module>/vs_floor` (baseline: `Module::deserialize_file` of the plain artifact).
//! Every iteration drops the module it loaded, as a host does between uses.
//!
//! The remote layer (`redis_hit`, `redis_zstd_hit`: cache-redis on a `redis-server` the
//! benchmark starts on 127.0.0.1, loopback) is measured in both groups: against compiling, and
//! against the default-mode (Authenticated) FS hit. With `STRATA_BENCH_LARGE=1`, esbuild also
//! gets a `vs_compile` group of its own (compile and Redis hit only: 14 s per compile).
//!
//! The corpus is read from `$STRATA_CORPUS`, else `../shared/corpus` next to the workspace.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheKey, ModuleCache, ModuleCacheExt};
use cache_fs::{FsCache, FsCacheConfig, Verification};
use cache_lru::LruCache;
use cache_pinned::PinnedCache;
use cache_redis::{Compression, RedisCache, RedisConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use strata_harness::RedisServer;
use wasmtime::{Cache, CacheConfig, Config, Engine, Module};

/// The corpus modules measured: (name, file, large). A large module (esbuild: 14 s per compile
/// in release) is only measured when `STRATA_BENCH_LARGE=1`, and only in the `vs_floor` group,
/// so that the default run stays around a minute.
const MODULES: &[(&str, &str, bool)] = &[
    ("sqljs", "sqljs-1.16.0.wasm", false),
    ("tree-sitter", "web-tree-sitter-0.27.1.wasm", false),
    ("hackatom", "cosmwasm-hackatom.wasm", false),
    ("esbuild", "esbuild-wasm-0.28.2.wasm", true),
];

fn corpus_dir() -> PathBuf {
    match std::env::var_os("STRATA_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        // CARGO_MANIFEST_DIR is <workspace>/tests.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    }
}

/// Everything one module's benchmarks need, prepared once.
struct Fixture {
    wasm: Vec<u8>,
    key: CacheKey,
    artifact: Vec<u8>,
    artifact_path: PathBuf,
    pinned_chain: Box<dyn ModuleCache>,
    lru_chain: Box<dyn ModuleCache>,
    trusted: FsCache,
    verified: FsCache,
    authenticated: FsCache,
    redis: RedisCache,
    redis_zstd: RedisCache,
    builtin_engine: Engine,
    _dirs: Vec<tempfile::TempDir>,
}

/// The Trusted mode, for tests.
fn trusted() -> Verification {
    // SAFETY: the tests' cache folders are private temp dirs, written only by the tests' own
    // saves; a test damages a file under Trusted only in ways the trailer check catches
    // (header, length, swap, engine), or only reads it without deserializing (`verify_all`).
    unsafe { Verification::trusted() }
}

fn fs_cache(dir: &Path, engine: &Engine, mode: Verification) -> FsCache {
    let config = FsCacheConfig {
        mode,
        max_bytes: None,
        fsync: false,
        ..FsCacheConfig::default()
    };
    FsCache::open(dir, engine, config).expect("open fs cache")
}

/// A remote layer on `server` under its own prefix, holding `module`.
fn redis_cache(
    server: &RedisServer,
    engine: &Engine,
    prefix: &str,
    compression: Compression,
    key: &CacheKey,
    module: &Module,
) -> RedisCache {
    let mut config = RedisConfig::new(b"bench secret of the fleet, 32 bytes or more".to_vec());
    config.prefix = format!("bench:{prefix}:");
    config.compression = compression;
    config.io_timeout = Duration::from_secs(10);
    let cache = RedisCache::open(server.url(), engine, config).expect("open redis cache");
    cache.save(key, module).expect("queue upload");
    assert!(cache.flush(Duration::from_secs(60)), "upload");
    assert_eq!(cache.remote_stats().uploads, 1, "uploaded");
    cache
}

impl Fixture {
    fn new(engine: &Engine, wasm: Vec<u8>, server: &RedisServer) -> Self {
        let key = CacheKey::new(engine, &wasm);
        let module = Module::new(engine, &wasm).expect("corpus module compiles");
        let artifact = module.serialize().expect("serialize");
        let dirs: Vec<_> = (0..5)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let artifact_path = dirs[0].path().join("plain.cwasm");
        std::fs::write(&artifact_path, &artifact).expect("write artifact");

        // A three-layer chain where the module is pinned, and one where it is only in the LRU.
        let pinned = PinnedCache::new();
        pinned.pin(key, module.clone());
        let fs_below = fs_cache(dirs[1].path(), engine, Verification::Verified);
        let pinned_chain: Box<dyn ModuleCache> =
            Box::new(pinned.with_fallback(LruCache::default().with_fallback(fs_below)));
        let lru = Arc::new(LruCache::default());
        lru.save(&key, &module).expect("lru save");
        let fs_below = fs_cache(dirs[1].path(), engine, Verification::Verified);
        let lru_chain: Box<dyn ModuleCache> =
            Box::new(PinnedCache::new().with_fallback(lru.with_fallback(fs_below)));

        let trusted = fs_cache(dirs[2].path(), engine, trusted());
        let verified = fs_cache(dirs[3].path(), engine, Verification::Verified);
        let authenticated = fs_cache(
            dirs[4].path(),
            engine,
            Verification::Authenticated {
                key: b"bench secret, kept outside the cache directory".to_vec(),
            },
        );
        for fs in [&trusted, &verified, &authenticated] {
            fs.save(&key, &module).expect("fs save");
        }
        let redis = redis_cache(server, engine, "plain", Compression::None, &key, &module);
        let zstd = Compression::Zstd { level: 3 };
        let redis_zstd = redis_cache(server, engine, "zstd", zstd, &key, &module);

        // Wasmtime's own cache, in its own temp directory, warmed with one compile.
        let builtin_dir = tempfile::tempdir().expect("tempdir");
        let mut cache_config = CacheConfig::new();
        cache_config.with_directory(builtin_dir.path());
        let mut config = Config::new();
        config.cache(Some(Cache::new(cache_config).expect("wasmtime cache")));
        let builtin_engine = Engine::new(&config).expect("engine with cache");
        drop(Module::new(&builtin_engine, &wasm).expect("compile into wasmtime's cache"));
        let mut dirs = dirs;
        dirs.push(builtin_dir);

        Fixture {
            wasm,
            key,
            artifact,
            artifact_path,
            pinned_chain,
            lru_chain,
            trusted,
            verified,
            authenticated,
            redis,
            redis_zstd,
            builtin_engine,
            _dirs: dirs,
        }
    }

    fn hit(cache: &dyn ModuleCache, key: &CacheKey) -> Module {
        cache.load(key).expect("load").expect("a hit")
    }
}

fn bench_cache(c: &mut Criterion) {
    let engine = Engine::default();
    let dir = corpus_dir();
    let large = std::env::var_os("STRATA_BENCH_LARGE").is_some_and(|v| v == "1");
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    for &(name, file, is_large) in MODULES {
        if is_large && !large {
            continue;
        }
        let Ok(wasm) = std::fs::read(dir.join(file)) else {
            eprintln!("skipping {name}: {} not found", dir.join(file).display());
            continue;
        };
        let fx = Fixture::new(&engine, wasm, &server);

        if is_large {
            bench_large_vs_compile(c, &engine, name, &fx);
        } else {
            bench_vs_compile(c, &engine, name, &fx);
        }
        bench_vs_floor(c, &engine, name, &fx);

        // Every FS and Redis load above must have been a verified hit, never a silent
        // recompile.
        for cache in [
            &fx.trusted as &dyn ModuleCache,
            &fx.verified,
            &fx.authenticated,
            &fx.redis,
            &fx.redis_zstd,
        ] {
            let s = &cache.stats()[0];
            assert_eq!((s.misses, s.rejected), (0, 0), "{s:?}");
        }
        let bytes = |r: &RedisCache| r.remote_stats().upload_bytes;
        eprintln!(
            "{name}: artifact {} bytes, in Redis {} bytes plain, {} bytes zstd level 3",
            fx.artifact.len(),
            bytes(&fx.redis),
            bytes(&fx.redis_zstd)
        );
    }
}

/// Hits of every layer against compiling from wasm.
fn bench_vs_compile(c: &mut Criterion, engine: &Engine, name: &str, fx: &Fixture) {
    let key = fx.key;
    let mut group = c.benchmark_group(format!("cache/{name}/vs_compile"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("baseline_compile", |b| {
        b.iter(|| Module::new(engine, black_box(&fx.wasm)).expect("compile"))
    });
    group.bench_function("pinned_hit", |b| {
        b.iter(|| Fixture::hit(&*fx.pinned_chain, &key))
    });
    group.bench_function("lru_hit", |b| b.iter(|| Fixture::hit(&*fx.lru_chain, &key)));
    group.bench_function("fs_verified_hit", |b| {
        b.iter(|| Fixture::hit(&fx.verified, &key))
    });
    group.bench_function("redis_hit", |b| b.iter(|| Fixture::hit(&fx.redis, &key)));
    group.bench_function("wasmtime_cache_hit", |b| {
        b.iter(|| Module::new(&fx.builtin_engine, black_box(&fx.wasm)).expect("cached"))
    });
    group.finish();
}

/// A large module's Redis hit against its compile (ten compiles of 14 s: only with
/// `STRATA_BENCH_LARGE=1`).
fn bench_large_vs_compile(c: &mut Criterion, engine: &Engine, name: &str, fx: &Fixture) {
    let key = fx.key;
    let mut group = c.benchmark_group(format!("cache/{name}/vs_compile"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));
    group.bench_function("baseline_compile", |b| {
        b.iter(|| Module::new(engine, black_box(&fx.wasm)).expect("compile"))
    });
    group.bench_function("redis_hit", |b| b.iter(|| Fixture::hit(&fx.redis, &key)));
    group.finish();
}

/// FS hits against the floors: mapping the plain artifact, deserializing it from memory, and
/// hashing + deserializing it; and the Redis hits against the same floors.
fn bench_vs_floor(c: &mut Criterion, engine: &Engine, name: &str, fx: &Fixture) {
    let key = fx.key;
    let mut group = c.benchmark_group(format!("cache/{name}/vs_floor"));
    group.sample_size(30);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("baseline_deserialize_file", |b| {
        b.iter(|| {
            // SAFETY: the file is `Module::serialize` output written by this benchmark and
            // not modified while the benchmark runs.
            unsafe { Module::deserialize_file(engine, &fx.artifact_path) }.expect("load")
        })
    });
    group.bench_function("sha256_deserialize", |b| {
        b.iter(|| {
            let digest: [u8; 32] = Sha256::digest(black_box(&fx.artifact)).into();
            black_box(digest);
            // SAFETY: `artifact` is `Module::serialize` output of this engine, in memory.
            unsafe { Module::deserialize(engine, &fx.artifact) }.expect("load")
        })
    });
    // The floor of any load from bytes in memory (a Redis hit's): wasmtime copies them into
    // fresh pages, where a file hit maps pages the page cache already holds.
    group.bench_function("deserialize_bytes", |b| {
        b.iter(|| {
            // SAFETY: `artifact` is `Module::serialize` output of this engine, in memory.
            unsafe { Module::deserialize(engine, black_box(&fx.artifact)) }.expect("load")
        })
    });
    group.bench_function("fs_trusted_hit", |b| {
        b.iter(|| Fixture::hit(&fx.trusted, &key))
    });
    group.bench_function("fs_verified_hit", |b| {
        b.iter(|| Fixture::hit(&fx.verified, &key))
    });
    // The VM's default mode (keyed BLAKE3 tags): `cargo xtask bench` checks it against
    // `fs_trusted_hit`.
    group.bench_function("fs_authenticated_hit", |b| {
        b.iter(|| Fixture::hit(&fx.authenticated, &key))
    });
    // The remote layer on loopback (keyed BLAKE3 like the FS default), plain and zstd.
    group.bench_function("redis_hit", |b| b.iter(|| Fixture::hit(&fx.redis, &key)));
    group.bench_function("redis_zstd_hit", |b| {
        b.iter(|| Fixture::hit(&fx.redis_zstd, &key))
    });
    group.bench_function("wasmtime_cache_hit", |b| {
        b.iter(|| Module::new(&fx.builtin_engine, black_box(&fx.wasm)).expect("cached"))
    });
    group.finish();
}

/// The thread-local layer against the pinned layer: hits on the same key from 1 and 2 threads
/// at once. One iteration is one hit on every thread (the time is wall-clock).
fn bench_thread_local(c: &mut Criterion) {
    let engine = Engine::default();
    let wat = r#"(module (func (export "f") (result i32) i32.const 1))"#;
    let key = CacheKey::new(&engine, wat.as_bytes());
    let module = Module::new(&engine, wat).expect("compiles");
    let pinned = PinnedCache::new();
    pinned.pin(key, module.clone());
    let local = cache_lru::ThreadLocalCache::new(64);
    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("thread_local/{threads}_threads"));
        group.measurement_time(Duration::from_secs(3));
        let layers: [(&str, &dyn ModuleCache); 2] = [
            ("baseline_pinned_hit", &pinned),
            ("thread_local_hit", &local),
        ];
        for (id, layer) in layers {
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let start = std::sync::Barrier::new(threads);
                    let elapsed = std::thread::scope(|s| {
                        let handles: Vec<_> = (0..threads)
                            .map(|_| {
                                s.spawn(|| {
                                    // Each thread fills its own map from the pinned layer.
                                    local.save(&key, &module).expect("save");
                                    start.wait();
                                    let t = std::time::Instant::now();
                                    for _ in 0..iters {
                                        black_box(layer.load(&key).expect("load"));
                                    }
                                    t.elapsed()
                                })
                            })
                            .collect();
                        handles.into_iter().map(|h| h.join().expect("thread")).max()
                    });
                    elapsed.unwrap_or_default()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_cache, bench_thread_local);
criterion_main!(benches);
