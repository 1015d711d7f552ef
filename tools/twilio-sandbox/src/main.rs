//! `si-twilio-sandbox`: a local stand-in for Twilio's REST API (see the lib docs).

use std::net::SocketAddr;

use clap::Parser;
use si_runtime::config::LogFormat;
use twilio_sandbox::{
    CallOutcomes, ConversationsWebhooks, DeliveryFailure, Faults, MessagingService, Outcome,
    PhoneNumber, Sandbox, SandboxConfig,
};

/// A local stand-in for the Twilio REST endpoints egress calls.
#[derive(Debug, Parser)]
#[command(name = "si-twilio-sandbox", version)]
struct Args {
    /// Where to listen.
    #[arg(long, env = "SANDBOX_ADDR", default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    /// The account SID requests must use.
    #[arg(
        long,
        env = "TWILIO_ACCOUNT_SID",
        default_value = "AC00000000000000000000000000000000"
    )]
    account_sid: String,
    /// The Auth Token requests must use; callbacks are signed with it.
    #[arg(
        long,
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true,
        default_value = "sandbox-auth-token"
    )]
    auth_token: String,
    /// An API key SID also accepted (with its secret).
    #[arg(long, env = "TWILIO_API_KEY_SID", requires = "api_key_secret")]
    api_key_sid: Option<String>,
    /// The API key's secret.
    #[arg(
        long,
        env = "TWILIO_API_KEY_SECRET",
        hide_env_values = true,
        requires = "api_key_sid"
    )]
    api_key_secret: Option<String>,
    /// Requests per sender in any one-second window (429 / 20429 past it); unset = unlimited.
    #[arg(long, env = "SANDBOX_RATE_PER_SENDER", value_parser = clap::value_parser!(u32).range(1..))]
    rate_per_sender: Option<u32>,
    /// Ingress's base URL: status callbacks without a StatusCallback, Conversations
    /// events and simulated inbound messages are posted here.
    #[arg(long, env = "SANDBOX_CALLBACK_URL")]
    callback_url: Option<String>,
    /// The public base URL ingress validates signatures against (its PUBLIC_BASE_URL);
    /// default: SANDBOX_CALLBACK_URL. StatusCallback URLs under it are posted to
    /// SANDBOX_CALLBACK_URL.
    #[arg(long, env = "SANDBOX_PUBLIC_URL")]
    public_url: Option<String>,
    /// More `To` numbers refused with 21211 (comma-separated; +15005550001 always is).
    #[arg(long, env = "SANDBOX_INVALID_NUMBERS", value_delimiter = ',')]
    invalid_numbers: Vec<String>,
    /// More `To` numbers refused with 21610 (comma-separated; +15005550004 always is).
    #[arg(long, env = "SANDBOX_OPTED_OUT_NUMBERS", value_delimiter = ',')]
    opted_out_numbers: Vec<String>,
    /// Share of requests answered 500 / 20500.
    #[arg(long, env = "SANDBOX_ERROR_5XX_RATE", default_value_t = 0.0)]
    error_5xx_rate: f64,
    /// Share of requests answered 429 / 20429 at random.
    #[arg(long, env = "SANDBOX_RATE_429", default_value_t = 0.0)]
    rate_429: f64,
    /// Share of requests processed and then left without an answer.
    #[arg(long, env = "SANDBOX_DROP_RATE", default_value_t = 0.0)]
    drop_rate: f64,
    /// Delay before every answer, in milliseconds.
    #[arg(long, env = "SANDBOX_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// What happens when a created call rings: answer, machine, busy, no-answer,
    /// failed, or ring (rings until told through the control API, or its Timeout).
    #[arg(long, env = "SANDBOX_CALL_OUTCOME", default_value = "answer")]
    call_outcome: String,
    /// Deliveries that fail after the message was accepted, as JSON:
    /// `[{"to":"whatsapp:+14155550100","error_code":63016,"free_text_only":true}]`
    /// (`status` `undelivered` by default, or `failed`).
    #[arg(long, env = "SANDBOX_DELIVERY_FAILURES", default_value = "[]")]
    delivery_failures: String,
    /// The account's phone numbers and their webhook URLs, as JSON:
    /// `[{"phone_number":"+14155550100","sms_url":"https://si.example.com/twilio/messaging/inbound","voice_url":"…"}]`.
    #[arg(long, env = "SANDBOX_PHONE_NUMBERS", default_value = "[]")]
    phone_numbers: String,
    /// The account's Messaging Services, as JSON:
    /// `[{"inbound_request_url":"…","status_callback":"…","phone_numbers":["+1…"]}]`.
    #[arg(long, env = "SANDBOX_MESSAGING_SERVICES", default_value = "[]")]
    messaging_services: String,
    /// The account's Conversations webhooks, as JSON:
    /// `{"post_webhook_url":"…","filters":["onMessageAdded","onDeliveryUpdated"]}`.
    #[arg(long, env = "SANDBOX_CONVERSATIONS_WEBHOOKS", default_value = "{}")]
    conversations_webhooks: String,
    /// Seed of the fault generator.
    #[arg(long, env = "SANDBOX_SEED", default_value_t = 0x5EED)]
    seed: u64,
    /// Whether media URLs of simulated inbound messages need HTTP Basic auth.
    #[arg(long, env = "SANDBOX_MEDIA_AUTH", default_value_t = true, action = clap::ArgAction::Set)]
    media_auth: bool,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    si_runtime::telemetry::init(args.log_format, &args.log_level);
    let config = SandboxConfig {
        addr: args.addr,
        account_sid: args.account_sid,
        auth_token: args.auth_token,
        api_key: args.api_key_sid.zip(args.api_key_secret),
        rate_per_sender: args.rate_per_sender,
        callback_url: args.callback_url,
        public_url: args.public_url,
        invalid_numbers: args.invalid_numbers,
        opted_out_numbers: args.opted_out_numbers,
        faults: Faults {
            error_5xx_rate: args.error_5xx_rate,
            rate_429: args.rate_429,
            latency_ms: args.latency_ms,
            drop_rate: args.drop_rate,
        },
        seed: args.seed,
        ..SandboxConfig::default()
    };
    let call_outcome = match args.call_outcome.trim() {
        "ring" => None,
        outcome => match outcome.parse::<Outcome>() {
            Ok(outcome) => Some(outcome),
            Err(error) => {
                eprintln!("si-twilio-sandbox: SANDBOX_CALL_OUTCOME: {error} (or ring)");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let delivery_failures =
        match serde_json::from_str::<Vec<DeliveryFailure>>(&args.delivery_failures)
            .map_err(|e| e.to_string())
            .and_then(|failures| {
                failures
                    .iter()
                    .try_for_each(DeliveryFailure::validate)
                    .map(|()| failures)
            }) {
            Ok(failures) => failures,
            Err(error) => {
                eprintln!("si-twilio-sandbox: SANDBOX_DELIVERY_FAILURES: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
    let account = (|| -> Result<_, String> {
        let numbers: Vec<PhoneNumber> = serde_json::from_str(&args.phone_numbers)
            .map_err(|e| format!("SANDBOX_PHONE_NUMBERS: {e}"))?;
        let services: Vec<MessagingService> = serde_json::from_str(&args.messaging_services)
            .map_err(|e| format!("SANDBOX_MESSAGING_SERVICES: {e}"))?;
        let webhooks: ConversationsWebhooks = serde_json::from_str(&args.conversations_webhooks)
            .map_err(|e| format!("SANDBOX_CONVERSATIONS_WEBHOOKS: {e}"))?;
        Ok((numbers, services, webhooks))
    })();
    let (phone_numbers, messaging_services, conversations_webhooks) = match account {
        Ok(account) => account,
        Err(error) => {
            eprintln!("si-twilio-sandbox: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = SandboxConfig {
        delivery_failures,
        phone_numbers,
        messaging_services,
        conversations_webhooks,
        media_auth: args.media_auth,
        call_outcomes: CallOutcomes {
            default: call_outcome,
            ..CallOutcomes::default()
        },
        ..config
    };
    let shutdown = si_runtime::shutdown_token();
    match Sandbox::start(config).await {
        Ok(sandbox) => {
            shutdown.cancelled().await;
            sandbox.shutdown().await;
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-twilio-sandbox stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
