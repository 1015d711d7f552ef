//! `si-normalize`: Twilio webhooks to canonical conversation events, exactly once.

use clap::Parser;
use si_normalize::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = si_runtime::telemetry::start("si-normalize", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let code = match si_normalize::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-normalize stopped");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
