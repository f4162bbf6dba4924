//! Which deadline structure for idle timeouts re-armed on every read?
//!
//! `cargo bench -p readiness-net --bench timers`
//!
//! N connections (1,000 / 20,000 / 100,000), each with a 10 s idle timeout.
//! One operation = one read on a pseudo-random connection (the timeout is
//! re-armed) plus the expiry work that falls due; the clock advances 10 µs
//! per operation (100,000 reads per second in all), for 2,000,000
//! operations. Three candidates:
//!
//! - `lazy-rearm heap` (what the loop uses: `readiness_net::timer`): one
//!   heap entry per connection; a read stores the time; an entry that comes
//!   due early is pushed again at the real deadline.
//! - `heap per re-arm`: every read pushes a new entry (generation-checked
//!   lazy deletion); stale entries are popped and skipped.
//! - `timing wheel`: hashed wheel, 1 ms slots, 16,384 slots, an intrusive
//!   doubly linked list per slot (re-arm = unlink + link, O(1)).
//!
//! Prints ns per operation and the structure's entries at the end.

use std::hint::black_box;
use std::time::Instant;

use readiness_net::timer::TimerHeap;

const TIMEOUT_US: u64 = 10_000_000;
const STEP_US: u64 = 10;
const OPS: u64 = 2_000_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

trait Timers {
    fn name(&self) -> &'static str;
    fn rearm(&mut self, conn: usize, now: u64);
    /// Processes what is due at `now`; returns how many timeouts fired.
    fn expire(&mut self, now: u64) -> usize;
    fn entries(&self) -> usize;
}

/// The loop's structure: times in ms as the loop keeps them.
struct LazyRearm {
    heap: TimerHeap,
    last: Vec<u64>,
    armed_at: Vec<u64>,
}

impl LazyRearm {
    fn new(n: usize) -> Self {
        let mut heap = TimerHeap::new();
        for i in 0..n {
            heap.push(TIMEOUT_US / 1000, i as u32, 0);
        }
        LazyRearm {
            heap,
            last: vec![0; n],
            armed_at: vec![TIMEOUT_US / 1000; n],
        }
    }
}

impl Timers for LazyRearm {
    fn name(&self) -> &'static str {
        "lazy-rearm heap (used)"
    }
    #[inline]
    fn rearm(&mut self, conn: usize, now: u64) {
        self.last[conn] = now / 1000;
    }
    fn expire(&mut self, now: u64) -> usize {
        let now = now / 1000;
        let mut fired = 0;
        while let Some(e) = self.heap.pop_due(now) {
            let i = e.slot as usize;
            if self.armed_at[i] != e.deadline {
                continue;
            }
            let real = self.last[i] + TIMEOUT_US / 1000;
            if real > now {
                self.armed_at[i] = real;
                self.heap.push(real, e.slot, 0);
            } else {
                fired += 1;
                self.last[i] = now;
                self.armed_at[i] = now + TIMEOUT_US / 1000;
                self.heap.push(now + TIMEOUT_US / 1000, e.slot, 0);
            }
        }
        fired
    }
    fn entries(&self) -> usize {
        self.heap.len()
    }
}

/// A new heap entry per re-arm.
struct PushPerRearm {
    heap: TimerHeap,
    gens: Vec<u32>,
}

impl PushPerRearm {
    fn new(n: usize) -> Self {
        let mut heap = TimerHeap::new();
        for i in 0..n {
            heap.push(TIMEOUT_US / 1000, i as u32, 0);
        }
        PushPerRearm {
            heap,
            gens: vec![0; n],
        }
    }
}

impl Timers for PushPerRearm {
    fn name(&self) -> &'static str {
        "heap, push per re-arm"
    }
    #[inline]
    fn rearm(&mut self, conn: usize, now: u64) {
        self.gens[conn] = self.gens[conn].wrapping_add(1);
        self.heap
            .push(now / 1000 + TIMEOUT_US / 1000, conn as u32, self.gens[conn]);
    }
    fn expire(&mut self, now: u64) -> usize {
        let now = now / 1000;
        let mut fired = 0;
        while let Some(e) = self.heap.pop_due(now) {
            let i = e.slot as usize;
            if self.gens[i] != e.gn {
                continue;
            }
            fired += 1;
            self.gens[i] = self.gens[i].wrapping_add(1);
            self.heap
                .push(now + TIMEOUT_US / 1000, e.slot, self.gens[i]);
        }
        fired
    }
    fn entries(&self) -> usize {
        self.heap.len()
    }
}

const SLOTS: usize = 16_384;
const NIL: u32 = u32::MAX;

/// Hashed timing wheel with 1 ms slots and intrusive lists.
struct Wheel {
    head: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    slot: Vec<u32>,
    deadline: Vec<u64>,
    cursor: u64,
}

impl Wheel {
    fn new(n: usize) -> Self {
        let mut w = Wheel {
            head: vec![NIL; SLOTS],
            next: vec![NIL; n],
            prev: vec![NIL; n],
            slot: vec![NIL; n],
            deadline: vec![0; n],
            cursor: 0,
        };
        for i in 0..n {
            w.link(i, TIMEOUT_US / 1000);
        }
        w
    }
    fn link(&mut self, i: usize, deadline: u64) {
        let s = (deadline as usize) % SLOTS;
        self.deadline[i] = deadline;
        self.slot[i] = s as u32;
        self.prev[i] = NIL;
        self.next[i] = self.head[s];
        if self.head[s] != NIL {
            self.prev[self.head[s] as usize] = i as u32;
        }
        self.head[s] = i as u32;
    }
    fn unlink(&mut self, i: usize) {
        let s = self.slot[i] as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.head[s] = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        }
    }
}

impl Timers for Wheel {
    fn name(&self) -> &'static str {
        "timing wheel"
    }
    #[inline]
    fn rearm(&mut self, conn: usize, now: u64) {
        self.unlink(conn);
        self.link(conn, now / 1000 + TIMEOUT_US / 1000);
    }
    fn expire(&mut self, now: u64) -> usize {
        let now = now / 1000;
        let mut fired = 0;
        while self.cursor <= now {
            let s = (self.cursor as usize) % SLOTS;
            let mut i = self.head[s];
            while i != NIL {
                let next = self.next[i as usize];
                if self.deadline[i as usize] <= now {
                    fired += 1;
                    self.unlink(i as usize);
                    self.link(i as usize, now + TIMEOUT_US / 1000);
                }
                i = next;
            }
            self.cursor += 1;
        }
        fired
    }
    fn entries(&self) -> usize {
        self.next.len()
    }
}

fn run(t: &mut dyn Timers, n: usize) -> (f64, usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut now = 0;
    let mut fired = 0;
    let t0 = Instant::now();
    for _ in 0..OPS {
        now += STEP_US;
        let conn = (rng.next() % n as u64) as usize;
        t.rearm(conn, now);
        fired += t.expire(now);
    }
    let ns = t0.elapsed().as_nanos() as f64 / OPS as f64;
    black_box(fired);
    (ns, fired)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    println!(
        "{} ops, one re-arm each, clock +{STEP_US} us per op, {} s idle timeout",
        OPS,
        TIMEOUT_US / 1_000_000
    );
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>12}",
        "structure", "conns", "ns/op", "timeouts", "entries"
    );
    for n in [1_000usize, 20_000, 100_000] {
        let mut cands: Vec<Box<dyn Timers>> = vec![
            Box::new(LazyRearm::new(n)),
            Box::new(PushPerRearm::new(n)),
            Box::new(Wheel::new(n)),
        ];
        for t in cands.iter_mut() {
            // Best of three runs against noise.
            let mut best = f64::MAX;
            let mut fired = 0;
            let mut entries = 0;
            for _ in 0..3 {
                let mut fresh: Box<dyn Timers> = match t.name() {
                    "timing wheel" => Box::new(Wheel::new(n)),
                    "heap, push per re-arm" => Box::new(PushPerRearm::new(n)),
                    _ => Box::new(LazyRearm::new(n)),
                };
                let (ns, f) = run(fresh.as_mut(), n);
                if ns < best {
                    best = ns;
                    fired = f;
                    entries = fresh.entries();
                }
            }
            println!(
                "{:<24} {:>8} {:>10.1} {:>10} {:>12}",
                t.name(),
                n,
                best,
                fired,
                entries
            );
        }
    }
}
