"""Health endpoints for load balancers and orchestrators: no token, no body, the envelope."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

import tornado.web

from ..service import MediaService
from . import wire
from .handlers import EnvelopeMixin

log = logging.getLogger("dji_media.web")


class LivenessHandler(EnvelopeMixin, tornado.web.RequestHandler):
    """``GET /healthz``: the process answers. Touches no dependency, so a database outage never
    makes an orchestrator restart healthy processes."""

    SUPPORTED_METHODS = ("GET", "HEAD")

    def get(self) -> None:
        self.reply(200, wire.envelope(0, "alive"))

    head = get


class ReadinessHandler(EnvelopeMixin, tornado.web.RequestHandler):
    """``GET /readyz``: 200 when the database is writable and the bucket reachable, else 503;
    ``data`` reports each by name, "ok" or "unavailable". It needs no token, so the reason
    (which may name the bucket) goes to the log only."""

    SUPPORTED_METHODS = ("GET",)

    def initialize(self, service: MediaService) -> None:
        self.service = service

    async def get(self) -> None:
        report = await self.service.readiness()
        for name, problem in report.items():
            if problem:
                log.warning("not ready: %s: %s", name, problem)
        data = {name: "unavailable" if problem else "ok" for name, problem in report.items()}
        failing = sorted(name for name, problem in report.items() if problem)
        if failing:
            self.reply(503, wire.envelope(503, "not ready: " + ", ".join(failing), data))
        else:
            self.reply(200, wire.envelope(0, "ready", data))


def get_health_handlers(service: MediaService, *, prefix: str = "") -> List[Tuple[str, type, Dict[str, Any]]]:
    """``/healthz`` and ``/readyz`` under ``prefix``, for ``tornado.web.Application``."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return [
        (f"{base}/healthz", LivenessHandler, {}),
        (f"{base}/readyz", ReadinessHandler, {"service": service}),
    ]
