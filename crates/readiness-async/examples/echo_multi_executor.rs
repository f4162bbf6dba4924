//! An echo server on a multi-threaded async-executor: one `Executor` run by
//! `readiness_async::block_on` on several threads (one of them drives the
//! reactor at a time; the others sleep until they have work or are handed
//! the reactor).
//!
//! ```sh
//! cargo run --release -p readiness-async --example echo_multi_executor -- --threads 2
//! ```

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use async_executor::Executor;
use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use readiness_async::{Async, block_on};

#[derive(Parser)]
#[command(about = "Multi-threaded echo server on readiness-async and async-executor")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Executor threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

async fn serve(mut stream: Async<TcpStream>) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
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
    let listener = Async::<TcpListener>::bind(args.addr)?;
    println!("{}", listener.get_ref().local_addr()?);
    let ex = Arc::new(Executor::new());
    for i in 1..args.threads.max(1) {
        let ex = ex.clone();
        std::thread::Builder::new()
            .name(format!("executor-{i}"))
            .spawn(move || block_on(ex.run(future::pending::<()>())))?;
    }
    block_on(ex.run(async {
        loop {
            let (stream, _) = listener.accept().await?;
            stream.get_ref().set_nodelay(true)?;
            ex.spawn(async move {
                let _ = serve(stream).await;
            })
            .detach();
        }
    }))
}
