//! The account's webhook configuration, as Twilio's read-only endpoints
//! report it: the phone numbers (IncomingPhoneNumbers), the Messaging
//! Services with their numbers, and the Conversations webhooks. Set through
//! [`crate::SandboxConfig`] or the control API; read by `sictl doctor`.
//!
//! Field names are Twilio's (its OpenAPI description): the control API
//! takes the same JSON the list endpoints answer with, minus the bookkeeping.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::twilio::{TwilioError, is_e164, iso8601, rfc2822};

const API_VERSION: &str = "2010-04-01";

fn post() -> String {
    "POST".to_owned()
}

/// One of the account's phone numbers (an IncomingPhoneNumber).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneNumber {
    /// The number, E.164.
    pub phone_number: String,
    /// `PN…`; when left out, derived from the number (`PN` and its digits,
    /// zero-padded to 32), so it is stable.
    #[serde(default)]
    pub sid: Option<String>,
    /// Where Twilio posts an incoming message (unless the number is in a
    /// Messaging Service that does not use the number's webhook).
    #[serde(default)]
    pub sms_url: Option<String>,
    /// `GET` or `POST` (default).
    #[serde(default = "post")]
    pub sms_method: String,
    /// A TwiML App handling messages instead of `sms_url`.
    #[serde(default)]
    pub sms_application_sid: Option<String>,
    /// Where Twilio fetches TwiML for an incoming call.
    #[serde(default)]
    pub voice_url: Option<String>,
    /// `GET` or `POST` (default).
    #[serde(default = "post")]
    pub voice_method: String,
    /// A TwiML App handling calls instead of `voice_url`.
    #[serde(default)]
    pub voice_application_sid: Option<String>,
    /// A SIP trunk handling calls instead of `voice_url`.
    #[serde(default)]
    pub trunk_sid: Option<String>,
    /// Where Twilio posts the status of calls to the number.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Whether the number takes calls (default true).
    #[serde(default = "yes")]
    pub voice_capable: bool,
}

fn yes() -> bool {
    true
}

/// A Messaging Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingService {
    /// `MG…`; when left out, `MG` and its position (1, 2, …) zero-padded to 32.
    #[serde(default)]
    pub sid: Option<String>,
    /// Its name.
    #[serde(default)]
    pub friendly_name: Option<String>,
    /// Where Twilio posts messages to the service's senders (`null`:
    /// inbound messages are dropped), unless `use_inbound_webhook_on_number`.
    #[serde(default)]
    pub inbound_request_url: Option<String>,
    /// `GET` or `POST` (default).
    #[serde(default = "post")]
    pub inbound_method: String,
    /// Where Twilio posts when `inbound_request_url` fails.
    #[serde(default)]
    pub fallback_url: Option<String>,
    /// Where Twilio posts message statuses (a message's own `StatusCallback` wins).
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Whether each number's own `sms_url` is used instead of `inbound_request_url`.
    #[serde(default)]
    pub use_inbound_webhook_on_number: bool,
    /// The service's numbers (E.164), listed by `/v1/Services/{MG}/PhoneNumbers`.
    #[serde(default)]
    pub phone_numbers: Vec<String>,
}

/// The account's Conversations webhooks (`/v1/Configuration/Webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationsWebhooks {
    /// Where pre-event webhooks go.
    #[serde(default)]
    pub pre_webhook_url: Option<String>,
    /// Where post-event webhooks go.
    #[serde(default)]
    pub post_webhook_url: Option<String>,
    /// `GET` or `POST` (default).
    #[serde(default = "post")]
    pub method: String,
    /// The events sent (`onMessageAdded`, `onDeliveryUpdated`, …).
    #[serde(default)]
    pub filters: Vec<String>,
    /// `webhook` (default) or `flex`.
    #[serde(default = "webhook")]
    pub target: String,
}

fn webhook() -> String {
    "webhook".to_owned()
}

impl Default for ConversationsWebhooks {
    fn default() -> Self {
        Self {
            pre_webhook_url: None,
            post_webhook_url: None,
            method: post(),
            filters: Vec::new(),
            target: webhook(),
        }
    }
}

fn check_method(what: &str, method: &str) -> Result<(), String> {
    match method {
        "GET" | "POST" => Ok(()),
        other => Err(format!("{what}: method must be GET or POST, got {other:?}")),
    }
}

/// Checks the numbers and fills in derived SIDs.
///
/// # Errors
/// A number that is not E.164, a method other than GET/POST, a number twice.
pub fn normalize_numbers(mut numbers: Vec<PhoneNumber>) -> Result<Vec<PhoneNumber>, String> {
    let mut seen = std::collections::HashSet::new();
    for number in &mut numbers {
        if !is_e164(&number.phone_number) || number.phone_number.contains(':') {
            return Err(format!(
                "phone_number must be E.164, got {:?}",
                number.phone_number
            ));
        }
        if !seen.insert(number.phone_number.clone()) {
            return Err(format!("{} is listed twice", number.phone_number));
        }
        check_method(&number.phone_number, &number.sms_method)?;
        check_method(&number.phone_number, &number.voice_method)?;
        if number.sid.is_none() {
            let digits: String = number
                .phone_number
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            number.sid = Some(format!("PN{digits:0>32}"));
        }
    }
    Ok(numbers)
}

/// Checks the services and fills in derived SIDs.
///
/// # Errors
/// A method other than GET/POST, a service number that is not E.164.
pub fn normalize_services(
    mut services: Vec<MessagingService>,
) -> Result<Vec<MessagingService>, String> {
    for (position, service) in services.iter_mut().enumerate() {
        if service.sid.is_none() {
            service.sid = Some(format!("MG{:032}", position + 1));
        }
        let sid = service.sid.clone().unwrap_or_default();
        check_method(&sid, &service.inbound_method)?;
        if let Some(bad) = service.phone_numbers.iter().find(|n| !is_e164(n)) {
            return Err(format!("{sid}: phone_numbers must be E.164, got {bad:?}"));
        }
    }
    Ok(services)
}

/// Checks the Conversations webhooks.
///
/// # Errors
/// A method other than GET/POST, a target other than webhook/flex.
pub fn validate_conversations(webhooks: &ConversationsWebhooks) -> Result<(), String> {
    check_method("conversations webhooks", &webhooks.method)?;
    match webhooks.target.as_str() {
        "webhook" | "flex" => Ok(()),
        other => Err(format!("target must be webhook or flex, got {other:?}")),
    }
}

/// The read-only endpoints the sandbox serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// `GET /2010-04-01/Accounts/{AC}.json`
    Account(String),
    /// `GET /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers.json`
    PhoneNumbers(String),
    /// `GET /v1/Services` (Messaging)
    Services,
    /// `GET /v1/Services/{MG}/PhoneNumbers` (Messaging)
    ServicePhoneNumbers(String),
    /// `GET /v1/Configuration/Webhooks` (Conversations)
    ConversationsWebhooks,
}

impl Read {
    /// The read a path names, if any.
    pub fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match segments.as_slice() {
            [API_VERSION, "Accounts", account] => account
                .strip_suffix(".json")
                .filter(|a| !a.is_empty())
                .map(|a| Self::Account(a.to_owned())),
            [
                API_VERSION,
                "Accounts",
                account,
                "IncomingPhoneNumbers.json",
            ] => Some(Self::PhoneNumbers((*account).to_owned())),
            ["v1", "Services"] => Some(Self::Services),
            ["v1", "Services", sid, "PhoneNumbers"] => {
                Some(Self::ServicePhoneNumbers((*sid).to_owned()))
            }
            ["v1", "Configuration", "Webhooks"] => Some(Self::ConversationsWebhooks),
            _ => None,
        }
    }

    /// The account named in the path (checked against the credentials).
    pub fn account(&self) -> Option<&str> {
        match self {
            Self::Account(account) | Self::PhoneNumbers(account) => Some(account),
            _ => None,
        }
    }
}

/// A page of a list: `PageSize` (1 to 1000, default 50) and `Page` (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub size: usize,
    pub index: usize,
}

impl Page {
    /// From the query string.
    ///
    /// # Errors
    /// 400 / 20001 for a size outside 1..=1000 or a malformed number.
    pub fn from_query(query: Option<&str>) -> Result<Self, TwilioError> {
        let mut page = Self { size: 50, index: 0 };
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let invalid = || TwilioError::bad_request(20001, format!("Invalid parameter {name}"));
            match name.as_ref() {
                "PageSize" => {
                    page.size = value.parse().map_err(|_| invalid())?;
                    if !(1..=1000).contains(&page.size) {
                        return Err(invalid());
                    }
                }
                "Page" => page.index = value.parse().map_err(|_| invalid())?,
                _ => {}
            }
        }
        Ok(page)
    }

    fn slice<'a, T>(&self, items: &'a [T]) -> (&'a [T], bool) {
        let start = self.index.saturating_mul(self.size).min(items.len());
        let end = start.saturating_add(self.size).min(items.len());
        (&items[start..end], end < items.len())
    }

    fn query(&self, index: usize) -> String {
        format!("PageSize={}&Page={index}", self.size)
    }
}

/// The 2010 API's list envelope: relative `*_page_uri`s, `start`/`end`.
pub fn v2010_list(path: &str, key: &str, page: Page, items: &[Value]) -> Value {
    let (shown, more) = page.slice(items);
    let start = page.index * page.size;
    let uri = |index: usize| format!("{path}?{}", page.query(index));
    json!({
        key: shown,
        "start": start,
        "end": (start + shown.len()).saturating_sub(1),
        "page": page.index,
        "page_size": page.size,
        "uri": uri(page.index),
        "first_page_uri": uri(0),
        "next_page_uri": more.then(|| uri(page.index + 1)),
        "previous_page_uri": (page.index > 0).then(|| uri(page.index - 1)),
    })
}

/// The v1 APIs' list envelope: absolute `*_page_url`s in `meta`, built on
/// `base` (the sandbox's own address, so a client can follow them).
pub fn v1_list(base: &str, path: &str, key: &str, page: Page, items: &[Value]) -> Value {
    let (shown, more) = page.slice(items);
    let url = |index: usize| format!("{base}{path}?{}", page.query(index));
    json!({
        key: shown,
        "meta": {
            "page": page.index,
            "page_size": page.size,
            "first_page_url": url(0),
            "previous_page_url": (page.index > 0).then(|| url(page.index - 1)),
            "next_page_url": more.then(|| url(page.index + 1)),
            "key": key,
            "url": url(page.index),
        },
    })
}

/// An IncomingPhoneNumber as Twilio's JSON has it.
pub fn phone_number_json(account: &str, number: &PhoneNumber) -> Value {
    let sid = number.sid.clone().unwrap_or_default();
    let created = rfc2822(0);
    let uri = format!("/{API_VERSION}/Accounts/{account}/IncomingPhoneNumbers/{sid}.json");
    json!({
        "account_sid": account,
        "address_requirements": "none",
        "api_version": API_VERSION,
        "beta": false,
        "capabilities": {"voice": number.voice_capable, "sms": true, "mms": true, "fax": false},
        "date_created": created,
        "date_updated": created,
        "friendly_name": number.phone_number,
        "phone_number": number.phone_number,
        "origin": "twilio",
        "sid": sid,
        "sms_application_sid": number.sms_application_sid.clone().unwrap_or_default(),
        "sms_fallback_method": "POST",
        "sms_fallback_url": "",
        "sms_method": number.sms_method,
        "sms_url": number.sms_url.clone().unwrap_or_default(),
        "status_callback": number.status_callback.clone().unwrap_or_default(),
        "status_callback_method": "POST",
        "trunk_sid": number.trunk_sid,
        "uri": uri,
        "voice_application_sid": number.voice_application_sid.clone().unwrap_or_default(),
        "voice_caller_id_lookup": false,
        "voice_fallback_method": "POST",
        "voice_fallback_url": null,
        "voice_method": number.voice_method,
        "voice_url": number.voice_url,
        "voice_receive_mode": "voice",
        "status": "in-use",
    })
}

const MESSAGING_BASE: &str = "https://messaging.twilio.com/v1";

/// A Messaging Service as Twilio's JSON has it.
pub fn service_json(account: &str, service: &MessagingService) -> Value {
    let sid = service.sid.clone().unwrap_or_default();
    let url = format!("{MESSAGING_BASE}/Services/{sid}");
    let created = iso8601(0);
    json!({
        "account_sid": account,
        "area_code_geomatch": true,
        "date_created": created,
        "date_updated": created,
        "fallback_method": "POST",
        "fallback_to_long_code": false,
        "fallback_url": service.fallback_url,
        "friendly_name": service.friendly_name,
        "inbound_method": service.inbound_method,
        "inbound_request_url": service.inbound_request_url,
        "links": {
            "phone_numbers": format!("{url}/PhoneNumbers"),
            "short_codes": format!("{url}/ShortCodes"),
            "alpha_senders": format!("{url}/AlphaSenders"),
        },
        "mms_converter": true,
        "scan_message_content": "inherit",
        "sid": sid,
        "smart_encoding": true,
        "status_callback": service.status_callback,
        "sticky_sender": true,
        "synchronous_validation": true,
        "url": url,
        "us_app_to_person_registered": false,
        "use_inbound_webhook_on_number": service.use_inbound_webhook_on_number,
        "usecase": "undeclared",
        "validity_period": 36000,
    })
}

/// A Messaging Service's PhoneNumber as Twilio's JSON has it.
pub fn service_number_json(
    account: &str,
    service_sid: &str,
    number: &str,
    numbers: &[PhoneNumber],
) -> Value {
    let sid = numbers
        .iter()
        .find(|n| n.phone_number == number)
        .and_then(|n| n.sid.clone())
        .unwrap_or_else(|| {
            let digits: String = number.chars().filter(char::is_ascii_digit).collect();
            format!("PN{digits:0>32}")
        });
    let created = iso8601(0);
    json!({
        "account_sid": account,
        "capabilities": ["SMS", "MMS", "Voice"],
        "country_code": "US",
        "date_created": created,
        "date_updated": created,
        "phone_number": number,
        "service_sid": service_sid,
        "sid": sid,
        "url": format!("{MESSAGING_BASE}/Services/{service_sid}/PhoneNumbers/{sid}"),
    })
}

/// The Conversations webhook configuration as Twilio's JSON has it.
pub fn conversations_webhooks_json(account: &str, webhooks: &ConversationsWebhooks) -> Value {
    json!({
        "account_sid": account,
        "filters": webhooks.filters,
        "method": webhooks.method,
        "post_webhook_url": webhooks.post_webhook_url,
        "pre_webhook_url": webhooks.pre_webhook_url,
        "target": webhooks.target,
        "url": "https://conversations.twilio.com/v1/Configuration/Webhooks",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parse() {
        assert_eq!(
            Read::parse("/2010-04-01/Accounts/AC1.json"),
            Some(Read::Account("AC1".into()))
        );
        assert_eq!(
            Read::parse("/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json"),
            Some(Read::PhoneNumbers("AC1".into()))
        );
        assert_eq!(Read::parse("/v1/Services"), Some(Read::Services));
        assert_eq!(
            Read::parse("/v1/Services/MG1/PhoneNumbers"),
            Some(Read::ServicePhoneNumbers("MG1".into()))
        );
        assert_eq!(
            Read::parse("/v1/Configuration/Webhooks"),
            Some(Read::ConversationsWebhooks)
        );
        assert_eq!(Read::parse("/2010-04-01/Accounts/.json"), None);
        assert_eq!(Read::parse("/2010-04-01/Accounts/AC1/Calls.json"), None);
        assert_eq!(Read::parse("/v1/Conversations"), None);
    }

    #[test]
    fn pages_slice_and_link_the_next_one() -> Result<(), TwilioError> {
        let items: Vec<Value> = (0..5).map(|i| json!(i)).collect();
        let first = Page::from_query(Some("PageSize=2"))?;
        let listed = v2010_list("/x.json", "things", first, &items);
        assert_eq!(listed["things"], json!([0, 1]));
        assert_eq!(listed["start"], 0);
        assert_eq!(listed["end"], 1);
        assert_eq!(listed["next_page_uri"], "/x.json?PageSize=2&Page=1");
        assert_eq!(listed["previous_page_uri"], Value::Null);
        let last = Page::from_query(Some("PageSize=2&Page=2"))?;
        let listed = v1_list("http://h", "/v1/X", "things", last, &items);
        assert_eq!(listed["things"], json!([4]));
        assert_eq!(listed["meta"]["next_page_url"], Value::Null);
        assert_eq!(
            listed["meta"]["previous_page_url"],
            "http://h/v1/X?PageSize=2&Page=1"
        );
        assert_eq!(listed["meta"]["key"], "things");
        assert!(Page::from_query(Some("PageSize=0")).is_err());
        assert!(Page::from_query(Some("PageSize=1001")).is_err());
        assert!(Page::from_query(Some("Page=x")).is_err());
        Ok(())
    }

    #[test]
    fn sids_are_derived_and_bad_numbers_refused() {
        let number = |n: &str| PhoneNumber {
            phone_number: n.to_owned(),
            sid: None,
            sms_url: None,
            sms_method: post(),
            sms_application_sid: None,
            voice_url: None,
            voice_method: post(),
            voice_application_sid: None,
            trunk_sid: None,
            status_callback: None,
            voice_capable: true,
        };
        let numbers = normalize_numbers(vec![number("+14155550100")]).unwrap_or_default();
        assert_eq!(
            numbers[0].sid.as_deref(),
            Some("PN00000000000000000000014155550100")
        );
        assert!(normalize_numbers(vec![number("4155550100")]).is_err());
        assert!(normalize_numbers(vec![number("+14155550100"), number("+14155550100")]).is_err());
        let services = normalize_services(vec![MessagingService {
            sid: None,
            friendly_name: None,
            inbound_request_url: None,
            inbound_method: "PUT".into(),
            fallback_url: None,
            status_callback: None,
            use_inbound_webhook_on_number: false,
            phone_numbers: Vec::new(),
        }]);
        assert!(services.is_err(), "PUT is no webhook method");
    }
}
