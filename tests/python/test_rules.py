"""Rules on a running shoal: AWS IoT SQL over real MQTT traffic, the management API under
`/api/v1/rules` and the operator verbs `shoal rule ...`.

Republish with substitution templates, WHERE filtering, `SELECT *` of non-JSON payloads, nested
fields and aliases, QoS 1 republishes; the shadow action; the plugin action (threshold-alert's
alerts on `$shoal/alerts/{thing}` and its publishes); the error action with AWS's error document;
Basic Ingest; enable/disable, replace, delete and the refused definitions (409, 400 with the SQL
error's position, 404); rules across a restart; `/metrics`; a looping plugin in a rule;
back-pressure from a full rules queue (held publishers lose nothing; slow plugin work holds a
publisher at most once); the CLI.

Every test gets its own broker. A rule's actions run on worker threads after the publish is
acknowledged (or, for rules that never wait, on the publisher's I/O thread), so tests wait for what the actions produce (a message, a shadow, a counter) with a
bound, and prove an absence by a later message of the same publisher (one publisher's messages
are handled in order) followed by a short quiet period.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import Shoal
from mqtt_helpers import V5, Client, metric, unique, wait_until
from plugin_helpers import DIST, cli, http, ok, settings, upload

RULES = "/api/v1/rules"
QUIET = 0.4  # seconds of silence that prove a message was not produced (after an ordering proof)

needs_plugins = pytest.mark.skipif(not DIST.is_dir(), reason=f"no {DIST}: run plugins/build.sh")


# -- helpers ---------------------------------------------------------------------------------------

def republish(topic: str, qos: int = 0) -> dict:
    return {"republish": {"topic": topic, "qos": qos}}


def shadow_action(thing: str, shadow: str | None = None) -> dict:
    spec = {"thingName": thing}
    if shadow is not None:
        spec["shadowName"] = shadow
    return {"shadow": spec}


def plugin_action(name: str) -> dict:
    return {"plugin": {"name": name}}


def payload(sql: str, *actions: dict, error: dict | None = None, **extra: object) -> dict:
    body: dict = {"sql": sql, "actions": list(actions), **extra}
    if error is not None:
        body["errorAction"] = error
    return body


def create(s: Shoal, name: str, sql: str, *actions: dict, error: dict | None = None, **extra: object) -> dict:
    return ok(http(s, "POST", f"{RULES}/{name}", payload(sql, *actions, error=error, **extra)), 201)


def stats(s: Shoal, name: str) -> dict:
    return ok(http(s, "GET", f"{RULES}/{name}"))["stats"]


def wait_stats(s: Shoal, name: str, timeout: float = 10.0, **want: int) -> dict:
    """Waits until the rule's counters named in `want` (camelCase) have exactly these values."""
    seen: dict = {}

    def reached() -> bool:
        nonlocal seen
        seen = stats(s, name)
        return all(seen.get(k) == v for k, v in want.items())

    try:
        wait_until(reached, timeout=timeout, interval=0.05, what=f"rule {name} stats {want}")
    except AssertionError:
        raise AssertionError(f"rule {name}: stats {seen}, wanted {want}") from None
    return seen


def subscriber(s: Shoal, *filters: str, qos: int = 1, **kw) -> Client:
    c = s.client(**kw)
    for f in filters:
        assert c.subscribe(f, qos=qos)[0] < 0x80, f
    return c


def body(m) -> object:
    return json.loads(m.payload)


def pairs(messages) -> list[tuple[str, object]]:
    """(topic, JSON body) of each message, sorted."""
    return sorted(((m.topic, body(m)) for m in messages), key=lambda p: (p[0], json.dumps(p[1], sort_keys=True)))


def by_topic(messages) -> dict[str, object]:
    out = {}
    for m in messages:
        assert m.topic not in out, f"two messages on {m.topic}: {messages}"
        out[m.topic] = body(m)
    return out


def shadow_doc(s: Shoal, thing: str, name: str | None = None) -> dict:
    q = f"?name={name}" if name else ""
    return ok(http(s, "GET", f"/things/{thing}/shadow{q}"))


# -- republish, WHERE, templates -------------------------------------------------------------------

def test_republish_renders_templates_and_where_filters(shoal: Shoal):
    """Templates see the incoming message (payload fields, topic(), clientid()), not the SELECT's
    aliases; a message WHERE does not select (false, non-JSON, missing field) is not republished;
    the original message still reaches its subscribers."""
    create(shoal, "fleet_temp", "SELECT temp, topic(2) AS truck FROM 'fleet/+/telemetry' WHERE temp > -15",
           republish("alerts/${topic(2)}/${clientid()}"), republish("readings/${truck}/${temp}"))
    alerts = subscriber(shoal, "alerts/#", "readings/#")
    raw = subscriber(shoal, "fleet/#")
    pub = shoal.client(client_id=unique("truck"))

    for p in [b'{"temp": -20}', b"not json", b'{"humidity": 40}', b'{"temp": "warm"}', b'{"temp": -10}']:
        pub.publish("fleet/truck1/telemetry", p, qos=1)
    got = by_topic(alerts.wait_messages(2))
    assert got == {
        f"alerts/truck1/{pub.client_id}": {"temp": -10, "truck": "truck1"},
        # `truck` is an alias of the SELECT: a template cannot see it (AWS), so it renders empty.
        "readings//-10": {"temp": -10, "truck": "truck1"},
    }, got
    alerts.expect_no_message(QUIET)
    assert len(raw.wait_messages(5)) == 5, "rules do not take messages from subscribers"
    st = wait_stats(shoal, "fleet_temp", matched=5, selected=1, actionsOk=2)
    assert st["actionsFailed"] == 0 and st["sqlErrors"] == 0, st


def test_select_star_passes_payloads_through(shoal: Shoal):
    """`SELECT *` of a non-JSON payload forwards its bytes unchanged; of a JSON object, the same
    document. `SELECT *, expr` over binary data outputs the other items only."""
    create(shoal, "copy", "SELECT * FROM 'raw/+'", republish("copy/${topic(2)}", qos=1))
    create(shoal, "tagged", "SELECT *, topic(2) AS src FROM 'raw/+'", republish("tagged/${topic(2)}"))
    sub = subscriber(shoal, "copy/#", "tagged/#")
    pub = shoal.client()
    blobs = {"bin": bytes(range(256)), "text": b"plain text, not JSON", "json": b'{"a":[1,2,{"b":null}]}'}
    for k, p in blobs.items():
        pub.publish(f"raw/{k}", p, qos=1)
    got = {m.topic: m.payload for m in sub.wait_messages(6)}
    assert got["copy/bin"] == blobs["bin"] and got["copy/text"] == blobs["text"], got
    assert json.loads(got["copy/json"]) == {"a": [1, 2, {"b": None}]}
    assert json.loads(got["tagged/bin"]) == {"src": "bin"}
    assert json.loads(got["tagged/text"]) == {"src": "text"}
    assert json.loads(got["tagged/json"]) == {"a": [1, 2, {"b": None}], "src": "json"}
    sub.expect_no_message(QUIET)


def test_nested_fields_aliases_and_functions(shoal: Shoal):
    create(shoal, "nested",
           "SELECT state.reported.temp AS t, upper(state.reported.door) AS door.state, "
           "get(meta, 'fw-version') AS fw, readings[1] AS second, readings[9] AS missing, "
           "state.reported.temp * 2 + 1 AS calc, timestamp() AS ts, "
           "CASE state.reported.door WHEN 'open' THEN 'alarm' ELSE 'ok' END AS status "
           "FROM 'nest/+' WHERE state.reported.temp < 0 AND NOT isUndefined(meta)",
           republish("nested/out"))
    create(shoal, "value_only", "SELECT VALUE state.reported FROM 'nest/+'", republish("nested/value"))
    sub = subscriber(shoal, "nested/#")
    pub = shoal.client()
    doc = {"state": {"reported": {"temp": -3.5, "door": "open"}}, "meta": {"fw-version": "1.2.3"},
           "readings": [1, 2, 3]}
    before_ms = int(time.time() * 1000)
    pub.publish("nest/d1", json.dumps(doc), qos=1)
    got = by_topic(sub.wait_messages(2))
    out = got["nested/out"]
    ts = out.pop("ts")
    assert out == {"t": -3.5, "door": {"state": "OPEN"}, "fw": "1.2.3", "second": 2, "calc": -6,
                   "status": "alarm"}, out
    assert before_ms - 1000 <= ts <= time.time() * 1000 + 1000, ts
    assert got["nested/value"] == {"temp": -3.5, "door": "open"}

    warm = dict(doc, state={"reported": {"temp": 4, "door": "shut"}})
    pub.publish("nest/d1", json.dumps(warm), qos=1)
    assert body(sub.wait_message()) == {"temp": 4, "door": "shut"}, "only the VALUE rule: WHERE is false"
    sub.expect_no_message(QUIET)


def test_qos1_republish_reaches_a_qos1_subscriber(shoal: Shoal):
    """A QoS 1 republish is delivered at QoS 1, also to a persistent session that was offline;
    a QoS 0 republish at QoS 0."""
    create(shoal, "q1", "SELECT * FROM 'q/in'", republish("q/out1", qos=1), republish("q/out0", qos=0))
    online = subscriber(shoal, "q/out1", "q/out0", qos=1)
    offline = shoal.client(client_id=unique("persist"), clean=False, session_expiry=300)
    assert offline.subscribe("q/out1", qos=1)[0] == 1
    offline.disconnect()

    pub = shoal.client()
    pub.publish("q/in", b'{"n":1}', qos=0)
    got = {m.topic: m for m in online.wait_messages(2)}
    assert got["q/out1"].qos == 1 and got["q/out0"].qos == 0, got
    assert body(got["q/out1"]) == {"n": 1}
    wait_stats(shoal, "q1", actionsOk=2)

    back = shoal.client(client_id=offline.client_id, clean=False, session_expiry=300)
    assert back.connack.session_present
    m = back.wait_message()
    assert (m.topic, m.qos, body(m)) == ("q/out1", 1, {"n": 1})


def test_a_rule_never_sees_its_own_output(shoal: Shoal):
    """A rule whose output matches its own FROM fires once per client message (no loop)."""
    create(shoal, "echoer", "SELECT *, topic() AS seen FROM 'loop/#'", republish("loop/${topic(2)}/again"))
    sub = subscriber(shoal, "loop/#")
    pub = shoal.client()
    pub.publish("loop/a", b'{"n":1}', qos=1)
    msgs = sub.wait_messages(2)
    assert sorted(m.topic for m in msgs) == ["loop/a", "loop/a/again"], msgs
    sub.expect_no_message(0.8)
    assert wait_stats(shoal, "echoer", matched=1, actionsOk=1)["selected"] == 1


def test_rules_route_other_rules_output_up_to_four_deep(shoal: Shoal):
    """As on AWS, a rule's output is matched by the other rules (a plugin's alerts mailed by
    another rule): a -> b -> c. Two rules feeding each other stop after MAX_HOPS (4) rules
    past the client's, counted in shoal_rules_hop_limit_total; every hop is still delivered."""
    from mqtt_helpers import metric

    create(shoal, "first", "SELECT n, 'first' AS via FROM 'chain/a'", republish("chain/b"))
    create(shoal, "second", "SELECT n, via, 'second' AS then FROM 'chain/b'", republish("chain/c"))
    sub = subscriber(shoal, "chain/c")
    shoal.client().publish("chain/a", b'{"n":7}', qos=1)
    m = sub.wait_message()
    assert body(m) == {"n": 7, "via": "first", "then": "second"}
    sub.expect_no_message(0.5)

    create(shoal, "ping", "SELECT * FROM 'ball/ping'", republish("ball/pong"))
    create(shoal, "pong", "SELECT * FROM 'ball/pong'", republish("ball/ping"))
    sub = subscriber(shoal, "ball/#")
    shoal.client().publish("ball/ping", b'{"hit":1}', qos=1)
    # The client's ping, then what ping, pong, ping, pong, ping published: the fifth rule's
    # output (4 rules past the first) is delivered but skips the rules.
    msgs = sub.wait_messages(6)
    # (Rules run before the message they handle is routed: the order subscribers see varies.)
    assert sorted(m.topic for m in msgs) == ["ball/ping"] * 3 + ["ball/pong"] * 3
    sub.expect_no_message(0.8)
    assert metric(shoal, "shoal_rules_hop_limit_total") == 1
    assert wait_stats(shoal, "ping", matched=3)["matched"] == 3
    assert wait_stats(shoal, "pong", matched=2)["matched"] == 2


# -- shadow action ---------------------------------------------------------------------------------

def test_shadow_action_updates_the_things_shadow(shoal: Shoal):
    create(shoal, "to_shadow",
           "SELECT temp AS state.reported.temp, battery AS state.reported.battery "
           "FROM 'dev/+/telemetry' WHERE NOT isUndefined(temp)",
           shadow_action("${topic(2)}"), shadow_action("${topic(2)}", "env"))
    thing = unique("dev")
    accepted = subscriber(shoal, f"$aws/things/{thing}/shadow/update/accepted",
                          f"$aws/things/{thing}/shadow/name/env/update/accepted")
    pub = shoal.client()
    pub.publish(f"dev/{thing}/telemetry", json.dumps({"temp": 21.5, "battery": 88, "noise": 1}), qos=1)
    topics = sorted(m.topic for m in accepted.wait_messages(2))
    assert topics == [f"$aws/things/{thing}/shadow/name/env/update/accepted",
                      f"$aws/things/{thing}/shadow/update/accepted"], topics
    classic = shadow_doc(shoal, thing)
    assert classic["state"] == {"reported": {"temp": 21.5, "battery": 88}}, classic
    assert classic["version"] == 1
    assert shadow_doc(shoal, thing, "env")["state"] == {"reported": {"temp": 21.5, "battery": 88}}

    pub.publish(f"dev/{thing}/telemetry", json.dumps({"temp": 22}), qos=1)
    wait_stats(shoal, "to_shadow", selected=2, actionsOk=4)
    classic = shadow_doc(shoal, thing)
    assert classic["state"] == {"reported": {"temp": 22, "battery": 88}}, "merged like any update"
    assert classic["version"] == 2


def test_a_device_shadow_update_reaches_a_rule_on_the_shadow_topic(shoal: Shoal):
    """AWS rules commonly select from `$aws/things/+/shadow/update`: a device's publish there is a
    client publish, which rules see."""
    create(shoal, "shadow_watch", "SELECT state.reported.temp AS temp, topic(3) AS thing "
           "FROM '$aws/things/+/shadow/update'", republish("watched/${topic(3)}"))
    sub = subscriber(shoal, "watched/#")
    dev = shoal.client()
    dev.publish("$aws/things/w1/shadow/update", json.dumps({"state": {"reported": {"temp": 5}}}), qos=1)
    assert body(sub.wait_message(3)) == {"temp": 5, "thing": "w1"}


def test_a_republish_to_a_shadow_topic_updates_the_shadow(shoal: Shoal):
    """AWS's republish action documents `$$aws/things/MyThing/shadow/update` as a target: the
    shadow service serves it like a device's request."""
    create(shoal, "via_topic", "SELECT temp AS state.reported.temp FROM 'rs/+'",
           republish("$$aws/things/${topic(2)}/shadow/update", qos=1))
    accepted = subscriber(shoal, "$aws/things/rs1/shadow/update/accepted")
    shoal.client().publish("rs/rs1", b'{"temp": 5}', qos=1)
    wait_stats(shoal, "via_topic", actionsOk=1)
    assert body(accepted.wait_message(3))["state"] == {"reported": {"temp": 5}}
    assert shadow_doc(shoal, "rs1")["state"] == {"reported": {"temp": 5}}


# -- plugin action ---------------------------------------------------------------------------------

@needs_plugins
def test_plugin_action_raises_alerts_and_publishes(shoal: Shoal):
    """threshold-alert gets the SELECT's document; its alert goes to `$shoal/alerts/{thing}` (the
    thing is the topic level without a registry thing, the connection's registry thing with one)
    and its publish action is delivered."""
    upload(shoal, "cold", "threshold-alert",
           {"settings": settings(field="temp", max=-15, republish="fleet/{thing}/alerts")})
    create(shoal, "cold_chain", "SELECT sensors.t AS temp FROM 'fleet/+/telemetry'", plugin_action("cold"))
    sub = subscriber(shoal, "$shoal/alerts/#", "fleet/+/alerts")
    pub = shoal.client()

    pub.publish("fleet/t7/telemetry", json.dumps({"sensors": {"t": -20}}), qos=1)  # within limits
    pub.publish("fleet/t7/telemetry", json.dumps({"sensors": {"t": -10}}), qos=1)
    got = {m.topic: m for m in sub.wait_messages(2)}
    alert = body(got["$shoal/alerts/t7"])
    assert alert["severity"] == "warning" and alert["thing"] == "t7" and alert["plugin"] == "cold", alert
    assert alert["title"] == "t7: temp -10 above -15", alert
    assert "fleet/t7/telemetry" in alert["body"], alert
    assert abs(alert["at"] - time.time() * 1000) < 10_000, alert
    violation = got["fleet/t7/alerts"]
    assert violation.qos == 1
    assert body(violation)["value"] == -10 and body(violation)["thing"] == "t7", body(violation)
    sub.expect_no_message(QUIET)

    # A thing-bound connection: mutual TLS with a certificate attached to `truck-42`, client id
    # `truck-42` (AWS's `iot:Connection.Thing.ThingName`).
    device = shoal.client(tls=True, client_cert=shoal.device_cert("truck-42"), client_id="truck-42")
    device.publish("fleet/t8/telemetry", json.dumps({"sensors": {"t": 3}}), qos=1)
    got = {m.topic: body(m) for m in sub.wait_messages(2)}
    assert got["$shoal/alerts/truck-42"]["thing"] == "truck-42", got
    assert got["$shoal/alerts/truck-42"]["title"] == "truck-42: temp 3 above -15", got
    assert got["fleet/truck-42/alerts"]["value"] == 3, got
    wait_stats(shoal, "cold_chain", matched=3, selected=3, actionsOk=3, actionsFailed=0)
    assert metric(shoal, "shoal_rules_alerts_total") == 2


@needs_plugins
def test_a_plugins_publishes_keep_their_qos_and_retain_flag(shoal: Shoal):
    """content-router's publish actions are delivered with the QoS and retain flag it chose."""
    routes = [{"field": "type", "equals": "door", "topic": "routed/{thing}/door", "qos": 1},
              {"field": "alarm", "exists": True, "topic": "routed/alarms/{thing}", "retain": True, "qos": 0}]
    upload(shoal, "router", "content-router", {"settings": [["rules", json.dumps(routes)]]})
    create(shoal, "route", "SELECT * FROM 'site/+/events'", plugin_action("router"))
    sub = subscriber(shoal, "routed/#")
    pub = shoal.client()
    sent = json.dumps({"type": "door", "alarm": 1.0}, indent=1)  # not as Shoal writes JSON
    pub.publish("site/s1/events", sent, qos=1)
    got = {m.topic: m for m in sub.wait_messages(2)}
    assert got["routed/s1/door"].qos == 1 and body(got["routed/s1/door"]) == {"type": "door", "alarm": 1}
    # Under `SELECT *` a plugin gets the payload in Shoal's compact JSON form, as every other
    # action does (the router forwards what it got).
    assert got["routed/s1/door"].payload == b'{"type":"door","alarm":1}', got["routed/s1/door"].payload
    assert got["routed/alarms/s1"].qos == 0
    late = subscriber(shoal, "routed/alarms/#")
    m = late.wait_message()
    assert m.retain and m.topic == "routed/alarms/s1", "the plugin's retain flag is kept"
    wait_stats(shoal, "route", actionsOk=1)


@needs_plugins
def test_a_plugin_gets_the_publishers_client_id_thing_and_user_properties(shoal: Shoal):
    """The message a plugin gets carries what the rule saw: the topic, the QoS, the publisher's
    client id, its registry thing (none on a plain connection), the MQTT 5 user properties in
    order with repeated keys kept, and as payload the rule's SELECT output."""
    upload(shoal, "reporter", "echo", {"settings": settings(report="true", prefix="seen")})
    create(shoal, "report", "SELECT seq, temp FROM 'rep/+/in'", plugin_action("reporter"))
    sub = subscriber(shoal, "seen/#")
    pub = shoal.client(version=V5, client_id="rep-dev-1")
    sent_ms = time.time() * 1000
    pub.publish("rep/d1/in", json.dumps({"seq": 1, "temp": 4.5, "other": "x"}), qos=1,
                properties=dict(UserProperty=[("unit", "C"), ("site", "a"), ("unit", "F")]))
    got = body(sub.wait_message())
    got.pop("calls")
    # When the broker received it (ms since the epoch): this machine's clock, give or take.
    assert abs(got.pop("timestamp_ms") - sent_ms) < 5_000, got
    assert got == {"seq": "1", "version": "v0", "topic": "rep/d1/in", "qos": 1, "client_id": "rep-dev-1",
                   "thing": None, "properties": [["unit", "C"], ["site", "a"], ["unit", "F"]],
                   "payload": '{"seq":1,"temp":4.5}'}, got

    # A thing-bound connection (mutual TLS, certificate attached to `truck-9`), QoS 0.
    device = shoal.client(tls=True, client_cert=shoal.device_cert("truck-9"), client_id="truck-9")
    device.publish("rep/d2/in", json.dumps({"seq": 2, "temp": -1}), qos=0)
    got = body(sub.wait_message())
    assert (got["client_id"], got["thing"], got["qos"], got["properties"]) == ("truck-9", "truck-9", 0, []), got
    wait_stats(shoal, "report", matched=2, selected=2, actionsOk=2)


@needs_plugins
def test_basic_ingest_reaches_a_plugin_rule_with_the_topic_the_rule_sees(shoal: Shoal):
    """A Basic Ingest publish (`$aws/rules/{rule}/...`) to a rule whose action is a plugin: the
    plugin gets the topic without the prefix (as `topic()` sees it) and the publisher's client
    id; no subscriber sees the publish."""
    upload(shoal, "ingest_echo", "echo", {"settings": settings(report="true", prefix="ingest_echo")})
    create(shoal, "ingest_plugin", "SELECT * FROM 'meters/#'", plugin_action("ingest_echo"))
    out = subscriber(shoal, "ingest_echo/#")
    spy = subscriber(shoal, "meters/#", "$aws/rules/#")
    pub = shoal.client(client_id="meter-7")
    pub.publish("$aws/rules/ingest_plugin/meters/m7", json.dumps({"seq": 7, "kwh": 1.0}), qos=1)
    m = out.wait_message()
    got = body(m)
    assert m.topic == "ingest_echo/7", m.topic
    assert (got["topic"], got["client_id"]) == ("meters/m7", "meter-7"), got
    assert got["payload"] == '{"seq":7,"kwh":1}', got  # SELECT *'s compact form
    spy.expect_no_message(QUIET)
    wait_stats(shoal, "ingest_plugin", matched=1, actionsOk=1)


@needs_plugins
def test_a_plugin_and_a_republish_in_one_rule_get_the_same_document(shoal: Shoal):
    """`SELECT *` of a payload not in Shoal's compact JSON form: the plugin action and the
    republish action of one rule both get the same compact document (built once per message)."""
    upload(shoal, "both_echo", "echo", {"settings": settings(report="true", prefix="both_echo")})
    create(shoal, "both", "SELECT * FROM 'both/in'", plugin_action("both_echo"), republish("both/out"))
    sub = subscriber(shoal, "both_echo/#", "both/out")
    pub = shoal.client()
    pub.publish("both/in", json.dumps({"seq": 5, "t": 2.0, "n": [1.0, 2]}, indent=2), qos=1)
    got = {m.topic: m for m in sub.wait_messages(2)}
    compact = b'{"seq":5,"t":2,"n":[1,2]}'
    assert got["both/out"].payload == compact, got["both/out"].payload
    assert body(got["both_echo/5"])["payload"].encode() == compact, body(got["both_echo/5"])
    # A compact payload passes unchanged to both.
    pub.publish("both/in", b'{"seq":6,"t":2.5}', qos=1)
    got = {m.topic: m for m in sub.wait_messages(2)}
    assert got["both/out"].payload == b'{"seq":6,"t":2.5}'
    assert body(got["both_echo/6"])["payload"] == '{"seq":6,"t":2.5}'
    wait_stats(shoal, "both", matched=2, actionsOk=4)


# -- error action ----------------------------------------------------------------------------------

def test_error_action_gets_the_aws_error_document(shoal: Shoal):
    """Failed actions (a missing plugin, a document that is no shadow request) go to the error
    action with AWS's error document, listing each failure; the other actions still run."""
    create(shoal, "faulty", "SELECT * FROM 'bad/+'",
           plugin_action("nope"), shadow_action("${topic(2)}"), republish("bad_copy/${topic(2)}"),
           error=republish("errors/${topic(2)}", qos=1))
    sub = subscriber(shoal, "errors/#", "bad_copy/#")
    pub = shoal.client(client_id=unique("sensor"))
    original = b'{"a": 1}'
    pub.publish("bad/thingA", original, qos=1)
    got = {m.topic: m for m in sub.wait_messages(2)}
    assert body(got["bad_copy/thingA"]) == {"a": 1}
    err = got["errors/thingA"]
    assert err.qos == 1
    doc = body(err)
    assert set(doc) == {"ruleName", "topic", "cloudwatchTraceId", "clientId", "base64OriginalPayload",
                        "failures"}, doc
    assert doc["ruleName"] == "faulty" and doc["topic"] == "bad/thingA" and doc["clientId"] == pub.client_id
    assert base64.b64decode(doc["base64OriginalPayload"]) == original
    uuid.UUID(doc["cloudwatchTraceId"])
    plugin_failure, shadow_failure = doc["failures"]
    assert plugin_failure["failedAction"] == "PluginAction" and plugin_failure["failedResource"] == "nope"
    assert "nope" in plugin_failure["errorMessage"], plugin_failure
    assert shadow_failure["failedAction"] == "ShadowAction" and shadow_failure["failedResource"] == "thingA"
    assert "state" in shadow_failure["errorMessage"], shadow_failure
    st = wait_stats(shoal, "faulty", actionsOk=1, actionsFailed=2, errorActions=1)
    assert st["errorActionFailures"] == 0, st
    assert http(shoal, "GET", "/things/thingA/shadow").status == 404, "the refused update wrote nothing"


@needs_plugins
def test_a_plugin_rejection_and_a_failing_error_action(shoal: Shoal):
    upload(shoal, "strict", "threshold-alert", {"settings": settings(field="temp", max=0)})
    create(shoal, "rejecting", "SELECT * FROM 'strict/+'", plugin_action("strict"),
           error=republish("errors/strict"))
    # The error action's topic renders to a filter, which cannot be published to.
    create(shoal, "double_fault", "SELECT * FROM 'strict/+'", plugin_action("missing"),
           error=republish("errors/${'#'}"))
    sub = subscriber(shoal, "errors/#")
    pub = shoal.client()
    pub.publish("strict/s1", b"hot", qos=1)
    doc = body(sub.wait_message())
    assert doc["ruleName"] == "rejecting" and base64.b64decode(doc["base64OriginalPayload"]) == b"hot"
    (failure,) = doc["failures"]
    assert failure["failedAction"] == "PluginAction" and failure["failedResource"] == "strict", failure
    assert "reject" in failure["errorMessage"], failure
    wait_stats(shoal, "double_fault", actionsFailed=1, errorActions=1, errorActionFailures=1)
    sub.expect_no_message(QUIET)
    assert http(shoal, "GET", "/health").status == 200


# -- Basic Ingest ----------------------------------------------------------------------------------

def test_archive_action_writes_json_lines_per_rule_and_day(shoal: Shoal):
    """Every selected document becomes one line of DATA/archive/{rule}/{UTC day}.jsonl, in order;
    a binary output is archived as base64; the CLI's --archive makes the same action."""
    made = rule_json(shoal, "create", "cold_archive", "--sql",
                     "SELECT temp, topic(2) AS truck, timestamp() AS at FROM 'arch/+' WHERE temp <> 99",
                     "--archive", "--republish", "arch_out")
    assert made["topicRulePayload"]["actions"] == [{"archive": {}}, republish("arch_out")]
    create(shoal, "raw_archive", "SELECT * FROM 'raw/#'", {"archive": {}})
    pub = shoal.client()
    for i, temp in enumerate([-20, -19.5, 99, -18]):
        pub.publish(f"arch/t{i}", json.dumps({"temp": temp}), qos=1)
    pub.publish("raw/bin", bytes([0, 159, 255]), qos=1)
    wait_stats(shoal, "cold_archive", actionsOk=6)
    wait_stats(shoal, "raw_archive", actionsOk=1)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    path = shoal.data_dir / "archive" / "cold_archive" / f"{day}.jsonl"
    deadline = time.time() + 10
    while time.time() < deadline and (not path.exists() or path.read_text().count("\n") < 3):
        time.sleep(0.05)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["temp"], r["truck"]) for r in lines] == [(-20, "t0"), (-19.5, "t1"), (-18, "t3")], lines
    assert all(abs(r["at"] - time.time() * 1000) < 60_000 for r in lines)
    raw = shoal.data_dir / "archive" / "raw_archive" / f"{day}.jsonl"
    deadline = time.time() + 10
    while time.time() < deadline and (not raw.exists() or not raw.read_text()):
        time.sleep(0.05)
    assert [json.loads(line) for line in raw.read_text().splitlines()] == [{"payloadBase64": "AJ//"}]
    metrics = http(shoal, "GET", "/metrics").raw.decode()
    assert "shoal_rules_archive_written_total 4" in metrics, metrics
    assert "shoal_rules_archive_dropped_total 0" in metrics



def parquet_parts(folder) -> list:
    return sorted(p for p in folder.glob("*.parquet")) if folder.exists() else []


def test_archive_action_writes_parquet_that_duckdb_and_pandas_read(shoal: Shoal):
    """`--archive=parquet` buffers a rule's documents and writes one Parquet file per batch under
    DATA/archive/{rule}/{UTC day}/: when bufferRows documents wait, and when the oldest has waited
    bufferSeconds. DuckDB and pandas read the day's files, columns typed from the documents;
    a document that is not an object is a `value` column."""
    import duckdb
    import pandas as pd

    made = rule_json(shoal, "create", "cold_parquet", "--sql",
                     "SELECT temp, topic(2) AS truck, door, tags FROM 'pq/+'",
                     "--archive=parquet", "--archive-buffer-rows", "3", "--archive-buffer-seconds", "1")
    assert made["topicRulePayload"]["actions"] == [
        {"archive": {"format": "parquet", "bufferRows": 3, "bufferSeconds": 1}}], made
    create(shoal, "value_parquet", "SELECT VALUE temp FROM 'pqv/+'",
           {"archive": {"format": "parquet", "bufferSeconds": 1}})
    pub = shoal.client()
    sent = [("t0", {"temp": -20, "door": False, "tags": ["a", "b"]}),
            ("t1", {"temp": -19.5, "door": True}),
            ("t2", {"temp": -18, "tags": {"k": 1}}),
            ("t3", {"temp": -17})]
    for truck, doc in sent:
        pub.publish(f"pq/{truck}", json.dumps(doc), qos=1)
    pub.publish("pqv/t9", json.dumps({"temp": 4.5}), qos=1)
    wait_stats(shoal, "cold_parquet", actionsOk=4)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    folder = shoal.data_dir / "archive" / "cold_parquet" / day
    # Three rows make a full file at once; the fourth is written a second later.
    wait_until(lambda: len(parquet_parts(folder)) == 2, timeout=10, what="two Parquet files")
    files = parquet_parts(folder)
    assert not [p for p in folder.iterdir() if p.suffix != ".parquet"], list(folder.iterdir())

    con = duckdb.connect()
    first = con.execute(f"SELECT truck, temp, door, tags FROM read_parquet('{files[0]}')").fetchall()
    assert first == [("t0", -20.0, False, '["a","b"]'), ("t1", -19.5, True, None),
                     ("t2", -18.0, None, '{"k":1}')], first
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{files[0]}'))").fetchall())
    assert types == {"temp": "DOUBLE", "truck": "VARCHAR", "door": "BOOLEAN", "tags": "JSON"}, types
    rows = con.execute(f"SELECT truck, temp, door FROM read_parquet('{folder}/*.parquet', union_by_name = true) "
                       "ORDER BY truck").fetchall()
    assert rows == [("t0", -20.0, False), ("t1", -19.5, True), ("t2", -18.0, None), ("t3", -17.0, None)], rows
    # JSON columns query as JSON.
    assert con.execute(f"SELECT tags->>'k' FROM read_parquet('{files[0]}') WHERE truck = 't2'").fetchone() == ("1",)

    # pandas: file by file (a folder read takes the first file's columns only).
    frame = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    assert list(frame["truck"]) == ["t0", "t1", "t2", "t3"], frame
    assert list(frame["temp"]) == [-20.0, -19.5, -18.0, -17.0], frame
    assert list(frame.columns) == ["door", "tags", "temp", "truck"], frame.columns

    value_folder = shoal.data_dir / "archive" / "value_parquet" / day
    wait_until(lambda: len(parquet_parts(value_folder)) == 1, timeout=10, what="the value file")
    (value_file,) = parquet_parts(value_folder)
    assert pd.read_parquet(value_file).to_dict("records") == [{"value": 4.5}]
    assert metric(shoal, "shoal_rules_archive_written_total") == 5
    assert metric(shoal, "shoal_rules_archive_buffered") == 0
    assert metric(shoal, "shoal_rules_archive_dropped_total") == 0


def test_parquet_archive_of_awkward_documents_stays_readable(shoal: Shoal):
    """Keys DuckDB and pandas find awkward (empty, dotted, differing only in case), documents
    with no fields, and a batch of nothing but empty documents: the files are written, every
    row counted, and both readers open them."""
    import duckdb
    import pyarrow.parquet as pq

    create(shoal, "odd_keys", "SELECT * FROM 'odd/#'",
           {"archive": {"format": "parquet", "bufferRows": 3}})
    create(shoal, "empties", "SELECT missing FROM 'odd/#'",
           {"archive": {"format": "parquet", "bufferRows": 3}})
    pub = shoal.client()
    for doc in [{"": 1, "a.b": 2, "A": 3, "a": 4}, {}, {"nested": {"deep": [1, {"x": None}]}}]:
        pub.publish("odd/x", json.dumps(doc), qos=1)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    for rule in ("odd_keys", "empties"):
        folder = shoal.data_dir / "archive" / rule / day
        wait_until(lambda: len(parquet_parts(folder)) == 1, timeout=10, what=f"{rule}'s file")
        (part,) = parquet_parts(folder)
        assert pq.read_table(part).num_rows == 3
        assert duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{part}')").fetchone() == (3,)
    (odd,) = parquet_parts(shoal.data_dir / "archive" / "odd_keys" / day)
    table = pq.read_table(odd).to_pylist()
    assert table[0][""] == 1 and table[0]["a.b"] == 2 and table[0]["A"] == 3 and table[0]["a"] == 4, table
    assert json.loads(table[2]["nested"]) == {"deep": [1, {"x": None}]}, table
    assert metric(shoal, "shoal_rules_archive_written_total") == 6
    assert metric(shoal, "shoal_rules_archive_dropped_total") == 0


def test_parquet_archive_rows_still_waiting_are_written_at_shutdown(shoal: Shoal):
    """A graceful stop writes the rows a Parquet archive was still buffering."""
    import pyarrow.parquet as pq

    create(shoal, "held", "SELECT n FROM 'held/#'", {"archive": {"format": "parquet", "bufferSeconds": 3600}})
    pub = shoal.client()
    for n in range(5):
        pub.publish("held/x", json.dumps({"n": n}), qos=1)
    wait_stats(shoal, "held", actionsOk=5)
    wait_until(lambda: metric(shoal, "shoal_rules_archive_buffered") == 5, timeout=10, what="5 rows buffered")
    folder = shoal.data_dir / "archive" / "held" / time.strftime("%Y-%m-%d", time.gmtime())
    assert parquet_parts(folder) == []
    assert shoal.stop() == 0
    (part,) = parquet_parts(folder)
    assert pq.read_table(part).column("n").to_pylist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("action, message", [
    ({"archive": {"format": "csv"}}, "format \"csv\" is not supported"),
    ({"archive": {"bufferRows": 5}}, "apply to format \"parquet\" only"),
    ({"archive": {"format": "parquet", "bufferRows": 0}}, "bufferRows 0 is out of range"),
    ({"archive": {"format": "parquet", "bufferSeconds": 86400}}, "bufferSeconds 86400 is out of range"),
    ({"archive": {"format": "parquet", "rows": 5}}, "unknown field"),
])
def test_bad_archive_actions_are_refused(shoal: Shoal, action: dict, message: str):
    r = http(shoal, "POST", f"{RULES}/bad_archive", payload("SELECT * FROM 'x'", action))
    assert r.status == 400, r
    assert message in r.message, r

class Receiver:
    """A local HTTP server recording POSTs: `/ok` answers 200, `/flaky` 500 twice then 200,
    `/hang` sleeps 5 s, `/gone` answers 404."""

    def __init__(self):
        import http.server
        import threading

        self.requests: list[tuple[str, dict, bytes]] = []
        self.flaky_left = 2
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    flaky = self.path == "/flaky" and outer.flaky_left > 0
                    if flaky:
                        outer.flaky_left -= 1
                if self.path == "/hang":
                    time.sleep(5)
                code = 500 if flaky else 404 if self.path == "/gone" else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[bytes]:
        with self.lock:
            return [b for p, _, b in self.requests if p == path]

    def wait(self, path: str, n: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.bodies(path)) < n:
            time.sleep(0.02)
        return self.bodies(path)

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def webhook(url: str, **extra: object) -> dict:
    return {"webhook": {"url": url, **extra}}


def test_webhook_action_posts_with_headers_templates_and_retries(shoal: Shoal, receiver: Receiver):
    create(shoal, "hook", "SELECT temp, topic(2) AS truck FROM 'hook/+'",
           webhook(receiver.url + "/ok", headers={"x-fleet": "north"}),
           webhook(receiver.url + "/ok", body="truck ${topic(2)} at ${temp}", headers={"content-type": "text/plain"}),
           webhook(receiver.url + "/flaky", retries=3))
    pub = shoal.client()
    pub.publish("hook/t1", b'{"temp": -3}', qos=1)
    got = receiver.wait("/ok", 2)
    assert sorted(got) == sorted([b'{"temp":-3,"truck":"t1"}', b"truck t1 at -3"]), got
    headers = [h for p, h, _ in receiver.requests if p == "/ok"]
    assert any(h.get("x-fleet") == "north" and h.get("content-type") == "application/json" for h in headers), headers
    assert any(h.get("content-type") == "text/plain" for h in headers), headers
    # Two 500s, then 200: three attempts, delivered, no error.
    assert len(receiver.wait("/flaky", 3)) == 3
    text = http(shoal, "GET", "/metrics").raw.decode()
    deadline = time.time() + 5
    while 'shoal_rules_webhooks_total{result="sent"} 3' not in text and time.time() < deadline:
        time.sleep(0.05)
        text = http(shoal, "GET", "/metrics").raw.decode()
    assert 'shoal_rules_webhooks_total{result="sent"} 3' in text, text
    assert 'shoal_rules_webhooks_total{result="retried"} 2' in text
    assert 'shoal_rules_webhooks_total{result="failed"} 0' in text


def test_a_hanging_or_refusing_webhook_runs_the_error_action_and_slows_nothing(shoal: Shoal, receiver: Receiver):
    create(shoal, "slow_hook", "SELECT * FROM 'slow/+'", webhook(receiver.url + "/hang", timeoutMs=300, retries=1),
           error=republish("hook_errors/${topic(2)}"))
    create(shoal, "gone_hook", "SELECT * FROM 'gone/+'", webhook(receiver.url + "/gone"),
           error=republish("hook_errors/gone"))
    create(shoal, "fast", "SELECT * FROM 'fast/+'", republish("fast_out"))
    errors = subscriber(shoal, "hook_errors/#")
    fast = subscriber(shoal, "fast_out")
    pub = shoal.client()
    for i in range(40):
        pub.publish(f"slow/s{i}", json.dumps({"i": i}), qos=1)
    # Meanwhile other traffic and other rules flow at once.
    started = time.time()
    pub.publish("fast/x", b'{"ok": 1}', qos=1)
    assert body(fast.wait_message(3)) == {"ok": 1}
    assert time.time() - started < 1.0
    pub.publish("gone/g", b'{"g": 1}', qos=1)
    # 404 is not retried; the hanging target times out twice (300 ms each, 200 ms apart).
    docs = [body(m) for m in errors.wait_messages(41, timeout=20)]
    gone = [d for d in docs if d["topic"] == "gone/g"]
    assert len(gone) == 1 and "404" in gone[0]["failures"][0]["errorMessage"], gone
    assert "after 1 attempt" in gone[0]["failures"][0]["errorMessage"]
    slow = [d for d in docs if d["topic"].startswith("slow/")]
    assert len(slow) == 40
    f = slow[0]["failures"][0]
    assert f["failedAction"] == "WebhookAction" and f["failedResource"] == receiver.url + "/hang", f
    assert "no answer within 300 ms" in f["errorMessage"] and "after 2 attempt" in f["errorMessage"], f
    assert slow[0]["ruleName"] == "slow_hook" and base64.b64decode(slow[0]["base64OriginalPayload"])


def test_error_action_output_goes_to_the_other_rules(shoal: Shoal, receiver: Receiver):
    """What an error action publishes is its rule's output, like a republish: other rules see
    it (and its own rule does not), whether the error came from evaluating the SQL or from a
    webhook that failed later on another thread."""
    create(shoal, "eval_fails", "SELECT get_thing_shadow('not a thing!') AS s FROM 'evalfail/+'",
           republish("never"), error=republish("faults/eval"))
    create(shoal, "hook_fails", "SELECT * FROM 'hookfail/+'", webhook(receiver.url + "/gone"),
           error=republish("faults/hook"))
    create(shoal, "watcher", "SELECT topic(2) AS kind, ruleName FROM 'faults/+'", republish("watched/${topic(2)}"))
    sub = subscriber(shoal, "watched/#", "never")
    pub = shoal.client()
    pub.publish("evalfail/x", b'{"n": 1}', qos=1)
    pub.publish("hookfail/x", b'{"n": 2}', qos=1)
    got = by_topic(sub.wait_messages(2))
    assert got == {"watched/eval": {"kind": "eval", "ruleName": "eval_fails"},
                   "watched/hook": {"kind": "hook", "ruleName": "hook_fails"}}, got
    sub.expect_no_message(QUIET)
    wait_stats(shoal, "eval_fails", sqlErrors=1, errorActions=1)
    wait_stats(shoal, "watcher", matched=2, actionsOk=2)


def test_webhook_definitions_are_checked(shoal: Shoal):
    for bad, want in [
        (webhook("https:///x"), "not an http(s)://"),
        (webhook("ftp://x"), "not an http(s)://"),
        (webhook("http://h/x", timeoutMs=0), "timeoutMs"),
        (webhook("http://h/x", retries=11), "retries"),
        (webhook("http://h/x", body="${"), "body"),
    ]:
        a = http(shoal, "POST", "/api/v1/rules/bad_hook", payload("SELECT * FROM 'x'", bad))
        assert a.status == 400 and want in a.message, (bad, a.message)


def test_basic_ingest_goes_to_the_named_rule_only(shoal: Shoal):
    create(shoal, "ingest", "SELECT *, topic() AS t, topic(1) AS first FROM 'sensors/#'",
           republish("ingested/${topic(2)}"))
    create(shoal, "other", "SELECT * FROM 'sensors/#'", republish("other/${topic(2)}"))
    out = subscriber(shoal, "ingested/#", "other/#")
    spy = subscriber(shoal, "$aws/rules/#", "sensors/#")
    pub = shoal.client()

    ack = pub.publish("$aws/rules/ingest/sensors/s1", b'{"v": 1}', qos=1)
    assert ack.reason_code < 0x80, ack
    m = out.wait_message()
    assert (m.topic, body(m)) == ("ingested/s1", {"v": 1, "t": "sensors/s1", "first": "sensors"})

    pub.publish("sensors/s2", b'{"v": 2}', qos=1)  # an ordinary publish: both rules, and the spy
    assert sorted(m.topic for m in out.wait_messages(2)) == ["ingested/s2", "other/s2"]
    assert [m.topic for m in spy.wait_messages(1)] == ["sensors/s2"], "Basic Ingest is not routed"
    out.expect_no_message(QUIET)
    spy.expect_no_message(0.1)

    # The HTTP data plane's publish is a client publish too.
    a = http(shoal, "POST", "/topics/%24aws/rules/ingest/sensors/s5?qos=1", data=b'{"v": 5}',
             content_type="application/json")
    assert a.status == 200, a
    m = out.wait_message()
    assert (m.topic, body(m)) == ("ingested/s5", {"v": 5, "t": "sensors/s5", "first": "sensors"})

    before = metric(shoal, "shoal_rules_basic_ingest_unknown_total")
    pub.publish("$aws/rules/no_such_rule/sensors/s3", b"{}", qos=1)
    ok(http(shoal, "POST", f"{RULES}/ingest/disable"))
    pub.publish("$aws/rules/ingest/sensors/s4", b"{}", qos=1)
    wait_until(lambda: metric(shoal, "shoal_rules_basic_ingest_unknown_total") == before + 2,
               what="two Basic Ingest publishes without an enabled rule")
    out.expect_no_message(QUIET)
    spy.expect_no_message(0.1)
    assert stats(shoal, "other")["matched"] == 1


# -- lifecycle -------------------------------------------------------------------------------------

def test_disable_enable_replace_and_delete(shoal: Shoal):
    created = create(shoal, "life", "SELECT * FROM 'life/in'", republish("life/v1"), ruleDisabled=True,
                     description="first")
    assert created["topicRulePayload"]["ruleDisabled"] is True
    assert created["topicRulePayload"]["description"] == "first"
    sub = subscriber(shoal, "life/+")
    pub = shoal.client()

    def send(n: int) -> None:
        pub.publish("life/in", json.dumps({"n": n}), qos=1)

    def outputs(n: int) -> list[tuple[str, object]]:
        return pairs(sub.wait_messages(n))

    send(1)
    assert outputs(1) == [("life/in", {"n": 1})], "disabled: only the original"
    assert stats(shoal, "life")["matched"] == 0

    enabled = ok(http(shoal, "POST", f"{RULES}/life/enable"))
    assert enabled["topicRulePayload"]["ruleDisabled"] is False
    send(2)
    assert outputs(2) == [("life/in", {"n": 2}), ("life/v1", {"n": 2})]

    assert ok(http(shoal, "POST", f"{RULES}/life/disable"))["topicRulePayload"]["ruleDisabled"] is True
    send(3)
    assert outputs(1) == [("life/in", {"n": 3})]
    ok(http(shoal, "POST", f"{RULES}/life/enable"))

    replaced = ok(http(shoal, "PUT", f"{RULES}/life",
                       payload("SELECT n * 10 AS n FROM 'life/in' WHERE n > 4", republish("life/v2"))))
    assert replaced["createdAtMs"] == created["createdAtMs"], "replacing keeps the creation time"
    assert replaced["stats"]["matched"] == 0, "counters start over"
    assert replaced["topicRulePayload"]["actions"] == [republish("life/v2")]
    assert "description" not in replaced["topicRulePayload"]
    send(4)
    send(5)
    assert outputs(3) == [("life/in", {"n": 4}), ("life/in", {"n": 5}), ("life/v2", {"n": 50})]

    bad = http(shoal, "PUT", f"{RULES}/life", payload("SELECT FROM 'life/in'", republish("life/v3")))
    assert bad.status == 400 and bad.error_type == "SqlParseException", bad
    send(6)
    assert outputs(2) == [("life/in", {"n": 6}), ("life/v2", {"n": 60})], "a refused replace changes nothing"

    d = http(shoal, "DELETE", f"{RULES}/life")
    assert d.status == 204 and d.raw == b"", d
    send(7)
    assert outputs(1) == [("life/in", {"n": 7})]
    sub.expect_no_message(QUIET)
    assert http(shoal, "GET", f"{RULES}/life").status == 404
    assert http(shoal, "DELETE", f"{RULES}/life").status == 404
    assert ok(http(shoal, "GET", RULES)) == {"rules": []}


def test_list_and_get(shoal: Shoal):
    assert ok(http(shoal, "GET", RULES)) == {"rules": []}
    definition = {"sql": "SELECT * FROM 'a/#'", "description": "d", "actions": [republish("b", qos=1)],
                  "ruleDisabled": False, "awsIotSqlVersion": "2016-03-23",
                  "errorAction": republish("e/${topic()}")}
    made = ok(http(shoal, "POST", f"{RULES}/zeta", definition), 201)
    create(shoal, "alpha", "SELECT * FROM 'x'")
    rules = ok(http(shoal, "GET", RULES))["rules"]
    assert [r["ruleName"] for r in rules] == ["alpha", "zeta"], "sorted by name"
    zeta = ok(http(shoal, "GET", f"{RULES}/zeta"))
    assert zeta == made == rules[1]
    assert zeta["topicRulePayload"] == definition, "the definition as given"
    assert abs(zeta["createdAtMs"] - time.time() * 1000) < 10_000
    assert zeta["stats"] == {"matched": 0, "selected": 0, "sqlErrors": 0, "actionsOk": 0, "actionsFailed": 0,
                             "errorActions": 0, "errorActionFailures": 0}


def test_refused_definitions_and_unknown_rules(shoal: Shoal):
    create(shoal, "taken", "SELECT * FROM 'a'")
    a = http(shoal, "POST", f"{RULES}/taken", payload("SELECT * FROM 'b'"))
    assert a.status == 409 and a.error_type == "ResourceAlreadyExistsException" and "taken" in a.message, a
    assert ok(http(shoal, "GET", f"{RULES}/taken"))["topicRulePayload"]["sql"] == "SELECT * FROM 'a'"

    # SQL errors carry line:column.
    a = http(shoal, "POST", f"{RULES}/r1", payload("SELECT temp FROM 'fleet/+/t' WHER temp > 1"))
    assert a.status == 400 and a.error_type == "SqlParseException", a
    assert "1:30" in a.message and "WHER" in a.message, a
    a = http(shoal, "POST", f"{RULES}/r1", payload("SELECT temp\nFROM 'fleet/+/t'\nWHERE temp > > 1"))
    assert a.status == 400 and a.error_type == "SqlParseException" and "3:14" in a.message, a
    for sql in ["SELECT nosuchfunction(x) FROM 'a'", "SELECT * FROM 'a/#/b'", "SELECT aws_lambda('f', *) FROM 'a'",
                "SELECT 1", ""]:
        a = http(shoal, "POST", f"{RULES}/r1", payload(sql))
        assert a.status == 400 and a.error_type == "SqlParseException" and a.message, (sql, a)

    invalid = [
        ("bad-name", payload("SELECT * FROM 'a'")),
        ("x" * 129, payload("SELECT * FROM 'a'")),
        ("r1", {"sql": "SELECT * FROM 'a'", "bogus": 1}),
        ("r1", {"actions": []}),
        ("r1", payload("SELECT * FROM 'a'", {"lambda": {"functionArn": "arn:aws:lambda:x"}})),
        ("r1", payload("SELECT * FROM 'a'", republish("x", qos=2))),
        ("r1", payload("SELECT * FROM 'a'", republish("x/#"))),
        ("r1", payload("SELECT * FROM 'a'", republish(""))),
        ("r1", payload("SELECT * FROM 'a'", republish("x/${"))),
        ("r1", payload("SELECT * FROM 'a'", plugin_action("bad name"))),
        ("r1", payload("SELECT * FROM 'a'", *[republish("x")] * 11)),
        ("r1", payload("SELECT * FROM 'a'", error=republish("x", qos=5))),
        ("r1", payload("SELECT * FROM 'a'", awsIotSqlVersion="2099-01-01")),
        ("r1", payload("SELECT * FROM 'a'", description="d" * 2029)),
    ]
    for name, definition in invalid:
        a = http(shoal, "POST", f"{RULES}/{name}", definition)
        assert a.status == 400 and a.error_type in ("InvalidRequestException", "SqlParseException"), (definition, a)
        assert a.message, a
    a = http(shoal, "POST", f"{RULES}/r1", data=b"{not json", content_type="application/json")
    assert a.status == 400 and a.error_type == "InvalidRequestException", a
    assert "actions[0]" in http(shoal, "POST", f"{RULES}/r1",
                                payload("SELECT * FROM 'a'", republish("x/${"))).message

    for method, path in [("GET", "nope"), ("DELETE", "nope"), ("POST", "nope/enable"), ("POST", "nope/disable")]:
        a = http(shoal, method, f"{RULES}/{path}")
        assert a.status == 404 and a.error_type == "ResourceNotFoundException", (method, path, a)
    a = http(shoal, "PUT", f"{RULES}/nope", payload("SELECT * FROM 'a'"))
    assert a.status == 404 and a.error_type == "ResourceNotFoundException", a
    assert [r["ruleName"] for r in ok(http(shoal, "GET", RULES))["rules"]] == ["taken"], \
        "refused definitions leave nothing behind"


def test_rules_survive_a_restart(shoal: Shoal):
    create(shoal, "durable", "SELECT n FROM 'dur/in'", republish("dur/out", qos=1), description="kept")
    create(shoal, "sleeping", "SELECT n FROM 'dur/in'", republish("dur/sleeping"), ruleDisabled=True)
    pub = shoal.client()
    pub.publish("dur/in", b'{"n": 0}', qos=1)
    wait_stats(shoal, "durable", actionsOk=1)
    before = ok(http(shoal, "GET", RULES))["rules"]
    assert (shoal.data_dir / "rules" / "rules.json").is_file()

    shoal.restart()
    after = ok(http(shoal, "GET", RULES))["rules"]
    strip = [{k: v for k, v in r.items() if k != "stats"} for r in before]
    assert [{k: v for k, v in r.items() if k != "stats"} for r in after] == strip
    assert after[0]["stats"]["matched"] == 0, "counters are since the server started"
    sub = subscriber(shoal, "dur/#")
    shoal.client().publish("dur/in", b'{"n": 1, "x": 2}', qos=1)
    msgs = sub.wait_messages(2)
    assert pairs(msgs) == [("dur/in", {"n": 1, "x": 2}), ("dur/out", {"n": 1})]
    sub.expect_no_message(QUIET)

    # Changes after the restart persist too.
    ok(http(shoal, "DELETE", f"{RULES}/sleeping"), 204)
    shoal.restart()
    assert [r["ruleName"] for r in ok(http(shoal, "GET", RULES))["rules"]] == ["durable"]


def test_metrics_have_a_series_per_rule(shoal: Shoal):
    create(shoal, "m_ok", "SELECT * FROM 'm/+' WHERE v > 0", republish("m_out/${topic(2)}"))
    create(shoal, "m_bad", "SELECT * FROM 'm/+'", shadow_action("${topic(2)}"), error=republish("m_err"))
    pub = shoal.client()
    for v in (1, -1, 2):
        pub.publish(f"m/d{v}", json.dumps({"v": v}), qos=1)
    wait_stats(shoal, "m_ok", matched=3, selected=2, actionsOk=2)
    wait_stats(shoal, "m_bad", matched=3, actionsFailed=3, errorActions=3)
    text = http(shoal, "GET", "/metrics").raw.decode()
    expected = {
        ("shoal_rules_matched_total", "m_ok"): 3, ("shoal_rules_selected_total", "m_ok"): 2,
        ("shoal_rules_actions_ok_total", "m_ok"): 2, ("shoal_rules_actions_failed_total", "m_ok"): 0,
        ("shoal_rules_sql_errors_total", "m_ok"): 0,
        ("shoal_rules_matched_total", "m_bad"): 3, ("shoal_rules_actions_failed_total", "m_bad"): 3,
        ("shoal_rules_error_actions_total", "m_bad"): 3, ("shoal_rules_error_action_failures_total", "m_bad"): 0,
    }
    for (name, rule), value in expected.items():
        assert metric(shoal, name, f'rule="{rule}"') == value, (name, rule)
    assert metric(shoal, "shoal_rules_enqueued_total") == 3
    assert metric(shoal, "shoal_rules_dropped_total") == 0
    for family in ["shoal_rules_matched_total", "shoal_rules_error_actions_total"]:
        assert f"# TYPE {family} counter" in text
    ok(http(shoal, "DELETE", f"{RULES}/m_bad"), 204)
    text = http(shoal, "GET", "/metrics").raw.decode()
    assert 'rule="m_bad"' not in text and 'rule="m_ok"' in text


# -- a hostile plugin ------------------------------------------------------------------------------

@needs_plugins
def test_a_looping_plugin_in_a_rule_does_not_stop_other_traffic(shoal: Shoal):
    """infinite-loop spins until its deadline on a rules worker: publishes and deliveries to other
    subscribers go on meanwhile, every spin reaches the error action, and the plugin serves the
    next ordinary message."""
    deadline_ms = 300
    upload(shoal, "spin", "infinite-loop",
           {"deadline_ms": deadline_ms, "max_consecutive_failures": 1000, "settings": settings(trigger="spin")})
    create(shoal, "spinner", "SELECT * FROM 'spin/+'", plugin_action("spin"), error=republish("errors/spin"))
    errors = subscriber(shoal, "errors/#", "fixture/ok")
    chat_in = subscriber(shoal, "chat/#")
    chat_out = shoal.client()
    device = shoal.client()

    spins = 5
    started = time.monotonic()
    for _ in range(spins):
        device.publish("spin/1", b"spin", qos=1)
    latencies = []
    while time.monotonic() - started < spins * deadline_ms / 1000:
        sent = time.monotonic()
        chat_out.publish("chat/room", b"hello", qos=1)
        m = chat_in.wait_message(2)
        latencies.append(m.at - sent)
        time.sleep(0.05)
    assert len(latencies) >= 5 and max(latencies) < 0.5, f"delivery latencies while spinning: {latencies}"
    assert http(shoal, "GET", "/health", timeout=2).status == 200

    docs = [body(m) for m in errors.wait_messages(spins, timeout=spins * deadline_ms / 1000 + 10)]
    for d in docs:
        (failure,) = d["failures"]
        assert failure["failedAction"] == "PluginAction" and failure["failedResource"] == "spin", failure
        assert "deadline" in failure["errorMessage"], failure
    device.publish("spin/1", b"fine", qos=1)
    m = errors.wait_message(5)
    assert (m.topic, m.payload) == ("fixture/ok", b"fine")
    wait_stats(shoal, "spinner", actionsFailed=spins, errorActions=spins, actionsOk=1)


@needs_plugins
def test_queued_messages_reach_a_plugin_in_batches_and_a_trap_fails_only_its_own(shoal: Shoal):
    """A burst that queues up for the rules worker reaches the plugin (interface 0.3.0) in
    batches (`shoal_plugin_batches_total`): every message is answered once, in publish order, and
    each message that makes the plugin trap goes to the error action alone while the messages
    around it, in the same batch, are answered."""
    upload(shoal, "panicky", "panic",
           {"max_consecutive_failures": 1000, "settings": settings(trigger="boom")})
    create(shoal, "batched", "SELECT * FROM 'burst/+'", plugin_action("panicky"),
           error=republish("errors/burst"))
    sub = subscriber(shoal, "fixture/ok", "errors/#")
    device = shoal.client()
    payloads = [b"boom" if i % 100 == 50 else str(i).encode() for i in range(800)]
    for p in payloads:
        device.publish("burst/1", p, qos=1, wait=False)
    got = sub.wait_messages(len(payloads), timeout=60)
    answered = [m.payload for m in got if m.topic == "fixture/ok"]
    assert answered == [p for p in payloads if p != b"boom"], "each answered once, in order"
    errors = [body(m) for m in got if m.topic == "errors/burst"]
    assert len(errors) == payloads.count(b"boom")
    for doc in errors:
        assert base64.b64decode(doc["base64OriginalPayload"]) == b"boom"
        (failure,) = doc["failures"]
        assert "panicking" in failure["errorMessage"], failure
    sub.expect_no_message(QUIET)
    labels = 'plugin="panicky",version="1"'
    batches = metric(shoal, "shoal_plugin_batches_total", labels)
    batched = metric(shoal, "shoal_plugin_batched_messages_total", labels)
    assert batches > 0 and batched >= 2 * batches, (batches, batched)
    wait_stats(shoal, "batched", actionsOk=len(answered), actionsFailed=len(errors))


def test_a_full_rules_queue_holds_the_publisher_back_and_loses_nothing(make_shoal):
    """One rules worker with a queue of 4, ten rules that each read a different key of 60 KB
    documents (the whole document is parsed for each message, slower than a publisher can send
    them): rather than skipping messages, the broker holds the publisher back (back-pressure),
    and every rule sees every message, in order."""
    shoal = make_shoal("--rules-workers", "1", "--rules-queue", "4", "--rules-inline", "false")
    for i in range(10):
        create(shoal, f"heavy_{i}", f"SELECT k{i}, n FROM 'bp/+'", republish(f"bp_out/{i}"))
    out = subscriber(shoal, "bp_out/9")
    n = 150
    filler = list(range(6000))
    pub = shoal.client()
    for seq in range(n):
        doc = {f"k{i}": i for i in range(10)} | {"n": seq, "filler": filler}
        pub.publish("bp/dev", json.dumps(doc), qos=0, wait=False)
    pub.publish("bp/dev", json.dumps({"n": n}), qos=1)
    got = [body(m)["n"] for m in out.wait_messages(n + 1, timeout=60)]
    assert got == list(range(n + 1)), got
    for i in range(10):
        wait_stats(shoal, f"heavy_{i}", matched=n + 1)
    assert metric(shoal, "shoal_rules_dropped_total") == 0
    assert metric(shoal, "shoal_rules_held_back_total") > 0
    assert metric(shoal, "shoal_rules_hold_timeouts_total") == 0


@needs_plugins
def test_a_slow_plugin_rule_holds_its_publisher_back_once(make_shoal):
    """A rule whose plugin spins until its deadline fills its worker's queue: the publisher is
    held once, for at most 100 ms; then the queue counts as stalled and its messages are
    dropped for the rules (counted) instead of holding the publisher, whose publishes are
    acknowledged at once and still delivered."""
    shoal = make_shoal("--rules-workers", "1", "--rules-queue", "4")
    upload(shoal, "spin", "infinite-loop",
           {"deadline_ms": 200, "max_consecutive_failures": 1000, "settings": settings(trigger="spin")})
    create(shoal, "spinner", "SELECT * FROM 'slow/+'", plugin_action("spin"))
    seen = subscriber(shoal, "slow/#")
    pub = shoal.client()
    started = time.monotonic()
    for _ in range(20):
        pub.publish("slow/1", b"spin", qos=1)
    took = time.monotonic() - started
    assert len(seen.wait_messages(20, timeout=10)) == 20
    assert metric(shoal, "shoal_rules_dropped_total") >= 1
    assert 1 <= metric(shoal, "shoal_rules_held_back_total") <= 3
    assert metric(shoal, "shoal_rules_hold_timeouts_total") >= 1
    # 20 spins of 200 ms would take 4 s if the publisher waited for them.
    assert took < 3, f"20 acknowledged publishes took {took:.2f} s"


@needs_plugins
def test_a_publisher_held_behind_slow_work_waits_once_then_goes_on(make_shoal):
    """A quick rule's publisher shares the one worker with a spinning plugin's messages: one
    hold (at most 100 ms, of whichever publisher reached the full queue first) times out, the
    queue is then marked stalled, and the quick publisher's publishes go straight through
    (their rule evaluations dropped and counted) until the queue drains."""
    shoal = make_shoal("--rules-workers", "1", "--rules-queue", "4", "--rules-inline", "false")
    upload(shoal, "spin", "infinite-loop",
           {"deadline_ms": 300, "max_consecutive_failures": 1000, "settings": settings(trigger="spin")})
    create(shoal, "spinner", "SELECT * FROM 'slow/+'", plugin_action("spin"))
    create(shoal, "quick", "SELECT * FROM 'fast/+'", republish("fast_out"))
    slow = shoal.client()
    for _ in range(6):
        slow.publish("slow/1", b"spin", qos=1)
    fast = shoal.client()
    started = time.monotonic()
    for i in range(40):
        fast.publish("fast/1", str(i), qos=1)
    took = time.monotonic() - started
    # Normally one hold, timed out; a slow machine may see the queue drain and stall again.
    assert metric(shoal, "shoal_rules_hold_timeouts_total") >= 1
    assert metric(shoal, "shoal_rules_held_back_total") <= 5
    assert metric(shoal, "shoal_rules_dropped_total") >= 10
    # Held each time, 40 publishes would take 4 s.
    assert took < 3, f"40 acknowledged publishes took {took:.2f} s"


# -- CLI -------------------------------------------------------------------------------------------

def rule_cli(s: Shoal, *args: str, check: bool = True, stdin: str = ""):
    return cli(s, "rule", *args, check=check, stdin=stdin)


def rule_json(s: Shoal, *args: str, stdin: str = "") -> dict:
    return json.loads(rule_cli(s, *args, stdin=stdin).stdout)


def test_cli_creates_and_manages_rules(shoal: Shoal, tmp_path):
    made = rule_json(shoal, "create", "cli_rule", "--sql", "SELECT temp FROM 'cli/+' WHERE temp > 0",
                     "--republish", "cli_out/${topic(2)}:1", "--republish", "cli_all", "--description", "from flags",
                     "--error-republish", "cli_err")
    assert made["ruleName"] == "cli_rule"
    assert made["topicRulePayload"] == {
        "sql": "SELECT temp FROM 'cli/+' WHERE temp > 0", "description": "from flags",
        "actions": [republish("cli_out/${topic(2)}", qos=1), republish("cli_all")],
        "ruleDisabled": False, "errorAction": republish("cli_err")}
    sub = subscriber(shoal, "cli_out/#", "cli_all")
    pub = shoal.client()
    pub.publish("cli/d1", b'{"temp": 3}', qos=1)
    got = {m.topic: m for m in sub.wait_messages(2)}
    assert got["cli_out/d1"].qos == 1 and body(got["cli_out/d1"]) == {"temp": 3} and "cli_all" in got

    assert [r["ruleName"] for r in rule_json(shoal, "list")["rules"]] == ["cli_rule"]
    wait_stats(shoal, "cli_rule", actionsOk=2)
    shown = rule_json(shoal, "get", "cli_rule")
    assert shown["stats"]["selected"] == 1 and shown["topicRulePayload"] == made["topicRulePayload"]
    assert rule_json(shoal, "disable", "cli_rule")["topicRulePayload"]["ruleDisabled"] is True
    assert rule_json(shoal, "enable", "cli_rule")["topicRulePayload"]["ruleDisabled"] is False

    # Replace from what `get` printed, edited; and from standard input.
    shown["topicRulePayload"]["actions"] = [republish("cli_all")]
    f = tmp_path / "rule.json"
    f.write_text(json.dumps(shown))
    assert rule_json(shoal, "replace", "cli_rule", "--file", str(f))["topicRulePayload"]["actions"] == [
        republish("cli_all")]
    pub.publish("cli/d2", b'{"temp": 4}', qos=1)
    assert [(m.topic, body(m)) for m in sub.wait_messages(1)] == [("cli_all", {"temp": 4})]
    sub.expect_no_message(QUIET)
    aws = {"sql": "SELECT * FROM 'cli/+'", "ruleDisabled": True, "awsIotSqlVersion": "2016-03-23",
           "actions": [{"republish": {"topic": "cli_all", "qos": 0, "roleArn": "arn:aws:iam::1:role/r"}}]}
    replaced = rule_json(shoal, "replace", "cli_rule", "--file", "-", stdin=json.dumps(aws))
    assert replaced["topicRulePayload"] == aws, "an AWS definition carries over"

    # Actions of several kinds, in command-line order; created disabled.
    mixed = rule_json(shoal, "create", "cli_mixed", "--sql", "SELECT * FROM 'mx'", "--plugin", "p1",
                      "--shadow", "${topic(1)}", "--republish", "mx_out", "--plugin", "p2", "--disabled")
    assert mixed["topicRulePayload"]["actions"] == [
        plugin_action("p1"), shadow_action("${topic(1)}"), republish("mx_out"), plugin_action("p2")]
    assert mixed["topicRulePayload"]["ruleDisabled"] is True

    p = rule_cli(shoal, "delete", "cli_mixed")
    assert p.stdout == ""
    assert [r["ruleName"] for r in rule_json(shoal, "list")["rules"]] == ["cli_rule"]


def test_cli_errors_exit_non_zero_with_the_servers_message(shoal: Shoal, tmp_path):
    rule_cli(shoal, "create", "dup", "--sql", "SELECT * FROM 'a'")
    p = rule_cli(shoal, "create", "dup", "--sql", "SELECT * FROM 'a'", check=False)
    assert p.returncode != 0 and p.stdout == ""
    assert "409" in p.stderr and "ResourceAlreadyExistsException" in p.stderr, p.stderr

    p = rule_cli(shoal, "create", "badsql", "--sql", "SELECT * FORM 'a'", check=False)
    assert p.returncode != 0 and "SqlParseException" in p.stderr and "1:10" in p.stderr, p.stderr
    for args, words in [(["get", "nope"], ["404", "ResourceNotFoundException"]),
                        (["replace", "nope", "--sql", "SELECT * FROM 'a'"], ["404"]),
                        (["enable", "nope"], ["404"]),
                        (["delete", "nope"], ["404"]),
                        (["create", "bad-name", "--sql", "SELECT * FROM 'a'"], ["400", "invalid rule name"]),
                        (["create", "r", "--sql", "SELECT * FROM 'a'", "--plugin", "bad name"], ["400", "plugin"]),
                        (["create", "r", "--file", str(tmp_path / "missing.json")], ["missing.json"])]:
        p = rule_cli(shoal, *args, check=False)
        assert p.returncode != 0 and all(w in p.stderr for w in words), (args, p.stderr)
    f = tmp_path / "aws-only.json"
    f.write_text(json.dumps({"sql": "SELECT * FROM 'a'", "actions": [{"lambda": {"functionArn": "x"}}]}))
    p = rule_cli(shoal, "create", "r", "--file", str(f), check=False)
    assert p.returncode != 0 and "400" in p.stderr and "lambda" in p.stderr, p.stderr

    # Refused by the CLI itself, before any request.
    for args in [["create", "r", "--sql", "SELECT * FROM 'a'", "--republish", "x:2"],
                 ["create", "r", "--republish", "x"],
                 ["create", "r", "--file", "x.json", "--sql", "SELECT * FROM 'a'"]]:
        p = rule_cli(shoal, *args, check=False)
        assert p.returncode == 2 and p.stderr, (args, p.stderr)
    assert [r["ruleName"] for r in ok(http(shoal, "GET", RULES))["rules"]] == ["dup"]
    # Nothing listens here: a transport error, not a hang.
    p = subprocess.run([shoal.binary, "rule", "list", "--endpoint", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "cannot reach" in p.stderr, p.stderr


def test_rules_live_in_redis_on_the_redis_store(make_shoal, redis_url: str):
    """On the Redis store the rule set is kept in Redis: a node with a fresh data directory on the
    same Redis starts with the rules another node saved, and runs them."""
    first = make_shoal("--store", redis_url)
    create(first, "shared", "SELECT * FROM 'shared/+'", republish("shared_out/${topic(2)}"))
    first.close()
    second = make_shoal("--store", redis_url)
    assert second.data_dir != first.data_dir
    assert ok(http(second, "GET", f"{RULES}/shared"))["topicRulePayload"]["sql"] == "SELECT * FROM 'shared/+'"
    assert not (second.data_dir / "rules" / "rules.json").exists()
    sub = subscriber(second, "shared_out/#")
    second.client().publish("shared/x", b'{"a": 1}', qos=1)
    assert sub.wait_message(10).topic == "shared_out/x"


def test_rules_see_shadow_responses_but_not_the_answers_to_their_own_updates(shoal: Shoal):
    """As on AWS, a rule may watch `/update/delta` and `/update/documents`. A rule that answers an
    accepted update with a shadow update of its own does not see that update's answers (no loop)."""
    create(shoal, "on_delta", "SELECT state, topic(3) AS thing, clientid() AS who FROM '$aws/things/+/shadow/update/delta'",
           republish("deltas/${topic(3)}"))
    create(shoal, "echo_back", "SELECT VALUE {'state': {'reported': {'mirrored': state.reported.temp}}} "
           "FROM '$aws/things/+/shadow/update/accepted' WHERE NOT isUndefined(state.reported.temp)",
           {"shadow": {"thingName": "${topic(3)}"}})
    deltas = subscriber(shoal, "deltas/#")
    dev = shoal.client(client_id="truck-9")
    dev.publish("$aws/things/truck9/shadow/update", json.dumps({"state": {"desired": {"setpoint": -20}}}), qos=1)
    doc = body(deltas.wait_message(10))
    assert doc["state"] == {"setpoint": -20} and doc["thing"] == "truck9" and doc["who"] == "truck-9", doc
    # The accepted report is mirrored into the same shadow once: the answer to the rule's own
    # update is not seen by the rule (matched stays 2: the desired update and the report).
    dev.publish("$aws/things/truck9/shadow/update", json.dumps({"state": {"reported": {"temp": -18}}}), qos=1)
    wait_stats(shoal, "echo_back", selected=1, actionsOk=1)
    time.sleep(QUIET)
    assert stats(shoal, "echo_back")["matched"] == 2, stats(shoal, "echo_back")
    doc = ok(http(shoal, "GET", "/things/truck9/shadow"))
    assert doc["state"]["reported"] == {"temp": -18, "mirrored": -18} and doc["version"] == 3, doc


def _tls_receiver(tmp_path):
    """An HTTPS receiver with a certificate for 127.0.0.1 signed by a throw-away CA (openssl)."""
    import http.server
    import ssl
    import threading

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "srv.key", "-out", "srv.csr")
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "srv.pem")
    got: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            got.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://127.0.0.1:{server.server_address[1]}", tmp_path / "ca.pem", got


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_https_webhooks_check_the_target_certificate(make_shoal, tmp_path):
    server, url, ca, got = _tls_receiver(tmp_path)
    try:
        trusted = make_shoal("--webhook-ca-file", str(ca))
        create(trusted, "tls_hook", "SELECT * FROM 'tls/+'", webhook(url + "/ok"))
        trusted.client().publish("tls/a", b'{"n": 1}', qos=1)
        deadline = time.time() + 10
        while not got and time.time() < deadline:
            time.sleep(0.05)
        assert got == [b'{"n":1}'], got
        # A server that does not trust the CA refuses the target at once (no retries) and says why.
        strict = make_shoal()
        create(strict, "tls_hook", "SELECT * FROM 'tls/+'", webhook(url + "/ok", retries=3),
               error=republish("tls_errors"))
        errors = subscriber(strict, "tls_errors")
        strict.client().publish("tls/b", b'{"n": 2}', qos=1)
        f = body(errors.wait_message(10))["failures"][0]
        assert "certificate" in f["errorMessage"].lower() and "1 attempt" in f["errorMessage"], f
        assert got == [b'{"n":1}']
    finally:
        server.shutdown()


def test_boto3_iot_topic_rules(shoal: Shoal):
    """AWS's control-plane paths for topic rules, through boto3's `iot` client (the botocore
    model's paths, verbs and shapes): create, get, list (with its filters and paging), replace,
    disable/enable, delete; AWS's `kinesis` and `http` action shapes run as Shoal's stream and
    webhook; errors as AWS names them."""
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    iot = boto3.client("iot", endpoint_url=f"http://{shoal.host}:{shoal.http_port}", region_name="us-east-1",
                       aws_access_key_id=shoal.credentials[0], aws_secret_access_key=shoal.credentials[1],
                       config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=15))
    iot.create_topic_rule(ruleName="aws_alerts", topicRulePayload={
        "sql": "SELECT temp, topic(2) AS truck FROM 'fleet/+/telemetry' WHERE temp > -15",
        "description": "too warm",
        "awsIotSqlVersion": "2016-03-23",
        "ruleDisabled": False,
        "actions": [{"republish": {"topic": "alerts/${topic(2)}", "qos": 1, "roleArn": "arn:aws:iam::1:role/r"}},
                    {"kinesis": {"streamName": "warm", "partitionKey": "${topic(2)}", "roleArn": "arn:aws:iam::1:role/r"}}],
        "errorAction": {"republish": {"topic": "rule_errors", "roleArn": "arn:aws:iam::1:role/r"}},
    })
    iot.create_topic_rule(ruleName="aws_http", topicRulePayload={
        "sql": "SELECT * FROM 'door/#'", "ruleDisabled": True,
        "actions": [{"http": {"url": "http://127.0.0.1:9/hook", "headers": [{"key": "x-a", "value": "1"}]}}]})
    got = iot.get_topic_rule(ruleName="aws_alerts")
    assert got["ruleArn"] == "arn:aws:iot:us-east-1:000000000000:rule/aws_alerts"
    rule = got["rule"]
    assert rule["ruleName"] == "aws_alerts" and rule["description"] == "too warm" and not rule["ruleDisabled"]
    assert rule["actions"][0]["republish"]["topic"] == "alerts/${topic(2)}"
    assert rule["actions"][1] == {"kinesis": {"streamName": "warm", "partitionKey": "${topic(2)}",
                                              "roleArn": "arn:aws:iam::1:role/r"}}, rule["actions"]
    assert abs(rule["createdAt"].timestamp() - time.time()) < 60
    listed = iot.list_topic_rules()["rules"]
    assert [(r["ruleName"], r["topicPattern"], r["ruleDisabled"]) for r in listed] == [
        ("aws_alerts", "fleet/+/telemetry", False), ("aws_http", "door/#", True)]
    assert [r["ruleName"] for r in iot.list_topic_rules(topic="fleet/t1/telemetry")["rules"]] == ["aws_alerts"]
    assert [r["ruleName"] for r in iot.list_topic_rules(ruleDisabled=True)["rules"]] == ["aws_http"]
    page = iot.list_topic_rules(maxResults=1)
    assert [r["ruleName"] for r in page["rules"]] == ["aws_alerts"] and page["nextToken"] == "aws_alerts"
    assert [r["ruleName"] for r in iot.list_topic_rules(maxResults=1, nextToken=page["nextToken"])["rules"]] == ["aws_http"]

    # The rule runs: a warm reading is republished and appended to the stream.
    out = subscriber(shoal, "alerts/#")
    shoal.client().publish("fleet/t1/telemetry", b'{"temp": -3}', qos=1)
    assert body(out.wait_message(10)) == {"temp": -3, "truck": "t1"}
    deadline = time.time() + 10
    while time.time() < deadline and http(shoal, "GET", "/api/v1/streams/warm").status != 200:
        time.sleep(0.05)
    assert ok(http(shoal, "GET", "/api/v1/streams/warm"))["length"] == 1

    iot.replace_topic_rule(ruleName="aws_alerts", topicRulePayload={
        "sql": "SELECT * FROM 'fleet/+/telemetry' WHERE temp > 100", "actions": []})
    assert iot.get_topic_rule(ruleName="aws_alerts")["rule"]["sql"].endswith("temp > 100")
    iot.enable_topic_rule(ruleName="aws_http")
    assert not iot.get_topic_rule(ruleName="aws_http")["rule"]["ruleDisabled"]
    iot.disable_topic_rule(ruleName="aws_http")
    assert iot.get_topic_rule(ruleName="aws_http")["rule"]["ruleDisabled"]

    def error(call, **kw) -> str:
        with pytest.raises(ClientError) as e:
            call(**kw)
        return e.value.response["Error"]["Code"]

    assert error(iot.create_topic_rule, ruleName="aws_http",
                 topicRulePayload={"sql": "SELECT * FROM 'a'", "actions": []}) == "ResourceAlreadyExistsException"
    assert error(iot.create_topic_rule, ruleName="bad_sql",
                 topicRulePayload={"sql": "SELECT * FROM 'a' WHER", "actions": []}) == "SqlParseException"
    assert error(iot.create_topic_rule, ruleName="bad_http", topicRulePayload={
        "sql": "SELECT * FROM 'a'", "actions": [{"http": {"url": "http://h/x", "auth": {"sigv4": {
            "signingRegion": "us-east-1", "serviceName": "x", "roleArn": "arn:aws:iam::1:role/r"}}}}]}) \
        == "InvalidRequestException"
    assert error(iot.get_topic_rule, ruleName="missing") == "UnauthorizedException"
    assert error(iot.delete_topic_rule, ruleName="missing") == "UnauthorizedException"
    iot.delete_topic_rule(ruleName="aws_alerts")
    iot.delete_topic_rule(ruleName="aws_http")
    assert iot.list_topic_rules()["rules"] == []


def test_two_nodes_on_one_redis_share_rule_changes(make_shoal, redis_url: str):
    """Each node polls the shared rules' revision (every 2 s): a rule created on one node runs on
    the other without a restart, a change made on the second is seen by the first, and a rule
    that did not change keeps its counters across the reload."""
    a = make_shoal("--store", redis_url)
    b = make_shoal("--store", redis_url)
    create(a, "kept", "SELECT * FROM 'kept/+'", republish("kept_out"))
    a.client().publish("kept/1", b'{"n": 1}', qos=1)
    wait_stats(a, "kept", matched=1)

    def on(s: Shoal, name: str) -> bool:
        return http(s, "GET", f"{RULES}/{name}").status == 200

    wait_until(lambda: on(b, "kept"), timeout=10, what="node b to see rule kept")
    create(b, "from_b", "SELECT * FROM 'nb/+'", republish("nb_out/${topic(2)}"))
    wait_until(lambda: on(a, "from_b"), timeout=10, what="node a to see rule from_b")
    out = subscriber(a, "nb_out/#")
    a.client().publish("nb/x", b'{"v": 1}', qos=1)
    assert out.wait_message(10).topic == "nb_out/x"
    # The reload on node a kept the unchanged rule's counters.
    assert stats(a, "kept")["matched"] == 1
    ok(http(a, "DELETE", f"{RULES}/from_b"), 204)
    wait_until(lambda: not on(b, "from_b"), timeout=10, what="node b to drop rule from_b")


def test_inline_rules_run_on_the_io_thread_in_order(make_shoal):
    """With --rules-inline true, rules that never wait run in the broker's hook: republishes keep
    the publisher's order, failures still reach the error action, and rules that may wait (a
    shadow action) still go to the workers."""
    s = make_shoal("--rules-inline", "true")
    create(s, "fast", "SELECT n FROM 'in/+' WHERE n >= 0", republish("out/${topic(2)}", qos=1),
           {"republish": {"topic": "bad/${topic(2)}/#"}}, error=republish("inline_errors"))
    create(s, "waits", "SELECT VALUE {'state': {'reported': {'n': n}}} FROM 'w/+'",
           {"shadow": {"thingName": "${topic(2)}"}})
    out = subscriber(s, "out/#")
    errors = subscriber(s, "inline_errors")
    pub = s.client()
    for i in range(200):
        pub.publish("in/dev1", json.dumps({"n": i}), qos=1)
    got = [body(m)["n"] for m in out.wait_messages(200, timeout=20)]
    assert got == list(range(200)), got[:20]
    doc = body(errors.wait_message(10))
    assert doc["ruleName"] == "fast" and doc["failures"][0]["failedAction"] == "RepublishAction", doc
    # None of those 200 messages went through a worker's queue: they ran in the hook.
    assert metric(s, "shoal_rules_enqueued_total") == 0
    pub.publish("w/dev1", json.dumps({"n": 7}), qos=1)
    wait_stats(s, "waits", matched=1, actionsOk=1, timeout=20)
    assert metric(s, "shoal_rules_enqueued_total") == 1
    assert ok(http(s, "GET", "/things/dev1/shadow"))["state"]["reported"]["n"] == 7


def test_aws_http_action_failures_are_named_http_action(shoal: Shoal, receiver: Receiver):
    create(shoal, "aws_http_gone", "SELECT * FROM 'hg/+'",
           {"http": {"url": receiver.url + "/gone", "headers": [{"key": "x-fleet", "value": "north"}]}},
           error=republish("http_errors"))
    errors = subscriber(shoal, "http_errors")
    shoal.client().publish("hg/1", b'{"a": 1}', qos=1)
    f = body(errors.wait_message(10))["failures"][0]
    assert f["failedAction"] == "HttpAction" and "404" in f["errorMessage"], f
    _, headers, sent = next(r for r in receiver.requests if r[0] == "/gone")
    assert headers.get("x-fleet") == "north" and json.loads(sent) == {"a": 1}
