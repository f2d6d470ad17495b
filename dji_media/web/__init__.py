"""Tornado transport: handlers for the five Pilot 2 endpoints and one function to mount them."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..catalogue import Catalogue
from ..devices import DeviceDirectory
from ..dock_priority import DockCommands, DockPriority
from ..service import MediaService
from .devices import get_device_admin_handlers, get_device_handlers
from .handlers import (
    FastUploadHandler,
    GroupUploadCallbackHandler,
    NotFoundHandler,
    StsHandler,
    TinyFingerprintsHandler,
    UploadCallbackHandler,
)
from .health import get_health_handlers
from .library import get_library_handlers
from .lifecycle import InFlight

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_WS = r"(?P<workspace_id>[^/]+)"


def get_handlers(
    service: MediaService, *, prefix: str = "", max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    in_flight: Optional[InFlight] = None, dock_commands: Optional[DockCommands] = None,
    directory: Optional[DeviceDirectory] = None, device_admin: Optional[Any] = None,
    catalogue: Optional[Catalogue] = None, cors_origins: Sequence[str] = (),
) -> List[Tuple[str, type, Dict[str, Any]]]:
    """The routes of the media protocol, ready for ``tornado.web.Application(handlers)``.

    :param prefix: a path the host mounts them under, e.g. ``/dji`` (no trailing slash needed).
    :param max_body_bytes: bodies larger than this are refused with 413 before parsing (the
        handlers stream the body, so the HTTP server's ``max_body_size`` does not limit them).
    :param in_flight: counts requests being handled, for a graceful shutdown.
    :param dock_commands: a way to command docks (the MQTT transport); with it and the
        ``directory`` that places docks in workspaces, the device endpoint
        ``POST /manage/api/v1/workspaces/{ws}/devices/{sn}/jobs/{flight_id}/media-priority``
        is mounted too.
    :param device_admin: a directory that can bind docks (``DatabaseDeviceDirectory``); with it
        ``GET /manage/api/v1/workspaces/{ws}/devices`` and ``PUT``/``DELETE .../devices/{sn}``
        are mounted (the ``devices`` scope). Give the same object as ``directory`` and the MQTT
        transport, so that a change through HTTP reaches the docks' lookups at once.
    :param catalogue: the media library's use cases (``dji_media.catalogue.Catalogue``); with it
        the library's routes are mounted (doc/library.md): ``.../workspaces/{ws}/library/...``
        and DJI's web front-end's ``/media/api/v1/files/{ws}/...``.
    :param cors_origins: the origins a browser may call the library from (none: CORS off).
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    kwargs = {"service": service, "max_body_bytes": max_body_bytes, "in_flight": in_flight}
    media = f"{base}/media/api/v1/workspaces/{_WS}"
    devices = []
    if dock_commands is not None:
        if directory is None:
            raise ValueError("dock_commands needs the directory that places docks in workspaces")
        devices = get_device_handlers(service, DockPriority(directory, dock_commands), prefix=prefix,
                                      in_flight=in_flight)
    if device_admin is not None:
        devices += get_device_admin_handlers(service, device_admin, prefix=prefix, in_flight=in_flight)
    if catalogue is not None:
        devices += get_library_handlers(service, catalogue, prefix=prefix, cors_origins=cors_origins,
                                        in_flight=in_flight)
    return devices + [
        (f"{media}/fast-upload", FastUploadHandler, kwargs),
        (f"{media}/files/tiny-fingerprints", TinyFingerprintsHandler, kwargs),
        (f"{media}/upload-callback", UploadCallbackHandler, kwargs),
        (f"{media}/group-upload-callback", GroupUploadCallbackHandler, kwargs),
        (f"{base}/storage/api/v1/workspaces/{_WS}/sts", StsHandler, kwargs),
    ]


__all__ = ["get_handlers", "get_health_handlers", "NotFoundHandler", "InFlight", "DEFAULT_MAX_BODY_BYTES"]
