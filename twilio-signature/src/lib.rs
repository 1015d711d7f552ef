//! Twilio webhook signatures (`X-Twilio-Signature`), exactly as Twilio's official
//! helper libraries validate them.
//!
//! - Form requests: the full URL Twilio requested, then every parameter as
//!   `name` + `value`, names sorted; a repeated name's values sorted and
//!   de-duplicated. HMAC (SHA-1 with the Auth Token by default), base64.
//! - JSON requests: the query carries `bodySHA256`, the hex SHA-256 of the raw
//!   body; the URL alone is signed.
//! - The URL is tried without its port and with it (the default port added when
//!   there is none), since Twilio is inconsistent about ports.
//! - Several secrets may be valid at once (Auth Token rotation), each is tried.
//! - `X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=…` marks a request
//!   signed with a webhook shared key instead of the Auth Token
//!   ([`signed_with_shared_key`]), with the HMAC it names: HMAC-SHA1 unless it
//!   says `HMAC_SHA256` ([`Algorithm::from_settings_header`]).
//!
//! Comparisons are constant-time. The candidates (URL variant × secret) are
//! tried until one matches, the URL as requested first; a refused request has
//! tried them all.
//!
//! A crate of its own: ingress validates with it, and the Twilio sandbox
//! signs the webhooks it sends with it, without depending on ingress.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The HMAC a request is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA1 with the account's Auth Token (the classic signature).
    HmacSha1,
    /// HMAC-SHA256 with a webhook shared key.
    HmacSha256,
}

impl Algorithm {
    /// Reads `X-Twilio-Webhooks-Signature-Settings`; absent or without
    /// `algorithm=` means HMAC-SHA1. `None` for an algorithm we do not know.
    #[must_use]
    pub fn from_settings_header(header: Option<&str>) -> Option<Self> {
        let named = header.unwrap_or_default().split(',').find_map(|part| {
            let (name, value) = part.split_once('=')?;
            (name.trim() == "algorithm" && !value.trim().is_empty()).then(|| value.trim())
        });
        match named.map(str::to_ascii_uppercase).as_deref() {
            None | Some("HMAC_SHA1") => Some(Self::HmacSha1),
            Some("HMAC_SHA256") => Some(Self::HmacSha256),
            Some(_) => None,
        }
    }
}

/// Whether a request was signed with a webhook shared key rather than the
/// Auth Token: Twilio adds `X-Twilio-Webhooks-Signature-Settings` to those,
/// whatever algorithm it names, as the official libraries' request
/// validation middleware reads it.
#[must_use]
pub fn signed_with_shared_key(settings_header: Option<&str>) -> bool {
    settings_header.is_some_and(|header| !header.trim().is_empty())
}

/// What was signed besides the URL.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Form parameters in arrival order (repeated names allowed).
    Form(&'a [(String, String)]),
    /// A raw JSON (or other non-form) body, covered by `bodySHA256` in the query.
    Raw(&'a [u8]),
}

/// Why a request was refused. The variant names are the metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Twilio-Signature` header.
    #[error("missing X-Twilio-Signature")]
    Missing,
    /// The signature does not match any secret and URL variant.
    #[error("signature does not match")]
    Mismatch,
    /// A raw body without `bodySHA256` in the query: nothing covers the body.
    #[error("raw body without bodySHA256")]
    MissingBodyHash,
    /// `bodySHA256` does not match the body.
    #[error("bodySHA256 does not match the body")]
    BodyHashMismatch,
    /// An algorithm in the settings header we do not support, or no secret for it.
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
}

impl SignatureError {
    /// A short, stable label for metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Mismatch => "mismatch",
            Self::MissingBodyHash => "missing_body_hash",
            Self::BodyHashMismatch => "body_hash_mismatch",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
        }
    }
}

/// The parameters as Twilio signs them: sorted by name, then value, and
/// de-duplicated.
fn sorted_pairs(params: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// The string Twilio signs: the URL, then sorted, de-duplicated name+value pairs.
#[must_use]
pub fn signing_string(url: &str, params: &[(String, String)]) -> String {
    let pairs = sorted_pairs(params);
    let len = url.len() + pairs.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    let mut out = String::with_capacity(len);
    out.push_str(url);
    for (name, value) in pairs {
        out.push_str(name);
        out.push_str(value);
    }
    out
}

/// Longest base64 signature: HMAC-SHA256's 32 bytes.
const ENCODED_MAX: usize = 44;

/// The HMAC under `secret` of `url` followed by `pairs` (name, then value),
/// base64 into `out`; the encoded part of `out`.
fn sign_into<'o>(
    algorithm: Algorithm,
    secret: &str,
    url: &str,
    pairs: &[(&str, &str)],
    out: &'o mut [u8; ENCODED_MAX],
) -> &'o [u8] {
    fn mac<M: Mac + hmac::digest::KeyInit>(
        secret: &str,
        url: &str,
        pairs: &[(&str, &str)],
    ) -> hmac::digest::Output<M> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(url.as_bytes());
        for (name, value) in pairs {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
        mac.finalize().into_bytes()
    }
    let written = match algorithm {
        Algorithm::HmacSha1 => {
            STANDARD.encode_slice(mac::<Hmac<sha1::Sha1>>(secret, url, pairs), out)
        }
        Algorithm::HmacSha256 => {
            STANDARD.encode_slice(mac::<Hmac<Sha256>>(secret, url, pairs), out)
        }
    }
    .expect("a digest's base64 fits in ENCODED_MAX bytes");
    &out[..written]
}

/// The base64 HMAC of `data` under `secret`.
#[must_use]
pub fn compute(algorithm: Algorithm, secret: &str, data: &str) -> String {
    let mut out = [0u8; ENCODED_MAX];
    String::from_utf8(sign_into(algorithm, secret, data, &[], &mut out).to_vec())
        .expect("base64 is ASCII")
}

/// The URL without its port and with it (default port added), as the official
/// validators try them. Returns one entry when the two are the same.
#[must_use]
pub fn url_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    // An IPv6 literal keeps its colons inside brackets.
    let port_sep = match hostport.rfind(']') {
        Some(close) => hostport[close..].find(':').map(|i| close + i),
        None => hostport.rfind(':'),
    };
    let (host, port) = match port_sep {
        Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
        None => (hostport, None),
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    };
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    let with = format!(
        "{scheme}://{userinfo}{host}:{}{tail}",
        port.unwrap_or(default_port)
    );
    if without == with {
        vec![without]
    } else {
        vec![without, with]
    }
}

/// The value of `bodySHA256` in the URL's query, if any (first occurrence).
#[must_use]
pub fn body_hash_param(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "bodySHA256")
        .map(|(_, value)| value.into_owned())
}

/// Checks a request.
///
/// `url` is the public URL Twilio requested (configured base URL + path and query
/// exactly as received). `secrets` are the currently valid secrets for `algorithm`
/// (primary and secondary Auth Token during rotation).
///
/// # Errors
/// A [`SignatureError`] saying why the request is refused.
pub fn verify(
    url: &str,
    payload: Payload<'_>,
    signature: Option<&str>,
    algorithm: Option<Algorithm>,
    secrets: &[impl AsRef<str>],
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing)?;
    let algorithm = algorithm.ok_or(SignatureError::UnsupportedAlgorithm)?;
    if secrets.is_empty() {
        return Err(SignatureError::UnsupportedAlgorithm);
    }
    let params: &[(String, String)] = match payload {
        Payload::Form(params) => params,
        Payload::Raw(body) => {
            let expected = body_hash_param(url).ok_or(SignatureError::MissingBodyHash)?;
            let actual = hex::encode(Sha256::digest(body));
            if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(SignatureError::BodyHashMismatch);
            }
            &[]
        }
    };
    let given = signature.trim().as_bytes();
    let pairs = sorted_pairs(params);
    let mut out = [0u8; ENCODED_MAX];
    // Each comparison is constant-time; which candidate matched (the number
    // of HMACs computed) says nothing about any secret.
    let mut matches = |variant: &str| {
        secrets.iter().any(|secret| {
            let signed = sign_into(algorithm, secret.as_ref(), variant, &pairs, &mut out);
            bool::from(signed.ct_eq(given))
        })
    };
    // The URL as requested first: Twilio signs the URL it was given, so with
    // one valid secret a genuine request costs one HMAC and no other variant
    // is built.
    if matches(url) {
        return Ok(());
    }
    for variant in url_variants(url) {
        if variant != url && matches(&variant) {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The test vector of ../shared/TWILIO.md (checked with Twilio's Python library).
    fn vector_params() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn form_test_vector_validates_with_and_without_the_port() {
        let expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let p = vector_params();
        for url in [
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        ] {
            assert_eq!(
                verify(
                    url,
                    Payload::Form(&p),
                    Some(expected),
                    Some(Algorithm::HmacSha1),
                    &["12345"]
                ),
                Ok(()),
                "{url}"
            );
        }
        let data = signing_string("https://mycompany.com/myapp.php?foo=1&bar=2", &p);
        assert_eq!(compute(Algorithm::HmacSha1, "12345", &data), expected);
    }

    #[test]
    fn json_test_vector_validates() {
        let body = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#;
        let url = format!(
            "https://example.com/myapp?bodySHA256={}",
            hex::encode(Sha256::digest(body))
        );
        assert_eq!(
            verify(
                &url,
                Payload::Raw(body),
                Some("hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="),
                Some(Algorithm::HmacSha1),
                &["12345"]
            ),
            Ok(())
        );
        let mut tampered = body.to_vec();
        tampered[3] ^= 1;
        assert_eq!(
            verify(
                &url,
                Payload::Raw(&tampered),
                Some("hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="),
                Some(Algorithm::HmacSha1),
                &["12345"]
            ),
            Err(SignatureError::BodyHashMismatch)
        );
        assert_eq!(
            verify(
                "https://example.com/myapp",
                Payload::Raw(body),
                Some("x"),
                Some(Algorithm::HmacSha1),
                &["12345"]
            ),
            Err(SignatureError::MissingBodyHash)
        );
    }

    #[test]
    fn repeated_parameters_are_sorted_and_deduplicated() {
        let a = params(&[
            ("MediaUrl", "b"),
            ("MediaUrl", "a"),
            ("MediaUrl", "b"),
            ("Body", "x"),
        ]);
        assert_eq!(signing_string("u", &a), "uBodyxMediaUrlaMediaUrlb");
    }

    #[test]
    fn any_secret_of_the_rotation_set_validates() {
        let p = vector_params();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        // Signed with `secret` over `signed_url`, checked against `secrets`.
        let check = |signed_url: &str, secret: &str, secrets: &[&str]| {
            let sig = compute(Algorithm::HmacSha1, secret, &signing_string(signed_url, &p));
            verify(
                url,
                Payload::Form(&p),
                Some(&sig),
                Some(Algorithm::HmacSha1),
                secrets,
            )
        };
        assert_eq!(check(url, "secondary", &["primary", "secondary"]), Ok(()));
        assert_eq!(
            check(url, "secondary", &["primary"]),
            Err(SignatureError::Mismatch)
        );
        // The last candidate tried: the other URL variant under the second secret.
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(
            check(with_port, "secondary", &["primary", "secondary"]),
            Ok(())
        );
    }

    #[test]
    fn missing_signature_and_unknown_algorithm_are_refused() {
        let p = vector_params();
        assert_eq!(
            verify(
                "https://a/",
                Payload::Form(&p),
                None,
                Some(Algorithm::HmacSha1),
                &["x"]
            ),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify("https://a/", Payload::Form(&p), Some("x"), None, &["x"]),
            Err(SignatureError::UnsupportedAlgorithm)
        );
        assert_eq!(
            Algorithm::from_settings_header(Some("key=k1,algorithm=HMAC_SHA512")),
            None
        );
        assert_eq!(
            Algorithm::from_settings_header(Some("key=k1,algorithm=HMAC_SHA256")),
            Some(Algorithm::HmacSha256)
        );
        assert_eq!(
            Algorithm::from_settings_header(None),
            Some(Algorithm::HmacSha1)
        );
        assert_eq!(
            Algorithm::from_settings_header(Some("key=k1")),
            Some(Algorithm::HmacSha1)
        );
    }

    #[test]
    fn url_variants_cover_default_and_explicit_ports() {
        assert_eq!(
            url_variants("https://h/p?q=1"),
            ["https://h/p?q=1", "https://h:443/p?q=1"]
        );
        assert_eq!(
            url_variants("http://h:80/p"),
            ["http://h/p", "http://h:80/p"]
        );
        assert_eq!(
            url_variants("http://h:8080/p"),
            ["http://h/p", "http://h:8080/p"]
        );
        assert_eq!(
            url_variants("https://[::1]:8443/p"),
            ["https://[::1]/p", "https://[::1]:8443/p"]
        );
        assert_eq!(
            url_variants("https://[::1]/p"),
            ["https://[::1]/p", "https://[::1]:443/p"]
        );
    }
}
