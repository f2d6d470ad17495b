"""In-memory backends: for tests, demos and as the reference behaviour of each contract.

They keep everything in process memory, so they suit one process and lose all on restart.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import hashlib
import math
import urllib.parse
import uuid
from typing import Any, Callable, Counter, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import DatabaseUnavailable, StorageUnavailable
from ..interfaces import MediaStore, ObjectStore
from ..values import (
    FileGroup,
    FileQuery,
    GroupReport,
    ListingPage,
    MediaFile,
    MediaRecord,
    MissionCursor,
    MissionSummary,
    ObjectInfo,
    RecordCursor,
    content_disposition,
    utc_now,
)


def _ident(file: MediaFile) -> str:
    """A record's key within its workspace: its fingerprint, or for a file without one (a
    dock's) its object key behind a NUL, which no fingerprint holds (rules refuse control
    characters), so the two kinds never meet in ``get``."""
    return file.fingerprint if file.fingerprint is not None else "\x00" + file.object_key


class InMemoryMediaStore(MediaStore):
    """A MediaStore in a dict. Each method completes without awaiting, so it is atomic on the
    event loop. ``unavailable`` makes every call fail as a database outage would.

    ``clock`` (aware UTC, ``utc_now`` by default) times records and leases; a test may pass
    its own to move leases past their expiry. Leases and task state live in this object, so
    they order the tasks of one process only: share one store between the holders.
    """

    def __init__(self, *, clock: Callable[[], _dt.datetime] = utc_now) -> None:
        self._records: Dict[Tuple[str, str], MediaRecord] = {}
        # Which record (``_ident``) holds each (workspace, object key): one object key, one record.
        self._by_object_key: Dict[Tuple[str, str], str] = {}
        self._groups: Dict[Tuple[str, str], FileGroup] = {}
        self._leases: Dict[str, Tuple[str, _dt.datetime]] = {}
        self._task_states: Dict[str, str] = {}
        self._clock = clock
        self.unavailable = False

    def __getattribute__(self, name: str) -> Any:
        # One switch for every method of the interface, as a lost database fails them all.
        if name in _STORE_METHODS and object.__getattribute__(self, "unavailable"):
            return _unavailable
        return object.__getattribute__(self, name)

    def _put(self, record: MediaRecord) -> None:
        key = (record.workspace_id, _ident(record.file))
        old = self._records.get(key)
        if old is not None and old.file.object_key != record.file.object_key:
            self._by_object_key.pop((record.workspace_id, old.file.object_key), None)
        self._records[key] = record
        self._by_object_key[(record.workspace_id, record.file.object_key)] = key[1]

    def _drop(self, key: Tuple[str, str]) -> None:
        record = self._records.pop(key)
        place = (record.workspace_id, record.file.object_key)
        if self._by_object_key.get(place) == key[1]:
            del self._by_object_key[place]

    async def get(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        record = self._records.get((workspace_id, fingerprint))
        return record if record is not None and record.file.fingerprint is not None else None

    async def find_by_tiny_fingerprints(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> List[MediaRecord]:
        wanted = set(tiny_fingerprints)
        return [
            r for (ws, _), r in self._records.items()
            if ws == workspace_id and r.file.tiny_fingerprint in wanted
        ]

    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        key = (workspace_id, _ident(file))
        now = self._clock()
        # One object key, one record: another fingerprint's record of this key goes (a dock's
        # record of the key, too, and a dock's write replaces a Pilot record of its key).
        holder = self._by_object_key.get((workspace_id, file.object_key))
        if holder is not None and holder != key[1]:
            self._drop((workspace_id, holder))
        old = self._records.get(key)
        if old is not None:
            # Callbacks carry neither: a write without one keeps the stored one, as the peewee store does.
            kept = {name: getattr(old.file, name) for name in ("job_id", "payload_name")
                    if getattr(file, name) is None and getattr(old.file, name) is not None}
            if kept:
                file = dataclasses.replace(file, **kept)
        record = MediaRecord(
            workspace_id=workspace_id,
            file=file,
            revision=(old.revision + 1) if old else 1,
            created_at=old.created_at if old else now,
            updated_at=now,
            # verified_at, etag and size start again at None: these bytes are not confirmed yet.
            public_id=old.public_id if old is not None and old.public_id else str(uuid.uuid4()),
        )
        self._put(record)
        return record

    async def mark_verified(self, records: Sequence[MediaRecord], when: _dt.datetime) -> None:
        for record in records:
            key = (record.workspace_id, _ident(record.file))
            current = self._records.get(key)
            if current is not None and current.revision == record.revision:
                self._records[key] = dataclasses.replace(current, verified_at=when)

    async def forget(self, record: MediaRecord) -> bool:
        key = (record.workspace_id, _ident(record.file))
        current = self._records.get(key)
        if current is None or current.revision != record.revision:
            return False
        self._drop(key)
        return True

    async def insert_missing(self, records: Sequence[MediaRecord]) -> List[bool]:
        # A record whose fingerprint, or whose object key under another fingerprint, is held
        # already (stored, or earlier in this call) is not inserted: the first wins.
        inserted = []
        for record in records:
            key = (record.workspace_id, _ident(record.file))
            free = key not in self._records and (record.workspace_id, record.file.object_key) not in self._by_object_key
            inserted.append(free)
            if free:
                self._put(record if record.public_id else dataclasses.replace(record, public_id=str(uuid.uuid4())))
        return inserted

    async def save_group(self, workspace_id: str, report: GroupReport) -> FileGroup:
        group = FileGroup(
            workspace_id=workspace_id,
            file_group_id=report.file_group_id,
            file_count=report.file_count,
            file_uploaded_count=report.file_uploaded_count,
            updated_at=self._clock(),
        )
        old = self._groups.get((workspace_id, report.file_group_id))
        if old is not None and old.expected_file_count is not None:
            # A device's totals leave a dock's expectation as it was.
            group = dataclasses.replace(group, expected_file_count=old.expected_file_count)
        self._groups[(workspace_id, report.file_group_id)] = group
        return group

    async def save_mission_expectation(self, workspace_id: str, file_group_id: str,
                                       expected_file_count: int) -> FileGroup:
        old = self._groups.get((workspace_id, file_group_id))
        group = FileGroup(
            workspace_id=workspace_id, file_group_id=file_group_id,
            file_count=old.file_count if old is not None else 0,
            file_uploaded_count=old.file_uploaded_count if old is not None else 0,
            updated_at=self._clock(), expected_file_count=expected_file_count)
        self._groups[(workspace_id, file_group_id)] = group
        return group

    async def get_group(self, workspace_id: str, file_group_id: str) -> Optional[FileGroup]:
        return self._groups.get((workspace_id, file_group_id))

    # -------------------------------------------------- storage truth (the sweep)

    async def workspaces(self) -> List[str]:
        return sorted({workspace_id for workspace_id, _ in self._records})

    async def records_by_object_key(self, workspace_id: str, after: Optional[str], upto: Optional[str],
                                    limit: int) -> List[MediaRecord]:
        # S3's order: the bytes of the UTF-8 keys.
        low = after.encode("utf-8") if after is not None else None
        high = upto.encode("utf-8") if upto is not None else None
        chosen = []
        for (ws, object_key), ident in self._by_object_key.items():
            if ws != workspace_id:
                continue
            encoded = object_key.encode("utf-8")
            if (low is None or encoded > low) and (high is None or encoded <= high):
                chosen.append((encoded, ident))
        chosen.sort()
        return [self._records[(workspace_id, ident)] for _, ident in chosen[:max(limit, 0)]]

    async def confirm(self, confirmations: Sequence[Tuple[MediaRecord, ObjectInfo]], when: _dt.datetime) -> None:
        for record, info in confirmations:
            key = (record.workspace_id, _ident(record.file))
            current = self._records.get(key)
            if current is None or current.revision != record.revision:
                continue
            # The first confirmation records what storage said; later ones never overwrite it.
            self._records[key] = dataclasses.replace(
                current, verified_at=when,
                etag=current.etag if current.etag is not None else info.etag,
                size=current.size if current.size is not None else info.size)

    def _holder(self, name: str) -> Optional[str]:
        lease = self._leases.get(name)
        if lease is None or lease[1] <= self._clock():
            return None
        return lease[0]

    async def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"lease seconds must be a positive number: {seconds!r}")
        if self._holder(name) not in (None, holder):
            return False
        self._leases[name] = (holder, self._clock() + _dt.timedelta(seconds=seconds))
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        lease = self._leases.get(name)
        if lease is not None and lease[0] == holder:
            del self._leases[name]

    async def load_task_state(self, name: str) -> Optional[str]:
        return self._task_states.get(name)

    async def save_task_state(self, name: str, holder: str, state: str) -> bool:
        if self._holder(name) != holder:
            return False
        self._task_states[name] = state
        return True

    # -------------------------------------------------- the media library (catalogue)

    def _matching(self, query: FileQuery) -> List[MediaRecord]:
        found = [r for r in self._records.values() if query.matches(r)]
        found.sort(key=lambda r: (r.created_at, r.public_id or ""), reverse=query.newest_first)
        return found

    async def find_records(self, query: FileQuery, limit: int,
                           after: Optional[RecordCursor] = None) -> List[MediaRecord]:
        found = self._matching(query)
        if after is not None:
            if query.newest_first:
                found = [r for r in found if (r.created_at, r.public_id or "") < after]
            else:
                found = [r for r in found if (r.created_at, r.public_id or "") > after]
        return found[:max(limit, 0)]

    async def count_records(self, query: FileQuery) -> int:
        return len(self._matching(query))

    async def get_by_public_id(self, workspace_id: str, public_id: str) -> Optional[MediaRecord]:
        for (ws, _), record in self._records.items():
            if ws == workspace_id and record.public_id == public_id:
                return record
        return None

    async def remove_record(self, record: MediaRecord) -> bool:
        for key, current in list(self._records.items()):
            if key[0] == record.workspace_id and current.public_id == record.public_id:
                self._drop(key)
                return True
        return False

    async def mission_summaries(self, workspace_id: str, limit: int,
                                after: Optional[MissionCursor] = None) -> List[MissionSummary]:
        uploads: Dict[str, List[_dt.datetime]] = {}
        for (ws, _), record in self._records.items():
            if ws == workspace_id and record.file.file_group_id is not None:
                uploads.setdefault(record.file.file_group_id, []).append(record.created_at)
        groups = {g.file_group_id: g for (ws, _), g in self._groups.items() if ws == workspace_id}
        summaries = [_summary(workspace_id, mission, groups.get(mission), uploads.get(mission, []))
                     for mission in set(uploads) | set(groups)]
        summaries.sort(key=lambda m: (m.updated_at, m.file_group_id), reverse=True)
        if after is not None:
            summaries = [m for m in summaries if (m.updated_at, m.file_group_id) < after]
        return summaries[:max(limit, 0)]


def _summary(workspace_id: str, mission: str, group: Optional[FileGroup],
             uploads: List[_dt.datetime]) -> MissionSummary:
    first, last = (min(uploads), max(uploads)) if uploads else (None, None)
    moments = [m for m in (last, group.updated_at if group is not None else None) if m is not None]
    return MissionSummary(
        workspace_id=workspace_id, file_group_id=mission,
        reported_file_count=group.file_count if group is not None else 0,
        reported_uploaded_count=group.file_uploaded_count if group is not None else 0,
        expected_file_count=group.expected_file_count if group is not None else None,
        recorded_count=len(uploads), first_upload=first, last_upload=last, updated_at=max(moments),
        reported=group is not None and (group.file_count > 0 or group.expected_file_count is None))


class InMemoryObjectStore(ObjectStore):
    """A bucket in memory. ``keys`` is the set of keys present; tests may change it directly
    too (a key added that way reads as if ``put`` with the default data). ``put`` records each
    object's ETag and size as S3 does for a single PUT (MD5 hex, length of the bytes).

    ``calls`` counts every ``exists``, ``stat`` and ``list_page``; ``calls_by_kind`` counts
    them by kind ("exists", "stat", "list"), so a test can assert "no listing" or "at most N
    HEADs". ``unavailable`` makes every call fail as an outage would.
    """

    def __init__(self, keys: Iterable[str] = (), *, endpoint: str = "http://storage.invalid",
                 bucket: str = "media") -> None:
        self.keys: Set[str] = set(keys)
        # What presign_get's URLs name (the public endpoint a browser would reach).
        self.endpoint, self.bucket = endpoint.rstrip("/"), bucket
        # ETag and size by key; a key of ``keys`` missing here holds the default data.
        self._described: Dict[str, Tuple[str, int]] = {}
        self.unavailable = False
        self.calls = 0
        self.calls_by_kind: Counter[str] = collections.Counter()

    def put(self, key: str, data: bytes = b"photo", *, etag: Optional[str] = None) -> None:
        """Store (or overwrite) the object. ``etag`` replaces the MD5, e.g. to stand for a
        multipart upload's ETag ("<hex>-<parts>")."""
        self.keys.add(key)
        self._described[key] = (etag or hashlib.md5(data).hexdigest(), len(data))

    def remove(self, key: str) -> None:
        self.keys.discard(key)
        self._described.pop(key, None)

    def _info(self, key: str) -> ObjectInfo:
        etag, size = self._described.get(key) or (_DEFAULT_ETAG, len(_DEFAULT_DATA))
        return ObjectInfo(key, etag=etag, size=size)

    def _call(self, kind: str) -> None:
        self.calls += 1
        self.calls_by_kind[kind] += 1
        if self.unavailable:
            raise StorageUnavailable("storage is unreachable (simulated)")

    async def exists(self, object_key: str) -> bool:
        self._call("exists")
        return object_key in self.keys

    async def stat(self, object_key: str) -> Optional[ObjectInfo]:
        self._call("stat")
        return self._info(object_key) if object_key in self.keys else None

    async def list_page(self, prefix: str, start_after: Optional[str], limit: int = 1000) -> ListingPage:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._call("list")
        # S3 lists in the byte order of UTF-8 keys.
        after = start_after.encode("utf-8") if start_after else b""
        following = sorted((k for k in self.keys if k.startswith(prefix) and k.encode("utf-8") > after),
                           key=lambda k: k.encode("utf-8"))
        page = tuple(self._info(k) for k in following[:limit])
        return ListingPage(page, page[-1].key if len(following) > limit else None)

    async def presign_get(self, object_key: str, expires_seconds: int, filename: Optional[str] = None,
                          inline: bool = False) -> str:
        """A URL of the form S3's presigned URLs have (not fetchable: the bucket is in memory)."""
        self._call("presign")
        query = {"X-Amz-Expires": str(expires_seconds)}
        if not inline:
            query["response-content-disposition"] = content_disposition(filename)
        return f"{self.endpoint}/{self.bucket}/{urllib.parse.quote(object_key)}?{urllib.parse.urlencode(query)}"

    async def delete(self, object_key: str) -> None:
        self._call("delete")
        self.remove(object_key)

    async def ping(self) -> None:
        if self.unavailable:
            raise StorageUnavailable("storage is unreachable (simulated)")


_DEFAULT_DATA = b"photo"
_DEFAULT_ETAG = hashlib.md5(_DEFAULT_DATA).hexdigest()


__all__ = ["InMemoryMediaStore", "InMemoryObjectStore"]

async def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise DatabaseUnavailable("the media database is unavailable (simulated)")


_STORE_METHODS = frozenset(name for name in vars(MediaStore) if not name.startswith("_") and name != "close")
