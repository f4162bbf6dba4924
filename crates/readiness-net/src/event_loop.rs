//! The event loop: one poller, the tables of sockets and timers, the turn.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use readiness::{Backend, Event, Events, Interest, Mode, Poller};
use slab::Slab;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::conn::{self, Connection, flag};
use crate::timer::{KIND_USER, TimerHeap};
use crate::udp::UdpEntry;
use crate::{Config, Conn, Handler, Incoming, ListenerHandler, Stats, Udp, UdpHandler, WriteError};

/// Poller keys: the slab index shifted left by two, the table in the low bits.
pub(crate) const TAG_CONN: usize = 0;
pub(crate) const TAG_LISTENER: usize = 1;
pub(crate) const TAG_UDP: usize = 2;
/// Slab indices above this are refused (the key must stay below `MAX_KEY`,
/// and timer entries keep the index in 31 bits).
const MAX_INDEX: usize = (1 << 30) - 1;

/// Reads per readable event before the connection yields to the others (what
/// is left is offered again on the next turn).
pub(crate) const READ_BUDGET: u32 = 32;
/// Accepts per readable event of a listener before it yields.
const ACCEPT_BUDGET: u32 = 128;
/// A TCP read needs at least this much room in the pooled buffer.
pub(crate) const MIN_TCP_ROOM: usize = 16 << 10;
/// A datagram read needs room for the largest datagram.
pub(crate) const MIN_UDP_ROOM: usize = 64 << 10;

/// How sockets are registered with the poller: the one rule of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Registered once with everything, never modified: epoll, kqueue.
    Edge,
    /// Re-armed with `modify` after each event with exactly the interest
    /// needed: poll(2), Windows AFD.
    Oneshot,
}

/// THE rule (see the crate docs, "Registration"): edge-triggered where the
/// backend has it, oneshot re-armed with the exact interest elsewhere.
pub(crate) fn registration_rule(poller: &Poller) -> Rule {
    if poller.supports_edge() {
        Rule::Edge
    } else {
        Rule::Oneshot
    }
}

static NEXT_GEN: AtomicU32 = AtomicU32::new(1);

/// A generation unique in the process (until 2^32 sockets were made).
pub(crate) fn next_gen() -> u32 {
    NEXT_GEN.fetch_add(1, Ordering::Relaxed)
}

/// Names one TCP connection of one loop, from anywhere (`Copy`, `Send`).
///
/// An id whose connection is gone gives [`ErrorKind::NotFound`](io::ErrorKind::NotFound),
/// never another connection: the generation part is unique in the process.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) idx: u32,
    pub(crate) gn: u32,
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}#{})", self.idx, self.gn)
    }
}

/// Names one listener of one loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId {
    pub(crate) idx: u32,
    pub(crate) gn: u32,
}

/// Names one UDP socket of one loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpId {
    pub(crate) idx: u32,
    pub(crate) gn: u32,
}

/// Names one timer of one loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    idx: u32,
    gn: u32,
}

type Task = Box<dyn FnOnce(&mut LoopCtx) + Send>;

pub(crate) enum Msg {
    Call(Task),
    Write(ConnId, Bytes),
    Stop(Option<Duration>),
}

struct Mailbox {
    msgs: VecDeque<Msg>,
    closed: bool,
}

pub(crate) struct Shared {
    poller: Arc<Poller>,
    mailbox: Mutex<Mailbox>,
    has_msgs: AtomicBool,
    stats: Mutex<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on another thread while it held the lock leaves plain data
    // behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stopped_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the event loop has stopped")
}

/// Controls a loop from any thread: `Send + Sync + Clone`.
///
/// Everything it sends is run by the loop in the order it was sent. Once
/// [`stop`](Self::stop) or [`shutdown`](Self::shutdown) was called (or the
/// loop was dropped), further posts and writes are refused with
/// [`ErrorKind::NotConnected`](io::ErrorKind::NotConnected) (a refused write
/// gives its data back); everything sent before is still run.
#[derive(Clone)]
pub struct LoopHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl LoopHandle {
    fn send(&self, msg: Msg) -> Result<(), Msg> {
        let mut mb = lock(&self.shared.mailbox);
        if mb.closed {
            return Err(msg);
        }
        let stop = matches!(msg, Msg::Stop(_));
        mb.msgs.push_back(msg);
        if stop {
            mb.closed = true;
        }
        drop(mb);
        if !self.shared.has_msgs.swap(true, Ordering::AcqRel) {
            // A failed wake-up leaves the message queued for the next turn.
            let _ = self.shared.poller.notify();
        }
        Ok(())
    }

    /// Runs `f` on the loop's thread, after everything posted before it.
    pub fn post(&self, f: impl FnOnce(&mut LoopCtx) + Send + 'static) -> io::Result<()> {
        self.send(Msg::Call(Box::new(f)))
            .map_err(|_| stopped_error())
    }

    /// Writes `data` to connection `id` (on the loop, in order with other
    /// posts). If the loop refuses it there (queue full, connection gone),
    /// the data goes to the connection's [`Handler::on_write_refused`], or,
    /// for a connection that is gone, is counted in
    /// [`Stats::writes_refused`]. Fails here, giving the data back, once the
    /// loop has stopped.
    pub fn write(&self, id: ConnId, data: Bytes) -> Result<(), WriteError> {
        self.send(Msg::Write(id, data)).map_err(|m| match m {
            Msg::Write(_, data) => WriteError::new(
                io::ErrorKind::NotConnected,
                "the event loop has stopped",
                data,
            ),
            _ => unreachable!("send gives back what it was given"),
        })
    }

    /// Wakes the loop: it runs a turn (timers, posted work) at once.
    pub fn notify(&self) -> io::Result<()> {
        self.shared.poller.notify()
    }

    /// Graceful shutdown with the configured deadline
    /// ([`Config::shutdown_timeout`]): stop accepting, flush queued writes,
    /// close every connection (each handler gets `on_disconnected`), then
    /// `run` returns. Idempotent.
    pub fn stop(&self) {
        let _ = self.send(Msg::Stop(None));
    }

    /// [`stop`](Self::stop) with this flush deadline.
    pub fn shutdown(&self, flush_deadline: Duration) {
        let _ = self.send(Msg::Stop(Some(flush_deadline)));
    }

    /// Whether the loop was told to stop (or dropped).
    pub fn is_stopped(&self) -> bool {
        lock(&self.shared.mailbox).closed
    }

    /// A snapshot of the loop's counters, as it published them at the end
    /// of its last turn.
    pub fn stats(&self) -> Stats {
        *lock(&self.shared.stats)
    }
}

/// The loop's shared read buffer. Reads land in its spare capacity; the
/// filled bytes are split off as a `Bytes`. Before each read, if nobody
/// holds a part of the allocation any more (the echo went to the kernel and
/// its `Bytes` was dropped), the same memory is reclaimed from its start, so
/// the hot path reuses hot memory and allocates nothing.
pub(crate) struct ReadPool {
    pub(crate) buf: BytesMut,
    cap: usize,
}

impl ReadPool {
    fn new(cap: usize) -> ReadPool {
        ReadPool {
            buf: BytesMut::new(),
            cap,
        }
    }

    /// Makes room for a read of at least `min` bytes; returns the room.
    #[inline]
    pub(crate) fn prepare(&mut self, min: usize) -> usize {
        debug_assert!(self.buf.is_empty());
        if self.buf.capacity() < self.cap
            && !self.buf.try_reclaim(self.cap)
            && self.buf.capacity() < min
        {
            // Someone still holds the old memory: a fresh allocation (the old
            // one is freed by its last holder).
            self.buf = BytesMut::with_capacity(self.cap);
        }
        self.buf.capacity()
    }

    /// What the last read appended, as a `Bytes`.
    #[inline]
    pub(crate) fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// Forgets what the last read appended.
    #[inline]
    pub(crate) fn discard(&mut self) {
        self.buf.clear();
    }
}

pub(crate) struct ListenerEntry {
    pub(crate) socket: Socket,
    pub(crate) handler: ListenKind,
    pub(crate) gn: u32,
    pub(crate) armed: bool,
    pub(crate) paused: bool,
    pub(crate) closed: bool,
}

pub(crate) enum ListenKind {
    Local(Box<dyn ListenerHandler>),
    /// The accepting loop of a round-robin [`Server`](crate::Server).
    Forward(crate::server::Forwarder),
    Taken,
}

struct Placeholder;
impl ListenerHandler for Placeholder {
    fn on_incoming_connection(&mut self, _: &mut LoopCtx, _: SocketAddr) -> Incoming {
        Incoming::Refuse
    }
}

struct UserTimer {
    gn: u32,
    deadline: u64,
    period: Option<u64>,
    f: Option<TimerFn>,
}

type TimerFn = Box<dyn FnMut(&mut LoopCtx)>;

/// What a loop's handlers, timers and posted closures work with: the
/// connections, listeners, UDP sockets and timers of the loop.
/// [`EventLoop`] dereferences to it, so set-up code uses the same calls.
pub struct LoopCtx {
    pub(crate) poller: Arc<Poller>,
    pub(crate) rule: Rule,
    pub(crate) priority: bool,
    pub(crate) conns: Slab<Connection>,
    pub(crate) listeners: Slab<ListenerEntry>,
    pub(crate) udps: Slab<UdpEntry>,
    timers: TimerHeap,
    user_timers: Slab<UserTimer>,
    /// Connections whose state changed outside their own dispatch.
    pub(crate) pending: Vec<u32>,
    /// Edge mode: connections with data left unread (budget, pause lifted).
    pub(crate) ready: Vec<(u32, u32)>,
    pub(crate) udp_pending: Vec<u32>,
    pub(crate) udp_ready: Vec<u32>,
    pub(crate) udp_free: Vec<u32>,
    pub(crate) failures: Vec<(u32, io::Error)>,
    free_list: Vec<u32>,
    pub(crate) loop_waiters: Vec<ConnId>,
    pub(crate) pool: ReadPool,
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    shared: Arc<Shared>,
    epoch: Instant,
    pub(crate) now_ms: u64,
    pub(crate) read_budget: u32,
    stopping: Option<u64>,
    spare: VecDeque<Msg>,
}

impl fmt::Debug for LoopCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopCtx")
            .field("backend", &self.poller.backend())
            .field("rule", &self.rule)
            .field("connections", &self.stats.connections_open)
            .field("listeners", &self.listeners.len())
            .field("udp", &self.udps.len())
            .finish_non_exhaustive()
    }
}

/// An event loop: owns a [`Poller`] and runs on the thread that calls
/// [`run`](Self::run). Not `Send` (handlers need not be); control it from
/// other threads with a [`LoopHandle`].
pub struct EventLoop {
    ctx: LoopCtx,
    events: Events,
    ran: bool,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ctx.fmt(f)
    }
}

impl std::ops::Deref for EventLoop {
    type Target = LoopCtx;
    fn deref(&self) -> &LoopCtx {
        &self.ctx
    }
}

impl std::ops::DerefMut for EventLoop {
    fn deref_mut(&mut self) -> &mut LoopCtx {
        &mut self.ctx
    }
}

impl EventLoop {
    /// A loop with the default [`Config`].
    pub fn new() -> io::Result<EventLoop> {
        EventLoop::with_config(Config::default())
    }

    /// A loop with these settings.
    pub fn with_config(config: Config) -> io::Result<EventLoop> {
        let poller = match config.backend {
            Some(b) => Poller::with_backend(b)?,
            None => Poller::new()?,
        };
        let poller = Arc::new(poller);
        let rule = registration_rule(&poller);
        let priority = poller.supports_priority();
        let shared = Arc::new(Shared {
            poller: poller.clone(),
            mailbox: Mutex::new(Mailbox {
                msgs: VecDeque::new(),
                closed: false,
            }),
            has_msgs: AtomicBool::new(false),
            stats: Mutex::new(Stats::default()),
        });
        let events = Events::with_capacity(config.events_capacity);
        Ok(EventLoop {
            ctx: LoopCtx {
                poller,
                rule,
                priority,
                conns: Slab::new(),
                listeners: Slab::new(),
                udps: Slab::new(),
                timers: TimerHeap::new(),
                user_timers: Slab::new(),
                pending: Vec::new(),
                ready: Vec::new(),
                udp_pending: Vec::new(),
                udp_ready: Vec::new(),
                udp_free: Vec::new(),
                failures: Vec::new(),
                free_list: Vec::new(),
                loop_waiters: Vec::new(),
                pool: ReadPool::new(config.read_buffer),
                config,
                stats: Stats::default(),
                shared,
                epoch: Instant::now(),
                now_ms: 0,
                read_budget: READ_BUDGET,
                stopping: None,
                spare: VecDeque::new(),
            },
            events,
            ran: false,
        })
    }

    /// Runs until a graceful shutdown ([`LoopHandle::stop`],
    /// [`LoopCtx::stop`]) has closed every connection, or the poller fails
    /// (then every connection is reset, each handler gets `on_disconnected`,
    /// and the error is returned). A loop runs once: a second call fails
    /// with `NotConnected`.
    pub fn run(&mut self) -> io::Result<()> {
        if self.ran {
            return Err(stopped_error());
        }
        self.ran = true;
        let result = self.run_inner();
        if result.is_err() {
            self.ctx.abort_everything();
        }
        lock(&self.ctx.shared.mailbox).closed = true;
        // Whatever was posted before the mailbox closed still runs.
        self.ctx.drain_messages();
        self.ctx.settle_all();
        self.ctx.abort_everything();
        self.ctx.publish();
        result
    }

    fn run_inner(&mut self) -> io::Result<()> {
        loop {
            let timeout = self.ctx.wait_timeout();
            self.ctx.poller.wait(&mut self.events, timeout)?;
            self.ctx.update_now();
            for ev in self.events.iter() {
                self.ctx.dispatch(*ev);
            }
            self.ctx.turn_tail();
            if let Some(deadline) = self.ctx.stopping {
                if self.ctx.stats.connections_open == 0 && self.ctx.listeners.is_empty() {
                    return Ok(());
                }
                if self.ctx.now_ms >= deadline {
                    self.ctx.abort_everything();
                    return Ok(());
                }
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        lock(&self.ctx.shared.mailbox).closed = true;
        if !self.ran {
            // Never run: what was posted runs now, then everything is closed
            // (handlers still get their last call).
            self.ctx.drain_messages();
            self.ctx.settle_all();
        }
        self.ctx.abort_everything();
    }
}

impl LoopCtx {
    /// A handle to this loop, for other threads.
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.shared.clone(),
        }
    }

    /// The poller backend in use.
    pub fn backend(&self) -> Backend {
        self.poller.backend()
    }

    /// Whether out-of-band data is reported on this backend
    /// ([`Handler::on_readable_oob`]).
    pub fn supports_oob(&self) -> bool {
        self.priority
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters, now.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The loop's clock: the time its current turn started.
    pub fn now(&self) -> Instant {
        self.epoch + Duration::from_millis(self.now_ms)
    }

    /// Whether a graceful shutdown is in progress.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Begins a graceful shutdown (as [`LoopHandle::stop`]).
    pub fn stop(&mut self) {
        self.handle().stop();
    }

    #[inline]
    pub(crate) fn update_now(&mut self) {
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
    }

    pub(crate) fn check_open(&self) -> io::Result<()> {
        if self.stopping.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the event loop is shutting down",
            ));
        }
        Ok(())
    }

    fn wait_timeout(&mut self) -> Option<Duration> {
        if !self.ready.is_empty()
            || !self.pending.is_empty()
            || !self.udp_ready.is_empty()
            || self.shared.has_msgs.load(Ordering::Acquire)
        {
            return Some(Duration::ZERO);
        }
        let mut t = self.timers.next_deadline();
        if let Some(d) = self.stopping {
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        // The clock is read again only when a deadline needs it.
        let t = t?;
        self.update_now();
        Some(Duration::from_millis(t.saturating_sub(self.now_ms)))
    }

    fn turn_tail(&mut self) {
        self.settle_pending();
        self.run_ready();
        self.fire_timers();
        self.drain_messages();
        self.settle_all();
        self.free_slots();
        self.publish();
    }

    #[inline]
    fn free_slots(&mut self) {
        if !self.free_list.is_empty() {
            for idx in self.free_list.drain(..) {
                self.conns.remove(idx as usize);
            }
        }
        if !self.udp_free.is_empty() {
            for idx in self.udp_free.drain(..) {
                self.udps.remove(idx as usize);
            }
        }
    }

    fn settle_all(&mut self) {
        self.settle_pending();
        while let Some(idx) = self.udp_pending.pop() {
            self.settle_udp(idx);
        }
        self.settle_pending();
    }

    fn publish(&self) {
        if let Ok(mut s) = self.shared.stats.try_lock() {
            *s = self.stats;
        }
    }

    #[inline]
    fn dispatch(&mut self, ev: Event) {
        let key = ev.key();
        let idx = (key >> 2) as u32;
        match key & 3 {
            TAG_CONN => self.conn_event(idx, ev),
            TAG_LISTENER => self.listener_event(idx),
            TAG_UDP => self.udp_event(idx, ev),
            _ => tracing::warn!(key, "event for an unknown key"),
        }
    }

    pub(crate) fn settle_pending(&mut self) {
        while let Some(idx) = self.pending.pop() {
            if let Some(c) = self.conns.get_mut(idx as usize) {
                c.flags &= !flag::IN_PENDING;
                self.settle(idx);
            }
        }
    }

    fn run_ready(&mut self) {
        if !self.udp_ready.is_empty() {
            let mut ready = std::mem::take(&mut self.udp_ready);
            for idx in ready.drain(..) {
                if let Some(u) = self.udps.get_mut(idx as usize) {
                    u.flags &= !crate::udp::flag::IN_READY;
                    self.udp_read(idx);
                    self.settle_udp(idx);
                }
            }
            ready.append(&mut self.udp_ready);
            self.udp_ready = ready;
        }
        if self.ready.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        for (idx, gn) in ready.drain(..) {
            match self.conns.get_mut(idx as usize) {
                Some(c) if c.gn == gn => {
                    c.flags &= !flag::IN_READY;
                    self.readable(idx);
                    self.settle(idx);
                }
                _ => {}
            }
        }
        // Keep the allocation: entries pushed meanwhile go first.
        ready.append(&mut self.ready);
        self.ready = ready;
    }

    // ------------------------------------------------------------- messages

    pub(crate) fn drain_messages(&mut self) {
        if !self.shared.has_msgs.load(Ordering::Acquire)
            || !self.shared.has_msgs.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let mut batch = std::mem::take(&mut self.spare);
        std::mem::swap(&mut batch, &mut lock(&self.shared.mailbox).msgs);
        while let Some(msg) = batch.pop_front() {
            match msg {
                Msg::Call(f) => f(self),
                Msg::Write(id, data) => self.posted_write(id, data),
                Msg::Stop(t) => self.begin_shutdown(t),
            }
            self.settle_pending();
        }
        self.spare = batch;
    }

    fn posted_write(&mut self, id: ConnId, data: Bytes) {
        match self.write(id, data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(?id, "posted write for a connection that is gone");
            }
            Err(e) => {
                self.call(id.idx, |h, c| h.on_write_refused(c, e));
                self.settle(id.idx);
            }
        }
    }

    // ------------------------------------------------------------- shutdown

    /// Closes every listener and every UDP socket (dropping their queued
    /// datagrams when `discard`; otherwise each flushes what it can first).
    fn close_listeners_and_udps(&mut self, discard: bool) {
        let listeners: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
        for idx in listeners {
            self.remove_listener(idx);
        }
        let udps: Vec<u32> = self.udps.iter().map(|(i, _)| i as u32).collect();
        for idx in udps {
            if let Some(u) = self.udps.get_mut(idx as usize) {
                u.flags |= crate::udp::flag::CLOSING;
                if discard {
                    u.queue.clear();
                }
            }
            self.settle_udp(idx);
        }
    }

    fn begin_shutdown(&mut self, flush_deadline: Option<Duration>) {
        if self.stopping.is_some() {
            return;
        }
        let t = flush_deadline.unwrap_or(self.config.shutdown_timeout);
        self.stopping = Some(self.now_ms.saturating_add(t.as_millis() as u64));
        self.close_listeners_and_udps(false);
        let ids: Vec<u32> = self.conns.iter().map(|(i, _)| i as u32).collect();
        for idx in ids {
            let c = &mut self.conns[idx as usize];
            if c.flags & (flag::DEAD | flag::DEAD_DONE) == 0 {
                if c.flags & flag::CONNECTING != 0 {
                    c.flags |= flag::DEAD | flag::ABORT;
                } else {
                    conn::begin_close(c, self.now_ms);
                }
                self.mark_pending(idx);
            }
        }
        let timers: Vec<usize> = self.user_timers.iter().map(|(i, _)| i).collect();
        for idx in timers {
            self.user_timers.remove(idx);
        }
    }

    /// Resets every connection and closes every socket; each handler gets
    /// its last call.
    fn abort_everything(&mut self) {
        self.close_listeners_and_udps(true);
        let ids: Vec<u32> = self.conns.iter().map(|(i, _)| i as u32).collect();
        for idx in ids {
            let c = &mut self.conns[idx as usize];
            if c.flags & flag::DEAD_DONE == 0 {
                c.flags |= flag::DEAD | flag::ABORT;
                self.settle(idx);
            }
        }
        self.free_slots();
        self.user_timers.clear();
        self.timers.clear();
    }

    // ------------------------------------------------------------- timers

    /// Runs `f` on the loop after `after`.
    pub fn timer_after(
        &mut self,
        after: Duration,
        f: impl FnOnce(&mut LoopCtx) + 'static,
    ) -> TimerId {
        let mut f = Some(f);
        self.add_timer(after, None, move |ctx| {
            if let Some(f) = f.take() {
                f(ctx)
            }
        })
    }

    /// Runs `f` on the loop every `period`, first after one period, until
    /// cancelled.
    pub fn timer_every(
        &mut self,
        period: Duration,
        f: impl FnMut(&mut LoopCtx) + 'static,
    ) -> TimerId {
        self.add_timer(period, Some(period), f)
    }

    fn add_timer(
        &mut self,
        after: Duration,
        period: Option<Duration>,
        f: impl FnMut(&mut LoopCtx) + 'static,
    ) -> TimerId {
        self.update_now();
        let gn = next_gen();
        let deadline = self.now_ms.saturating_add(ms_ceil(after));
        let idx = self.user_timers.insert(UserTimer {
            gn,
            deadline,
            period: period.map(|p| ms_ceil(p).max(1)),
            f: Some(Box::new(f)),
        }) as u32;
        self.timers.push(deadline, idx | KIND_USER, gn);
        TimerId { idx, gn }
    }

    /// Cancels a timer; false if it already ran (one-shot) or was cancelled.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        match self.user_timers.get(id.idx as usize) {
            Some(t) if t.gn == id.gn => {
                self.user_timers.remove(id.idx as usize);
                true
            }
            _ => false,
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms;
        while let Some(e) = self.timers.pop_due(now) {
            if e.slot & KIND_USER != 0 {
                let idx = (e.slot & !KIND_USER) as usize;
                let f = match self.user_timers.get_mut(idx) {
                    Some(t) if t.gn == e.gn && t.deadline == e.deadline => t.f.take(),
                    _ => None,
                };
                let Some(mut f) = f else { continue };
                f(self);
                self.settle_pending();
                match self.user_timers.get_mut(idx) {
                    Some(t) if t.gn == e.gn => match t.period {
                        Some(p) => {
                            t.deadline = (t.deadline + p).max(now + 1);
                            t.f = Some(f);
                            let (d, g) = (t.deadline, t.gn);
                            self.timers.push(d, idx as u32 | KIND_USER, g);
                        }
                        None => {
                            self.user_timers.remove(idx);
                        }
                    },
                    _ => {}
                }
            } else {
                self.conn_timer(e.slot, e.gn, e.deadline);
            }
        }
    }

    pub(crate) fn push_conn_timer(&mut self, idx: u32, gn: u32, deadline: u64) {
        self.timers.push(deadline, idx, gn);
    }

    // ------------------------------------------------------------- TCP set-up

    /// Listens on `addr` with `backlog` (SO_REUSEADDR on Unix; on Windows
    /// nothing, see the crate docs) and serves incoming connections with
    /// `handler`.
    pub fn listen(
        &mut self,
        addr: SocketAddr,
        backlog: u32,
        handler: impl ListenerHandler,
    ) -> io::Result<ListenerId> {
        let socket = listen_socket(addr, backlog, false)?;
        self.add_listener(socket, ListenKind::Local(Box::new(handler)))
    }

    /// Serves an already listening socket (for example one bound with
    /// `SO_REUSEPORT` by the caller) with `handler`.
    pub fn listen_on(
        &mut self,
        listener: TcpListener,
        handler: impl ListenerHandler,
    ) -> io::Result<ListenerId> {
        let socket = Socket::from(listener);
        socket.set_nonblocking(true)?;
        self.add_listener(socket, ListenKind::Local(Box::new(handler)))
    }

    pub(crate) fn add_listener(
        &mut self,
        socket: Socket,
        handler: ListenKind,
    ) -> io::Result<ListenerId> {
        self.check_open()?;
        let entry = self.listeners.vacant_entry();
        let idx = entry.key();
        if idx > MAX_INDEX {
            return Err(io::Error::other("too many listeners"));
        }
        let mode = match self.rule {
            Rule::Edge => Mode::Edge,
            Rule::Oneshot => Mode::Oneshot,
        };
        self.poller
            .add(&socket, idx << 2 | TAG_LISTENER, Interest::READABLE, mode)?;
        let gn = next_gen();
        entry.insert(ListenerEntry {
            socket,
            handler,
            gn,
            armed: true,
            paused: false,
            closed: false,
        });
        Ok(ListenerId {
            idx: idx as u32,
            gn,
        })
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, id: ListenerId) -> io::Result<SocketAddr> {
        match self.listeners.get(id.idx as usize) {
            Some(l) if l.gn == id.gn => l
                .socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("not an IP socket")),
            _ => Err(not_found("listener")),
        }
    }

    /// Closes a listener (its handler gets `on_closed`). Connections it
    /// accepted stay open.
    pub fn close_listener(&mut self, id: ListenerId) -> io::Result<()> {
        match self.listeners.get(id.idx as usize) {
            Some(l) if l.gn == id.gn => {
                self.remove_listener(id.idx as usize);
                Ok(())
            }
            _ => Err(not_found("listener")),
        }
    }

    fn remove_listener(&mut self, idx: usize) {
        let Some(l) = self.listeners.get_mut(idx) else {
            return;
        };
        if l.closed {
            return;
        }
        l.closed = true;
        if let Err(e) = self.poller.delete(&l.socket) {
            tracing::warn!(error = %e, "deregistering a listener failed");
        }
        let kind = std::mem::replace(&mut l.handler, ListenKind::Taken);
        if let ListenKind::Local(mut h) = kind {
            h.on_closed(self);
        }
        self.listeners.remove(idx);
    }

    fn listener_event(&mut self, idx: u32) {
        let idx = idx as usize;
        let Some(l) = self.listeners.get_mut(idx) else {
            return;
        };
        if self.rule == Rule::Oneshot {
            l.armed = false;
        }
        if l.paused {
            return;
        }
        let gn = l.gn;
        let mut budget = ACCEPT_BUDGET;
        let mut more = false;
        while budget > 0 {
            budget -= 1;
            let Some(l) = self.listeners.get_mut(idx) else {
                return;
            };
            if l.gn != gn || l.closed {
                return;
            }
            let (socket, peer) = match accept(&l.socket) {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    l.paused = true;
                    let lid = ListenerId {
                        idx: idx as u32,
                        gn,
                    };
                    self.with_listener(idx, |ctx, h| h.on_accept_error(ctx, e));
                    self.timer_after(Duration::from_millis(50), move |ctx| {
                        if let Some(l) = ctx.listeners.get_mut(lid.idx as usize)
                            && l.gn == lid.gn
                        {
                            l.paused = false;
                            ctx.listener_event(lid.idx);
                        }
                    });
                    return;
                }
            };
            if budget == 0 {
                more = true;
            }
            self.incoming(idx, socket, peer);
        }
        if more && self.rule == Rule::Edge {
            // Yield to the others; come back on the next turn.
            let lid = ListenerId {
                idx: idx as u32,
                gn,
            };
            let _ = self.handle().post(move |ctx| {
                if let Some(l) = ctx.listeners.get(lid.idx as usize)
                    && l.gn == lid.gn
                {
                    ctx.listener_event(lid.idx);
                }
            });
        }
        if let Some(l) = self.listeners.get_mut(idx)
            && self.rule == Rule::Oneshot
            && !l.armed
            && !l.closed
        {
            match self.poller.modify(
                &l.socket,
                idx << 2 | TAG_LISTENER,
                Interest::READABLE,
                Mode::Oneshot,
            ) {
                Ok(()) => l.armed = true,
                Err(e) => tracing::error!(error = %e, "re-arming a listener failed"),
            }
        }
    }

    fn with_listener<R: Default>(
        &mut self,
        idx: usize,
        f: impl FnOnce(&mut LoopCtx, &mut dyn ListenerHandler) -> R,
    ) -> R {
        let Some(l) = self.listeners.get_mut(idx) else {
            return R::default();
        };
        let ListenKind::Local(_) = l.handler else {
            return R::default();
        };
        let ListenKind::Local(mut h) =
            std::mem::replace(&mut l.handler, ListenKind::Local(Box::new(Placeholder)))
        else {
            unreachable!()
        };
        let r = f(self, &mut *h);
        if let Some(l) = self.listeners.get_mut(idx) {
            if let ListenKind::Local(_) = l.handler {
                l.handler = ListenKind::Local(h);
            }
        } else {
            // Closed from inside its own callback: `on_closed` went to the
            // placeholder; deliver it to the real handler now.
            h.on_closed(self);
        }
        r
    }

    fn incoming(&mut self, lidx: usize, socket: Socket, peer: SocketAddr) {
        if self.stopping.is_some() {
            refuse(socket);
            return;
        }
        if let Some(l) = self.listeners.get_mut(lidx)
            && let ListenKind::Forward(fwd) = &mut l.handler
        {
            let target = fwd.next();
            let make = fwd.make.clone();
            match target {
                None => self.adopt_from_server(socket, peer, &make),
                Some(handle) => {
                    let sent = handle.post(move |ctx| ctx.adopt_from_server(socket, peer, &make));
                    if sent.is_err() {
                        self.stats.connections_refused += 1;
                    }
                }
            }
            return;
        }
        if self.stats.connections_open as usize >= self.config.max_connections {
            refuse(socket);
            self.stats.connections_refused += 1;
            self.with_listener(lidx, |ctx, h| h.on_refused(ctx, peer));
            return;
        }
        let decision = self.with_listener(lidx, |ctx, h| Some(h.on_incoming_connection(ctx, peer)));
        match decision {
            Some(Incoming::Accept(handler)) => {
                self.stats.connections_accepted += 1;
                let _ = self.adopt_socket(socket, handler, false);
            }
            Some(Incoming::Refuse) | None => {
                refuse(socket);
                self.stats.connections_refused += 1;
            }
        }
    }

    pub(crate) fn adopt_from_server(
        &mut self,
        socket: Socket,
        peer: SocketAddr,
        make: &crate::server::MakeHandler,
    ) {
        if self.stopping.is_some()
            || self.stats.connections_open as usize >= self.config.max_connections
        {
            refuse(socket);
            self.stats.connections_refused += 1;
            return;
        }
        match make(peer) {
            Some(h) => {
                self.stats.connections_accepted += 1;
                let _ = self.adopt_socket(socket, h, false);
            }
            None => {
                refuse(socket);
                self.stats.connections_refused += 1;
            }
        }
    }

    /// Takes over an established TCP stream (for example one accepted
    /// elsewhere): it becomes a connection of this loop served by
    /// `handler`, which gets `on_connected` first.
    pub fn adopt(&mut self, stream: TcpStream, handler: impl Handler) -> io::Result<ConnId> {
        self.check_open()?;
        if self.stats.connections_open as usize >= self.config.max_connections {
            return Err(limit_error());
        }
        let socket = Socket::from(stream);
        socket.set_nonblocking(true)?;
        self.adopt_socket(socket, Box::new(handler), false)
    }

    /// Connects to `addr` (IPv4 or IPv6, non-blocking, with
    /// [`Config::connect_timeout`]). Returns at once; the handler gets
    /// `on_connected`, or `on_connection_failed` (refused, unreachable,
    /// timed out), then eventually `on_disconnected`. Errors here only for
    /// what fails before any packet is sent (no socket, loop shutting down,
    /// connection limit).
    pub fn connect(&mut self, addr: SocketAddr, handler: impl Handler) -> io::Result<ConnId> {
        self.check_open()?;
        if self.stats.connections_open as usize >= self.config.max_connections {
            return Err(limit_error());
        }
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        let outcome = match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => Ok(true),
            Err(e) if connect_in_progress(&e) => Ok(false),
            Err(e) => Err(e),
        };
        self.update_now();
        let id = self.adopt_socket(socket, Box::new(handler), true)?;
        let c = &mut self.conns[id.idx as usize];
        match outcome {
            Ok(true) => {
                c.flags &= !flag::CONNECTING;
                c.flags |= flag::CONNECT_DUE;
                self.stats.connections_connected += 1;
            }
            Ok(false) => {}
            Err(e) => {
                c.flags &= !flag::CONNECTING;
                c.flags |= flag::FAILED;
                self.failures.push((id.idx, e));
            }
        }
        self.mark_pending(id.idx);
        Ok(id)
    }

    fn adopt_socket(
        &mut self,
        socket: Socket,
        handler: Box<dyn Handler>,
        connecting: bool,
    ) -> io::Result<ConnId> {
        if self.config.nodelay {
            // Best effort: not every socket (e.g. a Unix one adopted by
            // mistake) has the option.
            let _ = socket.set_tcp_nodelay(true);
        }
        if let Some(n) = self.config.send_buffer {
            let _ = socket.set_send_buffer_size(n);
        }
        if let Some(n) = self.config.recv_buffer {
            let _ = socket.set_recv_buffer_size(n);
        }
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        let _ = socket.set_nosigpipe(true);
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        if idx > MAX_INDEX {
            refuse(socket);
            return Err(io::Error::other("too many connections for one loop"));
        }
        let (interest, mode) = match self.rule {
            Rule::Edge => {
                let mut i = Interest::BOTH;
                if self.priority {
                    i |= Interest::PRIORITY;
                }
                (i, Mode::Edge)
            }
            Rule::Oneshot if connecting => (Interest::WRITABLE, Mode::Oneshot),
            Rule::Oneshot => {
                let mut i = Interest::READABLE;
                if self.priority {
                    i |= Interest::PRIORITY;
                }
                (i, Mode::Oneshot)
            }
        };
        let gn = next_gen();
        let registered = self
            .poller
            .add(&socket, idx << 2 | TAG_CONN, interest, mode);
        let mut flags = if connecting {
            flag::CONNECTING
        } else {
            flag::CONNECT_DUE | flag::READ_READY
        };
        if let Err(e) = registered {
            flags = flag::FAILED | flag::NOT_REGISTERED;
            self.failures.push((idx as u32, e));
        }
        entry.insert(Connection {
            handler,
            queue: conn::Queue::new(),
            socket: Some(socket),
            queued: 0,
            gn,
            last_active: self.now_ms as u32,
            timer_at: 0,
            flags,
            armed: conn::interest_bits(interest),
        });
        self.stats.connections_open += 1;
        let idx = idx as u32;
        self.mark_pending(idx);
        Ok(ConnId { idx, gn })
    }

    // ------------------------------------------------------------- UDP set-up

    /// Binds a UDP socket to `addr`, served by `handler`.
    pub fn bind_udp(&mut self, addr: SocketAddr, handler: impl UdpHandler) -> io::Result<UdpId> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            let _ = socket.set_only_v6(true);
        }
        socket.bind(&SockAddr::from(addr))?;
        self.add_udp(std::net::UdpSocket::from(socket), Box::new(handler))
    }

    /// Serves an existing UDP socket (bound, maybe connected, with whatever
    /// options the caller set) with `handler`.
    pub fn adopt_udp(
        &mut self,
        socket: std::net::UdpSocket,
        handler: impl UdpHandler,
    ) -> io::Result<UdpId> {
        self.add_udp(socket, Box::new(handler))
    }

    fn add_udp(
        &mut self,
        socket: std::net::UdpSocket,
        handler: Box<dyn UdpHandler>,
    ) -> io::Result<UdpId> {
        self.check_open()?;
        socket.set_nonblocking(true)?;
        let entry = self.udps.vacant_entry();
        let idx = entry.key();
        if idx > MAX_INDEX {
            return Err(io::Error::other("too many UDP sockets"));
        }
        let (interest, mode) = match self.rule {
            Rule::Edge => (Interest::BOTH, Mode::Edge),
            Rule::Oneshot => (Interest::READABLE, Mode::Oneshot),
        };
        self.poller
            .add(&socket, idx << 2 | TAG_UDP, interest, mode)?;
        let gn = next_gen();
        entry.insert(UdpEntry {
            socket: Some(socket),
            handler,
            queue: VecDeque::new(),
            gn,
            flags: 0,
            armed: conn::interest_bits(interest),
        });
        Ok(UdpId {
            idx: idx as u32,
            gn,
        })
    }

    /// Runs `f` with the UDP socket `id` (from a timer or a posted closure).
    pub fn with_udp<R>(&mut self, id: UdpId, f: impl FnOnce(&mut Udp<'_>) -> R) -> io::Result<R> {
        match self.udps.get(id.idx as usize) {
            Some(u) if u.gn == id.gn && u.flags & crate::udp::flag::CLOSED == 0 => {}
            _ => return Err(not_found("UDP socket")),
        }
        let r = f(&mut Udp::new(self, id.idx));
        self.mark_udp_pending(id.idx);
        self.settle_all();
        Ok(r)
    }

    pub(crate) fn mark_udp_pending(&mut self, idx: u32) {
        if let Some(u) = self.udps.get_mut(idx as usize)
            && u.flags & crate::udp::flag::IN_PENDING == 0
        {
            u.flags |= crate::udp::flag::IN_PENDING;
            self.udp_pending.push(idx);
        }
    }

    // ------------------------------------------------------------- by id

    /// Runs `f` with connection `id`'s context, as if from its handler
    /// (from a timer, a posted closure, or another connection's handler).
    pub fn with_conn<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Conn<'_>) -> R,
    ) -> io::Result<R> {
        self.live(id)?;
        let r = f(&mut Conn::new(self, id.idx, id.gn));
        self.mark_pending(id.idx);
        Ok(r)
    }

    pub(crate) fn live(&self, id: ConnId) -> io::Result<()> {
        match self.conns.get(id.idx as usize) {
            Some(c) if c.gn == id.gn && c.flags & flag::DEAD_DONE == 0 => Ok(()),
            _ => Err(not_found("connection")),
        }
    }

    /// Writes to connection `id` (see [`Conn::write`]).
    pub fn write(&mut self, id: ConnId, data: Bytes) -> Result<(), WriteError> {
        if self.live(id).is_err() {
            self.stats.writes_refused += 1;
            return Err(WriteError::new(
                io::ErrorKind::NotFound,
                "no such connection",
                data,
            ));
        }
        let r = Conn::new(self, id.idx, id.gn).write(data);
        self.mark_pending(id.idx);
        r
    }

    /// Closes connection `id` gracefully (see [`Conn::close`]).
    pub fn close(&mut self, id: ConnId) -> io::Result<()> {
        self.with_conn(id, |c| c.close())
    }

    /// Resets connection `id` (see [`Conn::abort`]).
    pub fn abort(&mut self, id: ConnId) -> io::Result<()> {
        self.with_conn(id, |c| c.abort())
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.stats.connections_open as usize
    }

    pub(crate) fn mark_pending(&mut self, idx: u32) {
        if let Some(c) = self.conns.get_mut(idx as usize)
            && c.flags & flag::IN_PENDING == 0
        {
            c.flags |= flag::IN_PENDING;
            self.pending.push(idx);
        }
    }

    /// Calls the connection's handler with its context. The handler is
    /// taken out of the table for the call (a zero-sized placeholder takes
    /// its place: no allocation), so it may use the whole loop.
    #[inline]
    pub(crate) fn call<R>(
        &mut self,
        idx: u32,
        f: impl FnOnce(&mut dyn Handler, &mut Conn<'_>) -> R,
    ) -> R {
        let c = &mut self.conns[idx as usize];
        let gn = c.gn;
        let mut h = std::mem::replace(&mut c.handler, Box::new(conn::Placeholder));
        let r = f(&mut *h, &mut Conn::new(self, idx, gn));
        self.conns[idx as usize].handler = h;
        r
    }

    pub(crate) fn free_slot(&mut self, idx: u32) {
        self.free_list.push(idx);
    }
}

pub(crate) fn not_found(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no such {what}"))
}

fn limit_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::QuotaExceeded,
        "the loop is at its connection limit",
    )
}

fn ms_ceil(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if Duration::from_millis(ms as u64) < d {
        ms + 1
    } else {
        ms
    };
    ms.min(u64::MAX as u128 / 2) as u64
}

pub(crate) fn refuse(socket: Socket) {
    // Linger 0: the peer gets a reset, the server keeps no TIME_WAIT.
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

fn connect_in_progress(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::WouldBlock {
        return true;
    }
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    false
}

fn accept(listener: &Socket) -> io::Result<(Socket, SocketAddr)> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let (socket, addr) = listener.accept4(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)?;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let (socket, addr) = {
        let (s, a) = listener.accept()?;
        s.set_nonblocking(true)?;
        (s, a)
    };
    let peer = addr
        .as_socket()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok((socket, peer))
}

/// A listening socket: SO_REUSEADDR on Unix (so a restarted server binds
/// while old connections sit in TIME_WAIT); nothing on Windows, where
/// SO_REUSEADDR would let another socket steal the port and the default
/// already allows rebinding over TIME_WAIT. `reuse_port`: Linux
/// SO_REUSEPORT, for several loops behind one address.
pub(crate) fn listen_socket(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if reuse_port {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        socket.set_reuse_port(true)?;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_REUSEPORT balancing is only used on Linux",
        ));
    }
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
