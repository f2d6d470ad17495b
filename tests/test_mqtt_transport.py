"""The MQTT transport against a real broker: a private Mosquitto per test session (and one per
test where a test stops or restarts it), simulated docks as MQTT clients, a fake service that
records what the transport hands it (and, once, the real MediaService on in-memory backends).

Skips, saying why, when Mosquitto is not installed.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as _dt
import gc
import ipaddress
import json
import logging
import time
import uuid

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_broker import MISSING, MosquittoBroker, free_port, mosquitto_binary

from dji_media.devices import InMemoryDeviceDirectory
from dji_media.errors import BadRequest, DatabaseUnavailable, StartupError, StorageUnavailable
from dji_media.mqtt import MqttTransport
from dji_media.service import CallbackOutcome
from dji_media.values import StorageGrant, UploadCredentials, utc_now

WS = "ws-a"
DOCK = "4TADKAQ000002J"
AIRCRAFT = "1581F6Q8D243M00C0A0B"

# DJI's example of protocol section 6.3, exactly as a Dock 2 sends it.
FILE_UPLOAD_CALLBACK = {
    "tid": "6a7bfe89-c386-4043-b600-b518e10096cc", "bid": "42a19f36-5117-4520-bd13-fd61d818d52e",
    "timestamp": 1712824470123, "gateway": DOCK, "need_reply": 1, "method": "file_upload_callback",
    "data": {
        "file": {
            "object_key": "media/ws-a/DJI_202404111632_005_ac793856-e9d0-4184-8b61-9d45c44179b1/"
                          "DJI_20240411163430_0001_V.jpeg",
            "path": "DJI_202404111632_005_ac793856-e9d0-4184-8b61-9d45c44179b1",
            "name": "DJI_20240411163430_0001_V.jpeg",
            "cloud_to_cloud_id": "DEFAULT",
            "ext": {"flight_id": "ac793856-e9d0-4184-8b61-9d45c44179b1", "drone_model_key": "0-91-0",
                    "payload_model_key": "1-81-0", "is_original": True},
            "metadata": {"gimbal_yaw_degree": "-91.40", "absolute_altitude": 56.311,
                         "relative_altitude": 41.124, "create_time": "2024-04-11 16:34:30",
                         "shoot_position": {"lat": 22.1, "lng": 113.9}}},
        "flight_task": {"uploaded_file_count": 12, "expected_file_count": 14, "flight_type": 0}}}


def dock3_callback(sn, key="media/ws-a/DJI_202501010000_001_f1/DJI_20250101000001_0001_W.jpeg", *, yaw=-4.3):
    """A Dock 3 callback: no flight_task, yaw as a number (or as given)."""
    message = copy.deepcopy(FILE_UPLOAD_CALLBACK)
    message["gateway"] = sn
    message["tid"], message["bid"] = str(uuid.uuid4()), str(uuid.uuid4())
    del message["data"]["flight_task"]
    message["data"]["file"]["object_key"] = key
    message["data"]["file"]["metadata"]["gimbal_yaw_degree"] = yaw
    return message


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def mosquitto():
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip(MISSING)
    return binary


@pytest.fixture(scope="session")
def broker(mosquitto, tmp_path_factory):
    """One private broker for the session's tests (each uses serial numbers of its own)."""
    server = MosquittoBroker(str(tmp_path_factory.mktemp("mosquitto")), binary=mosquitto)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_broker(mosquitto, tmp_path):
    """A broker for one test, which may kill and restart it."""
    server = MosquittoBroker(str(tmp_path), binary=mosquitto, persistence=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def grant(workspace_id: str) -> StorageGrant:
    return StorageGrant(
        bucket="media", endpoint="http://storage.example:9000", region="us-east-1", provider="minio",
        object_key_prefix=f"media/{workspace_id}",
        credentials=UploadCredentials("AKDOCK", "SKDOCK", "STDOCK", utc_now() + _dt.timedelta(hours=1)))


class FakeService:
    """Records what the transport hands it. ``fail`` (an exception) makes calls raise it; while
    ``gate`` is set to an unset event, uploads wait for it."""

    def __init__(self):
        self.uploads = []
        self.expectations = []
        self.credentials_asked = []
        self.fail = None
        self.gate = None
        self.upload_started = asyncio.Event()

    async def issue_credentials(self, workspace_id):
        self.credentials_asked.append(workspace_id)
        if self.fail is not None:
            raise self.fail
        return grant(workspace_id), 3300

    async def record_dock_upload(self, workspace_id, report):
        self.upload_started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.uploads.append((workspace_id, report))
        return CallbackOutcome(recorded=report.result == 0, object_key=report.object_key, result=report.result)

    async def record_mission_expectation(self, workspace_id, flight_id, expected_file_count):
        self.expectations.append((workspace_id, flight_id, expected_file_count))


class Dock:
    """A simulated dock: an MQTT client that publishes on its topics and collects the replies."""

    def __init__(self, client: aiomqtt.Client, sn: str):
        self.client = client
        self.sn = sn
        self.replies = []  # (topic, message), in arrival order

    async def _read(self):
        async for message in self.client.messages:
            self.replies.append((message.topic.value, json.loads(message.payload)))

    async def publish(self, topic: str, payload) -> None:
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        await self.client.publish(topic, payload, qos=1)

    async def send(self, kind: str, method: str, data, *, need_reply=1, **fields) -> str:
        """Publish one message of ours on ``thing/product/{sn}/{kind}`` (or the status topic);
        returns its tid."""
        message = {"tid": str(uuid.uuid4()), "bid": str(uuid.uuid4()), "timestamp": int(time.time() * 1000),
                   "gateway": self.sn, "method": method, "data": data}
        if kind == "events":
            message["need_reply"] = need_reply
        message.update(fields)
        await self.publish(self.topic(kind), message)
        return message["tid"]

    def topic(self, kind: str) -> str:
        return f"sys/product/{self.sn}/status" if kind == "status" else f"thing/product/{self.sn}/{kind}"

    def replies_to(self, tid: str):
        return [(topic, message) for topic, message in self.replies if message.get("tid") == tid]

    async def reply(self, tid: str, timeout: float = 10.0):
        """The one reply to ``tid``: (topic, message)."""
        deadline = time.monotonic() + timeout
        while not self.replies_to(tid):
            assert time.monotonic() < deadline, f"no reply to {tid} within {timeout} s"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # a second reply, if the transport sent one, would be here by now
        replies = self.replies_to(tid)
        assert len(replies) == 1, replies
        return replies[0]


@contextlib.asynccontextmanager
async def dock_at(broker: MosquittoBroker, sn: str):
    client = aiomqtt.Client("127.0.0.1", broker.port, identifier=f"dock-{sn}-{uuid.uuid4().hex[:6]}",
                            protocol=aiomqtt.ProtocolVersion.V5)
    async with client:
        await client.subscribe([(f"thing/product/{sn}/requests_reply", 1), (f"thing/product/{sn}/events_reply", 1),
                                (f"sys/product/{sn}/status_reply", 1)])
        dock = Dock(client, sn)
        reader = asyncio.ensure_future(dock._read())
        try:
            yield dock
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def make_transport(broker, service, devices=None, **options):
    directory = InMemoryDeviceDirectory(devices if devices is not None else {})
    options.setdefault("client_id", f"dji-media-test-{uuid.uuid4().hex[:8]}")
    # Short sessions: this broker outlives the test, and nothing should be queued for it for long.
    options.setdefault("session_expiry_seconds", 30)
    return MqttTransport(service, directory, broker_url=broker.url, **options)


@contextlib.asynccontextmanager
async def running(transport: MqttTransport, grace: float = 2.0):
    await transport.start()
    try:
        yield transport
    finally:
        await transport.stop(grace)


def new_sn() -> str:
    return "DOCK" + uuid.uuid4().hex[:10].upper()


async def eventually(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------ storage_config_get


@pytest.mark.gen_test
async def test_storage_config_get_answers_both_modules_with_the_sts_data_object(broker):
    service, sn = FakeService(), new_sn()
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        for module in (0, 1):
            tid = await dock.send("requests", "storage_config_get", {"module": module})
            topic, reply = await dock.reply(tid)
            assert topic == f"thing/product/{sn}/requests_reply"
            assert reply["method"] == "storage_config_get" and reply["tid"] == tid
            assert isinstance(reply["bid"], str) and isinstance(reply["timestamp"], int)
            assert abs(reply["timestamp"] - time.time() * 1000) < 60_000
            assert set(reply) == {"tid", "bid", "timestamp", "method", "data"}
            assert reply["data"] == {"result": 0, "output": {
                "bucket": "media",
                "credentials": {"access_key_id": "AKDOCK", "access_key_secret": "SKDOCK", "expire": 3300,
                                "security_token": "STDOCK"},
                "endpoint": "http://storage.example:9000", "object_key_prefix": f"media/{WS}",
                "provider": "minio", "region": "us-east-1"}}
    assert service.credentials_asked == [WS, WS]


@pytest.mark.gen_test
async def test_storage_config_get_repeats_tid_and_bid(broker):
    service, sn = FakeService(), new_sn()
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        tid = await dock.send("requests", "storage_config_get", {"module": 0}, bid="my-bid-1")
        _, reply = await dock.reply(tid)
        assert reply["bid"] == "my-bid-1"


@pytest.mark.gen_test
async def test_storage_config_get_with_the_real_service(broker, service):
    """MediaService on in-memory backends and StaticCredentialProvider (tests/conftest.py)."""
    sn = new_sn()
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        _, reply = await dock.reply(tid)
    output = reply["data"]["output"]
    assert reply["data"]["result"] == 0
    assert output["bucket"] == "media" and output["endpoint"] == "http://storage.example:9000"
    assert output["object_key_prefix"] == "media/ws-a"
    assert output["credentials"]["access_key_id"] == "AK"
    assert output["credentials"]["access_key_secret"] == "SK"
    assert output["credentials"]["security_token"] == "ST"
    assert isinstance(output["credentials"]["expire"], int) and output["credentials"]["expire"] > 0
    assert set(output) == {"bucket", "credentials", "endpoint", "object_key_prefix", "provider", "region"}


@pytest.mark.gen_test
async def test_storage_config_get_failure_is_a_non_zero_result_without_output(broker):
    service, sn = FakeService(), new_sn()
    service.fail = StorageUnavailable("STS did not answer")
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        _, reply = await dock.reply(tid)
        assert reply["data"] == {"result": 503}
        tid = await dock.send("requests", "storage_config_get", {"module": 7})
        _, reply = await dock.reply(tid)
        assert reply["data"] == {"result": 400}


# ------------------------------------------------------------------------------ file_upload_callback


@pytest.mark.gen_test
async def test_file_upload_callback_of_section_6_3(broker):
    service = FakeService()
    transport = make_transport(broker, service, {DOCK: WS})
    async with running(transport), dock_at(broker, DOCK) as dock:
        await dock.publish(f"thing/product/{DOCK}/events", FILE_UPLOAD_CALLBACK)
        topic, reply = await dock.reply(FILE_UPLOAD_CALLBACK["tid"])
    assert topic == f"thing/product/{DOCK}/events_reply"
    assert reply["bid"] == FILE_UPLOAD_CALLBACK["bid"] and reply["method"] == "file_upload_callback"
    assert reply["data"] == {"result": 0}
    [(workspace_id, report)] = service.uploads
    assert workspace_id == WS
    assert report.result == 0
    assert report.object_key == FILE_UPLOAD_CALLBACK["data"]["file"]["object_key"]
    assert report.name == "DJI_20240411163430_0001_V.jpeg"
    assert report.path == "DJI_202404111632_005_ac793856-e9d0-4184-8b61-9d45c44179b1"
    assert report.flight_id == "ac793856-e9d0-4184-8b61-9d45c44179b1"
    assert (report.drone_model_key, report.payload_model_key, report.is_original) == ("0-91-0", "1-81-0", True)
    assert report.gimbal_yaw_degree == -91.4
    assert (report.absolute_altitude, report.relative_altitude) == (56.311, 41.124)
    assert report.create_time_text == "2024-04-11 16:34:30"
    assert (report.shoot_lat, report.shoot_lng) == (22.1, 113.9)
    assert report.cloud_to_cloud_id == "DEFAULT"
    assert (report.expected_file_count, report.uploaded_file_count, report.flight_type) == (14, 12, 0)
    assert report.gateway_sn == DOCK and report.sn is None  # no update_topo seen yet
    assert json.loads(report.raw_json) == FILE_UPLOAD_CALLBACK
    # The count travels in the report: record_dock_upload stores it (test_service), not a second call.
    assert service.expectations == []


@pytest.mark.gen_test
async def test_dock_3_without_flight_task_and_yaw_as_number_or_string(broker):
    service, sn = FakeService(), new_sn()
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        for index, yaw in enumerate((-4.3, "12.5")):
            message = dock3_callback(sn, f"media/ws-a/f/DJI_{index}.jpeg", yaw=yaw)
            await dock.publish(dock.topic("events"), message)
            _, reply = await dock.reply(message["tid"])
            assert reply["data"] == {"result": 0}
    assert [r.gimbal_yaw_degree for _, r in service.uploads] == [-4.3, 12.5]
    assert all(r.expected_file_count is None and r.flight_type is None for _, r in service.uploads)
    assert service.expectations == []


@pytest.mark.gen_test
async def test_the_reply_comes_only_after_the_service_returned(broker):
    service, sn = FakeService(), new_sn()
    service.gate = asyncio.Event()
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        message = dock3_callback(sn)
        await dock.publish(dock.topic("events"), message)
        await asyncio.wait_for(service.upload_started.wait(), 10)
        await asyncio.sleep(0.3)
        assert dock.replies_to(message["tid"]) == [] and service.uploads == []
        service.gate.set()
        _, reply = await dock.reply(message["tid"])
        assert reply["data"] == {"result": 0} and len(service.uploads) == 1


@pytest.mark.gen_test
async def test_no_reply_while_the_database_is_down_and_the_retry_is_answered(broker):
    service, sn = FakeService(), new_sn()
    service.fail = DatabaseUnavailable("database is down")
    transport = make_transport(broker, service, {sn: WS})
    async with running(transport), dock_at(broker, sn) as dock:
        message = dock3_callback(sn)
        await dock.publish(dock.topic("events"), message)
        await eventually(lambda: transport.counts.get("failed.unavailable") == 1, what="the failed attempt")
        await asyncio.sleep(0.3)
        assert dock.replies_to(message["tid"]) == []
        service.fail = None
        await dock.publish(dock.topic("events"), message)  # the dock sends it again
        _, reply = await dock.reply(message["tid"])
        assert reply["data"] == {"result": 0}
        assert len(service.uploads) == 1


@pytest.mark.gen_test
async def test_a_failed_upload_is_acknowledged_and_handed_over_as_failed(broker):
    service, sn = FakeService(), new_sn()
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        message = dock3_callback(sn)
        message["data"]["result"] = 3
        await dock.publish(dock.topic("events"), message)
        _, reply = await dock.reply(message["tid"])
    assert reply["data"] == {"result": 0}
    [(_, report)] = service.uploads
    assert report.result == 3  # the service does not record it (CallbackOutcome.recorded False)


@pytest.mark.gen_test
async def test_a_bad_callback_is_refused_with_a_result(broker):
    service, sn = FakeService(), new_sn()
    service.fail = BadRequest("object_key must start with the workspace prefix 'media/ws-a/'", field="object_key")
    async with running(make_transport(broker, service, {sn: WS})), dock_at(broker, sn) as dock:
        message = dock3_callback(sn, "media/other/x.jpeg")
        await dock.publish(dock.topic("events"), message)
        _, reply = await dock.reply(message["tid"])
        assert reply["data"] == {"result": 400}
        service.fail = None
        message = dock3_callback(sn)
        del message["data"]["file"]["object_key"]
        await dock.publish(dock.topic("events"), message)
        _, reply = await dock.reply(message["tid"])
        assert reply["data"] == {"result": 400}
    assert service.uploads == []


@pytest.mark.gen_test
async def test_an_unknown_dock_gets_no_reply_and_one_warning(broker, caplog):
    service, known, stranger = FakeService(), new_sn(), new_sn()
    transport = make_transport(broker, service, {known: WS})
    caplog.set_level(logging.WARNING, logger="dji_media.mqtt")
    async with running(transport), dock_at(broker, stranger) as other, dock_at(broker, known) as dock:
        first = await other.send("requests", "storage_config_get", {"module": 0})
        message = dock3_callback(stranger)
        await other.publish(other.topic("events"), message)
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        await dock.reply(tid)
        await eventually(lambda: transport.counts.get("dropped.unknown_dock") == 2, what="both dropped")
        await asyncio.sleep(0.3)
        assert other.replies_to(first) == [] and other.replies_to(message["tid"]) == []
    assert service.uploads == [] and service.credentials_asked == [WS]
    warnings = [r for r in caplog.records if stranger in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "no workspace" in warnings[0].getMessage()


@pytest.mark.gen_test
async def test_the_warning_about_an_unknown_dock_comes_back_each_period_with_a_count(broker, caplog):
    now = [1000.0]
    service, stranger = FakeService(), new_sn()
    transport = make_transport(broker, service, {}, log_period=600, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="dji_media.mqtt")

    def warnings():
        return [r.getMessage() for r in caplog.records if stranger in r.getMessage()]

    async with running(transport), dock_at(broker, stranger) as other:
        for sent, advance in ((1, 0), (2, 0), (3, 599), (4, 2)):
            now[0] += advance
            await other.send("requests", "storage_config_get", {"module": 0})
            await eventually(lambda n=sent: transport.counts.get("dropped.unknown_dock") == n, what="the drop")
    assert len(warnings()) == 2
    assert "more like it" not in warnings()[0]
    assert warnings()[1].endswith("(2 more like it since the last warning)")


@pytest.mark.gen_test
async def test_a_dock_bound_later_is_answered(broker):
    service, sn = FakeService(), new_sn()
    transport = make_transport(broker, service, {})
    async with running(transport), dock_at(broker, sn) as dock:
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        await eventually(lambda: transport.counts.get("dropped.unknown_dock") == 1, what="the drop")
        transport.directory.bind(sn, WS)
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        _, reply = await dock.reply(tid)
        assert reply["data"]["result"] == 0


# ------------------------------------------------------------------------------ dropped messages


@pytest.mark.gen_test
async def test_bad_messages_are_dropped_unanswered_and_the_transport_keeps_working(broker, caplog):
    service, sn = FakeService(), new_sn()
    transport = make_transport(broker, service, {sn: WS, "BADGATEWAY1": WS}, max_payload_bytes=2048)
    caplog.set_level(logging.WARNING, logger="dji_media.mqtt")
    async with running(transport), dock_at(broker, sn) as dock:
        events = dock.topic("events")
        await dock.publish(events, b"{not json")
        await dock.publish(events, b"\xff\xfe")
        await dock.publish(events, b"[1, 2]")
        await dock.publish(events, json.dumps({"tid": "t", "method": "file_upload_callback", "data": {}}))
        oversized = dock3_callback(sn)
        oversized["data"]["padding"] = "x" * 4096
        await dock.publish(events, oversized)
        unknown = await dock.send("events", "hms", {"list": []})
        unknown_request = await dock.send("requests", "airport_organization_get", {})
        misplaced = await dock.send("events", "storage_config_get", {"module": 0})
        forged = await dock.send("requests", "storage_config_get", {"module": 0}, gateway="BADGATEWAY1")
        # Serial numbers that are not letters and digits never reach the handlers.
        await dock.publish("thing/product/bad-sn/requests", json.dumps({"tid": "t2", "bid": "b", "method":
                                                                        "storage_config_get", "data": {"module": 0}}))
        good = await dock.send("requests", "storage_config_get", {"module": 0})
        _, reply = await dock.reply(good)
        assert reply["data"]["result"] == 0
        await asyncio.sleep(0.3)
        assert [m["tid"] for _, m in dock.replies] == [good]
        for tid in (unknown, unknown_request, misplaced, forged):
            assert dock.replies_to(tid) == []
    counts = transport.counts
    assert counts["dropped.malformed"] == 4
    assert counts["dropped.oversized"] == 1
    assert counts["dropped.gateway_mismatch"] == 1
    assert counts["ignored"] == 3
    assert counts["dropped.bad_topic"] == 1  # it matches thing/product/+/requests
    assert service.uploads == [] and service.credentials_asked == [WS]
    # One warning per problem and dock within the period, the rest counted quietly.
    malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed) == 1


# ------------------------------------------------------------------------------ missions and topology


@pytest.mark.gen_test
async def test_mission_events(broker):
    service, sn = FakeService(), new_sn()
    transport = make_transport(broker, service, {sn: WS})
    async with running(transport), dock_at(broker, sn) as dock:
        tid = await dock.send("events", "highest_priority_upload_flighttask_media", {"flight_id": "mission-7"})
        _, reply = await dock.reply(tid)
        assert reply["data"] == {"result": 0} and reply["method"] == "highest_priority_upload_flighttask_media"
        assert transport.priority_flight(sn) == "mission-7"

        progress = {"result": 0, "output": {"status": "ok", "ext": {"flight_id": "mission-7", "media_count": 31}}}
        tid = await dock.send("events", "flighttask_progress", progress)
        _, reply = await dock.reply(tid)
        assert reply["data"] == {"result": 0}
        tid = await dock.send("events", "flighttask_progress", progress)  # repeated: stored once
        await dock.reply(tid)
        quiet = await dock.send("events", "flighttask_progress", progress, need_reply=0)
        await eventually(lambda: transport.counts.get("handled.flighttask_progress") == 3, what="the third")
        tid = await dock.send("events", "flighttask_progress", {"output": {"status": "in_progress"}})
        await dock.reply(tid)
        assert dock.replies_to(quiet) == []
    assert service.expectations == [(WS, "mission-7", 31)]


@pytest.mark.gen_test
async def test_update_topo_stamps_the_aircraft_and_is_answered_only_when_asked(broker):
    for reply_status in (False, True):
        service, sn = FakeService(), new_sn()
        transport = make_transport(broker, service, {sn: WS}, reply_status=reply_status)
        async with running(transport), dock_at(broker, sn) as dock:
            topo = {"domain": "3", "type": 2, "sub_type": 0, "device_secret": "s", "nonce": "n",
                    "sub_devices": [{"sn": AIRCRAFT, "domain": "0", "type": 91, "sub_type": 0, "index": "A"}]}
            topo_tid = await dock.send("status", "update_topo", topo)
            await eventually(lambda t=transport, s=sn: t.aircraft_of(s) == AIRCRAFT, what="the topology")
            message = dock3_callback(sn)
            await dock.publish(dock.topic("events"), message)
            await dock.reply(message["tid"])
            if reply_status:
                topic, reply = await dock.reply(topo_tid)
                assert topic == f"sys/product/{sn}/status_reply" and reply["data"] == {"result": 0}
            else:
                assert dock.replies_to(topo_tid) == []
            await dock.send("status", "update_topo", dict(topo, sub_devices=[]))
            await eventually(lambda t=transport, s=sn: t.aircraft_of(s) is None, what="the aircraft gone")
        [(_, report)] = service.uploads
        assert report.sn == AIRCRAFT and report.gateway_sn == sn


# ------------------------------------------------------------------------------ the connection


@pytest.mark.gen_test
async def test_start_fails_with_a_startup_error_when_no_broker_answers():
    transport = MqttTransport(FakeService(), InMemoryDeviceDirectory(), broker_url=f"mqtt://127.0.0.1:{free_port()}",
                              client_id="nobody-home", connect_timeout=3)
    with pytest.raises(StartupError, match=r"mqtt: cannot connect to mqtt://127\.0\.0\.1"):
        await transport.start()


@pytest.mark.gen_test
async def test_the_broker_killed_and_restarted_the_transport_reconnects_by_itself(own_broker, caplog):
    service, sn = FakeService(), new_sn()
    transport = make_transport(own_broker, service, {sn: WS}, reconnect_first_delay=0.1, reconnect_max_delay=0.5)
    caplog.set_level(logging.INFO, logger="dji_media.mqtt")
    async with running(transport):
        async with dock_at(own_broker, sn) as dock:
            tid = await dock.send("requests", "storage_config_get", {"module": 0})
            await dock.reply(tid)
        own_broker.kill()
        await eventually(lambda: not transport.connected, what="the loss noticed")
        await asyncio.sleep(1.0)  # several failed attempts
        own_broker.start()
        await eventually(lambda: transport.connections == 2, what="the reconnection")
        async with dock_at(own_broker, sn) as dock:
            tid = await dock.send("requests", "storage_config_get", {"module": 0})
            _, reply = await dock.reply(tid)
            assert reply["data"]["result"] == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "dji_media.mqtt" and r.levelno >= logging.WARNING]
    assert len([line for line in lines if "lost" in line]) == 1, lines
    assert len([line for line in lines if "reconnected" in line]) == 1, lines


@pytest.mark.gen_test
async def test_messages_sent_while_the_server_restarts_are_kept_by_the_broker(broker):
    """The persistent session: what arrives between a stop and the next start is delivered."""
    service, sn, client_id = FakeService(), new_sn(), f"dji-media-{uuid.uuid4().hex[:8]}"
    async with running(make_transport(broker, service, {sn: WS}, client_id=client_id)):
        pass
    async with dock_at(broker, sn) as dock:
        message = dock3_callback(sn)
        await dock.publish(dock.topic("events"), message)  # nobody connected to take it
        await asyncio.sleep(0.2)
        async with running(make_transport(broker, service, {sn: WS}, client_id=client_id)):
            _, reply = await dock.reply(message["tid"])
    assert reply["data"] == {"result": 0} and len(service.uploads) == 1


@pytest.mark.gen_test
async def test_a_shared_subscription_hands_each_event_to_one_transport(broker):
    first, second, sn, group = FakeService(), FakeService(), new_sn(), f"g{uuid.uuid4().hex[:8]}"
    count = 20
    async with running(make_transport(broker, first, {sn: WS}, shared_group=group)), \
            running(make_transport(broker, second, {sn: WS}, shared_group=group)), dock_at(broker, sn) as dock:
        messages = [dock3_callback(sn, f"media/ws-a/f/DJI_{index:04d}.jpeg") for index in range(count)]
        for message in messages:
            await dock.publish(dock.topic("events"), message)
        for message in messages:
            await dock.reply(message["tid"])
        await asyncio.sleep(0.3)
        assert len(dock.replies) == count
    keys = [r.object_key for _, r in first.uploads + second.uploads]
    assert sorted(keys) == sorted(m["data"]["file"]["object_key"] for m in messages)
    assert first.uploads and second.uploads  # the broker shared them out


@pytest.mark.gen_test
async def test_stop_lets_a_handler_in_flight_finish_and_reply(broker):
    service, sn = FakeService(), new_sn()
    service.gate = asyncio.Event()
    transport = make_transport(broker, service, {sn: WS})
    await transport.start()
    async with dock_at(broker, sn) as dock:
        message = dock3_callback(sn)
        await dock.publish(dock.topic("events"), message)
        await asyncio.wait_for(service.upload_started.wait(), 10)
        stopping = asyncio.ensure_future(transport.stop(5.0))
        await asyncio.sleep(0.2)
        assert not stopping.done()
        service.gate.set()
        await asyncio.wait_for(stopping, 10)
        _, reply = await dock.reply(message["tid"])
        assert reply["data"] == {"result": 0}


@pytest.mark.gen_test
async def test_stop_abandons_a_handler_stuck_past_the_grace_period(broker):
    service, sn = FakeService(), new_sn()
    service.gate = asyncio.Event()  # never set
    transport = make_transport(broker, service, {sn: WS})
    await transport.start()
    async with dock_at(broker, sn) as dock:
        message = dock3_callback(sn)
        await dock.publish(dock.topic("events"), message)
        await asyncio.wait_for(service.upload_started.wait(), 10)
        began = time.monotonic()
        await transport.stop(0.3)
        assert time.monotonic() - began < 5
        await asyncio.sleep(0.2)
        assert dock.replies_to(message["tid"]) == [] and service.uploads == []


# ------------------------------------------------------------------------------ TLS


def certificates(directory):
    """A CA and a server certificate for 127.0.0.1 it signed (as an operator's private CA)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dji-media test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=1))
          .not_valid_after(now + _dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=1))
            .not_valid_after(now + _dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as out:
        out.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_broker(mosquitto, tmp_path):
    paths = certificates(tmp_path)
    server = MosquittoBroker(str(tmp_path), binary=mosquitto,
                             extra=f"certfile {paths['cert']}\nkeyfile {paths['key']}\n")
    server.start()
    try:
        yield server, paths
    finally:
        server.stop()


# paho-mqtt 2.2 does not close the socket of a failed TLS handshake (_ssl_wrap_socket); Python
# closes it when it is collected, with a ResourceWarning. Nothing of ours leaks.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.gen_test
async def test_mqtts_verifies_the_broker_against_the_given_ca(tls_broker):
    server, paths = tls_broker
    url = f"mqtts://127.0.0.1:{server.port}"
    transport = MqttTransport(FakeService(), InMemoryDeviceDirectory(), broker_url=url,
                              client_id=f"tls-{uuid.uuid4().hex[:8]}", tls_ca_file=paths["ca"])
    await transport.start()
    assert transport.connected
    await transport.stop(1.0)
    # Verification is on by default: without the CA, the broker's certificate is refused.
    untrusted = MqttTransport(FakeService(), InMemoryDeviceDirectory(), broker_url=url,
                              client_id=f"tls-{uuid.uuid4().hex[:8]}", connect_timeout=3)
    with pytest.raises(StartupError, match="certificate"):
        await untrusted.start()
    gc.collect()  # the leaked socket is collected here, where its warning is expected


# ------------------------------------------------------------------------------ more of the connection


@pytest.mark.gen_test
async def test_mqtt_3_1_1(broker):
    service, sn = FakeService(), new_sn()
    async with running(make_transport(broker, service, {sn: WS}, protocol="3.1.1")), dock_at(broker, sn) as dock:
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        _, reply = await dock.reply(tid)
        assert reply["data"]["result"] == 0
        message = dock3_callback(sn)
        await dock.publish(dock.topic("events"), message)
        _, reply = await dock.reply(message["tid"])
        assert reply["data"] == {"result": 0}


@pytest.mark.gen_test
async def test_a_bug_in_the_service_costs_one_message(broker, caplog):
    service, sn = FakeService(), new_sn()
    service.fail = KeyError("a bug")
    transport = make_transport(broker, service, {sn: WS})
    async with running(transport), dock_at(broker, sn) as dock:
        message = dock3_callback(sn)
        await dock.publish(dock.topic("events"), message)
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        _, reply = await dock.reply(tid)
        assert reply["data"] == {"result": 500}
        await eventually(lambda: transport.counts.get("failed.error") == 2, what="both failures")
        service.fail = None
        tid = await dock.send("requests", "storage_config_get", {"module": 0})
        _, reply = await dock.reply(tid)
        assert reply["data"]["result"] == 0
        assert dock.replies_to(message["tid"]) == []  # an event that hit a bug is sent again by the dock
    errors = [r for r in caplog.records if r.name == "dji_media.mqtt" and r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info for r in errors)
