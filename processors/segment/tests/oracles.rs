//! Cross-checks against independent implementations:
//!
//! - the PyPI codec `gsm0338` (in the oracle venv, `dev/requirements.txt`): the
//!   exact septet codes of every GSM-7 character, and which characters are GSM-7;
//! - Twilio's own segment calculator, npm `sms-segments-calculator`
//!   (TwilioDevEd/message-segment-calculator; pinned in `oracle/package-lock.json`,
//!   installed with `npm ci` into `.cache/segment-oracle`): encoding and segment
//!   count of tricky and generated texts, and the units its count packs for
//!   every code point of the BMP and plane 1 in the contexts where Unicode 10
//!   and today's grapheme clusters differ.
//!
//! What the calculator does (its `src/libs`, version 1.3.0, the newest):
//! `textUtils.splitGraphemes` splits the text with `grapheme-splitter` 1.0.4
//! (UAX #29 of Unicode 10.0) and then takes every `"\r\n"` apart;
//! `SegmentedMessage._buildSegments` appends each grapheme whole to the current
//! segment when its bits fit (1120 bits; 1072 once a 6-octet header is needed),
//! else starts a new segment; a GSM-7 extension character is 2 septets
//! (`UnicodeToGSM`), any other GSM-7 character 1, a UCS-2 grapheme 16 bits per
//! UTF-16 unit; a grapheme of two or more UTF-16 units makes the message UCS-2.
//!
//! Both need tools outside cargo (the venv from `dev/pyenv`, and node + npm);
//! without them the tests fail with what to run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use si_segment::{Encoding, billing, gsm7, measure};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("SI_CACHE_DIR").map_or_else(|| repo_root().join(".cache"), PathBuf::from)
}

fn run(command: &mut Command, stdin: &str) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{command:?} failed: {}", out.status);
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

// ------------------------------------------------------------------ gsm0338

const PY_ENCODE_ALL: &str = r#"
import codecs, json, sys
import gsm0338  # registers the 'gsm03.38' codec
out = {}
for cp in list(range(0x3000)) + [0xFEFF, 0x1F600]:
    try:
        out[cp] = list(codecs.encode(chr(cp), 'gsm03.38'))
    except UnicodeEncodeError:
        pass
json.dump(out, sys.stdout)
"#;

#[test]
fn gsm7_alphabet_matches_the_gsm0338_codec() {
    let python = std::env::var_os("SI_PYTHON")
        .map_or_else(|| repo_root().join(".cache/venv/bin/python"), PathBuf::from);
    assert!(
        python.exists(),
        "no oracle venv at {}: run dev/pyenv",
        python.display()
    );
    let json = run(Command::new(&python).args(["-c", PY_ENCODE_ALL]), "");
    let theirs: std::collections::BTreeMap<u32, Vec<u8>> =
        serde_json::from_str(&json).expect("codec output");
    let mut checked = 0;
    for cp in (0..0x3000).chain([0xFEFF, 0x1F600]) {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        let ours = gsm7::encode(&c.to_string());
        let expected = theirs.get(&cp).cloned();
        if cp == 0x1B {
            // The codec maps U+001B to the escape code itself; it is not a
            // character of the text here (nor in Twilio's calculator).
            assert_eq!((ours, expected), (None, Some(vec![0x1B])));
            continue;
        }
        assert_eq!(ours, expected, "U+{cp:04X} {c:?}");
        checked += usize::from(expected.is_some());
    }
    assert_eq!(checked, 127 + 10, "every GSM-7 character was compared");
}

// ------------------------------------------------------------ Twilio calculator

/// What Twilio's calculator says about one text.
struct Twilio {
    encoding: Encoding,
    segments: usize,
    /// The graphemes its count packs.
    units: Vec<String>,
}

fn twilio_calculator(texts: &[String]) -> Vec<Twilio> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("oracle");
    let dir = cache_dir().join("segment-oracle");
    std::fs::create_dir_all(&dir).expect("cache dir");
    let lock = std::fs::read(source.join("package-lock.json")).expect("lock file");
    let installed = std::fs::read(dir.join("package-lock.json")).ok();
    for file in ["package.json", "segments.js"] {
        std::fs::copy(source.join(file), dir.join(file)).expect("copy oracle file");
    }
    if installed.as_ref() != Some(&lock)
        || !dir.join("node_modules/sms-segments-calculator").exists()
    {
        std::fs::write(dir.join("package-lock.json"), &lock).expect("write lock");
        // flock: parallel test runs share the directory.
        let status = Command::new("flock")
            .arg(dir.join(".lock"))
            .args([
                "npm",
                "ci",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--loglevel=error",
            ])
            .current_dir(&dir)
            .status()
            .expect("run npm (node and npm are needed for the Twilio calculator oracle)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    let input = serde_json::to_string(texts).expect("json");
    let out = run(Command::new("node").arg(dir.join("segments.js")), &input);
    let results: Vec<serde_json::Value> = serde_json::from_str(&out).expect("oracle output");
    results
        .iter()
        .map(|r| {
            let encoding = match r["encoding"].as_str() {
                Some("GSM-7") => Encoding::Gsm7,
                Some("UCS-2") => Encoding::Ucs2,
                other => panic!("unknown encoding {other:?}"),
            };
            let segments = r["segments"]
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .expect("segments");
            let units = r["units"]
                .as_array()
                .expect("units")
                .iter()
                .map(|u| u.as_str().expect("unit").to_owned())
                .collect();
            Twilio {
                encoding,
                segments,
                units,
            }
        })
        .collect()
}

/// Texts at the edges: boundaries, escape and surrogate pairs and clusters
/// straddling segment ends, accented and Greek letters.
fn tricky() -> Vec<String> {
    let r = |s: &str, n: usize| s.repeat(n);
    let mut texts = vec![
        "Hello".to_owned(),
        "éèùìòÇØøÅåÄäÖöÑñÜüßÉàÆæ".to_owned(),
        "ça va".to_owned(),
        "ΔΦΓΛΩΠΨΣΘΞ".to_owned(),
        "ΑΒΓ".to_owned(),
        "^{}\\[~]|€\u{0C}".to_owned(),
        "Hello мир 😀".to_owned(),
        "a\r\nb".to_owned(),
        "🇫🇷".to_owned(),
        "👨‍👩‍👧‍👦".to_owned(),
        "“Don’t” — wait…".to_owned(),
        "`backtick`".to_owned(),
    ];
    for n in [159, 160, 161, 305, 306, 307, 459, 460, 1530, 1531] {
        texts.push(r("a", n));
    }
    for n in [69, 70, 71, 133, 134, 135] {
        texts.push(r("a", n - 1) + "ś");
    }
    for n in [79, 80, 81, 153] {
        texts.push(r("{", n));
    }
    texts.push(r("a", 152) + "€" + &r("a", 152));
    texts.push(r("a", 151) + "€" + &r("a", 153));
    texts.push(r("a", 66) + "😀" + &r("a", 66));
    texts.push(r("a", 65) + "😀" + &r("a", 67));
    texts.push(r("a", 65) + "🇫🇷" + &r("a", 64));
    texts.push(r("😀", 35));
    texts.push(r("😀", 36));
    texts.push(r("👨‍👩‍👧‍👦", 7));
    // Issue 14: CR LF and conjuncts at a boundary (Twilio splits them), a
    // surrogate pair and an escape at a boundary (never split).
    for n in [151, 152, 153] {
        texts.push(r("a", n) + "\r\n" + &r("a", 152));
    }
    texts.push(r("a", 158) + "\r\n");
    texts.push(r("a", 159) + "\r\n");
    texts.push(r("я", 66) + "\r\n" + &r("я", 66));
    texts.push(r("я", 65) + "\r\n" + &r("я", 66));
    for n in [64, 65, 66] {
        texts.push(r("a", n) + "क्ष" + &r("a", 65));
        texts.push(r("a", n) + "क्षि" + &r("a", 64));
        texts.push(r("a", n) + "❤️‍🔥" + &r("a", 65));
        texts.push(r("a", n) + "🫶🏽" + &r("a", 65));
    }
    texts.push(r("नमस्ते ", 20));
    texts.push(r("ক্ত্র ", 25));
    texts.push(r("a", 66) + "😀" + &r("a", 67));
    texts.push(r("a", 67) + "😀" + &r("a", 66));
    texts.push(r("a", 153) + "€" + &r("a", 152));
    texts.push(r("a", 159) + "€");
    texts
}

/// Deterministic pseudo-random texts from a vocabulary of all kinds of
/// characters, with lengths around the segment boundaries.
fn generated() -> Vec<String> {
    const PIECES: &[&str] = &[
        "a",
        "b",
        " ",
        ".",
        "\n",
        "€",
        "{",
        "|",
        "é",
        "Ç",
        "Δ",
        "ç",
        "ś",
        "Я",
        "漢",
        "😀",
        "👍🏽",
        "🇯🇵",
        "e\u{301}",
        "ΑΒ",
        "@",
        "$",
        "¤",
        "~",
        "\r\n",
        "§",
        "¿",
        "क्ष",
        "स्ते",
        "ক্ত",
        "❤️‍🔥",
        "👩‍💻",
        "\r",
    ];
    let mut state: u64 = 0x5EED_1234_ABCD_0001;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(state >> 33).unwrap_or(0) % n
    };
    (0..400)
        .map(|i| {
            // Mostly one kind of text per message, so GSM-7 texts are common.
            let gsm_only = i % 2 == 0;
            let target = [60, 68, 70, 72, 134, 150, 158, 162, 200, 306, 310, 470][i % 12] + next(8);
            let mut text = String::new();
            while text.chars().count() < target {
                let piece = if gsm_only {
                    ["a", "b", " ", "€", "{", "é", "Δ", "\n", "|", "~", "\r\n"][next(11)]
                } else {
                    PIECES[next(PIECES.len())]
                };
                text.push_str(piece);
            }
            text
        })
        .collect()
}

#[test]
fn segment_counts_match_twilios_calculator() {
    let texts: Vec<String> = tricky().into_iter().chain(generated()).collect();
    let theirs = twilio_calculator(&texts);
    assert_eq!(theirs.len(), texts.len());
    let mut mismatches = Vec::new();
    for (text, expected) in texts.iter().zip(theirs) {
        let m = measure(text);
        if (m.encoding, m.segments) != (expected.encoding, expected.segments) {
            mismatches.push(format!(
                "{text:?}: ours {:?}/{}, Twilio's {:?}/{}",
                m.encoding, m.segments, expected.encoding, expected.segments
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        texts.len(),
        mismatches.join("\n")
    );
}

/// The contexts where Unicode 10 clusters (Twilio's) and today's differ: after
/// a letter (marks added or reclassified since), after an emoji and a ZWJ
/// (GB11), before a skin-tone modifier (GB10), after a consonant and a virama
/// (GB9c), after a CR.
fn probes(c: char) -> [String; 5] {
    [
        format!("a{c}"),
        format!("\u{1F468}\u{200D}{c}"),
        format!("{c}\u{1F3FD}"),
        format!("\u{915}\u{94D}{c}"),
        format!("\r{c}"),
    ]
}

/// Known differences (module `billing`), characters of Vedic, Ahom and
/// Zanabazar Square texts: Unicode 10 made the first four spacing marks (they
/// extend the letter before them) and U+11A3A a Prepend (it joins the next
/// character); today they are letters. The calculator joins them across what
/// is today a cluster boundary, the packing here does not.
const KNOWN: &[char] = &[
    '\u{1CF2}',
    '\u{1CF3}',
    '\u{11720}',
    '\u{11721}',
    '\u{11A3A}',
];

#[test]
fn units_match_twilios_calculator_for_every_code_point() {
    let chars: Vec<char> = (0x80..0x2_0000)
        .filter_map(char::from_u32)
        .filter(|c| !KNOWN.contains(c))
        .collect();
    let texts: Vec<String> = chars.iter().flat_map(|&c| probes(c)).collect();
    let theirs = twilio_calculator(&texts);
    assert_eq!(theirs.len(), texts.len());
    let mut mismatches = Vec::new();
    for (text, expected) in texts.iter().zip(&theirs) {
        let ours: Vec<&str> = billing::text_units(text).collect();
        if ours != expected.units {
            mismatches.push(format!(
                "{text:?} ({}): ours {ours:?}, Twilio's {:?}",
                text.chars()
                    .map(|c| format!("U+{:04X}", u32::from(c)))
                    .collect::<Vec<_>>()
                    .join(" "),
                expected.units
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        texts.len(),
        mismatches
            .iter()
            .take(200)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
