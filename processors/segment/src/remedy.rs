//! The delivery remediation policy: what to do when a message segment wrote
//! fails later, at the carrier or the channel, by Twilio error code.
//!
//! A policy maps error codes to a list of steps, tried in order across the
//! failures of one message's chain of resends:
//!
//! ```text
//! 30001=retry:1m*3; 30003=retry:10m*2,fallback; 63016=template,fallback; *=fallback
//! ```
//!
//! - `retry:<delay>[*<n>]`: send the same message again after `delay`, `n`
//!   times (default 1);
//! - `template`: send the approved WhatsApp template instead (the answer to
//!   63016, free text outside the 24-hour window); skipped when no template is
//!   configured, the channel is not WhatsApp or the failed message already was
//!   the template;
//! - `fallback`: send the message on the user's other channel (WhatsApp to
//!   SMS); only for urgent messages (priority HIGH), skipped otherwise;
//! - `give_up`: stop.
//!
//! `*` is the rule for codes without their own (and for failures without a
//! code). A code without a rule and no `*` rule gives up. Each failure of the
//! chain with code `c` takes the next unused step of `c`'s rule (skipping the
//! steps that do not apply); when the rule has none left, the chain gives up.
//! Every chain ends after at most [`Policy::max_remediations`] decisions.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The rule for codes without their own.
pub const DEFAULT_RULE: &str = "*";

/// The policy when `REMEDIATION_POLICY` is not set.
///
/// - 30001 queue overflow, 30008 unknown error, 30022 US A2P 10DLC rate
///   limit, 63018 WhatsApp rate limit: transient, tried again later;
/// - 30003 unreachable handset: the phone may be off; later, then the other
///   channel for urgent messages;
/// - 63016 outside the WhatsApp window: the approved template;
/// - 21610 (opted out), 30004 (blocked), 30005 (unknown number), 30006
///   (landline), 30007 (carrier filtering): never sent again on that channel;
///   an urgent WhatsApp message still falls back to SMS through `*`, and the
///   consent gate has the last word on every resend.
pub const DEFAULT_POLICY: &str = "30001=retry:1m*3; 30003=retry:10m*2,fallback; \
     30008=retry:1m*2,fallback; 30022=retry:1m*3; 63016=template,fallback; 63018=retry:1m*3,fallback; \
     21610=give_up; 30004=give_up; 30007=give_up; *=fallback";

/// One step of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The same message again after the delay.
    Retry(Duration),
    /// The approved WhatsApp template instead.
    Template,
    /// The user's other channel, for urgent messages.
    Fallback,
    /// Stop.
    GiveUp,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry(delay) => write!(f, "retry:{}", humantime::format_duration(*delay)),
            Self::Template => f.write_str("template"),
            Self::Fallback => f.write_str("fallback"),
            Self::GiveUp => f.write_str("give_up"),
        }
    }
}

/// The remediation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Steps per error code (decimal) or [`DEFAULT_RULE`], retries expanded.
    rules: BTreeMap<String, Vec<Step>>,
    /// Most decisions per chain.
    pub max_remediations: u32,
}

/// What the failed message allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// Priority HIGH.
    pub urgent: bool,
    /// The user has another channel to fall back to (WhatsApp: SMS).
    pub fallback_available: bool,
    /// A template can be sent instead (WhatsApp, template configured, the
    /// failed message was not the template).
    pub template_available: bool,
}

/// A decision for one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The step to take ([`Step::GiveUp`] when nothing applies).
    pub step: Step,
    /// The rule it came from (`63016`, `*`) and how many of its steps the
    /// chain has used after this decision (skipped steps count as used).
    pub rule: Option<(String, i32)>,
    /// For people: why.
    pub reason: String,
}

impl Policy {
    /// Parses `text` (see the module docs).
    ///
    /// # Errors
    /// With the offending part.
    pub fn parse(text: &str, max_remediations: u32) -> Result<Self, String> {
        let mut rules = BTreeMap::new();
        // `off` (or nothing): no remediation; `off` passes a Helm chart,
        // which drops empty values.
        let text = if text.trim().eq_ignore_ascii_case("off") {
            ""
        } else {
            text
        };
        for rule in text.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let (code, steps) = rule
                .split_once('=')
                .ok_or_else(|| format!("remediation rule {rule:?}: expected CODE=STEP[,STEP…]"))?;
            let code = code.trim();
            if code != DEFAULT_RULE && code.parse::<u32>().is_err() {
                return Err(format!(
                    "remediation rule {rule:?}: {code:?} is neither a Twilio error code nor *"
                ));
            }
            let mut parsed = Vec::new();
            for step in steps.split(',').map(str::trim) {
                parsed.extend(
                    parse_step(step).map_err(|e| format!("remediation rule {rule:?}: {e}"))?,
                );
            }
            if parsed.is_empty() {
                return Err(format!("remediation rule {rule:?} has no steps"));
            }
            if rules.insert(code.to_owned(), parsed).is_some() {
                return Err(format!("remediation rule for {code} given twice"));
            }
        }
        Ok(Self {
            rules,
            max_remediations,
        })
    }

    /// Whether any failure can be remediated at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules
            .values()
            .all(|steps| steps.iter().all(|s| *s == Step::GiveUp))
    }

    /// The decision for a failure with `code` of a chain that already made
    /// `decisions` decisions and used `steps_used` steps per rule.
    #[must_use]
    pub fn decide(
        &self,
        code: Option<i32>,
        decisions: u32,
        steps_used: &BTreeMap<String, i32>,
        situation: Situation,
    ) -> Decision {
        let code_text = code.map_or_else(|| "no error code".to_owned(), |c| c.to_string());
        let (rule, steps) = match code
            .map(|c| c.to_string())
            .and_then(|c| self.rules.get_key_value(&c))
            .or_else(|| self.rules.get_key_value(DEFAULT_RULE))
        {
            Some((rule, steps)) => (rule.clone(), steps),
            None => {
                return Decision {
                    step: Step::GiveUp,
                    rule: None,
                    reason: format!("{code_text}: no remediation rule"),
                };
            }
        };
        if decisions >= self.max_remediations {
            return Decision {
                step: Step::GiveUp,
                rule: None,
                reason: format!(
                    "{code_text}: {} remediations already tried for this message",
                    self.max_remediations
                ),
            };
        }
        let used = usize::try_from(steps_used.get(&rule).copied().unwrap_or(0)).unwrap_or(0);
        let mut skipped = Vec::new();
        for (i, step) in steps.iter().enumerate().skip(used) {
            let why_not = match step {
                Step::Fallback if !situation.urgent => Some("fallback: not urgent"),
                Step::Fallback if !situation.fallback_available => {
                    Some("fallback: no other channel")
                }
                Step::Template if !situation.template_available => Some("template: not available"),
                _ => None,
            };
            match why_not {
                Some(why) => skipped.push(why),
                None => {
                    let mut reason = format!("{code_text}: rule {rule} step {step}");
                    if !skipped.is_empty() {
                        reason.push_str(&format!(" (skipped {})", skipped.join(", ")));
                    }
                    return Decision {
                        step: *step,
                        rule: Some((rule, i32::try_from(i + 1).unwrap_or(i32::MAX))),
                        reason,
                    };
                }
            }
        }
        let mut reason = format!("{code_text}: rule {rule} has no step left");
        if !skipped.is_empty() {
            reason.push_str(&format!(" ({})", skipped.join(", ")));
        }
        Decision {
            step: Step::GiveUp,
            rule: None,
            reason,
        }
    }
}

fn parse_step(step: &str) -> Result<Vec<Step>, String> {
    match step {
        "template" => return Ok(vec![Step::Template]),
        "fallback" => return Ok(vec![Step::Fallback]),
        "give_up" => return Ok(vec![Step::GiveUp]),
        _ => {}
    }
    let Some(retry) = step.strip_prefix("retry:") else {
        return Err(format!(
            "unknown step {step:?} (retry:<delay>[*<n>], template, fallback, give_up)"
        ));
    };
    let (delay, times) = match retry.split_once('*') {
        Some((delay, times)) => (
            delay,
            times
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .ok_or_else(|| format!("{step:?}: the repeat count must be 1 to 20"))?,
        ),
        None => (retry, 1),
    };
    let delay =
        humantime::parse_duration(delay.trim()).map_err(|e| format!("{step:?}: bad delay: {e}"))?;
    if delay.is_zero() {
        return Err(format!("{step:?}: the delay must be positive"));
    }
    Ok(vec![Step::Retry(delay); times])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const URGENT_WA: Situation = Situation {
        urgent: true,
        fallback_available: true,
        template_available: true,
    };
    const PLAIN_SMS: Situation = Situation {
        urgent: false,
        fallback_available: false,
        template_available: false,
    };

    fn used(pairs: &[(&str, i32)]) -> BTreeMap<String, i32> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn off_and_empty_are_no_policy() {
        for text in ["", " ", "off", "OFF"] {
            assert!(Policy::parse(text, 5).unwrap().is_empty(), "{text:?}");
        }
        assert!(Policy::parse("offf", 5).is_err());
    }

    #[test]
    fn the_default_policy_parses() {
        let policy = Policy::parse(DEFAULT_POLICY, 5).unwrap();
        assert!(!policy.is_empty());
        let d = policy.decide(Some(63016), 0, &BTreeMap::new(), URGENT_WA);
        assert_eq!(d.step, Step::Template);
        assert_eq!(d.rule, Some(("63016".to_owned(), 1)));
        // Rate limits are waited out, even for a message that is not urgent.
        for code in [30001, 30022, 63018] {
            let d = policy.decide(Some(code), 0, &BTreeMap::new(), URGENT_WA);
            assert_eq!(d.step, Step::Retry(Duration::from_secs(60)), "{code}");
        }
    }

    #[test]
    fn steps_are_taken_in_order_across_a_chain() {
        let policy = Policy::parse("30003=retry:10m*2,fallback", 5).unwrap();
        let ten = Step::Retry(Duration::from_secs(600));
        let d = policy.decide(Some(30003), 0, &BTreeMap::new(), URGENT_WA);
        assert_eq!(d.step, ten);
        let n = d.rule.unwrap().1;
        assert_eq!(n, 1);
        let d = policy.decide(Some(30003), 1, &used(&[("30003", n)]), URGENT_WA);
        assert_eq!(d.step, ten);
        let d = policy.decide(Some(30003), 2, &used(&[("30003", 2)]), URGENT_WA);
        assert_eq!(d.step, Step::Fallback);
        let d = policy.decide(Some(30003), 3, &used(&[("30003", 3)]), URGENT_WA);
        assert_eq!(d.step, Step::GiveUp);
        assert!(d.reason.contains("no step left"), "{}", d.reason);
    }

    #[test]
    fn steps_that_do_not_apply_are_skipped_with_the_reason() {
        let policy = Policy::parse("63016=template,fallback", 5).unwrap();
        let d = policy.decide(Some(63016), 0, &BTreeMap::new(), PLAIN_SMS);
        assert_eq!(d.step, Step::GiveUp);
        assert!(d.reason.contains("not available"), "{}", d.reason);
        assert!(d.reason.contains("not urgent"), "{}", d.reason);
        let not_urgent_wa = Situation {
            urgent: false,
            ..URGENT_WA
        };
        let d = policy.decide(Some(63016), 0, &BTreeMap::new(), not_urgent_wa);
        assert_eq!(d.step, Step::Template);
        // The template failed too: an urgent message falls back, once.
        let no_template = Situation {
            template_available: false,
            ..URGENT_WA
        };
        let d = policy.decide(Some(63016), 1, &used(&[("63016", 1)]), no_template);
        assert_eq!(d.step, Step::Fallback);
        assert_eq!(d.rule, Some(("63016".to_owned(), 2)));
    }

    #[test]
    fn the_default_rule_and_missing_rules() {
        let policy = Policy::parse("21610=give_up; *=fallback", 5).unwrap();
        assert_eq!(
            policy
                .decide(Some(21610), 0, &BTreeMap::new(), URGENT_WA)
                .step,
            Step::GiveUp
        );
        assert_eq!(
            policy
                .decide(Some(63024), 0, &BTreeMap::new(), URGENT_WA)
                .step,
            Step::Fallback
        );
        assert_eq!(
            policy.decide(None, 0, &BTreeMap::new(), URGENT_WA).step,
            Step::Fallback
        );
        let strict = Policy::parse("30001=retry:1m", 5).unwrap();
        let d = strict.decide(Some(63024), 0, &BTreeMap::new(), URGENT_WA);
        assert_eq!(d.step, Step::GiveUp);
        assert!(d.reason.contains("no remediation rule"));
        assert!(Policy::parse("", 5).unwrap().is_empty());
        assert!(Policy::parse("*=give_up", 5).unwrap().is_empty());
    }

    #[test]
    fn a_chain_is_bounded() {
        let policy = Policy::parse("30001=retry:1s*20", 3).unwrap();
        let d = policy.decide(Some(30001), 3, &used(&[("30001", 3)]), PLAIN_SMS);
        assert_eq!(d.step, Step::GiveUp);
        assert!(d.reason.contains("3 remediations"), "{}", d.reason);
    }

    #[test]
    fn bad_policies_are_refused_with_the_offending_part() {
        for (text, needle) in [
            ("30001", "expected CODE=STEP"),
            ("abc=retry:1m", "neither a Twilio error code"),
            ("30001=resend", "unknown step"),
            ("30001=retry:soon", "bad delay"),
            ("30001=retry:0s", "positive"),
            ("30001=retry:1m*0", "1 to 20"),
            ("30001=give_up; 30001=template", "given twice"),
        ] {
            let error = Policy::parse(text, 5).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
