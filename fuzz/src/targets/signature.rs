//! `X-Twilio-Signature` and `X-Twilio-Webhooks-Signature-Settings`.

use sha2::Digest as _;
use si_twilio_signature::{
    Algorithm, Payload, SignatureError, compute, signing_string, url_variants, verify,
};

use super::{Cursor, text};
use crate::engine::Target;

const WORDS: &[&str] = &[
    "https://",
    "http://",
    "://",
    ":443",
    ":80",
    ":8443",
    "@",
    "[::1]",
    "]",
    "/",
    "?",
    "#",
    "&",
    "=",
    "bodySHA256=",
    "key=k1,algorithm=HMAC_SHA256",
    "algorithm=HMAC_SHA1",
    "algorithm=",
    "algorithm=hmac_sha256",
    ",",
    " ",
    "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
    "MediaUrl0",
];

/// The signature check.
pub const SIGNATURE: Target = Target {
    name: "signature",
    about: "the signature Twilio would compute is accepted for every URL variant and secret; any other signature, secret, body or parameter is refused",
    run: signature,
    dictionary: WORDS,
    generate: None,
    max_len: 2048,
};

/// Input: settings header, URL, secret, offered signature, then parameters
/// (`name=value` fields).
fn signature(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let settings = text(cursor.field());
    let url = text(cursor.field());
    let secret = text(cursor.field());
    let offered = text(cursor.field());
    let mut params = Vec::new();
    loop {
        let field = cursor.field();
        if field.is_empty() {
            break;
        }
        let field = text(field);
        let (name, value) = field.split_once('=').unwrap_or((field.as_str(), ""));
        params.push((name.to_owned(), value.to_owned()));
    }

    let algorithm = Algorithm::from_settings_header(Some(&settings));
    let variants = url_variants(&url);
    assert!(
        (1..=2).contains(&variants.len()),
        "{} URL variants",
        variants.len()
    );
    let secrets = [secret.as_str()];

    // Parameter order never matters.
    let mut reversed = params.clone();
    reversed.reverse();
    assert_eq!(
        signing_string(&url, &params),
        signing_string(&url, &reversed)
    );

    for alg in [Algorithm::HmacSha1, Algorithm::HmacSha256] {
        for variant in &variants {
            let good = compute(alg, &secret, &signing_string(variant, &params));
            assert_eq!(
                verify(
                    &url,
                    Payload::Form(&params),
                    Some(&good),
                    Some(alg),
                    &secrets
                ),
                Ok(()),
                "the right signature for {variant:?} was refused"
            );
            // Another secret (a suffix: HMAC pads short keys with zero bytes,
            // so `k` and `k\0` are the same key).
            let other = format!("{secret}x");
            assert_eq!(
                verify(
                    &url,
                    Payload::Form(&params),
                    Some(&good),
                    Some(alg),
                    &[&other]
                ),
                Err(SignatureError::Mismatch),
                "a signature made with another secret was accepted"
            );
            // A changed signature.
            let mut bad = good.clone().into_bytes();
            let at = usize::from(cursor.byte()) % bad.len();
            bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap_or_default();
            assert_eq!(
                verify(
                    &url,
                    Payload::Form(&params),
                    Some(&bad),
                    Some(alg),
                    &secrets
                ),
                Err(SignatureError::Mismatch),
                "a changed signature was accepted"
            );
            // A parameter more (a repeated identical pair is de-duplicated, as Twilio does).
            let injected = ("Injected".to_owned(), "1".to_owned());
            if !params.contains(&injected) {
                let mut more = params.clone();
                more.push(injected);
                assert!(
                    verify(&url, Payload::Form(&more), Some(&good), Some(alg), &secrets).is_err(),
                    "an added parameter was accepted"
                );
            }
        }
    }

    // The offered signature is accepted only if it is one we would compute.
    if let Some(alg) = algorithm
        && verify(
            &url,
            Payload::Form(&params),
            Some(&offered),
            Some(alg),
            &secrets,
        )
        .is_ok()
    {
        assert!(
            variants
                .iter()
                .any(|v| { compute(alg, &secret, &signing_string(v, &params)) == offered.trim() }),
            "accepted a signature nobody computed"
        );
    }

    // Raw bodies: covered by bodySHA256, and only by it.
    let body = data;
    let hash = hex::encode(sha2::Sha256::digest(body));
    let separator = if url.contains('?') { '&' } else { '?' };
    let (base, fragment) = url.split_once('#').unwrap_or((url.as_str(), ""));
    let hashed_url = if fragment.is_empty() && !url.contains('#') {
        format!("{url}{separator}bodySHA256={hash}")
    } else {
        format!("{base}{separator}bodySHA256={hash}#{fragment}")
    };
    let hashed_variants = url_variants(&hashed_url);
    let good = compute(Algorithm::HmacSha1, &secret, &hashed_variants[0]);
    let raw = verify(
        &hashed_url,
        Payload::Raw(body),
        Some(&good),
        Some(Algorithm::HmacSha1),
        &secrets,
    );
    // An earlier bodySHA256 in the URL wins (the first occurrence is used).
    if si_twilio_signature::body_hash_param(&hashed_url).as_deref() == Some(hash.as_str()) {
        assert_eq!(raw, Ok(()), "a correctly hashed raw body was refused");
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert_eq!(
            verify(
                &hashed_url,
                Payload::Raw(&tampered),
                Some(&good),
                Some(Algorithm::HmacSha1),
                &secrets
            ),
            Err(SignatureError::BodyHashMismatch),
            "a changed raw body was accepted"
        );
    } else {
        assert!(
            raw.is_err(),
            "a raw body under another bodySHA256 was accepted"
        );
    }
    assert_eq!(
        verify(&url, Payload::Form(&params), None, algorithm, &secrets),
        Err(SignatureError::Missing)
    );
}
