"""The dji_media benchmark: the example server on a fleet-sized workspace, against a
constant-response floor.

    python bench/run.py [--objects 100000] [--duration 10] [--rounds 3] [--connections 16] \
                        [--json bench/results.json]
    python bench/run.py --quick          # 5,000 objects, 1 round x 2 s: a smoke run

Starts SeaweedFS (temp dir); bulk-loads a workspace laid out the way Pilot 2 writes it
(``--objects`` objects PUT straight into the bucket, their records inserted straight into the
store, a few thousand objects without records); runs one pass of the storage sweep
(``dji-media sweep``) and reports it; starts the example server (``python -m dji_media.cli
serve``) with the ``service`` and ``sweep`` settings of the shipped conf/example.yaml, and the
floor (``bench/floor.py``); then measures every scenario for a fixed time with a fixed number
of keep-alive connections against the server and the floor, ``--rounds`` times, and reports
the median over the rounds, with the server's CPU time per request. See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
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
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)  # the checkout's dji_media, also for the child processes (PYTHONPATH)

import fleet  # noqa: E402
import scenarios  # noqa: E402
from loadgen import _proc_ticks  # noqa: E402
from scenarios import SCENARIOS, TOKEN, WORKSPACE, Layout  # noqa: E402

ADMIN_KEY = "bench-admin"
ADMIN_SECRET = "bench-admin-secret"
BUCKET = "media"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
SHIPPED_CONFIG = os.path.join(ROOT, "conf", "example.yaml")

# What the targets assume; a run under other conditions still evaluates them, and says so.
TARGET_OBJECTS = 100_000
TARGET_CONNECTIONS = 16

# (scenario, metric, comparison, bound, text). "ratio" is server req/s over floor req/s;
# "cpu_ms" the server's CPU time per correct response (median over the rounds).
TARGETS = [
    ("tiny-1000", "cpu_ms", "<=", 10.0, "tiny-fingerprints 1,000 (500 known) server CPU <= 10 ms/request"),
    ("tiny-100", "cpu_ms", "<=", 2.0, "tiny-fingerprints 100 (50 known) server CPU <= 2 ms/request"),
    ("fast-upload-hit", "ratio", ">=", 0.70, "fast-upload known file >= 70% of floor req/s"),
    ("upload-callback", "ratio", ">=", 0.50, "upload-callback (new files) >= 50% of floor req/s"),
    ("fast-upload-miss", "ratio", ">=", 0.70, "fast-upload miss >= 70% of floor req/s"),
    ("sts", "ratio", ">=", 0.70, "sts (cached) >= 70% of floor req/s"),
]
RSS_LIMIT_MB = 120.0
TAIL_FACTOR = 5.0  # p99 <= 5 x p50


# ------------------------------------------------------------------------------ configuration

# Options of the shipped backends that say where to connect (the benchmark's own SeaweedFS,
# database and token); every other option is taken as shipped.
CONNECTION_OPTIONS = {"url", "database", "endpoint", "public_endpoint", "sts_endpoint", "access_key",
                      "secret_key", "bucket", "tokens", "table_prefix"}


def shipped_settings(path: str = SHIPPED_CONFIG) -> Dict[str, Dict[str, Any]]:
    """The settings of conf/example.yaml the benchmark runs with: the ``service`` and ``sweep``
    sections whole, and the behaviour options of the storage backends (timeouts, the key
    prefix template). Read from the file, so the benchmark measures what ships."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}

    def options(section: str) -> Dict[str, Any]:
        found = (raw.get(section) or {}).get("options") or {}
        # ${VAR} values are the deployment's (keys, addresses), never a behaviour setting.
        return {k: v for k, v in found.items()
                if k not in CONNECTION_OPTIONS and not (isinstance(v, str) and "${" in v)}

    return {"service": dict(raw.get("service") or {}), "sweep": dict(raw.get("sweep") or {}),
            "media_store": options("media_store"), "object_store": options("object_store"),
            "credentials": options("credentials")}


def workspace_prefix(shipped: Dict[str, Dict[str, Any]]) -> str:
    """The folder the credentials grant a workspace (the shipped ``prefix_template``)."""
    template = shipped["credentials"].get("prefix_template", "media/{workspace_id}")
    return template.format(workspace_id=WORKSPACE).strip("/")


def store_options(tmp: str, args: argparse.Namespace, shipped: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """media_store.options of the servers, the sweep and the bulk load alike."""
    import yaml

    options: Dict[str, Any] = dict(shipped["media_store"])
    if args.database_url:
        # Every process on the same tables; a prefix of this run's own, so runs on one
        # database do not see each other's rows.
        options.update(url=args.database_url, table_prefix=args.table_prefix)
    else:
        options["url"] = f"sqlite:///{tmp}/media.sqlite3"
    if args.sqlite_synchronous:
        options["synchronous"] = args.sqlite_synchronous
    for item in args.store_option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    return options


def service_settings(shipped: Dict[str, Dict[str, Any]], args: argparse.Namespace,
                     window: Optional[float]) -> Dict[str, Any]:
    """The shipped ``service`` section; ``window`` (a what-if, or the window-0 server)
    and ``--service-option`` over it."""
    import yaml

    service = dict(shipped["service"])
    if window is not None:
        service["verify_window_seconds"] = window
    for item in args.service_option:
        key, _, value = item.partition("=")
        service[key] = yaml.safe_load(value)
    return service


def server_config(tmp: str, name: str, s3_endpoint: str, window: Optional[float], args: argparse.Namespace,
                  shipped: Dict[str, Dict[str, Any]]) -> str:
    import yaml

    storage = {"endpoint": s3_endpoint, "access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET, "bucket": BUCKET}
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "demo_banner": False},
        "logging": {"level": args.log_level},
        "service": service_settings(shipped, args, window),
        "sweep": dict(shipped["sweep"]),
        "media_store": {"backend": args.media_store_backend, "options": store_options(tmp, args, shipped)},
        "object_store": {"backend": args.object_store_backend, "options": dict(shipped["object_store"], **storage)},
        "credentials": {"backend": "sts", "options": dict(shipped["credentials"], **storage,
                                                            public_endpoint=s3_endpoint)},
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


# ------------------------------------------------------------------------------ the database

def run_on_store(options: Dict[str, Any], fn: Any, *args: Any) -> Any:
    """``fn(store, *args)``, a coroutine function, on a store of its own (closed afterwards)."""
    from dji_media.backends.peewee_store import PeeweeMediaStore

    async def go() -> Any:
        store = PeeweeMediaStore(**options)
        try:
            return await fn(store, *args)
        finally:
            await store.close()

    return asyncio.run(go())


async def _drop_tables(store: Any) -> None:
    names = store.table_names()

    def drop() -> None:
        for role in ("task", "file_group", "media_file", "schema"):
            store.db.execute_sql(f"DROP TABLE IF EXISTS {store.db.quote[0]}{names[role]}{store.db.quote[-1]}")

    await store.run_unit(drop)


async def _analyze_tables(store: Any, mysql: bool) -> None:
    """Planner statistics for the populated tables, as autovacuum gives a server configured by
    default. Without them (a new table, autovacuum off) PostgreSQL answers tiny-fingerprints by
    reading every row of the workspace: it guesses the workspace holds a couple of dozen rows
    and prefers any index on workspace_id."""
    def analyze() -> None:
        for table in store.table_names().values():
            quoted = store.db.quote[0] + table + store.db.quote[-1]
            store.db.execute_sql(f"ANALYZE TABLE {quoted}" if mysql else f"ANALYZE {quoted}")

    await store.run_unit(analyze, transaction=False)


async def _sweep_state(store: Any) -> Any:
    from dji_media.sweep import load_sweep_state

    return await load_sweep_state(store)


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



# ------------------------------------------------------------------------------ the workspace

def run_sweep(tmp: str, config_path: str, s3_pid: Optional[int], limit: float = 3600.0) -> Dict[str, Any]:
    """One pass of the storage sweep as an operator (or a deployment's first start) runs it:
    ``dji-media sweep --config``, a process of its own, so that its CPU time is its own (the
    kernel's account of the process: user + system time, every thread)."""
    log_path = os.path.join(tmp, "sweep.log")
    s3_before = _proc_ticks(s3_pid) if s3_pid else None
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dji_media.cli", "sweep", "--config", config_path],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=ENV, stdin=subprocess.DEVNULL)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - started > limit:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, with its resource usage
    wall = time.time() - started
    s3_after = _proc_ticks(s3_pid) if s3_pid else None
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        output = fh.read()
    if proc.returncode != 0:
        raise RuntimeError(f"dji-media sweep failed (exit {proc.returncode}):\n{output[-3000:]}")
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "exit": proc.returncode, "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "cpu_user_s": round(usage.ru_utime, 2), "cpu_sys_s": round(usage.ru_stime, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        "s3_cpu_s": (None if s3_before is None or s3_after is None else round((s3_after - s3_before) / ticks, 2)),
        "output": output.strip().splitlines()[-20:],
    }


def startup_cpu(tmp: str) -> float:
    """CPU seconds a Python process spends starting and importing what ``dji-media sweep``
    imports: the part of the sweep process's CPU time that does not grow with the workspace."""
    code = ("import dji_media.cli, dji_media.wiring, dji_media.sweep, dji_media.config, "
            "dji_media.backends.peewee_store, dji_media.backends.s3")
    before = os.times()
    subprocess.run([sys.executable, "-c", code], cwd=tmp, env=ENV, check=True, stdin=subprocess.DEVNULL)
    after = os.times()
    return round((after.children_user - before.children_user) + (after.children_system - before.children_system), 2)


def post(base: str, route_path: str, body: Any, token: str = TOKEN, timeout: float = 60) -> Tuple[int, Dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base + route_path, data=data, method="POST",
                                     headers={"X-Auth-Token": token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


FLOW_FILES = 8


def flow_check(base: str, layout: Layout) -> None:
    """A few new files through the real flow, as Pilot 2 sends them: sts, a PUT with the
    temporary credentials (the region and endpoint from the answer, inside the granted
    prefix), upload-callback, then fast-upload of each (a record never confirmed: one HEAD).
    The bulk load skips this path; this keeps it checked."""
    from minio import Minio

    routes = scenarios.paths(WORKSPACE)
    status, answer = post(base, routes["sts"], {})
    if status != 200 or answer.get("code") != 0:
        raise RuntimeError(f"sts failed: {status} {answer}")
    data = answer["data"]
    creds = data["credentials"]
    endpoint = data["endpoint"]
    client = Minio(endpoint.split("://", 1)[1], access_key=creds["access_key_id"],
                   secret_key=creds["access_key_secret"], session_token=creds["security_token"],
                   secure=endpoint.startswith("https://"), region=data["region"])
    for k in range(FLOW_FILES):
        key = f"{layout.prefix}/DJI_20250501100000_{k + 1:04d}_W.JPG"
        if not key.startswith(data["object_key_prefix"] + "/"):
            raise RuntimeError(f"object key {key} outside the granted prefix {data['object_key_prefix']}")
        payload = b"\xff\xd8bench-flow-%d" % k
        client.put_object(data["bucket"], key, io.BytesIO(payload), len(payload), content_type="image/jpeg")
        fingerprint = scenarios._md5(f"bench-flow-{k}").upper()
        tiny = f"{scenarios._md5(f'bench-flow-tiny-{k}')}_2025_5_1_10_0_0"
        body = scenarios.callback_body(layout, k, fingerprint, tiny, key, "2025-05-01T10:00:00+08:00")
        status, answer = post(base, routes["upload-callback"], body)
        if status != 200 or answer.get("code") != 0 or answer["data"].get("object_key") != key:
            raise RuntimeError(f"upload-callback failed: {status} {answer}")
        status, answer = post(base, routes["fast-upload"], {"fingerprint": fingerprint, "name": key.rsplit("/", 1)[1],
                                                            "path": "", "ext": {"tinny_fingerprint": tiny}})
        if status != 200 or answer.get("code") != 0:
            raise RuntimeError(f"fast-upload of a file just called back is not known: {status} {answer}")


def preflight(name: str, base: str, is_floor: bool, layout: Layout, max_checks: int) -> None:
    """One request of the scenario, checked in full (the load generator checks status and code only)."""
    s = SCENARIOS[name]
    route = scenarios.paths(WORKSPACE)[s.route]
    if name == "upload-callback":
        body = scenarios.CallbackBodies(layout, "pre%s" % ("f" if is_floor else "s")).body(999, 0)
    else:
        body = scenarios.static_bodies(name, layout)[0]
    status, answer = post(base, route, body)
    expect = scenarios.FLOOR_EXPECT if is_floor else s.expect
    problem = None
    if status != 200 or answer.get("code") != expect or not isinstance(answer.get("data"), dict):
        problem = f"HTTP {status}, {answer}"
    elif not is_floor and s.route == "tiny-fingerprints":
        expected = scenarios.tiny_request_lists(layout, s.count, s.known)[0][1]
        if s.server == "cold":
            # Window 0: nothing counts as confirmed, and a request checks at most
            # max_checks_per_request records with a HEAD (the first, in request order).
            expected = expected[:max_checks]
        got = answer["data"].get("tiny_fingerprints")
        if got != expected:
            problem = (f"answered {len(got or [])} known, expected {len(expected)}"
                       + (" (in request order)" if sorted(got or []) == sorted(expected) else ""))
    elif not is_floor and name == "sts":
        creds = answer["data"].get("credentials") or {}
        if not creds.get("access_key_id") or not isinstance(creds.get("expire"), int):
            problem = f"no usable credentials: {answer}"
    elif not is_floor and name == "upload-callback":
        if not answer["data"].get("object_key", "").startswith(layout.prefix + "/"):
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
    return round(statistics.median(values), 4) if values else None


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
                "cpu_ms_per_request": med([r.get("cpu_ms_per_request") for r in mine]),
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
                "rounds_cpu_ms_per_request": [r.get("cpu_ms_per_request") for r in mine],
                "sweep_overlap": any(r.get("sweep_overlap") for r in mine),
            }
        ratios = [r["ratio"] for r in runs if r["scenario"] == name and r["target"] == "server"
                  and r.get("ratio") is not None]
        entry["ratio"] = med(ratios)  # median of the per-round ratios (server and floor measured together)
        entry["rounds_ratio"] = ratios
        summary[name] = entry
    return summary


def evaluate(summary: Dict[str, Any], rss: Dict[str, Dict[str, Optional[float]]],
             sweep: Optional[Dict[str, Any]], layout: Layout) -> List[Dict[str, Any]]:
    results = []

    def add(text: str, value: Optional[float], ok: Optional[bool], unit: str = "") -> None:
        results.append({"target": text, "value": value, "unit": unit,
                        "result": "n/a" if ok is None else ("PASS" if ok else "MISS")})

    for name, metric, op, bound, text in TARGETS:
        if name not in summary or "server" not in summary[name]:
            continue
        if metric == "ratio":
            value, unit = summary[name]["ratio"], "x floor"
        else:
            value, unit = summary[name]["server"]["cpu_ms_per_request"], "ms CPU"
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        add(text, value, ok, unit)
    for name, entry in summary.items():
        server = entry.get("server")
        if not server:
            continue
        add(f"{name}: zero errors", server["errors"], server["errors"] == 0, "errors")
        tail = None if not server["p50_ms"] else round(server["p99_ms"] / server["p50_ms"], 2)
        add(f"{name}: p99 <= {TAIL_FACTOR:g} x p50", tail, None if tail is None else tail <= TAIL_FACTOR,
            "x p50")
    if sweep is not None:
        report = sweep.get("report") or {}
        # Reported in full: it finished, listed every object of the bucket, and found every
        # record's object (nothing removed, nothing left unjudged).
        complete = (report.get("outcome") == "finished" and report.get("objects_listed") == layout.total_objects
                    and report.get("present") == layout.records and not report.get("gone")
                    and not report.get("changed") and not report.get("too_new"))
        add(f"storage sweep of {layout.total_objects:,} objects finished, reported (duration, storage requests, CPU)",
            report.get("duration_seconds"), complete, "s")
    for name, values in rss.items():
        # The limit is per serving process: a server with workers has them and its parent.
        value, limit = values.get("VmRSS"), RSS_LIMIT_MB * (values.get("processes") or 1)
        add(f"{name} RSS after the benchmark <= {limit:g} MB"
            + (f" ({values['processes']} processes, {RSS_LIMIT_MB:g} MB each)" if limit != RSS_LIMIT_MB else ""),
            value, None if value is None else value <= limit, "MB")
    return results


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_ms(value: Optional[float]) -> str:
    """A CPU time per request in ms, with three significant digits."""
    return "-" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def print_table(summary: Dict[str, Any]) -> None:
    head = (f"{'scenario':<19} {'conn':>4} {'server req/s':>12} {'floor req/s':>11} {'ratio':>5} "
            f"{'srv ms cpu/req':>14} {'flr ms cpu/req':>14} "
            f"{'server p50/p90/p99 ms':>22} {'floor p50/p90/p99 ms':>20} {'err':>4} "
            f"{'lg cpu':>6} {'srv cpu':>7} {'s3 cpu':>6} {'db cpu':>6} {'others':>6}")
    print(head)
    print("-" * len(head))
    for name, entry in summary.items():
        s, f = entry.get("server", {}), entry.get("floor", {})
        lat = lambda d: "/".join(fmt(d.get(k), 2 if (d.get(k) or 99) < 10 else 1)  # noqa: E731
                                 for k in ("p50_ms", "p90_ms", "p99_ms")) if d else "-"
        pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        flag = "*" if s.get("sweep_overlap") or f.get("sweep_overlap") else ""
        print(f"{name + flag:<19} {s.get('connections', ''):>4} {fmt(s.get('rps')):>12} {fmt(f.get('rps')):>11} "
              f"{fmt(entry.get('ratio'), 2):>5} {fmt_ms(s.get('cpu_ms_per_request')):>14} "
              f"{fmt_ms(f.get('cpu_ms_per_request')):>14} {lat(s):>22} {lat(f):>20} {s.get('errors', 0):>4} "
              f"{pct(s.get('loadgen_util')):>6} {pct(s.get('target_util')):>7} {pct(s.get('s3_util')):>6} "
              f"{pct(s.get('db_util')):>6} "
              f"{fmt(max(s.get('others_cores_max') or 0, f.get('others_cores_max') or 0), 2):>6}")


def print_population(population: Dict[str, Any], layout: Layout) -> None:
    objects, records = population["objects"], population["records"]
    print(f"populated {layout.total_objects:,} objects ({layout.objects:,} files, {layout.records:,} of them with a "
          f"record; {layout.unrecorded:,} without) in {population['seconds']:.0f} s: objects PUT in "
          f"{objects['seconds']:.0f} s ({objects['per_second']:.0f}/s, {objects['threads']} threads), records "
          f"inserted in {records['seconds']:.0f} s ({records['per_second']:.0f}/s)")


def print_sweep(sweep: Dict[str, Any], shipped_sweep: Dict[str, Any]) -> None:
    r = sweep["report"]
    process = sweep["process"]
    cpu, start_cpu = process["cpu_s"], sweep.get("startup_cpu_s")
    listed = r.get("objects_listed") or 0
    print(f"storage sweep (dji-media sweep --config, one pass before the load): {r['outcome']} in "
          f"{r['duration_seconds']:.1f} s (the process {process['wall_s']:.1f} s)")
    print(f"  {listed:,} objects listed in {r['storage_requests']} storage requests (listings of up to "
          f"{shipped_sweep.get('page_size', 1000)} keys, at most {shipped_sweep.get('pages_per_second', '?')}/s as "
          "shipped)")
    print(f"  records: {r['present']:,} present ({r['confirmed']:,} confirmations written), {r['changed']} changed, "
          f"{r['gone']} gone, {r['kept']} kept; {r['unrecorded']:,} unrecorded objects left alone; not judged: "
          f"{r['too_new']} too new, {r['outside_prefix']} outside the prefix, {r['empty_folders']} empty folders")
    per_object = (cpu - (start_cpu or 0)) / listed * 1000 if listed else None
    print(f"  CPU: {cpu:.1f} s for the sweep process ({process['cpu_user_s']:.1f} user, {process['cpu_sys_s']:.1f} "
          f"system" + (f"; {start_cpu:.1f} s of it starting Python and importing" if start_cpu is not None else "")
          + ")" + (f", {per_object:.3f} ms per object listed beyond start-up" if per_object is not None else "")
          + (f"; SeaweedFS {process['s3_cpu_s']:.1f} s" if process.get("s3_cpu_s") is not None else "")
          + f"; peak RSS {process['max_rss_mb']:.0f} MB")


def server_passes(state: Any, first_started: Optional[str]) -> List[Dict[str, Any]]:
    """Passes of the storage sweep other than the benchmark's own, from the saved state: the
    servers' (the shipped defaults run it in every server, every period)."""
    passes = []
    for report in state.history:
        data = report.as_dict()
        if data.get("started_at") and data["started_at"] != first_started:
            passes.append(data)
    if state.progress is not None:
        data = state.progress.report.as_dict()
        if data.get("started_at") != first_started:
            passes.append(dict(data, unfinished=True))
    return passes


def _epoch(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    parsed = _dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.timestamp()


def mark_overlaps(runs: List[Dict[str, Any]], passes: List[Dict[str, Any]]) -> None:
    """Flag the measurements during which a server swept (its CPU then counts in srv cpu)."""
    for r in runs:
        for p in passes:
            start = _epoch(p.get("started_at"))
            end = _epoch(p.get("finished_at")) or time.time()
            if start is not None and start < r["t_end"] and end > r["t_start"]:
                r["sweep_overlap"] = True


# ------------------------------------------------------------------------------ main

QUICK = {"objects": 5000, "rounds": 1, "duration": 2.0, "warmup": 0.5, "json": ""}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dji_media benchmark: the example server on a fleet-sized workspace "
                                            "against a constant floor")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 5,000 objects, 1 round x 2 s, no JSON (options given explicitly win)")
    p.add_argument("--objects", type=int, default=None,
                   help="files in the workspace, each an object in the bucket (default 100000)")
    p.add_argument("--records", type=int, default=None,
                   help="how many of those files have a record (default: all of them)")
    p.add_argument("--unrecorded", type=int, default=None,
                   help="further objects in the folder without a record (default: 3%% of --objects)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per scenario and target (10)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each measurement (1)")
    p.add_argument("--rounds", type=int, default=None, help="rounds; each number is reported as its median (3)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    p.add_argument("--tiny-connections", type=int, default=None,
                   help="keep-alive connections for the tiny-fingerprints scenarios (default: --connections)")
    p.add_argument("--window", type=float, default=None,
                   help="what-if: service.verify_window_seconds of the server instead of the shipped value")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset to run")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes per measurement")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--populate-threads", type=int, default=32, help="threads PUTting the objects")
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
                   help="media_store.backend for the servers (default: sqlite, or peewee with --database-url; "
                        "or module:Class of an experimental store)")
    p.add_argument("--object-store-backend", default="minio",
                   help="object_store.backend for the servers (or module:Class of an experimental one)")
    p.add_argument("--service-option", action="append", default=[], metavar="KEY=VALUE",
                   help="what-if: a service setting over the shipped ones, e.g. max_checks_per_request=64")
    p.add_argument("--store-option", action="append", default=[], metavar="KEY=VALUE",
                   help="what-if: a media_store.options value, e.g. max_workers=1 (repeatable)")
    p.add_argument("--profile", default="", help="comma-separated scenarios to profile with py-spy (last round)")
    p.add_argument("--profile-dir", default=os.path.join(HERE, "profiles"))
    p.add_argument("--json", default=None, help="where to write the results (default bench/results.json; '': nowhere)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs)")
    args = p.parse_args(argv)
    defaults = {"objects": 100_000, "rounds": 3, "duration": 10.0, "warmup": 1.0,
                "json": os.path.join(HERE, "results.json")}
    for key, value in (dict(defaults, **QUICK) if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.records is None:
        args.records = args.objects
    if args.unrecorded is None:
        args.unrecorded = args.objects * 3 // 100
    if args.tiny_connections is None:
        args.tiny_connections = args.connections
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    args.names = names
    args.profile_names = [n.strip() for n in args.profile.split(",") if n.strip()]
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1 or args.tiny_connections < 1:
        p.error("need --duration > 0, --rounds >= 1, --connections >= 1, --tiny-connections >= 1")
    if args.objects < 1000 or not 1000 <= args.records <= args.objects or args.unrecorded < 0:
        p.error("need --objects >= 1000, 1000 <= --records <= --objects, --unrecorded >= 0")
    if args.workers < 1 or args.populate_threads < 1:
        p.error("need --workers >= 1, --populate-threads >= 1")
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



def populate(tmp: str, args: argparse.Namespace, layout: Layout, s3: Any, options: Dict[str, Any]) -> Dict[str, Any]:
    """Objects PUT and records inserted at the same time: the PUTs wait mostly on SeaweedFS,
    the inserts on the database, and each takes a process of its own (their Python work
    would otherwise share one GIL)."""
    import concurrent.futures
    import multiprocessing

    started = time.time()
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        inserting = pool.submit(fleet.insert_records, layout, options)
        objects = fleet.put_objects(layout, endpoint=s3.endpoint, access_key=ADMIN_KEY, secret_key=ADMIN_SECRET,
                                    bucket=BUCKET, region=s3.region, threads=args.populate_threads,
                                    progress=lambda line: print(line, flush=True))
        records = inserting.result()
    return {"objects": objects, "records": records, "seconds": round(time.time() - started, 1)}


def print_target_lines(targets: List[Dict[str, Any]], width: int = 88) -> None:
    """One line per target: PASS/MISS, what it asks, the value (shared by the three benchmarks)."""
    for t in targets:
        value = t["value"]
        shown = "-" if value is None else (f"{value:g}" if isinstance(value, int) else f"{value:.3g}")
        print(f"{t['result']:<5} {t['target']:<{width}} {shown} {t['unit']}")


def print_profiles(profiles: Dict[str, Any]) -> None:
    """The summaries of the py-spy profiles taken during the run, per scenario and mode."""
    for name, modes in profiles.items():
        for mode, prof in modes.items():
            print(f"\nprofile of the server under {name}, {mode} ({prof['samples']} samples, "
                  f"busy {fmt(100 * (prof['busy'] or 0), 0)}% of the window, raw: {prof['raw']}):")
            print("  by thread: " + ", ".join(f"{p}% {k}" for p, k in prof["threads"][:6]))
            print("  self:")
            for share, func in prof["self"][:15]:
                print(f"    {share:5.1f}%  {func}")
            print("  inclusive:")
            for share, func in prof["inclusive"][:30]:
                print(f"    {share:5.1f}%  {func}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from dji_media.embedded_s3 import EmbeddedS3

    started = time.time()
    tmp = tempfile.mkdtemp(prefix="dji-bench-")
    run_id = "%04x" % random.randrange(0x10000)
    args.table_prefix = f"bench{run_id}_" if args.database_url else None
    database = (f"{mask_url(args.database_url)} (tables {args.table_prefix}*)" if args.database_url
                else "SQLite in the temp dir")
    shipped = shipped_settings()
    layout = Layout(workspace_prefix(shipped), args.objects, args.records, args.unrecorded)
    options = store_options(tmp, args, shipped)
    warm_service = service_settings(shipped, args, args.window)
    cold_service = service_settings(shipped, args, 0.0)
    print(f"dji_media benchmark {run_id}{' (--quick)' if args.quick else ''}: {args.rounds} round(s) x "
          f"{len(args.names)} scenario(s), {args.duration:g} s each (+{args.warmup:g} s warm-up); temp dir {tmp}")
    print(f"workspace {WORKSPACE}: {layout.total_objects:,} objects under {layout.prefix}/ (flat, and one mission "
          f"folder), {layout.records:,} records")
    print(f"servers: {args.workers} worker(s) each; database: {database}; settings of "
          f"{os.path.relpath(SHIPPED_CONFIG, ROOT)}: service {json.dumps(warm_service, sort_keys=True)}"
          + (f" (--window {args.window:g}: a what-if, not the shipped value)" if args.window is not None else "")
          + f", sweep {json.dumps(shipped['sweep'], sort_keys=True)}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          f"(other work on the machine shows in the 'others' column)")
    s3 = EmbeddedS3(data_dir=os.path.join(tmp, "seaweedfs"), access_key=ADMIN_KEY, secret_key=ADMIN_SECRET,
                    buckets=[BUCKET])
    children: List[Child] = []
    runs: List[Dict[str, Any]] = []
    profiles: Dict[str, Any] = {}
    sweep: Optional[Dict[str, Any]] = None
    try:
        s3.start()
        warm_config = server_config(tmp, "server-window", s3.endpoint, args.window, args, shipped)
        population = populate(tmp, args, layout, s3, options)
        print_population(population, layout)
        if args.database_url:
            run_on_store(options, _analyze_tables, args.database_url.startswith("mysql"))
            print("analyzed the populated tables (planner statistics, as autovacuum would)")

        # One pass before the load, as a deployment would have had (the servers' own passes
        # come every period after it; the saved state tells them when).
        process = run_sweep(tmp, warm_config, s3.pid)
        state = run_on_store(options, _sweep_state)
        if state.last is None:
            raise RuntimeError("dji-media sweep saved no report:\n" + "\n".join(process["output"]))
        sweep = {"report": state.last.as_dict(), "process": process, "startup_cpu_s": startup_cpu(tmp),
                 "command": f"dji-media sweep --config {os.path.basename(warm_config)}"}
        print_sweep(sweep, shipped["sweep"])

        warm = start_server(tmp, "server-window", warm_config, args.workers)
        children.append(warm)
        floor = Child("floor", [sys.executable, os.path.join(HERE, "floor.py"), "--port", "0"],
                      os.path.join(tmp, "floor.log"), r"listening on (https?://\S+)", cwd=tmp)
        children.append(floor)
        print(f"SeaweedFS {s3.endpoint} (pid {s3.pid}); server {warm.base} (pid {warm.pid}"
              + (f", workers {' '.join(map(str, child_pids(warm.pid)))}" if args.workers > 1 else "")
              + f", window {warm_service.get('verify_window_seconds', 'default')} s); "
              f"floor {floor.base} (pid {floor.pid})")
        cold = None
        if any(SCENARIOS[n].server == "cold" for n in args.names):
            # Same database: the window-0 server sees the same files.
            cold = start_server(tmp, "server-nowindow",
                                server_config(tmp, "server-nowindow", s3.endpoint, 0.0, args, shipped), args.workers)
            children.append(cold)
            print(f"server with window 0 {cold.base} (pid {cold.pid})")
        servers = {"warm": warm, "cold": cold}
        flow_check(warm.base, layout)
        max_checks = int(cold_service.get("max_checks_per_request", 32))
        for name in args.names:
            preflight(name, servers[SCENARIOS[name].server].base, False, layout, max_checks)
            if SCENARIOS[name].floor_as is None:
                preflight(name, floor.base, True, layout, max_checks)
        print(f"pre-flight checks passed ({FLOW_FILES} new files through sts, PUT, upload-callback, fast-upload; "
              "one request per scenario checked in full)\n")

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
                        "workspace": WORKSPACE, "token": TOKEN, "layout": layout.as_dict(), "connections": conns,
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
                    t_start = time.time()
                    result = run_loadgen(spec)
                    result.update(t_start=t_start, t_end=time.time())
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
                          f"{r['rps']:>8.1f} req/s  cpu {fmt_ms(r.get('cpu_ms_per_request')):>6} ms/req  "
                          f"p50 {r['p50_ms']:>7.2f}  p90 {r['p90_ms']:>7.2f}  "
                          f"p99 {r['p99_ms']:>7.2f} ms  err {r['errors']:>3}  loadgen cpu "
                          f"{100 * r['loadgen_util']:>3.0f}%  {target} cpu {util_text:>4}  machine {busy_text}"
                          + (f"  ratio {server['ratio']:.2f}" if target == "server" and server["ratio"] else "")
                          + (f"  errors: {r['error_samples'][:2]}" if r["errors"] else ""), flush=True)

        rss = {f"server ({c.name})": c.rss_mb() for c in (warm, cold) if c is not None}
        state = run_on_store(options, _sweep_state)
        passes = server_passes(state, sweep["report"].get("started_at"))
        mark_overlaps(runs, passes)
        summary = summarise(runs, args.names)
        targets = evaluate(summary, rss, sweep, layout)
        print(f"\nmedian of {args.rounds} round(s); ratio = median of per-round server/floor req/s; ms cpu/req = "
              "CPU time of the process under test per correct response; cpu = share of one core during the "
              "measured window; others = cores used by other processes (max over the measurements; srv cpu sums "
              "a server's workers; db cpu is a database server on this machine)")
        print(f"workspace: {layout.total_objects:,} objects, {layout.records:,} records; servers: {args.workers} "
              f"worker(s) each; database: {database}; service and sweep settings as shipped"
              + (f" except verify_window_seconds {args.window:g}" if args.window is not None else "") + "\n")
        print_table(summary)
        if passes:
            print("\n* a server's own storage sweep ran during the measurement (its CPU counts in the server's): "
                  + "; ".join(f"{p.get('started_at')} to {p.get('finished_at') or 'still running'} by {p.get('holder')}"
                              for p in passes))
        else:
            print(f"\nno sweep pass by the servers during the load (the next is due "
                  f"{shipped['sweep'].get('period_seconds', 900)} s after the one above)")
        noisy = [r for r in runs if (r.get("others_cores") or 0) > NOISY_CORES]
        if noisy:
            print(f"\nWARNING: in {len(noisy)} of {len(runs)} measurements other processes used more than "
                  f"{NOISY_CORES} cores (max {max(r['others_cores'] for r in noisy):.2f}); on a 2-core machine "
                  "that distorts the numbers (a single-threaded floor loses more than the multi-threaded "
                  "server, so ratios look better; CPU per request is the steadier figure). Re-run on a quiet machine.")
        print()
        print_population(population, layout)
        print_sweep(sweep, shipped["sweep"])
        print()
        for name, values in rss.items():
            group = (f" summed over {values['processes']} processes (parent + {values['processes'] - 1} workers; "
                     f"Pss {values['Pss']} MB counts their shared pages once)" if values["processes"] > 1 else "")
            print(f"{name}: VmRSS {values['VmRSS']} MB (peak VmHWM {values['VmHWM']} MB){group}")
        conditions = []
        if layout.total_objects < TARGET_OBJECTS:
            conditions.append(f"a workspace of {layout.total_objects:,} objects")
        if args.connections != TARGET_CONNECTIONS or args.tiny_connections != TARGET_CONNECTIONS:
            conditions.append(f"{args.connections}/{args.tiny_connections} connections")
        if args.workers != 1 or args.database_url:
            conditions.append(f"{args.workers} worker(s), {'SQLite' if not args.database_url else 'another database'}")
        if args.window is not None or args.service_option or args.store_option or args.sqlite_synchronous:
            conditions.append("settings other than the shipped ones")
        print(f"\ntargets (set for one process, SQLite, {TARGET_CONNECTIONS} connections, the shipped settings, a "
              f"workspace of {TARGET_OBJECTS:,} objects)"
              + (f"; this run differs: {', '.join(conditions)}" if conditions else "") + ":")
        print_target_lines(targets)
        print_profiles(profiles)

        result = {
            "meta": {
                "run_id": run_id, "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
                "seconds": round(time.time() - started, 1), "git": git_revision(),
                "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "loadavg_end": os.getloadavg(),
                "args": {k: (mask_url(v) if k == "database_url" else v) for k, v in vars(args).items()},
                "workers": args.workers, "database": "sqlite" if not args.database_url else {
                    "url": mask_url(args.database_url), "table_prefix": args.table_prefix},
                "layout": layout.as_dict(), "service": warm_service, "sweep_settings": shipped["sweep"],
                "conditions_differ": conditions,
                "targets_note": "ratio = median of per-round server/floor req/s; cpu_ms_per_request = median of "
                                "per-round server CPU per correct response; errors summed over rounds",
                "noisy_measurements": sum(1 for r in runs if (r.get("others_cores") or 0) > NOISY_CORES),
            },
            "population": population, "sweep": sweep, "server_sweep_passes": passes,
            "summary": summary, "targets": targets, "rss_mb": rss, "profiles": profiles,
            "runs": [{k: v for k, v in r.items()} for r in runs],
        }
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
            print(f"\nresults written to {args.json}")
        print(f"{time.time() - started:.0f} s in all")
        return 0 if all(t["result"] != "MISS" for t in targets) else 1
    finally:
        for child in reversed(children):
            child.stop()
        s3.stop()
        if args.database_url and not args.keep:
            try:
                run_on_store(dict(options, create_tables=False), _drop_tables)
            except Exception as exc:  # report, but do not hide the run's own outcome
                print(f"could not drop the tables {args.table_prefix}*: {exc}")
        if args.keep:
            print(f"kept {tmp}" + (f" and the tables {args.table_prefix}*" if args.database_url else ""))
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
