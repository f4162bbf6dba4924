//! Zero allocations per echoed message in steady state, counted (not timed)
//! with a counting global allocator (`stats_alloc`). Its own test binary:
//! the count is process-wide, so nothing else may run meanwhile.

mod util;

use std::alloc::System;
use std::io::{Read, Write};

use readiness_net::{Echo, listener_fn};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use util::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const WARMUP: usize = 2_000;
const MEASURED: usize = 10_000;
/// Allocations allowed over all measured round trips together (not per
/// message): the pool may be refreshed with a new buffer a few times if a
/// turn overlaps a refresh.
const BUDGET: usize = 8;

fn echo_round_trips(size: usize) {
    let (running, addr) = spawn(config(), |lp| {
        let l = lp
            .listen(
                "127.0.0.1:0".parse().unwrap(),
                16,
                listener_fn(|_| Some(Echo::new())),
            )
            .unwrap();
        lp.listener_addr(l).unwrap()
    });
    let mut peer = client(addr);
    let msg: Vec<u8> = (0..size).map(pattern).collect();
    let mut buf = vec![0u8; size];
    let mut round_trip = |peer: &mut std::net::TcpStream| {
        peer.write_all(&msg).unwrap();
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg);
    };
    for _ in 0..WARMUP {
        round_trip(&mut peer);
    }
    let region = Region::new(GLOBAL);
    for _ in 0..MEASURED {
        round_trip(&mut peer);
    }
    let change = region.change();
    let n = change.allocations + change.reallocations;
    println!(
        "{} backend, {size}-byte messages: {n} allocations ({} bytes) in {MEASURED} echoes",
        backend_name(),
        change.bytes_allocated
    );
    assert!(
        n <= BUDGET,
        "{n} allocations in {MEASURED} echoes of {size} bytes (budget {BUDGET} in all): {change:?}"
    );
    drop(peer);
    running.stop();
}

#[test]
fn echo_allocates_nothing_per_message() {
    // The counter counts (else this test could not fail).
    let region = Region::new(GLOBAL);
    let b = std::hint::black_box(Box::new([0u8; 64]));
    drop(b);
    assert!(
        region.change().allocations >= 1,
        "the counting allocator counts nothing"
    );
    // One test function: the allocation count is process-wide.
    echo_round_trips(64);
    echo_round_trips(4096);
}
