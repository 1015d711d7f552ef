//! Fuzz targets for every parser of the Si Twilio channel that takes outside
//! input, and the driver that runs them on stable Rust.
//!
//! A target is a function `fn(&[u8])` that panics when an invariant is
//! broken ([`targets`]). The driver ([`engine`]) feeds it inputs from the seed
//! corpus under `fuzz/corpus/<target>/`, mutated (bit flips, splices, numbers
//! that are interesting as lengths, dictionary tokens, tricky Unicode) or
//! generated (Avro datums from each record's schema, [`avro_gen`]), catches
//! panics and keeps the inputs that caused them.
//!
//! - `cargo test -p si-fuzz` runs every target for a fixed number of seeded
//!   inputs (the short run CI does through `dev/test`).
//! - `si-fuzz run <target|all> --seconds 600` is the long run.

pub mod avro_gen;
pub mod engine;
pub mod rng;
pub mod seeds;
pub mod targets;

pub use engine::{Budget, Report, Target};
pub use targets::TARGETS;

/// The corpus directory of the crate (`fuzz/corpus`).
#[must_use]
pub fn corpus_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}
