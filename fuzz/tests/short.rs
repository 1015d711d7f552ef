//! The short run, part of `cargo test` (and so of CI through `dev/test`): every
//! target on its seeds, then a fixed number of mutated and generated inputs
//! (deterministic: the same inputs on every run). The long run is
//! `si-fuzz run all --seconds 600` (README, "Fuzzing").

use si_fuzz::engine::{Fuzzer, load_corpus};
use si_fuzz::{Budget, TARGETS, corpus_root, targets};

/// Inputs per target, seeds included; `FUZZ_SHORT_EXECUTIONS` overrides.
const EXECUTIONS: u64 = 2_000;

fn short(name: &str) {
    let target = targets::find(name).expect("a target");
    let seeds = load_corpus(&corpus_root(), name);
    assert!(!seeds.is_empty(), "no seed corpus for {name}");
    let n = std::env::var("FUZZ_SHORT_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EXECUTIONS);
    let report = Fuzzer::new(*target, seeds, 0x5EED, None).run(Budget::Executions(n));
    assert_eq!(report.crashes, 0, "{}", report.summary());
}

#[test]
fn every_target_has_a_test_here() {
    let here = include_str!("short.rs");
    for t in TARGETS {
        assert!(
            here.contains(&format!("short(\"{}\")", t.name)),
            "{} is not run",
            t.name
        );
    }
}

#[test]
fn ingress_form() {
    short("ingress_form");
}

#[test]
fn ingress_json() {
    short("ingress_json");
}

#[test]
fn ingress_envelope() {
    short("ingress_envelope");
}

#[test]
fn ingress_request() {
    short("ingress_request");
}

#[test]
fn signature() {
    short("signature");
}

#[test]
fn normalize_webhook() {
    short("normalize_webhook");
}

#[test]
fn avro_records() {
    short("avro_records");
}

#[test]
fn segment_plan() {
    short("segment_plan");
}

#[test]
fn segment_measure() {
    short("segment_measure");
}

#[test]
fn consent_keywords() {
    short("consent_keywords");
}

#[test]
fn sictl_segment_jsonl() {
    short("sictl_segment_jsonl");
}

/// Found by `avro_records`: 87 bytes that apache-avro's default allocation
/// limit let grow to 1.4 GB and seconds of decoding (the fix:
/// `si_schemas::codec::MAX_ALLOCATION_BYTES`).
#[test]
fn regression_endless_media_array_is_refused_at_once() {
    let input = std::fs::read(corpus_root().join("avro_records/regression-endless-media.avro"))
        .expect("the regression input");
    let target = targets::find("avro_records").expect("a target");
    let started = std::time::Instant::now();
    assert_eq!(si_fuzz::engine::execute(target, &input), Ok(()));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}
