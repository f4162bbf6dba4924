//! Per-loop counters.

use std::ops::AddAssign;

/// Counters of one event loop. Read them on the loop with
/// [`LoopCtx::stats`](crate::LoopCtx::stats), from anywhere with
/// [`LoopHandle::stats`](crate::LoopHandle::stats) (a snapshot the loop
/// publishes once per turn), or summed over a [`Server`](crate::Server).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// TCP connections open now (accepted and outbound).
    pub connections_open: u64,
    /// Connections accepted from listeners, in all.
    pub connections_accepted: u64,
    /// Incoming connections refused (over the limit or by the listener
    /// handler), in all.
    pub connections_refused: u64,
    /// Outbound connects that completed, in all.
    pub connections_connected: u64,
    /// Outbound connects that failed or timed out, in all.
    pub connect_failures: u64,
    /// Idle timeouts that fired, in all.
    pub timeouts: u64,
    /// Graceful closes that made no progress for the close linger and were
    /// reset, in all.
    pub close_timeouts: u64,
    /// TCP bytes read.
    pub bytes_in: u64,
    /// TCP bytes handed to the kernel.
    pub bytes_out: u64,
    /// TCP bytes queued in user space now, all connections together.
    pub bytes_queued: u64,
    /// The most TCP bytes ever queued at once.
    pub bytes_queued_peak: u64,
    /// Writes refused (high-water mark, loop cap, connection gone).
    pub writes_refused: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams handed to the kernel.
    pub datagrams_out: u64,
    /// Datagrams queued in user space now.
    pub datagrams_queued: u64,
    /// Datagrams dropped by the queue policy, in all.
    pub datagrams_dropped: u64,
    /// Datagram sends refused by the queue policy, in all.
    pub datagrams_refused: u64,
}

impl AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.connections_open += o.connections_open;
        self.connections_accepted += o.connections_accepted;
        self.connections_refused += o.connections_refused;
        self.connections_connected += o.connections_connected;
        self.connect_failures += o.connect_failures;
        self.timeouts += o.timeouts;
        self.close_timeouts += o.close_timeouts;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.bytes_queued += o.bytes_queued;
        self.bytes_queued_peak += o.bytes_queued_peak;
        self.writes_refused += o.writes_refused;
        self.datagrams_in += o.datagrams_in;
        self.datagrams_out += o.datagrams_out;
        self.datagrams_queued += o.datagrams_queued;
        self.datagrams_dropped += o.datagrams_dropped;
        self.datagrams_refused += o.datagrams_refused;
    }
}
