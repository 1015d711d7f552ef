//! The public listener: outbound media in Si's store, fetched by Twilio
//! through short-lived signed URLs (`si_runtime::media_url`; egress signs
//! them when it sends).
//!
//! `GET /media/<object key>?expires=…&signature=…` answers the object's
//! bytes while the URL has not expired and its signature matches the
//! current key or, during a rotation, the previous one. Anything else gets
//! a plain-text reason and no byte of any object: 403 for a bad signature
//! or an expired URL, 400 for a URL that is not one of ours, 404 for a
//! missing object, 503 when the store fails. Only GET and HEAD are served;
//! nothing is listed, written or deleted here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{IntCounterVec, Opts, Registry};
use si_runtime::media_url::{self, Refused, UrlKey};
use tokio_util::sync::CancellationToken;

use crate::store::MediaStore;

/// What serves signed media URLs.
#[derive(Clone)]
pub struct Serving {
    store: MediaStore,
    keys: Arc<Vec<UrlKey>>,
    served: IntCounterVec,
}

impl Serving {
    /// Serves `store` to URLs signed with one of `keys`; counts answers in
    /// `si_media_served_total{outcome}` on `registry`.
    ///
    /// # Errors
    /// When the metric cannot be registered.
    pub fn new(
        store: MediaStore,
        keys: Vec<UrlKey>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let served = IntCounterVec::new(
            Opts::new(
                "si_media_served_total",
                "Requests for signed media URLs by outcome (ok, not_found, forbidden, expired, malformed, store_error)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(served.clone()))?;
        Ok(Self {
            store,
            keys: Arc::new(keys),
            served,
        })
    }

    /// The router: `GET /media/{*key}`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/media/{*key}", get(serve))
            .with_state(self)
    }

    fn answer(&self, outcome: &str, status: StatusCode, reason: &str) -> Response {
        self.served.with_label_values(&[outcome]).inc();
        (status, format!("{reason}\n")).into_response()
    }
}

async fn serve(
    State(serving): State<Serving>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let verdict = media_url::verify(
        &serving.keys,
        &key,
        query.get("expires").map(String::as_str),
        query.get("signature").map(String::as_str),
        SystemTime::now(),
    );
    if let Err(refused) = verdict {
        let (outcome, status) = match refused {
            Refused::Malformed => ("malformed", StatusCode::BAD_REQUEST),
            Refused::Expired => ("expired", StatusCode::FORBIDDEN),
            Refused::BadSignature => ("forbidden", StatusCode::FORBIDDEN),
        };
        return serving.answer(outcome, status, &refused.to_string());
    }
    match serving.store.get_typed(&key).await {
        Ok((bytes, content_type)) => {
            serving.served.with_label_values(&["ok"]).inc();
            let content_type = content_type
                .or_else(|| infer::get(&bytes).map(|t| t.mime_type().to_owned()))
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            let mut response = bytes.into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            // Whoever holds the URL may keep the bytes briefly; nobody
            // else may cache them.
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=60"),
            );
            response
        }
        Err(object_store::Error::NotFound { .. }) => {
            serving.answer("not_found", StatusCode::NOT_FOUND, "no such media")
        }
        Err(error) => {
            tracing::warn!(%error, "the media store failed to read an object");
            serving.answer(
                "store_error",
                StatusCode::SERVICE_UNAVAILABLE,
                "the media store is unavailable; try again",
            )
        }
    }
}

/// Serves `serving` on `addr` until `shutdown`; returns the bound address
/// and the server's task.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn start(
    addr: SocketAddr,
    serving: Serving,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = serving.router();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the media listener stopped");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use si_runtime::media_url::Signer;

    use super::*;

    const PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

    fn key(c: &str) -> UrlKey {
        UrlKey::new(&c.repeat(32)).unwrap()
    }

    #[tokio::test]
    async fn signed_urls_open_their_object_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("si-media-serve-{}", uuid::Uuid::new_v4()));
        let store = MediaStore::open(&format!("file://{}", dir.display())).unwrap();
        store
            .put_once("out/CH1/chart", Bytes::from_static(PNG), None)
            .await
            .unwrap();
        let registry = Registry::new();
        // The current key and, mid-rotation, the previous one.
        let serving = Serving::new(store, vec![key("new"), key("old")], &registry).unwrap();
        let stop = CancellationToken::new();
        let (addr, task) = start("127.0.0.1:0".parse().unwrap(), serving, stop.clone())
            .await
            .unwrap();
        let base = format!("http://{addr}");
        let signer = |k: &str| Signer::new(&base, key(k), Duration::from_secs(60));
        let client = reqwest::Client::new();
        let get = |url: String| {
            let client = client.clone();
            async move {
                let r = client.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let content_type = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, content_type, r.bytes().await.unwrap())
            }
        };
        let now = SystemTime::now();

        let (status, content_type, body) =
            get(signer("new").url("out/CH1/chart", now).unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(
            content_type.as_deref(),
            Some("image/png"),
            "sniffed: the file store keeps no type"
        );
        assert_eq!(&body[..], PNG);
        let (status, _, body) = get(signer("old").url("out/CH1/chart", now).unwrap()).await;
        assert_eq!(
            (status, &body[..]),
            (200, PNG),
            "the previous key still opens"
        );

        let refused = [
            // Signed with a key we do not hold.
            (
                signer("bad").url("out/CH1/chart", now).unwrap(),
                403,
                "signature",
            ),
            // Expired: signed two minutes ago for one.
            (
                signer("new")
                    .url("out/CH1/chart", now - Duration::from_secs(120))
                    .unwrap(),
                403,
                "expired",
            ),
            // Another object with this object's signature.
            (
                signer("new")
                    .url("out/CH1/chart", now)
                    .unwrap()
                    .replace("/chart?", "/other?"),
                403,
                "signature",
            ),
            // Not a signed URL at all.
            (format!("{base}/media/out/CH1/chart"), 400, "not a signed"),
            // Signed, but there is no such object.
            (
                signer("new").url("out/CH1/missing", now).unwrap(),
                404,
                "no such",
            ),
        ];
        for (url, want, reason) in refused {
            let (status, _, body) = get(url.clone()).await;
            let body = String::from_utf8_lossy(&body);
            assert_eq!(status, want, "{url}: {body}");
            assert!(body.contains(reason), "{url}: {body}");
        }
        let served = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "si_media_served_total")
            .unwrap();
        let count = |outcome: &str| {
            served
                .get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == outcome))
                .map_or(0.0, |m| m.get_counter().get_value())
        };
        assert_eq!(count("ok"), 2.0);
        assert_eq!(count("forbidden"), 2.0);
        assert_eq!(count("expired"), 1.0);
        assert_eq!(count("not_found"), 1.0);
        assert_eq!(count("malformed"), 1.0);
        stop.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
