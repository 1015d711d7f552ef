//! A private single-node Kafka broker (a `dev/stack` instance on free ports),
//! for tests that stop or restart the broker: they never disturb the shared
//! one other tests use. The schema registry stays the shared one.

use std::path::PathBuf;
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

    /// Where `dev/stack` keeps this instance (`SI_CACHE_DIR` as it reads it).
    fn home(&self) -> PathBuf {
        stack_dir().join("instances").join(&self.instance)
    }

    fn log(&self) -> PathBuf {
        self.home().join("logs/kafka.log")
    }

    /// The last `lines` lines of the broker's log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The record batches of `topic` (the full name) partition `partition`
    /// whose offsets come within `around` of `offsets`, as Kafka's own
    /// `kafka-dump-log.sh` prints them from the broker's data: base and last
    /// offset, producer id and epoch, transactional or control (a commit or
    /// abort marker). What a doubled record needs for a diagnosis: which
    /// producer epoch wrote each copy, and which marker ended it.
    #[must_use]
    pub fn batches(&self, topic: &str, partition: i32, offsets: &[i64], around: i64) -> String {
        let dir = self
            .home()
            .join("data/kafka")
            .join(format!("{topic}-{partition}"));
        let mut segments: Vec<_> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log"))
                    .collect()
            })
            .unwrap_or_default();
        if segments.is_empty() {
            return format!("no log segments in {}", dir.display());
        }
        segments.sort();
        let files = segments
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        // Kafka's DumpLogSegments (kafka-dump-log.sh) from the stack's jars.
        let java = std::env::var("SI_KAFKA_JAVA").unwrap_or_else(|_| "java".into());
        let Some(kafka_home) = kafka_home() else {
            return format!("no Kafka in {}", stack_dir().display());
        };
        let classpath = kafka_home.join("libs/*");
        let output = match Command::new(&java)
            .arg("-cp")
            .arg(&classpath)
            .args([
                "org.apache.kafka.tools.DumpLogSegments",
                "--print-data-log",
                "--files",
                &files,
            ])
            .output()
        {
            Ok(output) => output,
            Err(e) => return format!("{java} DumpLogSegments: {e}"),
        };
        let field = |line: &str, name: &str| {
            line.split(&format!("{name}: "))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let near = |first: i64, last: i64| {
            offsets
                .iter()
                .any(|o| first <= o + around && last >= o - around)
        };
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                if let (Some(base), Some(last)) =
                    (field(line, "baseOffset"), field(line, "lastOffset"))
                {
                    // A batch: up to its flags, without positions and CRCs.
                    near(base, last).then(|| line.split(" deleteHorizonMs:").next().unwrap_or(line))
                } else if line.contains("endTxnMarker") {
                    // A control record: which marker, for which epoch.
                    let offset = field(line, "| offset")?;
                    near(offset, offset).then_some(line)
                } else {
                    None
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
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
    /// for a post-mortem, then removes the instance; with `SI_KEEP_TEST_TOPICS`
    /// set it only stops the broker, keeps its data and says how to start it
    /// again.
    fn drop(&mut self) {
        let kept = crate::process::log_path(&format!("{}-kafka", self.instance));
        let _ = std::fs::copy(self.log(), kept);
        if std::env::var_os("SI_KEEP_TEST_TOPICS").is_some() {
            eprintln!(
                "[testkit] SI_KEEP_TEST_TOPICS: broker instance {instance} stopped, its data kept; \
                 start it with SI_STACK_INSTANCE={instance} SI_KAFKA_PORT={port} \
                 SI_KAFKA_CONTROLLER_PORT={controller} dev/stack up kafka",
                instance = self.instance,
                port = self.port,
                controller = self.controller_port
            );
            let _ = self.stack(&["down"]);
        } else {
            let _ = self.stack(&["reset"]);
        }
    }
}

/// `dev/stack`'s directory: `$SI_CACHE_DIR/stack`, by default `.cache/stack`.
fn stack_dir() -> PathBuf {
    std::env::var_os("SI_CACHE_DIR")
        .map_or_else(|| repo_root().join(".cache"), PathBuf::from)
        .join("stack")
}

/// The Kafka `dev/stack` fetched (`kafka-<version>`, with its `libs`), the
/// newest if there are several.
fn kafka_home() -> Option<PathBuf> {
    let mut homes: Vec<PathBuf> = std::fs::read_dir(stack_dir())
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("kafka-"))
                && path.join("libs").is_dir()
        })
        .collect();
    homes.sort_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
    homes.pop()
}
