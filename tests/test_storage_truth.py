"""Storage truth at fleet scale, against a real S3 server (SeaweedFS) and real SQLite files.

* Requests answer from the database: a file deleted or overwritten behind the server's back
  is still "known" inside the window (the documented trade-off) and "unknown" after one sweep.
* A request's storage calls do not depend on the folder: with 5,000 objects beside them, a
  tiny-fingerprints request of 100 lists nothing and HEADs at most ``max_checks_per_request``.
* Storage that stops answering mid-sweep: nothing is marked gone, every record stays as it
  was, and the next sweep completes from where the first stopped.
* Two `dji-media serve` processes on one database: one pass per period between them, every
  listing request accounted for by the passes' reports.
* Two callbacks with one object key leave one record, the last.

Counts, never timings: storage requests are counted by ``MinioObjectStore.requests`` or by the
fault-injecting proxy (tests/faults.py) that stands between a server and SeaweedFS.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import io
import sqlite3
import time
import uuid

import pytest
import yaml
from faults import FaultServer

from dji_media import (
    MediaService,
    MinioObjectStore,
    PeeweeMediaStore,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
)
from dji_media.backends.peewee_schema import table_names
from dji_media.sweep import FAILED, FINISHED, StorageSweep, load_sweep_state
from dji_media.testing.contracts import sample_file
from dji_media.values import FastUploadQuery, UploadReport
from support import BUCKET, SERVE, get, s3_options, start, stop, write_config

CREDENTIALS = StaticCredentialProvider(endpoint="http://storage.example:9000", access_key="a", secret_key="b",
                                       bucket=BUCKET)
WINDOW = 3600.0


def new_workspace():
    # A folder of the test's own in the session's bucket.
    return f"st-{uuid.uuid4().hex[:12]}"


def service_for(store, objects, **options):
    options.setdefault("verify_window", WINDOW)
    return MediaService(media_store=store, object_store=objects, credentials=CREDENTIALS,
                        authenticator=StaticTokenAuthenticator(tokens={"token-1234": ["*"]}), **options)


def sweep_for(store, objects, **options):
    options.setdefault("min_record_age", 0)  # the records here were all written moments ago
    return StorageSweep(store, objects, CREDENTIALS, holder_id=options.pop("holder_id", "test-sweep"),
                        pages_per_second=1000, verify_window=WINDOW, **options)


async def call_back(service, ws, name, *, fingerprint=None):
    """An upload-callback for media/<ws>/<name>; returns its tiny fingerprint."""
    fingerprint = fingerprint or uuid.uuid4().hex.upper()
    tiny = f"{fingerprint.lower()}_2022_8_31_15_16_16"
    file = sample_file(fingerprint, object_key=f"media/{ws}/{name}", tiny_fingerprint=tiny)
    await service.record_upload(ws, UploadReport(result=0, file=file))
    return fingerprint, tiny


def sqlite_rows(path):
    """Every media row, straight from the file (not through the store under test)."""
    table = table_names("dji_")["media_file"]
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY workspace_id, fingerprint").fetchall()


@pytest.fixture
def store(tmp_path, io_loop):
    store = PeeweeMediaStore(url=f"sqlite:///{tmp_path}/media.sqlite3")
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def objects(s3, io_loop):
    objects = MinioObjectStore(**s3_options(s3))
    yield objects
    io_loop.run_sync(objects.close)


# ------------------------------------------------------------------------ behind our back

@pytest.mark.gen_test(timeout=60)
async def test_deleted_or_overwritten_objects_are_unknown_after_one_sweep_and_not_before(
        store, objects, put_object, remove_object):
    ws = new_workspace()
    service, sweep = service_for(store, objects), sweep_for(store, objects)
    files = {}
    for name in ("kept.jpg", "deleted.jpg", "overwritten.jpg"):
        put_object(f"media/{ws}/{name}", b"photo " + name.encode())
        files[name] = await call_back(service, ws, name)
    tinies = [tiny for _, tiny in files.values()]

    report = await sweep.run_once()
    assert (report.outcome, report.present, report.confirmed, report.gone, report.changed) == (FINISHED, 3, 3, 0, 0)
    before = dict(objects.requests)
    assert await service.existing_tiny_fingerprints(ws, tinies) == tinies
    assert dict(objects.requests) == before  # answered from the database: no storage request

    remove_object(f"media/{ws}/deleted.jpg")
    put_object(f"media/{ws}/overwritten.jpg", b"another file's bytes under the same key")
    # Inside the window, before the next sweep: still "known" (doc/configuration.md says how long).
    assert await service.existing_tiny_fingerprints(ws, tinies) == tinies
    assert await service.fast_upload(ws, FastUploadQuery(files["deleted.jpg"][0])) is True

    report = await sweep.run_once()
    assert (report.outcome, report.present, report.gone, report.changed) == (FINISHED, 1, 1, 1)
    assert await service.existing_tiny_fingerprints(ws, tinies) == [files["kept.jpg"][1]]
    for name in ("deleted.jpg", "overwritten.jpg"):
        assert await service.fast_upload(ws, FastUploadQuery(files[name][0])) is False
        assert await store.get(ws, files[name][0]) is None
    assert dict(objects.requests).get("HeadObject", 0) == before.get("HeadObject", 0)


@pytest.mark.gen_test(timeout=60)
async def test_a_head_of_an_overwritten_object_answers_unknown(store, objects, put_object):
    """Without a sweep (or a confirmation older than the window) a request HEADs: an ETag or
    size other than the first confirmation's is a stale record."""
    ws = new_workspace()
    service = service_for(store, objects, verify_window=0.0)
    put_object(f"media/{ws}/a.jpg", b"the photo")
    fingerprint, _ = await call_back(service, ws, "a.jpg")
    assert await service.fast_upload(ws, FastUploadQuery(fingerprint)) is True
    assert (await store.get(ws, fingerprint)).size == len(b"the photo")
    put_object(f"media/{ws}/a.jpg", b"other bytes, longer than the photo")
    assert await service.fast_upload(ws, FastUploadQuery(fingerprint)) is False
    assert await store.get(ws, fingerprint) is None


# ------------------------------------------------------------------------ a request's cost

@pytest.mark.gen_test(timeout=240)
async def test_a_requests_storage_calls_do_not_depend_on_the_folder(store, objects, s3_admin):
    ws = new_workspace()
    service = service_for(store, objects, max_checks_per_request=32)

    def put(i):
        s3_admin.put_object(BUCKET, f"media/{ws}/DJI_{i:05d}.JPG", io.BytesIO(b"photo"), 5)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(5000)))
    tinies = [(await call_back(service, ws, f"DJI_{i:05d}.JPG"))[1] for i in range(0, 5000, 50)]
    assert len(tinies) == 100

    before = dict(objects.requests)
    known = await service.existing_tiny_fingerprints(ws, tinies)
    spent = {k: v - before.get(k, 0) for k, v in objects.requests.items() if v != before.get(k, 0)}
    assert spent.get("ListObjectsV2", 0) == 0
    assert 0 < spent.get("HeadObject", 0) <= 32 and known == tinies[:spent["HeadObject"]]

    report = await sweep_for(store, objects).run_once()  # 5 pages of 1,000: paid once per period
    assert (report.objects_listed, report.storage_requests, report.present, report.unrecorded) == (
        5000, 5, 100, 4900)
    before = dict(objects.requests)
    assert await service.existing_tiny_fingerprints(ws, tinies) == tinies
    assert dict(objects.requests) == before  # every one answered from the database


# ------------------------------------------------------------------------ storage stops mid-sweep

class FlakyAfterFirstPage(MinioObjectStore):
    """Storage behind a fault proxy that starts failing once the first listing page came back."""

    fault: FaultServer
    fail_with = "500"

    async def list_page(self, prefix, start_after, limit=1000):
        page = await super().list_page(prefix, start_after, limit)
        self.fault.mode = self.fail_with
        return page


@pytest.mark.parametrize("fault_mode", ["500", "hang"])
@pytest.mark.gen_test(timeout=90)
async def test_storage_stopping_mid_sweep_marks_nothing_gone_and_the_next_sweep_completes(
        s3, tmp_path, io_loop, put_object, fault_mode):
    ws = new_workspace()
    path = tmp_path / "media.sqlite3"
    store = PeeweeMediaStore(url=f"sqlite:///{path}")
    with FaultServer(upstream=s3.endpoint, hang_seconds=5.0) as fault:
        objects = FlakyAfterFirstPage(**s3_options(s3, endpoint=fault.endpoint), timeout=1.0, retries=0)
        objects.fault, objects.fail_with = fault, fault_mode
        try:
            service = service_for(store, objects)
            names = [f"k{i}.jpg" for i in range(7)]
            missing = {"k1.jpg", "k4.jpg", "k6.jpg"}  # one in the first page, two beyond it
            for name in names:
                if name not in missing:
                    put_object(f"media/{ws}/{name}")
                await call_back(service, ws, name)
            rows = sqlite_rows(path)

            report = await sweep_for(store, objects, page_size=2).run_once()
            assert report.outcome == FAILED and report.storage_requests == 2
            assert (report.gone, report.present) == (1, 2)  # the first page, (start, k2]: k1 gone
            def beyond_the_first_page(all_rows):
                return sorted(r for r in all_rows if any(f"media/{ws}/{n}" in r for n in names[3:]))

            rows_after = sqlite_rows(path)
            assert len(rows_after) == len(rows) - 1
            # Beyond the page received, every record exactly as it was, k4 and k6 included.
            assert len(beyond_the_first_page(rows)) == 4
            assert beyond_the_first_page(rows_after) == beyond_the_first_page(rows)
            progress = (await load_sweep_state(store)).progress
            assert (progress.workspace, progress.after) == (ws, f"media/{ws}/k2.jpg")

            fault.mode = "pass"  # storage is back
            objects.fail_with = "pass"
            report = await sweep_for(store, objects, page_size=2).run_once()
            assert (report.outcome, report.resumed, report.gone, report.present) == (FINISHED, True, 3, 4)
            left = {r.file.object_key for r in await store.records_by_object_key(ws, None, None, 100)}
            assert left == {f"media/{ws}/{n}" for n in names if n not in missing}
        finally:
            await objects.close()
            await store.close()


# ------------------------------------------------------------------------ one object key, one record

@pytest.mark.gen_test(timeout=60)
async def test_two_callbacks_with_one_object_key_leave_one_record_the_last(store, objects, put_object):
    ws = new_workspace()
    service = service_for(store, objects)
    put_object(f"media/{ws}/DJI_0001.JPG", b"the second file's bytes")
    first, _ = await call_back(service, ws, "DJI_0001.JPG", fingerprint="A" * 32)
    second, _ = await call_back(service, ws, "DJI_0001.JPG", fingerprint="B" * 32)
    assert await store.get(ws, first) is None
    assert (await store.get(ws, second)).file.object_key == f"media/{ws}/DJI_0001.JPG"
    assert await service.fast_upload(ws, FastUploadQuery(first)) is False
    assert await service.fast_upload(ws, FastUploadQuery(second)) is True


# ------------------------------------------------------------------------ two processes, one database

def serve_config(tmp_path, name, endpoint, db_path, *, period):
    path = write_config(tmp_path, s3_endpoint=endpoint,
                        media_store={"backend": "sqlite", "options": {"url": f"sqlite:///{db_path}"}},
                        server_extra={"demo_banner": False})
    with open(path) as fh:
        config = yaml.safe_load(fh)
    config["sweep"] = {"enabled": True, "period_seconds": period, "lease_seconds": 3, "pages_per_second": 50}
    out = tmp_path / name
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return str(out / "config.yaml"), out


def test_two_server_processes_sweep_once_per_period(s3, tmp_path, put_object, io_loop):
    ws = new_workspace()
    db_path = tmp_path / "media.sqlite3"
    period = 2.0

    async def seed():
        store = PeeweeMediaStore(url=f"sqlite:///{db_path}")
        try:
            await store.ping()  # creates the schema
            for i in range(3):
                put_object(f"media/{ws}/f{i}.jpg")
                await store.upsert(ws, sample_file(f"F{i}", object_key=f"media/{ws}/f{i}.jpg"))
        finally:
            await store.close()

    async def state():
        store = PeeweeMediaStore(url=f"sqlite:///{db_path}")
        try:
            return await load_sweep_state(store)
        finally:
            await store.close()

    io_loop.run_sync(seed)
    with FaultServer(upstream=s3.endpoint) as proxy:  # counts every storage request of both
        servers, bases = [], []
        try:
            for name in ("one", "two"):
                config, out = serve_config(tmp_path, name, proxy.endpoint, db_path, period=period)
                proc, base = start(SERVE + [config], out)
                servers.append(proc)
                bases.append(base)
            deadline = time.monotonic() + 120  # bounded: the passes come every 2 s
            while len(io_loop.run_sync(state).history) < 4:
                assert time.monotonic() < deadline, "four passes did not happen in 120 s"
                assert all(p.poll() is None for p in servers)
                time.sleep(0.2)
            for base in bases:  # each process shows the last pass, whichever ran it
                status, env = get(base, "/readyz")
                assert status == 200 and env["data"]["sweep"]["last_pass"] != "never", env
                assert env["data"]["sweep"]["storage_requests"] == 1, env
        finally:
            for proc in servers:
                assert stop(proc) == 0
        listings = proxy.requests.get("pass GET", 0)  # ListObjectsV2 is the only GET dji_media sends
    final = io_loop.run_sync(state)
    passes = list(reversed(final.history))
    assert all(p.outcome == FINISHED and p.storage_requests == 1 for p in passes)
    # Never two passes within one period, whichever process ran them.
    for earlier, later in zip(passes, passes[1:]):
        assert (later.started_at - earlier.started_at).total_seconds() >= period
        assert later.started_at >= earlier.finished_at
    unfinished = final.progress.report.storage_requests if final.progress else 0
    assert len(passes) < 10, "the history is cut at 10 passes: stop sooner to account for every listing"
    assert listings == len(passes) + unfinished
