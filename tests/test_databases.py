"""PeeweeMediaStore on real PostgreSQL and MySQL/MariaDB servers.

The servers are not started by the suite: their URLs come from ``DJI_MEDIA_TEST_POSTGRES_URL``
and ``DJI_MEDIA_TEST_MYSQL_URL`` (``.ci/run`` sets both); a test whose variable is unset skips
and says which one to set. Each test uses tables of its own (a random ``table_prefix``) and drops
them afterwards, so parallel and repeated runs against one database do not meet.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import peewee
import pytest

from dji_media import BadRequest, DatabaseUnavailable, PeeweeMediaStore
from dji_media.testing.contracts import MediaStoreContract, sample_file
from dji_media.values import GroupReport, MediaFile

# Per engine: this connection's server-side id, a query that runs long enough to be killed
# midway, and how to kill another connection.
SQL = {
    "postgresql": ("SELECT pg_backend_pid()", "SELECT pg_sleep(30)", "SELECT pg_terminate_backend(%s)"),
    "mysql": ("SELECT CONNECTION_ID()", "SELECT SLEEP(30)", "KILL %s"),
}
# Per engine: the server's own list of the connections to one database, by the same ids.
CONNECTIONS_TO = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = %s",
    "mysql": "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s",
}


async def connection_id(store, engine):
    """The server-side id of the connection the store's next unit of work runs on."""
    return await store.run_unit(lambda: store.db.execute_sql(SQL[engine][0]).fetchone()[0], transaction=False)


def connections_to(admin, engine, database):
    """The ids of the connections to ``database``, as the server lists them."""
    return {row[0] for row in admin.execute_sql(CONNECTIONS_TO[engine], (database,)).fetchall()}


@pytest.fixture
def own_database(engine, database_url, admin):
    """``(url, name)``: a database of the test's own on the server, so that the server's list
    of the connections to it holds the store's and no one else's (the admin connection, other
    tests and other runs on the same server use other databases). Dropped afterwards. The URL's
    user must be allowed to create databases, as the suite's default users (postgres, root) are."""
    name = f"dji_t{uuid.uuid4().hex[:10]}"
    admin.execute_sql(f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}")), name
    deadline = time.monotonic() + 10
    while True:
        if engine == "postgresql":  # which refuses to drop a database that has connections
            admin.execute_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                              (name,))
        try:
            admin.execute_sql(f"DROP DATABASE IF EXISTS {name}")
            return
        except peewee.DatabaseError:  # a terminated backend that has not exited yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class TestDatabaseMediaStores(MediaStoreContract):
    @pytest.fixture
    def media_store(self, make_store):
        return make_store()

    @pytest.fixture
    def second_media_store(self, make_store, media_store):
        # Its own pool of connections to the same tables: leases must hold across processes.
        return make_store(share=media_store)

    @pytest.fixture
    def unreachable_media_store(self, engine, io_loop):
        # The same engine on port 1 of loopback: nothing listens, the connection is refused.
        url = {"postgresql": "postgresql://postgres@127.0.0.1:1/test",
               "mysql": "mysql://root@127.0.0.1:1/test"}[engine]
        store = PeeweeMediaStore(url=url)
        yield store
        io_loop.run_sync(store.close)


@pytest.mark.gen_test
async def test_stores_with_different_prefixes_share_a_database(make_store):
    # Index names are per schema on PostgreSQL: each table must get its own unique index.
    first, second = make_store(), make_store()
    for store in (first, second):
        await store.upsert("ws", sample_file("F1"))
        assert (await store.upsert("ws", sample_file("F1"))).revision == 2


@pytest.mark.gen_test
async def test_keys_are_exact(make_store):
    """Case, trailing spaces and characters beyond the BMP all make distinct keys, as on SQLite."""
    store = make_store()
    await store.upsert("ws", sample_file("abc"))
    for other in ("ABC", "abc ", "ab"):
        assert await store.get("ws", other) is None
    emoji = MediaFile(fingerprint="\U0001F681x", object_key="media/ws/\U0001F681.jpg", name="航拍 \U0001F681.JPG")
    await store.upsert("ws", emoji)
    assert (await store.get("ws", "\U0001F681x")).file == emoji
    assert await store.get("ws", "\U0001F681X") is None


@pytest.mark.gen_test
async def test_values_round_trip_exactly(make_store):
    """Microseconds, 64-bit integers and a body-sized raw_json survive on every engine."""
    store = make_store()
    created = _dt.datetime(2022, 8, 31, 7, 16, 16, 123456, tzinfo=_dt.timezone.utc)
    file = sample_file("F1", created_time=created, sub_file_type=2**53, raw_json="x" * 900_000,
                       is_original=False, gimbal_yaw_degree=-179.99999999999997)
    stored = await store.upsert("ws", file)
    assert stored.file == file and (await store.get("ws", "F1")).file == file
    assert stored.created_at.microsecond == (await store.get("ws", "F1")).created_at.microsecond
    when = _dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=_dt.timezone.utc)
    await store.mark_verified([stored], when)
    assert (await store.get("ws", "F1")).verified_at == when
    group = await store.save_group("ws", GroupReport("g1", 2**53, 2**53 - 1))
    assert (group.file_count, group.file_uploaded_count) == (2**53, 2**53 - 1)


@pytest.mark.gen_test
async def test_what_one_engine_cannot_store_is_refused_on_all(make_store):
    store = make_store()
    with pytest.raises(BadRequest) as caught:
        await store.upsert("ws", sample_file("F1", name="a\x00b"))
    assert caught.value.field == "name"
    with pytest.raises(BadRequest):
        await store.upsert("ws", sample_file("F1", sub_file_type=2**63))
    with pytest.raises(BadRequest):
        await store.save_group("ws", GroupReport("g\x00", 1, 1))
    # A key that cannot be stored is not found, rather than an error.
    assert await store.get("ws", "F\x001") is None
    assert await store.find_by_tiny_fingerprints("ws", ["t\x00"]) == []
    assert await store.get_group("ws", "g\x00") is None


@pytest.mark.gen_test(timeout=30)
async def test_pool_is_bounded_and_closed(own_database, admin, engine):
    url, database = own_database
    store = PeeweeMediaStore(url=url, max_workers=3)
    try:
        await asyncio.gather(*(store.upsert("ws", sample_file(f"F{i}")) for i in range(30)))
        seen = set(await asyncio.gather(*(connection_id(store, engine) for _ in range(30))))
        assert 1 <= len(seen) <= 3  # one connection per reader thread at most
        open_ = connections_to(admin, engine, database)
        # The readers' connections and the writer's, all still open and idle in the pool.
        assert seen <= open_ and len(open_) <= 3 + 1, (seen, open_)
    finally:
        await store.close()
    # Nothing left open: the server sees every one of the store's connections go (each server
    # process or thread ends a moment after its client has closed the connection).
    deadline = time.monotonic() + 10
    while connections_to(admin, engine, database) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert connections_to(admin, engine, database) == set()


@pytest.mark.gen_test
async def test_connection_killed_while_idle_is_replaced(make_store, admin, engine):
    store = make_store(max_workers=1)
    await store.upsert("ws", sample_file("F1"))
    _, _, kill = SQL[engine]
    before = await connection_id(store, engine)
    admin.execute_sql(kill, (before,))  # as a server restart or an idle timeout would
    try:
        fetched = await store.get("ws", "F1")
    except DatabaseUnavailable:  # peewee 3's PostgreSQL pool does not test a connection it hands out
        fetched = await store.get("ws", "F1")
    assert fetched.file == sample_file("F1")
    assert await connection_id(store, engine) != before


@pytest.mark.gen_test(timeout=60)
async def test_connection_killed_midway_is_not_reused(make_store, admin, engine):
    store = make_store(max_workers=1)  # a pool of two connections: the reader's and the writer's
    await store.ping()
    ids, sleep, kill = SQL[engine]
    started = threading.Event()
    box = []

    def long_query():
        box.append(store.db.execute_sql(ids).fetchone()[0])
        started.set()
        store.db.execute_sql(sleep)

    running = asyncio.ensure_future(store.run_unit(long_query, transaction=False))
    while not started.is_set():
        await asyncio.sleep(0.01)
    admin.execute_sql(kill, (box[0],))
    with pytest.raises(DatabaseUnavailable):
        await running

    # The broken connection did not go back to the pool, nor keep its place there: the reader
    # holds a connection (a working one, not the killed one) while the writer takes the pool's
    # other. Were the killed one still counted as in use, the upsert would wait for a free
    # connection and fail after the pool's wait (DatabaseUnavailable).
    holding, release = [], threading.Event()

    def hold():
        holding.append(store.db.execute_sql(ids).fetchone()[0])
        release.wait(30)

    held = asyncio.ensure_future(store.run_unit(hold, transaction=False))
    try:
        while not holding and not held.done():
            await asyncio.sleep(0.01)
        await store.upsert("ws", sample_file("F1"))
    finally:
        release.set()
    await held
    assert holding[0] != box[0]
    assert (await store.get("ws", "F1")).file == sample_file("F1")
    assert await connection_id(store, engine) != box[0]


@pytest.mark.gen_test
async def test_schema_on_the_server(make_store, admin, engine):
    """The column types a migration tool will meet."""
    store = make_store()
    await store.ping()
    table = store.table_names["media_file"]
    if engine == "mysql":
        rows = admin.execute_sql(
            "SELECT COLUMN_NAME, COLUMN_TYPE, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table,)).fetchall()
        columns = {name: (kind, collation) for name, kind, collation in rows}
        assert columns["fingerprint"] == ("varchar(64)", "utf8mb4_nopad_bin")
        assert columns["created_at"][0] == "datetime(6)"
        assert columns["raw_json"][0] == "longtext"
        assert columns["id"][0].startswith("bigint")
        # Version 4: the whole key in byte order, for the unique (workspace_id, object key) index.
        assert columns["object_key_bytes"] == ("varbinary(1024)", None)
        assert columns["etag"][0] == "varchar(128)" and columns["size"][0].startswith("bigint")
        assert columns["public_id"][0] == "varchar(36)"
        key = "object_key_bytes"
    else:
        rows = admin.execute_sql(
            "SELECT column_name, data_type, collation_name FROM information_schema.columns WHERE table_name = %s",
            (table,)).fetchall()
        columns = {name: kind for name, kind, _ in rows}
        assert columns["created_at"] == "timestamp without time zone"
        assert columns["id"] == "bigint" and columns["sub_file_type"] == "bigint"
        assert columns["size"] == "bigint" and columns["etag"] == columns["public_id"] == "character varying"
        # Byte order for object keys whatever the database's collation (fingerprints keep it:
        # equality is exact under any deterministic collation).
        assert {name: collation for name, _, collation in rows}["object_key"] == "C"
        key = "object_key"
    indexes = {index.name: (index.unique, tuple(index.columns)) for index in admin.get_indexes(table)}
    assert indexes[f"{table}_workspace_id_fingerprint"] == (True, ("workspace_id", "fingerprint"))
    assert indexes[f"{table}_workspace_id_tiny_fingerprint"] == (False, ("workspace_id", "tiny_fingerprint"))
    assert indexes[f"{table}_workspace_id_object_key"] == (True, ("workspace_id", key))
    assert indexes[f"{table}_public_id"] == (True, ("public_id",))
    assert {c.name: c.null for c in admin.get_columns(store.table_names["task"])} == {
        "name": False, "holder": True, "lease_until": True, "state": True, "updated_at": False}


@pytest.mark.gen_test(timeout=30)
async def test_deadlock_victim_is_rerun(make_store):
    """Two units of work lock two rows in opposite orders; the one the server aborts reruns."""
    store = make_store(max_workers=2)
    for fingerprint in ("A", "B"):
        await store.upsert("ws", sample_file(fingerprint))
    m = peewee.Table(store.table_names["media_file"], ("workspace_id", "fingerprint", "name")).bind(store.db)
    both_hold_one = threading.Barrier(2, timeout=10)
    calls = []

    def lock(first, second):
        def work():
            calls.append(first)
            row = (m.workspace_id == "ws") & (m.fingerprint == first)  # by the unique index
            m.update(name=first).where(row).execute()
            if calls.count(first) == 1:  # only the first attempt waits for the other
                both_hold_one.wait()
            m.update(name=first).where((m.workspace_id == "ws") & (m.fingerprint == second)).execute()
        return work

    # Two units of work, each in a transaction (run_unit's default), on two of the pool's threads.
    await asyncio.gather(store.run_unit(lock("A", "B")), store.run_unit(lock("B", "A")))
    assert len(calls) == 3  # one of them ran twice
    names = {(await store.get("ws", fp)).file.name for fp in ("A", "B")}
    assert len(names) == 1  # the rerun one wrote both rows last


@pytest.mark.gen_test(timeout=60)
async def test_processes_writing_one_object_key_leave_one_record(make_store):
    """Two stores (two processes' pools) write records of different fingerprints under the same
    object keys at once. PostgreSQL's unique index refuses the second insert of a key whose
    first is not yet committed when the second's DELETE looked (the unit of work is rerun and
    then supersedes it); MySQL's DELETE locks the gap (a deadlock, rerun). Either way: one
    record per key, and no caller sees an error."""
    one = make_store()
    two = make_store(share=one)
    keys = [f"media/ws/race-{i}.jpg" for i in range(30)]
    await asyncio.gather(*(store.upsert("ws", sample_file(f"{name}{i}", object_key=key))
                           for i, key in enumerate(keys) for name, store in (("A", one), ("B", two))))
    for i, key in enumerate(keys):
        held = [fp for fp in (f"A{i}", f"B{i}") if await one.get("ws", fp) is not None]
        assert len(held) == 1, (key, held)
    assert [r.file.object_key for r in await two.records_by_object_key("ws", None, None, 100)] == sorted(keys)


# PostgreSQL only (not skipped elsewhere: not collected): MySQL compares the keys' bytes
# whatever the collation, and SQLite has no language collations.
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
@pytest.mark.gen_test(timeout=30)
async def test_object_keys_in_byte_order_under_a_language_collation(engine, database_url, admin):
    """PostgreSQL: in a database whose default collation sorts by language rules (ICU "en":
    "a" before "B"), object keys still come in the byte order S3 lists them in."""
    name = f"dji_icu{uuid.uuid4().hex[:8]}"
    try:
        admin.execute_sql(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
                          "ICU_LOCALE 'en' LOCALE 'C.UTF-8'")
    except peewee.DatabaseError as exc:  # before PostgreSQL 15, or built without ICU
        pytest.skip(f"cannot create a database with an ICU collation: {exc}")
    store = PeeweeMediaStore(url=urlunsplit(urlsplit(database_url)._replace(path=f"/{name}")))
    try:
        keys = ["media/ws/b.jpg", "media/ws/B.jpg", "media/ws/a.jpg", "media/ws/A-1.jpg", "media/ws/\u00e9.jpg",
                "media/ws/e.jpg", "media/ws/a/1.jpg", "media/ws/a-1.jpg"]
        for i, key in enumerate(keys):
            await store.upsert("ws", sample_file(f"F{i}", object_key=key))
        got = [r.file.object_key for r in await store.records_by_object_key("ws", None, None, 100)]
        assert got == sorted(keys, key=lambda k: k.encode("utf-8"))
        sorted_by_language = await store.run_unit(lambda: [row[0] for row in store.db.execute_sql(
            "SELECT x FROM unnest(%s::text[]) AS x ORDER BY x", (keys,)).fetchall()], transaction=False)
        assert sorted_by_language != got  # the database's own order is not S3's
        page = await store.records_by_object_key("ws", "media/ws/B.jpg", "media/ws/a/1.jpg", 100)
        assert [r.file.object_key for r in page] == ["media/ws/a-1.jpg", "media/ws/a.jpg", "media/ws/a/1.jpg"]
    finally:
        await store.close()
        admin.execute_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        admin.execute_sql(f"DROP DATABASE IF EXISTS {name}")
