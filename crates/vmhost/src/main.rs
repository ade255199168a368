//! `vmhost`: the command-line tool over a Strata VM directory.
//!
//! Its output is a contract that scripts rely on: `deploy` prints the module id and then
//! `root <hex>`, `call` prints the results space-separated on one line (and `root <hex>` with
//! `--commit`), `commits` prints one line per commit beginning with its root, newest last.
//! `commits`, `stats`, `verify` and `prune` print one JSON document instead with `--json`.
//! Any failure prints one line on stderr and exits non-zero, and changes nothing. Logs go to
//! stderr, and only when `RUST_LOG` is set.

mod cw;
mod demo;
mod size;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use size::{Limit, Size};
use vm_host::{
    CacheVerification, Compression, Deletion, ModuleId, RemoteCache, Root, TierPolicy,
    Verification, Vm, VmConfig, parse_args,
};

/// The shortest key `--hmac-key-file` accepts: 32 bytes, the key size of the keyed BLAKE3 tags
/// (the option keeps its name from the HMAC-SHA256 tags of cache format 2).
const MIN_KEY_BYTES: usize = 32;

/// A WebAssembly contract VM over a layered module cache and a copy-on-write commit store.
///
/// Logs (opening, compiles, cache evictions and rejections, commits) go to stderr when
/// RUST_LOG is set, e.g. RUST_LOG=debug or RUST_LOG=vm_host=info,cache_fs=debug.
#[derive(Parser)]
#[command(name = "vmhost", version)]
struct Cli {
    /// The VM directory (commit store, module cache, pins). `deploy` and `precompile` create it
    /// if missing; every other command needs an existing one.
    #[arg(long, global = true, env = "VMHOST_DIR")]
    dir: Option<PathBuf>,
    /// Do not fsync (faster, not durable across power loss).
    #[arg(long, global = true)]
    no_fsync: bool,
    /// How the file cache checks a compiled module before loading it. `verify` checks every
    /// cached module fully whatever the mode, and with `authenticated` also its tag.
    #[arg(long, global = true, value_enum, default_value_t = Mode::Authenticated)]
    verification: Mode,
    /// The key of `--verification authenticated`, in place of the VM's own key
    /// (`<dir>/cache.key`): a file of at least 32 bytes, used as it is (every byte counts, a
    /// final newline too). Keep it outside the VM's cache folder.
    #[arg(long, global = true, value_name = "PATH")]
    hmac_key_file: Option<PathBuf>,
    /// Capacity of the in-memory LRU layer, in bytes of compiled code (a byte count, or with a
    /// unit: 64MiB, 2GiB, 500MB).
    #[arg(long, global = true, value_name = "SIZE", default_value_t = Size(VmConfig::default().lru_bytes))]
    lru_bytes: Size,
    /// Byte limit of the file cache; the least recently used modules are evicted beyond it.
    /// `none` for no limit.
    #[arg(long, global = true, value_name = "SIZE", default_value_t = Limit(VmConfig::default().fs_cache_bytes))]
    cache_bytes: Limit,
    /// Fuel of each call: a call that uses it up fails with "out of fuel" and leaves no trace.
    #[arg(long, global = true, value_name = "UNITS", default_value_t = VmConfig::default().default_fuel)]
    fuel: u64,
    /// The largest linear memory a module may grow to.
    #[arg(long, global = true, value_name = "SIZE", default_value_t = Size(VmConfig::default().memory_limit as u64))]
    memory_limit: Size,
    /// A Redis server shared by the fleet, below the file cache (redis://HOST:PORT/DB, with
    /// :PASSWORD@ before HOST when the server asks for one):
    /// a module compiled by one node is loaded by the others, and a module is compiled by one
    /// node at a time (a lease in Redis). Redis down or slow is a miss, never an error. Needs
    /// --remote-key-file.
    #[arg(long, global = true, value_name = "URL", env = "VMHOST_REMOTE_CACHE")]
    remote_cache: Option<String>,
    /// The fleet's key for the remote cache's tags: a file of at least 32 bytes, the same on
    /// every node, never stored in Redis (whoever holds it can make every node run native
    /// code). Read, never created.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "VMHOST_REMOTE_KEY_FILE"
    )]
    remote_key_file: Option<PathBuf>,
    /// Timeout of each remote cache read or write, in milliseconds (a connect waits at most
    /// 250 ms, or this if shorter).
    #[arg(long, global = true, value_name = "MS", default_value_t = 1000)]
    remote_timeout_ms: u64,
    /// Time to live of a compile lease, in milliseconds: how long the fleet waits for a node
    /// that died while compiling. The holder renews it while it compiles.
    #[arg(long, global = true, value_name = "MS", default_value_t = 10_000)]
    remote_lease_ttl_ms: u64,
    /// Store artifacts in Redis compressed with zstd at this level (1-19): a third of the bytes
    /// for a decompression at every hit; pays on a slow link, not on a fast one.
    #[arg(long, global = true, value_name = "LEVEL")]
    remote_zstd: Option<i32>,
    /// The compiler tiers: `cranelift` (optimising, the default), `winch-then-cranelift` (a
    /// module missing from every cache runs at once on Winch's baseline code while Cranelift
    /// compiles it in the background; `precompile` waits for Cranelift), or `winch` (Winch
    /// only, for modules Winch can compile).
    #[arg(long, global = true, value_enum, default_value_t = TierArg::Cranelift)]
    tier: TierArg,
    #[command(subcommand)]
    command: Command,
}

/// The `--tier` policies, as `vm_host::TierPolicy`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TierArg {
    Cranelift,
    WinchThenCranelift,
    Winch,
}

impl From<TierArg> for TierPolicy {
    fn from(tier: TierArg) -> Self {
        match tier {
            TierArg::Cranelift => TierPolicy::CraneliftOnly,
            TierArg::WinchThenCranelift => TierPolicy::WinchThenCranelift,
            TierArg::Winch => TierPolicy::WinchOnly,
        }
    }
}

/// The `--verification` modes, as `vm_host::Verification`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Check the file's trailer only, then map it and run it as native code unhashed. Trusts
    /// that only this node writes the cache folder and never changes a file in place: a forged
    /// or damaged artifact is run as it is.
    Trusted,
    /// Check the sha256 of every byte before loading (the default). Detects damage, not
    /// forgery: anyone who can write the cache folder can forge a consistent file.
    Verified,
    /// The default: as verified, plus a tag under a secret key, so that no one who can write
    /// the cache folder but cannot read the key can forge a module. The key is the VM's own
    /// (`<dir>/cache.key`, 32 random bytes made with mode 0600 when the directory is created)
    /// or the one of --hmac-key-file.
    Authenticated,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy a .wasm or .wat module on top of the newest commit and commit.
    Deploy {
        /// The module file.
        file: PathBuf,
    },
    /// Call an exported function in a session on a commit (with --fuel for its fuel).
    Call {
        /// The commit to run on (default: the newest).
        #[arg(long)]
        base: Option<String>,
        /// Commit the session after the call and print its root.
        #[arg(long)]
        commit: bool,
        /// The module id (64 hex digits).
        module: String,
        /// The exported function.
        function: String,
        /// Arguments, parsed by the function's parameter types.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// List the commits, oldest first: root, parent and module count.
    Commits {
        /// Print one JSON document: {"commits": [{"root", "parent", "seq", "modules"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Delete a commit (deferred while sessions use it).
    Delete {
        /// The commit's root.
        root: String,
    },
    /// Recompute every commit's root and check every cached module; exit non-zero on a problem.
    Verify {
        /// Print one JSON document: {"ok", "commits", "artifacts", "problems"}.
        #[arg(long)]
        json: bool,
    },
    /// Show what the directory holds on disk: the store's size and commits, each engine's
    /// cache folder (entries and bytes), and the pins.
    Stats {
        /// Print one JSON document: {"dir", "store": {"bytes", "apparent_bytes", "files"},
        /// "commits", "cache": [{"folder", "in_use", "tier", "entries", "bytes"}], "pins",
        /// "failed_pins": [{"id", "line", "reason"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Remove the cache folders of engines this build does not use (left by another wasmtime
    /// version or configuration) and report what that freed.
    Prune {
        /// Print one JSON document: {"removed_folders", "removed_files", "removed_bytes"}.
        #[arg(long)]
        json: bool,
    },
    /// Pin a module in memory, across restarts.
    Pin {
        /// The module id.
        module: String,
    },
    /// Unpin a module, also one that failed to load. Any unpin rewrites the pins file without
    /// its lines that are not module ids.
    Unpin {
        /// The module id.
        module: String,
    },
    /// Compile modules into the file cache (and the remote cache, with --remote-cache).
    Precompile {
        /// Also upload to the remote cache the modules this node had cached and the remote
        /// cache lacks, and wait for the uploads: warms the fleet. Needs --remote-cache.
        #[arg(long)]
        remote: bool,
        /// .wasm or .wat files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// CosmWasm contracts: store, instantiate, execute, query, migrate, sudo, contracts.
    Cw {
        #[command(subcommand)]
        command: cw::CwCommand,
    },
    /// Run the demonstration in a temporary directory (default settings).
    Demo,
}

/// Whether a command may create the VM directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    /// `deploy` and `precompile`: a new directory is what the user asked for.
    IfMissing,
    /// Every other command: a missing directory is a mistyped path.
    Never,
}

fn main() -> ExitCode {
    // A reader that goes away (`vmhost commits | head -1`) must not make `println!` panic:
    // restore the default SIGPIPE action, which ends the process quietly as other tools do.
    // SAFETY: called first thing in `main`, before any other thread exists; `signal` with
    // `SIG_DFL` installs no Rust code as a handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the help that a bare `vmhost` prints, as usual.
        Err(err)
            if !err.use_stderr()
                || err.kind()
                    == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            err.exit()
        }
        // A usage error is one line too.
        Err(err) => {
            let text = err.render().to_string();
            // The error is its first paragraph (the usage and hints follow a blank line).
            let paragraph: Vec<&str> = text
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .flat_map(str::split_whitespace)
                .collect();
            let message = paragraph.join(" ");
            eprintln!("vmhost: {}", message.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, whatever the error chain looks like; a cause that its error's own
            // message already shows is not repeated.
            let mut message = String::new();
            for cause in err.chain() {
                let text = cause.to_string();
                if message.contains(&text) {
                    continue;
                }
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
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

/// The file cache's verification mode from `--verification` and `--hmac-key-file`.
fn verification(cli: &Cli) -> Result<CacheVerification> {
    let mode = match (cli.verification, &cli.hmac_key_file) {
        (Mode::Authenticated, None) => return Ok(CacheVerification::VmKey),
        (Mode::Authenticated, Some(path)) => {
            let key = std::fs::read(path)
                .with_context(|| format!("cannot read hmac key file {}", path.display()))?;
            if key.len() < MIN_KEY_BYTES {
                bail!(
                    "hmac key file {} holds {} byte(s); a key needs at least {MIN_KEY_BYTES}",
                    path.display(),
                    key.len()
                );
            }
            Verification::Authenticated { key }
        }
        (_, Some(_)) => bail!("--hmac-key-file is used only with --verification authenticated"),
        // SAFETY: `--verification trusted` is the operator's assertion that only this node
        // writes the VM's cache folder and never modifies a file in place (the option's help
        // says so); that is the contract of `Verification::trusted`.
        (Mode::Trusted, None) => unsafe { Verification::trusted() },
        (Mode::Verified, None) => Verification::Verified,
    };
    Ok(CacheVerification::Mode(mode))
}

/// The VM settings from the global options.
fn config(cli: &Cli) -> Result<VmConfig> {
    let memory_limit = usize::try_from(cli.memory_limit.0)
        .context("--memory-limit is larger than this machine's address space")?;
    Ok(VmConfig {
        fsync: !cli.no_fsync,
        fs_verification: verification(cli)?,
        lru_bytes: cli.lru_bytes.0,
        fs_cache_bytes: cli.cache_bytes.0,
        default_fuel: cli.fuel,
        memory_limit,
        remote: remote(cli)?,
        tier: cli.tier.into(),
        ..VmConfig::default()
    })
}

/// The remote layer from `--remote-cache` and its options.
fn remote(cli: &Cli) -> Result<Option<RemoteCache>> {
    let (url, key_file) = match (&cli.remote_cache, &cli.remote_key_file) {
        (None, None) => return Ok(None),
        (Some(url), Some(path)) => (url, path),
        (Some(_), None) => bail!("--remote-cache needs --remote-key-file (the fleet's key)"),
        (None, Some(_)) => bail!("--remote-key-file is used only with --remote-cache"),
    };
    let key = std::fs::read(key_file)
        .with_context(|| format!("cannot read remote key file {}", key_file.display()))?;
    if key.len() < MIN_KEY_BYTES {
        bail!(
            "remote key file {} holds {} byte(s); a key needs at least {MIN_KEY_BYTES}",
            key_file.display(),
            key.len()
        );
    }
    if cli.remote_timeout_ms == 0 {
        bail!("--remote-timeout-ms must be above 0");
    }
    let mut remote = RemoteCache::new(url.clone(), key);
    let timeout = std::time::Duration::from_millis(cli.remote_timeout_ms);
    remote.config.io_timeout = timeout;
    remote.config.connect_timeout = remote.config.connect_timeout.min(timeout);
    remote.config.lease_ttl = std::time::Duration::from_millis(cli.remote_lease_ttl_ms);
    if let Some(level) = cli.remote_zstd {
        if !(1..=19).contains(&level) {
            bail!("--remote-zstd takes a level from 1 to 19, got {level}");
        }
        remote.config.compression = Compression::Zstd { level };
    }
    Ok(Some(remote))
}

fn open(cli: &Cli, create: Create) -> Result<Vm> {
    let Some(dir) = &cli.dir else {
        bail!("no VM directory: pass --dir DIR or set VMHOST_DIR");
    };
    let config = config(cli)?;
    let vm = match create {
        Create::IfMissing => Vm::open(dir, config),
        Create::Never => Vm::open_existing(dir, config),
    };
    vm.with_context(|| format!("cannot open VM directory {}", dir.display()))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Demo => {
            demo::run()?;
        }
        Command::Deploy { file } => {
            let wasm = read_module(file)?;
            let vm = open(&cli, Create::IfMissing)?;
            let (id, root) = vm.deploy(&wasm)?;
            println!("{id}");
            println!("root {root}");
        }
        Command::Call {
            base,
            commit,
            module,
            function,
            args,
        } => call(&cli, base.as_deref(), *commit, module, function, args)?,
        Command::Commits { json } => print_commits(&open(&cli, Create::Never)?, *json),
        Command::Delete { root: text } => {
            let root = root(text)?;
            let vm = open(&cli, Create::Never)?;
            match vm.delete(&root)? {
                Deletion::Deleted => println!("deleted {root}"),
                Deletion::Deferred { sessions } => println!(
                    "deletion of {root} deferred until {sessions} session(s) based on it end"
                ),
            }
        }
        Command::Verify { json } => {
            if !print_verify(&open(&cli, Create::Never)?, *json)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Stats { json } => print_stats(&open(&cli, Create::Never)?, *json)?,
        Command::Prune { json } => print_prune(&open(&cli, Create::Never)?, *json)?,
        Command::Pin { module } => {
            let id = module_id(module)?;
            let vm = open(&cli, Create::Never)?;
            vm.pin(&id)?;
            println!("pinned {id}");
        }
        Command::Unpin { module } => {
            let id = module_id(module)?;
            let vm = open(&cli, Create::Never)?;
            if vm.unpin(&id)? {
                println!("unpinned {id}");
            } else {
                println!("{id} was not pinned");
            }
        }
        Command::Precompile { remote, paths } => precompile(&cli, *remote, paths)?,
        Command::Cw { command } => {
            let Some(dir) = &cli.dir else {
                bail!("no VM directory: pass --dir DIR or set VMHOST_DIR");
            };
            return cw::run(dir, config(&cli)?, command);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmhost call`: one call on `base` (default: the newest commit), committed with `commit`.
fn call(
    cli: &Cli,
    base: Option<&str>,
    commit: bool,
    module: &str,
    function: &str,
    args: &[String],
) -> Result<()> {
    let module = module_id(module)?;
    let base = base.map(root).transpose()?;
    let vm = open(cli, Create::Never)?;
    let base = match base {
        Some(base) => Some(base),
        None => Some(vm.latest().context("the store has no commits yet")?),
    };
    let mut session = vm.session(base)?;
    let (params, _) = session.signature(&module, function)?;
    let values = parse_args(&params, args)?;
    let results = session.call(&module, function, &values)?;
    let shown: Vec<String> = results.iter().map(ToString::to_string).collect();
    println!("{}", shown.join(" "));
    if commit {
        println!("root {}", session.commit()?);
    }
    Ok(())
}

/// `vmhost commits`: one line per commit, or one JSON document.
fn print_commits(vm: &Vm, json: bool) {
    let commits = vm.commits();
    if json {
        let list: Vec<_> = commits
            .iter()
            .map(|c| {
                json!({
                    "root": c.root.to_hex(),
                    "parent": c.parent.map(|p| p.to_hex()),
                    "seq": c.seq,
                    "modules": c.modules.iter().map(|m| m.to_hex()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({ "commits": list }));
    } else {
        for commit in commits {
            let parent = commit.parent.map_or_else(|| "-".to_owned(), |p| p.to_hex());
            println!(
                "{} parent {} modules {}",
                commit.root,
                parent,
                commit.modules.len()
            );
        }
    }
}

/// `vmhost verify`: the problems and a summary line, or one JSON document; whether all is sound.
fn print_verify(vm: &Vm, json: bool) -> Result<bool> {
    let outcome = vm.verify()?;
    if json {
        println!(
            "{}",
            json!({
                "ok": outcome.is_ok(),
                "commits": outcome.commits,
                "artifacts": outcome.artifacts,
                "problems": outcome.problems,
            })
        );
    } else {
        for problem in &outcome.problems {
            println!("problem: {problem}");
        }
        println!(
            "checked {} commit(s) and {} cached artifact(s): {}",
            outcome.commits,
            outcome.artifacts,
            if outcome.is_ok() { "ok" } else { "NOT OK" }
        );
    }
    Ok(outcome.is_ok())
}

/// The most keys `stats` scans in the remote cache.
const REMOTE_SCAN_KEYS: u64 = 1_000_000;

/// `vmhost stats`: what the VM directory holds on disk (and the remote cache for this engine),
/// as text or one JSON document.
fn print_stats(vm: &Vm, json: bool) -> Result<()> {
    let stats = vm.disk_stats()?;
    let remote = vm.remote_held(REMOTE_SCAN_KEYS);
    if json {
        let cache: Vec<_> = stats
            .cache
            .iter()
            .map(|f| {
                json!({
                    "folder": f.name,
                    "in_use": f.in_use,
                    "tier": f.tier.map(|t| t.to_string()),
                    "entries": f.entries,
                    "bytes": f.bytes,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "dir": vm.dir().display().to_string(),
                "store": {
                    "bytes": stats.store_bytes,
                    "apparent_bytes": stats.store_apparent_bytes,
                    "files": stats.store_files,
                },
                "commits": stats.commits,
                "cache": cache,
                "pins": stats.pins.iter().map(|p| p.to_hex()).collect::<Vec<_>>(),
                "failed_pins": stats.failed_pins.iter().map(|f| json!({
                    "id": f.id.map(|id| id.to_hex()),
                    "line": f.line,
                    "reason": f.reason,
                })).collect::<Vec<_>>(),
                "remote": remote.as_ref().map(|held| match held {
                    Ok(held) => json!({
                        "entries": held.entries,
                        "bytes": held.bytes,
                        "truncated": held.truncated,
                    }),
                    Err(e) => json!({ "error": e.to_string() }),
                }),
            })
        );
    } else {
        println!(
            "store {} bytes on disk ({} bytes apparent) in {} file(s)",
            stats.store_bytes, stats.store_apparent_bytes, stats.store_files
        );
        println!("commits {}", stats.commits);
        for folder in &stats.cache {
            println!(
                "cache {} ({}) entries {} bytes {}{}",
                folder.name,
                if folder.in_use {
                    "in use"
                } else {
                    "other engine"
                },
                folder.entries,
                folder.bytes,
                folder
                    .tier
                    .map(|t| format!(" tier {t}"))
                    .unwrap_or_default()
            );
        }
        println!("pins {}", stats.pins.len());
        for pin in &stats.pins {
            println!("pin {pin}");
        }
        for failed in &stats.failed_pins {
            println!("failed pin: {failed}");
        }
        match remote {
            Some(Ok(held)) => println!(
                "remote entries {} bytes {}{}",
                held.entries,
                held.bytes,
                if held.truncated {
                    " (scan truncated)"
                } else {
                    ""
                }
            ),
            Some(Err(e)) => println!("remote unavailable: {e}"),
            None => {}
        }
    }
    Ok(())
}

/// `vmhost prune`: removes other engines' cache folders and reports what it freed.
fn print_prune(vm: &Vm, json: bool) -> Result<()> {
    let report = vm.prune()?;
    if json {
        let folders: Vec<String> = report
            .removed_folders
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        println!(
            "{}",
            json!({
                "removed_folders": folders,
                "removed_files": report.removed_files,
                "removed_bytes": report.removed_bytes,
            })
        );
    } else {
        for folder in &report.removed_folders {
            println!("removed {}", folder.display());
        }
        println!(
            "freed {} bytes: {} cache folder(s), {} file(s)",
            report.removed_bytes,
            report.removed_folders.len(),
            report.removed_files
        );
    }
    Ok(())
}

/// How long `precompile` waits for its uploads to the remote cache.
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// The longest `precompile` waits for the background Cranelift compiles (esbuild takes 14 s).
const TIER_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `vmhost precompile`: compiles each file into the caches, with a progress bar.
fn precompile(cli: &Cli, remote: bool, paths: &[PathBuf]) -> Result<()> {
    if remote && cli.remote_cache.is_none() {
        bail!("precompile --remote needs --remote-cache");
    }
    let modules = paths
        .iter()
        .map(|p| read_module(p))
        .collect::<Result<Vec<_>>>()?;
    let vm = open(cli, Create::IfMissing)?;
    let bar = indicatif::ProgressBar::new(modules.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for (path, wasm) in paths.iter().zip(&modules) {
        bar.set_message(path.display().to_string());
        let id = if remote {
            vm.precompile_for_fleet(wasm).map(|(id, _)| id)
        } else {
            vm.precompile(wasm)
        }
        .with_context(|| format!("cannot precompile {}", path.display()))?;
        bar.suspend(|| println!("{id} {}", path.display()));
        bar.inc(1);
    }
    bar.finish_with_message("done");
    // The Cranelift compiles of `--tier winch-then-cranelift` finish before the process ends.
    if !vm.wait_tier_up(TIER_UP_WAIT) {
        bail!("the Cranelift compiles did not finish within {TIER_UP_WAIT:?}");
    }
    if !vm.flush_remote(UPLOAD_WAIT) {
        bail!("the uploads to the remote cache did not finish within {UPLOAD_WAIT:?}");
    }
    let stats = vm.stats();
    tracing::info!(
        compiles = stats.compiles,
        winch_compiles = stats.tiers.winch_compiles,
        tier_ups = stats.tiers.tier_ups,
        tier_ups_failed = stats.tiers.failed,
        lease_waits = stats.lease_waits,
        lease_wait_hits = stats.lease_wait_hits,
        "precompiled"
    );
    if let Some(remote) = &stats.remote {
        tracing::info!(
            uploads = remote.uploads,
            failures = remote.failures,
            breaker_trips = remote.breaker_trips,
            "remote cache"
        );
    }
    Ok(())
}
