"""CONNECT / CONNACK: client identifiers, takeover, TLS, keep alive, session expiry."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest

import raw_mqtt as raw
from mqtt_helpers import V3, V5, VERSION_IDS, VERSIONS, Client, metric, unique, wait_until

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])


def wire(version: int) -> int:
    return 5 if version == V5 else 4


@versions
def test_connect_clean_gets_connack_success_without_session(shoal, version):
    """[MQTT-3.2.2-1] (3.1.1) / [MQTT-3.2.2-2] (5.0): CONNECT with a clean session is accepted
    with return/reason code 0 and Session Present 0; [MQTT-3.2.0-1] CONNACK is the first packet
    the server sends."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    p = r.connect(unique(), version=wire(version), clean=True)
    sp, rc, _ = raw.connack_codes(p, wire(version))
    assert rc == 0
    assert sp is False
    r.close()


def test_v5_empty_client_id_gets_assigned_identifier(shoal):
    """[MQTT-3.1.3-6] [MQTT-3.1.3-7]: a v5 CONNECT with a zero-length ClientID is given a unique
    ClientID, returned as Assigned Client Identifier in the CONNACK."""
    a = shoal.client(version=V5, client_id="")
    b = shoal.client(version=V5, client_id="")
    ida = a.connack.prop("AssignedClientIdentifier")
    idb = b.connack.prop("AssignedClientIdentifier")
    assert ida, f"no Assigned Client Identifier in CONNACK (properties: {a.connack.properties})"
    assert idb
    assert ida != idb, "two clients were assigned the same ClientID"
    # The assigned identity is usable: both clients still work independently.
    a.roundtrip()
    b.roundtrip()
    assert a.is_connected() and b.is_connected()


def test_v311_empty_client_id_with_clean_session_accepted(shoal):
    """[MQTT-3.1.3-6]: a v3.1.1 zero-length ClientId with CleanSession=1 is accepted (the server
    assigns a unique id) and the client works."""
    a = shoal.client(version=V3, client_id="", clean=True)
    b = shoal.client(version=V3, client_id="", clean=True)
    assert a.connack.reason_code == 0 and b.connack.reason_code == 0
    a.roundtrip()
    b.roundtrip()
    # Two anonymous clients must not take each other over.
    assert a.is_connected() and b.is_connected()


def test_v311_empty_client_id_without_clean_session_refused(shoal):
    """[MQTT-3.1.3-8]: a v3.1.1 zero-length ClientId with CleanSession=0 gets CONNACK return code
    0x02 (Identifier rejected) and the connection is closed; [MQTT-3.2.2-4] Session Present 0."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    p = r.connect("", version=4, clean=False)
    sp, rc, _ = raw.connack_codes(p, 4)
    assert rc == 0x02, f"CONNACK return code {rc:#x}, expected 0x02"
    assert sp is False
    closed, extra = r.wait_closed(5)
    assert closed, f"connection left open after refusing the CONNECT (read {extra})"


@versions
def test_duplicate_client_id_takes_over(shoal, version):
    """[MQTT-3.1.4-2] (3.1.1) / [MQTT-3.1.4-3] (5.0): a CONNECT with the ClientID of a connected
    client closes the existing connection; in v5 the old client first gets DISCONNECT 0x8E
    (Session taken over)."""
    cid = unique("dup")
    old = shoal.client(version=version, client_id=cid)
    new = shoal.client(version=version, client_id=cid)
    d = old.wait_disconnected(5)
    if version == V5:
        assert d.from_broker, "v5 client was dropped without a DISCONNECT packet"
        assert d.reason_code == 0x8E, f"DISCONNECT reason {d.reason_code!r}, expected 0x8E"
    assert not old.is_connected()
    # The new connection owns the id and works.
    new.roundtrip()
    time.sleep(0.3)
    assert new.is_connected(), "the new connection was dropped after the takeover"


@versions
def test_takeover_resumes_persistent_session(shoal, version):
    """[MQTT-3.1.4-2]/[MQTT-3.1.4-3] with [MQTT-3.2.2-2] (3.1.1) / [MQTT-3.2.2-3] (5.0): when a
    persistent session is taken over the new connection gets Session Present 1 and the
    subscriptions carry over."""
    cid = unique("dup")
    kw = dict(version=version, client_id=cid, clean=False)
    if version == V5:
        kw["session_expiry"] = 300
    old = shoal.client(**kw)
    assert old.subscribe("takeover/t", qos=1) == [1]
    new = shoal.client(**kw)
    old.wait_disconnected(5)
    assert new.connack.session_present is True
    pub = shoal.client(version=version)
    pub.publish("takeover/t", b"after-takeover", qos=1)
    m = new.wait_message()
    assert (m.topic, m.payload) == ("takeover/t", b"after-takeover")


@versions
def test_tls_connect_with_ca(shoal, version):
    """TLS listener (MQTT 5.0 §5.4.9 / 3.1.1 §5.1): a client that trusts DIR/tls/ca.pem connects
    over TLS and publishes/receives; plain-TCP and TLS clients see each other's messages."""
    tls = shoal.client(version=version, tls=True)
    assert tls.connack.reason_code == 0
    plain = shoal.client(version=version)
    plain.subscribe("tls/t", qos=1)
    tls.subscribe("tls/back", qos=1)
    tls.publish("tls/t", b"over-tls", qos=1)
    m = plain.wait_message()
    assert (m.topic, m.payload, m.qos) == ("tls/t", b"over-tls", 1)
    plain.publish("tls/back", b"to-tls", qos=1)
    m = tls.wait_message()
    assert (m.topic, m.payload, m.qos) == ("tls/back", b"to-tls", 1)


def test_tls_certificate_verifies_for_localhost_and_ip(shoal):
    """The generated server certificate chains to DIR/tls/ca.pem and is valid for both
    `localhost` and 127.0.0.1; a client that does not trust the CA fails the handshake."""
    ctx = ssl.create_default_context(cafile=shoal.ca_path)
    ctx.load_cert_chain(*shoal.device_cert("pytest-device"))
    for name in ("localhost", "127.0.0.1"):
        with socket.create_connection((shoal.host, shoal.mqtts_port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=name) as t:
                t.sendall(raw.connect("pytest-device", version=4))
                t.settimeout(5)
                data = t.recv(4)
                assert data[:1] == b"\x20" and data[3:4] == b"\x00", f"bad CONNACK over TLS: {data!r}"
    untrusted = ssl.create_default_context()  # system roots only
    with socket.create_connection((shoal.host, shoal.mqtts_port), timeout=5) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.wrap_socket(s, server_hostname="localhost")


@versions
def test_keep_alive_enforced(shoal, version):
    """[MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): with Keep Alive 2 s and no packet from the
    client, the server closes the connection after 1.5 x 2 = 3 s (not before ~2 s)."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    p = r.connect(unique("ka"), version=wire(version), keepalive=2)
    _, rc, pr = raw.connack_codes(p, wire(version))
    assert rc == 0
    if pr is not None:
        assert pr.get(raw.P_SERVER_KEEP_ALIVE) in (None, 2), "server overrode a keep alive within its limit"
    t0 = time.monotonic()
    closed, seen = r.wait_closed(8)
    elapsed = time.monotonic() - t0
    assert closed, "server did not close a silent connection within 8 s (keep alive 2 s)"
    assert 2.0 <= elapsed <= 4.5, f"closed after {elapsed:.2f}s, expected ~3 s (1.5 x keep alive)"
    for pkt in seen:  # v5 may say why (0x8D Keep Alive timeout); nothing else is expected
        assert pkt.type == raw.DISCONNECT, f"unexpected packet before close: {pkt!r}"


def test_keep_alive_satisfied_by_pingreq(shoal):
    """[MQTT-3.12.4-1]: the server answers PINGREQ with PINGRESP, and a client that pings within
    its keep alive (2 s) stays connected past 1.5 x keep alive."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    r.connect(unique("ka"), version=4, keepalive=2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.0:
        assert r.send(raw.pingreq()), "connection closed although the client pinged"
        p = r.recv(1.5)
        assert p is not None and p.type == raw.PINGRESP, f"expected PINGRESP, got {p!r}"
        time.sleep(0.8)
    r.send(raw.disconnect())
    r.close()


@pytest.mark.parametrize("client_keepalive", [0, 100])
def test_v5_server_keep_alive(make_shoal, client_keepalive):
    """[MQTT-3.2.2-21] (§3.2.2.3.14 Server Keep Alive): a v5 client asking for keep alive 0 or
    above --max-keep-alive-secs gets Server Keep Alive = the limit in CONNACK."""
    shoal = make_shoal("--max-keep-alive-secs", "30")
    c = shoal.client(version=V5, keepalive=client_keepalive)
    assert c.connack.prop("ServerKeepAlive") == 30, \
        f"ServerKeepAlive {c.connack.prop('ServerKeepAlive')!r}, expected 30"


def test_v5_keep_alive_within_limit_is_kept(make_shoal):
    """[MQTT-3.2.2-22]: a keep alive within the limit is used as sent (no Server Keep Alive, or
    one equal to the client's)."""
    shoal = make_shoal("--max-keep-alive-secs", "30")
    c = shoal.client(version=V5, keepalive=20)
    assert c.connack.prop("ServerKeepAlive") in (None, 20)


def test_v5_session_expiry(shoal):
    """[MQTT-3.1.2-23] / §3.1.2.11.2: a session with Session Expiry Interval 1 s no longer exists
    2 s after the disconnect (Session Present 0, subscription gone), while one with 30 s does."""
    short_id, long_id = unique("short"), unique("long")
    short = shoal.client(version=V5, client_id=short_id, session_expiry=1)
    long_ = shoal.client(version=V5, client_id=long_id, session_expiry=30)
    short.subscribe("expiry/short", qos=1)
    long_.subscribe("expiry/long", qos=1)
    short.disconnect()
    long_.disconnect()
    time.sleep(2.0)
    short.connect(clean=False)
    long_.connect(clean=False)
    assert short.connack.session_present is False, "session with 1 s expiry still present after 2 s"
    assert long_.connack.session_present is True, "session with 30 s expiry lost after 2 s"
    pub = shoal.client(version=V5)
    pub.publish("expiry/short", b"s", qos=1)
    pub.publish("expiry/long", b"l", qos=1)
    m = long_.wait_message()
    assert m.payload == b"l"
    short.expect_no_message(0.5)


def test_v5_session_expiry_zero_ends_session_at_disconnect(shoal):
    """[MQTT-3.1.2-23] / §3.1.2.11.2: Session Expiry Interval absent (0) means the session ends
    when the network connection closes: reconnecting with Clean Start 0 gets Session Present 0."""
    cid = unique()
    c = shoal.client(version=V5, client_id=cid)
    c.subscribe("expiry/zero", qos=1)
    c.disconnect()
    # The DISCONNECT and the next CONNECT arrive on two sockets, read by different threads: wait
    # until the server has closed the first connection, or the CONNECT may be a takeover of a
    # still-open connection (which resumes the session, as MQTT 5 §3.1.4 says).
    wait_until(lambda: metric(shoal, "shoal_connections") == 0, what="the connection closed")
    c.connect(clean=False)
    assert c.connack.session_present is False


def test_first_packet_must_be_connect(shoal):
    """[MQTT-3.1.0-1]: the first packet from client to server must be CONNECT; the server closes
    a connection that starts with anything else, without CONNACK."""
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    r.send(raw.publish("x/y", b"no-connect", version=4))
    closed, seen = r.wait_closed(5)
    assert closed, "connection that started with PUBLISH was left open"
    assert not any(p.type == raw.CONNACK for p in seen), f"server answered with {seen}"


def test_fixture_ports_and_health(shoal):
    """Sanity: the fixture exposes distinct ports and a CA file, and /health answers."""
    import json
    from mqtt_helpers import http_get
    assert len({shoal.mqtt_port, shoal.mqtts_port, shoal.http_port}) == 3
    h = json.loads(http_get(shoal, "/health"))
    assert h.get("status") == "ok"
    c = Client(shoal, version=V3)
    try:
        assert c.connack.reason_code == 0
    finally:
        c.close()


def test_an_http_only_node_starts_and_stops_cleanly(tmp_path):
    """Both MQTT listeners off: the HTTP API serves, ports.json lists only it, SIGTERM stops it."""
    import signal
    import subprocess
    import urllib.request

    from conftest import find_binary

    data = tmp_path / "data"
    log = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([find_binary(), "serve", "--data-dir", str(data), "--mqtt-listen", "off",
                             "--mqtts-listen", "off", "--http-listen", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        ports_file = data / "ports.json"
        deadline = time.time() + 20
        while not ports_file.exists() and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            time.sleep(0.05)
        ports = json.loads(ports_file.read_text())
        assert list(ports) == ["http"], ports
        with urllib.request.urlopen(f"http://{ports['http']}/health", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
