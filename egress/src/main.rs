//! `si-egress`: performs Twilio REST operations with rate limits, retries, a
//! dedup ledger, a DLQ and one terminal status per operation.

use clap::Parser;
use si_egress::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = si_runtime::telemetry::start("si-egress", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let code = match si_egress::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-egress stopped");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
