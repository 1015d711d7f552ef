//! Short-lived signed URLs of objects in Si's media store.
//!
//! The cognition layer names media it wants sent either by a public URL
//! (passed to Twilio unchanged) or by a reference to an object in Si's media
//! store: `si-media:<object key>` (the key a `MEDIA_STORED` event gives, or
//! one the cognition layer wrote itself). Twilio cannot read the store, so
//! egress turns a reference into a URL of the media stage's public listener
//! at the moment it sends:
//!
//! ```text
//! <MEDIA_PUBLIC_BASE_URL>/media/<object key>?expires=<unix seconds>&signature=<HMAC>
//! ```
//!
//! The signature is HMAC-SHA256 with `MEDIA_URL_SECRET` over the object key and
//! the expiry (`<key>\n<expires>`), base64url without padding. The media
//! stage answers only while the URL has not expired and its signature
//! matches one of its keys (the current one and, during a rotation, the
//! previous one), compared in constant time. A URL names one object for a
//! few minutes and nothing else; it carries no credential that opens
//! anything more.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// The scheme of a reference to an object in Si's media store.
pub const SCHEME: &str = "si-media:";

/// The path our signed URLs are served under.
pub const PATH_PREFIX: &str = "/media/";

/// Shortest key accepted (bytes): a signing key is a secret, not a password.
pub const MIN_KEY_BYTES: usize = 32;

/// Characters escaped in a key's path segments (everything but unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The object key a media URL refers to, when it is a `si-media:`
/// reference (a leading `/` is dropped: keys are relative).
#[must_use]
pub fn object_key(url: &str) -> Option<&str> {
    url.trim()
        .strip_prefix(SCHEME)
        .map(|key| key.trim_start_matches('/'))
}

/// Whether `key` is a key we sign: non-empty path segments without `.` or
/// `..` and without control characters.
#[must_use]
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 1024
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !key.chars().any(char::is_control)
}

/// A signing key (`MEDIA_URL_SECRET`).
#[derive(Clone)]
pub struct UrlKey(Vec<u8>);

impl std::fmt::Debug for UrlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlKey(<redacted>)")
    }
}

impl UrlKey {
    /// The key from its configured text (its bytes as they are).
    ///
    /// # Errors
    /// When it is shorter than [`MIN_KEY_BYTES`].
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a media URL key needs at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 32`)"
            ));
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }

    fn mac(&self, key: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The signature of `key` until `expires` (unix seconds).
    #[must_use]
    pub fn sign(&self, key: &str, expires: u64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(key, expires).finalize().into_bytes())
    }

    fn verifies(&self, key: &str, expires: u64, signature: &[u8]) -> bool {
        self.mac(key, expires).verify_slice(signature).is_ok()
    }
}

/// Turns `si-media:` references into signed URLs (egress).
#[derive(Debug, Clone)]
pub struct Signer {
    base: String,
    key: UrlKey,
    ttl: Duration,
}

impl Signer {
    /// URLs under `base` (the media stage's public address, without a
    /// trailing slash), signed with `key`, valid for `ttl`.
    #[must_use]
    pub fn new(base: &str, key: UrlKey, ttl: Duration) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            key,
            ttl,
        }
    }

    /// The signed URL of `key`, valid for the signer's TTL from `now`.
    ///
    /// # Errors
    /// When `key` is not a valid object key.
    pub fn url(&self, key: &str, now: SystemTime) -> Result<String, String> {
        if !valid_key(key) {
            return Err(format!("{key:?} is not a media store object key"));
        }
        let expires = unix_secs(now).saturating_add(self.ttl.as_secs().max(1));
        let path: Vec<String> = key
            .split('/')
            .map(|part| utf8_percent_encode(part, SEGMENT).to_string())
            .collect();
        Ok(format!(
            "{}{PATH_PREFIX}{}?expires={expires}&signature={}",
            self.base,
            path.join("/"),
            self.key.sign(key, expires)
        ))
    }
}

/// Why a signed URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `expires` or `signature` missing or malformed, or a bad key.
    #[error("not a signed media URL")]
    Malformed,
    /// Past its expiry.
    #[error("the media URL has expired")]
    Expired,
    /// Signed with no key we hold.
    #[error("the media URL's signature does not match")]
    BadSignature,
}

/// Checks a request for `key` (decoded from the path) with the query's
/// `expires` and `signature` against `keys` at `now`.
///
/// # Errors
/// Why the request is refused.
pub fn verify(
    keys: &[UrlKey],
    key: &str,
    expires: Option<&str>,
    signature: Option<&str>,
    now: SystemTime,
) -> Result<(), Refused> {
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return Err(Refused::Malformed);
    };
    let expires: u64 = expires.parse().map_err(|_| Refused::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Refused::Malformed)?;
    if !valid_key(key) {
        return Err(Refused::Malformed);
    }
    // The signature first: an expiry is only worth reporting when it is ours.
    if !keys.iter().any(|k| k.verifies(key, expires, &signature)) {
        return Err(Refused::BadSignature);
    }
    if unix_secs(now) >= expires {
        return Err(Refused::Expired);
    }
    Ok(())
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(text: &str) -> UrlKey {
        UrlKey::new(&text.repeat(32)).unwrap()
    }

    fn parts(url: &str) -> (String, String, String) {
        let parsed = reqwest::Url::parse(url).unwrap();
        let q = |name: &str| {
            parsed
                .query_pairs()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        let path = parsed.path().strip_prefix(PATH_PREFIX).unwrap();
        let key = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .unwrap()
            .into_owned();
        (key, q("expires"), q("signature"))
    }

    #[test]
    fn references_name_object_keys() {
        assert_eq!(
            object_key("si-media:media/CH1/a.png"),
            Some("media/CH1/a.png")
        );
        assert_eq!(object_key(" si-media:/out/x "), Some("out/x"));
        assert_eq!(object_key("https://example.com/a.png"), None);
        assert!(valid_key("media/CH1/MM1/0-abc"));
        for bad in ["", "a//b", "../x", "a/./b", "a/\n"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_signed_url_opens_its_object_until_it_expires() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let signer = Signer::new(
            "https://si.example.com/",
            key("k"),
            Duration::from_secs(600),
        );
        let url = signer.url("out/CH1/a b+c.png", now).unwrap();
        assert!(
            url.starts_with(
                "https://si.example.com/media/out/CH1/a%20b%2Bc.png?expires=1800000600&signature="
            ),
            "{url}"
        );
        let (k, expires, signature) = parts(&url);
        assert_eq!(k, "out/CH1/a b+c.png");
        let keys = [key("k")];
        let check =
            |k: &str, e: &str, s: &str, at: SystemTime| verify(&keys, k, Some(e), Some(s), at);
        assert_eq!(check(&k, &expires, &signature, now), Ok(()));
        assert_eq!(
            check(&k, &expires, &signature, now + Duration::from_secs(599)),
            Ok(())
        );
        assert_eq!(
            check(&k, &expires, &signature, now + Duration::from_secs(600)),
            Err(Refused::Expired)
        );
        // Another object, a later expiry, another key: refused.
        assert_eq!(
            check("out/CH1/other.png", &expires, &signature, now),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check(&k, "1900000000", &signature, now),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(&[key("x")], &k, Some(&expires), Some(&signature), now),
            Err(Refused::BadSignature)
        );
        // During a rotation the previous key still opens its URLs.
        assert_eq!(
            verify(
                &[key("x"), key("k")],
                &k,
                Some(&expires),
                Some(&signature),
                now
            ),
            Ok(())
        );
        assert_eq!(
            verify(&keys, &k, None, Some(&signature), now),
            Err(Refused::Malformed)
        );
        assert_eq!(
            verify(&keys, &k, Some("soon"), Some(&signature), now),
            Err(Refused::Malformed)
        );
        assert_eq!(
            verify(&keys, &k, Some(&expires), Some("***"), now),
            Err(Refused::Malformed)
        );
        assert!(signer.url("../etc/passwd", now).is_err());
    }

    #[test]
    fn keys_are_long_secrets_never_printed() {
        assert!(UrlKey::new("short").is_err());
        let k = key("s");
        assert_eq!(format!("{k:?}"), "UrlKey(<redacted>)");
    }
}
