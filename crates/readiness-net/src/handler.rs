//! The handler traits: what the loop calls, on its own thread.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::{Conn, LoopCtx, Udp, WriteError};

/// Callbacks of one TCP connection. Every method has a default; the value
/// itself is the connection's user data (the loop owns it, boxed, for the
/// connection's life: no locks, no global maps).
///
/// The loop calls exactly one method at a time, on its thread, and never
/// re-enters a handler from inside one of its own calls: operations that
/// change the connection's state (close, abort, a write that hits a reset)
/// take effect when the current call returns.
///
/// Order: `on_connected` (or `on_connection_failed` for an outbound connect
/// that did not complete), then any number of data, writable, drained, OOB,
/// client-close and timeout calls, then at most one `on_connection_reset`,
/// and **`on_disconnected` exactly once, always last**, however the
/// connection ended.
#[allow(unused_variables)]
pub trait Handler: 'static {
    /// The connection is established (accepted, or the outbound connect
    /// completed).
    fn on_connected(&mut self, conn: &mut Conn<'_>) {}

    /// The outbound connect failed (refused, unreachable, or
    /// [`TimedOut`](io::ErrorKind::TimedOut) after
    /// [`Config::connect_timeout`](crate::Config::connect_timeout)).
    /// `on_disconnected` follows.
    fn on_connection_failed(&mut self, conn: &mut Conn<'_>, error: io::Error) {}

    /// Data arrived. The buffer comes from the loop's pool: keep it, send it
    /// to another thread or write it to many connections without copying;
    /// the memory returns to the pool when the last clone is dropped.
    fn on_data(&mut self, conn: &mut Conn<'_>, data: Bytes) {}

    /// The socket has data (or end of stream). The default reads into pooled
    /// buffers with [`Conn::read`] and calls [`on_data`](Self::on_data) for
    /// each. Override to read yourself ([`Conn::read`],
    /// [`Conn::read_into`]); whatever you leave unread is offered again on a
    /// later turn (never lost, also on edge-triggered backends).
    fn on_readable(&mut self, conn: &mut Conn<'_>) {
        while let Some(data) = conn.read() {
            self.on_data(conn, data);
        }
    }

    /// Out-of-band (TCP urgent) data arrived. The default reads and discards
    /// it ([`Conn::read_oob`]). Only on backends with priority support
    /// (epoll, poll(2), Windows AFD; not kqueue).
    fn on_readable_oob(&mut self, conn: &mut Conn<'_>) {
        let _ = conn.read_oob();
    }

    /// The socket is writable, after [`Conn::request_writable`] asked for it
    /// (once per request), for handlers that write to the socket themselves.
    fn on_writable(&mut self, conn: &mut Conn<'_>) {}

    /// The write queue fell to or below the low-water mark after it was
    /// above it or after a write was refused: write more.
    fn on_drained(&mut self, conn: &mut Conn<'_>) {}

    /// The peer shut down its sending side (FIN): nothing more will be read,
    /// the connection stays writable. The default closes gracefully (queued
    /// data is sent first).
    fn on_client_close(&mut self, conn: &mut Conn<'_>) {
        conn.close();
    }

    /// The connection was reset (or failed with another error after it was
    /// established). `on_disconnected` follows.
    fn on_connection_reset(&mut self, conn: &mut Conn<'_>) {}

    /// Nothing was read for the idle timeout. The default closes gracefully;
    /// a handler that keeps the connection open gets another call after the
    /// next idle period.
    fn on_timeout(&mut self, conn: &mut Conn<'_>) {
        conn.close();
    }

    /// A write posted with [`LoopHandle::write`](crate::LoopHandle::write)
    /// was refused on the loop; the data is given back here. The default
    /// drops it with a warning (it is counted in
    /// [`Stats::writes_refused`](crate::Stats::writes_refused) either way).
    fn on_write_refused(&mut self, conn: &mut Conn<'_>, error: WriteError) {
        tracing::warn!(id = ?conn.id(), %error, "posted write refused");
    }

    /// The connection is gone: called exactly once, always last. The socket
    /// is closed already; operations on `conn` fail with `NotConnected`.
    fn on_disconnected(&mut self, conn: &mut Conn<'_>) {}
}

/// What a [`ListenerHandler`] decides about an incoming connection.
pub enum Incoming {
    /// Accept it; this handler serves it.
    Accept(Box<dyn Handler>),
    /// Refuse it: the connection is reset and counted as refused.
    Refuse,
}

impl Incoming {
    /// Accept with `handler`.
    pub fn accept(handler: impl Handler) -> Incoming {
        Incoming::Accept(Box::new(handler))
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Incoming::Accept(_) => "Accept(..)",
            Incoming::Refuse => "Refuse",
        })
    }
}

/// Callbacks of a listening socket.
#[allow(unused_variables)]
pub trait ListenerHandler: 'static {
    /// A connection from `peer` was accepted by the kernel: serve it with a
    /// handler or refuse it. Not called for connections above
    /// [`Config::max_connections`](crate::Config::max_connections): those
    /// are refused first (see [`on_refused`](Self::on_refused)).
    fn on_incoming_connection(&mut self, ctx: &mut LoopCtx, peer: SocketAddr) -> Incoming;

    /// A connection from `peer` was refused automatically because the loop
    /// is at its connection limit. It is counted in
    /// [`Stats::connections_refused`](crate::Stats::connections_refused).
    fn on_refused(&mut self, ctx: &mut LoopCtx, peer: SocketAddr) {}

    /// `accept` failed with something other than "nothing to accept" (for
    /// example out of descriptors). The listener pauses for 50 ms, then
    /// accepts again. The default logs a warning.
    fn on_accept_error(&mut self, ctx: &mut LoopCtx, error: io::Error) {
        tracing::warn!(%error, "accept failed; pausing the listener for 50 ms");
    }

    /// The listener was closed (by [`LoopCtx::close_listener`] or the loop's
    /// shutdown). Called exactly once, last.
    fn on_closed(&mut self, ctx: &mut LoopCtx) {}
}

/// A [`ListenerHandler`] made of a closure that picks a handler for each
/// peer (`None` refuses): see [`listener_fn`].
pub struct ListenerFn<F>(F);

/// A listener handler from a closure: `listener_fn(|_peer| Some(Echo::new()))`.
pub fn listener_fn<F, H>(f: F) -> ListenerFn<F>
where
    F: FnMut(SocketAddr) -> Option<H> + 'static,
    H: Handler,
{
    ListenerFn(f)
}

impl<F, H> ListenerHandler for ListenerFn<F>
where
    F: FnMut(SocketAddr) -> Option<H> + 'static,
    H: Handler,
{
    fn on_incoming_connection(&mut self, _ctx: &mut LoopCtx, peer: SocketAddr) -> Incoming {
        match (self.0)(peer) {
            Some(h) => Incoming::accept(h),
            None => Incoming::Refuse,
        }
    }
}

impl<F> std::fmt::Debug for ListenerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerFn")
    }
}

/// Callbacks of a UDP socket. Every method has a default except
/// `on_datagram`.
#[allow(unused_variables)]
pub trait UdpHandler: 'static {
    /// A datagram arrived from `from`, in a pooled buffer (as
    /// [`Handler::on_data`]).
    fn on_datagram(&mut self, udp: &mut Udp<'_>, from: SocketAddr, data: Bytes);

    /// A receive reported an error (for example an ICMP "port unreachable"
    /// on a connected socket, as `ConnectionRefused`). The socket stays open.
    fn on_error(&mut self, udp: &mut Udp<'_>, error: io::Error) {}

    /// The queue of datagrams waiting for the kernel emptied.
    fn on_drained(&mut self, udp: &mut Udp<'_>) {}

    /// The socket was closed. Called exactly once, last.
    fn on_closed(&mut self, udp: &mut Udp<'_>) {}
}
