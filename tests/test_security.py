"""Hostile input over HTTP: oversized, chunked, overlong, internal failures that must not leak."""
from __future__ import annotations

import json

import jwt
import pytest

from dji_media import InMemoryMediaStore, JwtAuthenticator
from dji_media.rules import MAX_NAME, MAX_OBJECT_KEY, MAX_TINY_FINGERPRINTS

MEDIA = "/media/api/v1/workspaces/ws-a"


@pytest.mark.gen_test
async def test_chunked_body_over_limit_is_413(http_client, base_url):
    from support import TOKEN_A

    async def produce(write):
        for _ in range(40):  # 40 x 64 KiB = 2.5 MiB, no Content-Length: sent chunked
            await write(b" " * 65536)

    response = await http_client.fetch(base_url + f"{MEDIA}/fast-upload", method="POST", body_producer=produce,
                                       headers={"X-Auth-Token": TOKEN_A}, raise_error=False)
    assert response.code == 413
    assert json.loads(response.body) == {"code": 413, "message": "request body is larger than 1048576 bytes",
                                         "data": {}}


@pytest.mark.gen_test
async def test_declared_oversize_is_refused_before_the_token_is_checked(call):
    status, env = await call(f"{MEDIA}/upload-callback", raw=b"x" * (1024 * 1024 + 1), token=None)
    assert (status, env["code"]) == (413, 413)


@pytest.mark.gen_test
async def test_overlong_strings_name_the_field(call):
    cases = [
        ({"fingerprint": "F" * 65}, "fast-upload", "fingerprint"),
        ({"fingerprint": "F", "name": "n" * (MAX_NAME + 1)}, "fast-upload", "name"),
        ({"fingerprint": "F", "ext": {"tinny_fingerprint": "t" * 129}}, "fast-upload", "ext.tinny_fingerprint"),
        ({"fingerprint": "F", "object_key": "media/ws-a/" + "k" * MAX_OBJECT_KEY}, "upload-callback", "object_key"),
        # 400 characters, 1,200 bytes of UTF-8: more than any S3 accepts.
        ({"fingerprint": "F", "object_key": "media/ws-a/" + "航" * 400}, "upload-callback", "object_key"),
        ({"tiny_fingerprints": ["t"] * (MAX_TINY_FINGERPRINTS + 1)}, "files/tiny-fingerprints", "tiny_fingerprints"),
    ]
    for body, path, field in cases:
        status, env = await call(f"{MEDIA}/{path}", body)
        assert (status, env["code"]) == (400, 400) and env["message"].startswith(field), (path, env)


@pytest.mark.gen_test
async def test_ten_thousand_tiny_fingerprints_are_allowed(call):
    body = {"tiny_fingerprints": [f"{i:032x}_2022_8_31_15_16_16" for i in range(10000)]}
    status, env = await call(f"{MEDIA}/files/tiny-fingerprints", body)
    assert (status, env["data"]) == (200, {"tiny_fingerprints": []})


class ExplodingStore(InMemoryMediaStore):
    async def get(self, workspace_id, fingerprint):
        raise RuntimeError("SELECT secret FROM /var/lib/internal.db: boom")


@pytest.fixture
def store():
    return ExplodingStore()


@pytest.mark.gen_test
async def test_unexpected_failure_is_500_envelope_without_details(call):
    status, env = await call(f"{MEDIA}/fast-upload", {"fingerprint": "F"})
    assert (status, env) == (500, {"code": 500, "message": "internal server error", "data": {}})


@pytest.mark.gen_test
@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
async def test_jwt_with_another_algorithm_is_refused(algorithm):
    from dji_media import Unauthenticated

    secret = "s" * 64  # long enough for every HMAC size, so PyJWT does not warn
    token = jwt.encode({"workspace_id": "ws", "exp": 4102444800}, secret, algorithm=algorithm)
    with pytest.raises(Unauthenticated):
        await JwtAuthenticator(secret=secret).authenticate(token)


@pytest.mark.gen_test
async def test_deeply_nested_json_is_400_not_500(call):
    for path in ("fast-upload", "upload-callback", "files/tiny-fingerprints"):
        # 100,000 levels: deeper than any Python's json recursion limit (3.13 parses 5,000).
        status, env = await call(f"{MEDIA}/{path}", raw=b'{"a":' * 100000 + b"1" + b"}" * 100000)
        assert (status, env["code"]) == (400, 400) and "nested" in env["message"], path


@pytest.mark.gen_test
async def test_answers_are_not_cached_and_carry_no_server_banner(http_client, base_url):
    from support import TOKEN_A

    for path, token in ((f"{MEDIA}/fast-upload", TOKEN_A), (f"{MEDIA}/fast-upload", None), ("/nowhere", None)):
        response = await http_client.fetch(base_url + path, method="POST", body=b"{}", raise_error=False,
                                           headers={"X-Auth-Token": token} if token else {})
        assert response.headers.get("Cache-Control") == "no-store", path
        assert "Server" not in response.headers, path


@pytest.mark.gen_test
async def test_lone_surrogate_is_400(call):
    status, env = await call(f"{MEDIA}/fast-upload", raw=b'{"fingerprint":"\\ud800"}')
    assert (status, env["code"]) == (400, 400) and "surrogate" in env["message"]


@pytest.mark.gen_test
async def test_integers_beyond_the_columns_are_400(call):
    body = {"fingerprint": "F", "object_key": "media/ws-a/a.jpg"}
    for field, value in (("sub_file_type", 2**63), ("sub_file_type", -1), ("result", 10**30)):
        status, env = await call(f"{MEDIA}/upload-callback", dict(body, **{field: value}))
        assert (status, env["code"]) == (400, 400) and field in env["message"], (field, value)
    for field in ("file_count", "file_uploaded_count"):
        group = {"file_group_id": "g", "file_count": 1, "file_uploaded_count": 1, field: 2**31}
        status, env = await call(f"{MEDIA}/group-upload-callback", group)
        assert (status, env["code"]) == (400, 400) and field in env["message"], field


@pytest.mark.gen_test
async def test_nul_character_is_400(call):
    status, env = await call(f"{MEDIA}/fast-upload", raw=b'{"fingerprint":"a\\u0000b"}')
    assert (status, env["code"]) == (400, 400) and "NUL" in env["message"]
