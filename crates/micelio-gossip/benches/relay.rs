//! Relay benchmarks (being written).
fn main() {}
