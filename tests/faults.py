"""A small fault-injecting HTTP server that stands in for object storage (and its STS).

``FaultServer`` listens on 127.0.0.1 (a free port) in a background thread. Its ``mode`` decides
what every request gets:

* ``"pass"``: forwarded unchanged to ``upstream`` (a real S3 server). The Host header is kept
  as the client sent it, so SigV4 signatures still verify upstream.
* ``"500"``: HTTP 500 with an S3 ``InternalError`` XML body (no body for HEAD, as S3 does).
* ``"403"``: HTTP 403 with an S3 ``AccessDenied`` XML body (no body for HEAD).
* ``"404"``: HTTP 404 to everything, bucket HEADs included: "the bucket does not exist".
* ``"404+500"``: HTTP 404 for objects, but 500 for the bucket itself (and anything else): an
  object HEAD says "no such key" while the bucket check that would confirm it fails.
* ``"hang"``: accept the request and answer nothing for ``hang_seconds`` (longer than any
  client timeout the tests use), then give up.

The server is a thread, not a coroutine of the test's IOLoop, because the clients under test
(minio-py through the library's thread pools) are blocking: the server must answer while the
loop waits for them. ``close()`` releases hanging requests and joins every thread it started.
"""
from __future__ import annotations

import http.client
import http.server
import threading
from typing import Dict, Optional
from urllib.parse import urlsplit

MODES = ("pass", "500", "403", "404", "404+500", "hang")

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "AccessDenied", "Access Denied"),
    "404": (404, "NoSuchBucket", "The specified bucket does not exist"),
}
# Hop-by-hop headers are not forwarded; lengths are recomputed.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "content-length"}


def s3_error_xml(code: str, message: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>fault-injected</RequestId></Error>"
    ).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    # HTTP/1.0: one request per connection, so no handler thread idles on a kept-alive socket.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass  # the tests count requests instead of printing them

    def _answer(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        mode, release = owner.record(self.command)
        if mode == "hang":
            release.wait(owner.hang_seconds)
            return  # close without a word: the client has long given up
        if mode == "pass":
            self._forward(body)
            return
        if mode == "404+500":
            # Path-style addressing: /bucket is the bucket, /bucket/key an object.
            is_object = "/" in self.path.split("?", 1)[0].strip("/")
            mode = "404" if is_object and self.command != "POST" else "500"
        status, code, message = _ERRORS[mode]
        payload = b"" if self.command == "HEAD" else s3_error_xml(code, message, self.path)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_HEAD = do_GET = do_PUT = do_POST = do_DELETE = _answer

    def _forward(self, body: bytes) -> None:
        host, port = self.server.owner.upstream
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or self.command in ("POST", "PUT"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
            headers = response.getheaders()
            status = response.status
        finally:
            conn.close()
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
            self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    # Non-daemon request threads, joined by server_close(): nothing outlives close().
    daemon_threads = False
    block_on_close = True
    # Many HEADs arrive at once (tiny-fingerprints checks run concurrently); the default
    # backlog of 5 would drop connections and turn the fault under test into connect timeouts.
    request_queue_size = 128
    owner: "FaultServer"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up mid-answer is the point of "hang"


class FaultServer:
    """A storage stand-in whose failure mode can be switched at any time (see module doc)."""

    def __init__(self, *, upstream: Optional[str] = None, mode: Optional[str] = None,
                 hang_seconds: float = 5.0) -> None:
        if upstream is not None:
            parts = urlsplit(upstream)
            self.upstream = (parts.hostname, parts.port or 80)
        else:
            self.upstream = None
        self.hang_seconds = hang_seconds
        self.requests: Dict[str, int] = {}  # "<mode> <METHOD>" -> count
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._mode = "pass"
        self.mode = mode or ("pass" if upstream else "500")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, name="fault-server")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode == "pass" and self.upstream is None:
            raise ValueError("mode 'pass' needs an upstream")
        with self._lock:
            # Requests hanging in the previous mode are let go; new ones wait on a new event.
            self._release.set()
            self._release = threading.Event()
            self._mode = mode

    def record(self, method: str):
        with self._lock:
            key = f"{self._mode} {method}"
            self.requests[key] = self.requests.get(key, 0) + 1
            return self._mode, self._release

    def count(self, mode: str) -> int:
        with self._lock:
            return sum(n for key, n in self.requests.items() if key.split(" ", 1)[0] == mode)

    def close(self) -> None:
        with self._lock:
            self._release.set()
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()  # joins the request threads

    def __enter__(self) -> "FaultServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
