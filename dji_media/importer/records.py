"""Turning one source row into a media record, with the rules the server applies to devices.

A row is checked by the very parser that reads upload-callbacks (``protocol``: required
fingerprint and object key, lengths, types) and the service's object key rule, so an imported
record is one a device could have recorded. What is particular to an import is here: column
names in the reasons, source text that is not storable, and times stored as numbers.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import json
import re
from typing import Any, Mapping, Optional

from ..errors import BadRequest
from ..rules import MAX_SHORT_ID, check_workspace_id
from ..web.wire import parse_upload_callback
from ..service import check_object_key_form
from ..values import MediaFile, MediaRecord

EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")


class Rejected(Exception):
    """The row cannot become a record; ``reason`` says why without quoting the row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_columns(row: Mapping[str, Any]) -> None:
    """Text no engine stores: NUL (PostgreSQL refuses it) and bytes that were not UTF-8 (the
    SQLite reader turns them into lone surrogates rather than failing the whole chunk)."""
    for column, value in row.items():
        if isinstance(value, str):
            if "\x00" in value:
                raise Rejected(f"{column} contains a NUL character")
            if _SURROGATE.search(value):
                raise Rejected(f"{column} is not valid UTF-8")


def optional_text(value: Any) -> Any:
    """Empty text in an optional column means "none": DJI's demo writes '' as its default."""
    return None if value == "" else value


def workspace(value: Any) -> str:
    """The workspace id rule of the server: it becomes a storage prefix and a policy resource."""
    try:
        return check_workspace_id(value if isinstance(value, str) else "")
    except BadRequest as exc:
        raise Rejected(exc.message) from None


def epoch_milliseconds(column: str, value: Any) -> Optional[_dt.datetime]:
    """DJI's demo stores times as epoch milliseconds. NULL and 0 mean unknown (no file was made
    in 1970); other non-integers and times before 1970 or after 9999 are refused."""
    if value is None or (not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(f"{column} is not epoch milliseconds")
    if value < 0:
        raise Rejected(f"{column} is before 1970")
    try:
        return EPOCH + _dt.timedelta(milliseconds=value)
    except OverflowError:
        raise Rejected(f"{column} is after the year 9999") from None


def sqlite_time(column: str, value: Any) -> Optional[_dt.datetime]:
    """A time in a SQLite column: epoch seconds (a number, or text of digits) or ISO 8601 text.

    Text without an offset is UTC, as SQLite's own CURRENT_TIMESTAMP and datetime('now') write
    it. NULL and 0 mean unknown; anything else that does not parse is refused.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            value = float(text)
        else:
            return _iso_time(column, text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(f"{column} is not a time (ISO 8601 text or epoch seconds)")
    if value == 0:
        return None
    if value < 0 or value != value:  # value != value: NaN
        raise Rejected(f"{column} is before 1970")
    try:
        return EPOCH + _dt.timedelta(seconds=value)
    except OverflowError:  # epoch milliseconds land here: this column holds seconds
        raise Rejected(f"{column} is after the year 9999 (epoch seconds expected)") from None


def _iso_time(column: str, text: str) -> _dt.datetime:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise Rejected(f"{column} is not a time (ISO 8601 text or epoch seconds)") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=_dt.timezone.utc)
    try:
        return parsed.astimezone(_dt.timezone.utc)
    except OverflowError:
        raise Rejected(f"{column} is out of range") from None


def media_file(*, fingerprint: Any, object_key: Any, tiny_fingerprint: Any = None, name: Any = None,
               path: Any = None, sub_file_type: Any = None, drone_model_key: Any = None,
               payload_model_key: Any = None, is_original: Any = None, job_id: Any = None) -> MediaFile:
    """Check the fields as an upload-callback carrying them would be checked; the file has the
    placeholder raw JSON of that callback (the caller records the source row instead)."""
    body = {
        "fingerprint": fingerprint, "object_key": object_key, "name": name, "path": path,
        "sub_file_type": sub_file_type,
        "ext": {"tinny_fingerprint": tiny_fingerprint, "drone_model_key": drone_model_key,
                "payload_model_key": payload_model_key, "is_original": is_original},
    }
    try:
        file = parse_upload_callback(json.dumps(body).encode("utf-8")).file
        check_object_key_form(file.object_key)
    except BadRequest as exc:
        raise Rejected(exc.message) from None
    if job_id is not None:
        if not isinstance(job_id, str):
            raise Rejected("job_id must be a string")
        if len(job_id) > MAX_SHORT_ID:
            raise Rejected(f"job_id is longer than {MAX_SHORT_ID} characters")
        file = dataclasses.replace(file, job_id=job_id)
    return file


def media_record(*, workspace_id: str, file: MediaFile, created_at: Optional[_dt.datetime],
                 updated_at: Optional[_dt.datetime], fallback: _dt.datetime, source: str, table: str,
                 row: Mapping[str, Any]) -> MediaRecord:
    """The record of a checked row. An unknown time takes the row's other time, or ``fallback``
    (when the import started) if both are unknown: the store needs both.

    ``raw_json`` says where the record came from and holds the source row, so nothing of it is
    lost, columns that have no place in a record included.
    """
    created = created_at or updated_at or fallback
    raw = {"imported_from": {"source": source, "table": table, "row": dict(row)}}
    return MediaRecord(
        workspace_id=workspace_id,
        file=dataclasses.replace(file, raw_json=json.dumps(raw, ensure_ascii=False, default=str)),
        revision=1,
        created_at=created,
        updated_at=updated_at or created,
    )
