"""The dock's MQTT wire format, parsed and rendered in this one module.

Topics name the dock (``thing/product/{gateway_sn}/requests``); messages are JSON envelopes
``{"tid", "bid", "timestamp", "method", "data", ("gateway"), ("need_reply")}``; a reply goes to
the topic plus ``_reply`` and repeats ``tid``, ``bid`` and ``method`` with a new timestamp.
Nothing outside the MQTT transport knows these spellings (``create_time``, ``flight_id``,
``flight_task``). As in the HTTP transport's wire module, parsing is strict about what is stored
in a typed column or queried on (type and length, bounds from ``dji_media.rules``, checked here
to name the field as the dock spells it) and lenient about descriptive metadata, which is kept
in the raw JSON when it does not parse. Parse failures raise ``BadRequest``; the transport
decides what that means (dropped, or a non-zero ``result``).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from ..devices import GATEWAY_SN_RE
from ..dji_format import lenient_bool, lenient_float, lenient_str, section, storage_config
from ..docks import DockUpload
from ..errors import BadRequest, Unavailable
from ..json_body import decode_json_object
from ..json_body import integer as _integer
from ..json_body import required_string as _required_string
from ..json_body import string as _string
from ..rules import MAX_INT, MAX_NAME, MAX_OBJECT_KEY, MAX_PATH, MAX_SHORT_ID, MAX_TIME_TEXT
from ..values import StorageGrant

# ------------------------------------------------------------------------------ topics

REQUESTS = "requests"  # thing/product/{sn}/requests: the dock asks, the cloud answers
EVENTS = "events"  # thing/product/{sn}/events: the dock reports; answered when need_reply
STATUS = "status"  # sys/product/{sn}/status: the dock's topology (which aircraft it holds)

# The wildcard subscriptions, one per kind; a shared subscription prefixes each with
# "$share/<group>/".
SUBSCRIPTIONS: Tuple[str, ...] = ("thing/product/+/requests", "thing/product/+/events", "sys/product/+/status")

_TOPIC = re.compile(r"thing/product/(?P<thing_sn>[^/]*)/(?P<kind>requests|events)"
                    r"|sys/product/(?P<sys_sn>[^/]*)/status")

# ------------------------------------------------------------------------------ methods

STORAGE_CONFIG_GET = "storage_config_get"
FILE_UPLOAD_CALLBACK = "file_upload_callback"
HIGHEST_PRIORITY = "highest_priority_upload_flighttask_media"
FLIGHTTASK_PROGRESS = "flighttask_progress"
UPDATE_TOPO = "update_topo"

# Which method is ours on which topic. Every other method there (config, binding, HMS, wayline
# control...) belongs to the host application: never answered, never touched.
HANDLED_METHODS: Mapping[str, Tuple[str, ...]] = {
    REQUESTS: (STORAGE_CONFIG_GET,),
    EVENTS: (FILE_UPLOAD_CALLBACK, HIGHEST_PRIORITY, FLIGHTTASK_PROGRESS),
    STATUS: (UPDATE_TOPO,),
}

# ------------------------------------------------------------------------------ results

RESULT_SUCCESS = 0
# Non-zero results repeat the HTTP transport's codes, so that one number means one thing in the
# logs of both: the message is wrong (400), a dependency could not answer (503), a bug (500).
RESULT_BAD_REQUEST = 400
RESULT_UNAVAILABLE = 503
RESULT_INTERNAL_ERROR = 500

# storage_config_get's module: 0 media, 1 PSDK UI resources (DJI documents both; the same
# credentials serve both).
STORAGE_MODULES = (0, 1)


def result_for(exc: BaseException) -> int:
    """The one table from errors to a reply's ``result`` (for the answers that carry one)."""
    if isinstance(exc, BadRequest):
        return RESULT_BAD_REQUEST
    if isinstance(exc, Unavailable):
        return RESULT_UNAVAILABLE
    return RESULT_INTERNAL_ERROR


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a message came from: ``kind`` (REQUESTS, EVENTS, STATUS) and the dock's serial
    number from the topic, which is authoritative (a payload's ``gateway`` is not)."""

    kind: str
    gateway_sn: str

    @property
    def topic(self) -> str:
        if self.kind == STATUS:
            return f"sys/product/{self.gateway_sn}/status"
        return f"thing/product/{self.gateway_sn}/{self.kind}"

    @property
    def reply_topic(self) -> str:
        return self.topic + "_reply"


def parse_topic(topic: str) -> Route:
    """The route of a topic we subscribe to; ``BadRequest`` for any other topic or for a serial
    number that is not 1 to 128 letters and digits (it would be echoed into the reply topic)."""
    match = _TOPIC.fullmatch(topic)
    if match is None:
        raise BadRequest("not a dock topic this transport handles", field="topic")
    sn = match.group("thing_sn") if match.group("thing_sn") is not None else match.group("sys_sn")
    if not GATEWAY_SN_RE.fullmatch(sn):
        raise BadRequest(f"the serial number in the topic must be 1 to {MAX_SHORT_ID} letters and digits",
                         field="topic")
    return Route(kind=match.group("kind") or STATUS, gateway_sn=sn)


# ------------------------------------------------------------------------------ the envelope

@dataclasses.dataclass(frozen=True)
class Envelope:
    """A decoded message. ``data`` is the method's object (``{}`` when absent); ``need_reply``
    is None when absent or not 0/1; ``raw_json`` is the whole message as received."""

    tid: str
    bid: str
    method: str
    data: Mapping[str, Any]
    timestamp: Optional[int] = None
    gateway: Optional[str] = None
    need_reply: Optional[int] = None
    raw_json: str = "{}"


def decode_envelope(payload: bytes) -> Envelope:
    """Decode and check a message's envelope; ``BadRequest`` naming what is wrong. The size
    limit is the transport's, applied before this is called."""
    obj, raw_json = decode_json_object(payload, noun="message", field="payload")
    data = obj.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise BadRequest("data must be an object", field="data")
    timestamp = obj.get("timestamp")
    need_reply = obj.get("need_reply")
    return Envelope(
        tid=_required_string(obj, "tid", MAX_SHORT_ID, field="tid"),
        bid=_required_string(obj, "bid", MAX_SHORT_ID, field="bid"),
        method=_required_string(obj, "method", MAX_SHORT_ID, field="method"),
        data=data,
        # Informational only: nothing depends on the dock's clock.
        timestamp=timestamp if isinstance(timestamp, int) and not isinstance(timestamp, bool) else None,
        gateway=_string(obj, "gateway", MAX_SHORT_ID, field="gateway"),
        need_reply=need_reply if need_reply in (0, 1) and not isinstance(need_reply, bool) else None,
        raw_json=raw_json,
    )


# ------------------------------------------------------------------------------ parsing helpers

def _lenient_count(value: Any) -> Optional[int]:
    """A count from 0 to MAX_INT, or None: mission counts describe the mission, and one that
    does not parse must not cost the file its record."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        return None
    return value


# ------------------------------------------------------------------------------ the methods

def parse_storage_config_get(envelope: Envelope) -> int:
    """The requested module: 0 (media) or 1 (PSDK UI resources)."""
    module = _integer(envelope.data, "module", field="data.module")
    if module not in STORAGE_MODULES:
        raise BadRequest("data.module must be 0 (media) or 1 (PSDK UI resources)", field="data.module")
    return module


def parse_file_upload_callback(envelope: Envelope, *, gateway_sn: Optional[str] = None,
                               aircraft_sn: Optional[str] = None) -> DockUpload:
    """``data.file`` (object_key, path, name, cloud_to_cloud_id, ext, metadata), the optional
    ``data.flight_task`` counts and the optional ``data.result`` as a ``DockUpload``.

    ``aircraft_sn`` (the aircraft the dock's topology names) becomes the record's ``sn``: the
    callback itself does not say which aircraft took the picture.
    """
    data = envelope.data
    file = data.get("file")
    if not isinstance(file, dict):
        raise BadRequest("data.file is required and must be an object", field="data.file")
    ext = section(file, "ext")
    meta = section(file, "metadata")
    position = section(meta, "shoot_position")
    task = section(data, "flight_task")
    flight_id = _string(ext, "flight_id", MAX_SHORT_ID, field="data.file.ext.flight_id")
    # A missing result is success, as for Pilot 2: the documented callback has none. A
    # present, non-zero one is a failed upload, which the service acknowledges and does not
    # record.
    result = _integer(data, "result", field="data.result") or 0
    return DockUpload(
        result=result,
        object_key=_required_string(file, "object_key", MAX_OBJECT_KEY, field="data.file.object_key"),
        name=_string(file, "name", MAX_NAME, field="data.file.name"),
        path=_string(file, "path", MAX_PATH, field="data.file.path"),
        flight_id=flight_id or None,  # "" names no mission
        drone_model_key=lenient_str(ext.get("drone_model_key"), MAX_SHORT_ID, empty_is_none=True),
        payload_model_key=lenient_str(ext.get("payload_model_key"), MAX_SHORT_ID, empty_is_none=True),
        is_original=lenient_bool(ext.get("is_original")),
        sn=aircraft_sn,
        gateway_sn=gateway_sn,
        gimbal_yaw_degree=lenient_float(meta.get("gimbal_yaw_degree")),
        absolute_altitude=lenient_float(meta.get("absolute_altitude")),
        relative_altitude=lenient_float(meta.get("relative_altitude")),
        # The dock's local time without a zone: kept as sent, never given an invented offset.
        create_time_text=lenient_str(meta.get("create_time"), MAX_TIME_TEXT, empty_is_none=True),
        shoot_lat=lenient_float(position.get("lat")),
        shoot_lng=lenient_float(position.get("lng")),
        cloud_to_cloud_id=lenient_str(file.get("cloud_to_cloud_id"), MAX_SHORT_ID, empty_is_none=True),
        raw_json=envelope.raw_json,
        expected_file_count=_lenient_count(task.get("expected_file_count")),
        uploaded_file_count=_lenient_count(task.get("uploaded_file_count")),
        flight_type=_lenient_count(task.get("flight_type")),
    )


def parse_priority_flight(envelope: Envelope) -> str:
    """``highest_priority_upload_flighttask_media``: the mission the dock uploads first now."""
    return _required_string(envelope.data, "flight_id", MAX_SHORT_ID, field="data.flight_id")


def parse_flighttask_progress(envelope: Envelope) -> Optional[Tuple[str, int]]:
    """``(flight_id, media_count)`` from ``data.output.ext`` when both are there and valid;
    None otherwise (progress events are mostly about the flight, not its media)."""
    ext = section(section(envelope.data, "output"), "ext")
    flight_id = lenient_str(ext.get("flight_id"), MAX_SHORT_ID, empty_is_none=True)
    media_count = _lenient_count(ext.get("media_count"))
    if flight_id is None or media_count is None:
        return None
    return flight_id, media_count


def parse_update_topo(envelope: Envelope) -> Optional[str]:
    """The serial number of the aircraft in the dock, or None when the dock holds none
    (``sub_devices`` empty: the aircraft went offline or left).

    The aircraft is the sub-device of domain 0. DJI's documented example gives sub-devices no
    domain at all; a dock's only sub-device is then its aircraft, so the first one is taken.
    """
    devices = envelope.data.get("sub_devices")
    if devices is None:
        return None
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise BadRequest("data.sub_devices must be a list of objects", field="data.sub_devices")
    if any("domain" in d for d in devices):
        devices = [d for d in devices if str(d.get("domain")) == "0"]
    if not devices:
        return None
    sn = devices[0].get("sn")
    if not isinstance(sn, str) or not GATEWAY_SN_RE.fullmatch(sn):
        raise BadRequest(f"data.sub_devices[].sn must be 1 to {MAX_SHORT_ID} letters and digits",
                         field="data.sub_devices")
    return sn


# ------------------------------------------------------------------------------ the replies

def render_grant(grant: StorageGrant, expire_seconds: int) -> Dict[str, Any]:
    """storage_config_get's ``output``: exactly the ``data`` object of Pilot 2's sts answer."""
    return storage_config(grant, expire_seconds)


def request_result(result: int, output: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``data`` of a ``requests_reply`` (or ``services_reply``). A failure carries no output:
    never ``result 0`` without what was asked for."""
    if result != RESULT_SUCCESS or output is None:
        if result == RESULT_SUCCESS:
            raise ValueError("a successful request reply needs its output")
        return {"result": result}
    return {"result": result, "output": dict(output)}


def event_result(result: int = RESULT_SUCCESS) -> Dict[str, Any]:
    """``data`` of an ``events_reply`` or ``status_reply``."""
    return {"result": result}


# Built once: json.dumps with options other than the defaults builds an encoder on every call.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def render_reply(envelope: Envelope, data: Mapping[str, Any], *, timestamp_ms: int) -> bytes:
    """The reply message: ``tid``, ``bid`` and ``method`` repeated, a new ``timestamp``."""
    return _COMPACT_JSON.encode({
        "tid": envelope.tid,
        "bid": envelope.bid,
        "timestamp": int(timestamp_ms),
        "method": envelope.method,
        "data": dict(data),
    }).encode("utf-8")


# ------------------------------------------------------------------------------ commands

def render_command(*, tid: str, bid: str, method: str, data: Mapping[str, Any], timestamp_ms: int) -> bytes:
    """A message for ``thing/product/{sn}/services``: the cloud asks the dock to do ``method``."""
    return _COMPACT_JSON.encode({
        "tid": tid,
        "bid": bid,
        "timestamp": int(timestamp_ms),
        "method": method,
        "data": dict(data),
    }).encode("utf-8")


def parse_services_result(envelope: Envelope) -> int:
    """The dock's ``result`` in a ``services_reply`` (``BadRequest`` when it has none)."""
    result = envelope.data.get("result")
    if isinstance(result, bool) or not isinstance(result, int):
        raise BadRequest("services_reply needs an integer data.result", field="data.result")
    return result
