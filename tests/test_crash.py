"""A server killed mid-flood loses no acknowledged callback (issue "Lose nothing").

A real `dji-media serve` process on a SQLite file takes upload-callbacks from several client
threads and is killed with SIGKILL while they are still sending: no shutdown handler runs, and
requests are in flight. Every callback that was answered code 0 before the kill must then be in
the file, intact, read with sqlite3 directly (fast-upload cannot prove presence: it also asks the
bucket, and these objects were never uploaded). The file must pass ``PRAGMA integrity_check``,
hold nothing that was never sent, and a server restarted on it must answer and know the files.

SIGKILL tests process death, not power loss: what the kernel has accepted survives either way,
so this proves the server only acknowledges a callback once its transaction has committed.

Figures measured on the development machine (2 cores; run with ``-s`` to print them): 8
threads, kill after 300 acknowledgements: 300 acknowledged before the kill, 8 in flight at the
kill (sent, no answer; 0 or 1 of them committed before the kill and so is in the file), 300-301
rows after it, all 300 acknowledged ones intact, integrity "ok", restart answering in 0.9-1.8 s.
"""
from __future__ import annotations

import io
import signal
import threading
import time

from loadgen import (
    MEDIA,
    Client,
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

from support import BUCKET, SERVE, pilot2_round, post, start, write_config

THREADS = 8
KILL_AFTER = 300  # acknowledged callbacks before the kill
PER_THREAD_MAX = 2000  # bounds every loop even if the kill never comes
FLOOD_SECONDS = 30.0


def test_sigkill_mid_flood_loses_no_acknowledged_callback(tmp_path, s3, s3_admin):
    config = write_config(tmp_path, s3_endpoint=s3.endpoint)
    db = tmp_path / "media.sqlite3"
    proc, base = start(SERVE + [config], tmp_path)
    lock = threading.Lock()
    acked = {}  # fingerprint -> body, answered code 0 before the kill
    in_doubt = {}  # sent, but no answer came: the kill hit them in flight (or before they landed)
    refused = []  # answers that were neither code 0 nor "no answer"
    killed = threading.Event()
    enough = threading.Event()
    deadline = time.monotonic() + FLOOD_SECONDS

    def flood() -> None:
        with Client(base) as client:
            for _ in range(PER_THREAD_MAX):
                if time.monotonic() > deadline:
                    return
                fingerprint = new_fingerprint()
                body = callback_body(fingerprint)
                try:
                    answer = client.post(f"{MEDIA}/upload-callback", body)
                except TransportError as exc:
                    with lock:
                        in_doubt[fingerprint] = body
                    if killed.is_set():
                        return  # the server is gone: expected
                    raise AssertionError(f"no answer before the kill: {exc}") from None
                with lock:
                    if callback_acknowledged(answer, body):
                        acked[fingerprint] = body
                        if len(acked) >= KILL_AFTER:
                            enough.set()
                    else:
                        refused.append(answer)

    errors: list = []
    workers = threading.Thread(target=lambda: errors.extend(
        run_threads([flood] * THREADS, join_timeout=FLOOD_SECONDS + 20)))
    try:
        workers.start()
        assert enough.wait(FLOOD_SECONDS), f"only {len(acked)} callbacks acknowledged"
        killed.set()
        proc.send_signal(signal.SIGKILL)  # mid-flood: every thread is sending
        assert proc.wait(timeout=10) == -signal.SIGKILL
        with lock:
            acked_at_kill = len(acked)
        workers.join(FLOOD_SECONDS + 30)
        assert not workers.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    assert errors == [] and refused == [], (errors, refused[:5])
    # After the kill nothing can be acknowledged any more.
    assert len(acked) == acked_at_kill

    # The file as the killed process left it (hot WAL and all), before anything reopens it
    # for writing.
    rows = media_rows(db)
    assert integrity(db) == ["ok"]
    assert not_intact(rows, acked) == []
    assert set(rows) <= set(acked) | set(in_doubt), "rows nobody sent"
    landed = len(set(rows) & set(in_doubt))
    print(f"\n[crash] {THREADS} threads; {len(acked)} callbacks acknowledged before SIGKILL, "
          f"{len(in_doubt)} in flight at the kill ({landed} of them landed); "
          f"{len(rows)} rows after the kill, all {len(acked)} acknowledged ones intact; "
          f"integrity_check ok")

    # A server restarted on the same file (a new port) answers and knows the files.
    restart_dir = tmp_path / "restart"
    restart_dir.mkdir()
    started = time.monotonic()
    proc, base = start(SERVE + [config], restart_dir)
    try:
        print(f"[crash] restarted on the same database in {time.monotonic() - started:.2f} s")
        # Upload the bytes of a few acknowledged files: fast-upload and tiny-fingerprints
        # then report them known, which proves the restarted server reads the records.
        sample = sorted(acked)[:5]
        for fingerprint in sample:
            s3_admin.put_object(BUCKET, acked[fingerprint]["object_key"], io.BytesIO(b"photo"), 5)
        for fingerprint in sample:
            status, env = post(base, f"{MEDIA}/fast-upload", {"fingerprint": fingerprint})
            assert (status, env["code"]) == (200, 0), env
        status, env = post(base, f"{MEDIA}/files/tiny-fingerprints",
                           {"tiny_fingerprints": [tiny_of(f) for f in sample] + ["unknown_1"]})
        assert env["data"] == {"tiny_fingerprints": [tiny_of(f) for f in sample]}, env
        pilot2_round(base, "ws-cli")  # every endpoint answers, writes included
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    after = media_rows(db)
    assert integrity(db) == ["ok"]
    assert not_intact(after, acked) == []
    assert len(after) == len(rows) + 1  # pilot2_round's one file
