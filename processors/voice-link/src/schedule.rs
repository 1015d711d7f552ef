//! When a call may be placed: the user's time zone and the quiet window.
//!
//! The time zone is the identity record's `attributes["time_zone"]` (an IANA
//! name), else the one of the phone number's country ([`zone_of_region`]:
//! one zone per country, the most populous one for countries that span
//! several), else `VOICE_DEFAULT_TIME_ZONE`. No call is placed inside the
//! quiet window (`VOICE_QUIET_HOURS`, e.g. `21:00-08:00` local time); a call
//! that would fall in it moves to the window's end.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// A daily quiet window in local time, `start` inclusive, `end` exclusive;
/// it spans midnight when `start > end`. Equal ends: no quiet window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    /// First quiet minute.
    pub start: Time,
    /// First minute calls are allowed again.
    pub end: Time,
}

impl QuietWindow {
    /// Parses `HH:MM-HH:MM`; an empty string or `off` means none.
    ///
    /// # Errors
    /// A message naming the expected form.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("quiet hours {text:?}: expected HH:MM-HH:MM"))?;
        let time = |t: &str| {
            Time::strptime("%H:%M", t.trim())
                .map_err(|e| format!("quiet hours {text:?}: {t:?} is not HH:MM ({e})"))
        };
        let window = Self {
            start: time(start)?,
            end: time(end)?,
        };
        Ok((window.start != window.end).then_some(window))
    }

    fn contains(self, t: Time) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The first moment at or after `at` (in `zone`) outside the window.
    #[must_use]
    pub fn next_allowed(self, at: Timestamp, zone: &TimeZone) -> Timestamp {
        let local = at.to_zoned(zone.clone());
        if !self.contains(local.time()) {
            return at;
        }
        // The window's end today, or tomorrow when it ends after midnight
        // and we are before midnight.
        let mut date = local.date();
        if self.start > self.end && local.time() >= self.start {
            date = date.tomorrow().unwrap_or(date);
        }
        date.to_datetime(self.end)
            .to_zoned(zone.clone())
            .map_or(at, |z| z.timestamp())
    }
}

/// The time zone of a user: the identity record's, else the number's
/// country's, else `default`. Unknown names are skipped.
#[must_use]
pub fn user_zone(identity_zone: Option<&str>, e164: Option<&str>, default: &TimeZone) -> TimeZone {
    identity_zone
        .and_then(|name| TimeZone::get(name.trim()).ok())
        .or_else(|| {
            let number = phonenumber::parse(None, e164?).ok()?;
            let region = number.country().id()?;
            TimeZone::get(zone_of_region(region.as_ref())?).ok()
        })
        .unwrap_or_else(|| default.clone())
}

/// One IANA zone per country (ISO 3166 alpha-2); for countries with several
/// zones, the one most of the population lives in.
#[must_use]
pub fn zone_of_region(region: &str) -> Option<&'static str> {
    Some(match region {
        "US" => "America/New_York",
        "CA" => "America/Toronto",
        "MX" => "America/Mexico_City",
        "BR" => "America/Sao_Paulo",
        "AR" => "America/Argentina/Buenos_Aires",
        "CL" => "America/Santiago",
        "CO" => "America/Bogota",
        "PE" => "America/Lima",
        "VE" => "America/Caracas",
        "GB" => "Europe/London",
        "IE" => "Europe/Dublin",
        "FR" => "Europe/Paris",
        "BE" => "Europe/Brussels",
        "NL" => "Europe/Amsterdam",
        "LU" => "Europe/Luxembourg",
        "DE" => "Europe/Berlin",
        "AT" => "Europe/Vienna",
        "CH" => "Europe/Zurich",
        "IT" => "Europe/Rome",
        "ES" => "Europe/Madrid",
        "PT" => "Europe/Lisbon",
        "DK" => "Europe/Copenhagen",
        "SE" => "Europe/Stockholm",
        "NO" => "Europe/Oslo",
        "FI" => "Europe/Helsinki",
        "PL" => "Europe/Warsaw",
        "CZ" => "Europe/Prague",
        "GR" => "Europe/Athens",
        "RO" => "Europe/Bucharest",
        "UA" => "Europe/Kyiv",
        "RU" => "Europe/Moscow",
        "TR" => "Europe/Istanbul",
        "IL" => "Asia/Jerusalem",
        "AE" => "Asia/Dubai",
        "SA" => "Asia/Riyadh",
        "EG" => "Africa/Cairo",
        "MA" => "Africa/Casablanca",
        "NG" => "Africa/Lagos",
        "KE" => "Africa/Nairobi",
        "ZA" => "Africa/Johannesburg",
        "IN" => "Asia/Kolkata",
        "PK" => "Asia/Karachi",
        "BD" => "Asia/Dhaka",
        "CN" => "Asia/Shanghai",
        "HK" => "Asia/Hong_Kong",
        "TW" => "Asia/Taipei",
        "JP" => "Asia/Tokyo",
        "KR" => "Asia/Seoul",
        "SG" => "Asia/Singapore",
        "MY" => "Asia/Kuala_Lumpur",
        "TH" => "Asia/Bangkok",
        "VN" => "Asia/Ho_Chi_Minh",
        "PH" => "Asia/Manila",
        "ID" => "Asia/Jakarta",
        "AU" => "Australia/Sydney",
        "NZ" => "Pacific/Auckland",
        _ => return None,
    })
}

/// `at` in `zone` as the user reads it: `HH:MM` today, else with the date.
#[must_use]
pub fn local_time_text(at: Timestamp, now: Timestamp, zone: &TimeZone) -> String {
    let local: Zoned = at.to_zoned(zone.clone());
    if local.date() == now.to_zoned(zone.clone()).date() {
        local.strftime("%H:%M").to_string()
    } else {
        local.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_call_inside_the_quiet_window_moves_to_its_end_in_the_users_zone() {
        let window = QuietWindow::parse("21:00-08:00").unwrap().unwrap();
        let paris = TimeZone::get("Europe/Paris").unwrap();
        // 22:30 in Paris (winter, UTC+1): moved to 08:00 the next morning.
        assert_eq!(
            window.next_allowed(ts("2026-12-03T21:30:00Z"), &paris),
            ts("2026-12-04T07:00:00Z")
        );
        // 03:00 in Paris: to 08:00 the same day.
        assert_eq!(
            window.next_allowed(ts("2026-12-04T02:00:00Z"), &paris),
            ts("2026-12-04T07:00:00Z")
        );
        // 12:00 in Paris: unchanged.
        let noon = ts("2026-12-04T11:00:00Z");
        assert_eq!(window.next_allowed(noon, &paris), noon);
        // The same UTC time is daytime in New York.
        let evening = ts("2026-12-03T21:30:00Z");
        let new_york = TimeZone::get("America/New_York").unwrap();
        assert_eq!(window.next_allowed(evening, &new_york), evening);
    }

    #[test]
    fn a_window_within_one_day_and_no_window() {
        let window = QuietWindow::parse("12:00-14:00").unwrap().unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(
            window.next_allowed(ts("2026-12-03T12:30:00Z"), &utc),
            ts("2026-12-03T14:00:00Z")
        );
        assert_eq!(QuietWindow::parse("off").unwrap(), None);
        assert_eq!(QuietWindow::parse("").unwrap(), None);
        assert_eq!(QuietWindow::parse("08:00-08:00").unwrap(), None);
        assert!(QuietWindow::parse("9pm to 8am").is_err());
        assert!(QuietWindow::parse("25:00-08:00").is_err());
    }

    #[test]
    fn the_zone_comes_from_the_identity_then_the_number_then_the_default() {
        let default = TimeZone::UTC;
        let zone = |identity, number| user_zone(identity, number, &default);
        assert_eq!(
            zone(Some("Asia/Tokyo"), Some("+33612345678")).iana_name(),
            Some("Asia/Tokyo")
        );
        assert_eq!(
            zone(None, Some("+33612345678")).iana_name(),
            Some("Europe/Paris")
        );
        assert_eq!(
            zone(Some("Not/AZone"), Some("+34612345678")).iana_name(),
            Some("Europe/Madrid")
        );
        assert_eq!(zone(None, Some("+999123")).iana_name(), Some("UTC"));
        assert_eq!(zone(None, None).iana_name(), Some("UTC"));
    }

    #[test]
    fn local_time_reads_as_the_user_reads_it() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let now = ts("2026-12-03T10:00:00Z");
        assert_eq!(
            local_time_text(ts("2026-12-03T17:30:00Z"), now, &paris),
            "18:30"
        );
        assert_eq!(
            local_time_text(ts("2026-12-04T07:00:00Z"), now, &paris),
            "2026-12-04 08:00"
        );
    }
}
