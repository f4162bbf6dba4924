//! UDP sockets: the per-socket state, the handler's context, the queue of
//! datagrams waiting for the kernel and its policy.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};

use bytes::Bytes;
use readiness::{Event, Interest, Mode};
use socket2::SockRef;

use crate::event_loop::{LoopCtx, MIN_UDP_ROOM, Rule, TAG_UDP, UdpId};
use crate::{UdpHandler, UdpQueuePolicy, WriteError};

/// UDP socket state bits.
pub(crate) mod flag {
    pub const CLOSING: u32 = 1;
    pub const CLOSED: u32 = 1 << 1;
    pub const SIM_FULL: u32 = 1 << 2;
    pub const IN_PENDING: u32 = 1 << 3;
    pub const DRAIN_DUE: u32 = 1 << 4;
    pub const READ_READY: u32 = 1 << 5;
    pub const IN_READY: u32 = 1 << 6;
}

const DATAGRAM_BUDGET: u32 = 64;

pub(crate) struct UdpEntry {
    pub(crate) socket: Option<UdpSocket>,
    pub(crate) handler: Box<dyn UdpHandler>,
    /// Datagrams waiting for the kernel: data and destination (`None`: the
    /// connected peer).
    pub(crate) queue: VecDeque<(Bytes, Option<SocketAddr>)>,
    pub(crate) gn: u32,
    pub(crate) flags: u32,
    pub(crate) armed: u8,
}

struct Placeholder;
impl UdpHandler for Placeholder {
    fn on_datagram(&mut self, _: &mut Udp<'_>, _: SocketAddr, _: Bytes) {}
}

/// The context of one UDP socket, given to every [`UdpHandler`] call.
pub struct Udp<'a> {
    ctx: &'a mut LoopCtx,
    idx: u32,
}

impl std::fmt::Debug for Udp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Udp").field("id", &self.id()).finish()
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the UDP socket is closed")
}

impl<'a> Udp<'a> {
    pub(crate) fn new(ctx: &'a mut LoopCtx, idx: u32) -> Udp<'a> {
        Udp { ctx, idx }
    }

    fn e(&mut self) -> &mut UdpEntry {
        &mut self.ctx.udps[self.idx as usize]
    }

    fn sock(&self) -> io::Result<&UdpSocket> {
        self.ctx.udps[self.idx as usize]
            .socket
            .as_ref()
            .ok_or_else(closed)
    }

    /// This socket's id.
    pub fn id(&self) -> UdpId {
        UdpId {
            idx: self.idx,
            gn: self.ctx.udps[self.idx as usize].gn,
        }
    }

    /// The rest of the loop.
    pub fn event_loop(&mut self) -> &mut LoopCtx {
        self.ctx
    }

    /// The socket, for options: multicast membership and TTL, broadcast,
    /// buffer sizes (`socket2::SockRef`).
    pub fn socket(&self) -> io::Result<SockRef<'_>> {
        self.sock().map(SockRef::from)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock()?.local_addr()
    }

    /// Connects the socket to `peer`: [`send`](Self::send) goes there and
    /// only its datagrams are received.
    pub fn connect(&mut self, peer: SocketAddr) -> io::Result<()> {
        self.sock()?.connect(peer)
    }

    /// Datagrams queued for the kernel now.
    pub fn queued(&self) -> usize {
        self.ctx.udps[self.idx as usize].queue.len()
    }

    /// Sends a datagram to `to`. If the kernel cannot take it now it is
    /// queued; with the queue full, the [`UdpQueuePolicy`] decides (refused:
    /// the data comes back in the error). Other send errors (too large,
    /// unreachable) also give the data back, with the OS error's kind.
    pub fn send_to(&mut self, data: Bytes, to: SocketAddr) -> Result<(), WriteError> {
        self.send_inner(data, Some(to))
    }

    /// Sends a datagram to the connected peer (see [`connect`](Self::connect)).
    pub fn send(&mut self, data: Bytes) -> Result<(), WriteError> {
        self.send_inner(data, None)
    }

    fn send_inner(&mut self, data: Bytes, to: Option<SocketAddr>) -> Result<(), WriteError> {
        let max = self.ctx.config.udp_max_queued;
        let policy = self.ctx.config.udp_policy;
        let idx = self.idx;
        let ctx = &mut *self.ctx;
        let u = &mut ctx.udps[idx as usize];
        if u.flags & (flag::CLOSING | flag::CLOSED) != 0 {
            return Err(WriteError::new(
                io::ErrorKind::NotConnected,
                "the UDP socket is closed",
                data,
            ));
        }
        let Some(socket) = u.socket.as_ref() else {
            return Err(WriteError::new(
                io::ErrorKind::NotConnected,
                "the UDP socket is closed",
                data,
            ));
        };
        if u.queue.is_empty() && u.flags & flag::SIM_FULL == 0 {
            loop {
                let r = match to {
                    Some(to) => socket.send_to(&data, to),
                    None => socket.send(&data),
                };
                match r {
                    Ok(_) => {
                        ctx.stats.datagrams_out += 1;
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(WriteError::new(e.kind(), "datagram send failed", data)),
                }
            }
        }
        if u.queue.len() >= max {
            match policy {
                UdpQueuePolicy::Refuse => {
                    ctx.stats.datagrams_refused += 1;
                    return Err(WriteError::new(
                        io::ErrorKind::WouldBlock,
                        "the UDP socket's queue is full",
                        data,
                    ));
                }
                UdpQueuePolicy::DropNewest => {
                    ctx.stats.datagrams_dropped += 1;
                    return Ok(());
                }
                UdpQueuePolicy::DropOldest => {
                    ctx.stats.datagrams_dropped += 1;
                    if u.queue.pop_front().is_some() {
                        ctx.stats.datagrams_queued -= 1;
                    }
                    if max == 0 {
                        return Ok(());
                    }
                }
            }
        }
        u.queue.push_back((data, to));
        ctx.stats.datagrams_queued += 1;
        ctx.mark_udp_pending(idx);
        Ok(())
    }

    /// Closes the socket: queued datagrams are dropped (counted), the
    /// handler gets `on_closed`.
    pub fn close(&mut self) {
        self.e().flags |= flag::CLOSING;
        self.ctx.mark_udp_pending(self.idx);
    }

    /// Test hook: while `on`, the loop behaves as if the kernel had no room
    /// for datagrams (it makes no send call and queues instead), so that the
    /// queue policies can be tested: a UDP send on loopback never blocks.
    #[doc(hidden)]
    pub fn simulate_kernel_full(&mut self, on: bool) {
        let u = self.e();
        if on {
            u.flags |= flag::SIM_FULL;
        } else {
            u.flags &= !flag::SIM_FULL;
        }
        self.ctx.mark_udp_pending(self.idx);
    }
}

impl LoopCtx {
    fn udp_call(&mut self, idx: u32, f: impl FnOnce(&mut dyn UdpHandler, &mut Udp<'_>)) {
        let u = &mut self.udps[idx as usize];
        let mut h = std::mem::replace(&mut u.handler, Box::new(Placeholder));
        f(&mut *h, &mut Udp::new(self, idx));
        self.udps[idx as usize].handler = h;
    }

    pub(crate) fn udp_event(&mut self, idx: u32, ev: Event) {
        let rule = self.rule;
        let Some(u) = self.udps.get_mut(idx as usize) else {
            return;
        };
        if u.flags & (flag::CLOSING | flag::CLOSED) != 0 {
            return;
        }
        if rule == Rule::Oneshot {
            u.armed = 0;
        }
        if ev.is_readable() || ev.is_error() {
            u.flags |= flag::READ_READY;
            self.udp_read(idx);
        }
        if ev.is_writable() {
            self.udp_flush(idx);
        }
        self.settle_udp(idx);
    }

    pub(crate) fn udp_read(&mut self, idx: u32) {
        for _ in 0..DATAGRAM_BUDGET {
            let u = &mut self.udps[idx as usize];
            if u.flags & (flag::CLOSING | flag::CLOSED) != 0 || u.flags & flag::READ_READY == 0 {
                return;
            }
            let Some(socket) = u.socket.as_ref() else {
                return;
            };
            self.pool.prepare(MIN_UDP_ROOM);
            match crate::sys::recv_datagram(socket, &mut self.pool.buf) {
                Ok((_, from)) => {
                    self.stats.datagrams_in += 1;
                    let data = self.pool.take();
                    self.udp_call(idx, |h, udp| h.on_datagram(udp, from, data));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    u.flags &= !flag::READ_READY;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.udp_call(idx, |h, udp| h.on_error(udp, e)),
            }
        }
    }

    fn udp_flush(&mut self, idx: u32) {
        let u = &mut self.udps[idx as usize];
        let Some(socket) = u.socket.as_ref() else {
            return;
        };
        let had = !u.queue.is_empty();
        let mut failure = None;
        while let Some((data, to)) = u.queue.front() {
            if u.flags & flag::SIM_FULL != 0 {
                break;
            }
            let r = match to {
                Some(to) => socket.send_to(data, *to),
                None => socket.send(data),
            };
            match r {
                Ok(_) => {
                    self.stats.datagrams_out += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.datagrams_dropped += 1;
                    failure = Some(e);
                }
            }
            u.queue.pop_front();
            self.stats.datagrams_queued -= 1;
            if failure.is_some() {
                break;
            }
        }
        if had && u.queue.is_empty() {
            u.flags |= flag::DRAIN_DUE;
        }
        if let Some(e) = failure {
            self.udp_call(idx, |h, udp| h.on_error(udp, e));
            self.mark_udp_pending(idx);
        }
    }

    pub(crate) fn settle_udp(&mut self, idx: u32) {
        loop {
            let Some(u) = self.udps.get_mut(idx as usize) else {
                return;
            };
            u.flags &= !flag::IN_PENDING;
            let f = u.flags;
            if f & flag::CLOSED != 0 {
                return;
            }
            if f & flag::CLOSING != 0 {
                u.flags |= flag::CLOSED;
                let dropped = u.queue.len() as u64;
                u.queue.clear();
                self.stats.datagrams_queued -= dropped;
                self.stats.datagrams_dropped += dropped;
                if let Some(s) = u.socket.take()
                    && let Err(e) = self.poller.delete(&s)
                {
                    tracing::warn!(error = %e, "deregistering a UDP socket failed");
                }
                self.udp_call(idx, |h, udp| h.on_closed(udp));
                self.udp_free.push(idx);
                return;
            }
            if !u.queue.is_empty() && f & flag::SIM_FULL == 0 {
                self.udp_flush(idx);
                if self.udps[idx as usize].flags & flag::DRAIN_DUE != 0 {
                    continue;
                }
            }
            let u = &mut self.udps[idx as usize];
            if u.flags & flag::DRAIN_DUE != 0 {
                u.flags &= !flag::DRAIN_DUE;
                self.udp_call(idx, |h, udp| h.on_drained(udp));
                continue;
            }
            break;
        }
        let rule = self.rule;
        let u = &mut self.udps[idx as usize];
        match rule {
            Rule::Oneshot => {
                let mut want = Interest::READABLE;
                if !u.queue.is_empty() && u.flags & flag::SIM_FULL == 0 {
                    want |= Interest::WRITABLE;
                }
                let bits = crate::conn::interest_bits(want);
                if bits != u.armed
                    && let Some(s) = u.socket.as_ref()
                {
                    let key = (idx as usize) << 2 | TAG_UDP;
                    match self.poller.modify(s, key, want, Mode::Oneshot) {
                        Ok(()) => u.armed = bits,
                        Err(e) => tracing::error!(error = %e, "re-arming a UDP socket failed"),
                    }
                }
            }
            Rule::Edge => {
                if u.flags & flag::READ_READY != 0 && u.flags & flag::IN_READY == 0 {
                    u.flags |= flag::IN_READY;
                    self.udp_ready.push(idx);
                }
            }
        }
    }
}
