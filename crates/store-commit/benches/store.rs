//! Benchmarks of the commit store against a naive store (copy the memory in at open, write it whole
//! and hash it whole at commit): session open vs memory size, commit vs dirty pages, restore vs
//! history length, and the disk footprint of a history (printed, and written to
//! `target/strata-bench/footprint.txt`).
//!
//! Memories are built lazily (grown, then a few pages written), so the 1 GiB cases do not touch
//! 1 GiB of RAM; the naive baseline of course does.

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{disk_usage, extra_report};
use criterion::{BenchmarkId, Criterion};
use sha2::{Digest as _, Sha256};
use store_commit::{
    Bytecode, MemoryHandle, ModuleId, PAGE_SIZE, Root, Store, StoreConfig, SyncMode,
};

const MIB: usize = 1 << 20;
const OS_PAGE: usize = 4096;
/// What wasmtime reserves for a 32-bit memory: 4 GiB plus a 32 MiB guard.
const RESERVATION: usize = (4 << 30) + (32 << 20);

fn config() -> StoreConfig {
    StoreConfig {
        fsync: false,
        ..StoreConfig::default()
    }
}

fn write(mem: &MemoryHandle, at: usize, data: &[u8]) {
    assert!(at + data.len() <= mem.len());
    // SAFETY: the range is inside the memory and nothing else uses it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mem.base().add(at), data.len()) }
}

/// A page of pseudo-random bytes (incompressible: the worst case for deltas).
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..OS_PAGE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// A page of data that compresses like typical heap content (small integers, repeated words).
fn heapish(seed: u64) -> Vec<u8> {
    (0..OS_PAGE / 8)
        .flat_map(|i| ((seed + i as u64 * 3) % 1000).to_le_bytes())
        .collect()
}

/// A store with one module whose committed memory is `size` bytes: a full image with one page in
/// every 64 KiB written, plus a small delta on top. Returns the store, the module and the root.
fn store_with_memory(dir: &Path, size: usize) -> (Store, ModuleId, Root) {
    let code = b"\0asm\x01\0\0\0bench".to_vec();
    let id = ModuleId::of_wasm(&code);
    // Building: every change becomes a full image.
    let building = StoreConfig {
        max_delta_bytes: 0,
        ..config()
    };
    let store = Store::open(dir, building).unwrap();
    let mut s = store.session(None).unwrap();
    s.deploy(Bytecode::hash(&code[..]), vec![], vec![]).unwrap();
    let root = s.commit().unwrap();
    let mut s = store.session(Some(root)).unwrap();
    let m = s.memory(&id, RESERVATION).unwrap();
    m.grow_to(size).unwrap();
    for (n, at) in (0..size).step_by(PAGE_SIZE).enumerate() {
        write(&m, at, &heapish(n as u64));
    }
    let root = s.commit().unwrap();
    drop(store);
    let store = Store::open(dir, config()).unwrap();
    let mut s = store.session(Some(root)).unwrap();
    let m = s.memory(&id, RESERVATION).unwrap();
    for i in 0..4 {
        write(&m, i * 7 * OS_PAGE + 100, &noise(i as u64));
    }
    let root = s.commit().unwrap();
    (store, id, root)
}

/// The naive store: one whole file per commit.
struct Naive {
    dir: PathBuf,
    n: u64,
}

impl Naive {
    fn open(&self, file: &Path) -> Vec<u8> {
        std::fs::read(file).unwrap()
    }

    fn commit(&mut self, memory: &[u8]) -> [u8; 32] {
        self.n += 1;
        let path = self.dir.join(format!("naive-{}", self.n));
        std::fs::write(&path, memory).unwrap();
        let root = Sha256::digest(memory).into();
        std::fs::remove_file(&path).unwrap();
        root
    }
}

fn naive_image(dir: &Path, store: &Store, root: &Root, id: &ModuleId) -> PathBuf {
    let path = dir.join("naive-image");
    std::fs::write(&path, store.read_memory(root, id).unwrap()).unwrap();
    path
}

const SIZES: [(usize, &str); 4] = [
    (MIB, "1MiB"),
    (16 * MIB, "16MiB"),
    (256 * MIB, "256MiB"),
    (1024 * MIB, "1GiB"),
];

fn session_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_open");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for (size, name) in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, root) = store_with_memory(dir.path(), size);
        group.bench_function(BenchmarkId::new("open_map", name), |b| {
            b.iter(|| {
                let mut s = store.session(Some(root)).unwrap();
                let m = s.memory(&id, RESERVATION).unwrap();
                black_box(m.base());
            })
        });
        if size == 16 * MIB {
            let naive = naive_image(dir.path(), &store, &root, &id);
            let n = Naive {
                dir: dir.path().to_path_buf(),
                n: 0,
            };
            group.bench_function("baseline_naive_read_16MiB", |b| {
                b.iter(|| black_box(n.open(&naive).len()))
            });
        }
    }
    group.finish();
}

/// Commits `pages` dirty pages spread over the memory; only `commit()` is timed.
fn commit_group(c: &mut Criterion, size: usize, name: &str) {
    let mut group = c.benchmark_group(format!("commit_{name}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    let dir = tempfile::tempdir().unwrap();
    let (store, id, root) = store_with_memory(dir.path(), size);
    let mut seed = 0u64;
    for pages in [1usize, 16, 256, 4096] {
        group.bench_function(BenchmarkId::new("dirty_pages", pages), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut s = store.session(Some(root)).unwrap();
                    let m = s.memory(&id, RESERVATION).unwrap();
                    let stride = (size / OS_PAGE / pages).max(1) * OS_PAGE;
                    for p in 0..pages {
                        seed += 1;
                        write(&m, (p * stride) % size, &noise(seed)[..64]);
                    }
                    let start = Instant::now();
                    let new = s.commit().unwrap();
                    total += start.elapsed();
                    store.delete(&new).unwrap();
                }
                total
            })
        });
    }
    // Naive: the memory was copied in at open; a commit writes and hashes all of it.
    let mut naive = Naive {
        dir: dir.path().to_path_buf(),
        n: 0,
    };
    let mut memory = store.read_memory(&root, &id).unwrap();
    group.bench_function("baseline_naive_1_dirty_page", |b| {
        b.iter(|| {
            memory[0] = memory[0].wrapping_add(1);
            black_box(naive.commit(&memory))
        })
    });
    group.finish();
}

fn commit(c: &mut Criterion) {
    commit_group(c, 16 * MIB, "16MiB");
    commit_group(c, 1024 * MIB, "1GiB");
}

/// Restore (open + read every page) after `n` commits of 10 pages each to a 16 MiB memory.
fn restore(c: &mut Criterion) {
    let mut group = c.benchmark_group("restore_16MiB");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    let size = 16 * MIB;
    for n in [1usize, 10, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, mut root) = store_with_memory(dir.path(), size);
        for i in 0..n {
            let mut s = store.session(Some(root)).unwrap();
            let m = s.memory(&id, RESERVATION).unwrap();
            for p in 0..10 {
                let page = (i * 10 + p) * 7919 % (size / OS_PAGE);
                write(&m, page * OS_PAGE, &heapish((i * 10 + p) as u64));
            }
            let old = root;
            root = s.commit().unwrap();

            store.delete(&old).unwrap();
        }
        group.bench_function(BenchmarkId::new("after_commits", n), |b| {
            b.iter(|| {
                let mut s = store.session(Some(root)).unwrap();
                let m = s.memory(&id, RESERVATION).unwrap();
                let mut sum = 0u64;
                for at in (0..m.len()).step_by(OS_PAGE) {
                    // SAFETY: inside the memory; nothing writes it meanwhile.
                    sum += u64::from(unsafe { *m.base().add(at) });
                }
                black_box(sum)
            })
        });
        if n == 1000 {
            let naive = naive_image(dir.path(), &store, &root, &id);
            let nv = Naive {
                dir: dir.path().to_path_buf(),
                n: 0,
            };
            group.bench_function("baseline_naive_read", |b| {
                b.iter(|| {
                    let mem = nv.open(&naive);
                    black_box(
                        mem.iter()
                            .step_by(OS_PAGE)
                            .map(|&b| u64::from(b))
                            .sum::<u64>(),
                    )
                })
            });
        }
    }
    group.finish();
}

/// Commit of a 1 MiB blob after a small insertion (which shifts everything after it): patch vs
/// whole blob. Prints the bytes each stores per commit.
fn blob(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_blob_1MiB");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    let code = b"\0asm\x01\0\0\0blob".to_vec();
    let id = ModuleId::of_wasm(&code);
    // Serialized-map-like content: keys and small values.
    let base: Vec<u8> = (0..MIB / 16)
        .flat_map(|i| {
            let mut rec = format!("key-{i:08}").into_bytes();
            rec.extend_from_slice(&((i as u64 * 2654435761) % 100_000).to_le_bytes());
            rec
        })
        .take(MIB)
        .collect();
    for (name, diff_min) in [("patch", 64 << 10), ("baseline_whole_blob", usize::MAX)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            blob_diff_min: diff_min,
            ..config()
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        let mut s = store.session(None).unwrap();
        s.deploy(Bytecode::hash(&code[..]), vec![], base.clone())
            .unwrap();
        let root = s.commit().unwrap();
        let mut n = 0u32;
        let mut stored = 0u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let mut blob = base.clone();
                    let at = (n as usize * 7919) % (blob.len() - 16);
                    blob.splice(at..at, n.to_le_bytes());
                    let mut s = store.session(Some(root)).unwrap();
                    s.set_blob(&id, blob).unwrap();
                    let start = Instant::now();
                    let new = s.commit().unwrap();
                    total += start.elapsed();
                    let files = dir.path().join(new.to_hex()).join("blob");
                    stored = std::fs::read_dir(&files)
                        .unwrap()
                        .map(|e| e.unwrap().metadata().unwrap().len())
                        .sum::<u64>()
                        - if diff_min == usize::MAX {
                            0
                        } else {
                            base.len() as u64
                        };
                    store.delete(&new).unwrap();
                }
                total
            })
        });
        println!("commit_blob_1MiB/{name}: {stored} new bytes stored per commit");
    }
    group.finish();
}

/// 100 commits each writing 10 pages of a 64 MiB memory, keeping every commit. `hot`: the pages
/// come from a working set of 32; otherwise ten new pages every commit. `random`: the written pages
/// are incompressible instead of heap-like.
fn footprint_case(hot: bool, random: bool) -> String {
    let size = 64 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let code = b"\0asm\x01\0\0\0footprint".to_vec();
    let id = ModuleId::of_wasm(&code);
    let store = Store::open(dir.path(), config()).unwrap();
    // A genesis memory of 64 MiB of non-zero heap-like data: the image really takes 64 MiB.
    let genesis: Vec<u8> = (0..size / OS_PAGE)
        .flat_map(|p| heapish(p as u64 + 7))
        .collect();
    let mut s = store.session(None).unwrap();
    s.deploy(Bytecode::hash(&code[..]), genesis.clone(), vec![])
        .unwrap();
    drop(genesis);
    let mut root = s.commit().unwrap();
    let mut compressed_written = 0usize;
    for i in 0..100usize {
        let mut s = store.session(Some(root)).unwrap();
        let m = s.memory(&id, RESERVATION).unwrap();
        let mut written = Vec::new();
        for p in 0..10usize {
            let page = if hot {
                // A working set of 32 pages (stack, allocator, hot state).
                (i * 7 + p * 3) % 32
            } else {
                // Ten new pages every commit, spread over the memory.
                (i * 10 + p) * 7919 % (size / OS_PAGE)
            };
            let seed = (i * 100 + p) as u64 * 31;
            let data = if random { noise(seed) } else { heapish(seed) };
            write(&m, page * OS_PAGE, &data);
            written.extend_from_slice(&data);
        }
        compressed_written += zstd::bulk::compress(&written, 1).unwrap().len();
        root = s.commit().unwrap();
    }
    let (allocated, apparent) = disk_usage(dir.path());
    let reference = size + compressed_written;
    let naive = 101 * size;
    let ratio = allocated as f64 / reference as f64;
    // Why a miss happens: deltas are cumulative (one image + one delta per read), so commit k
    // stores again every page written since the last full image; with new incompressible pages
    // every commit that is quadratic until the delta passes 1/8 of the memory.
    let why = if ratio > 1.5 {
        "; MISSED: cumulative deltas re-store every page written since the last full image"
    } else {
        ""
    };
    format!(
        "footprint_{}: 100 commits x 10 pages of a 64 MiB memory: on disk {:.1} MiB allocated \
         ({:.1} MiB apparent); reference (image + zstd of written pages) {:.1} MiB; ratio {:.2}x \
         (target 1.5x); naive (one copy per commit) {:.0} MiB{}",
        match (hot, random) {
            (true, false) => "hot_pages",
            (false, false) => "spread_pages",
            (true, true) => "hot_random_pages",
            (false, true) => "spread_random_pages",
        },
        allocated as f64 / MIB as f64,
        apparent as f64 / MIB as f64,
        reference as f64 / MIB as f64,
        ratio,
        naive as f64 / MIB as f64,
        why,
    )
}

fn footprint() {
    let report: String = [(true, false), (false, false), (true, true), (false, true)]
        .into_iter()
        .map(|(hot, random)| footprint_case(hot, random) + "\n")
        .collect();
    print!("{report}");
    extra_report("footprint.txt", &report);
}

/// A durable commit of one written page (fsync on) against the floor on the same disk: one
/// 4 KiB file written, `fdatasync`, renamed, its directory fsynced; and the same commit without
/// fsync, the part of it that is not syncing.
fn durable_commit(c: &mut Criterion) {
    use std::io::Write as _;
    let mut group = c.benchmark_group("durable_commit_1_page");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let floor = dir.path().join("floor");
    std::fs::create_dir(&floor).unwrap();
    let mut n = 0u64;
    let page = noise(1);
    let (store, id, mut root) = store_with_memory(&dir.path().join("store"), MIB);
    drop(store);
    // The groups before this one leave the disk writing back what they dirtied, which slowed
    // the floor, measured first, up to 7x in runs of the whole file: flushed first.
    rustix::fs::sync();
    group.bench_function("baseline_floor", |b| {
        b.iter(|| {
            n += 1;
            let tmp = floor.join(format!("{n}.tmp"));
            let mut file = std::fs::File::create(&tmp).unwrap();
            file.write_all(&page).unwrap();
            file.sync_data().unwrap();
            std::fs::rename(&tmp, floor.join(n.to_string())).unwrap();
            std::fs::File::open(&floor).unwrap().sync_all().unwrap();
        })
    });
    // The same commit without any sync: what the durable ones add to it is their syncs.
    for (name, sync, fsync) in [
        ("commit", SyncMode::EachFile, true),
        ("commit_syncfs", SyncMode::WholeFileSystem, true),
        ("commit_no_fsync", SyncMode::EachFile, false),
    ] {
        let config = StoreConfig {
            sync,
            fsync,
            ..StoreConfig::default()
        };
        let store = Store::open(&dir.path().join("store"), config).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let mut s = store.session(Some(root)).unwrap();
                let m = s.memory(&id, RESERVATION).unwrap();
                write(&m, 5 * OS_PAGE, &n.to_le_bytes());
                root = s.commit().unwrap();
            })
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    footprint();
    session_open(&mut c);
    commit(&mut c);
    restore(&mut c);
    blob(&mut c);
    durable_commit(&mut c);
    c.final_summary();
}
