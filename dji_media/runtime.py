"""Starting and stopping a dji_media server as one unit: its transports, its background tasks,
the service they share and the embedded S3 server it may use.

``dji-media serve`` (one process, and each worker process of ``--workers N``), the example
server and host applications all run through a ``Runtime``::

    runtime = Runtime(service, grace=10.0)
    runtime.add_transport(HttpTransport(app, host="0.0.0.0", port=8080, in_flight=in_flight))
    runtime.add_task("report", report)   # async def report(stop: asyncio.Event) -> None
    status = await runtime.serve()       # until SIGTERM, SIGINT or SIGHUP; 0 when all went well

The order is fixed. Start: the embedded S3 server (if any), the start-up checks (database,
storage, credentials; a failure raises ``StartupError`` naming the part), the transports in the
order they were added, the background tasks, then the ``on_ready`` callbacks. Stop: the
transports and the tasks together, each within ``grace`` seconds, then ``service.close()``, then
the embedded S3 server. A start that fails stops what it had started before raising.

**Transports** take work from outside (HTTP now, MQTT for docks later): a ``Transport`` has
``async start()`` (listen; raise ``StartupError`` when it cannot) and ``async stop(grace)``
(take nothing new, let the work in hand finish for at most ``grace`` seconds, drop the rest).

**Background tasks** are ``async def task(stop: asyncio.Event) -> None`` functions, called
once per (re)start: a periodic task loops until ``stop`` is set and then returns promptly.
Returning means "finished" (it is not started again). Raising is a failure: it is logged with
its traceback and the task is started again after a delay from its ``RestartPolicy`` (doubling
while it keeps failing soon after starting). By default a task is retried for ever; with
``RestartPolicy(max_quick_failures=n)`` the n-th quick failure in a row gives it up, logged as an
error, and stops the whole runtime with status 1 so that the service manager notices (as the
worker supervisor does for a crash loop). On stop each task's ``stop`` event is set; a task
still running after ``grace`` seconds is cancelled.

Build a ``Runtime`` (and its transports) inside the running event loop: on Python 3.9 asyncio
objects bind to the loop that exists when they are made.
"""
from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Hashable, List, Optional, Sequence, Tuple, TypeVar

import tornado.httpserver
import tornado.web

from .dock_priority import DockPriority
from .server import bind, listening_line, make_application, server_options, startup_checks
from .service import MediaService
from .sweep import SWEEP_TASK
from .web import DEFAULT_MAX_BODY_BYTES, InFlight
from .web.devices import get_device_admin_handlers, get_device_handlers
from .wiring import build_device_directory, build_mqtt, build_service, build_sweep
from .wiring import embedded_s3 as configured_embedded_s3

if TYPE_CHECKING:
    from .config import Config
    from .embedded_s3 import EmbeddedS3

__all__ = ["Runtime", "Transport", "HttpTransport", "TaskFactory", "RestartPolicy", "Restart", "stop_signals"]

log = logging.getLogger("dji_media.runtime")
http_log = logging.getLogger("dji_media.server")  # the name operators already filter on

TaskFactory = Callable[[asyncio.Event], Awaitable[None]]
"""A background task: called with an event that is set when the runtime stops."""


def stop_signals() -> Tuple[int, ...]:
    """The signals that stop a server: SIGTERM (service managers), SIGINT (Ctrl-C) and SIGHUP
    (the terminal was closed), except SIGHUP when it is ignored, as ``nohup`` leaves it: the
    user asked for the server to outlive the terminal."""
    signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    return tuple(signals)


# ------------------------------------------------------------------------------ restarts

@dataclasses.dataclass(frozen=True)
class Restart:
    """What ``RestartPolicy.failed`` decided about something that died."""

    delay: Optional[float]  # seconds to wait before starting it again; None: give up
    failures: int  # quick failures in a row, this one included
    ran: float  # seconds it had run


class RestartPolicy:
    """When to start again something that died (a worker process, a background task).

    The delay starts at ``first_delay`` and doubles with every failure that comes within
    ``stable_seconds`` of the start, up to ``max_delay``; one that ran longer than that counts
    as the first again. With ``max_quick_failures``, that many quick failures in a row give up.
    Each thing is known by a key (a worker's slot, a task's name). ``clock`` is injectable
    (seconds, monotonic), so the arithmetic is testable without waiting.
    """

    def __init__(self, *, first_delay: float = 0.5, max_delay: float = 30.0, stable_seconds: float = 60.0,
                 max_quick_failures: Optional[int] = None, clock: Callable[[], float] = time.monotonic) -> None:
        if first_delay < 0 or max_delay < first_delay:
            raise ValueError("need 0 <= first_delay <= max_delay")
        if stable_seconds <= 0:
            raise ValueError("stable_seconds must be > 0")
        if max_quick_failures is not None and max_quick_failures < 1:
            raise ValueError("max_quick_failures must be None or >= 1")
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.stable_seconds = stable_seconds
        self.max_quick_failures = max_quick_failures
        self.clock = clock
        self._started: Dict[Hashable, float] = {}
        self._failures: Dict[Hashable, int] = {}

    def started(self, key: Hashable) -> None:
        """``key`` (re)started now."""
        self._started[key] = self.clock()

    def failed(self, key: Hashable) -> Restart:
        """``key`` died now: when to start it again, or to give up."""
        now = self.clock()
        ran = now - self._started.pop(key, now)
        failures = 1 if ran >= self.stable_seconds else self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if self.max_quick_failures is not None and failures >= self.max_quick_failures:
            return Restart(None, failures, ran)
        # The exponent is capped: a task retried for ever must not overflow a float.
        return Restart(min(self.max_delay, self.first_delay * 2 ** min(failures - 1, 64)), failures, ran)


# ------------------------------------------------------------------------------ transports

class Transport(abc.ABC):
    """Something that takes work from outside and hands it to the service (HTTP, MQTT)."""

    name = "transport"

    @abc.abstractmethod
    async def start(self) -> None:
        """Start taking work (listen, subscribe). Raise ``StartupError`` when that is impossible;
        the runtime then stops the transports started before and raises it."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Take no new work, let the work in hand finish for at most ``grace`` seconds, then
        drop the rest and release everything. Called once, only after ``start`` succeeded."""


class HttpTransport(Transport):
    """A Tornado application served by an ``HTTPServer``.

    Listens on ``host:port`` (port 0 picks a free one) or on ``sockets`` already bound (as the
    worker processes do). ``in_flight`` is the counter given to ``get_handlers(...)``: the stop
    waits for the media requests it counts; without it the stop only stops accepting and closes
    the connections. ``max_body_size`` caps request bodies for every route (the media handlers
    stream theirs and answer 413 themselves). Other keyword arguments go to ``HTTPServer``
    (``ssl_options``, ``xheaders``, ...).
    """

    name = "http"

    def __init__(self, app: tornado.web.Application, *, host: str = "127.0.0.1", port: int = 8080,
                 sockets: Optional[Sequence[socket.socket]] = None, in_flight: Optional[InFlight] = None,
                 max_body_size: int = DEFAULT_MAX_BODY_BYTES, **server_options: Any) -> None:
        self.app = app
        self.host = host
        self._port = port
        self.in_flight = in_flight
        self.sockets: List[socket.socket] = list(sockets or [])
        # Slow or idle clients must not hold connections for Tornado's default hour.
        self.server_options = dict(dict(idle_connection_timeout=60, body_timeout=60),
                                   max_body_size=max_body_size, **server_options)
        self.server: Optional[tornado.httpserver.HTTPServer] = None

    @property
    def port(self) -> int:
        """The port it listens on (the chosen one once started, when it was 0)."""
        return self.sockets[0].getsockname()[1] if self.sockets else self._port

    @property
    def scheme(self) -> str:
        return "https" if self.server_options.get("ssl_options") else "http"

    async def start(self) -> None:
        bound = not self.sockets
        if bound:
            self.sockets = bind(self.host, self._port)
        try:
            self.server = tornado.httpserver.HTTPServer(self.app, **self.server_options)
            self.server.add_sockets(self.sockets)
        except BaseException:
            if bound:  # ours to close: stop() is not called after a failed start
                for sock in self.sockets:
                    sock.close()
                self.sockets = []
            raise

    async def stop(self, grace: float) -> None:
        assert self.server is not None
        count = self.in_flight.count if self.in_flight is not None else 0
        http_log.info("shutting down: %d request(s) in flight", count)
        self.server.stop()  # no new connections; closes the listening sockets
        if self.in_flight is not None and not await self.in_flight.wait_idle(grace):
            http_log.warning("%d request(s) still running after %.0f s; closing them", self.in_flight.count, grace)
        await self.server.close_all_connections()


# ------------------------------------------------------------------------------ the runtime

_T = TypeVar("_T", bound=Transport)


@dataclasses.dataclass
class _Task:
    name: str
    factory: TaskFactory
    restart: RestartPolicy
    stop: Optional[asyncio.Event] = None
    runner: Optional[asyncio.Future] = None


class Runtime:
    """Starts and stops together: ``service``, its transports and background tasks, and the
    embedded S3 server it may use (see the module's docstring for the order and the rules).

    :param grace: seconds the transports and tasks get to finish their work on a stop.
    :param startup_checks: reach the database, storage and STS once before listening.
    :param embedded_s3: an ``EmbeddedS3`` (``dji_media.wiring.embedded_s3``), started first (in a
        thread: it takes a second or two) and stopped last.
    :param task_restart: makes the ``RestartPolicy`` of a task added without one (default:
        0.5 s doubling up to 60 s, never giving up).
    """

    def __init__(self, service: MediaService, *, grace: float = 10.0, startup_checks: bool = True,
                 embedded_s3: Optional[EmbeddedS3] = None,
                 task_restart: Optional[Callable[[], RestartPolicy]] = None) -> None:
        if grace < 0:
            raise ValueError("grace must be >= 0")
        self.service = service
        self.grace = grace
        self.startup_checks = startup_checks
        self.embedded_s3 = embedded_s3
        self._task_restart = task_restart or (lambda: RestartPolicy(max_delay=60.0))
        self._transports: List[Transport] = []
        self._started: List[Transport] = []
        self._tasks: Dict[str, _Task] = {}
        self._ready: List[Callable[[], None]] = []
        self._state = "new"  # new, starting, running, stopping, stopped
        self._stop_requested: Optional[asyncio.Event] = None  # made in the loop (Python 3.9)
        self._stopped: Optional[asyncio.Event] = None
        self.status = 0

    @classmethod
    def from_config(cls, config: Config, *, sockets: Optional[Sequence[socket.socket]] = None,
                    startup_checks: bool = True, embedded_s3: bool = True, banner: bool = True,
                    worker_index: Optional[int] = None) -> Runtime:
        """What ``dji-media serve`` runs: the configured service, its embedded S3 server, the
        media routes over HTTP(S) on ``server.host:server.port`` (or ``sockets``) and, when
        enabled, the storage sweep as the background task ``storage-sweep`` (in every process:
        its lease in the database makes one of them sweep), whose last report ``/readyz``
        shows. With ``banner``, prints the demo banner (or where it listens) once it is ready.
        The worker processes pass their sockets and turn the rest off: their parent did it.

        With an ``mqtt`` section, DJI Docks are served too: the MQTT transport (its client id
        ``<client_id>-<worker_index>`` in a worker, ``worker_index`` 1..N; a worker that does
        not say falls back to its pid and keeps no session, since a pid is not stable across
        restarts) and the device endpoint that commands docks through it. With ``devices:
        {backend: database}`` the binding endpoints (``GET``, ``PUT``, ``DELETE`` under
        ``/manage/api/v1/workspaces/{ws}/devices``) are mounted, MQTT or not."""
        options = server_options(config)  # a certificate that does not load fails before any build
        storage = configured_embedded_s3(config) if embedded_s3 else None
        service = build_service(config)
        sweep = build_sweep(config, service)
        in_flight = InFlight()
        app = make_application(service, config, in_flight, sweep=sweep is not None)
        mqtt = None
        # One directory for the docks' lookups and the binding endpoints: a change made through
        # HTTP then reaches the transport's cache at once.
        directory = build_device_directory(config, service) if (
            config.mqtt is not None or config.devices.backend == "database") else None
        if config.mqtt is not None:
            assert directory is not None
            settings = config.mqtt
            if worker_index is None and config.server.workers > 1:
                # A worker that does not know its slot: its pid is unique but not stable, so a
                # session kept for it would outlive it, and the broker would keep queueing that
                # session's share of the docks' messages. No session, then: the docks retry.
                worker_index = os.getpid()
                settings = dataclasses.replace(settings, session_expiry_seconds=0)
                config = dataclasses.replace(config, mqtt=settings)
            mqtt = build_mqtt(config, service, directory, worker_index=worker_index or 0)
            assert mqtt is not None
            # Before the catch-all host rule of the Application: its default handler answers the rest.
            app.add_handlers(r".*", get_device_handlers(service, DockPriority(
                directory, mqtt, timeout=settings.command_timeout_seconds), prefix=config.server.prefix,
                in_flight=in_flight))
        if config.devices.backend == "database":
            # With or without MQTT: docks can be bound before the broker is configured.
            app.add_handlers(r".*", get_device_admin_handlers(service, directory, prefix=config.server.prefix,
                                                              in_flight=in_flight))
        http = HttpTransport(app, host=config.server.host, port=config.server.port, sockets=sockets,
                             in_flight=in_flight, **options)
        runtime = cls(service, grace=config.server.shutdown_grace_seconds, startup_checks=startup_checks,
                      embedded_s3=storage)
        runtime.add_transport(http)
        if mqtt is not None:
            runtime.add_transport(mqtt)
        if sweep is not None:
            runtime.add_task(SWEEP_TASK, sweep.run_forever)
        if banner:
            runtime.on_ready(lambda: print(listening_line(config, service, http.sockets), flush=True))
        return runtime

    # -------------------------------------------------------------------- assembling

    @property
    def transports(self) -> Tuple[Transport, ...]:
        return tuple(self._transports)

    def add_transport(self, transport: _T) -> _T:
        """Start ``transport`` with the runtime (after the checks) and stop it with it."""
        self._check_new("add a transport")
        self._transports.append(transport)
        return transport

    def add_task(self, name: str, factory: TaskFactory, *, restart: Optional[RestartPolicy] = None) -> None:
        """Run ``await factory(stop)`` in the background while the runtime runs; ``name`` is
        what the log calls it. ``restart``: when to start it again after it raised."""
        self._check_new("add a task")
        if name in self._tasks:
            raise ValueError(f"a background task named {name!r} was already added")
        self._tasks[name] = _Task(name, factory, restart or self._task_restart())

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once everything has started (to print where it listens, say)."""
        self._check_new("add a ready callback")
        self._ready.append(callback)

    def _check_new(self, what: str) -> None:
        if self._state != "new":
            raise RuntimeError(f"cannot {what} once the runtime was started")

    # -------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Start everything, in order; on a failure stop what was started, then raise."""
        if self._state != "new":
            raise RuntimeError("a runtime starts once")
        self._state = "starting"
        self._events()
        try:
            if self.embedded_s3 is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.embedded_s3.start)
            if self.startup_checks:
                await startup_checks(self.service)
            for transport in self._transports:
                await transport.start()
                self._started.append(transport)
            for task in self._tasks.values():
                task.stop = asyncio.Event()
                task.runner = asyncio.ensure_future(self._run_task(task))
            self._state = "running"
            for callback in self._ready:
                callback()
        except BaseException:
            await self.stop()
            raise

    def request_stop(self, status: int = 0) -> None:
        """Ask ``serve`` to stop (from a signal handler, a transport or a task); ``status``, when
        not 0, becomes the exit status unless an earlier request set one."""
        self.status = self.status or status
        self._events()[0].set()

    async def wait(self) -> None:
        """Return once a stop was requested (``request_stop`` or a signal in ``serve``)."""
        await self._events()[0].wait()

    async def stop(self) -> None:
        """Stop everything that was started, within the grace period; close the service and
        the embedded S3 server. Safe to call again, or concurrently: later calls wait."""
        requested, stopped = self._events()
        if self._state in ("stopping", "stopped"):
            await stopped.wait()
            return
        if self._state == "running":  # after a failed start the error says it all
            log.info("shutting down")
        self._state = "stopping"
        requested.set()
        try:
            transports, self._started = self._started[::-1], []
            results = await asyncio.gather(*(self._stop_transport(t) for t in transports), self._stop_tasks(),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("error while stopping", exc_info=result)
        finally:
            try:
                await self.service.close()
            except Exception:  # noqa: BLE001 - the embedded S3 server must still be stopped
                log.exception("error while closing the service")
            if self.embedded_s3 is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.embedded_s3.stop)
            self._state = "stopped"
            stopped.set()

    async def serve(self, *, signals: Optional[Sequence[int]] = None) -> int:
        """Start, run until one of ``signals`` (default: ``stop_signals()``) or ``request_stop``,
        then stop. Returns the exit status: 0, or what ``request_stop`` was given (1 when a
        background task was given up). Start-up failures raise (``StartupError`` and friends)."""
        loop = asyncio.get_running_loop()
        installed = []
        try:
            for sig in stop_signals() if signals is None else signals:
                loop.add_signal_handler(sig, self._signalled, sig)
                installed.append(sig)
            try:
                await self.start()
                await self.wait()
            finally:
                await self.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.status

    # -------------------------------------------------------------------- internals

    def _events(self) -> Tuple[asyncio.Event, asyncio.Event]:
        if self._stop_requested is None or self._stopped is None:
            self._stop_requested, self._stopped = asyncio.Event(), asyncio.Event()
        return self._stop_requested, self._stopped

    def _signalled(self, sig: int) -> None:
        log.info("%s received: stopping", signal.Signals(sig).name)
        self.request_stop()

    async def _stop_transport(self, transport: Transport) -> None:
        # The transports enforce the grace period themselves; this covers one that hangs.
        try:
            await asyncio.wait_for(transport.stop(self.grace), self.grace + 5.0)
        except asyncio.TimeoutError:
            log.error("transport %s did not stop within %g s", transport.name, self.grace + 5.0)

    async def _stop_tasks(self) -> None:
        running = {}
        for task in self._tasks.values():
            if task.stop is not None:
                task.stop.set()
            if task.runner is not None and not task.runner.done():
                running[task.runner] = task
        if not running:
            return
        _, late = await asyncio.wait(list(running), timeout=self.grace)
        for runner in late:
            log.warning("background task %r did not stop within %g s; cancelling it", running[runner].name,
                        self.grace)
            runner.cancel()
        if late:
            _, stuck = await asyncio.wait(late, timeout=5.0)
            for runner in stuck:  # it swallowed the cancellation
                log.error("background task %r ignores cancellation; leaving it", running[runner].name)

    async def _run_task(self, task: _Task) -> None:
        assert task.stop is not None
        while not task.stop.is_set():
            task.restart.started(task.name)
            try:
                await task.factory(task.stop)
            except Exception:  # noqa: BLE001 - a task's failure is logged and handled here, never lost
                decision = task.restart.failed(task.name)
                if decision.delay is None:
                    log.exception("background task %r failed %d times in a row, each within %.0f s of "
                                  "starting; giving it up and stopping", task.name, decision.failures,
                                  task.restart.stable_seconds)
                    self.request_stop(1)
                    return
                log.exception("background task %r failed after %.1f s; starting it again in %.1f s",
                              task.name, decision.ran, decision.delay)
                try:
                    await asyncio.wait_for(task.stop.wait(), decision.delay)
                except asyncio.TimeoutError:
                    pass
            else:
                if not task.stop.is_set():
                    log.info("background task %r finished", task.name)
                return

