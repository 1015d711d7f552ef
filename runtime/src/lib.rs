//! The runtime every Si Twilio channel stage shares: typed configuration,
//! Kafka client construction, the admin HTTP listener (`/metrics`, `/healthz`,
//! `/readyz`), tracing setup with masked addresses, and graceful shutdown.
//!
//! Stream stages (normalize, consent, segment, …) implement
//! [`processor::Processor`] and run on [`stream::run`]: exactly-once
//! consume-transform-produce with Kafka transactions, keyed state in
//! [`state::StateStore`]s backed by compacted changelogs, global tables
//! ([`table::GlobalTable`]), dead letters ([`dlq`]) and [`metrics`]. Egress,
//! whose records finish out of order, runs on [`deferred::run`]; both
//! drivers commit through [`txn::Transactions`].

pub mod admin;
pub mod backoff;
pub mod config;
pub mod deferred;
pub mod dlq;
pub mod fetchwatch;
pub mod kafka;
pub mod mask;
pub mod media_url;
pub mod metrics;
pub mod polled;
pub mod processor;
pub mod shutdown;
pub mod state;
pub mod stream;
pub mod table;
pub mod telemetry;
pub mod trace;
pub mod txn;

#[doc(hidden)]
pub mod test_log;

pub use admin::{AdminServer, Readiness, with_admin};
#[doc(hidden)]
pub use mimalloc;

/// Makes mimalloc the binary's global allocator; every stage's `main.rs` says
/// `si_runtime::global_allocator!();`. Decoding and encoding records makes
/// many small, short-lived allocations: under load about a fifth of
/// normalize's CPU was glibc's malloc and free, and with mimalloc its
/// throughput went from 18–27k to 31k webhooks/s (README, "Performance:
/// stages").
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::mimalloc::MiMalloc = $crate::mimalloc::MiMalloc;
    };
}
pub use config::{CommonConfig, GroupArgs, KafkaArgs, RegistryArgs, ServiceArgs};
pub use shutdown::shutdown_token;
