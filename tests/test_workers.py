"""`dji-media serve --workers N`: several processes on one port, one database.

The PostgreSQL tests use the shared server of ``DJI_MEDIA_TEST_POSTGRES_URL`` (they skip, saying
so, when it is unset) with tables of their own (a random ``table_prefix``), dropped afterwards.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid

import pytest
import yaml

from dji_media import PeeweeMediaStore
from dji_media.backends.peewee_store import open_database
from dji_media.runtime import Restart, RestartPolicy
from dji_media.workers import worker_restart_policy
from support import (
    SERVE,
    TOKEN,
    database_url_for,
    drop_store_tables,
    free_port,
    new_table_prefix,
    pilot2_round,
    post,
    run_cli,
    start,
    stop,
    write_config,
)

WS = "ws-cli"
MEDIA = f"/media/api/v1/workspaces/{WS}"


class BuiltOnce(PeeweeMediaStore):
    """A store that refuses to be built a second time: the supervisor builds it for its start-up
    checks, so every worker fails to start."""

    def __init__(self, *, marker: str, **options) -> None:
        if os.path.exists(marker):
            raise ValueError("this store was already built once")
        open(marker, "w").close()
        super().__init__(**options)


@pytest.fixture
def postgres():
    """(url, table prefix, a connection of the test's own); the tables are dropped afterwards."""
    url, prefix = database_url_for("postgresql", None), new_table_prefix("w")
    db = open_database(url, max_connections=1)
    db.connect()
    yield url, prefix, db
    drop_store_tables(db, prefix)
    db.close_all()


def config_file(tmp_path, s3, *, workers, media_store=None, level="warning", window=0.0, port=0):
    path = write_config(tmp_path, s3_endpoint=s3.endpoint, media_store=media_store, port=port,
                        server_extra={"workers": workers, "demo_banner": False})
    with open(path) as fh:
        settings = yaml.safe_load(fh)
    settings["logging"]["level"] = level
    settings["service"] = {"verify_window_seconds": window}
    with open(path, "w") as fh:
        yaml.safe_dump(settings, fh)
    return path


def children(pid):
    """Live child processes of ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                state, ppid = fh.read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == pid and state != "Z":
            found.append(int(entry))
    return sorted(found)


def alive(pid):
    """Running, not a zombie (an orphan's zombie may wait for a container's init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def announced_pids(tmp_path):
    found = re.search(r"workers \(pids ([\d ]+)\)", (tmp_path / "server.out").read_text())
    return sorted(int(p) for p in found.group(1).split())


def port_closed(base):
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def callback(i, fingerprint):
    return {"result": 0, "fingerprint": fingerprint, "object_key": f"media/{WS}/{fingerprint}.jpg",
            "name": f"DJI_{i:04d}.JPG", "path": "mission", "ext": {"drone_model_key": "0-67-0"}}


def test_four_workers_on_postgresql_keep_one_record_per_fingerprint(tmp_path, s3, postgres, put_object):
    url, prefix, db = postgres
    config = config_file(tmp_path, s3, workers=4, level="info", window=60.0,
                         media_store={"backend": "peewee", "options": {"url": url, "table_prefix": prefix}})
    proc, base = start(SERVE + [config], tmp_path)
    try:
        pids = announced_pids(tmp_path)
        assert len(pids) == 4 and children(proc.pid) == pids  # four worker processes of the parent

        fingerprints = [f"FP{uuid.uuid4().hex[:6]}{n:02d}" for n in range(20)]
        for fp in fingerprints:
            put_object(f"media/{WS}/{fp}.jpg")  # the device's upload, so fast-upload may answer 0

        # 200 requests on 200 connections, 20 at a time: each fingerprint gets 5 callbacks and
        # 5 fast-uploads, interleaved, through whichever worker accepts the connection.
        def one(i):
            fp = fingerprints[i % 20]
            if (i // 20) % 2 == 0:
                return "callback", post(base, f"{MEDIA}/upload-callback", callback(i, fp))
            return "fast-upload", post(base, f"{MEDIA}/fast-upload", {"fingerprint": fp})

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(one, range(200)))
        callbacks = [a for kind, a in answers if kind == "callback"]
        fast = [a for kind, a in answers if kind == "fast-upload"]
        assert len(callbacks) == 100 and all(s == 200 and e["code"] == 0 for s, e in callbacks), callbacks
        # Before a fingerprint's first callback is stored it is unknown (-1); never an error.
        assert all(s == 200 and e["code"] in (0, -1) for s, e in fast), fast
        for fp in fingerprints:
            assert post(base, f"{MEDIA}/fast-upload", {"fingerprint": fp})[1]["code"] == 0

        rows = db.execute_sql(f"SELECT fingerprint, COUNT(*), MAX(revision) FROM {prefix}media_file "
                              "WHERE workspace_id = %s GROUP BY fingerprint", (WS,)).fetchall()
        assert sorted(rows) == sorted((fp, 1, 5) for fp in fingerprints)  # one record, five writes each
    finally:
        status = stop(proc)
    assert status == 0
    logs = (tmp_path / "server.out").read_text()
    answered = {int(p) for p in re.findall(r"\[(\d+)\] INFO tornado\.access: 200 POST", logs)}
    assert answered == set(pids), "every worker answers requests"
    assert "ERROR" not in logs and "Traceback" not in logs, logs


def test_sigterm_drains_every_worker(tmp_path, s3, postgres):
    url, prefix, db = postgres
    config = config_file(tmp_path, s3, workers=4, media_store={
        "backend": "slow_backends:SlowMediaStore", "options": {"url": url, "table_prefix": prefix, "delay": 1.5}})
    proc, base = start(SERVE + [config], tmp_path)
    pids = announced_pids(tmp_path)
    answers = []
    bodies = [callback(i, f"INFLIGHT{i}") for i in range(8)]
    threads = [threading.Thread(target=lambda b=b: answers.append(post(base, f"{MEDIA}/upload-callback", b)))
               for b in bodies]
    for thread in threads:
        thread.start()
    time.sleep(0.7)  # every callback is now waiting on its (slow) write, in several workers
    proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=20)
    assert proc.wait(timeout=20) == 0
    assert sorted(e["data"]["object_key"] for s, e in answers if s == 200 and e["code"] == 0) == sorted(
        b["object_key"] for b in bodies)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)  # all workers exited and were reaped
    assert port_closed(base)
    rows = db.execute_sql(f"SELECT COUNT(*) FROM {prefix}media_file WHERE fingerprint LIKE 'INFLIGHT%%'").fetchone()
    assert rows == (8,)


def test_sqlite_workers_and_a_killed_worker_is_replaced(tmp_path, s3):
    config = config_file(tmp_path, s3, workers=2, level="info")
    proc, base = start(SERVE + [config], tmp_path)
    try:
        pids = announced_pids(tmp_path)
        assert len(pids) == 2 and children(proc.pid) == pids
        pilot2_round(base, WS)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # both processes write one SQLite file
            answers = list(pool.map(lambda i: post(base, f"{MEDIA}/upload-callback", callback(i, f"SQ{i % 8}")),
                                    range(40)))
        assert all(s == 200 and e["code"] == 0 for s, e in answers), answers

        os.kill(pids[0], signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline:
            now = children(proc.pid)
            if len(now) == 2 and pids[0] not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and pids[0] not in now and pids[1] in now, now
        replacement = (set(now) - set(pids)).pop()
        for _ in range(20):  # 20 connections: the kernel hands some to the replacement
            assert post(base, f"{MEDIA}/fast-upload", {"fingerprint": "UNKNOWN"})[1]["code"] == -1
    finally:
        status = stop(proc)
    assert status == 0
    logs = (tmp_path / "server.out").read_text()
    assert re.search(rf"ERROR dji_media.workers: worker 1 \(pid {pids[0]}\) was killed by SIGKILL after "
                     r"[\d.]+ s; starting a replacement in 0.5 s", logs), logs
    assert re.search(rf"\[{replacement}\] INFO tornado\.access: 200 POST", logs), "the replacement serves"
    assert not os.path.exists(f"/proc/{replacement}")
    with sqlite3.connect(tmp_path / "media.sqlite3") as conn:
        rows = conn.execute("SELECT fingerprint, revision FROM dji_media_file WHERE fingerprint LIKE 'SQ%' "
                            "ORDER BY fingerprint").fetchall()
    conn.close()
    assert rows == [(f"SQ{n}", 5) for n in range(8)]


def test_workers_stop_when_the_supervisor_is_killed(tmp_path, s3):
    proc, base = start(SERVE + [config_file(tmp_path, s3, workers=2)], tmp_path)
    pids = announced_pids(tmp_path)
    proc.kill()  # SIGKILL: nothing of the supervisor runs any more
    proc.wait()
    deadline = time.time() + 10
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids), "orphaned workers keep serving"
    assert port_closed(base)
    assert (tmp_path / "server.out").read_text().count("the supervising process is gone; stopping") == 2


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_replacements_back_off_then_a_crash_loop_gives_up():
    """The supervisor's policy alone (no processes, no waiting): the delay doubles while
    replacements die within a minute of starting, and the eighth such death in a row gives up."""
    clock = FakeClock()
    policy = worker_restart_policy(clock=clock)
    decisions = []
    for _ in range(8):
        policy.started(1)
        clock.now += 2.5
        decisions.append(policy.failed(1))
    assert [d.delay for d in decisions] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, None]
    assert [d.failures for d in decisions] == list(range(1, 9))
    assert {d.ran for d in decisions} == {2.5}


def test_a_worker_that_ran_a_minute_starts_again_from_the_first_delay():
    clock = FakeClock()
    policy = worker_restart_policy(clock=clock)
    for _ in range(3):
        policy.started(2)
        clock.now += 1
        policy.failed(2)
    policy.started(2)
    clock.now += 61
    assert policy.failed(2) == Restart(delay=0.5, failures=1, ran=61.0)
    policy.started(2)
    clock.now += 1
    assert policy.failed(2).delay == 1.0  # and counts up again from there


def test_each_slot_backs_off_on_its_own():
    clock = FakeClock()
    policy = worker_restart_policy(clock=clock)
    for slot in (1, 1, 1, 2):
        policy.started(slot)
        clock.now += 1
        last = policy.failed(slot)
    assert last.delay == 0.5  # slot 2's first death, whatever slot 1 did


def test_a_policy_without_a_limit_retries_for_ever_at_the_longest_delay():
    policy = RestartPolicy(first_delay=1.0, max_delay=60.0, clock=FakeClock())
    for _ in range(2000):  # no float overflow however long it keeps failing
        policy.started("task")
        last = policy.failed("task")
    assert last == Restart(delay=60.0, failures=2000, ran=0.0)


@pytest.mark.parametrize("options", [dict(first_delay=-1), dict(first_delay=5, max_delay=1),
                                     dict(stable_seconds=0), dict(max_quick_failures=0)])
def test_a_policy_that_makes_no_sense_is_refused(options):
    with pytest.raises(ValueError):
        RestartPolicy(**options)


# The supervisor with a policy that gives up after two quick deaths, as a host would inject it.
CRASH_LOOP_SUPERVISOR = """
import logging, sys
from dji_media.config import load_config
from dji_media.runtime import RestartPolicy
from dji_media.workers import supervise
logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
sys.exit(supervise(load_config(sys.argv[1]),
                   restart=RestartPolicy(first_delay=0.2, max_delay=0.2, max_quick_failures=2)))
"""


def test_a_worker_that_keeps_dying_stops_the_server(tmp_path, s3):
    script = tmp_path / "supervise.py"
    script.write_text(CRASH_LOOP_SUPERVISOR)
    proc, base = start([sys.executable, str(script), config_file(tmp_path, s3, workers=2)], tmp_path)
    try:
        pids = announced_pids(tmp_path)
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.time() + 10
        now = children(proc.pid)
        while time.time() < deadline and not (len(now) == 2 and pids[0] not in now):
            time.sleep(0.05)
            now = children(proc.pid)
        replacement = (set(now) - set(pids)).pop()
        time.sleep(0.5)  # let the replacement report ready
        os.kill(replacement, signal.SIGKILL)  # the same slot dies again within a minute: given up
        assert proc.wait(timeout=30) == 1
    finally:
        stop(proc)
    logs = (tmp_path / "server.out").read_text()
    assert re.search(r"dji-media: worker \d keeps dying \(was killed by SIGKILL\); stopping", logs), logs
    assert re.search(r"ERROR dji_media.workers: worker \d \(pid \d+\) was killed by SIGKILL; it died 2 times "
                     r"in a row within 60 s of starting, so it is not replaced", logs), logs
    assert not any(alive(pid) for pid in pids + [replacement])
    assert port_closed(base)


def test_sighup_to_the_supervisor_drains_every_worker(tmp_path, s3):
    """Closing the terminal (SIGHUP) stops every worker cleanly, as SIGTERM does."""
    proc, base = start(SERVE + [config_file(tmp_path, s3, workers=2, level="info")], tmp_path)
    pids = announced_pids(tmp_path)
    pilot2_round(base, WS)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in pids)
    assert port_closed(base)
    logs = (tmp_path / "server.out").read_text()
    assert logs.count("INFO dji_media.server: shutting down") == 2, logs  # each worker drained
    assert "ERROR" not in logs and "Traceback" not in logs, logs


def test_workers_must_be_at_least_one(tmp_path, s3):
    config = config_file(tmp_path, s3, workers=1)
    for value in ("0", "-2", "two"):
        result = run_cli("serve", "--config", config, "--workers", value)
        assert result.returncode == 2 and "argument --workers: must be" in result.stderr, result.stderr
        assert "listening" not in result.stdout
    bad = config_file(tmp_path, s3, workers=0)
    result = run_cli("serve", "--config", bad)
    assert result.returncode == 2
    assert result.stderr.strip() == "dji-media: configuration error: server.workers: must be >= 1"


def test_workers_refuse_memory_backends(tmp_path, s3):
    config = config_file(tmp_path, s3, workers=1, media_store={"backend": "memory"})
    result = run_cli("serve", "--config", config, "--workers", "3")  # the flag wins over the file
    assert result.returncode == 2
    assert result.stderr.startswith("dji-media: server.workers: 3 workers cannot share the in-memory media_store")


def test_a_port_in_use_is_refused_as_with_one_process(tmp_path, s3):
    # The workers' sockets share the port (SO_REUSEPORT); a second server must still not join.
    port = free_port()
    first, _ = start(SERVE + [config_file(tmp_path, s3, workers=2, port=port)], tmp_path)
    try:
        other = tmp_path / "other"
        other.mkdir()
        result = run_cli("serve", "--config", config_file(other, s3, workers=2, port=port), timeout=30)
        assert result.returncode == 2
        assert result.stderr.strip() == f"dji-media: server: cannot listen on 127.0.0.1:{port}: Address already in use"
    finally:
        assert stop(first) == 0


def test_start_up_checks_run_once_with_one_line(tmp_path, s3):
    config = config_file(tmp_path, s3, workers=3)
    with open(config) as fh:
        text = fh.read()
    with open(config, "w") as fh:
        fh.write(text.replace(s3.endpoint, "http://127.0.0.1:1"))  # storage that refuses connections
    result = run_cli("serve", "--config", config, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dji-media: storage: storage is unreachable"), result.stderr
    assert result.stdout == ""  # no banner, no workers


def test_a_worker_that_cannot_start_stops_the_server(tmp_path, s3):
    marker = tmp_path / "built"
    config = config_file(tmp_path, s3, workers=2, media_store={"backend": "test_workers:BuiltOnce", "options": {
        "url": f"sqlite:///{tmp_path}/media.sqlite3", "marker": str(marker)}})
    result = run_cli("serve", "--config", config, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "listening" not in result.stdout  # no banner: the server never served
    assert "dji-media: worker 1: media_store.options: this store was already built once" in result.stderr
    assert re.search(r"dji-media: worker \d \(pid \d+\) exited with status 3 before it was ready; stopping",
                     result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_one_worker_is_one_process(tmp_path, s3):
    proc, base = start(SERVE + [config_file(tmp_path, s3, workers=1)], tmp_path)
    try:
        assert children(proc.pid) == []
        assert post(base, f"{MEDIA}/fast-upload", {"fingerprint": "X"}, token=TOKEN)[1]["code"] == -1
    finally:
        assert stop(proc) == 0
    assert "workers (pids" not in (tmp_path / "server.out").read_text()
