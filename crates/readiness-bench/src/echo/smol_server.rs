//! The smol echo server, from its parts: async-io's `Async<TcpStream>` and
//! async-executor's `LocalExecutor`, driven by `async_io::block_on` on this
//! thread (async-io also starts its fallback "async-io" thread, which stays
//! parked while this thread drives the reactor). Reads with `read_with`,
//! which tries the read first and waits for readiness only after a
//! `WouldBlock` (async-io registrations are oneshot: each wait re-arms with
//! `epoll_ctl`); the echo write happens inside the same closure, so the
//! shared buffer is never held across an `.await`.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;

use async_executor::LocalExecutor;
use async_io::Async;

use super::READ_BUF;

pub(super) fn run(listener: TcpListener) -> io::Result<()> {
    let ex = LocalExecutor::new();
    async_io::block_on(ex.run(async {
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
        let step = stream
            .read_with(|mut s| {
                let mut b = buf.borrow_mut();
                let n = s.read(&mut b)?;
                if n > 0 {
                    let w = super::flush(s, &b[..n])?;
                    pending.extend_from_slice(&b[w..n]);
                }
                Ok(n)
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
