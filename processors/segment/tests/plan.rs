//! The plan of a response: channels, the WhatsApp window, media, numbering,
//! budgets and truncation, hints, and the mapping onto `OutboundOperation`.

use std::collections::BTreeMap;

use si_schemas::records::{
    Channel, MediaRef, OperationKind, OutboundOperation, SegmentationHints, TextEncoding,
};
use si_segment::config::WhatsappTemplate;
use si_segment::{
    Encoding, Error, MediaPlacement, Numbering, OverBudget, Plan, Response, SegmentConfig, Timing,
    WindowState, plan as make_plan,
};

const HOUR_MS: i64 = 3_600_000;
const T0: i64 = 1_700_000_000_000;

fn at(now_ms: i64) -> Timing {
    Timing {
        now_ms,
        last_inbound_ms: Some(T0),
    }
}

fn template() -> WhatsappTemplate {
    WhatsappTemplate {
        content_sid: "HX0123456789abcdef0123456789abcdef".to_owned(),
        variables_json: r#"{"1":"Si"}"#.to_owned(),
    }
}

fn whatsapp_config() -> SegmentConfig {
    SegmentConfig {
        whatsapp_template: Some(template()),
        ..SegmentConfig::default()
    }
}

fn bodies(plan: &Plan) -> Vec<&str> {
    plan.parts
        .iter()
        .filter_map(|p| p.body.as_deref())
        .collect()
}

fn media(n: usize) -> Vec<MediaRef> {
    (0..n)
        .map(|i| MediaRef {
            url: Some(format!("https://media.example/{i}.jpg")),
            ..MediaRef::default()
        })
        .collect()
}

fn urls(part: &si_segment::Part) -> Vec<usize> {
    part.media_urls
        .iter()
        .map(|u| {
            u.trim_start_matches("https://media.example/")
                .trim_end_matches(".jpg")
                .parse()
                .unwrap_or(usize::MAX)
        })
        .collect()
}

/// `n` sentences of 48 characters ("Word0   word … word."), joined by spaces:
/// 49 × n − 1 characters, all GSM-7.
fn sentences(n: usize) -> String {
    (0..n)
        .map(|i| format!("Word{i:<3} word word word word word word word word."))
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------ WhatsApp window

#[test]
fn whatsapp_more_than_24_hours_after_the_last_inbound_is_a_template() {
    let config = whatsapp_config();
    let response = Response {
        media: &media(2),
        ..Response::text("Here is your summary.", Channel::Whatsapp)
    };
    let plan = make_plan(&response, at(T0 + 25 * HOUR_MS), &config).expect("plan");
    assert_eq!(plan.parts.len(), 1);
    let part = &plan.parts[0];
    assert_eq!(part.body, None, "no free text outside the window");
    assert!(part.media_urls.is_empty());
    assert_eq!(
        part.content_sid.as_deref(),
        Some(template().content_sid.as_str())
    );
    assert_eq!(
        part.content_variables_json.as_deref(),
        Some(r#"{"1":"Si"}"#)
    );
    assert_eq!(
        part.template_reason.as_deref(),
        Some("WHATSAPP_WINDOW_CLOSED")
    );
    assert_eq!((part.index, part.count), (0, 1));
    assert_eq!(
        plan.window,
        Some(WindowState::Closed {
            last_inbound_ms: Some(T0)
        })
    );
    assert!(
        plan.warnings.iter().any(|w| w.contains("window closed")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn whatsapp_within_24_hours_is_free_text() {
    let config = whatsapp_config();
    let plan = make_plan(
        &Response::text("Here is your summary.", Channel::Whatsapp),
        at(T0 + 23 * HOUR_MS),
        &config,
    )
    .expect("plan");
    assert_eq!(bodies(&plan), vec!["Here is your summary."]);
    let part = &plan.parts[0];
    assert_eq!(
        (part.content_sid.as_deref(), part.template_reason.as_deref()),
        (None, None)
    );
    assert_eq!(
        part.not_after,
        Some(T0 + 24 * HOUR_MS),
        "egress must not send it after the window closes"
    );
    assert_eq!(
        (part.encoding, part.segments),
        (None, None),
        "no SMS encoding on WhatsApp"
    );
}

#[test]
fn whatsapp_window_edges() {
    let config = whatsapp_config();
    let text = Response::text("hi", Channel::Whatsapp);
    let is_template = |timing| {
        make_plan(&text, timing, &config).expect("plan").parts[0]
            .content_sid
            .is_some()
    };
    assert!(!is_template(at(T0 + 24 * HOUR_MS - 1)));
    assert!(
        is_template(at(T0 + 24 * HOUR_MS)),
        "the window is [t, t + 24 h)"
    );
    assert!(
        is_template(Timing {
            now_ms: T0,
            last_inbound_ms: None
        }),
        "the user never wrote"
    );
    // With a margin of one hour, 23 h 30 min is already outside.
    let config = SegmentConfig {
        whatsapp_window_margin: std::time::Duration::from_secs(3600),
        ..whatsapp_config()
    };
    assert!(
        make_plan(&text, at(T0 + 23 * HOUR_MS + HOUR_MS / 2), &config)
            .expect("plan")
            .parts[0]
            .content_sid
            .is_some()
    );
}

#[test]
fn a_closed_window_gets_the_template_of_the_recipients_language() {
    const ES: &str = "HXeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
    const PT_BR: &str = "HXbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let config = SegmentConfig {
        whatsapp_templates: BTreeMap::from([
            ("es".to_owned(), ES.to_owned()),
            ("pt-br".to_owned(), PT_BR.to_owned()),
        ]),
        ..whatsapp_config()
    };
    let sid = |locale: Option<&str>| {
        let response = Response {
            locale,
            ..Response::text("hola", Channel::Whatsapp)
        };
        let plan = make_plan(&response, at(T0 + 25 * HOUR_MS), &config).expect("plan");
        assert_eq!(
            plan.parts[0].content_variables_json.as_deref(),
            Some(r#"{"1":"Si"}"#)
        );
        plan.parts[0].content_sid.clone().expect("a template")
    };
    // The locale, else its language, else the default template.
    assert_eq!(sid(Some("pt-BR")), PT_BR);
    assert_eq!(sid(Some("es-MX")), ES);
    assert_eq!(sid(Some("es")), ES);
    assert_eq!(sid(Some("pt-PT")), template().content_sid);
    assert_eq!(sid(Some("fr-FR")), template().content_sid);
    assert_eq!(sid(None), template().content_sid);
}

#[test]
fn whatsapp_window_closed_without_template_fails() {
    let result = make_plan(
        &Response::text("hi", Channel::Whatsapp),
        at(T0 + 25 * HOUR_MS),
        &SegmentConfig::default(),
    );
    assert_eq!(result, Err(Error::NoTemplate));
    assert!(!Error::NoTemplate.is_retriable());
}

#[test]
fn the_window_applies_to_whatsapp_only() {
    let plan = make_plan(
        &Response::text("hi", Channel::Sms),
        at(T0 + 100 * HOUR_MS),
        &whatsapp_config(),
    )
    .expect("plan");
    assert_eq!(bodies(&plan), vec!["hi"]);
    assert_eq!(plan.window, None);
}

// ------------------------------------------------------------ mapping

#[test]
fn parts_map_onto_outbound_operations() {
    let config = SegmentConfig::default();
    let response = Response {
        media: &media(1),
        ..Response::text("Hello €", Channel::Sms)
    };
    let plan = make_plan(&response, at(T0), &config).expect("plan");
    let mut op = OutboundOperation {
        operation_id: "r1:0".into(),
        conversation_id: "CH1".into(),
        kind: OperationKind::SendMessage,
        channel: Channel::Sms,
        sender_key: "sms:+14155550100".into(),
        to: Some("+14155550101".into()),
        from: Some("+14155550100".into()),
        messaging_service_sid: None,
        body: None,
        media_urls: Vec::new(),
        content_sid: None,
        content_variables_json: None,
        response_id: Some("r1".into()),
        part_index: 9,
        part_count: 9,
        segments: None,
        encoding: None,
        template_reason: None,
        call: None,
        params: BTreeMap::new(),
        created_at: T0,
        not_after: Some(T0 + 1000),
        traceparent: None,
    };
    plan.parts[0].apply_to(&mut op);
    assert_eq!(op.body.as_deref(), Some("Hello €"));
    assert_eq!(
        op.media_urls,
        vec!["https://media.example/0.jpg".to_owned()]
    );
    assert_eq!((op.part_index, op.part_count), (0, 1));
    // "Hello €" = 6 septets + 2 for € = 8 septets, GSM-7, 1 segment.
    assert_eq!(
        (op.encoding, op.segments),
        (Some(TextEncoding::Gsm7), Some(1))
    );
    assert_eq!(
        op.not_after,
        Some(T0 + 1000),
        "an existing deadline is kept"
    );
    assert_eq!(op.operation_id, "r1:0", "ids stay the caller's");
}

// ------------------------------------------------------------ channels

#[test]
fn channels_without_text_and_empty_responses_fail() {
    let config = SegmentConfig::default();
    assert!(matches!(
        make_plan(&Response::text("hi", Channel::Voice), at(T0), &config),
        Err(Error::UnsupportedChannel(_))
    ));
    assert_eq!(
        make_plan(&Response::text(" \n\t ", Channel::Sms), at(T0), &config),
        Err(Error::Empty)
    );
    let no_url = [MediaRef {
        sid: Some("ME1".into()),
        ..MediaRef::default()
    }];
    assert_eq!(
        make_plan(
            &Response {
                media: &no_url,
                ..Response::text("hi", Channel::Sms)
            },
            at(T0),
            &config
        ),
        Err(Error::MediaWithoutUrl { index: 0 })
    );
}

#[test]
fn smart_encoding_is_for_sms_only() {
    let config = whatsapp_config();
    let text = "It’s “fine” — really…";
    let sms = make_plan(&Response::text(text, Channel::Sms), at(T0), &config).expect("plan");
    assert_eq!(bodies(&sms), vec!["It's \"fine\" - really..."]);
    assert!(sms.smart_encoded);
    assert_eq!(sms.parts[0].encoding, Some(Encoding::Gsm7));
    let whatsapp =
        make_plan(&Response::text(text, Channel::Whatsapp), at(T0), &config).expect("plan");
    assert_eq!(bodies(&whatsapp), vec![text]);
    let off = SegmentConfig {
        smart_encoding: false,
        ..SegmentConfig::default()
    };
    let sms = make_plan(&Response::text(text, Channel::Sms), at(T0), &off).expect("plan");
    assert_eq!(
        (bodies(&sms), sms.parts[0].encoding),
        (vec![text], Some(Encoding::Ucs2))
    );
}

#[test]
fn sms_parts_stay_within_ten_segments_and_1600_characters() {
    // 40 sentences: 49 × 40 − 1 = 1959 septets, more than 10 × 153 = 1530.
    let text = sentences(40);
    let plan = make_plan(
        &Response::text(&text, Channel::Sms),
        at(T0),
        &SegmentConfig::default(),
    )
    .expect("plan");
    let b = bodies(&plan);
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(
        b[0].starts_with("(1/2) Word0 ") && b[1].starts_with("(2/2) "),
        "{b:?}"
    );
    assert!(b[0].ends_with("word."), "cut at a sentence end: {b:?}");
    assert!(
        plan.parts
            .iter()
            .all(|p| p.segments.is_some_and(|s| s <= 10))
    );
}

#[test]
fn whatsapp_parts_stay_within_1600_characters() {
    // 60 sentences: 49 × 60 − 1 = 2939 characters → 2 parts of at most 1600.
    let text = sentences(60);
    let plan = make_plan(
        &Response::text(&text, Channel::Whatsapp),
        at(T0),
        &whatsapp_config(),
    )
    .expect("plan");
    let b = bodies(&plan);
    assert_eq!(b.len(), 2);
    assert!(b.iter().all(|b| b.encode_utf16().count() <= 1600));
    // 1600 − "(1/2) " = 1594 characters of room: 32 sentences (49 × 32 − 1 = 1567) fit,
    // 33 (1616) do not.
    assert_eq!(b[0].matches("word.").count(), 32, "{}", b[0]);
}

#[test]
fn chat_parts_are_32_kb_and_not_numbered() {
    let text = "abcdefghi ".repeat(4000); // 40 000 bytes
    let plan = make_plan(
        &Response::text(&text, Channel::Chat),
        at(T0),
        &SegmentConfig::default(),
    )
    .expect("plan");
    let b = bodies(&plan);
    assert_eq!(b.len(), 2);
    assert_eq!(
        b[0].len(),
        31_999,
        "3200 words of 10 bytes minus the dropped space"
    );
    assert!(!b[0].starts_with('('), "chat parts carry no numbering");
}

// ------------------------------------------------------------ numbering

#[test]
fn numbering_prefix_and_suffix_count_inside_the_budget() {
    // 250 a-words: 2 × 250 − 1 = 499 septets; 1 segment (160) per part.
    let text = "a ".repeat(250);
    for (numbering, first) in [(Numbering::Prefix, "(1/4) a a"), (Numbering::Suffix, "a a")] {
        let mut config = SegmentConfig {
            numbering,
            ..SegmentConfig::default()
        };
        config.sms.max_segments_per_message = Some(1);
        let planned =
            make_plan(&Response::text(&text, Channel::Sms), at(T0), &config).expect("plan");
        let b = bodies(&planned);
        // Each part: 6 septets of "(i/4) " + a body of at most 154: 77 words "a" = 153 septets.
        // 250 words / 77 = 3.2 → 4 parts.
        assert_eq!(b.len(), 4, "{b:?}");
        assert!(b[0].starts_with(first), "{b:?}");
        assert!(b.iter().all(|b| b.len() <= 160), "{b:?}");
        if numbering == Numbering::Suffix {
            assert!(b[3].ends_with(" (4/4)"), "{b:?}");
        }
        assert_eq!(
            planned.parts.iter().map(|p| p.segments).collect::<Vec<_>>(),
            vec![Some(1); 4]
        );
    }
    let config = SegmentConfig {
        numbering: Numbering::Off,
        ..SegmentConfig::default()
    };
    let planned = make_plan(
        &Response::text(&sentences(40), Channel::Sms),
        at(T0),
        &config,
    )
    .expect("plan");
    assert!(bodies(&planned).iter().all(|b| b.starts_with("Word")));
}

// ------------------------------------------------------------ budgets

fn one_segment_sms() -> SegmentConfig {
    let mut config = SegmentConfig::default();
    config.sms.max_segments_per_message = Some(1);
    config
}

#[test]
fn truncation_marks_the_end_and_respects_max_parts() {
    let hints = SegmentationHints {
        max_parts: Some(2),
        allow_truncation: Some(true),
        ..SegmentationHints::default()
    };
    let text = sentences(20); // 979 septets: 7 one-segment parts
    let response = Response {
        hints: Some(&hints),
        ..Response::text(&text, Channel::Sms)
    };
    let plan = make_plan(&response, at(T0), &one_segment_sms()).expect("plan");
    let b = bodies(&plan);
    assert_eq!(b.len(), 2);
    assert!(plan.truncated && !plan.over_budget);
    assert!(
        b[1].ends_with("..."),
        "GSM-7 text gets the GSM-7 form of …: {b:?}"
    );
    assert_eq!(plan.parts[1].encoding, Some(Encoding::Gsm7));
    // UCS-2 text keeps the real ellipsis (1 unit).
    let text = format!("{} 😀", sentences(20));
    let response = Response {
        hints: Some(&hints),
        ..Response::text(&text, Channel::Sms)
    };
    let plan = make_plan(&response, at(T0), &one_segment_sms()).expect("plan");
    assert!(bodies(&plan)[1].ends_with('…'), "{:?}", bodies(&plan));
}

#[test]
fn over_budget_without_truncation_sends_everything() {
    let hints = SegmentationHints {
        max_parts: Some(2),
        allow_truncation: Some(false),
        ..SegmentationHints::default()
    };
    let text = sentences(20);
    let response = Response {
        hints: Some(&hints),
        ..Response::text(&text, Channel::Sms)
    };
    let config = SegmentConfig {
        over_budget: OverBudget::Truncate,
        ..one_segment_sms()
    };
    let plan = make_plan(&response, at(T0), &config).expect("plan");
    assert!(plan.over_budget && !plan.truncated);
    assert!(bodies(&plan).len() > 2);
    assert!(plan.warnings.iter().any(|w| w.contains("over budget")));
}

#[test]
fn configured_behaviour_applies_without_a_hint() {
    let text = sentences(20);
    let config = SegmentConfig {
        over_budget: OverBudget::Truncate,
        max_parts: 3,
        ..one_segment_sms()
    };
    let plan = make_plan(&Response::text(&text, Channel::Sms), at(T0), &config).expect("plan");
    assert_eq!(bodies(&plan).len(), 3);
    assert!(plan.truncated);
}

#[test]
fn hard_max_parts_always_holds() {
    let text = sentences(100); // 4899 septets: 30+ one-segment parts
    let config = SegmentConfig {
        hard_max_parts: 10,
        ..one_segment_sms()
    };
    let plan = make_plan(&Response::text(&text, Channel::Sms), at(T0), &config).expect("plan");
    let b = bodies(&plan);
    assert_eq!(b.len(), 10);
    assert!(plan.truncated && plan.over_budget);
    assert!(
        b[0].starts_with("(1/10) ") && b[9].starts_with("(10/10) ") && b[9].ends_with("..."),
        "{b:?}"
    );
}

#[test]
fn sms_segment_budget_per_response() {
    // 1959 septets would take 13 segments; the budget is 4 (parts of up to 3 segments: 3 + 1).
    let mut config = SegmentConfig {
        sms_max_segments_per_response: Some(4),
        over_budget: OverBudget::Truncate,
        ..SegmentConfig::default()
    };
    config.sms.max_segments_per_message = Some(3);
    let plan = make_plan(
        &Response::text(&sentences(40), Channel::Sms),
        at(T0),
        &config,
    )
    .expect("plan");
    assert_eq!(plan.total_segments, Some(4));
    assert_eq!(
        plan.parts.iter().map(|p| p.segments).collect::<Vec<_>>(),
        vec![Some(3), Some(1)]
    );
    assert!(plan.truncated);
}

#[test]
fn localized_marker() {
    let mut config = SegmentConfig {
        over_budget: OverBudget::Truncate,
        max_parts: 1,
        ..one_segment_sms()
    };
    config
        .truncation_markers
        .insert("de".into(), " [gekürzt]".into());
    let text = sentences(10);
    let response = Response {
        locale: Some("de-AT"),
        ..Response::text(&text, Channel::Sms)
    };
    let plan = make_plan(&response, at(T0), &config).expect("plan");
    assert!(
        bodies(&plan)[0].ends_with(" [gekürzt]"),
        "{:?}",
        bodies(&plan)
    );
    // "ü" is GSM-7, "[" and "]" are extension characters: still one GSM-7 segment.
    assert_eq!(
        (plan.parts[0].encoding, plan.parts[0].segments),
        (Some(Encoding::Gsm7), Some(1))
    );
}

// ------------------------------------------------------------ hints

#[test]
fn keep_paragraphs_cuts_at_the_first_paragraph() {
    let text = format!("Short intro.\n\n{}", "word ".repeat(60));
    let default = make_plan(
        &Response::text(&text, Channel::Sms),
        at(T0),
        &one_segment_sms(),
    )
    .expect("plan");
    assert_ne!(
        bodies(&default)[0],
        "(1/3) Short intro.",
        "a break at 12 of 160 is too early by default"
    );
    let hints = SegmentationHints {
        keep_paragraphs: Some(true),
        ..SegmentationHints::default()
    };
    let response = Response {
        hints: Some(&hints),
        ..Response::text(&text, Channel::Sms)
    };
    let kept = make_plan(&response, at(T0), &one_segment_sms()).expect("plan");
    assert!(
        bodies(&kept)[0].ends_with(") Short intro."),
        "{:?}",
        bodies(&kept)
    );
}

// ------------------------------------------------------------ media

#[test]
fn sms_media_beyond_ten_go_into_media_only_parts() {
    let items = media(12);
    let response = Response {
        media: &items,
        ..Response::text("Your photos.", Channel::Sms)
    };
    let first = make_plan(&response, at(T0), &SegmentConfig::default()).expect("plan");
    assert_eq!(first.parts.len(), 2);
    assert_eq!(
        (first.parts[0].body.as_deref(), urls(&first.parts[0])),
        (None, (0..10).collect())
    );
    assert_eq!(
        (first.parts[1].body.as_deref(), urls(&first.parts[1])),
        (Some("Your photos."), vec![10, 11])
    );
    assert_eq!(
        (first.parts[0].segments, first.parts[1].segments),
        (None, Some(1))
    );
    let config = SegmentConfig {
        media_placement: MediaPlacement::Last,
        ..SegmentConfig::default()
    };
    let last = make_plan(&response, at(T0), &config).expect("plan");
    assert_eq!(
        (last.parts[0].body.as_deref(), urls(&last.parts[0])),
        (Some("Your photos."), (0..10).collect())
    );
    assert_eq!(
        (last.parts[1].body.as_deref(), urls(&last.parts[1])),
        (None, vec![10, 11])
    );
    assert!(
        last.parts
            .iter()
            .enumerate()
            .all(|(i, p)| p.index == i && p.count == 2)
    );
}

#[test]
fn a_conversations_message_takes_one_media_item() {
    // Conversations messages name their media by one MediaSid: an SMS
    // user's three photos go one per part, the text with the last.
    let items = media(3);
    let response = Response {
        media: &items,
        conversations: true,
        ..Response::text("Your photos.", Channel::Sms)
    };
    let plan = make_plan(&response, at(T0), &SegmentConfig::default()).expect("plan");
    let shape: Vec<(Option<&str>, Vec<usize>)> = plan
        .parts
        .iter()
        .map(|p| (p.body.as_deref(), urls(p)))
        .collect();
    assert_eq!(
        shape,
        vec![
            (None, vec![0]),
            (None, vec![1]),
            (Some("Your photos."), vec![2])
        ]
    );
    // The same response by Programmable Messaging: one MMS.
    let mms = Response {
        conversations: false,
        ..response
    };
    let plan = make_plan(&mms, at(T0), &SegmentConfig::default()).expect("plan");
    assert_eq!(plan.parts.len(), 1);
    assert_eq!(urls(&plan.parts[0]), vec![0, 1, 2]);
}

#[test]
fn whatsapp_takes_one_media_per_message() {
    let items = media(3);
    let text = sentences(60); // two text parts
    let response = Response {
        media: &items,
        ..Response::text(&text, Channel::Whatsapp)
    };
    let first = make_plan(&response, at(T0), &whatsapp_config()).expect("plan");
    let shape: Vec<(bool, Vec<usize>)> = first
        .parts
        .iter()
        .map(|p| (p.body.is_some(), urls(p)))
        .collect();
    assert_eq!(
        shape,
        vec![
            (false, vec![0]),
            (false, vec![1]),
            (true, vec![2]),
            (true, vec![])
        ]
    );
    let config = SegmentConfig {
        media_placement: MediaPlacement::Last,
        ..whatsapp_config()
    };
    let last = make_plan(&response, at(T0), &config).expect("plan");
    let shape: Vec<(bool, Vec<usize>)> = last
        .parts
        .iter()
        .map(|p| (p.body.is_some(), urls(p)))
        .collect();
    assert_eq!(
        shape,
        vec![
            (true, vec![]),
            (true, vec![0]),
            (false, vec![1]),
            (false, vec![2])
        ]
    );
    // Numbering counts text parts only.
    assert!(
        last.parts[1]
            .body
            .as_deref()
            .is_some_and(|b| b.starts_with("(2/2) "))
    );
}

#[test]
fn media_only_response() {
    let items = media(2);
    let response = Response {
        media: &items,
        ..Response::text("", Channel::Sms)
    };
    let plan = make_plan(&response, at(T0), &SegmentConfig::default()).expect("plan");
    assert_eq!(plan.parts.len(), 1);
    assert_eq!(
        (plan.parts[0].body.as_deref(), urls(&plan.parts[0])),
        (None, vec![0, 1])
    );
    assert_eq!(plan.total_segments, Some(0));
}
