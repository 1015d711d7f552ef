//! The long run: `si-fuzz run <target|all> --seconds 600`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use si_fuzz::engine::{Fuzzer, load_corpus};
use si_fuzz::{Budget, TARGETS, corpus_root, targets};

/// Fuzz the parsers of the Si Twilio channel.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The targets and what they check.
    List,
    /// Fuzz one target (or `all`, one after the other) for a time or a number of inputs.
    Run {
        /// A target name, or `all`.
        target: String,
        /// Seconds per target.
        #[arg(long, env = "FUZZ_SECONDS", default_value_t = 60)]
        seconds: u64,
        /// Stop after this many inputs instead.
        #[arg(long)]
        executions: Option<u64>,
        /// Seed of the generator.
        #[arg(long, env = "FUZZ_SEED", default_value_t = 1)]
        seed: u64,
        /// Where crashing inputs are written.
        #[arg(long, default_value_os_t = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts")))]
        artifacts: PathBuf,
    },
    /// Runs one input (a file) through a target, e.g. a saved crash.
    Replay {
        /// The target.
        target: String,
        /// The input file.
        file: PathBuf,
    },
    /// Writes the generated seeds (Avro records of every type) into the corpus.
    Seed,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List => {
            for t in TARGETS {
                println!("{:<22} {}", t.name, t.about);
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            target,
            seconds,
            executions,
            seed,
            artifacts,
        } => {
            let chosen: Vec<_> = if target == "all" {
                TARGETS.iter().collect()
            } else if let Some(t) = targets::find(&target) {
                vec![t]
            } else {
                eprintln!("no target {target}; see `si-fuzz list`");
                return ExitCode::FAILURE;
            };
            let budget = executions.map_or(
                Budget::Time(Duration::from_secs(seconds)),
                Budget::Executions,
            );
            let mut crashed = false;
            for t in chosen {
                let seeds = load_corpus(&corpus_root(), t.name);
                let report = Fuzzer::new(*t, seeds, seed, Some(artifacts.clone())).run(budget);
                println!("{}", report.summary());
                crashed |= report.crashes > 0;
            }
            if crashed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Replay { target, file } => {
            let Some(t) = targets::find(&target) else {
                eprintln!("no target {target}");
                return ExitCode::FAILURE;
            };
            let input = match std::fs::read(&file) {
                Ok(input) => input,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            match si_fuzz::engine::execute(t, &input) {
                Ok(()) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    println!("{message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Seed => match si_fuzz::seeds::write(&corpus_root()) {
            Ok(n) => {
                println!("{n} seed files written under {}", corpus_root().display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
