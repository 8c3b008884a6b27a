"""The operator CLI for identities: `shoal cert|ca|policy|thing ...` against a running shoal.

The certificate `shoal cert create --out DIR` writes is used by mosquitto_pub/mosquitto_sub,
so the files are exactly what a device needs; errors exit non-zero with the server's message.
"""

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import Shoal

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")

ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}


def cli(s: Shoal, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = s.cli_env()
    p = subprocess.run([s.binary, *args], input=stdin, capture_output=True, text=True, env=env, timeout=30)
    if check:
        assert p.returncode == 0, f"shoal {' '.join(args)} exited {p.returncode}: {p.stderr}"
    return p


def cli_json(s: Shoal, *args: str, stdin: str | None = None) -> dict:
    return json.loads(cli(s, *args, stdin=stdin).stdout)


def mosquitto_roundtrip(s: Shoal, files: dict, client_id: str, topic: str) -> tuple[int, str]:
    """Subscribes and publishes one message with the certificate; returns (pub exit code, received)."""
    tls = ["--cafile", files["rootCa"], "--cert", files["certificate"], "--key", files["privateKey"]]
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(s.mqtts_port), *tls,
                            "-i", client_id + "-sub", "-t", topic, "-C", "1", "-W", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(s.mqtts_port), *tls,
                              "-i", client_id, "-t", topic, "-m", "hello", "-q", "1"],
                             capture_output=True, text=True, timeout=15)
        out, _ = sub.communicate(timeout=15)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    return pub.returncode, out.strip()


def test_cert_create_out_dir_gives_a_device_everything_it_needs(shoal: Shoal, tmp_path):
    created = cli_json(shoal, "cert", "create", "--common-name", "truck-1", "--out", str(tmp_path / "truck-1"))
    files = created["files"]
    assert "keyPair" not in created and "certificatePem" not in created, "the key must only go to the file"
    for f in files.values():
        assert os.path.getsize(f) > 0, f
    assert os.stat(files["privateKey"]).st_mode & 0o077 == 0, "the private key must be readable by its owner only"
    assert "BEGIN CERTIFICATE" in open(files["rootCa"]).read()

    doc = tmp_path / "allow.json"
    doc.write_text(json.dumps(ALLOW_ALL))
    cli(shoal, "policy", "create", "cli-all", "--document", str(doc))
    cli(shoal, "policy", "attach", "cli-all", created["certificateId"])
    targets = cli_json(shoal, "policy", "targets", "cli-all")["targets"]
    assert targets == [created["certificateArn"]]

    rc, got = mosquitto_roundtrip(shoal, files, "truck-1", "fleet/truck-1/telemetry")
    assert rc == 0 and got == "hello", f"mosquitto over mTLS with the CLI's files: rc={rc} got={got!r}"

    # Revoked through the CLI: the same files no longer connect.
    cli(shoal, "cert", "revoke", created["certificateId"])
    assert cli_json(shoal, "cert", "describe", created["certificateId"])["certificateDescription"]["status"] == "REVOKED"
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(shoal.mqtts_port),
                          "--cafile", files["rootCa"], "--cert", files["certificate"], "--key", files["privateKey"],
                          "-i", "truck-1", "-t", "x", "-m", "x"], capture_output=True, text=True, timeout=15)
    assert pub.returncode != 0, "a revoked certificate must be refused"


def test_cert_sign_csr_from_openssl(shoal: Shoal, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, csr, crt = tmp_path / "dev.key", tmp_path / "dev.csr", tmp_path / "dev.crt"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", "/CN=sensor-9"], check=True, capture_output=True)
    signed = cli_json(shoal, "cert", "sign-csr", "--csr", str(csr), "--out", str(crt), "--thing", "sensor-9")
    assert signed["status"] == "ACTIVE" and signed["file"] == str(crt)
    text = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-subject"], capture_output=True,
                          text=True, check=True).stdout
    assert "sensor-9" in text
    assert cli_json(shoal, "thing", "describe", "sensor-9")["thingName"] == "sensor-9", "--thing registers the thing"
    assert cli_json(shoal, "thing", "principals", "sensor-9")["principals"] == [signed["certificateArn"]]
    ca = tmp_path / "ca.pem"
    cli(shoal, "ca", "get", "--out", str(ca))
    cli(shoal, "policy", "create", "csr-all", "--document", "-", stdin=json.dumps(ALLOW_ALL))
    cli(shoal, "policy", "attach", "csr-all", signed["certificateId"])
    files = {"rootCa": str(ca), "certificate": str(crt), "privateKey": str(key)}
    rc, got = mosquitto_roundtrip(shoal, files, "sensor-9", "plant/sensor-9")
    assert rc == 0 and got == "hello"


def test_policy_versions_through_the_cli(shoal: Shoal, tmp_path):
    cli(shoal, "policy", "create", "p", "--document", "-", stdin=json.dumps(ALLOW_ALL))
    narrower = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}
    v2 = cli_json(shoal, "policy", "create-version", "p", "--document", "-", "--set-default",
                  stdin=json.dumps(narrower))
    assert v2["policyVersionId"] == "2" and v2["isDefaultVersion"] is True
    assert json.loads(cli_json(shoal, "policy", "get", "p")["policyDocument"]) == narrower
    cli(shoal, "policy", "set-default", "p", "1")
    assert cli_json(shoal, "policy", "get", "p")["defaultVersionId"] == "1"
    cli(shoal, "policy", "delete-version", "p", "2")
    assert [p["policyName"] for p in cli_json(shoal, "policy", "list")["policies"]] == ["p"]


def test_cli_errors_exit_non_zero_with_the_servers_message(shoal: Shoal):
    p = cli(shoal, "cert", "describe", "0" * 64, check=False)
    assert p.returncode != 0
    assert "ResourceNotFoundException" in p.stderr and p.stdout == ""

    p = cli(shoal, "policy", "create", "bad", "--document", "-", stdin='{"Version": "2012-10-17", "Statement": 3}',
            check=False)
    assert p.returncode != 0 and "MalformedPolicyException" in p.stderr, p.stderr

    p = cli(shoal, "policy", "create", "bad", "--document", "-", stdin="not json", check=False)
    assert p.returncode != 0 and "not JSON" in p.stderr

    p = subprocess.run([shoal.binary, "cert", "list", "--endpoint", "http://127.0.0.1:9"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode != 0 and "cannot reach Shoal" in p.stderr


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_identities_survive_a_restart(make_shoal, redis_url, store, tmp_path):
    s = make_shoal("--store", redis_url if store == "redis" else "embedded")
    created = cli_json(s, "cert", "create", "--common-name", "dev-r", "--out", str(tmp_path / "dev-r"))
    cli(s, "policy", "create", "keep", "--document", "-", stdin=json.dumps(ALLOW_ALL))
    cli(s, "policy", "attach", "keep", created["certificateId"])
    revoked = cli_json(s, "cert", "create", "--common-name", "dev-x", "--out", str(tmp_path / "dev-x"))
    cli(s, "policy", "attach", "keep", revoked["certificateId"])
    cli(s, "cert", "revoke", revoked["certificateId"])
    s.restart()
    assert cli_json(s, "policy", "targets", "keep")["targets"] == sorted(
        [created["certificateArn"], revoked["certificateArn"]])
    rc, got = mosquitto_roundtrip(s, created["files"], "dev-r", "after/restart")
    assert rc == 0 and got == "hello", "the certificate and its policy must survive a restart"
    x = revoked["files"]
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(s.mqtts_port), "--cafile", x["rootCa"],
                          "--cert", x["certificate"], "--key", x["privateKey"], "-i", "dev-x", "-t", "t", "-m", "m"],
                         capture_output=True, text=True, timeout=15)
    assert pub.returncode != 0, "a revoked certificate stays revoked after a restart"
