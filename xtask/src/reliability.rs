//! `cargo xtask fuzz` and `cargo xtask load`: the long runs of the reliability suite.
//!
//! - `fuzz --seconds N [--sanitizer S] [TARGET...]` runs each cargo-fuzz target of `fuzz/` for
//!   N seconds (all targets when none is named), installing cargo-fuzz if it is missing. It uses
//!   a nightly toolchain when rustup has one, else the pinned stable one with
//!   `RUSTC_BOOTSTRAP=1` (cargo-fuzz needs `-Z` flags). It prints the executions per target,
//!   read from libFuzzer's final statistics, and fails if a target found a crash.
//! - `load --seconds N` runs the load test in release mode and prints its report.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{Result, cargo, root};

const LOAD_TEST: &str = "load::load_threads_sessions_commits_deletes_under_cache_pressure";

/// Parses `--seconds N` out of `args`; returns it and the remaining arguments.
fn seconds(args: &[String], usage: &str) -> Result<(u64, Vec<String>)> {
    let mut seconds = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--seconds" {
            let n = it.next().ok_or_else(|| usage.to_owned())?;
            seconds = Some(
                n.parse::<u64>()
                    .map_err(|_| format!("--seconds takes a whole number, not `{n}`"))?,
            );
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((seconds.ok_or_else(|| usage.to_owned())?, rest))
}

/// `cargo xtask load --seconds N`.
pub(crate) fn load(args: &[String]) -> Result<()> {
    let usage = "usage: cargo xtask load --seconds N";
    let (n, rest) = seconds(args, usage)?;
    if !rest.is_empty() {
        return Err(usage.to_owned());
    }
    cargo(
        &[
            "test",
            "--release",
            "-p",
            "strata-tests",
            "--test",
            "all",
            "--",
            "--exact",
            LOAD_TEST,
            "--nocapture",
        ],
        &[("STRATA_LOAD_SECONDS", &n.to_string())],
    )
}

/// The cargo-fuzz targets: the file names under fuzz/fuzz_targets/.
fn targets(fuzz: &Path) -> Result<Vec<String>> {
    let dir = fuzz.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".rs")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn has_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("nightly"))
        })
}

/// A sanitizer build gets its own target directory, so that switching between `none` and
/// `address` does not rebuild everything each time.
fn target_dir(sanitizer: &str) -> Vec<String> {
    if sanitizer == "none" {
        Vec::new()
    } else {
        vec![
            "--target-dir".to_owned(),
            format!("target/sanitizer-{sanitizer}"),
        ]
    }
}

/// What libFuzzer reported at the end of one run.
#[derive(Default)]
struct Outcome {
    execs: Option<u64>,
    seconds: f64,
    crashed: bool,
    artifact: Option<String>,
    tail: Vec<String>,
}

/// Runs one target for `secs` seconds, echoing libFuzzer's progress sparsely.
fn run_target(
    fuzz: &Path,
    target: &str,
    secs: u64,
    nightly: bool,
    sanitizer: &str,
) -> Result<Outcome> {
    for dir in ["corpus", "regressions"] {
        let d = fuzz.join(dir).join(target);
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let mut cmd = Command::new("cargo");
    if nightly {
        cmd.arg("+nightly");
    } else {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.args(["fuzz", "run", "--sanitizer", sanitizer])
        .args(target_dir(sanitizer))
        .arg(target)
        .arg(format!("corpus/{target}"))
        .arg(format!("regressions/{target}"))
        .args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
            "-rss_limit_mb=4096",
            "-timeout=60",
        ])
        .current_dir(fuzz)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    eprintln!("$ {cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start cargo fuzz: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut outcome = Outcome::default();
    let mut last_pulse = Instant::now();
    for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
        let interesting = line.contains("stat::")
            || line.starts_with("Done ")
            || line.contains("ERROR")
            || line.contains("panicked")
            || line.contains("SUMMARY")
            || line.contains("Test unit written")
            || line.starts_with("error")
            || line.contains("Compiling strata")
            || line.contains("Finished");
        if interesting || last_pulse.elapsed().as_secs() >= 60 {
            eprintln!("  [{target}] {line}");
            if !interesting {
                last_pulse = Instant::now();
            }
        }
        if let Some(n) = line
            .strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
        {
            outcome.execs = Some(n);
        }
        if let Some(rest) = line.strip_prefix("Done ")
            && outcome.execs.is_none()
        {
            outcome.execs = rest.split(' ').next().and_then(|n| n.parse().ok());
        }
        if line.contains("Test unit written to") {
            outcome.artifact = line.rsplit(' ').next().map(str::to_owned);
        }
        outcome.tail.push(line);
        if outcome.tail.len() > 40 {
            outcome.tail.remove(0);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cargo fuzz did not finish: {e}"))?;
    outcome.seconds = start.elapsed().as_secs_f64();
    outcome.crashed = !status.success();
    Ok(outcome)
}

/// `cargo xtask fuzz --seconds N [--sanitizer S] [TARGET...]`.
pub(crate) fn fuzz(args: &[String]) -> Result<()> {
    let usage = "usage: cargo xtask fuzz --seconds N [--sanitizer none|address] [TARGET...]";
    let (secs, rest) = seconds(args, usage)?;
    let mut sanitizer = "none".to_owned();
    let mut chosen = Vec::new();
    let mut it = rest.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--sanitizer" {
            sanitizer = it.next().ok_or_else(|| usage.to_owned())?;
        } else if arg.starts_with('-') {
            return Err(usage.to_owned());
        } else {
            chosen.push(arg);
        }
    }
    let fuzz = root().join("fuzz");
    let all = targets(&fuzz)?;
    if let Some(bad) = chosen.iter().find(|t| !all.contains(t)) {
        return Err(format!(
            "no fuzz target `{bad}`; targets: {}",
            all.join(", ")
        ));
    }
    let chosen = if chosen.is_empty() { all } else { chosen };

    if !has_cargo_fuzz() {
        eprintln!("cargo-fuzz is missing: installing it");
        cargo(&["install", "cargo-fuzz", "--locked"], &[])?;
    }
    let nightly = has_nightly();
    eprintln!(
        "fuzzing {} target(s) for {secs} s each with the {} toolchain, sanitizer {sanitizer}",
        chosen.len(),
        if nightly {
            "nightly"
        } else {
            "stable (RUSTC_BOOTSTRAP=1)"
        }
    );
    // Build everything first, so that the time per target is fuzzing time.
    let mut build = Command::new("cargo");
    if nightly {
        build.arg("+nightly");
    } else {
        build.env("RUSTC_BOOTSTRAP", "1");
    }
    build
        .args(["fuzz", "build", "--sanitizer", &sanitizer])
        .args(target_dir(&sanitizer))
        .current_dir(&fuzz);
    crate::run(build)?;

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in &chosen {
        let outcome = run_target(&fuzz, target, secs, nightly, &sanitizer)?;
        if outcome.crashed {
            eprintln!("--- {target} failed; last lines:");
            for line in &outcome.tail {
                eprintln!("  {line}");
            }
            failed.push(format!(
                "{target} (input: {}; copy it to fuzz/regressions/{target}/ and file a fix)",
                outcome
                    .artifact
                    .as_deref()
                    .unwrap_or("see the output above")
            ));
        }
        rows.push((target.clone(), outcome));
    }
    println!("| target | seconds | executions | exec/s | result |");
    println!("|---|---|---|---|---|");
    for (target, o) in &rows {
        let execs = o.execs.map_or("?".to_owned(), |n| n.to_string());
        let rate = o
            .execs
            .map_or("?".to_owned(), |n| format!("{:.0}", n as f64 / o.seconds));
        let result = if o.crashed { "CRASH" } else { "ok" };
        println!(
            "| {target} | {:.0} | {execs} | {rate} | {result} |",
            o.seconds
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz targets failed: {}", failed.join("; ")))
    }
}
