//! [`Timer`]: a future and a stream of deadlines, kept by the reactor.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_core::Stream;

use crate::reactor::Reactor;

/// Tells apart timers with the same deadline.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A timer: a future that completes at a deadline, or a stream of
/// deadlines at a fixed period.
///
/// As a [`Future`] it outputs the deadline it was set for; as a [`Stream`]
/// it yields each deadline in turn (a one-shot timer yields one and ends;
/// [`never`](Timer::never) yields nothing and never ends).
///
/// A timer **never completes early**: it completes only when
/// `Instant::now() >= deadline`, checked when it is polled. It may complete
/// late by the poller's timeout granularity and the scheduling delay of the
/// thread driving the reactor; docs/BENCHMARKS.md has the measured lateness.
/// An interval timer that falls behind yields the missed deadlines one after
/// the other, without waiting, until it has caught up.
///
/// Timers live in the reactor's deadline-ordered map (a `BTreeMap`, so adding
/// and removing one costs `O(log n)`) only while a task waits on them; a
/// dropped timer is removed at once.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use readiness_async::{block_on, Timer};
///
/// let start = Instant::now();
/// let deadline = block_on(Timer::after(Duration::from_millis(5)));
/// assert!(deadline >= start + Duration::from_millis(5));
/// assert!(Instant::now() >= deadline);
/// ```
pub struct Timer {
    /// The next deadline; `None`: the timer will not fire (again).
    when: Option<Instant>,
    /// The period of an interval timer.
    period: Option<Duration>,
    /// While registered: the timer's id and the waker the reactor holds.
    registered: Option<(u64, Waker)>,
    /// A one-shot timer fired: the stream has ended.
    ended: bool,
}

impl Timer {
    /// A timer that never fires.
    pub fn never() -> Timer {
        Timer {
            when: None,
            period: None,
            registered: None,
            ended: false,
        }
    }

    /// A timer that fires once, `duration` from now (never, if that instant
    /// is too far to represent).
    pub fn after(duration: Duration) -> Timer {
        Instant::now()
            .checked_add(duration)
            .map_or_else(Timer::never, Timer::at)
    }

    /// A timer that fires once, at `deadline` (at once if it has passed).
    pub fn at(deadline: Instant) -> Timer {
        Timer {
            when: Some(deadline),
            period: None,
            registered: None,
            ended: false,
        }
    }

    /// A timer that fires every `period`, the first time `period` from now.
    ///
    /// A zero period fires at every poll.
    pub fn interval(period: Duration) -> Timer {
        Instant::now()
            .checked_add(period)
            .map_or_else(Timer::never, |start| Timer::interval_at(start, period))
    }

    /// A timer that fires at `start` and then every `period`.
    pub fn interval_at(start: Instant, period: Duration) -> Timer {
        Timer {
            when: Some(start),
            period: Some(period),
            registered: None,
            ended: false,
        }
    }

    /// Sets the timer to fire once, `duration` from now.
    pub fn set_after(&mut self, duration: Duration) {
        match Instant::now().checked_add(duration) {
            Some(deadline) => self.set_at(deadline),
            None => {
                self.deregister();
                *self = Timer::never();
            }
        }
    }

    /// Sets the timer to fire once, at `deadline`.
    pub fn set_at(&mut self, deadline: Instant) {
        self.deregister();
        *self = Timer::at(deadline);
    }

    /// The deadline the timer fires at next, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.when
    }

    fn deregister(&mut self) {
        if let (Some(when), Some((id, _))) = (self.when, self.registered.take()) {
            Reactor::global().remove_timer(when, id);
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.deregister();
    }
}

impl Stream for Timer {
    type Item = Instant;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        let this = self.get_mut();
        let Some(when) = this.when else {
            return if this.ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        };
        if Instant::now() >= when {
            this.deregister();
            match this.period.and_then(|p| when.checked_add(p)) {
                Some(next) => this.when = Some(next),
                None => {
                    this.when = None;
                    this.ended = this.period.is_none();
                }
            }
            return Poll::Ready(Some(when));
        }
        let reactor = Reactor::global();
        match &mut this.registered {
            Some((_, waker)) if waker.will_wake(cx.waker()) => {}
            Some((id, waker)) => {
                *waker = cx.waker().clone();
                reactor.update_timer(when, *id, waker.clone());
            }
            None => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let waker = cx.waker().clone();
                reactor.insert_timer(when, id, waker.clone());
                this.registered = Some((id, waker));
            }
        }
        Poll::Pending
    }
}

impl Future for Timer {
    type Output = Instant;

    /// Completes at the deadline; a timer that completed (or never fires)
    /// stays pending if polled again.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
        match self.poll_next(cx) {
            Poll::Ready(Some(when)) => Poll::Ready(when),
            _ => Poll::Pending,
        }
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("when", &self.when)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}
