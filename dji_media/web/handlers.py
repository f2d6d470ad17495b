"""The Tornado handlers. They parse (``wire``), call the service, render (``wire``) and
map errors in one place; no business rule lives here."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional

import tornado.web
from tornado.http1connection import HTTP1Connection

from ..errors import (
    BadRequest,
    DjiMediaError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
)
from ..service import USE_CASE_SCOPES, MediaService
from . import wire
from .lifecycle import CountedRequest, InFlight

log = logging.getLogger("dji_media.web")

# Built once: json.dumps with options other than the defaults builds an encoder per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# The one table from domain errors to HTTP status. The envelope's code repeats the status, so
# a client that only reads the body still tells a bad request from an outage.
ERROR_STATUS = (
    (PayloadTooLarge, 413),
    (BadRequest, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Unavailable, 503),
)


def status_for(exc: DjiMediaError) -> int:
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


class EnvelopeMixin:
    """Every answer, Tornado's own errors included, is the JSON envelope: no HTML, no traceback."""

    def set_default_headers(self: Any) -> None:
        self.clear_header("Server")  # no version banner for scanners
        # Answers carry credentials and per-workspace facts: no proxy or client may keep them.
        self.set_header("Cache-Control", "no-store")

    def reply(self: Any, status: int, body: Dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(_JSON.encode(body))

    def write_error(self: Any, status_code: int, **kwargs: Any) -> None:
        # Reached for Tornado's HTTPErrors (404, 405, ...) and for unexpected exceptions, which
        # Tornado has already logged with their traceback. The client gets the reason only.
        message = self._reason if status_code != 500 else "internal server error"
        self.reply(status_code, wire.envelope(status_code, message))


@tornado.web.stream_request_body
class NotFoundHandler(EnvelopeMixin, tornado.web.RequestHandler):
    """Use as the host app's ``default_handler_class`` so unknown paths answer the envelope.

    It streams (and never reads) the body, so the 404 is sent whatever the body's size."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)

    def data_received(self, chunk: bytes) -> None:
        pass


@tornado.web.stream_request_body
class _MediaHandler(CountedRequest, EnvelopeMixin, tornado.web.RequestHandler):
    """Base of the five endpoints.

    The body is streamed so that the token is checked and the size limit applied before any of
    it is read or parsed: an oversized or unauthenticated request costs the server nothing.
    Each endpoint names the scope of its use case (``scope``, from the service's table); a
    subclass that forgets fails with AttributeError, a 500, rather than letting anyone in.
    """

    SUPPORTED_METHODS = ("POST",)
    scope: str

    def initialize(self, service: MediaService, max_body_bytes: int,
                   in_flight: Optional[InFlight] = None) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self._body = bytearray()
        self._overflow = False
        self.count_in(in_flight)

    async def handle(self, workspace_id: str, body: bytes) -> Dict[str, Any]:
        raise NotImplementedError

    async def prepare(self) -> None:
        try:
            length = self.request.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                raise self._too_large()
            workspace_id = self.path_kwargs.get("workspace_id", "")
            token: Optional[str] = self.request.headers.get("X-Auth-Token")
            await self.service.authenticate(token, workspace_id, self.scope)
        except DjiMediaError as exc:
            # The rest of the body is never read, so the connection cannot be reused.
            self.set_header("Connection", "close")
            self._fail(exc)
            return
        # A chunked body announces no length: read it up to a hard cap, keeping only what fits
        # the limit, then answer 413 once it has ended.
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)  # the only kind Tornado's server makes
        connection.set_max_body_size(max(self.max_body_bytes * 4, 8 * 1024 * 1024))

    def data_received(self, chunk: bytes) -> None:
        if self._overflow:
            return
        if len(self._body) + len(chunk) > self.max_body_bytes:
            self._overflow = True
            self._body = bytearray()
            return
        self._body += chunk

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes", field="body")

    def _fail(self, exc: DjiMediaError) -> None:
        status = status_for(exc)
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s -> %s: %s",
                self.request.method, self.request.path, status, exc.message)
        self.reply(status, wire.envelope(status, exc.message))

    async def post(self, workspace_id: str) -> None:
        try:
            if self._overflow:
                raise self._too_large()
            answer = await self.handle(workspace_id, bytes(self._body))
        except DjiMediaError as exc:
            self._fail(exc)
            return
        self.reply(200, answer)


class FastUploadHandler(_MediaHandler):
    scope = USE_CASE_SCOPES["fast_upload"]

    async def handle(self, workspace_id: str, body: bytes) -> Dict[str, Any]:
        query = wire.parse_fast_upload(body)
        if await self.service.fast_upload(workspace_id, query):
            return wire.success()
        return wire.unknown_file(query.fingerprint)


class TinyFingerprintsHandler(_MediaHandler):
    scope = USE_CASE_SCOPES["existing_tiny_fingerprints"]

    async def handle(self, workspace_id: str, body: bytes) -> Dict[str, Any]:
        wanted = wire.parse_tiny_fingerprints(body)
        found = await self.service.existing_tiny_fingerprints(workspace_id, wanted)
        return wire.success({"tiny_fingerprints": found})


class StsHandler(_MediaHandler):
    scope = USE_CASE_SCOPES["issue_credentials"]

    async def handle(self, workspace_id: str, body: bytes) -> Dict[str, Any]:
        wire.parse_sts(body)
        grant, expire = await self.service.issue_credentials(workspace_id)
        return wire.success(wire.render_grant(grant, expire))


class UploadCallbackHandler(_MediaHandler):
    scope = USE_CASE_SCOPES["record_upload"]

    async def handle(self, workspace_id: str, body: bytes) -> Dict[str, Any]:
        outcome = await self.service.record_upload(workspace_id, wire.parse_upload_callback(body))
        if not outcome.recorded:
            return wire.envelope(
                wire.CODE_NOT_FOUND,
                f"upload reported as failed (result {outcome.result}); not recorded",
                {"object_key": outcome.object_key},
            )
        return wire.success({"object_key": outcome.object_key})


class GroupUploadCallbackHandler(_MediaHandler):
    scope = USE_CASE_SCOPES["record_group"]

    async def handle(self, workspace_id: str, body: bytes) -> Dict[str, Any]:
        await self.service.record_group(workspace_id, wire.parse_group_callback(body))
        return wire.success()
