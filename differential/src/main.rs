//! The differential test of vm-cosmwasm against cosmwasm-vm 3.0.10, and cosmwasm-vm's cache
//! timings. Run through `cargo xtask differential` and `cargo xtask bench`.
//!
//! - `compare [--corpus DIR] [--no-sweep] [--reference-twice] [--tier cranelift|winch]`: runs
//!   the hackatom and cyberpunk scenarios on both implementations in one process (vm-cosmwasm
//!   on Cranelift, or with `--tier winch` on Winch) and compares, for every step, the
//!   response bytes, the gas used (and its internal/external split), the error kind of failing
//!   calls and the contract's whole storage after the step; then the gas sweep around the exact
//!   out-of-gas limit of a few calls. Prints a table; exits non-zero on any difference.
//!   `--reference-twice` compares cosmwasm-vm with itself (a check of the harness).
//! - `timing [--corpus DIR] [--runs N]`: cosmwasm-vm's cache timings, medians of N runs, as
//!   JSON on stdout.
//!
//! The corpus is `$STRATA_CORPUS`, else `/work/shared/corpus`, unless `--corpus` says.

mod common;
mod reference;
mod scenario;
mod strata;
mod timing;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use crate::common::{Call, Setup, Side};
use crate::scenario::Scenario;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("differential: {e:#}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    corpus: PathBuf,
    sweep: bool,
    reference_twice: bool,
    runs: usize,
    only: Option<String>,
    tier: strata::Tier,
}

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut parsed = Args {
        corpus: std::env::var_os("STRATA_CORPUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/shared/corpus")),
        sweep: true,
        reference_twice: false,
        runs: 100,
        only: None,
        tier: strata::Tier::Cranelift,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--corpus" => parsed.corpus = it.next().context("--corpus takes a directory")?.into(),
            "--no-sweep" => parsed.sweep = false,
            "--reference-twice" => parsed.reference_twice = true,
            "--runs" => {
                parsed.runs = it
                    .next()
                    .context("--runs takes a number")?
                    .parse()
                    .context("--runs takes a number")?
            }
            "--only" => parsed.only = Some(it.next().context("--only takes a scenario")?.clone()),
            "--tier" => {
                parsed.tier = match it.next().map(String::as_str) {
                    Some("cranelift") => strata::Tier::Cranelift,
                    Some("winch") => strata::Tier::Winch,
                    _ => bail!("--tier takes cranelift or winch"),
                }
            }
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(parsed)
}

fn run() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("compare") => compare(&parse(&args[1..])?),
        Some("timing") => {
            let a = parse(&args[1..])?;
            timing::run(&a.corpus, a.runs)?;
            Ok(true)
        }
        _ => bail!(
            "usage: strata-differential compare [--corpus DIR] [--no-sweep] [--reference-twice] [--only hackatom|cyberpunk] [--tier cranelift|winch]\n       strata-differential timing [--corpus DIR] [--runs N]"
        ),
    }
}

/// A fresh side 0: vm-cosmwasm, or cosmwasm-vm again with `--reference-twice`.
fn side0(args: &Args, setup: &Setup) -> anyhow::Result<Box<dyn Side>> {
    if args.reference_twice {
        Ok(Box::new(reference::Reference::new(setup)?))
    } else {
        Ok(Box::new(strata::Strata::new(setup, args.tier)?))
    }
}

/// The addresses side 0 gives the scenario's contracts, so that the setup can fund them:
/// a probe side runs the instantiate steps alone.
fn probe_addresses(args: &Args, scenario: &Scenario) -> anyhow::Result<Vec<String>> {
    let mut probe = side0(args, &Setup::standard(vec![]))?;
    for wasm in &scenario.codes {
        probe.store_code(wasm)?;
    }
    let mut addresses = Vec::new();
    for s in &scenario.steps {
        if let Call::Instantiate { .. } = s.call {
            let (outcome, address) = probe.call(&s.ctx, &s.call, None)?;
            if outcome.succeeded() {
                addresses.extend(address);
            }
        }
    }
    Ok(addresses)
}

fn compare(args: &Args) -> anyhow::Result<bool> {
    let names = if args.reference_twice {
        ["cosmwasm-vm (again)", "cosmwasm-vm"]
    } else {
        ["strata", "cosmwasm-vm"]
    };
    let mut rows = Vec::new();
    for scenario in [
        scenario::hackatom(&args.corpus)?,
        scenario::cyberpunk(&args.corpus)?,
    ] {
        if args.only.as_deref().is_some_and(|o| o != scenario.name) {
            continue;
        }
        let setup = Setup::standard(scenario::funded(&probe_addresses(args, &scenario)?));
        reference::check_setup(&setup)?;
        let mut sides: [Box<dyn Side>; 2] = [
            side0(args, &setup)?,
            Box::new(reference::Reference::new(&setup)?),
        ];
        let started = std::time::Instant::now();
        rows.extend(scenario::run(&scenario, &mut sides, args.sweep)?);
        eprintln!(
            "differential: {} done in {:.1} s",
            scenario.name,
            started.elapsed().as_secs_f64()
        );
    }
    print!("{}", scenario::table(&rows, names));
    Ok(rows.iter().all(|r| r.differences.is_empty()))
}
