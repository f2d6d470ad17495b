"""A private Mosquitto broker for the MQTT tests: its own temporary configuration, a free port on
127.0.0.1, started as a child process and stopped by its PID. The machine's own broker (port
1883) is shared with everything else on the machine and is never used or touched.

``mosquitto_binary()`` finds the binary (``/usr/sbin/mosquitto``, then ``mosquitto`` on PATH);
the tests skip, saying so, when there is none.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional

SBIN = "/usr/sbin/mosquitto"
MISSING = "mosquitto is not installed (/usr/sbin/mosquitto, or mosquitto on PATH): apt-get install mosquitto"


def mosquitto_binary() -> Optional[str]:
    if os.access(SBIN, os.X_OK):
        return SBIN
    return shutil.which("mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MosquittoBroker:
    """One broker in ``directory``. ``start()`` waits until the port accepts connections;
    ``stop()`` (SIGTERM, then SIGKILL) and ``kill()`` (SIGKILL at once, as a crash) end it;
    ``start()`` again restarts it on the same port. ``persistence``: the broker saves sessions
    and queued messages in ``directory`` (on a clean stop), as a production broker does.

    ``extra`` lines are added to the listener's configuration (TLS, for instance).
    """

    def __init__(self, directory: str, *, binary: str, port: Optional[int] = None, persistence: bool = False,
                 extra: str = "") -> None:
        self.directory = directory
        self.binary = binary
        self.port = port or free_port()
        self.persistence = persistence
        self.extra = extra
        self.process: Optional[subprocess.Popen] = None
        self.config_path = os.path.join(directory, "mosquitto.conf")
        self.log_path = os.path.join(directory, "mosquitto.log")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            # Run as whoever runs the tests: as root, mosquitto would switch to the user
            # "mosquitto", which may not exist and cannot write the temporary directory.
            f"user {_user_name()}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_dest stderr",
            self.extra,
        ]
        with open(self.config_path, "w") as out:
            out.write("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self._write_config()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", self.config_path], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent())
        # A broker of ours must not outlive the test run, however the run ends.
        atexit.register(self.kill)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with status {self.process.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s: {self.log()}")

    def stop(self) -> None:
        """A clean stop (mosquitto saves its persistence file on SIGTERM)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()[-2000:]
        except OSError:
            return ""


def _die_with_parent() -> Optional[Callable[[], None]]:
    """On Linux, the kernel sends the broker SIGTERM when the test process dies (SIGKILL
    included), so an interrupted run leaves no broker behind. Elsewhere atexit is what is left."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not between fork and exec
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:  # in the child, after fork(), before exec()
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl(): nobody will signal us
            os._exit(1)

    return preexec


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
