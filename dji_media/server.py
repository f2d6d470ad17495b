"""The HTTP pieces of ``dji-media serve``, built from a configuration: the application, the
server's options, the start-up checks, the listening sockets and the line printed once it listens.

Below both ``dji_media.runtime`` (which starts and stops them) and ``dji_media.workers`` (which
runs them in several processes); it imports neither. ``StartupError`` lives in ``errors.py`` and
is imported here too, where it was raised before.
"""
from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional

import tornado.netutil
import tornado.web

from .config import Config
from .errors import DjiMediaError, StartupError
from .service import MediaService
from .web import InFlight, NotFoundHandler, get_handlers, get_health_handlers
from .web.page import get_page_handlers
from .wiring import build_catalogue, demo_banner, tls_context

__all__ = ["make_application", "server_options", "startup_checks", "bind", "listen", "listening_line",
           "demo_banner", "tls_context", "StartupError"]


def make_application(service: MediaService, config: Config,
                     in_flight: Optional[InFlight] = None, *, sweep: bool = False) -> tornado.web.Application:
    """The media routes in an Application whose unknown paths answer with the envelope.
    ``sweep``: ``/readyz`` also reports the storage sweep's last pass. The media library's API
    (and its page) is mounted when the backends can serve it (dji_media.capabilities,
    "catalogue"); CORS for ``server.cors_origins``."""
    return tornado.web.Application(
        get_handlers(service, prefix=config.server.prefix,
                     max_body_bytes=config.server.max_body_bytes, in_flight=in_flight,
                     catalogue=build_catalogue(service), cors_origins=config.server.cors_origins)
        + get_health_handlers(service, sweep=sweep)  # at the root, where probes look for them
        + get_page_handlers(config.server.prefix),  # the library's page, beside its API
        default_handler_class=NotFoundHandler,
    )


def server_options(config: Config) -> Dict[str, Any]:
    """Keyword arguments for ``HttpTransport`` (and so ``tornado.httpserver.HTTPServer``)."""
    return dict(
        # The media handlers stream bodies and answer 413 themselves; this caps the rest.
        max_body_size=config.server.max_body_bytes,
        xheaders=config.server.trust_forwarded_headers,
        ssl_options=tls_context(config),
    )


async def startup_checks(service: MediaService) -> None:
    """Reach the database, the bucket and STS once; raise naming the first that fails.

    Creates the schema when it is absent (the first write does). A wrong endpoint, bad keys,
    a missing bucket or an unwritable database stop the start with one clear line.
    """
    for name, probe in (("database", service.media_store.ping), ("storage", service.object_store.ping),
                        ("credentials", service.credentials.ping)):
        try:
            await probe()
        except DjiMediaError as exc:
            raise StartupError(f"{name}: {exc.message}") from None


def bind(host: str, port: int, reuse_port: bool = False) -> List[socket.socket]:
    """Bind and listen on ``host:port`` (every address the host resolves to); StartupError if not.
    ``reuse_port``: sockets that worker processes can join with their own (SO_REUSEPORT)."""
    try:
        return tornado.netutil.bind_sockets(port, host, reuse_port=reuse_port)
    except OSError as exc:
        raise StartupError(f"server: cannot listen on {host}:{port}: {exc.strerror}") from None


def listen(config: Config, reuse_port: bool = False) -> List[socket.socket]:
    """``bind`` on ``server.host:server.port``."""
    return bind(config.server.host, config.server.port, reuse_port=reuse_port)


def listening_line(config: Config, service: MediaService, sockets: List[socket.socket]) -> str:
    """What ``serve`` prints once it listens: the demo banner, or where it listens."""
    port = sockets[0].getsockname()[1]
    scheme = "https" if config.server.tls_cert_file else "http"
    return (demo_banner(config, service, port, scheme)
            or f"dji_media is listening on {scheme}://{config.server.host}:{port}")
