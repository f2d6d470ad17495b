"""The MQTT benchmark: ``dji-media serve`` answering DJI Docks through a private Mosquitto,
against a floor client on the same broker that answers at once.

    python bench/mqtt.py [--docks 20] [--duration 10] [--rounds 3] [--json bench/results-mqtt.json]
    python bench/mqtt.py --quick          # 1 round x 2 s: a smoke run, no JSON

Starts SeaweedFS (the storage and STS of bench/run.py), a private Mosquitto with two listeners
(the second one mounts its clients under ``floor/``, so the server and the floor never see each
other's docks), the server (``python -m dji_media.cli serve`` with the configuration bench/run.py
writes, SQLite in the temp dir, plus an ``mqtt`` section for the broker and a ``devices``
section binding the docks) and the floor (``bench/mqtt_floor.py``). Then, round after round,
each scenario against the server and the floor back to back: ``--docks`` simulated docks, each
an MQTT 5 connection of a load generator process (this file, ``--loadgen``), publish at QoS 1 in
a closed loop (``--inflight`` messages unanswered per dock, 1 by default: a dock waits for the
reply before the next message) and time each message from its publication to its reply.

Scenarios: ``file_upload_callback`` (events; a new file each, DJI's documented callback, answered
by ``events_reply``) and ``storage_config_get`` (requests; answered by ``requests_reply`` with
the STS credentials, protocol section 6.2). Per scenario and target: acknowledged messages per
second, the ratio server/floor, latency p50/p90/p99, the server's CPU per message (utime + stime
from ``/proc/<pid>/stat`` over the measured window), lost messages (published minus acknowledged
once the docks drained, without resending) and, read from the SQLite file after the run, records
of acknowledged files that are missing or were written more than once. See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as _dt
import importlib.util
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)  # the checkout's dji_media, also for the child processes (PYTHONPATH)

import run as bench  # noqa: E402  (bench/run.py: configuration, processes, profiles)
from loadgen import _snapshot, _tick_delta  # noqa: E402
from scenarios import WORKSPACE  # noqa: E402

SCENARIO_NAMES = ("file_upload_callback", "storage_config_get")
KIND = {"file_upload_callback": "events", "storage_config_get": "requests"}
# (scenario, metric, comparison, bound, text): ratio is server / floor acknowledged per second.
TARGETS = [
    ("file_upload_callback", "ratio", ">=", 0.50, "file_upload_callback (new files) >= 50% of floor acks/s"),
    ("storage_config_get", "ratio", ">=", 0.70, "storage_config_get >= 70% of floor acks/s"),
]
TAIL_FACTOR = 5.0  # p99 <= 5 x p50
FLOOR_MOUNT = "floor/"  # the floor's listener puts its clients' topics under this
FLOW_WORKSPACE = "bench-flow"  # the pre-flight dock's: its objects never share a folder with the load's
FLOW_DOCK = "BENCHFLOW01"
QUICK = {"rounds": 1, "duration": 2.0, "warmup": 0.5, "json": ""}
MAX_INFLIGHT = 16  # below Mosquitto's receive maximum (20) for one connection


def dock_sns(count: int) -> List[str]:
    return [f"BENCHDOCK{n:03d}" for n in range(1, count + 1)]


def flight_id(tag: str, dock: int) -> str:
    return f"{tag}-{dock:02d}"


def object_key(prefix: str, tag: str, dock: int, seq: int) -> str:
    """The file a callback reports: a dock's mission folder, one new name per message."""
    return f"{prefix}/DJI_202504111632_001_{flight_id(tag, dock)}/DJI_20250411163430_{seq:06d}_V.jpeg"


def load_broker_module() -> Any:
    """tests/mqtt_broker.py, the project's private-Mosquitto launcher (by path: tests/ also has
    a loadgen module, which must not shadow bench/loadgen.py)."""
    path = os.path.join(ROOT, "tests", "mqtt_broker.py")
    spec = importlib.util.spec_from_file_location("mqtt_broker", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ the docks' client
#
# A minimal MQTT 5 client on asyncio.Protocol (CONNECT, SUBSCRIBE, PUBLISH at QoS 1, PUBACK of
# what it receives): a load generator built on a full client library would spend more CPU per
# message than the floor it measures, on a 2-core machine.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class DockProtocol(asyncio.Protocol):
    """One dock's connection. ``on_publish(topic, payload)`` gets every message received."""

    def __init__(self, on_publish: Callable[[bytes, bytes], None]) -> None:
        self.on_publish = on_publish
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future = loop.create_future()
        self.suback: asyncio.Future = loop.create_future()
        self.lost: Optional[BaseException] = None
        self.pid = 0
        self.refused_pubacks = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = exc or ConnectionError("the broker closed the connection")
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            # The fixed header: a type byte, then the remaining length (1 to 4 bytes, 7 bits each).
            length, shift, i, complete = 0, 0, pos + 1, False
            while i < end and i - pos <= 4:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    complete = True
                    break
            if not complete or end - i < length:
                break  # an incomplete packet: wait for more bytes
            self._packet(buf[pos], bytes(buf[i:i + length]))
            pos = i + length
        if pos:
            del buf[:pos]

    def _packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 3:  # PUBLISH
            qos = (first >> 1) & 3
            tlen = (body[0] << 8) | body[1]
            topic = body[2:2 + tlen]
            p = 2 + tlen
            if qos:
                assert self.transport is not None
                self.transport.write(b"\x40\x02" + body[p:p + 2])  # PUBACK, success
                p += 2
            plen, shift = 0, 0
            while True:  # the properties' length, then the properties, skipped
                byte = body[p]
                p += 1
                plen |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            self.on_publish(topic, body[p + plen:])
        elif kind == 4:  # PUBACK
            if len(body) > 2 and body[2] >= 0x80:
                self.refused_pubacks += 1
        elif kind == 2 and not self.connack.done():  # CONNACK: flags, reason code, properties
            if body[1] != 0:
                self.connack.set_exception(ConnectionError(f"CONNACK reason code {body[1]:#x}"))
            else:
                self.connack.set_result(None)
        elif kind == 9 and not self.suback.done():  # SUBACK: packet id, properties, reason codes
            p, plen, shift = 2, 0, 0
            while True:
                byte = body[p]
                p += 1
                plen |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            codes = list(body[p + plen:])
            if any(code >= 0x80 for code in codes):
                self.suback.set_exception(ConnectionError(f"subscription refused: {codes}"))
            else:
                self.suback.set_result(codes)

    def next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(self, topic: bytes, payload: bytes) -> None:
        """QoS 1; the PUBACK is not waited for (the reply is what counts)."""
        assert self.transport is not None
        body = len(topic).to_bytes(2, "big") + topic + self.next_pid().to_bytes(2, "big") + b"\x00" + payload
        self.transport.write(b"\x32" + _varint(len(body)) + body)


async def connect_dock(host: str, port: int, client_id: str, topics: List[str],
                       on_publish: Callable[[bytes, bytes], None], timeout: float = 10.0) -> DockProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: DockProtocol(on_publish), host, port)
    assert proto.transport is not None
    # CONNECT: "MQTT", version 5, clean start, keep-alive 300 s (a measurement is shorter), no
    # properties; the client id.
    proto.transport.write(_packet(0x10, _utf8("MQTT") + bytes([5, 0x02]) + (300).to_bytes(2, "big") + b"\x00"
                                  + _utf8(client_id)))
    await asyncio.wait_for(proto.connack, timeout)
    proto.transport.write(_packet(0x82, proto.next_pid().to_bytes(2, "big") + b"\x00"
                                  + b"".join(_utf8(topic) + b"\x01" for topic in topics)))
    await asyncio.wait_for(proto.suback, timeout)
    return proto


# ------------------------------------------------------------------------------ the messages

# DJI's documented file_upload_callback (protocol section 6.3) with this message's values; encoded
# once, filled with %-formatting (json.dumps per message would cost the load generator more).
CALLBACK_TEMPLATE = (
    '{"tid":"%s","bid":"%s","timestamp":%d,"gateway":"%s","need_reply":1,"method":"file_upload_callback",'
    '"data":{"file":{"object_key":"%s","path":"%s","name":"%s","cloud_to_cloud_id":"DEFAULT",'
    '"ext":{"flight_id":"%s","drone_model_key":"0-91-0","payload_model_key":"1-81-0","is_original":true},'
    '"metadata":{"gimbal_yaw_degree":"-91.40","absolute_altitude":56.311,"relative_altitude":41.124,'
    '"create_time":"2025-04-11 16:34:30","shoot_position":{"lat":22.1,"lng":113.9}}},'
    '"flight_task":{"uploaded_file_count":%d,"expected_file_count":100000,"flight_type":0}}}'
)
STORAGE_TEMPLATE = ('{"tid":"%s","bid":"%s","timestamp":%d,"gateway":"%s","method":"storage_config_get",'
                    '"data":{"module":0}}')


def message(scenario: str, prefix: str, tag: str, dock: int, sn: str, seq: int) -> Tuple[str, bytes]:
    """(tid, payload) of message ``seq`` of dock ``dock`` in the measurement ``tag``."""
    tid = f"{tag}-{dock:02d}-{seq}"
    bid = f"b-{tid}"
    now = int(time.time() * 1000)
    if scenario == "storage_config_get":
        return tid, (STORAGE_TEMPLATE % (tid, bid, now, sn)).encode()
    key = object_key(prefix, tag, dock, seq)
    folder, name = key.split("/")[-2:]
    return tid, (CALLBACK_TEMPLATE % (tid, bid, now, sn, key, folder, name, flight_id(tag, dock), seq + 1)).encode()


def reply_ok(scenario: str, reply: Dict[str, Any]) -> bool:
    """A correct answer: result 0; for storage_config_get, credentials in ``output``."""
    data = reply.get("data")
    if not isinstance(data, dict) or data.get("result") != 0 or reply.get("method") != scenario:
        return False
    if scenario == "storage_config_get":
        output = data.get("output")
        return isinstance(output, dict) and bool((output.get("credentials") or {}).get("access_key_id"))
    return True


# ------------------------------------------------------------------------------ the load generator


def _percentile(values: List[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


async def _loadgen(spec: Dict[str, Any]) -> Dict[str, Any]:
    scenario, tag, prefix = spec["scenario"], spec["tag"], spec["prefix"]
    sns: List[str] = spec["docks"]
    inflight = int(spec["inflight"])
    warmup, duration = float(spec["warmup"]), float(spec["duration"])
    drain, request_timeout = float(spec["drain"]), float(spec["request_timeout"])
    kind = KIND[scenario]
    loop = asyncio.get_running_loop()
    pids = {name: [int(p) for p in (pid if isinstance(pid, list) else [pid])]
            for name, pid in (spec.get("watch_pids") or {}).items()}

    pending: Dict[str, Tuple[float, asyncio.Future]] = {}
    acked: Dict[str, float] = {}  # tid -> when its correct reply came (any time, for "lost")
    replies: collections.Counter = collections.Counter()
    latencies: List[float] = []
    errors: collections.Counter = collections.Counter()
    samples: List[str] = []
    window = {"start": float("inf"), "end": float("inf")}
    counters = {"published": 0, "late": 0, "in_window": 0}

    def on_publish(topic: bytes, payload: bytes) -> None:
        now = time.perf_counter()
        try:
            reply = json.loads(payload)
            tid = reply["tid"]
        except (ValueError, KeyError, TypeError):
            errors["unreadable reply"] += 1
            return
        replies[tid] += 1
        ok = reply_ok(scenario, reply)
        if ok and tid not in acked:
            acked[tid] = now
        entry = pending.pop(tid, None)
        if entry is None:
            counters["late"] += 1  # after its timeout, or a second reply
            return
        sent, fut = entry
        if not ok:
            errors["wrong reply"] += 1
            if len(samples) < 3:
                samples.append(bytes(payload[:300]).decode("utf-8", "replace"))
        elif window["start"] <= now <= window["end"]:
            latencies.append(now - sent)
            counters["in_window"] += 1
        if not fut.done():
            fut.set_result(None)

    protos = []
    for index, sn in enumerate(sns):
        protos.append(await connect_dock(spec["host"], int(spec["port"]), f"bench-dock-{tag}-{index}",
                                         [f"thing/product/{sn}/{kind}_reply"], on_publish))
    publish_topics = [f"thing/product/{sn}/{kind}".encode() for sn in sns]
    seqs = [0] * len(sns)
    start = time.perf_counter()
    window["start"], window["end"] = start + warmup, start + warmup + duration
    marks: Dict[str, Any] = {}

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, window["start"] - time.perf_counter()))
        marks["start"] = _snapshot(pids)
        await asyncio.sleep(max(0.0, window["end"] - time.perf_counter()))
        marks["end"] = _snapshot(pids)

    async def slot(index: int) -> None:
        proto = protos[index]
        while time.perf_counter() < window["end"]:
            if proto.lost is not None:
                errors["connection lost"] += 1
                return
            seq = seqs[index]
            seqs[index] += 1
            tid, payload = message(scenario, prefix, tag, index, sns[index], seq)
            fut = loop.create_future()
            pending[tid] = (time.perf_counter(), fut)
            proto.publish(publish_topics[index], payload)
            counters["published"] += 1
            await fut

    async def expire() -> None:
        """Messages unanswered for request_timeout: an error, and the dock goes on (no resend:
        a resend would hide a lost message)."""
        while True:
            await asyncio.sleep(0.2)
            limit = time.perf_counter() - request_timeout
            for tid, (sent, fut) in list(pending.items()):
                if sent < limit:
                    del pending[tid]
                    errors["timeout"] += 1
                    if not fut.done():
                        fut.set_result(None)

    sampling = asyncio.ensure_future(sampler())
    expiring = asyncio.ensure_future(expire())
    slots = [asyncio.ensure_future(slot(i)) for i in range(len(sns)) for _ in range(inflight)]
    await asyncio.gather(*slots)
    await sampling
    # The drain: no new message; the last ones may still be answered (or expire).
    drain_start = time.perf_counter()
    published = counters["published"]
    while len(acked) < published and time.perf_counter() - drain_start < drain:
        await asyncio.sleep(0.02)
    drained = time.perf_counter() - drain_start
    expiring.cancel()
    for proto in protos:
        if proto.transport is not None:
            proto.transport.write(b"\xe0\x00")  # DISCONNECT
            proto.transport.close()

    first, last = marks["start"], marks["end"]
    wall = last["wall"] - first["wall"]
    ticks = os.sysconf("SC_CLK_TCK")
    proc_util: Dict[str, Optional[float]] = {}
    proc_cpu_s: Dict[str, Optional[float]] = {}
    for name in pids:
        delta = _tick_delta(first["pids"][name], last["pids"][name])
        total = None if delta is None else sum(d or 0 for d in delta)
        proc_cpu_s[name] = None if total is None else total / ticks
        proc_util[name] = None if total is None or wall <= 0 else round(total / ticks / wall, 3)
    system = (None if not first["system"] or not last["system"]
              else [last["system"][0] - first["system"][0], last["system"][1] - first["system"][1]])
    in_window = counters["in_window"]
    latencies.sort()
    target_cpu = proc_cpu_s.get("target")
    acked_seqs: Dict[str, List[int]] = {}
    if scenario == "file_upload_callback":
        for tid in acked:
            _, dock, seq = tid.rsplit("-", 2)
            acked_seqs.setdefault(str(int(dock)), []).append(int(seq))
    loadgen_cpu = last["cpu"] - first["cpu"]
    return {
        "scenario": scenario, "target_name": spec["target_name"], "tag": tag, "docks": len(sns),
        "inflight": inflight, "duration": duration, "wall": round(wall, 3),
        "acks_in_window": in_window, "rps": round(in_window / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(1000 * _percentile(latencies, 0.50), 3),
        "p90_ms": round(1000 * _percentile(latencies, 0.90), 3),
        "p99_ms": round(1000 * _percentile(latencies, 0.99), 3),
        "max_ms": round(1000 * latencies[-1], 3) if latencies else 0.0,
        "published": published, "acknowledged": len(acked), "lost": published - len(acked),
        "duplicate_replies": sum(n - 1 for n in replies.values() if n > 1),
        "late_replies": counters["late"], "drain_s": round(drained, 3),
        "errors": sum(errors.values()), "error_kinds": dict(errors), "error_samples": samples,
        "refused_pubacks": sum(p.refused_pubacks for p in protos),
        "cpu_ms_per_message": (round(1000 * target_cpu / in_window, 4) if target_cpu is not None and in_window
                               else None),
        "loadgen_cpu_s": round(loadgen_cpu, 3), "loadgen_util": round(loadgen_cpu / wall, 3) if wall > 0 else None,
        "proc_util": proc_util, "machine_busy": round(system[0] / system[1], 3) if system and system[1] else None,
        "acked_seqs": acked_seqs,
    }


def loadgen_main() -> int:
    spec = json.loads(sys.stdin.read())
    try:
        result = asyncio.run(_loadgen(spec))
    except BaseException as exc:  # reported to the parent, which stops the run
        result = {"fatal": repr(exc)}
    print(json.dumps(result))
    return 0


def run_loadgen(spec: Dict[str, Any]) -> Dict[str, Any]:
    limit = float(spec["warmup"]) + float(spec["duration"]) + float(spec["drain"]) + float(spec["request_timeout"]) + 60
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--loadgen"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=limit, cwd=HERE, env=bench.ENV)
    try:
        result: Dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"the dock load generator failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None
    if "fatal" in result:
        raise RuntimeError(f"the dock load generator failed: {result['fatal']}\n{proc.stderr[-3000:]}")
    return result


# ------------------------------------------------------------------------------ pre-flight


async def _ask(port: int, sn: str, kind: str, payload: bytes, timeout: float = 10.0) -> Dict[str, Any]:
    """Publish one message as dock ``sn``; its reply (same tid), decoded."""
    tid = json.loads(payload)["tid"]
    answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_publish(topic: bytes, body: bytes) -> None:
        reply = json.loads(body)
        if reply.get("tid") == tid and not answer.done():
            answer.set_result(reply)

    proto = await connect_dock("127.0.0.1", port, f"bench-preflight-{random.randrange(1 << 30)}",
                               [f"thing/product/{sn}/{kind}_reply"], on_publish)
    try:
        proto.publish(f"thing/product/{sn}/{kind}".encode(), payload)
        try:
            result: Dict[str, Any] = await asyncio.wait_for(answer, timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"no {kind}_reply within {timeout:g} s") from None
        return result
    finally:
        if proto.transport is not None:
            proto.transport.write(b"\xe0\x00")
            proto.transport.close()


def preflight(port: int, sn: str, prefix: str, is_floor: bool, database: Optional[str], table: str) -> None:
    """One message of each scenario, its answer checked in full (the load generator checks the
    result and, for storage_config_get, that there are credentials); the server's callback is
    read back from the database."""
    who = "floor" if is_floor else "server"
    _, payload = message("storage_config_get", prefix, "pre", 0, sn, 0)
    reply = asyncio.run(_ask(port, sn, "requests", payload))
    data = reply.get("data") or {}
    output = data.get("output") or {}
    credentials = output.get("credentials") or {}
    if (data.get("result") != 0 or reply.get("method") != "storage_config_get"
            or set(credentials) != {"access_key_id", "access_key_secret", "expire", "security_token"}
            or not isinstance(credentials.get("expire"), int) or not credentials.get("access_key_id")):
        raise RuntimeError(f"pre-flight storage_config_get against the {who}: {reply}")
    if not is_floor and (output.get("object_key_prefix") != prefix or output.get("bucket") != bench.BUCKET):
        raise RuntimeError(f"pre-flight storage_config_get against the server: {output}")
    tag = "prefloor" if is_floor else "preserver"
    _, payload = message("file_upload_callback", prefix, tag, 0, sn, 0)
    reply = asyncio.run(_ask(port, sn, "events", payload))
    if reply.get("data") != {"result": 0} or reply.get("method") != "file_upload_callback":
        raise RuntimeError(f"pre-flight file_upload_callback against the {who}: {reply}")
    if database is not None:
        key = object_key(prefix, tag, 0, 0)
        db = sqlite3.connect(database, timeout=10)
        try:
            found = db.execute(f"SELECT COUNT(*) FROM {table} WHERE workspace_id = ? AND object_key = ?",
                               (WORKSPACE, key)).fetchone()[0]
        finally:
            db.close()
        if found != 1:
            raise RuntimeError(f"pre-flight: the acknowledged callback of {key} left {found} record(s)")


def flow_check(broker_url: str, tmp: str) -> str:
    """The whole dock flow through the server, by the project's dock simulator (storage_config_get,
    a PUT with the temporary credentials, the callback), as a dock of a workspace of its own."""
    proc = subprocess.run([sys.executable, "-m", "dji_media.cli", "simulate-dock", "--broker", broker_url,
                           "--sn", FLOW_DOCK, "--files", "2", "--mission", "BenchFlow"],
                          capture_output=True, text=True, timeout=120, cwd=tmp, env=bench.ENV)
    if proc.returncode != 0:
        raise RuntimeError(f"dji-media simulate-dock failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "done"


# ------------------------------------------------------------------------------ the records


def check_records(database: str, table: str, prefix: str, runs: List[Dict[str, Any]]) -> None:
    """For each server measurement of file_upload_callback: the acknowledged files missing from
    the store, the files recorded more than once (a second row, or a row written twice: revision
    above 1) and the files recorded but not acknowledged (their reply was lost)."""
    db = sqlite3.connect(database, timeout=30)
    try:
        rows = db.execute(f"SELECT object_key, revision FROM {table} WHERE workspace_id = ?", (WORKSPACE,)).fetchall()
    finally:
        db.close()
    by_tag: Dict[str, List[Tuple[str, int]]] = collections.defaultdict(list)
    for key, revision in rows:
        parts = key.split("/")
        if len(parts) == 4 and parts[2].startswith("DJI_202504111632_001_"):
            by_tag[parts[2][len("DJI_202504111632_001_"):].rsplit("-", 1)[0]].append((key, revision))
    for r in runs:
        if r["target"] != "server" or r["scenario"] != "file_upload_callback":
            continue
        mine = by_tag.get(r["tag"], [])
        keys = collections.Counter(key for key, _ in mine)
        acked = {object_key(prefix, r["tag"], int(dock), seq) for dock, seqs in r["acked_seqs"].items() for seq in seqs}
        r["records"] = len(mine)
        r["missing_records"] = len(acked - set(keys))
        r["duplicated_records"] = sum(n - 1 for n in keys.values()) + sum(1 for _, rev in mine if rev > 1)
        r["recorded_unacknowledged"] = len(set(keys) - acked)


# ------------------------------------------------------------------------------ summary


def med(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarise(runs: List[Dict[str, Any]], names: List[str]) -> Dict[str, Any]:
    summary: Dict[str, Any] = {}
    for name in names:
        entry: Dict[str, Any] = {}
        for target in ("server", "floor"):
            mine = [r for r in runs if r["scenario"] == name and r["target"] == target]
            if not mine:
                continue
            entry[target] = {
                "docks": mine[0]["docks"], "inflight": mine[0]["inflight"],
                "rps": med([r["rps"] for r in mine]),
                "cpu_ms_per_message": med([r.get("cpu_ms_per_message") for r in mine]),
                "p50_ms": med([r["p50_ms"] for r in mine]), "p90_ms": med([r["p90_ms"] for r in mine]),
                "p99_ms": med([r["p99_ms"] for r in mine]),
                "errors": sum(r["errors"] for r in mine), "lost": sum(r["lost"] for r in mine),
                "published": sum(r["published"] for r in mine),
                "acknowledged": sum(r["acknowledged"] for r in mine),
                "duplicate_replies": sum(r["duplicate_replies"] for r in mine),
                "missing_records": (sum(r["missing_records"] for r in mine)
                                    if all("missing_records" in r for r in mine) else None),
                "duplicated_records": (sum(r["duplicated_records"] for r in mine)
                                       if all("duplicated_records" in r for r in mine) else None),
                "loadgen_util": med([r["loadgen_util"] for r in mine]),
                "target_util": med([r["proc_util"].get("target") for r in mine]),
                "broker_util": med([r["proc_util"].get("broker") for r in mine]),
                "s3_util": med([r["proc_util"].get("s3") for r in mine]),
                "machine_busy": med([r["machine_busy"] for r in mine]),
                "others_cores": med([r.get("others_cores") for r in mine]),
                "others_cores_max": max((r.get("others_cores") or 0) for r in mine),
                "rounds_rps": [r["rps"] for r in mine],
                "rounds_cpu_ms_per_message": [r.get("cpu_ms_per_message") for r in mine],
            }
        ratios = [r["ratio"] for r in runs if r["scenario"] == name and r["target"] == "server"
                  and r.get("ratio") is not None]
        entry["ratio"] = med(ratios)
        entry["rounds_ratio"] = ratios
        summary[name] = entry
    return summary


def evaluate(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    results: List[Dict[str, Any]] = []

    def add(text: str, value: Optional[float], ok: Optional[bool], unit: str = "") -> None:
        results.append({"target": text, "value": value, "unit": unit,
                        "result": "n/a" if ok is None else ("PASS" if ok else "MISS")})

    for name, metric, comparison, bound, text in TARGETS:
        if name not in summary:
            continue
        value = summary[name].get(metric)
        add(text, value, None if value is None else (value >= bound if comparison == ">=" else value <= bound),
            "x floor")
    for name, entry in summary.items():
        server = entry.get("server") or {}
        p50, p99 = server.get("p50_ms"), server.get("p99_ms")
        add(f"{name}: p99 <= {TAIL_FACTOR:g} x p50 (server)", None if not p50 or p99 is None else round(p99 / p50, 2),
            None if not p50 or p99 is None else p99 <= TAIL_FACTOR * p50, "x p50")
        add(f"{name}: zero lost, zero errors (server, all rounds)", server.get("lost", 0) + server.get("errors", 0),
            server.get("lost", 0) == 0 and server.get("errors", 0) == 0, "messages")
        if name == "file_upload_callback":
            missing, duplicated = server.get("missing_records"), server.get("duplicated_records")
            value = None if missing is None or duplicated is None else missing + duplicated
            add(f"{name}: zero acknowledged files missing from the store, zero recorded twice", value,
                None if value is None else value == 0, "records")
    return results


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(summary: Dict[str, Any]) -> None:
    head = (f"{'scenario':<21} {'docks':>5} {'server acks/s':>13} {'floor acks/s':>12} {'ratio':>5} "
            f"{'srv ms cpu/msg':>14} {'flr ms cpu/msg':>14} {'server p50/p90/p99 ms':>22} "
            f"{'floor p50/p90/p99 ms':>21} {'lost':>4} {'dup':>3} {'miss':>4} {'err':>3} {'lg cpu':>6} "
            f"{'srv cpu':>7} {'flr cpu':>7} {'mqtt cpu':>8} {'others':>6}")
    print(head)
    print("-" * len(head))
    for name, entry in summary.items():
        s, f = entry.get("server", {}), entry.get("floor", {})

        def lat(d: Dict[str, Any]) -> str:
            if not d:
                return "-"
            return "/".join(fmt(d.get(k), 2 if (d.get(k) or 99) < 10 else 1) for k in ("p50_ms", "p90_ms", "p99_ms"))

        def pct(v: Optional[float]) -> str:
            return "-" if v is None else f"{100 * v:.0f}%"

        def count(v: Optional[int]) -> str:
            return "-" if v is None else str(v)

        docks = str(s.get("docks", ""))
        if s.get("inflight", 1) != 1:
            docks += f"x{s['inflight']}"
        print(f"{name:<21} {docks:>5} {fmt(s.get('rps')):>13} {fmt(f.get('rps')):>12} {fmt(entry.get('ratio'), 2):>5} "
              f"{fmt(s.get('cpu_ms_per_message'), 3):>14} {fmt(f.get('cpu_ms_per_message'), 3):>14} {lat(s):>22} "
              f"{lat(f):>21} {count(s.get('lost')):>4} {count(s.get('duplicated_records')):>3} "
              f"{count(s.get('missing_records')):>4} {count(s.get('errors')):>3} {pct(s.get('loadgen_util')):>6} "
              f"{pct(s.get('target_util')):>7} {pct(f.get('target_util')):>7} {pct(s.get('broker_util')):>8} "
              f"{fmt(max(s.get('others_cores_max') or 0, f.get('others_cores_max') or 0), 2):>6}")


# ------------------------------------------------------------------------------ main


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dji_media MQTT benchmark: dji-media serve answering simulated docks "
                                            "through Mosquitto, against a floor client on the same broker")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round x 2 s, 0.5 s warm-up, no JSON (options given explicitly win)")
    p.add_argument("--docks", type=int, default=20, help="simulated docks, one MQTT connection each (20)")
    p.add_argument("--inflight", type=int, default=1,
                   help=f"messages each dock has unanswered at once (1: it waits for each reply; at most "
                        f"{MAX_INFLIGHT})")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per scenario and target (10)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each measurement (1)")
    p.add_argument("--rounds", type=int, default=None, help="rounds; each number is reported as its median (3)")
    p.add_argument("--drain", type=float, default=10.0,
                   help="seconds the docks wait for their last replies after the window (then: lost)")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="a message unanswered this long is an error; the dock goes on without resending")
    p.add_argument("--scenarios", default=",".join(SCENARIO_NAMES), help="comma-separated subset to run")
    p.add_argument("--mqtt-option", action="append", default=[], metavar="KEY=VALUE",
                   help="what-if: an mqtt setting of the server, e.g. max_concurrency=64 (repeatable)")
    p.add_argument("--floor-nagle", action="store_true",
                   help="what-if: the floor without TCP_NODELAY (Nagle's algorithm on, as the server's client has it)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="the server's logging.level")
    p.add_argument("--profile", default="", help="comma-separated scenarios to profile with py-spy (last round)")
    p.add_argument("--profile-dir", default=os.path.join(HERE, "profiles"))
    p.add_argument("--json", default=None,
                   help="where to write the results (default bench/results-mqtt.json; '': nowhere)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (SQLite file, logs)")
    args = p.parse_args(argv)
    defaults = {"rounds": 3, "duration": 10.0, "warmup": 1.0, "json": os.path.join(HERE, "results-mqtt.json")}
    for key, value in (dict(defaults, **QUICK) if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown or not names:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIO_NAMES)}")
    args.names = names
    args.profile_names = [n.strip() for n in args.profile.split(",") if n.strip()]
    if args.duration <= 0 or args.rounds < 1 or not 1 <= args.docks <= 999 or not 1 <= args.inflight <= MAX_INFLIGHT:
        p.error(f"need --duration > 0, --rounds >= 1, 1 <= --docks <= 999, 1 <= --inflight <= {MAX_INFLIGHT}")
    if args.drain < 0 or args.request_timeout <= 0 or args.warmup < 0:
        p.error("need --drain >= 0, --request-timeout > 0, --warmup >= 0")
    return args


def server_config(tmp: str, s3_endpoint: str, broker_url: str, args: argparse.Namespace,
                  shipped: Dict[str, Dict[str, Any]]) -> str:
    """bench/run.py's server configuration (SQLite in the temp dir, SeaweedFS, STS, the shipped
    service and sweep settings) plus an mqtt section for the private broker and the docks' bindings."""
    import yaml

    as_run = argparse.Namespace(log_level=args.log_level, service_option=[], store_option=[], database_url=None,
                                sqlite_synchronous=None, media_store_backend="sqlite", object_store_backend="minio")
    path = bench.server_config(tmp, "server", s3_endpoint, None, as_run, shipped)
    with open(path) as fh:
        config = yaml.safe_load(fh)
    mqtt: Dict[str, Any] = {"broker_url": broker_url, "client_id": "dji-media-bench"}
    for item in args.mqtt_option:
        key, _, value = item.partition("=")
        mqtt[key] = yaml.safe_load(value)
    config["mqtt"] = mqtt
    config["devices"] = dict({sn: WORKSPACE for sn in dock_sns(args.docks)}, **{FLOW_DOCK: FLOW_WORKSPACE})
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None and sys.argv[1:] == ["--loadgen"]:
        return loadgen_main()
    args = parse_args(argv)
    from dji_media.backends.peewee_schema import table_names
    from dji_media.embedded_s3 import EmbeddedS3

    brokers = load_broker_module()
    binary = brokers.mosquitto_binary()
    if binary is None:
        print(brokers.MISSING, file=sys.stderr)
        return 2
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="dji-bench-mqtt-")
    run_id = "%04x" % random.randrange(0x10000)
    shipped = bench.shipped_settings()
    prefix = bench.workspace_prefix(shipped)
    options = bench.store_options(tmp, argparse.Namespace(database_url=None, sqlite_synchronous=None,
                                                          store_option=[]), shipped)
    database = options["url"].split(":///", 1)[1]
    table = table_names(options.get("table_prefix") or "dji_")["media_file"]
    sns = dock_sns(args.docks)
    print(f"dji_media MQTT benchmark {run_id}{' (--quick)' if args.quick else ''}: {args.rounds} round(s) x "
          f"{len(args.names)} scenario(s), {args.duration:g} s each (+{args.warmup:g} s warm-up, drain up to "
          f"{args.drain:g} s); {args.docks} docks x {args.inflight} in flight; temp dir {tmp}")
    load_start = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load_start[0]:.2f} at start (other work on the machine "
          "shows in the 'others' column)")
    s3 = EmbeddedS3(data_dir=os.path.join(tmp, "seaweedfs"), access_key=bench.ADMIN_KEY,
                    secret_key=bench.ADMIN_SECRET, buckets=[bench.BUCKET])
    broker_dir = os.path.join(tmp, "mosquitto")
    os.makedirs(broker_dir)
    floor_port = brokers.free_port()
    # TCP_NODELAY on the broker's sockets (Mosquitto's default is off, EMQX's on): with Nagle's
    # algorithm a reply can wait for the previous packet's delayed ACK, 40 ms on Linux, and every
    # latency would be that stall.
    broker = brokers.MosquittoBroker(broker_dir, binary=binary,
                                     extra=f"set_tcp_nodelay true\nlistener {floor_port} 127.0.0.1\n"
                                           f"mount_point {FLOOR_MOUNT}")
    children: List[Any] = []
    runs: List[Dict[str, Any]] = []
    profiles: Dict[str, Any] = {}
    try:
        s3.start()
        broker.start()
        config = server_config(tmp, s3.endpoint, broker.url, args, shipped)
        server = bench.start_server(tmp, "server", config, 1)
        children.append(server)
        floor = bench.Child("mqtt-floor", [sys.executable, os.path.join(HERE, "mqtt_floor.py"), "--port",
                                           str(floor_port), "--mount-point", FLOOR_MOUNT]
                            + (["--nagle"] if args.floor_nagle else []),
                            os.path.join(tmp, "mqtt-floor.log"), r"subscribed on (mqtt://\S+)", cwd=tmp)
        children.append(floor)
        broker_pid = broker.process.pid
        print(f"SeaweedFS {s3.endpoint} (pid {s3.pid}); Mosquitto {broker.url} and, mounting under "
              f"{FLOOR_MOUNT!r}, port {floor_port} (pid {broker_pid}); server {server.base} (pid {server.pid}) "
              f"subscribed on {broker.url}; floor (pid {floor.pid}) on port {floor_port}")
        preflight(broker.port, sns[0], prefix, False, database, table)
        preflight(floor_port, sns[0], prefix, True, None, table)
        flow = flow_check(broker.url, tmp)
        print(f"pre-flight checks passed (one storage_config_get and one file_upload_callback checked in full "
              f"against each, the callback's record read back; the dock simulator's whole flow: {flow})\n")

        for rnd in range(1, args.rounds + 1):
            for index, name in enumerate(args.names):
                order = ["server", "floor"] if rnd % 2 else ["floor", "server"]
                pair: Dict[str, Dict[str, Any]] = {}
                for target in order:
                    child = server if target == "server" else floor
                    spec = {
                        "host": "127.0.0.1", "port": broker.port if target == "server" else floor_port,
                        "scenario": name, "target_name": target, "docks": sns, "inflight": args.inflight,
                        "duration": args.duration, "warmup": args.warmup, "drain": args.drain,
                        "request_timeout": args.request_timeout, "prefix": prefix,
                        "tag": f"{run_id}r{rnd}{index}{target[0]}",
                        "watch_pids": {"target": child.pids(), "broker": broker_pid,
                                       **({"s3": s3.pid} if s3.pid else {})},
                    }
                    profiler = None
                    if target == "server" and name in args.profile_names and rnd == args.rounds:
                        os.makedirs(args.profile_dir, exist_ok=True)
                        profiler = bench.Profiler(child.pid, args.warmup + args.duration,
                                                  os.path.join(args.profile_dir, f"mqtt-{name}"))
                    t_start = time.time()
                    result = run_loadgen(spec)
                    result.update(t_start=t_start, t_end=time.time(), round=rnd, target=target)
                    if profiler is not None:
                        summary_ = profiler.finish()
                        if summary_:
                            profiles[name] = summary_
                    result["others_cores"] = bench.others_cores(result)
                    pair[target] = result
                    runs.append(result)
                server_run, floor_run = pair["server"], pair["floor"]
                server_run["ratio"] = (round(server_run["rps"] / floor_run["rps"], 3) if floor_run["rps"] else None)
                for target in ("server", "floor"):
                    r = pair[target]
                    util = r["proc_util"].get("target")
                    busy = r["machine_busy"]
                    print(f"round {rnd}/{args.rounds} {name:<21} {target:<6} {r['rps']:>8.1f} acks/s  cpu "
                          f"{fmt(r.get('cpu_ms_per_message'), 3):>6} ms/msg  p50 {r['p50_ms']:>7.2f}  p90 "
                          f"{r['p90_ms']:>7.2f}  p99 {r['p99_ms']:>7.2f} ms  published {r['published']} lost "
                          f"{r['lost']} err {r['errors']}  loadgen cpu {100 * (r['loadgen_util'] or 0):.0f}%  "
                          f"{target} cpu {'-' if util is None else f'{100 * util:.0f}%'}  mosquitto cpu "
                          f"{100 * (r['proc_util'].get('broker') or 0):.0f}%  machine "
                          f"{'-' if busy is None else f'{100 * busy:.0f}%'} (others {fmt(r['others_cores'], 2)} cores)"
                          + (f"  ratio {server_run['ratio']:.2f}" if target == "server" and server_run["ratio"] else "")
                          + (f"  errors: {r['error_kinds']} {r['error_samples'][:1]}" if r["errors"] else ""),
                          flush=True)

        rss = bench.proc_memory_mb(server.pid)
        # The records, read after the run as an operator would find them.
        check_records(database, table, prefix, runs)
        summary = summarise(runs, args.names)
        targets = evaluate(summary)
        print(f"\nmedian of {args.rounds} round(s); acks/s = correct replies per second in the window; ratio = median "
              "of per-round server/floor acks/s; ms cpu/msg = CPU time of the server (or floor) per correct reply; "
              "lost = published - acknowledged after the drain (no resends); dup = files recorded twice; miss = "
              "acknowledged files not in the store; cpu = share of one core in the window (mqtt: Mosquitto); "
              "others = cores used by other processes (max over the measurements)")
        print(f"{args.docks} docks x {args.inflight} message(s) in flight, QoS 1; server: 1 process, SQLite, service "
              "and sweep settings as shipped, mqtt settings as the library's defaults"
              + (f" except {', '.join(args.mqtt_option)}" if args.mqtt_option else "") + "\n")
        print_table(summary)
        noisy = [r for r in runs if (r.get("others_cores") or 0) > bench.NOISY_CORES]
        if noisy:
            print(f"\nWARNING: in {len(noisy)} of {len(runs)} measurements other processes used more than "
                  f"{bench.NOISY_CORES} cores (max {max(r['others_cores'] for r in noisy):.2f}); on a 2-core "
                  "machine that lowers the absolute numbers; CPU per message is the steadier figure. Re-run on a "
                  "quiet machine.")
        print(f"\nserver: VmRSS {rss['VmRSS']} MB (peak VmHWM {rss['VmHWM']} MB) after the run")
        conditions = []
        if args.docks != 20 or args.inflight != 1:
            conditions.append(f"{args.docks} docks x {args.inflight} in flight")
        if args.mqtt_option:
            conditions.append("mqtt settings other than the defaults")
        if args.floor_nagle:
            conditions.append("a floor with Nagle's algorithm on")
        print("\ntargets (set for 20 docks, one message in flight each, one server process on SQLite)"
              + (f"; this run differs: {', '.join(conditions)}" if conditions else "") + ":")
        bench.print_target_lines(targets, width=80)
        bench.print_profiles(profiles)

        result = {
            "meta": {
                "run_id": run_id, "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
                "seconds": round(time.time() - started, 1), "git": bench.git_revision(),
                "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "args": vars(args),
                "mosquitto": binary, "conditions_differ": conditions,
                "targets_note": "ratio = median of per-round server/floor acks/s; cpu_ms_per_message = median of "
                                "per-round server CPU per correct reply; lost, errors and records summed over rounds",
                "noisy_measurements": len(noisy),
            },
            "summary": summary, "targets": targets, "rss_mb": rss, "profiles": profiles,
            "runs": [{k: v for k, v in r.items() if k != "acked_seqs"} for r in runs],
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
        broker.stop()
        s3.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
