"""Schema versions: a database at the first released schema (version 1), or at version 2,
filled with records covering the edge cases, upgraded by `dji-media migrate`, keeps every record
and group; a store, `serve` and `check` refuse a database at another version with one line saying
what to run.

Version 1's tables come from tests/schema_v1/<engine>.sql: DDL frozen from the models of commit
69384d1 (tests/schema_v1/generate.py wrote it, and says how), not from today's models, so that a
change to the models cannot change what is being upgraded. Version 2's are version 1's with
step 2 of ``peewee_migrations.STEPS`` applied: what every version 2 database is (a new one of
that release had the same tables, tests/test_migrations.py compared them then).

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

import pytest

from dji_media import PeeweeMediaStore
from dji_media.backends.peewee_migrations import STEPS, SchemaVersions
from dji_media.backends.peewee_schema import _MYSQL_COLLATIONS, SCHEMA_VERSION, _build_models, open_database
from dji_media.errors import SchemaMismatch
from dji_media.testing.contracts import sample_file
from dji_media.values import FileGroup, MediaFile, MediaRecord
from support import ENGINES, TESTS, database_url_for, drop_store_tables, new_table_prefix, run_cli, write_config

UTC = _dt.timezone.utc
NEEDS_3 = "database schema is version 1, this dji_media needs 3: run `dji-media migrate --config <file>`"
NEWER = "database schema is version 4, newer than this dji_media understands (3): upgrade dji_media"
# The media columns of version 1 (commit 69384d1's _MEDIA_FIELDS), written when filling it.
V1_FIELDS = (
    "tiny_fingerprint", "object_key", "name", "path", "sub_file_type", "file_group_id",
    "drone_model_key", "payload_model_key", "is_original", "sn", "gimbal_yaw_degree",
    "absolute_altitude", "relative_altitude", "created_time", "created_time_text", "shoot_lat",
    "shoot_lng", "raw_json",
)
# Version 2's (commit 0eba3a8): job_id added.
V2_FIELDS = (*V1_FIELDS, "job_id")


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
        return SchemaVersions(self.admin, _build_models(self.admin, prefix), prefix, lambda: "")

    def sql(self, statement: str, params=()):
        cursor = self.admin.execute_sql(statement.replace("`", self.admin.quote[0]), params)
        return cursor.fetchall() if cursor.description else None

    def create_v1(self, prefix: str) -> None:
        """Version 1's tables and version row, from the frozen DDL."""
        collation = ""
        if self.engine == "mysql":  # as version 1 chose it
            have = {row[0] for row in self.sql("SELECT COLLATION_NAME FROM information_schema.COLLATIONS")}
            collation = next(name for name in (*_MYSQL_COLLATIONS, "utf8mb4_bin") if name in have)
        with open(os.path.join(TESTS, "schema_v1", f"{self.engine}.sql"), encoding="utf-8") as snapshot:
            ddl = snapshot.read()
        ddl = ddl.replace("{prefix}", prefix).replace("{collation}", collation)
        for statement in ddl.split(";\n"):
            statement = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
            if statement.strip():
                self.admin.execute_sql(statement)

    def create_v2(self, prefix: str) -> None:
        """Version 2's tables: version 1's, upgraded by step 2 as version 2's ``migrate`` did."""
        self.create_v1(prefix)
        versions = self.versions(prefix)
        with versions.exclusive():
            for change in STEPS[0].changes(versions):
                change.apply()
        self.sql(f"UPDATE `{prefix}schema` SET `version` = 2")

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


def fill_v1(db: Database, prefix: str, records, groups, fields=V1_FIELDS) -> None:
    """Rows of the columns ``fields`` (an older version's), written as that version wrote them."""
    _schema, media, group = _build_models(db.admin, prefix)

    def naive(value):
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    rows = []
    for r in records:
        row = {name: getattr(r.file, name) for name in fields}
        row.update(workspace_id=r.workspace_id, fingerprint=r.file.fingerprint, created_time=naive(r.file.created_time),
                   revision=r.revision, created_at=naive(r.created_at), updated_at=naive(r.updated_at),
                   verified_at=naive(r.verified_at))
        rows.append(row)
    with db.admin.atomic():
        for start in range(0, len(rows), 20):
            media.insert_many(rows[start:start + 20]).execute()
        for g in groups:
            group.insert(workspace_id=g.workspace_id, file_group_id=g.file_group_id, file_count=g.file_count,
                         file_uploaded_count=g.file_uploaded_count, updated_at=naive(g.updated_at)).execute()


def shape(db: Database, prefix: str):
    """The tables as the engine describes them, table prefix left out: columns, indexes and, on
    MySQL, the whole CREATE TABLE (collations, index prefix lengths)."""
    described = {}
    for name in ("schema", "media_file", "file_group"):
        table = prefix + name
        columns = [(c.name, c.data_type.lower(), c.null, c.primary_key) for c in db.admin.get_columns(table)]
        indexes = sorted((i.name.replace(prefix, "<p>"), tuple(i.columns), i.unique,
                          i.sql.replace(prefix, "<p>") if db.engine == "postgresql" else None)
                         for i in db.admin.get_indexes(table))
        create = None
        if db.engine == "mysql":
            create = re.sub(r" AUTO_INCREMENT=\d+", "", db.sql(f"SHOW CREATE TABLE `{table}`")[0][1])
            create = create.replace(prefix, "<p>")
        described[name] = (columns, indexes, create)
    return described


def version_rows(db: Database, prefix: str):
    return [row[0] for row in db.sql(f"SELECT `version` FROM `{prefix}schema`")]


async def assert_holds(store: PeeweeMediaStore, records, groups) -> None:
    for r in records:
        assert await store.get(r.workspace_id, r.file.fingerprint) == r, r.file.fingerprint
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
        "schema: version 1; this dji_media works with version 3",
        f"  1 -> 2: add column job_id VARCHAR(128) NULL to {table}",
        f"  1 -> 2: create index {table}_workspace_id_object_key on {table} (workspace_id, object_key"
        + ("(191))" if database.engine == "mysql" else ")"),
        f"  2 -> 3: add column payload_name VARCHAR(128) NULL to {table}",
        "migrated: schema version 3",
    ]
    assert version_rows(database, prefix) == [3]
    assert database.versions(prefix).has_index(table, ("workspace_id", "object_key"))
    count = database.sql(f"SELECT COUNT(*) FROM `{table}` WHERE `job_id` IS NULL AND `payload_name` IS NULL")[0][0]
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
    assert again.stdout.splitlines()[1:] == ["schema: version 3; this dji_media works with version 3",
                                             "up to date: nothing to do"]
    assert version_rows(database, prefix) == [3]
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
    assert dry.stdout.splitlines()[1:] == [
        "schema: version 2; this dji_media works with version 3",
        f"  2 -> 3: add column payload_name VARCHAR(128) NULL to {table}",
        "dry run: nothing was changed",
    ]
    assert version_rows(database, prefix) == [2]
    assert not database.versions(prefix).has_column(table, "payload_name")

    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2:] == [f"  2 -> 3: add column payload_name VARCHAR(128) NULL to {table}",
                                            "migrated: schema version 3"]
    assert version_rows(database, prefix) == [3]
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
    assert lines[1] == "schema: version 1; this dji_media works with version 3"
    assert lines[2].startswith("  1 -> 2: add column job_id") and lines[3].startswith("  1 -> 2: create index")
    assert lines[4].startswith("  2 -> 3: add column payload_name")
    assert lines[5:] == ["dry run: nothing was changed"]
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
        assert refused.value.message == NEEDS_3 and (refused.value.found, refused.value.needed) == (1, 3)
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
        assert (result.found, result.target, len(result.steps)) == (1, 3, 3)
        await store.ping()
        assert (await store.get("ws-a", sample_file().fingerprint)).file.job_id is None
    finally:
        await store.close()

    new = database.prefix()
    store = database.store(new)
    await store.ping()
    await store.close()
    database.sql(f"UPDATE `{new}schema` SET `version` = 4")
    store = database.store(new)
    try:
        with pytest.raises(SchemaMismatch) as refused:
            await store.upsert("ws", sample_file())
        assert refused.value.message == NEWER
        with pytest.raises(SchemaMismatch):  # migrate does not downgrade
            await store.migrate()
        assert version_rows(database, new) == [4]
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
        assert version_rows(database, prefix) == [3]
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
    assert version_rows(database, prefix) == [3]
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
    assert database.versions(prefix).has_index(f"{prefix}media_file", ("workspace_id", "object_key"))


@pytest.mark.gen_test
async def test_migrate_creates_an_empty_database(sqlite_database):
    prefix = sqlite_database.prefix()
    config = sqlite_database.config(prefix)
    dry = run_cli("migrate", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[1:] == ["schema: none yet; this dji_media works with version 3",
                                           "  create the tables at version 3", "dry run: nothing was changed"]
    assert not sqlite_database.versions(prefix).table_exists(f"{prefix}schema")
    done = run_cli("migrate", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "migrated: schema version 3"
    assert version_rows(sqlite_database, prefix) == [3]


@pytest.mark.gen_test
async def test_migrate_refuses_a_newer_database(sqlite_database):
    prefix = sqlite_database.prefix()
    store = sqlite_database.store(prefix)
    await store.ping()
    await store.close()
    sqlite_database.sql(f"UPDATE `{prefix}schema` SET `version` = 4")
    done = run_cli("migrate", "--config", sqlite_database.config(prefix))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"dji-media: migrate failed: {NEWER}"
    assert version_rows(sqlite_database, prefix) == [4]


@pytest.fixture
def refused_database(request, sqlite_database, s3):
    """A configuration (on the suite's real S3) whose database is at version 1 or 4."""
    prefix = sqlite_database.prefix()
    if request.param == 1:
        sqlite_database.create_v1(prefix)
    else:
        sqlite_database.versions(prefix).ensure(create=True)  # a new database of this release
        sqlite_database.sql(f"UPDATE `{prefix}schema` SET `version` = 4")
    return sqlite_database.config(prefix, s3_endpoint=s3.endpoint), {1: NEEDS_3, 4: NEWER}[request.param]


@pytest.mark.parametrize("refused_database", [1, 4], indirect=True)
def test_serve_and_check_refuse_another_version(refused_database):
    config, message = refused_database
    served = run_cli("serve", "--config", config)
    assert served.returncode != 0
    assert served.stderr.strip().splitlines() == [f"dji-media: database: {message}"]
    checked = run_cli("check", "--config", config)
    assert checked.returncode == 1
    assert re.search(r"^database: FAILED \(sqlite:///\S+\): " + re.escape(message) + "$", checked.stdout, re.M)
    assert "storage: ok" in checked.stdout and checked.stdout.splitlines()[-1] == "1 check(s) failed"
