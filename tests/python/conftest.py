"""Fixtures: a fresh Shoal broker child process per test, on ports picked by the OS.

`shoal` is a broker with default limits; `make_shoal(*args)` starts one with extra command-line
arguments (e.g. `make_shoal("--max-payload-size", "1024")`). Each broker lives in its own
temporary data directory, removed at teardown; its stderr goes to a file whose tail is attached
to the report of a failing test. Every test has a timeout (pytest-timeout when installed, a
SIGALRM guard otherwise).

HTTP requests need SigV4 (issue #7). Every broker started here shares one key-encryption key
(like the nodes of one deployment), and `Shoal.credentials` is the first admin key the broker
(or an earlier one on the same store) wrote to its data dir. `urllib.request.urlopen` is wrapped
so that a request to a live broker's HTTP port is signed with those credentials, unless it
carries the header `X-Test-Unsigned: 1` (removed before sending); the SigV4 tests use that, or
`http.client`, to send unsigned and badly signed requests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mqtt_helpers import Client  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TEST_TIMEOUT = 60  # seconds, per test
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
_LIVE: list["Shoal"] = []
_KEK_DIR = Path(tempfile.mkdtemp(prefix="shoal-test-kek-"))
_KEK = _KEK_DIR / "access-keys.kek"
_KEK.write_text("5ea1" * 16)
# Admin credentials by store (`--store` argument): a second node on a shared Redis finds the
# store's admin key already there and writes no credentials file of its own.
_CREDS_BY_STORE: dict[str, tuple[str, str]] = {}


def find_binary() -> str:
    """SHOAL_BIN, else $CARGO_TARGET_DIR/debug/shoal, else ~/.cache/shoal-target/debug/shoal,
    else <repo>/target/debug/shoal."""
    tried = []
    env = os.environ.get("SHOAL_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        pytest.exit(f"SHOAL_BIN={env} is not an executable file", returncode=4)
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "shoal")
    candidates.append(Path.home() / ".cache" / "shoal-target" / "debug" / "shoal")
    candidates.append(REPO / "target" / "debug" / "shoal")
    for c in candidates:
        tried.append(str(c))
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    pytest.exit(
        "shoal binary not found; build it with `cargo build -p shoal-server` or set SHOAL_BIN. Tried: "
        + ", ".join(tried),
        returncode=4,
    )
    raise AssertionError("unreachable")


class Shoal:
    """One broker child process and its data directory."""

    def __init__(self, binary: str, extra_args: list[str], name: str = "shoal"):
        self.binary = binary
        self.extra_args = list(extra_args)
        self.base = Path(tempfile.mkdtemp(prefix="shoal-test-"))
        self.data_dir = self.base / "data"
        self.data_dir.mkdir()
        self.log_path = self.base / "stderr.log"
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.mqtt_port = self.mqtts_port = self.http_port = 0
        self.starts = 0
        self._clients: list[Client] = []

    @property
    def ca_path(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    def command(self) -> list[str]:
        return [
            self.binary, "serve",
            "--data-dir", str(self.data_dir),
            "--mqtt-listen", "127.0.0.1:0",
            "--mqtts-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            *([] if "--key-encryption-key-file" in self.extra_args else ["--key-encryption-key-file", str(_KEK)]),
            *self.extra_args,
        ]

    def _store_key(self) -> str:
        args = self.extra_args
        if "--store" in args and args.index("--store") + 1 < len(args):
            store = args[args.index("--store") + 1]
            if store.startswith("redis"):
                return store
        return f"data:{self.data_dir}"

    @property
    def credentials(self) -> tuple[str, str]:
        """(access key id, secret) of an admin key of this broker's store."""
        f = self.data_dir / "credentials"
        if f.exists():
            import configparser
            c = configparser.ConfigParser()
            c.read(f)
            creds = (c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"])
            _CREDS_BY_STORE[self._store_key()] = creds
            return creds
        creds = _CREDS_BY_STORE.get(self._store_key())
        if creds is None:
            raise AssertionError(f"no admin credentials for {self.name} (no {f}, no earlier node on its store)")
        return creds

    def boto3(self, service: str, **config):
        """A boto3 client (`iot` or `iot-data`) signing with the admin key."""
        import boto3
        from botocore.config import Config
        key, secret = self.credentials
        return boto3.client(service, endpoint_url=f"http://{self.host}:{self.http_port}", region_name="us-east-1",
                            aws_access_key_id=key, aws_secret_access_key=secret,
                            config=Config(**({"retries": {"total_max_attempts": 1}} | config)))

    def cli_env(self) -> dict:
        """Environment for `shoal` CLI subprocesses aimed at this broker."""
        key, secret = self.credentials
        return dict(os.environ, SHOAL_ENDPOINT=f"http://{self.host}:{self.http_port}",
                    AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)

    def start(self) -> None:
        ports_file = self.data_dir / "ports.json"
        if ports_file.exists():
            ports_file.unlink()
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        env = dict(os.environ)
        env.setdefault("SHOAL_LOG", os.environ.get("SHOAL_TEST_LOG", "info"))
        env["NO_COLOR"] = "1"
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        log.close()
        _LIVE.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal exited with {self.proc.returncode} during startup:\n{self.tail()}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    mqtt_addr, mqtts_addr, http_addr = ports["mqtt"], ports["mqtts"], ports["http"]
                    break
                except (ValueError, KeyError):
                    pass  # being written
            if time.monotonic() > deadline:
                raise RuntimeError(f"shoal wrote no ports.json within {START_TIMEOUT}s:\n{self.tail()}")
            time.sleep(0.02)
        self.host = mqtt_addr.rsplit(":", 1)[0]
        self.mqtt_port = int(mqtt_addr.rsplit(":", 1)[1])
        self.mqtts_port = int(mqtts_addr.rsplit(":", 1)[1])
        self.http_port = int(http_addr.rsplit(":", 1)[1])
        if (self.data_dir / "credentials").exists():
            _ = self.credentials  # remembered for later nodes on the same store

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM; returns the exit code (fails if it does not exit within the timeout)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise AssertionError(f"shoal did not exit within {timeout}s of SIGTERM:\n{self.tail()}")
            self.last_stop_secs = time.monotonic() - t0
        if self in _LIVE:
            _LIVE.remove(self)
        return self.proc.returncode

    def device_cert(self, thing: str) -> tuple[str, str]:
        """A device certificate issued by this shoal for `thing` (attached to the thing, with a
        policy allowing everything): paths of the certificate and key PEM files. Cached."""
        import json as _json
        import urllib.request as _rq
        cache = self.__dict__.setdefault("_device_certs", {})
        if thing in cache:
            return cache[thing]

        def call(method: str, path: str, body: dict) -> tuple[int, dict]:
            req = _rq.Request(f"http://{self.host}:{self.http_port}{path}", method=method,
                              data=_json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            try:
                with _rq.urlopen(req, timeout=10) as r:
                    return r.status, _json.loads(r.read() or b"{}")
            except _rq.HTTPError as e:  # type: ignore[attr-defined]
                return e.code, _json.loads(e.read() or b"{}")

        code, cert = call("POST", "/api/v1/certificates", {"thingName": thing, "commonName": thing})
        assert code == 200, cert
        code, body = call("POST", "/api/v1/policies", {"policyName": "pytest-allow-all", "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}})
        assert code in (200, 409), body
        code, body = call("POST", "/api/v1/policies/pytest-allow-all/targets", {"target": cert["certificateId"]})
        assert code == 200, body
        d = os.path.join(self.data_dir, "device-certs")
        os.makedirs(d, exist_ok=True)
        crt, key = os.path.join(d, f"{thing}.crt"), os.path.join(d, f"{thing}.key")
        with open(crt, "w") as f:
            f.write(cert["certificatePem"])
        with open(key, "w") as f:
            f.write(cert["keyPair"]["PrivateKey"])
        cache[thing] = (crt, key)
        return cache[thing]

    def restart(self) -> None:
        """SIGTERM (must exit 0 within 5 s), then start again on the same data dir, new ports."""
        rc = self.stop()
        assert rc == 0, f"shoal exited with {rc} after SIGTERM (expected 0):\n{self.tail()}"
        self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self in _LIVE:
            _LIVE.remove(self)

    def client(self, **kwargs) -> Client:
        """A connected test client, closed at teardown."""
        c = Client(self, **kwargs)
        self._clients.append(c)
        return c

    def track(self, c: Client) -> Client:
        self._clients.append(c)
        return c

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no stderr log)"
        return "\n".join(text.splitlines()[-lines:])


def sign_request(req, key: str, secret: str, service: str = "iot") -> None:
    """Adds SigV4 headers (botocore's signer) to a `urllib.request.Request`."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    headers = {k: v for k, v in req.header_items() if k.lower() != "host"}
    aws = AWSRequest(method=req.get_method(), url=req.full_url, data=req.data or b"", headers=headers)
    SigV4Auth(Credentials(key, secret), service, "us-east-1").add_auth(aws)
    for k in ("Authorization", "X-Amz-Date"):
        req.add_header(k, aws.headers[k])


_urlopen = urllib.request.urlopen


def _signing_urlopen(url, *args, **kwargs):
    req = url if isinstance(url, urllib.request.Request) else urllib.request.Request(url)
    if req.get_header("X-test-unsigned"):
        req.remove_header("X-test-unsigned")
        return _urlopen(req, *args, **kwargs)
    target = urllib.parse.urlsplit(req.full_url)
    for s in list(_LIVE):
        if target.port == s.http_port and target.path not in ("/health", "/metrics"):
            try:
                key, secret = s.credentials
            except AssertionError:
                break
            if target.query:
                # botocore signs a query written into the URL as it is, while SigV4 servers
                # (AWS's and Shoal's) re-encode it strictly: send it strictly encoded.
                q = "&".join("=".join(urllib.parse.quote(urllib.parse.unquote(x), safe="-_.~")
                                      for x in pair.split("=", 1))
                             for pair in target.query.split("&") if pair)
                req.full_url = urllib.parse.urlunsplit(target._replace(query=q))
            sign_request(req, key, secret)
            break
    return _urlopen(req, *args, **kwargs)


urllib.request.urlopen = _signing_urlopen


@pytest.fixture(scope="session")
def shoal_binary() -> str:
    return find_binary()


@pytest.fixture
def make_shoal(request, shoal_binary):
    """Factory: make_shoal(*extra_args) starts a broker with extra arguments."""
    instances: list[Shoal] = []
    request.node._shoal_instances = instances

    def factory(*args: str) -> Shoal:
        s = Shoal(shoal_binary, [str(a) for a in args], name=f"shoal{len(instances) or ''}")
        instances.append(s)
        s.start()
        return s

    yield factory
    for s in instances:
        s.close()


@pytest.fixture
def shoal(make_shoal) -> Shoal:
    """A fresh broker with default settings."""
    return make_shoal()


@pytest.fixture
def redis_url():
    """A private redis-server (no persistence) on a free port: its `redis://127.0.0.1:PORT/0` URL.
    Killed at teardown; the test is skipped when redis-server is not installed."""
    import socket

    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="shoal-redis-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with {proc.returncode} on port {port}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer PING on port {port} within 10s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(workdir, ignore_errors=True)


# -- reporting: attach the broker's stderr tail to failing tests -------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        for s in getattr(item, "_shoal_instances", []):
            report.sections.append((f"{s.name} stderr (tail, {s.log_path})", s.tail()))


# -- per-test timeout ----------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test timeout")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


class _TestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Fallback guard when pytest-timeout is not installed: SIGALRM ends a test that hangs."""
    if item.config.pluginmanager.hasplugin("timeout") or not hasattr(signal, "SIGALRM"):
        yield
        return
    marker = item.get_closest_marker("timeout")
    secs = marker.args[0] if marker and marker.args else DEFAULT_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise _TestTimeout(f"test exceeded its {secs}s timeout")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, secs)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def pytest_sessionfinish(session, exitstatus):
    for s in list(_LIVE):
        s.kill()
    shutil.rmtree(_KEK_DIR, ignore_errors=True)
