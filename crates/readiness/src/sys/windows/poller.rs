//! The two Windows backends: one engine, two places to issue polls.
//!
//! - [`Target::Grouped`] (`Backend::Afd`): polls are issued on `\Device\Afd`
//!   handles that the poller opens, each shared by up to `group_size`
//!   sockets and associated with the poller's completion port.
//! - [`Target::Direct`] (`Backend::AfdDirect`): each socket's base handle is
//!   associated with the completion port and polls are issued on it, with
//!   `Exclusive` set.
//!
//! # The state of one socket
//!
//! A registered socket is a [`Slot`], keyed by the user's handle value. Its
//! poll is in exactly one phase ([`Phase`]):
//!
//! - `Idle`: no poll of this slot is in the kernel.
//! - `Pending { mask, verified }`: the slot's [`Op`] is in the kernel,
//!   polling for `mask`.
//! - `Cancelling { verified, previous }`: it is in the kernel and a cancel
//!   was asked for; when its completion is dequeued, what is wanted then is
//!   submitted. `previous`: the slot was taken over by a new registration
//!   meanwhile, so the completion (even a close) is about the old socket.
//!
//! `verified` says the poll was issued during a user call (`add`, `modify`,
//! `delete`) that borrowed the live socket. While such a poll is still in the
//! kernel, the socket cannot have been closed: AFD completes a pending poll
//! with `AFD_POLL_LOCAL_CLOSE` when its socket is closed. Polls issued by the
//! poller on its own (re-arming a level registration, parking a fired oneshot,
//! re-submitting after a cancel) carry no such proof: the handle value may
//! have been closed and reused since the poller last heard of it.
//!
//! The registration itself ([`Reg`]) is `Armed`, `Fired` (a oneshot that
//! reported) or `Broken` (a poll failed; an error was reported); interest
//! `NONE` only watches for the close. A slot without a registration is a
//! deleted socket whose poll is still in the kernel (grouped: it is dropped
//! when that poll comes back; direct: a tombstone, see below).
//!
//! # Invariants
//!
//! - **At most one poll per socket is in the kernel, ever.** AFD confuses two
//!   polls on one socket (a poll completes with another's events, or one is
//!   never completed). So a grouped slot changes its mask by cancelling and
//!   submitting the new mask only when the cancelled poll's completion has
//!   been dequeued; a deleted socket keeps its slot until then, and a re-add
//!   of the same handle value waits on that slot. The direct target instead
//!   uses exclusive polls: a new exclusive poll completes the previous one on
//!   the same socket at once, so it replaces it without a cancel.
//! - **Memory lent to the kernel outlives the kernel's use of it.** Every
//!   poll in the kernel owns one strong reference to its [`Op`], made by
//!   `Arc::into_raw` and passed as the request's context; it is taken back
//!   with `Arc::from_raw` only when the completion packet is dequeued (or at
//!   once when the request queues no packet). The kernel writes an op's cells
//!   only while its poll is in the kernel; the poller writes them only while
//!   none is, under the state lock.
//! - **A completion counts only if it is the slot's current poll** (same
//!   `Op`, phase not `Idle`). Completions of replaced, cancelled or
//!   superseded polls are dropped, so a re-armed oneshot never reports a
//!   completion from before the `modify`.
//! - **A completion whose result was never written is no close.** Under
//!   Wine a poll that completes while its issuing thread exits is dequeued
//!   with its status block still `STATUS_PENDING` and its reply holding the
//!   request (whose mask has `LOCAL_CLOSE`): a lost result
//!   ([`afd::result_lost`], `Self::result_lost`). Grouped polls again;
//!   direct reports the armed interest once (it polls only in user calls).
//!   A direct poll cancelled by the system (Windows before Vista, at thread
//!   exit) is treated the same. docs/WINDOWS.md, "Polls whose thread exits".
//! - **Direct: every poll the poller issues on its own is a hazard**: if the
//!   handle value was reused by a socket associated with another completion
//!   port, the completion (with our pointer) would go there. So the direct
//!   target issues polls only in user calls, never re-arms level registrations
//!   (it does not offer `Level`) and never parks fired oneshots. A deleted
//!   direct socket keeps a tombstone: a `LOCAL_CLOSE` poll issued in
//!   `delete`, so the poller learns when the socket dies and can tell whether
//!   a later `add` of the same value is its own socket (still associated with
//!   its port) or another one.
//!
//! # Cost of the common paths
//!
//! - Oneshot: the event's completion leaves the slot `Idle`; the `modify`
//!   that re-arms it (usually before the next wait) issues one poll. A slot
//!   still `Fired` when the next wait starts is parked (grouped only): a
//!   `LOCAL_CLOSE`-only poll, so a close without `delete` is noticed.
//! - Level (grouped only): the slot is polled again when the next wait starts
//!   (the user has handled the event by then), or at once if another thread is
//!   blocked in a wait and would otherwise miss a still-ready socket.
//! - A poll that the kernel satisfies at once on a handle that skips the port
//!   on success is handled inline, without a trip through the port.
//! - A wait that handled completions which issued polls looks at the port
//!   again without blocking, so a socket that is ready at once is reported in
//!   the same wait (also with a small `Events` buffer, where cancellations
//!   would otherwise take the room).

use std::cell::UnsafeCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::windows::io::{AsRawSocket, RawSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{ERROR_INVALID_HANDLE, HANDLE, NTSTATUS, STATUS_PENDING};
use windows_sys::Win32::System::IO::{IO_STATUS_BLOCK, OVERLAPPED_ENTRY};

use super::Source;
use super::afd::{self, Afd, AfdPollInfo, CompletionPort, Submitted};
use crate::event::flag;
use crate::sys::Driver;
use crate::{Backend, Builder, Event, Events, Interest, Mode};

/// Completion key of the wake-up packet posted by `notify`.
const NOTIFY_KEY: usize = usize::MAX;
/// Completion key of the packet that wakes a blocked wait to collect events
/// that a user call produced (see `State::stash`).
const WAKE_KEY: usize = usize::MAX - 1;
/// How long `Drop` waits for cancelled polls to come back before it gives up
/// and leaks their memory (never frees it early).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Entries dequeued per call when draining outside a wait.
const DRAIN_BATCH: usize = 32;
/// Non-blocking looks at the port after a batch, at most, in one wait.
const FOLLOW_UPS: usize = 8;
/// The mask of a parked poll: only the close of the socket.
const PARK: u32 = afd::AFD_POLL_LOCAL_CLOSE;

/// The memory a poll lends the kernel.
#[repr(C)]
struct Op {
    iosb: UnsafeCell<IO_STATUS_BLOCK>,
    info: UnsafeCell<AfdPollInfo>,
    /// The registered socket (the user's handle value): the slot's key.
    socket: RawSocket,
    /// The handle the op's polls are issued on (to cancel it from `Drop`,
    /// whether or not a slot still refers to it).
    issue_on: usize,
    /// Test canary: lent to the kernel (a poll queued, its packet not yet
    /// dequeued).
    #[cfg(test)]
    lent: AtomicBool,
}

// SAFETY: the cells are shared with the kernel under the protocol in the
// module documentation: written by the kernel only while the poll is in the
// kernel, by the poller only while it is not and under the state lock, and
// read only after the completion was dequeued (or the request finished
// inline), under that lock. The raw handle inside `info` is an integer to us.
unsafe impl Send for Op {}
// SAFETY: as above; no access happens through a shared reference outside
// that protocol.
unsafe impl Sync for Op {}

impl Op {
    fn new(socket: RawSocket, base: RawSocket, issue_on: usize) -> Arc<Op> {
        #[cfg(test)]
        canary::LIVE.fetch_add(1, Ordering::Relaxed);
        Arc::new(Op {
            iosb: UnsafeCell::new(afd::status_block()),
            info: UnsafeCell::new(AfdPollInfo::new(base, 0, false)),
            socket,
            issue_on,
            #[cfg(test)]
            lent: AtomicBool::new(false),
        })
    }
}

/// Test canary: an op freed while it is lent to the kernel (its poll's
/// packet not dequeued), or while its status block still says
/// `STATUS_PENDING`, would be memory the kernel may still write. The first
/// check holds under both readings of status-block timing; the second
/// catches a free before the kernel finished under Wine's.
#[cfg(test)]
pub(crate) mod canary {
    use std::sync::atomic::{AtomicIsize, AtomicUsize};
    /// Ops alive now.
    pub(crate) static LIVE: AtomicIsize = AtomicIsize::new(0);
    /// Ops freed while the kernel might still have used them.
    pub(crate) static FREED_PENDING: AtomicUsize = AtomicUsize::new(0);
}

#[cfg(test)]
impl Drop for Op {
    fn drop(&mut self) {
        canary::LIVE.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the last reference is going, so no request of ours holds
        // this op; a status still pending means one did.
        let status = afd::status_of(unsafe { &*self.iosb.get() });
        if status == STATUS_PENDING || self.lent.load(Ordering::Relaxed) {
            canary::FREED_PENDING.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where a registration's polls are issued.
enum Target {
    Grouped { group_size: usize },
    Direct,
}

/// What a slot's poll is doing. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Pending {
        mask: u32,
        verified: bool,
    },
    /// `previous`: the slot was taken over by a new registration (of a
    /// socket that may be another one on the same handle value) after this
    /// poll was issued; its completion says nothing about the new socket.
    Cancelling {
        verified: bool,
        previous: bool,
    },
}

impl Phase {
    fn in_kernel(self) -> bool {
        !matches!(self, Phase::Idle)
    }
    fn verified(self) -> bool {
        match self {
            Phase::Idle => false,
            Phase::Pending { verified, .. } => verified,
            // A poll about a previous socket vouches for nothing now.
            Phase::Cancelling { verified, previous } => verified && !previous,
        }
    }
}

/// Where a registration stands with respect to reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    /// Reports when its interest is ready.
    Armed,
    /// A oneshot that reported; nothing until `modify`.
    Fired,
    /// A poll failed and the error was reported; nothing until `modify`.
    Broken,
}

struct Reg {
    key: usize,
    interest: Interest,
    mode: Mode,
    arm: Arm,
}

struct Slot {
    /// `None`: deleted, kept while its poll is in the kernel (grouped) or as
    /// a tombstone (direct).
    reg: Option<Reg>,
    phase: Phase,
    /// The op of the current poll, or of the next one.
    op: Arc<Op>,
    /// The base handle AFD knows the socket by.
    base: RawSocket,
    /// The handle polls are issued on (an AFD group handle, or `base`).
    issue_on: usize,
    /// The AFD group (grouped target only).
    group: usize,
    /// A poll satisfied at once on `issue_on` queues no packet.
    skip: bool,
    /// In `State::updates`.
    queued: bool,
    /// The wait that last reported this slot: a level re-arm is not issued
    /// by that same wait (it would report the socket twice).
    reported_in: u64,
    /// An event of this slot is in the stash: no level re-arm until it has
    /// been returned (each re-arm would stash another one).
    in_stash: bool,
}

struct Group {
    afd: Afd,
    sockets: usize,
    skip: bool,
}

/// The books on polls in the kernel.
#[derive(Default)]
struct Books {
    /// Polls in the kernel whose completion packet will come and has not
    /// been dequeued.
    in_flight: usize,
    /// The contexts of those polls. Only pointers in this set are taken back
    /// (direct: a user's socket is associated with our port, so a packet of
    /// the user's own overlapped I/O on it could arrive here), and `Drop`
    /// cancels every one of them, also those no slot refers to any more.
    outstanding: HashSet<usize>,
}

#[derive(Default)]
struct State {
    slots: HashMap<RawSocket, Slot>,
    groups: Vec<Group>,
    books: Books,
    /// Slots the next wait polls on the poller's behalf (level re-arms,
    /// parks of fired oneshots).
    updates: Vec<RawSocket>,
    /// Events produced outside a wait (a drain in `add`, a poll satisfied
    /// inline in `add` or `modify`), or beyond a wait's room: the next wait
    /// returns them first. Kept with their socket, so that `modify` and
    /// `delete` can withdraw them.
    stash: Vec<(RawSocket, Event)>,
}

/// Operation counts, to test and measure what the paths cost.
#[derive(Default)]
struct Counters {
    polls: AtomicU64,
    cancels: AtomicU64,
    dequeued: AtomicU64,
    inline: AtomicU64,
    drains: AtomicU64,
    /// Completions dequeued with their result never written (a poll whose
    /// thread exited, under Wine).
    lost: AtomicU64,
}

/// A snapshot of [`Counters`].
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) polls: u64,
    pub(crate) cancels: u64,
    pub(crate) dequeued: u64,
    pub(crate) inline: u64,
    pub(crate) drains: u64,
    pub(crate) lost: u64,
}

pub(crate) struct IocpPoller {
    port: CompletionPort,
    state: Mutex<State>,
    notified: AtomicBool,
    /// `state.updates` or `state.stash` is not empty: the next wait takes the
    /// lock before it blocks.
    pending: AtomicBool,
    /// Threads inside `GetQueuedCompletionStatusEx` right now.
    blocked: AtomicUsize,
    /// Numbers the waits (from 1), see `Slot::reported_in`.
    waits: AtomicU64,
    target: Target,
    /// `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` may be set (every TCP and UDP
    /// provider is an IFS provider).
    skip_safe: bool,
    counters: Counters,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent at every point that can panic (none is
    // expected); never give up on a poisoned lock, the kernel may hold
    // references that only this poller can take back.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The AFD events to ask for an armed interest. `AFD_POLL_CONNECT` is never
/// asked for: `SEND` arrives with it, and it stays set for the life of a
/// connection.
fn afd_mask(interest: Interest) -> u32 {
    use afd::*;
    if interest.is_none() {
        return PARK;
    }
    // Errors and the local close are always asked for.
    let mut m = AFD_POLL_ABORT | AFD_POLL_CONNECT_FAIL | AFD_POLL_LOCAL_CLOSE;
    if interest.is_readable() {
        m |= AFD_POLL_RECEIVE | AFD_POLL_ACCEPT | AFD_POLL_DISCONNECT;
    }
    if interest.is_writable() {
        m |= AFD_POLL_SEND;
    }
    if interest.is_priority() {
        m |= AFD_POLL_RECEIVE_EXPEDITED;
    }
    m
}

/// The portable flags for AFD events, shaped like Linux reports the same
/// conditions, so that portable code sees the same thing everywhere.
/// `send_shut` says the socket's own sending side is shut down.
fn decode(events: u32, interest: Interest, send_shut: bool) -> u8 {
    use afd::*;
    let mut f = 0;
    if interest.is_readable() {
        if events & (AFD_POLL_RECEIVE | AFD_POLL_ACCEPT) != 0 {
            f |= flag::READABLE;
        }
        // A read now returns end-of-stream: readable, and read-closed. With
        // the sending side shut down too, the connection is closed both ways.
        if events & AFD_POLL_DISCONNECT != 0 {
            f |= flag::READABLE | flag::READ_CLOSED;
            if send_shut {
                f |= flag::WRITE_CLOSED;
                if interest.is_writable() {
                    f |= flag::WRITABLE;
                }
            }
        }
    }
    if interest.is_writable() && events & AFD_POLL_SEND != 0 {
        f |= flag::WRITABLE;
    }
    if interest.is_priority() && events & AFD_POLL_RECEIVE_EXPEDITED != 0 {
        f |= flag::PRIORITY;
    }
    // A reset or a failed connect: the socket is dead both ways and a read or
    // write returns the error at once.
    if events & (AFD_POLL_ABORT | AFD_POLL_CONNECT_FAIL) != 0 {
        f |= flag::ERROR | flag::READ_CLOSED | flag::WRITE_CLOSED;
        if interest.is_readable() {
            f |= flag::READABLE;
        }
        if interest.is_writable() {
            f |= flag::WRITABLE;
        }
    }
    f
}

/// Where the events of a call go: the caller's list (a wait), with what does
/// not fit going to the stash, or the stash alone (a user call).
struct Out<'a> {
    list: Option<&'a mut Vec<Event>>,
    capacity: usize,
    /// The wait this is (0: a user call).
    wait: u64,
}

impl Out<'_> {
    fn stash() -> Out<'static> {
        Out {
            list: None,
            capacity: 0,
            wait: 0,
        }
    }
    /// Stores `event`; returns whether it went to the stash.
    fn push(
        &mut self,
        stash: &mut Vec<(RawSocket, Event)>,
        socket: RawSocket,
        event: Event,
    ) -> bool {
        match &mut self.list {
            Some(list) if list.len() < self.capacity => {
                list.push(event);
                false
            }
            _ => {
                stash.push((socket, event));
                true
            }
        }
    }
    fn full(&self) -> bool {
        self.list.as_ref().is_none_or(|l| l.len() >= self.capacity)
    }
    fn len(&self) -> usize {
        self.list.as_ref().map_or(0, |l| l.len())
    }
}

/// What `resolve` found for a handle value a user call names.
enum Found {
    /// No slot: the value is free.
    Vacant,
    /// A slot without a registration (a deleted socket). `alive`: its
    /// verified poll is still in the kernel, so its socket is still open.
    Deleted { alive: bool },
    /// A registration whose verified poll is still in the kernel: the socket
    /// the caller holds is the registered one.
    Alive,
    /// A registration the poller cannot vouch for: no verified poll in the
    /// kernel, so its socket may have been closed and the value reused.
    Unproven,
}

impl IocpPoller {
    fn with_target(target: Target) -> io::Result<IocpPoller> {
        IocpPoller::with_options(target, afd::skip_on_success_is_safe())
    }

    fn with_options(target: Target, skip_safe: bool) -> io::Result<IocpPoller> {
        Ok(IocpPoller {
            port: CompletionPort::new()?,
            state: Mutex::new(State::default()),
            notified: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            blocked: AtomicUsize::new(0),
            waits: AtomicU64::new(1),
            target,
            skip_safe,
            counters: Counters::default(),
        })
    }

    fn direct(&self) -> bool {
        matches!(self.target, Target::Direct)
    }

    /// Whether completions of requests satisfied at once skip the port on
    /// the handles this poller opens (and, direct, sets up).
    pub(crate) fn skips_port_on_success(&self) -> bool {
        self.skip_safe
    }

    #[cfg(test)]
    pub(crate) fn counts(&self) -> Counts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            polls: get(&c.polls),
            cancels: get(&c.cancels),
            dequeued: get(&c.dequeued),
            inline: get(&c.inline),
            drains: get(&c.drains),
            lost: get(&c.lost),
        }
    }

    /// The mask `slot` wants polled now, if any. `park_fired`: a fired
    /// oneshot is parked (only when a wait starts, grouped only).
    fn want(&self, slot: &Slot, park_fired: bool) -> Option<u32> {
        match &slot.reg {
            // A direct tombstone watches for the close; a grouped deleted
            // slot only waits for its poll to come back.
            None => self.direct().then_some(PARK),
            Some(r) if r.interest.is_none() => Some(PARK),
            Some(r) => match r.arm {
                Arm::Armed => Some(afd_mask(r.interest)),
                Arm::Fired => (park_fired && !self.direct()).then_some(PARK),
                Arm::Broken => None,
            },
        }
    }

    /// Finds (or opens) the group handle the polls of a new grouped socket
    /// go to: `(handle, group, skips the port)`.
    fn place_grouped(&self, st: &mut State, group_size: usize) -> io::Result<(usize, usize, bool)> {
        if let Some(i) = st.groups.iter().position(|g| g.sockets < group_size) {
            let g = &st.groups[i];
            return Ok((g.afd.raw() as usize, i, g.skip));
        }
        let afd = Afd::open()?;
        self.port.associate(afd.raw(), 0)?;
        afd::set_completion_modes(afd.raw(), self.skip_safe)?;
        let raw = afd.raw() as usize;
        st.groups.push(Group {
            afd,
            sockets: 0,
            skip: self.skip_safe,
        });
        Ok((raw, st.groups.len() - 1, self.skip_safe))
    }

    /// Sets up the completion modes of a base handle just associated with
    /// our port and says whether it skips the port on success. Its owner
    /// may have set the flag already (it cannot be cleared), so without
    /// setting it ourselves we must read it.
    fn direct_modes(&self, base: RawSocket) -> io::Result<bool> {
        let handle = base as HANDLE;
        afd::set_completion_modes(handle, self.skip_safe)?;
        if self.skip_safe {
            return Ok(true);
        }
        match afd::completion_modes(handle) {
            Ok(flags) => Ok(afd::skips_port(flags)),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "cannot read the socket's completion notification mode ({e}); \
                     the direct backend needs it on this machine (use Backend::Afd)"
                ),
            )),
        }
    }

    /// Issues a poll for `mask` on `slot`. Grouped: no poll of the slot may
    /// be in the kernel. Direct: one may be; the new exclusive poll replaces
    /// it (the old op stays with the kernel until its completion comes).
    ///
    /// Returns the status and events of a poll finished inline (no packet
    /// comes), for the caller to pass to [`Self::finished`].
    fn submit(
        &self,
        slot: &mut Slot,
        books: &mut Books,
        mask: u32,
        verified: bool,
    ) -> io::Result<Option<(NTSTATUS, u32)>> {
        debug_assert!(self.direct() || !slot.phase.in_kernel());
        let previous = if slot.phase.in_kernel() || Arc::strong_count(&slot.op) > 1 {
            // The current op is (or may be) the kernel's: use a new one.
            let fresh = Op::new(slot.op.socket, slot.base, slot.issue_on);
            Some(std::mem::replace(&mut slot.op, fresh))
        } else {
            None
        };
        let info = AfdPollInfo::new(slot.base, mask, self.direct());
        // SAFETY: the op is not in the kernel (fresh, or ours alone: its
        // last poll's reference was taken back), and we hold the state lock.
        unsafe { *slot.op.info.get() = info };
        let context = Arc::into_raw(Arc::clone(&slot.op));
        // SAFETY: `context` is a strong reference owned by the request: it is
        // taken back when the completion is dequeued (`dequeued`, `Drop`), or
        // below when no packet will come, so `iosb` and `info` outlive it.
        let status = unsafe {
            afd::poll(
                slot.issue_on as HANDLE,
                slot.op.info.get(),
                slot.op.iosb.get(),
                context.cast(),
            )
        };
        bump(&self.counters.polls);
        let mut outcome = afd::classify(status, slot.skip);
        if outcome == Submitted::Queued
            && self.direct()
            && status != STATUS_PENDING
            && afd::nt_success(status)
        {
            // Finished at once on a socket we took for one that queues a
            // packet: its owner may have set FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
            // since `add` (it cannot be cleared). Look again.
            if afd::completion_modes(slot.issue_on as HANDLE).is_ok_and(afd::skips_port) {
                slot.skip = true;
                outcome = Submitted::Inline;
            }
        }
        match outcome {
            Submitted::Queued => {
                books.in_flight += 1;
                books.outstanding.insert(context as usize);
                #[cfg(test)]
                slot.op.lent.store(true, Ordering::Relaxed);
                slot.phase = Phase::Pending { mask, verified };
                Ok(None)
            }
            Submitted::Inline => {
                // SAFETY: finished at once and no packet will carry
                // `context`: take the reference back exactly once.
                drop(unsafe { Arc::from_raw(context) });
                bump(&self.counters.inline);
                // SAFETY: the request is finished (the kernel wrote the status
                // block and reply before returning) and the op is ours again.
                let events = unsafe { (*slot.op.info.get()).events() };
                // (A direct poll this one replaced is still in the kernel; its
                // completion comes later and is stale.)
                slot.phase = Phase::Idle;
                Ok(Some((status, events)))
            }
            Submitted::Failed => {
                // SAFETY: the request failed at once: no packet will carry
                // `context`; take the reference back exactly once. The status
                // block is ours again: record the failure in it.
                unsafe {
                    drop(Arc::from_raw(context));
                    (*slot.op.iosb.get()).Anonymous.Status = status;
                }
                if let Some(old) = previous {
                    // The old poll (if any) is untouched: keep its op.
                    slot.op = old;
                }
                Err(afd::nt_error(status))
            }
        }
    }

    /// Asks the kernel to cancel `slot`'s pending poll; its completion comes
    /// later (cancelled, or with its result if it won the race).
    fn cancel(&self, slot: &mut Slot) {
        let Phase::Pending { verified, .. } = slot.phase else {
            return;
        };
        slot.phase = Phase::Cancelling {
            verified,
            previous: false,
        };
        bump(&self.counters.cancels);
        // SAFETY: the op (and its status block) is kept alive by the request's
        // own reference until its completion is dequeued.
        if let Err(e) = unsafe { afd::cancel(slot.issue_on as HANDLE, slot.op.iosb.get()) } {
            // The handle is gone (a direct socket closed): the poll completes
            // by itself with LOCAL_CLOSE.
            tracing::debug!(error = %e, "cancelling an AFD poll failed");
        }
    }

    /// Forgets the slot of `socket` (its socket is closed or it is done
    /// with). A poll of it still in the kernel keeps its op alive and comes
    /// back as a stale completion.
    fn remove(st: &mut State, socket: RawSocket) {
        if let Some(slot) = st.slots.remove(&socket)
            && let Some(g) = st.groups.get_mut(slot.group)
        {
            g.sockets -= 1;
        }
    }

    /// Queues `socket` for a wait to poll on the poller's behalf: the next
    /// wait to start, or a blocked one woken for it (`wake`: a level socket
    /// that another thread blocked in a wait should see while it is ready).
    fn schedule(&self, st: &mut State, socket: RawSocket, wake: bool) {
        if let Some(slot) = st.slots.get_mut(&socket)
            && !slot.queued
        {
            slot.queued = true;
            st.updates.push(socket);
            self.pending.store(true, Ordering::SeqCst);
            if wake && self.blocked.load(Ordering::SeqCst) > 0 {
                let _ = self.port.post(WAKE_KEY);
            }
        }
    }

    /// Polls the queued slots (see [`Self::schedule`]), except those this
    /// same wait reported, which wait for the next one.
    fn flush(&self, st: &mut State, out: &mut Out<'_>) {
        let mut updates = std::mem::take(&mut st.updates);
        let mut kept = 0;
        for i in 0..updates.len() {
            let socket = updates[i];
            let Some(slot) = st.slots.get_mut(&socket) else {
                continue;
            };
            if slot.in_stash || (out.wait != 0 && slot.reported_in == out.wait) {
                // Its last event is not returned yet, or this wait reported
                // it: the next wait re-polls it.
                updates[kept] = socket;
                kept += 1;
                continue;
            }
            slot.queued = false;
            self.poll_for_poller(st, socket, out, 0);
        }
        updates.truncate(kept);
        // Slots scheduled while flushing join those kept.
        updates.append(&mut st.updates);
        st.updates = updates;
        if !st.updates.is_empty() {
            self.pending.store(true, Ordering::SeqCst);
        }
    }

    /// Polls `socket` for what it wants, on the poller's own behalf (no user
    /// call vouches for the socket). A handle that is no longer a socket is
    /// forgotten, never polled: Wine's server asserts on polls that name a
    /// closed handle, and Windows would fail them.
    fn poll_for_poller(&self, st: &mut State, socket: RawSocket, out: &mut Out<'_>, depth: u8) {
        let Some(slot) = st.slots.get_mut(&socket) else {
            return;
        };
        if slot.phase.in_kernel() {
            return; // its completion decides what comes next
        }
        let Some(mask) = self.want(slot, true) else {
            return;
        };
        if !afd::is_socket(socket) {
            Self::remove(st, socket);
            return;
        }
        let State { books, slots, .. } = &mut *st;
        let slot = slots.get_mut(&socket).expect("looked up above");
        match self.submit(slot, books, mask, false) {
            Ok(None) => {}
            Ok(Some((status, events))) => self.finished(st, socket, status, events, out, depth + 1),
            Err(e) => self.submit_failed(st, socket, e, out),
        }
    }

    /// A submit failed at once: forget a closed socket, report an error for
    /// an armed registration once.
    fn submit_failed(&self, st: &mut State, socket: RawSocket, e: io::Error, out: &mut Out<'_>) {
        tracing::debug!(error = %e, "submitting an AFD poll failed");
        if e.raw_os_error() == Some(ERROR_INVALID_HANDLE as i32) || !afd::is_socket(socket) {
            Self::remove(st, socket);
            return;
        }
        let Some(slot) = st.slots.get_mut(&socket) else {
            return;
        };
        match &mut slot.reg {
            Some(reg) => {
                let report = reg.arm == Arm::Armed && !reg.interest.is_none();
                reg.arm = Arm::Broken;
                if report {
                    let event = Event::new(reg.key, flag::ERROR);
                    slot.in_stash |= out.push(&mut st.stash, socket, event);
                }
            }
            None => Self::remove(st, socket),
        }
    }

    /// Handles a finished poll of `socket`'s slot (its current one: the
    /// caller checked), whose op is no longer in the kernel.
    fn finished(
        &self,
        st: &mut State,
        socket: RawSocket,
        status: NTSTATUS,
        events: u32,
        out: &mut Out<'_>,
        depth: u8,
    ) {
        let direct = self.direct();
        let Some(slot) = st.slots.get_mut(&socket) else {
            return;
        };
        let phase = std::mem::replace(&mut slot.phase, Phase::Idle);
        if let Phase::Cancelling { previous: true, .. } = phase {
            // A poll about the socket the slot held before it was taken
            // over: even a close it reports was that socket's. Poll for the
            // new registration.
            self.again(st, socket, out, depth);
            return;
        }
        let was_cancelling = matches!(phase, Phase::Cancelling { .. });
        if events & afd::AFD_POLL_LOCAL_CLOSE != 0 {
            // The user closed the socket: drop it silently.
            Self::remove(st, socket);
            return;
        }
        let Some(reg) = &mut slot.reg else {
            // A deleted slot's poll is back (grouped), or a tombstone's poll
            // ended without a close (direct: failed, or replaced by another
            // process's exclusive poll): nothing is left to watch.
            Self::remove(st, socket);
            return;
        };
        if was_cancelling {
            // Cancelled because what is wanted changed; if it completed first,
            // its events answer the old question. Poll for what is wanted now.
            self.again(st, socket, out, depth);
            return;
        }
        let cancelled = afd::is_cancelled(status);
        if cancelled && direct {
            // The direct backend cancels no poll outside `Drop`: this one was
            // cancelled by the system, as Windows before Vista does when the
            // thread that issued it exits. It says nothing about the socket.
            self.report_armed(st, socket, out);
            return;
        }
        if !afd::nt_success(status) && !cancelled {
            // The poll itself failed: report an error once, then nothing
            // until the registration is modified.
            tracing::debug!(status, "AFD poll failed");
            let report = reg.arm == Arm::Armed && !reg.interest.is_none();
            reg.arm = Arm::Broken;
            if report {
                // The native bits of a failed poll: its NTSTATUS.
                let event = Event::with_native(reg.key, flag::ERROR, status as u32);
                slot.reported_in = out.wait;
                slot.in_stash |= out.push(&mut st.stash, socket, event);
            }
            return;
        }
        let send_shut = events & afd::AFD_POLL_DISCONNECT != 0
            && reg.interest.is_readable()
            && afd::send_shut_down(socket, events & afd::AFD_POLL_SEND != 0);
        let flags = decode(events, reg.interest, send_shut);
        if flags != 0 && reg.arm == Arm::Armed && !reg.interest.is_none() {
            let event = Event::with_native(reg.key, flags, events);
            let oneshot = reg.mode.is_oneshot();
            if oneshot {
                reg.arm = Arm::Fired;
            }
            slot.reported_in = out.wait;
            slot.in_stash |= out.push(&mut st.stash, socket, event);
            if !oneshot {
                // Level: poll again for the next wait (or a blocked one).
                self.schedule(st, socket, true);
            } else if !direct {
                // Oneshot (grouped): park it if it is still fired when the
                // next wait starts, so a close without delete is noticed.
                self.schedule(st, socket, false);
            }
            return;
        }
        if direct {
            // Direct: a poll of ours completed with nothing in it, so another
            // exclusive poll on the socket (another process's) replaced it.
            // Polling again on our own would be a poll no user call vouches
            // for (module documentation): report an error once instead; a
            // `modify` polls again.
            let report = reg.arm == Arm::Armed && !reg.interest.is_none();
            reg.arm = Arm::Broken;
            if report {
                let event = Event::with_native(reg.key, flag::ERROR, events);
                slot.reported_in = out.wait;
                slot.in_stash |= out.push(&mut st.stash, socket, event);
            }
            return;
        }
        // Nothing to report: readiness outside what is asked now (a kept
        // wider poll), or (grouped) a poll that raced its cancel. Poll for
        // what is wanted now.
        self.again(st, socket, out, depth);
    }

    /// Handles the dequeued completion of `socket`'s current poll whose
    /// result was never written (see [`afd::result_lost`]): it says nothing
    /// about the socket, not even that it was closed, and its reply holds no
    /// events. Grouped: poll again for what is wanted now. Direct: polling
    /// on our own is unsound (module documentation), so the registration's
    /// armed interest is reported instead (readiness is a hint: the user's
    /// I/O finds out, and a `modify` polls again); a tombstone is dropped.
    fn result_lost(&self, st: &mut State, socket: RawSocket, out: &mut Out<'_>, depth: u8) {
        tracing::debug!(
            socket,
            "an AFD poll completed without its result (its thread exited)"
        );
        if self.direct() {
            // A tombstone (no registration) is dropped there: its poll ended
            // without telling whether its socket was closed.
            self.report_armed(st, socket, out);
            return;
        }
        let Some(slot) = st.slots.get_mut(&socket) else {
            return;
        };
        slot.phase = Phase::Idle;
        if slot.reg.is_none() {
            // A deleted slot's poll is back: nothing is left to watch.
            Self::remove(st, socket);
        } else {
            // Also a poll being cancelled: what it would have completed with
            // does not matter, what is wanted now is polled.
            self.again(st, socket, out, depth);
        }
    }

    /// Direct: a poll of `socket`'s registration ended without telling
    /// anything about the socket (its result was lost, or the system
    /// cancelled it), and no poll may be issued outside a user call. Reports
    /// the armed interest as readiness, once (the registration is then
    /// fired: direct registrations are oneshot); the user's next I/O tells
    /// whether it is there, and the `modify` that re-arms polls again.
    fn report_armed(&self, st: &mut State, socket: RawSocket, out: &mut Out<'_>) {
        let Some(slot) = st.slots.get_mut(&socket) else {
            return;
        };
        slot.phase = Phase::Idle;
        let Some(reg) = &mut slot.reg else {
            Self::remove(st, socket);
            return;
        };
        if reg.arm != Arm::Armed || reg.interest.is_none() {
            // Nothing to report; a registration of interest `NONE` no longer
            // watches for the close until it is modified.
            return;
        }
        let mut flags = 0;
        if reg.interest.is_readable() {
            flags |= flag::READABLE;
        }
        if reg.interest.is_writable() {
            flags |= flag::WRITABLE;
        }
        if reg.interest.is_priority() {
            flags |= flag::PRIORITY;
        }
        debug_assert!(reg.mode.is_oneshot(), "direct registrations are oneshot");
        reg.arm = Arm::Fired;
        let event = Event::new(reg.key, flags);
        slot.reported_in = out.wait;
        slot.in_stash |= out.push(&mut st.stash, socket, event);
    }

    /// Polls `socket` again for what it wants now, at once, or from the next
    /// wait if this chain of inline completions is getting long.
    fn again(&self, st: &mut State, socket: RawSocket, out: &mut Out<'_>, depth: u8) {
        if depth < 3 {
            self.poll_for_poller(st, socket, out, depth);
        } else {
            self.schedule(st, socket, false);
        }
    }

    /// The reference to its op that a dequeued poll completion carries, or
    /// `None` for a packet that is not one of our polls (a direct socket's
    /// own overlapped I/O), and whether the poll's result was lost (its
    /// status block still said `STATUS_PENDING`: a poll whose thread exited,
    /// under Wine; see [`afd::result_lost`]). Call once per dequeued packet
    /// with a non-null overlapped pointer, under the state lock (or with the
    /// state owned, in `Drop`); the in-flight count is the caller's to
    /// adjust.
    fn take_back(books: &mut Books, entry: &OVERLAPPED_ENTRY) -> Option<(Arc<Op>, bool)> {
        let context = entry.lpOverlapped as usize;
        if !books.outstanding.remove(&context) {
            return None;
        }
        // SAFETY: the pointer was just found in `outstanding`, so it is the
        // context of a poll we issued whose packet had not been dequeued: an
        // `Arc<Op>` reference made by `Arc::into_raw` in `submit`. Removing it
        // from the set first means the reference is taken back once.
        let op = unsafe { Arc::from_raw(context as *const Op) };
        // SAFETY: the packet was dequeued, so the kernel is done with the
        // status block; the poller touches op cells only under the state lock
        // (or with the state owned), which the caller holds.
        let lost = unsafe { afd::result_lost(op.iosb.get()) };
        #[cfg(test)]
        op.lent.store(false, Ordering::Relaxed);
        Some((op, lost))
    }

    /// Handles one dequeued packet. Returns whether it was a notification.
    fn dequeued(&self, st: &mut State, entry: &OVERLAPPED_ENTRY, out: &mut Out<'_>) -> bool {
        if entry.lpOverlapped.is_null() {
            if entry.lpCompletionKey == NOTIFY_KEY {
                self.notified.store(false, Ordering::Release);
                return true;
            }
            return false; // WAKE_KEY: the caller collects the stash
        }
        let Some((op, lost)) = Self::take_back(&mut st.books, entry) else {
            tracing::warn!("ignored a completion that is not an AFD poll of this poller");
            return false;
        };
        st.books.in_flight -= 1;
        bump(&self.counters.dequeued);
        if lost {
            bump(&self.counters.lost);
        }
        let socket = op.socket;
        let current = st
            .slots
            .get(&socket)
            .is_some_and(|s| s.phase.in_kernel() && Arc::ptr_eq(&s.op, &op));
        if !current {
            return false; // replaced, superseded or forgotten since
        }
        if lost {
            drop(op); // the kernel's reference: the op may be reused now
            self.result_lost(st, socket, out, 0);
            return false;
        }
        // SAFETY: the completion was dequeued, so the kernel is done with the
        // cells, and we hold the state lock.
        let (status, events) = unsafe {
            let status = afd::status_of(&*op.iosb.get());
            let events = if afd::nt_success(status) {
                (*op.info.get()).events()
            } else {
                0
            };
            (status, events)
        };
        drop(op); // the kernel's reference: the op may be reused now
        self.finished(st, socket, status, events, out, 0);
        false
    }

    /// Dequeues and handles, without blocking, everything the port holds
    /// now, so that a user call sees completions that have happened (on
    /// Windows the status block may be written only at dequeue). Events go
    /// to the stash; a notification dequeued here is posted again.
    fn drain(&self, st: &mut State) {
        bump(&self.counters.drains);
        let mut entries = [OVERLAPPED_ENTRY::default(); DRAIN_BATCH];
        let mut out = Out::stash();
        let (mut notify, mut wake) = (false, false);
        // Until the port is empty (a bound only against a flood of packets
        // arriving as fast as they are taken).
        for _ in 0..1 << 16 {
            let n = match self.port.get_many(&mut entries, Some(Duration::ZERO)) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "draining the completion port failed");
                    break;
                }
            };
            for entry in &entries[..n] {
                notify |= self.dequeued(st, entry, &mut out);
                wake |= entry.lpOverlapped.is_null() && entry.lpCompletionKey == WAKE_KEY;
            }
            if n < entries.len() {
                break;
            }
        }
        // Packets meant for a wait go back for one.
        if notify {
            let _ = self.notify();
        }
        if wake {
            let _ = self.port.post(WAKE_KEY);
        }
    }

    /// What a user call finds for the handle value `socket`, after draining
    /// the port (see [`Found`]).
    fn resolve(&self, st: &mut State, socket: RawSocket) -> Found {
        self.drain(st);
        let Some(slot) = st.slots.get(&socket) else {
            return Found::Vacant;
        };
        // A verified poll still in the kernel proves the socket open: had it
        // been closed, AFD would have completed the poll, and the drain (or a
        // concurrent wait, whose dequeue writes the status block) would have
        // taken the packet.
        let alive = slot.phase.verified() && {
            // SAFETY: the op is alive (the slot holds it) and its poll was
            // issued by `submit`; its cells are only read.
            unsafe { afd::finished_events(slot.op.iosb.get(), slot.op.info.get()) }.is_none()
        };
        match (&slot.reg, alive) {
            (None, alive) => Found::Deleted { alive },
            (Some(_), true) => Found::Alive,
            (Some(_), false) => Found::Unproven,
        }
    }

    /// Whether `slot`'s poll has visibly finished with `LOCAL_CLOSE` (the
    /// status block is written before dequeue under Wine, and by a concurrent
    /// wait's dequeue on Windows): the socket was closed and the caller's
    /// handle is another one.
    fn visibly_closed(slot: &Slot) -> bool {
        slot.phase.in_kernel() && {
            // SAFETY: the op is alive (the slot holds it) and its poll was
            // issued by `submit`; its cells are only read.
            unsafe { afd::finished_events(slot.op.iosb.get(), slot.op.info.get()) }
                .is_some_and(|e| e & afd::AFD_POLL_LOCAL_CLOSE != 0)
        }
    }

    /// Checks, for `modify` and `delete`, that `socket` names a live
    /// registration: `NotFound` if there is none, or if the poller can see
    /// that its socket was closed: its poll finished with `LOCAL_CLOSE`
    /// (then the registration is dropped here; the completion, wherever it
    /// is, finds no registration and drops the slot), or, direct, the socket
    /// behind the value is associated with no port (ours was, so this one is
    /// another). No drain on this path (it would cost a system call per
    /// re-arm), so on Windows a close whose completion is not yet dequeued is
    /// not seen (docs/WINDOWS.md).
    fn still_registered(&self, st: &mut State, socket: RawSocket) -> io::Result<()> {
        let not_found = || io::Error::from(io::ErrorKind::NotFound);
        let slot = match st.slots.get_mut(&socket) {
            Some(slot) if slot.reg.is_some() => slot,
            _ => return Err(not_found()),
        };
        if Self::visibly_closed(slot) {
            slot.reg = None;
            Self::purge_stash(st, socket);
            return Err(not_found());
        }
        if self.direct() {
            // A direct poll issued on a socket of no port would complete to
            // no port (memory lent for good, the event lost): ask the kernel
            // whether the socket behind the value has a port.
            match self.port.associate(slot.base as HANDLE, 0) {
                Ok(()) => {
                    // It had none: not the socket this poller associated. It
                    // is associated with this poller's port now, for good, so
                    // keep it as a tombstone (a close-watching poll, issued
                    // while the caller vouches for it): a later `add` of it
                    // then finds it this poller's.
                    Self::purge_stash(st, socket);
                    let slot = st.slots.get_mut(&socket).expect("looked up above");
                    let old = std::mem::replace(
                        &mut slot.op,
                        Op::new(socket, slot.base, slot.base as usize),
                    );
                    slot.reg = None;
                    slot.phase = Phase::Idle;
                    // The old op, if in the kernel, is about the closed
                    // socket: counted, cancelled by `Drop`, stale on return.
                    drop(old);
                    slot.skip = match self.direct_modes(slot.base) {
                        Ok(skip) => skip,
                        Err(_) => {
                            Self::remove(st, socket);
                            return Err(not_found());
                        }
                    };
                    let State { slots, books, .. } = &mut *st;
                    let slot = slots.get_mut(&socket).expect("looked up above");
                    if !matches!(self.submit(slot, books, PARK, true), Ok(None)) {
                        Self::remove(st, socket);
                    }
                    return Err(not_found());
                }
                Err(e) if afd::is_already_associated(&e) => {}
                Err(e) if e.raw_os_error() == Some(ERROR_INVALID_HANDLE as i32) => {
                    Self::forget(st, socket);
                    return Err(not_found());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drops the registration of `socket`: the slot goes now if no poll of
    /// it is in the kernel, else when that poll comes back.
    fn forget(st: &mut State, socket: RawSocket) {
        Self::purge_stash(st, socket);
        match st.slots.get_mut(&socket) {
            Some(slot) if slot.phase.in_kernel() => slot.reg = None,
            Some(_) => Self::remove(st, socket),
            None => {}
        }
    }

    /// Withdraws stashed events of `socket` (its registration changed, or the
    /// value names another socket now).
    fn purge_stash(st: &mut State, socket: RawSocket) {
        st.stash.retain(|(s, _)| *s != socket);
        if let Some(slot) = st.slots.get_mut(&socket) {
            slot.in_stash = false;
        }
    }

    /// After a user call: make the next wait collect the stash, and wake a
    /// blocked one to do it. `pending` is stored before `blocked` is read,
    /// both SeqCst, the mirror image of `wait` (no lost wake-up).
    fn after_user_call(&self, st: &State) {
        if !st.stash.is_empty() {
            self.pending.store(true, Ordering::SeqCst);
            if self.blocked.load(Ordering::SeqCst) > 0 {
                let _ = self.port.post(WAKE_KEY);
            }
        }
    }

    /// Issues the first poll of a new registration on `slot` (verified: the
    /// caller borrowed the live socket); on failure nothing of `reg` stays.
    fn arm_new(
        &self,
        st: &mut State,
        socket: RawSocket,
        reg: Reg,
        out: &mut Out<'_>,
    ) -> io::Result<()> {
        let State { slots, books, .. } = &mut *st;
        let slot = slots.get_mut(&socket).expect("the caller's slot");
        let previous = slot.reg.replace(reg);
        let mask = self.want(slot, false).expect("armed or parked");
        match self.submit(slot, books, mask, true) {
            Ok(None) => Ok(()),
            Ok(Some((s, e))) => {
                self.finished(st, socket, s, e, out, 0);
                Ok(())
            }
            Err(e) => {
                slot.reg = previous;
                Err(e)
            }
        }
    }

    fn add_grouped(
        &self,
        st: &mut State,
        socket: RawSocket,
        base: RawSocket,
        reg: Reg,
        group_size: usize,
    ) -> io::Result<()> {
        let mut out = Out::stash();
        if st.slots.contains_key(&socket) {
            match self.resolve(st, socket) {
                Found::Vacant => {}
                Found::Alive => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
                // A deleted slot whose poll is still in the kernel (the same
                // socket re-added, or a new one on a closed socket's value),
                // or a registration that may be a closed socket's: take the
                // slot over. With a poll in the kernel, the new registration
                // is polled when that poll comes back (one poll per socket).
                Found::Deleted { .. } | Found::Unproven => {
                    Self::purge_stash(st, socket);
                    let slot = st.slots.get_mut(&socket).expect("resolved");
                    // The caller's socket: its base may differ (a layered
                    // provider) from the closed one's.
                    slot.base = base;
                    if slot.phase == Phase::Idle {
                        return self.arm_new(st, socket, reg, &mut out);
                    }
                    slot.reg = Some(reg);
                    self.cancel(slot);
                    if let Phase::Cancelling { verified, .. } = slot.phase {
                        slot.phase = Phase::Cancelling {
                            verified,
                            previous: true,
                        };
                    }
                    return Ok(());
                }
            }
        }
        let (issue_on, group, skip) = self.place_grouped(st, group_size)?;
        let mut slot = Slot {
            reg: Some(reg),
            phase: Phase::Idle,
            op: Op::new(socket, base, issue_on),
            base,
            issue_on,
            group,
            skip,
            queued: false,
            reported_in: 0,
            in_stash: false,
        };
        let mask = self.want(&slot, false).expect("armed or parked");
        let done = self.submit(&mut slot, &mut st.books, mask, true)?;
        st.groups[group].sockets += 1;
        st.slots.insert(socket, slot);
        if let Some((s, e)) = done {
            self.finished(st, socket, s, e, &mut out, 0);
        }
        Ok(())
    }

    fn add_direct(
        &self,
        st: &mut State,
        socket: RawSocket,
        base: RawSocket,
        reg: Reg,
    ) -> io::Result<()> {
        let mut out = Out::stash();
        let fresh = match self.port.associate(base as HANDLE, 0) {
            Ok(()) => true,
            Err(e) if afd::is_already_associated(&e) => false,
            Err(e) => return Err(e),
        };
        if fresh {
            // No port had this socket: whatever slot the value has belongs to
            // a socket closed since. Its poll, if any, is still counted (and
            // cancelled by `Drop`) and comes back as a stale completion.
            Self::purge_stash(st, socket);
            Self::remove(st, socket);
            let skip = self.direct_modes(base)?;
            let mut slot = Slot {
                reg: Some(reg),
                phase: Phase::Idle,
                op: Op::new(socket, base, base as usize),
                base,
                issue_on: base as usize,
                group: usize::MAX,
                skip,
                queued: false,
                reported_in: 0,
                in_stash: false,
            };
            let mask = self.want(&slot, false).expect("armed or parked");
            let done = self.submit(&mut slot, &mut st.books, mask, true)?;
            st.slots.insert(socket, slot);
            if let Some((s, e)) = done {
                self.finished(st, socket, s, e, &mut out, 0);
            }
            return Ok(());
        }
        // Associated with a port before: ours only if this poller still
        // vouches for the socket.
        let busy = |why: &str| {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "the socket is associated with an I/O completion port {why}; \
                     the direct backend needs it for itself (use Backend::Afd)"
                ),
            )
        };
        if !st.slots.contains_key(&socket) {
            return Err(busy("that is not this poller's"));
        }
        match self.resolve(st, socket) {
            Found::Alive => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            Found::Deleted { alive: true } => {
                // Deleted from this poller, still open and ours: re-arm it. The
                // exclusive poll replaces the tombstone's; if it cannot be
                // issued, the tombstone stays.
                Self::purge_stash(st, socket);
                self.arm_new(st, socket, reg, &mut out)
            }
            Found::Vacant | Found::Deleted { alive: false } => Err(busy(
                "that is not this poller's (this poller's socket of that value was closed)",
            )),
            Found::Unproven => Err(busy(
                "and this poller's registration of the same handle value has no poll outstanding, \
                 so whether it is the same socket cannot be told (delete before closing)",
            )),
        }
    }
}

impl Driver for IocpPoller {
    fn backend(&self) -> Backend {
        match self.target {
            Target::Grouped { .. } => Backend::Afd,
            Target::Direct => Backend::AfdDirect,
        }
    }
    fn supports_level(&self) -> bool {
        // Level re-arms are polls the poller issues on its own; the direct
        // target issues none (see the module documentation).
        !self.direct()
    }
    fn supports_edge(&self) -> bool {
        // AFD polls are level-triggered; true edge triggering would need to
        // see every read and write hit `WouldBlock`. See docs/WINDOWS.md.
        false
    }
    fn supports_priority(&self) -> bool {
        true
    }

    fn add(
        &self,
        source: Source<'_>,
        key: usize,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        let socket = source.as_raw_socket();
        // Outside the lock: a query on the caller's live socket.
        let base = afd::base_socket(socket)?;
        let reg = Reg {
            key,
            interest,
            mode,
            arm: Arm::Armed,
        };
        let mut st = lock(&self.state);
        let result = match self.target {
            Target::Grouped { group_size } => {
                self.add_grouped(&mut st, socket, base, reg, group_size)
            }
            Target::Direct => self.add_direct(&mut st, socket, base, reg),
        };
        self.after_user_call(&st);
        result
    }

    fn modify(
        &self,
        source: Source<'_>,
        key: usize,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        let socket = source.as_raw_socket();
        let mut st = lock(&self.state);
        if let Err(e) = self.still_registered(&mut st, socket) {
            self.after_user_call(&st);
            return Err(e);
        }
        // An event not yet returned belongs to the arming this replaces.
        Self::purge_stash(&mut st, socket);
        let direct = self.direct();
        let State { slots, books, .. } = &mut *st;
        let slot = slots.get_mut(&socket).expect("checked above");
        let previous = slot.reg.replace(Reg {
            key,
            interest,
            mode,
            arm: Arm::Armed,
        });
        let want = self.want(slot, false).expect("armed or parked");
        let submitted = match slot.phase {
            Phase::Idle => self.submit(slot, books, want, true),
            // The poll in the kernel asks for just this: keep it.
            Phase::Pending { mask, .. } if mask == want => Ok(None),
            // It asks for more (grouped): keep it; a completion with nothing
            // wanted in it polls again for `want`.
            Phase::Pending { mask, .. } if !direct && want & !mask == 0 => Ok(None),
            // Direct: a new exclusive poll replaces the one in the kernel.
            Phase::Pending { .. } if direct => self.submit(slot, books, want, true),
            // Grouped: cancel; the completion of the cancelled poll submits
            // what is wanted then.
            Phase::Pending { .. } => {
                self.cancel(slot);
                Ok(None)
            }
            Phase::Cancelling { .. } => Ok(None),
        };
        let result = match submitted {
            Ok(None) => Ok(()),
            Ok(Some((s, e))) => {
                let mut out = Out::stash();
                self.finished(&mut st, socket, s, e, &mut out, 0);
                Ok(())
            }
            Err(e) => {
                // The registration stays as it was.
                slot.reg = previous;
                Err(e)
            }
        };
        self.after_user_call(&st);
        result
    }

    fn delete(&self, source: Source<'_>) -> io::Result<()> {
        let socket = source.as_raw_socket();
        let mut st = lock(&self.state);
        if let Err(e) = self.still_registered(&mut st, socket) {
            self.after_user_call(&st);
            return Err(e);
        }
        Self::purge_stash(&mut st, socket);
        let State { slots, books, .. } = &mut *st;
        let slot = slots.get_mut(&socket).expect("checked above");
        slot.reg = None;
        if self.direct() {
            // A tombstone: keep watching for the close, with a poll issued
            // now (this call vouches for the socket).
            let parked = matches!(slot.phase, Phase::Pending { mask: PARK, .. });
            if !parked {
                match self.submit(slot, books, PARK, true) {
                    Ok(None) => {}
                    // Finished at once (closed already) or failed: nothing to
                    // watch. A poll of it still in the kernel (the one the
                    // failed park did not replace) drops the slot when it
                    // comes back.
                    Ok(Some(_)) | Err(_) => Self::forget(&mut st, socket),
                }
            }
        } else {
            match slot.phase {
                Phase::Idle => Self::remove(&mut st, socket),
                // The request keeps its own reference to the op; the slot
                // stays until the cancelled poll comes back.
                Phase::Pending { .. } => self.cancel(slot),
                Phase::Cancelling { .. } => {}
            }
        }
        self.after_user_call(&st);
        Ok(())
    }

    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        let Events {
            list,
            capacity,
            sys,
            ..
        } = events;
        let capacity = *capacity;
        let wait = self.waits.fetch_add(1, Ordering::Relaxed);
        let mut out = Out {
            list: Some(list),
            capacity,
            wait,
        };
        // Polls on the poller's behalf (level re-arms, parks) report into the
        // stash, behind what is there. The stash and the port take turns
        // at going first (by the wait's parity), so that neither starves the
        // other in a small buffer: level sources that stay ready fill the
        // stash on every wait, completions keep coming through the port.
        let stash_first = wait.is_multiple_of(2);
        let mut stash_out = Out {
            list: None,
            capacity: 0,
            wait,
        };
        let mut woken = false;
        let mut timeout = timeout;
        for _ in 0..FOLLOW_UPS {
            if self.pending.swap(false, Ordering::SeqCst) {
                // What other calls left (the stash), then the queued polls.
                let mut st = lock(&self.state);
                if stash_first {
                    Self::take_stash(&mut st, &mut out);
                }
                self.flush(&mut st, &mut stash_out);
                if !st.stash.is_empty() {
                    self.pending.store(true, Ordering::SeqCst);
                }
            }
            let room = capacity - out.len();
            if room == 0 {
                break;
            }
            // Announce the dequeue, then look at `pending` again: a user call
            // stores `pending` and then reads `blocked` (both SeqCst), so
            // either it sees this thread (and posts a WAKE), or this thread
            // sees its `pending` (and only looks, without blocking).
            self.blocked.fetch_add(1, Ordering::SeqCst);
            let look = out.len() > 0 || self.pending.load(Ordering::SeqCst);
            let got = self.port.get_many(
                &mut sys.0[..room],
                if look { Some(Duration::ZERO) } else { timeout },
            );
            self.blocked.fetch_sub(1, Ordering::SeqCst);
            let n = match got {
                Ok(n) => n,
                // Return what this wait holds; the error comes again.
                Err(_) if out.len() > 0 || woken => break,
                Err(e) => return Err(e),
            };
            let polls_before = self.counters.polls.load(Ordering::Relaxed);
            if n > 0 || self.pending.load(Ordering::SeqCst) {
                let mut st = lock(&self.state);
                for entry in &sys.0[..n] {
                    woken |= self.dequeued(&mut st, entry, &mut out);
                }
                Self::take_stash(&mut st, &mut out);
                if !st.stash.is_empty() {
                    self.pending.store(true, Ordering::SeqCst);
                }
            }
            if n == 0 && !look {
                break; // the timeout passed
            }
            // Look again without blocking if the batch filled the room (more
            // may be queued), its handling issued polls (which may have
            // completed at once), or something is pending: a ready socket is
            // then reported now. A look that found nothing ends the wait.
            let polled = self.counters.polls.load(Ordering::Relaxed) != polls_before;
            let again = n == room || polled || (n > 0 && self.pending.load(Ordering::SeqCst));
            if out.full() || !again {
                break;
            }
            timeout = Some(Duration::ZERO);
        }
        Ok(woken)
    }

    fn notify(&self) -> io::Result<()> {
        if !self.notified.swap(true, Ordering::AcqRel)
            && let Err(e) = self.port.post(NOTIFY_KEY)
        {
            self.notified.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }
}

impl IocpPoller {
    /// Moves stashed events into the caller's list, as room allows.
    fn take_stash(st: &mut State, out: &mut Out<'_>) {
        if st.stash.is_empty() {
            return;
        }
        let Some(list) = &mut out.list else {
            return;
        };
        let room = out.capacity.saturating_sub(list.len()).min(st.stash.len());
        let State { stash, slots, .. } = st;
        for (socket, event) in stash.drain(..room) {
            // Reported by this wait: no level re-arm of it in the same wait.
            if let Some(slot) = slots.get_mut(&socket) {
                slot.reported_in = out.wait;
                slot.in_stash = false;
            }
            list.push(event);
        }
        // A slot with an event still stashed keeps its flag.
        for (socket, _) in stash.iter() {
            if let Some(slot) = slots.get_mut(socket) {
                slot.in_stash = true;
            }
        }
    }
}

impl Drop for IocpPoller {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut state = std::mem::take(st);
        // Cancel every poll in the kernel, also those no slot refers to any
        // more (replaced, or kept by a second handle of a closed socket).
        // A cancel of one that completed already finds nothing.
        // One that cannot be found to cancel either completed already (its
        // packet is queued) or was issued on a handle value that now names
        // another object (a direct socket closed while a second handle keeps
        // it alive): such a poll completes only when its socket dies.
        let mut uncancellable = HashSet::new();
        for &context in &state.books.outstanding {
            // SAFETY: `context` is in `outstanding`: the kernel still holds
            // that reference to the op, so the op (its status block, its
            // handle) is alive; the status block is only used as an
            // identifier.
            let found = unsafe {
                let op = &*(context as *const Op);
                afd::cancel(op.issue_on as HANDLE, op.iosb.get())
            };
            if !matches!(found, Ok(true)) {
                uncancellable.insert(context);
            }
        }
        // Now take back every outstanding reference; only then may the ops be
        // freed. A blocking dequeue, never a spin: an error ends the drain (and
        // leaks what is left).
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut entries = vec![OVERLAPPED_ENTRY::default(); 64];
        while state.books.in_flight > 0 {
            // Only uncancellable polls left: take what is queued (those that
            // had completed), then leak the rest rather than wait for sockets
            // that may never close.
            let only_uncancellable = state
                .books
                .outstanding
                .iter()
                .all(|c| uncancellable.contains(c));
            let left = if only_uncancellable {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let n = match self.port.get_many(&mut entries, Some(left)) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, in_flight = state.books.in_flight,
                        "draining the completion port failed; leaking the memory of AFD polls in flight");
                    break;
                }
            };
            if n == 0 && (only_uncancellable || Instant::now() >= deadline) {
                // Never free memory the kernel may still write: leak it.
                tracing::warn!(
                    in_flight = state.books.in_flight,
                    "AFD polls did not come back after cancellation; leaking their memory"
                );
                break;
            }
            for entry in &entries[..n] {
                if entry.lpOverlapped.is_null() {
                    continue;
                }
                if Self::take_back(&mut state.books, entry).is_some() {
                    state.books.in_flight -= 1; // and the op reference is dropped here
                }
            }
        }
        // The ops the kernel gave back are freed with `state` here; those it
        // did not are leaked (their references were never taken back). Then
        // the AFD group handles close (with `state`), and the port last (it is
        // a field, dropped after this function).
        drop(state);
    }
}

impl IocpPoller {
    /// The `Afd` or `AfdDirect` backend, as `options.backend` says.
    pub(crate) fn new(options: &Builder) -> io::Result<IocpPoller> {
        let target = match options.backend {
            Backend::AfdDirect => Target::Direct,
            _ => Target::Grouped {
                group_size: options.afd_group_size,
            },
        };
        IocpPoller::with_target(target)
    }
}

#[cfg(test)]
mod tests;
