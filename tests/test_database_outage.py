"""A PostgreSQL server that goes away is a real fault answered well (issue "Lose nothing").

The machine's PostgreSQL is shared with other tests, so it is not stopped. Instead the store
reaches it through ``Forwarder``, a TCP forwarder of this module: ``stop()`` closes its listening
socket and cuts every live connection (the store's side with a reset), so for the store the
server has gone away (its pooled connections are dead, new connections are refused); ``start()``
listens again on the same port, so the server is back. The URL comes from
``DJI_MEDIA_TEST_POSTGRES_URL`` (the test skips when it is unset, as tests/test_databases.py
does), with the forwarder's address in place of the server's.

Over HTTP, with the store neither rebuilt nor restarted:

1. During the outage upload-callback, group-upload-callback, fast-upload and tiny-fingerprints
   answer 503 with the envelope and "the media database is unavailable" within ``BOUND``
   seconds; sts and /healthz (which need no database) answer normally; /readyz answers 503 and
   names the database. A separate connection to the server shows nothing refused was written,
   and every record acknowledged before the outage is unchanged.
2. Once the forwarder listens again, the next requests succeed (not one 503), records
   acknowledged before and after the outage are all there, each as acknowledged.
3. A restart nobody saw (stop, start, no request in between) leaves every pooled connection
   dead; peewee's pool tests a connection before handing it out, so no request gets a 503.

Figures measured on the development machine (``-s`` prints them), six runs, each ~2 s:

    outage (forwarder stopped: the store's 4 pooled connections reset, its port refuses):
        every answer comes at once, the pool's 10 s connect and wait timeouts never come into
        play (a refused or reset connection fails immediately): upload-callback 503 in
        0.002-0.021 s (the slowest in a burst of 8 at once), group-upload-callback 0.002-0.013 s,
        fast-upload 0.002-0.008 s, tiny-fingerprints 0.002-0.005 s, /readyz 503 0.002-0.005 s,
        the first request (which also discards the dead pooled connections) 0.003-0.013 s
    records before / during / after: 8 / 8 / 25 (17 acknowledged after the outage, 3 of them
        refused during it and sent again); groups 2 / 2 (unchanged) / 3
    recovery: the first request after start() acknowledged 0.010-0.048 s after it; 0 of 19
        writes refused, fast-upload and /readyz 200 at once
    unseen restart (4 dead connections idle in the pool): 0 of 12 requests refused. peewee's
        pool runs "SELECT 1" on a connection before handing it out; with that check disabled
        (a pool that trusts psycopg2's ``closed`` flag alone) 4 of 12 - one per dead pooled
        connection - are refused, and this test fails.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import socket
import struct
import threading
import time
import uuid
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import tornado.web

from dji_media import NotFoundHandler, PeeweeMediaStore, get_handlers, get_health_handlers

VARIABLE = "DJI_MEDIA_TEST_POSTGRES_URL"
WS = "ws-a"
MEDIA = f"/media/api/v1/workspaces/{WS}"
STS = f"/storage/api/v1/workspaces/{WS}/sts"
UNAVAILABLE = {"code": 503, "message": "the media database is unavailable", "data": {}}
SUCCESS = {"code": 0, "message": "success", "data": {}}
# Every answer during the outage must come within this many seconds. The pool waits at most
# 10 s for a free connection and for a silent server; a refused connection should cost nothing.
BOUND = 15.0
WORKERS = 4  # the store's threads, and so its pooled connections
# Skipped before any fixture runs: a skip from inside the `app` chain would leave the port that
# pytest-tornado has already bound for its server unclosed (a ResourceWarning, so an error).
pytestmark = pytest.mark.skipif(not os.environ.get(VARIABLE),
                                reason=f"postgresql: set {VARIABLE} to a database URL to run these tests")


def report(line: str) -> None:
    print(f"[db outage] {line}")  # shown with -s; the figures in the module docstring come from here


# ----------------------------------------------------------------------------- forwarder

class Forwarder:
    """127.0.0.1:<port> piped both ways to ``upstream``, in one thread.

    ``stop()`` closes the listening socket and every live connection (the client's side with a
    reset, as a crashed server's kernel would send) and joins the thread; ``start()`` listens
    again on the same port.
    """

    LIFETIME = 300.0  # the thread ends by itself after this long, whatever happens

    def __init__(self, upstream: Tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.accepted = 0  # connections accepted, over every start()
        self.cut = 0  # connections cut by stop()
        self.errors: List[BaseException] = []
        self._thread: Optional[threading.Thread] = None
        self._listener: Optional[socket.socket] = None
        self._wake: Tuple[socket.socket, ...] = ()
        self._peers: Dict[socket.socket, socket.socket] = {}
        self._clients: set = set()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        assert self._thread is None, "already running"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, name="pg-forwarder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._wake[1].send(b"x")
        self._thread.join(10)
        assert not self._thread.is_alive(), "the forwarder thread did not end"
        self._thread = None
        # The thread has ended: nothing else touches these sockets now.
        for sock in list(self._peers):
            if sock in self._clients:
                self.cut += 1
                # Linger 0: close() sends a reset, so the client's next read or write fails.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self._peers.clear()
        self._clients.clear()
        self._listener.close()
        self._listener = None
        for sock in self._wake:
            sock.close()
        self._wake = ()

    def _loop(self) -> None:
        deadline = time.monotonic() + self.LIFETIME
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(self._listener, selectors.EVENT_READ)
                selector.register(self._wake[0], selectors.EVENT_READ)
                while time.monotonic() < deadline:
                    for key, _ in selector.select(timeout=1.0):
                        sock = key.fileobj
                        if sock is self._wake[0]:
                            return
                        if sock is self._listener:
                            self._accept(selector)
                        elif sock in self._peers:  # not closed earlier in this round
                            self._pump(selector, sock)
            except Exception as exc:  # noqa: BLE001 - reported by the test, never lost in a thread
                self.errors.append(exc)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:  # the client gave up before it was accepted
            return
        self.accepted += 1
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.settimeout(5)  # a peer that stops reading cannot block the thread for long
            selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client
        self._clients.add(client)

    def _pump(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        for end in (sock, peer):  # one side is gone: so is the connection
            selector.unregister(end)
            self._peers.pop(end, None)
            self._clients.discard(end)
            end.close()


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture
def postgres_url():
    url = os.environ.get(VARIABLE)
    if not url:
        pytest.skip(f"postgresql: set {VARIABLE} to a database URL to run these tests")
    return url


@pytest.fixture
def forwarder(postgres_url):
    parts = urlsplit(postgres_url)
    forwarder = Forwarder((parts.hostname or "127.0.0.1", parts.port or 5432))
    forwarder.start()
    yield forwarder
    forwarder.stop()
    assert forwarder.errors == []


def through(url: str, port: int) -> str:
    """``url`` with the forwarder's address in place of the server's."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def prefix():
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def store(postgres_url, forwarder, prefix, io_loop):
    store = PeeweeMediaStore(url=through(postgres_url, forwarder.port), table_prefix=prefix,
                             max_workers=WORKERS)
    yield store
    io_loop.run_sync(store.close)
    with direct(postgres_url) as cursor:
        names = ", ".join(f'"{prefix}{name}"' for name in ("media_file", "file_group", "schema"))
        cursor.execute(f"DROP TABLE IF EXISTS {names}")


@pytest.fixture
def app(service):
    # The media routes plus the health routes, as `dji-media serve` mounts them.
    return tornado.web.Application(get_handlers(service) + get_health_handlers(service),
                                   default_handler_class=NotFoundHandler)


# ------------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def direct(url: str):
    """A cursor on a connection of the test's own, straight to the server (not forwarded)."""
    with contextlib.closing(psycopg2.connect(url, connect_timeout=5)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            yield cursor


def table(url: str, name: str, key: str) -> Dict[str, tuple]:
    """Every row of a table, whole, by ``key``."""
    with direct(url) as cursor:
        cursor.execute(f'SELECT * FROM "{name}" ORDER BY id')
        columns = [c.name for c in cursor.description]
        return {row[columns.index(key)]: row for row in cursor.fetchall()}


def raw_json(url: str, prefix: str) -> Dict[str, dict]:
    with direct(url) as cursor:
        cursor.execute(f'SELECT fingerprint, raw_json FROM "{prefix}media_file"')
        return {fingerprint: json.loads(raw) for fingerprint, raw in cursor.fetchall()}


def callback_body(fingerprint: str, name: Optional[str] = None) -> dict:
    key = f"media/{WS}/outage/{fingerprint}.JPG"
    return {
        "result": 0, "fingerprint": fingerprint, "name": name or f"{fingerprint}.JPG",
        "path": "outage", "object_key": key, "sub_file_type": 0,
        "ext": {"file_group_id": "g-outage", "drone_model_key": "0-67-0", "payload_model_key": "1-52-0",
                "is_original": True, "tinny_fingerprint": f"tiny-{fingerprint}", "sn": "1AD3CA2VL3LAD6"},
        "metadata": {"gimbal_yaw_degree": "-4.3", "absolute_altitude": -36.889, "relative_altitude": 100.001,
                     "created_time": "2022-08-31T15:16:16+08:00",
                     "shoot_position": {"lat": 22.577666, "lng": 113.943194}},
    }


def group_body(group: str, count: int, uploaded: int) -> dict:
    return {"file_group_id": group, "file_count": count, "file_uploaded_count": uploaded}


def new_fingerprint() -> str:
    return uuid.uuid4().hex.upper()


class Timed:
    """``call`` with the time each answer took."""

    def __init__(self, call) -> None:
        self._call = call
        self.slowest = 0.0

    async def __call__(self, path, body=None, **kwargs):
        started = time.monotonic()
        status, env = await self._call(path, body, **kwargs)
        took = time.monotonic() - started
        self.slowest = max(self.slowest, took)
        return status, env, took


async def acknowledge(timed: Timed, body: dict) -> bool:
    """Send an upload-callback: True when acknowledged, False when refused with the 503."""
    status, env, _ = await timed(f"{MEDIA}/upload-callback", body)
    if (status, env) == (503, UNAVAILABLE):
        return False
    assert (status, env) == (200, {"code": 0, "message": "success", "data": {"object_key": body["object_key"]}})
    return True


# --------------------------------------------------------------------------------- tests

@pytest.mark.gen_test(timeout=60)
async def test_postgres_outage_answers_503_and_recovers_by_itself(call, store, objects, forwarder,
                                                                  postgres_url, prefix):
    timed = Timed(call)
    media, groups = f"{prefix}media_file", f"{prefix}file_group"

    # -- before: acknowledged records, some at once so that the pool holds several connections
    acked: Dict[str, dict] = {}
    bodies = [callback_body(new_fingerprint()) for _ in range(8)]
    for body in bodies[:3]:
        assert await acknowledge(timed, body)
    assert all(await asyncio.gather(*(acknowledge(timed, body) for body in bodies[3:])))
    for body in bodies:
        acked[body["fingerprint"]] = body
        objects.put(body["object_key"])
    for group in ("g1", "g2"):
        status, env, _ = await timed(f"{MEDIA}/group-upload-callback", group_body(group, 5, 2))
        assert (status, env) == (200, SUCCESS)
    known = bodies[0]
    status, env, _ = await timed(f"{MEDIA}/fast-upload", {"fingerprint": known["fingerprint"]})
    assert (status, env) == (200, SUCCESS)
    status, env, _ = await timed("/readyz", method="GET", token=None)
    assert status == 200 and env["data"] == {"database": "ok", "storage": "ok"}, env
    before_rows, before_groups = table(postgres_url, media, "fingerprint"), table(postgres_url, groups, "file_group_id")
    assert set(before_rows) == set(acked) and set(before_groups) == {"g1", "g2"}
    report(f"before: {len(before_rows)} records, {len(before_groups)} groups, {forwarder.accepted} "
           f"connections through the forwarder")

    # -- the outage: the server is gone for the store (connections reset, new ones refused)
    forwarder.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", forwarder.port), timeout=2).close()
    # Every connection the forwarder cuts is one of the store's, idle in its pool (no request is
    # in flight, and the test's own connections go straight to the server).
    report(f"forwarder stopped: {forwarder.cut} live (idle pooled) connections cut, port {forwarder.port} refuses")
    times: Dict[str, List[float]] = {}
    refused: Dict[str, dict] = {}
    first = None
    for round_ in range(3):
        body = callback_body(new_fingerprint())
        status, env, took = await timed(f"{MEDIA}/upload-callback", body)
        assert (status, env) == (503, UNAVAILABLE), (status, env)
        first = took if first is None else first
        times.setdefault("upload-callback", []).append(took)
        refused[body["fingerprint"]] = body
        # A device resending a known file with another name: refused, and the row untouched.
        status, env, took = await timed(f"{MEDIA}/upload-callback",
                                        callback_body(known["fingerprint"], name=f"renamed-{round_}.JPG"))
        assert (status, env) == (503, UNAVAILABLE), (status, env)
        times["upload-callback"].append(took)
        for group in ("g1", f"g-outage-{round_}"):
            status, env, took = await timed(f"{MEDIA}/group-upload-callback", group_body(group, 5, 5))
            assert (status, env) == (503, UNAVAILABLE), (status, env)
            times.setdefault("group-upload-callback", []).append(took)
        status, env, took = await timed(f"{MEDIA}/fast-upload", {"fingerprint": known["fingerprint"]})
        assert (status, env) == (503, UNAVAILABLE), (status, env)
        times.setdefault("fast-upload", []).append(took)
        status, env, took = await timed(f"{MEDIA}/files/tiny-fingerprints",
                                        {"tiny_fingerprints": [known["ext"]["tinny_fingerprint"]]})
        assert (status, env) == (503, UNAVAILABLE), (status, env)
        times.setdefault("tiny-fingerprints", []).append(took)
        status, env, took = await timed("/readyz", method="GET", token=None)
        assert (status, env) == (503, {"code": 503, "message": "not ready: database",
                                       "data": {"database": "unavailable", "storage": "ok"}}), (status, env)
        times.setdefault("readyz", []).append(took)
        # What needs no database goes on working.
        status, env, _ = await timed(STS, {})
        assert (status, env["code"]) == (200, 0), env
        status, env, _ = await timed("/healthz", method="GET", token=None)
        assert status == 200, env
    # Several at once, so that every one of the store's threads meets the outage.
    burst = [callback_body(new_fingerprint()) for _ in range(2 * WORKERS)]
    answers = await asyncio.gather(*(timed(f"{MEDIA}/upload-callback", body) for body in burst))
    assert [(s, e) for s, e, _ in answers] == [(503, UNAVAILABLE)] * len(burst), answers
    times["upload-callback"].extend(took for _, _, took in answers)
    refused.update((body["fingerprint"], body) for body in burst)
    for name, values in times.items():
        report(f"outage: {name} 503 x{len(values)} in {min(values):.3f}-{max(values):.3f} s")
    slowest = max(max(values) for values in times.values())
    report(f"outage: first request {first:.3f} s; slowest answer during the outage {slowest:.3f} s")
    assert slowest < BOUND, times

    # Nothing refused was written, nothing acknowledged was touched.
    during_rows, during_groups = table(postgres_url, media, "fingerprint"), table(postgres_url, groups, "file_group_id")
    assert during_rows == before_rows
    assert during_groups == before_groups
    assert not set(refused) & set(during_rows)
    report(f"during: {len(during_rows)} records, {len(during_groups)} groups (unchanged)")

    # -- the server is back: the same store and app, nothing rebuilt
    forwarder.start()
    recovered = time.monotonic()
    after: Dict[str, dict] = {}
    after_refused: List[str] = []
    seen: List[str] = []  # what each post-outage request got, in order

    def note(what: str, body: dict, ok: bool) -> None:
        seen.append("ok" if ok else "503")
        if ok:
            after[body["fingerprint"]] = body
        else:
            after_refused.append(what)

    for i in range(6):
        body = callback_body(new_fingerprint())
        ok = await acknowledge(timed, body)
        if i == 0:
            report(f"recovery: first request after start() {'acknowledged' if ok else 'refused (503)'} "
                   f"{time.monotonic() - recovered:.3f} s after start()")
        note(f"callback {i}", body, ok)
    burst = [callback_body(new_fingerprint()) for _ in range(2 * WORKERS)]
    for body, ok in zip(burst, await asyncio.gather(*(acknowledge(timed, body) for body in burst))):
        note("concurrent callback", body, ok)
    # Some refused ones, sent again, as a device would.
    for body in list(refused.values())[:3]:
        note("resent callback", body, await acknowledge(timed, body))
    for group in ("g1", "g-outage-0"):
        status, env, _ = await timed(f"{MEDIA}/group-upload-callback", group_body(group, 5, 5))
        seen.append("ok" if status == 200 else str(status))
        if (status, env) != (200, SUCCESS):
            assert (status, env) == (503, UNAVAILABLE), (status, env)
            after_refused.append(f"group {group}")
    report(f"recovery: writes {' '.join(seen)}; refused: {after_refused or 'none'}")

    # Every record acknowledged before the outage is there unchanged, every one after it too.
    after_rows = table(postgres_url, media, "fingerprint")
    after_groups = table(postgres_url, groups, "file_group_id")
    report(f"after: {len(after_rows)} records ({len(before_rows)} before + {len(after)} acknowledged "
           f"since), groups {sorted(after_groups)}")
    assert {fp: after_rows[fp] for fp in before_rows} == before_rows
    assert set(after_rows) == set(acked) | set(after)
    stored = raw_json(postgres_url, prefix)
    assert all(stored[fp] == body for fp, body in {**acked, **after}.items())
    assert not (set(refused) - set(after)) & set(after_rows)  # refused and never resent: absent

    # Reads and readiness work again, for records from before and after the outage.
    for body in (known, *list(after.values())[:2]):
        objects.put(body["object_key"])
        status, env, _ = await timed(f"{MEDIA}/fast-upload", {"fingerprint": body["fingerprint"]})
        seen.append("ok" if status == 200 else str(status))
        if status != 200:
            after_refused.append("fast-upload")
    ready = [(await timed("/readyz", method="GET", token=None))[0] for _ in range(4)]
    report(f"after: fast-upload and /readyz {ready}; slowest answer in the test {timed.slowest:.3f} s")
    assert timed.slowest < BOUND, timed.slowest
    assert after_refused == [] and ready == [200] * 4, (after_refused, ready)
    with direct(postgres_url) as cursor:
        cursor.execute(f'SELECT file_group_id, file_count, file_uploaded_count FROM "{groups}"')
        counts = {g: (c, u) for g, c, u in cursor.fetchall()}
    assert counts == {"g1": (5, 5), "g2": (5, 2), "g-outage-0": (5, 5)}, counts


@pytest.mark.gen_test(timeout=60)
async def test_restart_nobody_saw_costs_no_request(call, store, objects, forwarder, postgres_url, prefix):
    """Stop and start with no request in between: every pooled connection is dead, yet no
    request may be refused, since the server has been there all along for each of them."""
    timed = Timed(call)
    bodies = [callback_body(new_fingerprint()) for _ in range(2 * WORKERS)]
    assert all(await asyncio.gather(*(acknowledge(timed, body) for body in bodies)))
    # Writes share one thread; concurrent lookups run on the others and fill the pool.
    lookups = await asyncio.gather(*(timed(f"{MEDIA}/files/tiny-fingerprints", {"tiny_fingerprints": ["t_1"]})
                                     for _ in range(4 * WORKERS)))
    assert {status for status, _, _ in lookups} == {200}

    forwarder.stop()
    # The store is the forwarder's only client and no request is in flight: each connection cut
    # is one waiting idle in the store's pool, now dead.
    pooled = forwarder.cut
    assert pooled >= 2, pooled  # several connections waited in the pool, all dead now
    forwarder.start()
    report(f"unseen restart: {pooled} idle pooled connections cut")
    seen = []
    for _ in range(4):
        body = callback_body(new_fingerprint())
        seen.append(await acknowledge(timed, body))
        bodies.append(body)
    more = [callback_body(new_fingerprint()) for _ in range(2 * WORKERS)]
    seen.extend(await asyncio.gather(*(acknowledge(timed, body) for body in more)))
    bodies.extend(more)
    report(f"unseen restart: {seen.count(False)} of {len(seen)} requests refused; slowest "
           f"{timed.slowest:.3f} s")
    assert timed.slowest < BOUND
    rows = table(postgres_url, f"{prefix}media_file", "fingerprint")
    acknowledged = {body["fingerprint"] for body, ok in zip(bodies, [True] * (2 * WORKERS) + seen) if ok}
    assert set(rows) == acknowledged
    assert seen == [True] * len(seen), seen
