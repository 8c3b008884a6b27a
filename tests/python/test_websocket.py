"""MQTT over WebSocket at /mqtt on the HTTP listener (issue #7): paho-mqtt over `ws://` with a
SigV4 presigned URL (botocore's SigV4QueryAuth, signing name `iotdevicegateway`), both
subprotocols, the key's policies applied as on MQTT/TLS, refusals before the upgrade, and an
HTTPS (`wss://`) connection authenticated by its TLS client certificate.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import ssl
import struct
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import raw_mqtt
from conftest import Shoal
from identity_helpers import Api, allow, doc, issue_device
from mqtt_helpers import metric, wait_until

pytest.importorskip("botocore")
from botocore.auth import SigV4QueryAuth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

TIMEOUT = 10


def presigned_path(host: str, port: int, key: tuple[str, str], expires: int = 300,
                   service: str = "iotdevicegateway", scheme: str = "ws") -> str:
    req = AWSRequest(method="GET", url=f"{'https' if scheme == 'wss' else 'http'}://{host}:{port}/mqtt")
    SigV4QueryAuth(Credentials(*key), service, "us-east-1", expires=expires).add_auth(req)
    return req.url.split(f":{port}", 1)[1]


class WsClient:
    """A paho-mqtt client over WebSocket that records what it receives."""

    def __init__(self, port: int, path: str, client_id: str | None = None, protocol: str | None = None,
                 tls: ssl.SSLContext | None = None, version=paho.MQTTv311):
        self.messages: queue.Queue = queue.Queue()
        self.connected: queue.Queue = queue.Queue()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"ws-{uuid.uuid4().hex[:8]}",
                             transport="websockets", protocol=version)
        headers = {"Sec-Websocket-Protocol": protocol} if protocol else None
        self.c.ws_set_options(path=path, headers=headers)
        if tls is not None:
            self.c.tls_set_context(tls)
        self.c.on_connect = lambda c, u, f, rc, p=None: self.connected.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.port = port

    def connect(self):
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        rc = self.connected.get(timeout=TIMEOUT)
        return rc

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_paho_over_websocket_with_a_presigned_url(shoal: Shoal):
    path = presigned_path("127.0.0.1", shoal.http_port, shoal.credentials)
    sub = WsClient(shoal.http_port, path)
    assert sub.connect() == 0
    try:
        r = sub.c.subscribe("fleet/+/telemetry", qos=1)
        assert r[0] == paho.MQTT_ERR_SUCCESS
        time.sleep(0.3)
        # A plain TCP publisher reaches the WebSocket subscriber, and the other way round.
        tcp = shoal.client()
        tcp.publish("fleet/t1/telemetry", b'{"t":-19}', qos=1)
        assert sub.messages.get(timeout=TIMEOUT) == ("fleet/t1/telemetry", b'{"t":-19}')
        tcp.subscribe("cmd/#", qos=1)
        sub.c.publish("cmd/t1", b"go", qos=1).wait_for_publish(TIMEOUT)
        m = tcp.wait_message(TIMEOUT)
        assert (m.topic, m.payload) == ("cmd/t1", b"go")
        assert metric(shoal, "shoal_ws_bridged_connections") == 1
        # Big messages cross the bridge whole.
        big = bytes(range(256)) * 400
        tcp.publish("fleet/t1/telemetry", big, qos=1)
        assert sub.messages.get(timeout=TIMEOUT) == ("fleet/t1/telemetry", big)
    finally:
        sub.close()
    # The bridge is gone once the client is.
    wait_until(lambda: metric(shoal, "shoal_ws_bridged_connections") == 0, timeout=5, what="the bridge to end")


def read_ws_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked frame from the server: (opcode, payload)."""
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            assert chunk, f"end of stream inside a frame after {out!r}"
            out += chunk
        return out
    first, second = exactly(2)
    assert first & 0x80 and not second & 0x80, (first, second)  # FIN, unmasked
    n = second & 0x7F
    if n == 126:
        n = struct.unpack("!H", exactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exactly(8))[0]
    return first & 0x0F, exactly(n)


def send_ws_frame(sock: socket.socket, opcode: int, payload: bytes) -> None:
    """One masked frame from the client (payload under 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
                 + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def raw_ws_mqtt(s: Shoal, client_id: str, version: int = 4) -> socket.socket:
    """A hand-made WebSocket client: upgrade, one masked binary frame with CONNECT, CONNACK
    read. Returns the socket, which then neither reads nor writes nor closes (a vanished client)."""
    sock = socket.create_connection(("127.0.0.1", s.http_port), timeout=TIMEOUT)
    path = presigned_path("127.0.0.1", s.http_port, s.credentials)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{s.http_port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    send_ws_frame(sock, 0x2, raw_mqtt.connect(client_id=client_id, version=version, keepalive=0))
    opcode, frame = read_ws_frame(sock)
    assert opcode == 0x2 and frame[0] == 0x20, frame  # a binary frame with the CONNACK
    assert frame[3] == 0, frame  # accepted (return code / reason code 0)
    return sock


def test_a_bridge_ends_when_the_broker_closes_a_silent_client(shoal: Shoal):
    """A client that vanished without closing its TCP connection, whose MQTT connection the
    broker then closes (here: taken over by the same client id), does not keep its bridge."""
    ghost = raw_ws_mqtt(shoal, "ghost-1")
    try:
        assert metric(shoal, "shoal_ws_bridged_connections") == 1
        path = presigned_path("127.0.0.1", shoal.http_port, shoal.credentials)
        heir = WsClient(shoal.http_port, path, client_id="ghost-1")
        assert heir.connect() == 0
        try:
            # The ghost never reads, never closes: its bridge ends anyway, the heir's stays.
            wait_until(lambda: metric(shoal, "shoal_ws_bridged_connections") == 1, timeout=6,
                       what="the ghost's bridge to end")
            time.sleep(0.5)
            assert metric(shoal, "shoal_ws_bridged_connections") == 1
        finally:
            heir.close()
        wait_until(lambda: metric(shoal, "shoal_ws_bridged_connections") == 0, timeout=5,
                   what="every bridge to end")
    finally:
        ghost.close()


def test_both_subprotocols_and_mqtt5(shoal: Shoal):
    for protocol, version in [("mqttv3.1", paho.MQTTv311), ("mqtt", paho.MQTTv5)]:
        path = presigned_path("127.0.0.1", shoal.http_port, shoal.credentials)
        c = WsClient(shoal.http_port, path, protocol=protocol, version=version)
        assert c.connect() == 0, protocol
        c.close()


def raw_upgrade(s: Shoal, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=10)
    h = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "mqtt"}
    h.update(headers or {})
    c.request("GET", path, headers=h)
    r = c.getresponse()
    body = r.read() if r.status != 101 else b""
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def test_upgrades_are_refused_before_the_101(shoal: Shoal):
    # No signature at all.
    code, headers, body = raw_upgrade(shoal, "/mqtt")
    assert code == 403 and headers["x-amzn-errortype"] == "MissingAuthenticationTokenException", body
    # A wrong secret.
    path = presigned_path("127.0.0.1", shoal.http_port, (shoal.credentials[0], "x" * 40))
    code, headers, _ = raw_upgrade(shoal, path)
    assert code == 403 and headers["x-amzn-errortype"] == "InvalidSignatureException"
    # Expired.
    short = presigned_path("127.0.0.1", shoal.http_port, shoal.credentials, expires=1)
    time.sleep(2.1)
    code, headers, body = raw_upgrade(shoal, short)
    assert code == 403 and b"Signature expired" in body, body
    # A presigned URL whose query was changed after signing.
    other = presigned_path("127.0.0.1", shoal.http_port, shoal.credentials).replace("/mqtt?", "/mqtt?a=1&")
    code, headers, _ = raw_upgrade(shoal, other)
    assert code == 403 and headers["x-amzn-errortype"] == "InvalidSignatureException"
    # Not a WebSocket upgrade, or a foreign subprotocol.
    good = presigned_path("127.0.0.1", shoal.http_port, shoal.credentials)
    code, _, body = raw_upgrade(shoal, good, {"Upgrade": "h2c"})
    assert code == 400, body
    code, _, body = raw_upgrade(shoal, good, {"Sec-WebSocket-Protocol": "chat"})
    assert code == 400 and b"mqtt" in body
    # The right one is accepted with the subprotocol echoed.
    code, headers, _ = raw_upgrade(shoal, good)
    assert code == 101 and headers["sec-websocket-protocol"] == "mqtt"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_bridge_socket_is_private_and_wants_the_token(shoal: Shoal):
    """Reaching the MQTT server's bridge socket is not enough to speak for a client: the
    preamble must carry the process's random token (never written anywhere)."""
    import stat
    import struct
    sock_path = shoal.data_dir / "ws" / "mqtt.sock"
    assert stat.S_ISSOCK(sock_path.stat().st_mode)
    assert sock_path.parent.stat().st_mode & 0o777 == 0o700
    assert sock_path.stat().st_mode & 0o777 == 0o600
    assert not (shoal.data_dir / "mqtt-ws.sock").exists()
    # A forged preamble: a made-up token, an admin key's id, no certificates.
    key = shoal.credentials[0].encode()
    body = bytes(32) + b"\x00" + b"\x01" + struct.pack("!H", len(key)) + key + struct.pack("!H", 0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(str(sock_path))
    try:
        s.sendall(struct.pack("!I", len(body)) + body)
        try:
            answer = s.recv(1)
        except ConnectionResetError:
            answer = b""
        assert answer == b"", answer  # closed, never the `1` that starts a bridge
    finally:
        s.close()
    assert "bridge token" in shoal.tail(100)


DEVICE_POLICY = doc(
    allow("iot:Connect", "arn:aws:iot:us-east-1:000000000000:client/truck-1"),
    allow("iot:Publish", "arn:aws:iot:us-east-1:000000000000:topic/fleet/truck-1/*"),
    allow("iot:Subscribe", "arn:aws:iot:us-east-1:000000000000:topicfilter/cmd/truck-1"),
    allow("iot:Receive", "arn:aws:iot:us-east-1:000000000000:topic/cmd/truck-1"),
)


def test_a_device_key_gets_its_policies_and_loses_the_connection_when_deactivated(shoal: Shoal):
    api = Api(shoal)
    key = api.ok("POST", "/api/v1/keys", {"description": "truck-1 over websocket"})
    pname = api.policy("truck-1-ws", DEVICE_POLICY)
    assert api.call("POST", f"/api/v1/policies/{pname}/targets", {"target": key["accessKeyId"]}).status == 200
    creds = (key["accessKeyId"], key["secretAccessKey"])
    # Another client id than the policy allows: CONNACK refused.
    bad = WsClient(shoal.http_port, presigned_path("127.0.0.1", shoal.http_port, creds), client_id="truck-2")
    assert bad.connect() != 0
    bad.close()
    c = WsClient(shoal.http_port, presigned_path("127.0.0.1", shoal.http_port, creds), client_id="truck-1")
    assert c.connect() == 0
    try:
        watcher = shoal.client()
        watcher.subscribe("fleet/#", qos=1)
        c.c.publish("fleet/truck-1/telemetry", b"ok", qos=1).wait_for_publish(TIMEOUT)
        m = watcher.wait_message(TIMEOUT)
        assert (m.topic, m.payload) == ("fleet/truck-1/telemetry", b"ok")
        # Not allowed: AWS closes the connection on an unauthorized publish.
        disconnected: queue.Queue = queue.Queue()
        c.c.on_disconnect = lambda *a: disconnected.put(a)
        c.c.publish("fleet/truck-2/telemetry", b"no", qos=1)
        disconnected.get(timeout=TIMEOUT)
    finally:
        c.close()
    # Deactivating the key closes a live connection at once.
    c = WsClient(shoal.http_port, presigned_path("127.0.0.1", shoal.http_port, creds), client_id="truck-1")
    assert c.connect() == 0
    gone: queue.Queue = queue.Queue()
    c.c.on_disconnect = lambda *a: gone.put(a)
    c.c.reconnect_delay_set(60, 60)
    assert api.call("PUT", f"/api/v1/keys/{key['accessKeyId']}/status", {"status": "Inactive"}).status == 200
    gone.get(timeout=TIMEOUT)
    c.close()


def test_wss_with_a_client_certificate(make_shoal):
    s = make_shoal("--https-listen", "127.0.0.1:0")
    port = int(json.loads((s.data_dir / "ports.json").read_text())["https"].rsplit(":", 1)[1])
    api = Api(s)
    dev = issue_device(s, api, thing="truck-9")
    ctx = ssl.create_default_context(cafile=s.ca_path)
    ctx.check_hostname = False
    ctx.load_cert_chain(dev.crt, dev.key)
    c = WsClient(port, "/mqtt", client_id="truck-9", tls=ctx)
    assert c.connect() == 0
    try:
        c.c.subscribe("cmd/truck-9", qos=1)
        time.sleep(0.3)
        s.client().publish("cmd/truck-9", b"hello", qos=1)
        assert c.messages.get(timeout=TIMEOUT) == ("cmd/truck-9", b"hello")
    finally:
        c.close()
    # Without a certificate and without a signature: refused before the upgrade.
    ctx2 = ssl.create_default_context(cafile=s.ca_path)
    ctx2.check_hostname = False
    c2 = http.client.HTTPSConnection("127.0.0.1", port, context=ctx2, timeout=10)
    c2.request("GET", "/mqtt", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert c2.getresponse().status == 403


def test_the_aws_iot_device_sdk_v2_over_wss_with_sigv4(make_shoal):
    """awsiotsdk's `websockets_with_default_aws_signing` (signing name iotdevicegateway, host
    without port, no X-Amz-Expires) over the HTTPS listener."""
    pytest.importorskip("awsiot")
    from awscrt import auth, mqtt
    from awsiot import mqtt_connection_builder

    s = make_shoal("--https-listen", "127.0.0.1:0")
    port = int(json.loads((s.data_dir / "ports.json").read_text())["https"].rsplit(":", 1)[1])
    key, secret = s.credentials
    conn = mqtt_connection_builder.websockets_with_default_aws_signing(
        region="us-east-1", credentials_provider=auth.AwsCredentialsProvider.new_static(key, secret),
        endpoint="localhost", port=port, ca_filepath=s.ca_path, client_id="sdk-ws-1", clean_session=True,
        keep_alive_secs=30)
    assert conn.connect().result(TIMEOUT)["session_present"] is False
    try:
        got: queue.Queue = queue.Queue()
        sub, _ = conn.subscribe("sdk/test", mqtt.QoS.AT_LEAST_ONCE, callback=lambda topic, payload, **kw: got.put(payload))
        sub.result(TIMEOUT)
        pub, _ = conn.publish("sdk/test", b"hello", mqtt.QoS.AT_LEAST_ONCE)
        pub.result(TIMEOUT)
        assert got.get(timeout=TIMEOUT) == b"hello"
    finally:
        conn.disconnect().result(TIMEOUT)
    # The same SDK with a wrong secret never gets a connection.
    bad = mqtt_connection_builder.websockets_with_default_aws_signing(
        region="us-east-1", credentials_provider=auth.AwsCredentialsProvider.new_static(key, "x" * 40),
        endpoint="localhost", port=port, ca_filepath=s.ca_path, client_id="sdk-ws-2", clean_session=True)
    with pytest.raises(Exception) as refused:
        bad.connect().result(TIMEOUT)
    # Refused at the upgrade (403), not by TLS or a timeout.
    assert "403" in str(refused.value) or "UPGRADE" in str(refused.value).upper(), refused.value


def test_shoal_subscribe_over_websocket(shoal: Shoal):
    """`shoal subscribe` (the CLI's own MQTT-over-WebSocket client, presigned with its key)."""
    import subprocess
    env = shoal.cli_env()
    p = subprocess.Popen([shoal.binary, "subscribe", "fleet/+/telemetry", "cmd/#", "--count", "3", "--timeout", "20",
                          "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while metric(shoal, "shoal_ws_bridged_connections") < 1:
            assert time.monotonic() < deadline, "the CLI did not connect"
            time.sleep(0.05)
        time.sleep(0.3)  # its SUBSCRIBE
        tcp = shoal.client()
        tcp.publish("fleet/t1/telemetry", b'{"t":-19}', qos=1)
        tcp.publish("other/topic", b"not for it", qos=1)
        tcp.publish("cmd/t1", bytes([0xff, 0x00]), qos=0)
        tcp.publish("fleet/t2/telemetry", "ünïcode".encode(), qos=1)
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [
        {"topic": "fleet/t1/telemetry", "payload": '{"t":-19}', "qos": 1},
        {"topic": "cmd/t1", "payloadBase64": "/wA=", "qos": 0},
        {"topic": "fleet/t2/telemetry", "payload": "ünïcode", "qos": 1},
    ]
    # Without a key: a clear refusal and a non-zero exit.
    bare = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    bare["SHOAL_DATA_DIR"] = "/nonexistent"
    r = subprocess.run([shoal.binary, "subscribe", "x", "--timeout", "5"], env=bare, capture_output=True, text=True,
                       timeout=20)
    assert r.returncode != 0 and "403" in r.stderr and "Missing Authentication Token" in r.stderr, r.stderr


def test_a_shutdown_says_goodbye_over_websocket(shoal: Shoal):
    """SIGTERM: an MQTT 5 client bridged over WebSocket gets the DISCONNECT 0x8B (Server
    shutting down) a client on plain TCP gets, and the server exits cleanly with the HTTP threads
    that carry the bridges stopping last. (Until 2026-11-29 the HTTP threads stopped when
    shutdown began, before the goodbyes, and this arrived about half the time.)"""
    for attempt in range(3):
        if attempt:
            shoal.start()
        reasons: queue.Queue = queue.Queue()
        path = presigned_path("127.0.0.1", shoal.http_port, shoal.credentials)
        c = WsClient(shoal.http_port, path, protocol="mqtt", version=paho.MQTTv5)
        c.c.on_disconnect = lambda cl, u, flags, rc, p=None: reasons.put(getattr(rc, "value", rc))
        assert c.connect() == 0
        assert shoal.stop() == 0
        try:
            assert reasons.get(timeout=TIMEOUT) == 0x8B
        finally:
            c.c.loop_stop()


def test_a_shutdown_sends_the_disconnect_then_closes_the_websocket(shoal: Shoal):
    """On the wire, at SIGTERM, a hand-made MQTT 5 WebSocket client gets a binary frame with the
    DISCONNECT 0x8B, then a Close frame (1000, normal closure); it answers with its own Close
    and the connection ends."""
    sock = raw_ws_mqtt(shoal, "bye-1", version=5)
    stopped: queue.Queue = queue.Queue()
    stopper = threading.Thread(target=lambda: stopped.put(shoal.stop()))
    stopper.start()
    try:
        opcode, frame = read_ws_frame(sock)
        assert opcode == 0x2, (opcode, frame)
        length, at = raw_mqtt.read_varint(frame, 1)
        assert len(frame) == at + length, frame  # one whole packet in the frame
        disconnect = raw_mqtt.Packet(frame[0] >> 4, frame[0] & 0x0F, frame[at:])
        assert disconnect.name == "DISCONNECT", frame
        reason, props = raw_mqtt.disconnect_reason(disconnect)
        assert reason == 0x8B, frame
        opcode, frame = read_ws_frame(sock)
        assert opcode == 0x8, (opcode, frame)  # Close
        assert frame[:2] == struct.pack("!H", 1000), frame
        send_ws_frame(sock, 0x8, frame[:2])
        assert sock.recv(16) == b"", "the connection ends after the close handshake"
    finally:
        stopper.join(timeout=TIMEOUT)
        sock.close()
    assert stopped.get(timeout=1) == 0
