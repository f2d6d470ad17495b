"""JSON that devices send, read alike by both transports: Pilot 2's HTTP bodies and a dock's
MQTT messages.

A body is decoded once and refused when no store could hold it (a NUL character, an unpaired
UTF-16 surrogate); what passes is kept as the text received, so the raw JSON a record carries
costs no second encoding. The strict readers check the fields the server relies on and name
them as the device spells them. The bounds themselves are the core's (``dji_media.rules``).
Nothing here knows HTTP or MQTT: each transport says what its input is called in an error.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import BadRequest
from .rules import MAX_INT

__all__ = ["decode_json_object", "string", "required_string", "integer", "required_integer"]

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_json_object(data: bytes, *, noun: str, field: str) -> Tuple[Dict[str, Any], str]:
    """The JSON object in ``data`` and its text; ``BadRequest`` naming ``noun`` (what the
    transport calls its input: "request body", "message") and ``field`` when it is not one."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text)
    except UnicodeDecodeError:
        raise BadRequest(f"{noun} is not valid UTF-8", field=field) from None
    except ValueError:
        raise BadRequest(f"{noun} is not valid JSON", field=field) from None
    except RecursionError:
        raise BadRequest(f"{noun} is nested too deeply", field=field) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{noun} must be a JSON object", field=field)
    if b"\\u0000" in data:
        # Valid JSON, but PostgreSQL cannot store NUL in text and no device sends it. (A raw
        # NUL byte is not valid JSON at all.)
        raise BadRequest(f"{noun} contains a NUL character", field=field)
    if _SURROGATE_ESCAPE.search(data):
        # JSON may escape a lone UTF-16 surrogate ("\ud800"): valid JSON, but not text that
        # can be stored or sent back as UTF-8. Checked only when such an escape is present.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"{noun} contains an unpaired UTF-16 surrogate", field=field) from None
        except RecursionError:
            raise BadRequest(f"{noun} is nested too deeply", field=field) from None
    return value, text


def string(obj: Mapping[str, Any], key: str, limit: int, *, field: str,
           required: bool = False) -> Optional[str]:
    """``obj[key]``: a string of at most ``limit`` characters, or None when absent (unless
    ``required``, which also refuses an empty string)."""
    value = obj.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{field} is required", field=field)
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field=field)
    if required and not value:
        raise BadRequest(f"{field} must not be empty", field=field)
    if len(value) > limit:
        raise BadRequest(f"{field} is longer than {limit} characters", field=field)
    return value


def required_string(obj: Mapping[str, Any], key: str, limit: int, *, field: str) -> str:
    value = string(obj, key, limit, field=field, required=True)
    if value is None:  # cannot happen: required raised already; this tells the type checker
        raise BadRequest(f"{field} is required", field=field)
    return value


def integer(obj: Mapping[str, Any], key: str, *, field: str, required: bool = False,
            default: Optional[int] = None, minimum: Optional[int] = None) -> Optional[int]:
    """``obj[key]``: an integer within +-MAX_INT (and >= ``minimum``), or ``default`` when
    absent (unless ``required``)."""
    value = obj.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{field} is required", field=field)
        return default
    # bool is an int in Python, but `true` is not a number on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be an integer", field=field)
    if minimum is not None and value < minimum:
        raise BadRequest(f"{field} must be >= {minimum}", field=field)
    if abs(value) > MAX_INT:  # generous for counts and types, and fits any integer column
        raise BadRequest(f"{field} is out of range", field=field)
    return value


def required_integer(obj: Mapping[str, Any], key: str, *, field: str, minimum: Optional[int] = None) -> int:
    value = integer(obj, key, field=field, required=True, minimum=minimum)
    if value is None:  # as above
        raise BadRequest(f"{field} is required", field=field)
    return value
