"""A SQLite server as an import source: its table ``media_files``."""
from __future__ import annotations

import datetime as _dt
import os
import sqlite3
from typing import Any, Iterator, List, Optional, Sequence, Set, Tuple
from urllib.parse import quote

from ..errors import SourceError
from ..values import MediaRecord
from . import records
from .sources import Key, Source, SourceRow, identifier, select_list


class SqliteSource(Source):
    """A SQLite ``media_files`` table (another server's), times as ISO text or epoch seconds."""

    kind = "sqlite"
    columns = ("workspace_id", "fingerprint", "tiny_fingerprint", "object_key", "file_name", "file_path",
               "created_at")
    # The MediaFile field each column fills.
    fields = {"fingerprint": "fingerprint", "object_key": "object_key", "tiny_fingerprint": "tiny_fingerprint",
              "name": "file_name", "path": "file_path"}

    def __init__(self, path: str, table: str = "media_files") -> None:
        self._errors = (sqlite3.Error,)
        self.table = identifier(table)
        self._path = path
        if not os.path.isfile(path):
            raise SourceError(f"cannot read {self.describe()}: no such file")
        try:
            # Read-only: a wrong path never creates an empty database, and nothing is written.
            self._db = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
            # Text that is not UTF-8 becomes lone surrogates, rejected per row, instead of an
            # error that would stop the whole read.
            self._db.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
            self._db.execute("BEGIN")  # one snapshot for the whole read (WAL: writers go on)
            present = [r[1] for r in self._db.execute(f'PRAGMA table_info("{self.table}")')]
        except sqlite3.Error as exc:
            self.close()
            raise SourceError(f"cannot read {self.describe()}: {exc}") from exc
        if not present:
            self.close()
            raise SourceError(f"cannot read {self.describe()}: no such table")
        self._columns = select_list(present, self.columns, self.required, self.table)

    def describe(self) -> str:
        return f"SQLite database {self._path} table {self.table}"

    def _filter(self, workspaces: Sequence[str]) -> Tuple[str, List[Any]]:
        if not workspaces:
            return "", []
        return f"workspace_id COLLATE BINARY IN ({', '.join(['?'] * len(workspaces))})", list(workspaces)

    def _query(self, sql: str, params: Sequence[Any]) -> List[Tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except self._errors as exc:
            raise SourceError(f"cannot read {self.describe()}: {exc}") from exc

    def count(self, workspaces: Sequence[str]) -> int:
        where, params = self._filter(workspaces)
        return self._query(f'SELECT COUNT(*) FROM "{self.table}"' + (f" WHERE {where}" if where else ""),
                           params)[0][0]

    def duplicated_keys(self, workspaces: Sequence[str]) -> Set[Key]:
        where, params = self._filter(workspaces)
        rows = self._query(
            f'SELECT workspace_id, fingerprint FROM "{self.table}" WHERE fingerprint IS NOT NULL'
            + (f" AND {where}" if where else "")
            + " GROUP BY workspace_id COLLATE BINARY, fingerprint COLLATE BINARY HAVING COUNT(*) > 1",
            params)
        return {(ws, fp) for ws, fp in rows}

    def chunks(self, workspaces: Sequence[str], size: int) -> Iterator[List[SourceRow]]:
        where, params = self._filter(workspaces)
        select = ", ".join(f'"{c}"' for c in self._columns)
        last = None
        while True:
            conditions = ([where] if where else []) + (["rowid > ?"] if last is not None else [])
            sql = (f'SELECT rowid, {select} FROM "{self.table}"'
                   + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
                   + f" ORDER BY rowid LIMIT {int(size)}")
            rows = self._query(sql, params + ([last] if last is not None else []))
            if not rows:
                return
            last = rows[-1][0]
            yield [SourceRow(f"rowid={row[0]}", dict(zip(("rowid", *self._columns), row))) for row in rows]

    def convert(self, row: SourceRow, started: _dt.datetime) -> Tuple[MediaRecord, Optional[_dt.datetime]]:
        v = row.values
        records.check_columns(v)
        workspace_id = records.workspace(v.get("workspace_id"))
        file = records.media_file(v, self.fields)
        created = records.sqlite_time("created_at", v.get("created_at"))
        record = records.media_record(workspace_id=workspace_id, file=file, created_at=created,
                                      updated_at=None, fallback=started, source=self.kind,
                                      table=self.table, row=v)
        return record, created

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            try:
                db.close()
            except self._errors:
                pass


def _uri_path(path: str) -> str:
    return quote(os.path.abspath(path))
