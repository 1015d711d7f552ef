//! `si-voice-link`: escalation to a call, recording consent, one transcript
//! for text and voice, exactly once.

use clap::Parser;
use si_voice_link::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    si_runtime::telemetry::init(
        config.common.service.log_format,
        &config.common.service.log_level,
    );
    let shutdown = si_runtime::shutdown_token();
    match si_voice_link::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "si-voice-link stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
