"""Health endpoints for load balancers and orchestrators: no token, no body, the envelope."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import tornado.web

from ..errors import Unavailable
from ..service import MediaService
from ..sweep import SweepReport, load_sweep_state
from . import wire
from .handlers import EnvelopeMixin

log = logging.getLogger("dji_media.web")

# The counts of the sweep's report that /readyz shows (the rest is in the log and `dji-media sweep`).
_SWEEP_COUNTS = ("workspaces", "objects_listed", "present", "changed", "gone", "unrecorded", "storage_requests")


class SweepStatus:
    """The storage sweep's last report as ``/readyz`` shows it: when the last pass finished and
    what it counted, ``"never"`` before the first, and whether a pass is under way. Read from the
    database at most once per ``ttl`` seconds: every process answers its load balancer's probes
    every few seconds, and the report changes once a period."""

    def __init__(self, service: MediaService, *, ttl: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.ttl = ttl
        self.monotonic = monotonic
        self._shown: Any = None
        self._read_at = -math.inf

    async def shown(self) -> Any:
        """What ``/readyz`` shows under ``sweep``. Never raises: the sweep's report does not
        decide readiness (the database's own probe does)."""
        if self.monotonic() - self._read_at < self.ttl:
            return self._shown
        try:
            state = await load_sweep_state(self.service.media_store)
        except Unavailable as exc:
            log.warning("cannot read the storage sweep's report: %s", exc.message)
            shown: Any = "unavailable"
        except NotImplementedError:
            shown = "unsupported"  # a media store without task state cannot sweep
        else:
            shown = self.render(state.last, in_progress=state.progress is not None)
        self._shown, self._read_at = shown, self.monotonic()
        return shown

    @staticmethod
    def render(report: Optional[SweepReport], *, in_progress: bool) -> Dict[str, Any]:
        if report is None or report.finished_at is None:
            return {"last_pass": "never", "in_progress": in_progress}
        shown: Dict[str, Any] = {"last_pass": report.finished_at.isoformat(),
                                 "duration_seconds": report.duration_seconds, "in_progress": in_progress}
        shown.update((name, getattr(report, name)) for name in _SWEEP_COUNTS)
        return shown


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
    (which may name the bucket) goes to the log only. With a ``SweepStatus``, ``data.sweep``
    also shows the storage sweep's last report; it never makes the answer 503."""

    SUPPORTED_METHODS = ("GET",)

    def initialize(self, service: MediaService, sweep: Optional[SweepStatus] = None) -> None:
        self.service = service
        self.sweep = sweep

    async def get(self) -> None:
        report = await self.service.readiness()
        for name, problem in report.items():
            if problem:
                log.warning("not ready: %s: %s", name, problem)
        data: Dict[str, Any] = {name: "unavailable" if problem else "ok" for name, problem in report.items()}
        failing = sorted(name for name, problem in report.items() if problem)
        if self.sweep is not None:
            data["sweep"] = await self.sweep.shown()
        if failing:
            self.reply(503, wire.envelope(503, "not ready: " + ", ".join(failing), data))
        else:
            self.reply(200, wire.envelope(0, "ready", data))


def get_health_handlers(service: MediaService, *, prefix: str = "", sweep: bool = False,
                        sweep_cache_seconds: float = 5.0) -> List[Tuple[str, type, Dict[str, Any]]]:
    """``/healthz`` and ``/readyz`` under ``prefix``, for ``tornado.web.Application``. With
    ``sweep`` (where the storage sweep runs), ``/readyz`` shows its last report, read at most
    once per ``sweep_cache_seconds``."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    status = SweepStatus(service, ttl=sweep_cache_seconds) if sweep else None
    return [
        (f"{base}/healthz", LivenessHandler, {}),
        (f"{base}/readyz", ReadinessHandler, {"service": service, "sweep": status}),
    ]
