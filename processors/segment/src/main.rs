//! `si-segment`: cognition responses to ordered, consent-checked Twilio send
//! operations, exactly once.

use clap::Parser;
use si_segment::stage::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = si_runtime::telemetry::start("si-segment", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let code = match si_segment::stage::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-segment stopped");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
