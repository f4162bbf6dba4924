//! The two Windows backends: one engine, two places to issue polls.
//!
//! - [`Target::Grouped`] (`Backend::Afd`): polls are issued on `\Device\Afd`
//!   handles that the poller opens, each shared by up to `group_size`
//!   sockets and associated with the poller's completion port.
//! - [`Target::Direct`] (`Backend::AfdDirect`): each socket's base handle is
//!   associated with the completion port and polls are issued on it.
//!
//! # Invariants
//!
//! - Exactly one poll is outstanding per registration (`Reg::pending`), also
//!   when it is disarmed (a oneshot that fired, or interest `NONE`): then it
//!   polls for `AFD_POLL_LOCAL_CLOSE` alone, so that a socket closed without
//!   `delete` is always noticed and its handle value can be registered again.
//!   A change of mask cancels the outstanding poll; the completion of the
//!   cancelled poll (cancelled, or completed first) re-submits with the new
//!   mask. A second poll is never issued beside a pending one.
//! - Except in one window: a `Level` registration that just reported is not
//!   re-polled at once (the user has not read yet, so the poll would complete
//!   at once and report stale readiness); it waits in `State::rearm` until
//!   the next wait starts, as `epoll_wait` looks at readiness when called.
//! - Every outstanding poll owns one strong reference to its [`Op`], made by
//!   `Arc::into_raw` and passed as the request's context; it is taken back
//!   with `Arc::from_raw` only when the completion packet is dequeued. So the
//!   status block and poll info stay alive until the kernel is done with
//!   them, whatever the user does (delete, close the socket, drop the poller).
//! - The kernel writes an `Op`'s cells only while its poll is outstanding; the
//!   poller writes them only while none is, and holds `state` when it does.
//!   Dequeuing the completion orders the kernel's writes before our reads.
//! - Dropping the poller cancels every outstanding poll and drains the port
//!   until each has come back (see `Drop`).

use std::cell::UnsafeCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::windows::io::{AsRawSocket, RawSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{ERROR_INVALID_HANDLE, HANDLE, STATUS_PENDING};
use windows_sys::Win32::System::IO::{IO_STATUS_BLOCK, OVERLAPPED_ENTRY};

use super::Source;
use super::afd::{self, Afd, AfdPollInfo, CompletionPort};
use crate::event::flag;
use crate::sys::Driver;
use crate::{Backend, Builder, Event, Events, Interest, Mode};

/// Completion key of the wake-up packet posted by `notify`.
const NOTIFY_KEY: usize = usize::MAX;
/// How long `Drop` waits for cancelled polls to come back before it gives up
/// and leaks their memory (never frees it early).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The memory a poll lends the kernel.
#[repr(C)]
struct Op {
    iosb: UnsafeCell<IO_STATUS_BLOCK>,
    info: UnsafeCell<AfdPollInfo>,
    /// The registered socket (the user's handle), to find the registration.
    socket: RawSocket,
}

// SAFETY: the cells are shared with the kernel under the protocol in the
// module documentation: written by the kernel only while the poll is
// outstanding, by the poller only while it is not and under `state`'s lock,
// and read only after the completion was dequeued, under that lock. The
// raw handle inside `info` is an integer to us.
unsafe impl Send for Op {}
// SAFETY: as above; no access happens through a shared reference outside
// that protocol.
unsafe impl Sync for Op {}

/// Where a registration's polls are issued.
enum Target {
    Grouped { group_size: usize },
    Direct,
}

struct Reg {
    op: Arc<Op>,
    key: usize,
    interest: Interest,
    mode: Mode,
    /// The base handle AFD knows the socket by.
    base: RawSocket,
    /// The handle polls are issued on (AFD group handle, or `base`).
    issue_on: usize,
    /// The AFD group (grouped target only).
    group: usize,
    /// The mask of the outstanding poll; `None` only after a failed submit.
    pending: Option<u32>,
    /// A cancel of the outstanding poll was requested.
    cancelling: bool,
    /// The registration wants a poll: interest is not `NONE` and it is not a
    /// oneshot that already fired.
    armed: bool,
    /// `AFD_POLL_CONNECT` was reported once; it stays set for the life of
    /// the connection, so it is no longer asked for.
    connect_seen: bool,
}

struct Group {
    afd: Afd,
    sockets: usize,
}

#[derive(Default)]
struct State {
    regs: HashMap<RawSocket, Reg>,
    groups: Vec<Group>,
    /// Polls issued whose completion has not been dequeued.
    in_flight: usize,
    /// Level registrations that reported and are polled again when the next
    /// wait starts.
    rearm: Vec<RawSocket>,
    /// Direct target: base handles associated with our port.
    associated: HashSet<RawSocket>,
    /// Direct target: the contexts of outstanding polls. A user's socket is
    /// associated with our port, so a packet of the user's own overlapped I/O
    /// on it could arrive here; only pointers in this set are ours.
    outstanding: HashSet<usize>,
}

pub(crate) struct IocpPoller {
    port: CompletionPort,
    state: Mutex<State>,
    notified: AtomicBool,
    /// `state.rearm` is not empty: the next wait takes the lock to flush it.
    rearm_pending: AtomicBool,
    target: Target,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent at every unlock point that can panic (none
    // is expected); never give up on a poisoned lock, the kernel may hold
    // references that only this poller can take back.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The AFD events to ask for: what `reg` wants now.
fn wanted(reg: &Reg) -> u32 {
    if reg.armed {
        afd_mask(reg.interest, reg.connect_seen)
    } else {
        // Disarmed: only watch for the socket being closed.
        afd::AFD_POLL_LOCAL_CLOSE
    }
}

/// The AFD events for an interest.
fn afd_mask(interest: Interest, connect_seen: bool) -> u32 {
    use afd::*;
    if interest.is_none() {
        return AFD_POLL_LOCAL_CLOSE;
    }
    // Errors and the local close are always asked for.
    let mut m = AFD_POLL_ABORT | AFD_POLL_CONNECT_FAIL | AFD_POLL_LOCAL_CLOSE;
    if interest.is_readable() {
        m |= AFD_POLL_RECEIVE | AFD_POLL_ACCEPT | AFD_POLL_DISCONNECT;
    }
    if interest.is_writable() {
        m |= AFD_POLL_SEND;
        if !connect_seen {
            m |= AFD_POLL_CONNECT;
        }
    }
    if interest.is_priority() {
        m |= AFD_POLL_RECEIVE_EXPEDITED;
    }
    m
}

/// The portable flags for AFD events, shaped like Linux reports the same
/// conditions, so that portable code sees the same thing everywhere.
fn decode(events: u32, interest: Interest) -> u8 {
    use afd::*;
    let mut f = 0;
    if interest.is_readable() {
        if events & (AFD_POLL_RECEIVE | AFD_POLL_ACCEPT) != 0 {
            f |= flag::READABLE;
        }
        // A read now returns end-of-stream: readable, and read-closed.
        if events & AFD_POLL_DISCONNECT != 0 {
            f |= flag::READABLE | flag::READ_CLOSED;
        }
    }
    if interest.is_writable() && events & (AFD_POLL_SEND | AFD_POLL_CONNECT) != 0 {
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

impl IocpPoller {
    fn with_target(target: Target) -> io::Result<IocpPoller> {
        Ok(IocpPoller {
            port: CompletionPort::new()?,
            state: Mutex::new(State::default()),
            notified: AtomicBool::new(false),
            rearm_pending: AtomicBool::new(false),
            target,
        })
    }

    fn exclusive(&self) -> bool {
        matches!(self.target, Target::Direct)
    }

    /// Finds (or opens) the handle the polls of a new socket go to.
    fn place(&self, st: &mut State, base: RawSocket) -> io::Result<(usize, usize)> {
        match self.target {
            Target::Grouped { group_size } => {
                if let Some(i) = st.groups.iter().position(|g| g.sockets < group_size) {
                    return Ok((st.groups[i].afd.raw() as usize, i));
                }
                let afd = Afd::open()?;
                self.port.associate(afd.raw(), 0)?;
                afd::set_completion_modes(afd.raw(), false)?;
                let raw = afd.raw() as usize;
                st.groups.push(Group { afd, sockets: 0 });
                Ok((raw, st.groups.len() - 1))
            }
            Target::Direct => {
                match self.port.associate(base as HANDLE, 0) {
                    Ok(()) => {
                        st.associated.insert(base);
                    }
                    // Associated before: fine if it was with this port.
                    Err(e) if afd::is_already_associated(&e) && st.associated.contains(&base) => {}
                    Err(e) if afd::is_already_associated(&e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::ResourceBusy,
                            "the socket is associated with another I/O completion port; \
                             the direct backend needs it for itself (use Backend::Afd)",
                        ));
                    }
                    Err(e) => return Err(e),
                }
                Ok((base as usize, usize::MAX))
            }
        }
    }

    /// Issues a poll for `reg` with its current interest.
    fn submit(
        &self,
        st_in_flight: &mut usize,
        outstanding: &mut HashSet<usize>,
        reg: &mut Reg,
    ) -> io::Result<()> {
        debug_assert!(reg.pending.is_none());
        let mask = wanted(reg);
        let info = AfdPollInfo::new(reg.base, mask, self.exclusive());
        // SAFETY: no poll is outstanding for this op (`pending` is None), so
        // the kernel does not touch the cell, and we hold the state lock.
        unsafe { *reg.op.info.get() = info };
        let context = Arc::into_raw(Arc::clone(&reg.op));
        // SAFETY: `context` is a strong reference owned by the request: it is
        // reclaimed when the completion is dequeued (`wait`, `Drop`), or just
        // below if nothing will be queued, so `iosb` and `info` outlive it.
        let status = unsafe {
            afd::poll(
                reg.issue_on as HANDLE,
                reg.op.info.get(),
                reg.op.iosb.get(),
                context.cast(),
            )
        };
        if status == STATUS_PENDING || afd::nt_success(status) {
            reg.pending = Some(mask);
            *st_in_flight += 1;
            if self.exclusive() {
                outstanding.insert(context as usize);
            }
            Ok(())
        } else {
            // SAFETY: the request failed at once, so no packet will carry
            // `context`; take the reference back exactly once.
            drop(unsafe { Arc::from_raw(context) });
            Err(afd::nt_error(status))
        }
    }

    /// Asks the kernel to cancel `reg`'s outstanding poll.
    fn cancel(reg: &mut Reg) {
        if reg.pending.is_none() || reg.cancelling {
            return;
        }
        reg.cancelling = true;
        // SAFETY: the op (and its status block) is kept alive by the request's
        // own reference until its completion is dequeued.
        if let Err(e) = unsafe { afd::cancel(reg.issue_on as HANDLE, reg.op.iosb.get()) } {
            // The handle is gone (a direct socket closed): the poll completes
            // by itself with LOCAL_CLOSE.
            tracing::debug!(error = %e, "cancelling an AFD poll failed");
        }
    }

    /// Whether `reg`'s socket was closed under its outstanding poll: the
    /// kernel finished the poll with `AFD_POLL_LOCAL_CLOSE`, though the packet
    /// may not have been processed yet.
    fn closed_under_poll(reg: &Reg) -> bool {
        if reg.pending.is_none() {
            return false;
        }
        // SAFETY: the op is alive (we hold a reference) and its poll was
        // issued by `submit`; the cells are only read.
        let events = unsafe { afd::finished_events(reg.op.iosb.get(), reg.op.info.get()) };
        events.is_some_and(|e| e & afd::AFD_POLL_LOCAL_CLOSE != 0)
    }

    /// The reference to its op that a dequeued poll completion carries, or
    /// `None` for a packet that is not one of our polls (a direct socket's
    /// own overlapped I/O). Call once per dequeued packet with a non-null
    /// overlapped pointer; the in-flight count is the caller's to adjust.
    fn take_back(direct: bool, st: &mut State, entry: &OVERLAPPED_ENTRY) -> Option<Arc<Op>> {
        let context = entry.lpOverlapped as usize;
        if direct && !st.outstanding.remove(&context) {
            return None;
        }
        // SAFETY: every packet with an overlapped pointer on this port is the
        // completion of a poll we issued (the grouped target's AFD handles are
        // ours alone; for the direct target the pointer was just found in
        // `outstanding`), whose context is an `Arc<Op>` reference made by
        // `Arc::into_raw` in `submit`. Each packet is dequeued once, so the
        // reference is taken back once.
        Some(unsafe { Arc::from_raw(context as *const Op) })
    }

    /// Submits a poll for the registration of `socket`, if it has one and
    /// none is outstanding.
    fn resubmit(&self, st: &mut State, socket: RawSocket) -> io::Result<()> {
        let State {
            in_flight,
            outstanding,
            regs,
            ..
        } = st;
        match regs.get_mut(&socket) {
            Some(reg) if reg.pending.is_none() => self.submit(in_flight, outstanding, reg),
            _ => Ok(()),
        }
    }

    /// Polls again the level registrations that reported in earlier waits.
    /// A registration deleted, modified or re-added since is skipped (it is
    /// gone, or has a poll already).
    fn flush_rearm(&self, list: &mut Vec<Event>, capacity: usize) {
        if !self.rearm_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut st = lock(&self.state);
        let sockets = std::mem::take(&mut st.rearm);
        for &socket in &sockets {
            if let Err(e) = self.resubmit(&mut st, socket) {
                if e.raw_os_error() == Some(ERROR_INVALID_HANDLE as i32) {
                    self.remove(&mut st, socket); // closed meanwhile
                } else if let Some(reg) = st.regs.get_mut(&socket)
                    && reg.armed
                    && list.len() < capacity
                {
                    reg.armed = false;
                    list.push(Event::new(reg.key, flag::ERROR));
                }
            }
        }
        // Keep the allocation for next time.
        st.rearm = sockets;
        st.rearm.clear();
    }

    /// Forgets the registration of `socket` whose socket is gone. Its op is
    /// freed when the last reference (an outstanding poll's) goes.
    fn remove(&self, st: &mut State, socket: RawSocket) {
        if let Some(reg) = st.regs.remove(&socket) {
            Self::forget(st, &reg);
            if let Target::Direct = self.target {
                st.associated.remove(&reg.base);
            }
        }
    }

    fn forget(st: &mut State, reg: &Reg) {
        if let Some(g) = st.groups.get_mut(reg.group) {
            g.sockets -= 1;
        }
    }

    /// Handles one dequeued poll completion. Returns the event to report.
    fn complete(&self, st: &mut State, op: Arc<Op>) -> Option<Event> {
        st.in_flight -= 1;
        let socket = op.socket;
        let reg = st.regs.get_mut(&socket)?;
        if !Arc::ptr_eq(&reg.op, &op) {
            return None; // a deleted registration's poll, the socket re-added since
        }
        reg.pending = None;
        reg.cancelling = false;
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
        if events & afd::AFD_POLL_LOCAL_CLOSE != 0 {
            // The user closed the socket: drop it silently.
            self.remove(st, socket);
            return None;
        }
        if !afd::nt_success(status) && !afd::is_cancelled(status) {
            // The poll itself failed: report an error once; leave the
            // registration without a poll until it is modified.
            tracing::debug!(status, "AFD poll failed");
            let event = reg.armed.then(|| Event::new(reg.key, flag::ERROR));
            reg.armed = false;
            return event;
        }
        if events & afd::AFD_POLL_CONNECT != 0 {
            reg.connect_seen = true;
        }
        let flags = decode(events, reg.interest);
        let mut event = None;
        if flags != 0 && reg.armed {
            event = Some(Event::new(reg.key, flags));
            if reg.mode.is_oneshot() {
                reg.armed = false;
            } else {
                // Level: poll again when the next wait starts.
                st.rearm.push(socket);
                self.rearm_pending.store(true, Ordering::Release);
                return event;
            }
        }
        // Always poll again: for the interest if armed (level mode reports
        // again at once while the condition holds), else for a close.
        if let Err(e) = self.resubmit(st, socket) {
            tracing::debug!(error = %e, "re-submitting an AFD poll failed");
            if e.raw_os_error() == Some(ERROR_INVALID_HANDLE as i32) {
                // Closed between the completion and now: forget it.
                self.remove(st, socket);
                return event;
            }
            let reg = st.regs.get_mut(&socket)?;
            if reg.armed && event.is_none() {
                reg.armed = false;
                return Some(Event::new(reg.key, flag::ERROR));
            }
        }
        event
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
        true
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
        let mut st = lock(&self.state);
        if let Some(old) = st.regs.get(&socket) {
            if !Self::closed_under_poll(old) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            // The handle value was closed and reused before the LOCAL_CLOSE
            // completion was processed: the old registration is dead. Its
            // poll's packet still comes and is ignored (its op is not the
            // registered one any more).
            self.remove(&mut st, socket);
        }
        let base = afd::base_socket(socket)?;
        let (issue_on, group) = self.place(&mut st, base)?;
        let op = Arc::new(Op {
            iosb: UnsafeCell::new(afd::status_block()),
            info: UnsafeCell::new(AfdPollInfo::new(base, 0, false)),
            socket,
        });
        let mut reg = Reg {
            op,
            key,
            interest,
            mode,
            base,
            issue_on,
            group,
            pending: None,
            cancelling: false,
            armed: !interest.is_none(),
            connect_seen: false,
        };
        let State {
            in_flight,
            outstanding,
            ..
        } = &mut *st;
        self.submit(in_flight, outstanding, &mut reg)?;
        if let Some(g) = st.groups.get_mut(group) {
            g.sockets += 1;
        }
        st.regs.insert(socket, reg);
        Ok(())
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
        let State {
            regs,
            in_flight,
            outstanding,
            ..
        } = &mut *st;
        let reg = regs
            .get_mut(&socket)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        reg.key = key;
        reg.interest = interest;
        reg.mode = mode;
        reg.armed = !interest.is_none();
        match reg.pending {
            // The outstanding poll asks for something else: cancel it; its
            // completion re-submits with what is wanted then.
            Some(mask) if mask != wanted(reg) => Self::cancel(reg),
            // The outstanding poll asks for just this: keep it.
            Some(_) => {}
            None => self.submit(in_flight, outstanding, reg)?,
        }
        Ok(())
    }

    fn delete(&self, source: Source<'_>) -> io::Result<()> {
        let socket = source.as_raw_socket();
        let mut st = lock(&self.state);
        let mut reg = st
            .regs
            .remove(&socket)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        // The request keeps its own reference to the op: dropping `reg` here
        // frees nothing the kernel still uses.
        Self::cancel(&mut reg);
        Self::forget(&mut st, &reg);
        Ok(())
    }

    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        let Events {
            list,
            capacity,
            sys,
            ..
        } = events;
        self.flush_rearm(list, *capacity);
        // One completion yields at most one event: never dequeue more than
        // there is room for.
        let room = *capacity - list.len();
        if room == 0 {
            return Ok(false);
        }
        let n = self.port.get_many(&mut sys.0[..room], timeout)?;
        if n == 0 {
            return Ok(false);
        }
        let mut woken = false;
        let mut st = lock(&self.state);
        for entry in &sys.0[..n] {
            if entry.lpOverlapped.is_null() {
                if entry.lpCompletionKey == NOTIFY_KEY {
                    self.notified.store(false, Ordering::Release);
                    woken = true;
                }
                continue;
            }
            let Some(op) = Self::take_back(self.exclusive(), &mut st, entry) else {
                tracing::warn!("ignored a completion that is not an AFD poll of this poller");
                continue;
            };
            if let Some(event) = self.complete(&mut st, op) {
                list.push(event);
            }
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

impl Drop for IocpPoller {
    fn drop(&mut self) {
        let direct = self.exclusive();
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for reg in st.regs.values_mut() {
            Self::cancel(reg);
        }
        // Deleted registrations were cancelled when deleted. Now take back
        // every outstanding reference; only then may the ops be freed.
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut entries = vec![OVERLAPPED_ENTRY::default(); 64];
        while st.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = self
                .port
                .get_many(&mut entries, Some(left))
                .unwrap_or_default();
            if n == 0 && Instant::now() >= deadline {
                // Never free memory the kernel may still write: leak it.
                tracing::warn!(
                    in_flight = st.in_flight,
                    "AFD polls did not come back after cancellation; leaking their memory"
                );
                break;
            }
            for entry in &entries[..n] {
                if entry.lpOverlapped.is_null() {
                    continue;
                }
                if Self::take_back(direct, st, entry).is_some() {
                    st.in_flight -= 1; // and the op reference is dropped here
                }
            }
        }
        // `state` (and the ops it holds), the AFD handles and the port are
        // dropped after this, in that order.
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
