//! The floor of the echo benchmark: a plain epoll loop on libc, what every
//! framework is measured against.
//!
//! Exactly what it does:
//! - one `epoll_create1(EPOLL_CLOEXEC)`; the listener is registered
//!   `EPOLLIN | EPOLLET` (data = `u64::MAX`); on its event `accept` runs until
//!   `EAGAIN` (std's `accept4(SOCK_CLOEXEC)` plus `ioctl(FIONBIO)` and
//!   `setsockopt(TCP_NODELAY)` per connection: set-up, not per round trip);
//! - each connection is registered once, `EPOLLIN | EPOLLOUT | EPOLLRDHUP |
//!   EPOLLET` (data = its slab key), and never modified: no `epoll_ctl` per
//!   round trip;
//! - `epoll_wait` with room for 1,024 events and no timeout;
//! - per readable event: `read` into the shared 64 KiB buffer until a read
//!   returns less than the buffer, each read followed by one `write` of what
//!   it got (the shared [`EchoConn`](crate::echo::EchoConn) step with
//!   [`ReadRule::UntilShort`](crate::echo::ReadRule)); a partial write keeps
//!   the rest, stops reading, and is flushed on the next `EPOLLOUT` edge;
//! - a read of 0 or an error closes the socket (`close` drops it from the
//!   interest list).
//!
//! A small-message round trip is therefore one `read` and one `write`, plus
//! one `epoll_wait` shared by every connection it reports. Edge triggering is
//! chosen over level because the level variant needs the same calls and, in
//! addition, makes the kernel re-check every reported socket on the next
//! `epoll_wait`; the edge variant never re-reads to find `EAGAIN`.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use slab::Slab;

use crate::echo::{EchoConn, READ_BUF, ReadRule, Status};

const LISTENER: u64 = u64::MAX;
const MAX_EVENTS: usize = 1024;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ctl_add(epfd: &OwnedFd, fd: libc::c_int, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `epfd` is an open epoll descriptor (owned), `fd` an open
    // descriptor the caller owns, and `ev` a valid `epoll_event` for the
    // duration of the call.
    cvt(unsafe { libc::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

pub(crate) fn run(listener: TcpListener) -> io::Result<()> {
    // SAFETY: a plain system call; the result is checked before use.
    let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `epfd` was just returned by `epoll_create1` and is owned by
    // nothing else.
    let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
    let et = libc::EPOLLET as u32;
    ctl_add(
        &epfd,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32 | et,
        LISTENER,
    )?;
    let conn_events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32 | et;
    let mut conns: Slab<(TcpStream, EchoConn)> = Slab::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    let mut buf = vec![0u8; READ_BUF];
    loop {
        // SAFETY: `events` holds `MAX_EVENTS` initialised entries the kernel
        // may overwrite; `epfd` is open.
        let n = unsafe {
            libc::epoll_wait(
                epfd.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let (bits, data) = (ev.events, ev.u64);
            if data == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(true)?;
                            let _ = stream.set_nodelay(true);
                            let entry = conns.vacant_entry();
                            ctl_add(&epfd, stream.as_raw_fd(), conn_events, entry.key() as u64)?;
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
            let key = data as usize;
            let Some((stream, conn)) = conns.get_mut(key) else {
                continue;
            };
            let bad = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
            let readable = bits & (libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32 | bad) != 0;
            let writable = bits & (libc::EPOLLOUT as u32 | bad) != 0;
            if conn.step(stream, &mut buf, readable, writable, ReadRule::UntilShort)
                == Status::Closed
            {
                // Closing the descriptor removes it from the interest list.
                drop(conns.remove(key));
            }
        }
    }
}
