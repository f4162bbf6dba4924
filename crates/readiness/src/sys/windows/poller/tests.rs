//! Tests of the Windows backends that the portable conformance suite cannot
//! express: what the paths cost (operation counts), teardown with polls in
//! flight, sockets closed under a pending poll, direct sockets shared with
//! other completion ports. The handle-leak test has a binary of its own
//! (`tests/windows_handles.rs`), so that nothing runs beside it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::windows::io::AsRawSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::{Counts, IocpPoller, Target, canary};
use crate::sys::windows::afd;
use crate::{Backend, Event, Events, Interest, Mode, Poller};

const BACKENDS: [Backend; 2] = [Backend::Afd, Backend::AfdDirect];
const LONG: Duration = Duration::from_secs(10);

fn iocp(poller: &Poller) -> &IocpPoller {
    match &poller.driver {
        crate::sys::Poller::Afd(p) | crate::sys::Poller::AfdDirect(p) => p,
    }
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    s.set_nonblocking(true).unwrap();
    (c, s)
}

/// Waits up to [`LONG`] for an event for `key`; panics on another key.
#[track_caller]
fn expect(poller: &Poller, events: &mut Events, key: usize) -> Event {
    let deadline = Instant::now() + LONG;
    loop {
        poller.wait_deadline(events, Some(deadline)).unwrap();
        if let Some(e) = events.iter().find(|e| e.key() == key) {
            return *e;
        }
        assert!(events.is_empty(), "unexpected events {events:?}");
        assert!(Instant::now() < deadline, "no event for key {key}");
    }
}

fn drain(mut s: &TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn delta(a: Counts, b: Counts) -> Counts {
    Counts {
        polls: b.polls - a.polls,
        cancels: b.cancels - a.cancels,
        dequeued: b.dequeued - a.dequeued,
        inline: b.inline - a.inline,
        drains: b.drains - a.drains,
        lost: b.lost - a.lost,
    }
}

/// The usual oneshot cycle (event, read, `modify` before the next wait) costs
/// one poll and one completion per event: no park, no cancel.
#[test]
fn a_rearm_after_an_event_is_one_poll() {
    const CYCLES: u64 = 20;
    for backend in BACKENDS {
        let poller = Poller::with_backend(backend).unwrap();
        let mut events = Events::new();
        let (mut c, s) = pair();
        poller
            .add(&s, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        c.write_all(b"x").unwrap();
        expect(&poller, &mut events, 1);
        drain(&s);
        let start = iocp(&poller).counts();
        for _ in 0..CYCLES {
            poller
                .modify(&s, 1, Interest::READABLE, Mode::Oneshot)
                .unwrap();
            c.write_all(b"x").unwrap();
            assert!(expect(&poller, &mut events, 1).is_readable());
            drain(&s);
        }
        let d = delta(start, iocp(&poller).counts());
        println!("{backend}: {CYCLES} re-armed events: {d:?}");
        assert_eq!(d.polls, CYCLES, "{backend}: one poll per re-arm: {d:?}");
        assert_eq!(d.cancels, 0, "{backend}: no cancel: {d:?}");
        assert_eq!(
            d.dequeued + d.inline,
            CYCLES,
            "{backend}: one completion per event: {d:?}"
        );
        assert_eq!(d.drains, 0, "{backend}: no drain on the hot path: {d:?}");
    }
}

/// A re-arm after the next wait started (the registration was parked)
/// costs the park, a cancel and the new poll, and still reports.
#[test]
fn a_late_rearm_cancels_the_park() {
    let poller = Poller::with_backend(Backend::Afd).unwrap();
    let mut events = Events::new();
    let (mut c, s) = pair();
    poller
        .add(&s, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    c.write_all(b"x").unwrap();
    expect(&poller, &mut events, 1);
    drain(&s);
    let start = iocp(&poller).counts();
    // This wait parks the fired registration.
    poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(events.is_empty());
    poller
        .modify(&s, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    c.write_all(b"x").unwrap();
    expect(&poller, &mut events, 1);
    let d = delta(start, iocp(&poller).counts());
    println!("late re-arm: {d:?}");
    assert_eq!(
        (d.polls, d.cancels),
        (2, 1),
        "park + new poll, one cancel: {d:?}"
    );
}

/// A poll the kernel satisfies at once is handled without the port when the
/// handles skip it on success; otherwise through the port. Either way the
/// event is reported by the next wait.
#[test]
fn polls_satisfied_at_once() {
    for backend in BACKENDS {
        let poller = Poller::with_backend(backend).unwrap();
        let skip = iocp(&poller).skips_port_on_success();
        let mut events = Events::new();
        let (c, _s) = pair();
        poller
            .add(&c, 1, Interest::WRITABLE, Mode::Oneshot)
            .unwrap();
        expect(&poller, &mut events, 1);
        let start = iocp(&poller).counts();
        for _ in 0..10 {
            poller
                .modify(&c, 1, Interest::WRITABLE, Mode::Oneshot)
                .unwrap();
            assert!(expect(&poller, &mut events, 1).is_writable());
        }
        let d = delta(start, iocp(&poller).counts());
        println!("{backend} (skip the port on success: {skip}): {d:?}");
        if afd::is_wine() {
            // Wine's TCP and UDP providers are IFS providers: the flag is on.
            assert!(
                skip,
                "{backend}: FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is off under Wine"
            );
        }
        if skip {
            assert_eq!((d.inline, d.dequeued), (10, 0), "{backend}: {d:?}");
        } else {
            assert_eq!((d.inline, d.dequeued), (0, 10), "{backend}: {d:?}");
        }
    }
}

/// The same with the flag off, on a poller built without it.
#[test]
fn polls_satisfied_at_once_without_skipping() {
    for target in [Target::Grouped { group_size: 32 }, Target::Direct] {
        let driver = IocpPoller::with_options(target, false).unwrap();
        let poller = Poller {
            driver: if matches!(driver.target, Target::Direct) {
                crate::sys::Poller::AfdDirect(driver)
            } else {
                crate::sys::Poller::Afd(driver)
            },
        };
        let mut events = Events::new();
        let (c, _s) = pair();
        let start = iocp(&poller).counts();
        poller
            .add(&c, 1, Interest::WRITABLE, Mode::Oneshot)
            .unwrap();
        expect(&poller, &mut events, 1);
        let d = delta(start, iocp(&poller).counts());
        assert_eq!(
            (d.inline, d.dequeued),
            (0, 1),
            "{}: {d:?}",
            poller.backend()
        );
    }
}

/// Dropping pollers with many polls in flight (pending, cancelled, and
/// completed but not dequeued) frees no op while the kernel may write it
/// (the canary counts ops freed with a pending status block), takes far
/// less than the drain limit, and leaves the sockets working.
#[test]
fn drop_with_polls_in_flight() {
    for backend in BACKENDS {
        let pairs: Vec<_> = (0..64).map(|_| pair()).collect();
        let rounds = if backend == Backend::Afd { 20 } else { 1 };
        let mut slowest = Duration::ZERO;
        for _ in 0..rounds {
            let poller = Poller::with_backend(backend).unwrap();
            let mode = if poller.supports_level() {
                Mode::Level
            } else {
                Mode::Oneshot
            };
            for (i, (c, s)) in pairs.iter().enumerate() {
                poller.add(s, i, Interest::READABLE, mode).unwrap();
                // Writable at once: a completion queued, never dequeued.
                poller.add(c, 1000 + i, Interest::WRITABLE, mode).unwrap();
                if i % 3 == 0 {
                    poller.delete(s).unwrap(); // a cancelled poll (or tombstone) in flight
                }
                if i % 5 == 0 {
                    poller.modify(c, 1000 + i, Interest::BOTH, mode).unwrap();
                }
            }
            let start = Instant::now();
            drop(poller);
            slowest = slowest.max(start.elapsed());
        }
        println!("{backend}: slowest drop {slowest:?}");
        assert!(
            slowest < Duration::from_secs(5),
            "{backend}: a drop took {slowest:?}"
        );
        assert_eq!(
            canary::FREED_PENDING.load(Ordering::Relaxed),
            0,
            "an op was freed while its poll was in the kernel"
        );
        // The sockets still work.
        let (c, s) = &pairs[0];
        (&*c).write_all(b"x").unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut buf = [0u8; 1];
        (&*s).read_exact(&mut buf).unwrap();
    }
}

/// Sockets closed while their polls are pending, while another thread waits:
/// no event for them, and a new socket (likely reusing a closed value) is
/// registered and reported under its own key. Event-driven: the waiter sends
/// every event it sees; the test stops it once the live socket's came.
#[test]
fn close_while_polling() {
    for backend in BACKENDS {
        let poller = Arc::new(Poller::with_backend(backend).unwrap());
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let poller = Arc::clone(&poller);
            std::thread::spawn(move || {
                let mut events = Events::new();
                loop {
                    poller.wait(&mut events, None).unwrap();
                    if events.is_notified() && events.is_empty() {
                        return;
                    }
                    for e in &events {
                        tx.send(e.key()).unwrap();
                    }
                }
            })
        };
        for round in 0..50 {
            let pairs: Vec<_> = (0..16).map(|_| pair()).collect();
            for (i, (_, s)) in pairs.iter().enumerate() {
                poller
                    .add(s, round * 100 + i, Interest::READABLE, Mode::Oneshot)
                    .unwrap();
            }
            // Close each registered socket under its pending poll before its
            // peer: so nothing but the close happens to it.
            for (c, s) in pairs {
                drop(s);
                drop(c);
            }
        }
        let (mut c, s) = pair();
        poller
            .add(&s, 99_999, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        c.write_all(b"x").unwrap();
        let deadline = Instant::now() + LONG;
        let mut seen = Vec::new();
        while !seen.contains(&99_999) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(key) => seen.push(key),
                Err(_) => break,
            }
        }
        poller.notify().unwrap();
        waiter.join().unwrap();
        seen.extend(rx.try_iter());
        assert_eq!(
            seen,
            vec![99_999],
            "{backend}: only the live socket is reported"
        );
        poller.delete(&s).unwrap();
    }
}

/// Creates sockets until one has the handle value `value` (bounded); the
/// others are closed again.
fn socket_with_value(value: std::os::windows::io::RawSocket) -> Option<Socket> {
    let mut held = Vec::new();
    for _ in 0..2000 {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        if s.as_raw_socket() == value {
            return Some(s);
        }
        held.push(s);
    }
    None
}

/// Direct: poller A adds, deletes and closes a socket; a new socket with
/// the same handle value belongs to poller B's port. A's `add` of it is
/// refused (ResourceBusy), B reports it, and dropping A is quick.
#[test]
fn direct_a_reused_value_of_another_port_is_refused() {
    let a = Poller::with_backend(Backend::AfdDirect).unwrap();
    let b = Poller::with_backend(Backend::AfdDirect).unwrap();
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.add(&first, 1, Interest::WRITABLE, Mode::Oneshot).unwrap();
    a.delete(&first).unwrap();
    let value = first.as_raw_socket();
    drop(first);
    // Windows hands a freed value out again soon: not getting it back
    // would leave the test checking nothing.
    let second = socket_with_value(value).expect("the handle value never came back");
    second
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    b.add(&second, 2, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    let e = a
        .add(&second, 3, Interest::WRITABLE, Mode::Oneshot)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
    let mut events = Events::new();
    assert!(expect(&b, &mut events, 2).is_writable());
    a.wait(&mut events, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(events.is_empty(), "A reported {events:?}");
    let start = Instant::now();
    drop(a);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "dropping A took {:?}",
        start.elapsed()
    );
}

/// Direct: a socket whose owner set FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
/// (it cannot be cleared) completes satisfied polls without a packet; the
/// poller reads the mode, reports the events and leaks nothing, also when
/// it does not set the flag itself.
#[test]
fn direct_a_socket_whose_owner_skips_the_port() {
    for skip_safe in [true, false] {
        let poller = Poller {
            driver: crate::sys::Poller::AfdDirect(
                IocpPoller::with_options(Target::Direct, skip_safe).unwrap(),
            ),
        };
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = afd::base_socket(s.as_raw_socket()).unwrap();
        afd::set_completion_modes(base as _, true).unwrap();
        let mut events = Events::new();
        let start = iocp(&poller).counts();
        poller
            .add(&s, 1, Interest::WRITABLE, Mode::Oneshot)
            .unwrap();
        assert!(expect(&poller, &mut events, 1).is_writable());
        poller
            .modify(&s, 1, Interest::WRITABLE, Mode::Oneshot)
            .unwrap();
        assert!(expect(&poller, &mut events, 1).is_writable());
        let d = delta(start, iocp(&poller).counts());
        assert_eq!(
            (d.inline, d.dequeued),
            (2, 0),
            "skip_safe={skip_safe}: {d:?}"
        );
        let t = Instant::now();
        drop(poller);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            t.elapsed()
        );
    }
}

/// Contention: threads adding, modifying and deleting while two threads
/// wait. Prints calls per second for 1, 2 and 4 changing threads. A
/// measurement, not a check: run by
/// hand (`-- --ignored --nocapture contention`); figures in docs/BENCHMARKS.md.
#[test]
#[ignore]
fn contention() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    for backend in BACKENDS {
        for threads in [1usize, 2, 4] {
            let poller = Arc::new(Poller::with_backend(backend).unwrap());
            let stop = Arc::new(AtomicBool::new(false));
            let calls = Arc::new(AtomicU64::new(0));
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let (p, stop) = (Arc::clone(&poller), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        let mut events = Events::new();
                        while !stop.load(Ordering::Acquire) {
                            p.wait(&mut events, Some(Duration::from_millis(5))).unwrap();
                        }
                    })
                })
                .collect();
            let start = Instant::now();
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (p, calls) = (Arc::clone(&poller), Arc::clone(&calls));
                    std::thread::spawn(move || {
                        let socks: Vec<_> = (0..8)
                            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                            .collect();
                        let deadline = Instant::now() + Duration::from_secs(2);
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            for (i, s) in socks.iter().enumerate() {
                                let key = t * 100 + i;
                                p.add(s, key, Interest::READABLE, Mode::Oneshot).unwrap();
                                p.modify(s, key, Interest::BOTH, Mode::Oneshot).unwrap();
                                p.delete(s).unwrap();
                                n += 3;
                            }
                        }
                        calls.fetch_add(n, Ordering::Relaxed);
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            let elapsed = start.elapsed();
            stop.store(true, Ordering::Release);
            for w in waiters {
                w.join().unwrap();
            }
            let rate = calls.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
            println!("CONTENTION {backend} {threads} changing threads: {rate:.0} calls/s");
        }
    }
}

/// A registered socket with a second handle (`try_clone`), its first handle
/// closed: AFD does not complete the poll (the socket lives on), so the
/// registration stays. Direct: a new socket on the closed value is added
/// afresh and the old slot is dropped with its poll still in the kernel;
/// dropping the poller still cancels that poll and is quick.
#[test]
fn direct_a_second_handle_keeps_the_socket_and_drop_is_quick() {
    let poller = Poller::with_backend(Backend::AfdDirect).unwrap();
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    poller
        .add(&first, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let second = first.try_clone().unwrap();
    let value = first.as_raw_socket();
    drop(first);
    let reused = socket_with_value(value).expect("the handle value never came back");
    reused
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    poller
        .add(&reused, 2, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    let mut events = Events::new();
    assert!(expect(&poller, &mut events, 2).is_writable());
    let start = Instant::now();
    drop(poller);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        start.elapsed()
    );
    drop(second);
}

/// A poll cancelled by the system, not by the poller (Windows before Vista
/// cancels a thread's I/O when the thread exits), is no close: the grouped
/// backend polls again and reports nothing until the data comes; the direct
/// backend (which cannot poll on its own) reports the armed interest once,
/// and the re-arm polls again. The cancel is issued here, behind the
/// poller's back.
#[test]
fn a_poll_cancelled_by_the_system_is_no_close() {
    for backend in BACKENDS {
        let poller = Poller::with_backend(backend).unwrap();
        let mut events = Events::new();
        let (mut c, s) = pair();
        poller
            .add(&s, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        {
            let st = super::lock(&iocp(&poller).state);
            let slot = &st.slots[&s.as_raw_socket()];
            assert!(slot.phase.in_kernel(), "{backend}: the poll is pending");
            // SAFETY: the slot's op is alive (the slot and the request hold
            // it); its status block is only used to name the request.
            let found = unsafe { afd::cancel(slot.issue_on as _, slot.op.iosb.get()) };
            assert!(matches!(found, Ok(true)), "{backend}: {found:?}");
        }
        let before = iocp(&poller).counts();
        if backend == Backend::AfdDirect {
            let e = expect(&poller, &mut events, 1);
            assert!(e.is_readable() && !e.is_error(), "{backend}: {e:?}");
            poller
                .modify(&s, 1, Interest::READABLE, Mode::Oneshot)
                .unwrap();
        } else {
            poller
                .wait(&mut events, Some(Duration::from_millis(200)))
                .unwrap();
            assert!(events.is_empty(), "{backend}: {events:?}");
        }
        let d = delta(before, iocp(&poller).counts());
        assert_eq!(d.polls, 1, "{backend}: polled again once: {d:?}");
        c.write_all(b"x").unwrap();
        let e = expect(&poller, &mut events, 1);
        assert!(e.is_readable() && !e.is_error(), "{backend}: {e:?}");
    }
}

/// Under Wine a poll that completes while the thread that issued it exits
/// comes back with its result lost (docs/WINDOWS.md). Each such completion
/// is counted, is not taken for a close, and costs the grouped backend one
/// more poll; every registration is reported. The data is sent as the
/// registering thread ends; the rounds spread the send over its exit.
#[test]
fn a_lost_result_is_polled_again() {
    use std::sync::atomic::AtomicBool;
    const ROUNDS: u64 = 100;
    let poller = Poller::with_backend(Backend::Afd).unwrap();
    let mut events = Events::new();
    let before = iocp(&poller).counts();
    for round in 0..ROUNDS {
        let (mut c, s) = pair();
        let key = round as usize;
        let added = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let thread = sc.spawn(|| {
                poller
                    .add(&s, key, Interest::READABLE, Mode::Oneshot)
                    .unwrap();
                added.store(true, Ordering::Release);
            });
            while !added.load(Ordering::Acquire) && !thread.is_finished() {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(round % 10 * 10) {
                std::hint::spin_loop();
            }
            c.write_all(b"x").unwrap();
            thread.join().unwrap();
        });
        assert!(expect(&poller, &mut events, key).is_readable());
        poller.delete(&s).unwrap();
    }
    let d = delta(before, iocp(&poller).counts());
    println!("{ROUNDS} adds while the thread exits: {d:?}");
    assert_eq!(
        d.polls,
        ROUNDS + d.lost,
        "one more poll per lost result: {d:?}"
    );
    assert_eq!(canary::FREED_PENDING.load(Ordering::Relaxed), 0);
    if afd::is_wine() {
        assert!(d.lost > 0, "the lost-result path was not exercised: {d:?}");
    } else {
        assert_eq!(d.lost, 0, "Windows does not lose poll results: {d:?}");
    }
}
