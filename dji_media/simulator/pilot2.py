"""DJI Pilot 2's upload flow, played against a running dji_media deployment.

For a generated mission (``media.generate_mission``) it does what the controller does
(doc/protocol.md, section 3), over the network, with nothing faked on the server side:

1. ``tiny-fingerprints`` for every file of the mission; the ones the server holds are skipped;
2. ``fast-upload`` for each other file; ``code 0`` means the server holds it too, and it is skipped;
3. ``sts`` once, before the first upload (and again should the credentials come close to expiry);
4. a PUT of the file into the bucket named by ``sts``, at the endpoint it names, signed with the
   temporary credentials (minio-py), under ``<object_key_prefix>/<mission folder>/<name>``, or
   ``<object_key_prefix>/<name>`` with ``flat``: the two layouts Pilot 2 writes;
5. ``upload-callback`` for that file, with the fields Pilot 2 sends;
6. ``group-upload-callback`` for the mission, once every file was handled.

Synchronous (the standard library's HTTP client and minio-py), so a test or a script calls
``run`` directly. The first step that fails raises ``DjiMediaError`` with one line that names it,
e.g. ``sts answered HTTP 503, code 503: ...``; the token and the secrets are never in a message.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error

from ..errors import DjiMediaError
from .media import GeneratedFile, Mission

__all__ = ["DRONE_MODEL_KEY", "PAYLOAD_MODEL_KEY", "FileOutcome", "Report", "object_key", "run"]

# A DJI M30T and its camera, as DJI's device dictionary keys them (the protocol's example).
DRONE_MODEL_KEY = "0-67-0"
PAYLOAD_MODEL_KEY = "1-53-0"
DEFAULT_TIMEOUT = 30.0
# Asked again this long before the sts answer's "expire" runs out, so no PUT starts on keys
# about to lapse.
_RENEW_BEFORE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class FileOutcome:
    """What happened to one file: uploaded (and reported), or skipped because the server holds it."""

    file: GeneratedFile
    uploaded: bool
    object_key: Optional[str]  # where it was put; None when skipped
    known_by: Optional[str]    # for a skipped file, the endpoint that said the server holds it


@dataclasses.dataclass(frozen=True)
class Report:
    mission: Mission
    workspace: str
    outcomes: Tuple[FileOutcome, ...]

    @property
    def uploaded(self) -> List[FileOutcome]:
        return [o for o in self.outcomes if o.uploaded]

    @property
    def skipped(self) -> List[FileOutcome]:
        return [o for o in self.outcomes if not o.uploaded]


def object_key(prefix: str, mission: Mission, file: GeneratedFile, flat: bool = False) -> str:
    """The key Pilot 2 writes a file under: ``<prefix>/<folder>/<name>``, or ``<prefix>/<name>``."""
    parts = [prefix.rstrip("/")] + ([] if flat else [mission.folder]) + [file.name]
    return "/".join(parts)


def _quiet(line: str) -> None:
    pass


class _Server:
    """The five endpoints, each answer checked against the envelope. A failure raises
    DjiMediaError naming the endpoint."""

    def __init__(self, base_url: str, token: str, workspace: str, timeout: float) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.workspace = workspace
        self.timeout = timeout

    def media(self, step: str, body: Mapping[str, Any], *, business_no: bool = False) -> Tuple[int, Dict[str, Any]]:
        """POST to ``/media/api/v1/workspaces/{ws}/<step>``; (code, data). ``business_no``: a
        ``code -1`` with HTTP 200 is an answer (fast-upload's "unknown"), not a failure."""
        path = "files/tiny-fingerprints" if step == "tiny-fingerprints" else step
        return self._post(step, f"/media/api/v1/workspaces/{self.workspace}/{path}", body, business_no)

    def sts(self) -> Dict[str, Any]:
        return self._post("sts", f"/storage/api/v1/workspaces/{self.workspace}/sts", {}, False)[1]

    def _post(self, step: str, path: str, body: Mapping[str, Any], business_no: bool) -> Tuple[int, Dict[str, Any]]:
        url = self.base + path
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
            "X-Auth-Token": self.token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DjiMediaError(f"{step}: cannot reach {self.base} ({reason})") from None
        try:
            envelope = json.loads(raw)
            code, message, data = envelope["code"], envelope["message"], envelope["data"]
            if not isinstance(code, int) or not isinstance(data, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise DjiMediaError(f"{step} answered HTTP {status} without the {{code, message, data}} envelope "
                                f"(is {self.base} a dji_media server, with its prefix?)") from None
        if status != 200:
            hint = f" (is {self.base} the server's base URL, its prefix included?)" if status == 404 else ""
            raise DjiMediaError(f"{step} answered HTTP {status}, code {code}: {message}{hint}")
        if code != 0 and not (business_no and code == -1):
            raise DjiMediaError(f"{step} answered code {code}: {message}")
        return code, data


@dataclasses.dataclass
class _Grant:
    """An sts answer, ready to upload with."""

    bucket: str
    prefix: str
    endpoint: str
    client: Minio
    pool: urllib3.PoolManager
    renew_at: float  # time.monotonic() after which sts is asked again


def _field(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or (path != "credentials.security_token" and value == ""):
        raise DjiMediaError(f"sts answered code 0 without {path}")
    return value


def _grant(data: Dict[str, Any]) -> _Grant:
    endpoint = str(_field(data, "endpoint"))
    parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DjiMediaError(f"sts answered an endpoint that is not an http(s) URL: {endpoint!r}")
    expire = _field(data, "credentials.expire")
    if not isinstance(expire, int) or isinstance(expire, bool):
        raise DjiMediaError("sts answered credentials.expire that is not an integer")
    # Bounded: an unreachable endpoint fails the step in seconds, not after minio-py's five minutes.
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=60.0), retries=urllib3.Retry(
        total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)))
    client = Minio(
        parts.netloc,
        access_key=str(_field(data, "credentials.access_key_id")),
        secret_key=str(_field(data, "credentials.access_key_secret")),
        session_token=str(_field(data, "credentials.security_token")) or None,  # "" with plain keys
        secure=parts.scheme == "https",
        # Given, never looked up: the scoped keys may not ask the bucket for its location.
        region=str(data.get("region") or "us-east-1"),
        http_client=pool,
    )
    return _Grant(bucket=str(_field(data, "bucket")), prefix=str(_field(data, "object_key_prefix")),
                  endpoint=endpoint, client=client, pool=pool,
                  renew_at=time.monotonic() + max(expire - _RENEW_BEFORE_SECONDS, 0.0))


def _put(grant: _Grant, key: str, file: GeneratedFile) -> None:
    try:
        grant.client.put_object(grant.bucket, key, io.BytesIO(file.data), len(file.data),
                                content_type=file.content_type)
    except S3Error as exc:
        raise DjiMediaError(f"PUT {key} into bucket {grant.bucket!r} answered {exc.code}: {exc.message}") from None
    except Exception as exc:  # urllib3's connection errors and timeouts, minio's ServerError and others
        raise DjiMediaError(
            f"PUT {key}: storage endpoint {grant.endpoint} (from the sts answer) did not answer "
            f"({type(exc).__name__}); it must be reachable from this machine: see the credentials' "
            f"public_endpoint in the server's configuration") from None


def _callback_body(mission: Mission, file: GeneratedFile, key: str) -> Dict[str, Any]:
    """upload-callback as Pilot 2 sends it (doc/protocol.md, 3.4)."""
    return {
        "result": 0,
        "fingerprint": file.fingerprint,
        "name": file.name,
        "path": mission.folder,
        "object_key": key,
        "sub_file_type": 0,
        "ext": {
            "file_group_id": mission.file_group_id,
            "drone_model_key": DRONE_MODEL_KEY,
            "payload_model_key": PAYLOAD_MODEL_KEY,
            "is_original": True,
            "tinny_fingerprint": file.tiny_fingerprint,  # two n's: the device's spelling
            "sn": mission.sn,
        },
        "metadata": {
            "gimbal_yaw_degree": file.gimbal_yaw_degree,
            "absolute_altitude": file.absolute_altitude,
            "relative_altitude": file.relative_altitude,
            "created_time": file.captured_at.isoformat(),
            "shoot_position": {"lat": file.lat, "lng": file.lng},
        },
    }


def _fast_upload_body(mission: Mission, file: GeneratedFile) -> Dict[str, Any]:
    return {
        "fingerprint": file.fingerprint,
        "name": file.name,
        "path": mission.folder,
        "ext": {"drone_model_key": DRONE_MODEL_KEY, "payload_model_key": PAYLOAD_MODEL_KEY, "is_original": True,
                "tinny_fingerprint": file.tiny_fingerprint, "sn": mission.sn},
    }


def _tiny_known(server: _Server, files: Sequence[GeneratedFile]) -> Set[str]:
    _, data = server.media("tiny-fingerprints", {"tiny_fingerprints": [f.tiny_fingerprint for f in files]})
    known = data.get("tiny_fingerprints")
    if not isinstance(known, list):
        raise DjiMediaError("tiny-fingerprints answered code 0 without a tiny_fingerprints list")
    return {t for t in known if isinstance(t, str)}


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def run(mission: Mission, *, base_url: str, token: str, workspace: str, flat: bool = False,
        progress: Callable[[str], None] = _quiet, timeout: float = DEFAULT_TIMEOUT) -> Report:
    """Play Pilot 2 uploading ``mission`` to the server at ``base_url`` (its prefix included) for
    ``workspace``. ``progress`` gets one line per file. Raises DjiMediaError at the first step
    that fails, naming it; files already uploaded and reported stay so (as on a real controller,
    a second run goes on from there)."""
    server = _Server(base_url, token, workspace, timeout)
    files = mission.files
    known = _tiny_known(server, files)
    outcomes: List[FileOutcome] = []
    grant: Optional[_Grant] = None
    width = len(str(len(files)))
    try:
        for file in files:
            head = f"{file.index:>{width}}/{len(files)} {file.name} {_size(len(file.data)):>7}"
            if file.tiny_fingerprint in known:
                outcomes.append(FileOutcome(file, False, None, "tiny-fingerprints"))
                progress(f"{head}  already on the server (tiny-fingerprints): skipped")
                continue
            code, _ = server.media("fast-upload", _fast_upload_body(mission, file), business_no=True)
            if code == 0:
                outcomes.append(FileOutcome(file, False, None, "fast-upload"))
                progress(f"{head}  already on the server (fast-upload): skipped")
                continue
            if grant is None or time.monotonic() >= grant.renew_at:
                if grant is not None:
                    grant.pool.clear()
                grant = _grant(server.sts())
            key = object_key(grant.prefix, mission, file, flat)
            _put(grant, key, file)
            server.media("upload-callback", _callback_body(mission, file, key))
            outcomes.append(FileOutcome(file, True, key, None))
            progress(f"{head}  uploaded: {key}")
    finally:
        if grant is not None:
            grant.pool.clear()
    # The mission's totals: every file it has, and how many the server now holds (those skipped
    # were uploaded by an earlier run), so a repeated run leaves the same totals.
    server.media("group-upload-callback", {"file_group_id": mission.file_group_id, "file_count": len(files),
                                           "file_uploaded_count": len(outcomes)})
    return Report(mission=mission, workspace=workspace, outcomes=tuple(outcomes))
