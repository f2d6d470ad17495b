"""DJI's Cloud API demo server as an import source: its MySQL table ``media_file``."""
from __future__ import annotations

import datetime as _dt
from typing import Any, Iterator, List, Optional, Sequence, Set, Tuple
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import SourceError
from ..values import MediaRecord
from . import records
from .sources import Key, Source, SourceRow, identifier, select_list


class DjiDemoSource(Source):
    """DJI's Cloud API demo server: MySQL table ``media_file``, times in epoch milliseconds."""

    kind = "dji-demo"
    columns = ("file_id", "file_name", "file_path", "workspace_id", "fingerprint", "tinny_fingerprint",
               "object_key", "sub_file_type", "is_original", "drone", "payload", "job_id", "create_time",
               "update_time")
    # The MediaFile field each column fills, as the demo's FileServiceImpl#fileUploadConvertToEntity
    # writes the columns from an upload-callback: `drone` is the aircraft's serial number
    # (ext.sn), `payload` the payload's display name from its device dictionary ("M30 Camera",
    # not a model key), `job_id` the callback's ext.file_group_id. The demo keeps no model keys
    # and no group of its own, so job_id is the file group too.
    fields = {"fingerprint": "fingerprint", "object_key": "object_key", "tiny_fingerprint": "tinny_fingerprint",
              "name": "file_name", "path": "file_path", "sub_file_type": "sub_file_type",
              "is_original": "is_original", "sn": "drone", "payload_name": "payload", "job_id": "job_id",
              "file_group_id": "job_id"}
    # What the demo writes when it knows nothing: '' and its columns' DEFAULT 'undefined'.
    none_text = ("", "undefined")

    def __init__(self, url: str, table: str = "media_file") -> None:
        try:
            import pymysql
        except ImportError:
            raise SourceError("PyMySQL is missing: pip install 'dji-media[mysql]'") from None
        self._errors = (pymysql.Error,)
        self.table = identifier(table)
        parts = urlparse(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(options) - {"unix_socket", "ssl_ca", "connect_timeout"}
        if unknown:
            raise SourceError(f"source URL: unknown parameter(s) {', '.join(sorted(unknown))}")
        try:
            port, timeout = parts.port or 3306, int(options.get("connect_timeout", 10))
        except ValueError:
            raise SourceError("source URL: the port and connect_timeout must be numbers") from None
        self._where_text = f"{parts.hostname or 'localhost'}:{port}{parts.path}"
        database = unquote(parts.path.lstrip("/"))
        if not database:
            raise SourceError("source URL needs a database name, e.g. mysql://user@host/cloud_sample")
        try:
            self._db = pymysql.connect(
                host=parts.hostname or "localhost", port=port,
                user=unquote(parts.username or ""), password=unquote(parts.password or ""),
                database=database, charset="utf8mb4", unix_socket=options.get("unix_socket"),
                ssl_ca=options.get("ssl_ca"), connect_timeout=timeout,
            )
            with self._db.cursor() as cursor:
                # One snapshot for the whole read; REPEATABLE READ is what keeps it.
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                cursor.execute(f"SELECT * FROM `{self.table}` LIMIT 0")
                present = [d[0] for d in cursor.description]
        except pymysql.Error as exc:
            self.close()
            raise SourceError(f"cannot read {self.describe()}: {_mysql_message(exc)}") from exc
        self._key = "id" if "id" in present else "file_id"
        columns = select_list(present, self.columns, (*self.required, self._key), self.table)
        # The key first (it orders the chunks); it goes into raw_json with the rest of the row.
        self._columns = [self._key] + [c for c in columns if c != self._key]

    def describe(self) -> str:
        return f"DJI demo database mysql://{self._where_text} table {self.table}"

    def _filter(self, workspaces: Sequence[str]) -> Tuple[str, List[Any]]:
        if not workspaces:
            return "", []
        # Binary: the source's collation would let "WS" match "ws".
        marks = ", ".join(["CAST(%s AS BINARY)"] * len(workspaces))
        return f"CAST(workspace_id AS BINARY) IN ({marks})", list(workspaces)

    def _query(self, sql: str, params: Sequence[Any]) -> List[Tuple[Any, ...]]:
        try:
            with self._db.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        except self._errors as exc:
            raise SourceError(f"cannot read {self.describe()}: {_mysql_message(exc)}") from exc

    def count(self, workspaces: Sequence[str]) -> int:
        where, params = self._filter(workspaces)
        return self._query(f"SELECT COUNT(*) FROM `{self.table}`" + (f" WHERE {where}" if where else ""),
                           params)[0][0]

    def duplicated_keys(self, workspaces: Sequence[str]) -> Set[Key]:
        where, params = self._filter(workspaces)
        # MIN() of values that are equal as bytes is that value, whatever the collation says.
        rows = self._query(
            # Docks' rows (no fingerprint) are keyed by their object key, in the target.
            f"SELECT MIN(workspace_id), MIN(fingerprint) FROM `{self.table}` WHERE fingerprint IS NOT NULL "
            "AND fingerprint NOT IN ('', 'undefined')"
            + (f" AND {where}" if where else "")
            + " GROUP BY CAST(workspace_id AS BINARY), CAST(fingerprint AS BINARY) HAVING COUNT(*) > 1",
            params)
        return {(ws, fp) for ws, fp in rows}

    def chunks(self, workspaces: Sequence[str], size: int) -> Iterator[List[SourceRow]]:
        where, params = self._filter(workspaces)
        select = ", ".join(f"`{c}`" for c in self._columns)
        last = None
        while True:
            conditions = ([where] if where else []) + ([f"`{self._key}` > %s"] if last is not None else [])
            sql = (f"SELECT {select} FROM `{self.table}`"
                   + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
                   + f" ORDER BY `{self._key}` LIMIT {int(size)}")
            rows = self._query(sql, params + ([last] if last is not None else []))
            if not rows:
                return
            last = rows[-1][0]
            yield [SourceRow(f"{self._key}={row[0]}", dict(zip(self._columns, row))) for row in rows]

    def convert(self, row: SourceRow, started: _dt.datetime) -> Tuple[MediaRecord, Optional[_dt.datetime]]:
        v = row.values
        records.check_columns(v)
        workspace_id = records.workspace(v.get("workspace_id"))
        # A row without a fingerprint is a dock's file (the demo stores docks' uploads so).
        file = records.media_file(v, self.fields, none_text=self.none_text, keyed_by_object_key=True)
        created = records.epoch_milliseconds("create_time", v.get("create_time"))
        updated = records.epoch_milliseconds("update_time", v.get("update_time"))
        record = records.media_record(workspace_id=workspace_id, file=file, created_at=created,
                                      updated_at=updated, fallback=started, source=self.kind,
                                      table=self.table, row=v)
        return record, updated or created

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None and db.open:
            try:
                db.rollback()  # ends the read-only snapshot; nothing was written
                db.close()
            except self._errors:
                pass


def _mysql_message(exc: BaseException) -> str:
    # PyMySQL errors are (code, text); the text names the table or the server, never a password.
    args: tuple = getattr(exc, "args", ())
    return str(args[1]) if len(args) > 1 else str(exc)
