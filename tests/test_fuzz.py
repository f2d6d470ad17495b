"""Hostile input over real HTTP (issue point 6): thousands of generated and mutated requests.

A real Tornado ``HTTPServer``, configured as ``dji-media serve`` configures it, runs the media
routes on a SQLite store in a background thread with its own event loop; Hypothesis drives a
small raw-socket client against it from the test thread. Every answer must be the envelope,
never a 5xx, with a status the request allows and a shape doc/openapi.yaml documents. The test
keeps a model of what valid callbacks stored (and what fast-upload/tiny-fingerprints removed as
stale) and checks every answer against it; at the end the SQLite tables must hold exactly the
model.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import socket
import sqlite3
import string
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple
from urllib.parse import quote_from_bytes

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_openapi import Spec, load_spec

from dji_media import (
    MediaService,
    NotFoundHandler,
    ObjectStore,
    PeeweeMediaStore,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
    get_handlers,
    rules,
)
from dji_media.web import DEFAULT_MAX_BODY_BYTES
from support import TOKEN_A, TOKEN_B

MAX_BODY = DEFAULT_MAX_BODY_BYTES
TOKEN_ANY = "token-for-any-workspace"
TOKENS = {TOKEN_A: {"ws-a"}, TOKEN_B: {"ws-b"}, TOKEN_ANY: {"*"}}
# Bodies above this go out with "Expect: 100-continue": a request the server refuses before
# reading its body is answered and the connection closed, and a client still sending a large
# body would then see a reset instead of the answer.
EXPECT_ABOVE = 16 * 1024
EXAMPLES = 1000  # each example is a batch of 1 to 10 requests: about 4,500 requests

ENDPOINTS = {
    "fast": ("/media/api/v1/workspaces/{ws}/fast-upload", "/media/api/v1/workspaces/{workspace_id}/fast-upload"),
    "tiny": ("/media/api/v1/workspaces/{ws}/files/tiny-fingerprints",
             "/media/api/v1/workspaces/{workspace_id}/files/tiny-fingerprints"),
    "callback": ("/media/api/v1/workspaces/{ws}/upload-callback",
                 "/media/api/v1/workspaces/{workspace_id}/upload-callback"),
    "group": ("/media/api/v1/workspaces/{ws}/group-upload-callback",
              "/media/api/v1/workspaces/{workspace_id}/group-upload-callback"),
    "sts": ("/storage/api/v1/workspaces/{ws}/sts", "/storage/api/v1/workspaces/{workspace_id}/sts"),
}


# --------------------------------------------------------------------------- the server

class RuleObjectStore(ObjectStore):
    """A bucket where exactly the keys ending in ".jpg" exist, so stale records occur too."""

    async def exists(self, object_key: str) -> bool:
        return present(object_key)


def present(object_key: str) -> bool:
    return object_key.endswith(".jpg")


class LiveServer:
    """The media routes on 127.0.0.1, in a thread with its own asyncio loop."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.port = 0
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._run, name="fuzz-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fuzz server did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the fuzz server did not stop"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()/stop() in the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        service = MediaService(
            # synchronous=normal: WAL without an fsync per commit, for speed; same SQL.
            media_store=PeeweeMediaStore(url=self.db_url, synchronous="normal", max_workers=2),
            verify_window=60,  # storage confirmations are remembered in the database too
            object_store=RuleObjectStore(),
            credentials=StaticCredentialProvider(endpoint="http://storage.example:9000", access_key="AK",
                                                 secret_key="SK", session_token="ST", bucket="media"),
            authenticator=StaticTokenAuthenticator(tokens={t: sorted(w) for t, w in TOKENS.items()}),
        )
        app = tornado.web.Application(get_handlers(service, max_body_bytes=MAX_BODY),
                                      default_handler_class=NotFoundHandler)
        # As dji_media.server.serve builds it: the server's own cap is the body limit.
        server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY, idle_connection_timeout=60,
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


# --------------------------------------------------------------------------- the client

@dataclasses.dataclass
class Answer:
    status: int
    headers: Dict[str, str]
    body: bytes


def _read_head(reader) -> Tuple[int, Dict[str, str]]:
    line = reader.readline(65536)
    assert line.startswith(b"HTTP/1.1 "), f"not an HTTP response: {line!r}"
    status = int(line.split()[1])
    headers: Dict[str, str] = {}
    while True:
        line = reader.readline(65536)
        assert line, "connection closed inside the response head"
        if line in (b"\r\n", b"\n"):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


def send(port: int, method: str, path: str, headers: List[Tuple[str, str]], body: bytes, *,
         chunk: Optional[int], expect: bool) -> Answer:
    """One request on its own connection; the answer as the server sent it."""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers]
    if chunk:
        head.append("Transfer-Encoding: chunked")
        pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    if expect:
        head.append("Expect: 100-continue")
    raw_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        with sock.makefile("rb") as reader:
            if expect:
                sock.sendall(raw_head)
                status, answer_headers = _read_head(reader)
                if status == 100:
                    try:
                        sock.sendall(payload)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the answer may still have arrived; read it
                    status, answer_headers = _read_head(reader)
            else:
                sock.sendall(raw_head + payload)
                status, answer_headers = _read_head(reader)
            length = answer_headers.get("content-length", "")
            if length.isdigit():
                content = reader.read(int(length))
                assert len(content) == int(length), "answer cut short"
            else:  # not an answer of the handlers; keep what came for the report
                try:
                    content = reader.read(65536)
                except ConnectionResetError:
                    content = b"<connection reset>"
    return Answer(status, answer_headers, content)


# ------------------------------------------------------------------------ the strategies
# Every strategy is built once, here: strategies built inside a draw are validated again on each
# draw, which made generation cost several times the HTTP round trips.

FP_POOL = [f"{i:032X}" for i in range(5)] + ["F" * 64]
TINY_POOL = [f"{i:032x}_2022_8_31_15_16_{i}" for i in range(5)] + ["t" * 128]
GROUP_POOL = ["g1", "g2", "3c3a3c8e-8f2e-4a63-9d3f-1a2b3c4d5e6f", "g" * 128]
FILE_NAMES = ["a.jpg", "b.jpg", "c.mp4", "DJI_0001.JPG", "d.jpg"]  # present() iff ".jpg"
NASTY = ["", " ", "\U0001f600", "\u2028", "\ufeff", "💥", "null", "../..", "%00", "\\", '"',
         "a" * 129, "é" * 300, "x" * 5000, "0", "-1", "true", "1e999", "NaN"]
# Never in a valid body: surrogate halves (valid JSON as \u escapes, and a pair even decodes to
# one character, but never valid as raw UTF-8 bytes) and NUL (no stored text may hold it).
HOSTILE = ["\ud800", "\udfff", "a\udc00b", "\ud83d\ude00", "\x00", "a\x00b"]
EDGE_TIMES = ["0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00", "2022-08-31T15:16:16Z",
              "2022-08-31 15:16:16", "2022-02-30T00:00:00+08:00"]
SIZES = [0, 1, 63, 64, 65, 127, 128, 129, 255, 256, 1023, 1024, 1025, 4300, 70000]
DEPTHS = [2, 50, 998, 1000, 3000, 100000]
DEEP = "\x00deep\x00"  # placeholder spliced into the encoded JSON


def optional(strategy):
    return st.one_of(st.none(), strategy)


chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


def texts(**bounds):
    return st.text(chars, **bounds)


short_text = texts(max_size=20)
repeated = st.builds(lambda c, n: c * n, chars, st.sampled_from(SIZES))
clean_text = st.one_of(short_text, st.sampled_from(NASTY), repeated)
any_text = st.one_of(clean_text, st.sampled_from(HOSTILE))
big_ints = st.sampled_from([2**31 - 1, 2**31, -2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -2**63 - 1, 2**64,
                            10**30, -10**30])


def json_of(texts):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), big_ints, st.floats(), texts)
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(short_text, inner, max_size=4)), max_leaves=8)


clean_json = json_of(clean_text)  # what a valid body may hold in unknown fields
# Lenient fields get flat values of any type (nested ones reach them through mutations).
lenient = st.one_of(st.none(), st.booleans(), st.integers(), big_ints, st.floats(), clean_text,
                    st.lists(st.integers(), max_size=2))
json_values = json_of(any_text)
json_lists = st.lists(json_values, max_size=3)
non_objects = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text, json_lists)
# Not st.from_regex: building its character tables costs seconds.
valid_ws = st.text(st.sampled_from(string.ascii_letters + string.digits + "_-"), min_size=1,
                   max_size=rules.MAX_WORKSPACE_ID)
segment = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cc", "Cs")),
                  min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
segments = st.lists(segment, max_size=2)
file_name = st.one_of(st.sampled_from(FILE_NAMES), segment)
# The pools come up often, so that lookups find what callbacks stored.
fingerprints = st.one_of(st.sampled_from(FP_POOL), st.sampled_from(FP_POOL), texts(min_size=1, max_size=64))
tiny_pool = st.sampled_from(TINY_POOL)
tiny_value = st.one_of(tiny_pool, tiny_pool, st.none(), texts(max_size=128))
tiny_items = st.lists(st.one_of(tiny_pool, tiny_pool, texts(min_size=1, max_size=128)), max_size=30)
tiny_count = st.sampled_from([None] * 8 + [rules.MAX_TINY_FINGERPRINTS])
spellings = st.sampled_from(["tinny_fingerprint", "tiny_fingerprint", "both", "none"])
names = optional(texts(max_size=255))
paths = optional(texts(max_size=1024))
results = st.one_of(st.just(0), st.none(), st.integers(-rules.MAX_INT, rules.MAX_INT))
sub_file_types = optional(st.integers(0, rules.MAX_INT))
group_ids = st.one_of(st.sampled_from(GROUP_POOL), texts(min_size=1, max_size=128))
optional_group_ids = optional(st.one_of(st.sampled_from(GROUP_POOL), texts(max_size=128)))
created_times = st.one_of(st.sampled_from(EDGE_TIMES), st.sampled_from(EDGE_TIMES), lenient,
                          st.datetimes().map(lambda d: d.isoformat() + "+08:00"))
positions = st.one_of(lenient, st.fixed_dictionaries({"lat": st.floats(), "lng": lenient}))
counts = st.one_of(st.integers(0, 20), st.integers(0, rules.MAX_INT))
extras = st.dictionaries(texts(min_size=1, max_size=8).map(lambda k: "x_" + k), clean_json, max_size=2)
mutation_counts = st.integers(1, 3)
operations = st.sampled_from(["retype", "retype", "drop", "null", "huge", "deep", "list"])
huge_strings = st.builds(lambda c, n: c * n, st.characters(), st.sampled_from(SIZES))  # NUL too
separators = st.sampled_from([(",", ":"), (", ", ": ")])
depths = st.sampled_from(DEPTHS)
nestings = st.sampled_from([("[", "]"), ('{"a":', "}")])
raw_kinds = st.sampled_from(["binary", "utf8", "non-object", "truncated", "bom", "blank", "nan"])
blanks = st.sampled_from([b"", b" ", b"\r\n\t ", b"\x00"])
fractions = st.floats(0, 1)
endpoints = st.sampled_from(list(ENDPOINTS))
authorised = st.one_of(st.sampled_from([("ws-a", TOKEN_A), ("ws-b", TOKEN_B)]),
                       st.tuples(valid_ws, st.just(TOKEN_ANY)))
any_ws = st.one_of(
    st.sampled_from([b"ws-a", b"ws-b", b"", b".", b"..", b"*", b"a*b", b"x" * 65, b"ws-a/..", b"%2F",
                     b" ", b"ws-a\x00", b"ws-a\n", b"\xff"]),
    valid_ws.map(str.encode), st.text(max_size=70).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=70))
any_token = st.one_of(
    st.none(), st.sampled_from(["", TOKEN_A, TOKEN_B, TOKEN_ANY, "x" * 9000, TOKEN_A.upper()]),
    # Header values: visible Latin-1 (Tornado strips spaces and refuses control characters).
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, blacklist_categories=("Cc", "Zs")),
            max_size=40))
kinds = st.sampled_from(["valid"] * 4 + ["mutated"] * 4 + ["raw"] * 2 + ["oversized"])
methods = st.sampled_from(["POST"] * 20 + ["GET", "PUT", "DELETE", "PATCH"])
chunks = st.one_of(st.none(), st.none(), st.integers(1, 70000))
content_types = st.sampled_from(["application/json"] * 6 + [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
paddings = st.integers(1, 2000)


def tiny_values(draw) -> Dict[str, Any]:
    value = draw(tiny_value)
    spelling = draw(spellings)
    if spelling == "none":
        return {}
    if spelling == "both":
        return {"tinny_fingerprint": value, "tiny_fingerprint": draw(tiny_pool)}
    return {spelling: value}


def valid_body(draw, endpoint: str, ws: str) -> Dict[str, Any]:
    """A body the server must accept (HTTP 200) once the token and workspace are right."""
    if endpoint == "fast":
        body = {"fingerprint": draw(fingerprints)}
        if draw(st.booleans()):
            body.update(name=draw(names), path=draw(paths))
        body["ext"] = dict(tiny_values(draw), drone_model_key=draw(lenient))
    elif endpoint == "tiny":
        many = draw(tiny_count)
        body = {"tiny_fingerprints": draw(tiny_items) if many is None else ["a"] * many}
    elif endpoint == "callback":
        key = "/".join([f"media/{ws}"] + draw(segments) + [draw(file_name)])
        body = {"fingerprint": draw(fingerprints), "object_key": key, "result": draw(results)}
        if draw(st.booleans()):
            body.update(sub_file_type=draw(sub_file_types), name=draw(names), path=draw(paths))
        body["ext"] = tiny_values(draw)
        if draw(st.booleans()):
            body["ext"].update(file_group_id=draw(optional_group_ids), drone_model_key=draw(lenient),
                               payload_model_key=draw(lenient), is_original=draw(lenient),
                               sn=draw(lenient))
        if draw(st.booleans()):
            body["metadata"] = {
                "gimbal_yaw_degree": draw(lenient), "absolute_altitude": draw(lenient),
                "relative_altitude": draw(st.floats()), "created_time": draw(created_times),
                "shoot_position": draw(positions),
            }
    elif endpoint == "group":
        count = draw(counts)
        body = {"file_group_id": draw(group_ids), "file_count": count,
                "file_uploaded_count": int(count * draw(fractions))}
    else:
        body = {}
    body.update(draw(extras))
    return body


FIELDS = {
    "fast": [("fingerprint",), ("name",), ("path",), ("ext",), ("ext", "tinny_fingerprint"),
             ("ext", "tiny_fingerprint")],
    "tiny": [("tiny_fingerprints",)],
    "callback": [("fingerprint",), ("object_key",), ("result",), ("sub_file_type",), ("name",), ("path",),
                 ("ext",), ("ext", "tinny_fingerprint"), ("ext", "tiny_fingerprint"), ("ext", "file_group_id"),
                 ("ext", "is_original"), ("metadata",), ("metadata", "created_time"),
                 ("metadata", "shoot_position"), ("metadata", "gimbal_yaw_degree")],
    "group": [("file_group_id",), ("file_count",), ("file_uploaded_count",)],
    "sts": [("anything",)],
}
FIELD_CHOICES = {endpoint: st.sampled_from(fields) for endpoint, fields in FIELDS.items()}


def mutated_body(draw, endpoint: str, ws: str) -> bytes:
    """A valid body with one to three fields dropped, retyped, nulled, made huge or deeply nested."""
    body = valid_body(draw, endpoint, ws)
    for _ in range(draw(mutation_counts)):
        path = draw(FIELD_CHOICES[endpoint])
        target = body
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        operation = draw(operations)
        if operation == "drop":
            target.pop(path[-1], None)
        elif operation == "null":
            target[path[-1]] = None
        elif operation == "huge":
            target[path[-1]] = draw(huge_strings)
        elif operation == "deep":
            target[path[-1]] = DEEP
        elif operation == "list":
            target[path[-1]] = draw(json_lists)
        else:
            target[path[-1]] = draw(json_values)
    return encode(draw, body)


def encode(draw, body: Any) -> bytes:
    ascii_only = draw(st.booleans())
    text = json.dumps(body, ensure_ascii=ascii_only, separators=draw(separators))
    placeholder = json.dumps(DEEP, ensure_ascii=ascii_only)
    if placeholder in text:
        depth = draw(depths)
        opener, closer = draw(nestings)
        nested = opener * depth + ("1" if opener != "[" else "") + closer * depth
        text = text.replace(placeholder, nested)
    # A lone surrogate is a \u escape with ensure_ascii, else "surrogatepass" sends the invalid
    # UTF-8 bytes it becomes.
    return text.encode("utf-8", "surrogatepass")


def raw_body(draw, endpoint: str, ws: str) -> bytes:
    """Bytes that are not a valid request: garbage, bad UTF-8, non-objects, truncated JSON."""
    kind = draw(raw_kinds)
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "utf8":
        return b'{"fingerprint": "\xff\xfe", "tiny_fingerprints": ["\xc3\x28"], "x": "\xed\xa0\x80"}'
    if kind == "non-object":
        return encode(draw, draw(non_objects))
    if kind == "truncated":
        whole = encode(draw, valid_body(draw, endpoint, ws))
        return whole[:int((len(whole) - 1) * draw(fractions))]
    if kind == "bom":
        return b"\xef\xbb\xbf" + encode(draw, valid_body(draw, endpoint, ws))
    if kind == "nan":
        return b'{"fingerprint": NaN, "result": Infinity, "file_count": -Infinity, "tiny_fingerprints": NaN}'
    return draw(blanks)


class Request:
    """One generated request. Not a dataclass: Hypothesis would print every byte of a 1 MiB body."""

    def __init__(self, endpoint: str, method: str, ws: bytes, token: Optional[str], kind: str, body: bytes,
                 chunk: Optional[int], content_type: Optional[str]) -> None:
        self.endpoint, self.method, self.ws, self.token = endpoint, method, ws, token
        self.kind = kind  # valid | mutated | raw | oversized
        self.body, self.chunk, self.content_type = body, chunk, content_type

    def __repr__(self) -> str:  # short enough for a falsifying example
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"...(%d bytes)" % len(self.body)
        return (f"Request({self.method} {self.path()} token={self.token!r:.40} kind={self.kind} "
                f"chunk={self.chunk} content_type={self.content_type!r} body={body!r})")

    def path(self) -> str:
        return ENDPOINTS[self.endpoint][0].format(ws=quote_from_bytes(self.ws, safe=""))


@st.composite
def requests(draw) -> Request:
    endpoint = draw(endpoints)
    if draw(st.integers(0, 9)) < 7:  # mostly a token that covers the workspace: bodies get parsed
        ws_text, token = draw(authorised)
        ws = ws_text.encode()
    else:
        ws, token = draw(any_ws), draw(any_token)
    decoded = ws.decode("utf-8", "replace")
    text_ws = decoded if rules.WORKSPACE_ID_RE.fullmatch(decoded) else "ws-a"
    kind = draw(kinds)
    if kind == "valid":
        body = encode(draw, valid_body(draw, endpoint, text_ws))
    elif kind == "mutated":
        body = mutated_body(draw, endpoint, text_ws)
    elif kind == "raw":
        body = raw_body(draw, endpoint, text_ws)
    else:
        whole = encode(draw, valid_body(draw, endpoint, text_ws))
        body = whole[:-1] + b" " * (MAX_BODY - len(whole) + draw(paddings)) + whole[-1:]
    chunk = draw(chunks)
    if chunk is not None and len(body) // chunk > 2000:
        chunk = len(body) // 2000 + 1  # keep the chunk count sane
    return Request(endpoint, draw(methods), ws, token, kind, body, chunk, draw(content_types))


batches = st.lists(requests(), min_size=1, max_size=10)


# ---------------------------------------------------------------------------- the model

@dataclasses.dataclass
class Model:
    """What the database must hold: records by (workspace, fingerprint), groups by id."""

    records: Dict[Tuple[str, str], Tuple[str, Optional[str]]] = dataclasses.field(default_factory=dict)
    groups: Dict[Tuple[str, str], Tuple[int, int]] = dataclasses.field(default_factory=dict)
    events: collections.Counter = dataclasses.field(default_factory=collections.Counter)


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def gate(request: Request) -> Optional[Set[int]]:
    """The statuses decided before the body is parsed (or None: the body decides)."""
    if request.ws == b"":
        # No route matches .../workspaces//...: the envelope 404, or 400 when Tornado's own
        # form parsing (done for handlers that do not stream) refuses a form body first.
        form = (request.content_type or "").startswith(FORM_TYPES)
        return {404, 400} if form else {404}
    if request.method != "POST":
        return {405}
    try:
        ws = request.ws.decode("utf-8")
    except UnicodeDecodeError:
        return {400}  # Tornado cannot decode the path argument
    if not request.chunk and len(request.body) > MAX_BODY:
        return {413}
    allowed = TOKENS.get(request.token or "")
    if allowed is None:
        return {401}
    if "*" not in allowed and ws not in allowed:
        return {403}
    if not rules.WORKSPACE_ID_RE.fullmatch(ws):
        return {400}
    if len(request.body) > MAX_BODY:
        return {413}  # a chunked body has no declared length: refused once read, after the token
    return None


def tiny_of(body: Dict[str, Any]) -> Optional[str]:
    ext = body.get("ext") if isinstance(body.get("ext"), dict) else {}
    return ext["tinny_fingerprint"] if "tinny_fingerprint" in ext else ext.get("tiny_fingerprint")


def check_answer(request: Request, answer: Answer, model: Model, validators: Dict[Tuple[str, int], Any]) -> None:
    where = f"{request!r} answered {answer.status} {answer.headers} {answer.body[:300]!r}"
    assert answer.status < 500, where
    assert answer.headers.get("content-type", "").startswith("application/json"), f"not the envelope: {where}"
    envelope = json.loads(answer.body.decode("utf-8"))
    assert isinstance(envelope, dict) and set(envelope) == {"code", "message", "data"}, f"not the envelope: {where}"
    code, message, data = envelope["code"], envelope["message"], envelope["data"]
    assert type(code) is int and isinstance(message, str) and isinstance(data, dict), where

    decided = gate(request)
    if decided is not None:
        assert answer.status in decided, where
    elif request.kind == "valid":
        assert answer.status == 200, where
    elif request.kind == "oversized":
        assert answer.status == 413, where
    else:
        assert answer.status in (200, 400), where
    if answer.status != 200:
        assert code == answer.status and data == {} and message, where
        if request.ws == b"" or request.method != "POST":
            return  # not an operation of the spec
    spec_path = ENDPOINTS[request.endpoint][1]
    if (spec_path, answer.status) not in validators:
        validators[(spec_path, answer.status)] = SPEC.response_validator(spec_path, answer.status)
    errors = [e.message for e in validators[(spec_path, answer.status)].iter_errors(envelope)]
    assert not errors, f"{where}: not as doc/openapi.yaml says: {errors}"
    if answer.status == 200:
        update_model(request, request.ws.decode("utf-8"), envelope, model, where)


def update_model(request: Request, ws: str, envelope: Dict[str, Any], model: Model, where: str) -> None:
    """Check a 200 against the model and apply what it changed."""
    body = json.loads(request.body.decode("utf-8")) if request.body.strip() else {}
    code, data = envelope["code"], envelope["data"]
    if request.endpoint == "fast":
        fingerprint = body["fingerprint"]
        record = model.records.get((ws, fingerprint))
        known = record is not None and present(record[0])
        if record is not None and not known:
            del model.records[(ws, fingerprint)]  # stale: its object is gone
            model.events["stale record removed"] += 1
        model.events["fast-upload known" if known else "fast-upload unknown"] += 1
        assert code == (0 if known else -1), where
        if not known:
            assert envelope["message"] == f"{fingerprint} don't exist.", where
    elif request.endpoint == "tiny":
        wanted = list(dict.fromkeys(body["tiny_fingerprints"]))
        hits = {key: rec for key, rec in model.records.items() if key[0] == ws and rec[1] in wanted}
        found = {rec[1] for rec in hits.values() if present(rec[0])}
        for key, rec in hits.items():
            if not present(rec[0]):
                del model.records[key]
                model.events["stale record removed"] += 1
        model.events["tiny-fingerprints found some" if found else "tiny-fingerprints found none"] += 1
        assert data["tiny_fingerprints"] == [t for t in wanted if t in found], where
    elif request.endpoint == "callback":
        key = body["object_key"]
        assert data == {"object_key": key}, where
        assert key.startswith(f"media/{ws}/"), where  # never a key outside the workspace
        if (body.get("result") or 0) == 0:
            assert code == 0, where
            # One object key, one record: a callback for a key another fingerprint held
            # supersedes that record (the object's bytes were overwritten).
            for other in [k for k, rec in model.records.items()
                          if k[0] == ws and rec[0] == key and k[1] != body["fingerprint"]]:
                del model.records[other]
                model.events["upload superseded another record"] += 1
            model.records[(ws, body["fingerprint"])] = (key, tiny_of(body))
            model.events["upload recorded"] += 1
        else:
            assert code == -1, where
            model.events["failed upload acknowledged"] += 1
    elif request.endpoint == "group":
        assert code == 0 and body["file_uploaded_count"] <= body["file_count"], where
        model.groups[(ws, body["file_group_id"])] = (body["file_count"], body["file_uploaded_count"])
        model.events["group recorded"] += 1
    else:
        assert data["object_key_prefix"] == f"media/{ws}", where
        assert type(data["credentials"]["expire"]) is int and data["credentials"]["expire"] > 0, where


SPEC = Spec(load_spec())


# ----------------------------------------------------------------------------- the test

@pytest.fixture
def quiet_logs():
    """Thousands of 4xx lines are noise; errors (tracebacks of a 500) still show."""
    loggers = [logging.getLogger(name) for name in ("tornado.access", "tornado.general", "dji_media")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def test_hostile_requests_get_envelopes_and_leave_only_valid_records(tmp_path, quiet_logs):
    database = tmp_path / "fuzz.sqlite3"
    server = LiveServer(f"sqlite:///{database}")
    threads_before = set(threading.enumerate())
    model = Model()
    validators: Dict[Tuple[str, int], Any] = {}
    stats: collections.Counter = collections.Counter()
    started = time.monotonic()
    server.start()
    try:
        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much, HealthCheck.large_base_example])
        @given(batch=batches)
        def fuzz(batch: List[Request]) -> None:
            for request in batch:
                headers = [("Content-Type", request.content_type)] if request.content_type else []
                if request.token is not None:
                    headers.append(("X-Auth-Token", request.token))
                answer = send(server.port, request.method, request.path(), headers, request.body,
                              chunk=request.chunk, expect=len(request.body) > EXPECT_ABOVE)
                stats[(request.endpoint, answer.status)] += 1
                check_answer(request, answer, model, validators)

        fuzz()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    assert set(threading.enumerate()) <= threads_before, "a server or database thread was left running"

    # The database holds exactly what valid callbacks stored, minus what was found stale.
    with sqlite3.connect(str(database)) as db:
        records = {(ws, fp): (key, tiny) for ws, fp, key, tiny in db.execute(
            "SELECT workspace_id, fingerprint, object_key, tiny_fingerprint FROM dji_media_file")}
        groups = {(ws, gid): (count, uploaded) for ws, gid, count, uploaded in db.execute(
            "SELECT workspace_id, file_group_id, file_count, file_uploaded_count FROM dji_file_group")}
    db.close()
    assert records == model.records
    assert groups == model.groups
    assert all(key.startswith(f"media/{ws}/") for (ws, _), (key, _) in records.items())

    total = sum(stats.values())
    print(f"\nfuzz: {total} requests in {elapsed:.1f} s, {len(records)} records, {len(groups)} groups; "
          + ", ".join(f"{e} {s}: {n}" for (e, s), n in sorted(stats.items())))
    print("model: " + ", ".join(f"{event}: {n}" for event, n in sorted(model.events.items())))
    assert total >= 3000, "too few requests to call this fuzzing"
    assert {status for _, status in stats} >= {200, 400, 401, 403, 404, 405, 413}
    # Each branch of the model was taken, so the comparisons above are not vacuous.
    assert all(model.events[event] for event in (
        "fast-upload known", "fast-upload unknown", "tiny-fingerprints found some", "stale record removed",
        "upload recorded", "failed upload acknowledged", "group recorded")), model.events


@pytest.fixture(autouse=True)
def _no_hypothesis_files(monkeypatch, tmp_path):
    # No example database here (derandomize), but Hypothesis caches character tables and
    # source constants under ./.hypothesis by default; keep the work tree clean.
    monkeypatch.setenv("HYPOTHESIS_STORAGE_DIRECTORY", str(tmp_path / "hypothesis"))
