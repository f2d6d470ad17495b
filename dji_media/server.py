"""Running the media API as a standalone Tornado server (``dji-media serve``)."""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from typing import Callable, List, Optional, Tuple

import tornado.httpserver
import tornado.netutil
import tornado.web

from .backends.auth import StaticTokenAuthenticator
from .config import Config
from .errors import ConfigError, DjiMediaError
from .service import MediaService
from .web import InFlight, NotFoundHandler, get_handlers, get_health_handlers
from .wiring import build_service, start_embedded_s3

log = logging.getLogger("dji_media.server")


class StartupError(DjiMediaError):
    """A part the server needs cannot be reached at start-up."""


def make_application(service: MediaService, config: Config,
                     in_flight: Optional[InFlight] = None) -> tornado.web.Application:
    """The media routes in an Application whose unknown paths answer with the envelope."""
    return tornado.web.Application(
        get_handlers(service, prefix=config.server.prefix,
                     max_body_bytes=config.server.max_body_bytes, in_flight=in_flight)
        + get_health_handlers(service),  # at the root, where probes look for them
        default_handler_class=NotFoundHandler,
    )


def demo_banner(config: Config, service: MediaService, port: int, scheme: str = "http") -> Optional[str]:
    """A ready-to-paste request for the demo, when the config asks for it and uses static tokens."""
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


def make_server(service: MediaService, config: Config) -> Tuple[tornado.httpserver.HTTPServer, InFlight]:
    """The HTTP server for the service (not yet listening) and its count of media requests."""
    in_flight = InFlight()
    server = tornado.httpserver.HTTPServer(
        make_application(service, config, in_flight),
        # The media handlers stream bodies and answer 413 themselves; this caps the rest.
        max_body_size=config.server.max_body_bytes,
        xheaders=config.server.trust_forwarded_headers,
        ssl_options=tls_context(config),
        # Slow or idle clients must not hold connections for Tornado's default hour.
        idle_connection_timeout=60,
        body_timeout=60,
    )
    return server, in_flight


def listen(config: Config, reuse_port: bool = False) -> List[socket.socket]:
    """Bind and listen on ``server.host:server.port`` (every address the host resolves to).
    ``reuse_port``: sockets that worker processes can join with their own (SO_REUSEPORT)."""
    try:
        return tornado.netutil.bind_sockets(config.server.port, config.server.host, reuse_port=reuse_port)
    except OSError as exc:
        raise StartupError(f"server: cannot listen on {config.server.host}:{config.server.port}: "
                           f"{exc.strerror}") from None


def listening_line(config: Config, service: MediaService, sockets: List[socket.socket]) -> str:
    """What ``serve`` prints once it listens: the demo banner, or where it listens."""
    port = sockets[0].getsockname()[1]
    scheme = "https" if config.server.tls_cert_file else "http"
    return (demo_banner(config, service, port, scheme)
            or f"dji_media is listening on {scheme}://{config.server.host}:{port}")


async def serve_until_signalled(server: tornado.httpserver.HTTPServer, in_flight: InFlight, config: Config,
                                on_ready: Optional[Callable[[], None]] = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let in-flight requests finish within
    the grace period and close the remaining connections. ``on_ready`` runs once the signal
    handlers are in place (a worker process unblocks its signals there)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("shutting down: %d request(s) in flight", in_flight.count)
    server.stop()  # no new connections
    if not await in_flight.wait_idle(config.server.shutdown_grace_seconds):
        log.warning("%d request(s) still running after %.0f s; closing them",
                    in_flight.count, config.server.shutdown_grace_seconds)
    await server.close_all_connections()


async def serve(config: Config) -> None:
    """Start everything the configuration names, serve until SIGTERM/SIGINT, then shut down:
    stop accepting, let in-flight requests finish within the grace period, close the backends.
    One process; ``run`` starts several when ``server.workers`` asks for them."""
    embedded = start_embedded_s3(config)
    service = None
    try:
        service = build_service(config)
        await startup_checks(service)
        server, in_flight = make_server(service, config)
        sockets = listen(config)
        server.add_sockets(sockets)
        print(listening_line(config, service, sockets), flush=True)
        await serve_until_signalled(server, in_flight, config)
    finally:
        if service is not None:
            await service.close()
        if embedded is not None:
            embedded.stop()


def run(config: Config) -> int:
    """``dji-media serve``: one process, or ``server.workers`` processes under a supervisor
    (dji_media/workers.py). Returns the exit status; start-up failures raise DjiMediaError."""
    if config.server.workers == 1:
        asyncio.run(serve(config))
        return 0
    from .workers import supervise

    return supervise(config)
