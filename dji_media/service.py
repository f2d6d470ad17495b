"""The use cases of the media protocol, independent of any transport.

``MediaService`` is what a Tornado handler (and later an MQTT adapter) calls. It depends only on
the plugin interfaces, so every rule of doc/protocol.md sections 3 and 4 lives here once: what
counts as "known", how stale rows are treated, what a failed upload means, how long credentials
are advertised for. Every use case checks its own input against ``dji_media.rules`` (workspace
id, object key, lengths), so a caller that is not the HTTP transport cannot skip them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import types
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .access import UPLOAD, authorize, identify_with
from .errors import BadRequest, StorageUnavailable, Unavailable
from .interfaces import MIN_CREDENTIAL_SECONDS, Authenticator, CredentialProvider, MediaStore, ObjectStore
from .rules import (
    check_fingerprint,
    check_group_report,
    check_media_file,
    check_object_key_form,
    check_tiny_fingerprints,
    check_workspace_id,
)
from .values import (
    FastUploadQuery,
    FileGroup,
    GroupReport,
    Identity,
    MediaRecord,
    StorageGrant,
    UploadReport,
    utc_now,
)

# Kept importable from here: it was public before the rules had a module of their own.
__all__ = ["MediaService", "CallbackOutcome", "USE_CASE_SCOPES", "check_object_key_form"]

log = logging.getLogger("dji_media.service")

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
    :param verify_concurrency: how many storage checks one tiny-fingerprints request may run
        at once.
    :param enforce_key_prefix: refuse upload-callbacks whose object key is outside the
        workspace's prefix (see doc/configuration.md for when to turn it off).
    :param verify_window: seconds during which a storage confirmation is trusted without asking
        again (0: ask every time). Trade-off: an object deleted behind our back inside the
        window is still reported present, so the device does not upload it again.
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
        verify_window: float = 0.0,
    ) -> None:
        if not 0 <= expire_margin <= MIN_CREDENTIAL_SECONDS - 300:
            raise ValueError(f"expire_margin must be between 0 and {MIN_CREDENTIAL_SECONDS - 300}")
        if verify_concurrency < 1:
            raise ValueError("verify_concurrency must be >= 1")
        if verify_window < 0:
            raise ValueError("verify_window must be >= 0")
        self.media_store = media_store
        self.object_store = object_store
        self.credentials = credentials
        self.authenticator = authenticator
        # Decided once: an authenticator written before scopes is adapted here (see Authenticator).
        self._identify = identify_with(authenticator)
        self.expire_margin = expire_margin
        self.verify_concurrency = verify_concurrency
        self.enforce_key_prefix = enforce_key_prefix
        self.verify_window = verify_window

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
        """True if the workspace holds the file and its object is really in the bucket."""
        check_workspace_id(workspace_id)
        check_fingerprint(query.fingerprint)
        record = await self.media_store.get(workspace_id, query.fingerprint)
        if record is None:
            return False
        present, fresh = await self._verify(record)
        if fresh:
            await self._remember([record])
        return present

    async def existing_tiny_fingerprints(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> List[str]:
        """The distinct tiny fingerprints the workspace holds, in request order."""
        check_workspace_id(workspace_id)
        check_tiny_fingerprints(tiny_fingerprints)
        wanted = list(dict.fromkeys(tiny_fingerprints))
        if not wanted:
            return []
        records = await self.media_store.find_by_tiny_fingerprints(workspace_id, wanted)
        # Records confirmed within the window need no storage check and no task of their own.
        present = {r.file.tiny_fingerprint for r in records if self._recently_verified(r)}
        records = [r for r in records if r.file.tiny_fingerprint not in present]
        # Keys storage cannot answer are left out: "unknown", so the device uploads again and
        # the record is kept. After a first failure the rest are not asked (one timeout, not
        # one per file).
        answers = await self.object_store.exists_many([r.file.object_key for r in records],
                                                      concurrency=self.verify_concurrency)
        confirmed = [r for r in records if answers.get(r.file.object_key)]
        gone = [r for r in records if answers.get(r.file.object_key) is False]
        unknown = len(records) - len(confirmed) - len(gone)
        if unknown:
            log.warning("storage could not confirm %d of %d object(s); answering unknown, records kept",
                        unknown, len(records))
        limit = asyncio.Semaphore(self.verify_concurrency)

        async def forget(record: MediaRecord) -> None:
            async with limit:
                await self._forget_stale(record)

        await asyncio.gather(*(forget(r) for r in gone))
        await self._remember(confirmed)
        present.update(r.file.tiny_fingerprint for r in confirmed)
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
        await self.media_store.upsert(workspace_id, report.file)
        return CallbackOutcome(recorded=True, object_key=key, result=0)

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

    async def _verify(self, record: MediaRecord) -> Tuple[bool, bool]:
        """Whether the record's object is in storage (protocol.md section 4), and whether that
        was freshly confirmed by storage (and so is worth remembering).

        Confirmed within the verification window: present, without asking. Gone (404): the row
        is stale, so it is removed and the device uploads again. Storage unreachable: answer
        "unknown" so the device uploads again, and touch nothing.
        """
        if self._recently_verified(record):
            return True, False
        try:
            present = await self.object_store.exists(record.file.object_key)
        except StorageUnavailable as exc:
            log.warning("storage could not confirm %r (%s); answering unknown, record kept",
                        record.file.object_key, exc.message)
            return False, False
        if not present:
            await self._forget_stale(record)
        return present, present

    async def _forget_stale(self, record: MediaRecord) -> None:
        """Storage said 404: the row is stale, unless it was rewritten since it was read."""
        removed = await self.media_store.forget(record)
        # %r: client-supplied strings are logged escaped, so they cannot forge log lines.
        log.info("object %r is gone from storage; stale record of %s/%r %s",
                 record.file.object_key, record.workspace_id, record.file.fingerprint,
                 "removed" if removed else "was rewritten meanwhile and kept")

    def _recently_verified(self, record: MediaRecord) -> bool:
        if not self.verify_window or record.verified_at is None:
            return False
        age = (utc_now() - record.verified_at).total_seconds()
        return 0 <= age < self.verify_window

    async def _remember(self, confirmed: List[MediaRecord]) -> None:
        """Store the confirmations when a window is in use; a failure only costs a re-check."""
        if not self.verify_window or not confirmed:
            return
        try:
            await self.media_store.mark_verified(confirmed, utc_now())
        except Unavailable as exc:
            log.warning("could not record %d storage confirmation(s): %s", len(confirmed), exc.message)

    def _check_object_key(self, workspace_id: str, key: str) -> None:
        # A key outside the workspace's prefix would let one workspace claim another's objects.
        check_object_key_form(key)
        if self.enforce_key_prefix:
            prefix = self.credentials.object_key_prefix(workspace_id).rstrip("/") + "/"
            if not key.startswith(prefix):
                raise BadRequest(f"object_key must start with the workspace prefix {prefix!r}",
                                 field="object_key")

