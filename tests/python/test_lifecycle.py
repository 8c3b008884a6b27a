"""AWS IoT lifecycle events: `$aws/events/presence/connected/{clientId}` and
`$aws/events/presence/disconnected/{clientId}`.

The broker publishes them at QoS 0 (not retained) with AWS's JSON documents. A connection's
disconnected event carries its connected event's `versionNumber` and `sessionIdentifier`;
`versionNumber` rises with every connection (also across a restart) and stays JavaScript-safe;
`disconnectReason` says why the connection ended (DISCONNECT, keep-alive timeout, protocol error,
lost socket, takeover). Client ids that cannot be a single topic level get no events. The events
go through the broker's hooks as if the client had published them, so rules see them; a `#`
subscriber does not (`[MQTT-4.7.2-1]`: wildcards at the start of a filter do not match `$` topics).

Events of one client are watched with a subscription to `$aws/events/presence/+/{clientId}`;
every wait is bounded, and an absence is proven by a later event followed by a short quiet period.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import time

import pytest

import raw_mqtt as raw
from conftest import Shoal
from mqtt_helpers import V3, V5, VERSION_IDS, VERSIONS, Client, unique
from plugin_helpers import http, ok

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])

PRESENCE = "$aws/events/presence"
CONNECTED_KEYS = {"clientId", "timestamp", "eventType", "sessionIdentifier", "principalIdentifier",
                  "ipAddress", "versionNumber"}
DISCONNECTED_KEYS = {"clientId", "timestamp", "eventType", "sessionIdentifier", "principalIdentifier",
                     "clientInitiatedDisconnect", "disconnectReason", "versionNumber"}
JS_SAFE = 2 ** 53
QUIET = 0.4  # seconds of silence that prove an event was not published (after an ordering proof)


def wire(version: int) -> int:
    return 5 if version == V5 else 4


def now_ms() -> int:
    return int(time.time() * 1000)


# -- helpers ---------------------------------------------------------------------------------------

def watcher(s: Shoal, client_id: str | None = None, filt: str | None = None, version: int = V5) -> Client:
    """A client subscribed (QoS 1) to the presence events of `client_id` (or to `filt`)."""
    w = s.client(version=version, client_id=unique("watch"))
    f = filt or f"{PRESENCE}/+/{client_id}"
    assert w.subscribe(f, qos=1) == [1], f"subscription to {f} refused"
    return w


def wait_events(w: Client, n: int, client_id: str | None = None, timeout: float = 5.0) -> list[dict]:
    """The next n presence events (of `client_id` when given; others are skipped), parsed, with
    `_topic`, `_qos` and `_retain` of the message added."""
    out: list[dict] = []
    skipped: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        try:
            m = w.wait_message(max(0.01, left))
        except AssertionError:
            raise AssertionError(f"got {len(out)} of {n} presence events of {client_id!r} within {timeout}s: "
                                 f"{out}; other messages: {skipped}") from None
        if not m.topic.startswith(PRESENCE + "/"):
            skipped.append(m)
            continue
        ev = json.loads(m.payload)
        if client_id is not None and ev.get("clientId") != client_id:
            skipped.append(ev)
            continue
        ev.update(_topic=m.topic, _qos=m.qos, _retain=m.retain)
        out.append(ev)
    return out


def one(events: list[dict], event_type: str) -> dict:
    found = [e for e in events if e["eventType"] == event_type]
    assert len(found) == 1, f"expected one {event_type} event in {events}"
    return found[0]


def check_connected(ev: dict, client_id: str, t0: int, principal: str | None = None) -> None:
    """A connected event's fields, as AWS documents them."""
    doc = {k: v for k, v in ev.items() if not k.startswith("_")}
    assert set(doc) == CONNECTED_KEYS, f"connected event keys {sorted(doc)}, expected {sorted(CONNECTED_KEYS)}"
    assert ev["_topic"] == f"{PRESENCE}/connected/{client_id}"
    assert (ev["_qos"], ev["_retain"]) == (0, False), "lifecycle events are QoS 0, not retained"
    assert ev["clientId"] == client_id and ev["eventType"] == "connected"
    assert ev["ipAddress"] == "127.0.0.1", ev
    check_common(ev, t0, principal)


def check_disconnected(ev: dict, client_id: str, t0: int, reason: str, principal: str | None = None) -> None:
    doc = {k: v for k, v in ev.items() if not k.startswith("_")}
    assert set(doc) == DISCONNECTED_KEYS, \
        f"disconnected event keys {sorted(doc)}, expected {sorted(DISCONNECTED_KEYS)}"
    assert ev["_topic"] == f"{PRESENCE}/disconnected/{client_id}"
    assert (ev["_qos"], ev["_retain"]) == (0, False), "lifecycle events are QoS 0, not retained"
    assert ev["clientId"] == client_id and ev["eventType"] == "disconnected"
    assert ev["disconnectReason"] == reason, f"disconnectReason {ev['disconnectReason']!r}, expected {reason!r}"
    assert ev["clientInitiatedDisconnect"] is (reason == "CLIENT_INITIATED_DISCONNECT"), ev
    check_common(ev, t0, principal)


def check_common(ev: dict, t0: int, principal: str | None) -> None:
    ts = ev["timestamp"]
    assert isinstance(ts, int) and not isinstance(ts, bool), f"timestamp {ts!r} is not an integer"
    assert t0 - 1000 <= ts <= now_ms() + 1000, f"timestamp {ts} is not epoch milliseconds near now ({t0})"
    sid = ev["sessionIdentifier"]
    assert isinstance(sid, str) and re.fullmatch(r"[0-9a-f]{32}", sid), f"sessionIdentifier {sid!r}"
    v = ev["versionNumber"]
    assert isinstance(v, int) and not isinstance(v, bool) and v > 0, f"versionNumber {v!r}"
    p = ev["principalIdentifier"]
    assert isinstance(p, str) and p, f"principalIdentifier {p!r}"
    if principal is not None:
        assert p == principal, f"principalIdentifier {p!r}, expected {principal!r}"


def same_connection(conn: dict, disc: dict) -> None:
    assert disc["versionNumber"] == conn["versionNumber"], \
        f"disconnected versionNumber {disc['versionNumber']} != connected {conn['versionNumber']}"
    assert disc["sessionIdentifier"] == conn["sessionIdentifier"], \
        f"disconnected sessionIdentifier {disc['sessionIdentifier']} != connected {conn['sessionIdentifier']}"
    assert disc["principalIdentifier"] == conn["principalIdentifier"]
    assert disc["timestamp"] >= conn["timestamp"]


def raw_session(s: Shoal, client_id: str, version: int, keepalive: int = 60) -> raw.RawClient:
    r = raw.RawClient(s.host, s.mqtt_port)
    p = r.connect(client_id, version=version, keepalive=keepalive)
    assert raw.connack_codes(p, version)[1] == 0, f"CONNECT refused: {p!r}"
    return r


# -- the clean case --------------------------------------------------------------------------------

@versions
def test_connect_and_disconnect_publish_aws_documents(shoal: Shoal, version):
    """A client that connects and sends DISCONNECT gets a connected event then a disconnected
    event with CLIENT_INITIATED_DISCONNECT, both about the same connection."""
    cid = unique("dev")
    w = watcher(shoal, cid)
    t0 = now_ms()
    c = Client(shoal, version=version, client_id=cid)
    shoal.track(c)
    conn = wait_events(w, 1, cid)[0]
    check_connected(conn, cid, t0, principal="anonymous")
    c.disconnect()
    disc = wait_events(w, 1, cid)[0]
    check_disconnected(disc, cid, t0, "CLIENT_INITIATED_DISCONNECT", principal="anonymous")
    same_connection(conn, disc)
    w.expect_no_message(QUIET)

    # A second connection of the same client is a new session with a higher version.
    c.connect()
    again = wait_events(w, 1, cid)[0]
    check_connected(again, cid, t0)
    assert again["versionNumber"] > conn["versionNumber"]
    assert again["sessionIdentifier"] != conn["sessionIdentifier"]
    c.disconnect()
    assert wait_events(w, 1, cid)[0]["versionNumber"] == again["versionNumber"]


def test_v5_disconnect_with_will_is_still_client_initiated(shoal: Shoal):
    """A v5 DISCONNECT with reason 0x04 (Disconnect with Will Message) is still the client's own
    disconnect; the will is published as well."""
    cid = unique("dev")
    w = watcher(shoal, cid)
    obs = shoal.client()
    assert obs.subscribe(f"will/{cid}", qos=1) == [1]
    t0 = now_ms()
    c = shoal.client(version=V5, client_id=cid, will=dict(topic=f"will/{cid}", payload=b"bye", qos=1))
    conn = wait_events(w, 1, cid)[0]
    c.disconnect(reason_code=0x04)
    disc = wait_events(w, 1, cid)[0]
    check_disconnected(disc, cid, t0, "CLIENT_INITIATED_DISCONNECT")
    same_connection(conn, disc)
    assert obs.wait_message().payload == b"bye"


def test_a_certificate_clients_principal_is_its_certificate_id(shoal: Shoal):
    """Over mTLS the principalIdentifier is the certificate's id (hex SHA-256 of its DER)."""
    crt, key = shoal.device_cert("lifecycle-thing")
    with open(crt) as f:
        cert_id = hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()
    cid = "lifecycle-thing"
    w = watcher(shoal, cid)
    t0 = now_ms()
    c = shoal.client(version=V5, client_id=cid, tls=True, client_cert=(crt, key))
    conn = wait_events(w, 1, cid)[0]
    check_connected(conn, cid, t0, principal=cert_id)
    c.abort()
    disc = wait_events(w, 1, cid)[0]
    check_disconnected(disc, cid, t0, "CONNECTION_LOST", principal=cert_id)
    same_connection(conn, disc)


# -- abnormal ends ---------------------------------------------------------------------------------

@versions
def test_socket_closed_without_disconnect_is_connection_lost(shoal: Shoal, version):
    cid = unique("dev")
    w = watcher(shoal, cid)
    t0 = now_ms()
    c = shoal.client(version=version, client_id=cid)
    conn = wait_events(w, 1, cid)[0]
    c.abort()
    disc = wait_events(w, 1, cid)[0]
    check_disconnected(disc, cid, t0, "CONNECTION_LOST")
    same_connection(conn, disc)


@versions
def test_raw_socket_closed_right_after_connack_is_connection_lost(shoal: Shoal, version):
    cid = unique("raw")
    w = watcher(shoal, cid)
    t0 = now_ms()
    r = raw_session(shoal, cid, wire(version))
    r.close()
    conn, disc = wait_events(w, 2, cid)
    check_connected(conn, cid, t0)
    check_disconnected(disc, cid, t0, "CONNECTION_LOST")
    same_connection(conn, disc)


@versions
def test_silent_client_is_dropped_with_keep_alive_timeout(shoal: Shoal, version):
    """Keep alive 1 s and nothing sent after CONNECT: the broker drops the connection after 1.5 x
    the keep alive (rounded up) and says MQTT_KEEP_ALIVE_TIMEOUT."""
    cid = unique("ka")
    w = watcher(shoal, cid)
    t0 = now_ms()
    r = raw_session(shoal, cid, wire(version), keepalive=1)
    try:
        start = time.monotonic()
        conn = wait_events(w, 1, cid)[0]
        check_connected(conn, cid, t0)
        disc = wait_events(w, 1, cid, timeout=8)[0]
        elapsed = time.monotonic() - start
        check_disconnected(disc, cid, t0, "MQTT_KEEP_ALIVE_TIMEOUT")
        same_connection(conn, disc)
        assert 1.0 <= elapsed <= 6.0, f"keep-alive timeout after {elapsed:.2f}s with keep alive 1 s"
        closed, seen = r.wait_closed(2)
        assert closed, "the broker published a keep-alive timeout but kept the socket open"
        assert all(p.type == raw.DISCONNECT for p in seen), seen
    finally:
        r.close()


MALFORMED = {
    # Packet type 0 is reserved [MQTT-2.2.1].
    "reserved-type": lambda v: b"\x00\x00",
    # A PUBLISH with QoS 3 [MQTT-3.3.1-4].
    "qos3": lambda v: b"\x36" + raw.publish("a/b", b"x", qos=1, version=v)[1:],
    # A wildcard in a topic name [MQTT-3.3.2-2]: well-formed, refused by the broker's handler.
    "wildcard-topic": lambda v: raw.publish("a/+", b"x", version=v),
}


@versions
@pytest.mark.parametrize("kind", list(MALFORMED))
def test_protocol_violation_is_client_error(shoal: Shoal, version, kind):
    cid = unique("bad")
    w = watcher(shoal, cid)
    t0 = now_ms()
    r = raw_session(shoal, cid, wire(version))
    try:
        conn = wait_events(w, 1, cid)[0]
        r.send(MALFORMED[kind](wire(version)))
        closed, _ = r.wait_closed(5)
        assert closed, f"the broker kept the connection open after a {kind} packet"
        disc = wait_events(w, 1, cid)[0]
        check_disconnected(disc, cid, t0, "CLIENT_ERROR")
        same_connection(conn, disc)
    finally:
        r.close()


@versions
def test_takeover_is_duplicate_clientid_with_a_lower_version(shoal: Shoal, version):
    """The same client id connecting again ends the first connection with DUPLICATE_CLIENTID; its
    disconnected event carries the first connection's version, lower than the second's, so a
    consumer can tell that it is stale."""
    cid = unique("dup")
    w = watcher(shoal, cid)
    t0 = now_ms()
    first = shoal.client(version=version, client_id=cid)
    c1 = wait_events(w, 1, cid)[0]
    second = Client(shoal, version=version, client_id=cid)
    shoal.track(second)
    evs = wait_events(w, 2, cid)  # the second's connected and the first's disconnected, any order
    c2 = one(evs, "connected")
    d1 = one(evs, "disconnected")
    check_connected(c2, cid, t0)
    check_disconnected(d1, cid, t0, "DUPLICATE_CLIENTID")
    same_connection(c1, d1)
    assert d1["versionNumber"] < c2["versionNumber"], \
        f"stale disconnected event has versionNumber {d1['versionNumber']}, not below {c2['versionNumber']}"
    assert c2["sessionIdentifier"] != c1["sessionIdentifier"]
    first.wait_disconnected()
    # The second connection is alive and ends on its own terms.
    second.roundtrip()
    second.disconnect()
    d2 = wait_events(w, 1, cid)[0]
    check_disconnected(d2, cid, t0, "CLIENT_INITIATED_DISCONNECT")
    same_connection(c2, d2)
    w.expect_no_message(QUIET)


# -- who gets events, who sees them ----------------------------------------------------------------

@pytest.mark.parametrize("bad_id", ["lc+plus", "lc#hash"], ids=["plus", "hash"])
def test_client_ids_with_wildcards_get_no_events(shoal: Shoal, bad_id):
    """As AWS documents: client ids containing `#` or `+` get no lifecycle events."""
    w = watcher(shoal, filt=f"{PRESENCE}/#")
    odd = shoal.client(version=V5, client_id=f"{bad_id}-{unique('x')}")
    odd.roundtrip()  # fully connected
    odd.abort()
    ctl_id = unique("ctl")
    ctl = shoal.client(version=V5, client_id=ctl_id)
    ctl.disconnect()
    # The control client's events prove the subscription works; nothing else may arrive.
    events = wait_events(w, 2, timeout=5)
    events += [json.loads(m.payload) | {"_topic": m.topic} for m in w.drain(QUIET)]
    assert [(e["clientId"], e["eventType"]) for e in events] == [(ctl_id, "connected"), (ctl_id, "disconnected")], \
        f"events other than the control client's: {events}"


def test_client_ids_with_a_slash_get_events_one_level_deeper(shoal: Shoal):
    """AWS only leaves out ids with wildcards: `fleet/7` is published on
    `$aws/events/presence/connected/fleet/7` (which `+/+` filters do not match)."""
    cid = f"lc/{unique('slash')}"
    w = watcher(shoal, filt=f"{PRESENCE}/#")
    c = shoal.client(version=V5, client_id=cid)
    c.disconnect()
    events = wait_events(w, 2, timeout=5)
    assert [(e["clientId"], e["eventType"], e["_topic"]) for e in events] == [
        (cid, "connected", f"{PRESENCE}/connected/{cid}"),
        (cid, "disconnected", f"{PRESENCE}/disconnected/{cid}"),
    ], events


@versions
def test_wildcard_subscribers_do_not_get_presence_events(shoal: Shoal, version):
    """[MQTT-4.7.2-1]: `#` and `+/...` do not match topics beginning with `$`."""
    cid = unique("dev")
    w = watcher(shoal, cid)
    hashes = shoal.client(version=version)
    assert hashes.subscribe("#", qos=1) == [1]
    plus = shoal.client(version=version)
    assert plus.subscribe("+/events/presence/#", qos=1) == [1]
    c = shoal.client(version=version, client_id=cid)
    marker = unique("marker").encode()
    c.publish(f"lc/{cid}", marker, qos=1)
    c.abort()
    assert [e["eventType"] for e in wait_events(w, 2, cid)] == ["connected", "disconnected"]
    got = hashes.drain(QUIET)
    assert [(m.topic, m.payload) for m in got] == [(f"lc/{cid}", marker)], \
        f"a '#' subscriber got {got} (only the marker expected)"
    plus.expect_no_message(0.1)


# -- rules -----------------------------------------------------------------------------------------

def test_a_rule_on_disconnected_events_republishes_lost_clients(shoal: Shoal):
    """`SELECT clientId, disconnectReason FROM '$aws/events/presence/disconnected/+'` with a
    republish to `presence/lost/${clientId}`: a dropped truck becomes a message. The event is
    published as if by the client itself (`clientid()`)."""
    ok(http(shoal, "POST", "/api/v1/rules/presence_lost", {
        "sql": "SELECT clientId, disconnectReason FROM '$aws/events/presence/disconnected/+'",
        "actions": [{"republish": {"topic": "presence/lost/${clientId}", "qos": 1}},
                    {"republish": {"topic": "presence/origin/${clientid()}", "qos": 1}}],
    }), 201)
    sub = shoal.client()
    assert sub.subscribe("presence/#", qos=1) == [1]
    truck = unique("truck")
    t = shoal.client(version=V3, client_id=truck)
    t.abort()
    got = {m.topic: (json.loads(m.payload), m.qos) for m in sub.wait_messages(2, timeout=10)}
    assert got == {
        f"presence/lost/{truck}": ({"clientId": truck, "disconnectReason": "CONNECTION_LOST"}, 1),
        f"presence/origin/{truck}": ({"clientId": truck, "disconnectReason": "CONNECTION_LOST"}, 1),
    }, got
    # A clean disconnect goes through the same rule with its own reason.
    other = unique("truck")
    shoal.client(version=V5, client_id=other).disconnect()
    got = {m.topic: json.loads(m.payload) for m in sub.wait_messages(2, timeout=10)}
    assert got[f"presence/lost/{other}"] == {"clientId": other, "disconnectReason": "CLIENT_INITIATED_DISCONNECT"}
    sub.expect_no_message(QUIET)


# -- version numbers -------------------------------------------------------------------------------

def test_version_numbers_rise_across_a_restart_and_stay_javascript_safe(shoal: Shoal):
    cid = unique("dev")
    versions_seen: list[int] = []
    for _ in range(2):  # before and after the restart
        w = watcher(shoal, cid)
        for _ in range(3):
            c = Client(shoal, version=V5, client_id=cid)
            conn = wait_events(w, 1, cid)[0]
            c.disconnect()
            same_connection(conn, wait_events(w, 1, cid)[0])
            versions_seen.append(conn["versionNumber"])
        w.close()
        if len(versions_seen) == 3:
            shoal.restart()
    assert versions_seen == sorted(versions_seen) and len(set(versions_seen)) == 6, \
        f"versionNumber did not rise with every connection (restart after the third): {versions_seen}"
    assert all(v < JS_SAFE for v in versions_seen), \
        f"versionNumber above 2**53 = {JS_SAFE} (not exact in JavaScript): {versions_seen}"


def test_clients_cannot_forge_lifecycle_events(shoal: Shoal):
    """`$aws/events/...` is the broker's: an MQTT publish there is refused as unauthorized (v5:
    PUBACK 0x87; v3.1.1 has no refusal but the disconnect) and an HTTP one gets 403, whatever
    the policy; watchers see only real events."""
    w = watcher(shoal, filt=f"{PRESENCE}/#")
    forger_id = unique("forger")
    forger = shoal.client(version=V5, client_id=forger_id)
    ack = forger.publish(f"{PRESENCE}/connected/truck-99", b'{"clientId":"truck-99"}', qos=1)
    assert ack.reason_code == 0x87, ack
    v3 = shoal.client(version=V3, client_id=unique("forger3"))
    v3.publish(f"{PRESENCE}/disconnected/truck-99", b"{}", qos=1, wait=False)
    v3.wait_disconnected()
    a = http(shoal, "POST", "/topics/$aws/events/presence/connected/truck-99?qos=1", data=b"{}",
             content_type="application/json")
    assert a.status == 403, a
    events = [json.loads(m.payload) | {"_topic": m.topic} for m in w.drain(QUIET * 2)]
    assert all(e["clientId"] != "truck-99" for e in events), events
