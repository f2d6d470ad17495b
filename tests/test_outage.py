"""Storage that cannot be asked is not "file gone" (protocol.md section 4, issue "Lose nothing").

Real faults only: a dedicated SeaweedFS process that is stopped and started again, and a
fault-injecting stand-in (tests/faults.py) answering 500, 403, 404 to everything (a missing
bucket), 404 for objects with a failing bucket check, or nothing at all. Throughout, the
device gets "unknown" (it re-uploads, nothing is lost), sts answers 503, /readyz names
storage, every answer comes within a bounded time, and no record in the SQLite file is altered
or removed. Once storage is back, the same service (not rebuilt) knows every file again.

Figures measured on the development machine (run with ``-s`` to print them); client timeout
1 s, records counted in the SQLite file before / during / after each fault:

    real outage (weed stopped, SIGTERM took 2.2 s; restart on the same data dir 0.6-0.8 s):
        4 / 4 / 4 records, rows identical; fast-upload -1 in 0.003-0.005 s, tiny-fingerprints
        [] in 0.006 s, sts (uncached workspace) 503 in 0.002 s, /readyz 503 in 0.002 s
    500:      3 / 3 / 3; fast-upload -1 in 0.005-0.007 s, tiny [] 0.012 s, sts 503 0.005 s
    403:      3 / 3 / 3; fast-upload -1 in 0.004-0.007 s, tiny [] 0.007 s, sts 503 0.005 s
    404:      3 / 3 / 3; fast-upload -1 in 0.004 s, tiny [] 0.009 s, sts 503 0.003 s
    404+500:  3 / 3 / 3; fast-upload -1 in 0.005 s, tiny [] 0.010 s, sts 503 0.003 s
    hang:     3 / 3 / 3; fast-upload -1 in 1.005 s, tiny [] 1.008 s, sts 503 1.004 s
    hang, 100 files in one tiny-fingerprints: 100 / 100 records; the answer took 7.05 s before
        the service stopped asking storage after a first failure in a request (one client
        timeout per round of verify_concurrency files); now about one timeout (1.05 s).
"""
from __future__ import annotations

import contextlib
import io
import sqlite3
import time
import uuid

import pytest
import tornado.web
import urllib3
from faults import FaultServer
from minio import Minio
from minio.credentials import StaticProvider

from dji_media import (
    MediaService,
    MinioObjectStore,
    NotFoundHandler,
    PeeweeMediaStore,
    StorageUnavailable,
    StsCredentialProvider,
    get_handlers,
    get_health_handlers,
)
from dji_media.embedded_s3 import EmbeddedS3
from support import ADMIN_KEY, ADMIN_SECRET, BUCKET, TOKEN_A, TOKEN_B

WS = "ws-a"
MEDIA = f"/media/api/v1/workspaces/{WS}"
STS_A = f"/storage/api/v1/workspaces/{WS}/sts"
STS_B = "/storage/api/v1/workspaces/ws-b/sts"
# Every answer during a fault must come within this many seconds. The clients time out after
# 1 s, so only a hang may come near it; an unbounded wait would show up as a test timeout.
BOUND = 5.0
CLIENT_TIMEOUT = 1.0


def report(line: str) -> None:
    print(f"[outage] {line}")  # shown with -s; the figures in the module docstring come from here


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """This module's own S3 server: stopping it must not disturb the session's."""
    server = EmbeddedS3(data_dir=tmp_path_factory.mktemp("outage-s3"), access_key=ADMIN_KEY,
                        secret_key=ADMIN_SECRET, buckets=[BUCKET])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def storage_up(storage):
    storage.start()  # a no-op when it runs; brings it back if an earlier test failed mid-outage
    return storage


@pytest.fixture
def admin(storage_up):
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=1)
    client = Minio(storage_up.endpoint.split("://", 1)[1], access_key=ADMIN_KEY,
                   secret_key=ADMIN_SECRET, secure=False, region="us-east-1", http_client=pool)
    yield client
    pool.clear()


@pytest.fixture
def storage_endpoint(storage_up):
    """Where the service reaches storage and STS (the fault tests put a stand-in there)."""
    return storage_up.endpoint


@pytest.fixture
def head_retries():
    return 1  # as configured in production; connection refused is retried once, quickly


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "media.sqlite3"


@pytest.fixture
def store(db_path):
    return PeeweeMediaStore(url=f"sqlite:///{db_path}")


def storage_options(endpoint):
    return dict(endpoint=endpoint, access_key=ADMIN_KEY, secret_key=ADMIN_SECRET, bucket=BUCKET)


@pytest.fixture
def service(storage_endpoint, head_retries, store, authenticator, io_loop):
    # A fresh StsCredentialProvider per test, so no credentials are cached from another test.
    service = MediaService(
        media_store=store,
        object_store=MinioObjectStore(**storage_options(storage_endpoint), timeout=CLIENT_TIMEOUT,
                                      retries=head_retries),
        credentials=StsCredentialProvider(**storage_options(storage_endpoint),
                                          timeout=CLIENT_TIMEOUT, retries=0),
        authenticator=authenticator,
    )
    yield service
    io_loop.run_sync(service.close)


@pytest.fixture
def app(service):
    return tornado.web.Application(get_handlers(service) + get_health_handlers(service),
                                   default_handler_class=NotFoundHandler)


# ------------------------------------------------------------------------------- helpers

async def timed(call, *args, **kwargs):
    started = time.monotonic()
    status, env = await call(*args, **kwargs)
    return status, env, time.monotonic() - started


def sqlite_rows(db_path):
    """Every media row, straight from the file (not through the store under test)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT * FROM dji_media_file ORDER BY workspace_id, fingerprint").fetchall()


async def snapshot(store, files):
    return {f["fingerprint"]: await store.get(WS, f["fingerprint"]) for f in files}


def new_file(i: int, prefix: str = f"media/{WS}"):
    fingerprint = uuid.uuid4().hex.upper()
    name = f"DJI_20220831151616_{i:04d}_W.JPG"
    return {"fingerprint": fingerprint, "name": name, "tiny": f"{uuid.uuid4().hex}_2022_8_31_15_16_{i}",
            "key": f"{prefix}/DJI_202208311455_008_Waypoint1/{name}",
            "data": b"\xff\xd8\xff" + uuid.uuid4().bytes * 64}


def callback_body(f):
    return {"result": 0, "fingerprint": f["fingerprint"], "name": f["name"], "object_key": f["key"],
            "path": "DJI_202208311455_008_Waypoint1",
            "ext": {"tinny_fingerprint": f["tiny"], "drone_model_key": "0-67-0", "sn": "1AD3CA2VL3LAD6"},
            "metadata": {"created_time": "2022-08-31T15:16:16+08:00", "gimbal_yaw_degree": -4.3,
                         "shoot_position": {"lat": 22.577666, "lng": 113.943194}}}


async def record(call, f):
    status, env = await call(f"{MEDIA}/upload-callback", callback_body(f))
    assert (status, env["code"], env["data"]) == (200, 0, {"object_key": f["key"]}), env


async def upload_like_a_device(call, count):
    """sts -> PUT with the temporary credentials -> upload-callback, as Pilot 2 does."""
    status, env = await call(STS_A, {})
    assert (status, env["code"]) == (200, 0), env
    sts = env["data"]
    creds = sts["credentials"]
    pool = urllib3.PoolManager(retries=False)
    device = Minio(sts["endpoint"].split("://", 1)[1], secure=False, region=sts["region"],
                   credentials=StaticProvider(creds["access_key_id"], creds["access_key_secret"],
                                              creds["security_token"]),
                   http_client=pool)
    files = [new_file(i, sts["object_key_prefix"]) for i in range(count)]
    try:
        for f in files:
            device.put_object(sts["bucket"], f["key"], io.BytesIO(f["data"]), len(f["data"]))
            await record(call, f)
    finally:
        pool.clear()
    return files


async def assert_all_known(call, files):
    for f in files:
        status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": f["fingerprint"]})
        assert (status, env["code"]) == (200, 0), (f, env)
    tinies = [f["tiny"] for f in files]
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": ["unknown_1"] + tinies})
    assert (status, env["data"]) == (200, {"tiny_fingerprints": tinies}), env
    status, env = await call("/readyz", method="GET", token=None)
    assert (status, env["code"]) == (200, 0), env


async def assert_all_unknown_in_time(call, files, label):
    """fast-upload -1 and tiny-fingerprints [] for known files, each within BOUND seconds."""
    times = []
    for f in files:
        status, env, took = await timed(call, f"{MEDIA}/fast-upload", {"fingerprint": f["fingerprint"]})
        assert (status, env["code"]) == (200, -1), (f, env)
        assert took < BOUND, f"fast-upload took {took:.2f} s"
        times.append(took)
    status, env, took = await timed(call, f"{MEDIA}/files/tiny-fingerprints",
                                    {"tiny_fingerprints": [f["tiny"] for f in files]})
    assert (status, env["code"], env["data"]) == (200, 0, {"tiny_fingerprints": []}), env
    assert took < BOUND, f"tiny-fingerprints took {took:.2f} s"
    report(f"{label}: fast-upload -1 in {min(times):.3f}-{max(times):.3f} s, "
           f"tiny-fingerprints [] in {took:.3f} s")


async def assert_storage_refused_in_time(call, sts_path, label):
    """sts 503 "unreachable" and /readyz 503 naming storage, within BOUND seconds."""
    status, env, took = await timed(call, sts_path, {}, token=TOKEN_B if sts_path == STS_B else TOKEN_A)
    assert (status, env["code"]) == (503, 503), env
    assert "unreachable" in env["message"] and ("STS" in env["message"] or "storage" in env["message"]), env
    assert env["data"] == {}
    assert took < BOUND, f"sts took {took:.2f} s"
    status, env, ready_took = await timed(call, "/readyz", method="GET", token=None)
    assert (status, env["code"], env["message"]) == (503, 503, "not ready: storage"), env
    assert env["data"]["database"] == "ok" and env["data"]["storage"] != "ok", env
    assert ready_took < BOUND, f"/readyz took {ready_took:.2f} s"
    report(f"{label}: sts 503 in {took:.3f} s ({env['data']['storage']!r} on /readyz, "
           f"503 in {ready_took:.3f} s)")


# ------------------------------------------------------------------------- real outage

@pytest.mark.gen_test(timeout=90)
async def test_storage_outage_loses_nothing_and_recovers_without_rebuild(call, service, storage_up, db_path):
    files = await upload_like_a_device(call, 4)
    await assert_all_known(call, files)
    before = await snapshot(service.media_store, files)
    rows_before = sqlite_rows(db_path)
    assert len(rows_before) == 4 and all(before.values())

    started = time.monotonic()
    storage_up.stop()  # a real outage: the server process is gone, connections are refused
    report(f"real outage: stopped in {time.monotonic() - started:.2f} s; records before: {len(rows_before)}")
    try:
        assert not storage_up.running
        await assert_all_unknown_in_time(call, files, "real outage")
        # ws-b has no cached credentials, so sts must ask STS, which is down.
        await assert_storage_refused_in_time(call, STS_B, "real outage")
        # ws-a's credentials were issued minutes ago and are cached until they come close to
        # expiry (StsCredentialProvider.refresh_before), so they are still handed out.
        status, env = await call(STS_A, {})
        assert (status, env["code"]) == (200, 0) and env["data"]["credentials"]["access_key_id"], env

        head = MinioObjectStore(**storage_options(storage_up.endpoint), timeout=CLIENT_TIMEOUT, retries=0)
        try:
            with pytest.raises(StorageUnavailable):
                await head.exists(files[0]["key"])
        finally:
            await head.close()

        assert await snapshot(service.media_store, files) == before
        rows_during = sqlite_rows(db_path)
        assert rows_during == rows_before
        report(f"real outage: records during: {len(rows_during)} (unchanged)")
    finally:
        started = time.monotonic()
        storage_up.start()  # same data dir, same ports
        report(f"real outage: restarted in {time.monotonic() - started:.2f} s")

    # The same service, not rebuilt, knows every file again.
    await assert_all_known(call, files)
    status, env = await call(STS_B, {}, token=TOKEN_B)
    assert (status, env["code"]) == (200, 0), env
    assert await snapshot(service.media_store, files) == before
    rows_after = sqlite_rows(db_path)
    assert rows_after == rows_before
    report(f"real outage: records after: {len(rows_after)} (unchanged)")


# ---------------------------------------------------------------------- injected faults

class TestInjectedFaults:
    """500, 403, 404 to everything (a missing bucket) and a hang, from a stand-in that otherwise
    forwards to the real S3 server where the objects really are."""

    @pytest.fixture
    def fault(self, storage_up):
        server = FaultServer(upstream=storage_up.endpoint, mode="pass",
                             hang_seconds=CLIENT_TIMEOUT + 4)
        yield server
        server.close()

    @pytest.fixture
    def storage_endpoint(self, fault):
        return fault.endpoint

    @pytest.fixture
    def head_retries(self):
        return 0

    @pytest.mark.parametrize("mode", ["500", "403", "404", "404+500", "hang"])
    @pytest.mark.gen_test(timeout=60)
    async def test_fault_is_not_file_gone(self, mode, call, service, fault, admin, storage_up, db_path):
        files = [new_file(i) for i in range(3)]
        for f in files:
            admin.put_object(BUCKET, f["key"], io.BytesIO(f["data"]), len(f["data"]))
            await record(call, f)

        # The objects are really there, and through the stand-in everything is known.
        real = MinioObjectStore(**storage_options(storage_up.endpoint), timeout=CLIENT_TIMEOUT, retries=0)
        try:
            assert [await real.exists(f["key"]) for f in files] == [True] * 3
        finally:
            await real.close()
        await assert_all_known(call, files)
        before = await snapshot(service.media_store, files)
        rows_before = sqlite_rows(db_path)
        assert len(rows_before) == 3 and all(before.values())

        fault.mode = mode
        await assert_all_unknown_in_time(call, files, f"fault {mode}")
        await assert_storage_refused_in_time(call, STS_A, f"fault {mode}")

        faulty = MinioObjectStore(**storage_options(fault.endpoint), timeout=CLIENT_TIMEOUT, retries=0)
        try:
            for key in (files[0]["key"], f"media/{WS}/never-uploaded.jpg"):
                started = time.monotonic()
                with pytest.raises(StorageUnavailable) as info:
                    await faulty.exists(key)  # never False: the storage said nothing about the file
                assert time.monotonic() - started < BOUND
                if mode == "404":
                    assert "does not exist" in info.value.message  # the bucket, not the object
                if mode == "404+500":
                    assert "does not exist" not in info.value.message  # the bucket check failed
            with pytest.raises(StorageUnavailable):
                await faulty.ping()
        finally:
            await faulty.close()
        assert fault.count(mode) > 0, fault.requests

        assert await snapshot(service.media_store, files) == before
        rows_during = sqlite_rows(db_path)
        assert rows_during == rows_before

        fault.mode = "pass"  # storage answers again: the same service knows every file
        await assert_all_known(call, files)
        assert await snapshot(service.media_store, files) == before
        rows_after = sqlite_rows(db_path)
        assert rows_after == rows_before
        report(f"fault {mode}: records before {len(rows_before)}, during {len(rows_during)}, "
               f"after {len(rows_after)}; requests seen {fault.requests}")

    @pytest.mark.gen_test(timeout=120)
    async def test_hang_with_a_full_sd_card_answers_in_bounded_time(self, call, service, fault, admin, db_path):
        """Pilot 2 with a full SD card asks tiny-fingerprints about many files at once. While
        storage hangs, the answer must still come within BOUND seconds, not after one client
        timeout per verify_concurrency files. (With the old defaults, timeout 5 s and one retry,
        1000 known files took about ceil(1000 / 16) * 10 s = 630 s to answer.)"""
        files = [new_file(i) for i in range(100)]
        for f in files:
            admin.put_object(BUCKET, f["key"], io.BytesIO(f["data"]), len(f["data"]))
            await record(call, f)
        before = await snapshot(service.media_store, files)
        rows_before = sqlite_rows(db_path)

        fault.mode = "hang"
        status, env, took = await timed(call, f"{MEDIA}/files/tiny-fingerprints",
                                        {"tiny_fingerprints": [f["tiny"] for f in files]})
        report(f"fault hang, {len(files)} files: tiny-fingerprints {status} {env['data']} in {took:.2f} s "
               f"(timeout {CLIENT_TIMEOUT} s, verify_concurrency {service.verify_concurrency}); "
               f"requests seen {fault.requests}")
        fault.mode = "pass"
        assert (status, env["data"]) == (200, {"tiny_fingerprints": []}), env
        assert await snapshot(service.media_store, files) == before
        assert sqlite_rows(db_path) == rows_before
        assert took < BOUND, f"tiny-fingerprints for {len(files)} files took {took:.2f} s during a storage hang"
