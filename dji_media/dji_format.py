"""What both DJI transports read and write alike: Pilot 2's HTTP and a dock's MQTT.

Each transport owns its wire format, but DJI gave the two a few things in common: the storage
configuration object (Pilot 2's ``sts`` ``data`` is exactly a dock's ``storage_config_get``
``output``), and device metadata that may send numbers as strings and booleans as 0/1. Those are
written once here, below both transports, so a fix to one reaches the other. Nothing here
knows HTTP or MQTT.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

from .values import StorageGrant

__all__ = ["storage_config", "section", "lenient_float", "lenient_bool", "lenient_str"]


def storage_config(grant: StorageGrant, expire_seconds: int) -> Dict[str, Any]:
    """The storage configuration object in DJI's spelling (``access_key_secret``, ``expire``
    in seconds as a JSON integer: devices reject ``"3300"``)."""
    return {
        "bucket": grant.bucket,
        "credentials": {
            "access_key_id": grant.credentials.access_key_id,
            "access_key_secret": grant.credentials.secret_access_key,
            "expire": int(expire_seconds),
            "security_token": grant.credentials.session_token or "",
        },
        "endpoint": grant.endpoint,
        "object_key_prefix": grant.object_key_prefix,
        "provider": grant.provider,
        "region": grant.region,
    }


def section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """An optional nested object; anything that is not an object counts as absent."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def lenient_float(value: Any) -> Optional[float]:
    """Metadata numbers may arrive as strings (yaw does: docks send "-91.40"); what does not
    parse, or is not finite, is dropped (it stays in the raw JSON)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def lenient_bool(value: Any) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def lenient_str(value: Any, limit: int, *, empty_is_none: bool = False) -> Optional[str]:
    """A string of at most ``limit`` characters, else None. ``empty_is_none``: "" counts as
    absent (docks send empty strings for fields they do not know)."""
    if isinstance(value, str) and len(value) <= limit and not (empty_is_none and not value):
        return value
    return None
