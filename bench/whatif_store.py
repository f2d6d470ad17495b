"""EXPERIMENT, not for production: how much faster would PeeweeMediaStore be with

* SQL compiled once and reused (instead of peewee building and compiling it on every call),
* rows read as tuples (instead of peewee model instances),
* upsert with ``RETURNING`` (instead of a second SELECT) on one writer thread (instead of four
  threads fighting for SQLite's write lock), and optionally
* point reads of concurrent requests coalesced into one executor call (``coalesce``).

SQLite only (3.35+ for RETURNING). Used by ``bench/run.py --media-store-backend
bench.whatif_store:WhatIfStore`` to put numbers on the recommendations in doc/performance.md.
"""
from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Sequence, Tuple

from dji_media.backends._blocking import BlockingRunner
from dji_media.backends.peewee_store import _MEDIA_FIELDS, QUERY_CHUNK, PeeweeMediaStore, _aware_utc, _naive_utc
from dji_media.values import MediaFile, MediaRecord, utc_now


class WhatIfStore(PeeweeMediaStore):
    def __init__(self, *, coalesce: bool = False, group_commit: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        meta = self._media._meta
        self._table = meta.table_name
        self._cols = [f.column_name for f in meta.sorted_fields]
        self._ix = {c: i for i, c in enumerate(self._cols)}
        select = ", ".join(f'"{c}"' for c in self._cols)
        self._sql_get = f'SELECT {select} FROM "{self._table}" WHERE "workspace_id" = ? AND "fingerprint" = ?'
        self._sql_tiny = f'SELECT {select} FROM "{self._table}" WHERE "workspace_id" = ? AND "tiny_fingerprint" IN (%s)'
        insert_cols = ["workspace_id", "fingerprint", *_MEDIA_FIELDS, "revision", "created_at", "updated_at"]
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in _MEDIA_FIELDS)
        self._sql_upsert = (
            f'INSERT INTO "{self._table}" ({", ".join(insert_cols)}) VALUES ({", ".join("?" * len(insert_cols))}) '
            f'ON CONFLICT ("workspace_id", "fingerprint") DO UPDATE SET {updates}, '
            f'"updated_at" = excluded."updated_at", "revision" = "{self._table}"."revision" + 1, '
            f'"verified_at" = NULL RETURNING {select}')
        self._writer = BlockingRunner(executor=None, max_workers=1, name="dji-db-writer")
        self._coalesce = coalesce
        self._pending: List[Tuple[str, str, asyncio.Future]] = []
        self._group_commit = group_commit
        self._writes: List[Tuple[str, MediaFile, asyncio.Future]] = []
        self._writing = False

    def _row(self, row: Sequence[Any]) -> MediaRecord:
        ix = self._ix
        values = {name: row[ix[name]] for name in _MEDIA_FIELDS}
        if values["is_original"] is not None:
            values["is_original"] = bool(values["is_original"])
        values["created_time"] = _aware_utc(values["created_time"])
        return MediaRecord(
            workspace_id=row[ix["workspace_id"]],
            file=MediaFile(fingerprint=row[ix["fingerprint"]], **values),
            revision=row[ix["revision"]],
            created_at=_aware_utc(row[ix["created_at"]]),
            updated_at=_aware_utc(row[ix["updated_at"]]),
            verified_at=_aware_utc(row[ix["verified_at"]]),
        )

    def _fetch_one(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        row = self.db.execute_sql(self._sql_get, (workspace_id, fingerprint)).fetchone()
        return self._row(row) if row else None

    async def get(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        if not self._coalesce:
            return await self._run(self._fetch_one, workspace_id, fingerprint)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((workspace_id, fingerprint, future))
        if len(self._pending) == 1:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []

        def fetch_all() -> List[Optional[MediaRecord]]:
            return [self._fetch_one(ws, fp) for ws, fp, _ in batch]

        try:
            results = await self._run(fetch_all)
        except Exception as exc:  # noqa: BLE001 - handed to every waiter
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)

    async def find_by_tiny_fingerprints(self, workspace_id: str, tiny_fingerprints: Sequence[str]) -> List[MediaRecord]:
        wanted = list(dict.fromkeys(tiny_fingerprints))

        def fetch() -> List[MediaRecord]:
            found: List[MediaRecord] = []
            for start in range(0, len(wanted), QUERY_CHUNK):
                chunk = wanted[start:start + QUERY_CHUNK]
                sql = self._sql_tiny % ", ".join("?" * len(chunk))
                found.extend(self._row(r) for r in self.db.execute_sql(sql, (workspace_id, *chunk)).fetchall())
            return found

        return await self._run(fetch) if wanted else []

    def _write_one(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        now = _naive_utc(utc_now())
        values = [getattr(file, name) for name in _MEDIA_FIELDS]
        values[_MEDIA_FIELDS.index("created_time")] = _naive_utc(file.created_time)
        params = (workspace_id, file.fingerprint, *values, 1, now, now)
        return self._row(self.db.execute_sql(self._sql_upsert, params).fetchone())

    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        if not self._group_commit:
            return await self._writer.run(self._work, self._write_one, workspace_id, file)
        # Group commit: every upsert queued while a transaction is being written goes into
        # the next one (one commit, so one fsync, per batch). A real implementation would use
        # a savepoint per item so that one bad row does not fail the batch.
        future = asyncio.get_running_loop().create_future()
        self._writes.append((workspace_id, file, future))
        if not self._writing:
            self._writing = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._writes:
                batch, self._writes = self._writes, []

                def write_all(items: List[Tuple[str, MediaFile, asyncio.Future]]) -> List[MediaRecord]:
                    return [self._write_one(ws, f) for ws, f, _ in items]

                try:
                    results = await self._writer.run(self._work, write_all, batch)
                except Exception as exc:  # noqa: BLE001 - handed to every waiter
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writing = False

    async def close(self) -> None:
        self._writer.close()
        await super().close()
