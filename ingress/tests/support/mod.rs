//! Running ingress in-process against an isolated slice of the local stack.

#![allow(dead_code)]

use std::time::Duration;

use sha2::Digest;
use si_ingress::{Config, Running};
use si_testkit::TestEnv;
use si_twilio_signature::{self as signature, Algorithm};
use tokio_util::sync::CancellationToken;

/// The public URL Twilio would call (requests really go to 127.0.0.1).
pub const PUBLIC: &str = "https://si.example.test";
/// The primary Auth Token.
pub const TOKEN: &str = "test-primary-token";
/// The secondary Auth Token (rotation).
pub const SECONDARY: &str = "test-secondary-token";

pub fn form_params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// A form body in the given order, and its signature for `url`.
pub fn signed_form(url: &str, params: &[(String, String)], token: &str) -> (String, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let signature = signature::compute(
        Algorithm::HmacSha1,
        token,
        &signature::signing_string(url, params),
    );
    (body, signature)
}

pub struct Ingress {
    pub env: TestEnv,
    pub running: Running,
    pub shutdown: CancellationToken,
    pub client: reqwest::Client,
    /// Stops ingress when the test is done with it.
    pub _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Ingress {
    /// Starts ingress and waits until it reports ready, as a load balancer would
    /// before routing Twilio to it (on a busy machine the first broker and registry
    /// round trips can outlast a short produce timeout).
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let ingress = Self::start_with(TestEnv::start().await?, extra).await?;
        wait_for(Duration::from_secs(60), || async {
            Ok(ingress.readyz().await? == 200)
        })
        .await?;
        Ok(ingress)
    }

    pub async fn start_with(env: TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec![
            "si-ingress".to_owned(),
            "--public-base-url".into(),
            PUBLIC.into(),
            "--twilio-auth-token".into(),
            TOKEN.into(),
            "--twilio-auth-token-secondary".into(),
            SECONDARY.into(),
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--kafka-bootstrap-servers".into(),
            env.kafka.bootstrap_servers.clone(),
            "--topic-prefix".into(),
            env.kafka.topic_prefix.clone(),
            "--schema-registry-url".into(),
            env.registry.url.clone(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = Config::from_args(args)?;
        let shutdown = CancellationToken::new();
        let running = si_ingress::start(config, shutdown.clone()).await?;
        Ok(Self {
            env,
            running,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            client: reqwest::Client::new(),
        })
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.running.addr)
    }

    pub async fn post_form(
        &self,
        path_and_query: &str,
        params: &[(String, String)],
        token: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let (body, signature) = signed_form(&format!("{PUBLIC}{path_and_query}"), params, token);
        self.post_raw(
            path_and_query,
            "application/x-www-form-urlencoded",
            body.into_bytes(),
            &signature,
        )
        .await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: Vec<u8>,
        token: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let hash = hex::encode(sha2::Sha256::digest(&body));
        let path_and_query = format!("{path}?bodySHA256={hash}");
        let signature = signature::compute(
            Algorithm::HmacSha1,
            token,
            &format!("{PUBLIC}{path_and_query}"),
        );
        self.post_raw(&path_and_query, "application/json", body, &signature)
            .await
    }

    pub async fn post_raw(
        &self,
        path_and_query: &str,
        content_type: &str,
        body: Vec<u8>,
        signature: &str,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .client
            .post(self.url(path_and_query))
            .header("content-type", content_type)
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
            .await?)
    }

    /// The status of `/readyz`.
    pub async fn readyz(&self) -> anyhow::Result<u16> {
        Ok(self
            .client
            .get(format!("http://{}/readyz", self.running.admin_addr))
            .send()
            .await?
            .status()
            .as_u16())
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(format!("http://{}/metrics", self.running.admin_addr))
            .send()
            .await?
            .text()
            .await?)
    }
}

/// Waits for `condition` with a deadline, polling.
pub async fn wait_for<F, Fut>(deadline: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    // An error counts as "not yet" (the broker may be down on purpose).
    si_testkit::wait_for("the condition", deadline, || {
        let check = condition();
        async move { Ok(check.await.unwrap_or(false).then_some(())) }
    })
    .await
}
