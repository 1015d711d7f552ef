//! The Twilio checks of `sictl doctor`: the credentials (the Account
//! resource), then the webhook URLs of the account's Messaging Services,
//! phone numbers and Conversations against `PUBLIC_BASE_URL` plus ingress's
//! routes. Only `GET`s: a fix that changes Twilio is printed for the operator.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Context as _;
use reqwest::Url;
use serde_json::Value;

use super::{CONVERSATIONS_FILTERS, DoctorArgs, Report, Status, routes};

/// The credentials in use, and how to name them in a message.
struct Credentials {
    user: String,
    secret: String,
    kind: String,
    /// `-u` of the printed fixes: the variables, not the values.
    curl_auth: &'static str,
}

/// As egress chooses ([`si_twilio_credentials`]): the files of
/// TWILIO_CREDENTIALS_DIR win over the environment's; the API key pair wins
/// over the Auth Tokens, and the secondary token over the primary.
async fn credentials(args: &DoctorArgs, account: &str) -> anyhow::Result<Option<Credentials>> {
    use si_twilio_credentials::{Kind, Names, Parts, choose, read_dir};
    let dir = args
        .credentials_dir
        .as_deref()
        .filter(|d| !d.as_os_str().is_empty());
    let from_dir = match dir {
        Some(dir) => read_dir(dir, account).await.map_err(anyhow::Error::msg)?,
        None => None,
    };
    let (chosen, source) = match from_dir {
        Some(chosen) => (chosen, "TWILIO_CREDENTIALS_DIR"),
        None => {
            let parts = Parts::of(
                args.auth_token.as_ref(),
                args.auth_token_secondary.as_ref(),
                args.api_key_sid.as_ref(),
                args.api_key_secret.as_ref(),
            );
            if parts.is_empty() {
                return Ok(None);
            }
            let chosen = choose(account, parts, Names::ENV)
                .map_err(|e| anyhow::anyhow!("{e} (in the environment)"))?;
            (chosen, "the environment")
        }
    };
    let (kind, curl_auth) = match chosen.kind {
        Kind::ApiKey => (
            format!("API key {} from {source}", chosen.user),
            "$TWILIO_API_KEY_SID:$TWILIO_API_KEY_SECRET",
        ),
        Kind::AuthToken => (
            format!("the Auth Token from {source}"),
            "$TWILIO_ACCOUNT_SID:$TWILIO_AUTH_TOKEN",
        ),
        Kind::SecondaryAuthToken => (
            format!("the secondary Auth Token from {source}"),
            "$TWILIO_ACCOUNT_SID:$TWILIO_AUTH_TOKEN_SECONDARY",
        ),
    };
    Ok(Some(Credentials {
        user: chosen.user,
        secret: chosen.password,
        kind,
        curl_auth,
    }))
}

/// A read-only Twilio client.
struct Twilio {
    http: reqwest::Client,
    credentials: Credentials,
    page_size: u32,
}

/// Why a Twilio GET gave no resource.
enum Refusal {
    /// Twilio answered with an error.
    Status {
        status: u16,
        code: Option<u64>,
        message: String,
    },
    /// No answer.
    Unreachable(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status {
                status,
                code,
                message,
            } => {
                write!(f, "HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, ", code {code}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Self::Unreachable(error) => write!(f, "no answer: {error}"),
        }
    }
}

impl Twilio {
    async fn get(&self, url: &str) -> Result<Value, Refusal> {
        let response = self
            .http
            .get(url)
            .basic_auth(&self.credentials.user, Some(&self.credentials.secret))
            .send()
            .await
            .map_err(|e| Refusal::Unreachable(causes(&e)))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(Refusal::Status {
                status: status.as_u16(),
                code: body["code"].as_u64(),
                message: body["message"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }

    /// Every item of a list, following its pages on `base` (never on another
    /// host a page link names: the credentials go only where configured).
    async fn list(&self, base: &str, path: &str, key: &str) -> Result<Vec<Value>, Refusal> {
        let base = base.trim_end_matches('/');
        let mut next = Some(format!("{path}?PageSize={}", self.page_size));
        let mut items = Vec::new();
        // A broken server linking pages in a circle would loop forever.
        for _ in 0..10_000 {
            let Some(path_and_query) = next.take() else {
                return Ok(items);
            };
            let page = self.get(&format!("{base}{path_and_query}")).await?;
            items.extend(page[key].as_array().cloned().unwrap_or_default());
            let link = page["next_page_uri"]
                .as_str()
                .or_else(|| page["meta"]["next_page_url"].as_str())
                .filter(|l| !l.is_empty());
            next = link.map(path_and_query_of);
        }
        Ok(items)
    }
}

/// An error with its causes (reqwest's own message leaves out why a
/// connection failed).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `/path?query` of a relative or absolute link.
fn path_and_query_of(link: &str) -> String {
    match Url::parse(link) {
        Ok(url) => match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        },
        Err(_) => link.to_owned(),
    }
}

/// How a webhook URL Twilio has compares with the one it should be.
#[derive(Debug, PartialEq, Eq)]
enum Match {
    /// The same URL (scheme, host, port, path; query and fragment aside).
    Ours,
    /// Not set.
    Empty,
    /// Somewhere else.
    Elsewhere,
}

fn compare(configured: Option<&str>, expected: &Url) -> Match {
    let Some(configured) = configured.map(str::trim).filter(|c| !c.is_empty()) else {
        return Match::Empty;
    };
    let Ok(url) = Url::parse(configured) else {
        return Match::Elsewhere;
    };
    let same = url.scheme() == expected.scheme()
        && url.host_str().map(str::to_ascii_lowercase)
            == expected.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == expected.port_or_known_default()
        && url.path().trim_end_matches('/') == expected.path().trim_end_matches('/');
    if same { Match::Ours } else { Match::Elsewhere }
}

fn shown(value: Option<&str>) -> String {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => v.to_owned(),
        None => "(empty)".to_owned(),
    }
}

fn text<'a>(item: &'a Value, field: &str) -> Option<&'a str> {
    item[field]
        .as_str()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Ingress's URLs under PUBLIC_BASE_URL.
struct Expected {
    base: Url,
}

impl Expected {
    fn new(public_base_url: &str) -> anyhow::Result<Self> {
        let base = Url::parse(public_base_url.trim()).context("not a URL")?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https") && base.host_str().is_some(),
            "must be an http(s) URL with a host"
        );
        Ok(Self { base })
    }

    /// The base URL with `route` after its path (a proxy's prefix kept).
    fn url(&self, route: &str) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}{route}", self.base.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        url
    }
}

/// A `curl` that sets `params` on a Twilio resource (the operator runs it;
/// the doctor never writes to Twilio). `auth` names the credentials by their
/// variables, never their values.
fn curl_update(url: &str, auth: &str, params: &[(&str, String)]) -> String {
    let mut command = format!("curl -X POST '{url}' -u \"{auth}\"");
    for (name, value) in params {
        command.push_str(&format!(" --data-urlencode '{name}={value}'"));
    }
    command
}

const CREDENTIALS: &str = "twilio.credentials";
const NUMBERS: &str = "twilio.numbers";
const SERVICES: &str = "twilio.messaging-services";
const CONVERSATIONS: &str = "twilio.conversations";

/// The Twilio checks: the credentials first; the webhook URLs only once
/// Twilio accepts them.
pub(super) async fn check(report: &mut Report, args: &DoctorArgs) {
    let Some((sid, twilio)) = connect(report, args).await else {
        return;
    };
    if !credentials_accepted(report, &twilio, args, sid).await {
        return;
    }
    let Some(expected) = expected(report, args) else {
        return;
    };
    let account = Account {
        twilio,
        args,
        sid,
        expected,
    };
    let routed = account.services(report).await;
    account.numbers(report, &routed).await;
    if !args.skip_conversations {
        account.conversations(report).await;
    }
}

/// The account SID and a client with the configured credentials.
async fn connect<'a>(report: &mut Report, args: &'a DoctorArgs) -> Option<(&'a str, Twilio)> {
    let Some(sid) = args.account_sid.as_deref().filter(|a| !a.is_empty()) else {
        report.fail(
            CREDENTIALS,
            None,
            "TWILIO_ACCOUNT_SID is not set: Twilio is not checked",
            "set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET, or TWILIO_CREDENTIALS_DIR) as egress has them",
        );
        return None;
    };
    let credentials = match credentials(args, sid).await {
        Ok(Some(credentials)) => credentials,
        Ok(None) => {
            report.fail(
                CREDENTIALS,
                Some(sid),
                "no credentials: neither TWILIO_AUTH_TOKEN nor TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET nor TWILIO_CREDENTIALS_DIR is set",
                "set them as egress has them (the release's Secret; docs/runbooks/credential-compromise.md)",
            );
            return None;
        }
        Err(error) => {
            report.fail(
                CREDENTIALS,
                Some(sid),
                format!("{error:#}"),
                "set both TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET (or api-key-sid and api-key-secret in TWILIO_CREDENTIALS_DIR), or only the Auth Token",
            );
            return None;
        }
    };
    match reqwest::Client::builder().timeout(args.timeout).build() {
        Ok(http) => Some((
            sid,
            Twilio {
                http,
                credentials,
                page_size: args.page_size,
            },
        )),
        Err(error) => {
            report.fail(
                CREDENTIALS,
                None,
                format!("no HTTP client: {error}"),
                "check the TLS setup of this machine",
            );
            None
        }
    }
}

/// Fetches the Account resource: the credentials work and the account is active.
async fn credentials_accepted(
    report: &mut Report,
    twilio: &Twilio,
    args: &DoctorArgs,
    sid: &str,
) -> bool {
    let api = args.api_base_url.trim_end_matches('/');
    let url = format!("{api}/2010-04-01/Accounts/{sid}.json");
    let kind = &twilio.credentials.kind;
    match twilio.get(&url).await {
        Ok(resource) => match resource["status"].as_str().unwrap_or("?") {
            "active" => {
                let name = resource["friendly_name"].as_str().unwrap_or("");
                report.ok(
                    CREDENTIALS,
                    Some(sid),
                    format!("{api} accepts {kind} (account \"{name}\" is active)"),
                );
                true
            }
            status => {
                report.fail(
                    CREDENTIALS,
                    Some(sid),
                    format!("the account is {status}: Twilio sends nothing for it"),
                    "reactivate the account in the Twilio Console or point TWILIO_ACCOUNT_SID at the right one",
                );
                false
            }
        },
        Err(
            refusal @ Refusal::Status {
                status: 401 | 403, ..
            },
        ) => {
            report.fail(
                CREDENTIALS,
                Some(sid),
                format!("{api} refuses {kind} ({refusal}): webhook URLs are not checked"),
                "put the account's current Auth Token (or a Main API key pair) into the deployment's Secret and TWILIO_* settings; if they may have leaked, follow docs/runbooks/credential-compromise.md. A Standard API key cannot read the Account resource: use a Main key here",
            );
            false
        }
        Err(refusal) => {
            report.fail(
                CREDENTIALS,
                Some(sid),
                format!("{url}: {refusal}: webhook URLs are not checked"),
                "check TWILIO_API_BASE_URL and that this machine reaches Twilio on 443 (docs/runbooks/twilio-outage.md; status.twilio.com)",
            );
            false
        }
    }
}

/// Ingress's URLs, from PUBLIC_BASE_URL.
fn expected(report: &mut Report, args: &DoctorArgs) -> Option<Expected> {
    let Some(base) = args
        .public_base_url
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    else {
        report.fail(
            NUMBERS,
            None,
            "PUBLIC_BASE_URL is not set: the webhook URLs cannot be compared",
            "set PUBLIC_BASE_URL (or --public-base-url) to ingress's, e.g. from `helm get values $REL -n $NS -a | grep PUBLIC_BASE_URL`",
        );
        return None;
    };
    match Expected::new(base) {
        Ok(expected) => Some(expected),
        Err(error) => {
            report.fail(
                NUMBERS,
                None,
                format!("PUBLIC_BASE_URL {base:?}: {error:#}"),
                "set PUBLIC_BASE_URL to ingress's public https URL (scheme, host, any path prefix)",
            );
            None
        }
    }
}

/// Which numbers a service routes itself: number → service SID, for the
/// services that do not use the numbers' own webhook.
type ServiceRouted = BTreeMap<String, String>;

/// The account whose webhook URLs are checked.
struct Account<'a> {
    twilio: Twilio,
    args: &'a DoctorArgs,
    sid: &'a str,
    expected: Expected,
}

/// The findings about one resource: each problem is reported at once, and
/// the resource gets one `ok` line (its notes) when it had none.
struct Judged<'r> {
    report: &'r mut Report,
    check: &'static str,
    subject: String,
    problems: usize,
    notes: Vec<String>,
}

impl<'r> Judged<'r> {
    fn new(report: &'r mut Report, check: &'static str, subject: String) -> Self {
        Self {
            report,
            check,
            subject,
            problems: 0,
            notes: Vec::new(),
        }
    }

    fn warn(&mut self, message: impl Into<String>, fix: impl Into<String>) {
        self.problems += 1;
        self.report
            .warn(self.check, Some(&self.subject), message, fix);
    }

    fn fail(&mut self, message: impl Into<String>, fix: impl Into<String>) {
        self.problems += 1;
        self.report
            .fail(self.check, Some(&self.subject), message, fix);
    }

    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Compares the URL in `field` with `wanted`: a URL elsewhere fails; an
    /// empty one is `when_empty` (`None`: fine), with its consequence.
    fn url(
        &mut self,
        resource: &Value,
        field: &str,
        wanted: &Url,
        when_empty: Option<(Status, &str)>,
        fix: &str,
    ) {
        let configured = text(resource, field);
        match (compare(configured, wanted), when_empty) {
            (Match::Ours, _) => self.note(format!("{field} {wanted}")),
            (Match::Empty, None) => {}
            (Match::Empty, Some((status, consequence))) => {
                let message = format!("{field} is empty: {consequence}, expected {wanted}");
                if status == Status::Fail {
                    self.fail(message, fix);
                } else {
                    self.warn(message, fix);
                }
            }
            (Match::Elsewhere, _) => self.fail(
                format!("{field} is {}, expected {wanted}", shown(configured)),
                fix,
            ),
        }
    }

    /// Ingress takes POST only.
    fn post(&mut self, resource: &Value, field: &str, fix: &str) {
        if let Some(method) = text(resource, field).filter(|m| !m.eq_ignore_ascii_case("POST")) {
            self.fail(format!("{field} is {method}: ingress takes POST only"), fix);
        }
    }

    fn finish(self, ok: Option<String>) {
        if self.problems == 0 {
            let message = ok.unwrap_or_else(|| self.notes.join(", "));
            self.report.ok(self.check, Some(&self.subject), message);
        }
    }
}

fn post_param(name: &'static str) -> (&'static str, String) {
    (name, "POST".to_owned())
}

impl Account<'_> {
    fn fix(&self, url: &str, params: &[(&str, String)]) -> String {
        curl_update(url, self.twilio.credentials.curl_auth, params)
    }

    /// Checks the Messaging Services; returns the numbers they route themselves.
    async fn services(&self, report: &mut Report) -> ServiceRouted {
        let mut routed = ServiceRouted::new();
        let base = self.args.messaging_base_url.trim_end_matches('/');
        let services = match self.twilio.list(base, "/v1/Services", "services").await {
            Ok(services) => services,
            Err(refusal) => {
                report.fail(
                    SERVICES,
                    None,
                    format!("{base}/v1/Services: {refusal}"),
                    "check TWILIO_MESSAGING_BASE_URL; the credentials need read access to Messaging Services",
                );
                return routed;
            }
        };
        let ours = |sid: &str| {
            self.args.messaging_services.is_empty()
                || self.args.messaging_services.iter().any(|s| s == sid)
        };
        for wanted in &self.args.messaging_services {
            if !services.iter().any(|s| text(s, "sid") == Some(wanted)) {
                report.fail(
                    SERVICES,
                    Some(wanted),
                    format!("not a Messaging Service of account {}", self.sid),
                    "check --messaging-service, or the account (TWILIO_ACCOUNT_SID)",
                );
            }
        }
        for service in services
            .iter()
            .filter(|s| ours(text(s, "sid").unwrap_or("")))
        {
            self.service(report, service, &mut routed).await;
        }
        routed
    }

    async fn service(&self, report: &mut Report, service: &Value, routed: &mut ServiceRouted) {
        let base = self.args.messaging_base_url.trim_end_matches('/');
        let sid = text(service, "sid").unwrap_or("MG?");
        let url = format!("{base}/v1/Services/{sid}");
        let subject = match text(service, "friendly_name") {
            Some(name) => format!("{sid} ({name})"),
            None => sid.to_owned(),
        };
        let mut judged = Judged::new(report, SERVICES, subject);
        let inbound = self.expected.url(routes::MESSAGING_INBOUND);
        if service["use_inbound_webhook_on_number"].as_bool() == Some(true) {
            judged.note("inbound through the numbers' sms_url (use_inbound_webhook_on_number)");
        } else {
            let path = format!("/v1/Services/{sid}/PhoneNumbers");
            match self.twilio.list(base, &path, "phone_numbers").await {
                Ok(numbers) => routed.extend(
                    numbers
                        .iter()
                        .filter_map(|n| text(n, "phone_number"))
                        .map(|n| (n.to_owned(), sid.to_owned())),
                ),
                Err(refusal) => judged.warn(
                    format!("its phone numbers cannot be listed ({refusal}): its numbers are judged by their own sms_url"),
                    "give the credentials read access to the service's senders",
                ),
            }
            let fix = self.fix(
                &url,
                &[
                    ("InboundRequestUrl", inbound.to_string()),
                    post_param("InboundMethod"),
                ],
            );
            judged.url(
                service,
                "inbound_request_url",
                &inbound,
                Some((Status::Fail, "messages to its senders are dropped")),
                &fix,
            );
            judged.post(service, "inbound_method", &fix);
        }
        let status = self.expected.url(routes::MESSAGING_STATUS);
        judged.url(
            service,
            "status_callback",
            &status,
            Some((
                Status::Warn,
                "statuses arrive only for messages sent with their own StatusCallback (egress's STATUS_CALLBACK_BASE_URL)",
            )),
            &self.fix(&url, &[("StatusCallback", status.to_string())]),
        );
        judged.finish(None);
    }

    /// Checks the phone numbers (those in `routed` by their service).
    async fn numbers(&self, report: &mut Report, routed: &ServiceRouted) {
        let api = self.args.api_base_url.trim_end_matches('/');
        let path = format!(
            "/2010-04-01/Accounts/{}/IncomingPhoneNumbers.json",
            self.sid
        );
        let numbers = match self.twilio.list(api, &path, "incoming_phone_numbers").await {
            Ok(numbers) => numbers,
            Err(refusal) => {
                report.fail(
                    NUMBERS,
                    None,
                    format!("{api}{path}: {refusal}"),
                    "the credentials need read access to the account's phone numbers",
                );
                return;
            }
        };
        let wanted = &self.args.numbers;
        for number in wanted {
            if !numbers
                .iter()
                .any(|n| text(n, "phone_number") == Some(number))
            {
                report.fail(
                    NUMBERS,
                    Some(number),
                    format!("not a phone number of account {}", self.sid),
                    "check --number, or the account (TWILIO_ACCOUNT_SID)",
                );
            }
        }
        if numbers.is_empty() && wanted.is_empty() {
            report.warn(
                NUMBERS,
                None,
                format!("account {} has no phone numbers", self.sid),
                "buy or port the numbers Si uses into this account, or point TWILIO_ACCOUNT_SID at the right one",
            );
        }
        for number in &numbers {
            let phone = text(number, "phone_number").unwrap_or("?");
            if wanted.is_empty() || wanted.iter().any(|n| n == phone) {
                self.number(report, routed, number, phone);
            }
        }
    }

    fn number(&self, report: &mut Report, routed: &ServiceRouted, number: &Value, phone: &str) {
        let sid = text(number, "sid").unwrap_or("PN?");
        let url = format!(
            "{}/2010-04-01/Accounts/{}/IncomingPhoneNumbers/{sid}.json",
            self.args.api_base_url.trim_end_matches('/'),
            self.sid
        );
        let mut judged = Judged::new(report, NUMBERS, format!("{phone} ({sid})"));
        match routed.get(phone) {
            Some(service) => judged.note(format!("messages through Messaging Service {service}")),
            None => self.number_messages(&mut judged, number, &url),
        }
        if number["capabilities"]["voice"].as_bool() == Some(false) {
            judged.note("no voice");
        } else {
            self.number_calls(&mut judged, number, &url);
        }
        judged.finish(None);
    }

    /// Where a number's messages go (when no Messaging Service routes them).
    fn number_messages(&self, judged: &mut Judged<'_>, number: &Value, url: &str) {
        let inbound = self.expected.url(routes::MESSAGING_INBOUND);
        let mut params = vec![("SmsUrl", inbound.to_string()), post_param("SmsMethod")];
        if let Some(app) = text(number, "sms_application_sid") {
            params.insert(0, ("SmsApplicationSid", String::new()));
            judged.warn(
                format!("messages go to TwiML App {app} (its SmsUrl is not checked), expected sms_url {inbound}"),
                self.fix(url, &params),
            );
            return;
        }
        let fix = self.fix(url, &params);
        judged.url(
            number,
            "sms_url",
            &inbound,
            Some((Status::Fail, "incoming messages reach nobody")),
            &fix,
        );
        judged.post(number, "sms_method", &fix);
    }

    /// Where a number's calls and their statuses go.
    fn number_calls(&self, judged: &mut Judged<'_>, number: &Value, url: &str) {
        let answer = self.expected.url(routes::VOICE_ANSWER);
        let mut params = vec![("VoiceUrl", answer.to_string()), post_param("VoiceMethod")];
        if let Some(other) =
            text(number, "trunk_sid").or_else(|| text(number, "voice_application_sid"))
        {
            params.insert(0, ("VoiceApplicationSid", String::new()));
            judged.warn(
                format!("calls go to {other} (not checked), expected voice_url {answer}"),
                self.fix(url, &params),
            );
            return;
        }
        let fix = self.fix(url, &params);
        judged.url(
            number,
            "voice_url",
            &answer,
            Some((Status::Warn, "calls to the number are not answered by Si")),
            &fix,
        );
        judged.post(number, "voice_method", &fix);
        let status = self.expected.url(routes::VOICE_STATUS);
        judged.url(
            number,
            "status_callback",
            &status,
            None,
            &self.fix(
                url,
                &[
                    ("StatusCallback", status.to_string()),
                    post_param("StatusCallbackMethod"),
                ],
            ),
        );
    }

    /// Checks the account's Conversations webhooks.
    async fn conversations(&self, report: &mut Report) {
        let base = self.args.conversations_base_url.trim_end_matches('/');
        let url = format!("{base}/v1/Configuration/Webhooks");
        let webhooks = match self.twilio.get(&url).await {
            Ok(webhooks) => webhooks,
            Err(refusal) => {
                report.fail(
                    CONVERSATIONS,
                    None,
                    format!("{url}: {refusal}"),
                    "check TWILIO_CONVERSATIONS_BASE_URL; with no Conversations in this deployment, run with --skip-conversations",
                );
                return;
            }
        };
        let events = self.expected.url(routes::CONVERSATIONS_EVENTS);
        let mut params = vec![("PostWebhookUrl", events.to_string()), post_param("Method")];
        params.extend(
            CONVERSATIONS_FILTERS
                .iter()
                .map(|f| ("Filters", (*f).to_owned())),
        );
        let fix = self.fix(&url, &params);
        let mut judged = Judged::new(report, CONVERSATIONS, self.sid.to_owned());
        judged.url(
            &webhooks,
            "post_webhook_url",
            &events,
            Some((
                Status::Warn,
                "Conversations events reach nobody (nothing to do if Si uses no Conversations: --skip-conversations)",
            )),
            &fix,
        );
        judged.post(&webhooks, "method", &fix);
        if text(&webhooks, "post_webhook_url").is_some() {
            let filters: Vec<&str> = webhooks["filters"]
                .as_array()
                .map(|f| f.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let missing: Vec<&str> = CONVERSATIONS_FILTERS
                .iter()
                .copied()
                .filter(|f| !filters.contains(f))
                .collect();
            if !missing.is_empty() {
                judged.warn(
                    format!(
                        "filters lack {}: those events are never sent",
                        missing.join(", ")
                    ),
                    fix.as_str(),
                );
            }
        }
        let pre = self.expected.url(routes::CONVERSATIONS_PRE_EVENT);
        let configured = text(&webhooks, "pre_webhook_url");
        if compare(configured, &pre) == Match::Elsewhere {
            judged.warn(
                format!("pre_webhook_url is {}: that service can block or change messages before Si sees them; ingress's is {pre}", shown(configured)),
                "leave PreWebhookUrl empty or point it at ingress, unless that service is intended",
            );
        }
        judged.finish(Some(format!(
            "post_webhook_url {events} with the events normalize reads"
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn urls_compare_by_scheme_host_port_and_path() -> anyhow::Result<()> {
        let inbound = Expected::new("https://si.example.com/")?.url(routes::MESSAGING_INBOUND);
        assert_eq!(
            inbound.as_str(),
            "https://si.example.com/twilio/messaging/inbound"
        );
        for same in [
            "https://si.example.com/twilio/messaging/inbound",
            "https://SI.example.com:443/twilio/messaging/inbound/",
            "https://si.example.com/twilio/messaging/inbound?locale=es#rc=3&ct=2000",
        ] {
            assert_eq!(compare(Some(same), &inbound), Match::Ours, "{same}");
        }
        for other in [
            "http://si.example.com/twilio/messaging/inbound",
            "https://si.example.com:8443/twilio/messaging/inbound",
            "https://old.example.com/twilio/messaging/inbound",
            "https://si.example.com/sms",
            "not a url",
        ] {
            assert_eq!(compare(Some(other), &inbound), Match::Elsewhere, "{other}");
        }
        assert_eq!(compare(None, &inbound), Match::Empty);
        assert_eq!(compare(Some("  "), &inbound), Match::Empty);
        Ok(())
    }

    #[test]
    fn a_path_prefix_of_the_public_url_is_kept() -> anyhow::Result<()> {
        let prefixed = Expected::new("https://example.com/si/")?;
        assert_eq!(
            prefixed.url(routes::VOICE_ANSWER).as_str(),
            "https://example.com/si/twilio/voice/answer"
        );
        assert!(Expected::new("si.example.com").is_err());
        assert!(Expected::new("ftp://si.example.com").is_err());
        Ok(())
    }

    #[test]
    fn page_links_keep_only_path_and_query() {
        assert_eq!(
            path_and_query_of(
                "https://messaging.twilio.com/v1/Services?PageSize=50&Page=1&PageToken=PT1"
            ),
            "/v1/Services?PageSize=50&Page=1&PageToken=PT1"
        );
        assert_eq!(
            path_and_query_of("/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?Page=1"),
            "/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?Page=1"
        );
    }

    fn args() -> DoctorArgs {
        DoctorArgs {
            public_base_url: None,
            account_sid: Some("AC1".into()),
            auth_token: Some("token".into()),
            auth_token_secondary: None,
            api_key_sid: None,
            api_key_secret: None,
            credentials_dir: None,
            api_base_url: String::new(),
            messaging_base_url: String::new(),
            conversations_base_url: String::new(),
            numbers: Vec::new(),
            messaging_services: Vec::new(),
            skip_conversations: false,
            timeout: Duration::from_secs(1),
            page_size: 50,
            json: false,
        }
    }

    #[tokio::test]
    async fn credentials_are_chosen_as_egress_chooses() -> anyhow::Result<()> {
        let token = credentials(&args(), "AC1").await?.context("credentials")?;
        assert_eq!(
            (token.user.as_str(), token.secret.as_str()),
            ("AC1", "token")
        );
        let secondary = DoctorArgs {
            auth_token_secondary: Some("next".into()),
            ..args()
        };
        let secondary = credentials(&secondary, "AC1")
            .await?
            .context("credentials")?;
        assert_eq!(secondary.secret, "next", "the secondary token wins");
        assert_eq!(
            secondary.curl_auth,
            "$TWILIO_ACCOUNT_SID:$TWILIO_AUTH_TOKEN_SECONDARY"
        );
        let key = credentials(
            &DoctorArgs {
                api_key_sid: Some("SK1".into()),
                api_key_secret: Some("secret".into()),
                ..args()
            },
            "AC1",
        )
        .await?
        .context("credentials")?;
        assert_eq!((key.user.as_str(), key.secret.as_str()), ("SK1", "secret"));
        let half = DoctorArgs {
            api_key_sid: Some("SK1".into()),
            ..args()
        };
        assert!(credentials(&half, "AC1").await.is_err());

        let dir = std::env::temp_dir().join(format!("doctor-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("auth-token"), "from-file\n")?;
        let files = credentials(
            &DoctorArgs {
                credentials_dir: Some(dir.clone()),
                ..args()
            },
            "AC1",
        )
        .await?
        .context("credentials")?;
        assert_eq!(files.secret, "from-file");
        assert_eq!(files.kind, "the Auth Token from TWILIO_CREDENTIALS_DIR");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
