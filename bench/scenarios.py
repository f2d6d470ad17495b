"""The benchmark's scenarios: what each one sends, and what counts as a correct answer.

Shared by the orchestrator (``run.py``: population, pre-flight checks, targets) and the load
generator (``loadgen.py``: pre-encoded requests). Everything is derived from a file index, so
both processes build the same fingerprints without exchanging lists.
"""
from __future__ import annotations

import hashlib
import json
from typing import Dict, List, Optional, Tuple

TOKEN = "bench-token-0123456789"
WORKSPACE = "bench-ws"


# ------------------------------------------------------------------------------ identities

def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def known_fingerprint(i: int) -> str:
    """Fingerprint of populated file ``i`` (uploaded and called back before the load)."""
    return _md5(f"bench-file-{i}").upper()


def known_tiny(i: int) -> str:
    """Tiny fingerprint of populated file ``i``: <32 hex>_<Y>_<M>_<D>_<h>_<m>_<s>, as Pilot 2's."""
    return f"{_md5(f'bench-tiny-{i}')}_2024_5_{1 + i % 28}_{i % 24}_{i % 60}_{(i * 7) % 60}"


def object_key(workspace: str, i: int) -> str:
    return f"media/{workspace}/DJI_202405_BENCH/DJI_{i:06d}_W.JPG"


def miss_fingerprint(j: int) -> str:
    return _md5(f"bench-miss-{j}").upper()


def unknown_tiny(j: int) -> str:
    return f"{_md5(f'bench-unknown-tiny-{j}')}_2023_1_1_0_0_{j % 60}"


def callback_body(workspace: str, i: int, fingerprint: str, tiny: str, key: str) -> Dict:
    """A full upload-callback body, shaped like protocol.md section 3.4's example."""
    return {
        "result": 0,
        "fingerprint": fingerprint,
        "name": key.rsplit("/", 1)[-1],
        "path": "DJI_202405_BENCH",
        "object_key": key,
        "sub_file_type": 0,
        "ext": {
            "file_group_id": "3c3a3c8e-8f2e-4a63-9d3f-1a2b3c4d5e6f",
            "drone_model_key": "0-67-0",
            "payload_model_key": "1-52-0",
            "is_original": True,
            "tinny_fingerprint": tiny,
            "sn": "1AD3CA2VL3LAD6",
        },
        "metadata": {
            "gimbal_yaw_degree": -4.3,
            "absolute_altitude": -36.889,
            "relative_altitude": 100.001,
            "created_time": "2024-05-31T15:16:16+08:00",
            "shoot_position": {"lat": 22.577666 + i * 1e-6, "lng": 113.943194},
        },
    }


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
    :param server: which server answers it: ``warm`` (verification window on) or ``cold``
        (window disabled, every known fingerprint is checked in storage).
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
             text="fast-upload of a known file (verified within the window): one indexed SELECT"),
    Scenario("fast-upload-miss", "fast-upload", expect=-1,
             text="fast-upload of an unknown fingerprint: one indexed SELECT, no row"),
    Scenario("tiny-100", "tiny-fingerprints", count=100, known=50, conns="tiny",
             text="tiny-fingerprints, 100 fingerprints of which 50 known, warm window"),
    Scenario("tiny-1000", "tiny-fingerprints", count=1000, known=500, conns="tiny",
             text="tiny-fingerprints, 1,000 fingerprints of which 500 known, warm window"),
    Scenario("tiny-1000-nowindow", "tiny-fingerprints", server="cold", count=1000, known=500,
             floor_as="tiny-1000", conns="tiny",
             text="tiny-fingerprints, 1,000 (500 known), window disabled: 500 S3 HEADs per request"),
    Scenario("sts", "sts", text="sts: credentials from the provider's cache (one AssumeRole per hour)"),
    Scenario("upload-callback", "upload-callback",
             text="upload-callback with a new fingerprint every request: one real INSERT + commit"),
)}

# The floor answers every route with one fixed envelope: code 0 everywhere.
FLOOR_EXPECT = 0

# Different request bodies per scenario, rotated over (different rows, same cost).
TINY_BODIES = {100: 40, 1000: 8}


def tiny_request_lists(count: int, known: int, files: int) -> List[Tuple[List[str], List[str]]]:
    """(request list, expected answer) pairs: known and unknown interleaved, half known."""
    out = []
    for b in range(TINY_BODIES.get(count, 8)):
        start = (b * known * 7) % files
        known_tinies = [known_tiny((start + x) % files) for x in range(known)]
        unknown = [unknown_tiny(b * count + x) for x in range(count - known)]
        wanted: List[str] = []
        for x in range(max(len(known_tinies), len(unknown))):
            if x < len(known_tinies):
                wanted.append(known_tinies[x])
            if x < len(unknown):
                wanted.append(unknown[x])
        out.append((wanted, known_tinies))
    return out


def static_bodies(name: str, files: int) -> List[bytes]:
    """The request bodies a static scenario rotates over (upload-callback is generated)."""
    s = SCENARIOS[name]
    if name == "fast-upload-hit":
        return [encode({"fingerprint": known_fingerprint(i), "name": f"DJI_{i:06d}_W.JPG",
                        "path": "DJI_202405_BENCH",
                        "ext": {"tinny_fingerprint": known_tiny(i), "is_original": True,
                                "drone_model_key": "0-67-0", "payload_model_key": "1-52-0",
                                "sn": "1AD3CA2VL3LAD6"}})
                for i in range(files)]
    if name == "fast-upload-miss":
        return [encode({"fingerprint": miss_fingerprint(j), "name": f"DJI_M{j:06d}_W.JPG",
                        "path": "DJI_202405_BENCH",
                        "ext": {"tinny_fingerprint": unknown_tiny(j), "is_original": True,
                                "drone_model_key": "0-67-0", "payload_model_key": "1-52-0",
                                "sn": "1AD3CA2VL3LAD6"}})
                for j in range(max(files, 1000))]
    if s.route == "tiny-fingerprints":
        return [encode({"tiny_fingerprints": wanted})
                for wanted, _ in tiny_request_lists(s.count, s.known, files)]
    if name == "sts":
        return [b"{}"]
    raise ValueError(f"{name} has no static bodies")


class CallbackBodies:
    """upload-callback bodies with a fingerprint never sent before (tag + connection + sequence).

    Pre-encoded once with placeholders; each request is two ``bytes.replace`` calls.
    """

    def __init__(self, workspace: str, tag: str) -> None:
        self.tag = tag.encode("ascii")
        key = f"media/{workspace}/DJI_202405_CB/@FP@.JPG"
        self.template = encode(callback_body(workspace, 0, "@FP@", "@TINY@_2024_6_1_0_0_0", key))

    def fingerprint(self, conn: int, seq: int) -> bytes:
        return b"CB%s%03d%09d" % (self.tag, conn, seq)

    def body(self, conn: int, seq: int) -> bytes:
        fp = self.fingerprint(conn, seq)
        return self.template.replace(b"@FP@", fp).replace(b"@TINY@", fp.lower())
