"""The rules of the media domain that are not spellings of one transport.

What a valid workspace id, object key, fingerprint or count is holds for Pilot 2 over HTTP,
Docks over MQTT, an import and a host application calling the service alike, so it lives here
and ``MediaService`` enforces it in every use case. A transport may check the same bounds earlier
to name the field in its own spelling (``ext.tinny_fingerprint``); it cannot skip them.
doc/protocol-decisions.md explains each bound.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

from .errors import BadRequest
from .values import GroupReport, MediaFile

MAX_FINGERPRINT = 64
MAX_TINY_FINGERPRINT = 128
MAX_NAME = 255
MAX_PATH = 1024
MAX_OBJECT_KEY = 1024
MAX_SHORT_ID = 128  # model keys, serial numbers, file group ids, job ids
# 15,000 typical tiny fingerprints fit in the default 1 MiB body limit.
MAX_TINY_FINGERPRINTS = 15000
MAX_WORKSPACE_ID = 64
# Counts and result codes from devices: generous, and fit any integer column.
MAX_INT = 2**31 - 1
MAX_TIME_TEXT = 64

# Workspace ids end up in storage prefixes and IAM policy resources, so only characters that
# cannot widen a policy or a path are allowed: no '*', '?', '/', '.', spaces or controls.
WORKSPACE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_WORKSPACE_ID)

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def check_workspace_id(workspace_id: str) -> str:
    """Return the id, or raise ``BadRequest`` naming ``workspace_id``."""
    if not isinstance(workspace_id, str) or not WORKSPACE_ID_RE.fullmatch(workspace_id):
        # fullmatch: "$" would allow a trailing "\n"
        raise BadRequest(
            f"workspace_id must be 1 to {MAX_WORKSPACE_ID} characters of A-Z, a-z, 0-9, '_' or '-'",
            field="workspace_id",
        )
    return workspace_id


def check_object_key_form(key: str) -> None:
    """The shape every stored object key must have, wherever it comes from: raise
    ``BadRequest`` naming ``object_key`` if it is not.

    Object keys are stored as data and never used as file system paths, but a relative key of
    plain segments is the only kind a device uploads under a workspace's prefix.
    """
    if not isinstance(key, str) or not key:
        raise BadRequest("object_key must be a non-empty string", field="object_key")
    # S3 caps keys at 1024 bytes of UTF-8 (and PostgreSQL's index at about 2,700): a key of
    # 1024 characters of Chinese (3 bytes each) is one no storage accepts.
    if len(key) > MAX_OBJECT_KEY or len(key.encode("utf-8", "surrogatepass")) > MAX_OBJECT_KEY:
        raise BadRequest(f"object_key is longer than {MAX_OBJECT_KEY} bytes (UTF-8)", field="object_key")
    if key.startswith("/") or _CONTROL_CHARACTER.search(key):
        raise BadRequest("object_key must be a relative key without control characters",
                         field="object_key")
    if any(s in ("", ".", "..") for s in key.split("/")):
        raise BadRequest("object_key must not contain empty, '.' or '..' segments", field="object_key")


def check_text(value: Optional[str], limit: int, field: str, *, required: bool = False) -> None:
    """A string field of at most ``limit`` characters (non-empty when required)."""
    if value is None:
        if required:
            raise BadRequest(f"{field} is required", field=field)
        return
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field=field)
    if required and not value:
        raise BadRequest(f"{field} must not be empty", field=field)
    if len(value) > limit:
        raise BadRequest(f"{field} is longer than {limit} characters", field=field)


def check_count(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be an integer", field=field)
    if not 0 <= value <= MAX_INT:
        raise BadRequest(f"{field} must be between 0 and {MAX_INT}", field=field)


def check_fingerprint(fingerprint: Optional[str]) -> None:
    check_text(fingerprint, MAX_FINGERPRINT, "fingerprint", required=True)


def check_tiny_fingerprints(tiny_fingerprints: Iterable[str]) -> None:
    count = 0
    for count, value in enumerate(tiny_fingerprints, 1):
        if not isinstance(value, str) or not value or len(value) > MAX_TINY_FINGERPRINT:
            raise BadRequest(f"tiny_fingerprints[{count - 1}] must be a non-empty string of at most "
                             f"{MAX_TINY_FINGERPRINT} characters", field="tiny_fingerprints")
    if count > MAX_TINY_FINGERPRINTS:
        raise BadRequest(f"tiny_fingerprints holds more than {MAX_TINY_FINGERPRINTS} items",
                         field="tiny_fingerprints")


def check_media_file(file: MediaFile) -> None:
    """Every bound a stored file's fields must keep (the object key's prefix is the service's
    business: it depends on the credential provider)."""
    check_fingerprint(file.fingerprint)
    check_object_key_form(file.object_key)
    check_text(file.tiny_fingerprint, MAX_TINY_FINGERPRINT, "tiny_fingerprint")
    check_text(file.name, MAX_NAME, "name")
    check_text(file.path, MAX_PATH, "path")
    for field in ("file_group_id", "drone_model_key", "payload_model_key", "sn", "job_id", "payload_name"):
        check_text(getattr(file, field), MAX_SHORT_ID, field)
    check_text(file.created_time_text, MAX_TIME_TEXT, "created_time_text")
    if file.sub_file_type is not None:
        check_count(file.sub_file_type, "sub_file_type")


def check_group_report(report: GroupReport) -> None:
    check_text(report.file_group_id, MAX_SHORT_ID, "file_group_id", required=True)
    check_count(report.file_count, "file_count")
    check_count(report.file_uploaded_count, "file_uploaded_count")
    if report.file_uploaded_count > report.file_count:
        raise BadRequest("file_uploaded_count must not exceed file_count", field="file_uploaded_count")
