"""MediaStore on peewee: SQLite by default, PostgreSQL and MySQL/MariaDB by URL.

Under Tornado all coroutines share one thread, so a connection or transaction must never span an
``await``: every method below is one self-contained unit of work (connect, transaction, close on
failure) run in a bounded thread pool. On SQLite each pool thread keeps its own connection
(peewee's connection state is thread-local); on PostgreSQL and MySQL each unit of work checks a
connection out of a ``playhouse.pool`` pool and returns it. Either way a connection that failed
is closed, never reused, so service resumes by itself once the database is back.

The schema is the same on every engine; where an engine's default differs from SQLite's, the
column says so on that engine (see ``_build_models``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import random
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url
from playhouse.pool import (
    MaxConnectionsExceeded,
    PooledDatabase,
    PooledMySQLDatabase,
    PooledPostgresqlDatabase,
)

from ..errors import BadRequest, DatabaseUnavailable
from ..interfaces import MediaStore
from ..values import FileGroup, GroupReport, MediaFile, MediaRecord, utc_now
from ._blocking import BlockingRunner

log = logging.getLogger("dji_media.peewee")

SCHEMA_VERSION = 1
# SQLite allows 999 parameters per statement in old builds; stay well below.
QUERY_CHUNK = 500
# URL schemes given a connection pool of max_workers connections (playhouse's "+pool" schemes
# too, with the same defaults); the query string may override any pool or driver parameter.
_POOLED_SCHEMES = {
    "postgres": PooledPostgresqlDatabase,
    "postgresql": PooledPostgresqlDatabase,
    "postgres+pool": PooledPostgresqlDatabase,
    "postgresql+pool": PooledPostgresqlDatabase,
    "mysql": PooledMySQLDatabase,
    "mysql+pool": PooledMySQLDatabase,
}
# Seconds a unit of work waits for a free pooled connection (only when the host's executor has
# more threads than the pool has connections), and for a new connection to a silent server.
POOL_WAIT_SECONDS = 10
CONNECT_TIMEOUT_SECONDS = 10
# Concurrent writers to one row may deadlock on MySQL's ON DUPLICATE KEY UPDATE (InnoDB takes
# a shared then an exclusive lock); the server aborts one transaction, which is simply rerun.
CONFLICT_ATTEMPTS = 8
_PG_RETRY_CODES = ("40001", "40P01")  # serialization_failure, deadlock_detected
_MYSQL_RETRY_CODES = (1213, 1020)  # deadlock; MariaDB: record changed since last read
# Binary (case- and accent-sensitive) collations that do not pad: 'a' and 'a ' stay distinct
# keys, as on SQLite and PostgreSQL. MariaDB >= 10.2 has the first, MySQL 8 the second.
_MYSQL_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
_INT64 = range(-2**63, 2**63)

_MEDIA_FIELDS = (
    "tiny_fingerprint", "object_key", "name", "path", "sub_file_type", "file_group_id",
    "drone_model_key", "payload_model_key", "is_original", "sn", "gimbal_yaw_degree",
    "absolute_altitude", "relative_altitude", "created_time", "created_time_text", "shoot_lat",
    "shoot_lng", "raw_json",
)


def _describe(exc: BaseException) -> str:
    """The error an operator needs. SQLite ends a transaction by itself on some errors (a full
    disk, for one); the rollback that follows then fails and would hide the real cause."""
    cause: BaseException = exc
    seen = 0
    while "no transaction is active" in str(cause) and seen < 10:
        following = cause.__cause__ or cause.__context__
        if following is None:
            break
        cause, seen = following, seen + 1
    return f"{type(cause).__name__}: {cause}"


def _naive_utc(value: Optional[_dt.datetime]) -> Optional[_dt.datetime]:
    # Columns hold naive UTC so every engine stores the same thing; values outside are aware.
    if value is None:
        return None
    return value.astimezone(_dt.timezone.utc).replace(tzinfo=None)


def _aware_utc(value: Any) -> Optional[_dt.datetime]:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands back text for some column types
        value = _dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value


def open_database(url: str, *, busy_timeout_ms: int = 5000, synchronous: str = "full",
                  max_connections: int = 4) -> peewee.Database:
    """Build a peewee database from a URL.

    SQLite gets WAL (readers never block the writer), a busy timeout (writers wait for each
    other instead of failing with "database is locked") and foreign keys. PostgreSQL
    (``postgresql://``, ``postgres://``) and MySQL/MariaDB (``mysql://``) get a pool of
    ``max_connections`` connections, a wait for a free one and a connect timeout; parameters
    in the query string (``?max_connections=8&stale_timeout=300``) override those. Other URLs
    go to ``playhouse.db_url`` unchanged.
    """
    scheme = urlparse(url).scheme
    if scheme in ("sqlite", "sqliteext"):
        path = url.split("://", 1)[1]
        # sqlite:///relative.db and sqlite:////absolute.db, as in SQLAlchemy and playhouse.
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError("url: sqlite URL needs a file path, e.g. sqlite:///var/media.sqlite3")
        return peewee.SqliteDatabase(
            path,
            timeout=busy_timeout_ms / 1000.0,
            # Each pool thread uses its own connection; close() shuts them from the caller's
            # thread once the pool has stopped, which sqlite3 allows only with this flag.
            check_same_thread=False,
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": busy_timeout_ms,
                "foreign_keys": 1,
                "synchronous": synchronous,
            },
        )
    pooled = _POOLED_SCHEMES.get(scheme)
    if pooled is not None:
        params: Dict[str, Any] = {"max_connections": max_connections, "timeout": POOL_WAIT_SECONDS,
                                  "connect_timeout": CONNECT_TIMEOUT_SECONDS}
        if pooled is PooledMySQLDatabase:
            # 4-byte UTF-8 (emoji) and the tables' utf8mb4 collation; peewee 3 defaults to utf8.
            params["charset"] = "utf8mb4"
        params.update(parse_url(url))
        if "passwd" in params:  # playhouse's spelling for mysql://; PyMySQL 1.x deprecates it
            params["password"] = params.pop("passwd")
        database = params.pop("database")
        if not database:
            raise ValueError(f"url: {scheme} URL needs a database name, e.g. {scheme}://user@host/dbname")
        return pooled(database, **params)
    try:
        return connect_url(url)
    except Exception as exc:  # playhouse raises RuntimeError/ValueError for unknown schemes
        raise ValueError(f"url: cannot use database URL scheme {scheme!r} ({exc})") from None


class _MySQLDateTimeField(peewee.DateTimeField):
    # MySQL's DATETIME drops the fraction of a second; the other engines keep microseconds.
    field_type = "DATETIME(6)"


class _MySQLLongTextField(peewee.TextField):
    # MySQL's TEXT holds 64 KiB; raw_json may be as large as a request body (1 MiB by default).
    field_type = "LONGTEXT"


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's exception behind peewee's (``orig`` in peewee 4, ``args[0]`` in 3)."""
    for inner in (getattr(exc, "orig", None), exc.args[0] if exc.args else None):
        if isinstance(inner, BaseException):
            return inner
    return exc


def _retryable(exc: BaseException) -> bool:
    """A transaction the server aborted to resolve a conflict: rerunning it is safe."""
    cause = _driver_error(exc)
    if getattr(cause, "pgcode", None) in _PG_RETRY_CODES:
        return True
    code = cause.args[0] if cause.args else None
    return isinstance(exc, peewee.OperationalError) and code in _MYSQL_RETRY_CODES


def _check_storable(workspace_id: str, item: Any) -> None:
    """Refuse what one of the supported engines cannot store, so that all behave alike."""
    values = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    values["workspace_id"] = workspace_id
    for name, value in values.items():
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise BadRequest(f"{name} must not contain the NUL character", field=name)
        if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
            raise BadRequest(f"{name} is out of range", field=name)


def _storable(text: str) -> bool:
    return "\x00" not in text


def _build_models(db: peewee.Database, table_prefix: str) -> Tuple[Type[peewee.Model], ...]:
    """Model classes bound to this store's database, so several stores can coexist.

    Integers that come from devices are BIGINT (SQLite's INTEGER is 64-bit already). On MySQL,
    timestamps are DATETIME(6) and raw_json LONGTEXT, and the tables get a binary collation
    (chosen in ``_ensure_schema``) so that fingerprints are case-sensitive there too.
    """
    mysql = isinstance(db, peewee.MySQLDatabase)
    DateTimeField = _MySQLDateTimeField if mysql else peewee.DateTimeField
    TextField = _MySQLLongTextField if mysql else peewee.TextField

    class Base(peewee.Model):
        class Meta:
            database = db
            # Index names start with the table name, so stores with different prefixes can
            # share one PostgreSQL schema or SQLite file (their index names are per schema).
            legacy_table_names = False

    class SchemaInfo(Base):
        version = peewee.IntegerField()

        class Meta:
            table_name = f"{table_prefix}schema"

    class MediaRow(Base):
        # Upserts that hit an existing row still consume an id on PostgreSQL and MySQL.
        id = peewee.BigAutoField()
        workspace_id = peewee.CharField(max_length=64)
        fingerprint = peewee.CharField(max_length=64)
        tiny_fingerprint = peewee.CharField(max_length=128, null=True)
        object_key = peewee.CharField(max_length=1024)
        name = peewee.CharField(max_length=255, null=True)
        path = peewee.CharField(max_length=1024, null=True)
        sub_file_type = peewee.BigIntegerField(null=True)
        file_group_id = peewee.CharField(max_length=128, null=True)
        drone_model_key = peewee.CharField(max_length=128, null=True)
        payload_model_key = peewee.CharField(max_length=128, null=True)
        is_original = peewee.BooleanField(null=True)
        sn = peewee.CharField(max_length=128, null=True)
        gimbal_yaw_degree = peewee.DoubleField(null=True)
        absolute_altitude = peewee.DoubleField(null=True)
        relative_altitude = peewee.DoubleField(null=True)
        created_time = DateTimeField(null=True)  # UTC
        created_time_text = peewee.CharField(max_length=64, null=True)  # as the device sent it
        shoot_lat = peewee.DoubleField(null=True)
        shoot_lng = peewee.DoubleField(null=True)
        raw_json = TextField()
        revision = peewee.IntegerField(default=1)
        verified_at = DateTimeField(null=True)  # UTC; storage last confirmed the object
        created_at = DateTimeField()  # UTC
        updated_at = DateTimeField()  # UTC

        class Meta:
            table_name = f"{table_prefix}media_file"
            indexes = (
                (("workspace_id", "fingerprint"), True),
                (("workspace_id", "tiny_fingerprint"), False),
            )

    class GroupRow(Base):
        workspace_id = peewee.CharField(max_length=64)
        file_group_id = peewee.CharField(max_length=128)
        file_count = peewee.BigIntegerField()
        file_uploaded_count = peewee.BigIntegerField()
        updated_at = DateTimeField()  # UTC

        class Meta:
            table_name = f"{table_prefix}file_group"
            indexes = ((("workspace_id", "file_group_id"), True),)

    return SchemaInfo, MediaRow, GroupRow


class PeeweeMediaStore(MediaStore):
    """MediaStore on a peewee database.

    :param url: a database URL (``sqlite:///var/media.sqlite3``, ``postgresql://user@host/db``,
        ``mysql://user@host/db``, see ``open_database``); or pass ``database``, a peewee
        ``Database`` the host already owns (a pooled one is left open by ``close()``).
    :param busy_timeout_ms: SQLite only: how long a writer waits for the lock.
    :param max_workers: threads (and so connections; the pool size for a URL) for database work.
    :param create_tables: create the schema when absent (on first use).
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
        executor: Any = None,
    ) -> None:
        if (url is None) == (database is None):
            raise ValueError("url: give exactly one of a database URL or a peewee database")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must be >= 0")
        if synchronous.lower() not in ("off", "normal", "full", "extra"):
            raise ValueError("synchronous must be one of off, normal, full, extra")
        self.db = database if database is not None else open_database(
            url, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous.lower(),
            max_connections=max_workers,
        )
        self._owns_db = database is None
        # Pooled connections are checked out per unit of work (SQLite's stay with their thread:
        # a sqlite3 connection may not move between threads).
        self._pooled = isinstance(self.db, PooledDatabase) and not isinstance(self.db, peewee.SqliteDatabase)
        self._schema, self._media, self._group = _build_models(self.db, table_prefix)
        self._create_tables = create_tables
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._runner = BlockingRunner(executor=executor, max_workers=max_workers, name="dji-db")
        self._connections: set = set()  # opened by pool threads, closed by close()
        self._connections_lock = threading.Lock()

    # ----------------------------------------------------------------- unit of work

    def _ensure_schema(self) -> None:
        if self._schema_ready or not self._create_tables:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            models = [self._schema, self._media, self._group]
            if isinstance(self.db, peewee.MySQLDatabase):
                settings = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4", f"COLLATE={self._mysql_collation()}"]
                for model in models:
                    model._meta.table_settings = settings
            with self.db.atomic():
                self.db.create_tables(models, safe=True)
                if not self._schema.select().exists():
                    self._schema.create(version=SCHEMA_VERSION)
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

    def _work(self, fn, *args):
        """One unit of work in one transaction; a database failure closes the connection."""
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
                with self.db.atomic():
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
                self.db.manual_close()  # closed, not returned: a broken connection stays out
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

    async def _run(self, fn, *args):
        return await self._runner.run(self._work, fn, *args)

    # ------------------------------------------------------------------- conversion

    def _record(self, row: Any) -> MediaRecord:
        values = {name: getattr(row, name) for name in _MEDIA_FIELDS}
        values["created_time"] = _aware_utc(values["created_time"])
        return MediaRecord(
            workspace_id=row.workspace_id,
            file=MediaFile(fingerprint=row.fingerprint, **values),
            revision=row.revision,
            created_at=_aware_utc(row.created_at),
            updated_at=_aware_utc(row.updated_at),
            verified_at=_aware_utc(row.verified_at),
        )

    def _group_value(self, row: Any) -> FileGroup:
        return FileGroup(
            workspace_id=row.workspace_id, file_group_id=row.file_group_id,
            file_count=row.file_count, file_uploaded_count=row.file_uploaded_count,
            updated_at=_aware_utc(row.updated_at),
        )

    def _upsert_query(self, model, row: Dict[str, Any], conflict: Sequence[Any], update: Dict[Any, Any]):
        query = model.insert(**row)
        if isinstance(self.db, peewee.MySQLDatabase):
            # MySQL's ON DUPLICATE KEY UPDATE takes no conflict target: any unique key counts.
            return query.on_conflict(update=update)
        return query.on_conflict(conflict_target=conflict, update=update)

    # -------------------------------------------------------------------- interface

    async def get(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        def fetch() -> Optional[MediaRecord]:
            m = self._media
            # .first(), not get_or_none(): on a miss peewee would compile the SQL a second time
            # just for the message of the exception it then swallows (a third of a miss).
            row = m.select().where((m.workspace_id == workspace_id) & (m.fingerprint == fingerprint)).first()
            return self._record(row) if row else None

        if not (_storable(workspace_id) and _storable(fingerprint)):
            return None  # could not have been stored
        return await self._run(fetch)

    async def find_by_tiny_fingerprints(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> List[MediaRecord]:
        wanted = [t for t in dict.fromkeys(tiny_fingerprints) if _storable(t)]

        def fetch() -> List[MediaRecord]:
            m = self._media
            found: List[MediaRecord] = []
            for start in range(0, len(wanted), QUERY_CHUNK):
                chunk = wanted[start:start + QUERY_CHUNK]
                query = m.select().where(
                    (m.workspace_id == workspace_id) & (m.tiny_fingerprint.in_(chunk))
                )
                found.extend(self._record(row) for row in query)
            return found

        if not wanted or not _storable(workspace_id):
            return []
        return await self._run(fetch)

    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        m = self._media
        _check_storable(workspace_id, file)

        def write() -> MediaRecord:
            now = _naive_utc(utc_now())
            values = {name: getattr(file, name) for name in _MEDIA_FIELDS}
            values["created_time"] = _naive_utc(file.created_time)
            row = dict(values, workspace_id=workspace_id, fingerprint=file.fingerprint,
                       revision=1, created_at=now, updated_at=now)
            update = {getattr(m, name): value for name, value in values.items()}
            update[m.updated_at] = now
            update[m.revision] = m.revision + 1
            update[m.verified_at] = None
            self._upsert_query(m, row, [m.workspace_id, m.fingerprint], update).execute()
            stored = m.get((m.workspace_id == workspace_id) & (m.fingerprint == file.fingerprint))
            return self._record(stored)

        return await self._run(write)

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
            await self._run(write)

    async def forget(self, record: MediaRecord) -> bool:
        m = self._media

        def delete() -> bool:
            count = m.delete().where(
                (m.workspace_id == record.workspace_id)
                & (m.fingerprint == record.file.fingerprint)
                & (m.revision == record.revision)
            ).execute()
            return count > 0

        return await self._run(delete)

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

        return await self._run(write)

    async def get_group(self, workspace_id: str, file_group_id: str) -> Optional[FileGroup]:
        g = self._group

        def fetch() -> Optional[FileGroup]:
            row = g.get_or_none((g.workspace_id == workspace_id) & (g.file_group_id == file_group_id))
            return self._group_value(row) if row else None

        if not (_storable(workspace_id) and _storable(file_group_id)):
            return None
        return await self._run(fetch)

    async def ping(self) -> None:
        s = self._schema

        def touch() -> None:
            # A write proves more than a read: a read-only file or a full disk fails here.
            s.update(version=s.version).execute()

        await self._run(touch)

    async def close(self) -> None:
        self._runner.close()  # waits for running work; no thread uses a connection after this
        if self._pooled and self._owns_db:
            self.db.close_all()
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.close()
            except Exception as exc:  # a host-owned database may forbid closing from here
                log.warning("could not close a database connection: %s", exc)
