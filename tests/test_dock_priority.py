"""upload_flighttask_media_prioritize: the use case (dji_media.dock_priority) with a fake command
channel, and the MQTT transport's call_service against a private Mosquitto with a fake dock that
answers services_reply (or does not)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiomqtt
import pytest
from mqtt_broker import MISSING, MosquittoBroker, mosquitto_binary

from dji_media.access import DEVICES, UPLOAD, Identity
from dji_media.devices import InMemoryDeviceDirectory
from dji_media.dock_priority import PRIORITIZE_METHOD, DockCommands, DockPriority
from dji_media.errors import BadRequest, DockTimeout, Forbidden, Unavailable, UnknownDock
from dji_media.mqtt import MqttTransport

WS = "ws-a"
DOCK = "DOCKPRIO0001"


def identity(*scopes, workspaces=(WS,)):
    return Identity(subject="test", workspaces=frozenset(workspaces), scopes=frozenset(scopes))


class FakeCommands(DockCommands):
    def __init__(self, result=0, fail=None):
        self.calls = []
        self.result = result
        self.fail = fail

    async def call_service(self, gateway_sn, method, data, timeout=3.0):
        self.calls.append((gateway_sn, method, dict(data), timeout))
        if self.fail is not None:
            raise self.fail
        return self.result


def use_case(commands, devices=None):
    return DockPriority(InMemoryDeviceDirectory({DOCK: WS} if devices is None else devices), commands, timeout=1.5)


# ------------------------------------------------------------------------------ the use case

@pytest.mark.gen_test
async def test_a_dock_of_the_workspace_is_asked_and_its_result_reported():
    commands = FakeCommands(result=0)
    outcome = await use_case(commands).prioritize(identity(DEVICES), WS, DOCK, "flight-1")
    assert outcome.accepted and outcome.result == 0
    assert commands.calls == [(DOCK, PRIORITIZE_METHOD, {"flight_id": "flight-1"}, 1.5)]
    commands.result = 314001
    refused = await use_case(commands).prioritize(identity(DEVICES), WS, DOCK, "flight-1")
    assert not refused.accepted and refused.result == 314001


@pytest.mark.gen_test
async def test_without_the_devices_scope_or_for_another_workspace_nothing_is_sent():
    commands = FakeCommands()
    with pytest.raises(Forbidden) as refused:
        await use_case(commands).prioritize(identity(UPLOAD), WS, DOCK, "flight-1")
    assert not isinstance(refused.value, UnknownDock)
    with pytest.raises(Forbidden):
        await use_case(commands).prioritize(identity(DEVICES, workspaces=("ws-b",)), WS, DOCK, "flight-1")
    with pytest.raises(UnknownDock):  # bound to another workspace
        await use_case(commands, {DOCK: "ws-b"}).prioritize(identity(DEVICES), WS, DOCK, "flight-1")
    with pytest.raises(UnknownDock):  # bound to none
        await use_case(commands, {}).prioritize(identity(DEVICES), WS, DOCK, "flight-1")
    for sn, flight in (("DOCK/1", "f"), (DOCK, ""), (DOCK, "a/b"), (DOCK, "x" * 129)):
        with pytest.raises(BadRequest):
            await use_case(commands).prioritize(identity(DEVICES), WS, sn, flight)
    assert commands.calls == []


@pytest.mark.gen_test
async def test_a_timeout_is_passed_on():
    with pytest.raises(DockTimeout):
        await use_case(FakeCommands(fail=DockTimeout("no answer"))).prioritize(identity(DEVICES), WS, DOCK, "f")


# ------------------------------------------------------------------------------ call_service over MQTT

@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip(MISSING)
    server = MosquittoBroker(str(tmp_path_factory.mktemp("mosquitto-prio")), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class FakeDock:
    """Answers services on its topic: ``results`` in turn (None: stays silent for that attempt)."""

    def __init__(self, broker, sn, results):
        self.broker = broker
        self.sn = sn
        self.results = list(results)
        self.received = []

    async def run(self, ready: asyncio.Event):
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"fake-{self.sn}-{uuid.uuid4().hex[:6]}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(f"thing/product/{self.sn}/services", 1)
            ready.set()
            async for message in client.messages:
                command = json.loads(message.payload)
                self.received.append(command)
                result = self.results.pop(0) if self.results else None
                if result is None:
                    continue
                reply = {"tid": command["tid"], "bid": command["bid"], "timestamp": int(time.time() * 1000),
                         "method": command["method"], "data": {"result": result}}
                await client.publish(f"thing/product/{self.sn}/services_reply", json.dumps(reply), qos=1)


async def with_dock(broker, results, body, sn=None):
    dock = FakeDock(broker, sn or "PRIO" + uuid.uuid4().hex[:8].upper(), results)
    ready = asyncio.Event()
    task = asyncio.ensure_future(dock.run(ready))
    transport = MqttTransport(object(), InMemoryDeviceDirectory({dock.sn: WS}), broker_url=broker.url,  # type: ignore[arg-type]
                              client_id=f"prio-{uuid.uuid4().hex[:8]}", session_expiry_seconds=10)
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await transport.start()
        try:
            return dock, transport, await body(dock, transport)
        finally:
            await transport.stop(1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.gen_test
async def test_call_service_publishes_and_reports_the_docks_result(broker):
    async def body(dock, transport):
        return [await transport.call_service(dock.sn, PRIORITIZE_METHOD, {"flight_id": "f1"}, 3.0),
                await transport.call_service(dock.sn, PRIORITIZE_METHOD, {"flight_id": "f2"}, 3.0)]

    dock, transport, results = await with_dock(broker, [0, 314001], body)
    assert results == [0, 314001]
    assert [c["data"] for c in dock.received] == [{"flight_id": "f1"}, {"flight_id": "f2"}]
    assert all(c["method"] == PRIORITIZE_METHOD for c in dock.received)


@pytest.mark.gen_test
async def test_an_unanswered_command_is_sent_again_with_a_new_tid_then_times_out(broker):
    async def answered_late(dock, transport):
        return await transport.call_service(dock.sn, PRIORITIZE_METHOD, {"flight_id": "f"}, 0.5)

    dock, _, result = await with_dock(broker, [None, 0], answered_late)
    assert result == 0
    assert len(dock.received) == 2
    assert dock.received[0]["tid"] != dock.received[1]["tid"]
    assert dock.received[0]["bid"] == dock.received[1]["bid"]

    async def never(dock, transport):
        began = time.monotonic()
        with pytest.raises(DockTimeout):
            await transport.call_service(dock.sn, PRIORITIZE_METHOD, {"flight_id": "f"}, 0.4)
        return time.monotonic() - began

    dock, transport, waited = await with_dock(broker, [], never)
    assert len(dock.received) == 3  # the first attempt and two more
    assert 1.2 <= waited < 5
    assert transport.counts["commands.timed_out"] == 1


@pytest.mark.gen_test
async def test_a_reply_from_another_docks_topic_does_not_answer(broker):
    """The topic's serial number is part of the match: a dock cannot answer for another."""
    async def body(dock, transport):
        other = "PRIOOTHER" + uuid.uuid4().hex[:4].upper()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"spy-{uuid.uuid4().hex[:6]}") as spy:
            await spy.subscribe(f"thing/product/{dock.sn}/services", 1)

            async def forge():
                async for message in spy.messages:
                    command = json.loads(message.payload)
                    await spy.publish(f"thing/product/{other}/services_reply", json.dumps(
                        {"tid": command["tid"], "bid": command["bid"], "method": command["method"],
                         "timestamp": 1, "data": {"result": 0}}), qos=1)

            forger = asyncio.ensure_future(forge())
            try:
                with pytest.raises(DockTimeout):
                    await transport.call_service(dock.sn, PRIORITIZE_METHOD, {"flight_id": "f"}, 0.3)
            finally:
                forger.cancel()
                await asyncio.gather(forger, return_exceptions=True)
        return transport.counts.get("dropped.unexpected_reply", 0)

    _, _, dropped = await with_dock(broker, [], body)
    assert dropped >= 1


@pytest.mark.gen_test
async def test_not_connected_is_unavailable(broker):
    transport = MqttTransport(object(), InMemoryDeviceDirectory(), broker_url=broker.url,  # type: ignore[arg-type]
                              client_id=f"prio-{uuid.uuid4().hex[:8]}")
    with pytest.raises(Unavailable) as failure:
        await transport.call_service(DOCK, PRIORITIZE_METHOD, {"flight_id": "f"}, 0.5)
    assert not isinstance(failure.value, DockTimeout)
