"""SigV4 on the HTTP listener (issue #7): every request but /health and /metrics must be signed
with an active access key; admin keys may call everything, other keys the data plane only, as
their policies allow.

Signatures come from real clients: botocore (boto3, and its signer with the clock moved), the
AWS CLI, and Shoal's own CLI. Unsigned and tampered requests go out through `http.client`, so the
harness's signing `urlopen` never touches them.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from unittest import mock

import pytest

from conftest import Shoal, find_binary
from mqtt_helpers import metric

boto3 = pytest.importorskip("boto3")
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402


def raw(s: Shoal, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, dict]:
    """A request exactly as given: (status, lower-cased headers, JSON body)."""
    c = http.client.HTTPConnection(s.host, s.http_port, timeout=10)
    try:
        c.request(method, path, body=body or None, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data) if data else {}
    finally:
        c.close()


def signed_headers(s: Shoal, method: str, path: str, body: bytes = b"", key: tuple[str, str] | None = None,
                   when: datetime.datetime | None = None, extra: dict | None = None,
                   service: str = "iotdata") -> dict:
    """botocore's SigV4 headers for a request to `s` (optionally as if signed at `when`)."""
    key = key or s.credentials
    req = AWSRequest(method=method, url=f"http://{s.host}:{s.http_port}{path}", data=body, headers=extra or {})
    signer = SigV4Auth(Credentials(*key), service, "us-east-1")
    if when is None:
        signer.add_auth(req)
    else:
        class Fixed(datetime.datetime):
            @classmethod
            def utcnow(cls):
                return when

            @classmethod
            def now(cls, tz=None):
                return when.replace(tzinfo=tz) if tz else when

        with mock.patch("botocore.auth.datetime.datetime", Fixed):
            signer.add_auth(req)
    return dict(req.headers.items())


def error_type(headers: dict) -> str | None:
    return headers.get("x-amzn-errortype")


def test_unsigned_requests_are_refused_but_health_and_metrics_stay_open(shoal: Shoal):
    for method, path in [("GET", "/api/v1/certificates"), ("GET", "/things/t1/shadow"),
                         ("POST", "/topics/a"), ("GET", "/things"), ("GET", "/rules"), ("GET", "/api/v1/keys")]:
        code, headers, body = raw(shoal, method, path)
        assert code == 403, (path, code, body)
        assert error_type(headers) == "MissingAuthenticationTokenException", (path, headers)
        assert body == {"message": "Missing Authentication Token"}
    assert raw(shoal, "GET", "/health")[0] == 200
    c = http.client.HTTPConnection(shoal.host, shoal.http_port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    assert 'shoal_http_auth_total{outcome="missing"} 6' in text, text


def test_the_first_admin_key_is_a_private_credentials_file(shoal: Shoal):
    creds = shoal.data_dir / "credentials"
    kek = shoal.data_dir / "access-keys.kek"
    assert creds.stat().st_mode & 0o777 == 0o600
    key, secret = shoal.credentials
    assert key.startswith("AKIA") and len(key) == 20 and len(secret) == 40
    # The store holds the secret sealed, never in clear.
    store = b"".join(p.read_bytes() for p in shoal.data_dir.rglob("*") if p.is_file() and p != creds)
    assert secret.encode() not in store
    assert key.encode() in store
    # The harness passes its own key-encryption key; none is created in the data dir then.
    assert not kek.exists()


def test_boto3_and_the_aws_cli_sign_with_the_admin_key(shoal: Shoal):
    iot = shoal.boto3("iot")
    data = shoal.boto3("iot-data")
    iot.create_thing(thingName="truck-1")
    assert [t["thingName"] for t in iot.list_things()["things"]] == ["truck-1"]
    data.update_thing_shadow(thingName="truck-1", payload=b'{"state":{"reported":{"temp":-20}}}')
    doc = json.loads(data.get_thing_shadow(thingName="truck-1")["payload"].read())
    assert doc["state"]["reported"] == {"temp": -20}
    data.publish(topic="fleet/truck-1/telemetry", qos=1, retain=True, payload=b'{"temp":-20}')
    assert data.get_retained_message(topic="fleet/truck-1/telemetry")["payload"] == b'{"temp":-20}'

    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the AWS CLI (awscli) is not installed")
    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(shoal.data_dir / "credentials"),
               AWS_CONFIG_FILE="/dev/null", AWS_DEFAULT_REGION="us-east-1")
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    ep = ["--endpoint-url", f"http://{shoal.host}:{shoal.http_port}"]
    p = subprocess.run([aws, *ep, "iot", "describe-thing", "--thing-name", "truck-1"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["thingName"] == "truck-1"
    p = subprocess.run([aws, *ep, "iot-data", "publish", "--topic", "fleet/truck-1/cmd", "--payload", "go"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # A wrong secret: the AWS CLI reports AWS's exception.
    bad = dict(env, AWS_ACCESS_KEY_ID=shoal.credentials[0], AWS_SECRET_ACCESS_KEY="x" * 40)
    p = subprocess.run([aws, *ep, "iot", "list-things"], env=bad, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "InvalidSignatureException" in p.stderr, p.stderr


def test_replays_outside_the_clock_window_are_refused(shoal: Shoal):
    path = "/things/t1/shadow"
    now = datetime.datetime.utcnow()
    for minutes, ok in [(-14, True), (14, True), (-16, False), (16, False), (-24 * 60, False)]:
        h = signed_headers(shoal, "GET", path, when=now + datetime.timedelta(minutes=minutes))
        code, headers, body = raw(shoal, "GET", path, headers=h)
        if ok:
            assert code == 404, (minutes, code, body)  # authenticated; the shadow does not exist
        else:
            assert code == 403, (minutes, code, body)
            assert error_type(headers) == "InvalidSignatureException"
            assert "Signature expired" in body["message"], body


def test_a_signature_covers_path_query_body_and_signed_headers(shoal: Shoal):
    body = b'{"state":{"desired":{"setpoint":-18}}}'
    h = signed_headers(shoal, "POST", "/things/a/shadow", body)
    assert raw(shoal, "POST", "/things/a/shadow", body, h)[0] == 200
    for method, path, b in [("POST", "/things/b/shadow", body),          # another path
                            ("POST", "/things/a/shadow?name=x", body),   # another query
                            ("POST", "/things/a/shadow", body[:-1] + b"0"),  # another body
                            ("DELETE", "/things/a/shadow", body)]:       # another verb
        code, headers, out = raw(shoal, method, path, b, h)
        assert code == 403, (method, path, code, out)
        assert error_type(headers) == "InvalidSignatureException", out
        assert "does not match" in out["message"]
    # A signed header missing from the request.
    h = signed_headers(shoal, "GET", "/things/a/shadow", extra={"X-Custom": "1"})
    assert "x-custom" in h["Authorization"]
    h.pop("X-Custom")
    code, headers, out = raw(shoal, "GET", "/things/a/shadow", headers=h)
    assert code == 403 and "x-custom" in out["message"], out
    # A malformed Authorization header says what is missing.
    code, headers, out = raw(shoal, "GET", "/things/a/shadow", headers={
        "Authorization": "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00", "X-Amz-Date": h["X-Amz-Date"]})
    assert code == 403 and error_type(headers) == "IncompleteSignatureException", out
    assert "'Credential'" in out["message"]
    # The path is signed raw, as botocore double-encodes it: a topic with '/' and '$' in one segment.
    data = shoal.boto3("iot-data")
    data.publish(topic="odd/$name with space", qos=0, retain=True, payload=b"1")
    assert data.get_retained_message(topic="odd/$name with space")["payload"] == b"1"


def test_unknown_deactivated_and_deleted_keys_are_refused(shoal: Shoal):
    api = shoal.boto3("iot-data")
    iot_admin = shoal.boto3("iot")
    iot_admin.create_thing(thingName="t1")
    # An admin key created through the API signs at once.
    r = json.loads(urlopen_signed(shoal, "POST", "/api/v1/keys", {"admin": True, "description": "ops"}))
    key = (r["accessKeyId"], r["secretAccessKey"])
    client = boto3.client("iot", endpoint_url=f"http://{shoal.host}:{shoal.http_port}", region_name="us-east-1",
                          aws_access_key_id=key[0], aws_secret_access_key=key[1])
    assert client.describe_thing(thingName="t1")["thingName"] == "t1"
    # The listing never shows a secret.
    listing = json.loads(urlopen_signed(shoal, "GET", "/api/v1/keys"))
    assert key[1] not in json.dumps(listing) and len(listing["keys"]) == 2
    urlopen_signed(shoal, "PUT", f"/api/v1/keys/{key[0]}/status", {"status": "Inactive"})
    with pytest.raises(ClientError) as e:
        client.describe_thing(thingName="t1")
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    urlopen_signed(shoal, "PUT", f"/api/v1/keys/{key[0]}/status", {"status": "Active"})
    assert client.describe_thing(thingName="t1")["thingName"] == "t1"
    urlopen_signed(shoal, "DELETE", f"/api/v1/keys/{key[0]}")
    with pytest.raises(ClientError) as e:
        client.describe_thing(thingName="t1")
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    # A key id nobody issued.
    h = signed_headers(shoal, "GET", "/things/t1/shadow", key=("AKIAAAAAAAAAAAAAAAAA", "x" * 40))
    code, headers, _ = raw(shoal, "GET", "/things/t1/shadow", headers=h)
    assert code == 403 and error_type(headers) == "UnrecognizedClientException"
    # The last active admin key cannot be deactivated or deleted.
    admin = shoal.credentials[0]
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as he:
        urlopen_signed(shoal, "DELETE", f"/api/v1/keys/{admin}")
    assert he.value.code == 409
    assert api.get_retained_message  # the admin key still works below
    iot_admin.describe_thing(thingName="t1")


def urlopen_signed(s: Shoal, method: str, path: str, body: dict | None = None) -> bytes:
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{s.host}:{s.http_port}{path}", method=method, data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # signed by the harness
        return r.read()


DEVICE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["iot:Publish"], "Resource": "arn:aws:iot:us-east-1:000000000000:topic/fleet/t1/*"},
        {"Effect": "Allow", "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow"],
         "Resource": "arn:aws:iot:us-east-1:000000000000:thing/t1"},
    ],
}


def test_a_device_key_may_do_what_its_policies_allow_and_nothing_else(shoal: Shoal):
    r = json.loads(urlopen_signed(shoal, "POST", "/api/v1/keys", {"description": "truck t1"}))
    assert r["admin"] is False
    key = (r["accessKeyId"], r["secretAccessKey"])
    dev = boto3.client("iot-data", endpoint_url=f"http://{shoal.host}:{shoal.http_port}", region_name="us-east-1",
                       aws_access_key_id=key[0], aws_secret_access_key=key[1])
    # No policy yet: nothing is allowed.
    with pytest.raises(ClientError) as e:
        dev.publish(topic="fleet/t1/telemetry", payload=b"{}")
    assert e.value.response["Error"]["Code"] == "ForbiddenException"
    urlopen_signed(shoal, "POST", "/api/v1/policies", {"policyName": "t1-http", "policyDocument": DEVICE_POLICY})
    urlopen_signed(shoal, "POST", "/api/v1/policies/t1-http/targets", {"target": key[0]})
    dev.publish(topic="fleet/t1/telemetry", payload=b"{}")
    dev.update_thing_shadow(thingName="t1", payload=b'{"state":{"reported":{"door":"closed"}}}')
    assert json.loads(dev.get_thing_shadow(thingName="t1")["payload"].read())["state"]["reported"]["door"] == "closed"
    for call in [lambda: dev.publish(topic="fleet/t2/telemetry", payload=b"{}"),
                 lambda: dev.publish(topic="fleet/t1/telemetry", payload=b"{}", retain=True),  # no RetainPublish
                 lambda: dev.get_thing_shadow(thingName="t2"),
                 lambda: dev.delete_thing_shadow(thingName="t1")]:
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "ForbiddenException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # The management API is for admin keys only.
    iot = boto3.client("iot", endpoint_url=f"http://{shoal.host}:{shoal.http_port}", region_name="us-east-1",
                       aws_access_key_id=key[0], aws_secret_access_key=key[1])
    with pytest.raises(ClientError) as e:
        iot.list_things()
    assert e.value.response["Error"]["Code"] == "ForbiddenException"
    # Detaching the policy takes effect on the next request.
    urlopen_signed(shoal, "DELETE", f"/api/v1/policies/t1-http/targets/{key[0]}")
    with pytest.raises(ClientError):
        dev.publish(topic="fleet/t1/telemetry", payload=b"{}")


def test_keys_survive_a_restart(shoal: Shoal):
    r = json.loads(urlopen_signed(shoal, "POST", "/api/v1/keys", {"admin": True}))
    shoal.restart()
    c = boto3.client("iot", endpoint_url=f"http://{shoal.host}:{shoal.http_port}", region_name="us-east-1",
                     aws_access_key_id=r["accessKeyId"], aws_secret_access_key=r["secretAccessKey"])
    assert c.list_things()["things"] == []
    # The credentials file is not rewritten at restart: the admin key stays the same.
    assert shoal.credentials[0] != r["accessKeyId"]
    shoal.boto3("iot").list_things()


def test_nodes_on_one_redis_share_keys_when_they_share_the_key_encryption_key(make_shoal, redis_url, tmp_path):
    first = make_shoal("--store", redis_url)
    r = json.loads(urlopen_signed(first, "POST", "/api/v1/keys", {"admin": True}))
    second = make_shoal("--store", redis_url)
    assert not (second.data_dir / "credentials").exists()  # the store already had an admin key
    c = boto3.client("iot", endpoint_url=f"http://{second.host}:{second.http_port}", region_name="us-east-1",
                     aws_access_key_id=r["accessKeyId"], aws_secret_access_key=r["secretAccessKey"])
    c.list_things()
    # A node with another key-encryption key cannot open the secrets: it refuses, and says why.
    other_kek = tmp_path / "other.kek"
    other_kek.write_text("ab" * 32)
    third = make_shoal("--store", redis_url, "--key-encryption-key-file", str(other_kek))
    c3 = boto3.client("iot", endpoint_url=f"http://{third.host}:{third.http_port}", region_name="us-east-1",
                      aws_access_key_id=r["accessKeyId"], aws_secret_access_key=r["secretAccessKey"])
    with pytest.raises(ClientError) as e:
        c3.list_things()
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert "key-encryption key" in third.tail(200)


def test_key_changes_on_one_node_reach_the_other_nodes_of_the_redis(make_shoal, redis_url):
    """A key created on node A signs on node B; deactivated or deleted on A, B refuses it within
    a short bounded time (B polls the store's revision of the keys, every 0.5 s)."""
    a = make_shoal("--store", redis_url)
    b = make_shoal("--store", redis_url)
    r = json.loads(urlopen_signed(a, "POST", "/api/v1/keys", {"admin": True, "description": "multi-node"}))
    key = (r["accessKeyId"], r["secretAccessKey"])

    def on_b() -> tuple[int, str | None]:
        code, headers, _ = raw(b, "GET", "/api/v1/keys", headers=signed_headers(b, "GET", "/api/v1/keys", key=key))
        return code, error_type(headers)

    def within(want: int, limit: float = 2.0) -> float:
        t0 = time.monotonic()
        while True:
            code, kind = on_b()
            if code == want:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < limit, f"node B still answers {code} {kind} after {limit}s"
            time.sleep(0.05)

    within(200)
    urlopen_signed(a, "PUT", f"/api/v1/keys/{key[0]}/status", {"status": "Inactive"})
    within(403)
    assert on_b() == (403, "UnrecognizedClientException")
    # B lists it as inactive, and a change made on B starts from A's change.
    listed = {k["accessKeyId"]: k["status"] for k in json.loads(urlopen_signed(b, "GET", "/api/v1/keys"))["keys"]}
    assert listed[key[0]] == "Inactive"
    urlopen_signed(b, "PUT", f"/api/v1/keys/{key[0]}/status", {"status": "Active"})
    within(200)
    urlopen_signed(a, "DELETE", f"/api/v1/keys/{key[0]}")
    within(403)
    assert on_b() == (403, "UnrecognizedClientException")
    assert "access keys changed in the shared store" in b.tail(400)


def test_shoal_cli_key_verbs(shoal: Shoal, tmp_path):
    env = shoal.cli_env()

    def cli(*args: str, check: bool = True, env=env) -> subprocess.CompletedProcess:
        p = subprocess.run([shoal.binary, *args], capture_output=True, text=True, env=env, timeout=30)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    saved = tmp_path / "device.credentials"
    created = json.loads(cli("key", "create", "--description", "cli", "--save", str(saved)).stdout)
    assert saved.stat().st_mode & 0o777 == 0o600
    assert created["secretAccessKey"] in saved.read_text()
    listed = json.loads(cli("key", "list", "--json").stdout)
    # People get a table (the default on a terminal; --table forces it).
    table = cli("key", "list", "--table").stdout.splitlines()
    assert table[0].split() == ["ACCESSKEYID", "ADMIN", "CREATEDATE", "DESCRIPTION", "POLICIES", "STATUS"], table
    assert any(line.startswith(created["accessKeyId"]) and "Active" in line for line in table[1:]), table
    shown = cli("key", "show", created["accessKeyId"], "--table").stdout
    assert "status       Active" in shown, shown
    assert cli("key", "list", "--json", "--table", check=False).returncode == 2
    assert created["accessKeyId"] in [k["accessKeyId"] for k in listed["keys"]]
    assert created["secretAccessKey"] not in json.dumps(listed)
    # The device key may not list things: a clear message and a non-zero exit.
    dev_env = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    p = cli("thing", "list", "--credentials-file", str(saved), check=False, env=dev_env)
    assert p.returncode != 0 and "not an admin key" in p.stderr, p.stderr
    # No credentials at all: the CLI says how to get some.
    bare = dict(dev_env, SHOAL_DATA_DIR=str(tmp_path / "nowhere"))
    p = cli("thing", "list", check=False, env=bare)
    assert p.returncode != 0 and "MissingAuthenticationToken" in p.stderr and "credentials" in p.stderr
    cli("key", "deactivate", created["accessKeyId"])
    assert json.loads(cli("key", "show", created["accessKeyId"]).stdout)["status"] == "Inactive"
    cli("key", "delete", created["accessKeyId"])
    p = cli("key", "show", created["accessKeyId"], check=False)
    assert p.returncode != 0 and "does not exist" in p.stderr


def test_http_auth_none_only_on_loopback(tmp_path):
    p = subprocess.run([find_binary(), "serve", "--data-dir", str(tmp_path / "d"), "--mqtt-listen", "off",
                        "--mqtts-listen", "off", "--http-listen", "0.0.0.0:0", "--http-auth", "none"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert "http_auth" in p.stderr and "loopback" in p.stderr
    # A public HTTPS listener would serve the same open API: refused too.
    p = subprocess.run([find_binary(), "serve", "--data-dir", str(tmp_path / "d2"), "--mqtt-listen", "off",
                        "--mqtts-listen", "off", "--http-listen", "127.0.0.1:0", "--https-listen", "0.0.0.0:0",
                        "--http-auth", "none"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert "http_auth" in p.stderr and "HTTPS" in p.stderr


def test_without_auth_on_loopback_everything_is_open(make_shoal):
    s = make_shoal("--http-auth", "none")
    assert not (s.data_dir / "credentials").exists()
    code, _, body = raw(s, "GET", "/api/v1/certificates")
    assert code == 200, body
    assert "HTTP authentication is off" in s.tail(200)


def test_slow_and_oversized_clients_do_not_harm_others(shoal: Shoal):
    import socket
    # Twenty clients that never finish their headers, and one that announces a huge body.
    slow = []
    for _ in range(20):
        c = socket.create_connection((shoal.host, shoal.http_port))
        c.sendall(b"GET /things/t1/shadow HTTP/1.1\r\nHost: x\r\n")
        slow.append(c)
    big = socket.create_connection((shoal.host, shoal.http_port))
    big.sendall(b"POST /topics/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\nxx")
    try:
        t0 = time.monotonic()
        shoal.boto3("iot").list_things()
        assert time.monotonic() - t0 < 2
        # The unsigned huge body was refused before it was read.
        big.settimeout(5)
        assert big.recv(64).startswith(b"HTTP/1.1 403")
    finally:
        for c in slow:
            c.close()
        big.close()


def test_path_traversal_does_not_escape_the_data_plane(shoal: Shoal):
    """A data-plane key cannot reach the management API through dot segments: routing uses the
    raw path (no normalisation), and the management check too."""
    r = json.loads(urlopen_signed(shoal, "POST", "/api/v1/keys", {"description": "device"}))
    key = (r["accessKeyId"], r["secretAccessKey"])
    for method, path in [("GET", "/topics/../api/v1/keys"), ("POST", "/topics/x/../../api/v1/keys"),
                         ("GET", "/things/t1/shadow/../../../api/v1/keys"),
                         ("GET", "/things/../api/v1/keys/shadow"), ("GET", "/retainedMessage/../../api/v1/keys"),
                         ("GET", "/api/v1/../../things/t1/shadow")]:
        h = signed_headers(shoal, method, path, key=key)
        code, headers, body = raw(shoal, method, path, headers=h)
        # Refused before routing or signing: a '.' or '..' segment is never routed.
        assert code == 400, (path, code, body)
        assert headers.get("x-amzn-errortype") == "InvalidRequestException", (path, headers, body)
        assert "'..' segment" in body["message"], body
        assert "keys" not in body, (path, body)
    # The same names percent-encoded inside a topic are just a topic.
    h = signed_headers(shoal, "POST", "/topics/a%2F..%2Fb", key=shoal.credentials)
    code, _, body = raw(shoal, "POST", "/topics/a%2F..%2Fb", headers=h)
    assert code == 200, body


def test_slow_loris_and_slow_bodies_are_cut_off(make_shoal):
    """A client gets --http-read-timeout to send its headers, and again its body; a body over
    a route's limit is refused before it is read; nobody else waits meanwhile."""
    import socket
    s = make_shoal("--http-read-timeout", "2")
    slow = []
    for _ in range(50):
        c = socket.create_connection((s.host, s.http_port))
        c.sendall(b"GET /things/t1/shadow HTTP/1.1\r\nHost: x\r\n")
        slow.append(c)
    try:
        t0 = time.monotonic()
        s.boto3("iot").list_things()
        assert time.monotonic() - t0 < 1.5
        # The header-less clients are disconnected once their time is up.
        for c in slow:
            c.settimeout(6)
            try:
                data = c.recv(256)
            except ConnectionResetError:
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - t0 < 6
    finally:
        for c in slow:
            c.close()
    # A signed request whose body trickles: 408 after the read timeout.
    body = json.dumps({"state": {"reported": {"t": 1}}}).encode()
    h = signed_headers(s, "POST", "/things/t1/shadow", body=body)
    c = socket.create_connection((s.host, s.http_port))
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in h.items())
        c.sendall(f"POST /things/t1/shadow HTTP/1.1\r\nHost: {s.host}:{s.http_port}\r\n{head}"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        c.settimeout(6)
        t0 = time.monotonic()
        reply = c.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"RequestTimeoutException" in reply, reply
        assert 1.5 < time.monotonic() - t0 < 5
    finally:
        c.close()
    # A management request announcing 2 MiB (the limit is 1 MiB) is refused unread.
    h = signed_headers(s, "POST", "/api/v1/rules", body=b"")
    c = socket.create_connection((s.host, s.http_port))
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in h.items() if k.lower() != "content-length")
        c.sendall(f"POST /api/v1/rules HTTP/1.1\r\nHost: {s.host}:{s.http_port}\r\n{head}"
                  f"Content-Length: {2 << 20}\r\n\r\n".encode())
        c.settimeout(5)
        reply = c.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413"), reply
        assert b"at most 1048576 bytes" in reply, reply
    finally:
        c.close()
    assert metric(s, "shoal_http_auth_total", 'outcome="timeout"') == 1
