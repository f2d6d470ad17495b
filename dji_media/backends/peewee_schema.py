"""The peewee side of the media store: opening a database from a URL, the schema (the same
tables on every engine, with per-engine column types where SQLite's defaults would not hold),
and the conversions between rows and the library's values.

``peewee_store`` holds the store that runs units of work against these.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from typing import Any, Dict, Optional, Tuple, Type, overload
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url
from playhouse.migrate import make_index_name
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase

from ..errors import BadRequest

log = logging.getLogger("dji_media.peewee")

# The version of the tables below; ``peewee_migrations`` upgrades older databases to it.
SCHEMA_VERSION = 7
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
# MySQL limits an index key to 3072 bytes (767 per column in the older row formats) and a
# 1024-character utf8mb4 object_key takes up to 4096: the (workspace_id, object_key) index holds
# the first 191 characters (764 bytes), which still tell one workspace's keys apart.
MYSQL_OBJECT_KEY_PREFIX = 191
# So MySQL indexes the whole key (version 4's unique (workspace_id, object_key) index) in the
# byte order S3 lists keys in: a generated copy of object_key as bytes, 1024 at most (S3's
# limit, and rules.MAX_OBJECT_KEY), which with the workspace id stays within 3072 bytes.
MYSQL_OBJECT_KEY_BYTES = "object_key_bytes"
MAX_OBJECT_KEY_BYTES = 1024
ETAG_LENGTH = 128
PUBLIC_ID_LENGTH = 36
# The default of media_file.public_id: a UUID made by the database for a row inserted without
# one (by a server of an older release still running beside a migrated database, or by a
# host's own INSERT); this release always gives one itself. SQLite's is a version 4 UUID built
# from randomblob(), PostgreSQL's gen_random_uuid() (PostgreSQL 13 or later); MySQL's UUID()
# is a version 1 UUID (time and host based), the one that MariaDB >= 10.2 and MySQL >= 8.0.13
# accept as a column default.
_SQLITE_UUID4 = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)

_MEDIA_FIELDS = (
    "tiny_fingerprint", "object_key", "name", "path", "sub_file_type", "file_group_id",
    "drone_model_key", "payload_model_key", "is_original", "sn", "gimbal_yaw_degree",
    "absolute_altitude", "relative_altitude", "created_time", "created_time_text", "shoot_lat",
    "shoot_lng", "raw_json", "job_id", "payload_name",
)


def object_key_index_name(media_table: str) -> str:
    """The (workspace_id, object_key) index's name, as peewee names an index of those columns.
    Unique since version 4 (on MySQL its second column is ``object_key_bytes``)."""
    return make_index_name(media_table, ("workspace_id", "object_key"))


# Version 6's indexes for the media library, as its step of ``peewee_migrations`` makes them
# (version 7 replaces both). Its pages walk (workspace_id, created_at, public_id) from a cursor
# (keyset pagination, newest or oldest first); missions group records by (workspace_id,
# file_group_id).
LIBRARY_INDEXES_V6: Tuple[Tuple[str, ...], ...] = (
    ("workspace_id", "created_at", "public_id"),
    ("workspace_id", "file_group_id"),
)
# Version 7: the media library's indexes. Every page is ordered by (created_at, public_id), so an
# index serves a filter only if it gives that order too: with (workspace_id, file_group_id) alone
# SQLite walked the workspace's records in upload order and read each one to test the mission
# (60 ms of CPU a page at 100,000 records, one request a second at 16 connections). So the
# filters that keep a small share of a workspace (a mission, an aircraft's serial number) lead an
# index of their own, followed by the order's columns (the mission's also holds what the missions
# list reads: MIN and MAX of created_at per mission). created_time comes last where a capture
# time range is asked (alone, or with a serial number): it is then tested on the index entry,
# and only the records that pass are read from the table (SQLite defers the row's lookup and
# PostgreSQL's B-tree takes it as an index condition; MariaDB 10.11 pushes it into the index
# on oldest-first pages only, and reads the row of each entry it walks backwards). On SQLite
# with the bench's 100,000 records, the SQL of a mission page went from 50 to 0.4 ms, serial
# number and 30 days of capture time from 42 to 2.2 ms, 30 days of capture time from 41 to 12.
# The other filters are left to the walk: the models, the kind and the original flag keep a
# large share of a workspace (a page fills quickly), and a text or position filter cannot use
# a B-tree in this order. Every index is one more entry for each record an upload writes:
# three, not one per filter.
LIBRARY_INDEXES: Tuple[Tuple[str, ...], ...] = (
    ("workspace_id", "created_at", "public_id", "created_time"),
    ("workspace_id", "file_group_id", "created_at", "public_id"),
    ("workspace_id", "sn", "created_at", "public_id", "created_time"),
)
# PostgreSQL keeps the first 63 characters of a longer name; peewee's index names go up to 64.
MAX_INDEX_NAME = 63


def library_index_name(media_table: str, columns: Tuple[str, ...]) -> str:
    """The name of one of the media library's indexes (versions 6 and 7): peewee's name for an
    index of those columns, the table's name and the columns' joined by ``_``; a name longer
    than ``MAX_INDEX_NAME`` keeps its first 55 characters and a hash of the whole, so that the
    name asked for is the name every engine keeps (with the default table prefix, peewee names
    version 7's serial-number index in 64 characters, which PostgreSQL would cut to 63)."""
    name = "_".join((media_table, *columns))
    if len(name) <= MAX_INDEX_NAME:
        return name
    digest = hashlib.md5(name.encode("utf-8")).hexdigest()[:7]
    return f"{name[:MAX_INDEX_NAME - 8]}_{digest}"


def public_id_index_name(media_table: str) -> str:
    """The unique index of media_file.public_id (version 4)."""
    return make_index_name(media_table, ("public_id",))


def public_id_default(db: peewee.Database) -> str:
    """The SQL of media_file.public_id's DEFAULT on this engine (see ``_SQLITE_UUID4``)."""
    if isinstance(db, peewee.PostgresqlDatabase):
        return "gen_random_uuid()::text"
    if isinstance(db, peewee.MySQLDatabase):
        return "(UUID())"
    return f"({_SQLITE_UUID4})"


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


@overload
def _naive_utc(value: _dt.datetime) -> _dt.datetime: ...
@overload
def _naive_utc(value: None) -> None: ...
@overload
def _naive_utc(value: Optional[_dt.datetime]) -> Optional[_dt.datetime]: ...
def _naive_utc(value: Optional[_dt.datetime]) -> Optional[_dt.datetime]:
    # Columns hold naive UTC so every engine stores the same thing; values outside are aware.
    if value is None:
        return None
    return value.astimezone(_dt.timezone.utc).replace(tzinfo=None)


def _aware_utc(value: Any) -> Optional[_dt.datetime]:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands back text for some column types
        try:
            # Stored as naive UTC text. Parsing it with the offset appended is ten times
            # cheaper than parsing and then replace(tzinfo=...), and a read parses up to four per row.
            value = _dt.datetime.fromisoformat(value + "+00:00")
        except ValueError:  # text with an offset of its own
            value = _dt.datetime.fromisoformat(value)
        # (Python 3.11 reads a bare date with "+00:00" as a naive midnight: handled below.)
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
    values = dict(vars(item), workspace_id=workspace_id)  # a dataclass's fields (hot path: no fields())
    for name, value in values.items():
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise BadRequest(f"{name} must not contain the NUL character", field=name)
        if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
            raise BadRequest(f"{name} is out of range", field=name)


def _storable(text: str) -> bool:
    return "\x00" not in text


def table_names(table_prefix: str) -> Dict[str, str]:
    """The store's tables by role (``schema``, ``media_file``, ``file_group``, ``task``,
    ``device``), in the order they may be dropped: each name is ``table_prefix`` + role."""
    return {role: f"{table_prefix}{role}" for role in ("device", "task", "file_group", "media_file", "schema")}


class _MySQLObjectKeyBytes(peewee.Field):
    # Generated by the server from object_key: never written, never read back by the store.
    field_type = f"VARBINARY({MAX_OBJECT_KEY_BYTES})"


def _build_models(db: peewee.Database, table_prefix: str) -> Tuple[Type[peewee.Model], ...]:
    """Model classes bound to this store's database, so several stores can coexist: the schema
    row, media files, file groups, tasks (leases and task state) and devices (which workspace
    each dock belongs to, ``peewee_devices``), in that order.

    Integers that come from devices are BIGINT (SQLite's INTEGER is 64-bit already). On MySQL,
    timestamps are DATETIME(6) and raw_json LONGTEXT, and the tables get a binary collation
    (chosen in ``_ensure_schema``) so that fingerprints are case-sensitive there too.

    Object keys compare in the byte order of their UTF-8, as S3 lists them (the storage sweep
    reads records in that order): SQLite compares text with memcmp; PostgreSQL's object_key
    column has the "C" collation (the database's default collation may sort by language rules;
    equality, and so the case-sensitivity of every key, is exact either way); MySQL indexes and
    compares ``object_key_bytes``, a generated binary copy, because a 1024-character utf8mb4
    column is too long for a whole-key index there.
    """
    mysql = isinstance(db, peewee.MySQLDatabase)
    postgresql = isinstance(db, peewee.PostgresqlDatabase)
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
            table_name = table_names(table_prefix)["schema"]

    class MediaRow(Base):
        # Upserts that hit an existing row still consume an id on PostgreSQL and MySQL.
        id = peewee.BigAutoField()
        workspace_id = peewee.CharField(max_length=64)
        # NULL (version 5) for a dock's file: docks send no fingerprint, and the record is
        # identified by (workspace_id, object_key), unique since version 4. NULLs never collide
        # in the unique (workspace_id, fingerprint) index on SQLite, PostgreSQL or InnoDB.
        fingerprint = peewee.CharField(max_length=64, null=True)
        tiny_fingerprint = peewee.CharField(max_length=128, null=True)
        object_key = peewee.CharField(max_length=1024, collation='"C"' if postgresql else None)
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
        # Version 2. Last, so a new table has the same column order as a migrated one.
        job_id = peewee.CharField(max_length=128, null=True)
        # Version 3, after version 2's for the same reason.
        payload_name = peewee.CharField(max_length=128, null=True)
        # Version 4: what storage reported for the object at its first confirmation (the
        # sweep compares later listings with it), and the file's stable public id.
        etag = peewee.CharField(max_length=ETAG_LENGTH, null=True)
        size = peewee.BigIntegerField(null=True)
        public_id = peewee.CharField(max_length=PUBLIC_ID_LENGTH,
                                     constraints=[peewee.SQL(f"DEFAULT {public_id_default(db)}")])
        if mysql:
            object_key_bytes = _MySQLObjectKeyBytes(
                null=True, column_name=MYSQL_OBJECT_KEY_BYTES,
                constraints=[peewee.SQL("AS (CAST(`object_key` AS BINARY)) STORED")])

        class Meta:
            table_name = table_names(table_prefix)["media_file"]
            indexes = (
                (("workspace_id", "fingerprint"), True),
                (("workspace_id", "tiny_fingerprint"), False),
            )

    # Version 4 (in the order its migration creates them). One object key, one record: docks
    # name files by object key (protocol.md section 6) and the sweep reads records in key order.
    table = MediaRow._meta.table_name
    MediaRow.add_index(MediaRow.index(MediaRow.public_id, unique=True, name=public_id_index_name(table)))
    key_column = getattr(MediaRow, MYSQL_OBJECT_KEY_BYTES) if mysql else MediaRow.object_key
    MediaRow.add_index(MediaRow.index(MediaRow.workspace_id, key_column, unique=True,
                                      name=object_key_index_name(table)))
    for columns in LIBRARY_INDEXES:  # version 7 (6 had others)
        MediaRow.add_index(MediaRow.index(*(getattr(MediaRow, c) for c in columns),
                                          name=library_index_name(table, columns)))

    class GroupRow(Base):
        workspace_id = peewee.CharField(max_length=64)
        file_group_id = peewee.CharField(max_length=128)
        file_count = peewee.BigIntegerField()
        file_uploaded_count = peewee.BigIntegerField()
        updated_at = DateTimeField()  # UTC
        # Version 5: the mission's expected total as a dock announced it (NULL: none did).
        expected_file_count = peewee.BigIntegerField(null=True)

        class Meta:
            table_name = table_names(table_prefix)["file_group"]
            indexes = ((("workspace_id", "file_group_id"), True),)

    class TaskRow(Base):
        # Version 4: a lease per periodic task (one holder at a time across every process on
        # the database) and the text the task keeps between runs.
        name = peewee.CharField(max_length=64, primary_key=True)
        holder = peewee.CharField(max_length=128, null=True)
        lease_until = DateTimeField(null=True)  # UTC, by the database's clock
        state = TextField(null=True)
        updated_at = DateTimeField()  # UTC, by the database's clock

        class Meta:
            table_name = table_names(table_prefix)["task"]

    class DeviceRow(Base):
        # Version 5: the workspace each dock (gateway) is bound to (peewee_devices).
        gateway_sn = peewee.CharField(max_length=128, primary_key=True)
        workspace_id = peewee.CharField(max_length=64, index=True)
        bound_at = DateTimeField()  # UTC
        note = peewee.CharField(max_length=255, null=True)

        class Meta:
            table_name = table_names(table_prefix)["device"]

    return SchemaInfo, MediaRow, GroupRow, TaskRow, DeviceRow
