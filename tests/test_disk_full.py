"""A real full disk under the SQLite database (issue "Lose nothing").

As root, a small tmpfs is mounted and holds the database file (and so its WAL). A running
`dji-media serve` records a few callbacks, then a filler file takes every free byte of the
tmpfs (written until ENOSPC). Upload-callbacks with large bodies (a few hundred KB of JSON in
``metadata``, under the 1 MiB body limit) now need SQLite to grow the WAL or the database; they
must answer 503 with the envelope (or code 0 if they happened to fit in space SQLite could
reuse, and then they must be in the file). Once the filler is deleted the same process, not
restarted, acknowledges callbacks again. After a clean stop the file holds every acknowledged
callback, none of the refused ones, and passes ``PRAGMA integrity_check``.

Mounting needs root (CAP_SYS_ADMIN) and a kernel/container that permits it; otherwise the test
skips and says why.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from loadgen import (
    MEDIA,
    Client,
    callback_acknowledged,
    callback_body,
    integrity,
    media_rows,
    new_fingerprint,
    not_intact,
)

from support import SERVE, get, start, stop, write_config

UNAVAILABLE = (503, {"code": 503, "message": "the media database is unavailable", "data": {}})
DISK_SIZE = "4m"
LARGE = 300_000  # characters of filler in metadata: well under the 1 MiB body limit


def _large_body() -> dict:
    body = callback_body(new_fingerprint())
    body["metadata"]["notes"] = os.urandom(LARGE // 2).hex()
    return body


def _mount(disk) -> str | None:
    """Mount a small tmpfs on ``disk``; the reason it cannot be done, or None."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"mount -t tmpfs is not permitted here: {done.stderr.strip()}"
    return None


def _umount(disk) -> None:
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(path) -> int:
    """Write ``path`` until the file system is full; the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    break
                raise
            written += n
            if n == 0:
                break
        # The last pages too: small writes until not one byte more fits.
        while True:
            try:
                if os.write(fd, b"\0" * 512) == 0:
                    break
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    break
                raise
            written += 512
    finally:
        os.close(fd)
    return written




def test_full_disk_answers_503_loses_nothing_and_recovers(tmp_path, s3):
    disk = tmp_path / "disk"
    disk.mkdir()
    unsupported = _mount(disk)
    if unsupported:
        pytest.skip(f"cannot make a real full disk: {unsupported}")
    try:
        db = disk / "media.sqlite3"
        config = write_config(tmp_path, s3_endpoint=s3.endpoint, media_store={
            "backend": "sqlite", "options": {"url": f"sqlite:///{db}"}})
        proc, base = start(SERVE + [config], tmp_path)
        acked, refused, other = {}, {}, []
        filler = disk / "filler"
        try:
            with Client(base) as client:
                def send(body):
                    answer = client.post(f"{MEDIA}/upload-callback", body)
                    if callback_acknowledged(answer, body):
                        acked[body["fingerprint"]] = body
                        return "acked"
                    if answer == UNAVAILABLE:
                        refused[body["fingerprint"]] = body
                        return "refused"
                    other.append((answer[0], str(answer[1])[:300]))
                    return "other"

                for _ in range(5):
                    assert send(callback_body(new_fingerprint())) == "acked"

                filled = _fill(filler)
                during = [send(_large_body()) for _ in range(8)]
                ready_during = get(base, "/readyz")

                filler.unlink()
                after = [send(_large_body()) for _ in range(3)] + [
                    send(callback_body(new_fingerprint())) for _ in range(5)]
                ready_after = get(base, "/readyz")
                alive = proc.poll() is None
        finally:
            code = stop(proc)

        rows = media_rows(db)
        check = integrity(db)
        print(f"\n[disk full] tmpfs {DISK_SIZE}, filler {filled} bytes; before: 5/5 acknowledged; "
              f"during the fault ({LARGE // 1000} KB bodies): {during.count('acked')}/{len(during)} acknowledged, "
              f"{during.count('refused')} refused with 503, other {other}; /readyz during {ready_during}; "
              f"after deleting the filler: {after.count('acked')}/{len(after)} acknowledged; "
              f"/readyz after {ready_after}; "
              f"{len(rows)} rows, integrity {check}, exit {code}")
        log = (tmp_path / "server.out").read_text()
        assert other == [], (other, log[-3000:])
        assert alive and code == 0, log[-3000:]
        assert during.count("refused") >= 1, "no callback was refused while the disk was full"
        assert after == ["acked"] * len(after), (after, log[-3000:])
        assert not_intact(rows, acked) == []
        assert not set(refused) & set(rows)
        assert set(rows) == set(acked)
        assert check == ["ok"]
        assert ready_after[0] == 200, ready_after
        # The operator is told why: the driver's own words, not the failed rollback after it.
        assert "database or disk is full" in log, log[-3000:]
    finally:
        _umount(disk)
