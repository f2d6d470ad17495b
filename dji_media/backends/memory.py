"""In-memory backends: for tests, demos and as the reference behaviour of each contract.

They keep everything in process memory, so they suit one process and lose all on restart.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import hashlib
from typing import Any, Counter, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import DatabaseUnavailable, StorageUnavailable
from ..interfaces import MediaStore, ObjectStore
from ..values import FileGroup, GroupReport, ListingPage, MediaFile, MediaRecord, ObjectInfo, utc_now


class InMemoryMediaStore(MediaStore):
    """A MediaStore in a dict. Each method completes without awaiting, so it is atomic on the
    event loop. ``unavailable`` makes every call fail as a database outage would."""

    def __init__(self) -> None:
        self._records: Dict[Tuple[str, str], MediaRecord] = {}
        self._groups: Dict[Tuple[str, str], FileGroup] = {}
        self.unavailable = False

    def __getattribute__(self, name: str) -> Any:
        # One switch for every method of the interface, as a lost database fails them all.
        if name in _STORE_METHODS and object.__getattribute__(self, "unavailable"):
            return _unavailable
        return object.__getattribute__(self, name)

    async def get(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        return self._records.get((workspace_id, fingerprint))

    async def find_by_tiny_fingerprints(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> List[MediaRecord]:
        wanted = set(tiny_fingerprints)
        return [
            r for (ws, _), r in self._records.items()
            if ws == workspace_id and r.file.tiny_fingerprint in wanted
        ]

    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        key = (workspace_id, file.fingerprint)
        now = utc_now()
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
        )
        self._records[key] = record
        return record

    async def mark_verified(self, records: Sequence[MediaRecord], when: _dt.datetime) -> None:
        for record in records:
            key = (record.workspace_id, record.file.fingerprint)
            current = self._records.get(key)
            if current is not None and current.revision == record.revision:
                self._records[key] = dataclasses.replace(current, verified_at=when)

    async def forget(self, record: MediaRecord) -> bool:
        key = (record.workspace_id, record.file.fingerprint)
        current = self._records.get(key)
        if current is None or current.revision != record.revision:
            return False
        del self._records[key]
        return True

    async def insert_missing(self, records: Sequence[MediaRecord]) -> List[bool]:
        inserted = []
        for record in records:
            key = (record.workspace_id, record.file.fingerprint)
            inserted.append(key not in self._records)
            self._records.setdefault(key, record)
        return inserted

    async def save_group(self, workspace_id: str, report: GroupReport) -> FileGroup:
        group = FileGroup(
            workspace_id=workspace_id,
            file_group_id=report.file_group_id,
            file_count=report.file_count,
            file_uploaded_count=report.file_uploaded_count,
            updated_at=utc_now(),
        )
        self._groups[(workspace_id, report.file_group_id)] = group
        return group

    async def get_group(self, workspace_id: str, file_group_id: str) -> Optional[FileGroup]:
        return self._groups.get((workspace_id, file_group_id))


class InMemoryObjectStore(ObjectStore):
    """A bucket in memory. ``keys`` is the set of keys present; tests may change it directly
    too (a key added that way reads as if ``put`` with the default data). ``put`` records each
    object's ETag and size as S3 does for a single PUT (MD5 hex, length of the bytes).

    ``calls`` counts every ``exists``, ``stat`` and ``list_page``; ``calls_by_kind`` counts
    them by kind ("exists", "stat", "list"), so a test can assert "no listing" or "at most N
    HEADs". ``unavailable`` makes every call fail as an outage would.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self.keys: Set[str] = set(keys)
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

    async def ping(self) -> None:
        if self.unavailable:
            raise StorageUnavailable("storage is unreachable (simulated)")


_DEFAULT_DATA = b"photo"
_DEFAULT_ETAG = hashlib.md5(_DEFAULT_DATA).hexdigest()


__all__ = ["InMemoryMediaStore", "InMemoryObjectStore"]

async def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise DatabaseUnavailable("the media database is unavailable (simulated)")


_STORE_METHODS = frozenset(name for name in vars(MediaStore) if not name.startswith("_") and name != "close")
