"""A small load driver for the process-level tests (test_crash, test_contention, test_soak).

Real `dji-media serve` processes are driven over HTTP/1.1 keep-alive connections from plain
threads (the server under test is another process, so the GIL of the test process only limits
how hard we push, not what we observe). Every answer is checked against what protocol.md says it
must be; anything else is a failure, counted with its detail. The SQLite file is read directly
with sqlite3 (read-only), as an operator would, never through the store under test.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import statistics
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from support import TOKEN

WS = "ws-cli"  # the workspace support.write_config gives support.TOKEN
MEDIA = f"/media/api/v1/workspaces/{WS}"
STS = f"/storage/api/v1/workspaces/{WS}/sts"
PREFIX = f"media/{WS}"
MISSION = "DJI_202208311455_008_Waypoint1"

Answer = Tuple[int, Dict[str, Any]]


class TransportError(Exception):
    """No HTTP answer at all: refused, reset, timed out, or the server died mid-request."""


class Client:
    """One keep-alive connection to one server; not thread-safe (one per thread)."""

    def __init__(self, base: str, *, token: str = TOKEN, timeout: float = 15.0) -> None:
        parts = urlsplit(base)
        self.base = base
        self._headers = {"X-Auth-Token": token, "Content-Type": "application/json"}
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def post(self, path: str, body: Any) -> Answer:
        data = json.dumps(body).encode()
        try:
            self._conn.request("POST", path, body=data, headers=self._headers)
            response = self._conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()  # a fresh connection next time
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        try:
            envelope = json.loads(payload)
        except ValueError:
            envelope = {"unparsable": payload[:200].decode("utf-8", "replace")}
        return response.status, envelope

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Tally:
    """Thread-safe counts of answers per (label, endpoint), and the failures with details."""

    def __init__(self, keep: int = 20) -> None:
        self._lock = threading.Lock()
        self.ok: Counter = Counter()
        self.failed: Counter = Counter()
        self.failures: List[str] = []  # the first ``keep`` details
        self._keep = keep

    def good(self, label: str, endpoint: str) -> None:
        with self._lock:
            self.ok[(label, endpoint)] += 1

    def bad(self, label: str, endpoint: str, detail: str) -> None:
        with self._lock:
            self.failed[(label, endpoint)] += 1
            if len(self.failures) < self._keep:
                self.failures.append(f"{label} {endpoint}: {detail}")

    def total(self, label: Optional[str] = None) -> int:
        with self._lock:
            return sum(n for (lbl, _), n in (self.ok + self.failed).items() if label in (None, lbl))

    def failed_total(self) -> int:
        with self._lock:
            return sum(self.failed.values())

    def by(self, index: int) -> Dict[str, int]:
        """Totals per label (index 0) or per endpoint (index 1)."""
        with self._lock:
            out: Counter = Counter()
            for key, n in (self.ok + self.failed).items():
                out[key[index]] += n
            return dict(sorted(out.items()))


def run_threads(targets: Sequence[Callable[[], None]], *, join_timeout: float) -> List[str]:
    """Run each target in its own thread, join them all within ``join_timeout`` seconds in
    total, and return the errors they raised (as text). A thread still running is an error."""
    errors: List[str] = []
    lock = threading.Lock()

    def wrap(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported, not lost in a thread
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=wrap, args=(t,), name=f"load-{i}", daemon=True)
               for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + join_timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        errors.append(f"threads still running after {join_timeout} s: {stuck}")
    return errors


# ------------------------------------------------------------------------------- requests

def new_fingerprint() -> str:
    return uuid.uuid4().hex.upper()


def tiny_of(fingerprint: str) -> str:
    return f"{fingerprint.lower()}_2022_8_31_15_16_16"


def object_key_of(fingerprint: str) -> str:
    return f"{PREFIX}/{MISSION}/DJI_{fingerprint[:16]}_W.JPG"


def callback_body(fingerprint: str, *, group: str = "g-load", sn: str = "1AD3CA2VL3LAD6") -> Dict[str, Any]:
    """A complete upload-callback as Pilot 2 sends it (protocol.md 3.4), unique per fingerprint."""
    key = object_key_of(fingerprint)
    return {
        "result": 0, "fingerprint": fingerprint, "name": key.rsplit("/", 1)[1], "path": MISSION,
        "object_key": key, "sub_file_type": 0,
        "ext": {"file_group_id": group, "drone_model_key": "0-67-0", "payload_model_key": "1-52-0",
                "is_original": True, "tinny_fingerprint": tiny_of(fingerprint), "sn": sn},
        "metadata": {"gimbal_yaw_degree": -4.3, "absolute_altitude": -36.889,
                     "relative_altitude": 100.001, "created_time": "2022-08-31T15:16:16+08:00",
                     "shoot_position": {"lat": 22.577666, "lng": 113.943194}},
    }


def callback_acknowledged(answer: Answer, body: Dict[str, Any]) -> bool:
    status, env = answer
    return status == 200 and env == {"code": 0, "message": "success",
                                      "data": {"object_key": body["object_key"]}}


# ------------------------------------------------------------------------ the SQLite file

@contextlib.contextmanager
def read_only(db_path) -> Iterable[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def media_rows(db_path, workspace: str = WS) -> Dict[str, Dict[str, Any]]:
    """fingerprint -> row (as a dict) of every media record of the workspace."""
    with read_only(db_path) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM dji_media_file WHERE workspace_id = ?", (workspace,)).fetchall()
        return {row["fingerprint"]: dict(row) for row in rows}


def integrity(db_path) -> List[str]:
    with read_only(db_path) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]


def not_intact(rows: Dict[str, Dict[str, Any]], sent: Dict[str, Dict[str, Any]]) -> List[str]:
    """Problems with the rows of the callbacks in ``sent`` (fingerprint -> body): a row missing,
    or a column (or the raw JSON) differing from what the device sent."""
    problems = []
    for fingerprint, body in sent.items():
        row = rows.get(fingerprint)
        if row is None:
            problems.append(f"{fingerprint}: missing")
            continue
        expected = {
            "object_key": body["object_key"], "name": body["name"], "path": body["path"],
            "tiny_fingerprint": body["ext"]["tinny_fingerprint"],
            "file_group_id": body["ext"]["file_group_id"], "sn": body["ext"]["sn"],
            "drone_model_key": body["ext"]["drone_model_key"],
            "created_time_text": body["metadata"]["created_time"],
            "shoot_lat": body["metadata"]["shoot_position"]["lat"],
        }
        wrong = {k: (row[k], v) for k, v in expected.items() if row[k] != v}
        if json.loads(row["raw_json"]) != body:
            wrong["raw_json"] = (row["raw_json"][:80], "the body sent")
        if wrong:
            problems.append(f"{fingerprint}: {wrong}")
    return problems


# ---------------------------------------------------------------------------- the process

def rss_kib(pid: int) -> Optional[int]:
    """VmRSS of a process in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread, at most ``limit`` times."""

    def __init__(self, pid: int, *, interval: float = 1.0, limit: int = 600) -> None:
        self.pid = pid
        self.samples: List[Tuple[float, int]] = []  # (seconds since start, KiB)
        self._interval = interval
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        for _ in range(self._limit):
            value = rss_kib(self.pid)
            if value is not None:
                self.samples.append((time.monotonic() - started, value))
            if self._stop.wait(self._interval):
                return

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def window_median(self, first: bool, seconds: float) -> float:
        """Median RSS (KiB) of the first or the last ``seconds`` of samples."""
        if not self.samples:
            raise AssertionError("no RSS samples")
        if first:
            values = [v for t, v in self.samples if t < seconds]
        else:
            end = self.samples[-1][0]
            values = [v for t, v in self.samples if t > end - seconds]
        return statistics.median(values)
