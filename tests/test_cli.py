"""The dji-media command and the example server, run as real processes."""
from __future__ import annotations

import signal
import sys
import urllib.error
import urllib.request

import pytest

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
        "(known: demo_banner, host, max_body_bytes, port, prefix, shutdown_grace_seconds, "
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
