//! `si-echo-responder`: answers every si.inbound.v1 message on si.responses.v1 (development only).

use clap::Parser;
use si_echo_responder::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    si_runtime::telemetry::init(
        config.common.service.log_format,
        &config.common.service.log_level,
    );
    let shutdown = si_runtime::shutdown_token();
    match si_echo_responder::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-echo-responder stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
