//! `sictl segment`: how a text would be sent — encoding, segments and the parts,
//! computed by the segment processor's own code and settings (`SEGMENT_…`).
//!
//! One text per call (an argument or standard input), or with `--jsonl` a batch:
//! one JSON object per line on standard input, one JSON line per input line on
//! standard output (see [`BatchInput`]).

use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use si_schemas::records::{Channel, MediaRef, SegmentationHints};
use si_segment::{Plan, Response, SegmentArgs, SegmentConfig, Timing};

/// The channels text can be sent on.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextChannel {
    /// SMS (GSM-7/UCS-2 segments).
    Sms,
    /// WhatsApp (24-hour window, templates).
    Whatsapp,
    /// A Conversations chat (SDK) participant.
    Chat,
}

impl From<TextChannel> for Channel {
    fn from(channel: TextChannel) -> Self {
        match channel {
            TextChannel::Sms => Self::Sms,
            TextChannel::Whatsapp => Self::Whatsapp,
            TextChannel::Chat => Self::Chat,
        }
    }
}

/// Arguments of `sictl segment`.
#[derive(Debug, Clone, Args)]
pub struct SegmentCommand {
    /// The text, kept exactly (the plan says what the pipeline trims); `-` or
    /// nothing reads standard input.
    #[arg(conflicts_with = "jsonl")]
    pub text: Option<String>,
    /// Batch: read one JSON object per line on standard input (`{"text": "…",
    /// "channel": "sms"}`, optional `id`, `locale`, `max_parts`,
    /// `allow_truncation`, `keep_paragraphs`, `media`, `last_inbound_ago`), write
    /// one JSON line per input line: the plan (as `--json`), or `{"error": …}`.
    /// The flags give the defaults.
    #[arg(long)]
    pub jsonl: bool,
    /// The recipient's channel.
    #[arg(long, value_enum, default_value_t = TextChannel::Sms)]
    pub channel: TextChannel,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Locale of the text (BCP 47), for the truncation marker.
    #[arg(long)]
    pub locale: Option<String>,
    /// Cognition hint: at most this many parts.
    #[arg(long)]
    pub hint_max_parts: Option<i32>,
    /// Cognition hint: whether the text may be truncated to the budget.
    #[arg(long)]
    pub hint_allow_truncation: Option<bool>,
    /// Cognition hint: prefer paragraph breaks.
    #[arg(long)]
    pub hint_keep_paragraphs: Option<bool>,
    /// A media URL to attach (repeatable).
    #[arg(long = "media")]
    pub media: Vec<String>,
    /// WhatsApp: time since the user's last inbound message, e.g. `25h` (default: just now).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub last_inbound_ago: Duration,
    #[command(flatten)]
    pub segment: SegmentArgs,
}

/// One line of `sictl segment --jsonl` input. Absent fields take the value of
/// the command's flags; unknown fields are refused (a typo would otherwise
/// silently plan something else).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchInput {
    /// Echoed in the output line, to match answers to questions.
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    /// The response text, exactly as cognition would send it.
    pub text: String,
    /// `sms`, `whatsapp` or `chat`.
    #[serde(default)]
    pub channel: Option<TextChannel>,
    /// Locale of the text (BCP 47).
    #[serde(default)]
    pub locale: Option<String>,
    /// Cognition hint: at most this many parts.
    #[serde(default)]
    pub max_parts: Option<i32>,
    /// Cognition hint: whether the text may be truncated to the budget.
    #[serde(default)]
    pub allow_truncation: Option<bool>,
    /// Cognition hint: prefer paragraph breaks.
    #[serde(default)]
    pub keep_paragraphs: Option<bool>,
    /// Media URLs to attach.
    #[serde(default)]
    pub media: Option<Vec<String>>,
    /// WhatsApp: time since the user's last inbound message (`25h`).
    #[serde(default)]
    pub last_inbound_ago: Option<String>,
}

/// One line of `sictl segment --jsonl` output.
#[derive(Debug, Serialize)]
struct BatchOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<serde_json::Value>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Everything one plan depends on.
struct Request {
    text: String,
    channel: TextChannel,
    locale: Option<String>,
    hints: SegmentationHints,
    media: Vec<String>,
    last_inbound_ago: Duration,
}

impl Request {
    fn plan(&self, config: &SegmentConfig, now_ms: i64) -> anyhow::Result<Plan> {
        let media: Vec<MediaRef> = self
            .media
            .iter()
            .map(|url| MediaRef {
                url: Some(url.clone()),
                ..MediaRef::default()
            })
            .collect();
        let response = Response {
            text: &self.text,
            media: &media,
            channel: self.channel.into(),
            locale: self.locale.as_deref(),
            hints: Some(&self.hints),
            // As a Programmable Messaging send (Conversations would put each
            // media item in a part of its own).
            conversations: false,
        };
        let ago_ms = i64::try_from(self.last_inbound_ago.as_millis())?;
        let timing = Timing {
            now_ms,
            last_inbound_ms: Some(now_ms - ago_ms),
        };
        Ok(si_segment::plan(&response, timing, config)?)
    }
}

impl SegmentCommand {
    /// Plans the text (or, with `--jsonl`, every line of `input`) and prints
    /// the plan to `out`.
    ///
    /// # Errors
    /// A bad setting, an unreadable input, a text that cannot be planned; in
    /// batch mode, after all lines are answered, when any line failed.
    pub fn run(&self, out: &mut impl Write) -> anyhow::Result<()> {
        self.run_with(std::io::stdin().lock(), out)
    }

    /// [`Self::run`] with `input` in place of standard input.
    ///
    /// # Errors
    /// As [`Self::run`].
    pub fn run_with(&self, mut input: impl BufRead, out: &mut impl Write) -> anyhow::Result<()> {
        let config = self.segment.config()?;
        let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
        if self.jsonl {
            return self.run_batch(input, out, &config, now_ms);
        }
        let text = match self.text.as_deref() {
            Some(text) if text != "-" => text.to_owned(),
            _ => {
                let mut text = String::new();
                input
                    .read_to_string(&mut text)
                    .context("read standard input")?;
                text
            }
        };
        let plan = self.request(text).plan(&config, now_ms)?;
        if self.json {
            serde_json::to_writer_pretty(&mut *out, &plan)?;
            writeln!(out)?;
        } else {
            print_plan(&plan, out)?;
        }
        Ok(())
    }

    /// The request of the single-text mode: everything from the flags.
    fn request(&self, text: String) -> Request {
        Request {
            text,
            channel: self.channel,
            locale: self.locale.clone(),
            hints: SegmentationHints {
                max_parts: self.hint_max_parts,
                keep_paragraphs: self.hint_keep_paragraphs,
                allow_truncation: self.hint_allow_truncation,
                ..SegmentationHints::default()
            },
            media: self.media.clone(),
            last_inbound_ago: self.last_inbound_ago,
        }
    }

    /// A batch line's request: its fields over the flags.
    fn batch_request(&self, line: BatchInput) -> anyhow::Result<Request> {
        let defaults = self.request(String::new());
        let last_inbound_ago = match line.last_inbound_ago.as_deref() {
            Some(ago) => humantime::parse_duration(ago)
                .with_context(|| format!("last_inbound_ago {ago:?}"))?,
            None => defaults.last_inbound_ago,
        };
        Ok(Request {
            text: line.text,
            channel: line.channel.unwrap_or(defaults.channel),
            locale: line.locale.or(defaults.locale),
            hints: SegmentationHints {
                max_parts: line.max_parts.or(defaults.hints.max_parts),
                keep_paragraphs: line.keep_paragraphs.or(defaults.hints.keep_paragraphs),
                allow_truncation: line.allow_truncation.or(defaults.hints.allow_truncation),
                ..defaults.hints
            },
            media: line.media.unwrap_or(defaults.media),
            last_inbound_ago,
        })
    }

    fn run_batch(
        &self,
        input: impl BufRead,
        out: &mut impl Write,
        config: &SegmentConfig,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let (mut lines, mut failed) = (0_usize, 0_usize);
        for (number, line) in input.lines().enumerate() {
            let line = line.context("read standard input")?;
            if line.trim().is_empty() {
                continue;
            }
            lines += 1;
            let output = match serde_json::from_str::<BatchInput>(&line) {
                Err(e) => BatchOutput {
                    id: None,
                    plan: None,
                    error: Some(format!("line {}: {e}", number + 1)),
                },
                Ok(input) => {
                    let id = input.id.clone();
                    match self
                        .batch_request(input)
                        .and_then(|request| request.plan(config, now_ms))
                    {
                        Ok(plan) => BatchOutput {
                            id,
                            plan: Some(plan),
                            error: None,
                        },
                        Err(e) => BatchOutput {
                            id,
                            plan: None,
                            error: Some(format!("line {}: {e:#}", number + 1)),
                        },
                    }
                }
            };
            failed += usize::from(output.error.is_some());
            serde_json::to_writer(&mut *out, &output)?;
            writeln!(out)?;
        }
        out.flush()?;
        if failed > 0 {
            bail!("{failed} of {lines} lines could not be planned (see their \"error\")");
        }
        Ok(())
    }
}

fn print_plan(plan: &Plan, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "channel   {}", plan.channel)?;
    if plan.trimmed.any() {
        writeln!(
            out,
            "trimmed   {} leading and {} trailing whitespace characters: the pipeline does not send them",
            plan.trimmed.leading, plan.trimmed.trailing
        )?;
    }
    if let Some(encoding) = plan.encoding {
        let smart = if plan.smart_encoded {
            " (after look-alike replacement)"
        } else {
            ""
        };
        writeln!(out, "encoding  {encoding}{smart}")?;
    }
    if let Some(total) = plan.total_segments {
        // What Twilio bills: every part is a message of its own.
        let whole = plan
            .text_segments
            .map_or_else(String::new, |s| format!(" (the text as one message: {s})"));
        writeln!(out, "segments  {total} billed{whole}")?;
    }
    let mut notes = Vec::new();
    if plan.truncated {
        notes.push("truncated");
    }
    if plan.over_budget {
        notes.push("over budget");
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    writeln!(out, "parts     {}{notes}", plan.parts.len())?;
    for part in &plan.parts {
        let mut facts = Vec::new();
        if let (Some(encoding), Some(segments)) = (part.encoding, part.segments) {
            facts.push(format!(
                "{encoding}, {segments} segment{}",
                if segments == 1 { "" } else { "s" }
            ));
        }
        if let Some(body) = &part.body {
            facts.push(format!("{} characters", body.encode_utf16().count()));
        }
        if !part.media_urls.is_empty() {
            facts.push(format!("{} media", part.media_urls.len()));
        }
        if let Some(sid) = &part.content_sid {
            facts.push(format!("template {sid}"));
        }
        if let Some(reason) = &part.template_reason {
            facts.push(reason.clone());
        }
        writeln!(
            out,
            "--- part {}/{}: {}",
            part.index + 1,
            part.count,
            facts.join(", ")
        )?;
        if let Some(body) = &part.body {
            writeln!(out, "{body}")?;
        }
        for url in &part.media_urls {
            writeln!(out, "[media] {url}")?;
        }
        if let Some(variables) = &part.content_variables_json {
            writeln!(out, "[variables] {variables}")?;
        }
    }
    for warning in &plan.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        segment: SegmentCommand,
    }

    fn command(args: &[&str]) -> SegmentCommand {
        Cli::try_parse_from(std::iter::once("sictl").chain(args.iter().copied()))
            .expect("args")
            .segment
    }

    fn run(args: &[&str]) -> String {
        let mut out = Vec::new();
        command(args)
            .run_with(std::io::empty(), &mut out)
            .expect("runs");
        String::from_utf8(out).expect("UTF-8")
    }

    fn batch(args: &[&str], input: &str) -> (Vec<serde_json::Value>, anyhow::Result<()>) {
        let mut out = Vec::new();
        let result = command(args).run_with(input.as_bytes(), &mut out);
        let lines = String::from_utf8(out)
            .expect("UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        (lines, result)
    }

    #[test]
    fn prints_encoding_segments_and_parts() {
        let out = run(&["--channel", "sms", "It’s “fine” €"]);
        assert_eq!(
            out,
            "channel   sms\nencoding  GSM-7 (after look-alike replacement)\nsegments  1 billed (the text as one message: 1)\n\
             parts     1\n--- part 1/1: GSM-7, 1 segment, 13 characters\nIt's \"fine\" €\n"
        );
    }

    #[test]
    fn json_and_whatsapp_template() {
        let out = run(&[
            "--channel",
            "whatsapp",
            "--json",
            "--last-inbound-ago",
            "25h",
            "--whatsapp-template-sid",
            "HX00000000000000000000000000000001",
            "hello",
        ]);
        let plan: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(
            plan["parts"][0]["template_reason"],
            "WHATSAPP_WINDOW_CLOSED"
        );
        assert_eq!(plan["parts"][0]["body"], serde_json::Value::Null);
    }

    #[test]
    fn says_what_the_pipeline_trims() {
        let out = run(&["--channel", "sms", "  \tHi there \n"]);
        assert!(
            out.starts_with(
                "channel   sms\ntrimmed   3 leading and 2 trailing whitespace characters: the pipeline does not send them\n"
            ),
            "{out}"
        );
        assert!(out.ends_with("characters\nHi there\n"), "{out}");
        assert!(!run(&["Hi"]).contains("trimmed"));
        let json: serde_json::Value = serde_json::from_str(&run(&["--json", " Hi"])).expect("JSON");
        assert_eq!(
            json["trimmed"],
            serde_json::json!({"leading": 1, "trailing": 0})
        );
        assert_eq!(json["normalized_text"], "Hi");
    }

    #[test]
    fn a_crlf_at_the_boundary_is_billed_as_twilio_does() {
        let text = format!("{}\r\n{}", "a".repeat(152), "a".repeat(152));
        let json: serde_json::Value = serde_json::from_str(&run(&["--json", &text])).expect("JSON");
        assert_eq!(json["text_segments"], 2);
    }

    #[test]
    fn jsonl_answers_every_line_in_order() {
        let long = "word ".repeat(80);
        let input = format!(
            "{}\n\n{}\n{}\n{}\n",
            serde_json::json!({"id": 1, "text": "Hello", "channel": "sms"}),
            serde_json::json!({"id": "b", "text": long, "channel": "sms"}),
            serde_json::json!({"text": "😀 ok", "channel": "whatsapp"}),
            serde_json::json!({"id": 4, "text": " hi ", "max_parts": 1, "allow_truncation": true}),
        );
        let (lines, result) = batch(&["--jsonl"], &input);
        result.expect("every line planned");
        assert_eq!(lines.len(), 4, "one line per input (the blank one skipped)");
        assert_eq!(lines[0]["id"], 1);
        assert_eq!(lines[0]["total_segments"], 1);
        assert_eq!(lines[0]["parts"][0]["body"], "Hello");
        assert_eq!(lines[1]["id"], "b");
        assert_eq!(lines[1]["text_segments"], 3);
        assert_eq!(lines[1]["total_segments"], 3);
        // Up to 10 segments go as one concatenated message.
        assert_eq!(lines[1]["parts"].as_array().map(Vec::len), Some(1));
        assert_eq!(lines[2].get("id"), None);
        assert_eq!(lines[2]["channel"], "whatsapp");
        assert_eq!(lines[2]["total_segments"], serde_json::Value::Null);
        assert_eq!(
            lines[3]["trimmed"],
            serde_json::json!({"leading": 1, "trailing": 1})
        );
    }

    #[test]
    fn jsonl_reports_bad_lines_and_fails_at_the_end() {
        let input = "{\"text\": \"a\", \"chanel\": \"sms\"}\nnot json\n{\"id\": 3, \"text\": \"  \"}\n{\"text\": \"ok\"}\n";
        let (lines, result) = batch(&["--jsonl", "--channel", "chat"], input);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("chanel")),
            "{}",
            lines[0]
        );
        assert!(
            lines[1]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("line 2:"))
        );
        assert_eq!(lines[2]["id"], 3);
        assert!(
            lines[2]["error"]
                .as_str()
                .is_some_and(|e| e.contains("nothing to send")),
            "{}",
            lines[2]
        );
        assert_eq!(lines[3]["channel"], "chat", "the flag is the default");
        assert_eq!(lines[3].get("error"), None);
        let err = result.expect_err("3 lines failed");
        assert!(err.to_string().contains("3 of 4 lines"), "{err}");
    }

    #[test]
    fn jsonl_and_a_text_argument_conflict() {
        let parsed = Cli::try_parse_from(["sictl", "--jsonl", "text"]);
        assert!(parsed.is_err());
    }
}
