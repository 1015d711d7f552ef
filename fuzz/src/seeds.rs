//! The seed corpus, as committed under `fuzz/corpus/`: written by `si-fuzz
//! seed` from the lists here (real-looking Twilio requests, tricky texts) and,
//! for Avro, records of every type encoded with the project's own encoder.

use std::path::Path;

use si_twilio_signature::{Algorithm, compute, signing_string};

use crate::avro_gen::Generator;
use crate::rng::Rng;

const SEP: char = '\u{FFFF}';

const INBOUND_SMS: &str = "ToCountry=US&ToState=CA&SmsMessageSid=SM0123456789abcdef0123456789abcdef&NumMedia=0&ToCity=SAN+FRANCISCO&FromZip=94105&SmsSid=SM0123456789abcdef0123456789abcdef&FromState=CA&SmsStatus=received&FromCity=SAN+FRANCISCO&Body=Hello+Si+%F0%9F%91%8B&FromCountry=US&To=%2B14155550100&MessagingServiceSid=MG0123456789abcdef0123456789abcdef&ToZip=94105&NumSegments=1&MessageSid=SM0123456789abcdef0123456789abcdef&AccountSid=AC00000000000000000000000000000000&From=%2B14155550123&ApiVersion=2010-04-01";
const INBOUND_WHATSAPP: &str = "SmsMessageSid=SM1&NumMedia=2&ProfileName=Ana&MessageType=image&SmsSid=SM1&WaId=5511999990000&SmsStatus=received&Body=ol%C3%A1&To=whatsapp%3A%2B14155550100&MediaContentType0=image%2Fjpeg&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC1%2FMessages%2FMM1%2FMedia%2FME1&MediaContentType1=audio%2Fogg&MediaUrl1=https%3A%2F%2Fapi.twilio.com%2Fm%2FME2&NumSegments=1&MessageSid=SM1&AccountSid=AC1&From=whatsapp%3A%2B5511999990000&ApiVersion=2010-04-01";
const STATUS: &str = "SmsSid=SM2&SmsStatus=undelivered&MessageStatus=undelivered&To=%2B14155550123&ErrorCode=30003&MessageSid=SM2&AccountSid=AC1&From=%2B14155550100&ApiVersion=2010-04-01";
const CALL_STATUS: &str = "Called=%2B14155550100&CallSid=CA1&From=%2B14155550123&To=%2B14155550100&CallStatus=completed&Direction=outbound-api&CallDuration=42&Timestamp=Thu%2C+03+Dec+2026+07%3A00%3A00+%2B0000&SequenceNumber=3&AccountSid=AC1";
const GATHER: &str = "CallSid=CA1&Digits=1&SpeechResult=yes+please&Confidence=0.93&From=%2B14155550123&To=%2B14155550100&AccountSid=AC1";
const RECORDING: &str = "RecordingSid=RE1&RecordingUrl=https%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC1%2FRecordings%2FRE1&RecordingStatus=completed&RecordingDuration=12&RecordingChannels=2&RecordingSource=StartCallRecordingAPI&CallSid=CA1&AccountSid=AC1";
const TRANSCRIPTION: &str = "TranscriptionEvent=transcription-content&CallSid=CA1&TranscriptionSid=GT1&Track=inbound_track&Final=true&SequenceId=4&TranscriptionData=%7B%22transcript%22%3A%22Could+you+move+my+appointment%3F%22%2C%22confidence%22%3A0.9%7D&LanguageCode=en-US&AccountSid=AC1";
const CONVERSATION_FORM: &str = "EventType=onMessageAdded&ConversationSid=CH00000000000000000000000000000001&MessageSid=IM1&Index=3&Author=whatsapp%3A%2B5511999990000&Body=STOP&ParticipantSid=MB1&Source=WHATSAPP&DateCreated=2026-12-03T07%3A00%3A00.000Z&Attributes=%7B%7D&AccountSid=AC1&ChatServiceSid=IS1";
const CONVERSATION_JSON: &str = r#"{"EventType":"onParticipantAdded","ConversationSid":"CH00000000000000000000000000000001","ParticipantSid":"MB1","MessagingBinding":{"Address":"+14155550123","ProxyAddress":"+14155550100","Type":"sms"},"Attributes":"{}","DateCreated":"2026-12-03T07:00:00Z","RetryCount":0,"Index":1.0,"Media":[{"Sid":"ME1","ContentType":"image/png","Filename":"a.png","Size":1024}]}"#;

const TEXTS: &[&str] = &[
    "Hello Si",
    "Hi, this is Si, your AI assistant. Reply to chat with me anytime. Msg & data rates may apply. Reply HELP for help, STOP to opt out.",
    "  Leading and trailing whitespace  \r\n",
    "Line one\r\nLine two\n\nA new paragraph. Another sentence! And a question? Yes.",
    "Your code is {1234} [urgent] ~ ^ | \\ € — that costs 2 septets each.",
    "Café, señor, naïve, smørrebrød, Ærø, straße, crème brûlée: accents in and out of GSM-7.",
    "“Smart quotes” and it’s … look-alikes — that smart encoding replaces «here».",
    "Привет, мир! 漢字とかなの文。한국어 문장. नमस्ते दुनिया। مرحبا بالعالم",
    "👨‍👩‍👧‍👦🏳️‍🌈🇫🇷🇯🇵👍🏽😀 e\u{301} n\u{303}\u{301}",
    "See https://example.com/a/very/long/path?with=query&and=more#fragment and www.example.org/x or mail user@example.com.",
    "\u{200B}\u{A0}\u{FEFF}\u{202E}reversed\u{2028}\u{2029}\u{85}",
    "STOP",
    "Stop!",
    "ARRÊT",
    "opt-out please",
    "ＳＴＯＰ",
];

fn long_texts() -> Vec<String> {
    vec![
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
        "😀".repeat(400),
        "€".repeat(200),
        format!("{}{}", "a".repeat(153), "€".repeat(3)),
        "Paragraph one has a few sentences. It goes on.\n\n".repeat(30),
        "x".repeat(1700),
    ]
}

fn sign(url: &str, body: &str) -> String {
    let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    compute(Algorithm::HmacSha1, "12345", &signing_string(url, &params))
}

/// Every seed: (target, file name, bytes).
#[allow(clippy::too_many_lines)]
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let forms = [
        ("inbound-sms", INBOUND_SMS),
        ("inbound-whatsapp", INBOUND_WHATSAPP),
        ("status", STATUS),
        ("call-status", CALL_STATUS),
        ("gather", GATHER),
        ("recording", RECORDING),
        ("transcription", TRANSCRIPTION),
        ("conversation", CONVERSATION_FORM),
    ];
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add =
        |target: &'static str, name: String, bytes: Vec<u8>| out.push((target, name, bytes));
    // Route indexes: 0 conversations post-event .. 8 transcription (ingress ROUTES order).
    let routes = [2_u8, 2, 3, 4, 6, 7, 8, 0];
    for ((name, body), route) in forms.iter().zip(routes) {
        add(
            "ingress_form",
            format!("{name}.form"),
            body.as_bytes().to_vec(),
        );
        let mut envelope = vec![route, 0];
        envelope.extend_from_slice(b"conversation=CH7&locale=pt-BR\xFF");
        envelope.extend_from_slice(body.as_bytes());
        add("ingress_envelope", format!("{name}.bin"), envelope.clone());
        let mut normalize = vec![route, 2];
        normalize.extend_from_slice(&envelope[2..]);
        add("normalize_webhook", format!("{name}.bin"), normalize);
        let mut request = vec![route, 0x20, 0];
        request.extend_from_slice(b"conversation=CH7\xFF");
        request.extend_from_slice(
            sign("https://mycompany.com/myapp.php?foo=1&bar=2", body).as_bytes(),
        );
        request.push(0xFF);
        request.extend_from_slice(body.as_bytes());
        add("ingress_request", format!("{name}.bin"), request);
    }
    add(
        "ingress_form",
        "empty-pairs.form".into(),
        b"A=1&&B=&=C&D&%2B=%26".to_vec(),
    );
    add(
        "ingress_json",
        "conversation.json".into(),
        CONVERSATION_JSON.as_bytes().to_vec(),
    );
    add("ingress_json", "event-stream.json".into(), br#"{"specversion":"1.0","type":"com.twilio.messaging.inbound-message.received","data":{"body":"hi","numMedia":0}}"#.to_vec());
    add(
        "ingress_json",
        "escapes.json".into(),
        br#"{"Body":"\u00e9\ud83d\ude00\n\"","N":-1.5e3,"B":true,"Z":null,"A":[]}"#.to_vec(),
    );
    let mut json_envelope = vec![0_u8, 2];
    json_envelope.extend_from_slice(b"\xFF");
    json_envelope.extend_from_slice(CONVERSATION_JSON.as_bytes());
    add(
        "ingress_envelope",
        "conversation-json.bin".into(),
        json_envelope.clone(),
    );
    let mut json_normalize = vec![0_u8, 3];
    json_normalize.extend_from_slice(&json_envelope[2..]);
    add(
        "normalize_webhook",
        "conversation-json.bin".into(),
        json_normalize,
    );
    let mut request = vec![0_u8, 0x20, 2];
    request.extend_from_slice(b"\xFF\xFF");
    request.extend_from_slice(CONVERSATION_JSON.as_bytes());
    add("ingress_request", "conversation-json.bin".into(), request);
    add(
        "ingress_request",
        "oversized.bin".into(),
        [&[2_u8, 0x30, 0][..], b"\xFF\xFFBody=x"].concat(),
    );

    // Signature: settings, URL, secret, offered signature, then name=value fields.
    for (name, settings, url) in [
        ("vector", "", "https://mycompany.com/myapp.php?foo=1&bar=2"),
        (
            "port",
            "",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        ),
        (
            "sha256",
            "key=k1,algorithm=HMAC_SHA256",
            "https://h.example.com:8443/twilio/messaging/inbound",
        ),
        (
            "ipv6",
            "algorithm=HMAC_SHA1",
            "http://user@[::1]:8080/p?conversation=CH1#frag",
        ),
        ("no-scheme", "", "/twilio/voice/status"),
    ] {
        let mut bytes = format!("{settings}{SEP}{url}{SEP}12345{SEP}RSOYDt4T1cUTdK1PDd93/VVr8B8={SEP}CallSid=CA1234567890ABCDE{SEP}Caller=+14158675309{SEP}Digits=1234{SEP}From=+14158675309{SEP}To=+18005551212").into_bytes();
        bytes = replace_sep(&bytes);
        add("signature", format!("{name}.bin"), bytes);
    }

    for (i, text) in TEXTS.iter().enumerate() {
        for (channel, flags) in [(0_u8, 0x03_u8), (1, 0x08), (2, 0x25)] {
            let mut plan = vec![channel, flags, 20, 50, 5, 3, 200, 100, 1, 0x09];
            plan.extend_from_slice(text.as_bytes());
            add("segment_plan", format!("text-{i:02}-{channel}.bin"), plan);
        }
        add(
            "segment_measure",
            format!("text-{i:02}.txt"),
            text.as_bytes().to_vec(),
        );
        let mut keyword = b"en-US\xFF".to_vec();
        keyword.extend_from_slice(text.as_bytes());
        add("consent_keywords", format!("text-{i:02}.bin"), keyword);
    }
    for (i, text) in long_texts().iter().enumerate() {
        let mut plan = vec![0_u8, 0x33, 20, 50, 3, 2, 9, 100, 1, 0];
        plan.extend_from_slice(text.as_bytes());
        add("segment_plan", format!("long-{i}.bin"), plan);
        add(
            "segment_measure",
            format!("long-{i}.txt"),
            text.as_bytes().to_vec(),
        );
    }
    for (name, locale, text) in [
        ("es", "es-MX", "PARAR"),
        ("pt", "pt_BR", "Sair."),
        ("fr", "fr", "arrêt"),
        ("help", "", "HELP?"),
    ] {
        add(
            "consent_keywords",
            format!("{name}.bin"),
            replace_sep(format!("{locale}{SEP}{text}").as_bytes()),
        );
    }
    let lines: Vec<String> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let channel = ["sms", "whatsapp", "chat"][i % 3];
            serde_json::json!({"id": i, "text": t, "channel": channel}).to_string()
        })
        .collect();
    add(
        "sictl_segment_jsonl",
        "texts.jsonl".into(),
        (lines.join("\n") + "\n").into_bytes(),
    );
    add("sictl_segment_jsonl", "options.jsonl".into(), concat!(
        r#"{"id":"a","text":"Hello\r\nthere","locale":"es","max_parts":1,"allow_truncation":true,"keep_paragraphs":true}"#, "\n",
        "\n",
        r#"{"id":2,"text":"नमस्ते","channel":"whatsapp","last_inbound_ago":"25h"}"#, "\n",
        r#"{"text":"with media","media":["https://example.com/1.jpg"]}"#, "\n",
        r#"{"text":"typo","chanel":"sms"}"#, "\n",
        "not json\n",
    ).as_bytes().to_vec());

    // Avro: a few records of every type, written by the project's encoder.
    let mut rng = Rng::new(7);
    for (file, schema, _, _) in crate::targets::avro_types() {
        let generator = Generator::new(schema());
        let mut written = 0;
        for attempt in 0..200 {
            if written == 3 {
                break;
            }
            let datum = generator.datum(&mut rng);
            if let Some(encoded) = crate::targets::reencode(file, &datum) {
                let stem = file.trim_end_matches(".avsc");
                add(
                    "avro_records",
                    format!("{stem}-{attempt}.avro"),
                    si_schemas::codec::frame(1, &encoded),
                );
                written += 1;
            }
        }
    }
    out
}

/// U+FFFF (EF BF BF in UTF-8) written in the seed texts becomes the single
/// 0xFF byte that separates fields.
fn replace_sep(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(&[0xEF, 0xBF, 0xBF]) {
            out.push(0xFF);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Writes every seed under `root/<target>/`; returns how many.
///
/// # Errors
/// When a file cannot be written.
pub fn write(root: &Path) -> std::io::Result<usize> {
    let seeds = seeds();
    for (target, name, bytes) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}
