"""What an import asks of the database it reads: the base the sources (DJI's demo server,
``dji_demo``; a SQLite ``media_files`` table, ``sqlite_source``) share. ``opening`` picks one by
URL; it lives above them, so that this module names none of them.

Each source reads in chunks in the order of a unique column (keyset pagination: no query stays
open between chunks, and no chunk costs more than the one before), inside one read-only
snapshot, so that the count, the duplicate keys and the rows all describe the same moment even
while the old server keeps writing. Its methods block; the import runs them in a thread.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ..errors import SourceError
from ..values import MediaRecord

Key = Tuple[str, str]
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,63}")


class SourceRow:
    """One row: ``row_id`` names it in reports (``id=17``), ``values`` maps column to value."""

    __slots__ = ("row_id", "values")

    def __init__(self, row_id: str, values: Dict[str, Any]) -> None:
        self.row_id = row_id
        self.values = values


class Source:
    """What the import asks of a source. ``workspaces`` (empty: all) limits every question."""

    kind = ""
    table = ""
    # Columns a table must have; the others of the schema are read when present.
    required = ("workspace_id", "fingerprint", "object_key")

    def describe(self) -> str:
        raise NotImplementedError

    def count(self, workspaces: Sequence[str]) -> int:
        raise NotImplementedError

    def duplicated_keys(self, workspaces: Sequence[str]) -> Set[Key]:
        """Every (workspace, fingerprint) held by more than one row, compared exactly as the
        target compares keys (case, trailing spaces), not by the source's collation."""
        raise NotImplementedError

    def chunks(self, workspaces: Sequence[str], size: int) -> Iterator[List[SourceRow]]:
        raise NotImplementedError

    def convert(self, row: SourceRow, started: _dt.datetime) -> Tuple[MediaRecord, Optional[_dt.datetime]]:
        """The record of a row and the time the row was last written (None: unknown), which
        decides between duplicates; ``RowRejected`` if the row is not a valid record."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def identifier(table: str) -> str:
    if not _IDENTIFIER.fullmatch(table):
        raise SourceError(f"source table name {table!r} is not a plain SQL identifier")
    return table


def select_list(present: Sequence[str], wanted: Sequence[str], required: Sequence[str], table: str) -> List[str]:
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceError(f"source table {table} has no column {', '.join(missing)}")
    return [c for c in wanted if c in present]

