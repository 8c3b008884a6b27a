"""Helpers for the plugin and rules tests: raw HTTP to the management API (`http()`, `ok()`),
the WebAssembly components of `plugins/dist/` (`component()`, `upload()`, `invoke()`), the
`shoal` CLI (`cli()`), and the watched plugin directory (`watch_dir()`, `drop_plugin()`,
`wait_active()`).

The components are the release builds in `plugins/dist/` (`plugins/build.sh`; `tests/run-all.sh`
builds them before pytest); a test that needs a missing one is skipped.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, Shoal

DIST = REPO / "plugins" / "dist"

# Hostile calls fail on purpose: keep the version from being suspended mid-test, and give a memory
# hog or a huge output time to meet its own limit rather than the deadline on a busy machine.
LENIENT = {"deadline_ms": 1000, "max_consecutive_failures": 1000}


def component(name: str) -> bytes:
    path = DIST / f"{name}.wasm"
    if not path.is_file():
        pytest.skip(f"no {path}: run plugins/build.sh")
    return path.read_bytes()


def component_path(name: str) -> str:
    component(name)
    return str(DIST / f"{name}.wasm")


# -- HTTP ------------------------------------------------------------------------------------------

class Answer:
    """One HTTP answer: status, headers (lower-case names) and the body parsed as JSON (None if
    empty)."""

    def __init__(self, status: int, headers: dict[str, str], raw: bytes):
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    @property
    def error_type(self) -> str:
        return self.headers.get("x-amzn-errortype", "")

    @property
    def message(self) -> str:
        return (self.json or {}).get("message", "") if isinstance(self.json, dict) else ""

    def __repr__(self) -> str:
        return f"<{self.status} {self.error_type} {self.raw[:500]!r}>"


def http(s: Shoal, method: str, path: str, body: object = None, *, data: bytes | None = None,
         content_type: str | None = None, timeout: float = 30) -> Answer:
    """`body` is sent as JSON; `data` as raw bytes with `content_type`."""
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        content_type = "application/json"
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(f"http://{s.host}:{s.http_port}{path}", method=method, data=data,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def ok(a: Answer, status: int = 200) -> dict:
    assert a.status == status, a
    return a.json


# -- plugins over the API --------------------------------------------------------------------------

def upload(s: Shoal, plugin: str, wasm: str, config: dict | None = None, activate: bool = True) -> dict:
    body: dict = {"wasmBase64": base64.b64encode(component(wasm)).decode(), "activate": activate}
    if config is not None:
        body["config"] = config
    return ok(http(s, "POST", f"/api/v1/plugins/{plugin}/versions", body), 201)


def invoke(s: Shoal, plugin: str, topic: str, payload: object, version: int | None = None, **extra) -> dict:
    """`payload` is sent as text (a dict is JSON-encoded first)."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    q = f"?version={version}" if version is not None else ""
    return ok(http(s, "POST", f"/api/v1/plugins/{plugin}/invoke{q}", {"topic": topic, "payload": text, **extra}))


def settings(**kv: object) -> list[list[str]]:
    return [[k, str(v)] for k, v in kv.items()]


def echo_version(outcome: dict) -> str:
    """The `version` setting of the echo fixture that answered."""
    assert outcome["outcome"] == "ok", outcome
    (action,) = outcome["actions"]
    return json.loads(action["payload"])["version"]


def versions(s: Shoal, plugin: str) -> dict[int, dict]:
    return {v["version"]: v for v in ok(http(s, "GET", f"/api/v1/plugins/{plugin}/versions"))["versions"]}


# -- CLI -------------------------------------------------------------------------------------------

def cli(s: Shoal, *args: str, check: bool = True, stdin: str = "") -> subprocess.CompletedProcess:
    """`shoal ARGS... --endpoint <this server>`, e.g. cli(s, "plugin", "list")."""
    p = subprocess.run([s.binary, *args, "--endpoint", f"http://{s.host}:{s.http_port}"],
                       input=stdin, capture_output=True, text=True, timeout=60, env=s.cli_env())
    if check:
        assert p.returncode == 0, f"shoal {' '.join(args)} exited {p.returncode}: {p.stderr}"
    return p


# -- the watched directory -------------------------------------------------------------------------

def watch_dir(s: Shoal) -> Path:
    """`DATA/plugins/watch/` (the server creates it at start)."""
    return Path(s.data_dir) / "plugins" / "watch"


def drop_plugin(s: Shoal, name: str, wasm: bytes, config: dict | None = None) -> None:
    """Puts `NAME.json` (first, so the watcher never sees the component without it) and then
    `NAME.wasm` into the watched directory, each written beside it and renamed into place as a
    deployment tool would."""
    d = watch_dir(s)
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        tmp = d / f".{name}.json.tmp"
        tmp.write_text(json.dumps(config))
        os.replace(tmp, d / f"{name}.json")
    tmp = d / f".{name}.wasm.tmp"
    tmp.write_bytes(wasm)
    os.replace(tmp, d / f"{name}.wasm")


def active_version(s: Shoal, plugin: str) -> int | None:
    """The plugin's active version, None while it has none or does not exist."""
    a = http(s, "GET", f"/api/v1/plugins/{plugin}")
    if a.status == 404:
        return None
    return ok(a)["health"]["active_version"]


def wait_active(s: Shoal, plugin: str, version: int, timeout: float = 15.0) -> dict:
    """Waits until `version` is the plugin's active one; returns `GET /api/v1/plugins/NAME`."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = active_version(s, plugin)
        if seen == version:
            return ok(http(s, "GET", f"/api/v1/plugins/{plugin}"))
        time.sleep(0.1)
    raise AssertionError(f"plugin {plugin!r}: active version {seen}, not {version}, after {timeout}s:\n{s.tail()}")
