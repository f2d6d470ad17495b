"""Constants and helpers shared by the test modules (conftest.py holds the fixtures)."""
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Optional

import pytest
import yaml

from dji_media.backends.peewee_schema import table_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
TOKEN = "cli-test-token-123"
SERVE = [sys.executable, "-m", "dji_media.cli", "serve", "--config"]  # + config path
# Child processes import the same dji_media as this test run (the checkout's), and may load
# test-only backends from tests/ by "module:Class".
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")]))

ADMIN_KEY = "test-admin"
ADMIN_SECRET = "test-admin-secret"
BUCKET = "media"
OTHER_BUCKET = "other-bucket"
TOKEN_A = "token-for-workspace-a"
TOKEN_B = "token-for-workspace-b"

# The database servers the suite runs against when their URL is set (``.ci/run`` sets both);
# SQLite needs no server and always runs.
SERVER_ENGINES = {"postgresql": "DJI_MEDIA_TEST_POSTGRES_URL", "mysql": "DJI_MEDIA_TEST_MYSQL_URL"}
ENGINES = ["sqlite", *sorted(SERVER_ENGINES)]


def database_url_for(engine: str, tmp_path) -> str:
    """The URL to test ``engine`` on: a new SQLite file, or the server's URL from the environment.
    Without that variable the test skips and says which one to set."""
    if engine == "sqlite":
        return f"sqlite:///{tmp_path}/media.sqlite3"
    variable = SERVER_ENGINES[engine]
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{engine}: set {variable} to a database URL to run these tests")
    return url


def new_table_prefix(letter: str = "t") -> str:
    """Tables of the test's own on a shared server: parallel and repeated runs do not meet."""
    return f"{letter}{uuid.uuid4().hex[:8]}_"


def drop_store_tables(db, prefix: str) -> None:
    """Drop the store's tables under ``prefix`` through ``db`` (a peewee database)."""
    for name in table_names(prefix).values():
        db.execute_sql(f"DROP TABLE IF EXISTS {db.quote[0]}{name}{db.quote[-1]}")


def s3_options(s3, **changes):
    options = dict(endpoint=s3.endpoint, access_key=ADMIN_KEY, secret_key=ADMIN_SECRET, bucket=BUCKET)
    options.update(changes)
    return options


def free_port(pair: bool = False) -> int:
    """A free loopback port; with ``pair``, one whose port+10000 is free too (SeaweedFS)."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    for _ in range(500):
        port = random.randint(23000, 32000)
        if free(port) and (not pair or free(port + 10000)):
            return port
    raise RuntimeError("no free port")


def write_config(tmp_path, *, s3_endpoint, port=0, embedded_port=None, server_extra=None, media_store=None):
    storage = {"endpoint": s3_endpoint, "access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "bucket": BUCKET}
    config = {
        "server": dict({"host": "127.0.0.1", "port": port, "demo_banner": True}, **(server_extra or {})),
        "logging": {"level": "warning"},
        "media_store": media_store or {"backend": "sqlite", "options": {"url": f"sqlite:///{tmp_path}/media.sqlite3"}},
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


def post(base, path, body, token=TOKEN, context: Optional[ssl.SSLContext] = None):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"X-Auth-Token": token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start(cmd, tmp_path, env=None):
    """Start a server process; return it and the base URL it prints."""
    out = tmp_path / "server.out"
    with open(out, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, text=True, env=env or ENV)
    deadline = time.time() + 60
    while time.time() < deadline:
        found = re.search(r"(?:listening on|server on) (https?://\S+)", out.read_text())
        if found:
            return proc, found.group(1).rstrip("/")
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError("server did not start:\n" + out.read_text())


def pilot2_round(base, workspace, context=None):
    """The five endpoints answer as protocol.md says."""
    media = f"/media/api/v1/workspaces/{workspace}"

    def send(*args, **kwargs):
        return post(*args, context=context, **kwargs)

    assert send(base, f"{media}/fast-upload", {"fingerprint": "ABC"})[1]["code"] == -1
    assert send(base, f"{media}/files/tiny-fingerprints", {"tiny_fingerprints": ["a_1"]})[1]["data"] == {
        "tiny_fingerprints": []}
    status, env = send(base, f"/storage/api/v1/workspaces/{workspace}/sts", {})
    assert (status, env["code"]) == (200, 0), env
    assert env["data"]["object_key_prefix"] == f"media/{workspace}"
    status, env = send(base, f"{media}/upload-callback",
                       {"result": 0, "fingerprint": "ABC", "object_key": f"media/{workspace}/a.jpg"})
    assert (status, env["data"]) == (200, {"object_key": f"media/{workspace}/a.jpg"})
    status, env = send(base, f"{media}/group-upload-callback",
                       {"file_group_id": "g", "file_count": 1, "file_uploaded_count": 1})
    assert (status, env["code"]) == (200, 0)
    assert send(base, f"{media}/fast-upload", {"fingerprint": "ABC"}, token="wrong-token")[0] == 401


def get(base, path):
    """GET a path; (status, decoded envelope), error statuses included."""
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def stop(proc) -> int:
    """SIGTERM a server process (SIGKILL if it does not exit in 20 s); its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
