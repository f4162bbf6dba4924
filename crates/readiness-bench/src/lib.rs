//! Benchmarks of readiness against its peers.
//!
//! - The poller benchmarks against polling and mio: `benches/pollers.rs` and
//!   the `bench-ratios` binary that turns criterion's results into ratios.
//! - The echo benchmark: peer echo servers in [`echo`] (binary `echo-peer`),
//!   the matrix runner `echo-matrix` that drives them with
//!   `readiness echo-client`, and `echo-report`, which turns the runner's
//!   JSON into the markdown table and the SVG chart of `docs/BENCHMARKS.md`.
//!   The shared result types are in [`results`].

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod echo;
pub mod results;
// The only module with `unsafe`: the plain-epoll floor (libc) and the
// registration of sockets with polling (an `unsafe fn` in polling 3).
#[allow(unsafe_code)]
mod sys;
