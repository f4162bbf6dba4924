//! The tokio echo server: a current-thread runtime, one task per connection
//! on a `LocalSet`, the shared read buffer in an `Rc<RefCell<_>>` borrowed
//! only between two `.await`s. Reads with `readable().await` + `try_read`
//! (tokio clears readiness when a read returns `WouldBlock`, so a round trip
//! costs a second, failing read), writes with `try_write`.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use tokio::net::TcpStream;

use super::READ_BUF;

pub(super) fn run(listener: std::net::TcpListener) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let buf = Rc::new(RefCell::new(vec![0u8; READ_BUF]));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!("TCP_NODELAY: {e}");
                    }
                    tokio::task::spawn_local(echo(stream, buf.clone()));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            }
        }
    })
}

/// Writes what the socket takes now.
fn try_write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<usize> {
    let total = data.len();
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total - data.len())
}

async fn echo(stream: TcpStream, buf: Rc<RefCell<Vec<u8>>>) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        {
            let mut b = buf.borrow_mut();
            let n = match stream.try_read(&mut b) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            match try_write_all(&stream, &b[..n]) {
                Ok(w) if w < n => pending.extend_from_slice(&b[w..n]),
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let mut written = 0;
        while written < pending.len() {
            if stream.writable().await.is_err() {
                return;
            }
            match stream.try_write(&pending[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        pending.clear();
    }
}
