"""The media table's hot statements, written as SQL text once per store.

fast-upload, tiny-fingerprints and upload-callback run one of three statements each. Built
through peewee's query builder they cost more CPU than the database does: profiles of the
benchmark put 24-42 % of a fast-upload in building and compiling the same query every time, and
more than half of a warm tiny-fingerprints answer in turning rows into model instances and then
into records. Here each statement is compiled once, for the engine at hand (its quoting and
placeholder), and rows come back as plain tuples that become records directly.

Everything else (the schema, rare writes) stays with peewee's query builder in ``peewee_store``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import sqlite3
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import peewee

from ..values import MediaFile, MediaRecord
from .peewee_schema import _MEDIA_FIELDS, _aware_utc, _naive_utc

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

        fields = model._meta.sorted_fields
        self._columns = [f.column_name for f in fields]
        table = q(model._meta.table_name)
        select_list = ", ".join(q(c) for c in self._columns)
        p = self._param
        self._select = f"SELECT {select_list} FROM {table} WHERE {q('workspace_id')} = {p} AND "
        self.get = self._select + f"{q('fingerprint')} = {p}"
        self._tiny_head = self._select + f"{q('tiny_fingerprint')} IN ("
        self._tiny: Dict[int, str] = {}

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
                                  ("workspace_id", "revision", "created_at", "updated_at", "verified_at")]

        self._insert_columns = ("workspace_id", "fingerprint", *_MEDIA_FIELDS, "revision", "created_at",
                                "updated_at")
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
        assignments = [f"{q('revision')} = {old('revision')} + 1"]
        for c in (*_MEDIA_FIELDS, "updated_at"):
            value = f"COALESCE({new(c)}, {old(c)})" if c in _KEEP_WHEN_NULL else new(c)
            assignments.append(f"{q(c)} = {value}")
        assignments.append(f"{q('verified_at')} = NULL")  # a rewritten object is unconfirmed
        self.upsert = head + ", ".join(assignments)
        if self.returning:
            self.upsert += f" RETURNING {select_list}"

    def tiny(self, count: int) -> str:
        """The lookup of ``count`` tiny fingerprints (one text per chunk size, kept)."""
        sql = self._tiny.get(count)
        if sql is None:
            sql = self._tiny[count] = self._tiny_head + ", ".join([self._param] * count) + ")"
        return sql

    def upsert_params(self, workspace_id: str, file: MediaFile, now: _dt.datetime) -> Tuple[Any, ...]:
        values = [getattr(file, name) for name in _MEDIA_FIELDS]
        values[_CREATED_TIME] = _naive_utc(file.created_time)
        return (workspace_id, file.fingerprint, *values, 1, now, now)

    def record(self, row: Sequence[Any]) -> MediaRecord:
        """A record from a row of the select list (every column, in model order)."""
        values = list(row)
        for i, convert in self._converting:
            if values[i] is not None:
                values[i] = convert(values[i])
        workspace_id, revision, created_at, updated_at, verified_at = (values[i] for i in self._record_positions)
        return MediaRecord(workspace_id, MediaFile(*[values[i] for i in self._file_positions]),
                           revision, created_at, updated_at, verified_at)


_CREATED_TIME = _MEDIA_FIELDS.index("created_time")
