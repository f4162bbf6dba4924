//! The client's socket side on the raw `readiness::Poller`: non-blocking
//! connects (at most [`MAX_CONNECTING`] at once), edge-triggered
//! registrations for both directions where the backend has edges (read
//! until a short read), oneshot registrations re-armed after each event
//! elsewhere (one read per event). One shared read buffer and one shared
//! send buffer for all connections.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use readiness::{Backend, Event, Events, Interest, Mode, Poller};
use socket2::{Domain, Socket, Type};

use super::{Load, Transport};

/// Connects in progress at most (so a server's accept queue is not flooded).
pub const MAX_CONNECTING: usize = 256;
const BUF: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    NotStarted,
    Connecting(Instant),
    Open,
    Dead,
}

#[derive(Debug)]
struct Slot {
    stream: Option<TcpStream>,
    state: State,
    /// A write did not take everything: wait for writability.
    blocked: bool,
}

/// The transport on `readiness::Poller`.
#[derive(Debug)]
pub struct PollerTransport {
    // Declared first: dropped before the sockets.
    poller: Poller,
    /// `None` only while a wait's events are being handled.
    events: Option<Events>,
    edge: bool,
    addr: SocketAddr,
    local: Vec<IpAddr>,
    slots: Vec<Slot>,
    rbuf: Vec<u8>,
    sbuf: Vec<u8>,
}

fn in_progress(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::WouldBlock {
        return true;
    }
    #[cfg(unix)]
    if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) {
        return true;
    }
    false
}

impl PollerTransport {
    /// A transport to `addr` on `backend`, binding connections round robin
    /// to the `local` addresses (none: the OS picks).
    pub fn new(
        backend: Backend,
        addr: SocketAddr,
        local: &[IpAddr],
    ) -> io::Result<PollerTransport> {
        let poller = Poller::with_backend(backend)?;
        let edge = poller.supports_edge();
        Ok(PollerTransport {
            poller,
            events: Some(Events::with_capacity(1024)),
            edge,
            addr,
            local: local.to_vec(),
            slots: Vec::new(),
            rbuf: vec![0; BUF],
            sbuf: vec![0; BUF],
        })
    }

    fn mode(&self) -> Mode {
        if self.edge { Mode::Edge } else { Mode::Oneshot }
    }

    fn start_connect(&mut self, i: usize, timeout: Duration) -> io::Result<()> {
        let socket = Socket::new(Domain::for_address(self.addr), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        if !self.local.is_empty() {
            let ip = self.local[i % self.local.len()];
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect(&self.addr.into()) {
            Ok(()) => {}
            Err(e) if in_progress(&e) => {}
            Err(e) => return Err(e),
        }
        let stream: TcpStream = socket.into();
        let interest = if self.edge {
            Interest::BOTH
        } else {
            Interest::WRITABLE
        };
        self.poller.add(&stream, i, interest, self.mode())?;
        self.slots[i] = Slot {
            stream: Some(stream),
            state: State::Connecting(Instant::now() + timeout),
            blocked: false,
        };
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let Some(stream) = slot.stream.take() {
            let _ = self.poller.delete(&stream);
        }
        slot.state = State::Dead;
    }

    /// A connect finished (writable or failed).
    fn finish_connect(&mut self, i: usize, load: &mut Load) {
        let stream = self.slots[i]
            .stream
            .as_ref()
            .expect("connecting slot has a socket");
        let result = match stream.take_error() {
            Ok(Some(e)) => Err(e),
            Err(e) => Err(e),
            Ok(None) => stream.peer_addr().map(|_| ()),
        };
        match result {
            Ok(()) => {
                let _ = stream.set_nodelay(true);
                self.slots[i].state = State::Open;
                load.on_connected(i);
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {} // not yet
            Err(e) => {
                self.kill(i);
                load.on_connect_failed(i, e);
            }
        }
    }

    /// Reads what is there (edge: until a short read; else once) and sends
    /// what the load allows. Marks the connection dead on a close or error.
    fn drive(&mut self, i: usize, readable: bool, load: &mut Load) {
        if readable && !self.read(i, load) {
            return;
        }
        self.send(i, load);
        if !self.edge
            && let Some(stream) = &self.slots[i].stream
        {
            let interest = if self.slots[i].blocked {
                Interest::BOTH
            } else {
                Interest::READABLE
            };
            if let Err(e) = self.poller.modify(stream, i, interest, Mode::Oneshot) {
                self.lost(i, load, &format!("re-arm: {e}"));
            }
        }
    }

    fn lost(&mut self, i: usize, load: &mut Load, why: &str) {
        self.kill(i);
        load.on_lost(i, why);
    }

    fn read(&mut self, i: usize, load: &mut Load) -> bool {
        loop {
            let Some(mut stream) = self.slots[i].stream.as_ref() else {
                return false;
            };
            match stream.read(&mut self.rbuf) {
                Ok(0) => {
                    self.lost(i, load, "closed by the server");
                    return false;
                }
                Ok(n) => {
                    load.received(i, &self.rbuf[..n], Instant::now());
                    if !self.edge || n < self.rbuf.len() {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lost(i, load, &e.to_string());
                    return false;
                }
            }
        }
    }

    fn send(&mut self, i: usize, load: &mut Load) {
        loop {
            let Some(mut stream) = self.slots[i].stream.as_ref() else {
                return;
            };
            let n = load.fill(i, &mut self.sbuf);
            if n == 0 {
                self.slots[i].blocked = false;
                return;
            }
            match stream.write(&self.sbuf[..n]) {
                Ok(m) => {
                    load.sent(i, m, Instant::now());
                    if m < n {
                        self.slots[i].blocked = true;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.slots[i].blocked = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lost(i, load, &e.to_string());
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event, load: &mut Load) {
        let i = ev.key();
        if i >= self.slots.len() {
            return;
        }
        match self.slots[i].state {
            State::Connecting(_) => {
                self.finish_connect(i, load);
                if matches!(self.slots[i].state, State::Open) {
                    self.drive(i, ev.is_readable() || ev.is_read_closed(), load);
                } else if !self.edge
                    && let Some(s) = &self.slots[i].stream
                {
                    let _ = self.poller.modify(s, i, Interest::WRITABLE, Mode::Oneshot);
                }
            }
            State::Open => {
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.drive(i, readable, load);
            }
            State::NotStarted | State::Dead => {}
        }
    }

    fn wait(&mut self, load: &mut Load, timeout: Duration) -> io::Result<()> {
        let mut events = self
            .events
            .take()
            .expect("events are put back after each wait");
        let result = self.poller.wait(&mut events, Some(timeout));
        if result.is_ok() {
            for &ev in &events {
                self.on_event(ev, load);
            }
        }
        self.events = Some(events);
        result.map(|_| ())
    }
}

impl Transport for PollerTransport {
    fn name(&self) -> String {
        self.poller.backend().name().to_string()
    }

    fn connect(&mut self, load: &mut Load, timeout: Duration, deadline: Instant) -> io::Result<()> {
        let total = load.conns.len();
        self.slots = (0..total)
            .map(|_| Slot {
                stream: None,
                state: State::NotStarted,
                blocked: false,
            })
            .collect();
        let mut next = 0;
        loop {
            let now = Instant::now();
            let mut connecting = 0;
            for i in 0..next {
                if let State::Connecting(until) = self.slots[i].state {
                    if now >= until {
                        self.kill(i);
                        load.on_connect_failed(
                            i,
                            io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                        );
                    } else {
                        connecting += 1;
                    }
                }
            }
            while connecting < MAX_CONNECTING && next < total {
                match self.start_connect(next, timeout) {
                    Ok(()) => connecting += 1,
                    Err(e) => {
                        self.slots[next].state = State::Dead;
                        load.on_connect_failed(next, e);
                    }
                }
                next += 1;
            }
            if next == total && connecting == 0 && load.idle_settled() {
                return Ok(());
            }
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "set-up of {total} connections to {} not done in time",
                        self.addr
                    ),
                ));
            }
            self.wait(load, Duration::from_millis(100))?;
        }
    }

    fn pump(
        &mut self,
        load: &mut Load,
        deadline: Instant,
        done: &dyn Fn(&Load) -> bool,
    ) -> io::Result<()> {
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, State::Open) && load.conns[i].enabled {
                self.drive(i, false, load);
            }
        }
        loop {
            if done(load) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            self.wait(load, deadline - now)?;
        }
    }
}
