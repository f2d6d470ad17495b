"""The MQTT transport: DJI Docks talk to the service through a broker.

``MqttTransport`` is one client of the broker the docks use. It subscribes (QoS 1, on a
persistent session) to the docks' requests, events and status topics, hands the few methods
that concern media to the service, and answers on the ``_reply`` topics. Everything about the
wire (topics, envelopes, spellings) is in ``dji_media.mqtt.wire``; every rule is the service's.
doc/mqtt.md describes the behaviour for operators.

It is a ``dji_media.runtime.Transport``: ``start()`` connects and subscribes (``StartupError``
when the broker cannot be reached or refuses), then a supervisor task keeps the connection,
reconnecting with exponential backoff and jitter for as long as the process runs; ``stop(grace)``
stops taking messages, lets the handlers in flight finish within ``grace`` and disconnects.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import socket
import ssl
import time
import urllib.parse
import uuid
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Protocol, Set, Tuple

try:
    import aiomqtt
except ImportError as exc:  # an optional dependency: say which extra brings it
    raise ImportError("the MQTT transport needs aiomqtt: pip install 'dji-media[mqtt]'") from exc
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..devices import DeviceDirectory, check_gateway_sn
from ..dock_priority import DEFAULT_COMMAND_TIMEOUT, DockCommands
from ..docks import DockUpload
from ..errors import BadRequest, DockTimeout, StartupError, Unavailable
from ..runtime import Transport
from ..service import CallbackOutcome
from ..values import StorageGrant
from . import wire

__all__ = ["MqttTransport", "DockService", "DEFAULT_MAX_PAYLOAD_BYTES"]

log = logging.getLogger("dji_media.mqtt")

# A file_upload_callback is about 1 KB; 64 KiB leaves room for any method we handle and still
# refuses a message nobody should have to parse.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
# The topology of this many docks is kept at most: the memory an unknown publisher can make us
# spend stays bounded.
MAX_KNOWN_DOCKS = 100_000
# A connection that lasted this long was healthy: the next loss starts the backoff again.
STABLE_CONNECTION_SECONDS = 60.0
# How long disconnecting may take once the handlers are done.
DISCONNECT_SECONDS = 5.0

SERVICES_REPLY_SUBSCRIPTION = "thing/product/+/services_reply"
_SERVICES_REPLY = re.compile(r"thing/product/[A-Za-z0-9]{1,128}/services_reply")
_SHARED_GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DockService(Protocol):
    """What the transport needs from the service (``MediaService`` has it). An optional
    ``async record_mission_expectation(workspace_id, flight_id, expected_file_count)`` is called
    when present."""

    async def issue_credentials(self, workspace_id: str) -> Tuple[StorageGrant, int]: ...

    async def record_dock_upload(self, workspace_id: str, report: DockUpload) -> CallbackOutcome: ...


class _Throttle:
    """At most one warning per key per period: a dock that repeats a bad message every second
    must not fill the log. Counts what it held back, so the next warning can say so."""

    MAX_KEYS = 10_000

    def __init__(self, period: float, clock: Callable[[], float]) -> None:
        self.period = period
        self.clock = clock
        self._seen: Dict[Tuple[str, str], Tuple[float, int]] = {}

    def allow(self, key: Tuple[str, str]) -> Optional[int]:
        """None: stay quiet. A number: log now; that many were held back since the last time."""
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.period:
            self._seen[key] = (entry[0], entry[1] + 1)
            return None
        if entry is None and len(self._seen) >= self.MAX_KEYS:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.period}
            if len(self._seen) >= self.MAX_KEYS:
                self._seen.clear()
        self._seen[key] = (now, 0)
        return entry[1] if entry is not None else 0


class MqttTransport(Transport, DockCommands):
    """Serves DJI Docks over MQTT, and sends them commands (``call_service``). Keyword
    arguments, checked when built (``ValueError``):

    :param service: the ``MediaService`` (anything with ``DockService``'s methods).
    :param directory: answers which workspace a dock belongs to; a dock it does not know gets
        no answer at all. Closed when the transport stops.
    :param broker_url: ``mqtt://host:1883`` or ``mqtts://host:8883`` (TLS); nothing else in it
        (credentials go in ``username``/``password``).
    :param client_id: the MQTT client identifier. The broker keeps the session (subscriptions,
        messages queued while we are away) under it, so it must stay the same across restarts
        and differ between processes: two clients with one id take the session from each other.
    :param tls_ca_file: the CA bundle that signed the broker's certificate (default: the system's).
    :param tls_verify: check the broker's certificate and host name (on by default; turning it
        off lets anyone between us and the broker read the credentials we hand out).
    :param tls_cert_file, tls_key_file: a client certificate, for brokers that require one.
    :param protocol: ``"5"`` (MQTT 5, the default) or ``"3.1.1"``.
    :param qos: of the subscriptions and of the replies (1: at least once).
    :param shared_group: None, or a name: subscribe as ``$share/<name>/...``, so that the
        broker hands each message to one of the processes sharing the name.
    :param max_payload_bytes: larger messages are dropped unparsed.
    :param reply_status: answer ``update_topo`` on ``status_reply`` (off by default: device
        on-line status belongs to the host application, which answers it itself).
    :param session_expiry_seconds: MQTT 5: how long the broker keeps the session, and queues
        messages for it, while we are disconnected (a restart, a deployment).
    :param max_concurrency: messages handled at once; the next ones wait.
    :param reconnect_first_delay, reconnect_max_delay: the backoff between reconnection
        attempts, doubling from the first to the maximum, each delay drawn between half and all
        of it (jitter: a fleet of servers does not come back in step).
    :param log_period: seconds between two warnings about the same dock and the same problem
        (an unknown dock, malformed messages).
    :param connect_timeout: seconds one connection attempt, a subscription or a publication
        may take.
    :param command_qos: of the commands sent on ``services`` (0, as DJI's demo: a lost command
        is sent again by the retry, with a new tid).
    :param command_retries: how many more times a command is sent when the dock did not answer
        within the timeout.
    """

    name = "mqtt"

    def __init__(
        self,
        service: DockService,
        directory: DeviceDirectory,
        *,
        broker_url: str,
        client_id: str,
        username: Optional[str] = None,
        password: Optional[str] = None,
        tls_ca_file: Optional[str] = None,
        tls_verify: bool = True,
        tls_cert_file: Optional[str] = None,
        tls_key_file: Optional[str] = None,
        protocol: str = "5",
        qos: int = 1,
        shared_group: Optional[str] = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        reply_status: bool = False,
        session_expiry_seconds: int = 3600,
        max_concurrency: int = 32,
        keepalive: int = 60,
        reconnect_first_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        log_period: float = 600.0,
        connect_timeout: float = 10.0,
        command_qos: int = 0,
        command_retries: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.directory = directory
        self.host, self.port, tls = _parse_broker_url(broker_url)
        self.broker_url = broker_url
        if not isinstance(client_id, str) or not client_id or len(client_id) > 256 or _CONTROL.search(client_id):
            raise ValueError("client_id must be 1 to 256 characters without control characters")
        self.client_id = client_id
        if password is not None and username is None:
            raise ValueError("password needs a username")
        self.username = username
        self._password = password
        if protocol not in ("5", "3.1.1"):
            raise ValueError("protocol must be '5' or '3.1.1'")
        self.protocol = protocol
        if qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        self.qos = qos
        if shared_group is not None and not _SHARED_GROUP.fullmatch(shared_group):
            raise ValueError("shared_group must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")
        self.shared_group = shared_group
        prefix = f"$share/{shared_group}/" if shared_group else ""
        self.topics: Tuple[str, ...] = tuple(prefix + topic for topic in wire.SUBSCRIPTIONS)
        # Never shared: the answer to a command must reach the process that sent it and waits.
        self.reply_topics: Tuple[str, ...] = (SERVICES_REPLY_SUBSCRIPTION,)
        if command_qos not in (0, 1, 2):
            raise ValueError("command_qos must be 0, 1 or 2")
        self.command_qos = command_qos
        if command_retries < 0:
            raise ValueError("command_retries must be >= 0")
        self.command_retries = command_retries
        # (gateway_sn, tid, bid) of each command sent and not answered yet -> its answer.
        self._waiting: Dict[Tuple[str, str, str], asyncio.Future] = {}
        if max_payload_bytes < 1:
            raise ValueError("max_payload_bytes must be >= 1")
        self.max_payload_bytes = max_payload_bytes
        self.reply_status = reply_status
        if not 0 <= session_expiry_seconds <= 0xFFFFFFFF:
            raise ValueError("session_expiry_seconds must be between 0 and 4294967295")
        self.session_expiry_seconds = session_expiry_seconds
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.max_concurrency = max_concurrency
        if keepalive < 1:
            raise ValueError("keepalive must be >= 1")
        self.keepalive = keepalive
        if not 0 < reconnect_first_delay <= reconnect_max_delay:
            raise ValueError("need 0 < reconnect_first_delay <= reconnect_max_delay")
        self.reconnect_first_delay = reconnect_first_delay
        self.reconnect_max_delay = reconnect_max_delay
        if log_period < 0:
            raise ValueError("log_period must be >= 0")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")
        self.connect_timeout = connect_timeout
        self.clock = clock
        self._tls_context = _tls_context(tls, ca_file=tls_ca_file, verify=tls_verify,
                                         cert_file=tls_cert_file, key_file=tls_key_file)
        self._throttle = _Throttle(log_period, clock)
        self._random = random.Random()
        # What the docks told us, kept in memory: the aircraft in each dock (update_topo), the
        # mission each dock uploads first, and the last mission expectation stored per dock.
        self._aircraft: Dict[str, str] = {}
        self._priority: Dict[str, str] = {}
        self._expected: Dict[str, Tuple[str, str, int]] = {}
        self._counts: collections.Counter = collections.Counter()
        self._client: Optional[aiomqtt.Client] = None
        self._connections = 0
        self._tasks: Set[asyncio.Future] = set()
        # Made in start(), inside the running loop (Python 3.9 binds them to the loop of their birth).
        self._limit: Optional[asyncio.Semaphore] = None
        self._stopping: Optional[asyncio.Event] = None
        self._supervisor: Optional[asyncio.Future] = None
        self._deadline = 0.0
        self._noted_no_expectations = False

    # ------------------------------------------------------------------ what tests and hosts see

    @property
    def connected(self) -> bool:
        """True while a connection to the broker is up and subscribed."""
        return self._client is not None

    @property
    def connections(self) -> int:
        """Connections made so far (the first one, then one per reconnection)."""
        return self._connections

    @property
    def counts(self) -> Dict[str, int]:
        """What happened to the messages received: ``handled.<method>`` (ours, taken up),
        ``replied``, ``ignored`` (a method that is not ours), ``dropped.<reason>`` (not handled,
        never answered: ``bad_topic``, ``oversized``, ``malformed``, ``gateway_mismatch``,
        ``unknown_dock``, ``directory_unavailable``, ``too_many_docks``) and ``failed.<reason>``
        (the use case failed: ``bad_request``, ``unavailable``, ``error``)."""
        return dict(self._counts)

    def aircraft_of(self, gateway_sn: str) -> Optional[str]:
        """The serial number of the aircraft in the dock, as its last ``update_topo`` said."""
        return self._aircraft.get(gateway_sn)

    def priority_flight(self, gateway_sn: str) -> Optional[str]:
        """The mission the dock last said it uploads first (``highest_priority_upload_flighttask_media``)."""
        return self._priority.get(gateway_sn)

    # ------------------------------------------------------------------ Transport

    async def start(self) -> None:
        if self._supervisor is not None:
            raise RuntimeError("an MqttTransport starts once")
        self._limit = asyncio.Semaphore(self.max_concurrency)
        self._stopping = asyncio.Event()
        try:
            client = await self._connect()
        except aiomqtt.MqttError as exc:
            raise StartupError(f"mqtt: cannot connect to {self.broker_url}: {exc}") from None
        log.info("mqtt: connected to %s as %r; subscribed to %s", self.broker_url, self.client_id,
                 ", ".join(self.topics))
        self._supervisor = asyncio.ensure_future(self._supervise(client))

    async def stop(self, grace: float) -> None:
        assert self._stopping is not None and self._supervisor is not None, "stop() before start()"
        self._deadline = asyncio.get_running_loop().time() + grace
        self._stopping.set()
        try:
            done, _ = await asyncio.wait({self._supervisor}, timeout=grace + DISCONNECT_SECONDS + 1)
            if not done:  # cannot happen unless a disconnect hangs past its own timeout
                log.warning("mqtt: the connection did not close in time; abandoning it")
                self._supervisor.cancel()
                await asyncio.gather(self._supervisor, return_exceptions=True)
            elif not self._supervisor.cancelled() and self._supervisor.exception() is not None:
                log.error("mqtt: the connection supervisor failed", exc_info=self._supervisor.exception())
        finally:
            await self.directory.close()

    # ------------------------------------------------------------------ the connection

    def _new_client(self) -> aiomqtt.Client:
        common: Dict[str, Any] = dict(
            hostname=self.host, port=self.port, identifier=self.client_id, username=self.username,
            password=self._password, keepalive=self.keepalive, timeout=self.connect_timeout,
            tls_context=self._tls_context, logger=logging.getLogger("dji_media.mqtt.client"),
            # Replies go out at once. With Nagle's algorithm (paho-mqtt's default) a reply written
            # right after the PUBACK of the message it answers waits until the broker acknowledges
            # that PUBACK, which Linux delays by up to 40 ms: every reply took 40 ms or more.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            # Without an expiry an MQTT 5 session ends with the connection: nothing would be
            # kept for us while the server restarts.
            properties.SessionExpiryInterval = self.session_expiry_seconds
            return aiomqtt.Client(protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                                  properties=properties, **common)
        return aiomqtt.Client(protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, **common)

    async def _connect(self) -> aiomqtt.Client:
        """A new connection, subscribed. A client per connection: aiomqtt's keeps the state of
        its last connection, and a new one starts clean (the session is the broker's)."""
        client = self._new_client()
        # Each handler awaits its reply's PUBACK, so up to max_concurrency replies (and a few
        # commands) are in flight by design; aiomqtt logs a warning per publish above its
        # threshold of 10, which under a normal load of 20 docks was a warning per reply.
        client.pending_calls_threshold = max(client.pending_calls_threshold, 2 * self.max_concurrency)
        await client.__aenter__()
        try:
            # Subscribing again on a session the broker kept is harmless, and needed when the
            # session expired or the broker lost it (no persistence, a restart).
            topics = self.topics + self.reply_topics
            granted = await client.subscribe([(topic, self.qos) for topic in topics])
            refused = [topic for topic, code in zip(topics, granted) if _refused(code)]
            if refused:
                raise aiomqtt.MqttError(f"the broker refused the subscription to {', '.join(refused)}")
        except BaseException:
            await _close(client)
            raise
        self._client = client
        self._connections += 1
        return client

    async def _supervise(self, client: aiomqtt.Client) -> None:
        """Keeps a connection for as long as the transport runs: never gives up, never stops the
        server (an MQTT outage must not take the HTTP side down with it)."""
        assert self._stopping is not None
        failures = 0
        while True:
            began = self.clock()
            try:
                reason = await self._serve(client)
            except Exception as exc:  # a bug here must not end the transport: start over
                log.exception("mqtt: unexpected error in the connection to %s", self.broker_url)
                await _close(client)
                reason = str(exc) or type(exc).__name__
            if reason is None:
                return
            self._client = None
            if self.clock() - began >= STABLE_CONNECTION_SECONDS:
                failures = 0
            lost = self.clock()
            log.warning("mqtt: connection to %s lost (%s); reconnecting", self.broker_url, reason)
            attempts = 0
            while True:
                if await self._sleep_or_stop(self._backoff(failures)):
                    await self._drain()
                    return
                failures += 1
                attempts += 1
                try:
                    client = await self._connect()
                    break
                except Exception as exc:  # any failure is one more attempt; each is only a debug line
                    log.debug("mqtt: reconnection attempt %d failed: %s", attempts, exc)
            log.warning("mqtt: reconnected to %s after %.1f s (%d attempt(s))", self.broker_url,
                        self.clock() - lost, attempts)

    async def _serve(self, client: aiomqtt.Client) -> Optional[str]:
        """Take messages until the connection is lost (returns why) or the transport stops
        (drains the handlers, disconnects, returns None)."""
        assert self._stopping is not None
        receiving = asyncio.ensure_future(self._receive(client))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiving, stopping):
                task.cancel()
            await asyncio.gather(receiving, stopping, return_exceptions=True)
        if not self._stopping.is_set():
            failure = None if receiving.cancelled() else receiving.exception()
            await _close(client)
            if failure is None:
                return "the broker closed it"
            return str(failure) or type(failure).__name__
        # Replies need the connection: the handlers finish first, then it is closed.
        await self._drain()
        self._client = None
        try:
            await asyncio.wait_for(_close(client), DISCONNECT_SECONDS)
        except asyncio.TimeoutError:
            log.warning("mqtt: disconnecting from %s timed out", self.broker_url)
        return None

    async def _receive(self, client: aiomqtt.Client) -> None:
        assert self._limit is not None
        async for message in client.messages:
            if _SERVICES_REPLY.fullmatch(message.topic.value):
                # Handled at once, never queued behind the dock messages: someone waits for it.
                self._services_reply(message.topic.value, message.payload)
                continue
            await self._limit.acquire()  # at most max_concurrency handlers; the rest wait here
            task = asyncio.ensure_future(self._handle(message.topic.value, message.payload))
            self._tasks.add(task)
            task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Future) -> None:
        assert self._limit is not None
        self._tasks.discard(task)
        self._limit.release()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        timeout = max(0.0, self._deadline - asyncio.get_running_loop().time())
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if pending:
            log.warning("mqtt: %d message(s) still being handled after the grace period; abandoned "
                        "(the docks send them again)", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _backoff(self, failures: int) -> float:
        delay = min(self.reconnect_max_delay, self.reconnect_first_delay * 2 ** min(failures, 32))
        return delay * self._random.uniform(0.5, 1.0)

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True when the transport was stopped meanwhile."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
            return True
        except asyncio.TimeoutError:
            return False

    # ------------------------------------------------------------------ one message

    async def _handle(self, topic: str, payload: Any) -> None:
        try:
            await self._dispatch(topic, payload)
        except Exception:  # a bug must cost one message, not the transport
            log.exception("mqtt: unexpected error while handling a message on %r", topic)

    async def _dispatch(self, topic: str, payload: Any) -> None:
        try:
            route = wire.parse_topic(topic)
        except BadRequest as exc:
            self._drop("bad_topic", "", "mqtt: message on %r dropped: %s", topic, exc.message)
            return
        sn = route.gateway_sn
        if not isinstance(payload, (bytes, bytearray)):
            payload = b"" if payload is None else str(payload).encode("utf-8")
        if len(payload) > self.max_payload_bytes:
            self._drop("oversized", sn, "mqtt: message of %d bytes from %s dropped (limit: %d)",
                       len(payload), sn, self.max_payload_bytes)
            return
        try:
            envelope = wire.decode_envelope(bytes(payload))
        except BadRequest as exc:
            self._drop("malformed", sn, "mqtt: malformed message from %s dropped: %s", sn, exc.message)
            return
        if envelope.gateway is not None and envelope.gateway != sn:
            # The topic is what the broker's access control vouches for; the payload is not.
            self._drop("gateway_mismatch", sn, "mqtt: message on %s's topic names gateway %r; dropped",
                       sn, envelope.gateway)
            return
        if envelope.method not in wire.HANDLED_METHODS[route.kind]:
            self._counts["ignored"] += 1  # the host application's business
            return
        self._counts["handled." + envelope.method] += 1
        if envelope.method == wire.UPDATE_TOPO:
            await self._update_topo(route, envelope)
            return
        workspace_id = await self._workspace(route)
        if workspace_id is None:
            return
        handler = self._handlers[envelope.method]
        await handler(self, route, envelope, workspace_id)

    async def _workspace(self, route: wire.Route) -> Optional[str]:
        sn = route.gateway_sn
        try:
            workspace_id = await self.directory.workspace_of(sn)
        except Unavailable as exc:
            self._drop("directory_unavailable", sn, "mqtt: cannot tell the workspace of dock %s (%s); "
                       "not answered, the dock asks again", sn, exc.message)
            return None
        if workspace_id is None:
            self._drop("unknown_dock", sn, "mqtt: dock %s is in no workspace the device directory knows; "
                       "its messages are not answered", sn)
        return workspace_id

    # ------------------------------------------------------------------ the methods

    async def _storage_config_get(self, route: wire.Route, envelope: wire.Envelope, workspace_id: str) -> None:
        try:
            wire.parse_storage_config_get(envelope)
            grant, expire = await self.service.issue_credentials(workspace_id)
        except Exception as exc:
            # Requests are always answered: a dock waiting for a configuration asks again on a
            # failure, and never gets result 0 without credentials.
            self._failed(route, envelope, exc)
            await self._reply(route, envelope, wire.request_result(wire.result_for(exc)))
            return
        await self._reply(route, envelope, wire.request_result(wire.RESULT_SUCCESS, wire.render_grant(grant, expire)))

    async def _file_upload_callback(self, route: wire.Route, envelope: wire.Envelope, workspace_id: str) -> None:
        sn = route.gateway_sn
        try:
            report = wire.parse_file_upload_callback(envelope, gateway_sn=sn, aircraft_sn=self._aircraft.get(sn))
            # The mission's expected count, when the callback carries one, is stored with it.
            outcome = await self.service.record_dock_upload(workspace_id, report)
        except Exception as exc:
            self._failed(route, envelope, exc)
            # No reply unless the event itself is wrong: the dock sends an unanswered event
            # again, which is what should happen while the database is down.
            if isinstance(exc, BadRequest):
                await self._acknowledge(route, envelope, wire.RESULT_BAD_REQUEST)
            return
        log.debug("mqtt: dock %s: %s %r", sn, "recorded" if outcome.recorded else "failed upload, not recorded",
                  report.object_key)
        # Only now: the record is stored.
        await self._acknowledge(route, envelope)

    async def _highest_priority(self, route: wire.Route, envelope: wire.Envelope, workspace_id: str) -> None:
        try:
            flight_id = wire.parse_priority_flight(envelope)
        except BadRequest as exc:
            self._failed(route, envelope, exc)
            await self._acknowledge(route, envelope, wire.RESULT_BAD_REQUEST)
            return
        if self._priority.get(route.gateway_sn) != flight_id:
            log.info("mqtt: dock %s uploads the media of mission %r first", route.gateway_sn, flight_id)
        self._priority[route.gateway_sn] = flight_id
        await self._acknowledge(route, envelope)

    async def _flighttask_progress(self, route: wire.Route, envelope: wire.Envelope, workspace_id: str) -> None:
        progress = wire.parse_flighttask_progress(envelope)
        if progress is not None:
            try:
                await self._record_expectation(workspace_id, route.gateway_sn, *progress)
            except Exception as exc:
                self._failed(route, envelope, exc)
                if isinstance(exc, BadRequest):
                    await self._acknowledge(route, envelope, wire.RESULT_BAD_REQUEST)
                return
        await self._acknowledge(route, envelope)

    _handlers: Dict[str, Callable[[MqttTransport, wire.Route, wire.Envelope, str], Awaitable[None]]] = {
        wire.STORAGE_CONFIG_GET: _storage_config_get,
        wire.FILE_UPLOAD_CALLBACK: _file_upload_callback,
        wire.HIGHEST_PRIORITY: _highest_priority,
        wire.FLIGHTTASK_PROGRESS: _flighttask_progress,
    }

    async def _update_topo(self, route: wire.Route, envelope: wire.Envelope) -> None:
        sn = route.gateway_sn
        try:
            aircraft = wire.parse_update_topo(envelope)
        except BadRequest as exc:
            self._drop("malformed", sn, "mqtt: malformed update_topo from %s dropped: %s", sn, exc.message)
            return
        if aircraft is None:
            self._aircraft.pop(sn, None)
        elif sn in self._aircraft or len(self._aircraft) < MAX_KNOWN_DOCKS:
            self._aircraft[sn] = aircraft
        else:
            self._drop("too_many_docks", "", "mqtt: topology of more than %d docks; %s's not kept",
                       MAX_KNOWN_DOCKS, sn)
        if self.reply_status and await self._workspace(route) is not None:
            await self._reply(route, envelope, wire.event_result())

    async def _record_expectation(self, workspace_id: str, sn: str, flight_id: str, count: int) -> None:
        """How many files the mission should have, stored through the service when it can, and
        only when it changed (progress events repeat it every few seconds)."""
        record = getattr(self.service, "record_mission_expectation", None)
        if record is None:
            if not self._noted_no_expectations:
                self._noted_no_expectations = True
                log.info("mqtt: the service does not record mission expectations; file counts are only logged")
            log.debug("mqtt: dock %s: mission %r expects %d file(s)", sn, flight_id, count)
            return
        key = (workspace_id, flight_id, count)
        if self._expected.get(sn) == key:
            return
        await record(workspace_id, flight_id, count)
        self._expected[sn] = key

    # ------------------------------------------------------------------ commands to a dock

    async def call_service(self, gateway_sn: str, method: str, data: Mapping[str, Any],
                           timeout: float = DEFAULT_COMMAND_TIMEOUT) -> int:
        """Publish ``method`` on the dock's ``services`` topic and wait for the matching
        ``services_reply`` (same tid and bid, on that dock's topic); the dock's ``result``.
        Sent again, with a new tid, ``command_retries`` times when unanswered within
        ``timeout``; then ``DockTimeout``. ``Unavailable`` when not connected."""
        check_gateway_sn(gateway_sn)
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        bid = str(uuid.uuid4())  # one business id for the command, a transaction id per attempt
        loop = asyncio.get_running_loop()
        for attempt in range(self.command_retries + 1):
            client = self._client
            if client is None:
                raise Unavailable("not connected to the MQTT broker; try again")
            tid = str(uuid.uuid4())
            key = (gateway_sn, tid, bid)
            answer: asyncio.Future = loop.create_future()
            self._waiting[key] = answer
            try:
                payload = wire.render_command(tid=tid, bid=bid, method=method, data=data,
                                              timestamp_ms=int(time.time() * 1000))
                try:
                    await client.publish(f"thing/product/{gateway_sn}/services", payload, qos=self.command_qos)
                except aiomqtt.MqttError as exc:
                    log.warning("mqtt: %s to dock %s not sent (%s)", method, gateway_sn, exc)
                    raise Unavailable("the command could not be sent to the MQTT broker; try again") from None
                self._counts["commands.sent"] += 1
                try:
                    result: int = await asyncio.wait_for(asyncio.shield(answer), timeout)
                except asyncio.TimeoutError:
                    log.info("mqtt: dock %s did not answer %s within %g s (attempt %d of %d)", gateway_sn,
                             method, timeout, attempt + 1, self.command_retries + 1)
                    continue
            finally:
                self._waiting.pop(key, None)
            self._counts["commands.answered"] += 1
            return result
        self._counts["commands.timed_out"] += 1
        raise DockTimeout(f"the dock did not answer {method} within {timeout:g} s "
                          f"({self.command_retries + 1} attempt(s))")

    def _services_reply(self, topic: str, payload: Any) -> None:
        """Hand a ``services_reply`` to the command waiting for it; anything else is dropped.
        Matched on the topic's serial number as well: a dock cannot answer for another."""
        sn = topic.split("/")[2]
        if not isinstance(payload, (bytes, bytearray)) or len(payload) > self.max_payload_bytes:
            self._drop("malformed", sn, "mqtt: unreadable services_reply from %s dropped", sn)
            return
        try:
            envelope = wire.decode_envelope(bytes(payload))
            result = wire.parse_services_result(envelope)
        except BadRequest as exc:
            self._drop("malformed", sn, "mqtt: malformed services_reply from %s dropped: %s", sn, exc.message)
            return
        waiter = self._waiting.get((sn, envelope.tid, envelope.bid))
        if waiter is None or waiter.done():
            self._counts["dropped.unexpected_reply"] += 1  # late (after a retry), or not ours
            return
        waiter.set_result(result)

    # ------------------------------------------------------------------ replies and logs

    async def _acknowledge(self, route: wire.Route, envelope: wire.Envelope, result: int = wire.RESULT_SUCCESS) -> None:
        """Answer an event, unless the dock said it needs no answer (``need_reply`` 0)."""
        if envelope.need_reply != 0:
            await self._reply(route, envelope, wire.event_result(result))

    async def _reply(self, route: wire.Route, envelope: wire.Envelope, data: Dict[str, Any]) -> None:
        client = self._client
        if client is None:
            log.warning("mqtt: not connected; the reply to %s from dock %s is lost (the dock asks again)",
                        envelope.method, route.gateway_sn)
            return
        payload = wire.render_reply(envelope, data, timestamp_ms=int(time.time() * 1000))
        try:
            await client.publish(route.reply_topic, payload, qos=self.qos)
        except aiomqtt.MqttError as exc:
            log.warning("mqtt: the reply to %s from dock %s was not sent (%s); the dock asks again",
                        envelope.method, route.gateway_sn, exc)
            return
        self._counts["replied"] += 1

    def _failed(self, route: wire.Route, envelope: wire.Envelope, exc: Exception) -> None:
        """Count and log a use case that failed (the caller answers, or not)."""
        if isinstance(exc, (BadRequest, Unavailable)):
            reason = "bad_request" if isinstance(exc, BadRequest) else "unavailable"
            self._warn("failed." + reason, route.gateway_sn, "mqtt: %s from dock %s failed: %s",
                       envelope.method, route.gateway_sn, exc.message)
        else:  # a bug: every time, with its traceback
            self._counts["failed.error"] += 1
            log.error("mqtt: %s from dock %s failed", envelope.method, route.gateway_sn, exc_info=exc)

    def _drop(self, reason: str, sn: str, message: str, *args: Any) -> None:
        """Count and log a message that is not handled and never answered."""
        self._warn("dropped." + reason, sn, message, *args)

    def _warn(self, counter: str, sn: str, message: str, *args: Any) -> None:
        self._counts[counter] += 1
        held_back = self._throttle.allow((counter, sn))
        if held_back is None:
            return
        if held_back:
            message += " (%d more like it since the last warning)"
            args = (*args, held_back)
        # %r and %s of device-supplied text: the wire checks keep serial numbers to letters and
        # digits; other values are logged with %r so they cannot forge log lines.
        log.warning(message, *args)


def _parse_broker_url(url: str) -> Tuple[str, int, bool]:
    """(host, port, tls) of ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except (ValueError, TypeError):
        raise ValueError(f"broker_url {url!r} is not a URL") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError("broker_url must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError("broker_url names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("broker_url must not carry credentials: use username and password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("broker_url must be only a scheme, a host and a port")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _tls_context(tls: bool, *, ca_file: Optional[str], verify: bool, cert_file: Optional[str],
                 key_file: Optional[str]) -> Optional[ssl.SSLContext]:
    if not tls:
        if ca_file or cert_file or key_file or not verify:
            raise ValueError("TLS options need an mqtts:// broker_url")
        return None
    if key_file and not cert_file:
        raise ValueError("tls_key_file needs tls_cert_file")
    try:
        # Verifies the certificate and the host name unless told otherwise.
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS files cannot be loaded: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _refused(code: Any) -> bool:
    """A SUBACK code of 0x80 or more refuses the subscription (MQTT 3.1.1 and 5)."""
    return int(getattr(code, "value", code)) >= 0x80


async def _close(client: aiomqtt.Client) -> None:
    try:
        await client.__aexit__(None, None, None)
    except Exception as exc:  # already gone: nothing left to release
        log.debug("mqtt: disconnect: %s", exc)
