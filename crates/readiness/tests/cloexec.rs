//! No descriptor of a poller leaks into a program started by another thread
//! while the poller is being created: every descriptor must be created with
//! close-on-exec set atomically (`pipe2(O_CLOEXEC)`, `epoll_create1`,
//! `eventfd(EFD_CLOEXEC)`), not set afterwards with `fcntl`, which leaves a
//! window in which a concurrent fork + exec inherits it.
//!
//! One test only, in its own binary: another test creating descriptors
//! without close-on-exec would be blamed here.
#![cfg(target_os = "linux")]

mod util;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use readiness::{Backend, Poller};

/// The descriptors a child sees (number and what it names), beyond its
/// standard ones and the one `ls` opens to read the directory.
fn inherited() -> Vec<String> {
    let out = Command::new("ls")
        .arg("-l")
        .arg("/proc/self/fd/")
        .output()
        .expect("run ls");
    assert!(out.status.success(), "ls failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (left, target) = l.split_once(" -> ")?;
            let fd = left.rsplit(' ').next()?;
            (!matches!(fd, "0" | "1" | "2" | "3")).then(|| format!("{fd} -> {target}"))
        })
        .collect()
}

#[test]
fn no_poller_descriptor_leaks_into_a_concurrent_exec() {
    const CHILDREN: usize = 300;
    // What the test process itself inherited without close-on-exec (from
    // whatever started it) is passed on to every child: not ours.
    let before = inherited();
    for &backend in Backend::available() {
        let stop = Arc::new(AtomicBool::new(false));
        let maker = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut made = 0usize;
                while !stop.load(Ordering::Acquire) {
                    drop(Poller::with_backend(backend).unwrap());
                    made += 1;
                }
                made
            })
        };
        let mut leaks = Vec::new();
        for _ in 0..CHILDREN {
            leaks.extend(inherited().into_iter().filter(|fd| !before.contains(fd)));
        }
        stop.store(true, Ordering::Release);
        let made = maker.join().unwrap();
        assert!(
            leaks.is_empty(),
            "{backend}: {} of {CHILDREN} children started while {made} pollers were \
             made inherited descriptors: {:?}",
            leaks.len(),
            &leaks[..leaks.len().min(5)]
        );
    }
}
