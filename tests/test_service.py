"""Service rules that need no HTTP: the verification window and its trade-off."""
from __future__ import annotations

import pytest

from dji_media import (
    InMemoryMediaStore,
    InMemoryObjectStore,
    MediaService,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
)
from dji_media.testing.contracts import sample_file
from dji_media.values import FastUploadQuery


def make(window):
    store, objects = InMemoryMediaStore(), InMemoryObjectStore()
    service = MediaService(
        media_store=store, object_store=objects,
        credentials=StaticCredentialProvider(endpoint="http://s3:9000", access_key="a", secret_key="b",
                                             bucket="media"),
        authenticator=StaticTokenAuthenticator(tokens={"token-1234": ["ws"]}), verify_window=window)
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
