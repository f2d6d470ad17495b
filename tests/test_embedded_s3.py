"""The embedded SeaweedFS S3 server: start, serve, stop, restart on the same port and data; the
pid file and lock that let a later start recognise a server left behind; dying with its host."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from minio import Minio
from minio.error import S3Error

from dji_media import embedded_s3
from dji_media.embedded_s3 import EmbeddedS3, EmbeddedS3Error
from dji_media.errors import StartupError
from support import ENV, ROOT

ACCESS_KEY = "embedded-test-admin"
SECRET_KEY = "embedded-test-secret-0123456789"
BUCKET = "media"


def _client(s3: EmbeddedS3, secret_key: str = SECRET_KEY) -> Minio:
    return Minio(f"{s3.host}:{s3.port}", access_key=s3.access_key, secret_key=secret_key,
                 secure=False, region=s3.region)


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_start_stop_restart_keeps_port_and_data(tmp_path):
    s3 = EmbeddedS3(data_dir=tmp_path / "s3", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                    buckets=[BUCKET])
    try:
        s3.start()
        assert s3.running and s3.pid
        port = s3.port
        assert 0 < port < 55535
        assert s3.endpoint == f"http://127.0.0.1:{port}"
        assert (tmp_path / "s3" / "weed.log").is_file()
        record = json.loads((tmp_path / "s3" / "weed.pid").read_text())
        assert (record["pid"], record["owner_pid"]) == (s3.pid, os.getpid())
        assert record["data_dir"] == str(tmp_path / "s3")

        client = _client(s3)
        assert client.bucket_exists(BUCKET)  # created by start()
        client.put_object(BUCKET, "dir/photo.jpg", io.BytesIO(b"jpeg bytes"), 10,
                          content_type="image/jpeg")
        assert client.stat_object(BUCKET, "dir/photo.jpg").size == 10

        # The identity file is enforced: a wrong secret is refused.
        with pytest.raises(S3Error) as refused:
            _client(s3, secret_key="wrong-secret").stat_object(BUCKET, "dir/photo.jpg")
        assert refused.value.response.status == 403

        s3.stop()
        assert not s3.running and s3.pid is None
        assert not _port_answers(port)
        assert not (tmp_path / "s3" / "weed.pid").exists()
        s3.stop()  # idempotent

        s3.start()  # same instance: same ports, same data directory
        assert s3.port == port
        assert s3.endpoint == f"http://127.0.0.1:{port}"
        stat = _client(s3).stat_object(BUCKET, "dir/photo.jpg")
        assert stat.size == 10
        assert stat.content_type == "image/jpeg"
    finally:
        s3.stop()
    assert not s3.running


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddedS3Error, match="dji-media\\[embedded\\]"):
        EmbeddedS3(data_dir=tmp_path, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                   buckets=[], weed_binary=tmp_path / "no-such-weed")


def test_error_class_lives_in_errors():
    assert EmbeddedS3Error is embedded_s3.EmbeddedS3Error
    assert issubclass(EmbeddedS3Error, StartupError)
    assert set(embedded_s3.__all__) == {"EmbeddedS3", "EmbeddedS3Error"}


def test_second_instance_on_a_data_dir_in_use_is_refused(tmp_path):
    first = EmbeddedS3(data_dir=tmp_path / "s3", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    second = EmbeddedS3(data_dir=tmp_path / "s3", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    try:
        first.start()
        pid = first.pid
        with pytest.raises(EmbeddedS3Error, match="is in use by another EmbeddedS3 of this process"):
            second.start()
        assert first.running and first.pid == pid  # not taken for a server left behind
        assert _port_answers(first.port)
        first.stop()
        second.start()  # the directory is free again
        assert second.running
    finally:
        first.stop()
        second.stop()


# Starts the server from a thread that ends at once, waits until the kernel has seen that thread
# exit, reports the pid, then waits to be killed.
THREAD_SCRIPT = r"""
import os, sys, threading, time
from dji_media.embedded_s3 import EmbeddedS3
s3 = EmbeddedS3(data_dir=sys.argv[1], access_key="k-thread", secret_key="s-thread-secret")
ids = []
thread = threading.Thread(target=lambda: (ids.append(threading.get_native_id()), s3.start()))
thread.start()
thread.join()
deadline = time.monotonic() + 10
while os.path.exists(f"/proc/self/task/{ids[0]}") and time.monotonic() < deadline:
    time.sleep(0.01)
assert not os.path.exists(f"/proc/self/task/{ids[0]}")
print(s3.pid, s3.port, flush=True)
sys.stdin.read()
"""


def _running(pid: int) -> bool:
    """True while any thread of ``pid`` runs. Not its cmdline: a dying process loses that
    before it closes its sockets, and a zombie main thread may still have live threads."""
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


def _gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until ``pid`` no longer runs."""
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_server_outlives_the_starting_thread_and_dies_with_the_process(tmp_path):
    weed = None
    with subprocess.Popen([sys.executable, "-c", THREAD_SCRIPT, str(tmp_path / "s3")], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV) as host:
        try:
            line = host.stdout.readline()
            assert line, host.stderr.read() if host.poll() is not None else "no pid"
            weed, port = map(int, line.split())
            # The thread that called start() is gone; the server is not (it was forked elsewhere).
            assert _port_answers(port)
            assert not _gone(weed, 0.5)

            host.send_signal(signal.SIGKILL)  # no stop(), no atexit
            host.wait(timeout=20)
            assert _gone(weed, 20)  # only the parent-death signal can have stopped it
            assert not _port_answers(port)
        finally:
            if host.poll() is None:
                host.kill()
            if weed is not None and not _gone(weed, 0):
                os.kill(weed, signal.SIGKILL)


def test_port_held_by_another_process_is_named(tmp_path):
    with socket.socket() as listener:
        for port in random.sample(range(10000, 22768), 200):  # room for the gRPC twin (+10000)
            try:
                listener.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        listener.listen()
        port = listener.getsockname()[1]
        s3 = EmbeddedS3(data_dir=tmp_path / "s3", port=port, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        with pytest.raises(EmbeddedS3Error) as refused:
            s3.start()
    message = str(refused.value)
    assert message.startswith(f"S3 port {port} or its gRPC port {port + 10000} is in use: ")
    if sys.platform.startswith("linux"):
        assert f"port {port} is held by pid {os.getpid()} (" in message and "not a SeaweedFS" in message
    assert message.endswith("stop it, or give the embedded S3 server another port (embedded_s3.port)")
    assert not s3.running
    assert not (tmp_path / "s3" / "weed.pid").exists()


@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/weed", "mini", "-dir=/srv/var/seaweedfs/data", "-s3.port=8333"], "/srv/var/seaweedfs"),
    (["weed", "mini", "-s3.port=8333"], ""),  # weed mini, but not one of ours
    (["/venv/bin/weed", "server", "-dir=/srv/data"], None),
    (["python", "mini", "-dir=/srv/data"], None),
    # what `ps` prints on systems without /proc: arguments joined by spaces
    (embedded_s3._split_ps_command("/Apps/my tools/weed mini -dir=/Users/a b/var/data -ip=127.0.0.1"),
     "/Users/a b/var"),
])
def test_weed_command_lines_are_recognised(argv, expected):
    assert embedded_s3._weed_mini_data_dir(argv) == expected
