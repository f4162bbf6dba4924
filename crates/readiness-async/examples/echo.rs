//! The single-threaded echo server of the benchmark matrix, on readiness-async
//! with async-executor's `LocalExecutor`, driven by `readiness_async::block_on`.
//!
//! ```sh
//! cargo run --release -p readiness-async --example echo -- --addr 127.0.0.1:7000
//! ```
//!
//! Prints the bound address on its first line of stdout, then serves until
//! killed. One task and one read buffer per connection, `TCP_NODELAY` on
//! every accepted socket, `SO_REUSEADDR` on the listener (Unix; on Windows
//! that option means something else and is left off). Each task reads what
//! is there and writes it back whole before it reads again (so a client that
//! does not read gets no more than the socket buffers hold).

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};

use async_executor::LocalExecutor;
use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use readiness::Backend;
use readiness_async::{Async, Reactor, block_on};

/// Read buffer per connection: one 64 KiB message in one read.
const READ_BUF: usize = 64 * 1024;
/// Listen backlog (Linux caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

#[derive(Parser)]
#[command(about = "Single-threaded echo server on readiness-async")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Poller backend (epoll, poll, kqueue, afd, afd-direct); default: the OS's.
    #[arg(long, value_parser = parse_backend)]
    backend: Option<Backend>,
}

fn parse_backend(name: &str) -> Result<Backend, String> {
    Backend::from_name(name).ok_or_else(|| format!("unknown backend '{name}'"))
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

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("echo: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> io::Result<()> {
    if let Some(backend) = args.backend {
        Reactor::install(readiness::Builder::new().backend(backend))?;
    }
    let listener =
        Async::new(listen(args.addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr))
        })?)?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{}", listener.get_ref().local_addr()?)?;
    stdout.flush()?;

    let ex = LocalExecutor::new();
    block_on(ex.run(async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Err(e) = stream.get_ref().set_nodelay(true) {
                        eprintln!("echo: TCP_NODELAY: {e}");
                    }
                    ex.spawn(async move {
                        let _ = serve(stream).await;
                    })
                    .detach();
                }
                // Out of descriptors, or a connection reset before it was
                // accepted: keep serving the others.
                Err(e) => eprintln!("echo: accept: {e}"),
            }
        }
    }))
}
