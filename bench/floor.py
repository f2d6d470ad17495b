"""The floor: a Tornado app with the five media routes answering one fixed envelope each.

    python bench/floor.py [--port 0] [--prefix ""]

It does what any Tornado endpoint must do (parse the request, read the body, write a JSON
response with the same headers as dji_media) and nothing else: no token check, no parsing,
no database, no storage. The server's requests/s divided by the floor's is the share of the
framework's ceiling the library keeps. Single process, like the server under test.
Prints ``floor listening on http://127.0.0.1:PORT`` once it accepts connections.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal

import tornado.httpserver
import tornado.netutil
import tornado.web


def _envelope(data=None) -> bytes:
    return json.dumps({"code": 0, "message": "success", "data": {} if data is None else data},
                      separators=(",", ":")).encode()


# The right shape for each route (what Pilot 2 parses), fixed.
ANSWERS = {
    "fast-upload": _envelope(),
    "files/tiny-fingerprints": _envelope({"tiny_fingerprints": []}),
    "sts": _envelope({
        "bucket": "media",
        "credentials": {"access_key_id": "3POX6W77L1EF4C86L2RE",
                        "access_key_secret": "9NG2P2yJaUrck576CkdRoRbchKssJiZygi5D93CBsduY",
                        "expire": 3300, "security_token": "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9." + "x" * 400},
        "endpoint": "http://127.0.0.1:8333", "object_key_prefix": "media/bench-ws", "provider": "minio",
        "region": "us-east-1"}),
    "upload-callback": _envelope({"object_key": "media/bench-ws/DJI_202405_CB/DJI_0001.JPG"}),
    "group-upload-callback": _envelope(),
}


class FixedHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("POST",)

    def initialize(self, answer: bytes) -> None:
        self.answer = answer

    def post(self, workspace_id: str) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.answer)


def make_app(prefix: str = "") -> tornado.web.Application:
    prefix = ("/" + prefix.strip("/")) if prefix.strip("/") else ""
    routes = []
    for route, answer in ANSWERS.items():
        base = "storage" if route == "sts" else "media"
        routes.append((rf"{prefix}/{base}/api/v1/workspaces/([^/]+)/{route}", FixedHandler, {"answer": answer}))
    return tornado.web.Application(routes)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default="")
    args = parser.parse_args()
    server = tornado.httpserver.HTTPServer(make_app(args.prefix), max_body_size=4 * 1024 * 1024)
    sockets = tornado.netutil.bind_sockets(args.port, args.host)
    server.add_sockets(sockets)
    print(f"floor listening on http://{args.host}:{sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()


if __name__ == "__main__":
    asyncio.run(main())
