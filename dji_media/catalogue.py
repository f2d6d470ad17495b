"""The media library's use cases, free of any transport: find, get, download, delete, missions
and exports of one workspace's files (doc/library.md).

``Catalogue`` works on the optional capabilities of the stores (feature "catalogue" in
``dji_media.capabilities``). Each method takes the caller's ``Identity`` and authorises it
itself (``dji_media.access``: ``read`` for everything but ``delete``, which needs ``delete``),
so no transport can forget to. A file id of another workspace is ``NotFound``, exactly as an id
that was never stored: the answer never tells whether another workspace holds it.

Delete order: the object first, then the record. When storage cannot delete, nothing changed
(``StorageUnavailable``). A crash between the two steps leaves a record whose object is gone,
which every read treats as stale (``download`` checks storage for a record never confirmed, and
the storage sweep removes the record); the other order could leave an object no record names,
which nothing would ever find again.
"""
from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import datetime as _dt
import io
import json
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

from .access import DELETE, READ, authorize
from .errors import BadRequest, NotFound
from .interfaces import MediaStore, ObjectStore
from .values import FileQuery, Identity, MediaRecord, MissionSummary, file_kind, utc_now

__all__ = ["Catalogue", "FilePage", "MissionPage", "Download", "mission_state", "file_view", "mission_view",
           "MAX_LIMIT", "DEFAULT_LIMIT", "EXPORT_LIMIT", "CSV_COLUMNS"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# An export reads the store page by page and stops here: a bound on one request's work.
EXPORT_LIMIT = 100_000
_EXPORT_PAGE = 500
CSV_COLUMNS = ("id", "name", "path", "object_key", "kind", "is_original", "mission", "sn", "drone_model_key",
               "payload_model_key", "created_time", "uploaded_at", "lat", "lng", "absolute_altitude",
               "relative_altitude", "size")


@dataclasses.dataclass(frozen=True)
class FilePage:
    """One page of files; ``next_cursor`` (None: the last page) asks for the next one."""

    files: Tuple[MediaRecord, ...]
    next_cursor: Optional[str]
    total: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class MissionPage:
    missions: Tuple[Tuple[MissionSummary, str], ...]  # each with its state (``mission_state``)
    next_cursor: Optional[str]


@dataclasses.dataclass(frozen=True)
class Download:
    url: str
    expires_in: int


def mission_state(mission: MissionSummary, now: _dt.datetime, in_progress_seconds: float) -> str:
    """The state of a mission, by this rule, first match wins:

    - ``complete``: an expected count is known and at least that many files are recorded. The
      expected count is a dock's announced ``expected_file_count`` when there is one, else the
      ``file_count`` a device reported (group-upload-callback);
    - ``partial``: a device reported its totals, and fewer files are recorded;
    - ``in_progress``: no device reported totals yet, and a file was uploaded within the last
      ``in_progress_seconds``;
    - ``unknown``: anything else (a dock's expectation not met and quiet, or files alone).
    """
    expected = mission.expected_file_count
    if expected is None and mission.reported:
        expected = mission.reported_file_count
    if expected is not None and mission.recorded_count >= expected:
        return "complete"
    if mission.reported:
        return "partial"
    if mission.last_upload is not None and (now - mission.last_upload).total_seconds() <= in_progress_seconds:
        return "in_progress"
    return "unknown"


def _time(value: Optional[_dt.datetime]) -> Optional[str]:
    if value is None:
        return None
    return value.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def file_view(record: MediaRecord) -> Dict[str, Any]:
    """A record as the library shows it (doc/library.md, "File")."""
    f = record.file
    position = None
    if f.shoot_lat is not None and f.shoot_lng is not None:
        position = {"lat": f.shoot_lat, "lng": f.shoot_lng}
    return {
        "id": record.public_id, "name": f.name, "path": f.path, "object_key": f.object_key,
        "kind": file_kind(f.name), "is_original": f.is_original, "sub_file_type": f.sub_file_type,
        "fingerprint": f.fingerprint, "tiny_fingerprint": f.tiny_fingerprint, "mission": f.file_group_id,
        "sn": f.sn, "drone_model_key": f.drone_model_key, "payload_model_key": f.payload_model_key,
        "payload_name": f.payload_name, "created_time": _time(f.created_time),
        "created_time_text": f.created_time_text, "uploaded_at": _time(record.created_at),
        "shoot_position": position, "absolute_altitude": f.absolute_altitude,
        "relative_altitude": f.relative_altitude, "gimbal_yaw_degree": f.gimbal_yaw_degree,
        "size": record.size, "verified_at": _time(record.verified_at),
    }


def mission_view(mission: MissionSummary, state: str) -> Dict[str, Any]:
    """A mission as the library shows it (doc/library.md, "Mission")."""
    return {
        "mission": mission.file_group_id, "reported_file_count": mission.reported_file_count,
        "reported_uploaded_count": mission.reported_uploaded_count,
        "expected_file_count": mission.expected_file_count, "recorded_count": mission.recorded_count,
        "state": state, "first_upload": _time(mission.first_upload), "last_upload": _time(mission.last_upload),
        "updated_at": _time(mission.updated_at),
    }


# ------------------------------------------------------------------------------- cursors
# Opaque to clients (base64url of a small JSON object), but checked on the way back in: a
# cursor that does not decode, or was made for the other order, is a BadRequest, never a
# silently wrong page.

def _encode(payload: Dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(cursor: str, kind: str) -> Tuple[_dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw.decode("utf-8"))
        if not isinstance(payload, dict) or payload.get("k") != kind:
            raise ValueError(kind)
        moment = _dt.datetime.fromisoformat(payload["t"])
        key = payload["i"]
        if moment.tzinfo is None or not isinstance(key, str):
            raise ValueError(kind)
        return moment.astimezone(_dt.timezone.utc), key
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error, OverflowError, RecursionError):
        raise BadRequest("cursor is not one this server gave", field="cursor") from None


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


class Catalogue:
    """The media library over a media store and an object store.

    :param download_seconds: how long a download URL works.
    :param in_progress_seconds: how recent a mission's last upload must be for it to count as
        in progress when no totals were reported (``mission_state``).
    :param clock: the current time (aware UTC).
    """

    def __init__(self, media_store: MediaStore, object_store: ObjectStore, *, download_seconds: int = 900,
                 in_progress_seconds: float = 1800.0, clock: Callable[[], _dt.datetime] = utc_now) -> None:
        if not 1 <= download_seconds <= 7 * 24 * 3600:
            raise ValueError("download_seconds must be between 1 and 604800")
        self.media_store = media_store
        self.object_store = object_store
        self.download_seconds = download_seconds
        self.in_progress_seconds = in_progress_seconds
        self.clock = clock

    async def find(self, identity: Identity, query: FileQuery, *, limit: int = DEFAULT_LIMIT,
                   cursor: Optional[str] = None, count: bool = False) -> FilePage:
        authorize(identity, query.workspace_id, READ)
        limit = _check_limit(limit)
        kind = "newest" if query.newest_first else "oldest"
        after = _decode(cursor, kind) if cursor else None
        # One more than asked tells whether another page follows without a second query.
        found = await self.media_store.find_records(query, limit + 1, after)
        page = found[:limit]
        following = None
        if len(found) > limit:
            last = page[-1]
            following = _encode({"k": kind, "t": last.created_at.isoformat(), "i": last.public_id})
        total = await self.media_store.count_records(query) if count else None
        return FilePage(tuple(page), following, total)

    async def get(self, identity: Identity, workspace_id: str, file_id: str) -> MediaRecord:
        authorize(identity, workspace_id, READ)
        return await self._record(workspace_id, file_id)

    async def _record(self, workspace_id: str, file_id: str) -> MediaRecord:
        record = await self.media_store.get_by_public_id(workspace_id, file_id)
        if record is None:
            raise NotFound("no such file in this workspace")
        return record

    async def download(self, identity: Identity, workspace_id: str, file_id: str, *,
                       inline: bool = False) -> Download:
        """A presigned GET of the file's object. A record storage never confirmed is checked
        first (one HEAD): a stale record answers NotFound rather than a URL to nothing."""
        authorize(identity, workspace_id, READ)
        record = await self._record(workspace_id, file_id)
        if record.verified_at is None and await self.object_store.stat(record.file.object_key) is None:
            raise NotFound("the file is no longer in storage")
        url = await self.object_store.presign_get(record.file.object_key, self.download_seconds,
                                                  filename=record.file.name, inline=inline)
        return Download(url, self.download_seconds)

    async def delete(self, identity: Identity, workspace_id: str, file_id: str) -> bool:
        """Delete the file's object, then its record; False when there was no such file
        (idempotent). StorageUnavailable: nothing changed. See the module's docstring for the order."""
        authorize(identity, workspace_id, DELETE)
        record = await self.media_store.get_by_public_id(workspace_id, file_id)
        if record is None:
            return False
        await self.object_store.delete(record.file.object_key)
        await self.media_store.remove_record(record)
        return True

    async def missions(self, identity: Identity, workspace_id: str, *, limit: int = DEFAULT_LIMIT,
                       cursor: Optional[str] = None) -> MissionPage:
        authorize(identity, workspace_id, READ)
        limit = _check_limit(limit)
        after = _decode(cursor, "missions") if cursor else None
        found = await self.media_store.mission_summaries(workspace_id, limit + 1, after)
        page = found[:limit]
        following = None
        if len(found) > limit:
            last = page[-1]
            following = _encode({"k": "missions", "t": last.updated_at.isoformat(), "i": last.file_group_id})
        now = self.clock()
        return MissionPage(tuple((m, mission_state(m, now, self.in_progress_seconds)) for m in page), following)

    async def numbered_page(self, identity: Identity, workspace_id: str, page: int,
                            page_size: int) -> Tuple[List[MediaRecord], int]:
        """Page ``page`` (from 1) of ``page_size`` files, newest first, and the total: DJI's
        web front-end pages by number. The store pages by key, so the pages before are walked
        (at most ``EXPORT_LIMIT`` files deep, which bounds the work: deeper is a BadRequest)."""
        authorize(identity, workspace_id, READ)
        if not 1 <= page_size <= MAX_LIMIT:
            raise BadRequest(f"page_size must be between 1 and {MAX_LIMIT}", field="page_size")
        if page < 1 or page * page_size > EXPORT_LIMIT:
            raise BadRequest(f"page must be between 1 and {EXPORT_LIMIT // page_size}", field="page")
        query = FileQuery(workspace_id)
        skip = (page - 1) * page_size
        after = None
        while skip > 0:
            walked = await self.media_store.find_records(query, min(skip, _EXPORT_PAGE), after)
            if not walked:
                break
            skip -= len(walked)
            after = (walked[-1].created_at, walked[-1].public_id or "")
        found = [] if skip > 0 else await self.media_store.find_records(query, page_size, after)
        return found, await self.media_store.count_records(query)

    async def export_records(self, identity: Identity, query: FileQuery) -> AsyncIterator[MediaRecord]:
        """Every matching record, page by page, at most ``EXPORT_LIMIT``."""
        authorize(identity, query.workspace_id, READ)
        after = None
        sent = 0
        while sent < EXPORT_LIMIT:
            page = await self.media_store.find_records(query, min(_EXPORT_PAGE, EXPORT_LIMIT - sent), after)
            for record in page:
                yield record
            sent += len(page)
            if len(page) < _EXPORT_PAGE:
                return
            after = (page[-1].created_at, page[-1].public_id or "")

    async def export_csv(self, identity: Identity, query: FileQuery) -> str:
        """The matching files as CSV: a header row (``CSV_COLUMNS``), then one row per file."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        async for record in self.export_records(identity, query):
            view = file_view(record)
            position = view["shoot_position"] or {}
            row = dict(view, lat=position.get("lat"), lng=position.get("lng"))
            writer.writerow([_csv_cell(row.get(c)) for c in CSV_COLUMNS])
        return out.getvalue()

    async def export_geojson(self, identity: Identity, query: FileQuery) -> Dict[str, Any]:
        """The matching files with a shoot position, as a GeoJSON FeatureCollection of Points."""
        features: List[Dict[str, Any]] = []
        async for record in self.export_records(identity, query):
            f = record.file
            if f.shoot_lat is None or f.shoot_lng is None:
                continue
            features.append({
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [f.shoot_lng, f.shoot_lat]},
                "properties": {"id": record.public_id, "name": f.name, "created_time": _time(f.created_time),
                               "uploaded_at": _time(record.created_at), "mission": f.file_group_id},
            })
        return {"type": "FeatureCollection", "features": features}


def _csv_cell(value: Any) -> Any:
    # A cell starting with one of these is a formula to a spreadsheet: file names come from
    # devices, so they are quoted out of that reading.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if value is None:
        return ""
    return value
