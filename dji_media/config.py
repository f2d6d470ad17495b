"""YAML configuration: parsed, checked and turned into frozen settings.

The library itself never reads files or the environment; this module (used by the CLI and the
example server) does. Every error is a ``ConfigError`` naming the dotted key at fault. Secrets
come from environment variables written as ``${NAME}`` (or ``${NAME:-default}``) in any string.
Backends are chosen by a short name or ``package.module:Class`` and receive ``options`` as
keyword arguments, checked against their constructor (unknown keys and wrong types refused).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import os
import re
import typing
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ConfigError
from .interfaces import MIN_CREDENTIAL_SECONDS, Authenticator, CredentialProvider, MediaStore, ObjectStore

__all__ = ["Config", "ServerSettings", "ServiceSettings", "SweepSettings", "EmbeddedS3Settings",
           "MqttSettings", "DevicesSettings",
           "BackendSettings", "load_config", "parse_config", "load_class", "REGISTRY",
           "DEFAULT_VERIFY_WINDOW_SECONDS"]

# The advertised expire is the credentials' remaining life minus this margin; providers hand out
# credentials with at least MIN_CREDENTIAL_SECONDS left, so devices always get 300 s or more.
MAX_EXPIRE_MARGIN = MIN_CREDENTIAL_SECONDS - 300

_B = "dji_media.backends."
REGISTRY: Dict[str, Tuple[type, Dict[str, str]]] = {
    "media_store": (MediaStore, {
        "peewee": _B + "peewee_store:PeeweeMediaStore",
        "sqlite": _B + "peewee_store:PeeweeMediaStore",
        "memory": _B + "memory:InMemoryMediaStore",
    }),
    "object_store": (ObjectStore, {
        "minio": _B + "s3:MinioObjectStore",
        "s3": _B + "s3:MinioObjectStore",
        "memory": _B + "memory:InMemoryObjectStore",
    }),
    "credentials": (CredentialProvider, {
        "sts": _B + "s3:StsCredentialProvider",
        "static": _B + "s3:StaticCredentialProvider",
    }),
    "authenticator": (Authenticator, {
        "static": _B + "auth:StaticTokenAuthenticator",
        "jwt": _B + "auth:JwtAuthenticator",
    }),
}
# Constructor parameters that only code can pass (live objects, not YAML values).
_CODE_ONLY = frozenset({"executor", "client", "database", "clock"})


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    prefix: str = ""
    max_body_bytes: int = 1024 * 1024
    demo_banner: bool = False
    # HTTPS directly (some Pilot 2 versions refuse plain HTTP): PEM certificate chain and key.
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    # Behind a reverse proxy: take the client address and scheme from X-Forwarded-For /
    # X-Real-Ip / X-Forwarded-Proto. Only when every request comes through that proxy.
    trust_forwarded_headers: bool = False
    # Origins a browser may call the media library's API from (a web front-end served
    # elsewhere, e.g. DJI's); none: CORS off (doc/library.md).
    cors_origins: Tuple[str, ...] = ()
    # Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    shutdown_grace_seconds: float = 10.0
    # Processes serving the one port (dji_media/workers.py); `dji-media serve --workers` wins.
    workers: int = 1


# Four sweep periods (doc/configuration.md, "Storage truth: the numbers"): a record the sweep
# confirmed stays "known" through two missed passes, and a request HEADs only new records.
DEFAULT_VERIFY_WINDOW_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    expire_margin: int = 300
    verify_concurrency: int = 16
    enforce_key_prefix: bool = True
    enforce_dock_key_prefix: bool = True
    # None: DEFAULT_VERIFY_WINDOW_SECONDS, or 0 for a media store that cannot remember
    # confirmations (one written for an older release keeps working as it did).
    verify_window_seconds: Optional[float] = None
    max_checks_per_request: int = 32


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """The storage sweep (dji_media.sweep). ``enabled`` None: on when the media store and the
    object store can sweep (the shipped ones can), else off with a warning; True refuses to
    start with backends that cannot."""

    enabled: Optional[bool] = None
    period_seconds: float = 900.0
    pages_per_second: float = 10.0
    lease_seconds: float = 60.0
    page_size: int = 1000


@dataclasses.dataclass(frozen=True)
class EmbeddedS3Settings:
    data_dir: str = "var/seaweedfs"
    port: int = 8333
    access_key: str = ""
    secret_key: str = ""
    buckets: Tuple[str, ...] = ("media",)


@dataclasses.dataclass(frozen=True)
class MqttSettings:
    """The MQTT transport for DJI Docks (dji_media.mqtt.MqttTransport); doc/mqtt.md."""

    broker_url: str = ""
    client_id: str = "dji-media"
    username: Optional[str] = None
    password: Optional[str] = None  # "${MQTT_PASSWORD}": never in the file itself
    tls_ca_file: Optional[str] = None
    tls_verify: bool = True
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    protocol: str = "5"
    qos: int = 1
    # Required with several workers: each message then goes to one of them.
    shared_group: Optional[str] = None
    max_payload_bytes: int = 64 * 1024
    reply_status: bool = False
    session_expiry_seconds: int = 3600
    max_concurrency: int = 32
    log_period_seconds: float = 600.0
    # Commands to docks (upload_flighttask_media_prioritize): QoS 0 as DJI's demo, a reply
    # within the timeout, then this many more attempts.
    command_qos: int = 0
    command_timeout_seconds: float = 3.0
    command_retries: int = 2


@dataclasses.dataclass(frozen=True)
class DevicesSettings:
    """Which workspace each dock belongs to: a static table, or the database (``backend:
    database``, the table the host application keeps)."""

    backend: str = "static"
    devices: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """A backend class and the keyword arguments it will be built with."""

    section: str
    cls: type
    options: Mapping[str, Any]

    def build(self) -> Any:
        """The backend, built. ``ConfigError`` when the options do not fit the constructor's
        signature or the constructor refuses a value (``ValueError``); any other exception,
        a ``TypeError`` from inside the constructor included, is a bug and propagates as is."""
        key = f"{self.section}.options"
        try:
            signature = inspect.signature(self.cls)
        except (TypeError, ValueError):  # nothing to check against (a C type): the call will tell
            signature = None
        if signature is not None:
            try:
                signature.bind(**self.options)
            except TypeError as exc:
                raise ConfigError(key, f"{self.cls.__name__}: {exc}") from None
        try:
            return self.cls(**self.options)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None


@dataclasses.dataclass(frozen=True)
class Config:
    server: ServerSettings
    service: ServiceSettings
    log_level: str
    embedded_s3: Optional[EmbeddedS3Settings]
    media_store: BackendSettings
    object_store: BackendSettings
    credentials: BackendSettings
    authenticator: BackendSettings
    # Last, with a default: a Config built in code before the sweep existed still builds.
    sweep: SweepSettings = SweepSettings()
    # None: no MQTT transport (Pilot 2 over HTTP only).
    mqtt: Optional[MqttSettings] = None
    devices: DevicesSettings = DevicesSettings()


# ------------------------------------------------------------------------------ ${VAR} values

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, key: str, environ: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        # Keys are expanded too: a token table may take its tokens from the environment.
        return {_expand(k, key, environ): _expand(v, f"{key}.{k}" if key else str(k), environ)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{key}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: "re.Match[str]") -> str:
        name, default = match.group(1), match.group(2)
        # As in the shell: ${NAME:-default} also takes the default when NAME is set but empty.
        if environ.get(name) or (name in environ and default is None):
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(key, f"environment variable {name} is not set")

    return _VAR.sub(substitute, value)


# --------------------------------------------------------------------------- value checking

def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (dict, collections.abc.Mapping) or annotation in (dict, Mapping):
        return isinstance(value, dict) and all(
            _type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items()
        ) if args else isinstance(value, dict)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, list) and (not args or all(_type_ok(v, args[0]) for v in value))
    return True  # a type YAML cannot express: leave it to the constructor


def _type_name(annotation: Any) -> str:
    # Generic types in full ("Mapping[str, Sequence[str]]"), so the message says what is wanted.
    if typing.get_args(annotation):
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", None) or str(annotation)


def _kind(value: Any) -> str:
    # Only the type: the value may be a secret (a token table, a key).
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else \
        f"a {type(value).__name__}"


def _section(raw: Mapping[str, Any], key: str, allowed: Mapping[str, Any]) -> Dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping")
    for name, item in value.items():
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", f"unknown key (known: {', '.join(sorted(allowed))})")
        if not _type_ok(item, allowed[name]):
            raise ConfigError(f"{key}.{name}", f"must be {_type_name(allowed[name])}, got {_kind(item)}")
    return dict(value)


def _fields(cls: type) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def load_class(spec: str, base: type, key: str) -> type:
    """Import ``package.module:Class`` and check that it implements ``base``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(key, f"{spec!r} is neither a known backend nor 'package.module:Class'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise ConfigError(key, f"{module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(key, f"{spec!r} does not implement {base.__name__}")
    return obj


def _backend(raw: Mapping[str, Any], section: str) -> BackendSettings:
    value = raw.get(section)
    if not isinstance(value, dict):
        raise ConfigError(section, "is required: a mapping with 'backend' and 'options'")
    for name in value:
        if name not in ("backend", "options"):
            raise ConfigError(f"{section}.{name}", "unknown key (known: backend, options)")
    base, names = REGISTRY[section]
    spec = value.get("backend")
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{section}.backend", f"is required: one of {', '.join(names)} or 'module:Class'")
    cls = load_class(names.get(spec, spec), base, f"{section}.backend")
    options = value.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{section}.options", "must be a mapping")
    constructor = cls.__init__  # type: ignore[misc]  # the class's own constructor, looked up once
    params = inspect.signature(constructor).parameters
    try:
        hints = typing.get_type_hints(constructor)
    except Exception:  # a third-party class with annotations we cannot resolve
        hints = {}
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    allowed = {n for n, p in params.items() if n != "self" and n not in _CODE_ONLY
               and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for name, item in options.items():
        key = f"{section}.options.{name}"
        if name not in allowed and not accepts_any:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(key, f"unknown option for {cls.__name__} (known: {known})")
        if name in hints and not _type_ok(item, hints[name]):
            raise ConfigError(key, f"must be {_type_name(hints[name])}, got {_kind(item)}")
    for name, p in params.items():
        if name in allowed and p.default is p.empty and name not in options:
            raise ConfigError(f"{section}.options.{name}", "is required")
    return BackendSettings(section=section, cls=cls, options=options)


# -------------------------------------------------------------------------------- loading

_TOP = ("server", "service", "sweep", "logging", "embedded_s3", "media_store", "object_store",
        "credentials", "authenticator", "mqtt", "devices")
_LEVELS = ("debug", "info", "warning", "error")


def parse_config(raw: Any, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Check a decoded YAML document and return the frozen configuration."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the configuration must be a YAML mapping")
    for name in raw:
        if name not in _TOP:
            raise ConfigError(str(name), f"unknown key (known: {', '.join(_TOP)})")
    raw = _expand(raw, "", os.environ if environ is None else environ)

    server_fields = dict(_fields(ServerSettings), cors_origins=typing.List[str])  # a YAML list
    server_values = _section(raw, "server", server_fields)
    if "cors_origins" in server_values:
        server_values["cors_origins"] = tuple(server_values["cors_origins"])
    server = ServerSettings(**server_values)
    if not 0 <= server.port <= 65535:
        raise ConfigError("server.port", "must be between 0 and 65535")
    if server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes", "must be at least 1024")
    if (server.tls_cert_file is None) != (server.tls_key_file is None):
        raise ConfigError("server.tls_key_file" if server.tls_cert_file else "server.tls_cert_file",
                          "tls_cert_file and tls_key_file go together")
    for key in ("tls_cert_file", "tls_key_file"):
        path = getattr(server, key)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"server.{key}", f"cannot read {path}")
    if server.shutdown_grace_seconds < 0:
        raise ConfigError("server.shutdown_grace_seconds", "must be >= 0")
    if server.workers < 1:
        raise ConfigError("server.workers", "must be >= 1")
    service = ServiceSettings(**_section(raw, "service", _fields(ServiceSettings)))
    if not 0 <= service.expire_margin <= MAX_EXPIRE_MARGIN:
        raise ConfigError("service.expire_margin", f"must be between 0 and {MAX_EXPIRE_MARGIN}")
    if service.verify_concurrency < 1:
        raise ConfigError("service.verify_concurrency", "must be >= 1")
    if service.verify_window_seconds is not None and service.verify_window_seconds < 0:
        raise ConfigError("service.verify_window_seconds", "must be >= 0 (0 disables the window)")
    if service.max_checks_per_request < 1:
        raise ConfigError("service.max_checks_per_request", "must be >= 1")
    sweep = SweepSettings(**_section(raw, "sweep", _fields(SweepSettings)))
    if sweep.period_seconds <= 0:
        raise ConfigError("sweep.period_seconds", "must be > 0")
    if sweep.pages_per_second <= 0:
        raise ConfigError("sweep.pages_per_second", "must be > 0")
    if sweep.lease_seconds < 3:
        raise ConfigError("sweep.lease_seconds", "must be >= 3")
    if not 1 <= sweep.page_size <= 1000:
        raise ConfigError("sweep.page_size", "must be between 1 and 1000 (S3 lists at most 1000 keys a request)")
    level = _section(raw, "logging", {"level": str}).get("level", "info").lower()
    if level not in _LEVELS:
        raise ConfigError("logging.level", f"must be one of {', '.join(_LEVELS)}")

    embedded = None
    if raw.get("embedded_s3") is not None:
        fields = _fields(EmbeddedS3Settings)
        fields["buckets"] = typing.List[str]
        values = _section(raw, "embedded_s3", fields)
        values["buckets"] = tuple(values.get("buckets", EmbeddedS3Settings.buckets))
        embedded = EmbeddedS3Settings(**values)
        if len(embedded.access_key) < 3:
            raise ConfigError("embedded_s3.access_key", "is required: at least 3 characters")
        if len(embedded.secret_key) < 8:
            raise ConfigError("embedded_s3.secret_key", "is required: at least 8 characters")
        if not 1 <= embedded.port <= 55535:
            raise ConfigError("embedded_s3.port", "must be between 1 and 55535 (port+10000 is used too)")

    mqtt = _mqtt(raw, server.workers)
    devices = _devices(raw, mqtt is not None)

    return Config(
        server=server, service=service, sweep=sweep, log_level=level, embedded_s3=embedded, mqtt=mqtt,
        devices=devices,
        media_store=_backend(raw, "media_store"), object_store=_backend(raw, "object_store"),
        credentials=_backend(raw, "credentials"), authenticator=_backend(raw, "authenticator"),
    )


def _mqtt(raw: Mapping[str, Any], workers: int) -> Optional[MqttSettings]:
    if raw.get("mqtt") is None:
        return None
    mqtt = MqttSettings(**_section(raw, "mqtt", _fields(MqttSettings)))
    if not mqtt.broker_url:
        raise ConfigError("mqtt.broker_url", "is required: mqtts://host:8883 (or mqtt://host:1883 without TLS)")
    if not mqtt.broker_url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("mqtt.broker_url", "must start with mqtt:// or mqtts://")
    if mqtt.password is not None and mqtt.username is None:
        raise ConfigError("mqtt.password", "needs mqtt.username")
    if mqtt.protocol not in ("5", "3.1.1"):
        raise ConfigError("mqtt.protocol", "must be '5' or '3.1.1' (quote it: YAML reads 5 as a number)")
    for key in ("qos", "command_qos"):
        if getattr(mqtt, key) not in (0, 1, 2):
            raise ConfigError(f"mqtt.{key}", "must be 0, 1 or 2")
    if not mqtt.broker_url.startswith("mqtts://"):
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            if getattr(mqtt, key) is not None:
                raise ConfigError(f"mqtt.{key}", "needs an mqtts:// broker_url")
        if not mqtt.tls_verify:
            raise ConfigError("mqtt.tls_verify", "needs an mqtts:// broker_url")
    if mqtt.tls_key_file is not None and mqtt.tls_cert_file is None:
        raise ConfigError("mqtt.tls_key_file", "needs mqtt.tls_cert_file")
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(mqtt, key)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"mqtt.{key}", f"cannot read {path}")
    if workers > 1 and not mqtt.shared_group:
        # Without it every worker would receive, and answer, every dock message.
        raise ConfigError("mqtt.shared_group", f"is required with {workers} workers: a name, so that the broker "
                          "hands each dock message to one of them")
    for key, low in (("max_payload_bytes", 1024), ("max_concurrency", 1)):
        if getattr(mqtt, key) < low:
            raise ConfigError(f"mqtt.{key}", f"must be >= {low}")
    if not 0 <= mqtt.session_expiry_seconds <= 0xFFFFFFFF:
        raise ConfigError("mqtt.session_expiry_seconds", "must be between 0 and 4294967295")
    if mqtt.log_period_seconds < 0:
        raise ConfigError("mqtt.log_period_seconds", "must be >= 0")
    if mqtt.command_timeout_seconds <= 0:
        raise ConfigError("mqtt.command_timeout_seconds", "must be > 0")
    if not 0 <= mqtt.command_retries <= 10:
        raise ConfigError("mqtt.command_retries", "must be between 0 and 10")
    return mqtt


_DEVICE_BACKENDS = ("static", "database")


def _devices(raw: Mapping[str, Any], with_mqtt: bool) -> DevicesSettings:
    value = raw.get("devices")
    if value is None:
        return DevicesSettings()
    if not isinstance(value, dict):
        raise ConfigError("devices", "must be a mapping: {dock_sn: workspace_id}, or {backend: database}")
    if "backend" in value:
        backend = value["backend"]
        if backend not in _DEVICE_BACKENDS:
            raise ConfigError("devices.backend", f"must be one of {', '.join(_DEVICE_BACKENDS)}")
        rest = {k: v for k, v in value.items() if k not in ("backend", "devices")}
        if rest:
            raise ConfigError(f"devices.{next(iter(rest))}", "unknown key (known: backend, devices)")
        table = value.get("devices") or {}
        if backend == "database" and table:
            raise ConfigError("devices.devices", "a static table and backend: database exclude each other")
    else:
        backend, table = "static", value
    if not isinstance(table, dict):
        raise ConfigError("devices.devices", "must be a mapping {dock_sn: workspace_id}")
    from .devices import StaticDeviceDirectory

    for sn, workspace_id in table.items():
        if not isinstance(sn, str) or not isinstance(workspace_id, str):
            raise ConfigError(f"devices.{sn}", "serial numbers and workspace ids must be strings (quote them)")
    try:
        StaticDeviceDirectory(table)  # the same checks the directory makes, at load time
    except ValueError as exc:
        raise ConfigError("devices", str(exc)) from None
    return DevicesSettings(backend=backend, devices=dict(table))


def load_config(path: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Read and check a YAML configuration file."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigError("", "PyYAML is missing: pip install 'dji-media[server]'") from None
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw, environ)


