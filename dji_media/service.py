"""The use cases of the media protocol, independent of any transport.

``MediaService`` is what a Tornado handler (and later an MQTT adapter) calls. It depends only on
the plugin interfaces, so every rule of doc/protocol.md sections 3 and 4 lives here once: what
counts as "known", how stale rows are treated, what a failed upload means, how long credentials
are advertised for. Every use case checks its own input against ``dji_media.rules`` (workspace
id, object key, lengths), so a caller that is not the HTTP transport cannot skip them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as _dt
import logging
import types
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .access import UPLOAD, authorize, identify_with
from .capabilities import has_capability
from .docks import DockUpload, check_dock_upload
from .errors import BadRequest, StorageUnavailable, Unavailable
from .interfaces import MIN_CREDENTIAL_SECONDS, Authenticator, CredentialProvider, MediaStore, ObjectStore
from .rules import (
    MAX_SHORT_ID,
    check_count,
    check_fingerprint,
    check_group_report,
    check_media_file,
    check_object_key_form,
    check_text,
    check_tiny_fingerprints,
    check_workspace_id,
)
from .values import (
    FastUploadQuery,
    FileGroup,
    GroupReport,
    Identity,
    MediaFile,
    MediaRecord,
    ObjectInfo,
    StorageGrant,
    UploadReport,
    utc_now,
)

# Kept importable from here: it was public before the rules had a module of their own.
__all__ = ["MediaService", "CallbackOutcome", "USE_CASE_SCOPES", "check_object_key_form"]

log = logging.getLogger("dji_media.service")
# Missions whose expected file count each service remembers having stored (about 100 bytes each).
MAX_REMEMBERED_EXPECTATIONS = 10_000

# How far ahead of this machine's clock a confirmation's time may be and still count (another
# server, or the sweep on another machine, stamped it).
CLOCK_SKEW_SECONDS = 60.0


def overwritten(record: MediaRecord, info: ObjectInfo) -> bool:
    """Whether storage describes the record's object with another ETag or size than the one
    recorded when it was first confirmed: other bytes now live under the key. Unknown on
    either side is not a difference."""
    return ((record.etag is not None and info.etag is not None and record.etag != info.etag)
            or (record.size is not None and info.size is not None and record.size != info.size))


def learns_something(record: MediaRecord, info: ObjectInfo) -> bool:
    """Whether confirming the record would record an ETag or size it lacks: the first
    confirmation's are what a later overwrite is told apart by."""
    return ((record.etag is None and info.etag is not None)
            or (record.size is None and info.size is not None))

# What each use case requires: the one table of authorisation (doc/security.md shows it per
# endpoint). A transport looks its use case up here and passes the scope to ``authenticate``.
USE_CASE_SCOPES: Mapping[str, str] = types.MappingProxyType({
    "fast_upload": UPLOAD,
    "existing_tiny_fingerprints": UPLOAD,
    "issue_credentials": UPLOAD,
    "record_upload": UPLOAD,
    "record_group": UPLOAD,
})


@dataclasses.dataclass(frozen=True)
class CallbackOutcome:
    """What an upload-callback did: ``recorded`` is False for a failed upload (result != 0)."""

    recorded: bool
    object_key: str
    result: int


class MediaService:
    """The five use cases. Built once at start-up with its backends.

    :param expire_margin: seconds subtracted from the credentials' remaining lifetime when
        telling a device how long they last, so it never starts an upload on credentials about
        to lapse (DJI's demo uses 300).
    :param verify_concurrency: how many storage checks (HEADs) one request may run at once.
    :param enforce_key_prefix: refuse upload-callbacks whose object key is outside the
        workspace's prefix (see doc/configuration.md for when to turn it off).
    :param enforce_dock_key_prefix: the same for a dock's ``file_upload_callback``, separately:
        a dock caches its storage configuration for a long time and may keep writing under a
        prefix the deployment used before; turn it off (for docks only) while they catch up.
    :param verify_window: seconds during which a storage confirmation (by a HEAD of a request,
        or by the storage sweep, ``dji_media.sweep``) is trusted without asking again (0: ask
        every time). Trade-off: an object deleted behind our back is still reported present
        until the sweep finds it gone or, without a sweep, until its confirmation is older than
        the window. 0 keeps this class's behaviour of earlier releases; the configuration's
        default is 3600 with the sweep on (doc/configuration.md).
    :param max_checks_per_request: how many records one request may check with a HEAD (those
        never confirmed, or confirmed longer ago than the window). The other unconfirmed ones
        are answered "unknown" (the device asks fast-upload or uploads again; nothing is lost),
        so a request's storage cost has a bound whatever the request or the workspace.
    :param clock: the current time (aware UTC); injectable so tests can age confirmations.
    """

    def __init__(
        self,
        *,
        media_store: MediaStore,
        object_store: ObjectStore,
        credentials: CredentialProvider,
        authenticator: Authenticator,
        expire_margin: int = 300,
        verify_concurrency: int = 16,
        enforce_key_prefix: bool = True,
        enforce_dock_key_prefix: bool = True,
        verify_window: float = 0.0,
        max_checks_per_request: int = 32,
        clock: Callable[[], _dt.datetime] = utc_now,
    ) -> None:
        if not 0 <= expire_margin <= MIN_CREDENTIAL_SECONDS - 300:
            raise ValueError(f"expire_margin must be between 0 and {MIN_CREDENTIAL_SECONDS - 300}")
        if verify_concurrency < 1:
            raise ValueError("verify_concurrency must be >= 1")
        if verify_window < 0:
            raise ValueError("verify_window must be >= 0")
        if max_checks_per_request < 1:
            raise ValueError("max_checks_per_request must be >= 1")
        self.media_store = media_store
        self.object_store = object_store
        self.credentials = credentials
        self.authenticator = authenticator
        # Decided once: an authenticator written before scopes is adapted here (see Authenticator).
        self._identify = identify_with(authenticator)
        self.expire_margin = expire_margin
        self.verify_concurrency = verify_concurrency
        self.enforce_key_prefix = enforce_key_prefix
        self.enforce_dock_key_prefix = enforce_dock_key_prefix
        self.verify_window = verify_window
        self.max_checks_per_request = max_checks_per_request
        self.clock = clock
        # Decided once too: a store of an older release records confirmations without their
        # ETag and size (mark_verified), or not at all (its default).
        self._can_confirm = has_capability(media_store, "sweep_confirm")
        # The expected count this process last stored per (workspace, mission): a Dock 1 or 2
        # repeats it in every file_upload_callback, and writing it each time cost more CPU than
        # the file's own record (bench/mqtt.py). Latest wins per process, as the transport's
        # own per-dock memory of it.
        self._expectations: "collections.OrderedDict[Tuple[str, str], int]" = collections.OrderedDict()

    # -------------------------------------------------------------------------- access

    async def authenticate(self, token: Optional[str], workspace_id: str, scope: str) -> Identity:
        """The token's identity, if it may do ``scope`` (``USE_CASE_SCOPES``) in the workspace.

        Raises Unauthenticated (bad token: the only 401), then Forbidden (another workspace, or
        a scope it lacks), then BadRequest (a malformed workspace id). Authorisation comes before
        the id's format so that a token limited to other workspaces learns nothing about which
        ids are well-formed, as before scopes (doc/protocol-decisions.md, order of checks); the
        id is still checked before any backend sees it.
        """
        identity = await self._identify(token, workspace_id)
        authorize(identity, workspace_id, scope)
        check_workspace_id(workspace_id)
        return identity

    # ----------------------------------------------------------------------- use cases

    async def fast_upload(self, workspace_id: str, query: FastUploadQuery) -> bool:
        """True if the workspace holds the file and its object is really in the bucket: its
        record was confirmed within the window, or a HEAD confirms it now."""
        check_workspace_id(workspace_id)
        check_fingerprint(query.fingerprint)
        record = await self.media_store.get(workspace_id, query.fingerprint)
        if record is None:
            return False
        if self._recently_verified(record.verified_at):
            return True
        return bool(await self._verify([record]))

    async def existing_tiny_fingerprints(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> List[str]:
        """The distinct tiny fingerprints the workspace holds, in request order.

        Answered from the database: a tiny fingerprint whose record was confirmed within the
        window is known without asking storage, and only its confirmation time is read (no
        record is built). The others are checked with a HEAD, at most
        ``max_checks_per_request`` records, in request order; the rest are answered "unknown".
        Never a listing: the cost does not grow with the workspace (protocol.md section 4).
        """
        check_workspace_id(workspace_id)
        check_tiny_fingerprints(tiny_fingerprints)
        wanted = list(dict.fromkeys(tiny_fingerprints))
        if not wanted:
            return []
        confirmations = await self.media_store.tiny_fingerprint_confirmations(workspace_id, wanted)
        present = {t for t, when in confirmations.items() if self._recently_verified(when)}
        unconfirmed = [t for t in wanted if t in confirmations and t not in present]
        if unconfirmed:
            present.update(await self._check_tinies(workspace_id, unconfirmed))
        return [t for t in wanted if t in present]

    async def issue_credentials(self, workspace_id: str) -> Tuple[StorageGrant, int]:
        """Credentials for the workspace's prefix and the seconds to advertise as ``expire``."""
        check_workspace_id(workspace_id)
        grant = await self.credentials.issue(workspace_id)
        expire = int(grant.credentials.seconds_left(utc_now())) - self.expire_margin
        if expire <= 0:
            # Handing out credentials that lapse before an upload can finish would make devices
            # fail mid-file; say so instead.
            log.error("credential provider returned credentials that expire in %.0f s",
                      grant.credentials.seconds_left())
            raise StorageUnavailable("storage credentials could not be issued (they expire too soon)")
        return grant, expire

    async def record_upload(self, workspace_id: str, report: UploadReport) -> CallbackOutcome:
        """Store a successful upload (idempotently); a failed one is acknowledged, not stored."""
        check_workspace_id(workspace_id)
        check_media_file(report.file)
        key = report.file.object_key
        self._check_object_key(workspace_id, key)
        if report.result != 0:
            log.info("upload-callback with result=%s for %s/%r: not recorded",
                     report.result, workspace_id, report.file.fingerprint)
            return CallbackOutcome(recorded=False, object_key=key, result=report.result)
        await self.media_store.save(workspace_id, report.file)
        return CallbackOutcome(recorded=True, object_key=key, result=0)

    async def record_dock_upload(self, workspace_id: str, report: DockUpload) -> CallbackOutcome:
        """Store a dock's uploaded file (idempotently, keyed by (workspace, object key): a dock
        sends no fingerprint); a failed upload is acknowledged, not stored. The mission's
        expected file count, when the report carries one, is recorded too (latest wins)."""
        check_workspace_id(workspace_id)
        check_dock_upload(report)
        key = report.object_key
        self._check_object_key(workspace_id, key, enforce=self.enforce_dock_key_prefix)
        if report.result != 0:
            log.info("dock file_upload_callback with result=%s for %s/%r: not recorded",
                     report.result, workspace_id, key)
            return CallbackOutcome(recorded=False, object_key=key, result=report.result)
        # "" names no mission (the dock's spelling of none).
        flight_id = report.flight_id or None
        file = MediaFile(
            fingerprint=None,
            object_key=key,
            name=report.name,
            path=report.path,
            file_group_id=flight_id,
            job_id=flight_id,
            drone_model_key=report.drone_model_key,
            payload_model_key=report.payload_model_key,
            is_original=report.is_original,
            sn=report.sn,
            gimbal_yaw_degree=report.gimbal_yaw_degree,
            absolute_altitude=report.absolute_altitude,
            relative_altitude=report.relative_altitude,
            # The dock's local time without a zone: kept as sent, never converted.
            created_time=None,
            created_time_text=report.create_time_text,
            shoot_lat=report.shoot_lat,
            shoot_lng=report.shoot_lng,
            raw_json=report.raw_json,
        )
        await self.media_store.save(workspace_id, file)
        if flight_id is not None and report.expected_file_count is not None:
            await self._save_expectation(workspace_id, flight_id, report.expected_file_count)
        return CallbackOutcome(recorded=True, object_key=key, result=0)

    async def record_mission_expectation(self, workspace_id: str, flight_id: str,
                                         expected_file_count: int) -> None:
        """Store how many files a dock's mission should have (latest wins)."""
        check_workspace_id(workspace_id)
        check_text(flight_id, MAX_SHORT_ID, "flight_id", required=True)
        check_count(expected_file_count, "expected_file_count")
        await self._save_expectation(workspace_id, flight_id, expected_file_count)

    async def _save_expectation(self, workspace_id: str, flight_id: str, expected_file_count: int) -> None:
        """Store a mission's expected count unless this process stored that very count last."""
        key = (workspace_id, flight_id)
        if self._expectations.get(key) == expected_file_count:
            self._expectations.move_to_end(key)
            return
        await self.media_store.save_mission_expectation(workspace_id, flight_id, expected_file_count)
        self._expectations[key] = expected_file_count
        self._expectations.move_to_end(key)
        while len(self._expectations) > MAX_REMEMBERED_EXPECTATIONS:
            self._expectations.popitem(last=False)

    async def record_group(self, workspace_id: str, report: GroupReport) -> FileGroup:
        """Store a mission's totals (latest report wins)."""
        check_workspace_id(workspace_id)
        check_group_report(report)
        return await self.media_store.save_group(workspace_id, report)

    async def readiness(self) -> Dict[str, Optional[str]]:
        """Each dependency by name: None when it answers, else why not (safe to show)."""
        report: Dict[str, Optional[str]] = {}
        for name, probe in (("database", self.media_store.ping), ("storage", self.object_store.ping)):
            try:
                await probe()
                report[name] = None
            except Unavailable as exc:
                report[name] = exc.message
        return report

    async def close(self) -> None:
        for backend in (self.authenticator, self.credentials, self.object_store, self.media_store):
            await backend.close()

    # ------------------------------------------------------------------------- helpers

    async def _check_tinies(self, workspace_id: str, tinies: List[str]) -> List[str]:
        """Which of these unconfirmed tiny fingerprints storage confirms now, checking the
        records of the first ones (request order) up to ``max_checks_per_request``."""
        # Each tiny fingerprint holds at least one record: records of more than the first
        # max_checks_per_request of them could not be checked anyway, so they are not read.
        candidates = tinies[:self.max_checks_per_request]
        records = await self.media_store.find_by_tiny_fingerprints(workspace_id, candidates)
        by_tiny: Dict[str, List[MediaRecord]] = {}
        for record in records:
            if record.file.tiny_fingerprint is not None:
                by_tiny.setdefault(record.file.tiny_fingerprint, []).append(record)
        chosen: List[MediaRecord] = []
        checked = 0
        for tiny in candidates:
            held = by_tiny.get(tiny, [])
            if len(chosen) + len(held) > self.max_checks_per_request:
                break
            chosen.extend(held)
            checked += 1
        if checked < len(tinies):
            # Once per request, with the count: the device asks fast-upload (one HEAD) or
            # uploads these again; nothing is lost. Many of these mean the storage sweep is off
            # or behind (doc/operations.md).
            log.info("%d of %d unconfirmed tiny fingerprint(s) of %s answered unknown without a storage "
                     "check (max_checks_per_request=%d)", len(tinies) - checked, len(tinies),
                     workspace_id, self.max_checks_per_request)
        confirmed = await self._verify(chosen)
        return list(dict.fromkeys(r.file.tiny_fingerprint for r in confirmed if r.file.tiny_fingerprint))

    async def _verify(self, records: Sequence[MediaRecord]) -> List[MediaRecord]:
        """HEAD each record's object (at most ``verify_concurrency`` at once) and return those
        storage confirms (protocol.md section 4).

        Confirmed: remembered (with the object's ETag and size the first time). Gone (404), or
        another ETag or size than the one recorded at the first confirmation (the object was
        overwritten by other bytes): the record is stale and is removed unless it was rewritten
        meanwhile; the device uploads again. Storage unreachable: "unknown", the record is left
        as it was, and the checks not yet started are skipped (one timeout, not one per file).
        """
        if not records:
            return []
        limit = asyncio.Semaphore(self.verify_concurrency)
        failed: List[str] = []
        answers: Dict[str, Optional[ObjectInfo]] = {}

        async def head(key: str) -> None:
            async with limit:
                if failed:
                    return
                try:
                    answers[key] = await self.object_store.stat(key)
                except StorageUnavailable as exc:
                    failed.append(exc.message)

        await asyncio.gather(*(head(k) for k in dict.fromkeys(r.file.object_key for r in records)))
        if failed:
            unknown = sum(1 for r in records if r.file.object_key not in answers)
            log.warning("storage could not confirm %d of %d object(s) (%s); answering unknown, records kept",
                        unknown, len(records), failed[0])
        confirmed: List[Tuple[MediaRecord, ObjectInfo]] = []
        stale: List[Tuple[MediaRecord, str]] = []
        for record in records:
            key = record.file.object_key
            if key not in answers:
                continue
            info = answers[key]
            if info is None:
                stale.append((record, "is gone from storage"))
            elif overwritten(record, info):
                stale.append((record, "was overwritten by other bytes"))
            else:
                confirmed.append((record, info))

        async def forget(record: MediaRecord, why: str) -> None:
            async with limit:
                await self._forget_stale(record, why)

        await asyncio.gather(*(forget(r, why) for r, why in stale))
        await self._remember(confirmed)
        return [r for r, _ in confirmed]

    async def _forget_stale(self, record: MediaRecord, why: str) -> None:
        """Storage said the record's object is not its file any more: the row is stale, unless
        it was rewritten since it was read (the revision check of ``forget``)."""
        removed = await self.media_store.forget(record)
        # %r: client-supplied strings are logged escaped, so they cannot forge log lines.
        log.info("object %r %s; stale record of %s/%r %s",
                 record.file.object_key, why, record.workspace_id, record.file.fingerprint,
                 "removed" if removed else "was rewritten meanwhile and kept")

    def _recently_verified(self, verified_at: Optional[_dt.datetime]) -> bool:
        if not self.verify_window or verified_at is None:
            return False
        age = (self.clock() - verified_at).total_seconds()
        # A confirmation stamped by another machine whose clock runs a little ahead is still
        # one; one far in the future is a broken clock and is not trusted.
        return -CLOCK_SKEW_SECONDS <= age < self.verify_window

    async def _remember(self, confirmed: Sequence[Tuple[MediaRecord, ObjectInfo]]) -> None:
        """Store the confirmations: their time when a window is in use, and each object's ETag
        and size the first time (they reveal a later overwrite). A failure only costs a re-check."""
        if self._can_confirm:
            wanted = [(r, info) for r, info in confirmed
                      if self.verify_window or learns_something(r, info)]
        else:  # a store of an older release: the time only
            wanted = list(confirmed) if self.verify_window else []
        if not wanted:
            return
        try:
            if self._can_confirm:
                await self.media_store.confirm(wanted, self.clock())
            else:
                await self.media_store.mark_verified([r for r, _ in wanted], self.clock())
        except Unavailable as exc:
            log.warning("could not record %d storage confirmation(s): %s", len(wanted), exc.message)

    def _check_object_key(self, workspace_id: str, key: str, *, enforce: Optional[bool] = None) -> None:
        # A key outside the workspace's prefix would let one workspace claim another's objects.
        check_object_key_form(key)
        if self.enforce_key_prefix if enforce is None else enforce:
            prefix = self.credentials.object_key_prefix(workspace_id).rstrip("/") + "/"
            if not key.startswith(prefix):
                raise BadRequest(f"object_key must start with the workspace prefix {prefix!r}",
                                 field="object_key")

