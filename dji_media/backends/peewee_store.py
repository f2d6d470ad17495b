"""MediaStore on peewee: SQLite by default, PostgreSQL and MySQL/MariaDB by URL.

Under Tornado all coroutines share one thread, so a connection or transaction must never span an
``await``: every method below is one self-contained unit of work (connect, transaction, close on
failure) run in a bounded thread pool. On SQLite each pool thread keeps its own connection
(peewee's connection state is thread-local); on PostgreSQL and MySQL each unit of work checks a
connection out of a ``playhouse.pool`` pool and returns it. Either way a connection that failed
is closed, never reused, so service resumes by itself once the database is back.

The schema, opening a database from a URL and the row conversions live in ``peewee_schema``.
"""
from __future__ import annotations

import concurrent.futures
import datetime as _dt
import logging
import math
import random
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar, cast

import peewee
from playhouse.pool import (
    MaxConnectionsExceeded,
    PooledDatabase,
)

from ..errors import DatabaseUnavailable
from ..interfaces import MediaStore
from ..values import (
    FileGroup,
    FileQuery,
    GroupReport,
    MediaFile,
    MediaRecord,
    MissionCursor,
    MissionSummary,
    ObjectInfo,
    RecordCursor,
    SchemaMigration,
    utc_now,
)
from ._batching import ReadBatcher, WriteBatcher
from ._blocking import BlockingRunner
from .peewee_migrations import SchemaVersions
from .peewee_schema import (  # noqa: F401 - open_database and _build_models are used by tests too
    _INT64,
    _MEDIA_FIELDS,
    _MYSQL_COLLATIONS,
    CONFLICT_ATTEMPTS,
    ETAG_LENGTH,
    MYSQL_OBJECT_KEY_BYTES,
    POOL_WAIT_SECONDS,
    QUERY_CHUNK,
    _aware_utc,
    _build_models,
    _check_storable,
    _describe,
    _driver_error,
    _naive_utc,
    _retryable,
    _storable,
    object_key_index_name,
    open_database,
)
from .peewee_statements import LibraryStatements, MediaStatements, TaskStatements

log = logging.getLogger("dji_media.peewee")

T = TypeVar("T")
_T = TypeVar("_T")


# insert_missing keys a record by its fingerprint, or one without (a dock's) by its object key
# behind a NUL, which no stored fingerprint holds (_check_storable refuses it).
_BY_KEY = "\x00"


def _library_storable(query: FileQuery, after: Optional[RecordCursor]) -> bool:
    """Whether anything could match: a NUL in a filter's text matches no stored row (and
    PostgreSQL would refuse the parameter)."""
    texts = [query.workspace_id, query.mission, query.sn, query.drone_model_key, query.payload_model_key,
             query.text, after[1] if after is not None else None]
    return all(t is None or _storable(t) for t in texts)


def _ident(file: MediaFile) -> str:
    return file.fingerprint if file.fingerprint is not None else _BY_KEY + str(file.object_key)


class PeeweeMediaStore(MediaStore):
    """MediaStore on a peewee database.

    :param url: a database URL (``sqlite:///var/media.sqlite3``, ``postgresql://user@host/db``,
        ``mysql://user@host/db``, see ``open_database``); or pass ``database``, a peewee
        ``Database`` the host already owns (a pooled one is left open by ``close()``).
    :param busy_timeout_ms: SQLite only: how long a writer waits for the lock.
    :param max_workers: threads (and so connections) for reads; writes have one thread of their
        own. The pool for a URL holds max_workers + 1 connections.
    :param create_tables: create the schema when absent (on first use).

    One object key, one record: ``upsert`` deletes the workspace's record of another
    fingerprint at the same object key in its own transaction, and a unique (workspace_id,
    object_key) index keeps it so whoever writes. A file without a fingerprint (a dock's,
    schema version 5) is upserted on that index instead, and ``get`` never finds it (a NULL
    fingerprint equals nothing). Object keys are compared and ordered as the
    bytes of their UTF-8, as S3 lists them (``records_by_object_key``; see
    ``peewee_schema._build_models`` for how each engine does it). Leases and task state live in
    the ``task`` table and are timed by the database's clock, so processes on machines whose
    clocks disagree still agree on who holds a lease.

    Public, for a host application's own use of the store's database (its own queries, grants,
    backups, checks):

    - ``db``: the peewee ``Database`` the store runs on (the one passed in, or the one built
      from ``url``). From a coroutine, run statements on it through ``run_unit``: a connection
      or transaction must not span an ``await`` (see the module docstring).
    - ``table_names``: the store's tables on that database, by role (``device`` is
      ``peewee_devices.DatabaseDeviceDirectory``'s).
    - ``run_unit(fn, *args, transaction=True)``: run a blocking function as one unit of work,
      the way the store runs its own.
    """

    def __init__(
        self,
        *,
        url: Optional[str] = None,
        database: Optional[peewee.Database] = None,
        busy_timeout_ms: int = 5000,
        synchronous: str = "full",
        max_workers: int = 4,
        table_prefix: str = "dji_",
        create_tables: bool = True,
        executor: Optional[concurrent.futures.Executor] = None,
    ) -> None:
        if (url is None) == (database is None):
            raise ValueError("url: give exactly one of a database URL or a peewee database")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must be >= 0")
        if synchronous.lower() not in ("off", "normal", "full", "extra"):
            raise ValueError("synchronous must be one of off, normal, full, extra")
        self.db = database if database is not None else open_database(
            str(url), busy_timeout_ms=busy_timeout_ms, synchronous=synchronous.lower(),
            max_connections=max_workers + 1,  # the readers' threads and the writer's
        )
        self._owns_db = database is None
        # Pooled connections are checked out per unit of work (SQLite's stay with their thread:
        # a sqlite3 connection may not move between threads).
        self._pooled = isinstance(self.db, PooledDatabase) and not isinstance(self.db, peewee.SqliteDatabase)
        # Model classes built at run time for this prefix: their columns are not declared types.
        models: Tuple[Any, ...] = _build_models(self.db, table_prefix)
        self._schema, self._media, self._group, self._task, self._device = models
        self._create_tables = create_tables
        self._versions = SchemaVersions(self.db, models, table_prefix, self._mysql_collation)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._runner = BlockingRunner(executor=executor, max_workers=max_workers, name="dji-db")
        self._sql = MediaStatements(self.db, self._media)
        self._library = LibraryStatements(self.db, self._media, self._sql.select_list)
        self._tasks = TaskStatements(self.db, self._task)
        self._object_key_index = object_key_index_name(self._media._meta.table_name)
        # Point reads made in one turn of the event loop share one trip to a pool thread.
        self._reads = ReadBatcher(self._fetch_many, self._run)
        self._public_reads = ReadBatcher(self._fetch_many_public, self._run)  # the library's downloads
        # Writes go through one thread, in batches (one transaction, so one commit and one
        # fsync each): SQLite lets one writer in at a time, and four threads queueing on its
        # lock cost more than they gain (p99 163 ms on upload-callback in the benchmark, 15 ms
        # with one writer). Work queued while a batch commits goes into the next one.
        self._writer = BlockingRunner(executor=None, max_workers=1, name="dji-db-writer")
        self._writes = WriteBatcher(self._write_batch)
        self._connections: set = set()  # opened by pool threads, closed by close()
        self._connections_lock = threading.Lock()

    # ----------------------------------------------------------------- unit of work

    def _ensure_schema(self) -> None:
        """Before the first unit of work: create the tables on an empty database, or raise
        ``SchemaMismatch`` (not a database error: it passes through ``_work`` as it is) for a
        database at another version. A refusal is not remembered: once ``dji-media migrate``
        has run, the next unit of work goes ahead."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            self._versions.ensure(create=self._create_tables)
            self._schema_ready = True

    def _mysql_collation(self) -> str:
        names = {row[0] for row in self.db.execute_sql(
            "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN (%s, %s)",
            _MYSQL_COLLATIONS,
        ).fetchall()}
        for name in _MYSQL_COLLATIONS:
            if name in names:
                return name
        # MySQL 5.7: binary, but pads, so 'a' and 'a ' are the same key there.
        log.warning("no NO PAD binary collation on this server; using utf8mb4_bin")
        return "utf8mb4_bin"

    def _work(self, fn: Callable[..., T], *args: Any) -> T:
        """One unit of work in one transaction; a database failure closes the connection."""
        return self._unit(fn, args, atomic=True)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """A unit of work that only reads, outside a transaction: each SELECT is consistent on
        its own, and none of the reads needs to agree with another. On PostgreSQL and MySQL this
        saves the BEGIN and COMMIT round trips (two of the four a point read cost)."""
        return self._unit(fn, args, atomic=False)

    def _unit(self, fn: Callable[..., T], args: Tuple[Any, ...], atomic: bool) -> T:
        attempt = 1
        stale_retry = True
        while True:
            reused = False
            try:
                opened = self.db.connect(reuse_if_open=True)
                if opened and not self._pooled:
                    with self._connections_lock:
                        self._connections.add(self.db.connection())
                reused = not opened and not self._pooled
                self._ensure_schema()
                if atomic:
                    with self.db.atomic():
                        result = fn(*args)
                else:
                    result = fn(*args)
            except peewee.IntegrityError as exc:
                self._release_connection()
                if self._object_key_race(exc) and attempt < CONFLICT_ATTEMPTS:
                    # Another process inserted a record of the same object key after this
                    # transaction's DELETE of it had looked: run it again (now it sees that one).
                    time.sleep(random.uniform(0, 0.005 * attempt))
                    attempt += 1
                    continue
                raise
            except MaxConnectionsExceeded as exc:
                log.error("database error: no free pooled connection within %s s", POOL_WAIT_SECONDS)
                raise DatabaseUnavailable("the media database is unavailable") from exc
            except Exception as exc:
                # peewee 3 leaves some driver errors unwrapped (psycopg2's deadlock, for one).
                retryable = _retryable(exc)
                if retryable and attempt < CONFLICT_ATTEMPTS:
                    # Rolled back by the server; the connection is fine. Back off a little so
                    # the writers that collided do not collide again.
                    self._release_connection()
                    time.sleep(random.uniform(0, 0.005 * attempt))
                    attempt += 1
                    continue
                if not (retryable or isinstance(exc, (peewee.DatabaseError, peewee.InterfaceError, OSError))):
                    self._release_connection()
                    raise
                self._drop_connection()
                if reused and stale_retry:
                    # A connection kept from earlier may be stale although the database is fine
                    # now: SQLite opens a file read-only while it cannot be written and never
                    # upgrades that connection. The transaction rolled back; try once afresh.
                    log.warning("database error on a kept connection (%s); retrying on a new one",
                                _describe(exc))
                    stale_retry = False
                    continue
                log.error("database error: %s", _describe(exc))
                raise DatabaseUnavailable("the media database is unavailable") from exc
            except BaseException:
                self._release_connection()
                raise
            self._release_connection()
            return result

    def _object_key_race(self, exc: BaseException) -> bool:
        """PostgreSQL: the (workspace_id, object_key) unique index refused a row because another
        transaction committed one of that key meanwhile (READ COMMITTED let the upsert's DELETE
        miss it). MySQL's DELETE locks what it reads (under REPEATABLE READ the gap too), so
        there the race ends in a wait or in a deadlock, which is rerun anyway; SQLite has one
        writer at a time."""
        diag = getattr(_driver_error(exc), "diag", None)
        return getattr(diag, "constraint_name", None) == self._object_key_index

    def _release_connection(self) -> None:
        """Return a pooled connection to the pool; other connections stay with their thread."""
        if self._pooled and not self.db.is_closed():
            self.db.close()

    def _drop_connection(self) -> None:
        """Close this thread's connection so the next unit of work opens a fresh one."""
        if self.db.is_closed():
            return
        if self._pooled:
            try:
                cast(PooledDatabase, self.db).manual_close()  # closed, not returned: a broken one stays out
            except Exception:
                pass
            return
        connection = self.db.connection()
        with self._connections_lock:
            self._connections.discard(connection)
        try:
            self.db.close()
        except Exception:  # the connection may already be unusable
            pass

    async def run_unit(self, fn: Callable[..., _T], *args: Any, transaction: bool = True) -> _T:
        """Run ``fn(*args)``, a blocking function of yours that uses ``self.db``, as one unit of
        work on the store's pool, and return what it returns.

        It runs on one of the store's ``max_workers`` threads (or the host's ``executor``), not
        on the writer's thread: it is not batched with the store's own writes and may run beside
        them. Around it: a connection checked out of the pool (on SQLite, the thread's own
        connection) and given back afterwards; with ``transaction``, one transaction, committed
        when ``fn`` returns and rolled back when it raises. Like the store's own work: a
        transaction the server aborts to resolve a deadlock or a serialization conflict is run
        again (``CONFLICT_ATTEMPTS`` runs in all), as is one that a record another process
        inserted meanwhile made break the unique (workspace_id, object_key) index (PostgreSQL
        reports that race as an integrity error), so ``fn`` must be safe to rerun; any other
        database error closes the connection (it is never reused) and raises
        ``DatabaseUnavailable`` (on SQLite, after one more run on a fresh connection when the
        failed one was kept from earlier); ``peewee.IntegrityError`` and errors that are not the
        database's reach the caller unchanged. The schema is created or checked first, as
        before the store's first unit of work. Not after ``close()``.
        """
        return await self._runner.run(self._work if transaction else self._read, fn, *args)

    @property
    def table_names(self) -> Dict[str, str]:
        """The store's tables on ``db``, by role: ``{"schema": ..., "media_file": ...,
        "file_group": ..., "task": ...}``, each name being ``table_prefix`` + role. A new dict
        on each call."""
        return {"schema": self._schema._meta.table_name, "media_file": self._media._meta.table_name,
                "file_group": self._group._meta.table_name, "task": self._task._meta.table_name,
                "device": self._device._meta.table_name}

    async def _run(self, fn, *args):
        """A read, on one of the pool's threads (writes go through ``_write``)."""
        return await self.run_unit(fn, *args, transaction=False)

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A write, committed with whatever other writes are queued with it (see __init__)."""
        return await self._writes.submit(fn, *args)

    async def _write_batch(self, jobs: List[Tuple[Callable[..., Any], Tuple[Any, ...]]]) -> List[Any]:
        def apply() -> List[Any]:
            return [fn(*args) for fn, args in jobs]

        return await self._writer.run(self._work, apply)

    # ------------------------------------------------------------------- conversion

    def _group_value(self, row: Any) -> FileGroup:
        updated_at = _aware_utc(row.updated_at)
        if updated_at is None:  # a NOT NULL column: only a database edited by hand gets here
            raise DatabaseUnavailable("the media database holds a file group without a time")
        return FileGroup(
            workspace_id=row.workspace_id, file_group_id=row.file_group_id,
            file_count=row.file_count, file_uploaded_count=row.file_uploaded_count,
            updated_at=updated_at, expected_file_count=row.expected_file_count,
        )

    def _upsert_query(self, model: Any, row: Dict[str, Any], conflict: Sequence[Any],
                      update: Dict[Any, Any]) -> Any:
        query = model.insert(**row)
        if isinstance(self.db, peewee.MySQLDatabase):
            # MySQL's ON DUPLICATE KEY UPDATE takes no conflict target: any unique key counts.
            return query.on_conflict(update=update)
        return query.on_conflict(conflict_target=conflict, update=update)

    # -------------------------------------------------------------------- interface

    def _fetch_many(self, keys: List[Tuple[str, str]]) -> List[Optional[MediaRecord]]:
        found: List[Optional[MediaRecord]] = []
        for key in keys:
            # execute_sql, not a bare cursor: peewee turns driver errors into its own, which
            # _work knows how to handle.
            row = self.db.execute_sql(self._sql.get, key).fetchone()
            found.append(self._sql.record(row) if row else None)
        return found

    async def get(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        if not (_storable(workspace_id) and _storable(fingerprint)):
            return None  # could not have been stored
        return await self._reads.get((workspace_id, fingerprint))

    async def find_by_tiny_fingerprints(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> List[MediaRecord]:
        wanted = [t for t in dict.fromkeys(tiny_fingerprints) if _storable(t)]

        def fetch() -> List[MediaRecord]:
            found: List[MediaRecord] = []
            for start in range(0, len(wanted), QUERY_CHUNK):
                chunk = wanted[start:start + QUERY_CHUNK]
                cursor = self.db.execute_sql(self._sql.tiny(len(chunk)), (workspace_id, *chunk))
                found.extend(map(self._sql.record, cursor.fetchall()))
            return found

        if not wanted or not _storable(workspace_id):
            return []
        return await self._run(fetch)

    def _upsert_one(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        return self._sql.record(self._upsert_row(workspace_id, file))

    def _save_one(self, workspace_id: str, file: MediaFile) -> None:
        self._upsert_row(workspace_id, file)  # the row is read (it proves the write), not built

    def _upsert_row(self, workspace_id: str, file: MediaFile) -> Any:
        row = None
        by_key = file.fingerprint is None  # a dock's file: its object key is its identity
        for _ in range(2):
            # One object key, one record: the object's bytes are this file's now, so a record
            # of another fingerprint that names the same key goes, in the same transaction.
            self.db.execute_sql(self._sql.supersede_by_key if by_key else self._sql.supersede,
                                self._sql.supersede_params(workspace_id, file))
            cursor = self.db.execute_sql(self._sql.upsert_by_key if by_key else self._sql.upsert,
                                         self._sql.upsert_params(workspace_id, file, _naive_utc(utc_now())))
            if not self._sql.returning:  # MySQL: read back in the same transaction
                if by_key:
                    cursor = self.db.execute_sql(self._sql.get_by_key,
                                                 (workspace_id, self._sql.key_param(file.object_key)))
                else:
                    cursor = self.db.execute_sql(self._sql.get, (workspace_id, file.fingerprint))
            row = cursor.fetchone()
            if row is not None:
                break
            # MySQL only, and only under READ COMMITTED (REPEATABLE READ's DELETE locks the gap):
            # a record of the key committed after the DELETE looked, and ON DUPLICATE KEY UPDATE,
            # which takes any unique key, wrote this file into it. This transaction holds that
            # row now: the next round deletes it and inserts this file's own.
        if row is None:
            raise DatabaseUnavailable("the media database is unavailable")
        return row

    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        _check_storable(workspace_id, file)
        return await self._write(self._upsert_one, workspace_id, file)

    async def save(self, workspace_id: str, file: MediaFile) -> None:
        _check_storable(workspace_id, file)
        await self._write(self._save_one, workspace_id, file)

    async def mark_verified(self, records: Sequence[MediaRecord], when: _dt.datetime) -> None:
        m = self._media
        stamp = _naive_utc(when)
        # Grouped by (workspace, revision) so that one UPDATE covers many rows, and a row
        # rewritten since it was read (a higher revision) stays unverified.
        groups: Dict[Tuple[str, int], List[str]] = {}
        docks: List[MediaRecord] = []  # records without a fingerprint: by object key
        for r in records:
            if r.file.fingerprint is None:
                docks.append(r)
            else:
                groups.setdefault((r.workspace_id, r.revision), []).append(r.file.fingerprint)
        keys = list(groups.items())

        def write() -> None:
            for (workspace_id, revision), fingerprints in keys:
                for start in range(0, len(fingerprints), QUERY_CHUNK):
                    m.update(verified_at=stamp).where(
                        (m.workspace_id == workspace_id) & (m.revision == revision)
                        & m.fingerprint.in_(fingerprints[start:start + QUERY_CHUNK])
                    ).execute()
            for r in docks:
                m.update(verified_at=stamp).where(self._dock_row(r)).execute()

        if keys or docks:
            await self._write(write)

    async def forget(self, record: MediaRecord) -> bool:
        m = self._media

        def delete() -> bool:
            if record.file.fingerprint is None:
                return m.delete().where(self._dock_row(record)).execute() > 0
            count = m.delete().where(
                (m.workspace_id == record.workspace_id)
                & (m.fingerprint == record.file.fingerprint)
                & (m.revision == record.revision)
            ).execute()
            return count > 0

        return await self._write(delete)

    def _dock_row(self, record: MediaRecord) -> Any:
        """The condition that finds a record without a fingerprint at its revision: (workspace,
        object key), compared as the unique index compares keys (MySQL: the binary copy)."""
        m = self._media
        column = getattr(m, MYSQL_OBJECT_KEY_BYTES) if isinstance(self.db, peewee.MySQLDatabase) else m.object_key
        return ((m.workspace_id == record.workspace_id) & (column == self._sql.key_param(record.file.object_key))
                & m.fingerprint.is_null() & (m.revision == record.revision))

    async def save_mission_expectation(self, workspace_id: str, file_group_id: str,
                                       expected_file_count: int) -> FileGroup:
        """See ``MediaStore.save_mission_expectation``: one upsert that sets only the expected
        count (and the time), so the counts a device reported stay; a new group starts at 0."""
        g = self._group
        _check_storable(workspace_id, GroupReport(file_group_id, expected_file_count, 0))

        def write() -> FileGroup:
            now = _naive_utc(utc_now())
            row = dict(workspace_id=workspace_id, file_group_id=file_group_id, file_count=0,
                       file_uploaded_count=0, updated_at=now, expected_file_count=expected_file_count)
            update = {g.expected_file_count: expected_file_count, g.updated_at: now}
            self._upsert_query(g, row, [g.workspace_id, g.file_group_id], update).execute()
            return self._group_value(
                g.get((g.workspace_id == workspace_id) & (g.file_group_id == file_group_id)))

        return await self._write(write)

    async def save_group(self, workspace_id: str, report: GroupReport) -> FileGroup:
        g = self._group
        _check_storable(workspace_id, report)

        def write() -> FileGroup:
            now = _naive_utc(utc_now())
            row = dict(workspace_id=workspace_id, file_group_id=report.file_group_id,
                       file_count=report.file_count, file_uploaded_count=report.file_uploaded_count,
                       updated_at=now)
            update = {g.file_count: report.file_count,
                      g.file_uploaded_count: report.file_uploaded_count, g.updated_at: now}
            self._upsert_query(g, row, [g.workspace_id, g.file_group_id], update).execute()
            return self._group_value(
                g.get((g.workspace_id == workspace_id) & (g.file_group_id == report.file_group_id))
            )

        return await self._write(write)

    async def get_group(self, workspace_id: str, file_group_id: str) -> Optional[FileGroup]:
        g = self._group

        def fetch() -> Optional[FileGroup]:
            row = g.get_or_none((g.workspace_id == workspace_id) & (g.file_group_id == file_group_id))
            return self._group_value(row) if row else None

        if not (_storable(workspace_id) and _storable(file_group_id)):
            return None
        return await self._run(fetch)

    async def insert_missing(self, records: Sequence[MediaRecord]) -> List[bool]:
        """See ``MediaStore.insert_missing``. One object key, one record here too: a record
        whose (workspace, object key) a stored record of another fingerprint holds, or an
        earlier record of the same call, is reported not inserted (the first wins), as a
        record of a key already stored is. A record without ``public_id`` gets a new one."""
        m = self._media
        columns = ["workspace_id", "fingerprint", *_MEDIA_FIELDS, "revision", "created_at", "updated_at",
                   "verified_at", "etag", "size", "public_id"]
        # Each value as peewee would bind it; the SQL text is built once per call, not per
        # statement: peewee's query builder would cost more than the database does here.
        adapt = [m._meta.fields[c].db_value for c in columns]
        rows: Dict[Tuple[str, str], List[Any]] = {}  # the first record of each key
        object_keys: Dict[Tuple[str, str], Any] = {}  # (workspace, object key) of each, as compared
        taken: Set[Tuple[str, Any]] = set()
        for record in records:
            _check_storable(record.workspace_id, record.file)
            key = (record.workspace_id, _ident(record.file))
            object_key = record.file.object_key
            # None is not a key: the database refuses it (NOT NULL), and that error is raised.
            place = (key[0], self._sql.key_param(object_key)) if isinstance(object_key, str) else None
            if key not in rows and (place is None or place not in taken):
                values = {name: getattr(record.file, name) for name in _MEDIA_FIELDS}
                values.update(workspace_id=key[0], fingerprint=record.file.fingerprint, revision=record.revision,
                              created_time=_naive_utc(record.file.created_time),
                              created_at=_naive_utc(record.created_at), updated_at=_naive_utc(record.updated_at),
                              verified_at=_naive_utc(record.verified_at), etag=record.etag, size=record.size,
                              public_id=record.public_id or str(uuid.uuid4()))
                rows[key] = [convert(values[c]) for convert, c in zip(adapt, columns)]
                if place is not None:
                    object_keys[key] = place[1]
                    taken.add(place)
        keys = list(rows)
        # Rows per INSERT: all their parameters stay within old SQLite builds' limit of 999.
        per_statement = max(1, 999 // len(columns))
        quote, param = self.db.quote, self.db.param

        def q(name: str) -> str:
            return f"{quote[0]}{name}{quote[-1]}"

        table = q(m._meta.table_name)
        row_marks = "(" + ", ".join([param] * len(columns)) + ")"
        insert_head = f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) VALUES "
        key_column = self._sql.key_column
        select_head = (f"SELECT {q('fingerprint')}, {key_column} FROM {table} WHERE {q('workspace_id')} = {param} AND ")

        def attempt(chunk: List[Tuple[str, str]]) -> Optional[peewee.IntegrityError]:
            # Plain INSERTs in a savepoint rather than ON CONFLICT DO NOTHING / INSERT IGNORE: a
            # duplicate undoes only this statement, and no other error is swallowed.
            sql = insert_head + ", ".join([row_marks] * len(chunk))
            try:
                with self.db.atomic():
                    self.db.execute_sql(sql, [value for k in chunk for value in rows[k]])
            except peewee.IntegrityError as exc:
                return exc
            return None

        def stored(chunk: List[Tuple[str, str]], latest: bool = False) -> set:
            """The keys of the chunk that cannot go in: their fingerprint, or their object key
            under another fingerprint, is stored."""
            by_workspace: Dict[str, List[Tuple[str, str]]] = {}
            for k in chunk:
                by_workspace.setdefault(k[0], []).append(k)
            found: Set[Tuple[str, str]] = set()
            for workspace_id, mine in by_workspace.items():
                # A record without a fingerprint is held only by its object key.
                fingerprints = [k[1] for k in mine if not k[1].startswith(_BY_KEY)]
                places = [object_keys[k] for k in mine if k in object_keys]
                held = []
                if fingerprints:
                    held.append(f"{q('fingerprint')} IN (" + ", ".join([param] * len(fingerprints)) + ")")
                if places:
                    held.append(f"{key_column} IN (" + ", ".join([param] * len(places)) + ")")
                if not held:
                    continue
                sql = select_head + "(" + " OR ".join(held) + ")"
                if latest and self.db.for_update:
                    # A locking read sees rows committed after this transaction's snapshot
                    # (MySQL's REPEATABLE READ would not show them to a plain SELECT).
                    sql += " FOR UPDATE"
                present = self.db.execute_sql(sql, [workspace_id, *fingerprints, *places]).fetchall()
                held_fingerprints = {row[0] for row in present}
                held_places = {bytes(row[1]) if isinstance(row[1], (bytes, bytearray, memoryview)) else row[1]
                               for row in present}
                found.update(k for k in mine if k[1] in held_fingerprints or object_keys.get(k) in held_places)
            return found

        def write() -> set:
            inserted = set()
            for start in range(0, len(keys), per_statement):
                chunk = keys[start:start + per_statement]
                # A first import inserts whole statements; a re-run costs one failed INSERT and
                # one SELECT per statement; only a writer racing with us leads to row by row.
                if attempt(chunk) is None:
                    inserted.update(chunk)
                    continue
                present = stored(chunk)
                absent = [k for k in chunk if k not in present]
                if not absent or attempt(absent) is None:
                    inserted.update(absent)
                    continue
                for key in absent:
                    error = attempt([key])
                    if error is None:
                        inserted.add(key)
                    elif not stored([key], latest=True):
                        raise error  # not a duplicate: a value the database refused
            return inserted

        if not keys:
            return [False] * len(records)
        inserted = await self._write(write)
        result = []
        for record in records:
            key = (record.workspace_id, _ident(record.file))
            result.append(key in inserted)
            inserted.discard(key)  # later records with the same key were not inserted
        return result

    # ------------------------------------------------------- storage truth (the sweep)

    async def tiny_fingerprint_confirmations(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> Dict[str, Optional[_dt.datetime]]:
        # tiny-fingerprints' hot path: two columns a tiny fingerprint, grouped by the database,
        # and no record built.
        wanted = [t for t in dict.fromkeys(tiny_fingerprints) if _storable(t)]

        def fetch() -> Dict[str, Optional[_dt.datetime]]:
            found: Dict[str, Optional[_dt.datetime]] = {}
            for start in range(0, len(wanted), QUERY_CHUNK):
                chunk = wanted[start:start + QUERY_CHUNK]
                cursor = self.db.execute_sql(self._sql.confirmations(len(chunk)), (workspace_id, *chunk))
                for tiny, verified_at in cursor.fetchall():
                    found[tiny] = _aware_utc(verified_at)
            return found

        if not wanted or not _storable(workspace_id):
            return {}
        return await self._run(fetch)

    async def workspaces(self) -> List[str]:
        m = self._media
        q = self._versions.quote
        table, column = q(m._meta.table_name), q("workspace_id")
        if isinstance(self.db, peewee.MySQLDatabase):
            # InnoDB reads one entry per workspace from the (workspace_id, ...) index.
            sql = f"SELECT DISTINCT {column} FROM {table}"
        else:
            # Skip from one workspace to the next on the (workspace_id, fingerprint) index: a
            # DISTINCT would read every row's entry there.
            sql = (f"WITH RECURSIVE w(ws) AS (SELECT (SELECT {column} FROM {table} ORDER BY {column} LIMIT 1) "
                   f"UNION ALL SELECT (SELECT {column} FROM {table} WHERE {column} > w.ws ORDER BY {column} "
                   f"LIMIT 1) FROM w WHERE w.ws IS NOT NULL) SELECT ws FROM w WHERE ws IS NOT NULL")

        def fetch() -> List[str]:
            return sorted(row[0] for row in self.db.execute_sql(sql).fetchall())

        return await self._run(fetch)

    async def records_by_object_key(self, workspace_id: str, after: Optional[str], upto: Optional[str],
                                    limit: int) -> List[MediaRecord]:
        for bound in (after, upto):
            if bound is not None and not _storable(bound):
                raise ValueError("an object key bound must not contain the NUL character")
        if limit <= 0 or not _storable(workspace_id):
            return []
        params: List[Any] = [workspace_id]
        params += [self._sql.key_param(bound) for bound in (after, upto) if bound is not None]
        params.append(limit)
        sql = self._sql.by_object_key(after is not None, upto is not None)

        def fetch() -> List[MediaRecord]:
            return list(map(self._sql.record, self.db.execute_sql(sql, params).fetchall()))

        return await self._run(fetch)

    # -------------------------------------------------------- the media library (catalogue)

    async def find_records(self, query: FileQuery, limit: int,
                           after: Optional[RecordCursor] = None) -> List[MediaRecord]:
        if limit <= 0 or not _library_storable(query, after):
            return []
        sql, params = self._library.find(query, limit, after)

        def fetch() -> List[MediaRecord]:
            return list(map(self._sql.record, self.db.execute_sql(sql, params).fetchall()))

        return await self._run(fetch)

    async def count_records(self, query: FileQuery) -> int:
        if not _library_storable(query, None):
            return 0
        sql, params = self._library.count(query)

        def fetch() -> int:
            return int(self.db.execute_sql(sql, params).fetchone()[0])

        return await self._run(fetch)

    async def get_by_public_id(self, workspace_id: str, public_id: str) -> Optional[MediaRecord]:
        if not (_storable(workspace_id) and _storable(public_id)):
            return None

        return await self._public_reads.get((workspace_id, public_id))

    def _fetch_many_public(self, keys: List[Tuple[str, str]]) -> List[Optional[MediaRecord]]:
        sql = self._library.by_public_id()
        rows = [self.db.execute_sql(sql, key).fetchone() for key in keys]
        return [self._sql.record(row) if row else None for row in rows]

    async def remove_record(self, record: MediaRecord) -> bool:
        if record.public_id is None or not _storable(record.public_id):
            return False

        def delete() -> bool:
            cursor = self.db.execute_sql(self._library.remove(), (record.workspace_id, record.public_id))
            return bool(cursor.rowcount and cursor.rowcount > 0)

        return bool(await self._write(delete))

    async def mission_summaries(self, workspace_id: str, limit: int,
                                after: Optional[MissionCursor] = None) -> List[MissionSummary]:
        # Both halves are read whole for the workspace and merged here: a mission lives in the
        # group table, in the records, or in both, and the order is by the later of the two.
        # A workspace holds missions by the thousand, not the million; the record half reads the
        # (workspace_id, file_group_id, created_at, public_id) index (from the index alone on SQLite and MySQL).
        if limit <= 0 or not _storable(workspace_id):
            return []
        g = self._group

        def fetch() -> Tuple[List[Any], List[FileGroup]]:
            rows = self.db.execute_sql(self._library.missions(), (workspace_id,)).fetchall()
            groups = [self._group_value(row) for row in g.select().where(g.workspace_id == workspace_id)]
            return rows, groups

        rows, groups = await self._run(fetch)
        uploads = {row[0]: (int(row[1]), _aware_utc(row[2]), _aware_utc(row[3])) for row in rows}
        by_id = {group.file_group_id: group for group in groups}
        summaries = []
        for mission in set(uploads) | set(by_id):
            group = by_id.get(mission)
            count, first, last = uploads.get(mission, (0, None, None))
            moments = [m for m in (last, group.updated_at if group is not None else None) if m is not None]
            summaries.append(MissionSummary(
                workspace_id=workspace_id, file_group_id=mission,
                reported_file_count=group.file_count if group is not None else 0,
                reported_uploaded_count=group.file_uploaded_count if group is not None else 0,
                expected_file_count=group.expected_file_count if group is not None else None,
                recorded_count=count, first_upload=first, last_upload=last, updated_at=max(moments),
                reported=group is not None and (group.file_count > 0 or group.expected_file_count is None)))
        summaries.sort(key=lambda m: (m.updated_at, m.file_group_id), reverse=True)
        if after is not None:
            summaries = [m for m in summaries if (m.updated_at, m.file_group_id) < after]
        return summaries[:limit]

    async def confirm(self, confirmations: Sequence[Tuple[MediaRecord, ObjectInfo]], when: _dt.datetime) -> None:
        """See ``MediaStore.confirm``. ``etag`` and ``size`` are each recorded where the record
        has none yet, so a first confirmation that knew only one of them leaves the other to a
        later one; neither is ever overwritten. An ETag longer than the column (128) or a size
        beyond 64 bits is not recorded (no S3 server sends one)."""
        stamp = _naive_utc(when)
        # Grouped by (workspace, revision), as mark_verified: one UPDATE covers many rows, and
        # a row rewritten since it was read (a higher revision) is left alone.
        groups: Dict[Tuple[str, int], List[Tuple[str, Optional[str], Optional[int]]]] = {}
        docks: List[Tuple[MediaRecord, Optional[str], Optional[int]]] = []  # no fingerprint: by key
        for record, info in confirmations:
            etag = info.etag if isinstance(info.etag, str) and len(info.etag) <= ETAG_LENGTH \
                and _storable(info.etag) else None
            size = info.size if isinstance(info.size, int) and info.size in _INT64 else None
            if record.file.fingerprint is None:
                if _storable(record.workspace_id) and _storable(record.file.object_key):
                    docks.append((record, etag, size))
                continue
            groups.setdefault((record.workspace_id, record.revision), []).append(
                (record.file.fingerprint, etag, size))
        q, p = self._versions.quote, self.db.param
        table = q(self._media._meta.table_name)
        # Five parameters a record, within old SQLite builds' limit of 999 a statement.
        per_statement = 150

        def assignment(column: str, pairs: List[Tuple[str, Any]]) -> Tuple[str, List[Any]]:
            if not pairs:
                return "", []
            cases = " ".join([f"WHEN {p} THEN {p}"] * len(pairs))
            return (f", {q(column)} = COALESCE({q(column)}, CASE {q('fingerprint')} {cases} END)",
                    [value for pair in pairs for value in pair])

        statements: List[Tuple[str, List[Any]]] = []
        for (workspace_id, revision), items in groups.items():
            if not _storable(workspace_id):
                continue
            for start in range(0, len(items), per_statement):
                chunk = items[start:start + per_statement]
                fingerprints = [fp for fp, _, _ in chunk]
                set_etag, etag_params = assignment("etag", [(fp, e) for fp, e, _ in chunk if e is not None])
                set_size, size_params = assignment("size", [(fp, n) for fp, _, n in chunk if n is not None])
                sql = (f"UPDATE {table} SET {q('verified_at')} = {p}{set_etag}{set_size} "
                       f"WHERE {q('workspace_id')} = {p} AND {q('revision')} = {p} AND {q('fingerprint')} IN ("
                       + ", ".join([p] * len(fingerprints)) + ")")
                statements.append((sql, [stamp, *etag_params, *size_params, workspace_id, revision, *fingerprints]))

        m = self._media

        def write() -> None:
            for sql, params in statements:
                self.db.execute_sql(sql, params)
            for record, etag, size in docks:
                m.update(verified_at=stamp, etag=peewee.fn.COALESCE(m.etag, etag),
                         size=peewee.fn.COALESCE(m.size, size)).where(self._dock_row(record)).execute()

        if statements or docks:
            await self._write(write)

    @staticmethod
    def _check_task(name: str, holder: Optional[str] = None) -> None:
        # Names and holders come from code, not from requests: a wrong one is a bug to show.
        if not (isinstance(name, str) and 0 < len(name) <= 64 and _storable(name)):
            raise ValueError(f"task name must be 1 to 64 characters without NUL: {name!r}")
        if holder is not None and not (isinstance(holder, str) and 0 < len(holder) <= 128 and _storable(holder)):
            raise ValueError(f"lease holder must be 1 to 128 characters without NUL: {holder!r}")

    async def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """See ``MediaStore.acquire_lease``. Timed by the database's clock (one clock for every
        machine; SQLite's is the machine's, to the millisecond): the row is made if missing,
        then one UPDATE takes it only if it is free, expired or already the holder's."""
        self._check_task(name, holder)
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"lease seconds must be a positive number: {seconds!r}")
        tasks = self._tasks

        def take() -> bool:
            self.db.execute_sql(tasks.ensure, (name,))
            cursor = self.db.execute_sql(tasks.take, (holder, tasks.duration(seconds), name, holder))
            return cursor.rowcount > 0

        return await self._write(take)

    async def release_lease(self, name: str, holder: str) -> None:
        self._check_task(name, holder)

        def release() -> None:
            self.db.execute_sql(self._tasks.release, (name, holder))

        await self._write(release)

    async def load_task_state(self, name: str) -> Optional[str]:
        self._check_task(name)

        def load() -> Optional[str]:
            row = self.db.execute_sql(self._tasks.load_state, (name,)).fetchone()
            return row[0] if row else None

        return await self._run(load)

    async def save_task_state(self, name: str, holder: str, state: str) -> bool:
        self._check_task(name, holder)
        if not (isinstance(state, str) and _storable(state)):
            raise ValueError("task state must be text without the NUL character")

        def save() -> bool:
            return self.db.execute_sql(self._tasks.save_state, (state, name, holder)).rowcount > 0

        return await self._write(save)

    async def ping(self) -> None:
        s = self._schema

        def touch() -> None:
            # A write proves more than a read: a read-only file or a full disk fails here.
            s.update(version=s.version).execute()

        await self._write(touch)

    async def migrate(self, dry_run: bool = False,
                      progress: Optional[Callable[[str], None]] = None) -> SchemaMigration:
        def run() -> SchemaMigration:
            try:
                if self.db.connect(reuse_if_open=True) and not self._pooled:
                    with self._connections_lock:
                        self._connections.add(self.db.connection())
                return self._versions.migrate(dry_run=dry_run, create=self._create_tables, progress=progress)
            except (peewee.DatabaseError, peewee.InterfaceError, OSError, MaxConnectionsExceeded) as exc:
                # Reading the version, or connecting: a failed step is reported by migrate().
                self._drop_connection()
                log.error("database error: %s", _describe(exc))
                raise DatabaseUnavailable(f"the media database is unavailable: {_describe(exc).splitlines()[0]}") \
                    from exc
            finally:
                self._release_connection()

        try:
            return await self._runner.run(run)
        finally:
            # Checked again by the next unit of work. (Not under _schema_lock: a thread may hold
            # it while it waits for the database, and this runs on the event loop.)
            self._schema_ready = False

    async def close(self) -> None:
        # Each waits for its running work; no thread uses a connection after this.
        self._runner.close()
        self._writer.close()
        if self._pooled and self._owns_db:
            cast(PooledDatabase, self.db).close_all()
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.close()
            except Exception as exc:  # a host-owned database may forbid closing from here
                log.warning("could not close a database connection: %s", exc)
