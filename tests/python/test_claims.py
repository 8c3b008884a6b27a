"""Claim verification end to end: trucks' telemetry goes through a real rule's archive action
into DATA/archive, and `shoal claim verify` / `GET /api/v1/claims/verify` read it back into a
report (excursions with start/end/peak, door openings, gaps, a verdict with reasons), as JSON
and as an HTML page."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

from conftest import Shoal
from test_rules import create, wait_stats

# The window: an hour ending an hour ago, on whole minutes (archive files are per arrival day,
# and the claim reads the window's days and the two after them).
T0 = (int(time.time()) // 60 - 120) * 60_000


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def reading(truck: str, minute: int, temp: float, door: str = "closed", humidity: float = 70) -> dict:
    return {"truck": truck, "ts": T0 + minute * 60_000, "lat": 53.55 + minute / 1000, "lon": 9.99,
            "speedKmh": 80, "tempC": temp, "humidity": humidity, "door": door, "presence": False,
            "setpoint": -20, "route": "hamburg-copenhagen", "seq": minute}


def api(s: Shoal, query: dict) -> tuple[int, str, str]:
    url = f"http://{s.host}:{s.http_port}/api/v1/claims/verify?" + urllib.parse.urlencode(query)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_claims_are_verified_from_the_archive(shoal: Shoal, tmp_path):
    create(shoal, "telemetry", "SELECT * FROM 'fleet/+/telemetry'", {"archive": {}})
    pub = shoal.client()
    sent = 0
    # truck-1 holds the chain for an hour; truck-2's compressor fails for four minutes while its
    # door is open, then it goes silent for twenty minutes.
    for m in range(60):
        pub.publish("fleet/truck-1/telemetry", json.dumps(reading("truck-1", m, -20 + (m % 2) * 0.3)), qos=1)
        sent += 1
        if 30 <= m < 50:
            continue
        temp, door = (-16.5 + (m - 10) * 0.2, "open") if 10 <= m < 14 else (-20.0, "closed")
        pub.publish("fleet/truck-2/telemetry", json.dumps(reading("truck-2", m, temp, door)), qos=1)
        sent += 1
    wait_stats(shoal, "telemetry", actionsOk=sent, timeout=20)
    window = {"from": iso(T0), "to": iso(T0 + 3_600_000)}

    code, ctype, body = api(shoal, {"thing": "truck-1", **window})
    assert code == 200 and ctype == "application/json", body
    r = json.loads(body)
    assert r["verdict"] == "held", r["reasons"]
    assert r["readings"] == 60 and r["temperatureExcursions"] == [] and r["gaps"] == []
    assert r["inputs"] == {"thing": "truck-1", "fromMs": T0, "toMs": T0 + 3_600_000, "maxTempC": -18.0,
                           "maxHumidity": 85.0, "maxGapSecs": 600, "archive": "telemetry", "route": None}
    assert r["routeDeviations"] == []
    assert r["files"] == [f"telemetry/{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"]

    # The CLI, signed with the admin key, with a stricter gap.
    env = shoal.cli_env()
    p = subprocess.run([shoal.binary, "claim", "verify", "--thing", "truck-2", "--from", window["from"],
                        "--to", window["to"], "--max-temp", "-18", "--max-gap", "300", "--json",
                        "--html", str(tmp_path / "claim.html")],
                       capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["verdict"] == "broken"
    [exc] = r["temperatureExcursions"]
    assert (exc["startMs"], exc["endMs"], exc["durationSecs"], exc["readings"]) == (
        T0 + 10 * 60_000, T0 + 14 * 60_000, 240.0, 4)
    assert abs(exc["peak"] - (-15.9)) < 1e-9
    [door] = r["doorOpenings"]
    assert door["startMs"] == T0 + 10 * 60_000 and door["durationSecs"] == 240.0 and door["lat"] > 53
    [gap] = r["gaps"]
    assert (gap["fromMs"], gap["toMs"]) == (T0 + 29 * 60_000, T0 + 50 * 60_000)
    assert any("peak -15.9" in reason for reason in r["reasons"]), r["reasons"]
    page = (tmp_path / "claim.html").read_text()
    assert "<b>broken</b>" in page and "<svg" in page and "truck-2" in page

    # An unknown truck has no data: inconclusive, not an error.
    code, _, body = api(shoal, {"thing": "truck-9", **window})
    assert code == 200 and json.loads(body)["verdict"] == "inconclusive"
    # Bad input: a clear 400 each.
    for bad, why in [({"thing": "truck-1", "from": "yesterday", "to": window["to"]}, "is not a time"),
                     ({"thing": "truck-1", "from": window["to"], "to": window["from"]}, "ends before"),
                     ({"thing": "truck-1", **window, "archive": "../etc"}, "not a rule name"),
                     ({"thing": "truck-1", **window, "archive": "nothing_here"}, "no archive"),
                     ({"thing": "truck-1", **window, "format": "pdf"}, "format")]:
        code, _, body = api(shoal, bad)
        assert code == 400 and why in json.loads(body)["message"], (bad, code, body)
    # HTML over the API.
    code, ctype, body = api(shoal, {"thing": "truck-1", **window, "format": "html"})
    assert code == 200 and ctype.startswith("text/html") and "<b>held</b>" in body


def test_departures_from_the_planned_route_in_the_named_shadow(shoal: Shoal):
    """The planned route is the `route` named shadow's desired state; readings farther than its
    corridor from the polyline are route deviations, listed with start, end and the farthest
    distance, and named among the reasons (a detour alone does not break the chain)."""
    create(shoal, "telemetry", "SELECT * FROM 'fleet/+/telemetry'", {"archive": {}})
    base = f"http://{shoal.host}:{shoal.http_port}"
    plan = {"state": {"desired": {"name": "north", "points": [[53.55, 9.99], [53.65, 9.99]], "corridorM": 1000}}}
    req = urllib.request.Request(f"{base}/things/truck-3/shadow?name=route", data=json.dumps(plan).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    pub = shoal.client()
    for m in range(60):
        doc = reading("truck-3", m, -20.0)
        if 20 <= m < 26:
            doc["lon"] = 10.05  # about 4 km east of the planned road
        pub.publish("fleet/truck-3/telemetry", json.dumps(doc), qos=1)
    wait_stats(shoal, "telemetry", actionsOk=60, timeout=20)
    window = {"thing": "truck-3", "from": iso(T0), "to": iso(T0 + 3_600_000)}

    code, _, body = api(shoal, window)
    assert code == 200, body
    r = json.loads(body)
    assert r["verdict"] == "held", r["reasons"]
    route = r["inputs"]["route"]
    assert route["name"] == "north" and route["corridorM"] == 1000 and len(route["points"]) == 2
    assert route["source"].startswith("shadow route of truck-3, version 1")
    [d] = r["routeDeviations"]
    assert (d["startMs"], d["endMs"], d["readings"]) == (T0 + 20 * 60_000, T0 + 26 * 60_000, 6), d
    assert 3_800 < d["peak"] < 4_100, d
    assert any("left the planned route north 1 time(s)" in x for x in r["reasons"]), r["reasons"]

    # A wider corridor from the query wins; no route shadow named, no route checked.
    code, _, body = api(shoal, {**window, "corridor": "5000"})
    r = json.loads(body)
    assert code == 200 and r["routeDeviations"] == [] and r["inputs"]["route"]["corridorM"] == 5000
    code, _, body = api(shoal, {**window, "routeShadow": ""})
    r = json.loads(body)
    assert code == 200 and r["inputs"]["route"] is None and r["routeDeviations"] == []
    # A truck without a plan: nothing to deviate from. Bad corridors and shadow names: 400.
    code, _, body = api(shoal, {**window, "thing": "truck-9"})
    assert code == 200 and json.loads(body)["inputs"]["route"] is None
    for bad in ({"corridor": "-1"}, {"corridor": "nan"}, {"routeShadow": "no/slash"}):
        code, _, body = api(shoal, {**window, **bad})
        assert code == 400, (bad, body)

    code, ctype, page = api(shoal, {**window, "format": "html"})
    assert code == 200 and ctype.startswith("text/html")
    assert "Departures from the planned route (1)" in page and "north (2 points, corridor 1000 m" in page
