"""The HTTP endpoint that commands a dock: ``POST .../devices/{sn}/jobs/{flight_id}/media-priority``.

Under ``/manage/api/v1``, where DJI's demo puts what a web user does with devices (DJI's own
``PUT /media/api/v1/workspaces/{ws}/jobs/{job_id}/media-highest`` names no dock, and a job id
alone does not say which dock to ask). A POST: it makes the dock do something, and is not
idempotent on the wire (each call sends a command). The body is ignored and may be empty.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import tornado.web

from ..access import DEVICES
from ..dock_priority import DockPriority
from ..errors import DjiMediaError, DockTimeout, UnknownDock
from ..service import MediaService
from . import wire
from .handlers import EnvelopeMixin, status_for
from .lifecycle import InFlight

__all__ = ["MediaPriorityHandler", "get_device_handlers"]

log = logging.getLogger("dji_media.web")

# Result code of the envelope when the dock refused: the request was well formed and
# delivered, the dock said no (its own code is in data.result).
DOCK_REFUSED = 409


class MediaPriorityHandler(EnvelopeMixin, tornado.web.RequestHandler):
    """200 with ``data.result`` 0 when the dock accepted; 409 with the dock's ``data.result``
    when it refused; 401/403 as the media endpoints (``devices`` scope); 404 for a dock that is
    not in the workspace; 504 when the dock did not answer; 503 when the broker is unreachable."""

    SUPPORTED_METHODS = ("POST",)

    def initialize(self, service: MediaService, priority: DockPriority, in_flight: Optional[InFlight] = None) -> None:
        self.service = service
        self.priority = priority
        self._in_flight = in_flight
        if in_flight is not None:
            in_flight.enter()

    def on_finish(self) -> None:
        self._leave()

    def on_connection_close(self) -> None:
        self._leave()

    def _leave(self) -> None:
        if self._in_flight is not None:
            self._in_flight.leave()
            self._in_flight = None

    async def post(self, workspace_id: str, gateway_sn: str, flight_id: str) -> None:
        try:
            identity = await self.service.authenticate(self.request.headers.get("X-Auth-Token"), workspace_id,
                                                       DEVICES)
            outcome = await self.priority.prioritize(identity, workspace_id, gateway_sn, flight_id)
        except DjiMediaError as exc:
            status = 404 if isinstance(exc, UnknownDock) else 504 if isinstance(exc, DockTimeout) else status_for(exc)
            log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s -> %s: %s",
                    self.request.method, self.request.path, status, exc.message)
            self.reply(status, wire.envelope(status, exc.message))
            return
        data = {"gateway_sn": outcome.gateway_sn, "flight_id": outcome.flight_id, "result": outcome.result}
        if outcome.accepted:
            self.reply(200, wire.success(data))
        else:
            self.reply(DOCK_REFUSED, wire.envelope(DOCK_REFUSED, f"the dock refused (result {outcome.result})", data))


def get_device_handlers(service: MediaService, priority: DockPriority, *, prefix: str = "",
                        in_flight: Optional[InFlight] = None) -> List[Tuple[str, type, Dict[str, Any]]]:
    """The device routes (only with a ``DockPriority``, that is with a way to reach docks)."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    kwargs = {"service": service, "priority": priority, "in_flight": in_flight}
    return [
        (f"{base}/manage/api/v1/workspaces/(?P<workspace_id>[^/]+)/devices/(?P<gateway_sn>[^/]+)"
         f"/jobs/(?P<flight_id>[^/]+)/media-priority", MediaPriorityHandler, kwargs),
    ]
