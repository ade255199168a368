//! `vmhost cw ...`: CosmWasm contracts on the VM directory (vm-cosmwasm).
//!
//! Each command prints the contract's JSON result (or the VM's error), `gas <used>` and, for
//! commands that change the state, `root <hex>` of the commit they made. A call that fails
//! commits nothing and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use vm_cosmwasm::{CallContext, CallOutcome, CwConfig, CwVm, VmConfig};

/// The gas limit of a call that names none: cosmwasm-vm's default query limit, 10^12 (one
/// second of work by its gas target... x1000 for a comfortable default).
pub const DEFAULT_GAS: u64 = 100_000_000_000_000;

#[derive(Subcommand)]
pub enum CwCommand {
    /// Check a CosmWasm contract (.wasm or .wat) as cosmwasm-vm does, store it under a new code id,
    /// and compile it; prints `code <id>`, `checksum <hex>` and `root <hex>`.
    Store {
        /// The contract's wasm.
        file: PathBuf,
    },
    /// Instantiate a code at a new address and call its `instantiate` with MSG (JSON).
    Instantiate {
        /// The code id.
        code_id: u64,
        /// The instantiate message, JSON.
        msg: String,
        #[command(flatten)]
        call: CallArgs,
        /// The contract's label.
        #[arg(long, default_value = "")]
        label: String,
        /// Who may migrate the contract.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Call `execute` of CONTRACT with MSG (JSON).
    Execute {
        /// The contract's address.
        contract: String,
        /// The execute message, JSON.
        msg: String,
        #[command(flatten)]
        call: CallArgs,
    },
    /// Call `query` of CONTRACT with MSG (JSON), on the newest commit; commits nothing.
    Query {
        /// The contract's address.
        contract: String,
        /// The query message, JSON.
        msg: String,
        /// The call's gas limit.
        #[arg(long, default_value_t = DEFAULT_GAS)]
        gas: u64,
    },
    /// Migrate CONTRACT to CODE_ID (only its admin, --sender, may) and call `migrate` with MSG.
    Migrate {
        /// The contract's address.
        contract: String,
        /// The new code id.
        code_id: u64,
        /// The migrate message, JSON.
        msg: String,
        #[command(flatten)]
        call: CallArgs,
    },
    /// Call `sudo` of CONTRACT with MSG (JSON).
    Sudo {
        /// The contract's address.
        contract: String,
        /// The sudo message, JSON.
        msg: String,
        /// The call's gas limit.
        #[arg(long, default_value_t = DEFAULT_GAS)]
        gas: u64,
    },
    /// List the contracts: address, code id, label, admin and creator.
    Contracts,
}

#[derive(clap::Args)]
pub struct CallArgs {
    /// The sender's address.
    #[arg(long)]
    sender: String,
    /// Funds sent with the call, e.g. `100ucosm,5uatom`.
    #[arg(long, default_value = "")]
    funds: String,
    /// The call's gas limit.
    #[arg(long, default_value_t = DEFAULT_GAS)]
    gas: u64,
}

/// Parses `100ucosm,5uatom`.
fn funds(text: &str) -> Result<Vec<cosmwasm_std::Coin>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let digits = part.bytes().take_while(u8::is_ascii_digit).count();
        let (amount, denom) = part.split_at(digits);
        if digits == 0 || denom.is_empty() {
            bail!("invalid funds `{part}`: expected an amount then a denom, e.g. 100ucosm");
        }
        let amount: u128 = amount
            .parse()
            .with_context(|| format!("invalid amount in `{part}`"))?;
        out.push(cosmwasm_std::Coin::new(amount, denom));
    }
    Ok(out)
}

fn context(call: &CallArgs) -> Result<CallContext> {
    let mut ctx = CallContext::new(&call.sender, call.gas);
    ctx.funds = funds(&call.funds)?;
    Ok(ctx)
}

fn json_arg(msg: &str) -> Result<Vec<u8>> {
    serde_json::from_str::<serde_json::Value>(msg)
        .with_context(|| format!("the message is not JSON: {msg}"))?;
    Ok(msg.as_bytes().to_vec())
}

fn open(dir: &Path, config: VmConfig, create: bool) -> Result<CwVm> {
    if !create && !dir.join("store").exists() {
        bail!(
            "cannot open VM directory {}: not a VM directory (no commit store in it)",
            dir.display()
        );
    }
    CwVm::open(dir, CwConfig::with_vm(config))
        .with_context(|| format!("cannot open VM directory {}", dir.display()))
}

/// Prints a call's result and gas; whether it succeeded.
fn report(out: &CallOutcome) -> bool {
    println!("{}", out.text());
    println!("gas {}", out.gas.used());
    out.is_ok()
}

pub fn run(dir: &Path, config: VmConfig, command: &CwCommand) -> Result<ExitCode> {
    let fail = |ok: bool| {
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    match command {
        CwCommand::Store { file } => {
            let wasm = crate::read_module(file)?;
            let vm = open(dir, config, true)?;
            let mut session = vm.session(vm.latest())?;
            let (code_id, checksum) = session.store_code(&wasm)?;
            println!("code {code_id}");
            println!("checksum {}", hex(&checksum));
            println!("root {}", session.commit()?);
        }
        CwCommand::Instantiate {
            code_id,
            msg,
            call,
            label,
            admin,
        } => {
            let vm = open(dir, config, false)?;
            let mut session = vm.session(vm.latest())?;
            let (address, out) = session.instantiate(
                &context(call)?,
                *code_id,
                &json_arg(msg)?,
                label,
                admin.as_deref(),
            )?;
            if !report(&out) {
                return Ok(fail(false));
            }
            println!("contract {address}");
            println!("root {}", session.commit()?);
        }
        CwCommand::Execute {
            contract,
            msg,
            call,
        } => {
            let vm = open(dir, config, false)?;
            let mut session = vm.session(vm.latest())?;
            let out = session.execute(&context(call)?, contract, &json_arg(msg)?)?;
            if !report(&out) {
                return Ok(fail(false));
            }
            println!("root {}", session.commit()?);
        }
        CwCommand::Query { contract, msg, gas } => {
            let vm = open(dir, config, false)?;
            let mut session = vm.session(vm.latest())?;
            let out = session.query(&CallContext::new("", *gas), contract, &json_arg(msg)?)?;
            return Ok(fail(report(&out)));
        }
        CwCommand::Migrate {
            contract,
            code_id,
            msg,
            call,
        } => {
            let vm = open(dir, config, false)?;
            let mut session = vm.session(vm.latest())?;
            let out = session.migrate(&context(call)?, contract, *code_id, &json_arg(msg)?)?;
            if !report(&out) {
                return Ok(fail(false));
            }
            println!("root {}", session.commit()?);
        }
        CwCommand::Sudo { contract, msg, gas } => {
            let vm = open(dir, config, false)?;
            let mut session = vm.session(vm.latest())?;
            let out = session.sudo(&CallContext::new("", *gas), contract, &json_arg(msg)?)?;
            if !report(&out) {
                return Ok(fail(false));
            }
            println!("root {}", session.commit()?);
        }
        CwCommand::Contracts => {
            let vm = open(dir, config, false)?;
            let session = vm.session(vm.latest())?;
            for (address, c) in session.contracts()? {
                println!(
                    "{address} code {} label {:?} admin {} creator {}",
                    c.code_id,
                    c.label,
                    c.admin.as_deref().unwrap_or("-"),
                    c.creator
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
