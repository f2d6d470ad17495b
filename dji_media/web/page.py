"""The media library's page: one HTML file and its script and style, served from the package.

No build step and nothing from another origin (no CDN, fonts or map tiles): an operator's
browser may sit on a network that only reaches this server and the storage endpoint. The page
calls the library API relative to its own address, so a host that mounts ``get_handlers`` under
a prefix mounts this under the same prefix and both meet.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import tornado.web

__all__ = ["get_page_handlers", "STATIC_DIR"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "library")

# Scripts, styles and API calls only from this server; images also from the storage endpoint,
# whose presigned URLs the previews load (its origin is the deployment's, not known here).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: http: https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _harden(handler: tornado.web.RequestHandler) -> None:
    handler.set_header("Content-Security-Policy", _CSP)
    handler.set_header("X-Content-Type-Options", "nosniff")
    # Presigned URLs and the page's address never leak to another site through Referer.
    handler.set_header("Referrer-Policy", "no-referrer")


class LibraryPageHandler(tornado.web.RequestHandler):
    """``GET {prefix}/media/library/``: the page. The token is asked for by the page itself and
    sent as ``X-Auth-Token`` by its script, so this handler needs none."""

    def get(self) -> None:
        _harden(self)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        with open(os.path.join(STATIC_DIR, "index.html"), "rb") as page:
            self.write(page.read())


class LibraryStaticHandler(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        _harden(self)
        # Revalidated on every load: a new release's script must not meet an old cached page.
        self.set_header("Cache-Control", "no-cache")


def get_page_handlers(prefix: str = "") -> List[Tuple[str, Any, Dict[str, Any]]]:
    """The page's routes: ``{prefix}/media/library/`` (the HTML; without the slash, a redirect
    to it, since the page's relative URLs need it) and ``{prefix}/media/library/static/...``."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    page = f"{base}/media/library/"
    return [
        (page, LibraryPageHandler, {}),
        (page.rstrip("/"), tornado.web.RedirectHandler, {"url": page, "permanent": False}),
        (page + "static/(.*)", LibraryStaticHandler, {"path": STATIC_DIR}),
    ]
