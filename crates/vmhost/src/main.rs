//! `vmhost`: the command-line tool over a Strata VM directory.
//!
//! Its output is a contract that scripts rely on: `deploy` prints the module id and then
//! `root <hex>`, `call` prints the results space-separated on one line (and `root <hex>` with
//! `--commit`), `commits` prints one line per commit beginning with its root, newest last.
//! Any failure prints one line on stderr and exits non-zero, and changes nothing.

mod demo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use vm_host::{Deletion, ModuleId, Root, Vm, VmConfig, parse_args};

/// A WebAssembly contract VM over a layered module cache and a copy-on-write commit store.
#[derive(Parser)]
#[command(name = "vmhost", version)]
struct Cli {
    /// The VM directory (commit store, module cache, pins); created if missing.
    #[arg(long, global = true, env = "VMHOST_DIR")]
    dir: Option<PathBuf>,
    /// Do not fsync (faster, not durable across power loss).
    #[arg(long, global = true)]
    no_fsync: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy a .wasm or .wat module on top of the newest commit and commit.
    Deploy {
        /// The module file.
        file: PathBuf,
    },
    /// Call an exported function in a session on a commit.
    Call {
        /// The commit to run on (default: the newest).
        #[arg(long)]
        base: Option<String>,
        /// Commit the session after the call and print its root.
        #[arg(long)]
        commit: bool,
        /// Fuel of the call.
        #[arg(long)]
        fuel: Option<u64>,
        /// The module id (64 hex digits).
        module: String,
        /// The exported function.
        function: String,
        /// Arguments, parsed by the function's parameter types.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// List the commits, oldest first.
    Commits,
    /// Delete a commit (deferred while sessions use it).
    Delete {
        /// The commit's root.
        root: String,
    },
    /// Recompute every commit's root and check every cached artifact.
    Verify,
    /// Show cache-layer statistics and the store's size.
    Stats,
    /// Pin a module in memory, across restarts.
    Pin {
        /// The module id.
        module: String,
    },
    /// Unpin a module.
    Unpin {
        /// The module id.
        module: String,
    },
    /// Compile modules into the file cache.
    Precompile {
        /// .wasm or .wat files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the demonstration in a temporary directory.
    Demo,
}

fn main() -> ExitCode {
    // A reader that goes away (`vmhost commits | head -1`) must not make `println!` panic:
    // restore the default SIGPIPE action, which ends the process quietly as other tools do.
    // SAFETY: called first thing in `main`, before any other thread exists; `signal` with
    // `SIG_DFL` installs no Rust code as a handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, whatever the error chain looks like.
            let message = format!("{err:#}");
            let line: Vec<&str> = message.split_whitespace().collect();
            eprintln!("vmhost: {}", line.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("{} is neither a wasm binary nor WAT text", path.display()))?;
    wat::parse_str(text).map_err(|e| anyhow::anyhow!("{}: invalid WAT: {e}", path.display()))
}

fn module_id(text: &str) -> Result<ModuleId> {
    ModuleId::from_hex(text).map_err(|e| anyhow::anyhow!("invalid module id `{text}`: {e}"))
}

fn root(text: &str) -> Result<Root> {
    Root::from_hex(text).map_err(|e| anyhow::anyhow!("invalid root `{text}`: {e}"))
}

fn open(cli: &Cli) -> Result<Vm> {
    let Some(dir) = &cli.dir else {
        bail!("no VM directory: pass --dir DIR or set VMHOST_DIR");
    };
    let config = VmConfig {
        fsync: !cli.no_fsync,
        ..VmConfig::default()
    };
    Vm::open(dir, config).with_context(|| format!("cannot open VM directory {}", dir.display()))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Demo => {
            demo::run()?;
        }
        Command::Deploy { file } => {
            let wasm = read_module(file)?;
            let vm = open(&cli)?;
            let (id, root) = vm.deploy(&wasm)?;
            println!("{id}");
            println!("root {root}");
        }
        Command::Call {
            base,
            commit,
            fuel,
            module,
            function,
            args,
        } => {
            let module = module_id(module)?;
            let base = base.as_deref().map(root).transpose()?;
            let vm = open(&cli)?;
            let base = match base {
                Some(base) => Some(base),
                None => Some(vm.latest().context("the store has no commits yet")?),
            };
            let mut session = vm.session(base)?;
            if let Some(fuel) = fuel {
                session.set_fuel(*fuel);
            }
            let (params, _) = session.signature(&module, function)?;
            let values = parse_args(&params, args)?;
            let results = session.call(&module, function, &values)?;
            let shown: Vec<String> = results.iter().map(ToString::to_string).collect();
            println!("{}", shown.join(" "));
            if *commit {
                println!("root {}", session.commit()?);
            }
        }
        Command::Commits => {
            let vm = open(&cli)?;
            for commit in vm.commits() {
                let parent = commit.parent.map_or_else(|| "-".to_owned(), |p| p.to_hex());
                println!(
                    "{} parent {} modules {}",
                    commit.root,
                    parent,
                    commit.modules.len()
                );
            }
        }
        Command::Delete { root: text } => {
            let root = root(text)?;
            let vm = open(&cli)?;
            match vm.delete(&root)? {
                Deletion::Deleted => println!("deleted {root}"),
                Deletion::Deferred { sessions } => println!(
                    "deletion of {root} deferred until {sessions} session(s) based on it end"
                ),
            }
        }
        Command::Verify => {
            let vm = open(&cli)?;
            let outcome = vm.verify()?;
            for problem in &outcome.problems {
                println!("problem: {problem}");
            }
            println!(
                "checked {} commit(s) and {} cached artifact(s): {}",
                outcome.commits,
                outcome.artifacts,
                if outcome.is_ok() { "ok" } else { "NOT OK" }
            );
            if !outcome.is_ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Stats => {
            let vm = open(&cli)?;
            let stats = vm.stats();
            demo::print_layers(&stats.layers);
            println!(
                "commits {} | pinned modules {} | compiles {} | instantiations {} | calls {}",
                vm.commits().len(),
                vm.pins().len(),
                stats.compiles,
                stats.instantiations,
                stats.calls
            );
        }
        Command::Pin { module } => {
            let id = module_id(module)?;
            let vm = open(&cli)?;
            vm.pin(&id)?;
            println!("pinned {id}");
        }
        Command::Unpin { module } => {
            let id = module_id(module)?;
            let vm = open(&cli)?;
            if vm.unpin(&id)? {
                println!("unpinned {id}");
            } else {
                println!("{id} was not pinned");
            }
        }
        Command::Precompile { paths } => {
            let modules = paths
                .iter()
                .map(|p| read_module(p))
                .collect::<Result<Vec<_>>>()?;
            let vm = open(&cli)?;
            let bar = indicatif::ProgressBar::new(modules.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            for (path, wasm) in paths.iter().zip(&modules) {
                bar.set_message(path.display().to_string());
                let id = vm
                    .precompile(wasm)
                    .with_context(|| format!("cannot precompile {}", path.display()))?;
                bar.suspend(|| println!("{id} {}", path.display()));
                bar.inc(1);
            }
            bar.finish_with_message("done");
        }
    }
    Ok(ExitCode::SUCCESS)
}
