//! A private single-node Kafka broker (a `dev/stack` instance on free ports),
//! for tests that stop or restart the broker: they never disturb the shared
//! one other tests use. The schema registry stays the shared one.

use std::process::Command;

use crate::{free_port, repo_root};

/// A private broker, removed (stopped, its data deleted) when dropped; its
/// log is kept in `target/test-logs`.
pub struct PrivateBroker {
    instance: String,
    port: u16,
    controller_port: u16,
}

impl PrivateBroker {
    /// Starts a broker named after `stem` (plus a random suffix) and waits
    /// until it is ready.
    ///
    /// # Errors
    /// When no port is free or `dev/stack up kafka` fails.
    pub fn start(stem: &str) -> anyhow::Result<Self> {
        let broker = Self {
            instance: format!("{stem}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            port: free_port()?,
            controller_port: free_port()?,
        };
        broker.up()?;
        Ok(broker)
    }

    /// `localhost:<port>`, for `TestEnv::start_on`.
    #[must_use]
    pub fn bootstrap(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Stops the broker (SIGTERM, then SIGKILL after `dev/stack`'s deadline).
    ///
    /// # Errors
    /// When `dev/stack down kafka` fails.
    pub fn down(&self) -> anyhow::Result<()> {
        self.stack(&["down", "kafka"])
    }

    /// Whether the broker accepts connections on its port now.
    #[must_use]
    pub fn listening(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            std::time::Duration::from_secs(1),
        )
        .is_ok()
    }

    fn log(&self) -> std::path::PathBuf {
        repo_root()
            .join(".cache/stack/instances")
            .join(&self.instance)
            .join("logs/kafka.log")
    }

    /// The last `lines` lines of the broker's log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the broker again (its data kept) and waits until it is ready.
    ///
    /// # Errors
    /// When `dev/stack up kafka` fails.
    pub fn up(&self) -> anyhow::Result<()> {
        self.stack(&["up", "kafka"])
    }

    fn stack(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = Command::new(repo_root().join("dev/stack"))
            .args(args)
            .env("SI_STACK_INSTANCE", &self.instance)
            .env("SI_KAFKA_PORT", self.port.to_string())
            .env("SI_KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .status()?;
        anyhow::ensure!(
            status.success(),
            "dev/stack {args:?} (instance {}) failed",
            self.instance
        );
        Ok(())
    }
}

impl Drop for PrivateBroker {
    /// Keeps the broker's log beside the stages' (`target/test-logs/<instance>-kafka.log`)
    /// for a post-mortem, then removes the instance.
    fn drop(&mut self) {
        let kept = crate::process::log_path(&format!("{}-kafka", self.instance));
        let _ = std::fs::copy(self.log(), kept);
        let _ = self.stack(&["reset"]);
    }
}
