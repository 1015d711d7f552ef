//! Configuration every stage shares. Each field has a flag and an environment
//! variable; the Helm chart sets the same names (`helm/si-twilio-channel/values.yaml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How to reach Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated host:port pairs. Any other `KAFKA_*`
    /// variable is passed to librdkafka: `KAFKA_SECURITY_PROTOCOL=SASL_SSL` sets
    /// `security.protocol` (`_` becomes `.`, `__` a literal `_`).
    #[arg(
        long = "kafka-bootstrap-servers",
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "localhost:9092"
    )]
    pub bootstrap_servers: String,

    /// Prefix put before every topic name (and so every schema subject), to share a
    /// cluster between environments. Empty in production.
    #[arg(long, env = "SI_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Name of this instance (the pod name under Kubernetes), used in Kafka client ids.
    #[arg(long, env = "POD_NAME", default_value = "local")]
    pub pod_name: String,
}

impl KafkaArgs {
    /// The full name of a topic, with the configured prefix.
    #[must_use]
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// librdkafka properties: the `KAFKA_*` pass-through of the process environment
    /// (see [`kafka_passthrough`]) and the bootstrap servers.
    #[must_use]
    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut properties = kafka_passthrough(std::env::vars());
        properties.insert(
            "bootstrap.servers".to_owned(),
            self.bootstrap_servers.clone(),
        );
        properties
    }
}

/// A topic's name as declared in `topics.yaml`: `topic` without the topic
/// `prefix` (the inverse of [`KafkaArgs::topic`]).
pub(crate) fn declared<'t>(prefix: &str, topic: &'t str) -> &'t str {
    topic.strip_prefix(prefix).unwrap_or(topic)
}

/// How a stage's consumer-group member is declared dead and replaced, which
/// decides how long its partitions stall after a crash (SIGKILL, OOM, a lost
/// node). A member that leaves cleanly (SIGTERM) hands its partitions over at
/// once whatever these say, unless it is a static member.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Kafka consumer-group session timeout (`session.timeout.ms`): how long
    /// the group waits for a member that stopped heartbeating before moving
    /// its partitions to the others. librdkafka heartbeats from its own
    /// thread (every fifth of this), so a busy or draining stage is not taken
    /// for dead. The broker accepts 6s to 30min (`group.min/max.session.timeout.ms`).
    #[arg(long, env = "SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,

    /// Static group membership: `group.instance.id` =
    /// `<SI_TOPIC_PREFIX>si-<stage>-<POD_NAME>`. A process restarted under the
    /// same POD_NAME within SESSION_TIMEOUT takes its partitions back at once,
    /// without a rebalance. Only for stable pod names (a StatefulSet, a VM, the
    /// local stack): a static member does not leave the group on shutdown, so
    /// a name that never comes back (a Deployment's replaced pod) holds its
    /// partitions for a whole SESSION_TIMEOUT.
    #[arg(long, env = "STATIC_MEMBERSHIP", default_value_t = false)]
    pub static_membership: bool,
}

impl Default for GroupArgs {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            static_membership: false,
        }
    }
}

impl GroupArgs {
    /// Checks the settings against the broker's default bounds.
    ///
    /// # Errors
    /// When SESSION_TIMEOUT is outside what a default broker accepts.
    pub fn validate(&self) -> Result<(), String> {
        if self.session_timeout < Duration::from_secs(6)
            || self.session_timeout > Duration::from_secs(1800)
        {
            return Err(format!(
                "SESSION_TIMEOUT ({:?}) must be within 6s..30min (the broker's group.min/max.session.timeout.ms)",
                self.session_timeout
            ));
        }
        Ok(())
    }
}

/// How to reach the schema registry.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Base URL of a Confluent-compatible schema registry API.
    #[arg(
        long = "schema-registry-url",
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://localhost:8081/apis/ccompat/v7"
    )]
    pub url: String,

    /// Schema registry basic-auth user.
    #[arg(long = "schema-registry-username", env = "SCHEMA_REGISTRY_USERNAME")]
    pub username: Option<String>,

    /// Schema registry basic-auth password.
    #[arg(
        long = "schema-registry-password",
        env = "SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
}

impl RegistryArgs {
    /// The registry client settings.
    #[must_use]
    pub fn config(&self) -> si_schemas::RegistryConfig {
        si_schemas::RegistryConfig {
            username: self.username.clone(),
            password: self.password.clone(),
            ..si_schemas::RegistryConfig::new(self.url.clone())
        }
    }
}

/// How a long-running stage serves, logs and stops.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Address of the admin listener serving /metrics, /healthz and /readyz.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter: a level (`info`) or a tracing directive (`info,si_ingress=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How long a stage may take to drain on SIGTERM. Keep it below the Kafka
    /// session timeout and the pod's termination grace period.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Trace export (OpenTelemetry over OTLP/HTTP; off without an endpoint).
    #[command(flatten)]
    pub traces: crate::telemetry::TraceArgs,
}

/// Settings every stage reads.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// Kafka.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Schema registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Admin listener, logs, shutdown.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Maps `KAFKA_*` variables to librdkafka properties: the prefix is dropped, the rest
/// lower-cased, `_` becomes `.` and `__` a literal `_`.
///
/// Kubernetes service-link variables (`KAFKA_PORT`, `KAFKA_PORT_9092_TCP…`,
/// `KAFKA_SERVICE_HOST`…, set when a Service named `kafka` shares the namespace)
/// are skipped: they are not client settings.
pub fn kafka_passthrough(
    vars: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("KAFKA_")?;
            if rest.is_empty()
                || rest == "PORT"
                || rest.starts_with("PORT_")
                || rest.starts_with("SERVICE_")
            {
                return None;
            }
            let property = rest
                .to_ascii_lowercase()
                .split("__")
                .map(|part| part.replace('_', "."))
                .collect::<Vec<_>>()
                .join("_");
            Some((property, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn passthrough_maps_names_to_librdkafka_properties() {
        let props = kafka_passthrough(vars(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("KAFKA_SSL_CA_LOCATION", "/etc/ca.pem"),
            ("KAFKA_SOME__ODD_NAME", "x"),
            ("PATH", "/bin"),
        ]));
        assert_eq!(
            props.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(
            props.get("sasl.mechanisms").map(String::as_str),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(
            props.get("ssl.ca.location").map(String::as_str),
            Some("/etc/ca.pem")
        );
        assert_eq!(props.get("some_odd.name").map(String::as_str), Some("x"));
        assert_eq!(props.len(), 4);
    }

    #[test]
    fn passthrough_skips_kubernetes_service_links() {
        let props = kafka_passthrough(vars(&[
            ("KAFKA_PORT", "tcp://10.0.0.1:9092"),
            ("KAFKA_PORT_9092_TCP_ADDR", "10.0.0.1"),
            ("KAFKA_SERVICE_HOST", "10.0.0.1"),
            ("KAFKA_", "x"),
        ]));
        assert!(props.is_empty(), "{props:?}");
    }

    #[test]
    fn topic_names_carry_the_prefix() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonConfig,
        }
        let cli = Cli::parse_from(["x", "--topic-prefix", "t1."]);
        assert_eq!(cli.common.kafka.topic("si.inbound.v1"), "t1.si.inbound.v1");
    }
}
