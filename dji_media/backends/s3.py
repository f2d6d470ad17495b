"""Object storage backends on minio-py: object checks (HEAD), listing pages for the storage
sweep, and STS AssumeRole credentials.

Only standard S3 and STS calls are used, so the same code serves MinIO, AWS S3 and SeaweedFS.
minio-py is synchronous; every call runs in a bounded thread pool. What another vendor's
backend shares with these, the credential cache (``credentials``) and the endpoint and prefix
rules (``storage_paths``), lives in modules that import no client library. minio-py's and
urllib3's exceptions are translated in one place per backend: ``storage_errors`` for
``MinioObjectStore``, ``sts_errors`` for ``StsCredentialProvider``.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import logging
import threading
from typing import Any, Callable, Counter, Dict, Iterator, Optional, Sequence, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.credentials import AssumeRoleProvider
from minio.datatypes import parse_list_objects
from minio.error import S3Error

from ..errors import StorageUnavailable
from ..interfaces import MIN_CREDENTIAL_SECONDS, CredentialProvider, ObjectStore
from ..values import ListingPage, ObjectInfo, StorageGrant, UploadCredentials, content_disposition, utc_now
from ._blocking import BlockingRunner
from .credentials import CachingCredentialProvider, Clock, iam_upload_policy
from .storage_paths import check_prefix_template, check_provider, render_prefix, split_endpoint

log = logging.getLogger("dji_media.s3")

# A HEAD answered with one of these says the object is not there (once the bucket is known).
_GONE_CODES = ("NoSuchKey", "NotFound", "ResourceNotFound")
_STS_FAILED = "storage credentials could not be issued: STS is unreachable or refused the request"
_T = TypeVar("_T")


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


def _check_order(prefix: str, start_after: Optional[str], objects: Sequence[ObjectInfo]) -> None:
    """Refuses a page that is not in S3's key order (UTF-8 bytes, each key after the one
    before, the first after ``start_after``) or names a key outside ``prefix``.

    Whoever reads pages relies on that order to tell which keys a page covers: a key missing
    from the range a page spans is taken for gone. Some servers walk folders instead: SeaweedFS
    lists ``m/x.jpg`` before ``m.jpg`` and ``m 1/y.jpg`` (where S3 puts "/" after " ", "-" and
    "."), and continues after a key in its own order. Such a page, read as S3's, would make
    those keys look gone; failing is what "storage could not say" means here. Checking each key
    against the one before (the page's first against ``start_after``) finds every inversion,
    inside a page or where two pages meet.
    """
    previous = start_after.encode("utf-8") if start_after else b""
    for info in objects:
        current = info.key.encode("utf-8")
        if current <= previous or not info.key.startswith(prefix):
            log.error("storage listed %r after %r under %r: not S3's key order (UTF-8 bytes); a "
                      "listing in another order cannot be used", info.key, previous.decode("utf-8"),
                      prefix)
            raise StorageUnavailable("storage listed keys out of S3 key order")
        previous = current


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
    """Checks objects with S3 HEAD in one bucket, and reads the bucket one listing page at a
    time for the storage sweep (``list_page``). Requests never list: a listing's cost grows
    with the folder, a HEAD's does not.

    A 404 for the object is "gone" only once the bucket itself is confirmed to exist: a HEAD in
    a missing bucket also answers 404, and taking that for "every file is gone" would wipe the
    metadata of a whole fleet after a configuration slip.

    ``requests`` counts the storage requests sent so far by S3 operation (``HeadObject``,
    ``HeadBucket``, ``ListObjectsV2``), for tests and diagnostics: "a tiny-fingerprints request
    of 100 made no listing and at most 100 HEADs" is asserted on it. A request is counted once
    when it is sent, whatever its outcome; the HTTP retries of ``retries`` are not counted again.
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
        public_endpoint: Optional[str] = None,
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
        # Download URLs are signed for the host the browser will ask: SigV4 signs the Host
        # header, so a URL signed for the internal endpoint and rewritten later would be refused.
        # Presigning sends no request (the region is given), so this client never connects.
        public_netloc, public_secure = split_endpoint(public_endpoint or endpoint, key="public_endpoint")
        self.public_endpoint = (public_endpoint or endpoint).rstrip("/")
        self._public_client = Minio(
            public_netloc, access_key=access_key, secret_key=secret_key, secure=public_secure,
            region=region, http_client=http_client(timeout=timeout, retries=retries),
        ) if public_endpoint or client is None else client
        self._runner = BlockingRunner(executor=executor, max_workers=max_workers, name="dji-s3")
        self.requests: Counter[str] = collections.Counter()
        # Requests are sent from the worker threads: without the lock two counts could become one.
        self._requests_lock = threading.Lock()

    def _request(self, kind: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Sends one storage request (in the worker thread), counted in ``requests``."""
        with self._requests_lock:
            self.requests[kind] += 1
        return fn(*args, **kwargs)

    def _stat(self, object_key: str) -> Optional[ObjectInfo]:
        try:
            found = self._request("HeadObject", self._client.stat_object, self.bucket, object_key)
        except S3Error as exc:
            if not _is_absent(exc):
                raise
        else:
            # minio-py has already taken the quotes off the ETag; an answer without one gives "".
            return ObjectInfo(object_key, etag=found.etag or None, size=found.size)
        # A HEAD in a missing bucket answers 404 too: only an existing bucket makes it "absent".
        self._check_bucket()
        return None

    def _check_bucket(self) -> None:
        if not self._request("HeadBucket", self._client.bucket_exists, self.bucket):
            raise StorageUnavailable(f"bucket {self.bucket!r} does not exist")

    def _list_page(self, prefix: str, start_after: Optional[str], limit: int) -> ListingPage:
        # Exactly one ListObjectsV2 request. minio-py's list_objects cannot send it: it always
        # asks for 1,000 keys and, a generator following continuation tokens, sends further
        # requests as it is read. So the request goes through the client's own _execute
        # (signing, region, error answers as S3Error) and minio-py's parse_list_objects reads
        # it. Delimiter and prefix are sent even when empty, as list_objects does: a bucket
        # policy with conditions on them is evaluated only then. No delimiter: every key under
        # the prefix, mission folders included. encoding-type=url keeps any key legal in XML.
        query: Dict[str, Any] = {
            "list-type": "2", "prefix": prefix, "delimiter": "", "max-keys": str(limit),
            "encoding-type": "url",
        }
        if start_after:
            query["start-after"] = start_after
        response = self._request("ListObjectsV2", self._client._execute, "GET", self.bucket,
                                 query_params=query)
        found, truncated, _, _ = parse_list_objects(response)
        objects = tuple(ObjectInfo(o.object_name, etag=o.etag or None, size=o.size)
                        for o in found if o.object_name is not None)
        if truncated and not objects:
            # Nothing to continue after: reporting the end would let the sweep take every
            # later key for gone.
            raise StorageUnavailable("storage answered an empty listing page that is not the last")
        _check_order(prefix, start_after, objects)
        return ListingPage(objects, objects[-1].key if truncated else None)

    @staticmethod
    def _guarded(fn, *args):
        """Runs one blocking call behind the boundary (in the worker thread)."""
        with storage_errors():
            return fn(*args)

    async def exists(self, object_key: str) -> bool:
        return await self._runner.run(self._guarded, self._stat, object_key) is not None

    async def stat(self, object_key: str) -> Optional[ObjectInfo]:
        """HEAD: the object's ETag (without quotes) and size, None for a definite 404 in an
        existing bucket, ``StorageUnavailable`` otherwise."""
        return await self._runner.run(self._guarded, self._stat, object_key)

    async def list_page(self, prefix: str, start_after: Optional[str], limit: int = 1000) -> ListingPage:
        """One ListObjectsV2 request (max-keys ``limit``, start-after ``start_after``, no
        delimiter). S3 answers at most 1,000 keys per request whatever ``limit`` says, and
        ``next_start_after`` is set whenever storage says more keys follow."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return await self._runner.run(self._guarded, self._list_page, prefix, start_after, limit)

    async def presign_get(self, object_key: str, expires_seconds: int, filename: Optional[str] = None,
                          inline: bool = False) -> str:
        """A presigned GET on the public endpoint (``public_endpoint``, else ``endpoint``),
        with ``response-content-disposition`` unless ``inline``. Computed here, no request."""
        if not 1 <= expires_seconds <= 7 * 24 * 3600:  # SigV4's limit
            raise ValueError("expires_seconds must be between 1 and 604800")
        headers: Optional[Dict[str, Any]] = None
        if not inline:
            headers = {"response-content-disposition": content_disposition(filename)}
        with storage_errors():
            return self._public_client.presigned_get_object(
                self.bucket, object_key, expires=_dt.timedelta(seconds=expires_seconds), response_headers=headers)

    def _delete(self, object_key: str) -> None:
        try:
            self._request("DeleteObject", self._client.remove_object, self.bucket, object_key)
        except S3Error as exc:
            # S3 answers 204 for a key that is not there; a server that answers 404 means the same.
            if not _is_absent(exc):
                raise

    async def delete(self, object_key: str) -> None:
        """DeleteObject: an object already gone is no error; anything else StorageUnavailable."""
        await self._runner.run(self._guarded, self._delete, object_key)

    async def ping(self) -> None:
        await self._runner.run(self._guarded, self._check_bucket)

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
