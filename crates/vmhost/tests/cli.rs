//! End-to-end tests of the `vmhost` binary: its output contract, persistence across processes,
//! one clear line on stderr with a non-zero exit for every kind of bad input, the options, the
//! JSON output, `prune`, `stats` and the logs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const COUNTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contracts/counter.wat");
const BANK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contracts/bank.wat");

fn vmhost(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().expect("vmhost runs")
}

/// `vmhost --dir DIR --no-fsync`, with `RUST_LOG` unset.
fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmhost"));
    command
        .env_remove("RUST_LOG")
        .arg("--dir")
        .arg(dir)
        .arg("--no-fsync");
    command
}

fn json(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    assert_eq!(text.lines().count(), 1, "one JSON document: {text}");
    serde_json::from_str(&text).expect("valid JSON")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "vmhost failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

/// Asserts a failure with exactly one line on stderr containing `needle`.
fn fails(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn deploy(dir: &Path, file: &str) -> (String, String) {
    let out = stdout(&vmhost(dir, &["deploy", file]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(is_hex64(lines[0]), "{out}");
    let root = lines[1].strip_prefix("root ").expect("root line");
    assert!(is_hex64(root), "{out}");
    (lines[0].to_owned(), root.to_owned())
}

fn commits(dir: &Path) -> Vec<String> {
    stdout(&vmhost(dir, &["commits"]))
        .lines()
        .map(|l| l.split(' ').next().expect("root").to_owned())
        .collect()
}

#[test]
fn deploy_call_commit_and_read_old_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let (counter, genesis) = deploy(dir, COUNTER);
    let out = stdout(&vmhost(dir, &["call", "--commit", &counter, "add", "5"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "5");
    let r1 = lines[1]
        .strip_prefix("root ")
        .expect("root line")
        .to_owned();
    let out = stdout(&vmhost(dir, &["call", "--commit", &counter, "add", "-2"]));
    assert_eq!(out.lines().next(), Some("3"));
    // Without --commit nothing is committed.
    stdout(&vmhost(dir, &["call", &counter, "add", "100"]));
    let all = commits(dir);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0], genesis);
    assert_eq!(all[1], r1);
    assert_eq!(stdout(&vmhost(dir, &["call", &counter, "get"])), "3\n");
    assert_eq!(
        stdout(&vmhost(dir, &["call", "--base", &r1, &counter, "get"])),
        "5\n"
    );
    assert_eq!(
        stdout(&vmhost(
            dir,
            &["call", "--base", &genesis, &counter, "genesis_runs"]
        )),
        "1\n"
    );

    let (bank, _) = deploy(dir, BANK);
    stdout(&vmhost(
        dir,
        &["call", "--commit", &bank, "mint", "7", "40"],
    ));
    assert_eq!(
        stdout(&vmhost(dir, &["call", &bank, "balance", "7"])),
        "40\n"
    );
    assert!(stdout(&vmhost(dir, &["verify"])).contains("ok"));

    // Delete a commit: it is refused as a base afterwards, the newer ones still read.
    assert!(stdout(&vmhost(dir, &["delete", &r1])).contains("deleted"));
    fails(
        &vmhost(dir, &["call", "--base", &r1, &counter, "get"]),
        &r1[..16],
    );
    assert_eq!(stdout(&vmhost(dir, &["call", &counter, "get"])), "3\n");
    assert!(vmhost(dir, &["verify"]).status.success());

    assert!(stdout(&vmhost(dir, &["pin", &counter])).contains("pinned"));
    let stats = stdout(&vmhost(dir, &["stats"]));
    assert!(stats.contains("pins 1"), "{stats}");
    assert!(stats.contains(&format!("pin {counter}")), "{stats}");
    assert!(stdout(&vmhost(dir, &["unpin", &counter])).contains("unpinned"));
}

#[test]
fn failed_calls_exit_non_zero_and_commit_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let (counter, _) = deploy(dir, COUNTER);
    let before = commits(dir);
    fails(
        &vmhost(
            dir,
            &["call", "--commit", "--fuel", "1000", &counter, "spin"],
        ),
        "out of fuel",
    );
    fails(
        &vmhost(dir, &["call", "--commit", &counter, "add_then_trap", "3"]),
        "trap",
    );
    assert_eq!(commits(dir), before);
    assert_eq!(stdout(&vmhost(dir, &["call", &counter, "get"])), "0\n");
}

#[test]
fn bad_input_gives_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let (counter, _) = deploy(dir, COUNTER);
    let before = commits(dir);
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0\x01\xff").expect("write");
    let text = dir.join("bad.wat");
    std::fs::write(&text, "(module (func (export \"f\") (result i32)))").expect("write");
    let unknown_root = "ab".repeat(32);
    let unknown_module = "cd".repeat(32);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["call", "--base", &unknown_root, &counter, "get"], "ab"),
        (
            vec!["call", "--base", "xyz", &counter, "get"],
            "invalid root",
        ),
        (vec!["call", &unknown_module, "get"], "unknown module"),
        (vec!["call", "12", "get"], "invalid module id"),
        (vec!["call", &counter, "nope"], "no function"),
        (vec!["call", &counter, "add"], "1 argument(s)"),
        (vec!["call", &counter, "add", "1", "2"], "1 argument(s)"),
        (vec!["call", &counter, "add", "one"], "not a valid i64"),
        (
            vec!["deploy", garbage.to_str().expect("utf-8")],
            "invalid module",
        ),
        (vec!["deploy", text.to_str().expect("utf-8")], "invalid"),
        (vec!["deploy", "/nonexistent/file.wasm"], "cannot read"),
        (vec!["deploy", COUNTER], "already deployed"),
        (vec!["delete", &unknown_root], "ab"),
        (vec!["pin", &unknown_module], "unknown module"),
    ];
    for (args, needle) in cases {
        let out = vmhost(dir, &args);
        fails(&out, needle);
    }
    assert_eq!(commits(dir), before, "nothing changed");
    assert!(vmhost(dir, &["verify"]).status.success());

    // An unreadable VM directory.
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let out = vmhost(&file, &["commits"]);
    fails(&out, "cannot open VM directory");
}

#[test]
fn precompile_fills_the_file_cache_with_the_deployable_module() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let out = stdout(&vmhost(dir, &["precompile", COUNTER, BANK]));
    let ids: Vec<&str> = out
        .lines()
        .map(|l| l.split(' ').next().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert!(ids.iter().all(|id| is_hex64(id)), "{out}");
    let cached = std::fs::read_dir(dir.join("cache"))
        .expect("cache dir")
        .map(|folder| {
            std::fs::read_dir(folder.expect("entry").path())
                .expect("folder")
                .count()
        })
        .sum::<usize>();
    assert_eq!(cached, 2, "one artifact per module");
    let (counter, _) = deploy(dir, COUNTER);
    assert_eq!(counter, ids[0]);
    assert!(commits(dir).len() == 1, "precompile commits nothing");
    fails(
        &vmhost(dir, &["precompile", "/nonexistent.wasm"]),
        "cannot read",
    );
}

#[test]
fn precompile_with_winch_then_cranelift_leaves_both_tiers_and_stats_show_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let tier = ["--tier", "winch-then-cranelift"];
    stdout(&vmhost(
        dir,
        &[&tier[..], &["precompile", COUNTER, BANK]].concat(),
    ));
    let stats = json(&vmhost(dir, &[&tier[..], &["stats", "--json"]].concat()));
    let cache = stats["cache"].as_array().expect("cache array");
    let mut tiers: Vec<(String, u64)> = cache
        .iter()
        .map(|f| {
            assert_eq!(f["in_use"], true, "{stats}");
            let tier = f["tier"].as_str().expect("tier").to_owned();
            (tier, f["entries"].as_u64().expect("entries"))
        })
        .collect();
    tiers.sort();
    // precompile waited for the Cranelift compiles: two modules in each tier's folder.
    assert_eq!(
        tiers,
        [("cranelift".into(), 2), ("winch".into(), 2)],
        "{stats}"
    );
    let text = stdout(&vmhost(dir, &[&tier[..], &["stats"]].concat()));
    assert!(text.contains("entries 2 bytes"), "{text}");
    assert!(text.contains(" tier winch"), "{text}");
    // Without --tier the VM opens with Cranelift only and deploys from its cache.
    let (counter, _) = deploy(dir, COUNTER);
    let out = stdout(&vmhost(dir, &["call", "--commit", &counter, "increment"]));
    assert!(out.starts_with("1\n"), "{out}");
    fails(&vmhost(dir, &["--tier", "fastest", "stats"]), "fastest");
}

#[test]
fn help_documents_every_command_and_option() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vmhost"))
            .args(args)
            .output()
            .expect("vmhost runs");
        stdout(&out)
    };
    let top = help(&["--help"]);
    for option in [
        "--dir",
        "--no-fsync",
        "--verification",
        "trusted",
        "verified",
        "authenticated",
        "--hmac-key-file",
        "--lru-bytes",
        "--cache-bytes",
        "--fuel",
        "--memory-limit",
        "RUST_LOG",
    ] {
        assert!(top.contains(option), "`{option}` not in --help:\n{top}");
    }
    for command in [
        "deploy",
        "call",
        "commits",
        "delete",
        "verify",
        "stats",
        "prune",
        "pin",
        "unpin",
        "precompile",
        "demo",
    ] {
        assert!(top.contains(command), "`{command}` not in --help:\n{top}");
        let own = help(&[command, "--help"]);
        // The global options are documented in each command's help too.
        assert!(own.contains("--verification"), "{command}:\n{own}");
        assert!(own.contains("--memory-limit"), "{command}:\n{own}");
    }
    for command in ["commits", "verify", "stats", "prune"] {
        assert!(help(&[command, "--help"]).contains("--json"), "{command}");
    }
    // The defaults are VmConfig's, shown with units.
    assert!(top.contains("[default: 512MiB]"), "{top}");
    assert!(top.contains("[default: 4GiB]"), "{top}");
}

#[test]
fn read_only_commands_never_create_a_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let typo = dir.path().join("typo");
    let module = "cd".repeat(32);
    let root = "ab".repeat(32);
    for args in [
        vec!["verify"],
        vec!["verify", "--json"],
        vec!["commits"],
        vec!["stats", "--json"],
        vec!["prune"],
        vec!["call", &module, "get"],
        vec!["delete", &root],
        vec!["pin", &module],
        vec!["unpin", &module],
    ] {
        fails(&vmhost(&typo, &args), "not a VM directory");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // An existing directory that is not a VM directory is refused the same way, untouched.
    fails(&vmhost(dir.path(), &["verify"]), "not a VM directory");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    // deploy creates it.
    deploy(&typo, COUNTER);
    assert!(stdout(&vmhost(&typo, &["verify"])).contains("ok"));
}

#[test]
fn json_output_of_commits_stats_and_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let (counter, genesis) = deploy(dir, COUNTER);
    let r1 = stdout(&vmhost(dir, &["call", "--commit", &counter, "add", "5"]))
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("root "))
        .expect("root")
        .to_owned();
    stdout(&vmhost(dir, &["pin", &counter]));

    let commits = json(&vmhost(dir, &["commits", "--json"]));
    let list = commits["commits"].as_array().expect("commits array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["root"], genesis.as_str());
    assert!(list[0]["parent"].is_null());
    assert_eq!(list[0]["modules"][0], counter.as_str());
    assert!(list[0]["seq"].is_u64());
    assert_eq!(list[1]["root"], r1.as_str());
    assert_eq!(list[1]["parent"], genesis.as_str());

    let stats = json(&vmhost(dir, &["stats", "--json"]));
    assert_eq!(stats["commits"], 2);
    assert_eq!(stats["pins"][0], counter.as_str());
    assert!(stats["dir"].is_string());
    assert!(stats["store"]["bytes"].as_u64().expect("bytes") > 0);
    assert!(stats["store"]["apparent_bytes"].as_u64().expect("apparent") > 0);
    assert!(stats["store"]["files"].as_u64().expect("files") > 0);
    let cache = stats["cache"].as_array().expect("cache array");
    assert_eq!(cache.len(), 1, "{stats}");
    assert_eq!(cache[0]["in_use"], true);
    assert_eq!(cache[0]["entries"], 1, "the counter's runtime form");
    assert!(cache[0]["bytes"].as_u64().expect("bytes") > 0);
    assert!(
        cache[0]["folder"]
            .as_str()
            .expect("folder")
            .starts_with('v')
    );

    let verify = json(&vmhost(dir, &["verify", "--json"]));
    assert_eq!(verify["ok"], true);
    assert_eq!(verify["commits"], 2);
    assert_eq!(verify["artifacts"], 1);
    assert_eq!(verify["problems"].as_array().map(Vec::len), Some(0));

    // A damaged cache entry: verify says so in JSON and exits non-zero. (Unpinned first: a
    // pinned module is loaded at open, which replaces a damaged entry.)
    stdout(&vmhost(dir, &["unpin", &counter]));
    let folder = dir
        .join("cache")
        .join(cache[0]["folder"].as_str().expect("folder"));
    let entry = std::fs::read_dir(&folder)
        .expect("folder")
        .next()
        .expect("an entry")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&entry).expect("read");
    bytes[100] ^= 1;
    // Saved files are read-only: replace, as a writer of the folder can.
    std::fs::remove_file(&entry).expect("remove");
    std::fs::write(&entry, bytes).expect("write");
    let out = vmhost(dir, &["verify", "--json"]);
    assert!(!out.status.success());
    let verify: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON on failure too");
    assert_eq!(verify["ok"], false);
    assert_eq!(verify["problems"].as_array().map(Vec::len), Some(1));
}

#[test]
fn prune_frees_the_folders_of_other_engines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let (counter, _) = deploy(dir, COUNTER);
    let other = dir.join("cache").join(format!("v1-{}", "ab".repeat(32)));
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(
        other.join(format!("{}.cwasm", "cd".repeat(32))),
        vec![7; 1000],
    )
    .expect("write");
    // Not a cache folder name: prune leaves it alone.
    let stranger = dir.join("cache").join("notes");
    std::fs::create_dir(&stranger).expect("mkdir");

    let stats = stdout(&vmhost(dir, &["stats"]));
    assert!(
        stats.contains(&format!(
            "cache v1-{} (other engine) entries 1 bytes 1000",
            "ab".repeat(32)
        )),
        "{stats}"
    );
    assert!(stats.contains("(in use) entries 1"), "{stats}");

    let out = stdout(&vmhost(dir, &["prune"]));
    assert!(
        out.contains(&format!("removed {}", other.display())),
        "{out}"
    );
    assert!(
        out.contains("freed 1000 bytes: 1 cache folder(s), 1 file(s)"),
        "{out}"
    );
    assert!(!other.exists());
    assert!(stranger.exists());
    // This engine's cache is untouched: the call loads the cached module.
    assert_eq!(stdout(&vmhost(dir, &["call", &counter, "get"])), "0\n");

    let again = json(&vmhost(dir, &["prune", "--json"]));
    assert_eq!(again["removed_bytes"], 0);
    assert_eq!(again["removed_files"], 0);
    assert_eq!(again["removed_folders"].as_array().map(Vec::len), Some(0));
}

#[test]
fn authenticated_mode_needs_a_long_enough_key_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = tempfile::tempdir().expect("key dir");
    let vm = dir.path();
    let key = keys.path().join("key");
    let other_key = keys.path().join("other-key");
    let short = keys.path().join("short");
    let empty = keys.path().join("empty");
    std::fs::write(&key, [1u8; 32]).expect("write");
    std::fs::write(&other_key, [2u8; 32]).expect("write");
    std::fs::write(&short, b"secret").expect("write");
    std::fs::write(&empty, b"").expect("write");
    let key_arg = key.to_str().expect("utf-8");
    let auth = |key: &str, args: &[&str]| {
        let mut all = vec!["--verification", "authenticated", "--hmac-key-file", key];
        all.extend_from_slice(args);
        vmhost(vm, &all)
    };

    fails(
        &auth(short.to_str().expect("utf-8"), &["deploy", COUNTER]),
        "at least 32",
    );
    fails(
        &auth(empty.to_str().expect("utf-8"), &["deploy", COUNTER]),
        "0 byte(s)",
    );
    fails(
        &auth("/nonexistent/key", &["deploy", COUNTER]),
        "cannot read hmac key file",
    );
    fails(
        &vmhost(
            vm,
            &[
                "--verification",
                "verified",
                "--hmac-key-file",
                key_arg,
                "deploy",
                COUNTER,
            ],
        ),
        "only with --verification authenticated",
    );
    assert!(
        !vm.join("store").exists(),
        "a refused option creates nothing"
    );

    let out = auth(key_arg, &["deploy", COUNTER]);
    let counter = stdout(&out).lines().next().expect("id").to_owned();
    assert!(stdout(&auth(key_arg, &["verify"])).contains("ok"));
    assert_eq!(stdout(&auth(key_arg, &["call", &counter, "get"])), "0\n");
    // Another key does not authenticate the cached module.
    let out = auth(other_key.to_str().expect("utf-8"), &["verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT OK"));
}

#[test]
fn settings_options_reach_the_vm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let (counter, _) = deploy(dir, COUNTER);
    fails(
        &vmhost(dir, &["--fuel", "1000", "call", &counter, "spin"]),
        "out of fuel",
    );
    // A memory limit below the module's memory refuses to instantiate it.
    let out = vmhost(dir, &["--memory-limit", "0", "call", &counter, "get"]);
    assert!(
        !out.status.success(),
        "a 0-byte memory limit must refuse the module"
    );
    let ok = vmhost(
        dir,
        &[
            "--lru-bytes",
            "64MiB",
            "--cache-bytes",
            "none",
            "--memory-limit",
            "1GiB",
            "--verification",
            "trusted",
            "call",
            &counter,
            "get",
        ],
    );
    assert_eq!(stdout(&ok), "0\n");
    // A cache limit smaller than any artifact: the module is compiled and not saved.
    let fresh = tempfile::tempdir().expect("temp dir");
    let out = stdout(&vmhost(
        fresh.path(),
        &["--cache-bytes", "1KiB", "precompile", COUNTER],
    ));
    assert_eq!(out.lines().count(), 1);
    let stats = json(&vmhost(fresh.path(), &["stats", "--json"]));
    assert_eq!(stats["cache"][0]["entries"], 0, "{stats}");
    // Bad values are one line each.
    fails(
        &vmhost(dir, &["--lru-bytes", "lots", "commits"]),
        "--lru-bytes",
    );
    fails(
        &vmhost(dir, &["--memory-limit", "2 parsecs", "commits"]),
        "unknown unit",
    );
    fails(
        &vmhost(dir, &["--verification", "paranoid", "commits"]),
        "paranoid",
    );
    fails(&vmhost(dir, &["call", &counter]), "<FUNCTION>");
    fails(&vmhost(dir, &["frobnicate"]), "frobnicate");
}

#[test]
fn rust_log_shows_opening_compiles_commits_rejections_and_evictions_on_stderr() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = command(dir.path())
        .env("RUST_LOG", "debug")
        .args(["deploy", COUNTER])
        .output()
        .expect("vmhost runs");
    // stdout keeps its contract.
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    let logs = String::from_utf8_lossy(&out.stderr);
    for event in ["opened", "compiled", "deployed", "committed"] {
        assert!(logs.contains(event), "`{event}` not logged:\n{logs}");
    }
    // Without RUST_LOG, nothing on stderr.
    let quiet = vmhost(dir.path(), &["commits"]);
    stdout(&quiet);
    assert!(quiet.stderr.is_empty());

    // A damaged cache file is rejected (and recompiled), with a warning.
    let counter = text.lines().next().expect("id");
    let folder = std::fs::read_dir(dir.path().join("cache"))
        .expect("cache")
        .next()
        .expect("a folder")
        .expect("entry")
        .path();
    let entry = std::fs::read_dir(&folder)
        .expect("folder")
        .next()
        .expect("an entry")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&entry).expect("read");
    bytes[100] ^= 1;
    // Saved files are read-only: replace, as a writer of the folder can.
    std::fs::remove_file(&entry).expect("remove");
    std::fs::write(&entry, bytes).expect("write");
    let out = command(dir.path())
        .env("RUST_LOG", "warn")
        .args(["call", counter, "get"])
        .output()
        .expect("vmhost runs");
    assert_eq!(stdout(&out), "0\n");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("cache file rejected"), "{logs}");
    assert!(
        !logs.contains("compiled"),
        "info events are below warn: {logs}"
    );

    // A byte limit that holds one module: the second evicts the first.
    let small = tempfile::tempdir().expect("temp dir");
    let out = command(small.path())
        .env("RUST_LOG", "debug")
        .args(["--cache-bytes", "30KiB", "precompile", COUNTER, BANK])
        .output()
        .expect("vmhost runs");
    stdout(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("cache file evicted"), "{logs}");
}

/// A damaged pinned module and a bad line in `pins` do not stop the VM from opening: `verify`
/// reports both and exits non-zero, `stats` lists them, `unpin` repairs the file.
#[test]
fn failed_pins_are_reported_and_unpin_repairs_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let (counter, genesis) = deploy(dir, COUNTER);
    stdout(&vmhost(dir, &["pin", &counter]));
    // Damaged bytecode, and no cache entry to hide it: the pin's compile reads the bytecode.
    let bytecode = dir
        .join("store")
        .join(&genesis)
        .join("bytecode")
        .join(&counter);
    let mut bytes = std::fs::read(&bytecode).expect("read");
    bytes[10] ^= 1;
    // Committed files are read-only: an outsider makes it writable first.
    std::fs::set_permissions(&bytecode, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&bytecode, bytes).expect("write");
    std::fs::remove_dir_all(dir.join("cache")).expect("remove the cache");
    let pins = dir.join("pins");
    let mut text = std::fs::read_to_string(&pins).expect("pins");
    text.push_str("not a module id\x1b[2J\n");
    std::fs::write(&pins, &text).expect("write pins");

    let out = vmhost(dir, &["verify", "--json"]);
    assert!(!out.status.success(), "verify must fail");
    let verify: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let problems: Vec<&str> = verify["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().expect("a string"))
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("pins: pinned module") && p.contains(&counter)),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("pins: line \"not a module id\\u{1b}[2J\"")),
        "{problems:?}"
    );
    let stats = json(&vmhost(dir, &["stats", "--json"]));
    let failed = stats["failed_pins"].as_array().expect("failed_pins");
    assert_eq!(failed.len(), 2, "{stats}");
    assert_eq!(failed[0]["id"], counter.as_str());
    assert!(failed[1]["id"].is_null());
    assert_eq!(failed[1]["line"], "not a module id\x1b[2J");
    let text = stdout(&vmhost(dir, &["stats"]));
    assert_eq!(text.matches("failed pin: ").count(), 2, "{text}");

    assert_eq!(
        stdout(&vmhost(dir, &["unpin", &counter])).trim(),
        format!("unpinned {counter}")
    );
    assert_eq!(std::fs::read_to_string(&pins).expect("pins"), "");
    let stats = json(&vmhost(dir, &["stats", "--json"]));
    assert_eq!(stats["failed_pins"].as_array().map(Vec::len), Some(0));
    assert_eq!(stats["pins"].as_array().map(Vec::len), Some(0));
    // What is left is the damaged bytecode itself, which the store's verify reports.
    let out = vmhost(dir, &["verify"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("pins:"), "{text}");
    assert!(text.contains("store:"), "{text}");
}

/// The fleet: several `vmhost` processes, each on its own directory, sharing one Redis server
/// (a `redis-server` of the test's own; a missing one fails the test).
mod fleet {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use strata_harness::RedisServer;

    use super::stdout;

    /// A new module that takes a few seconds to compile (long enough to kill its compiler
    /// mid-way): `functions` functions of `ops` arithmetic steps each, made unique by `seed`.
    fn slow_module(dir: &Path, seed: u64) -> PathBuf {
        let mut wat = String::from("(module (memory (export \"memory\") 1)\n");
        for f in 0..600u64 {
            wat.push_str(&format!(
                "(func (export \"f{f}\") (param i64) (result i64) (local.get 0)"
            ));
            for op in 0..500u64 {
                let k = (f * 500 + op).wrapping_mul(2_654_435_761) % 1_000_003 + seed;
                wat.push_str(&format!(
                    " (i64.const {k}) (i64.add) (i64.const {}) (i64.mul) (local.get 0) (i64.xor)",
                    op + 3
                ));
            }
            wat.push_str(")\n");
        }
        wat.push(')');
        let path = dir.join(format!("slow-{seed}.wasm"));
        std::fs::write(&path, wat::parse_str(&wat).expect("valid wat")).expect("write module");
        path
    }

    struct Fleet {
        server: RedisServer,
        root: tempfile::TempDir,
        key: PathBuf,
    }

    impl Fleet {
        fn new() -> Fleet {
            let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
            let root = tempfile::tempdir().expect("temp dir");
            let key = root.path().join("fleet.key");
            std::fs::write(&key, [7u8; 32]).expect("key file");
            Fleet { server, root, key }
        }

        /// `vmhost precompile` on node `n`'s directory, logging its compiles.
        fn precompile(&self, n: usize, module: &Path, lease_ttl_ms: u64) -> Child {
            Command::new(env!("CARGO_BIN_EXE_vmhost"))
                .env("RUST_LOG", "vm_host=info,vmhost=info")
                .arg("--dir")
                .arg(self.root.path().join(format!("node{n}")))
                .arg("--no-fsync")
                .args(["--remote-cache", self.server.url()])
                .arg("--remote-key-file")
                .arg(&self.key)
                .args(["--remote-lease-ttl-ms", &lease_ttl_ms.to_string()])
                .arg("precompile")
                .arg(module)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("vmhost starts")
        }
    }

    /// Compiles logged by a finished `vmhost` (the loader's "compiled" events).
    fn compiles(out: &std::process::Output) -> usize {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("compiled") && !l.contains("precompiled"))
            .count()
    }

    #[test]
    fn four_nodes_compile_a_new_module_once_across_the_fleet() {
        let fleet = Fleet::new();
        let module = slow_module(fleet.root.path(), 1);
        let nodes: Vec<Child> = (0..4)
            .map(|n| fleet.precompile(n, &module, 10_000))
            .collect();
        let outs: Vec<_> = nodes
            .into_iter()
            .map(|c| c.wait_with_output().expect("vmhost ends"))
            .collect();
        let ids: Vec<String> = outs.iter().map(stdout).collect();
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        let total: usize = outs.iter().map(compiles).sum();
        let logs: Vec<_> = outs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr))
            .collect();
        assert_eq!(total, 1, "compiled once across the fleet: {logs:#?}");
    }

    #[test]
    fn a_killed_lease_holder_only_delays_the_fleet() {
        let fleet = Fleet::new();
        let module = slow_module(fleet.root.path(), 2);
        let ttl = Duration::from_millis(1500);
        let mut nodes: Vec<Child> = (0..4)
            .map(|n| fleet.precompile(n, &module, ttl.as_millis() as u64))
            .collect();
        let mut con = redis::Client::open(fleet.server.url())
            .and_then(|c| c.get_connection())
            .expect("raw client");
        // The lease's value leads with its holder's pid.
        let started = Instant::now();
        let holder = loop {
            let leases: Vec<String> = redis::cmd("KEYS")
                .arg("strata:v1:lease:*")
                .query(&mut con)
                .expect("KEYS");
            if let Some(lease) = leases.first() {
                let token: Option<String> =
                    redis::cmd("GET").arg(lease).query(&mut con).expect("GET");
                if let Some(pid) = token.and_then(|t| t.split(':').next()?.parse::<u32>().ok()) {
                    break pid;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no lease taken"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let at = nodes
            .iter()
            .position(|c| c.id() == holder)
            .expect("the holder is one of the nodes");
        let mut killed = nodes.remove(at);
        killed.kill().expect("SIGKILL");
        let killed_at = Instant::now();
        let status = killed.wait().expect("wait");
        assert!(!status.success());
        let outs: Vec<_> = nodes
            .into_iter()
            .map(|c| c.wait_with_output().expect("vmhost ends"))
            .collect();
        for out in &outs {
            stdout(out); // each survivor finished
        }
        let total: usize = outs.iter().map(compiles).sum();
        assert_eq!(total, 1, "one survivor compiled, after the lease expired");
        // After the ttl at worst, plus one compile: a bound, not a speed.
        assert!(killed_at.elapsed() < Duration::from_secs(120));
    }
}

#[test]
fn remote_cache_options_need_a_key_file_and_create_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vm = dir.path().join("vm");
    let key = dir.path().join("short.key");
    std::fs::write(&key, b"short").expect("key");
    let missing = dir.path().join("missing.key");
    let url = "redis://127.0.0.1:1/";
    let args = ["--remote-cache", url, "precompile", COUNTER];
    fails(
        &vmhost(&vm, &args),
        "--remote-cache needs --remote-key-file",
    );
    let with_key = |k: &Path| {
        let mut c = command(&vm);
        c.args(["--remote-cache", url, "--remote-key-file"]).arg(k);
        c.args(["precompile", COUNTER])
            .output()
            .expect("vmhost runs")
    };
    fails(&with_key(&key), "a key needs at least 32");
    fails(&with_key(&missing), "cannot read remote key file");
    assert!(!missing.exists() && !vm.exists(), "nothing created");
    fails(
        &vmhost(&vm, &["precompile", "--remote", COUNTER]),
        "precompile --remote needs --remote-cache",
    );
    // An unreachable server is a miss: the module compiles, and stats say so.
    std::fs::write(&key, [1u8; 32]).expect("key");
    let out = with_key(&key);
    assert!(is_hex64(
        stdout(&out).split_whitespace().next().unwrap_or("")
    ));
    let mut stats = command(&vm);
    stats
        .args(["--remote-cache", url, "--remote-key-file"])
        .arg(&key);
    let out = stats
        .args(["stats", "--json"])
        .output()
        .expect("vmhost runs");
    let remote = &json(&out)["remote"];
    assert!(remote["error"].is_string(), "{remote}");
}

#[test]
fn precompile_remote_warms_the_fleet_from_a_local_cache() {
    let server = strata_harness::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, [3u8; 32]).expect("key");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let remote = |vm: &Path, args: &[&str]| {
        let mut c = command(vm);
        c.env("RUST_LOG", "vm_host=info,vmhost=info");
        c.args(["--remote-cache", server.url(), "--remote-key-file"])
            .arg(&key);
        c.args(args).output().expect("vmhost runs")
    };
    // Compiled into a's file cache only, then pushed to Redis from there: no compile.
    stdout(&vmhost(&a, &["precompile", BANK]));
    let out = remote(&a, &["precompile", "--remote", BANK]);
    stdout(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("compiles=0") && log.contains("uploads=1"),
        "{log}"
    );
    let stats = json(&remote(&a, &["stats", "--json"]));
    assert_eq!(stats["remote"]["entries"], 1, "{stats}");
    // Another node loads it from Redis.
    let out = remote(&b, &["precompile", BANK]);
    stdout(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("compiles=0") && log.contains("uploads=0"),
        "{log}"
    );
}
