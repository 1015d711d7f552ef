//! `si-lifecycle`: inactivity warnings, closure with a summary, Twilio close
//! and archival requests, exactly once.

use clap::Parser;
use si_lifecycle::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = si_runtime::telemetry::start("si-lifecycle", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let code = match si_lifecycle::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-lifecycle stopped");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
