#!/usr/bin/env python3
"""Probes whether a broker enforces tests/bench/policy-bench.json on its plain MQTT listener.

    authz-probe.py HOST PORT

Raw MQTT 3.1.1 over TCP (no client library), after the load of a tests/bench/auth.sh run:

1. CONNECT with a client id the policy's Connect statement does not cover (`intruder-…`);
2. CONNECT as `lgprobe-…` (covered), SUBSCRIBE to `bench/admin/#` (explicitly denied) and to
   `bench/in/+` (allowed), PUBLISH QoS 1 to `bench/in/probe` (allowed, and received back
   through the subscription: iot:Receive allowed), then PUBLISH QoS 0 to `bench/admin/x`
   (explicitly denied: Shoal closes the connection).

Prints one JSON object: the raw outcomes, and `enforced` (every denial happened and every
allowed action worked) or `open` (everything was allowed: authorization off).
"""

import json
import os
import socket
import struct
import sys
import time


def remaining_length(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def mqtt_str(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def read_packet(sock, timeout):
    """Returns (type byte, body), or None on EOF/reset, or "timeout"."""
    sock.settimeout(timeout)
    try:
        head = sock.recv(1)
        if not head:
            return None
        mult, n = 1, 0
        while True:
            b = sock.recv(1)
            if not b:
                return None
            n += (b[0] & 0x7F) * mult
            mult *= 128
            if not b[0] & 0x80:
                break
        body = b""
        while len(body) < n:
            chunk = sock.recv(n - len(body))
            if not chunk:
                return None
            body += chunk
        return head[0], body
    except socket.timeout:
        return "timeout"
    except (ConnectionResetError, BrokenPipeError):
        return None


def connect(host, port, client_id):
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + mqtt_str(client_id)
    s.sendall(packet(0x10, body))
    p = read_packet(s, 5)
    if p is None or p == "timeout" or p[0] != 0x20:
        return s, f"no CONNACK ({p})"
    return s, p[1][1]


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    tag = f"{os.getpid()}-{int(time.time())}"
    out = {}

    s, rc = connect(host, port, f"intruder-{tag}")
    out["connect_uncovered_client_id_rc"] = rc
    s.close()

    s, rc = connect(host, port, f"lgprobe-{tag}")
    out["connect_covered_client_id_rc"] = rc
    if rc != 0:
        print(json.dumps(out))
        return
    for pid, flt, key in ((1, "bench/admin/#", "subscribe_denied_filter_code"),
                          (2, "bench/in/+", "subscribe_allowed_filter_code")):
        s.sendall(packet(0x82, struct.pack("!H", pid) + mqtt_str(flt) + bytes([1])))
        p = read_packet(s, 5)
        out[key] = p[1][2] if p not in (None, "timeout") and p[0] == 0x90 else f"no SUBACK ({p})"
    s.sendall(packet(0x32, mqtt_str("bench/in/probe") + struct.pack("!H", 3) + b"probe"))
    got_puback = got_message = False
    deadline = time.time() + 5
    while time.time() < deadline and not (got_puback and got_message):
        p = read_packet(s, max(deadline - time.time(), 0.01))
        if p in (None, "timeout"):
            break
        if p[0] == 0x40:
            got_puback = True
        elif p[0] & 0xF0 == 0x30:
            got_message = True
            if p[0] & 0x06:  # QoS 1 delivery: acknowledge it
                tlen = struct.unpack("!H", p[1][:2])[0]
                s.sendall(packet(0x40, p[1][2 + tlen:4 + tlen]))
    out["publish_allowed_topic_acked"] = got_puback
    out["publish_allowed_topic_received"] = got_message
    s.sendall(packet(0x30, mqtt_str("bench/admin/x") + b"probe"))
    s.sendall(packet(0xC0, b""))  # PINGREQ: answered only if the connection is still open
    p = read_packet(s, 3)
    out["publish_denied_topic_closed"] = p is None
    s.close()

    enforced = (
        out["connect_uncovered_client_id_rc"] == 5
        and out["subscribe_denied_filter_code"] == 0x80
        and out["subscribe_allowed_filter_code"] in (0, 1)
        and got_puback
        and got_message
        and out["publish_denied_topic_closed"]
    )
    opened = (
        out["connect_uncovered_client_id_rc"] == 0
        and out["subscribe_denied_filter_code"] in (0, 1)
        and got_puback
        and got_message
        and not out["publish_denied_topic_closed"]
    )
    out["verdict"] = "enforced" if enforced else "open" if opened else "inconsistent"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
