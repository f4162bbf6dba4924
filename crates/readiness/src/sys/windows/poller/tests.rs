//! Lifetime and teardown tests of the Windows backends: what the portable
//! conformance suite cannot see (handle counts, drop with polls in flight,
//! sockets closed under a pending poll).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessHandleCount};

use crate::{Backend, Events, Interest, Mode, Poller};

const BACKENDS: [Backend; 2] = [Backend::Afd, Backend::AfdDirect];

fn handle_count() -> u32 {
    let mut n = 0u32;
    // SAFETY: the pseudo-handle of the current process needs no closing and
    // `n` is a live local.
    let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut n) };
    assert_ne!(ok, 0, "GetProcessHandleCount failed");
    n
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    s.set_nonblocking(true).unwrap();
    (c, s)
}

/// 10,000 add/delete cycles and 1,000 poller drops, each with a poll in
/// flight, leave the process's handle count where it was.
#[test]
fn no_handle_leaks() {
    for backend in BACKENDS {
        let (_c, s) = pair();
        let mut events = Events::new();
        // Warm up: the first poller may load DLLs and open lasting handles.
        drop(Poller::with_backend(backend).unwrap());
        let before = handle_count();
        {
            let poller = Poller::with_backend(backend).unwrap();
            for i in 0..10_000 {
                poller
                    .add(&s, i, Interest::READABLE, Mode::Oneshot)
                    .unwrap();
                poller.delete(&s).unwrap();
                if i % 1000 == 999 {
                    // Let the cancelled polls come back now and then.
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
            if backend == Backend::Afd {
                poller.add(&s, 1, Interest::READABLE, Mode::Level).unwrap();
            } else {
                // A socket stays associated with its first direct poller's
                // port for life: use fresh ones (closed with the poller).
                let (c2, s2) = pair();
                poller.add(&s2, 1, Interest::READABLE, Mode::Level).unwrap();
                poller.add(&c2, 2, Interest::WRITABLE, Mode::Level).unwrap();
                drop(poller);
                drop((c2, s2));
            }
        }
        let after = handle_count();
        assert_eq!(before, after, "{backend}: handles before and after");
    }
}

/// Dropping a poller with many polls in flight (pending, cancelled, and
/// completed but not dequeued) frees everything only after the kernel is
/// done; the sockets keep working.
#[test]
fn drop_with_polls_in_flight() {
    for backend in BACKENDS {
        let pairs: Vec<_> = (0..64).map(|_| pair()).collect();
        for round in 0..20 {
            let poller = Poller::with_backend(backend).unwrap();
            for (i, (c, s)) in pairs.iter().enumerate() {
                if round == 0 || backend == Backend::Afd {
                    poller.add(s, i, Interest::READABLE, Mode::Level).unwrap();
                    // Writable at once: a completion queued, never dequeued.
                    poller
                        .add(c, 1000 + i, Interest::WRITABLE, Mode::Level)
                        .unwrap();
                    if i % 3 == 0 {
                        poller.delete(s).unwrap(); // a cancelled poll in flight
                    }
                }
            }
            drop(poller);
            if backend == Backend::AfdDirect {
                // A direct socket stays with its first port for life.
                break;
            }
        }
        // The sockets still work.
        let (c, s) = &pairs[0];
        (&*c).write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        let mut tries = 0;
        loop {
            match std::io::Read::read(&mut &*s, &mut buf) {
                Ok(1) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 1000 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("{backend}: read after drop: {other:?}"),
            }
        }
    }
}

/// Sockets closed while their polls are pending, while another thread waits:
/// no crash, no event for them, and new sockets (reusing handle values) can
/// be registered and are reported under their own keys.
#[test]
fn close_while_polling() {
    for backend in BACKENDS {
        let poller = Arc::new(Poller::with_backend(backend).unwrap());
        let waiter = {
            let poller = Arc::clone(&poller);
            std::thread::spawn(move || {
                let mut events = Events::new();
                let mut seen = Vec::new();
                loop {
                    poller.wait(&mut events, None).unwrap();
                    if events.is_empty() {
                        return seen; // notified: done
                    }
                    seen.extend(events.iter().map(|e| e.key()));
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
            // peer: so nothing but the close happens to it (closing the peer
            // first would rightly report read-closed).
            for (c, s) in pairs {
                drop(s);
                drop(c);
            }
        }
        // New sockets, likely reusing the closed handle values, work.
        let (mut c, s) = pair();
        poller
            .add(&s, 99_999, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        c.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        poller.notify().unwrap();
        let seen = waiter.join().unwrap();
        assert_eq!(
            seen,
            vec![99_999],
            "{backend}: only the live socket is reported"
        );
        poller.delete(&s).unwrap();
    }
}
