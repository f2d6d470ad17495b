"""The embedded SeaweedFS S3 server: start, serve, stop, restart on the same port and data."""
from __future__ import annotations

import io
import socket

import pytest
from minio import Minio
from minio.error import S3Error

from dji_media.embedded_s3 import EmbeddedS3, EmbeddedS3Error

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
