"""The storage sweep (dji_media.sweep) on the in-memory backends: what a pass judges, page by
page, and what it must never judge; a listing that stops half-way; the lease; resuming; the
saved report and how /readyz shows it; the period between passes.

tests/test_storage_truth.py repeats what matters against SeaweedFS and SQLite files.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json

import pytest
import tornado.web

from dji_media import (
    InMemoryMediaStore,
    InMemoryObjectStore,
    MediaService,
    NotFoundHandler,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
    StorageUnavailable,
    get_health_handlers,
)
from dji_media.capabilities import FEATURES, has_capability
from dji_media.sweep import (
    BUSY,
    FAILED,
    FINISHED,
    NOT_DUE,
    STOPPED,
    SWEEP_TASK,
    StorageSweep,
    SweepReport,
    SweepState,
    load_sweep_state,
)
from dji_media.testing.contracts import sample_file
from dji_media.values import utc_now
from dji_media.web.health import SweepStatus

WS = "ws"
PREFIX = "media/ws/"
CREDENTIALS = StaticCredentialProvider(endpoint="http://s3:9000", access_key="a", secret_key="b", bucket="media")


def store_and_objects():
    store, objects = InMemoryMediaStore(), InMemoryObjectStore()
    assert all(has_capability(store, name) or has_capability(objects, name) for name in FEATURES["sweep"])
    return store, objects


def make_sweep(store, objects, *, holder="holder-a", **options):
    options.setdefault("min_record_age", 0)  # the records of these tests were all written just now
    options.setdefault("pages_per_second", 1000)
    return StorageSweep(store, objects, CREDENTIALS, holder_id=holder, **options)


async def record(store, objects, name, *, ws=WS, stored=True, data=b"photo"):
    """A record of ``name`` under the workspace's prefix, its object in the bucket if ``stored``."""
    key = f"media/{ws}/{name}"
    if stored:
        objects.put(key, data)
    return await store.upsert(ws, sample_file(name.upper().replace(".", "_").replace("/", "_"), object_key=key))


async def keys_of(store, ws=WS):
    return {r.file.object_key for r in await store.records_by_object_key(ws, None, None, 10_000)}


# ------------------------------------------------------------------------------ judging

@pytest.mark.gen_test
async def test_a_pass_confirms_present_removes_gone_and_counts_unrecorded():
    store, objects = store_and_objects()
    present = [await record(store, objects, f"p{i}.jpg") for i in range(3)]
    await record(store, objects, "gone.jpg", stored=False)
    objects.put(PREFIX + "nobody-called-back.jpg")
    report = await make_sweep(store, objects).run_once()
    assert report.outcome == FINISHED and not report.resumed
    assert (report.workspaces, report.objects_listed, report.present, report.gone, report.unrecorded) == (1, 4, 3, 1, 1)
    assert report.storage_requests == 1 and objects.calls_by_kind["list"] == 1
    assert await keys_of(store) == {r.file.object_key for r in present}
    for r in present:
        stored = await store.get(WS, r.file.fingerprint)
        assert stored.verified_at is not None and (stored.etag, stored.size) == (hashlib.md5(b"photo").hexdigest(), 5)
    assert PREFIX + "nobody-called-back.jpg" in objects.keys  # an unrecorded object is left alone


@pytest.mark.gen_test
async def test_an_object_overwritten_by_other_bytes_is_changed_and_its_record_removed():
    store, objects = store_and_objects()
    mine = await record(store, objects, "a.jpg", data=b"the first photo")
    other = await record(store, objects, "b.jpg", data=b"another photo")
    assert (await make_sweep(store, objects).run_once()).present == 2
    objects.put(mine.file.object_key, b"something else entirely")  # same key, other bytes
    report = await make_sweep(store, objects).run_once()
    assert (report.present, report.changed, report.gone) == (1, 1, 0)
    assert await store.get(WS, mine.file.fingerprint) is None
    assert await store.get(WS, other.file.fingerprint) is not None


@pytest.mark.gen_test
async def test_a_record_rewritten_during_the_pass_is_kept():
    store, objects = store_and_objects()
    gone = await record(store, objects, "gone.jpg", stored=False)
    await record(store, objects, "kept.jpg")

    # Between the sweep's read of the records and its delete, the device calls back again.
    real = store.records_by_object_key

    async def read_then_rewrite(*args, **kwargs):
        found = await real(*args, **kwargs)
        await store.upsert(WS, gone.file)
        return found

    store.records_by_object_key = read_then_rewrite
    report = await make_sweep(store, objects).run_once()
    assert (report.gone, report.kept) == (0, 1)
    assert (await store.get(WS, gone.file.fingerprint)).revision == gone.revision + 1


@pytest.mark.gen_test
async def test_pages_compare_their_own_range_and_the_last_runs_to_the_end():
    store, objects = store_and_objects()
    names = [f"k{i}.jpg" for i in range(9)]
    missing = {"k0.jpg", "k4.jpg", "k5.jpg", "k8.jpg"}  # first, middle of a page, a page boundary, last
    for name in names:
        await record(store, objects, name, stored=name not in missing)
    report = await make_sweep(store, objects, page_size=2).run_once()
    assert report.outcome == FINISHED
    assert (report.objects_listed, report.present, report.gone) == (5, 5, 4)
    assert report.storage_requests == objects.calls_by_kind["list"] == 3
    assert await keys_of(store) == {PREFIX + n for n in names if n not in missing}


@pytest.mark.gen_test
async def test_records_outside_the_prefix_and_too_new_records_are_not_judged():
    store, objects = store_and_objects()
    await store.upsert(WS, sample_file("OUT1", object_key="elsewhere/ws/x.jpg"))  # prefixes not enforced
    await store.upsert(WS, sample_file("OUT2", object_key="media/ws-other/y.jpg"))
    await record(store, objects, "present.jpg")
    young = await record(store, objects, "young.jpg", stored=False)
    report = await make_sweep(store, objects, min_record_age=300,
                              clock=lambda: young.updated_at + _dt.timedelta(seconds=10)).run_once()
    assert (report.outside_prefix, report.too_new, report.gone) == (2, 2, 0)
    assert len(await keys_of(store)) == 4
    later = young.updated_at + _dt.timedelta(seconds=301)
    report = await make_sweep(store, objects, min_record_age=300, clock=lambda: later).run_once()
    assert (report.outside_prefix, report.too_new, report.gone, report.present) == (2, 0, 1, 1)


@pytest.mark.gen_test
async def test_a_folder_that_lists_empty_is_not_taken_for_every_file_gone(caplog):
    store, objects = store_and_objects()
    for i in range(3):
        await record(store, objects, f"f{i}.jpg", stored=False)  # a wrong bucket looks like this
    with caplog.at_level("WARNING", logger="dji_media.sweep"):
        report = await make_sweep(store, objects).run_once()
    assert (report.outcome, report.gone, report.empty_folders) == (FINISHED, 0, 1)
    assert len(await keys_of(store)) == 3
    assert "lists no object at all, yet 3 record(s)" in caplog.text
    await record(store, objects, "back.jpg")  # one object listed: the folder is judged again
    report = await make_sweep(store, objects).run_once()
    assert (report.gone, report.present, report.empty_folders) == (3, 1, 0)


@pytest.mark.gen_test
async def test_every_workspace_holding_records_is_swept_under_its_own_prefix():
    store, objects = store_and_objects()
    for ws in ("ws-a", "ws-b"):
        await record(store, objects, "kept.jpg", ws=ws)
        await record(store, objects, "gone.jpg", ws=ws, stored=False)
    objects.put("media/ws-c/no-records.jpg")  # a folder without records is not listed
    report = await make_sweep(store, objects).run_once()
    assert (report.workspaces, report.present, report.gone, report.storage_requests) == (2, 2, 2, 2)
    assert await keys_of(store, "ws-a") == {"media/ws-a/kept.jpg"}


# ------------------------------------------------------------------------------ stopping half-way

class FailingAfter(InMemoryObjectStore):
    """Lists like the in-memory bucket, until ``fail_from`` listing requests were answered."""

    def __init__(self, fail_from: int) -> None:
        super().__init__()
        self.fail_from = fail_from

    async def list_page(self, prefix, start_after, limit=1000):
        if self.calls_by_kind["list"] >= self.fail_from:
            self.calls_by_kind["list"] += 1
            raise StorageUnavailable("storage is unreachable (simulated)")
        return await super().list_page(prefix, start_after, limit)


@pytest.mark.gen_test
async def test_a_listing_that_fails_half_way_judges_nothing_beyond_the_pages_received():
    store, objects = InMemoryMediaStore(), FailingAfter(fail_from=2)
    names = [f"k{i}.jpg" for i in range(6)]
    for name in names:
        await record(store, objects, name, stored=name != "k5.jpg")  # k5 would be judged by page 3
    await record(store, objects, "zz-after-the-last.jpg", stored=False)
    before = {r.file.object_key: r for r in await store.records_by_object_key(WS, None, None, 100)}
    report = await make_sweep(store, objects, page_size=2).run_once()
    assert (report.outcome, report.gone, report.present, report.storage_requests) == (FAILED, 0, 4, 3)
    assert report.problem == "storage is unreachable (simulated)"
    after = {r.file.object_key: r for r in await store.records_by_object_key(WS, None, None, 100)}
    assert set(after) == set(before)  # every record is still there
    assert all(after[k].revision == before[k].revision for k in after)
    state = await load_sweep_state(store)
    assert state.last is None and state.progress.workspace == WS and state.progress.after == PREFIX + "k3.jpg"
    assert state.progress.report.outcome == FAILED

    objects.fail_from = 1000  # storage is back: the next attempt resumes after k3
    report = await make_sweep(store, objects, page_size=2).run_once()
    assert report.outcome == FINISHED and report.resumed
    assert (report.present, report.gone, report.storage_requests) == (5, 2, 4)  # counted from the first attempt
    assert await keys_of(store) == {PREFIX + n for n in names if n != "k5.jpg"}
    assert (await load_sweep_state(store)).progress is None


@pytest.mark.gen_test
async def test_a_stop_between_pages_keeps_the_progress_and_the_next_pass_resumes():
    store, objects = store_and_objects()
    for i in range(5):
        await record(store, objects, f"k{i}.jpg", stored=i != 4)
    stop = asyncio.Event()
    sweep = make_sweep(store, objects, page_size=2)
    real = objects.list_page

    async def stop_after_first(*args, **kwargs):
        page = await real(*args, **kwargs)
        stop.set()
        return page

    objects.list_page = stop_after_first
    report = await sweep.run_once(stop)
    assert (report.outcome, report.problem, report.storage_requests, report.gone) == (STOPPED, "stop requested", 1, 0)
    objects.list_page = real
    report = await sweep.run_once()
    assert (report.outcome, report.resumed, report.gone, report.present, report.storage_requests) == (
        FINISHED, True, 1, 4, 2)


# ------------------------------------------------------------------------------ the lease

@pytest.mark.gen_test
async def test_one_pass_at_a_time_and_a_lost_lease_stops_the_pass():
    store, objects = store_and_objects()
    for i in range(4):
        await record(store, objects, f"k{i}.jpg")
    assert await store.acquire_lease(SWEEP_TASK, "someone-else", 60)
    report = await make_sweep(store, objects).run_once()
    assert report.outcome == BUSY and objects.calls_by_kind["list"] == 0
    await store.release_lease(SWEEP_TASK, "someone-else")

    # Mid-pass, the lease lapses and another process takes it: this one stops at its next save.
    real = objects.list_page

    async def lose_the_lease(*args, **kwargs):
        await store.release_lease(SWEEP_TASK, "holder-a")
        assert await store.acquire_lease(SWEEP_TASK, "someone-else", 60)
        return await real(*args, **kwargs)

    objects.list_page = lose_the_lease
    report = await make_sweep(store, objects, page_size=2).run_once()
    assert (report.outcome, report.problem, report.storage_requests) == (STOPPED, "the lease was lost", 1)
    assert (await load_sweep_state(store)).progress is None  # it could not write without the lease


# ------------------------------------------------------------------------------ pacing

@pytest.mark.gen_test
async def test_listing_requests_are_paced():
    store, objects = store_and_objects()
    sweep = make_sweep(store, objects, pages_per_second=0.5, monotonic=lambda: 100.0)
    stop = asyncio.Event()
    assert await sweep._throttle(stop)  # the first request goes at once
    stop.set()  # the second must wait 2 s: set, the wait ends with "stop" instead of a request
    assert not await sweep._throttle(stop)


# ------------------------------------------------------------------------------ reports

@pytest.mark.gen_test
async def test_the_last_report_and_a_short_history_are_saved():
    store, objects = store_and_objects()
    await record(store, objects, "a.jpg")
    sweep = make_sweep(store, objects)
    first = await sweep.run_once()
    second = await sweep.run_once()
    state = await load_sweep_state(store)
    assert state.last == second and state.history == (second, first) and state.progress is None
    assert SweepReport.from_dict(json.loads(json.dumps(second.as_dict()))) == second
    assert SweepState.parse(state.dump()) == state
    assert SweepState.parse("{not json") == SweepState() == SweepState.parse(json.dumps({"version": 99}))


@pytest.mark.gen_test
async def test_the_report_on_readyz(http_client, base_url, store, objects):
    async def readyz():
        response = await http_client.fetch(base_url + "/readyz", raise_error=False)
        return response.code, json.loads(response.body)

    status, env = await readyz()
    assert (status, env["data"]) == (200, {"database": "ok", "storage": "ok",
                                            "sweep": {"last_pass": "never", "in_progress": False}})
    await record(store, objects, "a.jpg")
    report = await make_sweep(store, objects).run_once()
    status, env = await readyz()
    assert env["data"]["sweep"] == {"last_pass": "never", "in_progress": False}  # cached for a few seconds
    shown = SweepStatus.render(report, in_progress=False)
    assert shown["last_pass"] == report.finished_at.isoformat() and shown["present"] == 1
    store.unavailable = True  # readiness fails for the database, never for the report
    status, env = await readyz()
    assert status == 503 and env["data"]["database"] == "unavailable"


@pytest.fixture
def store():
    return InMemoryMediaStore()


@pytest.fixture
def objects():
    return InMemoryObjectStore()


@pytest.fixture
def app(store, objects):
    service = MediaService(media_store=store, object_store=objects, credentials=CREDENTIALS,
                           authenticator=StaticTokenAuthenticator(tokens={"token-1234": [WS]}))
    return tornado.web.Application(get_health_handlers(service, sweep=True, sweep_cache_seconds=3600),
                                   default_handler_class=NotFoundHandler)


@pytest.mark.gen_test
async def test_a_fresh_cache_is_not_read_again_and_a_failed_read_shows_unavailable():
    store, objects = store_and_objects()
    now = [0.0]
    service = MediaService(media_store=store, object_store=objects, credentials=CREDENTIALS,
                           authenticator=StaticTokenAuthenticator(tokens={"token-1234": [WS]}))
    status = SweepStatus(service, ttl=5, monotonic=lambda: now[0])
    assert (await status.shown())["last_pass"] == "never"
    await record(store, objects, "a.jpg")
    report = await make_sweep(store, objects).run_once()
    now[0] = 4.9
    assert (await status.shown())["last_pass"] == "never"
    now[0] = 5.0
    assert (await status.shown())["last_pass"] == report.finished_at.isoformat()
    store.unavailable = True
    now[0] = 10.0
    assert await status.shown() == "unavailable"


# ------------------------------------------------------------------------------ the period

@pytest.mark.gen_test(timeout=30)
async def test_two_processes_sweep_once_per_period():
    store, objects = store_and_objects()
    await record(store, objects, "a.jpg")
    period = 0.3
    sweeps = [make_sweep(store, objects, holder=h, period=period, lease_seconds=3, retry_seconds=0.05)
              for h in ("holder-a", "holder-b")]
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(s.run_forever(stop)) for s in sweeps]
    try:
        for _ in range(600):  # bounded: at most 30 s
            state = await load_sweep_state(store)
            if len(state.history) >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    state = await load_sweep_state(store)
    passes = list(reversed(state.history))
    assert len(passes) >= 4
    assert all(p.outcome == FINISHED for p in passes)
    # One pass per period for both processes together: no two passes closer than the period
    # (the due time comes from the last pass's start in the database, the lease does the rest).
    for earlier, later in zip(passes, passes[1:]):
        assert later.started_at >= earlier.started_at + _dt.timedelta(seconds=period)
        assert later.started_at >= earlier.finished_at
    in_progress = state.progress.report.storage_requests if state.progress else 0
    assert objects.calls_by_kind["list"] == sum(p.storage_requests for p in passes) + in_progress


@pytest.mark.gen_test
async def test_a_pass_is_not_due_before_its_period():
    store, objects = store_and_objects()
    await record(store, objects, "a.jpg")
    now = [utc_now()]
    sweep = make_sweep(store, objects, period=900, jitter=0, clock=lambda: now[0])
    assert (await sweep.run_once()).outcome == FINISHED
    assert await sweep._seconds_until_due() == 900
    assert (await sweep._attempt(asyncio.Event(), due_only=True)).outcome == NOT_DUE
    now[0] += _dt.timedelta(seconds=900)
    assert await sweep._seconds_until_due() == 0
    assert (await sweep._attempt(asyncio.Event(), due_only=True)).outcome == FINISHED
