"""Bulk population of the benchmark's workspace: a fleet's worth of objects and records in
minutes, without 100,000 HTTP calls through the server.

* Objects: PUT straight into the bucket with the admin keys (minio-py), from many threads on
  one connection pool, each thread taking every n-th key (no future per object). The objects
  are tiny: what a fleet's folder costs the server is the number of keys, not their bytes.
* Records: ``PeeweeMediaStore.insert_missing``, the store's public import path (what
  ``dji-media import`` uses), in batches, with the times a device's callbacks would have left:
  written some minutes after the capture, months ago, never confirmed by storage. The storage
  sweep then confirms them, as it would in a deployment.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import io
import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from scenarios import WORKSPACE, Layout, file_callback_body

# A record is written this long after its file's capture (the aircraft lands, the pilot syncs).
UPLOAD_DELAY = _dt.timedelta(minutes=20)


def put_objects(layout: Layout, *, endpoint: str, access_key: str, secret_key: str, bucket: str,
                region: str, threads: int, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """PUT every object of the layout (files, then the unrecorded ones); returns the timing."""
    import urllib3
    from minio import Minio

    # One pool with a connection per thread (urllib3 keeps 10 by default, and the rest of the
    # threads would open and close a connection per PUT).
    http = urllib3.PoolManager(maxsize=threads, block=True,
                               timeout=urllib3.Timeout(connect=5.0, read=60.0),
                               retries=urllib3.Retry(total=5, backoff_factor=0.2,
                                                     status_forcelist=(500, 502, 503, 504)))
    client = Minio(endpoint.split("://", 1)[1], access_key=access_key, secret_key=secret_key,
                   secure=endpoint.startswith("https://"), region=region, http_client=http)
    total = layout.total_objects
    done = [0]
    failures: List[BaseException] = []
    lock = threading.Lock()

    def item(n: int):
        if n < layout.objects:
            return layout.object_key(n), layout.payload(n), "image/jpeg"
        j = n - layout.objects
        return layout.unrecorded_key(j), b"\x00\x00\x00\x18ftypmp42 bench %d" % j, "video/mp4"

    def worker(first: int) -> None:
        count = 0
        try:
            for n in range(first, total, threads):
                if failures:
                    return
                key, body, content_type = item(n)
                client.put_object(bucket, key, io.BytesIO(body), len(body), content_type=content_type)
                count += 1
                if count == 500:
                    with lock:
                        done[0] += count
                    count = 0
        except BaseException as exc:  # reported by the caller; the other threads stop
            failures.append(exc)
        finally:
            with lock:
                done[0] += count

    started = time.time()
    cpu = time.process_time()
    pool = [threading.Thread(target=worker, args=(k,), name=f"put-{k}", daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    last = started
    while any(t.is_alive() for t in pool):
        for t in pool:
            t.join(0.5)
        if progress is not None and time.time() - last >= 15:
            last = time.time()
            progress(f"  objects: {done[0]:,}/{total:,} in {last - started:.0f} s")
    http.clear()
    if failures:
        raise RuntimeError(f"PUT failed: {failures[0]!r}")
    seconds = time.time() - started
    return {"objects": total, "seconds": round(seconds, 1), "per_second": round(total / seconds, 1),
            "threads": threads, "client_cpu_s": round(time.process_time() - cpu, 1)}


def make_record(layout: Layout, i: int) -> Any:
    """The record file ``i``'s upload-callback would have written."""
    from dji_media.values import MediaFile, MediaRecord

    body = file_callback_body(layout, i)
    ext, meta = body["ext"], body["metadata"]
    captured = layout.capture_time(i)
    written = captured.astimezone(_dt.timezone.utc) + UPLOAD_DELAY
    return MediaRecord(
        workspace_id=WORKSPACE,
        file=MediaFile(
            fingerprint=body["fingerprint"], object_key=body["object_key"], tiny_fingerprint=ext["tinny_fingerprint"],
            name=body["name"], path=body["path"], sub_file_type=body["sub_file_type"],
            file_group_id=ext["file_group_id"], drone_model_key=ext["drone_model_key"],
            payload_model_key=ext["payload_model_key"], is_original=ext["is_original"], sn=ext["sn"],
            gimbal_yaw_degree=meta["gimbal_yaw_degree"], absolute_altitude=meta["absolute_altitude"],
            relative_altitude=meta["relative_altitude"], created_time=captured.astimezone(_dt.timezone.utc),
            created_time_text=meta["created_time"], shoot_lat=meta["shoot_position"]["lat"],
            shoot_lng=meta["shoot_position"]["lng"], raw_json=json.dumps(body, separators=(",", ":")),
        ),
        revision=1, created_at=written, updated_at=written,
    )


def insert_records(layout: Layout, store_options: Dict[str, Any], batch: int = 5000,
                   progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Insert the layout's records through the store's import path; returns the timing."""
    from dji_media.backends.peewee_store import PeeweeMediaStore

    async def go() -> Dict[str, Any]:
        store = PeeweeMediaStore(**store_options)
        started = time.time()
        last = started
        try:
            for first in range(0, layout.records, batch):
                records = [make_record(layout, i) for i in range(first, min(layout.records, first + batch))]
                inserted = await store.insert_missing(records)
                if not all(inserted):
                    raise RuntimeError(f"{inserted.count(False)} record(s) of batch {first} were not inserted "
                                       "(the database is not empty?)")
                if progress is not None and time.time() - last >= 15:
                    last = time.time()
                    progress(f"  records: {first + len(records):,}/{layout.records:,} in {last - started:.0f} s")
        finally:
            await store.close()
        seconds = time.time() - started
        return {"records": layout.records, "seconds": round(seconds, 1),
                "per_second": round(layout.records / seconds, 1), "batch": batch}

    return asyncio.run(go())
