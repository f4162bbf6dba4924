//! TCP connections: the per-connection state, the handler's context, and the
//! loop's state machine for them.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use bytes::{Buf, Bytes};
use readiness::{Event, Interest, Mode};
use socket2::{SockRef, Socket};

use crate::event_loop::{ConnId, LoopCtx, MIN_TCP_ROOM, READ_BUDGET, Rule, TAG_CONN, not_found};
use crate::{Handler, WriteError};

/// Connection state bits.
pub(crate) mod flag {
    pub const CONNECTING: u32 = 1;
    pub const CONNECT_DUE: u32 = 1 << 1;
    pub const READ_READY: u32 = 1 << 2;
    pub const PEER_FIN: u32 = 1 << 3;
    pub const EOF: u32 = 1 << 4;
    pub const EOF_TOLD: u32 = 1 << 5;
    pub const PAUSED: u32 = 1 << 6;
    pub const READ_SHUT: u32 = 1 << 7;
    pub const CLOSING: u32 = 1 << 8;
    pub const WR_SHUT: u32 = 1 << 9;
    pub const SHUT_WR_PENDING: u32 = 1 << 10;
    pub const ABOVE_LOW: u32 = 1 << 11;
    pub const DRAIN_DUE: u32 = 1 << 12;
    pub const WANT_WRITABLE: u32 = 1 << 13;
    pub const RESET: u32 = 1 << 14;
    pub const FAILED: u32 = 1 << 15;
    pub const DEAD: u32 = 1 << 16;
    pub const DEAD_DONE: u32 = 1 << 17;
    pub const ABORT: u32 = 1 << 18;
    pub const TIMER_ARMED: u32 = 1 << 19;
    pub const IN_PENDING: u32 = 1 << 20;
    pub const IN_READY: u32 = 1 << 21;
    pub const LOOP_WAITER: u32 = 1 << 22;
    pub const NOT_REGISTERED: u32 = 1 << 23;
    pub const ESTABLISHED: u32 = 1 << 24;
}

const I_R: u8 = 1;
const I_W: u8 = 2;
const I_P: u8 = 4;

pub(crate) fn interest_bits(i: Interest) -> u8 {
    (if i.is_readable() { I_R } else { 0 })
        | (if i.is_writable() { I_W } else { 0 })
        | (if i.is_priority() { I_P } else { 0 })
}

fn interest_of(bits: u8) -> Interest {
    let mut i = Interest::NONE;
    if bits & I_R != 0 {
        i |= Interest::READABLE;
    }
    if bits & I_W != 0 {
        i |= Interest::WRITABLE;
    }
    if bits & I_P != 0 {
        i |= Interest::PRIORITY;
    }
    i
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const SEND_FLAGS: i32 = 0;

/// Iovecs per vectored write of the queue.
const IOV_MAX: usize = 64;

/// The write queue: nothing at all (one null pointer) until something is
/// queued, so an idle connection pays 8 bytes for it.
#[derive(Default)]
// Boxed on purpose: 8 bytes per idle connection instead of 32.
#[allow(clippy::box_collection)]
pub(crate) struct Queue(Option<Box<VecDeque<Bytes>>>);

impl Queue {
    pub(crate) fn new() -> Queue {
        Queue(None)
    }
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }
    pub(crate) fn push_back(&mut self, b: Bytes) {
        self.0.get_or_insert_with(Default::default).push_back(b);
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.0.iter().flat_map(|q| q.iter())
    }
    pub(crate) fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.0.as_mut()?.front_mut()
    }
    pub(crate) fn pop_front(&mut self) -> Option<Bytes> {
        self.0.as_mut()?.pop_front()
    }
    /// Gives the memory back once empty (a burst is over).
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
    pub(crate) fn free(&mut self) {
        self.0 = None;
    }
}

/// One connection in the loop's table. Kept small: see `docs/BENCHMARKS.md`
/// (net layer, memory) and `tests/sizes.rs`.
pub(crate) struct Connection {
    pub(crate) handler: Box<dyn Handler>,
    /// Bytes waiting for the kernel; an empty queue allocates nothing.
    pub(crate) queue: Queue,
    /// `None` once closed (the slot lives until the end of the turn).
    pub(crate) socket: Option<Socket>,
    pub(crate) queued: u32,
    pub(crate) gn: u32,
    /// Loop clock (ms, wrapping) of the last read, or of the start of the
    /// connect or close: the base of every timeout.
    pub(crate) last_active: u32,
    /// The deadline (ms, wrapping) of this connection's live heap entry.
    pub(crate) timer_at: u32,
    pub(crate) flags: u32,
    /// What the registration asks for now (oneshot: nothing after an event).
    pub(crate) armed: u8,
}

/// The handler that stands in while the real one is being called.
pub(crate) struct Placeholder;
impl Handler for Placeholder {}

/// Marks a connection for a graceful close.
pub(crate) fn begin_close(c: &mut Connection, now_ms: u64) {
    if c.flags & (flag::CLOSING | flag::DEAD) == 0 {
        c.flags |= flag::CLOSING;
        c.last_active = now_ms as u32;
    }
}

/// The context of one connection, given to every [`Handler`] call: the
/// operations on the connection, and [`event_loop`](Self::event_loop) for
/// the rest of the loop.
pub struct Conn<'a> {
    ctx: &'a mut LoopCtx,
    idx: u32,
    gn: u32,
}

impl std::fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id())
            .field("queued", &self.queued_bytes())
            .finish()
    }
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")
}

impl<'a> Conn<'a> {
    pub(crate) fn new(ctx: &'a mut LoopCtx, idx: u32, gn: u32) -> Conn<'a> {
        Conn { ctx, idx, gn }
    }

    #[inline]
    fn c(&mut self) -> &mut Connection {
        &mut self.ctx.conns[self.idx as usize]
    }

    #[inline]
    fn flags(&self) -> u32 {
        self.ctx.conns[self.idx as usize].flags
    }

    fn socket_ref(&self) -> io::Result<&Socket> {
        self.ctx.conns[self.idx as usize]
            .socket
            .as_ref()
            .ok_or_else(not_connected)
    }

    /// This connection's id, valid from any thread.
    pub fn id(&self) -> ConnId {
        ConnId {
            idx: self.idx,
            gn: self.gn,
        }
    }

    /// The rest of the loop: other connections, timers, `connect`, stats.
    pub fn event_loop(&mut self) -> &mut LoopCtx {
        self.ctx
    }

    /// The socket, for options (`socket2::SockRef`: buffer sizes, keepalive,
    /// TTL, ...). Do not read, write or close through it while the loop
    /// serves the connection, except as [`Handler::on_readable`] and
    /// [`Handler::on_writable`] describe.
    pub fn socket(&self) -> io::Result<SockRef<'_>> {
        self.socket_ref().map(SockRef::from)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket_ref()?
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket_ref()?
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Bytes queued for the kernel now.
    pub fn queued_bytes(&self) -> usize {
        self.ctx.conns[self.idx as usize].queued as usize
    }

    /// Bytes a write may add now without being refused.
    pub fn write_room(&self) -> usize {
        let per_conn = self.ctx.config.high_water - self.queued_bytes();
        let per_loop = self
            .ctx
            .config
            .loop_max_queued
            .saturating_sub(self.ctx.stats.bytes_queued as usize);
        per_conn.min(per_loop)
    }

    /// Whether the connection is open for writing (not closing, closed,
    /// shut down for writing, or still connecting).
    pub fn is_writable(&self) -> bool {
        self.flags()
            & (flag::DEAD
                | flag::DEAD_DONE
                | flag::CLOSING
                | flag::WR_SHUT
                | flag::SHUT_WR_PENDING
                | flag::RESET)
            == 0
    }

    // ------------------------------------------------------------- reading

    /// Reads what the socket holds into a pooled buffer. `None` when nothing
    /// more can be read now: drained, paused, end of stream or error (the
    /// last two become `on_client_close` / `on_connection_reset` after the
    /// current call). A short read counts as drained: no second read call.
    #[inline]
    pub fn read(&mut self) -> Option<Bytes> {
        let ctx = &mut *self.ctx;
        let c = &mut ctx.conns[self.idx as usize];
        if c.flags & flag::READ_READY == 0
            || c.flags
                & (flag::PAUSED
                    | flag::EOF
                    | flag::READ_SHUT
                    | flag::CLOSING
                    | flag::DEAD
                    | flag::DEAD_DONE
                    | flag::RESET
                    | flag::CONNECTING)
                != 0
        {
            return None;
        }
        if ctx.read_budget == 0 {
            return None;
        }
        ctx.read_budget -= 1;
        let socket = c.socket.as_ref()?;
        let want = ctx.pool.prepare(MIN_TCP_ROOM);
        loop {
            match crate::sys::recv_stream(socket, &mut ctx.pool.buf) {
                Ok(0) => {
                    c.flags = (c.flags | flag::EOF) & !flag::READ_READY;
                    return None;
                }
                Ok(n) => {
                    ctx.stats.bytes_in += n as u64;
                    c.last_active = ctx.now_ms as u32;
                    if n < want && c.flags & flag::PEER_FIN == 0 {
                        c.flags &= !flag::READ_READY;
                    }
                    return Some(ctx.pool.take());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.flags &= !flag::READ_READY;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    c.flags = (c.flags | flag::RESET) & !flag::READ_READY;
                    return None;
                }
            }
        }
    }

    /// Reads into the caller's buffer. `Ok(0)`: end of stream (or an empty
    /// `buf`); `WouldBlock`: nothing now. End of stream and errors are also
    /// turned into `on_client_close` / `on_connection_reset` after the
    /// current call, as with [`read`](Self::read).
    pub fn read_into(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let now = self.ctx.now_ms as u32;
        let ctx = &mut *self.ctx;
        let c = &mut ctx.conns[self.idx as usize];
        if c.flags & (flag::DEAD | flag::DEAD_DONE | flag::RESET | flag::CONNECTING) != 0 {
            return Err(not_connected());
        }
        if c.flags & (flag::EOF | flag::READ_SHUT) != 0 {
            return Ok(0);
        }
        let socket = c.socket.as_ref().ok_or_else(not_connected)?;
        loop {
            match (&*socket).read(buf) {
                Ok(0) if !buf.is_empty() => {
                    c.flags = (c.flags | flag::EOF) & !flag::READ_READY;
                    return Ok(0);
                }
                Ok(n) => {
                    ctx.stats.bytes_in += n as u64;
                    c.last_active = now;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.flags &= !flag::READ_READY;
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    c.flags = (c.flags | flag::RESET) & !flag::READ_READY;
                    return Err(e);
                }
            }
        }
    }

    /// Reads one out-of-band (urgent) byte, if there is one.
    pub fn read_oob(&mut self) -> io::Result<u8> {
        crate::sys::recv_oob(self.socket_ref()?)
    }

    /// Stops reading (the kernel buffers, then TCP flow control holds the
    /// peer): for back-pressure, e.g. while writes are refused.
    pub fn pause_reading(&mut self) {
        self.c().flags |= flag::PAUSED;
        self.ctx.mark_pending(self.idx);
    }

    /// Reads again after [`pause_reading`](Self::pause_reading); data that
    /// arrived meanwhile is offered at once.
    pub fn resume_reading(&mut self) {
        let c = self.c();
        if c.flags & flag::PAUSED != 0 {
            c.flags = (c.flags & !flag::PAUSED) | flag::READ_READY;
            self.ctx.mark_pending(self.idx);
        }
    }

    /// Whether reading is paused.
    pub fn is_reading_paused(&self) -> bool {
        self.flags() & flag::PAUSED != 0
    }

    // ------------------------------------------------------------- writing

    /// Writes `data`: what the kernel takes now goes on the wire, the rest
    /// is queued (no copy) and sent as the socket drains. All or nothing: a
    /// write that would take the queue past the high-water mark (or the loop
    /// past its cap) is refused whole and the data given back; see
    /// [`WriteError`] for the kinds. A write that meets a reset is refused
    /// with `ConnectionReset` (`on_connection_reset` follows).
    #[inline]
    pub fn write(&mut self, data: Bytes) -> Result<(), WriteError> {
        let len = data.len();
        if let Err((kind, reason)) = self.admit(len) {
            return Err(WriteError::new(kind, reason, data));
        }
        if len == 0 {
            return Ok(());
        }
        let mut data = data;
        let idx = self.idx;
        let ctx = &mut *self.ctx;
        let c = &mut ctx.conns[idx as usize];
        if c.queue.is_empty() && c.flags & flag::CONNECTING == 0 {
            let Some(socket) = c.socket.as_ref() else {
                return Err(WriteError::new(
                    io::ErrorKind::NotConnected,
                    "the connection is closed",
                    data,
                ));
            };
            loop {
                match socket.send_with_flags(&data, SEND_FLAGS) {
                    Ok(n) => {
                        ctx.stats.bytes_out += n as u64;
                        if n == data.len() {
                            return Ok(());
                        }
                        data.advance(n);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "write failed");
                        c.flags |= flag::RESET;
                        ctx.mark_pending(idx);
                        return Err(WriteError::new(
                            io::ErrorKind::ConnectionReset,
                            "the connection was reset",
                            data,
                        ));
                    }
                }
            }
        }
        self.enqueue(data);
        Ok(())
    }

    /// Writes a copy of `data` (see [`write`](Self::write); what is queued
    /// is copied into a new buffer). Refused writes give `WouldBlock` or
    /// `InvalidInput` as there.
    pub fn write_slice(&mut self, data: &[u8]) -> io::Result<()> {
        if let Err((kind, reason)) = self.admit(data.len()) {
            return Err(io::Error::new(kind, reason));
        }
        let idx = self.idx;
        let ctx = &mut *self.ctx;
        let c = &mut ctx.conns[idx as usize];
        let mut done = 0;
        if c.queue.is_empty() && c.flags & flag::CONNECTING == 0 && !data.is_empty() {
            let socket = c.socket.as_ref().ok_or_else(not_connected)?;
            loop {
                match socket.send_with_flags(data, SEND_FLAGS) {
                    Ok(n) => {
                        ctx.stats.bytes_out += n as u64;
                        done = n;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        c.flags |= flag::RESET;
                        ctx.mark_pending(idx);
                        return Err(e);
                    }
                }
            }
        }
        if done < data.len() {
            self.enqueue(Bytes::copy_from_slice(&data[done..]));
        }
        Ok(())
    }

    /// Writes several buffers as one (vectored), all or nothing as
    /// [`write`](Self::write). The buffers are shared, not copied.
    pub fn writev(&mut self, bufs: &[Bytes]) -> io::Result<()> {
        let total: usize = bufs.iter().map(Bytes::len).sum();
        if let Err((kind, reason)) = self.admit(total) {
            return Err(io::Error::new(kind, reason));
        }
        let idx = self.idx;
        let ctx = &mut *self.ctx;
        let c = &mut ctx.conns[idx as usize];
        let mut done = 0;
        if c.queue.is_empty() && c.flags & flag::CONNECTING == 0 && total > 0 {
            let socket = c.socket.as_ref().ok_or_else(not_connected)?;
            let mut slices = [IoSlice::new(&[]); IOV_MAX];
            let mut first = 0;
            'outer: while first < bufs.len() {
                let mut skip = done - bufs[..first].iter().map(Bytes::len).sum::<usize>();
                let mut n = 0;
                for b in &bufs[first..] {
                    if n == IOV_MAX {
                        break;
                    }
                    slices[n] = IoSlice::new(&b[skip..]);
                    skip = 0;
                    n += 1;
                }
                let want: usize = slices[..n].iter().map(|s| s.len()).sum();
                loop {
                    match socket.send_vectored_with_flags(&slices[..n], SEND_FLAGS) {
                        Ok(k) => {
                            ctx.stats.bytes_out += k as u64;
                            done += k;
                            if k < want {
                                break 'outer;
                            }
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 'outer,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            c.flags |= flag::RESET;
                            ctx.mark_pending(idx);
                            return Err(e);
                        }
                    }
                }
                // Advance `first` past the buffers fully written.
                let mut acc = 0;
                first = 0;
                for b in bufs {
                    if acc + b.len() > done {
                        break;
                    }
                    acc += b.len();
                    first += 1;
                }
            }
        }
        // Queue what the kernel did not take.
        let mut skip = done;
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let mut b = b.clone();
            b.advance(skip);
            skip = 0;
            self.enqueue(b);
        }
        Ok(())
    }

    /// Checks a write of `len` bytes against the state and the caps.
    fn admit(&mut self, len: usize) -> Result<(), (io::ErrorKind, &'static str)> {
        let high = self.ctx.config.high_water;
        let loop_max = self.ctx.config.loop_max_queued;
        let loop_queued = self.ctx.stats.bytes_queued as usize;
        let id = self.id();
        let c = self.c();
        if c.flags & (flag::DEAD | flag::DEAD_DONE | flag::RESET) != 0 {
            return Err((io::ErrorKind::NotConnected, "the connection is closed"));
        }
        if c.flags & (flag::CLOSING | flag::WR_SHUT | flag::SHUT_WR_PENDING) != 0 {
            return Err((
                io::ErrorKind::NotConnected,
                "the connection is closing or shut down for writing",
            ));
        }
        if len > high {
            c.flags |= flag::ABOVE_LOW;
            self.ctx.stats.writes_refused += 1;
            return Err((
                io::ErrorKind::InvalidInput,
                "the write is larger than the high-water mark",
            ));
        }
        if c.queued as usize + len > high {
            c.flags |= flag::ABOVE_LOW;
            self.ctx.stats.writes_refused += 1;
            return Err((
                io::ErrorKind::WouldBlock,
                "the connection's queue is at its high-water mark",
            ));
        }
        if loop_queued + len > loop_max && len > 0 {
            if c.flags & flag::LOOP_WAITER == 0 {
                c.flags |= flag::LOOP_WAITER;
                self.ctx.loop_waiters.push(id);
            }
            self.ctx.stats.writes_refused += 1;
            return Err((
                io::ErrorKind::WouldBlock,
                "the loop's queued bytes are at their cap",
            ));
        }
        Ok(())
    }

    fn enqueue(&mut self, data: Bytes) {
        let low = self.ctx.config.low_water;
        let idx = self.idx;
        let ctx = &mut *self.ctx;
        let c = &mut ctx.conns[idx as usize];
        let len = data.len();
        let was_empty = c.queue.is_empty();
        c.queue.push_back(data);
        c.queued += len as u32;
        if c.queued as usize > low {
            c.flags |= flag::ABOVE_LOW;
        }
        ctx.stats.bytes_queued += len as u64;
        ctx.stats.bytes_queued_peak = ctx.stats.bytes_queued_peak.max(ctx.stats.bytes_queued);
        if was_empty {
            ctx.mark_pending(idx);
        }
    }

    /// Asks for one [`Handler::on_writable`] call when the socket can take
    /// data (for handlers that write through [`socket`](Self::socket)).
    pub fn request_writable(&mut self) {
        self.c().flags |= flag::WANT_WRITABLE;
        self.ctx.mark_pending(self.idx);
    }

    /// Sends one out-of-band (TCP urgent) byte, ahead of what is queued.
    pub fn send_oob(&mut self, byte: u8) -> io::Result<()> {
        if !self.is_writable() {
            return Err(not_connected());
        }
        let socket = self.socket_ref()?;
        match socket.send_out_of_band(&[byte]) {
            Ok(1) => Ok(()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "no room for the urgent byte",
            )),
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------- ending

    /// Shuts down one or both directions. `Write` waits until the queue is
    /// flushed, then sends FIN; `Read` stops reading at once (no
    /// `on_client_close` follows for it).
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        let idx = self.idx;
        if self.flags() & (flag::DEAD | flag::DEAD_DONE) != 0 {
            return Err(not_connected());
        }
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            let socket = self.socket_ref()?;
            match socket.shutdown(Shutdown::Read) {
                Ok(()) => {}
                // Already shut down by the peer on some systems.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
            self.c().flags |= flag::READ_SHUT;
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.c().flags |= flag::SHUT_WR_PENDING;
        }
        self.ctx.mark_pending(idx);
        Ok(())
    }

    /// Closes gracefully: stops reading (what still arrives is discarded),
    /// sends what is queued, sends FIN, waits up to
    /// [`Config::close_linger`](crate::Config::close_linger) without progress
    /// for the peer's FIN, then `on_disconnected`.
    pub fn close(&mut self) {
        let now = self.ctx.now_ms;
        let c = self.c();
        if c.flags & flag::CONNECTING != 0 {
            c.flags |= flag::DEAD | flag::ABORT;
        } else {
            begin_close(c, now);
        }
        self.ctx.mark_pending(self.idx);
    }

    /// Closes abortively: queued data is dropped and the peer gets a reset
    /// (RST, linger 0). `on_disconnected` follows.
    pub fn abort(&mut self) {
        self.c().flags |= flag::DEAD | flag::ABORT;
        self.ctx.mark_pending(self.idx);
    }
}

impl LoopCtx {
    /// One event for connection `idx`.
    #[inline]
    pub(crate) fn conn_event(&mut self, idx: u32, ev: Event) {
        let rule = self.rule;
        let Some(c) = self.conns.get_mut(idx as usize) else {
            return;
        };
        if c.flags & (flag::DEAD | flag::DEAD_DONE) != 0 {
            return;
        }
        if rule == Rule::Oneshot {
            c.armed = 0;
        }
        if c.flags & flag::CONNECTING != 0 {
            if !(ev.is_writable() || ev.is_error() || ev.is_write_closed() || ev.is_read_closed()) {
                self.settle(idx);
                return;
            }
            if !self.finish_connect(idx) {
                self.settle(idx);
                return;
            }
        }
        let c = &mut self.conns[idx as usize];
        let eof_before = c.flags & flag::EOF != 0;
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            c.flags |= flag::READ_READY;
            if ev.is_read_closed() {
                c.flags |= flag::PEER_FIN;
            }
            // What arrived before a reset is still delivered.
            self.readable(idx);
        }
        if ev.is_error() && !eof_before {
            // The poller's error flag is the reset, even where a read after
            // it returns end of stream instead of the error (Wine). After the
            // peer's FIN was seen, a reset is reported at the next write
            // instead, as on the oneshot backends, which stop watching a
            // half-closed idle connection.
            let c = &mut self.conns[idx as usize];
            if c.flags & (flag::DEAD | flag::DEAD_DONE) == 0 {
                c.flags |= flag::RESET;
            }
        }
        if ev.is_priority() && self.priority {
            let c = &self.conns[idx as usize];
            if c.flags & (flag::DEAD | flag::RESET | flag::CLOSING) == 0 {
                self.call(idx, |h, conn| h.on_readable_oob(conn));
            }
        }
        if ev.is_writable() || ev.is_error() || ev.is_write_closed() {
            self.writable(idx);
        }
        self.settle(idx);
    }

    /// A connect reported: true if it completed (on_connected was called).
    fn finish_connect(&mut self, idx: u32) -> bool {
        let c = &mut self.conns[idx as usize];
        let Some(socket) = c.socket.as_ref() else {
            return false;
        };
        let outcome = match socket.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match socket.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(true) => {
                c.flags = (c.flags & !flag::CONNECTING) | flag::ESTABLISHED | flag::READ_READY;
                c.last_active = self.now_ms as u32;
                self.stats.connections_connected += 1;
                self.call(idx, |h, conn| h.on_connected(conn));
                true
            }
            Ok(false) => false,
            Err(e) => {
                c.flags = (c.flags & !flag::CONNECTING) | flag::FAILED;
                self.failures.push((idx, e));
                false
            }
        }
    }

    /// Offers the connection's data to its handler (or discards it while
    /// closing).
    pub(crate) fn readable(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        let f = c.flags;
        if f & (flag::DEAD | flag::DEAD_DONE | flag::RESET | flag::CONNECTING) != 0 {
            return;
        }
        if f & flag::CONNECT_DUE != 0 {
            // Not announced yet: on_connected comes first (settle).
            return;
        }
        self.read_budget = READ_BUDGET;
        if f & flag::CLOSING != 0 {
            self.discard_input(idx);
            return;
        }
        if f & (flag::PAUSED | flag::EOF | flag::READ_SHUT) != 0 || f & flag::READ_READY == 0 {
            return;
        }
        self.call(idx, |h, conn| h.on_readable(conn));
    }

    /// While closing: read and drop what the peer still sends, until its FIN.
    fn discard_input(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        if c.flags & flag::EOF != 0 {
            return;
        }
        let Some(socket) = c.socket.as_ref() else {
            return;
        };
        let mut budget = READ_BUDGET;
        while budget > 0 && c.flags & flag::READ_READY != 0 {
            budget -= 1;
            let want = self.pool.prepare(MIN_TCP_ROOM);
            let r = crate::sys::recv_stream(socket, &mut self.pool.buf);
            self.pool.discard();
            match r {
                Ok(0) => c.flags = (c.flags | flag::EOF) & !flag::READ_READY,
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    c.last_active = self.now_ms as u32;
                    if n < want && c.flags & flag::PEER_FIN == 0 {
                        c.flags &= !flag::READ_READY;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.flags &= !flag::READ_READY,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => c.flags = (c.flags | flag::DEAD | flag::ABORT) & !flag::READ_READY,
            }
        }
    }

    fn writable(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        if c.flags & (flag::DEAD | flag::DEAD_DONE | flag::RESET) != 0 {
            return;
        }
        if !c.queue.is_empty() {
            self.flush(idx);
        }
        let c = &mut self.conns[idx as usize];
        if c.flags & flag::WANT_WRITABLE != 0
            && c.queue.is_empty()
            && c.flags & (flag::DEAD | flag::RESET | flag::CONNECT_DUE) == 0
        {
            c.flags &= !flag::WANT_WRITABLE;
            self.call(idx, |h, conn| h.on_writable(conn));
        }
    }

    /// Sends the queue with vectored writes until it is empty or the kernel
    /// is full.
    pub(crate) fn flush(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        let Some(socket) = c.socket.as_ref() else {
            return;
        };
        let before = c.queued;
        while !c.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); IOV_MAX];
            let mut n = 0;
            let mut want = 0;
            for b in c.queue.iter().take(IOV_MAX) {
                slices[n] = IoSlice::new(b);
                want += b.len();
                n += 1;
            }
            let sent = match socket.send_vectored_with_flags(&slices[..n], SEND_FLAGS) {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "flush failed");
                    c.flags |= flag::RESET;
                    break;
                }
            };
            let mut left = sent;
            while left > 0 {
                let front = c.queue.front_mut().expect("sent more than queued");
                if front.len() <= left {
                    left -= front.len();
                    c.queue.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
            c.queued -= sent as u32;
            self.stats.bytes_out += sent as u64;
            self.stats.bytes_queued -= sent as u64;
            if sent < want {
                break;
            }
        }
        if c.queued != before && c.flags & flag::CLOSING != 0 {
            c.last_active = self.now_ms as u32;
        }
        if c.flags & flag::ABOVE_LOW != 0 && c.queued as usize <= self.config.low_water {
            c.flags = (c.flags & !flag::ABOVE_LOW) | flag::DRAIN_DUE;
        }
        // Nothing queued: give the memory back (idle connections hold none).
        c.queue.release_if_empty();
        self.wake_loop_waiters();
    }

    fn wake_loop_waiters(&mut self) {
        if self.loop_waiters.is_empty()
            || self.stats.bytes_queued as usize > self.config.loop_max_queued / 2
        {
            return;
        }
        let mut waiters = std::mem::take(&mut self.loop_waiters);
        for id in waiters.drain(..) {
            if let Some(c) = self.conns.get_mut(id.idx as usize)
                && c.gn == id.gn
            {
                c.flags = (c.flags & !flag::LOOP_WAITER) | flag::DRAIN_DUE;
                self.mark_pending(id.idx);
            }
        }
        self.loop_waiters = waiters;
    }

    /// Brings a connection to rest after something happened to it: delivers
    /// the callbacks its state calls for, in order, closes it when it is
    /// done, and re-arms its registration and timer.
    pub(crate) fn settle(&mut self, idx: u32) {
        // The common case (data came, was handled, nothing else happened):
        // straight to the re-arm.
        const SLOW: u32 = flag::FAILED
            | flag::CONNECT_DUE
            | flag::RESET
            | flag::DEAD
            | flag::DEAD_DONE
            | flag::EOF
            | flag::DRAIN_DUE
            | flag::CLOSING
            | flag::SHUT_WR_PENDING;
        match self.conns.get(idx as usize) {
            Some(c) if c.flags & SLOW == 0 => {
                self.rearm(idx);
                return;
            }
            None => return,
            Some(_) => {}
        }
        loop {
            let Some(c) = self.conns.get_mut(idx as usize) else {
                return;
            };
            let f = c.flags;
            if f & flag::DEAD_DONE != 0 {
                return;
            }
            if f & flag::FAILED != 0 {
                c.flags = (f & !flag::FAILED) | flag::DEAD;
                self.stats.connect_failures += 1;
                let pos = self.failures.iter().position(|(i, _)| *i == idx);
                let err = match pos {
                    Some(p) => self.failures.swap_remove(p).1,
                    None => io::Error::other("connect failed"),
                };
                self.call(idx, |h, conn| h.on_connection_failed(conn, err));
                continue;
            }
            if f & flag::CONNECT_DUE != 0 && f & flag::DEAD == 0 {
                c.flags &= !flag::CONNECT_DUE;
                c.flags |= flag::ESTABLISHED;
                self.call(idx, |h, conn| h.on_connected(conn));
                // Data that arrived before the announcement.
                self.readable(idx);
                continue;
            }
            if f & flag::RESET != 0 && f & flag::DEAD == 0 {
                c.flags |= flag::DEAD;
                if f & flag::ESTABLISHED != 0 {
                    self.call(idx, |h, conn| h.on_connection_reset(conn));
                }
                continue;
            }
            if f & flag::DEAD != 0 {
                self.dispose(idx);
                return;
            }
            if f & flag::EOF != 0 && f & (flag::EOF_TOLD | flag::CLOSING | flag::READ_SHUT) == 0 {
                c.flags |= flag::EOF_TOLD;
                self.call(idx, |h, conn| h.on_client_close(conn));
                continue;
            }
            if f & flag::DRAIN_DUE != 0 {
                c.flags &= !flag::DRAIN_DUE;
                if f & (flag::CLOSING | flag::WR_SHUT) == 0 {
                    self.call(idx, |h, conn| h.on_drained(conn));
                    continue;
                }
            }
            if c.queue.is_empty() && f & flag::CONNECTING == 0 {
                if f & flag::CLOSING != 0 {
                    if f & flag::EOF != 0 {
                        // Both directions done: close() sends the FIN.
                        c.flags |= flag::DEAD;
                        continue;
                    }
                    if f & flag::WR_SHUT == 0 {
                        c.flags |= flag::WR_SHUT;
                        if let Some(s) = c.socket.as_ref()
                            && s.shutdown(Shutdown::Write).is_err()
                        {
                            c.flags |= flag::DEAD;
                            continue;
                        }
                    }
                } else if f & flag::SHUT_WR_PENDING != 0 && f & flag::WR_SHUT == 0 {
                    c.flags |= flag::WR_SHUT;
                    if let Some(s) = c.socket.as_ref() {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                }
            }
            break;
        }
        self.rearm(idx);
    }

    /// Oneshot: registers exactly the interest needed now. Edge: nothing
    /// (registered once with everything); data left unread is offered again
    /// on the next turn. Then the timer.
    #[inline]
    fn rearm(&mut self, idx: u32) {
        let rule = self.rule;
        let priority = self.priority;
        let c = &mut self.conns[idx as usize];
        let f = c.flags;
        let read_wanted = f & (flag::EOF | flag::READ_SHUT) == 0
            && (f & flag::CLOSING != 0 || f & flag::PAUSED == 0);
        match rule {
            Rule::Oneshot => {
                let mut want = 0;
                if f & flag::CONNECTING != 0 {
                    want = I_W;
                } else {
                    if read_wanted {
                        want |= I_R;
                        if priority && f & flag::CLOSING == 0 {
                            want |= I_P;
                        }
                    }
                    if !c.queue.is_empty() || f & flag::WANT_WRITABLE != 0 {
                        want |= I_W;
                    }
                }
                if want != c.armed
                    && want != 0
                    && let Some(s) = c.socket.as_ref()
                {
                    let key = (idx as usize) << 2 | TAG_CONN;
                    match self.poller.modify(s, key, interest_of(want), Mode::Oneshot) {
                        Ok(()) => c.armed = want,
                        Err(e) => {
                            tracing::error!(error = %e, "re-arming a connection failed");
                            c.flags |= flag::RESET;
                            self.mark_pending(idx);
                        }
                    }
                }
            }
            Rule::Edge => {
                if read_wanted
                    && f & flag::READ_READY != 0
                    && f & (flag::IN_READY | flag::CONNECTING | flag::CONNECT_DUE) == 0
                {
                    c.flags |= flag::IN_READY;
                    self.ready.push((idx, c.gn));
                }
            }
        }
        self.update_timer(idx);
    }

    /// The deadline this connection's state calls for (ms since the epoch).
    fn conn_deadline(&self, c: &Connection) -> Option<u64> {
        let f = c.flags;
        let elapsed = (self.now_ms as u32).wrapping_sub(c.last_active) as u64;
        let base = self.now_ms.saturating_sub(elapsed);
        let t = if f & flag::CONNECTING != 0 {
            self.config.connect_timeout
        } else if f & flag::CLOSING != 0 {
            self.config.close_linger
        } else if f & flag::DEAD != 0 {
            return None;
        } else {
            self.config.idle_timeout?
        };
        Some(base.saturating_add(t.as_millis() as u64))
    }

    #[inline]
    fn update_timer(&mut self, idx: u32) {
        let c = &self.conns[idx as usize];
        let Some(deadline) = self.conn_deadline(c) else {
            return;
        };
        let c = &mut self.conns[idx as usize];
        let armed = c.flags & flag::TIMER_ARMED != 0;
        // An entry already due no later than this deadline is enough: when
        // it pops, the real deadline is computed again.
        if armed && (c.timer_at.wrapping_sub(deadline as u32) as i32) <= 0 {
            return;
        }
        c.flags |= flag::TIMER_ARMED;
        c.timer_at = deadline as u32;
        let gn = c.gn;
        self.push_conn_timer(idx, gn, deadline);
    }

    /// A connection's heap entry came due.
    pub(crate) fn conn_timer(&mut self, idx: u32, gn: u32, deadline: u64) {
        let Some(c) = self.conns.get_mut(idx as usize) else {
            return;
        };
        if c.gn != gn || c.flags & flag::TIMER_ARMED == 0 || c.timer_at != deadline as u32 {
            return; // stale
        }
        c.flags &= !flag::TIMER_ARMED;
        let c = &self.conns[idx as usize];
        let Some(real) = self.conn_deadline(c) else {
            return;
        };
        if real > self.now_ms {
            self.update_timer(idx);
            return;
        }
        let c = &mut self.conns[idx as usize];
        let f = c.flags;
        if f & flag::CONNECTING != 0 {
            c.flags = (f & !flag::CONNECTING) | flag::FAILED;
            self.failures.push((
                idx,
                io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            ));
        } else if f & flag::CLOSING != 0 {
            c.flags |= flag::DEAD | flag::ABORT;
            self.stats.close_timeouts += 1;
            tracing::debug!(idx, "graceful close made no progress: reset");
        } else if f & (flag::DEAD | flag::RESET | flag::CONNECT_DUE) == 0 {
            c.last_active = self.now_ms as u32;
            self.stats.timeouts += 1;
            self.call(idx, |h, conn| h.on_timeout(conn));
        }
        self.settle(idx);
    }

    /// Closes the socket and delivers `on_disconnected`; the slot is freed
    /// at the end of the turn (events of this turn may still name it).
    fn dispose(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        c.flags |= flag::DEAD_DONE;
        if let Some(socket) = c.socket.take() {
            if c.flags & flag::NOT_REGISTERED == 0
                && let Err(e) = self.poller.delete(&socket)
            {
                tracing::warn!(error = %e, "deregistering a connection failed");
            }
            if c.flags & flag::ABORT != 0 {
                let _ = socket.set_linger(Some(Duration::ZERO));
            }
            drop(socket);
        }
        self.stats.bytes_queued -= c.queued as u64;
        c.queued = 0;
        c.queue.free();
        self.stats.connections_open -= 1;
        self.call(idx, |h, conn| h.on_disconnected(conn));
        self.free_slot(idx);
    }

    /// The connection with this id, for the checks of [`Conn`]-less calls.
    #[allow(dead_code)]
    pub(crate) fn conn_flags(&self, id: ConnId) -> io::Result<u32> {
        match self.conns.get(id.idx as usize) {
            Some(c) if c.gn == id.gn => Ok(c.flags),
            _ => Err(not_found("connection")),
        }
    }
}
