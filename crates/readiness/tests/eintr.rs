//! Signals delivered to a thread blocked in `wait`: the wait neither fails
//! nor returns early, still returns when an event comes, and a timed wait
//! keeps its deadline. Its own binary, because the signal handler is
//! process-wide.
//!
//! The handler comes from `signal-hook`, which installs it with
//! `SA_RESTART`. That does not matter here: signal(7) lists `epoll_wait`,
//! `epoll_pwait`, `poll` and `ppoll` among the calls that are never
//! restarted after a handler, `SA_RESTART` or not; they fail with `EINTR`.
//! The signal is sent to the waiting thread itself (`pthread_kill`), many
//! times, so that most arrive while it is inside the system call.
#![cfg(unix)]

mod util;

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use readiness::{Events, Interest, Mode, Poller};

use util::*;

/// Installs the (no-op but for a flag) handler of `SIGUSR1` once.
fn handler_ran() -> &'static Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&flag))
            .expect("install a SIGUSR1 handler");
        flag
    })
}

/// Sends `SIGUSR1` to `thread` every `every` until `stop`; returns how many
/// were sent.
fn pester<T>(thread: &JoinHandle<T>, every: Duration, stop: &AtomicBool) -> usize {
    let mut sent = 0;
    while !stop.load(Ordering::Acquire) && !thread.is_finished() {
        // SAFETY: `pthread_kill` needs a live thread ID. `thread` is a
        // `JoinHandle` that has not been joined (it is borrowed here), so
        // the thread's ID stays valid even if the thread has just finished.
        let r = unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGUSR1) };
        assert_eq!(r, 0, "pthread_kill failed");
        sent += 1;
        thread::sleep(every);
    }
    sent
}

/// Keeps the poller's registrations changing on another thread (a modify
/// every few microseconds), so that the state lock is often contended when
/// a wait comes back from the kernel: a backend that read `errno` after
/// taking a contended lock could see the lock's `EAGAIN` instead of `EINTR`.
fn churn(poller: &Arc<Poller>, stop: &Arc<AtomicBool>) -> JoinHandle<()> {
    let poller = Arc::clone(poller);
    let stop = Arc::clone(stop);
    thread::spawn(move || {
        let (_client, server) = tcp_pair();
        poller
            .add(&server, 99, Interest::NONE, Mode::Oneshot)
            .unwrap();
        while !stop.load(Ordering::Acquire) {
            poller
                .modify(&server, 99, Interest::NONE, Mode::Oneshot)
                .unwrap();
        }
        poller.delete(&server).unwrap();
    })
}

#[test]
fn signals_do_not_break_an_untimed_wait() {
    let flag = handler_ran();
    let poller = Arc::new(poller());
    let (client, server) = tcp_pair();
    poller
        .add(&server, 1, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&poller, &stop);

    let waiter = {
        let poller = Arc::clone(&poller);
        thread::spawn(move || {
            let mut events = Events::new();
            let result = poller.wait(&mut events, None);
            (result.map_err(|e| (e.kind(), e.to_string())), events)
        })
    };
    // Half a second of signals while the wait blocks (nothing is ready).
    let pestering = AtomicBool::new(false);
    let sent = thread::scope(|s| {
        let pest = s.spawn(|| pester(&waiter, Duration::from_micros(200), &pestering));
        thread::sleep(Duration::from_millis(500));
        pestering.store(true, Ordering::Release);
        pest.join().unwrap()
    });
    assert!(flag.load(Ordering::SeqCst), "the handler never ran");
    assert!(
        !waiter.is_finished(),
        "the wait returned while only signals came (after {sent} signals): {:?}",
        waiter.join().unwrap()
    );
    // The event still ends the wait.
    send(&client, b"a");
    let deadline = Instant::now() + LONG;
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = poller.notify();
            panic!("the wait did not return for the event after {sent} signals");
        }
        thread::sleep(Duration::from_millis(1));
    }
    let (result, events) = waiter.join().unwrap();
    stop.store(true, Ordering::Release);
    churner.join().unwrap();
    assert_eq!(result, Ok(1), "after {sent} signals: {events:?}");
    let e = events.iter().next().unwrap();
    assert!(e.key() == 1 && e.is_readable(), "{events:?}");
}

#[test]
fn signals_do_not_cut_a_timed_wait_short_nor_long() {
    handler_ran();
    let poller = Arc::new(poller());
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&poller, &stop);
    let timeout = Duration::from_millis(500);
    let waiter = {
        let poller = Arc::clone(&poller);
        thread::spawn(move || {
            let mut events = Events::new();
            let start = Instant::now();
            let result = poller.wait(&mut events, Some(timeout));
            (
                result.map_err(|e| (e.kind(), e.to_string())),
                start.elapsed(),
            )
        })
    };
    let never = AtomicBool::new(false);
    let sent = pester(&waiter, Duration::from_micros(200), &never);
    let (result, elapsed) = waiter.join().unwrap();
    stop.store(true, Ordering::Release);
    churner.join().unwrap();
    assert_eq!(result, Ok(0), "after {sent} signals");
    assert!(
        elapsed >= timeout,
        "returned after {elapsed:?} ({sent} signals)"
    );
    // Generous: signals must not restart the whole timeout each time.
    assert!(
        elapsed < timeout * 3 + Duration::from_millis(200),
        "returned after {elapsed:?} ({sent} signals)"
    );
}
