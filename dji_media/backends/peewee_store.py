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
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar, cast

import peewee
from playhouse.pool import (
    MaxConnectionsExceeded,
    PooledDatabase,
)

from ..errors import DatabaseUnavailable
from ..interfaces import MediaStore
from ..values import FileGroup, GroupReport, MediaFile, MediaRecord, SchemaMigration, utc_now
from ._batching import ReadBatcher, WriteBatcher
from ._blocking import BlockingRunner
from .peewee_migrations import SchemaVersions
from .peewee_schema import (  # noqa: F401 - open_database and _build_models are used by tests too
    _MEDIA_FIELDS,
    _MYSQL_COLLATIONS,
    CONFLICT_ATTEMPTS,
    POOL_WAIT_SECONDS,
    QUERY_CHUNK,
    _aware_utc,
    _build_models,
    _check_storable,
    _describe,
    _naive_utc,
    _retryable,
    _storable,
    open_database,
)
from .peewee_statements import MediaStatements

log = logging.getLogger("dji_media.peewee")

T = TypeVar("T")
_T = TypeVar("_T")


class PeeweeMediaStore(MediaStore):
    """MediaStore on a peewee database.

    :param url: a database URL (``sqlite:///var/media.sqlite3``, ``postgresql://user@host/db``,
        ``mysql://user@host/db``, see ``open_database``); or pass ``database``, a peewee
        ``Database`` the host already owns (a pooled one is left open by ``close()``).
    :param busy_timeout_ms: SQLite only: how long a writer waits for the lock.
    :param max_workers: threads (and so connections) for reads; writes have one thread of their
        own. The pool for a URL holds max_workers + 1 connections.
    :param create_tables: create the schema when absent (on first use).

    Public, for a host application's own use of the store's database (its own queries, grants,
    backups, checks):

    - ``db``: the peewee ``Database`` the store runs on (the one passed in, or the one built
      from ``url``). From a coroutine, run statements on it through ``run_unit``: a connection
      or transaction must not span an ``await`` (see the module docstring).
    - ``table_names``: the store's tables on that database, by role.
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
        self._schema, self._media, self._group = models
        self._create_tables = create_tables
        self._versions = SchemaVersions(self.db, (self._schema, self._media, self._group), table_prefix,
                                        self._mysql_collation)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._runner = BlockingRunner(executor=executor, max_workers=max_workers, name="dji-db")
        self._sql = MediaStatements(self.db, self._media)
        # Point reads made in one turn of the event loop share one trip to a pool thread.
        self._reads = ReadBatcher(self._fetch_many, self._run)
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
            except peewee.IntegrityError:
                self._release_connection()
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
        again (``CONFLICT_ATTEMPTS`` runs in all), so ``fn`` must be safe to rerun; any other
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
        "file_group": ...}``, each name being ``table_prefix`` + role. A new dict on each call."""
        return {"schema": self._schema._meta.table_name, "media_file": self._media._meta.table_name,
                "file_group": self._group._meta.table_name}

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
            updated_at=updated_at,
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
        cursor = self.db.execute_sql(self._sql.upsert,
                                     self._sql.upsert_params(workspace_id, file, _naive_utc(utc_now())))
        if not self._sql.returning:  # MySQL: read back in the same transaction
            cursor = self.db.execute_sql(self._sql.get, (workspace_id, file.fingerprint))
        return self._sql.record(cursor.fetchone())

    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        _check_storable(workspace_id, file)
        return await self._write(self._upsert_one, workspace_id, file)

    async def mark_verified(self, records: Sequence[MediaRecord], when: _dt.datetime) -> None:
        m = self._media
        stamp = _naive_utc(when)
        # Grouped by (workspace, revision) so that one UPDATE covers many rows, and a row
        # rewritten since it was read (a higher revision) stays unverified.
        groups: Dict[Tuple[str, int], List[str]] = {}
        for r in records:
            groups.setdefault((r.workspace_id, r.revision), []).append(r.file.fingerprint)
        keys = list(groups.items())

        def write() -> None:
            for (workspace_id, revision), fingerprints in keys:
                for start in range(0, len(fingerprints), QUERY_CHUNK):
                    m.update(verified_at=stamp).where(
                        (m.workspace_id == workspace_id) & (m.revision == revision)
                        & m.fingerprint.in_(fingerprints[start:start + QUERY_CHUNK])
                    ).execute()

        if keys:
            await self._write(write)

    async def forget(self, record: MediaRecord) -> bool:
        m = self._media

        def delete() -> bool:
            count = m.delete().where(
                (m.workspace_id == record.workspace_id)
                & (m.fingerprint == record.file.fingerprint)
                & (m.revision == record.revision)
            ).execute()
            return count > 0

        return await self._write(delete)

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
        m = self._media
        columns = ["workspace_id", "fingerprint", *_MEDIA_FIELDS, "revision", "created_at", "updated_at",
                   "verified_at"]
        # Each value as peewee would bind it; the SQL text is built once per call, not per
        # statement: peewee's query builder would cost more than the database does here.
        adapt = [m._meta.fields[c].db_value for c in columns]
        rows: Dict[Tuple[str, str], List[Any]] = {}  # the first record of each key
        for record in records:
            _check_storable(record.workspace_id, record.file)
            key = (record.workspace_id, record.file.fingerprint)
            if key not in rows:
                values = {name: getattr(record.file, name) for name in _MEDIA_FIELDS}
                values.update(workspace_id=key[0], fingerprint=key[1], revision=record.revision,
                              created_time=_naive_utc(record.file.created_time),
                              created_at=_naive_utc(record.created_at), updated_at=_naive_utc(record.updated_at),
                              verified_at=_naive_utc(record.verified_at))
                rows[key] = [convert(values[c]) for convert, c in zip(adapt, columns)]
        keys = list(rows)
        # Rows per INSERT: all their parameters stay within old SQLite builds' limit of 999.
        per_statement = max(1, 999 // len(columns))
        quote, param = self.db.quote, self.db.param

        def q(name: str) -> str:
            return f"{quote[0]}{name}{quote[-1]}"

        table = q(m._meta.table_name)
        row_marks = "(" + ", ".join([param] * len(columns)) + ")"
        insert_head = f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) VALUES "
        select_head = (f"SELECT {q('workspace_id')}, {q('fingerprint')} FROM {table} "
                       f"WHERE {q('workspace_id')} = {param} AND {q('fingerprint')} IN ")

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
            by_workspace: Dict[str, List[str]] = {}
            for workspace_id, fingerprint in chunk:
                by_workspace.setdefault(workspace_id, []).append(fingerprint)
            found: Set[Tuple[str, str]] = set()
            for workspace_id, fingerprints in by_workspace.items():
                sql = select_head + "(" + ", ".join([param] * len(fingerprints)) + ")"
                if latest and self.db.for_update:
                    # A locking read sees rows committed after this transaction's snapshot
                    # (MySQL's REPEATABLE READ would not show them to a plain SELECT).
                    sql += " FOR UPDATE"
                found.update(tuple(r) for r in self.db.execute_sql(sql, [workspace_id, *fingerprints]).fetchall())
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
            return []
        inserted = await self._write(write)
        result = []
        for record in records:
            key = (record.workspace_id, record.file.fingerprint)
            result.append(key in inserted)
            inserted.discard(key)  # later records with the same key were not inserted
        return result

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
