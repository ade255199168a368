//! End-to-end tests of the `vmhost` binary: its output contract, persistence across processes,
//! and one clear line on stderr with a non-zero exit for every kind of bad input.

use std::path::Path;
use std::process::{Command, Output};

const COUNTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../vm-host/contracts/counter.wat");
const BANK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../vm-host/contracts/bank.wat");

fn vmhost(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmhost"))
        .arg("--dir")
        .arg(dir)
        .arg("--no-fsync")
        .args(args)
        .output()
        .expect("vmhost runs")
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
    assert!(stdout(&vmhost(dir, &["stats"])).contains("pinned modules 1"));
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
