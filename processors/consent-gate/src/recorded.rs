//! `COMPLIANCE_RECORDED`: a conversation's readers (lifecycle, for the
//! archival request; session orchestration) learn which compliance events
//! were recorded about it, on the conversation's own topic and partition.
//! `si.compliance.v1` is keyed by address, so it cannot tell them in order.

use si_runtime::processor::Output;
use si_schemas::records::{
    ComplianceEvent, ComplianceRecordRef, ConversationEvent, ConversationEventType,
};
use si_schemas::topics;

/// Prefix of the `event_id` of a `COMPLIANCE_RECORDED` event (then the
/// compliance event's id).
pub const RECORDED_EVENT_PREFIX: &str = "compliance-";

/// The `event_id` of the opt-out egress records when Twilio refuses a send
/// with 21610 (the user opted out at the carrier): readers that see the
/// operation's FAILED status can name the event without reading it.
#[must_use]
pub fn twilio_opt_out_event_id(operation_id: &str) -> String {
    format!("egress-21610-{operation_id}")
}

/// The `event_id` of the `BLOCKED_OUTBOUND` egress records when its consent
/// re-check refuses an operation: lifecycle names it in the conversation's
/// archival request from the operation's BLOCKED status
/// ([`EGRESS_RECHECK_REASON`] begins its `error_message`).
#[must_use]
pub fn egress_blocked_event_id(operation_id: &str) -> String {
    format!("egress-blocked-{operation_id}")
}

/// How the `error_message` of a BLOCKED status of egress's consent re-check
/// begins (then `: <consent status>`).
pub const EGRESS_RECHECK_REASON: &str = "consent re-check before sending";

/// Adds, for every compliance event among `outputs` that names a
/// conversation, the `COMPLIANCE_RECORDED` event of that conversation
/// (`session_id` of the conversation, written in the same transaction).
#[must_use]
pub fn with_recorded(mut outputs: Vec<Output>, session_id: &str, now: i64) -> Vec<Output> {
    let recorded: Vec<Output> = outputs
        .iter()
        .filter(|o| o.topic() == topics::COMPLIANCE)
        .filter_map(|o| o.record::<ComplianceEvent>())
        .filter_map(|event| recorded(event, session_id, now))
        .collect();
    outputs.extend(recorded);
    outputs
}

/// The `COMPLIANCE_RECORDED` event of `event`, when it names a conversation.
#[must_use]
pub fn recorded(event: &ComplianceEvent, session_id: &str, now: i64) -> Option<Output> {
    let conversation_id = event.conversation_id.clone().filter(|c| !c.is_empty())?;
    let id = format!("{RECORDED_EVENT_PREFIX}{}", event.event_id);
    let record = ConversationEvent {
        channel: event.channel,
        occurred_at: event.at,
        locale: event.locale.clone().unwrap_or_default(),
        compliance_record: Some(ComplianceRecordRef {
            event_id: event.event_id.clone(),
            kind: event.kind.as_str().to_owned(),
        }),
        ..ConversationEvent::adapter(
            id,
            &conversation_id,
            session_id,
            ConversationEventType::ComplianceRecorded,
            now,
        )
    };
    Some(Output::new(
        topics::CONVERSATION_EVENTS,
        conversation_id,
        record,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use si_schemas::records::{Channel, ComplianceEventKind, ComplianceSource};

    use super::*;

    fn event(conversation: Option<&str>) -> ComplianceEvent {
        ComplianceEvent {
            event_id: "c-1".into(),
            kind: ComplianceEventKind::BlockedOutbound,
            source: ComplianceSource::Keyword,
            address: "+14155550100".into(),
            channel: Channel::Sms,
            sender_scope: None,
            conversation_id: conversation.map(str::to_owned),
            message_ref: None,
            keyword: None,
            locale: Some("en".into()),
            at: 5,
            details: BTreeMap::new(),
        }
    }

    #[test]
    fn only_events_about_a_conversation_are_referenced_there() {
        let outputs = vec![
            Output::new(
                topics::COMPLIANCE,
                "sms:+14155550100".to_owned(),
                event(Some("CH1")),
            ),
            Output::new(
                topics::COMPLIANCE,
                "sms:+14155550100".to_owned(),
                event(None),
            ),
        ];
        let all = with_recorded(outputs, "s-1", 9);
        assert_eq!(all.len(), 3);
        let refs: Vec<&ConversationEvent> = all
            .iter()
            .filter(|o| o.topic() == topics::CONVERSATION_EVENTS)
            .map(|o| o.record::<ConversationEvent>().unwrap())
            .collect();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].conversation_id, "CH1");
        assert_eq!(refs[0].session_id, "s-1");
        assert_eq!(
            refs[0].event_type,
            ConversationEventType::ComplianceRecorded
        );
        let r = refs[0].compliance_record.as_ref().unwrap();
        assert_eq!(
            (r.event_id.as_str(), r.kind.as_str()),
            ("c-1", "BLOCKED_OUTBOUND")
        );
        assert_eq!(refs[0].event_id, "compliance-c-1");
    }
}
