"""The benchmark's workspace and scenarios: what is stored, what each request sends, and what
counts as a correct answer.

Shared by the orchestrator (``run.py``: population, pre-flight checks, targets) and the load
generator (``loadgen.py``: pre-encoded requests). Everything is derived from a ``Layout`` (a
few numbers) and file indexes, so both processes build the same keys and fingerprints without
exchanging lists, and random samples come from seeded generators (``random.Random`` seeded
with a string is the same in every process, whatever ``PYTHONHASHSEED`` says).

The workspace is laid out the way Pilot 2 writes it (protocol.md section 3): files flat under
``<prefix>/<name>``, named after their capture time (``DJI_20240411163430_0001_W.JPG``), one
flight after another over many months, so a random sample of known files is spread over the
whole folder; one flight's files in a waypoint mission folder
(``<prefix>/DJI_<date>_<n>_Waypoint1/<name>``); and other objects without a record (videos
that were never called back) among them.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
from typing import Dict, List, Optional, Tuple

TOKEN = "bench-token-0123456789"
WORKSPACE = "bench-ws"

# Pilot 2 names a file after the capture time in the aircraft's local time.
LOCAL_OFFSET = _dt.timezone(_dt.timedelta(hours=8))
EPOCH = _dt.datetime(2023, 3, 1, 8, 0, 0)
SHOTS_PER_FLIGHT = 150
SHOT_SECONDS = 2
# A flight every 31 hours: 100,000 files (about 220 flights) span some nine months, and the
# start time moves through the day, as a fleet's would.
FLIGHT_SPACING = _dt.timedelta(hours=31)
# A camera like the M30T's writes one file per lens for each shot: wide, zoom, thermal.
LENSES = ("W", "Z", "T")
SEED = "dji-media-bench"


# ------------------------------------------------------------------------------ identities

def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Layout:
    """Where every object of the workspace is and which have records.

    :param prefix: the workspace's folder (the credentials' ``prefix_template`` filled in).
    :param objects: files uploaded by devices, indexes 0 .. objects-1; each is an object.
    :param records: how many of those have a record (indexes 0 .. records-1); the others are
        objects whose callback never came.
    :param unrecorded: further objects in the folder without a record (videos, ``_V.MP4``).
    """

    def __init__(self, prefix: str, objects: int, records: int, unrecorded: int) -> None:
        if not 0 < records <= objects:
            raise ValueError("need 0 < records <= objects")
        self.prefix = prefix.rstrip("/")
        self.objects = objects
        self.records = records
        self.unrecorded = unrecorded
        self.shots = -(-objects // len(LENSES))
        flights = -(-self.shots // SHOTS_PER_FLIGHT)
        # The one flight flown as a waypoint mission: its files are in a folder of their own.
        self.mission_flight = flights // 2

    def as_dict(self) -> Dict[str, object]:
        return {"prefix": self.prefix, "objects": self.objects, "records": self.records,
                "unrecorded": self.unrecorded}

    @property
    def total_objects(self) -> int:
        return self.objects + self.unrecorded

    def flight_start(self, flight: int) -> _dt.datetime:
        return EPOCH + FLIGHT_SPACING * flight

    def shot_time(self, shot: int) -> _dt.datetime:
        """Local capture time (naive, as in the name) of shot ``shot``."""
        flight, within = divmod(shot, SHOTS_PER_FLIGHT)
        return self.flight_start(flight) + _dt.timedelta(seconds=SHOT_SECONDS * within)

    def capture_time(self, i: int) -> _dt.datetime:
        return self.shot_time(i // len(LENSES)).replace(tzinfo=LOCAL_OFFSET)

    def name(self, i: int) -> str:
        shot = i // len(LENSES)
        return f"DJI_{self.shot_time(shot):%Y%m%d%H%M%S}_{shot % 9999 + 1:04d}_{LENSES[i % len(LENSES)]}.JPG"

    def folder(self, i: int) -> str:
        """The file's folder inside the prefix: "" (flat) or the mission folder."""
        flight = i // len(LENSES) // SHOTS_PER_FLIGHT
        if flight != self.mission_flight:
            return ""
        return f"DJI_{self.flight_start(flight):%Y%m%d%H%M}_001_Waypoint1"

    def object_key(self, i: int) -> str:
        folder = self.folder(i)
        return f"{self.prefix}/{folder}/{self.name(i)}" if folder else f"{self.prefix}/{self.name(i)}"

    def unrecorded_key(self, j: int) -> str:
        """Object ``j`` of the objects without a record: a video beside a shot's photos."""
        if self.unrecorded <= self.shots:
            shot, extra = j * self.shots // max(1, self.unrecorded), ""
        else:
            shot, extra = j % self.shots, str(j // self.shots)
        return f"{self.prefix}/DJI_{self.shot_time(shot):%Y%m%d%H%M%S}_{shot % 9999 + 1:04d}_V{extra}.MP4"

    def payload(self, i: int) -> bytes:
        """A tiny object body (a JPEG's first bytes and the name): the benchmark is about
        counts of objects, not bytes."""
        return b"\xff\xd8\xff\xe0bench " + self.name(i).encode()

    def known_fingerprint(self, i: int) -> str:
        """Fingerprint of file ``i`` (the MD5 of its bytes in Pilot 2; here of its index)."""
        return _md5(f"bench-file-{i}").upper()

    def known_tiny(self, i: int) -> str:
        """Tiny fingerprint of file ``i``: <32 hex>_<Y>_<M>_<D>_<h>_<m>_<s> of its capture time."""
        t = self.shot_time(i // len(LENSES))
        return f"{_md5(f'bench-tiny-{i}')}_{t.year}_{t.month}_{t.day}_{t.hour}_{t.minute}_{t.second}"

    def sample(self, count: int, salt: str) -> List[int]:
        """``count`` different files with records, drawn at random over the whole workspace."""
        return random.Random(f"{SEED}-{salt}").sample(range(self.records), min(count, self.records))


def miss_fingerprint(j: int) -> str:
    return _md5(f"bench-miss-{j}").upper()


def unknown_tiny(j: int) -> str:
    return f"{_md5(f'bench-unknown-tiny-{j}')}_2023_1_1_0_0_{j % 60}"


def callback_body(layout: Layout, i: int, fingerprint: str, tiny: str, key: str, created: str,
                  path: str = "") -> Dict:
    """A full upload-callback body, shaped like protocol.md section 3.4's example."""
    return {
        "result": 0,
        "fingerprint": fingerprint,
        "name": key.rsplit("/", 1)[-1],
        "path": path,
        "object_key": key,
        "sub_file_type": 0,
        "ext": {
            "file_group_id": "3c3a3c8e-8f2e-4a63-9d3f-%012x" % (i // len(LENSES) // SHOTS_PER_FLIGHT),
            "drone_model_key": "0-67-0",
            "payload_model_key": "1-53-0",
            "is_original": True,
            "tinny_fingerprint": tiny,
            "sn": "1AD3CA2VL3LAD6",
        },
        "metadata": {
            "gimbal_yaw_degree": -4.3,
            "absolute_altitude": -36.889,
            "relative_altitude": 100.001,
            "created_time": created,
            "shoot_position": {"lat": 22.577666 + (i % 1000) * 1e-6, "lng": 113.943194},
        },
    }


def file_callback_body(layout: Layout, i: int) -> Dict:
    """The callback Pilot 2 would have sent for file ``i`` (what its record holds)."""
    return callback_body(layout, i, layout.known_fingerprint(i), layout.known_tiny(i), layout.object_key(i),
                         layout.capture_time(i).isoformat(), layout.folder(i))


# ------------------------------------------------------------------------------ HTTP

def paths(workspace: str, prefix: str = "") -> Dict[str, str]:
    prefix = ("/" + prefix.strip("/")) if prefix.strip("/") else ""
    media = f"{prefix}/media/api/v1/workspaces/{workspace}"
    return {
        "fast-upload": f"{media}/fast-upload",
        "tiny-fingerprints": f"{media}/files/tiny-fingerprints",
        "sts": f"{prefix}/storage/api/v1/workspaces/{workspace}/sts",
        "upload-callback": f"{media}/upload-callback",
        "group-upload-callback": f"{media}/group-upload-callback",
    }


def encode(body: Dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def request_bytes(host: str, port: int, path: str, body: bytes, token: str = TOKEN) -> bytes:
    """One complete keep-alive HTTP/1.1 request."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-Auth-Token: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


# ------------------------------------------------------------------------------ scenarios

class Scenario:
    """One benchmark scenario.

    :param route: which of the five endpoints it hits.
    :param server: which server answers it: ``warm`` (the shipped settings) or ``cold``
        (verification window 0: every known fingerprint is checked with a HEAD, at most
        ``service.max_checks_per_request`` per request, the rest answered unknown).
    :param floor_as: the scenario whose floor result it shares (the floor does not care about
        the window), or None to run the floor itself.
    :param conns: ``main`` (``--connections``) or ``tiny`` (``--tiny-connections``).
    """

    def __init__(self, name: str, route: str, *, server: str = "warm", expect: int = 0,
                 count: int = 0, known: int = 0, floor_as: Optional[str] = None,
                 conns: str = "main", text: str = "") -> None:
        self.name = name
        self.route = route
        self.server = server
        self.expect = expect  # the envelope code the server must answer
        self.count = count
        self.known = known
        self.floor_as = floor_as
        self.conns = conns
        self.text = text


SCENARIOS: Dict[str, Scenario] = {s.name: s for s in (
    Scenario("fast-upload-hit", "fast-upload", expect=0,
             text="fast-upload of a known file (confirmed by the sweep): one indexed SELECT"),
    Scenario("fast-upload-miss", "fast-upload", expect=-1,
             text="fast-upload of an unknown fingerprint: one indexed SELECT, no row"),
    Scenario("tiny-100", "tiny-fingerprints", count=100, known=50, conns="tiny",
             text="tiny-fingerprints, 100 fingerprints of which 50 known, shipped settings"),
    Scenario("tiny-1000", "tiny-fingerprints", count=1000, known=500, conns="tiny",
             text="tiny-fingerprints, 1,000 fingerprints of which 500 known, shipped settings"),
    Scenario("tiny-1000-nowindow", "tiny-fingerprints", server="cold", count=1000, known=500,
             floor_as="tiny-1000", conns="tiny",
             text="tiny-fingerprints, 1,000 (500 known), window 0: HEADs (max_checks_per_request)"),
    Scenario("sts", "sts", text="sts: credentials from the provider's cache (one AssumeRole per hour)"),
    Scenario("upload-callback", "upload-callback",
             text="upload-callback with a new file every request: one real INSERT + commit"),
)}

# The floor answers every route with one fixed envelope: code 0 everywhere.
FLOOR_EXPECT = 0

# Different request bodies per scenario, rotated over (different rows, same cost).
TINY_BODIES = {100: 40, 1000: 8}
FAST_UPLOAD_BODIES = 2000


def tiny_request_lists(layout: Layout, count: int, known: int) -> List[Tuple[List[str], List[str]]]:
    """(request list, the known ones in request order) pairs: each list draws its known files
    at random from the whole workspace, interleaved with as many unknown ones."""
    out = []
    for b in range(TINY_BODIES.get(count, 8)):
        known_tinies = [layout.known_tiny(i) for i in layout.sample(known, f"tiny{count}-{b}")]
        unknown = [unknown_tiny(b * count + x) for x in range(count - len(known_tinies))]
        wanted: List[str] = []
        for x in range(max(len(known_tinies), len(unknown))):
            if x < len(known_tinies):
                wanted.append(known_tinies[x])
            if x < len(unknown):
                wanted.append(unknown[x])
        out.append((wanted, known_tinies))
    return out


def static_bodies(name: str, layout: Layout) -> List[bytes]:
    """The request bodies a static scenario rotates over (upload-callback is generated)."""
    s = SCENARIOS[name]
    if name == "fast-upload-hit":
        return [encode({"fingerprint": layout.known_fingerprint(i), "name": layout.name(i),
                        "path": layout.folder(i),
                        "ext": {"tinny_fingerprint": layout.known_tiny(i), "is_original": True,
                                "drone_model_key": "0-67-0", "payload_model_key": "1-53-0",
                                "sn": "1AD3CA2VL3LAD6"}})
                for i in layout.sample(FAST_UPLOAD_BODIES, "fast-upload")]
    if name == "fast-upload-miss":
        return [encode({"fingerprint": miss_fingerprint(j), "name": f"DJI_20250101000000_{j % 9999 + 1:04d}_W.JPG",
                        "path": "",
                        "ext": {"tinny_fingerprint": unknown_tiny(j), "is_original": True,
                                "drone_model_key": "0-67-0", "payload_model_key": "1-53-0",
                                "sn": "1AD3CA2VL3LAD6"}})
                for j in range(FAST_UPLOAD_BODIES)]
    if s.route == "tiny-fingerprints":
        return [encode({"tiny_fingerprints": wanted}) for wanted, _ in tiny_request_lists(layout, s.count, s.known)]
    if name == "sts":
        return [b"{}"]
    raise ValueError(f"{name} has no static bodies")


class CallbackBodies:
    """upload-callback bodies of new files, flat in the workspace's folder as Pilot 2 writes
    them, with a fingerprint never sent before (tag + connection + sequence).

    Pre-encoded once with placeholders; each request is two ``bytes.replace`` calls.
    """

    def __init__(self, layout: Layout, tag: str) -> None:
        self.tag = tag.encode("ascii")
        key = f"{layout.prefix}/DJI_20250601120000_@FP@_W.JPG"
        self.template = encode(callback_body(layout, 0, "@FP@", "@TINY@_2025_6_1_12_0_0", key,
                                             "2025-06-01T12:00:00+08:00"))

    def fingerprint(self, conn: int, seq: int) -> bytes:
        return b"CB%s%03d%09d" % (self.tag, conn, seq)

    def body(self, conn: int, seq: int) -> bytes:
        fp = self.fingerprint(conn, seq)
        return self.template.replace(b"@FP@", fp).replace(b"@TINY@", fp.lower())
