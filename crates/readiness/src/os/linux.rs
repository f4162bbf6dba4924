//! Linux extras.

use std::os::fd::BorrowedFd;

use crate::Poller;

/// Linux-only methods of [`Poller`].
pub trait PollerExt: sealed::Sealed {
    /// The epoll descriptor when the backend is [`Backend::Epoll`](crate::Backend::Epoll),
    /// to nest this poller inside another event loop: it turns readable when
    /// a wait would return events. `None` on other backends.
    fn epoll_fd(&self) -> Option<BorrowedFd<'_>>;
}

impl PollerExt for Poller {
    fn epoll_fd(&self) -> Option<BorrowedFd<'_>> {
        self.driver.epoll_fd()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Poller {}
}
