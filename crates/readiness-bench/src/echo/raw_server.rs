//! The echo server on the bare `readiness::Poller`: edge-triggered where the
//! backend has edges (epoll, kqueue), registered once per connection for
//! both directions; oneshot elsewhere (poll(2), Windows), re-armed after each
//! event for writing while a write is pending and for reading otherwise.

use std::io;
use std::net::{TcpListener, TcpStream};

use readiness::{Backend, Events, Interest, MAX_KEY, Mode, Poller};
use slab::Slab;

use super::{EchoConn, READ_BUF, ReadRule, Status, nodelay};

const LISTENER: usize = MAX_KEY;

pub(super) fn run(listener: TcpListener, backend: Option<Backend>) -> io::Result<()> {
    let poller = match backend {
        Some(b) => Poller::with_backend(b)?,
        None => Poller::new()?,
    };
    let edge = poller.supports_edge();
    let (mode, rule) = if edge {
        (Mode::Edge, ReadRule::UntilShort)
    } else {
        (Mode::Oneshot, ReadRule::Once)
    };
    tracing::info!(backend = %poller.backend(), ?mode, "raw echo server");
    poller.add(&listener, LISTENER, Interest::READABLE, mode)?;
    let mut conns: Slab<(TcpStream, EchoConn)> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        poller.wait(&mut events, None)?;
        for event in &events {
            if event.key() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(true)?;
                            nodelay(&stream);
                            let entry = conns.vacant_entry();
                            let interest = if edge {
                                Interest::BOTH
                            } else {
                                Interest::READABLE
                            };
                            poller.add(&stream, entry.key(), interest, mode)?;
                            entry.insert((stream, EchoConn::new()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!("accept: {e}");
                            break;
                        }
                    }
                }
                if !edge {
                    poller.modify(&listener, LISTENER, Interest::READABLE, mode)?;
                }
                continue;
            }
            let key = event.key();
            let Some((stream, conn)) = conns.get_mut(key) else {
                continue;
            };
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let writable = event.is_writable() || event.is_error();
            match conn.step(stream, &mut buf, readable, writable, rule) {
                Status::Open if !edge => {
                    let interest = if conn.wants_write() {
                        Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    poller.modify(stream, key, interest, mode)?;
                }
                Status::Open => {}
                Status::Closed => {
                    let (stream, _) = conns.remove(key);
                    let _ = poller.delete(&stream);
                }
            }
        }
    }
}
