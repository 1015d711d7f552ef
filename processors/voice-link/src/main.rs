//! `si-voice-link`: escalation to a call, recording consent, one transcript
//! for text and voice, exactly once.

use clap::Parser;
use si_voice_link::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = si_runtime::telemetry::start("si-voice-link", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let code = match si_voice_link::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-voice-link stopped");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
