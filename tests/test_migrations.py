"""Schema versions: a database at the first released schema (version 1), or at version 2 or 3,
filled with records covering the edge cases, upgraded by `dji-media migrate`, keeps every record
and group (version 4 gives each record a public id and keeps one record per object key, version 5
lets a dock's record go without a fingerprint, version 6 indexes the media library, version 7
replaces those indexes with the filtered pages' ones); a store, `serve` and `check` refuse a
database at another version with one line saying what to run.

Version 1's tables come from tests/schema_v1/<engine>.sql: DDL frozen from the models of commit
69384d1 (tests/schema_v1/generate.py wrote it, and says how), not from today's models, so that a
change to the models cannot change what is being upgraded. Version 2's are version 1's with
step 2 of ``peewee_migrations.STEPS`` applied, version 3's version 2's with step 3: what every
version 2 or 3 database is (a new one of those releases had the same tables,
tests/test_migrations.py compared them then).

SQLite always; PostgreSQL and MariaDB/MySQL when DJI_MEDIA_TEST_POSTGRES_URL /
DJI_MEDIA_TEST_MYSQL_URL are set (as in tests/test_databases.py). Each test uses tables of its
own (a random table prefix) and drops them afterwards.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import os
import re
import uuid

import peewee
import pytest

from dji_media import PeeweeMediaStore
from dji_media.backends.peewee_migrations import PUBLIC_ID_BATCH, STEPS, SchemaVersions
from dji_media.backends.peewee_schema import (
    _MYSQL_COLLATIONS,
    SCHEMA_VERSION,
    _build_models,
    library_index_name,
    open_database,
)
from dji_media.errors import SchemaMismatch
from dji_media.testing.contracts import sample_file
from dji_media.values import FileGroup, FileQuery, MediaFile, MediaRecord
from support import ENGINES, TESTS, database_url_for, drop_store_tables, new_table_prefix, run_cli, write_config

UTC = _dt.timezone.utc
NEEDS_7 = "database schema is version 1, this dji_media needs 7: run `dji-media migrate --config <file>`"
NEWER = "database schema is version 8, newer than this dji_media understands (7): upgrade dji_media"
# The media columns of version 1 (commit 69384d1's _MEDIA_FIELDS), written when filling it.
V1_FIELDS = (
    "tiny_fingerprint", "object_key", "name", "path", "sub_file_type", "file_group_id",
    "drone_model_key", "payload_model_key", "is_original", "sn", "gimbal_yaw_degree",
    "absolute_altitude", "relative_altitude", "created_time", "created_time_text", "shoot_lat",
    "shoot_lng", "raw_json",
)
# Version 2's (commit 0eba3a8): job_id added; version 3's: payload_name.
V2_FIELDS = (*V1_FIELDS, "job_id")
V3_FIELDS = (*V2_FIELDS, "payload_name")


class Database:
    """An engine's database for one test: fresh table prefixes, an admin connection outside any
    store, and a configuration file naming it."""

    def __init__(self, engine: str, url: str, tmp_path) -> None:
        self.engine, self.url, self.tmp_path = engine, url, tmp_path
        self.admin = open_database(url, max_connections=1)
        self.admin.connect()
        self.prefixes = []

    def prefix(self) -> str:
        prefix = new_table_prefix("m")
        self.prefixes.append(prefix)
        return prefix

    def store(self, prefix: str, **options) -> PeeweeMediaStore:
        return PeeweeMediaStore(url=self.url, table_prefix=prefix, max_workers=2, **options)

    def config(self, prefix: str, s3_endpoint: str = "http://127.0.0.1:9") -> str:
        directory = self.tmp_path / prefix
        directory.mkdir()
        return write_config(directory, s3_endpoint=s3_endpoint, media_store={
            "backend": "peewee", "options": {"url": self.url, "table_prefix": prefix}})

    def versions(self, prefix: str) -> SchemaVersions:
        return SchemaVersions(self.admin, _build_models(self.admin, prefix), prefix, self.collation)

    def collation(self) -> str:
        """MySQL: the binary collation the store chooses (step 4 creates a table with it)."""
        if self.engine != "mysql":
            return ""
        have = {row[0] for row in self.sql("SELECT COLLATION_NAME FROM information_schema.COLLATIONS")}
        return next(name for name in (*_MYSQL_COLLATIONS, "utf8mb4_bin") if name in have)

    def sql(self, statement: str, params=()):
        cursor = self.admin.execute_sql(statement.replace("`", self.admin.quote[0]), params)
        return cursor.fetchall() if cursor.description else None

    def create_v1(self, prefix: str) -> None:
        """Version 1's tables and version row, from the frozen DDL."""
        collation = self.collation()  # as version 1 chose it
        with open(os.path.join(TESTS, "schema_v1", f"{self.engine}.sql"), encoding="utf-8") as snapshot:
            ddl = snapshot.read()
        ddl = ddl.replace("{prefix}", prefix).replace("{collation}", collation)
        for statement in ddl.split(";\n"):
            statement = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
            if statement.strip():
                self.admin.execute_sql(statement)

    def create_v2(self, prefix: str, version: int = 2) -> None:
        """Version 2's tables (or ``version``'s): version 1's, upgraded step by step as each
        release's ``migrate`` did."""
        self.create_v1(prefix)
        versions = self.versions(prefix)
        for step in STEPS[:version - 1]:
            # SQLite's steps 4 and 5 copy the media table as the models now define it: with
            # version 4's NOT NULL fingerprint in step 4, as version 4 made it.
            versions.media_model.fingerprint.null = step.version >= 5
            with versions.exclusive():
                for change in step.changes(versions):
                    change.apply()
        self.sql(f"UPDATE `{prefix}schema` SET `version` = {version}")

    def create_v3(self, prefix: str) -> None:
        self.create_v2(prefix, version=3)

    def create_v4(self, prefix: str) -> None:
        self.create_v2(prefix, version=4)

    def create_v6(self, prefix: str) -> None:
        self.create_v2(prefix, version=6)

    def close(self) -> None:
        for prefix in self.prefixes:
            drop_store_tables(self.admin, prefix)
        self.admin.close()


@pytest.fixture(params=ENGINES)
def database(request, tmp_path):
    engine = request.param
    db = Database(engine, database_url_for(engine, tmp_path), tmp_path)
    yield db
    db.close()


@pytest.fixture
def sqlite_database(tmp_path):
    db = Database("sqlite", f"sqlite:///{tmp_path}/media.sqlite3", tmp_path)
    yield db
    db.close()


def at(*args) -> _dt.datetime:
    return _dt.datetime(*args, tzinfo=UTC)


def edge_records():
    """Records as version 1 could hold them: every null, unicode, keys at their length limits,
    extreme numbers, several workspaces sharing fingerprints, case-distinct keys, and bulk."""
    created, updated = at(2022, 8, 31, 7, 16, 16, 123456), at(2023, 1, 2, 3, 4, 5, 678901)

    def record(workspace_id, file, revision=1, verified_at=None):
        return MediaRecord(workspace_id=workspace_id, file=file, revision=revision, created_at=created,
                           updated_at=updated, verified_at=verified_at)

    records = [
        record("ws-a", sample_file(), revision=3, verified_at=at(2024, 2, 29, 23, 59, 59, 999999)),
        record("ws-b", sample_file(name="other workspace, same fingerprint.JPG")),
        record("ws-a", MediaFile(fingerprint="N1", object_key="media/ws-a/n1")),  # every optional field None
        record("ws-a", sample_file("\U0001F681航拍", object_key="media/ws-a/" + "航" * 300,
                                   name="航拍 \U0001F681.JPG", path="任务/第一天", sn="序列号",
                                   created_time_text="2022-08-31T15:16:16+08:00",
                                   raw_json='{"name":"航拍 \\ud83d\\ude81"}')),
        record("w" * 64, sample_file("F" * 64, tiny_fingerprint="t" * 128, object_key="media/" + "k" * 1018,
                                     name="n" * 255, path="p" * 1024, sn="s" * 128, file_group_id="g" * 128,
                                     drone_model_key="d" * 128, payload_model_key="q" * 128,
                                     created_time_text="x" * 64)),
        record("ws-a", sample_file("E1", sub_file_type=2**53, is_original=False, gimbal_yaw_degree=-179.99999999999997,
                                   absolute_altitude=-1e308, relative_altitude=5e-324, shoot_lat=-90.0,
                                   shoot_lng=180.0, created_time=at(1970, 1, 1, 0, 0, 0, 1),
                                   raw_json="r" * 200_000), revision=2**31 - 1),
        record("ws-a", sample_file("abc")),
        record("ws-a", sample_file("ABC", tiny_fingerprint=sample_file("abc").tiny_fingerprint)),  # shared tiny
        record("ws-a", sample_file("NONE", is_original=None, created_time=None)),
    ]
    for i in range(150):
        records.append(record(f"ws-{i % 3}", sample_file(f"B{i:04d}", file_group_id=f"group-{i % 7}")))
    return records


def edge_groups():
    when = at(2023, 6, 7, 8, 9, 10, 111213)
    return [
        FileGroup("ws-a", "g1", 10, 3, when),
        FileGroup("ws-b", "g1", 2**53, 2**53 - 1, when),
        FileGroup("ws-a", "航拍-\U0001F681", 0, 0, when),
        FileGroup("w" * 64, "g" * 128, 1, 1, when),
    ]


def fill_v1(db: Database, prefix: str, records, groups, fields=V1_FIELDS, public_ids: bool = False) -> None:
    """Rows of the columns ``fields`` (an older version's), written as that version wrote them;
    with ``public_ids`` (version 4 and later), each record's public id too."""
    _schema, media, group, _task, _device = _build_models(db.admin, prefix)

    def naive(value):
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    rows = []
    for r in records:
        row = {name: getattr(r.file, name) for name in fields}
        row.update(workspace_id=r.workspace_id, fingerprint=r.file.fingerprint, created_time=naive(r.file.created_time),
                   revision=r.revision, created_at=naive(r.created_at), updated_at=naive(r.updated_at),
                   verified_at=naive(r.verified_at))
        if public_ids:
            row.update(public_id=r.public_id)
        rows.append(row)
    with db.admin.atomic():
        for start in range(0, len(rows), 20):
            media.insert_many(rows[start:start + 20]).execute()
        for g in groups:
            group.insert(workspace_id=g.workspace_id, file_group_id=g.file_group_id, file_count=g.file_count,
                         file_uploaded_count=g.file_uploaded_count, updated_at=naive(g.updated_at)).execute()


def _plain(text: str, prefix: str, names) -> str:
    for name, label in names.items():
        text = text.replace(name, label)
    return text.replace(prefix, "<p>")


def shape(db: Database, prefix: str):
    """The tables as the engine describes them, table prefix left out: columns, indexes and, on
    MySQL, the whole CREATE TABLE (collations, index prefix lengths). A library index whose
    name was cut short ends in a hash of the whole name, prefix and all: such a name is given
    as ``<library: columns>``, when it is the name ``library_index_name`` gives its columns."""
    described = {}
    for name in ("schema", "media_file", "file_group", "task", "device"):
        table = prefix + name
        if not db.versions(prefix).table_exists(table):  # task: version 4's, device: version 5's
            described[name] = None
            continue
        found = db.admin.get_indexes(table)
        hashed = {i.name: f"<library: {', '.join(i.columns)}>" for i in found
                  if i.name == library_index_name(table, tuple(i.columns)) != "_".join((table, *i.columns))}
        columns = [(c.name, c.data_type.lower(), c.null, c.primary_key) for c in db.admin.get_columns(table)]
        indexes = sorted((_plain(i.name, prefix, hashed), tuple(i.columns), i.unique,
                          _plain(i.sql, prefix, hashed) if db.engine == "postgresql" else None)
                         for i in found)
        create = None
        if db.engine == "mysql":
            create = _plain(re.sub(r" AUTO_INCREMENT=\d+", "", db.sql(f"SHOW CREATE TABLE `{table}`")[0][1]),
                            prefix, hashed)
        described[name] = (columns, indexes, create)
    return described


def v4_lines(db: Database, prefix: str, rows: int, duplicates: int = 0):
    """The lines of step 3 -> 4 for a table of ``rows`` records (before duplicates go), ``duplicates`` of
    which share their object key with a more recently updated record."""
    table = f"{prefix}media_file"
    index = f"{table}_workspace_id_object_key"
    if db.engine == "mysql":
        unique = (f"add column object_key_bytes VARBINARY(1024) AS (CAST(object_key AS BINARY)) STORED to {table}, "
                  f"and replace index {index} (workspace_id, object_key(191)) with a unique index on "
                  f"(workspace_id, object_key_bytes)")
    else:
        unique = f"make index {index} on {table} (workspace_id, object_key) unique"
        if db.engine == "postgresql":
            unique += ', object_key in byte order (COLLATE "C")'
    return [f"  3 -> 4: {line}" for line in (
        f"add column etag VARCHAR(128) NULL to {table}",
        f"add column size BIGINT NULL to {table}",
        f"one record per (workspace_id, object_key) in {table}: delete {duplicates} record(s) whose object key "
        "a more recently updated record holds" + ("" if duplicates else " (already there)"),
        f"add column public_id VARCHAR(36) NULL to {table}",
        f"fill public_id of {rows} row(s) with new UUID4s, {PUBLIC_ID_BATCH} rows per statement",
        "make public_id NOT NULL, with a database-made UUID as default"
        + (f" (SQLite: {table} is copied into a new table)" if db.engine == "sqlite" else ""),
        f"create unique index {table}_public_id on {table} (public_id)",
        unique,
        f"create table {prefix}task (leases and task state)",
    )]


def v5_lines(db: Database, prefix: str, nullable_already: bool = False):
    """The lines of step 4 -> 5. ``nullable_already``: the fingerprint column is NULL-able
    before the step (SQLite, when step 4 copied the table in the same run)."""
    table = f"{prefix}media_file"
    return [f"  4 -> 5: {line}" for line in (
        f"make fingerprint NULL-able in {table} (records of docks' files have none)"
        + (f" (SQLite: {table} is copied into a new table)" if db.engine == "sqlite" else "")
        + (" (already there)" if nullable_already else ""),
        f"add column expected_file_count BIGINT NULL to {prefix}file_group",
        f"create table {prefix}device (which workspace each dock belongs to)",
    )]


def v6_lines(db: Database, prefix: str):
    """The lines of step 5 -> 6 (the media library's indexes)."""
    table = f"{prefix}media_file"
    return [f"  5 -> 6: create index {library_index_name(table, columns)} on {table} ({', '.join(columns)})"
            for columns in (("workspace_id", "created_at", "public_id"), ("workspace_id", "file_group_id"))]


def v7_lines(db: Database, prefix: str):
    """The lines of step 6 -> 7: the filtered pages' indexes made, then version 6's dropped."""
    table = f"{prefix}media_file"
    by_time = ("workspace_id", "created_at", "public_id", "created_time")
    by_mission = ("workspace_id", "file_group_id", "created_at", "public_id")
    by_sn = ("workspace_id", "sn", "created_at", "public_id", "created_time")
    old_time, old_mission = ("workspace_id", "created_at", "public_id"), ("workspace_id", "file_group_id")

    def name(columns):
        return library_index_name(table, columns)

    return [f"  6 -> 7: {line}" for line in (
        *(f"create index {name(columns)} on {table} ({', '.join(columns)})"
          for columns in (by_time, by_mission, by_sn)),
        *(f"drop index {name(old)} on {table} ({', '.join(old)}): {name(new)} begins with its columns"
          for old, new in ((old_time, by_time), (old_mission, by_mission))),
    )]


def version_rows(db: Database, prefix: str):
    return [row[0] for row in db.sql(f"SELECT `version` FROM `{prefix}schema`")]


def is_uuid4(text) -> bool:
    return isinstance(text, str) and str(uuid.UUID(text)) == text and uuid.UUID(text).version == 4


async def assert_holds(store: PeeweeMediaStore, records, groups) -> None:
    """Every record as it was, with a public id of its own (given by version 4), and every group."""
    public_ids = set()
    for r in records:
        got = await store.get(r.workspace_id, r.file.fingerprint)
        assert got is not None and dataclasses.replace(got, public_id=None) == r, r.file.fingerprint
        assert is_uuid4(got.public_id) and got.public_id not in public_ids
        public_ids.add(got.public_id)
    for workspace_id in {r.workspace_id for r in records}:
        mine = [r for r in records if r.workspace_id == workspace_id]
        found = await store.find_by_tiny_fingerprints(workspace_id, [r.file.tiny_fingerprint for r in mine
                                                                     if r.file.tiny_fingerprint])
        assert sorted(r.file.fingerprint for r in found) == sorted(r.file.fingerprint for r in mine
                                                                   if r.file.tiny_fingerprint)
    for g in groups:
        assert await store.get_group(g.workspace_id, g.file_group_id) == g


@pytest.mark.gen_test(timeout=120)
async def test_migrate_keeps_every_record_of_a_version_1_database(database):
    prefix = database.prefix()
    database.create_v1(prefix)
    records, groups = edge_records(), edge_groups()
    fill_v1(database, prefix, records, groups)
    # Version 1 servers starting together could each write a version row.
    database.sql(f"INSERT INTO `{prefix}schema` (`version`) VALUES (1)")
    config = database.config(prefix)

    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    table = f"{prefix}media_file"
    assert done.stdout.splitlines()[1:] == [
        "schema: version 1; this dji_media works with version 7",
        f"  1 -> 2: add column job_id VARCHAR(128) NULL to {table}",
        f"  1 -> 2: create index {table}_workspace_id_object_key on {table} (workspace_id, object_key"
        + ("(191))" if database.engine == "mysql" else ")"),
        f"  2 -> 3: add column payload_name VARCHAR(128) NULL to {table}",
        *v4_lines(database, prefix, len(records)),
        *v5_lines(database, prefix, nullable_already=database.engine == "sqlite"), *v6_lines(database, prefix),
        *v7_lines(database, prefix),
        "migrated: schema version 7",
    ]
    assert version_rows(database, prefix) == [7]
    key = "object_key_bytes" if database.engine == "mysql" else "object_key"
    assert database.versions(prefix).has_index(table, ("workspace_id", key), unique=True)
    count = database.sql(f"SELECT COUNT(*) FROM `{table}` WHERE `job_id` IS NULL AND `payload_name` IS NULL "
                         "AND `etag` IS NULL AND `size` IS NULL")[0][0]
    assert count == database.sql(f"SELECT COUNT(*) FROM `{table}`")[0][0] == len(records)

    # Exactly the tables a new database of this release gets.
    fresh = database.prefix()
    store = database.store(fresh)
    await store.ping()
    await store.close()
    assert shape(database, prefix) == shape(database, fresh)

    store = database.store(prefix)
    try:
        # Every record with job_id and payload_name None (MediaFile's defaults).
        await assert_holds(store, records, groups)
        assert all(r.file.job_id is None and r.file.payload_name is None for r in records)
        # And the migrated database works as a new one does.
        stored = await store.upsert("ws-a", sample_file("NEW", job_id="mission-1", payload_name="M30 Camera"))
        assert (await store.get("ws-a", "NEW")) == stored
        assert (stored.file.job_id, stored.file.payload_name) == ("mission-1", "M30 Camera")
    finally:
        await store.close()

    again = run_cli("migrate", "--config", config)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == ["schema: version 7; this dji_media works with version 7",
                                             "up to date: nothing to do"]
    assert version_rows(database, prefix) == [7]
    assert shape(database, prefix) == shape(database, fresh)


@pytest.mark.gen_test(timeout=120)
async def test_migrate_keeps_every_record_of_a_version_2_database(database):
    """Version 2 -> 3 adds payload_name alone; job_ids stay, and a new database has the same tables."""
    prefix = database.prefix()
    database.create_v2(prefix)
    records = [dataclasses.replace(r, file=dataclasses.replace(r.file, job_id=f"job-{i % 4}" if i % 3 else None))
               for i, r in enumerate(edge_records())]
    groups = edge_groups()
    fill_v1(database, prefix, records, groups, fields=V2_FIELDS)
    config = database.config(prefix)

    dry = run_cli("migrate", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    table = f"{prefix}media_file"
    v4 = v4_lines(database, prefix, len(records))
    # Only the next step's changes can be there already: the dry run says so of none later.
    v4[2] = v4[2].replace(" (already there)", "")
    assert dry.stdout.splitlines()[1:] == [
        "schema: version 2; this dji_media works with version 7",
        f"  2 -> 3: add column payload_name VARCHAR(128) NULL to {table}",
        *v4,
        *v5_lines(database, prefix), *v6_lines(database, prefix), *v7_lines(database, prefix),
        "dry run: nothing was changed",
    ]
    assert version_rows(database, prefix) == [2]
    assert not database.versions(prefix).has_column(table, "payload_name")

    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2:] == [f"  2 -> 3: add column payload_name VARCHAR(128) NULL to {table}",
                                            *v4_lines(database, prefix, len(records)),
                                            *v5_lines(database, prefix, database.engine == "sqlite"),
                                            *v6_lines(database, prefix), *v7_lines(database, prefix),
                                            "migrated: schema version 7"]
    assert version_rows(database, prefix) == [7]
    fresh = database.prefix()
    store = database.store(fresh)
    await store.ping()
    await store.close()
    assert shape(database, prefix) == shape(database, fresh)

    store = database.store(prefix)
    try:
        await assert_holds(store, records, groups)  # job_ids as they were, payload_name None
        # A callback (no job id, no payload name) keeps both, as on a new database.
        await store.upsert("ws-a", sample_file("NEW", job_id="mission-1", payload_name="M30 Camera"))
        again = await store.upsert("ws-a", sample_file("NEW", name="again.jpg"))
        assert (again.revision, again.file.job_id, again.file.payload_name) == (2, "mission-1", "M30 Camera")
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_dry_run_changes_nothing(database):
    prefix = database.prefix()
    database.create_v1(prefix)
    records = edge_records()[:3]
    fill_v1(database, prefix, records, [])
    before = shape(database, prefix)

    dry = run_cli("migrate", "--config", database.config(prefix), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[1] == "schema: version 1; this dji_media works with version 7"
    assert lines[2].startswith("  1 -> 2: add column job_id") and lines[3].startswith("  1 -> 2: create index")
    assert lines[4].startswith("  2 -> 3: add column payload_name")
    assert lines[5:-1] == [line.replace(" (already there)", "") for line in v4_lines(database, prefix, 3)] \
        + v5_lines(database, prefix) + v6_lines(database, prefix) + v7_lines(database, prefix)
    assert lines[-1] == "dry run: nothing was changed"
    assert shape(database, prefix) == before
    assert version_rows(database, prefix) == [1]
    assert not database.versions(prefix).has_column(f"{prefix}media_file", "job_id")
    store = database.store(prefix)
    try:
        with pytest.raises(SchemaMismatch):
            await store.ping()
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_stores_refuse_other_versions_until_migrated(database):
    old = database.prefix()
    database.create_v1(old)
    fill_v1(database, old, edge_records()[:2], [])
    store = database.store(old)
    try:
        with pytest.raises(SchemaMismatch) as refused:
            await store.ping()
        assert refused.value.message == NEEDS_7 and (refused.value.found, refused.value.needed) == (1, 7)
        with pytest.raises(SchemaMismatch):  # every unit of work, reads too
            await store.get("ws-a", sample_file().fingerprint)
        assert version_rows(database, old) == [1]  # a refusal writes nothing
        unmanaged = database.store(old, create_tables=False)  # tables managed elsewhere: checked too
        try:
            with pytest.raises(SchemaMismatch):
                await unmanaged.ping()
        finally:
            await unmanaged.close()
        assert not database.versions(old).has_column(f"{old}media_file", "job_id")

        # Migrated from elsewhere (another process): the same store then goes ahead.
        migrator = database.store(old)
        try:
            result = await migrator.migrate()
        finally:
            await migrator.close()
        assert (result.found, result.target, len(result.steps)) == (
            1, 7, 3 + len(v4_lines(database, old, 2)) + len(v5_lines(database, old)) + len(v6_lines(database, old))
            + len(v7_lines(database, old)))
        await store.ping()
        assert (await store.get("ws-a", sample_file().fingerprint)).file.job_id is None
    finally:
        await store.close()

    new = database.prefix()
    store = database.store(new)
    await store.ping()
    await store.close()
    database.sql(f"UPDATE `{new}schema` SET `version` = 8")
    store = database.store(new)
    try:
        with pytest.raises(SchemaMismatch) as refused:
            await store.upsert("ws", sample_file())
        assert refused.value.message == NEWER
        with pytest.raises(SchemaMismatch):  # migrate does not downgrade
            await store.migrate()
        assert version_rows(database, new) == [8]
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_step_cut_short_is_finished(database):
    """MySQL commits each DDL statement: a migration stopped after the column was added leaves it
    behind, and the next run adds what is missing. A lost version row is recovered too."""
    prefix = database.prefix()
    database.create_v1(prefix)
    fill_v1(database, prefix, edge_records()[:3], [])
    table = f"{prefix}media_file"
    database.admin.execute_sql(f"ALTER TABLE {database.versions(prefix).quote(table)} ADD COLUMN "
                               f"{database.versions(prefix).quote('job_id')} VARCHAR(128)")
    database.sql(f"DELETE FROM `{prefix}schema`")
    store = database.store(prefix)
    try:
        plan = await store.migrate(dry_run=True)
        assert plan.found == 1 and plan.steps[1].endswith("(already there)")
        assert version_rows(database, prefix) == []
        result = await store.migrate()
        assert result.steps[0] == f"record version 1 in {prefix}schema (the row is missing)"
        assert result.steps[1].endswith("(already there)") and not result.steps[2].endswith("(already there)")
        assert not result.steps[3].endswith("(already there)")
        assert version_rows(database, prefix) == [7]
        await store.ping()
    finally:
        await store.close()
    fresh = database.prefix()
    store = database.store(fresh)
    await store.ping()
    await store.close()
    assert shape(database, prefix) == shape(database, fresh)


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_step_says_why_and_a_rerun_finishes(database):
    """An index already using the new index's name (on other columns) makes the step fail: the
    line names the step and the database's reason; SQLite and PostgreSQL keep nothing of it,
    MySQL keeps the column it had added. Once the cause is gone, the next run finishes."""
    prefix = database.prefix()
    database.create_v1(prefix)
    fill_v1(database, prefix, edge_records()[:3], [])
    table = f"{prefix}media_file"
    database.sql(f"CREATE INDEX `{table}_workspace_id_object_key` ON `{table}` (`workspace_id`)")
    config = database.config(prefix)

    failed = run_cli("migrate", "--config", config)
    assert failed.returncode == 1
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("dji-media: migrate failed: schema migration 1 -> 2: "), line
    assert f"{table}_workspace_id_object_key" in line, line  # the database's own reason
    mysql = database.engine == "mysql"
    assert line.endswith("(changes made before the failure stay; fix the cause and run migrate again)" if mysql
                         else "(nothing of this step was kept; fix the cause and run migrate again)"), line
    assert version_rows(database, prefix) == [1]
    assert database.versions(prefix).has_column(table, "job_id") is mysql

    database.sql(f"DROP INDEX `{table}_workspace_id_object_key`" + (f" ON `{table}`" if mysql else ""))
    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].endswith(" (already there)") is mysql
    assert version_rows(database, prefix) == [7]
    store = database.store(prefix)
    try:
        await assert_holds(store, edge_records()[:3], [])
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_servers_starting_together_on_an_empty_database(database):
    """Creation is serialized across connections: every store starts, one version row results."""
    prefix = database.prefix()
    stores = [database.store(prefix) for _ in range(6)]
    try:
        await asyncio.gather(*(store.ping() for store in stores))
        await asyncio.gather(*(store.upsert("ws", sample_file(f"S{i}")) for i, store in enumerate(stores)))
    finally:
        for store in stores:
            await store.close()
    assert version_rows(database, prefix) == [SCHEMA_VERSION]
    key = "object_key_bytes" if database.engine == "mysql" else "object_key"
    assert database.versions(prefix).has_index(f"{prefix}media_file", ("workspace_id", key), unique=True)


@pytest.mark.gen_test
async def test_migrate_creates_an_empty_database(sqlite_database):
    prefix = sqlite_database.prefix()
    config = sqlite_database.config(prefix)
    dry = run_cli("migrate", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[1:] == ["schema: none yet; this dji_media works with version 7",
                                           "  create the tables at version 7", "dry run: nothing was changed"]
    assert not sqlite_database.versions(prefix).table_exists(f"{prefix}schema")
    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "migrated: schema version 7"
    assert version_rows(sqlite_database, prefix) == [7]


@pytest.mark.gen_test
async def test_migrate_refuses_a_newer_database(sqlite_database):
    prefix = sqlite_database.prefix()
    store = sqlite_database.store(prefix)
    await store.ping()
    await store.close()
    sqlite_database.sql(f"UPDATE `{prefix}schema` SET `version` = 8")
    done = run_cli("migrate", "--config", sqlite_database.config(prefix))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"dji-media: migrate failed: {NEWER}"
    assert version_rows(sqlite_database, prefix) == [8]


@pytest.fixture
def refused_database(request, sqlite_database, s3):
    """A configuration (on the suite's real S3) whose database is at version 1 or 8."""
    prefix = sqlite_database.prefix()
    if request.param == 1:
        sqlite_database.create_v1(prefix)
    else:
        sqlite_database.versions(prefix).ensure(create=True)  # a new database of this release
        sqlite_database.sql(f"UPDATE `{prefix}schema` SET `version` = 8")
    return sqlite_database.config(prefix, s3_endpoint=s3.endpoint), {1: NEEDS_7, 8: NEWER}[request.param]


@pytest.mark.parametrize("refused_database", [1, 8], indirect=True)
def test_serve_and_check_refuse_another_version(refused_database):
    config, message = refused_database
    served = run_cli("serve", "--config", config)
    assert served.returncode != 0
    assert served.stderr.strip().splitlines() == [f"dji-media: database: {message}"]
    checked = run_cli("check", "--config", config)
    assert checked.returncode == 1
    assert re.search(r"^database: FAILED \(sqlite:///\S+\): " + re.escape(message) + "$", checked.stdout, re.M)
    assert "storage: ok" in checked.stdout and checked.stdout.splitlines()[-1] == "1 check(s) failed"


def column_types(db: Database, table: str):
    """{column: (type, nullable)} as the engine describes the table's columns."""
    if db.engine == "sqlite":
        return {row[1]: (row[2].lower(), not row[3]) for row in db.sql(f"PRAGMA table_info(`{table}`)")}
    if db.engine == "postgresql":
        rows = db.sql("SELECT column_name, data_type, character_maximum_length, is_nullable FROM "
                      "information_schema.columns WHERE table_name = %s", (table,))
        return {name: (kind + (f"({length})" if length else ""), nullable == "YES")
                for name, kind, length, nullable in rows}
    rows = db.sql("SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA FROM information_schema.COLUMNS "
                  "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table,))
    # MariaDB shows integer display widths ("bigint(20)"), MySQL 8 no longer does.
    return {name: (re.sub(r"^bigint\(\d+\)", "bigint", kind) + (f" {extra.lower()}" if extra else ""),
                   nullable == "YES")
            for name, kind, nullable, extra in rows}


def v3_insert(db: Database, table: str, workspace_id: str, fingerprint: str, object_key: str):
    """A row written as a version-3 server writes one: no public_id, etag or size."""
    now = _dt.datetime(2026, 1, 1, 12, 0, 0)
    mark, quote = db.admin.param, db.admin.quote
    db.admin.execute_sql(
        f"INSERT INTO {quote[0]}{table}{quote[-1]} (workspace_id, fingerprint, object_key, raw_json, revision, "
        f"created_at, updated_at) VALUES ({', '.join([mark] * 7)})",
        (workspace_id, fingerprint, object_key, "{}", 1, now, now))


@pytest.mark.gen_test(timeout=120)
async def test_migrate_a_version_3_database_to_5(database):
    """Duplicate object keys resolved (the most recently updated record of a key stays, the
    later inserted on a tie; case, a trailing space and another workspace make other keys),
    every record given a public id of its own, the new columns, indexes and table there with
    the types a new database gets, and the database usable by both releases."""
    prefix = database.prefix()
    database.create_v3(prefix)
    t0, t1, t2, t3 = (at(2024, 5, 6, 7, 8, s, 9) for s in range(4))

    def record(workspace_id, fingerprint, object_key, updated, **changes):
        return MediaRecord(workspace_id=workspace_id, file=sample_file(fingerprint, object_key=object_key, **changes),
                           revision=2, created_at=t0, updated_at=updated)

    kept = [
        record("ws-a", "X-D2", "media/ws-a/k1.jpg", t3, job_id="job", payload_name="M30 Camera"),
        record("ws-a", "X-E2", "media/ws-a/k2.jpg", t1),
        record("ws-b", "X-D1", "media/ws-a/k1.jpg", t0),
        record("ws-a", "X-F1", "media/ws-a/f.jpg", t0),
        record("ws-a", "X-F2", "media/ws-a/F.jpg", t0),
        record("ws-a", "X-F3", "media/ws-a/f.jpg ", t0),
    ]
    superseded = [
        record("ws-a", "X-D1", "media/ws-a/k1.jpg", t1),
        record("ws-a", "X-D3", "media/ws-a/k1.jpg", t2),
        record("ws-a", "X-E1", "media/ws-a/k2.jpg", t1),  # inserted before E2, updated at the same time
    ]
    records = [*edge_records(), superseded[0], kept[0], superseded[1], superseded[2], *kept[1:]]
    fill_v1(database, prefix, records, edge_groups(), fields=V3_FIELDS)
    config = database.config(prefix)

    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "schema: version 3; this dji_media works with version 7",
        *v4_lines(database, prefix, len(records) - len(superseded), duplicates=len(superseded)),
        *v5_lines(database, prefix, database.engine == "sqlite"), *v6_lines(database, prefix),
        *v7_lines(database, prefix),
        "migrated: schema version 7",
    ]
    assert version_rows(database, prefix) == [7]
    table = f"{prefix}media_file"
    assert database.sql(f"SELECT COUNT(*) FROM `{table}`")[0][0] == len(records) - len(superseded)
    ids = [row[0] for row in database.sql(f"SELECT `public_id` FROM `{table}`")]
    assert all(is_uuid4(i) for i in ids) and len(set(ids)) == len(ids)

    # The types on the server, as a new database has them.
    columns = column_types(database, table)
    expected = {
        "sqlite": {"etag": ("varchar(128)", True), "size": ("integer", True), "public_id": ("varchar(36)", False)},
        "postgresql": {"etag": ("character varying(128)", True), "size": ("bigint", True),
                       "public_id": ("character varying(36)", False)},
        "mysql": {"etag": ("varchar(128)", True), "size": ("bigint", True), "public_id": ("varchar(36)", False),
                  "object_key_bytes": ("varbinary(1024) stored generated", True)},
    }[database.engine]
    assert {name: columns[name] for name in expected} == expected
    versions = database.versions(prefix)
    key = "object_key_bytes" if database.engine == "mysql" else "object_key"
    assert versions.has_index(table, ("workspace_id", key), unique=True)
    assert versions.has_index(table, ("public_id",), unique=True)
    assert not versions.has_index(table, ("workspace_id", "object_key"), unique=False)
    if database.engine == "postgresql":
        assert versions.column_collation(table, "object_key") == "C"
    tasks = column_types(database, f"{prefix}task")
    assert {name: nullable for name, (_, nullable) in tasks.items()} == {
        "name": False, "holder": True, "lease_until": True, "state": True, "updated_at": False}
    fresh = database.prefix()
    store = database.store(fresh)
    await store.ping()
    await store.close()
    assert shape(database, prefix) == shape(database, fresh)

    # A version-3 server keeps writing until it restarts: its rows get a public id from the
    # database; a reused object key is refused by the unique index.
    v3_insert(database, table, "ws-a", "OLD-SERVER", "media/ws-a/old-server.jpg")
    made = database.sql(f"SELECT `public_id` FROM `{table}` WHERE `fingerprint` = 'OLD-SERVER'")[0][0]
    assert isinstance(made, str) and uuid.UUID(made) and made not in ids
    with pytest.raises(peewee.IntegrityError):
        v3_insert(database, table, "ws-a", "OLD-SERVER-2", "media/ws-a/old-server.jpg")

    store = database.store(prefix)
    try:
        for r in kept:
            got = await store.get(r.workspace_id, r.file.fingerprint)
            assert dataclasses.replace(got, public_id=None) == r
        for r in superseded:
            assert await store.get(r.workspace_id, r.file.fingerprint) is None
        assert (await store.get("ws-a", "OLD-SERVER")).public_id == made
        in_order = await store.records_by_object_key("ws-a", "media/ws-a/", "media/ws-a/m", 10)
        assert [r.file.object_key for r in in_order] == [
            "media/ws-a/F.jpg", "media/ws-a/f.jpg", "media/ws-a/f.jpg ", "media/ws-a/k1.jpg", "media/ws-a/k2.jpg"]
        new = await store.upsert("ws-a", sample_file("NEW", object_key="media/ws-a/k1.jpg"))
        assert await store.get("ws-a", "X-D2") is None and is_uuid4(new.public_id)
        assert await store.acquire_lease("sweep", "me", 30) is True
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_step_4_cut_short_is_finished(database):
    """MySQL commits each change of step 4 by itself, and version-3 servers keep writing
    meanwhile: a run stopped after the public ids were filled, followed by a row without one
    and a duplicate object key, is finished by the next run."""
    prefix = database.prefix()
    database.create_v3(prefix)
    fill_v1(database, prefix, edge_records()[:4], [], fields=V3_FIELDS)
    table = f"{prefix}media_file"
    versions = database.versions(prefix)
    for change in STEPS[2].changes(versions)[:5]:  # up to and with the fill
        change.apply()
    v3_insert(database, table, "ws-a", "LATE", "media/ws-a/late.jpg")
    v3_insert(database, table, "ws-a", "LATER", "media/ws-a/late.jpg")
    assert database.sql(f"SELECT COUNT(*) FROM `{table}` WHERE `public_id` IS NULL")[0][0] == 2
    store = database.store(prefix)
    try:
        result = await store.migrate()
        lines = [line.split(": ", 1)[1] for line in result.steps]
        assert [line.endswith(" (already there)") for line in lines] == [
            True, True, False, True, False, False, False, False, False, database.engine == "sqlite",
            False, False, False, False, False, False, False, False, False]
        assert "delete 1 record(s)" in lines[2] and lines[4].startswith("fill public_id of 1 row(s)")
        assert version_rows(database, prefix) == [7]
        assert await store.get("ws-a", "LATE") is None  # the later inserted of the same time stays
        assert is_uuid4((await store.get("ws-a", "LATER")).public_id)
        await assert_holds(store, edge_records()[:4], [])
    finally:
        await store.close()
    fresh = database.prefix()
    store = database.store(fresh)
    await store.ping()
    await store.close()
    assert shape(database, prefix) == shape(database, fresh)


@pytest.mark.gen_test(timeout=300)
async def test_public_ids_are_filled_in_batches(sqlite_database):
    """More rows than one statement fills, each with an id of its own."""
    prefix = sqlite_database.prefix()
    sqlite_database.create_v3(prefix)
    count = PUBLIC_ID_BATCH * 2 + 7
    records = [MediaRecord(workspace_id="ws", file=MediaFile(fingerprint=f"B{i}", object_key=f"media/ws/{i}.jpg"),
                           revision=1, created_at=at(2024, 1, 1), updated_at=at(2024, 1, 1)) for i in range(count)]
    fill_v1(sqlite_database, prefix, records, [], fields=V3_FIELDS)
    store = sqlite_database.store(prefix)
    try:
        result = await store.migrate()
        assert f"  3 -> 4: fill public_id of {count} row(s) with new UUID4s, {PUBLIC_ID_BATCH} rows per statement" \
            in [f"  {line}" for line in result.steps]
        await assert_holds(store, records, [])
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=120)
async def test_migrate_a_version_4_database_to_5(database):
    """Every record and group kept; fingerprint NULL-able with its unique index kept, the
    groups' expected_file_count and the device table there with the types a new database
    gets; records of docks' files (no fingerprint) then go in beside Pilot records, and a
    version-4 server's rows (with a fingerprint) still do."""
    prefix = database.prefix()
    database.create_v4(prefix)
    table = f"{prefix}media_file"
    versions = database.versions(prefix)
    assert versions.column_not_null(table, "fingerprint")  # as version 4 made it
    records = edge_records()
    groups = edge_groups()
    fill_v1(database, prefix, records, groups, fields=V3_FIELDS)
    ids = {row[0] for row in database.sql(f"SELECT `public_id` FROM `{table}`")}
    config = database.config(prefix)

    dry = run_cli("migrate", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[1:] == ["schema: version 4; this dji_media works with version 7",
                                           *v5_lines(database, prefix), *v6_lines(database, prefix),
                                           *v7_lines(database, prefix),
                                           "dry run: nothing was changed"]
    assert version_rows(database, prefix) == [4] and versions.column_not_null(table, "fingerprint")

    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["schema: version 4; this dji_media works with version 7",
                                            *v5_lines(database, prefix), *v6_lines(database, prefix),
                                            *v7_lines(database, prefix),
                                            "migrated: schema version 7"]
    assert version_rows(database, prefix) == [7]
    assert not versions.column_not_null(table, "fingerprint")
    assert versions.has_index(table, ("workspace_id", "fingerprint"), unique=True)
    assert {row[0] for row in database.sql(f"SELECT `public_id` FROM `{table}`")} == ids  # kept, not made again
    assert column_types(database, f"{prefix}file_group")["expected_file_count"][1] is True
    devices = column_types(database, f"{prefix}device")
    assert {name: nullable for name, (_, nullable) in devices.items()} == {
        "gateway_sn": False, "workspace_id": False, "bound_at": False, "note": True}
    fresh = database.prefix()
    store = database.store(fresh)
    await store.ping()
    await store.close()
    assert shape(database, prefix) == shape(database, fresh)

    store = database.store(prefix)
    try:
        public_ids = {(await store.get(r.workspace_id, r.file.fingerprint)).public_id for r in records}
        assert public_ids == ids
        for g in groups:
            assert await store.get_group(g.workspace_id, g.file_group_id) == g  # expected count None
        # Docks' records: several without a fingerprint in one workspace, keyed by object key.
        docks = [await store.upsert("ws-a", MediaFile(fingerprint=None, object_key=f"media/ws-a/dock/{i}.jpeg"))
                 for i in range(3)]
        again = await store.upsert("ws-a", MediaFile(fingerprint=None, object_key="media/ws-a/dock/0.jpeg"))
        assert again.revision == docks[0].revision + 1 and again.public_id == docks[0].public_id
        found = await store.records_by_object_key("ws-a", "media/ws-a/dock/", "media/ws-a/dock/~", 10)
        assert [r.file.object_key for r in found] == [d.file.object_key for d in docks]
        group = await store.save_mission_expectation("ws-a", "g1", 14)
        assert (group.file_count, group.file_uploaded_count, group.expected_file_count) == (10, 3, 14)
        # A version-4 server, still running, writes a row with a fingerprint as before.
        v3_insert(database, table, "ws-a", "OLD-SERVER", "media/ws-a/old-server.jpg")
        assert (await store.get("ws-a", "OLD-SERVER")).file.object_key == "media/ws-a/old-server.jpg"
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=120)
async def test_migrate_a_version_6_database_to_7(database):
    """Indexes only: every record (Pilot's and docks'), public id and group kept; version 7's
    three library indexes there and version 6's two gone, the tables as a new database has
    them; the filtered pages find on the migrated tables what they should; a second run does
    nothing; and version-7 tables that lost their version row read as version 7."""
    prefix = database.prefix()
    database.create_v6(prefix)
    table = f"{prefix}media_file"
    versions = database.versions(prefix)
    v6_indexes = (("workspace_id", "created_at", "public_id"), ("workspace_id", "file_group_id"))
    v7_indexes = (("workspace_id", "created_at", "public_id", "created_time"),
                  ("workspace_id", "file_group_id", "created_at", "public_id"),
                  ("workspace_id", "sn", "created_at", "public_id", "created_time"))
    assert all(versions.has_index(table, columns) for columns in v6_indexes)  # as version 6 made them
    assert not versions.column_not_null(table, "fingerprint")
    records = [dataclasses.replace(r, public_id=str(uuid.uuid4())) for r in edge_records()]
    # Docks' records (no fingerprint), uploaded a minute apart by two aircraft.
    docks = [MediaRecord(workspace_id="ws-a", file=MediaFile(
                fingerprint=None, object_key=f"media/ws-a/dock/{i}.jpeg", name=f"DJI_{i:04d}.JPG",
                file_group_id=f"dock-mission-{i // 10}", sn=f"DOCK-SN-{i % 2}",
                created_time=at(2025, 3, 1, 8, 0) + _dt.timedelta(minutes=i)),
                revision=1, created_at=at(2025, 3, 1, 9, 0) + _dt.timedelta(minutes=i),
                updated_at=at(2025, 3, 1, 9, 0) + _dt.timedelta(minutes=i), public_id=str(uuid.uuid4()))
             for i in range(30)]
    groups = edge_groups()
    fill_v1(database, prefix, [*records, *docks], groups, fields=V3_FIELDS, public_ids=True)
    config = database.config(prefix)
    before = shape(database, prefix)

    dry = run_cli("migrate", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[1:] == ["schema: version 6; this dji_media works with version 7",
                                           *v7_lines(database, prefix), "dry run: nothing was changed"]
    assert version_rows(database, prefix) == [6] and shape(database, prefix) == before

    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["schema: version 6; this dji_media works with version 7",
                                            *v7_lines(database, prefix), "migrated: schema version 7"]
    assert version_rows(database, prefix) == [7]
    assert all(versions.has_index(table, columns, unique=False) for columns in v7_indexes)
    assert not any(versions.has_index(table, columns) for columns in v6_indexes)
    assert database.sql(f"SELECT COUNT(*) FROM `{table}`")[0][0] == len(records) + len(docks)
    fresh = database.prefix()
    store = database.store(fresh)
    await store.ping()
    await store.close()
    assert shape(database, prefix) == shape(database, fresh)

    store = database.store(prefix)
    try:
        for r in records:
            assert await store.get(r.workspace_id, r.file.fingerprint) == r, r.file.fingerprint
        for r in [*records, *docks]:
            assert await store.get_by_public_id(r.workspace_id, r.public_id) == r, r.public_id
        for g in groups:
            assert await store.get_group(g.workspace_id, g.file_group_id) == g
        # The pages the new indexes serve, newest and oldest first.
        window = {"captured_from": at(2025, 3, 1, 8, 5), "captured_to": at(2025, 3, 1, 8, 20)}
        for query in (FileQuery("ws-1", mission="group-3"), FileQuery("ws-a", mission="dock-mission-1"),
                      FileQuery("ws-a", sn="DOCK-SN-1", **window), FileQuery("ws-a", **window),
                      FileQuery("ws-a", sn="DOCK-SN-0", newest_first=False, **window)):
            expected = sorted((r for r in [*records, *docks] if query.matches(r)),
                              key=lambda r: (r.created_at, r.public_id), reverse=query.newest_first)
            assert expected and await store.find_records(query, 500, None) == expected, query
        counts = {m.file_group_id: m.recorded_count for m in await store.mission_summaries("ws-a", 100)}
        assert counts["dock-mission-0"] == counts["dock-mission-1"] == 10
        # And the migrated database takes new records as a new one does.
        new = await store.upsert("ws-a", sample_file("NEW", sn="DOCK-SN-1", created_time=at(2025, 3, 1, 8, 10)))
        assert new in await store.find_records(FileQuery("ws-a", sn="DOCK-SN-1", **window), 500, None)
    finally:
        await store.close()

    again = run_cli("migrate", "--config", config)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == ["schema: version 7; this dji_media works with version 7",
                                             "up to date: nothing to do"]
    assert shape(database, prefix) == shape(database, fresh)

    # Version 6's step finds version 7's replacements: the tables read as version 7.
    database.sql(f"DELETE FROM `{prefix}schema`")
    store = database.store(prefix)
    try:
        result = await store.migrate()
        assert result.steps == (f"record version 7 in {prefix}schema (the row is missing)",)
        assert version_rows(database, prefix) == [7]
    finally:
        await store.close()
