"""Turning one source row into a media record, checked with the core's rules.

The record is built directly from the row, with the lenient conversions a database column
needs (a driver's Decimal for an integer, 0/1 for a boolean, epoch numbers or ISO text for a
time), and checked with ``dji_media.rules``, the bounds every stored file keeps whichever
transport or caller it came from, so an imported record is one a device could have recorded.
What is particular to an import is here: reasons that name the source's column, text no engine
stores, and the spellings of "none" a source uses.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import json
import math
import re
from typing import Any, Collection, Dict, Mapping, Optional

from ..errors import BadRequest, RowRejected
from ..rules import MAX_FINGERPRINT, MAX_OBJECT_KEY, MAX_SHORT_ID, check_media_file, check_text, check_workspace_id
from ..values import MediaFile, MediaRecord

EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False}

# How each MediaFile field a source can fill is read from its column.
_KEYS = frozenset({"fingerprint", "object_key"})
_TEXT = frozenset({"tiny_fingerprint", "name", "path", "file_group_id", "drone_model_key", "payload_model_key", "sn",
                   "job_id", "payload_name", "created_time_text"})
_FLOAT = frozenset({"gimbal_yaw_degree", "absolute_altitude", "relative_altitude", "shoot_lat", "shoot_lng"})


def check_columns(row: Mapping[str, Any]) -> None:
    """Text no engine stores: NUL (PostgreSQL refuses it) and bytes that were not UTF-8 (the
    SQLite reader turns them into lone surrogates rather than failing the whole chunk)."""
    for column, value in row.items():
        if isinstance(value, str):
            if "\x00" in value:
                raise RowRejected(f"{column} contains a NUL character")
            if _SURROGATE.search(value):
                raise RowRejected(f"{column} is not valid UTF-8")


def workspace(value: Any) -> str:
    """The workspace id rule of the server: it becomes a storage prefix and a policy resource."""
    try:
        return check_workspace_id(value if isinstance(value, str) else "")
    except BadRequest as exc:
        raise RowRejected(exc.message) from None


def lenient_int(value: Any) -> Any:
    """An integer column's value as an int, whatever type the driver gave it (a DECIMAL, text of
    digits in SQLite, a float without a fraction). Anything else is returned as it is, for the
    rule to refuse: a wrong number is a broken row, not a missing one."""
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return value


def lenient_bool(value: Any) -> Optional[bool]:
    """0/1 (MySQL's TINYINT(1)), true/false or a bool; anything else is unknown (None), as a
    device's unreadable metadata is: the source row in raw_json still has it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, decimal.Decimal)) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        return _BOOLEAN_TEXT.get(value.strip().lower())
    return None


def lenient_float(value: Any) -> Optional[float]:
    """A finite number from a number or numeric text; anything else is unknown (None)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def epoch_milliseconds(column: str, value: Any) -> Optional[_dt.datetime]:
    """DJI's demo stores times as epoch milliseconds. NULL and 0 mean unknown (no file was made
    in 1970); other non-integers and times before 1970 or after 9999 are refused."""
    if value is None or (not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowRejected(f"{column} is not epoch milliseconds")
    if value < 0:
        raise RowRejected(f"{column} is before 1970")
    try:
        return EPOCH + _dt.timedelta(milliseconds=value)
    except OverflowError:
        raise RowRejected(f"{column} is after the year 9999") from None


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
        raise RowRejected(f"{column} is not a time (ISO 8601 text or epoch seconds)")
    if value == 0:
        return None
    if value < 0 or value != value:  # value != value: NaN
        raise RowRejected(f"{column} is before 1970")
    try:
        return EPOCH + _dt.timedelta(seconds=value)
    except OverflowError:  # epoch milliseconds land here: this column holds seconds
        raise RowRejected(f"{column} is after the year 9999 (epoch seconds expected)") from None


def _iso_time(column: str, text: str) -> _dt.datetime:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise RowRejected(f"{column} is not a time (ISO 8601 text or epoch seconds)") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=_dt.timezone.utc)
    try:
        return parsed.astimezone(_dt.timezone.utc)
    except OverflowError:
        raise RowRejected(f"{column} is out of range") from None


def media_file(row: Mapping[str, Any], columns: Mapping[str, str], *,
               none_text: Collection[str] = ("",), keyed_by_object_key: bool = False) -> MediaFile:
    """The file a row describes, checked with the core's rules; ``RowRejected`` otherwise.

    ``columns`` maps each MediaFile field the source fills to the column holding it (two fields
    may read one column). Optional text equal to one of ``none_text`` is none: the value a
    source writes when it knows nothing (DJI's demo: '' and 'undefined'). A reason names the
    source's column rather than the field, since the source is what an operator fixes.

    With ``keyed_by_object_key``, a row whose fingerprint is NULL or one of ``none_text`` is a
    dock's file (docks send no fingerprint): it becomes a file without one, identified by its
    workspace and object key, instead of being refused.
    """
    values: Dict[str, Any] = {}
    for field, column in columns.items():
        value = row.get(column)
        if field in _KEYS:
            values[field] = value
        elif field in _TEXT:
            values[field] = None if isinstance(value, str) and value in none_text else value
        elif field == "sub_file_type":
            values[field] = None if value is None else lenient_int(value)
        elif field == "is_original":
            values[field] = lenient_bool(value)
        elif field in _FLOAT:
            values[field] = lenient_float(value)
        else:  # a source's mapping names a field no column can fill (created_time, raw_json)
            raise ValueError(f"MediaFile.{field} cannot be read from a source column")
    fingerprint = values.get("fingerprint")
    dock = keyed_by_object_key and (fingerprint is None or (isinstance(fingerprint, str) and fingerprint in none_text))
    if dock:
        values["fingerprint"] = None
    try:
        # Required, and the length in characters first: the reasons a device's callback gets.
        if not dock:
            check_text(values.get("fingerprint"), MAX_FINGERPRINT, "fingerprint", required=True)
        check_text(values.get("object_key"), MAX_OBJECT_KEY, "object_key", required=True)
        file = MediaFile(**values)
        # The core's rules require a fingerprint (a Pilot's callback must carry one): a dock's
        # file is checked on every other field with a stand-in that passes that one rule.
        check_media_file(dataclasses.replace(file, fingerprint="dock") if dock else file)
        # Not among the core's rules yet (only imports fill it so far): its column's width.
        check_text(file.payload_name, MAX_SHORT_ID, "payload_name")
    except BadRequest as exc:
        raise RowRejected(_in_source_terms(exc, columns)) from None
    return file


def _in_source_terms(exc: BadRequest, columns: Mapping[str, str]) -> str:
    """The rule's reason with the field's name replaced by the source column's."""
    field = exc.field or ""
    column = columns.get(field)
    if column and column != field and exc.message.startswith(field + " "):
        return column + exc.message[len(field):]
    return exc.message


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
