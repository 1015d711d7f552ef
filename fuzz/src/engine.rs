//! The driver: seeds, mutations, generated inputs, caught panics.
//!
//! It is a blind mutational fuzzer (no coverage feedback: that needs
//! instrumentation stable Rust does not offer without cargo-afl or
//! cargo-fuzz), made effective by structure where it matters: every target
//! starts from a seed corpus of real-looking inputs, mutations insert the
//! tokens of the target's format and Unicode that is known to be tricky, and
//! the Avro target generates valid datums of every schema before mutating
//! them. Mutated inputs are kept in a bounded pool and mutated again, so
//! inputs drift several steps away from the seeds.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::rng::Rng;

/// A fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name: the corpus directory and the command-line name.
    pub name: &'static str,
    /// What it checks, in one line.
    pub about: &'static str,
    /// The function under test: panics when an invariant is broken.
    pub run: fn(&[u8]),
    /// Tokens of the input format the mutator inserts.
    pub dictionary: &'static [&'static str],
    /// Generates a fresh well-formed input, when the target has a generator.
    pub generate: Option<fn(&mut Rng) -> Vec<u8>>,
    /// Inputs are cut to this many bytes.
    pub max_len: usize,
}

/// How long to fuzz.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// This many executions.
    Executions(u64),
    /// For this long.
    Time(Duration),
}

/// An input that broke an invariant.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message with its location.
    pub message: String,
    /// Where the input was written, if it was.
    pub saved: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs run.
    pub executions: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Inputs that panicked (every one, the first 20 kept).
    pub crashes: u64,
    /// The first crashing inputs, one per distinct panic location.
    pub distinct: Vec<Crash>,
    /// Seeds loaded.
    pub seeds: usize,
    /// The slowest single execution.
    pub slowest: Duration,
    /// Where the slowest input was written, when it took over a second.
    pub slowest_saved: Option<PathBuf>,
}

impl Report {
    /// One line for logs: target, executions, time, rate, crashes.
    #[must_use]
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.executions as f64 / secs
        } else {
            0.0
        };
        let mut line = format!(
            "{:<22} {:>10} executions in {:>7.1} s ({:>8.0}/s), {} seeds, slowest {:.1} ms, {} crashes",
            self.target,
            self.executions,
            secs,
            rate,
            self.seeds,
            self.slowest.as_secs_f64() * 1000.0,
            self.crashes
        );
        if let Some(path) = &self.slowest_saved {
            let _ = write!(line, "\n  slowest input: {}", path.display());
        }
        for crash in &self.distinct {
            let _ = write!(line, "\n  {}", crash.message.replace('\n', "\n    "));
            if let Some(path) = &crash.saved {
                let _ = write!(line, "\n    input: {}", path.display());
            } else {
                let _ = write!(line, "\n    input: {}", escape(&crash.input));
            }
        }
        line
    }
}

/// Printable form of an input (Rust byte-string escapes).
#[must_use]
pub fn escape(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside a target are recorded, not printed; every other panic is
/// reported by the previous hook as usual.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                CAPTURED.with(|c| *c.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `target` on one input; `Err` with the panic message when it panicked.
///
/// # Errors
/// The panic message when the target panicked.
pub fn execute(target: &Target, input: &[u8]) -> Result<(), String> {
    install_hook();
    CAPTURING.with(|c| c.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    CAPTURING.with(|c| c.set(false));
    outcome.map_err(|_| {
        CAPTURED
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| "panic without a message".to_owned())
    })
}

/// The seed inputs of a target: every file in `root/<name>/`, by name.
#[must_use]
pub fn load_corpus(root: &Path, name: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(root.join(name)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Text that is known to be tricky: every mutator inserts it.
const UNICODE: &[&str] = &[
    "\u{0}",
    "\r\n",
    "\r",
    "\n\n",
    "\t",
    "\u{A0}",
    "\u{200B}",
    "\u{200D}",
    "\u{FEFF}",
    "\u{202E}",
    "\u{2028}",
    "\u{3000}",
    "\u{FFFD}",
    "\u{301}",
    "e\u{301}\u{302}\u{303}",
    "€",
    "{",
    "[~]",
    "\\",
    "^",
    "|",
    "@",
    "é",
    "ç",
    "ß",
    "Δ",
    "Ω",
    "“",
    "’",
    "…",
    "—",
    "«",
    "漢字",
    "한",
    "\u{1100}\u{1161}\u{11A8}",
    "नमस्ते",
    "क्‍ष",
    "مرحبا",
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🇫🇷",
    "🇫",
    "\u{E0067}",
    "\u{10FFFF}",
    "\u{1F3FB}",
    "https://example.com/a?b=1&c=2",
    "www.example.org",
];

/// Byte patterns interesting as lengths, counts and indices (Avro zig-zag
/// varints among them) and as UTF-8 edge cases.
const BYTES: &[&[u8]] = &[
    &[0],
    &[1],
    &[2],
    &[0x7F],
    &[0x80],
    &[0xFF],
    &[0x80, 0x01],
    &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
    &[0xFE, 0xFF, 0xFF, 0xFF, 0x0F],
    &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
    &[
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
    ],
    &[0xC0, 0x80],
    &[0xED, 0xA0, 0x80],
    &[0xF4, 0x90, 0x80, 0x80],
    &[0xE2, 0x82],
    &[0x00, 0x00, 0x00, 0x00, 0x01],
];

/// A fuzzing session of one target.
#[derive(Debug)]
pub struct Fuzzer {
    target: Target,
    seeds: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    rng: Rng,
    artifacts: Option<PathBuf>,
}

const POOL: usize = 512;

/// An execution slower than this is kept (as `slow-…`) for a look.
const SLOW: Duration = Duration::from_secs(1);

impl Fuzzer {
    /// A session over `seeds`, deterministic for `seed`; crashing inputs are
    /// written under `artifacts/<target>/` when given.
    #[must_use]
    pub fn new(target: Target, seeds: Vec<Vec<u8>>, seed: u64, artifacts: Option<PathBuf>) -> Self {
        Self {
            target,
            seeds,
            pool: Vec::new(),
            rng: Rng::new(seed),
            artifacts,
        }
    }

    /// Runs until the budget is spent. Every seed runs first, unchanged.
    pub fn run(&mut self, budget: Budget) -> Report {
        let started = Instant::now();
        let mut report = Report {
            target: self.target.name,
            executions: 0,
            elapsed: Duration::ZERO,
            crashes: 0,
            distinct: Vec::new(),
            seeds: self.seeds.len(),
            slowest: Duration::ZERO,
            slowest_saved: None,
        };
        let mut next_seed = 0;
        loop {
            let done = match budget {
                Budget::Executions(n) => report.executions >= n,
                Budget::Time(limit) => {
                    report.executions.is_multiple_of(64) && started.elapsed() >= limit
                }
            };
            if done {
                break;
            }
            let input = if next_seed < self.seeds.len() {
                next_seed += 1;
                self.seeds[next_seed - 1].clone()
            } else {
                self.next_input()
            };
            let began = Instant::now();
            let outcome = execute(&self.target, &input);
            let took = began.elapsed();
            if took > report.slowest {
                report.slowest = took;
                if took > SLOW {
                    report.slowest_saved = self.save("slow", &input);
                }
            }
            report.executions += 1;
            if let Err(message) = outcome {
                report.crashes += 1;
                let location = message.lines().next().unwrap_or_default().to_owned();
                let known = report
                    .distinct
                    .iter()
                    .any(|c| c.message.lines().next() == Some(location.as_str()));
                if !known && report.distinct.len() < 20 {
                    let saved = self.save("crash", &input);
                    report.distinct.push(Crash {
                        input,
                        message,
                        saved,
                    });
                }
            } else if self.rng.one_in(4) {
                self.keep(input);
            }
        }
        report.elapsed = started.elapsed();
        report
    }

    fn save(&self, kind: &str, input: &[u8]) -> Option<PathBuf> {
        let dir = self.artifacts.as_ref()?.join(self.target.name);
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join(format!("{kind}-{:016x}", fnv(input)));
        std::fs::write(&path, input).ok()?;
        Some(path)
    }

    fn keep(&mut self, input: Vec<u8>) {
        if self.pool.len() < POOL {
            self.pool.push(input);
        } else {
            let at = self.rng.below(POOL);
            self.pool[at] = input;
        }
    }

    /// A new input: random, generated, or a mutation of a seed, a generated
    /// input or an earlier input.
    pub fn next_input(&mut self) -> Vec<u8> {
        let max = self.target.max_len;
        let base = match self.rng.below(16) {
            0 => {
                let len = self.rng.len(max);
                let mut out: Vec<u8> = (0..len).map(|_| self.rng.byte()).collect();
                if self.rng.one_in(2) {
                    out.iter_mut().for_each(|b| *b = 0x20 + *b % 0x5F);
                }
                return out;
            }
            1..=3 if self.target.generate.is_some() => {
                let generate = self.target.generate.unwrap_or(|_| Vec::new());
                let fresh = generate(&mut self.rng);
                if self.rng.one_in(3) {
                    return fresh;
                }
                fresh
            }
            4..=9 if !self.pool.is_empty() => self.rng.pick(&self.pool).clone(),
            _ if !self.seeds.is_empty() => self.rng.pick(&self.seeds).clone(),
            _ => Vec::new(),
        };
        let mut input = base;
        let rounds = 1 + self.rng.len(8);
        for _ in 0..rounds {
            self.mutate(&mut input);
        }
        input.truncate(max);
        input
    }

    fn other(&mut self) -> Vec<u8> {
        if !self.pool.is_empty() && self.rng.one_in(2) {
            self.rng.pick(&self.pool).clone()
        } else if !self.seeds.is_empty() {
            self.rng.pick(&self.seeds).clone()
        } else {
            Vec::new()
        }
    }

    fn mutate(&mut self, input: &mut Vec<u8>) {
        let len = input.len();
        let at = self.rng.below(len + 1);
        match self.rng.below(15) {
            0 if len > 0 => {
                let i = self.rng.below(len);
                input[i] ^= 1 << self.rng.below(8);
            }
            1 if len > 0 => {
                let i = self.rng.below(len);
                input[i] = self.rng.byte();
            }
            2 => {
                let n = 1 + self.rng.len(16);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.byte()).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let end = (at + 1 + self.rng.len(32)).min(len);
                input.drain(at.min(len - 1)..end);
            }
            4 if len > 0 => {
                let start = self.rng.below(len);
                let end = (start + 1 + self.rng.len(64)).min(len);
                let copy = input[start..end].to_vec();
                input.splice(at..at, copy);
            }
            5 | 6 if !self.target.dictionary.is_empty() => {
                let token = self.rng.pick(self.target.dictionary).as_bytes().to_vec();
                if self.rng.one_in(2) || len == 0 {
                    input.splice(at..at, token);
                } else {
                    let end = (at + self.rng.len(16)).min(len);
                    input.splice(at.min(end)..end, token);
                }
            }
            7 => {
                let text = self.rng.pick(UNICODE).as_bytes().to_vec();
                input.splice(at..at, text);
            }
            8 => {
                let bytes = self.rng.pick(BYTES).to_vec();
                if self.rng.one_in(2) || at + bytes.len() > len {
                    input.splice(at..at, bytes);
                } else {
                    input[at..at + bytes.len()].copy_from_slice(&bytes);
                }
            }
            9 => {
                let other = self.other();
                let from = self.rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            10 if len > 0 => input.truncate(self.rng.below(len)),
            11 if len > 1 => {
                let (i, j) = (self.rng.below(len), self.rng.below(len));
                input.swap(i, j);
            }
            12 if len > 0 => {
                let i = self.rng.below(len);
                input[i] = input[i].wrapping_add(if self.rng.one_in(2) { 1 } else { 255 });
            }
            13 => {
                // A long run: texts past one segment, one message, one part budget.
                let unit: Vec<u8> = if self.rng.one_in(2) {
                    self.rng.pick(UNICODE).as_bytes().to_vec()
                } else {
                    vec![b'a' + self.rng.byte() % 26]
                };
                let times = 1 + self.rng.below(400);
                let run: Vec<u8> = unit.repeat(times);
                input.splice(at..at, run);
            }
            _ => {
                let text = self.rng.pick(UNICODE).as_bytes().to_vec();
                input.extend_from_slice(&text);
            }
        }
    }
}

/// FNV-1a, to name saved inputs.
#[must_use]
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}
