"""Temporary upload credentials from any vendor's STS: the cache written once, the call per vendor.

A provider for a storage vendor subclasses ``CachingCredentialProvider`` and writes two things:

- ``fetch(prefix, policy)``, its STS call: blocking, run by the base in a bounded thread pool
  (every vendor's STS client, minio-py's ``AssumeRoleProvider`` included, is synchronous);
- its session-policy format, a ``PolicyBuilder``: ``(bucket, prefix) -> policy document text``.
  ``iam_upload_policy`` is the AWS IAM one, which MinIO and SeaweedFS read too.

The base does the rest, the same for every vendor: the key prefix of a workspace, one cached
set of credentials per prefix reused until ``refresh_before`` seconds before expiry, a single
STS call however many requests for the prefix arrive meanwhile, and still-valid credentials
handed out when a refresh fails (StorageUnavailable only when none with at least
MIN_CREDENTIAL_SECONDS left are cached). The clock is a constructor argument so that tests age
the cache without touching its internals.

This module imports no storage client library: ``dji_media.backends.s3`` holds the minio one.
"""
from __future__ import annotations

import abc
import asyncio
import datetime as _dt
import functools
import json
import logging
from typing import Any, Callable, Dict

from ..errors import StorageUnavailable
from ..interfaces import MIN_CREDENTIAL_SECONDS, CredentialProvider
from ..values import StorageGrant, UploadCredentials, utc_now
from ._blocking import BlockingRunner
from .storage_paths import check_prefix_template, check_provider, render_prefix, split_endpoint

# (bucket, prefix) -> the session policy document, as the vendor's STS takes it.
PolicyBuilder = Callable[[str, str], str]
# Returns the current time as an aware UTC datetime.
Clock = Callable[[], _dt.datetime]

# What a device may do with its credentials: create objects (multipart included, which S3
# authorises as PutObject), abort a multipart upload and list its parts. Nothing else.
IAM_UPLOAD_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")


def iam_upload_policy(bucket: str, prefix: str) -> str:
    """The AWS IAM session policy (MinIO and SeaweedFS read the same): the upload actions on
    ``<bucket>/<prefix>/*`` only; no read, list, delete, other prefix or other bucket."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": list(IAM_UPLOAD_ACTIONS),
            "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
        }],
    }, separators=(",", ":"))


class CachingCredentialProvider(CredentialProvider):
    """A ``CredentialProvider`` that caches per prefix; subclasses implement ``fetch`` only.

    :param bucket: bucket reported to devices and given to the policy builder.
    :param public_endpoint: the endpoint devices are told (``http(s)://host[:port]``).
    :param policy: the vendor's ``PolicyBuilder``, e.g. ``iam_upload_policy``.
    :param region: reported to devices.
    :param provider: reported to devices: ``minio``, ``aws`` or ``ali``.
    :param prefix_template: the workspace's key prefix, e.g. ``media/{workspace_id}``.
    :param refresh_before: cached credentials are reused while they have more than this many
        seconds left (at least MIN_CREDENTIAL_SECONDS), then fetched again.
    :param clock: returns the current aware UTC datetime; tests pass a fake one.
    :param max_workers: threads for ``fetch`` when no ``executor`` is given.
    :param executor: a host's executor to run ``fetch`` in (shared, not shut down by ``close``).
    """

    # Where the cache's warnings go; a vendor's module points it at its own logger, so that an
    # operator finds every message about that storage under one name.
    logger = logging.getLogger("dji_media.credentials")

    def __init__(
        self,
        *,
        bucket: str,
        public_endpoint: str,
        policy: PolicyBuilder,
        region: str = "us-east-1",
        provider: str = "minio",
        prefix_template: str = "media/{workspace_id}",
        refresh_before: int = 1800,
        clock: Clock = utc_now,
        max_workers: int = 4,
        executor: Any = None,
    ) -> None:
        split_endpoint(public_endpoint, key="public_endpoint")
        check_provider(provider)
        if not bucket:
            raise ValueError("bucket must not be empty")
        if refresh_before < MIN_CREDENTIAL_SECONDS:
            raise ValueError(f"refresh_before must be >= {MIN_CREDENTIAL_SECONDS}")
        check_prefix_template(prefix_template)
        # ValueError, as for every refused option: the configuration reports it with its key
        # (a YAML file can name these options, though only code can give them a callable).
        if not callable(policy):
            raise ValueError("policy must be a callable (bucket, prefix) -> policy document")
        if not callable(clock):
            raise ValueError("clock must be a callable returning an aware UTC datetime")
        self.bucket = bucket
        self.public_endpoint = public_endpoint.rstrip("/")
        self.region = region
        self.provider = provider
        self.prefix_template = prefix_template
        self.refresh_before = refresh_before
        self._policy = policy
        self._clock = clock
        self._runner = BlockingRunner(executor=executor, max_workers=max_workers, name="dji-sts")
        self._cache: Dict[str, UploadCredentials] = {}
        self._grants: Dict[str, StorageGrant] = {}
        self._inflight: Dict[str, "asyncio.Task[UploadCredentials]"] = {}

    @abc.abstractmethod
    def fetch(self, prefix: str, policy: str) -> UploadCredentials:
        """Ask the vendor's STS for new credentials restricted by ``policy``. Blocking.

        ``policy`` is the policy builder's document for ``(bucket, prefix)``; send it as the
        session policy. Return credentials with an aware UTC ``expires_at``. Raise
        ``StorageUnavailable`` when STS cannot be asked or refuses, with a message safe to show
        a client (the detail goes to the log); anything else the client library raises must be
        translated first. Runs in a worker thread, never on the event loop: calls for different
        prefixes may run at the same time, never two for one prefix.
        """

    def object_key_prefix(self, workspace_id: str) -> str:
        return render_prefix(self.prefix_template, workspace_id)

    async def issue(self, workspace_id: str) -> StorageGrant:
        prefix = self.object_key_prefix(workspace_id)
        creds = self._cache.get(prefix)
        if creds is None or creds.seconds_left(self._clock()) <= self.refresh_before:
            creds = await self._refreshed(prefix)
        return self._grant(prefix, creds)  # nearly every call: straight from the cache

    async def _refreshed(self, prefix: str) -> UploadCredentials:
        """Joins the refresh of ``prefix`` in flight, or starts it: every request waiting at
        the same time shares one fetch and its outcome, success or failure (with a lock, each
        waiter would retry in turn after a failure, and in an outage the last one would wait
        for every timeout before it)."""
        loop = asyncio.get_running_loop()
        task = self._inflight.get(prefix)
        # A task of another event loop (a host that ran the provider in a loop since closed)
        # cannot be awaited here.
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._refresh(prefix))
            self._inflight[prefix] = task
            task.add_done_callback(functools.partial(self._landed, prefix))
        # Shielded: a request that gives up (its client left) must not cancel the fetch that
        # the other requests are waiting on.
        return await asyncio.shield(task)

    def _landed(self, prefix: str, task: "asyncio.Task[UploadCredentials]") -> None:
        if self._inflight.get(prefix) is task:
            del self._inflight[prefix]
        if not task.cancelled():
            task.exception()  # marks it retrieved: every waiter may have given up already

    async def _refresh(self, prefix: str) -> UploadCredentials:
        cached = self._cache.get(prefix)
        try:
            creds = await self._runner.run(self.fetch, prefix, self._policy(self.bucket, prefix))
            left = creds.seconds_left(self._clock())
            if left < MIN_CREDENTIAL_SECONDS:  # the interface promises at least that much
                self.logger.error("STS gave credentials for %r that expire in %.0f s", prefix, left)
                raise StorageUnavailable("storage credentials could not be issued: STS gave "
                                         "credentials that expire too soon")
        except StorageUnavailable:
            left = cached.seconds_left(self._clock()) if cached is not None else 0.0
            if cached is None or left < MIN_CREDENTIAL_SECONDS:
                raise
            # A failed refresh keeps handing out credentials that are still good enough; the
            # next request past refresh_before tries STS again.
            self.logger.warning("STS refresh failed; reusing credentials valid for %.0f s more", left)
            return cached
        self._cache[prefix] = creds
        return creds

    def _grant(self, prefix: str, creds: UploadCredentials) -> StorageGrant:
        """The grant for these credentials, built once per credentials (values are frozen)."""
        grant = self._grants.get(prefix)
        if grant is None or grant.credentials is not creds:
            grant = StorageGrant(bucket=self.bucket, endpoint=self.public_endpoint, region=self.region,
                                 provider=self.provider, object_key_prefix=prefix, credentials=creds)
            self._grants[prefix] = grant
        return grant

    async def close(self) -> None:
        self._runner.close()

