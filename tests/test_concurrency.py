"""Idempotent writes under concurrency, over HTTP, on a real SQLite file (issue "Lose nothing").

Many callbacks arrive at once (a device retrying, many devices finishing a mission): every one
is answered, the file ends up with exactly the rows it should have, and a failed upload never
overwrites a good record. The SQLite file is read directly with sqlite3, not through the store.

Figures measured on the development machine (run with ``-s`` to print them): 50 identical
callbacks in 0.2-0.7 s -> 1 row (revision 50); 200 different callbacks in 1.3-1.6 s -> 200 rows;
90 interleaved good/failed callbacks in 0.2-0.3 s -> 1 row holding the good key; 40 group
callbacks in 0.1-0.2 s -> 1 row.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid

import pytest
from tornado.httpclient import AsyncHTTPClient

from dji_media import MediaService, PeeweeMediaStore
from support import TOKEN_A

WS = "ws-a"
MEDIA = f"/media/api/v1/workspaces/{WS}"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "media.sqlite3"


@pytest.fixture
def store(db_path):
    return PeeweeMediaStore(url=f"sqlite:///{db_path}")


@pytest.fixture
def service(store, objects, credentials, authenticator, io_loop):
    service = MediaService(media_store=store, object_store=objects, credentials=credentials,
                           authenticator=authenticator)
    yield service
    io_loop.run_sync(service.close)


@pytest.fixture
def post_all(http_server, base_url):
    """POST many bodies at once; answers in request order as (status, envelope)."""
    # The default client runs at most 10 requests at a time; these must really overlap.
    client = AsyncHTTPClient(force_instance=True, max_clients=300)

    async def post_all(path, bodies):
        async def one(body):
            response = await client.fetch(base_url + path, method="POST", body=json.dumps(body),
                                          headers={"X-Auth-Token": TOKEN_A}, raise_error=False,
                                          request_timeout=30, connect_timeout=30)
            return response.code, json.loads(response.body)

        started = time.monotonic()
        answers = await asyncio.gather(*(one(b) for b in bodies))
        print(f"[concurrency] {len(bodies)} x {path.rsplit('/', 1)[-1]} in {time.monotonic() - started:.2f} s")
        return answers

    yield post_all
    client.close()


def query(db_path, sql, *args):
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return db.execute(sql, args).fetchall()


def callback(fingerprint, key, *, result=0, name="DJI_0001.JPG"):
    return {"result": result, "fingerprint": fingerprint, "name": name, "object_key": key,
            "ext": {"tinny_fingerprint": f"{fingerprint.lower()}_2022_8_31_15_16_16",
                    "file_group_id": "g-1", "drone_model_key": "0-67-0"},
            "metadata": {"created_time": "2022-08-31T15:16:16+08:00"}}


@pytest.mark.gen_test(timeout=60)
async def test_identical_callbacks_at_once_leave_one_record(post_all, db_path, objects, call):
    fingerprint = uuid.uuid4().hex.upper()
    key = f"media/{WS}/mission/DJI_0001.JPG"
    answers = await post_all(f"{MEDIA}/upload-callback", [callback(fingerprint, key)] * 50)

    assert answers == [(200, {"code": 0, "message": "success", "data": {"object_key": key}})] * 50
    assert query(db_path, "SELECT COUNT(*) FROM dji_media_file") == [(1,)]
    # Every write was applied to the one row, none lost or duplicated.
    assert query(db_path, "SELECT fingerprint, object_key, revision FROM dji_media_file") == [
        (fingerprint, key, 50)]
    objects.put(key)
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": fingerprint})
    assert (status, env["code"]) == (200, 0)


@pytest.mark.gen_test(timeout=60)
async def test_callbacks_for_different_files_at_once_all_land(post_all, db_path):
    files = {uuid.uuid4().hex.upper(): f"media/{WS}/mission/DJI_{i:04d}.JPG" for i in range(200)}
    answers = await post_all(f"{MEDIA}/upload-callback",
                             [callback(fp, key, name=key.rsplit("/", 1)[1]) for fp, key in files.items()])

    assert [(status, env["code"], env["data"]) for status, env in answers] == [
        (200, 0, {"object_key": key}) for key in files.values()]
    assert query(db_path, "SELECT COUNT(*) FROM dji_media_file") == [(200,)]
    rows = query(db_path, "SELECT fingerprint, object_key, revision FROM dji_media_file WHERE workspace_id = ?", WS)
    assert sorted(rows) == sorted((fp, key, 1) for fp, key in files.items())


@pytest.mark.gen_test(timeout=60)
async def test_failed_callbacks_never_overwrite_a_good_record(post_all, db_path):
    fingerprint = uuid.uuid4().hex.upper()
    only_failed = uuid.uuid4().hex.upper()
    good = f"media/{WS}/mission/DJI_0001.JPG"
    bad = f"media/{WS}/mission/partial-upload.JPG"
    bodies = []
    for i in range(30):  # interleaved: good, failed (two kinds of failure), good, ...
        bodies.append(callback(fingerprint, good))
        bodies.append(callback(fingerprint, bad, result=1 if i % 2 else -1, name="partial.JPG"))
        bodies.append(callback(only_failed, bad, result=2))
    answers = await post_all(f"{MEDIA}/upload-callback", bodies)

    for body, (status, env) in zip(bodies, answers):
        if body["result"] == 0:
            assert (status, env) == (200, {"code": 0, "message": "success", "data": {"object_key": good}})
        else:  # acknowledged, not recorded: HTTP 200 with a non-zero code
            assert (status, env["code"], env["data"]) == (200, -1, {"object_key": bad}), env
    rows = query(db_path, "SELECT fingerprint, object_key, name, revision, raw_json FROM dji_media_file")
    assert len(rows) == 1, rows  # the file whose uploads all failed has no record
    got_fingerprint, object_key, name, revision, raw = rows[0]
    assert (got_fingerprint, object_key, name, revision) == (fingerprint, good, "DJI_0001.JPG", 30)
    assert json.loads(raw)["result"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_group_callbacks_at_once_leave_one_row(post_all, db_path):
    # Each call's two counts differ by 100, so a row mixing two calls would show.
    sent = [{"file_group_id": "g-1", "file_count": 100 + i, "file_uploaded_count": i} for i in range(40)]
    answers = await post_all(f"{MEDIA}/group-upload-callback", sent)

    assert answers == [(200, {"code": 0, "message": "success", "data": {}})] * 40
    rows = query(db_path, "SELECT workspace_id, file_group_id, file_count, file_uploaded_count FROM dji_file_group")
    assert len(rows) == 1, rows
    workspace_id, group, count, uploaded = rows[0]
    assert (workspace_id, group) == (WS, "g-1")
    assert {"file_group_id": group, "file_count": count, "file_uploaded_count": uploaded} in sent
