"""The media library: the store's indexes (version 6) are what its pages read, per engine."""
from __future__ import annotations

import datetime as _dt
import uuid

import pytest

from dji_media import PeeweeMediaStore
from dji_media.backends.peewee_schema import library_index_name
from dji_media.testing.contracts import sample_file
from dji_media.values import FileQuery, MediaRecord
from support import ENGINES

UTC = _dt.timezone.utc
ROWS = 3000


def _plan(engine: str, store: PeeweeMediaStore, sql: str, params) -> str:
    db = store.db
    if engine == "sqlite":
        rows = db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return "\n".join(str(row[-1]) for row in rows)
    if engine == "mysql":
        cursor = db.execute_sql("EXPLAIN " + sql, params)
        names = [d[0] for d in cursor.description]
        return "\n".join(f"key={dict(zip(names, row))['key']}" for row in cursor.fetchall())
    return "\n".join(row[0] for row in db.execute_sql("EXPLAIN " + sql, params).fetchall())


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
            file = sample_file(f"FP{i:08d}", object_key=f"media/{ws}/{i}.jpg", file_group_id=f"m{i % 40}")
            records.append(MediaRecord(ws, file, 1, at, at, public_id=str(uuid.uuid4())))
        for start in range(0, ROWS, 500):
            await store.insert_missing(records[start:start + 500])
        table = store.table_names["media_file"]
        if engine == "postgresql":
            store.db.execute_sql(f'ANALYZE "{table}"')
        elif engine == "mysql":
            store.db.execute_sql(f"ANALYZE TABLE `{table}`")
        else:
            store.db.execute_sql("ANALYZE")
        index = library_index_name(table, ("workspace_id", "created_at", "public_id"))
        deep = records[ROWS // 2]
        for newest_first in (True, False):
            query = FileQuery("ws-1", newest_first=newest_first)
            for after in (None, (deep.created_at, deep.public_id)):
                sql, params = store._library.find(query, 50, after)
                plan = _plan(engine, store, sql, params)
                assert index in plan, (newest_first, after, plan)
                assert "TEMP B-TREE" not in plan  # SQLite: no sort of its own, the index's order
        # The mission filter reads the (workspace_id, file_group_id) index.
        sql, params = store._library.count(FileQuery("ws-1", mission="m7"))
        assert library_index_name(table, ("workspace_id", "file_group_id")) in _plan(engine, store, sql, params)
        # And the pages agree with the records.
        page = await store.find_records(FileQuery("ws-1"), 3, (deep.created_at, deep.public_id))
        assert [r.created_at for r in page] == [deep.created_at - _dt.timedelta(seconds=s) for s in (2, 5, 8)]
    finally:
        await store.close()
