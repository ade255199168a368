//! Project automation, run as `cargo xtask <task>`.
//!
//! Kept free of dependencies (as rust-analyzer's xtask is) so it builds in seconds:
//! - `ci`: everything CI checks: fmt, clippy, tests (with the tidy test and the short reliability
//!   runs), rustdoc with warnings denied; first it installs `redis-server` if it is missing (the
//!   remote cache tests start their own), or fails with the command to run when not root;
//! - `bench`: runs the criterion benchmarks and writes their summary to `docs/BENCHMARKS.md`;
//! - `crash [--rounds N]`: the crash harness of the commit store with N kill rounds;
//! - `fuzz --seconds N [TARGET...]`, `load --seconds N`: the long reliability runs (see
//!   `reliability.rs`);
//! - `differential [ARGS...]`: builds the separate `differential/` workspace and compares
//!   vm-cosmwasm with cosmwasm-vm 3.0.10 step by step (not part of `ci`: it builds wasmer);
//! - `corpus [DIR]`: fetches the npm part of the benchmark corpus with `npm pack`;
//! - `check-crates [--test] [ARGS...]`: `cargo check -p <crate>` (or `cargo test -p <crate>`)
//!   for each library crate alone, so that no crate leans on a dependency feature that only
//!   another workspace member turns on (kept out of `ci` for time: each distinct feature set of
//!   wasmtime is built anew).

mod bench;
mod differential;
mod manifest;
mod plot;
mod reliability;
#[cfg(test)]
mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..]),
        Some("crash") => crash(&args[1..]),
        Some("fuzz") => reliability::fuzz(&args[1..]),
        Some("load") => reliability::load(&args[1..]),
        Some("corpus") => corpus(&args[1..]),
        Some("check-crates") => check_crates(&args[1..]),
        Some("differential") => differential::run(&args[1..]),
        Some("help") | Some("--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>
tasks:
  ci                 fmt check, clippy -D warnings, all tests, rustdoc -D warnings
                     (installs redis-server first if missing, when run as root)
  bench [FILTER]     criterion benchmarks; writes docs/BENCHMARKS.md and docs/plots/*.svg
                     (with a FILTER: re-measures matching groups, keeps the others)
  bench --report     rewrite docs/BENCHMARKS.md from the results in target/criterion
  crash [--rounds N] SIGKILL crash rounds against the commit store (default 1000)
  fuzz --seconds N [--sanitizer S] [TARGET...]  cargo-fuzz each target for N seconds
  load --seconds N   the multi-threaded load test in release mode
  differential [ARGS...]  build differential/ (release) and compare vm-cosmwasm with cosmwasm-vm
                     3.0.10 on hackatom and cyberpunk (ARGS: --no-sweep, --only NAME)
  corpus [DIR]       fetch the npm corpus modules with `npm pack` (default: ../shared/corpus)
  check-crates [--test] [ARGS...]  `cargo check -p CRATE ARGS...` for each library crate of
                     crates/ alone (not in ci: slow); ARGS = --all-targets includes tests and
                     benches; --test runs `cargo test -p CRATE ARGS...` instead, which also finds
                     a feature only needed at run time (wasmtime's `wat`: `Module::new` on text)";

/// The workspace root: xtask lives one level below it.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Whether `name` is an executable file in a folder of `PATH`.
fn on_path(name: &str) -> bool {
    env::var_os("PATH").is_some_and(|path| {
        env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The remote cache layer's tests start their own `redis-server` (and fail without one, never
/// skip): install it from the distribution's packages when it is missing and we are root, else
/// fail with the one command to run.
fn ensure_redis_server() -> Result<()> {
    if env::var_os("STRATA_REDIS_SERVER").is_some() || on_path("redis-server") {
        return Ok(());
    }
    let install = "apt-get update && apt-get install -y redis-server";
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        return Err(format!(
            "redis-server is missing (the remote cache tests run one): run `sudo sh -c '{install}'`"
        ));
    }
    eprintln!("xtask ci: redis-server is missing; installing it");
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(cmd)
    };
    apt(&["update"])?;
    apt(&["install", "-y", "redis-server"])?;
    if on_path("redis-server") {
        Ok(())
    } else {
        Err(format!("`{install}` did not install redis-server"))
    }
}

/// Runs `cargo` with `args` in the workspace root, failing on a non-zero exit.
pub(crate) fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    run(cmd)
}

fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn ci() -> Result<()> {
    ensure_redis_server()?;
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(&["test", "--workspace", "--locked"], &[])?;
    cargo(
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    eprintln!("xtask ci: all checks passed");
    Ok(())
}

/// `cargo xtask check-crates`: each library crate checked on its own, so that the features it
/// gets are only those it (and its own dependencies) ask for. In a workspace build, cargo unifies
/// features across the members built together, which hides a crate that uses, say, wasmtime's
/// `wat` feature without enabling it. The crates are read from `crates/*/Cargo.toml`: every crate
/// with a library target, except those its own manifest marks `publish = false` (dev-only).
///
/// `cargo check` finds what fails to compile without a feature; a feature that only changes
/// behaviour (wasmtime's `wat`: `Module::new` on text compiles either way and fails at run time)
/// needs the crate's own tests run alone, which `--test` does.
fn check_crates(args: &[String]) -> Result<()> {
    let (verb, args) = match args.split_first() {
        Some((flag, rest)) if flag == "--test" => ("test", rest),
        _ => ("check", args),
    };
    let crates = manifest::crates(&root())?;
    let mut failed = Vec::new();
    let mut checked = Vec::new();
    for krate in &crates {
        if !krate.is_published_library() {
            let why = if krate.is_library() {
                "publish = false"
            } else {
                "no library"
            };
            eprintln!("check-crates: skipping {} ({why})", krate.name);
            continue;
        }
        let mut check = vec![verb, "--locked", "-p", krate.name.as_str()];
        check.extend(args.iter().map(String::as_str));
        match cargo(&check, &[]) {
            Ok(()) => checked.push(krate.name.as_str()),
            Err(e) => failed.push(format!("{}: {e}", krate.name)),
        }
    }
    if checked.is_empty() && failed.is_empty() {
        return Err("check-crates found no library crate under crates/".to_owned());
    }
    if failed.is_empty() {
        eprintln!(
            "xtask check-crates: {} crates pass `cargo {verb}` alone: {}",
            checked.len(),
            checked.join(", ")
        );
        Ok(())
    } else {
        Err(format!(
            "crates that fail `cargo {verb}` alone: {}",
            failed.join("; ")
        ))
    }
}

fn crash(args: &[String]) -> Result<()> {
    let rounds = match args {
        [] => "1000".to_owned(),
        [flag, n] if flag == "--rounds" => {
            n.parse::<u32>()
                .map_err(|_| format!("--rounds takes a whole number, not `{n}`"))?;
            n.clone()
        }
        _ => return Err("usage: cargo xtask crash [--rounds N]".to_owned()),
    };
    // The store's own crash test, then the whole system's (vm-host through the store).
    for (package, target) in [("store-commit", "store"), ("strata-tests", "all")] {
        cargo(
            &[
                "test",
                "--release",
                "-p",
                package,
                "--test",
                target,
                "--",
                "crash",
                "--nocapture",
            ],
            &[("STRATA_CRASH_ROUNDS", &rounds)],
        )?;
    }
    Ok(())
}

/// The npm packages of the corpus: (package@version, file inside the tarball, corpus file name).
const NPM_CORPUS: &[(&str, &str, &str)] = &[
    (
        "web-tree-sitter@0.27.1",
        "package/web-tree-sitter.wasm",
        "web-tree-sitter-0.27.1.wasm",
    ),
    (
        "sql.js@1.16.0",
        "package/dist/sql-wasm.wasm",
        "sqljs-1.16.0.wasm",
    ),
    (
        "esbuild-wasm@0.28.2",
        "package/esbuild.wasm",
        "esbuild-wasm-0.28.2.wasm",
    ),
];

fn corpus(args: &[String]) -> Result<()> {
    let dir = match args {
        [] => root().join("../shared/corpus"),
        [dir] => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask corpus [DIR]".to_owned()),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let scratch = env::temp_dir().join(format!("strata-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create scratch dir: {e}"))?;
    for (package, inner, name) in NPM_CORPUS {
        let target = dir.join(name);
        if target.exists() {
            eprintln!("{name}: already there");
            continue;
        }
        let mut pack = Command::new("npm");
        pack.args(["pack", "--silent", package])
            .current_dir(&scratch);
        run(pack)?;
        let tarball = std::fs::read_dir(&scratch)
            .map_err(|e| format!("cannot list scratch dir: {e}"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.extension().is_some_and(|ext| ext == "tgz"))
            .ok_or_else(|| format!("npm pack {package} produced no tarball"))?;
        let mut untar = Command::new("tar");
        untar
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&scratch)
            .arg(inner);
        run(untar)?;
        std::fs::copy(scratch.join(inner), &target)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        std::fs::remove_file(&tarball).map_err(|e| format!("cannot remove tarball: {e}"))?;
        eprintln!("{name}: fetched");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!(
        "the CosmWasm contracts (hackatom, cyberpunk) come from the CosmWasm repository's packages/vm/testdata"
    );
    Ok(())
}
