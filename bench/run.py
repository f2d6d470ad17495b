"""The dji_media benchmark: the example server against a constant-response floor.

    python bench/run.py [--duration 10] [--rounds 3] [--connections 16] [--files 2000] \
                        [--json bench/results.json]

Starts SeaweedFS (temp dir), two example servers as separate processes (``python -m
dji_media.cli serve``: SQLite, or ``--database-url`` with tables of the run's own, STS, static
token, ``--workers`` processes each; one with the verification window on, one with it off) and
the floor (``bench/floor.py``), populates ``--files`` files through the real flow
(sts, PUT with the temporary credentials, upload-callback), then measures every scenario for a
fixed time with a fixed number of keep-alive connections against the server and the floor,
``--rounds`` times, and reports the median over the rounds. See bench/README.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)  # the checkout's dji_media, also for the child processes (PYTHONPATH)

import scenarios  # noqa: E402
from scenarios import SCENARIOS, TOKEN, WORKSPACE  # noqa: E402

ADMIN_KEY = "bench-admin"
ADMIN_SECRET = "bench-admin-secret"
BUCKET = "media"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))

# (scenario, metric, comparison, bound, text). "ratio" is server req/s over floor req/s.
TARGETS = [
    ("fast-upload-hit", "ratio", ">=", 0.60, "fast-upload hit >= 60% of floor req/s"),
    ("fast-upload-miss", "ratio", ">=", 0.70, "fast-upload miss >= 70% of floor req/s"),
    ("sts", "ratio", ">=", 0.70, "sts (cached) >= 70% of floor req/s"),
    ("upload-callback", "ratio", ">=", 0.40, "upload-callback >= 40% of floor req/s"),
    ("tiny-1000", "p50_ms", "<=", 20.0, "tiny-fingerprints 1,000 (500 known) warm p50 <= 20 ms"),
    ("tiny-1000-nowindow", "p50_ms", "<=", 400.0,
     "tiny-fingerprints 1,000 (500 known) window disabled p50 <= 400 ms"),
]
RSS_LIMIT_MB = 120.0
TAIL_FACTOR = 5.0  # p99 <= 5 x p50


# ------------------------------------------------------------------------------ processes

class Child:
    """A process this benchmark started; stopped by its own pid only."""

    def __init__(self, name: str, cmd: List[str], log_path: str, pattern: str, cwd: str) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=ENV,
                                         stdin=subprocess.DEVNULL, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            found = re.search(pattern, self._log())
            if found:
                self.base = found.group(1).rstrip("/")
                self.port = int(self.base.rsplit(":", 1)[1])
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start:\n{self._log()[-3000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> List[int]:
        """This process and its children (a server's workers), read now: a replaced worker has
        a new pid. The embedded S3 server is not started by the servers here."""
        return [self.pid] + child_pids(self.pid)

    def _log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def rss_mb(self) -> Dict[str, Any]:
        """Resident memory summed over the process and its workers. VmRSS counts the pages a
        forked worker still shares with the parent once per process; Pss splits them, so the
        sum of Pss is what the group really holds."""
        pids = self.pids()
        each = [proc_memory_mb(pid) for pid in pids]
        total: Dict[str, Any] = {}
        for key in ("VmRSS", "VmHWM", "Pss"):
            values = [m[key] for m in each]
            total[key] = None if None in values else round(sum(values), 1)
        total["processes"] = len(pids)
        total["each"] = {str(pid): m for pid, m in zip(pids, each)}
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def child_pids(pid: int) -> List[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state, ppid = fh.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != b"Z":
            found.append(int(entry))
    return sorted(found)


def proc_memory_mb(pid: int) -> Dict[str, Optional[float]]:
    """VmRSS and its peak VmHWM (/proc/<pid>/status) and Pss (/proc/<pid>/smaps_rollup), in MB."""
    values: Dict[str, Optional[float]] = {"VmRSS": None, "VmHWM": None, "Pss": None}
    for path in (f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"):
        try:
            with open(path) as fh:
                for line in fh:
                    key = line.split(":", 1)[0]
                    if key in values and values[key] is None:
                        values[key] = round(int(line.split()[1]) / 1024.0, 1)
        except (OSError, ValueError, IndexError):
            pass
    return values


DATABASE_PROCESSES = {"postgresql": ("postgres", "postmaster"), "mysql": ("mysqld", "mariadbd")}


def database_pids(url: Optional[str]) -> List[int]:
    """The processes of a database server on this machine (by name), so that its CPU shows as
    "db cpu" rather than as other people's work; none for SQLite or a remote server."""
    if not url:
        return []
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    names = DATABASE_PROCESSES.get(parts.scheme.split("+", 1)[0], ())
    if not names or (parts.hostname or "localhost") not in ("127.0.0.1", "::1", "localhost"):
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() in names:
                        found.append(int(entry))
            except OSError:
                continue
    return sorted(found)


def mask_url(url: Optional[str]) -> Optional[str]:
    """A database URL without its password, for the report and the JSON file."""
    return None if url is None else re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def drop_tables(url: str, prefix: str) -> None:
    """Remove the tables this run created in a shared database."""
    from dji_media.backends.peewee_store import _build_models, open_database

    db = open_database(url, max_connections=1)
    try:
        db.connect()
        db.drop_tables(_build_models(db, prefix), safe=True)
    finally:
        db.close_all()


def analyze_tables(url: str, prefix: str) -> None:
    """Give the database server's planner statistics for the populated tables, as autovacuum
    does on a server configured by default. Without them (a new table, autovacuum off)
    PostgreSQL answers tiny-fingerprints by reading every row of the workspace: it guesses the
    workspace holds a couple of dozen rows and prefers any index on workspace_id."""
    from dji_media.backends.peewee_store import _build_models, open_database

    db = open_database(url, max_connections=1)
    try:
        db.connect()
        for model in _build_models(db, prefix):
            table = db.quote[0] + model._meta.table_name + db.quote[-1]
            db.execute_sql(f"ANALYZE TABLE {table}" if url.startswith("mysql") else f"ANALYZE {table}")
    finally:
        db.close_all()


def server_config(tmp: str, name: str, s3_endpoint: str, window: float, args: argparse.Namespace) -> str:
    import yaml

    storage = {"endpoint": s3_endpoint, "access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "bucket": BUCKET}
    store_options: Dict[str, Any] = {"url": f"sqlite:///{tmp}/media.sqlite3"}
    if args.database_url:
        # Both servers on the same tables (as they share the SQLite file otherwise); a prefix of
        # this run's own, so runs on one database do not see each other's rows.
        store_options = {"url": args.database_url, "table_prefix": args.table_prefix}
    if args.sqlite_synchronous:
        store_options["synchronous"] = args.sqlite_synchronous
    for item in args.store_option:
        key, _, value = item.partition("=")
        store_options[key] = yaml.safe_load(value)
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "demo_banner": False},
        "logging": {"level": args.log_level},
        "service": dict({"verify_window_seconds": window}, **{
            k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.service_option)}),
        "media_store": {"backend": args.media_store_backend, "options": store_options},
        "object_store": {"backend": args.object_store_backend, "options": dict(storage, timeout=5.0)},
        "credentials": {"backend": "sts", "options": dict(storage, public_endpoint=s3_endpoint)},
        "authenticator": {"backend": "static", "options": {"tokens": {TOKEN: [WORKSPACE]}}},
    }
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh)
    return path


def start_server(tmp: str, name: str, config: str, workers: int) -> Child:
    return Child(name, [sys.executable, "-m", "dji_media.cli", "serve", "--config", config,
                        "--workers", str(workers)],
                 os.path.join(tmp, f"{name}.log"), r"listening on (https?://\S+)", cwd=tmp)


# ------------------------------------------------------------------------------ plain requests

def post(base: str, route_path: str, body: Any, token: str = TOKEN, timeout: float = 60) -> Tuple[int, Dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base + route_path, data=data, method="POST",
                                     headers={"X-Auth-Token": token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def populate(base: str, files: int, threads: int) -> float:
    """Each file through the real flow: sts, PUT with the temporary credentials, upload-callback."""
    from minio import Minio

    routes = scenarios.paths(WORKSPACE)
    clients: Dict[str, Any] = {}
    lock = threading.Lock()

    def client_for(data: Dict) -> Any:
        creds = data["credentials"]
        with lock:
            client = clients.get(creds["access_key_id"])
            if client is None:
                endpoint = data["endpoint"]
                client = Minio(endpoint.split("://", 1)[1], access_key=creds["access_key_id"],
                               secret_key=creds["access_key_secret"], session_token=creds["security_token"],
                               secure=endpoint.startswith("https://"), region=data["region"])
                clients[creds["access_key_id"]] = client
        return client

    def one(i: int) -> None:
        status, answer = post(base, routes["sts"], {})
        if status != 200 or answer.get("code") != 0:
            raise RuntimeError(f"sts failed: {status} {answer}")
        data = answer["data"]
        key = scenarios.object_key(WORKSPACE, i)
        if not key.startswith(data["object_key_prefix"] + "/"):
            raise RuntimeError(f"object key {key} outside the granted prefix {data['object_key_prefix']}")
        payload = b"\xff\xd8bench-photo-%d" % i
        client_for(data).put_object(data["bucket"], key, io.BytesIO(payload), len(payload),
                                    content_type="image/jpeg")
        body = scenarios.callback_body(WORKSPACE, i, scenarios.known_fingerprint(i), scenarios.known_tiny(i), key)
        status, answer = post(base, routes["upload-callback"], body)
        if status != 200 or answer.get("code") != 0 or answer["data"].get("object_key") != key:
            raise RuntimeError(f"upload-callback failed: {status} {answer}")

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in concurrent.futures.as_completed([pool.submit(one, i) for i in range(files)]):
            future.result()
    return time.time() - started


def warm_window(base: str, files: int) -> None:
    """Have the warm server check every populated object once (so hits are within the window)."""
    route = scenarios.paths(WORKSPACE)["tiny-fingerprints"]
    for start in range(0, files, 1000):
        wanted = [scenarios.known_tiny(i) for i in range(start, min(files, start + 1000))]
        status, answer = post(base, route, {"tiny_fingerprints": wanted})
        if status != 200 or answer["data"]["tiny_fingerprints"] != wanted:
            raise RuntimeError(f"warm-up: not every populated file is reported present: {status}")


def preflight(name: str, base: str, is_floor: bool, files: int) -> None:
    """One request of the scenario, checked in full (the load generator checks status and code only)."""
    s = SCENARIOS[name]
    route = scenarios.paths(WORKSPACE)[s.route]
    if name == "upload-callback":
        body = scenarios.CallbackBodies(WORKSPACE, "pre%s" % ("f" if is_floor else "s")).body(999, 0)
    else:
        body = scenarios.static_bodies(name, files)[0]
    status, answer = post(base, route, body)
    expect = scenarios.FLOOR_EXPECT if is_floor else s.expect
    problem = None
    if status != 200 or answer.get("code") != expect or not isinstance(answer.get("data"), dict):
        problem = f"HTTP {status}, {answer}"
    elif not is_floor and s.route == "tiny-fingerprints":
        expected = scenarios.tiny_request_lists(s.count, s.known, files)[0][1]
        if answer["data"].get("tiny_fingerprints") != expected:
            problem = f"answered {len(answer['data'].get('tiny_fingerprints', []))} known, expected {len(expected)}"
    elif not is_floor and name == "sts":
        creds = answer["data"].get("credentials") or {}
        if not creds.get("access_key_id") or not isinstance(creds.get("expire"), int):
            problem = f"no usable credentials: {answer}"
    elif not is_floor and name == "upload-callback":
        if not answer["data"].get("object_key", "").startswith(f"media/{WORKSPACE}/"):
            problem = f"no object_key: {answer}"
    if problem:
        raise RuntimeError(f"pre-flight {name} against the {'floor' if is_floor else 'server'}: {problem}")


# ------------------------------------------------------------------------------ measuring

def run_loadgen(spec: Dict[str, Any]) -> Dict[str, Any]:
    limit = float(spec["warmup"]) + float(spec["duration"]) + float(spec["request_timeout"]) + 90
    proc = subprocess.run([sys.executable, os.path.join(HERE, "loadgen.py")], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=limit, cwd=HERE)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"loadgen failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None
    if "fatal" in result:
        raise RuntimeError(f"loadgen failed: {result['fatal']}\n{proc.stderr[-3000:]}")
    return result


class Profiler:
    """py-spy on the server while one scenario runs (when --profile asks and py-spy exists).

    Two recordings at once: ``gil`` samples only the thread holding the GIL, so its shares are
    shares of the server's Python CPU time; ``wall`` samples every thread that is not idle,
    which also shows time spent in C with the GIL released (SQLite, fsync, socket reads).
    """

    def __init__(self, pid: int, seconds: float, out_prefix: str, subprocesses: bool = False) -> None:
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(exe):
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        self.rate = 250
        self.seconds = max(1, int(seconds))
        self.outputs = {"gil": out_prefix + ".gil.txt", "wall": out_prefix + ".wall.txt"}
        self.procs = {}
        for mode, path in self.outputs.items():
            extra = (["--gil"] if mode == "gil" else []) + (["--subprocesses"] if subprocesses else [])
            self.procs[mode] = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(self.seconds), "--rate", str(self.rate),
                 "--format", "raw", "--threads", "--nonblocking", "--output", path, *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(self) -> Optional[Dict[str, Any]]:
        out: Dict[str, Any] = {}
        for mode, proc in self.procs.items():
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                continue
            if not os.path.exists(self.outputs[mode]):
                print(f"  py-spy ({mode}) wrote nothing: {err[-500:]}")
                continue
            out[mode] = summarise_profile(self.outputs[mode], self.rate * self.seconds)
        return out or None


def _frame_name(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    path = m.group(2)
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if path.startswith(ROOT):
        path = os.path.relpath(path, ROOT)
    return f"{m.group(1)} ({path})"


def _thread_group(frame: str) -> str:
    # "thread (1234): dji-db_2" -> "dji-db"
    name = frame.split(":", 1)[-1].strip()
    return re.sub(r"_\d+$", "", name) or frame


def summarise_profile(raw_path: str, possible: int, top: int = 30) -> Dict[str, Any]:
    """Self and inclusive shares per function, and per thread group, from py-spy's collapsed
    stacks. ``busy`` is samples / (rate x seconds): for the gil recording, the share of the
    time some thread held the GIL."""
    self_t: Dict[str, int] = {}
    incl: Dict[str, int] = {}
    groups: Dict[str, int] = {}
    group_self: Dict[str, Dict[str, int]] = {}
    total = 0
    with open(raw_path) as fh:
        for line in fh:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            group = _thread_group(frames[0])
            frames = [_frame_name(f) for f in frames[1:] if f.strip() and not f.startswith(" (")]
            frames = frames or ["<no python frame>"]
            total += count
            groups[group] = groups.get(group, 0) + count
            self_t[frames[-1]] = self_t.get(frames[-1], 0) + count
            mine = group_self.setdefault(group, {})
            mine[frames[-1]] = mine.get(frames[-1], 0) + count
            for f in set(frames):
                incl[f] = incl.get(f, 0) + count

    def ranked(table: Dict[str, int], n: int = top) -> List[List[Any]]:
        return [[round(100.0 * v / total, 1), k] for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:n]]

    return {"samples": total, "busy": round(total / possible, 3) if possible else None,
            "threads": ranked(groups), "self": ranked(self_t), "inclusive": ranked(incl),
            "self_by_thread": {g: ranked(t, 12) for g, t in group_self.items()},
            "raw": os.path.relpath(raw_path, ROOT) if raw_path.startswith(ROOT) else raw_path}


def others_cores(r: Dict[str, Any]) -> Optional[float]:
    """CPU (in cores) used during the window by processes other than the load generator, the
    process under test and SeaweedFS: other people's work on a shared machine."""
    if r.get("machine_busy") is None:
        return None
    ours = (r.get("loadgen_util") or 0) + sum(v or 0 for v in r["proc_util"].values())
    return round(max(0.0, r["machine_busy"] * (os.cpu_count() or 1) - ours), 2)


NOISY_CORES = 0.25  # above this, other work competed with the measurement


def med(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(runs: List[Dict[str, Any]], names: List[str]) -> Dict[str, Any]:
    summary: Dict[str, Any] = {}
    for name in names:
        entry: Dict[str, Any] = {}
        for target in ("server", "floor"):
            mine = [r for r in runs if r["scenario"] == name and r["target"] == target]
            if not mine:
                continue
            entry[target] = {
                "connections": mine[0]["connections"],
                "rps": med([r["rps"] for r in mine]),
                "p50_ms": med([r["p50_ms"] for r in mine]),
                "p90_ms": med([r["p90_ms"] for r in mine]),
                "p99_ms": med([r["p99_ms"] for r in mine]),
                "errors": sum(r["errors"] for r in mine),  # every round counts, not the median
                "requests": sum(r["requests"] for r in mine),
                "loadgen_cpu_s": med([r["loadgen_cpu_s"] for r in mine]),
                "loadgen_util": med([r["loadgen_util"] for r in mine]),
                "target_util": med([r["proc_util"].get("target") for r in mine]),
                "s3_util": med([r["proc_util"].get("s3") for r in mine]),
                "db_util": med([r["proc_util"].get("db") for r in mine]),
                "machine_busy": med([r["machine_busy"] for r in mine]),
                "others_cores": med([r.get("others_cores") for r in mine]),
                "others_cores_max": max((r.get("others_cores") or 0) for r in mine),
                "rounds_rps": [r["rps"] for r in mine],
            }
        ratios = [r["ratio"] for r in runs if r["scenario"] == name and r["target"] == "server"
                  and r.get("ratio") is not None]
        entry["ratio"] = med(ratios)  # median of the per-round ratios (server and floor measured together)
        entry["rounds_ratio"] = ratios
        summary[name] = entry
    return summary


def evaluate(summary: Dict[str, Any], rss: Dict[str, Dict[str, Optional[float]]]) -> List[Dict[str, Any]]:
    results = []

    def add(text: str, value: Optional[float], ok: Optional[bool], unit: str = "") -> None:
        results.append({"target": text, "value": value, "unit": unit,
                        "result": "n/a" if ok is None else ("PASS" if ok else "MISS")})

    for name, metric, op, bound, text in TARGETS:
        if name not in summary or "server" not in summary[name]:
            continue
        value = summary[name]["ratio"] if metric == "ratio" else summary[name]["server"][metric]
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        add(text, value, ok, "x floor" if metric == "ratio" else "ms")
    for name, entry in summary.items():
        server = entry.get("server")
        if not server:
            continue
        add(f"{name}: zero errors", server["errors"], server["errors"] == 0, "errors")
        tail = None if not server["p50_ms"] else round(server["p99_ms"] / server["p50_ms"], 2)
        add(f"{name}: p99 <= {TAIL_FACTOR:g} x p50", tail, None if tail is None else tail <= TAIL_FACTOR,
            "x p50")
    for name, values in rss.items():
        # The limit is per serving process: a server with workers has them and its parent.
        value, limit = values.get("VmRSS"), RSS_LIMIT_MB * (values.get("processes") or 1)
        add(f"{name} RSS after the benchmark <= {limit:g} MB"
            + (f" ({values['processes']} processes, {RSS_LIMIT_MB:g} MB each)" if limit != RSS_LIMIT_MB else ""),
            value, None if value is None else value <= limit, "MB")
    return results


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(summary: Dict[str, Any]) -> None:
    head = (f"{'scenario':<20} {'conn':>4} {'server req/s':>12} {'floor req/s':>11} {'ratio':>6} "
            f"{'server p50/p90/p99 ms':>23} {'floor p50/p90/p99 ms':>21} {'err':>4} "
            f"{'lg cpu':>7} {'srv cpu':>7} {'s3 cpu':>6} {'db cpu':>6} {'others':>6}")
    print(head)
    print("-" * len(head))
    for name, entry in summary.items():
        s, f = entry.get("server", {}), entry.get("floor", {})
        lat = lambda d: "/".join(fmt(d.get(k), 2 if (d.get(k) or 99) < 10 else 1)  # noqa: E731
                                 for k in ("p50_ms", "p90_ms", "p99_ms")) if d else "-"
        pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        print(f"{name:<20} {s.get('connections', ''):>4} {fmt(s.get('rps')):>12} {fmt(f.get('rps')):>11} "
              f"{fmt(entry.get('ratio'), 2):>6} {lat(s):>23} {lat(f):>21} {s.get('errors', 0):>4} "
              f"{pct(s.get('loadgen_util')):>7} {pct(s.get('target_util')):>7} {pct(s.get('s3_util')):>6} "
              f"{pct(s.get('db_util')):>6} "
              f"{fmt(max(s.get('others_cores_max') or 0, f.get('others_cores_max') or 0), 2):>6}")


# ------------------------------------------------------------------------------ main

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dji_media benchmark: the example server against a constant floor")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario and target")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each number is reported as its median")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (throughput scenarios)")
    p.add_argument("--tiny-connections", type=int, default=1,
                   help="keep-alive connections for the tiny-fingerprints scenarios (latency targets)")
    p.add_argument("--files", type=int, default=2000, help="files populated through the real flow")
    p.add_argument("--window", type=float, default=3600.0,
                   help="service.verify_window_seconds of the warm server (must outlast the run)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset to run")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes per measurement")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--populate-threads", type=int, default=8)
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="the servers' logging.level (info logs every request through tornado.access)")
    p.add_argument("--sqlite-synchronous", choices=["off", "normal", "full", "extra"], default=None,
                   help="media_store.options.synchronous (default: the library's)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes of each server (dji-media serve --workers N)")
    p.add_argument("--database-url", default=None, metavar="URL",
                   help="a PostgreSQL or MySQL database instead of a SQLite file in the temp dir, e.g. "
                        "postgresql://postgres@127.0.0.1:5432/test (tables of this run's own, dropped afterwards)")
    p.add_argument("--media-store-backend", default=None,
                   help="media_store.backend for both servers (default: sqlite, or peewee with --database-url; "
                        "or module:Class of an experimental store)")
    p.add_argument("--object-store-backend", default="minio",
                   help="object_store.backend for both servers (or module:Class of an experimental one)")
    p.add_argument("--service-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra service settings for both servers, e.g. verify_concurrency=1000 (repeatable)")
    p.add_argument("--store-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra media_store.options for both servers, e.g. max_workers=1 (repeatable)")
    p.add_argument("--profile", default="", help="comma-separated scenarios to profile with py-spy (last round)")
    p.add_argument("--profile-dir", default=os.path.join(HERE, "profiles"))
    p.add_argument("--json", default=os.path.join(HERE, "results.json"), help="where to write the results")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    args.names = names
    args.profile_names = [n.strip() for n in args.profile.split(",") if n.strip()]
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1 or args.files < 1000:
        p.error("need --duration > 0, --rounds >= 1, --connections >= 1, --files >= 1000")
    if args.workers < 1:
        p.error("need --workers >= 1")
    if args.database_url and args.database_url.startswith("sqlite"):
        p.error("--database-url is for PostgreSQL or MySQL; SQLite is the default (a file in the temp dir)")
    if args.media_store_backend is None:
        args.media_store_backend = "peewee" if args.database_url else "sqlite"
    return args


def git_revision() -> Optional[str]:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "dji_media"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else None
    except OSError:
        return None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from dji_media.embedded_s3 import EmbeddedS3

    started = time.time()
    tmp = tempfile.mkdtemp(prefix="dji-bench-")
    run_id = "%04x" % random.randrange(0x10000)
    args.table_prefix = f"bench{run_id}_" if args.database_url else None
    database = (f"{mask_url(args.database_url)} (tables {args.table_prefix}*)" if args.database_url
                else "SQLite in the temp dir")
    print(f"dji_media benchmark {run_id}: {args.rounds} round(s) x {len(args.names)} scenario(s), "
          f"{args.duration:g} s each (+{args.warmup:g} s warm-up); temp dir {tmp}")
    print(f"servers: {args.workers} worker(s) each; database: {database}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          f"(other work on the machine shows in the 'machine' column)")
    s3 = EmbeddedS3(data_dir=os.path.join(tmp, "seaweedfs"), access_key=ADMIN_KEY, secret_key=ADMIN_SECRET,
                    buckets=[BUCKET])
    children: List[Child] = []
    runs: List[Dict[str, Any]] = []
    profiles: Dict[str, Any] = {}
    try:
        s3.start()
        warm = start_server(tmp, "server-window", server_config(tmp, "server-window", s3.endpoint, args.window, args),
                            args.workers)
        children.append(warm)
        floor = Child("floor", [sys.executable, os.path.join(HERE, "floor.py"), "--port", "0"],
                      os.path.join(tmp, "floor.log"), r"listening on (https?://\S+)", cwd=tmp)
        children.append(floor)
        print(f"SeaweedFS {s3.endpoint} (pid {s3.pid}); server {warm.base} (pid {warm.pid}"
              + (f", workers {' '.join(map(str, child_pids(warm.pid)))}" if args.workers > 1 else "")
              + f", window {args.window:g} s); floor {floor.base} (pid {floor.pid})")
        took = populate(warm.base, args.files, args.populate_threads)
        print(f"populated {args.files} files (sts, PUT, upload-callback) in {took:.1f} s")
        warm_window(warm.base, args.files)
        if args.database_url:
            analyze_tables(args.database_url, args.table_prefix)
            print("analyzed the populated tables (planner statistics, as autovacuum would)")
        cold = None
        if any(SCENARIOS[n].server == "cold" for n in args.names):
            # Same database: the window-disabled server sees the same files.
            cold = start_server(tmp, "server-nowindow",
                                server_config(tmp, "server-nowindow", s3.endpoint, 0.0, args), args.workers)
            children.append(cold)
            print(f"server without window {cold.base} (pid {cold.pid})")
        servers = {"warm": warm, "cold": cold}
        for name in args.names:
            preflight(name, servers[SCENARIOS[name].server].base, False, args.files)
            if SCENARIOS[name].floor_as is None:
                preflight(name, floor.base, True, args.files)
        print("pre-flight checks passed\n")

        for rnd in range(1, args.rounds + 1):
            floor_results: Dict[str, Dict[str, Any]] = {}
            for name in args.names:
                s = SCENARIOS[name]
                conns = args.tiny_connections if s.conns == "tiny" else args.connections
                order = ["server", "floor"] if rnd % 2 else ["floor", "server"]
                if s.floor_as is not None:
                    order = ["server"]  # shares the floor measurement of s.floor_as
                pair: Dict[str, Dict[str, Any]] = {}
                for target in order:
                    child = servers[s.server] if target == "server" else floor
                    db_pids = database_pids(args.database_url)  # read now: backends come and go
                    spec = {
                        "host": "127.0.0.1", "port": child.port, "scenario": name, "target_name": target,
                        "workspace": WORKSPACE, "token": TOKEN, "files": args.files, "connections": conns,
                        "duration": args.duration, "warmup": args.warmup, "procs": args.loadgen_procs,
                        "request_timeout": args.request_timeout,
                        "expect": s.expect if target == "server" else scenarios.FLOOR_EXPECT,
                        "tag": f"{run_id}{rnd:02d}{target[0]}",
                        # A server's parent and its workers, summed (the parent is idle).
                        "watch_pids": {"target": child.pids(), **({"s3": s3.pid} if s3.pid else {}),
                                       **({"db": db_pids} if db_pids else {})},
                    }
                    profiler = None
                    if target == "server" and name in args.profile_names and rnd == args.rounds:
                        os.makedirs(args.profile_dir, exist_ok=True)
                        profiler = Profiler(child.pid, args.warmup + args.duration,
                                            os.path.join(args.profile_dir, name), subprocesses=args.workers > 1)
                    result = run_loadgen(spec)
                    if profiler is not None:
                        summary_ = profiler.finish()
                        if summary_:
                            profiles[name] = summary_
                    result.update(round=rnd, target=target, others_cores=others_cores(result))
                    pair[target] = result
                    runs.append(result)
                if "floor" in pair:
                    floor_results[name] = pair["floor"]
                floor_ref = pair.get("floor") or floor_results.get(s.floor_as or "")
                server = pair["server"]
                server["ratio"] = (round(server["rps"] / floor_ref["rps"], 3)
                                   if floor_ref and floor_ref["rps"] else None)
                for target in ("server", "floor"):
                    r = pair.get(target)
                    if r is None:
                        continue
                    util = r["proc_util"].get("target")
                    util_text = "-" if util is None else f"{100 * util:.0f}%"
                    each = r.get("proc_util_each", {}).get("target")
                    if each:  # the parent first, then each worker: how evenly they shared the load
                        util_text += " (" + "/".join("-" if u is None else f"{100 * u:.0f}" for u in each) + ")"
                    db_util = r["proc_util"].get("db")
                    if db_util is not None:
                        util_text += f"  db cpu {100 * db_util:.0f}%"
                    busy = r["machine_busy"]
                    busy_text = "-" if busy is None else f"{100 * busy:.0f}%"
                    if r["others_cores"] is not None:
                        busy_text += f" (others {r['others_cores']:.2f} cores)"
                    print(f"round {rnd}/{args.rounds} {name:<19} {target:<6} {r['connections']:>3}c "
                          f"{r['rps']:>8.1f} req/s  p50 {r['p50_ms']:>7.2f}  p90 {r['p90_ms']:>7.2f}  "
                          f"p99 {r['p99_ms']:>7.2f} ms  err {r['errors']:>3}  loadgen cpu "
                          f"{100 * r['loadgen_util']:>3.0f}%  {target} cpu {util_text:>4}  machine {busy_text}"
                          + (f"  ratio {server['ratio']:.2f}" if target == "server" and server["ratio"] else "")
                          + (f"  errors: {r['error_samples'][:2]}" if r["errors"] else ""))

        rss = {f"server ({c.name})": c.rss_mb() for c in (warm, cold) if c is not None}
        summary = summarise(runs, args.names)
        targets = evaluate(summary, {k: v for k, v in rss.items()})
        print(f"\nmedian of {args.rounds} round(s); ratio = median of per-round server/floor req/s; "
              "cpu = share of one core during the measured window; others = cores used by other "
              "processes (max over the measurements; srv cpu sums a server's workers; db cpu is a "
              "database server on this machine)")
        print(f"servers: {args.workers} worker(s) each; database: {database}\n")
        print_table(summary)
        noisy = [r for r in runs if (r.get("others_cores") or 0) > NOISY_CORES]
        if noisy:
            print(f"\nWARNING: in {len(noisy)} of {len(runs)} measurements other processes used more than "
                  f"{NOISY_CORES} cores (max {max(r['others_cores'] for r in noisy):.2f}); on a 2-core machine "
                  "that distorts the numbers (a single-threaded floor loses more than the multi-threaded "
                  "server, so ratios look better). Re-run on a quiet machine.")
        print()
        for name, values in rss.items():
            group = (f" summed over {values['processes']} processes (parent + {values['processes'] - 1} workers; "
                     f"Pss {values['Pss']} MB counts their shared pages once)" if values["processes"] > 1 else "")
            print(f"{name}: VmRSS {values['VmRSS']} MB (peak VmHWM {values['VmHWM']} MB){group}")
        print()
        for t in targets:
            value = t["value"]
            shown = "-" if value is None else (f"{value:g}" if isinstance(value, int) else f"{value:.3g}")
            print(f"{t['result']:<5} {t['target']:<62} {shown} {t['unit']}")
        for name, modes in profiles.items():
            for mode, prof in modes.items():
                print(f"\nprofile of the server under {name}, {mode} ({prof['samples']} samples, "
                      f"busy {fmt(100 * (prof['busy'] or 0), 0)}% of the window, raw: {prof['raw']}):")
                print("  by thread: " + ", ".join(f"{p}% {k}" for p, k in prof["threads"][:6]))
                print("  self:")
                for pct_, func in prof["self"][:15]:
                    print(f"    {pct_:5.1f}%  {func}")
                print("  inclusive:")
                for pct_, func in prof["inclusive"][:30]:
                    print(f"    {pct_:5.1f}%  {func}")

        result = {
            "meta": {
                "run_id": run_id, "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
                "seconds": round(time.time() - started, 1), "git": git_revision(),
                "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "loadavg_end": os.getloadavg(),
                "args": {k: (mask_url(v) if k == "database_url" else v) for k, v in vars(args).items()},
                "workers": args.workers, "database": "sqlite" if not args.database_url else {
                    "url": mask_url(args.database_url), "table_prefix": args.table_prefix},
                "targets_note": "ratio = median of per-round server/floor req/s; errors summed over rounds",
                "noisy_measurements": sum(1 for r in runs if (r.get("others_cores") or 0) > NOISY_CORES),
            },
            "summary": summary, "targets": targets, "rss_mb": rss, "profiles": profiles,
            "runs": [{k: v for k, v in r.items()} for r in runs],
        }
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
            print(f"\nresults written to {args.json}  ({time.time() - started:.0f} s in all)")
        return 0 if all(t["result"] != "MISS" for t in targets) else 1
    finally:
        for child in reversed(children):
            child.stop()
        s3.stop()
        if args.database_url and not args.keep:
            try:
                drop_tables(args.database_url, args.table_prefix)
            except Exception as exc:  # report, but do not hide the run's own outcome
                print(f"could not drop the tables {args.table_prefix}*: {exc}")
        if args.keep:
            print(f"kept {tmp}" + (f" and the tables {args.table_prefix}*" if args.database_url else ""))
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
