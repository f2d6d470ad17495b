"""Frozen values that cross the plugin interfaces.

Every value is immutable so that a backend, the service and a handler can share one without
copying. Datetimes are always timezone-aware UTC.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import FrozenSet, Iterable, Optional, Tuple
from urllib.parse import quote


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclasses.dataclass(frozen=True, init=False)
class Identity:
    """Who a token is: its subject, the workspaces it may act on (``"*"``: any) and its scopes
    (``dji_media.access``: what it may do there). ``dji_media.access.authorize`` decides.

    Any iterable is accepted and stored as a frozenset. ``Identity(subject, workspace_id)`` and
    ``workspace_id=``, the form before scopes, still build: one workspace and no scope, so an
    authenticator written for the old interface keeps constructing identities.
    """

    subject: str
    workspaces: FrozenSet[str]
    scopes: FrozenSet[str]

    def __init__(self, subject: str, workspaces: Iterable[str] = (), scopes: Iterable[str] = (), *,
                 workspace_id: Optional[str] = None) -> None:
        if isinstance(workspaces, str):  # the old positional form: one workspace, not its letters
            workspaces = (workspaces,)
        if workspace_id is not None:
            workspaces = (*workspaces, workspace_id)
        if isinstance(scopes, str):
            raise TypeError("scopes must be an iterable of scope names, not a string")
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "workspaces", frozenset(workspaces))
        object.__setattr__(self, "scopes", frozenset(scopes))


@dataclasses.dataclass(frozen=True)
class FastUploadQuery:
    """A fast-upload request: "do you already have this file?"."""

    fingerprint: str
    tiny_fingerprint: Optional[str] = None
    name: Optional[str] = None
    path: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class MediaFile:
    """Everything a device told us about one uploaded file.

    ``raw_json`` is the callback body exactly as received (its text, not re-encoded), so a field
    we do not model yet is never lost. ``created_time`` is UTC; ``created_time_text`` keeps the
    device's text with its original offset.

    ``fingerprint`` is None for a dock's file: docks send none, and such a file is identified
    by (workspace, ``object_key``) alone (doc/protocol.md section 6).
    """

    fingerprint: Optional[str]
    object_key: str
    tiny_fingerprint: Optional[str] = None
    name: Optional[str] = None
    path: Optional[str] = None
    sub_file_type: Optional[int] = None
    file_group_id: Optional[str] = None
    drone_model_key: Optional[str] = None
    payload_model_key: Optional[str] = None
    is_original: Optional[bool] = None
    sn: Optional[str] = None
    gimbal_yaw_degree: Optional[float] = None
    absolute_altitude: Optional[float] = None
    relative_altitude: Optional[float] = None
    created_time: Optional[_dt.datetime] = None
    created_time_text: Optional[str] = None
    shoot_lat: Optional[float] = None
    shoot_lng: Optional[float] = None
    raw_json: str = "{}"
    # The mission (job) the file belongs to, when a source knows it (DJI's demo server stores
    # it; Pilot 2's callbacks do not carry it). A write without one keeps the stored one.
    job_id: Optional[str] = None
    # The payload's (camera's) display name, "M30 Camera", when a source recorded it instead of
    # a model key (DJI's demo server does). Like job_id, a write without one keeps the stored one.
    payload_name: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class UploadReport:
    """An upload-callback: ``result`` 0 means the device stored ``file`` in the bucket."""

    result: int
    file: MediaFile


@dataclasses.dataclass(frozen=True)
class MediaRecord:
    """A stored media file. ``revision`` grows with every write of the row, so a caller can
    remove a row it judged stale without removing a newer write of the same file.
    ``verified_at`` is when storage last confirmed the object (None: not since the last write)."""

    workspace_id: str
    file: MediaFile
    revision: int
    created_at: _dt.datetime
    updated_at: _dt.datetime
    verified_at: Optional[_dt.datetime] = None
    # What storage reported for the object when it first confirmed it (a HEAD or the sweep's
    # listing): a later ETag or size that differs means the bytes were overwritten. None until
    # then, and again after a rewrite of the record.
    etag: Optional[str] = None
    size: Optional[int] = None
    # A stable public id of the file (a UUID4 text), given when the record is first stored and
    # kept across rewrites of the same record. None where a store does not keep one.
    public_id: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """One object as storage describes it: its key, ETag (without quotes; for a multipart
    upload it is not an MD5) and size in bytes. ``etag``/``size`` are None where a store
    cannot tell."""

    key: str
    etag: Optional[str] = None
    size: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ListingPage:
    """One page of a listing in key order. ``next_start_after`` is where the next page starts
    (exclusive); None when this page ends the listing."""

    objects: Tuple[ObjectInfo, ...]
    next_start_after: Optional[str]


@dataclasses.dataclass(frozen=True)
class GroupReport:
    """A group-upload-callback: a mission's file totals as the device sees them."""

    file_group_id: str
    file_count: int
    file_uploaded_count: int


@dataclasses.dataclass(frozen=True)
class FileGroup:
    """A stored file group (latest report wins).

    ``expected_file_count`` is the mission's expected total as a dock announced it (None: no
    dock said). A group known only from a dock's expectation has counts of 0 until a device
    reports its totals.
    """

    workspace_id: str
    file_group_id: str
    file_count: int
    file_uploaded_count: int
    updated_at: _dt.datetime
    expected_file_count: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class DeviceBinding:
    """A dock (gateway) bound to a workspace: its serial number, the workspace, when it was
    bound (aware UTC) and an operator's note (None: none)."""

    gateway_sn: str
    workspace_id: str
    bound_at: _dt.datetime
    note: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SchemaMigration:
    """What ``MediaStore.migrate`` found and did (or, in a dry run, would do).

    ``found`` is the database's schema version before (None: no schema there yet), ``target``
    the version this release works with (None for a store without a versioned schema), and
    ``steps`` one line per change, in order: empty when the database was already at ``target``.
    """

    found: Optional[int]
    target: Optional[int]
    steps: Tuple[str, ...] = ()
    dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class UploadCredentials:
    """Temporary storage credentials. ``expires_at`` is an aware UTC datetime."""

    access_key_id: str
    secret_access_key: str
    session_token: Optional[str]
    expires_at: _dt.datetime

    def __repr__(self) -> str:  # never print a secret by accident
        return f"UploadCredentials(access_key_id={self.access_key_id!r}, expires_at={self.expires_at!r})"

    def seconds_left(self, now: Optional[_dt.datetime] = None) -> float:
        return (self.expires_at - (now or utc_now())).total_seconds()


@dataclasses.dataclass(frozen=True)
class StorageGrant:
    """What a device needs to upload into one workspace's prefix."""

    bucket: str
    endpoint: str
    region: str
    provider: str
    object_key_prefix: str
    credentials: UploadCredentials


# The kind of a file, from its name's extension (lower case, without the dot); anything else,
# or no name, is "other". Stores filter on these lists, so every store agrees.
PHOTO_EXTENSIONS: Tuple[str, ...] = ("jpg", "jpeg", "png", "dng", "tif", "tiff", "heic")
VIDEO_EXTENSIONS: Tuple[str, ...] = ("mp4", "mov", "mkv", "avi")
FILE_KINDS: Tuple[str, ...] = ("photo", "video", "other")


def file_kind(name: Optional[str]) -> str:
    """"photo", "video" or "other" for a file name (case-insensitive extension)."""
    if not name or "." not in name:
        return "other"
    extension = name.rsplit(".", 1)[1].lower()
    if extension in PHOTO_EXTENSIONS:
        return "photo"
    if extension in VIDEO_EXTENSIONS:
        return "video"
    return "other"


@dataclasses.dataclass(frozen=True)
class FileQuery:
    """What the media library looks for in one workspace (every filter optional; None: any).

    ``mission`` is the file_group_id; ``kind`` one of ``FILE_KINDS``; ``text`` is contained in
    the name or the path, case-insensitively; the time ranges include both ends (``uploaded_*``
    is the record's ``created_at``, ``captured_*`` the file's ``created_time``); ``bbox`` is
    (min_lng, min_lat, max_lng, max_lat) of the shoot position. ``newest_first`` orders by
    (created_at, public_id) descending, else ascending.
    """

    workspace_id: str
    mission: Optional[str] = None
    sn: Optional[str] = None
    drone_model_key: Optional[str] = None
    payload_model_key: Optional[str] = None
    kind: Optional[str] = None
    original: Optional[bool] = None
    text: Optional[str] = None
    uploaded_from: Optional[_dt.datetime] = None
    uploaded_to: Optional[_dt.datetime] = None
    captured_from: Optional[_dt.datetime] = None
    captured_to: Optional[_dt.datetime] = None
    bbox: Optional[Tuple[float, float, float, float]] = None
    newest_first: bool = True

    def matches(self, record: "MediaRecord") -> bool:
        """Whether ``record`` passes every filter (the reference every store agrees with)."""
        f = record.file
        if record.workspace_id != self.workspace_id:
            return False
        for wanted, value in ((self.mission, f.file_group_id), (self.sn, f.sn),
                              (self.drone_model_key, f.drone_model_key),
                              (self.payload_model_key, f.payload_model_key)):
            if wanted is not None and value != wanted:
                return False
        if self.kind is not None and file_kind(f.name) != self.kind:
            return False
        if self.original is not None and f.is_original is not self.original:
            return False
        if self.text is not None:
            needle = self.text.lower()
            if needle not in (f.name or "").lower() and needle not in (f.path or "").lower():
                return False
        if not _within(record.created_at, self.uploaded_from, self.uploaded_to):
            return False
        if (self.captured_from or self.captured_to) and (
                f.created_time is None or not _within(f.created_time, self.captured_from, self.captured_to)):
            return False
        if self.bbox is not None:
            min_lng, min_lat, max_lng, max_lat = self.bbox
            if f.shoot_lat is None or f.shoot_lng is None:
                return False
            if not (min_lat <= f.shoot_lat <= max_lat and min_lng <= f.shoot_lng <= max_lng):
                return False
        return True


def _within(value: _dt.datetime, low: Optional[_dt.datetime], high: Optional[_dt.datetime]) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


# Where a page of the library ends: the last record's (created_at, public_id); the next page
# starts strictly after it in the query's order.
RecordCursor = Tuple[_dt.datetime, str]


@dataclasses.dataclass(frozen=True)
class MissionSummary:
    """One mission (file group) of a workspace as the library shows it: the counts a device
    reported (0 when none did), a dock's expected count, how many records hold its id, and the
    first and last upload among them (None without records). ``updated_at`` is the latest of
    the group's report and the last upload: the order of the list, newest first."""

    workspace_id: str
    file_group_id: str
    reported_file_count: int
    reported_uploaded_count: int
    expected_file_count: Optional[int]
    recorded_count: int
    first_upload: Optional[_dt.datetime]
    last_upload: Optional[_dt.datetime]
    updated_at: _dt.datetime
    reported: bool = False  # whether a device reported the group's totals


# Where a page of missions ends: the last one's (updated_at, file_group_id).
MissionCursor = Tuple[_dt.datetime, str]


# Shared by every object store's presign_get, so a download is named alike whatever the backend.
def content_disposition(filename: Optional[str]) -> str:
    """``attachment`` with the file's name: an ASCII fallback in ``filename`` (quotes,
    backslashes, control and non-ASCII characters replaced) and the exact name in
    ``filename*`` (RFC 6266), so a browser saves the file under the device's name."""
    if not filename:
        return "attachment"
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
