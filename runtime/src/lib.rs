//! The runtime every Si Twilio channel stage shares: typed configuration,
//! Kafka client construction, the admin HTTP listener (`/metrics`, `/healthz`,
//! `/readyz`), tracing setup with masked addresses, and graceful shutdown.

pub mod admin;
pub mod config;
pub mod kafka;
pub mod mask;
pub mod shutdown;
pub mod telemetry;

pub use admin::{AdminServer, Readiness};
pub use config::{CommonConfig, KafkaArgs, RegistryArgs, ServiceArgs};
pub use shutdown::shutdown_token;
