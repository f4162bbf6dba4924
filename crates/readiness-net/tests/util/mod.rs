//! Helpers shared by the net layer's tests: the backend under test, a loop
//! on its own thread, a handler that records every call it gets, peers made
//! of plain blocking `std::net` sockets.
//!
//! Timing: waiting *for* something loops up to [`LONG`]; checking for
//! *absence* watches for [`SHORT`]. No assertion depends on speed.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use readiness_net::{
    Backend, Bytes, Config, Conn, EventLoop, Handler, Incoming, ListenerHandler, LoopCtx,
    LoopHandle, Udp, UdpHandler,
};

pub const LONG: Duration = Duration::from_secs(10);
pub const SHORT: Duration = Duration::from_millis(150);

/// The backend named by `READINESS_TEST_BACKEND`, if set.
pub fn backend_from_env() -> Option<Backend> {
    let name = std::env::var("READINESS_TEST_BACKEND").ok()?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    match Backend::from_name(name) {
        Some(b) => Some(b),
        None => panic!("READINESS_TEST_BACKEND={name:?} names no backend"),
    }
}

/// A config on the backend under test.
pub fn config() -> Config {
    match backend_from_env() {
        Some(b) => Config::new().backend(b),
        None => Config::new(),
    }
}

/// One call a handler got, as the tests compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Connected,
    Failed(io::ErrorKind),
    /// Consecutive data calls are merged: how a stream is cut into reads is
    /// not part of the contract.
    Data(Vec<u8>),
    Oob(u8),
    Writable,
    /// Consecutive drained calls are merged (how often the queue crosses the
    /// low-water mark depends on timing).
    Drained,
    ClientClose,
    Reset,
    Timeout,
    WriteRefused,
    Disconnected,
    Incoming,
    Refused,
    AcceptError,
    ListenerClosed,
    Datagram(Vec<u8>),
    UdpError(io::ErrorKind),
    UdpDrained,
    UdpClosed,
}

/// A shared, ordered record of calls.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Call>>>);

impl Log {
    pub fn new() -> Log {
        Log::default()
    }

    pub fn push(&self, call: Call) {
        let mut v = self.0.lock().unwrap();
        if let Some(Call::Disconnected | Call::UdpClosed | Call::ListenerClosed) = v.last()
            && !matches!(call, Call::Incoming | Call::Refused)
        {
            panic!("{call:?} after the last call; log so far: {v:?}");
        }
        match (v.last_mut(), call) {
            (Some(Call::Data(a)), Call::Data(b)) => a.extend_from_slice(&b),
            (Some(Call::Drained), Call::Drained) => {}
            (_, call) => v.push(call),
        }
    }

    pub fn get(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the log; panics after [`LONG`].
    #[track_caller]
    pub fn wait_until(&self, what: &str, pred: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = Instant::now() + LONG;
        loop {
            let v = self.get();
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {LONG:?} for {what} on {}; log: {v:?}",
                backend_name()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the log holds `call`.
    #[track_caller]
    pub fn wait_for(&self, call: Call) -> Vec<Call> {
        let what = format!("{call:?}");
        self.wait_until(&what, |v| v.contains(&call))
    }

    /// Waits for the connection's last call, then asserts the whole log.
    #[track_caller]
    pub fn assert_ends(&self, expected: &[Call]) {
        let last = expected.last().cloned().expect("an expected sequence");
        self.wait_for(last);
        // Nothing may follow the last call (the push panics if it does; a
        // short watch lets a late call show up).
        std::thread::sleep(SHORT);
        assert_eq!(self.get(), expected, "call sequence on {}", backend_name());
    }
}

pub fn backend_name() -> String {
    match backend_from_env() {
        Some(b) => b.to_string(),
        None => Backend::default_for_os().to_string(),
    }
}

type ConnHook = Box<dyn FnMut(&mut Conn<'_>)>;
type DataHook = Box<dyn FnMut(&mut Conn<'_>, Bytes)>;

/// A connection handler that records every call, then runs the hook the
/// test gave for it (defaults as the trait's).
pub struct Recorder {
    log: Log,
    connected: Option<ConnHook>,
    data: Option<DataHook>,
    drained: Option<ConnHook>,
    client_close: Option<ConnHook>,
    timeout: Option<ConnHook>,
    writable: Option<ConnHook>,
    disconnected: bool,
}

impl Recorder {
    pub fn new(log: &Log) -> Recorder {
        Recorder {
            log: log.clone(),
            connected: None,
            data: None,
            drained: None,
            client_close: None,
            timeout: None,
            writable: None,
            disconnected: false,
        }
    }
    pub fn on_connected(mut self, f: impl FnMut(&mut Conn<'_>) + 'static) -> Recorder {
        self.connected = Some(Box::new(f));
        self
    }
    pub fn on_data(mut self, f: impl FnMut(&mut Conn<'_>, Bytes) + 'static) -> Recorder {
        self.data = Some(Box::new(f));
        self
    }
    pub fn on_drained(mut self, f: impl FnMut(&mut Conn<'_>) + 'static) -> Recorder {
        self.drained = Some(Box::new(f));
        self
    }
    pub fn on_client_close(mut self, f: impl FnMut(&mut Conn<'_>) + 'static) -> Recorder {
        self.client_close = Some(Box::new(f));
        self
    }
    pub fn on_timeout(mut self, f: impl FnMut(&mut Conn<'_>) + 'static) -> Recorder {
        self.timeout = Some(Box::new(f));
        self
    }
    pub fn on_writable(mut self, f: impl FnMut(&mut Conn<'_>) + 'static) -> Recorder {
        self.writable = Some(Box::new(f));
        self
    }
    fn check_alive(&self, what: &str) {
        assert!(!self.disconnected, "{what} after on_disconnected");
    }
}

impl Handler for Recorder {
    fn on_connected(&mut self, conn: &mut Conn<'_>) {
        self.check_alive("on_connected");
        self.log.push(Call::Connected);
        if let Some(f) = &mut self.connected {
            f(conn);
        }
    }
    fn on_connection_failed(&mut self, _conn: &mut Conn<'_>, error: io::Error) {
        self.check_alive("on_connection_failed");
        self.log.push(Call::Failed(error.kind()));
    }
    fn on_data(&mut self, conn: &mut Conn<'_>, data: Bytes) {
        self.check_alive("on_data");
        self.log.push(Call::Data(data.to_vec()));
        if let Some(f) = &mut self.data {
            f(conn, data);
        }
    }
    fn on_readable_oob(&mut self, conn: &mut Conn<'_>) {
        self.check_alive("on_readable_oob");
        match conn.read_oob() {
            Ok(b) => self.log.push(Call::Oob(b)),
            // A priority event with nothing to read (seen as a second event
            // for the same byte on some backends) records nothing.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
            Err(e) => panic!("read_oob failed: {e}"),
        }
    }
    fn on_writable(&mut self, conn: &mut Conn<'_>) {
        self.check_alive("on_writable");
        self.log.push(Call::Writable);
        if let Some(f) = &mut self.writable {
            f(conn);
        }
    }
    fn on_drained(&mut self, conn: &mut Conn<'_>) {
        self.check_alive("on_drained");
        self.log.push(Call::Drained);
        if let Some(f) = &mut self.drained {
            f(conn);
        }
    }
    fn on_client_close(&mut self, conn: &mut Conn<'_>) {
        self.check_alive("on_client_close");
        self.log.push(Call::ClientClose);
        match &mut self.client_close {
            Some(f) => f(conn),
            None => conn.close(),
        }
    }
    fn on_connection_reset(&mut self, _conn: &mut Conn<'_>) {
        self.check_alive("on_connection_reset");
        self.log.push(Call::Reset);
    }
    fn on_timeout(&mut self, conn: &mut Conn<'_>) {
        self.check_alive("on_timeout");
        self.log.push(Call::Timeout);
        match &mut self.timeout {
            Some(f) => f(conn),
            None => conn.close(),
        }
    }
    fn on_write_refused(&mut self, _conn: &mut Conn<'_>, _e: readiness_net::WriteError) {
        self.log.push(Call::WriteRefused);
    }
    fn on_disconnected(&mut self, _conn: &mut Conn<'_>) {
        assert!(!self.disconnected, "on_disconnected called twice");
        self.disconnected = true;
        self.log.push(Call::Disconnected);
    }
}

type MakeRecorder = Box<dyn FnMut(usize) -> Recorder>;

/// A listener handler that records `Incoming` / `Refused` and serves each
/// connection with the recorder `make(n)` builds (n counts from 0).
pub struct RecListener {
    pub log: Log,
    make: MakeRecorder,
    n: usize,
}

impl RecListener {
    pub fn new(log: &Log, make: impl FnMut(usize) -> Recorder + 'static) -> RecListener {
        RecListener {
            log: log.clone(),
            make: Box::new(make),
            n: 0,
        }
    }
}

impl ListenerHandler for RecListener {
    fn on_incoming_connection(&mut self, _ctx: &mut LoopCtx, _peer: SocketAddr) -> Incoming {
        self.log.push(Call::Incoming);
        let r = (self.make)(self.n);
        self.n += 1;
        Incoming::accept(r)
    }
    fn on_refused(&mut self, _ctx: &mut LoopCtx, _peer: SocketAddr) {
        self.log.push(Call::Refused);
    }
    fn on_accept_error(&mut self, _ctx: &mut LoopCtx, _e: io::Error) {
        self.log.push(Call::AcceptError);
    }
    fn on_closed(&mut self, _ctx: &mut LoopCtx) {
        self.log.push(Call::ListenerClosed);
    }
}

type DatagramHook = Box<dyn FnMut(&mut Udp<'_>, SocketAddr, Bytes)>;

/// A UDP handler that records, then runs its hook.
pub struct RecUdp {
    log: Log,
    datagram: Option<DatagramHook>,
}

impl RecUdp {
    pub fn new(log: &Log) -> RecUdp {
        RecUdp {
            log: log.clone(),
            datagram: None,
        }
    }
    pub fn on_datagram(
        mut self,
        f: impl FnMut(&mut Udp<'_>, SocketAddr, Bytes) + 'static,
    ) -> RecUdp {
        self.datagram = Some(Box::new(f));
        self
    }
}

impl UdpHandler for RecUdp {
    fn on_datagram(&mut self, udp: &mut Udp<'_>, from: SocketAddr, data: Bytes) {
        self.log.push(Call::Datagram(data.to_vec()));
        if let Some(f) = &mut self.datagram {
            f(udp, from, data);
        }
    }
    fn on_error(&mut self, _udp: &mut Udp<'_>, e: io::Error) {
        self.log.push(Call::UdpError(e.kind()));
    }
    fn on_drained(&mut self, _udp: &mut Udp<'_>) {
        self.log.push(Call::UdpDrained);
    }
    fn on_closed(&mut self, _udp: &mut Udp<'_>) {
        self.log.push(Call::UdpClosed);
    }
}

/// The loop's counters now (a posted closure reads them on the loop; the
/// handle's snapshot may be a turn old).
pub fn fresh_stats(handle: &LoopHandle) -> readiness_net::Stats {
    let (tx, rx) = std::sync::mpsc::channel();
    handle
        .post(move |ctx| tx.send(ctx.stats()).unwrap())
        .unwrap();
    rx.recv_timeout(LONG).expect("the loop did not answer")
}

/// A loop running on its own thread.
pub struct Running {
    pub handle: LoopHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Graceful stop; waits for `run` to return and checks it returned Ok.
    pub fn stop(mut self) {
        self.handle.stop();
        let r = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("loop thread panicked");
        r.expect("run failed");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown(Duration::ZERO);
            let _ = t.join();
        }
    }
}

/// Starts a loop with `config` on a thread; `setup` runs on that thread
/// before `run` (open listeners, connect) and its result comes back.
pub fn spawn<T: Send + 'static>(
    config: Config,
    setup: impl FnOnce(&mut EventLoop) -> T + Send + 'static,
) -> (Running, T) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut lp = EventLoop::with_config(config).expect("create the event loop");
        let t = setup(&mut lp);
        tx.send((lp.handle(), t)).unwrap();
        lp.run()
    });
    let (handle, t) = rx.recv().expect("the loop thread died during set-up");
    (
        Running {
            handle,
            thread: Some(thread),
        },
        t,
    )
}

/// A loop listening on 127.0.0.1 with `listener`; returns the address.
pub fn spawn_listener(
    config: Config,
    listener: impl FnOnce() -> RecListener + Send + 'static,
) -> (Running, SocketAddr) {
    spawn(config, move |lp| {
        let id = lp
            .listen("127.0.0.1:0".parse().unwrap(), 128, listener())
            .expect("listen");
        lp.listener_addr(id).unwrap()
    })
}

/// A blocking client with generous timeouts.
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the loop's listener");
    s.set_read_timeout(Some(LONG)).unwrap();
    s.set_write_timeout(Some(LONG)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A blocking client with small socket buffers (set before connecting),
/// so that a few hundred KiB fill the path.
pub fn small_client(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    s.set_recv_buffer_size(32 << 10).unwrap();
    s.set_send_buffer_size(32 << 10).unwrap();
    s.connect(&addr.into())
        .expect("connect to the loop's listener");
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(LONG)).unwrap();
    s.set_write_timeout(Some(LONG)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Server-side socket buffers to match [`small_client`].
pub const SMALL: (Option<usize>, Option<usize>) = (Some(32 << 10), Some(32 << 10));

/// Reads exactly `n` bytes.
#[track_caller]
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)
        .expect("read from the loop's connection");
    buf
}

/// Reads until end of stream; panics on an error.
#[track_caller]
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read to the end");
    v
}

/// What a read sees next: data, end of stream, or an error kind.
pub fn read_outcome(s: &mut TcpStream) -> Result<usize, io::ErrorKind> {
    let mut buf = [0; 64];
    s.read(&mut buf).map_err(|e| e.kind())
}

pub fn write_all(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write to the loop's connection");
}

/// Whether the test runs under Wine.
pub fn under_wine() -> bool {
    #[cfg(windows)]
    return readiness::os::windows::running_under_wine();
    #[cfg(not(windows))]
    return false;
}

/// Asserts that the peer saw a reset. Under Wine a read after a reset
/// returns end of stream (`Ok(0)`), where Windows returns `WSAECONNRESET`
/// (docs/WINDOWS.md, "Where Wine 8.0 differs"): there `Ok(0)` is accepted,
/// and the test says so.
#[track_caller]
pub fn assert_reset(outcome: Result<usize, io::ErrorKind>) {
    if under_wine() && outcome == Ok(0) {
        println!("WINE DIFFERENCE (docs/WINDOWS.md): a read after a reset returned end of stream");
        return;
    }
    assert_eq!(outcome, Err(io::ErrorKind::ConnectionReset));
}

/// Closes abortively (RST).
/// With unread data in its buffer the close is a reset on every OS even
/// without the linger option; the reset test makes sure of both.
pub fn reset(s: TcpStream) {
    let s = socket2::Socket::from(s);
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Byte `i` of the test pattern.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// `len` bytes of the pattern starting at offset `start`.
pub fn pattern_bytes(start: usize, len: usize) -> Bytes {
    Bytes::from((start..start + len).map(pattern).collect::<Vec<u8>>())
}

#[track_caller]
pub fn check_pattern(data: &[u8], start: usize) {
    for (i, b) in data.iter().enumerate() {
        if *b != pattern(start + i) {
            panic!(
                "byte {} is {b}, expected {} (of {} bytes)",
                start + i,
                pattern(start + i),
                data.len()
            );
        }
    }
}

pub fn udp_peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s
}
