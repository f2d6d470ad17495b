"""The media library's read side under load: ``dji-media serve`` on a fleet's workspace against
the floor, measured in the same run.

    python bench/library.py                 # 100,000 files, 3 rounds x 10 s per scenario
    python bench/library.py --quick         # 5,000 files, 1 round x 2 s, no JSON: a smoke run

What it starts and how it measures is bench/run.py's, reused from there (SeaweedFS, the server
with the shipped settings of conf/example.yaml on SQLite, the floor, the load generator, one
pass of the storage sweep, the summary and the generic targets); what is its own:

* **The workspace** (``fleet.put_objects`` and ``fleet.insert_records``, the bulk load of
  bench/fleet.py): ``--records`` files laid out as bench/scenarios.py lays them out (three
  lenses a shot, 150 shots a flight, a flight every 31 hours), each flight a mission (its
  ``file_group_id``) flown by one aircraft of a fleet of eight (its serial number and models)
  at one of six sites (the shoot positions a grid over the site). Every record has an object
  in the bucket and is **confirmed by one pass of the storage sweep** before the load, as in a
  deployment, so a download URL is presigned without a HEAD.
* **The scenarios**, GET requests with ``--connections`` keep-alive connections: the first
  page of 50; page 1,000 of 50, reached by walking the cursor through the 999 pages before it
  (every page checked against the expected order), then asked again and again; a page filtered
  by mission and one by capture time range and aircraft serial number (20 different filters
  drawn over the whole history, rotated); our download URL (``.../download``, the JSON answer)
  and DJI's ``/file/{id}/url`` (302) for 2,000 files drawn over the whole workspace.
* **The floor**: bench/floor.py's library routes, a fixed page of 50 files of the same shape
  and about the same size, a fixed download answer, a fixed 302.
* **Its targets** (below, ``TARGETS``), besides bench/run.py's zero errors, p99 <= 5 x p50, the
  sweep confirming every record, and the server's RSS.

The load generator is bench/loadgen.py, run by this file (``--loadgen``) so that it sends the
scenario's GET requests: ``install`` registers them with bench/scenarios.py in that process.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as _dt
import http.client
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fleet  # noqa: E402
import loadgen  # noqa: E402
import run  # noqa: E402  (puts the checkout's dji_media on the path too)
import scenarios  # noqa: E402
from scenarios import LENSES, SHOTS_PER_FLIGHT, TOKEN, WORKSPACE, Layout  # noqa: E402

PAGE = 50
DEEP_PAGE = 1000
FILTERS = 20          # different filters per filtered scenario, rotated over
DOWNLOAD_FILES = 2000  # files drawn over the whole workspace for the download scenarios
WINDOW = _dt.timedelta(days=30)  # the capture time range of the time + serial number filter

LIBRARY = f"/media/api/v1/workspaces/{WORKSPACE}/library"
DJI = f"/media/api/v1/files/{WORKSPACE}"

# A fleet of eight aircraft (serial number, aircraft model key, camera model key) and six sites.
AIRCRAFT = (
    ("1581F5FHD23A700A001", "0-67-1", "1-53-0"), ("1581F5FHD23A700A002", "0-67-1", "1-53-0"),
    ("1581F5FJC238B00B003", "0-67-0", "1-52-0"), ("1ZNBJ7R0010A0C004", "0-77-1", "1-67-0"),
    ("1ZNBJ7R0010A0C005", "0-77-0", "1-66-0"), ("1ZNBJ7R0010A0C006", "0-77-1", "1-67-0"),
    ("1ZNDH1D0010A0D007", "0-89-0", "1-43-0"), ("1ZNDH1D0010A0D008", "0-89-0", "1-43-0"),
)
SITES = ((22.577666, 113.943194), (51.948600, 4.141500), (-31.952200, 115.861300),
         (32.448700, -100.405000), (-23.650900, -70.397500), (60.169900, 24.938400))
GRID = 15  # shots per row of a flight's grid over its site

# (scenario, metric, bound, text); "ratio": server req/s / floor req/s, median of the rounds';
# "vs-first": the scenario's server req/s / first-page's server req/s, median of the rounds'.
TARGETS = [
    ("first-page", "ratio", 0.40, "first page of 50, no filter >= 40% of floor req/s"),
    ("deep-page", "vs-first", 0.80, "page 1,000 via the cursor within 20% of the first page's req/s"),
    ("mission-page", "ratio", 0.30, "page filtered by mission >= 30% of floor req/s"),
    ("time-sn-page", "ratio", 0.30, "page filtered by capture time range + serial number >= 30% of floor req/s"),
    ("download", "ratio", 0.50, "download URL (JSON) >= 50% of floor req/s"),
    ("dji-url", "ratio", 0.50, "DJI's /file/{id}/url (302) >= 50% of floor req/s"),
]
SCENARIO_TEXT = {
    "first-page": "GET .../library/files?limit=50: the newest 50 files",
    "deep-page": "GET .../library/files?limit=50&cursor=C: page 1,000, C from walking the 999 before",
    "mission-page": "GET .../library/files?limit=50&mission=M: the newest 50 of a mission (20 missions)",
    "time-sn-page": "GET .../library/files?limit=50&sn=S&captured_from=F&captured_to=T (20 filters, 30 days)",
    "download": "GET .../library/files/{id}/download: a presigned URL in the envelope (2,000 files)",
    "dji-url": "GET /media/api/v1/files/{ws}/file/{id}/url: 302 to a presigned URL (2,000 files)",
}
SCENARIO_NAMES = list(SCENARIO_TEXT)
QUICK = {"records": 5000, "rounds": 1, "duration": 2.0, "warmup": 0.5, "json": ""}


# ------------------------------------------------------------------------------ the workspace

def public_id(i: int) -> str:
    """File ``i``'s public id: a UUID4 text, derived from the index so every process knows it."""
    return str(uuid.UUID(bytes=bytes.fromhex(scenarios._md5(f"bench-public-{i}")), version=4))


def flight_of(i: int) -> int:
    return i // len(LENSES) // SHOTS_PER_FLIGHT


def aircraft_of(flight: int) -> int:
    return int(scenarios._md5(f"bench-aircraft-{flight}")[:8], 16) % len(AIRCRAFT)


def mission_of(flight: int) -> str:
    # bench/scenarios.py's callback body names the flight's group this way.
    return "3c3a3c8e-8f2e-4a63-9d3f-%012x" % flight


def position_of(i: int) -> Tuple[float, float]:
    """A grid over the flight's site, row after row, as a mapping flight flies it."""
    flight = flight_of(i)
    lat, lng = SITES[int(scenarios._md5(f"bench-site-{flight}")[:8], 16) % len(SITES)]
    row, col = divmod(i // len(LENSES) % SHOTS_PER_FLIGHT, GRID)
    col = col if row % 2 == 0 else GRID - 1 - col
    return round(lat + row * 0.00018, 6), round(lng + col * 0.00022, 6)


_BULK_RECORD = fleet.make_record


def fleet_record(layout: Layout, i: int) -> Any:
    """bench/fleet.py's record of file ``i`` with the fleet's variety: its aircraft, position
    and public id (the callback body in ``raw_json`` says the same)."""
    record = _BULK_RECORD(layout, i)
    sn, drone, payload = AIRCRAFT[aircraft_of(flight_of(i))]
    lat, lng = position_of(i)
    body = json.loads(record.file.raw_json)
    body["ext"].update(sn=sn, drone_model_key=drone, payload_model_key=payload)
    body["metadata"]["shoot_position"] = {"lat": lat, "lng": lng}
    file = dataclasses.replace(record.file, sn=sn, drone_model_key=drone, payload_model_key=payload,
                               shoot_lat=lat, shoot_lng=lng, raw_json=json.dumps(body, separators=(",", ":")))
    return dataclasses.replace(record, file=file, public_id=public_id(i))


def insert_fleet_records(layout: Layout, options: Dict[str, Any]) -> Dict[str, Any]:
    """``fleet.insert_records`` (the store's import path, in batches) with ``fleet_record``; runs
    in a process of its own."""
    fleet.make_record = fleet_record
    return fleet.insert_records(layout, options)


def populate(args: argparse.Namespace, layout: Layout, s3: Any, options: Dict[str, Any]) -> Dict[str, Any]:
    """As bench/run.py's ``populate``: the objects PUT while the records are inserted in another
    process."""
    started = time.time()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        inserting = pool.submit(insert_fleet_records, layout, options)
        objects = fleet.put_objects(layout, endpoint=s3.endpoint, access_key=run.ADMIN_KEY,
                                    secret_key=run.ADMIN_SECRET, bucket=run.BUCKET, region=s3.region,
                                    threads=args.populate_threads, progress=lambda line: print(line, flush=True))
        records = inserting.result()
    return {"objects": objects, "records": records, "seconds": round(time.time() - started, 1)}


def newest_first(layout: Layout, indexes: Any) -> List[int]:
    """File indexes in the library's order: upload time (``fleet.make_record``'s), then public
    id, newest first."""
    return sorted(indexes, key=lambda i: (layout.capture_time(i) + fleet.UPLOAD_DELAY, public_id(i)), reverse=True)


_ORDER: Dict[int, List[int]] = {}


def library_order(layout: Layout) -> List[int]:
    """Every file index in the library's order (computed once: 100,000 sort keys)."""
    if layout.records not in _ORDER:
        _ORDER[layout.records] = newest_first(layout, range(layout.records))
    return _ORDER[layout.records]


def iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ the requests

def mission_filters(layout: Layout) -> List[Dict[str, Any]]:
    """Missions (whole flights) drawn over the whole history."""
    whole = layout.records // (len(LENSES) * SHOTS_PER_FLIGHT)
    flights = random.Random(f"{scenarios.SEED}-missions").sample(range(whole), min(FILTERS, whole))
    return [{"params": {"limit": PAGE, "mission": mission_of(f)},
             "files": [i for i in range(f * len(LENSES) * SHOTS_PER_FLIGHT,
                                        min(layout.records, (f + 1) * len(LENSES) * SHOTS_PER_FLIGHT))]}
            for f in flights]


def time_sn_filters(layout: Layout) -> List[Dict[str, Any]]:
    """An aircraft and a 30-day capture range, drawn over the whole history; only pairs that
    match a page's worth of files (the aircraft flew a whole flight in the range)."""
    rng = random.Random(f"{scenarios.SEED}-time-sn")
    first = layout.capture_time(0)
    last = layout.capture_time(layout.records - 1)
    span = max(1, int((last - first - WINDOW).total_seconds()))
    found: List[Dict[str, Any]] = []
    for _ in range(1000):
        if len(found) == FILTERS:
            break
        start = first + _dt.timedelta(seconds=rng.randrange(span))
        end = start + WINDOW
        craft = rng.randrange(len(AIRCRAFT))
        sn = AIRCRAFT[craft][0]
        flights = [f for f in range(flight_of(layout.records - 1) + 1) if aircraft_of(f) == craft
                   and start <= layout.capture_time(f * len(LENSES) * SHOTS_PER_FLIGHT) <= end]
        files = [i for f in flights for i in range(f * len(LENSES) * SHOTS_PER_FLIGHT,
                                                   min(layout.records, (f + 1) * len(LENSES) * SHOTS_PER_FLIGHT))
                 if start <= layout.capture_time(i) <= end]
        if len(files) > PAGE:
            found.append({"params": {"limit": PAGE, "sn": sn, "captured_from": iso(start), "captured_to": iso(end)},
                          "files": files})
    if not found:
        raise RuntimeError("no aircraft flew a page's worth of files in any 30-day range: too few records")
    return found


def target(path: str, params: Dict[str, Any]) -> str:
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


class Client:
    """One keep-alive connection for the walk and the pre-flight checks."""

    def __init__(self, base: str) -> None:
        parts = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def get(self, path: str) -> Tuple[int, Dict[str, str], bytes]:
        self.conn.request("GET", path, headers={"X-Auth-Token": TOKEN})
        response = self.conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def json(self, path: str) -> Dict[str, Any]:
        status, _, body = self.get(path)
        answer = json.loads(body)
        if status != 200 or answer.get("code") != 0:
            raise RuntimeError(f"GET {path}: HTTP {status} {body[:300]!r}")
        return answer["data"]

    def close(self) -> None:
        self.conn.close()


def page_ids(data: Dict[str, Any]) -> List[str]:
    return [f["id"] for f in data["files"]]


def walk(base: str, layout: Layout, page: int) -> Dict[str, Any]:
    """The cursor walked from the first page to ``page``, every page checked against the
    library's order; returns the cursor that asks for ``page`` and the walk's timing."""
    order = [public_id(i) for i in library_order(layout)]
    client = Client(base)
    started = time.time()
    cursor = None
    try:
        for n in range(1, page):
            data = client.json(target(f"{LIBRARY}/files", {"limit": PAGE, **({"cursor": cursor} if cursor else {})}))
            if page_ids(data) != order[(n - 1) * PAGE:n * PAGE]:
                raise RuntimeError(f"page {n} of the walk is not the expected files in the library's order")
            cursor = data["next_cursor"]
            if not cursor:
                raise RuntimeError(f"the walk ended at page {n}, before page {page}")
        seconds = time.time() - started
        data = client.json(target(f"{LIBRARY}/files", {"limit": PAGE, **({"cursor": cursor} if cursor else {})}))
        if page_ids(data) != order[(page - 1) * PAGE:page * PAGE]:
            raise RuntimeError(f"page {page} is not the expected files")
    finally:
        client.close()
    return {"page": page, "cursor": cursor, "walked_pages": page - 1, "seconds": round(seconds, 2),
            "per_page_ms": round(1000 * seconds / max(1, page - 1), 2)}


def request_sets(layout: Layout, deep_cursor: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """Per scenario: the request targets (rotated over by the load generator), the status the
    server answers, and what the pre-flight checks of the first one."""
    sample = layout.sample(DOWNLOAD_FILES, "library-download")
    deep = {"limit": PAGE, **({"cursor": deep_cursor} if deep_cursor else {})}
    missions, time_sn = mission_filters(layout), time_sn_filters(layout)
    return {
        "first-page": {"targets": [target(f"{LIBRARY}/files", {"limit": PAGE})], "status": 200},
        "deep-page": {"targets": [target(f"{LIBRARY}/files", deep)], "status": 200},
        "mission-page": {"targets": [target(f"{LIBRARY}/files", m["params"]) for m in missions], "status": 200,
                         "expected": [m["files"] for m in missions]},
        "time-sn-page": {"targets": [target(f"{LIBRARY}/files", m["params"]) for m in time_sn], "status": 200,
                         "expected": [m["files"] for m in time_sn]},
        "download": {"targets": [f"{LIBRARY}/files/{public_id(i)}/download" for i in sample], "status": 200,
                     "files": sample},
        "dji-url": {"targets": [f"{DJI}/file/{public_id(i)}/url" for i in sample], "status": 302, "files": sample},
    }


def preflight(name: str, base: str, is_floor: bool, layout: Layout, requests: Dict[str, Any],
              deep_page: int) -> Dict[str, Any]:
    """The first request of the scenario checked in full (the load generator checks the status
    and the envelope's code only); returns the answer's size."""
    spec = requests[name]
    client = Client(base)
    try:
        status, headers, body = client.get(spec["targets"][0])
    finally:
        client.close()
    where = f"pre-flight {name} against the {'floor' if is_floor else 'server'}"
    if status != spec["status"]:
        raise RuntimeError(f"{where}: HTTP {status} {body[:300]!r}")
    if is_floor:
        return {"bytes": len(body)}
    if name == "dji-url" or name == "download":
        i = spec["files"][0]
        url = headers.get("location") if name == "dji-url" else json.loads(body)["data"]["url"]
        with urllib.request.urlopen(url, timeout=30) as response:  # the object, from storage
            got, disposition = response.read(), response.headers.get("Content-Disposition", "")
        if got != layout.payload(i):
            raise RuntimeError(f"{where}: the URL does not fetch file {i}'s object")
        if name == "download" and layout.name(i) not in disposition:
            raise RuntimeError(f"{where}: the URL's Content-Disposition {disposition!r} does not name the file")
        return {"bytes": len(body)}
    data = json.loads(body)["data"]
    if name == "first-page":
        expected = newest_first(layout, range(max(0, layout.records - 4 * PAGE), layout.records))[:PAGE]
    elif name == "deep-page":
        expected = library_order(layout)[(deep_page - 1) * PAGE:deep_page * PAGE]
    else:
        expected = newest_first(layout, spec["expected"][0])[:PAGE]
    if page_ids(data) != [public_id(i) for i in expected] or not data["next_cursor"]:
        raise RuntimeError(f"{where}: not the expected {PAGE} files in the library's order")
    files = data["files"]
    if name == "mission-page" and {f["mission"] for f in files} != {mission_of(flight_of(expected[0]))}:
        raise RuntimeError(f"{where}: a file of another mission")
    if name == "time-sn-page" and {f["sn"] for f in files} != {AIRCRAFT[aircraft_of(flight_of(expected[0]))][0]}:
        raise RuntimeError(f"{where}: a file of another aircraft")
    if not all(f["verified_at"] for f in files):
        raise RuntimeError(f"{where}: a record the sweep did not confirm")
    return {"bytes": len(body)}


# ------------------------------------------------------------------------------ the load generator

class _Get(bytes):
    """A request target (path and query) to GET, where bench/scenarios.py has a body to POST."""


class _StatusChecker:
    """bench/loadgen.py's check for an answer that is not the envelope (DJI's 302)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def ok(self, status: int, body: bytes) -> Optional[str]:
        return None if status == self.status else f"HTTP {status}"


ROUTE = "library"


def install(spec: Dict[str, Any]) -> None:
    """Teach bench/scenarios.py (in the load generator's process) the scenario of ``spec``: its
    GET requests, rotated over as the static bodies are, and the status its answers carry."""
    name = spec["scenario"]
    scenarios.SCENARIOS[name] = scenarios.Scenario(name, ROUTE, text=SCENARIO_TEXT.get(name, name))
    targets = [_Get(t.encode("ascii")) for t in spec["targets"]]
    original_paths, original_request = scenarios.paths, scenarios.request_bytes

    def paths(workspace: str, prefix: str = "") -> Dict[str, str]:
        return dict(original_paths(workspace, prefix), **{ROUTE: ""})

    def request_bytes(host: str, port: int, path: str, body: bytes, token: str = TOKEN) -> bytes:
        if isinstance(body, _Get):
            return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nX-Auth-Token: %s\r\n\r\n" % (
                bytes(body), host.encode("ascii"), port, token.encode("ascii"))
        return original_request(host, port, path, body, token)

    scenarios.paths = paths
    scenarios.request_bytes = request_bytes
    scenarios.static_bodies = lambda scenario, layout: targets
    if int(spec.get("status", 200)) != 200:
        status = int(spec["status"])
        loadgen._Checker = lambda expect: _StatusChecker(status)  # type: ignore[assignment,misc]


def loadgen_main() -> int:
    spec = json.loads(sys.stdin.read())
    install(spec)
    result = loadgen.run(spec)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 1 if "fatal" in result else 0


def run_loadgen(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One measurement in a load generator process of its own (as bench/run.py's)."""
    limit = float(spec["warmup"]) + float(spec["duration"]) + float(spec["request_timeout"]) + 90
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--loadgen"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=limit, cwd=HERE)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"loadgen failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None
    if "fatal" in result:
        raise RuntimeError(f"loadgen failed: {result['fatal']}\n{proc.stderr[-3000:]}")
    return result


# ------------------------------------------------------------------------------ results

def evaluate(summary: Dict[str, Any], runs: List[Dict[str, Any]], rss: Dict[str, Any], sweep: Dict[str, Any],
             layout: Layout) -> List[Dict[str, Any]]:
    """This benchmark's targets, then bench/run.py's generic ones (zero errors, p99 <= 5 x p50
    for every scenario, the sweep confirmed every record, the server's RSS)."""
    results = []
    for name, metric, bound, text in TARGETS:
        if name not in summary:
            continue
        if metric == "ratio":
            value, unit = summary[name]["ratio"], "x floor"
        else:
            first = {r["round"]: r["rps"] for r in runs if r["scenario"] == "first-page" and r["target"] == "server"}
            mine = [r["rps"] / first[r["round"]] for r in runs
                    if r["scenario"] == name and r["target"] == "server" and first.get(r["round"])]
            value, unit = (round(statistics.median(mine), 3) if mine else None), "x first page"
            summary[name]["vs_first_page"] = value
        ok = None if value is None else value >= bound
        results.append({"target": text, "value": value, "unit": unit,
                        "result": "n/a" if ok is None else ("PASS" if ok else "MISS")})
    return results + run.evaluate(summary, rss, sweep, layout)


def print_targets(targets: List[Dict[str, Any]], conditions: List[str]) -> None:
    print(f"\ntargets (set for one process, SQLite, {run.TARGET_CONNECTIONS} connections, the shipped settings, "
          f"a workspace of {run.TARGET_OBJECTS:,} files)"
          + (f"; this run differs: {', '.join(conditions)}" if conditions else "") + ":")
    run.print_target_lines(targets)


# ------------------------------------------------------------------------------ main

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dji_media benchmark of the media library's read side against the floor")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 5,000 files, 1 round x 2 s, no JSON (options given explicitly win)")
    p.add_argument("--records", type=int, default=None, help="files in the workspace, each with an object (100000)")
    p.add_argument("--unrecorded", type=int, default=None,
                   help="further objects in the folder without a record (default: 3%% of --records)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per scenario and target (10)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each measurement (1)")
    p.add_argument("--rounds", type=int, default=None, help="rounds; each number is reported as its median (3)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    p.add_argument("--scenarios", default=",".join(SCENARIO_NAMES), help="comma-separated subset to run")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--populate-threads", type=int, default=32, help="threads PUTting the objects")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="the server's logging.level")
    p.add_argument("--profile", default="", help="comma-separated scenarios to profile with py-spy (last round)")
    p.add_argument("--profile-dir", default=os.path.join(HERE, "profiles"))
    p.add_argument("--json", default=None,
                   help="where to write the results (default bench/results-library.json; '': nowhere)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (database, logs)")
    args = p.parse_args(argv)
    defaults = {"records": 100_000, "rounds": 3, "duration": 10.0, "warmup": 1.0,
                "json": os.path.join(HERE, "results-library.json")}
    for key, value in (dict(defaults, **QUICK) if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.unrecorded is None:
        args.unrecorded = args.records * 3 // 100
    args.names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in SCENARIO_TEXT]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIO_NAMES)}")
    if "deep-page" in args.names and "first-page" not in args.names:
        args.names.insert(0, "first-page")  # deep-page's target is relative to it
    args.profile_names = [n.strip() for n in args.profile.split(",") if n.strip()]
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1:
        p.error("need --duration > 0, --rounds >= 1, --connections >= 1")
    if args.records < 2000 or args.unrecorded < 0:
        p.error("need --records >= 2000 (a page's worth per filter), --unrecorded >= 0")
    # What bench/run.py's configuration helpers read: SQLite, the shipped settings, one worker.
    args.database_url = args.table_prefix = args.sqlite_synchronous = args.window = None
    args.store_option, args.service_option = [], []
    args.media_store_backend, args.object_store_backend, args.workers = "sqlite", "minio", 1
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from dji_media.embedded_s3 import EmbeddedS3

    started = time.time()
    tmp = tempfile.mkdtemp(prefix="dji-bench-library-")
    run_id = "%04x" % random.randrange(0x10000)
    shipped = run.shipped_settings()
    layout = Layout(run.workspace_prefix(shipped), args.records, args.records, args.unrecorded)
    options = run.store_options(tmp, args, shipped)
    deep_page = min(DEEP_PAGE, layout.records // PAGE // 2)  # page 1,000, or half way in a smaller one
    print(f"dji_media library benchmark {run_id}{' (--quick)' if args.quick else ''}: {args.rounds} round(s) x "
          f"{len(args.names)} scenario(s), {args.duration:g} s each (+{args.warmup:g} s warm-up), "
          f"{args.connections} connections; temp dir {tmp}")
    print(f"workspace {WORKSPACE}: {layout.records:,} files with records and objects, {layout.unrecorded:,} objects "
          f"without; {len(AIRCRAFT)} aircraft, {len(SITES)} sites, a mission per flight; SQLite; settings of "
          f"conf/example.yaml; the deep page is page {deep_page:,}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    s3 = EmbeddedS3(data_dir=os.path.join(tmp, "seaweedfs"), access_key=run.ADMIN_KEY, secret_key=run.ADMIN_SECRET,
                    buckets=[run.BUCKET])
    children: List[run.Child] = []
    runs: List[Dict[str, Any]] = []
    profiles: Dict[str, Any] = {}
    try:
        s3.start()
        config = run.server_config(tmp, "server", s3.endpoint, None, args, shipped)
        population = populate(args, layout, s3, options)
        run.print_population(population, layout)
        process = run.run_sweep(tmp, config, s3.pid)
        state = run.run_on_store(options, run._sweep_state)
        if state.last is None:
            raise RuntimeError("dji-media sweep saved no report:\n" + "\n".join(process["output"]))
        sweep = {"report": state.last.as_dict(), "process": process, "startup_cpu_s": run.startup_cpu(tmp),
                 "command": f"dji-media sweep --config {os.path.basename(config)}"}
        run.print_sweep(sweep, shipped["sweep"])

        server = run.start_server(tmp, "server", config, 1)
        floor = run.Child("floor", [sys.executable, os.path.join(HERE, "floor.py"), "--port", "0"],
                          os.path.join(tmp, "floor.log"), r"listening on (https?://\S+)", cwd=tmp)
        children += [server, floor]
        print(f"SeaweedFS {s3.endpoint} (pid {s3.pid}); server {server.base} (pid {server.pid}); "
              f"floor {floor.base} (pid {floor.pid})")

        walked = walk(server.base, layout, deep_page) if "deep-page" in args.names else None
        if walked:
            print(f"walked the cursor through pages 1 to {deep_page - 1:,} in {walked['seconds']:.1f} s "
                  f"({walked['per_page_ms']:.1f} ms a page, one connection), every page as expected")
        requests = request_sets(layout, walked["cursor"] if walked else None)
        sizes = {}
        for name in args.names:
            sizes[name] = {"server": preflight(name, server.base, False, layout, requests, deep_page)["bytes"],
                           "floor": preflight(name, floor.base, True, layout, requests, deep_page)["bytes"]}
        print("pre-flight checks passed (the expected files in the library's order, filters applied, download "
              "URLs fetch the object); answer bytes server/floor: "
              + ", ".join(f"{n} {s['server']:,}/{s['floor']:,}" for n, s in sizes.items()) + "\n")

        for rnd in range(1, args.rounds + 1):
            for name in args.names:
                pair: Dict[str, Dict[str, Any]] = {}
                for where in (["server", "floor"] if rnd % 2 else ["floor", "server"]):
                    child = server if where == "server" else floor
                    spec = {
                        "host": "127.0.0.1", "port": child.port, "scenario": name, "target_name": where,
                        "workspace": WORKSPACE, "token": TOKEN, "layout": layout.as_dict(),
                        "connections": args.connections, "duration": args.duration, "warmup": args.warmup,
                        "procs": 1, "request_timeout": args.request_timeout, "expect": 0,
                        "targets": requests[name]["targets"], "status": requests[name]["status"],
                        "watch_pids": {"target": child.pids(), **({"s3": s3.pid} if s3.pid else {})},
                    }
                    profiler = None
                    if where == "server" and name in args.profile_names and rnd == args.rounds:
                        os.makedirs(args.profile_dir, exist_ok=True)
                        profiler = run.Profiler(child.pid, args.warmup + args.duration,
                                                os.path.join(args.profile_dir, f"library-{name}"))
                    t_start = time.time()
                    result = run_loadgen(spec)
                    result.update(t_start=t_start, t_end=time.time(), round=rnd, target=where)
                    result["others_cores"] = run.others_cores(result)
                    if profiler is not None:
                        profiles[name] = profiler.finish() or {}
                    pair[where] = result
                    runs.append(result)
                pair["server"]["ratio"] = (round(pair["server"]["rps"] / pair["floor"]["rps"], 3)
                                           if pair["floor"]["rps"] else None)
                for where in ("server", "floor"):
                    r = pair[where]
                    util = r["proc_util"].get("target")
                    util_text = "-" if util is None else f"{100 * util:.0f}%"
                    print(f"round {rnd}/{args.rounds} {name:<13} {where:<6} {r['rps']:>8.1f} req/s  cpu "
                          f"{run.fmt_ms(r.get('cpu_ms_per_request')):>6} ms/req  p50 {r['p50_ms']:>7.2f}  "
                          f"p90 {r['p90_ms']:>7.2f}  p99 {r['p99_ms']:>7.2f} ms  err {r['errors']:>3}  loadgen cpu "
                          f"{100 * r['loadgen_util']:>3.0f}%  {where} cpu {util_text}"
                          f"  others {run.fmt(r['others_cores'], 2)} cores"
                          + (f"  ratio {r['ratio']:.2f}" if where == "server" and r.get("ratio") else "")
                          + (f"  errors: {r['error_samples'][:2]}" if r["errors"] else ""), flush=True)

        rss = {"server": server.rss_mb()}
        state = run.run_on_store(options, run._sweep_state)
        passes = run.server_passes(state, sweep["report"].get("started_at"))
        run.mark_overlaps(runs, passes)
        summary = run.summarise(runs, args.names)
        targets = evaluate(summary, runs, rss, sweep, layout)
        print(f"\nmedian of {args.rounds} round(s); ratio = median of per-round server/floor req/s; ms cpu/req = "
              "CPU time of the process under test per correct response; cpu = share of one core; others = cores "
              "used by other processes (max over the measurements)")
        print(f"workspace: {layout.records:,} files; deep page = page {deep_page:,} (pages of {PAGE}); SQLite, "
              "1 process, settings as shipped\n")
        run.print_table(summary)
        for name in args.names:
            print(f"  {name:<13} {SCENARIO_TEXT[name]}")
        if passes:
            print("\n* the server's own storage sweep ran during the measurement (its CPU counts in the server's)")
        noisy = [r for r in runs if (r.get("others_cores") or 0) > run.NOISY_CORES]
        if noisy:
            print(f"\nWARNING: in {len(noisy)} of {len(runs)} measurements other processes used more than "
                  f"{run.NOISY_CORES} cores (max {max(r['others_cores'] for r in noisy):.2f}): the ratios look "
                  "better than on a quiet machine; CPU per request is the steadier figure.")
        print(f"\nserver: VmRSS {rss['server']['VmRSS']} MB (peak VmHWM {rss['server']['VmHWM']} MB)")
        conditions = []
        if layout.records < run.TARGET_OBJECTS:
            conditions.append(f"a workspace of {layout.records:,} files (the deep page is page {deep_page:,})")
        if args.connections != run.TARGET_CONNECTIONS:
            conditions.append(f"{args.connections} connections")
        print_targets(targets, conditions)
        run.print_profiles(profiles)

        result = {
            "meta": {
                "run_id": run_id, "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
                "seconds": round(time.time() - started, 1), "git": run.git_revision(),
                "python": sys.version.split()[0], "cpus": os.cpu_count(), "loadavg_end": os.getloadavg(),
                "args": {k: v for k, v in vars(args).items()}, "layout": layout.as_dict(),
                "aircraft": [a[0] for a in AIRCRAFT], "sites": SITES, "deep_page": deep_page,
                "service": run.service_settings(shipped, args, None), "sweep_settings": shipped["sweep"],
                "conditions_differ": conditions, "scenarios": {n: SCENARIO_TEXT[n] for n in args.names},
                "noisy_measurements": len(noisy),
            },
            "population": population, "sweep": sweep, "server_sweep_passes": passes, "walk": walked,
            "answer_bytes": sizes, "summary": summary, "targets": targets, "rss_mb": rss, "profiles": profiles,
            "runs": runs,
        }
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
            print(f"\nresults written to {args.json}")
        print(f"{time.time() - started:.0f} s in all")
        return 0 if all(t["result"] != "MISS" for t in targets) else 1
    finally:
        for child in reversed(children):
            child.stop()
        s3.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--loadgen"]:
        sys.exit(loadgen_main())
    sys.exit(main())
