//! Single-threaded echo servers, one per framework, all of the same design:
//!
//! - one listener with `SO_REUSEADDR` and a backlog of [`BACKLOG`], accepted
//!   until `WouldBlock` on each readiness;
//! - every accepted socket non-blocking with `TCP_NODELAY`;
//! - one read buffer of [`READ_BUF`] bytes shared by all connections where
//!   the framework allows it (all of them here: the async servers read and
//!   write in one synchronous step, so no task holds the buffer across an
//!   `.await`);
//! - what a write does not take is kept in the connection's own pending
//!   buffer (allocated on the first partial write, then reused) and flushed
//!   when the socket is writable; while anything is pending the connection
//!   reads nothing more (back-pressure on the client);
//! - nothing allocated per message.
//!
//! The poll-style servers ([`Server::Mio`], [`Server::Polling`],
//! [`Server::Raw`], [`Server::Epoll`]) share [`EchoConn`], the per-connection
//! step. Where the registration is edge-triggered they read until a read
//! returns less than the buffer (a short read means the socket's receive
//! queue was emptied, and new data is a new edge), so one round trip of a
//! small message costs one `read` and one `write`; level-triggered and
//! oneshot registrations read once per event. The async servers use their
//! framework's own readiness API (`tokio::net::TcpStream::try_read`,
//! `async_io::Async::read_with`, which read until `WouldBlock`;
//! readiness-async's `AsyncRead`, which takes a short read as drained on an
//! edge-triggered registration). [`Server::Net`] is the net layer's own
//! `Echo` handler on one `EventLoop`: its read buffer is the loop's pool and
//! its pending writes are the connection's write queue.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;

mod async_server;
mod mio_server;
mod net_server;
mod polling_server;
mod raw_server;
mod smol_server;
mod tokio_server;

/// Listen backlog of every server (Linux caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;
/// Size of the shared read buffer.
pub const READ_BUF: usize = 64 * 1024;

/// The echo servers of the matrix.
///
/// Adding one is: its module here, its arm in [`run`], and `true` in
/// [`Server::is_built`]; the matrix runner and the report pick it up from
/// [`Server::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Server {
    /// The floor: a plain edge-triggered epoll loop on libc (Linux only).
    Epoll,
    /// `readiness::Poller` directly: edge-triggered where the backend has
    /// edges (epoll, kqueue), oneshot with a re-arm after each event elsewhere.
    Raw,
    /// mio 1 (edge-triggered).
    Mio,
    /// polling 3: edge-triggered where it supports edges, oneshot elsewhere.
    Polling,
    /// tokio 1, current-thread runtime, tasks on a `LocalSet`.
    Tokio,
    /// async-io 2 + async-executor 1 (smol's parts), a `LocalExecutor`.
    Smol,
    /// The project's net layer (readiness-net, issue 6): one `EventLoop`
    /// with the layer's `Echo` handler.
    Net,
    /// The project's async adapter (readiness-async, issue 8) with
    /// async-executor's `LocalExecutor` in `readiness_async::block_on`.
    Async,
}

impl Server {
    /// Every server, the floor first, in the order of the report's columns.
    pub const ALL: [Server; 8] = [
        Server::Epoll,
        Server::Raw,
        Server::Net,
        Server::Async,
        Server::Mio,
        Server::Polling,
        Server::Tokio,
        Server::Smol,
    ];

    /// The name used on the command line and in results.
    pub const fn name(self) -> &'static str {
        match self {
            Server::Epoll => "epoll",
            Server::Raw => "raw",
            Server::Mio => "mio",
            Server::Polling => "polling",
            Server::Tokio => "tokio",
            Server::Smol => "smol",
            Server::Net => "net",
            Server::Async => "async",
        }
    }

    /// Whether this server exists in this build (the epoll floor exists on
    /// Linux only).
    pub const fn is_built(self) -> bool {
        match self {
            Server::Epoll => cfg!(any(target_os = "linux", target_os = "android")),
            Server::Raw
            | Server::Net
            | Server::Async
            | Server::Mio
            | Server::Polling
            | Server::Tokio
            | Server::Smol => true,
        }
    }

    /// The servers [`run`] can start here.
    pub fn built() -> impl Iterator<Item = Server> {
        Server::ALL.into_iter().filter(|s| s.is_built())
    }
}

impl FromStr for Server {
    type Err = String;
    fn from_str(s: &str) -> Result<Server, String> {
        Server::ALL
            .into_iter()
            .find(|server| server.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Server::ALL.iter().map(|s| s.name()).collect();
                format!("unknown server '{s}' (one of: {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of a server run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The readiness backend of [`Server::Raw`], [`Server::Net`] and
    /// [`Server::Async`] (`None`: the OS default; the other servers ignore
    /// it).
    pub backend: Option<readiness::Backend>,
}

/// Runs `server` on `listener` (from [`listen`]: already listening, so the
/// caller may print its address first) until the process ends or an error
/// stops the loop.
pub fn run(server: Server, listener: TcpListener, options: &Options) -> io::Result<()> {
    match server {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Server::Epoll => crate::sys::epoll_floor::run(listener),
        Server::Raw => raw_server::run(listener, options.backend),
        Server::Mio => mio_server::run(listener),
        Server::Polling => polling_server::run(listener),
        Server::Tokio => tokio_server::run(listener),
        Server::Smol => smol_server::run(listener),
        Server::Net => net_server::run(listener, options.backend),
        Server::Async => async_server::run(listener, options.backend),
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        Server::Epoll => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the epoll floor exists on Linux only",
        )),
    }
}

/// A non-blocking listener on `addr` with `SO_REUSEADDR` and a backlog of
/// [`BACKLOG`], the one every server starts from.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Raises the soft limit on open descriptors to the hard limit, so a server
/// can hold the scale test's 19,000 connections. Returns the new soft limit
/// (`None` where there is no such limit).
pub fn raise_fd_limit() -> io::Result<Option<u64>> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            limit.current = limit.maximum;
            setrlimit(Resource::Nofile, limit).map_err(io::Error::from)?;
        }
        Ok(limit.current)
    }
    #[cfg(not(unix))]
    Ok(None)
}

/// What happened to a connection in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Still open.
    Open,
    /// The peer closed (or reset) it: drop the socket.
    Closed,
}

/// How much a connection reads per readiness event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRule {
    /// One read (level-triggered and oneshot registrations: the next wait
    /// reports the socket again if more is left).
    Once,
    /// Until a read returns less than the buffer (edge-triggered on epoll and
    /// kqueue: a short read emptied the receive queue, and new data makes a
    /// new edge).
    UntilShort,
    /// Until `WouldBlock` (mio on Windows, whose emulated edges re-arm only
    /// after a `WouldBlock`).
    UntilWouldBlock,
}

/// One connection of a poll-style echo server: the bytes a write did not
/// take, and whether data may be waiting unread.
#[derive(Debug, Default)]
pub struct EchoConn {
    pending: Vec<u8>,
    /// How much of `pending` has been written.
    written: usize,
    /// Data may be waiting in the socket that this connection has not read
    /// (it stopped reading while a write was pending).
    unread: bool,
}

impl EchoConn {
    /// A new connection, with nothing pending and nothing known unread.
    pub fn new() -> EchoConn {
        EchoConn::default()
    }

    /// Whether a write is pending: the connection waits for writability
    /// (and reads nothing until it is flushed).
    pub fn wants_write(&self) -> bool {
        self.written < self.pending.len()
    }

    /// One step after an event: flush what is pending if the socket is
    /// writable, then, if nothing is pending and the socket was readable (or
    /// data was left unread), read into `buf` and echo it.
    ///
    /// `rule` says how much to read: see [`ReadRule`].
    pub fn step<S: ?Sized>(
        &mut self,
        socket: &S,
        buf: &mut [u8],
        readable: bool,
        writable: bool,
        rule: ReadRule,
    ) -> Status
    where
        for<'a> &'a S: Read + Write,
    {
        if self.wants_write() {
            if !writable {
                return Status::Open;
            }
            match flush(socket, &self.pending[self.written..]) {
                Ok(n) => self.written += n,
                Err(_) => return Status::Closed,
            }
            if self.wants_write() {
                return Status::Open;
            }
            self.pending.clear();
            self.written = 0;
        }
        if !(readable || self.unread) {
            return Status::Open;
        }
        self.unread = false;
        loop {
            let mut reader = socket;
            let n = match reader.read(buf) {
                Ok(0) => return Status::Closed,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Status::Closed,
            };
            let written = match flush(socket, &buf[..n]) {
                Ok(w) => w,
                Err(_) => return Status::Closed,
            };
            if written < n {
                self.pending.extend_from_slice(&buf[written..n]);
                // Stop reading until it is flushed; what is still in the
                // socket is read then.
                self.unread = true;
                return Status::Open;
            }
            match rule {
                ReadRule::Once => return Status::Open,
                ReadRule::UntilShort if n < buf.len() => return Status::Open,
                _ => {}
            }
        }
    }
}

/// Writes what the socket takes without blocking: `Ok(bytes written)`,
/// `Err` if the connection failed.
fn flush<S: ?Sized>(socket: &S, mut data: &[u8]) -> io::Result<usize>
where
    for<'a> &'a S: Write,
{
    let total = data.len();
    while !data.is_empty() {
        let mut writer = socket;
        match writer.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total - data.len())
}

/// Sets `TCP_NODELAY` on an accepted stream (errors are not fatal: the
/// connection may already be gone).
fn nodelay(stream: &std::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn server_names_round_trip() {
        for s in Server::ALL {
            assert_eq!(s.name().parse::<Server>().unwrap(), s);
        }
        assert!(
            "nope"
                .parse::<Server>()
                .unwrap_err()
                .contains("unknown server 'nope'")
        );
        assert!(Server::Net.is_built() && Server::Async.is_built());
    }

    /// A partial write is kept and flushed, and nothing is read meanwhile.
    #[test]
    fn partial_write_is_kept_and_flushed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        // Fill the client->server direction with more than the server's
        // send buffer can hold while the client does not read.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        let mut conn = EchoConn::new();
        let mut buf = vec![0u8; READ_BUF];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !conn.wants_write() {
            assert!(std::time::Instant::now() < deadline, "no partial write");
            if let Ok(n) = (&client).write(&chunk) {
                sent += n;
            }
            assert_eq!(
                conn.step(&server, &mut buf, true, false, ReadRule::UntilShort),
                Status::Open
            );
        }
        // While pending, a readable event reads nothing.
        let pending = conn.pending.len() - conn.written;
        assert_eq!(
            conn.step(&server, &mut buf, true, false, ReadRule::UntilShort),
            Status::Open
        );
        assert_eq!(conn.pending.len() - conn.written, pending);
        // Drain the client; everything sent comes back.
        let mut got = 0usize;
        let mut rbuf = vec![0u8; 64 * 1024];
        while got < sent {
            assert!(std::time::Instant::now() < deadline, "echo incomplete");
            match (&client).read(&mut rbuf) {
                Ok(n) => {
                    assert!(rbuf[..n].iter().all(|&b| b == 7));
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert_eq!(
                conn.step(&server, &mut buf, false, true, ReadRule::UntilShort),
                Status::Open
            );
        }
        assert_eq!(got, sent);
        drop(client);
        // The peer's close is seen.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while conn.step(&server, &mut buf, true, true, ReadRule::UntilShort) == Status::Open {
            assert!(std::time::Instant::now() < deadline, "close not seen");
        }
    }
}
