"""Device Shadows over MQTT (classic and named) on the `$aws/things/{thing}/shadow/...` reserved
topics, with paho-mqtt 3.1.1 and 5: response payloads, merge rules, versions and optimistic
locking, clientToken echo, every documented error, name validation and the per-client 429 limit.

References: AWS developer guide (DG) `device-shadow-mqtt`, `device-shadow-document`,
`device-shadow-data-flow`, `device-shadow-error-messages`; Shoal's choices where AWS is silent
are in docs/SHADOW_SEMANTICS.md (cited as [SEM §section])."""

from __future__ import annotations

import json
import time

import pytest

from mqtt_helpers import VERSION_IDS, VERSIONS, unique
from shadow_helpers import (
    MAX_DOC_BYTES, T, ShadowInbox, assert_error, check_ts, compact_len, meta, ts_shape,
)

versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: VERSION_IDS[v])

NO_SHADOW = "No shadow exists with name: '{}'"
THING_NAME_ERR = "Invalid thing name: it must be 1 to 128 characters from [a-zA-Z0-9:_-]"
SHADOW_NAME_ERR = "Invalid shadow name: it must be 1 to 64 characters from [$a-zA-Z0-9:_-]"


def nested(levels: int, leaf=1) -> dict:
    """{"l1": {"l2": ... {"lN": leaf}}}: an object of depth `levels`."""
    v = leaf
    for i in range(levels, 0, -1):
        v = {f"l{i}": v}
    return v


# -- update: accepted, delta, documents ------------------------------------------------------

@versions
def test_update_desired_accepted_delta_documents(shoal, version):
    """DG device-shadow-document: /update/accepted echoes the request state with its metadata,
    version, timestamp and clientToken; /update/delta carries the differing desired keys with
    their metadata; /update/documents has previous (null for a new shadow) and current."""
    c = shoal.client(version=version)
    sh = ShadowInbox(c, unique("thing"))
    desired = {"color": "red", "lights": {"on": True, "level": 3}, "seq": ["a", "b"], "n": None}
    stored = {k: v for k, v in desired.items() if v is not None}
    acc = sh.update({"state": {"desired": desired}, "clientToken": "tok-1"})
    ts = acc["timestamp"]
    check_ts(ts)
    assert acc == {
        "state": {"desired": desired},
        "metadata": {"desired": meta(desired, ts)},
        "version": 1,
        "timestamp": ts,
        "clientToken": "tok-1",
    }
    delta = sh.take("update/delta", "tok-1")
    assert delta == {
        "state": stored,
        "metadata": meta(stored, ts),
        "version": 1,
        "timestamp": ts,
        "clientToken": "tok-1",
    }
    docs = sh.take("update/documents", "tok-1")
    assert docs == {
        "previous": None,
        "current": {"state": {"desired": stored}, "metadata": {"desired": meta(stored, ts)}, "version": 1},
        "timestamp": ts,
        "clientToken": "tok-1",
    }
    sh.expect_none("update/rejected")
    sh.expect_none("update/delta", 0.1)  # exactly one delta


@versions
def test_reported_update_clears_the_delta(shoal, version):
    """DG device-shadow-mqtt: /update/delta carries ALL differing desired keys (not only those of
    this update), keeps the nested path, includes keys deleted from reported that are still
    desired, and is not published once reported matches desired [SEM Delta]."""
    c = shoal.client(version=version)
    sh = ShadowInbox(c, unique("thing"))
    sh.update({"state": {"desired": {"color": "red", "lights": {"on": True, "level": 3}}}, "clientToken": "d1"})
    sh.clear()

    reported = {"color": "red", "lights": {"on": True, "level": 1}, "extra": "only-reported"}
    acc = sh.update({"state": {"reported": reported}, "clientToken": "r1"})
    ts = acc["timestamp"]
    assert acc == {"state": {"reported": reported}, "metadata": {"reported": meta(reported, ts)},
                   "version": 2, "timestamp": ts, "clientToken": "r1"}
    delta = sh.take("update/delta", "r1")
    assert {**delta, "metadata": ts_shape(delta["metadata"])} == {
        "state": {"lights": {"level": 3}},
        "metadata": {"lights": {"level": {"timestamp": T}}},
        "version": 2, "timestamp": ts, "clientToken": "r1"}
    docs = sh.take("update/documents", "r1")
    assert docs["previous"]["version"] == 1 and docs["current"]["version"] == 2
    assert docs["previous"]["state"] == {"desired": {"color": "red", "lights": {"on": True, "level": 3}}}
    assert docs["current"]["state"] == {"desired": {"color": "red", "lights": {"on": True, "level": 3}},
                                        "reported": reported}

    # A desired-only change: the delta has every differing key, old and new.
    sh.update({"state": {"desired": {"fan": 2}}, "clientToken": "d2"})
    delta = sh.take("update/delta", "d2")
    assert (delta["state"], delta["version"]) == ({"lights": {"level": 3}, "fan": 2}, 3)
    assert ts_shape(delta["metadata"]) == {"lights": {"level": {"timestamp": T}}, "fan": {"timestamp": T}}

    # Reported catches up: no delta at all.
    sh.clear()
    sh.update({"state": {"reported": {"lights": {"level": 3}, "fan": 2}}, "clientToken": "r2"})
    docs = sh.take("update/documents", "r2")
    assert docs["current"]["version"] == 4
    sh.expect_none("update/delta", 0.3)
    doc = sh.get_doc()
    assert "delta" not in doc["state"], f"GET has a delta although reported == desired: {doc}"

    # A key deleted from reported but still desired comes back in the delta (DG).
    sh.update({"state": {"reported": {"fan": None}}, "clientToken": "r3"})
    delta = sh.take("update/delta", "r3")
    assert (delta["state"], delta["version"]) == ({"fan": 2}, 5)


@versions
def test_get_accepted_has_state_delta_metadata(shoal, version):
    """DG device-shadow-document: /get/accepted has the full state (desired, reported, delta),
    metadata for desired and reported, version, timestamp and the clientToken [SEM GET]."""
    c = shoal.client(version=version)
    sh = ShadowInbox(c, unique("thing"))
    desired = {"a": 1, "b": {"c": 2, "d": [1, 2]}}
    reported = {"a": 1, "b": {"c": 3, "d": [1, 2]}, "r": True}
    sh.update({"state": {"desired": desired}, "clientToken": "u1"})
    sh.update({"state": {"reported": reported}, "clientToken": "u2"})
    outcome, doc = sh.get("g-1")
    assert outcome == "accepted", doc
    check_ts(doc["timestamp"])
    assert {**doc, "metadata": ts_shape(doc["metadata"])} == {
        "state": {"desired": desired, "reported": reported, "delta": {"b": {"c": 2}}},
        "metadata": {"desired": meta(desired), "reported": meta(reported)},
        "version": 2,
        "timestamp": doc["timestamp"],
        "clientToken": "g-1",
    }


@versions
def test_delete_then_get_404_and_version_continues(shoal, version):
    """DG device-shadow-mqtt/-data-flow: /delete/accepted is {version, timestamp, clientToken};
    get and delete of a deleted shadow answer 404 on /rejected; an update after the delete
    continues the version, starts from an empty state and reports previous: null [SEM Delete]."""
    c = shoal.client(version=version)
    thing = unique("thing")
    sh = ShadowInbox(c, thing)
    sh.update({"state": {"desired": {"a": 1}}})
    sh.update({"state": {"reported": {"b": 2}}})
    outcome, d = sh.request("delete", {"clientToken": "del-1"}, "del-1")
    assert outcome == "accepted", d
    assert d == {"version": 2, "timestamp": d["timestamp"], "clientToken": "del-1"}
    check_ts(d["timestamp"])

    outcome, r = sh.get("g-404")
    assert outcome == "rejected", r
    assert_error(r, 404, NO_SHADOW.format(thing), "g-404")
    outcome, r = sh.request("delete", {"clientToken": "del-2"}, "del-2")
    assert outcome == "rejected", r
    assert_error(r, 404, NO_SHADOW.format(thing), "del-2")

    sh.clear()
    acc = sh.update({"state": {"reported": {"z": 1}}, "clientToken": "u3"})
    assert acc["version"] == 3, f"version after delete restarted instead of continuing: {acc}"
    docs = sh.take("update/documents", "u3")
    assert docs["previous"] is None
    assert docs["current"]["state"] == {"reported": {"z": 1}} and docs["current"]["version"] == 3
    doc = sh.get_doc()
    assert (doc["state"], doc["version"]) == ({"reported": {"z": 1}}, 3), "old state survived the delete"


@versions
def test_named_shadows_are_isolated(shoal, version):
    """DG device-shadow-mqtt: a named shadow lives on $aws/things/{thing}/shadow/name/{name}/...;
    its responses never appear on the classic topics (nor on another named shadow's), and each
    shadow has its own document and version. 404 names it 'thing~shadow' [SEM Errors]."""
    thing = unique("thing")
    c = shoal.client(version=version)
    classic = ShadowInbox(c, thing)
    c2 = shoal.client(version=version)
    cfg = ShadowInbox(c2, thing, "cfg")
    c3 = shoal.client(version=version)
    odd = ShadowInbox(c3, thing, "$cfg:v1_a-B")  # every character class of the pattern

    acc = cfg.update({"state": {"desired": {"x": 1}}, "clientToken": "n1"})
    assert acc["version"] == 1 and acc["state"] == {"desired": {"x": 1}}
    cfg.take("update/delta", "n1")
    cfg.take("update/documents", "n1")
    classic.expect_none("update/accepted", 0.3)
    assert classic.stash == [] and odd.stash == [], "named-shadow responses leaked to other subscribers"

    outcome, r = classic.get("cg")
    assert outcome == "rejected", r
    assert_error(r, 404, NO_SHADOW.format(thing), "cg")
    outcome, r = odd.get("og")
    assert outcome == "rejected", r
    assert_error(r, 404, NO_SHADOW.format(f"{thing}~$cfg:v1_a-B"), "og")

    assert classic.update({"state": {"reported": {"y": 2}}})["version"] == 1
    assert odd.update({"state": {"reported": {"w": 3}}})["version"] == 1
    assert odd.update({"state": {"reported": {"w": 4}}})["version"] == 2
    doc = cfg.get_doc()
    assert (doc["state"], doc["version"]) == ({"desired": {"x": 1}, "delta": {"x": 1}}, 1)

    outcome, _ = classic.request("delete", {"clientToken": "cd"}, "cd")
    assert outcome == "accepted"
    assert cfg.get_doc()["version"] == 1, "deleting the classic shadow touched a named one"
    assert odd.get_doc()["state"] == {"reported": {"w": 4}}


# -- merge rules ------------------------------------------------------------------------------

@versions
def test_merge_rules(shoal, version):
    """DG device-shadow-document/-data-flow [SEM Merge]: an update touches only what it names;
    null deletes a key (and is echoed with a timestamp); objects merge recursively; arrays are
    replaced whole; "desired": null removes the section; "state": null clears both sections but
    keeps the shadow and bumps the version; an array containing null is rejected (400)."""
    c = shoal.client(version=version)
    sh = ShadowInbox(c, unique("thing"))
    sh.update({"state": {"desired": {"a": 1, "b": {"c": 1, "d": 2}, "arr": [1, 2, 3], "keep": "x"},
                         "reported": {"r": 1}}})

    change = {"b": {"d": None, "e": 3}, "arr": [9], "a": None, "absent": None}
    acc = sh.update({"state": {"desired": change}, "clientToken": "m1"})
    ts = acc["timestamp"]
    assert acc == {"state": {"desired": change}, "metadata": {"desired": meta(change, ts)},
                   "version": 2, "timestamp": ts, "clientToken": "m1"}, "accepted must echo nulls with timestamps"
    doc = sh.get_doc()
    assert doc["state"]["desired"] == {"b": {"c": 1, "e": 3}, "arr": [9], "keep": "x"}
    assert ts_shape(doc["metadata"]["desired"]) == meta({"b": {"c": 1, "e": 3}, "arr": [9], "keep": "x"})
    assert doc["state"]["reported"] == {"r": 1}, "a desired update touched reported"

    # Replacing an object by a scalar and a scalar by an object.
    sh.update({"state": {"desired": {"b": "flat", "keep": {"deep": {"er": True}}}}})
    assert sh.get_doc()["state"]["desired"] == {"b": "flat", "arr": [9], "keep": {"deep": {"er": True}}}

    # "desired": null removes the whole section (and with it the delta).
    acc = sh.update({"state": {"desired": None}, "clientToken": "m2"})
    assert acc["state"] == {"desired": None}
    assert acc["metadata"] == {"desired": {"timestamp": acc["timestamp"]}}
    doc = sh.get_doc()
    assert doc["state"] == {"reported": {"r": 1}}, f"desired: null did not remove the section: {doc}"
    assert set(doc["metadata"]) == {"reported"}

    # An array containing null is rejected and changes nothing.
    r = sh.rejected("update", {"state": {"reported": {"arr": [1, None]}}, "clientToken": "m3"}, "m3")
    assert_error(r, 400, "Invalid JSON: null is not allowed in arrays", "m3")
    before = sh.get_doc()
    assert before["version"] == 4

    # "state": null clears everything; the shadow still exists at version + 1.
    acc = sh.update({"state": None, "clientToken": "m4"})
    assert acc["version"] == 5
    doc = sh.get_doc()
    assert (doc["state"], doc["metadata"], doc["version"]) == ({}, {}, 5), f"state: null: {doc}"

    # {} is a valid (empty) update that only bumps the version.
    assert sh.update({"state": {}})["version"] == 6


# -- versions and optimistic locking ---------------------------------------------------------

@versions
def test_optimistic_locking(shoal, version):
    """DG device-shadow-data-flow: every accepted update adds 1 to the version; a request
    version that differs from the current one gets 409 "Version conflict" (clientToken echoed)
    and changes nothing; without a version the check is skipped. [SEM Versioning] version 0 on
    a shadow that never existed means create-only."""
    c = shoal.client(version=version)
    sh = ShadowInbox(c, unique("thing"))
    for i in range(1, 6):
        assert sh.update({"state": {"reported": {"i": i}}})["version"] == i
    assert sh.update({"state": {"reported": {"i": 6}}, "version": 5})["version"] == 6
    for stale in (5, 7, 0, 1000):
        r = sh.rejected("update", {"state": {"reported": {"i": -1}}, "version": stale, "clientToken": f"v{stale}"},
                        f"v{stale}")
        assert_error(r, 409, "Version conflict", f"v{stale}")
    doc = sh.get_doc()
    assert (doc["state"], doc["version"]) == ({"reported": {"i": 6}}, 6), "a conflicting update changed the shadow"

    fresh = ShadowInbox(c, sh.thing, "fresh")
    assert fresh.update({"state": {"desired": {"k": 1}}, "version": 0})["version"] == 1
    r = fresh.rejected("update", {"state": {"desired": {"k": 2}}, "version": 0, "clientToken": "again"}, "again")
    assert_error(r, 409, "Version conflict", "again")


# -- clientToken ------------------------------------------------------------------------------

@versions
def test_client_token_echoed_on_every_response(shoal, version):
    """aws-iot-facts §1 / DG: the clientToken is echoed on every accepted and rejected message —
    update, get and delete — and on delta and documents; without one, no clientToken key."""
    c = shoal.client(version=version)
    thing = unique("thing")
    sh = ShadowInbox(c, thing)
    tok = "abc-" + "x" * 60  # exactly 64 bytes: the largest valid token
    assert len(tok) == 64
    assert sh.update({"state": {"desired": {"a": 1}}, "clientToken": tok})["clientToken"] == tok
    assert sh.take("update/delta", tok)["clientToken"] == tok
    assert sh.take("update/documents", tok)["clientToken"] == tok
    r = sh.rejected("update", {"state": {}, "version": 99, "clientToken": "t-409"}, "t-409")
    assert r["clientToken"] == "t-409"
    outcome, g = sh.get("t-get")
    assert outcome == "accepted" and g["clientToken"] == "t-get"
    outcome, d = sh.request("delete", {"clientToken": "t-del"}, "t-del")
    assert outcome == "accepted" and d["clientToken"] == "t-del"
    outcome, g = sh.get("t-get-404")
    assert outcome == "rejected" and g["clientToken"] == "t-get-404"
    outcome, d = sh.request("delete", {"clientToken": "t-del-404"}, "t-del-404")
    assert outcome == "rejected" and d["clientToken"] == "t-del-404"

    # No token in, no token out (empty get/delete bodies are valid).
    sh.clear()
    acc = sh.update({"state": {"desired": {"b": 1}}})
    assert "clientToken" not in acc, acc
    assert "clientToken" not in sh.take("update/delta")
    assert "clientToken" not in sh.take("update/documents")
    outcome, g = sh.request("get", b"")
    assert outcome == "accepted" and "clientToken" not in g, g
    outcome, d = sh.request("delete", b"")
    assert outcome == "accepted" and "clientToken" not in d, d
    outcome, r = sh.request("get", b"")
    assert outcome == "rejected"
    assert_error(r, 404, NO_SHADOW.format(thing))

    # [SEM Errors] get/delete bodies only matter for the token: a non-JSON body is still answered
    # (without a token); [SEM Update validation] "clientToken": null counts as absent.
    acc = sh.update({"state": {"reported": {"c": 1}}, "clientToken": None}, token=None)
    assert "clientToken" not in acc, acc
    outcome, g = sh.request("get", b"{not json", token=None)
    assert outcome == "accepted" and "clientToken" not in g, g


# -- errors -----------------------------------------------------------------------------------

BAD_UPDATES = [
    # (payload, code, message, echoed clientToken)
    (b"not json", 400, "Invalid JSON", None),
    (b"", 400, "Invalid JSON", None),
    (b"[1, 2]", 400, "Invalid JSON", None),
    (b'"state"', 400, "Invalid JSON", None),
    (b'{"state": {"desired": {"a": 1}}, "clientToken": "tk"', 400, "Invalid JSON", None),
    ({"clientToken": "e-state"}, 400, "Missing required node: state", "e-state"),
    ({"state": 5, "clientToken": "e-s5"}, 400, "State node must be an object", "e-s5"),
    ({"state": [1], "clientToken": "e-sarr"}, 400, "State node must be an object", "e-sarr"),
    ({"state": {"desired": 5}, "clientToken": "e-d"}, 400, "Desired node must be an object", "e-d"),
    ({"state": {"desired": [1]}, "clientToken": "e-d2"}, 400, "Desired node must be an object", "e-d2"),
    ({"state": {"reported": "on"}, "clientToken": "e-r"}, 400, "Reported node must be an object", "e-r"),
    ({"state": {}, "version": "1", "clientToken": "e-v1"}, 400, "Invalid version", "e-v1"),
    ({"state": {}, "version": -1, "clientToken": "e-v2"}, 400, "Invalid version", "e-v2"),
    ({"state": {}, "version": 3.5, "clientToken": "e-v3"}, 400, "Invalid version", "e-v3"),
    ({"state": {}, "version": True, "clientToken": "e-v4"}, 400, "Invalid version", "e-v4"),
    ({"state": {}, "clientToken": "x" * 65}, 400, "Invalid clientToken", None),
    ({"state": {}, "clientToken": "é" * 33}, 400, "Invalid clientToken", None),  # 33 chars, 66 bytes
    ({"state": {}, "clientToken": 5}, 400, "Invalid clientToken", None),
    ({"state": {"desired": nested(7)}, "clientToken": "e-deep"}, 400,
     "JSON contains too many levels of nesting; maximum is 6", "e-deep"),
    ({"state": {"reported": nested(6, {"x": None})}, "clientToken": "e-deep2"}, 400,
     "JSON contains too many levels of nesting; maximum is 6", "e-deep2"),
    ({"state": {"reported": {"a": [[[[[[1]]]]]]}}, "clientToken": "e-deep3"}, 400,
     "JSON contains too many levels of nesting; maximum is 6", "e-deep3"),
    ({"state": {"delta": {"a": 1}}, "clientToken": "e-node"}, 400, "State contains an invalid node: 'delta'", "e-node"),
    ({"state": {"desired": {}, "foo": 1}, "clientToken": "e-node2"}, 400,
     "State contains an invalid node: 'foo'", "e-node2"),
    ({"state": {"desired": {"a": [1, None]}}, "clientToken": "e-null"}, 400,
     "Invalid JSON: null is not allowed in arrays", "e-null"),
    ({"state": {"reported": {"a": [{"b": None}]}}, "clientToken": "e-null2"}, 400,
     "Invalid JSON: null is not allowed in arrays", "e-null2"),
    (b'{"state": {"desired": {"a": "\xff\xfe"}}, "clientToken": "e-utf8"}', 415,
     "Unsupported documented encoding; supported encoding is UTF-8", None),
]


@versions
def test_every_update_error_is_rejected_and_connection_stays_up(shoal, version):
    """DG device-shadow-error-messages (400 messages, 415) [SEM Update validation]: each bad update
    gets exactly one /update/rejected {code, message, timestamp, clientToken when valid}; the
    shadow is unchanged; the MQTT connection stays usable after every rejection."""
    c = shoal.client(version=version)
    sh = ShadowInbox(c, unique("thing"))
    sh.update({"state": {"desired": {"ok": 1}}})
    sh.clear()
    failures = []
    for body, code, message, token in BAD_UPDATES:
        sh.send("update", body)
        try:
            payload = sh.take("update/rejected", token if token is not None else None, timeout=3)
            assert_error(payload, code, message, token)
        except AssertionError as e:
            failures.append(f"{body!r}: {e}")
        sh.expect_none("update/accepted", 0.02)
        sh.alive()
    # The limits themselves are accepted: depth 6, a 64-byte token.
    sh.update({"state": {"desired": nested(6)}, "clientToken": "d" * 64})
    sh.update({"state": {"reported": {"a": [[[[[1]]]]]}}})
    assert not failures, "wrong rejections:\n" + "\n".join(failures)
    assert c.disconnects == [], f"client was disconnected: {c.disconnects}"
    assert sh.get_doc()["version"] == 3


@versions
def test_document_size_limit(shoal, version):
    """aws-iot-facts §1 [SEM Size limit]: desired+reported (compact JSON, after the merge) may be
    8192 bytes; beyond that 413 "Json document too large. Size is N, max allowed: 8192"."""
    c = shoal.client(version=version)
    sh = ShadowInbox(c, unique("thing"))

    big = {"blob": "x" * 9216}  # a 9 KiB document
    r = sh.rejected("update", {"state": {"desired": big}, "clientToken": "big"}, "big")
    assert_error(r, 413, f"Json document too large. Size is {compact_len(big)}, max allowed: {MAX_DOC_BYTES}", "big")
    sh.alive()

    pad = MAX_DOC_BYTES - compact_len({"p": ""})
    exact = {"p": "y" * pad}
    assert compact_len(exact) == MAX_DOC_BYTES
    assert sh.update({"state": {"desired": exact}})["version"] == 1
    sh.update({"state": {"desired": None}})
    over = {"p": "y" * (pad + 1)}
    r = sh.rejected("update", {"state": {"desired": over}, "clientToken": "o1"}, "o1")
    assert_error(r, 413, f"Json document too large. Size is {MAX_DOC_BYTES + 1}, max allowed: {MAX_DOC_BYTES}", "o1")

    # Checked after the merge: two sections that fit alone but not together.
    d = {"d": "a" * 5000}
    rep = {"r": "b" * 4000}
    sh.update({"state": {"desired": d}})
    r = sh.rejected("update", {"state": {"reported": rep}, "clientToken": "o2"}, "o2")
    assert_error(r, 413, f"Json document too large. Size is {compact_len(d) + compact_len(rep)}, "
                         f"max allowed: {MAX_DOC_BYTES}", "o2")
    doc = sh.get_doc()
    assert (doc["state"]["desired"], doc["version"]) == (d, 3) and "reported" not in doc["state"]

    # The limit is on the stored state, not the request: 10 KB of whitespace around a tiny state
    # is fine [SEM Size limit].
    padded = b'{"state":{"reported":{"small":1}}' + b" " * 10240 + b',"clientToken":"pad"}'
    outcome, acc = sh.request("update", padded, "pad")
    assert outcome == "accepted" and acc["version"] == 4, acc
    sh.alive()


@versions
def test_invalid_thing_and_shadow_names_rejected(shoal, version):
    """[SEM Topics] thing names [a-zA-Z0-9:_-]{1,128}, shadow names [$a-zA-Z0-9:_-]{1,64}
    (botocore iot-data model); a request on a topic with an invalid name gets a 400 on
    <request topic>/rejected, clientToken echoed, and the connection stays up."""
    c = shoal.client(version=version)
    cases = [
        ("bad!name", None, "update", THING_NAME_ERR),
        ("bad name", None, "get", THING_NAME_ERR),
        ("thing\u00e9", None, "delete", THING_NAME_ERR),
        ("t" * 129, None, "get", THING_NAME_ERR),
        ("good-thing", "bad.name", "update", SHADOW_NAME_ERR),
        ("good-thing", "s" * 65, "get", SHADOW_NAME_ERR),
        ("good-thing", "sp ace", "delete", SHADOW_NAME_ERR),
        ("bad!name", "good", "update", THING_NAME_ERR),
    ]
    for thing, shadow, op, message in cases:
        sh = ShadowInbox(c, thing, shadow)
        token = unique("bad")
        body = {"state": {"desired": {"a": 1}}, "clientToken": token} if op == "update" else {"clientToken": token}
        r = sh.rejected(op, body, token)
        assert_error(r, 400, message, token)
        c.unsubscribe(f"{sh.prefix}/+/+")
        sh.alive()
    # The longest valid names work.
    ok = ShadowInbox(c, "T" * 128, "S" * 64)
    assert ok.update({"state": {"reported": {"a": 1}}})["version"] == 1
    ok = ShadowInbox(c, "a:b_c-D9")
    assert ok.update({"state": {"reported": {"a": 1}}})["version"] == 1


# -- throttling -------------------------------------------------------------------------------

@versions
@pytest.mark.timeout(60)
def test_flood_gets_429_and_every_request_one_answer(shoal, version):
    """aws-iot-facts §1: at most 10 shadow requests in flight per connection, beyond that 429.
    200 updates fired without waiting: some are rejected with 429 "Too many requests", the rest
    accepted with versions 1..k; every request gets exactly one answer carrying its token."""
    c = shoal.client(version=version)
    thing = unique("thing")
    sh = ShadowInbox(c, thing, subscribe=False)
    c.subscribe([sh.topic("update/accepted"), sh.topic("update/rejected")], qos=1)
    n = 200
    tokens = [f"f{i:03d}" for i in range(n)]
    for i, tok in enumerate(tokens):
        sh.send("update", {"state": {"reported": {"n": i}}, "clientToken": tok}, qos=0, wait=False)
    answers: dict[str, list[tuple[str, dict]]] = {}
    deadline = time.monotonic() + 30
    while len(answers) < n and time.monotonic() < deadline:
        m = c.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        p = json.loads(m.payload)
        answers.setdefault(p.get("clientToken"), []).append((m.topic.rsplit("/", 1)[1], p))
    for m in c.drain(1.0):  # duplicates would show up here
        p = json.loads(m.payload)
        answers.setdefault(p.get("clientToken"), []).append((m.topic.rsplit("/", 1)[1], p))
    missing = [t for t in tokens if t not in answers]
    assert not missing, f"{len(missing)} requests never answered, e.g. {missing[:5]}"
    dup = {t: a for t, a in answers.items() if len(a) != 1}
    assert not dup, f"requests answered more than once: {list(dup.items())[:3]}"
    assert set(answers) == set(tokens), f"answers with unknown tokens: {set(answers) - set(tokens)}"
    accepted = {t: a[0][1] for t, a in answers.items() if a[0][0] == "accepted"}
    rejected = {t: a[0][1] for t, a in answers.items() if a[0][0] == "rejected"}
    for t, p in rejected.items():
        assert_error(p, 429, "Too many requests", t)
    assert rejected, "200 requests at once: none was rejected with 429 (limit is 10 in flight per client)"
    assert len(accepted) >= 10, f"only {len(accepted)} of {n} accepted"
    versions_seen = sorted(p["version"] for p in accepted.values())
    assert versions_seen == list(range(1, len(accepted) + 1)), "accepted versions are not 1..k without gaps"
    doc = ShadowInbox(c, thing).get_doc()
    assert doc["version"] == len(accepted)
    # Per-shadow order: the last accepted request (highest version) is the stored value.
    last = max(accepted.values(), key=lambda p: p["version"])
    assert doc["state"]["reported"] == last["state"]["reported"]
