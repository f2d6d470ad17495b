"""The plugin interfaces: async abstract base classes with their contracts.

A backend implements one of these and raises only the errors named in each docstring (see
``dji_media.errors``). Blocking work (database queries, storage calls) must not run on the
event loop: implementations run it in an executor or use a native async client.
``dji_media.testing`` holds the contract tests every implementation must pass.
"""
from __future__ import annotations

import abc
import asyncio
import datetime as _dt
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import StorageUnavailable
from .values import (
    FileGroup,
    FileQuery,
    GroupReport,
    Identity,
    ListingPage,
    MediaFile,
    MediaRecord,
    MissionCursor,
    MissionSummary,
    ObjectInfo,
    RecordCursor,
    SchemaMigration,
    StorageGrant,
)

log = logging.getLogger("dji_media.storage")


class _Closable:
    async def close(self) -> None:
        """Release connections and threads. Called once at shutdown; the default does nothing."""


class MediaStore(_Closable, abc.ABC):
    """Media records and file groups, scoped by workspace.

    Every method raises ``DatabaseUnavailable`` when the database cannot be read or written,
    and then has changed nothing.
    """

    @abc.abstractmethod
    async def get(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        """Return the record of (workspace, fingerprint), or None. Never a record without a
        fingerprint (a dock's file)."""

    @abc.abstractmethod
    async def find_by_tiny_fingerprints(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> List[MediaRecord]:
        """Return every record of the workspace whose tiny fingerprint is in the sequence.

        Any order; a tiny fingerprint may match several records. Must not cost a round trip per
        item: one query per batch (chunked where the database limits parameters).
        """

    @abc.abstractmethod
    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        """Insert or replace the record of (workspace, file.fingerprint) and return it.

        A file without a fingerprint (``file.fingerprint`` None: a dock's) is keyed by
        (workspace, ``file.object_key``) instead, with the same guarantees below; its
        ``public_id`` is kept across rewrites as for any record.

        Idempotent and safe under concurrency: any number of calls for the same key leave
        exactly one record, holding the last call's file, with a higher revision and
        ``verified_at``, ``etag`` and ``size`` cleared.

        One object key, one record: a record of the same workspace that holds the same
        ``object_key`` under another fingerprint is removed in the same transaction (the object's
        bytes were overwritten by this file). A store of an older release that does not do this
        still works: the storage sweep finds the overwritten object's new ETag or size and
        removes the older record then.
        """

    async def save(self, workspace_id: str, file: MediaFile) -> None:
        """Store ``file`` exactly as ``upsert`` does, for a caller that needs no record back
        (the upload callbacks: they answer once the write is durable).

        Has a usable default: ``upsert``, its record dropped. A store may override it to skip
        building that record (the peewee store does: on a busy callback route the build cost
        as much as a tenth of the request).
        """
        await self.upsert(workspace_id, file)

    @abc.abstractmethod
    async def forget(self, record: MediaRecord) -> bool:
        """Delete the record if it is still at ``record.revision``; return whether it was.

        A newer write of the same file (a re-upload that raced with a stale check) survives.
        A record without a fingerprint is found by (workspace, object key, revision).
        """

    async def mark_verified(self, records: Sequence[MediaRecord], when: _dt.datetime) -> None:
        """Remember that storage confirmed these records' objects at ``when``.

        Only rows still at the given revision are marked. The default does nothing, which
        only means every check asks storage again.
        """

    async def insert_missing(self, records: Sequence[MediaRecord]) -> List[bool]:
        """Store each record whose (workspace, fingerprint) is absent (for a record without a
        fingerprint: whose (workspace, object key) is absent), exactly as given
        (``revision``, ``created_at``, ``updated_at`` and ``verified_at`` included), and return,
        in order, whether each was inserted. For imports: a stored record is never changed (no
        revision bump), so running the same records again inserts nothing.

        Of several records with one key, only the first can be inserted. A record another
        writer stores meanwhile is reported not inserted and left as that writer made it.
        Raises ``BadRequest`` before writing anything if a record cannot be stored (as
        ``upsert`` does). Must not cost a round trip per record: a few statements per batch.
        The default raises ``NotImplementedError``: a store without it cannot be imported into.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support insert_missing (imports)")

    @abc.abstractmethod
    async def save_group(self, workspace_id: str, report: GroupReport) -> FileGroup:
        """Insert or replace the totals of (workspace, report.file_group_id); latest wins."""

    @abc.abstractmethod
    async def get_group(self, workspace_id: str, file_group_id: str) -> Optional[FileGroup]:
        """Return the stored group, or None."""

    async def save_mission_expectation(self, workspace_id: str, file_group_id: str,
                                       expected_file_count: int) -> FileGroup:
        """Record a mission's expected file count as a dock announced it (latest wins) and
        return the group. The counts a device reported (``save_group``) are kept; a group not
        yet known is created with counts of 0. The default raises ``NotImplementedError``
        (capability "mission_expectations", feature "docks")."""
        raise NotImplementedError(f"{type(self).__name__} does not record mission expectations (docks)")

    async def ping(self) -> None:
        """Prove the database can be read and written; raise ``DatabaseUnavailable`` if not."""

    # ------------------------------------------------- optional: storage truth (the sweep)
    # Defaults raise NotImplementedError (capability "sweep" in dji_media.capabilities), except
    # tiny_fingerprint_confirmations, which has a working default.

    async def tiny_fingerprint_confirmations(
        self, workspace_id: str, tiny_fingerprints: Sequence[str]
    ) -> Dict[str, Optional[_dt.datetime]]:
        """For each of the tiny fingerprints the workspace holds: the latest ``verified_at``
        among its records (None: none of them confirmed since its last write). Absent keys are
        not held. The hot path of tiny-fingerprints: a store should read only these columns and
        build no record. The default derives it from ``find_by_tiny_fingerprints``."""
        found: Dict[str, Optional[_dt.datetime]] = {}
        for record in await self.find_by_tiny_fingerprints(workspace_id, tiny_fingerprints):
            tiny = record.file.tiny_fingerprint
            if tiny is None:
                continue
            best = found.get(tiny)
            if record.verified_at is not None and (best is None or record.verified_at > best):
                found[tiny] = record.verified_at
            else:
                found.setdefault(tiny, None)
        return found

    async def workspaces(self) -> List[str]:
        """Every workspace id that holds at least one record, sorted."""
        raise NotImplementedError(f"{type(self).__name__} does not list workspaces (storage sweep)")

    async def records_by_object_key(self, workspace_id: str, after: Optional[str], upto: Optional[str],
                                    limit: int) -> List[MediaRecord]:
        """The workspace's records whose object key is > ``after`` (None: from the first) and
        <= ``upto`` (None: to the last), in object-key order (byte order of UTF-8, as S3 lists
        keys), at most ``limit``. One indexed range query."""
        raise NotImplementedError(f"{type(self).__name__} does not read records by object key (storage sweep)")

    async def confirm(self, confirmations: Sequence[Tuple[MediaRecord, ObjectInfo]], when: _dt.datetime) -> None:
        """Storage confirmed each record's object at ``when``: set ``verified_at``, and
        ``etag``/``size`` from the object where the record has none yet (the first
        confirmation records them; later ones never overwrite them). Only rows still at the
        record's revision are touched."""
        raise NotImplementedError(f"{type(self).__name__} does not record confirmations (storage sweep)")

    async def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or extend the lease ``name`` for ``holder`` until now + ``seconds``; True if
        ``holder`` holds it afterwards. A lease held by another holder and not yet expired is
        not taken. Shared by every process that uses the same database: this is how a
        periodic task runs once per deployment."""
        raise NotImplementedError(f"{type(self).__name__} has no leases (storage sweep)")

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up if ``holder`` holds it (another holder's lease is left alone)."""
        raise NotImplementedError(f"{type(self).__name__} has no leases (storage sweep)")

    async def load_task_state(self, name: str) -> Optional[str]:
        """The text a task saved under ``name`` (its progress, its last report), or None."""
        raise NotImplementedError(f"{type(self).__name__} keeps no task state (storage sweep)")

    async def save_task_state(self, name: str, holder: str, state: str) -> bool:
        """Save ``state`` under ``name`` if ``holder`` holds the lease ``name``; return whether
        it was saved (False: the lease was lost, and the caller must stop)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no task state (storage sweep)")

    async def migrate(self, dry_run: bool = False,
                      progress: Optional[Callable[[str], None]] = None) -> SchemaMigration:
        """Bring the database's schema to the version this release works with, in place
        (``dji-media migrate``); with ``dry_run``, change nothing and report what would be done.

        ``progress`` is called with each step's line as it starts (from a worker thread). Safe to
        run again, and alongside servers of this release. Raises ``SchemaMismatch`` for a schema
        newer than this release understands, ``DatabaseUnavailable`` when a step fails (naming
        the cause; what committed stays, and running it again continues). Every method of a
        store whose database is at another version raises ``SchemaMismatch``. The default, for
        a store without a versioned schema (in memory, say), has nothing to do.
        """
        return SchemaMigration(found=None, target=None, dry_run=dry_run)

    # ------------------------------------------------- optional: the media library (catalogue)
    # Defaults raise NotImplementedError (capability "catalogue" in dji_media.capabilities).

    async def find_records(self, query: FileQuery, limit: int,
                           after: Optional[RecordCursor] = None) -> List[MediaRecord]:
        """At most ``limit`` records of ``query.workspace_id`` that match ``query`` (see
        ``FileQuery.matches``), ordered by (created_at, public_id), descending when
        ``query.newest_first``, and strictly after ``after`` (the last record's (created_at,
        public_id) of the previous page) in that order: keyset pagination, so a page costs the
        same however deep, and rows written meanwhile never shift a page."""
        raise NotImplementedError(f"{type(self).__name__} cannot search records (media library)")

    async def count_records(self, query: FileQuery) -> int:
        """How many records match ``query``."""
        raise NotImplementedError(f"{type(self).__name__} cannot count records (media library)")

    async def get_by_public_id(self, workspace_id: str, public_id: str) -> Optional[MediaRecord]:
        """The workspace's record of that public id, or None (also for another workspace's)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read records by public id (media library)")

    async def remove_record(self, record: MediaRecord) -> bool:
        """Delete the record (by workspace and public id, whatever its revision: an operator
        asked for this file to go); return whether a row was deleted. Idempotent."""
        raise NotImplementedError(f"{type(self).__name__} cannot remove records (media library)")

    async def mission_summaries(self, workspace_id: str, limit: int,
                                after: Optional[MissionCursor] = None) -> List[MissionSummary]:
        """At most ``limit`` missions of the workspace: each stored file group and each distinct
        file_group_id among its records, by (updated_at, file_group_id) descending, strictly
        after ``after``."""
        raise NotImplementedError(f"{type(self).__name__} cannot summarise missions (media library)")


class ObjectStore(_Closable, abc.ABC):
    """Read-only questions about objects in the media bucket."""

    @abc.abstractmethod
    async def exists(self, object_key: str) -> bool:
        """True if the object is in the bucket, False if storage says definitely not (404).

        Any other outcome (timeout, refused connection, 5xx, 403, a missing bucket) raises
        ``StorageUnavailable``: it says nothing about the object and must never be taken for
        "gone".
        """

    async def exists_many(self, object_keys: Sequence[str], *, concurrency: int = 16) -> Dict[str, bool]:
        """``exists`` for many keys: each key storage answered, mapped to True or False.

        A key storage could not answer is left out (unknown), never reported False. Once one
        check has failed the checks not yet started are left out too, so an outage costs one
        timeout rather than one per key. The default asks ``exists`` for each distinct key, at
        most ``concurrency`` at a time; a backend may answer many keys per request instead.
        """
        limit = asyncio.Semaphore(concurrency)
        failed = asyncio.Event()
        answers: Dict[str, bool] = {}

        async def check(key: str) -> None:
            async with limit:
                if failed.is_set():
                    return
                try:
                    answers[key] = await self.exists(key)
                except StorageUnavailable as exc:
                    if not failed.is_set():
                        log.warning("storage could not answer for %r (%s); the checks not yet "
                                    "started are skipped", key, exc.message)
                    failed.set()

        await asyncio.gather(*(check(k) for k in dict.fromkeys(object_keys)))
        return answers

    async def ping(self) -> None:
        """Prove the bucket can be reached; raise ``StorageUnavailable`` if not."""

    async def stat(self, object_key: str) -> Optional[ObjectInfo]:
        """The object's ETag and size (a HEAD), or None if storage says definitely not (404);
        anything else raises ``StorageUnavailable``, as ``exists`` does. The default asks
        ``exists`` and knows neither ETag nor size."""
        return ObjectInfo(object_key) if await self.exists(object_key) else None

    async def list_page(self, prefix: str, start_after: Optional[str], limit: int = 1000) -> ListingPage:
        """One page of the keys under ``prefix`` (a folder: it ends with "/"), in key order,
        after ``start_after`` (exclusive; None: from the start), at most ``limit``. One
        storage request per page. Raises ``StorageUnavailable`` when the page cannot be read:
        a listing that failed says nothing about the keys it did not return. Optional
        (capability "sweep"): the default raises NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} cannot list objects (storage sweep)")

    # ------------------------------------------------- optional: the media library
    # Defaults raise NotImplementedError (capabilities "presign" and "object_delete").

    async def presign_get(self, object_key: str, expires_seconds: int, filename: Optional[str] = None,
                          inline: bool = False) -> str:
        """A URL a browser can GET the object with for ``expires_seconds``, without credentials
        of its own: signed for the endpoint the browser reaches (a store told of a public
        endpoint signs for that host). Unless ``inline``, the response carries
        ``Content-Disposition: attachment`` with ``filename`` (the browser saves the file under
        that name). Sends no request: it says nothing about whether the object exists.
        Raises ``StorageUnavailable`` if the URL cannot be made."""
        raise NotImplementedError(f"{type(self).__name__} cannot presign downloads (media library)")

    async def delete(self, object_key: str) -> None:
        """Delete the object. An object already gone is no error (idempotent); any failure to
        ask raises ``StorageUnavailable``, and then the object may still be there."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete objects (media library)")


# Credentials handed out must have at least this long to live, so a device can finish an upload.
MIN_CREDENTIAL_SECONDS = 900


class CredentialProvider(_Closable, abc.ABC):
    """Temporary credentials that let a device upload into one workspace's prefix."""

    @abc.abstractmethod
    def object_key_prefix(self, workspace_id: str) -> str:
        """The key prefix (no trailing slash) the workspace's devices upload under. Pure."""

    @abc.abstractmethod
    async def issue(self, workspace_id: str) -> StorageGrant:
        """Return credentials valid for uploads under ``object_key_prefix(workspace_id)``,
        with at least ``MIN_CREDENTIAL_SECONDS`` left (a cache must refresh before that).

        The credentials must not allow anything else (no read, list, delete, other prefix or
        bucket) where the storage supports scoping. Raises ``StorageUnavailable`` when they
        cannot be obtained; never returns a grant without credentials.
        """

    async def ping(self) -> None:
        """Prove credentials can be issued; the default issues a set for a probe workspace."""
        await self.issue("dji-media-check")


class Authenticator(_Closable, abc.ABC):
    """Turns the X-Auth-Token of a request into an identity: who it is, which workspaces it
    covers, which scopes it holds. What a request may do is decided elsewhere, once
    (``dji_media.access.authorize``, called by the service), so an authenticator never needs
    to know the endpoints.

    Authenticators written for the interface before scopes, ``authenticate(token,
    workspace_id)``, keep working: the service reads the signature once, when it is built (a
    second positional parameter without a default marks the old form), and then asks such an
    authenticator about the request's workspace. A token it accepts gets that one workspace and
    every scope, which is what its "yes" meant before; a warning in the log says so at start-up.
    Port it to ``authenticate(token)`` to give tokens less. An optional second parameter is
    never passed.
    """

    @abc.abstractmethod
    async def authenticate(self, token: Optional[str]) -> Identity:
        """Return the identity behind ``token``: its subject, the workspaces it may act on
        (``"*"``: any) and its scopes (``dji_media.access.ALL_SCOPES`` names them).

        Raises ``Unauthenticated`` for a missing, malformed, badly signed or expired token, and
        only then: Pilot 2 logs the pilot out on 401. A valid token that may do little is not
        an error here: it is an identity with few workspaces or scopes, refused later with
        ``Forbidden``. A valid token that can never be let in (a signed JWT naming no workspace)
        may raise ``Forbidden`` at once, with a message saying why.
        """
