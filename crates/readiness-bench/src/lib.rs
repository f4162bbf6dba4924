//! Benchmarks of readiness against its peers; see `benches/`.
