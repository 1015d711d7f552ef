//! `si-consent`: consent keywords, consent state, the inbound gate and the
//! compliance audit trail, exactly once.

use clap::Parser;
use si_consent::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = si_runtime::telemetry::start("si-consent", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let code = match si_consent::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-consent stopped");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
