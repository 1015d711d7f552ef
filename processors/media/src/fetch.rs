//! Fetching one media item from Twilio: bounded in size and time, retried
//! with the runtime's [`Backoff`], authenticated with HTTP Basic toward
//! Twilio's hosts only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use si_runtime::backoff::Backoff;
use si_schemas::records::MediaUnavailableReason;
use si_twilio_credentials::CredentialStore;
use tokio::sync::Notify;

/// Largest Media Content Service resource (JSON) read.
const MCS_RESOURCE_LIMIT: u64 = 64 * 1024;

/// How downloads are bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest item.
    pub max_item_bytes: u64,
    /// Largest sum of one message's items.
    pub max_message_bytes: u64,
    /// Most items copied per message.
    pub max_items: usize,
    /// Allowed content types: `type/subtype` or `type/*`.
    pub allowed_types: Vec<String>,
    /// Attempts per item (the first and the retries).
    pub attempts: u32,
    /// First delay between attempts (doubling).
    pub retry_backoff: Duration,
    /// Longest delay between attempts.
    pub retry_backoff_max: Duration,
}

impl Limits {
    /// Whether `content_type` (parameters ignored) is on the allow-list.
    #[must_use]
    pub fn allows(&self, content_type: &str) -> bool {
        let essence = essence(content_type);
        let Some((kind, _)) = essence.split_once('/') else {
            return false;
        };
        self.allowed_types.iter().any(|allowed| {
            allowed == &essence
                || allowed
                    .strip_suffix("/*")
                    .is_some_and(|allowed_kind| allowed_kind == kind)
        })
    }
}

/// `image/JPEG; charset=x` → `image/jpeg`.
#[must_use]
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The bytes of an item and the type Twilio served them as.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body.
    pub bytes: Bytes,
    /// `Content-Type` of the answer (essence), when present.
    pub content_type: Option<String>,
}

/// Why an item was not fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The reason, for the record.
    pub reason: MediaUnavailableReason,
    /// Detail for the record and the log (no credentials, no URLs).
    pub detail: String,
    /// The size declared or read, when known.
    pub size: Option<u64>,
}

impl Refused {
    fn new(reason: MediaUnavailableReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            size: None,
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Fetched),
    /// Worth another attempt (5xx, 429, 404, 401, timeouts, connection errors).
    Retry(Refused),
    /// Final (too large, refused type, other 4xx).
    Final(Refused),
}

/// An HTTP client for media downloads.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    /// The credentials in force (reloaded from `TWILIO_CREDENTIALS_DIR`).
    credentials: Option<Arc<CredentialStore>>,
    /// Notified when Twilio refuses them (401): the reload loop reads the
    /// Secret again at once, and the next attempt uses what it found.
    refused: Arc<Notify>,
    /// Origins (`scheme://host:port`) credentials are sent to.
    auth_origins: Vec<String>,
    limits: Limits,
}

/// `scheme://host[:port]` of a URL, lower-case; `None` when it does not parse.
#[must_use]
pub fn origin(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    Some(parsed.origin().ascii_serialization())
}

impl Fetcher {
    /// A fetcher; credentials are sent to `auth_origins` only, and
    /// `refused` is notified when one of those answers 401.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        credentials: Option<Arc<CredentialStore>>,
        refused: Arc<Notify>,
        auth_origins: Vec<String>,
        limits: Limits,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            // Twilio answers a media URL with a redirect to its storage; a
            // redirect to another host drops the Authorization header.
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()?;
        Ok(Self {
            client,
            credentials,
            refused,
            auth_origins,
            limits,
        })
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Fetches `url`, at most `limit` bytes, with retries.
    ///
    /// # Errors
    /// [`Refused`] with the reason once the item is known to be unavailable
    /// (after the attempts, for failures worth retrying).
    pub async fn fetch(&self, url: &str, limit: u64) -> Result<Fetched, Refused> {
        self.fetch_checked(url, limit, true).await
    }

    /// Conversations media by SID: the Media Content Service's resource at
    /// `resource_url` (JSON, with the credentials), then the content from its
    /// `links.content_direct_temporary`, at most `limit` bytes.
    ///
    /// # Errors
    /// [`Refused`] as for [`Fetcher::fetch`]; `NO_SOURCE` when the resource
    /// names no content link.
    pub async fn fetch_mcs(&self, resource_url: &str, limit: u64) -> Result<Fetched, Refused> {
        let resource = self
            .fetch_checked(resource_url, MCS_RESOURCE_LIMIT, false)
            .await?;
        let link = serde_json::from_slice::<serde_json::Value>(&resource.bytes)
            .ok()
            .and_then(|v| {
                v.pointer("/links/content_direct_temporary")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                Refused::new(
                    MediaUnavailableReason::NoSource,
                    "the Media Content Service named no content link",
                )
            })?;
        self.fetch(&link, limit).await
    }

    async fn fetch_checked(
        &self,
        url: &str,
        limit: u64,
        check_type: bool,
    ) -> Result<Fetched, Refused> {
        let mut backoff = Backoff::new(self.limits.retry_backoff, self.limits.retry_backoff_max);
        let mut attempt = 1;
        loop {
            match self.attempt(url, limit, check_type).await {
                Attempt::Done(fetched) => return Ok(fetched),
                Attempt::Final(refused) => return Err(refused),
                Attempt::Retry(refused) => {
                    if attempt >= self.limits.attempts {
                        let mut refused = refused;
                        refused.detail = format!("{} (after {attempt} attempts)", refused.detail);
                        return Err(refused);
                    }
                    tracing::debug!(attempt, detail = %refused.detail, "media fetch failed, retrying");
                }
            }
            attempt += 1;
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Deletes a Programmable Messaging media item at Twilio (`DELETE
    /// <MediaUrl>.json`), once. Only Twilio's own origins get the request.
    ///
    /// # Errors
    /// A description of what failed (no credentials, no URL).
    pub async fn delete_at_twilio(&self, url: &str) -> Result<(), String> {
        let Some(store) = &self.credentials else {
            return Err("no Twilio credentials".into());
        };
        let current = store.current();
        let credentials = &current.credentials;
        if !origin(url).is_some_and(|o| self.auth_origins.contains(&o)) {
            return Err("not a Twilio URL".into());
        }
        let url = if url.ends_with(".json") {
            url.to_owned()
        } else {
            format!("{url}.json")
        };
        let response = self
            .client
            .delete(&url)
            .basic_auth(&credentials.user, Some(&credentials.password))
            .send()
            .await
            .map_err(|e| transport_detail(&e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            self.credentials_refused(current.generation);
        }
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }

    /// Twilio refused the credentials of `generation`: the reload loop
    /// reads the Secret again at once (and tries the rotation's other Auth
    /// Token when it holds nothing new).
    fn credentials_refused(&self, generation: u64) {
        if let Some(store) = &self.credentials {
            store.refused(generation);
        }
        self.refused.notify_one();
    }

    async fn attempt(&self, url: &str, limit: u64, check_type: bool) -> Attempt {
        let mut request = self.client.get(url);
        let mut authenticated = None;
        if let Some(store) = &self.credentials
            && origin(url).is_some_and(|o| self.auth_origins.contains(&o))
        {
            let current = store.current();
            let credentials = &current.credentials;
            request = request.basic_auth(&credentials.user, Some(&credentials.password));
            authenticated = Some(current.generation);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return Attempt::Retry(Refused::new(
                    MediaUnavailableReason::FetchFailed,
                    transport_detail(&error),
                ));
            }
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED
            && let Some(generation) = authenticated
        {
            self.credentials_refused(generation);
        }
        if !status.is_success() {
            let reason = if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
                MediaUnavailableReason::NotFound
            } else {
                MediaUnavailableReason::FetchFailed
            };
            let refused = Refused::new(reason, format!("HTTP {}", status.as_u16()));
            let retriable = status.is_server_error()
                || matches!(
                    status,
                    StatusCode::NOT_FOUND
                        | StatusCode::REQUEST_TIMEOUT
                        | StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::UNAUTHORIZED
                );
            return if retriable {
                Attempt::Retry(refused)
            } else {
                Attempt::Final(refused)
            };
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(essence)
            .filter(|t| !t.is_empty());
        if check_type
            && let Some(t) = &content_type
            && !self.limits.allows(t)
        {
            return Attempt::Final(Refused::new(
                MediaUnavailableReason::RefusedType,
                format!("{t} is not an allowed media type"),
            ));
        }
        if let Some(length) = response.content_length()
            && length > limit
        {
            return Attempt::Final(Refused {
                reason: MediaUnavailableReason::TooLarge,
                detail: format!("{length} bytes, over the {limit}-byte limit"),
                size: Some(length),
            });
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > limit {
                        let read = (body.len() + chunk.len()) as u64;
                        return Attempt::Final(Refused {
                            reason: MediaUnavailableReason::TooLarge,
                            detail: format!("over the {limit}-byte limit ({read} bytes read)"),
                            size: Some(read),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => {
                    return Attempt::Retry(Refused::new(
                        MediaUnavailableReason::FetchFailed,
                        transport_detail(&error),
                    ));
                }
            }
        }
        Attempt::Done(Fetched {
            bytes: Bytes::from(body),
            content_type,
        })
    }
}

/// A transport error in words, without the URL (it may carry a token in a
/// query string).
fn transport_detail(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else if error.is_body() || error.is_decode() {
        "the answer broke off".to_owned()
    } else if error.is_redirect() {
        "too many redirects".to_owned()
    } else {
        "request failed".to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(types: &[&str]) -> Limits {
        Limits {
            max_item_bytes: 10,
            max_message_bytes: 20,
            max_items: 10,
            allowed_types: types.iter().map(|t| (*t).to_owned()).collect(),
            attempts: 1,
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(1),
        }
    }

    #[test]
    fn allow_list_matches_essences_and_wildcards() {
        let l = limits(&["image/*", "application/pdf"]);
        assert!(l.allows("image/jpeg"));
        assert!(l.allows("IMAGE/PNG; q=1"));
        assert!(l.allows("application/pdf"));
        assert!(!l.allows("application/pdfx"));
        assert!(!l.allows("application/x-msdownload"));
        assert!(!l.allows("imagejpeg"));
        assert!(!l.allows(""));
        assert!(!limits(&[]).allows("image/png"));
    }

    #[test]
    fn origins_are_normalised() {
        assert_eq!(
            origin("https://API.twilio.com/2010-04-01/x").as_deref(),
            Some("https://api.twilio.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:8090/a").as_deref(),
            Some("http://127.0.0.1:8090")
        );
        assert_eq!(origin("not a url"), None);
    }
}
