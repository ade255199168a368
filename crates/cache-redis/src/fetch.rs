//! The hot read of a load: `STRLEN`, then `GETRANGE` bounded by the limit, on a connection of
//! its own that reads the value's bytes straight into a buffer kept with the connection.
//!
//! The `redis` crate's reply parser reads through a growing decoder buffer and copies the value
//! out of it: for hackatom's 0.8 MB artifact on loopback that is 0.5-0.6 ms against 0.22 ms for
//! reading the same reply into a warm buffer (measured, release, this machine). Everything else
//! (uploads, leases, stats, URL parsing) keeps the `redis` crate; this speaks only the little of RESP2 the
//! read needs: integer, bulk string, simple string and error replies. Anything else from the
//! server is a protocol error, which the caller treats as a failed call (a miss).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};

/// The longest reply line accepted (a length, an integer, an error message).
const MAX_LINE: usize = 4096;
/// The least new bytes shown to `get_bounded`'s `progress` at once (BLAKE3 hashes large
/// updates fastest).
const SEGMENT: usize = 128 << 10;
/// A buffer grown past this for one value is released after the load instead of kept.
const RETAINED_VALUE_BYTES: usize = 16 << 20;

/// How a fetch failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The connection failed or timed out, or the server answered outside the protocol: the
    /// connection is dropped.
    #[error("redis read failed: {0}")]
    Io(#[from] io::Error),
    /// The server answered an error reply (`WRONGTYPE ...`): the connection stays usable.
    #[error("redis error reply: {0}")]
    Reply(String),
}

impl FetchError {
    /// Whether the server had closed the connection (it restarted, or dropped an idle client)
    /// before this call: a new connection may succeed at once. A timeout is not that.
    pub(crate) fn is_connection_closed(&self) -> bool {
        match self {
            FetchError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
            ),
            FetchError::Reply(_) => false,
        }
    }
}

fn protocol(what: &str) -> FetchError {
    FetchError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()))
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf),
            Stream::Unix(s) => s.write_all(buf),
        }
    }
}

/// One connection of the read path, with its buffers.
pub(crate) struct Reader {
    stream: Stream,
    /// Bytes read and not yet consumed: `inbox[at..len]`.
    inbox: Box<[u8]>,
    at: usize,
    len: usize,
    /// The last value read; its capacity is kept for the next one (warm pages).
    value: Vec<u8>,
    out: Vec<u8>,
}

impl Reader {
    /// Connects as `info` says, within `connect_timeout`, with `io_timeout` on every read and
    /// write; authenticates and selects the database. TCP and Unix sockets: the `redis` crate
    /// is built without TLS, so it refuses a `rediss://` URL at `RedisCache::open`.
    pub(crate) fn connect(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Reader, FetchError> {
        let stream = match info.addr() {
            ConnectionAddr::Tcp(host, port) => tcp(host, *port, connect_timeout, io_timeout)?,
            ConnectionAddr::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(io_timeout))?;
                s.set_write_timeout(Some(io_timeout))?;
                Stream::Unix(s)
            }
            _ => return Err(protocol("TLS is not built into this client")),
        };
        let mut reader = Reader {
            stream,
            inbox: vec![0; 64 << 10].into_boxed_slice(),
            at: 0,
            len: 0,
            value: Vec::new(),
            out: Vec::with_capacity(256),
        };
        reader.set_up(info)?;
        Ok(reader)
    }

    fn set_up(&mut self, info: &ConnectionInfo) -> Result<(), FetchError> {
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => self.command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => self.command(&[b"AUTH", password.as_bytes()]),
            }
            self.send()?;
            self.ok()?;
        }
        if settings.db() != 0 {
            self.command(&[b"SELECT", settings.db().to_string().as_bytes()]);
            self.send()?;
            self.ok()?;
        }
        Ok(())
    }

    /// The length of the string at `key` (0 when there is none).
    pub(crate) fn strlen(&mut self, key: &str) -> Result<u64, FetchError> {
        self.command(&[b"STRLEN", key.as_bytes()]);
        self.send()?;
        let line = self.line()?;
        match line.split_first() {
            Some((b':', n)) => parse_u64(n).ok_or_else(|| protocol("bad integer reply")),
            Some((b'-', message)) => Err(FetchError::Reply(text(message))),
            _ => Err(protocol("unexpected reply to STRLEN")),
        }
    }

    /// At most `limit` bytes of the string at `key`, in a buffer that stays with this reader.
    /// `progress` sees the bytes received so far as they arrive, every [`SEGMENT`] bytes or
    /// more (to hash them while the rest is on its way), not necessarily the whole value.
    pub(crate) fn get_bounded(
        &mut self,
        key: &str,
        limit: u64,
        progress: &mut dyn FnMut(&[u8]),
    ) -> Result<&[u8], FetchError> {
        let last = limit.saturating_sub(1).to_string();
        self.command(&[b"GETRANGE", key.as_bytes(), b"0", last.as_bytes()]);
        self.send()?;
        let line = self.line()?;
        let len = match line.split_first() {
            Some((b'$', n)) => parse_u64(n).ok_or_else(|| protocol("bad bulk length"))?,
            Some((b'-', message)) => return Err(FetchError::Reply(text(message))),
            _ => return Err(protocol("unexpected reply to GETRANGE")),
        };
        if len > limit {
            return Err(protocol("GETRANGE answered more than asked"));
        }
        let len = len as usize;
        // (`trim` released a buffer grown past what is kept, after the last load.)
        self.value.clear();
        self.value.reserve(len);
        // What the inbox already holds, then the rest straight into the value.
        let buffered = (self.len - self.at).min(len);
        self.value
            .extend_from_slice(&self.inbox[self.at..self.at + buffered]);
        self.at += buffered;
        self.value.resize(len, 0);
        let (mut filled, mut shown) = (buffered, 0);
        while filled < len {
            if filled - shown >= SEGMENT {
                progress(&self.value[..filled]);
                shown = filled;
            }
            match self.stream.read(&mut self.value[filled..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut crlf = [0u8; 2];
        for byte in &mut crlf {
            *byte = self.byte()?;
        }
        if crlf != *b"\r\n" {
            return Err(protocol("bulk string not followed by CRLF"));
        }
        Ok(&self.value)
    }

    /// Releases a value buffer grown past what is kept between loads.
    pub(crate) fn trim(&mut self) {
        if self.value.capacity() > RETAINED_VALUE_BYTES {
            self.value = Vec::new();
        }
    }

    fn command(&mut self, args: &[&[u8]]) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn send(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)
    }

    fn ok(&mut self) -> Result<(), FetchError> {
        let line = self.line()?;
        match line.split_first() {
            Some((b'+', _)) => Ok(()),
            Some((b'-', message)) => Err(FetchError::Reply(text(message))),
            _ => Err(protocol("unexpected reply")),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.at == self.len {
            self.at = 0;
            self.len = 0;
        }
        loop {
            match self.stream.read(&mut self.inbox[self.len..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.len += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        if self.at == self.len {
            self.fill()?;
        }
        self.at += 1;
        Ok(self.inbox[self.at - 1])
    }

    /// The next reply line, without its CRLF.
    fn line(&mut self) -> Result<Vec<u8>, FetchError> {
        let mut line = Vec::new();
        loop {
            if let Some(end) = self.inbox[self.at..self.len]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                line.extend_from_slice(&self.inbox[self.at..self.at + end]);
                self.at += end + 2;
                return Ok(line);
            }
            // Keep a trailing CR: its LF may come with the next read.
            let keep = usize::from(self.len > self.at && self.inbox[self.len - 1] == b'\r');
            line.extend_from_slice(&self.inbox[self.at..self.len - keep]);
            if line.len() > MAX_LINE {
                return Err(protocol("reply line too long"));
            }
            self.inbox.copy_within(self.len - keep..self.len, 0);
            self.at = 0;
            self.len = keep;
            self.fill()?;
        }
    }
}

fn tcp(
    host: &str,
    port: u16,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> io::Result<Stream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the redis host");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, connect_timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(io_timeout))?;
                s.set_write_timeout(Some(io_timeout))?;
                return Ok(Stream::Tcp(s));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn text(message: &[u8]) -> String {
    String::from_utf8_lossy(message).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `replies` (whatever it is sent), in chunks of `chunk` bytes.
    fn serve(replies: Vec<u8>, chunk: usize) -> ConnectionInfo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_nodelay(true).expect("nodelay");
            for part in replies.chunks(chunk) {
                s.write_all(part).expect("write");
                std::thread::sleep(Duration::from_millis(1));
            }
            // Then end of stream: a reply cut short is an error at once, not at the timeout.
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 256];
            while s.read(&mut sink).is_ok_and(|n| n > 0) {}
        });
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .expect("url")
            .get_connection_info()
            .clone()
    }

    fn reader(info: &ConnectionInfo) -> Reader {
        Reader::connect(info, Duration::from_secs(1), Duration::from_secs(1)).expect("connects")
    }

    #[test]
    fn replies_split_anywhere_parse_the_same() {
        let mut replies = b":5\r\n$5\r\nhe\r\nl\r\n:0\r\n$0\r\n\r\n".to_vec();
        replies.extend_from_slice(b"-WRONGTYPE Operation against a key\r\n");
        for chunk in [1, 2, 3, 7, 64] {
            let mut r = reader(&serve(replies.clone(), chunk));
            assert_eq!(r.strlen("k").expect("strlen"), 5);
            assert_eq!(
                r.get_bounded("k", 100, &mut |_| {}).expect("value"),
                b"he\r\nl"
            );
            assert_eq!(r.strlen("k").expect("strlen"), 0);
            assert_eq!(r.get_bounded("k", 100, &mut |_| {}).expect("empty"), b"");
            match r.strlen("k") {
                Err(FetchError::Reply(m)) => assert!(m.starts_with("WRONGTYPE"), "{m}"),
                other => panic!("chunk {chunk}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn garbage_and_overlong_replies_are_protocol_errors() {
        for bad in [
            &b"*1\r\n"[..],
            b"$x\r\n",
            b"$10\r\nshort",
            b"$3\r\nabcXY",
            b"$200\r\n",
        ] {
            let mut r = reader(&serve(bad.to_vec(), 64));
            match r.get_bounded("k", 100, &mut |_| {}) {
                Err(FetchError::Io(_)) => {}
                other => panic!("{bad:?}: {:?}", other.map(<[u8]>::len)),
            }
        }
        let mut r = reader(&serve(vec![b'7'; MAX_LINE + 10], 512));
        assert!(matches!(r.strlen("k"), Err(FetchError::Io(_))));
    }
}
