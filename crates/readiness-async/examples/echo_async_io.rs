//! The same single-threaded echo server as `echo.rs`, on async-io (smol's
//! reactor) instead of readiness-async: the comparison server of
//! docs/BENCHMARKS.md (async section). Same design: async-executor's
//! `LocalExecutor` in `async_io::block_on`, one task and one 64 KiB read
//! buffer per connection, `AsyncRead::read` then `write_all`, `TCP_NODELAY`,
//! `SO_REUSEADDR` (Unix).
//!
//! ```sh
//! cargo run --release -p readiness-async --example echo_async_io -- --addr 127.0.0.1:7001
//! ```

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};

use async_executor::LocalExecutor;
use async_io::Async;
use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const READ_BUF: usize = 64 * 1024;
const BACKLOG: i32 = 4096;

#[derive(Parser)]
#[command(about = "Single-threaded echo server on async-io (comparison)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

async fn serve(mut stream: Async<TcpStream>) -> io::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = Async::new(listen(args.addr)?)?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{}", listener.get_ref().local_addr()?)?;
    stdout.flush()?;
    let ex = LocalExecutor::new();
    async_io::block_on(ex.run(async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.get_ref().set_nodelay(true);
                    ex.spawn(async move {
                        let _ = serve(stream).await;
                    })
                    .detach();
                }
                Err(e) => eprintln!("echo_async_io: accept: {e}"),
            }
        }
    }))
}
