//! `sictl segment --jsonl`: one JSON object per line in, one plan per line out.

use clap::Parser;
use sictl::segment::SegmentCommand;

use crate::engine::Target;

const WORDS: &[&str] = &[
    "\n",
    "{\"text\":\"Hello\"}",
    "{\"id\":1,\"text\":\"x\",\"channel\":\"whatsapp\"}",
    "\"channel\":\"chat\"",
    "\"channel\":\"voice\"",
    "\"locale\":\"es\"",
    "\"max_parts\":0",
    "\"max_parts\":-1",
    "\"max_parts\":2147483648",
    "\"allow_truncation\":true",
    "\"keep_paragraphs\":false",
    "\"media\":[\"https://e.com/1.jpg\"]",
    "\"media\":[\"\"]",
    "\"last_inbound_ago\":\"25h\"",
    "\"last_inbound_ago\":\"99999999999999d\"",
    "\"unknown\":1",
    "\\u00e9",
    "\\r\\n",
    "\\ud83d\\ude00",
    "null",
    ",",
    ":",
    "{",
    "}",
];

/// The batch mode of `sictl segment`.
pub const SEGMENT_JSONL: Target = Target {
    name: "sictl_segment_jsonl",
    about: "every non-blank line is answered with one JSON line, in order, with its error or plan; failure exactly when a line failed",
    run: jsonl,
    dictionary: WORDS,
    generate: None,
    max_len: 8192,
};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    segment: SegmentCommand,
}

fn jsonl(data: &[u8]) {
    let cli = Cli::try_parse_from(["segment", "--jsonl"]).expect("the flags parse");
    let mut out = Vec::new();
    let result = cli.segment.run_with(data, &mut out);
    let Ok(input) = std::str::from_utf8(data) else {
        return; // an unreadable line ends the batch with an error
    };
    let output = String::from_utf8(out).expect("the output is UTF-8");
    let answers: Vec<serde_json::Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect();
    let questions = input.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(answers.len(), questions, "one answer per non-blank line");
    let failed = answers
        .iter()
        .filter(|a| a.get("error").is_some_and(|e| !e.is_null()))
        .count();
    assert_eq!(
        result.is_err(),
        failed > 0,
        "exit status and errors disagree"
    );
}
