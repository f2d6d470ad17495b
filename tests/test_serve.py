"""`dji-media serve` as a process: HTTPS, start-up checks, graceful shutdown, and logs that keep
secrets out."""
from __future__ import annotations

import datetime as _dt
import ipaddress
import pathlib
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.error

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support import ADMIN_KEY, ADMIN_SECRET, ENV, ROOT, SERVE, TOKEN, pilot2_round, post, run_cli, start, write_config


def self_signed(tmp_path):
    """A certificate for 127.0.0.1, as an operator would make for a LAN deployment."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=1))
            .not_valid_after(now + _dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_pilot2_flow(tmp_path, s3):
    cert, key = self_signed(tmp_path)
    config = write_config(tmp_path, s3_endpoint=s3.endpoint,
                          server_extra={"tls_cert_file": cert, "tls_key_file": key})
    proc, base = start(SERVE + [config], tmp_path)
    try:
        assert base.startswith("https://")
        context = ssl.create_default_context(cafile=cert)
        pilot2_round(base, "ws-cli", context=context)
        with pytest.raises(OSError):  # plain HTTP on the TLS port is not served
            post(base.replace("https://", "http://"), "/storage/api/v1/workspaces/ws-cli/sts", {})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize("case, expected", [
    ("storage", "dji-media: storage: storage is unreachable"),
    ("bucket", "dji-media: storage: bucket 'no-such-bucket' does not exist"),
    ("keys", "dji-media: storage: storage answered"),
    ("database", "dji-media: database: the media database is unavailable"),
])
def test_start_up_checks_exit_with_one_line(tmp_path, s3, case, expected):
    endpoint = "http://127.0.0.1:1" if case == "storage" else s3.endpoint
    config = write_config(tmp_path, s3_endpoint=endpoint)
    path = pathlib.Path(config)
    text = path.read_text()
    if case == "bucket":
        text = text.replace("bucket: media", "bucket: no-such-bucket")
    if case == "keys":
        text = text.replace(f"access_key: {ADMIN_KEY}", "access_key: nobody")
    if case == "database":
        text = text.replace(f"sqlite:///{tmp_path}/media.sqlite3", "sqlite:////proc/no-such-dir/media.sqlite3")
    path.write_text(text)
    result = run_cli("serve", "--config", config)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("dji-media:")]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert ADMIN_SECRET not in result.stderr + result.stdout


def test_sigterm_lets_in_flight_callback_finish(tmp_path, s3):
    db = f"sqlite:///{tmp_path}/media.sqlite3"
    config = write_config(tmp_path, s3_endpoint=s3.endpoint, media_store={
        "backend": "slow_backends:SlowMediaStore", "options": {"url": db, "delay": 1.5}})
    proc, base = start(SERVE + [config], tmp_path)
    answers = []
    body = {"result": 0, "fingerprint": "INFLIGHT", "object_key": "media/ws-cli/inflight.jpg"}
    worker = threading.Thread(target=lambda: answers.append(
        post(base, "/media/api/v1/workspaces/ws-cli/upload-callback", body)))
    worker.start()
    time.sleep(0.5)  # the callback is now waiting on its (slow) write
    proc.send_signal(signal.SIGTERM)
    worker.join(timeout=20)
    assert proc.wait(timeout=20) == 0
    assert answers == [(200, {"code": 0, "message": "success", "data": {"object_key": body["object_key"]}})]
    with pytest.raises(urllib.error.URLError):  # and it no longer accepts connections
        post(base, "/media/api/v1/workspaces/ws-cli/fast-upload", {"fingerprint": "X"})

    with sqlite3.connect(db.split(":///", 1)[1]) as conn:  # read the file directly, as an operator would
        rows = conn.execute("SELECT object_key FROM dji_media_file WHERE fingerprint = 'INFLIGHT'").fetchall()
    conn.close()
    assert rows == [(body["object_key"],)]


def test_logs_carry_no_token_or_secret(tmp_path, s3):
    config = write_config(tmp_path, s3_endpoint=s3.endpoint, server_extra={"demo_banner": False})
    path = pathlib.Path(config)
    path.write_text(path.read_text().replace("level: warning", "level: debug"))
    proc, base = start(SERVE + [config], tmp_path)
    wrong = "wrong-token-with-a-secret-value"
    try:
        pilot2_round(base, "ws-cli")
        post(base, "/media/api/v1/workspaces/ws-cli/fast-upload", {"fingerprint": "X"}, token=wrong)
        post(base, "/media/api/v1/workspaces/ws-cli/fast-upload", {"fingerprint": "X"}, token="")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    logs = (tmp_path / "server.out").read_text()
    assert "upload-callback" in logs  # debug logging was on and requests were logged
    for secret in (TOKEN, wrong, ADMIN_SECRET):
        assert secret not in logs


def test_jwt_secret_and_tokens_stay_out_of_logs_and_check_output(tmp_path, s3):
    import jwt

    secret = "jwt-secret-that-must-never-be-logged-0123456789"
    config = pathlib.Path(write_config(tmp_path, s3_endpoint=s3.endpoint))
    settings = yaml.safe_load(config.read_text())
    settings["logging"]["level"] = "debug"
    settings["authenticator"] = {"backend": "jwt", "options": {"secret": "${JWT_SECRET}", "issuer": "DJI"}}
    config.write_text(yaml.safe_dump(settings))
    env_secret = dict(ENV, JWT_SECRET=secret)
    checked = subprocess.run([sys.executable, "-m", "dji_media.cli", "check", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env=env_secret)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert secret not in checked.stdout + checked.stderr

    good = jwt.encode({"iss": "DJI", "workspace_id": "ws-cli", "username": "pilot", "exp": int(time.time()) + 600},
                      secret, algorithm="HS256")
    forged = jwt.encode({"iss": "DJI", "workspace_id": "ws-cli", "exp": int(time.time()) + 600},
                        "not-the-secret-not-the-secret-not-the-secret", algorithm="HS256")
    proc, base = start(SERVE + [str(config)], tmp_path, env=env_secret)
    try:
        assert post(base, "/storage/api/v1/workspaces/ws-cli/sts", {}, token=good)[0] == 200
        assert post(base, "/media/api/v1/workspaces/ws-cli/fast-upload", {"fingerprint": "X"}, token=forged)[0] == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    logs = (tmp_path / "server.out").read_text()
    assert "refused" in logs  # the forged token was logged, by digest
    for text in (secret, good, forged, ADMIN_SECRET):
        assert text not in logs
