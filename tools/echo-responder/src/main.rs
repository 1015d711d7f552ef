//! `si-echo-responder`: answers every si.inbound.v1 message on si.responses.v1 (development only).

use clap::Parser;
use si_echo_responder::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = si_runtime::telemetry::start("si-echo-responder", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let code = match si_echo_responder::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-echo-responder stopped");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
