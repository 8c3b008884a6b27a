"""PUBLISH / SUBSCRIBE at QoS 0, 1 and 2, QoS downgrade, wildcards, $-topics, ordering."""

from __future__ import annotations

import pytest

from mqtt_helpers import V3, V5, VERSION_IDS, VERSIONS, unique

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])


@versions
@pytest.mark.parametrize("pub_qos", [0, 1, 2], ids=lambda q: f"pub{q}")
@pytest.mark.parametrize("sub_qos", [0, 1, 2], ids=lambda q: f"sub{q}")
def test_publish_subscribe_qos(shoal, version, pub_qos, sub_qos):
    """[MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5.0): a message is delivered at the minimum of
    its published QoS and the granted subscription QoS; [MQTT-3.9.3-1]/SUBACK grants the
    requested QoS; QoS 1/2 publishes are acknowledged (PUBACK / PUBREC-PUBREL-PUBCOMP) with
    success; [MQTT-3.3.1-9] (3.1.1) / [MQTT-3.3.1-12] (5.0) retain 0 on a live delivery."""
    sub = shoal.client(version=version)
    pub = shoal.client(version=version)
    topic = f"qos/{unique('t')}"
    granted = sub.subscribe(topic, qos=sub_qos)
    assert granted == [sub_qos], f"SUBACK {granted}, expected [{sub_qos}]"
    payload = f"qos{pub_qos}->{sub_qos}".encode()
    ack = pub.publish(topic, payload, qos=pub_qos)
    if pub_qos:
        assert ack.reason_code == 0, f"publish acknowledged with {ack.reason_code:#x}"
    m = sub.wait_message()
    assert m.topic == topic
    assert m.payload == payload
    assert m.qos == min(pub_qos, sub_qos), f"delivered at QoS {m.qos}, expected {min(pub_qos, sub_qos)}"
    assert m.retain is False
    sub.expect_no_message(0.3)


@pytest.mark.parametrize("pub_version,sub_version", [(V3, V5), (V5, V3)], ids=["v311-to-v5", "v5-to-v311"])
def test_cross_version_delivery(shoal, pub_version, sub_version):
    """§4.6/4.3: a message published by a v3.1.1 client reaches a v5 subscriber and vice versa,
    with payload, topic and QoS intact."""
    sub = shoal.client(version=sub_version)
    pub = shoal.client(version=pub_version)
    sub.subscribe("cross/#", qos=2)
    for q in (0, 1, 2):
        pub.publish(f"cross/q{q}", f"p{q}".encode(), qos=q)
    got = sorted((m.topic, m.payload, m.qos) for m in sub.wait_messages(3))
    assert got == [("cross/q0", b"p0", 0), ("cross/q1", b"p1", 1), ("cross/q2", b"p2", 2)]


@versions
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_ordered_delivery(shoal, version, qos):
    """[MQTT-4.6.0-6]: the server sends PUBLISH packets to consumers (for the same topic and QoS)
    in the order they were received from a client. 300 messages of 1 KiB are published
    back-to-back (a realistic burst that spans several socket reads) to a QoS 2 subscriber;
    QoS 2 also delivers each exactly once [MQTT-4.3.3-*]."""
    sub = shoal.client(version=version)
    pub = shoal.client(version=version, max_inflight=100)  # the server's Receive Maximum
    sub.subscribe("order/t", qos=2)
    n = 300
    payloads = [f"{i:04d}".encode() + b"." * 1020 for i in range(n)]
    for p in payloads:
        pub.publish("order/t", p, qos=qos, wait=False)
    msgs = sub.wait_messages(n, timeout=20)
    got = [int(m.payload[:4]) for m in msgs]
    assert sorted(got) == list(range(n)), "messages lost or duplicated"
    moved = [(pos, seq) for pos, seq in enumerate(got) if seq != pos]
    if moved:
        first = moved[0][0]  # the first message that did not arrive in its place
        raise AssertionError(
            f"{len(moved)} of {n} QoS {qos} messages delivered out of publish order: message #{first} "
            f"arrived at position {got.index(first)}; received sequence around it: "
            f"{got[max(0, first - 2):got.index(first) + 2]}")
    sub.expect_no_message(0.3)


@versions
def test_overlapping_subscriptions_deliver_max_qos(shoal, version):
    """[MQTT-3.3.5-1]: with overlapping subscriptions the server delivers respecting the maximum
    QoS of all matching subscriptions."""
    sub = shoal.client(version=version)
    pub = shoal.client(version=version)
    assert sub.subscribe("ov/+", qos=0) == [0]
    assert sub.subscribe("ov/#", qos=2) == [2]
    pub.publish("ov/a", b"x", qos=2)
    msgs = [sub.wait_message()] + sub.drain(0.4)
    assert all(m.payload == b"x" and m.topic == "ov/a" for m in msgs)
    assert max(m.qos for m in msgs) == 2, f"delivered at QoS {[m.qos for m in msgs]}, expected one at 2"


@versions
def test_resubscribe_replaces_subscription(shoal, version):
    """[MQTT-3.8.4-3]: a SUBSCRIBE for a filter identical to an existing one replaces it (new QoS,
    one copy of each message)."""
    sub = shoal.client(version=version)
    pub = shoal.client(version=version)
    assert sub.subscribe("rep/t", qos=0) == [0]
    assert sub.subscribe("rep/t", qos=2) == [2]
    pub.publish("rep/t", b"once", qos=2)
    m = sub.wait_message()
    assert (m.payload, m.qos) == (b"once", 2)
    sub.expect_no_message(0.4)


@versions
def test_unsubscribe_stops_delivery(shoal, version):
    """[MQTT-3.10.4-2]/[MQTT-3.10.4-4]: after UNSUBACK the server adds no new messages for the
    removed filter; other subscriptions keep working."""
    sub = shoal.client(version=version)
    pub = shoal.client(version=version)
    sub.subscribe("uns/a", qos=1)
    sub.subscribe("uns/b", qos=1)
    pub.publish("uns/a", b"1", qos=1)
    assert sub.wait_message().payload == b"1"
    sub.unsubscribe("uns/a")
    pub.publish("uns/a", b"2", qos=1)
    pub.publish("uns/b", b"3", qos=1)
    m = sub.wait_message()
    assert (m.topic, m.payload) == ("uns/b", b"3")
    sub.expect_no_message(0.4)


@versions
def test_wildcards(shoal, version):
    """[MQTT-4.7.1-2]/[MQTT-4.7.1-3] (3.1.1) / [MQTT-4.7.1-1]/[MQTT-4.7.1-2] (5.0), §4.7.1.2-3:
    `+` matches exactly one level, `#` matches the parent and any number of child levels."""
    filters = ["w/+/c", "w/#", "w/+", "+/+/+", "w/b/c"]
    subs = {}
    for f in filters:
        c = shoal.client(version=version)
        assert c.subscribe(f, qos=1)[0] == 1
        subs[f] = c
    pub = shoal.client(version=version)
    topics = ["w/b/c", "w/b/d", "w", "w/x", "w/b/c/d", "w//c", "other/b/c"]
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    expected = {
        "w/+/c": {"w/b/c", "w//c"},
        "w/#": {"w/b/c", "w/b/d", "w", "w/x", "w/b/c/d", "w//c"},
        "w/+": {"w/x"},
        "+/+/+": {"w/b/c", "w/b/d", "w//c", "other/b/c"},
        "w/b/c": {"w/b/c"},
    }
    for f, c in subs.items():
        got = c.drain(0.8) if not expected[f] else c.wait_messages(len(expected[f])) + c.drain(0.3)
        got_topics = [m.topic for m in got]
        assert sorted(got_topics) == sorted(expected[f]), f"filter {f!r} received {got_topics}"
        assert all(m.payload == m.topic.encode() for m in got)


@versions
def test_dollar_topics_not_matched_by_leading_wildcards(shoal, version):
    """[MQTT-4.7.2-1]: topic filters starting with a wildcard (`#`, `+/...`) do not match topic
    names starting with `$`; a filter that names the `$` level explicitly does."""
    hash_ = shoal.client(version=version)
    plus = shoal.client(version=version)
    dollar = shoal.client(version=version)
    sys_ = shoal.client(version=version)
    hash_.subscribe("#", qos=1)
    plus.subscribe("+/x", qos=1)
    dollar.subscribe("$custom/#", qos=1)
    sys_.subscribe("$SYS/#", qos=1)
    pub = shoal.client(version=version)
    pub.publish("$custom/x", b"dollar", qos=1)
    pub.publish("$SYS/x", b"sys", qos=0)
    pub.publish("plain/x", b"plain", qos=1)
    m = dollar.wait_message()
    assert (m.topic, m.payload) == ("$custom/x", b"dollar")
    got_hash = [m.topic for m in hash_.wait_messages(1)] + [m.topic for m in hash_.drain(0.5)]
    got_plus = [m.topic for m in plus.wait_messages(1)] + [m.topic for m in plus.drain(0.3)]
    assert got_hash == ["plain/x"], f"'#' received {got_hash}"
    assert got_plus == ["plain/x"], f"'+/x' received {got_plus}"
    # $SYS/x (if the server accepts client publishes there) only reaches $SYS/#.
    assert all(m.topic.startswith("$SYS/") for m in sys_.drain(0.2))
