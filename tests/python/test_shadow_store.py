"""Shadow persistence: the shadow store follows `--store`. With `embedded` and `redis://...` a
shadow (state, metadata with its original timestamps, version), the named-shadow list and a
delete tombstone's version survive a broker restart; with `redis://` they live in redis (a
broker on a fresh data directory sees them); `memory` forgets them.

References: docs/SHADOW_SEMANTICS.md [SEM Versioning and delete], DG device-shadow-data-flow
(version continues after a delete)."""

from __future__ import annotations

import json

import pytest

from mqtt_helpers import V5, unique
from shadow_helpers import ShadowInbox, body_json, http_json, iot_data

NO_SHADOW = "No shadow exists with name: '{}'"


@pytest.fixture(params=["embedded", "redis"])
def store_args(request) -> list[str]:
    if request.param == "redis":
        return ["--store", request.getfixturevalue("redis_url")]
    return ["--store", "embedded"]


def _strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("timestamp", "clientToken")}


def _populate(iot, thing: str) -> None:
    iot.update_thing_shadow(thingName=thing, payload=json.dumps(
        {"state": {"desired": {"color": "red", "seq": [1, 2]}, "reported": {"color": "blue"}}}))
    iot.update_thing_shadow(thingName=thing, payload=b'{"state":{"reported":{"extra":{"deep":true}}}}')
    for i in range(3):
        iot.update_thing_shadow(thingName=thing, shadowName="cfg", payload=json.dumps({"state": {"desired": {"i": i}}}))
    iot.update_thing_shadow(thingName=thing, shadowName="tmp", payload=b'{"state":{"reported":{"x":1}}}')


def test_shadow_survives_restart(make_shoal, store_args):
    """A classic and a named shadow come back after SIGTERM + start on the same store: identical
    state, metadata (timestamps included), version; the named list is the same; the next update
    continues the version; MQTT get sees the same document."""
    shoal = make_shoal(*store_args)
    iot = iot_data(shoal)
    thing = unique("thing")
    _populate(iot, thing)
    before = {s: _strip(body_json(iot.get_thing_shadow(thingName=thing, **({"shadowName": s} if s else {}))))
              for s in (None, "cfg", "tmp")}
    assert (before[None]["version"], before["cfg"]["version"], before["tmp"]["version"]) == (2, 3, 1)

    shoal.restart()
    iot = iot_data(shoal)
    for s in (None, "cfg", "tmp"):
        kw = {"shadowName": s} if s else {}
        try:
            after = _strip(body_json(iot.get_thing_shadow(thingName=thing, **kw)))
        except iot.exceptions.ResourceNotFoundException as e:
            raise AssertionError(f"shadow {s or '<classic>'} lost across a restart with {store_args}: {e}") from None
        assert after == before[s], f"shadow {s or '<classic>'} changed across the restart"
    assert sorted(iot.list_named_shadows_for_thing(thingName=thing)["results"]) == ["cfg", "tmp"]

    c = shoal.client(version=V5)
    assert _strip(ShadowInbox(c, thing).get_doc()) == before[None]
    acc = body_json(iot.update_thing_shadow(thingName=thing, payload=b'{"state":{"reported":{"n":1}}}'))
    assert acc["version"] == 3, "version restarted after a restart"


def test_delete_tombstone_survives_restart(make_shoal, store_args):
    """A deleted shadow stays deleted across a restart (404, not listed) and re-creating it
    continues the version from the tombstone [SEM Versioning and delete]."""
    shoal = make_shoal(*store_args)
    iot = iot_data(shoal)
    thing = unique("thing")
    _populate(iot, thing)
    assert body_json(iot.delete_thing_shadow(thingName=thing, shadowName="cfg"))["version"] == 3
    assert body_json(iot.delete_thing_shadow(thingName=thing))["version"] == 2

    shoal.restart()
    iot = iot_data(shoal)
    for kw, name in (({"shadowName": "cfg"}, f"{thing}~cfg"), ({}, thing)):
        with pytest.raises(iot.exceptions.ResourceNotFoundException) as ei:
            iot.get_thing_shadow(thingName=thing, **kw)
        assert ei.value.response["Error"]["Message"] == NO_SHADOW.format(name)
    assert iot.list_named_shadows_for_thing(thingName=thing)["results"] == ["tmp"]
    acc = body_json(iot.update_thing_shadow(thingName=thing, shadowName="cfg", payload=b'{"state":{}}'))
    assert acc["version"] == 4, f"re-created shadow did not continue the tombstone's version: {acc}"
    acc = body_json(iot.update_thing_shadow(thingName=thing, payload=b'{"state":{}}'))
    assert acc["version"] == 3, f"re-created classic shadow did not continue the tombstone's version: {acc}"


def test_redis_store_keeps_shadows_in_redis(make_shoal, redis_url):
    """With --store redis://..., shadows live in redis: a broker on a new, empty data directory
    pointed at the same redis sees the shadows another broker wrote."""
    first = make_shoal("--store", redis_url)
    iot = iot_data(first)
    thing = unique("thing")
    _populate(iot, thing)
    doc = _strip(body_json(iot.get_thing_shadow(thingName=thing, shadowName="cfg")))
    assert first.stop() == 0
    second = make_shoal("--store", redis_url)
    assert second.data_dir != first.data_dir
    iot2 = iot_data(second)
    try:
        got = _strip(body_json(iot2.get_thing_shadow(thingName=thing, shadowName="cfg")))
    except iot2.exceptions.ResourceNotFoundException as e:
        raise AssertionError(f"shadow not found through a second broker on the same redis: {e}") from None
    assert got == doc
    assert sorted(iot2.list_named_shadows_for_thing(thingName=thing)["results"]) == ["cfg", "tmp"]


def test_memory_store_forgets_shadows(make_shoal):
    """--store memory keeps nothing across a restart: the shadow is gone (404)."""
    shoal = make_shoal("--store", "memory")
    thing = unique("thing")
    status, _, _ = http_json(shoal, "POST", f"/things/{thing}/shadow", {"state": {"reported": {"a": 1}}})
    assert status == 200
    shoal.restart()
    status, headers, body = http_json(shoal, "GET", f"/things/{thing}/shadow")
    assert (status, body["message"]) == (404, NO_SHADOW.format(thing)), body


def test_acknowledged_updates_survive_sigkill(make_shoal):
    """Embedded store: every update shoal answered is there after `kill -9` and a start on the
    same data directory, from 8 clients writing at once (so batches share a commit and a log
    sync). The store answers only once the batch's shadow log record is synced (see
    host/store/src/shadow_log.rs); a power loss, which this cannot simulate, is covered by
    `embedded_acknowledged_writes_survive_a_crash` in host/store/tests/shadows.rs."""
    from concurrent.futures import ThreadPoolExecutor

    shoal = make_shoal("--store", "embedded")
    things = [unique("killed") for _ in range(8)]
    rounds = 30

    def write(thing: str) -> tuple[int, int]:
        iot = iot_data(shoal)
        last = (0, 0)
        for n in range(1, rounds + 1):
            acc = body_json(iot.update_thing_shadow(
                thingName=thing, payload=json.dumps({"state": {"reported": {"n": n}}})))
            last = (acc["version"], n)
        return last

    with ThreadPoolExecutor(len(things)) as pool:
        acked = dict(zip(things, pool.map(write, things)))
    shoal.kill()
    shoal.start()
    iot = iot_data(shoal)
    for thing, (version, n) in acked.items():
        doc = body_json(iot.get_thing_shadow(thingName=thing))
        assert (doc["version"], doc["state"]["reported"]["n"]) == (version, n) == (rounds, rounds), thing
    acc = body_json(iot.update_thing_shadow(thingName=things[0], payload=b'{"state":{"reported":{"n":0}}}'))
    assert acc["version"] == rounds + 1
