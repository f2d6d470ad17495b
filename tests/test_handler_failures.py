"""Handler behaviour when a backend fails or a token may use any workspace."""
from __future__ import annotations

import pytest

from dji_media import StaticTokenAuthenticator, StorageUnavailable
from dji_media.interfaces import CredentialProvider
from support import TOKEN_A

STS = "/storage/api/v1/workspaces/ws-a/sts"


class FailingCredentials(CredentialProvider):
    def object_key_prefix(self, workspace_id):
        return f"media/{workspace_id}"

    async def issue(self, workspace_id):
        raise StorageUnavailable("storage credentials could not be issued: STS is unreachable")


@pytest.fixture
def credentials():
    return FailingCredentials()


@pytest.fixture
def authenticator():
    # "*" lets the token into any workspace, so only the workspace id check can refuse.
    return StaticTokenAuthenticator(tokens={TOKEN_A: ["*"]})


@pytest.mark.gen_test
async def test_sts_failure_is_non_zero_code_with_message_never_null_credentials(call):
    status, env = await call(STS, {})
    assert status == 503 and env["code"] == 503
    assert "STS is unreachable" in env["message"]
    assert env["data"] == {}


@pytest.mark.gen_test
async def test_workspace_ids_that_could_widen_a_policy_are_400(call):
    for ws in ("a*b", "a%3Fb", "..", "a.b", "x" * 65, "%20", "ws-a%0A", "ws%2Fb"):
        status, env = await call(f"/media/api/v1/workspaces/{ws}/fast-upload", {"fingerprint": "F"})
        assert (status, env["code"]) == (400, 400) and "workspace_id" in env["message"], ws
    status, env = await call("/media/api/v1/workspaces/ws_ok-1/fast-upload", {"fingerprint": "F"})
    assert (status, env["code"]) == (200, -1)
    # On sts the refusal comes before the credential provider is asked: this one would say 503.
    for ws in ("a*b", "..", "ws%2Fb"):
        status, env = await call(f"/storage/api/v1/workspaces/{ws}/sts", {})
        assert (status, env["code"]) == (400, 400) and "workspace_id" in env["message"], ws


@pytest.fixture
def app(service):
    # The media routes plus the health routes, as `dji-media serve` mounts them.
    import tornado.web

    from dji_media import NotFoundHandler, get_handlers, get_health_handlers

    return tornado.web.Application(get_handlers(service) + get_health_handlers(service),
                                   default_handler_class=NotFoundHandler)


@pytest.mark.gen_test
async def test_health_and_readiness(call, objects):
    status, env = await call("/healthz", method="GET", token=None)
    assert (status, env) == (200, {"code": 0, "message": "alive", "data": {}})
    status, env = await call("/readyz", method="GET", token=None)
    assert (status, env) == (200, {"code": 0, "message": "ready", "data": {"database": "ok", "storage": "ok"}})
    objects.unavailable = True
    status, env = await call("/readyz", method="GET", token=None)
    assert (status, env["code"], env["message"]) == (503, 503, "not ready: storage")
    assert env["data"] == {"database": "ok", "storage": "unavailable"}  # the reason is logged only
    status, env = await call("/healthz", method="GET", token=None)  # liveness ignores dependencies
    assert status == 200


@pytest.mark.gen_test
async def test_client_strings_cannot_forge_log_lines(call, objects, store, caplog):
    from dji_media.testing.contracts import sample_file

    await store.upsert("ws-a", sample_file("F\nFORGED", object_key="media/ws-a/x\nFORGED"))
    with caplog.at_level("INFO", logger="dji_media"):
        status, env = await call("/media/api/v1/workspaces/ws-a/fast-upload", {"fingerprint": "F\nFORGED"})
    assert env["code"] == -1
    assert caplog.records and all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.gen_test
async def test_paired_surrogates_are_fine(call):
    status, env = await call("/media/api/v1/workspaces/ws-a/fast-upload", raw=b'{"fingerprint":"\\ud83d\\ude00"}')
    assert (status, env["code"]) == (200, -1)
