//! `sictl simulate sms`: a user's message as Twilio would post it to ingress,
//! signed with `X-Twilio-Signature` (the sandbox library's signing and posting).
//! `sictl simulate call`: a call to one of our numbers, played by an
//! in-process sandbox as Twilio would.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use si_runtime::mask::mask_address;
use twilio_sandbox::{
    CallRecord, GatherAnswer, InboundCall, InboundSms, Sandbox, SandboxConfig, SharedLocation,
    Speaker, Webhooks,
};

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
    /// WhatsApp: the sender's profile name (`ProfileName`).
    #[arg(long)]
    pub profile_name: Option<String>,
    /// WhatsApp: share a place, `LATITUDE,LONGITUDE` in degrees (with
    /// `--body ''` for the place alone, as WhatsApp sends it).
    #[arg(long, value_parser = parse_place, allow_hyphen_values = true)]
    pub location: Option<(f64, f64)>,
    /// WhatsApp: the shared place's name (`Label`), with --location.
    #[arg(long, requires = "location")]
    pub location_label: Option<String>,
    /// WhatsApp: the shared place's address (`Address`), with --location.
    #[arg(long, requires = "location")]
    pub location_address: Option<String>,
    /// WhatsApp: the payload of a tapped quick-reply button (`ButtonPayload`;
    /// the body is the button's text).
    #[arg(long, conflicts_with = "location")]
    pub button_payload: Option<String>,
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
                profile_name: self.profile_name.clone(),
                location: self.location.map(|(latitude, longitude)| SharedLocation {
                    latitude,
                    longitude,
                    address: self.location_address.clone(),
                    label: self.location_label.clone(),
                }),
                button_payload: self.button_payload.clone(),
                ..InboundSms::default()
            })
            .await
    }
}

/// `LATITUDE,LONGITUDE` in degrees.
fn parse_place(text: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = text
        .split_once(',')
        .ok_or("expected LATITUDE,LONGITUDE, e.g. 37.7879,-122.4075")?;
    let degrees = |part: &str, limit: f64, what: &str| {
        part.trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && d.abs() <= limit)
            .ok_or(format!("{what} must be a number from -{limit} to {limit}"))
    };
    Ok((
        degrees(lat, 90.0, "latitude")?,
        degrees(lon, 180.0, "longitude")?,
    ))
}

/// Places an inbound call to ingress as Twilio would and plays it: the signed
/// voice request to the answer URL, then its TwiML (an in-process sandbox
/// plays it, posting every callback signed).
#[derive(Debug, Clone, Args)]
pub struct SimulateCall {
    /// The caller's number (`+1…`).
    #[arg(long)]
    pub from: String,
    /// Our number called (`+1…`).
    #[arg(long)]
    pub to: String,
    /// Answer the consent prompt by pressing these keys (e.g. `1`).
    #[arg(long, group = "answer")]
    pub press: Option<String>,
    /// Answer the consent prompt by saying this (e.g. "yes").
    #[arg(long, group = "answer")]
    pub say: Option<String>,
    /// Answer the consent prompt with silence (at once, not after its timeout).
    #[arg(long, group = "answer")]
    pub silent: bool,
    /// Something the caller says once connected to Si (repeatable; transcribed
    /// when a real-time transcription runs).
    #[arg(long = "utterance")]
    pub utterances: Vec<String>,
    /// Hang up this long after being connected to Si, e.g. `3s`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub hangup_after: Duration,
    /// Give up (hang up) after this long in all, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The voice URL (default: {public URL}/twilio/voice/answer).
    #[arg(long)]
    pub url: Option<String>,
    /// Ingress's base URL, where the webhooks are posted.
    #[arg(
        long,
        env = "SICTL_INGRESS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub ingress: String,
    /// The public base URL ingress validates signatures against (its
    /// PUBLIC_BASE_URL). Default: --ingress.
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

impl SimulateCall {
    fn answers(&self) -> Vec<GatherAnswer> {
        if let Some(digits) = &self.press {
            vec![GatherAnswer::digits(digits)]
        } else if let Some(phrase) = &self.say {
            vec![GatherAnswer::speech(phrase)]
        } else if self.silent {
            vec![GatherAnswer::silence()]
        } else {
            Vec::new()
        }
    }

    /// Plays the call, printing each TwiML step, what was said and every
    /// webhook posted; returns the call as it ended.
    ///
    /// # Errors
    /// When the in-process sandbox cannot start or the call cannot be placed.
    pub async fn run(&self, out: &mut impl Write) -> anyhow::Result<CallRecord> {
        let sandbox = Sandbox::start(SandboxConfig {
            account_sid: self.account_sid.clone(),
            auth_token: self.auth_token.clone(),
            callback_url: Some(self.ingress.clone()),
            public_url: self.public_url.clone(),
            ..SandboxConfig::default()
        })
        .await?;
        let sid = sandbox.place_inbound_call(&InboundCall {
            from: self.from.clone(),
            to: self.to.clone(),
            url: self.url.clone(),
            answers: self.answers(),
            ..InboundCall::default()
        })?;
        writeln!(
            out,
            "call {sid}: {} calls {}",
            mask_address(&self.from),
            mask_address(&self.to)
        )?;
        let deadline = Instant::now() + self.timeout;
        let mut shown = 0;
        let mut connected_at = None;
        let call = loop {
            let call = sandbox
                .wait_for_call(&sid, Duration::from_millis(200), |_| true)
                .await?;
            for step in &call.steps[shown..] {
                writeln!(out, "  twiml  {}", describe(&step.element))?;
            }
            shown = call.steps.len();
            if call.ended() {
                break call;
            }
            if call.connected && connected_at.is_none() {
                connected_at = Some(Instant::now());
                for utterance in &self.utterances {
                    sandbox.say(&sid, Speaker::User, utterance)?;
                    writeln!(out, "  said   {utterance:?}")?;
                }
            }
            let hang_up = connected_at.is_some_and(|at| at.elapsed() >= self.hangup_after)
                || Instant::now() >= deadline;
            if hang_up {
                writeln!(out, "  hang up")?;
                // It may have ended meanwhile: then there is nothing to hang up.
                let _ = sandbox.hang_up(&sid);
                break sandbox
                    .wait_for_call(&sid, Duration::from_secs(30), CallRecord::ended)
                    .await?;
            }
        };
        for step in &call.steps[shown..] {
            writeln!(out, "  twiml  {}", describe(&step.element))?;
        }
        for heard in &call.heard {
            writeln!(out, "  heard  {heard:?}")?;
        }
        for error in &call.errors {
            writeln!(out, "  error  {} {}", error.code, error.message)?;
        }
        for callback in sandbox.callbacks() {
            let event = ["CallStatus", "RecordingStatus", "TranscriptionEvent"]
                .iter()
                .find_map(|name| {
                    callback
                        .params
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| format!(" {name}={v}"))
                })
                .unwrap_or_default();
            let answer = callback.status.map_or_else(
                || callback.error.clone().unwrap_or_default(),
                |s| s.to_string(),
            );
            writeln!(out, "  webhook {}{event} -> {answer}", callback.url)?;
        }
        writeln!(
            out,
            "{} ({} s)",
            call.status,
            call.duration_secs.unwrap_or_default()
        )?;
        sandbox.shutdown().await;
        Ok(call)
    }
}

/// `Gather input="dtmf speech" … "prompt"`.
fn describe(element: &twilio_sandbox::twiml::Element) -> String {
    let mut text = element.name.clone();
    for (name, value) in &element.attributes {
        text.push_str(&format!(" {name}={value:?}"));
    }
    if let Some(said) = &element.text {
        text.push_str(&format!(" {said:?}"));
    }
    for child in &element.children {
        text.push_str(&format!(" [{}]", describe(child)));
    }
    text
}
