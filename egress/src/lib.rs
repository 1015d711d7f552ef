//! `si-egress`: the only stage that talks to Twilio. It consumes
//! `twilio.outbound.v1`, performs each operation with Twilio's REST API under
//! per-sender rate limits and an account-wide concurrency cap, retries what is
//! worth retrying, and ends every operation with exactly one status on
//! `twilio.delivery.v1` (plus `twilio.outbound.dlq.v1` for what it gives up
//! on), committed with the consumer offsets in Kafka transactions. A dedup
//! ledger keeps a restart from resending what Twilio already accepted.
//! See `egress/README.md` for the design and its guarantees.

pub mod auth;
pub mod circuit;
pub mod config;
pub mod consumer;
pub mod credentials;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod pace;
pub mod rates;
pub mod sender;
pub mod twilio;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::Context;
use si_consent_gate::ConsentGate;
use si_runtime::config::KafkaArgs;
use si_runtime::deferred::{DeferredArgs, DeferredEnv, Work};
use si_runtime::metrics::StageMetrics;
use si_runtime::{AdminServer, Readiness};
use si_schemas::{Codec, Registry, topics};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::auth::{AuthGate, AuthMetrics};
use crate::circuit::Circuits;
use crate::consumer::{Egress, EgressParts, STAGE};
use crate::credentials::CredentialStore;
use crate::metrics::EgressMetrics;
use crate::sender::{Live, RetryPolicy, SendContext, Topics};
use crate::twilio::{Endpoints, TwilioClient};

/// Runs egress until `shutdown`.
///
/// # Errors
/// On invalid configuration, when Kafka or the registry cannot be reached at
/// start-up, or on a fatal Kafka error.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.egress.validate().map_err(anyhow::Error::msg)?;
    config.group.validate().map_err(anyhow::Error::msg)?;
    config.twilio.validate().map_err(anyhow::Error::msg)?;
    let media_signer = config.media.signer().map_err(anyhow::Error::msg)?;
    let credentials = load_credentials(&config).await?;
    let rates = config.egress.rates().map_err(anyhow::Error::msg)?;
    let kafka = config.common.kafka.clone();
    let metrics = StageMetrics::new(STAGE);
    let egress_metrics = EgressMetrics::new(&metrics)?;
    let readiness = Readiness::default();
    let admin = AdminServer::start(
        config.common.service.admin_addr,
        metrics.registry().clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .context("admin listener")?;
    tracing::info!(addr = %admin.local_addr, "admin listening");

    let (client, auth) = twilio_access(
        &config,
        credentials,
        &metrics,
        &egress_metrics,
        &readiness,
        &shutdown,
    )?;
    let codec = Codec::new(Registry::new(config.common.registry.config())?);

    check_topics(&kafka).await?;

    let gate = ConsentGate::start(
        &kafka,
        STAGE,
        codec.clone(),
        &readiness,
        &metrics,
        shutdown.clone(),
    )
    .await?;
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        () = gate.loaded() => {}
    }
    tracing::info!("consent tables loaded");

    let ledger_producer = si_runtime::kafka::create_producer(
        &si_runtime::kafka::durable_producer_config(&kafka, &format!("{STAGE}-ledger")),
    )?;

    let output_topics = Topics {
        delivery: kafka.topic(topics::DELIVERY),
        dlq: kafka.topic(topics::OUTBOUND_DLQ),
        compliance: kafka.topic(topics::COMPLIANCE),
        ledger: kafka.topic(topics::EGRESS_LEDGER),
        dead_letter: kafka.topic(topics::DEAD_LETTER),
    };
    let live = Live::default();
    let busy = Arc::new(AtomicUsize::new(0));
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let endpoints = Endpoints::new(&config.twilio, media_signer);
    let ctx = Arc::new(SendContext {
        client,
        auth,
        endpoints: endpoints.clone(),
        rates,
        semaphore: Arc::new(Semaphore::new(config.egress.max_concurrency)),
        gate: Some(gate),
        require_opt_in: config.egress.require_opt_in,
        retry: RetryPolicy {
            max_attempts: config.egress.max_attempts,
            base: config.egress.retry_base,
            max: config.egress.retry_max,
        },
        metrics: egress_metrics.clone(),
        live: live.clone(),
        ledger_producer,
        codec: codec.clone(),
        topics: output_topics.clone(),
        completions: done_tx,
        busy: Arc::clone(&busy),
        stopping: shutdown.clone(),
        idle_timeout: config.egress.sender_idle_timeout,
        circuits: Circuits::new(config.egress.circuits(), egress_metrics.clone()),
    });
    let dispatcher = tokio::spawn(sender::dispatch(Arc::clone(&ctx), jobs_rx));

    let restore_config = si_runtime::kafka::restore_config(&kafka, STAGE);
    let egress = Egress::new(EgressParts {
        live,
        topics: output_topics,
        restore_config,
        codec,
        endpoints,
        metrics: metrics.clone(),
        egress_metrics,
        jobs: jobs_tx,
        shutdown: shutdown.clone(),
    });
    let env = DeferredEnv {
        kafka,
        stage: STAGE,
        input: topics::OUTBOUND,
        outputs: topics::written_by("egress").to_vec(),
        args: DeferredArgs {
            commit_interval: config.egress.commit_interval,
            max_pending_per_partition: config.egress.max_pending_per_partition,
            transaction_timeout: config.egress.transaction_timeout,
            drain_timeout: config.common.service.drain_timeout,
            group: config.group.clone(),
        },
        metrics,
        readiness,
    };
    let work = Work {
        completions: done_rx,
        in_flight: busy,
    };
    let result = si_runtime::deferred::run(env, egress, work, shutdown.clone()).await;
    // The loop ended (shutdown or a fatal error): stop the senders too.
    shutdown.cancel();
    dispatcher.abort();
    admin.stopped().await;
    result
}

/// The Twilio credentials, from the environment or `TWILIO_CREDENTIALS_DIR`
/// (a directory that does not exist yet is allowed: the environment's apply
/// until it holds some).
async fn load_credentials(config: &Config) -> anyhow::Result<Arc<CredentialStore>> {
    let credentials = Arc::new(
        CredentialStore::load(config.twilio.credential_source())
            .await
            .map_err(anyhow::Error::msg)?,
    );
    tracing::info!(
        kind = credentials.current().credentials.kind.as_str(),
        credentials_dir = ?credentials.dir(),
        "Twilio credentials loaded"
    );
    if let Some(dir) = credentials.dir()
        && !tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir())
    {
        tracing::warn!(
            credentials_dir = %dir.display(),
            "TWILIO_CREDENTIALS_DIR is not a directory (yet): the environment's credentials apply until it holds some"
        );
    }
    Ok(credentials)
}

/// The Twilio client, and the gate that holds sends while Twilio refuses
/// the credentials: reloaded from the credentials directory when it is set,
/// probed by the health check when it is on. All of it before Kafka is
/// ready.
fn twilio_access(
    config: &Config,
    credentials: Arc<CredentialStore>,
    metrics: &StageMetrics,
    egress_metrics: &EgressMetrics,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<(TwilioClient, Arc<AuthGate>)> {
    let reload = Arc::new(Notify::new());
    let auth = Arc::new(AuthGate::new(
        Arc::clone(&credentials),
        config.twilio.auth_probe_interval,
        Arc::clone(&reload),
        AuthMetrics {
            failures: egress_metrics.auth_failures.clone(),
            rejected: egress_metrics.credentials_rejected.clone(),
            readyz: Some(readiness.detail("twilio-credentials")),
        },
    ));
    if credentials.dir().is_some() {
        tokio::spawn(credentials::run_reloads(
            Arc::clone(&credentials),
            Arc::clone(&auth),
            reload,
            config.twilio.credentials_reload_interval,
            egress_metrics.clone(),
            shutdown.clone(),
        ));
    }
    let client = TwilioClient::new(&config.twilio, credentials)?;
    if !config.twilio.health_interval.is_zero() {
        tokio::spawn(health::run(
            client.clone(),
            health::url(&config.twilio),
            config.twilio.health_interval,
            Arc::clone(&auth),
            health::HealthMetrics::register(metrics)?,
            readiness.detail("twilio"),
            shutdown.clone(),
        ));
    }
    Ok((client, auth))
}

/// Waits (with a deadline) for every topic egress reads or writes, and
/// checks that its input and its ledger are co-partitioned.
async fn check_topics(kafka: &KafkaArgs) -> anyhow::Result<()> {
    let others = [
        topics::DELIVERY,
        topics::OUTBOUND_DLQ,
        topics::COMPLIANCE,
        topics::DEAD_LETTER,
    ];
    si_runtime::kafka::check_co_partitioned(
        si_runtime::kafka::client_config(kafka, "egress-probe"),
        vec![kafka.topic(topics::OUTBOUND)],
        kafka.topic(topics::EGRESS_LEDGER),
        others.iter().map(|t| kafka.topic(t)).collect(),
    )
    .await
    .map_err(anyhow::Error::msg)
}
