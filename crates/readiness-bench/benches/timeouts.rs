//! Timeout precision: how long a wait with a short timeout and nothing to
//! report takes, for readiness (epoll and poll(2) backends), polling 3 and
//! mio 1. Not a criterion benchmark: what matters is the distribution, in
//! particular the shortest of many waits (as polling's precision tests
//! measure it), which says what the backend asks of the kernel; the others
//! add the machine's scheduling noise.
//!
//! Run with `cargo bench -p readiness-bench --bench timeouts` (about 10 s);
//! `-- --markdown` prints a table for docs/BENCHMARKS.md; `-- --waits N`
//! changes the number of waits per figure (default 1,000).

use std::net::UdpSocket;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use readiness::{Backend, Interest, Mode};

const TIMEOUTS_US: [u64; 4] = [50, 100, 500, 1_000];

/// One library's wait on a poller with one registered, idle socket.
trait Waiter {
    fn wait(&mut self, timeout: Duration);
}

struct Readiness {
    poller: readiness::Poller,
    events: readiness::Events,
    _socket: UdpSocket,
}

impl Readiness {
    fn new(backend: Backend) -> Readiness {
        let poller = readiness::Poller::with_backend(backend).expect("readiness poller");
        let socket = udp();
        poller
            .add(&socket, 1, Interest::READABLE, Mode::Oneshot)
            .expect("add");
        Readiness {
            poller,
            events: readiness::Events::with_capacity(64),
            _socket: socket,
        }
    }
}

impl Waiter for Readiness {
    fn wait(&mut self, timeout: Duration) {
        let n = self.poller.wait(&mut self.events, Some(timeout)).unwrap();
        assert_eq!(n, 0);
    }
}

struct Polling {
    poller: polling::Poller,
    events: polling::Events,
    socket: UdpSocket,
}

impl Polling {
    fn new() -> Polling {
        let poller = polling::Poller::new().expect("polling poller");
        let socket = udp();
        // SAFETY: the socket is deleted from the poller (in `Drop`) before
        // it is closed.
        unsafe { poller.add(&socket, polling::Event::readable(1)) }.expect("add");
        Polling {
            poller,
            events: polling::Events::with_capacity(NonZeroUsize::new(64).unwrap()),
            socket,
        }
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        let _ = self.poller.delete(&self.socket);
    }
}

impl Waiter for Polling {
    fn wait(&mut self, timeout: Duration) {
        self.events.clear();
        let n = self.poller.wait(&mut self.events, Some(timeout)).unwrap();
        assert_eq!(n, 0);
    }
}

struct Mio {
    poll: mio::Poll,
    events: mio::Events,
    _socket: mio::net::UdpSocket,
}

impl Mio {
    fn new() -> Mio {
        let poll = mio::Poll::new().expect("mio poll");
        let mut socket = mio::net::UdpSocket::from_std(udp());
        poll.registry()
            .register(&mut socket, mio::Token(1), mio::Interest::READABLE)
            .expect("register");
        Mio {
            poll,
            events: mio::Events::with_capacity(64),
            _socket: socket,
        }
    }
}

impl Waiter for Mio {
    fn wait(&mut self, timeout: Duration) {
        self.poll.poll(&mut self.events, Some(timeout)).unwrap();
        assert!(self.events.is_empty());
    }
}

/// Builds a library's waiter.
type MakeWaiter = Box<dyn Fn() -> Box<dyn Waiter>>;

fn udp() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1");
    socket.set_nonblocking(true).unwrap();
    socket
}

/// Shortest, median, 90th percentile of `waits` waits of `timeout`.
fn measure(waiter: &mut dyn Waiter, timeout: Duration, waits: usize) -> [Duration; 3] {
    for _ in 0..10 {
        waiter.wait(timeout); // warm-up
    }
    let mut times: Vec<Duration> = (0..waits)
        .map(|_| {
            let start = Instant::now();
            waiter.wait(timeout);
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    [times[0], times[waits / 2], times[waits * 9 / 10]]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let markdown = args.iter().any(|a| a == "--markdown");
    let waits = args
        .iter()
        .position(|a| a == "--waits")
        .and_then(|i| args.get(i + 1))
        .map_or(1_000, |n| n.parse().expect("--waits N"));
    // `cargo bench` passes `--bench`; nothing else is expected.
    let libs: Vec<(&str, MakeWaiter)> = vec![
        (
            "readiness-epoll",
            Box::new(|| Box::new(Readiness::new(Backend::Epoll))),
        ),
        (
            "readiness-poll",
            Box::new(|| Box::new(Readiness::new(Backend::Poll))),
        ),
        ("polling", Box::new(|| Box::new(Polling::new()))),
        ("mio", Box::new(|| Box::new(Mio::new()))),
    ];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if markdown {
        println!("| timeout | library | shortest | median | 90th percentile |");
        println!("|---:|---|---:|---:|---:|");
    } else {
        println!("{waits} waits per line; wall time in µs: shortest, median, 90th percentile");
    }
    for timeout_us in TIMEOUTS_US {
        let timeout = Duration::from_micros(timeout_us);
        for (name, make) in &libs {
            let mut waiter = make();
            let [min, median, p90] = measure(waiter.as_mut(), timeout, waits);
            if markdown {
                println!(
                    "| {timeout_us} µs | {name} | {:.0} µs | {:.0} µs | {:.0} µs |",
                    us(min),
                    us(median),
                    us(p90)
                );
            } else {
                println!(
                    "{timeout_us:>5} µs  {name:<16} {:>8.1} {:>8.1} {:>8.1}",
                    us(min),
                    us(median),
                    us(p90)
                );
            }
        }
    }
}
