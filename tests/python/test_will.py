"""Last Will: published on an abnormal disconnect, discarded on a normal DISCONNECT; v5 Will
Delay Interval and DISCONNECT 0x04."""

from __future__ import annotations

import time

import pytest

from mqtt_helpers import V5, VERSION_IDS, VERSIONS, unique

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])


def _observer(shoal, version, topic):
    obs = shoal.client(version=version)
    obs.subscribe(topic, qos=1)
    return obs


@versions
def test_will_published_on_abnormal_disconnect(shoal, version):
    """[MQTT-3.1.2-8]: the Will Message is published when the network connection closes without
    a DISCONNECT; it carries the will topic, payload and QoS."""
    topic = f"will/{unique('w')}"
    obs = _observer(shoal, version, "will/#")
    w = shoal.client(version=version, will=dict(topic=topic, payload=b"gone", qos=1, retain=False))
    w.abort()
    m = obs.wait_message(5)
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"gone", 1, False)
    obs.expect_no_message(0.3)


@versions
def test_no_will_on_normal_disconnect(shoal, version):
    """[MQTT-3.1.2-10] / [MQTT-3.14.4-3]: on a normal DISCONNECT the server discards the Will
    Message without publishing it."""
    topic = f"will/{unique('w')}"
    obs = _observer(shoal, version, "will/#")
    w = shoal.client(version=version, will=dict(topic=topic, payload=b"should-not", qos=1))
    w.disconnect()
    obs.expect_no_message(1.5)
    # Control: the observer is alive and would have seen it.
    obs.roundtrip()


@versions
def test_will_retained(shoal, version):
    """[MQTT-3.1.2-17] (3.1.1) / §3.1.2.7 (5.0): a will with Will Retain 1 is published as a
    retained message: a later subscriber receives it with RETAIN=1."""
    topic = f"will/{unique('r')}"
    obs = _observer(shoal, version, "will/#")
    w = shoal.client(version=version, will=dict(topic=topic, payload=b"last-words", qos=1, retain=True))
    w.abort()
    live = obs.wait_message(5)
    assert live.payload == b"last-words"
    late = shoal.client(version=version)
    late.subscribe(topic, qos=1)
    m = late.wait_message()
    assert (m.topic, m.payload, m.retain) == (topic, b"last-words", True), \
        "will with Will Retain 1 was not stored as a retained message"


def test_v5_disconnect_with_will_message_publishes_will(shoal):
    """§3.14.2.1 (reason 0x04 Disconnect with Will Message) / [MQTT-3.14.4-3] only applies to
    reason 0x00: a v5 DISCONNECT with reason 0x04 publishes the will."""
    topic = f"will/{unique('d4')}"
    obs = _observer(shoal, V5, "will/#")
    w = shoal.client(version=V5, will=dict(topic=topic, payload=b"by-request", qos=1))
    w.disconnect(reason_code=0x04)
    m = obs.wait_message(5)
    assert (m.topic, m.payload) == (topic, b"by-request")


def test_v5_will_delay_interval(shoal):
    """[MQTT-3.1.2-8] / §3.1.3.2.2: with Will Delay Interval 2 s (and a longer session) the will is
    published ~2 s after the abnormal close, not immediately."""
    topic = f"will/{unique('delay')}"
    obs = _observer(shoal, V5, "will/#")
    w = shoal.client(version=V5, session_expiry=30,
                     will=dict(topic=topic, payload=b"late", qos=1, properties={"WillDelayInterval": 2}))
    t0 = time.monotonic()
    w.abort()
    m = obs.wait_message(6)
    dt = m.at - t0
    assert (m.topic, m.payload) == (topic, b"late")
    assert 1.5 <= dt <= 4.0, f"will published {dt:.2f}s after the close, expected ~2 s"


def test_v5_will_delay_cancelled_by_reconnect(shoal):
    """[MQTT-3.1.3-9]: if the session is resumed by a new connection before the Will Delay Interval
    passes, the server does not send the will."""
    topic = f"will/{unique('cancel')}"
    obs = _observer(shoal, V5, "will/#")
    cid = unique("wd")
    w = shoal.client(version=V5, client_id=cid, session_expiry=30,
                     will=dict(topic=topic, payload=b"never", qos=1, properties={"WillDelayInterval": 2}))
    w.abort()
    time.sleep(0.5)
    w.will = None
    w.connect(clean=False)
    assert w.connack.session_present is True
    obs.expect_no_message(3.0)


def test_v5_will_published_when_session_ends_before_delay(shoal):
    """[MQTT-3.1.2-8]: the will is published when the Will Delay Interval elapses or the session
    ends, whichever is first: session expiry 1 s with will delay 30 s publishes at ~1 s."""
    topic = f"will/{unique('sess')}"
    obs = _observer(shoal, V5, "will/#")
    w = shoal.client(version=V5, session_expiry=1,
                     will=dict(topic=topic, payload=b"session-over", qos=1, properties={"WillDelayInterval": 30}))
    t0 = time.monotonic()
    w.abort()
    m = obs.wait_message(5)
    assert (m.topic, m.payload) == (topic, b"session-over")
    assert m.at - t0 <= 3.0, f"will published {m.at - t0:.2f}s after close, expected at session end (~1 s)"


def test_v5_will_properties_forwarded(shoal):
    """§3.1.3.2 / [MQTT-3.3.2-4] [MQTT-3.3.2-17] [MQTT-3.3.2-20]: will properties (content type,
    user properties, payload format) are forwarded with the will message."""
    topic = f"will/{unique('props')}"
    obs = _observer(shoal, V5, "will/#")
    w = shoal.client(version=V5, will=dict(topic=topic, payload=b"{}", qos=1, properties={
        "ContentType": "application/json", "UserProperty": [("why", "crash")], "PayloadFormatIndicator": 1}))
    w.abort()
    m = obs.wait_message(5)
    assert m.payload == b"{}"
    assert m.prop("ContentType") == "application/json"
    assert m.prop("UserProperty") == [("why", "crash")]
    assert m.prop("PayloadFormatIndicator") == 1
