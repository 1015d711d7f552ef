//! `si-bench`: the pipeline benchmark (`dev/bench` builds and runs it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use si_bench::accounting::{Ledger, seq_in};
use si_bench::commits::Commits;
use si_bench::load::{self, Plan, Sent, now_ms};
use si_bench::procfs::{Window, ticks_per_second};
use si_bench::report::{RunResult, Timeline, markdown, warmup_line};
use si_bench::topics::{Hop, stamps};
use si_schemas::records::Channel;
use si_testkit::{StageProcess, TestEnv, free_port, repo_root};
use twilio_sandbox::{SandboxClient, Webhooks};

const AUTH_TOKEN: &str = "local-dev-auth-token";
const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// Twilio's default throughput of a short code (messages per second): the
/// sandbox enforces it per sender, as Twilio would.
const SHORT_CODE_RATE: u32 = 100;

/// Every stage `dev/run` starts, each a process of its own.
const STAGES: [&str; 8] = [
    "si-ingress",
    "si-normalize",
    "si-consent",
    "si-segment",
    "si-egress",
    "si-echo-responder",
    "si-lifecycle",
    "si-voice-link",
];

/// The pipeline benchmark: signed inbound SMS at fixed arrival rates through
/// every stage to the Twilio sandbox; prints markdown tables.
#[derive(Debug, Parser)]
#[command(name = "si-bench", version)]
struct Args {
    /// Arrival rates, messages per second, run one after the other.
    #[arg(long, value_delimiter = ',', default_value = "20,100,300,1000")]
    rates: Vec<f64>,
    /// How long each rate sends, e.g. `20s`.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Before the measured rates, send this long at `--warmup-rate` and wait
    /// for the replies, reported on one line but not in the tables: a broker
    /// started moments before (as `dev/bench` does on a fresh machine) spends
    /// its first minutes of load compiling its hot paths. `0s` for none.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Arrival rate of the warm-up, messages per second.
    #[arg(long, default_value_t = 50.0)]
    warmup_rate: f64,
    /// Distinct users, writing round-robin (pre-seeded as opted in, so no
    /// welcome: every message gets exactly one reply).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Short codes the users write to (default: one per 50 msg/s of the
    /// highest rate, so no sender comes near its 100 msg/s).
    #[arg(long)]
    short_codes: Option<usize>,
    /// Most requests to ingress open at once.
    #[arg(long, default_value_t = 1024)]
    max_outstanding: usize,
    /// How long to wait for the last replies after a rate's sends.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// How long to keep watching for duplicate replies once all arrived.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// More processes to measure, `name=pid` (the broker, the registry).
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// Where the stage binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the stages' logs go.
    #[arg(long, default_value = ".cache/bench/logs")]
    logs: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "localhost:9092"
    )]
    bootstrap_servers: String,
}

fn parse_watch(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not name=pid"))?;
    let pid = pid.parse().map_err(|_| format!("`{pid}` is not a pid"))?;
    Ok((name.to_owned(), pid))
}

/// The sandbox process, killed when dropped.
struct SandboxProcess(Child);

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pipeline {
    env: TestEnv,
    stages: Vec<StageProcess>,
    sandbox: SandboxProcess,
    sandbox_url: String,
    ingress_url: String,
}

impl Pipeline {
    fn processes(&self, watch: &[(String, u32)]) -> Vec<(String, u32)> {
        let mut all: Vec<(String, u32)> = STAGES
            .iter()
            .zip(&self.stages)
            .filter_map(|(name, stage)| stage.pid().map(|pid| ((*name).to_owned(), pid)))
            .collect();
        all.push(("si-twilio-sandbox".to_owned(), self.sandbox.0.id()));
        all.push(("si-bench (load)".to_owned(), std::process::id()));
        all.extend(watch.iter().cloned());
        all
    }

    /// Every stage's committed-transaction counters now (zero where a stage
    /// has none or does not answer).
    async fn commits(&self) -> Vec<(&'static str, Commits)> {
        let mut all = Vec::new();
        for (name, stage) in STAGES.iter().zip(&self.stages) {
            let read = |metric: &'static str, labels: &'static [&'static str]| async move {
                stage.metric_sum(metric, labels).await.unwrap_or_default()
            };
            all.push((
                *name,
                Commits {
                    transactions: read("si_transactions_total", &[r#"outcome="committed""#]).await,
                    records: read("si_transaction_records_sum", &[]).await,
                    commit_seconds: read("si_transaction_commit_seconds_sum", &[]).await,
                },
            ));
        }
        all
    }

    fn stop(mut self) {
        for stage in &mut self.stages {
            let _ = stage.terminate(Duration::from_secs(30));
        }
    }
}

fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built (cargo build --release --bins)",
        path.display()
    );
    Ok(path)
}

async fn start(args: &Args) -> anyhow::Result<Pipeline> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of si-bench")?
            .to_path_buf(),
    };
    let logs = repo_root().join(&args.logs);
    std::fs::create_dir_all(&logs)?;
    let env = TestEnv::start_named(&args.bootstrap_servers, "bench").await?;
    eprintln!(
        "si-bench: topics under prefix {} (deleted at the end), logs in {}",
        env.kafka.topic_prefix,
        logs.display()
    );
    // Opted in: the first message is no first contact and gets no welcome.
    si_testkit::throughput::opt_in_all(
        &env,
        (0..args.users).map(load::user),
        Channel::Sms,
        now_ms(),
    )
    .await?;

    let ingress_addr = format!("127.0.0.1:{}", free_port()?);
    let sandbox_addr = format!("127.0.0.1:{}", free_port()?);
    let ingress_url = format!("http://{ingress_addr}");
    let sandbox_url = format!("http://{sandbox_addr}");
    let sandbox_log = std::fs::File::create(logs.join("si-twilio-sandbox.log"))?;
    let sandbox = SandboxProcess(
        Command::new(bin(&bin_dir, "si-twilio-sandbox")?)
            .env("SANDBOX_ADDR", &sandbox_addr)
            .env("SANDBOX_CALLBACK_URL", &ingress_url)
            .env("SANDBOX_PUBLIC_URL", &ingress_url)
            .env("SANDBOX_RATE_PER_SENDER", SHORT_CODE_RATE.to_string())
            .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
            .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
            .stdin(Stdio::null())
            .stdout(sandbox_log.try_clone()?)
            .stderr(sandbox_log)
            .spawn()
            .context("starting si-twilio-sandbox")?,
    );
    // At 1,000 msg/s each of 2,000 users writes 30 messages a minute, more
    // than consent's default inbound rate limit (10 a minute) lets through;
    // its account is still kept per message. `SI_BENCH_CONSENT_RATE_LIMIT`
    // sets another (`off` measures the pipeline without the account).
    let consent_rate_limit =
        std::env::var("SI_BENCH_CONSENT_RATE_LIMIT").unwrap_or_else(|_| "120/1m".to_owned());
    // What dev/run gives every stage, without its short demo timers.
    let common: Vec<(&str, &str)> = vec![
        ("PUBLIC_BASE_URL", &ingress_url),
        ("LISTEN_ADDR", &ingress_addr),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
        ("VISITOR_ID_SECRET", "local-dev-visitor-secret"),
        ("TWILIO_API_BASE_URL", &sandbox_url),
        ("TWILIO_CONVERSATIONS_BASE_URL", &sandbox_url),
        ("VOICE_QUIET_HOURS", "off"),
        ("CONSENT_RATE_LIMIT", &consent_rate_limit),
        ("VOICE_STREAM_URL", "wss://127.0.0.1:8091/voice"),
        ("LOG_FORMAT", "text"),
    ];
    let mut stages = Vec::new();
    for name in STAGES {
        stages.push(StageProcess::spawn_at(
            &env,
            &bin(&bin_dir, name)?,
            "bench",
            &common,
            &logs.join(format!("{name}.log")),
        )?);
    }
    for stage in &mut stages {
        stage.ready(Duration::from_secs(120)).await?;
    }
    let client = SandboxClient::new(&sandbox_url);
    let until = Instant::now() + Duration::from_secs(30);
    while client.requests(Some(u64::MAX)).await.is_err() {
        if Instant::now() > until {
            bail!("the sandbox did not answer within 30 s; see its log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Pipeline {
        env,
        stages,
        sandbox,
        sandbox_url,
        ingress_url,
    })
}

/// How far the sandbox's request log has been read. The sandbox numbers a
/// request when it arrives but logs it when answered, so a later seq can be
/// listed before an earlier one: polling from the highest seq seen would skip
/// the earlier one for good. So the log is read from the highest seq below
/// which every request was seen.
#[derive(Debug, Default, Clone)]
struct Cursor {
    watermark: Option<u64>,
    /// Seqs read above the watermark.
    above: BTreeSet<u64>,
}

/// A seq missing this far below the newest is given up on (a request whose
/// answer was never logged), so the re-read stays short.
const HOLE_LIMIT: u64 = 5_000;

impl Cursor {
    /// Whether `seq` is new; moves the watermark over every seq seen in a row.
    fn take(&mut self, seq: u64) -> bool {
        if self.watermark.is_some_and(|w| seq <= w) || !self.above.insert(seq) {
            return false;
        }
        let newest = self.above.last().copied().unwrap_or(seq);
        loop {
            let next = self.watermark.map_or(1, |w| w + 1);
            if self.above.remove(&next) || newest.saturating_sub(next) > HOLE_LIMIT {
                self.watermark = Some(next);
            } else {
                break;
            }
        }
        true
    }
}

/// What the sandbox has seen of a run so far.
#[derive(Default)]
struct Seen {
    cursor: Cursor,
    replies: BTreeMap<u64, Vec<i64>>,
    refused: usize,
    other: usize,
}

impl Seen {
    async fn poll(&mut self, client: &SandboxClient, run: &str) -> anyhow::Result<()> {
        for request in client.requests(self.cursor.watermark).await? {
            if !self.cursor.take(request.seq) {
                continue;
            }
            if !request.path.ends_with("/Messages.json") {
                continue;
            }
            let body = request.params.get("Body").map_or("", String::as_str);
            match seq_in(body, run) {
                Some(seq) if (200..300).contains(&request.status) => {
                    self.replies.entry(seq).or_default().push(request.at_ms);
                }
                Some(_) => self.refused += 1,
                None => self.other += 1,
            }
        }
        Ok(())
    }
}

async fn run_rate(
    pipeline: &Pipeline,
    args: &Args,
    short_codes: usize,
    rate: f64,
    duration: Duration,
    cursor: Cursor,
) -> anyhow::Result<(RunResult, Cursor)> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let plan = Plan {
        run: run.clone(),
        rate,
        duration,
        users: args.users,
        short_codes,
        max_outstanding: args.max_outstanding,
    };
    eprintln!(
        "si-bench: {rate} msg/s for {duration:?}: {} messages from {} users to {short_codes} short codes (run {run})",
        plan.messages(),
        args.users
    );
    let client = SandboxClient::new(&pipeline.sandbox_url);
    let webhooks = Arc::new(Webhooks::new(
        &pipeline.ingress_url,
        None,
        AUTH_TOKEN,
        ACCOUNT_SID,
    ));
    let commits_before = pipeline.commits().await;
    let mut window = Window::open(&pipeline.processes(&args.watch), ticks_per_second());
    let mut seen = Seen {
        cursor,
        ..Seen::default()
    };
    let driving = {
        let plan = plan.clone();
        tokio::spawn(async move { load::drive(webhooks, &plan).await })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !driving.is_finished() {
        tick.tick().await;
        window.sample();
        seen.poll(&client, &run).await?;
    }
    let sent: Vec<Sent> = driving.await?;
    let accepted: Vec<u64> = sent
        .iter()
        .filter(|s| s.accepted())
        .map(|s| s.seq)
        .collect();
    let waiting = |seen: &Seen| {
        accepted
            .iter()
            .filter(|s| !seen.replies.contains_key(s))
            .count()
    };
    let deadline = Instant::now() + args.drain_timeout;
    while waiting(&seen) > 0 && Instant::now() < deadline {
        tick.tick().await;
        window.sample();
        seen.poll(&client, &run).await?;
    }
    let seconds = window.seconds();
    let usage = window.close();
    let commits = pipeline
        .commits()
        .await
        .into_iter()
        .zip(commits_before)
        .map(|((name, after), (_, before))| (name, after.since(before)))
        .collect();
    let settled = Instant::now() + args.settle;
    while Instant::now() < settled {
        tick.tick().await;
        seen.poll(&client, &run).await?;
    }

    let mut ledger = Ledger::default();
    for s in &sent {
        ledger.sent(s.seq, s.accepted());
    }
    for (seq, times) in &seen.replies {
        for _ in times {
            ledger.replied(*seq);
        }
    }
    let tally = ledger.tally();
    if tally.lost > 0 {
        eprintln!(
            "si-bench: {} messages without a reply, e.g. {:?}",
            tally.lost,
            ledger.lost(5)
        );
    }
    let mut timeline = Timeline {
        due: sent.iter().map(|s| (s.seq, s.due_ms)).collect(),
        answered: sent
            .iter()
            .filter(|s| s.accepted())
            .filter_map(|s| s.answered_ms.map(|a| (s.seq, a)))
            .collect(),
        replies: seen.replies.clone(),
        topics: Vec::new(),
    };
    for hop in Hop::ALL {
        timeline
            .topics
            .push((hop, stamps(&pipeline.env, hop, &run).await?));
    }
    let (hops, e2e) = timeline.hops();
    let result = RunResult {
        rate,
        tally,
        late_sends: sent.iter().filter(|s| s.lag_ms > 50).count(),
        max_lag_ms: sent.iter().map(|s| s.lag_ms).max().unwrap_or_default(),
        refused_at_twilio: seen.refused,
        other_messages: seen.other,
        topic_duplicates: timeline.topic_duplicates(),
        hops,
        e2e,
        throughput: timeline.throughput(),
        usage,
        commits,
        seconds,
    };
    Ok((result, seen.cursor))
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{model}, {cores} cores, {mem_gib} GiB; load average at the start {}",
        load.join(" ")
    )
}

async fn bench(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rates.iter().all(|r| r.is_finite() && *r > 0.0),
        "--rates: every rate must be a positive number"
    );
    anyhow::ensure!(
        args.warmup_rate.is_finite() && args.warmup_rate > 0.0,
        "--warmup-rate must be a positive number"
    );
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    let highest = args.rates.iter().copied().fold(0.0, f64::max);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let short_codes = args
        .short_codes
        .unwrap_or_else(|| (highest / 50.0).ceil() as usize)
        .max(1);
    let header = format!(
        "{} on {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        machine()
    );
    let pipeline = start(&args).await?;
    eprintln!("si-bench: every stage ready");
    let partitions = {
        let config = si_runtime::kafka::client_config(&pipeline.env.kafka, "si-bench-metadata");
        let topic = pipeline
            .env
            .kafka
            .topic(si_schemas::topics::CONVERSATION_EVENTS);
        tokio::task::spawn_blocking(move || si_runtime::kafka::topic_partitions(&config, &[topic]))
            .await?
            .map_err(anyhow::Error::msg)?[0]
    };
    let mut cursor = Cursor::default();
    let mut warmup = None;
    if !args.warmup.is_zero() {
        let (result, read) = run_rate(
            &pipeline,
            &args,
            short_codes,
            args.warmup_rate,
            args.warmup,
            cursor,
        )
        .await?;
        cursor = read;
        warmup = Some(result);
    }
    let mut results = Vec::new();
    for rate in &args.rates {
        let (result, read) =
            run_rate(&pipeline, &args, short_codes, *rate, args.duration, cursor).await?;
        cursor = read;
        results.push(result);
    }
    pipeline.stop();
    println!(
        "{header}; release build, each stage one process, {partitions} partitions per topic, {} users, {short_codes} short codes, {:?} per rate, open loop\n",
        args.users, args.duration
    );
    if let Some(w) = &warmup {
        println!("{}\n", warmup_line(w, args.warmup));
    }
    print!("{}", markdown(&results));
    let lost: usize = results
        .iter()
        .chain(&warmup)
        .map(|r| r.tally.lost + r.tally.duplicated)
        .sum();
    if lost > 0 {
        bail!("{lost} messages lost or duplicated");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Ctrl-C or SIGTERM drops the benchmark: its stages are killed, its
    // topics deleted.
    let stop = si_runtime::shutdown::shutdown_token();
    let outcome = tokio::select! {
        outcome = bench(args) => outcome,
        () = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("si-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_waits_for_a_request_logged_late() {
        let mut cursor = Cursor::default();
        assert!(cursor.take(1));
        assert!(cursor.take(3)); // 2 is still being answered
        assert_eq!(cursor.watermark, Some(1));
        assert!(!cursor.take(3), "3 again, re-read from the watermark");
        assert!(cursor.take(2));
        assert_eq!(cursor.watermark, Some(3));
        assert!(!cursor.take(2));
        // A hole far behind the newest is given up on.
        assert!(cursor.take(5));
        assert!(cursor.take(5 + HOLE_LIMIT + 1));
        assert_eq!(cursor.watermark, Some(5), "4 given up, 5 seen");
    }
}
