//! An echo server on `futures::executor::ThreadPool`. No thread is in
//! `readiness_async::block_on` here, so the reactor is driven by its fallback
//! thread (`readiness-async`), which wakes the pool's tasks.
//!
//! ```sh
//! cargo run --release -p readiness-async --example echo_futures_executor
//! ```

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use clap::Parser;
use futures::executor::ThreadPool;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use readiness_async::Async;

#[derive(Parser)]
#[command(about = "Echo server on readiness-async and futures' thread pool")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Pool threads.
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
    let pool = ThreadPool::builder()
        .pool_size(args.threads.max(1))
        .create()?;
    let spawner = pool.clone();
    futures::executor::block_on(async move {
        loop {
            let (stream, _) = listener.accept().await?;
            stream.get_ref().set_nodelay(true)?;
            spawner.spawn_ok(async move {
                let _ = serve(stream).await;
            });
        }
    })
}
