//! Access to a webhook's parameters: the form parameters ingress stored, or the
//! top-level fields of a JSON body (nested objects flattened with `.`, so
//! `{"MessagingBinding":{"Address":…}}` reads as `MessagingBinding.Address`).

use serde_json::Value;
use si_schemas::records::TwilioWebhook;

/// The parameters of one webhook.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The parameters of `webhook`. A JSON body that does not parse yields an
    /// error message (the record is invalid).
    ///
    /// # Errors
    /// When the body claims to be JSON and is not a JSON object.
    pub fn of(webhook: &TwilioWebhook) -> Result<Self, String> {
        let mut pairs: Vec<(String, String)> = webhook
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        if pairs.is_empty()
            && let Some(body) = &webhook.body
            && webhook.content_type.to_ascii_lowercase().contains("json")
        {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| format!("JSON body does not parse: {e}"))?;
            let Value::Object(map) = value else {
                return Err("JSON body is not an object".into());
            };
            for (k, v) in map {
                flatten(&k, v, &mut pairs);
            }
        }
        Ok(Self { pairs })
    }

    /// Parameters from name/value pairs (tests).
    #[must_use]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self {
            pairs: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The first non-empty value of `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name` parsed as a number.
    #[must_use]
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.get(name).and_then(|v| v.trim().parse().ok())
    }
}

fn flatten(prefix: &str, value: Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::String(s) => out.push((prefix.to_owned(), s)),
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        other @ Value::Array(_) => out.push((prefix.to_owned(), other.to_string())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use si_schemas::records::WebhookRoute;

    fn webhook(content_type: &str, body: &[u8]) -> TwilioWebhook {
        TwilioWebhook {
            webhook_id: "w".into(),
            received_at: 0,
            route: WebhookRoute::ConversationsPostEvent,
            event_type: None,
            account_sid: None,
            resource_sid: None,
            idempotency_token: None,
            content_type: content_type.into(),
            params: vec![],
            body: Some(body.to_vec()),
            query: None,
            headers: Default::default(),
            conversation_hint: None,
            traceparent: None,
        }
    }

    #[test]
    fn json_bodies_are_flattened() -> Result<(), String> {
        let p = Params::of(&webhook(
            "application/json",
            br#"{"EventType":"onParticipantAdded","MessagingBinding":{"Address":"+14155550100"},"Index":3,"Media":[{"Sid":"ME1"}]}"#,
        ))?;
        assert_eq!(p.get("EventType"), Some("onParticipantAdded"));
        assert_eq!(p.get("MessagingBinding.Address"), Some("+14155550100"));
        assert_eq!(p.number::<i64>("Index"), Some(3));
        assert_eq!(p.get("Media"), Some(r#"[{"Sid":"ME1"}]"#));
        assert!(Params::of(&webhook("application/json", b"[1]")).is_err());
        assert!(Params::of(&webhook("application/json", b"{")).is_err());
        Ok(())
    }

    #[test]
    fn empty_values_count_as_absent() {
        let p = Params::from_pairs(&[("Body", ""), ("Body", "hi"), ("To", " ")]);
        assert_eq!(p.get("Body"), Some("hi"));
        assert_eq!(p.get("To"), None);
    }
}
