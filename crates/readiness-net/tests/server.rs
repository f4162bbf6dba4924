//! A `Server` with several loops serving many connections, in both balance
//! modes.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use readiness_net::{Balance, Echo, Server};
use util::*;

fn serve_many(balance: Balance) {
    const LOOPS: usize = 3;
    const CONNS: usize = 120;
    const MSGS: usize = 20;
    let server = Server::builder()
        .threads(LOOPS)
        .balance(balance)
        .config(config())
        .serve("127.0.0.1:0".parse().unwrap(), |_peer| Some(Echo::new()))
        .expect("start the server");
    assert_eq!(server.handles().len(), LOOPS);
    let addr = server.local_addr();
    // 4 client threads, 30 connections each, all open at once.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut conns: Vec<_> = (0..CONNS / 4).map(|_| client(addr)).collect();
                for m in 0..MSGS {
                    for (i, c) in conns.iter_mut().enumerate() {
                        let start = t * 1000 + i * 37 + m;
                        let msg = pattern_bytes(start, 100);
                        c.write_all(&msg).unwrap();
                    }
                    for (i, c) in conns.iter_mut().enumerate() {
                        let start = t * 1000 + i * 37 + m;
                        let mut buf = [0u8; 100];
                        c.read_exact(&mut buf).unwrap();
                        check_pattern(&buf, start);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Connections are closed by the clients; wait until the loops saw it.
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let stats: Vec<_> = server.handles().iter().map(fresh_stats).collect();
        let open: u64 = stats.iter().map(|s| s.connections_open).sum();
        if open == 0 {
            let accepted: Vec<u64> = stats.iter().map(|s| s.connections_accepted).collect();
            assert_eq!(accepted.iter().sum::<u64>(), CONNS as u64, "{accepted:?}");
            if balance == Balance::RoundRobin {
                // Handed out in turn: exactly even.
                assert!(
                    accepted.iter().all(|&a| a == (CONNS / LOOPS) as u64),
                    "{accepted:?}"
                );
            } else {
                // The kernel balances by hash: every loop gets some.
                assert!(accepted.iter().all(|&a| a > 0), "{accepted:?}");
            }
            let bytes: u64 = stats.iter().map(|s| s.bytes_in).sum();
            assert_eq!(bytes, (CONNS * MSGS * 100) as u64);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections still open: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let last = server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(last.connections_accepted, CONNS as u64);
    assert_eq!(last.connections_open, 0);
}

#[test]
fn round_robin_server() {
    serve_many(Balance::RoundRobin);
}

#[test]
fn reuse_port_server() {
    if !cfg!(target_os = "linux") {
        println!("SKIPPED: SO_REUSEPORT balancing is Linux-only");
        return;
    }
    serve_many(Balance::ReusePort);
}
