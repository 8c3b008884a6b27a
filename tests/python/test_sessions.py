"""Persistent sessions: subscriptions and QoS 1/2 messages kept while offline, also across a
restart of the broker; clean sessions discard state."""

from __future__ import annotations

import pytest

from mqtt_helpers import V5, VERSION_IDS, VERSIONS, unique

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])


def persistent(shoal, version, cid, **kw):
    """A client with a persistent session: v3 CleanSession=0, v5 Clean Start 0 + expiry 300 s."""
    if version == V5:
        kw.setdefault("session_expiry", 300)
    return shoal.client(version=version, client_id=cid, clean=False, **kw)


@versions
def test_persistent_session_queues_messages_while_offline(shoal, version):
    """[MQTT-3.1.2-4]/[MQTT-3.1.2-5] (3.1.1) / [MQTT-3.1.2-5]/[MQTT-3.1.2-23] (5.0): a persistent
    session keeps its subscriptions and stores QoS 1 and 2 messages while offline;
    [MQTT-3.2.2-2] (3.1.1) / [MQTT-3.2.2-3] (5.0) reconnecting gets Session Present 1;
    [MQTT-4.6.0-6] the stored messages arrive in order at their QoS."""
    cid = unique("ps")
    s = persistent(shoal, version, cid)
    assert s.connack.session_present is False, "a brand-new session reported as present"
    assert s.subscribe("ps/q1", qos=1) == [1]
    assert s.subscribe("ps/q2", qos=2) == [2]
    s.disconnect()
    pub = shoal.client(version=version)
    for i in range(5):
        ack = pub.publish("ps/q1", f"m{i}".encode(), qos=1)
        assert ack.reason_code in (0, 0x10)
    pub.publish("ps/q2", b"exactly-once", qos=2)
    s.connect(clean=False)
    assert s.connack.session_present is True, "persistent session not present on reconnect"
    msgs = s.wait_messages(6)
    q1 = [m for m in msgs if m.topic == "ps/q1"]
    q2 = [m for m in msgs if m.topic == "ps/q2"]
    assert [m.payload for m in q1] == [f"m{i}".encode() for i in range(5)]
    assert all(m.qos == 1 for m in q1)
    assert [(m.payload, m.qos) for m in q2] == [(b"exactly-once", 2)]
    s.expect_no_message(0.3)
    # The subscription is still there: live messages flow without a new SUBSCRIBE.
    pub.publish("ps/q1", b"live", qos=1)
    assert s.wait_message().payload == b"live"


@versions
def test_clean_session_discards_previous_session(shoal, version):
    """[MQTT-3.1.2-6] (3.1.1) / [MQTT-3.1.2-4] (5.0): connecting with a clean session discards any
    existing session: Session Present 0, queued messages dropped, subscriptions gone."""
    cid = unique("ps")
    s = persistent(shoal, version, cid)
    s.subscribe("clean/t", qos=1)
    s.disconnect()
    pub = shoal.client(version=version)
    pub.publish("clean/t", b"queued", qos=1)
    s.connect(clean=True)
    assert s.connack.session_present is False
    s.expect_no_message(0.5)
    pub.publish("clean/t", b"after", qos=1)
    s.expect_no_message(0.5)


@versions
def test_persistent_session_survives_restart(shoal, version):
    """[MQTT-3.1.2-4]/[MQTT-3.1.2-5] (3.1.1) / [MQTT-3.1.2-23] (5.0) with §4.1 (session state
    persisted by the server): QoS 1 messages acknowledged to the publisher for an offline
    persistent session are delivered, in order [MQTT-4.6.0-6], after the broker restarts;
    Session Present is 1 and the subscription still matches new messages."""
    cid = unique("durable")
    s = persistent(shoal, version, cid)
    assert s.subscribe("durable/t", qos=1) == [1]
    s.disconnect()
    pub = shoal.client(version=version)
    n = 10
    for i in range(n):
        ack = pub.publish("durable/t", f"d{i:02d}".encode(), qos=1)
        assert ack.reason_code in (0, 0x10)
    pub.disconnect()
    shoal.restart()
    s.connect(clean=False)
    assert s.connack.session_present is True, "persistent session lost across a restart"
    msgs = s.wait_messages(n, timeout=10)
    assert [m.payload for m in msgs] == [f"d{i:02d}".encode() for i in range(n)]
    assert all(m.topic == "durable/t" and m.qos == 1 for m in msgs)
    s.expect_no_message(0.3)
    pub2 = shoal.client(version=version)
    pub2.publish("durable/t", b"after-restart", qos=1)
    assert s.wait_message().payload == b"after-restart"


def test_acknowledged_queue_not_redelivered_after_restart(shoal):
    """[MQTT-4.3.2-*] / §4.1: messages the client acknowledged (PUBACK) before a restart are not
    delivered again after it; only the still-queued ones are."""
    cid = unique("acked")
    s = persistent(shoal, V5, cid)
    s.subscribe("acked/t", qos=1)
    pub = shoal.client(version=V5)
    pub.publish("acked/t", b"seen", qos=1)
    assert s.wait_message().payload == b"seen"
    s.disconnect()
    pub.publish("acked/t", b"pending", qos=1)
    pub.disconnect()
    shoal.restart()
    s.connect(clean=False)
    assert s.connack.session_present is True
    m = s.wait_message()
    assert m.payload == b"pending"
    s.expect_no_message(0.5)
