"""`dji-media serve` with the embedded SeaweedFS: `weed` dies with the server however the server
dies (SIGKILL, SIGHUP), and a `weed` left behind on the data directory (by a machine without the
parent-death signal, or by an older release) is stopped at the next start instead of failing it
with "port in use"."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import List, Sequence

import pytest

from support import ADMIN_KEY, ADMIN_SECRET, BUCKET, ENV, ROOT, SERVE, get, run_cli, start, stop, write_config

# /proc is how these tests see processes, and the parent-death signal is Linux's.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

WAIT = 30.0  # seconds: every wait is bounded, and generous for a loaded two-core machine

# Starts an EmbeddedS3 the way a server without the parent-death signal did (another system, or
# a weed that ignored it), then dies without stop() or atexit, as a SIGKILL'd server does.
ORPHAN_SCRIPT = r"""
import os, signal, sys
import dji_media.embedded_s3 as embedded
embedded._PARENT_DEATH_SIGNAL = None
s3 = embedded.EmbeddedS3(data_dir=sys.argv[1], port=int(sys.argv[2]), access_key=sys.argv[3],
                         secret_key=sys.argv[4], buckets=[sys.argv[5]])
s3.start()
print(s3.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def s3_port() -> int:
    """A free S3 port whose gRPC twin (+10000) is free too and below the Linux ephemeral range
    (32768-60999): there, weed's own outgoing connections could take it while it starts."""
    def free(port: int) -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    for _ in range(500):
        port = random.randint(10000, 22767)
        if free(port) and free(port + 10000):
            return port
    raise RuntimeError("no free port pair")


def weeds_of(data_dir: Path) -> List[int]:
    """Pids of the live `weed mini` processes serving ``data_dir``, read from /proc here rather
    than with the code under test. A zombie has an empty cmdline, so it does not count."""
    wanted = f"-dir={data_dir / 'data'}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and os.path.basename(argv[0]) == b"weed" and argv[1] == b"mini" and wanted in argv:
            pids.append(int(name))
    return pids


def running(pid: int) -> bool:
    """True while any thread of ``pid`` runs. A dying process loses its cmdline before it closes
    its sockets (and a zombie main thread may still have live threads), so /proc/<pid>/task."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X"):
                    return True
        except (OSError, IndexError):
            continue
    return False


def wait_for_no_weed(data_dir: Path, pids: Sequence[int] = (), timeout: float = WAIT) -> List[int]:
    """Wait until no weed serves ``data_dir`` and none of ``pids`` runs any more; the pids still
    there when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(set(weeds_of(data_dir)) | {pid for pid in pids if running(pid)})
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


@pytest.fixture
def setup(tmp_path):
    """A config with an `embedded_s3` section on free ports and a fresh data directory; whatever
    the test leaves running (servers, weeds of that directory only) is killed afterwards."""
    port = s3_port()
    config = write_config(tmp_path, s3_endpoint=f"http://127.0.0.1:{port}", embedded_port=port)
    env = SimpleNamespace(config=config, data_dir=tmp_path / "seaweedfs", s3_port=port, procs=[])
    yield env
    for proc in env.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
    for pid in weeds_of(env.data_dir):
        os.kill(pid, signal.SIGKILL)


def serve(setup, tmp_path, *extra):
    proc, base = start(SERVE + [setup.config, *extra], tmp_path)
    setup.procs.append(proc)
    return proc, base


def assert_ready(base):
    status, envelope = get(base, "/readyz")
    # The sweep's last pass is reported beside them (the shipped defaults turn the sweep on).
    assert (status, envelope["code"], envelope["data"]["database"], envelope["data"]["storage"]) == \
        (200, 0, "ok", "ok"), envelope


def orphan_weed(setup) -> int:
    """A weed on the data directory whose starter died without stopping it; its pid."""
    result = subprocess.run(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(setup.data_dir), str(setup.s3_port), ADMIN_KEY, ADMIN_SECRET,
         BUCKET], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    pid = int(result.stdout.strip())
    assert weeds_of(setup.data_dir) == [pid] and running(pid)  # it outlived its parent: the case to handle
    return pid


@pytest.mark.parametrize("sig, workers", [
    (signal.SIGKILL, 1),
    (signal.SIGHUP, 1),  # a closed terminal
    (signal.SIGKILL, 2),  # the supervisor of --workers started the weed
], ids=["sigkill", "sighup", "sigkill-supervisor"])
def test_weed_dies_with_the_server_and_the_next_start_works(setup, tmp_path, sig, workers):
    extra = ["--workers", str(workers)] if workers > 1 else []
    proc, base = serve(setup, tmp_path, *extra)
    assert_ready(base)
    weeds = weeds_of(setup.data_dir)
    assert len(weeds) == 1
    record = json.loads((setup.data_dir / "weed.pid").read_text())
    assert (record["pid"], record["owner_pid"]) == (weeds[0], proc.pid)

    proc.send_signal(sig)
    proc.wait(timeout=WAIT)  # SIGHUP: handled or fatal, the server must end either way
    # Nobody ran stop() after SIGKILL: only the kernel's parent-death signal stops this weed.
    assert wait_for_no_weed(setup.data_dir, weeds) == []

    proc, base = serve(setup, tmp_path, *extra)  # the same data directory and S3 port
    assert_ready(base)
    assert "stopping SeaweedFS" not in (tmp_path / "server.out").read_text()  # nothing was left behind
    assert stop(proc) == 0
    assert wait_for_no_weed(setup.data_dir) == []
    assert not (setup.data_dir / "weed.pid").exists()


@pytest.mark.parametrize("older_release", [False, True], ids=["pid-file", "older-release-no-pid-file"])
def test_a_weed_left_behind_is_stopped_and_the_server_starts(setup, tmp_path, older_release):
    stale = orphan_weed(setup)
    if older_release:  # it wrote neither file: the weed is known by its command line only
        (setup.data_dir / "weed.pid").unlink()
        (setup.data_dir / "weed.lock").unlink()
    proc, base = serve(setup, tmp_path)
    assert_ready(base)
    out = (tmp_path / "server.out").read_text()
    reclaimed = [line for line in out.splitlines() if "stopping SeaweedFS" in line]
    assert len(reclaimed) == 1, out
    assert f"pid {stale}," in reclaimed[0] and str(setup.data_dir) in reclaimed[0]
    assert ("older release" in reclaimed[0]) == older_release
    assert not running(stale)
    new = weeds_of(setup.data_dir)
    assert len(new) == 1 and new[0] != stale
    assert json.loads((setup.data_dir / "weed.pid").read_text())["pid"] == new[0]
    assert stop(proc) == 0
    assert wait_for_no_weed(setup.data_dir) == []


def test_a_second_server_on_the_same_data_dir_is_refused_and_the_first_keeps_its_weed(setup, tmp_path):
    proc, base = serve(setup, tmp_path)
    weeds = weeds_of(setup.data_dir)
    result = run_cli("serve", "--config", setup.config)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"dji-media: the embedded S3 data directory {setup.data_dir} is in use by "
                                     f"another running server (pid {proc.pid}): stop that one first, or give "
                                     f"this one its own data_dir")
    assert weeds_of(setup.data_dir) == weeds
    assert_ready(base)
    assert stop(proc) == 0
    assert wait_for_no_weed(setup.data_dir) == []


def test_port_held_by_a_weed_of_another_data_dir_is_named_and_left_alone(setup, tmp_path):
    from dji_media.embedded_s3 import EmbeddedS3

    other = EmbeddedS3(data_dir=tmp_path / "other-seaweedfs", port=setup.s3_port, access_key=ADMIN_KEY,
                       secret_key=ADMIN_SECRET, buckets=[BUCKET])
    other.start()
    try:
        result = run_cli("serve", "--config", setup.config)
        assert result.returncode == 2
        line = result.stderr.strip()
        assert line.startswith(f"dji-media: S3 port {setup.s3_port} or its gRPC port {setup.s3_port + 10000} "
                               f"is in use: port {setup.s3_port} is held by pid {other.pid} ("), line
        assert f"a SeaweedFS serving another data directory ({other.data_dir})" in line
        assert line.endswith("stop it, or give the embedded S3 server another port (embedded_s3.port)")
        assert other.running  # not ours to stop
        assert weeds_of(setup.data_dir) == []
    finally:
        other.stop()


def test_port_held_by_another_program_is_named(setup):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", setup.s3_port))
        listener.listen()
        result = run_cli("serve", "--config", setup.config)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert f"is in use: port {setup.s3_port} is held by pid {os.getpid()} (" in line, line
    assert "), not a SeaweedFS; stop it, or give the embedded S3 server another port" in line
