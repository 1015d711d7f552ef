//! A Confluent-compatible schema registry client.
//!
//! Registration, version listing and fetch-by-id go through
//! `schema_registry_converter`; the two calls it does not offer (looking a
//! schema up without registering it, and the per-subject compatibility level)
//! are plain HTTP calls against the same Confluent API. Works with Confluent
//! Schema Registry, Apicurio's `ccompat` API, Karapace and Redpanda.

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_versions, get_schema_by_id, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde::Deserialize;
use serde_json::json;

/// Where the registry is and how to log in.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URL of the Confluent API, e.g. `http://localhost:8081/apis/ccompat/v7`.
    pub url: String,
    /// Basic-auth user, if the registry wants one.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
    /// Timeout of one registry call.
    pub timeout: Duration,
}

impl RegistryConfig {
    /// A registry without authentication.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A registry call that failed.
#[derive(Debug, thiserror::Error)]
#[error("schema registry: {message}")]
pub struct RegistryError {
    /// What went wrong, without credentials.
    pub message: String,
    /// The HTTP status, when the registry answered.
    pub status: Option<u16>,
    /// Whether trying again may help (network trouble, 5xx).
    pub retriable: bool,
}

impl RegistryError {
    fn from_src(context: &str, error: &SRCError) -> Self {
        let cause = error
            .cause
            .as_deref()
            .map(|cause| format!(" ({cause})"))
            .unwrap_or_default();
        Self {
            message: format!("{context}: {}{cause}", error.error),
            status: None,
            retriable: error.retriable,
        }
    }

    fn from_http(context: &str, error: &reqwest::Error) -> Self {
        Self {
            message: format!("{context}: {error}"),
            status: error.status().map(|s| s.as_u16()),
            retriable: error.is_timeout() || error.is_connect() || error.is_request(),
        }
    }
}

/// How often one registry call is tried when it fails with network trouble or a 5xx.
const ATTEMPTS: u32 = 3;

/// Runs a registry call, trying again (after 250 ms, then 500 ms) while it fails in a
/// way that may pass. Every call here is idempotent: registering a schema the subject
/// already has returns its id.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(error) if error.retriable && attempt < ATTEMPTS => {
                tracing::debug!(%error, attempt, "schema registry call failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The subject a topic's values are registered under (Confluent `TopicNameStrategy`).
#[must_use]
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// One registered version of a subject.
#[derive(Debug, Clone)]
pub struct RegisteredVersion {
    /// Version number within the subject.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// The schema text as the registry stores it.
    pub schema: String,
}

/// A client for one registry.
#[derive(Clone)]
pub struct Registry {
    settings: SrSettings,
    http: reqwest::Client,
    config: RegistryConfig,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct VersionResponse {
    id: u32,
    version: u32,
    schema: String,
}

#[derive(Deserialize)]
struct ConfigResponse {
    #[serde(rename = "compatibilityLevel", alias = "compatibility")]
    level: Option<String>,
}

impl Registry {
    /// Builds a client; makes no call yet.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (for example a broken TLS setup).
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let url = config.url.trim_end_matches('/').to_owned();
        let mut builder = SrSettings::new_builder(url.clone());
        builder.set_timeout(config.timeout);
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_deref());
        }
        let settings = builder
            .build()
            .map_err(|e| RegistryError::from_src("building the client", &e))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| RegistryError::from_http("building the client", &e))?;
        Ok(Self {
            settings,
            http,
            config: RegistryConfig { url, ..config },
        })
    }

    /// The configured base URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.config.url
    }

    pub(crate) fn settings(&self) -> &SrSettings {
        &self.settings
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.config.url))
            .header(
                "Accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            );
        match &self.config.username {
            Some(user) => builder.basic_auth(user, self.config.password.as_deref()),
            None => builder,
        }
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        context: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, RegistryError> {
        retrying(|| async {
            let attempt = request.try_clone().ok_or_else(|| RegistryError {
                message: format!("{context}: the request cannot be repeated"),
                status: None,
                retriable: false,
            })?;
            Self::send_once(context, attempt).await
        })
        .await
    }

    async fn send_once<T: for<'de> Deserialize<'de>>(
        context: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, RegistryError> {
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::from_http(context, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(RegistryError {
                message: format!("{context}: HTTP {status}: {}", body.trim()),
                status: Some(status.as_u16()),
                retriable: status.is_server_error(),
            });
        }
        response
            .json::<T>()
            .await
            .map(Some)
            .map_err(|e| RegistryError::from_http(context, &e))
    }

    /// Registers an Avro schema under `subject` (idempotent: an identical schema
    /// gets its existing id). The registry applies the subject's compatibility level.
    ///
    /// # Errors
    /// When the registry refuses the schema (incompatible, invalid) or cannot be reached.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        retrying(|| async {
            let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
            post_schema(&self.settings, subject.to_owned(), supplied)
                .await
                .map(|registered| registered.id)
                .map_err(|e| RegistryError::from_src(&format!("registering {subject}"), &e))
        })
        .await
    }

    /// Looks up the id of `schema` under `subject` without registering it.
    /// `Ok(None)` when the subject or the schema is not registered.
    ///
    /// # Errors
    /// When the registry cannot be reached or answers with an error other than 404.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let request = self
            .request(reqwest::Method::POST, &format!("/subjects/{subject}"))
            .json(&json!({ "schema": schema, "schemaType": "AVRO" }));
        Ok(
            Self::send::<IdResponse>(&format!("looking up {subject}"), request)
                .await?
                .map(|r| r.id),
        )
    }

    /// The schema text registered under a global id.
    ///
    /// # Errors
    /// When the id is unknown or the registry cannot be reached.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        retrying(|| async {
            get_schema_by_id(id, &self.settings)
                .await
                .map(|registered| registered.schema)
                .map_err(|e| RegistryError::from_src(&format!("fetching schema id {id}"), &e))
        })
        .await
    }

    /// Every registered version of `subject`, oldest first; empty when the subject is unknown.
    ///
    /// # Errors
    /// When the registry cannot be reached.
    pub async fn versions(&self, subject: &str) -> Result<Vec<RegisteredVersion>, RegistryError> {
        let listed = retrying(|| async {
            match get_all_versions(&self.settings, subject.to_owned()).await {
                Ok(numbers) => Ok(Some(numbers)),
                Err(e) if e.error.contains("404") || e.error.contains("40401") => Ok(None),
                Err(e) => Err(RegistryError::from_src(&format!("listing {subject}"), &e)),
            }
        })
        .await?;
        let Some(numbers) = listed else {
            return Ok(Vec::new());
        };
        let mut versions = Vec::with_capacity(numbers.len());
        for number in numbers {
            let request = self.request(
                reqwest::Method::GET,
                &format!("/subjects/{subject}/versions/{number}"),
            );
            if let Some(v) =
                Self::send::<VersionResponse>(&format!("reading {subject} v{number}"), request)
                    .await?
            {
                versions.push(RegisteredVersion {
                    version: v.version,
                    id: v.id,
                    schema: v.schema,
                });
            }
        }
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    /// The compatibility level set on `subject` itself (`None` when it inherits the global one).
    ///
    /// # Errors
    /// When the registry cannot be reached.
    pub async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let request = self.request(reqwest::Method::GET, &format!("/config/{subject}"));
        Ok(
            Self::send::<ConfigResponse>(&format!("reading config of {subject}"), request)
                .await?
                .and_then(|c| c.level),
        )
    }

    /// Sets the compatibility level of `subject` (e.g. `FULL_TRANSITIVE`).
    ///
    /// # Errors
    /// When the registry refuses or cannot be reached.
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let request = self
            .request(reqwest::Method::PUT, &format!("/config/{subject}"))
            .json(&json!({ "compatibility": level }));
        Self::send::<serde_json::Value>(&format!("setting config of {subject}"), request).await?;
        Ok(())
    }

    /// Asks the registry whether `schema` may be registered under `subject` as things stand
    /// (against every version for the transitive levels). `true` when the subject is new.
    ///
    /// # Errors
    /// When the registry cannot be reached.
    pub async fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        let request = self
            .request(
                reqwest::Method::POST,
                &format!("/compatibility/subjects/{subject}/versions/latest"),
            )
            .json(&json!({ "schema": schema, "schemaType": "AVRO" }));
        #[derive(Deserialize)]
        struct Answer {
            is_compatible: bool,
        }
        Ok(
            Self::send::<Answer>(&format!("checking {subject}"), request)
                .await?
                .is_none_or(|a| a.is_compatible),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn failure(retriable: bool) -> RegistryError {
        RegistryError {
            message: "boom".into(),
            status: None,
            retriable,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_tried_again_until_the_call_passes() {
        let calls = AtomicU32::new(0);
        let result = retrying(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(failure(true))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.expect("third attempt passes"), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_three_attempts_and_permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retrying(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(failure(true))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), _> = retrying(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(failure(false))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
