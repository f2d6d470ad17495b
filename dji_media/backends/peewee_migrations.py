"""Schema versions of the peewee store: the tables of the current version on an empty database,
a refusal of a database at any other version, and upgrades of an older one in place
(``dji-media migrate``).

A database keeps its version in the one row of ``{prefix}schema``. ``STEPS`` upgrade it one
version at a time. A step is a list of changes, each with a test of whether it is already there:
SQLite and PostgreSQL run a step in one transaction (all or nothing), but MySQL commits each DDL
statement by itself, so there a step cut short leaves some changes behind, and running it again
skips them and finishes. The version row changes last, in the step's transaction where there is
one.

Creating the tables and each step hold a lock across processes (SQLite: the write lock;
PostgreSQL: a transaction-scoped advisory lock; MySQL: a named lock), so that servers starting
together on an empty database create it once, and a server started while ``migrate`` runs waits
for it, then finds the new version.

To add version N: bump ``SCHEMA_VERSION`` and change the models in ``peewee_schema`` (what an
empty database gets), and append ``Step(N, ...)`` here (what an older one gets). Both must end
with the same tables; tests/test_migrations.py compares them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import peewee
from playhouse.migrate import SchemaMigrator, make_index_name

from ..errors import DatabaseUnavailable, SchemaMismatch
from ..values import SchemaMigration
from .peewee_schema import (
    _MYSQL_COLLATIONS,
    ETAG_LENGTH,
    LIBRARY_INDEXES,
    LIBRARY_INDEXES_V6,
    MAX_OBJECT_KEY_BYTES,
    MYSQL_OBJECT_KEY_BYTES,
    MYSQL_OBJECT_KEY_PREFIX,
    PUBLIC_ID_LENGTH,
    SCHEMA_VERSION,
    _aware_utc,
    _describe,
    library_index_name,
    object_key_index_name,
    public_id_default,
    public_id_index_name,
)

log = logging.getLogger("dji_media.peewee")

# How long creating the tables, a step, or a server waiting for either, waits for the lock (and,
# on PostgreSQL, for the tables' locks) before giving up.
SCHEMA_LOCK_SECONDS = 300
# Rows per UPDATE when version 4 gives existing rows their public id: three parameters a row
# stay within old SQLite builds' limit of 999 a statement.
PUBLIC_ID_BATCH = 300
# Records per DELETE when version 4 resolves duplicate object keys.
DELETE_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Change:
    """One change of a step: what it does (for the operator), whether it is already there, and
    how to make it."""

    description: str
    present: Callable[[], bool]
    apply: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Step:
    """Upgrades a database from ``version - 1`` to ``version``."""

    version: int
    changes: Callable[["SchemaVersions"], List[Change]]


def _to_2(schema: "SchemaVersions") -> List[Change]:
    # The mission (job) of each file, which DJI's demo server stores and imports must keep, and
    # the index docks need to find a file by its object key (they send no fingerprint).
    table = schema.media_table
    index = object_key_index_name(table)
    columns = "workspace_id, object_key"
    if schema.mysql:
        columns = f"workspace_id, object_key({MYSQL_OBJECT_KEY_PREFIX})"

    def add_job_id() -> None:
        schema.migrator.add_column(table, "job_id", peewee.CharField(max_length=128, null=True)).run()

    def add_index() -> None:
        key = peewee.SQL(schema.quote("object_key") + f"({MYSQL_OBJECT_KEY_PREFIX})") if schema.mysql \
            else peewee.Entity("object_key")
        schema.db.execute(peewee.Index(index, peewee.Table(table), [peewee.Entity("workspace_id"), key]).safe(False))

    def has_index() -> bool:
        # On MySQL, version 4 replaces this index with one on (workspace_id, object_key_bytes).
        return schema.has_index(table, ("workspace_id", "object_key")) or (
            schema.mysql and schema.has_index(table, ("workspace_id", MYSQL_OBJECT_KEY_BYTES)))

    return [
        Change(f"add column job_id VARCHAR(128) NULL to {table}",
               lambda: schema.has_column(table, "job_id"), add_job_id),
        Change(f"create index {index} on {table} ({columns})", has_index, add_index),
    ]


def _to_3(schema: "SchemaVersions") -> List[Change]:
    # The payload's display name ("M30 Camera"), which DJI's demo server stores instead of a
    # payload model key: imports keep it in a column of its own rather than as a model key.
    table = schema.media_table

    def add_payload_name() -> None:
        schema.migrator.add_column(table, "payload_name", peewee.CharField(max_length=128, null=True)).run()

    return [
        Change(f"add column payload_name VARCHAR(128) NULL to {table}",
               lambda: schema.has_column(table, "payload_name"), add_payload_name),
    ]


def _to_4(schema: "SchemaVersions") -> List[Change]:
    # Storage truth at fleet scale: the ETag and size storage reported at the first
    # confirmation, a stable public id per file, one record per object key (the sweep reads
    # records in object-key order, in the byte order S3 lists keys in), and a table of leases
    # and task state. The counts in the lines are taken when the step is planned.
    db, table, q = schema.db, schema.media_table, schema.quote
    t = q(table)
    has_public_id = schema.has_column(table, "public_id")
    superseded = _superseded(schema, has_public_id)
    without_id = schema.count(f"SELECT COUNT(*) FROM {t}" + (f" WHERE {q('public_id')} IS NULL" if has_public_id
                                                            else ""))
    to_fill = without_id - sum(1 for _, no_id in superseded if no_id)
    key_index = object_key_index_name(table)
    id_index = public_id_index_name(table)

    def add(column: str, field: peewee.Field) -> Callable[[], None]:
        return lambda: schema.migrator.add_column(table, column, field).run()

    def fill_public_ids() -> None:
        # In id order from where the last batch ended, so each SELECT reads the next stretch of
        # the primary key, however large the table. (Asking for "public_id IS NULL" there too
        # made PostgreSQL, which has no statistics for a new column, scan the table each time.)
        last = 0
        select = f"SELECT {q('id')} FROM {t} WHERE {q('id')} > {db.param} ORDER BY {q('id')} LIMIT {PUBLIC_ID_BATCH}"
        while True:
            ids = [row[0] for row in schema._rows(select, (last,))]
            if not ids:
                return
            cases = " ".join([f"WHEN {db.param} THEN {db.param}"] * len(ids))
            marks = ", ".join([db.param] * len(ids))
            params: List[Any] = []
            for row_id in ids:
                params += [row_id, str(uuid.uuid4())]
            db.execute_sql(f"UPDATE {t} SET {q('public_id')} = CASE {q('id')} {cases} END "
                           f"WHERE {q('id')} IN ({marks}) AND {q('public_id')} IS NULL", params + ids)
            last = ids[-1]

    def public_id_required() -> None:
        if schema.sqlite:  # SQLite cannot change a column: the table is built again, as it now is
            schema.rebuild_media_table()
        elif schema.postgresql:
            db.execute_sql(f"ALTER TABLE {t} ALTER COLUMN {q('public_id')} SET DEFAULT {public_id_default(db)}, "
                           f"ALTER COLUMN {q('public_id')} SET NOT NULL")
        else:
            # Each DDL statement commits by itself here, and older servers may have inserted
            # rows since the fill: give those theirs first.
            fill_public_ids()
            default = f" DEFAULT {public_id_default(db)}" if schema.mysql_expression_defaults() else ""
            db.execute_sql(f"ALTER TABLE {t} MODIFY {q('public_id')} VARCHAR({PUBLIC_ID_LENGTH}) NOT NULL{default}")

    def add_public_id_index() -> None:
        db.execute(peewee.Index(id_index, peewee.Table(table), [peewee.Entity("public_id")], unique=True).safe(False))

    def resolve_duplicates() -> None:
        ids = [row_id for row_id, _ in _superseded(schema, False)]
        for start in range(0, len(ids), DELETE_BATCH):
            chunk = ids[start:start + DELETE_BATCH]
            db.execute_sql(f"DELETE FROM {t} WHERE {q('id')} IN ({', '.join([db.param] * len(chunk))})", chunk)

    def unique_object_keys() -> None:
        if schema.mysql:
            # Older servers may have written a duplicate since it was resolved (each statement
            # commits by itself here). Then one ALTER: the column, and the index swapped.
            resolve_duplicates()
            clauses = []
            if not schema.has_column(table, MYSQL_OBJECT_KEY_BYTES):
                clauses.append(f"ADD COLUMN {q(MYSQL_OBJECT_KEY_BYTES)} VARBINARY({MAX_OBJECT_KEY_BYTES}) "
                               f"AS (CAST({q('object_key')} AS BINARY)) STORED")
            if key_index in schema.index_names(table):
                clauses.append(f"DROP INDEX {q(key_index)}")
            clauses.append(f"ADD UNIQUE INDEX {q(key_index)} ({q('workspace_id')}, {q(MYSQL_OBJECT_KEY_BYTES)})")
            db.execute_sql(f"ALTER TABLE {t} " + ", ".join(clauses))
            return
        if key_index in schema.index_names(table):
            db.execute_sql(f"DROP INDEX {q(key_index)}")
        if schema.postgresql:
            db.execute_sql(f"ALTER TABLE {t} ALTER COLUMN {q('object_key')} TYPE VARCHAR(1024) COLLATE \"C\"")
        db.execute(peewee.Index(key_index, peewee.Table(table), [peewee.Entity("workspace_id"),
                                                                 peewee.Entity("object_key")], unique=True).safe(False))

    def unique_object_keys_present() -> bool:
        if schema.mysql:
            return (schema.has_index(table, ("workspace_id", MYSQL_OBJECT_KEY_BYTES), unique=True)
                    and not schema.has_index(table, ("workspace_id", "object_key")))
        return schema.has_index(table, ("workspace_id", "object_key"), unique=True) and (
            not schema.postgresql or schema.column_collation(table, "object_key") == "C")

    def create_task_table() -> None:
        schema.create_tables([schema.task_model])

    if schema.mysql:
        unique_line = (f"add column {MYSQL_OBJECT_KEY_BYTES} VARBINARY({MAX_OBJECT_KEY_BYTES}) AS "
                       f"(CAST(object_key AS BINARY)) STORED to {table}, and replace index {key_index} "
                       f"(workspace_id, object_key({MYSQL_OBJECT_KEY_PREFIX})) with a unique index on "
                       f"(workspace_id, {MYSQL_OBJECT_KEY_BYTES})")
    else:
        unique_line = f"make index {key_index} on {table} (workspace_id, object_key) unique"
        if schema.postgresql:
            unique_line += ', object_key in byte order (COLLATE "C")'
    return [
        Change(f"add column etag VARCHAR({ETAG_LENGTH}) NULL to {table}",
               lambda: schema.has_column(table, "etag"), add("etag", peewee.CharField(max_length=ETAG_LENGTH,
                                                                                      null=True))),
        Change(f"add column size BIGINT NULL to {table}",
               lambda: schema.has_column(table, "size"), add("size", peewee.BigIntegerField(null=True))),
        Change(f"one record per (workspace_id, object_key) in {table}: delete {len(superseded)} record(s) whose "
               "object key a more recently updated record holds",
               lambda: not _superseded(schema, False), resolve_duplicates),
        Change(f"add column public_id VARCHAR({PUBLIC_ID_LENGTH}) NULL to {table}",
               lambda: schema.has_column(table, "public_id"),
               add("public_id", peewee.CharField(max_length=PUBLIC_ID_LENGTH, null=True))),
        Change(f"fill public_id of {to_fill} row(s) with new UUID4s, {PUBLIC_ID_BATCH} rows per statement",
               lambda: schema.has_column(table, "public_id") and schema.count(
                   f"SELECT COUNT(*) FROM {t} WHERE {q('public_id')} IS NULL") == 0,
               fill_public_ids),
        Change("make public_id NOT NULL, with a database-made UUID as default"
               + (f" (SQLite: {table} is copied into a new table)" if schema.sqlite else ""),
               lambda: schema.has_column(table, "public_id") and schema.column_not_null(table, "public_id"),
               public_id_required),
        Change(f"create unique index {id_index} on {table} (public_id)",
               lambda: schema.has_index(table, ("public_id",), unique=True), add_public_id_index),
        Change(unique_line, unique_object_keys_present, unique_object_keys),
        Change(f"create table {schema.task_table} (leases and task state)",
               lambda: schema.table_exists(schema.task_table), create_task_table),
    ]


def _superseded(schema: "SchemaVersions", has_public_id: bool) -> List[Tuple[int, bool]]:
    """The rows of the media table that another row of the same workspace and object key
    supersedes (it was updated later, or at the same time and inserted later): (id, whether
    it has no public_id) of each. One GROUP BY finds the keys held more than once (usually
    none), then each such key's rows are read by the (workspace_id, object_key) index: a
    plan that stays linear whatever statistics the planner has (a self-join took MariaDB
    minutes on a freshly filled table)."""
    q, t = schema.quote, schema.quote(schema.media_table)
    key = f"CAST({q('object_key')} AS BINARY)" if schema.mysql else q("object_key")
    # MySQL: grouped by the bytes, as the new unique index compares keys (a padding collation
    # would take 'a' and 'a ' for one).
    groups = schema._rows(f"SELECT {q('workspace_id')}, MIN({q('object_key')}) FROM {t} "
                          f"GROUP BY {q('workspace_id')}, {key} HAVING COUNT(*) > 1")
    no_id = f", {q('public_id')} IS NULL" if has_public_id else ""
    select = (f"SELECT {q('id')}, {q('object_key')}, {q('updated_at')}{no_id} FROM {t} "
              f"WHERE {q('workspace_id')} = {schema.db.param} AND {q('object_key')} = {schema.db.param}")
    found: List[Tuple[int, bool]] = []
    for workspace_id, object_key in groups:
        rows = [row for row in schema._rows(select, (workspace_id, object_key)) if row[1] == object_key]
        rows.sort(key=lambda row: (_aware_utc(row[2]), row[0]))
        found += [(row[0], bool(row[3]) if has_public_id else True) for row in rows[:-1]]
    return found


def _to_5(schema: "SchemaVersions") -> List[Change]:
    # Docks: records without a fingerprint (a dock's file is identified by (workspace_id,
    # object_key), unique since version 4), a mission's expected file count, and the table of
    # which workspace each dock belongs to. The unique (workspace_id, fingerprint) index stays:
    # NULLs never collide in it (SQLite, PostgreSQL, InnoDB).
    db, table, q = schema.db, schema.media_table, schema.quote
    t = q(table)
    group_table = schema.group_model._meta.table_name

    def fingerprint_nullable() -> None:
        if schema.sqlite:  # SQLite cannot change a column: the table is built again, as it now is
            schema.rebuild_media_table()
        elif schema.postgresql:
            db.execute_sql(f"ALTER TABLE {t} ALTER COLUMN {q('fingerprint')} DROP NOT NULL")
        else:
            # The column keeps the table's (binary) collation, which MODIFY does not change. The
            # unique indexes on nullable columns are made again in the same statement (one table
            # rebuild either way): InnoDB lists unique keys on NOT NULL columns first, then the
            # others in the order they were added, so this orders them as a new table has them.
            index = q(make_index_name(table, ("workspace_id", "fingerprint")))
            key_index = q(object_key_index_name(table))
            db.execute_sql(f"ALTER TABLE {t} MODIFY {q('fingerprint')} VARCHAR(64) NULL, "
                           f"DROP INDEX {index}, DROP INDEX {key_index}, "
                           f"ADD UNIQUE INDEX {index} ({q('workspace_id')}, {q('fingerprint')}), "
                           f"ADD UNIQUE INDEX {key_index} ({q('workspace_id')}, {q(MYSQL_OBJECT_KEY_BYTES)})")

    def add_expected() -> None:
        schema.migrator.add_column(group_table, "expected_file_count", peewee.BigIntegerField(null=True)).run()

    return [
        Change(f"make fingerprint NULL-able in {table} (records of docks' files have none)"
               + (f" (SQLite: {table} is copied into a new table)" if schema.sqlite else ""),
               lambda: not schema.column_not_null(table, "fingerprint"), fingerprint_nullable),
        Change(f"add column expected_file_count BIGINT NULL to {group_table}",
               lambda: schema.has_column(group_table, "expected_file_count"), add_expected),
        Change(f"create table {schema.device_table} (which workspace each dock belongs to)",
               lambda: schema.table_exists(schema.device_table),
               lambda: schema.create_tables([schema.device_model])),
    ]


def _library_index_creator(schema: "SchemaVersions", columns: Tuple[str, ...]) -> Callable[[], None]:
    def create() -> None:
        table = schema.media_table
        schema.db.execute(peewee.Index(library_index_name(table, columns), peewee.Table(table),
                                       [peewee.Entity(c) for c in columns]).safe(False))
    return create


def _replacement(columns: Tuple[str, ...]) -> Optional[Tuple[str, ...]]:
    """The library index of this release that begins with ``columns`` (and so does whatever an
    index of ``columns`` alone did), if one does."""
    return next((index for index in LIBRARY_INDEXES if index[:len(columns)] == columns), None)


def _to_6(schema: "SchemaVersions") -> List[Change]:
    # The media library: its pages read records newest (or oldest) first from a cursor, and its
    # missions group records by file group. Only indexes: no row changes, and a version-5 server
    # works on a version-6 database as before (it just does not use them).
    table = schema.media_table

    def checker(columns: Tuple[str, ...]) -> Callable[[], bool]:
        # Or the index that replaced it in version 7: tables created at version 7 whose version
        # row is missing then read as version 7 (``_inferred_version``), not 5.
        replacement = _replacement(columns)
        return lambda: schema.has_index(table, columns) or (
            replacement is not None and schema.has_index(table, replacement))

    return [Change(f"create index {library_index_name(table, columns)} on {table} ({', '.join(columns)})",
                   checker(columns), _library_index_creator(schema, columns))
            for columns in LIBRARY_INDEXES_V6]


def _to_7(schema: "SchemaVersions") -> List[Change]:
    # The media library's filtered pages: an index per selective filter (mission, serial number)
    # in the pages' order, and the capture time in the index entries (why: LIBRARY_INDEXES in
    # peewee_schema). Version 6's two indexes go: a new one begins with the columns of each, and
    # every index kept costs each insert one more entry.
    #
    # Only indexes, no row changes. A version-6 server keeps working on a version-7 database
    # until it restarts: its statements name no index (the planner picks the new ones) and its
    # inserts fill the new indexes as any; restarted, it refuses the database, as every release
    # refuses another version. The new indexes are made first and the old ones dropped last:
    # on MySQL, where each statement commits by itself, every page has an index in its order
    # all along; on PostgreSQL, DROP INDEX locks the table against reads as well, so that lock
    # comes just before the commit (CREATE INDEX holds back writes only, until the commit); on
    # SQLite the step holds the write lock and readers go on.
    #
    # MySQL: the longest key, (workspace_id, sn, created_at, public_id, created_time), is 64 +
    # 128 + 36 characters of utf8mb4 and two DATETIME(6), 928 bytes: within InnoDB's 3072, and
    # each column within the 767 of the older row formats, so whole columns are indexed.
    table = schema.media_table

    def present(columns: Tuple[str, ...]) -> Callable[[], bool]:
        return lambda: schema.has_index(table, columns)

    def superseded(columns: Tuple[str, ...]) -> List[str]:
        # Found by its columns, whatever its name: version 6 named it as peewee does, up to 64
        # characters, which PostgreSQL cut to 63.
        return [name for name, (found, unique) in schema.indexes(table).items() if found == columns and not unique]

    def gone(columns: Tuple[str, ...]) -> Callable[[], bool]:
        return lambda: not superseded(columns)

    def dropper(columns: Tuple[str, ...]) -> Callable[[], None]:
        def drop() -> None:
            on = f" ON {schema.quote(table)}" if schema.mysql else ""
            for name in superseded(columns):
                schema.db.execute_sql(f"DROP INDEX {schema.quote(name)}{on}")
        return drop

    changes = [Change(f"create index {library_index_name(table, columns)} on {table} ({', '.join(columns)})",
                      present(columns), _library_index_creator(schema, columns))
               for columns in LIBRARY_INDEXES]
    for columns in LIBRARY_INDEXES_V6:
        replacement = _replacement(columns)
        if replacement is None:  # pragma: no cover - each of version 6's has one
            continue
        name = ", ".join(superseded(columns)) or library_index_name(table, columns)
        changes.append(Change(f"drop index {name} on {table} ({', '.join(columns)}): "
                              f"{library_index_name(table, replacement)} begins with its columns",
                              gone(columns), dropper(columns)))
    return changes


# In order; STEPS[i] brings a database to version i + 2 (version 1 is the first release's).
STEPS: Tuple[Step, ...] = (
    Step(2, _to_2),
    Step(3, _to_3),
    Step(4, _to_4),
    Step(5, _to_5),
    Step(6, _to_6),
    Step(7, _to_7),
)
if [step.version for step in STEPS] != list(range(2, SCHEMA_VERSION + 1)):  # pragma: no cover
    raise AssertionError("STEPS must lead, one version at a time, from 1 to SCHEMA_VERSION")


class SchemaVersions:
    """The schema of one store (its database and table prefix): reads the version, creates the
    tables when there are none, refuses other versions, migrates. Every method runs on the
    caller's connection, outside any transaction of the caller's."""

    def __init__(self, db: peewee.Database, models: Sequence[Type[peewee.Model]],
                 table_prefix: str, mysql_collation: Callable[[], str]) -> None:
        self.db = db
        self.models = list(models)
        # Model classes built at run time: their columns are not declared types.
        self.media_model: Any
        self.group_model: Any
        self.schema_model, self.media_model, self.group_model, self.task_model, self.device_model = models
        self.schema_table = self.schema_model._meta.table_name
        self.media_table = self.media_model._meta.table_name
        self.task_table = self.task_model._meta.table_name
        self.device_table = self.device_model._meta.table_name
        self.sqlite = isinstance(db, peewee.SqliteDatabase)
        self.postgresql = isinstance(db, peewee.PostgresqlDatabase)
        self.mysql = isinstance(db, peewee.MySQLDatabase)
        self._prefix = table_prefix
        self._mysql_collation = mysql_collation

    @property
    def migrator(self) -> SchemaMigrator:
        return SchemaMigrator.from_database(self.db)

    # ------------------------------------------------------------------ introspection
    # Written per engine rather than with peewee's get_tables/get_columns/get_indexes: those
    # look in PostgreSQL's "public" schema, while the store's tables live wherever the
    # connection's search_path puts them. Other engines (a host's own Database class) get
    # peewee's.

    def quote(self, name: str) -> str:
        open_quote, close_quote = self.db.quote[0], self.db.quote[-1]
        return open_quote + name.replace(close_quote, close_quote * 2) + close_quote

    def _rows(self, sql: str, params: Sequence = ()) -> List[tuple]:
        return list(self.db.execute_sql(sql, params).fetchall())

    def count(self, sql: str, params: Sequence = ()) -> int:
        return int(self._rows(sql, params)[0][0] or 0)

    def table_exists(self, table: str) -> bool:
        if self.sqlite:
            return bool(self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)))
        if self.postgresql:
            return self._rows("SELECT to_regclass(%s)", (self.quote(table),))[0][0] is not None
        if not self.mysql:
            return self.db.table_exists(table)
        return bool(self._rows("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                               "AND TABLE_NAME = %s", (table,)))

    def has_column(self, table: str, column: str) -> bool:
        if self.sqlite:
            return any(row[1] == column for row in self._rows(f"PRAGMA table_info({self.quote(table)})"))
        if self.postgresql:
            return bool(self._rows("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                                   "AND attnum > 0 AND NOT attisdropped", (self.quote(table), column)))
        if not self.mysql:
            return any(c.name == column for c in self.db.get_columns(table))
        return bool(self._rows("SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                               "AND TABLE_NAME = %s AND COLUMN_NAME = %s", (table, column)))

    def indexes(self, table: str) -> Dict[str, Tuple[Tuple[str, ...], bool]]:
        """Each index of the table by name: its columns, in index order, and whether it is unique."""
        if self.sqlite:
            found_sqlite = {}
            for index in self._rows(f"PRAGMA index_list({self.quote(table)})"):
                info = sorted(self._rows(f"PRAGMA index_info({self.quote(index[1])})"))
                found_sqlite[index[1]] = (tuple(row[2] for row in info), bool(index[2]))
            return found_sqlite
        if self.postgresql:
            rows = self._rows(
                "SELECT i.indexrelid::regclass::text, a.attname, i.indisunique FROM pg_index i "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = to_regclass(%s) ORDER BY i.indexrelid, k.n", (self.quote(table),))
        elif not self.mysql:
            return {index.name: (tuple(index.columns), bool(index.unique)) for index in self.db.get_indexes(table)}
        else:
            rows = self._rows("SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE = 0 FROM information_schema.STATISTICS "
                              "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
                              "ORDER BY INDEX_NAME, SEQ_IN_INDEX", (table,))
        found: Dict[str, Tuple[List[str], bool]] = {}
        for index, column, unique in rows:
            found.setdefault(index.strip('"'), ([], bool(unique)))[0].append(column)
        return {name: (tuple(columns), unique) for name, (columns, unique) in found.items()}

    def index_columns(self, table: str) -> List[Tuple[str, ...]]:
        """The columns of each index of the table, in index order."""
        return [columns for columns, _unique in self.indexes(table).values()]

    def index_names(self, table: str) -> List[str]:
        return list(self.indexes(table))

    def has_index(self, table: str, columns: Sequence[str], unique: Optional[bool] = None) -> bool:
        """Whether an index on exactly these columns, in this order, exists (by any name); with
        ``unique``, one that is (True) or is not (False) unique."""
        return any(found == tuple(columns) and (unique is None or is_unique == unique)
                   for found, is_unique in self.indexes(table).values())

    def column_not_null(self, table: str, column: str) -> bool:
        if self.sqlite:
            return any(row[1] == column and bool(row[3])
                       for row in self._rows(f"PRAGMA table_info({self.quote(table)})"))
        if self.postgresql:
            return bool(self._rows("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                                   "AND attnotnull", (self.quote(table), column)))
        if not self.mysql:
            return any(c.name == column and not c.null for c in self.db.get_columns(table))
        return bool(self._rows("SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                               "AND TABLE_NAME = %s AND COLUMN_NAME = %s AND IS_NULLABLE = 'NO'", (table, column)))

    def column_collation(self, table: str, column: str) -> Optional[str]:
        """PostgreSQL: the column's collation ("default" for the database's); None elsewhere."""
        if not self.postgresql:
            return None
        rows = self._rows("SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation "
                          "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s", (self.quote(table), column))
        return rows[0][0] if rows else None

    # ----------------------------------------------------------------------- changes

    def mysql_expression_defaults(self) -> bool:
        """MySQL: whether the server takes an expression as a column default (MariaDB 10.2.1,
        MySQL 8.0.13). Every server with a NO PAD binary collation (MariaDB 10.2.2, MySQL
        8.0.17) does; without one (MySQL 5.7), public_id gets no default."""
        return self._mysql_collation() in _MYSQL_COLLATIONS

    def create_tables(self, models: Sequence[Type[peewee.Model]]) -> None:
        """Create these tables as a new database gets them (on MySQL: engine, charset, collation)."""
        if self.mysql:
            settings = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4", f"COLLATE={self._mysql_collation()}"]
            for model in models:
                model._meta.table_settings = settings
            if self.media_model in models and not self.mysql_expression_defaults():
                # Then a server of an older release cannot insert beside this one (see operations.md).
                self.media_model.public_id.constraints = []
        self.db.create_tables(models, safe=True)

    def rebuild_media_table(self) -> None:
        """SQLite: give the media table this release's definition, which ALTER TABLE cannot do
        there (a NOT NULL column with a default expression, say): a new table with every row
        copied, the old one dropped, the new one renamed and the old one's indexes made again.
        Inside the caller's transaction, which holds the write lock."""
        table, q = self.media_table, self.quote
        indexes = [row[0] for row in self._rows("SELECT sql FROM sqlite_master WHERE type = 'index' "
                                                "AND tbl_name = ? AND sql IS NOT NULL", (table,))]
        building = f"{table}_v{SCHEMA_VERSION}"
        create, params = self.db.get_sql_context().sql(self.media_model._schema._create_table(safe=False)).query()
        head = f"CREATE TABLE {q(table)} "
        if not create.startswith(head) or params:  # pragma: no cover - peewee changed its DDL
            raise peewee.ProgrammingError(f"unexpected DDL for {table}: {create[:80]}")
        self.db.execute_sql(f"DROP TABLE IF EXISTS {q(building)}")
        self.db.execute_sql(f"CREATE TABLE {q(building)} " + create[len(head):])
        columns = ", ".join(q(f.column_name) for f in self.media_model._meta.sorted_fields)
        self.db.execute_sql(f"INSERT INTO {q(building)} ({columns}) SELECT {columns} FROM {q(table)}")
        self.db.execute_sql(f"DROP TABLE {q(table)}")
        self.db.execute_sql(f"ALTER TABLE {q(building)} RENAME TO {q(table)}")
        for sql in indexes:
            self.db.execute_sql(sql)

    # ------------------------------------------------------------------------ version

    def version(self) -> Optional[int]:
        """The database's schema version; None when it has no version row (no tables yet)."""
        if not self.table_exists(self.schema_table):
            return None
        versions = sorted({row[0] for row in self._rows(
            f"SELECT {self.quote('version')} FROM {self.quote(self.schema_table)}")})
        if len(versions) > 1:
            raise DatabaseUnavailable(f"{self.schema_table} holds several schema versions "
                                      f"({', '.join(map(str, versions))}): keep only the right row")
        if versions and versions[0] < 1:
            raise DatabaseUnavailable(f"{self.schema_table} holds version {versions[0]}, which no release wrote")
        return versions[0] if versions else None

    def _set_version(self, version: int) -> None:
        # Exactly one row afterwards: version 1 could leave two when servers started together.
        s: Any = self.schema_model  # a model class built at run time: its columns are not declared
        with self.db.atomic():
            ids = [row[0] for row in s.select(s.id).order_by(s.id).tuples()]
            if not ids:
                s.insert(version=version).execute()
                return
            s.update(version=version).where(s.id == ids[0]).execute()
            if len(ids) > 1:
                s.delete().where(s.id != ids[0]).execute()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the schema lock of these tables (see the module's docstring); on SQLite and
        PostgreSQL inside a transaction, which the block's changes are part of."""
        if self.sqlite:
            # BEGIN IMMEDIATE takes the write lock now, waiting up to the busy timeout; a deferred
            # transaction could fail to upgrade its read lock once another writer committed.
            with self.db.atomic(lock_type="IMMEDIATE"):
                yield
        elif self.postgresql:
            with self.db.atomic():
                self.db.execute_sql(f"SET LOCAL lock_timeout = '{SCHEMA_LOCK_SECONDS}s'")
                key = zlib.crc32(f"dji_media schema {self._prefix}".encode())
                self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (key,))
                yield
        elif self.mysql:
            # Named locks are per server, not per database: the name hashes both (at most 64
            # characters). The lock belongs to the session, so it outlives DDL's implicit commits.
            name = "CONCAT('dji_media_schema_', MD5(CONCAT(DATABASE(), '/', %s)))"
            got = self._rows(f"SELECT GET_LOCK({name}, %s)", (self._prefix, SCHEMA_LOCK_SECONDS))[0][0]
            if got != 1:
                raise DatabaseUnavailable(f"another process held the schema lock of {self.schema_table} "
                                          f"for more than {SCHEMA_LOCK_SECONDS} s (a migration?)")
            try:
                yield
            finally:
                self.db.execute_sql(f"SELECT RELEASE_LOCK({name})", (self._prefix,))
        else:  # an engine of the host's own: a transaction, and no lock across processes
            with self.db.atomic():
                yield

    def _inferred_version(self) -> int:
        """The version of tables whose version row is missing: MySQL commits each CREATE by
        itself, so an interrupted first start may have left tables and no row. The changes each
        step finds already there tell how far the tables go."""
        version = 1
        for step in STEPS:
            if not all(change.present() for change in step.changes(self)):
                break
            version = step.version
        return version

    def _create_or_adopt(self) -> int:
        """Under ``exclusive``, for a database without a version row: create the tables at the
        current version, or give tables that are there the row they lack. Returns the version."""
        if self.table_exists(self.media_table):
            version = self._inferred_version()
            log.warning("%s has no version row; its tables look like version %d", self.schema_table, version)
            self.create_tables([self.schema_model])
        else:
            self.create_tables(self.models)
            version = SCHEMA_VERSION
        self._set_version(version)
        return version

    def ensure(self, create: bool) -> None:
        """Make sure the database is at the current version before the store uses it: create
        the tables when there are none (if ``create``); raise ``SchemaMismatch`` otherwise.
        Without ``create`` (tables managed elsewhere), a database without a version row is
        left unchecked, as it is."""
        found = self.version()
        if found is None:
            if not create:
                return
            with self.exclusive():
                found = self.version()
                if found is None:
                    found = self._create_or_adopt()
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(found, SCHEMA_VERSION)

    # ---------------------------------------------------------------------- migrating

    def migrate(self, *, dry_run: bool = False, create: bool = True,
                progress: Optional[Callable[[str], None]] = None) -> SchemaMigration:
        """Bring the database to ``SCHEMA_VERSION`` (see ``MediaStore.migrate``)."""
        say = progress or (lambda line: None)
        lines: List[str] = []

        def report(line: str) -> None:
            lines.append(line)
            say(line)

        found = self.version()
        if found is None and not self.table_exists(self.media_table):
            if not create:
                raise DatabaseUnavailable(f"{self.media_table} is not there and create_tables is false: "
                                          "there is nothing to migrate")
            report(f"create the tables at version {SCHEMA_VERSION}")
            if not dry_run:
                with self.exclusive():
                    if self.version() is None:
                        self._create_or_adopt()
            return SchemaMigration(found=None, target=SCHEMA_VERSION, steps=tuple(lines), dry_run=dry_run)
        if found is None:
            found = self._inferred_version()
            report(f"record version {found} in {self.schema_table} (the row is missing)")
        if found > SCHEMA_VERSION:
            raise SchemaMismatch(found, SCHEMA_VERSION)
        if dry_run:
            for step in STEPS[found - 1:]:
                for change in step.changes(self):
                    # Only the next step's changes can be there already (a step cut short).
                    there = step.version == found + 1 and change.present()
                    report(f"{step.version - 1} -> {step.version}: {change.description}"
                           + (" (already there)" if there else ""))
            return SchemaMigration(found=found, target=SCHEMA_VERSION, steps=tuple(lines), dry_run=True)
        while True:
            current = None
            try:
                with self.exclusive():
                    # Read again under the lock: another migrate may have gone ahead meanwhile.
                    current = self.version()
                    if current is None:
                        current = self._create_or_adopt()
                    if current >= SCHEMA_VERSION:
                        break
                    step = STEPS[current - 1]
                    for change in step.changes(self):
                        line = f"{current} -> {step.version}: {change.description}"
                        if change.present():
                            report(line + " (already there)")
                        else:
                            report(line)
                            change.apply()
                    self._set_version(step.version)
            except (peewee.DatabaseError, peewee.InterfaceError) as exc:
                log.error("schema migration failed: %s", _describe(exc))
                kept = ("changes made before the failure stay; fix the cause and run migrate again" if self.mysql
                        else "nothing of this step was kept; fix the cause and run migrate again")
                target = f" {current} -> {current + 1}" if current is not None else ""
                # Only the operator running migrate sees this (never a client), so the database's
                # own reason goes in the message: it is what they must fix.
                raise DatabaseUnavailable(f"schema migration{target}: "
                                          f"{_describe(exc).splitlines()[0]} ({kept})") from exc
        return SchemaMigration(found=found, target=SCHEMA_VERSION, steps=tuple(lines), dry_run=False)
