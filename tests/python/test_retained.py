"""Retained messages: set, replace, delete, retain flag on delivery; v5 retain handling and
retain-as-published."""

from __future__ import annotations

import pytest

from mqtt_helpers import V5, VERSION_IDS, VERSIONS, unique

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])


@versions
def test_retained_delivered_on_subscribe_with_retain_flag(shoal, version):
    """[MQTT-3.3.1-5] the server stores a RETAIN=1 message; [MQTT-3.3.1-6] (3.1.1) / §3.3.1.3 (5.0)
    a new subscription gets it; [MQTT-3.3.1-8] (3.1.1) it is sent with RETAIN=1."""
    pub = shoal.client(version=version)
    topic = f"ret/{unique('t')}"
    pub.publish(topic, b"stored", qos=1, retain=True)
    sub = shoal.client(version=version)
    sub.subscribe(topic, qos=1)
    m = sub.wait_message()
    assert (m.topic, m.payload, m.qos) == (topic, b"stored", 1)
    assert m.retain is True, "retained message delivered on subscribe without the RETAIN flag"
    sub.expect_no_message(0.3)


@versions
def test_retained_replace(shoal, version):
    """[MQTT-3.3.1-5]: a new RETAIN=1 message replaces the retained message of its topic; a new
    subscriber gets only the latest."""
    pub = shoal.client(version=version)
    topic = f"ret/{unique('t')}"
    pub.publish(topic, b"one", qos=1, retain=True)
    pub.publish(topic, b"two", qos=1, retain=True)
    sub = shoal.client(version=version)
    sub.subscribe(topic, qos=1)
    m = sub.wait_message()
    assert (m.payload, m.retain) == (b"two", True)
    sub.expect_no_message(0.3)


@versions
def test_retained_delete_with_empty_payload(shoal, version):
    """[MQTT-3.3.1-10]/[MQTT-3.3.1-11] (3.1.1) / [MQTT-3.3.1-6]/[MQTT-3.3.1-7] (5.0): a RETAIN=1
    PUBLISH with an empty payload is delivered normally to current subscribers, removes the
    retained message, and is not itself stored."""
    pub = shoal.client(version=version)
    topic = f"ret/{unique('t')}"
    live = shoal.client(version=version)
    live.subscribe(topic, qos=1)
    pub.publish(topic, b"doomed", qos=1, retain=True)
    assert live.wait_message().payload == b"doomed"
    pub.publish(topic, b"", qos=1, retain=True)
    m = live.wait_message()
    assert (m.topic, m.payload) == (topic, b""), "empty retained PUBLISH not forwarded to subscribers"
    late = shoal.client(version=version)
    late.subscribe(topic, qos=1)
    late.expect_no_message(0.5)


@versions
def test_non_retained_publish_keeps_retained_message(shoal, version):
    """[MQTT-3.3.1-12] (3.1.1) / [MQTT-3.3.1-8] (5.0): a RETAIN=0 PUBLISH neither stores nor
    replaces the retained message."""
    pub = shoal.client(version=version)
    topic = f"ret/{unique('t')}"
    pub.publish(topic, b"kept", qos=1, retain=True)
    pub.publish(topic, b"transient", qos=1, retain=False)
    sub = shoal.client(version=version)
    sub.subscribe(topic, qos=1)
    m = sub.wait_message()
    assert (m.payload, m.retain) == (b"kept", True)
    sub.expect_no_message(0.3)


@versions
def test_retained_live_delivery_has_retain_flag_clear(shoal, version):
    """[MQTT-3.3.1-9] (3.1.1) / [MQTT-3.3.1-12] (5.0, Retain As Published 0): a retained message
    forwarded to an existing subscription is sent with RETAIN=0."""
    sub = shoal.client(version=version)
    topic = f"ret/{unique('t')}"
    sub.subscribe(topic, qos=1)
    pub = shoal.client(version=version)
    pub.publish(topic, b"live", qos=1, retain=True)
    m = sub.wait_message()
    assert m.payload == b"live"
    assert m.retain is False


@versions
def test_retained_wildcard_subscribe_and_qos_cap(shoal, version):
    """§3.3.1.3 / [MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5.0): a wildcard subscription gets every
    matching retained message, each at min(published QoS, granted QoS)."""
    pub = shoal.client(version=version)
    base = f"ret/{unique('w')}"
    pub.publish(f"{base}/a", b"a", qos=2, retain=True)
    pub.publish(f"{base}/b/c", b"bc", qos=1, retain=True)
    pub.publish(f"{base}/d", b"d", qos=0, retain=True)
    pub.publish(f"{base}-other", b"no", qos=1, retain=True)
    sub = shoal.client(version=version)
    sub.subscribe(f"{base}/#", qos=1)
    got = {m.topic: m for m in sub.wait_messages(3)}
    assert set(got) == {f"{base}/a", f"{base}/b/c", f"{base}/d"}
    assert (got[f"{base}/a"].payload, got[f"{base}/a"].qos) == (b"a", 1)
    assert (got[f"{base}/b/c"].payload, got[f"{base}/b/c"].qos) == (b"bc", 1)
    assert (got[f"{base}/d"].payload, got[f"{base}/d"].qos) == (b"d", 0)
    assert all(m.retain for m in got.values())
    sub.expect_no_message(0.3)


# -- v5 only -------------------------------------------------------------------------------------

def _publish_retained(shoal, topic, payload=b"ret"):
    pub = shoal.client(version=V5)
    pub.publish(topic, payload, qos=1, retain=True)
    return pub


def test_v5_retain_handling_0_sends_on_every_subscribe(shoal):
    """[MQTT-3.3.1-9]: Retain Handling 0 sends matching retained messages at the time of every
    subscribe, including a re-subscribe to an existing filter."""
    topic = f"rh/{unique('t')}"
    _publish_retained(shoal, topic, b"r0")
    sub = shoal.client(version=V5)
    sub.subscribe(topic, qos=1, retain_handling=0)
    m = sub.wait_message()
    assert (m.payload, m.retain) == (b"r0", True)
    sub.subscribe(topic, qos=1, retain_handling=0)
    m = sub.wait_message()
    assert (m.payload, m.retain) == (b"r0", True)


def test_v5_retain_handling_1_sends_only_for_new_subscription(shoal):
    """[MQTT-3.3.1-10]: Retain Handling 1 sends retained messages only if the subscription did not
    already exist."""
    topic = f"rh/{unique('t')}"
    _publish_retained(shoal, topic, b"r1")
    sub = shoal.client(version=V5)
    sub.subscribe(topic, qos=1, retain_handling=1)
    m = sub.wait_message()
    assert (m.payload, m.retain) == (b"r1", True)
    sub.subscribe(topic, qos=1, retain_handling=1)
    sub.expect_no_message(0.5)


def test_v5_retain_handling_2_never_sends(shoal):
    """[MQTT-3.3.1-11]: Retain Handling 2 sends no retained messages at subscribe; live messages
    still flow."""
    topic = f"rh/{unique('t')}"
    pub = _publish_retained(shoal, topic, b"r2")
    sub = shoal.client(version=V5)
    sub.subscribe(topic, qos=1, retain_handling=2)
    sub.expect_no_message(0.5)
    pub.publish(topic, b"live", qos=1)
    m = sub.wait_message()
    assert (m.payload, m.retain) == (b"live", False)


def test_v5_retain_as_published(shoal):
    """[MQTT-3.3.1-13]: with Retain As Published 1 the forwarded RETAIN flag equals the published
    one; [MQTT-3.3.1-12]: with 0 it is cleared."""
    topic = f"rap/{unique('t')}"
    rap = shoal.client(version=V5)
    plain = shoal.client(version=V5)
    rap.subscribe(topic, qos=1, retain_as_published=True)
    plain.subscribe(topic, qos=1, retain_as_published=False)
    pub = shoal.client(version=V5)
    pub.publish(topic, b"retained", qos=1, retain=True)
    pub.publish(topic, b"normal", qos=1, retain=False)
    r1, r2 = rap.wait_messages(2)
    p1, p2 = plain.wait_messages(2)
    assert (r1.payload, r1.retain) == (b"retained", True)
    assert (r2.payload, r2.retain) == (b"normal", False)
    assert (p1.payload, p1.retain) == (b"retained", False)
    assert (p2.payload, p2.retain) == (b"normal", False)


def test_v5_retained_message_keeps_properties(shoal):
    """[MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-20]: a retained
    message delivered on subscribe carries the properties it was published with."""
    topic = f"ret/{unique('p')}"
    pub = shoal.client(version=V5)
    pub.publish(topic, b"{}", qos=1, retain=True, properties=dict(
        ContentType="application/json", ResponseTopic="ret/reply", CorrelationData=b"\x01\x02",
        PayloadFormatIndicator=1, UserProperty=[("k", "v")]))
    sub = shoal.client(version=V5)
    sub.subscribe(topic, qos=1)
    m = sub.wait_message()
    assert m.retain is True
    assert m.prop("ContentType") == "application/json"
    assert m.prop("ResponseTopic") == "ret/reply"
    assert m.prop("CorrelationData") == b"\x01\x02"
    assert m.prop("PayloadFormatIndicator") == 1
    assert m.prop("UserProperty") == [("k", "v")]


def test_retained_message_survives_restart(shoal):
    """§4.1 Session State / retained messages are server state kept by the embedded store: a
    retained message published before a restart is delivered (RETAIN=1) after it."""
    topic = f"ret/{unique('restart')}"
    pub = shoal.client(version=V5)
    pub.publish(topic, b"durable", qos=1, retain=True)
    pub.disconnect()
    shoal.restart()
    sub = shoal.client(version=V5)
    sub.subscribe(topic, qos=1)
    m = sub.wait_message()
    assert (m.topic, m.payload, m.retain) == (topic, b"durable", True)
