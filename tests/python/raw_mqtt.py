"""Hand-built MQTT packets over a plain socket.

paho refuses to send many of the things the bad-input and keep-alive tests need (a topic with a
wildcard, a second CONNECT, ill-formed UTF-8, a malformed length, a client that goes silent), so
those tests speak the wire format directly with this module. Every read is bounded by a timeout.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# Packet types (high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

PACKET_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
    8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
    14: "DISCONNECT", 15: "AUTH",
}

# v5 property identifiers used here.
P_PAYLOAD_FORMAT = 0x01
P_MESSAGE_EXPIRY = 0x02
P_CONTENT_TYPE = 0x03
P_RESPONSE_TOPIC = 0x08
P_CORRELATION_DATA = 0x09
P_SUBSCRIPTION_ID = 0x0B
P_SESSION_EXPIRY = 0x11
P_ASSIGNED_CLIENT_ID = 0x12
P_SERVER_KEEP_ALIVE = 0x13
P_REASON_STRING = 0x1F
P_RECEIVE_MAXIMUM = 0x21
P_TOPIC_ALIAS_MAXIMUM = 0x22
P_TOPIC_ALIAS = 0x23
P_USER_PROPERTY = 0x26
P_MAXIMUM_PACKET_SIZE = 0x27


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def props(*items: bytes) -> bytes:
    """A v5 property block from already-encoded properties."""
    body = b"".join(items)
    return varint(len(body)) + body


def prop_u32(pid: int, v: int) -> bytes:
    return bytes([pid]) + struct.pack("!I", v)


def prop_u16(pid: int, v: int) -> bytes:
    return bytes([pid]) + struct.pack("!H", v)


def prop_str(pid: int, s: str | bytes) -> bytes:
    return bytes([pid]) + utf8(s)


def connect(
    client_id: str | bytes = "",
    version: int = 4,
    clean: bool = True,
    keepalive: int = 60,
    properties: bytes | None = None,
) -> bytes:
    """A CONNECT packet; version 4 is MQTT 3.1.1, 5 is MQTT 5."""
    flags = 0x02 if clean else 0x00
    vh = utf8("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        vh += properties if properties is not None else props()
    return packet(0x10, vh + utf8(client_id))


def publish(
    topic: str | bytes,
    payload: bytes = b"",
    qos: int = 0,
    pid: int = 1,
    retain: bool = False,
    version: int = 4,
    properties: bytes | None = None,
    dup: bool = False,
) -> bytes:
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", pid)
    if version == 5:
        body += properties if properties is not None else props()
    return packet(first, body + payload)


def subscribe(filters: list[tuple[str | bytes, int]], pid: int = 1, version: int = 4,
              properties: bytes | None = None) -> bytes:
    body = struct.pack("!H", pid)
    if version == 5:
        body += properties if properties is not None else props()
    for f, opts in filters:
        body += utf8(f) + bytes([opts])
    return packet(0x82, body)


def puback(pid: int) -> bytes:
    return packet(0x40, struct.pack("!H", pid))


def pingreq() -> bytes:
    return b"\xc0\x00"


def disconnect(version: int = 4, reason: int = 0) -> bytes:
    if version == 5 and reason:
        return packet(0xE0, bytes([reason]))
    return b"\xe0\x00"


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.type, f"type{self.type}")

    def __repr__(self) -> str:  # short, for assertion messages
        return f"<{self.name} flags={self.flags:#x} body={self.body[:40].hex()}{'...' if len(self.body) > 40 else ''}>"


@dataclass
class V5Props:
    """Decoded v5 properties (the subset the tests look at; others kept raw by id)."""

    values: dict[int, list] = field(default_factory=dict)

    def get(self, pid: int, default=None):
        v = self.values.get(pid)
        return v[0] if v else default

    def all(self, pid: int) -> list:
        return self.values.get(pid, [])


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    mult, val = 1, 0
    for _ in range(4):
        b = buf[i]
        i += 1
        val += (b & 0x7F) * mult
        if not b & 0x80:
            return val, i
        mult *= 128
    raise ValueError("malformed variable byte integer")


def parse_props(buf: bytes, i: int) -> tuple[V5Props, int]:
    n, i = read_varint(buf, i)
    end = i + n
    out = V5Props()
    while i < end:
        pid = buf[i]
        i += 1
        if pid in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):
            v = buf[i]
            i += 1
        elif pid in (0x13, 0x21, 0x22, 0x23):
            (v,) = struct.unpack_from("!H", buf, i)
            i += 2
        elif pid in (0x02, 0x11, 0x18, 0x27):
            (v,) = struct.unpack_from("!I", buf, i)
            i += 4
        elif pid == 0x0B:
            v, i = read_varint(buf, i)
        elif pid in (0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F):
            (ln,) = struct.unpack_from("!H", buf, i)
            v = buf[i + 2:i + 2 + ln].decode("utf-8", "replace")
            i += 2 + ln
        elif pid in (0x09, 0x16):
            (ln,) = struct.unpack_from("!H", buf, i)
            v = bytes(buf[i + 2:i + 2 + ln])
            i += 2 + ln
        elif pid == 0x26:
            (ln,) = struct.unpack_from("!H", buf, i)
            k = buf[i + 2:i + 2 + ln].decode("utf-8", "replace")
            i += 2 + ln
            (ln,) = struct.unpack_from("!H", buf, i)
            val = buf[i + 2:i + 2 + ln].decode("utf-8", "replace")
            i += 2 + ln
            v = (k, val)
        else:
            raise ValueError(f"unknown property id {pid:#x}")
        out.values.setdefault(pid, []).append(v)
    return out, end


class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    """A blocking MQTT client over a plain TCP socket, one packet at a time."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, rcvbuf: int | None = None):
        self.version = 4
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect so the advertised window is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.closed = False

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Sends bytes; False if the server had already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.closed = True
            return False

    def connect(self, client_id: str = "", version: int = 4, clean: bool = True, keepalive: int = 60,
                properties: bytes | None = None, timeout: float = 5.0) -> Packet:
        """Sends CONNECT and returns the CONNACK packet."""
        self.version = version
        self.send(connect(client_id, version, clean, keepalive, properties))
        p = self.recv(timeout)
        assert p is not None, "no CONNACK within %.1fs" % timeout
        assert p.type == CONNACK, f"expected CONNACK, got {p!r}"
        return p

    # -- receiving ----------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except (ConnectionResetError, ConnectionAbortedError):
            self.closed = True
            raise Closed from None
        if not data:
            self.closed = True
            raise Closed
        self.buf += data

    def recv(self, timeout: float = 5.0) -> Packet | None:
        """The next packet; None on timeout; raises Closed when the server closed the socket."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if len(self.buf) >= 2:
                    try:
                        length, hdr = read_varint(self.buf, 1)
                    except IndexError:
                        length = None
                    if length is not None and len(self.buf) >= hdr + length:
                        first = self.buf[0]
                        body = self.buf[hdr:hdr + length]
                        self.buf = self.buf[hdr + length:]
                        return Packet(first >> 4, first & 0x0F, body)
                self._fill(deadline)
        except TimeoutError:
            return None

    def recv_type(self, ptype: int, timeout: float = 5.0) -> Packet | None:
        """The next packet of a type, skipping others (PUBLISH, PINGRESP...)."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.recv(max(0.0, deadline - time.monotonic()))
            if p is None or p.type == ptype:
                return p

    def wait_closed(self, timeout: float) -> tuple[bool, list[Packet]]:
        """Reads until the server closes the connection or the timeout passes.

        Returns (closed, packets read meanwhile)."""
        deadline = time.monotonic() + timeout
        seen: list[Packet] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, seen
            try:
                p = self.recv(remaining)
            except Closed:
                return True, seen
            if p is None:
                return False, seen
            seen.append(p)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connack_codes(p: Packet, version: int) -> tuple[bool, int, V5Props | None]:
    """(session present, return/reason code, v5 properties)."""
    sp = bool(p.body[0] & 0x01)
    rc = p.body[1]
    pr = None
    if version == 5 and len(p.body) > 2:
        pr, _ = parse_props(p.body, 2)
    return sp, rc, pr


def disconnect_reason(p: Packet) -> tuple[int, V5Props | None]:
    """A v5 DISCONNECT's reason code and properties."""
    if not p.body:
        return 0, None
    rc = p.body[0]
    pr = None
    if len(p.body) > 1:
        pr, _ = parse_props(p.body, 1)
    return rc, pr


def ack_reason(p: Packet) -> tuple[int, int, V5Props | None]:
    """A v5 PUBACK/PUBREC/PUBCOMP: (packet id, reason code, properties)."""
    (pid,) = struct.unpack_from("!H", p.body, 0)
    if len(p.body) == 2:
        return pid, 0, None
    rc = p.body[2]
    pr = None
    if len(p.body) > 3:
        pr, _ = parse_props(p.body, 3)
    return pid, rc, pr


def suback_codes(p: Packet, version: int) -> list[int]:
    i = 2
    if version == 5:
        _, i = parse_props(p.body, i)
    return list(p.body[i:])
