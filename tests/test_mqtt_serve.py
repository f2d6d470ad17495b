"""``dji-media serve`` with an ``mqtt`` section: Pilot 2 over HTTP and DJI Docks over MQTT from one
process, against a private Mosquitto and the session's SeaweedFS.

The full dock flow (the dock simulator) and the database outage need the service's
``record_dock_upload``; they skip, saying so, until it exists.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import subprocess
import sys
import time
import uuid

import aiomqtt
import pytest
import yaml
from minio import Minio
from minio.error import S3Error
from mqtt_broker import MISSING, MosquittoBroker, mosquitto_binary

from dji_media.backends.peewee_schema import table_names
from support import ENV, ROOT, TOKEN, get, post, run_cli, start, stop, write_config

WS = "ws-cli"
DOCK = "DOCKSERVE0001"
STRANGER = "DOCKSTRANGER01"  # in no workspace of the server's directory
DEVICES_ONLY = "token-devices-only-123"
UPLOAD_ONLY = "token-upload-only-123"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip(MISSING)
    server = MosquittoBroker(str(tmp_path_factory.mktemp("mosquitto-serve")), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def mqtt_config(tmp_path, s3, broker, *, devices=None, media_store=None, **mqtt):
    path = write_config(tmp_path, s3_endpoint=s3.endpoint, media_store=media_store)
    with open(path) as f:
        config = yaml.safe_load(f)
    config["authenticator"]["options"]["tokens"].update({
        DEVICES_ONLY: {"workspaces": [WS], "scopes": ["devices"]},
        UPLOAD_ONLY: {"workspaces": [WS], "scopes": ["upload"]},
    })
    config["mqtt"] = dict({"broker_url": broker.url, "client_id": f"serve-{uuid.uuid4().hex[:8]}",
                           "session_expiry_seconds": 30, "command_timeout_seconds": 0.5}, **mqtt)
    config["devices"] = {DOCK: WS} if devices is None else devices
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


class Server:
    def __init__(self, tmp_path, config, *args):
        self.proc, self.base = start([sys.executable, "-m", "dji_media.cli", "serve", "--config", config, *args],
                                     tmp_path)
        self.log = tmp_path / "server.out"
        # The runtime prints where it listens once every transport started: MQTT is subscribed.


@pytest.fixture
def serve(tmp_path, s3, broker):
    servers = []

    def run(*args, **options):
        server = Server(tmp_path, mqtt_config(tmp_path, s3, broker, **options), *args)
        servers.append(server)
        return server

    yield run
    for server in servers:
        assert stop(server.proc) == 0, server.log.read_text()


class DockClient:
    """A dock on the broker: sends on its topics, waits for the reply with the same tid."""

    def __init__(self, broker, sn):
        self.broker = broker
        self.sn = sn

    async def ask(self, kind, method, data, *, timeout=5.0, message=None):
        message = message or {"tid": str(uuid.uuid4()), "bid": str(uuid.uuid4()), "timestamp": int(time.time() * 1000),
                              "gateway": self.sn, "method": method, "data": data, "need_reply": 1}
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"dock-{uuid.uuid4().hex[:8]}") as client:
            await client.subscribe(f"thing/product/{self.sn}/{kind}_reply", 1)
            await client.publish(f"thing/product/{self.sn}/{kind}", json.dumps(message), qos=1)

            async def first():
                async for reply in client.messages:
                    decoded = json.loads(reply.payload)
                    if decoded.get("tid") == message["tid"]:
                        return decoded
            try:
                return await asyncio.wait_for(first(), timeout)
            except asyncio.TimeoutError:
                return None


def run_async(coroutine):
    # On a thread of its own: asyncio.run on the main thread resets the main thread's current
    # event loop, and a loop that another fixture left there is then collected unclosed, which
    # fails whichever later test the garbage collector happens to run in.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


# ------------------------------------------------------------------------------ one process, both sides

def test_serve_answers_pilot2_and_a_dock_with_credentials_confined_to_the_workspace(serve, broker, s3):
    server = serve()
    status, envelope = post(server.base, f"/storage/api/v1/workspaces/{WS}/sts", {})
    assert (status, envelope["code"]) == (200, 0), envelope

    reply = run_async(DockClient(broker, DOCK).ask("requests", "storage_config_get", {"module": 0}))
    assert reply is not None, server.log.read_text()
    assert reply["method"] == "storage_config_get" and reply["data"]["result"] == 0
    output = reply["data"]["output"]
    assert output["object_key_prefix"] == f"media/{WS}" and output["bucket"] == "media"
    credentials = output["credentials"]
    assert isinstance(credentials["expire"], int) and credentials["expire"] > 0
    host = output["endpoint"].split("://", 1)[1]
    client = Minio(host, access_key=credentials["access_key_id"], secret_key=credentials["access_key_secret"],
                   session_token=credentials["security_token"] or None, secure=False, region="us-east-1")
    inside = f"media/{WS}/DJI_202501010000_001_f/DJI_0001.JPG"
    client.put_object("media", inside, io.BytesIO(b"dock photo"), 10)
    for outside in ("media/ws-other/DJI_0001.JPG", "elsewhere/DJI_0001.JPG"):
        with pytest.raises(S3Error) as refused:
            client.put_object("media", outside, io.BytesIO(b"x"), 1)
        assert refused.value.response.status == 403, outside

    # A dock in no workspace of the directory is never answered (not even with an error).
    assert run_async(DockClient(broker, STRANGER).ask("requests", "storage_config_get", {"module": 0},
                                                      timeout=2.0)) is None
    assert get(server.base, "/readyz")[0] == 200


def test_several_workers_need_a_shared_group(tmp_path, s3, broker):
    config = mqtt_config(tmp_path, s3, broker)
    result = run_cli("serve", "--config", config, "--workers", "2")
    assert result.returncode == 2
    assert "mqtt.shared_group" in result.stderr
    with open(config) as f:
        raw = yaml.safe_load(f)
    raw["server"]["workers"] = 2
    with open(config, "w") as f:
        yaml.safe_dump(raw, f)
    result = run_cli("check", "--config", config)
    assert result.returncode == 2 and "mqtt.shared_group" in result.stderr


# ------------------------------------------------------------------------------ prioritize over HTTP

PRIORITY = "/manage/api/v1/workspaces/{ws}/devices/{sn}/jobs/{flight}/media-priority"


def documented(status, envelope):
    """The answer fits doc/openapi.yaml's schema for the device route and that status."""
    from test_openapi import MEDIA_PRIORITY, Spec, load_spec

    errors = [e.message for e in Spec(load_spec()).response_validator(MEDIA_PRIORITY, status).iter_errors(envelope)]
    assert not errors, (status, envelope, errors)
    return status, envelope


def answering_dock(broker, sn, results, stop_event, received):
    """A dock in a thread of its own: answers services with ``results`` in turn (None: silent)."""
    async def run():
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"dock-{uuid.uuid4().hex[:8]}") as client:
            await client.subscribe(f"thing/product/{sn}/services", 1)
            received.append("subscribed")

            async def answer():
                async for message in client.messages:
                    command = json.loads(message.payload)
                    received.append(command)
                    result = results.pop(0) if results else None
                    if result is not None:
                        await client.publish(f"thing/product/{sn}/services_reply", json.dumps({
                            "tid": command["tid"], "bid": command["bid"], "method": command["method"],
                            "timestamp": int(time.time() * 1000), "data": {"result": result}}), qos=1)

            task = asyncio.ensure_future(answer())
            while not stop_event.is_set():
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    import threading

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "subscribed" not in received:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return thread


def test_prioritize_through_the_http_endpoint(serve, broker):
    import threading

    server = serve()
    stop_event, received = threading.Event(), []
    thread = answering_dock(broker, DOCK, [0, 314001], stop_event, received)
    try:
        path = PRIORITY.format(ws=WS, sn=DOCK, flight="flight-1")
        status, envelope = documented(*post(server.base, path, {}, token=DEVICES_ONLY))
        assert (status, envelope["code"]) == (200, 0), envelope
        assert envelope["data"] == {"gateway_sn": DOCK, "flight_id": "flight-1", "result": 0}
        status, envelope = documented(*post(server.base, path, {}, token=DEVICES_ONLY))
        assert (status, envelope["code"], envelope["data"]["result"]) == (409, 409, 314001), envelope
        commands = [c for c in received if isinstance(c, dict)]
        assert [c["method"] for c in commands] == ["upload_flighttask_media_prioritize"] * 2
        assert commands[0]["data"] == {"flight_id": "flight-1"}

        # No devices scope: 403; a dock of no workspace or another one: 404; a bad token: 401.
        assert documented(*post(server.base, path, {}, token=UPLOAD_ONLY))[0] == 403
        assert documented(*post(server.base, path, {}, token="not-a-token-at-all"))[0] == 401
        bad_sn = PRIORITY.format(ws=WS, sn="DOCK-1", flight="f")
        assert documented(*post(server.base, bad_sn, {}, token=TOKEN))[0] == 400
        status, envelope = documented(*post(server.base, PRIORITY.format(ws=WS, sn=STRANGER, flight="f"), {},
                                            token=TOKEN))
        assert (status, envelope["code"]) == (404, 404), envelope
        assert len([c for c in received if isinstance(c, dict)]) == 2  # nothing sent for those

        # The dock stops answering: three attempts of 0.5 s, then 504 with the envelope.
        began = time.monotonic()
        status, envelope = documented(*post(server.base, path, {}, token=DEVICES_ONLY))
        assert (status, envelope["code"]) == (504, 504), envelope
        assert time.monotonic() - began >= 1.4
        assert len([c for c in received if isinstance(c, dict)]) == 5
    finally:
        stop_event.set()
        thread.join(10)


# ------------------------------------------------------------------------------ the full dock flow

def simulate_dock(broker, sn, files, *extra, timeout=60):
    return subprocess.run([sys.executable, "-m", "dji_media.cli", "simulate-dock", "--broker", broker.url,
                           "--sn", sn, "--files", str(files), *extra], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


def dock_records(tmp_path):
    import sqlite3

    db = sqlite3.connect(f"{tmp_path}/media.sqlite3")
    try:
        table = table_names("dji_")["media_file"]  # the store's default prefix
        return [row[0] for row in db.execute(f"SELECT object_key FROM {table} WHERE workspace_id = ?", (WS,))]
    finally:
        db.close()


def test_the_dock_simulator_through_serve_records_every_file_once(serve, broker, tmp_path):
    server = serve()
    result = simulate_dock(broker, DOCK, 4, "--mission", "DockFlow")
    assert result.returncode == 0, result.stdout + result.stderr + server.log.read_text()
    assert "done: 4 file(s) uploaded and recorded" in result.stdout
    keys = dock_records(tmp_path)
    assert len(keys) == len(set(keys)) == 4, keys
    assert all(key.startswith(f"media/{WS}/DJI_") for key in keys)

    # The same callback sent again (a dock that missed the reply) leaves one record.
    again = simulate_dock(broker, DOCK, 4, "--mission", "DockFlow")
    assert again.returncode == 0, again.stderr
    assert sorted(dock_records(tmp_path)) == sorted(keys)


def test_the_dock_simulator_names_the_step_that_failed(serve, broker):
    serve()
    result = simulate_dock(broker, STRANGER, 1, "--timeout", "0.5", "--retries", "1")
    assert result.returncode == 1
    assert "storage_config_get: no requests_reply" in result.stderr


def test_a_database_that_cannot_be_written_gets_no_reply_and_the_retry_is_recorded_once(serve, broker, tmp_path):
    """The database cannot be written: another connection holds SQLite's write lock (the tests
    may run as root, whom an unwritable file does not stop). The server waits 200 ms for the
    lock, then the write fails: no reply, so the dock retries; once the lock is released the
    retry, the same tid and bid, is recorded once and answered."""
    import sqlite3

    database = f"{tmp_path}/media.sqlite3"
    server = serve(media_store={"backend": "sqlite", "options": {"url": f"sqlite:///{database}",
                                                                 "busy_timeout_ms": 200}})
    assert simulate_dock(broker, DOCK, 1, "--mission", "Warmup").returncode == 0  # the schema exists
    from dji_media.simulator import dock as dock_simulator
    from dji_media.simulator.media import generate_mission

    mission = generate_mission(1, mission="Outage")
    file = mission.files[0]
    key = f"media/{WS}/{dock_simulator.flight_folder(mission)}/{file.name}"
    message = dock_simulator.callback_message(DOCK, mission, file, key, 1)
    client = DockClient(broker, DOCK)
    blocker = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        assert run_async(client.ask("events", "file_upload_callback", None, message=message, timeout=3.0)) is None
        assert key not in dock_records_with(blocker)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    reply = None
    deadline = time.monotonic() + 30
    while reply is None and time.monotonic() < deadline:  # the dock's retry: the same tid and bid
        reply = run_async(client.ask("events", "file_upload_callback", None, message=message, timeout=3.0))
    assert reply is not None and reply["data"] == {"result": 0}, server.log.read_text()
    assert dock_records(tmp_path).count(key) == 1
    assert "unavailable" in server.log.read_text()  # the failure was logged, not silent


def dock_records_with(db):
    table = table_names("dji_")["media_file"]
    return [row[0] for row in db.execute(f"SELECT object_key FROM {table} WHERE workspace_id = ?", (WS,))]


def test_check_reaches_the_broker(tmp_path, s3, broker):
    result = run_cli("check", "--config", mqtt_config(tmp_path, s3, broker))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"mqtt: ok ({broker.url}" in result.stdout
    from mqtt_broker import free_port

    nobody = mqtt_config(tmp_path, s3, broker, broker_url=f"mqtt://127.0.0.1:{free_port()}")
    result = run_cli("check", "--config", nobody)
    assert result.returncode == 1
    assert "mqtt: FAILED" in result.stdout and "cannot connect" in result.stdout


async def replies_within(broker, sn, seconds):
    """Send one storage_config_get; every reply to it that arrives within ``seconds``."""
    tid = str(uuid.uuid4())
    message = {"tid": tid, "bid": str(uuid.uuid4()), "timestamp": int(time.time() * 1000), "gateway": sn,
               "method": "storage_config_get", "data": {"module": 0}}
    replies = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"dock-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(f"thing/product/{sn}/requests_reply", 1)
        await client.publish(f"thing/product/{sn}/requests", json.dumps(message), qos=1)

        async def collect():
            async for reply in client.messages:
                decoded = json.loads(reply.payload)
                if decoded.get("tid") == tid:
                    replies.append(decoded)
        try:
            await asyncio.wait_for(collect(), seconds)
        except asyncio.TimeoutError:
            pass
    return replies


def test_two_workers_with_a_shared_group_answer_each_request_once(serve, broker):
    server = serve("--workers", "2", shared_group="media")
    for _ in range(4):  # the broker spreads them over both workers: each is answered exactly once
        replies = run_async(replies_within(broker, DOCK, 1.5))
        assert [r["data"]["result"] for r in replies] == [0], (replies, server.log.read_text())
