"""Authenticator details beyond the shared contract: DJI demo tokens and JWT refusals."""
from __future__ import annotations

import time

import jwt
import pytest

from dji_media import Forbidden, JwtAuthenticator, StaticTokenAuthenticator, Unauthenticated

SECRET = "CloudApiSample-secret-at-least-32b"


def dji_demo_token(secret=SECRET, **changes):
    """A token shaped like those DJI's demo server issues (HS256, issuer DJI, these claims)."""
    now = int(time.time())
    claims = {"iss": "DJI", "sub": "CloudApiSample", "iat": now, "nbf": now, "exp": now + 3600,
              "workspace_id": "e3dea0f5-37f2-4d79-ae58-490af3228069", "username": "pilot",
              "user_type": 2, "id": "be7c6c3d-afe9-4be4-b9eb-c55066c0914e"}
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


@pytest.mark.gen_test
async def test_dji_demo_token_is_accepted_with_issuer_checked():
    auth = JwtAuthenticator(secret=SECRET, issuer="DJI")
    identity = await auth.authenticate(dji_demo_token(), "e3dea0f5-37f2-4d79-ae58-490af3228069")
    assert identity.subject == "pilot"


@pytest.mark.gen_test
async def test_dji_demo_token_other_workspace_is_forbidden():
    with pytest.raises(Forbidden):
        await JwtAuthenticator(secret=SECRET).authenticate(dji_demo_token(), "another-workspace")


@pytest.mark.gen_test
@pytest.mark.parametrize("token", [
    dji_demo_token(exp=int(time.time()) - 120),                     # expired
    dji_demo_token(nbf=int(time.time()) + 600),                     # not yet valid
    dji_demo_token(iss="someone-else"),                             # wrong issuer
    dji_demo_token(secret="another-secret-another-secret-xx"),      # bad signature
    dji_demo_token(exp=None),                                       # no expiry
    jwt.encode({"workspace_id": "w", "exp": int(time.time()) + 60}, None, algorithm="none"),
    "not.a.jwt", "garbage", "x" * 9000,
])
async def test_refused_tokens_are_unauthenticated(token):
    with pytest.raises(Unauthenticated):
        await JwtAuthenticator(secret=SECRET, issuer="DJI").authenticate(token, "e3dea0f5-37f2-4d79-ae58-490af3228069")


@pytest.mark.gen_test
async def test_signed_token_without_workspace_claim_is_forbidden_not_logged_out():
    with pytest.raises(Forbidden):
        await JwtAuthenticator(secret=SECRET).authenticate(dji_demo_token(workspace_id=None), "ws")


def test_weak_configuration_is_refused():
    with pytest.raises(ValueError):
        JwtAuthenticator(secret="short")
    with pytest.raises(ValueError):
        StaticTokenAuthenticator(tokens={"short": ["ws"]})
    with pytest.raises(ValueError):
        StaticTokenAuthenticator(tokens={"long-enough-token": "ws"})  # a string, not a list


@pytest.mark.gen_test
async def test_static_wildcard_token():
    auth = StaticTokenAuthenticator(tokens={"operator-token-1": ["*"]})
    assert (await auth.authenticate("operator-token-1", "any-ws")).workspace_id == "any-ws"
