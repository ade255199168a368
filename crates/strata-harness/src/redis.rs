//! [`RedisServer`]: a `redis-server` of a test's own, on 127.0.0.1 at a free port, with no
//! persistence, stopped when dropped; or an existing server named by `STRATA_REDIS_URL`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// The command that installs the server on Debian and Ubuntu (`cargo xtask ci` runs it when the
/// server is missing and it runs as root).
pub const INSTALL: &str = "apt-get update && apt-get install -y redis-server";

/// A Redis server for a test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    url: String,
}

impl RedisServer {
    /// The server of `STRATA_REDIS_URL` when it is set (the tests that stop or pause a server
    /// start their own with [`RedisServer::start`] whatever it says), else a new one.
    pub fn shared_or_start() -> Result<Self, HarnessError> {
        match std::env::var("STRATA_REDIS_URL") {
            Ok(url) if !url.is_empty() => Ok(RedisServer {
                child: None,
                port: 0,
                url,
            }),
            _ => Self::start(),
        }
    }

    /// Starts `redis-server` (or `$STRATA_REDIS_SERVER`) on 127.0.0.1 at a free port, without
    /// persistence, and waits until it answers `PING`. A missing binary is an error naming the
    /// command that installs it: the tests never skip silently.
    pub fn start() -> Result<Self, HarnessError> {
        let mut last = None;
        // A free port can be taken between the probe and the server's bind: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(|source| HarnessError::Spawn { source })?
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                url: format!("redis://127.0.0.1:{port}/"),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ HarnessError::RedisMissing { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::RedisNotReady))
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let binary =
            std::env::var("STRATA_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => HarnessError::RedisMissing { binary },
                _ => HarnessError::Spawn { source },
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return Err(HarnessError::RedisNotReady);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        Err(HarnessError::RedisNotReady)
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:<port>/`, or `STRATA_REDIS_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id of the server this test started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {signal} {pid}");
        }
    }

    /// Stops the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty server on the same port after [`RedisServer::stop`].
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
