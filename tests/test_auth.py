"""Authenticators beyond the shared contract: DJI demo tokens, JWT refusals, the scopes each
form of token gets, and the configuration that sets them."""
from __future__ import annotations

import copy
import os
import time

import jwt
import pytest
import yaml

from dji_media import ConfigError, Forbidden, Identity, JwtAuthenticator, StaticTokenAuthenticator, Unauthenticated
from dji_media.access import ALL_SCOPES, DELETE, DEVICES, READ, UPLOAD, authorize, check_scopes
from dji_media.config import parse_config
from dji_media.wiring import build_service

SECRET = "CloudApiSample-secret-at-least-32b"
WS = "e3dea0f5-37f2-4d79-ae58-490af3228069"
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "example.yaml")


def dji_demo_token(secret=SECRET, **changes):
    """A token shaped like those DJI's demo server issues (HS256, issuer DJI, these claims)."""
    now = int(time.time())
    claims = {"iss": "DJI", "sub": "CloudApiSample", "iat": now, "nbf": now, "exp": now + 3600,
              "workspace_id": WS, "username": "pilot",
              "user_type": 2, "id": "be7c6c3d-afe9-4be4-b9eb-c55066c0914e"}
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


async def scopes_of(token, **options):
    return (await JwtAuthenticator(secret=SECRET, **options).authenticate(token)).scopes


# ------------------------------------------------------------------------------------ JWT

@pytest.mark.gen_test
async def test_dji_demo_token_is_accepted_with_issuer_checked():
    identity = await JwtAuthenticator(secret=SECRET, issuer="DJI").authenticate(dji_demo_token())
    assert identity == Identity(subject="pilot", workspaces={WS}, scopes={UPLOAD})
    authorize(identity, WS, UPLOAD)


@pytest.mark.gen_test
async def test_dji_demo_token_other_workspace_is_forbidden():
    identity = await JwtAuthenticator(secret=SECRET).authenticate(dji_demo_token())
    with pytest.raises(Forbidden, match="workspace"):
        authorize(identity, "another-workspace", UPLOAD)


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
        await JwtAuthenticator(secret=SECRET, issuer="DJI").authenticate(token)


@pytest.mark.gen_test
@pytest.mark.parametrize("claim", [None, "", [], 42, ["", 7], "*", ["*"]])
async def test_signed_token_without_workspace_claim_is_forbidden_not_logged_out(claim):
    with pytest.raises(Forbidden, match=r"names no workspace \(workspace_id claim\)"):
        await JwtAuthenticator(secret=SECRET).authenticate(dji_demo_token(workspace_id=claim))


@pytest.mark.gen_test
async def test_workspace_claim_may_be_a_list_and_is_configurable():
    identity = await JwtAuthenticator(secret=SECRET).authenticate(dji_demo_token(workspace_id=["ws-1", "ws-2"]))
    assert identity.workspaces == {"ws-1", "ws-2"}
    authorize(identity, "ws-2", UPLOAD)
    with pytest.raises(Forbidden):
        authorize(identity, "ws-3", UPLOAD)
    # "*" never widens a JWT: only the named workspaces count.
    identity = await JwtAuthenticator(secret=SECRET).authenticate(dji_demo_token(workspace_id=["*", "ws-1"]))
    assert identity.workspaces == {"ws-1"}
    auth = JwtAuthenticator(secret=SECRET, workspace_claim="workspaces")
    identity = await auth.authenticate(dji_demo_token(workspace_id=None, workspaces="ws-9"))
    assert identity.workspaces == {"ws-9"}


@pytest.mark.gen_test
async def test_dji_user_type_decides_the_scopes_by_default():
    assert await scopes_of(dji_demo_token(user_type=2)) == {UPLOAD}                    # pilot
    assert await scopes_of(dji_demo_token(user_type=1)) == {UPLOAD, READ, DELETE, DEVICES}  # web
    # Neither a scope claim nor a known user_type: default_scopes, upload unless configured.
    for user_type in (None, 3, "pilot", True):
        assert await scopes_of(dji_demo_token(user_type=user_type)) == {UPLOAD}, user_type
    assert await scopes_of(dji_demo_token(user_type=None), default_scopes=[]) == set()
    assert await scopes_of(dji_demo_token(user_type=None), default_scopes=["read"]) == {READ}


@pytest.mark.gen_test
async def test_user_type_mapping_is_configurable_and_replaces_the_default():
    # YAML may give the key as 2 or "2"; DJI's claim is a number: both match.
    mapping = {"2": ["upload", "read"], 5: ["devices"]}
    assert await scopes_of(dji_demo_token(user_type=2), user_type_scopes=mapping) == {UPLOAD, READ}
    assert await scopes_of(dji_demo_token(user_type="5"), user_type_scopes=mapping) == {DEVICES}
    # Web users (1) are not in this table: they fall back to default_scopes.
    assert await scopes_of(dji_demo_token(user_type=1), user_type_scopes=mapping) == {UPLOAD}
    assert await scopes_of(dji_demo_token(user_type=1), user_type_scopes={}) == {UPLOAD}


@pytest.mark.gen_test
async def test_scope_claim_wins_over_user_type():
    # Space-separated as in OAuth; names of other services are ignored.
    token = dji_demo_token(user_type=1, scope="read openid  upload")
    assert await scopes_of(token) == {READ, UPLOAD}
    assert await scopes_of(dji_demo_token(scope=["delete", "read"])) == {DELETE, READ}
    assert await scopes_of(dji_demo_token(user_type=1, scope="")) == set()  # present: it decides
    assert await scopes_of(dji_demo_token(scp=["read"]), scope_claim="scp") == {READ}
    # With scope_claim off, the claim is not read: user_type decides.
    assert await scopes_of(dji_demo_token(user_type=1, scope="read"), scope_claim=None) == ALL_SCOPES


@pytest.mark.gen_test
@pytest.mark.parametrize("claim", [42, {"read": True}, ["read", 1]])
async def test_malformed_scope_claim_is_forbidden_not_logged_out(claim):
    with pytest.raises(Forbidden, match="scope claim"):
        await JwtAuthenticator(secret=SECRET).authenticate(dji_demo_token(scope=claim))


def test_weak_or_wrong_jwt_configuration_is_refused():
    with pytest.raises(ValueError):
        JwtAuthenticator(secret="short")
    with pytest.raises(ValueError, match=r"default_scopes: unknown scope\(s\) 'uplod'"):
        JwtAuthenticator(secret=SECRET, default_scopes=["uplod"])
    with pytest.raises(ValueError, match=r"user_type_scopes: unknown scope\(s\) 'admin'"):
        JwtAuthenticator(secret=SECRET, user_type_scopes={1: ["admin", "read"]})
    with pytest.raises(ValueError, match="user_type_scopes"):
        JwtAuthenticator(secret=SECRET, user_type_scopes={1: "read"})  # a string, not a list
    with pytest.raises(ValueError, match="user_type_scopes"):
        JwtAuthenticator(secret=SECRET, user_type_scopes={True: ["read"]})


# --------------------------------------------------------------------------------- static

def test_weak_static_configuration_is_refused():
    with pytest.raises(ValueError):
        StaticTokenAuthenticator(tokens={"short": ["ws"]})
    with pytest.raises(ValueError):
        StaticTokenAuthenticator(tokens={"long-enough-token": "ws"})  # a string, not a list
    with pytest.raises(ValueError):
        StaticTokenAuthenticator(tokens={"long-enough-token": {"workspaces": "ws", "scopes": ["read"]}})


@pytest.mark.gen_test
async def test_static_wildcard_token():
    identity = await StaticTokenAuthenticator(tokens={"operator-token-1": ["*"]}).authenticate("operator-token-1")
    authorize(identity, "any-ws", UPLOAD)


@pytest.mark.gen_test
async def test_static_list_form_keeps_every_scope():
    identity = await StaticTokenAuthenticator(tokens={"old-style-token": ["ws-1"]}).authenticate("old-style-token")
    assert identity.workspaces == {"ws-1"} and identity.scopes == ALL_SCOPES
    assert identity.subject.startswith("token:") and "old-style-token" not in identity.subject


@pytest.mark.gen_test
async def test_static_mapping_form_limits_the_scopes():
    auth = StaticTokenAuthenticator(tokens={
        "pilot-token-123": {"workspaces": ["ws-1", "ws-2"], "scopes": ["upload"]},
        "viewer-token-12": {"workspaces": ["*"], "scopes": ["read"]},
        "nothing-token-1": {"workspaces": ["ws-1"], "scopes": []},
    })
    pilot = await auth.authenticate("pilot-token-123")
    assert pilot.workspaces == {"ws-1", "ws-2"} and pilot.scopes == {UPLOAD}
    authorize(pilot, "ws-2", UPLOAD)
    with pytest.raises(Forbidden, match="'delete' scope"):
        authorize(pilot, "ws-2", DELETE)
    viewer = await auth.authenticate("viewer-token-12")
    authorize(viewer, "any-ws", READ)
    with pytest.raises(Forbidden, match="'upload' scope"):
        authorize(viewer, "any-ws", UPLOAD)
    nothing = await auth.authenticate("nothing-token-1")
    for scope in ALL_SCOPES:
        with pytest.raises(Forbidden):
            authorize(nothing, "ws-1", scope)


@pytest.mark.parametrize("entry, words", [
    ({"workspaces": ["ws"], "scopes": ["upload", "erase", "admin"]}, "unknown scope(s) 'admin', 'erase'"),
    ({"workspaces": ["ws"]}, "needs both 'workspaces' and 'scopes'"),
    ({"scopes": ["read"]}, "needs both 'workspaces' and 'scopes'"),
    ({"workspaces": ["ws"], "scopes": ["read"], "expires": 3}, "unknown key(s) 'expires'"),
    ({"workspaces": ["ws"], "scopes": "read"}, "not a string"),
])
def test_bad_static_entries_name_the_fault_not_the_token(entry, words):
    with pytest.raises(ValueError) as info:
        StaticTokenAuthenticator(tokens={"a-secret-token-value": entry})
    assert words in str(info.value) and "a-secret-token-value" not in str(info.value)


def test_demo_banner_prefers_a_token_that_may_upload():
    auth = StaticTokenAuthenticator(tokens={
        "viewer-token-12": {"workspaces": ["ws-v"], "scopes": ["read"]},
        "pilot-token-123": {"workspaces": ["ws-p"], "scopes": ["upload"]},
    })
    assert auth.example() == ("pilot-token-123", "ws-p")


# ------------------------------------------------------------------------ configuration

def _raw_config(authenticator):
    with open(EXAMPLE, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw = copy.deepcopy(raw)
    raw["authenticator"] = authenticator
    return raw


@pytest.mark.gen_test
async def test_both_static_forms_load_from_configuration():
    raw = _raw_config({"backend": "static", "options": {"tokens": {
        "old-style-token": ["ws-1"],
        "pilot-token-123": {"workspaces": ["ws-1"], "scopes": ["upload", "read"]},
    }}})
    service = build_service(parse_config(raw, environ={}))
    try:
        assert (await service.authenticator.authenticate("old-style-token")).scopes == ALL_SCOPES
        assert (await service.authenticator.authenticate("pilot-token-123")).scopes == {UPLOAD, READ}
    finally:
        await service.close()


@pytest.mark.parametrize("authenticator", [
    {"backend": "static", "options": {"tokens": {"a-secret-token-value": {"workspaces": ["w"], "scopes": ["erase"]}}}},
    {"backend": "jwt", "options": {"secret": SECRET, "default_scopes": ["erase"]}},
    {"backend": "jwt", "options": {"secret": SECRET, "user_type_scopes": {2: ["erase"]}}},
])
def test_unknown_scopes_in_configuration_are_a_config_error(authenticator):
    with pytest.raises(ConfigError) as info:
        build_service(parse_config(_raw_config(authenticator), environ={}))
    assert info.value.key == "authenticator.options"
    assert "'erase'" in str(info.value) and "a-secret-token-value" not in str(info.value)


def test_scope_names_are_checked():
    assert check_scopes(["read", "upload", "read"]) == {READ, UPLOAD}
    with pytest.raises(ValueError, match="known: delete, devices, read, upload"):
        check_scopes(["write"])
