"""The dji-media command and the example server, run as real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from support import ADMIN_KEY, ADMIN_SECRET, BUCKET, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "cli-test-token-123"
# Child processes import the same dji_media as this test run: the checkout's.
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def write_config(tmp_path, *, s3_endpoint, port=0, embedded_port=None, server_extra=None):
    storage = {"endpoint": s3_endpoint, "access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "bucket": BUCKET}
    config = {
        "server": dict({"host": "127.0.0.1", "port": port, "demo_banner": True}, **(server_extra or {})),
        "logging": {"level": "warning"},
        "media_store": {"backend": "sqlite", "options": {"url": f"sqlite:///{tmp_path}/media.sqlite3"}},
        "object_store": {"backend": "minio", "options": dict(storage, timeout=2.0, retries=0)},
        "credentials": {"backend": "sts", "options": dict(storage, retries=0, timeout=2.0)},
        "authenticator": {"backend": "static", "options": {"tokens": {TOKEN: ["ws-cli"]}}},
    }
    if embedded_port:
        config["embedded_s3"] = {"data_dir": str(tmp_path / "seaweedfs"), "port": embedded_port,
                                 "access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "buckets": [BUCKET]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "dji_media.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=ENV)


def post(base, path, body, token=TOKEN):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"X-Auth-Token": token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start(cmd, tmp_path):
    """Start a server process; return it and the base URL it prints."""
    out = tmp_path / "server.out"
    with open(out, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, text=True, env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline:
        for word in out.read_text().split():
            if word.startswith("http://127.0.0.1:"):
                return proc, word.rstrip("/")
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError("server did not start:\n" + out.read_text())


def pilot2_round(base, workspace):
    """The five endpoints answer as protocol.md says."""
    media = f"/media/api/v1/workspaces/{workspace}"
    assert post(base, f"{media}/fast-upload", {"fingerprint": "ABC"})[1]["code"] == -1
    assert post(base, f"{media}/files/tiny-fingerprints", {"tiny_fingerprints": ["a_1"]})[1]["data"] == {
        "tiny_fingerprints": []}
    status, env = post(base, f"/storage/api/v1/workspaces/{workspace}/sts", {})
    assert (status, env["code"]) == (200, 0), env
    assert env["data"]["object_key_prefix"] == f"media/{workspace}"
    status, env = post(base, f"{media}/upload-callback",
                       {"result": 0, "fingerprint": "ABC", "object_key": f"media/{workspace}/a.jpg"})
    assert (status, env["data"]) == (200, {"object_key": f"media/{workspace}/a.jpg"})
    status, env = post(base, f"{media}/group-upload-callback",
                       {"file_group_id": "g", "file_count": 1, "file_uploaded_count": 1})
    assert (status, env["code"]) == (200, 0)
    assert post(base, f"{media}/fast-upload", {"fingerprint": "ABC"}, token="wrong-token")[0] == 401


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
        "(known: demo_banner, host, max_body_bytes, port, prefix, shutdown_grace_seconds, "
        "tls_cert_file, tls_key_file, trust_forwarded_headers)"]


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
        assert TOKEN in (tmp_path / "server.out").read_text()  # the demo banner shows a token
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    with pytest.raises(OSError):  # the embedded storage was stopped with the server
        urllib.request.urlopen(f"http://127.0.0.1:{s3_port}/", timeout=2)
