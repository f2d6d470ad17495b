"""The HTTP endpoints for docks: the command ``POST .../devices/{sn}/jobs/{flight_id}/media-priority``,
and the bindings ``GET .../devices``, ``PUT`` and ``DELETE .../devices/{sn}`` (with a directory
that can bind: ``DatabaseDeviceDirectory``).

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
from ..devices import check_gateway_sn
from ..dock_priority import DockPriority
from ..errors import BadRequest, BoundElsewhere, DjiMediaError, DockTimeout, PayloadTooLarge, UnknownDock
from ..service import MediaService
from ..values import DeviceBinding
from . import wire
from .handlers import EnvelopeMixin, status_for
from .lifecycle import CountedRequest, InFlight

__all__ = ["MediaPriorityHandler", "DeviceListHandler", "DeviceBindingHandler", "get_device_handlers",
           "get_device_admin_handlers"]

log = logging.getLogger("dji_media.web")

# Result code of the envelope when the dock refused: the request was well formed and
# delivered, the dock said no (its own code is in data.result).
DOCK_REFUSED = 409
# A PUT for a dock that another workspace holds: moving it would take it from that workspace,
# which the caller has no right to do (and may not even know of).
BOUND_ELSEWHERE = 409
# The only body a PUT carries is {"note": ...} (at most 255 characters): a few KiB is plenty.
MAX_BINDING_BODY = 4096


class MediaPriorityHandler(CountedRequest, EnvelopeMixin, tornado.web.RequestHandler):
    """200 with ``data.result`` 0 when the dock accepted; 409 with the dock's ``data.result``
    when it refused; 401/403 as the media endpoints (``devices`` scope); 404 for a dock that is
    not in the workspace; 504 when the dock did not answer; 503 when the broker is unreachable."""

    SUPPORTED_METHODS = ("POST",)

    def initialize(self, service: MediaService, priority: DockPriority, in_flight: Optional[InFlight] = None) -> None:
        self.service = service
        self.priority = priority
        self.count_in(in_flight)

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


def render_binding(binding: DeviceBinding) -> Dict[str, Any]:
    return {"gateway_sn": binding.gateway_sn, "workspace_id": binding.workspace_id,
            "bound_at": binding.bound_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "note": binding.note}


class _DeviceAdminHandler(CountedRequest, EnvelopeMixin, tornado.web.RequestHandler):
    """Base of the binding endpoints: the ``devices`` scope in the path's workspace (401, 403,
    then 400 for the workspace id, as every endpoint), errors as envelopes.

    ``directory`` binds, unbinds and lists (``DatabaseDeviceDirectory``'s methods)."""

    def initialize(self, service: MediaService, directory: Any,
                   in_flight: Optional[InFlight] = None) -> None:
        self.service = service
        self.directory = directory
        self.count_in(in_flight)

    async def _authorized(self, workspace_id: str) -> None:
        await self.service.authenticate(self.request.headers.get("X-Auth-Token"), workspace_id, DEVICES)

    def _fail(self, exc: DjiMediaError) -> None:
        status = status_for(exc)
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s -> %s: %s",
                self.request.method, self.request.path, status, exc.message)
        self.reply(status, wire.envelope(status, exc.message))


class DeviceListHandler(_DeviceAdminHandler):
    """``GET``: the docks bound to the workspace, by serial number."""

    SUPPORTED_METHODS = ("GET",)

    async def get(self, workspace_id: str) -> None:
        try:
            await self._authorized(workspace_id)
            bindings = await self.directory.list(workspace_id)
        except DjiMediaError as exc:
            self._fail(exc)
            return
        self.reply(200, wire.success({"devices": [render_binding(b) for b in bindings]}))


class DeviceBindingHandler(_DeviceAdminHandler):
    """``PUT``: bind the dock to the workspace (again: its note is replaced); 409 when another
    workspace holds it. ``DELETE``: unbind it if this workspace holds it; idempotent, and the
    same answer whether the dock is unknown or another workspace's (nothing leaks)."""

    SUPPORTED_METHODS = ("PUT", "DELETE")

    async def put(self, workspace_id: str, gateway_sn: str) -> None:
        try:
            await self._authorized(workspace_id)
            check_gateway_sn(gateway_sn)
            note = self._note()
            # Never another workspace's dock: the directory checks and writes in one step, so
            # two administrators racing for one dock cannot both win.
            binding = await self.directory.bind(gateway_sn, workspace_id, note=note, replace=False)
        except BoundElsewhere as exc:
            log.info("%s %s -> %s: bound to another workspace", self.request.method, self.request.path,
                     BOUND_ELSEWHERE)
            self.reply(BOUND_ELSEWHERE, wire.envelope(BOUND_ELSEWHERE, exc.message))
            return
        except DjiMediaError as exc:
            self._fail(exc)
            return
        self.reply(200, wire.success(render_binding(binding)))

    async def delete(self, workspace_id: str, gateway_sn: str) -> None:
        try:
            await self._authorized(workspace_id)
            check_gateway_sn(gateway_sn)
            # Only this workspace's binding, in one statement (not a check, then a delete).
            removed = bool(await self.directory.unbind(gateway_sn, workspace_id))
        except DjiMediaError as exc:
            self._fail(exc)
            return
        self.reply(200, wire.success({"gateway_sn": gateway_sn, "removed": removed}))

    def _note(self) -> Optional[str]:
        body = self.request.body
        if len(body) > MAX_BINDING_BODY:
            raise PayloadTooLarge(f"request body is larger than {MAX_BINDING_BODY} bytes", field="body")
        note = wire.decode_object(body, allow_empty=True).get("note")
        if note is not None and not isinstance(note, str):
            raise BadRequest("note must be text of at most 255 characters", field="note")
        return note


def get_device_admin_handlers(service: MediaService, directory: Any, *, prefix: str = "",
                              in_flight: Optional[InFlight] = None) -> List[Tuple[str, type, Dict[str, Any]]]:
    """The binding routes, over a directory that can ``bind`` (with ``replace=False``: refuse a
    dock bound elsewhere, raising ``BoundElsewhere``), ``unbind`` (only the given workspace's
    binding) and ``list``: ``DatabaseDeviceDirectory``."""
    for method in ("bind", "unbind", "list"):
        if not callable(getattr(directory, method, None)):
            raise ValueError(f"the device directory cannot {method}: the binding endpoints need one that can "
                             "(DatabaseDeviceDirectory)")
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    kwargs = {"service": service, "directory": directory, "in_flight": in_flight}
    devices = f"{base}/manage/api/v1/workspaces/(?P<workspace_id>[^/]+)/devices"
    return [
        (devices, DeviceListHandler, kwargs),
        (f"{devices}/(?P<gateway_sn>[^/]+)", DeviceBindingHandler, kwargs),
    ]


def get_device_handlers(service: MediaService, priority: DockPriority, *, prefix: str = "",
                        in_flight: Optional[InFlight] = None) -> List[Tuple[str, type, Dict[str, Any]]]:
    """The device routes (only with a ``DockPriority``, that is with a way to reach docks)."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    kwargs = {"service": service, "priority": priority, "in_flight": in_flight}
    return [
        (f"{base}/manage/api/v1/workspaces/(?P<workspace_id>[^/]+)/devices/(?P<gateway_sn>[^/]+)"
         f"/jobs/(?P<flight_id>[^/]+)/media-priority", MediaPriorityHandler, kwargs),
    ]
