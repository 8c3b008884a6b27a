"""A synchronous test client around paho-mqtt 2.x (CallbackAPIVersion.VERSION2).

Every call that waits for the broker takes a timeout and raises AssertionError when it passes,
so a misbehaving broker fails a test instead of hanging it. The network loop runs in a thread
of our own (not paho's loop_start) so that paho never reconnects by itself and so that a test
can drop the TCP connection without sending DISCONNECT (`abort()`).
"""

from __future__ import annotations

import queue
import re
import ssl
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

V3 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
VERSIONS = [V3, V5]
VERSION_IDS = {V3: "v311", V5: "v5"}

DEFAULT_TIMEOUT = 5.0


def unique(prefix: str = "c") -> str:
    """A client id or topic segment unique to this run."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def props(packet_type: int, **values: Any) -> Properties:
    """paho Properties for a packet type, e.g. props(PacketTypes.PUBLISH, MessageExpiryInterval=5)."""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def prop(properties: Properties | None, name: str, default: Any = None) -> Any:
    """A property value from paho Properties (or default when absent)."""
    if properties is None:
        return default
    return getattr(properties, name, default)


@dataclass
class Received:
    topic: str            # with any server->client topic alias resolved
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: Properties | None
    raw_topic: str        # the topic name as it was on the wire ("" when only an alias was sent)
    alias: int | None     # the Topic Alias property, if any
    at: float             # time.monotonic() when received

    def prop(self, name: str, default: Any = None) -> Any:
        return prop(self.properties, name, default)

    def __repr__(self) -> str:
        p = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return f"<msg {self.topic!r} {p!r} qos={self.qos} retain={self.retain}>"


@dataclass
class ConnAck:
    reason_code: int
    session_present: bool
    properties: Properties | None

    def prop(self, name: str, default: Any = None) -> Any:
        return prop(self.properties, name, default)


@dataclass
class Ack:
    """The outcome of a QoS 1/2 PUBLISH (PUBACK or PUBREC/PUBCOMP) or a (UN)SUBSCRIBE."""

    reason_codes: list[int]
    properties: Properties | None = None

    @property
    def reason_code(self) -> int:
        return self.reason_codes[0]

    def prop(self, name: str, default: Any = None) -> Any:
        return prop(self.properties, name, default)


@dataclass
class Disconnected:
    reason_code: int | None      # from the server's DISCONNECT (v5), else None
    properties: Properties | None
    from_broker: bool
    at: float = field(default_factory=time.monotonic)


def _rc_value(rc: Any) -> int:
    if rc is None:
        return 0
    if hasattr(rc, "value"):
        return int(rc.value)
    return int(rc)


class Client:
    """A connected MQTT client (v3.1.1 or v5) with a received-message queue."""

    def __init__(
        self,
        broker: Any = None,
        *,
        host: str | None = None,
        port: int | None = None,
        client_id: str | None = None,
        version: int = V5,
        clean: bool = True,
        session_expiry: int | None = None,
        keepalive: int = 60,
        will: dict | None = None,
        tls: bool = False,
        ca_path: str | None = None,
        client_cert: tuple[str, str] | None = None,
        connect_props: dict | None = None,
        connect: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        expect_success: bool = True,
        max_inflight: int | None = None,
    ):
        self.broker = broker
        self.tls = tls
        self.host = host or (broker.host if broker is not None else "127.0.0.1")
        self._explicit_port = port is not None
        if port is None:
            port = broker.mqtts_port if tls else broker.mqtt_port
        self.port = port
        self.ca_path = ca_path or (broker.ca_path if broker is not None and tls else None)
        # mTLS: Shoal's TLS listener requires a registered client certificate by default.
        if tls and client_cert is None and broker is not None and hasattr(broker, "device_cert"):
            client_cert = broker.device_cert("pytest-device")
        self.client_cert = client_cert
        self.version = version
        self.client_id = unique("cid") if client_id is None else client_id
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.will = will
        self.connect_props = connect_props or {}
        self.max_inflight = max_inflight
        self.messages: queue.Queue[Received] = queue.Queue()
        self.all_messages: list[Received] = []
        self.alias_errors: list[str] = []
        self.disconnects: list[Disconnected] = []
        self.connack: ConnAck | None = None
        self._acks: dict[int, Ack] = {}
        self._cond = threading.Condition()
        self._aliases: dict[int, str] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._c: mqtt.Client | None = None
        self.loop_error: Exception | None = None
        if connect:
            self.connect(timeout=timeout, expect_success=expect_success)

    # -- lifecycle ----------------------------------------------------------------------------

    def _new_paho(self) -> mqtt.Client:
        kwargs: dict[str, Any] = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.version,
            reconnect_on_failure=False,
        )
        if self.version != V5:
            kwargs["clean_session"] = self.clean
        c = mqtt.Client(**kwargs)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_disconnect = self._on_disconnect
        if self.max_inflight is not None:
            c.max_inflight_messages_set(self.max_inflight)
        if self.tls:
            if self.client_cert:
                c.tls_set(ca_certs=self.ca_path, certfile=self.client_cert[0], keyfile=self.client_cert[1],
                          cert_reqs=ssl.CERT_REQUIRED)
            else:
                c.tls_set(ca_certs=self.ca_path, cert_reqs=ssl.CERT_REQUIRED)
        if self.will:
            w = dict(self.will)
            wprops = w.pop("properties", None)
            if wprops and self.version == V5:
                w["properties"] = props(PacketTypes.WILLMESSAGE, **wprops)
            c.will_set(**w)
        return c

    def connect(self, timeout: float = DEFAULT_TIMEOUT, expect_success: bool = True,
                clean: bool | None = None, port: int | None = None) -> ConnAck:
        """(Re)connects with a fresh paho client and waits for the CONNACK."""
        self._shutdown_loop()
        if clean is not None:
            self.clean = clean
        if port is not None:
            self.port = port
        elif self.broker is not None and not self._explicit_port:
            # The broker may have restarted on new ports.
            self.host = self.broker.host
            self.port = self.broker.mqtts_port if self.tls else self.broker.mqtt_port
        self.connack = None
        self.disconnects = []
        self._aliases = {}  # [MQTT-3.3.2-7] aliases never carry over to a new connection
        self._c = self._new_paho()
        kwargs: dict[str, Any] = dict(keepalive=self.keepalive)
        if self.version == V5:
            cp = dict(self.connect_props)
            if self.session_expiry is not None:
                cp.setdefault("SessionExpiryInterval", self.session_expiry)
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = props(PacketTypes.CONNECT, **cp) if cp else None
        self._c.connect(self.host, self.port, **kwargs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._c, self._stop), daemon=True,
                                        name=f"mqtt-{self.client_id}")
        # Tell paho a network thread exists: otherwise publish() from the test thread writes to
        # the socket itself, racing our loop thread over the same outgoing queue (which reorders
        # or interleaves packets).
        self._c._thread = self._thread
        self._thread.start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.connack is None and not self.disconnects:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        if self.connack is None:
            self._shutdown_loop()
            raise AssertionError(
                f"no CONNACK for {self.client_id!r} within {timeout}s (disconnects: {self.disconnects})")
        if expect_success:
            assert self.connack.reason_code == 0, f"CONNECT refused: reason code {self.connack.reason_code:#x}"
        return self.connack

    def _run(self, c: mqtt.Client, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                rc = c.loop(timeout=0.05)
            except Exception as e:  # noqa: BLE001 - record and end the loop
                with self._cond:
                    self.disconnects.append(Disconnected(None, None, False))
                    self._cond.notify_all()
                self.loop_error = e
                return
            if rc != mqtt.MQTT_ERR_SUCCESS:
                with self._cond:
                    if not self.disconnects:
                        self.disconnects.append(Disconnected(None, None, False))
                    self._cond.notify_all()
                return

    def _shutdown_loop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
            self._thread = None

    def disconnect(self, reason_code: int | None = None, properties: dict | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> None:
        """A normal DISCONNECT (v5: with an optional reason code and properties)."""
        if self._c is None:
            return
        kwargs: dict[str, Any] = {}
        if self.version == V5:
            if reason_code is not None:
                from paho.mqtt.reasoncodes import ReasonCode
                kwargs["reasoncode"] = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
            if properties:
                kwargs["properties"] = props(PacketTypes.DISCONNECT, **properties)
        if self.is_connected():
            self._c.disconnect(**kwargs)
            deadline = time.monotonic() + timeout
            while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
                self._thread.join(0.05)
        self._shutdown_loop()
        self._close_socket()

    def abort(self) -> None:
        """Drops the TCP connection without DISCONNECT (an abnormal disconnect for the broker)."""
        self._shutdown_loop()
        self._close_socket()

    def _close_socket(self) -> None:
        c = self._c
        if c is None:
            return
        sock = getattr(c, "_sock", None)
        if sock is not None:
            try:
                import socket as _s
                sock.shutdown(_s.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
            c._sock = None

    def close(self) -> None:
        """Teardown helper: disconnect if connected, never raises."""
        try:
            if self.is_connected():
                self.disconnect(timeout=1)
            else:
                self.abort()
        except Exception:  # noqa: BLE001
            self.abort()

    def is_connected(self) -> bool:
        return (self._c is not None and self._c.is_connected() and self._thread is not None
                and self._thread.is_alive())

    # -- callbacks (network thread) -------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.connack = ConnAck(_rc_value(reason_code), bool(getattr(flags, "session_present", False)),
                                   properties if self.version == V5 else None)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        properties = msg.properties if self.version == V5 else None
        try:
            raw_topic = msg.topic
        except UnicodeDecodeError:
            raw_topic = repr(msg._topic)
        alias = prop(properties, "TopicAlias")
        topic = raw_topic
        if alias is not None:
            if raw_topic:
                self._aliases[alias] = raw_topic
            elif alias in self._aliases:
                topic = self._aliases[alias]
            else:
                self.alias_errors.append(f"PUBLISH with unknown topic alias {alias} and no topic name")
        elif not raw_topic:
            self.alias_errors.append("PUBLISH with an empty topic name and no topic alias")
        r = Received(topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup), properties,
                     raw_topic, alias, time.monotonic())
        self.all_messages.append(r)
        self.messages.put(r)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._acks[mid] = Ack([_rc_value(reason_code)], properties if self.version == V5 else None)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        with self._cond:
            self._acks[mid] = Ack([_rc_value(r) for r in reason_code_list],
                                  properties if self.version == V5 else None)
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        codes = reason_code_list if isinstance(reason_code_list, list) else [reason_code_list]
        with self._cond:
            self._acks[mid] = Ack([_rc_value(r) for r in codes], properties if self.version == V5 else None)
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
            rc = _rc_value(reason_code) if (from_broker and self.version == V5) else None
            self.disconnects.append(Disconnected(rc, properties if from_broker else None, from_broker))
            self._cond.notify_all()

    # -- operations ---------------------------------------------------------------------------

    def _wait_ack(self, mid: int, timeout: float, what: str) -> Ack:
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no acknowledgement for {what} (mid {mid}) within {timeout}s")
                self._cond.wait(left)
            return self._acks.pop(mid)

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                properties: dict | None = None, wait: bool = True,
                timeout: float = DEFAULT_TIMEOUT) -> Ack | None:
        """Publishes; for QoS 1/2 waits for PUBACK/PUBCOMP and returns its reason code."""
        assert self._c is not None
        p = props(PacketTypes.PUBLISH, **properties) if properties else None
        info = self._c.publish(topic, payload, qos=qos, retain=retain, properties=p)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic!r} failed locally: rc={info.rc}"
        if not wait:
            return None
        if qos == 0:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"QoS 0 publish to {topic!r} not written within {timeout}s"
            return None
        return self._wait_ack(info.mid, timeout, f"PUBLISH to {topic!r}")

    def subscribe(self, topic: str | list, qos: int = 0, *, no_local: bool = False,
                  retain_as_published: bool = False, retain_handling: int = 0,
                  subscription_id: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        """Subscribes to one filter (or a list of filters, same options); returns SUBACK codes."""
        assert self._c is not None
        topics = topic if isinstance(topic, list) else [topic]
        if self.version == V5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=retain_as_published,
                                    retainHandling=retain_handling)
            sp = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=subscription_id) \
                if subscription_id is not None else None
            rc, mid = self._c.subscribe([(t, opts) for t in topics], properties=sp)
        else:
            rc, mid = self._c.subscribe([(t, qos) for t in topics])
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topics} failed locally: rc={rc}"
        return self._wait_ack(mid, timeout, f"SUBSCRIBE {topics}").reason_codes

    def unsubscribe(self, topic: str | list, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        assert self._c is not None
        rc, mid = self._c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe {topic} failed locally: rc={rc}"
        return self._wait_ack(mid, timeout, f"UNSUBSCRIBE {topic}").reason_codes

    # -- receiving ----------------------------------------------------------------------------

    def wait_message(self, timeout: float = DEFAULT_TIMEOUT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def wait_messages(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Received]:
        """Exactly the next n messages (fails if fewer arrive within the timeout)."""
        out: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(0.0, left)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: got {len(out)} of {n} messages within {timeout}s: {out[:10]}") from None
        return out

    def expect_no_message(self, t: float = 0.5) -> None:
        try:
            m = self.messages.get(timeout=t)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {m!r}")

    def drain(self, t: float = 0.2) -> list[Received]:
        """Every message arriving within t seconds."""
        out = []
        deadline = time.monotonic() + t
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                return out

    def wait_disconnected(self, timeout: float = DEFAULT_TIMEOUT) -> Disconnected:
        """Waits until the connection is gone; returns how (v5: the server's reason code)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.disconnects:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.client_id}: still connected after {timeout}s")
                self._cond.wait(left)
            # paho may report the closed socket after the DISCONNECT packet: prefer the packet.
            for d in self.disconnects:
                if d.from_broker:
                    return d
            return self.disconnects[0]

    def roundtrip(self, topic: str | None = None, qos: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Proves the connection works: subscribe to a private topic, publish, receive it."""
        topic = topic or f"roundtrip/{unique('rt')}"
        codes = self.subscribe(topic, qos=qos)
        assert codes[0] < 0x80, f"roundtrip subscribe refused: {codes}"
        payload = unique("ping").encode()
        self.publish(topic, payload, qos=qos)
        deadline = time.monotonic() + timeout
        while True:
            m = self.wait_message(max(0.01, deadline - time.monotonic()))
            if m.topic == topic and m.payload == payload:
                return


# -- HTTP helpers -------------------------------------------------------------------------------

def http_get(broker: Any, path: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{broker.host}:{broker.http_port}{path}", timeout=timeout) as r:
        return r.read().decode()


def metric(broker: Any, name: str, labels: str | None = None) -> float:
    """One sample of a Prometheus metric from /metrics, e.g. metric(b, "x_total", 'reason="a"')."""
    text = http_get(broker, "/metrics")
    pat = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?") + r"\s+(\S+)"
    m = re.search(r"^" + pat + r"\s*$", text, re.M)
    assert m, f"metric {name}{{{labels or ''}}} not found in /metrics:\n{text[:2000]}"
    return float(m.group(1))


def wait_until(pred, timeout: float = 5.0, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
