"""Opening an import source from a URL: the one module that names every kind of source.

It sits above the sources (``dji_demo``, ``sqlite_source``), which know only the base in
``sources``: a new kind of source is a new module and one more line here, and no source
imports another or this registry.
"""
from __future__ import annotations

from typing import Optional

from ..errors import SourceError
from .dji_demo import DjiDemoSource
from .sources import Source
from .sqlite_source import SqliteSource


def open_source(url: str, table: Optional[str] = None) -> Source:
    """``mysql://user:password@host:port/database`` (DJI's demo, table ``media_file``) or
    ``sqlite:///relative/path`` / ``sqlite:////absolute/path`` (table ``media_files``)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "mysql":
        return DjiDemoSource(url, **({"table": table} if table else {}))
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path  # as open_database reads it
        if not path:
            raise SourceError("source URL: sqlite URL needs a file path, e.g. sqlite:///old/media.sqlite3")
        return SqliteSource(path, **({"table": table} if table else {}))
    raise SourceError("source URL must start with mysql:// (DJI's demo server) or sqlite:///")
