//! Opens `--connections N` idle connections to `--addr` (spread over the
//! source addresses 127.0.0.2, 127.0.0.3, ... 10,000 per address, so the
//! ephemeral ports of one address are never exhausted), prints `open N`,
//! then holds them until stdin closes.

#[path = "common/args.rs"]
mod args;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

fn main() {
    let a = args::Args::parse(&["addr", "connections"]);
    let addr: SocketAddr = a
        .opt("addr")
        .unwrap_or_else(|| args::die("--addr is required"))
        .parse()
        .unwrap_or_else(|_| args::die("--addr: not an address"));
    let n: usize = a.get("connections", 1000);
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i / 10_000) as u8);
        s.bind(&SocketAddr::from((src, 0)).into())
            .expect("bind a source address");
        s.connect(&addr.into())
            .unwrap_or_else(|e| args::die(&format!("connect {i}: {e}")));
        held.push(s);
    }
    println!("open {n}");
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(k) if k > 0) {}
}
