//! Finds secrets and raw phone numbers in stage logs.
//!
//! A secret is found as written, and inside an HTTP Basic credential
//! (`base64(user:secret)`). A phone number is found by its digits in order,
//! with or without the country code, with up to two separator characters
//! between digits: `+14155550123`, `14155550123`, `whatsapp:+14155550123`,
//! `%2B14155550123`, `+1 (415) 555-0123` all match; the masked form
//! (`+14•••••••23`) does not.

use std::fmt;
use std::path::Path;

use base64::Engine;

/// Characters that may stand between the digits of a written phone number.
const SEPARATORS: &[char] = &[' ', '-', '.', '(', ')', '/'];

/// What to look for.
#[derive(Debug, Default, Clone)]
pub struct LeakDetector {
    secrets: Vec<(String, String)>,
    numbers: Vec<(String, Vec<char>)>,
}

/// One finding: where, and what (never the value itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// The log (file name) it was found in.
    pub source: String,
    /// 1-based line number.
    pub line: usize,
    /// The name the secret or number was registered under.
    pub what: String,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.what)
    }
}

impl LeakDetector {
    /// Looks for `value` as written, and as the password of a Basic
    /// credential for `user` when given.
    #[must_use]
    pub fn secret(mut self, name: &str, value: &str, user: Option<&str>) -> Self {
        assert!(value.len() >= 8, "{name}: too short to search for");
        self.secrets.push((name.to_owned(), value.to_owned()));
        if let Some(user) = user {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{value}"));
            self.secrets
                .push((format!("{name} (Basic credential)"), basic));
        }
        self
    }

    /// Looks for the E.164 number `number` (`+` country code and national
    /// number), in any of the forms in the module docs. Its national number is
    /// the last ten digits for +1, else everything after the first two digits.
    #[must_use]
    pub fn number(mut self, name: &str, number: &str) -> Self {
        let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
        assert!(digits.len() >= 8, "{name}: not an E.164 number: {number}");
        let national = if digits[0] == '1' {
            digits[1..].to_vec()
        } else {
            digits[2..].to_vec()
        };
        self.numbers.push((name.to_owned(), national));
        self
    }

    /// Every finding in `text`, named `source`.
    #[must_use]
    pub fn scan(&self, source: &str, text: &str) -> Vec<Leak> {
        let mut leaks = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let found = self
                .secrets
                .iter()
                .filter(|(_, value)| line.contains(value.as_str()))
                .map(|(name, _)| name)
                .chain(
                    self.numbers
                        .iter()
                        .filter(|(_, digits)| contains_digits(line, digits))
                        .map(|(name, _)| name),
                );
            leaks.extend(found.map(|what| Leak {
                source: source.to_owned(),
                line: index + 1,
                what: what.clone(),
            }));
        }
        leaks
    }

    /// Every finding in the file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn scan_file(&self, path: &Path) -> anyhow::Result<Vec<Leak>> {
        let text = String::from_utf8_lossy(&std::fs::read(path)?).into_owned();
        let source = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(self.scan(&source, &text))
    }
}

/// Whether `digits` occur in `line` in order, at most two separators apart.
fn contains_digits(line: &str, digits: &[char]) -> bool {
    let chars: Vec<char> = line.chars().collect();
    (0..chars.len()).any(|start| {
        let mut at = start;
        for (i, want) in digits.iter().enumerate() {
            let mut skipped = 0;
            while i > 0 && skipped < 2 && chars.get(at).is_some_and(|c| SEPARATORS.contains(c)) {
                at += 1;
                skipped += 1;
            }
            if chars.get(at) != Some(want) {
                return false;
            }
            at += 1;
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> LeakDetector {
        LeakDetector::default()
            .secret("Auth Token", "loop-test-auth-token", Some("AC123"))
            .number("user", "+14155550123")
    }

    #[test]
    fn every_written_form_of_a_number_is_found() {
        for line in [
            "from=+14155550123 accepted",
            "to=whatsapp:+14155550123",
            r#"{"to":"14155550123"}"#,
            "body=From=%2B14155550123&To=x",
            "caller +1 (415) 555-0123 rang",
            "national 415-555-0123",
            "digits4155550123end",
        ] {
            let leaks = detector().scan("stage.log", line);
            assert_eq!(leaks.len(), 1, "{line}");
            assert_eq!(leaks[0].what, "user");
        }
    }

    #[test]
    fn masked_and_other_numbers_are_not_findings() {
        for line in [
            "from=+14•••••••23",
            "to=whatsapp:+14•••••••23",
            "another user +14155550124",
            "offset 41555501 partition 23",
            "elapsed_ms=4155550 12",
        ] {
            assert!(detector().scan("stage.log", line).is_empty(), "{line}");
        }
    }

    #[test]
    fn secrets_are_found_as_written_and_in_basic_credentials() {
        let detector = detector();
        let leaks = detector.scan(
            "egress.log",
            "ok\nauthorization: Basic QUMxMjM6bG9vcC10ZXN0LWF1dGgtdG9rZW4=\ntoken=loop-test-auth-token\n",
        );
        assert_eq!(
            leaks,
            [
                Leak {
                    source: "egress.log".into(),
                    line: 2,
                    what: "Auth Token (Basic credential)".into()
                },
                Leak {
                    source: "egress.log".into(),
                    line: 3,
                    what: "Auth Token".into()
                },
            ]
        );
    }
}
