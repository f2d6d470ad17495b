"""One import: read a source in chunks, check each row, keep one row per key, and insert what
the target lacks, without ever changing a record it holds (so a second run changes nothing).

Duplicates in the source (one workspace and fingerprint on several rows) are found by the
source database before the rows are read; only rows with such keys wait in memory until the
end, where the one written last wins (``Importer`` says why). Every other row goes to the
target in batches as it is read.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as _dt
import functools
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from ..capabilities import has_capability
from ..errors import DjiMediaError, ImportFailed, ImportTargetFailed, RowRejected, SourceError
from ..interfaces import MediaStore
from ..values import MediaRecord, utc_now
from .sources import Key, Source

EXAMPLES = 3  # source row ids shown per reason
_OLDEST = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class ImportSummary:
    """What a run did (or, for a dry run, would do), counted in source rows.

    ``read`` = ``imported`` + ``duplicates`` + ``present`` + the sum of ``rejected``.
    ``duplicate_examples`` reads "id=3 (kept id=7)"; ``rejected_examples`` maps a reason to
    the ids of its first rows.
    """

    source: str
    dry_run: bool
    read: int
    imported: int
    duplicates: int
    present: int
    rejected: Mapping[str, int]
    rejected_examples: Mapping[str, Tuple[str, ...]]
    duplicate_examples: Tuple[str, ...]

    def lines(self) -> List[str]:
        """The report for a person, one line each."""
        def line(label: str, text: str) -> str:
            return f"{label + ':':<14}{text}"

        duplicates = f"{self.duplicates} duplicate in the source (same workspace and fingerprint as the row kept)"
        if self.duplicate_examples:
            duplicates += f", e.g. {'; '.join(self.duplicate_examples)}"
        out = [line("source", self.source + (" (dry run: nothing was written)" if self.dry_run else "")),
               line("read", f"{self.read} rows"),
               line("would import" if self.dry_run else "imported", str(self.imported)),
               line("skipped", duplicates),
               line("skipped", f"{self.present} already in the target (left as they are)"),
               line("rejected", str(sum(self.rejected.values())))]
        for reason, count in sorted(self.rejected.items(), key=lambda item: (-item[1], item[0])):
            examples = self.rejected_examples[reason]
            out.append(f"  {count} x {reason}: {', '.join(examples)}{', ...' if count > len(examples) else ''}")
        return out


class _Tally:
    def __init__(self) -> None:
        self.read = self.imported = self.duplicates = self.present = 0
        self.rejected: Dict[str, int] = {}
        self.rejected_examples: Dict[str, List[str]] = {}
        self.duplicate_examples: Dict[Key, List[str]] = {}  # losers of the first keys seen

    def reject(self, reason: str, row_id: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        examples = self.rejected_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES:
            examples.append(row_id)

    def duplicate(self, key: Key, row_id: str) -> None:
        self.duplicates += 1
        if key in self.duplicate_examples or len(self.duplicate_examples) < EXAMPLES:
            self.duplicate_examples.setdefault(key, []).append(row_id)

    def summary(self, source: str, dry_run: bool, winners: Mapping[Key, str]) -> ImportSummary:
        duplicates = tuple(f"{', '.join(ids[:EXAMPLES])} (kept {winners[key]})"
                           for key, ids in self.duplicate_examples.items() if key in winners)
        return ImportSummary(
            source=source, dry_run=dry_run, read=self.read, imported=self.imported,
            duplicates=self.duplicates, present=self.present, rejected=dict(self.rejected),
            rejected_examples={k: tuple(v) for k, v in self.rejected_examples.items()},
            duplicate_examples=duplicates)


class Importer:
    """Copies a source's media records into a store.

    Of the valid rows that share a workspace and fingerprint, the one written last (latest
    update time, for SQLite the creation time; an unknown time counts as oldest; on a tie, the
    row read last, i.e. the highest id) is imported: DJI's demo adds a row for every upload
    callback, so the latest row names the object the device uploaded last. The others count as
    duplicates; invalid rows are rejected whatever their time.

    :param workspaces: import only these workspaces (empty: all).
    :param dry_run: read and check everything and ask the target which records it holds,
        but write nothing.
    :param batch_size: rows per source read and per target write.
    """

    def __init__(self, store: MediaStore, source: Source, *, workspaces: Sequence[str] = (),
                 dry_run: bool = False, batch_size: int = 500) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.store = store
        self.source = source
        self.workspaces = tuple(dict.fromkeys(workspaces))
        self.dry_run = dry_run
        self.batch_size = batch_size
        # The source's calls block: they run on one thread of their own (sqlite3 and PyMySQL
        # connections are used by one thread at a time).
        self._reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dji-import")

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, functools.partial(fn, *args))
        except SourceError:
            raise
        except Exception as exc:  # a driver error that escaped the source's own handling
            raise SourceError(f"cannot read {self.source.describe()}: {exc}") from exc

    def close(self) -> None:
        """Stop the reading thread (the source and the store belong to the caller)."""
        self._reader.shutdown(wait=True)

    async def count(self) -> int:
        """The rows the run will read (for a progress bar)."""
        return await self._read(self.source.count, self.workspaces)

    async def run(self, advance: Callable[[int], None] = lambda rows: None) -> ImportSummary:
        """Import; ``advance(n)`` is called as rows are handled. Raises ``ImportFailed``, whose
        ``summary`` (an ``ImportSummary``) counts what was done before the failure."""
        tally = _Tally()
        winners: Dict[Key, str] = {}
        try:
            await self._run(tally, winners, advance)
        except (SourceError, ImportTargetFailed) as exc:
            raise ImportFailed(exc.message, tally.summary(self.source.describe(), self.dry_run, winners)) from exc
        return tally.summary(self.source.describe(), self.dry_run, winners)

    async def _run(self, tally: _Tally, winners: Dict[Key, str], advance: Callable[[int], None]) -> None:
        started = utc_now()
        duplicated = await self._read(self.source.duplicated_keys, self.workspaces)
        best: Dict[Key, Tuple[Tuple[_dt.datetime, int], str, MediaRecord]] = {}
        pending: List[MediaRecord] = []
        chunks = iter(await self._read(self.source.chunks, self.workspaces, self.batch_size))
        sequence = 0
        while True:
            chunk = await self._read(next, chunks, None)
            if chunk is None:
                break
            for row in chunk:
                tally.read += 1
                sequence += 1
                try:
                    record, written = self.source.convert(row, started)
                except RowRejected as exc:
                    tally.reject(exc.reason, row.row_id)
                    continue
                fingerprint = record.file.fingerprint
                if fingerprint is None:
                    # A dock's file: keyed by its object key, and the store keeps the first record
                    # of a key (insert_missing), so it needs no ranking of duplicates here.
                    pending.append(record)
                    continue
                key = (record.workspace_id, fingerprint)
                if key not in duplicated:
                    pending.append(record)
                    continue
                rank = (written or _OLDEST, sequence)
                current = best.get(key)
                if current is None or rank > current[0]:
                    if current is not None:
                        tally.duplicate(key, current[1])
                    best[key] = (rank, row.row_id, record)
                else:
                    tally.duplicate(key, row.row_id)
            if len(pending) >= self.batch_size:
                await self._store(pending, tally)
                pending = []
            advance(len(chunk))
        winners.update((key, row_id) for key, (_, row_id, _) in best.items())
        pending.extend(record for _, _, record in best.values())
        for start in range(0, len(pending), self.batch_size):
            await self._store(pending[start:start + self.batch_size], tally)

    async def _held(self, record: MediaRecord) -> bool:
        """Dry run: whether the target holds the record's key already."""
        if record.file.fingerprint is not None:
            return await self.store.get(record.workspace_id, record.file.fingerprint) is not None
        if not has_capability(self.store, "sweep_records"):
            return False  # cannot tell: counted as new
        # A dock's record, by object key: the range (key minus its last character, key] ends
        # with the key itself; a few neighbours at most come before it in a folder of files.
        key = record.file.object_key
        found = await self.store.records_by_object_key(record.workspace_id, key[:-1], key, 1000)
        return any(r.file.object_key == key for r in found)

    async def _store(self, batch: List[MediaRecord], tally: _Tally) -> None:
        try:
            if self.dry_run:
                found = await asyncio.gather(*(self._held(r) for r in batch))
                inserted = [not f for f in found]
            else:
                inserted = await self.store.insert_missing(batch)
        except Exception as exc:  # whatever the store raises, the run stops here and says so
            detail = exc.message if isinstance(exc, DjiMediaError) else f"{type(exc).__name__}: {exc}"
            raise ImportTargetFailed(f"the target store failed: {detail}") from exc
        added = sum(inserted)
        tally.imported += added
        tally.present += len(batch) - added
