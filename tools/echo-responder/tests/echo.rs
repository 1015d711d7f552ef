//! The echo responder binary on the real local broker: N inbound messages give
//! exactly N responses, keyed by conversation, answering each message.

use std::collections::BTreeMap;
use std::time::Duration;

use si_schemas::records::{Channel, CognitionResponse, InboundMessage, InboundPurpose};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::process::StageProcess;

fn inbound(i: usize) -> InboundMessage {
    InboundMessage {
        message_id: format!("msg-{i}"),
        conversation_id: format!("pm-conv-{}", i % 3),
        session_id: format!("s-{}", i % 3),
        user_id: None,
        visitor_id: Some("v-1".into()),
        registered: false,
        channel: Channel::Sms,
        locale: if i.is_multiple_of(2) {
            "en".into()
        } else {
            "es".into()
        },
        text: format!("hello #{i} ¿qué tal?"),
        media: Vec::new(),
        received_at: 1_700_000_000_000,
        event_id: format!("e-{i}"),
        first_contact: i < 3,
        possible_revocation: false,
        traceparent: None,
        purpose: InboundPurpose::UserMessage,
        stored_media: Vec::new(),
        location: None,
        profile_name: None,
        button_payload: None,
    }
}

#[tokio::test]
async fn every_inbound_message_gets_one_echo() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let n = 12;
    for i in 0..n {
        let message = inbound(i);
        env.produce(topics::INBOUND, &message.conversation_id.clone(), &message)
            .await?;
    }
    let mut echo = StageProcess::spawn(&env, "si-echo-responder", "pod-a", &[])?;
    echo.ready(Duration::from_secs(60)).await?;
    let responses = env
        .read::<CognitionResponse>(topics::RESPONSES, n, Duration::from_secs(60))
        .await?;
    let by_reply: BTreeMap<String, (Option<String>, CognitionResponse)> = responses
        .into_iter()
        .map(|(key, r)| (r.in_reply_to.clone().unwrap_or_default(), (key, r)))
        .collect();
    assert_eq!(by_reply.len(), n, "one response per message");
    for i in 0..n {
        let message = inbound(i);
        let (key, response) = &by_reply[&message.message_id];
        assert_eq!(key.as_deref(), Some(message.conversation_id.as_str()));
        assert_eq!(response.response_id, format!("echo-{}", message.message_id));
        assert_eq!(response.text, format!("Echo: {}", message.text));
        assert_eq!(response.locale.as_deref(), Some(message.locale.as_str()));
        assert_eq!(response.session_id, message.session_id);
    }
    echo.terminate(Duration::from_secs(30))?;
    Ok(())
}
