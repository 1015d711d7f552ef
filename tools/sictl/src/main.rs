//! `sictl`: apply topics, register and check schemas, tail topics, replay the
//! outbound DLQ, show and record consent, simulate signed webhooks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use si_runtime::{KafkaArgs, RegistryArgs};
use si_schemas::{Codec, Registry};
use sictl::schemas::Verdict;
use sictl::topics_file::{Overrides, ResolvedTopic, TopicsFile, default_path};

/// Operator CLI of the Si Twilio channel.
#[derive(Parser)]
#[command(name = "sictl", version, about)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    registry: RegistryArgs,

    /// The topics file (default: topics.yaml of the checkout, else /etc/si/topics.yaml).
    #[arg(long, env = "SI_TOPICS_FILE", global = true)]
    topics_file: Option<PathBuf>,

    /// Directory of the .avsc files (default: schemas/avro of the checkout, else /etc/si/schemas).
    #[arg(long, env = "SI_SCHEMAS_DIR", global = true)]
    schemas_dir: Option<PathBuf>,

    /// Replication factor for every topic, overriding topics.yaml (local development: 1).
    #[arg(long, env = "SI_REPLICATION_FACTOR", global = true)]
    replication_factor: Option<i32>,

    /// At most this many partitions per topic, below topics.yaml's (a small
    /// cluster: fewer transaction markers, lower latency; also the most
    /// replicas of a stage that get work). Choose it at the first apply:
    /// partitions added later move keys away from their state.
    #[arg(long, env = "SI_MAX_PARTITIONS", global = true)]
    max_partitions: Option<i32>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Topics in the cluster.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Value schemas in the registry.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Prints a topic's records as JSON lines (topic name without the prefix).
    Tail {
        /// Topic name as in topics.yaml.
        topic: String,
        /// Start at the end instead of the beginning.
        #[arg(long)]
        from_end: bool,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Stop when nothing arrives for this long, e.g. `5s` (default: follow).
        #[arg(long, value_parser = humantime_duration)]
        idle_timeout: Option<Duration>,
        /// Also show records of open or aborted transactions.
        #[arg(long)]
        read_uncommitted: bool,
    },
    /// Shows how a text would be sent: encoding, segments and the parts, as the segment processor sends them.
    Segment(Box<sictl::segment::SegmentCommand>),
    /// Posts webhooks to ingress as Twilio would, signed (development and tests).
    Simulate {
        #[command(subcommand)]
        command: SimulateCommand,
    },
    /// Consent: the decision in force for an address, and decisions operators record.
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
    },
    /// The outbound dead-letter queue (twilio.outbound.dlq.v1).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Checks what the deployment needs: Kafka and the registry reachable,
    /// topics and schemas as declared, Twilio credentials valid, and the
    /// webhook URLs of our numbers, Messaging Services and Conversations at
    /// Twilio pointing at PUBLIC_BASE_URL (read-only). One line per finding
    /// (ok/warn/FAIL) with the fix; non-zero exit when any check fails.
    Doctor(Box<sictl::doctor::DoctorArgs>),
    /// What the channel did in a time range, read from the topics: messages
    /// sent and delivered, delivery rate by channel, remediation decisions,
    /// opt-outs and opt-ins per day, segments and estimated cost, escalations.
    Report(Box<sictl::report::ReportCommand>),
    /// Issues a command on si.commands.v1 by hand (`sictl command close ...`).
    #[command(name = "command")]
    Issue {
        #[command(subcommand)]
        command: CommandCommand,
    },
}

#[derive(Subcommand)]
enum CommandCommand {
    /// CLOSE_CONVERSATION: lifecycle sends the closing message (with the
    /// summary given, or one it asks cognition for), closes and archives.
    Close(sictl::command::Close),
    /// START_CONVERSATION: lifecycle checks consent, opens the conversation
    /// (or joins the user's active one) and sends the opening text.
    Start(Box<sictl::command::Start>),
    /// ESCALATE_TO_VOICE: voice-link checks consent and the quiet hours,
    /// then calls the conversation's user (now, or at --at).
    Escalate(Box<sictl::command::Escalate>),
    /// END_CALL: voice-link hangs up the conversation's call, or cancels
    /// its scheduled call.
    EndCall(sictl::command::EndCall),
}

#[derive(Subcommand)]
enum SimulateCommand {
    /// A user's SMS or WhatsApp message (Programmable Messaging inbound webhook).
    Sms(Box<sictl::simulate::SimulateSms>),
    /// A call to one of our numbers, played as Twilio would (voice request,
    /// TwiML, gather answer, utterances, hang-up); prints what happened.
    Call(Box<sictl::simulate::SimulateCall>),
}

#[derive(Subcommand)]
enum ConsentCommand {
    /// Prints, as JSON, the decision in force for an address and every entry behind it
    /// (si.consent.v1 and si.consent.registry.v1, for the scope and for *).
    Show {
        #[command(flatten)]
        subject: sictl::consent::Subject,
        /// Longest time to read both tables to their end, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime_duration)]
        timeout: Duration,
    },
    /// Records an operator's decision (compliance source API): the entry on
    /// si.consent.v1 and an OPT_IN / OPT_OUT event on si.compliance.v1, in one transaction.
    /// Every stage honours it at once; the user's next keyword overrides it.
    Set {
        #[command(flatten)]
        subject: sictl::consent::Subject,
        /// The decision.
        #[arg(long, value_enum)]
        status: sictl::consent::ConsentDecision,
        /// Who decided (an operator, a ticket); kept in the compliance event.
        #[arg(long)]
        issued_by: String,
        /// Why, e.g. "asked by e-mail, ticket 4711"; kept in the compliance event.
        #[arg(long)]
        reason: Option<String>,
        /// The compliance event id (default: a new UUID; reuse one to make a retry idempotent downstream).
        #[arg(long)]
        event_id: Option<String>,
        /// Longest time for the transaction, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Produces dead-lettered operations back to twilio.outbound.v1 (keyed by sender_key,
    /// operation_id unchanged); prints one JSON line per operation.
    Replay {
        /// An operation to replay (repeatable).
        #[arg(
            long = "operation-id",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        operation_ids: Vec<String>,
        /// Replay every operation on the DLQ.
        #[arg(long)]
        all: bool,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Longest time to read the DLQ to its end, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Creates missing topics, raises partition counts and corrects drifted configs. Never deletes.
    Apply {
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// Registers every value schema (after a compatibility check) and sets each subject's level.
    Register,
    /// Checks the local schemas against the registry; non-zero exit on an incompatible one.
    Check,
}

fn humantime_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

impl Cli {
    fn topics(&self) -> anyhow::Result<Vec<ResolvedTopic>> {
        let path = self
            .topics_file
            .clone()
            .unwrap_or_else(|| default_path("topics.yaml", "/etc/si/topics.yaml"));
        TopicsFile::load(&path)?.resolve(&Overrides {
            prefix: self.kafka.topic_prefix.clone(),
            replication_factor: self.replication_factor,
            max_partitions: self.max_partitions,
        })
    }

    /// A codec on the registry the flags name.
    fn codec(&self) -> anyhow::Result<Codec> {
        Ok(Codec::new(Registry::new(self.registry.config())?))
    }

    fn schemas_dir(&self) -> PathBuf {
        self.schemas_dir
            .clone()
            .unwrap_or_else(|| default_path("schemas/avro", "/etc/si/schemas"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr: stdout is the commands' output (JSON for --json).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sictl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Segment(command) => command.run(&mut std::io::stdout().lock())?,
        Command::Doctor(args) => return doctor(&cli, args).await,
        Command::Simulate {
            command: SimulateCommand::Sms(sms),
        } => {
            let posted = sms.run().await?;
            println!(
                "{}",
                serde_json::json!({ "status": posted.status, "message_sid": posted.sid })
            );
            if !(200..300).contains(&posted.status) {
                eprintln!("sictl: ingress answered {}", posted.status);
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Simulate {
            command: SimulateCommand::Call(call),
        } => {
            let ended = call.run(&mut std::io::stdout().lock()).await?;
            if !ended.errors.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Report(command) => report(&cli, command).await?,
        Command::Consent { command } => consent(&cli, command).await?,
        Command::Issue { command } => issue(&cli, command).await?,
        Command::Dlq { command } => return dlq(&cli, command).await,
        Command::Topics {
            command: TopicsCommand::Apply { dry_run },
        } => topics_apply(&cli, *dry_run).await?,
        Command::Schemas { command } => return schemas(&cli, command).await,
        Command::Tail {
            topic,
            from_end,
            max,
            idle_timeout,
            read_uncommitted,
        } => {
            let options = sictl::tail::TailOptions {
                topic: cli.kafka.topic(topic),
                from_end: *from_end,
                max: *max,
                idle_timeout: *idle_timeout,
                read_uncommitted: *read_uncommitted,
            };
            sictl::tail::run(
                &cli.kafka,
                &cli.codec()?,
                &options,
                &mut std::io::stdout().lock(),
            )
            .await
            .context("tail")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sictl doctor`: fails when a check does.
async fn doctor(cli: &Cli, args: &sictl::doctor::DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = sictl::doctor::run(sictl::doctor::Deployment {
        kafka: &cli.kafka,
        registry: &cli.registry,
        topics: cli.topics(),
        schemas_dir: cli.schemas_dir(),
        args,
    })
    .await;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "ok": !report.failed(), "checks": report.checks })
        );
    } else {
        report.write_text(&mut std::io::stdout().lock())?;
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `sictl report`.
async fn report(cli: &Cli, command: &sictl::report::ReportCommand) -> anyhow::Result<()> {
    let report = sictl::report::run(&cli.kafka, &cli.codec()?, command, sictl::consent::now_ms())
        .await
        .context("report")?;
    if command.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", sictl::report::render(&report));
    }
    Ok(())
}

/// `sictl consent show|set`.
async fn consent(cli: &Cli, command: &ConsentCommand) -> anyhow::Result<()> {
    let codec = cli.codec()?;
    match command {
        ConsentCommand::Show { subject, timeout } => {
            let shown = sictl::consent::show(&cli.kafka, &codec, subject, *timeout)
                .await
                .context("consent show")?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        ConsentCommand::Set {
            subject,
            status,
            issued_by,
            reason,
            event_id,
            timeout,
        } => {
            let decision = sictl::consent::Decision {
                subject: subject.clone(),
                status: *status,
                issued_by: issued_by.clone(),
                reason: reason.clone(),
                decided_at: sictl::consent::now_ms(),
                event_id: event_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            };
            let recorded = sictl::consent::record(&cli.kafka, &codec, &decision, *timeout)
                .await
                .context("consent set")?;
            println!("{}", serde_json::to_string(&recorded)?);
        }
    }
    Ok(())
}

/// `sictl command start|escalate|end-call|close`: writes the command and
/// prints its ids, and where its outcome will be when it has one.
async fn issue(cli: &Cli, command: &CommandCommand) -> anyhow::Result<()> {
    let now = sictl::consent::now_ms();
    let (issued, name, outcome) = match command {
        CommandCommand::Start(start) => {
            (start.command(now), "command start", Some("lifecycle-start"))
        }
        CommandCommand::Escalate(escalate) => (
            escalate.command(now)?,
            "command escalate",
            Some("voice-command"),
        ),
        CommandCommand::EndCall(end) => (end.command(now), "command end-call", None),
        CommandCommand::Close(close) => (close.command(now), "command close", None),
    };
    sictl::command::issue(&cli.kafka, &cli.codec()?, &issued)
        .await
        .context(name)?;
    let mut printed = serde_json::json!({
        "command_id": issued.command_id,
        "conversation_id": issued.conversation_id,
    });
    if let Some(session) = &issued.session_id {
        printed["session_id"] = session.as_str().into();
    }
    if let Some(operation) = outcome {
        printed["status"] = format!(
            "the outcome is on twilio.delivery.v1 as operation_id {operation}-<command_id>"
        )
        .into();
    }
    println!("{printed}");
    Ok(())
}

/// `sictl dlq replay`: fails when an operation asked for is not on the DLQ.
async fn dlq(cli: &Cli, command: &DlqCommand) -> anyhow::Result<ExitCode> {
    let DlqCommand::Replay {
        operation_ids,
        all,
        dry_run,
        timeout,
    } = command;
    let selection = if *all {
        sictl::dlq::Selection::All
    } else {
        sictl::dlq::Selection::Ids(operation_ids.iter().cloned().collect())
    };
    let options = sictl::dlq::ReplayOptions {
        selection,
        dry_run: *dry_run,
        timeout: *timeout,
    };
    let report = sictl::dlq::replay(&cli.kafka, &cli.codec()?, &options)
        .await
        .context("dlq replay")?;
    for replayed in &report.replayed {
        println!("{}", serde_json::to_string(replayed)?);
    }
    let verb = if report.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    eprintln!(
        "{verb} {} of {} dead letters",
        report.replayed.len(),
        report.read
    );
    if report.missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("sictl: not on the DLQ: {}", report.missing.join(", "));
    Ok(ExitCode::FAILURE)
}

/// `sictl topics apply [--dry-run]`.
async fn topics_apply(cli: &Cli, dry_run: bool) -> anyhow::Result<()> {
    let topics = cli.topics()?;
    let admin = sictl::topics::admin(&cli.kafka)?;
    let plan = sictl::topics::plan(&admin, &topics, Duration::from_secs(15)).await?;
    for warning in &plan.warnings {
        println!("warning     {warning}");
    }
    for change in &plan.changes {
        println!("{change}");
    }
    if plan.changes.is_empty() {
        println!("no changes ({} topics up to date)", plan.unchanged.len());
    } else if dry_run {
        println!(
            "{} changes planned (dry run: nothing applied)",
            plan.changes.len()
        );
    } else {
        sictl::topics::apply(&admin, &plan, Duration::from_secs(60)).await?;
        println!("{} changes applied", plan.changes.len());
    }
    Ok(())
}

/// `sictl schemas register|check`: `check` fails on an incompatible change.
async fn schemas(cli: &Cli, command: &SchemasCommand) -> anyhow::Result<ExitCode> {
    let locals = sictl::schemas::load(&cli.topics()?, &cli.schemas_dir())?;
    let registry = Registry::new(cli.registry.config())?;
    match command {
        SchemasCommand::Register => {
            for r in sictl::schemas::register(&registry, &locals).await? {
                let state = if r.unchanged {
                    "unchanged"
                } else {
                    "registered"
                };
                println!("{state:<11} {} id={}", r.subject, r.id);
            }
        }
        SchemasCommand::Check => {
            let mut failed = false;
            for (subject, verdict) in sictl::schemas::check(&registry, &locals).await? {
                match verdict {
                    Verdict::New => println!("new         {subject}"),
                    Verdict::Unchanged => println!("unchanged   {subject}"),
                    Verdict::Compatible => println!("compatible  {subject}"),
                    Verdict::Incompatible(reasons) => {
                        failed = true;
                        println!("INCOMPATIBLE {subject}");
                        for reason in reasons {
                            println!("  {reason}");
                        }
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
