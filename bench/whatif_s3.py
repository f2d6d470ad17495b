"""EXPERIMENT, not for production: storage checks by listing instead of one HEAD per object.

``exists()`` calls made in the same event-loop iteration are collected; keys that share a
"directory" are answered by one ListObjectsV2 over that directory (starting just before the
smallest key, stopping after the largest), the rest by HEAD. A key absent from a successful
listing of an existing bucket counts as gone, like a HEAD 404. Needs
``service.verify_concurrency`` at least the number of records per request (else the service
releases only that many checks at a time). Used by ``bench/run.py --object-store-backend
bench.whatif_s3:ListingObjectStore --service-option verify_concurrency=1000``.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Set, Tuple

from dji_media.backends.s3 import MinioObjectStore
from dji_media.errors import StorageUnavailable

LIST_THRESHOLD = 8  # fewer keys than this in one directory: HEAD them


class ListingObjectStore(MinioObjectStore):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending: List[Tuple[str, asyncio.Future]] = []

    async def exists(self, object_key: str) -> bool:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((object_key, future))
        if len(self._pending) == 1:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    def _check_many(self, keys: List[str]) -> Dict[str, bool]:
        groups: Dict[str, List[str]] = {}
        for key in keys:
            groups.setdefault(key.rsplit("/", 1)[0] + "/" if "/" in key else "", []).append(key)
        answer: Dict[str, bool] = {}
        for directory, members in groups.items():
            if len(members) < LIST_THRESHOLD:
                for key in members:
                    answer[key] = self._head(key)
                continue
            wanted: Set[str] = set(members)
            low, high = min(members), max(members)
            found: Set[str] = set()
            for obj in self._client.list_objects(self.bucket, prefix=directory, start_after=low[:-1] or None):
                name = obj.object_name
                if name > high:
                    break
                if name in wanted:
                    found.add(name)
            if len(found) < len(wanted) and not self._client.bucket_exists(self.bucket):
                raise StorageUnavailable(f"bucket {self.bucket!r} does not exist")
            for key in members:
                answer[key] = key in found
        return answer

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        keys = list(dict.fromkeys(k for k, _ in batch))
        try:
            answer = await self._runner.run(self._guarded, self._check_many, keys)
        except Exception as exc:  # noqa: BLE001 - StorageUnavailable, handed to every waiter
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for key, future in batch:
            if not future.done():
                future.set_result(answer[key])
