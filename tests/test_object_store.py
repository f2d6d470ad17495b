"""The object stores beyond their contract: MinioObjectStore on the real SeaweedFS (what a HEAD
reports, one storage request per listing page, the requests a check costs, the bucket rule) and
InMemoryObjectStore's test hooks (ETag and size per key, calls counted by kind)."""
from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any, List, Tuple
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from minio import Minio

from dji_media import InMemoryObjectStore, MinioObjectStore, StorageUnavailable
from dji_media.values import ListingPage, ObjectInfo
from support import ADMIN_KEY, ADMIN_SECRET, free_port, s3_options


class _RecordingPool(urllib3.PoolManager):
    """Every HTTP request minio-py sends, as (method, url): the count on the wire."""

    def __init__(self) -> None:
        super().__init__(timeout=urllib3.Timeout(connect=3, read=3), retries=urllib3.Retry(total=0))
        self.sent: List[Tuple[str, str]] = []

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:  # type: ignore[override]
        self.sent.append((method, url))
        return super().urlopen(method, url, redirect=redirect, **kw)


@pytest.fixture
def recorded(s3):
    """(store, pool): a MinioObjectStore whose client sends through a recording pool."""
    pool = _RecordingPool()
    client = Minio(s3.endpoint.split("://", 1)[1], access_key=ADMIN_KEY, secret_key=ADMIN_SECRET,
                   secure=False, region="us-east-1", http_client=pool)
    return MinioObjectStore(**s3_options(s3), client=client), pool


def _folder() -> str:
    return f"media/ws-{uuid.uuid4().hex[:8]}/"


# ---- MinioObjectStore on SeaweedFS

@pytest.mark.gen_test
async def test_stat_reports_the_md5_etag_and_the_size(s3, put_object):
    store = MinioObjectStore(**s3_options(s3))
    try:
        key = _folder() + "DJI_0001.JPG"
        for data in (b"\xff\xd8 a photo", b"another photo, overwritten"):
            put_object(key, data)
            assert await store.stat(key) == ObjectInfo(key, hashlib.md5(data).hexdigest(), len(data))
        assert store.requests == {"HeadObject": 2}
        # Absent: one HEAD, then the bucket is confirmed before "absent" is believed.
        assert await store.stat(key + ".gone") is None
        assert store.requests == {"HeadObject": 3, "HeadBucket": 1}
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_a_missing_bucket_is_never_absent(s3):
    store = MinioObjectStore(**s3_options(s3, bucket=f"no-such-bucket-{uuid.uuid4().hex[:8]}"))
    try:
        with pytest.raises(StorageUnavailable):
            await store.stat("media/ws/DJI_0001.JPG")
        with pytest.raises(StorageUnavailable):
            await store.exists("media/ws/DJI_0001.JPG")
        with pytest.raises(StorageUnavailable):
            await store.list_page("media/ws/", None)
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_list_page_sends_one_request_per_page(recorded, put_object):
    store, pool = recorded
    try:
        folder = _folder()
        keys = sorted(f"{folder}DJI_{i:04d}.JPG" for i in range(12))
        for key in keys:
            put_object(key)
        pages: List[ListingPage] = []
        after = None
        while True:
            pages.append(await store.list_page(folder, after, limit=5))
            after = pages[-1].next_start_after
            if after is None:
                break
        assert [len(p.objects) for p in pages] == [5, 5, 2]
        assert [o.key for p in pages for o in p.objects] == keys
        assert all(o.etag == hashlib.md5(b"photo").hexdigest() and o.size == 5 for p in pages for o in p.objects)
        assert store.requests == {"ListObjectsV2": 3}
        assert [method for method, _ in pool.sent] == ["GET"] * 3  # on the wire too
        queries = [parse_qs(urlsplit(url).query, keep_blank_values=True) for _, url in pool.sent]
        assert all(q["list-type"] == ["2"] and q["max-keys"] == ["5"] and q["prefix"] == [folder]
                   and q["delimiter"] == [""] for q in queries)
        assert [q.get("start-after") for q in queries] == [None, [keys[4]], [keys[9]]]
        # The default page: 1,000 keys asked in one request, and all 12 fit.
        page = await store.list_page(folder, None)
        assert len(page.objects) == 12 and page.next_start_after is None
        assert parse_qs(urlsplit(pool.sent[-1][1]).query)["max-keys"] == ["1000"]
        assert len(pool.sent) == 4
        with pytest.raises(ValueError):
            await store.list_page(folder, None, limit=0)
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_keys_that_need_escaping_list_and_stat_as_stored(s3, put_object):
    store = MinioObjectStore(**s3_options(s3))
    try:
        folder = _folder()
        names = ["a+b.jpg", "a%20c.jpg", "sp ace.jpg", "q&a=1.jpg", "semi;colon.jpg", "tab\tname.jpg",
                 "中文 照片.jpg"]
        for name in names:
            put_object(folder + name, name.encode("utf-8"))
        page = await store.list_page(folder, None, limit=100)
        assert [o.key for o in page.objects] == sorted((folder + n for n in names), key=lambda k: k.encode())
        for listed in page.objects:
            assert await store.stat(listed.key) == listed
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_exists_many_heads_each_key_and_never_lists(s3, put_object):
    """A tiny-fingerprints check costs one HEAD per key whatever the folder holds: the cost of
    a request no longer grows with the workspace."""
    store = MinioObjectStore(**s3_options(s3))
    try:
        folder = _folder()
        present = [f"{folder}DJI_{i:04d}.JPG" for i in range(150)]
        for key in present:
            put_object(key)
        asked = present[:60] + [f"{folder}gone_{i:02d}.JPG" for i in range(40)]
        answers = await store.exists_many(asked)
        assert answers == {k: k in present for k in asked}
        assert store.requests["ListObjectsV2"] == 0
        assert store.requests["HeadObject"] == 100
        assert store.requests["HeadBucket"] == 40  # one per 404, before it is believed
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_unreachable_listing_is_an_error_and_is_counted():
    store = MinioObjectStore(endpoint=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s",
                             bucket="media", timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await store.list_page("media/ws/", None)
        with pytest.raises(StorageUnavailable):
            await store.stat("media/ws/x.jpg")
        assert time.monotonic() - started < 5
        assert store.requests == {"ListObjectsV2": 1, "HeadObject": 1}
    finally:
        await store.close()


# ---- InMemoryObjectStore: the hooks tests use

@pytest.mark.gen_test
async def test_memory_store_records_etag_and_size():
    store = InMemoryObjectStore(keys=["media/ws/listed.jpg"])
    photo = hashlib.md5(b"photo").hexdigest()
    assert await store.stat("media/ws/listed.jpg") == ObjectInfo("media/ws/listed.jpg", photo, 5)
    store.put("media/ws/a.jpg", b"first")
    assert await store.stat("media/ws/a.jpg") == ObjectInfo("media/ws/a.jpg", hashlib.md5(b"first").hexdigest(), 5)
    store.put("media/ws/a.jpg", b"overwritten")
    assert await store.stat("media/ws/a.jpg") == ObjectInfo("media/ws/a.jpg", hashlib.md5(b"overwritten").hexdigest(),
                                                            11)
    store.put("media/ws/big.mp4", b"x" * 10, etag="0123abcd-3")  # as a multipart upload's ETag looks
    assert (await store.stat("media/ws/big.mp4")).etag == "0123abcd-3"
    store.keys.add("media/ws/direct.jpg")  # tests may still change the set directly
    store.keys.discard("media/ws/listed.jpg")
    assert await store.stat("media/ws/direct.jpg") == ObjectInfo("media/ws/direct.jpg", photo, 5)
    assert await store.stat("media/ws/listed.jpg") is None
    store.remove("media/ws/a.jpg")
    assert await store.stat("media/ws/a.jpg") is None
    page = await store.list_page("media/ws/", None)
    assert [o.key for o in page.objects] == ["media/ws/big.mp4", "media/ws/direct.jpg"]
    assert page.objects[0] == ObjectInfo("media/ws/big.mp4", "0123abcd-3", 10)


@pytest.mark.gen_test
async def test_memory_store_counts_calls_by_kind():
    store = InMemoryObjectStore()
    for i in range(4):
        store.put(f"media/ws/{i}.jpg")
    await store.exists_many([f"media/ws/{i}.jpg" for i in range(6)])
    await store.stat("media/ws/0.jpg")
    await store.list_page("media/ws/", None, limit=2)
    assert store.calls_by_kind == {"exists": 6, "stat": 1, "list": 1}
    assert store.calls == 8
    store.unavailable = True
    with pytest.raises(StorageUnavailable):
        await store.stat("media/ws/0.jpg")
    with pytest.raises(StorageUnavailable):
        await store.list_page("media/ws/", None)
    assert store.calls_by_kind == {"exists": 6, "stat": 2, "list": 2}  # failed calls count too
    assert store.calls_by_kind["other"] == 0
