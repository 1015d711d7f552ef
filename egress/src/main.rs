//! `si-egress`: performs Twilio REST operations with rate limits, retries, a
//! dedup ledger, a DLQ and one terminal status per operation.

use clap::Parser;
use si_egress::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    si_runtime::telemetry::init(
        config.common.service.log_format,
        &config.common.service.log_level,
    );
    let shutdown = si_runtime::shutdown_token();
    match si_egress::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-egress stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
