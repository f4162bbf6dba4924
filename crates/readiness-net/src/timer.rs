//! The loop's deadline structure: a binary min-heap of 16-byte entries with
//! lazy deletion.
//!
//! Public (hidden from the docs) only so that `benches/timers.rs` can measure
//! the structure the loop really uses; it is not part of the stable API.
//!
//! How the loop uses it (see `docs/BENCHMARKS.md`, net layer, for the
//! measurement that chose it over pushing an entry per re-arm and over a
//! timing wheel):
//!
//! - A connection with a timeout (idle, connect, close linger) has **at most
//!   one** entry in the heap. Re-arming the idle timeout on a read does not
//!   touch the heap: it stores the loop's current time in the connection.
//!   When the entry comes due, the loop computes the connection's real
//!   deadline from that time; if it is later, it pushes the entry again.
//!   Per read: one store. Per idle period: one pop and at most one push.
//! - A user timer has one entry; cancelling it frees its slot and bumps the
//!   slot's generation, so its entry is skipped when it comes due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What an entry refers to: the top bit of `slot` says which table.
pub const KIND_USER: u32 = 1 << 31;

/// One heap entry: 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Milliseconds since the loop's epoch.
    pub deadline: u64,
    /// Generation of the slot when the entry was pushed.
    pub gn: u32,
    /// Slot index, with [`KIND_USER`] set for user timers.
    pub slot: u32,
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, the earliest deadline must be on top.
        other
            .deadline
            .cmp(&self.deadline)
            .then_with(|| other.slot.cmp(&self.slot))
            .then_with(|| other.gn.cmp(&self.gn))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A min-heap of [`Entry`], earliest deadline first.
#[derive(Debug, Default)]
pub struct TimerHeap {
    heap: BinaryHeap<Entry>,
}

impl TimerHeap {
    /// An empty heap (allocates nothing).
    pub fn new() -> TimerHeap {
        TimerHeap {
            heap: BinaryHeap::new(),
        }
    }

    /// Adds an entry. O(log n).
    #[inline]
    pub fn push(&mut self, deadline: u64, slot: u32, gn: u32) {
        self.heap.push(Entry { deadline, gn, slot });
    }

    /// The earliest deadline, if any.
    #[inline]
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|e| e.deadline)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    #[inline]
    pub fn pop_due(&mut self, now: u64) -> Option<Entry> {
        match self.heap.peek() {
            Some(e) if e.deadline <= now => self.heap.pop(),
            _ => None,
        }
    }

    /// Entries held (live and stale).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_only_when_due() {
        let mut h = TimerHeap::new();
        h.push(30, 1, 0);
        h.push(10, 2, 0);
        h.push(20, 3, 0);
        assert_eq!(h.next_deadline(), Some(10));
        assert_eq!(h.pop_due(9), None);
        assert_eq!(h.pop_due(25).map(|e| e.slot), Some(2));
        assert_eq!(h.pop_due(25).map(|e| e.slot), Some(3));
        assert_eq!(h.pop_due(25), None);
        assert_eq!(h.len(), 1);
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }
}
