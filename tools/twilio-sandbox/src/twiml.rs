//! TwiML as the sandbox plays it: a document parsed with a real XML parser
//! (roxmltree: well-formedness, entities, CDATA) into the verbs ingress uses.
//!
//! A document that is not XML, or whose root is not `<Response>`, is Twilio's
//! error 12100 (Document parse failure); a verb or noun the sandbox does not
//! play, or one missing what it needs, is 12200 (Schema validation). Either way
//! Twilio says "An application error has occurred" and hangs up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::webhook::Method as HttpMethod;

/// Twilio's error for a document that cannot be parsed.
pub const DOCUMENT_PARSE_FAILURE: u32 = 12100;
/// Twilio's error for a document that is XML but not valid TwiML.
pub const SCHEMA_VALIDATION: u32 = 12200;
/// Twilio's error for an answer URL that could not be fetched.
pub const HTTP_RETRIEVAL_FAILURE: u32 = 11200;

/// Why a document cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwimlError {
    /// Twilio's error code (12100, 12200).
    pub code: u32,
    pub message: String,
}

impl TwimlError {
    fn parse(message: impl Into<String>) -> Self {
        Self {
            code: DOCUMENT_PARSE_FAILURE,
            message: message.into(),
        }
    }

    fn schema(message: impl Into<String>) -> Self {
        Self {
            code: SCHEMA_VALIDATION,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for TwimlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// One element as written: name, attributes, text, children. The call's step
/// log shows these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Element {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Element>,
}

impl Element {
    fn from_node(node: roxmltree::Node<'_, '_>) -> Self {
        let attributes = node
            .attributes()
            .map(|a| (a.name().to_owned(), a.value().to_owned()))
            .collect();
        let text: String = node
            .descendants()
            .filter(roxmltree::Node::is_text)
            .filter_map(|t| t.text())
            .collect();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        Self {
            name: node.tag_name().name().to_owned(),
            attributes,
            text: (!text.is_empty()).then_some(text),
            children: node
                .children()
                .filter(roxmltree::Node::is_element)
                .map(Self::from_node)
                .collect(),
        }
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, TwimlError> {
        self.attr(name).ok_or_else(|| {
            TwimlError::schema(format!("<{}> needs the attribute {name}", self.name))
        })
    }

    fn secs(&self, name: &str, default: u64) -> Result<u64, TwimlError> {
        self.attr(name).map_or(Ok(default), |v| {
            v.trim().parse().map_err(|_| {
                TwimlError::schema(format!("<{}> {name}=\"{v}\" is not a number", self.name))
            })
        })
    }

    fn flag(&self, name: &str) -> bool {
        self.attr(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn method(&self) -> Result<HttpMethod, TwimlError> {
        match self.attr("method").map(str::trim) {
            None => Ok(HttpMethod::Post),
            Some(m) if m.eq_ignore_ascii_case("POST") => Ok(HttpMethod::Post),
            Some(m) if m.eq_ignore_ascii_case("GET") => Ok(HttpMethod::Get),
            Some(m) => Err(TwimlError::schema(format!(
                "<{}> method=\"{m}\" is neither GET nor POST",
                self.name
            ))),
        }
    }

    /// The words of an attribute such as `input="dtmf speech"` or
    /// `recordingStatusCallbackEvent="in-progress completed"`.
    fn words(&self, name: &str, default: &[&str]) -> Vec<String> {
        self.attr(name).map_or_else(
            || default.iter().map(|w| (*w).to_owned()).collect(),
            |v| {
                v.split([' ', ','])
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect()
            },
        )
    }
}

/// `<Gather>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    /// `dtmf`, `speech` (default `dtmf`).
    pub input: Vec<String>,
    pub num_digits: Option<u32>,
    /// Seconds of silence before the gather ends (default 5).
    pub timeout_secs: u64,
    /// Where the result goes (default: the current document's URL).
    pub action: Option<String>,
    pub method: HttpMethod,
    /// Whether silence still goes to `action` (default false: the call goes
    /// on with the next verb).
    pub action_on_empty_result: bool,
    /// The text of the nested `<Say>`s.
    pub prompts: Vec<Say>,
}

impl Gather {
    /// Whether keypad input is listened to.
    #[must_use]
    pub fn dtmf(&self) -> bool {
        self.input.iter().any(|i| i.eq_ignore_ascii_case("dtmf"))
    }

    /// Whether speech is listened to.
    #[must_use]
    pub fn speech(&self) -> bool {
        self.input.iter().any(|i| i.eq_ignore_ascii_case("speech"))
    }
}

/// `<Say>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Say {
    pub text: String,
    pub language: Option<String>,
}

/// `<Start><Recording>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub callback: Option<String>,
    pub callback_method: HttpMethod,
    /// `in-progress`, `completed`, `absent` (default `completed`).
    pub events: Vec<String>,
    /// `mono` or `dual` (default `mono`).
    pub channels: String,
    /// `inbound`, `outbound`, `both` (default `both`).
    pub track: String,
}

/// `<Start><Transcription>` (real-time transcription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcription {
    pub callback: Option<String>,
    /// `inbound_track`, `outbound_track`, `both_tracks` (default `both_tracks`).
    pub track: String,
    pub language: String,
    pub name: Option<String>,
    pub engine: String,
    pub partial_results: bool,
}

impl Transcription {
    /// Whether utterances of `track` (`inbound_track`, `outbound_track`) are transcribed.
    #[must_use]
    pub fn covers(&self, track: &str) -> bool {
        self.track == "both_tracks" || self.track == track
    }
}

/// `<Stream>` (inside `<Connect>` or `<Start>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub url: String,
    pub name: Option<String>,
    /// `<Parameter name value/>`, in order.
    pub parameters: Vec<(String, String)>,
}

/// What a `<Start>` forks off the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fork {
    Recording(Recording),
    Transcription(Transcription),
    Stream(Stream),
}

/// A verb the sandbox plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Say(Say),
    Pause {
        length_secs: u64,
    },
    Hangup,
    Redirect {
        url: String,
        method: HttpMethod,
    },
    Gather(Gather),
    Start(Vec<Fork>),
    /// `<Connect><Stream>`: a two-way media stream to an agent; the call stays
    /// up until it is hung up.
    Connect(Stream),
}

/// A parsed document: each verb with the element it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub verbs: Vec<(Verb, Element)>,
}

/// Parses a TwiML document.
///
/// # Errors
/// 12100 when it is not XML with a `<Response>` root; 12200 for a verb the
/// sandbox does not play or one missing what it needs.
pub fn parse(xml: &str) -> Result<Document, TwimlError> {
    let tree = roxmltree::Document::parse(xml)
        .map_err(|e| TwimlError::parse(format!("Document parse failure: {e}")))?;
    let root = tree.root_element();
    if root.tag_name().name() != "Response" {
        return Err(TwimlError::parse(format!(
            "Document parse failure: the root element is <{}>, not <Response>",
            root.tag_name().name()
        )));
    }
    let verbs = root
        .children()
        .filter(roxmltree::Node::is_element)
        .map(|node| {
            let element = Element::from_node(node);
            verb(&element).map(|verb| (verb, element))
        })
        .collect::<Result<_, _>>()?;
    Ok(Document { verbs })
}

fn say(element: &Element) -> Say {
    Say {
        text: element.text.clone().unwrap_or_default(),
        language: element.attr("language").map(str::to_owned),
    }
}

fn verb(element: &Element) -> Result<Verb, TwimlError> {
    match element.name.as_str() {
        "Say" => Ok(Verb::Say(say(element))),
        "Pause" => Ok(Verb::Pause {
            length_secs: element.secs("length", 1)?,
        }),
        "Hangup" => Ok(Verb::Hangup),
        "Redirect" => Ok(Verb::Redirect {
            url: element
                .text
                .clone()
                .ok_or_else(|| TwimlError::schema("<Redirect> needs a URL"))?,
            method: element.method()?,
        }),
        "Gather" => gather(element).map(Verb::Gather),
        "Start" => {
            let forks = element
                .children
                .iter()
                .map(fork)
                .collect::<Result<Vec<_>, _>>()?;
            if forks.is_empty() {
                return Err(TwimlError::schema("<Start> needs a noun"));
            }
            Ok(Verb::Start(forks))
        }
        "Connect" => match element.children.as_slice() {
            [child] if child.name == "Stream" => stream(child).map(Verb::Connect),
            _ => Err(TwimlError::schema(
                "the sandbox plays <Connect> with one <Stream> only",
            )),
        },
        other => Err(TwimlError::schema(format!(
            "<{other}> is not a verb the sandbox plays (Say, Gather, Pause, Redirect, Start, Connect, Hangup)"
        ))),
    }
}

fn gather(element: &Element) -> Result<Gather, TwimlError> {
    let mut prompts = Vec::new();
    for child in &element.children {
        match child.name.as_str() {
            "Say" => prompts.push(say(child)),
            "Pause" => {}
            other => {
                return Err(TwimlError::schema(format!(
                    "<{other}> inside <Gather> (the sandbox plays Say and Pause there)"
                )));
            }
        }
    }
    let num_digits = match element.attr("numDigits") {
        None => None,
        Some(v) => Some(v.trim().parse().map_err(|_| {
            TwimlError::schema(format!("<Gather> numDigits=\"{v}\" is not a number"))
        })?),
    };
    Ok(Gather {
        input: element.words("input", &["dtmf"]),
        num_digits,
        timeout_secs: element.secs("timeout", 5)?,
        action: element.attr("action").map(str::to_owned),
        method: element.method()?,
        action_on_empty_result: element.flag("actionOnEmptyResult"),
        prompts,
    })
}

fn stream(element: &Element) -> Result<Stream, TwimlError> {
    let parameters = element
        .children
        .iter()
        .map(|p| {
            if p.name != "Parameter" {
                return Err(TwimlError::schema(format!(
                    "<{}> inside <Stream> (only <Parameter>)",
                    p.name
                )));
            }
            Ok((
                p.required("name")?.to_owned(),
                p.attr("value").unwrap_or_default().to_owned(),
            ))
        })
        .collect::<Result<_, _>>()?;
    Ok(Stream {
        url: element.required("url")?.to_owned(),
        name: element.attr("name").map(str::to_owned),
        parameters,
    })
}

fn fork(element: &Element) -> Result<Fork, TwimlError> {
    let callback_method = |name: &str| match element.attr(name).map(str::trim) {
        Some(m) if m.eq_ignore_ascii_case("GET") => HttpMethod::Get,
        _ => HttpMethod::Post,
    };
    match element.name.as_str() {
        "Recording" => Ok(Fork::Recording(Recording {
            callback: element.attr("recordingStatusCallback").map(str::to_owned),
            callback_method: callback_method("recordingStatusCallbackMethod"),
            events: element.words("recordingStatusCallbackEvent", &["completed"]),
            channels: element
                .attr("recordingChannels")
                .unwrap_or("mono")
                .to_owned(),
            track: element.attr("recordingTrack").unwrap_or("both").to_owned(),
        })),
        "Transcription" => Ok(Fork::Transcription(Transcription {
            callback: element.attr("statusCallbackUrl").map(str::to_owned),
            track: element.attr("track").unwrap_or("both_tracks").to_owned(),
            language: element.attr("languageCode").unwrap_or("en-US").to_owned(),
            name: element.attr("name").map(str::to_owned),
            engine: element
                .attr("transcriptionEngine")
                .unwrap_or("google")
                .to_owned(),
            partial_results: element.flag("partialResults"),
        })),
        "Stream" => stream(element).map(Fork::Stream),
        other => Err(TwimlError::schema(format!(
            "<Start><{other}> is not played by the sandbox (Recording, Transcription, Stream)"
        ))),
    }
}

/// `reference` resolved against the URL of the document it appeared in, as
/// Twilio resolves relative action and redirect URLs.
#[must_use]
pub fn resolve(base: &str, reference: &str) -> String {
    let reference = reference.trim();
    if reference.contains("://") {
        return reference.to_owned();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let host_end = rest.find('/').unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..host_end]);
    if reference.starts_with('/') {
        return format!("{origin}{reference}");
    }
    let path = rest[host_end..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{reference}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say language="en-US">Hi, this is Si. This call is recorded.</Say><Gather input="dtmf speech" numDigits="1" timeout="6" language="en-US" hints="yes, no" actionOnEmptyResult="true" action="https://si.example/twilio/voice/gather?conversation=CH1&amp;locale=en" method="POST"><Say language="en-US">Press 1 or say yes to continue.</Say></Gather></Response>"#;

    #[test]
    fn ingress_answer_parses_into_say_and_gather() {
        let doc = parse(ANSWER).expect("valid TwiML");
        assert_eq!(doc.verbs.len(), 2);
        assert!(
            matches!(&doc.verbs[0].0, Verb::Say(s) if s.text == "Hi, this is Si. This call is recorded." && s.language.as_deref() == Some("en-US"))
        );
        let Verb::Gather(gather) = &doc.verbs[1].0 else {
            panic!("not a gather: {:?}", doc.verbs[1]);
        };
        assert!(gather.dtmf() && gather.speech());
        assert_eq!(gather.num_digits, Some(1));
        assert_eq!(gather.timeout_secs, 6);
        assert!(gather.action_on_empty_result);
        assert_eq!(
            gather.action.as_deref(),
            Some("https://si.example/twilio/voice/gather?conversation=CH1&locale=en"),
            "entities are resolved"
        );
        assert_eq!(gather.prompts[0].text, "Press 1 or say yes to continue.");
    }

    #[test]
    fn accept_parses_into_start_and_connect() {
        let xml = r#"<Response><Say>OK</Say><Start><Recording recordingStatusCallback="https://si.example/twilio/voice/recording?x=1" recordingStatusCallbackEvent="in-progress completed"/><Transcription statusCallbackUrl="https://si.example/twilio/voice/transcription" track="inbound_track"/></Start><Connect><Stream url="wss://voice.example/agent"><Parameter name="conversation" value="CH1"/><Parameter name="locale" value="en"/></Stream></Connect></Response>"#;
        let doc = parse(xml).expect("valid TwiML");
        let Verb::Start(forks) = &doc.verbs[1].0 else {
            panic!("not a start");
        };
        assert!(
            matches!(&forks[0], Fork::Recording(r) if r.events == ["in-progress", "completed"] && r.channels == "mono")
        );
        assert!(
            matches!(&forks[1], Fork::Transcription(t) if t.covers("inbound_track") && !t.covers("outbound_track") && t.language == "en-US")
        );
        assert_eq!(
            doc.verbs[2].0,
            Verb::Connect(Stream {
                url: "wss://voice.example/agent".into(),
                name: None,
                parameters: vec![
                    ("conversation".into(), "CH1".into()),
                    ("locale".into(), "en".into())
                ],
            })
        );
    }

    #[test]
    fn broken_documents_are_12100_and_unknown_verbs_12200() {
        for broken in [
            "",
            "<Response><Say>unclosed</Response>",
            "not xml at all",
            "<Response><Say>a &bogus; b</Say></Response>",
            "<Html><Say>x</Say></Html>",
        ] {
            let error = parse(broken).expect_err(broken);
            assert_eq!(error.code, DOCUMENT_PARSE_FAILURE, "{broken}: {error}");
        }
        for invalid in [
            "<Response><Dance/></Response>",
            "<Response><Redirect/></Response>",
            "<Response><Connect><Stream/></Connect></Response>",
            "<Response><Gather><Dial>1</Dial></Gather></Response>",
            "<Response><Gather timeout=\"soon\"/></Response>",
            "<Response><Start><Siprec/></Start></Response>",
        ] {
            let error = parse(invalid).expect_err(invalid);
            assert_eq!(error.code, SCHEMA_VALIDATION, "{invalid}: {error}");
        }
        assert_eq!(
            parse("<Response/>").expect("empty is valid").verbs,
            Vec::new()
        );
    }

    #[test]
    fn relative_urls_resolve_against_the_document() {
        let base = "https://si.example/twilio/voice/answer?conversation=CH1";
        assert_eq!(
            resolve(base, "/twilio/voice/gather?x=1"),
            "https://si.example/twilio/voice/gather?x=1"
        );
        assert_eq!(
            resolve(base, "gather"),
            "https://si.example/twilio/voice/gather"
        );
        assert_eq!(resolve(base, "http://other/x"), "http://other/x");
        assert_eq!(resolve("http://h:8080", "/a"), "http://h:8080/a");
    }
}
