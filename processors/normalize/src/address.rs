//! Twilio addresses: `whatsapp:+14155550100`, `+14155550100`, `client:alice`,
//! a short code `12345`, a chat identity `alice`. Phone numbers are normalized
//! to E.164 with the `phonenumber` crate (libphonenumber's metadata), the
//! prefix becomes the [`Channel`].

use si_schemas::records::Channel;

/// An address taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The channel the prefix (or its absence) says.
    pub channel: Channel,
    /// The phone number in E.164 (`+14155550100`); a short code keeps its digits;
    /// `None` when the address is not a phone number.
    pub e164: Option<String>,
    /// The address without its channel prefix, as sent (a chat identity, for example).
    pub bare: String,
    /// The number's region (ISO 3166 alpha-2, e.g. `US`), when libphonenumber knows it.
    pub region: Option<String>,
}

/// Most parsed addresses a thread keeps; the cache is dropped whole when full.
const CACHE_LIMIT: usize = 50_000;

thread_local! {
    /// libphonenumber parsing costs microseconds and the same few addresses
    /// recur in every conversation; parsing is a pure function, so caching it
    /// cannot change any output.
    static CACHE: std::cell::RefCell<std::collections::HashMap<String, Address>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl Address {
    /// Parses a Twilio address. Never fails: what is not a phone number is kept as an identity.
    #[must_use]
    pub fn parse(raw: &str) -> Self {
        if let Some(hit) = CACHE.with(|c| c.borrow().get(raw).cloned()) {
            return hit;
        }
        let parsed = Self::parse_uncached(raw);
        CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(raw.to_owned(), parsed.clone());
        });
        parsed
    }

    fn parse_uncached(raw: &str) -> Self {
        let raw = raw.trim();
        let (prefix, bare) = match raw.split_once(':') {
            Some((prefix, rest)) if !prefix.is_empty() && !prefix.starts_with('+') => {
                (Some(prefix.to_ascii_lowercase()), rest.trim())
            }
            _ => (None, raw),
        };
        let phone = parse_phone(bare);
        let channel = match prefix.as_deref() {
            Some("whatsapp") => Channel::Whatsapp,
            // RCS is the SMS family: Twilio applies one opt-out across RCS,
            // SMS and MMS of a sender, and falls back from RCS to SMS.
            Some("sms" | "mms" | "rcs") => Channel::Sms,
            Some("client") => Channel::Chat,
            Some(_) => Channel::Unknown,
            None if phone.is_some() => Channel::Sms,
            None => Channel::Chat,
        };
        let (e164, region) = phone.map_or((None, None), |(e, r)| (Some(e), r));
        Self {
            channel,
            e164,
            bare: bare.to_owned(),
            region,
        }
    }

    /// Whether the address is a phone number (or short code).
    #[must_use]
    pub fn is_phone(&self) -> bool {
        self.e164.is_some()
    }
}

/// E.164 and region of a phone number; short codes (3 to 8 digits, no `+`) keep their digits.
fn parse_phone(bare: &str) -> Option<(String, Option<String>)> {
    if bare.is_empty() {
        return None;
    }
    if bare.starts_with('+') {
        let number = phonenumber::parse(None, bare).ok()?;
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        let region = number
            .country()
            .id()
            .map(|id| id.as_ref().to_owned())
            .or_else(|| region_of_calling_code(number.country().code()).map(str::to_owned));
        return Some((e164, region));
    }
    if (3..=8).contains(&bare.len()) && bare.bytes().all(|b| b.is_ascii_digit()) {
        return Some((bare.to_owned(), None));
    }
    None
}

/// The main region of a country calling code, for numbers libphonenumber cannot
/// place (fictional ranges such as 555-01xx).
fn region_of_calling_code(code: u16) -> Option<&'static str> {
    Some(match code {
        1 => "US",
        7 => "RU",
        33 => "FR",
        34 => "ES",
        39 => "IT",
        44 => "GB",
        49 => "DE",
        52 => "MX",
        55 => "BR",
        81 => "JP",
        91 => "IN",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatsapp_prefix_becomes_the_channel_and_the_number_e164() {
        let a = Address::parse("whatsapp:+5215512345678");
        assert_eq!(a.channel, Channel::Whatsapp);
        assert_eq!(a.e164.as_deref(), Some("+5215512345678"));
        assert_eq!(a.region.as_deref(), Some("MX"));
    }

    #[test]
    fn plain_numbers_are_sms_and_formatting_is_removed() {
        let a = Address::parse("+1 (415) 555-0100");
        assert_eq!(a.channel, Channel::Sms);
        assert_eq!(a.e164.as_deref(), Some("+14155550100"));
        assert_eq!(a.region.as_deref(), Some("US"));
        let uk = Address::parse("+44 7700 900123");
        assert_eq!(uk.e164.as_deref(), Some("+447700900123"));
        assert_eq!(uk.region.as_deref(), Some("GB"));
        let de = Address::parse("sms:+49 30 1234567");
        assert_eq!(de.e164.as_deref(), Some("+49301234567"));
        assert_eq!(de.region.as_deref(), Some("DE"));
    }

    #[test]
    fn identities_short_codes_and_other_channels() {
        let chat = Address::parse("alice");
        assert_eq!(chat.channel, Channel::Chat);
        assert_eq!(chat.e164, None);
        assert_eq!(chat.bare, "alice");
        let client = Address::parse("client:bob");
        assert_eq!(client.channel, Channel::Chat);
        let short = Address::parse("12345");
        assert_eq!(short.channel, Channel::Sms);
        assert_eq!(short.e164.as_deref(), Some("12345"));
        let rcs = Address::parse("rcs:+14155550100");
        assert_eq!(rcs.channel, Channel::Sms, "one consent with SMS");
        assert_eq!(rcs.e164.as_deref(), Some("+14155550100"));
        let other = Address::parse("messenger:1234567890");
        assert_eq!(other.channel, Channel::Unknown);
        assert_eq!(Address::parse("").e164, None);
    }
}
