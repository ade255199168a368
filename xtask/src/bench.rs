//! `cargo xtask bench`: runs the criterion benchmarks and summarises them in `docs/BENCHMARKS.md`.
//!
//! Convention shared with every benchmark: inside a criterion group, the benchmark whose function
//! id starts with `baseline` is the group's baseline, and every other benchmark of the group is
//! reported as a ratio to it (to the baseline with the same parameter when there is one). Ratios
//! of one run are what we compare: the machine is noisy, absolute times are given for the targets.
//! Extra measurements that are not times (disk footprints, RSS) are files that benchmarks leave in
//! `target/strata-bench/`; they are copied into the report as they are.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{Result, cargo, plot, root};

/// The packages that hold benchmarks.
const BENCH_PACKAGES: &[&str] = &["strata-tests", "store-commit", "vm-host", "vm-cosmwasm"];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let target = target_dir();
    let extra = target.join("strata-bench");
    // `--report`: summarise the results already in target/criterion without running anything.
    if args.iter().any(|a| a == "--report") {
        return write_report(&target, &extra, SystemTime::UNIX_EPOCH);
    }
    let started = SystemTime::now();
    let filter: Vec<&str> = args.iter().map(String::as_str).collect();
    // A full run reports only what it measured (a benchmark removed since is gone from the
    // report); a filtered run re-measures some groups and keeps the others' last results.
    let since = if filter.is_empty() {
        let _ = std::fs::remove_dir_all(&extra);
        started
    } else {
        SystemTime::UNIX_EPOCH
    };
    let mut cargo_args = vec!["bench", "--locked"];
    for package in BENCH_PACKAGES {
        cargo_args.extend(["-p", package]);
    }
    if !filter.is_empty() {
        cargo_args.push("--");
        cargo_args.extend(&filter);
    }
    // The large corpus module (esbuild: 14 s a compile) is part of every run unless the caller
    // says `STRATA_BENCH_LARGE=0`: the targets that name it are checked in the same run.
    let large = std::env::var("STRATA_BENCH_LARGE").unwrap_or_else(|_| "1".to_owned());
    cargo(&cargo_args, &[("STRATA_BENCH_LARGE", large.as_str())])?;
    // cosmwasm-vm's timings, in the same run as the Strata benches they are compared with.
    crate::differential::bench_timing(&target, &filter)?;
    write_report(&target, &extra, since)
}

fn write_report(target: &Path, extra: &Path, since: SystemTime) -> Result<()> {
    let mut results = collect(&target.join("criterion"), since)?;
    let mut peer = crate::differential::peer_results(target, since);
    crate::differential::align_with_strata(&mut peer, &results);
    let out = root().join("docs/BENCHMARKS.md");
    // A filtered run or `--report` (not a full run) keeps the groups and the other
    // measurements it has no results for, as the report on disk gives them (with the time
    // they were measured): a fresh target directory does not wipe the report. A group is
    // kept or replaced whole, so its ratios stay within one run: cosmwasm-vm's timings
    // (measured for every group they join) replace the report's only in the groups whose
    // Strata side this run measured.
    if since == SystemTime::UNIX_EPOCH
        && let Ok(previous) = std::fs::read_to_string(&out)
    {
        let (earlier, others) = parse_report(&previous);
        results = merge_with_report(results, std::mem::take(&mut peer), earlier);
        for (name, text) in others {
            let file = extra.join(&name);
            if !file.exists() {
                std::fs::create_dir_all(extra)
                    .and_then(|()| std::fs::write(&file, format!("{text}\n")))
                    .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            }
        }
    } else {
        results.extend(peer);
    }
    results.sort_by(|a, b| {
        (&a.group, &a.function, &a.parameter).cmp(&(&b.group, &b.function, &b.parameter))
    });
    let results = one_run_per_group(results);
    let plots_dir = root().join("docs/plots");
    let plots = plot::write_all(&results, &plots_dir)?;
    let report = render(&results, extra, &plots);
    std::fs::write(&out, report).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!(
        "wrote {} ({} benchmarks, {} plots)",
        out.display(),
        results.len(),
        plots.len()
    );
    Ok(())
}

/// Merges the results found in the target directory (and cosmwasm-vm's timings that join their
/// groups) with a report's: per group, the newer run wins whole. So a target directory holding
/// an old run of a group (another worktree measured it since) does not replace the report's
/// newer one, and a group's ratios stay within one run. A report's times are whole minutes: a
/// report written from these same results is never newer than they are.
fn merge_with_report(
    results: Vec<Measured>,
    peer: Vec<Measured>,
    earlier: Vec<Measured>,
) -> Vec<Measured> {
    let newest = |all: &[Measured]| {
        let mut newest: BTreeMap<String, SystemTime> = BTreeMap::new();
        for m in all {
            let t = newest.entry(m.group.clone()).or_insert(m.measured_at);
            *t = (*t).max(m.measured_at);
        }
        newest
    };
    let (ours, reported) = (newest(&results), newest(&earlier));
    let report_wins = |group: &str| match (ours.get(group), reported.get(group)) {
        (Some(ours), Some(reported)) => reported > ours,
        (None, Some(_)) => true,
        _ => false,
    };
    let mut merged: Vec<Measured> = results
        .into_iter()
        .filter(|m| !report_wins(&m.group))
        .collect();
    merged.extend(peer.into_iter().filter(|m| {
        !report_wins(&m.group) && (ours.contains_key(&m.group) || !reported.contains_key(&m.group))
    }));
    merged.extend(earlier.into_iter().filter(|m| report_wins(&m.group)));
    merged
}

/// Results older than this before the newest of their group belong to another run.
const ONE_RUN: Duration = Duration::from_secs(3600);

/// Keeps, per group, only the results of the group's latest run (within [`ONE_RUN`] of its
/// newest result), so that every ratio compares two medians of one run even when runs with
/// filters re-measured only part of a group.
pub(crate) fn one_run_per_group(mut all: Vec<Measured>) -> Vec<Measured> {
    let mut newest: BTreeMap<String, SystemTime> = BTreeMap::new();
    for m in &all {
        let t = newest.entry(m.group.clone()).or_insert(m.measured_at);
        *t = (*t).max(m.measured_at);
    }
    all.retain(|m| {
        let group_newest = newest[&m.group];
        group_newest
            .duration_since(m.measured_at)
            .is_ok_and(|age| age <= ONE_RUN)
            || m.measured_at >= group_newest
    });
    all
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// One benchmark of this run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measured {
    pub(crate) group: String,
    pub(crate) function: String,
    pub(crate) parameter: String,
    /// Median time of one iteration, in nanoseconds.
    pub(crate) median_ns: f64,
    /// When criterion wrote the result.
    pub(crate) measured_at: SystemTime,
}

fn collect(criterion: &Path, since: SystemTime) -> Result<Vec<Measured>> {
    let mut found = Vec::new();
    let mut stack = vec![criterion.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let in_new = path.parent().is_some_and(|p| p.ends_with("new"));
            if !in_new || path.file_name().is_none_or(|n| n != "benchmark.json") {
                continue;
            }
            let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
                continue;
            };
            if modified < since {
                continue;
            }
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            let meta = read(&path)?;
            let estimates = read(&path.with_file_name("estimates.json"))?;
            if let Some(mut measured) = parse(&meta, &estimates) {
                measured.measured_at = modified;
                found.push(measured);
            }
        }
    }
    found.sort_by(|a, b| {
        (&a.group, &a.function, &a.parameter).cmp(&(&b.group, &b.function, &b.parameter))
    });
    Ok(found)
}

/// Reads the string value of `"key":"..."` from criterion's flat JSON.
fn json_str(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = json[start..].find('"')?;
    Some(json[start..start + end].to_owned())
}

pub(crate) fn parse(meta: &str, estimates: &str) -> Option<Measured> {
    let group = json_str(meta, "group_id")?;
    let function = json_str(meta, "function_id").unwrap_or_default();
    let parameter = json_str(meta, "value_str").unwrap_or_default();
    let median = &estimates[estimates.find("\"median\":")?..];
    let at = median.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let number: String = median[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    Some(Measured {
        group,
        function,
        parameter,
        median_ns: number.parse().ok()?,
        measured_at: SystemTime::UNIX_EPOCH,
    })
}

pub(crate) fn format_ns(ns: f64) -> String {
    if ns < 1.0 {
        // Per-unit costs (nanoseconds per unit of fuel) are often below a nanosecond.
        format!("{:.1} ps", ns * 1e3)
    } else if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// The inverse of [`format_ns`] (to its precision).
fn parse_ns(text: &str) -> Option<f64> {
    let (number, unit) = text.trim().split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "ps" => 1e-3,
        "ns" => 1.0,
        "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    Some(number * scale)
}

/// The inverse of [`utc_minute`].
fn parse_utc_minute(text: &str) -> Option<SystemTime> {
    let text = text.trim().strip_suffix(" UTC")?;
    let (date, time) = text.split_once(' ')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (hour, minute) = time.split_once(':')?;
    let (hour, minute): (u64, u64) = (hour.parse().ok()?, minute.parse().ok()?);
    // Days from the civil date (the inverse of the computation in `utc_minute`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + hour * 3600 + minute * 60))
}

/// The results and the other measurements of a report written by [`render`].
fn parse_report(report: &str) -> (Vec<Measured>, BTreeMap<String, String>) {
    let mut results = Vec::new();
    let mut others = BTreeMap::new();
    let mut group: Option<String> = None;
    let mut when = SystemTime::UNIX_EPOCH;
    let mut other: Option<(String, Vec<&str>)> = None;
    let mut in_others = false;
    let flush = |other: &mut Option<(String, Vec<&str>)>, others: &mut BTreeMap<String, String>| {
        if let Some((name, lines)) = other.take() {
            others.insert(name, lines.join("\n").trim().to_owned());
        }
    };
    for line in report.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            flush(&mut other, &mut others);
            in_others = heading.starts_with("Other measurements");
            group = (!in_others && heading != "Targets").then(|| heading.to_owned());
            when = SystemTime::UNIX_EPOCH;
        } else if let Some(name) = line.strip_prefix("### ").filter(|_| in_others) {
            flush(&mut other, &mut others);
            other = Some((name.to_owned(), Vec::new()));
        } else if let Some((_, lines)) = other.as_mut() {
            lines.push(line);
        } else if let Some(t) = line
            .strip_prefix("Measured ")
            .and_then(|t| t.strip_suffix('.'))
        {
            when = parse_utc_minute(t).unwrap_or(SystemTime::UNIX_EPOCH);
        } else if let Some(group) = &group
            && let [function, parameter, median, _ratio] = line
                .trim_matches('|')
                .split(" | ")
                .map(str::trim)
                .collect::<Vec<_>>()[..]
            && let Some(median_ns) = parse_ns(median)
        {
            results.push(Measured {
                group: group.clone(),
                function: function.to_owned(),
                parameter: if parameter == "-" { "" } else { parameter }.to_owned(),
                median_ns,
                measured_at: when,
            });
        }
    }
    flush(&mut other, &mut others);
    (results, others)
}

/// The baseline of `m` in its group: same parameter if there is one, else the unparameterised one.
pub(crate) fn baseline<'a>(all: &'a [Measured], m: &Measured) -> Option<&'a Measured> {
    let in_group = || {
        all.iter()
            .filter(move |b| b.group == m.group && b.function.starts_with("baseline"))
    };
    in_group()
        .find(|b| b.parameter == m.parameter)
        .or_else(|| in_group().find(|b| b.parameter.is_empty()))
        .or_else(|| in_group().next())
}

/// A speed goal from the issues, checked against every group that matches `group`
/// (`*` matches one path segment, e.g. a corpus module).
pub(crate) enum Target {
    /// `function`'s median is at most `max_ns`.
    Under {
        what: &'static str,
        group: &'static str,
        function: &'static str,
        max_ns: f64,
    },
    /// `function` / `per` is at most `max` (both in the same group and run).
    Ratio {
        what: &'static str,
        group: &'static str,
        function: &'static str,
        per: &'static str,
        max: f64,
    },
}

pub(crate) const TARGETS: &[Target] = &[
    Target::Under {
        what: "pinned hit under 1 µs",
        group: "cache/*/vs_compile",
        function: "pinned_hit",
        max_ns: 1e3,
    },
    Target::Under {
        what: "LRU hit under 5 µs",
        group: "cache/*/vs_compile",
        function: "lru_hit",
        max_ns: 5e3,
    },
    Target::Ratio {
        what: "Trusted FS hit within 1.5x of deserialize_file",
        group: "cache/*/vs_floor",
        function: "fs_trusted_hit",
        per: "baseline_deserialize_file",
        max: 1.5,
    },
    Target::Ratio {
        what: "Verified FS hit within 1.3x of sha256 + deserialize",
        group: "cache/*/vs_floor",
        function: "fs_verified_hit",
        per: "sha256_deserialize",
        max: 1.3,
    },
    Target::Ratio {
        what: "default (Authenticated) FS hit of hackatom within 3x of a Trusted hit",
        group: "cache/hackatom/vs_floor",
        function: "fs_authenticated_hit",
        per: "fs_trusted_hit",
        max: 3.0,
    },
    Target::Ratio {
        what: "Verified FS hit at least 100x faster than compiling sql.js",
        group: "cache/sqljs/vs_compile",
        function: "fs_verified_hit",
        per: "baseline_compile",
        max: 0.01,
    },
    Target::Under {
        what: "commit of 1 dirty page in a 1 GiB memory under 5 ms",
        group: "commit_1GiB",
        function: "dirty_pages/1",
        max_ns: 5e6,
    },
    Target::Ratio {
        what: "session open of 1 GiB within 1.5x of 1 MiB (flat)",
        group: "session_open",
        function: "open_map/1GiB",
        per: "open_map/1MiB",
        max: 1.5,
    },
    Target::Ratio {
        what: "open + call + commit on 1 GiB within 1.5x of 1 MiB (flat)",
        group: "session_open_call_commit",
        function: "1GiB/increment",
        per: "baseline_1MiB/increment",
        max: 1.5,
    },
    Target::Ratio {
        what: "restore after 1000 commits within 1.5x of after 1 (flat)",
        group: "restore_16MiB",
        function: "after_commits/1000",
        per: "after_commits/1",
        max: 1.5,
    },
    // Issue 15: the Redis layer (cache-redis), on loopback.
    Target::Ratio {
        what: "Redis hit of sql.js at least 50x faster than compiling it",
        group: "cache/sqljs/vs_compile",
        function: "redis_hit",
        per: "baseline_compile",
        max: 0.02,
    },
    Target::Ratio {
        what: "Redis hit of esbuild at least 100x faster than compiling it",
        group: "cache/esbuild/vs_compile",
        function: "redis_hit",
        per: "baseline_compile",
        max: 0.01,
    },
    Target::Ratio {
        what: "Redis hit of sql.js within 3x of a default-mode (Authenticated) FS hit",
        group: "cache/sqljs/vs_floor",
        function: "redis_hit",
        per: "fs_authenticated_hit",
        max: 3.0,
    },
    Target::Ratio {
        what: "Redis hit of hackatom within 3x of a default-mode (Authenticated) FS hit",
        group: "cache/hackatom/vs_floor",
        function: "redis_hit",
        per: "fs_authenticated_hit",
        max: 3.0,
    },
    Target::Ratio {
        what: "Redis hit of esbuild against a default-mode FS hit (reported; the issue sets no limit, 3x shown)",
        group: "cache/esbuild/vs_floor",
        function: "redis_hit",
        per: "fs_authenticated_hit",
        max: 3.0,
    },
    // Issue 13: the call path at the floor.
    Target::Under {
        what: "session + instantiate + one call from pinned under 15 µs",
        group: "call_path/*",
        function: "pinned",
        max_ns: 15e3,
    },
    Target::Under {
        what: "session + instantiate + one call from the LRU under 15 µs",
        group: "call_path/*",
        function: "lru",
        max_ns: 15e3,
    },
    Target::Ratio {
        what: "session + instantiate + one call from pinned no slower than plain wasmtime",
        group: "call_path/*",
        function: "pinned",
        per: "baseline_wasmtime",
        max: 1.0,
    },
    Target::Ratio {
        what: "read-only call in one session within 3x of plain wasmtime",
        group: "calls_in_one_session",
        function: "get",
        per: "baseline_wasmtime_get",
        max: 3.0,
    },
    Target::Ratio {
        what: "1000 one-page calls in a dirty 256 MiB memory within 12x of 100 (linear)",
        group: "calls_after_dirtying_256MiB",
        function: "calls/1000",
        per: "baseline_calls/100",
        max: 12.0,
    },
    Target::Ratio {
        what: "thread-local hit faster than pinned with 2 threads (else kept out of the chain)",
        group: "thread_local/2_threads",
        function: "thread_local_hit",
        per: "baseline_pinned_hit",
        max: 1.0,
    },
    Target::Ratio {
        what: "durable 1-page commit within 2x of one write + fdatasync + rename + dir fsync",
        group: "durable_commit_1_page",
        function: "commit",
        per: "baseline_floor",
        max: 2.0,
    },
    Target::Ratio {
        what: "durable 1-page commit with syncfs within 2x of the floor",
        group: "durable_commit_1_page",
        function: "commit_syncfs",
        per: "baseline_floor",
        max: 2.0,
    },
    // Issue 12: key-value spaces at scale (store-commit's `kv` benchmark; the footprint is in
    // target/strata-bench/kv-footprint.txt).
    Target::Ratio {
        what: "kv commit of 10 keys in 1 M keys at least 100x faster than the whole-blob commit",
        group: "kv_commit_1M",
        function: "delta_10",
        per: "baseline_whole_blob",
        max: 0.01,
    },
    Target::Under {
        what: "kv commit of 10 keys in 1 M keys, largest delta before a rebase, under 5 ms",
        group: "kv_commit_1M",
        function: "delta_10",
        max_ns: 5e6,
    },
    Target::Ratio {
        what: "kv session open + first read of 1 M keys within 1.5x of 1 k (flat)",
        group: "kv_open_read",
        function: "open_get/1M",
        per: "open_get/1k",
        max: 1.5,
    },
    Target::Ratio {
        what: "kv point read in 1 M keys within 3x of a BTreeMap lookup + copy",
        group: "kv_read_1M",
        function: "point_read",
        per: "baseline_btreemap_get_copy",
        max: 3.0,
    },
    Target::Ratio {
        what: "kv forward scan of 10,000 entries within 3x of a BTreeMap range",
        group: "kv_scan_10k",
        function: "scan",
        per: "baseline_btreemap_range",
        max: 3.0,
    },
    // Issue 16: the Winch baseline tier.
    Target::Ratio {
        what: "Winch compile of sql.js (672 KiB) at least 5x faster than Cranelift's",
        group: "tiers/compile",
        function: "winch/672KiB",
        per: "baseline_cranelift/672KiB",
        max: 0.2,
    },
    Target::Ratio {
        what: "calls after the tier-up within 5% of Cranelift only",
        group: "tiers/calls_after_tier_up",
        function: "after_tier_up",
        per: "baseline_cranelift_only",
        max: 1.05,
    },
    // Issue 11 item 2, with the range scans of issue 12: the slowest host loop (per unit of
    // fuel) within 10x of the slowest plain loop (memory.grow).
    Target::Ratio {
        what: "range-scan host loop (db_scan + db_next) within 10x of the slowest plain loop, per unit of fuel",
        group: "host_costs_ns_per_fuel",
        function: "host/db_scan_next_1000_entries",
        per: "plain/memory_grow_1_page_to_limit",
        max: 10.0,
    },
    // Issue 14: the CosmWasm ABI (cosmwasm-vm measured 92 us from memory and 2.4 ms from its
    // file cache for hackatom on this machine; `differential timing` measures it in the same run).
    Target::Under {
        what: "CosmWasm instantiate from pinned under 15 µs",
        group: "cosmwasm/*/instantiate",
        function: "pinned",
        max_ns: 15e3,
    },
    Target::Under {
        what: "CosmWasm instantiate from LRU under 15 µs",
        group: "cosmwasm/*/instantiate",
        function: "lru",
        max_ns: 15e3,
    },
    Target::Under {
        what: "CosmWasm instantiate from the file cache under 0.8 ms",
        group: "cosmwasm/*/instantiate",
        function: "fs",
        max_ns: 0.8e6,
    },
    // Issue 14, measured side by side: cosmwasm-vm's timings (`differential timing`, run by
    // this same `cargo xtask bench`) join the Strata groups as `cosmwasm_vm_*`
    // (xtask/src/differential.rs, PEER). The limits are the issue's: 15 µs against 92 µs,
    // 0.8 ms against 2.4 ms.
    Target::Ratio {
        what: "CosmWasm instantiate from pinned at least 6x faster than cosmwasm-vm's from pinned (same run)",
        group: "cosmwasm/*/instantiate",
        function: "pinned",
        per: "cosmwasm_vm_pinned",
        max: 0.167,
    },
    Target::Ratio {
        what: "CosmWasm instantiate from the LRU at least 6x faster than cosmwasm-vm's from memory (same run)",
        group: "cosmwasm/*/instantiate",
        function: "lru",
        per: "cosmwasm_vm_memory",
        max: 0.167,
    },
    Target::Ratio {
        what: "CosmWasm instantiate from the file cache at least 3x faster than cosmwasm-vm's from its file cache (same run)",
        group: "cosmwasm/*/instantiate",
        function: "fs",
        per: "cosmwasm_vm_fs",
        max: 0.334,
    },
    Target::Ratio {
        what: "CosmWasm deploy to first call on Winch within cosmwasm-vm's store_code (same run)",
        group: "cosmwasm/*/compile",
        function: "deploy_to_first_call_winch",
        per: "cosmwasm_vm_store_code",
        max: 1.0,
    },
];

/// How to read a group's figures, printed under its table (groups matched as in [`TARGETS`]):
/// what a run showed, with the date, so that a later run's table can be read against it.
const NOTES: &[(&str, &str)] = &[
    (
        "durable_commit_1_page",
        "The disk is a shared virtual disk whose fsync latency swings from minute to minute: on \
         2026-12-01 the default (`EachFile`, its syncs issued at once) measured 1.57x the floor \
         in the run of record, 2.39x in a run 20 minutes before, and 1.5-2.3x in direct runs; \
         `syncfs` 0.9-1.4x. `commit_no_fsync` is the part of a commit that is not syncing \
         (0.6-2 ms across those runs; in a profile a third of it is ext4 allocating inodes for \
         the commit's five new directories).",
    ),
    (
        "cache/*/vs_floor",
        "`deserialize_bytes` is the floor of a load from bytes in memory: wasmtime puts them \
         into fresh pages, 2-3 µs per 4 KiB page on this VM, where a file hit maps pages the \
         page cache holds. A Redis hit avoids most of it since 2026-12-01: the checked bytes \
         go into a memfd whose pages are kept and written again once no module maps it \
         (hackatom 3.25x the FS hit before, sql.js 4.15x; docs/SCALE-OUT.md). esbuild's value \
         is over the 16 MiB a connection's buffer keeps, so its hit still reads into fresh \
         pages.",
    ),
    (
        "cosmwasm/hackatom/compile",
        "Issue 16's deploy target. Where the time goes (probes, release, 2026-12-01 06:20-06:35, \
         the other core often busy): the check and the metering rewrite side by side 3.8-3.9 \
         ms (the check took 5.8 before its gatekeeper pass scanned with a visitor); the Winch \
         compile of the metered module 50-65 ms; the LRU save and the registry write under 0.1 \
         ms; instantiate 0.2-0.6 ms, the execute 0.1-0.4 ms; the file cache write is off the \
         path (background thread). Winch compiles the call form of the metering (`i64.const \
         cost; call $charge` before each of about 21,000 accounting operators: 410 KB, against \
         715 KB for the inline check and 296 KB for the original). Medians of 20, one quiet \
         probe run (06:35), hackatom / cyberpunk: the inline form on the former engine \
         settings 63.2 / 46.7 ms, the call form on them 53.0 / 40.1, on the Winch engine's \
         settings (Cranelift's trampolines at OptLevel::None with the single-pass register \
         allocator, no address map) 47.1 / 34.2, the original module there 40.0 / 26.1. What \
         is left is Winch itself: its \
         codegen and the x64 emission it shares with Cranelift are 45% of the compile's \
         samples, Cranelift's trampolines for the 229 exported and table functions 9%. The \
         margin on hackatom is thin: a run with the other core busy can miss it. Both sides write their file cache: cosmwasm-vm's \
         store_code inside the timed call, Strata's on its background thread after the deploy \
         returns (joined before the next iteration, untimed); a node's next store_code or \
         restart does not wait for it either way.",
    ),
    (
        "tiers/compile_adversarial/deep_nesting",
        "Nested blocks (strata-harness `adversarial`; size axis: the module in KiB). Measured \
         2026-12-01: Cranelift is quadratic in the depth, each doubling 2.7-3.4x (4,096 blocks \
         1.06 s; in the probe behind `vm_host::CompileCost`, 8,192 took 2.7-3.2 s and 16,384 \
         12.7 s); Winch is linear, 85x faster at 4,096.",
    ),
    (
        "tiers/compile_adversarial/huge_function",
        "One straight-line function. Measured 2026-12-01: both tiers linear, Cranelift about \
         1.3 ms per KiB (5.9 s for 3 MB in the probe), Winch 20x faster. The budget still stops \
         one function estimated past 3 s (about 1 MB of such code).",
    ),
    (
        "tiers/compile_adversarial/many_locals",
        "`i64` locals all live across a loop. Measured 2026-12-01: Cranelift is quadratic in \
         the locals (4,096: 1.16 s), then falls off a cliff: 8,192 took 1.8-2.1 s and 16,384 \
         116 s in the probe, for a 296 KiB module. Winch stays at milliseconds, 224x faster at \
         4,096. The worst input found, and the reason for the compile budget.",
    ),
    (
        "tiers/compile_adversarial/huge_br_table",
        "One `br_table` over 64 blocks. Measured 2026-12-01: both tiers linear in the entries, \
         Winch 6x faster; wasmtime refuses a `br_table` of more than 65,520 targets, so this \
         shape stays cheap.",
    ),
];

fn group_matches(pattern: &str, group: &str) -> bool {
    let (p, g): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), group.split('/').collect());
    p.len() == g.len() && p.iter().zip(&g).all(|(p, g)| *p == "*" || p == g)
}

/// `function` or `function/parameter` of one group.
/// A function id may itself hold a `/` (`host/db_read_1MiB`): the whole name as a function
/// without parameter is tried first.
fn find<'a>(results: &'a [Measured], group: &str, name: &str) -> Option<&'a Measured> {
    let exact = results
        .iter()
        .find(|m| m.group == group && m.function == name && m.parameter.is_empty());
    let (function, parameter) = name.split_once('/').unwrap_or((name, ""));
    exact.or_else(|| {
        results
            .iter()
            .find(|m| m.group == group && m.function == function && m.parameter == parameter)
    })
}

/// `YYYY-MM-DD HH:MM UTC` of a time (the civil calendar from days since 1970, Howard
/// Hinnant's algorithm), without a date crate in xtask.
pub(crate) fn utc_minute(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

fn render_targets(results: &[Measured], out: &mut String) {
    out.push_str(
        "\n## Targets\n\n| target | group | measured | limit | |\n|---|---|---|---|---|\n",
    );
    let mut groups: Vec<&str> = results.iter().map(|m| m.group.as_str()).collect();
    groups.dedup();
    for target in TARGETS {
        let (what, pattern) = match target {
            Target::Under { what, group, .. } | Target::Ratio { what, group, .. } => (what, group),
        };
        let mut seen = false;
        for group in groups.iter().filter(|g| group_matches(pattern, g)) {
            let row = match target {
                Target::Under {
                    function, max_ns, ..
                } => find(results, group, function).map(|m| {
                    (
                        format_ns(m.median_ns),
                        format_ns(*max_ns),
                        m.median_ns <= *max_ns,
                    )
                }),
                Target::Ratio {
                    function, per, max, ..
                } => match (find(results, group, function), find(results, group, per)) {
                    (Some(a), Some(b)) if b.median_ns > 0.0 => {
                        let r = a.median_ns / b.median_ns;
                        Some((format!("{r:.3}x"), format!("{max}x"), r <= *max))
                    }
                    _ => None,
                },
            };
            if let Some((measured, limit, met)) = row {
                seen = true;
                let verdict = if met { "met" } else { "**missed**" };
                let _ = writeln!(
                    out,
                    "| {what} | {group} | {measured} | {limit} | {verdict} |"
                );
            }
        }
        if !seen {
            let _ = writeln!(out, "| {what} | {pattern} | not measured in this run | | |");
        }
    }
}

pub(crate) fn render(
    results: &[Measured],
    extra: &Path,
    plots: &BTreeMap<String, String>,
) -> String {
    let mut out = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench`; do not edit by hand. Each group's baseline is \
         the benchmark whose name starts with `baseline`, measured in the same run; the ratio is \
         time / baseline time (below 1 is faster than the baseline). Times are criterion medians \
         on the 2-core development machine, which is noisy: compare ratios, not absolute times.\n",
    );
    render_targets(results, &mut out);
    let mut groups: BTreeMap<&str, Vec<&Measured>> = BTreeMap::new();
    for m in results {
        groups.entry(&m.group).or_default().push(m);
    }
    for (group, members) in groups {
        let when = members
            .iter()
            .map(|m| m.measured_at)
            .max()
            .map(utc_minute)
            .unwrap_or_default();
        let _ = write!(
            out,
            "\n## {group}\n\nMeasured {when}.\n\n| benchmark | parameter | median | ratio to baseline |\n|---|---|---|---|\n"
        );
        for m in members {
            let ratio = match baseline(results, m) {
                Some(b) if b == m => "baseline".to_owned(),
                Some(b) if b.median_ns > 0.0 => {
                    let r = m.median_ns / b.median_ns;
                    if r < 0.01 {
                        format!("1/{:.0}", 1.0 / r)
                    } else {
                        format!("{r:.3}")
                    }
                }
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                m.function,
                if m.parameter.is_empty() {
                    "-"
                } else {
                    &m.parameter
                },
                format_ns(m.median_ns),
                ratio
            );
        }
        for (_, note) in NOTES.iter().filter(|(p, _)| group_matches(p, group)) {
            let _ = write!(out, "\n{note}\n");
        }
        if let Some(file) = plots.get(group) {
            let _ = write!(
                out,
                "\n![{group}: median time against the parameter](plots/{file})\n"
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(extra) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        if !files.is_empty() {
            out.push_str("\n## Other measurements of this run\n");
        }
        for file in files {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                let _ = write!(out, "\n### {name}\n\n{}\n", text.trim_end());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{"group_id":"load/sqljs","function_id":"fs_verified","value_str":null,"throughput":null,"full_id":"load/sqljs/fs_verified","directory_name":"load_sqljs/fs_verified","title":"load/sqljs/fs_verified"}"#;
    const EST: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0,"standard_error":0.1},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1500.5,"standard_error":0.1}}"#;

    #[test]
    fn parses_criterion_json() {
        let m = parse(META, EST).expect("parses");
        assert_eq!(m.group, "load/sqljs");
        assert_eq!(m.function, "fs_verified");
        assert_eq!(m.parameter, "");
        assert_eq!(m.median_ns, 1500.5);
        assert_eq!(parse("{}", EST), None);
    }

    #[test]
    fn a_report_reads_back_as_it_was_written() {
        let m = |g: &str, f: &str, p: &str, ns: f64, at: u64| Measured {
            group: g.into(),
            function: f.into(),
            parameter: p.into(),
            median_ns: ns,
            measured_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
        };
        let all = vec![
            m("a/b", "baseline_x", "", 2_500_000.0, 1_764_556_260),
            m("a/b", "y", "", 125_000.0, 1_764_556_260),
            m("c", "baseline", "16KiB", 0.5, 1_764_560_000 / 60 * 60),
            m(
                "c",
                "host/db_read_1MiB",
                "16KiB",
                61.5,
                1_764_560_000 / 60 * 60,
            ),
        ];
        let extra = std::env::temp_dir().join(format!("xtask-report-{}", std::process::id()));
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(extra.join("rss.md"), "| a | b |\n|---|---|\n| 1 | 2 |\n").unwrap();
        let report = render(&all, &extra, &BTreeMap::new());
        std::fs::remove_dir_all(&extra).unwrap();
        let (back, others) = parse_report(&report);
        assert_eq!(back, all, "{report}");
        assert_eq!(others["rss.md"], "| a | b |\n|---|---|\n| 1 | 2 |");
        assert_eq!(
            parse_utc_minute("1970-01-01 00:00 UTC"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(parse_ns("1.5 parsecs"), None);
    }

    #[test]
    fn the_newer_run_of_a_group_wins_whole_whichever_side_holds_it() {
        let m = |g: &str, f: &str, ns: f64, at: u64| Measured {
            group: g.into(),
            function: f.into(),
            parameter: String::new(),
            median_ns: ns,
            measured_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
        };
        // The target directory: "a" measured at 1,000 s (stale), "b" at 1,000 s (fresh).
        let results = vec![m("a", "x", 1.0, 1_000), m("b", "x", 2.0, 1_000)];
        // cosmwasm-vm's timings joining both groups.
        let peer = vec![m("a", "peer", 3.0, 1_000), m("b", "peer", 4.0, 1_000)];
        // The report: "a" measured since (2,000 s) elsewhere, "b" before (500 s), "c" only here.
        let earlier = vec![
            m("a", "x", 5.0, 2_000),
            m("a", "peer", 6.0, 2_000),
            m("b", "x", 7.0, 500),
            m("c", "x", 8.0, 500),
        ];
        let mut merged = merge_with_report(results, peer, earlier);
        merged.sort_by(|a, b| (&a.group, &a.function).cmp(&(&b.group, &b.function)));
        let got: Vec<(&str, &str, f64)> = merged
            .iter()
            .map(|m| (m.group.as_str(), m.function.as_str(), m.median_ns))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "peer", 6.0),
                ("a", "x", 5.0),
                ("b", "peer", 4.0),
                ("b", "x", 2.0),
                ("c", "x", 8.0),
            ]
        );
    }

    #[test]
    fn ratios_pair_by_parameter() {
        let m = |f: &str, p: &str, ns: f64| Measured {
            group: "g".into(),
            function: f.into(),
            parameter: p.into(),
            median_ns: ns,
            measured_at: SystemTime::UNIX_EPOCH,
        };
        let all = vec![
            m("baseline_naive", "1", 10.0),
            m("baseline_naive", "16", 100.0),
            m("commit", "16", 50.0),
        ];
        assert_eq!(baseline(&all, &all[2]).map(|b| b.median_ns), Some(100.0));
        let report = render(&all, Path::new("/nonexistent"), &BTreeMap::new());
        assert!(
            report.contains("| commit | 16 | 50.0 ns | 0.500 |"),
            "{report}"
        );
        assert_eq!(format_ns(2_500_000.0), "2.50 ms");
        assert_eq!(format_ns(0.0205), "20.5 ps");
        assert!(report.contains("not measured in this run"), "{report}");
    }

    #[test]
    fn targets_are_checked_per_matching_group() {
        let m = |g: &str, f: &str, ns: f64| Measured {
            group: g.into(),
            function: f.into(),
            parameter: String::new(),
            median_ns: ns,
            measured_at: SystemTime::UNIX_EPOCH,
        };
        let all = vec![
            m("cache/a/vs_compile", "pinned_hit", 50.0),
            m("cache/b/vs_compile", "pinned_hit", 5000.0),
            m("cache/a/vs_floor", "baseline_deserialize_file", 100.0),
            m("cache/a/vs_floor", "fs_trusted_hit", 120.0),
        ];
        let mut out = String::new();
        render_targets(&all, &mut out);
        assert!(
            out.contains(
                "| pinned hit under 1 µs | cache/a/vs_compile | 50.0 ns | 1.00 µs | met |"
            ),
            "{out}"
        );
        assert!(
            out.contains("| cache/b/vs_compile | 5.00 µs | 1.00 µs | **missed** |"),
            "{out}"
        );
        assert!(out.contains("| 1.200x | 1.5x | met |"), "{out}");
        assert!(!group_matches("cache/*/vs_floor", "cache/a/vs_compile"));
    }
}
