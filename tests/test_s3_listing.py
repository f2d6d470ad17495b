"""exists_many on the real SeaweedFS: listings answer exactly what HEADs would, bounded scans
leave the keys they did not reach to HEAD, and an unreachable storage leaves every key unknown."""
from __future__ import annotations

import time
import uuid

import pytest

from dji_media.backends import s3_listing
from dji_media.backends.s3 import MinioObjectStore
from support import BUCKET, free_port, s3_options

# Names chosen to test that S3's byte order and Python's string order agree.
NAMES = ["A.JPG", "Z.jpg", "a.jpg", "a_1.jpg", "a~.jpg", "b.MP4", "é.jpg", "ü-2.jpg", "中.jpg", "z.jpg",
         "DJI_0001.JPG", "DJI_0002.JPG", "DJI_0010.JPG", "DJI_0100.JPG"]


@pytest.fixture
def directory(put_object):
    """A mission folder: every NAMES object, plus a nested folder that must not confuse it."""
    base = f"media/ws-list/{uuid.uuid4().hex[:8]}/"
    for name in NAMES:
        put_object(base + name)
    put_object(base + "sub/A.JPG")
    return base


@pytest.mark.gen_test
async def test_listing_answers_like_head(s3, directory, put_object):
    store = MinioObjectStore(**s3_options(s3))
    try:
        present = [directory + n for n in NAMES]
        missing = [directory + n for n in ("A.jpg", "a.JPG", "a_2.jpg", "zz.jpg", "0.jpg", "中文.jpg")]
        lonely = f"media/ws-list/lonely-{uuid.uuid4().hex[:6]}/one.jpg"
        put_object(lonely)
        keys = present + missing + [directory + "sub/A.JPG", directory + "sub/B.JPG", lonely,
                                    lonely + ".missing"]
        listed, single = s3_listing.group_by_directory(keys)
        assert list(listed) == [directory]  # the folder is listed, the others are HEADed
        assert set(single) == {directory + "sub/A.JPG", directory + "sub/B.JPG", lonely, lonely + ".missing"}

        answers = await store.exists_many(keys + present[:3])  # duplicates are answered once
        expected = {k: await store.exists(k) for k in keys}  # one HEAD each: the reference
        assert answers == expected
        assert sum(answers.values()) == len(NAMES) + 2
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_a_bounded_scan_leaves_the_rest_to_head(s3, s3_admin, directory, monkeypatch):
    store = MinioObjectStore(**s3_options(s3))
    try:
        keys = sorted(directory + n for n in NAMES)
        wanted = keys[:2] + keys[-8:] + [directory + "DJI_0003.JPG"]
        monkeypatch.setattr(s3_listing, "SCAN_PER_KEY", 0)
        monkeypatch.setattr(s3_listing, "PAGE", 4)  # read at most 4 objects of the folder
        # The listing on a client of the test's own, with the same server and keys as the store's.
        answered, rest = s3_listing.list_directory(s3_admin, BUCKET, directory, wanted)
        assert rest and answered  # part listed, part left over
        assert set(answered) | set(rest) == set(wanted) and not set(answered) & set(rest)
        assert max(answered) < min(rest)
        assert answered == {k: k in keys for k in answered}

        answers = await store.exists_many(wanted)
        assert answers == {k: k in keys for k in wanted}
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_unreachable_storage_leaves_every_key_unknown(s3, directory):
    store = MinioObjectStore(**s3_options(s3, endpoint=f"http://127.0.0.1:{free_port()}"), timeout=1)
    try:
        keys = [directory + n for n in NAMES] + ["media/ws-list/other/x.jpg"]
        started = time.monotonic()
        assert await store.exists_many(keys) == {}
        assert time.monotonic() - started < 5
    finally:
        await store.close()
