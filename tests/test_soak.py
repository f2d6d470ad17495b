"""Soak: many devices run Pilot 2's whole flow against one `dji-media serve` for a minute
(issue "Lose nothing").

Each of 20 device threads repeats, file after file: fast-upload (unknown) -> tiny-fingerprints
(not held) -> sts -> PUT of the bytes to the real S3 server with the temporary credentials, as
the device does -> upload-callback -> fast-upload (now known) -> tiny-fingerprints (now held),
and a group-upload-callback every few files. For at least 60 s, against one server process on a
SQLite file:

* zero failed requests: every answer is exactly what protocol.md prescribes;
* zero lost records: every acknowledged callback is in the SQLite file, intact (read directly);
* no memory growth: the server's RSS (VmRSS from /proc/<pid>/status, sampled once a second from
  the start of the load) has a median over the last 10 s at most 20 MB above its median over
  the first 10 s. Medians, not single samples, so one momentary peak (a garbage collection, a
  burst of buffers) neither fails nor hides a trend; first against last window, so what the
  load adds over the minute counts, and the start-up cost does not.

The figures are printed (``pytest -s``); measured on the development machine (2 cores, the
devices share them with the server and the S3 server): 61.2 s, 3,355 files, 20,793 requests
(340/s) + 3,355 S3 PUTs, 0 failed, 3,355 rows; RSS median 60.0 MB in the first 10 s, 60.8 MB in
the last 10 s (+0.8 MB).
"""
from __future__ import annotations

import io
import os
import threading
import time

import pytest
import urllib3
from loadgen import (
    MEDIA,
    PREFIX,
    STS,
    Client,
    RssSampler,
    Tally,
    TransportError,
    callback_acknowledged,
    callback_body,
    integrity,
    media_rows,
    new_fingerprint,
    not_intact,
    run_threads,
    tiny_of,
)
from minio import Minio
from minio.credentials import StaticProvider

from support import BUCKET, SERVE, start, stop, write_config

DEVICES = 20
DURATION = 61.0  # seconds of load; "at least 60"
PER_DEVICE_MAX = 5000  # files per device: bounds the loop whatever the clock does
WINDOW = 10.0  # seconds at each end of the run whose RSS medians are compared
MAX_GROWTH_KIB = 20 * 1024
GROUP_EVERY = 5  # files per group-upload-callback

SUCCESS = {"code": 0, "message": "success", "data": {}}


def sts_ok(answer, grant) -> bool:
    """An sts answer with credentials for the workspace's prefix; its data goes into ``grant``."""
    data = answer[1].get("data") or {}
    good = (answer[0] == 200 and answer[1].get("code") == 0 and data.get("object_key_prefix") == PREFIX
            and bool((data.get("credentials") or {}).get("security_token")))
    if good:
        grant.update(data)
    return good


@pytest.mark.soak
def test_soak_full_flow_many_devices(tmp_path, s3, s3_admin):
    config = write_config(tmp_path, s3_endpoint=s3.endpoint)
    db = tmp_path / "media.sqlite3"
    proc, base = start(SERVE + [config], tmp_path)
    tally = Tally()
    puts = Tally()
    lock = threading.Lock()
    acked = {}  # fingerprint -> callback body
    sampler = RssSampler(proc.pid, interval=1.0, limit=int(DURATION) + 60)
    deadline = time.monotonic() + DURATION

    def device(index: int) -> None:
        label = f"d{index}"
        pool = urllib3.PoolManager(maxsize=2, timeout=urllib3.Timeout(connect=10, read=30),
                                   retries=False)
        storage, storage_key = None, None
        group, in_group = f"g-soak-{index}", 0

        def step(client, endpoint, path, payload, check) -> bool:
            """One request; True when the answer is the expected one, else counted as failed."""
            try:
                answer = client.post(path, payload)
            except TransportError as exc:
                tally.bad(label, endpoint, f"no answer: {exc}")
                return False
            if check(answer):
                tally.good(label, endpoint)
                return True
            tally.bad(label, endpoint, f"{answer[0]} {str(answer[1])[:200]}")
            return False

        with Client(base) as client:
            try:
                for _ in range(PER_DEVICE_MAX):
                    if time.monotonic() > deadline:
                        return
                    fingerprint = new_fingerprint()
                    tiny = tiny_of(fingerprint)
                    body = callback_body(fingerprint, group=group, sn=f"SN-{index:04d}")

                    if not step(client, "fast-upload miss", f"{MEDIA}/fast-upload",
                                {"fingerprint": fingerprint, "name": body["name"],
                                 "ext": {"tinny_fingerprint": tiny}},
                                lambda a: a[0] == 200 and a[1]["code"] == -1):
                        continue
                    if not step(client, "tiny miss", f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": [tiny]},
                                lambda a: a == (200, dict(SUCCESS, data={"tiny_fingerprints": []}))):
                        continue
                    grant = {}
                    if not step(client, "sts", STS, {}, lambda a, grant=grant: sts_ok(a, grant)):
                        continue
                    # The bytes go straight to storage with the temporary credentials.
                    creds = grant["credentials"]
                    if storage_key != creds["access_key_id"]:
                        scheme, host = grant["endpoint"].split("://", 1)
                        storage = Minio(host, secure=scheme == "https", region=grant["region"], http_client=pool,
                                        credentials=StaticProvider(creds["access_key_id"],
                                                                   creds["access_key_secret"],
                                                                   creds["security_token"]))
                        storage_key = creds["access_key_id"]
                    photo = os.urandom(1024 + index * 64)
                    try:
                        storage.put_object(grant["bucket"], body["object_key"], io.BytesIO(photo), len(photo))
                        puts.good(label, "put")
                    except Exception as exc:  # any storage failure is a failed request here
                        puts.bad(label, "put", f"{type(exc).__name__}: {exc}")
                        continue
                    if not step(client, "upload-callback", f"{MEDIA}/upload-callback", body,
                                lambda a, body=body: callback_acknowledged(a, body)):
                        continue
                    with lock:
                        acked[fingerprint] = body
                    step(client, "fast-upload hit", f"{MEDIA}/fast-upload", {"fingerprint": fingerprint},
                         lambda a: a == (200, SUCCESS))
                    step(client, "tiny hit", f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": [tiny]},
                         lambda a, tiny=tiny: a == (200, dict(SUCCESS, data={"tiny_fingerprints": [tiny]})))
                    in_group += 1
                    if in_group % GROUP_EVERY == 0:
                        step(client, "group-upload-callback", f"{MEDIA}/group-upload-callback",
                             {"file_group_id": group, "file_count": in_group, "file_uploaded_count": in_group},
                             lambda a: a == (200, SUCCESS))
            finally:
                pool.clear()

    started = time.monotonic()
    sampler.start()
    try:
        errors = run_threads([lambda i=i: device(i) for i in range(DEVICES)], join_timeout=DURATION + 90)
        elapsed = time.monotonic() - started
        sampler.stop()
        alive = proc.poll() is None
    finally:
        sampler.stop()
        code = stop(proc)

    first = sampler.window_median(True, WINDOW)
    last = sampler.window_median(False, WINDOW)
    rows = media_rows(db)
    requests = tally.total()
    print(f"\n[soak] {DEVICES} devices, {elapsed:.1f} s: {len(acked)} files acknowledged, "
          f"{requests} requests ({requests / elapsed:.0f}/s) + {puts.total()} S3 PUTs, "
          f"{tally.failed_total() + puts.failed_total()} failed; per endpoint {tally.by(1)}; "
          f"{len(rows)} rows; server RSS median first {WINDOW:.0f} s {first / 1024:.1f} MB, "
          f"last {WINDOW:.0f} s {last / 1024:.1f} MB, growth {(last - first) / 1024:+.1f} MB "
          f"(peak {max(v for _, v in sampler.samples) / 1024:.1f} MB, {len(sampler.samples)} samples)")

    assert errors == []
    assert tally.failed_total() == 0 and puts.failed_total() == 0, tally.failures + puts.failures
    assert alive and code == 0
    assert elapsed >= 60 and len(acked) >= DEVICES * 10
    # Zero lost records: every acknowledged callback is in the file, intact, and nothing else.
    assert not_intact(rows, acked) == []
    assert set(rows) == set(acked)
    assert integrity(db) == ["ok"]
    assert last - first < MAX_GROWTH_KIB, f"RSS grew by {(last - first) / 1024:.1f} MB"
    # Every object the records point at really is in the bucket.
    sample = sorted(acked)[:20]
    for fingerprint in sample:
        assert s3_admin.stat_object(BUCKET, acked[fingerprint]["object_key"]).size > 0
