//! Benchmarks of key-value spaces at scale: 1 M keys of 32 bytes with 100-byte values.
//!
//! - `kv_commit_1M`: a commit changing 10 keys, at the largest plain delta (a middle delta just
//!   under the rebase bound and a top delta at its bound), fsync off and on, against today's
//!   whole-blob commit of the same state (`baseline_whole_blob`: the host's old code, kept here:
//!   the whole map serialized with postcard into the module's blob, then the store's blob
//!   commit) and against redb;
//! - `kv_open_read`: session open plus the first read, 1 k against 1 M keys (and redb's open);
//! - `kv_read_1M`: a point read against a `BTreeMap` lookup plus a copy, and redb;
//! - `kv_scan_10k`: a forward scan of 10,000 entries against iterating a `BTreeMap` range, and
//!   redb;
//! - the disk footprint of 1,000 commits of 10 changed keys, keeping the newest 100 or all
//!   (printed, and written to `target/strata-bench/kv-footprint.txt`).
//!
//! Set `STRATA_KV_KEYS` to run with fewer keys (the targets assume 1 M).

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{disk_usage, extra_report};
use criterion::{BenchmarkId, Criterion};
use redb::{ReadableDatabase, TableDefinition};
use sha2::{Digest as _, Sha256};
use store_commit::{Bytecode, KvHandle, ModuleId, Namespace, Order, Root, Store, StoreConfig};

const TABLE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
const SCAN: usize = 10_000;

fn keys_n() -> u64 {
    std::env::var("STRATA_KV_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn config(fsync: bool) -> StoreConfig {
    StoreConfig {
        fsync,
        ..StoreConfig::default()
    }
}

fn key(i: u64) -> [u8; 32] {
    Sha256::digest(i.to_le_bytes()).into()
}

/// 100 incompressible bytes.
fn value(i: u64, round: u64) -> Vec<u8> {
    let mut x = (i ^ (round << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..13)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(100)
        .collect()
}

fn space() -> Namespace {
    Namespace::of_module(&ModuleId::of_wasm(b"bench"))
}

/// A store holding `n` keys, and the commit with the largest deltas before a rebase: a middle
/// delta of `n / 16 - 500` keys (the rebase bound is `n / 16`) and a top delta of 246 entries,
/// so that the next 10 changed keys make a top of 256, the fold bound.
struct KvStore {
    dir: PathBuf,
    root: Root,
    /// The same shape with a middle delta 10 entries under the rebase bound: 20 more keys
    /// rebase (from `root`, 20 keys fold).
    rebase_root: Root,
}

fn build(dir: &Path, n: u64) -> KvStore {
    let store = Store::open(dir, config(false)).unwrap();
    let mut s = store.session(None).unwrap();
    let h = s.kv(&space()).unwrap();
    for i in 0..n {
        h.insert(&key(i), &value(i, 0)).unwrap();
    }
    drop(h);
    let base = s.commit().unwrap();
    let mut roots = Vec::new();
    for short in [500, 10] {
        let mut root = base;
        let mid = (n / 16).saturating_sub(short).max(1);
        for (count, round) in [(mid, 1), (246, 2)] {
            let mut s = store.session(Some(root)).unwrap();
            let h = s.kv(&space()).unwrap();
            for j in 0..count {
                let i = (j * 7919 + round + short) % n;
                h.insert(&key(i), &value(i, round)).unwrap();
            }
            root = s.commit().unwrap();
        }
        let index = store.index(&root).unwrap();
        let levels = index.kv_space(&space()).unwrap().levels().len();
        assert_eq!(levels, 3, "the benchmark state has a base and two deltas");
        roots.push(root);
    }
    KvStore {
        dir: dir.to_path_buf(),
        root: roots[0],
        rebase_root: roots[1],
    }
}

struct Shared {
    _work: tempfile::TempDir,
    big: KvStore,
    small: KvStore,
    redb: PathBuf,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The 1 M-key stores and models, built once.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let n = keys_n();
        let work = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let big = build(&work.path().join("big"), n);
        println!("built the {n}-key store in {:?}", started.elapsed());
        let small = build(&work.path().join("small"), 1000);
        // The same state as a map and in redb.
        let store = Store::open(&big.dir, config(false)).unwrap();
        let h = store.session(Some(big.root)).unwrap().kv(&space()).unwrap();
        let map: BTreeMap<Vec<u8>, Vec<u8>> = h
            .range(None, None, Order::Ascending)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        drop(h);
        let redb = work.path().join("redb");
        let db = redb::Database::create(&redb).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in &map {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        Shared {
            _work: work,
            big,
            small,
            redb,
            map,
        }
    })
}

/// Commits 10 changed keys on top of `base`, timing the commit alone.
fn strata_commit(store: &Store, base: Root, round: &mut u64) -> Duration {
    *round += 1;
    let n = keys_n();
    let mut s = store.session(Some(base)).unwrap();
    let h = s.kv(&space()).unwrap();
    for j in 0..10 {
        let i = (*round * 104_729 + j * 15_485_863) % n;
        h.insert(&key(i), &value(i, *round + 1000)).unwrap();
    }
    drop(h);
    let started = Instant::now();
    let root = s.commit().unwrap();
    let took = started.elapsed();
    // Keep the store small: the benchmark is about the commit, not about many commits.
    store.delete(&root).unwrap();
    took
}

/// Today's host blob: a version byte, then postcard of (globals, key-value map).
fn whole_blob(map: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let globals: Vec<(u32, u64)> = Vec::new();
    let mut out = vec![1u8];
    out.extend(postcard::to_stdvec(&(globals, map)).unwrap());
    out
}

fn commit(c: &mut Criterion) {
    let sh = shared();
    let mut group = c.benchmark_group("kv_commit_1M");
    group.sample_size(10);
    for fsync in [false, true] {
        let store = Store::open(&sh.big.dir, config(fsync)).unwrap();
        let mut round = u64::from(fsync) << 32;
        let name = if fsync { "delta_10_fsync" } else { "delta_10" };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| strata_commit(&store, sh.big.root, &mut round))
                    .sum()
            })
        });
    }
    // A plain commit next to those that fold the top delta or rebase: in the background (the
    // default: the commit that passes a bound starts the merge, a later one adopts it) and in
    // the commit itself (`kv_background: false`).
    let mut compaction = String::new();
    for background in [true, false] {
        let store = Store::open(
            &sh.big.dir,
            StoreConfig {
                kv_background: background,
                ..config(false)
            },
        )
        .unwrap();
        let mut round = 1 << 40 | u64::from(background) << 39;
        let mut time = |base: Root, count: u64| {
            let mut s = store.session(Some(base)).unwrap();
            let h = s.kv(&space()).unwrap();
            round += 1;
            for j in 0..count {
                let i = (round * 104_729 + j * 15_485_863) % keys_n();
                h.insert(&key(i), &value(i, round)).unwrap();
            }
            drop(h);
            let started = Instant::now();
            let root = s.commit().unwrap();
            let took = started.elapsed();
            let levels = store
                .index(&root)
                .unwrap()
                .kv_space(&space())
                .unwrap()
                .levels()
                .len();
            (took, levels, root)
        };
        // Medians of 5 (single commits are noisy here), after one to warm the mappings.
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let mut plain = Vec::new();
        for _ in 0..6 {
            let (took, _, r) = time(sh.big.root, 10);
            plain.push(took);
            store.delete(&r).unwrap();
        }
        let plain = median(plain.split_off(1));
        let mut line = format!("kv_commit_1M (background {background}): plain {plain:?}");
        for (what, from) in [("fold", sh.big.root), ("rebase", sh.big.rebase_root)] {
            let (mut triggers, mut adopts, mut shapes) = (Vec::new(), Vec::new(), (0, 0));
            for _ in 0..5 {
                let (trigger, levels, r) = time(from, 20);
                store.wait_for_compactions();
                let (adopt, adopted, r2) = time(r, 10);
                triggers.push(trigger);
                adopts.push(adopt);
                shapes = (levels, adopted);
                store.delete(&r2).unwrap();
                store.delete(&r).unwrap();
            }
            let (trigger, adopt) = (median(triggers), median(adopts));
            line += &format!(
                "; {what}: the commit of 20 keys passing the bound {trigger:?} = {:.1}x \
                 ({} tables), the next commit of 10 {adopt:?} = {:.1}x ({} tables)",
                trigger.as_secs_f64() / plain.as_secs_f64(),
                shapes.0,
                adopt.as_secs_f64() / plain.as_secs_f64(),
                shapes.1,
            );
        }
        println!("{line}");
        compaction.push_str(&line);
        compaction.push('\n');
    }
    extra_report("kv-compaction.txt", &compaction);
    // Today's path: the whole map serialized into the blob, committed by the store.
    {
        let work = tempfile::tempdir().unwrap();
        let store = Store::open(work.path(), config(false)).unwrap();
        let code = b"\0asm\x01\0\0\0blob".to_vec();
        let id = ModuleId::of_wasm(&code);
        let mut map = sh.map.clone();
        let mut s = store.session(None).unwrap();
        s.deploy(Bytecode::hash(&code[..]), vec![], whole_blob(&map))
            .unwrap();
        let base = s.commit().unwrap();
        let mut round = 0u64;
        let keys: Vec<Vec<u8>> = map.keys().take(10_000).cloned().collect();
        group.bench_function("baseline_whole_blob", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    for j in 0..10 {
                        let k = &keys[((round * 10 + j) % keys.len() as u64) as usize];
                        map.insert(k.clone(), value(j, round));
                    }
                    let mut s = store.session(Some(base)).unwrap();
                    let started = Instant::now();
                    s.set_blob(&id, whole_blob(&map)).unwrap();
                    let root = s.commit().unwrap();
                    total += started.elapsed();
                    store.delete(&root).unwrap();
                }
                total
            })
        });
    }
    let db = redb::Database::open(&sh.redb).unwrap();
    for (name, durability) in [
        ("redb_10", redb::Durability::None),
        ("redb_10_fsync", redb::Durability::Immediate),
    ] {
        let mut round = 0u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let started = Instant::now();
                    let mut tx = db.begin_write().unwrap();
                    tx.set_durability(durability).unwrap();
                    {
                        let mut t = tx.open_table(TABLE).unwrap();
                        for j in 0..10 {
                            let i = (round * 104_729 + j * 15_485_863) % keys_n();
                            t.insert(key(i).as_slice(), value(i, round).as_slice())
                                .unwrap();
                        }
                    }
                    tx.commit().unwrap();
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

fn open_read(c: &mut Criterion) {
    let sh = shared();
    let mut group = c.benchmark_group("kv_open_read");
    for (name, kv) in [("1k", &sh.small), ("1M", &sh.big)] {
        let store = Store::open(&kv.dir, config(false)).unwrap();
        let probe = key(7);
        group.bench_with_input(BenchmarkId::new("open_get", name), &(), |b, ()| {
            b.iter(|| {
                let mut s = store.session(Some(kv.root)).unwrap();
                let h = s.kv(&space()).unwrap();
                black_box(h.get(&probe).unwrap())
            })
        });
    }
    group.bench_with_input(BenchmarkId::new("redb_open_get", "1M"), &(), |b, ()| {
        b.iter(|| {
            let db = redb::Database::open(&sh.redb).unwrap();
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(TABLE).unwrap();
            black_box(
                t.get(key(7).as_slice())
                    .unwrap()
                    .map(|v| v.value().to_vec()),
            )
        })
    });
    group.finish();
}

fn open_big(sh: &Shared) -> (Store, KvHandle) {
    let store = Store::open(&sh.big.dir, config(false)).unwrap();
    let h = store
        .session(Some(sh.big.root))
        .unwrap()
        .kv(&space())
        .unwrap();
    (store, h)
}

fn reads(c: &mut Criterion) {
    let sh = shared();
    let (_store, h) = open_big(sh);
    let n = keys_n();
    let mut group = c.benchmark_group("kv_read_1M");
    let mut i = 0u64;
    let mut next = || {
        i = (i + 7919) % n;
        key(i)
    };
    group.bench_function("baseline_btreemap_get_copy", |b| {
        b.iter(|| black_box(sh.map.get(next().as_slice()).cloned()))
    });
    group.bench_function("point_read", |b| {
        b.iter(|| black_box(h.get(&next()).unwrap()))
    });
    let db = redb::Database::open(&sh.redb).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(TABLE).unwrap();
    group.bench_function("redb_point_read", |b| {
        b.iter(|| {
            black_box(
                t.get(next().as_slice())
                    .unwrap()
                    .map(|v| v.value().to_vec()),
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("kv_scan_10k");
    let from = key(12345);
    group.bench_function("baseline_btreemap_range", |b| {
        b.iter(|| {
            let v: Vec<(Vec<u8>, Vec<u8>)> = sh
                .map
                .range(from.to_vec()..)
                .take(SCAN)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            black_box(v)
        })
    });
    group.bench_function("scan", |b| {
        b.iter(|| {
            let v: Vec<(Vec<u8>, Vec<u8>)> = h
                .range(Some(&from), None, Order::Ascending)
                .unwrap()
                .take(SCAN)
                .map(Result::unwrap)
                .collect();
            black_box(v)
        })
    });
    group.bench_function("redb_scan", |b| {
        b.iter(|| {
            let v: Vec<(Vec<u8>, Vec<u8>)> = t
                .range(from.as_slice()..)
                .unwrap()
                .take(SCAN)
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value().to_vec(), v.value().to_vec())
                })
                .collect();
            black_box(v)
        })
    });
    group.finish();
}

/// 1,000 commits of 10 changed keys on the 1 M-key state, keeping the newest `keep` (older
/// ones deleted, as a node prunes); the footprint against the raw key and value bytes.
fn footprint_case(keep: Option<usize>) -> String {
    let n = keys_n();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let store = Store::open(dir, config(false)).unwrap();
    let mut s = store.session(None).unwrap();
    let h = s.kv(&space()).unwrap();
    for i in 0..n {
        h.insert(&key(i), &value(i, 0)).unwrap();
    }
    drop(h);
    let mut roots = vec![s.commit().unwrap()];
    let mut peak = 0u64;
    for round in 1..=1000u64 {
        let mut s = store.session(roots.last().copied()).unwrap();
        let h = s.kv(&space()).unwrap();
        for j in 0..10 {
            let i = (round * 104_729 + j * 15_485_863) % n;
            h.insert(&key(i), &value(i, round)).unwrap();
        }
        drop(h);
        roots.push(s.commit().unwrap());
        if let Some(keep) = keep
            && roots.len() > keep
        {
            store.delete(&roots.remove(0)).unwrap();
        }
        if round % 100 == 0 {
            peak = peak.max(disk_usage(dir).0);
        }
    }
    let used = disk_usage(dir).0;
    let raw = n * (32 + 100);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    format!(
        "kv_footprint_{}: {n} keys (32 + 100 bytes), 1,000 commits of 10 changed keys: on disk \
         {:.1} MiB allocated, peak {:.1} MiB at a multiple of 100 commits; raw keys and values \
         {:.1} MiB; ratio {:.2}x (target 1.5x with the newest 100 kept)",
        keep.map_or("all_kept".to_string(), |k| format!("newest_{k}")),
        mib(used),
        mib(peak),
        mib(raw),
        used as f64 / raw as f64,
    )
}

fn footprint() {
    let report: String = [Some(100), None]
        .into_iter()
        .map(|keep| footprint_case(keep) + "\n")
        .collect();
    print!("{report}");
    extra_report("kv-footprint.txt", &report);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // The first positional argument is criterion's filter (options' values are not).
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        if a.starts_with("--") {
            if !a.contains('=') && !matches!(a.as_str(), "--bench" | "--test" | "--list") {
                args.next();
            }
        } else {
            filter = Some(a);
            break;
        }
    }
    // Also for a filter naming key-value groups in general (`kv_`, as `cargo xtask bench` passes
    // a regex that criterion matches, not this substring test).
    if filter
        .as_deref()
        .is_none_or(|f| "kv_footprint".contains(f) || f.contains("kv_"))
    {
        footprint();
    }
    commit(&mut c);
    open_read(&mut c);
    reads(&mut c);
    c.final_summary();
}
