//! Running the real `sictl` binary against a test's slice of the local stack.

use std::process::Command;

use anyhow::Context as _;
use si_testkit::TestEnv;

/// Runs `sictl args…` against `env`: (success, stdout, stderr).
pub fn sictl(env: &TestEnv, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_sictl"))
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .args(args)
        .output()
        .context("running sictl")?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}
