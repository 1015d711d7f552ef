//! Time from a STOP webhook accepted by ingress to the opt-out being in force.
//!
//! Runs ingress, normalize and consent (in this process, each as it runs in its
//! own binary: `si_ingress::start`, `si_normalize::run`, `si_consent::run`) on a
//! fresh topic prefix of the local stack, posts signed Programmable Messaging
//! STOP webhooks one at a time, each from a new number, and measures from the
//! moment ingress answered 200 (the webhook is durably in `twilio.webhooks.v1`)
//! until the OPTED_OUT record is readable on `si.consent.v1` with
//! read_committed: from then on every gate (segment, egress) that reads the
//! table blocks the number. Prints percentiles; asserts nothing about time.
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-consent --bench stop_latency            # release build
//! CONSENT_BENCH_STOPS=200 cargo bench -p si-consent --bench stop_latency
//! ```
//!
//! `COMMIT_INTERVAL` (default 100 ms here, as in production) bounds each
//! stage's batching delay; set `CONSENT_BENCH_COMMIT_INTERVAL` to try others.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::Message;
use si_schemas::records::{ConsentState, ConsentStatus};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_twilio_signature::{self as signature, Algorithm};
use tokio_util::sync::CancellationToken;

const PUBLIC: &str = "https://si.bench.test";
const TOKEN: &str = "bench-auth-token";
const OURS: &str = "+14155550199";

fn common_args(env: &TestEnv, name: &str) -> Vec<String> {
    vec![
        name.to_owned(),
        "--kafka-bootstrap-servers".into(),
        env.kafka.bootstrap_servers.clone(),
        "--topic-prefix".into(),
        env.kafka.topic_prefix.clone(),
        "--schema-registry-url".into(),
        env.registry.url.clone(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
        "--pod-name".into(),
        format!("bench-{name}"),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let stops: usize = std::env::var("CONSENT_BENCH_STOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let commit_interval =
        std::env::var("CONSENT_BENCH_COMMIT_INTERVAL").unwrap_or_else(|_| "100ms".into());

    let env = TestEnv::start().await?;
    let shutdown = CancellationToken::new();

    let mut ingress_args = common_args(&env, "si-ingress");
    ingress_args.extend([
        "--public-base-url".into(),
        PUBLIC.into(),
        "--twilio-auth-token".into(),
        TOKEN.into(),
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
    ]);
    let ingress = si_ingress::start(
        si_ingress::Config::from_args(ingress_args)?,
        shutdown.clone(),
    )
    .await?;

    let mut normalize_args = common_args(&env, "si-normalize");
    normalize_args.extend(["--commit-interval".into(), commit_interval.clone()]);
    let normalize = tokio::spawn(si_normalize::run(
        si_normalize::Config::try_parse_from(normalize_args)?,
        shutdown.clone(),
    ));
    let mut consent_args = common_args(&env, "si-consent");
    consent_args.extend(["--commit-interval".into(), commit_interval.clone()]);
    let consent = tokio::spawn(si_consent::run(
        si_consent::Config::try_parse_from(consent_args)?,
        shutdown.clone(),
    ));

    // When each number's OPTED_OUT became readable.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let consumer = env.consumer(topics::CONSENT).await?;
    let reader = {
        let seen = seen.clone();
        let codec = env.codec.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = consumer.recv() => m,
                    () = stop.cancelled() => return anyhow::Ok(()),
                };
                let message = message?;
                let at = Instant::now();
                let Some(payload) = message.payload() else {
                    continue;
                };
                let state: ConsentState = codec.decode(payload).await?;
                if state.status == ConsentStatus::OptedOut {
                    seen.lock().unwrap().entry(state.address).or_insert(at);
                }
            }
        })
    };

    let client = reqwest::Client::new();
    let url = format!("http://{}/twilio/messaging/inbound", ingress.addr);
    let post_stop = |n: usize| {
        let user = format!("+1628555{n:04}");
        let params: Vec<(String, String)> = [
            ("MessageSid", format!("SM{n:032}")),
            (
                "AccountSid",
                "AC00000000000000000000000000000001".to_owned(),
            ),
            ("From", user.clone()),
            ("To", OURS.to_owned()),
            ("Body", "STOP".to_owned()),
            ("NumMedia", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let sig = signature::compute(
            Algorithm::HmacSha1,
            TOKEN,
            &signature::signing_string(&format!("{PUBLIC}/twilio/messaging/inbound"), &params),
        );
        let request = client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .body(body);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(
                response.status() == 200,
                "ingress answered {}",
                response.status()
            );
            anyhow::Ok((user, Instant::now()))
        }
    };
    let wait_for = |user: String, deadline: Duration| {
        let seen = seen.clone();
        async move {
            let until = Instant::now() + deadline;
            loop {
                if let Some(at) = seen.lock().unwrap().get(&user).copied() {
                    return anyhow::Ok(at);
                }
                anyhow::ensure!(
                    Instant::now() < until,
                    "no OPTED_OUT for a STOP within {deadline:?}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };

    // Warm-up: group joins, table loads, first transactions.
    let warmup = Instant::now();
    let (user, _) = post_stop(9_999).await?;
    wait_for(user, Duration::from_secs(120))
        .await
        .context("warm-up STOP")?;
    eprintln!("[stop_latency] pipeline ready after {:?}", warmup.elapsed());

    let mut samples = Vec::with_capacity(stops);
    for n in 0..stops {
        let (user, accepted) = post_stop(n).await?;
        let in_force = wait_for(user, Duration::from_secs(60)).await?;
        samples.push(in_force.saturating_duration_since(accepted));
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap_or(1);
    println!(
        "stop_latency: STOP webhook accepted by ingress -> OPTED_OUT readable on si.consent.v1 \
         (read_committed), {} sequential STOPs, COMMIT_INTERVAL={commit_interval}",
        samples.len()
    );
    println!(
        "  min {:?}  p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  mean {mean:?}",
        samples[0],
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples[samples.len() - 1],
    );

    shutdown.cancel();
    let _ = reader.await;
    normalize.await??;
    consent.await??;
    Ok(())
}
