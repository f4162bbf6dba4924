//! The load logic of `readiness echo-client`, free of sockets: what each
//! connection sends next, how an echo is validated, latencies and counts.
//! The socket side (see the `Transport` trait in `mod.rs`) moves bytes
//! between these functions and the network.
//!
//! Connection `c` sends messages numbered from `first = c * 7 + idle offset`
//! (its starting offset) upwards; byte `i` of message `seq` is
//! `(seq + i) mod 251`. The stream is the concatenation of the messages, so
//! the byte at stream position `p` is `(first + p / size + p % size) mod 251`.

use std::time::Instant;

use hdrhistogram::Histogram;

/// The modulus of the pattern (a prime, so no message size aligns with it).
pub const MODULUS: u64 = 251;
/// Longest slice [`Pattern::bytes`] returns.
pub const CHUNK: usize = 64 * 1024;

/// The byte pattern, kept as a table so that producing and checking bytes
/// are slice copies and comparisons.
#[derive(Debug)]
pub struct Pattern {
    table: Box<[u8]>,
}

impl Default for Pattern {
    fn default() -> Pattern {
        Pattern::new()
    }
}

impl Pattern {
    /// The table: `table[j] = j mod 251`.
    pub fn new() -> Pattern {
        let table = (0..MODULUS as usize + CHUNK)
            .map(|j| (j as u64 % MODULUS) as u8)
            .collect();
        Pattern { table }
    }

    /// `len` (at most [`CHUNK`]) bytes: `(start + k) mod 251` for `k` in `0..len`.
    pub fn bytes(&self, start: u64, len: usize) -> &[u8] {
        let s = (start % MODULUS) as usize;
        &self.table[s..s + len]
    }
}

/// How many messages may still be started, over all connections
/// (`None`: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget(pub Option<u64>);

impl Budget {
    fn allows(self, n: u64) -> u64 {
        self.0.map_or(n, |left| left.min(n))
    }
    fn take(&mut self, n: u64) {
        if let Some(left) = &mut self.0 {
            *left = left.saturating_sub(n);
        }
    }
}

/// Counts and latencies of a run.
#[derive(Debug)]
pub struct Stats {
    /// Round-trip latencies in nanoseconds, of the measured interval.
    pub hist: Histogram<u64>,
    /// Round trips completed while recording.
    pub round_trips: u64,
    /// Round trips completed while not recording (warm-up, set-up).
    pub unrecorded_round_trips: u64,
    /// Messages whose echo was not what was sent (and bytes echoed that
    /// were never sent, counted once per read).
    pub validation_failures: u64,
    /// Whether completed round trips are recorded now.
    pub recording: bool,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    /// Empty, not recording.
    pub fn new() -> Stats {
        Stats {
            // 1 ns to 1 hour, 3 significant digits; grows if needed.
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("valid histogram bounds"),
            round_trips: 0,
            unrecorded_round_trips: 0,
            validation_failures: 0,
            recording: false,
        }
    }

    fn complete(&mut self, nanos: u64) {
        if self.recording {
            self.round_trips += 1;
            self.hist.saturating_record(nanos.max(1));
        } else {
            self.unrecorded_round_trips += 1;
        }
    }
}

/// One connection's side of the load.
#[derive(Debug)]
pub struct ConnLoad {
    size: u64,
    depth: u64,
    first: u64,
    /// Messages this connection may send at most (`None`: no limit).
    limit: Option<u64>,
    /// Whether it may start messages now.
    pub enabled: bool,
    /// Stream bytes written and read.
    sent: u64,
    received: u64,
    /// Start time of each message in flight, at `seq % depth`.
    started_at: Vec<Instant>,
    /// The message being received has a wrong byte.
    bad: bool,
}

impl ConnLoad {
    /// Connection with starting offset `first`, messages of `size` bytes
    /// (at least 1), `depth` in flight (at least 1), at most `limit` messages.
    pub fn new(first: u64, size: u64, depth: u64, limit: Option<u64>) -> ConnLoad {
        let (size, depth) = (size.max(1), depth.max(1));
        ConnLoad {
            size,
            depth,
            first,
            limit,
            enabled: false,
            sent: 0,
            received: 0,
            started_at: vec![Instant::now(); depth as usize],
            bad: false,
        }
    }

    fn started(&self) -> u64 {
        self.sent.div_ceil(self.size)
    }

    fn completed(&self) -> u64 {
        self.received / self.size
    }

    /// Messages sent (at least in part) and not fully echoed.
    pub fn in_flight(&self) -> u64 {
        self.started() - self.completed()
    }

    /// Whether it has sent all it may and got every echo.
    pub fn finished(&self) -> bool {
        self.limit.is_some_and(|l| self.completed() >= l)
    }

    /// The stream position up to which sending is allowed now.
    fn send_limit(&self, budget: Budget) -> u64 {
        let mut msgs = self.completed() + self.depth;
        if let Some(l) = self.limit {
            msgs = msgs.min(l);
        }
        // A message in progress counts as started (it is paid for and is
        // finished even when disabled); new ones take budget.
        let started = self.started();
        let new_allowed = if self.enabled {
            budget.allows(msgs.saturating_sub(started))
        } else {
            0
        };
        (started + new_allowed) * self.size
    }

    /// Fills `out` with the next bytes to send; returns how many (0: nothing
    /// to send now). Nothing is consumed until [`sent`](Self::sent).
    pub fn fill(&self, pattern: &Pattern, out: &mut [u8], budget: Budget) -> usize {
        let end = self.send_limit(budget);
        let n = (end - self.sent).min(out.len() as u64) as usize;
        let mut p = self.sent;
        let mut at = 0;
        while at < n {
            let (m, i) = (p / self.size, p % self.size);
            let len = ((self.size - i) as usize).min(n - at).min(CHUNK);
            out[at..at + len].copy_from_slice(pattern.bytes(self.first + m + i, len));
            at += len;
            p += len as u64;
        }
        n
    }

    /// `n` bytes of what [`fill`](Self::fill) gave were written at `now`.
    pub fn sent(&mut self, n: usize, now: Instant, budget: &mut Budget) {
        let before = self.started();
        self.sent += n as u64;
        let after = self.started();
        for seq in before..after {
            self.started_at[(seq % self.depth) as usize] = now;
        }
        budget.take(after - before);
    }

    /// Bytes arrived at `now`: checks them, completes messages.
    pub fn received(
        &mut self,
        mut data: &[u8],
        now: Instant,
        pattern: &Pattern,
        stats: &mut Stats,
    ) {
        if self.received + data.len() as u64 > self.sent {
            // Bytes that were never sent came back.
            stats.validation_failures += 1;
            data = &data[..(self.sent - self.received) as usize];
        }
        while !data.is_empty() {
            let p = self.received;
            let (m, i) = (p / self.size, p % self.size);
            let len = ((self.size - i) as usize).min(data.len()).min(CHUNK);
            if data[..len] != *pattern.bytes(self.first + m + i, len) {
                self.bad = true;
            }
            data = &data[len..];
            self.received += len as u64;
            if i + len as u64 == self.size {
                if std::mem::take(&mut self.bad) {
                    stats.validation_failures += 1;
                }
                let start = self.started_at[(m % self.depth) as usize];
                stats.complete(now.saturating_duration_since(start).as_nanos() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(first: u64, size: u64, p: u64) -> u8 {
        ((first + p / size + p % size) % MODULUS) as u8
    }

    #[test]
    fn pattern_is_seq_plus_i_mod_251() {
        let pat = Pattern::new();
        let mut c = ConnLoad::new(5, 300, 3, None);
        c.enabled = true;
        let mut out = vec![0u8; 2000];
        let n = c.fill(&pat, &mut out, Budget(None));
        assert_eq!(n, 900, "depth 3 of 300 bytes");
        for (p, &b) in out[..n].iter().enumerate() {
            assert_eq!(b, expected(5, 300, p as u64), "byte {p}");
        }
        // Message 1 of connection offset 5 is seq 6: its byte 0 is 6.
        assert_eq!(out[300], 6);
    }

    #[test]
    fn depth_budget_and_limit_bound_what_is_sent() {
        let pat = Pattern::new();
        let mut out = vec![0u8; 1 << 16];
        let mut c = ConnLoad::new(0, 10, 4, None);
        assert_eq!(c.fill(&pat, &mut out, Budget(None)), 0, "disabled");
        c.enabled = true;
        let mut budget = Budget(Some(2));
        assert_eq!(c.fill(&pat, &mut out, budget), 20);
        // A partial write: 15 bytes = one whole message and half of one.
        c.sent(15, Instant::now(), &mut budget);
        assert_eq!(budget, Budget(Some(0)));
        assert_eq!(c.in_flight(), 2);
        // The half-sent message may be finished without budget.
        assert_eq!(c.fill(&pat, &mut out, budget), 5);
        let mut stats = Stats::new();
        stats.recording = true;
        c.sent(5, Instant::now(), &mut budget);
        let echo: Vec<u8> = (0..20).map(|p| expected(0, 10, p)).collect();
        c.received(&echo[..7], Instant::now(), &pat, &mut stats);
        assert_eq!(stats.round_trips, 0);
        c.received(&echo[7..], Instant::now(), &pat, &mut stats);
        assert_eq!((stats.round_trips, stats.validation_failures), (2, 0));
        assert_eq!(c.in_flight(), 0);
        // A limit of 3 messages.
        let mut c = ConnLoad::new(0, 10, 4, Some(3));
        c.enabled = true;
        assert_eq!(c.fill(&pat, &mut out, Budget(None)), 30);
    }

    #[test]
    fn a_wrong_byte_fails_its_message_only() {
        let pat = Pattern::new();
        let mut out = vec![0u8; 64];
        let mut c = ConnLoad::new(9, 16, 4, None);
        c.enabled = true;
        let mut budget = Budget(None);
        let n = c.fill(&pat, &mut out, budget);
        assert_eq!(n, 64);
        c.sent(n, Instant::now(), &mut budget);
        out[20] ^= 1; // message 1
        let mut stats = Stats::new();
        c.received(&out[..n], Instant::now(), &pat, &mut stats);
        assert_eq!(stats.validation_failures, 1);
        assert_eq!(stats.unrecorded_round_trips, 4);
        // Bytes that were never sent are a failure too.
        c.received(&[1, 2, 3], Instant::now(), &pat, &mut stats);
        assert_eq!(stats.validation_failures, 2);
    }

    #[test]
    fn large_messages_span_chunks() {
        let pat = Pattern::new();
        let size = (CHUNK as u64) * 2 + 17;
        let mut c = ConnLoad::new(3, size, 1, None);
        c.enabled = true;
        let mut budget = Budget(None);
        let mut out = vec![0u8; CHUNK];
        let mut stats = Stats::new();
        stats.recording = true;
        let mut total = 0;
        loop {
            let n = c.fill(&pat, &mut out, budget);
            if n == 0 {
                break;
            }
            c.sent(n, Instant::now(), &mut budget);
            c.received(&out[..n], Instant::now(), &pat, &mut stats);
            total += n as u64;
            if stats.round_trips == 2 {
                break;
            }
        }
        assert_eq!(total, 2 * size);
        assert_eq!(stats.validation_failures, 0);
    }
}
