//! The records that end an operation: exactly one `twilio.delivery.v1` status,
//! plus a `twilio.outbound.dlq.v1` record for permanent failures and dead
//! letters, plus a compliance event for Twilio's 21610 (OPT_OUT) and for a
//! send the consent re-check refused (BLOCKED_OUTBOUND).

use std::collections::BTreeMap;

use si_schemas::records::{
    ComplianceEvent, ComplianceEventKind, ComplianceSource, ConsentStatus, DeliveryOutcome,
    DeliveryStatus, EgressLedgerEntry, OutboundDeadLetter, OutboundOperation,
};

/// Twilio's "recipient opted out" error.
pub const OPTED_OUT: i32 = 21610;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// Twilio accepted it.
    Accepted {
        /// Twilio's SID.
        sid: Option<String>,
        /// Segments Twilio reported (else the operation's own count).
        segments: Option<i32>,
    },
    /// Twilio refused it permanently.
    Failed {
        /// Twilio's code.
        code: Option<i32>,
        /// HTTP status.
        http_status: Option<i32>,
        /// Twilio's message.
        message: String,
    },
    /// Egress gave up (retries exhausted, expired, not understood).
    DeadLettered {
        /// Why.
        reason: String,
        /// Twilio's code of the last attempt.
        code: Option<i32>,
        /// HTTP status of the last attempt.
        http_status: Option<i32>,
    },
    /// The consent re-check refused it.
    Blocked {
        /// Why.
        reason: String,
        /// The consent status that refused it.
        status: ConsentStatus,
        /// The source and sender scope of the decision in force, if any.
        decision: Option<(ComplianceSource, String)>,
    },
}

impl Final {
    /// Metric label of the outcome.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Failed { .. } => "failed",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Blocked { .. } => "blocked",
        }
    }

    /// Twilio's error code, if any.
    #[must_use]
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Failed { code, .. } | Self::DeadLettered { code, .. } => *code,
            _ => None,
        }
    }

    /// The ledger entry recording Twilio's final answer (only for answers from Twilio).
    #[must_use]
    pub fn ledger_entry(
        &self,
        op: &OutboundOperation,
        attempts: u32,
        at: i64,
    ) -> Option<EgressLedgerEntry> {
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let base = EgressLedgerEntry {
            operation_id: op.operation_id.clone(),
            conversation_id: op.conversation_id.clone(),
            outcome: DeliveryOutcome::Accepted,
            twilio_sid: None,
            segments: None,
            error_code: None,
            error_message: None,
            http_status: None,
            attempts,
            at,
        };
        match self {
            Self::Accepted { sid, segments } => Some(EgressLedgerEntry {
                twilio_sid: sid.clone(),
                segments: *segments,
                ..base
            }),
            Self::Failed {
                code,
                http_status,
                message,
            } => Some(EgressLedgerEntry {
                outcome: DeliveryOutcome::Failed,
                error_code: *code,
                error_message: Some(message.clone()),
                http_status: *http_status,
                ..base
            }),
            _ => None,
        }
    }

    /// The final answer a ledger entry recorded.
    #[must_use]
    pub fn from_ledger(entry: &EgressLedgerEntry) -> Self {
        match entry.outcome {
            DeliveryOutcome::Accepted => Self::Accepted {
                sid: entry.twilio_sid.clone(),
                segments: entry.segments,
            },
            _ => Self::Failed {
                code: entry.error_code,
                http_status: entry.http_status,
                message: entry.error_message.clone().unwrap_or_default(),
            },
        }
    }
}

/// The records ending one operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminal {
    /// The status, keyed by conversation id.
    pub status: DeliveryStatus,
    /// The dead letter, keyed by sender key.
    pub dead_letter: Option<OutboundDeadLetter>,
    /// The compliance event (a 21610 opt-out, a re-check's block) and its
    /// key (`<channel>:<E.164>`).
    pub compliance: Option<(String, ComplianceEvent)>,
}

/// The consent scope of an operation's sender: its messaging service or its address.
#[must_use]
pub fn sender_scope(op: &OutboundOperation) -> String {
    op.messaging_service_sid
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| op.from.clone())
        .unwrap_or_else(|| si_consent_gate::ANY_SCOPE.to_owned())
}

/// Builds the terminal records of `op`.
#[must_use]
pub fn terminal(
    op: &OutboundOperation,
    end: &Final,
    attempts: u32,
    first_attempt_at: i64,
    now: i64,
) -> Terminal {
    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
    let mut status = DeliveryStatus {
        operation_id: op.operation_id.clone(),
        conversation_id: op.conversation_id.clone(),
        outcome: DeliveryOutcome::Accepted,
        twilio_sid: None,
        segments: None,
        error_code: None,
        error_message: None,
        attempts,
        response_id: op.response_id.clone(),
        part_index: Some(op.part_index),
        part_count: Some(op.part_count),
        kind: Some(op.kind),
        body: None,
        resend_of: op.params.get(si_schemas::records::RESEND_OF_PARAM).cloned(),
        remediation: None,
        at: now,
        scheduled_at: None,
        compliance_event_id: None,
    };
    let dead_letter = |reason: String, code: Option<i32>, http_status: Option<i32>| {
        Some(OutboundDeadLetter {
            operation: op.clone(),
            reason,
            error_code: code,
            http_status,
            attempts,
            first_attempt_at,
            dead_lettered_at: now,
        })
    };
    let mut out = Terminal {
        status: status.clone(),
        dead_letter: None,
        compliance: None,
    };
    match end {
        Final::Accepted { sid, segments } => {
            status.twilio_sid.clone_from(sid);
            // Twilio's num_segments when it answered with one, else what segment
            // computed for this part (DeliveryStatus.segments documents both).
            status.segments = segments.or(op.segments);
            // What Twilio accepted is what the transcript shows.
            status.body.clone_from(&op.body);
        }
        Final::Failed {
            code,
            http_status,
            message,
        } => {
            status.outcome = DeliveryOutcome::Failed;
            status.error_code = *code;
            status.error_message = Some(message.clone());
            let reason = format!(
                "permanent Twilio error {}: {message}",
                code.map_or_else(|| "(no code)".to_owned(), |c| c.to_string())
            );
            out.dead_letter = dead_letter(reason, *code, *http_status);
            if *code == Some(OPTED_OUT)
                && let Some(to) = op.to.as_deref()
            {
                out.compliance = Some(audit_record(
                    op,
                    op.channel.address_key(to),
                    si_consent_gate::twilio_opt_out_event_id(&op.operation_id),
                    (ComplianceEventKind::OptOut, ComplianceSource::TwilioError),
                    now,
                    BTreeMap::from([
                        ("error_code".to_owned(), OPTED_OUT.to_string()),
                        ("stage".to_owned(), "egress".to_owned()),
                    ]),
                ));
            }
        }
        Final::DeadLettered {
            reason,
            code,
            http_status,
        } => {
            status.outcome = DeliveryOutcome::DeadLettered;
            status.error_code = *code;
            status.error_message = Some(reason.clone());
            out.dead_letter = dead_letter(reason.clone(), *code, *http_status);
        }
        Final::Blocked {
            reason,
            status: consent,
            decision,
        } => {
            status.outcome = DeliveryOutcome::Blocked;
            status.error_message = Some(reason.clone());
            // On the audit record, as segment's and voice-link's blocks are.
            if let Some(to) = op.to.as_deref() {
                let mut details = BTreeMap::from([
                    ("stage".to_owned(), "egress".to_owned()),
                    ("consent_status".to_owned(), consent.as_str().to_owned()),
                    ("operation".to_owned(), op.kind.as_str().to_owned()),
                ]);
                if let Some((_, scope)) = decision {
                    details.insert("decision_scope".to_owned(), scope.clone());
                }
                // A call is keyed by the text channel whose consent refused
                // it, as voice-link keys its own refusals.
                let subject = si_consent_gate::call_consent(op).map_or(op.channel, |(c, _)| c);
                out.compliance = Some(audit_record(
                    op,
                    subject.address_key(to),
                    si_consent_gate::egress_blocked_event_id(&op.operation_id),
                    (
                        ComplianceEventKind::BlockedOutbound,
                        decision
                            .as_ref()
                            .map_or(ComplianceSource::Unknown, |(source, _)| *source),
                    ),
                    now,
                    details,
                ));
            }
        }
    }
    // Readers of the status find the audit record it led to.
    status.compliance_event_id = out.compliance.as_ref().map(|(_, e)| e.event_id.clone());
    out.status = status;
    out
}

/// A compliance event egress records about the recipient of `op` under
/// `key` (`<channel>:<E.164>`), with `kind` and `source`.
fn audit_record(
    op: &OutboundOperation,
    key: String,
    event_id: String,
    (kind, source): (ComplianceEventKind, ComplianceSource),
    now: i64,
    details: BTreeMap<String, String>,
) -> (String, ComplianceEvent) {
    (
        key,
        ComplianceEvent {
            event_id,
            kind,
            source,
            address: op.to.clone().unwrap_or_default(),
            channel: op.channel,
            sender_scope: Some(sender_scope(op)),
            conversation_id: Some(op.conversation_id.clone()),
            message_ref: Some(op.operation_id.clone()),
            keyword: None,
            locale: None,
            at: now,
            details,
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use si_schemas::records::{Channel, OperationKind};

    use super::*;

    fn op() -> OutboundOperation {
        OutboundOperation {
            operation_id: "r1-0".into(),
            conversation_id: "CH1".into(),
            kind: OperationKind::SendMessage,
            channel: Channel::Whatsapp,
            sender_key: "whatsapp:+14155550199".into(),
            to: Some("+14155550100".into()),
            from: Some("+14155550199".into()),
            messaging_service_sid: None,
            body: Some("hi".into()),
            media_urls: vec![],
            content_sid: None,
            content_variables_json: None,
            response_id: Some("r1".into()),
            part_index: 0,
            part_count: 1,
            segments: Some(1),
            encoding: None,
            template_reason: None,
            call: None,
            params: BTreeMap::new(),
            created_at: 0,
            not_after: None,
            traceparent: None,
        }
    }

    #[test]
    fn accepted_is_a_status_only() {
        let t = terminal(
            &op(),
            &Final::Accepted {
                sid: Some("SM1".into()),
                segments: None,
            },
            2,
            1,
            5,
        );
        assert_eq!(t.status.outcome, DeliveryOutcome::Accepted);
        assert_eq!(t.status.twilio_sid.as_deref(), Some("SM1"));
        assert_eq!(t.status.segments, Some(1));
        assert_eq!(t.status.attempts, 2);
        assert_eq!(
            t.status.body,
            op().body,
            "the text as sent, for the transcript"
        );
        assert_eq!(t.status.kind, Some(op().kind));
        assert_eq!(t.status.part_count, Some(op().part_count));
        assert!(t.dead_letter.is_none() && t.compliance.is_none());
    }

    #[test]
    fn a_permanent_error_fails_and_dead_letters() {
        let end = Final::Failed {
            code: Some(21211),
            http_status: Some(400),
            message: "Invalid To".into(),
        };
        let t = terminal(&op(), &end, 1, 1, 5);
        assert_eq!(t.status.outcome, DeliveryOutcome::Failed);
        assert_eq!(t.status.error_code, Some(21211));
        let dl = t.dead_letter.unwrap();
        assert_eq!(dl.operation, op());
        assert_eq!(dl.error_code, Some(21211));
        assert!(dl.reason.contains("21211"));
        assert!(t.compliance.is_none());
    }

    #[test]
    fn opted_out_records_a_compliance_event() {
        let end = Final::Failed {
            code: Some(21610),
            http_status: Some(400),
            message: "opted out".into(),
        };
        let t = terminal(&op(), &end, 1, 1, 5);
        assert_eq!(
            t.status.compliance_event_id.as_deref(),
            Some("egress-21610-r1-0"),
            "the status names its audit record"
        );
        let (key, event) = t.compliance.unwrap();
        assert_eq!(key, "whatsapp:+14155550100");
        assert_eq!(event.kind, ComplianceEventKind::OptOut);
        assert_eq!(event.source, ComplianceSource::TwilioError);
        assert_eq!(event.sender_scope.as_deref(), Some("+14155550199"));
        assert_eq!(event.event_id, "egress-21610-r1-0");
    }

    #[test]
    fn dead_letters_and_blocks() {
        let end = Final::DeadLettered {
            reason: "retries exhausted".into(),
            code: Some(20429),
            http_status: Some(429),
        };
        let t = terminal(&op(), &end, 8, 1, 5);
        assert_eq!(t.status.outcome, DeliveryOutcome::DeadLettered);
        assert!(t.dead_letter.is_some());
        assert_eq!(t.status.compliance_event_id, None, "no audit record");
        let t = terminal(
            &op(),
            &Final::Blocked {
                reason: "opted out".into(),
                status: ConsentStatus::OptedOut,
                decision: Some((ComplianceSource::Keyword, "+14155550199".into())),
            },
            0,
            1,
            5,
        );
        assert_eq!(t.status.outcome, DeliveryOutcome::Blocked);
        assert!(t.dead_letter.is_none());
        assert_eq!(
            t.status.compliance_event_id.as_deref(),
            Some("egress-blocked-r1-0")
        );
        // On the audit record, under the user's address, with the decision.
        let (key, event) = t.compliance.unwrap();
        assert_eq!(key, "whatsapp:+14155550100");
        assert_eq!(event.event_id, "egress-blocked-r1-0");
        assert_eq!(event.kind, ComplianceEventKind::BlockedOutbound);
        assert_eq!(event.source, ComplianceSource::Keyword);
        assert_eq!(event.conversation_id.as_deref(), Some("CH1"));
        assert_eq!(event.details["consent_status"], "OPTED_OUT");
        assert_eq!(event.details["decision_scope"], "+14155550199");
    }

    #[test]
    fn ledger_round_trip() {
        let end = Final::Accepted {
            sid: Some("SM1".into()),
            segments: Some(2),
        };
        let entry = end.ledger_entry(&op(), 3, 9).unwrap();
        assert_eq!(Final::from_ledger(&entry), end);
        let failed = Final::Failed {
            code: Some(21211),
            http_status: Some(400),
            message: "x".into(),
        };
        assert_eq!(
            Final::from_ledger(&failed.ledger_entry(&op(), 1, 9).unwrap()),
            failed
        );
        assert!(
            Final::Blocked {
                reason: "x".into(),
                status: ConsentStatus::OptedOut,
                decision: None,
            }
            .ledger_entry(&op(), 0, 9)
            .is_none()
        );
    }
}
