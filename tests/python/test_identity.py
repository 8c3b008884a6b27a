"""X.509 identities and AWS IoT policies end to end, against a real `shoal`.

Device certificates issued by shoal (CreateKeysAndCertificate, CreateCertificateFromCsr) and by
an operator's own CA made with `openssl` (RegisterCACertificate + RegisterCertificate), used by
mosquitto_pub/sub, paho-mqtt (3.1.1 and 5, with and without the `x-amzn-mqtt-ca` ALPN) and the
AWS IoT Device SDK v2 (`awsiot.mqtt_connection_builder.mtls_from_path`) over mutual TLS.
Revocation, deactivation, policy detach and a new default policy version close live connections within 1 s. Attacks: unknown
CA, expired / not-yet-valid / revoked certificates, a certificate connecting as another thing,
wildcard client ids against `${iot:ClientId}` filters, malformed policies, Deny over Allow,
denied publish/subscribe/receive, anonymous plain-TCP access by policy or refused.

References: AWS IoT developer guide ("X.509 client certificates", "Register your CA
certificate", "AWS IoT Core policies", "Publish/Subscribe policy examples", "Policy variables"),
docs/POLICY_SEMANTICS.md for Shoal's documented choices.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import raw_mqtt as raw
from identity_helpers import (
    ALLOW_ALL, ARN, NOT_AUTHORIZED, Api, Device, allow, assert_accepted, assert_refused_at_connack,
    assert_refused_at_handshake, cert_with_validity, deny, doc, issue_device, log_lines, openssl,
    openssl_ca, openssl_device, openssl_key_csr, probe, pubkey_of, tls_client, workdir,
)
from mqtt_helpers import V3, V5, VERSION_IDS, VERSIONS, metric, unique

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])


def wire(version: int) -> int:
    return 5 if version == V5 else 4


SUBACK_REFUSED = {V3: 0x80, V5: 0x87}


@pytest.fixture
def api(shoal) -> Api:
    return Api(shoal)


# -- clients with shoal-issued certificates -----------------------------------------------------

MOSQ = pytest.mark.skipif(not shutil.which("mosquitto_pub") or not shutil.which("mosquitto_sub"),
                          reason="mosquitto clients not installed")


@MOSQ
def test_mosquitto_with_shoal_issued_certificate(shoal, api):
    """A certificate from POST /api/v1/certificates (attached to a thing, policy attached) lets
    `mosquitto_pub --cert --key --cafile` publish over TLS to a `mosquitto_sub` using it too; a
    mosquitto client without a certificate is refused (AWS IoT: port 8883 requires mutual TLS)."""
    dev = issue_device(shoal, api, thing=unique("mosq-thing"))
    topic, payload = f"mosq/{unique('t')}", unique("hello")
    tls = ["-h", "127.0.0.1", "-p", str(shoal.mqtts_port), "--cafile", shoal.ca_path]
    with_cert = tls + ["--cert", dev.crt, "--key", dev.key]
    sub = subprocess.Popen(["mosquitto_sub", *with_cert, "-i", dev.thing, "-t", topic, "-q", "1",
                            "-C", "1", "-W", "10", "-v"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # mosquitto_sub says nothing when its SUBSCRIBE is in place: publish until it has one.
        pubs = []
        deadline = time.monotonic() + 8
        while sub.poll() is None and time.monotonic() < deadline:
            p = subprocess.run(["mosquitto_pub", *with_cert, "-i", unique("mosq-pub"), "-t", topic, "-m", payload,
                                "-q", "1"], capture_output=True, text=True, timeout=10)
            pubs.append(p)
            assert p.returncode == 0, f"mosquitto_pub with a certificate failed: {p.stderr}"
            try:
                sub.wait(0.3)
            except subprocess.TimeoutExpired:
                pass
        out, err = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}: {err}"
    assert out.strip() == f"{topic} {payload}", f"mosquitto_sub printed {out!r}"

    # Without a certificate: refused, nothing delivered.
    watcher = tls_client(shoal, dev, version=V5)
    assert watcher.subscribe(topic, qos=1) == [1]
    p = subprocess.run(["mosquitto_pub", *tls, "-i", unique("nocert"), "-t", topic, "-m", "no-cert", "-q", "1"],
                       capture_output=True, text=True, timeout=15)
    assert p.returncode != 0, f"mosquitto_pub without a certificate succeeded: {p.stdout} {p.stderr}"
    s = subprocess.run(["mosquitto_sub", *tls, "-i", unique("nocert"), "-t", topic, "-C", "1", "-W", "3"],
                       capture_output=True, text=True, timeout=15)
    assert s.returncode != 0, f"mosquitto_sub without a certificate succeeded: {s.stdout} {s.stderr}"
    watcher.expect_no_message(0.5)


@pytest.mark.parametrize("alpn", [None, "x-amzn-mqtt-ca", "mqtt"])
@versions
def test_paho_tls_with_certificate_and_alpn(shoal, api, version, alpn):
    """paho-mqtt 3.1.1 and 5 over mutual TLS with a shoal-issued certificate, without ALPN and with
    ALPN `x-amzn-mqtt-ca` (what the AWS device SDKs send) or `mqtt`: connected, the server selects
    the offered protocol, QoS 1 messages flow both ways between two devices."""
    a = issue_device(shoal, api, thing=unique("paho-a"))
    b = issue_device(shoal, api, thing=unique("paho-b"))
    ca = tls_client(shoal, a, version=version, client_id=a.thing, alpn=[alpn] if alpn else None)
    cb = tls_client(shoal, b, version=version, client_id=b.thing, alpn=[alpn] if alpn else None)
    assert ca.connack.reason_code == 0 and cb.connack.reason_code == 0
    assert ca.selected_alpn() == alpn, f"ALPN selected {ca.selected_alpn()!r}, offered {alpn!r}"
    assert ca.subscribe("dev/a/in", qos=1) == [1]
    assert cb.subscribe("dev/b/in", qos=1) == [1]
    assert cb.publish("dev/a/in", b"b->a", qos=1).reason_code == 0
    assert ca.publish("dev/b/in", b"a->b", qos=1).reason_code == 0
    m = ca.wait_message()
    assert (m.topic, m.payload, m.qos) == ("dev/a/in", b"b->a", 1)
    m = cb.wait_message()
    assert (m.topic, m.payload, m.qos) == ("dev/b/in", b"a->b", 1)


def test_awsiotsdk_mtls_from_path(shoal, api):
    """AWS IoT Device SDK v2: `mtls_from_path(endpoint=127.0.0.1, cert, key, ca=shoal's CA)`
    connects (the server certificate has SANs localhost, 127.0.0.1 and ::1), subscribes and
    receives its own QoS 1 publish (PUBACK'd)."""
    mqtt_connection_builder = pytest.importorskip("awsiot.mqtt_connection_builder")
    from awscrt import mqtt

    thing = unique("sdk-thing")
    dev = issue_device(shoal, api, thing=thing, policy_doc=doc(
        allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"),
        allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/sdk/${{iot:Connection.Thing.ThingName}}/*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/sdk/${{iot:Connection.Thing.ThingName}}/*")))
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1", port=shoal.mqtts_port, cert_filepath=dev.crt, pri_key_filepath=dev.key,
        ca_filepath=shoal.ca_path, client_id=thing, clean_session=True, keep_alive_secs=30)
    got: queue.Queue = queue.Queue()
    try:
        result = conn.connect().result(10)
        assert result["session_present"] is False
        topic = f"sdk/{thing}/telemetry"
        sub_future, _ = conn.subscribe(topic=topic, qos=mqtt.QoS.AT_LEAST_ONCE,
                                       callback=lambda topic, payload, **kw: got.put((topic, payload)))
        suback = sub_future.result(10)
        assert suback["qos"] == mqtt.QoS.AT_LEAST_ONCE, suback
        pub_future, _ = conn.publish(topic=topic, payload=b'{"temp":-19.5}', qos=mqtt.QoS.AT_LEAST_ONCE)
        pub_future.result(10)  # PUBACK received (raises otherwise)
        t, payload = got.get(timeout=10)
        assert (t, payload) == (topic, b'{"temp":-19.5}')
    finally:
        try:
            conn.disconnect().result(10)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


# -- certificates from a CSR and from the operator's own CA ------------------------------------

def test_csr_flow(shoal, api):
    """CreateCertificateFromCsr: `openssl` makes a key and CSR, POST /api/v1/certificates/from-csr
    signs it with shoal's CA (the private key never leaves the device), the certificate carries the
    CSR's public key and, with a policy attached, the device connects with its own key."""
    d = workdir(shoal)
    key, csr = openssl_key_csr(d, "csr-device")
    cert = api.cert_from_csr(csr.read_text())
    assert cert["status"] == "ACTIVE"
    crt = d / "csr-device.crt"
    crt.write_text(cert["certificatePem"])
    assert pubkey_of(str(crt), is_key=False) == pubkey_of(str(key), is_key=True), \
        "the issued certificate does not carry the CSR's public key"
    openssl("verify", "-CAfile", shoal.ca_path, str(crt))  # chains to shoal's CA
    dev = Device(cert["certificateId"], str(crt), str(key))
    assert_refused_at_connack(probe(shoal, dev, "csr-device"))  # no policy yet
    assert api.attach(api.policy("csr-pol", ALLOW_ALL), dev.cert_id).status == 200
    c = tls_client(shoal, dev, version=V5, client_id="csr-device")
    c.roundtrip("csr/rt")


def test_byo_ca(shoal, api):
    """Bring your own CA: a root CA made with `openssl req -x509`, a device certificate signed by
    it with `openssl x509 -req`. Refused at the TLS handshake before the CA is registered, refused
    at CONNACK while the certificate is not registered, registered INACTIVE, or without a policy;
    accepted once registered, ACTIVE and given a policy."""
    d = workdir(shoal)
    ca = openssl_ca(d, "fleet")
    dev = openssl_device(d, ca, "byo-device")
    cid = "byo-device"
    assert_refused_at_handshake(probe(shoal, dev, cid))          # CA unknown
    reg_ca = api.register_ca(ca.pem, active=True)
    assert reg_ca["status"] == "ACTIVE"
    assert_refused_at_connack(probe(shoal, dev, cid))            # certificate not registered
    assert log_lines(shoal, "is not registered", cid), "no log line for the unregistered certificate"
    r = api.register_cert(Path(dev.crt).read_text(), active=False)
    assert r.status == 200, r.body
    assert r.body["caCertificateId"] == reg_ca["certificateId"]
    assert r.body["status"] == "INACTIVE"
    dev.cert_id = r.body["certificateId"]
    assert_refused_at_connack(probe(shoal, dev, cid, version=5), version=5)   # INACTIVE
    assert api.set_status(dev.cert_id, "ACTIVE").status == 200
    assert_refused_at_connack(probe(shoal, dev, cid))            # no policy attached
    assert api.attach(api.policy("byo-pol", ALLOW_ALL), dev.cert_id).status == 200
    c = tls_client(shoal, dev, version=V3, client_id=cid)
    c.roundtrip("byo/rt")


# -- revocation of live connections -------------------------------------------------------------

REVOCATIONS = ["REVOKED", "INACTIVE", "detach-policy", "new-default-version"]


@pytest.mark.parametrize("how", REVOCATIONS)
@versions
def test_revocation_closes_live_connection_within_1s(shoal, api, version, how, record_property):
    """UpdateCertificate REVOKED / INACTIVE, DetachPolicy, and a new default policy version
    (here one without iot:Connect) close the certificate's live connection: the client sees the
    disconnect less than 1.0 s after the HTTP response (v5: a DISCONNECT 0x87 Not authorized),
    and a reconnect is refused at CONNACK."""
    thing = unique("rev")
    dev = issue_device(shoal, api, thing=thing, policy_name=f"pol-{thing}")
    c = tls_client(shoal, dev, version=version, client_id=thing)
    c.roundtrip(f"rev/{thing}")
    t0 = time.monotonic()
    if how == "detach-policy":
        r = api.detach(f"pol-{thing}", dev.cert_id)
    elif how == "new-default-version":
        r = api.call("POST", f"/api/v1/policies/pol-{thing}/versions",
                     {"policyDocument": doc(allow("iot:Publish", "*")), "setAsDefault": True})
    else:
        r = api.set_status(dev.cert_id, how)
    t1 = time.monotonic()
    assert r.status == 200, r.body
    d = c.wait_disconnected(5)
    after_response = d.at - t1
    after_request = d.at - t0
    msg = (f"{how} ({VERSION_IDS[version]}): disconnect seen {after_response * 1000:.1f} ms after the HTTP "
           f"response ({after_request * 1000:.1f} ms after the request was sent)")
    print(f"\n[revocation timing] {msg}")
    record_property("disconnect_after_response_ms", round(after_response * 1000, 1))
    assert after_response < 1.0, msg
    if version == V5:
        assert d.from_broker and d.reason_code == 0x87, f"expected DISCONNECT 0x87, got {d}; {msg}"
    assert_refused_at_connack(probe(shoal, dev, thing, version=wire(version)), version=wire(version))


# -- attacks ------------------------------------------------------------------------------------

def test_unknown_ca_refused_at_handshake(shoal, api):
    """A certificate signed by a CA that was never registered fails the TLS handshake (rustls
    'unknown issuer'), even with the CN of a registered thing; the log names the certificate."""
    thing = unique("victim")
    issue_device(shoal, api, thing=thing)
    d = workdir(shoal)
    rogue = openssl_ca(d, "rogue")
    dev = openssl_device(d, rogue, thing)
    p = probe(shoal, dev, thing)
    assert_refused_at_handshake(p)
    assert "unknown ca" in p.detail.lower(), p
    assert log_lines(shoal, "TLS client refused", f"CN={thing}", "UnknownIssuer"), \
        "no log line for the refused handshake"


@pytest.mark.parametrize("window", ["expired", "not-yet-valid"])
def test_certificate_outside_validity_refused(shoal, api, window):
    """A device certificate outside its validity period, although signed by a registered CA,
    registered, ACTIVE and given a policy, fails the TLS handshake."""
    d = workdir(shoal)
    ca = openssl_ca(d, "fleet")
    api.register_ca(ca.pem, active=True)
    now = dt.datetime.now(dt.timezone.utc)
    if window == "expired":
        nb, na = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
    else:
        nb, na = now + dt.timedelta(days=1), now + dt.timedelta(days=30)
    dev = cert_with_validity(d, ca, f"{window}-dev", nb, na)
    r = api.register_cert(Path(dev.crt).read_text(), active=True)
    assert r.status == 200, r.body
    assert api.attach(api.policy("p", ALLOW_ALL), r.body["certificateId"]).status == 200
    # The same CA's in-date certificate, equally registered, is accepted: only the dates differ.
    good = cert_with_validity(d, ca, "good-dev", now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    r2 = api.register_cert(Path(good.crt).read_text(), active=True)
    assert api.attach("p", r2.body["certificateId"]).status == 200
    assert_accepted(probe(shoal, good, "good-dev"))
    p = probe(shoal, dev, f"{window}-dev")
    assert_refused_at_handshake(p)
    # TLS has no "not yet valid" alert: rustls sends certificate_expired for both; the log says which.
    assert "certificate expired" in p.detail.lower(), p
    why = "certificate expired" if window == "expired" else "certificate not valid yet"
    assert log_lines(shoal, "TLS client refused", f"CN={window}-dev", why), \
        f"no log line saying {why!r} for the refused handshake:\n{shoal.tail(10)}"


@versions
def test_revoked_certificate_refused(shoal, api, version):
    """A REVOKED certificate (policy still attached) is refused at CONNECT (v3.1.1 return code 5,
    v5 0x87), and cannot be set back to ACTIVE."""
    thing = unique("revoked")
    dev = issue_device(shoal, api, thing=thing)
    assert_accepted(probe(shoal, dev, thing, version=wire(version)))
    assert api.set_status(dev.cert_id, "REVOKED").status == 200
    assert_refused_at_connack(probe(shoal, dev, thing, version=wire(version)), version=wire(version))
    r = api.set_status(dev.cert_id, "ACTIVE")
    assert r.status == 400, f"a revoked certificate was reactivated: {r.status} {r.body}"
    assert_refused_at_connack(probe(shoal, dev, thing, version=wire(version)), version=wire(version))


def test_certificate_of_thing_a_cannot_connect_as_thing_b(shoal, api):
    """With `iot:Connect` allowed only on `client/${iot:Connection.Thing.ThingName}`, the
    certificate attached to thing A connects as A but is refused as B (another registered thing)."""
    pol = doc(allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"),
              allow(["iot:Publish", "iot:Subscribe", "iot:Receive"], "*"))
    a, b = unique("thing-a"), unique("thing-b")
    dev_a = issue_device(shoal, api, thing=a, policy_doc=pol, policy_name="thing-bound")
    cert_b = api.create_cert(thing=b)
    assert api.attach("thing-bound", cert_b["certificateId"]).status == 200
    for version in (4, 5):
        assert_accepted(probe(shoal, dev_a, a, version=version))
        assert_refused_at_connack(probe(shoal, dev_a, b, version=version), version=version)
    assert log_lines(shoal, dev_a.cert_id, f"may not connect as client {b}"), "no log line for the refusal"


@versions
def test_wildcard_client_id_cannot_widen_subscribe(shoal, api, version):
    """AWS's documented pitfall: with Subscribe allowed on `topicfilter/x/${iot:ClientId}`, a
    client connecting as `+` (or `#`) would be allowed `x/+` (or `x/#`) and read every client's
    topic. Shoal substitutes literally and refuses (docs/POLICY_SEMANTICS.md §4): SUBACK 0x87 (v5)
    / 0x80 (v3.1.1). An ordinary client id gets its own filter."""
    dev = issue_device(shoal, api, policy_doc=doc(
        allow("iot:Connect", f"{ARN}:client/*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/x/${{iot:ClientId}}"),
        allow(["iot:Receive", "iot:Publish"], f"{ARN}:topic/x/*")))
    refused = SUBACK_REFUSED[version]
    for cid in ("+", "#"):
        c = tls_client(shoal, dev, version=version, client_id=cid)
        codes = c.subscribe(["x/+", "x/#", f"x/{cid}"], qos=1)
        assert codes == [refused, refused, refused], \
            f"client id {cid!r}: SUBACK {[hex(x) for x in codes]}, expected all {refused:#x}"
        c.close()
    ok = unique("ok")
    c = tls_client(shoal, dev, version=version, client_id=ok)
    assert c.subscribe([f"x/{ok}", "x/+"], qos=1) == [1, refused]
    assert c.publish(f"x/{ok}", b"mine", qos=1).reason_code == 0
    assert c.wait_message().payload == b"mine"


BAD_POLICIES = [
    pytest.param('{"Version": "2012-10-17", "Statement": [', "$", id="json-syntax"),
    pytest.param(doc({"Effect": "allow", "Action": "iot:Connect", "Resource": "*"}), "$.Statement[0].Effect",
                 id="effect-case"),
    pytest.param(doc(allow("iot:Connect", "*"), allow(["iot:Publish", "iot:Publsh"], "*")),
                 "$.Statement[1].Action[1]", id="action-typo"),
    pytest.param(doc(allow("iot:Publish", "topic/foo")), "$.Statement[0].Resource", id="resource-not-arn"),
    pytest.param({"Statement": [allow("iot:*", "*")]}, "Version", id="no-version"),
]


@pytest.mark.parametrize("document,path", BAD_POLICIES)
def test_malformed_policy_rejected_with_json_path(shoal, api, document, path):
    """CreatePolicy with an invalid document: HTTP 400, `x-amzn-ErrorType:
    MalformedPolicyException` (AWS), and a message naming the JSON path and the reason
    (docs/POLICY_SEMANTICS.md §1: `path: reason`); nothing is created."""
    name = unique("bad")
    r = api.create_policy(name, document)
    assert r.status == 400, f"{r.status} {r.body}"
    assert r.error_type == "MalformedPolicyException", r.headers
    message = r.body.get("message", "")
    assert message.startswith(path) or path in message, f"message {message!r} does not name {path!r}"
    assert ": " in message and len(message.split(": ", 1)[1]) > 5, f"no reason in {message!r}"
    assert api.call("GET", f"/api/v1/policies/{name}").status == 404


def test_policy_with_zero_statements_rejected(shoal, api):
    """`"Statement": []` is rejected (docs/POLICY_SEMANTICS.md §1, as AWS: Statement must be a
    statement or a non-empty array): 400 MalformedPolicyException naming `$.Statement`."""
    r = api.create_policy("empty", {"Version": "2012-10-17", "Statement": []})
    assert r.status == 400, f"{r.status} {r.body}"
    assert r.error_type == "MalformedPolicyException"
    assert r.body["message"].startswith("$.Statement:"), r.body
    assert api.call("GET", "/api/v1/policies/empty").status == 404


def test_explicit_deny_overrides_allow_on_publish(shoal, api):
    """An explicit Deny in one attached policy beats an Allow in another (IAM evaluation): the
    v5 publish to the denied topic gets PUBACK 0x87 and reaches nobody; other topics still work."""
    dev = issue_device(shoal, api, policy_doc=ALLOW_ALL, policy_name="allow-all")
    assert api.attach(api.policy("no-forbidden", doc(deny("iot:Publish", f"{ARN}:topic/forbidden/*"))),
                      dev.cert_id).status == 200
    watcher = tls_client(shoal, issue_device(shoal, api), version=V5)
    assert watcher.subscribe(["forbidden/#", "allowed/#"], qos=1) == [1, 1]
    c = tls_client(shoal, dev, version=V5)
    ack = c.publish("forbidden/x", b"nope", qos=1)
    assert ack.reason_code == 0x87, f"PUBACK {ack.reason_code:#x} for a denied publish"
    assert c.publish("allowed/x", b"yes", qos=1).reason_code == 0
    m = watcher.wait_message()
    assert (m.topic, m.payload) == ("allowed/x", b"yes")
    watcher.expect_no_message(0.3)


def test_v5_denied_publish_puback_0x87_connection_stays_up(shoal, api):
    """MQTT 5: a QoS 1 PUBLISH the policy does not allow gets PUBACK 0x87 (Not authorized) and the
    connection stays up (AWS IoT on MQTT 5)."""
    thing = unique("dev")
    dev = issue_device(shoal, api, thing=thing, policy_doc=doc(
        allow("iot:Connect", "*"),
        allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/dev/*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/dev/*")))
    c = tls_client(shoal, dev, version=V5, client_id=thing)
    ack = c.publish("other/x", b"denied", qos=1)
    assert ack.reason_code == 0x87, f"PUBACK {ack.reason_code:#x}, expected 0x87"
    time.sleep(0.2)
    assert c.is_connected(), "the connection was closed after a denied v5 publish"
    c.roundtrip("dev/after-denial")


def test_v311_denied_publish_disconnects(shoal, api):
    """MQTT 3.1.1 has no negative PUBACK: a PUBLISH the policy does not allow closes the
    connection (AWS IoT behaviour), without a PUBACK, and nothing is delivered."""
    dev = issue_device(shoal, api, policy_doc=doc(
        allow("iot:Connect", "*"),
        allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/dev/*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/dev/*")))
    watcher = tls_client(shoal, issue_device(shoal, api), version=V5)
    assert watcher.subscribe("other/#", qos=1) == [1]
    c = tls_client(shoal, dev, version=V3)
    c.roundtrip("dev/before")
    c.publish("other/x", b"denied", qos=1, wait=False)
    c.wait_disconnected(3)
    assert not c.is_connected()
    assert not c._acks, f"a PUBACK came back for a denied v3 publish: {c._acks}"
    watcher.expect_no_message(0.3)


@versions
def test_denied_subscribe_gets_suback_failure(shoal, api, version):
    """A SUBSCRIBE filter the policy does not allow gets SUBACK 0x87 (v5) / 0x80 (v3.1.1) while the
    allowed filter in the same packet is granted; the connection stays up and works."""
    dev = issue_device(shoal, api, policy_doc=doc(
        allow("iot:Connect", "*"),
        allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/dev/*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/dev/*")))
    c = tls_client(shoal, dev, version=version)
    codes = c.subscribe(["dev/a", "other/b", "#"], qos=1)
    r = SUBACK_REFUSED[version]
    assert codes == [1, r, r], f"SUBACK {[hex(x) for x in codes]}"
    assert c.is_connected()
    c.roundtrip("dev/rt")


def test_receive_denied_topic_not_delivered(shoal, api):
    """iot:Receive is checked on delivery: a subscriber allowed to subscribe `a/#` but denied
    Receive on `a/secret` gets `a/public` and never `a/secret`, live or retained; each withheld
    delivery is counted in shoal_messages_dropped_total{reason="unauthorized"}."""
    sub_dev = issue_device(shoal, api, policy_doc=doc(
        allow("iot:Connect", "*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/a/#"),
        allow("iot:Receive", f"{ARN}:topic/a/*"),
        deny("iot:Receive", f"{ARN}:topic/a/secret")))
    pub = tls_client(shoal, issue_device(shoal, api), version=V5)
    # Retained messages are deliveries too.
    assert pub.publish("a/secret", b"retained-secret", qos=1, retain=True).reason_code == 0
    assert pub.publish("a/public", b"retained-public", qos=1, retain=True).reason_code == 0
    dropped0 = metric(shoal, "shoal_messages_dropped_total", 'reason="unauthorized"')
    sub = tls_client(shoal, sub_dev, version=V5)
    assert sub.subscribe("a/#", qos=1) == [1]
    m = sub.wait_message()
    assert (m.topic, m.payload, m.retain) == ("a/public", b"retained-public", True)
    for i in range(3):
        assert pub.publish("a/secret", f"s{i}".encode(), qos=1).reason_code == 0
        assert pub.publish("a/public", f"p{i}".encode(), qos=1).reason_code == 0
    got = sub.wait_messages(3)
    got += sub.drain(0.3)
    assert [(m.topic, m.payload) for m in got] == [("a/public", b"p0"), ("a/public", b"p1"), ("a/public", b"p2")]
    assert sub.is_connected()
    dropped = metric(shoal, "shoal_messages_dropped_total", 'reason="unauthorized"') - dropped0
    assert dropped == 4, f"{dropped} deliveries counted as dropped (unauthorized), expected 4 (1 retained + 3)"


def test_anonymous_access_by_policy(make_shoal):
    """`--anonymous-access policy:NAME`: a plain-TCP client without a certificate may do what that
    policy allows and nothing else (SUBACK/PUBACK 0x87), and what it is denied reaches no one."""
    shoal = make_shoal("--anonymous-access", "policy:anon-pytest")
    api = Api(shoal)
    api.policy("anon-pytest", doc(
        allow("iot:Connect", f"{ARN}:client/guest-*"),
        allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/public/*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/public/*")))
    watcher = tls_client(shoal, issue_device(shoal, api), version=V5)
    assert watcher.subscribe("private/#", qos=1) == [1]
    c = shoal.client(version=V5, client_id=unique("guest"))
    assert c.subscribe(["public/a", "private/a"], qos=1) == [1, 0x87]
    assert c.publish("public/a", b"hi", qos=1).reason_code == 0
    assert c.wait_message().payload == b"hi"
    assert c.publish("private/a", b"no", qos=1).reason_code == 0x87
    watcher.expect_no_message(0.3)
    # Connect is policy-checked too: a client id outside client/guest-* is refused.
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    _, rc, _ = raw.connack_codes(r.connect(unique("intruder"), version=5), 5)
    r.close()
    assert rc == 0x87, f"CONNACK {rc:#x} for a client id the anonymous policy does not allow"


@versions
def test_anonymous_access_deny(make_shoal, version):
    """`--anonymous-access deny`: a plain-TCP client without a certificate is refused at CONNECT
    (v3.1.1 return code 5 / v5 0x87); certificate holders on the TLS listener are unaffected."""
    shoal = make_shoal("--anonymous-access", "deny")
    r = raw.RawClient(shoal.host, shoal.mqtt_port)
    _, rc, _ = raw.connack_codes(r.connect(unique("anon"), version=wire(version)), wire(version))
    closed, _ = r.wait_closed(3)
    r.close()
    assert rc == NOT_AUTHORIZED[wire(version)], f"CONNACK {rc:#x}"
    assert closed, "the refused connection was left open"
    api = Api(shoal)
    tls_client(shoal, issue_device(shoal, api), version=version).roundtrip()


def test_denials_are_logged_with_certificate_client_and_statement(shoal, api):
    """Operators can see why: every denied CONNECT / PUBLISH / SUBSCRIBE logs a line naming the
    certificate id, the client id and the decision, with the deciding statement (index, Sid,
    policy name and version) when a Deny decided (docs/POLICY_SEMANTICS.md §6)."""
    cid = unique("logged")
    dev = issue_device(shoal, api, policy_name="log-pol", policy_doc=doc(
        allow("iot:Connect", f"{ARN}:client/logged-*"),
        allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/ok/*"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/ok/*"),
        {"Sid": "NoForbidden", **deny("iot:Publish", f"{ARN}:topic/ok/forbidden")}))
    c = tls_client(shoal, dev, version=V5, client_id=cid)
    assert c.publish("ok/forbidden", b"x", qos=1).reason_code == 0x87
    assert c.subscribe("elsewhere/x", qos=1) == [0x87]
    pub = log_lines(shoal, "Publish ok/forbidden:", dev.cert_id, cid)
    assert pub, f"no log line naming the certificate and client for the denied publish:\n{shoal.tail(20)}"
    assert 'denied by statement 3 (Sid "NoForbidden") of policy "log-pol" version "1"' in pub[0], pub[0]
    sub = log_lines(shoal, "Subscribe elsewhere/x:", dev.cert_id, cid)
    assert sub and "denied: no statement allowed" in sub[0], f"subscribe denial not logged:\n{shoal.tail(20)}"
    assert_refused_at_connack(probe(shoal, dev, "someone-else", version=5), version=5)
    con = log_lines(shoal, dev.cert_id, "may not connect as client someone-else", "denied")
    assert con, f"connect denial not logged:\n{shoal.tail(20)}"


def test_management_api_rejects_bad_bodies_in_the_aws_shape(shoal):
    """Bad JSON, wrong types and oversized bodies on the identity endpoints: 400 (or 413) with
    `x-amzn-ErrorType` and a JSON message, never a plain-text framework error; shoal keeps
    serving."""
    import urllib.request as rq
    base = f"http://{shoal.host}:{shoal.http_port}"

    def raw(method: str, path: str, data: bytes) -> tuple[int, dict, dict]:
        req = rq.Request(base + path, method=method, data=data, headers={"Content-Type": "application/json"})
        try:
            with rq.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}"), {k.lower(): v for k, v in r.headers.items()}
        except rq.HTTPError as e:  # type: ignore[attr-defined]
            return e.code, json.loads(e.read() or b"{}"), {k.lower(): v for k, v in e.headers.items()}

    for path in ["/api/v1/policies", "/api/v1/certificates", "/api/v1/ca-certificates",
                 "/api/v1/certificates/from-csr", "/api/v1/things/t1/principals"]:
        code, body, headers = raw("POST", path, b"{not json")
        assert code == 400, (path, code, body)
        assert headers.get("x-amzn-errortype") == "InvalidRequestException", (path, headers)
        assert body.get("message"), (path, body)
    code, body, headers = raw("POST", "/api/v1/certificates", json.dumps({"commonName": 5}).encode())
    assert code == 400 and headers.get("x-amzn-errortype") == "InvalidRequestException", body
    code, body, headers = raw("POST", "/api/v1/certificates/from-csr",
                              json.dumps({"certificateSigningRequest": "-----BEGIN CERTIFICATE REQUEST-----\nxx"}).encode())
    assert code == 400 and headers.get("x-amzn-errortype"), (code, body)
    # 3 MB against a 1 MiB cap: 413 before the body is read. The server then closes the
    # connection, so a client still uploading may see the socket cut before it reads the 413.
    try:
        code, body, _ = raw("POST", "/api/v1/policies", b'{"policyName":"big","policyDocument":"' + b"x" * 3_000_000 + b'"}')
    except rq.URLError as e:  # type: ignore[attr-defined]
        assert isinstance(e.reason, (BrokenPipeError, ConnectionResetError)), e
        code = 413
    assert code in (400, 413), code
    assert Api(shoal).ok("GET", "/api/v1/policies") is not None


@pytest.mark.parametrize("version", [4, 5])
def test_connect_attributes_condition(make_shoal, version):
    """`iot:ConnectAttributes` (AWS): `PersistentConnect` for a session that outlives the
    connection (v3 cleanSession=0, v5 session expiry > 0) and `LastWill` for a CONNECT with a
    will, usable in a Deny condition on `iot:Connect`."""
    from mqtt_helpers import Client
    shoal = make_shoal("--anonymous-access", "policy:attrs")
    Api(shoal).policy("attrs", doc(
        allow("iot:*", "*"),
        {"Effect": "Deny", "Action": "iot:Connect", "Resource": "*",
         "Condition": {"ForAnyValue:StringEquals": {"iot:ConnectAttributes": ["LastWill"]}}},
        {"Effect": "Deny", "Action": "iot:Connect", "Resource": f"{ARN}:client/ephemeral-*",
         "Condition": {"ForAnyValue:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}}))
    expiry = {"session_expiry": 300} if version == 5 else {}
    plain = shoal.client(version=version, client_id=unique("ephemeral"))
    assert plain.connack.reason_code == 0
    persistent = Client(shoal, version=version, client_id=unique("ephemeral"), clean=False, expect_success=False,
                        **expiry)
    shoal.track(persistent)
    assert persistent.connack is not None and persistent.connack.reason_code != 0, \
        "a persistent session was allowed although the policy denies PersistentConnect for ephemeral-*"
    elsewhere = shoal.client(version=version, client_id=unique("durable"), clean=False, **expiry)
    assert elsewhere.connack.reason_code == 0
    willing = Client(shoal, version=version, client_id=unique("durable"), expect_success=False,
                     will={"topic": "wills/x", "payload": b"gone"})
    shoal.track(willing)
    assert willing.connack is not None and willing.connack.reason_code != 0, \
        "a CONNECT with a will was allowed although the policy denies LastWill"
