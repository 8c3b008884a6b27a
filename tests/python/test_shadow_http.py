"""The AWS IoT data-plane HTTP API (botocore service `iot-data`) on the broker's `http` port:
shadows (one code path with MQTT), ListNamedShadowsForThing, Publish with MQTT 5 properties,
GetRetainedMessage, and AWS error bodies / `x-amzn-ErrorType` / botocore exception classes.

References: botocore 1.43.11 `iot-data` 2015-05-28 model [BC]; AWS developer guide (DG)
`device-shadow-rest-api`, `device-shadow-mqtt`, `device-shadow-error-messages`; AWS API reference
`API_iotdata_Publish` (userProperties format); docs/SHADOW_SEMANTICS.md [SEM]."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse

import pytest

from mqtt_helpers import V3, V5, VERSION_IDS, VERSIONS, unique
from shadow_helpers import (
    MAX_DOC_BYTES, ShadowInbox, assert_error, body_json, check_ts, compact_len, http, http_json,
    iot_data, meta, ts_shape,
)

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])

NO_SHADOW = "No shadow exists with name: '{}'"


def shadow_path(thing: str, shadow: str | None = None) -> str:
    return f"/things/{thing}/shadow" + (f"?name={urllib.parse.quote(shadow, safe='')}" if shadow else "")


def client_error(excinfo) -> tuple[str, str, int]:
    """(error code, message, HTTP status) of a botocore ClientError."""
    e = excinfo.value
    return (e.response["Error"]["Code"], e.response["Error"]["Message"],
            e.response["ResponseMetadata"]["HTTPStatusCode"])


# -- one code path: HTTP updates reach MQTT subscribers ---------------------------------------

@versions
def test_http_update_publishes_accepted_delta_documents(shoal, version):
    """aws-iot-facts §1 / DG device-shadow-rest-api: an HTTP update publishes the same
    /update/accepted (identical to the HTTP response body), /update/delta and /update/documents
    to MQTT subscribers as an MQTT update; classic and named shadows."""
    thing = unique("thing")
    for shadow in (None, "cfg"):
        c = shoal.client(version=version)
        sh = ShadowInbox(c, thing, shadow)
        desired = {"color": "red", "lights": {"level": 3}}
        status, headers, body = http_json(shoal, "POST", shadow_path(thing, shadow),
                                          {"state": {"desired": desired}, "clientToken": "h1"})
        assert status == 200, body
        assert headers.get("content-type", "").startswith("application/json")
        ts = body["timestamp"]
        check_ts(ts)
        assert body == {"state": {"desired": desired}, "metadata": {"desired": meta(desired, ts)},
                        "version": 1, "timestamp": ts, "clientToken": "h1"}
        assert sh.take("update/accepted", "h1") == body, "MQTT /update/accepted differs from the HTTP response"
        assert sh.take("update/delta", "h1") == {"state": desired, "metadata": meta(desired, ts),
                                                 "version": 1, "timestamp": ts, "clientToken": "h1"}
        assert sh.take("update/documents", "h1") == {
            "previous": None,
            "current": {"state": {"desired": desired}, "metadata": {"desired": meta(desired, ts)}, "version": 1},
            "timestamp": ts, "clientToken": "h1"}

        # The same document through both interfaces.
        status, _, http_doc = http_json(shoal, "GET", shadow_path(thing, shadow))
        assert status == 200
        mqtt_doc = sh.get_doc()
        strip = lambda d: {k: v for k, v in d.items() if k not in ("timestamp", "clientToken")}  # noqa: E731
        assert strip(http_doc) == strip(mqtt_doc)
        assert "clientToken" not in http_doc

        # Delete over HTTP is announced on /delete/accepted.
        status, _, d = http_json(shoal, "DELETE", shadow_path(thing, shadow))
        assert status == 200 and d == {"version": 1, "timestamp": d["timestamp"]}, d
        assert sh.take("delete/accepted") == d


@versions
def test_http_errors_are_not_published_to_rejected(shoal, version):
    """DG device-shadow-error-messages: rejections are published on /rejected only for MQTT
    requests; HTTP callers get the error as the response."""
    thing = unique("thing")
    c = shoal.client(version=version)
    sh = ShadowInbox(c, thing)
    assert http_json(shoal, "POST", shadow_path(thing), {"state": {"reported": {"a": 1}}})[0] == 200
    sh.clear()
    assert http(shoal, "POST", shadow_path(thing), b"{bad")[0] == 400
    assert http(shoal, "POST", shadow_path(thing), {"state": {}, "version": 9, "clientToken": "c"})[0] == 409
    assert http(shoal, "GET", shadow_path(thing, "missing"))[0] == 404
    assert http(shoal, "DELETE", shadow_path(thing, "missing"))[0] == 404
    for suffix in ("update/rejected", "get/rejected", "delete/rejected"):
        sh.expect_none(suffix, 0.1)
    sh.expect_none("update/accepted", 0.3)


def test_http_error_bodies_and_error_type_header(shoal):
    """aws-iot-facts §1 / [SEM Errors]: HTTP errors carry the status, the x-amzn-ErrorType header
    botocore maps to an exception class, and the AWS body {code, message, timestamp, clientToken?}."""
    thing = unique("thing")
    http_json(shoal, "POST", shadow_path(thing), {"state": {"reported": {"a": 1}}})
    big = {"blob": "x" * 9216}
    cases = [
        ("POST", shadow_path(thing), b"nope", 400, "InvalidRequestException", "Invalid JSON", None),
        ("POST", shadow_path(thing), {"clientToken": "t1"}, 400, "InvalidRequestException",
         "Missing required node: state", "t1"),
        ("POST", shadow_path(thing), {"state": {"desired": {"a": [None]}}, "clientToken": "t2"}, 400,
         "InvalidRequestException", "Invalid JSON: null is not allowed in arrays", "t2"),
        ("POST", shadow_path(thing), {"state": {}, "version": 7, "clientToken": "t3"}, 409, "ConflictException",
         "Version conflict", "t3"),
        ("POST", shadow_path(thing), {"state": {"desired": big}, "clientToken": "t4"}, 413,
         "RequestEntityTooLargeException",
         # counted after the merge: the new desired plus the existing reported {"a":1}
         f"Json document too large. Size is {compact_len(big) + compact_len({'a': 1})}, "
         f"max allowed: {MAX_DOC_BYTES}", "t4"),
        ("POST", shadow_path(thing), b'{"state":{"desired":{"a":"\xff"}}}', 415,
         "UnsupportedDocumentEncodingException", "Unsupported documented encoding; supported encoding is UTF-8",
         None),
        ("GET", shadow_path(thing, "nope"), None, 404, "ResourceNotFoundException",
         NO_SHADOW.format(f"{thing}~nope"), None),
        ("DELETE", shadow_path("never-" + thing), None, 404, "ResourceNotFoundException",
         NO_SHADOW.format("never-" + thing), None),
    ]
    failures = []
    for method, path, body, status, error_type, message, token in cases:
        got_status, headers, payload = http_json(shoal, method, path, body)
        try:
            assert got_status == status, f"status {got_status}"
            assert headers.get("x-amzn-errortype") == error_type, f"x-amzn-ErrorType {headers.get('x-amzn-errortype')}"
            assert_error(payload, status, message, token)
        except AssertionError as e:
            failures.append(f"{method} {path} {body!r:.60}: {e} (body {payload})")
    assert not failures, "\n".join(failures)
    status, _, doc = http_json(shoal, "GET", shadow_path(thing))
    assert status == 200 and doc["version"] == 1 and doc["state"] == {"reported": {"a": 1}}


def test_http_invalid_names(shoal):
    """[BC] thingName [a-zA-Z0-9:_-]{1,128}, shadowName [$a-zA-Z0-9:_-]{1,64}: 400
    InvalidRequestException."""
    for path in ("/things/bad!name/shadow", "/things/" + "t" * 129 + "/shadow",
                 "/things/ok/shadow?name=bad.name", "/things/ok/shadow?name=" + "s" * 65):
        for method, body in (("GET", None), ("POST", {"state": {}}), ("DELETE", None)):
            status, headers, payload = http_json(shoal, method, path, body)
            assert (status, headers.get("x-amzn-errortype")) == (400, "InvalidRequestException"), \
                f"{method} {path}: {status} {headers} {payload}"
            assert "Invalid thing name" in payload.get("message", "") or \
                "Invalid shadow name" in payload.get("message", ""), payload
    status, _, _ = http_json(shoal, "POST", "/things/" + "T" * 128 + "/shadow?name=" + "$S:_-" * 12 + "abcd",
                             {"state": {"reported": {"a": 1}}})
    assert status == 200


# -- boto3 iot-data ---------------------------------------------------------------------------

def test_boto3_update_get_delete_classic_and_named(shoal):
    """[BC] UpdateThingShadow / GetThingShadow / DeleteThingShadow (payload is a StreamingBody of
    the AWS shadow JSON), classic and named (shadowName → ?name=)."""
    iot = iot_data(shoal)
    thing = unique("thing")
    for shadow in (None, "named-1"):
        kw = {"thingName": thing} | ({"shadowName": shadow} if shadow else {})
        desired = {"temp": 21, "mode": {"fan": "auto"}}
        r = iot.update_thing_shadow(payload=json.dumps({"state": {"desired": desired}, "clientToken": "b1"}), **kw)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
        acc = body_json(r)
        ts = acc["timestamp"]
        assert acc == {"state": {"desired": desired}, "metadata": {"desired": meta(desired, ts)},
                       "version": 1, "timestamp": ts, "clientToken": "b1"}
        acc = body_json(iot.update_thing_shadow(payload=json.dumps({"state": {"reported": {"temp": 21}},
                                                                    "version": 1}).encode(), **kw))
        assert acc["version"] == 2 and "clientToken" not in acc

        doc = body_json(iot.get_thing_shadow(**kw))
        check_ts(doc["timestamp"])
        assert {**doc, "metadata": ts_shape(doc["metadata"])} == {
            "state": {"desired": desired, "reported": {"temp": 21}, "delta": {"mode": {"fan": "auto"}}},
            "metadata": {"desired": meta(desired), "reported": meta({"temp": 21})},
            "version": 2, "timestamp": doc["timestamp"]}

        d = body_json(iot.delete_thing_shadow(**kw))
        assert d == {"version": 2, "timestamp": d["timestamp"]}
        check_ts(d["timestamp"])
        with pytest.raises(iot.exceptions.ResourceNotFoundException) as ei:
            iot.get_thing_shadow(**kw)
        assert client_error(ei) == ("ResourceNotFoundException",
                                    NO_SHADOW.format(f"{thing}~{shadow}" if shadow else thing), 404)
        assert body_json(iot.update_thing_shadow(payload=b'{"state":{}}', **kw))["version"] == 3


def test_boto3_error_exceptions(shoal):
    """[BC] UpdateThingShadow errors map to ConflictException, InvalidRequestException,
    RequestEntityTooLargeException, UnsupportedDocumentEncodingException; Get/Delete of a missing
    shadow to ResourceNotFoundException; each with the AWS message."""
    iot = iot_data(shoal)
    thing = unique("thing")
    iot.update_thing_shadow(thingName=thing, payload=b'{"state":{"reported":{"a":1}}}')

    with pytest.raises(iot.exceptions.ConflictException) as ei:
        iot.update_thing_shadow(thingName=thing, payload=b'{"state":{"reported":{"a":2}},"version":5}')
    assert client_error(ei) == ("ConflictException", "Version conflict", 409)

    with pytest.raises(iot.exceptions.InvalidRequestException) as ei:
        iot.update_thing_shadow(thingName=thing, payload=b'{"state":')
    assert client_error(ei) == ("InvalidRequestException", "Invalid JSON", 400)

    with pytest.raises(iot.exceptions.InvalidRequestException) as ei:
        iot.update_thing_shadow(thingName=thing, payload=b'{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}}')
    assert client_error(ei) == ("InvalidRequestException", "JSON contains too many levels of nesting; maximum is 6", 400)

    big = {"blob": "z" * 9216}
    with pytest.raises(iot.exceptions.RequestEntityTooLargeException) as ei:
        iot.update_thing_shadow(thingName=thing, payload=json.dumps({"state": {"reported": big}}))
    assert client_error(ei) == ("RequestEntityTooLargeException",
                                # after the merge with the stored reported {"a":1}
                                f"Json document too large. Size is {compact_len({'a': 1, **big})}, "
                                f"max allowed: {MAX_DOC_BYTES}", 413)

    with pytest.raises(iot.exceptions.UnsupportedDocumentEncodingException) as ei:
        iot.update_thing_shadow(thingName=thing, payload=b'{"state":{"reported":{"a":"\xc3"}}}')
    assert client_error(ei)[0] == "UnsupportedDocumentEncodingException"
    assert client_error(ei)[2] == 415

    with pytest.raises(iot.exceptions.ResourceNotFoundException) as ei:
        iot.get_thing_shadow(thingName=thing, shadowName="ghost")
    assert client_error(ei) == ("ResourceNotFoundException", NO_SHADOW.format(f"{thing}~ghost"), 404)
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as ei:
        iot.delete_thing_shadow(thingName="no-such-" + thing)
    assert client_error(ei) == ("ResourceNotFoundException", NO_SHADOW.format("no-such-" + thing), 404)

    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.get_thing_shadow(thingName="bad!name")

    doc = body_json(iot.get_thing_shadow(thingName=thing))
    assert (doc["state"], doc["version"]) == ({"reported": {"a": 1}}, 1), "a rejected update changed the shadow"


def test_boto3_list_named_shadows_paging(shoal):
    """DG device-shadow-rest-api / [BC] ListNamedShadowsForThing: {results, nextToken?, timestamp};
    pageSize pages through every named shadow exactly once (nextToken absent on the last page);
    the classic shadow and deleted shadows are not listed; an unknown thing has an empty list."""
    iot = iot_data(shoal)
    thing = unique("thing")
    names = sorted(f"sh-{i}" for i in range(7))
    iot.update_thing_shadow(thingName=thing, payload=b'{"state":{"reported":{"classic":true}}}')
    for n in names:
        iot.update_thing_shadow(thingName=thing, shadowName=n, payload=b'{"state":{"reported":{"x":1}}}')
    # Another thing's shadows must not show up.
    iot.update_thing_shadow(thingName=thing + "x", shadowName="other", payload=b'{"state":{}}')

    r = iot.list_named_shadows_for_thing(thingName=thing)
    assert sorted(r["results"]) == names and "nextToken" not in r, r
    check_ts(r["timestamp"])

    pages, token = [], None
    for _ in range(10):
        kw = {"thingName": thing, "pageSize": 3} | ({"nextToken": token} if token else {})
        r = iot.list_named_shadows_for_thing(**kw)
        check_ts(r["timestamp"])
        pages.append(r["results"])
        token = r.get("nextToken")
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1], f"pages: {pages}"
    flat = [n for p in pages for n in p]
    assert sorted(flat) == names and len(set(flat)) == 7, f"paging lost or repeated names: {pages}"

    iot.delete_thing_shadow(thingName=thing, shadowName="sh-3")
    r = iot.list_named_shadows_for_thing(thingName=thing, pageSize=100)
    assert sorted(r["results"]) == [n for n in names if n != "sh-3"], "a deleted shadow is still listed"

    r = iot.list_named_shadows_for_thing(thingName="unknown-" + thing)
    assert r["results"] == [] and "nextToken" not in r

    for bad in ("0", "101"):
        status, headers, _ = http(shoal, "GET", f"/api/things/shadow/ListNamedShadowsForThing/{thing}?pageSize={bad}")
        assert (status, headers.get("x-amzn-errortype")) == (400, "InvalidRequestException"), (bad, status)


@versions
def test_boto3_publish_qos_and_retain(shoal, version):
    """[BC] Publish (qos 0/1, retain) reaches MQTT subscribers with the payload and QoS; a
    retained publish is stored (new subscribers get RETAIN=1, GetRetainedMessage returns it); an
    empty retained publish deletes it."""
    iot = iot_data(shoal)
    sub = shoal.client(version=version)
    topic = f"http/pub/{unique('t')}"
    sub.subscribe(topic, qos=1)

    iot.publish(topic=topic, qos=0, payload=b"zero")
    m = sub.wait_message()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"zero", 0, False)
    iot.publish(topic=topic, qos=1, payload=b"one")
    m = sub.wait_message()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"one", 1, False)

    t0 = time.time()
    iot.publish(topic=topic, qos=1, retain=True, payload=b"kept")
    m = sub.wait_message()
    assert (m.payload, m.qos) == (b"kept", 1)
    assert m.retain is False, "[MQTT-3.3.1-9]/v5 RAP=0: live subscribers get RETAIN=0"
    late = shoal.client(version=version)
    late.subscribe(topic, qos=1)
    m = late.wait_message()
    assert (m.payload, m.retain) == (b"kept", True)

    r = iot.get_retained_message(topic=topic)
    assert (r["topic"], r["payload"], r["qos"]) == (topic, b"kept", 1), r
    assert abs(r["lastModifiedTime"] / 1000 - t0) < 5, f"lastModifiedTime is not epoch ms: {r['lastModifiedTime']}"

    iot.publish(topic=topic, qos=1, retain=True, payload=b"")
    assert sub.wait_message().payload == b""
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_retained_message(topic=topic)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_retained_message(topic=f"never/{unique('t')}")
    sub.expect_no_message(0.2)


def test_boto3_publish_mqtt5_properties(shoal):
    """[BC] Publish contentType, responseTopic, messageExpiry (query), correlationData (base64
    header) and payloadFormatIndicator (header) arrive as MQTT 5 properties; a v3 subscriber gets
    the plain message."""
    iot = iot_data(shoal)
    sub5 = shoal.client(version=V5)
    sub3 = shoal.client(version=V3)
    topic = f"http/props/{unique('t')}"
    sub5.subscribe(topic, qos=1)
    sub3.subscribe(topic, qos=1)
    corr = b"\x00\x01corr\xff"
    iot.publish(topic=topic, qos=1, payload=b'{"a":1}', contentType="application/json",
                responseTopic="reply/here", correlationData=base64.b64encode(corr).decode(),
                payloadFormatIndicator="UTF8_DATA", messageExpiry=60)
    m = sub5.wait_message()
    assert (m.topic, m.payload, m.qos) == (topic, b'{"a":1}', 1)
    assert m.prop("ContentType") == "application/json"
    assert m.prop("ResponseTopic") == "reply/here"
    assert m.prop("CorrelationData") == corr
    assert m.prop("PayloadFormatIndicator") == 1
    assert 55 <= (m.prop("MessageExpiryInterval") or 0) <= 60, m.prop("MessageExpiryInterval")
    m3 = sub3.wait_message()
    assert (m3.payload, m3.qos) == (b'{"a":1}', 1)

    iot.publish(topic=topic, qos=1, payload=b"\x00\xff", payloadFormatIndicator="UNSPECIFIED_BYTES")
    m = sub5.wait_message()
    assert m.payload == b"\x00\xff" and not m.prop("PayloadFormatIndicator"), m.prop("PayloadFormatIndicator")


def test_boto3_publish_user_properties(shoal):
    """AWS API reference Publish: userProperties is a JSON array of single-pair objects,
    `[{"deviceName": "alpha"}, {"deviceCnt": "45"}]`, which botocore sends base64-encoded in
    x-amz-mqtt5-user-properties; each pair becomes an MQTT 5 User Property, in order."""
    iot = iot_data(shoal)
    sub = shoal.client(version=V5)
    topic = f"http/up/{unique('t')}"
    sub.subscribe(topic, qos=1)
    iot.publish(topic=topic, qos=1, payload=b"x",
                userProperties=[{"deviceName": "alpha"}, {"deviceCnt": "45"}, {"deviceName": "beta"}])
    m = sub.wait_message()
    assert m.payload == b"x"
    assert m.prop("UserProperty") == [("deviceName", "alpha"), ("deviceCnt", "45"), ("deviceName", "beta")]


@versions
def test_boto3_publish_to_shadow_update_topic(shoal, version):
    """DG device-shadow-rest-api/mqtt: a data-plane Publish to $aws/things/{thing}/shadow/update is a
    shadow request like an MQTT one; the accepted response goes to MQTT subscribers."""
    iot = iot_data(shoal)
    thing = unique("thing")
    c = shoal.client(version=version)
    sh = ShadowInbox(c, thing)
    iot.publish(topic=f"$aws/things/{thing}/shadow/update", qos=1,
                payload=json.dumps({"state": {"reported": {"via": "http"}}, "clientToken": "hp"}))
    acc = sh.take("update/accepted", "hp")
    assert (acc["state"], acc["version"]) == ({"reported": {"via": "http"}}, 1)
    doc = body_json(iot.get_thing_shadow(thingName=thing))
    assert doc["state"] == {"reported": {"via": "http"}}


def test_boto3_retained_message_user_properties(shoal):
    """[BC] GetRetainedMessage returns userProperties (a blob: the JSON array of single-pair
    objects the message was published with) for a retained message that had user properties."""
    iot = iot_data(shoal)
    topic = f"http/rup/{unique('t')}"
    props = [{"deviceName": "alpha"}, {"deviceCnt": "45"}]
    iot.publish(topic=topic, qos=1, retain=True, payload=b"r", userProperties=props)
    r = iot.get_retained_message(topic=topic)
    assert (r["topic"], r["payload"], r["qos"]) == (topic, b"r", 1)
    assert "userProperties" in r, f"GetRetainedMessage without userProperties: {r}"
    assert json.loads(r["userProperties"]) == props
