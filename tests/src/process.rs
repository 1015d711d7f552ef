//! Stage binaries as child processes of a test: started with the test's
//! Kafka prefix and registry, logging to a file, ready when `/readyz` says so,
//! and killed when dropped (a failing test leaves no stray process behind).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{TestEnv, free_port, repo_root};

/// The path of a workspace binary (`si-ingress`, `si-normalize`, ...) built in
/// the same profile as the running test.
///
/// `cargo test --workspace` builds every binary of the workspace before it runs
/// the tests; for a single package, build the stages first
/// (`cargo build --bins`).
///
/// # Errors
/// When the binary has not been built.
pub fn stage_binary(name: &str) -> anyhow::Result<PathBuf> {
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable outside a cargo target directory")?;
    let path = profile_dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{} is not built: run `cargo build --bins` (cargo test --workspace builds it)",
            path.display()
        )
    }
}

/// Runs the built `sictl` (see [`stage_binary`]) with `args` against
/// `env`'s slice of the stack (its brokers, registry and topic prefix) and
/// waits for it to exit.
///
/// # Errors
/// When the binary is missing or cannot be started.
pub fn sictl(env: &TestEnv, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(stage_binary("sictl")?)
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running sictl")
}

/// Where test children write their logs: `target/test-logs/<name>.log`.
#[must_use]
pub fn log_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from)
        .join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{name}.log"))
}

/// What [`StageProcess::spawn`] sets for tests: short Kafka session and
/// transaction timeouts keep restarts quick, a short commit interval keeps
/// waits short.
pub const TEST_TUNING: &[(&str, &str)] = &[
    ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
    ("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
    ("TRANSACTION_TIMEOUT", "10s"),
    ("COMMIT_INTERVAL", "20ms"),
];

/// A running stage binary, killed (SIGKILL) on drop unless stopped before.
pub struct StageProcess {
    name: String,
    child: Option<Child>,
    admin: String,
    log: PathBuf,
}

/// Spawns `stages` (binary, extra variables, after the `common` ones) as pod
/// `pod` against `env`, and waits until every one is ready.
///
/// # Errors
/// When one cannot start or is not ready within `deadline`.
pub async fn spawn_ready(
    env: &TestEnv,
    pod: &str,
    common: &[(&str, &str)],
    stages: Vec<(&str, Vec<(&str, &str)>)>,
    deadline: Duration,
) -> anyhow::Result<Vec<StageProcess>> {
    let mut running = Vec::new();
    for (binary, extra) in stages {
        let vars: Vec<(&str, &str)> = common.iter().copied().chain(extra).collect();
        running.push(StageProcess::spawn(env, binary, pod, &vars)?);
    }
    for stage in &mut running {
        stage.ready(deadline).await?;
    }
    Ok(running)
}

impl StageProcess {
    /// Starts `binary` against `env` (bootstrap servers, registry, topic
    /// prefix), as pod `pod`, with its admin listener on a free port and the
    /// extra environment `vars`. Short Kafka session and transaction timeouts
    /// keep restarts in tests quick.
    ///
    /// # Errors
    /// When the binary is missing or cannot be started.
    pub fn spawn(
        env: &TestEnv,
        binary: &str,
        pod: &str,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let name = format!(
            "{}-{binary}-{pod}",
            env.kafka.topic_prefix.trim_end_matches('.')
        );
        let tuned: Vec<(&str, &str)> = TEST_TUNING
            .iter()
            .copied()
            .chain(vars.iter().copied())
            .collect();
        Self::spawn_at(env, &stage_binary(binary)?, pod, &tuned, &log_path(&name))
    }

    /// Starts the executable at `path` against `env` as pod `pod`, with its
    /// admin listener on a free port, logging to `log`, and only the
    /// environment `vars` besides the connection settings: the stage's own
    /// defaults otherwise (no test tuning), as a benchmark wants them.
    ///
    /// # Errors
    /// When the executable cannot be started.
    pub fn spawn_at(
        env: &TestEnv,
        path: &Path,
        pod: &str,
        vars: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let binary = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!(
            "{}-{binary}-{pod}",
            env.kafka.topic_prefix.trim_end_matches('.')
        );
        // Appended to: a stage restarted under the same pod keeps one log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(path);
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
            .env("SCHEMA_REGISTRY_URL", &env.registry.url)
            .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
            .env("POD_NAME", pod)
            .env("ADMIN_ADDR", &admin)
            // `SI_TEST_LOG_LEVEL` (with `KAFKA_DEBUG=cgrp`, say) for a post-mortem.
            .env(
                "LOG_LEVEL",
                std::env::var("SI_TEST_LOG_LEVEL")
                    .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".to_owned()),
            );
        for (key, value) in vars {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(Self {
            name,
            child: Some(child),
            admin,
            log: log.to_path_buf(),
        })
    }

    /// The process id, while the process is running (not killed or stopped).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The admin listener (`host:port`).
    #[must_use]
    pub fn admin_addr(&self) -> &str {
        &self.admin
    }

    /// The sum of the samples of metric `name` (a histogram's `_count` or
    /// `_sum` by that name) whose labels include every one of `labels`
    /// (written `key="value"`), from the stage's `/metrics`.
    ///
    /// # Errors
    /// When the admin listener does not answer.
    pub async fn metric_sum(&self, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let (labelled, value) = rest.rsplit_once(' ')?;
                // `name` itself, not a longer name it begins.
                let this = labelled.is_empty() || labelled.starts_with('{');
                (this && labels.iter().all(|l| labelled.contains(l)))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum())
    }

    /// The log file.
    #[must_use]
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log, for failure messages.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// When the process exits or is not ready within `deadline` (with its log tail).
    pub async fn ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.admin);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("{} exited with {status}:\n{}", self.name, self.log_tail(30));
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > until {
                bail!(
                    "{} not ready within {deadline:?}:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How the process ended, once it has ended on its own (`None` while it
    /// runs, and after [`Self::kill`] or [`Self::terminate`]).
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// SIGKILL: no chance to clean up, like a node failure.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `deadline`).
    ///
    /// # Errors
    /// When the process does not exit in time or exits unsuccessfully.
    pub fn terminate(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -TERM failed");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
                return Ok(());
            }
            if Instant::now() > until {
                child.kill()?;
                child.wait()?;
                bail!("{} did not stop within {deadline:?} of SIGTERM", self.name);
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `condition` returns `Some`, polling every 50 ms.
///
/// # Errors
/// When `deadline` passes first; the error names `what`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = condition().await? {
            return Ok(value);
        }
        if Instant::now() > until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
