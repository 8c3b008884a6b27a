"""The OpenAPI document of Shoal's own API (`GET /api/v1/openapi.json`) and a conformance run
against it with schemathesis: every operation is called with generated valid and invalid input
(signed with SigV4 like any client), and must never fail with a 5xx, must answer a status and
content type the document allows, and must refuse invalid input with a 4xx."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from conftest import Shoal

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)


def document(s: Shoal) -> dict:
    # Open like /health: no signature needed to read the API's description.
    req = urllib.request.Request(f"http://{s.host}:{s.http_port}/api/v1/openapi.json",
                                 headers={"X-test-unsigned": "1"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


class SigV4(requests.auth.AuthBase):
    """Signs each request as botocore would, with the query strictly encoded first (SigV4
    servers re-encode the query they receive; requests writes spaces as '+')."""

    def __init__(self, key: str, secret: str):
        self.creds = Credentials(key, secret)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urllib.parse.urlsplit(r.url)
        if parts.query:
            q = "&".join("=".join(urllib.parse.quote(urllib.parse.unquote_plus(x), safe="-_.~")
                                  for x in pair.split("=", 1))
                         for pair in parts.query.split("&") if pair)
            r.url = urllib.parse.urlunsplit(parts._replace(query=q))
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type",)}
        aws = AWSRequest(method=r.method, url=r.url, data=body, headers=headers)
        SigV4Auth(self.creds, "iot", "us-east-1").add_auth(aws)
        for k in ("Authorization", "X-Amz-Date"):
            r.headers[k] = aws.headers[k]
        return r


def test_the_document_describes_every_management_operation(shoal: Shoal):
    doc = document(shoal)
    assert doc["openapi"].startswith("3.")
    ops = {(m.upper(), p): o for p, item in doc["paths"].items() for m, o in item.items()}
    # Every path is Shoal's own; AWS's paths are AWS's to describe.
    assert all(p.startswith("/api/v1/") for _, p in ops), sorted(ops)
    ids = [o["operationId"] for o in ops.values()]
    assert len(ids) == len(set(ids)), ids
    for (method, path), o in ops.items():
        assert o["summary"], (method, path)
        params = {p["name"] for p in o["parameters"] if p["in"] == "path"}
        assert params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, (method, path)
        assert "default" in o["responses"], (method, path)
    for op in [("POST", "/api/v1/keys"), ("POST", "/api/v1/plugins/{name}/versions"),
               ("POST", "/api/v1/rules/{name}"), ("GET", "/api/v1/streams/{stream}/records"),
               ("PATCH", "/api/v1/things/{thing}"), ("POST", "/api/v1/policies/{name}/targets")]:
        assert op in ops, op
    upload = ops[("POST", "/api/v1/plugins/{name}/versions")]
    assert set(upload["requestBody"]["content"]) == {"application/json", "application/wasm"}
    assert upload["responses"]["201"]
    # Request schemas come from the request types: unknown fields are refused where the type
    # refuses them, and required fields are listed.
    key = doc["components"]["schemas"]["CreateKey"]
    assert key["additionalProperties"] is False and set(key["properties"]) == {"description", "admin"}
    assert doc["components"]["schemas"]["MessageJson"]["required"] == ["topic"]
    # Every described operation is routed (a described path that does not exist would be 404
    # with no error type; an undescribed route cannot exist since routes are built from it).
    for (method, path) in ops:
        url = path.replace("{", "x").replace("}", "")
        req = urllib.request.Request(f"http://{shoal.host}:{shoal.http_port}{url}", method=method,
                                     data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            assert e.code != 405, (method, path)
            assert e.headers.get("x-amzn-ErrorType"), (method, path, e.code)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value):
    # A replay recording: JSON lines (schemathesis generates bytes for a binary body).
    return value if isinstance(value, bytes) else json.dumps(value).encode()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error_or_nonconformance(make_shoal):
    s = make_shoal("--http-read-timeout", "5")
    doc = document(s)
    # The session signs every request (SigV4 covers the whole request, so schemathesis cannot
    # make the header itself): it must not also generate or drop an Authorization header.
    doc.pop("security")
    schema = schemathesis.openapi.from_dict(doc)
    base_url = f"http://{s.host}:{s.http_port}"
    session = requests.Session()
    session.auth = SigV4(*s.credentials)
    statuses: list[int] = []
    session.hooks["response"].append(lambda r, *args, **kwargs: statuses.append(r.status_code))
    failures: list[str] = []
    calls = {"n": 0}

    def fuzz(op, mode, checks) -> None:
        @settings(max_examples=20, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case):
            calls["n"] += 1
            case.call_and_validate(base_url=base_url, session=session, checks=checks, timeout=30)

        try:
            run()
        except Unsatisfiable:
            pass  # nothing to make invalid (only path parameters, any string is one)
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - reported together below
            failures.append(f"{op.label} [{mode.value}]: {str(e)[:1500]}")

    for result in schema.get_all_operations():
        op = result.ok()
        fuzz(op, GenerationMode.POSITIVE, CHECKS)
        fuzz(op, GenerationMode.NEGATIVE, CHECKS + [negative_data_rejection])
    print(f"schemathesis: {calls['n']} calls, {len(failures)} failing operations")
    assert not failures, "\n\n".join(failures)
    assert calls["n"] > 500
    # The calls were signed and authenticated (an admin key is refused nothing), and a good
    # share of them succeeded: the run exercised the operations, not only their refusals.
    from collections import Counter
    by_status = Counter(statuses)
    print(f"statuses: {sorted(by_status.items())}")
    assert by_status[403] == 0, by_status
    assert sum(n for code, n in by_status.items() if 200 <= code < 300) > 100, by_status
    # The server is still healthy after all of it.
    with urllib.request.urlopen(f"{base_url}/health", timeout=10) as r:
        assert r.status == 200


def test_every_operation_refuses_oversized_bodies_and_dot_segments(shoal: Shoal):
    """For every described operation: a body announced over its limit is refused with 413
    before it is read, and its path with a '..' segment is refused with 400 (never routed)."""
    import socket
    doc = document(shoal)
    key, secret = shoal.credentials

    def send(method: str, path: str, length: int) -> bytes:
        req = AWSRequest(method=method, url=f"http://{shoal.host}:{shoal.http_port}{path}", data=b"")
        SigV4Auth(Credentials(key, secret), "iot", "us-east-1").add_auth(req)
        head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "content-length")
        with socket.create_connection((shoal.host, shoal.http_port), timeout=10) as c:
            c.sendall(f"{method} {path} HTTP/1.1\r\nHost: {shoal.host}:{shoal.http_port}\r\n{head}"
                      f"Content-Length: {length}\r\n\r\n".encode())
            return c.recv(4096)

    checked = 0
    for path, item in doc["paths"].items():
        concrete = "/".join("x1" if seg.startswith("{") else seg for seg in path.split("/"))
        for method, op in item.items():
            method = method.upper()
            if "requestBody" in op:
                big = {"UploadPluginVersion": 64 << 20, "ReplayPlugin": 16 << 20}.get(op["operationId"], 1 << 20)
                reply = send(method, concrete, big + 1)
                assert reply.startswith(b"HTTP/1.1 413"), (method, path, reply[:200])
                assert b"RequestEntityTooLargeException" in reply, (method, path, reply[:300])
                checked += 1
            parts = concrete.split("/")
            traversal = "/".join(parts[:-1] + ["..", "keys"]) if len(parts) > 3 else concrete + "/../keys"
            reply = send(method, traversal, 0)
            assert reply.startswith(b"HTTP/1.1 400"), (method, traversal, reply[:200])
    assert checked >= 28
    # Still serving.
    with urllib.request.urlopen(f"http://{shoal.host}:{shoal.http_port}/health", timeout=10) as r:
        assert r.status == 200
