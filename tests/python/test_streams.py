"""Streams on a running shoal: the `stream` rule action (and AWS's `kinesis` shape), records read
back by offset and through consumer groups over `/api/v1/streams` and `shoal stream ...`, on the
embedded store (across a restart) and on a real Redis (where a stream is a Redis Stream, checked
with `redis-cli`); plugins' `stream-append` and `webhook` actions (the webhook through a target
named in the configuration); rules and webhook targets defined in the configuration file; the
error action when a rendered stream name is unusable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from conftest import Shoal
from mqtt_helpers import wait_until
from plugin_helpers import DIST, cli, http, ok, settings, upload
from test_rules import Receiver, body, create, republish, subscriber

STREAMS = "/api/v1/streams"
needs_plugins = pytest.mark.skipif(not DIST.is_dir(), reason=f"no {DIST}: run plugins/build.sh")


def stream_action(name: str, key: str | None = None, kind: str = "stream") -> dict:
    spec: dict = {"streamName": name}
    if key is not None:
        spec["partitionKey"] = key
    return {kind: spec}


def info(s: Shoal, stream: str) -> dict:
    return ok(http(s, "GET", f"{STREAMS}/{stream}"))


def wait_length(s: Shoal, stream: str, n: int, timeout: float = 10.0) -> dict:
    seen: dict = {}

    def reached() -> bool:
        nonlocal seen
        a = http(s, "GET", f"{STREAMS}/{stream}")
        seen = a.json if a.status == 200 else {"status": a.status}
        return seen.get("length") == n

    try:
        wait_until(reached, timeout=timeout, interval=0.05, what=f"stream {stream} length {n}")
    except AssertionError:
        raise AssertionError(f"stream {stream}: {seen}, wanted length {n}") from None
    return seen


def read_all(s: Shoal, stream: str, page: int) -> list[dict]:
    """Every record, paging with `after`."""
    out: list[dict] = []
    after = None
    while True:
        q = f"?limit={page}" + (f"&after={after}" if after else "")
        got = ok(http(s, "GET", f"{STREAMS}/{stream}/records{q}"))
        out += got["records"]
        if not got["records"]:
            return out
        after = got["lastId"]


def group_read(s: Shoal, stream: str, group: str, consumer: str, limit: int = 100, **extra: object) -> list[dict]:
    a = http(s, "POST", f"{STREAMS}/{stream}/groups/{group}/read", {"consumer": consumer, "limit": limit, **extra})
    return ok(a)["records"]


def ack(s: Shoal, stream: str, group: str, ids: list[str]) -> int:
    return ok(http(s, "POST", f"{STREAMS}/{stream}/groups/{group}/ack", {"ids": ids}))["acknowledged"]


def exercise_stream(s: Shoal, n: int = 30) -> str:
    """A rule appends every `fleet/+/telemetry` reading to `telemetry-{truck}`; checks offsets,
    paging, partition keys, groups, pending and acks. Returns the stream's name."""
    create(s, "to_stream", "SELECT temp, topic(2) AS truck FROM 'fleet/+/telemetry'",
           stream_action("telemetry-${topic(2)}", "${topic(2)}"))
    pub = s.client()
    for i in range(n):
        pub.publish("fleet/t7/telemetry", json.dumps({"temp": i}), qos=1)
    pub.publish("fleet/t8/telemetry", json.dumps({"temp": 99}), qos=1)
    stream = "telemetry-t7"
    st = wait_length(s, stream, n)
    assert st["streamName"] == stream and st["groups"] == []
    wait_length(s, "telemetry-t8", 1)
    records = read_all(s, stream, page=7)
    assert [r["data"] for r in records] == [{"temp": i, "truck": "t7"} for i in range(n)]
    assert {r["partitionKey"] for r in records} == {"t7"}
    ids = [r["id"] for r in records]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == n
    assert st["firstId"] == ids[0] and st["lastId"] == ids[-1]
    names = [x["streamName"] for x in ok(http(s, "GET", STREAMS))["streams"]]
    assert {"telemetry-t7", "telemetry-t8"} <= set(names), names

    # A group shares the records between its consumers; each gets different ones.
    ok(http(s, "POST", f"{STREAMS}/{stream}/groups", {"groupName": "alerts"}), 201)
    a = group_read(s, stream, "alerts", "a", limit=10)
    b = group_read(s, stream, "alerts", "b", limit=10)
    assert [r["id"] for r in a] == ids[:10] and [r["id"] for r in b] == ids[10:20]
    # Unacknowledged records come back to their consumer only.
    assert ack(s, stream, "alerts", [r["id"] for r in a[:4]] + ["1-1"]) == 4
    assert [r["id"] for r in group_read(s, stream, "alerts", "a", pending=True)] == ids[4:10]
    assert [r["id"] for r in group_read(s, stream, "alerts", "b", pending=True)] == ids[10:20]
    groups = info(s, stream)["groups"]
    assert groups == [{"groupName": "alerts", "lastDeliveredId": ids[19], "pending": 16}], groups
    # A second group starting at the end sees only what comes next.
    ok(http(s, "POST", f"{STREAMS}/{stream}/groups", {"groupName": "late", "start": "end"}), 201)
    assert group_read(s, stream, "late", "x") == []
    pub.publish("fleet/t7/telemetry", json.dumps({"temp": 1000}), qos=1)
    got = group_read(s, stream, "late", "x", waitMs=5000)
    assert [r["data"] for r in got] == [{"temp": 1000, "truck": "t7"}]
    return stream


def test_stream_action_offsets_groups_and_a_restart_on_the_embedded_store(shoal: Shoal):
    stream = exercise_stream(shoal)
    before = info(shoal, stream)
    shoal.restart()
    after = info(shoal, stream)
    assert after == before, (before, after)
    # The group's cursor and pending list survived: the next read goes on where it stopped.
    got = group_read(shoal, stream, "alerts", "a", limit=100)
    assert [r["data"]["temp"] for r in got] == list(range(20, 30)) + [1000]
    # Ids keep rising after the restart.
    shoal.client().publish("fleet/t7/telemetry", json.dumps({"temp": 2000}), qos=1)
    wait_length(shoal, stream, 32)
    last = read_all(shoal, stream, page=100)[-1]
    assert last["data"]["temp"] == 2000 and last["id"] == info(shoal, stream)["lastId"]


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli not installed")
def test_stream_action_on_redis_is_a_redis_stream(make_shoal, redis_url: str):
    s = make_shoal("--store", redis_url)
    stream = exercise_stream(s)
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    rc = ["redis-cli", "-p", port]
    keys = subprocess.run(rc + ["--scan", "--pattern", "*stream*"], capture_output=True, text=True, check=True)
    key = next(k for k in keys.stdout.split() if k.endswith(f":{stream}"))
    assert subprocess.run(rc + ["XLEN", key], capture_output=True, text=True, check=True).stdout.strip() == "31"
    groups = subprocess.run(rc + ["XINFO", "GROUPS", key], capture_output=True, text=True, check=True).stdout
    assert "alerts" in groups and "late" in groups, groups


def test_kinesis_shape_bad_names_and_the_error_action(shoal: Shoal):
    create(shoal, "kin", "SELECT * FROM 'k/+'", stream_action("k-${topic(2)}", kind="kinesis"),
           error=republish("stream_errors"))
    got = ok(http(shoal, "GET", "/api/v1/rules/kin"))
    assert got["topicRulePayload"]["actions"] == [{"stream": {"streamName": "k-${topic(2)}"}}]
    # A static name that can never be a stream name is refused when the rule is saved.
    a = http(shoal, "POST", "/api/v1/rules/bad", {"sql": "SELECT * FROM 'x'", "actions": [stream_action("a b")]})
    assert a.status == 400 and "invalid stream name" in a.json["message"], a
    errors = subscriber(shoal, "stream_errors")
    pub = shoal.client()
    pub.publish("k/ok", b'{"v": 1}', qos=1)
    # The topic level renders into a name with a space: the action fails, the error action runs.
    pub.publish("k/not ok", b'{"v": 2}', qos=1)
    doc = body(errors.wait_message(10))
    assert doc["ruleName"] == "kin" and doc["topic"] == "k/not ok", doc
    assert doc["failures"][0]["failedAction"] == "StreamAction", doc
    assert "invalid stream name" in doc["failures"][0]["errorMessage"], doc
    wait_length(shoal, "k-ok", 1)
    # Bad requests to the API say what is wrong.
    assert http(shoal, "GET", f"{STREAMS}/nope").status == 404
    assert http(shoal, "GET", f"{STREAMS}/k-ok/records?after=zz").status == 400
    assert http(shoal, "GET", f"{STREAMS}/k-ok/records?limit=0").status == 400
    assert http(shoal, "POST", f"{STREAMS}/k-ok/groups/none/read", {"consumer": "c"}).status == 404
    ok(http(shoal, "POST", f"{STREAMS}/k-ok/groups", {"groupName": "g"}), 201)
    assert http(shoal, "POST", f"{STREAMS}/k-ok/groups", {"groupName": "g"}).status == 409
    assert http(shoal, "POST", f"{STREAMS}/k-ok/groups/g/read", {"consumer": "c", "waitMs": 999999}).status == 400
    assert http(shoal, "POST", f"{STREAMS}/k-ok/groups/g/read", data=b"{oops",
                content_type="application/json").status == 400
    metrics = http(shoal, "GET", "/metrics").raw.decode()
    assert 'shoal_rules_stream_records_total{result="appended"} 1' in metrics, metrics


def test_the_stream_cli(shoal: Shoal):
    cli(shoal, "stream", "append", "ops", '{"n": 1}', "--key", "k1")
    cli(shoal, "stream", "append", "ops", "-", stdin='{"n": 2}')
    shown = json.loads(cli(shoal, "stream", "show", "ops").stdout)
    assert shown["length"] == 2
    read = json.loads(cli(shoal, "stream", "read", "ops", "--limit", "1").stdout)
    assert [r["data"] for r in read["records"]] == [{"n": 1}] and read["records"][0]["partitionKey"] == "k1"
    rest = json.loads(cli(shoal, "stream", "read", "ops", "--after", read["lastId"]).stdout)
    assert [r["data"] for r in rest["records"]] == [{"n": 2}]
    cli(shoal, "stream", "group-create", "ops", "g1")
    got = json.loads(cli(shoal, "stream", "group-read", "ops", "g1", "--consumer", "c", "--ack").stdout)
    assert [r["data"] for r in got["records"]] == [{"n": 1}, {"n": 2}]
    assert info(shoal, "ops")["groups"][0]["pending"] == 0
    bad = cli(shoal, "stream", "group-read", "ops", "nope", "--consumer", "c", check=False)
    assert bad.returncode != 0 and "404" in bad.stderr, bad.stderr
    cli(shoal, "stream", "delete", "ops")
    assert http(shoal, "GET", f"{STREAMS}/ops").status == 404
    # The rule verb's --stream flag.
    cli(shoal, "rule", "create", "r1", "--sql", "SELECT * FROM 'c/#'", "--stream", "c-out")
    shoal.client().publish("c/1", b'{"x": 1}', qos=1)
    wait_length(shoal, "c-out", 1)


@needs_plugins
def test_plugin_stream_append_and_webhook_target(make_shoal):
    receiver = Receiver()
    try:
        s = make_shoal("--webhook-target", f"ops={receiver.url}/ok")
        upload(s, "echo", "echo", config={"settings": settings(stream="echoed", webhook="ops", prefix="e")})
        upload(s, "echo_bad", "echo", config={"settings": settings(webhook="missing")})
        create(s, "via_plugin", "SELECT * FROM 'p/+'", {"plugin": {"name": "echo"}})
        create(s, "via_bad", "SELECT * FROM 'q/+'", {"plugin": {"name": "echo_bad"}}, error=republish("perr"))
        errors = subscriber(s, "perr")
        pub = s.client()
        pub.publish("p/1", b'{"seq": 5}', qos=1)
        wait_length(s, "echoed", 1)
        rec = read_all(s, "echoed", page=10)[0]
        assert rec["data"] == {"seq": "5", "version": "v0", "calls": 1}, rec
        assert json.loads(receiver.wait("/ok", 1)[0]) == {"seq": "5", "version": "v0", "calls": 1}
        pub.publish("q/1", b'{"seq": 6}', qos=1)
        doc = body(errors.wait_message(10))
        assert "no webhook target named \"missing\"" in doc["failures"][0]["errorMessage"], doc
    finally:
        receiver.close()


def test_rules_and_webhook_targets_from_the_configuration_file(make_shoal, tmp_path):
    receiver = Receiver()
    try:
        conf = tmp_path / "shoal.toml"
        conf.write_text(f"""
[webhook_targets.ops]
url = "{receiver.url}/ok"
headers = {{ x-team = "cold-chain" }}

[rules.from_file]
sql = "SELECT temp FROM 'cf/+' WHERE temp > 0"
description = "defined in the file"

[[rules.from_file.actions]]
stream = {{ streamName = "cf", partitionKey = "${{topic(2)}}" }}

[[rules.from_file.actions]]
webhook = {{ url = "{receiver.url}/ok" }}
""")
        s = make_shoal("--config", str(conf))
        got = ok(http(s, "GET", "/api/v1/rules/from_file"))
        assert got["topicRulePayload"]["description"] == "defined in the file"
        pub = s.client()
        pub.publish("cf/a", b'{"temp": -1}', qos=1)
        pub.publish("cf/a", b'{"temp": 3}', qos=1)
        wait_length(s, "cf", 1)
        assert read_all(s, "cf", page=10)[0]["data"] == {"temp": 3}
        assert [json.loads(b) for b in receiver.wait("/ok", 1)] == [{"temp": 3}]
        # A restart with the file unchanged leaves the saved rule alone (no rewrite of rules.json).
        created = got["createdAtMs"]
        saved = s.data_dir / "rules" / "rules.json"
        before = saved.stat().st_mtime_ns
        s.restart()
        assert ok(http(s, "GET", "/api/v1/rules/from_file"))["createdAtMs"] == created
        assert saved.stat().st_mtime_ns == before
        # A bad rule in the file stops the start with a message naming it.
        conf.write_text('[rules.broken]\nsql = "SELECT * FROM"\n')
        s.close()
        bad = subprocess.run([s.binary, "serve", "--config", str(conf), "--data-dir", str(tmp_path / "d2"),
                              "--mqtt-listen", "127.0.0.1:0", "--mqtts-listen", "off",
                              "--http-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "broken" in bad.stderr, bad.stderr
    finally:
        receiver.close()
