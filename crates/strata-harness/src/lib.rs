//! The SIGKILL child harness of Strata's crash and load tests (test-only, `publish = false`).
//!
//! A crash test re-runs its own test binary as a child that runs only that test (`--exact`),
//! tells it through an environment variable that it is the child, reads the child's stdout line
//! by line, and kills it (SIGKILL) at a moment of its choosing; a load test runs the child to the
//! end to measure it in a process of its own. The child's test function checks the variable first
//! and does the child's work instead of the parent's.
//!
//! The harness depends on nothing of Strata, so store-commit's tests use it without wasmtime.
//!
//! [`RedisServer`] starts a `redis-server` of a test's own (127.0.0.1, a free port, no
//! persistence), pauses, stops and restarts it, and kills it when dropped; the remote cache
//! layer's tests and benchmarks use it.
//!
//! [`adversarial`] builds valid wasm modules shaped to make an optimising compiler slow (deep
//! nesting, one huge function, many locals, huge `br_table`s), each grown by a size parameter.
//!
//! # Example
//!
//! ```
//! // The name a test function needs for `--exact`: its module path without the crate name.
//! assert_eq!(
//!     strata_harness::exact_name("store::crash", "sigkill_at_random_moments"),
//!     "crash::sigkill_at_random_moments"
//! );
//! assert_eq!(strata_harness::exact_name("store", "top"), "top");
//! // Inside a test: `strata_harness::test_name!(my_test)` spells it for the calling module.
//! ```
//!
//! A crash test, in outline:
//!
//! ```no_run
//! # fn main() -> Result<(), strata_harness::HarnessError> {
//! let name = strata_harness::test_name!(crash_test);
//! let child = strata_harness::Child::spawn(&name, &[("MY_CHILD", "/tmp/dir".as_ref())], None)?;
//! std::thread::sleep(std::time::Duration::from_millis(50));
//! let lines = child.kill()?; // what the child printed before it died
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod adversarial;
mod redis;

pub use redis::RedisServer;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The test binary could not be found or started.
    #[error("cannot start the child test process: {source}")]
    Spawn {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Killing or waiting for the child failed.
    #[error("cannot kill or wait for the child test process: {source}")]
    Wait {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The thread reading the child's output panicked.
    #[error("the thread reading the child's output panicked")]
    Reader,
    /// The Redis server binary is not installed.
    #[error(
        "{binary} not found: install it with `{}` (cargo xtask ci does when run as root)",
        redis::INSTALL
    )]
    RedisMissing {
        /// The binary looked for.
        binary: String,
    },
    /// The Redis server did not answer `PING` within 10 s of starting.
    #[error("redis-server did not start")]
    RedisNotReady,
}

/// The name `--exact` needs for test function `test` of the module at `module_path` (as
/// `module_path!()` gives it): the path without its first segment, the crate name.
pub fn exact_name(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{test}"),
        None => test.to_owned(),
    }
}

/// The `--exact` name of test function `$test` in the calling module.
#[macro_export]
macro_rules! test_name {
    ($test:ident) => {
        $crate::exact_name(module_path!(), stringify!($test))
    };
}

/// The running test binary, set to run only the test `name`, single-threaded, with `env` set.
fn command(name: &str, env: &[(&str, &OsStr)]) -> Result<Command, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Spawn { source })?;
    let mut command = Command::new(exe);
    command.args(["--exact", name, "--nocapture", "--test-threads=1"]);
    for (key, value) in env {
        command.env(key, value);
    }
    Ok(command)
}

/// Runs the test `name` of this binary as a child with `env` set, to its end, and returns what
/// it printed and how it exited.
pub fn run(name: &str, env: &[(&str, &OsStr)]) -> Result<Output, HarnessError> {
    command(name, env)?
        .output()
        .map_err(|source| HarnessError::Spawn { source })
}

/// A child test process whose stdout lines are collected as it prints them.
#[derive(Debug)]
pub struct Child {
    process: std::process::Child,
    reader: JoinHandle<Vec<String>>,
    ready: Receiver<()>,
}

impl Child {
    /// Starts the test `name` of this binary as a child with `env` set; its stderr is dropped.
    /// With `ready` set, [`wait_ready`](Self::wait_ready) returns once the child printed a line
    /// ending with it (the test harness prints its own text before the child's first line).
    pub fn spawn(
        name: &str,
        env: &[(&str, &OsStr)],
        ready: Option<&str>,
    ) -> Result<Child, HarnessError> {
        let mut process = command(name, env)?
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| HarnessError::Spawn { source })?;
        let stdout = process.stdout.take().ok_or_else(|| HarnessError::Spawn {
            source: std::io::Error::other("the child has no stdout pipe"),
        })?;
        let ready_line = ready.map(str::to_owned);
        let (ready_tx, ready_rx) = channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if ready_line.as_deref().is_some_and(|r| line.ends_with(r)) {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        Ok(Child {
            process,
            reader,
            ready: ready_rx,
        })
    }

    /// Waits up to `timeout` for the ready line; whether it came.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        self.ready.recv_timeout(timeout).is_ok()
    }

    /// Kills the child (SIGKILL), waits for it, and returns every line it printed.
    pub fn kill(mut self) -> Result<Vec<String>, HarnessError> {
        self.process
            .kill()
            .and_then(|()| self.process.wait())
            .map_err(|source| HarnessError::Wait { source })?;
        self.reader.join().map_err(|_| HarnessError::Reader)
    }
}

/// The number of kill rounds a crash test runs: `STRATA_CRASH_ROUNDS` (set by
/// `cargo xtask crash --rounds N`), else `default`.
pub fn crash_rounds(default: u64) -> u64 {
    std::env::var("STRATA_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// A field of this process's `/proc/self/status` in KiB (`"VmHWM:"`: peak resident memory,
/// `"VmRSS:"`: resident memory now); 0 where the file or the field is missing.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "STRATA_HARNESS_SELF_TEST_CHILD";

    #[test]
    fn names_drop_the_crate() {
        assert_eq!(exact_name("a::b::c", "t"), "b::c::t");
        assert_eq!(exact_name("a", "t"), "t");
        assert_eq!(
            test_name!(names_drop_the_crate),
            "tests::names_drop_the_crate"
        );
    }

    /// The child prints a ready line and then blocks: the parent sees the line and kills it.
    #[test]
    fn a_child_is_seen_ready_and_killed() -> Result<(), HarnessError> {
        if std::env::var_os(CHILD).is_some() {
            println!("child ready");
            std::thread::sleep(Duration::from_secs(60));
            return Ok(());
        }
        let name = test_name!(a_child_is_seen_ready_and_killed);
        let child = Child::spawn(&name, &[(CHILD, "1".as_ref())], Some("ready"))?;
        assert!(child.wait_ready(Duration::from_secs(30)));
        let lines = child.kill()?;
        assert!(
            lines.iter().any(|l| l.ends_with("child ready")),
            "{lines:?}"
        );
        let output = run("no_such_test_name", &[])?;
        assert!(
            output.status.success(),
            "an empty filter runs nothing and passes"
        );
        Ok(())
    }
}
