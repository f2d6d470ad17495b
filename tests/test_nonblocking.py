"""Blocking storage calls run off the event loop: a slow storage answer delays nothing else."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import tornado.web

from dji_media import (
    InMemoryMediaStore,
    MediaService,
    MinioObjectStore,
    NotFoundHandler,
    StaticCredentialProvider,
    get_handlers,
)
from dji_media.testing.contracts import sample_file
from support import TOKEN_A


@pytest.fixture
def silent_storage():
    """A TCP port that accepts connections (the kernel completes the handshake) but never
    answers: every storage request waits for its read timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def store():
    return InMemoryMediaStore()


@pytest.fixture
def app(store, silent_storage, authenticator, io_loop):
    objects = MinioObjectStore(endpoint=silent_storage, access_key="k", secret_key="s", bucket="media",
                               timeout=3.0, retries=0, max_workers=8)
    service = MediaService(media_store=store, object_store=objects, authenticator=authenticator,
                           credentials=StaticCredentialProvider(endpoint=silent_storage, access_key="k",
                                                                secret_key="s", bucket="media"))
    yield tornado.web.Application(get_handlers(service), default_handler_class=NotFoundHandler)
    io_loop.run_sync(service.close)


@pytest.mark.gen_test(timeout=30)
async def test_fast_upload_misses_answer_while_a_batch_waits_on_storage(http_client, base_url, store):
    tinies = []
    for i in range(8):
        record = await store.upsert("ws-a", sample_file(f"K{i}", object_key=f"media/ws-a/{i}.jpg"))
        tinies.append(record.file.tiny_fingerprint)

    def post(path, body):
        return http_client.fetch(base_url + "/media/api/v1/workspaces/ws-a/" + path, method="POST",
                                 body=json.dumps(body), headers={"X-Auth-Token": TOKEN_A}, raise_error=False)

    started = time.monotonic()
    batch = asyncio.ensure_future(post("files/tiny-fingerprints", {"tiny_fingerprints": tinies}))
    await asyncio.sleep(0.2)  # the batch is now waiting on the silent storage
    latencies = []
    for i in range(20):
        t0 = time.monotonic()
        response = await post("fast-upload", {"fingerprint": f"UNKNOWN{i}"})
        latencies.append(time.monotonic() - t0)
        assert json.loads(response.body)["code"] == -1
    assert not batch.done(), "the batch should still be waiting on storage"
    assert max(latencies) < 0.5, latencies  # not held up by the 3 s storage timeout
    response = await batch
    assert json.loads(response.body)["data"] == {"tiny_fingerprints": []}  # unknown, nothing deleted
    assert time.monotonic() - started >= 2.5
    assert len(await store.find_by_tiny_fingerprints("ws-a", tinies)) == 8
