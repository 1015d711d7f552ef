//! When a call may be placed: the user's time zones and the quiet window.
//!
//! The user's time zone is the identity record's `attributes["time_zone"]`
//! (an IANA name). Without one, the phone number says where the user may
//! be: for North American numbers (+1) the zones of the longest listed
//! prefix, else of the area code (the generated tables in `nanp_zones.rs`),
//! else every zone of the number's country
//! ([`zones_of_region`]), else `VOICE_DEFAULT_TIME_ZONE`. No call is placed
//! inside the quiet window (`VOICE_QUIET_HOURS`, e.g. `21:00-08:00` local
//! time) of any of those zones: where the number does not tell which of
//! several zones the user is in, only the hours that are allowed in all of
//! them are ([`QuietWindow::next_allowed_in_all`]). A call that would fall in
//! the window moves to its end.

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

impl QuietWindow {
    /// The first moment at or after `at` outside the window in every one of
    /// `zones`: the user may be in any of them. `at` itself when `zones` is
    /// empty. When no moment is allowed in all of them (zones further apart
    /// than the allowed hours, with a `VOICE_QUIET_HOURS` much longer than
    /// the default), the first zone's, the likeliest: a call must still be
    /// placed some time.
    #[must_use]
    pub fn next_allowed_in_all(self, at: Timestamp, zones: &[TimeZone]) -> Timestamp {
        let mut t = at;
        // Each round moves `t` to a window's end; with zones at most a day
        // apart a few rounds settle it.
        for _ in 0..(4 * zones.len().max(1)) {
            let later = zones
                .iter()
                .map(|zone| self.next_allowed(t, zone))
                .max()
                .unwrap_or(t);
            if later == t {
                return t;
            }
            t = later;
        }
        zones.first().map_or(at, |zone| self.next_allowed(at, zone))
    }
}

impl QuietWindow {
    /// The first moment after `at` that is inside the window in one of
    /// `zones`: the latest a call due at `at` may still be placed. `None`
    /// without zones.
    #[must_use]
    pub fn next_quiet_start(self, at: Timestamp, zones: &[TimeZone]) -> Option<Timestamp> {
        zones
            .iter()
            .filter_map(|zone| {
                let local = at.to_zoned(zone.clone());
                [local.date(), local.date().tomorrow().ok()?]
                    .into_iter()
                    .filter_map(|date| date.to_datetime(self.start).to_zoned(zone.clone()).ok())
                    .map(|start| start.timestamp())
                    .find(|start| *start > at)
            })
            .min()
    }
}

/// The time zones a user may be in, the one to name to them first: the
/// identity record's, else the area code's (+1), else every zone of the
/// number's country, else `default`. Unknown names are skipped; never empty.
#[must_use]
pub fn user_zones(
    identity_zone: Option<&str>,
    e164: Option<&str>,
    default: &TimeZone,
) -> Vec<TimeZone> {
    if let Some(zone) = identity_zone.and_then(|name| TimeZone::get(name.trim()).ok()) {
        return vec![zone];
    }
    let zones: Vec<TimeZone> = e164
        .and_then(|e164| phonenumber::parse(None, e164).ok())
        .map(|number| {
            let names = area_code_zones(&number).or_else(|| {
                let region = number.country().id()?;
                Some(zones_of_region(region.as_ref()))
            });
            names
                .unwrap_or_default()
                .iter()
                .filter_map(|name| TimeZone::get(name).ok())
                .collect()
        })
        .unwrap_or_default();
    if zones.is_empty() {
        vec![default.clone()]
    } else {
        zones
    }
}

/// The zones of a North American number, when known: those of the longest
/// listed prefix of its national number (as libphonenumber maps numbers to
/// zones), else every zone its area code's prefixes name.
fn area_code_zones(number: &phonenumber::PhoneNumber) -> Option<&'static [&'static str]> {
    use crate::nanp_zones::{NANP_PREFIX_ZONES, NANP_ZONES};
    if number.code().value() != 1 {
        return None;
    }
    let national = number.national().value();
    let digits = format!("{national:010}");
    let listed = (3..=6).rev().find_map(|len| {
        let prefix = digits.get(..len)?;
        let i = NANP_PREFIX_ZONES
            .binary_search_by_key(&prefix, |(p, _)| *p)
            .ok()?;
        Some(NANP_PREFIX_ZONES[i].1)
    });
    listed.or_else(|| {
        let npa = u16::try_from(national / 10_000_000).ok()?;
        NANP_ZONES
            .binary_search_by_key(&npa, |(code, _)| *code)
            .ok()
            .map(|i| NANP_ZONES[i].1)
    })
}

/// The IANA zones of a country (ISO 3166 alpha-2), the one most of its
/// people live in first; empty for a country not listed.
#[must_use]
pub fn zones_of_region(region: &str) -> &'static [&'static str] {
    match region {
        "US" => &[
            "America/New_York",
            "America/Chicago",
            "America/Denver",
            "America/Phoenix",
            "America/Los_Angeles",
            "America/Anchorage",
            "Pacific/Honolulu",
        ],
        "CA" => &[
            "America/Toronto",
            "America/St_Johns",
            "America/Halifax",
            "America/Winnipeg",
            "America/Regina",
            "America/Edmonton",
            "America/Vancouver",
        ],
        "MX" => &[
            "America/Mexico_City",
            "America/Cancun",
            "America/Mazatlan",
            "America/Hermosillo",
            "America/Tijuana",
        ],
        "BR" => &[
            "America/Sao_Paulo",
            "America/Noronha",
            "America/Manaus",
            "America/Rio_Branco",
        ],
        "CL" => &["America/Santiago", "Pacific/Easter"],
        "PT" => &["Europe/Lisbon", "Atlantic/Azores"],
        "ES" => &["Europe/Madrid", "Atlantic/Canary"],
        "RU" => &[
            "Europe/Moscow",
            "Europe/Kaliningrad",
            "Europe/Samara",
            "Asia/Yekaterinburg",
            "Asia/Omsk",
            "Asia/Novosibirsk",
            "Asia/Krasnoyarsk",
            "Asia/Irkutsk",
            "Asia/Yakutsk",
            "Asia/Vladivostok",
            "Asia/Magadan",
            "Asia/Kamchatka",
        ],
        "ID" => &["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"],
        "AU" => &[
            "Australia/Sydney",
            "Australia/Brisbane",
            "Australia/Adelaide",
            "Australia/Darwin",
            "Australia/Perth",
        ],
        "NZ" => &["Pacific/Auckland", "Pacific/Chatham"],
        "AR" => &["America/Argentina/Buenos_Aires"],
        "CO" => &["America/Bogota"],
        "PE" => &["America/Lima"],
        "VE" => &["America/Caracas"],
        "GB" => &["Europe/London"],
        "IE" => &["Europe/Dublin"],
        "FR" => &["Europe/Paris"],
        "BE" => &["Europe/Brussels"],
        "NL" => &["Europe/Amsterdam"],
        "LU" => &["Europe/Luxembourg"],
        "DE" => &["Europe/Berlin"],
        "AT" => &["Europe/Vienna"],
        "CH" => &["Europe/Zurich"],
        "IT" => &["Europe/Rome"],
        "DK" => &["Europe/Copenhagen"],
        "SE" => &["Europe/Stockholm"],
        "NO" => &["Europe/Oslo"],
        "FI" => &["Europe/Helsinki"],
        "PL" => &["Europe/Warsaw"],
        "CZ" => &["Europe/Prague"],
        "GR" => &["Europe/Athens"],
        "RO" => &["Europe/Bucharest"],
        "UA" => &["Europe/Kyiv"],
        "TR" => &["Europe/Istanbul"],
        "IL" => &["Asia/Jerusalem"],
        "AE" => &["Asia/Dubai"],
        "SA" => &["Asia/Riyadh"],
        "EG" => &["Africa/Cairo"],
        "MA" => &["Africa/Casablanca"],
        "NG" => &["Africa/Lagos"],
        "KE" => &["Africa/Nairobi"],
        "ZA" => &["Africa/Johannesburg"],
        "IN" => &["Asia/Kolkata"],
        "PK" => &["Asia/Karachi"],
        "BD" => &["Asia/Dhaka"],
        "CN" => &["Asia/Shanghai"],
        "HK" => &["Asia/Hong_Kong"],
        "TW" => &["Asia/Taipei"],
        "JP" => &["Asia/Tokyo"],
        "KR" => &["Asia/Seoul"],
        "SG" => &["Asia/Singapore"],
        "MY" => &["Asia/Kuala_Lumpur"],
        "TH" => &["Asia/Bangkok"],
        "VN" => &["Asia/Ho_Chi_Minh"],
        "PH" => &["Asia/Manila"],
        _ => &[],
    }
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
    fn the_zones_come_from_the_identity_then_the_number_then_the_default() {
        let default = TimeZone::UTC;
        let zones = |identity, number| -> Vec<String> {
            user_zones(identity, number, &default)
                .iter()
                .map(|z| z.iana_name().unwrap_or_default().to_owned())
                .collect()
        };
        assert_eq!(
            zones(Some("Asia/Tokyo"), Some("+33612345678")),
            ["Asia/Tokyo"]
        );
        assert_eq!(zones(None, Some("+33612345678")), ["Europe/Paris"]);
        assert_eq!(
            zones(Some("Not/AZone"), Some("+34612345678")),
            ["Europe/Madrid", "Atlantic/Canary"]
        );
        // North American numbers: the area code's zones.
        assert_eq!(zones(None, Some("+12025550100")), ["America/New_York"]);
        assert_eq!(zones(None, Some("+14155550100")), ["America/Los_Angeles"]);
        assert_eq!(zones(None, Some("+18085550100")), ["Pacific/Honolulu"]);
        assert_eq!(zones(None, Some("+16045550100")), ["America/Vancouver"]);
        assert!(
            zones(None, Some("+12085550100")).len() > 1,
            "Idaho spans two"
        );
        // The longest listed prefix decides, as in libphonenumber: most of
        // area code 219 is Eastern, its exchange 226 Central; 208-201 is
        // Mountain only.
        assert_eq!(zones(None, Some("+12192261234")), ["America/Chicago"]);
        assert_eq!(zones(None, Some("+12195550100")), ["America/New_York"]);
        assert_eq!(zones(None, Some("+12082011234")), ["America/Denver"]);
        // An area code listed only by longer prefixes: theirs.
        assert_eq!(zones(None, Some("+13105550100")), ["America/Los_Angeles"]);
        // A toll-free number says nothing: every zone of the country.
        assert_eq!(zones(None, Some("+18005550100")).len(), 7);
        assert_eq!(zones(None, Some("+61412345678")).len(), 5);
        assert_eq!(zones(None, Some("+999123")), ["UTC"]);
        assert_eq!(zones(None, None), ["UTC"]);
        // Every listed zone exists, and the prefixes are sorted for the
        // binary search.
        for (npa, names) in crate::nanp_zones::NANP_ZONES {
            for name in *names {
                assert!(TimeZone::get(name).is_ok(), "{npa}: {name}");
            }
        }
        for (prefix, names) in crate::nanp_zones::NANP_PREFIX_ZONES {
            for name in *names {
                assert!(TimeZone::get(name).is_ok(), "{prefix}: {name}");
            }
        }
        assert!(
            crate::nanp_zones::NANP_PREFIX_ZONES
                .windows(2)
                .all(|w| w[0].0 < w[1].0)
        );
        for region in [
            "US", "CA", "MX", "BR", "CL", "PT", "ES", "RU", "ID", "AU", "NZ", "GB",
        ] {
            for name in zones_of_region(region) {
                assert!(TimeZone::get(name).is_ok(), "{region}: {name}");
            }
        }
    }

    #[test]
    fn a_call_may_wait_only_until_the_quiet_window_starts_somewhere() {
        let window = QuietWindow::parse("21:00-08:00").unwrap().unwrap();
        let paris = [TimeZone::get("Europe/Paris").unwrap()];
        // 18:00 in Paris: until 21:00 there.
        assert_eq!(
            window.next_quiet_start(ts("2026-12-03T17:00:00Z"), &paris),
            Some(ts("2026-12-03T20:00:00Z"))
        );
        // 08:00 in Paris: until 21:00 that day.
        assert_eq!(
            window.next_quiet_start(ts("2026-12-04T07:00:00Z"), &paris),
            Some(ts("2026-12-04T20:00:00Z"))
        );
        // Several zones: the first of them to go quiet.
        let us = user_zones(None, Some("+18005550100"), &TimeZone::UTC);
        assert_eq!(
            window.next_quiet_start(ts("2026-12-03T18:00:00Z"), &us),
            Some(ts("2026-12-04T02:00:00Z")),
            "21:00 in New York comes first"
        );
        assert_eq!(
            window.next_quiet_start(ts("2026-12-03T18:00:00Z"), &[]),
            None
        );
    }

    #[test]
    fn where_the_zone_is_unsure_only_hours_allowed_in_every_zone_are() {
        let window = QuietWindow::parse("21:00-08:00").unwrap().unwrap();
        let zone = |name| TimeZone::get(name).unwrap();
        let us = user_zones(None, Some("+18005550100"), &TimeZone::UTC);
        // 09:00 in New York (winter, UTC-5) is 04:00 in Honolulu (UTC-10):
        // the call waits for 08:00 there, 13:00 in New York.
        assert_eq!(
            window.next_allowed_in_all(ts("2026-12-03T14:00:00Z"), &us),
            ts("2026-12-03T18:00:00Z")
        );
        // 20:30 in New York is allowed in every zone: unchanged.
        let evening = ts("2026-12-04T01:30:00Z");
        assert_eq!(window.next_allowed_in_all(evening, &us), evening);
        // 21:30 in New York: quiet there, so tomorrow 13:00 New York time
        // (08:00 in Honolulu).
        assert_eq!(
            window.next_allowed_in_all(ts("2026-12-04T02:30:00Z"), &us),
            ts("2026-12-04T18:00:00Z")
        );
        // One zone: the same as next_allowed.
        let paris = [zone("Europe/Paris")];
        let late = ts("2026-12-03T21:30:00Z");
        assert_eq!(
            window.next_allowed_in_all(late, &paris),
            window.next_allowed(late, &paris[0])
        );
        // No hour allowed in both New York and Honolulu (two allowed hours,
        // five apart): New York's, the first zone's.
        let narrow = QuietWindow::parse("10:00-08:00").unwrap().unwrap();
        let both = [zone("America/New_York"), zone("Pacific/Honolulu")];
        let at = ts("2026-12-03T12:00:00Z");
        assert_eq!(
            narrow.next_allowed_in_all(at, &both),
            narrow.next_allowed(at, &both[0])
        );
        // Russia spans ten hours: still a window where all allow a call.
        let russia: Vec<TimeZone> = zones_of_region("RU").iter().map(|n| zone(n)).collect();
        let at = window.next_allowed_in_all(ts("2026-12-03T00:00:00Z"), &russia);
        for z in &russia {
            assert_eq!(window.next_allowed(at, z), at, "{z:?}");
        }
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
