//! Conformance, continued: registrations made by a thread that exits. The
//! thread that adds or re-arms a registration is often not the one that
//! waits (a worker hands a socket to the loop and ends), and its end must
//! not change what is reported.
//!
//! On Windows the thread's `add` or `modify` issues the AFD poll, and what
//! becomes of a poll whose thread exits depends on the system: on Windows
//! since Vista it stays pending (I/O on a handle associated with a completion
//! port is not cancelled at thread exit); on older Windows it is cancelled
//! (`STATUS_CANCELLED`); under Wine 8, a poll that completes while its thread
//! is exiting is queued with its status block still `STATUS_PENDING` and its
//! reply still holding the request: the result is lost (docs/WINDOWS.md,
//! "Polls whose thread exits"). A poll that completes after the thread is
//! gone is finished by another thread of the process, correctly.
//!
//! So two kinds of test: the thread exits before the data arrives (the
//! Windows reading: the poll stays pending; under Wine, the result is
//! delivered through another thread), and the data arrives while the thread
//! exits, over many rounds (under Wine: the lost result; before the poller
//! handled it, these failed within their first few rounds).
//!
//! The direct backend reports a lost poll as readiness of what it was armed
//! for (it cannot poll again on its own): at most one event per lost poll
//! that finds nothing to read. Every other backend reports none.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use readiness::{Backend, Events, Interest, Mode, Poller};

use super::util::*;

/// Runs `f` on a new thread and returns once that thread has exited.
fn on_a_thread_that_exits<F: FnOnce() + Send>(f: F) {
    thread::scope(|s| s.spawn(f).join().expect("the thread panicked"));
}

/// Rounds of the tests where data arrives while the registering thread
/// exits.
const ROUNDS: u32 = 100;

/// Runs `register` on a new thread and sends one byte from `peer` while that
/// thread exits: the send starts `delay` after `register` returned. Returns
/// once the thread has exited. The delay spreads the rounds over the exit
/// (under Wine the window is the first tens of microseconds); it is no
/// condition of the outcome, which must be the same for any timing.
fn register_while_data_arrives<F: FnOnce() + Send>(register: F, peer: &TcpStream, delay: Duration) {
    let registered = AtomicBool::new(false);
    thread::scope(|s| {
        let thread = s.spawn(|| {
            register();
            registered.store(true, Ordering::Release);
        });
        while !registered.load(Ordering::Acquire) {
            if thread.is_finished() {
                break; // it panicked; join says so
            }
            std::hint::spin_loop();
        }
        let start = Instant::now();
        while start.elapsed() < delay {
            std::hint::spin_loop();
        }
        send(peer, b"x");
        thread.join().expect("the thread panicked");
    });
}

/// The delay of round `round` (0 to 90 µs).
fn delay(round: u32) -> Duration {
    Duration::from_micros(u64::from(round % 10) * 10)
}

/// Whether the backend may report a poll lost at its thread's exit as
/// readiness that is not there (see the module documentation).
fn may_report_lost_polls(backend: Backend) -> bool {
    backend == Backend::AfdDirect
}

/// Waits until `len` bytes were read from `server`, registered oneshot
/// READABLE under `key`, treating readiness as a hint as portable code does:
/// every readable event is followed by reads, and one that found nothing is
/// re-armed with `modify` from this thread. Returns how many events found
/// nothing to read.
#[track_caller]
fn read_on_readable(
    poller: &Poller,
    events: &mut Events,
    server: &std::net::TcpStream,
    key: usize,
    len: usize,
) -> usize {
    let deadline = Instant::now() + LONG;
    let (mut read, mut empty) = (0, 0);
    loop {
        expect_event(poller, events, key, READABLE | !ERROR);
        let n = drain(server);
        read += n;
        if read >= len {
            assert_eq!(read, len, "more bytes than were sent");
            return empty;
        }
        if n == 0 {
            empty += 1;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {len} bytes within {LONG:?}",
            read
        );
        poller
            .modify(server, key, Interest::READABLE, Mode::Oneshot)
            .unwrap();
    }
}

/// What `read_on_readable` may have found empty on `backend`.
#[track_caller]
fn check_empty_events(backend: Backend, empty: usize) {
    if may_report_lost_polls(backend) {
        assert!(empty <= 1, "{backend}: {empty} events found nothing");
    } else {
        assert_eq!(empty, 0, "{backend}: events that found nothing to read");
    }
}

/// A oneshot added by a thread that has exited is reported when data
/// arrives afterwards.
#[test]
fn a_oneshot_added_by_a_thread_that_exited_reports() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    on_a_thread_that_exits(|| {
        poller
            .add(&server, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
    });
    if !may_report_lost_polls(poller.backend()) {
        expect_none(&poller, &mut events, SHORT);
    }
    send(&client, b"after");
    let empty = read_on_readable(&poller, &mut events, &server, 1, 5);
    check_empty_events(poller.backend(), empty);
}

/// A oneshot re-armed with `modify` by a thread that has exited is reported
/// when data arrives afterwards; the thread that added it lives on.
#[test]
fn a_oneshot_rearmed_by_a_thread_that_exited_reports() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);
    assert_eq!(drain(&server), 1);
    for round in 0..3 {
        let key = 2 + round;
        on_a_thread_that_exits(|| {
            poller
                .modify(&server, key, Interest::READABLE, Mode::Oneshot)
                .unwrap();
        });
        if !may_report_lost_polls(poller.backend()) {
            expect_none(&poller, &mut events, SHORT);
        }
        send(&client, b"bc");
        let empty = read_on_readable(&poller, &mut events, &server, key, 2);
        check_empty_events(poller.backend(), empty);
    }
}

/// A level or edge registration added by a thread that has exited is
/// reported when data arrives afterwards, as its mode says, where the
/// backend has the mode.
#[test]
fn level_and_edge_added_by_a_thread_that_exited_report() {
    for mode in [Mode::Level, Mode::Edge] {
        let poller = poller();
        let supported = match mode {
            Mode::Level => poller.supports_level(),
            _ => poller.supports_edge(),
        };
        if !supported {
            continue;
        }
        let mut events = Events::new();
        let (client, server) = tcp_pair();
        on_a_thread_that_exits(|| {
            poller.add(&server, 1, Interest::READABLE, mode).unwrap();
        });
        expect_none(&poller, &mut events, SHORT);
        send(&client, b"abc");
        expect_event(&poller, &mut events, 1, READABLE | !ERROR);
        if mode == Mode::Level {
            // Not read yet: still reported.
            expect_event(&poller, &mut events, 1, READABLE);
        }
        assert_eq!(drain(&server), 3);
        expect_none(&poller, &mut events, SHORT);
        // And again on new data.
        send(&client, b"d");
        expect_event(&poller, &mut events, 1, READABLE | !ERROR);
        assert_eq!(drain(&server), 1);
    }
}

/// Oneshot registrations added by threads that exit while data arrives are
/// reported, every one.
#[test]
fn oneshots_added_while_their_thread_exits_report() {
    let poller = poller();
    let mut events = Events::new();
    let mut empty = 0;
    for round in 0..ROUNDS {
        let (client, server) = tcp_pair();
        let key = round as usize;
        register_while_data_arrives(
            || {
                poller
                    .add(&server, key, Interest::READABLE, Mode::Oneshot)
                    .unwrap();
            },
            &client,
            delay(round),
        );
        let e = read_on_readable(&poller, &mut events, &server, key, 1);
        check_empty_events(poller.backend(), e);
        empty += e;
        poller.delete(&server).unwrap();
    }
    println!("{}: {empty} events found nothing", poller.backend());
}

/// A oneshot re-armed by threads that exit while data arrives is reported
/// after every re-arm.
#[test]
fn a_oneshot_rearmed_while_its_thread_exits_reports() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 0, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 0, READABLE);
    assert_eq!(drain(&server), 1);
    let mut empty = 0;
    for round in 0..ROUNDS {
        let key = 1 + round as usize;
        register_while_data_arrives(
            || {
                poller
                    .modify(&server, key, Interest::READABLE, Mode::Oneshot)
                    .unwrap();
            },
            &client,
            delay(round),
        );
        let e = read_on_readable(&poller, &mut events, &server, key, 1);
        check_empty_events(poller.backend(), e);
        empty += e;
    }
    println!("{}: {empty} events found nothing", poller.backend());
}

/// Level and edge registrations added by threads that exit while data
/// arrives are reported, every one, where the backend has the mode.
#[test]
fn level_and_edge_added_while_their_thread_exits_report() {
    for mode in [Mode::Level, Mode::Edge] {
        let poller = poller();
        let supported = match mode {
            Mode::Level => poller.supports_level(),
            _ => poller.supports_edge(),
        };
        if !supported {
            continue;
        }
        let mut events = Events::new();
        for round in 0..ROUNDS {
            let (client, server) = tcp_pair();
            let key = round as usize;
            register_while_data_arrives(
                || poller.add(&server, key, Interest::READABLE, mode).unwrap(),
                &client,
                delay(round),
            );
            expect_event(&poller, &mut events, key, READABLE | !ERROR);
            assert_eq!(drain(&server), 1, "{mode:?}, round {round}");
            poller.delete(&server).unwrap();
        }
    }
}
