//! Conformance, continued: registrations made by a thread that has exited
//! since. The thread that adds or re-arms a registration is often not the
//! one that waits (a worker hands a socket to the loop and ends), and its end
//! must not change what is reported.
//!
//! On Windows the thread's `add` or `modify` issues the AFD poll, and what
//! becomes of a poll whose thread exits depends on the system: on Windows
//! since Vista it stays pending (I/O on a handle associated with a completion
//! port is not cancelled at thread exit); on older Windows it is cancelled
//! (`STATUS_CANCELLED`); under Wine 8 its completion is queued with the
//! status block still `STATUS_PENDING` and the reply still holding the
//! request (docs/WINDOWS.md, "Polls whose thread exits"). Under Wine these
//! tests check the last reading; on Windows, the first.
//!
//! The direct backend reports such a lost poll as readiness of what it was
//! armed for (it cannot poll again on its own): at most one event per lost
//! poll that finds nothing to read. Every other backend reports none.

use std::thread;
use std::time::Instant;

use readiness::{Backend, Events, Interest, Mode, Poller};

use super::util::*;

/// Runs `f` on a new thread and returns once that thread has exited.
fn on_a_thread_that_exits<F: FnOnce() + Send>(f: F) {
    thread::scope(|s| s.spawn(f).join().expect("the thread panicked"));
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
