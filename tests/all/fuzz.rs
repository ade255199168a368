//! The fuzz targets of `strata_tests` (tests/lib.rs) in `cargo test`, without nightly or
//! cargo-fuzz: each target runs on a bounded number of seeded random inputs (mutations of seed
//! inputs and random bytes), and every file under `fuzz/regressions/<target>/` is replayed.
//!
//! `STRATA_FUZZ_SECONDS` sets the time per target (default 1 s, at most 400 inputs unless the
//! variable is set); `STRATA_FUZZ_SEED` changes the seed. A failing input is saved under the
//! cargo target tmp dir and named in the failure message, ready to become a regression file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const COUNTER: &str = include_str!("../../crates/vm-host/contracts/counter.wat");
const BANK: &str = include_str!("../../crates/vm-host/contracts/bank.wat");

/// A small, fast, seeded generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Seed inputs per target: valid modules for the deploy target, nothing for the others.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "deploy_bytes" => [
            COUNTER,
            BANK,
            "(module)",
            "(module (memory 1) (data (i32.const 0) \"hi\") (func $s) (start $s))",
            "(module (global (mut i64) (i64.const 1)) (func (export \"f\") (result i32) (i32.const 1)))",
            "(module (import \"env\" \"db_write\" (func (param i32 i32 i32 i32))) (memory 1))",
        ]
        .iter()
        .map(|wat| wat::parse_str(wat).expect("valid seed"))
        .collect(),
        _ => Vec::new(),
    }
}

/// One input: a mutated seed or random bytes.
fn input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if seeds.is_empty() || rng.below(4) == 0 {
        let len = match rng.below(4) {
            0 => rng.below(16),
            1 => rng.below(256),
            _ => rng.below(4096),
        };
        return rng.bytes(len);
    }
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if at < data.len() => data[at] ^= 1 << rng.below(8),
            1 if at < data.len() => data[at] = rng.next() as u8,
            2 => {
                let n = 1 + rng.below(8);
                let extra = rng.bytes(n);
                data.splice(at..at, extra);
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn seconds() -> Option<f64> {
    std::env::var("STRATA_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// Runs `target` on seeded random inputs for the time budget; on a panic, saves the input and
/// fails with its path.
fn run(name: &str) -> Result<()> {
    let target = strata_tests::target(name).context("unknown target")?;
    let (budget, max_inputs) = match seconds() {
        Some(s) => (Duration::from_secs_f64(s), usize::MAX),
        None => (Duration::from_secs(1), 400),
    };
    let base_seed: u64 = std::env::var("STRATA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5742_4154);
    let seed = name.bytes().fold(base_seed, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let mut rng = Rng::new(seed);
    let seeds = seeds(name);
    let start = Instant::now();
    let mut count = 0usize;
    // The seeds themselves first, then random inputs.
    let mut queue: Vec<Vec<u8>> = seeds.iter().rev().cloned().collect();
    while count < max_inputs && (count < 10 || start.elapsed() < budget) {
        let data = queue.pop().unwrap_or_else(|| input(&mut rng, &seeds));
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&data)))
        {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let saved = save_failure(name, &data)?;
            bail!(
                "fuzz target {name} failed on input #{count} (seed {seed}): {message}\n\
                 input saved to {}; copy it to fuzz/regressions/{name}/ and file a fix",
                saved.display()
            );
        }
        count += 1;
    }
    println!(
        "fuzz {name}: {count} inputs in {:.2} s (seed {seed})",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn save_failure(name: &str, data: &[u8]) -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir)?;
    let sum: u64 = data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{name}-{sum:016x}"));
    std::fs::write(&path, data)?;
    Ok(path)
}

#[test]
fn fuzz_deploy_bytes() -> Result<()> {
    run("deploy_bytes")
}

#[test]
fn fuzz_deploy_smith() -> Result<()> {
    run("deploy_smith")
}

#[test]
fn fuzz_tiers_smith() -> Result<()> {
    run("tiers_smith")
}

#[test]
fn fuzz_index_decode() -> Result<()> {
    run("index_decode")
}

#[test]
fn fuzz_index_roundtrip() -> Result<()> {
    run("index_roundtrip")
}

#[test]
fn fuzz_delta_decode() -> Result<()> {
    run("delta_decode")
}

#[test]
fn fuzz_store_files() -> Result<()> {
    run("store_files")
}

#[test]
fn fuzz_cache_file() -> Result<()> {
    run("cache_file")
}

#[test]
fn fuzz_cache_trailer() -> Result<()> {
    run("cache_trailer")
}

#[test]
fn fuzz_cli_args() -> Result<()> {
    run("cli_args")
}

#[test]
fn fuzz_store_model() -> Result<()> {
    run("store_model")
}

/// Every target has a test above and a cargo-fuzz binary.
#[test]
fn fuzz_every_target_is_wired() -> Result<()> {
    let this = include_str!("fuzz.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, _) in strata_tests::TARGETS {
        if !this.contains(&format!("run(\"{name}\")")) {
            bail!("no test runs fuzz target {name}");
        }
        let binary = root.join("fuzz/fuzz_targets").join(format!("{name}.rs"));
        if !binary.exists() {
            bail!("no cargo-fuzz binary {}", binary.display());
        }
    }
    Ok(())
}

/// Replays every saved input under fuzz/regressions/<target>/.
#[test]
fn fuzz_regressions_replay() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let target = strata_tests::target(&name)
            .with_context(|| format!("fuzz/regressions/{name}: no such target"))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(entry.path())?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.sort();
        for file in files {
            if file
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let data = std::fs::read(&file)?;
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                bail!("regression {} fails again", file.display());
            }
            replayed += 1;
        }
    }
    println!("fuzz regressions: {replayed} inputs replayed");
    Ok(())
}
