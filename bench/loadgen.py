"""A small, efficient HTTP/1.1 keep-alive load generator (standard library only).

    echo '{"port": 8080, "scenario": "sts", ...}' | python bench/loadgen.py

reads a JSON spec on stdin and prints one JSON result on stdout. ``run.py`` starts it as a
separate process for every measurement, so its CPU time is its own.

How it works: one coroutine per connection sends a pre-encoded request, awaits the response
(an ``asyncio.Protocol`` parses the status line and ``Content-Length``, nothing else), checks
the status and the envelope code, records the latency and sends the next request. Requests
that complete inside the measured window count; a warm-up before it is not counted. With
``procs`` > 1 the connections are split over forked worker processes (one event loop each).

Bounded: every run stops at ``warmup + duration`` seconds; a request that takes longer than
``request_timeout`` is aborted and counted as an error; the whole run is abandoned after
``hard_limit`` seconds. Loopback only: the target host must be 127.0.0.1 or ::1.
"""
from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import resource
import socket
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scenarios  # noqa: E402  (the directory of this file, also when started as a script)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _Connection(asyncio.Protocol):
    """Reads one response at a time; hands (status, body, close) to the waiting coroutine."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.waiter: Optional[asyncio.Future] = None
        self.need = -1  # total bytes of the current response once its head is parsed
        self.head_end = 0
        self.status = 0
        self.close_after = False
        self.lost: Optional[BaseException] = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                self._fail(ValueError("response without Content-Length"))
                return
            j = head.find(b"\r\n", i + 17)
            length = int(head[i + 17:j if j >= 0 else len(head)])
            self.status = int(head[9:12])
            self.close_after = b"\r\nconnection: close" in head
            self.head_end = end + 4
            self.need = end + 4 + length
        if len(buf) >= self.need:
            body = bytes(buf[self.head_end:self.need])
            del buf[:self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((self.status, body, self.close_after))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = exc or ConnectionResetError("connection closed by the server")
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(self.lost)


def _proc_ticks(pid: int) -> Optional[int]:
    """utime + stime of a process in clock ticks (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _system_ticks() -> Optional[List[int]]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return [sum(values) - idle, sum(values)]
    except (OSError, ValueError, IndexError):
        return None


def _snapshot(pids: Dict[str, List[int]]) -> Dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.time(), "cpu": time.process_time(), "utime": usage.ru_utime,
            "stime": usage.ru_stime,
            "pids": {name: [_proc_ticks(pid) for pid in group] for name, group in pids.items()},
            "system": _system_ticks()}


def _tick_delta(start: List[Optional[int]], end: List[Optional[int]]) -> Optional[List[Optional[int]]]:
    """Ticks per process over the window (None for one that was not there at both ends, e.g. a
    database backend that ended); None when none of them was."""
    deltas = [None if s is None or e is None else e - s for s, e in zip(start, end)]
    return None if all(d is None for d in deltas) else deltas


class _Checker:
    """Is a response correct? Status 200 and the expected envelope code."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.prefix = b'{"code":%d,' % expect

    def ok(self, status: int, body: bytes) -> Optional[str]:
        if status != 200:
            return f"HTTP {status}"
        if body.startswith(self.prefix):
            return None
        try:  # another key order or spacing is fine as long as the code is right
            code = json.loads(body).get("code")
        except (ValueError, AttributeError):
            return "not a JSON envelope"
        return None if code == self.expect else f"code {code}"


async def _run(spec: Dict[str, Any], conn_ids: List[int]) -> Dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = spec["host"], int(spec["port"])
    if host not in LOOPBACK:
        raise SystemExit(f"loadgen: refusing non-loopback host {host!r}")
    path = scenarios.paths(spec["workspace"], spec.get("prefix", ""))[scenarios.SCENARIOS[spec["scenario"]].route]
    checker = _Checker(int(spec["expect"]))
    layout = scenarios.Layout(**spec["layout"])
    if spec["scenario"] == "upload-callback":
        generator = scenarios.CallbackBodies(layout, spec["tag"])
        static: List[bytes] = []
    else:
        generator = None
        static = [scenarios.request_bytes(host, port, path, body, spec["token"])
                  for body in scenarios.static_bodies(spec["scenario"], layout)]
    timeout = float(spec.get("request_timeout", 30.0))
    t0 = time.time() + float(spec.get("start_delay", 0.0))
    t_start = t0 + float(spec["warmup"])
    # perf_counter for latencies and the window; time.time only to line processes up.
    p_start = time.perf_counter() + (t_start - time.time())
    p_end = p_start + float(spec["duration"])

    latencies: List[float] = []
    errors: Dict[str, int] = {}
    samples: List[str] = []
    counters = {"sent": 0, "done": 0, "reconnects": 0}
    conns: Dict[int, _Connection] = {}

    def error(kind: str, body: bytes = b"") -> None:
        errors[kind] = errors.get(kind, 0) + 1
        if len(samples) < 5:
            samples.append(f"{kind}: {body[:300]!r}")

    async def connect(cid: int) -> _Connection:
        _, proto = await loop.create_connection(_Connection, host, port)
        sock = proto.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns[cid] = proto
        return proto

    async def client(cid: int) -> None:
        proto = await connect(cid)
        n = len(static)
        index = (cid * 7919) % n if n else 0
        seq = 0
        perf = time.perf_counter
        while True:
            now = perf()
            if now >= p_end:
                break
            if generator is not None:
                request = scenarios.request_bytes(host, port, path, generator.body(cid, seq), spec["token"])
                seq += 1
            else:
                request = static[index]
                index = index + 1 if index + 1 < n else 0
            waiter = loop.create_future()
            proto.waiter = waiter
            proto.sent_at = now
            proto.transport.write(request)
            counters["sent"] += 1
            try:
                status, body, close = await waiter
            except (OSError, ValueError, asyncio.CancelledError) as exc:
                if perf() < p_end and not isinstance(exc, asyncio.CancelledError):
                    error(type(exc).__name__)
                    counters["reconnects"] += 1
                    proto = await connect(cid)
                    continue
                break
            done = perf()
            counters["done"] += 1
            if p_start <= done < p_end:
                problem = checker.ok(status, body)
                if problem is None:
                    latencies.append(done - now)
                else:
                    error(problem, body)
            if close:
                proto.transport.close()
                counters["reconnects"] += 1
                proto = await connect(cid)
        proto.transport.close()

    async def watchdog() -> None:
        # A request stuck longer than the timeout is aborted (and counted by its client).
        while time.perf_counter() < p_end + timeout:
            await asyncio.sleep(0.25)
            now = time.perf_counter()
            for proto in list(conns.values()):
                if proto.waiter is not None and now - proto.sent_at > timeout and proto.transport:
                    error("timeout")
                    proto.transport.abort()

    marks: Dict[str, Dict[str, Any]] = {}
    # A name stands for one pid or a list of them (a server's parent and workers), summed.
    pids = {name: [int(p) for p in (pid if isinstance(pid, list) else [pid])]
            for name, pid in (spec.get("watch_pids") or {}).items()}

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, p_start - time.perf_counter()))
        marks["start"] = _snapshot(pids)
        await asyncio.sleep(max(0.0, p_end - time.perf_counter()))
        marks["end"] = _snapshot(pids)

    await asyncio.sleep(max(0.0, t0 - time.time()))
    dog = asyncio.ensure_future(watchdog())
    tasks = [asyncio.ensure_future(client(cid)) for cid in conn_ids]
    sampling = asyncio.ensure_future(sampler())
    hard = float(spec["warmup"]) + float(spec["duration"]) + timeout + 10
    done, pending = await asyncio.wait(tasks, timeout=max(hard - (time.time() - t0), 1.0))
    for task in pending:
        task.cancel()
        error("abandoned")
    for task in done:
        if task.exception() is not None:
            error(f"client crashed: {task.exception()!r}")
    await sampling
    dog.cancel()
    for proto in conns.values():
        if proto.transport is not None:
            proto.transport.abort()

    start, end = marks["start"], marks["end"]
    return {
        "latencies": latencies, "errors": errors, "error_samples": samples,
        "wall": end["wall"] - start["wall"], "cpu": end["cpu"] - start["cpu"],
        "utime": end["utime"] - start["utime"], "stime": end["stime"] - start["stime"],
        "pid_ticks": {name: _tick_delta(start["pids"][name], end["pids"][name]) for name in pids},
        "system": (None if not start["system"] or not end["system"]
                   else [end["system"][0] - start["system"][0], end["system"][1] - start["system"][1]]),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **counters,
    }


def _worker(spec: Dict[str, Any], conn_ids: List[int], pipe: Any = None) -> Dict[str, Any]:
    gc.disable()  # bounded run; collections would only add noise to the client's latencies
    try:
        result = asyncio.run(_run(spec, conn_ids))
    except BaseException as exc:  # report, do not hang the parent
        result = {"fatal": repr(exc)}
    if pipe is not None:
        pipe.send(result)
        pipe.close()
    return result


def _percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(1, int(round(q / 100.0 * len(sorted_values) + 0.4999)))  # nearest rank
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one measurement; returns the summary (what ``run.py`` records)."""
    connections = int(spec["connections"])
    procs = max(1, min(int(spec.get("procs", 1)), connections))
    # All processes start at the same wall time, after they have had time to start.
    spec = dict(spec, start_delay=0.3 if procs > 1 else 0.0)
    groups = [list(range(p, connections, procs)) for p in range(procs)]
    if procs == 1:
        parts = [_worker(spec, groups[0])]
    else:
        ctx = multiprocessing.get_context("fork")
        jobs = []
        for ids in groups:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(spec, ids, child), daemon=True)
            proc.start()
            child.close()
            jobs.append((proc, parent))
        parts = []
        limit = time.time() + float(spec["warmup"]) + float(spec["duration"]) + 60
        for proc, parent in jobs:
            if parent.poll(max(0.1, limit - time.time())):
                parts.append(parent.recv())
            else:
                parts.append({"fatal": "worker did not report"})
            proc.join(5)
    fatal = [p["fatal"] for p in parts if "fatal" in p]
    if fatal:
        return {"fatal": fatal}
    latencies = sorted(x for p in parts for x in p["latencies"])
    errors: Dict[str, int] = {}
    for p in parts:
        for kind, count in p["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    wall = max(p["wall"] for p in parts)
    cpu = sum(p["cpu"] for p in parts)
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    first = parts[0]
    pid_cpu = {name: (None if t is None else round(sum(x for x in t if x is not None) / ticks / wall, 3))
               for name, t in first["pid_ticks"].items()}
    # CPU seconds the process under test spent per correct response over the window: the cost
    # of one request, whatever the number of connections or the machine's other work (clock
    # ticks: 10 ms each, so a window needs some hundreds of requests to be read to 1%).
    target_ticks = first["pid_ticks"].get("target")
    target_cpu_s = None if target_ticks is None else sum(x for x in target_ticks if x is not None) / ticks
    # Each process of a group on its own (how evenly a server's workers shared the load).
    pid_cpu_each = {name: [None if x is None else round(x / ticks / wall, 3) for x in t]
                    for name, t in first["pid_ticks"].items() if t is not None and len(t) > 1}
    system = first["system"]
    ms = 1000.0
    return {
        "scenario": spec["scenario"], "target": spec.get("target_name", ""),
        "connections": connections, "procs": procs, "duration": round(wall, 3),
        "requests": len(latencies), "rps": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 50) * ms, 3),
        "p90_ms": round(_percentile(latencies, 90) * ms, 3),
        "p99_ms": round(_percentile(latencies, 99) * ms, 3),
        "max_ms": round(latencies[-1] * ms, 3) if latencies else None,
        "mean_ms": round(sum(latencies) / len(latencies) * ms, 3) if latencies else None,
        "errors": sum(errors.values()), "error_kinds": errors,
        "error_samples": [s for p in parts for s in p["error_samples"]][:5],
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen_user_s": round(sum(p["utime"] for p in parts), 3),
        "loadgen_sys_s": round(sum(p["stime"] for p in parts), 3),
        # Share of one core; with procs > 1 it may exceed 1.0 (the limit is procs).
        "loadgen_util": round(cpu / wall, 3) if wall > 0 else None,
        "loadgen_util_max_proc": round(max(p["cpu"] for p in parts) / wall, 3) if wall > 0 else None,
        "loadgen_maxrss_kb": max(p["maxrss_kb"] for p in parts),
        # CPU of the watched processes, as a share of one core, over the same window; a group
        # (a server's parent and workers) is summed, so it may exceed 1.0.
        "proc_util": pid_cpu, "proc_util_each": pid_cpu_each,
        "target_cpu_s": None if target_cpu_s is None else round(target_cpu_s, 3),
        "cpu_ms_per_request": (round(1000.0 * target_cpu_s / len(latencies), 4)
                               if target_cpu_s is not None and latencies else None),
        # The whole machine's busy share (all cores) over the window: other people's work shows here.
        "machine_busy": round(system[0] / system[1], 3) if system and system[1] else None,
        "sent": sum(p["sent"] for p in parts), "completed_total": sum(p["done"] for p in parts),
        "reconnects": sum(p["reconnects"] for p in parts),
    }


def main() -> int:
    spec = json.loads(sys.stdin.read())
    result = run(spec)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 1 if "fatal" in result else 0


if __name__ == "__main__":
    sys.exit(main())
