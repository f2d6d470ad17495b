"""A simulated DJI Dock: plays a dock's media flow against a deployment, through an MQTT broker.

    storage_config_get (module 0)       -> requests_reply with the bucket and temporary keys
    PUT each file with those keys        <object_key_prefix>/DJI_<date>_<n>_<flight_id>/<name>
    file_upload_callback per file        -> events_reply {"result": 0} once the server stored it

The messages are shaped as DJI documents them (doc/protocol.md of the project's maintainers,
section 6; the callback is DJI's example with this flight's values). Like a dock, it sends an
unanswered message again with the same tid and bid after ``timeout`` seconds, ``retries`` times,
then gives up on that step. The files are the Pilot 2 simulator's (``media.generate_mission``),
so the same seed and mission give the same files and object keys.

aiomqtt and minio-py are imported by ``run`` only.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from ..errors import DjiMediaError
from .media import GeneratedFile, Mission

__all__ = ["DockReport", "FileResult", "run", "callback_message", "flight_folder"]

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3
# What a Dock 2 with an M3D reports (DJI's example callback).
DRONE_MODEL_KEY = "0-91-0"
PAYLOAD_MODEL_KEY = "1-81-0"


def _failed(step: str, message: str) -> DjiMediaError:
    """The simulator's failure: the library's base error, its message naming the step."""
    return DjiMediaError(f"{step}: {message}")


@dataclasses.dataclass(frozen=True)
class FileResult:
    name: str
    object_key: str
    attempts: int  # file_upload_callback sends until answered
    result: int


@dataclasses.dataclass(frozen=True)
class DockReport:
    flight_id: str
    files: Tuple[FileResult, ...]


def flight_id_of(mission: Mission) -> str:
    # The mission's group id plays the flight (job) id, as ext.flight_id does for Pilot 2's file_group_id.
    return mission.file_group_id


def flight_folder(mission: Mission) -> str:
    """``DJI_<take-off minute>_<n>_<flight_id>``, as a dock names a mission's folder."""
    return mission.folder[: -len(mission.name)] + flight_id_of(mission)


def callback_message(sn: str, mission: Mission, file: GeneratedFile, key: str, uploaded: int) -> Dict[str, Any]:
    """file_upload_callback, shaped exactly as DJI's documented example."""
    return {
        "tid": str(uuid.uuid4()), "bid": str(uuid.uuid4()), "timestamp": int(time.time() * 1000),
        "gateway": sn, "need_reply": 1, "method": "file_upload_callback",
        "data": {
            "file": {
                "object_key": key,
                "path": flight_folder(mission),
                "name": file.name,
                "cloud_to_cloud_id": "DEFAULT",
                "ext": {"flight_id": flight_id_of(mission), "drone_model_key": DRONE_MODEL_KEY,
                        "payload_model_key": PAYLOAD_MODEL_KEY, "is_original": True},
                "metadata": {
                    "gimbal_yaw_degree": f"{file.gimbal_yaw_degree:.2f}",  # a string, as docks send it
                    "absolute_altitude": file.absolute_altitude,
                    "relative_altitude": file.relative_altitude,
                    # The dock's local time, no zone.
                    "create_time": file.captured_at.strftime("%Y-%m-%d %H:%M:%S"),
                    "shoot_position": {"lat": file.lat, "lng": file.lng},
                },
            },
            "flight_task": {"uploaded_file_count": uploaded, "expected_file_count": len(mission.files),
                            "flight_type": 0},
        },
    }


class _Dock:
    def __init__(self, client: Any, sn: str, timeout: float, retries: int) -> None:
        self.client = client
        self.sn = sn
        self.timeout = timeout
        self.retries = retries
        self.waiting: Dict[str, "asyncio.Future[Dict[str, Any]]"] = {}
        self.bids: Dict[str, str] = {}

    async def receive(self) -> None:
        async for message in self.client.messages:
            try:
                reply = json.loads(bytes(message.payload).decode("utf-8"))
            except (ValueError, TypeError):
                continue
            tid = reply.get("tid") if isinstance(reply, dict) else None
            waiter = self.waiting.get(tid) if isinstance(tid, str) else None
            if waiter is not None and not waiter.done() and reply.get("bid") == self.bids.get(str(tid)):
                waiter.set_result(reply)

    async def ask(self, step: str, kind: str, message: Dict[str, Any]) -> Tuple[Dict[str, Any], int]:
        """Publish on ``thing/product/<sn>/<kind>`` and wait for the reply with its tid and bid,
        sending the same message again after each timeout; (reply, attempts)."""
        tid = message["tid"]
        self.bids[tid] = message["bid"]
        waiter: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()
        self.waiting[tid] = waiter
        payload = json.dumps(message)
        try:
            for attempt in range(1, self.retries + 2):
                await self.client.publish(f"thing/product/{self.sn}/{kind}", payload, qos=1)
                try:
                    return await asyncio.wait_for(asyncio.shield(waiter), self.timeout), attempt
                except asyncio.TimeoutError:
                    continue
        finally:
            self.waiting.pop(tid, None)
            self.bids.pop(tid, None)
        raise _failed(step, f"no {kind}_reply within {self.timeout:g} s, {self.retries + 1} attempt(s): "
                             "is the dock in the server's device directory, and is the server connected to "
                             "the broker?")


def _client_options(broker_url: str, username: Optional[str], password: Optional[str],
                    tls_ca_file: Optional[str]) -> Dict[str, Any]:
    parts = urlsplit(broker_url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise _failed("broker", f"{broker_url!r} is not mqtt://host:port or mqtts://host:port")
    tls = parts.scheme == "mqtts"
    return dict(hostname=parts.hostname, port=parts.port or (8883 if tls else 1883), username=username,
                password=password, tls_context=ssl.create_default_context(cafile=tls_ca_file) if tls else None)


async def _run(mission: Mission, *, broker_url: str, sn: str, timeout: float, retries: int,
               username: Optional[str], password: Optional[str], tls_ca_file: Optional[str],
               progress: Callable[[str], None]) -> DockReport:
    import aiomqtt

    from . import pilot2

    options = _client_options(broker_url, username, password, tls_ca_file)
    try:
        client = aiomqtt.Client(identifier=f"simulated-dock-{sn}-{uuid.uuid4().hex[:8]}", timeout=10, **options)
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise _failed("broker", f"cannot connect to {broker_url}: {exc}") from None
    dock = _Dock(client, sn, timeout, retries)
    receiving = None
    try:
        await client.subscribe([(f"thing/product/{sn}/requests_reply", 1), (f"thing/product/{sn}/events_reply", 1)])
        receiving = asyncio.ensure_future(dock.receive())
        # Which aircraft sits in the dock: the server names it in the records.
        await client.publish(f"sys/product/{sn}/status", json.dumps({
            "tid": str(uuid.uuid4()), "bid": str(uuid.uuid4()), "timestamp": int(time.time() * 1000),
            "gateway": sn, "method": "update_topo",
            "data": {"type": 3, "sub_type": 0, "device_secret": "", "nonce": "", "version": 1,
                     "sub_devices": [{"sn": mission.sn, "type": 91, "sub_type": 0, "index": "A",
                                      "device_secret": "", "nonce": "", "version": 1}]}}), qos=1)
        reply, _ = await dock.ask("storage_config_get", "requests", {
            "tid": str(uuid.uuid4()), "bid": str(uuid.uuid4()), "timestamp": int(time.time() * 1000),
            "gateway": sn, "method": "storage_config_get", "data": {"module": 0}})
        data = reply.get("data") or {}
        if data.get("result") != 0 or not isinstance(data.get("output"), dict):
            raise _failed("storage_config_get", f"answered result {data.get('result')!r} without a "
                                 "storage configuration")
        try:
            grant = pilot2._grant(data["output"])
        except DjiMediaError as exc:
            raise _failed("storage_config_get", exc.message.replace("sts", "the reply")) from None
        progress(f"storage_config_get: bucket {grant.bucket!r} at {grant.endpoint}, prefix {grant.prefix!r}")
        results: List[FileResult] = []
        folder = flight_folder(mission)
        for number, file in enumerate(mission.files, 1):
            key = f"{grant.prefix.rstrip('/')}/{folder}/{file.name}"
            try:
                await asyncio.get_running_loop().run_in_executor(None, pilot2._put, grant, key, file)
            except DjiMediaError as exc:
                raise _failed(f"PUT {file.name}", exc.message) from None
            answer, attempts = await dock.ask(f"file_upload_callback {file.name}", "events",
                                              callback_message(sn, mission, file, key, number))
            result = (answer.get("data") or {}).get("result")
            if result != 0:
                raise _failed(f"file_upload_callback {file.name}", f"answered result {result!r}")
            results.append(FileResult(name=file.name, object_key=key, attempts=attempts, result=result))
            progress(f"{file.name}: uploaded ({len(file.data)} bytes), recorded"
                     + (f" after {attempts} attempts" if attempts > 1 else ""))
        return DockReport(flight_id=flight_id_of(mission), files=tuple(results))
    finally:
        if receiving is not None:
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
        try:
            await client.__aexit__(None, None, None)
        except Exception:  # noqa: BLE001 - the connection is already gone: nothing to release
            pass


def run(mission: Mission, *, broker_url: str, sn: str, timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES, username: Optional[str] = None, password: Optional[str] = None,
        tls_ca_file: Optional[str] = None, progress: Callable[[str], None] = lambda line: None) -> DockReport:
    """Play the dock once; ``DjiMediaError`` whose message starts with the step that failed."""
    return asyncio.run(_run(mission, broker_url=broker_url, sn=sn, timeout=timeout, retries=retries,
                            username=username, password=password, tls_ca_file=tls_ca_file, progress=progress))
