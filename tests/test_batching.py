"""Reads and writes that share a trip to the database thread (dji_media.backends._batching),
and the peewee store built on them: every caller still gets exactly its own answer."""
from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

from dji_media.backends._batching import MAX_WRITE_BATCH, ReadBatcher, WriteBatcher
from dji_media.backends.peewee_store import PeeweeMediaStore
from dji_media.errors import BadRequest, DatabaseUnavailable
from dji_media.values import MediaFile


async def _run_inline(fn, *args):
    return fn(*args)


@pytest.mark.gen_test
async def test_reads_in_one_turn_share_one_call():
    calls: List[List[int]] = []

    def fetch_many(keys: List[int]) -> List[int]:
        calls.append(list(keys))
        return [k * 10 for k in keys]

    reads = ReadBatcher(fetch_many, _run_inline)
    answers = await asyncio.gather(*(reads.get(k) for k in range(20)))
    assert answers == [k * 10 for k in range(20)]
    assert calls == [list(range(20))]
    assert await reads.get(7) == 70  # a later turn makes a new call
    assert len(calls) == 2


@pytest.mark.gen_test
async def test_a_failed_read_reaches_every_waiter_and_the_next_turn_works():
    fail = [True]

    def fetch_many(keys: List[int]) -> List[int]:
        if fail[0]:
            raise DatabaseUnavailable("down")
        return keys

    reads = ReadBatcher(fetch_many, _run_inline)
    results = await asyncio.gather(*(reads.get(k) for k in range(3)), return_exceptions=True)
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    fail[0] = False
    assert await asyncio.gather(reads.get(1), reads.get(2)) == [1, 2]


@pytest.mark.gen_test
async def test_a_cancelled_reader_does_not_disturb_the_others():
    gate = asyncio.Event()

    async def run(fn, *args):
        await gate.wait()
        return fn(*args)

    reads = ReadBatcher(lambda keys: list(keys), run)
    first = asyncio.ensure_future(reads.get(1))
    second = asyncio.ensure_future(reads.get(2))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == 2
    assert first.cancelled()


class _Recorder:
    """write_batch for WriteBatcher: runs jobs in order, all-or-nothing, counting batches."""

    def __init__(self) -> None:
        self.batches: List[int] = []
        self.committed: List[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, jobs):
        await self.gate.wait()
        self.batches.append(len(jobs))
        results = [fn(*args) for fn, args in jobs]  # raises: nothing of the batch committed
        self.committed.extend(results)
        return results


@pytest.mark.gen_test
async def test_writes_queued_during_a_commit_go_into_the_next_batch():
    recorder = _Recorder()
    writes = WriteBatcher(recorder)
    recorder.gate.clear()
    first = asyncio.ensure_future(writes.submit(lambda: "first"))
    await asyncio.sleep(0)  # the first batch is now waiting on the gate
    rest = [asyncio.ensure_future(writes.submit(lambda i=i: i)) for i in range(100)]
    recorder.gate.set()
    assert await first == "first"
    assert await asyncio.gather(*rest) == list(range(100))
    assert recorder.batches == [1, MAX_WRITE_BATCH, 100 - MAX_WRITE_BATCH]


@pytest.mark.gen_test
async def test_a_job_error_reaches_only_its_caller_and_the_others_commit():
    recorder = _Recorder()
    writes = WriteBatcher(recorder)

    def bad():
        raise BadRequest("this one is wrong")

    results = await asyncio.gather(writes.submit(lambda: 1), writes.submit(bad), writes.submit(lambda: 3),
                                   return_exceptions=True)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], BadRequest)
    assert recorder.committed == [1, 3]  # the failed batch of three committed nothing
    assert recorder.batches == [3, 1, 1, 1]


@pytest.mark.gen_test
async def test_an_unavailable_database_fails_the_batch_at_once():
    recorder = _Recorder()
    writes = WriteBatcher(recorder)

    def down():
        raise DatabaseUnavailable("down")

    results = await asyncio.gather(*(writes.submit(down) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    assert recorder.batches == [5]  # not retried one by one


@pytest.mark.gen_test
async def test_store_answers_each_concurrent_caller_with_its_own_record(tmp_path):
    store = PeeweeMediaStore(url=f"sqlite:///{tmp_path / 'media.sqlite3'}")
    try:
        files = [MediaFile(fingerprint=f"fp-{i}", object_key=f"media/ws/{i}.jpg", tiny_fingerprint=f"t-{i}",
                           name=f"{i}.jpg", is_original=bool(i % 2), raw_json="{}") for i in range(150)]
        written = await asyncio.gather(*(store.upsert("ws", f) for f in files))
        assert [r.file for r in written] == files
        assert {r.revision for r in written} == {1}
        again = await asyncio.gather(*(store.upsert("ws", f) for f in files[:10]))
        assert {r.revision for r in again} == {2}

        keys = [f"fp-{i}" for i in range(0, 300, 3)]  # every third, half of them unknown
        found = await asyncio.gather(*(store.get("ws", k) for k in keys))
        for key, record in zip(keys, found):
            index = int(key.split("-")[1])
            if index < 150:
                assert record is not None and record.file == files[index]
            else:
                assert record is None
        assert await store.get("other-ws", "fp-1") is None
    finally:
        await store.close()
