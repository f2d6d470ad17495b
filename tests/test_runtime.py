"""The runtime (dji_media.runtime): transports, background tasks, the service and signals started
and stopped together, in this process and as `dji-media serve` and the example server.

The processes run on in-memory backends and static tokens: nothing here needs SeaweedFS.
"""
from __future__ import annotations

import ast
import asyncio
import gc
import importlib
import logging
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import tornado.httpclient
import tornado.web
import yaml

from dji_media import NotFoundHandler, get_handlers, get_health_handlers
from dji_media.errors import StartupError
from dji_media.runtime import HttpTransport, RestartPolicy, Runtime, Transport, stop_signals
from dji_media.web import InFlight
from support import ENV, ROOT, SERVE, get, post, start, stop

EXAMPLE = [sys.executable, "examples/server.py", "--config"]  # + config path
TOKEN = "runtime-test-token"


def memory_config(tmp_path, **server):
    """A configuration that needs no database server and no storage: in-memory backends."""
    config = {
        "server": dict({"host": "127.0.0.1", "port": 0, "demo_banner": True, "shutdown_grace_seconds": 2}, **server),
        "logging": {"level": "info"},
        "media_store": {"backend": "memory"},
        "object_store": {"backend": "memory"},
        "credentials": {"backend": "static", "options": {
            "endpoint": "http://127.0.0.1:9", "access_key": "ak", "secret_key": "sk-not-a-secret",
            "bucket": "media"}},
        "authenticator": {"backend": "static", "options": {"tokens": {TOKEN: ["ws-rt"]}}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def runtime_for(service, *, grace=2.0, **options):
    """A runtime serving the media routes on a free port, as a host application builds one."""
    runtime = Runtime(service, grace=grace, **options)
    in_flight = InFlight()
    app = tornado.web.Application(get_handlers(service, in_flight=in_flight) + get_health_handlers(service),
                                  default_handler_class=NotFoundHandler)
    http = runtime.add_transport(HttpTransport(app, port=0, in_flight=in_flight))
    return runtime, http


async def healthz(http):
    response = await tornado.httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{http.port}/healthz",
                                                                raise_error=False)
    return response.code


class Recording(Transport):
    """A transport that records what the runtime does with it."""

    def __init__(self, calls, name, fail=False):
        self.calls, self.name, self.fail = calls, name, fail

    async def start(self):
        self.calls.append(("start", self.name))
        if self.fail:
            raise StartupError(f"{self.name}: cannot subscribe")

    async def stop(self, grace):
        self.calls.append(("stop", self.name, grace))


# ------------------------------------------------------------------------------ in this process

@pytest.mark.gen_test
async def test_a_background_task_starts_and_stops_with_the_server(service):
    runtime, http = runtime_for(service, grace=2.0)
    ticks, ends = [], []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        ends.append("returned")

    runtime.add_task("ticker", ticker)
    await runtime.start()
    assert await healthz(http) == 200
    await asyncio.sleep(0.3)
    assert len(ticks) >= 3
    began = time.monotonic()
    await runtime.stop()
    assert time.monotonic() - began < 1.0  # the task saw its stop event at once, well within grace
    assert ends == ["returned"]
    count = len(ticks)
    await asyncio.sleep(0.1)
    assert len(ticks) == count  # nothing runs after the stop
    with pytest.raises(OSError):  # and the port is closed
        await tornado.httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{http.port}/healthz")


@pytest.mark.gen_test
async def test_a_task_that_ignores_its_stop_event_is_cancelled_after_the_grace_period(service, caplog):
    runtime, _ = runtime_for(service, grace=0.3)
    cancelled = []

    async def stubborn(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    runtime.add_task("stubborn", stubborn)
    await runtime.start()
    began = time.monotonic()
    await runtime.stop()
    assert 0.3 <= time.monotonic() - began < 2.0
    assert cancelled == [True]
    assert "background task 'stubborn' did not stop within 0.3 s; cancelling it" in caplog.text


@pytest.mark.gen_test
async def test_a_crashing_task_is_logged_and_started_again(service, caplog):
    runtime, http = runtime_for(service)
    runs = []

    async def flaky(stop: asyncio.Event) -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        await stop.wait()

    runtime.add_task("flaky", flaky, restart=RestartPolicy(first_delay=0.1, max_delay=0.1))
    with caplog.at_level(logging.INFO, logger="dji_media.runtime"):
        await runtime.start()
        for _ in range(50):
            if len(runs) == 3:
                break
            await asyncio.sleep(0.05)
        assert len(runs) == 3
        assert runs[2] - runs[1] >= 0.1  # after the policy's delay
        assert await healthz(http) == 200  # the server is not affected
        await runtime.stop()
    failures = [r for r in caplog.records if r.name == "dji_media.runtime" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == [
        "background task 'flaky' failed after 0.0 s; starting it again in 0.1 s"] * 2
    assert [str(r.exc_info[1]) for r in failures] == ["boom 1", "boom 2"]  # with the traceback
    assert runtime.status == 0


@pytest.mark.gen_test
async def test_a_task_given_up_stops_the_runtime_with_status_1(service, caplog):
    runtime, http = runtime_for(service)
    runs = []

    async def broken(stop: asyncio.Event) -> None:
        runs.append(1)
        raise ValueError("always")

    runtime.add_task("broken", broken, restart=RestartPolicy(first_delay=0.01, max_delay=0.01, max_quick_failures=3))
    status = await asyncio.wait_for(runtime.serve(signals=()), 5)
    assert status == 1 and len(runs) == 3
    assert "background task 'broken' failed 3 times in a row, each within 60 s of starting; giving it up " \
           "and stopping" in caplog.text
    with pytest.raises(OSError):
        await tornado.httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{http.port}/healthz")


@pytest.mark.gen_test
async def test_a_task_that_returns_is_finished_not_restarted(service, caplog):
    runtime, _ = runtime_for(service)
    runs = []

    async def once(stop: asyncio.Event) -> None:
        runs.append(1)

    runtime.add_task("once", once)
    with caplog.at_level(logging.INFO, logger="dji_media.runtime"):
        await runtime.start()
        await asyncio.sleep(0.1)
        await runtime.stop()
    assert runs == [1] and "background task 'once' finished" in caplog.text


@pytest.mark.gen_test
async def test_transports_start_in_order_and_a_failed_start_stops_what_started(service):
    calls = []
    runtime = Runtime(service, grace=1.5)
    for name, fail in (("first", False), ("mqtt", True), ("never", False)):
        runtime.add_transport(Recording(calls, name, fail))
    started = []

    async def task(stop):
        started.append(1)

    runtime.add_task("task", task)
    with pytest.raises(StartupError, match="mqtt: cannot subscribe"):
        await runtime.serve(signals=())
    assert calls == [("start", "first"), ("start", "mqtt"), ("stop", "first", 1.5)]
    assert started == []  # tasks start after every transport


# tornado.netutil.bind_sockets leaves the socket that failed to bind to the garbage collector.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.gen_test
async def test_a_port_in_use_is_a_startup_error(service):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        runtime = Runtime(service)
        port = taken.getsockname()[1]
        runtime.add_transport(HttpTransport(tornado.web.Application([]), port=port))
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            await runtime.start()
    finally:
        taken.close()
        gc.collect()  # while this test's warning filter applies


@pytest.mark.gen_test
async def test_a_started_runtime_takes_no_more_parts(service):
    runtime, _ = runtime_for(service)
    await runtime.start()
    try:
        with pytest.raises(RuntimeError):
            runtime.add_task("late", lambda stop: stop.wait())
        with pytest.raises(RuntimeError):
            await runtime.start()
    finally:
        await runtime.stop()
    await runtime.stop()  # a second stop does nothing


def test_a_nohup_server_keeps_sighup_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert signal.SIGHUP not in stop_signals()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert set(stop_signals()) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


# ------------------------------------------------------------------------------ processes

def test_sighup_stops_dji_media_serve_cleanly(tmp_path):
    """Closing the terminal sends SIGHUP: the server drains and exits 0, as on SIGTERM."""
    proc, base = start(SERVE + [memory_config(tmp_path)], tmp_path)
    try:
        assert get(base, "/healthz")[0] == 200
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)
    out = (tmp_path / "server.out").read_text()
    assert "INFO dji_media.runtime: SIGHUP received: stopping" in out
    assert "INFO dji_media.server: shutting down: 0 request(s) in flight" in out
    assert "Traceback" not in out


def test_under_nohup_sighup_is_ignored(tmp_path):
    proc, base = start(["nohup"] + SERVE + [memory_config(tmp_path)], tmp_path)  # nohup execs the server
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None and get(base, "/healthz")[0] == 200
    finally:
        assert stop(proc) == 0


def test_example_server_prints_the_curl_line_that_works(tmp_path):
    proc, base = start(EXAMPLE + [memory_config(tmp_path)], tmp_path)
    try:
        out = (tmp_path / "server.out").read_text()
        found = re.search(r"^try: curl -s -X POST -H 'X-Auth-Token: (\S+)' (http://\S+)/storage/api/v1/"
                          r"workspaces/(\S+)/sts$", out, re.MULTILINE)
        assert found, out
        token, url, workspace = found.groups()
        assert (token, url, workspace) == (TOKEN, base, "ws-rt")
        status, envelope = post(url, f"/storage/api/v1/workspaces/{workspace}/sts", {}, token=token)
        assert (status, envelope["code"]) == (200, 0)
        with urllib.request.urlopen(f"{base}/hello", timeout=5) as response:  # the host's own route
            assert response.status == 200
    finally:
        assert stop(proc) == 0
    assert "INFO dji_media.runtime: SIGTERM received: stopping" in (tmp_path / "server.out").read_text()


def test_example_server_without_the_banner_says_where_it_listens(tmp_path):
    proc, base = start(EXAMPLE + [memory_config(tmp_path, demo_banner=False)], tmp_path)
    try:
        assert get(base, "/healthz")[0] == 200
        out = (tmp_path / "server.out").read_text()
        assert "dji_media example server on http://127.0.0.1:" in out and TOKEN not in out
    finally:
        assert stop(proc) == 0


def run_example(config):
    return subprocess.run(EXAMPLE + [config], capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV)


def test_example_server_reports_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: 80, colour: blue}\n")
    result = run_example(str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "examples/server.py: configuration error: server.colour: unknown key (known: cors_origins, demo_banner, host, "
        "max_body_bytes, port, prefix, shutdown_grace_seconds, tls_cert_file, tls_key_file, "
        "trust_forwarded_headers, workers)"]
    assert result.stdout == ""


def test_example_server_reports_a_start_up_failure_in_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = run_example(memory_config(tmp_path, port=port))
    finally:
        taken.close()
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"examples/server.py: server: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in result.stdout + result.stderr


def test_example_server_uses_only_public_names():
    """What a host application copies from the example must be public: every name it imports
    from dji_media is listed in its module's __all__."""
    tree = ast.parse(pathlib.Path(ROOT, "examples", "server.py").read_text())
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module and node.module.split(".")[0] == "dji_media" for alias in node.names]
    assert imported
    private = [f"{module}.{name}" for module, name in imported
               if name not in getattr(importlib.import_module(module), "__all__", ())]
    assert private == []
