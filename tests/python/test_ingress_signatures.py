"""Ingress against Twilio's official Python library as the signature oracle.

The library's RequestValidator signs every request (forms, repeated
parameters, query strings, the default port, JSON bodies with bodySHA256, the
secondary token, webhook shared keys); ingress must accept them all and store every parameter byte
for byte. Any one-byte change to a parameter, the URL or the body must get 403
with nothing written.
"""

import hashlib
import urllib.parse

import pytest
from twilio.request_validator import RequestValidator

from conftest import PUBLIC, SECONDARY, SHARED, TOKEN, read_records


class MultiDict(dict):
    """Repeated form parameters, as Flask's MultiDict offers them to the validator."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = list(pairs)
        for name, value in self.pairs:
            self.setdefault(name, value)

    def getall(self, name):
        return [v for n, v in self.pairs if n == name]


def form(pairs):
    return urllib.parse.urlencode(pairs)


def sign(token, url, pairs):
    return RequestValidator(token).compute_signature(url, MultiDict(pairs))


INBOUND = [
    ("MessageSid", "SM11111111111111111111111111111111"),
    ("AccountSid", "AC00000000000000000000000000000001"),
    ("From", "+14155550100"),
    ("To", "+14155550199"),
    ("Body", "Hi Si! Ça va? 🙂 1+1=2 & 50% off"),
    ("NumMedia", "0"),
]

REPEATED = [
    ("MessageSid", "SM22222222222222222222222222222222"),
    ("From", "whatsapp:+14155550100"),
    ("NumMedia", "3"),
    ("MediaUrl0", "https://api.twilio.com/m/2"),
    ("MediaUrl0", "https://api.twilio.com/m/1"),
    ("MediaUrl0", "https://api.twilio.com/m/1"),
    ("Body", ""),
]

# (name, path and query as requested, the URL Twilio signed, parameters, token)
CASES = [
    ("form", "/twilio/messaging/inbound", f"{PUBLIC}/twilio/messaging/inbound", INBOUND, TOKEN),
    ("repeated parameters", "/twilio/messaging/inbound", f"{PUBLIC}/twilio/messaging/inbound", REPEATED, TOKEN),
    (
        "query string",
        "/twilio/messaging/status?conversation=CH9&n=1",
        f"{PUBLIC}/twilio/messaging/status?conversation=CH9&n=1",
        [("MessageSid", "SM33333333333333333333333333333333"), ("MessageStatus", "delivered"), ("To", "+14155550100")],
        TOKEN,
    ),
    (
        "default port in the signed URL",
        "/twilio/voice/status?conversation=CH8",
        "https://si.example.test:443/twilio/voice/status?conversation=CH8",
        [("CallSid", "CA44444444444444444444444444444444"), ("CallStatus", "ringing")],
        TOKEN,
    ),
    (
        "secondary token",
        "/twilio/conversations/events",
        f"{PUBLIC}/twilio/conversations/events",
        [("EventType", "onMessageAdded"), ("ConversationSid", "CH55555555555555555555555555555555"), ("MessageSid", "IM5")],
        SECONDARY,
    ),
]


def test_the_test_vectors_of_twilio_md_hold_for_the_oracle():
    validator = RequestValidator("12345")
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert validator.compute_signature(url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert validator.validate(url.replace(".com/", ".com:443/"), params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_requests_signed_by_the_official_library_are_accepted_and_stored_byte_for_byte(ingress, prefix):
    for name, path, signed_url, pairs, token in CASES:
        response = ingress.post(path, form(pairs), sign(token, signed_url, pairs))
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"

    body = b'{"EventType":"onMessageAdded","ConversationSid":"CH66","MessageSid":"IM6","Body":"caf\\u00e9 \xe2\x82\xac"}'
    digest = hashlib.sha256(body).hexdigest()
    path = f"/twilio/conversations/events?bodySHA256={digest}"
    validator = RequestValidator(TOKEN)
    signature = validator.compute_signature(PUBLIC + path, {})
    assert validator.validate(PUBLIC + path, body.decode(), signature), "the oracle itself accepts it"
    response = ingress.post(path, body, signature, content_type="application/json")
    assert response.status_code == 200, response.text

    records = read_records(f"{prefix}twilio.webhooks.v1", len(CASES) + 1, settle_s=2.0)
    assert len(records) == len(CASES) + 1, "exactly one record per accepted webhook"
    stored = {tuple((p["name"], p["value"]) for p in r["params"]) for r in records if r["params"]}
    for name, _, _, pairs, _ in CASES:
        assert tuple(pairs) in stored, f"{name}: parameters not preserved in order"
    raw = [r["body"] for r in records if r["body"] is not None]
    assert raw == [body], "the JSON body is stored byte for byte"


def flip(text, index):
    """One character changed, staying in the same character class."""
    c = text[index]
    replacement = "b" if c == "a" else ("1" if c == "0" else "a" if c.isalpha() else "0")
    return text[:index] + replacement + text[index + 1 :]


def test_any_one_byte_change_is_refused_and_nothing_is_written(ingress, prefix):
    path = "/twilio/messaging/status?conversation=CH7&attempt=1"
    pairs = [("MessageSid", "SM77777777777777777777777777777777"), ("MessageStatus", "sent"), ("To", "+14155550100")]
    signature = sign(TOKEN, PUBLIC + path, pairs)

    refused = []
    for i, (name, value) in enumerate(pairs):
        changed = list(pairs)
        changed[i] = (name, flip(value, len(value) - 1))
        refused.append(ingress.post(path, form(changed), signature))
        renamed = list(pairs)
        renamed[i] = (flip(name, 0), value)
        refused.append(ingress.post(path, form(renamed), signature))
    refused.append(ingress.post(path.replace("attempt=1", "attempt=2"), form(pairs), signature))
    refused.append(ingress.post(path.replace("CH7", "CH8"), form(pairs), signature))
    refused.append(ingress.post(path, form(pairs), flip(signature, 3)))
    refused.append(ingress.post(path, form(pairs), sign("some-other-token", PUBLIC + path, pairs)))

    body = b'{"EventType":"onMessageAdded","ConversationSid":"CH70","Body":"hello"}'
    json_path = f"/twilio/conversations/events?bodySHA256={hashlib.sha256(body).hexdigest()}"
    json_signature = RequestValidator(TOKEN).compute_signature(PUBLIC + json_path, {})
    refused.append(ingress.post(json_path, body.replace(b"hello", b"hellp"), json_signature, content_type="application/json"))
    refused.append(ingress.post(flip(json_path, len(json_path) - 1), body, json_signature, content_type="application/json"))

    assert [r.status_code for r in refused] == [403] * len(refused)

    marker = [("MessageSid", "SMmarker"), ("MessageStatus", "sent"), ("To", "+14155550100")]
    assert ingress.post(path, form(marker), sign(TOKEN, PUBLIC + path, marker)).status_code == 200
    records = read_records(f"{prefix}twilio.webhooks.v1", 1, settle_s=2.0)
    assert [r["resource_sid"] for r in records] == ["SMmarker"], "nothing but the marker was written"


@pytest.mark.parametrize("port_in_signed_url", [":443", ""])
def test_the_default_port_is_accepted_both_ways(ingress, port_in_signed_url):
    pairs = [("CallSid", "CA8"), ("CallStatus", "completed")]
    url = f"https://si.example.test{port_in_signed_url}/twilio/voice/status"
    assert ingress.post("/twilio/voice/status", form(pairs), sign(TOKEN, url, pairs)).status_code == 200


@pytest.mark.parametrize("algorithm", ["HMAC_SHA1", "HMAC_SHA256"])
def test_a_webhook_signed_with_a_shared_key_is_checked_with_it(ingress, prefix, algorithm):
    """X-Twilio-Webhooks-Signature-Settings means a shared key, with the HMAC it names."""
    path = "/twilio/messaging/inbound"
    pairs = INBOUND
    settings = {"X-Twilio-Webhooks-Signature-Settings": f"key=webhooks_sharedkey_1,algorithm={algorithm}"}
    signature = RequestValidator(SHARED).compute_signature(PUBLIC + path, MultiDict(pairs), algorithm)
    # Signed with the Auth Token instead: the header says it is not.
    by_token = RequestValidator(TOKEN).compute_signature(PUBLIC + path, MultiDict(pairs), algorithm)
    refused = ingress.post(path, form(pairs), by_token, headers=settings)
    assert refused.status_code == 403, refused.text
    response = ingress.post(path, form(pairs), signature, headers=settings)
    assert response.status_code == 200, response.text
    records = read_records(f"{prefix}twilio.webhooks.v1", 1, settle_s=2.0)
    assert len(records) == 1, "only the webhook signed with the shared key is stored"
    assert tuple((p["name"], p["value"]) for p in records[0]["params"]) == tuple(pairs)
