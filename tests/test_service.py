"""Service rules that need no HTTP: the verification window and its trade-off, and who may
do what (authentication, then authorisation by scope)."""
from __future__ import annotations

import logging

import pytest

from dji_media import (
    Authenticator,
    BadRequest,
    Forbidden,
    Identity,
    InMemoryMediaStore,
    InMemoryObjectStore,
    MediaService,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
    Unauthenticated,
)
from dji_media.access import ALL_SCOPES, DELETE, DEVICES, READ, UPLOAD
from dji_media.service import USE_CASE_SCOPES
from dji_media.testing.contracts import sample_file
from dji_media.values import FastUploadQuery


def make(window=0, authenticator=None):
    store, objects = InMemoryMediaStore(), InMemoryObjectStore()
    service = MediaService(
        media_store=store, object_store=objects,
        credentials=StaticCredentialProvider(endpoint="http://s3:9000", access_key="a", secret_key="b",
                                             bucket="media"),
        authenticator=authenticator or StaticTokenAuthenticator(tokens={"token-1234": ["ws"]}),
        verify_window=window)
    return service, store, objects


@pytest.mark.gen_test
async def test_window_skips_storage_for_recent_confirmations():
    service, store, objects = make(window=300)
    file = sample_file("F1", object_key="media/ws/a.jpg")
    await store.upsert("ws", file)
    objects.put(file.object_key)
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    assert objects.calls == 1
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    assert await service.existing_tiny_fingerprints("ws", [file.tiny_fingerprint]) == [file.tiny_fingerprint]
    assert objects.calls == 1  # both answered from the stored confirmation
    objects.remove(file.object_key)  # the documented trade-off: still "present" inside the window
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    await store.upsert("ws", file)  # a new callback clears the confirmation
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is False
    assert objects.calls == 2


@pytest.mark.gen_test
async def test_window_zero_always_asks_storage():
    service, store, objects = make(window=0)
    file = sample_file("F1", object_key="media/ws/a.jpg")
    await store.upsert("ws", file)
    objects.put(file.object_key)
    for _ in range(3):
        assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    assert objects.calls == 3
    assert (await store.get("ws", "F1")).verified_at is None  # nothing stored without a window


@pytest.mark.gen_test
async def test_unreachable_storage_is_not_remembered():
    service, store, objects = make(window=300)
    file = sample_file("F1", object_key="media/ws/a.jpg")
    await store.upsert("ws", file)
    objects.put(file.object_key)
    objects.unavailable = True
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is False
    assert (await store.get("ws", "F1")).verified_at is None


# ------------------------------------------------------------------------------- access

SCOPED = StaticTokenAuthenticator(tokens={
    "every-scope-1": ["ws"],
    "upload-only-1": {"workspaces": ["ws"], "scopes": ["upload"]},
    "read-only-123": {"workspaces": ["ws"], "scopes": ["read"]},
    "any-ws-upload": {"workspaces": ["*"], "scopes": ["upload"]},
})


@pytest.mark.gen_test
async def test_a_scope_the_token_lacks_is_forbidden_naming_it():
    service, _, _ = make(authenticator=SCOPED)
    identity = await service.authenticate("upload-only-1", "ws", UPLOAD)
    assert identity.scopes == {UPLOAD}
    for scope in (READ, DELETE, DEVICES):
        with pytest.raises(Forbidden, match=f"lacks the '{scope}' scope"):
            await service.authenticate("upload-only-1", "ws", scope)
    with pytest.raises(Forbidden, match="'upload' scope"):
        await service.authenticate("read-only-123", "ws", UPLOAD)
    await service.authenticate("read-only-123", "ws", READ)
    for scope in ALL_SCOPES:  # a token configured without scopes keeps every one
        await service.authenticate("every-scope-1", "ws", scope)


@pytest.mark.gen_test
async def test_order_of_checks_token_then_authorisation_then_workspace_format():
    service, _, _ = make(authenticator=SCOPED)
    for token in (None, "", "not-a-known-token"):
        with pytest.raises(Unauthenticated):
            await service.authenticate(token, "a*b", DELETE)
    # A token for other workspaces is told 403 before it learns anything about the id's form.
    with pytest.raises(Forbidden, match="workspace"):
        await service.authenticate("upload-only-1", "a*b", UPLOAD)
    with pytest.raises(Forbidden, match="scope"):
        await service.authenticate("any-ws-upload", "a*b", READ)
    with pytest.raises(BadRequest, match="workspace_id"):
        await service.authenticate("any-ws-upload", "a*b", UPLOAD)


def test_every_use_case_states_its_scope():
    use_cases = {"fast_upload", "existing_tiny_fingerprints", "issue_credentials", "record_upload",
                 "record_group"}
    assert set(USE_CASE_SCOPES) == use_cases
    assert all(callable(getattr(MediaService, name)) for name in use_cases)
    # The Pilot 2 / dock upload flow is the upload scope, all of it.
    assert set(USE_CASE_SCOPES.values()) == {UPLOAD}
    with pytest.raises(TypeError):
        USE_CASE_SCOPES["fast_upload"] = READ  # one table, not changed at run time


class OldStyleAuthenticator(Authenticator):
    """A third party's authenticator written for the interface before scopes."""

    async def authenticate(self, token, workspace_id):
        if token != "old-token-123":
            raise Unauthenticated("invalid X-Auth-Token")
        if workspace_id != "ws":
            raise Forbidden("this token may not access this workspace")
        return Identity(subject="legacy-user", workspace_id=workspace_id)


class OptionalHintAuthenticator(Authenticator):
    """The current interface, with an optional parameter it is never given."""

    async def authenticate(self, token, workspace_hint=None):
        assert workspace_hint is None
        return Identity("hinted", ["ws"], [READ])


@pytest.mark.gen_test
async def test_an_authenticator_with_the_old_signature_keeps_working(caplog):
    with caplog.at_level(logging.WARNING, logger="dji_media.auth"):
        service, _, _ = make(authenticator=OldStyleAuthenticator())
    assert "OldStyleAuthenticator.authenticate(token, workspace_id)" in caplog.text
    # Its "yes" meant "may do anything there": one workspace, every scope.
    for scope in ALL_SCOPES:
        identity = await service.authenticate("old-token-123", "ws", scope)
    assert identity == Identity(subject="legacy-user", workspaces={"ws"}, scopes=ALL_SCOPES)
    with pytest.raises(Forbidden):
        await service.authenticate("old-token-123", "ws-2", UPLOAD)
    with pytest.raises(Unauthenticated):
        await service.authenticate("other-token", "ws", UPLOAD)
    service, _, _ = make(authenticator=OptionalHintAuthenticator())
    assert (await service.authenticate("any", "ws", READ)).subject == "hinted"
    with pytest.raises(Forbidden):
        await service.authenticate("any", "ws", UPLOAD)


def test_identity_old_constructor_forms_still_build():
    assert Identity("s", "ws") == Identity(subject="s", workspace_id="ws") == Identity("s", {"ws"})
    assert Identity("s", "ws").scopes == frozenset()
    assert Identity("s", ["a", "b", "a"], ("read",)) == Identity("s", frozenset({"a", "b"}), frozenset({"read"}))
    with pytest.raises(TypeError):
        Identity("s", ["ws"], "read")  # a string would be its letters
