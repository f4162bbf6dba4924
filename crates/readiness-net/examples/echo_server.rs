//! An echo server on the net layer.
//!
//! ```text
//! cargo run --release -p readiness-net --example echo_server -- \
//!     [--addr 127.0.0.1:0] [--threads 1] [--backend epoll] \
//!     [--idle-timeout-secs 0] [--max-connections 100000] [--for-secs 0] [--report-ms 0]
//! ```
//!
//! Prints `listening on ADDR`, then serves until its standard input closes
//! (or `--for-secs` pass, if given), then shuts down gracefully and prints
//! its statistics. `--report-ms N` prints `open=N` lines while it runs.

#[path = "common/args.rs"]
mod args;

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use readiness_net::{Backend, Config, Echo, Server};

fn main() {
    let a = args::Args::parse(&[
        "addr",
        "threads",
        "backend",
        "idle-timeout-secs",
        "max-connections",
        "for-secs",
        "report-ms",
    ]);
    let addr: std::net::SocketAddr = a.get("addr", "127.0.0.1:0".parse().unwrap());
    let mut config = Config::new().max_connections(a.get("max-connections", 100_000));
    let idle: u64 = a.get("idle-timeout-secs", 0);
    if idle > 0 {
        config = config.idle_timeout(Some(Duration::from_secs(idle)));
    }
    if let Some(b) = a.opt("backend") {
        let b = Backend::from_name(b).unwrap_or_else(|| args::die(&format!("no backend {b:?}")));
        config = config.backend(b);
    }
    let server = Server::builder()
        .threads(a.get("threads", 1))
        .config(config)
        .serve(addr, |_| Some(Echo::new()))
        .unwrap_or_else(|e| args::die(&format!("cannot serve on {addr}: {e}")));
    println!("listening on {}", server.local_addr());

    let (tx, rx) = mpsc::channel();
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = stdin_tx.send(());
    });
    let secs: u64 = a.get("for-secs", 0);
    if secs > 0 {
        let t = tx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            let _ = t.send(());
        });
    }
    let report: u64 = a.get("report-ms", 0);
    loop {
        let wait = if report > 0 {
            Duration::from_millis(report)
        } else {
            Duration::from_secs(3600)
        };
        match rx.recv_timeout(wait) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if report > 0 {
                    println!("open={}", server.stats().connections_open);
                }
            }
        }
    }
    let stats = server
        .shutdown(Duration::from_secs(5))
        .unwrap_or_else(|e| args::die(&format!("shutdown: {e}")));
    println!("{stats:?}");
}
