//! A minimal reproduction, on the bare poller, of the one net-layer failure
//! seen under Wine on afd-direct (`contract::local_close_with_queued_data_
//! delivers_all_of_it`, intermittent): a oneshot registration re-armed for
//! writable after each event while the peer drains the socket. Every re-arm
//! must be followed by an event once the kernel has room again; a wait of
//! 3 s with nothing while the peer reads means a lost event.
//!
//! The net layer's registration pattern, exactly: added READABLE | PRIORITY,
//! modified to READABLE | WRITABLE while data is queued, re-armed with that
//! after each event.

mod util;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use readiness::{Events, Interest, Mode, Poller};

fn poller() -> Poller {
    match util::backend_from_env() {
        Some(b) => Poller::with_backend(b).unwrap(),
        None => Poller::new().unwrap(),
    }
}

#[test]
fn oneshot_writable_rearm_is_never_lost() {
    rearm_rounds(0);
}

/// The same in four threads at once, each with its own poller, as the
/// contract tests run (socket handle values are then reused across pollers).
#[test]
fn oneshot_writable_rearm_is_never_lost_with_parallel_pollers() {
    let threads: Vec<_> = (1..=4)
        .map(|t| std::thread::spawn(move || rearm_rounds(t)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn rearm_rounds(thread: usize) {
    const TOTAL: usize = 16 << 20;
    let rounds: usize = std::env::var("REPRO_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(32 << 10).unwrap();
        s.connect(&addr.into()).unwrap();
        let mut client = TcpStream::from(s);
        let (server, _) = listener.accept().unwrap();
        let server = socket2::Socket::from(server);
        server.set_send_buffer_size(32 << 10).unwrap();
        server.set_nonblocking(true).unwrap();
        let poller = poller();
        let mut first = Interest::READABLE;
        if poller.supports_priority() {
            first |= Interest::PRIORITY;
        }
        poller.add(&server, 1, first, Mode::Oneshot).unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0;
            while got < TOTAL {
                match client.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => panic!("reader: {e}"),
                }
            }
            got
        });
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0;
        let mut events = Events::new();
        let mut rearms = 0;
        while sent < TOTAL {
            // Write until the kernel is full.
            loop {
                let n = (TOTAL - sent).min(chunk.len());
                if n == 0 {
                    break;
                }
                match (&server).write(&chunk[..n]) {
                    Ok(k) => sent += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            if sent == TOTAL {
                break;
            }
            poller
                .modify(&server, 1, Interest::BOTH, Mode::Oneshot)
                .unwrap();
            rearms += 1;
            let t0 = Instant::now();
            let n = poller
                .wait(&mut events, Some(Duration::from_secs(3)))
                .unwrap();
            assert!(
                n > 0 || t0.elapsed() < Duration::from_secs(3),
                "{} backend, thread {thread}, round {round}: no event within 3 s after re-arm {rearms} \
                 for writable ({sent} of {TOTAL} bytes sent; the peer keeps reading)",
                poller.backend()
            );
        }
        poller.delete(&server).unwrap();
        drop(server);
        assert_eq!(reader.join().unwrap(), TOTAL);
        println!(
            "{} round {round}: {rearms} re-arms, none lost",
            poller.backend()
        );
    }
}

/// The net layer's accept-and-read pattern, for the other intermittent
/// afd-direct loss (`contract::oob_byte`): a listener and its accepted
/// sockets on one poller, every registration oneshot and re-armed after its
/// event; the peer sends a byte, then (after the readable event) an urgent
/// byte, then closes. Each step must be reported within 3 s. Four threads,
/// one poller each, many connections each.
#[test]
fn oneshot_rearm_after_read_sees_the_next_event() {
    let threads: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || accept_read_rounds(t, 40)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Waits with no timeout, as the net layer does when no timer is pending
/// (`GetQueuedCompletionStatusEx(INFINITE)` on Windows); a watchdog thread
/// wakes the wait with `notify` after 3 s and the wait is then a failure.
fn wait_key(
    poller: &std::sync::Arc<Poller>,
    events: &mut Events,
    key: usize,
    what: &str,
    ctx: &str,
) -> readiness::Event {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (p, f) = (poller.clone(), fired.clone());
        std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(3)).is_err() {
                f.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = p.notify();
            }
        })
    };
    let found = loop {
        poller.wait(events, None).unwrap();
        if let Some(e) = events.iter().find(|e| e.key() == key) {
            break Some(*e);
        }
        if fired.load(std::sync::atomic::Ordering::SeqCst) {
            break None;
        }
    };
    let _ = tx.send(());
    watchdog.join().unwrap();
    match found {
        Some(e) => e,
        None => panic!(
            "{} backend, {ctx}: no {what} event within 3 s (wait without timeout)",
            poller.backend()
        ),
    }
}

fn accept_read_rounds(thread: usize, rounds: usize) {
    let poller = std::sync::Arc::new(poller());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    poller
        .add(&listener, 0, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let mut events = Events::new();
    let rp = if poller.supports_priority() {
        Interest::READABLE | Interest::PRIORITY
    } else {
        Interest::READABLE
    };
    for round in 0..rounds {
        let ctx = format!("thread {thread}, round {round}");
        let mut peer = TcpStream::connect(addr).unwrap();
        wait_key(&poller, &mut events, 0, "accept", &ctx);
        let (server, _) = listener.accept().unwrap();
        poller
            .modify(&listener, 0, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        server.set_nonblocking(true).unwrap();
        poller.add(&server, 1, rp, Mode::Oneshot).unwrap();
        peer.write_all(b"a").unwrap();
        let e = wait_key(&poller, &mut events, 1, "readable", &ctx);
        assert!(e.is_readable(), "{ctx}: {e:?}");
        let mut buf = [0u8; 16];
        assert_eq!((&server).read(&mut buf).unwrap(), 1);
        poller.modify(&server, 1, rp, Mode::Oneshot).unwrap();
        if poller.supports_priority() {
            // Sent while this thread is already blocked in the wait, as in
            // the net layer (the sleep only makes that interleaving likely).
            let p2 = peer.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                socket2::SockRef::from(&p2).send_out_of_band(b"!").unwrap();
            });
            let e = wait_key(&poller, &mut events, 1, "priority", &ctx);
            sender.join().unwrap();
            assert!(e.is_priority(), "{ctx}: {e:?}");
            let mut b = [std::mem::MaybeUninit::new(0u8)];
            socket2::SockRef::from(&server)
                .recv_out_of_band(&mut b)
                .unwrap();
            poller.modify(&server, 1, rp, Mode::Oneshot).unwrap();
        }
        // Writable after the peer drains, while blocked in the wait.
        let big = vec![0u8; 1 << 20];
        let mut queued = 0;
        loop {
            match (&server).write(&big) {
                Ok(n) => queued += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{ctx}: write: {e}"),
            }
        }
        poller
            .modify(&server, 1, Interest::BOTH, Mode::Oneshot)
            .unwrap();
        let mut p3 = peer.try_clone().unwrap();
        let drainer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut got = 0;
            let mut buf = vec![0u8; 64 << 10];
            while got < queued {
                got += p3.read(&mut buf).unwrap();
            }
        });
        let e = wait_key(&poller, &mut events, 1, "writable", &ctx);
        assert!(e.is_writable(), "{ctx}: {e:?}");
        drainer.join().unwrap();
        poller.modify(&server, 1, rp, Mode::Oneshot).unwrap();
        drop(peer);
        let e = wait_key(&poller, &mut events, 1, "read-closed", &ctx);
        assert!(e.is_readable() || e.is_read_closed(), "{ctx}: {e:?}");
        poller.delete(&server).unwrap();
        drop(server);
    }
}
