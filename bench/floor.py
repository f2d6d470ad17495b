"""The floor: a Tornado app with the five media routes answering one fixed envelope each, and
the media library's read routes (bench/library.py) answering GET the same way.

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


# The media library's read routes (doc/library.md): a page of 50 files of the documented shape,
# about the size the server sends for the benchmark's workspace, a download URL, and the 302 of
# DJI's web front-end's URL route. Built once, sent as fixed bytes.
LIBRARY_PAGE_SIZE = 50
DOWNLOAD_URL = ("http://127.0.0.1:8333/media/media/bench-ws/DJI_20230722170000_6652_T.JPG"
                "?response-content-disposition=attachment%3B%20filename%3D%22DJI_20230722170000_6652_T.JPG%22"
                "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=bench-admin%2F20250101%2Fus-east-1%2Fs3%2F"
                "aws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
                "&X-Amz-Signature=" + "0" * 64)


def _library_file(n: int) -> dict:
    name = f"DJI_20230722170{n % 60:02d}0_{n + 1:04d}_W.JPG"
    return {
        "id": f"5d0c2f0e-1b1a-4c55-9b1e-{n:012x}", "name": name, "path": "", "object_key": f"media/bench-ws/{name}",
        "kind": "photo", "is_original": True, "sub_file_type": 0, "fingerprint": f"{n:032X}",
        "tiny_fingerprint": f"{n:032x}_2023_7_22_17_0_{n % 60}", "mission": f"3c3a3c8e-8f2e-4a63-9d3f-{n:012x}",
        "sn": "1AD3CA2VL3LAD6", "drone_model_key": "0-67-1", "payload_model_key": "1-53-0", "payload_name": None,
        "created_time": "2023-07-22T09:00:00Z", "created_time_text": "2023-07-22T17:00:00+08:00",
        "uploaded_at": "2023-07-22T09:20:00Z", "shoot_position": {"lat": 22.577666, "lng": 113.943194},
        "absolute_altitude": -36.889, "relative_altitude": 100.001, "gimbal_yaw_degree": -4.3,
        "size": 58, "verified_at": "2025-01-01T00:00:00.123456Z",
    }


LIBRARY_ANSWERS = {
    "library/files": _envelope({"files": [_library_file(n) for n in range(LIBRARY_PAGE_SIZE)],
                                "next_cursor": "eyJrIjoibmV3ZXN0IiwidCI6IjIwMjMtMDctMjJUMDk6MjA6MDArMDA6MDAiLCJpIjoi"
                                               "NWQwYzJmMGUtMWIxYS00YzU1LTliMWUtMDAwMDAwMDAwMDMxIn0"}),
    "library/files/([^/]+)/download": _envelope({"url": DOWNLOAD_URL, "expires_in": 900}),
}


class FixedHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("POST",)

    def initialize(self, answer: bytes) -> None:
        self.answer = answer

    def post(self, workspace_id: str) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.answer)


class FixedGetHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET",)

    def initialize(self, answer: bytes) -> None:
        self.answer = answer

    def get(self, *path_args: str) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.answer)


class FixedRedirectHandler(tornado.web.RequestHandler):
    """DJI's ``GET /media/api/v1/files/{ws}/file/{id}/url``: a 302 to a fixed URL."""

    SUPPORTED_METHODS = ("GET",)

    def get(self, *path_args: str) -> None:
        self.redirect(DOWNLOAD_URL, status=302)


def make_app(prefix: str = "") -> tornado.web.Application:
    prefix = ("/" + prefix.strip("/")) if prefix.strip("/") else ""
    routes = []
    for route, answer in ANSWERS.items():
        base = "storage" if route == "sts" else "media"
        routes.append((rf"{prefix}/{base}/api/v1/workspaces/([^/]+)/{route}", FixedHandler, {"answer": answer}))
    for route, answer in LIBRARY_ANSWERS.items():
        routes.append((rf"{prefix}/media/api/v1/workspaces/([^/]+)/{route}", FixedGetHandler, {"answer": answer}))
    routes.append((rf"{prefix}/media/api/v1/files/([^/]+)/file/([^/]+)/url", FixedRedirectHandler))
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
