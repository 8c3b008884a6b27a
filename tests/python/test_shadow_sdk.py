"""The AWS IoT Device SDK v2 for Python (awsiotsdk + awscrt) against Shoal's shadow service over
plain TCP: `IotShadowClientV2` (request/response correlated only by clientToken, on MQTT 5 and
MQTT 3.1.1 connections) and the v1-style `IotShadowClient` (MQTT 3.1.1).

Skipped when awsiotsdk is not installed (`pip install awsiotsdk`)."""

from __future__ import annotations

import json
import queue
from concurrent.futures import Future

import pytest

iotshadow = pytest.importorskip("awsiot.iotshadow")
import awsiot  # noqa: E402
from awscrt import mqtt, mqtt5  # noqa: E402
from awscrt import mqtt_request_response as rr  # noqa: E402

from mqtt_helpers import V5, unique  # noqa: E402
from shadow_helpers import ShadowInbox  # noqa: E402

TIMEOUT = 10


class Crt:
    """awscrt MQTT clients on plain TCP, stopped at teardown."""

    def __init__(self, broker):
        self.broker = broker
        self.v5: list[mqtt5.Client] = []
        self.v3: list[mqtt.Connection] = []

    def mqtt5(self) -> mqtt5.Client:
        connected: Future = Future()

        def ok(_e):
            if not connected.done():
                connected.set_result(True)

        def fail(e):
            if not connected.done():
                connected.set_exception(RuntimeError(f"connection failed: {e.exception}"))

        opts = mqtt5.ClientOptions(
            host_name=self.broker.host, port=self.broker.mqtt_port,
            connect_options=mqtt5.ConnectPacket(client_id=unique("crt5"), keep_alive_interval_sec=30),
            on_lifecycle_event_connection_success_fn=ok, on_lifecycle_event_connection_failure_fn=fail)
        c = mqtt5.Client(opts)
        self.v5.append(c)
        c.start()
        connected.result(TIMEOUT)
        return c

    def mqtt3(self) -> mqtt.Connection:
        client = mqtt.Client(None, None)  # default bootstrap, no TLS
        conn = mqtt.Connection(client=client, host_name=self.broker.host, port=self.broker.mqtt_port,
                               client_id=unique("crt3"), clean_session=True, keep_alive_secs=30)
        conn.connect().result(TIMEOUT)
        self.v3.append(conn)
        return conn

    def close(self) -> None:
        for c in self.v5:
            c.stop()
        for c in self.v3:
            try:
                c.disconnect().result(TIMEOUT)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass


@pytest.fixture
def crt(shoal):
    c = Crt(shoal)
    yield c
    c.close()


def v2_client(crt: Crt, protocol: str):
    conn = crt.mqtt5() if protocol == "mqtt5" else crt.mqtt3()
    return iotshadow.IotShadowClientV2(conn, rr.ClientOptions(
        max_request_response_subscriptions=6, max_streaming_subscriptions=4, operation_timeout_in_seconds=TIMEOUT))


@pytest.mark.parametrize("protocol", ["mqtt5", "mqtt311"])
def test_sdk_v2_update_get_delete(shoal, crt, protocol):
    """IotShadowClientV2 matches responses only by clientToken: update/get/delete succeed with
    the AWS fields; a get after the delete raises V2ServiceException carrying the 404 modeled
    error; named shadows work the same way."""
    sh = v2_client(crt, protocol)
    thing = unique("thing")
    r = sh.update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(desired={"color": "red", "lvl": {"x": 1}}))).result(TIMEOUT)
    assert (r.version, r.state.desired) == (1, {"color": "red", "lvl": {"x": 1}})
    assert r.client_token, "no clientToken echoed (the SDK would not have matched the response)"
    assert set(r.metadata.desired) == {"color", "lvl"}

    r = sh.update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"color": "red"}), version=1)).result(TIMEOUT)
    assert (r.version, r.state.reported) == (2, {"color": "red"})

    g = sh.get_shadow(iotshadow.GetShadowRequest(thing_name=thing)).result(TIMEOUT)
    assert g.version == 2
    assert (g.state.desired, g.state.reported, g.state.delta) == (
        {"color": "red", "lvl": {"x": 1}}, {"color": "red"}, {"lvl": {"x": 1}})

    with pytest.raises(awsiot.V2ServiceException) as ei:
        sh.update_shadow(iotshadow.UpdateShadowRequest(
            thing_name=thing, state=iotshadow.ShadowState(reported={"color": "x"}), version=1)).result(TIMEOUT)
    err = ei.value.modeled_error
    assert (err.code, err.message) == (409, "Version conflict")

    d = sh.delete_shadow(iotshadow.DeleteShadowRequest(thing_name=thing)).result(TIMEOUT)
    assert d.version == 2
    with pytest.raises(awsiot.V2ServiceException) as ei:
        sh.get_shadow(iotshadow.GetShadowRequest(thing_name=thing)).result(TIMEOUT)
    err = ei.value.modeled_error
    assert (err.code, err.message) == (404, f"No shadow exists with name: '{thing}'")

    n = sh.update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name="cfg", state=iotshadow.ShadowState(reported={"on": True}))).result(TIMEOUT)
    assert n.version == 1
    g = sh.get_named_shadow(iotshadow.GetNamedShadowRequest(thing_name=thing, shadow_name="cfg")).result(TIMEOUT)
    assert (g.state.reported, g.version) == ({"on": True}, 1)


def test_sdk_v2_delta_stream(shoal, crt):
    """create_shadow_delta_updated_stream delivers /update/delta events when another client
    changes desired."""
    sh = v2_client(crt, "mqtt5")
    thing = unique("thing")
    events: queue.Queue = queue.Queue()
    subscribed: Future = Future()

    def on_status(ev):
        if ev.type == rr.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED and not subscribed.done():
            subscribed.set_result(True)

    stream = sh.create_shadow_delta_updated_stream(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing),
        awsiot.ServiceStreamOptions(incoming_event_listener=events.put, subscription_status_listener=on_status))
    stream.open()
    subscribed.result(TIMEOUT)
    other = ShadowInbox(shoal.client(version=V5), thing)
    other.update({"state": {"desired": {"speed": 5}}, "clientToken": "from-paho"})
    ev = events.get(timeout=TIMEOUT)
    assert (ev.state, ev.version, ev.client_token) == ({"speed": 5}, 1, "from-paho")


def test_sdk_v1_client_over_mqtt311(shoal, crt):
    """The v1-style IotShadowClient (explicit subscribe + publish) gets /update/accepted and
    /get/accepted with the AWS fields."""
    conn = crt.mqtt3()
    sh = iotshadow.IotShadowClient(conn)
    thing = unique("thing")
    accepted: queue.Queue = queue.Queue()
    got: queue.Queue = queue.Queue()
    fut, _ = sh.subscribe_to_update_shadow_accepted(
        iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), mqtt.QoS.AT_LEAST_ONCE, accepted.put)
    fut.result(TIMEOUT)
    fut, _ = sh.subscribe_to_get_shadow_accepted(
        iotshadow.GetShadowSubscriptionRequest(thing_name=thing), mqtt.QoS.AT_LEAST_ONCE, got.put)
    fut.result(TIMEOUT)
    sh.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, client_token="v1-tok", state=iotshadow.ShadowState(reported={"t": 20.5})),
        mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT)
    r = accepted.get(timeout=TIMEOUT)
    assert (r.client_token, r.version, r.state.reported) == ("v1-tok", 1, {"t": 20.5})
    sh.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing, client_token="v1-get"),
                          mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT)
    g = got.get(timeout=TIMEOUT)
    assert (g.client_token, g.version, g.state.reported) == ("v1-get", 1, {"t": 20.5})
    assert json.loads(json.dumps(g.state.reported)) == {"t": 20.5}
