//! The estimated cost of messages: a price table (`PRICE_TABLE`) read by the
//! segment stage (metric `si_segment_estimated_cost_usd_total`) and by
//! `sictl report`, and the country of a recipient's number.
//!
//! **An estimate.** Twilio bills per SMS segment (each part of a long text is
//! a message of its own, billed by its segments) and per WhatsApp message
//! (Meta's conversation/template charges plus Twilio's fee), at prices that
//! depend on the destination country, the carrier and the sender type, and
//! that change. The table holds the prices you choose, in USD; take them
//! from Twilio's pricing pages (<https://www.twilio.com/en-us/sms/pricing/us>,
//! <https://www.twilio.com/en-us/whatsapp/pricing>) or the Pricing API
//! (`GET https://pricing.twilio.com/v2/Messaging/Countries/{IsoCountry}`).
//! The invoice (or the Usage Records API) is the truth.
//!
//! **Format.** `channel:COUNTRY=price` entries separated by `,`: channel
//! `sms` (price per segment) or `whatsapp` (price per message), `COUNTRY` an
//! ISO 3166 alpha-2 code or `*` for every other country, e.g.
//! `sms:US=0.0083,sms:CA=0.0083,sms:*=0.05,whatsapp:*=0.005`. A message
//! without a matching entry is counted with no cost (no estimate).

use std::collections::BTreeMap;
use std::fmt;

use si_schemas::records::Channel;

/// The country label of a number that names no country (short codes, chat).
pub const UNKNOWN_COUNTRY: &str = "unknown";

/// A malformed `PRICE_TABLE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PRICE_TABLE entry {entry:?}: {reason}")]
pub struct PriceTableError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Prices per SMS segment and per WhatsApp message, by country.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    /// (channel key prefix, country or `*`) → USD.
    prices: BTreeMap<(&'static str, String), f64>,
}

impl PriceTable {
    /// Parses `sms:US=0.0083,sms:*=0.05,whatsapp:*=0.005` (blank: no prices).
    ///
    /// # Errors
    /// An entry without `=`, a channel other than `sms`/`whatsapp`, a country
    /// that is neither two letters nor `*`, a price that is not a finite
    /// number ≥ 0, or the same channel and country twice.
    pub fn parse(text: &str) -> Result<Self, PriceTableError> {
        let mut prices = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let fail = |reason: &str| PriceTableError {
                entry: entry.to_owned(),
                reason: reason.to_owned(),
            };
            let (target, price) = entry
                .split_once('=')
                .ok_or_else(|| fail("expected channel:COUNTRY=price"))?;
            let (channel, country) = target
                .trim()
                .split_once(':')
                .ok_or_else(|| fail("expected channel:COUNTRY before '='"))?;
            let channel = match channel.trim().to_ascii_lowercase().as_str() {
                "sms" => Channel::Sms.key_prefix(),
                "whatsapp" => Channel::Whatsapp.key_prefix(),
                _ => return Err(fail("the channel is sms or whatsapp")),
            };
            let country = country.trim().to_ascii_uppercase();
            if country != "*"
                && !(country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(fail("the country is an ISO 3166 alpha-2 code or *"));
            }
            let price: f64 = price
                .trim()
                .parse()
                .map_err(|_| fail("the price is a number (USD)"))?;
            if !price.is_finite() || price < 0.0 {
                return Err(fail("the price is a finite number ≥ 0"));
            }
            if prices.insert((channel, country), price).is_some() {
                return Err(fail("channel and country given twice"));
            }
        }
        Ok(Self { prices })
    }

    /// Whether the table has no prices.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The price of one unit (an SMS segment, a WhatsApp message) on
    /// `channel` to `country`: the country's entry, else the channel's `*`.
    #[must_use]
    pub fn unit_price(&self, channel: Channel, country: &str) -> Option<f64> {
        self.prices
            .get(&(channel.key_prefix(), country.to_ascii_uppercase()))
            .or_else(|| self.prices.get(&(channel.key_prefix(), "*".to_owned())))
            .copied()
    }

    /// The estimated cost of one message with `segments` segments: SMS per
    /// segment (at least one), WhatsApp per message; `None` without a price.
    #[must_use]
    pub fn estimate(&self, channel: Channel, country: &str, segments: u32) -> Option<f64> {
        let unit = self.unit_price(channel, country)?;
        Some(match channel {
            Channel::Sms => unit * f64::from(segments.max(1)),
            _ => unit,
        })
    }
}

impl fmt::Display for PriceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for ((channel, country), price) in &self.prices {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{channel}:{country}={price}")?;
        }
        Ok(())
    }
}

/// The country (ISO 3166 alpha-2) of a recipient's number, `+E.164` with or
/// without a channel prefix (`whatsapp:+44…`); [`UNKNOWN_COUNTRY`] for short
/// codes, chat identities and what does not parse. A number libphonenumber
/// cannot place (fictional ranges such as 555-01xx) gets the main country of
/// its calling code.
#[must_use]
pub fn country_of(address: &str) -> String {
    let bare = address
        .split_once(':')
        .map_or(address, |(_, rest)| rest)
        .trim();
    if !bare.starts_with('+') {
        return UNKNOWN_COUNTRY.to_owned();
    }
    let Ok(number) = phonenumber::parse(None, bare) else {
        return UNKNOWN_COUNTRY.to_owned();
    };
    if let Some(id) = number.country().id() {
        return id.as_ref().to_owned();
    }
    let code = number.country().code();
    phonenumber::metadata::DATABASE
        .by_code(&code)
        .and_then(|regions| {
            regions
                .iter()
                .find(|m| m.is_main_country_for_code())
                .or_else(|| regions.first())
                .map(|m| m.id().to_owned())
        })
        .filter(|id| id.len() == 2)
        .unwrap_or_else(|| UNKNOWN_COUNTRY.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "sms:US=0.0083,sms:CA=0.0083,sms:*=0.05,whatsapp:*=0.005";

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_country_entry_wins_over_the_channel_default() {
        let t = PriceTable::parse(EXAMPLE).unwrap_or_default();
        assert_eq!(t.unit_price(Channel::Sms, "US"), Some(0.0083));
        assert_eq!(t.unit_price(Channel::Sms, "ca"), Some(0.0083));
        assert_eq!(t.unit_price(Channel::Sms, "GB"), Some(0.05));
        assert_eq!(t.unit_price(Channel::Whatsapp, "US"), Some(0.005));
        assert_eq!(t.unit_price(Channel::Chat, "US"), None);
    }

    #[test]
    fn sms_costs_per_segment_and_whatsapp_per_message() {
        let t = PriceTable::parse(EXAMPLE).unwrap_or_default();
        assert!(
            t.estimate(Channel::Sms, "US", 3)
                .is_some_and(|c| close(c, 0.0249))
        );
        assert!(
            t.estimate(Channel::Sms, "US", 0)
                .is_some_and(|c| close(c, 0.0083))
        );
        assert!(
            t.estimate(Channel::Whatsapp, "DE", 4)
                .is_some_and(|c| close(c, 0.005))
        );
        let only_us = PriceTable::parse("sms:US=0.01").unwrap_or_default();
        assert_eq!(only_us.estimate(Channel::Sms, "GB", 1), None);
        assert!(PriceTable::parse("").is_ok_and(|t| t.is_empty()));
    }

    #[test]
    fn malformed_entries_name_the_entry_and_the_reason() {
        for (text, reason) in [
            ("sms:US", "expected channel:COUNTRY=price"),
            ("US=0.1", "expected channel:COUNTRY before '='"),
            ("voice:US=0.1", "the channel is sms or whatsapp"),
            (
                "sms:USA=0.1",
                "the country is an ISO 3166 alpha-2 code or *",
            ),
            ("sms:US=cheap", "the price is a number (USD)"),
            ("sms:US=-1", "the price is a finite number ≥ 0"),
            ("sms:US=1,sms:us=2", "channel and country given twice"),
        ] {
            let error = PriceTable::parse(text).err();
            assert_eq!(error.map(|e| e.reason), Some(reason.to_owned()), "{text}");
        }
    }

    #[test]
    fn the_table_prints_as_it_parses() {
        let t = PriceTable::parse(" whatsapp:*=0.005 , sms:us=0.0083").unwrap_or_default();
        assert_eq!(t.to_string(), "sms:US=0.0083,whatsapp:*=0.005");
        assert_eq!(PriceTable::parse(&t.to_string()).ok(), Some(t));
    }

    #[test]
    fn countries_come_from_the_number() {
        assert_eq!(country_of("+14155550100"), "US");
        assert_eq!(country_of("+16135550123"), "CA");
        assert_eq!(country_of("whatsapp:+447700900123"), "GB");
        assert_eq!(country_of("+4915123456789"), "DE");
        assert_eq!(country_of("12345"), UNKNOWN_COUNTRY);
        assert_eq!(country_of("chat:user-1"), UNKNOWN_COUNTRY);
        assert_eq!(country_of("+"), UNKNOWN_COUNTRY);
    }
}
