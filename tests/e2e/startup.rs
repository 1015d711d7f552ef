//! Every stage refuses a configuration it cannot run with: it exits at
//! start-up, non-zero, with a message that names the setting (never its
//! value), instead of running with something else or failing later. The
//! stage binaries as an operator starts them, with the rest of their
//! configuration valid.
//!
//! ```sh
//! cargo build --bins
//! cargo test -p si-testkit --test startup
//! ```

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use si_testkit::TestEnv;
use si_testkit::process::stage_binary;

/// Long enough for a start-up that reads a few files; a stage that does not
/// exit by then has accepted the configuration.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// A secret value that must never reach the output.
const SECRET: &str = "s3cr3t-value-never-logged";

/// Runs `binary` against `env` with `vars`, and returns its exit code and
/// everything it printed.
async fn run(env: &TestEnv, binary: &str, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(stage_binary(binary).unwrap());
    // Only what the test gives: nothing of the caller's environment (a
    // TWILIO_* variable there would complete the configuration).
    command
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = tokio::time::timeout(EXIT_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!("{binary} still runs after {EXIT_DEADLINE:?}: it accepted {vars:?}")
        })
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

/// `binary` exits non-zero, saying `expected`, without the secret.
async fn refuses(env: &TestEnv, binary: &str, vars: &[(&str, &str)], expected: &str) {
    let (code, printed) = run(env, binary, vars).await;
    assert!(
        code.is_some_and(|c| c != 0),
        "{binary} exited with {code:?}:\n{printed}"
    );
    assert!(
        printed.contains(expected),
        "{binary} does not say {expected:?}:\n{printed}"
    );
    assert!(
        !printed.contains(SECRET),
        "{binary} printed a secret:\n{printed}"
    );
}

/// A fresh directory, as a mounted Secret, holding `files`.
fn secret_dir(env: &TestEnv, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}{name}", env.kafka.topic_prefix));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, value) in files {
        std::fs::write(dir.join(file), value).unwrap();
    }
    dir
}

const INGRESS: &[(&str, &str)] = &[
    ("PUBLIC_BASE_URL", "https://si.example.com"),
    ("TWILIO_AUTH_TOKEN", SECRET),
];

#[tokio::test]
async fn ingress_refuses_a_mounted_secret_it_cannot_check_webhooks_with() {
    let env = TestEnv::start().await.unwrap();
    // Only a shared secret: no Auth Token to check a signature with, and
    // the environment's token must not be used instead.
    let dir = secret_dir(&env, "no-token", &[("webhook-shared-secret", SECRET)]);
    let dir_str = dir.to_string_lossy();
    let vars = [INGRESS, &[("TWILIO_CREDENTIALS_DIR", dir_str.as_ref())]].concat();
    refuses(
        &env,
        "si-ingress",
        &vars,
        "holds webhook-shared-secret but no auth-token",
    )
    .await;

    // A file that cannot be read: named, with the reason.
    let unreadable = secret_dir(&env, "unreadable", &[]);
    std::fs::create_dir_all(unreadable.join("auth-token")).unwrap();
    let unreadable_str = unreadable.to_string_lossy();
    let vars = [
        INGRESS,
        &[("TWILIO_CREDENTIALS_DIR", unreadable_str.as_ref())],
    ]
    .concat();
    let expected = format!("reading {}", unreadable.join("auth-token").display());
    refuses(&env, "si-ingress", &vars, &expected).await;

    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(unreadable);
}

#[tokio::test]
async fn consent_refuses_a_rate_limit_it_cannot_read() {
    let env = TestEnv::start().await.unwrap();
    for limit in ["ten a minute", "10/0s", "0/1m"] {
        refuses(
            &env,
            "si-consent",
            &[("CONSENT_RATE_LIMIT", limit)],
            "CONSENT_RATE_LIMIT",
        )
        .await;
    }
}

#[tokio::test]
async fn egress_refuses_half_an_api_key() {
    let env = TestEnv::start().await.unwrap();
    refuses(
        &env,
        "si-egress",
        &[
            ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000"),
            ("TWILIO_API_KEY_SECRET", SECRET),
        ],
        "TWILIO_API_KEY_SECRET is set but TWILIO_API_KEY_SID is not",
    )
    .await;
    // The same in the mounted Secret.
    let dir = secret_dir(
        &env,
        "egress-half",
        &[("api-key-sid", "SK00000000000000000000000000000000")],
    );
    let dir_str = dir.to_string_lossy();
    refuses(
        &env,
        "si-egress",
        &[
            ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000"),
            ("TWILIO_AUTH_TOKEN", SECRET),
            ("TWILIO_CREDENTIALS_DIR", dir_str.as_ref()),
        ],
        "api-key-sid is set but api-key-secret is not",
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn media_refuses_a_token_without_its_account() {
    let env = TestEnv::start().await.unwrap();
    let store = std::env::temp_dir().join(format!("{}media-store", env.kafka.topic_prefix));
    let store_url = format!("file://{}", store.display());
    refuses(
        &env,
        "si-media",
        &[
            ("MEDIA_STORE_URL", store_url.as_str()),
            ("TWILIO_AUTH_TOKEN_SECONDARY", SECRET),
        ],
        "TWILIO_AUTH_TOKEN / TWILIO_AUTH_TOKEN_SECONDARY needs TWILIO_ACCOUNT_SID",
    )
    .await;
    let _ = std::fs::remove_dir_all(store);
}
