"""Helpers for the identity tests: the /api/v1 management API, certificates made with the
`openssl` command line only (`req -x509`, `x509 -req`, and `ca -startdate/-enddate` for validity
windows), TLS clients with a client certificate (paho with ALPN, raw sockets), the broker log,
and policy documents.

Everything here talks to a real `shoal` (the conftest `Shoal`) and only uses its public surface:
the HTTP API, the MQTT/TLS listener and its log file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import raw_mqtt as raw
from mqtt_helpers import V5, Client, unique

REGION, ACCOUNT = "us-east-1", "000000000000"   # shoal's defaults (--region / --account)
ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}"


# -- the management API -------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: Any
    headers: dict

    @property
    def error_type(self) -> str | None:
        return self.headers.get("x-amzn-errortype")


class Api:
    """The /api/v1 identity API of one broker."""

    def __init__(self, broker: Any):
        self.broker = broker

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.broker.host}:{self.broker.http_port}{path}",
                                     method=method, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read()
                return Reply(r.status, json.loads(text) if text else {},
                             {k.lower(): v for k, v in r.headers.items()})
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                parsed = json.loads(text) if text else {}
            except ValueError:
                parsed = {"raw": text.decode(errors="replace")}
            return Reply(e.code, parsed, {k.lower(): v for k, v in e.headers.items()})

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        r = self.call(method, path, body)
        assert r.status == 200, f"{method} {path} -> {r.status} {r.body}"
        return r.body

    # certificates
    def create_cert(self, thing: str | None = None, common_name: str | None = None,
                    active: bool = True) -> dict:
        body: dict = {"setAsActive": active}
        if thing:
            body["thingName"] = thing
        if common_name:
            body["commonName"] = common_name
        return self.ok("POST", "/api/v1/certificates", body)

    def cert_from_csr(self, csr_pem: str, active: bool = True) -> dict:
        return self.ok("POST", "/api/v1/certificates/from-csr",
                       {"certificateSigningRequest": csr_pem, "setAsActive": active})

    def register_cert(self, pem: str, active: bool = False) -> Reply:
        return self.call("POST", "/api/v1/certificates/register", {"certificatePem": pem, "setAsActive": active})

    def set_status(self, cert_id: str, status: str) -> Reply:
        return self.call("PUT", f"/api/v1/certificates/{cert_id}/status", {"newStatus": status})

    def register_ca(self, pem: str, active: bool = True) -> dict:
        return self.ok("POST", "/api/v1/ca-certificates", {"caCertificate": pem, "setAsActive": active})

    def shoal_ca_pem(self) -> str:
        return self.ok("GET", "/api/v1/ca")["certificatePem"]

    # policies
    def create_policy(self, name: str, document: Any) -> Reply:
        return self.call("POST", "/api/v1/policies", {"policyName": name, "policyDocument": document})

    def policy(self, name: str, document: Any) -> str:
        r = self.create_policy(name, document)
        assert r.status == 200, f"create policy {name} -> {r.status} {r.body}"
        return name

    def attach(self, policy: str, cert_id: str) -> Reply:
        return self.call("POST", f"/api/v1/policies/{policy}/targets", {"target": cert_id})

    def detach(self, policy: str, cert_id: str) -> Reply:
        return self.call("DELETE", f"/api/v1/policies/{policy}/targets/{cert_id}")

    def attach_thing(self, thing: str, cert_id: str) -> None:
        self.ok("POST", f"/api/v1/things/{thing}/principals", {"principal": cert_id})


def doc(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(actions: str | list, resources: str | list) -> dict:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


def deny(actions: str | list, resources: str | list) -> dict:
    return {"Effect": "Deny", "Action": actions, "Resource": resources}


ALLOW_ALL = doc(allow("iot:*", "*"))


# -- devices ------------------------------------------------------------------------------------

@dataclass
class Device:
    cert_id: str
    crt: str
    key: str
    thing: str | None = None

    @property
    def pair(self) -> tuple[str, str]:
        return (self.crt, self.key)


def workdir(broker: Any) -> Path:
    """A scratch directory inside the broker's temp dir (removed with it at teardown)."""
    d = Path(broker.base) / "pki"
    d.mkdir(exist_ok=True)
    return d


def issue_device(broker: Any, api: Api, *, thing: str | None = None, policy_doc: Any = ALLOW_ALL,
                 policy_name: str | None = None) -> Device:
    """A shoal-issued certificate (attached to `thing` when given) with a fresh policy attached
    (none when policy_doc is None); its PEM files are written to the broker's scratch dir."""
    cert = api.create_cert(thing=thing, common_name=thing or unique("dev"))
    d = workdir(broker)
    name = thing or cert["certificateId"][:16]
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    crt.write_text(cert["certificatePem"])
    key.write_text(cert["keyPair"]["PrivateKey"])
    os.chmod(key, 0o600)
    if policy_doc is not None:
        pname = api.policy(policy_name or unique("pol"), policy_doc)
        r = api.attach(pname, cert["certificateId"])
        assert r.status == 200, r.body
    return Device(cert["certificateId"], str(crt), str(key), thing)


# -- openssl ------------------------------------------------------------------------------------

def openssl(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    p = subprocess.run(["openssl", *args], cwd=cwd, input=stdin, capture_output=True, timeout=30)
    assert p.returncode == 0, f"openssl {' '.join(args)} failed ({p.returncode}): {p.stderr.decode()}"
    return p.stdout.decode()


DEVICE_EXT = "\n".join([
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage=clientAuth",
    "subjectKeyIdentifier=hash",
    "authorityKeyIdentifier=keyid",
]) + "\n"


@dataclass
class OpensslCa:
    crt: Path
    key: Path

    @property
    def pem(self) -> str:
        return self.crt.read_text()


def openssl_ca(d: Path, name: str) -> OpensslCa:
    """A self-signed root CA (EC P-256) made with `openssl req -x509`."""
    key, crt = d / f"{name}-ca.key", d / f"{name}-ca.crt"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    openssl("req", "-x509", "-new", "-key", str(key), "-sha256", "-days", "30", "-subj", f"/O=Pytest/CN={name} root",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", str(crt))
    return OpensslCa(crt, key)


def openssl_key_csr(d: Path, cn: str) -> tuple[Path, Path]:
    """An EC P-256 key and a CSR for CN=cn, made with `openssl`."""
    key, csr = d / f"{cn}.key", d / f"{cn}.csr"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr))
    return key, csr


def openssl_sign(d: Path, ca: OpensslCa, csr: Path, cn: str, days: int = 30) -> Path:
    """`openssl x509 -req` signs the CSR with the CA (a v3 client certificate)."""
    ext, crt = d / f"{cn}.ext", d / f"{cn}.crt"
    ext.write_text(DEVICE_EXT)
    serial = "0x" + os.urandom(8).hex()
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.crt), "-CAkey", str(ca.key), "-set_serial", serial,
            "-days", str(days), "-sha256", "-extfile", str(ext), "-out", str(crt))
    return crt


def openssl_device(d: Path, ca: OpensslCa, cn: str) -> Device:
    key, csr = openssl_key_csr(d, cn)
    crt = openssl_sign(d, ca, csr, cn)
    return Device("", str(crt), str(key))


def cert_with_validity(d: Path, ca: OpensslCa, cn: str, not_before: _dt.datetime,
                       not_after: _dt.datetime) -> Device:
    """A device certificate with an explicit validity window (in the past or the future), signed
    by an openssl-made CA with `openssl ca -startdate -enddate` (OpenSSL 3.0's `x509 -req` has no
    -not_before/-not_after)."""
    key, csr = openssl_key_csr(d, cn)
    cadir = d / f"{cn}-ca-db"
    (cadir / "new").mkdir(parents=True, exist_ok=True)
    (cadir / "index.txt").write_text("")
    (cadir / "serial").write_text(os.urandom(8).hex().upper() + "\n")
    cnf, ext, crt = cadir / "ca.cnf", cadir / "device.ext", d / f"{cn}.crt"
    cnf.write_text("\n".join([
        "[ca]", "default_ca = dflt",
        "[dflt]", f"database = {cadir}/index.txt", f"new_certs_dir = {cadir}/new", f"serial = {cadir}/serial",
        "default_md = sha256", "policy = any", "unique_subject = no", "copy_extensions = none",
        "[any]", "commonName = supplied", "",
    ]))
    ext.write_text(DEVICE_EXT)
    fmt = "%Y%m%d%H%M%SZ"
    openssl("ca", "-batch", "-notext", "-config", str(cnf), "-cert", str(ca.crt), "-keyfile", str(ca.key),
            "-in", str(csr), "-out", str(crt), "-extfile", str(ext),
            "-startdate", not_before.astimezone(_dt.timezone.utc).strftime(fmt),
            "-enddate", not_after.astimezone(_dt.timezone.utc).strftime(fmt))
    return Device("", str(crt), str(key))


def pubkey_of(path: str, is_key: bool) -> str:
    """The SubjectPublicKeyInfo (PEM) of a certificate or a private key, via openssl."""
    if is_key:
        return openssl("pkey", "-in", path, "-pubout")
    return openssl("x509", "-in", path, "-noout", "-pubkey")


# -- TLS clients --------------------------------------------------------------------------------

def tls_context(broker: Any, device: Device | None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=broker.ca_path)
    if device is not None:
        ctx.load_cert_chain(device.crt, device.key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class TlsClient(Client):
    """mqtt_helpers.Client over mutual TLS with an explicit device certificate and optional ALPN."""

    def __init__(self, broker: Any, device: Device, *, alpn: list[str] | None = None, **kw: Any):
        self.device = device
        self.alpn = alpn
        super().__init__(broker, tls=True, client_cert=device.pair, **kw)

    def _new_paho(self):  # noqa: ANN202 - paho client
        self.tls = False  # build the paho client without paho's own tls_set ...
        try:
            c = super()._new_paho()
        finally:
            self.tls = True
        c.tls_set_context(tls_context(self.broker, self.device, self.alpn))  # ... and use ours
        return c

    def selected_alpn(self) -> str | None:
        assert self._c is not None
        sock = self._c.socket()
        return sock.selected_alpn_protocol() if isinstance(sock, ssl.SSLSocket) else None


def tls_client(broker: Any, device: Device, **kw: Any) -> TlsClient:
    """A connected TlsClient, closed at teardown."""
    return broker.track(TlsClient(broker, device, **kw))


@dataclass
class Probe:
    """How a raw TLS + CONNECT attempt ended."""

    stage: str            # "handshake" (TLS refused), "connack" (got a CONNACK), "closed" (no CONNACK)
    detail: str
    connack_rc: int | None = None
    alpn: str | None = None

    def __str__(self) -> str:
        rc = "" if self.connack_rc is None else f" rc={self.connack_rc:#x}"
        return f"<{self.stage}{rc}: {self.detail}>"


def probe(broker: Any, device: Device | None, client_id: str, version: int = 4,
          alpn: list[str] | None = None, timeout: float = 5.0) -> Probe:
    """Opens a TLS connection (with the device certificate, if any), sends CONNECT and reads the
    answer. A refused client certificate shows up as an SSL error during the handshake or (TLS
    1.3: the server checks the client certificate after the client considers the handshake done)
    on the first read, before any MQTT byte."""
    ctx = tls_context(broker, device, alpn)
    s = socket.create_connection((broker.host, broker.mqtts_port), timeout=timeout)
    try:
        try:
            t = ctx.wrap_socket(s, server_hostname="localhost")
        except (ssl.SSLError, ConnectionError) as e:
            return Probe("handshake", f"{type(e).__name__}: {e}")
        with t:
            chosen = t.selected_alpn_protocol()
            try:
                t.sendall(raw.connect(client_id, version=version))
                buf = b""
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if len(buf) >= 2:
                        try:
                            length, hdr = raw.read_varint(buf, 1)
                        except IndexError:
                            length, hdr = None, 0
                        if length is not None and len(buf) >= hdr + length:
                            break
                    chunk = t.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            except ssl.SSLError as e:
                return Probe("handshake", f"SSLError after handshake: {e}", alpn=chosen)
            except (ConnectionError, socket.timeout) as e:
                return Probe("closed", f"{type(e).__name__}: {e}", alpn=chosen)
            if len(buf) >= 2 and buf[0] == 0x20:
                length, hdr = raw.read_varint(buf, 1)
                body = buf[hdr:hdr + length]
                if len(body) >= 2:
                    return Probe("connack", body.hex(), connack_rc=body[1], alpn=chosen)
            return Probe("closed", f"read {buf!r}", alpn=chosen)
    finally:
        s.close()


NOT_AUTHORIZED = {4: 0x05, 5: 0x87}   # CONNACK code: v3.1.1 "not authorized", v5 0x87


def assert_refused_at_connack(p: Probe, version: int = 4) -> None:
    assert p.stage == "connack" and p.connack_rc == NOT_AUTHORIZED[version], \
        f"expected TLS to succeed and CONNACK {NOT_AUTHORIZED[version]:#x} (not authorized), got {p}"


def assert_refused_at_handshake(p: Probe) -> None:
    assert p.stage == "handshake", f"expected the TLS handshake to be refused, got {p}"


def assert_accepted(p: Probe) -> None:
    assert p.stage == "connack" and p.connack_rc == 0, f"expected CONNACK 0, got {p}"


# -- the broker log -----------------------------------------------------------------------------

def log_lines(broker: Any, *needles: str, timeout: float = 2.0) -> list[str]:
    """Lines of the broker's log (stdout+stderr) containing every needle; waits up to timeout
    for at least one such line (logging is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        text = Path(broker.log_path).read_text(errors="replace")
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        hits = [ln for ln in text.splitlines() if all(n in ln for n in needles)]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(0.05)


def v5(version: int) -> bool:
    return version == V5
