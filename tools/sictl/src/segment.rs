//! `sictl segment`: how a text would be sent — encoding, segments and the parts,
//! computed by the segment processor's own code and settings (`SEGMENT_…`).

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, ValueEnum};
use si_schemas::records::{Channel, MediaRef, SegmentationHints};
use si_segment::{Plan, Response, SegmentArgs, Timing};

/// The channels text can be sent on.
#[derive(Debug, Clone, Copy, ValueEnum)]
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
    /// The text; `-` or nothing reads standard input.
    pub text: Option<String>,
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

impl SegmentCommand {
    /// Plans the text and prints the plan to `out`.
    pub fn run(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let text = match self.text.as_deref() {
            Some(text) if text != "-" => text.to_owned(),
            _ => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("read standard input")?;
                text
            }
        };
        let config = self.segment.config()?;
        let media: Vec<MediaRef> = self
            .media
            .iter()
            .map(|url| MediaRef {
                url: Some(url.clone()),
                ..MediaRef::default()
            })
            .collect();
        let hints = SegmentationHints {
            max_parts: self.hint_max_parts,
            keep_paragraphs: self.hint_keep_paragraphs,
            allow_truncation: self.hint_allow_truncation,
            ..SegmentationHints::default()
        };
        let response = Response {
            text: &text,
            media: &media,
            channel: self.channel.into(),
            locale: self.locale.as_deref(),
            hints: Some(&hints),
        };
        let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
        let ago_ms = i64::try_from(self.last_inbound_ago.as_millis())?;
        let timing = Timing {
            now_ms,
            last_inbound_ms: Some(now_ms - ago_ms),
        };
        let plan = si_segment::plan(&response, timing, &config)?;
        if self.json {
            serde_json::to_writer_pretty(&mut *out, &plan)?;
            writeln!(out)?;
        } else {
            print_plan(&plan, out)?;
        }
        Ok(())
    }
}

fn print_plan(plan: &Plan, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "channel   {}", plan.channel)?;
    if let Some(encoding) = plan.encoding {
        let smart = if plan.smart_encoded {
            " (after look-alike replacement)"
        } else {
            ""
        };
        writeln!(out, "encoding  {encoding}{smart}")?;
    }
    if let Some(total) = plan.total_segments {
        let whole = plan
            .text_segments
            .map_or_else(String::new, |s| format!(" (the text as one message: {s})"));
        writeln!(out, "segments  {total}{whole}")?;
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

    fn run(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(std::iter::once("sictl").chain(args.iter().copied()))
            .expect("args");
        let mut out = Vec::new();
        cli.segment.run(&mut out).expect("runs");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn prints_encoding_segments_and_parts() {
        let out = run(&["--channel", "sms", "It’s “fine” €"]);
        assert_eq!(
            out,
            "channel   sms\nencoding  GSM-7 (after look-alike replacement)\nsegments  1 (the text as one message: 1)\n\
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
}
