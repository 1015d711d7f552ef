//! `sictl simulate sms`: a user's message as Twilio would post it to ingress,
//! signed with `X-Twilio-Signature` (the sandbox library's signing and posting).

use clap::Args;
use twilio_sandbox::{InboundSms, Webhooks};

/// Posts a signed Programmable Messaging inbound webhook to ingress.
#[derive(Debug, Clone, Args)]
pub struct SimulateSms {
    /// The user's number (`+1…`, or `whatsapp:+1…`).
    #[arg(long)]
    pub from: String,
    /// Our number the user writes to (`+1…`, or `whatsapp:+1…`).
    #[arg(long)]
    pub to: String,
    /// The message text.
    #[arg(long)]
    pub body: String,
    /// Our messaging service the number belongs to (MG…), if any.
    #[arg(long)]
    pub messaging_service_sid: Option<String>,
    /// A media URL (repeatable).
    #[arg(long = "media-url")]
    pub media_urls: Vec<String>,
    /// Ingress's base URL, where the webhook is posted.
    #[arg(
        long,
        env = "SICTL_INGRESS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub ingress: String,
    /// The public base URL ingress validates signatures against (its
    /// PUBLIC_BASE_URL; for the compose stack http://ingress:8080). Default: --ingress.
    #[arg(long, env = "SICTL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The Auth Token ingress verifies with (default: the compose stack's).
    #[arg(
        long,
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true,
        default_value = "sandbox-auth-token"
    )]
    pub auth_token: String,
    /// The AccountSid parameter.
    #[arg(
        long,
        env = "TWILIO_ACCOUNT_SID",
        default_value = "AC00000000000000000000000000000000"
    )]
    pub account_sid: String,
}

impl SimulateSms {
    /// Posts the webhook; returns ingress's status and the message SID.
    ///
    /// # Errors
    /// When ingress does not answer.
    pub async fn run(&self) -> anyhow::Result<twilio_sandbox::Posted> {
        let webhooks = Webhooks::new(
            &self.ingress,
            self.public_url.as_deref(),
            &self.auth_token,
            &self.account_sid,
        );
        webhooks
            .post_inbound_sms(&InboundSms {
                from: self.from.clone(),
                to: self.to.clone(),
                body: self.body.clone(),
                messaging_service_sid: self.messaging_service_sid.clone(),
                media_urls: self.media_urls.clone(),
                ..InboundSms::default()
            })
            .await
    }
}
