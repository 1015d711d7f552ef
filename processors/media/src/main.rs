//! `si-media`: copies inbound media and call recordings into Si's object
//! storage, exactly once.

use clap::Parser;
use si_media::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    si_runtime::telemetry::init(
        config.common.service.log_format,
        &config.common.service.log_level,
    );
    let shutdown = si_runtime::shutdown_token();
    match si_media::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-media stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
