"""`dji-media import` from DJI's demo server (a real MariaDB/MySQL database) and from a SQLite
``media_files`` table, into real stores: SQLite, and PostgreSQL/MariaDB when their URLs are set.

The DJI source is built in a scratch database of its own (``DJI_MEDIA_TEST_MYSQL_URL``'s server,
dropped afterwards); tests that need it skip, naming the variable, when it is unset.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import decimal
import json
import os
import sqlite3
import threading
import uuid
from urllib.parse import unquote, urlparse

import peewee
import pytest

from dji_media import BadRequest, InMemoryMediaStore, MediaFile, MediaRecord, PeeweeMediaStore
from dji_media.backends.peewee_schema import open_database
from dji_media.importer import Importer, ImportFailed, open_source
from dji_media.testing.contracts import sample_file
from support import run_cli, write_config

UTC = _dt.timezone.utc
MYSQL = "DJI_MEDIA_TEST_MYSQL_URL"
T1 = 1661930176123  # 2022-08-31T07:16:16.123Z, as DJI's demo stores it (epoch milliseconds)


def at_ms(ms: int) -> _dt.datetime:
    return _dt.datetime(1970, 1, 1, tzinfo=UTC) + _dt.timedelta(milliseconds=ms)


# ------------------------------------------------------------------------ DJI's demo (MySQL)

# The demo's columns (its sql/cloud_sample.sql), with its defaults. object_key is wider than the
# demo's so that an overlong key can be stored, and is_original, fingerprint and the times are
# nullable to hold the edge cases.
DJI_SCHEMA = """
CREATE TABLE media_file (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  file_id VARCHAR(45) NOT NULL UNIQUE,
  file_name VARCHAR(100) NOT NULL,
  file_path VARCHAR(1000) NOT NULL DEFAULT '',
  workspace_id VARCHAR(64) NOT NULL,
  fingerprint VARCHAR(100) NULL,
  tinny_fingerprint VARCHAR(100) NULL,
  object_key VARCHAR(2000) NOT NULL,
  sub_file_type INT NULL,
  is_original TINYINT(1) NULL,
  drone VARCHAR(32) NOT NULL DEFAULT 'undefined',
  payload VARCHAR(32) NOT NULL DEFAULT 'undefined',
  job_id VARCHAR(64) NULL DEFAULT '',
  create_time BIGINT NULL,
  update_time BIGINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci
"""


def dji(fingerprint, **changes):
    """A row as the demo writes it from an upload-callback: drone is the aircraft's serial number,
    payload the camera's name from the demo's device dictionary, job_id the file group."""
    row = dict(file_name="DJI_0001.JPG", file_path="DJI_202208311455_008_Waypoint1", workspace_id="ws-a",
               fingerprint=fingerprint, tinny_fingerprint=f"{fingerprint}_tiny",
               object_key=f"media/ws-a/{fingerprint}.JPG", sub_file_type=0, is_original=1,
               drone="1581F5BKD225D00BTG2N", payload="M30 Camera", job_id="9b6a1e0c-job-1", create_time=T1,
               update_time=T1 + 5000)
    row.update(changes)
    return row


# In id order (1, 2, ...); the comment says what the import must do with the row.
DJI_ROWS = [
    dji("FULL"),                                                          # 1 imported
    dji("DUP", update_time=T1, object_key="media/ws-a/old.jpg"),          # 2 duplicate
    dji("DUP", update_time=T1 + 2000, object_key="media/ws-a/new.jpg"),   # 3 kept: latest valid
    dji("DUP", update_time=T1 + 9000, object_key="/abs/x.jpg"),           # 4 rejected, though latest
    dji("DUP", update_time=T1 + 1000),                                    # 5 duplicate
    dji("TIE", object_key="media/ws-a/tie-first.jpg"),                    # 6 duplicate (same time)
    dji("TIE", object_key="media/ws-a/tie-second.jpg"),                   # 7 kept: read last
    dji("NOTINY", tinny_fingerprint="", is_original=None, drone="undefined", payload="undefined", job_id="",
        file_path="", sub_file_type=None),                                # 8 imported, the demo's defaults: Nones
    dji(""),                                                              # 9 imported: a dock's, by key
    dji(None, object_key="media/ws-a/none.jpg"),                          # 10 imported: a dock's, by key
    dji("BADWS", workspace_id="ws.a"),                                    # 11 rejected
    dji("UNI", file_name="航拍 \U0001F681.JPG", file_path="任务/航线 1", payload="M30T Camera", job_id=None,
        object_key="media/ws-a/航拍 \U0001F681.JPG"),                      # 12 imported
    dji("LONGKEY", object_key="media/ws-a/" + "k" * 1100),                # 13 rejected
    dji("ZERO", create_time=0, update_time=None),                         # 14 imported, times unknown
    dji("NOUPDATE", update_time=None),                                    # 15 imported
    dji("abc"),                                                           # 16 imported
    dji("ABC"),                                                           # 17 imported: keys are exact
    dji("FULL", workspace_id="ws-b", object_key="media/ws-b/FULL.JPG"),   # 18 imported: other workspace
    dji("F" * 65),                                                        # 19 rejected
    dji("NEGATIVE", create_time=-5),                                      # 20 rejected
    dji("PRESENT"),                                                       # 21 already in the target
    dji("NEGSUB", sub_file_type=-1),                                      # 22 rejected
    dji("abc "),                                                          # 23 imported: trailing space
    dji("NUL", file_name="a\x00b.jpg"),                                   # 24 rejected
    # 25 imported: a dock's file as the demo stores it (its file_upload_callback carries no
    # fingerprint and no tiny fingerprint; drone is ext.sn, job_id ext.flight_id).
    dji(None, tinny_fingerprint=None, file_name="DJI_20240411163430_0001_V.jpeg",
        file_path="DJI_202404111632_005_ac793856-3ad4-4b4c-9a54-8ea1f6c4d2b1",
        object_key="media/ws-a/DJI_202404111632_005_ac793856-3ad4-4b4c-9a54-8ea1f6c4d2b1/"
                   "DJI_20240411163430_0001_V.jpeg",
        drone="1581F5BKD223Q00A", payload="M3TD Camera", job_id="ac793856-3ad4-4b4c-9a54-8ea1f6c4d2b1"),
    dji("", object_key="/abs/dock.jpeg"),                                 # 26 rejected: a dock's, bad key
]

DJI_REJECTED = {
    "object_key must be a relative key without control characters": ["id=4", "id=26"],
    "workspace_id must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'": ["id=11"],
    "object_key is longer than 1024 characters": ["id=13"],
    "fingerprint is longer than 64 characters": ["id=19"],
    "create_time is before 1970": ["id=20"],
    "sub_file_type must be between 0 and 2147483647": ["id=22"],
    "file_name contains a NUL character": ["id=24"],
}
# Source ids of the rows that become records (the key is the row's workspace and fingerprint,
# or for a dock's file, without a fingerprint, its workspace and object key: row_key).
DJI_IMPORTED = [1, 3, 7, 8, 9, 10, 12, 14, 15, 16, 17, 18, 23, 25]


def row_key(row):
    """A source row's key in the target: (workspace, fingerprint), or (workspace, object key)
    for a dock's file (no fingerprint)."""
    return (row["workspace_id"], row["fingerprint"] or row["object_key"])


def dji_expected(row_id: int):
    """The workspace and file row ``row_id`` must become, written out field by field."""
    row = DJI_ROWS[row_id - 1]

    def text(column):  # '' and the demo's DEFAULT 'undefined' mean "not known"
        return None if row[column] in ("", "undefined") else row[column]

    file = MediaFile(
        fingerprint=row["fingerprint"] or None, object_key=row["object_key"],  # a dock's: none
        tiny_fingerprint=text("tinny_fingerprint"), name=text("file_name"), path=text("file_path"),
        sub_file_type=row["sub_file_type"],
        sn=text("drone"), payload_name=text("payload"),  # no model keys: the demo keeps none
        is_original=None if row["is_original"] is None else bool(row["is_original"]),
        job_id=text("job_id"), file_group_id=text("job_id"),
    )
    return row["workspace_id"], file, row


def check_dji_record(record: MediaRecord, row_id: int, started, finished) -> None:
    workspace_id, file, row = dji_expected(row_id)
    assert record.workspace_id == workspace_id
    raw = json.loads(record.file.raw_json)
    assert record.file == dataclasses.replace(file, raw_json=record.file.raw_json)
    source_row = raw["imported_from"]["row"]
    assert raw["imported_from"]["source"] == "dji-demo" and raw["imported_from"]["table"] == "media_file"
    assert source_row["id"] == row_id and source_row["file_id"] == f"file-{row_id}"
    assert source_row["fingerprint"] == row["fingerprint"]
    assert source_row["create_time"] == row["create_time"] and source_row["file_name"] == row["file_name"]
    # The source's own spelling stays in raw_json ('undefined' included).
    assert [source_row[c] for c in ("drone", "payload", "job_id")] == [row[c] for c in ("drone", "payload", "job_id")]
    assert record.revision == 1 and record.verified_at is None
    if row_id == 14:  # both times unknown: when the import started
        assert started <= record.created_at <= finished and record.updated_at == record.created_at
    elif row_id == 15:  # no update time: the creation time
        assert record.created_at == record.updated_at == at_ms(row["create_time"])
    else:
        assert record.created_at == at_ms(row["create_time"])
        assert record.updated_at == at_ms(row["update_time"])
        assert record.created_at.microsecond == (row["create_time"] % 1000) * 1000


def mysql_server():
    url = os.environ.get(MYSQL)
    if not url:
        pytest.skip(f"DJI demo source: set {MYSQL} to a MySQL/MariaDB URL to run these tests")
    return urlparse(url)


@pytest.fixture
def dji_source_url():
    """DJI's schema with DJI_ROWS in a scratch database; its URL. Dropped afterwards."""
    import pymysql

    server = mysql_server()
    name = f"dji_import_{uuid.uuid4().hex[:10]}"
    connection = pymysql.connect(host=server.hostname, port=server.port or 3306,
                                 user=unquote(server.username or ""), password=unquote(server.password or ""),
                                 charset="utf8mb4", autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            cursor.execute(f"USE `{name}`")
            cursor.execute(DJI_SCHEMA)
            columns = list(DJI_ROWS[0])
            for number, row in enumerate(DJI_ROWS, 1):
                cursor.execute(
                    f"INSERT INTO media_file (file_id, {', '.join(columns)}) "
                    f"VALUES (%s, {', '.join(['%s'] * len(columns))})",
                    [f"file-{number}", *(row[c] for c in columns)])
        yield server._replace(path=f"/{name}").geturl()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


# ----------------------------------------------------------------------- a SQLite server

SQLITE_SCHEMA = """
CREATE TABLE media_files (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  workspace_id TEXT NOT NULL,
  fingerprint TEXT,
  tiny_fingerprint TEXT,
  object_key TEXT,
  file_name TEXT,
  file_path TEXT,
  created_at DATETIME
)
"""
NOON = _dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def lite(fingerprint, created_at, **changes):
    row = dict(workspace_id="ws-a", fingerprint=fingerprint, tiny_fingerprint=f"{fingerprint}_t",
               object_key=f"media/ws-a/{fingerprint}.jpg", file_name=f"{fingerprint}.jpg", file_path="p",
               created_at=created_at)
    row.update(changes)
    return row


# (row, what the import must make of it: a created_at, "started", "duplicate" or a reason)
SQLITE_ROWS = [
    (lite("ISOZ", "2024-05-01T12:00:00Z"), NOON),
    (lite("PLAIN", "2024-05-01 12:00:00"), NOON),  # CURRENT_TIMESTAMP's form: UTC
    (lite("OFFSET", "2024-05-01T20:00:00.250+08:00"), NOON + _dt.timedelta(milliseconds=250)),
    (lite("EPOCH", 1714564800), NOON),
    (lite("EPOCHF", 1714564800.5), NOON + _dt.timedelta(milliseconds=500)),
    (lite("NULLTIME", None), "started"),
    (lite("GARBAGE", "yesterday"), "created_at is not a time (ISO 8601 text or epoch seconds)"),
    (lite("MILLIS", 1714564800000), "created_at is after the year 9999 (epoch seconds expected)"),
    (lite("D", "2024-01-01", object_key="media/ws-a/d-january.jpg"), "duplicate"),
    (lite("D", "2024-02-01", object_key="media/ws-a/d-february.jpg"), _dt.datetime(2024, 2, 1, tzinfo=UTC)),
    (lite("D", None, object_key="media/ws-a/d-unknown.jpg"), "duplicate"),  # unknown: oldest
    (lite("BADUTF8", NOON.isoformat()), "file_name is not valid UTF-8"),
    (lite("NULPATH", NOON.isoformat(), file_path="a\x00b"), "file_path contains a NUL character"),
    (lite("NOKEY", NOON.isoformat(), object_key=None), "object_key is required"),
    (lite("UNI", NOON.isoformat(), file_name="航拍 \U0001F681.JPG"), NOON),
    (lite("EMPTY", NOON.isoformat(), tiny_fingerprint=None, file_name="", workspace_id="ws-b",
          object_key="media/ws-b/EMPTY.jpg"), NOON),
]


@pytest.fixture
def sqlite_source(tmp_path):
    path = tmp_path / "old-server.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=wal")  # as a server would run it
        db.execute(SQLITE_SCHEMA)
        for row, _ in SQLITE_ROWS:
            db.execute("INSERT INTO media_files (workspace_id, fingerprint, tiny_fingerprint, object_key, "
                       "file_name, file_path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", list(row.values()))
        # Bytes that are not UTF-8, as an old server with a bug could have written them.
        db.execute("UPDATE media_files SET file_name = CAST(X'ff41' AS TEXT) WHERE fingerprint = 'BADUTF8'")
    db.close()
    return path


# --------------------------------------------------------------------------------- helpers

class Target:
    """A peewee store on tables of the test's own, and a connection of the test's own to them."""

    def __init__(self, url: str, prefix: str) -> None:
        self.store = PeeweeMediaStore(url=url, table_prefix=prefix)
        self.db = open_database(url, max_connections=1)
        self.table = f"{self.db.quote[0]}{prefix}media_file{self.db.quote[-1]}"

    def keys(self):
        return self.db.execute_sql(f"SELECT workspace_id, fingerprint, object_key FROM {self.table}").fetchall()

    async def close(self) -> None:
        await self.store.close()
        getattr(self.db, "close_all", self.db.close)()  # pooled (servers) or not (SQLite)


async def everything(target: Target):
    """Every record of the target, by key: the keys from the test's own connection, the records
    as the store reads them (a dock's record, without a fingerprint, by its object key)."""
    found = {}
    for workspace_id, fingerprint, object_key in target.keys():
        if fingerprint is not None:
            found[(workspace_id, fingerprint)] = await target.store.get(workspace_id, fingerprint)
        else:
            found[(workspace_id, object_key)] = await by_object_key(target.store, workspace_id, object_key)
    return found


async def by_object_key(store, workspace_id, object_key):
    held = [r for r in await store.records_by_object_key(workspace_id, None, None, 10_000)
            if r.file.object_key == object_key]
    assert len(held) <= 1
    return held[0] if held else None


async def stored_record(store, row):
    """The record a source row became (by fingerprint, or for a dock's file by object key)."""
    if row["fingerprint"]:
        return await store.get(row["workspace_id"], row["fingerprint"])
    return await by_object_key(store, row["workspace_id"], row["object_key"])


async def import_once(store, url, **options):
    source = open_source(url)
    importer = Importer(store, source, batch_size=4, **options)  # several batches of each kind
    try:
        return await importer.run()
    finally:
        importer.close()
        source.close()


def device_record(workspace_id: str, fingerprint: str) -> MediaFile:
    """A file as a device's upload-callback records it."""
    return MediaFile(fingerprint=fingerprint, object_key=f"media/{workspace_id}/device.jpg",
                     name="from-the-device.jpg", raw_json=json.dumps({"fingerprint": fingerprint}))


def check_dji_summary(summary, *, imported: int, present: int) -> None:
    assert summary.read == len(DJI_ROWS)
    assert (summary.imported, summary.present, summary.duplicates) == (imported, present, 3)
    assert {reason: list(ids) for reason, ids in summary.rejected_examples.items()} == DJI_REJECTED
    assert summary.rejected == {reason: len(ids) for reason, ids in DJI_REJECTED.items()}
    assert sorted(summary.duplicate_examples) == ["id=2, id=5 (kept id=3)", "id=6 (kept id=7)"]


async def dji_import_round_trip(target: Target, url) -> None:
    """Dry run, import, field by field check, and a second run that changes nothing."""
    store = target.store
    await store.upsert("ws-a", device_record("ws-a", "PRESENT"))
    before = await everything(target)
    dry = await import_once(store, url, dry_run=True)
    assert dry.dry_run
    check_dji_summary(dry, imported=len(DJI_IMPORTED), present=1)
    assert await everything(target) == before  # the dry run wrote nothing

    started = _dt.datetime.now(UTC)
    summary = await import_once(store, url)
    finished = _dt.datetime.now(UTC)
    check_dji_summary(summary, imported=len(DJI_IMPORTED), present=1)
    stored = await everything(target)
    assert stored[("ws-a", "PRESENT")] == before[("ws-a", "PRESENT")]  # the device's record, untouched
    assert len(stored) == len(DJI_IMPORTED) + 1
    for row_id in DJI_IMPORTED:
        row = DJI_ROWS[row_id - 1]
        check_dji_record(stored[row_key(row)], row_id, started, finished)

    again = await import_once(store, url)
    check_dji_summary(again, imported=0, present=len(DJI_IMPORTED) + 1)
    assert await everything(target) == stored  # same revisions, times and values
    await check_device_uploads_again(store)


async def check_device_uploads_again(store) -> None:
    """A device uploading an imported file again: its callback carries no job id and no payload
    name, and the record keeps the imported ones."""
    imported = await store.get("ws-a", "FULL")
    again = await store.upsert("ws-a", dataclasses.replace(device_record("ws-a", "FULL"), sn=imported.file.sn))
    assert again.revision == 2 and again.file.name == "from-the-device.jpg"
    assert (again.file.job_id, again.file.payload_name) == ("9b6a1e0c-job-1", "M30 Camera")


# ----------------------------------------------------------------------------------- tests

@pytest.mark.gen_test(timeout=60)
async def test_dji_demo_into_sqlite(dji_source_url, fresh_tables):
    target = Target(*fresh_tables("sqlite"))
    try:
        await dji_import_round_trip(target, dji_source_url)
    finally:
        await target.close()


@pytest.mark.gen_test(timeout=60)
async def test_dji_demo_into_memory(dji_source_url):
    store = InMemoryMediaStore()
    started = _dt.datetime.now(UTC)
    summary = await import_once(store, dji_source_url)
    finished = _dt.datetime.now(UTC)
    check_dji_summary(summary, imported=len(DJI_IMPORTED) + 1, present=0)  # PRESENT is not there: imported
    for row_id in DJI_IMPORTED:
        row = DJI_ROWS[row_id - 1]
        check_dji_record(await stored_record(store, row), row_id, started, finished)
    await check_device_uploads_again(store)


@pytest.mark.gen_test(timeout=60)
async def test_dji_demo_into_database_servers(dji_source_url, engine, fresh_tables):
    """Into PostgreSQL and MariaDB (each skips, naming its variable, when unset)."""
    target = Target(*fresh_tables(engine))
    try:
        await dji_import_round_trip(target, dji_source_url)
    finally:
        await target.close()


@pytest.mark.gen_test
async def test_sqlite_server_into_sqlite(sqlite_source, fresh_tables):
    target = Target(*fresh_tables("sqlite"))
    try:
        started = _dt.datetime.now(UTC)
        summary = await import_once(target.store, f"sqlite:///{sqlite_source}")
        finished = _dt.datetime.now(UTC)
        stored = await everything(target)
        again = await import_once(target.store, f"sqlite:///{sqlite_source}")
        assert await everything(target) == stored
    finally:
        await target.close()
    kept = [(row, outcome) for row, outcome in SQLITE_ROWS
            if isinstance(outcome, _dt.datetime) or outcome == "started"]
    reasons = {}
    for number, (_, outcome) in enumerate(SQLITE_ROWS, 1):
        if isinstance(outcome, str) and outcome not in ("started", "duplicate"):
            reasons.setdefault(outcome, []).append(f"rowid={number}")
    assert {k: list(v) for k, v in summary.rejected_examples.items()} == reasons
    assert (summary.read, summary.imported, summary.duplicates, summary.present) == (16, len(kept), 2, 0)
    assert summary.duplicate_examples == ("rowid=9, rowid=11 (kept rowid=10)",)
    assert (again.imported, again.present, again.duplicates, again.rejected) == (
        0, len(kept), 2, summary.rejected)
    assert len(stored) == len(kept)
    for row, outcome in kept:
        record = stored[(row["workspace_id"], row["fingerprint"])]
        assert record.file == MediaFile(
            fingerprint=row["fingerprint"], object_key=row["object_key"], tiny_fingerprint=row["tiny_fingerprint"],
            name=row["file_name"] or None, path=row["file_path"], raw_json=record.file.raw_json)
        raw = json.loads(record.file.raw_json)["imported_from"]
        assert (raw["source"], raw["table"], raw["row"]["created_at"]) == ("sqlite", "media_files", row["created_at"])
        assert raw["row"]["rowid"] == SQLITE_ROWS.index((row, outcome)) + 1
        if outcome == "started":
            assert started <= record.created_at <= finished
        else:
            assert record.created_at == outcome
        assert record.updated_at == record.created_at and record.revision == 1


@pytest.mark.gen_test
async def test_workspace_filter_and_memory_target(sqlite_source):
    store = InMemoryMediaStore()
    summary = await import_once(store, f"sqlite:///{sqlite_source}", workspaces=["ws-b"])
    assert (summary.read, summary.imported, sum(summary.rejected.values())) == (1, 1, 0)
    assert (await store.get("ws-b", "EMPTY")).file.name is None
    assert await store.get("ws-a", "ISOZ") is None
    # "WS-B" is another workspace: the filter is exact, like every key.
    assert (await import_once(store, f"sqlite:///{sqlite_source}", workspaces=["WS-B"])).read == 0


@pytest.mark.gen_test
async def test_target_failure_stops_the_run_with_what_was_done(sqlite_source, tmp_path):
    store = PeeweeMediaStore(url=f"sqlite:///{tmp_path}")  # a directory: cannot be opened
    try:
        with pytest.raises(ImportFailed) as caught:
            await import_once(store, f"sqlite:///{sqlite_source}")
    finally:
        await store.close()
    assert caught.value.message.startswith("the target store failed: the media database is unavailable")
    assert caught.value.summary.imported == 0 and caught.value.summary.read > 0


@pytest.mark.gen_test
async def test_insert_missing_refuses_what_cannot_be_stored(sqlite_url):
    store = PeeweeMediaStore(url=sqlite_url)
    now = _dt.datetime.now(UTC)

    def record(fingerprint, **changes):
        values = {"fingerprint": fingerprint, "object_key": "media/ws/a.jpg", **changes}
        return MediaRecord("ws", MediaFile(**values), 1, now, now)

    try:
        with pytest.raises(BadRequest):  # before anything is written
            await store.insert_missing([record("OK"), record("NUL", name="a\x00b")])
        # A value only the database refuses: its error, not "already present", and nothing kept.
        with pytest.raises(peewee.IntegrityError):
            await store.insert_missing([record("OK"), record("NOKEY", object_key=None)])
        assert await store.get("ws", "OK") is None
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_insert_missing_while_another_writer_races(engine, fresh_tables):
    """Another connection inserts a key after insert_missing has looked for it and before its
    INSERT: that writer's row wins, is reported not inserted, and the rest goes in."""
    target = Target(*fresh_tables(engine))
    store = target.store
    await store.upsert("ws", sample_file("Y"))
    now = _dt.datetime.now(UTC)
    inserted, release = threading.Event(), threading.Event()

    def other_writer():
        db, mark = target.db, target.db.param
        try:
            with db.atomic():
                db.execute_sql(f"INSERT INTO {target.table} (workspace_id, fingerprint, object_key, raw_json, "
                               f"name, revision, created_at, updated_at) VALUES ({', '.join([mark] * 8)})",
                               ("ws", "K", "media/ws/racer.jpg", "{}", "racer", 1, now.replace(tzinfo=None),
                                now.replace(tzinfo=None)))
                inserted.set()
                release.wait(10)  # committed only once insert_missing waits for this row
        finally:
            db.close()  # this thread's connection back to the pool

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        inserted.wait(10)
        # Y (committed) fails the first INSERT at once; K (not yet committed) is not seen by the
        # SELECT that follows, so the second INSERT waits for the other writer.
        task = asyncio.ensure_future(store.insert_missing(
            [MediaRecord("ws", sample_file(fp), 1, now, now) for fp in ("Y", "K", "Z")]))
        await asyncio.sleep(0.5)
        release.set()
        assert await task == [False, False, True]
        assert (await store.get("ws", "K")).file.name == "racer"
        assert (await store.get("ws", "Y")).revision == 1
        assert (await store.get("ws", "Z")).file == sample_file("Z")
    finally:
        release.set()
        thread.join(10)
        await target.close()


def test_cli_end_to_end(sqlite_source, tmp_path):
    config = write_config(tmp_path, s3_endpoint="http://127.0.0.1:1")  # storage is not needed
    source = f"sqlite:///{sqlite_source}"
    dry = run_cli("import", "--config", config, "--source", source, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "(dry run: nothing was written)" in dry.stdout and "would import: 9" in dry.stdout.splitlines()
    assert dry.stderr == ""  # no progress bar: stderr is not a terminal
    first = run_cli("import", "--config", config, "--source", source)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert "read:         16 rows" in lines and "imported:     9" in lines
    assert "  1 x object_key is required: rowid=14" in lines
    assert lines[-1] == ("completed with 5 rejected row(s), left out of the target; fix them in the source and "
                         "run again to add them (exit status 0)")
    second = run_cli("import", "--config", config, "--source", source, "-q")
    assert second.returncode == 0 and "imported:     0" in second.stdout
    assert "skipped:      9 already in the target (left as they are)" in second.stdout


def test_cli_dji_demo(dji_source_url, tmp_path):
    config = write_config(tmp_path, s3_endpoint="http://127.0.0.1:1")
    result = run_cli("import", "--config", config, "--source", dji_source_url, "--workspace", "ws-b",
                     "--workspace", "ws-a")
    assert result.returncode == 0, result.stderr
    assert f"imported:     {len(DJI_IMPORTED) + 1}" in result.stdout  # PRESENT is not in this target
    assert "skipped:      3 duplicate in the source" in result.stdout
    assert "  1 x create_time is before 1970: id=20" in result.stdout


def test_cli_failures(sqlite_source, tmp_path):
    config = write_config(tmp_path, s3_endpoint="http://127.0.0.1:1")
    missing = run_cli("import", "--config", config, "--source", f"sqlite:///{tmp_path}/nothing.sqlite3")
    assert missing.returncode == 1 and "no such file" in missing.stderr
    assert not (tmp_path / "nothing.sqlite3").exists()
    table = run_cli("import", "--config", config, "--source", f"sqlite:///{sqlite_source}",
                    "--source-table", "media_file")
    assert table.returncode == 1 and "no such table" in table.stderr
    scheme = run_cli("import", "--config", config, "--source", "postgresql://x/y")
    assert scheme.returncode == 1 and "must start with mysql://" in scheme.stderr
    refused = run_cli("import", "--config", config, "--source", "mysql://reader:s3cret@127.0.0.1:1/cloud_sample")
    assert refused.returncode == 1
    assert "cannot read DJI demo database mysql://127.0.0.1:1/cloud_sample table media_file" in refused.stderr
    assert "s3cret" not in refused.stderr + refused.stdout
    workspace = run_cli("import", "--config", config, "--source", f"sqlite:///{sqlite_source}",
                        "--workspace", "a/b")
    assert workspace.returncode == 2 and "--workspace 'a/b'" in workspace.stderr
    broken = write_config(tmp_path, s3_endpoint="http://127.0.0.1:1",
                          media_store={"backend": "sqlite", "options": {"url": f"sqlite:///{tmp_path}"}})
    target = run_cli("import", "--config", broken, "--source", f"sqlite:///{sqlite_source}")
    assert target.returncode == 1
    assert "import stopped: the target store failed" in target.stderr
    assert "running the same import again is safe" in target.stderr
    assert "read:" in target.stdout  # what was done before the failure
    for result in (missing, table, scheme, refused, workspace, target):
        assert "Traceback" not in result.stderr


def test_rows_become_files_through_the_core_rules():
    """Conversions a database column needs, and reasons in the source's terms."""
    from dji_media.errors import RowRejected
    from dji_media.importer.records import media_file

    columns = {"fingerprint": "fingerprint", "object_key": "object_key", "name": "file_name", "sub_file_type": "sub",
               "is_original": "orig"}
    base = {"fingerprint": "F1", "object_key": "media/ws/a.jpg"}
    file = media_file({**base, "sub": decimal.Decimal(1), "orig": 1, "file_name": ""}, columns)
    assert (file.sub_file_type, file.is_original, file.name) == (1, True, None)
    assert media_file({**base, "sub": " 2 ", "orig": "false"}, columns).sub_file_type == 2
    assert media_file({**base, "orig": 7}, columns).is_original is None  # unknown, not refused
    for row, reason in [
        ({**base, "file_name": "n" * 256}, "file_name is longer than 255 characters"),
        ({**base, "file_name": 5}, "file_name must be a string"),
        ({**base, "sub": "two"}, "sub must be an integer"),
        ({**base, "sub": True}, "sub must be an integer"),
        ({**base, "object_key": "a//b"}, "object_key must not contain empty, '.' or '..' segments"),
        ({**base, "object_key": "媒" * 400}, "object_key is longer than 1024 bytes (UTF-8)"),
    ]:
        with pytest.raises(RowRejected) as caught:
            media_file(row, columns)
        assert caught.value.reason == reason


def test_a_row_without_a_fingerprint_is_a_docks_file_where_the_source_says_so():
    from dji_media.errors import RowRejected
    from dji_media.importer.records import media_file

    columns = {"fingerprint": "fingerprint", "object_key": "object_key", "name": "file_name"}
    for empty in (None, "", "undefined"):
        row = {"fingerprint": empty, "object_key": "media/ws/dock/a.jpeg", "file_name": "a.jpeg"}
        file = media_file(row, columns, none_text=("", "undefined"), keyed_by_object_key=True)
        assert (file.fingerprint, file.object_key, file.name) == (None, "media/ws/dock/a.jpeg", "a.jpeg")
        if empty != "undefined":  # (which is a fingerprint's text, where "none" is not meant)
            with pytest.raises(RowRejected):  # a source that has no docks' rows still requires one
                media_file(row, columns, none_text=("", "undefined"))
    with pytest.raises(RowRejected) as caught:  # every other rule still holds
        media_file({"fingerprint": "", "object_key": "media/ws/a.jpeg", "file_name": "n" * 256}, columns,
                   keyed_by_object_key=True)
    assert caught.value.reason == "file_name is longer than 255 characters"
    with pytest.raises(RowRejected) as caught:
        media_file({"fingerprint": None, "object_key": None}, columns, keyed_by_object_key=True)
    assert caught.value.reason == "object_key is required"
