"""A ``DeviceDirectory`` in the peewee store's database: the ``{prefix}device`` table (schema
version 5), one row per dock bound to a workspace.

It runs on a ``PeeweeMediaStore``'s database and pool (the store's units of work: a connection
never spans an ``await``, a database failure is ``DatabaseUnavailable``, the schema is created or
checked first), so the binding lives beside the media records and every server process on that
database sees the same table.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..devices import DeviceDirectory, check_gateway_sn
from ..errors import BadRequest, BoundElsewhere, DatabaseUnavailable
from ..rules import check_workspace_id
from ..values import DeviceBinding, utc_now
from .peewee_schema import _aware_utc, _naive_utc, _storable
from .peewee_store import PeeweeMediaStore

__all__ = ["DatabaseDeviceDirectory", "MAX_NOTE"]

MAX_NOTE = 255
# Distinct serial numbers whose answer is kept at once: a dock that is not bound keeps asking
# (its messages are dropped, it retries), so unknown serial numbers are cached too, within a bound.
MAX_CACHED = 100_000


class DatabaseDeviceDirectory(DeviceDirectory):
    """Which workspace each dock belongs to, in the ``{table_prefix}device`` table.

    Build it on the media store the server already has, so both share one database and pool::

        store = PeeweeMediaStore(url="postgresql://dji@db/media")
        devices = DatabaseDeviceDirectory(store)            # the store stays the caller's to close

    or from a URL, with a store of its own that ``close()`` closes::

        devices = DatabaseDeviceDirectory(url="sqlite:///var/media.sqlite3", table_prefix="dji_")

    :param store: a ``PeeweeMediaStore`` whose database holds the table (version 5 schema).
    :param url: instead of ``store``: a database URL (as ``PeeweeMediaStore`` takes it).
    :param table_prefix: with ``url``: the tables' prefix (``PeeweeMediaStore``'s default).
    :param max_workers: with ``url``: threads, and so connections, of its own store.
    :param cache_seconds: how long an answer of ``workspace_of`` is reused without asking the
        database (unknown docks included; 0: ask every time). A dock sends messages every few
        seconds, and a lookup per message would cost a database round trip each: a binding or
        unbinding made by another process takes effect within this delay (one made through this
        object, at once).
    :param clock: seconds, monotonic; injectable for tests of the cache.

    ``bind`` and ``unbind`` check their input and raise ``BadRequest`` naming the field (a
    serial number that is not 1 to 128 letters and digits, a malformed workspace id, a note of
    more than 255 characters). Every method raises ``DatabaseUnavailable`` when the database
    cannot answer (``workspace_of`` too: the transport then lets the dock retry) and
    ``SchemaMismatch`` for a database at another schema version (``dji-media migrate``).
    """

    def __init__(self, store: Optional[PeeweeMediaStore] = None, *, url: Optional[str] = None,
                 table_prefix: str = "dji_", max_workers: int = 2, cache_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (store is None) == (url is None):
            raise ValueError("give exactly one of a PeeweeMediaStore or a database url")
        if not cache_seconds >= 0:
            raise ValueError("cache_seconds must be >= 0")
        self._owns_store = store is None
        self.store: PeeweeMediaStore = store if store is not None else PeeweeMediaStore(
            url=url, table_prefix=table_prefix, max_workers=max_workers)
        # The model class is built at run time for the store's prefix: its columns are not declared.
        self._model: Any = self.store._device
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: Dict[str, Tuple[Optional[str], float]] = {}

    @property
    def table_name(self) -> str:
        return str(self._model._meta.table_name)

    async def workspace_of(self, gateway_sn: str) -> Optional[str]:
        if not isinstance(gateway_sn, str) or not _storable(gateway_sn):
            return None
        now = self._clock()
        cached = self._cache.get(gateway_sn)
        if cached is not None and cached[1] > now:
            return cached[0]
        d = self._model

        def fetch() -> Optional[str]:
            row = d.select(d.workspace_id).where(d.gateway_sn == gateway_sn).tuples().first()
            return row[0] if row else None

        workspace_id = await self.store.run_unit(fetch, transaction=False)
        if self.cache_seconds:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()  # rare; the next lookups fill it again
            self._cache[gateway_sn] = (workspace_id, now + self.cache_seconds)
        return workspace_id

    async def bind(self, gateway_sn: str, workspace_id: str, note: Optional[str] = None, *,
                   replace: bool = True) -> DeviceBinding:
        """Bind the dock to the workspace and return the binding; binding it again to the same
        workspace replaces the note. With ``replace`` (an operator's ``dji-media devices bind``)
        a binding to another workspace is moved; without it (a workspace's administrator, over
        HTTP) that raises ``BoundElsewhere`` and changes nothing. The check and the write are one
        statement each, so two administrators racing for one dock cannot both succeed."""
        check_gateway_sn(gateway_sn)
        check_workspace_id(workspace_id)
        if note is not None and not (isinstance(note, str) and len(note) <= MAX_NOTE and _storable(note)):
            raise BadRequest(f"note must be text of at most {MAX_NOTE} characters", field="note")
        d = self._model
        bound_at = _naive_utc(utc_now())
        row = dict(gateway_sn=gateway_sn, workspace_id=workspace_id, bound_at=bound_at, note=note)

        def move() -> DeviceBinding:
            self.store._upsert_query(d, row, [d.gateway_sn],
                                     {d.workspace_id: workspace_id, d.bound_at: bound_at, d.note: note}).execute()
            return self._binding(d.get(d.gateway_sn == gateway_sn))

        def claim() -> DeviceBinding:
            # Only this workspace's own binding is updated; a dock without one is inserted, and
            # an insert that meets a binding (elsewhere, or a racing request's) is ignored: no
            # error and no savepoint, which a MySQL deadlock would take away with the
            # transaction. The row then says who holds the dock.
            updated = d.update(bound_at=bound_at, note=note).where(
                (d.gateway_sn == gateway_sn) & (d.workspace_id == workspace_id)).execute()
            if not updated:
                d.insert(**row).on_conflict_ignore().execute()
            current = d.get_or_none(d.gateway_sn == gateway_sn)
            if current is None or current.workspace_id != workspace_id:
                raise BoundElsewhere("this dock is bound to another workspace: unbind it there first")
            return self._binding(current)

        binding = await self.store.run_unit(move if replace else claim)
        self._cache.pop(gateway_sn, None)
        return binding

    async def unbind(self, gateway_sn: str, workspace_id: Optional[str] = None) -> bool:
        """Remove the dock's binding (only if it is ``workspace_id``'s, when given); return
        whether one was removed. Its messages are then dropped (an unknown dock) until it is
        bound again."""
        check_gateway_sn(gateway_sn)
        if workspace_id is not None:
            check_workspace_id(workspace_id)
        d = self._model
        which = d.gateway_sn == gateway_sn
        if workspace_id is not None:
            which = which & (d.workspace_id == workspace_id)

        def delete() -> bool:
            return d.delete().where(which).execute() > 0

        removed = await self.store.run_unit(delete)
        self._cache.pop(gateway_sn, None)
        return bool(removed)

    async def list(self, workspace_id: Optional[str] = None) -> List[DeviceBinding]:
        """Every binding (of one workspace when given), by serial number."""
        if workspace_id is not None:
            check_workspace_id(workspace_id)
        d = self._model

        def fetch() -> List[DeviceBinding]:
            query = d.select().order_by(d.gateway_sn)
            if workspace_id is not None:
                query = query.where(d.workspace_id == workspace_id)
            return [self._binding(row) for row in query]

        return await self.store.run_unit(fetch, transaction=False)

    async def close(self) -> None:
        """Close the store built from ``url``; a store passed in stays open (its owner's)."""
        self._cache.clear()
        if self._owns_store:
            await self.store.close()

    @staticmethod
    def _binding(row: Any) -> DeviceBinding:
        bound_at = _aware_utc(row.bound_at)
        if bound_at is None:  # a NOT NULL column: only a database edited by hand gets here
            raise DatabaseUnavailable("the media database holds a device without a time")
        return DeviceBinding(gateway_sn=row.gateway_sn, workspace_id=row.workspace_id,
                             bound_at=bound_at, note=row.note)
