"""DatabaseDeviceDirectory (dji_media.backends.peewee_devices): which workspace each dock
belongs to, in the store's database, on SQLite always and on PostgreSQL and MariaDB/MySQL when
DJI_MEDIA_TEST_POSTGRES_URL / DJI_MEDIA_TEST_MYSQL_URL are set."""
from __future__ import annotations

import asyncio
import datetime as _dt

import pytest

from dji_media import BadRequest, DatabaseUnavailable, PeeweeMediaStore
from dji_media.backends.peewee_devices import DatabaseDeviceDirectory
from dji_media.errors import BoundElsewhere
from dji_media.testing.contracts import sample_file


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(real_database, io_loop):
    url, prefix = real_database
    made = PeeweeMediaStore(url=url, table_prefix=prefix, max_workers=2)
    yield made
    io_loop.run_sync(made.close)


@pytest.mark.gen_test(timeout=60)
async def test_bind_look_up_list_and_unbind(store):
    devices = DatabaseDeviceDirectory(store, cache_seconds=0)
    assert await devices.workspace_of("4TADKAQ000002J") is None
    before = _dt.datetime.now(_dt.timezone.utc)
    binding = await devices.bind("4TADKAQ000002J", "ws-a", note="roof, building 3")
    assert (binding.gateway_sn, binding.workspace_id, binding.note) == ("4TADKAQ000002J", "ws-a", "roof, building 3")
    assert binding.bound_at.tzinfo is not None and binding.bound_at >= before - _dt.timedelta(seconds=1)
    await devices.bind("7CTDM3D00BVY4K", "ws-b")
    await devices.bind("1ABC", "ws-a")
    assert await devices.workspace_of("4TADKAQ000002J") == "ws-a"
    assert await devices.workspace_of("4tadkaq000002j") is None  # serial numbers are exact
    assert [b.gateway_sn for b in await devices.list()] == ["1ABC", "4TADKAQ000002J", "7CTDM3D00BVY4K"]
    assert [b.gateway_sn for b in await devices.list("ws-a")] == ["1ABC", "4TADKAQ000002J"]
    assert await devices.list("ws-c") == []
    # Bound again elsewhere: the new workspace and note replace the old ones.
    moved = await devices.bind("4TADKAQ000002J", "ws-b")
    assert (moved.workspace_id, moved.note) == ("ws-b", None)
    assert await devices.workspace_of("4TADKAQ000002J") == "ws-b"
    assert await devices.unbind("4TADKAQ000002J") is True
    assert await devices.unbind("4TADKAQ000002J") is False
    assert await devices.workspace_of("4TADKAQ000002J") is None
    # The same table for every process on the database, and the media store still works.
    other = DatabaseDeviceDirectory(store)
    assert await other.workspace_of("7CTDM3D00BVY4K") == "ws-b"
    record = await store.upsert("ws-b", sample_file("F1", object_key="media/ws-b/a.jpg"))
    assert await store.get("ws-b", "F1") == record
    await devices.close()
    await other.close()
    await store.ping()  # a store passed in stays open


@pytest.mark.gen_test(timeout=60)
async def test_an_administrator_never_takes_another_workspaces_dock(store):
    devices = DatabaseDeviceDirectory(store, cache_seconds=0)
    await devices.bind("4TADKAQ000002J", "ws-a", note="roof", replace=False)
    again = await devices.bind("4TADKAQ000002J", "ws-a", note="roof, east", replace=False)
    assert (again.workspace_id, again.note) == ("ws-a", "roof, east")
    with pytest.raises(BoundElsewhere):
        await devices.bind("4TADKAQ000002J", "ws-b", replace=False)
    # Nor unbinds it: only the named workspace's binding goes.
    assert await devices.unbind("4TADKAQ000002J", "ws-b") is False
    assert await devices.workspace_of("4TADKAQ000002J") == "ws-a"
    assert await devices.unbind("4TADKAQ000002J", "ws-a") is True
    # Two workspaces racing for a free dock: exactly one wins, and the table says which.
    for round_ in range(5):
        sn = f"RACE{round_}"
        outcomes = await asyncio.gather(*(devices.bind(sn, ws, replace=False) for ws in ("ws-a", "ws-b", "ws-c")),
                                        return_exceptions=True)
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(won) == 1, outcomes
        assert all(isinstance(o, BoundElsewhere) for o in outcomes if isinstance(o, BaseException)), outcomes
        assert await devices.workspace_of(sn) == won[0].workspace_id
    await devices.close()


@pytest.mark.gen_test(timeout=60)
async def test_input_is_checked(store):
    devices = DatabaseDeviceDirectory(store)
    for sn in ("", "4TAD/+", "4TAD KAQ", "a" * 129, "航拍"):
        with pytest.raises(BadRequest) as refused:
            await devices.bind(sn, "ws")
        assert refused.value.field == "gateway_sn"
        assert await devices.workspace_of(sn) is None
    with pytest.raises(BadRequest) as refused:
        await devices.bind("SN1", "a*b")
    assert refused.value.field == "workspace_id"
    with pytest.raises(BadRequest) as refused:
        await devices.bind("SN1", "ws", note="n" * 256)
    assert refused.value.field == "note"
    with pytest.raises(BadRequest):
        await devices.unbind("a/b")
    with pytest.raises(BadRequest):
        await devices.list("a*b")
    assert await devices.workspace_of("SN\x00") is None
    longest = await devices.bind("S" * 128, "w" * 64, note="航拍 \U0001F681" + "n" * 248)
    assert await devices.list() == [longest]
    with pytest.raises(ValueError):
        DatabaseDeviceDirectory()
    with pytest.raises(ValueError):
        DatabaseDeviceDirectory(store, url="sqlite:///x.sqlite3")
    with pytest.raises(ValueError):
        DatabaseDeviceDirectory(store, cache_seconds=-1)


@pytest.mark.gen_test(timeout=60)
async def test_answers_are_cached_for_a_few_seconds(store):
    clock = Clock()
    devices = DatabaseDeviceDirectory(store, cache_seconds=5, clock=clock)
    elsewhere = DatabaseDeviceDirectory(store)  # another process, as far as the cache goes
    assert await devices.workspace_of("SN1") is None
    await elsewhere.bind("SN1", "ws-a")
    assert await devices.workspace_of("SN1") is None  # the cached answer, for now
    clock.now += 5.1
    assert await devices.workspace_of("SN1") == "ws-a"
    await elsewhere.unbind("SN1")
    assert await devices.workspace_of("SN1") == "ws-a"
    clock.now += 5.1
    assert await devices.workspace_of("SN1") is None
    # A change made through the same object takes effect at once.
    await devices.bind("SN1", "ws-b")
    assert await devices.workspace_of("SN1") == "ws-b"
    await devices.unbind("SN1")
    assert await devices.workspace_of("SN1") is None


@pytest.mark.gen_test(timeout=60)
async def test_built_from_a_url_with_a_store_of_its_own(real_database):
    url, prefix = real_database
    devices = DatabaseDeviceDirectory(url=url, table_prefix=prefix)
    try:
        await devices.bind("SN1", "ws-a")
        assert devices.table_name == f"{prefix}device"
    finally:
        await devices.close()
    store = PeeweeMediaStore(url=url, table_prefix=prefix)
    try:
        assert await DatabaseDeviceDirectory(store).workspace_of("SN1") == "ws-a"
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_database_that_cannot_answer_is_unavailable_not_unknown():
    devices = DatabaseDeviceDirectory(url="sqlite:////nonexistent-dji-media-dir/media.sqlite3")
    try:
        with pytest.raises(DatabaseUnavailable):
            await devices.workspace_of("SN1")
        with pytest.raises(DatabaseUnavailable):
            await devices.bind("SN1", "ws")
    finally:
        await devices.close()
