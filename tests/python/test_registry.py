"""The thing registry over HTTP: `/api/v1/things|thing-types|thing-groups` and AWS's own
control-plane paths (`boto3.client("iot")`), and the registry as the source of the
`${iot:Connection.Thing.*}` policy variables.

Bodies, status codes and the `x-amzn-ErrorType` header follow the botocore `iot` 2015-05-28
model; limits and rules follow the AWS IoT developer guide (3 attributes without a thing type,
50 with one; deprecated types take no new things; group hierarchies at most 7 deep; one group
per hierarchy per thing).
"""

from __future__ import annotations

import os
import urllib.parse

import pytest

from conftest import Shoal
from mqtt_helpers import V5, Client, unique
from shadow_helpers import http_json

ARN = "arn:aws:iot:us-east-1:000000000000"   # shoal's default --region / --account


def call(s: Shoal, method: str, path: str, body=None) -> tuple[int, dict, dict]:
    """(status, lower-cased headers, JSON body) of one request to the broker's HTTP port."""
    status, headers, doc = http_json(s, method, path, body, headers={"Content-Type": "application/json"})
    return status, headers, doc


def ok(s: Shoal, method: str, path: str, body=None) -> dict:
    status, _, doc = call(s, method, path, body)
    assert status == 200, f"{method} {path}: {status} {doc}"
    return doc


def err(s: Shoal, method: str, path: str, body=None, *, status: int, code: str, message: str | None = None) -> dict:
    """Asserts an AWS-shaped error: the status, `x-amzn-ErrorType` and a `message` (containing
    `message` when given)."""
    got, headers, doc = call(s, method, path, body)
    assert (got, headers.get("x-amzn-errortype")) == (status, code), f"{method} {path}: {got} {headers} {doc}"
    assert isinstance(doc.get("message"), str) and doc["message"], doc
    if message is not None:
        assert message in doc["message"], doc
    return doc


def q(**params) -> str:
    return "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def attrs(n: int, prefix: str = "k") -> dict:
    return {f"{prefix}{i}": str(i) for i in range(n)}


# -- things --------------------------------------------------------------------------------------

def test_create_describe_update_delete_with_versions(shoal: Shoal):
    ok(shoal, "POST", "/api/v1/thing-types/truck", {})
    created = ok(shoal, "POST", "/api/v1/things/truck-1",
                 {"thingTypeName": "truck", "attributePayload": {"attributes": {"fleet": "north", "vin": "V1"}}})
    assert set(created) == {"thingName", "thingArn", "thingId"}
    assert created["thingName"] == "truck-1" and created["thingArn"] == f"{ARN}:thing/truck-1"

    d = ok(shoal, "GET", "/api/v1/things/truck-1")
    assert d == {"thingName": "truck-1", "thingArn": f"{ARN}:thing/truck-1", "thingId": created["thingId"],
                 "defaultClientId": "truck-1", "thingTypeName": "truck",
                 "attributes": {"fleet": "north", "vin": "V1"}, "version": 1}

    # Merge with the right expectedVersion: one attribute changes, an empty value deletes one.
    assert ok(shoal, "PATCH", "/api/v1/things/truck-1",
              {"expectedVersion": 1, "attributePayload": {"attributes": {"fleet": "south", "vin": ""},
                                                          "merge": True}}) == {}
    d = ok(shoal, "GET", "/api/v1/things/truck-1")
    assert (d["attributes"], d["version"]) == ({"fleet": "south"}, 2)

    # A stale expectedVersion changes nothing.
    err(shoal, "PATCH", "/api/v1/things/truck-1", {"expectedVersion": 1, "attributePayload": {"attributes": {}}},
        status=409, code="VersionConflictException")
    assert ok(shoal, "GET", "/api/v1/things/truck-1")["version"] == 2

    # Without merge the attributes are replaced; without expectedVersion there is no check.
    ok(shoal, "PATCH", "/api/v1/things/truck-1", {"attributePayload": {"attributes": {"plate": "AB-12"}}})
    ok(shoal, "PATCH", "/api/v1/things/truck-1", {"removeThingType": True})
    d = ok(shoal, "GET", "/api/v1/things/truck-1")
    assert (d["attributes"], d["version"], "thingTypeName" in d) == ({"plate": "AB-12"}, 4, False)
    err(shoal, "PATCH", "/api/v1/things/truck-1", {"thingTypeName": "truck", "removeThingType": True},
        status=400, code="InvalidRequestException")
    err(shoal, "PATCH", "/api/v1/things/ghost", {"attributePayload": {"attributes": {"a": "1"}}},
        status=404, code="ResourceNotFoundException")

    err(shoal, "DELETE", "/api/v1/things/truck-1" + q(expectedVersion=3), status=409, code="VersionConflictException")
    assert ok(shoal, "DELETE", "/api/v1/things/truck-1" + q(expectedVersion=4)) == {}
    err(shoal, "GET", "/api/v1/things/truck-1", status=404, code="ResourceNotFoundException",
        message="truck-1")
    # Deleting a thing that does not exist succeeds, as in AWS.
    assert ok(shoal, "DELETE", "/api/v1/things/truck-1") == {}


def test_create_is_idempotent_and_conflicts_name_the_resource(shoal: Shoal):
    body = {"attributePayload": {"attributes": {"a": "1"}}}
    first = ok(shoal, "POST", "/api/v1/things/t1", body)
    assert ok(shoal, "POST", "/api/v1/things/t1", body) == first, "the same create returns the same thing"
    doc = err(shoal, "POST", "/api/v1/things/t1", {"attributePayload": {"attributes": {"a": "2"}}},
              status=409, code="ResourceAlreadyExistsException")
    assert (doc["resourceId"], doc["resourceArn"]) == (first["thingId"], first["thingArn"])
    assert ok(shoal, "GET", "/api/v1/things/t1")["attributes"] == {"a": "1"}

    # An empty body (curl -X POST, botocore without body members) is `{}`.
    status, _, doc = http_json(shoal, "POST", "/api/v1/things/bare")
    assert status == 200 and doc["thingName"] == "bare", doc

    t = ok(shoal, "POST", "/api/v1/thing-types/sensor", {"thingTypeProperties": {"thingTypeDescription": "d"}})
    assert ok(shoal, "POST", "/api/v1/thing-types/sensor",
              {"thingTypeProperties": {"thingTypeDescription": "d"}}) == t
    err(shoal, "POST", "/api/v1/thing-types/sensor", {"thingTypeProperties": {"thingTypeDescription": "other"}},
        status=409, code="ResourceAlreadyExistsException")

    g = ok(shoal, "POST", "/api/v1/thing-groups/g1", {})
    assert set(g) == {"thingGroupName", "thingGroupArn", "thingGroupId"}
    assert ok(shoal, "POST", "/api/v1/thing-groups/g1", {}) == g
    err(shoal, "POST", "/api/v1/thing-groups/g1",
        {"thingGroupProperties": {"attributePayload": {"attributes": {"x": "1"}}}},
        status=409, code="ResourceAlreadyExistsException")


def test_invalid_names_and_requests_are_400(shoal: Shoal):
    for name in ["bad name", "a/b", "é", "x" * 129]:
        path = urllib.parse.quote(name, safe="")
        err(shoal, "POST", f"/api/v1/things/{path}", {}, status=400, code="InvalidRequestException",
            message="thingName")
        err(shoal, "GET", f"/api/v1/things/{path}", status=400, code="InvalidRequestException")
        err(shoal, "POST", f"/api/v1/thing-types/{path}", {}, status=400, code="InvalidRequestException")
        err(shoal, "POST", f"/api/v1/thing-groups/{path}", {}, status=400, code="InvalidRequestException")
    assert ok(shoal, "POST", "/api/v1/things/" + "x" * 128, {})["thingName"] == "x" * 128
    ok(shoal, "POST", "/api/v1/things/Aa0:_-", {})

    # Bodies that are not JSON, or not the operation's shape: 400 with a readable message.
    err(shoal, "POST", "/api/v1/things/t", b'{"attributePayload":', status=400, code="InvalidRequestException",
        message="request body")
    err(shoal, "POST", "/api/v1/things/t", b"not json", status=400, code="InvalidRequestException")
    err(shoal, "POST", "/api/v1/things/t", {"attributePayload": {"attributes": {"a": 5}}},
        status=400, code="InvalidRequestException", message="invalid type")
    err(shoal, "PATCH", "/api/v1/things/t", {"expectedVersion": "one"}, status=400, code="InvalidRequestException")
    err(shoal, "POST", "/api/v1/thing-types/x/deprecate", [1], status=400, code="InvalidRequestException")

    # Query parameters.
    for bad in [q(maxResults=0), q(maxResults=251), q(maxResults="ten"), q(nextToken="garbage")]:
        err(shoal, "GET", "/api/v1/things" + bad, status=400, code="InvalidRequestException")
    err(shoal, "DELETE", "/api/v1/things/t" + q(expectedVersion="x"), status=400, code="InvalidRequestException")


def test_attribute_limits(shoal: Shoal):
    # Without a thing type at most 3 attributes, with one at most 50.
    ok(shoal, "POST", "/api/v1/things/three", {"attributePayload": {"attributes": attrs(3)}})
    err(shoal, "POST", "/api/v1/things/four", {"attributePayload": {"attributes": attrs(4)}},
        status=400, code="InvalidRequestException")
    ok(shoal, "POST", "/api/v1/thing-types/big", {})
    ok(shoal, "POST", "/api/v1/things/fifty", {"thingTypeName": "big", "attributePayload": {"attributes": attrs(50)}})
    err(shoal, "POST", "/api/v1/things/fifty-one",
        {"thingTypeName": "big", "attributePayload": {"attributes": attrs(51)}},
        status=400, code="InvalidRequestException")
    # A merge that would leave 4 attributes on an untyped thing, or removing the type of a thing
    # with 50, is refused and changes nothing.
    err(shoal, "PATCH", "/api/v1/things/three", {"attributePayload": {"attributes": {"extra": "1"}, "merge": True}},
        status=400, code="InvalidRequestException")
    err(shoal, "PATCH", "/api/v1/things/fifty", {"removeThingType": True}, status=400, code="InvalidRequestException")
    assert ok(shoal, "GET", "/api/v1/things/fifty")["thingTypeName"] == "big"

    # Names up to 128 characters of [a-zA-Z0-9_.,@/:#-], values up to 800 of [a-zA-Z0-9_.,@/:#=[]-].
    ok(shoal, "POST", "/api/v1/things/sizes",
       {"attributePayload": {"attributes": {"n" * 128: "v" * 800, "a.b,c@d/e:f#g-h_i": "x=[y]"}}})
    for bad in [{"n" * 129: "v"}, {"k": "v" * 801}, {"sp ace": "v"}, {"k": "sp ace"}, {"k": "a;b"}]:
        err(shoal, "POST", "/api/v1/things/bad-attr", {"attributePayload": {"attributes": bad}},
            status=400, code="InvalidRequestException")


def test_list_paging_and_filters(shoal: Shoal):
    ok(shoal, "POST", "/api/v1/thing-types/truck", {})
    ok(shoal, "POST", "/api/v1/thing-types/van", {})
    plan = {
        "t01": ("truck", "north"), "t02": ("truck", "south"), "t03": ("van", "north"), "t04": (None, "north"),
        "t05": ("truck", "northeast"), "t06": (None, None), "t07": ("van", "south"),
    }
    for name, (ty, fleet) in plan.items():
        body: dict = {"attributePayload": {"attributes": {"fleet": fleet} if fleet else {}}}
        if ty:
            body["thingTypeName"] = ty
        ok(shoal, "POST", f"/api/v1/things/{name}", body)

    def all_pages(**params) -> tuple[list[str], list[int]]:
        names, sizes, token = [], [], None
        while True:
            page = ok(shoal, "GET", "/api/v1/things" + q(nextToken=token, **params))
            names += [t["thingName"] for t in page["things"]]
            sizes.append(len(page["things"]))
            token = page.get("nextToken")
            if token is None:
                return names, sizes
            assert len(sizes) < 20, "paging does not end"

    names, sizes = all_pages(maxResults=3)
    assert names == sorted(plan) and sizes == [3, 3, 1]
    first = ok(shoal, "GET", "/api/v1/things" + q(maxResults=7))
    assert "nextToken" not in first and len(first["things"]) == 7
    item = next(t for t in first["things"] if t["thingName"] == "t01")
    assert item == {"thingName": "t01", "thingArn": f"{ARN}:thing/t01", "thingTypeName": "truck",
                    "attributes": {"fleet": "north"}, "version": 1}

    assert all_pages(attributeName="fleet", attributeValue="north")[0] == ["t01", "t03", "t04"]
    assert all_pages(attributeName="fleet", attributeValue="north", usePrefixAttributeValue="true")[0] == \
        ["t01", "t03", "t04", "t05"]
    assert all_pages(thingTypeName="truck")[0] == ["t01", "t02", "t05"]
    assert all_pages(thingTypeName="truck", attributeName="fleet", attributeValue="south", maxResults=1)[0] == ["t02"]
    assert all_pages(attributeName="fleet")[0] == ["t01", "t02", "t03", "t04", "t05", "t07"]
    assert all_pages(thingTypeName="ghost")[0] == []
    assert all_pages(attributeName="fleet", attributeValue="south", maxResults=1) == (["t02", "t07"], [1, 1])


def test_thing_types_deprecate_and_delete_rules(make_shoal):
    s = make_shoal("--thing-type-delete-delay-secs", "0")
    ok(s, "POST", "/api/v1/thing-types/lamp",
       {"thingTypeProperties": {"thingTypeDescription": "a lamp", "searchableAttributes": ["room"]}})
    d = ok(s, "GET", "/api/v1/thing-types/lamp")
    assert d["thingTypeName"] == "lamp" and d["thingTypeArn"] == f"{ARN}:thingtype/lamp" and d["thingTypeId"]
    assert d["thingTypeProperties"] == {"thingTypeDescription": "a lamp", "searchableAttributes": ["room"]}
    assert d["thingTypeMetadata"]["deprecated"] is False and isinstance(d["thingTypeMetadata"]["creationDate"],
                                                                         (int, float))
    err(s, "GET", "/api/v1/thing-types/ghost", status=404, code="ResourceNotFoundException")
    err(s, "POST", "/api/v1/things/x", {"thingTypeName": "ghost"}, status=404, code="ResourceNotFoundException")

    # Only a deprecated type can be deleted.
    err(s, "DELETE", "/api/v1/thing-types/lamp", status=400, code="InvalidRequestException", message="deprecated")
    ok(s, "POST", "/api/v1/things/lamp-1", {"thingTypeName": "lamp"})
    assert ok(s, "POST", "/api/v1/thing-types/lamp/deprecate", {}) == {}
    meta = ok(s, "GET", "/api/v1/thing-types/lamp")["thingTypeMetadata"]
    assert meta["deprecated"] is True and "deprecationDate" in meta
    # A deprecated type takes no new things ...
    err(s, "POST", "/api/v1/things/lamp-2", {"thingTypeName": "lamp"}, status=400, code="InvalidRequestException")
    ok(s, "POST", "/api/v1/things/untyped", {})
    err(s, "PATCH", "/api/v1/things/untyped", {"thingTypeName": "lamp"}, status=400, code="InvalidRequestException")
    ok(s, "PATCH", "/api/v1/things/lamp-1", {"thingTypeName": "lamp"})   # a thing may keep its type
    # ... and is not deleted while a thing has it.
    err(s, "DELETE", "/api/v1/thing-types/lamp", status=400, code="InvalidRequestException")
    # undoDeprecate brings it back.
    ok(s, "POST", "/api/v1/thing-types/lamp/deprecate", {"undoDeprecate": True})
    assert ok(s, "GET", "/api/v1/thing-types/lamp")["thingTypeMetadata"]["deprecated"] is False
    ok(s, "POST", "/api/v1/things/lamp-2", {"thingTypeName": "lamp"})

    ok(s, "POST", "/api/v1/thing-types/lamp/deprecate", {})
    for t in ("lamp-1", "lamp-2"):
        ok(s, "PATCH", f"/api/v1/things/{t}", {"removeThingType": True})
    assert ok(s, "DELETE", "/api/v1/thing-types/lamp") == {}
    err(s, "GET", "/api/v1/thing-types/lamp", status=404, code="ResourceNotFoundException")
    err(s, "DELETE", "/api/v1/thing-types/lamp", status=404, code="ResourceNotFoundException")
    err(s, "POST", "/api/v1/thing-types/ghost/deprecate", {}, status=404, code="ResourceNotFoundException")

    for n in ("a1", "a2", "b1"):
        ok(s, "POST", f"/api/v1/thing-types/{n}", {})
    assert [t["thingTypeName"] for t in ok(s, "GET", "/api/v1/thing-types")["thingTypes"]] == ["a1", "a2", "b1"]
    assert [t["thingTypeName"] for t in ok(s, "GET", "/api/v1/thing-types" + q(thingTypeName="a"))["thingTypes"]] \
        == ["a1", "a2"]
    page = ok(s, "GET", "/api/v1/thing-types" + q(maxResults=2))
    assert len(page["thingTypes"]) == 2 and page["nextToken"]
    rest = ok(s, "GET", "/api/v1/thing-types" + q(maxResults=2, nextToken=page["nextToken"]))
    assert [t["thingTypeName"] for t in rest["thingTypes"]] == ["b1"] and "nextToken" not in rest


def test_type_deletion_waits_after_deprecation_by_default(shoal: Shoal):
    """AWS: a type can be deleted only five minutes after it was deprecated."""
    ok(shoal, "POST", "/api/v1/thing-types/old", {})
    ok(shoal, "POST", "/api/v1/thing-types/old/deprecate", {})
    err(shoal, "DELETE", "/api/v1/thing-types/old", status=400, code="InvalidRequestException")
    assert ok(shoal, "GET", "/api/v1/thing-types/old")["thingTypeMetadata"]["deprecated"] is True


# -- thing groups ----------------------------------------------------------------------------------

def test_nested_groups(shoal: Shoal):
    ok(shoal, "POST", "/api/v1/thing-groups/fleet", {"thingGroupProperties": {
        "thingGroupDescription": "all trucks", "attributePayload": {"attributes": {"owner": "ops"}}}})
    ok(shoal, "POST", "/api/v1/thing-groups/north", {"parentGroupName": "fleet"})
    ok(shoal, "POST", "/api/v1/thing-groups/north-depot", {"parentGroupName": "north"})
    ok(shoal, "POST", "/api/v1/thing-groups/south", {"parentGroupName": "fleet"})
    ok(shoal, "POST", "/api/v1/thing-groups/other", {})
    err(shoal, "POST", "/api/v1/thing-groups/orphan", {"parentGroupName": "ghost"},
        status=400, code="InvalidRequestException")

    d = ok(shoal, "GET", "/api/v1/thing-groups/north-depot")
    assert d["thingGroupArn"] == f"{ARN}:thinggroup/north-depot" and d["version"] == 1
    assert d["thingGroupMetadata"]["parentGroupName"] == "north"
    assert d["thingGroupMetadata"]["rootToParentThingGroups"] == [
        {"groupName": "fleet", "groupArn": f"{ARN}:thinggroup/fleet"},
        {"groupName": "north", "groupArn": f"{ARN}:thinggroup/north"}]
    d = ok(shoal, "GET", "/api/v1/thing-groups/fleet")
    assert d["thingGroupProperties"] == {"thingGroupDescription": "all trucks",
                                         "attributePayload": {"attributes": {"owner": "ops"}}}

    names = lambda doc: [g["groupName"] for g in doc["thingGroups"]]  # noqa: E731
    assert names(ok(shoal, "GET", "/api/v1/thing-groups")) == ["fleet", "north", "north-depot", "other", "south"]
    assert names(ok(shoal, "GET", "/api/v1/thing-groups" + q(recursive="false"))) == ["fleet", "other"]
    assert names(ok(shoal, "GET", "/api/v1/thing-groups" + q(parentGroup="fleet"))) == \
        ["north", "north-depot", "south"]
    assert names(ok(shoal, "GET", "/api/v1/thing-groups" + q(parentGroup="fleet", recursive="false"))) == \
        ["north", "south"]
    assert names(ok(shoal, "GET", "/api/v1/thing-groups" + q(namePrefixFilter="north"))) == ["north", "north-depot"]
    err(shoal, "GET", "/api/v1/thing-groups" + q(parentGroup="ghost"), status=404, code="ResourceNotFoundException")

    # UpdateThingGroup answers {version}; expectedVersion is checked.
    assert ok(shoal, "PATCH", "/api/v1/thing-groups/fleet", {"expectedVersion": 1, "thingGroupProperties": {
        "attributePayload": {"attributes": {"region": "eu"}, "merge": True}}}) == {"version": 2}
    assert ok(shoal, "GET", "/api/v1/thing-groups/fleet")["thingGroupProperties"]["attributePayload"] == \
        {"attributes": {"owner": "ops", "region": "eu"}}
    err(shoal, "PATCH", "/api/v1/thing-groups/fleet", {"expectedVersion": 1, "thingGroupProperties": {}},
        status=409, code="VersionConflictException")
    err(shoal, "PATCH", "/api/v1/thing-groups/ghost", {"thingGroupProperties": {}},
        status=404, code="ResourceNotFoundException")

    # A group with child groups cannot be deleted; leaves first.
    err(shoal, "DELETE", "/api/v1/thing-groups/fleet", status=400, code="InvalidRequestException",
        message="child groups")
    err(shoal, "DELETE", "/api/v1/thing-groups/south" + q(expectedVersion=9), status=409,
        code="VersionConflictException")
    assert ok(shoal, "DELETE", "/api/v1/thing-groups/south" + q(expectedVersion=1)) == {}
    assert ok(shoal, "DELETE", "/api/v1/thing-groups/south") == {}, "deleting a missing group succeeds"

    # At most 7 levels.
    parent = "other"
    for level in range(2, 8):
        ok(shoal, "POST", f"/api/v1/thing-groups/lvl{level}", {"parentGroupName": parent})
        parent = f"lvl{level}"
    err(shoal, "POST", "/api/v1/thing-groups/lvl8", {"parentGroupName": parent},
        status=400, code="InvalidRequestException")


def test_group_membership(shoal: Shoal):
    for g, parent in [("fleet", None), ("north", "fleet"), ("south", "fleet"), ("cold", None)]:
        ok(shoal, "POST", f"/api/v1/thing-groups/{g}", {"parentGroupName": parent} if parent else {})
    for t in ("t1", "t2", "t3"):
        ok(shoal, "POST", f"/api/v1/things/{t}", {})

    assert ok(shoal, "PUT", "/api/v1/thing-groups/north/things/t1", {}) == {}
    assert ok(shoal, "PUT", "/api/v1/thing-groups/north/things/t1", {}) == {}, "adding twice is a no-op"
    ok(shoal, "PUT", "/api/v1/thing-groups/north/things/t2")
    ok(shoal, "PUT", "/api/v1/thing-groups/south/things/t3")
    ok(shoal, "PUT", "/api/v1/thing-groups/cold/things/t1")

    members = lambda g, **p: ok(shoal, "GET", f"/api/v1/thing-groups/{g}/things" + q(**p))["things"]  # noqa: E731
    assert members("north") == ["t1", "t2"]
    assert members("fleet") == []
    assert members("fleet", recursive="true") == ["t1", "t2", "t3"]
    page = ok(shoal, "GET", "/api/v1/thing-groups/fleet/things" + q(recursive="true", maxResults=2))
    assert page["things"] == ["t1", "t2"] and page["nextToken"]
    assert members("fleet", recursive="true", nextToken=page["nextToken"]) == ["t3"]

    groups = ok(shoal, "GET", "/api/v1/things/t1/thing-groups")["thingGroups"]
    assert groups == [{"groupName": "cold", "groupArn": f"{ARN}:thinggroup/cold"},
                      {"groupName": "north", "groupArn": f"{ARN}:thinggroup/north"}]
    err(shoal, "GET", "/api/v1/things/ghost/thing-groups", status=404, code="ResourceNotFoundException")

    # One group per hierarchy: t1 is in north, so not also in south (same root, fleet).
    err(shoal, "PUT", "/api/v1/thing-groups/south/things/t1", status=400, code="InvalidRequestException")
    err(shoal, "PUT", "/api/v1/thing-groups/ghost/things/t1", status=404, code="ResourceNotFoundException")
    err(shoal, "PUT", "/api/v1/thing-groups/north/things/ghost", status=404, code="ResourceNotFoundException")
    err(shoal, "GET", "/api/v1/thing-groups/ghost/things", status=404, code="ResourceNotFoundException")

    assert ok(shoal, "DELETE", "/api/v1/thing-groups/north/things/t1") == {}
    assert ok(shoal, "DELETE", "/api/v1/thing-groups/north/things/t1") == {}, "removing a non-member is a no-op"
    ok(shoal, "PUT", "/api/v1/thing-groups/south/things/t1")
    assert members("south") == ["t1", "t3"]

    # Deleting a group releases its things; deleting a thing leaves its groups.
    ok(shoal, "DELETE", "/api/v1/thing-groups/cold")
    assert [g["groupName"] for g in ok(shoal, "GET", "/api/v1/things/t1/thing-groups")["thingGroups"]] == ["south"]
    ok(shoal, "DELETE", "/api/v1/things/t3")
    assert members("south") == ["t1"]


# -- durability, identities ------------------------------------------------------------------------

@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_registry_survives_a_restart(make_shoal, request, store):
    shoal = make_shoal("--store", request.getfixturevalue("redis_url") if store == "redis" else "embedded")
    ok(shoal, "POST", "/api/v1/thing-types/truck", {"thingTypeProperties": {"thingTypeDescription": "d"}})
    created = ok(shoal, "POST", "/api/v1/things/truck-9",
                 {"thingTypeName": "truck", "attributePayload": {"attributes": {"fleet": "north"}}})
    ok(shoal, "PATCH", "/api/v1/things/truck-9", {"attributePayload": {"attributes": {"km": "10"}, "merge": True}})
    ok(shoal, "POST", "/api/v1/thing-groups/fleet", {})
    ok(shoal, "POST", "/api/v1/thing-groups/north", {"parentGroupName": "fleet"})
    ok(shoal, "PUT", "/api/v1/thing-groups/north/things/truck-9")
    before = {p: ok(shoal, "GET", p) for p in [
        "/api/v1/things/truck-9", "/api/v1/thing-types/truck", "/api/v1/thing-groups/north",
        "/api/v1/things", "/api/v1/thing-groups", "/api/v1/thing-groups/fleet/things?recursive=true",
        "/api/v1/things/truck-9/thing-groups"]}

    shoal.restart()
    for path, doc in before.items():
        assert ok(shoal, "GET", path) == doc, path
    d = before["/api/v1/things/truck-9"]
    assert (d["thingId"], d["version"], d["attributes"]) == (created["thingId"], 2, {"fleet": "north", "km": "10"})
    # Versions continue where they were.
    ok(shoal, "PATCH", "/api/v1/things/truck-9", {"expectedVersion": 2, "attributePayload": {"attributes": {}}})


def test_principals_need_a_thing_and_keep_it_from_deletion(shoal: Shoal):
    status, _, cert = call(shoal, "POST", "/api/v1/certificates", {"commonName": "dev"})
    assert status == 200, cert
    # AWS: AttachThingPrincipal on a thing that does not exist is ResourceNotFoundException.
    err(shoal, "POST", "/api/v1/things/ghost/principals", {"principal": cert["certificateArn"]},
        status=404, code="ResourceNotFoundException")
    assert ok(shoal, "GET", "/api/v1/things/ghost/principals")["principals"] == []

    ok(shoal, "POST", "/api/v1/things/dev-1", {})
    ok(shoal, "POST", "/api/v1/things/dev-1/principals", {"principal": cert["certificateArn"]})
    # AWS refuses DeleteThing while principals are attached (real-AWS message).
    err(shoal, "DELETE", "/api/v1/things/dev-1", status=400, code="InvalidRequestException",
        message="Cannot delete. Thing dev-1 is still attached to one or more principals")
    assert ok(shoal, "GET", "/api/v1/things/dev-1")["thingName"] == "dev-1"
    ok(shoal, "DELETE", f"/api/v1/things/dev-1/principals/{cert['certificateId']}")
    assert ok(shoal, "DELETE", "/api/v1/things/dev-1") == {}

    # Creating a certificate for a thing registers the thing if it is new (Shoal convenience) ...
    status, _, c2 = call(shoal, "POST", "/api/v1/certificates", {"thingName": "fresh"})
    assert status == 200, c2
    assert ok(shoal, "GET", "/api/v1/things/fresh")["version"] == 1
    assert ok(shoal, "GET", "/api/v1/things/fresh/principals")["principals"] == [c2["certificateArn"]]
    # ... and leaves an existing one as it is.
    ok(shoal, "POST", "/api/v1/things/kept", {"attributePayload": {"attributes": {"a": "1"}}})
    status, _, c3 = call(shoal, "POST", "/api/v1/certificates", {"thingName": "kept"})
    assert status == 200, c3
    assert ok(shoal, "GET", "/api/v1/things/kept")["attributes"] == {"a": "1"}


def _device(shoal: Shoal, thing: str, policy: str, document: dict) -> tuple[str, str]:
    """A certificate attached to `thing` and to `policy` (created with `document`) only: paths
    of the certificate and key files."""
    status, _, cert = call(shoal, "POST", "/api/v1/certificates", {"thingName": thing, "commonName": thing})
    assert status == 200, cert
    ok(shoal, "POST", "/api/v1/policies", {"policyName": policy, "policyDocument": document})
    ok(shoal, "POST", f"/api/v1/policies/{policy}/targets", {"target": cert["certificateId"]})
    d = os.path.join(shoal.data_dir, "registry-certs")
    os.makedirs(d, exist_ok=True)
    crt, key = os.path.join(d, f"{thing}.crt"), os.path.join(d, f"{thing}.key")
    with open(crt, "w") as f:
        f.write(cert["certificatePem"])
    with open(key, "w") as f:
        f.write(cert["keyPair"]["PrivateKey"])
    return crt, key


def test_policy_variables_come_from_the_registry(shoal: Shoal):
    """`${iot:Connection.Thing.Attributes[fleet]}` and `${iot:Connection.Thing.ThingTypeName}`
    resolve from the thing the certificate is attached to (the client id being the thing name);
    a changed attribute applies from the next connection."""
    ok(shoal, "POST", "/api/v1/thing-types/truck", {})
    ok(shoal, "POST", "/api/v1/things/truck-7",
       {"thingTypeName": "truck", "attributePayload": {"attributes": {"fleet": "north"}}})
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"},
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": [
            f"{ARN}:topic/fleet/${{iot:Connection.Thing.Attributes[fleet]}}/*",
            f"{ARN}:topic/type/${{iot:Connection.Thing.ThingTypeName}}"]},
    ]}
    cert = _device(shoal, "truck-7", "fleet-policy", document)

    c = shoal.track(Client(shoal, tls=True, client_cert=cert, client_id="truck-7", version=V5))
    assert c.publish("fleet/north/x", b"1", qos=1).reason_code == 0
    assert c.publish("fleet/south/x", b"1", qos=1).reason_code == 0x87
    assert c.publish("type/truck", b"1", qos=1).reason_code == 0
    assert c.publish("type/van", b"1", qos=1).reason_code == 0x87
    assert c.is_connected(), "a refused QoS 1 publish is answered in the PUBACK, not by closing"
    c.close()

    # Connect is allowed only as the thing the certificate is attached to.
    other = Client(shoal, tls=True, client_cert=cert, client_id=unique("not-the-thing"), version=V5,
                   expect_success=False)
    shoal.track(other)
    assert other.connack.reason_code == 0x87

    # The registry is read at connect time: a new attribute value applies to the next connection.
    ok(shoal, "PATCH", "/api/v1/things/truck-7",
       {"attributePayload": {"attributes": {"fleet": "south"}, "merge": True}})
    c = shoal.track(Client(shoal, tls=True, client_cert=cert, client_id="truck-7", version=V5))
    assert c.publish("fleet/south/x", b"1", qos=1).reason_code == 0
    assert c.publish("fleet/north/x", b"1", qos=1).reason_code == 0x87


# -- boto3 against the AWS control-plane paths -----------------------------------------------------

def _iot(s: Shoal):
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    return boto3.client("iot", endpoint_url=f"http://{s.host}:{s.http_port}", region_name="us-east-1",
                        aws_access_key_id=s.credentials[0], aws_secret_access_key=s.credentials[1],
                        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=15))


def test_boto3_iot_control_plane(shoal: Shoal):
    iot = _iot(shoal)
    t = iot.create_thing_type(thingTypeName="sensor", thingTypeProperties={"thingTypeDescription": "temp"})
    assert t["thingTypeArn"] == f"{ARN}:thingtype/sensor"
    created = iot.create_thing(thingName="s-1", thingTypeName="sensor",
                               attributePayload={"attributes": {"site": "berlin"}})
    assert (created["thingName"], created["thingArn"]) == ("s-1", f"{ARN}:thing/s-1")
    d = iot.describe_thing(thingName="s-1")
    assert (d["thingId"], d["thingTypeName"], d["attributes"], d["version"], d["defaultClientId"]) == \
        (created["thingId"], "sensor", {"site": "berlin"}, 1, "s-1")
    for i in range(2, 6):
        iot.create_thing(thingName=f"s-{i}")

    iot.update_thing(thingName="s-1", expectedVersion=1,
                     attributePayload={"attributes": {"floor": "2"}, "merge": True})
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.update_thing(thingName="s-1", expectedVersion=1, attributePayload={"attributes": {}})
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="ghost")
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as e:
        iot.create_thing(thingName="s-1")
    assert e.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName="bad:name!")

    pages = list(iot.get_paginator("list_things").paginate(PaginationConfig={"PageSize": 2}))
    assert [len(p["things"]) for p in pages] == [2, 2, 1]
    assert [t["thingName"] for p in pages for t in p["things"]] == [f"s-{i}" for i in range(1, 6)]
    assert [t["thingName"] for t in iot.list_things(attributeName="site", attributeValue="berlin")["things"]] == ["s-1"]
    assert [t["thingName"] for t in iot.list_things(thingTypeName="sensor")["things"]] == ["s-1"]

    dt = iot.describe_thing_type(thingTypeName="sensor")
    assert dt["thingTypeMetadata"]["deprecated"] is False and dt["thingTypeMetadata"]["creationDate"].year >= 2024
    iot.deprecate_thing_type(thingTypeName="sensor")
    assert iot.describe_thing_type(thingTypeName="sensor")["thingTypeMetadata"]["deprecated"] is True
    assert [x["thingTypeName"] for x in iot.list_thing_types()["thingTypes"]] == ["sensor"]

    iot.create_thing_group(thingGroupName="site")
    iot.create_thing_group(thingGroupName="site-berlin", parentGroupName="site")
    iot.add_thing_to_thing_group(thingGroupName="site-berlin", thingName="s-1")
    iot.add_thing_to_thing_group(thingGroupArn=f"{ARN}:thinggroup/site-berlin", thingArn=f"{ARN}:thing/s-2")
    assert iot.list_things_in_thing_group(thingGroupName="site", recursive=True)["things"] == ["s-1", "s-2"]
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="s-1")["thingGroups"]] == \
        ["site-berlin"]
    g = iot.describe_thing_group(thingGroupName="site-berlin")
    assert g["thingGroupMetadata"]["rootToParentThingGroups"][0]["groupName"] == "site"
    assert iot.update_thing_group(thingGroupName="site", thingGroupProperties={"thingGroupDescription": "x"},
                                  expectedVersion=1)["version"] == 2
    assert [x["groupName"] for x in iot.list_thing_groups(recursive=False)["thingGroups"]] == ["site"]
    iot.remove_thing_from_thing_group(thingGroupName="site-berlin", thingName="s-1")
    assert iot.list_things_in_thing_group(thingGroupName="site-berlin")["things"] == ["s-2"]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_thing_group(thingGroupName="site")
    iot.delete_thing_group(thingGroupName="site-berlin")

    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.delete_thing(thingName="s-1", expectedVersion=1)
    iot.delete_thing(thingName="s-1", expectedVersion=2)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="s-1")

    # The same records through /api/v1.
    assert ok(shoal, "GET", "/api/v1/things/s-2")["thingName"] == "s-2"
    # The AWS paths live beside the data plane: the shadow of a thing still answers there.
    status, _, doc = http_json(shoal, "POST", "/things/s-2/shadow", {"state": {"reported": {"t": 1}}})
    assert status == 200 and doc["version"] == 1, doc
    assert ok(shoal, "GET", "/things/s-2")["thingName"] == "s-2"
