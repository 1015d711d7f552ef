//! `si-bench`, the pipeline benchmark behind `dev/bench`: every stage as its
//! own release process on an isolated topic prefix, the Twilio sandbox as
//! Twilio, signed inbound SMS at fixed arrival rates (open loop) through
//! ingress, and per hop and end to end latency from record timestamps and the
//! sandbox's receive times, with throughput, CPU, RSS, each stage's
//! transactions, losses and duplicates.
//! The pieces are here so they can be tested; `main.rs` runs them.

pub mod accounting;
pub mod commits;
pub mod load;
pub mod report;
pub mod stats;
pub mod topics;

/// CPU and memory from `/proc`, shared with the stages' own benchmarks.
pub use si_testkit::procfs;
