#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

mod event;
pub mod os;
// The only module where `unsafe` may appear: the system calls of each backend.
#[allow(unsafe_code)]
mod sys;

pub use event::{Event, Events, Interest, MAX_KEY, Mode};

use sys::Driver as _;

/// A source that can be registered: anything that lends its OS handle.
///
/// On Unix this is every type implementing [`AsFd`](std::os::fd::AsFd)
/// (sockets, pipes, eventfds, ...); on Windows every type implementing
/// `AsSocket` (`TcpStream`, `TcpListener`, `UdpSocket`, `socket2::Socket`).
/// Registration only borrows the source: the poller never closes it, and a
/// source closed while registered causes no undefined behaviour, only an error
/// or no further events (see `docs/ARCHITECTURE.md`).
#[cfg(unix)]
pub trait AsSource: std::os::fd::AsFd {}
#[cfg(unix)]
impl<T: std::os::fd::AsFd + ?Sized> AsSource for T {}

/// A source that can be registered: anything that lends its OS handle.
///
/// On Unix this is every type implementing `AsFd`; on Windows every type
/// implementing [`AsSocket`](std::os::windows::io::AsSocket) (`TcpStream`,
/// `TcpListener`, `UdpSocket`, `socket2::Socket`).
#[cfg(windows)]
pub trait AsSource: std::os::windows::io::AsSocket {}
#[cfg(windows)]
impl<T: std::os::windows::io::AsSocket + ?Sized> AsSource for T {}

/// The readiness mechanisms this crate knows. Which are built depends on the
/// OS; [`Backend::available`] lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Linux `epoll`, woken by an `eventfd`. The default on Linux and Android.
    Epoll,
    /// `poll(2)`: portable, O(n) in the registered sources. A fallback on Unix.
    Poll,
    /// BSD and Apple `kqueue`. The default there.
    Kqueue,
    /// Windows: `IOCTL_AFD_POLL` on pooled `\Device\Afd` handles, completed
    /// through an I/O completion port. The default on Windows.
    Afd,
    /// Windows: `IOCTL_AFD_POLL` issued on each socket's own base handle, no
    /// `\Device\Afd` handle. See `docs/WINDOWS.md` for the trade-offs.
    AfdDirect,
}

impl Backend {
    /// The backends built for this OS, the default first.
    pub fn available() -> &'static [Backend] {
        sys::AVAILABLE
    }

    /// The backend [`Poller::new`] picks.
    pub fn default_for_os() -> Backend {
        sys::default_backend()
    }

    /// A short lowercase name: `epoll`, `poll`, `kqueue`, `afd`, `afd-direct`.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::Poll => "poll",
            Backend::Kqueue => "kqueue",
            Backend::Afd => "afd",
            Backend::AfdDirect => "afd-direct",
        }
    }

    /// The backend with that [`name`](Self::name) (`direct` is accepted for
    /// `afd-direct`), whether or not it is built for this OS.
    pub fn from_name(name: &str) -> Option<Backend> {
        Some(match name {
            "epoll" => Backend::Epoll,
            "poll" => Backend::Poll,
            "kqueue" => Backend::Kqueue,
            "afd" => Backend::Afd,
            "afd-direct" | "direct" => Backend::AfdDirect,
            _ => return None,
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings for a [`Poller`]. OS-specific settings are added by the extension
/// traits in [`os`].
#[derive(Clone, Debug)]
pub struct Builder {
    backend: Backend,
    /// Sockets grouped on one `\Device\Afd` handle (Windows `Afd` backend).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) afd_group_size: usize,
}

impl Builder {
    /// The default backend and settings.
    pub fn new() -> Builder {
        Builder {
            backend: Backend::default_for_os(),
            afd_group_size: 32,
        }
    }

    /// Use this backend. [`build`](Self::build) fails with
    /// [`ErrorKind::Unsupported`](io::ErrorKind::Unsupported) if it is not
    /// built for this OS.
    pub fn backend(mut self, backend: Backend) -> Builder {
        self.backend = backend;
        self
    }

    /// Creates the poller.
    pub fn build(self) -> io::Result<Poller> {
        Ok(Poller {
            driver: sys::Poller::new(&self)?,
        })
    }
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

/// Waits for readiness on many sources at once.
///
/// `Poller` is `Send + Sync`: sources can be added, modified and deleted from
/// any thread, also while another thread is blocked in [`wait`](Self::wait),
/// and [`notify`](Self::notify) wakes such a wait.
pub struct Poller {
    driver: sys::Poller,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Poller>();
    send_sync::<Events>();
    send_sync::<Event>();
};

impl Poller {
    /// A poller on this OS's default backend ([`Backend::default_for_os`]).
    pub fn new() -> io::Result<Poller> {
        Builder::new().build()
    }

    /// A poller on the given backend; fails with
    /// [`ErrorKind::Unsupported`](io::ErrorKind::Unsupported) if the backend
    /// is not built for this OS.
    pub fn with_backend(backend: Backend) -> io::Result<Poller> {
        Builder::new().backend(backend).build()
    }

    /// Settings beyond the backend.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.driver.backend()
    }

    /// Whether [`Mode::Level`] is available.
    pub fn supports_level(&self) -> bool {
        self.driver.supports_level()
    }

    /// Whether [`Mode::Edge`] and [`Mode::EdgeOneshot`] are available.
    pub fn supports_edge(&self) -> bool {
        self.driver.supports_edge()
    }

    /// Whether [`Interest::PRIORITY`] (out-of-band data) is available.
    pub fn supports_priority(&self) -> bool {
        self.driver.supports_priority()
    }

    /// Registers `source` under `key`.
    ///
    /// Errors: [`AlreadyExists`](io::ErrorKind::AlreadyExists) if the source
    /// is registered already; [`InvalidInput`](io::ErrorKind::InvalidInput)
    /// for a key above [`MAX_KEY`]; [`Unsupported`](io::ErrorKind::Unsupported)
    /// for a mode or interest this backend lacks; the OS error for a closed or
    /// invalid handle.
    #[inline]
    pub fn add(
        &self,
        source: &(impl AsSource + ?Sized),
        key: usize,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        self.check(key, interest, mode)?;
        self.driver.add(sys::source(source), key, interest, mode)
    }

    /// Changes the key, interest or mode of a registered source, and re-arms
    /// a oneshot registration.
    ///
    /// Errors: [`NotFound`](io::ErrorKind::NotFound) if the source is not
    /// registered; otherwise as [`add`](Self::add).
    #[inline]
    pub fn modify(
        &self,
        source: &(impl AsSource + ?Sized),
        key: usize,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        self.check(key, interest, mode)?;
        self.driver.modify(sys::source(source), key, interest, mode)
    }

    /// Unregisters `source`. No event for it is returned by a wait that
    /// starts after this returns.
    ///
    /// Errors: [`NotFound`](io::ErrorKind::NotFound) if it is not registered.
    #[inline]
    pub fn delete(&self, source: &(impl AsSource + ?Sized)) -> io::Result<()> {
        self.driver.delete(sys::source(source))
    }

    /// Waits until at least one event is ready, [`notify`](Self::notify) is
    /// called, or `timeout` passes (`None`: no limit; zero: just look).
    ///
    /// Clears `events`, fills it and returns how many events it holds. A
    /// return with no events means the timeout passed or a notification came;
    /// [`Events::is_notified`] tells which. Interrupted system calls are
    /// retried.
    #[inline]
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        match (timeout, deadline) {
            // A timeout too large to represent is no timeout at all.
            (Some(_), None) => self.wait_inner(events, None, None),
            _ => self.wait_inner(events, timeout, deadline),
        }
    }

    /// Like [`wait`](Self::wait), with an instant to give up at instead of a
    /// duration (`None`: no limit).
    pub fn wait_deadline(
        &self,
        events: &mut Events,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        self.wait_inner(events, timeout, deadline)
    }

    #[inline]
    fn wait_inner(
        &self,
        events: &mut Events,
        mut timeout: Option<Duration>,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        events.clear();
        loop {
            match self.driver.wait(events, timeout) {
                Ok(woken) if woken || !events.is_empty() => {
                    events.notified = woken;
                    return Ok(events.len());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // Nothing to report yet: a spurious wake-up, an internal wake-up,
            // or a kernel timeout that rounded down. Go on until the deadline.
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(0);
                }
                timeout = Some(deadline - now);
            }
        }
    }

    /// Wakes one blocked or the next [`wait`](Self::wait), from any thread.
    /// Several notifications before a wait wakes it once.
    #[inline]
    pub fn notify(&self) -> io::Result<()> {
        self.driver.notify()
    }

    #[inline]
    fn check(&self, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        if key > MAX_KEY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "key above readiness::MAX_KEY is reserved",
            ));
        }
        if mode.is_edge() && !self.supports_edge() {
            return Err(unsupported("edge-triggered mode", self.backend()));
        }
        if mode == Mode::Level && !self.supports_level() {
            return Err(unsupported("level-triggered mode", self.backend()));
        }
        if interest.is_priority() && !self.supports_priority() {
            return Err(unsupported("priority interest", self.backend()));
        }
        Ok(())
    }
}

fn unsupported(what: &str, backend: Backend) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is not supported by the {backend} backend"),
    )
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}
