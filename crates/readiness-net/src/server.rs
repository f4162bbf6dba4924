//! Several loops on several threads behind one address.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::event_loop::{ListenKind, LoopCtx, listen_socket};
use crate::{Config, EventLoop, Handler, Incoming, ListenerHandler, LoopHandle, Stats};

pub(crate) type MakeHandler = Arc<dyn Fn(SocketAddr) -> Option<Box<dyn Handler>> + Send + Sync>;

/// How a [`Server`] spreads connections over its loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    /// `ReusePort` on Linux, `RoundRobin` elsewhere.
    #[default]
    Auto,
    /// Every loop listens on the address with `SO_REUSEPORT`; the kernel
    /// spreads connections (Linux only: BSD's SO_REUSEPORT does not balance).
    ReusePort,
    /// Loop 0 accepts and hands each accepted socket to the next loop in
    /// turn (itself included). Works everywhere.
    RoundRobin,
}

/// The accepting side of a round-robin server: where the next socket goes.
pub(crate) struct Forwarder {
    /// `None`: the accepting loop itself.
    targets: Vec<Option<LoopHandle>>,
    next: usize,
    pub(crate) make: MakeHandler,
}

impl Forwarder {
    pub(crate) fn next(&mut self) -> Option<LoopHandle> {
        let t = self.targets[self.next].clone();
        self.next = (self.next + 1) % self.targets.len();
        t
    }
}

struct ServerListener {
    make: MakeHandler,
}

impl ListenerHandler for ServerListener {
    fn on_incoming_connection(&mut self, _ctx: &mut LoopCtx, peer: SocketAddr) -> Incoming {
        match (self.make)(peer) {
            Some(h) => Incoming::Accept(h),
            None => Incoming::Refuse,
        }
    }
}

/// Settings of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    threads: usize,
    config: Config,
    balance: Balance,
    backlog: u32,
}

impl Default for ServerBuilder {
    fn default() -> ServerBuilder {
        ServerBuilder {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            config: Config::default(),
            balance: Balance::Auto,
            backlog: 1024,
        }
    }
}

impl ServerBuilder {
    /// Loops (threads); default: `std::thread::available_parallelism()`.
    pub fn threads(mut self, n: usize) -> ServerBuilder {
        self.threads = n.max(1);
        self
    }

    /// Settings of every loop (limits are per loop).
    pub fn config(mut self, config: Config) -> ServerBuilder {
        self.config = config;
        self
    }

    /// How connections are spread over the loops.
    pub fn balance(mut self, balance: Balance) -> ServerBuilder {
        self.balance = balance;
        self
    }

    /// The listen backlog (default 1,024).
    pub fn backlog(mut self, backlog: u32) -> ServerBuilder {
        self.backlog = backlog;
        self
    }

    /// Starts the loops and listens on `addr`; `make` picks a handler for
    /// each incoming connection (`None` refuses it). `make` runs on the loop
    /// that will serve the connection, so handlers need not be `Send`.
    pub fn serve<H, F>(self, addr: SocketAddr, make: F) -> io::Result<Server>
    where
        H: Handler,
        F: Fn(SocketAddr) -> Option<H> + Send + Sync + 'static,
    {
        let make: MakeHandler =
            Arc::new(move |peer| make(peer).map(|h| Box::new(h) as Box<dyn Handler>));
        let reuse_port = match self.balance {
            Balance::ReusePort => true,
            Balance::RoundRobin => false,
            Balance::Auto => cfg!(any(target_os = "linux", target_os = "android")),
        };
        let mut handles = Vec::with_capacity(self.threads);
        let mut threads = Vec::with_capacity(self.threads);
        for i in 0..self.threads {
            let (tx, rx) = mpsc::channel();
            let config = self.config.clone();
            let thread = std::thread::Builder::new()
                .name(format!("readiness-net-{i}"))
                .spawn(move || {
                    let mut lp = match EventLoop::with_config(config) {
                        Ok(lp) => lp,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = tx.send(Ok(lp.handle()));
                    lp.run()
                })?;
            threads.push(thread);
            match rx.recv() {
                Ok(Ok(h)) => handles.push(h),
                Ok(Err(e)) => {
                    stop_all(&handles, threads);
                    return Err(e);
                }
                Err(_) => {
                    stop_all(&handles, threads);
                    return Err(io::Error::other("a server loop thread died"));
                }
            }
        }
        let setup = if reuse_port {
            setup_reuse_port(&handles, addr, self.backlog, &make)
        } else {
            setup_round_robin(&handles, addr, self.backlog, &make)
        };
        match setup {
            Ok(local_addr) => Ok(Server {
                handles,
                threads,
                local_addr,
                balance: if reuse_port {
                    Balance::ReusePort
                } else {
                    Balance::RoundRobin
                },
            }),
            Err(e) => {
                stop_all(&handles, threads);
                Err(e)
            }
        }
    }
}

fn register(
    handle: &LoopHandle,
    socket: socket2::Socket,
    kind: impl FnOnce() -> ListenKind + Send + 'static,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel();
    handle.post(move |ctx| {
        let _ = tx.send(ctx.add_listener(socket, kind()).map(|_| ()));
    })?;
    rx.recv()
        .map_err(|_| io::Error::other("a server loop stopped during set-up"))?
}

fn setup_reuse_port(
    handles: &[LoopHandle],
    addr: SocketAddr,
    backlog: u32,
    make: &MakeHandler,
) -> io::Result<SocketAddr> {
    let first = listen_socket(addr, backlog, true)?;
    let local = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP address"))?;
    let mut sockets = vec![first];
    for _ in 1..handles.len() {
        sockets.push(listen_socket(local, backlog, true)?);
    }
    for (h, s) in handles.iter().zip(sockets) {
        let make = make.clone();
        register(h, s, move || {
            ListenKind::Local(Box::new(ServerListener { make }))
        })?;
    }
    Ok(local)
}

fn setup_round_robin(
    handles: &[LoopHandle],
    addr: SocketAddr,
    backlog: u32,
    make: &MakeHandler,
) -> io::Result<SocketAddr> {
    let socket = listen_socket(addr, backlog, false)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP address"))?;
    let mut targets = vec![None];
    targets.extend(handles[1..].iter().cloned().map(Some));
    let fwd = Forwarder {
        targets,
        next: 0,
        make: make.clone(),
    };
    register(&handles[0], socket, move || ListenKind::Forward(fwd))?;
    Ok(local)
}

fn stop_all(handles: &[LoopHandle], threads: Vec<JoinHandle<io::Result<()>>>) {
    for h in handles {
        h.shutdown(Duration::ZERO);
    }
    for t in threads {
        let _ = t.join();
    }
}

/// N event loops on N threads serving one address. Dropping it shuts it
/// down (as [`shutdown`](Self::shutdown) with the configured deadline).
pub struct Server {
    handles: Vec<LoopHandle>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addr: SocketAddr,
    balance: Balance,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("loops", &self.handles.len())
            .field("balance", &self.balance)
            .finish()
    }
}

impl Server {
    /// Settings: threads, loop config, balance, backlog.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How connections are spread (never `Auto`: what `Auto` chose).
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// The loops' handles, loop 0 first.
    pub fn handles(&self) -> &[LoopHandle] {
        &self.handles
    }

    /// Each loop's counters (snapshots).
    pub fn loop_stats(&self) -> Vec<Stats> {
        self.handles.iter().map(LoopHandle::stats).collect()
    }

    /// The loops' counters summed.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for h in &self.handles {
            s += h.stats();
        }
        s
    }

    /// Graceful shutdown of every loop (stop accepting, flush up to
    /// `flush_deadline`, close every connection), then joins the threads.
    /// Returns the loops' final counters summed, or the first loop error.
    pub fn shutdown(mut self, flush_deadline: Duration) -> io::Result<Stats> {
        self.stop_and_join(Some(flush_deadline))?;
        // Each loop published its last counters before its thread ended.
        Ok(self.stats())
    }

    fn stop_and_join(&mut self, deadline: Option<Duration>) -> io::Result<()> {
        for h in &self.handles {
            match deadline {
                Some(d) => h.shutdown(d),
                None => h.stop(),
            }
        }
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a server loop panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_join(None);
    }
}
