//! A source registered with a `polling::Poller` for as long as this value
//! lives: polling 3's `add` is an `unsafe fn` whose condition is that the
//! source is deleted from the poller before it is closed, which `Drop` here
//! guarantees (the source is owned, so it cannot be closed earlier).

use std::io;

use polling::{AsSource, Event, PollMode, Poller};

/// A source owned together with its registration.
#[derive(Debug)]
pub(crate) struct Registered<'p, S: AsSource> {
    poller: &'p Poller,
    source: S,
}

impl<'p, S: AsSource> Registered<'p, S> {
    /// Registers `source` with `interest` in `mode`.
    pub(crate) fn new(
        poller: &'p Poller,
        source: S,
        interest: Event,
        mode: PollMode,
    ) -> io::Result<Registered<'p, S>> {
        // SAFETY: `source` is moved into the returned value, whose `Drop`
        // deletes it from `poller` before the source itself is dropped
        // (fields drop after `drop` runs), and the borrow of `poller` keeps
        // the poller alive until then. If `add` fails, nothing is registered
        // and `source` is simply dropped.
        unsafe { poller.add_with_mode(&source.source(), interest, mode)? };
        Ok(Registered { poller, source })
    }

    /// The source.
    pub(crate) fn get(&self) -> &S {
        &self.source
    }

    /// Re-arms or changes the registration.
    pub(crate) fn modify(&self, interest: Event, mode: PollMode) -> io::Result<()> {
        self.poller.modify_with_mode(&self.source, interest, mode)
    }
}

impl<S: AsSource> Drop for Registered<'_, S> {
    fn drop(&mut self) {
        if let Err(e) = self.poller.delete(&self.source) {
            tracing::debug!("polling delete: {e}");
        }
    }
}
