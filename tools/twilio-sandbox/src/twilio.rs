//! Twilio's shapes: error bodies, SIDs, dates, number checks and segment counts.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A Twilio REST error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl TwilioError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn authenticate() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {path} was not found"),
        )
    }

    pub fn too_many_requests() -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests")
    }

    pub fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "An internal server error has occurred",
        )
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "code": self.code,
            "message": self.message,
            "more_info": format!("https://www.twilio.com/docs/errors/{}", self.code),
            "status": self.status.as_u16(),
        })
    }
}

impl IntoResponse for TwilioError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
        }
        response
    }
}

/// A new SID: the two-letter prefix and 32 hex digits.
pub fn sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Whether `address` (after an optional `whatsapp:`/`sms:`/`mms:` prefix) is
/// E.164 (`si_schemas::records::is_e164`).
#[must_use]
pub fn is_e164(address: &str) -> bool {
    si_schemas::records::is_e164(bare_number(address))
}

/// The number without a channel prefix.
pub fn bare_number(address: &str) -> &str {
    for prefix in ["whatsapp:", "sms:", "mms:"] {
        if let Some(rest) = address.strip_prefix(prefix) {
            return rest;
        }
    }
    address
}

/// The ISO 3166 country of a number, as Twilio's `FromCountry` /
/// `ToCountry` say it: the region the number belongs to, else the main
/// country of its calling code (a toll-free `+1 8xx` is `US`); `None` for a
/// number that does not parse (the parameter is then left out).
#[must_use]
pub fn country_of(address: &str) -> Option<String> {
    let number = phonenumber::parse(None, bare_number(address)).ok()?;
    if let Some(id) = number.country().id() {
        return Some(id.as_ref().to_owned());
    }
    let regions = phonenumber::metadata::DATABASE.by_code(&number.country().code())?;
    let main = regions.iter().find(|m| m.is_main_country_for_code());
    main.or_else(|| regions.first()).map(|m| m.id().to_owned())
}

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// The SMS segments a body takes: GSM-7 (160 alone, 153 per concatenated
/// segment, extension characters cost two) or else UCS-2 (70, 67, in UTF-16
/// units).
#[must_use]
pub fn num_segments(body: &str) -> u32 {
    let septets: Option<usize> = body
        .chars()
        .map(|c| {
            if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (units, single, multi) = match septets {
        Some(n) => (n, 160, 153),
        None => (body.encode_utf16().count(), 70, 67),
    };
    let segments = if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    u32::try_from(segments).unwrap_or(u32::MAX)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    hour: i64,
    minute: i64,
    second: i64,
}

fn parts(ms: i64) -> Parts {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Parts {
        year,
        month,
        day,
        // 1970-01-01 was a Thursday.
        weekday: usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0),
        hour: in_day / 3600,
        minute: in_day % 3600 / 60,
        second: in_day % 60,
    }
}

/// `Sun, 22 Nov 2026 05:44:10 +0000`, as the 2010-04-01 API writes dates.
pub fn rfc2822(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(ms);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[p.weekday],
        p.day,
        MONTHS[(p.month as usize).saturating_sub(1) % 12],
        p.year,
        p.hour,
        p.minute,
        p.second
    )
}

/// Now, in milliseconds since the epoch (what every record of the sandbox keeps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `2026-11-22T05:44:10Z`, as the v1 APIs and Conversations webhooks write dates.
pub fn iso8601(ms: i64) -> String {
    let p = parts(ms);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_come_from_the_numbers() {
        assert_eq!(country_of("+14155550100").as_deref(), Some("US"));
        assert_eq!(country_of("whatsapp:+5215512345678").as_deref(), Some("MX"));
        assert_eq!(country_of("+33612345678").as_deref(), Some("FR"));
        assert_eq!(country_of("+16135550123").as_deref(), Some("CA"));
        assert_eq!(
            country_of("+18005550100").as_deref(),
            Some("US"),
            "toll-free"
        );
        assert_eq!(country_of("not a number"), None);
    }

    #[test]
    fn e164_check() {
        assert!(is_e164("+14155550100"));
        assert!(is_e164("whatsapp:+5215512345678"));
        assert!(!is_e164("4155550100"));
        assert!(!is_e164("+141555"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1415555010a"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164(""));
    }

    #[test]
    fn segments_gsm_and_ucs2() {
        assert_eq!(num_segments(""), 1);
        assert_eq!(num_segments(&"a".repeat(160)), 1);
        assert_eq!(num_segments(&"a".repeat(161)), 2);
        assert_eq!(num_segments(&"a".repeat(306)), 2);
        assert_eq!(num_segments(&"a".repeat(307)), 3);
        // Extension characters cost two septets.
        assert_eq!(num_segments(&"€".repeat(80)), 1);
        assert_eq!(num_segments(&"€".repeat(81)), 2);
        assert_eq!(num_segments(&"é".repeat(70)), 1);
        assert_eq!(num_segments(&"ü".repeat(160)), 1);
        assert_eq!(num_segments(&"ж".repeat(70)), 1);
        assert_eq!(num_segments(&"ж".repeat(71)), 2);
        // An emoji is two UTF-16 units.
        assert_eq!(num_segments(&"🙂".repeat(35)), 1);
        assert_eq!(num_segments(&"🙂".repeat(36)), 2);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        // 2026-11-22T05:44:10Z
        let ms = 1_795_326_250_000;
        assert_eq!(rfc2822(ms), "Sun, 22 Nov 2026 05:44:10 +0000");
        assert_eq!(iso8601(ms), "2026-11-22T05:44:10Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn error_body_has_twilio_fields() {
        let body = TwilioError::bad_request(21211, "bad").body();
        assert_eq!(body["code"], 21211);
        assert_eq!(body["status"], 400);
        assert_eq!(body["message"], "bad");
        assert_eq!(
            body["more_info"],
            "https://www.twilio.com/docs/errors/21211"
        );
    }
}
