//! `echo-peer --server NAME [--addr A]`: one of the echo benchmark's
//! single-threaded servers (see `readiness_bench::echo`). Prints the bound
//! address as its first line on stdout, then serves until it is killed
//! (SIGTERM, SIGINT) or its standard input reaches end of file (unless
//! `--ignore-stdin`).

#![deny(unsafe_code)]
#![deny(missing_docs)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use readiness_bench::echo::{self, Server};

#[derive(Parser)]
#[command(
    name = "echo-peer",
    about = "A single-threaded echo server of the echo benchmark"
)]
struct Args {
    /// The server: epoll (the floor, Linux), raw, net (the readiness-net
    /// layer), async (the readiness-async adapter), mio, polling, tokio, smol.
    #[arg(long)]
    server: Server,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// The readiness backend of the `raw`, `net` and `async` servers (epoll,
    /// poll, ...); the other servers ignore it.
    #[arg(long)]
    backend: Option<String>,
    /// Keep serving when standard input closes.
    #[arg(long)]
    ignore_stdin: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-peer: {}: {e}", args.server);
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &Args) -> std::io::Result<()> {
    let backend = match &args.backend {
        None => None,
        Some(name) => Some(readiness::Backend::from_name(name).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown backend '{name}'"),
            )
        })?),
    };
    if !args.server.is_built() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this server is not built for this OS",
        ));
    }
    echo::raise_fd_limit()?;
    let listener = echo::listen(args.addr)?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}")?;
        out.flush()?;
    }
    if !args.ignore_stdin {
        std::thread::spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    }
    echo::run(args.server, listener, &echo::Options { backend })
}
