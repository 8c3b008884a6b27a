"""The HTTPS listener (issue #7): the same API over TLS (Shoal's server certificate, checked
against its CA), SigV4 as on plain HTTP, and mutual TLS as the other way to call the data
plane: a registered, ACTIVE device certificate is the identity of a request that carries no
signature, and its attached policies decide.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest

from conftest import Shoal
from identity_helpers import Api, allow, doc, issue_device

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402


def https_port(s: Shoal) -> int:
    ports = json.loads((s.data_dir / "ports.json").read_text())
    return int(ports["https"].rsplit(":", 1)[1])


@pytest.fixture
def tls_shoal(make_shoal) -> Shoal:
    return make_shoal("--https-listen", "127.0.0.1:0")


def context(s: Shoal, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=s.ca_path)
    ctx.check_hostname = False  # the server certificate names localhost / 127.0.0.1
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def request(s: Shoal, method: str, path: str, body: bytes = b"", ctx: ssl.SSLContext | None = None,
            headers: dict | None = None) -> tuple[int, dict, dict]:
    c = http.client.HTTPSConnection("127.0.0.1", https_port(s), context=ctx or context(s), timeout=10)
    try:
        c.request(method, path, body=body or None, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data) if data else {}
    finally:
        c.close()


def test_boto3_over_https_with_sigv4(tls_shoal: Shoal):
    key, secret = tls_shoal.credentials
    for service in ("iot", "iot-data"):
        c = boto3.client(service, endpoint_url=f"https://127.0.0.1:{https_port(tls_shoal)}", region_name="us-east-1",
                         aws_access_key_id=key, aws_secret_access_key=secret, verify=tls_shoal.ca_path,
                         config=Config(retries={"total_max_attempts": 1}))
        if service == "iot":
            c.create_thing(thingName="t1")
            assert c.describe_thing(thingName="t1")["thingName"] == "t1"
        else:
            c.update_thing_shadow(thingName="t1", payload=b'{"state":{"reported":{"a":1}}}')
            assert json.loads(c.get_thing_shadow(thingName="t1")["payload"].read())["state"]["reported"] == {"a": 1}
    # Unsigned and without a certificate: refused as on plain HTTP.
    code, headers, _ = request(tls_shoal, "GET", "/things/t1/shadow")
    assert code == 403 and headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    # /health answers over TLS too.
    assert request(tls_shoal, "GET", "/health")[0] == 200


def test_a_device_certificate_calls_the_data_plane_as_its_policies_allow(tls_shoal: Shoal):
    api = Api(tls_shoal)
    policy = doc(
        allow("iot:Publish", "arn:aws:iot:us-east-1:000000000000:topic/fleet/truck-1/*"),
        allow(["iot:GetThingShadow", "iot:UpdateThingShadow"], "arn:aws:iot:us-east-1:000000000000:thing/truck-1"),
    )
    dev = issue_device(tls_shoal, api, thing="truck-1", policy_doc=policy)
    ctx = context(tls_shoal, dev.crt, dev.key)
    code, _, body = request(tls_shoal, "POST", "/things/truck-1/shadow", b'{"state":{"reported":{"door":"open"}}}',
                            ctx=ctx)
    assert code == 200, body
    code, _, body = request(tls_shoal, "GET", "/things/truck-1/shadow", ctx=ctx)
    assert code == 200 and body["state"]["reported"]["door"] == "open", body
    code, _, body = request(tls_shoal, "POST", "/topics/fleet%2Ftruck-1%2Ftelemetry?qos=1", b'{"t":-20}', ctx=ctx)
    assert code == 200, body
    for method, path in [("POST", "/topics/fleet%2Ftruck-2%2Ftelemetry"), ("GET", "/things/truck-2/shadow"),
                         ("DELETE", "/things/truck-1/shadow")]:
        code, headers, body = request(tls_shoal, method, path, b"{}" if method == "POST" else b"", ctx=ctx)
        assert code == 403 and headers["x-amzn-errortype"] == "ForbiddenException", (path, body)
        assert "certificate" in body["message"]
    # The management API is not for certificates.
    code, headers, body = request(tls_shoal, "GET", "/api/v1/certificates", ctx=ctx)
    assert code == 403 and "admin access key" in body["message"], body
    # Deactivated: refused at once (the handshake still passes: the CA is trusted).
    api.set_status(dev.cert_id, "INACTIVE")
    code, headers, body = request(tls_shoal, "GET", "/things/truck-1/shadow", ctx=ctx)
    assert code == 403 and "INACTIVE" in body["message"], body


def test_an_untrusted_certificate_fails_the_handshake_and_harms_no_one(tls_shoal: Shoal, tmp_path):
    from identity_helpers import openssl_ca, openssl_device
    rogue_ca = openssl_ca(tmp_path, "rogue")
    rogue = openssl_device(tmp_path, rogue_ca, "rogue-device")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        request(tls_shoal, "GET", "/things/t/shadow", ctx=context(tls_shoal, *rogue.pair))
    # Plain HTTP and a stalled handshake on the TLS port do not disturb a real client.
    s1 = socket.create_connection(("127.0.0.1", https_port(tls_shoal)))
    s1.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s2 = socket.create_connection(("127.0.0.1", https_port(tls_shoal)))
    s2.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    try:
        assert request(tls_shoal, "GET", "/health")[0] == 200
        tls_shoal.boto3("iot").list_things()
    finally:
        s1.close()
        s2.close()


def test_the_cli_over_https_trusts_its_ca_file(tls_shoal: Shoal):
    import subprocess
    env = tls_shoal.cli_env()
    env["SHOAL_ENDPOINT"] = f"https://localhost:{https_port(tls_shoal)}"
    ok = subprocess.run([tls_shoal.binary, "key", "list", "--json", "--ca-file", tls_shoal.ca_path], env=env,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert tls_shoal.credentials[0] in ok.stdout
    # Without it the server's certificate is not trusted: a clear error, non-zero exit.
    bad = subprocess.run([tls_shoal.binary, "key", "list"], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "cannot reach Shoal" in bad.stderr, bad.stderr
