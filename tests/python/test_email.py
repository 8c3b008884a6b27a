"""The `email` rule action against a real SMTP server (aiosmtpd, in this process): the message a
rule sends (recipients and subject from templates, the selected document or a body template,
headers a mail client reads), a recipient the relay refuses (550: no retry, the rule's error
action gets AWS's error document naming EmailAction), a relay that is down (retried, then the
error action), a server without a relay, the `--email` flag of `shoal rule create`.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import json
import socket
import threading
import time

import pytest

from conftest import Shoal
from plugin_helpers import cli, http, ok
from test_rules import body, create, republish, subscriber

aiosmtpd = pytest.importorskip("aiosmtpd.controller")


class Relay:
    """An SMTP server recording every message; recipients starting with `reject` get 550."""

    def __init__(self):
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address.startswith("reject"):
                    return "550 5.1.1 no such user"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                with outer.lock:
                    outer.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return "250 Message accepted"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = aiosmtpd.Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, list[str], bytes]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def close(self):
        self.controller.stop()


@pytest.fixture
def relay():
    r = Relay()
    yield r
    r.close()


def mail(to: list[str], subject: str, body_template: str | None = None, **extra) -> dict:
    spec: dict = {"to": to, "subject": subject, **extra}
    if body_template is not None:
        spec["body"] = body_template
    return {"email": spec}


def test_email_action_sends_through_a_real_relay(make_shoal, relay: Relay):
    s = make_shoal("--smtp-relay", f"127.0.0.1:{relay.port}", "--smtp-from", "Shoal Alerts <alerts@shoal.test>")
    create(s, "too_warm", "SELECT temp, topic(2) AS truck FROM 'fleet/+/telemetry' WHERE temp > -15",
           mail(["ops+${topic(2)}@example.com", "insurer@example.com"], "Truck ${topic(2)}: ${temp} °C"),
           mail(["ops@example.com"], "plain", "Truck ${topic(2)} is at ${temp}.\n.dot line stays"))
    pub = s.client()
    pub.publish("fleet/t7/telemetry", b'{"temp": -20}', qos=1)  # not selected
    pub.publish("fleet/t7/telemetry", b'{"temp": -9.5}', qos=1)
    got = relay.wait(2)
    assert len(got) == 2, got
    by_subject = {}
    for mail_from, rcpts, raw in got:
        assert mail_from == "alerts@shoal.test"
        m = email.message_from_bytes(raw, policy=email.policy.default)
        by_subject[str(m["Subject"])] = (rcpts, m)
    rcpts, m = by_subject["Truck t7: -9.5 °C"]
    assert rcpts == ["ops+t7@example.com", "insurer@example.com"]
    assert m["From"] == "Shoal Alerts <alerts@shoal.test>"
    assert "ops+t7@example.com" in m["To"] and m["Date"] and m["Message-ID"]
    assert json.loads(m.get_content()) == {"temp": -9.5, "truck": "t7"}
    rcpts, m = by_subject["plain"]
    assert m.get_content().replace("\r\n", "\n").rstrip("\n") == "Truck t7 is at -9.5.\n.dot line stays"
    metrics = http(s, "GET", "/metrics").raw.decode()
    assert 'shoal_rules_emails_total{result="sent"} 2' in metrics, metrics
    # Only the selected message was mailed.
    time.sleep(0.3)
    assert len(relay.messages) == 2


def test_refused_recipient_and_relay_down_run_the_error_action(make_shoal, relay: Relay):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    s = make_shoal("--smtp-relay", f"127.0.0.1:{relay.port}", "--smtp-from", "alerts@shoal.test")
    create(s, "refused", "SELECT * FROM 'r/+'", mail(["reject@example.com"], "x", retries=3),
           error=republish("mail_errors"))
    errors = subscriber(s, "mail_errors")
    s.client().publish("r/1", b'{"a": 1}', qos=1)
    doc = body(errors.wait_message(10))
    f = doc["failures"][0]
    assert doc["ruleName"] == "refused" and f["failedAction"] == "EmailAction", doc
    assert "550" in f["errorMessage"] and "1 attempt" in f["errorMessage"], f
    assert f["failedResource"] == "reject@example.com"

    # A relay nobody answers on: retried, then the error action.
    down = make_shoal("--smtp-relay", f"127.0.0.1:{dead_port}", "--smtp-from", "alerts@shoal.test")
    create(down, "down", "SELECT * FROM 'd/+'", mail(["ops@example.com"], "x", retries=1),
           error=republish("mail_errors"))
    errors = subscriber(down, "mail_errors")
    down.client().publish("d/1", b'{"a": 1}', qos=1)
    f = body(errors.wait_message(15))["failures"][0]
    assert f["failedAction"] == "EmailAction" and "2 attempt" in f["errorMessage"], f

    # No relay configured: the action fails at once with a message saying so.
    bare = make_shoal()
    create(bare, "norelay", "SELECT * FROM 'n/+'", mail(["ops@example.com"], "x"), error=republish("mail_errors"))
    errors = subscriber(bare, "mail_errors")
    bare.client().publish("n/1", b'{"a": 1}', qos=1)
    f = body(errors.wait_message(10))["failures"][0]
    assert "no SMTP relay is configured" in f["errorMessage"], f


def test_bad_email_definitions_and_the_cli_flag(make_shoal, relay: Relay):
    s = make_shoal("--smtp-relay", f"127.0.0.1:{relay.port}", "--smtp-from", "alerts@shoal.test")
    for bad, want in [
        (mail([], "x"), "1 to 50 recipients"),
        (mail(["a@b.c"], "${"), "email.subject"),
        (mail(["a@b.c"], "x", retries=11), "retries"),
    ]:
        a = http(s, "POST", "/api/v1/rules/bad", {"sql": "SELECT * FROM 'x'", "actions": [bad]})
        assert a.status == 400 and want in a.json["message"], (bad, a)
    cli(s, "rule", "create", "by_cli", "--sql", "SELECT * FROM 'cli/+'", "--email", "a@example.com, b@example.com",
        "--email-subject", "from ${topic(2)}")
    got = ok(http(s, "GET", "/api/v1/rules/by_cli"))["topicRulePayload"]["actions"]
    assert got == [{"email": {"to": ["a@example.com", "b@example.com"], "subject": "from ${topic(2)}"}}], got
    s.client().publish("cli/x", b'{"v": 1}', qos=1)
    (_, rcpts, raw), = relay.wait(1)
    assert rcpts == ["a@example.com", "b@example.com"]
    assert email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == "from x"
