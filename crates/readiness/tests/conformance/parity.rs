//! Conformance, continued: behaviour that one backend or another got wrong
//! once (issue 9) — re-arms seen by a zero-timeout wait, level sources with a
//! one-event buffer, connections shut down both ways, local shutdowns, and
//! registrations changed by several threads while others wait.

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use readiness::{Backend, Events, Interest, Mode};

use super::util::*;

/// A oneshot re-armed with `modify` while its condition holds is reported
/// by the very next wait, even with a zero timeout: `modify` looks at the
/// socket as `epoll_ctl` does. Checked for a re-arm right after the event
/// and for one after a wait has passed in between (Windows parks the
/// registration then, and the re-arm must replace the park at once).
#[test]
fn a_rearmed_oneshot_is_seen_by_a_zero_timeout_wait() {
    for wait_between in [false, true] {
        let poller = poller();
        let mut events = Events::new();
        let (client, server) = tcp_pair();
        poller
            .add(&server, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        send(&client, b"x");
        expect_event(&poller, &mut events, 1, READABLE);
        if wait_between {
            assert_eq!(poller.wait(&mut events, Some(Duration::ZERO)).unwrap(), 0);
        }
        // Nothing was read: still readable.
        for round in 0..5 {
            poller
                .modify(&server, 1, Interest::READABLE, Mode::Oneshot)
                .unwrap();
            poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
            let seen: Vec<_> = events.iter().collect();
            assert!(
                seen.len() == 1 && READABLE.matches(seen[0]) && seen[0].key() == 1,
                "{}: round {round} (a wait in between: {wait_between}): \
                 one zero-timeout wait after modify saw {seen:?}",
                poller.backend()
            );
        }
    }
}

/// Level sources that stay ready are reported by every zero-timeout wait,
/// with a one-event buffer, while other registrations churn (on Windows,
/// cancellations take packets from the port that must not take the room).
#[test]
fn level_sources_fill_a_one_event_buffer_on_every_wait() {
    let poller = poller();
    if !poller.supports_level() {
        return;
    }
    let mut events = Events::with_capacity(1);
    let pairs: Vec<_> = (0..3).map(|_| tcp_pair()).collect();
    for (i, (client, server)) in pairs.iter().enumerate() {
        send(client, b"x");
        poller
            .add(server, i, Interest::READABLE, Mode::Level)
            .unwrap();
    }
    // A registration whose interest keeps changing (a cancel each time on
    // Windows), with nothing ready.
    let (_noise_peer, noise) = tcp_pair();
    let churn = [Interest::READABLE, Interest::READABLE | Interest::PRIORITY];
    let churn = if poller.supports_priority() {
        &churn[..]
    } else {
        &churn[..1]
    };
    poller.add(&noise, 99, churn[0], Mode::Oneshot).unwrap();
    // Let every level source be seen once first (registration is not
    // instantaneous everywhere).
    let mut seen = [false; 3];
    let deadline = Instant::now() + LONG;
    while !seen.iter().all(|&s| s) {
        assert!(
            Instant::now() < deadline,
            "{}: level sources never all seen: {seen:?}",
            poller.backend()
        );
        for e in wait_some(&poller, &mut events) {
            seen[e.key()] = true;
        }
    }
    let mut seen = [0usize; 3];
    for round in 0..30 {
        poller
            .modify(&noise, 99, churn[round % churn.len()], Mode::Oneshot)
            .unwrap();
        let n = poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert_eq!(
            n,
            1,
            "{}: round {round}: a zero-timeout wait with ready level sources returned {events:?}",
            poller.backend()
        );
        let e = events.iter().next().unwrap();
        assert!(e.key() < 3 && READABLE.matches(e), "unexpected {e:?}");
        seen[e.key()] += 1;
    }
    // No source starves.
    assert!(
        seen.iter().all(|&n| n > 0),
        "{}: reports per source {seen:?}",
        poller.backend()
    );
}

/// A connection shut down in both directions (the peer's FIN received and
/// our own `shutdown(Write)`) reports read-closed and write-closed, in either
/// order, as `Event::is_write_closed` promises.
#[test]
fn a_connection_shut_down_both_ways_is_write_closed() {
    if backend_from_env() == Some(Backend::Kqueue) {
        return; // type-checked only; see docs/ARCHITECTURE.md
    }
    for peer_first in [true, false] {
        let poller = poller();
        let mut events = Events::new();
        let (client, server) = tcp_pair();
        if peer_first {
            client.shutdown(Shutdown::Write).unwrap();
            server.shutdown(Shutdown::Write).unwrap();
        } else {
            server.shutdown(Shutdown::Write).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
        }
        poller
            .add(&server, 1, Interest::BOTH, Mode::Oneshot)
            .unwrap();
        let deadline = Instant::now() + LONG;
        loop {
            let e = expect_event(&poller, &mut events, 1, ANY);
            if e.is_read_closed() && e.is_write_closed() {
                assert!(!e.is_error(), "an orderly shutdown is no error: {e:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never write-closed: {e:?}",
                poller.backend()
            );
            poller
                .modify(&server, 1, Interest::BOTH, Mode::Oneshot)
                .unwrap();
        }
    }
}

/// What a local `shutdown(Read)` or `shutdown(Both)` reports differs by OS,
/// and is pinned here so the docs' table (docs/ARCHITECTURE.md) stays true:
/// Linux reports them (readable and read-closed; with Both, write-closed
/// too); AFD has no event for a local shutdown, so Windows reports nothing.
#[test]
fn local_shutdowns_report_what_the_table_says() {
    let backend = poller().backend();
    if backend == Backend::Kqueue {
        return; // type-checked only
    }
    let windows = matches!(backend, Backend::Afd | Backend::AfdDirect);
    for how in [Shutdown::Read, Shutdown::Both] {
        let poller = poller();
        let mut events = Events::new();
        let (_client, server) = tcp_pair();
        poller
            .add(&server, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        expect_none(&poller, &mut events, SHORT);
        server.shutdown(how).unwrap();
        if windows {
            expect_none(&poller, &mut events, SHORT);
        } else if how == Shutdown::Read {
            expect_event(&poller, &mut events, 1, READABLE | READ_CLOSED | !ERROR);
        } else {
            expect_event(
                &poller,
                &mut events,
                1,
                READABLE | READ_CLOSED | WRITE_CLOSED | !ERROR,
            );
        }
    }
}

/// Threads add, modify and delete registrations while others wait and one
/// notifies: every call answers as the registry says, no event carries a key
/// that was never registered, and once everything is deleted nothing is
/// reported. Sockets carry data, so waits return events all along.
#[test]
fn registrations_change_under_concurrent_waits() {
    const SOCKETS: usize = 24;
    const ROUNDS: usize = 400;
    let poller = Arc::new(poller());
    let pairs: Vec<_> = (0..SOCKETS).map(|_| tcp_pair()).collect();
    for (client, _) in &pairs {
        send(client, b"data");
    }
    let pairs = Arc::new(pairs);
    // Per socket: registered or not, owned by one mutator thread each half.
    let registered: Arc<Vec<Mutex<Option<usize>>>> =
        Arc::new((0..SOCKETS).map(|_| Mutex::new(None)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let reported = Arc::new(AtomicUsize::new(0));

    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (poller, stop, bad, reported) = (
                Arc::clone(&poller),
                Arc::clone(&stop),
                Arc::clone(&bad),
                Arc::clone(&reported),
            );
            thread::spawn(move || {
                let mut events = Events::with_capacity(8);
                while !stop.load(Ordering::Acquire) {
                    match poller.wait(&mut events, Some(Duration::from_millis(20))) {
                        Ok(_) => {}
                        Err(e) => bad.lock().unwrap().push(format!("wait: {e}")),
                    }
                    for e in &events {
                        // Keys are socket * 1000 + generation < 1000.
                        if e.key() / 1000 >= SOCKETS {
                            bad.lock().unwrap().push(format!("unknown key in {e:?}"));
                        }
                        reported.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let notifier = {
        let (poller, stop) = (Arc::clone(&poller), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                poller.notify().unwrap();
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mode = if poller.supports_level() {
        Mode::Level
    } else {
        Mode::Oneshot
    };
    let mutators: Vec<_> = (0..2)
        .map(|half| {
            let (poller, pairs, registered, bad) = (
                Arc::clone(&poller),
                Arc::clone(&pairs),
                Arc::clone(&registered),
                Arc::clone(&bad),
            );
            thread::spawn(move || {
                let mut seed = 0x9E37_79B9_u32 ^ half as u32;
                let mut next = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as usize
                };
                for round in 0..ROUNDS {
                    let i = half + 2 * (next() % (SOCKETS / 2));
                    let server = &pairs[i].1;
                    let mut slot = registered[i].lock().unwrap();
                    let key = i * 1000 + round % 1000;
                    let interest =
                        [Interest::READABLE, Interest::BOTH, Interest::WRITABLE][next() % 3];
                    let (what, result) = match (*slot, next() % 3) {
                        (None, _) => (
                            "add",
                            poller.add(server, key, interest, mode).map(|_| Some(key)),
                        ),
                        (Some(_), 0) => ("delete", poller.delete(server).map(|_| None)),
                        (Some(_), _) => (
                            "modify",
                            poller
                                .modify(server, key, interest, mode)
                                .map(|_| Some(key)),
                        ),
                    };
                    match result {
                        Ok(now) => *slot = now,
                        Err(e) => bad
                            .lock()
                            .unwrap()
                            .push(format!("{what} of socket {i}: {e}")),
                    }
                }
            })
        })
        .collect();
    for m in mutators {
        m.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    notifier.join().unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{}: {} failures, first: {:?}",
        poller.backend(),
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(
        reported.load(Ordering::Relaxed) > 0,
        "nothing was ever reported"
    );
    // Delete what is left: afterwards nothing is reported.
    for (i, slot) in registered.iter().enumerate() {
        if slot.lock().unwrap().is_some() {
            poller.delete(&pairs[i].1).unwrap();
        }
    }
    let mut events = Events::new();
    expect_none(&poller, &mut events, SHORT);
    let _ = (&pairs[0].0).flush();
}

/// The pattern of a runtime with a fallback driver: one thread blocks in
/// `wait`, another looks with zero timeouts, and whichever gets a oneshot
/// event echoes what the socket holds and re-arms it (sometimes only after
/// its next wait has started, so the re-arm replaces a park on Windows).
/// Clients send one byte at a time and wait for it back: every byte must
/// come back, and no connection may stall.
#[test]
fn two_waiters_rearming_oneshots_never_stall() {
    use std::io::Read;
    const CONNS: usize = 16;
    const ROUNDS: usize = 150;
    let poller = Arc::new(poller());
    let pairs: Vec<_> = (0..CONNS).map(|_| tcp_pair()).collect();
    let servers: Arc<Vec<_>> =
        Arc::new(pairs.iter().map(|(_, s)| s.try_clone().unwrap()).collect());
    for (i, s) in servers.iter().enumerate() {
        poller.add(s, i, Interest::READABLE, Mode::Oneshot).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handle = |blocking: bool| {
        let (poller, servers, stop) =
            (Arc::clone(&poller), Arc::clone(&servers), Arc::clone(&stop));
        thread::spawn(move || {
            let mut events = Events::with_capacity(4);
            let mut late: Vec<usize> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let timeout = if blocking {
                    Duration::from_millis(50)
                } else {
                    Duration::ZERO
                };
                poller.wait(&mut events, Some(timeout)).unwrap();
                // Re-arms left for after this wait (a park may be in place).
                for key in late.drain(..) {
                    poller
                        .modify(&servers[key], key, Interest::READABLE, Mode::Oneshot)
                        .unwrap();
                }
                for e in &events {
                    let key = e.key();
                    let mut s = &servers[key];
                    let mut buf = [0u8; 64];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(k) => send(s, &buf[..k]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                    n += 1;
                    if n.is_multiple_of(3) {
                        late.push(key);
                    } else {
                        poller
                            .modify(&servers[key], key, Interest::READABLE, Mode::Oneshot)
                            .unwrap();
                    }
                }
                if !blocking {
                    thread::yield_now();
                }
            }
        })
    };
    let waiters = [handle(true), handle(false)];
    let clients: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (c, _))| {
            thread::spawn(move || {
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(LONG)).unwrap();
                let mut c = c;
                for round in 0..ROUNDS {
                    let b = [(round % 251) as u8];
                    std::io::Write::write_all(&mut c, &b).unwrap();
                    let mut got = [0u8; 1];
                    if let Err(e) = c.read_exact(&mut got) {
                        return Err(format!(
                            "connection {i}: round {round}: no echo within {LONG:?}: {e}"
                        ));
                    }
                    assert_eq!(got, b);
                }
                Ok(())
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stop.store(true, Ordering::Release);
    for w in waiters {
        w.join().unwrap();
    }
    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "{}: {failed:?}", poller.backend());
}
