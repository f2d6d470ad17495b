"""The dji-media command and the example server, run as real processes."""
from __future__ import annotations

import datetime
import signal
import sys
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from dji_media import PeeweeMediaStore
from dji_media.backends.peewee_schema import table_names
from support import ADMIN_SECRET, TOKEN, free_port, pilot2_round, post, run_cli, start, write_config


def test_check_reports_each_part(tmp_path, s3):
    result = run_cli("check", "--config", write_config(tmp_path, s3_endpoint=s3.endpoint))
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("database: ok", "storage: ok", "credentials: ok", "configuration: ok"):
        assert line in result.stdout
    assert ADMIN_SECRET not in result.stdout + result.stderr


def test_check_fails_clearly_on_unreachable_storage(tmp_path):
    result = run_cli("check", "--config", write_config(tmp_path, s3_endpoint="http://127.0.0.1:1"))
    assert result.returncode == 1
    assert "database: ok" in result.stdout
    assert "storage: FAILED" in result.stdout and "credentials: FAILED" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert ADMIN_SECRET not in result.stdout + result.stderr


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("server: {port: 80, colour: blue}\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dji-media: configuration error: server.colour: unknown key "
        "(known: cors_origins, demo_banner, host, max_body_bytes, port, prefix, shutdown_grace_seconds, "
        "tls_cert_file, tls_key_file, trust_forwarded_headers, workers)"]


def test_serve_answers_and_stops_on_sigterm(tmp_path, s3):
    config = write_config(tmp_path, s3_endpoint=s3.endpoint, server_extra={"prefix": "/dji"})
    proc, base = start([sys.executable, "-m", "dji_media.cli", "serve", "--config", config], tmp_path)
    try:
        assert base.endswith("/dji")
        pilot2_round(base, "ws-cli")
        status, env = post(base.rsplit("/dji", 1)[0], "/nowhere", {})
        assert (status, env["code"]) == (404, 404)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_example_server_with_embedded_storage(tmp_path):
    """What README's first command runs: the example server starting its own SeaweedFS."""
    s3_port, http_port = free_port(pair=True), free_port()
    config = write_config(tmp_path, s3_endpoint=f"http://127.0.0.1:{s3_port}", port=http_port,
                          embedded_port=s3_port)
    proc, base = start([sys.executable, "examples/server.py", "--config", config], tmp_path)
    try:
        pilot2_round(base, "ws-cli")
        out = (tmp_path / "server.out").read_text()
        assert TOKEN in out  # the demo banner shows a token, and a request to try with it
        assert f"try: curl -s -X POST -H 'X-Auth-Token: {TOKEN}' {base}/storage/api/v1/workspaces/ws-cli/sts" in out
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    with pytest.raises(OSError):  # the embedded storage was stopped with the server
        urllib.request.urlopen(f"http://127.0.0.1:{s3_port}/", timeout=2)


# ------------------------------------------------------------------------------ dji-media sweep

def sweep_config(tmp_path, s3, **sweep):
    path = write_config(tmp_path, s3_endpoint=s3.endpoint)
    with open(path) as fh:
        config = yaml.safe_load(fh)
    config["logging"]["level"] = "warning"
    config["sweep"] = dict({"enabled": False, "lease_seconds": 3}, **sweep)  # off in servers; by hand only
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh)
    return path


def seed(io_loop, tmp_path, put_object, workspace, kept, gone):
    """Records in the config's SQLite file, for objects that exist (kept) or not (gone); written
    an hour ago, old enough for the sweep to judge."""
    from dji_media.testing.contracts import sample_file

    async def write():
        store = PeeweeMediaStore(url=f"sqlite:///{tmp_path}/media.sqlite3")
        try:
            await store.ping()
            for i, name in enumerate(kept + gone):
                key = f"media/{workspace}/{name}"
                if name in kept:
                    put_object(key)
                await store.upsert(workspace, sample_file(f"F{i}", object_key=key))
            await store.run_unit(lambda: store.db.execute_sql(
                f"UPDATE {table_names('dji_')['media_file']} SET updated_at = ?",
                (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=1),)))
        finally:
            await store.close()

    io_loop.run_sync(write)


def test_sweep_by_hand_prints_its_summary(tmp_path, s3, put_object, io_loop):
    workspace = f"cli-{uuid.uuid4().hex[:8]}"
    seed(io_loop, tmp_path, put_object, workspace, kept=["a.jpg", "b.jpg"], gone=["c.jpg"])
    put_object(f"media/{workspace}/nobody-called-back.jpg")
    result = run_cli("sweep", "--config", sweep_config(tmp_path, s3))
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("pass finished", "workspaces: 1", "objects listed: 3", "records present: 2",
                 "records changed (removed): 0", "records gone (removed): 1", "objects left (unrecorded): 1",
                 "storage requests: 1", "duration: "):
        assert line in result.stdout, result.stdout
    assert ADMIN_SECRET not in result.stdout + result.stderr


def test_sweep_by_hand_while_another_process_sweeps(tmp_path, s3, put_object, io_loop):
    from dji_media.sweep import SWEEP_TASK

    workspace = f"cli-{uuid.uuid4().hex[:8]}"
    seed(io_loop, tmp_path, put_object, workspace, kept=["a.jpg"], gone=[])
    config = sweep_config(tmp_path, s3)

    async def hold(seconds):
        store = PeeweeMediaStore(url=f"sqlite:///{tmp_path}/media.sqlite3")
        try:
            assert await store.acquire_lease(SWEEP_TASK, "a-server-somewhere", seconds)
        finally:
            await store.close()

    io_loop.run_sync(lambda: hold(600))
    result = run_cli("sweep", "--config", config)
    assert result.returncode == 1
    assert "another process holds the sweep's lease" in result.stderr and "--wait" in result.stderr
    assert "pass finished" not in result.stdout

    io_loop.run_sync(lambda: hold(0.5))  # the other process stops renewing: --wait takes the lease once it lapses
    result = run_cli("sweep", "--config", config, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass finished" in result.stdout and "records present: 1" in result.stdout


def test_sweep_by_hand_needs_backends_that_can_sweep(tmp_path, s3):
    path = sweep_config(tmp_path, s3)
    with open(path) as fh:
        config = yaml.safe_load(fh)
    config["media_store"] = {"backend": "test_config:OlderStore"}
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh)
    result = run_cli("sweep", "--config", path)
    assert result.returncode == 2
    assert "the storage sweep (sweep.enabled) needs MediaStore." in result.stderr and "OlderStore" in result.stderr


def test_simulate_pilot_is_a_command_that_needs_no_config():
    # A client of a running server: it refuses to guess a token rather than failing on a config.
    shown = run_cli("simulate-pilot", "--help")
    assert shown.returncode == 0 and "--token" in shown.stdout
    refused = run_cli("simulate-pilot", "--url", "http://127.0.0.1:1")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
