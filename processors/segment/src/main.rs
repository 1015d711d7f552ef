//! `si-segment`: cognition responses to ordered, consent-checked Twilio send
//! operations, exactly once.

use clap::Parser;
use si_segment::stage::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    si_runtime::telemetry::init(
        config.common.service.log_format,
        &config.common.service.log_level,
    );
    let shutdown = si_runtime::shutdown_token();
    match si_segment::stage::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-segment stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
