//! The mio 1 echo server: one `Poll`, edge-triggered read + write interest
//! registered once per connection, a slab of connections.

use std::io;
use std::net::TcpListener;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::{EchoConn, READ_BUF, ReadRule, Status};

const LISTENER: Token = Token(usize::MAX - 1);
/// On Windows mio emulates edges and re-arms only after a `WouldBlock`, so
/// reads must go on until then; elsewhere (epoll, kqueue) a short read ends
/// a readiness.
const RULE: ReadRule = if cfg!(windows) {
    ReadRule::UntilWouldBlock
} else {
    ReadRule::UntilShort
};

pub(super) fn run(listener: TcpListener) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<(TcpStream, EchoConn)> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            if let Err(e) = stream.set_nodelay(true) {
                                tracing::debug!("TCP_NODELAY: {e}");
                            }
                            let entry = conns.vacant_entry();
                            poll.registry().register(
                                &mut stream,
                                Token(entry.key()),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
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
                continue;
            }
            let key = event.token().0;
            let Some((stream, conn)) = conns.get_mut(key) else {
                continue;
            };
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let writable = event.is_writable() || event.is_error();
            let status = conn.step(stream, &mut buf, readable, writable, RULE);
            if status == Status::Closed {
                let (mut stream, _) = conns.remove(key);
                let _ = poll.registry().deregister(&mut stream);
            }
        }
    }
}
