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
