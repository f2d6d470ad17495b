"""Contract tests: written once, run over every implementation of an interface.

Subclass a class below in a test module and provide its fixtures:

    class TestMyStore(MediaStoreContract):
        @pytest.fixture
        def media_store(self):
            return MyStore(...)

Coroutine tests use pytest-tornado's ``gen_test`` marker.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import gc
import os
import uuid
import warnings
from typing import Any, Dict, List, Tuple

import pytest

from ..capabilities import has_capability
from ..errors import DatabaseUnavailable, Forbidden, StorageUnavailable, Unauthenticated
from ..values import FileQuery, GroupReport, MediaFile, MediaRecord, ObjectInfo


def sample_file(fingerprint: str = "7F78C9F1999425CB61F10E1FE206009E", **changes: Any) -> MediaFile:
    """A media file as a real upload-callback describes it."""
    values: Dict[str, Any] = dict(
        fingerprint=fingerprint,
        object_key=f"media/ws/DJI_{fingerprint}.JPG",
        tiny_fingerprint=f"{fingerprint.lower()}_2022_8_31_15_16_16",
        name=f"DJI_{fingerprint}.JPG",
        path="DJI_202208311455_008_Waypoint1",
        sub_file_type=0,
        file_group_id="3c3a3c8e-8f2e-4a63-9d3f-1a2b3c4d5e6f",
        drone_model_key="0-67-0",
        payload_model_key="1-52-0",
        is_original=True,
        sn="1AD3CA2VL3LAD6",
        gimbal_yaw_degree=-4.3,
        absolute_altitude=-36.889,
        relative_altitude=100.001,
        created_time=_dt.datetime(2022, 8, 31, 7, 16, 16, tzinfo=_dt.timezone.utc),
        created_time_text="2022-08-31T15:16:16+08:00",
        shoot_lat=22.577666,
        shoot_lng=113.943194,
        raw_json='{"fingerprint":"%s"}' % fingerprint,
    )
    values.update(changes)
    return MediaFile(**values)


def _open_descriptors() -> int:
    """How many file descriptors this process has open (database files and sockets count),
    or -1 where the system does not say (only Linux's /proc is read)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class MediaStoreContract:
    """Fixtures required: ``media_store``, a fresh, empty MediaStore that has not yet been
    used (a store connects on first use; ``close()`` may be called twice: once by a test,
    once by the fixture); ``unreachable_media_store``, a store of the same kind whose
    database cannot be reached (a refused port, a path that cannot be opened).

    Optional: ``second_media_store``, another store on ``media_store``'s database, as another
    process (another worker, another machine) would have one: the lease and task-state tests
    take and refuse leases through both. The default is ``media_store`` itself, which suits a
    store whose leases are in process memory (``InMemoryMediaStore``); a store on a database
    should override it, so that the tests prove the lease is in the database. The storage
    sweep's tests skip for a store without the capability they test
    (``dji_media.capabilities``).
    """

    @pytest.fixture
    def second_media_store(self, media_store):
        return media_store

    @pytest.mark.gen_test
    async def test_get_unknown_is_none(self, media_store):
        assert await media_store.get("ws", "NOPE") is None

    @pytest.mark.gen_test
    async def test_upsert_then_get_round_trips_every_field(self, media_store):
        file = sample_file()
        stored = await media_store.upsert("ws", file)
        assert stored.file == file
        assert stored.workspace_id == "ws"
        assert stored.revision >= 1
        fetched = await media_store.get("ws", file.fingerprint)
        assert fetched is not None
        assert fetched.file == file
        assert fetched.created_at.tzinfo is not None and fetched.updated_at.tzinfo is not None
        assert fetched.file.created_time.utcoffset() == _dt.timedelta(0)

    @pytest.mark.gen_test
    async def test_save_stores_as_upsert_does(self, media_store):
        file = sample_file("S1")
        assert await media_store.save("ws", file) is None
        first = await media_store.get("ws", "S1")
        assert first is not None and first.file == file
        await media_store.save("ws", sample_file("S1", name="again.jpg"))
        again = await media_store.get("ws", "S1")
        assert (again.file.name, again.public_id) == ("again.jpg", first.public_id)
        assert again.revision > first.revision
        # One object key, one record, as with upsert: another fingerprint on the same key wins.
        await media_store.save("ws", sample_file("S2", object_key=file.object_key))
        assert await media_store.get("ws", "S1") is None
        assert (await media_store.get("ws", "S2")).file.object_key == file.object_key

    @pytest.mark.gen_test
    async def test_optional_fields_may_be_missing(self, media_store):
        file = MediaFile(fingerprint="ABC", object_key="media/ws/a.jpg")
        await media_store.upsert("ws", file)
        assert (await media_store.get("ws", "ABC")).file == file

    @pytest.mark.gen_test
    async def test_job_id_round_trips(self, media_store):
        file = sample_file("J1", job_id="a1b2c3d4-mission-\u822a\u62cd")
        assert (await media_store.upsert("ws", file)).file.job_id == file.job_id
        assert (await media_store.get("ws", "J1")).file == file
        assert (await media_store.upsert("ws", sample_file("J2"))).file.job_id is None
        # A callback for the same file carries no job id: the stored one stays; a new one wins.
        again = await media_store.upsert("ws", sample_file("J1", name="again.jpg"))
        assert (again.revision, again.file.name, again.file.job_id) == (2, "again.jpg", file.job_id)
        assert (await media_store.get("ws", "J1")).file.job_id == file.job_id
        moved = await media_store.upsert("ws", sample_file("J1", job_id="other-job"))
        assert moved.file.job_id == "other-job"

    @pytest.mark.gen_test
    async def test_workspaces_are_separate(self, media_store):
        await media_store.upsert("ws-a", sample_file("F1"))
        assert await media_store.get("ws-b", "F1") is None
        assert await media_store.find_by_tiny_fingerprints("ws-b", [sample_file("F1").tiny_fingerprint]) == []

    @pytest.mark.gen_test
    async def test_fingerprints_are_case_sensitive(self, media_store):
        await media_store.upsert("ws", sample_file("abc"))
        assert await media_store.get("ws", "ABC") is None

    @pytest.mark.gen_test
    async def test_upsert_is_idempotent_and_latest_wins(self, media_store):
        first = await media_store.upsert("ws", sample_file("F1", name="one.jpg"))
        second = await media_store.upsert("ws", sample_file("F1", name="two.jpg"))
        assert second.revision > first.revision
        assert second.created_at == first.created_at
        fetched = await media_store.get("ws", "F1")
        assert fetched.file.name == "two.jpg"
        assert len(await media_store.find_by_tiny_fingerprints("ws", [fetched.file.tiny_fingerprint])) == 1

    @pytest.mark.gen_test
    async def test_concurrent_upserts_leave_one_record(self, media_store):
        results = await asyncio.gather(*(media_store.upsert("ws", sample_file("F1")) for _ in range(20)))
        assert len({r.revision for r in results}) == 20  # every write was applied, none lost
        found = await media_store.find_by_tiny_fingerprints("ws", [sample_file("F1").tiny_fingerprint])
        assert len(found) == 1

    @pytest.mark.gen_test
    async def test_find_by_tiny_fingerprints(self, media_store):
        for fp in ("A1", "B2", "C3"):
            await media_store.upsert("ws", sample_file(fp))
        wanted = [sample_file("C3").tiny_fingerprint, "unknown_1_2_3", sample_file("A1").tiny_fingerprint]
        found = await media_store.find_by_tiny_fingerprints("ws", wanted)
        assert sorted(r.file.fingerprint for r in found) == ["A1", "C3"]
        assert await media_store.find_by_tiny_fingerprints("ws", []) == []

    @pytest.mark.gen_test
    async def test_find_by_many_tiny_fingerprints(self, media_store):
        # More than one query chunk's worth of parameters.
        for i in range(5):
            await media_store.upsert("ws", sample_file(f"K{i}"))
        wanted = [f"x{i}" for i in range(2500)] + [sample_file(f"K{i}").tiny_fingerprint for i in range(5)]
        found = await media_store.find_by_tiny_fingerprints("ws", wanted)
        assert sorted(r.file.fingerprint for r in found) == [f"K{i}" for i in range(5)]

    @pytest.mark.gen_test
    async def test_forget_removes_only_the_revision_seen(self, media_store):
        old = await media_store.upsert("ws", sample_file("F1"))
        newer = await media_store.upsert("ws", sample_file("F1"))
        assert await media_store.forget(old) is False  # a newer write raced: it survives
        assert await media_store.get("ws", "F1") is not None
        assert await media_store.forget(newer) is True
        assert await media_store.get("ws", "F1") is None
        assert await media_store.forget(newer) is False

    @pytest.mark.gen_test
    async def test_mark_verified_and_rewrite_clears_it(self, media_store):
        when = _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.timezone.utc)
        first = await media_store.upsert("ws", sample_file("F1"))
        assert first.verified_at is None
        await media_store.mark_verified([first], when)
        assert (await media_store.get("ws", "F1")).verified_at == when
        second = await media_store.upsert("ws", sample_file("F1"))
        assert second.verified_at is None  # a new upload is not yet confirmed
        await media_store.mark_verified([first], when)  # stale revision: not marked
        assert (await media_store.get("ws", "F1")).verified_at is None

    @pytest.mark.gen_test(timeout=120)  # 700 durable writes one after another
    async def test_mark_verified_many(self, media_store):
        when = _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.timezone.utc)
        records = [await media_store.upsert("ws", sample_file(f"M{i}")) for i in range(700)]
        await media_store.mark_verified(records, when)
        found = await media_store.find_by_tiny_fingerprints("ws", [r.file.tiny_fingerprint for r in records])
        assert len(found) == 700 and all(r.verified_at == when for r in found)

    @staticmethod
    def _imported(fingerprint: str, workspace_id: str = "ws", **changes: Any) -> MediaRecord:
        """A record as an import brings it: its own times, revision 1, never verified, and a
        public id of its own (one per workspace and fingerprint)."""
        return MediaRecord(
            workspace_id=workspace_id, file=sample_file(fingerprint, **changes), revision=1,
            created_at=_dt.datetime(2021, 3, 4, 5, 6, 7, 891000, tzinfo=_dt.timezone.utc),
            updated_at=_dt.datetime(2021, 3, 5, 6, 7, 8, 912000, tzinfo=_dt.timezone.utc),
            public_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{workspace_id}/{fingerprint}")),
        )

    @pytest.mark.gen_test
    async def test_insert_missing_keeps_every_value_as_given(self, media_store):
        records = [self._imported("I1", job_id="job-1"),
                   self._imported("I2", workspace_id="ws-b", name="航拍 \U0001F681.JPG")]
        assert await media_store.insert_missing(records) == [True, True]
        for record in records:
            assert await media_store.get(record.workspace_id, record.file.fingerprint) == record
        assert await media_store.insert_missing([]) == []

    @pytest.mark.gen_test
    async def test_insert_missing_never_touches_a_stored_record(self, media_store):
        existing = await media_store.upsert("ws", sample_file("I1", name="from-device.jpg"))
        result = await media_store.insert_missing(
            [self._imported("I1", name="imported.jpg"), self._imported("I2")])
        assert result == [False, True]
        assert await media_store.get("ws", "I1") == existing  # same revision, times and file
        again = await media_store.insert_missing([self._imported("I1"), self._imported("I2", name="x")])
        assert again == [False, False]
        assert (await media_store.get("ws", "I2")) == self._imported("I2")

    @pytest.mark.gen_test
    async def test_insert_missing_first_of_a_key_wins(self, media_store):
        result = await media_store.insert_missing(
            [self._imported("I1", name="first"), self._imported("I1", name="second"), self._imported("I2")])
        assert result == [True, False, True]
        assert (await media_store.get("ws", "I1")).file.name == "first"

    @pytest.mark.gen_test(timeout=60)
    async def test_insert_missing_many_mixed(self, media_store):
        # Several statements' worth, present and absent keys interleaved, two workspaces.
        stored = {f"P{i}" for i in range(0, 1200, 7)}
        for fingerprint in sorted(stored)[:40]:
            await media_store.upsert("ws", sample_file(fingerprint, name="device"))
        await media_store.insert_missing([self._imported(f) for f in sorted(stored)[40:]])
        records = [self._imported(f"P{i}", workspace_id=("ws", "ws-b")[i % 2 and i > 600])
                   for i in range(1200)]
        result = await media_store.insert_missing(records)
        expected = [not (r.workspace_id == "ws" and r.file.fingerprint in stored) for r in records]
        assert result == expected
        found = await media_store.find_by_tiny_fingerprints("ws", [r.file.tiny_fingerprint for r in records])
        assert {r.file.fingerprint for r in found} == stored | {
            r.file.fingerprint for r in records if r.workspace_id == "ws"}
        assert sum(1 for r in found if r.file.name == "device") == 40
        assert await media_store.insert_missing(records) == [False] * 1200

    @pytest.mark.gen_test
    async def test_insert_missing_concurrent_with_upserts(self, media_store):
        records = [self._imported(f"C{i}") for i in range(60)]
        outcomes = await asyncio.gather(
            media_store.insert_missing(records),
            *(media_store.upsert("ws", sample_file(f"C{i}", name="device")) for i in range(0, 60, 3)))
        inserted = outcomes[0]
        for i, record in enumerate(records):
            stored = await media_store.get("ws", record.file.fingerprint)
            if inserted[i]:  # then an upsert may have rewritten it afterwards, never lost it
                assert stored.file.name == ("device" if i % 3 == 0 else record.file.name)
            else:
                assert i % 3 == 0 and stored.revision == 1 and stored.file.name == "device"

    @pytest.mark.gen_test
    async def test_groups_latest_report_wins(self, media_store):
        assert await media_store.get_group("ws", "g1") is None
        await media_store.save_group("ws", GroupReport("g1", 14, 3))
        saved = await media_store.save_group("ws", GroupReport("g1", 14, 12))
        assert (saved.file_count, saved.file_uploaded_count) == (14, 12)
        fetched = await media_store.get_group("ws", "g1")
        assert (fetched.file_count, fetched.file_uploaded_count) == (14, 12)
        assert await media_store.get_group("other", "g1") is None

    @pytest.mark.gen_test
    async def test_ping(self, media_store, unreachable_media_store):
        await media_store.ping()
        # The default ping does nothing: a store must prove its database answers.
        with pytest.raises(DatabaseUnavailable):
            await unreachable_media_store.ping()

    @pytest.mark.gen_test
    async def test_unreachable_database_is_an_error_never_an_answer(self, unreachable_media_store):
        # "Not found" from a database that was never asked would make a device skip an upload.
        with pytest.raises(DatabaseUnavailable):
            await unreachable_media_store.get("ws", "F")
        with pytest.raises(DatabaseUnavailable):
            await unreachable_media_store.find_by_tiny_fingerprints("ws", ["t"])
        with pytest.raises(DatabaseUnavailable):
            await unreachable_media_store.upsert("ws", sample_file())

    @pytest.mark.gen_test
    async def test_payload_name_round_trips_and_survives_a_callback(self, media_store):
        file = sample_file("PN", payload_name="M30 Camera")
        assert (await media_store.upsert("ws", file)).file.payload_name == "M30 Camera"
        # A device's callback does not carry the name: a rewrite without one keeps it.
        again = await media_store.upsert("ws", sample_file("PN", name="again.jpg"))
        assert again.file.payload_name == "M30 Camera" and again.file.name == "again.jpg"

    @pytest.mark.gen_test(timeout=60)
    async def test_close_releases_every_connection(self, media_store):
        """Every connection a method opens is closed (or back in a pool the store closes) by
        ``close()``, on success and failure paths alike: none is left to the garbage collector
        (Python 3.13's sqlite3 warns about those; older Pythons say nothing), and the process
        holds no more descriptors than before the store was used. (The failure paths of a
        database store are its own tests': they need a database that fails.)"""
        gc.collect()
        before = _open_descriptors()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stored = await media_store.upsert("ws", sample_file("L1"))
            await asyncio.gather(*(media_store.get("ws", f"L{i}") for i in range(20)))
            await media_store.find_by_tiny_fingerprints("ws", [stored.file.tiny_fingerprint])
            await media_store.save_group("ws", GroupReport("g1", 2, 1))
            await media_store.get_group("ws", "g1")
            await media_store.ping()
            await media_store.tiny_fingerprint_confirmations("ws", [stored.file.tiny_fingerprint])
            if all(has_capability(media_store, name) for name in ("sweep_records", "sweep_confirm",
                                                                 "sweep_workspaces", "leases")):
                await media_store.workspaces()
                await media_store.records_by_object_key("ws", None, None, 10)
                await media_store.confirm([(stored, ObjectInfo(stored.file.object_key, "e", 1))], stored.updated_at)
                await media_store.acquire_lease("sweep", "me", 30)
                await media_store.save_task_state("sweep", "me", "{}")
                await media_store.load_task_state("sweep")
                await media_store.release_lease("sweep", "me")
            await media_store.forget(stored)
            await media_store.close()
            await media_store.close()  # a second close is harmless
            gc.collect()
        leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaked == []
        if before >= 0:
            assert _open_descriptors() <= before

    # ---- one object key, one record; public ids; storage truth (the sweep)

    @staticmethod
    def _requires(store: Any, *capabilities: str) -> None:
        missing = [name for name in capabilities if not has_capability(store, name)]
        if missing:
            pytest.skip(f"{type(store).__name__} lacks {', '.join(missing)} (dji_media.capabilities)")

    @pytest.mark.gen_test
    async def test_upsert_supersedes_another_fingerprint_of_the_same_object_key(self, media_store):
        key = "media/ws/DJI_0001.JPG"
        first = await media_store.upsert("ws", sample_file("OLD", object_key=key))
        elsewhere = await media_store.upsert("ws-b", sample_file("OLD", object_key=key))
        second = await media_store.upsert("ws", sample_file("NEW", object_key=key))
        assert await media_store.get("ws", "OLD") is None  # its object holds NEW's bytes now
        assert await media_store.find_by_tiny_fingerprints("ws", [first.file.tiny_fingerprint]) == []
        assert first.file.tiny_fingerprint not in await media_store.tiny_fingerprint_confirmations(
            "ws", [first.file.tiny_fingerprint])
        assert (await media_store.get("ws", "NEW")).file == second.file
        assert await media_store.get("ws-b", "OLD") == elsewhere  # another workspace's key
        # A record moved to another key frees its old one, which another file then takes alone.
        moved = await media_store.upsert("ws", sample_file("NEW", object_key=key + ".moved"))
        third = await media_store.upsert("ws", sample_file("THIRD", object_key=key))
        assert await media_store.get("ws", "NEW") == moved
        assert await media_store.get("ws", "THIRD") == third
        # The same fingerprint again at the same key is a rewrite, not a supersede.
        again = await media_store.upsert("ws", sample_file("THIRD", object_key=key))
        assert again.revision == third.revision + 1 and again.public_id == third.public_id

    @pytest.mark.gen_test
    async def test_concurrent_upserts_of_one_object_key_leave_one_record(self, media_store):
        key = "media/ws/DJI_0002.JPG"
        await asyncio.gather(*(media_store.upsert("ws", sample_file(f"C{i}", object_key=key,
                                                                      tiny_fingerprint="shared_tiny"))
                               for i in range(10)))
        found = await media_store.find_by_tiny_fingerprints("ws", ["shared_tiny"])
        assert len(found) == 1 and found[0].file.object_key == key

    @pytest.mark.gen_test
    async def test_public_id_is_unique_and_stable(self, media_store):
        records = [await media_store.upsert("ws", sample_file(f"U{i}")) for i in range(20)]
        records.append(await media_store.upsert("ws-b", sample_file("U0")))
        ids = [r.public_id for r in records]
        assert len(set(ids)) == len(ids)
        assert all(isinstance(i, str) and uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
        assert (await media_store.get("ws", "U3")).public_id == ids[3]
        found = await media_store.find_by_tiny_fingerprints("ws", [records[5].file.tiny_fingerprint])
        assert [r.public_id for r in found] == [ids[5]]
        rewritten = await media_store.upsert("ws", sample_file("U3", name="again.jpg"))
        assert rewritten.public_id == ids[3] and rewritten.revision == records[3].revision + 1
        # A record stored again after it was removed is another record: a new id.
        await media_store.forget(rewritten)
        assert (await media_store.upsert("ws", sample_file("U3"))).public_id not in ids
        # Imports: a given id is kept, a record without one gets one.
        given = self._imported("I1")
        bare = dataclasses.replace(self._imported("I2"), public_id=None)
        assert await media_store.insert_missing([given, bare]) == [True, True]
        assert (await media_store.get("ws", "I1")).public_id == given.public_id
        made = (await media_store.get("ws", "I2")).public_id
        assert made is not None and made not in ids and uuid.UUID(made)

    @pytest.mark.gen_test
    async def test_rewrite_clears_etag_size_and_verified_at_and_keeps_public_id(self, media_store):
        self._requires(media_store, "sweep_confirm")
        when = _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.timezone.utc)
        first = await media_store.upsert("ws", sample_file("R1"))
        assert (first.etag, first.size, first.verified_at) == (None, None, None)
        await media_store.confirm([(first, ObjectInfo(first.file.object_key, "0123abcd", 4096))], when)
        confirmed = await media_store.get("ws", "R1")
        assert (confirmed.etag, confirmed.size, confirmed.verified_at) == ("0123abcd", 4096, when)
        assert confirmed.public_id == first.public_id and confirmed.revision == first.revision
        second = await media_store.upsert("ws", sample_file("R1"))
        assert (second.etag, second.size, second.verified_at) == (None, None, None)
        assert second.public_id == first.public_id
        assert await media_store.get("ws", "R1") == second

    @pytest.mark.gen_test
    async def test_insert_missing_one_object_key_one_record(self, media_store):
        key = "media/ws/DJI_0003.JPG"
        stored = await media_store.upsert("ws", sample_file("S1", object_key=key + ".stored"))
        result = await media_store.insert_missing([
            self._imported("I1", object_key=key), self._imported("I2", object_key=key),  # the first wins
            self._imported("I3", object_key=key + ".stored"),  # a stored record holds it
            self._imported("I4", object_key=key, workspace_id="ws-b"),  # another workspace's key
        ])
        assert result == [True, False, False, True]
        assert (await media_store.get("ws", "I1")).file.object_key == key
        assert await media_store.get("ws", "I2") is None and await media_store.get("ws", "I3") is None
        assert await media_store.get("ws", "S1") == stored

    @pytest.mark.gen_test
    async def test_tiny_fingerprint_confirmations(self, media_store):
        t1, t2 = (_dt.datetime(2026, 1, 2, 3, 4, s, 5000, tzinfo=_dt.timezone.utc) for s in (5, 6))
        assert await media_store.tiny_fingerprint_confirmations("ws", []) == {}
        assert await media_store.tiny_fingerprint_confirmations("ws", ["unknown_1_2_3"]) == {}
        alone = await media_store.upsert("ws", sample_file("T1"))
        # Two records share a tiny fingerprint: the latest confirmation of either counts.
        a = await media_store.upsert("ws", sample_file("T2", tiny_fingerprint="shared_2022_1_1_0_0_0"))
        b = await media_store.upsert("ws", sample_file("T3", tiny_fingerprint="shared_2022_1_1_0_0_0"))
        await media_store.upsert("ws-b", sample_file("T4", tiny_fingerprint="other_2022_1_1_0_0_0"))
        wanted = [alone.file.tiny_fingerprint, "shared_2022_1_1_0_0_0", "other_2022_1_1_0_0_0", "nope"]
        assert await media_store.tiny_fingerprint_confirmations("ws", wanted) == {
            alone.file.tiny_fingerprint: None, "shared_2022_1_1_0_0_0": None}
        await media_store.mark_verified([b], t1)
        assert (await media_store.tiny_fingerprint_confirmations("ws", wanted))["shared_2022_1_1_0_0_0"] == t1
        await media_store.mark_verified([a], t2)
        await media_store.mark_verified([alone], t1)
        found = await media_store.tiny_fingerprint_confirmations("ws", wanted + wanted)
        assert found == {alone.file.tiny_fingerprint: t1, "shared_2022_1_1_0_0_0": t2}
        assert all(when.utcoffset() == _dt.timedelta(0) for when in found.values())
        # More than one query chunk's worth.
        many = [f"x{i}" for i in range(1200)] + [alone.file.tiny_fingerprint]
        assert await media_store.tiny_fingerprint_confirmations("ws", many) == {alone.file.tiny_fingerprint: t1}

    @pytest.mark.gen_test
    async def test_workspaces(self, media_store):
        self._requires(media_store, "sweep_workspaces")
        assert await media_store.workspaces() == []
        stored: Dict[str, MediaRecord] = {}
        for workspace_id in ("ws-b", "ws-a", "ws-a", "WS-Z", "ws-c"):
            stored[workspace_id] = await media_store.upsert(workspace_id, sample_file(f"W{len(stored)}"))
        assert await media_store.workspaces() == ["WS-Z", "ws-a", "ws-b", "ws-c"]
        await media_store.forget(stored["ws-b"])
        assert await media_store.workspaces() == ["WS-Z", "ws-a", "ws-c"]

    # Object keys whose byte order (UTF-8, as S3 lists them) differs from other orders: case,
    # "/" against "-" and "0", accents, a character beyond the BMP (before U+FF21 in UTF-16).
    _KEY_NAMES = ("a.jpg", "A.JPG", "Z.jpg", "b", "b/c.jpg", "b-c.jpg", "b0.jpg", "\u00e9.jpg", "e.jpg",
                  "\uff21.jpg", "\U0001F681.jpg", "~.jpg", "\u822a\u62cd/1.JPG", "DJI_0001.JPG")

    @pytest.mark.gen_test
    async def test_records_by_object_key_in_byte_order(self, media_store):
        self._requires(media_store, "sweep_records")
        prefix = "media/ws/"
        keys = [prefix + name for name in self._KEY_NAMES]
        for i, key in enumerate(keys):
            await media_store.upsert("ws", sample_file(f"K{i:02d}", object_key=key))
            await media_store.upsert("ws-other", sample_file(f"K{i:02d}", object_key=key))
        expected = sorted(keys, key=lambda k: k.encode("utf-8"))

        async def listed(after, upto, limit=100):
            records = await media_store.records_by_object_key("ws", after, upto, limit)
            assert all(r.workspace_id == "ws" for r in records)
            return [r.file.object_key for r in records]

        assert await listed(None, None) == expected
        full = await media_store.records_by_object_key("ws", None, None, 100)
        assert full[0] == await media_store.get("ws", full[0].file.fingerprint)  # whole records
        assert await listed(expected[3], expected[8]) == expected[4:9]  # (after, upto]
        assert await listed(expected[3], None) == expected[4:]
        assert await listed(None, expected[2]) == expected[:3]
        assert await listed(expected[-1], None) == []
        assert await listed("media/ws/b", "media/ws/b") == []
        # Bounds need not be stored keys: the listing's own keys are what the sweep passes.
        assert await listed("media/ws/b/", "media/ws/b/zzz") == [prefix + "b/c.jpg"]
        assert await listed("media/", "media/ws") == []
        # Pages of a limit, each after the last key of the one before.
        paged, after = [], None
        while True:
            page = await listed(after, None, limit=4)
            paged += page
            if len(page) < 4:
                break
            after = page[-1]
        assert paged == expected
        assert await listed(None, None, limit=0) == []
        assert await media_store.records_by_object_key("nobody", None, None, 10) == []

    @pytest.mark.gen_test
    async def test_confirm_records_the_first_etag_and_size_only(self, media_store):
        self._requires(media_store, "sweep_confirm")
        t1, t2, t3 = (_dt.datetime(2026, 1, 2, 3, 4, s, 123456, tzinfo=_dt.timezone.utc) for s in (5, 6, 7))
        record = await media_store.upsert("ws", sample_file("C1"))
        key = record.file.object_key
        await media_store.confirm([(record, ObjectInfo(key, "etag-1", 100))], t1)
        got = await media_store.get("ws", "C1")
        assert (got.verified_at, got.etag, got.size, got.revision) == (t1, "etag-1", 100, record.revision)
        # A later confirmation moves verified_at and never overwrites what the first recorded.
        await media_store.confirm([(record, ObjectInfo(key, "etag-2", 200))], t2)
        got = await media_store.get("ws", "C1")
        assert (got.verified_at, got.etag, got.size) == (t2, "etag-1", 100)
        # A store that could tell only the size records that; the ETag waits for one that can.
        other = await media_store.upsert("ws", sample_file("C2"))
        await media_store.confirm([(other, ObjectInfo(other.file.object_key, None, 7))], t1)
        await media_store.confirm([(other, ObjectInfo(other.file.object_key, "etag-3", 8))], t2)
        got = await media_store.get("ws", "C2")
        assert (got.verified_at, got.etag, got.size) == (t2, "etag-3", 7)
        # A record rewritten since it was read is not confirmed.
        rewritten = await media_store.upsert("ws", sample_file("C1"))
        await media_store.confirm([(record, ObjectInfo(key, "etag-1", 100))], t3)
        assert await media_store.get("ws", "C1") == rewritten
        assert (rewritten.verified_at, rewritten.etag, rewritten.size) == (None, None, None)
        await media_store.confirm([], t3)

    @pytest.mark.gen_test(timeout=120)
    async def test_confirm_many(self, media_store):
        self._requires(media_store, "sweep_confirm")
        when = _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.timezone.utc)
        records = [await media_store.upsert("ws", sample_file(f"M{i}")) for i in range(400)]
        records.append(await media_store.upsert("ws-b", sample_file("M0")))
        await media_store.confirm([(r, ObjectInfo(r.file.object_key, f"etag-{i}", i)) for i, r in enumerate(records)],
                                  when)
        for i, r in enumerate(records):
            got = await media_store.get(r.workspace_id, r.file.fingerprint)
            assert (got.verified_at, got.etag, got.size) == (when, f"etag-{i}", i)

    @pytest.mark.gen_test(timeout=30)
    async def test_leases(self, media_store, second_media_store):
        self._requires(media_store, "leases")
        one, two = media_store, second_media_store
        assert await one.acquire_lease("sweep", "host-a", 30) is True
        assert await two.acquire_lease("sweep", "host-b", 30) is False  # held by another
        assert await one.acquire_lease("sweep", "host-a", 30) is True  # extended by its holder
        assert await two.acquire_lease("other-task", "host-b", 30) is True  # another lease
        await two.release_lease("sweep", "host-b")  # not its lease: left alone
        assert await two.acquire_lease("sweep", "host-b", 30) is False
        await one.release_lease("sweep", "host-a")
        assert await two.acquire_lease("sweep", "host-b", 30) is True
        assert await one.acquire_lease("sweep", "host-a", 30) is False
        # An expired lease is free for the taking.
        assert await one.acquire_lease("short", "host-a", 0.3) is True
        assert await two.acquire_lease("short", "host-b", 30) is False
        await asyncio.sleep(0.6)
        assert await two.acquire_lease("short", "host-b", 30) is True
        assert await one.acquire_lease("short", "host-a", 30) is False

    @pytest.mark.gen_test(timeout=30)
    async def test_a_lease_has_one_holder_among_many_contenders(self, media_store, second_media_store):
        self._requires(media_store, "leases")
        # Each store opens its database first, one after the other: the race under test is the
        # lease's, not two processes' first connection to a new database.
        for store in (media_store, second_media_store):
            assert await store.load_task_state("contended") is None
        taken = await asyncio.gather(*((media_store, second_media_store)[i % 2].acquire_lease(
            "contended", f"holder-{i}", 30) for i in range(12)))
        assert taken.count(True) == 1

    @pytest.mark.gen_test(timeout=30)
    async def test_task_state_is_saved_only_by_the_lease_holder(self, media_store, second_media_store):
        self._requires(media_store, "leases")
        one, two = media_store, second_media_store
        assert await one.load_task_state("sweep") is None
        assert await one.save_task_state("sweep", "host-a", "nobody holds it") is False
        assert await one.acquire_lease("sweep", "host-a", 30) is True
        state = '{"workspace": "ws", "after": "media/ws/\u822a\u62cd/1.JPG"}' + "x" * 70_000
        assert await one.save_task_state("sweep", "host-a", state) is True
        assert await two.load_task_state("sweep") == state
        assert await two.save_task_state("sweep", "host-b", "not the holder") is False
        assert await two.load_task_state("sweep") == state
        await one.release_lease("sweep", "host-a")
        assert await one.save_task_state("sweep", "host-a", "lease given up") is False
        assert await two.acquire_lease("sweep", "host-b", 30) is True
        assert await two.save_task_state("sweep", "host-b", "") is True
        assert await one.load_task_state("sweep") == ""
        # An expired lease saves nothing either.
        assert await one.acquire_lease("brief", "host-a", 0.3) is True
        await asyncio.sleep(0.6)
        assert await one.save_task_state("brief", "host-a", "too late") is False
        assert await one.load_task_state("brief") is None


    # ------------------------------------------- records without a fingerprint (docks)

    @staticmethod
    def _dock_file(name: str = "DJI_20240411163430_0001_V.jpeg", **changes: Any) -> MediaFile:
        """A file as a dock reports it: no fingerprint, no tiny fingerprint, a zone-less time."""
        values: Dict[str, Any] = dict(
            fingerprint=None, object_key=f"media/ws/DJI_202404111632_005_ac793856/{name}", name=name,
            path="DJI_202404111632_005_ac793856", file_group_id="ac793856", job_id="ac793856",
            drone_model_key="0-91-0", payload_model_key="1-81-0", is_original=True, sn="1581F5BKD223Q00A",
            gimbal_yaw_degree=-91.4, absolute_altitude=56.311, relative_altitude=41.124,
            created_time_text="2024-04-11 16:34:30", shoot_lat=22.1, shoot_lng=113.9,
            raw_json='{"method":"file_upload_callback"}')
        values.update(changes)
        return MediaFile(**values)

    async def _by_key(self, store: Any, workspace_id: str, object_key: str) -> Any:
        found = await store.records_by_object_key(workspace_id, None, None, 1000)
        return [r for r in found if r.file.object_key == object_key]

    @pytest.mark.gen_test
    async def test_a_record_without_a_fingerprint_round_trips(self, media_store):
        self._requires(media_store, "sweep_records")
        file = self._dock_file()
        record = await media_store.upsert("ws", file)
        assert record.file == file and record.revision >= 1 and record.public_id
        assert (record.verified_at, record.etag, record.size) == (None, None, None)
        assert await self._by_key(media_store, "ws", file.object_key) == [record]
        assert await self._by_key(media_store, "ws-b", file.object_key) == []

    @pytest.mark.gen_test
    async def test_a_record_without_a_fingerprint_is_keyed_by_its_object_key(self, media_store):
        self._requires(media_store, "sweep_records")
        first = await media_store.upsert("ws", self._dock_file())
        again = await media_store.upsert("ws", self._dock_file(relative_altitude=42.0))
        assert again.revision == first.revision + 1 and again.public_id == first.public_id
        assert again.file.relative_altitude == 42.0
        await asyncio.gather(*(media_store.upsert("ws", self._dock_file()) for _ in range(5)))
        held = await self._by_key(media_store, "ws", first.file.object_key)
        assert len(held) == 1 and held[0].public_id == first.public_id
        # Another object key is another record.
        other = await media_store.upsert("ws", self._dock_file("DJI_20240411163431_0002_V.jpeg"))
        assert other.public_id != first.public_id
        assert len(await media_store.records_by_object_key("ws", None, None, 10)) == 2

    @pytest.mark.gen_test
    async def test_a_record_without_a_fingerprint_is_never_found_by_fingerprint(self, media_store):
        record = await media_store.upsert("ws", self._dock_file(tiny_fingerprint="dock_tiny"))
        assert record.file.fingerprint is None
        for fingerprint in ("", "None", "null", record.file.object_key):
            assert await media_store.get("ws", fingerprint) is None
        # A Pilot record elsewhere is unaffected.
        pilot = await media_store.upsert("ws", sample_file("P1"))
        assert await media_store.get("ws", "P1") == pilot

    @pytest.mark.gen_test
    async def test_a_dock_record_and_a_pilot_record_of_one_key_are_one_record(self, media_store):
        self._requires(media_store, "sweep_records")
        key = "media/ws/shared/DJI_0001.JPG"
        pilot = await media_store.upsert("ws", sample_file("P1", object_key=key))
        dock = await media_store.upsert("ws", self._dock_file(object_key=key))
        # The dock wrote the key last: its record is the key's, the Pilot record is gone.
        assert await media_store.get("ws", "P1") is None
        assert await self._by_key(media_store, "ws", key) == [dock]
        assert dock.public_id != pilot.public_id
        # And the other way round: a Pilot upload of the key supersedes the dock's record.
        again = await media_store.upsert("ws", sample_file("P2", object_key=key))
        assert await self._by_key(media_store, "ws", key) == [again]
        assert await media_store.get("ws", "P2") == again
        # Another workspace's key is another record.
        elsewhere = await media_store.upsert("ws-b", self._dock_file(object_key=key))
        assert await self._by_key(media_store, "ws-b", key) == [elsewhere]
        assert await media_store.get("ws", "P2") == again

    @pytest.mark.gen_test
    async def test_forget_a_record_without_a_fingerprint(self, media_store):
        self._requires(media_store, "sweep_records")
        first = await media_store.upsert("ws", self._dock_file())
        second = await media_store.upsert("ws", self._dock_file())
        assert await media_store.forget(first) is False  # rewritten since: kept
        assert await self._by_key(media_store, "ws", first.file.object_key) == [second]
        assert await media_store.forget(second) is True
        assert await self._by_key(media_store, "ws", first.file.object_key) == []
        assert await media_store.forget(second) is False

    @pytest.mark.gen_test
    async def test_confirm_and_mark_verified_a_record_without_a_fingerprint(self, media_store):
        self._requires(media_store, "sweep_records", "sweep_confirm")
        t1, t2 = (_dt.datetime(2026, 1, 2, 3, 4, s, tzinfo=_dt.timezone.utc) for s in (5, 6))
        record = await media_store.upsert("ws", self._dock_file())
        pilot = await media_store.upsert("ws", sample_file("P1"))
        key = record.file.object_key
        await media_store.confirm([(record, ObjectInfo(key, "etag-1", 10)),
                                   (pilot, ObjectInfo(pilot.file.object_key, "etag-p", 5))], t1)
        [got] = await self._by_key(media_store, "ws", key)
        assert (got.verified_at, got.etag, got.size, got.revision) == (t1, "etag-1", 10, record.revision)
        assert (await media_store.get("ws", "P1")).etag == "etag-p"
        await media_store.mark_verified([got], t2)
        [got] = await self._by_key(media_store, "ws", key)
        assert (got.verified_at, got.etag) == (t2, "etag-1")
        rewritten = await media_store.upsert("ws", self._dock_file())
        await media_store.confirm([(record, ObjectInfo(key, "etag-2", 20))], t2)
        assert await self._by_key(media_store, "ws", key) == [rewritten]

    @pytest.mark.gen_test
    async def test_insert_missing_keys_a_record_without_a_fingerprint_by_object_key(self, media_store):
        self._requires(media_store, "sweep_records")

        def imported(name: str, workspace_id: str = "ws", **changes: Any) -> MediaRecord:
            return MediaRecord(
                workspace_id=workspace_id, file=self._dock_file(name, **changes), revision=1,
                created_at=_dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=_dt.timezone.utc),
                updated_at=_dt.datetime(2021, 3, 5, 6, 7, 8, tzinfo=_dt.timezone.utc),
                public_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{workspace_id}/{name}")))

        stored = await media_store.upsert("ws", self._dock_file("stored.jpeg"))
        records = [imported("a.jpeg"), imported("a.jpeg", relative_altitude=1.0), imported("stored.jpeg"),
                   imported("a.jpeg", workspace_id="ws-b"), self._imported("P1"),
                   self._imported("P2", object_key=imported("b.jpeg").file.object_key), imported("b.jpeg")]
        assert await media_store.insert_missing(records) == [True, False, False, True, True, True, False]
        assert await media_store.insert_missing(records) == [False] * len(records)
        [got] = await self._by_key(media_store, "ws", records[0].file.object_key)
        assert got == records[0]
        assert await self._by_key(media_store, "ws", stored.file.object_key) == [stored]
        assert (await media_store.get("ws", "P2")).file.object_key == records[-1].file.object_key

    @pytest.mark.gen_test
    async def test_mission_expectation(self, media_store):
        self._requires(media_store, "mission_expectations")
        group = await media_store.save_mission_expectation("ws", "flight-1", 14)
        assert (group.file_group_id, group.expected_file_count, group.file_count, group.file_uploaded_count) \
            == ("flight-1", 14, 0, 0)
        assert await media_store.get_group("ws", "flight-1") == group
        # A device's totals keep the expectation, and a later expectation keeps the totals.
        reported = await media_store.save_group("ws", GroupReport("flight-1", 12, 9))
        assert (reported.file_count, reported.file_uploaded_count, reported.expected_file_count) == (12, 9, 14)
        later = await media_store.save_mission_expectation("ws", "flight-1", 15)
        assert (later.file_count, later.file_uploaded_count, later.expected_file_count) == (12, 9, 15)
        assert await media_store.get_group("ws", "flight-1") == later
        # Per workspace; a group no dock spoke of has none.
        assert await media_store.get_group("ws-b", "flight-1") is None
        plain = await media_store.save_group("ws", GroupReport("flight-2", 3, 3))
        assert plain.expected_file_count is None

    # ------------------------------------------------------------ the media library (catalogue)

    async def _library(self, store: Any) -> Dict[str, MediaRecord]:
        """Records with known upload times (imported as given), by name: three missions, two
        workspaces, photos and a video, and two records uploaded at the same moment (the
        public id breaks the tie)."""
        base = _dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=_dt.timezone.utc)
        specs: List[Tuple[str, str, int, Dict[str, Any]]] = [
            ("a", "ws", 0, dict(name="DJI_0001_W.JPG", file_group_id="m1", sn="SN1", shoot_lat=22.5, shoot_lng=113.9)),
            ("b", "ws", 1, dict(name="DJI_0002_W.jpeg", file_group_id="m1", sn="SN1", is_original=False)),
            ("c", "ws", 2, dict(name="DJI_0003.MP4", file_group_id="m2", sn="SN2", path="Flight_Bridge",
                                shoot_lat=None, shoot_lng=None, drone_model_key="0-77-0")),
            ("d", "ws", 3, dict(name="notes.txt", file_group_id=None, payload_model_key="1-99-0",
                                created_time=_dt.datetime(2023, 1, 1, tzinfo=_dt.timezone.utc))),
            ("e", "ws", 3, dict(name="DJI_0005.dng", file_group_id="m2", shoot_lat=40.0, shoot_lng=-3.7)),
            ("f", "ws-b", 4, dict(name="DJI_0006.JPG", file_group_id="m1")),
        ]
        records = []
        for tag, ws, minute, changes in specs:
            fingerprint = f"FP{tag.upper()}"
            at = base + _dt.timedelta(minutes=minute)
            file = sample_file(fingerprint, object_key=f"media/{ws}/{tag}", **changes)
            records.append(MediaRecord(ws, file, 1, at, at, public_id=str(uuid.uuid4())))
        assert await store.insert_missing(records) == [True] * len(records)
        return {
            rec.file.object_key.rsplit("/", 1)[1]: rec for rec in records}

    @staticmethod
    def _names(records: Any) -> list:
        return [r.file.object_key.rsplit("/", 1)[1] for r in records]

    @pytest.mark.gen_test
    async def test_find_records_newest_first_and_filters(self, media_store):
        self._requires(media_store, "import", "find_records", "count_records")
        library = await self._library(media_store)
        tie = "".join(sorted(["d", "e"], key=lambda t: library[t].public_id or "", reverse=True))
        found = await media_store.find_records(FileQuery("ws"), 50)
        assert "".join(self._names(found)) == tie + "cba"
        assert found[-1] == library["a"]
        oldest = await media_store.find_records(FileQuery("ws", newest_first=False), 50)
        assert "".join(self._names(oldest)) == "abc" + tie[::-1]
        cases = {
            FileQuery("ws", mission="m1"): "ab",
            FileQuery("ws", sn="SN2"): "c",
            FileQuery("ws", drone_model_key="0-77-0"): "c",
            FileQuery("ws", payload_model_key="1-99-0"): "d",
            FileQuery("ws", kind="photo"): "abe",
            FileQuery("ws", kind="video"): "c",
            FileQuery("ws", kind="other"): "d",
            FileQuery("ws", original=False): "b",
            FileQuery("ws", text="bridge"): "c",
            FileQuery("ws", text="0002_w"): "b",
            FileQuery("ws", uploaded_from=library["b"].created_at, uploaded_to=library["c"].created_at): "bc",
            FileQuery("ws", captured_from=_dt.datetime(2022, 12, 1, tzinfo=_dt.timezone.utc)): "d",
            FileQuery("ws", captured_to=_dt.datetime(2022, 12, 1, tzinfo=_dt.timezone.utc)): "abce",
            FileQuery("ws", bbox=(113.0, 22.0, 114.0, 23.0)): "abd",
            FileQuery("ws", bbox=(-4.0, 39.0, 0.0, 41.0)): "e",
            FileQuery("ws-b"): "f",
            FileQuery("ws-c"): "",
        }
        for query, expected in cases.items():
            got = await media_store.find_records(dataclasses.replace(query, newest_first=False), 50)
            assert "".join(self._names(got)) == expected, query
            assert await media_store.count_records(query) == len(expected), query

    @pytest.mark.gen_test
    async def test_find_records_pages_by_keyset(self, media_store):
        self._requires(media_store, "import", "find_records")
        await self._library(media_store)
        for newest_first in (True, False):
            query = FileQuery("ws", newest_first=newest_first)
            whole = await media_store.find_records(query, 50)
            seen, after = [], None
            while True:
                page = await media_store.find_records(query, 2, after)
                if not page:
                    break
                seen += page
                after = (page[-1].created_at, page[-1].public_id)
            assert seen == whole and len(whole) == 5

    @pytest.mark.gen_test
    async def test_get_by_public_id_and_remove_record(self, media_store):
        self._requires(media_store, "import", "records_by_public_id", "remove_record")
        library = await self._library(media_store)
        a = library["a"]
        assert await media_store.get_by_public_id("ws", a.public_id) == a
        assert await media_store.get_by_public_id("ws-b", a.public_id) is None
        assert await media_store.get_by_public_id("ws", str(uuid.uuid4())) is None
        # Whatever its revision: a rewrite since the read does not save it.
        await media_store.upsert("ws", a.file)
        assert await media_store.remove_record(a) is True
        assert await media_store.get_by_public_id("ws", a.public_id) is None
        assert await media_store.get("ws", a.file.fingerprint) is None
        assert await media_store.remove_record(a) is False
        # Another workspace's record of the same public id is not touched.
        f = library["f"]
        assert await media_store.remove_record(dataclasses.replace(f, workspace_id="ws")) is False
        assert await media_store.get_by_public_id("ws-b", f.public_id) == f

    @pytest.mark.gen_test
    async def test_mission_summaries(self, media_store):
        self._requires(media_store, "import", "mission_summaries", "mission_expectations")
        library = await self._library(media_store)
        await media_store.save_group("ws", GroupReport("m1", 3, 2))
        await media_store.save_mission_expectation("ws", "m9", 4)
        missions = await media_store.mission_summaries("ws", 50)
        by_id = {m.file_group_id: m for m in missions}
        assert set(by_id) == {"m1", "m2", "m9"}
        m1, m2, m9 = by_id["m1"], by_id["m2"], by_id["m9"]
        assert (m1.reported_file_count, m1.reported_uploaded_count, m1.recorded_count, m1.expected_file_count) \
            == (3, 2, 2, None)
        assert (m1.first_upload, m1.last_upload) == (library["a"].created_at, library["b"].created_at)
        assert (m2.reported_file_count, m2.recorded_count, m2.last_upload) == (0, 2, library["e"].created_at)
        assert not m2.reported and m1.reported
        assert (m9.expected_file_count, m9.recorded_count, m9.first_upload) == (4, 0, None)
        # Newest activity first, and keyset pages cover the same list.
        assert [(m.updated_at, m.file_group_id) for m in missions] == sorted(
            ((m.updated_at, m.file_group_id) for m in missions), reverse=True)
        first = await media_store.mission_summaries("ws", 2)
        rest = await media_store.mission_summaries("ws", 2, (first[-1].updated_at, first[-1].file_group_id))
        assert first + rest == missions
        assert [m.file_group_id for m in await media_store.mission_summaries("ws-b", 50)] == ["m1"]


class ObjectStoreContract:
    """Fixtures required: ``object_store``; ``put_object(key, data=b"photo")`` (writes or
    overwrites the object) and ``remove_object(key)``, callables that change the bucket behind
    the store's back; ``unreachable_object_store``, a store of the same kind whose storage
    cannot be reached. The ``list_page`` tests skip for a store without it (capability
    "listing"), the media library's for a store without "presign" or "object_delete".

    Optional: ``fetch_url(url) -> (status, headers, body)``, which GETs a presigned URL as a
    browser would (None, the default, for a store whose URLs cannot be fetched: then only
    their form is checked).
    """

    @pytest.fixture
    def fetch_url(self):
        return None

    @pytest.mark.gen_test
    async def test_present_and_gone(self, object_store, put_object, remove_object):
        key = f"media/ws/{uuid.uuid4().hex}.jpg"
        assert await object_store.exists(key) is False
        put_object(key)
        assert await object_store.exists(key) is True
        remove_object(key)
        assert await object_store.exists(key) is False

    @pytest.mark.gen_test
    async def test_exists_many_answers_each_key(self, object_store, put_object):
        folder = f"media/ws/{uuid.uuid4().hex}/"
        present = [f"{folder}DJI_{i:04d}.JPG" for i in range(0, 24, 2)]
        for key in present:
            put_object(key)
        alone = f"media/ws/{uuid.uuid4().hex}.jpg"
        put_object(alone)
        keys = [f"{folder}DJI_{i:04d}.JPG" for i in range(24)] + [alone, alone + ".gone", present[0]]
        answers = await object_store.exists_many(keys, concurrency=4)
        assert answers == {k: k in present or k == alone for k in keys}

    @pytest.mark.gen_test
    async def test_unreachable_is_an_error_not_gone(self, unreachable_object_store):
        with pytest.raises(StorageUnavailable):
            await unreachable_object_store.exists("media/ws/any.jpg")
        with pytest.raises(StorageUnavailable):
            await unreachable_object_store.ping()
        # Many keys: each one unknown (left out), none reported gone.
        keys = [f"media/ws/f/{i}.jpg" for i in range(20)] + ["media/ws/g.jpg"]
        assert await unreachable_object_store.exists_many(keys) == {}

    @pytest.mark.gen_test
    async def test_ping(self, object_store):
        await object_store.ping()

    # ---- stat and list_page: what the storage sweep asks

    @pytest.mark.gen_test
    async def test_stat_present_overwritten_and_gone(self, object_store, put_object, remove_object):
        key = f"media/ws/{uuid.uuid4().hex}.jpg"
        assert await object_store.stat(key) is None
        put_object(key, b"first photo")
        first = await object_store.stat(key)
        assert first is not None and first.key == key
        assert first.size in (None, len(b"first photo"))  # None: the store cannot tell
        assert first.etag is None or (first.etag and '"' not in first.etag)
        put_object(key, b"the second, longer photo")
        second = await object_store.stat(key)
        assert second is not None and second.size in (None, len(b"the second, longer photo"))
        if first.etag is not None:  # other bytes, another ETag: how the sweep sees an overwrite
            assert second.etag != first.etag
        remove_object(key)
        assert await object_store.stat(key) is None

    @pytest.mark.gen_test
    async def test_stat_and_list_page_unreachable_are_errors(self, unreachable_object_store):
        with pytest.raises(StorageUnavailable):
            await unreachable_object_store.stat("media/ws/any.jpg")
        if has_capability(unreachable_object_store, "listing"):
            with pytest.raises(StorageUnavailable):
                await unreachable_object_store.list_page("media/ws/", None, 10)

    @pytest.fixture
    def listed_folder(self, object_store, put_object):
        """(prefix, its keys in UTF-8 byte order): mixed case, non-ASCII and mission folders,
        beside neighbour folders whose names share the prefix's text but not its folder."""
        if not has_capability(object_store, "listing"):
            pytest.skip(f"{type(object_store).__name__} has no list_page (capability 'listing')")
        prefix = f"media/ws-{uuid.uuid4().hex[:8]}/"
        keys = [prefix + name for name in _LISTED_NAMES]
        for key in keys:
            put_object(key, key.encode("utf-8"))  # every object's own bytes and size
        # "-" sorts before "/" and "0" after it: one neighbour on each side of the folder.
        for neighbour in (prefix[:-1] + "-other/A.JPG", prefix[:-1] + "0/A.JPG", prefix[:-1] + ".jpg"):
            put_object(neighbour)
        return prefix, sorted(keys, key=lambda k: k.encode("utf-8"))

    @pytest.mark.gen_test
    async def test_list_page_pages_through_every_key_in_byte_order(self, object_store, listed_folder):
        prefix, expected = listed_folder
        seen, after, pages = [], None, 0
        while True:
            page = await object_store.list_page(prefix, after, limit=5)
            pages += 1
            assert 0 < len(page.objects) <= 5
            for info in page.objects:
                assert info.size in (None, len(info.key.encode("utf-8")))
            seen += [info.key for info in page.objects]
            if page.next_start_after is None:
                break
            assert page.next_start_after == page.objects[-1].key
            after = page.next_start_after
            assert pages < 2 * len(expected), "the listing does not end"
        assert seen == expected  # no neighbour, nothing twice, nothing left out
        assert pages == -(-len(expected) // 5)

    @pytest.mark.gen_test
    async def test_list_page_start_after_is_exclusive_and_the_end_says_none(self, object_store,
                                                                             listed_folder):
        prefix, expected = listed_folder
        page = await object_store.list_page(prefix, expected[3], limit=100)
        assert [info.key for info in page.objects] == expected[4:]
        assert page.next_start_after is None
        # A start_after that is no key: the keys after it.
        page = await object_store.list_page(prefix, prefix + "b", limit=100)
        assert [info.key for info in page.objects] == [
            k for k in expected if k.encode("utf-8") > (prefix + "b").encode("utf-8")]
        # Exactly the keys left: the page ends the listing.
        page = await object_store.list_page(prefix, None, limit=len(expected))
        assert [info.key for info in page.objects] == expected
        assert page.next_start_after is None
        page = await object_store.list_page(prefix, expected[-1], limit=10)
        assert page.objects == () and page.next_start_after is None
        empty = await object_store.list_page(f"media/ws-{uuid.uuid4().hex[:8]}/", None, limit=10)
        assert empty.objects == () and empty.next_start_after is None

    @pytest.mark.gen_test
    async def test_list_page_orders_a_folder_after_longer_names(self, object_store, put_object):
        """Byte order even where a folder's name is the start of a sibling's ("m/" after
        "m 1/", "m-2/" and "m.jpg"), over pages of every size. A store that cannot list in
        this order must raise StorageUnavailable, never return such a page."""
        if not has_capability(object_store, "listing"):
            pytest.skip(f"{type(object_store).__name__} has no list_page (capability 'listing')")
        prefix = f"media/ws-{uuid.uuid4().hex[:8]}/"
        for name in _FOLDER_ORDER_NAMES:
            put_object(prefix + name)
        expected = [prefix + name for name in _FOLDER_ORDER_NAMES]  # already in byte order
        for limit in range(1, len(expected) + 1):
            seen, after = [], None
            while True:
                page = await object_store.list_page(prefix, after, limit=limit)
                seen += [info.key for info in page.objects]
                after = page.next_start_after
                if after is None or len(seen) > len(expected):
                    break
            assert seen == expected, f"limit {limit}: {seen}"

    @pytest.mark.gen_test
    async def test_list_page_and_stat_agree(self, object_store, listed_folder):
        prefix, expected = listed_folder
        page = await object_store.list_page(prefix, None, limit=100)
        for listed in page.objects[:3]:
            stated = await object_store.stat(listed.key)
            assert stated is not None
            if listed.etag is not None and stated.etag is not None:
                assert listed.etag == stated.etag  # the sweep compares one with the other
            if listed.size is not None and stated.size is not None:
                assert listed.size == stated.size

    # ------------------------------------------------------------ the media library

    @pytest.mark.gen_test
    async def test_presign_get_names_the_file_and_can_be_fetched(self, object_store, put_object, fetch_url):
        MediaStoreContract._requires(object_store, "presign")
        key = f"media/ws/presign/{uuid.uuid4().hex}/DJI_0001_W.JPG"
        put_object(key, b"the bytes")
        url = await object_store.presign_get(key, 900, filename="DJI 0001 \u00e9.JPG")
        inline = await object_store.presign_get(key, 900, inline=True)
        assert "response-content-disposition" in url and "response-content-disposition" not in inline
        assert key.rsplit("/", 1)[1] in url
        if fetch_url is None:
            return
        status, headers, body = fetch_url(url)
        assert (status, body) == (200, b"the bytes")
        disposition = {k.lower(): v for k, v in headers.items()}["content-disposition"]
        assert disposition.startswith('attachment; filename="DJI 0001 _.JPG"') and "%C3%A9" in disposition
        status, headers, body = fetch_url(inline)
        assert (status, body) == (200, b"the bytes")
        assert "content-disposition" not in {k.lower() for k in headers}

    @pytest.mark.gen_test
    async def test_delete_is_idempotent(self, object_store, put_object):
        MediaStoreContract._requires(object_store, "object_delete")
        key = f"media/ws/delete/{uuid.uuid4().hex}.jpg"
        put_object(key)
        assert await object_store.exists(key)
        await object_store.delete(key)
        assert not await object_store.exists(key)
        await object_store.delete(key)  # already gone: no error
        assert not await object_store.exists(key)

    @pytest.mark.gen_test
    async def test_delete_unreachable_is_an_error(self, unreachable_object_store):
        MediaStoreContract._requires(unreachable_object_store, "object_delete")
        with pytest.raises(StorageUnavailable):
            await unreachable_object_store.delete("media/ws/x.jpg")


# Object names of the listing tests: S3's byte order of UTF-8 is not the order of lower-cased
# names nor of a locale ("Z" before "a", "é" after "z"), and mission folders are listed too.
_LISTED_NAMES = ["A.JPG", "Z.jpg", "a.jpg", "a_1.jpg", "a~.jpg", "b.MP4", "z.jpg", "é.jpg", "ü-2.jpg",
                 "中.jpg", "DJI_0001.JPG", "DJI_0010.JPG", "sp ace.jpg", "mission_1/DJI_0002.JPG",
                 "mission/中文.jpg"]
# A folder beside names that extend its name with a character below "/": S3 lists the folder's
# keys after them, a server that walks folders lists them first.
_FOLDER_ORDER_NAMES = ["m 1/y.jpg", "m-2/z.jpg", "m.jpg", "m/x.jpg", "m/y/z.jpg", "m0.jpg"]


class CredentialProviderContract:
    """Fixture required: ``credential_provider``."""

    @pytest.mark.gen_test
    async def test_issue_for_the_workspace_prefix(self, credential_provider):
        grant = await credential_provider.issue("ws-1")
        assert grant.object_key_prefix == credential_provider.object_key_prefix("ws-1")
        assert "ws-1" in grant.object_key_prefix
        assert grant.object_key_prefix != credential_provider.object_key_prefix("ws-2")
        assert grant.provider in ("minio", "aws", "ali")
        assert grant.endpoint.startswith(("http://", "https://"))
        assert grant.bucket
        creds = grant.credentials
        assert creds.access_key_id and creds.secret_access_key
        assert creds.expires_at.tzinfo is not None
        assert creds.seconds_left() > 900

    @pytest.mark.gen_test
    async def test_secret_not_in_repr(self, credential_provider):
        grant = await credential_provider.issue("ws-1")
        assert grant.credentials.secret_access_key not in repr(grant)


class AuthenticatorContract:
    """Fixtures required: ``authenticator``; ``token_for(workspace_id)`` returning a valid token
    for that one workspace (no wildcard) that may upload; ``invalid_token``, a token it must
    refuse. Optional: ``read_only_token``, a valid token for ``ws-1`` with the ``read`` scope and
    not ``upload`` (the default, None, skips that test: not every authenticator can say it).

    Authorisation is ``dji_media.access.authorize``; these tests check that the identity an
    authenticator returns makes it decide right.
    """

    @pytest.fixture
    def read_only_token(self):
        return None

    @pytest.mark.gen_test
    async def test_valid_token_for_its_workspace(self, authenticator, token_for):
        from ..access import UPLOAD, authorize
        from ..values import Identity

        identity = await authenticator.authenticate(token_for("ws-1"))
        assert isinstance(identity, Identity)
        assert isinstance(identity.subject, str) and identity.subject
        assert isinstance(identity.workspaces, frozenset) and isinstance(identity.scopes, frozenset)
        assert all(isinstance(name, str) for name in identity.workspaces | identity.scopes)
        authorize(identity, "ws-1", UPLOAD)  # raises Forbidden if the identity does not allow it

    @pytest.mark.gen_test
    async def test_identity_is_frozen(self, authenticator, token_for):
        import dataclasses

        identity = await authenticator.authenticate(token_for("ws-1"))
        with pytest.raises(dataclasses.FrozenInstanceError):
            identity.scopes = frozenset(("upload", "read", "delete", "devices"))

    @pytest.mark.gen_test
    async def test_missing_token_is_unauthenticated(self, authenticator):
        for token in (None, ""):
            with pytest.raises(Unauthenticated):
                await authenticator.authenticate(token)

    @pytest.mark.gen_test
    async def test_invalid_token_is_unauthenticated(self, authenticator, invalid_token):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(invalid_token)

    @pytest.mark.gen_test
    async def test_other_workspace_is_forbidden(self, authenticator, token_for):
        from ..access import ALL_SCOPES, authorize

        identity = await authenticator.authenticate(token_for("ws-1"))
        for scope in sorted(ALL_SCOPES):
            with pytest.raises(Forbidden, match="workspace"):
                authorize(identity, "ws-2", scope)

    @pytest.mark.gen_test
    async def test_a_scope_the_token_lacks_is_forbidden(self, authenticator, read_only_token):
        from ..access import READ, UPLOAD, authorize

        if read_only_token is None:
            pytest.skip("no read_only_token fixture: this authenticator's tokens cannot be limited")
        identity = await authenticator.authenticate(read_only_token)
        authorize(identity, "ws-1", READ)
        with pytest.raises(Forbidden, match="upload"):
            authorize(identity, "ws-1", UPLOAD)
