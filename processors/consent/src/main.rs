//! `si-consent`: consent keywords, consent state, the inbound gate and the
//! compliance audit trail, exactly once.

use clap::Parser;
use si_consent::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    si_runtime::telemetry::init(
        config.common.service.log_format,
        &config.common.service.log_level,
    );
    let shutdown = si_runtime::shutdown_token();
    match si_consent::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-consent stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
