//! The ingress stage: the thin front door of the Si Twilio channel.
//!
//! It verifies each Twilio webhook's signature, writes a lossless envelope to
//! `twilio.webhooks.v1`, and answers only after Kafka acknowledged the record
//! (idempotent producer, `acks=all`). If Kafka does not acknowledge within the
//! deadline the answer is 503, so Twilio retries: a 2xx always means stored.
//! Voice calls get their TwiML here (recording disclosure and consent). It
//! decides nothing else.

pub mod app;
pub mod config;
pub mod envelope;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod twiml;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::Producer;
use si_runtime::{AdminServer, Readiness};
use si_schemas::records::TwilioWebhook;
use si_schemas::{Codec, Registry, topics};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::app::AppState;
use crate::metrics::Metrics;
use crate::secrets::SecretStore;
use crate::twiml::VoiceSettings;

/// A running ingress.
pub struct Running {
    /// Where webhooks are accepted.
    pub addr: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served.
    pub admin_addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until ingress has drained and stopped (after the shutdown token fired).
    ///
    /// # Errors
    /// When serving failed.
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.context("ingress task")?
    }
}

/// Starts the listeners and returns once they are bound; serves until `shutdown`.
///
/// # Errors
/// When a listener cannot be bound or the Kafka producer cannot be created.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let readiness = Readiness::default();
    // Every check exists before the admin listener answers (and `started` says
    // so), so /readyz cannot report ready before the webhook listener is bound.
    let listening = readiness.check("listening");
    let broker = readiness.check("kafka");
    let schema = readiness.check("schema");
    readiness.started();
    let admin = AdminServer::start(
        config.common.service.admin_addr,
        registry,
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .context("binding the admin listener")?;

    let kafka = &config.common.kafka;
    let mut producer_config = si_runtime::kafka::durable_producer_config(kafka, "ingress");
    let timeout_ms = config
        .produce_timeout
        .max(config.pre_event_timeout)
        .as_millis()
        .to_string();
    producer_config.set("message.timeout.ms", &timeout_ms);
    let producer = Arc::new(
        si_runtime::kafka::create_producer(&producer_config)
            .context("creating the Kafka producer")?,
    );
    let codec = Codec::new(Registry::new(config.common.registry.config())?);
    let topic = kafka.topic(topics::WEBHOOKS);

    // The secrets first: a mounted directory that cannot be used stops the
    // start-up here, before anything listens.
    let secrets = Arc::new(
        SecretStore::load(
            config.webhook_secrets(),
            config.twilio_credentials_dir.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("TWILIO_CREDENTIALS_DIR: {e}"))?,
    );
    secrets.spawn_reloads(
        config.twilio_credentials_reload_interval,
        metrics.secret_reloads.clone(),
        shutdown.clone(),
    );
    let state = Arc::new(AppState {
        producer: Arc::clone(&producer),
        codec: codec.clone(),
        topic: topic.clone(),
        public_base_url: config.public_base_url.clone(),
        secrets: Arc::clone(&secrets),
        produce_timeout: config.produce_timeout,
        pre_event_timeout: config.pre_event_timeout,
        request_timeout: config.request_timeout,
        voice: VoiceSettings {
            public_base_url: config.public_base_url.clone(),
            stream_url: config.voice_stream_url.clone(),
            gather_timeout_secs: config.gather_timeout_seconds,
        },
        default_locale: config.default_locale.clone(),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        metrics: metrics.clone(),
    });
    let connection_metrics = metrics;

    watch_readiness(
        broker,
        schema,
        kafka.clone(),
        codec,
        topic,
        shutdown.clone(),
    );

    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    let addr = listener.local_addr()?;
    let webhooks = app::Webhooks::new(state, config.max_body_bytes);
    let limits = server::Limits {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    let drain = config.common.service.drain_timeout;
    let admin_addr = admin.local_addr;
    listening.set(true);
    let task = tokio::spawn(async move {
        tracing::info!(%addr, admin = %admin_addr, "ingress listening");
        let serve = server::serve(
            listener,
            webhooks,
            limits,
            connection_metrics,
            shutdown.clone(),
        );
        // In-flight requests get the drain timeout; one still running after it (a
        // produce stuck on an unreachable broker) does not hold the pod past its
        // grace period. It has not been answered 2xx, so Twilio retries it.
        let deadline = async {
            shutdown.cancelled().await;
            listening.set(false);
            tracing::info!("draining: no new connections, finishing in-flight requests");
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            () = serve => {}
            () = deadline => tracing::warn!(
                ?drain,
                "drain timeout passed with requests still in flight; stopping without them"
            ),
        }
        let flushed = tokio::task::spawn_blocking(move || producer.flush(drain)).await?;
        if let Err(error) = flushed {
            tracing::warn!(%error, "producer flush on shutdown");
        }
        admin.stopped().await;
        tracing::info!("ingress stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        admin_addr,
        task,
    })
}

/// Ready while the broker answers metadata requests and our schema is registered.
fn watch_readiness(
    broker: si_runtime::admin::ReadinessCheck,
    schema: si_runtime::admin::ReadinessCheck,
    kafka: si_runtime::KafkaArgs,
    codec: Codec,
    topic: String,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let reachable = si_runtime::kafka::cluster_info(&kafka, Duration::from_secs(3)).await;
            broker.set(reachable.is_ok());
            match codec.schema_id::<TwilioWebhook>(&topic).await {
                Ok(_) => schema.set(true),
                Err(error) => {
                    schema.set(false);
                    tracing::warn!(%error, "webhook schema not available");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
}
