"""The Twilio sandbox's signed webhooks against Twilio's official Python library.

The sandbox binary posts status callbacks, Conversations delivery updates and
simulated inbound messages to a receiver here, signed for a public URL; the
official RequestValidator must accept every one of them (and refuse it once a
parameter is changed).
"""

import http.server
import os
import subprocess
import threading
import urllib.parse

import pytest
import requests
from twilio.request_validator import RequestValidator

from conftest import binary, free_port, wait_for

PUBLIC = "https://si.example.test"
ACCOUNT = "AC44444444444444444444444444444444"
SANDBOX_TOKEN = "oracle-sandbox-token"
USER = "+14155550100"
OURS = "+14155550199"


class MultiDict(dict):
    """Repeated form parameters, as Flask's MultiDict offers them to the validator."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = list(pairs)
        for name, value in self.pairs:
            self.setdefault(name, value)

    def getall(self, name):
        return [v for n, v in self.pairs if n == name]


@pytest.fixture
def receiver():
    """An HTTP server recording (path and query, parameters, signature) of every POST."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            pairs = urllib.parse.parse_qsl(body, keep_blank_values=True)
            received.append((self.path, pairs, self.headers.get("X-Twilio-Signature")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


@pytest.fixture
def sandbox(receiver):
    url, _ = receiver
    port = free_port()
    env = dict(
        os.environ,
        SANDBOX_ADDR=f"127.0.0.1:{port}",
        TWILIO_ACCOUNT_SID=ACCOUNT,
        TWILIO_AUTH_TOKEN=SANDBOX_TOKEN,
        SANDBOX_CALLBACK_URL=url,
        SANDBOX_PUBLIC_URL=PUBLIC,
        LOG_LEVEL="warn",
    )
    process = subprocess.Popen([binary("si-twilio-sandbox")], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{base}/_sandbox/healthz", timeout=2).ok, 30, "sandbox up")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_sandbox_webhook_validates_with_the_official_library(sandbox, receiver):
    _, received = receiver
    auth = (ACCOUNT, SANDBOX_TOKEN)
    sms = requests.post(
        f"{sandbox}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
        auth=auth,
        data={
            "To": USER,
            "From": OURS,
            "Body": "Echo: ¿qué tal? 👋 & 100%",
            "StatusCallback": f"{PUBLIC}/twilio/messaging/status?operation=op-1&n=2",
        },
        timeout=10,
    )
    assert sms.status_code == 201, sms.text
    conversation = requests.post(f"{sandbox}/v1/Conversations", auth=auth, timeout=10).json()
    ch = conversation["sid"]
    participant = requests.post(
        f"{sandbox}/v1/Conversations/{ch}/Participants",
        auth=auth,
        data={"MessagingBinding.Address": USER, "MessagingBinding.ProxyAddress": OURS},
        timeout=10,
    )
    assert participant.status_code == 201, participant.text
    message = requests.post(
        f"{sandbox}/v1/Conversations/{ch}/Messages", auth=auth, data={"Body": "hi"}, timeout=10
    )
    assert message.status_code == 201, message.text
    inbound = requests.post(
        f"{sandbox}/_sandbox/inbound/sms",
        json={"from": "whatsapp:" + USER, "to": "whatsapp:" + OURS, "body": "Hola a+b=c&d",
              "media_urls": ["https://api.twilio.com/m/2", "https://api.twilio.com/m/1"]},
        timeout=10,
    )
    assert inbound.status_code == 200, inbound.text

    wait_for(lambda: len(received) >= 5, 15, "five webhooks")
    validator = RequestValidator(SANDBOX_TOKEN)
    paths = set()
    for path, pairs, signature in received:
        url = PUBLIC + path
        paths.add(path.split("?")[0])
        assert signature, path
        assert validator.validate(url, MultiDict(pairs), signature), (path, pairs)
        # The default port variant is accepted too, as Twilio's validators do.
        assert validator.validate(PUBLIC + ":443" + path, MultiDict(pairs), signature)
        # One changed parameter breaks it.
        tampered = [(n, v + "x") if i == 0 else (n, v) for i, (n, v) in enumerate(pairs)]
        assert not validator.validate(url, MultiDict(tampered), signature)
    assert paths == {"/twilio/messaging/status", "/twilio/conversations/events", "/twilio/messaging/inbound"}
    statuses = [dict(p).get("MessageStatus") for path, p, _ in received if path.startswith("/twilio/messaging/status")]
    assert statuses == ["sent", "delivered"]
    assert any(path == "/twilio/messaging/status?operation=op-1&n=2" for path, _, _ in received)
