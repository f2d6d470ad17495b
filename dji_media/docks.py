"""What a dock reports about one uploaded file, as a transport-independent value.

A dock's ``file_upload_callback`` differs from Pilot 2's upload-callback in ways that are not
spellings: it carries **no fingerprint** (a dock's file is identified by (workspace, object
key)), its capture time has no zone (kept as text only), it names its mission (``flight_id``)
and may carry the mission's file counts. So it gets a value of its own instead of a
``MediaFile`` with a made-up fingerprint. The MQTT transport builds it (``dji_media.mqtt.wire``);
``MediaService.record_dock_upload`` stores it, checking ``check_dock_upload`` first.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from .rules import (
    MAX_NAME,
    MAX_PATH,
    MAX_SHORT_ID,
    MAX_TIME_TEXT,
    check_count,
    check_object_key_form,
    check_text,
)

__all__ = ["DockUpload", "check_dock_upload"]


@dataclasses.dataclass(frozen=True)
class DockUpload:
    """One ``file_upload_callback``: ``result`` 0 means the dock stored the object in the bucket.

    ``flight_id`` is the mission (the role Pilot 2's ``file_group_id`` plays; it belongs in the
    record's job id). ``sn`` is the aircraft's serial number when the transport knows which
    aircraft sits in the dock (from the dock's topology), ``gateway_sn`` the dock's.
    ``create_time_text`` is the dock's local time as sent (``"2024-04-11 16:34:30"``, no zone),
    never converted. ``raw_json`` is the whole message as received (its text).
    The ``flight_task`` counts are absent on Dock 3.
    """

    result: int
    object_key: str
    name: Optional[str] = None
    path: Optional[str] = None
    flight_id: Optional[str] = None
    drone_model_key: Optional[str] = None
    payload_model_key: Optional[str] = None
    is_original: Optional[bool] = None
    sn: Optional[str] = None
    gateway_sn: Optional[str] = None
    gimbal_yaw_degree: Optional[float] = None
    absolute_altitude: Optional[float] = None
    relative_altitude: Optional[float] = None
    create_time_text: Optional[str] = None
    shoot_lat: Optional[float] = None
    shoot_lng: Optional[float] = None
    cloud_to_cloud_id: Optional[str] = None
    raw_json: str = "{}"
    expected_file_count: Optional[int] = None
    uploaded_file_count: Optional[int] = None
    flight_type: Optional[int] = None


def check_dock_upload(report: DockUpload) -> None:
    """Every bound a dock upload's fields must keep, whoever built it: raise ``BadRequest``
    naming the field. The object key's prefix is the service's business (it depends on the
    credential provider and on whether the deployment enforces it)."""
    check_object_key_form(report.object_key)
    if isinstance(report.result, bool) or not isinstance(report.result, int):
        check_count(report.result, "result")  # raises: not an integer
    check_text(report.name, MAX_NAME, "name")
    check_text(report.path, MAX_PATH, "path")
    for field in ("flight_id", "drone_model_key", "payload_model_key", "sn", "gateway_sn", "cloud_to_cloud_id"):
        check_text(getattr(report, field), MAX_SHORT_ID, field)
    check_text(report.create_time_text, MAX_TIME_TEXT, "create_time_text")
    for field in ("expected_file_count", "uploaded_file_count", "flight_type"):
        value = getattr(report, field)
        if value is not None:
            check_count(value, field)
