"""Object storage backends on minio-py: object checks (HEAD, listings) and STS AssumeRole credentials.

Only standard S3 and STS calls are used, so the same code serves MinIO, AWS S3 and SeaweedFS.
minio-py is synchronous; every call runs in a bounded thread pool. What another vendor's
backend shares with these, the credential cache (``credentials``) and the endpoint and prefix
rules (``storage_paths``), lives in modules that import no client library. minio-py's and
urllib3's exceptions are translated in one place per backend: ``storage_errors`` for
``MinioObjectStore``, ``sts_errors`` for ``StsCredentialProvider``.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.credentials import AssumeRoleProvider
from minio.error import S3Error

from ..errors import StorageUnavailable
from ..interfaces import MIN_CREDENTIAL_SECONDS, CredentialProvider, ObjectStore
from ..values import StorageGrant, UploadCredentials, utc_now
from ._blocking import BlockingRunner
from .credentials import CachingCredentialProvider, Clock, iam_upload_policy
from .s3_listing import group_by_directory, list_directory
from .storage_paths import check_prefix_template, check_provider, render_prefix, split_endpoint

log = logging.getLogger("dji_media.s3")

# A HEAD answered with one of these says the object is not there (once the bucket is known).
_GONE_CODES = ("NoSuchKey", "NotFound", "ResourceNotFound")
_STS_FAILED = "storage credentials could not be issued: STS is unreachable or refused the request"


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """MinioObjectStore's one boundary: whatever minio-py or urllib3 raise becomes
    StorageUnavailable with a message that names no key, secret or URL.

    Everything is translated, not only S3Error, urllib3's HTTPError and OSError: minio-py also
    raises ServerError, InvalidResponseError and ValueError or XML errors for an answer it cannot
    read, and each means "storage could not be asked", never "the object is gone".
    """
    try:
        yield
    except StorageUnavailable:
        raise
    except S3Error as exc:
        raise StorageUnavailable(f"storage answered {exc.code}") from None
    except Exception as exc:  # urllib3 connection errors and timeouts, OSError, minio's others
        raise StorageUnavailable(f"storage is unreachable ({type(exc).__name__})") from None


@contextlib.contextmanager
def sts_errors() -> Iterator[None]:
    """StsCredentialProvider's one boundary: a failed AssumeRole becomes StorageUnavailable.
    minio-py reports an STS error status as ValueError, a broken answer as an XML error, a
    connection failure as urllib3's; the detail goes to the log, never to the client."""
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as exc:
        log.error("STS AssumeRole failed: %s: %s", type(exc).__name__, exc)
        raise StorageUnavailable(_STS_FAILED) from None


def _is_absent(exc: S3Error) -> bool:
    """A HEAD's definite "no such object" (S3 answers 404 without a body to HEAD)."""
    return exc.code in _GONE_CODES


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

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:  # type: ignore[override]
        # urllib3 declares body/headers/... by name on the base; this override passes them on.
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
            if not _is_absent(exc):
                raise
        # A HEAD in a missing bucket answers 404 too: only an existing bucket makes it "absent".
        if not self._client.bucket_exists(self.bucket):
            raise StorageUnavailable(f"bucket {self.bucket!r} does not exist")
        return False

    @staticmethod
    def _guarded(fn, *args):
        """Runs one blocking call behind the boundary (in the worker thread)."""
        with storage_errors():
            return fn(*args)

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


class StsCredentialProvider(CachingCredentialProvider):
    """Temporary credentials from STS AssumeRole, scoped by a session policy to one prefix.

    Only the STS call is here (minio-py's ``AssumeRoleProvider``) and the policy format
    (``iam_upload_policy``); ``CachingCredentialProvider`` caches, refreshes and falls back.

    :param endpoint: where this server reaches storage and STS.
    :param public_endpoint: what devices are told (they often sit on another network).
    :param prefix_template: the workspace's key prefix, e.g. ``media/{workspace_id}``.
    :param duration_seconds: requested lifetime (minio-py asks for at least 3600).
    :param refresh_before: cached credentials are reused while they have more than this many
        seconds left, then replaced (at least MIN_CREDENTIAL_SECONDS).
    :param clock: returns the current aware UTC datetime (tests age the cache with it).
    """

    logger = log

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
        clock: Clock = utc_now,
    ) -> None:
        split_endpoint(endpoint)
        split_endpoint(public_endpoint or endpoint, key="public_endpoint")
        split_endpoint(sts_endpoint or endpoint, key="sts_endpoint")
        # minio-py asks STS for at least 3600 s whatever is set, so lower values would mislead.
        if not 3600 <= duration_seconds <= 43200:
            raise ValueError("duration_seconds must be between 3600 and 43200")
        if not MIN_CREDENTIAL_SECONDS <= refresh_before < duration_seconds:
            raise ValueError(f"refresh_before must be >= {MIN_CREDENTIAL_SECONDS} and below duration_seconds")
        super().__init__(
            bucket=bucket, public_endpoint=public_endpoint or endpoint, policy=iam_upload_policy,
            region=region, provider=provider, prefix_template=prefix_template,
            refresh_before=refresh_before, clock=clock, max_workers=max_workers, executor=executor,
        )
        self._sts_endpoint = (sts_endpoint or endpoint).rstrip("/")
        self._access_key = access_key
        self._secret_key = secret_key
        self._duration = duration_seconds
        self._role_arn = role_arn
        self._session_name = role_session_name
        self._http = http_client(timeout=timeout, retries=retries)

    def fetch(self, prefix: str, policy: str) -> UploadCredentials:
        with sts_errors():
            # Keywords only (minio-py 7.2 requires them), and the session name always: SeaweedFS
            # refuses an AssumeRole without one.
            creds = AssumeRoleProvider(
                sts_endpoint=self._sts_endpoint, access_key=self._access_key,
                secret_key=self._secret_key, duration_seconds=self._duration,
                policy=policy, region=self.region,
                role_arn=self._role_arn, role_session_name=self._session_name,
                http_client=self._http,
            ).retrieve()
        expires = creds.expiration
        if expires is None:
            raise StorageUnavailable("storage credentials could not be issued: STS gave no expiry")
        if expires.tzinfo is None:  # minio-py parses STS's UTC timestamp without a zone
            expires = expires.replace(tzinfo=_dt.timezone.utc)
        return UploadCredentials(access_key_id=creds.access_key, secret_access_key=creds.secret_key,
                                 session_token=creds.session_token, expires_at=expires)


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
        check_provider(provider)
        if expire_seconds < MIN_CREDENTIAL_SECONDS:
            raise ValueError(f"expire_seconds must be >= {MIN_CREDENTIAL_SECONDS}")
        check_prefix_template(prefix_template)
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
