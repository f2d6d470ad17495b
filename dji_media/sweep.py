"""The storage sweep: keeping the database honest about the bucket, in the background.

Requests answer from the database: a record confirmed within ``service.verify_window_seconds``
is "known" without asking storage, and a request HEADs only a bounded number of records that
were never confirmed (protocol.md section 4). The sweep is what keeps those confirmations true,
at a cost paid once per period rather than once per request. A pass lists each workspace's
folder (``credentials.object_key_prefix(ws) + "/"``) one page at a time and compares each page
with the records whose object keys fall in the page's range, (previous page's last key, this
page's last key]:

* a listed key with a record: **present**. The record is confirmed (its ETag and size recorded
  the first time). When the recorded ETag or size differs from the listed one, other bytes were
  written under the key: the record is stale (**changed**);
* a record whose key falls in the range but is not listed: its object is **gone**;
* a listed key without a record: counted (**unrecorded**), left alone.

After the last page, the range runs to the end, so records beyond the last listed key are gone.
A stale record is removed only if nobody rewrote it since it was read (``forget``'s revision
check). "Gone" is only ever decided for a range whose page was received in full: a listing that
fails or stops half-way (storage unreachable, a stop, a lost lease) judges nothing beyond the
pages already compared, and the next attempt continues from there.

What is never judged: records outside the workspace's prefix (possible when key prefixes are
not enforced), records written shortly before their page was listed (``min_record_age``: the
device may call back before its upload is visible, and machines' clocks differ), and the
records of a workspace whose whole folder lists empty (a configuration pointing at the wrong
bucket or prefix must not wipe a fleet's records; such records fall back to a HEAD once their
confirmation is older than the window). Each is counted.

One pass at a time per deployment: the pass holds a lease in the database (``SWEEP_TASK``),
renewed as it goes; every process may run ``run_forever`` and the lease picks one. Progress is
saved after every page, with the lease (a process that lost it cannot write), so another pass or
another process resumes where one stopped. The last report is saved too (``load_sweep_state``),
for ``/readyz`` and ``dji-media sweep``.

Transport-free: only the plugin interfaces (``MediaStore``, ``ObjectStore``, ``CredentialProvider``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import json
import logging
import os
import random
import socket
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import StorageUnavailable, Unavailable
from .interfaces import CredentialProvider, MediaStore, ObjectStore
from .service import learns_something, overwritten
from .values import MediaRecord, ObjectInfo, utc_now

__all__ = ["StorageSweep", "SweepReport", "SweepProgress", "SweepState", "load_sweep_state",
           "make_holder_id", "SWEEP_TASK", "FINISHED", "STOPPED", "FAILED", "BUSY", "NOT_DUE"]

log = logging.getLogger("dji_media.sweep")

# The lease's name and the name its task state is saved under (one document: progress and reports).
SWEEP_TASK = "storage-sweep"

# What a call to the sweep came to (SweepReport.outcome).
FINISHED = "finished"  # every workspace compared to the end
STOPPED = "stopped"  # a stop was requested or the lease was lost; the next attempt resumes
FAILED = "failed"  # storage or the database could not answer; the next attempt resumes
BUSY = "busy"  # another process holds the lease: nothing was done
NOT_DUE = "not due"  # another process swept less than a period ago: nothing was done
RUNNING = "running"  # only in saved progress: a pass between two pages

_STATE_VERSION = 1
_HISTORY = 10  # finished passes kept in the state, newest first
_RECORD_BATCH = 1000  # records read per range query
_FORGET_CONCURRENCY = 8
_LOGGED_PER_PASS = 20  # stale records logged one by one per pass; the rest are counted

_COUNTS = ("workspaces", "objects_listed", "present", "confirmed", "changed", "gone", "kept",
           "unrecorded", "outside_prefix", "too_new", "empty_folders", "storage_requests")


def make_holder_id(role: str = "serve") -> str:
    """A lease holder id that names this process for an operator: host, pid, role and a random
    suffix (a pid can be reused after a restart)."""
    # The lease's holder column holds 128 characters: a long host name is cut, not refused (the
    # pid and the random suffix keep holders apart).
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{role[:32]}:{uuid.uuid4().hex[:8]}"


def _iso(value: Optional[_dt.datetime]) -> Optional[str]:
    return value.isoformat() if value is not None else None


def _parse_time(value: Any) -> Optional[_dt.datetime]:
    if not isinstance(value, str):
        return None
    parsed = _dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """What one pass (or one attempt at one) did.

    ``workspaces``: folders listed to the end. ``present``: records whose object was listed
    (``confirmed`` of them had their confirmation written; the others were confirmed recently
    enough). ``changed``/``gone``: stale records removed. ``kept``: stale records rewritten
    meanwhile, and so kept. ``unrecorded``: listed objects without a record, left alone.
    ``outside_prefix``, ``too_new``, ``empty_folders``: not judged (see the module's doc).
    ``storage_requests``: listing requests sent. A resumed pass counts from its first attempt
    (``started_at``), and ``duration_seconds`` adds up the attempts' running times.
    """

    outcome: str
    holder: str
    started_at: Optional[_dt.datetime] = None
    finished_at: Optional[_dt.datetime] = None
    duration_seconds: float = 0.0
    resumed: bool = False
    problem: Optional[str] = None
    workspaces: int = 0
    objects_listed: int = 0
    present: int = 0
    confirmed: int = 0
    changed: int = 0
    gone: int = 0
    kept: int = 0
    unrecorded: int = 0
    outside_prefix: int = 0
    too_new: int = 0
    empty_folders: int = 0
    storage_requests: int = 0

    def counts(self) -> Dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTS}

    def summary(self) -> str:
        """One line for logs and the command line."""
        return (f"{self.workspaces} workspace(s), {self.objects_listed} object(s) listed; records: "
                f"{self.present} present ({self.confirmed} confirmation(s) written), {self.changed} changed, "
                f"{self.gone} gone, {self.kept} rewritten meanwhile and kept; {self.unrecorded} unrecorded "
                f"object(s) left alone; not judged: {self.outside_prefix} outside the prefix, {self.too_new} "
                f"too new, {self.empty_folders} empty folder(s); {self.storage_requests} storage request(s) "
                f"in {self.duration_seconds:.1f} s")

    def as_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["started_at"], data["finished_at"] = _iso(self.started_at), _iso(self.finished_at)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepReport:
        """The report ``as_dict`` made; unknown keys (a newer release's) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["started_at"] = _parse_time(data.get("started_at"))
        values["finished_at"] = _parse_time(data.get("finished_at"))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class SweepProgress:
    """Where an unfinished pass stands: ``report`` holds its counts so far (outcome ``running``
    between two pages, else how its last attempt ended). The pass goes on in ``workspace``
    after the key ``after`` (None: from the folder's start), or, with ``workspace_done``, with
    the next workspace."""

    report: SweepReport
    workspace: str
    after: Optional[str]
    workspace_done: bool = False


@dataclasses.dataclass(frozen=True)
class SweepState:
    """The sweep's saved state: the unfinished pass (if any), the last finished one and the
    last few finished ones, newest first."""

    progress: Optional[SweepProgress] = None
    last: Optional[SweepReport] = None
    history: Tuple[SweepReport, ...] = ()

    def dump(self) -> str:
        progress = None
        if self.progress is not None:
            progress = {"report": self.progress.report.as_dict(), "workspace": self.progress.workspace,
                        "after": self.progress.after, "workspace_done": self.progress.workspace_done}
        return json.dumps({"version": _STATE_VERSION, "progress": progress,
                           "last": self.last.as_dict() if self.last is not None else None,
                           "history": [r.as_dict() for r in self.history]}, sort_keys=True)

    @classmethod
    def parse(cls, text: Optional[str]) -> SweepState:
        """The state ``dump`` wrote. Nothing saved, or a state this release cannot read (another
        version, damaged): an empty state, so the sweep starts a new pass rather than stop."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            if data.get("version") != _STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            progress = None
            if data.get("progress"):
                p = data["progress"]
                progress = SweepProgress(SweepReport.from_dict(p["report"]), str(p["workspace"]),
                                         p.get("after"), bool(p.get("workspace_done")))
            last = SweepReport.from_dict(data["last"]) if data.get("last") else None
            history = tuple(SweepReport.from_dict(r) for r in data.get("history") or ())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("storage sweep: its saved state cannot be read (%s); starting afresh", exc)
            return cls()
        return cls(progress, last, history)


async def load_sweep_state(media_store: MediaStore) -> SweepState:
    """The sweep's saved state (one small read). ``DatabaseUnavailable`` when the database
    cannot answer; ``NotImplementedError`` for a store without task state."""
    return SweepState.parse(await media_store.load_task_state(SWEEP_TASK))


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; whether it was set."""
    if seconds > 0 and not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass
    return stop.is_set()


class _Pass:
    """One pass's running totals and position (mutable, private to the sweep)."""

    def __init__(self, state: SweepState, started_at: _dt.datetime, began: float) -> None:
        # Nobody else writes the state while this pass holds the lease: kept, not read again.
        self.state = state
        before = state.progress.report if state.progress is not None else None
        resumed = state.progress is not None
        self.started_at = started_at
        self.resumed = resumed
        self.counts: Dict[str, int] = before.counts() if before is not None else dict.fromkeys(_COUNTS, 0)
        self.earlier_seconds = before.duration_seconds if before is not None else 0.0
        self.began = began
        self.workspace: Optional[str] = None
        self.after: Optional[str] = None
        self.workspace_done = False
        self.logged = 0

    def add(self, name: str, n: int = 1, also: Optional[Dict[str, int]] = None) -> None:
        self.counts[name] += n
        if also is not None:
            also[name] = also.get(name, 0) + n

    def report(self, outcome: str, holder: str, now: float, finished_at: Optional[_dt.datetime],
               problem: Optional[str] = None) -> SweepReport:
        return SweepReport(outcome=outcome, holder=holder, started_at=self.started_at, finished_at=finished_at,
                           duration_seconds=round(self.earlier_seconds + now - self.began, 3),
                           resumed=self.resumed, problem=problem, **self.counts)


class StorageSweep:
    """Compares the bucket with the records, one listing page at a time (see the module's doc).

    :param period: seconds from the start of one pass to the start of the next (plus a random
        delay of up to ``jitter`` times the period, so processes do not wake together).
    :param pages_per_second: at most this many listing requests per second.
    :param page_size: keys per listing request (S3 answers at most 1,000).
    :param lease_seconds: how long the lease lasts without renewal; it is renewed every third
        of that while a pass runs. A process that dies mid-pass holds the sweep up this long.
    :param clock: the current time (aware UTC): stamps confirmations and reports, and decides
        when a pass is due (shared with other processes through the database).
    :param holder_id: who holds the lease (``make_holder_id()``): unique per process.
    :param verify_window: the service's ``verify_window``, when known. A present record whose
        confirmation will outlast the next two periods is not written again (fewer writes);
        None writes every confirmation.
    :param min_record_age: records written less than this many seconds before their page was
        listed are not judged in this pass.
    :param retry_seconds: after a failed attempt, the next one is this long after it.
    :param monotonic: seconds, for durations and the request rate.
    :param rng: the jitter's random source.
    """

    def __init__(self, media_store: MediaStore, object_store: ObjectStore, credentials: CredentialProvider, *,
                 holder_id: str, period: float = 900.0, pages_per_second: float = 10.0, page_size: int = 1000,
                 lease_seconds: float = 60.0, clock: Callable[[], _dt.datetime] = utc_now,
                 verify_window: Optional[float] = None, min_record_age: float = 300.0,
                 retry_seconds: float = 60.0, jitter: float = 0.05,
                 monotonic: Callable[[], float] = time.monotonic, rng: Optional[random.Random] = None) -> None:
        if period <= 0:
            raise ValueError("period must be > 0")
        if pages_per_second <= 0:
            raise ValueError("pages_per_second must be > 0")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        if lease_seconds < 3:
            raise ValueError("lease_seconds must be >= 3")
        if not holder_id:
            raise ValueError("holder_id must not be empty")
        if min_record_age < 0 or retry_seconds < 0 or not 0 <= jitter <= 1:
            raise ValueError("min_record_age and retry_seconds must be >= 0, jitter between 0 and 1")
        self.media_store = media_store
        self.object_store = object_store
        self.credentials = credentials
        self.holder_id = holder_id
        self.period = period
        self.pages_per_second = pages_per_second
        self.page_size = page_size
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.verify_window = verify_window
        self.min_record_age = min_record_age
        self.retry_seconds = retry_seconds
        self.jitter = jitter
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self._next_request = 0.0
        self._renewed = 0.0
        self._jitter_for: Tuple[Optional[_dt.datetime], float] = (None, 0.0)

    # ------------------------------------------------------------------------ public

    async def run_once(self, stop: Optional[asyncio.Event] = None) -> SweepReport:
        """One pass now (or the rest of an unfinished one), if this process can take the lease
        (else outcome ``busy``). Returns when it finished, failed or ``stop`` was set; what it
        did is saved as it goes."""
        return await self._attempt(stop or asyncio.Event(), due_only=False)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """A ``Runtime`` background task: a pass every ``period`` seconds, counted from the
        start of the previous pass (whichever process ran it), until ``stop`` is set. An
        unfinished pass is resumed first; while another process holds the lease this one
        looks again once that lease would have lapsed."""
        log.info("storage sweep: a pass every %g s, at most %g listing request(s) per second (holder %s)",
                 self.period, self.pages_per_second, self.holder_id)
        while not stop.is_set():
            try:
                wait = await self._seconds_until_due()
            except Unavailable as exc:
                log.warning("storage sweep: cannot read its state (%s); trying again in %g s",
                            exc.message, self.retry_seconds)
                wait = self.retry_seconds
                if await _pause(stop, wait):
                    return
                continue
            if wait > 0:
                if await _pause(stop, wait):
                    return
                continue  # read the state again: another process may have swept meanwhile
            report = await self._attempt(stop, due_only=True)
            if report.outcome == BUSY:
                wait = self.lease_seconds * (1 + self.jitter * self.rng.random())
            elif report.outcome == FAILED or (report.outcome == STOPPED and not stop.is_set()):
                wait = self.retry_seconds
            else:
                wait = 0.0
            if await _pause(stop, wait):
                return

    # ------------------------------------------------------------------------ a pass

    async def _seconds_until_due(self) -> float:
        state = await load_sweep_state(self.media_store)
        now = self.clock()
        if state.progress is not None:
            report = state.progress.report
            if report.outcome == FAILED and report.finished_at is not None:
                # One retry per retry_seconds for the deployment, not one per process.
                return (report.finished_at + _dt.timedelta(seconds=self.retry_seconds) - now).total_seconds()
            return 0.0
        if state.last is None or state.last.started_at is None:
            return 0.0
        started = state.last.started_at
        if self._jitter_for[0] != started:  # one draw per due time, or waking up would move it
            self._jitter_for = (started, self.rng.uniform(0.0, self.jitter * self.period))
        due = started + _dt.timedelta(seconds=self.period + self._jitter_for[1])
        return (due - now).total_seconds()

    async def _attempt(self, stop: asyncio.Event, due_only: bool) -> SweepReport:
        try:
            taken = await self.media_store.acquire_lease(SWEEP_TASK, self.holder_id, self.lease_seconds)
        except Unavailable as exc:
            log.warning("storage sweep: cannot take the lease: %s", exc.message)
            return SweepReport(FAILED, self.holder_id, problem=exc.message)
        if not taken:
            log.debug("storage sweep: another process holds the lease")
            return SweepReport(BUSY, self.holder_id, problem="another process holds the sweep's lease")
        self._renewed = self.monotonic()
        try:
            return await self._sweep(stop, due_only)
        finally:
            try:
                await self.media_store.release_lease(SWEEP_TASK, self.holder_id)
            except Unavailable as exc:  # it lapses by itself after lease_seconds
                log.warning("storage sweep: cannot release the lease: %s", exc.message)

    async def _sweep(self, stop: asyncio.Event, due_only: bool) -> SweepReport:
        began = self.monotonic()
        try:
            state = await load_sweep_state(self.media_store)
        except Unavailable as exc:
            log.warning("storage sweep: cannot read its state: %s", exc.message)
            return SweepReport(FAILED, self.holder_id, problem=exc.message)
        now = self.clock()
        if (due_only and state.progress is None and state.last is not None and state.last.started_at is not None
                and state.last.started_at + _dt.timedelta(seconds=self.period) > now):
            return SweepReport(NOT_DUE, self.holder_id, started_at=state.last.started_at)
        progress = state.progress
        started_at = progress.report.started_at if progress is not None else None
        run = _Pass(state, started_at or now, began)
        if progress is not None:
            log.info("storage sweep: resuming the pass started at %s, in workspace %s (holder %s)",
                     _iso(run.started_at), progress.workspace, self.holder_id)
        else:
            log.info("storage sweep: starting a pass (holder %s)", self.holder_id)
        try:
            problem = await self._workspaces(run, progress, stop)
        except Unavailable as exc:
            report = run.report(FAILED, self.holder_id, self.monotonic(), self.clock(), exc.message)
            log.warning("storage sweep: failed (%s); nothing beyond the pages compared was judged, the next "
                        "attempt resumes in workspace %s. So far: %s", exc.message, run.workspace, report.summary())
            await self._save_unfinished(run, report)
            return report
        if problem is not None:
            report = run.report(STOPPED, self.holder_id, self.monotonic(), self.clock(), problem)
            log.info("storage sweep: stopped (%s); the next attempt resumes in workspace %s. So far: %s",
                     problem, run.workspace, report.summary())
            if problem != _LEASE_LOST:
                await self._save_unfinished(run, report)
            return report
        report = run.report(FINISHED, self.holder_id, self.monotonic(), self.clock())
        finished = SweepState(None, report, (report,) + state.history[:_HISTORY - 1])
        try:
            saved = await self.media_store.save_task_state(SWEEP_TASK, self.holder_id, finished.dump())
        except Unavailable as exc:
            saved = False
            log.warning("storage sweep: cannot save its report: %s", exc.message)
        log.info("storage sweep: finished%s: %s", "" if saved else " (report not saved)", report.summary())
        return report

    async def _save_unfinished(self, run: _Pass, report: SweepReport) -> None:
        if run.workspace is None:
            return  # no workspace begun: the saved progress (if any) still says where to go on
        unfinished = SweepState(SweepProgress(report, run.workspace, run.after, run.workspace_done),
                                run.state.last, run.state.history)
        try:
            await self.media_store.save_task_state(SWEEP_TASK, self.holder_id, unfinished.dump())
        except Unavailable as exc:
            log.warning("storage sweep: cannot save where it stopped: %s", exc.message)

    async def _workspaces(self, run: _Pass, progress: Optional[SweepProgress], stop: asyncio.Event) -> Optional[str]:
        """Sweep every workspace (from where ``progress`` stood); None when all were, else why not."""
        if progress is not None:
            run.workspace, run.after, run.workspace_done = progress.workspace, progress.after, progress.workspace_done
        for workspace in await self.media_store.workspaces():
            if progress is not None:
                if workspace < progress.workspace or (workspace == progress.workspace and progress.workspace_done):
                    continue
                after = progress.after if workspace == progress.workspace else None
            else:
                after = None
            problem = await self._workspace(workspace, after, run, stop)
            if problem is not None:
                return problem
        return None

    async def _workspace(self, workspace: str, after: Optional[str], run: _Pass, stop: asyncio.Event) -> Optional[str]:
        """List one workspace's folder from ``after`` to its end, page by page, comparing each
        page; None when done, else why it stopped (progress is saved after every page)."""
        prefix = self.credentials.object_key_prefix(workspace).rstrip("/") + "/"
        mine: Dict[str, int] = {}
        lower = after  # every record key <= lower was compared already
        start_after = after
        run.workspace, run.after, run.workspace_done = workspace, after, False
        while True:
            if stop.is_set() or not await self._throttle(stop):
                return _STOP_REQUESTED
            if not await self._renew():
                return _LEASE_LOST
            listed_at = self.clock()
            run.add("storage_requests", also=mine)
            page = await self.object_store.list_page(prefix, start_after, self.page_size)
            keys = [o.key for o in page.objects]
            _check_page(prefix, start_after, keys)
            run.add("objects_listed", len(keys), also=mine)
            final = page.next_start_after is None
            if keys or final:
                upto = None if final else keys[-1]
                # A folder that lists empty from its start, while records are expected in it,
                # is more likely a wrong bucket or prefix than a fleet's files all deleted.
                whole_folder_empty = final and not keys and after is None and lower is None
                await self._compare(workspace, prefix, lower, upto, page.objects, listed_at,
                                    not whole_folder_empty, run, mine)
                lower = upto
            if final:
                run.add("workspaces", also=mine)
                run.after, run.workspace_done = None, True
                log.info("storage sweep: workspace %s: %d object(s) listed; records: %d present, %d changed, "
                         "%d gone, %d kept; %d unrecorded object(s); %d storage request(s)", workspace,
                         mine.get("objects_listed", 0), mine.get("present", 0), mine.get("changed", 0),
                         mine.get("gone", 0), mine.get("kept", 0), mine.get("unrecorded", 0),
                         mine.get("storage_requests", 0))
                return None if await self._save_progress(run) else _LEASE_LOST
            run.after = lower
            start_after = page.next_start_after
            if not await self._save_progress(run):
                return _LEASE_LOST

    async def _compare(self, workspace: str, prefix: str, lower: Optional[str], upto: Optional[str],
                       objects: Sequence[ObjectInfo], listed_at: _dt.datetime, judge_gone: bool,
                       run: _Pass, mine: Dict[str, int]) -> None:
        """Judge the workspace's records with keys in (lower, upto] against one page's objects."""
        listed = {o.key: o for o in objects}
        seen = set()
        unlisted_kept = 0
        after = lower
        while True:
            batch = await self.media_store.records_by_object_key(workspace, after, upto, _RECORD_BATCH)
            confirmations: List[Tuple[MediaRecord, ObjectInfo]] = []
            stale: List[Tuple[MediaRecord, str]] = []
            for record in batch:
                key = record.file.object_key
                if (lower is not None and key <= lower) or (upto is not None and key > upto):
                    # The store's order is not storage's (a collation other than byte order):
                    # judging this record against the wrong page could call it gone.
                    log.warning("storage sweep: the store returned %r outside the range asked for; not judged "
                                "(records must come in the byte order of their UTF-8 keys)", key)
                    continue
                if not key.startswith(prefix):
                    run.add("outside_prefix", also=mine)
                    continue
                info = listed.get(key)
                if info is not None:
                    seen.add(key)
                if (listed_at - record.updated_at).total_seconds() < self.min_record_age:
                    run.add("too_new", also=mine)
                elif info is None:
                    if judge_gone:
                        stale.append((record, "gone"))
                    else:
                        unlisted_kept += 1
                elif overwritten(record, info):
                    stale.append((record, "changed"))
                else:
                    run.add("present", also=mine)
                    if self._worth_confirming(record, info, listed_at):
                        confirmations.append((record, info))
            if confirmations:
                await self.media_store.confirm(confirmations, listed_at)
                run.add("confirmed", len(confirmations), also=mine)
            await self._forget(workspace, stale, run, mine)
            # Records sharing the batch's last key beyond the limit are skipped (only a store of
            # an older release holds several records per key): left alone, never judged wrongly.
            if len(batch) < _RECORD_BATCH:
                break
            after = batch[-1].file.object_key
        run.add("unrecorded", len(listed) - len(seen), also=mine)
        if unlisted_kept:
            run.add("empty_folders", also=mine)
            log.warning("storage sweep: the folder %r of workspace %s lists no object at all, yet %d record(s) "
                        "point into it: not judged (a wrong bucket or prefix would otherwise wipe them). Each is "
                        "checked with a HEAD once its confirmation is older than the window.",
                        prefix, workspace, unlisted_kept)

    def _worth_confirming(self, record: MediaRecord, info: ObjectInfo, listed_at: _dt.datetime) -> bool:
        if learns_something(record, info) or self.verify_window is None:
            return True
        if not self.verify_window:
            return False  # without a window the time is never read; the ETag and size are known
        if record.verified_at is None:
            return True
        # Written again only when the confirmation would lapse before the pass after next could
        # renew it: one spare pass, and a third to a half of the writes at the defaults.
        lapses = record.verified_at + _dt.timedelta(seconds=self.verify_window)
        return lapses <= listed_at + _dt.timedelta(seconds=2 * self.period)

    async def _forget(self, workspace: str, stale: List[Tuple[MediaRecord, str]], run: _Pass,
                      mine: Dict[str, int]) -> None:
        limit = asyncio.Semaphore(_FORGET_CONCURRENCY)

        async def forget(record: MediaRecord, kind: str) -> None:
            async with limit:
                removed = await self.media_store.forget(record)
            run.add(kind if removed else "kept", also=mine)
            if run.logged < _LOGGED_PER_PASS:
                run.logged += 1
                # %r: keys come from devices; escaped, they cannot forge log lines.
                log.info("storage sweep: object %r %s; stale record of %s/%r %s", record.file.object_key,
                         "is gone from storage" if kind == "gone" else "was overwritten by other bytes",
                         workspace, record.file.fingerprint,
                         "removed" if removed else "was rewritten meanwhile and kept")
            elif run.logged == _LOGGED_PER_PASS:
                run.logged += 1
                log.info("storage sweep: more stale records in this pass; only their count is logged")

        await asyncio.gather(*(forget(r, kind) for r, kind in stale))

    # ------------------------------------------------------------------------ pacing and the lease

    async def _throttle(self, stop: asyncio.Event) -> bool:
        """Wait for the next listing request's turn; False if stopped meanwhile."""
        wait = self._next_request - self.monotonic()
        if wait > 0 and await _pause(stop, wait):
            return False
        self._next_request = self.monotonic() + 1.0 / self.pages_per_second
        return True

    async def _renew(self) -> bool:
        if self.monotonic() - self._renewed < self.lease_seconds / 3:
            return True
        if not await self.media_store.acquire_lease(SWEEP_TASK, self.holder_id, self.lease_seconds):
            log.warning("storage sweep: lost its lease to another process; stopping")
            return False
        self._renewed = self.monotonic()
        return True

    async def _save_progress(self, run: _Pass) -> bool:
        """Save where the pass stands (only while holding the lease); False: the lease is lost."""
        assert run.workspace is not None
        report = run.report(RUNNING, self.holder_id, self.monotonic(), None)
        current = SweepState(SweepProgress(report, run.workspace, run.after, run.workspace_done),
                             run.state.last, run.state.history)
        if await self.media_store.save_task_state(SWEEP_TASK, self.holder_id, current.dump()):
            return True
        log.warning("storage sweep: lost its lease to another process; stopping")
        return False


_STOP_REQUESTED = "stop requested"
_LEASE_LOST = "the lease was lost"


def _check_page(prefix: str, start_after: Optional[str], keys: List[str]) -> None:
    """A page out of order, or with keys outside the folder, cannot be compared by range:
    storage is misbehaving, and nothing is judged from it."""
    previous = start_after
    for key in keys:
        if not key.startswith(prefix) or (previous is not None and key <= previous):
            raise StorageUnavailable("storage listed keys out of order or outside the folder")
        previous = key
