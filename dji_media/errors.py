"""The exception tree of dji_media.

    DjiMediaError
    ├── BadRequest              the request is malformed (HTTP 400); names the field
    │   └── PayloadTooLarge     the body is over the configured limit (HTTP 413)
    ├── Unauthenticated         missing, invalid or expired token (HTTP 401: logs the pilot out)
    ├── Forbidden               valid token, but not for this workspace (HTTP 403)
    ├── Unavailable             a dependency could not answer; retry later (HTTP 503)
    │   ├── StorageUnavailable  object storage or STS could not be asked
    │   ├── DatabaseUnavailable the metadata database could not be read or written
    │   └── SchemaMismatch      the database's schema is older or newer than this release's
    └── ConfigError             the configuration is wrong; names the key

Backends raise these and nothing else for the failures they expect; the web layer maps them to
HTTP statuses in one table (``ERROR_STATUS`` in ``dji_media.web.handlers``). Messages are shown to clients, so they
never carry secrets, SQL, file system paths or tracebacks: the detail goes to the log.
"""
from __future__ import annotations

from typing import Optional


class DjiMediaError(Exception):
    """Base of every error the library raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DjiMediaError):
    """The request is malformed. ``field`` names the offending field when there is one."""

    def __init__(self, message: str, *, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(BadRequest):
    """The request body is larger than the server accepts."""


class Unauthenticated(DjiMediaError):
    """No token, or a token that is invalid or expired. Pilot 2 logs the pilot out on this."""


class Forbidden(DjiMediaError):
    """The token is valid but may not act on this workspace."""


class Unavailable(DjiMediaError):
    """A dependency could not answer. Says nothing about the data; the client should retry."""


class StorageUnavailable(Unavailable):
    """Object storage (or its STS) could not be asked, or refused the server itself.

    Never means "the object is gone": that is a definite answer, not an error.
    """


class DatabaseUnavailable(Unavailable):
    """The metadata database could not be opened, read or written."""


class SchemaMismatch(Unavailable):
    """The database's schema version is not the one this release works with. The store does
    nothing with it until ``dji-media migrate`` upgraded it (or dji_media was upgraded, for a
    newer schema); the message says which. ``found`` and ``needed`` are the versions."""

    def __init__(self, found: int, needed: int) -> None:
        if found < needed:
            message = (f"database schema is version {found}, this dji_media needs {needed}: "
                       "run `dji-media migrate --config <file>`")
        else:
            message = (f"database schema is version {found}, newer than this dji_media understands "
                       f"({needed}): upgrade dji_media")
        super().__init__(message)
        self.found = found
        self.needed = needed


class ConfigError(DjiMediaError):
    """A configuration value is missing, unknown or invalid. ``key`` is its dotted path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
