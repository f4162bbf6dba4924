//! Behaviour every backend must show. Runs unchanged on every OS; the backend
//! comes from `READINESS_TEST_BACKEND` (see `util`).

mod util;

#[path = "conformance/parity.rs"]
mod parity;
#[path = "conformance/thread_exit.rs"]
mod thread_exit;

use std::io::{self, ErrorKind, Read};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use readiness::{Backend, Event, Events, Interest, MAX_KEY, Mode, Poller};
use socket2::SockRef;

use util::*;

/// Runs `wait(None)` on another thread; the result comes back on the channel.
fn blocked_wait(poller: &Arc<Poller>) -> mpsc::Receiver<io::Result<Vec<Event>>> {
    let (tx, rx) = mpsc::channel();
    let poller = Arc::clone(poller);
    thread::spawn(move || {
        let mut events = Events::new();
        let result = poller
            .wait(&mut events, None)
            .map(|_| events.iter().copied().collect());
        let _ = tx.send(result);
    });
    rx
}

/// The result of a [`blocked_wait`]; if it does not come within [`LONG`],
/// notifies the poller (to free the thread) and fails with `why`.
#[track_caller]
fn join_wait(
    poller: &Poller,
    rx: &mpsc::Receiver<io::Result<Vec<Event>>>,
    why: &str,
) -> Vec<Event> {
    match rx.recv_timeout(LONG) {
        Ok(result) => result.expect("wait failed"),
        Err(_) => {
            let _ = poller.notify();
            panic!(
                "{} backend: a blocked wait was not woken: {why}",
                poller.backend()
            );
        }
    }
}

/// Lets a thread that was just spawned reach its blocking wait. Not needed
/// for correctness (the result must be the same either way), only to test
/// the interesting interleaving most of the time.
fn let_it_block() {
    thread::sleep(Duration::from_millis(100));
}

// ---------------------------------------------------------------- readiness

#[test]
fn readable_on_arrival_and_not_before() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);

    send(&client, b"hello");
    expect_event(&poller, &mut events, 1, READABLE | !READ_CLOSED | !ERROR);
    let mut buf = [0u8; 16];
    assert_eq!((&server).read(&mut buf).unwrap(), 5);
}

#[test]
fn writable_after_connect() {
    let poller = poller();
    let mut events = Events::new();
    let listener = listener();
    let client = connect_nonblocking(listener.local_addr().unwrap());
    poller
        .add(&client, 1, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 1, WRITABLE | !ERROR);
    assert!(client.take_error().unwrap().is_none());
    let (server, _) = listener.accept().unwrap();
    assert_eq!(client.peer_addr().unwrap(), server.local_addr().unwrap());
}

#[test]
fn writable_only_when_asked_and_readable_only_when_asked() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    send(&client, b"x");
    // Both conditions hold; each registration hears only its own.
    poller
        .add(&server, 1, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 1, WRITABLE | !READABLE);
    poller
        .modify(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 2, READABLE | !WRITABLE);
    poller
        .modify(&server, 3, Interest::BOTH, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 3, READABLE | WRITABLE);
}

#[test]
fn listener_readable_on_incoming_connection() {
    let poller = poller();
    let mut events = Events::new();
    let listener = listener();
    listener.set_nonblocking(true).unwrap();
    poller
        .add(&listener, 9, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);

    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    expect_event(&poller, &mut events, 9, READABLE | !ERROR);
    listener.accept().expect("accept after readiness");
}

/// Waits for the hang-up of `stream`, registered oneshot READABLE under
/// `key`: a readable event with read-closed. Some backends (AFD) report the
/// hang-up only once the data before it has been read, so data-only events
/// are drained and the registration re-armed. Returns the bytes drained.
#[track_caller]
fn expect_read_closed(
    poller: &Poller,
    events: &mut Events,
    stream: &TcpStream,
    key: usize,
) -> usize {
    let deadline = Instant::now() + LONG;
    let mut drained = 0;
    loop {
        let event = expect_event(poller, events, key, READABLE | !ERROR);
        if event.is_read_closed() {
            return drained;
        }
        assert!(
            Instant::now() < deadline,
            "no read-closed within {LONG:?}: {event:?}"
        );
        drained += drain(stream);
        poller
            .modify(stream, key, Interest::READABLE, Mode::Oneshot)
            .unwrap();
    }
}

#[test]
fn peer_close_gives_read_closed() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);

    drop(client);
    expect_event(&poller, &mut events, 1, READABLE | READ_CLOSED | !ERROR);
    assert_eq!((&server).read(&mut [0u8; 8]).unwrap(), 0, "read after FIN");
}

#[test]
fn peer_shutdown_write_gives_read_closed() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();

    send(&client, b"last words");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let drained = expect_read_closed(&poller, &mut events, &server, 1);
    assert_eq!(drained + drain(&server), 10);
    assert_eq!((&server).read(&mut [0u8; 8]).unwrap(), 0);
    // Only the peer's sending side is shut: this side can still send.
    send(&server, b"reply");
    let mut buf = [0u8; 5];
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(Some(LONG)).unwrap();
    (&client).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
}

/// What a reset reports differs in detail (epoll and poll(2): error,
/// read-closed, write-closed and readable; AFD: an abort), but every backend
/// reports an error. The socket is finished: a read fails with
/// `ConnectionReset` (Wine's emulation reads end-of-stream instead).
#[test]
fn peer_reset_gives_error() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);

    reset(client);
    expect_event(&poller, &mut events, 1, ERROR);
    match (&server).read(&mut [0u8; 8]) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(0) => {}
        other => panic!("read after a reset: {other:?}"),
    }
}

#[test]
fn peer_reset_gives_error_with_writable_interest() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 1, WRITABLE | !ERROR);
    reset(client);
    // Writable all along: re-arm until the reset shows, as an error.
    let deadline = Instant::now() + LONG;
    loop {
        poller
            .modify(&server, 2, Interest::WRITABLE, Mode::Oneshot)
            .unwrap();
        let event = expect_event(&poller, &mut events, 2, ANY);
        if event.is_error() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error after a reset: {event:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn failed_connect_gives_error_and_writable() {
    let poller = poller();
    let mut events = Events::new();
    let client = connect_nonblocking(closed_port());
    poller
        .add(&client, 4, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 4, ERROR | WRITABLE);
    assert!(client.peer_addr().is_err(), "connected to a closed port?");
}

#[test]
fn udp_writable_then_readable_on_datagram() {
    let poller = poller();
    let mut events = Events::new();
    let socket = udp_socket();
    poller
        .add(&socket, 1, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 1, WRITABLE | !READABLE | !ERROR);

    poller
        .modify(&socket, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);
    let sender = udp_socket();
    sender
        .send_to(b"ping", socket.local_addr().unwrap())
        .unwrap();
    expect_event(&poller, &mut events, 2, READABLE | !ERROR);
    let mut buf = [0u8; 16];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"ping"[..], sender.local_addr().unwrap())
    );
}

#[test]
fn priority_on_out_of_band_data() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    if !poller.supports_priority() {
        let r = poller.add(&server, 1, Interest::PRIORITY, Mode::Oneshot);
        assert_err(r, ErrorKind::Unsupported);
        let r = poller.add(
            &server,
            1,
            Interest::READABLE | Interest::PRIORITY,
            Mode::Oneshot,
        );
        assert_err(r, ErrorKind::Unsupported);
        return;
    }
    poller
        .add(&server, 1, Interest::PRIORITY, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);
    let sent = SockRef::from(&client).send_out_of_band(b"!").unwrap();
    assert_eq!(sent, 1);
    expect_event(&poller, &mut events, 1, PRIORITY | !ERROR);
}

// -------------------------------------------------------------------- modes

#[test]
fn oneshot_reports_once_until_modified() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();

    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);
    // Still readable, and more data comes: a fired oneshot stays quiet.
    expect_none(&poller, &mut events, SHORT);
    send(&client, b"b");
    expect_none(&poller, &mut events, SHORT);

    // Re-armed, it reports the data already there, once.
    poller
        .modify(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 1, READABLE);
    expect_none(&poller, &mut events, SHORT);
    assert_eq!(drain(&server), 2);
}

#[test]
fn level_reports_until_drained() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    if !poller.supports_level() {
        let r = poller.add(&server, 1, Interest::READABLE, Mode::Level);
        assert_err(r, ErrorKind::Unsupported);
        return;
    }
    poller
        .add(&server, 1, Interest::READABLE, Mode::Level)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);

    send(&client, b"abc");
    for _ in 0..3 {
        expect_event(&poller, &mut events, 1, READABLE);
    }
    // Partly drained: still readable.
    (&server).read_exact(&mut [0u8; 1]).unwrap();
    expect_event(&poller, &mut events, 1, READABLE);
    assert_eq!(drain(&server), 2);
    expect_none(&poller, &mut events, SHORT);

    // And it reports again when new data arrives.
    send(&client, b"d");
    expect_event(&poller, &mut events, 1, READABLE);
    expect_event(&poller, &mut events, 1, READABLE);
}

#[test]
fn edge_reports_once_per_change() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    if !poller.supports_edge() {
        let r = poller.add(&server, 1, Interest::READABLE, Mode::Edge);
        assert_err(r, ErrorKind::Unsupported);
        // Nothing was registered by the failed add.
        assert_err(poller.delete(&server), ErrorKind::NotFound);
        poller
            .add(&server, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        let r = poller.modify(&server, 1, Interest::READABLE, Mode::Edge);
        assert_err(r, ErrorKind::Unsupported);
        return;
    }
    poller
        .add(&server, 1, Interest::READABLE, Mode::Edge)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);

    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);
    // Still readable, but nothing new: no event.
    expect_none(&poller, &mut events, SHORT);
    // New data is a new edge, even though nothing was read.
    send(&client, b"b");
    expect_event(&poller, &mut events, 1, READABLE);
    expect_none(&poller, &mut events, SHORT);

    assert_eq!(drain(&server), 2);
    send(&client, b"c");
    expect_event(&poller, &mut events, 1, READABLE);
    expect_none(&poller, &mut events, SHORT);
}

#[test]
fn edge_oneshot_reports_once_until_modified() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    if !poller.supports_edge() {
        let r = poller.add(&server, 1, Interest::READABLE, Mode::EdgeOneshot);
        assert_err(r, ErrorKind::Unsupported);
        return;
    }
    poller
        .add(&server, 1, Interest::READABLE, Mode::EdgeOneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);
    // Disarmed: a new edge is not reported.
    send(&client, b"b");
    expect_none(&poller, &mut events, SHORT);

    // Re-armed: the pending data is reported once, then nothing more.
    poller
        .modify(&server, 2, Interest::READABLE, Mode::EdgeOneshot)
        .unwrap();
    expect_event(&poller, &mut events, 2, READABLE);
    expect_none(&poller, &mut events, SHORT);
    send(&client, b"c");
    expect_none(&poller, &mut events, SHORT);
}

// ------------------------------------------------------------ registrations

#[test]
fn delete_stops_events() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    if poller.supports_level() {
        poller
            .add(&server, 1, Interest::READABLE, Mode::Level)
            .unwrap();
        send(&client, b"a");
        expect_event(&poller, &mut events, 1, READABLE);
        // Still readable: only the delete stops the reports.
        poller.delete(&server).unwrap();
    } else {
        poller
            .add(&server, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        poller.delete(&server).unwrap();
        send(&client, b"a");
    }
    expect_none(&poller, &mut events, SHORT);
    send(&client, b"b");
    drop(client);
    expect_none(&poller, &mut events, SHORT);
    assert_err(poller.delete(&server), ErrorKind::NotFound);
}

#[test]
fn delete_then_add_again() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    poller.delete(&server).unwrap();
    poller
        .add(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 2, READABLE);

    // Deleting a fired oneshot and adding it again arms it afresh.
    poller.delete(&server).unwrap();
    poller
        .add(&server, 3, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 3, READABLE);
}

#[test]
fn modify_changes_interest_and_key() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);

    poller
        .modify(&server, 2, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 2, WRITABLE | !READABLE);

    poller
        .modify(&server, 3, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);
    send(&client, b"a");
    // Only the new key: an event under key 1 or 2 fails `expect_event`.
    expect_event(&poller, &mut events, 3, READABLE | !WRITABLE);
}

#[test]
fn modify_armed_registration_takes_effect() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    // Armed and not yet fired: the modify replaces it, nothing under key 1.
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    poller
        .modify(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 2, READABLE);
    expect_none(&poller, &mut events, SHORT);
}

#[test]
fn interest_none_reports_nothing_even_after_peer_close() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::NONE, Mode::Oneshot)
        .unwrap();
    send(&client, b"data");
    drop(client);
    expect_none(&poller, &mut events, SHORT);

    poller
        .modify(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let drained = expect_read_closed(&poller, &mut events, &server, 2);
    assert_eq!(drained + drain(&server), 4, "the data before the close");
    // Disarming again silences it.
    poller
        .modify(&server, 3, Interest::NONE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);
}

#[test]
fn interest_none_reports_nothing_even_after_reset() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    let mode = if poller.supports_level() {
        Mode::Level
    } else {
        Mode::Oneshot
    };
    poller.add(&server, 1, Interest::NONE, mode).unwrap();
    reset(client);
    expect_none(&poller, &mut events, SHORT);
    // Several waits: a hang-up or error must not leak through later either.
    expect_none(&poller, &mut events, SHORT);

    poller
        .modify(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 2, ERROR);
}

/// Closing a registered socket is allowed: it yields at most an error event
/// for its key, other registrations go on, and a new socket (which may get
/// the same handle number) can be added afresh. A socket of a test running
/// in parallel may take the closed number over: poll(2) must not report it
/// under the old key either (it checks the file before reporting), so no
/// backend is exempt. `tests/reuse.rs` makes the reuse deterministic.
#[test]
fn closing_a_registered_socket_is_harmless() {
    let poller = poller();
    let mut events = Events::new();
    let (_client1, server1) = tcp_pair();
    let (client2, server2) = tcp_pair();
    poller
        .add(&server1, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    poller
        .add(&server2, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    drop(server1);
    send(&client2, b"a");

    let deadline = Instant::now() + LONG;
    let mut seen2 = false;
    while !seen2 {
        assert!(
            Instant::now() < deadline,
            "the other socket was not reported"
        );
        for e in wait_some(&poller, &mut events) {
            match e.key() {
                1 => assert!(e.is_error(), "closed socket reported: {e:?}"),
                2 => seen2 = true,
                _ => panic!("unexpected {e:?}"),
            }
        }
    }
    // Give a backend the chance to notice the close, then no more of it.
    for _ in 0..3 {
        let n = poller.wait(&mut events, Some(SHORT)).unwrap();
        let ok = |e: &Event| e.key() == 1 && e.is_error();
        assert!(events.iter().all(ok), "{events:?} ({n})");
    }

    let (client3, server3) = tcp_pair();
    poller
        .add(&server3, 3, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client3, b"b");
    expect_event(&poller, &mut events, 3, READABLE);
}

// ------------------------------------------------------------------- notify

#[test]
fn notify_wakes_a_blocked_wait() {
    let poller = Arc::new(poller());
    let rx = blocked_wait(&poller);
    let_it_block();
    poller.notify().unwrap();
    let got = join_wait(&poller, &rx, "by notify");
    assert!(got.is_empty(), "a notification is no event: {got:?}");
}

#[test]
fn notify_before_wait_wakes_the_next_wait() {
    let poller = poller();
    let mut events = Events::new();
    poller.notify().unwrap();
    let start = Instant::now();
    assert_eq!(poller.wait(&mut events, Some(LONG)).unwrap(), 0);
    assert!(start.elapsed() < LONG, "the pending notification was lost");
}

#[test]
fn repeated_notifies_coalesce_into_one_wake() {
    let poller = poller();
    let mut events = Events::new();
    for _ in 0..5 {
        poller.notify().unwrap();
    }
    let start = Instant::now();
    assert_eq!(poller.wait(&mut events, Some(LONG)).unwrap(), 0);
    assert!(start.elapsed() < LONG, "not woken by the notifications");

    // Nothing is left over: the next wait runs to its timeout.
    let start = Instant::now();
    assert_eq!(poller.wait(&mut events, Some(SHORT)).unwrap(), 0);
    assert!(
        start.elapsed() >= SHORT,
        "a second wake from coalesced notifications"
    );

    // And the poller still wakes for a later notification.
    poller.notify().unwrap();
    let start = Instant::now();
    poller.wait(&mut events, Some(LONG)).unwrap();
    assert!(start.elapsed() < LONG, "a later notification was lost");
}

#[test]
fn notify_does_not_hide_events() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    poller.notify().unwrap();
    // Whether the first wait returns the event with the wake-up or alone,
    // the event is not lost.
    expect_event(&poller, &mut events, 1, READABLE);
}

#[test]
fn notify_from_many_threads() {
    const THREADS: usize = 8;
    const EACH: usize = 200;
    let poller = Arc::new(poller());
    let mut events = Events::new();
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let poller = Arc::clone(&poller);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                for _ in 0..EACH {
                    poller.notify().unwrap();
                }
            })
        })
        .collect();
    barrier.wait();
    // Woken (not timed out) while the threads notify.
    let start = Instant::now();
    assert_eq!(poller.wait(&mut events, Some(LONG)).unwrap(), 0);
    assert!(
        start.elapsed() < LONG,
        "not woken by any of the notifications"
    );
    for t in threads {
        t.join().unwrap();
    }
    // At most one wake-up is still pending, whatever the interleaving.
    poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
    let start = Instant::now();
    assert_eq!(poller.wait(&mut events, Some(SHORT)).unwrap(), 0);
    assert!(start.elapsed() >= SHORT, "notifications piled up");

    // The wake-up still works after the storm, from another thread.
    let rx = blocked_wait(&poller);
    let_it_block();
    let notifier = Arc::clone(&poller);
    thread::spawn(move || notifier.notify().unwrap())
        .join()
        .unwrap();
    assert!(join_wait(&poller, &rx, "after many notifications").is_empty());
}

// ----------------------------------------------------------------- timeouts

#[test]
fn zero_timeout_returns_at_once() {
    let poller = poller();
    let mut events = Events::new();
    let (_client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let start = Instant::now();
    assert_eq!(poller.wait(&mut events, Some(Duration::ZERO)).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn zero_timeout_reports_ready_events() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    // The data may need a moment to arrive; each look itself is immediate.
    let deadline = Instant::now() + LONG;
    loop {
        let n = poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        if n > 0 {
            let e = events.iter().next().unwrap();
            assert!(e.key() == 1 && e.is_readable(), "{events:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a zero-timeout wait never saw the data"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn short_timeout_returns_nothing_after_the_timeout() {
    let poller = poller();
    let mut events = Events::new();
    let (_client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    for ms in [1, 50] {
        let timeout = Duration::from_millis(ms);
        let start = Instant::now();
        assert_eq!(poller.wait(&mut events, Some(timeout)).unwrap(), 0);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= timeout,
            "returned after {elapsed:?}, before {timeout:?}"
        );
        assert!(elapsed < LONG, "returned after {elapsed:?}");
    }
}

/// Whether the backend keeps timeouts finer than a millisecond (the
/// granularity table in docs/ARCHITECTURE.md): epoll and kqueue do; poll(2)
/// and Windows round up to whole milliseconds.
fn keeps_sub_millisecond_timeouts(backend: Backend) -> bool {
    matches!(backend, Backend::Epoll | Backend::Kqueue)
}

/// The shortest of many short waits, as polling's precision tests measure
/// it: on a busy machine most waits overshoot, but some come close. The
/// slack is generous (9x); a backend that rounds 100 µs up to 1 ms fails.
#[test]
fn sub_millisecond_timeouts_are_kept_where_promised() {
    let poller = poller();
    let mut events = Events::new();
    let (_client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let timeout = Duration::from_micros(100);
    let mut shortest = (Duration::MAX, Duration::MAX);
    for _ in 0..100 {
        let start = Instant::now();
        assert_eq!(poller.wait(&mut events, Some(timeout)).unwrap(), 0);
        let elapsed = start.elapsed();
        assert!(elapsed >= timeout, "returned after {elapsed:?}");
        shortest.0 = shortest.0.min(elapsed);

        let start = Instant::now();
        let deadline = start + timeout;
        assert_eq!(
            poller.wait_deadline(&mut events, Some(deadline)).unwrap(),
            0
        );
        assert!(Instant::now() >= deadline);
        shortest.1 = shortest.1.min(start.elapsed());
    }
    if keeps_sub_millisecond_timeouts(poller.backend()) {
        let limit = Duration::from_micros(900);
        assert!(
            shortest.0 < limit && shortest.1 < limit,
            "{}: the shortest of 100 waits of {timeout:?} took {:?} (timeout) \
             and {:?} (deadline)",
            poller.backend(),
            shortest.0,
            shortest.1
        );
    }
}

#[test]
fn deadline_in_the_past_returns_at_once() {
    let poller = poller();
    let mut events = Events::new();
    let past = Instant::now();
    thread::sleep(Duration::from_millis(5));
    let start = Instant::now();
    assert_eq!(poller.wait_deadline(&mut events, Some(past)).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn short_deadline_returns_nothing_after_the_deadline() {
    let poller = poller();
    let mut events = Events::new();
    let deadline = Instant::now() + Duration::from_millis(50);
    assert_eq!(
        poller.wait_deadline(&mut events, Some(deadline)).unwrap(),
        0
    );
    assert!(Instant::now() >= deadline);
}

#[test]
fn no_timeout_blocks_until_notify() {
    let poller = Arc::new(poller());
    let mut events = Events::new();
    let delay = Duration::from_millis(200);
    let notifier = Arc::clone(&poller);
    let start = Instant::now();
    let t = thread::spawn(move || {
        thread::sleep(delay);
        notifier.notify().unwrap();
    });
    assert_eq!(poller.wait(&mut events, None).unwrap(), 0);
    assert!(start.elapsed() >= delay, "returned before the notification");
    t.join().unwrap();
}

#[test]
fn huge_timeouts_are_no_timeout() {
    let poller = Arc::new(poller());
    let mut events = Events::new();
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    // `Duration::MAX` overflows `Instant`; a century does not, but overflows
    // every kernel's timeout argument. Both must block, not fail or spin.
    for timeout in [Duration::MAX, century] {
        let delay = Duration::from_millis(100);
        let notifier = Arc::clone(&poller);
        let start = Instant::now();
        let t = thread::spawn(move || {
            thread::sleep(delay);
            notifier.notify().unwrap();
        });
        assert_eq!(poller.wait(&mut events, Some(timeout)).unwrap(), 0);
        assert!(
            start.elapsed() >= delay,
            "{timeout:?}: returned before the notification"
        );
        t.join().unwrap();
    }
}

// -------------------------------------------------------------------- scale

#[test]
fn ten_thousand_sockets_one_active() {
    const N: usize = 10_000;
    const ACTIVE: usize = 7_777;
    let poller = poller();
    let mut events = Events::new();
    let sockets: Vec<UdpSocket> = (0..N).map(|_| udp_socket()).collect();
    for (key, socket) in sockets.iter().enumerate() {
        poller
            .add(socket, key, Interest::READABLE, Mode::Oneshot)
            .unwrap();
    }
    expect_none(&poller, &mut events, SHORT);

    let sender = udp_socket();
    sender
        .send_to(b"x", sockets[ACTIVE].local_addr().unwrap())
        .unwrap();
    // Any other key fails `expect_event` at once.
    expect_event(&poller, &mut events, ACTIVE, READABLE);
    expect_none(&poller, &mut events, SHORT);
    let mut buf = [0u8; 4];
    assert_eq!(sockets[ACTIVE].recv(&mut buf).unwrap(), 1);

    for socket in &sockets {
        poller.delete(socket).unwrap();
    }
}

/// Blocks until `server` has data to read (without reading it).
fn await_data(server: &TcpStream) {
    let deadline = Instant::now() + LONG;
    while !matches!(server.peek(&mut [0u8; 1]), Ok(1..)) {
        assert!(Instant::now() < deadline, "data never arrived");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn capacity_one_returns_one_event_per_wait() {
    let poller = poller();
    let mut events = Events::with_capacity(1);
    assert_eq!(events.capacity(), 1);
    let pairs = [tcp_pair(), tcp_pair()];
    let mode = if poller.supports_level() {
        Mode::Level
    } else {
        Mode::Oneshot
    };
    for (key, (client, server)) in pairs.iter().enumerate() {
        send(client, b"a");
        await_data(server);
        poller.add(server, key, Interest::READABLE, mode).unwrap();
    }
    // Two ready sources: each wait returns one, and two waits return both.
    // In level mode both stay ready, so this holds round after round: the
    // one reported first must not starve the other.
    let rounds = if mode == Mode::Level { 3 } else { 1 };
    for round in 0..rounds {
        let mut keys = Vec::new();
        for _ in 0..2 {
            let got = wait_some(&poller, &mut events);
            assert_eq!(got.len(), 1, "capacity 1, got {got:?}");
            assert!(got[0].is_readable(), "{got:?}");
            keys.push(got[0].key());
        }
        keys.sort_unstable();
        assert_eq!(
            keys,
            [0, 1],
            "round {round} ({mode:?}): two waits gave keys {keys:?}"
        );
    }
    if mode != Mode::Level {
        expect_none(&poller, &mut events, SHORT);
    }
}

#[test]
fn events_buffer_is_cleared_by_each_wait() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);
    assert_eq!(poller.wait(&mut events, Some(Duration::ZERO)).unwrap(), 0);
    assert!(events.is_empty(), "stale events: {events:?}");
}

#[test]
fn huge_capacities_are_clamped_and_work() {
    assert_eq!(Events::with_capacity(0).capacity(), 1);
    assert_eq!(
        Events::with_capacity(Events::MAX_CAPACITY).capacity(),
        Events::MAX_CAPACITY
    );
    let poller = poller();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    for (i, capacity) in [usize::MAX, 1 << 40, Events::MAX_CAPACITY + 1]
        .into_iter()
        .enumerate()
    {
        let mut events = Events::with_capacity(capacity);
        assert_eq!(events.capacity(), Events::MAX_CAPACITY, "{capacity}");
        // The whole buffer goes to the kernel call: it must accept it.
        poller
            .modify(&server, i, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        expect_event(&poller, &mut events, i, READABLE);
    }
}

// ----------------------------------------------------- notification flag

#[test]
fn a_wait_woken_by_notify_says_so() {
    let poller = poller();
    let mut events = Events::new();
    poller.notify().unwrap();
    assert_eq!(poller.wait(&mut events, Some(LONG)).unwrap(), 0);
    assert!(events.is_notified(), "woken by notify, but not notified");
    events.clear();
    assert!(!events.is_notified(), "clear keeps the flag");

    // The flag belongs to the last wait only.
    assert_eq!(poller.wait(&mut events, Some(Duration::ZERO)).unwrap(), 0);
    assert!(!events.is_notified(), "a zero-timeout look says notified");
}

#[test]
fn a_timed_out_wait_is_not_notified() {
    let poller = poller();
    let mut events = Events::new();
    for timeout in [Duration::ZERO, Duration::from_millis(1), SHORT] {
        assert_eq!(poller.wait(&mut events, Some(timeout)).unwrap(), 0);
        assert!(
            !events.is_notified(),
            "{timeout:?}: timed out, yet notified"
        );
    }
    let deadline = Instant::now() + Duration::from_millis(20);
    assert_eq!(
        poller.wait_deadline(&mut events, Some(deadline)).unwrap(),
        0
    );
    assert!(!events.is_notified(), "deadline passed, yet notified");
}

#[test]
fn a_blocked_wait_woken_by_notify_from_another_thread_says_so() {
    let poller = Arc::new(poller());
    let (tx, rx) = mpsc::channel();
    let waiter = Arc::clone(&poller);
    thread::spawn(move || {
        let mut events = Events::new();
        let n = waiter.wait(&mut events, None).unwrap();
        let _ = tx.send((n, events.is_notified()));
    });
    let_it_block();
    poller.notify().unwrap();
    let (n, notified) = rx.recv_timeout(LONG).unwrap_or_else(|_| {
        let _ = poller.notify();
        panic!("a blocked wait was not woken by notify")
    });
    assert_eq!((n, notified), (0, true));
}

#[test]
fn events_without_notify_are_not_notified() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);
    assert!(!events.is_notified(), "no notify was made: {events:?}");
}

/// A notification and ready sources in one wait: the wait may report the
/// notification with the events, or leave it for the next wait (documented
/// on `Events::is_notified`), but it is reported exactly once.
#[test]
fn notify_with_events_is_reported_once() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    send(&client, b"a");
    await_data(&server);
    poller
        .add(&server, 0, Interest::NONE, Mode::Oneshot)
        .unwrap();
    for (round, capacity) in [1, 2, 1024].into_iter().enumerate() {
        let mut small = Events::with_capacity(capacity);
        poller
            .modify(&server, round, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        poller.notify().unwrap();
        let mut notified = 0;
        let mut seen = false;
        let deadline = Instant::now() + LONG;
        while !(seen && notified > 0) {
            assert!(
                Instant::now() < deadline,
                "round {round}: event {seen}, notified {notified}"
            );
            poller.wait(&mut small, Some(LONG)).unwrap();
            notified += usize::from(small.is_notified());
            seen |= small.iter().any(|e| e.key() == round && e.is_readable());
        }
        assert_eq!(notified, 1, "round {round}");
        // Nothing left: not the notification, not the oneshot event.
        assert_eq!(poller.wait(&mut events, Some(SHORT)).unwrap(), 0);
        assert!(!events.is_notified(), "round {round}: notified twice");
    }
}

// ------------------------------------------------------------------ threads

#[test]
fn add_from_another_thread_wakes_a_blocked_wait() {
    let poller = Arc::new(poller());
    let (client, server) = tcp_pair();
    send(&client, b"a");
    let rx = blocked_wait(&poller);
    let_it_block();
    poller
        .add(&server, 5, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let got = join_wait(&poller, &rx, "by an add of a ready socket");
    assert!(
        got.iter().any(|e| e.key() == 5 && e.is_readable()),
        "{got:?}"
    );
    assert!(got.iter().all(|e| e.key() == 5), "{got:?}");
}

#[test]
fn modify_from_another_thread_rearms_for_a_blocked_wait() {
    let poller = Arc::new(poller());
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);

    let rx = blocked_wait(&poller);
    let_it_block();
    poller
        .modify(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let got = join_wait(&poller, &rx, "by a modify re-arming a ready socket");
    assert!(
        got.iter().any(|e| e.key() == 2 && e.is_readable()),
        "{got:?}"
    );
    assert!(got.iter().all(|e| e.key() == 2), "{got:?}");
}

#[test]
fn delete_from_another_thread_while_waiting() {
    let poller = Arc::new(poller());
    let (client1, server1) = tcp_pair();
    let (client2, server2) = tcp_pair();
    poller
        .add(&server1, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    poller
        .add(&server2, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();

    let rx = blocked_wait(&poller);
    let_it_block();
    poller.delete(&server1).unwrap();
    // The deleted socket turns ready first; only the other may be reported.
    send(&client1, b"a");
    send(&client2, b"b");
    let got = join_wait(&poller, &rx, "by the socket still registered");
    assert!(
        got.iter().all(|e| e.key() == 2),
        "deleted socket reported: {got:?}"
    );
    assert!(got.iter().any(|e| e.is_readable()), "{got:?}");

    let mut events = Events::new();
    expect_none(&poller, &mut events, SHORT);
}

#[test]
fn poller_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Poller>();
    send_sync::<Arc<Poller>>();

    const THREADS: usize = 4;
    let poller = Arc::new(poller());
    let mut events = Events::new();
    let pairs: Vec<(TcpStream, TcpStream)> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|key| {
                let poller = &poller;
                s.spawn(move || {
                    let (client, server) = tcp_pair();
                    poller
                        .add(&server, key, Interest::READABLE, Mode::Oneshot)
                        .unwrap();
                    send(&client, b"a");
                    (client, server)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let expected: Vec<_> = (0..THREADS).map(|key| (key, READABLE)).collect();
    expect_events(&poller, &mut events, &expected);
    drop(pairs);
}

#[test]
fn timed_wait_keeps_its_timeout_while_another_thread_waits() {
    let poller = Arc::new(poller());
    let blocked = blocked_wait(&poller);
    let_it_block();

    // A second wait, with a timeout, on a third thread (so that a wait that
    // never returns cannot hang the test).
    let timeout = Duration::from_millis(100);
    let (tx, rx) = mpsc::channel();
    let waiter = Arc::clone(&poller);
    thread::spawn(move || {
        let mut events = Events::new();
        let start = Instant::now();
        let n = waiter.wait(&mut events, Some(timeout));
        let _ = tx.send((n.map_err(|e| e.to_string()), start.elapsed()));
    });
    let result = rx.recv_timeout(LONG);
    // Free the untimed wait in any case (a notification may reach either).
    let notified = poller.notify();
    let (n, elapsed) = result.unwrap_or_else(|_| {
        let _ = poller.notify();
        panic!("a wait with a {timeout:?} timeout did not return while another wait blocked")
    });
    assert_eq!(n, Ok(0));
    assert!(elapsed >= timeout, "returned after {elapsed:?}");
    assert!(
        elapsed < timeout * 3 + Duration::from_millis(200),
        "returned after {elapsed:?}"
    );
    notified.unwrap();
    assert!(join_wait(&poller, &blocked, "by notify").is_empty());
}

/// A timed wait that queues behind another timed wait (poll(2) serialises
/// waits) keeps its own deadline: once its turn comes, it polls for what is
/// left, not for its whole timeout again. The first wait holds the turn for
/// nearly all of the second's timeout, so a second wait that started over
/// would take about twice its timeout; the bound allows 1.5x plus 200 ms.
#[test]
fn timed_wait_queued_behind_a_timed_wait_keeps_its_deadline() {
    let poller = Arc::new(poller());
    let timeout = Duration::from_secs(2);
    let first = {
        let poller = Arc::clone(&poller);
        thread::spawn(move || {
            let mut events = Events::new();
            poller.wait(&mut events, Some(timeout)).unwrap()
        })
    };
    let_it_block();
    let mut events = Events::new();
    let start = Instant::now();
    assert_eq!(poller.wait(&mut events, Some(timeout)).unwrap(), 0);
    let elapsed = start.elapsed();
    assert!(elapsed >= timeout, "returned after {elapsed:?}");
    assert!(
        elapsed < timeout * 3 / 2 + Duration::from_millis(200),
        "{}: a wait of {timeout:?} queued behind another returned after {elapsed:?}",
        poller.backend()
    );
    assert_eq!(first.join().unwrap(), 0);
}

#[test]
fn concurrent_waits_share_the_events() {
    // Two threads wait on one poller: each oneshot event goes to exactly one.
    const N: usize = 6;
    let poller = Arc::new(poller());
    let pairs: Vec<_> = (0..N).map(|_| tcp_pair()).collect();
    for (key, (_, server)) in pairs.iter().enumerate() {
        poller
            .add(server, key, Interest::READABLE, Mode::Oneshot)
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let poller = Arc::clone(&poller);
            let stop = Arc::clone(&stop);
            let tx = tx.clone();
            thread::spawn(move || {
                let mut events = Events::new();
                while !stop.load(Ordering::Acquire) {
                    poller.wait(&mut events, Some(LONG)).unwrap();
                    for e in &events {
                        tx.send(*e).unwrap();
                    }
                }
            })
        })
        .collect();
    for (client, _) in &pairs {
        send(client, b"a");
    }
    let mut keys = Vec::new();
    while keys.len() < N {
        match rx.recv_timeout(LONG) {
            Ok(e) => keys.push(e.key()),
            Err(_) => break,
        }
    }
    // Anything reported twice would show up now.
    thread::sleep(SHORT);
    keys.extend(rx.try_iter().map(|e| e.key()));

    stop.store(true, Ordering::Release);
    for w in waiters {
        while !w.is_finished() {
            poller.notify().unwrap();
            thread::sleep(Duration::from_millis(10));
        }
        w.join().unwrap();
    }
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..N).collect::<Vec<_>>(),
        "events as received: {keys:?}"
    );
}

// ---------------------------------------------------------------- bad input

#[test]
fn add_twice_fails_with_already_exists() {
    let poller = poller();
    let (_client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    assert_err(
        poller.add(&server, 1, Interest::READABLE, Mode::Oneshot),
        ErrorKind::AlreadyExists,
    );
    assert_err(
        poller.add(&server, 2, Interest::WRITABLE, Mode::Oneshot),
        ErrorKind::AlreadyExists,
    );
    // The first registration is intact.
    let mut events = Events::new();
    expect_none(&poller, &mut events, SHORT);
    poller.delete(&server).unwrap();
}

#[test]
fn modify_or_delete_unknown_fails_with_not_found() {
    let poller = poller();
    let (_client, server) = tcp_pair();
    assert_err(
        poller.modify(&server, 1, Interest::READABLE, Mode::Oneshot),
        ErrorKind::NotFound,
    );
    assert_err(poller.delete(&server), ErrorKind::NotFound);
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    poller.delete(&server).unwrap();
    assert_err(poller.delete(&server), ErrorKind::NotFound);
    assert_err(
        poller.modify(&server, 1, Interest::READABLE, Mode::Oneshot),
        ErrorKind::NotFound,
    );
}

#[test]
fn key_above_max_fails_with_invalid_input() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    for key in [MAX_KEY + 1, usize::MAX] {
        assert_err(
            poller.add(&server, key, Interest::READABLE, Mode::Oneshot),
            ErrorKind::InvalidInput,
        );
    }
    // The failed add registered nothing.
    assert_err(poller.delete(&server), ErrorKind::NotFound);

    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    for key in [MAX_KEY + 1, usize::MAX] {
        assert_err(
            poller.modify(&server, key, Interest::READABLE, Mode::Oneshot),
            ErrorKind::InvalidInput,
        );
    }
    // The failed modify left the registration as it was.
    send(&client, b"a");
    expect_event(&poller, &mut events, 1, READABLE);
}

#[test]
fn max_key_is_accepted_and_reported() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, MAX_KEY, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    expect_event(&poller, &mut events, MAX_KEY, READABLE);
    poller
        .modify(&server, MAX_KEY, Interest::NONE, Mode::Oneshot)
        .unwrap();
    expect_none(&poller, &mut events, SHORT);
    poller
        .modify(&server, MAX_KEY, Interest::BOTH, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, MAX_KEY, READABLE | WRITABLE);
    // Key 0 works as well as any.
    poller
        .modify(&server, 0, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 0, READABLE);
}

// ------------------------------------------------------- event constructors

#[test]
fn constructed_events_equal_reported_ones() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    fn hash(e: &Event) -> u64 {
        let mut h = DefaultHasher::new();
        e.hash(&mut h);
        h.finish()
    }

    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 7, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    let got = expect_event(&poller, &mut events, 7, READABLE);
    // Data alone: exactly readable on every backend.
    assert_eq!(got, Event::readable(7));
    assert_eq!(hash(&got), hash(&Event::readable(7)));
    assert_ne!(got, Event::readable(8));
    assert_ne!(got, Event::readable(7).with_error(true));
    assert_eq!(Event::readable(7).native(), 0);

    poller
        .modify(&server, 8, Interest::WRITABLE, Mode::Oneshot)
        .unwrap();
    let got = expect_event(&poller, &mut events, 8, WRITABLE);
    assert_eq!(got, Event::writable(8));
}

#[test]
fn event_builders_set_and_clear_each_flag() {
    let all = Event::none(3)
        .with_readable(true)
        .with_writable(true)
        .with_priority(true)
        .with_read_closed(true)
        .with_write_closed(true)
        .with_error(true);
    assert_eq!(bits(&all), 0b11_1111);
    assert_eq!(all.key(), 3);
    let cleared = all
        .with_readable(false)
        .with_writable(false)
        .with_priority(false)
        .with_read_closed(false)
        .with_write_closed(false)
        .with_error(false);
    assert_eq!(cleared, Event::none(3));
    assert_eq!(bits(&cleared), 0);
    for (i, e) in [
        Event::none(0).with_readable(true),
        Event::none(0).with_writable(true),
        Event::none(0).with_priority(true),
        Event::none(0).with_read_closed(true),
        Event::none(0).with_write_closed(true),
        Event::none(0).with_error(true),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(bits(e), 1 << i, "{e:?}");
    }
    assert_eq!(Event::readable(1), Event::none(1).with_readable(true));
    assert_eq!(Event::writable(1), Event::none(1).with_writable(true));
    const C: Event = Event::readable(5).with_read_closed(true);
    assert!(C.is_readable() && C.is_read_closed() && !C.is_error());
}

/// The native bits are the OS's own, per backend (documented on
/// `Event::native`).
#[test]
fn events_carry_the_native_bits() {
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    send(&client, b"a");
    let got = expect_event(&poller, &mut events, 1, READABLE);
    // The readable bit of each OS: EPOLLIN, POLLIN, bit 16 (EVFILT_READ)
    // for kqueue, AFD_POLL_RECEIVE.
    let readable_bit = match poller.backend() {
        Backend::Epoll | Backend::Poll => 0x1,
        Backend::Kqueue => 1 << 16,
        // AFD_POLL_RECEIVE.
        Backend::Afd | Backend::AfdDirect => 0x1,
        _ => 0x1,
    };
    assert!(
        got.native() & readable_bit != 0,
        "{}: native {:#x} lacks {readable_bit:#x}",
        poller.backend(),
        got.native()
    );

    // Read the byte first: AFD under Wine reports the hang-up only once the
    // data before it is read (docs/WINDOWS.md); this test is about the bits.
    assert_eq!(drain(&server), 1);
    drop(client);
    poller
        .modify(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let got = expect_event(&poller, &mut events, 2, READ_CLOSED);
    // The hang-up bit: EPOLLRDHUP; POLLRDHUP on Linux, POLLHUP elsewhere
    // (either is what poll reports for a FIN); EV_EOF.
    let ok = match poller.backend() {
        Backend::Epoll => got.native() & 0x2000 != 0,
        Backend::Poll => got.native() & (0x2000 | 0x10) != 0,
        Backend::Kqueue => got.native() & 0x8000 != 0,
        // AFD_POLL_DISCONNECT.
        Backend::Afd | Backend::AfdDirect => got.native() & 0x8 != 0,
        _ => got.native() != 0,
    };
    assert!(ok, "{}: native {:#x}", poller.backend(), got.native());
}
