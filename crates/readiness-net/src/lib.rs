#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

mod config;
mod conn;
mod echo;
mod error;
mod event_loop;
mod handler;
mod server;
mod stats;
// The only module with `unsafe`: receiving into uninitialized pooled memory
// and reading the urgent byte (see its docs).
#[allow(unsafe_code)]
mod sys;
#[doc(hidden)]
pub mod timer;
mod udp;

pub use bytes::{Bytes, BytesMut};
pub use config::{Config, UdpQueuePolicy};
pub use conn::Conn;
pub use echo::Echo;
pub use error::WriteError;
pub use event_loop::{ConnId, EventLoop, ListenerId, LoopCtx, LoopHandle, TimerId, UdpId};
pub use handler::{Handler, Incoming, ListenerFn, ListenerHandler, UdpHandler, listener_fn};
pub use readiness::Backend;
pub use server::{Balance, Server, ServerBuilder};
pub use socket2;
pub use stats::Stats;
pub use udp::Udp;

/// Facts about the per-connection structures, for the size table in
/// `docs/BENCHMARKS.md` (printed and bounded by `tests/sizes.rs`).
#[doc(hidden)]
pub mod sizes {
    /// `(name, size_of)` of each structure a connection costs.
    pub fn table() -> Vec<(&'static str, usize)> {
        use std::mem::size_of;
        vec![
            ("slab entry of a connection", size_of::<SlabEntry>()),
            (
                "Connection (the loop's per-connection state)",
                size_of::<crate::conn::Connection>(),
            ),
            (
                "timer heap entry (one per connection with a timeout)",
                size_of::<crate::timer::Entry>(),
            ),
            ("Box<dyn Handler> of a zero-sized handler (heap)", 0),
            ("Echo handler (heap, boxed)", size_of::<crate::Echo>()),
            ("ConnId", size_of::<crate::ConnId>()),
        ]
    }

    // What slab stores per slot: its entry enum around the value.
    #[allow(dead_code)]
    enum SlabEntryShape {
        Vacant(usize),
        Occupied(crate::conn::Connection),
    }
    type SlabEntry = SlabEntryShape;
}
