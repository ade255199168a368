//! `cargo xtask differential`, and cosmwasm-vm's side of `cargo xtask bench`.
//!
//! Both run the binary of the separate `differential/` workspace (cosmwasm-vm 3.0.10 and
//! wasmer next to vm-cosmwasm), built in release mode, niced, into its own target directory
//! (`differential/target`), never as part of `cargo xtask ci`:
//! - `differential [ARGS...]`: `compare`, which prints the step table and fails on any
//!   difference between vm-cosmwasm and cosmwasm-vm (ARGS go to it: `--no-sweep`,
//!   `--only hackatom`, `--corpus DIR`, `--tier winch`);
//! - in `bench`: `timing`, whose medians (cosmwasm-vm's instantiate from pinned, memory and
//!   file system, store_code, instantiate + execute + commit) join the run's results in the
//!   groups of the Strata benchmarks they compare with (see [`PEER`]), so that the report
//!   shows the ratio of each Strata figure to cosmwasm-vm's, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::bench::Measured;
use crate::{Result, root};

/// Where a cosmwasm-vm timing goes in the report: (its `measure`, the group of the Strata
/// benchmark it compares with, `{contract}` standing for the contract, and its function id
/// there). Function ids start with `cosmwasm_vm` so targets can name them as `per`.
pub(crate) const PEER: &[(&str, &str, &str)] = &[
    (
        "instantiate_pinned",
        "cosmwasm/{contract}/instantiate",
        "cosmwasm_vm_pinned",
    ),
    (
        "instantiate_memory",
        "cosmwasm/{contract}/instantiate",
        "cosmwasm_vm_memory",
    ),
    (
        "instantiate_fs",
        "cosmwasm/{contract}/instantiate",
        "cosmwasm_vm_fs",
    ),
    (
        "store_code",
        "cosmwasm/{contract}/compile",
        "cosmwasm_vm_store_code",
    ),
    (
        "instantiate_execute_commit_pinned",
        "cosmwasm/{contract}/call",
        "cosmwasm_vm_instantiate_execute_commit",
    ),
];

/// The timing results of the last `bench` run that measured them.
fn timing_file(target: &Path) -> PathBuf {
    target.join("strata-bench-peer/cosmwasm-vm.json")
}

fn differential_dir() -> PathBuf {
    root().join("differential")
}

/// The corpus the differential binary reads: `$STRATA_CORPUS`, else `../shared/corpus`.
fn corpus() -> PathBuf {
    std::env::var_os("STRATA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/corpus"))
}

fn corpus_has_contracts(dir: &Path) -> bool {
    ["cosmwasm-hackatom.wasm", "cosmwasm-cyberpunk.wasm"]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// Builds the differential binary (release, niced, `differential/target`) and returns it.
fn build() -> Result<PathBuf> {
    let dir = differential_dir();
    let target = dir.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10"])
        .arg(cargo)
        // Not `--locked`: differential/Cargo.lock follows whatever vm-cosmwasm depends on.
        .args(["build", "--release", "--features", "strata"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&dir)
        // The bench run's own target directory must not leak into this workspace's build.
        .env_remove("CARGO_TARGET_DIR");
    crate::run(cmd)?;
    Ok(target.join("release/strata-differential"))
}

/// `cargo xtask differential [ARGS...]`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let corpus = corpus();
    if !corpus_has_contracts(&corpus) {
        return Err(format!(
            "the differential test needs cosmwasm-hackatom.wasm and cosmwasm-cyberpunk.wasm in {} (set STRATA_CORPUS)",
            corpus.display()
        ));
    }
    let binary = build()?;
    let mut cmd = Command::new(binary);
    cmd.arg("compare")
        .arg("--corpus")
        .arg(&corpus)
        .args(args)
        .current_dir(differential_dir());
    crate::run(cmd).map_err(|e| format!("the implementations differ (see the table): {e}"))
}

/// In `cargo xtask bench`: runs cosmwasm-vm's timing mode when the corpus has the contracts
/// and the run measures the CosmWasm groups (no filter, or a filter naming `cosmwasm`), and
/// keeps its JSON for the report.
pub(crate) fn bench_timing(target: &Path, filter: &[&str]) -> Result<()> {
    // A filter is a criterion regex over `group/function` ids: run when it may match a group
    // cosmwasm-vm's timings join (a plain substring check, enough for the usual filters).
    let ids: Vec<String> = PEER
        .iter()
        .flat_map(|(_, group, _)| ["hackatom", "cyberpunk"].map(|c| group.replace("{contract}", c)))
        .collect();
    let relevant = |f: &&str| f.contains("cosmwasm") || ids.iter().any(|id| id.contains(*f));
    if !(filter.is_empty() || filter.iter().any(relevant)) {
        return Ok(());
    }
    let corpus = corpus();
    if !corpus_has_contracts(&corpus) {
        eprintln!(
            "bench: no CosmWasm contracts in {}, cosmwasm-vm's timings skipped",
            corpus.display()
        );
        return Ok(());
    }
    let binary = build()?;
    let runs = std::env::var("STRATA_PEER_RUNS").unwrap_or_else(|_| "300".to_owned());
    eprintln!("$ {} timing --runs {runs}", binary.display());
    let output = Command::new(&binary)
        .args(["timing", "--runs", &runs, "--corpus"])
        .arg(&corpus)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(format!("cosmwasm-vm timing failed with {}", output.status));
    }
    let file = timing_file(target);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&file, &output.stdout)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// cosmwasm-vm's timings of the last run that measured them (if not older than `since`), as
/// results of the groups [`PEER`] names (none when there is no timing file).
pub(crate) fn peer_results(target: &Path, since: SystemTime) -> Vec<Measured> {
    let file = timing_file(target);
    let (Ok(text), Ok(modified)) = (
        std::fs::read_to_string(&file),
        std::fs::metadata(&file).and_then(|m| m.modified()),
    ) else {
        return Vec::new();
    };
    if modified < since {
        return Vec::new();
    }
    parse_timing(&text, modified)
}

/// How long after a Strata group's run cosmwasm-vm's timing still counts as part of it: the
/// timing runs after the whole criterion run, which may take hours (esbuild), longer than the
/// hour within which `one_run_per_group` keeps a group's results together.
const SAME_RUN: Duration = Duration::from_secs(12 * 3600);

/// Dates each cosmwasm-vm result as its Strata group's newest result when the timing ran after
/// it within [`SAME_RUN`] (the same `cargo xtask bench`), so the group keeps both.
pub(crate) fn align_with_strata(peer: &mut [Measured], strata: &[Measured]) {
    for p in peer.iter_mut() {
        let newest = strata
            .iter()
            .filter(|m| m.group == p.group)
            .map(|m| m.measured_at)
            .max();
        if let Some(newest) = newest
            && p.measured_at
                .duration_since(newest)
                .is_ok_and(|after| after <= SAME_RUN)
        {
            p.measured_at = newest;
        }
    }
}

/// One result a line: `{"contract":"hackatom","measure":"instantiate_pinned","median_ns":1.0}`.
pub(crate) fn parse_timing(text: &str, at: SystemTime) -> Vec<Measured> {
    let field = |line: &str, key: &str| -> Option<String> {
        let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = line[start..].trim_start();
        Some(match rest.strip_prefix('"') {
            Some(s) => s[..s.find('"')?].to_owned(),
            None => rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
                .collect(),
        })
    };
    text.lines()
        .filter_map(|line| {
            let contract = field(line, "contract")?;
            let measure = field(line, "measure")?;
            let median_ns: f64 = field(line, "median_ns")?.parse().ok()?;
            let (_, group, function) = PEER.iter().find(|(m, _, _)| *m == measure)?;
            Some(Measured {
                group: group.replace("{contract}", &contract),
                function: (*function).to_owned(),
                parameter: String::new(),
                median_ns,
                measured_at: at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_lines_become_results_of_the_strata_groups() {
        let text = "{\"implementation\":\"cosmwasm-vm 3.0.10\",\"runs\":3,\"results\":[\n\
            {\"contract\":\"hackatom\",\"measure\":\"instantiate_pinned\",\"median_ns\":91234.5},\n\
            {\"contract\":\"cyberpunk\",\"measure\":\"store_code\",\"median_ns\":7.5e7},\n\
            {\"contract\":\"cyberpunk\",\"measure\":\"unknown_measure\",\"median_ns\":1.0}\n]}";
        let got = parse_timing(text, SystemTime::UNIX_EPOCH);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].group, "cosmwasm/hackatom/instantiate");
        assert_eq!(got[0].function, "cosmwasm_vm_pinned");
        assert_eq!(got[0].median_ns, 91234.5);
        assert_eq!(got[1].group, "cosmwasm/cyberpunk/compile");
        assert_eq!(got[1].function, "cosmwasm_vm_store_code");
        assert_eq!(got[1].median_ns, 7.5e7);
    }

    #[test]
    fn the_report_gives_the_ratio_to_cosmwasm_vm_of_the_same_run() {
        let text = "{\"contract\":\"hackatom\",\"measure\":\"instantiate_pinned\",\"median_ns\":90000.0}\n\
            {\"contract\":\"hackatom\",\"measure\":\"instantiate_fs\",\"median_ns\":2400000.0}";
        let mut results = parse_timing(text, SystemTime::UNIX_EPOCH);
        let strata = |function: &str, median_ns: f64| Measured {
            group: "cosmwasm/hackatom/instantiate".into(),
            function: function.into(),
            parameter: String::new(),
            median_ns,
            measured_at: SystemTime::UNIX_EPOCH,
        };
        results.push(strata("pinned", 9000.0));
        results.push(strata("fs", 1_200_000.0));
        let report = crate::bench::render(
            &results,
            Path::new("/nonexistent"),
            &std::collections::BTreeMap::new(),
        );
        assert!(
            report.contains("| cosmwasm/hackatom/instantiate | 0.100x | 0.167x | met |"),
            "{report}"
        );
        assert!(
            report.contains("| cosmwasm/hackatom/instantiate | 0.500x | 0.334x | **missed** |"),
            "{report}"
        );
        assert!(
            report.contains("| cosmwasm_vm_pinned | - | 90.00 µs |"),
            "{report}"
        );
    }

    #[test]
    fn a_timing_after_a_long_criterion_run_joins_its_group() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let m = |group: &str, function: &str, t: SystemTime| Measured {
            group: group.into(),
            function: function.into(),
            parameter: String::new(),
            median_ns: 1.0,
            measured_at: t,
        };
        let strata = vec![
            m("cosmwasm/hackatom/instantiate", "pinned", at(10_000)),
            m("cosmwasm/cyberpunk/instantiate", "pinned", at(10_000)),
        ];
        let mut peer = vec![
            m(
                "cosmwasm/hackatom/instantiate",
                "cosmwasm_vm_pinned",
                at(10_000 + 2 * 3600),
            ),
            m(
                "cosmwasm/cyberpunk/instantiate",
                "cosmwasm_vm_pinned",
                at(10_000 + 13 * 3600),
            ),
            m(
                "cosmwasm/hackatom/compile",
                "cosmwasm_vm_store_code",
                at(20_000),
            ),
        ];
        align_with_strata(&mut peer, &strata);
        assert_eq!(peer[0].measured_at, at(10_000));
        assert_eq!(peer[1].measured_at, at(10_000 + 13 * 3600));
        assert_eq!(peer[2].measured_at, at(20_000));
        let mut all = strata.clone();
        all.extend(peer);
        let kept = crate::bench::one_run_per_group(all);
        assert_eq!(kept.len(), 4, "{kept:?}");
    }
}
