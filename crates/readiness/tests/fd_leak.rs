//! No backend leaks file descriptors: not per registration, not per poller.
//!
//! One test only: the harness runs tests on parallel threads, and any other
//! test in this binary would open and close descriptors under the counts.
#![cfg(target_os = "linux")]

mod util;

use std::io::Write;
use std::time::Duration;

use readiness::{Backend, Events, Interest, Mode, Poller};

use util::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// 10,000 add/delete cycles (with a wait now and then, and a oneshot that
/// fires and is re-armed) on one poller.
fn registration_cycles(backend: Backend) {
    let poller = Poller::with_backend(backend).unwrap();
    let mut events = Events::new();
    let (mut client, server) = tcp_pair();
    client.write_all(b"x").unwrap();
    let udp = udp_socket();
    for i in 0..10_000 {
        poller
            .add(&server, i, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        poller
            .add(&udp, i + 1, Interest::WRITABLE, Mode::Oneshot)
            .unwrap();
        if i % 100 == 0 {
            expect_events(&poller, &mut events, &[(i, READABLE), (i + 1, WRITABLE)]);
            poller
                .modify(&server, i, Interest::BOTH, Mode::Oneshot)
                .unwrap();
            poller.notify().unwrap();
            poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        }
        poller.delete(&server).unwrap();
        poller.delete(&udp).unwrap();
    }
}

/// 1,000 pollers created, used and dropped, some with sources still
/// registered and a notification pending.
fn poller_cycles(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut events = Events::with_capacity(4);
    for i in 0..1_000 {
        let poller = Poller::with_backend(backend).unwrap();
        poller
            .add(&server, 1, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        if i % 2 == 0 {
            poller.notify().unwrap();
        }
        if i % 3 == 0 {
            poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        }
        drop(poller);
    }
    // Dropping a poller never closes what was registered with it.
    client.write_all(b"still open").unwrap();
    let poller = Poller::with_backend(backend).unwrap();
    poller
        .add(&server, 2, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&poller, &mut events, 2, READABLE);
}

#[test]
fn no_descriptor_leaks() {
    let backends = Backend::available();
    assert!(
        backends.contains(&Backend::Epoll) && backends.contains(&Backend::Poll),
        "{backends:?}"
    );
    for &backend in backends {
        // Warm up: one-time allocations (std's lazy state) are not leaks.
        registration_cycles(backend);
        poller_cycles(backend);

        let before = open_fds();
        registration_cycles(backend);
        assert_eq!(open_fds(), before, "{backend}: add/delete cycles leak");
        poller_cycles(backend);
        assert_eq!(open_fds(), before, "{backend}: poller create/drop leaks");
    }
}
