"""A thin example server: the public API of dji_media mounted into a Tornado application.

    python examples/server.py --config conf/example.yaml

A real host application would add its own routes (login page, device binding, ...) next to the
media routes. ``dji-media serve`` does the same as this file, plus start-up checks and a
graceful shutdown.
"""
import argparse
import asyncio
import logging
import signal

import tornado.web

from dji_media import NotFoundHandler, get_handlers, get_health_handlers
from dji_media.config import load_config
from dji_media.server import tls_context
from dji_media.wiring import build_service, start_embedded_s3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/example.yaml")
    config = load_config(parser.parse_args().config)
    logging.basicConfig(level=config.log_level.upper())

    storage = start_embedded_s3(config)  # None unless the config has an embedded_s3 section
    service = build_service(config)
    app = tornado.web.Application(
        get_handlers(service, prefix=config.server.prefix,
                     max_body_bytes=config.server.max_body_bytes)
        + get_health_handlers(service),
        default_handler_class=NotFoundHandler,
    )
    app.listen(config.server.port, config.server.host, ssl_options=tls_context(config),
               max_body_size=config.server.max_body_bytes)
    scheme = "https" if config.server.tls_cert_file else "http"
    print(f"dji_media example server on {scheme}://{config.server.host}:{config.server.port}", flush=True)
    if config.server.demo_banner and hasattr(service.authenticator, "example"):
        token, workspace = service.authenticator.example()
        print(f"demo token: {token}  workspace: {workspace}", flush=True)
    # Stop on Ctrl-C and on SIGTERM (systemd, docker stop), and close the backends and the
    # embedded storage either way. Handlers of our own, not KeyboardInterrupt: a process started
    # in the background of a shell inherits SIGINT as ignored, and Python then raises nothing.
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await service.close()
        if storage is not None:
            storage.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
