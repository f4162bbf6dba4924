//! The polling 3 echo server: edge-triggered where polling supports edges
//! (epoll, kqueue), registered once per connection for both directions;
//! oneshot elsewhere, re-armed after each event (polling's default mode).
//! Registration goes through `crate::sys::polling_reg`, which owns the
//! socket so it is deleted from the poller before it is closed (the safety
//! condition of polling's `unsafe fn add`).

use std::io;
use std::net::TcpListener;

use polling::{Event, Events, PollMode, Poller};
use slab::Slab;

use super::{EchoConn, READ_BUF, ReadRule, Status, nodelay};
use crate::sys::polling_reg::Registered;

const LISTENER: usize = usize::MAX - 1;

pub(super) fn run(listener: TcpListener) -> io::Result<()> {
    let poller = Poller::new()?;
    let edge = poller.supports_edge();
    let (mode, rule) = if edge {
        (PollMode::Edge, ReadRule::UntilShort)
    } else {
        (PollMode::Oneshot, ReadRule::Once)
    };
    let listener = Registered::new(&poller, listener, Event::readable(LISTENER), mode)?;
    let mut conns: Slab<(Registered<'_, std::net::TcpStream>, EchoConn)> = Slab::new();
    let mut events = Events::with_capacity(std::num::NonZeroUsize::new(1024).unwrap());
    let mut buf = vec![0u8; READ_BUF];
    loop {
        events.clear();
        match poller.wait(&mut events, None) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.key == LISTENER {
                loop {
                    match listener.get().accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(true)?;
                            nodelay(&stream);
                            let entry = conns.vacant_entry();
                            let interest = if edge {
                                Event::all(entry.key())
                            } else {
                                Event::readable(entry.key())
                            };
                            let stream = Registered::new(&poller, stream, interest, mode)?;
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
                    listener.modify(Event::readable(LISTENER), mode)?;
                }
                continue;
            }
            let key = event.key;
            let Some((stream, conn)) = conns.get_mut(key) else {
                continue;
            };
            // polling reports a hang-up or error as readable and writable.
            match conn.step(stream.get(), &mut buf, event.readable, event.writable, rule) {
                Status::Open if !edge => {
                    let interest = if conn.wants_write() {
                        Event::writable(key)
                    } else {
                        Event::readable(key)
                    };
                    stream.modify(interest, mode)?;
                }
                Status::Open => {}
                Status::Closed => drop(conns.remove(key)),
            }
        }
    }
}
