//! Benchmarks of readiness against its peers, polling and mio: see
//! `benches/pollers.rs`, the `bench-ratios` binary that turns criterion's
//! results into ratios, and `docs/BENCHMARKS.md` for the method and figures.
