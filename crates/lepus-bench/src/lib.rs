//! Benchmarks for lepus; see `benches/`. Run `cargo bench -p lepus-bench`.
//!
//! The codec benchmark encodes and decodes the same messages with lepus-wire and with
//! `amq-protocol` (lapin's codec) in one run, so the ratio between them is what to read: the
//! machines lepus is developed on are noisy, but both sides see the same noise.
