"""Watchdogs (a dead man's switch, `host/broker/src/watchdog.rs`): a JSON arming published to
`$shoal/watchdog/{name}` makes the broker publish its `payload` on its `topic` once, unless the
watchdog is re-armed (restarting its clock) or cancelled (an empty payload) within `timeoutMs`.

The broker sweeps every 250 ms, so a watchdog fires no earlier than `timeoutMs` after its last
arming and normally within a sweep of it; the assertions leave wide margins (a busy 2-core CI
machine): with T = 1000 ms, nothing at 600 ms, and the message by 3 s.

Refusals (malformed, reserved or forbidden target, `limits.max_watchdogs`) leave an armed watchdog
as it was; a v5 QoS 1 publisher learns why from its PUBACK (0x83 / 0x87 / 0x97 with a reason
string), a QoS 0 or v3.1.1 one only from the log and `shoal_watchdogs_rejected_total` (the
connection stays). Over HTTP (`POST /topics/$shoal/watchdog/{name}`) a malformed arming is a 400,
a reserved target a 403, the limit a 429, and a SigV4 caller must be allowed to publish the target (403).
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import Shoal
from identity_helpers import ARN, Api, allow, doc, issue_device, tls_client
from mqtt_helpers import V3, V5, Client, metric, unique, wait_until
from plugin_helpers import http, ok

PREFIX = "$shoal/watchdog/"
T = 1000                    # ms: the timeout of the timing tests
QUIET_BEFORE = 0.6          # s after arming during which a T-watchdog must not have fired
FIRE_WITHIN = 3.0           # s after arming by which it must have fired
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000

SUCCESS, IMPL_SPECIFIC, NOT_AUTHORIZED, QUOTA_EXCEEDED = 0x00, 0x83, 0x87, 0x97


def wd(name: str) -> str:
    return PREFIX + name


def arming(topic: str, timeout_ms: int = T, **fields: object) -> bytes:
    """The JSON arming `{"timeoutMs": .., "topic": .., **fields}`."""
    return json.dumps({"timeoutMs": timeout_ms, "topic": topic, **fields}).encode()


def watcher(s: Shoal, filt: str = "alarm/#", version: int = V5) -> Client:
    w = s.client(version=version, client_id=unique("watch"))
    assert w.subscribe(filt, qos=1) == [1], f"subscription to {filt} refused"
    return w


def arm(c: Client, name: str, body: bytes, expect: int = SUCCESS) -> float:
    """Publishes an arming at QoS 1 and checks the PUBACK (v5: its reason code); returns when
    the publish was sent (monotonic)."""
    t = time.monotonic()
    ack = c.publish(wd(name), body, qos=1)
    if c.version == V5:
        assert ack.reason_code == expect, \
            f"arming {body!r}: PUBACK {ack.reason_code:#x}, expected {expect:#x} ({ack.prop('ReasonString')!r})"
    return t


def api_post(s: Shoal, topic: str, data: bytes):
    """`POST /topics/{topic}` signed with the admin key (the harness signs urllib requests)."""
    return http(s, "POST", f"/topics/{topic}", data=data, content_type="application/json")


# -- firing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version,qos", [(V5, 1), (V3, 0)], ids=["v5-fired-qos1", "v311-fired-qos0"])
def test_fires_once_after_the_timeout_with_the_armed_message(shoal: Shoal, version, qos):
    """Armed with T = 1000 ms and left alone, the watchdog publishes its payload (a JSON object,
    serialized) on its topic with its QoS, not retained, once; not before T."""
    w = watcher(shoal)
    dev = shoal.client(version=version)
    topic = f"alarm/{unique('t')}"
    payload = {"truck": "truck-7", "n": 1, "nested": {"ok": False}}
    t0 = arm(dev, unique("wd"), arming(topic, payload=payload, qos=qos))
    w.expect_no_message(max(0.0, QUIET_BEFORE - (time.monotonic() - t0)))
    m = w.wait_message(FIRE_WITHIN - (time.monotonic() - t0))
    elapsed = m.at - t0
    assert m.topic == topic
    assert json.loads(m.payload) == payload, m.payload
    assert b" " not in m.payload, f"expected compact JSON, got {m.payload!r}"
    assert (m.qos, m.retain) == (qos, False), m
    assert elapsed >= 0.95 * T / 1000, f"fired {elapsed:.3f}s after arming, before its {T} ms timeout"
    w.expect_no_message(1.0)  # once
    dev.roundtrip()  # the arming client is still connected


def test_rearming_keeps_it_quiet_and_the_last_arming_fires(shoal: Shoal):
    """Re-armed every 300 ms for 2 s with T = 1000 ms, the watchdog stays quiet; once the
    re-arming stops it fires once, T after the last arming, with what the last arming held."""
    w = watcher(shoal)
    dev = shoal.client()
    name, topic = unique("hb"), f"alarm/{unique('quiet')}"
    start = time.monotonic()
    n, last = 0, start
    while time.monotonic() - start < 2.0:
        n += 1
        last = arm(dev, name, arming(topic, payload={"n": n}, qos=1))
        assert w.drain(0.3) == [], f"fired while being re-armed (arming #{n})"
    assert n >= 3, f"only {n} armings in 2 s"
    m = w.wait_message(FIRE_WITHIN)
    assert (m.topic, json.loads(m.payload), m.qos) == (topic, {"n": n}, 1), m
    assert m.at - last >= 0.95 * T / 1000, f"fired {m.at - last:.3f}s after the last arming (T = {T} ms)"
    w.expect_no_message(1.0)


def test_an_empty_payload_cancels(shoal: Shoal):
    """An empty publish to `$shoal/watchdog/{name}` cancels it (also when nothing is armed:
    PUBACK 0); a cancelled watchdog never fires, the others still do."""
    w = watcher(shoal)
    dev = shoal.client()
    cancelled, kept = unique("cancelled"), unique("kept")
    arm(dev, cancelled, arming("alarm/cancelled", timeout_ms=2500, payload="no"))
    arm(dev, kept, arming("alarm/kept", timeout_ms=2000, payload="yes"))
    assert metric(shoal, "shoal_watchdogs") == 2
    assert dev.publish(wd(cancelled), b"", qos=1).reason_code == SUCCESS
    assert dev.publish(wd(unique("never-armed")), b"", qos=1).reason_code == SUCCESS
    assert metric(shoal, "shoal_watchdogs") == 1
    m = w.wait_message(FIRE_WITHIN + 1)
    assert (m.topic, m.payload) == ("alarm/kept", b"yes"), m
    w.expect_no_message(1.5)
    assert metric(shoal, "shoal_watchdogs") == 0


def test_payload_forms_and_retain(shoal: Shoal):
    """A JSON string is published as its text, any other JSON value as its JSON, an absent or
    null payload as an empty message; `retain: true` leaves the fired message retained; `qos`
    and `retain` default to 0 and false."""
    w = watcher(shoal)
    dev = shoal.client()
    base = f"alarm/{unique('forms')}"
    cases = {
        "text": ("gone quiet", b"gone quiet"),
        "json-text": ('{"a": 1}', b'{"a": 1}'),   # a string holding JSON: its text, verbatim
        "unicode": ("k\u00fchl \u2744", "k\u00fchl \u2744".encode()),
        "number": (42, b"42"),
        "array": ([1, "a", None], b'[1,"a",null]'),
        "bool": (True, b"true"),
        "null": (None, b""),
    }
    for key, (value, _) in cases.items():
        arm(dev, f"forms/{key}", arming(f"{base}/{key}", timeout_ms=300, payload=value))
    arm(dev, "forms/absent", arming(f"{base}/absent", timeout_ms=300))
    arm(dev, "forms/retained", arming(f"{base}/retained", timeout_ms=300, payload="kept", retain=True, qos=1))
    got = {m.topic.rsplit("/", 1)[1]: m for m in w.wait_messages(len(cases) + 2, timeout=FIRE_WITHIN + 2)}
    for key, (_, wire) in cases.items():
        assert got[key].payload == wire, f"{key}: published {got[key].payload!r}, expected {wire!r}"
        assert (got[key].qos, got[key].retain) == (0, False), got[key]
    assert got["absent"].payload == b""
    assert (got["retained"].payload, got["retained"].qos) == (b"kept", 1)
    w.expect_no_message(0.5)
    late = shoal.client()
    assert late.subscribe(f"{base}/#", qos=1) == [1]
    m = late.wait_message()
    assert (m.topic, m.payload, m.retain) == (f"{base}/retained", b"kept", True), m
    late.expect_no_message(0.3)


def test_watchdog_topics_are_never_delivered(shoal: Shoal):
    """Messages to `$shoal/watchdog/...` (armings, refused armings, cancels) reach no
    subscriber: not `$shoal/#`, not `$shoal/watchdog/#`, not the exact topic, not `#`; the fired
    message goes to its topic's subscribers only."""
    name = unique("hidden")
    subs = {f: watcher(shoal, f, version=v) for f, v in
            [("$shoal/#", V5), ("$shoal/watchdog/#", V3), (wd(name), V5), ("#", V5)]}
    fired = watcher(shoal, "alarm/#")
    dev = shoal.client()
    arm(dev, name, arming("alarm/hidden", timeout_ms=300, payload="fired"))
    arm(dev, name + "-x", b"not json", expect=IMPL_SPECIFIC)
    arm(dev, name + "-y", arming("alarm/never", timeout_ms=60_000))
    assert dev.publish(wd(name + "-y"), b"", qos=1).reason_code == SUCCESS
    dev.publish(wd(name + "-z"), arming("alarm/qos0", timeout_ms=60_000))  # QoS 0
    dev.publish(wd(name + "-z"), b"")
    arm_retained = dev.publish(wd(name + "-r"), arming("alarm/never", timeout_ms=60_000), qos=1, retain=True)
    assert arm_retained.reason_code == SUCCESS
    assert dev.publish(wd(name + "-r"), b"", qos=1).reason_code == SUCCESS
    assert (fired.wait_message(FIRE_WITHIN).topic, ) == ("alarm/hidden", )
    # Controls: the `$shoal/#` subscriber gets other `$shoal/` topics, `#` gets ordinary ones.
    dev.publish("$shoal/probe/x", b"probe", qos=1)
    assert subs["$shoal/#"].wait_message().topic == "$shoal/probe/x"
    got = subs["#"].drain(0.5)
    assert [m.topic for m in got] == ["alarm/hidden"], f"'#' got {got}"
    for f in ("$shoal/#", "$shoal/watchdog/#", wd(name)):
        leaked = subs[f].drain(0.1)
        assert leaked == [], f"subscriber of {f!r} got {leaked}"
    fired.expect_no_message(0.3)
    # A retained arming was not kept as a retained message either.
    late = watcher(shoal, "$shoal/watchdog/#")
    late.expect_no_message(0.5)


def test_an_empty_watchdog_name_is_not_delivered_either(shoal: Shoal):
    """`$shoal/watchdog/` (the name empty) arms nothing, but it is still a `$shoal/watchdog/...`
    topic: neither an MQTT nor an HTTP publish there reaches a `$shoal/#` subscriber."""
    sub = watcher(shoal, "$shoal/#")
    fired = watcher(shoal, "alarm/#")
    dev = shoal.client()
    dev.publish(PREFIX, arming("alarm/empty-name", timeout_ms=300, payload="mqtt"), qos=1)
    api_post(shoal, PREFIX, arming("alarm/empty-name", timeout_ms=300, payload="http"))
    leaked = sub.drain(1.0)
    assert leaked == [], f"publishes to {PREFIX!r} were delivered to a '$shoal/#' subscriber: {leaked}"
    fired.expect_no_message(1.0)


def test_the_watchdog_outlives_the_arming_connection(shoal: Shoal):
    """The point of a dead man's switch: a device that armed its watchdog and then vanished
    (socket dropped, no DISCONNECT) or disconnected cleanly still gets its alarm."""
    w = watcher(shoal)
    for how in ("abort", "disconnect"):
        dev = shoal.client(client_id=unique(how))
        arm(dev, unique(how), arming(f"alarm/{how}", timeout_ms=500, payload=how))
        getattr(dev, how)()
    got = sorted((m.topic, m.payload) for m in w.wait_messages(2, timeout=FIRE_WITHIN))
    assert got == [("alarm/abort", b"abort"), ("alarm/disconnect", b"disconnect")], got
    w.expect_no_message(0.5)


def test_many_watchdogs_each_fire_once(shoal: Shoal):
    """100 watchdogs armed at once (QoS 0 armings) all fire, each once, within a few sweeps."""
    w = watcher(shoal)
    dev = shoal.client()
    n = 100
    for i in range(n):
        dev.publish(wd(f"many/{i}"), arming(f"alarm/many/{i}", timeout_ms=500 + 3 * i, payload=str(i)))
    dev.roundtrip()  # the armings are handled (one connection, in order)
    msgs = w.wait_messages(n, timeout=FIRE_WITHIN + 2)
    assert sorted(int(m.payload) for m in msgs) == list(range(n))
    assert all(m.topic == f"alarm/many/{int(m.payload)}" for m in msgs), msgs
    w.expect_no_message(0.8)
    assert metric(shoal, "shoal_watchdogs_fired_total") == n
    assert metric(shoal, "shoal_watchdogs") == 0


def test_a_restart_forgets_the_watchdogs(shoal: Shoal):
    """Watchdogs live in the memory of the node: after a restart an armed one never fires (the
    module doc: the next arming starts it again)."""
    dev = shoal.client()
    t0 = arm(dev, unique("forgotten"), arming("alarm/forgotten", timeout_ms=1500))
    assert metric(shoal, "shoal_watchdogs") == 1
    shoal.restart()
    w = watcher(shoal)
    assert metric(shoal, "shoal_watchdogs") == 0
    w.expect_no_message(max(0.5, 2.5 - (time.monotonic() - t0)))
    again = shoal.client()
    arm(again, unique("after"), arming("alarm/after", timeout_ms=300))
    assert w.wait_message(FIRE_WITHIN).topic == "alarm/after"


# -- rules -----------------------------------------------------------------------------------------

def test_rules_see_the_arming_and_the_fired_message_from_watchdog(shoal: Shoal):
    """The arming goes through the rules (a rule on `$shoal/watchdog/#` sees it, as published by
    the arming client); the fired message goes through them as published by client id
    `$watchdog`."""
    ok(http(shoal, "POST", "/api/v1/rules/wd_fired", {
        "sql": "SELECT *, clientid() AS cid, topic() AS t FROM 'alarm/#'",
        "actions": [{"republish": {"topic": "seen/fired", "qos": 1}}]}), 201)
    ok(http(shoal, "POST", "/api/v1/rules/wd_armed", {
        "sql": "SELECT topic() AS t, timeoutMs, clientid() AS cid FROM '$shoal/watchdog/#'",
        "actions": [{"republish": {"topic": "seen/armed", "qos": 1}}]}), 201)
    seen = watcher(shoal, "seen/#")
    cid, name, topic = unique("dev"), unique("ruled"), f"alarm/{unique('r')}"
    dev = shoal.client(client_id=cid)
    arm(dev, name, arming(topic, timeout_ms=300, payload={"truck": "truck-9"}, qos=1))
    got = {m.topic: json.loads(m.payload) for m in seen.wait_messages(2, timeout=FIRE_WITHIN)}
    assert got == {"seen/armed": {"t": wd(name), "timeoutMs": 300, "cid": cid},
                   "seen/fired": {"truck": "truck-9", "cid": "$watchdog", "t": topic}}, got
    seen.expect_no_message(0.5)


def test_a_rule_republish_arms_a_heartbeat_watchdog(shoal: Shoal):
    """A rule republishing every heartbeat to `$shoal/watchdog/...` (the module doc's 'a rule's
    republish') re-arms the watchdog; when the heartbeats stop, the alarm fires once."""
    ok(http(shoal, "POST", "/api/v1/rules/heartbeat", {
        "sql": "SELECT 1000 AS timeoutMs, concat('alarm/silent/', topic(2)) AS topic, "
               "topic(2) AS payload, 1 AS qos FROM 'hb/+'",
        "actions": [{"republish": {"topic": "$shoal/watchdog/hb/${topic(2)}"}}]}), 201)
    w = watcher(shoal)
    truck = unique("truck")
    dev = shoal.client()
    start = time.monotonic()
    last = start
    while time.monotonic() - start < 1.8:
        last = time.monotonic()
        dev.publish(f"hb/{truck}", b"{}", qos=1)
        assert w.drain(0.3) == [], "fired while the heartbeats kept coming"
    m = w.wait_message(FIRE_WITHIN + 1)
    assert (m.topic, m.payload, m.qos) == (f"alarm/silent/{truck}", truck.encode(), 1), m
    assert m.at - last >= 0.9 * T / 1000, f"fired {m.at - last:.3f}s after the last heartbeat"
    w.expect_no_message(1.0)


def test_a_will_on_a_watchdog_topic_is_dropped(shoal: Shoal):
    """A will cannot arm (it has no principal to check the target against) and, like every
    message on a watchdog topic, is never delivered (retained or not)."""
    w = watcher(shoal, "$shoal/#")
    alarms = watcher(shoal)
    before = metric(shoal, "shoal_watchdogs_rejected_total")
    dev = shoal.client(will=dict(topic=wd(unique("will")), payload=arming("alarm/will", timeout_ms=300),
                                 qos=1, retain=True))
    dev.abort()
    wait_until(lambda: metric(shoal, "shoal_watchdogs_rejected_total") == before + 1, timeout=5,
               what="the will refused")
    assert metric(shoal, "shoal_watchdogs") == 0
    late = watcher(shoal, "$shoal/#")
    for c in (w, alarms, late):
        c.expect_no_message(1.0)


def test_a_rules_refused_arming_runs_its_error_action(shoal: Shoal):
    """A rule's republish the broker refuses (here `timeoutMs` is a string) is that action's
    failure: the rule's error action gets AWS's error document naming the reason."""
    ok(http(shoal, "POST", "/api/v1/rules/bad_heartbeat", {
        "sql": "SELECT 'soon' AS timeoutMs, 'alarm/x' AS topic FROM 'hb/+'",
        "actions": [{"republish": {"topic": "$shoal/watchdog/hb/${topic(2)}"}}],
        "errorAction": {"republish": {"topic": "errors/bad_heartbeat"}}}), 201)
    w = shoal.client()
    assert w.subscribe("errors/#", qos=1)[0] < 0x80
    dev = shoal.client()
    dev.publish("hb/t1", b"{}", qos=1)
    doc = json.loads(w.wait_message(5.0).payload)
    assert doc["ruleName"] == "bad_heartbeat", doc
    (failure,) = doc["failures"]
    assert "timeoutMs" in failure["errorMessage"], failure


# -- refusals over MQTT ----------------------------------------------------------------------------

REFUSED = [
    # (what, body, v5 PUBACK reason code, a word of the reason string)
    ("not JSON", b"not json", IMPL_SPECIFIC, "expected"),
    ("not an object", b"[1]", IMPL_SPECIFIC, "watchdog payload"),
    ("no topic", b'{"timeoutMs": 1000}', IMPL_SPECIFIC, "topic"),
    ("no timeoutMs", b'{"topic": "alarm/x"}', IMPL_SPECIFIC, "timeoutMs"),
    ("unknown field", arming("alarm/x", timeout=3), IMPL_SPECIFIC, "unknown field"),
    ("timeoutMs 0", arming("alarm/x", 0), IMPL_SPECIFIC, "timeoutMs"),
    ("timeoutMs negative", arming("alarm/x", -5), IMPL_SPECIFIC, "timeoutMs"),
    ("timeoutMs fractional", b'{"timeoutMs": 1.5, "topic": "alarm/x"}', IMPL_SPECIFIC, "timeoutMs"),
    ("timeoutMs over 30 days", arming("alarm/x", THIRTY_DAYS_MS + 1), IMPL_SPECIFIC, "timeoutMs"),
    ("timeoutMs a string", b'{"timeoutMs": "1000", "topic": "alarm/x"}', IMPL_SPECIFIC, "timeoutMs"),
    ("topic with +", arming("alarm/+"), IMPL_SPECIFIC, "topic"),
    ("topic with #", arming("alarm/#"), IMPL_SPECIFIC, "topic"),
    ("empty topic", arming(""), IMPL_SPECIFIC, "topic"),
    ("topic too deep", arming("a/b/c/d/e/f/g/h/i"), IMPL_SPECIFIC, "topic"),
    ("qos 2", arming("alarm/x", qos=2), IMPL_SPECIFIC, "qos"),
    ("qos a string", arming("alarm/x", qos="1"), IMPL_SPECIFIC, "qos"),
    ("retain a string", arming("alarm/x", retain="yes"), IMPL_SPECIFIC, "retain"),
    ("target a watchdog", arming("$shoal/watchdog/other"), NOT_AUTHORIZED, "reserved"),
    ("target a lifecycle event", arming("$aws/events/presence/connected/x"), NOT_AUTHORIZED, "reserved"),
]


def test_v5_puback_reason_codes_for_refused_armings(shoal: Shoal):
    """Every refused arming gets a v5 PUBACK 0x83 (malformed) or 0x87 (reserved target) with a
    reason string naming the problem, is counted in `shoal_watchdogs_rejected_total`, keeps the
    connection and leaves the watchdog armed under that name as it was (it fires on time with
    what it held). The 30-day bound itself is accepted."""
    w = watcher(shoal)
    dev = shoal.client()
    name, topic = unique("guarded"), f"alarm/{unique('orig')}"
    before = metric(shoal, "shoal_watchdogs_rejected_total")
    t0 = arm(dev, name, arming(topic, timeout_ms=2500, payload="original"))
    problems = []
    for what, body, code, word in REFUSED:
        ack = dev.publish(wd(name), body, qos=1)
        reason = ack.prop("ReasonString") or ""
        if ack.reason_code != code or word.lower() not in reason.lower():
            problems.append(f"{what}: PUBACK {ack.reason_code:#x} {reason!r}, expected {code:#x} with {word!r}")
    assert not problems, "\n".join(problems)
    assert metric(shoal, "shoal_watchdogs_rejected_total") - before == len(REFUSED)
    assert metric(shoal, "shoal_watchdogs") == 1
    # The longest timeout is accepted (then cancelled).
    month = unique("month")
    arm(dev, month, arming("alarm/month", THIRTY_DAYS_MS))
    assert metric(shoal, "shoal_watchdogs") == 2
    assert dev.publish(wd(month), b"", qos=1).reason_code == SUCCESS
    m = w.wait_message(FIRE_WITHIN + 1.5)  # the first message: none of the refused ones fired
    assert (m.topic, m.payload) == (topic, b"original"), m
    assert m.at - t0 >= 2.4, f"the original fired after {m.at - t0:.2f}s, not its 2.5 s: moved by a refusal"
    dev.roundtrip()


@pytest.mark.parametrize("version,qos", [(V5, 0), (V3, 0), (V3, 1)], ids=["v5-qos0", "v311-qos0", "v311-qos1"])
def test_refusals_without_a_reason_code_keep_the_connection(shoal: Shoal, version, qos):
    """MQTT has no way to refuse a QoS 0 publish (or any v3.1.1 one) but a disconnect: a refused
    arming is logged and counted, the connection stays and works, and an armed watchdog of the
    same name is left as it was."""
    w = watcher(shoal)
    dev = shoal.client(version=version)
    name, topic = unique("kept"), f"alarm/{unique('kept')}"
    t0 = time.monotonic()
    dev.publish(wd(name), arming(topic, timeout_ms=1500, payload="still armed"), qos=qos)
    before = metric(shoal, "shoal_watchdogs_rejected_total")
    for body in (b"{not json", arming("alarm/+"), arming("alarm/x", 0), arming("$aws/events/x/y")):
        ack = dev.publish(wd(name), body, qos=qos)
        if ack is not None:
            assert ack.reason_code == 0, ack  # v3.1.1 PUBACK: no reason code to give
    # QoS 0 has no acknowledgement: wait for the broker to have handled them.
    wait_until(lambda: metric(shoal, "shoal_watchdogs_rejected_total") - before == 4, timeout=5,
               what="4 refusals counted in shoal_watchdogs_rejected_total")
    assert dev.is_connected() and not dev.disconnects, dev.disconnects
    dev.roundtrip()
    m = w.wait_message(FIRE_WITHIN)
    assert (m.topic, m.payload) == (topic, b"still armed"), m
    assert m.at - t0 >= 1.4, f"fired after {m.at - t0:.2f}s: a refused arming moved it"
    assert dev.is_connected()


def test_max_watchdogs(make_shoal, tmp_path):
    """`[limits] max_watchdogs = 2`: a third name is refused (v5 PUBACK 0x97, HTTP 429
    ThrottlingException), re-arming a held name is still allowed, cancelling makes room."""
    conf = tmp_path / "shoal.toml"
    conf.write_text("[limits]\nmax_watchdogs = 2\n")
    s = make_shoal("--config", str(conf))
    dev = s.client()
    body = arming("alarm/limit", timeout_ms=60_000)
    arm(dev, "one", body)
    arm(dev, "two", body)
    arm(dev, "three", body, expect=QUOTA_EXCEEDED)
    ack = dev.publish(wd("three"), body, qos=1)
    assert "max_watchdogs" in (ack.prop("ReasonString") or ""), ack.prop("ReasonString")
    a = api_post(s, wd("four"), body)
    assert (a.status, a.error_type) == (429, "ThrottlingException"), a
    assert "max_watchdogs" in a.message, a
    arm(dev, "one", arming("alarm/limit", timeout_ms=30_000))  # re-arming at the limit
    assert metric(s, "shoal_watchdogs") == 2
    assert metric(s, "shoal_watchdogs_rejected_total") == 3
    assert dev.publish(wd("two"), b"", qos=1).reason_code == SUCCESS
    arm(dev, "three", body)
    assert metric(s, "shoal_watchdogs") == 2
    dev.roundtrip()


def test_metrics(shoal: Shoal):
    """`shoal_watchdogs` (armed), `shoal_watchdogs_fired_total`, `shoal_watchdogs_rejected_total`."""
    assert [metric(shoal, n) for n in ("shoal_watchdogs", "shoal_watchdogs_fired_total",
                                       "shoal_watchdogs_rejected_total")] == [0, 0, 0]
    w = watcher(shoal)
    dev = shoal.client()
    arm(dev, "later", arming("alarm/later", timeout_ms=60_000))
    arm(dev, "bad", b"{}", expect=IMPL_SPECIFIC)
    assert [metric(shoal, n) for n in ("shoal_watchdogs", "shoal_watchdogs_fired_total",
                                       "shoal_watchdogs_rejected_total")] == [1, 0, 1]
    arm(dev, "soon", arming("alarm/soon", timeout_ms=300))
    assert w.wait_message(FIRE_WITHIN).topic == "alarm/soon"
    assert [metric(shoal, n) for n in ("shoal_watchdogs", "shoal_watchdogs_fired_total",
                                       "shoal_watchdogs_rejected_total")] == [1, 1, 1]
    assert dev.publish(wd("later"), b"", qos=1).reason_code == SUCCESS
    assert metric(shoal, "shoal_watchdogs") == 0
    assert metric(shoal, "shoal_watchdogs_fired_total") == 1


# -- HTTP ------------------------------------------------------------------------------------------

def test_http_arming(shoal: Shoal):
    """`POST /topics/$shoal/watchdog/{name}`: a malformed arming is a 400
    InvalidRequestException and a reserved target a 403 ForbiddenException, naming the problem
    (leaving the armed watchdog alone); a valid one is a 200 and fires; an empty body cancels.
    The `$` may be sent as `%24`."""
    w = watcher(shoal)
    name = unique("http")
    topic = f"alarm/{unique('h')}"
    t0 = time.monotonic()
    a = api_post(shoal, wd(name), arming(topic, timeout_ms=1500, payload={"via": "http"}, qos=1))
    assert a.status == 200, a
    bad = (400, "InvalidRequestException")
    for body, word, want in [(b"nope", "expected", bad), (arming(topic, 0), "timeoutMs", bad),
                             (arming(topic, timeout=1), "unknown field", bad),
                             (arming("alarm/#"), "topic", bad), (arming(topic, qos=2), "qos", bad),
                             (arming("$shoal/watchdog/x"), "reserved", (403, "ForbiddenException"))]:
        a = api_post(shoal, wd(name), body)
        assert (a.status, a.error_type) == want, (body, a)
        assert word in a.message, (body, a)
    m = w.wait_message(FIRE_WITHIN)
    assert (m.topic, json.loads(m.payload), m.qos) == (topic, {"via": "http"}, 1), m
    assert m.at - t0 >= 1.4, f"fired {m.at - t0:.2f}s after the arming: moved by a refused one"
    # %24-encoded `$`, then cancelled over HTTP: nothing fires.
    other = unique("enc")
    assert api_post(shoal, "%24shoal/watchdog/" + other, arming("alarm/cancelled", timeout_ms=3000)).status == 200
    assert metric(shoal, "shoal_watchdogs") == 1
    assert api_post(shoal, wd(other), b"").status == 200
    assert metric(shoal, "shoal_watchdogs") == 0
    w.expect_no_message(1.2)


def test_a_sigv4_key_must_be_allowed_the_target_topic(shoal: Shoal):
    """A non-admin access key allowed `iot:Publish` on `$shoal/watchdog/*` and `alarm/ok/*` only:
    arming to `alarm/ok/...` is a 200 and fires; to `alarm/no/...` (or retained, without
    `iot:RetainPublish`) a 403 ForbiddenException, and nothing fires."""
    boto3 = pytest.importorskip("boto3")
    from botocore.exceptions import ClientError

    key = ok(http(shoal, "POST", "/api/v1/keys", {"description": "watchdog device"}))
    assert key["admin"] is False
    ok(http(shoal, "POST", "/api/v1/policies", {"policyName": "wd-http", "policyDocument": doc(
        allow("iot:Publish", [f"{ARN}:topic/$shoal/watchdog/*", f"{ARN}:topic/alarm/ok/*"]))}))
    ok(http(shoal, "POST", "/api/v1/policies/wd-http/targets", {"target": key["accessKeyId"]}))
    dev = boto3.client("iot-data", endpoint_url=f"http://{shoal.host}:{shoal.http_port}", region_name="us-east-1",
                       aws_access_key_id=key["accessKeyId"], aws_secret_access_key=key["secretAccessKey"])
    w = watcher(shoal)
    for body in (arming("alarm/no/1", timeout_ms=300), arming("alarm/ok/1", timeout_ms=300, retain=True)):
        with pytest.raises(ClientError) as e:
            dev.publish(topic=wd(unique("k")), payload=body)
        assert e.value.response["Error"]["Code"] == "ForbiddenException", e.value.response
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    dev.publish(topic=wd(unique("k")), payload=arming("alarm/ok/1", timeout_ms=300, payload="ok"))
    m = w.wait_message(FIRE_WITHIN)
    assert (m.topic, m.payload) == ("alarm/ok/1", b"ok"), m
    w.expect_no_message(1.0)
    assert metric(shoal, "shoal_watchdogs") == 0


# -- identity --------------------------------------------------------------------------------------

def test_a_device_must_be_allowed_the_target_topic(shoal: Shoal):
    """A device (X.509, mTLS, v5) whose policy allows `iot:Publish` on `$shoal/watchdog/*` and
    `alarm/allowed/*` only: arming to `alarm/denied/...` (or retained, without
    `iot:RetainPublish`) gets PUBACK 0x87 and nothing fires, and leaves the device's armed
    watchdog of that name as it was; `alarm/allowed/...` fires."""
    api = Api(shoal)
    device = issue_device(shoal, api, policy_doc=doc(
        allow("iot:Connect", f"{ARN}:client/*"),
        allow("iot:Publish", [f"{ARN}:topic/$shoal/watchdog/*", f"{ARN}:topic/alarm/allowed/*"])))
    w = watcher(shoal)
    dev = tls_client(shoal, device, version=V5, client_id=unique("dev"))
    name = unique("mine")
    t0 = arm(dev, name, arming("alarm/allowed/1", timeout_ms=1500, payload="allowed"))
    arm(dev, name, arming("alarm/denied/1", timeout_ms=300, payload="denied"), expect=NOT_AUTHORIZED)
    arm(dev, unique("other"), arming("alarm/denied/2", timeout_ms=300), expect=NOT_AUTHORIZED)
    arm(dev, unique("other"), arming("alarm/allowed/2", timeout_ms=300, retain=True), expect=NOT_AUTHORIZED)
    ack = dev.publish(wd(name), arming("alarm/denied/1"), qos=1)
    assert "alarm/denied/1" in (ack.prop("ReasonString") or ""), ack.prop("ReasonString")
    assert metric(shoal, "shoal_watchdogs") == 1
    m = w.wait_message(FIRE_WITHIN)
    assert (m.topic, m.payload) == ("alarm/allowed/1", b"allowed"), m
    assert m.at - t0 >= 1.4, f"fired after {m.at - t0:.2f}s, not its 1.5 s"
    w.expect_no_message(1.0)
    assert dev.is_connected()
