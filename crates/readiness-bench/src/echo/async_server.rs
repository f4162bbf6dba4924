//! The echo server on the project's async adapter (`readiness-async`), in the
//! smol server's shape: async-executor's `LocalExecutor` driven by
//! `readiness_async::block_on` on this thread (the adapter's fallback
//! thread only checks, every 10 ms, that the reactor is being driven), one
//! task per connection, the one shared read buffer borrowed only inside a
//! single poll, so no task holds it across an `.await`.
//!
//! A read is the adapter's `AsyncRead::poll_read` on `&Async<TcpStream>`,
//! and the echo write happens in the same poll (as smol's `read_with`
//! closure does). That is the adapter's own stream API: it tries the read
//! first and waits only after a `WouldBlock`, and on an edge-triggered
//! registration it takes a read shorter than the buffer as "drained", so a
//! small-message round trip needs no second read to see `WouldBlock`
//! (`read_with` would make that second read: it clears readiness only on
//! `WouldBlock`). What a write does not take is kept in the task's pending
//! buffer (allocated on the first partial write, then reused) and flushed
//! with `write_with` before the task reads again.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use async_executor::LocalExecutor;
use futures_lite::AsyncRead;
use readiness::Backend;
use readiness_async::{Async, Reactor};

use super::READ_BUF;

pub(super) fn run(listener: TcpListener, backend: Option<Backend>) -> io::Result<()> {
    if let Some(b) = backend {
        Reactor::install(readiness::Builder::new().backend(b))?;
    }
    let ex = LocalExecutor::new();
    readiness_async::block_on(ex.run(async {
        let listener = Async::new(listener)?;
        let buf = Rc::new(RefCell::new(vec![0u8; READ_BUF]));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    super::nodelay(stream.get_ref());
                    ex.spawn(echo(stream, buf.clone())).detach();
                }
                Err(e) => tracing::warn!("accept: {e}"),
            }
        }
    }))
}

async fn echo(stream: Async<TcpStream>, buf: Rc<RefCell<Vec<u8>>>) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // Read and echo in one poll: the shared buffer is borrowed only here.
        let step = poll_fn(|cx| {
            let mut b = buf.borrow_mut();
            let n = match Pin::new(&mut &stream).poll_read(cx, &mut b) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n > 0 {
                let w = super::flush(stream.get_ref(), &b[..n])?;
                pending.extend_from_slice(&b[w..n]);
            }
            Poll::Ready(Ok(n))
        })
        .await;
        match step {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut written = 0;
        while written < pending.len() {
            match stream
                .write_with(|mut s| s.write(&pending[written..]))
                .await
            {
                Ok(n) => written += n,
                Err(_) => return,
            }
        }
        pending.clear();
    }
}
