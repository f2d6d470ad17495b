"""Object storage backends on minio-py: object checks (HEAD, listings) and STS AssumeRole credentials.

Only standard S3 and STS calls are used, so the same code serves MinIO, AWS S3 and SeaweedFS.
minio-py is synchronous; every call runs in a bounded thread pool.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.credentials import AssumeRoleProvider
from minio.error import S3Error

from ..errors import StorageUnavailable
from ..interfaces import MIN_CREDENTIAL_SECONDS, CredentialProvider, ObjectStore
from ..values import StorageGrant, UploadCredentials, utc_now
from ._blocking import BlockingRunner
from .s3_listing import group_by_directory, list_directory

log = logging.getLogger("dji_media.s3")

PROVIDERS = ("minio", "aws", "ali")
_GONE_CODES = ("NoSuchKey", "NotFound", "ResourceNotFound")


def split_endpoint(endpoint: str, *, key: str = "endpoint") -> Tuple[str, bool]:
    """``http://host:port`` to (``host:port``, secure). The scheme is required."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"{key} must look like http://host:port or https://host, got {endpoint!r}")
    return parts.netloc, parts.scheme == "https"


def http_client(*, timeout: float, retries: int) -> urllib3.PoolManager:
    """A pool with bounded timeouts: an outage must answer in seconds, not hang a request."""
    return _LoggingPool(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=urllib3.Retry(total=retries, backoff_factor=0.1,
                              status_forcelist=[500, 502, 503, 504], raise_on_status=False),
        maxsize=16,
    )


class _LoggingPool(urllib3.PoolManager):
    """Logs the body of a failed STS answer: minio-py reports only the status, and the
    storage's exact complaint (for example MinIO's AssumeRole 403) is what an operator needs."""

    def urlopen(self, method, url, redirect=True, **kw):  # noqa: D401 - urllib3 signature
        response = super().urlopen(method, url, redirect=redirect, **kw)
        if response.status >= 400 and "Action=AssumeRole" in str(kw.get("body") or ""):
            log.error("STS AssumeRole at %s answered %s: %s", urlsplit(url).netloc,
                      response.status, response.data[:2000].decode("utf-8", "replace"))
        return response


class MinioObjectStore(ObjectStore):
    """Checks objects with S3 HEAD in one bucket.

    A 404 for the object is "gone" only once the bucket itself is confirmed to exist: a HEAD in
    a missing bucket also answers 404, and taking that for "every file is gone" would wipe the
    metadata of a whole fleet after a configuration slip.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        timeout: float = 3.0,
        # No retry by default: a failed check answers "unknown" (the device uploads again),
        # which is cheaper than making every request wait twice during an outage.
        retries: int = 0,
        max_workers: int = 16,
        client: Optional[Minio] = None,
        executor: Any = None,
    ) -> None:
        netloc, secure = split_endpoint(endpoint)
        if not bucket:
            raise ValueError("bucket must not be empty")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.bucket = bucket
        self.endpoint = endpoint
        # region is given so minio-py never spends a request asking for the bucket's location.
        self._client = client or Minio(
            netloc, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
            http_client=http_client(timeout=timeout, retries=retries),
        )
        self._runner = BlockingRunner(executor=executor, max_workers=max_workers, name="dji-s3")
        self._warned_list_denied = False

    def _head(self, object_key: str) -> bool:
        try:
            self._client.stat_object(self.bucket, object_key)
            return True
        except S3Error as exc:
            if exc.code in _GONE_CODES:
                if not self._client.bucket_exists(self.bucket):
                    raise StorageUnavailable(f"bucket {self.bucket!r} does not exist") from None
                return False
            raise StorageUnavailable(f"storage answered {exc.code}") from None

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except StorageUnavailable:
            raise
        except S3Error as exc:
            raise StorageUnavailable(f"storage answered {exc.code}") from None
        except Exception as exc:  # urllib3 connection/timeouts, minio's ServerError, ...
            raise StorageUnavailable(f"storage is unreachable ({type(exc).__name__})") from None

    async def exists(self, object_key: str) -> bool:
        return await self._runner.run(self._guarded, self._head, object_key)

    async def exists_many(self, object_keys: Sequence[str], *, concurrency: int = 16) -> Dict[str, bool]:
        """Keys that share a directory are answered by listing it (see ``s3_listing``), the
        others by HEAD. A 500-key tiny-fingerprints check costs a few listings, not 500 HEADs."""
        listed, single = group_by_directory(list(dict.fromkeys(object_keys)))
        answers: Dict[str, bool] = {}
        failures: List[StorageUnavailable] = []

        async def listing(directory: str, members: List[str]) -> List[str]:
            try:
                found, rest = await self._runner.run(self._guarded, self._list, directory, members)
            except StorageUnavailable as exc:
                failures.append(exc)
                return []
            answers.update(found)
            return rest

        rests = await asyncio.gather(*(listing(d, m) for d, m in listed.items()))
        if failures:  # storage is not answering: the HEADs would only wait for it too
            log.warning("storage could not list %d director(ies) (%s); %d key(s) left unknown",
                        len(failures), failures[0].message, len(object_keys) - len(answers))
            return answers
        heads = single + [key for rest in rests for key in rest]
        if heads:
            answers.update(await super().exists_many(heads, concurrency=concurrency))
        return answers

    def _list(self, directory: str, keys: List[str]) -> Tuple[Dict[str, bool], List[str]]:
        try:
            return list_directory(self._client, self.bucket, directory, keys)
        except S3Error as exc:
            if exc.code != "AccessDenied":
                raise
            # An identity allowed to HEAD but not to list: still correct, one HEAD per key.
            if not self._warned_list_denied:
                self._warned_list_denied = True
                log.warning("storage refused to list %r (AccessDenied); checking objects one by one. "
                            "Grant s3:ListBucket on the bucket to this server's identity.", directory)
            return {}, keys

    async def ping(self) -> None:
        def check() -> None:
            if not self._client.bucket_exists(self.bucket):
                raise StorageUnavailable(f"bucket {self.bucket!r} does not exist")

        await self._runner.run(self._guarded, check)

    async def close(self) -> None:
        self._runner.close()


def upload_policy(bucket: str, prefix: str) -> str:
    """The session policy: create objects under ``prefix/`` (multipart included), nothing else."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
            "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
        }],
    }, separators=(",", ":"))


def render_prefix(template: str, workspace_id: str) -> str:
    return template.format(workspace_id=workspace_id).strip("/")


def _check_prefix_template(template: str) -> None:
    try:
        sample = render_prefix(template, "ws")
    except (KeyError, IndexError, ValueError):
        raise ValueError("prefix_template may use only {workspace_id}") from None
    if "{workspace_id}" not in template or not sample or "*" in template or "?" in template:
        raise ValueError("prefix_template must contain {workspace_id} and no wildcards")


class StsCredentialProvider(CredentialProvider):
    """Temporary credentials from STS AssumeRole, scoped by a session policy to one prefix.

    :param endpoint: where this server reaches storage and STS.
    :param public_endpoint: what devices are told (they often sit on another network).
    :param prefix_template: the workspace's key prefix, e.g. ``media/{workspace_id}``.
    :param duration_seconds: requested lifetime (minio-py asks for at least 3600).
    :param refresh_before: cached credentials are reused while they have more than this many
        seconds left, then replaced (at least MIN_CREDENTIAL_SECONDS).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        public_endpoint: Optional[str] = None,
        sts_endpoint: Optional[str] = None,
        region: str = "us-east-1",
        provider: str = "minio",
        prefix_template: str = "media/{workspace_id}",
        duration_seconds: int = 3600,
        refresh_before: int = 1800,
        role_arn: Optional[str] = None,
        role_session_name: str = "dji-media",
        timeout: float = 10.0,
        retries: int = 1,
        max_workers: int = 4,
        executor: Any = None,
    ) -> None:
        split_endpoint(endpoint)
        split_endpoint(public_endpoint or endpoint, key="public_endpoint")
        split_endpoint(sts_endpoint or endpoint, key="sts_endpoint")
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")
        if not bucket:
            raise ValueError("bucket must not be empty")
        # minio-py asks STS for at least 3600 s whatever is set, so lower values would mislead.
        if not 3600 <= duration_seconds <= 43200:
            raise ValueError("duration_seconds must be between 3600 and 43200")
        if not MIN_CREDENTIAL_SECONDS <= refresh_before < duration_seconds:
            raise ValueError(f"refresh_before must be >= {MIN_CREDENTIAL_SECONDS} and below duration_seconds")
        _check_prefix_template(prefix_template)
        self.bucket = bucket
        self.public_endpoint = (public_endpoint or endpoint).rstrip("/")
        self.region = region
        self.provider = provider
        self.prefix_template = prefix_template
        self.refresh_before = refresh_before
        self._sts_endpoint = (sts_endpoint or endpoint).rstrip("/")
        self._access_key = access_key
        self._secret_key = secret_key
        self._duration = duration_seconds
        self._role_arn = role_arn
        self._session_name = role_session_name
        self._http = http_client(timeout=timeout, retries=retries)
        self._runner = BlockingRunner(executor=executor, max_workers=max_workers, name="dji-sts")
        self._cache: Dict[str, UploadCredentials] = {}
        self._grants: Dict[str, StorageGrant] = {}
        self._locks: Dict[str, asyncio.Lock] = {}

    def object_key_prefix(self, workspace_id: str) -> str:
        return render_prefix(self.prefix_template, workspace_id)

    def _assume_role(self, prefix: str) -> UploadCredentials:
        try:
            creds = AssumeRoleProvider(
                sts_endpoint=self._sts_endpoint, access_key=self._access_key,
                secret_key=self._secret_key, duration_seconds=self._duration,
                policy=upload_policy(self.bucket, prefix), region=self.region,
                role_arn=self._role_arn, role_session_name=self._session_name,
                http_client=self._http,
            ).retrieve()
        except Exception as exc:  # ValueError (HTTP status), urllib3 errors, XML errors
            log.error("STS AssumeRole failed: %s: %s", type(exc).__name__, exc)
            raise StorageUnavailable("storage credentials could not be issued: STS is unreachable "
                                     "or refused the request") from None
        expires = creds.expiration
        if expires is None:
            raise StorageUnavailable("storage credentials could not be issued: STS gave no expiry")
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=_dt.timezone.utc)
        return UploadCredentials(access_key_id=creds.access_key, secret_access_key=creds.secret_key,
                                 session_token=creds.session_token, expires_at=expires)

    async def issue(self, workspace_id: str) -> StorageGrant:
        prefix = self.object_key_prefix(workspace_id)
        creds = self._cache.get(prefix)
        if creds is not None and creds.seconds_left(utc_now()) > self.refresh_before:
            return self._grant(prefix, creds)  # nearly every call: no lock, no STS
        lock = self._locks.setdefault(prefix, asyncio.Lock())
        async with lock:  # one STS call per prefix at a time; the others reuse its answer
            creds = self._cache.get(prefix)
            if creds is None or creds.seconds_left(utc_now()) <= self.refresh_before:
                try:
                    creds = await self._runner.run(self._assume_role, prefix)
                except StorageUnavailable:
                    # A failed refresh keeps handing out credentials that are still good enough.
                    if creds is None or creds.seconds_left(utc_now()) < MIN_CREDENTIAL_SECONDS:
                        raise
                    log.warning("STS refresh failed; reusing credentials valid for %.0f s more",
                                creds.seconds_left())
                else:
                    self._cache[prefix] = creds
        return self._grant(prefix, creds)

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


class StaticCredentialProvider(CredentialProvider):
    """Fixed credentials, for development against a storage without STS. They are NOT scoped:
    every device gets the configured key's full rights. Never use it in production."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        session_token: Optional[str] = None,
        region: str = "us-east-1",
        provider: str = "minio",
        prefix_template: str = "media/{workspace_id}",
        expire_seconds: int = 3600,
    ) -> None:
        split_endpoint(endpoint)
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")
        if expire_seconds < MIN_CREDENTIAL_SECONDS:
            raise ValueError(f"expire_seconds must be >= {MIN_CREDENTIAL_SECONDS}")
        _check_prefix_template(prefix_template)
        self._grant_fields = dict(bucket=bucket, endpoint=endpoint.rstrip("/"), region=region,
                                  provider=provider)
        self._keys = (access_key, secret_key, session_token)
        self.prefix_template = prefix_template
        self.expire_seconds = expire_seconds

    def object_key_prefix(self, workspace_id: str) -> str:
        return render_prefix(self.prefix_template, workspace_id)

    async def issue(self, workspace_id: str) -> StorageGrant:
        access_key, secret_key, token = self._keys
        creds = UploadCredentials(
            access_key_id=access_key, secret_access_key=secret_key, session_token=token,
            expires_at=utc_now() + _dt.timedelta(seconds=self.expire_seconds),
        )
        return StorageGrant(object_key_prefix=self.object_key_prefix(workspace_id),
                            credentials=creds, **self._grant_fields)
