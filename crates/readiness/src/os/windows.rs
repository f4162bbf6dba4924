//! Windows extras.

use std::io;

use crate::{Builder, Poller};

/// Windows-only settings of [`Builder`].
pub trait BuilderExt: sealed::Sealed {
    /// How many sockets share one `\Device\Afd` handle in the
    /// [`Backend::Afd`](crate::Backend::Afd) backend (default 32, at least 1).
    ///
    /// Cancelling a poll costs more the more polls are outstanding on its
    /// handle, so large servers want small groups; each group costs one
    /// handle. Ignored by other backends.
    fn afd_sockets_per_handle(self, sockets: usize) -> Builder;
}

impl BuilderExt for Builder {
    fn afd_sockets_per_handle(mut self, sockets: usize) -> Builder {
        self.afd_group_size = sockets.max(1);
        self
    }
}

/// Windows-only facts about a [`Poller`].
pub trait PollerExt: sealed::Sealed {
    /// Whether polls that the kernel satisfies at once complete without a
    /// trip through the completion port (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`
    /// on the handles the poller issues polls on). It is used only when every
    /// installed TCP and UDP protocol provider is an IFS provider, checked
    /// once per process. `None` on non-Windows backends (there are none on
    /// Windows today).
    fn skips_completion_port_on_success(&self) -> Option<bool>;
}

impl PollerExt for Poller {
    fn skips_completion_port_on_success(&self) -> Option<bool> {
        Some(self.driver.skips_port_on_success())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Builder {}
    impl Sealed for crate::Poller {}
}

/// Whether this process runs under Wine rather than Windows.
///
/// Wine reimplements `\Device\Afd`; `docs/WINDOWS.md` lists where it is known
/// to differ. The library behaves the same either way: this is for reports
/// and test output.
pub fn running_under_wine() -> bool {
    crate::sys::windows::afd::is_wine()
}

/// Whether `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` is safe on this machine:
/// every installed TCP and UDP protocol provider is an IFS provider (no
/// layered provider completes requests behind the flag's back). Pollers use
/// the flag exactly when this is true.
pub fn skip_completion_port_on_success_is_safe() -> bool {
    crate::sys::windows::afd::skip_on_success_is_safe()
}

/// Whether this Windows has `ProcessSocketNotifications` (Windows 10 21H1
/// and later). Informational: no backend uses it yet.
pub fn process_socket_notifications_available() -> bool {
    crate::sys::windows::afd::process_socket_notifications_available()
}

/// How many handles this process holds, read from the system handle table.
///
/// For leak tests and diagnostics: `GetProcessHandleCount` answers 0 under
/// Wine, so this counts the process's entries of
/// `SystemExtendedHandleInformation` instead.
pub fn process_handle_count() -> io::Result<usize> {
    crate::sys::windows::afd::process_handles().map(|h| h.len())
}
