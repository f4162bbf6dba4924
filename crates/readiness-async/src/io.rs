//! [`Async<T>`]: a registered source and the futures that wait on it.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use readiness::AsSource;

use crate::reactor::{READ, Reactor, Source, WRITE};

/// An I/O source registered with the reactor, with futures that wait until
/// it is readable or writable.
///
/// `T` is anything the poller can register ([`readiness::AsSource`]: on Unix
/// every `AsFd`, on Windows every `AsSocket`): `TcpStream`, `TcpListener`,
/// `UdpSocket`, `socket2::Socket`, Unix sockets and pipes. The usual way to
/// use it is [`read_with`](Async::read_with) and
/// [`write_with`](Async::write_with), which run a non-blocking operation and
/// wait whenever it says [`WouldBlock`](io::ErrorKind::WouldBlock); TCP
/// streams also implement [`AsyncRead`] and [`AsyncWrite`], listeners have
/// [`accept`](Async::<TcpListener>::accept), UDP sockets
/// [`send_to`](Async::<UdpSocket>::send_to) and
/// [`recv_from`](Async::<UdpSocket>::recv_from).
///
/// Dropping it deregisters the source, then closes it (drops `T`);
/// [`into_inner`](Async::into_inner) deregisters it and gives it back.
///
/// # Waiting, and a source that goes away
///
/// Every future that waits on an `Async` borrows it, and the OS handle is
/// closed only when the `Async` is dropped or taken apart with `into_inner`,
/// which the borrow checker forbids while such a future exists. So a source
/// cannot be closed under a waiting task: to stop a task that waits, drop its
/// future (cancellation is safe at every `.await`; the data stays in the
/// socket for the next read). When several tasks share a source (an
/// `Arc<Async<T>>`), it is deregistered with the last handle. Deregistration
/// still wakes any waker a cancelled wait left behind, so nothing can sleep on
/// a source that is gone.
///
/// # Readiness
///
/// Operations are tried first and waited on only after a `WouldBlock`; a
/// readiness that arrives while a task is busy is kept (per direction, with
/// a tick, so only the readiness the task actually used up is cleared). A
/// peer's FIN (read side) and a dead connection (both sides) are final: every
/// later wait completes at once and the operation reports the end or the
/// error. The reactor picks how it registers sources per backend (edge
/// triggered where the poller has it, oneshot re-armed on each wait
/// elsewhere); nothing here depends on the choice.
pub struct Async<T: AsSource> {
    source: Arc<Source>,
    /// `None` only inside `into_inner` and `drop`.
    io: Option<T>,
}

impl<T: AsSource> Async<T> {
    /// Puts `io` in non-blocking mode and registers it with the reactor
    /// (creating the reactor on first use).
    ///
    /// Non-blocking mode is set through `socket2` (`ioctl(FIONBIO)` on Unix,
    /// which works for pipes and other descriptors too; `ioctlsocket` on
    /// Windows). Errors: the OS error of either step, or the reactor's if
    /// it cannot be created.
    pub fn new(io: T) -> io::Result<Async<T>> {
        socket2::SockRef::from(&io).set_nonblocking(true)?;
        Async::new_nonblocking(io)
    }

    /// Registers `io`, which the caller has put in non-blocking mode already.
    ///
    /// A source left blocking would block the executor thread in its
    /// operations; it causes no other harm.
    pub fn new_nonblocking(io: T) -> io::Result<Async<T>> {
        let reactor = Reactor::try_global()?;
        let source = reactor.insert(&io)?;
        Ok(Async {
            source,
            io: Some(io),
        })
    }

    /// The source.
    #[inline]
    pub fn get_ref(&self) -> &T {
        match &self.io {
            Some(io) => io,
            None => unreachable!("Async::io is only taken by into_inner and drop"),
        }
    }

    /// Deregisters the source and returns it (still in non-blocking mode).
    ///
    /// Errors: the poller's, if deregistration fails; the source is then
    /// dropped (closed).
    pub fn into_inner(mut self) -> io::Result<T> {
        let io = self
            .io
            .take()
            .expect("Async::io is present until into_inner");
        self.source.reactor().remove(&self.source, &io)?;
        Ok(io)
    }

    /// Waits until the source is readable.
    ///
    /// Completes at once if readiness was reported and not used up yet
    /// (also right after registration: a new source counts as ready), and
    /// otherwise at the next readiness. It consumes what it reports: the next
    /// `readable()` waits for news. So do the operation until it says
    /// `WouldBlock` before waiting again; an operation that is still not
    /// possible simply waits once more. [`read_with`](Self::read_with) does
    /// all of that.
    pub fn readable(&self) -> Readable<'_, T> {
        Readable {
            handle: self,
            seen: None,
        }
    }

    /// Waits until the source is writable. As [`readable`](Self::readable).
    pub fn writable(&self) -> Writable<'_, T> {
        Writable {
            handle: self,
            seen: None,
        }
    }

    /// Polls for readability, for hand-written futures: `Ready` when the
    /// source is readable (consuming that readiness, as
    /// [`readable`](Self::readable) does); otherwise stores the waker.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.source.poll_fresh(READ, cx, self.get_ref(), &mut None)
    }

    /// Polls for writability; as [`poll_readable`](Self::poll_readable).
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.source.poll_fresh(WRITE, cx, self.get_ref(), &mut None)
    }

    /// Runs the non-blocking read-side operation `op` until it does not say
    /// `WouldBlock`, waiting for readability in between, and returns its
    /// result.
    ///
    /// `op` must be non-blocking and report "not now" as `WouldBlock` (as
    /// every operation on a non-blocking source does). Cancel-safe: dropping
    /// the future between tries loses nothing.
    pub async fn read_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        poll_fn(|cx| self.poll_with(READ, cx, &mut op)).await
    }

    /// Runs the non-blocking write-side operation `op` until it does not say
    /// `WouldBlock`, waiting for writability in between. As
    /// [`read_with`](Self::read_with).
    pub async fn write_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        poll_fn(|cx| self.poll_with(WRITE, cx, &mut op)).await
    }

    /// Polls `op` in direction `dir`: the loop behind `read_with`,
    /// `write_with` and the socket methods.
    #[inline]
    fn poll_with<R>(
        &self,
        dir: usize,
        cx: &mut Context<'_>,
        op: &mut impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let io = self.get_ref();
        loop {
            let readiness = ready!(self.source.poll_ready(dir, cx, io))?;
            match op(io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.source.clear(dir, readiness.tick);
                }
                result => return Poll::Ready(result),
            }
        }
    }
}

impl<T: AsSource> Drop for Async<T> {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            if let Err(e) = self.source.reactor().remove(&self.source, &io) {
                tracing::debug!("readiness-async: deregistration failed: {e}");
            }
            drop(io);
        }
    }
}

impl<T: AsSource + fmt::Debug> fmt::Debug for Async<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Async").field("io", &self.io).finish()
    }
}

impl<T: AsSource> AsRef<T> for Async<T> {
    fn as_ref(&self) -> &T {
        self.get_ref()
    }
}

/// Future of [`Async::readable`].
#[must_use = "futures do nothing unless polled"]
pub struct Readable<'a, T: AsSource> {
    handle: &'a Async<T>,
    seen: Option<u64>,
}

impl<T: AsSource> Future for Readable<'_, T> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.handle
            .source
            .poll_fresh(READ, cx, this.handle.get_ref(), &mut this.seen)
    }
}

impl<T: AsSource> fmt::Debug for Readable<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readable").finish_non_exhaustive()
    }
}

/// Future of [`Async::writable`].
#[must_use = "futures do nothing unless polled"]
pub struct Writable<'a, T: AsSource> {
    handle: &'a Async<T>,
    seen: Option<u64>,
}

impl<T: AsSource> Future for Writable<'_, T> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.handle
            .source
            .poll_fresh(WRITE, cx, this.handle.get_ref(), &mut this.seen)
    }
}

impl<T: AsSource> fmt::Debug for Writable<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------ TCP

impl Async<TcpListener> {
    /// Binds a TCP listener (std's `TcpListener::bind`: `SO_REUSEADDR` on
    /// Unix, backlog 128) and registers it.
    pub fn bind(addr: impl Into<SocketAddr>) -> io::Result<Async<TcpListener>> {
        Async::new(TcpListener::bind(addr.into())?)
    }

    /// Accepts a connection, waiting for one; the stream comes registered.
    pub async fn accept(&self) -> io::Result<(Async<TcpStream>, SocketAddr)> {
        let (stream, addr) = self.read_with(|l| l.accept()).await?;
        Ok((Async::new(stream)?, addr))
    }

    /// The stream of incoming connections (it never ends; an accept error
    /// is an item, and the stream goes on after it).
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }
}

/// Stream of [`Async::<TcpListener>::incoming`].
#[must_use = "streams do nothing unless polled"]
pub struct Incoming<'a> {
    listener: &'a Async<TcpListener>,
}

impl Stream for Incoming<'_> {
    type Item = io::Result<Async<TcpStream>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let accepted = ready!(self.listener.poll_with(READ, cx, &mut |l| l.accept()));
        Poll::Ready(Some(accepted.and_then(|(stream, _)| Async::new(stream))))
    }
}

impl fmt::Debug for Incoming<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("listener", self.listener)
            .finish()
    }
}

/// Whether a non-blocking `connect` error means "started, not finished".
fn connect_in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::EINPROGRESS)
    }
    #[cfg(windows)]
    {
        e.kind() == io::ErrorKind::WouldBlock
    }
}

impl Async<TcpStream> {
    /// Connects to `addr`, waiting until the connection is established.
    ///
    /// A failed connection gives the OS's reason (a refused connection is
    /// [`ConnectionRefused`](io::ErrorKind::ConnectionRefused)), read from
    /// the socket's pending error once the poller reports it. There is no
    /// timeout of its own: race it with a [`Timer`](crate::Timer).
    pub async fn connect(addr: impl Into<SocketAddr>) -> io::Result<Async<TcpStream>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let addr = addr.into();
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if connect_in_progress(&e) => {}
            Err(e) => return Err(e),
        }
        let stream = Async::new_nonblocking(TcpStream::from(socket))?;
        poll_fn(|cx| stream.poll_connected(cx)).await?;
        Ok(stream)
    }

    fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let io = self.get_ref();
        loop {
            let readiness = ready!(self.source.poll_ready(WRITE, cx, io))?;
            if let Some(e) = io.take_error()? {
                return Poll::Ready(Err(e));
            }
            match io.peer_addr() {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if readiness.closed {
                        // The poller says the connection is dead but the
                        // socket has no error to tell why.
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "connect failed and the OS reported no reason",
                        )));
                    }
                    self.source.clear(WRITE, readiness.tick);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads into `buf` without removing the data from the socket, waiting
    /// for data if there is none.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_with(|s| s.peek(buf)).await
    }

    /// Reads into `buf`. Cancel-safe.
    fn poll_read_stream(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let len = buf.len();
        self.poll_stream(READ, cx, len, |mut s| s.read(buf))
    }

    fn poll_read_vectored_stream(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_stream(READ, cx, len, |mut s| s.read_vectored(bufs))
    }

    fn poll_write_stream(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_stream(WRITE, cx, buf.len(), |mut s| s.write(buf))
    }

    fn poll_write_vectored_stream(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_stream(WRITE, cx, len, |mut s| s.write_vectored(bufs))
    }

    /// One stream read or write of `len` bytes asked. Besides `WouldBlock`,
    /// a short transfer (`0 < n < len`) also uses the readiness up: the
    /// socket's receive buffer was emptied, or its send buffer filled, at
    /// that moment, so the next try would only say `WouldBlock`. Any change
    /// after it is a new readiness (a new edge under the edge rule; the
    /// oneshot re-arm polls the current state), so skipping that try loses
    /// nothing and saves a system call per message.
    #[inline]
    fn poll_stream(
        &self,
        dir: usize,
        cx: &mut Context<'_>,
        len: usize,
        mut op: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let io = self.get_ref();
        loop {
            let readiness = ready!(self.source.poll_ready(dir, cx, io))?;
            match op(io) {
                Ok(n) => {
                    if n > 0 && n < len {
                        self.source.clear(dir, readiness.tick);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.source.clear(dir, readiness.tick);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

// The same four impls for the owned and the shared form, as
// `std::io::{Read, Write}` are for `TcpStream` and `&TcpStream`.
macro_rules! stream_io {
    ($($ty:ty),*) => {$(
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                self.poll_read_stream(cx, buf)
            }

            fn poll_read_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &mut [IoSliceMut<'_>],
            ) -> Poll<io::Result<usize>> {
                self.poll_read_vectored_stream(cx, bufs)
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.poll_write_stream(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.poll_write_vectored_stream(cx, bufs)
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            /// Shuts down the sending side (the peer reads the end of the stream).
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(self.get_ref().shutdown(Shutdown::Write))
            }
        }
    )*};
}

stream_io!(Async<TcpStream>, &Async<TcpStream>);

// ------------------------------------------------------------------ UDP

impl Async<UdpSocket> {
    /// Binds a UDP socket and registers it.
    pub fn bind(addr: impl Into<SocketAddr>) -> io::Result<Async<UdpSocket>> {
        Async::new(UdpSocket::bind(addr.into())?)
    }

    /// Sends a datagram to `addr`, waiting for room.
    pub async fn send_to(&self, buf: &[u8], addr: impl Into<SocketAddr>) -> io::Result<usize> {
        let addr = addr.into();
        self.write_with(|s| s.send_to(buf, addr)).await
    }

    /// Receives a datagram, waiting for one; returns its length and sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.read_with(|s| s.recv_from(buf)).await
    }

    /// Receives a datagram without removing it from the queue.
    pub async fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.read_with(|s| s.peek_from(buf)).await
    }

    /// Sends a datagram to the connected peer (`get_ref().connect(addr)`).
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_with(|s| s.send(buf)).await
    }

    /// Receives a datagram from the connected peer.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_with(|s| s.recv(buf)).await
    }
}
