"""Pilot 2's whole flow against a real S3 server with STS (SeaweedFS), with the metadata on
SQLite, PostgreSQL and MariaDB/MySQL in turn (``real_database`` in conftest.py).

The bytes are uploaded with the temporary credentials the server hands out, exactly as a
device does, and the credentials are shown to allow nothing but uploads under the prefix.
"""
from __future__ import annotations

import io
import json
import uuid

import pytest
from minio import Minio
from minio.credentials import StaticProvider
from minio.error import S3Error

from dji_media import PeeweeMediaStore
from support import BUCKET, OTHER_BUCKET

MEDIA = "/media/api/v1/workspaces/ws-a"
STS = "/storage/api/v1/workspaces/ws-a/sts"


# pytest-tornado asks for `app` (so `service`, `real_service`) by name at run time, which pytest
# cannot see when it parametrizes: naming the fixture here makes every test run on each engine.
pytestmark = pytest.mark.usefixtures("real_database")

@pytest.fixture
def service(real_service):
    return real_service


def device_client(sts_data):
    """A storage client built only from what the sts answer says, as Pilot 2 builds it."""
    creds = sts_data["credentials"]
    scheme, host = sts_data["endpoint"].split("://", 1)
    return Minio(host, secure=scheme == "https", region=sts_data["region"],
                 credentials=StaticProvider(creds["access_key_id"], creds["access_key_secret"],
                                            creds["security_token"]))


def refused(action):
    with pytest.raises(S3Error) as info:
        action()
    assert info.value.response.status == 403, info.value.code
    return info.value.code


@pytest.mark.gen_test(timeout=60)
async def test_pilot2_flow_with_real_storage(call, s3_admin, real_database):
    fingerprint = uuid.uuid4().hex.upper()
    tiny = f"{uuid.uuid4().hex}_2022_8_31_15_16_16"
    name = f"DJI_{fingerprint[:8]}_W.JPG"

    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": fingerprint, "name": name,
                                                      "ext": {"tinny_fingerprint": tiny}})
    assert (status, env["code"]) == (200, -1)
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": [tiny]})
    assert env["data"] == {"tiny_fingerprints": []}

    status, env = await call(STS, raw=b"")
    assert (status, env["code"]) == (200, 0), env
    sts = env["data"]
    assert sts["object_key_prefix"] == "media/ws-a" and sts["bucket"] == BUCKET
    assert isinstance(sts["credentials"]["expire"], int) and sts["credentials"]["expire"] >= 900
    assert sts["credentials"]["security_token"]

    key = f"{sts['object_key_prefix']}/DJI_202208311455_008_Waypoint1/{name}"
    photo = b"\xff\xd8\xff" + uuid.uuid4().bytes * 1000
    device_client(sts).put_object(sts["bucket"], key, io.BytesIO(photo), len(photo))
    assert s3_admin.get_object(BUCKET, key).read() == photo  # the real bytes are in the bucket

    callback = {"result": 0, "fingerprint": fingerprint, "name": name, "object_key": key,
                "path": "DJI_202208311455_008_Waypoint1",
                "ext": {"tinny_fingerprint": tiny, "drone_model_key": "0-67-0"},
                "metadata": {"created_time": "2022-08-31T15:16:16+08:00"}}
    status, env = await call(f"{MEDIA}/upload-callback", callback)
    assert (status, env["data"]) == (200, {"object_key": key})

    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": fingerprint})
    assert (status, env["code"]) == (200, 0)
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": ["other_1", tiny]})
    assert env["data"] == {"tiny_fingerprints": [tiny]}

    # The record is in the database, with typed columns and the raw JSON: a store of its own
    # (its own connections) reads it back.
    url, prefix = real_database
    reader = PeeweeMediaStore(url=url, table_prefix=prefix)
    record = await reader.get("ws-a", fingerprint)
    assert record.file.object_key == key and record.file.created_time.isoformat() == "2022-08-31T07:16:16+00:00"
    assert json.loads(record.file.raw_json)["ext"]["drone_model_key"] == "0-67-0"

    s3_admin.remove_object(BUCKET, key)  # deleted behind our back
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": fingerprint})
    assert (status, env["code"]) == (200, -1)
    assert await reader.get("ws-a", fingerprint) is None  # the stale row is gone; the device re-uploads
    await reader.close()


@pytest.mark.gen_test(timeout=60)
async def test_temporary_credentials_allow_only_uploads_under_the_prefix(call, put_object, s3_admin):
    status, env = await call(STS, {})
    sts = env["data"]
    device = device_client(sts)
    prefix = sts["object_key_prefix"]
    mine = f"{prefix}/{uuid.uuid4().hex}.jpg"
    put_object(f"media/ws-b/{uuid.uuid4().hex}.jpg")
    neighbour = f"media/ws-b/{uuid.uuid4().hex}.jpg"
    put_object(neighbour)

    device.put_object(BUCKET, mine, io.BytesIO(b"ok"), 2)  # allowed
    big = 6 * 1024 * 1024  # two parts: multipart upload is allowed
    device.put_object(BUCKET, f"{prefix}/video.mp4", io.BytesIO(b"v" * big), big, part_size=5 * 1024 * 1024)

    # A multipart upload can be started and aborted under the prefix.
    upload_id = device._create_multipart_upload(BUCKET, f"{prefix}/aborted.mp4", {})
    device._abort_multipart_upload(BUCKET, f"{prefix}/aborted.mp4", upload_id)

    refused(lambda: device.put_object(BUCKET, f"media/ws-b/{uuid.uuid4().hex}.jpg", io.BytesIO(b"x"), 1))
    refused(lambda: device.put_object(BUCKET, f"elsewhere/{uuid.uuid4().hex}.jpg", io.BytesIO(b"x"), 1))
    refused(lambda: device.put_object(OTHER_BUCKET, mine, io.BytesIO(b"x"), 1))
    refused(lambda: device.get_object(BUCKET, mine).read())
    refused(lambda: device.get_object(BUCKET, neighbour).read())
    refused(lambda: device.stat_object(BUCKET, mine))
    refused(lambda: list(device.list_objects(BUCKET, prefix=prefix + "/", recursive=True)))
    refused(lambda: list(device.list_objects(BUCKET, recursive=True)))
    refused(lambda: device.remove_object(BUCKET, mine))
    assert s3_admin.stat_object(BUCKET, mine).size == 2  # the delete really did not happen
    refused(lambda: device.make_bucket(f"new-{uuid.uuid4().hex[:8]}"))
    refused(lambda: device.remove_bucket(OTHER_BUCKET))
    # Listing buckets is refused (AWS, MinIO) or shows nothing (SeaweedFS filters the list).
    try:
        visible = [b.name for b in device.list_buckets()]
    except S3Error as exc:
        assert exc.response.status == 403
    else:
        assert visible == []
