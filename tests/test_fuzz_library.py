"""Hostile input over real HTTP for the media library's routes (doc/library.md), beside
test_fuzz.py's for the Pilot 2 endpoints and with its client.

A real Tornado ``HTTPServer``, configured as ``dji-media serve`` configures it, serves the
library (``get_handlers(..., catalogue=...)``) over a SQLite store holding two workspaces' files
and an in-memory bucket, in a background thread; Hypothesis sends it lists, gets, downloads,
deletes, missions, exports and DJI's list and URL with random and mutated paths, query strings,
tokens and methods. Every answer must be the envelope (or the 302, the CSV, the GeoJSON, the
preflight's 204 where those are defined) with a status doc/openapi.yaml documents, never a 5xx,
never a file of another workspace, and a delete only with the ``delete`` scope. A model of the
files checks every page, count, export and mission count against ``FileQuery.matches`` (the
reference every store agrees with); at the end the database and the bucket hold exactly the
model.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import csv
import dataclasses
import datetime as _dt
import io
import json
import random
import sqlite3
import string
import threading
import time
import urllib.parse
import uuid
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import NASTY, Answer, LiveServer, any_token, chars, quiet_logs, send, valid_ws  # noqa: F401
from test_openapi import Spec, load_spec

from dji_media import (
    Catalogue,
    InMemoryObjectStore,
    MediaService,
    NotFoundHandler,
    PeeweeMediaStore,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
    get_handlers,
    rules,
)
from dji_media.catalogue import CSV_COLUMNS, EXPORT_LIMIT, MAX_LIMIT
from dji_media.values import FILE_KINDS, FileQuery, GroupReport, MediaFile, MediaRecord
from dji_media.web import DEFAULT_MAX_BODY_BYTES

EXAMPLES = 500  # each a batch of 1 to 8 requests: about 1,900 requests
UTC = _dt.timezone.utc
STORAGE = "https://files.example"
BUCKET = "media"
ORIGIN = "https://ops.example"
WORKSPACES = ("ws-a", "ws-b")
FILES_PER_WORKSPACE = 60
# token -> (workspaces, scopes); "*" is any workspace.
TOKENS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "read-a-token": (("ws-a",), ("read",)),
    "admin-a-token": (("ws-a",), ("read", "delete")),
    "admin-b-token": (("ws-b",), ("read", "delete")),
    "upload-a-token": (("ws-a",), ("upload",)),
    "any-reader-token": (("*",), ("read",)),
}

LIBRARY = "/media/api/v1/workspaces/{ws}/library"
DJI = "/media/api/v1/files/{ws}"
# route -> (path template, the spec's path, methods it answers besides OPTIONS)
ROUTES = {
    "files": (LIBRARY + "/files", "/media/api/v1/workspaces/{workspace_id}/library/files", ("GET",)),
    "file": (LIBRARY + "/files/{id}", "/media/api/v1/workspaces/{workspace_id}/library/files/{file_id}",
             ("GET", "DELETE")),
    "download": (LIBRARY + "/files/{id}/download",
                 "/media/api/v1/workspaces/{workspace_id}/library/files/{file_id}/download", ("GET",)),
    "missions": (LIBRARY + "/missions", "/media/api/v1/workspaces/{workspace_id}/library/missions", ("GET",)),
    "csv": (LIBRARY + "/export.csv", "/media/api/v1/workspaces/{workspace_id}/library/export.csv", ("GET",)),
    "geojson": (LIBRARY + "/export.geojson", "/media/api/v1/workspaces/{workspace_id}/library/export.geojson",
                ("GET",)),
    "dji-files": (DJI + "/files", "/media/api/v1/files/{workspace_id}/files", ("GET",)),
    "dji-url": (DJI + "/file/{id}/url", "/media/api/v1/files/{workspace_id}/file/{file_id}/url", ("GET",)),
}
FIND_ROUTES = ("files", "csv", "geojson")


# --------------------------------------------------------------------------- the files

def make_records() -> Tuple[List[MediaRecord], Set[str], List[Tuple[str, GroupReport]]]:
    """Both workspaces' files (the same mission names in each, so a mission's count shows a
    leak), the keys in the bucket (some never confirmed records have none: stale), and the
    groups devices reported."""
    rng = random.Random("dji-media-fuzz-library")
    names = ["DJI_{n:04d}_W.JPG", "DJI_{n:04d}_T.jpg", "DJI_{n:04d}.MP4", "clip_{n}.mov", "raw_{n}.DNG",
             "notes_{n}.txt", "noext{n}", "=SUM(A{n}).jpg", "-{n}.jpg", "50%_{n}_x!.jpg", "Äpfel_{n}.JPG",
             "\u00e9t\u00e9_{n}.png", "{n}"]
    missions = ["m-north", "m-roof", "shared", "3c3a3c8e-8f2e-4a63-9d3f-1a2b3c4d5e6f", None]
    sns = ["1581F5FHD23A700A001", "1ZNBJ7R0010A0C004", None]
    base = _dt.datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    records, keys, groups = [], set(), []
    for ws in WORKSPACES:
        for n in range(FILES_PER_WORKSPACE):
            name = rng.choice(names).format(n=n) if n % 17 else None
            path = rng.choice(["", "DJI_202403010800_001_Waypoint1", "Ordner/Ä", None])
            key = f"media/{ws}/{path + '/' if path else ''}{name or f'noname-{n}'}"
            # Some share an upload time (the public id breaks the tie), some a microsecond apart.
            created_at = base + _dt.timedelta(minutes=n // 3, microseconds=(n % 3 == 2) * 1)
            captured = None if n % 11 == 0 else created_at - _dt.timedelta(minutes=rng.randrange(5, 3000))
            position = None if n % 7 == 0 else (22.5 + rng.random(), 113.9 + rng.random())
            verified = None if n % 5 == 0 else created_at + _dt.timedelta(minutes=5)
            file = MediaFile(
                fingerprint=f"FP-{ws}-{n:04d}", object_key=key, tiny_fingerprint=f"t-{ws}-{n}", name=name,
                path=path, sub_file_type=0, file_group_id=rng.choice(missions), drone_model_key=rng.choice(
                    ["0-67-0", "0-77-1", None]), payload_model_key=rng.choice(["1-53-0", "1-66-0", None]),
                is_original=rng.choice([True, False, None]), sn=rng.choice(sns), created_time=captured,
                created_time_text=captured.isoformat() if captured else None,
                shoot_lat=position[0] if position else None, shoot_lng=position[1] if position else None,
                absolute_altitude=-36.9, relative_altitude=100.0, gimbal_yaw_degree=-4.3)
            records.append(MediaRecord(ws, file, 1, created_at, created_at, verified,
                                       public_id=str(uuid.UUID(int=rng.getrandbits(128), version=4))))
            if not (verified is None and n % 2):  # never confirmed and gone: a stale record
                keys.add(key)
        groups += [(ws, GroupReport("m-north", 4, 3)), (ws, GroupReport("shared", 9, 9)),
                   (ws, GroupReport(f"reported-only-{ws}", 2, 2))]
    return records, keys, groups


class LibraryServer(LiveServer):
    """test_fuzz's live server with the media library mounted, on the files above."""

    def __init__(self, db_url: str, records: List[MediaRecord], keys: Set[str],
                 groups: List[Tuple[str, GroupReport]]) -> None:
        super().__init__(db_url)
        self.records, self.groups = records, groups
        self.bucket = InMemoryObjectStore(keys, endpoint=STORAGE, bucket=BUCKET)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = PeeweeMediaStore(url=self.db_url, synchronous="normal", max_workers=2)
        assert all(await store.insert_missing(self.records))
        for ws, group in self.groups:
            await store.save_group(ws, group)
        service = MediaService(
            media_store=store, object_store=self.bucket,
            credentials=StaticCredentialProvider(endpoint=STORAGE, access_key="AK", secret_key="SK",
                                                 session_token="ST", bucket=BUCKET),
            authenticator=StaticTokenAuthenticator(tokens={
                token: {"workspaces": list(workspaces), "scopes": list(scopes)}
                for token, (workspaces, scopes) in TOKENS.items()}),
        )
        app = tornado.web.Application(
            get_handlers(service, catalogue=Catalogue(store, self.bucket), cors_origins=[ORIGIN]),
            default_handler_class=NotFoundHandler)
        server = tornado.httpserver.HTTPServer(app, max_body_size=DEFAULT_MAX_BODY_BYTES, idle_connection_timeout=60,
                                               body_timeout=60)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            await server.close_all_connections()
            await service.close()


# ------------------------------------------------------------------------ the requests

class Request:
    """One generated request. Not a dataclass: Hypothesis would print every field in full (a
    cursor may be 40 kB)."""

    def __init__(self, route: str, method: str, ws: bytes, token: Optional[str]) -> None:
        self.route, self.method, self.ws, self.token = route, method, ws, token
        self.file_id = ""
        self.params: List[Tuple[str, str]] = []
        self.raw_query = ""                   # appended as is (bytes that are not UTF-8, say)
        self.origin: Optional[str] = None
        self.valid = False                    # every parameter one the route takes, well-formed

    def path(self) -> str:
        template = ROUTES[self.route][0]
        ws = urllib.parse.quote_from_bytes(self.ws, safe="")
        path = template.format(ws=ws, id=urllib.parse.quote(self.file_id, safe=""))
        quote = urllib.parse.quote
        query = "&".join(f"{quote(k, safe='')}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}"
                         for k, v in self.params)
        query = "&".join(part for part in (query, self.raw_query) if part)
        return path + ("?" + query if query else "")

    def __repr__(self) -> str:  # short enough for a falsifying example (a cursor may be 40 kB)
        path = self.path()
        path = path if len(path) <= 400 else path[:400] + f"...({len(path)} characters)"
        return (f"Request({self.method} {path} token={self.token!r:.40} origin={self.origin!r} "
                f"valid={self.valid})")

    def one(self, name: str) -> Optional[str]:
        found = [v for k, v in self.params if k == name]
        return found[0] if found else None


def iso(moment: _dt.datetime, z: bool) -> str:
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if z else text


STARTS = st.datetimes(min_value=_dt.datetime(2024, 2, 20), max_value=_dt.datetime(2024, 3, 2, 12),
                      timezones=st.sampled_from([UTC, _dt.timezone(_dt.timedelta(hours=8)),
                                                 _dt.timezone(_dt.timedelta(hours=-5, minutes=-30))]))
# Valid values of each filter, and what FileQuery holds for them.
valid_filters = {
    "mission": st.sampled_from(["m-north", "m-roof", "shared", "reported-only-ws-a", "nope", ""]),
    "sn": st.sampled_from(["1581F5FHD23A700A001", "1ZNBJ7R0010A0C004", "X"]),
    "drone_model_key": st.sampled_from(["0-67-0", "0-77-1"]),
    "payload_model_key": st.sampled_from(["1-53-0", "1-66-0"]),
    "kind": st.sampled_from(FILE_KINDS),
    "original": st.sampled_from(["true", "false"]),
    "q": st.sampled_from(["dji", "JPG", "waypoint", "%", "_", "!", "50%_", "x!", "noext", "=sum", "a", "Äpfel",
                          "\u00e4", "\u00e9t\u00e9", "ordner/\u00e4", ""]),
    "uploaded_from": st.tuples(STARTS, st.booleans()).map(lambda t: iso(*t)),
    "uploaded_to": st.tuples(STARTS, st.booleans()).map(lambda t: iso(*t)),
    "captured_from": st.tuples(STARTS, st.booleans()).map(lambda t: iso(*t)),
    "captured_to": st.tuples(STARTS, st.booleans()).map(lambda t: iso(*t)),
    "bbox": st.tuples(st.floats(113.0, 114.5), st.floats(22.0, 23.6), st.floats(0, 1), st.floats(0, 1)).map(
        lambda t: f"{t[0]},{t[1]},{t[0] + t[2]},{t[1] + t[3]}"),
    "order": st.sampled_from(["newest", "oldest"]),
}
FILTER_NAMES = sorted(valid_filters)
NUMBERS = ["0", "1", "-1", "+1", "1.0", "1e2", " 1", "abc", "", "9" * 10, "0" * 9 + "1", "\u0663",  # Arabic 3
           "\u00b2", "\u2460", "\U0001d7e0", "\uff11", "200", "201"]                          # ², ①, 𝟠, １
TIMES = ["2024-03-01T08:00:00", "2024-03-01", "yesterday", "2024-13-01T00:00:00Z", "2024-03-01T08:00:00+25:00",
         "0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00", "0001-01-01T00:00:00Z", "2024-03-01T08:00:00z",
         "2024-03-01T08:00:00.123456789Z", "2024-03-01 08:00:00+00:00"]
BBOXES = ["1,2,3", "1,2,3,4,5", "a,b,c,d", "nan,nan,nan,nan", "inf,-inf,1,2", "10,10,0,0", "-181,0,0,0",
          "0,-91,1,1", "1e999,0,0,0", ",,,", "113.9,22.5,114,23"]
hostile_text = st.one_of(st.text(chars, max_size=20), st.sampled_from(NASTY),
                         st.sampled_from(["\x00", "a\x00b", "x" * 256, "%00", "\ud800"]))
# Numbers in every script (str.isdigit says yes to more than int() takes), any integer.
hostile_numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(-10**12, 10**12).map(str),
                            st.text(st.characters(whitelist_categories=("Nd", "No")), min_size=1, max_size=3))
OFFSETS = st.sampled_from([UTC, _dt.timezone(_dt.timedelta(hours=14)), _dt.timezone(_dt.timedelta(hours=-12)),
                           _dt.timezone(_dt.timedelta(hours=8))])
# Anywhere in the calendar, with any offset (the ends overflow in UTC), or not a time at all.
hostile_times = st.one_of(st.sampled_from(TIMES), st.datetimes(timezones=OFFSETS).map(_dt.datetime.isoformat),
                          st.datetimes().map(_dt.datetime.isoformat), st.text(chars, max_size=30))


def cursor_of(payload: Any) -> str:
    raw = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Crafted cursors: well-formed ones from another order or kind, times at the edges of the
# calendar, ids that are not text, JSON nested too deep, bytes that are not base64.
CRAFTED_CURSORS = [
    cursor_of({"k": "oldest", "t": "2024-03-01T08:00:00+00:00", "i": "x"}),
    cursor_of({"k": "newest", "t": "2024-03-01T08:00:00", "i": "x"}),
    cursor_of({"k": "newest", "t": "2024-03-01T08:00:00+00:00", "i": 5}),
    cursor_of({"k": "missions", "t": "2024-03-01T08:10:00+00:00", "i": "shared"}),
    cursor_of({"k": "newest", "t": "0001-01-01T00:00:00+08:00", "i": "x"}),
    cursor_of({"k": "newest", "t": "9999-12-31T23:59:59-08:00", "i": "x"}),
    cursor_of({"k": "newest", "t": "2024-03-01T08:00:00+00:00", "i": "a\x00b"}),
    cursor_of(b"[" * 5000 + b"]" * 5000),
    cursor_of(b"\xff\xfe"), cursor_of([1, 2]), "!!!", "", "a", "=" * 8,
]


class FromPool(str):
    """A cursor the test has seen, chosen when the request is sent (the pool grows as the test
    runs, and what Hypothesis draws must not depend on it): one of ``kind``'s (newest, oldest,
    any), or none."""

    def __new__(cls, kind: str, slot: int) -> "FromPool":
        made = super().__new__(cls, f"<cursor {kind} {slot}>")
        made.kind, made.slot = kind, slot
        return made

    def resolve(self, pools: "Pools") -> Optional[str]:
        found = pools.all_cursors() if self.kind == "any" else pools.cursors[self.kind]
        return found[self.slot % len(found)] if found else None


@dataclasses.dataclass
class Pools:
    """Ids and cursors the test has seen: requests reuse them, so they find real files."""

    ids: Dict[str, List[str]]
    cursors: Dict[str, List[str]] = dataclasses.field(default_factory=lambda: {"newest": [], "oldest": []})

    def all_cursors(self) -> List[str]:
        return self.cursors["newest"] + self.cursors["oldest"]


def strategies(pools: Pools):
    any_id = st.one_of(
        st.sampled_from(pools.ids["ws-a"]), st.sampled_from(pools.ids["ws-a"]), st.sampled_from(pools.ids["ws-b"]),
        st.uuids(version=4).map(str), st.sampled_from(["x", "..", ".", "a/b", "%2F", "\x00", "é" * 40,
                                                                "7" * 65, " ", "null"]),
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12))
    cursors = st.one_of(
        st.sampled_from(CRAFTED_CURSORS), st.integers(0, 10**6).map(lambda n: FromPool("any", n)),
        # Well-formed base64 of JSON that is almost a cursor, or of bytes that are not JSON.
        st.fixed_dictionaries({"k": st.sampled_from(["newest", "oldest", "missions", "x"]), "t": hostile_times,
                               "i": st.one_of(st.text(chars, max_size=40), st.integers())}).map(cursor_of),
        st.binary(max_size=60).map(cursor_of),
        # JSON nested up to 24 kB deep: its base64 stays below Tornado's 64 kB request head.
        st.tuples(st.sampled_from(["[", '{"k":']), st.integers(1, 24_000)).map(
            lambda t: cursor_of((t[0] * t[1])[:24_000].encode())))

    @st.composite
    def find_params(draw, route: str) -> Tuple[List[Tuple[str, str]], bool]:
        names = draw(st.lists(st.sampled_from(FILTER_NAMES), max_size=4, unique=True))
        params = [(name, draw(valid_filters[name])) for name in names]
        if route == "files":
            if draw(st.booleans()):
                params.append(("limit", str(draw(st.integers(1, MAX_LIMIT)))))
            if draw(st.booleans()):
                params.append(("count", draw(st.sampled_from(["true", "false"]))))
            if draw(st.integers(0, 3)) == 0:
                params.append(("cursor", FromPool(dict(params).get("order", "newest"), draw(st.integers(0, 10**6)))))
        valid = True
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
            valid = False
            how = draw(st.sampled_from(["number", "time", "bbox", "text", "enum", "cursor", "twice", "unknown"]))
            if how == "number":
                params.append((draw(st.sampled_from(["limit", "limit", "page", "page_size"])),
                               draw(hostile_numbers)))
            elif how == "time":
                params.append((draw(st.sampled_from(["uploaded_from", "uploaded_to", "captured_from", "captured_to"])),
                               draw(hostile_times)))
            elif how == "bbox":
                params.append(("bbox", draw(st.sampled_from(BBOXES))))
            elif how == "text":
                params.append((draw(st.sampled_from(["mission", "sn", "q", "drone_model_key", "payload_model_key"])),
                               draw(hostile_text)))
            elif how == "enum":
                params.append((draw(st.sampled_from(["kind", "order", "original", "count", "redirect", "inline"])),
                               draw(st.sampled_from(["", "TRUE", "1", "yes", "Photo", "latest", "none"]))))
            elif how == "cursor":
                params.append(("cursor", draw(cursors)))
            elif how == "twice" and params:
                params.append(params[0])
            else:
                params.append((draw(st.text(chars, min_size=1, max_size=8)), draw(hostile_text)))
        return params, valid

    @st.composite
    def requests(draw) -> Request:
        route = draw(st.sampled_from(list(ROUTES) + ["files", "files", "file", "download", "dji-url"]))
        methods = ROUTES[route][2]
        roll = draw(st.integers(0, 19))
        method = (draw(st.sampled_from(methods)) if roll < 16 else "OPTIONS" if roll < 18
                  else draw(st.sampled_from(["POST", "PUT", "PATCH", "DELETE"])))
        if draw(st.integers(0, 9)) < 8:
            ws, token = draw(st.sampled_from([("ws-a", "read-a-token"), ("ws-a", "admin-a-token"),
                                              ("ws-b", "admin-b-token"), ("ws-a", "any-reader-token"),
                                              ("ws-a", "read-a-token"), ("ws-a", "admin-a-token"),
                                              ("ws-b", "read-a-token"), ("ws-a", "upload-a-token")]))
            ws_bytes = ws.encode()
        else:
            ws_bytes = draw(st.one_of(st.sampled_from([b"ws-a", b"ws-b", b"", b"..", b"*", b"x" * 65, b"\xff",
                                                       b"ws-a\x00", b"%2F"]), valid_ws.map(str.encode)))
            token = draw(st.one_of(st.sampled_from(list(TOKENS)), any_token))
        request = Request(route, method, ws_bytes, token)
        if "{id}" in ROUTES[route][0]:
            request.file_id = draw(any_id)
        if route in FIND_ROUTES:
            request.params, request.valid = draw(find_params(route))
        elif route == "missions":
            request.valid = True
            if draw(st.booleans()):
                request.params.append(("limit", str(draw(st.integers(1, MAX_LIMIT)))))
            if draw(st.integers(0, 2)) == 0:
                request.params.append(("cursor", draw(cursors)))
                request.valid = False
        elif route == "dji-files":
            size = draw(st.integers(1, MAX_LIMIT))
            request.params = [("page", str(draw(st.integers(1, max(1, 2 * FILES_PER_WORKSPACE // size + 1))))),
                              ("page_size", str(size))]
            request.valid = True
        elif route == "download":
            request.valid = True
            for name in ("redirect", "inline"):
                if draw(st.booleans()):
                    request.params.append((name, draw(st.sampled_from(["true", "false"]))))
        else:
            request.valid = True
        if draw(st.integers(0, 9)) == 0:
            request.valid = False
            if draw(st.booleans()):
                request.raw_query = draw(st.sampled_from(["limit=%FF", "q=%C3%28", "mission=%ED%A0%80", "%%%", "=&=&",
                                                          "page=%C2%B2", "limit=" + "9" * 5000]))
            else:
                name = draw(st.sampled_from(["limit", "page", "page_size", "cursor", "captured_from", "bbox", "kind"]))
                value = draw(st.one_of(st.sampled_from(NUMBERS + TIMES + BBOXES), hostile_text))
                request.params.append((name, value))
        if draw(st.integers(0, 4)) == 0:
            request.origin = draw(st.sampled_from([ORIGIN, "https://evil.example", "null"]))
        return request

    return st.lists(requests(), min_size=1, max_size=8)


# ------------------------------------------------------------------------------ the model

@dataclasses.dataclass
class Model:
    records: Dict[Tuple[str, str], MediaRecord]  # (workspace, public id) -> record
    keys: Set[str]                              # what the bucket must hold
    groups: Dict[str, Set[str]]                 # missions each workspace's devices reported
    events: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def of(self, ws: str) -> List[MediaRecord]:
        return [r for (w, _), r in self.records.items() if w == ws]


def order_key(record: MediaRecord) -> Tuple[_dt.datetime, str]:
    return record.created_at, record.public_id or ""


def parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def query_of(request: Request, ws: str) -> FileQuery:
    """The FileQuery a valid request's parameters stand for."""
    one = request.one
    bbox = tuple(float(x) for x in one("bbox").split(",")) if one("bbox") else None
    times = {name: parse_time(one(name)) if one(name) else None
             for name in ("uploaded_from", "uploaded_to", "captured_from", "captured_to")}
    original = one("original")
    return FileQuery(ws, mission=one("mission"), sn=one("sn"), drone_model_key=one("drone_model_key"),
                     payload_model_key=one("payload_model_key"), kind=one("kind"),
                     original=None if original is None else original == "true", text=one("q") or None,
                     bbox=bbox, newest_first=one("order") != "oldest", **times)  # type: ignore[arg-type]


def decode_cursor(cursor: str) -> Tuple[_dt.datetime, str]:
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return _dt.datetime.fromisoformat(payload["t"]).astimezone(UTC), payload["i"]


def expected_matches(model: Model, query: FileQuery, cursor: Optional[str] = None) -> List[MediaRecord]:
    found = sorted((r for r in model.of(query.workspace_id) if query.matches(r)), key=order_key,
                   reverse=query.newest_first)
    if cursor:
        after = decode_cursor(cursor)
        found = [r for r in found if (order_key(r) < after if query.newest_first else order_key(r) > after)]
    return found


# ------------------------------------------------------------- SQLite's text filter

ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def sqlite_text_match(query: FileQuery, record: MediaRecord) -> bool:
    """The text filter as SQLite applies it: its LOWER() and LIKE fold ASCII letters only (the
    store folds the pattern the same way), and a file without name and path never matches
    (NULL LIKE anything is NULL)."""
    needle = (query.text or "").translate(ASCII_LOWER)
    f = record.file
    return any(value is not None and needle in value.translate(ASCII_LOWER) for value in (f.name, f.path))


def gate(request: Request) -> Optional[Set[int]]:
    """The statuses decided before the route's own parsing (None: the route decides)."""
    if request.ws == b"" or ("{id}" in ROUTES[request.route][0] and request.file_id == ""):
        return {404}  # no route matches an empty path segment
    if request.method not in (*ROUTES[request.route][2], "OPTIONS"):
        return {405}
    try:  # Tornado decodes the path's arguments before any method of the handler runs
        ws = request.ws.decode("utf-8")
    except UnicodeDecodeError:
        return {400}
    if request.method == "OPTIONS":
        return {204}
    entry = TOKENS.get(request.token or "")
    if entry is None:
        return {401}
    workspaces, scopes = entry
    if "*" not in workspaces and ws not in workspaces:
        return {403}
    if ("delete" if request.method == "DELETE" else "read") not in scopes:
        return {403}
    if not rules.WORKSPACE_ID_RE.fullmatch(ws):
        return {400}
    return None


def check_answer(request: Request, answer: Answer, model: Model, bucket: InMemoryObjectStore, pools: Pools,
                 validators: Dict[Tuple[str, str, int], Any]) -> None:
    where = f"{request!r} -> {request.path()[:300]} answered {answer.status} {answer.headers} {answer.body[:300]!r}"
    assert answer.status < 500, where
    allow = answer.headers.get("access-control-allow-origin")
    assert allow is None or (allow == ORIGIN == request.origin), f"CORS for another origin: {where}"
    decided = gate(request)
    if decided == {404}:
        assert answer.status == 404 and envelope(answer, where)["code"] == 404, where
        return
    if request.origin == ORIGIN:
        assert allow == ORIGIN, f"no CORS header for the configured origin: {where}"
    if decided == {204}:
        assert answer.status == 204 and answer.body == b"", where
        if request.origin == ORIGIN:
            assert "X-Auth-Token" in answer.headers.get("access-control-allow-headers", ""), where
        return
    spec_path = ROUTES[request.route][1]
    method = request.method.lower()
    if decided is not None:
        assert answer.status in decided, where
        body = envelope(answer, where)
        assert body["code"] == answer.status and body["data"] == {}, where
        if answer.status != 405 and method != "options":  # the spec documents no preflight's 400
            documented(answer, body, spec_path, method, validators, where)
        return
    ws = request.ws.decode("utf-8")
    assert answer.status in Spec_.statuses(spec_path, method), f"undocumented status: {where}"
    if answer.status == 302:
        assert request.route == "dji-url" or request.one("redirect") == "true", where
        check_download(request, answer.headers["location"], ws, model, where)
        return
    if answer.status == 200 and request.route == "csv":
        assert answer.headers["content-type"].startswith("text/csv"), where
        rows = list(csv.reader(io.StringIO(answer.body.decode("utf-8"))))
        assert tuple(rows[0]) == CSV_COLUMNS, where
        texts = [CSV_COLUMNS.index("name"), CSV_COLUMNS.index("path")]  # devices' text: never a formula
        assert all(row[i][:1] not in ("=", "+", "-", "@") for row in rows[1:] for i in texts), where
        check_listing(request, ws, [row[0] for row in rows[1:]], model, where, with_position=False)
        model.events["csv exported"] += 1
        return
    if answer.status == 200 and request.route == "geojson":
        assert answer.headers["content-type"] == "application/geo+json", where
        collection = json.loads(answer.body)
        assert collection["type"] == "FeatureCollection", where
        check_listing(request, ws, [f["properties"]["id"] for f in collection["features"]], model, where,
                      with_position=True)
        model.events["geojson exported"] += 1
        return
    body = envelope(answer, where)
    documented(answer, body, spec_path, method, validators, where)
    if answer.status != 200:
        assert body["code"] == answer.status and body["data"] == {}, where
        if request.valid and request.route in ("file", "download", "dji-url") and request.method == "GET":
            assert answer.status == 404, where
            assert (ws, request.file_id) not in model.records or (
                request.route != "file" and stale(model.records[(ws, request.file_id)], bucket)), where
            model.events[f"{request.route} not found"] += 1
        elif request.valid and request.route != "dji-url":
            pytest.fail(f"a valid request refused: {where}")
        else:
            model.events[f"{request.route} {answer.status}"] += 1
        return
    data = body["data"]
    if request.route == "files":
        ids = [f["id"] for f in data["files"]]
        for f in data["files"]:
            assert f["object_key"].startswith(f"media/{ws}/"), f"another workspace's file: {where}"
        check_listing(request, ws, ids, model, where, with_position=False, page=data)
        if data["next_cursor"]:
            pools.cursors["oldest" if request.one("order") == "oldest" else "newest"].append(data["next_cursor"])
        model.events["files listed" + (" (empty)" if not ids else "")] += 1
    elif request.route == "file" and request.method == "GET":
        record = model.records.get((ws, request.file_id))
        assert record is not None and data["id"] == request.file_id, f"not this workspace's file: {where}"
        assert data["object_key"] == record.file.object_key and data["name"] == record.file.name, where
        model.events["file got"] += 1
    elif request.route == "file":
        record = model.records.pop((ws, request.file_id), None)
        assert data == {"deleted": record is not None}, where
        if record is not None:
            assert record.file.object_key not in bucket.keys, f"the object is still there: {where}"
            model.keys.discard(record.file.object_key)
            model.events["file deleted"] += 1
        else:
            model.events["delete of a file not there"] += 1
    elif request.route == "download":
        check_download(request, data["url"], ws, model, where)
        assert data["expires_in"] == 900, where
    elif request.route == "missions":
        mine = model.of(ws)
        for m in data["missions"]:
            assert m["mission"] in model.groups.get(ws, set()) | {r.file.file_group_id for r in mine}, \
                f"another workspace's mission: {where}"
            assert m["recorded_count"] == sum(r.file.file_group_id == m["mission"] for r in mine), where
        if request.valid and not request.one("limit"):
            reported = model.groups.get(ws, set())  # a workspace no device reported to has none
            assert len(data["missions"]) == len(reported | {r.file.file_group_id for r in mine} - {None})
        model.events["missions listed"] += 1
    elif request.route == "dji-files":
        page, size = int(request.one("page")), int(request.one("page_size"))
        ordered = sorted(model.of(ws), key=order_key, reverse=True)
        expected = ordered[(page - 1) * size:page * size]
        assert [f["file_id"] for f in data["list"]] == [r.public_id for r in expected], where
        assert data["pagination"] == {"page": page, "page_size": size, "total": len(ordered)}, where
        model.events["dji page listed"] += 1


def stale(record: MediaRecord, bucket: InMemoryObjectStore) -> bool:
    return record.verified_at is None and record.file.object_key not in bucket.keys


def check_download(request: Request, url: str, ws: str, model: Model, where: str) -> None:
    record = model.records.get((ws, request.file_id))
    assert record is not None, f"a URL for a file not in this workspace: {where}"
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == STORAGE, where
    assert urllib.parse.unquote(parts.path) == f"/{BUCKET}/{record.file.object_key}", where
    disposition = "response-content-disposition" in parts.query
    assert disposition == (request.route == "dji-url" or request.one("inline") != "true"), where
    model.events[f"{request.route} URL"] += 1


def check_listing(request: Request, ws: str, ids: List[str], model: Model, where: str, *, with_position: bool,
                  page: Optional[Dict[str, Any]] = None) -> None:
    """Every id is a file of this workspace; for a valid request, exactly the files (and the page,
    the cursor, the total) the model says."""
    assert all((ws, i) in model.records for i in ids), f"a file not in this workspace: {where}"
    if not request.valid:
        return
    query = query_of(request, ws)
    cursor = request.one("cursor")
    limit = int(request.one("limit") or 50) if page is not None else EXPORT_LIMIT

    def expected(after: Optional[str]) -> List[MediaRecord]:
        found = expected_matches(model, query, after)
        if sqlite_folding:
            found = [r for r in expected_matches(model, dataclasses.replace(query, text=None), after)
                     if sqlite_text_match(query, r)]
        return [r for r in found
                if not with_position or (r.file.shoot_lat is not None and r.file.shoot_lng is not None)]

    sqlite_folding = False
    found = expected(cursor)
    if ids != [r.public_id for r in found[:limit]] and query.text is not None and not query.text.isascii():
        # Documented (doc/library.md): SQLite folds the case of ASCII letters only.
        sqlite_folding = True
        found = expected(cursor)
        model.events["SQLite's ASCII-only case folding"] += 1
    assert ids == [r.public_id for r in found[:limit]], f"not the expected files: {where}"
    if page is not None:
        assert (page["next_cursor"] is None) == (len(found) <= limit), where
        if request.one("count") == "true":
            assert page["total"] == len(expected(None)), where
        else:
            assert "total" not in page, where


def envelope(answer: Answer, where: str) -> Dict[str, Any]:
    assert answer.headers.get("content-type", "").startswith("application/json"), f"not the envelope: {where}"
    body = json.loads(answer.body.decode("utf-8"))
    assert isinstance(body, dict) and set(body) == {"code", "message", "data"}, f"not the envelope: {where}"
    assert type(body["code"]) is int and isinstance(body["message"], str) and isinstance(body["data"], dict), where
    return body


def documented(answer: Answer, body: Dict[str, Any], spec_path: str, method: str,
               validators: Dict[Tuple[str, str, int], Any], where: str) -> None:
    key = (spec_path, method, answer.status)
    assert answer.status in Spec_.statuses(spec_path, method), f"undocumented status: {where}"
    if key not in validators:
        validators[key] = Spec_.response_validator(spec_path, answer.status, method)
    errors = [e.message for e in validators[key].iter_errors(body)]
    assert not errors, f"{where}: not as doc/openapi.yaml says: {errors}"


Spec_ = Spec(load_spec())


# ----------------------------------------------------------------------------- the test

def test_library_routes_answer_hostile_requests_with_documented_envelopes(tmp_path, quiet_logs):  # noqa: F811
    database = tmp_path / "fuzz-library.sqlite3"
    records, keys, groups = make_records()
    server = LibraryServer(f"sqlite:///{database}", records, keys, groups)
    model = Model({(r.workspace_id, r.public_id or ""): r for r in records}, set(keys),
                  {ws: {g.file_group_id for w, g in groups if w == ws} for ws in WORKSPACES})
    pools = Pools({ws: [r.public_id or "" for r in records if r.workspace_id == ws] for ws in WORKSPACES})
    validators: Dict[Tuple[str, str, int], Any] = {}
    stats: collections.Counter = collections.Counter()
    threads_before = set(threading.enumerate())
    started = time.monotonic()
    server.start()
    try:
        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much, HealthCheck.large_base_example])
        @given(batch=strategies(pools))
        def fuzz(batch: List[Request]) -> None:
            for request in batch:
                request.params = [(k, v.resolve(pools) if isinstance(v, FromPool) else v) for k, v in request.params]
                request.params = [(k, v) for k, v in request.params if v is not None]
                headers = []
                if request.token is not None:
                    headers.append(("X-Auth-Token", request.token))
                if request.origin is not None:
                    headers.append(("Origin", request.origin))
                if request.method == "OPTIONS":
                    headers.append(("Access-Control-Request-Method", "GET"))
                answer = send(server.port, request.method, request.path(), headers, b"", chunk=None, expect=False)
                stats[(request.route, request.method, answer.status)] += 1
                check_answer(request, answer, model, server.bucket, pools, validators)

        fuzz()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    assert set(threading.enumerate()) <= threads_before, "a server or database thread was left running"

    # The database holds exactly the model's files (nothing deleted without the model knowing,
    # nothing of one workspace deleted through another), the bucket exactly their objects.
    with sqlite3.connect(str(database)) as db:
        stored = set(db.execute("SELECT workspace_id, public_id FROM dji_media_file"))
    db.close()
    assert stored == set(model.records)
    assert set(server.bucket.keys) == model.keys

    total = sum(stats.values())
    print(f"\nlibrary fuzz: {total} requests in {elapsed:.1f} s; {len(stored)} files left; "
          + ", ".join(f"{r} {m} {s}: {n}" for (r, m, s), n in sorted(stats.items())))
    print("model: " + ", ".join(f"{event}: {n}" for event, n in sorted(model.events.items())))
    assert total >= 1200, "too few requests to call this fuzzing"
    assert {status for _, _, status in stats} >= {200, 204, 302, 400, 401, 403, 404, 405}
    assert all(model.events[event] for event in (
        "files listed", "file got", "file deleted", "delete of a file not there", "download URL", "dji-url URL",
        "download not found", "missions listed", "dji page listed", "csv exported", "geojson exported")), model.events


FOUND_BY_FUZZING = [  # (path and query, with read-a-token), each once answered 500
    LIBRARY.format(ws="ws-a") + "/files?limit=%C2%B2",                             # "²".isdigit(), int() refuses
    DJI.format(ws="ws-a") + "/files?page=%E2%91%A0&page_size=10",                  # "①" likewise
    LIBRARY.format(ws="ws-a") + "/files?captured_from=9999-12-31T23:59:59-08:00",  # OverflowError in UTC
    LIBRARY.format(ws="ws-a") + "/export.csv?uploaded_to=0001-01-01T00:00:00%2B08:00",
    LIBRARY.format(ws="ws-a") + "/files?cursor=" + CRAFTED_CURSORS[4],              # the cursor's time likewise
    LIBRARY.format(ws="ws-a") + "/files?cursor=" + CRAFTED_CURSORS[7],              # RecursionError
]


def test_what_the_fuzzer_found_stays_fixed(tmp_path, quiet_logs):  # noqa: F811
    records, keys, groups = make_records()
    server = LibraryServer(f"sqlite:///{tmp_path / 'known.sqlite3'}", records, keys, groups)
    server.start()
    try:
        answers = {path: send(server.port, "GET", path, [("X-Auth-Token", "read-a-token")], b"", chunk=None,
                              expect=False) for path in FOUND_BY_FUZZING}
        found = json.loads(send(server.port, "GET", LIBRARY.format(ws="ws-a") + "/files?q=%C3%84pfel",
                                [("X-Auth-Token", "read-a-token")], b"", chunk=None, expect=False).body)
    finally:
        server.stop()
    assert {path: a.status for path, a in answers.items() if a.status >= 500} == {}
    assert {a.status for a in answers.values()} == {400}
    # SQLite finds a name with a non-ASCII letter in its exact case (it folds ASCII letters only).
    wanted = FileQuery("ws-a", text="\u00c4pfel")
    assert len(found["data"]["files"]) == sum(sqlite_text_match(wanted, r) for r in records if wanted.matches(r)) > 0


@pytest.fixture(autouse=True)
def _no_hypothesis_files(monkeypatch, tmp_path):
    # As in test_fuzz.py: Hypothesis's caches go to the temp dir, not ./.hypothesis.
    monkeypatch.setenv("HYPOTHESIS_STORAGE_DIRECTORY", str(tmp_path / "hypothesis"))
