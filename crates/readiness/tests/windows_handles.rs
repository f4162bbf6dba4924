//! Windows: the process's handle count (from the system handle table, which
//! Wine fills correctly, unlike `GetProcessHandleCount`) is the same before
//! and after many pollers and registrations come and go, on both AFD
//! backends. One test in a binary of its own, so that nothing opens or
//! closes handles beside it.
#![cfg(windows)]

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use readiness::os::windows::process_handle_count;
use readiness::{Backend, Events, Interest, Mode, Poller};

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    s.set_nonblocking(true).unwrap();
    (c, s)
}

fn count() -> usize {
    process_handle_count().expect("count handles")
}

#[test]
fn no_handle_leaks() {
    // The counter sees a handle come and go (after a first socket, which
    // sets up Winsock's lasting handles).
    drop(TcpListener::bind("127.0.0.1:0").unwrap());
    let before = count();
    let extra = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(count() > before, "an open socket is not counted");
    drop(extra);
    assert_eq!(count(), before, "a closed socket is still counted");

    for backend in [Backend::Afd, Backend::AfdDirect] {
        let (_c, s) = pair();
        let mut events = Events::new();
        // Warm up: the first poller may load DLLs and open lasting handles.
        drop(Poller::with_backend(backend).unwrap());
        let before = count();
        {
            let poller = Poller::with_backend(backend).unwrap();
            for i in 0..10_000 {
                poller
                    .add(&s, i, Interest::READABLE, Mode::Oneshot)
                    .unwrap();
                poller.delete(&s).unwrap();
                if i % 1000 == 999 {
                    poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
                    assert!(
                        events.is_empty(),
                        "a deleted source was reported: {events:?}"
                    );
                }
            }
        }
        for _ in 0..1_000 {
            let poller = Poller::with_backend(backend).unwrap();
            let mode = if poller.supports_level() {
                Mode::Level
            } else {
                Mode::Oneshot
            };
            // A direct socket stays associated with its first poller's port
            // for life: use fresh ones (closed after the poller).
            let (c2, s2) = pair();
            poller.add(&s2, 1, Interest::READABLE, mode).unwrap();
            poller.add(&c2, 2, Interest::WRITABLE, mode).unwrap();
            drop(poller);
            drop((c2, s2));
        }
        let after = count();
        assert_eq!(before, after, "{backend}: handles before and after");
    }
}
