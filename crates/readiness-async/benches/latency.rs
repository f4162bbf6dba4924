//! Wake-up latency and timer precision: readiness-async against async-io, in
//! the same run, same sockets and same method for both.
//!
//! ```sh
//! cargo bench -p readiness-async --bench latency            # defaults
//! cargo bench -p readiness-async --bench latency -- --quick # fewer samples
//! ```
//!
//! What is measured (each library with its own `block_on` driving its own
//! reactor on the bench thread):
//!
//! - `wakeup`: readiness to task poll across threads. The bench thread waits
//!   in `recv_from` on a UDP socket; a plain thread stamps a datagram with
//!   the time and sends it; the time from that stamp to the moment the woken
//!   task has the datagram is one sample. The sender waits for an ack before
//!   the next datagram, so the receiver is always blocked in the poller when
//!   one arrives.
//! - `pingpong`: two tasks in one `block_on` bouncing 8 bytes over a TCP
//!   pair; the time per round trip (two wake-ups, no thread switch).
//! - `timer`: `Timer::after(d)` for d = 1 ms and 10 ms; lateness =
//!   elapsed - d; a negative one would be a timer that fired early (counted).
//!
//! Percentiles over all samples; rows alternate between the libraries
//! (interleaved rounds) so machine noise hits both.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, future};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lib {
    Readiness,
    AsyncIo,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Readiness => "readiness-async",
            Lib::AsyncIo => "async-io",
        }
    }
}

struct Stats {
    samples: Vec<Duration>,
    early: usize,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            samples: Vec::new(),
            early: 0,
        }
    }

    fn pct(&mut self, p: f64) -> Duration {
        self.samples.sort();
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

// ------------------------------------------------------------ wakeup

/// Sends `count` stamped datagrams to `to`, each after the previous was acked.
fn stamp_sender(base: Instant, to: SocketAddr, count: usize) -> std::thread::JoinHandle<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    std::thread::spawn(move || {
        let mut ack = [0u8; 8];
        for _ in 0..count {
            // Give the receiver time to block in the poller again.
            std::thread::sleep(Duration::from_micros(50));
            let stamp = base.elapsed().as_nanos() as u64;
            socket.send_to(&stamp.to_le_bytes(), to).unwrap();
            socket.recv_from(&mut ack).unwrap();
        }
    })
}

fn wakeup(lib: Lib, count: usize, stats: &mut Stats) {
    let base = Instant::now();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let sender = stamp_sender(base, addr, count);
    let mut sample = |buf: &[u8; 8]| {
        let now = base.elapsed().as_nanos() as u64;
        let stamp = u64::from_le_bytes(*buf);
        stats
            .samples
            .push(Duration::from_nanos(now.saturating_sub(stamp)));
    };
    match lib {
        Lib::Readiness => {
            let socket = readiness_async::Async::new(socket).unwrap();
            readiness_async::block_on(async {
                let mut buf = [0u8; 8];
                for _ in 0..count {
                    let (_, from) = socket.recv_from(&mut buf).await.unwrap();
                    sample(&buf);
                    socket.send_to(&buf, from).await.unwrap();
                }
            });
        }
        Lib::AsyncIo => {
            let socket = async_io::Async::new(socket).unwrap();
            async_io::block_on(async {
                let mut buf = [0u8; 8];
                for _ in 0..count {
                    let (_, from) = socket.recv_from(&mut buf).await.unwrap();
                    sample(&buf);
                    socket.send_to(&buf, from).await.unwrap();
                }
            });
        }
    }
    sender.join().unwrap();
}

// ------------------------------------------------------------ pingpong

fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// Nanoseconds per round trip over `count` round trips.
fn pingpong(lib: Lib, count: usize) -> Duration {
    let (a, b) = tcp_pair();
    macro_rules! body {
        ($new:path, $block_on:path) => {{
            let mut a = $new(a).unwrap();
            let mut b = $new(b).unwrap();
            $block_on(async {
                let ping = async {
                    let mut buf = [0u8; 8];
                    let start = Instant::now();
                    for i in 0..count as u64 {
                        a.write_all(&i.to_le_bytes()).await.unwrap();
                        a.read_exact(&mut buf).await.unwrap();
                    }
                    start.elapsed()
                };
                let pong = async {
                    let mut buf = [0u8; 8];
                    for _ in 0..count {
                        b.read_exact(&mut buf).await.unwrap();
                        b.write_all(&buf).await.unwrap();
                    }
                };
                future::zip(ping, pong).await.0
            })
        }};
    }
    let total = match lib {
        Lib::Readiness => body!(readiness_async::Async::new, readiness_async::block_on),
        Lib::AsyncIo => body!(async_io::Async::new, async_io::block_on),
    };
    total / count as u32
}

// ------------------------------------------------------------ timer

fn timer(lib: Lib, d: Duration, count: usize, stats: &mut Stats) {
    for _ in 0..count {
        let start = Instant::now();
        match lib {
            Lib::Readiness => {
                readiness_async::block_on(readiness_async::Timer::after(d));
            }
            Lib::AsyncIo => {
                async_io::block_on(async_io::Timer::after(d));
            }
        }
        let elapsed = start.elapsed();
        if elapsed < d {
            stats.early += 1;
        }
        stats.samples.push(elapsed.saturating_sub(d));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else we ignore but `--quick`.
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 2 } else { 5 };
    let wakeups = if quick { 1_000 } else { 4_000 };
    let pingpongs = if quick { 10_000 } else { 50_000 };
    let timers = if quick { 20 } else { 100 };
    let libs = [Lib::Readiness, Lib::AsyncIo];

    println!(
        "readiness-async {} vs async-io 2, {} rounds interleaved{}",
        readiness_async::Reactor::global().backend(),
        rounds,
        if quick { " (--quick)" } else { "" }
    );

    let mut wake: Vec<Stats> = libs.iter().map(|_| Stats::new()).collect();
    let mut ping: Vec<Vec<Duration>> = libs.iter().map(|_| Vec::new()).collect();
    let mut t1: Vec<Stats> = libs.iter().map(|_| Stats::new()).collect();
    let mut t10: Vec<Stats> = libs.iter().map(|_| Stats::new()).collect();
    for _ in 0..rounds {
        for (i, &lib) in libs.iter().enumerate() {
            wakeup(lib, wakeups, &mut wake[i]);
            ping[i].push(pingpong(lib, pingpongs));
            timer(lib, Duration::from_millis(1), timers, &mut t1[i]);
            timer(lib, Duration::from_millis(10), timers / 4, &mut t10[i]);
        }
    }

    println!();
    println!("| measure | library | p50 µs | p90 µs | p99 µs | max µs | samples | early |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, set) in [
        ("wake-up, readiness to task poll (cross-thread)", &mut wake),
        ("timer 1 ms: lateness", &mut t1),
        ("timer 10 ms: lateness", &mut t10),
    ] {
        for (i, stats) in set.iter_mut().enumerate() {
            let n = stats.samples.len();
            println!(
                "| {name} | {} | {} | {} | {} | {} | {n} | {} |",
                libs[i].name(),
                us(stats.pct(0.5)),
                us(stats.pct(0.9)),
                us(stats.pct(0.99)),
                us(stats.pct(1.0)),
                stats.early
            );
        }
    }
    println!();
    println!("| measure | library | median of rounds, µs per round trip | rounds |");
    println!("|---|---|---|---|");
    for (i, rounds) in ping.iter_mut().enumerate() {
        rounds.sort();
        println!(
            "| ping-pong, two tasks, one thread, TCP 8 bytes | {} | {} | {} |",
            libs[i].name(),
            us(rounds[rounds.len() / 2]),
            rounds.len()
        );
    }
}
