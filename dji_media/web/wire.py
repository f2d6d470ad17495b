"""The Pilot 2 HTTP wire format, parsed and rendered in this one module.

Request bodies become the typed values of ``dji_media.values``; results become the
``{"code", "message", "data"}`` envelope. Nothing outside the HTTP transport knows these
spellings (``tinny_fingerprint``, ``access_key_secret``). Parsing is strict about what we rely
on (types and lengths of the fields we store or query, checked here to name the field as the
device spells it; the bounds are the core's, ``dji_media.rules``, and the service checks them
again) and lenient about the rest: unknown fields are ignored and optional metadata that does
not parse is kept only in the raw JSON.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..dji_format import lenient_bool, lenient_float, lenient_str, section, storage_config
from ..errors import BadRequest
from ..json_body import decode_json_object
from ..json_body import integer as _integer
from ..json_body import required_integer as _required_integer
from ..json_body import required_string as _required_string
from ..json_body import string as _string
from ..rules import (
    MAX_FINGERPRINT,
    MAX_NAME,
    MAX_OBJECT_KEY,
    MAX_PATH,
    MAX_SHORT_ID,
    MAX_TIME_TEXT,
    MAX_TINY_FINGERPRINT,
    MAX_TINY_FINGERPRINTS,
)
from ..values import FastUploadQuery, GroupReport, MediaFile, StorageGrant, UploadReport

CODE_SUCCESS = 0
CODE_NOT_FOUND = -1  # Pilot 2 uploads when fast-upload answers a non-zero code


# ---------------------------------------------------------------------------- parsing helpers

def decode_object(body: bytes, *, allow_empty: bool = False) -> Dict[str, Any]:
    """Decode a request body that must be a JSON object."""
    return _decode(body, allow_empty=allow_empty)[0]


def _decode(body: bytes, *, allow_empty: bool = False) -> Tuple[Dict[str, Any], str]:
    if not body.strip():
        if allow_empty:
            return {}, "{}"
        raise BadRequest("request body must be a JSON object", field="body")
    return decode_json_object(body, noun="request body", field="body")


def parse_created_time(text: Any) -> Optional[_dt.datetime]:
    """ISO 8601 with an offset, to UTC. Without an offset the zone is unknown: None."""
    if not isinstance(text, str) or len(text) > MAX_TIME_TEXT:
        return None
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        value = _dt.datetime.fromisoformat(candidate)
        if value.tzinfo is None:
            return None
        return value.astimezone(_dt.timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted past the range
        return None


def _tiny_from_ext(ext: Mapping[str, Any], field_prefix: str) -> Optional[str]:
    # The device spells it "tinny_fingerprint"; accept the correct spelling too.
    key = "tinny_fingerprint" if "tinny_fingerprint" in ext else "tiny_fingerprint"
    return _string(ext, key, MAX_TINY_FINGERPRINT, field=f"{field_prefix}.{key}")


# ------------------------------------------------------------------------------ the requests

def parse_fast_upload(body: bytes) -> FastUploadQuery:
    obj = decode_object(body)
    ext = section(obj, "ext")
    return FastUploadQuery(
        fingerprint=_required_string(obj, "fingerprint", MAX_FINGERPRINT, field="fingerprint"),
        tiny_fingerprint=_tiny_from_ext(ext, "ext"),
        name=_string(obj, "name", MAX_NAME, field="name"),
        path=_string(obj, "path", MAX_PATH, field="path"),
    )


def parse_tiny_fingerprints(body: bytes) -> List[str]:
    obj = decode_object(body)
    values = obj.get("tiny_fingerprints")
    if values is None:
        raise BadRequest("tiny_fingerprints is required", field="tiny_fingerprints")
    if not isinstance(values, list):
        raise BadRequest("tiny_fingerprints must be a list of strings", field="tiny_fingerprints")
    if len(values) > MAX_TINY_FINGERPRINTS:
        raise BadRequest(
            f"tiny_fingerprints holds more than {MAX_TINY_FINGERPRINTS} items", field="tiny_fingerprints"
        )
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value or len(value) > MAX_TINY_FINGERPRINT:
            raise BadRequest(
                f"tiny_fingerprints[{index}] must be a non-empty string of at most "
                f"{MAX_TINY_FINGERPRINT} characters",
                field="tiny_fingerprints",
            )
    return values


def parse_sts(body: bytes) -> None:
    """sts takes no parameters; the body may be empty or ``{}`` but must not be garbage."""
    decode_object(body, allow_empty=True)


def parse_upload_callback(body: bytes) -> UploadReport:
    obj, text = _decode(body)
    ext = section(obj, "ext")
    meta = section(obj, "metadata")
    position = section(meta, "shoot_position")
    created_text = meta.get("created_time")
    # A missing result is taken as success: DJI's own demo never reads it, so a device that
    # leaves it out has uploaded. A present, non-zero result is a failure and is not recorded.
    result = _integer(obj, "result", field="result") or 0
    sub_file_type = _integer(obj, "sub_file_type", field="sub_file_type", minimum=0)
    media = MediaFile(
        fingerprint=_required_string(obj, "fingerprint", MAX_FINGERPRINT, field="fingerprint"),
        object_key=_required_string(obj, "object_key", MAX_OBJECT_KEY, field="object_key"),
        tiny_fingerprint=_tiny_from_ext(ext, "ext"),
        name=_string(obj, "name", MAX_NAME, field="name"),
        path=_string(obj, "path", MAX_PATH, field="path"),
        sub_file_type=sub_file_type,
        file_group_id=_string(ext, "file_group_id", MAX_SHORT_ID, field="ext.file_group_id"),
        drone_model_key=lenient_str(ext.get("drone_model_key"), MAX_SHORT_ID),
        payload_model_key=lenient_str(ext.get("payload_model_key"), MAX_SHORT_ID),
        is_original=lenient_bool(ext.get("is_original")),
        sn=lenient_str(ext.get("sn"), MAX_SHORT_ID),
        gimbal_yaw_degree=lenient_float(meta.get("gimbal_yaw_degree")),
        absolute_altitude=lenient_float(meta.get("absolute_altitude")),
        relative_altitude=lenient_float(meta.get("relative_altitude")),
        created_time=parse_created_time(created_text),
        created_time_text=lenient_str(created_text, MAX_TIME_TEXT),
        shoot_lat=lenient_float(position.get("lat")),
        shoot_lng=lenient_float(position.get("lng")),
        raw_json=text,  # the body as sent: decoded once, never re-encoded
    )
    return UploadReport(result=result, file=media)


def parse_group_callback(body: bytes) -> GroupReport:
    obj = decode_object(body)
    return GroupReport(
        file_group_id=_required_string(obj, "file_group_id", MAX_SHORT_ID, field="file_group_id"),
        file_count=_required_integer(obj, "file_count", field="file_count", minimum=0),
        file_uploaded_count=_required_integer(obj, "file_uploaded_count", field="file_uploaded_count", minimum=0),
    )


# ---------------------------------------------------------------------------- the responses

def envelope(code: int, message: str, data: Any = None) -> Dict[str, Any]:
    """The one response shape. ``data`` is never null on the wire: Pilot 2 expects an object."""
    return {"code": code, "message": message, "data": {} if data is None else data}


def success(data: Any = None) -> Dict[str, Any]:
    return envelope(CODE_SUCCESS, "success", data)


def unknown_file(fingerprint: str) -> Dict[str, Any]:
    return envelope(CODE_NOT_FOUND, f"{fingerprint} don't exist.")


def render_grant(grant: StorageGrant, expire_seconds: int) -> Dict[str, Any]:
    return storage_config(grant, expire_seconds)
