"""Helpers for the Device Shadow and data-plane tests.

- `ShadowInbox`: one `mqtt_helpers.Client` subscribed to a shadow's response topics; sends
  requests and hands out parsed responses by topic suffix and clientToken, keeping every other
  message for later (nothing is silently dropped, unlike `Client.roundtrip`).
- `meta()` / `ts_shape()`: the AWS metadata shape of a state (`{"timestamp": T}` per leaf, one
  entry per array element) and a normaliser that checks and blanks metadata timestamps.
- `http()`: a raw HTTP request to the broker's API port (status, lower-cased headers, body).
- `iot_data()`: a boto3 `iot-data` client for a broker (dummy credentials, no retries).
"""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from typing import Any

from mqtt_helpers import Client, Received, unique

MAX_DOC_BYTES = 8192
ANY = object()          # token matcher: any clientToken or none
T = "T"                 # placeholder for a checked timestamp in ts_shape() output
TIMESTAMP_SLACK = 5     # seconds of clock tolerance for payload timestamps


def shadow_prefix(thing: str, shadow: str | None = None) -> str:
    return f"$aws/things/{thing}/shadow" + (f"/name/{shadow}" if shadow is not None else "")


def compact_len(value: Any) -> int:
    """Bytes of the compact JSON of a value (how AWS/Shoal size a shadow section)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def meta(value: Any, ts: Any = T) -> Any:
    """The metadata AWS writes for a state value: {"timestamp": ts} per leaf (null included),
    objects member by member, arrays element by element."""
    if isinstance(value, dict):
        return {k: meta(v, ts) for k, v in value.items()}
    if isinstance(value, list):
        return [meta(v, ts) for v in value]
    return {"timestamp": ts}


def check_ts(ts: Any, what: str = "timestamp") -> None:
    """An epoch-seconds integer close to now."""
    assert isinstance(ts, int) and not isinstance(ts, bool), f"{what} is not an integer: {ts!r}"
    now = time.time()
    assert abs(ts - now) <= TIMESTAMP_SLACK, f"{what} {ts} is not epoch seconds near now ({now:.0f})"


def ts_shape(metadata: Any, path: str = "metadata") -> Any:
    """Checks every {"timestamp": n} in metadata and replaces n by T (for whole-shape compares)."""
    if isinstance(metadata, dict):
        if set(metadata) == {"timestamp"} and not isinstance(metadata["timestamp"], (dict, list)):
            check_ts(metadata["timestamp"], f"{path}.timestamp")
            return {"timestamp": T}
        return {k: ts_shape(v, f"{path}.{k}") for k, v in metadata.items()}
    if isinstance(metadata, list):
        return [ts_shape(v, f"{path}[{i}]") for i, v in enumerate(metadata)]
    raise AssertionError(f"{path}: metadata leaf is not {{'timestamp': n}}: {metadata!r}")


def assert_error(payload: dict, code: int, message: str, token: Any = None) -> None:
    """An AWS shadow error body: exactly code, message, timestamp and (when token) clientToken."""
    expected_keys = {"code", "message", "timestamp"} | ({"clientToken"} if token is not None else set())
    assert set(payload) == expected_keys, f"error body keys {sorted(payload)} != {sorted(expected_keys)}: {payload}"
    assert (payload["code"], payload["message"]) == (code, message), f"error body: {payload}"
    check_ts(payload["timestamp"])
    if token is not None:
        assert payload["clientToken"] == token, f"clientToken not echoed: {payload}"


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


class ShadowInbox:
    """A client subscribed to one shadow's response topics (`<prefix>/+/+`)."""

    def __init__(self, client: Client, thing: str, shadow: str | None = None, *, subscribe: bool = True,
                 qos: int = 1):
        self.c = client
        self.thing = thing
        self.shadow = shadow
        self.prefix = shadow_prefix(thing, shadow)
        self.stash: list[Received] = []
        if subscribe:
            codes = client.subscribe(f"{self.prefix}/+/+", qos=qos)
            assert codes[0] < 0x80, f"subscription to {self.prefix}/+/+ refused: {codes}"

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    def send(self, op: str, body: Any = b"", qos: int = 1, wait: bool = True) -> None:
        """Publishes a request to <prefix>/<op> (a dict is JSON-encoded, bytes/str sent as is)."""
        ack = self.c.publish(self.topic(op), _encode(body), qos=qos, wait=wait)
        if ack is not None:
            assert ack.reason_code < 0x80, f"PUBLISH to {self.topic(op)} refused: {ack.reason_code:#x}"

    # -- receiving --------------------------------------------------------------------------

    @staticmethod
    def _parse(m: Received) -> dict:
        try:
            v = json.loads(m.payload)
        except ValueError as e:
            raise AssertionError(f"response on {m.topic} is not JSON: {m.payload[:200]!r}") from e
        assert isinstance(v, dict), f"response on {m.topic} is not a JSON object: {v!r}"
        return v

    def _matches(self, m: Received, suffixes: tuple[str, ...], token: Any) -> bool:
        if m.topic not in {self.topic(s) for s in suffixes}:
            return False
        if token is ANY:
            return True
        try:
            v = json.loads(m.payload)
        except ValueError:
            return False
        got = v.get("clientToken") if isinstance(v, dict) else None
        return got == token

    def take_any(self, suffixes: tuple[str, ...], token: Any = ANY, timeout: float = 5.0) -> tuple[str, dict]:
        """The next response on one of the suffixes (with clientToken == token unless ANY)."""
        for i, m in enumerate(self.stash):
            if self._matches(m, suffixes, token):
                del self.stash[i]
                return m.topic[len(self.prefix) + 1:], self._parse(m)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                m = self.c.messages.get(timeout=max(0.0, left))
            except queue.Empty:
                seen = [(s.topic, s.payload[:120]) for s in self.stash[-10:]]
                raise AssertionError(
                    f"no message on {[self.topic(s) for s in suffixes]} with clientToken "
                    f"{'<any>' if token is ANY else token!r} within {timeout}s; other messages: {seen}") from None
            if self._matches(m, suffixes, token):
                return m.topic[len(self.prefix) + 1:], self._parse(m)
            self.stash.append(m)

    def take(self, suffix: str, token: Any = ANY, timeout: float = 5.0) -> dict:
        return self.take_any((suffix,), token, timeout)[1]

    def expect_none(self, suffix: str, t: float = 0.3) -> None:
        """No message on <prefix>/<suffix> (already received or arriving within t seconds)."""
        deadline = time.monotonic() + t
        while True:
            for m in self.stash:
                assert m.topic != self.topic(suffix), f"unexpected message on {m.topic}: {m.payload[:300]!r}"
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self.stash.append(self.c.messages.get(timeout=left))
            except queue.Empty:
                return

    def clear(self, settle: float = 0.2) -> None:
        """Forgets stashed messages and any arriving within `settle` seconds."""
        self.stash.clear()
        self.c.drain(settle)

    # -- requests ---------------------------------------------------------------------------

    def request(self, op: str, body: Any = b"", token: Any = ANY, timeout: float = 5.0) -> tuple[str, dict]:
        """Sends <op> and returns ("accepted"|"rejected", payload) of its answer."""
        self.send(op, body)
        suffix, payload = self.take_any((f"{op}/accepted", f"{op}/rejected"), token, timeout)
        return suffix.rsplit("/", 1)[1], payload

    def update(self, body: Any, token: Any = ANY) -> dict:
        """An update that must be accepted: returns the /update/accepted payload."""
        if token is ANY and isinstance(body, dict) and "clientToken" in body:
            token = body["clientToken"]
        outcome, payload = self.request("update", body, token)
        assert outcome == "accepted", f"update {body!r} rejected: {payload}"
        return payload

    def rejected(self, op: str, body: Any, token: Any = ANY) -> dict:
        """A request that must be rejected: returns the /rejected payload."""
        outcome, payload = self.request(op, body, token)
        assert outcome == "rejected", f"{op} {body!r} accepted, expected a rejection: {payload}"
        return payload

    def get(self, token: str | None = None) -> tuple[str, dict]:
        token = token or unique("get")
        return self.request("get", {"clientToken": token}, token)

    def get_doc(self) -> dict:
        outcome, payload = self.get()
        assert outcome == "accepted", f"get rejected: {payload}"
        return payload

    def alive(self, timeout: float = 5.0) -> None:
        """The connection still works: subscribe to a private topic, publish, receive."""
        t = f"alive/{unique('t')}"
        codes = self.c.subscribe(t, qos=1)
        assert codes[0] < 0x80, f"subscribe after a rejection refused: {codes}"
        payload = unique("ping").encode()
        self.c.publish(t, payload, qos=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = self.c.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"connection dead: own publish on {t} not received within {timeout}s "
                                     f"(disconnects: {self.c.disconnects})") from None
            if m.topic == t and m.payload == payload:
                return
            self.stash.append(m)


# -- HTTP ------------------------------------------------------------------------------------

def http(broker: Any, method: str, path: str, body: Any = None, headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """A request to the broker's HTTP port: (status, lower-cased headers, body)."""
    data = None if body is None else _encode(body)
    req = urllib.request.Request(f"http://{broker.host}:{broker.http_port}{path}", data=data, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def http_json(broker: Any, method: str, path: str, body: Any = None, **kw) -> tuple[int, dict, Any]:
    status, headers, raw = http(broker, method, path, body, **kw)
    try:
        return status, headers, json.loads(raw)
    except ValueError as e:
        raise AssertionError(f"{method} {path}: body is not JSON ({status}): {raw[:300]!r}") from e


def iot_data(broker: Any):
    """A boto3 iot-data client for the broker's HTTP port (dummy credentials, single attempt)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "iot-data",
        endpoint_url=f"http://{broker.host}:{broker.http_port}",
        region_name="us-east-1",
        aws_access_key_id=broker.credentials[0],
        aws_secret_access_key=broker.credentials[1],
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=15),
    )


def body_json(resp: dict) -> dict:
    """The JSON of a boto3 shadow response (`payload` is a StreamingBody)."""
    return json.loads(resp["payload"].read())
