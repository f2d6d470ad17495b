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
import zlib
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Type

import peewee
from playhouse.migrate import SchemaMigrator

from ..errors import DatabaseUnavailable, SchemaMismatch
from ..values import SchemaMigration
from .peewee_schema import MYSQL_OBJECT_KEY_PREFIX, SCHEMA_VERSION, _describe, object_key_index_name

log = logging.getLogger("dji_media.peewee")

# How long creating the tables, a step, or a server waiting for either, waits for the lock (and,
# on PostgreSQL, for the tables' locks) before giving up.
SCHEMA_LOCK_SECONDS = 300


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

    return [
        Change(f"add column job_id VARCHAR(128) NULL to {table}",
               lambda: schema.has_column(table, "job_id"), add_job_id),
        Change(f"create index {index} on {table} ({columns})",
               lambda: schema.has_index(table, ("workspace_id", "object_key")), add_index),
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


# In order; STEPS[i] brings a database to version i + 2 (version 1 is the first release's).
STEPS: Tuple[Step, ...] = (
    Step(2, _to_2),
    Step(3, _to_3),
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
        self.schema_model, media, _group = models
        self.schema_table = self.schema_model._meta.table_name
        self.media_table = media._meta.table_name
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

    def index_columns(self, table: str) -> List[Tuple[str, ...]]:
        """The columns of each index of the table, in index order."""
        if self.sqlite:
            return [tuple(row[2] for row in sorted(self._rows(f"PRAGMA index_info({self.quote(index[1])})")))
                    for index in self._rows(f"PRAGMA index_list({self.quote(table)})")]
        if self.postgresql:
            rows = self._rows(
                "SELECT i.indexrelid, a.attname FROM pg_index i "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = to_regclass(%s) ORDER BY i.indexrelid, k.n", (self.quote(table),))
        elif not self.mysql:
            return [tuple(index.columns) for index in self.db.get_indexes(table)]
        else:
            rows = self._rows("SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
                              "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
                              "ORDER BY INDEX_NAME, SEQ_IN_INDEX", (table,))
        indexes: dict = {}
        for index, column in rows:
            indexes.setdefault(index, []).append(column)
        return [tuple(columns) for columns in indexes.values()]

    def has_index(self, table: str, columns: Sequence[str]) -> bool:
        """Whether an index on exactly these columns, in this order, exists (by any name)."""
        return tuple(columns) in self.index_columns(table)

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
        if self.mysql:
            settings = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4", f"COLLATE={self._mysql_collation()}"]
            for model in self.models:
                model._meta.table_settings = settings
        if self.table_exists(self.media_table):
            version = self._inferred_version()
            log.warning("%s has no version row; its tables look like version %d", self.schema_table, version)
            self.db.create_tables([self.schema_model], safe=True)
        else:
            self.db.create_tables(self.models, safe=True)
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
