"""WebAssembly plugins on a running shoal: the management API under `/api/v1/plugins` and the
operator verbs `shoal plugin ...` that call it.

Upload, activate, invoke, roll back and delete versions; refused uploads (a component importing
`wasi:sockets`, bytes that are no component, bad names); hostile components (an infinite loop, a
panic, a memory hog, huge output) fail their call and leave the server answering; logs, replay
of a recording through a candidate version beside the active one, `/metrics`, a catalog that
survives a restart, and the watched directory (`DATA/plugins/watch/`: deploy by dropping files,
garbage refused and logged, an API rollback that sticks across a restart).

The components are the release builds in `plugins/dist/` (`plugins/build.sh`; `tests/run-all.sh`
builds them before pytest).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Shoal
from mqtt_helpers import wait_until
from plugin_helpers import (DIST, LENIENT, active_version, component, component_path, drop_plugin, echo_version,
                            http, invoke, ok, settings, upload, versions, wait_active, watch_dir)
import plugin_helpers

pytestmark = pytest.mark.skipif(not DIST.is_dir(), reason=f"no {DIST}: run plugins/build.sh")


def cli(s: Shoal, *args: str, check: bool = True, stdin: str = "") -> subprocess.CompletedProcess:
    """`shoal plugin ARGS...` against this server."""
    return plugin_helpers.cli(s, "plugin", *args, check=check, stdin=stdin)


def cli_json(s: Shoal, *args: str) -> dict:
    return json.loads(cli(s, *args).stdout)


# -- upload, activate, invoke ----------------------------------------------------------------------

THRESHOLD = {"settings": settings(field="temp", max=-15, republish="fleet/{thing}/alerts")}


def test_upload_activate_and_invoke_return_the_plugins_actions(shoal: Shoal):
    wasm = component("threshold-alert")
    v = upload(shoal, "cold-chain", "threshold-alert", THRESHOLD)
    assert v["plugin"] == "cold-chain" and v["version"] == 1
    assert v["activated"] is True and v["active"] is True
    assert v["size_bytes"] == len(wasm) and re.fullmatch(r"[0-9a-f]{64}", v["sha256"]), v
    assert v["config"]["settings"] == THRESHOLD["settings"]
    assert v["config"]["deadline_ms"] == 10, "unset fields take the defaults"
    assert v["loaded"]["world"] == "0.3.0", "the SDK targets the newest interface version"

    out = invoke(shoal, "cold-chain", "fleet/t1/telemetry", {"temp": -10})
    assert out["outcome"] == "ok", out
    alert, publish = out["actions"]
    assert alert["type"] == "alert" and alert["severity"].lower() == "warning"
    assert alert["title"] == "t1: temp -10 above -15" and alert["thing"] == "t1"
    assert publish["type"] == "publish" and publish["topic"] == "fleet/t1/alerts"
    assert publish["qos"] == 1 and publish["retain"] is False
    assert json.loads(publish["payload"])["value"] == -10

    # The registry thing of the connection wins over the topic level.
    out = invoke(shoal, "cold-chain", "fleet/t1/telemetry", {"temp": -1}, thingName="truck-9", clientId="c-9")
    assert out["actions"][0]["thing"] == "truck-9" and out["actions"][1]["topic"] == "fleet/truck-9/alerts"

    assert invoke(shoal, "cold-chain", "fleet/t1/telemetry", {"temp": -18}) == {"outcome": "ok", "actions": []}
    rejected = invoke(shoal, "cold-chain", "fleet/t1/telemetry", "hot")
    assert rejected["outcome"] == "rejected" and rejected["reason"], rejected

    health = ok(http(shoal, "GET", "/api/v1/plugins/cold-chain"))["health"]
    assert health["active_version"] == 1 and health["status"]["state"] == "healthy", health
    assert health["calls"]["invocations"] == 4 and health["calls"]["rejected"] == 1, health
    listed = ok(http(shoal, "GET", "/api/v1/plugins"))["plugins"]
    assert [p["plugin"] for p in listed] == ["cold-chain"]


def test_raw_upload_and_a_binary_payload(shoal: Shoal):
    """The other upload form: the component's bytes as the body, `?activate=true`."""
    a = http(shoal, "POST", "/api/v1/plugins/raw/versions?activate=true", data=component("echo"),
             content_type="application/wasm")
    v = ok(a, 201)
    assert v["version"] == 1 and v["active"] is True and v["config"]["settings"] == []
    # payloadBase64 in; the echo fixture republishes the (non-JSON) payload text as `seq`.
    body = {"topic": "in", "payloadBase64": base64.b64encode(b"17").decode()}
    out = ok(http(shoal, "POST", "/api/v1/plugins/raw/invoke", body))
    assert out["actions"][0]["topic"] == "echo/17" and echo_version(out) == "v0"


def test_versions_activate_rollback_and_delete(shoal: Shoal):
    upload(shoal, "hot-swap", "echo", {"settings": settings(version="v1")})
    v2 = upload(shoal, "hot-swap", "echo", {"settings": settings(version="v2")}, activate=False)
    assert v2["version"] == 2 and v2["activated"] is False and v2["active"] is False
    vs = versions(shoal, "hot-swap")
    assert sorted(vs) == [1, 2] and vs[1]["active"] and not vs[2]["active"]
    assert vs[1]["sha256"] == vs[2]["sha256"], "same component, different settings"

    seq = {"seq": 1}
    assert echo_version(invoke(shoal, "hot-swap", "in", seq)) == "v1"
    assert echo_version(invoke(shoal, "hot-swap", "in", seq, version=2)) == "v2", "a version by number"
    assert echo_version(invoke(shoal, "hot-swap", "in", seq)) == "v1", "...without activating it"

    assert ok(http(shoal, "POST", "/api/v1/plugins/hot-swap/versions/2/activate"))["active"] is True
    assert echo_version(invoke(shoal, "hot-swap", "in", seq)) == "v2"
    one = ok(http(shoal, "GET", "/api/v1/plugins/hot-swap/versions/2"))
    assert one["version"] == 2 and one["active"] is True

    back = ok(http(shoal, "POST", "/api/v1/plugins/hot-swap/rollback"))
    assert back["version"] == 1 and back["active"] is True
    assert echo_version(invoke(shoal, "hot-swap", "in", seq)) == "v1"

    a = http(shoal, "DELETE", "/api/v1/plugins/hot-swap/versions/1")
    assert a.status == 409 and a.error_type == "ConflictException", a
    a = http(shoal, "DELETE", "/api/v1/plugins/hot-swap/versions/2")
    assert a.status == 204 and a.raw == b"", a
    assert sorted(versions(shoal, "hot-swap")) == [1]
    assert http(shoal, "GET", "/api/v1/plugins/hot-swap/versions/2").status == 404
    a = http(shoal, "POST", "/api/v1/plugins/hot-swap/rollback")
    assert a.status == 409 and a.error_type == "ConflictException", f"nothing to roll back to: {a}"
    assert echo_version(invoke(shoal, "hot-swap", "in", seq)) == "v1"


def test_the_cli_deploys_activates_rolls_back_and_deletes(shoal: Shoal, tmp_path: Path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"deadline_ms": 50, "settings": [["field", "temp"]]}))
    v1 = cli_json(shoal, "deploy", "reefer", component_path("threshold-alert"), "--config", str(config),
                  "--set", "max=-15", "--activate")
    assert v1["version"] == 1 and v1["active"] is True
    assert v1["config"]["deadline_ms"] == 50
    assert v1["config"]["settings"] == [["field", "temp"], ["max", "-15"]], "--set appends to the file's"
    v2 = cli_json(shoal, "deploy", "reefer", component_path("threshold-alert"), "--set", "field=temp",
                  "--set", "max=-5", "--set", "severity=critical")
    assert v2["version"] == 2 and v2["active"] is False and v2["activated"] is False
    assert v2["config"]["deadline_ms"] == 10

    listed = cli_json(shoal, "list")["plugins"]
    assert [(p["plugin"], p["active_version"]) for p in listed] == [("reefer", 1)]
    shown = cli_json(shoal, "show", "reefer")
    assert shown["health"]["active_version"] == 1 and len(shown["versions"]) == 2
    assert [v["version"] for v in cli_json(shoal, "versions", "reefer")["versions"]] == [1, 2]

    reading = tmp_path / "reading.json"
    reading.write_text(json.dumps({"temp": -10}))
    out = cli_json(shoal, "invoke", "reefer", "--topic", "fleet/t3/telemetry", "--payload-file", str(reading))
    assert [a["title"] for a in out["actions"]] == ["t3: temp -10 above -15"]
    out = cli_json(shoal, "invoke", "reefer", "--topic", "fleet/t3/telemetry", "--payload", '{"temp":-10}',
                   "--version", "2")
    assert out == {"outcome": "ok", "actions": []}, "v2's limit is -5"
    out = cli_json(shoal, "invoke", "reefer", "--topic", "fleet/t3/telemetry", "--payload", "-",
                   "--thing", "truck-3", "--client-id", "dev-3")
    assert out["outcome"] == "rejected", "an empty payload is not JSON"

    assert cli_json(shoal, "activate", "reefer", "2")["active"] is True
    out = cli_json(shoal, "invoke", "reefer", "--topic", "fleet/t3/telemetry", "--payload", '{"temp":0}',
                   "--thing", "truck-3")
    (alert,) = out["actions"]
    assert alert["severity"].lower() == "critical" and alert["thing"] == "truck-3", alert

    assert cli_json(shoal, "rollback", "reefer")["version"] == 1
    p = cli(shoal, "delete", "reefer", "1", check=False)
    assert p.returncode != 0 and "409" in p.stderr and "ConflictException" in p.stderr, p.stderr
    p = cli(shoal, "delete", "reefer", "2")
    assert p.stdout.strip() == ""
    assert [v["version"] for v in cli_json(shoal, "versions", "reefer")["versions"]] == [1]


def test_cli_errors_exit_non_zero_with_the_servers_message(shoal: Shoal, tmp_path: Path):
    p = cli(shoal, "show", "nobody", check=False)
    assert p.returncode != 0 and p.stdout == ""
    assert "404" in p.stderr and "ResourceNotFoundException" in p.stderr, p.stderr
    p = cli(shoal, "deploy", "net", component_path("sockets"), check=False)
    assert p.returncode != 0 and "wasi:sockets" in p.stderr, p.stderr
    p = cli(shoal, "deploy", "x", str(tmp_path / "missing.wasm"), check=False)
    assert p.returncode != 0 and "missing.wasm" in p.stderr, p.stderr
    # Nothing listens here: a transport error, not a hang.
    p = subprocess.run([shoal.binary, "plugin", "list", "--endpoint", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "cannot reach" in p.stderr, p.stderr


# -- refused requests ------------------------------------------------------------------------------

def test_refused_uploads_and_bad_requests(shoal: Shoal):
    body = {"wasmBase64": base64.b64encode(component("sockets")).decode()}
    a = http(shoal, "POST", "/api/v1/plugins/net/versions", body)
    assert a.status == 400 and a.error_type == "InvalidRequestException", a
    assert "wasi:sockets" in a.message, a

    a = http(shoal, "POST", "/api/v1/plugins/junk/versions", data=b"this is not webassembly",
             content_type="application/octet-stream")
    assert a.status == 400 and a.error_type == "InvalidRequestException" and a.message, a
    a = http(shoal, "POST", "/api/v1/plugins/junk/versions", {"wasmBase64": "!!not base64!!"})
    assert a.status == 400, a
    a = http(shoal, "POST", "/api/v1/plugins/junk/versions",
             {"wasmBase64": base64.b64encode(component("echo")).decode(), "config": {"deadline_msec": 5}})
    assert a.status == 400, f"an unknown config field: {a}"

    for bad in ("bad.name", "x" * 65, "sp%20ace"):
        a = http(shoal, "POST", f"/api/v1/plugins/{bad}/versions",
                 {"wasmBase64": base64.b64encode(component("echo")).decode()})
        assert a.status == 400 and a.error_type == "InvalidRequestException", (bad, a)

    for method, path in [("GET", "/api/v1/plugins/nope"), ("GET", "/api/v1/plugins/nope/versions"),
                         ("GET", "/api/v1/plugins/nope/logs"), ("POST", "/api/v1/plugins/nope/rollback")]:
        a = http(shoal, method, path)
        assert a.status == 404 and a.error_type == "ResourceNotFoundException", (path, a)
    a = http(shoal, "POST", "/api/v1/plugins/nope/invoke", {"topic": "t", "payload": "x"})
    assert a.status == 404 and a.error_type == "ResourceNotFoundException", a

    upload(shoal, "there", "echo")
    assert http(shoal, "GET", "/api/v1/plugins/there/versions/7").status == 404
    assert http(shoal, "POST", "/api/v1/plugins/there/versions/7/activate").status == 404
    assert http(shoal, "POST", "/api/v1/plugins/there/invoke", {"payload": "no topic"}).status == 400
    assert http(shoal, "POST", "/api/v1/plugins/there/invoke", data=b"{", content_type="application/json").status == 400
    assert [p["plugin"] for p in ok(http(shoal, "GET", "/api/v1/plugins"))["plugins"]] == ["there"], \
        "refused uploads leave no plugin behind"


# -- hostile components ----------------------------------------------------------------------------

def test_an_infinite_loop_times_out_and_the_server_keeps_answering(shoal: Shoal):
    upload(shoal, "spin", "infinite-loop", {"settings": settings(trigger="spin")})
    started = time.monotonic()
    out = invoke(shoal, "spin", "loop/1", "spin")
    took = time.monotonic() - started
    assert out["outcome"] == "failed" and out["fault"]["kind"] == "timeout", out
    assert out["fault"]["message"], out
    assert took < 5, f"a 10 ms deadline took {took:.2f}s"
    h = http(shoal, "GET", "/health")
    assert h.status == 200, h
    # The looping instance was discarded; a fresh one serves the next message.
    out = invoke(shoal, "spin", "loop/1", "fine")
    assert out["outcome"] == "ok", out
    assert [(a["topic"], a["payload"]) for a in out["actions"]] == [("fixture/ok", "fine")], out
    health = ok(http(shoal, "GET", "/api/v1/plugins/spin"))["health"]
    assert health["calls"]["failures"] == {"timeout": 1}, health
    assert health["last_fault"], health


def test_a_panic_is_a_trap_and_goes_to_the_log(shoal: Shoal):
    upload(shoal, "boom", "panic", {"settings": settings(trigger="boom")})
    out = invoke(shoal, "boom", "p/1", "boom")
    assert out["outcome"] == "failed" and out["fault"]["kind"] == "trap", out
    assert "as designed" in out["fault"]["message"], out
    lines = ok(http(shoal, "GET", "/api/v1/plugins/boom/logs"))["lines"]
    assert any(ln["level"] == "warn" and "panicked" in ln["message"] for ln in lines), lines
    assert invoke(shoal, "boom", "p/1", "calm")["actions"][0]["topic"] == "fixture/ok"


@pytest.mark.parametrize("wasm, extra, kind", [
    ("memory-hog", {}, "memory_limit"),
    ("stack-overflow", {}, "trap"),
    ("huge-output", {"count": "101"}, "output_limit"),
], ids=["memory-hog", "stack-overflow", "huge-output"])
def test_hostile_components_fail_their_call_only(shoal: Shoal, wasm: str, extra: dict, kind: str):
    upload(shoal, "hostile", wasm, {**LENIENT, "settings": settings(**extra)})
    upload(shoal, "friend", "echo")
    for _ in range(2):
        out = invoke(shoal, "hostile", "h/1", "x")
        assert out["outcome"] == "failed" and out["fault"]["kind"] == kind, out
        assert echo_version(invoke(shoal, "friend", "in", {"seq": 1})) == "v0"
    assert http(shoal, "GET", "/health").status == 200


# -- logs, replay, metrics -------------------------------------------------------------------------

def test_logs_over_http_and_the_cli(shoal: Shoal):
    upload(shoal, "hello", "hello-plugin", {"settings": settings(max=-15)})
    before_ms = int(time.time() * 1000)
    for temp in (-10, -20, -5):
        assert invoke(shoal, "hello", "fleet/t1/telemetry", {"temp": temp})["outcome"] == "ok"
    lines = ok(http(shoal, "GET", "/api/v1/plugins/hello/logs"))["lines"]
    assert [(ln["version"], ln["level"], ln["message"]) for ln in lines] == [
        (1, "info", "t1 at -10 > -15"), (1, "info", "t1 at -5 > -15")], lines
    assert all(before_ms - 1000 <= ln["at_ms"] <= time.time() * 1000 + 1000 for ln in lines), lines
    assert len(ok(http(shoal, "GET", "/api/v1/plugins/hello/logs?limit=1"))["lines"]) == 1

    text = cli(shoal, "logs", "hello").stdout.splitlines()
    assert len(text) == 2, text
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(stamp + r" v1 INFO +t1 at -10 > -15", text[0]), text
    assert re.fullmatch(stamp + r" v1 INFO +t1 at -5 > -15", text[1]), text
    assert len(cli(shoal, "logs", "hello", "--limit", "1").stdout.splitlines()) == 1
    raw = json.loads(cli(shoal, "logs", "hello", "--json").stdout)
    assert raw["lines"] == lines


RECORDING = [
    {"topic": "fleet/t1/telemetry", "payload": json.dumps({"temp": -20})},  # both: nothing
    {"topic": "fleet/t2/telemetry", "payload": json.dumps({"temp": -10})},  # v1 alerts, v2 does not
    {"topic": "fleet/t3/telemetry", "payload": json.dumps({"temp": 0})},    # both alert, other limits
    {"topic": "fleet/t4/telemetry", "payload": "hot"},                      # both reject alike
]


def deploy_candidate(s: Shoal, plugin: str) -> None:
    upload(s, plugin, "threshold-alert", {"settings": settings(field="temp", max=-15)})
    upload(s, plugin, "threshold-alert", {"settings": settings(field="temp", max=-5)}, activate=False)


def test_replay_compares_a_candidate_with_the_active_version(shoal: Shoal):
    deploy_candidate(shoal, "cand")
    jsonl = "".join(json.dumps(m) + "\n" for m in RECORDING).encode()
    r = ok(http(shoal, "POST", "/api/v1/plugins/cand/replay?version=2", data=jsonl,
                content_type="application/x-ndjson"))
    assert r["candidate"] == 2 and r["active"] == 1
    assert r["summary"] == {"messages": 4, "same": 2, "different": 2}, r["summary"]
    by_line = {x["line"]: x for x in r["results"]}
    assert sorted(by_line) == [1, 2, 3, 4]
    assert [by_line[n]["same"] for n in (1, 2, 3, 4)] == [True, False, False, True]
    assert by_line[2]["topic"] == "fleet/t2/telemetry"
    assert by_line[2]["candidate"] == {"outcome": "ok", "actions": []}
    assert [a["title"] for a in by_line[2]["active"]["actions"]] == ["t2: temp -10 above -15"]
    assert by_line[4]["candidate"]["outcome"] == "rejected"
    # Replaying changed nothing: v1 is still the one serving.
    assert versions(shoal, "cand")[1]["active"] is True
    assert invoke(shoal, "cand", "fleet/t2/telemetry", {"temp": -10})["actions"], "v1 still alerts at -10"

    bad = b'{"topic":"a","payload":"1"}\n{"topic": \n'
    a = http(shoal, "POST", "/api/v1/plugins/cand/replay?version=2", data=bad, content_type="application/x-ndjson")
    assert a.status == 400 and "line 2" in a.message, a


def test_replay_through_the_cli(shoal: Shoal, tmp_path: Path):
    deploy_candidate(shoal, "cand")
    rec = tmp_path / "messages.jsonl"
    rec.write_text("".join(json.dumps(m) + "\n" for m in RECORDING))
    p = cli(shoal, "replay", "cand", "--version", "2", "--input", str(rec))
    lines = p.stdout.splitlines()
    assert lines[-1] == "4 messages, 2 same, 2 different (candidate v2 vs active v1)", p.stdout
    assert lines[0] == "line 2: fleet/t2/telemetry", p.stdout
    assert lines[1].startswith("- active:    ") and "t2: temp -10 above -15" in lines[1], p.stdout
    assert json.loads(lines[2].removeprefix("+ candidate: ")) == {"outcome": "ok", "actions": []}, p.stdout
    assert lines[3] == "line 3: fleet/t3/telemetry", p.stdout
    assert "above -15" in lines[4] and "above -5" in lines[5], p.stdout
    assert len(lines) == 7, p.stdout

    raw = json.loads(cli(shoal, "replay", "cand", "--version", "2", "--input", str(rec), "--json").stdout)
    assert raw["summary"] == {"messages": 4, "same": 2, "different": 2}
    same = cli(shoal, "replay", "cand", "--version", "1", "--input", "-", stdin=rec.read_text())
    assert same.stdout.splitlines()[-1].startswith("4 messages, 4 same, 0 different"), same.stdout

    rec.write_text('{"topic":"a","payload":"1"}\nnot json\n')
    p = cli(shoal, "replay", "cand", "--version", "2", "--input", str(rec), check=False)
    assert p.returncode != 0 and "400" in p.stderr and "line 2" in p.stderr, p.stderr


def test_metrics_count_plugin_calls(shoal: Shoal):
    upload(shoal, "metered", "threshold-alert", {"settings": settings(field="temp", max=-15)})
    for temp in (-10, -20, -1):
        invoke(shoal, "metered", "fleet/t1/telemetry", {"temp": temp})
    invoke(shoal, "metered", "fleet/t1/telemetry", "hot")
    text = http(shoal, "GET", "/metrics").raw.decode()
    assert "shoal_plugin_" in text
    for line in ['shoal_plugin_invocations_total{plugin="metered",version="1"} 4',
                 'shoal_plugin_ok_total{plugin="metered",version="1"} 3',
                 'shoal_plugin_rejected_total{plugin="metered",version="1"} 1',
                 'shoal_plugin_active_version{plugin="metered"} 1',
                 'shoal_plugin_user_counter_total{plugin="metered",name="violations"} 2']:
        assert re.search("^" + re.escape(line) + "$", text, re.M), f"{line} not in /metrics:\n" + "\n".join(
            ln for ln in text.splitlines() if "shoal_plugin_" in ln)


# -- persistence -----------------------------------------------------------------------------------

def test_versions_and_the_active_one_survive_a_restart(shoal: Shoal):
    upload(shoal, "durable", "echo", {"settings": settings(version="v1")})
    upload(shoal, "durable", "echo", {"settings": settings(version="v2")})
    upload(shoal, "durable", "echo", {"settings": settings(version="v3")}, activate=False)
    before = versions(shoal, "durable")
    shoal.restart()
    after = versions(shoal, "durable")
    assert sorted(after) == [1, 2, 3]
    assert [after[n]["active"] for n in (1, 2, 3)] == [False, True, False]
    for n in (1, 2, 3):
        assert after[n]["sha256"] == before[n]["sha256"] and after[n]["config"] == before[n]["config"]
    assert echo_version(invoke(shoal, "durable", "in", {"seq": 5})) == "v2"
    assert echo_version(invoke(shoal, "durable", "in", {"seq": 5}, version=3)) == "v3"
    back = ok(http(shoal, "POST", "/api/v1/plugins/durable/rollback"))
    assert back["version"] == 1, "the rollback history is kept too"


def test_key_value_state_survives_a_restart(shoal: Shoal):
    """debounce-alert keeps each thing's window of readings in the key-value store: two breaches
    before a restart and one after make three of the last five, so the third alerts."""
    upload(shoal, "debounce", "debounce-alert", {"settings": settings(field="temp", max=0, n=3, m=5)})
    for _ in range(2):
        out = invoke(shoal, "debounce", "fleet/truck-1/telemetry", {"temp": 5})
        assert out["outcome"] == "ok" and out["actions"] == [], out
    health = ok(http(shoal, "GET", "/api/v1/plugins/debounce"))["health"]
    assert health["kv_usage_bytes"] > 0, health
    shoal.restart()
    out = invoke(shoal, "debounce", "fleet/truck-1/telemetry", {"temp": 6})
    alerts = [a for a in out["actions"] if a["type"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["thing"] == "truck-1", out
    # Another thing's window started empty.
    assert invoke(shoal, "debounce", "fleet/truck-2/telemetry", {"temp": 6})["actions"] == []


# -- the watched directory -------------------------------------------------------------------------

def deploy_log_lines(s: Shoal, plugin: str) -> list[str]:
    """The server's log lines about the watched directory refusing `plugin`'s files."""
    return [ln for ln in s.tail(10_000).splitlines()
            if f'plugin="{plugin}"' in ln or f"plugin={plugin} " in ln
            if "cannot deploy a plugin from the watched directory" in ln or "not a valid configuration" in ln]


def test_a_dropped_component_is_deployed_and_activated(shoal: Shoal):
    """`NAME.wasm` with `NAME.json` in DATA/plugins/watch/ becomes plugin NAME's active version
    within a few seconds; replacing either file deploys a new version."""
    config = {"deadline_ms": 50, "settings": settings(field="temp", max=-15)}
    drop_plugin(shoal, "dropped", component("threshold-alert"), config)
    # Two polls a second apart, then compiling the component (seconds in a debug build).
    shown = wait_active(shoal, "dropped", 1, timeout=30)
    (v1,) = shown["versions"]
    assert v1["config"]["deadline_ms"] == 50 and v1["config"]["settings"] == config["settings"], v1
    assert v1["sha256"] == hashlib.sha256(component("threshold-alert")).hexdigest()
    out = invoke(shoal, "dropped", "fleet/t1/telemetry", {"temp": -10})
    assert [a["title"] for a in out["actions"] if a["type"] == "alert"] == ["t1: temp -10 above -15"]

    # A new component under the same name: version 2, active.
    drop_plugin(shoal, "dropped", component("echo"), {"settings": settings(version="from-file")})
    wait_active(shoal, "dropped", 2)
    assert echo_version(invoke(shoal, "dropped", "in", {"seq": 1})) == "from-file"
    # Only the configuration changes: version 3.
    drop_plugin(shoal, "dropped", component("echo"), {"settings": settings(version="new-config")})
    wait_active(shoal, "dropped", 3)
    assert echo_version(invoke(shoal, "dropped", "in", {"seq": 1})) == "new-config"
    vs = versions(shoal, "dropped")
    assert sorted(vs) == [1, 2, 3] and [vs[n]["active"] for n in (1, 2, 3)] == [False, False, True]

    # Without a .json the defaults apply; the file's removal changes nothing.
    drop_plugin(shoal, "bare", component("echo"))
    assert wait_active(shoal, "bare", 1)["versions"][0]["config"]["settings"] == []
    (watch_dir(shoal) / "bare.wasm").unlink()
    time.sleep(2.5)
    assert active_version(shoal, "bare") == 1


def test_garbage_in_the_watched_directory_is_logged_and_not_deployed(shoal: Shoal):
    drop_plugin(shoal, "junk", b"this is not webassembly")
    drop_plugin(shoal, "netty", component("sockets"))  # imports wasi:sockets: refused
    drop_plugin(shoal, "badcfg", component("echo"), {"deadline_msec": 5})  # an unknown field
    # A generous deadline: the watcher compiles the other files meanwhile, and on a busy 2-core
    # machine a 10 ms (wall-clock) deadline can expire while the call's thread is descheduled.
    drop_plugin(shoal, "good", component("echo"), {"deadline_ms": 2000})
    wait_active(shoal, "good", 1)
    wait_until(lambda: all(deploy_log_lines(shoal, p) for p in ("junk", "netty", "badcfg")), timeout=10,
               what="log lines for the refused files")
    assert "wasi:sockets" in " ".join(deploy_log_lines(shoal, "netty"))
    for p in ("junk", "netty", "badcfg"):
        assert http(shoal, "GET", f"/api/v1/plugins/{p}").status == 404, p
    assert [p["plugin"] for p in ok(http(shoal, "GET", "/api/v1/plugins"))["plugins"]] == ["good"]

    # Garbage over a deployed plugin leaves its active version serving.
    drop_plugin(shoal, "good", b"\0asm garbage")
    wait_until(lambda: deploy_log_lines(shoal, "good"), timeout=10, what="the refusal of good.wasm")
    assert active_version(shoal, "good") == 1 and sorted(versions(shoal, "good")) == [1]
    assert echo_version(invoke(shoal, "good", "in", {"seq": 2})) == "v0"

    # Each refusal is logged once per content, not at every poll.
    time.sleep(2.5)
    for p in ("junk", "netty", "badcfg", "good"):
        assert len(deploy_log_lines(shoal, p)) == 1, (p, deploy_log_lines(shoal, p))
    assert http(shoal, "GET", "/health").status == 200
    c = shoal.client()
    c.roundtrip()

    # Fixing the file deploys it.
    drop_plugin(shoal, "junk", component("echo"))
    wait_active(shoal, "junk", 1)


def test_an_api_rollback_sticks_across_a_restart(shoal: Shoal):
    """The watched file is already a version after the restart: it is not activated again."""
    drop_plugin(shoal, "sticky", component("echo"), {"settings": settings(version="v1")})
    wait_active(shoal, "sticky", 1)
    drop_plugin(shoal, "sticky", component("echo"), {"settings": settings(version="v2")})
    wait_active(shoal, "sticky", 2)
    assert ok(http(shoal, "POST", "/api/v1/plugins/sticky/rollback"))["version"] == 1

    shoal.restart()
    # A file dropped after the start is deployed at the earliest on the second poll, the one
    # where sticky.wasm (there from the start) is judged; one more poll for good measure.
    drop_plugin(shoal, "sentinel", component("echo"))
    wait_active(shoal, "sentinel", 1)
    time.sleep(1.2)
    assert active_version(shoal, "sticky") == 1
    assert sorted(versions(shoal, "sticky")) == [1, 2], "nothing was uploaded again"
    assert echo_version(invoke(shoal, "sticky", "in", {"seq": 3})) == "v1"

    # Putting a version's content back is not a new deployment either...
    drop_plugin(shoal, "sticky", component("echo"), {"settings": settings(version="v1")})
    time.sleep(2.5)
    assert active_version(shoal, "sticky") == 1 and sorted(versions(shoal, "sticky")) == [1, 2]
    # ...new content is.
    drop_plugin(shoal, "sticky", component("echo"), {"settings": settings(version="v3")})
    wait_active(shoal, "sticky", 3)
    assert echo_version(invoke(shoal, "sticky", "in", {"seq": 3})) == "v3"
