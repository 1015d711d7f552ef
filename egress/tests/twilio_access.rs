//! Egress and Twilio's side of the door: credentials Twilio refuses (held
//! operations, a metric, one log line, a rotation picked up from the
//! credentials directory without a restart) and the connectivity health
//! check (gauge and /readyz detail, never unready). Real broker and registry,
//! the in-process sandbox, egress as a child process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Egress, SENDER_NUMBER, op, produce_ops, statuses};
use si_schemas::records::DeliveryOutcome;
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::process::wait_for;
use twilio_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

const PROBE_INTERVAL_MS: i64 = 2_000;

async fn sandbox() -> anyhow::Result<SandboxHandle> {
    Sandbox::start(SandboxConfig {
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await
}

/// Writes a credential file as the kubelet updates a Secret volume: a new
/// file renamed over the old one, so a reader never sees half a value.
fn write_secret(dir: &Path, name: &str, value: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!("..{name}.tmp"));
    std::fs::write(&tmp, value)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn secret_dir(env: &TestEnv) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{}twilio-secret", env.kafka.topic_prefix));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Stops egress cleanly and the sandbox, and removes the secret directory.
async fn stop(egress: Egress, sandbox: SandboxHandle, dir: &Path) -> anyhow::Result<()> {
    egress.stop().await?;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// The value of the first series of `name` whose labels contain `labels`.
fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(labels))
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The value of a metric (its only series: egress adds the `stage` label).
async fn metric(admin: &str, name: &str) -> anyhow::Result<Option<f64>> {
    let (_, text) = get(&format!("http://{admin}/metrics")).await?;
    Ok(series(&text, name, ""))
}

async fn wait_for_metric(
    admin: &str,
    name: &str,
    deadline: Duration,
    ok: fn(f64) -> bool,
) -> anyhow::Result<f64> {
    wait_for(&format!("{name} to match"), deadline, || {
        let found = metric(admin, name);
        async move { Ok(found.await?.filter(|v| ok(*v))) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_hold_operations_until_the_secret_is_rotated() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let dir = secret_dir(&env)?;
    write_secret(&dir, "auth-token", "a-token-twilio-refuses\n")?;

    // Two senders, three conversations.
    let other_sender = "+14155550111";
    let ops = vec![
        op("auth-a1", &format!("CH{:032}", 1), SENDER_NUMBER),
        op("auth-a2", &format!("CH{:032}", 1), SENDER_NUMBER),
        op("auth-b1", &format!("CH{:032}", 2), SENDER_NUMBER),
        op("auth-c1", &format!("CH{:032}", 3), other_sender),
    ];
    produce_ops(&env, &ops).await?;
    let admin = format!("127.0.0.1:{}", si_testkit::free_port()?);
    let dir_str = dir.to_string_lossy().into_owned();
    let mut egress = Egress::spawn(
        &env,
        &sandbox,
        "auth",
        &[
            // The directory is the only source: the environment's token is unset.
            ("TWILIO_AUTH_TOKEN", ""),
            ("TWILIO_CREDENTIALS_DIR", &dir_str),
            ("TWILIO_CREDENTIALS_RELOAD_INTERVAL", "500ms"),
            ("TWILIO_AUTH_PROBE_INTERVAL", "2s"),
            // Other retries are fast: a 401 retried like them would show.
            ("EGRESS_RETRY_MAX", "200ms"),
            ("ADMIN_ADDR", &admin),
        ],
    )?;

    // Refused, held: probes go at the probe interval, not at the retry pace.
    let refused = |sandbox: &SandboxHandle| -> Vec<i64> {
        sandbox
            .requests()
            .iter()
            .filter(|r| r.status == 401)
            .map(|r| r.at_ms)
            .collect()
    };
    wait_for("5 s of refused requests", Duration::from_secs(90), || {
        let at = refused(&sandbox);
        let span = at.iter().max().unwrap_or(&0) - at.iter().min().unwrap_or(&0);
        async move { Ok((span >= 5_000).then_some(())) }
    })
    .await?;
    let at = refused(&sandbox);
    let span = at.iter().max().unwrap() - at.iter().min().unwrap();
    let bound = ops.len() + usize::try_from(span / PROBE_INTERVAL_MS)? + 1;
    eprintln!(
        "[auth] {} requests refused over {span} ms (at most {bound} expected: one per operation, then one probe per interval)",
        at.len()
    );
    assert!(
        at.len() <= bound,
        "{} refused requests over {span} ms: the senders do not hold",
        at.len()
    );
    assert_eq!(
        wait_for_metric(
            &admin,
            "si_egress_twilio_credentials_rejected",
            Duration::from_secs(10),
            |v| v == 1.0
        )
        .await?,
        1.0
    );
    // Shown on /readyz, which stays 200: every replica shares the
    // credentials, so taking pods out of service would help nothing.
    let (status, body) = get(&format!("http://{admin}/readyz")).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("twilio-credentials: refused by Twilio (401); operations held"),
        "{body}"
    );
    let failures = metric(&admin, "si_egress_twilio_auth_failures_total")
        .await?
        .unwrap_or(0.0);
    assert!(failures >= 3.0, "auth failures counted: {failures}");
    // Nothing ended: no status, no dead letter.
    assert!(
        env.read_raw(topics::DELIVERY, 1, Duration::from_secs(2))
            .await
            .is_err(),
        "no terminal status while the credentials are refused"
    );
    assert!(
        env.read_raw(topics::OUTBOUND_DLQ, 1, Duration::from_secs(1))
            .await
            .is_err(),
        "nothing dead-lettered for an auth failure"
    );
    // One line for the refusal, however many requests were refused.
    assert_eq!(egress.log_lines("Twilio refuses egress's credentials"), 1);
    // Then at most one line a minute (none unless this machine is so slow
    // that the refusals have lasted that long).
    let minutes = usize::try_from(started.elapsed().as_secs() / 60)?;
    assert!(egress.log_lines("Twilio still refuses") <= minutes);
    assert_eq!(
        egress.log_lines("a-token-twilio-refuses"),
        0,
        "no secret in the log"
    );

    // The Secret is rotated: the right token lands in the directory.
    let rotated = Instant::now();
    write_secret(&dir, "auth-token", &format!("{}\n", sandbox.auth_token()))?;
    let by_id = statuses(&env, ops.len(), Duration::from_secs(60)).await?;
    eprintln!(
        "[auth] all {} operations accepted {:?} after the rotation",
        ops.len(),
        rotated.elapsed()
    );
    for o in &ops {
        assert_eq!(by_id[&o.operation_id].outcome, DeliveryOutcome::Accepted);
    }
    assert!(egress.child.try_wait()?.is_none(), "no restart");
    // Exactly once at Twilio, and no further status.
    let requests = sandbox.requests();
    for o in &ops {
        let accepted = requests
            .iter()
            .filter(|r| r.operation_id.as_deref() == Some(&o.operation_id) && r.status == 201)
            .count();
        assert_eq!(accepted, 1, "{} accepted {accepted} times", o.operation_id);
    }
    assert!(
        env.read_raw(topics::DELIVERY, ops.len() + 1, Duration::from_secs(3))
            .await
            .is_err()
    );
    wait_for_metric(
        &admin,
        "si_egress_twilio_credentials_rejected",
        Duration::from_secs(10),
        |v| v == 0.0,
    )
    .await?;
    let (_, body) = get(&format!("http://{admin}/readyz")).await?;
    assert!(body.contains("twilio-credentials: not refused"), "{body}");
    assert_eq!(egress.log_lines("Twilio credentials changed"), 1);
    assert_eq!(egress.log_lines("accepts egress's credentials again"), 1);
    assert_eq!(
        egress.log_lines(&sandbox.auth_token()),
        0,
        "no secret in the log"
    );
    stop(egress, sandbox, &dir).await
}

/// A call to the Accounts API's token endpoints, as an operator makes it.
async fn tokens_api(
    sandbox: &SandboxHandle,
    path: &str,
    token: &str,
) -> anyhow::Result<serde_json::Value> {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", sandbox.base_url()))
        .basic_auth(sandbox.account_sid(), Some(token))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

/// The runbook's Auth Token rotation, against the sandbox's token API:
/// the new token is loaded as the secondary (egress switches to it, which
/// Twilio takes from its creation on), then promoted (the old one is revoked
/// at once), then written as the primary. Not one request is refused, and
/// no restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_auth_token_rotation_through_the_secondary_refuses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let dir = secret_dir(&env)?;
    let old = sandbox.auth_token();
    write_secret(&dir, "auth-token", &format!("{old}\n"))?;
    let admin = format!("127.0.0.1:{}", si_testkit::free_port()?);
    let dir_str = dir.to_string_lossy().into_owned();
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "rotation",
        &[
            ("TWILIO_AUTH_TOKEN", ""),
            ("TWILIO_CREDENTIALS_DIR", &dir_str),
            ("TWILIO_CREDENTIALS_RELOAD_INTERVAL", "300ms"),
            ("ADMIN_ADDR", &admin),
        ],
    )?;
    let conversation = format!("CH{:032}", 7);
    let send = |n: usize| {
        let (env, conversation) = (&env, &conversation);
        async move {
            produce_ops(
                env,
                &[op(&format!("rotate-{n}"), conversation, SENDER_NUMBER)],
            )
            .await?;
            statuses(env, n, Duration::from_secs(60)).await
        }
    };
    send(1).await?;

    // 1-2. A secondary token, loaded into the Secret: egress uses it.
    let created = tokens_api(&sandbox, "/v1/AuthTokens/Secondary", &old).await?;
    let new = created["secondary_auth_token"]
        .as_str()
        .expect("the new token")
        .to_owned();
    write_secret(&dir, "auth-token-secondary", &format!("{new}\n"))?;
    let changes = |n: usize| {
        let seen = egress.log_lines("Twilio credentials changed");
        async move { Ok((seen == n).then_some(())) }
    };
    wait_for(
        "egress on the secondary token",
        Duration::from_secs(30),
        || changes(1),
    )
    .await?;
    send(2).await?;

    // 4. Promoted: the old token is revoked at once.
    let promoted = tokens_api(&sandbox, "/v1/AuthTokens/Promote", &new).await?;
    assert_eq!(promoted["auth_token"], new.as_str());
    assert_eq!(sandbox.auth_token(), new);
    assert!(
        tokens_api(&sandbox, "/v1/AuthTokens/Secondary", &old)
            .await
            .is_err(),
        "the old token is refused"
    );
    send(3).await?;

    // 5. The new token written as the primary, the secondary cleared.
    write_secret(&dir, "auth-token", &format!("{new}\n"))?;
    write_secret(&dir, "auth-token-secondary", "")?;
    wait_for("egress on the new primary", Duration::from_secs(30), || {
        changes(2)
    })
    .await?;
    let by_id = send(4).await?;

    for n in 1..=4 {
        assert_eq!(
            by_id[&format!("rotate-{n}")].outcome,
            DeliveryOutcome::Accepted
        );
    }
    // Nothing egress sent was refused.
    let refused: Vec<_> = sandbox
        .requests()
        .into_iter()
        .filter(|r| r.status == 401)
        .collect();
    assert!(refused.is_empty(), "egress was refused: {refused:?}");
    let failures = metric(&admin, "si_egress_twilio_auth_failures_total").await?;
    assert_eq!(failures.unwrap_or(0.0), 0.0);
    assert_eq!(
        egress.log_lines(&old) + egress.log_lines(&new),
        0,
        "no secret in the log"
    );
    stop(egress, sandbox, &dir).await
}

/// A rotation abandoned at Twilio (the secondary deleted) but not in the
/// Secret: egress starts on the secondary, Twilio refuses it, and within a
/// second egress tries the primary, which Twilio takes. The scheduled
/// reload is an hour away: only the refusal moved it. Every operation is
/// accepted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_token_twilio_refuses_gives_way_to_the_primary() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let dir = secret_dir(&env)?;
    write_secret(&dir, "auth-token", &format!("{}\n", sandbox.auth_token()))?;
    write_secret(&dir, "auth-token-secondary", "a-deleted-secondary\n")?;
    let ops: Vec<_> = (1..=3)
        .map(|n| {
            op(
                &format!("stale-{n}"),
                &format!("CH{:032}", 8),
                SENDER_NUMBER,
            )
        })
        .collect();
    produce_ops(&env, &ops).await?;
    let dir_str = dir.to_string_lossy().into_owned();
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "stale-secondary",
        &[
            ("TWILIO_AUTH_TOKEN", ""),
            ("TWILIO_CREDENTIALS_DIR", &dir_str),
            ("TWILIO_CREDENTIALS_RELOAD_INTERVAL", "1h"),
        ],
    )?;
    let by_id = statuses(&env, ops.len(), Duration::from_secs(60)).await?;
    for o in &ops {
        assert_eq!(by_id[&o.operation_id].outcome, DeliveryOutcome::Accepted);
    }
    let requests = sandbox.requests();
    let refused = requests.iter().filter(|r| r.status == 401).count();
    assert!(
        (1..=ops.len()).contains(&refused),
        "{refused} requests refused: the secondary, then no more"
    );
    for o in &ops {
        let accepted = requests
            .iter()
            .filter(|r| r.operation_id.as_deref() == Some(&o.operation_id) && r.status == 201)
            .count();
        assert_eq!(accepted, 1, "{}", o.operation_id);
    }
    assert_eq!(egress.log_lines("requests use the rotation's other one"), 1);
    assert_eq!(
        egress.log_lines("a-deleted-secondary"),
        0,
        "no secret in the log"
    );
    stop(egress, sandbox, &dir).await
}

#[tokio::test(flavor = "multi_thread")]
async fn twilio_health_is_reported_without_making_the_pod_unready() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let admin = format!("127.0.0.1:{}", si_testkit::free_port()?);
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "health",
        &[
            ("TWILIO_HEALTH_INTERVAL", "300ms"),
            ("TWILIO_REQUEST_TIMEOUT", "2s"),
            ("ADMIN_ADDR", &admin),
        ],
    )?;
    let readyz = format!("http://{admin}/readyz");
    wait_for(
        "ready and Twilio reachable",
        Duration::from_secs(90),
        || {
            let url = readyz.clone();
            async move {
                let Ok((status, body)) = get(&url).await else {
                    return Ok(None);
                };
                Ok(
                    (status == 200 && body.contains("twilio: reachable, credentials accepted"))
                        .then_some(()),
                )
            }
        },
    )
    .await?;
    assert_eq!(
        metric(&admin, "si_egress_twilio_reachable").await?,
        Some(1.0)
    );
    let reads = sandbox.reads();
    assert!(
        reads
            .iter()
            .any(|r| r.status == 200 && r.path.ends_with(".json")),
        "the sandbox saw the account fetch: {reads:?}"
    );
    assert!(sandbox.requests().is_empty(), "a read is not an operation");

    // Twilio goes away.
    sandbox.shutdown().await;
    let body = wait_for(
        "Twilio reported unreachable",
        Duration::from_secs(60),
        || {
            let url = readyz.clone();
            let admin = admin.clone();
            async move {
                let reachable = metric(&admin, "si_egress_twilio_reachable").await?;
                let (status, body) = get(&url).await?;
                anyhow::ensure!(status == 200, "egress became unready: {status} {body}");
                Ok(
                    (reachable == Some(0.0) && body.contains("twilio: unreachable"))
                        .then_some(body),
                )
            }
        },
    )
    .await?;
    eprintln!("[health] /readyz with Twilio gone: {body:?}");
    // Still ready (and alive) a few checks later.
    wait_for("a few more failed checks", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            let (_, text) = get(&format!("http://{admin}/metrics")).await?;
            let failed = series(
                &text,
                "si_egress_twilio_health_checks_total",
                "result=\"unreachable\"",
            )
            .unwrap_or(0.0);
            Ok((failed >= 3.0).then_some(()))
        }
    })
    .await?;
    let (status, _) = get(&readyz).await?;
    assert_eq!(status, 200, "a Twilio outage never makes egress unready");
    let (status, _) = get(&format!("http://{admin}/healthz")).await?;
    assert_eq!(status, 200);
    egress.stop().await?;
    Ok(())
}
