//! Delivery remediation: segment remembers each message it sends, learns
//! its Twilio SID from egress's status on `twilio.delivery.v1`, and when a
//! failure comes back (a DELIVERY_UPDATED `failed`/`undelivered` on
//! `si.conversation.events.v1`, or egress's own FAILED/DEAD_LETTERED) applies
//! the policy ([`crate::remedy`]): a resend later, the WhatsApp template, the
//! SMS fallback of an urgent message, or giving up. Every decision is a
//! record on `twilio.delivery.v1` with `remediation` set; every resend passes
//! the consent gate again.
//!
//! State (all kept [`Settings::remediation_window`]):
//!
//! | key | entry |
//! |---|---|
//! | `op|<operation id>` | sent, egress has not answered yet |
//! | `sid|<Twilio SID>` | accepted by Twilio, delivery pending |
//! | `retry|<operation id>` | a resend waiting for its time (a timer) |
//! | `dlr|<Twilio SID>` | a final delivery report read before egress's status named the SID ([`EARLY_REPORT_TTL`]) |
//!
//! A chain's resends are `<first operation id>#<n>`; the same inputs give the
//! same ids, so a replay after a crash writes the same records.

use std::collections::BTreeMap;
use std::time::Duration;

use si_consent_gate::Verdict;
use si_runtime::processor::Output;
use si_runtime::state::StateStore;
use si_schemas::records::{
    Channel, DeliveryOutcome, DeliveryState, DeliveryStatus, OperationKind, OutboundOperation,
    PRIORITY_PARAM, Priority, RESEND_OF_PARAM, Remediation, RemediationAction,
    SegmentDeliveryReport, SegmentSent, SegmentState, SegmentStateKind,
};
use si_schemas::topics;

use super::{Refusal, Segmenter};
use crate::config::WhatsappTemplate;
use crate::remedy::{Situation, Step};

/// How long a final delivery report waits for egress's status naming its SID.
pub const EARLY_REPORT_TTL: Duration = Duration::from_secs(600);

/// State key of a message egress has not answered yet.
#[must_use]
pub fn op_key(operation_id: &str) -> String {
    format!("op|{operation_id}")
}

/// State key of a message Twilio accepted.
#[must_use]
pub fn sid_key(sid: &str) -> String {
    format!("sid|{sid}")
}

/// State key of a resend waiting for its time.
#[must_use]
pub fn retry_key(operation_id: &str) -> String {
    format!("retry|{operation_id}")
}

/// State key of an early failure report.
#[must_use]
pub fn early_key(sid: &str) -> String {
    format!("dlr|{sid}")
}

/// The id of a chain's `n`-th resend.
#[must_use]
pub fn resend_id(origin: &str, n: i32) -> String {
    format!("{origin}#{n}")
}

/// A failure to act on.
struct Failure<'a> {
    /// The attempt that failed.
    sent: SegmentSent,
    code: Option<i32>,
    message: Option<&'a str>,
    now: i64,
}

impl Failure<'_> {
    /// The remediation record of this failure of `op` (a FAILED status).
    fn record(&self, op: &OutboundOperation, remediation: Remediation) -> Output {
        record(
            op,
            &self.sent,
            DeliveryOutcome::Failed,
            self.code,
            self.message,
            remediation,
            self.now,
        )
    }
}

/// The attempt a failure's decision leads to, and why.
struct NextAttempt {
    attempt: i32,
    /// Its operation id ([`resend_id`]).
    id: String,
    /// Its entry of the chain (the operation is filled in when it is built).
    chain: SegmentSent,
    reason: String,
}

impl NextAttempt {
    fn after(sent: &SegmentSent, decision: crate::remedy::Decision) -> Self {
        let attempt = sent.attempt + 1;
        let id = resend_id(&sent.origin_operation_id, attempt);
        let mut steps_used = sent.steps_used.clone();
        if let Some((rule, used)) = decision.rule {
            steps_used.insert(rule, used);
        }
        let chain = SegmentSent {
            operation_id: id.clone(),
            attempt,
            steps_used,
            accepted_at: None,
            ..sent.clone()
        };
        Self {
            attempt,
            id,
            chain,
            reason: decision.reason,
        }
    }

    /// `op` as this attempt: its id, created `now`, naming the chain's first.
    fn of(&self, mut op: OutboundOperation, now: i64) -> OutboundOperation {
        op.operation_id.clone_from(&self.id);
        op.created_at = now;
        op.params.insert(
            RESEND_OF_PARAM.to_owned(),
            self.chain.origin_operation_id.clone(),
        );
        op
    }
}

fn sent_entry(sent: SegmentSent) -> SegmentState {
    SegmentState {
        sent: Some(sent),
        ..SegmentState::empty(SegmentStateKind::SentOperation)
    }
}

fn take_sent(state: &mut StateStore<SegmentState>, key: &str) -> Option<SegmentSent> {
    let sent = state
        .get(key)
        .filter(|s| s.kind == SegmentStateKind::SentOperation)
        .and_then(|s| s.sent.clone())?;
    state.delete(key);
    Some(sent)
}

/// The consent scope of an operation's sender (as egress's re-check uses).
fn scope_of(op: &OutboundOperation) -> String {
    op.messaging_service_sid
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| op.from.clone())
        .unwrap_or_else(|| si_consent_gate::ANY_SCOPE.to_owned())
}

impl Segmenter {
    /// Whether messages are tracked for remediation at all.
    pub(super) fn remediates(&self) -> bool {
        !self.settings.remediation.is_empty()
    }

    /// Remembers a message just written, so a later failure can be remedied.
    pub(super) fn track(
        &self,
        state: &mut StateStore<SegmentState>,
        op: &OutboundOperation,
        origin: &str,
        attempt: i32,
        steps_used: BTreeMap<String, i32>,
    ) {
        if !self.remediates() {
            return;
        }
        let Ok(operation_json) = serde_json::to_string(op) else {
            return;
        };
        state.put_with_ttl(
            op_key(&op.operation_id),
            sent_entry(SegmentSent {
                operation_id: op.operation_id.clone(),
                origin_operation_id: origin.to_owned(),
                attempt,
                operation_json,
                urgent: op.params.get(PRIORITY_PARAM).map(String::as_str)
                    == Some(Priority::High.as_str()),
                twilio_sid: None,
                steps_used,
                not_before: None,
                accepted_at: None,
            }),
            self.settings.remediation_window,
        );
    }

    /// Egress's status of an operation: learns the SID, or acts on a failure.
    pub(super) fn on_status(
        &self,
        now: i64,
        status: &DeliveryStatus,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        if status.remediation.is_some() || !self.remediates() {
            return Vec::new();
        }
        let key = op_key(&status.operation_id);
        if state.get(&key).is_none() {
            return Vec::new();
        }
        match status.outcome {
            DeliveryOutcome::Accepted => {
                let Some(mut sent) = take_sent(state, &key) else {
                    return Vec::new();
                };
                self.observe_accepted(&sent, status.segments);
                sent.accepted_at = Some(now);
                let Some(sid) = status.twilio_sid.clone().filter(|s| !s.is_empty()) else {
                    return Vec::new();
                };
                if let Some(early) = state.get(&early_key(&sid)).and_then(|s| s.report.clone()) {
                    state.delete(&early_key(&sid));
                    sent.twilio_sid = Some(sid);
                    let fallback = if early.delivered {
                        "delivered"
                    } else {
                        "failed"
                    };
                    self.observe_final(
                        &sent,
                        early.status.as_deref().unwrap_or(fallback),
                        early.at,
                    );
                    return self.conclude(
                        sent,
                        early.delivered,
                        early.error_code,
                        early.error_message.as_deref(),
                        now,
                        state,
                    );
                }
                sent.twilio_sid = Some(sid.clone());
                state.put_with_ttl(
                    sid_key(&sid),
                    sent_entry(sent),
                    self.settings.remediation_window,
                );
                Vec::new()
            }
            DeliveryOutcome::Failed | DeliveryOutcome::DeadLettered => {
                let Some(sent) = take_sent(state, &key) else {
                    return Vec::new();
                };
                self.on_failure(
                    Failure {
                        sent,
                        code: status.error_code,
                        message: status.error_message.as_deref(),
                        now,
                    },
                    state,
                )
            }
            // Blocked by egress's consent re-check: nothing to remedy.
            DeliveryOutcome::Blocked => {
                state.delete(&key);
                Vec::new()
            }
            DeliveryOutcome::Unknown => Vec::new(),
        }
    }

    /// A delivery report of a message: a final one concludes it, or waits
    /// for egress's status when that has not been read yet.
    pub(super) fn on_delivery_report(
        &self,
        now: i64,
        sid: &str,
        report: DeliveryState,
        code: Option<i32>,
        message: Option<&str>,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        if !self.remediates() || sid.is_empty() {
            return Vec::new();
        }
        let Some(status) = super::final_status(report) else {
            return Vec::new();
        };
        let delivered = matches!(report, DeliveryState::Delivered | DeliveryState::Read);
        let Some(sent) = take_sent(state, &sid_key(sid)) else {
            // Egress's status naming the SID may not be read yet (or the
            // message is not segment's: the entry expires unused).
            state.put_with_ttl(
                early_key(sid),
                SegmentState {
                    report: Some(SegmentDeliveryReport {
                        message_sid: sid.to_owned(),
                        delivered,
                        error_code: code,
                        error_message: message.map(str::to_owned),
                        at: now,
                        status: Some(status.to_owned()),
                    }),
                    ..SegmentState::empty(SegmentStateKind::DeliveryReport)
                },
                EARLY_REPORT_TTL,
            );
            return Vec::new();
        };
        self.observe_final(&sent, status, now);
        // The report came without our trace (a Conversations receipt or a
        // number's own status callback starts one of its own): link it to
        // the message's, and keep what it leads to in the message's trace.
        let trace = serde_json::from_str::<OutboundOperation>(&sent.operation_json)
            .ok()
            .and_then(|op| op.traceparent);
        if let Some(traceparent) = &trace {
            si_runtime::trace::link(&tracing::Span::current(), traceparent);
        }
        self.conclude(sent, delivered, code, message, now, state)
            .into_iter()
            .map(|output| output.in_trace(trace.clone()))
            .collect()
    }

    /// A final report of `sent`: a failure is acted on, a delivery ends the
    /// chain (RECOVERED when it was a resend).
    fn conclude(
        &self,
        sent: SegmentSent,
        delivered: bool,
        code: Option<i32>,
        message: Option<&str>,
        now: i64,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        if !delivered {
            return self.on_failure(
                Failure {
                    sent,
                    code,
                    message,
                    now,
                },
                state,
            );
        }
        if sent.attempt == 0 {
            return Vec::new();
        }
        let Ok(op) = serde_json::from_str::<OutboundOperation>(&sent.operation_json) else {
            return Vec::new();
        };
        self.count("recovered", None);
        vec![record(
            &op,
            &sent,
            DeliveryOutcome::Accepted,
            None,
            None,
            Remediation {
                origin_operation_id: sent.origin_operation_id.clone(),
                attempt: sent.attempt,
                action: RemediationAction::Recovered,
                next_operation_id: None,
                channel: Some(op.channel),
                not_before: None,
                terminal: true,
                reason: format!("resend {} delivered", sent.attempt),
            },
            now,
        )]
    }

    /// A resend whose time has come.
    pub(super) fn on_retry_timer(
        &self,
        now: i64,
        key: &str,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        let Some(sent) = take_sent(state, key) else {
            return Vec::new();
        };
        let Ok(op) = serde_json::from_str::<OutboundOperation>(&sent.operation_json) else {
            return Vec::new();
        };
        match self.resend(&op, &sent, now, state) {
            Ok(outputs) => outputs,
            Err(mut refused) => {
                let failure = Failure {
                    sent,
                    code: None,
                    message: None,
                    now,
                };
                let reason = "the consent gate refused the resend".to_owned();
                refused.push(self.give_up(&op, &failure, reason));
                refused
            }
        }
    }

    /// Applies the policy to a failed attempt: a resend later or now (as
    /// the template, or on the fallback channel), or giving up.
    fn on_failure(
        &self,
        failure: Failure<'_>,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        let sent = &failure.sent;
        let Ok(op) = serde_json::from_str::<OutboundOperation>(&sent.operation_json) else {
            tracing::warn!(operation_id = %sent.operation_id, "a remembered message does not read back; not remedied");
            return Vec::new();
        };
        let fallback = self.fallback_of(&op);
        let situation = Situation {
            urgent: sent.urgent,
            fallback_available: fallback.is_some(),
            template_available: op.channel == Channel::Whatsapp
                && op.content_sid.is_none()
                && self.settings.segment.whatsapp_template.is_some(),
        };
        let decision = self.settings.remediation.decide(
            failure.code,
            u32::try_from(sent.attempt).unwrap_or(0),
            &sent.steps_used,
            situation,
        );
        tracing::info!(
            operation_id = %sent.operation_id,
            error_code = ?failure.code,
            decision = %decision.step,
            reason = %decision.reason,
            "delivery failed: remediation"
        );
        let step = decision.step;
        let next = NextAttempt::after(sent, decision);
        let now = failure.now;
        let resend = match step {
            Step::GiveUp => None,
            Step::Retry(delay) => return self.retry_later(&op, &failure, next, delay, state),
            Step::Template => self
                .settings
                .segment
                .whatsapp_template_for(recipient_locale(state, &op).as_deref())
                .map(|template| {
                    let resend = as_template(next.of(op.clone(), now), &template, failure.code);
                    (RemediationAction::ResendAsTemplate, resend)
                }),
            Step::Fallback => {
                fallback.map(|other| (RemediationAction::FallbackChannel, next.of(other, now)))
            }
        };
        match resend {
            Some((action, resend)) => self.resend_now(&op, &failure, next, action, resend, state),
            None => vec![self.give_up(&op, &failure, next.reason)],
        }
    }

    /// A resend at `failure.now + delay`, held in the state until then; it
    /// gives up instead when `op`'s `not_after` passes first.
    fn retry_later(
        &self,
        op: &OutboundOperation,
        failure: &Failure<'_>,
        next: NextAttempt,
        delay: Duration,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        let at = failure
            .now
            .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        if op.not_after.is_some_and(|not_after| at > not_after) {
            let reason = format!("{}, but not_after passes first", next.reason);
            return vec![self.give_up(op, failure, reason)];
        }
        let resend = next.of(op.clone(), failure.now);
        let decided = failure.record(
            op,
            Remediation {
                not_before: Some(at),
                ..resend_decision(
                    &failure.sent,
                    next.attempt,
                    RemediationAction::RetryLater,
                    next.id,
                    op.channel,
                    next.reason,
                )
            },
        );
        if !self.hold(&resend, next.chain, at, delay, state) {
            return Vec::new();
        }
        self.count("retry_later", failure.code);
        vec![decided]
    }

    /// `resend` now, after the decision's record; when the consent gate
    /// refuses it, its BLOCKED_OUTBOUND event and the chain's end.
    fn resend_now(
        &self,
        op: &OutboundOperation,
        failure: &Failure<'_>,
        next: NextAttempt,
        action: RemediationAction,
        resend: OutboundOperation,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        let decided = failure.record(
            op,
            resend_decision(
                &failure.sent,
                next.attempt,
                action,
                next.id,
                resend.channel,
                next.reason,
            ),
        );
        let Ok(operation_json) = serde_json::to_string(&resend) else {
            return Vec::new();
        };
        let chain = SegmentSent {
            operation_json,
            ..next.chain
        };
        self.count(action_label(action), failure.code);
        match self.resend(&resend, &chain, failure.now, state) {
            Ok(mut outputs) => {
                outputs.insert(0, decided);
                outputs
            }
            Err(mut refused) => {
                let reason = format!("{}: the consent gate refused it", action_label(action));
                refused.push(self.give_up(op, failure, reason));
                refused
            }
        }
    }

    /// Holds `resend` in the state until `at`, when its timer sends it
    /// ([`Self::on_retry_timer`]); whether it could be written.
    fn hold(
        &self,
        resend: &OutboundOperation,
        chain: SegmentSent,
        at: i64,
        delay: Duration,
        state: &mut StateStore<SegmentState>,
    ) -> bool {
        let Ok(operation_json) = serde_json::to_string(resend) else {
            return false;
        };
        let key = retry_key(&resend.operation_id);
        state.put_with_ttl(
            key.clone(),
            sent_entry(SegmentSent {
                operation_json,
                not_before: Some(at),
                ..chain
            }),
            delay + self.settings.remediation_window,
        );
        state.set_timer(&key, at);
        true
    }

    /// Writes a resend after the consent gate, and tracks it; `Err` with the
    /// BLOCKED_OUTBOUND event when the gate refuses it.
    fn resend(
        &self,
        op: &OutboundOperation,
        chain: &SegmentSent,
        now: i64,
        state: &mut StateStore<SegmentState>,
    ) -> Result<Vec<Output>, Vec<Output>> {
        let scope = scope_of(op);
        if let Some(to) = op.to.as_deref()
            && si_consent_gate::has_consent(op.channel)
            && let Verdict::Blocked { status, decision } =
                self.gate
                    .check(op.channel, to, &scope, self.settings.require_opt_in)
        {
            self.count("blocked", None);
            return Err(vec![self.blocked_outbound(
                &Refusal {
                    message_ref: &op.operation_id,
                    conversation_id: &op.conversation_id,
                    channel: op.channel,
                    address: to,
                    scope: &scope,
                    locale: None,
                    now,
                },
                status,
                decision.as_ref(),
            )]);
        }
        self.track(
            state,
            op,
            &chain.origin_operation_id,
            chain.attempt,
            chain.steps_used.clone(),
        );
        Ok(vec![Output::new(
            topics::OUTBOUND,
            op.sender_key.clone(),
            op.clone(),
        )])
    }

    /// The SMS version of a WhatsApp message: same number, the SMS sender.
    fn fallback_of(&self, op: &OutboundOperation) -> Option<OutboundOperation> {
        if op.channel != Channel::Whatsapp {
            return None;
        }
        let to = op.to.clone()?;
        let wa_from = op.from.clone();
        let configured = self
            .settings
            .sms_fallback_from
            .clone()
            .or_else(|| self.settings.messaging_service_sid.clone());
        let (from, mg) = match configured {
            Some(mg) if mg.starts_with("MG") => (None, Some(mg)),
            Some(number) => (Some(number), None),
            None => (wa_from, None),
        };
        let sender = si_consent_gate::sender(
            Channel::Sms,
            &op.conversation_id,
            true,
            from.as_deref(),
            mg.as_deref(),
        )?;
        let body = op.body.clone()?;
        let measured = crate::measure(&body);
        Some(OutboundOperation {
            kind: OperationKind::SendMessage,
            channel: Channel::Sms,
            sender_key: sender.key,
            to: Some(to),
            from: sender.from,
            messaging_service_sid: sender.messaging_service_sid,
            body: Some(body),
            content_sid: None,
            content_variables_json: None,
            segments: Some(i32::try_from(measured.segments).unwrap_or(i32::MAX)),
            encoding: Some(measured.encoding.to_schema()),
            template_reason: None,
            not_after: None,
            ..op.clone()
        })
    }

    /// The terminal GIVE_UP record of a chain.
    fn give_up(&self, op: &OutboundOperation, failure: &Failure<'_>, reason: String) -> Output {
        let sent = &failure.sent;
        self.count("give_up", failure.code);
        tracing::info!(operation_id = %sent.operation_id, error_code = ?failure.code, %reason, "delivery failed: giving up");
        failure.record(
            op,
            Remediation {
                origin_operation_id: sent.origin_operation_id.clone(),
                attempt: sent.attempt + 1,
                action: RemediationAction::GiveUp,
                next_operation_id: None,
                channel: None,
                not_before: None,
                terminal: true,
                reason,
            },
        )
    }

    fn count(&self, action: &str, code: Option<i32>) {
        self.metrics
            .remediations
            .with_label_values(&[
                action,
                &code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            ])
            .inc();
    }
}

/// The locale of the user `op` goes to (their participant's, else the
/// conversation's): the language of the template it is resent as.
fn recipient_locale(state: &StateStore<SegmentState>, op: &OutboundOperation) -> Option<String> {
    let conversation =
        super::conversation_of(state, &super::conversation_key(&op.conversation_id))?;
    conversation
        .participants
        .iter()
        .find(|p| p.address.is_some() && p.address == op.to)
        .and_then(|p| p.locale.clone())
        .or(conversation.locale)
}

/// `resend` as the approved WhatsApp template instead of its text, for a
/// message Twilio refused outside the 24-hour window (or any failure the
/// policy answers with the template).
fn as_template(
    mut resend: OutboundOperation,
    template: &WhatsappTemplate,
    code: Option<i32>,
) -> OutboundOperation {
    resend.body = None;
    resend.media_urls = Vec::new();
    resend.content_sid = Some(template.content_sid.clone());
    resend.content_variables_json = Some(template.variables_json.clone());
    resend.template_reason = Some(format!(
        "DELIVERY_FAILED_{}",
        code.map_or_else(|| "UNKNOWN".to_owned(), |c| c.to_string())
    ));
    resend.segments = None;
    resend.encoding = None;
    resend.not_after = None;
    resend
}

/// The non-terminal decision to resend `sent`'s chain as `next_id`.
fn resend_decision(
    sent: &SegmentSent,
    attempt: i32,
    action: RemediationAction,
    next_id: String,
    channel: Channel,
    reason: String,
) -> Remediation {
    Remediation {
        origin_operation_id: sent.origin_operation_id.clone(),
        attempt,
        action,
        next_operation_id: Some(next_id),
        channel: Some(channel),
        not_before: None,
        terminal: false,
        reason,
    }
}

fn action_label(action: RemediationAction) -> &'static str {
    match action {
        RemediationAction::RetryLater => "retry_later",
        RemediationAction::ResendAsTemplate => "template",
        RemediationAction::FallbackChannel => "fallback",
        RemediationAction::GiveUp => "give_up",
        RemediationAction::Recovered => "recovered",
        RemediationAction::Unknown => "unknown",
    }
}

/// A remediation record about the attempt `sent` (`op`).
fn record(
    op: &OutboundOperation,
    sent: &SegmentSent,
    outcome: DeliveryOutcome,
    code: Option<i32>,
    message: Option<&str>,
    remediation: Remediation,
    now: i64,
) -> Output {
    let status = DeliveryStatus {
        operation_id: sent.operation_id.clone(),
        conversation_id: op.conversation_id.clone(),
        outcome,
        twilio_sid: sent.twilio_sid.clone(),
        segments: None,
        error_code: code,
        error_message: message.map(si_runtime::dlq::scrub),
        attempts: 0,
        response_id: op.response_id.clone(),
        part_index: Some(op.part_index),
        part_count: Some(op.part_count),
        kind: Some(op.kind),
        body: None,
        resend_of: op.params.get(RESEND_OF_PARAM).cloned(),
        remediation: Some(remediation),
        at: now,
        scheduled_at: None,
        compliance_event_id: None,
    };
    Output::new(topics::DELIVERY, op.conversation_id.clone(), status)
}
