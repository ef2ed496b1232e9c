//! Benchmarks (issue #6). Nothing is implemented here yet.
