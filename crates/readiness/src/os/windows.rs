//! Windows extras.

use crate::Builder;

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

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Builder {}
}

/// Whether this process runs under Wine rather than Windows.
///
/// Wine reimplements `\Device\Afd`; `docs/WINDOWS.md` lists where it is known
/// to differ. The library behaves the same either way: this is for reports
/// and test output.
pub fn running_under_wine() -> bool {
    crate::sys::windows::afd::is_wine()
}
