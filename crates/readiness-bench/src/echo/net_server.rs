//! The echo server on the project's net layer (`readiness-net`): one
//! `EventLoop` on this thread serving the listener with the layer's own
//! [`Echo`] handler. The loop sets `TCP_NODELAY` on every accepted socket
//! (`Config::nodelay`, on by default) and takes the listener as
//! [`listen`](super::listen) made it (`SO_REUSEADDR`, backlog
//! [`BACKLOG`](super::BACKLOG), non-blocking). It registers each connection
//! once, edge-triggered for both directions where the backend has edges
//! (epoll, kqueue), oneshot re-armed elsewhere; a read shorter than the
//! buffer counts as drained. Reads go into the loop's pooled read buffer
//! (one for all connections, 256 KiB by default) and are echoed without a
//! copy; what a write does not take stays in the connection's write queue
//! and is flushed when the socket is writable (`Echo` pauses reading while
//! the queue is at its high-water mark).

use std::io;
use std::net::TcpListener;

use readiness::Backend;
use readiness_net::{Config, Echo, EventLoop, listener_fn};

pub(super) fn run(listener: TcpListener, backend: Option<Backend>) -> io::Result<()> {
    let mut config = Config::new().nodelay(true);
    if let Some(b) = backend {
        config = config.backend(b);
    }
    let mut el = EventLoop::with_config(config)?;
    tracing::info!(backend = %el.backend(), "net echo server");
    el.listen_on(listener, listener_fn(|_peer| Some(Echo::new())))?;
    el.run()
}
