"""Running the media API as a standalone Tornado server (``dji-media serve``)."""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Optional

import tornado.httpserver
import tornado.netutil
import tornado.web

from .backends.auth import StaticTokenAuthenticator
from .config import Config
from .service import MediaService
from .web import NotFoundHandler, get_handlers
from .wiring import build_service, start_embedded_s3

log = logging.getLogger("dji_media.server")


def make_application(service: MediaService, config: Config) -> tornado.web.Application:
    """The media routes in an Application whose unknown paths answer with the envelope."""
    return tornado.web.Application(
        get_handlers(service, prefix=config.server.prefix,
                     max_body_bytes=config.server.max_body_bytes),
        default_handler_class=NotFoundHandler,
    )


def demo_banner(config: Config, service: MediaService, port: int) -> Optional[str]:
    """A ready-to-paste request for the demo, when the config asks for it and uses static tokens."""
    if not config.server.demo_banner or not isinstance(service.authenticator, StaticTokenAuthenticator):
        return None
    token, workspace = service.authenticator.example()
    base = f"http://{config.server.host}:{port}{('/' + config.server.prefix.strip('/')) if config.server.prefix.strip('/') else ''}"
    return (
        f"dji_media is listening on {base}\n"
        f"demo token: {token}  workspace: {workspace}\n"
        f"try: curl -s -X POST -H 'X-Auth-Token: {token}' "
        f"{base}/storage/api/v1/workspaces/{workspace}/sts"
    )


async def serve(config: Config) -> None:
    """Start everything the configuration names, serve until SIGTERM/SIGINT, then shut down."""
    embedded = start_embedded_s3(config)
    service = build_service(config)
    server = tornado.httpserver.HTTPServer(
        make_application(service, config),
        max_body_size=config.server.max_body_bytes + 1,  # our handler answers 413 itself
        xheaders=False,
    )
    sockets = tornado.netutil.bind_sockets(config.server.port, config.server.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    banner = demo_banner(config, service, port)
    print(banner or f"dji_media is listening on http://{config.server.host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down")
        server.stop()
        await server.close_all_connections()
    finally:
        await service.close()
        if embedded is not None:
            embedded.stop()
