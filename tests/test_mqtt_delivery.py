"""Delivery under load, against a real broker and a real SQLite store: what a fleet of docks
sees acknowledged is stored, once, when the broker crashes mid-flood; and two workers sharing
a subscription record and answer each event once.

Each test starts a private Mosquitto of its own (``tests/mqtt_broker.py``) and skips, saying
why, when Mosquitto is not installed. The service is ``MediaService`` on ``PeeweeMediaStore``
(a SQLite file in the test's directory); a dock's callback touches neither the bucket nor STS,
so the object store and the credentials are the in-memory and static ones the other MQTT
tests use.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sqlite3
import time
import uuid
from typing import Any, Callable, Deque, Dict, List, Sequence

import aiomqtt
import pytest
from mqtt_broker import MISSING, MosquittoBroker, mosquitto_binary

from dji_media import (
    InMemoryObjectStore,
    MediaService,
    PeeweeMediaStore,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
)
from dji_media.backends.peewee_schema import table_names
from dji_media.devices import InMemoryDeviceDirectory
from dji_media.mqtt import MqttTransport

WS = "ws-a"
MEDIA_TABLE = table_names("dji_")["media_file"]  # the store's default prefix


@pytest.fixture
def mosquitto():
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip(MISSING)
    return binary


@pytest.fixture
def broker(mosquitto, tmp_path):
    """A broker of the test's own."""
    directory = tmp_path / "broker"
    directory.mkdir()
    server = MosquittoBroker(str(directory), binary=mosquitto)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def saving_broker(mosquitto, tmp_path):
    """A broker that saves its sessions and queued messages every second (persistence with
    ``autosave_interval 1``, as a production broker with persistence does, only more often):
    killed, it loses at most the last second; restarted, it delivers what it had saved."""
    directory = tmp_path / "broker"
    directory.mkdir()
    server = MosquittoBroker(str(directory), binary=mosquitto, persistence=True, extra="autosave_interval 1")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_service(database: str) -> MediaService:
    """The real service on a SQLite file; several of them on one file are several workers."""
    return MediaService(
        media_store=PeeweeMediaStore(url=f"sqlite:///{database}"),
        object_store=InMemoryObjectStore(),
        credentials=StaticCredentialProvider(endpoint="http://storage.example:9000", access_key="AK",
                                             secret_key="SK", bucket="media"),
        authenticator=StaticTokenAuthenticator(tokens={"delivery-test-token-0123": [WS]}),  # unused
    )


def make_transport(broker: MosquittoBroker, service: MediaService, docks: List[str], **options: Any) -> MqttTransport:
    options.setdefault("client_id", f"dji-media-delivery-{uuid.uuid4().hex[:8]}")
    options.setdefault("session_expiry_seconds", 60)
    return MqttTransport(service, InMemoryDeviceDirectory({sn: WS for sn in docks}), broker_url=broker.url,
                         reconnect_first_delay=0.1, reconnect_max_delay=0.5, **options)


def callback(sn: str, mission: str, number: int) -> Dict[str, Any]:
    """A file_upload_callback shaped as DJI documents it (protocol section 6.3), one new file."""
    folder = f"DJI_202501011200_{number // 100:03d}_{mission}"
    name = f"DJI_20250101120000_{number:04d}_W.jpeg"
    return {
        "tid": str(uuid.uuid4()), "bid": str(uuid.uuid4()), "timestamp": int(time.time() * 1000),
        "gateway": sn, "need_reply": 1, "method": "file_upload_callback",
        "data": {
            "file": {
                "object_key": f"media/{WS}/{folder}/{name}", "path": folder, "name": name,
                "cloud_to_cloud_id": "DEFAULT",
                "ext": {"flight_id": mission, "drone_model_key": "0-91-0", "payload_model_key": "1-81-0",
                        "is_original": True},
                "metadata": {"gimbal_yaw_degree": "-91.40", "absolute_altitude": 56.3, "relative_altitude": 41.1,
                             "create_time": "2025-01-01 12:00:00", "shoot_position": {"lat": 22.1, "lng": 113.9}}},
            "flight_task": {"uploaded_file_count": number + 1, "expected_file_count": 1000, "flight_type": 0}}}


def new_sn() -> str:
    return "FLOOD" + uuid.uuid4().hex[:10].upper()


def stored(database: str) -> Dict[str, List[int]]:
    """object_key -> the revisions of its rows in the workspace (a key twice would show two)."""
    db = sqlite3.connect(database, timeout=10)
    try:
        rows = db.execute(f"SELECT object_key, revision FROM {MEDIA_TABLE} WHERE workspace_id = ?", (WS,)).fetchall()
    except sqlite3.OperationalError as exc:  # no table: nothing was ever stored
        assert "no such table" in str(exc), exc
        rows = []
    finally:
        db.close()
    found: Dict[str, List[int]] = collections.defaultdict(list)
    for key, revision in rows:
        found[key].append(revision)
    return dict(found)


async def eventually(condition: Callable[[], bool], timeout: float, what: str,
                     tasks: Sequence[asyncio.Future] = ()) -> None:
    """Wait for ``condition``; a task of ``tasks`` that failed meanwhile raises its exception."""
    deadline = time.monotonic() + timeout
    while not condition():
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.02)


class FloodDock:
    """A dock that sends its file_upload_callbacks with up to ``window`` of them unanswered,
    sends each unanswered one again (the same tid and bid) every ``retry`` seconds until its
    events_reply comes, as a dock does, and connects again whenever the broker goes away.

    ``acked``: object key -> when its first ``result 0`` arrived. ``on_ack(key)`` is called
    then, before anything else can run."""

    def __init__(self, port: int, sn: str, messages: List[Dict[str, Any]], *, window: int, retry: float,
                 on_ack: Callable[[str], None] = lambda key: None) -> None:
        self.port = port
        self.sn = sn
        self.topic = f"thing/product/{sn}/events"
        self.payloads = {m["tid"]: json.dumps(m) for m in messages}
        self.key_of = {m["tid"]: m["data"]["file"]["object_key"] for m in messages}
        self.unsent: Deque[str] = collections.deque(m["tid"] for m in messages)
        self.waiting: Dict[str, float] = {}  # tid -> when last sent, until answered
        self.window = window
        self.retry = retry
        self.on_ack = on_ack
        self.acked: Dict[str, float] = {}
        self.replies: collections.Counter = collections.Counter()  # per tid
        self.results: collections.Counter = collections.Counter()
        self.sends = 0
        self.resends = 0
        self.connections = 0
        # Checked as well as cancelling: on Python 3.11 and older asyncio.wait_for (which
        # aiomqtt uses) can swallow a cancellation that arrives as its awaitable completes.
        self.stopped = False

    @property
    def done(self) -> bool:
        return not self.unsent and not self.waiting

    async def run(self) -> None:
        while not self.done and not self.stopped:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"flood-{self.sn}",
                                          protocol=aiomqtt.ProtocolVersion.V5, timeout=3) as client:
                    await client.subscribe(self.topic + "_reply", qos=1)
                    self.connections += 1
                    reader = asyncio.ensure_future(self._read(client))
                    try:
                        await self._pump(client, reader)
                    finally:
                        reader.cancel()
                        await asyncio.gather(reader, return_exceptions=True)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # the broker is away: try again

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            reply = json.loads(bytes(message.payload))
            tid = reply["tid"]
            self.replies[tid] += 1
            result = reply["data"]["result"]
            self.results[result] += 1
            if result == 0 and self.waiting.pop(tid, None) is not None:
                key = self.key_of[tid]
                if key not in self.acked:
                    self.acked[key] = time.monotonic()
                    self.on_ack(key)
        raise aiomqtt.MqttError("the message stream ended")

    async def _pump(self, client: aiomqtt.Client, reader: asyncio.Future) -> None:
        while not self.done and not self.stopped:
            if reader.done():
                reader.result()  # the connection is gone: raises MqttError
            now = time.monotonic()
            for tid, sent in list(self.waiting.items()):
                if now - sent >= self.retry:
                    self.resends += 1
                    await self._send(client, tid)
            while self.unsent and len(self.waiting) < self.window:
                await self._send(client, self.unsent.popleft())
            await asyncio.sleep(0.01)

    async def _send(self, client: aiomqtt.Client, tid: str) -> None:
        # Counted as sent before the publication: one that fails is sent again after `retry`.
        self.waiting[tid] = time.monotonic()
        self.sends += 1
        await client.publish(self.topic, self.payloads[tid], qos=1, timeout=2)


# ------------------------------------------------------------------------------ the broker crashes


@pytest.mark.gen_test(timeout=90)
async def test_broker_killed_and_restarted_mid_flood_every_acknowledged_file_present_exactly_once(
        saving_broker, tmp_path):
    """Five docks flood 400 callbacks (QoS 1, up to 10 unanswered each). Once a third are
    acknowledged the broker is killed (SIGKILL: no clean save; it autosaves every second, as a
    persistent production broker does, so some queued state survives and is delivered again),
    then restarted on the same port. The docks resend what was not answered. Every file a dock
    saw acknowledged was in the database when the reply arrived and is there once at the end;
    in the end every file is recorded, each once."""
    docks_count, per_dock = 5, 80
    total = docks_count * per_dock
    broker = saving_broker
    database = str(tmp_path / "media.sqlite3")
    service = make_service(database)
    sns = [new_sn() for _ in range(docks_count)]
    missing_at_ack: List[str] = []
    reader = sqlite3.connect(database, timeout=10)

    def check_stored(key: str) -> None:
        # The reply comes only once the record is stored: it must be readable now.
        try:
            count = reader.execute(f"SELECT COUNT(*) FROM {MEDIA_TABLE} WHERE workspace_id = ? AND object_key = ?",
                                   (WS, key)).fetchone()[0]
        except sqlite3.OperationalError:  # no table yet: nothing was stored at all
            count = 0
        if count != 1:
            missing_at_ack.append(key)

    transport = make_transport(broker, service, sns)
    docks = [FloodDock(broker.port, sn, [callback(sn, f"m{index}", n) for n in range(per_dock)], window=10,
                       retry=2.0, on_ack=check_stored) for index, sn in enumerate(sns)]
    all_keys = {key for dock in docks for key in dock.key_of.values()}
    assert len(all_keys) == total
    tasks: List[asyncio.Future] = []
    try:
        await transport.start()
        tasks = [asyncio.ensure_future(dock.run()) for dock in docks]

        def acknowledged() -> int:
            return sum(len(dock.acked) for dock in docks)

        await eventually(lambda: acknowledged() >= total // 3, 30, "a third acknowledged", tasks)
        broker.kill()
        # Taken with nothing in between: what the docks had seen acknowledged when it died.
        before_kill = {key for dock in docks for key in dock.acked}
        waiting_at_kill = sum(len(dock.waiting) for dock in docks)
        assert 0 < len(before_kill) < total, "the broker must die mid-flood"
        assert waiting_at_kill > 0, "callbacks must be unanswered when the broker dies"
        rows = stored(database)
        assert before_kill <= set(rows), sorted(before_kill - set(rows))[:5]
        assert all(len(revisions) == 1 for revisions in rows.values())  # one row per file

        await eventually(lambda: not transport.connected, 10, "the transport noticing the loss", tasks)
        await asyncio.get_running_loop().run_in_executor(None, broker.start)
        await eventually(lambda: all(dock.done for dock in docks), 45, "every file acknowledged", tasks)
        await asyncio.gather(*tasks)
    finally:
        for dock in docks:
            dock.stopped = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if transport.connections:
            await transport.stop(2.0)
        await service.close()
        reader.close()

    rows = stored(database)
    assert missing_at_ack == [], f"{len(missing_at_ack)} file(s) acknowledged before they were stored"
    assert {key for dock in docks for key in dock.acked} == all_keys
    assert set(rows) == all_keys, (len(rows), len(all_keys))
    assert sum(len(revisions) for revisions in rows.values()) == total  # one row per file, no more
    assert before_kill <= set(rows)
    assert sum(sum(dock.results.values()) for dock in docks) == sum(dock.results[0] for dock in docks)
    # The crash was felt: the transport and the docks connected again, and callbacks were resent.
    assert transport.connections >= 2
    assert all(dock.connections >= 2 for dock in docks)
    assert sum(dock.resends for dock in docks) > 0
    assert transport.counts.get("failed.error", 0) == 0
    assert transport.counts["handled.file_upload_callback"] >= total


# ------------------------------------------------------------------------------ two workers


class CountingDock:
    """A dock that publishes its callbacks at once (QoS 1) and counts the replies per tid."""

    def __init__(self, client: aiomqtt.Client, sn: str) -> None:
        self.client = client
        self.sn = sn
        self.replies: collections.Counter = collections.Counter()
        self.results: collections.Counter = collections.Counter()
        self.barrier = asyncio.Event()

    async def read(self, barrier_tid: str) -> None:
        async for message in self.client.messages:
            reply = json.loads(bytes(message.payload))
            if reply.get("tid") == barrier_tid:
                self.barrier.set()
                continue
            self.replies[reply["tid"]] += 1
            self.results[reply["data"]["result"]] += 1


@pytest.mark.gen_test(timeout=90)
async def test_two_workers_with_a_shared_subscription_record_each_of_500_events_once(broker, tmp_path, caplog):
    """Two transports, each with a service and a store of its own on one SQLite file (two
    worker processes of one deployment), in one shared-subscription group. Five docks publish
    500 distinct callbacks at once. Each is recorded once (every row at revision 1: no event was
    handled twice) and answered once, and both workers took a share."""
    docks_count, per_dock = 5, 100
    total = docks_count * per_dock
    database = str(tmp_path / "media.sqlite3")
    sns = [new_sn() for _ in range(docks_count)]
    group = f"workers{uuid.uuid4().hex[:6]}"
    services = [make_service(database) for _ in range(2)]
    workers = [make_transport(broker, service, sns, shared_group=group) for service in services]
    barrier_tid = f"barrier-{uuid.uuid4()}"
    messages = {sn: [callback(sn, f"w{index}", n) for n in range(per_dock)] for index, sn in enumerate(sns)}
    tids = {m["tid"] for batch in messages.values() for m in batch}
    keys = {m["data"]["file"]["object_key"] for batch in messages.values() for m in batch}
    assert len(tids) == len(keys) == total
    started: List[MqttTransport] = []
    try:
        for worker in workers:
            await worker.start()
            started.append(worker)
        async with contextlib.AsyncExitStack() as stack:
            docks, readers = [], []
            for sn in sns:
                client = await stack.enter_async_context(aiomqtt.Client(
                    "127.0.0.1", broker.port, identifier=f"dock-{sn}", protocol=aiomqtt.ProtocolVersion.V5))
                await client.subscribe(f"thing/product/{sn}/events_reply", qos=1)
                dock = CountingDock(client, sn)
                docks.append(dock)
                readers.append(asyncio.ensure_future(dock.read(barrier_tid)))
            try:
                async def flood(dock: CountingDock) -> None:
                    for message in messages[dock.sn]:
                        await dock.client.publish(f"thing/product/{dock.sn}/events", json.dumps(message), qos=1)

                await asyncio.gather(*(flood(dock) for dock in docks))
                await eventually(lambda: sum(len(dock.replies) for dock in docks) >= total, 45,
                                 "a reply to every event", readers)
                # No reply can be produced any more once the workers stopped (stop() lets the
                # handlers finish their replies). A marker published on each reply topic after
                # that reaches the dock after every reply the broker took before it.
                for worker in workers:
                    await worker.stop(5.0)
                started.clear()
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"marker-{uuid.uuid4().hex[:6]}",
                                          protocol=aiomqtt.ProtocolVersion.V5) as marker:
                    for dock in docks:
                        await marker.publish(f"thing/product/{dock.sn}/events_reply", json.dumps(
                            {"tid": barrier_tid, "bid": "-", "method": "file_upload_callback",
                             "data": {"result": 0}}), qos=1)
                await asyncio.wait_for(asyncio.gather(*(dock.barrier.wait() for dock in docks)), 10)
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
    finally:
        for worker in started:
            await worker.stop(2.0)
        for service in services:
            await service.close()

    replies: collections.Counter = collections.Counter()
    results: collections.Counter = collections.Counter()
    for dock in docks:
        replies.update(dock.replies)
        results.update(dock.results)
    assert set(replies) == tids, f"{len(set(replies) - tids)} unexpected, {len(tids - set(replies))} unanswered"
    assert [tid for tid, count in replies.items() if count != 1] == []
    assert results == {0: total}

    rows = stored(database)
    assert set(rows) == keys
    assert sum(len(revisions) for revisions in rows.values()) == total
    assert [key for key, revisions in rows.items() if revisions != [1]] == []

    handled = [worker.counts.get("handled.file_upload_callback", 0) for worker in workers]
    answered = [worker.counts.get("replied", 0) for worker in workers]
    assert sum(handled) == total and sum(answered) == total, (handled, answered)
    assert all(count > 0 for count in handled), f"the broker gave one worker everything: {handled}"
    # Replies in flight up to the transport's concurrency are normal, not a warning each.
    assert [r.getMessage() for r in caplog.records if "pending publish calls" in r.getMessage()] == []
