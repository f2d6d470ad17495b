"""Every endpoint over HTTP, row by row of protocol.md sections 2 and 3.

These run the real Tornado handlers and service over the in-memory object store, with the
metadata in memory and then on each real database (SQLite, PostgreSQL, MariaDB/MySQL): what a
device sees must not depend on the engine. tests/test_end_to_end.py repeats the flow against a
real S3 server.
"""
from __future__ import annotations

import json

import pytest

from dji_media import InMemoryMediaStore, PeeweeMediaStore, StaticTokenAuthenticator
from support import ENGINES, TOKEN_A, TOKEN_B

# pytest-tornado asks for `app` (and so `service` and `store`) by name at run time, which pytest
# cannot see when it parametrizes: naming the fixture here makes every test run on each store.
pytestmark = pytest.mark.usefixtures("store")

@pytest.fixture(params=["memory", *ENGINES])
def store(request, fresh_tables, io_loop):
    if request.param == "memory":
        yield InMemoryMediaStore()
        return
    url, prefix = fresh_tables(request.param)
    store = PeeweeMediaStore(url=url, table_prefix=prefix)
    yield store
    io_loop.run_sync(store.close)

# conftest's two tokens (every scope, as a token configured without scopes has), plus tokens
# of ws-a limited by scope.
READ_ONLY = "read-only-token-ws-a"
UPLOAD_ONLY = "upload-only-token-ws-a"


@pytest.fixture
def authenticator():
    return StaticTokenAuthenticator(tokens={
        TOKEN_A: ["ws-a"], TOKEN_B: ["ws-b"],
        READ_ONLY: {"workspaces": ["ws-a"], "scopes": ["read"]},
        UPLOAD_ONLY: {"workspaces": ["ws-a"], "scopes": ["upload"]},
    })


FP = "7F78C9F1999425CB61F10E1FE206009E"
TINY = "297f490b0252690d3f93841818567cc6_2022_8_31_15_16_16"
KEY = "media/ws-a/DJI_202208311455_008_Waypoint1/DJI_20220831151616_0004_W_Waypoint4.JPG"


def callback_body(fingerprint=FP, tiny=TINY, key=KEY, result=0, tiny_spelling="tinny_fingerprint", **extra):
    body = {
        "result": result, "fingerprint": fingerprint, "name": key.rsplit("/", 1)[-1],
        "path": "DJI_202208311455_008_Waypoint1", "object_key": key, "sub_file_type": 0,
        "ext": {"file_group_id": "3c3a3c8e-8f2e-4a63-9d3f-1a2b3c4d5e6f", "drone_model_key": "0-67-0",
                "payload_model_key": "1-52-0", "is_original": True, tiny_spelling: tiny,
                "sn": "1AD3CA2VL3LAD6"},
        "metadata": {"gimbal_yaw_degree": "-4.3", "absolute_altitude": -36.889,
                     "relative_altitude": 100.001, "created_time": "2022-08-31T15:16:16+08:00",
                     "shoot_position": {"lat": 22.577666, "lng": 113.943194}},
    }
    body.update(extra)
    return body


MEDIA = "/media/api/v1/workspaces/ws-a"
STS = "/storage/api/v1/workspaces/ws-a/sts"


# ------------------------------------------------------------------------------ fast-upload

@pytest.mark.gen_test
async def test_fast_upload_unknown_file_is_200_code_minus_one(call):
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": FP, "name": "x.jpg"})
    assert (status, env["code"], env["data"]) == (200, -1, {})
    assert env["message"] == f"{FP} don't exist."


@pytest.mark.gen_test
async def test_fast_upload_known_file_after_callback(call, objects):
    objects.put(KEY)
    status, env = await call(f"{MEDIA}/upload-callback", callback_body())
    assert (status, env["code"]) == (200, 0)
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": FP, "ext": {"tinny_fingerprint": TINY}})
    assert (status, env) == (200, {"code": 0, "message": "success", "data": {}})


@pytest.mark.gen_test
async def test_fast_upload_only_fingerprint_is_required(call):
    status, env = await call(f"{MEDIA}/fast-upload", {"name": "x.jpg"})
    assert status == 400 and "fingerprint" in env["message"]
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": FP})
    assert (status, env["code"]) == (200, -1)


@pytest.mark.gen_test
async def test_fast_upload_is_scoped_to_the_workspace(call, objects, service, authenticator):
    objects.put(KEY)
    await call(f"{MEDIA}/upload-callback", callback_body())
    status, env = await call("/media/api/v1/workspaces/ws-b/fast-upload", {"fingerprint": FP}, token=TOKEN_B)
    assert (status, env["code"]) == (200, -1)


@pytest.mark.gen_test
async def test_fast_upload_stale_row_is_removed_when_object_is_gone(call, objects, store):
    objects.put(KEY)
    await call(f"{MEDIA}/upload-callback", callback_body())
    objects.remove(KEY)
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": FP})
    assert (status, env["code"]) == (200, -1)
    assert await store.get("ws-a", FP) is None


@pytest.mark.gen_test
async def test_fast_upload_storage_outage_answers_unknown_and_keeps_record(call, objects, store):
    objects.put(KEY)
    await call(f"{MEDIA}/upload-callback", callback_body())
    before = await store.get("ws-a", FP)
    objects.unavailable = True
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": FP})
    assert (status, env["code"]) == (200, -1)
    assert await store.get("ws-a", FP) == before
    objects.unavailable = False
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": FP})
    assert env["code"] == 0


# ------------------------------------------------------------------------ tiny-fingerprints

@pytest.mark.gen_test
async def test_tiny_fingerprints_subset_in_request_order(call, objects):
    tinies = [f"{i:032x}_2022_8_31_15_16_{i}" for i in range(4)]
    for i, tiny in enumerate(tinies):
        key = f"media/ws-a/f{i}.jpg"
        objects.put(key)
        spelling = "tinny_fingerprint" if i % 2 else "tiny_fingerprint"  # both spellings
        await call(f"{MEDIA}/upload-callback", callback_body(fingerprint=f"FP{i}", tiny=tiny, key=key,
                                                             tiny_spelling=spelling))
    asked = ["unknown_1", tinies[3], tinies[0], "unknown_2", tinies[2], tinies[3]]
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": asked})
    assert status == 200 and env["code"] == 0
    assert env["data"] == {"tiny_fingerprints": [tinies[3], tinies[0], tinies[2]]}


@pytest.mark.gen_test
async def test_tiny_fingerprints_none_known_is_empty_list_not_null(call):
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": ["a_1", "b_2"]})
    assert (status, env["data"]) == (200, {"tiny_fingerprints": []})
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": []})
    assert (status, env["data"]) == (200, {"tiny_fingerprints": []})


@pytest.mark.gen_test
async def test_tiny_fingerprints_leave_out_gone_and_unverifiable(call, objects, store):
    objects.put(KEY)
    await call(f"{MEDIA}/upload-callback", callback_body())
    objects.unavailable = True
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": [TINY]})
    assert env["data"]["tiny_fingerprints"] == [] and await store.get("ws-a", FP) is not None
    objects.unavailable = False
    objects.remove(KEY)
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": [TINY]})
    assert env["data"]["tiny_fingerprints"] == [] and await store.get("ws-a", FP) is None


@pytest.mark.gen_test
async def test_tiny_fingerprints_check_a_bounded_number_of_unconfirmed_files(call, objects, service):
    # Nothing confirmed yet (this service has no window): a request HEADs the first
    # max_checks_per_request files and answers the rest unknown, never listing the folder.
    tinies = [f"{i:032x}_2022_8_31_15_16_{i}" for i in range(40)]
    for i, tiny in enumerate(tinies):
        key = f"media/ws-a/f{i}.jpg"
        objects.put(key)
        await call(f"{MEDIA}/upload-callback", callback_body(fingerprint=f"FP{i}", tiny=tiny, key=key))
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": tinies})
    assert (status, env["data"]) == (200, {"tiny_fingerprints": tinies[:service.max_checks_per_request]})
    assert objects.calls_by_kind == {"stat": service.max_checks_per_request}
    # For one answered unknown, the device asks fast-upload, which checks that one file.
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": "FP39"})
    assert (status, env["code"]) == (200, 0)


@pytest.mark.gen_test
async def test_tiny_fingerprints_validation(call):
    for body, field in (({}, "tiny_fingerprints"), ({"tiny_fingerprints": "abc"}, "tiny_fingerprints"),
                        ({"tiny_fingerprints": [1, 2]}, "tiny_fingerprints[0]")):
        status, env = await call(f"{MEDIA}/files/tiny-fingerprints", body)
        assert status == 400 and env["code"] == 400 and field in env["message"]


# ---------------------------------------------------------------------------------------- sts

@pytest.mark.gen_test
async def test_sts_shape(call):
    for raw in (b"", b"{}"):
        status, env = await call(STS, raw=raw)
        assert (status, env["code"], env["message"]) == (200, 0, "success")
        data = env["data"]
        assert set(data) == {"bucket", "credentials", "endpoint", "object_key_prefix", "provider", "region"}
        assert set(data["credentials"]) == {"access_key_id", "access_key_secret", "expire", "security_token"}
        assert type(data["credentials"]["expire"]) is int
        assert 3600 - 300 - 5 <= data["credentials"]["expire"] <= 3600 - 300
        assert data["endpoint"] == "http://storage.example:9000"
        assert data["object_key_prefix"] == "media/ws-a"
        assert data["provider"] == "minio" and data["bucket"] == "media" and data["region"] == "us-east-1"
        assert data["credentials"]["access_key_secret"] == "SK"


@pytest.mark.gen_test
async def test_sts_garbage_body_is_400(call):
    status, env = await call(STS, raw=b"not json")
    assert status == 400 and "JSON" in env["message"]


# --------------------------------------------------------------------------- upload-callback

@pytest.mark.gen_test
async def test_upload_callback_records_everything(call, store):
    status, env = await call(f"{MEDIA}/upload-callback", callback_body())
    assert (status, env) == (200, {"code": 0, "message": "success", "data": {"object_key": KEY}})
    record = await store.get("ws-a", FP)
    f = record.file
    assert (f.object_key, f.tiny_fingerprint, f.file_group_id, f.sub_file_type) == (
        KEY, TINY, "3c3a3c8e-8f2e-4a63-9d3f-1a2b3c4d5e6f", 0)
    assert f.gimbal_yaw_degree == -4.3  # arrived as a string
    assert f.created_time.isoformat() == "2022-08-31T07:16:16+00:00"
    assert f.created_time_text == "2022-08-31T15:16:16+08:00"
    assert (f.shoot_lat, f.shoot_lng, f.drone_model_key, f.is_original) == (22.577666, 113.943194, "0-67-0", True)
    assert json.loads(f.raw_json)["ext"]["sn"] == "1AD3CA2VL3LAD6"


@pytest.mark.gen_test
async def test_upload_callback_retried_leaves_one_record(call, store):
    for _ in range(3):
        status, env = await call(f"{MEDIA}/upload-callback", callback_body())
        assert (status, env["code"]) == (200, 0)
    assert len(await store.find_by_tiny_fingerprints("ws-a", [TINY])) == 1
    assert (await store.get("ws-a", FP)).revision == 3


@pytest.mark.gen_test
async def test_upload_callback_failed_upload_is_not_recorded(call, store):
    status, env = await call(f"{MEDIA}/upload-callback", callback_body(result=1))
    assert status == 200 and env["code"] != 0 and "not recorded" in env["message"]
    assert await store.get("ws-a", FP) is None


@pytest.mark.gen_test
async def test_upload_callback_failure_does_not_overwrite_good_record(call, store):
    await call(f"{MEDIA}/upload-callback", callback_body())
    good = await store.get("ws-a", FP)
    await call(f"{MEDIA}/upload-callback", callback_body(result=-3, key="media/ws-a/elsewhere.jpg"))
    assert await store.get("ws-a", FP) == good


@pytest.mark.gen_test
async def test_upload_callback_optional_sections_missing(call, store):
    body = {"fingerprint": FP, "object_key": KEY}
    status, env = await call(f"{MEDIA}/upload-callback", body)
    assert (status, env["code"]) == (200, 0)
    f = (await store.get("ws-a", FP)).file
    assert (f.tiny_fingerprint, f.name, f.created_time, f.gimbal_yaw_degree) == (None, None, None, None)


@pytest.mark.gen_test
async def test_upload_callback_lenient_metadata(call, store):
    body = callback_body(metadata={"gimbal_yaw_degree": "n/a", "created_time": "2022-08-31 15:16:16",
                                   "shoot_position": "nowhere"}, ext="not an object")
    status, env = await call(f"{MEDIA}/upload-callback", body)
    assert (status, env["code"]) == (200, 0)
    f = (await store.get("ws-a", FP)).file
    assert (f.gimbal_yaw_degree, f.created_time, f.created_time_text, f.shoot_lat) == (
        None, None, "2022-08-31 15:16:16", None)


@pytest.mark.gen_test
async def test_upload_callback_object_key_must_be_in_workspace_prefix(call, store):
    for key in ("media/ws-b/x.jpg", "/media/ws-a/x.jpg", "media/ws-a/../ws-b/x.jpg", "media/ws-a//x.jpg",
                "media/ws-a/x\n.jpg"):
        status, env = await call(f"{MEDIA}/upload-callback", callback_body(key=key))
        assert status == 400 and "object_key" in env["message"], key
    assert await store.get("ws-a", FP) is None


@pytest.mark.gen_test
async def test_upload_callback_wrong_types(call):
    for body, field in ((callback_body(fingerprint=123), "fingerprint"), (callback_body(result="0"), "result"),
                        (callback_body(object_key=None), "object_key"),
                        (callback_body(sub_file_type="x"), "sub_file_type")):
        status, env = await call(f"{MEDIA}/upload-callback", body)
        assert status == 400 and field in env["message"], body


# -------------------------------------------------------------------- group-upload-callback

@pytest.mark.gen_test
async def test_group_upload_callback_latest_wins(call, store):
    for uploaded in (3, 12):
        status, env = await call(f"{MEDIA}/group-upload-callback",
                                 {"file_group_id": "g1", "file_count": 14, "file_uploaded_count": uploaded})
        assert (status, env) == (200, {"code": 0, "message": "success", "data": {}})
    group = await store.get_group("ws-a", "g1")
    assert (group.file_count, group.file_uploaded_count) == (14, 12)


@pytest.mark.gen_test
async def test_group_upload_callback_validation(call):
    for body, field in (({"file_count": 1, "file_uploaded_count": 1}, "file_group_id"),
                        ({"file_group_id": "g", "file_count": "1", "file_uploaded_count": 1}, "file_count"),
                        ({"file_group_id": "g", "file_count": 1, "file_uploaded_count": 2}, "file_uploaded_count"),
                        ({"file_group_id": "g", "file_count": -1, "file_uploaded_count": 0}, "file_count")):
        status, env = await call(f"{MEDIA}/group-upload-callback", body)
        assert status == 400 and field in env["message"], body


# --------------------------------------------------------------------- section 2: common rules

ENDPOINTS = [f"{MEDIA}/fast-upload", f"{MEDIA}/files/tiny-fingerprints", f"{MEDIA}/upload-callback",
             f"{MEDIA}/group-upload-callback", STS]


@pytest.mark.gen_test
async def test_missing_or_bad_token_is_401_everywhere(call):
    for path in ENDPOINTS:
        for token in (None, "", "wrong-token-123"):
            status, env = await call(path, {}, token=token)
            assert (status, env["code"]) == (401, 401), (path, token)


@pytest.mark.gen_test
async def test_other_workspace_is_403_and_touches_nothing(call, store):
    status, env = await call(f"{MEDIA}/upload-callback", callback_body(), token=TOKEN_B)
    assert (status, env["code"]) == (403, 403)
    assert await store.get("ws-a", FP) is None
    for path in ENDPOINTS:
        status, _ = await call(path, {}, token=TOKEN_B)
        assert status == 403, path


@pytest.mark.gen_test
async def test_a_token_without_the_upload_scope_is_403_on_every_upload_endpoint(call, store, objects):
    objects.put(KEY)
    status, env = await call(f"{MEDIA}/upload-callback", callback_body(), token=READ_ONLY)
    assert (status, env) == (403, {"code": 403, "message": "this token lacks the 'upload' scope", "data": {}})
    assert await store.get("ws-a", FP) is None
    for path in ENDPOINTS:
        status, env = await call(path, {}, token=READ_ONLY)
        assert (status, env["code"]) == (403, 403) and "'upload' scope" in env["message"], path


@pytest.mark.gen_test
async def test_a_token_with_only_the_upload_scope_uses_every_upload_endpoint(call, objects):
    objects.put(KEY)
    for path, body in ((f"{MEDIA}/upload-callback", callback_body()),
                       (f"{MEDIA}/fast-upload", {"fingerprint": FP}),
                       (f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": [TINY]}),
                       (f"{MEDIA}/group-upload-callback",
                        {"file_group_id": "g-1", "file_count": 1, "file_uploaded_count": 1}),
                       (STS, {})):
        status, env = await call(path, body, token=UPLOAD_ONLY)
        assert (status, env["code"]) == (200, 0), (path, env)


@pytest.mark.gen_test
async def test_malformed_json_is_400_with_envelope(call):
    for path in ENDPOINTS[:4]:
        for raw, words in ((b"{not json", "JSON"), (b"[1, 2]", "object"), (b"\xff\xfe", "UTF-8"), (b"", "object")):
            status, env = await call(path, raw=raw)
            assert (status, env["code"]) == (400, 400) and words in env["message"], (path, raw)


@pytest.mark.gen_test
async def test_unknown_fields_are_ignored(call):
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": FP, "future_field": {"x": 1}})
    assert (status, env["code"]) == (200, -1)


@pytest.mark.gen_test
async def test_tornado_errors_are_envelopes(call):
    status, env = await call("/no/such/path", {})
    assert (status, env["code"]) == (404, 404)
    status, env = await call(f"{MEDIA}/fast-upload", method="GET")
    assert (status, env["code"]) == (405, 405)


@pytest.mark.gen_test
async def test_body_over_limit_is_413(call):
    status, env = await call(f"{MEDIA}/fast-upload", raw=b'{"fingerprint":"' + b"x" * (1024 * 1024) + b'"}')
    assert (status, env["code"]) == (413, 413)
