//! Limits and settings of an event loop.

use std::time::Duration;

use readiness::Backend;

/// What a UDP socket does with a datagram sent while its queue is full
/// ([`Config::udp_max_queued`] datagrams waiting for the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UdpQueuePolicy {
    /// The send fails with an error that gives the datagram back.
    #[default]
    Refuse,
    /// The new datagram is dropped (the send returns `Ok`), counted in
    /// [`Stats::datagrams_dropped`](crate::Stats::datagrams_dropped).
    DropNewest,
    /// The oldest queued datagram is dropped to make room, counted in
    /// [`Stats::datagrams_dropped`](crate::Stats::datagrams_dropped).
    DropOldest,
}

/// Settings of an [`EventLoop`](crate::EventLoop): backend, limits, timeouts.
///
/// Build with the setters: `Config::new().max_connections(1000).idle_timeout(Some(d))`.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) backend: Option<Backend>,
    pub(crate) max_connections: usize,
    pub(crate) high_water: usize,
    pub(crate) low_water: usize,
    pub(crate) loop_max_queued: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_linger: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) udp_max_queued: usize,
    pub(crate) udp_policy: UdpQueuePolicy,
    pub(crate) read_buffer: usize,
    pub(crate) nodelay: bool,
    pub(crate) send_buffer: Option<usize>,
    pub(crate) recv_buffer: Option<usize>,
    pub(crate) events_capacity: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backend: None,
            max_connections: 100_000,
            high_water: 1 << 20,
            low_water: 1 << 18,
            loop_max_queued: 256 << 20,
            idle_timeout: None,
            connect_timeout: Duration::from_secs(30),
            close_linger: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            udp_max_queued: 1024,
            udp_policy: UdpQueuePolicy::Refuse,
            read_buffer: 256 << 10,
            nodelay: true,
            send_buffer: None,
            recv_buffer: None,
            events_capacity: 1024,
        }
    }
}

impl Config {
    /// The defaults: the OS's default backend, 100,000 connections, a 1 MiB
    /// high-water and 256 KiB low-water mark per connection, 256 MiB queued
    /// per loop, no idle timeout, a 30 s connect timeout, 5 s close linger and
    /// shutdown deadline, 1,024 queued datagrams per UDP socket (refused past
    /// that), a 256 KiB shared read buffer, `TCP_NODELAY` on.
    pub fn new() -> Config {
        Config::default()
    }

    /// The poller backend (default: [`Backend::default_for_os`]).
    pub fn backend(mut self, backend: Backend) -> Config {
        self.backend = Some(backend);
        self
    }

    /// Connections a loop holds at most (accepted and outbound together).
    /// Incoming connections above it are refused (reset) and counted in
    /// [`Stats::connections_refused`](crate::Stats::connections_refused);
    /// `connect` above it fails.
    pub fn max_connections(mut self, n: usize) -> Config {
        self.max_connections = n;
        self
    }

    /// Bytes a connection may hold queued for the kernel (default 1 MiB; at
    /// least 1, at most 2 GiB). A
    /// write that would take the queue past it is refused and the data given
    /// back.
    pub fn high_water(mut self, bytes: usize) -> Config {
        let bytes = bytes.clamp(1, u32::MAX as usize / 2);
        self.high_water = bytes;
        self.low_water = self.low_water.min(bytes);
        self
    }

    /// When a connection's queue falls to or below this many bytes after it
    /// was above it (or after a refused write), the handler's `on_drained`
    /// runs (default 256 KiB; clamped to the high-water mark).
    pub fn low_water(mut self, bytes: usize) -> Config {
        self.low_water = bytes.min(self.high_water);
        self
    }

    /// Bytes all connections of a loop may hold queued together (default
    /// 256 MiB).
    pub fn loop_max_queued(mut self, bytes: usize) -> Config {
        self.loop_max_queued = bytes;
        self
    }

    /// A connection that reads nothing for this long gets `on_timeout`
    /// (default: none). Re-armed by every read.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Config {
        self.idle_timeout = timeout;
        self
    }

    /// An outbound connect that has not completed after this long fails with
    /// [`ErrorKind::TimedOut`](std::io::ErrorKind::TimedOut) (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Config {
        self.connect_timeout = timeout;
        self
    }

    /// After a graceful close has flushed the queue and sent FIN, how long
    /// the loop waits for the peer's FIN (discarding what it still sends)
    /// before it resets the connection (default 5 s).
    pub fn close_linger(mut self, timeout: Duration) -> Config {
        self.close_linger = timeout;
        self
    }

    /// How long a graceful shutdown of the loop flushes queued writes before
    /// it resets what is left (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Config {
        self.shutdown_timeout = timeout;
        self
    }

    /// Datagrams a UDP socket may hold queued for the kernel (default 1,024).
    pub fn udp_max_queued(mut self, datagrams: usize) -> Config {
        self.udp_max_queued = datagrams;
        self
    }

    /// What happens to a datagram sent while the UDP queue is full.
    pub fn udp_policy(mut self, policy: UdpQueuePolicy) -> Config {
        self.udp_policy = policy;
        self
    }

    /// Size of the loop's shared read buffer (default 256 KiB, at least
    /// 128 KiB so that a whole datagram always fits).
    pub fn read_buffer(mut self, bytes: usize) -> Config {
        self.read_buffer = bytes.max(128 << 10);
        self
    }

    /// Whether connections get `TCP_NODELAY` (default true).
    pub fn nodelay(mut self, on: bool) -> Config {
        self.nodelay = on;
        self
    }

    /// `SO_SNDBUF` and `SO_RCVBUF` for every connection (default: the OS's,
    /// which on Linux autotunes).
    pub fn socket_buffers(mut self, send: Option<usize>, recv: Option<usize>) -> Config {
        self.send_buffer = send;
        self.recv_buffer = recv;
        self
    }

    /// Events one wait returns at most (default 1,024).
    pub fn events_capacity(mut self, n: usize) -> Config {
        self.events_capacity = n.max(1);
        self
    }
}
