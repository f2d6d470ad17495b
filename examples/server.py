"""A thin example server: the public API of dji_media mounted into a Tornado application.

    python examples/server.py --config conf/example.yaml

A host application's view: it reads the YAML configuration, builds the service, puts the media
routes next to its own in one Application, and runs it with ``dji_media.runtime.Runtime``, which
starts the embedded S3 server, checks the database and storage, listens, and on SIGTERM, SIGINT
or SIGHUP drains the requests in flight and closes everything (doc/embedding.md).
"""
import argparse
import asyncio
import logging
import sys

import tornado.web

from dji_media import ConfigError, DjiMediaError, NotFoundHandler, get_handlers, get_health_handlers
from dji_media.config import Config, load_config
from dji_media.runtime import HttpTransport, Runtime
from dji_media.sweep import SWEEP_TASK
from dji_media.web import InFlight
from dji_media.web.page import get_page_handlers
from dji_media.wiring import build_catalogue, build_service, build_sweep, demo_banner, embedded_s3, tls_context


class HelloHandler(tornado.web.RequestHandler):
    """Stands for the host application's own routes (login page, device binding, ...)."""

    def get(self) -> None:
        self.write({"hello": "from the host application"})


async def serve(config: Config) -> int:
    ssl_options = tls_context(config)
    storage = embedded_s3(config)  # None unless the config has an embedded_s3 section
    service = build_service(config)
    runtime = Runtime(service, grace=config.server.shutdown_grace_seconds, embedded_s3=storage)
    # The storage sweep (None when the configuration turns it off) keeps the records honest
    # about the bucket in the background; its lease makes one process of a deployment sweep.
    sweep = build_sweep(config, service)
    if sweep is not None:
        runtime.add_task(SWEEP_TASK, sweep.run_forever)
    in_flight = InFlight()  # the shutdown waits for the media requests it counts
    app = tornado.web.Application(
        [(r"/hello", HelloHandler)]
        + get_handlers(service, prefix=config.server.prefix, max_body_bytes=config.server.max_body_bytes,
                       in_flight=in_flight,
                       # the media library's API (None when the backends cannot serve it)
                       catalogue=build_catalogue(service), cors_origins=config.server.cors_origins)
        + get_health_handlers(service, sweep=sweep is not None)  # /readyz reports the last pass
        + get_page_handlers(config.server.prefix),  # the library's page: /media/library/
        default_handler_class=NotFoundHandler,
    )
    http = runtime.add_transport(HttpTransport(
        app, host=config.server.host, port=config.server.port, in_flight=in_flight,
        max_body_size=config.server.max_body_bytes, ssl_options=ssl_options))

    def announce() -> None:
        print(demo_banner(config, service, http.port, http.scheme)
              or f"dji_media example server on {http.scheme}://{config.server.host}:{http.port}", flush=True)

    runtime.on_ready(announce)
    return await runtime.serve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/example.yaml")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
        logging.basicConfig(level=config.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"examples/server.py: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except DjiMediaError as exc:  # storage or a database that cannot be reached, a port in use, ...
        print(f"examples/server.py: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
