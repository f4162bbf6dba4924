//! Helpers shared by the integration tests of readiness-async.
//!
//! The backend comes from `READINESS_TEST_BACKEND` (`epoll`, `poll`,
//! `kqueue`, `afd`, `direct`), read here and nowhere in the library: the
//! helpers install the process's reactor on that backend before anything
//! else uses it. Without the variable, the reactor is created on the default
//! backend (which `--cfg readiness_test_poll_backend` makes `poll(2)`).
//!
//! Timing: waiting *for* something is bounded by [`LONG`] (a slow machine
//! only makes a passing test slower); checking for the *absence* of
//! something watches for [`SHORT`]. Every test body runs under a watchdog
//! ([`run`]) so a hang fails the test instead of the whole run.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::future;
use readiness::Backend;
use readiness_async::{Async, Reactor, Timer};

/// How long to wait for something that should happen.
pub const LONG: Duration = Duration::from_secs(10);
/// How long to watch for something that should not happen.
pub const SHORT: Duration = Duration::from_millis(150);
/// How long a whole test body may take before the watchdog fails it.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// The backend named by `READINESS_TEST_BACKEND`, if set.
pub fn backend_from_env() -> Option<Backend> {
    let name = std::env::var("READINESS_TEST_BACKEND").ok()?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    match Backend::from_name(name) {
        Some(backend) => Some(backend),
        None => panic!(
            "READINESS_TEST_BACKEND={name:?} names no backend \
             (expected one of epoll, poll, kqueue, afd, direct)"
        ),
    }
}

/// The process's reactor, on the backend under test.
pub fn reactor() -> &'static Reactor {
    let reactor = match backend_from_env() {
        Some(backend) => {
            match Reactor::install(readiness::Builder::new().backend(backend)) {
                Ok(reactor) => reactor,
                // Another test of this binary installed it first.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Reactor::global(),
                Err(e) => panic!("cannot install the reactor on {backend}: {e}"),
            }
        }
        None => Reactor::global(),
    };
    if let Some(backend) = backend_from_env() {
        assert_eq!(reactor.backend(), backend, "reactor on the wrong backend");
    }
    reactor
}

/// Runs `body` on a fresh thread (after installing the reactor) and fails
/// the test if it takes longer than [`WATCHDOG`]; a panic in it fails the
/// test with its message.
#[track_caller]
pub fn run<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    reactor();
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = tx.send(result);
        })
        .expect("spawn the test thread");
    match rx.recv_timeout(WATCHDOG) {
        Ok(Ok(value)) => {
            handle.join().unwrap();
            value
        }
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!(
            "test body still running after {WATCHDOG:?} on {} (hang?)",
            reactor().backend()
        ),
    }
}

/// `fut`, or a panic naming `what` if it takes longer than [`LONG`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    future::or(fut, async {
        Timer::after(LONG).await;
        panic!("{what}: not done after {LONG:?} on {}", reactor().backend())
    })
    .await
}

/// `fut`, which counts its progress in `done`, or a panic naming `what` if
/// `done` stops moving for [`LONG`]: bulk work may take as long as the
/// machine needs (Wine is slow), but a stall is a hang.
pub async fn without_stall<T>(
    what: &str,
    done: &std::sync::atomic::AtomicUsize,
    fut: impl Future<Output = T>,
) -> T {
    future::or(fut, async {
        let start = Instant::now();
        let mut last = done.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            Timer::after(LONG).await;
            let now = done.load(std::sync::atomic::Ordering::SeqCst);
            if now == last {
                panic!(
                    "{what}: stalled at {now} for {LONG:?} ({:?} in all) on {}",
                    start.elapsed(),
                    reactor().backend()
                );
            }
            last = now;
        }
    })
    .await
}

/// `Some(output)` if `fut` completes within [`SHORT`], else `None`.
pub async fn within_short<T>(fut: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(fut.await) }, async {
        Timer::after(SHORT).await;
        None
    })
    .await
}

/// A listener on 127.0.0.1 with an OS-chosen port.
pub fn listener() -> Async<TcpListener> {
    Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind a TCP listener")
}

/// A connected pair `(client, server)` on 127.0.0.1, registered, with
/// TCP_NODELAY.
pub async fn tcp_pair() -> (Async<TcpStream>, Async<TcpStream>) {
    let listener = listener();
    let addr = listener.get_ref().local_addr().unwrap();
    let (client, server) = future::zip(Async::<TcpStream>::connect(addr), listener.accept()).await;
    let client = client.expect("connect");
    let (server, _) = server.expect("accept");
    for s in [&client, &server] {
        s.get_ref().set_nodelay(true).unwrap();
    }
    (client, server)
}

/// A UDP socket on 127.0.0.1 with an OS-chosen port, registered.
///
/// Binding can fail with `AddrInUse` for a while when other test runs hold
/// most ephemeral ports; that is waited out.
pub fn udp_socket() -> Async<UdpSocket> {
    let deadline = Instant::now() + LONG;
    let socket = loop {
        match UdpSocket::bind("127.0.0.1:0") {
            Ok(socket) => break socket,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("bind a UDP socket: {e}"),
        }
    };
    Async::new(socket).expect("register a UDP socket")
}

/// An address on 127.0.0.1 where nothing listens (a port just released).
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Closes `stream` abortively: the peer gets a reset (RST), not a FIN.
pub fn reset(stream: Async<TcpStream>) {
    let socket = socket2::Socket::from(stream.into_inner().unwrap());
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
}

/// Byte `i` of message `seq` of connection `conn`: `(conn + seq + i) % 251`.
pub fn pattern(conn: usize, seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((conn + seq + i) % 251) as u8).collect()
}

/// Whether the Windows tests run under Wine (always false elsewhere).
pub fn under_wine() -> bool {
    #[cfg(windows)]
    {
        readiness::os::windows::running_under_wine()
    }
    #[cfg(not(windows))]
    {
        false
    }
}
