//! Masking of addresses for logs: enough to tell two apart while debugging,
//! never enough to dial.

use std::fmt;

/// Masks a phone number or channel address (`whatsapp:+14155550100` →
/// `whatsapp:+14•••••••00`): the channel prefix, `+`, the first two digits and
/// the last two stay; everything else becomes `•`. Identities that are not
/// phone numbers keep their first and last character.
#[must_use]
pub fn mask_address(address: &str) -> String {
    let (prefix, rest) = match address.rfind(':') {
        Some(i) => address.split_at(i + 1),
        None => ("", address),
    };
    let chars: Vec<char> = rest.chars().collect();
    let (lead, keep_head) = if rest.starts_with('+') {
        ("+", 3)
    } else {
        ("", 1)
    };
    let body = &chars[lead.len()..];
    let keep_head = keep_head - lead.len();
    let keep_tail = if lead.is_empty() { 1 } else { 2 };
    if body.len() <= keep_head + keep_tail + 1 {
        return format!("{prefix}{lead}{}", "•".repeat(body.len()));
    }
    let head: String = body[..keep_head].iter().collect();
    let tail: String = body[body.len() - keep_tail..].iter().collect();
    let hidden = "•".repeat(body.len() - keep_head - keep_tail);
    format!("{prefix}{lead}{head}{hidden}{tail}")
}

/// Displays an address masked, for log fields: `tracing::info!(from = %Masked(addr))`.
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_address(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_keep_only_country_and_last_digits() {
        assert_eq!(mask_address("+14155550100"), "+14•••••••00");
        assert_eq!(
            mask_address("whatsapp:+14155550100"),
            "whatsapp:+14•••••••00"
        );
    }

    #[test]
    fn the_masked_form_never_contains_the_middle_digits() {
        let masked = mask_address("+447700900123");
        assert!(!masked.contains("77009001"), "{masked}");
        assert_eq!(masked.chars().count(), "+447700900123".chars().count());
    }

    #[test]
    fn short_and_non_phone_identities_are_masked_too() {
        assert_eq!(mask_address("+12"), "+••");
        assert_eq!(mask_address("alice@example.com"), "a•••••••••••••••m");
        assert_eq!(mask_address(""), "");
    }

    #[test]
    fn display_wrapper_masks() {
        assert_eq!(Masked("+14155550100").to_string(), "+14•••••••00");
    }
}
