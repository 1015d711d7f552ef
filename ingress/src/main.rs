//! `si-ingress`: Twilio webhooks into Kafka.

use std::process::ExitCode;

use si_ingress::Config;

si_runtime::global_allocator!();

#[tokio::main]
async fn main() -> ExitCode {
    let config = match <Config as clap::Parser>::parse().validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("si-ingress: {error:#}");
            return ExitCode::from(2);
        }
    };
    let telemetry = si_runtime::telemetry::start("si-ingress", &config.common.service);
    let shutdown = si_runtime::shutdown_token();
    let result = match si_ingress::start(config, shutdown).await {
        Ok(running) => running.stopped().await,
        Err(error) => Err(error),
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("si-ingress: {error:#}");
            ExitCode::FAILURE
        }
    }
}
