"""The media library over HTTP (doc/library.md): our JSON API under
``/media/api/v1/workspaces/{ws}/library/...`` and the two read endpoints of DJI's web front-end
(``/media/api/v1/files/{ws}/files`` and ``.../file/{file_id}/url``).

Every answer is the envelope but the redirects and the exports. The use cases and their
authorisation are ``dji_media.catalogue``'s; this module parses, renders, and answers CORS
(off unless origins are configured: the page is normally served from this host).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tornado.web

from ..access import DELETE, READ
from ..catalogue import DEFAULT_LIMIT, Catalogue, file_view, mission_view
from ..errors import BadRequest, DjiMediaError
from ..service import MediaService
from ..values import FILE_KINDS, FileQuery, Identity, MediaRecord
from . import wire
from .handlers import EnvelopeMixin, status_for
from .lifecycle import CountedRequest, InFlight

__all__ = ["get_library_handlers", "parse_file_query"]

log = logging.getLogger("dji_media.web")

_WS = r"(?P<workspace_id>[^/]+)"
_FILE = r"(?P<file_id>[^/]+)"
# Preflight answers may be cached this long by the browser.
CORS_MAX_AGE = 600
_MAX_TEXT = 255


def _one(handler: tornado.web.RequestHandler, name: str) -> Optional[str]:
    values = handler.request.query_arguments.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name} is given more than once", field=name)
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{name} is not UTF-8", field=name) from None


def _bool(handler: tornado.web.RequestHandler, name: str) -> Optional[bool]:
    value = _one(handler, name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false", field=name)
    return value == "true"


def _int(handler: tornado.web.RequestHandler, name: str, default: int) -> int:
    value = _one(handler, name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise BadRequest(f"{name} must be a positive integer", field=name)
    return int(value)


def _time(handler: tornado.web.RequestHandler, name: str) -> Optional[_dt.datetime]:
    value = _one(handler, name)
    if value is None:
        return None
    try:
        moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError(name)
        return moment.astimezone(_dt.timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: the time in UTC leaves the calendar
        raise BadRequest(f"{name} must be an ISO 8601 time with an offset or Z", field=name) from None


def _text(handler: tornado.web.RequestHandler, name: str) -> Optional[str]:
    value = _one(handler, name)
    if value is not None and (len(value) > _MAX_TEXT or "\x00" in value):
        raise BadRequest(f"{name} must be at most {_MAX_TEXT} characters, without NUL", field=name)
    return value


def parse_file_query(handler: tornado.web.RequestHandler, workspace_id: str) -> FileQuery:
    """The find filters of doc/library.md from the request's query string."""
    order = _one(handler, "order") or "newest"
    if order not in ("newest", "oldest"):
        raise BadRequest("order must be newest or oldest", field="order")
    kind = _one(handler, "kind")
    if kind is not None and kind not in FILE_KINDS:
        raise BadRequest(f"kind must be one of {', '.join(FILE_KINDS)}", field="kind")
    bbox: Optional[Tuple[float, float, float, float]] = None
    raw_bbox = _one(handler, "bbox")
    if raw_bbox is not None:
        try:
            min_lng, min_lat, max_lng, max_lat = (float(part) for part in raw_bbox.split(","))
        except ValueError:
            raise BadRequest("bbox must be min_lng,min_lat,max_lng,max_lat", field="bbox") from None
        if not (-180 <= min_lng <= max_lng <= 180 and -90 <= min_lat <= max_lat <= 90):
            raise BadRequest("bbox must be min_lng,min_lat,max_lng,max_lat within the globe", field="bbox")
        bbox = (min_lng, min_lat, max_lng, max_lat)
    return FileQuery(
        workspace_id=workspace_id, mission=_text(handler, "mission"), sn=_text(handler, "sn"),
        drone_model_key=_text(handler, "drone_model_key"), payload_model_key=_text(handler, "payload_model_key"),
        kind=kind, original=_bool(handler, "original"), text=_text(handler, "q") or None,
        uploaded_from=_time(handler, "uploaded_from"), uploaded_to=_time(handler, "uploaded_to"),
        captured_from=_time(handler, "captured_from"), captured_to=_time(handler, "captured_to"),
        bbox=bbox, newest_first=order == "newest")


class _LibraryHandler(CountedRequest, EnvelopeMixin, tornado.web.RequestHandler):
    """Base: the token from X-Auth-Token, the scope (``read`` for GET, ``delete`` for DELETE)
    checked by the service before anything else, errors through the one error table."""

    SUPPORTED_METHODS: Tuple[str, ...] = ("GET", "OPTIONS")

    def initialize(self, service: MediaService, catalogue: Catalogue, cors_origins: Sequence[str] = (),
                   in_flight: Optional[InFlight] = None) -> None:
        self.service = service
        self.catalogue = catalogue
        self.cors_origins = frozenset(cors_origins)
        self._allow_origin()
        self.count_in(in_flight)

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self._allow_origin()

    def _allow_origin(self) -> None:
        # Tornado sets the default headers before initialize (the origins are not known yet)
        # and again when an error clears the answer; initialize calls this too.
        origin = self.request.headers.get("Origin")
        if origin is not None and origin in getattr(self, "cors_origins", ()):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")

    def options(self, *args: Any, **kwargs: Any) -> None:
        # A preflight carries no token: it is answered from the configuration alone.
        if self.request.headers.get("Origin") in self.cors_origins:
            self.set_header("Access-Control-Allow-Methods", "GET, DELETE, OPTIONS")
            self.set_header("Access-Control-Allow-Headers", "X-Auth-Token, Content-Type")
            self.set_header("Access-Control-Max-Age", str(CORS_MAX_AGE))
        self.set_status(204)
        self.finish()

    async def identity(self, workspace_id: str, scope: str) -> Identity:
        return await self.service.authenticate(self.request.headers.get("X-Auth-Token"), workspace_id, scope)

    def fail(self, exc: DjiMediaError) -> None:
        status = status_for(exc)
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s -> %s: %s",
                self.request.method, self.request.path, status, exc.message)
        self.reply(status, wire.envelope(status, exc.message))


class FilesHandler(_LibraryHandler):
    async def get(self, workspace_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            query = parse_file_query(self, workspace_id)
            page = await self.catalogue.find(identity, query, limit=_int(self, "limit", DEFAULT_LIMIT),
                                             cursor=_one(self, "cursor"), count=bool(_bool(self, "count")))
        except DjiMediaError as exc:
            self.fail(exc)
            return
        data: Dict[str, Any] = {"files": [file_view(r) for r in page.files], "next_cursor": page.next_cursor}
        if page.total is not None:
            data["total"] = page.total
        self.reply(200, wire.success(data))


class FileHandler(_LibraryHandler):
    SUPPORTED_METHODS = ("GET", "DELETE", "OPTIONS")

    async def get(self, workspace_id: str, file_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            record = await self.catalogue.get(identity, workspace_id, file_id)
        except DjiMediaError as exc:
            self.fail(exc)
            return
        self.reply(200, wire.success(file_view(record)))

    async def delete(self, workspace_id: str, file_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, DELETE)
            deleted = await self.catalogue.delete(identity, workspace_id, file_id)
        except DjiMediaError as exc:
            self.fail(exc)
            return
        self.reply(200, wire.success({"deleted": deleted}))


class DownloadHandler(_LibraryHandler):
    async def get(self, workspace_id: str, file_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            redirect, inline = _bool(self, "redirect"), _bool(self, "inline")
            download = await self.catalogue.download(identity, workspace_id, file_id, inline=bool(inline))
        except DjiMediaError as exc:
            self.fail(exc)
            return
        if redirect:
            self.redirect(download.url, status=302)
            return
        self.reply(200, wire.success({"url": download.url, "expires_in": download.expires_in}))


class MissionsHandler(_LibraryHandler):
    async def get(self, workspace_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            page = await self.catalogue.missions(identity, workspace_id, limit=_int(self, "limit", DEFAULT_LIMIT),
                                                 cursor=_one(self, "cursor"))
        except DjiMediaError as exc:
            self.fail(exc)
            return
        self.reply(200, wire.success({"missions": [mission_view(m, state) for m, state in page.missions],
                                      "next_cursor": page.next_cursor}))


class ExportCsvHandler(_LibraryHandler):
    async def get(self, workspace_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            text = await self.catalogue.export_csv(identity, parse_file_query(self, workspace_id))
        except DjiMediaError as exc:
            self.fail(exc)
            return
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", 'attachment; filename="media.csv"')
        self.finish(text.encode("utf-8"))


class ExportGeoJsonHandler(_LibraryHandler):
    async def get(self, workspace_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            collection = await self.catalogue.export_geojson(identity, parse_file_query(self, workspace_id))
        except DjiMediaError as exc:
            self.fail(exc)
            return
        self.set_header("Content-Type", "application/geo+json")
        self.set_header("Content-Disposition", 'attachment; filename="media.geojson"')
        self.finish(json.dumps(collection, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def dji_file(record: MediaRecord) -> Dict[str, Any]:
    """A record in DJI's web front-end's names (its demo server's MediaFileDTO)."""
    f = record.file
    return {
        "file_id": record.public_id, "file_name": f.name, "file_path": f.path, "object_key": f.object_key,
        "is_original": f.is_original, "drone": f.sn, "payload": f.payload_name or f.payload_model_key,
        "tinny_fingerprint": f.tiny_fingerprint, "fingerprint": f.fingerprint,
        "create_time": record.created_at.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "job_id": f.job_id or f.file_group_id,
    }


class DjiFilesHandler(_LibraryHandler):
    async def get(self, workspace_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            page, page_size = _int(self, "page", 1), _int(self, "page_size", 10)
            records, total = await self.catalogue.numbered_page(identity, workspace_id, page, page_size)
        except DjiMediaError as exc:
            self.fail(exc)
            return
        self.reply(200, wire.success({"list": [dji_file(r) for r in records],
                                      "pagination": {"page": page, "page_size": page_size, "total": total}}))


class DjiUrlHandler(_LibraryHandler):
    async def get(self, workspace_id: str, file_id: str) -> None:
        try:
            identity = await self.identity(workspace_id, READ)
            download = await self.catalogue.download(identity, workspace_id, file_id)
        except DjiMediaError as exc:
            self.fail(exc)
            return
        self.redirect(download.url, status=302)


def get_library_handlers(service: MediaService, catalogue: Catalogue, *, prefix: str = "",
                         cors_origins: Sequence[str] = (),
                         in_flight: Optional[InFlight] = None) -> List[Tuple[str, type, Dict[str, Any]]]:
    """The media library's routes. ``cors_origins``: the origins (``https://host[:port]``) a
    browser may call them from; none by default."""
    for origin in cors_origins:
        if origin == "*" or not origin.startswith(("http://", "https://")) or origin.endswith("/"):
            raise ValueError(f"cors_origins: {origin!r} is not an origin like https://host[:port]")
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    kwargs = {"service": service, "catalogue": catalogue, "cors_origins": tuple(cors_origins), "in_flight": in_flight}
    library = f"{base}/media/api/v1/workspaces/{_WS}/library"
    dji = f"{base}/media/api/v1/files/{_WS}"
    return [
        (f"{library}/files", FilesHandler, kwargs),
        (f"{library}/files/{_FILE}", FileHandler, kwargs),
        (f"{library}/files/{_FILE}/download", DownloadHandler, kwargs),
        (f"{library}/missions", MissionsHandler, kwargs),
        (f"{library}/export\\.csv", ExportCsvHandler, kwargs),
        (f"{library}/export\\.geojson", ExportGeoJsonHandler, kwargs),
        (f"{dji}/files", DjiFilesHandler, kwargs),
        (f"{dji}/file/{_FILE}/url", DjiUrlHandler, kwargs),
    ]
