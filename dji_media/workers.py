"""Several server processes on one port (``dji-media serve --workers N``).

The parent process starts the embedded S3 server if configured, runs the start-up checks once
(so a bad configuration fails with its one line, as with one process), binds the listening
sockets, closes everything it built and only then forks: a fork copies only the calling thread,
so a thread pool, a database connection or an event loop must never cross it. Each worker
builds its own service (its own event loop, thread pools and database pool) and accepts on the
inherited sockets and, on Linux, on a socket of its own on the same port (see ``_own_sockets``).
Each worker runs a ``dji_media.runtime.Runtime``, as a single process does.
The parent then only supervises: SIGTERM, SIGINT or SIGHUP is passed on to every worker (as
SIGTERM), each drains its requests as a single process does, and the parent exits 0 once all
have exited. A worker that dies unexpectedly is logged and replaced, after a delay from a
``RestartPolicy`` that grows while replacements keep dying; a crash loop stops everything.

Nothing the workers must agree on lives in one process's memory: records, verification times
(``verified_at``) and the schema version are in the database, objects in the bucket. What each
worker keeps for itself is a cache (STS credentials per workspace, point-read batches), which
only costs repeated work. The in-memory backends and an in-memory SQLite database would give
each worker its own data, so they are refused.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

import tornado.netutil

from .config import Config
from .errors import ConfigError, DjiMediaError
from .runtime import RestartPolicy, Runtime, stop_signals
from .server import listen, listening_line, startup_checks, tls_context
from .wiring import build_service, start_embedded_s3

__all__ = ["supervise", "check_shareable", "worker_restart_policy"]

log = logging.getLogger("dji_media.workers")

START_TIMEOUT = 60.0  # seconds a worker has to build its service and start accepting
EXIT_WORKER_START = 3  # a worker that could not start (the parent's own start failures are 2)
# Linux spreads connections over the SO_REUSEPORT sockets of a port; other systems do not
# (the BSDs give them all to the newest), so there the workers share the parent's sockets only.
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def check_shareable(config: Config) -> None:
    """Refuse backends whose data would live in each worker's memory, invisible to the others."""
    from .backends.memory import InMemoryMediaStore, InMemoryObjectStore

    for section, cls in (("media_store", InMemoryMediaStore), ("object_store", InMemoryObjectStore)):
        if issubclass(getattr(config, section).cls, cls):
            raise ConfigError("server.workers", f"{config.server.workers} workers cannot share the in-memory "
                              f"{section}: each process would keep its own; use a database and a bucket")
    url = config.media_store.options.get("url")
    if isinstance(url, str) and (":memory:" in url or "mode=memory" in url):
        raise ConfigError("server.workers", f"{config.server.workers} workers cannot share an in-memory "
                          "SQLite database; give media_store.options.url a file")


async def _prepare(config: Config) -> Tuple[List[socket.socket], str]:
    """Everything that may fail before a worker exists, once: checks, certificate, sockets."""
    service = build_service(config)
    try:
        await startup_checks(service)
        tls_context(config)  # a certificate that does not load fails here, not in every worker
        if REUSE_PORT and config.server.port:
            # SO_REUSEPORT would let this server join another one already on the port (of the
            # same user) instead of failing: bind once without it, as a single process does.
            for sock in listen(config):
                sock.close()
        sockets = listen(config, reuse_port=REUSE_PORT)
        return sockets, listening_line(config, service, sockets)
    finally:
        await service.close()  # the workers build their own: no pool or connection crosses fork()


def worker_restart_policy(clock: Callable[[], float] = time.monotonic) -> RestartPolicy:
    """The supervisor's default: a replacement after 0.5 s, doubling per quick death up to 30 s;
    a worker that ran a minute starts again from 0.5 s; the eighth death in a row, each within a
    minute of starting, is a crash loop and stops the server."""
    return RestartPolicy(first_delay=0.5, max_delay=30.0, stable_seconds=60.0, max_quick_failures=8, clock=clock)


def supervise(config: Config, *, restart: Optional[RestartPolicy] = None) -> int:
    """Run ``config.server.workers`` worker processes until SIGTERM, SIGINT or SIGHUP; the exit
    status. ``restart`` decides when a dead worker is replaced (``worker_restart_policy()``)."""
    if not hasattr(os, "fork"):
        raise ConfigError("server.workers", "several workers need fork() (Linux, macOS); use 1")
    check_shareable(config)
    embedded = start_embedded_s3(config)
    try:
        sockets, line = asyncio.run(_prepare(config))
        try:
            return _Supervisor(config, sockets, line, restart or worker_restart_policy()).run()
        finally:
            for sock in sockets:
                sock.close()
    finally:
        if embedded is not None:
            embedded.stop()


class _Worker:
    def __init__(self, slot: int, pid: int, ready_fd: int) -> None:
        self.slot = slot
        self.pid = pid
        self.ready_fd: Optional[int] = ready_fd  # closed once the worker reported ready
        self.ready = False


class _Supervisor:
    def __init__(self, config: Config, sockets: List[socket.socket], line: str, restart: RestartPolicy) -> None:
        self.config = config
        self.sockets = sockets
        self.line = line
        self.restart = restart  # keyed by slot
        self.count = config.server.workers
        self.workers: Dict[int, _Worker] = {}  # by pid
        self.restart_at: Dict[int, float] = {}  # slot -> monotonic time of its replacement
        self.stop_signals = stop_signals()  # decided once: the workers inherit an ignored SIGHUP
        # Blocked across fork(): a signal sent to a new worker before its event loop has installed
        # handlers waits instead of killing it mid-start (or running the parent's handler in it).
        self.fork_blocked: FrozenSet[int] = frozenset({*self.stop_signals, signal.SIGCHLD})
        self.stopping = False
        self.stop_started = self.stop_deadline = 0.0
        self.status = 0
        self.wake_r = self.wake_w = self.lifeline_r = self.lifeline_w = -1  # pipes of run()

    # ---------------------------------------------------------------------------- parent

    def run(self) -> int:
        # Python-level handlers only so that signals write to the wake-up pipe; the loop below
        # does the work, outside the handler.
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        # Never written: the workers hold the read end and see end-of-file when the parent is
        # gone, however it died (SIGKILL included), and stop instead of serving unsupervised.
        self.lifeline_r, self.lifeline_w = os.pipe()
        previous = {sig: signal.signal(sig, _ignore) for sig in self.fork_blocked}
        old_wakeup = signal.set_wakeup_fd(self.wake_w)
        try:
            if self._start_all():
                print(self.line, flush=True)
                print(f"dji_media: {self.count} workers (pids {' '.join(str(p) for p in sorted(self.workers))})",
                      flush=True)
            self._loop()
            return self.status
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers.values():  # only after a failure: normally none is left
                _kill(worker.pid, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
            for fd in (self.wake_r, self.wake_w, self.lifeline_r, self.lifeline_w):
                os.close(fd)

    def _start_all(self) -> bool:
        """Fork every worker and wait until each accepts. False when the start failed or was
        stopped by a signal; the workers are then being stopped (``_loop`` waits for them)."""
        for slot in range(1, self.count + 1):
            self._fork(slot)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in self.workers.values()):
            if time.monotonic() > deadline:
                return self._abort("workers did not start within %.0f s" % START_TIMEOUT)
            if self._wait(deadline - time.monotonic()):
                self._stop()
                return False
            for pid, code in self._reap():
                worker = self.workers.pop(pid)
                self._close_ready(worker)
                return self._abort(f"worker {worker.slot} (pid {pid}) {_describe(code)} before it was ready")
        return True

    def _abort(self, reason: str) -> bool:
        print(f"dji-media: {reason}; stopping", file=sys.stderr, flush=True)
        self.status = 2
        self._stop()
        return False

    def _loop(self) -> None:
        while self.workers or (not self.stopping and self.restart_at):
            timeout = None
            if self.stopping:
                timeout = self.stop_deadline - time.monotonic()
                if timeout <= 0:
                    log.error("%d worker(s) still running %.0f s after the stop; killing them",
                              len(self.workers), self.stop_deadline - self.stop_started)
                    self.status = self.status or 1
                    return  # run() kills and reaps them
            elif self.restart_at:
                timeout = max(0.0, min(self.restart_at.values()) - time.monotonic())
            if self._wait(timeout):
                self._stop()
            for pid, code in self._reap():
                self._exited(self.workers.pop(pid), code)
            now = time.monotonic()
            for slot, when in list(self.restart_at.items()):
                if not self.stopping and when <= now:
                    del self.restart_at[slot]
                    self._fork(slot)

    def _wait(self, timeout: Optional[float]) -> bool:
        """Sleep until a signal or a ready report (or the timeout); True on a stop signal."""
        fds = [self.wake_r] + [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]
        try:
            readable, _, _ = select.select(fds, [], [], None if timeout is None else max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - select retries by itself (PEP 475)
            readable = []
        stop = False
        if self.wake_r in readable:
            try:
                data = os.read(self.wake_r, 512)
            except BlockingIOError:
                data = b""
            stop = any(byte in self.stop_signals for byte in data)
        for worker in self.workers.values():
            if worker.ready_fd is not None and worker.ready_fd in readable:
                if os.read(worker.ready_fd, 1):
                    worker.ready = True
                    log.info("worker %d (pid %d) is accepting", worker.slot, worker.pid)
                self._close_ready(worker)  # an empty read: it exited; _reap reports how
        return stop

    def _reap(self) -> List[Tuple[int, int]]:
        """The workers that exited, as (pid, exit code; negative: killed by that signal).
        By pid: waitpid(-1) would also reap the embedded S3 server, which is a child too."""
        done = []
        for pid in list(self.workers):
            try:
                found, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - reaped by someone else
                done.append((pid, 0))
                continue
            if found:
                done.append((pid, os.waitstatus_to_exitcode(status)))
        return done

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_started = time.monotonic()
            # The workers enforce the grace period themselves; this covers one that hangs.
            self.stop_deadline = self.stop_started + self.config.server.shutdown_grace_seconds + 15.0
            self.restart_at.clear()
            log.info("stopping %d worker(s)", len(self.workers))
            for sock in self.sockets:  # no replacement will need them; the port closes with the workers
                sock.close()
        for worker in self.workers.values():  # again on a second signal: harmless
            _kill(worker.pid, signal.SIGTERM)

    def _exited(self, worker: _Worker, code: int) -> None:
        self._close_ready(worker)
        if self.stopping:
            if code != 0:
                log.error("worker %d (pid %d) %s while stopping", worker.slot, worker.pid, _describe(code))
                self.status = self.status or 1
            return
        decision = self.restart.failed(worker.slot)
        if decision.delay is None:
            log.error("worker %d (pid %d) %s; it died %d times in a row within %.0f s of starting, "
                      "so it is not replaced", worker.slot, worker.pid, _describe(code), decision.failures,
                      self.restart.stable_seconds)
            print(f"dji-media: worker {worker.slot} keeps dying ({_describe(code)}); stopping",
                  file=sys.stderr, flush=True)
            self.status = 1
            self._stop()
            return
        # Status 0: someone stopped this worker alone (it drained); anything else is a failure.
        log.log(logging.WARNING if code == 0 else logging.ERROR,
                "worker %d (pid %d) %s after %.1f s; starting a replacement in %.1f s",
                worker.slot, worker.pid, _describe(code), decision.ran, decision.delay)
        self.restart_at[worker.slot] = time.monotonic() + decision.delay

    def _fork(self, slot: int) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        if threading.active_count() > 1:  # would be a bug: a fork copies no other thread
            log.warning("forking with %d threads running", threading.active_count())
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.fork_blocked)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_r)
            os.close(ready_w)
            raise
        if pid == 0:  # the worker; never returns
            os.close(ready_r)
            _worker_main(self, slot, ready_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(ready_w)
        self.workers[pid] = _Worker(slot, pid, ready_r)
        self.restart.started(slot)


# ------------------------------------------------------------------------------ worker

def _worker_main(parent: _Supervisor, slot: int, ready_w: int) -> None:
    """Serve in a freshly forked worker; exits the process, never returns into the parent's code."""
    code = 0
    try:
        # The parent's plumbing is not the worker's: default signal handling (still blocked),
        # no wake-up fd, none of the parent's pipes. An ignored SIGHUP (nohup) stays ignored.
        signal.set_wakeup_fd(-1)
        for sig in parent.fork_blocked:
            signal.signal(sig, signal.SIG_DFL)
        for fd in [parent.wake_r, parent.wake_w, parent.lifeline_w] + [
                w.ready_fd for w in parent.workers.values() if w.ready_fd is not None]:
            os.close(fd)
        code = asyncio.run(_serve_worker(parent.config, parent.sockets, ready_w, parent.lifeline_r,
                                         parent.fork_blocked, slot))
    except DjiMediaError as exc:
        print(f"dji-media: worker {slot}: {exc.message}", file=sys.stderr)
        code = EXIT_WORKER_START
    except BaseException:  # noqa: BLE001 - the worker must end here, whatever happened
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            # Not sys.exit: the parent's finally blocks and atexit handlers (the embedded S3
            # server's stop among them) belong to the parent.
            os._exit(code)


def _own_sockets(config: Config, shared: List[socket.socket]) -> List[socket.socket]:
    """This worker's own listening sockets on the shared port (Linux), so the kernel spreads
    new connections over the workers.

    On a socket they all share, every idle worker wakes for a new connection and the first to
    run accepts everything that is waiting: 16 keep-alive connections opened at once mostly
    ended up in one of two workers, which then did all the work while the other idled. With
    SO_REUSEPORT the kernel hands each connection to one socket of the group by a hash of its
    addresses. The shared sockets stay in the group and are still served: they keep the port
    while a worker is replaced, and a worker that cannot bind its own still serves through them.
    """
    if not REUSE_PORT:
        return []
    port = shared[0].getsockname()[1]
    try:
        return tornado.netutil.bind_sockets(port, config.server.host, reuse_port=True)
    except OSError as exc:
        log.warning("worker cannot bind its own socket on port %d (%s); serving the shared one only",
                    port, exc.strerror)
        return []


async def _serve_worker(config: Config, sockets: List[socket.socket], ready_w: int, lifeline: int,
                        blocked: FrozenSet[int], slot: int) -> int:
    # The parent ran the checks, started the embedded S3 server and printed the banner. The slot
    # gives the worker a stable MQTT client id: a restarted worker takes its session back.
    runtime = Runtime.from_config(config, sockets=sockets + _own_sockets(config, sockets),
                                  startup_checks=False, embedded_s3=False, banner=False, worker_index=slot)
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        loop.remove_reader(lifeline)
        log.warning("the supervising process is gone; stopping")
        runtime.request_stop()  # the same drain as on a stop

    def ready() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)  # the runtime's handlers are in place
        loop.add_reader(lifeline, parent_gone)
        os.write(ready_w, b"1")
        os.close(ready_w)

    runtime.on_ready(ready)
    return await runtime.serve()


# ------------------------------------------------------------------------------ helpers

def _ignore(signum: int, frame: object) -> None:
    """The wake-up fd carries the signal to the supervisor's loop."""


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:  # already gone is fine
            raise


def _describe(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by {name}"
    return f"exited with status {code}"
