"""The media table's hot statements, and the task table's, written as SQL text once per store.

fast-upload, tiny-fingerprints and upload-callback run one of three statements each. Built
through peewee's query builder they cost more CPU than the database does: profiles of the
benchmark put 24-42 % of a fast-upload in building and compiling the same query every time, and
more than half of a warm tiny-fingerprints answer in turning rows into model instances and then
into records. Here each statement is compiled once, for the engine at hand (its quoting and
placeholder), and rows come back as plain tuples that become records directly.

The storage sweep's reads (records in object-key order, the workspaces) and the leases, which
must say the same thing on every engine, are here too. Everything else (the schema, rare
writes) stays with peewee's query builder in ``peewee_store``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import sqlite3
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import peewee

from ..values import PHOTO_EXTENSIONS, VIDEO_EXTENSIONS, FileQuery, MediaFile, MediaRecord
from .peewee_schema import _MEDIA_FIELDS, MYSQL_OBJECT_KEY_BYTES, _aware_utc, _naive_utc

# Columns an upsert leaves as they are when the new value is NULL: callbacks never carry them
# (an imported job id or payload name, say) and must not erase what another source recorded.
_KEEP_WHEN_NULL = frozenset({"job_id", "payload_name"})


def _to_bool(value: Any) -> Optional[bool]:
    return None if value is None else bool(value)  # SQLite and MySQL hand back 0/1


def _supports_returning(db: peewee.Database) -> bool:
    if isinstance(db, peewee.PostgresqlDatabase):
        return True
    if isinstance(db, peewee.SqliteDatabase):
        return sqlite3.sqlite_version_info >= (3, 35, 0)
    return False  # MySQL has no RETURNING; MariaDB's does not cover ON DUPLICATE KEY UPDATE


class MediaStatements:
    """SQL text and row conversion for the media table of one store."""

    def __init__(self, db: peewee.Database, model: Type[peewee.Model]) -> None:
        self._param = db.param
        self._mysql = isinstance(db, peewee.MySQLDatabase)
        self.returning = _supports_returning(db)
        open_quote, close_quote = db.quote[0], db.quote[-1]

        def q(name: str) -> str:
            return f"{open_quote}{name}{close_quote}"

        # MySQL's generated copy of object_key is for its index alone: never read back.
        fields = [f for f in model._meta.sorted_fields if f.column_name != MYSQL_OBJECT_KEY_BYTES]
        self._columns = [f.column_name for f in fields]
        table = q(model._meta.table_name)
        select_list = ", ".join(q(c) for c in self._columns)
        self.select_list = select_list
        p = self._param
        self._select = f"SELECT {select_list} FROM {table} WHERE {q('workspace_id')} = {p} AND "
        self.get = self._select + f"{q('fingerprint')} = {p}"
        self._tiny_head = self._select + f"{q('tiny_fingerprint')} IN ("
        self._tiny: Dict[int, str] = {}
        # tiny-fingerprints' answer needs only whether, and when, a record was confirmed.
        self._confirmed_head = (f"SELECT {q('tiny_fingerprint')}, MAX({q('verified_at')}) FROM {table} "
                                f"WHERE {q('workspace_id')} = {p} AND {q('tiny_fingerprint')} IN (")
        self._confirmed_tail = f") GROUP BY {q('tiny_fingerprint')}"
        self._confirmed: Dict[int, str] = {}
        # Object keys in the byte order of their UTF-8 (see peewee_schema._build_models): MySQL
        # compares the binary copy, with the bounds sent as bytes.
        key = q(MYSQL_OBJECT_KEY_BYTES) if self._mysql else q("object_key")
        # A dock's record (no fingerprint) of the key goes too: "<>" alone is never true of NULL.
        self.supersede = (f"DELETE FROM {table} WHERE {q('workspace_id')} = {p} AND {key} = {p} "
                          f"AND ({q('fingerprint')} <> {p} OR {q('fingerprint')} IS NULL)")
        # A file without a fingerprint (a dock's) is its object key's record: a record of the
        # key with a fingerprint goes, and the one without is found by key.
        self.supersede_by_key = (f"DELETE FROM {table} WHERE {q('workspace_id')} = {p} AND {key} = {p} "
                                 f"AND {q('fingerprint')} IS NOT NULL")
        self.get_by_key = self._select + f"{key} = {p} AND {q('fingerprint')} IS NULL"
        self._by_key: Dict[Tuple[bool, bool], str] = {}
        for after in (False, True):
            for upto in (False, True):
                self._by_key[after, upto] = (
                    f"SELECT {select_list} FROM {table} WHERE {q('workspace_id')} = {p}"
                    + (f" AND {key} > {p}" if after else "") + (f" AND {key} <= {p}" if upto else "")
                    + f" ORDER BY {key} LIMIT {p}")
        self.key_column = key

        # One converter per column (None: as the driver gives it).
        self._convert: List[Optional[Callable[[Any], Any]]] = []
        for field in fields:
            if isinstance(field, peewee.DateTimeField):
                self._convert.append(_aware_utc)
            elif isinstance(field, peewee.BooleanField):
                self._convert.append(_to_bool)
            else:
                self._convert.append(None)
        self._index = {c: i for i, c in enumerate(self._columns)}
        # record() builds values positionally: dicts per row were a third of its cost, and it
        # runs 500 times for one tiny-fingerprints answer. A MediaFile field without a column
        # fails here, at start-up, not on the first read.
        self._converting = [(i, convert) for i, convert in enumerate(self._convert) if convert is not None]
        self._file_positions = [self._index[f.name] for f in dataclasses.fields(MediaFile)]
        self._record_positions = [self._index[name] for name in
                                  ("workspace_id", "revision", "created_at", "updated_at", "verified_at",
                                   "etag", "size", "public_id")]

        # public_id is given at insert and kept by every rewrite (it is in no assignment below).
        self._insert_columns = ("workspace_id", "fingerprint", *_MEDIA_FIELDS, "revision", "created_at",
                                "updated_at", "public_id")
        columns = ", ".join(q(c) for c in self._insert_columns)
        values = ", ".join([p] * len(self._insert_columns))
        if self._mysql:
            # MySQL's ON DUPLICATE KEY UPDATE applies assignments left to right, so revision is
            # read before anything else changes; VALUES(c) is the value the insert proposed.
            def new(c: str) -> str:
                return f"VALUES({q(c)})"

            def old(c: str) -> str:
                return q(c)
            head = f"INSERT INTO {table} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE "
        else:
            def new(c: str) -> str:
                return f"EXCLUDED.{q(c)}"

            def old(c: str) -> str:
                return f"{table}.{q(c)}"
            head = (f"INSERT INTO {table} ({columns}) VALUES ({values}) "
                    f"ON CONFLICT ({q('workspace_id')}, {q('fingerprint')}) DO UPDATE SET ")
        if self._mysql:  # any unique key: here the (workspace_id, object_key_bytes) one
            key_head = head
        else:
            key_head = (f"INSERT INTO {table} ({columns}) VALUES ({values}) "
                        f"ON CONFLICT ({q('workspace_id')}, {q('object_key')}) DO UPDATE SET ")
        assignments = [f"{q('revision')} = {old('revision')} + 1"]
        for c in (*_MEDIA_FIELDS, "updated_at"):
            value = f"COALESCE({new(c)}, {old(c)})" if c in _KEEP_WHEN_NULL else new(c)
            assignments.append(f"{q(c)} = {value}")
        # A rewritten object is unconfirmed, and what storage said of the old bytes is void.
        assignments += [f"{q(c)} = NULL" for c in ("verified_at", "etag", "size")]
        self.upsert = head + ", ".join(assignments)
        # A file without a fingerprint, upserted on its object key. Should a record of the key
        # with a fingerprint be committed between this transaction's DELETE and INSERT, the
        # conflict lands on it: it becomes the dock's record (fingerprint NULL), as the DELETE meant.
        self.upsert_by_key = key_head + ", ".join([*assignments, f"{q('fingerprint')} = NULL"])
        if self.returning:
            self.upsert += f" RETURNING {select_list}"
            self.upsert_by_key += f" RETURNING {select_list}"

    def tiny(self, count: int) -> str:
        """The lookup of ``count`` tiny fingerprints (one text per chunk size, kept)."""
        sql = self._tiny.get(count)
        if sql is None:
            sql = self._tiny[count] = self._tiny_head + ", ".join([self._param] * count) + ")"
        return sql

    def confirmations(self, count: int) -> str:
        """(tiny fingerprint, latest verified_at) of ``count`` tiny fingerprints (kept per count)."""
        sql = self._confirmed.get(count)
        if sql is None:
            sql = self._confirmed[count] = (self._confirmed_head + ", ".join([self._param] * count)
                                            + self._confirmed_tail)
        return sql

    def by_object_key(self, after: bool, upto: bool) -> str:
        """A workspace's records in key order: parameters workspace, [after], [upto], limit."""
        return self._by_key[after, upto]

    def key_param(self, object_key: str) -> Any:
        """An object key as its comparisons take it (bytes for MySQL's binary copy)."""
        return object_key.encode("utf-8") if self._mysql else object_key

    def upsert_params(self, workspace_id: str, file: MediaFile, now: _dt.datetime) -> Tuple[Any, ...]:
        values = [getattr(file, name) for name in _MEDIA_FIELDS]
        values[_CREATED_TIME] = _naive_utc(file.created_time)
        return (workspace_id, file.fingerprint, *values, 1, now, now, str(uuid.uuid4()))

    def supersede_params(self, workspace_id: str, file: MediaFile) -> Tuple[Any, ...]:
        if file.fingerprint is None:
            return (workspace_id, self.key_param(file.object_key))
        return (workspace_id, self.key_param(file.object_key), file.fingerprint)

    def record(self, row: Sequence[Any]) -> MediaRecord:
        """A record from a row of the select list (every column, in model order)."""
        values = list(row)
        for i, convert in self._converting:
            if values[i] is not None:
                values[i] = convert(values[i])
        workspace_id, revision, created_at, updated_at, verified_at, etag, size, public_id = (
            values[i] for i in self._record_positions)
        return MediaRecord(workspace_id, MediaFile(*[values[i] for i in self._file_positions]),
                           revision, created_at, updated_at, verified_at, etag, size, public_id)


class TaskStatements:
    """Leases and task state in the task table, timed by the database's clock: the processes
    that share a lease may run on machines whose clocks disagree, the database is one clock
    they all see. Each statement reads the clock when it runs (not when its transaction began)."""

    def __init__(self, db: peewee.Database, model: Type[peewee.Model]) -> None:
        p = db.param
        open_quote, close_quote = db.quote[0], db.quote[-1]

        def q(name: str) -> str:
            return f"{open_quote}{name}{close_quote}"

        # The clock as the column stores it (naive UTC), and that clock plus a parameter: a
        # number of microseconds on PostgreSQL and MySQL, a modifier text on SQLite.
        if isinstance(db, peewee.PostgresqlDatabase):
            now = "(clock_timestamp() AT TIME ZONE 'UTC')"
            later = f"({now} + {p} * INTERVAL '1 microsecond')"
        elif isinstance(db, peewee.MySQLDatabase):
            now = "UTC_TIMESTAMP(6)"
            later = f"({now} + INTERVAL {p} MICROSECOND)"
        else:
            # Text like the other timestamps, to the millisecond: compared only with its like.
            now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
            later = f"strftime('%Y-%m-%d %H:%M:%f', 'now', {p})"
        self._sqlite = isinstance(db, peewee.SqliteDatabase)
        table = q(model._meta.table_name)
        name, holder, until = q("name"), q("holder"), q("lease_until")
        columns = f"({name}, {holder}, {until}, {q('state')}, {q('updated_at')})"
        if isinstance(db, peewee.MySQLDatabase):
            self.ensure = (f"INSERT INTO {table} {columns} VALUES ({p}, NULL, NULL, NULL, {now}) "
                           f"ON DUPLICATE KEY UPDATE {name} = {name}")
        else:
            self.ensure = (f"INSERT INTO {table} {columns} VALUES ({p}, NULL, NULL, NULL, {now}) "
                           f"ON CONFLICT ({name}) DO NOTHING")
        # One UPDATE decides and takes: it reads the row's latest committed version under its
        # row lock (PostgreSQL re-checks the condition after waiting for a concurrent writer,
        # InnoDB's UPDATE reads the latest version, SQLite has one writer at a time).
        # Parameters: holder, duration, name, holder.
        self.take = (f"UPDATE {table} SET {holder} = {p}, {until} = {later}, {q('updated_at')} = {now} "
                     f"WHERE {name} = {p} AND ({holder} = {p} OR {holder} IS NULL OR {until} IS NULL "
                     f"OR {until} <= {now})")
        self.release = (f"UPDATE {table} SET {holder} = NULL, {until} = NULL, {q('updated_at')} = {now} "
                        f"WHERE {name} = {p} AND {holder} = {p}")
        self.save_state = (f"UPDATE {table} SET {q('state')} = {p}, {q('updated_at')} = {now} "
                           f"WHERE {name} = {p} AND {holder} = {p} AND {until} > {now}")
        self.load_state = f"SELECT {q('state')} FROM {table} WHERE {name} = {p}"

    def duration(self, seconds: float) -> Any:
        """The parameter of ``take`` for a lease of ``seconds``."""
        if self._sqlite:
            return f"+{seconds:.6f} seconds"
        return int(round(seconds * 1_000_000))


_CREATED_TIME = _MEDIA_FIELDS.index("created_time")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def _like_pattern(text: str) -> str:
    """``text`` as a LIKE pattern that contains it, with ``!`` escaping LIKE's wildcards (the
    same ESCAPE character on every engine: a backslash means different things in MySQL's and
    PostgreSQL's string literals)."""
    escaped = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


class LibraryStatements:
    """The media library's searches (``MediaStore.find_records`` and friends) on one media table.

    Keyset pagination on (created_at, public_id): the row-value comparison and the ORDER BY
    follow the (workspace_id, created_at, public_id) index, so the database walks the index
    from the cursor instead of counting past the rows before it (an OFFSET would).
    """

    def __init__(self, db: peewee.Database, model: Type[peewee.Model], select_list: str) -> None:
        open_quote, close_quote = db.quote[0], db.quote[-1]

        def q(name: str) -> str:
            return f"{open_quote}{name}{close_quote}"

        self.q = q
        self.p = db.param
        # SQLite's LOWER() and LIKE fold ASCII letters only: a pattern lowered in full would
        # never meet a name's upper-case non-ASCII letter, so only ASCII is lowered there.
        self._fold = _ascii_lower if isinstance(db, peewee.SqliteDatabase) else str.lower
        self.table = q(model._meta.table_name)
        self.select_list = select_list
        # The kind from the name's extension, as values.file_kind decides it. A literal % is
        # doubled for the drivers whose placeholder is %s (psycopg2, PyMySQL).
        percent = "%%" if self.p == "%s" else "%"
        photo = " OR ".join(f"LOWER({q('name')}) LIKE '{percent}.{e}'" for e in PHOTO_EXTENSIONS)
        video = " OR ".join(f"LOWER({q('name')}) LIKE '{percent}.{e}'" for e in VIDEO_EXTENSIONS)
        self.kinds = {
            "photo": f"({photo})",
            "video": f"({video})",
            "other": f"({q('name')} IS NULL OR NOT ({photo} OR {video}))",
        }

    def where(self, query: FileQuery) -> Tuple[str, List[Any]]:
        """The WHERE clause (without the keyword) of ``query``, and its parameters."""
        q, p = self.q, self.p
        parts = [f"{q('workspace_id')} = {p}"]
        params: List[Any] = [query.workspace_id]
        for column, wanted in (("file_group_id", query.mission), ("sn", query.sn),
                               ("drone_model_key", query.drone_model_key),
                               ("payload_model_key", query.payload_model_key)):
            if wanted is not None:
                parts.append(f"{q(column)} = {p}")
                params.append(wanted)
        if query.kind is not None:
            parts.append(self.kinds[query.kind])
        if query.original is not None:
            parts.append(f"{q('is_original')} = {p}")
            params.append(query.original)
        if query.text is not None:
            pattern = _like_pattern(self._fold(query.text))
            parts.append(f"(LOWER({q('name')}) LIKE {p} ESCAPE '!' OR LOWER({q('path')}) LIKE {p} ESCAPE '!')")
            params += [pattern, pattern]
        for column, low, high in (("created_at", query.uploaded_from, query.uploaded_to),
                                  ("created_time", query.captured_from, query.captured_to)):
            if low is not None:
                parts.append(f"{q(column)} >= {p}")
                params.append(_naive_utc(low))
            if high is not None:
                parts.append(f"{q(column)} <= {p}")
                params.append(_naive_utc(high))
        if query.bbox is not None:
            min_lng, min_lat, max_lng, max_lat = query.bbox
            parts.append(f"{q('shoot_lat')} BETWEEN {p} AND {p} AND {q('shoot_lng')} BETWEEN {p} AND {p}")
            params += [min_lat, max_lat, min_lng, max_lng]
        return " AND ".join(parts), params

    def find(self, query: FileQuery, limit: int, after: Optional[Tuple[_dt.datetime, str]]) -> Tuple[str, List[Any]]:
        q, p = self.q, self.p
        where, params = self.where(query)
        direction = "DESC" if query.newest_first else "ASC"
        if after is not None:
            where += f" AND ({q('created_at')}, {q('public_id')}) {'<' if query.newest_first else '>'} ({p}, {p})"
            params += [_naive_utc(after[0]), after[1]]
        sql = (f"SELECT {self.select_list} FROM {self.table} WHERE {where} "
               f"ORDER BY {q('created_at')} {direction}, {q('public_id')} {direction} LIMIT {p}")
        return sql, [*params, limit]

    def count(self, query: FileQuery) -> Tuple[str, List[Any]]:
        where, params = self.where(query)
        return f"SELECT COUNT(*) FROM {self.table} WHERE {where}", params

    def by_public_id(self) -> str:
        q, p = self.q, self.p
        return f"SELECT {self.select_list} FROM {self.table} WHERE {q('workspace_id')} = {p} AND {q('public_id')} = {p}"

    def remove(self) -> str:
        q, p = self.q, self.p
        return f"DELETE FROM {self.table} WHERE {q('workspace_id')} = {p} AND {q('public_id')} = {p}"

    def missions(self) -> str:
        """Each file_group_id among a workspace's records: how many, first and last upload."""
        q, p = self.q, self.p
        return (f"SELECT {q('file_group_id')}, COUNT(*), MIN({q('created_at')}), MAX({q('created_at')}) "
                f"FROM {self.table} WHERE {q('workspace_id')} = {p} AND {q('file_group_id')} IS NOT NULL "
                f"GROUP BY {q('file_group_id')}")
