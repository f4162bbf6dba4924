//! A load client for the echo benchmarks: `--connections C` blocking
//! connections (one thread each), each doing `--round-trips N` echoes of
//! `--size S` bytes, validating every byte (byte i of message m of
//! connection c is (c + m + i) mod 251). Prints the totals.
//!
//! ```text
//! echo_load --addr 127.0.0.1:PORT --connections 1 --size 64 --round-trips 100000
//! ```

#[path = "common/args.rs"]
mod args;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

fn main() {
    let a = args::Args::parse(&["addr", "connections", "size", "round-trips"]);
    let addr: std::net::SocketAddr = a
        .opt("addr")
        .unwrap_or_else(|| args::die("--addr is required"))
        .parse()
        .unwrap_or_else(|_| args::die("--addr: not an address"));
    let conns: usize = a.get("connections", 1);
    let size: usize = a.get("size", 64);
    let n: usize = a.get("round-trips", 10_000);
    let t0 = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).unwrap();
                let mut msg = vec![0u8; size];
                let mut back = vec![0u8; size];
                for m in 0..n {
                    for (i, b) in msg.iter_mut().enumerate() {
                        *b = ((c + m + i) % 251) as u8;
                    }
                    s.write_all(&msg).expect("write");
                    s.read_exact(&mut back).expect("read");
                    assert_eq!(back, msg, "validation failure: connection {c}, message {m}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
    let secs = t0.elapsed().as_secs_f64();
    let total = conns * n;
    println!(
        "round_trips={total} secs={secs:.3} per_sec={:.0} failures=0",
        total as f64 / secs
    );
}
