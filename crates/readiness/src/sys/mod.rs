//! The platform layer: one module per backend, and the contract they share.
//!
//! # The backend contract
//!
//! Every backend is a type implementing [`Driver`]. The portable layer in
//! `lib.rs` has already checked the arguments when a driver method runs: the
//! key is at most [`MAX_KEY`](crate::MAX_KEY), and the mode and interest are
//! ones the driver said it supports. A driver then promises:
//!
//! - `add` fails with `AlreadyExists` for a source it has registered, `modify`
//!   and `delete` with `NotFound` for one it has not. Identity is the OS
//!   handle (file descriptor, base socket handle). A handle that was closed
//!   while registered and whose number was reused is a new source: `add`
//!   of it works, `modify` and `delete` of it before that fail with
//!   `NotFound`, and the closed registration is not reported after the
//!   close (epoll and kqueue forget closed descriptors by themselves;
//!   poll(2) compares the file's device and inode; the Windows drivers see
//!   `AFD_POLL_LOCAL_CLOSE`). A duplicated descriptor keeps an epoll
//!   registration alive: see docs/ARCHITECTURE.md.
//! - `wait` makes at most one blocking system call lasting at most `timeout`
//!   (`None`: unbounded), stores at most `events.remaining()` events, and
//!   returns `Ok(true)` when it consumed a [`notify`](Driver::notify). It may
//!   return `Ok(false)` with no events early (the portable layer loops until
//!   the deadline) and returns `EINTR` as an error of kind `Interrupted`
//!   (the portable layer retries).
//! - Modes: `Oneshot` reports a registration at most once until `modify`;
//!   `Level` reports on every wait while the condition holds; `Edge` reports
//!   once per new readiness. Interest `NONE` reports nothing at all.
//! - Flags: readable, writable and priority are reported only when asked for.
//!   Read-closed (the peer shut down its sending side) is part of read
//!   readiness: reported when readable is asked for. A dead connection (reset,
//!   failed connect, both directions closed) is reported to any registration
//!   whose interest is not `NONE`: error and/or read-closed plus
//!   write-closed, with readable/writable if asked for, as Linux does. The
//!   table in `docs/ARCHITECTURE.md` gives every backend's mapping.
//! - `delete` guarantees that no wait starting after it returns reports the
//!   source. Memory lent to the kernel for a registration stays alive until
//!   the kernel gives it back, whatever the user does (Windows drivers).
//! - Dropping the driver releases every OS resource it owns and waits for the
//!   kernel to give back any memory lent to it.
//! - `notify` may be called from any thread; several notifications before a
//!   wait wake it once.

use std::io;
use std::time::Duration;

use crate::{Backend, Builder, Events, Interest, Mode};

/// What every backend implements. See the module documentation.
pub(crate) trait Driver {
    fn backend(&self) -> Backend;
    fn supports_level(&self) -> bool;
    fn supports_edge(&self) -> bool;
    fn supports_priority(&self) -> bool;
    fn add(&self, source: Source<'_>, key: usize, interest: Interest, mode: Mode)
    -> io::Result<()>;
    fn modify(
        &self,
        source: Source<'_>,
        key: usize,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()>;
    fn delete(&self, source: Source<'_>) -> io::Result<()>;
    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool>;
    fn notify(&self) -> io::Result<()>;
}

/// Declares the `Poller` enum over the backends built for this OS and
/// forwards [`Driver`] to them.
macro_rules! backends {
    ($($variant:ident($ty:ty)),+ $(,)?) => {
        pub(crate) enum Poller {
            $($variant($ty),)+
        }

        pub(crate) const AVAILABLE: &[Backend] = &[$(Backend::$variant),+];

        impl Poller {
            pub(crate) fn new(options: &Builder) -> io::Result<Poller> {
                match options.backend {
                    $(Backend::$variant => Ok(Poller::$variant(<$ty>::new(options)?)),)+
                    #[allow(unreachable_patterns)]
                    other => Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("the {other} backend is not built for this OS"),
                    )),
                }
            }
        }

        impl Driver for Poller {
            fn backend(&self) -> Backend {
                match self { $(Poller::$variant(_) => Backend::$variant,)+ }
            }
            fn supports_level(&self) -> bool {
                match self { $(Poller::$variant(p) => p.supports_level(),)+ }
            }
            fn supports_edge(&self) -> bool {
                match self { $(Poller::$variant(p) => p.supports_edge(),)+ }
            }
            fn supports_priority(&self) -> bool {
                match self { $(Poller::$variant(p) => p.supports_priority(),)+ }
            }
            #[inline]
            fn add(&self, s: Source<'_>, k: usize, i: Interest, m: Mode) -> io::Result<()> {
                match self { $(Poller::$variant(p) => p.add(s, k, i, m),)+ }
            }
            #[inline]
            fn modify(&self, s: Source<'_>, k: usize, i: Interest, m: Mode) -> io::Result<()> {
                match self { $(Poller::$variant(p) => p.modify(s, k, i, m),)+ }
            }
            #[inline]
            fn delete(&self, s: Source<'_>) -> io::Result<()> {
                match self { $(Poller::$variant(p) => p.delete(s),)+ }
            }
            #[inline]
            fn wait(&self, e: &mut Events, t: Option<Duration>) -> io::Result<bool> {
                match self { $(Poller::$variant(p) => p.wait(e, t),)+ }
            }
            #[inline]
            fn notify(&self) -> io::Result<()> {
                match self { $(Poller::$variant(p) => p.notify(),)+ }
            }
        }
    };
}

cfg_if::cfg_if! {
    if #[cfg(any(target_os = "linux", target_os = "android"))] {
        mod epoll;
        mod poll;
        mod unix;
        pub(crate) use unix::{Source, source};
        pub(crate) use epoll::RawEvents;
        backends!(Epoll(epoll::Poller), Poll(poll::Poller));

        impl Poller {
            pub(crate) fn epoll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
                match self {
                    Poller::Epoll(p) => Some(p.epoll_fd()),
                    _ => None,
                }
            }
        }

        pub(crate) fn default_backend() -> Backend {
            if cfg!(readiness_test_poll_backend) { Backend::Poll } else { Backend::Epoll }
        }
    } else if #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "tvos",
        target_os = "watchos",
        target_os = "visionos",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
    ))] {
        mod kqueue;
        mod poll;
        mod unix;
        pub(crate) use unix::{Source, source};
        pub(crate) use kqueue::RawEvents;
        backends!(Kqueue(kqueue::Poller), Poll(poll::Poller));

        pub(crate) fn default_backend() -> Backend {
            if cfg!(readiness_test_poll_backend) { Backend::Poll } else { Backend::Kqueue }
        }
    } else if #[cfg(windows)] {
        pub(crate) mod windows;
        pub(crate) use windows::{Source, source, RawEvents};
        backends!(Afd(windows::IocpPoller), AfdDirect(windows::IocpPoller));

        impl Poller {
            pub(crate) fn skips_port_on_success(&self) -> bool {
                match self {
                    Poller::Afd(p) | Poller::AfdDirect(p) => p.skips_port_on_success(),
                }
            }
        }

        pub(crate) fn default_backend() -> Backend {
            Backend::Afd
        }
    } else {
        compile_error!("readiness supports Linux, Android, the BSDs, Apple OSes and Windows");
    }
}
