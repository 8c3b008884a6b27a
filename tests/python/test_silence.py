"""Silence detection end to end: the cold-chain-alerts component (plugins/dist) re-arms a broker
watchdog with every reading of a truck; a truck that stays connected but stops sending makes the
watchdog fire on `fleet/{truck}/silence`, a rule hands that to the plugin, and the plugin raises
the `connectivity` alert with the value `NO_TELEMETRY` on `fleet/{truck}/alerts`; the next
reading recovers it. A truck that disconnects cleanly cancels its watchdog. The trucks are
paho-mqtt clients; nothing is mocked."""

from __future__ import annotations

import json
import time

import pytest

from conftest import Shoal
from mqtt_helpers import metric, unique, wait_until
from plugin_helpers import DIST, http, ok, settings, upload

needs_plugins = pytest.mark.skipif(not (DIST / "cold-chain-alerts.wasm").is_file(),
                                   reason=f"no {DIST}/cold-chain-alerts.wasm: run plugins/build.sh")
pytestmark = needs_plugins

INTERVAL_S = 0.6  # the configured reporting interval; 3 intervals: 1.8 s of silence


def rule(s: Shoal, name: str, sql: str) -> None:
    body = {"sql": sql, "actions": [{"plugin": {"name": "cca"}}]}
    ok(http(s, "POST", f"/api/v1/rules/{name}", body), 201)


def deploy(s: Shoal, **extra: object) -> None:
    config = {
        "deadline_ms": 1000,
        "max_consecutive_failures": 1000,
        "settings": settings(checks="connectivity", silence_intervals=3, interval_s=INTERVAL_S,
                             silence_min_ms=300, **extra),
    }
    upload(s, "cca", "cold-chain-alerts", config=config)
    rule(s, "cc_readings", "SELECT * FROM 'fleet/+/telemetry'")
    rule(s, "cc_silence", "SELECT * FROM 'fleet/+/silence'")
    # Only the trucks' lifecycle events: a watcher's connection would arm a watchdog too.
    rule(s, "cc_presence", "SELECT * FROM '$aws/events/presence/+/+' WHERE startswith(clientId, 'truck')")


def reading(truck: str) -> str:
    return json.dumps({"truck": truck, "ts": int(time.time() * 1000), "tempC": -20.0, "lat": 53.5, "lon": 10.0})


def report(c, truck: str, n: int, every: float = 0.3) -> float:
    """Publishes `n` readings `every` seconds apart (QoS 1); returns when the last was acked."""
    for i in range(n):
        if i:
            time.sleep(every)
        c.publish(f"fleet/{truck}/telemetry", reading(truck), qos=1)
    return time.monotonic()


def fleet_of_one(s: Shoal):
    """Deploys the plugin and its rules; returns a fresh truck name and a client watching its
    alerts."""
    deploy(s)
    truck = unique("truck")
    w = s.client()
    assert w.subscribe(f"fleet/{truck}/alerts", qos=1)[0] < 0x80
    return truck, w


def alerts(w, t: float) -> list[dict]:
    return [json.loads(m.payload) for m in w.drain(t)]


def test_a_connected_truck_that_goes_silent_raises_no_telemetry_and_recovers(shoal: Shoal):
    truck, w = fleet_of_one(shoal)
    c = shoal.client(client_id=truck)
    # Readings closer together than the timeout keep it quiet, however long they go on.
    last = report(c, truck, 8)
    assert metric(shoal, "shoal_watchdogs") >= 1
    assert alerts(w, 0.5) == [], "re-armed with every reading: no alert while the truck reports"
    raised = w.wait_message(timeout=6.0)
    quiet_for = time.monotonic() - last
    ev = json.loads(raised.payload)
    assert (ev["truck"], ev["kind"], ev["state"], ev["value"]) == (truck, "connectivity", "raised", "NO_TELEMETRY"), ev
    assert ev["lat"] == 53.5 and ev["lon"] == 10.0, "the last known position"
    assert quiet_for >= 1.6, f"raised after {quiet_for:.2f} s of silence, before 3 intervals (1.8 s)"
    assert c.is_connected(), "the truck never disconnected: only silence gave it away"
    assert alerts(w, 1.5) == [], "raised once"
    assert metric(shoal, "shoal_watchdogs_fired_total") >= 1
    # The next reading recovers it, and re-arms.
    c.publish(f"fleet/{truck}/telemetry", reading(truck), qos=1)
    ev = json.loads(w.wait_message(timeout=5.0).payload)
    assert (ev["kind"], ev["state"]) == ("connectivity", "recovered"), ev
    assert ev["value"] >= 1, ev
    ev = json.loads(w.wait_message(timeout=6.0).payload)
    assert (ev["state"], ev["value"]) == ("raised", "NO_TELEMETRY"), "silent again after the recovery"


def test_a_truck_that_disconnects_cleanly_cancels_its_watchdog(shoal: Shoal):
    truck, w = fleet_of_one(shoal)
    c = shoal.client(client_id=truck)
    report(c, truck, 3)
    wait_until(lambda: metric(shoal, "shoal_watchdogs") >= 1, what="the truck's watchdog armed")
    c.disconnect()
    # A clean DISCONNECT is no loss (connectivity_ignore) and cancels the watchdog.
    wait_until(lambda: metric(shoal, "shoal_watchdogs") == 0, timeout=5.0, what="the watchdog gone")
    assert alerts(w, 2.5) == [], "no silence alert for a truck switched off cleanly"
    assert metric(shoal, "shoal_watchdogs_fired_total") == 0, "cancelled, not fired"


def test_a_lost_connection_is_one_alert_not_two(shoal: Shoal):
    truck, w = fleet_of_one(shoal)
    c = shoal.client(client_id=truck)
    report(c, truck, 3)
    c.abort()  # the socket closes without DISCONNECT: CONNECTION_LOST
    ev = json.loads(w.wait_message(timeout=5.0).payload)
    assert (ev["kind"], ev["state"], ev["value"]) == ("connectivity", "raised", "CONNECTION_LOST"), ev
    assert alerts(w, 2.5) == [], "one alert"
    assert metric(shoal, "shoal_watchdogs_fired_total") == 0, "the disconnected event cancelled the watchdog"


def test_the_shadow_interval_sets_the_timeout(shoal: Shoal):
    deploy(shoal)
    truck = unique("truck")
    # The truck reports a 1.5 s interval: 3 intervals are 4.5 s, not the configured 1.8 s.
    doc = {"state": {"reported": {"interval": 1.5}}}
    ok(http(shoal, "POST", f"/things/{truck}/shadow", doc))
    w = shoal.client()
    assert w.subscribe(f"fleet/{truck}/alerts", qos=1)[0] < 0x80
    c = shoal.client(client_id=truck)
    last = report(c, truck, 2)
    assert alerts(w, 3.0) == [], "not after the configured interval's 1.8 s"
    ev = json.loads(w.wait_message(timeout=6.0).payload)
    assert (ev["state"], ev["value"]) == ("raised", "NO_TELEMETRY"), ev
    assert time.monotonic() - last >= 4.2


def test_a_truck_that_connects_and_never_reports_is_noticed(shoal: Shoal):
    truck, w = fleet_of_one(shoal)
    t0 = time.monotonic()
    shoal.client(client_id=truck)  # its connected event arms the watchdog
    ev = json.loads(w.wait_message(timeout=6.0).payload)
    assert (ev["kind"], ev["state"], ev["value"]) == ("connectivity", "raised", "NO_TELEMETRY"), ev
    assert time.monotonic() - t0 >= 1.6
