"""MQTT 5 only: no local, shared subscriptions, topic aliases, message expiry, properties,
subscription identifiers, maximum packet size, reason codes and reason strings."""

from __future__ import annotations

import time

import raw_mqtt as raw
from mqtt_helpers import V5, metric, unique


def sub_ids(m) -> list[int]:
    v = m.prop("SubscriptionIdentifier")
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


# -- subscription options ----------------------------------------------------------------------

def test_no_local(shoal):
    """[MQTT-3.8.3-3]: with No Local 1 the server does not forward a client's own messages to
    it; messages from other clients still arrive, and without No Local own messages come back."""
    nl = shoal.client(version=V5)
    other = shoal.client(version=V5)
    nl.subscribe("nl/t", qos=1, no_local=True)
    other.subscribe("nl/t", qos=1)
    nl.publish("nl/t", b"own", qos=1)
    m = other.wait_message()
    assert m.payload == b"own"
    nl.expect_no_message(0.5)
    other.publish("nl/t", b"theirs", qos=1)
    assert nl.wait_message().payload == b"theirs"
    assert other.wait_message().payload == b"theirs", "without No Local a client gets its own message"


def test_shared_subscription_splits_messages(shoal):
    """§4.8.2 Shared Subscriptions: each message matching `$share/g/topic` goes to exactly one
    member of the group (both members get some), while a non-shared subscriber gets all."""
    a = shoal.client(version=V5)
    b = shoal.client(version=V5)
    plain = shoal.client(version=V5)
    assert a.subscribe("$share/g/sh/t", qos=1) == [1]
    assert b.subscribe("$share/g/sh/t", qos=1) == [1]
    plain.subscribe("sh/t", qos=1)
    pub = shoal.client(version=V5)
    n = 20
    for i in range(n):
        pub.publish("sh/t", f"{i:02d}".encode(), qos=1)
    everything = plain.wait_messages(n)
    assert sorted(m.payload for m in everything) == [f"{i:02d}".encode() for i in range(n)]
    time.sleep(0.3)
    got_a = [m.payload for m in a.drain(0.2)]
    got_b = [m.payload for m in b.drain(0.2)]
    assert all(m.topic == "sh/t" for m in a.all_messages + b.all_messages), "shared delivery must use the topic name"
    assert not set(got_a) & set(got_b), f"messages delivered to both members: {set(got_a) & set(got_b)}"
    assert sorted(got_a + got_b) == [f"{i:02d}".encode() for i in range(n)], \
        f"group got {len(got_a) + len(got_b)} of {n} messages (a={got_a}, b={got_b})"
    assert got_a and got_b, f"messages not split between members: a={len(got_a)}, b={len(got_b)}"


def test_shared_subscription_remaining_member_gets_all(shoal):
    """§4.8.2: when one member of a share group leaves, the remaining member receives every
    message of the group."""
    a = shoal.client(version=V5)
    b = shoal.client(version=V5)
    a.subscribe("$share/solo/shs/t", qos=1)
    b.subscribe("$share/solo/shs/t", qos=1)
    b.unsubscribe("$share/solo/shs/t")
    pub = shoal.client(version=V5)
    for i in range(6):
        pub.publish("shs/t", f"{i}".encode(), qos=1)
    assert [m.payload for m in a.wait_messages(6)] == [f"{i}".encode() for i in range(6)]
    b.expect_no_message(0.3)


def test_shared_subscription_rejects_no_local(shoal):
    """[MQTT-3.8.3-4]: No Local 1 on a shared subscription is a Protocol Error: the server
    closes the connection (DISCONNECT 0x82)."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    r.connect(unique(), version=5)
    r.send(raw.subscribe([("$share/g/nl/t", 0x01 | 0x04)], pid=1, version=5))  # QoS 1 + No Local
    closed, seen = r.wait_closed(5)
    assert closed, f"connection left open after No Local on a shared subscription (read {seen})"
    assert not any(p.type == raw.SUBACK for p in seen), f"subscription acknowledged: {seen}"
    disc = [p for p in seen if p.type == raw.DISCONNECT]
    if disc:
        assert raw.disconnect_reason(disc[0])[0] == 0x82


# -- topic aliases ------------------------------------------------------------------------------

def test_topic_alias_from_client(shoal):
    """[MQTT-3.3.2-12]: the server accepts Topic Alias values 1..its Topic Alias Maximum; a
    PUBLISH with an empty topic and a known alias goes to the aliased topic; an alias can be
    re-bound to another topic."""
    sub = shoal.client(version=V5)
    sub.subscribe("ta/#", qos=1)
    c = shoal.client(version=V5)
    tam = c.connack.prop("TopicAliasMaximum", 0)
    assert tam >= 1, f"server Topic Alias Maximum is {tam}"
    assert c.publish("ta/x", b"first", qos=1, properties={"TopicAlias": 1}).reason_code == 0
    assert c.publish("", b"second", qos=1, properties={"TopicAlias": 1}).reason_code == 0
    assert c.publish("ta/y", b"third", qos=1, properties={"TopicAlias": 1}).reason_code == 0
    assert c.publish("", b"fourth", qos=0, properties={"TopicAlias": 1}) is None
    msgs = sub.wait_messages(4)
    assert [(m.topic, m.payload) for m in msgs] == [
        ("ta/x", b"first"), ("ta/x", b"second"), ("ta/y", b"third"), ("ta/y", b"fourth")]
    assert c.is_connected()


def test_topic_alias_above_maximum_is_refused(shoal):
    """§3.3.2.3.4 / [MQTT-3.3.2-9]: a Topic Alias greater than the server's Topic Alias Maximum
    is a protocol error: the server sends DISCONNECT 0x94 (Topic Alias invalid) and closes."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    p = r.connect(unique(), version=5)
    _, rc, pr = raw.connack_codes(p, 5)
    tam = pr.get(raw.P_TOPIC_ALIAS_MAXIMUM, 0)
    r.send(raw.publish("tab/x", b"x", qos=0, version=5,
                       properties=raw.props(raw.prop_u16(raw.P_TOPIC_ALIAS, tam + 1))))
    closed, seen = r.wait_closed(5)
    assert closed, "connection left open after an out-of-range topic alias"
    disc = [p for p in seen if p.type == raw.DISCONNECT]
    assert disc, f"no DISCONNECT before close (saw {seen})"
    assert raw.disconnect_reason(disc[0])[0] == 0x94


def test_topic_alias_to_client(shoal):
    """[MQTT-3.3.2-10]/[MQTT-3.3.2-11]: to a client with Topic Alias Maximum 2 the server may send
    aliases 1..2 (and sends them here); after resolving them every message has its topic and
    payload; [MQTT-3.1.2-27] a client without Topic Alias Maximum gets no aliases;
    [MQTT-3.3.2-7] mappings do not carry over to a new connection."""
    sub = shoal.client(version=V5, connect_props={"TopicAliasMaximum": 2})
    noalias = shoal.client(version=V5)
    sub.subscribe("tas/#", qos=1)
    noalias.subscribe("tas/#", qos=1)
    pub = shoal.client(version=V5)
    seq = [("tas/a", 0), ("tas/b", 1), ("tas/a", 2), ("tas/c", 3), ("tas/a", 4), ("tas/b", 5), ("tas/c", 6)]
    for t, i in seq:
        pub.publish(t, f"{i}".encode(), qos=1)
    expected = [(t, f"{i}".encode()) for t, i in seq]
    msgs = sub.wait_messages(len(seq))
    assert not sub.alias_errors, sub.alias_errors
    assert [(m.topic, m.payload) for m in msgs] == expected
    aliased = [m for m in msgs if m.alias is not None]
    assert aliased, "the server sent no Topic Alias to a client that allowed 2"
    assert all(1 <= m.alias <= 2 for m in aliased), f"aliases {[m.alias for m in aliased]} exceed the maximum 2"
    assert any(m.raw_topic == "" for m in aliased), "aliases were set but never used (topic always sent)"
    plain = noalias.wait_messages(len(seq))
    assert [(m.topic, m.payload) for m in plain] == expected
    assert all(m.alias is None for m in plain), "topic alias sent to a client with Topic Alias Maximum 0"
    # New connection: the client forgets aliases; the first message must name its topic again.
    sub.disconnect()
    sub.connect()
    sub.subscribe("tas/#", qos=1)
    pub.publish("tas/a", b"again", qos=1)
    m = sub.wait_message()
    assert not sub.alias_errors, f"server reused an alias from the previous connection: {sub.alias_errors}"
    assert (m.topic, m.payload, m.raw_topic) == ("tas/a", b"again", "tas/a")


def test_receive_maximum_window_moves_one_message_per_puback(shoal):
    """[MQTT-3.3.4-9]: to a client with Receive Maximum 2 the server has at most 2 QoS 1
    messages unacknowledged; the rest wait in the session, and each PUBACK lets exactly the
    next one go (the acknowledgement wakes the connection's sender), until all arrive in order."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    try:
        r.connect(unique("rmax"), version=5, properties=raw.props(raw.prop_u16(raw.P_RECEIVE_MAXIMUM, 2)))
        r.send(raw.subscribe([("rmax/t", 1)], version=5))
        assert r.recv_type(raw.SUBACK) is not None
        pub = shoal.client(version=V5)
        for i in range(8):
            pub.publish("rmax/t", f"{i}".encode(), qos=1)
        unacked: list[int] = []
        got: list[bytes] = []

        def take() -> None:
            p = r.recv_type(raw.PUBLISH, timeout=5)
            assert p is not None, f"no PUBLISH after {got}"
            topic_len = int.from_bytes(p.body[0:2], "big")
            i = 2 + topic_len
            unacked.append(int.from_bytes(p.body[i:i + 2], "big"))
            props_len, j = raw.read_varint(p.body, i + 2)
            got.append(p.body[j + props_len:])

        take()
        take()
        assert r.recv(timeout=0.5) is None, "a third message went out with 2 unacknowledged"
        while len(got) < 8:
            r.send(raw.puback(unacked.pop(0)))
            take()
            assert len(unacked) == 2
        assert got == [f"{i}".encode() for i in range(8)]
        for pid in unacked:
            r.send(raw.puback(pid))
        assert r.recv(timeout=0.3) is None, "more messages than were published"
    finally:
        r.close()


# -- message expiry ------------------------------------------------------------------------------

def test_message_expiry_for_offline_session(shoal):
    """[MQTT-3.3.2-5]: a message whose Message Expiry Interval (2 s) passes while queued for an
    offline session is not delivered; [MQTT-3.3.2-6]: a delivered one carries the interval minus
    the time it waited in the server; a message without expiry carries none."""
    cid = unique("exp")
    s = shoal.client(version=V5, client_id=cid, clean=False, session_expiry=300)
    s.subscribe("exp/t", qos=1)
    s.disconnect()
    pub = shoal.client(version=V5)
    pub.publish("exp/t", b"short", qos=1, properties={"MessageExpiryInterval": 2})
    pub.publish("exp/t", b"long", qos=1, properties={"MessageExpiryInterval": 10})
    pub.publish("exp/t", b"forever", qos=1)
    time.sleep(3.0)
    s.connect(clean=False)
    assert s.connack.session_present
    msgs = s.wait_messages(2)
    s.expect_no_message(0.5)
    by_payload = {m.payload: m for m in msgs}
    assert set(by_payload) == {b"long", b"forever"}, f"delivered {[m.payload for m in msgs]}"
    remaining = by_payload[b"long"].prop("MessageExpiryInterval")
    assert remaining is not None, "delivered message lost its Message Expiry Interval"
    assert 1 <= remaining <= 8, f"Message Expiry Interval {remaining}, expected 10 minus ~3 s waited"
    assert by_payload[b"forever"].prop("MessageExpiryInterval") is None


def test_message_expiry_forwarded_online(shoal):
    """[MQTT-3.3.2-6]: a message delivered straight away carries a Message Expiry Interval of at
    most the published value (and more than 0)."""
    sub = shoal.client(version=V5)
    sub.subscribe("expo/t", qos=1)
    pub = shoal.client(version=V5)
    pub.publish("expo/t", b"x", qos=1, properties={"MessageExpiryInterval": 60})
    m = sub.wait_message()
    assert 58 <= m.prop("MessageExpiryInterval", -1) <= 60


# -- properties ---------------------------------------------------------------------------------

def test_publish_properties_forwarded_unaltered(shoal):
    """[MQTT-3.3.2-4] payload format indicator, [MQTT-3.3.2-15] response topic, [MQTT-3.3.2-16]
    correlation data, [MQTT-3.3.2-17]/[MQTT-3.3.2-18] user properties (order kept),
    [MQTT-3.3.2-20] content type: all forwarded unaltered."""
    sub = shoal.client(version=V5)
    sub.subscribe("props/t", qos=2)
    pub = shoal.client(version=V5)
    user = [("a", "1"), ("b", "2"), ("a", "3"), ("ünï", "çødé")]
    for qos in (0, 1, 2):
        pub.publish("props/t", "héllo".encode(), qos=qos, properties=dict(
            PayloadFormatIndicator=1, ContentType="application/json; charset=utf-8",
            ResponseTopic="props/reply", CorrelationData=b"\x00\x01corr\xff", UserProperty=user))
    for qos, m in enumerate(sub.wait_messages(3)):
        assert (m.payload, m.qos) == ("héllo".encode(), qos)
        assert m.prop("PayloadFormatIndicator") == 1
        assert m.prop("ContentType") == "application/json; charset=utf-8"
        assert m.prop("ResponseTopic") == "props/reply"
        assert m.prop("CorrelationData") == b"\x00\x01corr\xff"
        assert m.prop("UserProperty") == user


def test_publish_without_properties_gets_none(shoal):
    """[MQTT-3.3.2-4]/§3.3.2.3: the server adds no content type, response topic, correlation data,
    user properties or payload format indicator that the publisher did not send."""
    sub = shoal.client(version=V5)
    sub.subscribe("noprops/t", qos=1)
    pub = shoal.client(version=V5)
    pub.publish("noprops/t", b"bare", qos=1)
    m = sub.wait_message()
    for name in ("ContentType", "ResponseTopic", "CorrelationData", "UserProperty", "MessageExpiryInterval"):
        assert m.prop(name) is None, f"{name} = {m.prop(name)!r} added by the server"
    assert m.prop("PayloadFormatIndicator") in (None, 0)


def test_subscription_identifiers(shoal):
    """[MQTT-3.3.4-3]: messages sent because of subscriptions with identifiers carry them
    ([MQTT-3.3.4-4]/[MQTT-3.3.4-5] one per copy, or all in one copy); a subscription without an
    identifier adds none."""
    c = shoal.client(version=V5)
    assert c.subscribe("si/+", qos=1, subscription_id=7) == [1]
    assert c.subscribe("si/#", qos=1, subscription_id=300000) == [1]
    assert c.subscribe("other/t", qos=1) == [1]
    pub = shoal.client(version=V5)
    pub.publish("si/a", b"both", qos=1)
    msgs = [c.wait_message()] + c.drain(0.5)
    assert all(m.payload == b"both" for m in msgs)
    ids = sorted(i for m in msgs for i in sub_ids(m))
    assert ids == [7, 300000], f"subscription identifiers {ids} on {len(msgs)} copies, expected [7, 300000]"
    pub.publish("si/a/b", b"hash-only", qos=1)
    m = c.wait_message()
    assert (m.payload, sub_ids(m)) == (b"hash-only", [300000])
    pub.publish("other/t", b"none", qos=1)
    m = c.wait_message()
    assert (m.payload, sub_ids(m)) == (b"none", [])


def test_maximum_packet_size_respected(shoal):
    """[MQTT-3.1.2-24]/[MQTT-3.1.2-25]: the server never sends a packet larger than the client's
    Maximum Packet Size (256): a larger message is dropped for that client (others get it), a
    smaller one is delivered."""
    small = shoal.client(version=V5, connect_props={"MaximumPacketSize": 256})
    big = shoal.client(version=V5)
    small.subscribe("mps/t", qos=1)
    big.subscribe("mps/t", qos=1)
    pub = shoal.client(version=V5)
    pub.publish("mps/t", b"x" * 1000, qos=1)
    pub.publish("mps/t", b"y" * 1000, qos=0)
    pub.publish("mps/t", b"fits", qos=1)
    assert [len(m.payload) for m in big.wait_messages(3)] == [1000, 1000, 4]
    m = small.wait_message()
    assert m.payload == b"fits", f"client with Maximum Packet Size 256 got a {len(m.payload)}-byte payload"
    small.expect_no_message(0.3)
    assert small.is_connected()
    assert metric(shoal, "shoal_messages_dropped_total", 'reason="too_large"') >= 2


# -- reason codes and reason strings --------------------------------------------------------------

def test_publish_qos1_to_wildcard_topic_refused(shoal):
    """[MQTT-3.3.2-2] / [MQTT-4.7.0-1]: a topic name must not contain wildcards; the server refuses
    the PUBLISH with a reason code >= 0x80 (PUBACK 0x90 Topic Name invalid, or DISCONNECT) and a
    reason string, and delivers nothing."""
    obs = shoal.client(version=V5)
    obs.subscribe("wild/#", qos=1)
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    r.connect(unique(), version=5)
    r.send(raw.publish("wild/+", b"bad", qos=1, pid=7, version=5))
    p = r.recv(5)
    assert p is not None, "no answer to a QoS 1 PUBLISH to a wildcard topic"
    if p.type == raw.PUBACK:
        pid, rc, pr = raw.ack_reason(p)
        assert pid == 7
        assert rc == 0x90, f"PUBACK reason {rc:#x}, expected 0x90 (Topic Name invalid)"
        assert pr is not None and pr.get(raw.P_REASON_STRING), "refusal without a reason string"
    else:
        assert p.type == raw.DISCONNECT, f"unexpected answer {p!r}"
        rc, pr = raw.disconnect_reason(p)
        assert rc >= 0x80, f"DISCONNECT reason {rc:#x}"
        assert pr is not None and pr.get(raw.P_REASON_STRING), \
            f"DISCONNECT {rc:#x} without a reason string (properties {pr})"
    obs.expect_no_message(0.5)


def test_publish_qos0_to_invalid_topic_disconnects(shoal):
    """[MQTT-3.3.2-2] / [MQTT-4.13.1-1]: a QoS 0 PUBLISH (no acknowledgement possible) to a topic
    with a wildcard gets a DISCONNECT with a reason code >= 0x80 and the connection is closed."""
    obs = shoal.client(version=V5)
    obs.subscribe("wild0/#", qos=1)
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    r.connect(unique(), version=5)
    r.send(raw.publish("wild0/#", b"bad", qos=0, version=5))
    closed, seen = r.wait_closed(5)
    assert closed, f"connection left open (read {seen})"
    disc = [p for p in seen if p.type == raw.DISCONNECT]
    assert disc, "closed without a DISCONNECT reason code"
    rc, pr = raw.disconnect_reason(disc[0])
    assert rc >= 0x80, f"DISCONNECT reason {rc:#x}"
    obs.expect_no_message(0.3)


def test_malformed_subscription_filter_disconnects_with_reason(shoal):
    """§4.7.1 ([MQTT-4.7.1-1] `#` last, [MQTT-4.7.1-2] `+` whole level) with [MQTT-4.13.1-1]:
    a filter breaking the wildcard rules makes the SUBSCRIBE a Malformed Packet, so the server
    closes the connection with a DISCONNECT reason >= 0x80 that carries a reason string naming
    the problem. (Raw socket: paho refuses to send these filters.)"""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    r.connect(unique(), version=5)
    r.send(raw.subscribe([("a/#/b", 1), ("sub/ok", 1), ("a/b#", 1), ("x+/y", 1)], pid=3, version=5))
    p = r.recv(5)
    assert p is not None and p.type == raw.DISCONNECT, f"expected DISCONNECT, got {p!r}"
    rc, props = raw.disconnect_reason(p)
    assert rc >= 0x80, f"DISCONNECT reason {rc:#x}"
    assert "malformed" in str(props).lower() or "topic filter" in str(props).lower(), props
    closed, _ = r.wait_closed(5)
    assert closed


def test_refused_subscription_filter_gets_0x8f(make_shoal):
    """§3.9.3: a well-formed filter the server does not accept (here: more levels than
    --max-topic-levels) gets SUBACK 0x8F with a reason string, while the other filters of the
    same SUBSCRIBE are granted, one code per filter in order [MQTT-3.8.4-4]/[MQTT-3.9.3-1], and
    the connection stays usable."""
    shoal = make_shoal("--max-topic-levels", "3")
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    r.connect(unique(), version=5)
    r.send(raw.subscribe([("a/b/c/d", 1), ("sub/ok", 1), ("x/+/y/#", 1)], pid=3, version=5))
    p = r.recv(5)
    assert p is not None and p.type == raw.SUBACK, f"expected SUBACK, got {p!r}"
    codes = raw.suback_codes(p, 5)
    assert codes == [0x8F, 1, 0x8F], f"SUBACK codes {[hex(x) for x in codes]}"
    pub = shoal.client(version=V5)
    pub.publish("sub/ok", b"ok", qos=1)
    m = r.recv_type(raw.PUBLISH, 5)
    assert m is not None and m.body.endswith(b"ok"), f"subscribed filter got {m!r}"


def test_payload_over_limit_gets_puback_0x97(make_shoal):
    """§3.4.2.1 / [MQTT-3.3.4-*]: a QoS 1 PUBLISH whose payload exceeds --max-payload-size is
    refused with PUBACK 0x97 (Quota exceeded) and a reason string; nothing is delivered and the
    connection stays usable."""
    shoal = make_shoal("--max-payload-size", "1024")
    sub = shoal.client(version=V5)
    sub.subscribe("big/t", qos=1)
    pub = shoal.client(version=V5)
    ack = pub.publish("big/t", b"z" * 2000, qos=1)
    assert ack.reason_code == 0x97, f"PUBACK reason {ack.reason_code:#x}, expected 0x97"
    assert ack.prop("ReasonString"), "PUBACK 0x97 without a reason string"
    sub.expect_no_message(0.5)
    ok = pub.publish("big/t", b"s" * 1000, qos=1)
    assert ok.reason_code == 0
    assert len(sub.wait_message().payload) == 1000


def test_payload_over_limit_qos0_disconnects(make_shoal):
    """[MQTT-4.13.1-1] / §4.13.2: a QoS 0 PUBLISH over --max-payload-size cannot be NACKed: the
    server sends DISCONNECT with a reason code >= 0x80 (0x95 Packet too large) and closes."""
    shoal = make_shoal("--max-payload-size", "1024")
    sub = shoal.client(version=V5)
    sub.subscribe("big0/t", qos=1)
    pub = shoal.client(version=V5)
    pub.publish("big0/t", b"z" * 2000, qos=0)
    d = pub.wait_disconnected(5)
    assert d.from_broker and d.reason_code is not None and d.reason_code >= 0x80, d
    sub.expect_no_message(0.3)


def test_unsubscribe_reason_codes(shoal):
    """§3.11.3 UNSUBACK: 0x00 for a removed subscription, 0x11 (No subscription existed) for a
    filter the client was not subscribed to, one code per filter in order."""
    c = shoal.client(version=V5)
    c.subscribe("us/a", qos=1)
    codes = c.unsubscribe(["us/a", "us/never"])
    assert codes == [0x00, 0x11], f"UNSUBACK codes {[hex(x) for x in codes]}"
    assert c.unsubscribe("us/a") == [0x11], "second unsubscribe of the same filter should be 0x11"


def test_v5_publish_ack_success_codes(shoal):
    """§3.4.2.1 / §3.5.2.1: a successful QoS 1/2 PUBLISH is acknowledged with 0x00 Success (or 0x10
    No matching subscribers when nobody is subscribed)."""
    pub = shoal.client(version=V5)
    assert pub.publish("nobody/here", b"x", qos=1).reason_code in (0x00, 0x10)
    assert pub.publish("nobody/here", b"x", qos=2).reason_code in (0x00, 0x10)
    sub = shoal.client(version=V5)
    sub.subscribe("somebody/here", qos=2)
    assert pub.publish("somebody/here", b"x", qos=1).reason_code == 0x00
    assert pub.publish("somebody/here", b"x", qos=2).reason_code == 0x00
    assert len(sub.wait_messages(2)) == 2
