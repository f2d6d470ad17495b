"""The media library: the store's indexes (version 7) are what its pages read, per engine."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import uuid

import pytest

from dji_media import PeeweeMediaStore
from dji_media.backends.peewee_schema import LIBRARY_INDEXES, library_index_name
from dji_media.testing.contracts import sample_file
from dji_media.values import FileQuery, MediaRecord
from support import ENGINES

UTC = _dt.timezone.utc
ROWS = 3000


async def _plan(engine: str, store: PeeweeMediaStore, sql: str, params) -> str:
    # On the store's own threads, as a unit of work: a connection opened here, on the test's
    # thread, would be one the store never closes.
    return await store.run_unit(_explain, engine, store.db, sql, params, transaction=False)


def _explain(engine: str, db, sql: str, params) -> str:
    if engine == "sqlite":
        rows = db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return "\n".join(str(row[-1]) for row in rows)
    if engine == "mysql":
        cursor = db.execute_sql("EXPLAIN " + sql, params)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        return "\n".join(f"key={row['key']} extra={row['Extra']}" for row in rows)
    return "\n".join(row[0] for row in db.execute_sql("EXPLAIN " + sql, params).fetchall())


def _capture_time_read_first(db, sql: str, params, position: int) -> bool:
    """SQLite: whether the program of ``sql`` reads created_time from the index entry (the
    index's column ``position``) before any column of the table's row. DeferredSeek (P1 the
    index's cursor, P3 the table's) postpones the row's lookup until a column of the row is
    needed: the capture time is tested on the entry and the rows it rejects are never read."""
    program = [(row[1], row[2], row[3], row[4]) for row in db.execute_sql("EXPLAIN " + sql, params).fetchall()]
    seeks = [(p1, p3) for op, p1, _p2, p3 in program if op == "DeferredSeek"]
    if not seeks:
        return False
    index_cursor, table_cursor = seeks[0]
    for op, p1, p2, _p3 in program:
        if op == "Column" and p1 == table_cursor:
            return False
        if op == "Column" and p1 == index_cursor and p2 == position:
            return True
    return False


async def _walk(store: PeeweeMediaStore, query: FileQuery, limit: int):
    """Every record ``query`` finds, page after page through the cursor."""
    found, after = [], None
    while True:
        page = await store.find_records(query, limit, after)
        found += page
        if len(page) < limit:
            return found
        after = (page[-1].created_at, page[-1].public_id)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.gen_test(timeout=120)
async def test_first_and_deep_pages_read_the_library_index(engine, fresh_tables):
    url, prefix = fresh_tables(engine)
    store = PeeweeMediaStore(url=url, table_prefix=prefix)
    try:
        base = _dt.datetime(2024, 1, 1, tzinfo=UTC)
        records = []
        for i in range(ROWS):
            at = base + _dt.timedelta(seconds=i)
            ws = f"ws-{i % 3}"
            # Eight aircraft (serial numbers), 40 missions, captured 20 minutes before the upload.
            file = sample_file(f"FP{i:08d}", object_key=f"media/{ws}/{i}.jpg", file_group_id=f"m{i % 40}",
                               sn=f"SN{i % 8}", created_time=at - _dt.timedelta(minutes=20))
            records.append(MediaRecord(ws, file, 1, at, at, public_id=str(uuid.uuid4())))
        for start in range(0, ROWS, 500):
            await store.insert_missing(records[start:start + 500])
        table = store.table_names["media_file"]
        analyze = {"postgresql": f'ANALYZE "{table}"', "mysql": f"ANALYZE TABLE `{table}`"}.get(engine, "ANALYZE")
        await store.run_unit(store.db.execute_sql, analyze, transaction=False)
        by_time = ("workspace_id", "created_at", "public_id", "created_time")
        by_mission = ("workspace_id", "file_group_id", "created_at", "public_id")
        by_sn = ("workspace_id", "sn", "created_at", "public_id", "created_time")
        assert set(LIBRARY_INDEXES) == {by_time, by_mission, by_sn}
        deep = records[ROWS // 2]
        # Five minutes of capture time: a page's worth of the workspace's records, fewer of one aircraft's.
        captured = {"captured_from": base + _dt.timedelta(seconds=600),
                    "captured_to": base + _dt.timedelta(seconds=900)}
        pages = [({}, by_time), ({"mission": "m7"}, by_mission), ({"sn": "SN3", **captured}, by_sn),
                 (captured, by_time)]
        for filters, columns in pages:
            wanted = library_index_name(table, columns)
            for newest_first in (True, False):
                query = FileQuery("ws-1", newest_first=newest_first, **filters)
                for after in (None, (deep.created_at, deep.public_id)):
                    sql, params = store._library.find(query, 50, after)
                    plan = await _plan(engine, store, sql, params)
                    assert wanted in plan, (filters, newest_first, after, plan)
                    assert "TEMP B-TREE" not in plan  # SQLite: no sort of its own, the index's order
                    if "captured_from" not in filters:
                        continue
                    # The capture time is tested on the index entry, before the row is read.
                    if engine == "sqlite":
                        assert await store.run_unit(_capture_time_read_first, store.db, sql, params,
                                                    columns.index("created_time"), transaction=False), \
                            (filters, newest_first, after)
                    elif engine == "postgresql":
                        assert any("Index Cond" in line and "created_time" in line for line in plan.splitlines()), plan
                    elif not newest_first:  # MariaDB 10.11 pushes no condition into a backward scan
                        assert "Using index condition" in plan, (filters, after, plan)
        # A mission's count reads the mission's index, and so does the missions list on SQLite
        # and MySQL (PostgreSQL reads the workspace's rows in one pass: a third of this table).
        mission_index = library_index_name(table, by_mission)
        sql, params = store._library.count(FileQuery("ws-1", mission="m7"))
        assert mission_index in await _plan(engine, store, sql, params)
        if engine != "postgresql":
            assert mission_index in await _plan(engine, store, store._library.missions(), ["ws-1"])
        # And the pages agree with the records, filtered or not.
        page = await store.find_records(FileQuery("ws-1"), 3, (deep.created_at, deep.public_id))
        assert [r.created_at for r in page] == [deep.created_at - _dt.timedelta(seconds=s) for s in (2, 5, 8)]
        wide = {"captured_from": base + _dt.timedelta(seconds=300), "captured_to": base + _dt.timedelta(seconds=1800)}
        for filters in ({"mission": "m7"}, {"sn": "SN3", **wide}, wide):
            for newest_first in (True, False):
                query = FileQuery("ws-1", newest_first=newest_first, **filters)
                expected = sorted((r for r in records if query.matches(r)), key=lambda r: (r.created_at, r.public_id),
                                  reverse=newest_first)
                assert len(expected) > 20
                found = await _walk(store, query, 20)
                assert [r.public_id for r in found] == [r.public_id for r in expected], filters
    finally:
        await store.close()


# ------------------------------------------------------------------ the use cases (in memory)

from dji_media import InMemoryMediaStore, InMemoryObjectStore  # noqa: E402
from dji_media.access import DELETE, READ, UPLOAD  # noqa: E402
from dji_media.catalogue import Catalogue, mission_state  # noqa: E402
from dji_media.errors import BadRequest, Forbidden, NotFound, StorageUnavailable  # noqa: E402
from dji_media.values import GroupReport, Identity, MissionSummary  # noqa: E402

READER = Identity("reader", ["ws"], [READ])
ADMIN = Identity("admin", ["ws"], [READ, DELETE])
UPLOADER = Identity("pilot", ["ws"], [UPLOAD])


async def _filled(count=7):
    media, objects = InMemoryMediaStore(), InMemoryObjectStore()
    base = _dt.datetime(2024, 1, 1, tzinfo=UTC)
    records = []
    for i in range(count):
        at = base + _dt.timedelta(minutes=i // 2)  # pairs share a time: the id breaks the tie
        file = sample_file(f"FP{i:04d}", object_key=f"media/ws/{i}.jpg", name=f"DJI_{i:04d}.JPG",
                           shoot_lat=None if i == 0 else 22.5)
        records.append(MediaRecord("ws", file, 1, at, at, public_id=str(uuid.uuid4())))
        objects.put(f"media/ws/{i}.jpg")
    await media.insert_missing(records)
    return media, objects, records


@pytest.mark.gen_test
async def test_find_pages_without_gaps_or_duplicates_and_checks_cursors():
    media, objects, records = await _filled()
    catalogue = Catalogue(media, objects)
    for newest in (True, False):
        query = FileQuery("ws", newest_first=newest)
        seen, cursor = [], None
        while True:
            page = await catalogue.find(READER, query, limit=2, cursor=cursor, count=True)
            assert page.total == len(records)
            seen += [r.public_id for r in page.files]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(seen) == sorted(r.public_id for r in records) and len(set(seen)) == len(seen)
        with pytest.raises(BadRequest):
            await catalogue.find(READER, FileQuery("ws", newest_first=not newest), limit=2,
                                 cursor=(await catalogue.find(READER, query, limit=2)).next_cursor)
    for bad in ("nonsense", "e30", "!!"):
        with pytest.raises(BadRequest):
            await catalogue.find(READER, FileQuery("ws"), cursor=bad)
    for limit in (0, 201):
        with pytest.raises(BadRequest):
            await catalogue.find(READER, FileQuery("ws"), limit=limit)


@pytest.mark.gen_test
async def test_scopes_and_workspaces():
    media, objects, records = await _filled(2)
    catalogue = Catalogue(media, objects)
    with pytest.raises(Forbidden):
        await catalogue.find(UPLOADER, FileQuery("ws"))
    with pytest.raises(Forbidden):
        await catalogue.delete(READER, "ws", records[0].public_id)
    with pytest.raises(Forbidden):
        await catalogue.get(Identity("other", ["ws-b"], [READ]), "ws", records[0].public_id)
    with pytest.raises(NotFound):  # another workspace's id is not found, not forbidden
        await catalogue.get(Identity("other", ["ws-b"], [READ]), "ws-b", records[0].public_id)
    assert (await catalogue.get(READER, "ws", records[0].public_id)) == records[0]


@pytest.mark.gen_test
async def test_download_checks_an_unconfirmed_record_and_delete_goes_object_first():
    media, objects, records = await _filled(3)
    catalogue = Catalogue(media, objects, download_seconds=600)
    got = await catalogue.download(READER, "ws", records[1].public_id)
    assert got.expires_in == 600 and "DJI_0001.JPG" in got.url and objects.calls_by_kind["stat"] == 1
    objects.remove(records[2].file.object_key)
    with pytest.raises(NotFound):
        await catalogue.download(READER, "ws", records[2].public_id)
    # Storage down: nothing changes.
    objects.unavailable = True
    with pytest.raises(StorageUnavailable):
        await catalogue.delete(ADMIN, "ws", records[1].public_id)
    objects.unavailable = False
    assert await media.get_by_public_id("ws", records[1].public_id) is not None
    assert await catalogue.delete(ADMIN, "ws", records[1].public_id) is True
    assert records[1].file.object_key not in objects.keys
    with pytest.raises(NotFound):
        await catalogue.get(READER, "ws", records[1].public_id)
    assert await catalogue.delete(ADMIN, "ws", records[1].public_id) is False


@pytest.mark.gen_test
async def test_missions_and_their_states():
    media, objects, records = await _filled(4)
    now = records[-1].created_at + _dt.timedelta(minutes=5)
    catalogue = Catalogue(media, objects, clock=lambda: now)
    mission = records[0].file.file_group_id
    page = await catalogue.missions(READER, "ws")
    assert [(m.file_group_id, state) for m, state in page.missions] == [(mission, "in_progress")]
    await media.save_group("ws", GroupReport(mission, 5, 5))
    assert (await catalogue.missions(READER, "ws")).missions[0][1] == "partial"
    await media.save_group("ws", GroupReport(mission, 4, 4))
    assert (await catalogue.missions(READER, "ws")).missions[0][1] == "complete"
    late = Catalogue(media, objects, clock=lambda: now + _dt.timedelta(days=1))
    quiet = MissionSummary("ws", "m", 0, 0, None, 2, now, now, now)
    assert mission_state(quiet, now, 60) == "in_progress"
    assert mission_state(quiet, now + _dt.timedelta(days=1), 60) == "unknown"
    assert mission_state(dataclasses.replace(quiet, expected_file_count=2), now, 60) == "complete"
    assert (await late.missions(READER, "ws")).missions[0][1] == "complete"


@pytest.mark.gen_test
async def test_exports():
    media, objects, records = await _filled(3)
    catalogue = Catalogue(media, objects)
    text = await catalogue.export_csv(READER, FileQuery("ws"))
    lines = text.splitlines()
    assert lines[0].startswith("id,name,path,object_key") and len(lines) == 4
    geo = await catalogue.export_geojson(READER, FileQuery("ws"))
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 2  # one has no position
    assert geo["features"][0]["geometry"] == {"type": "Point", "coordinates": [113.943194, 22.5]}


@pytest.mark.gen_test
async def test_numbered_pages_walk_the_keys():
    media, objects, records = await _filled(9)
    catalogue = Catalogue(media, objects)
    newest = sorted(records, key=lambda r: (r.created_at, r.public_id), reverse=True)
    for page_size in (1, 2, 4):
        seen = []
        for page in range(1, 12):
            found, total = await catalogue.numbered_page(READER, "ws", page, page_size)
            assert total == 9
            seen += found
        assert seen == newest
    for page, size in ((0, 10), (1, 0), (1, 201), (100_001, 1)):
        with pytest.raises(BadRequest):
            await catalogue.numbered_page(READER, "ws", page, size)
    with pytest.raises(Forbidden):
        await catalogue.numbered_page(UPLOADER, "ws", 1, 10)
