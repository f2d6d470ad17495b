"""The exception tree of dji_media.

    DjiMediaError
    ├── BadRequest              the request is malformed (HTTP 400); names the field
    │   └── PayloadTooLarge     the body is over the configured limit (HTTP 413)
    ├── Unauthenticated         missing, invalid or expired token (HTTP 401: logs the pilot out)
    ├── Forbidden               valid token, but not for this workspace or this action (HTTP 403)
    ├── NotFound                no such file in this workspace (HTTP 404; another workspace's id too)
    ├── BoundElsewhere          the dock is bound to another workspace (HTTP 409)
    ├── Unavailable             a dependency could not answer; retry later (HTTP 503)
    │   ├── StorageUnavailable  object storage or STS could not be asked
    │   ├── DatabaseUnavailable the metadata database could not be read or written
    │   └── SchemaMismatch      the database's schema is older or newer than this release's
    ├── ConfigError             the configuration is wrong; names the key
    │   └── MissingCapability   a configured feature needs what the chosen backend lacks
    ├── StartupError            a part the server needs cannot be reached at start-up
    │   └── EmbeddedS3Error     the embedded S3 server could not be found, started or reached
    ├── SourceError             an import's source database cannot be opened or read
    ├── ImportTargetFailed      an import's target store could not be written
    ├── ImportFailed            an import stopped; carries the summary of what was done
    └── RowRejected             one imported row cannot become a record (the import goes on)

Backends raise these and nothing else for the failures they expect, translating their library's
exceptions in one place each; each transport maps them in one table (HTTP:
``ERROR_STATUS`` in ``dji_media.web.handlers``). Messages are shown to clients, so they never
carry secrets, SQL, file system paths or tracebacks: the detail goes to the log.
"""
from __future__ import annotations

from typing import Any, Optional


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
    """The token is valid but may not act on this workspace, or may not do this there."""


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


class MissingCapability(ConfigError):
    """A feature the configuration turns on needs an ability its backend does not have; the
    message names both."""


class StartupError(DjiMediaError):
    """A part the server needs cannot be reached at start-up."""


class EmbeddedS3Error(StartupError):
    """The embedded S3 server could not be found, started or reached."""


class SourceError(DjiMediaError):
    """An import's source database cannot be opened or read; the message names what, not how."""


class ImportTargetFailed(DjiMediaError):
    """An import's target store failed; what was imported before stays."""


class ImportFailed(DjiMediaError):
    """The source could not be read or the target could not be written. ``summary`` (an
    ``ImportSummary``) counts what was done before: what was imported stays, and running the
    import again is safe."""

    def __init__(self, message: str, summary: Optional[Any]) -> None:
        super().__init__(message)
        self.summary = summary


class RowRejected(DjiMediaError):
    """One source row cannot become a record; ``reason`` says why without quoting the row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DockTimeout(Unavailable):
    """A dock did not answer a command (MQTT ``services``) within the timeout, after the
    retries: it may be off-line or busy. Says nothing about whether it acted (HTTP 504)."""


class UnknownDock(Forbidden):
    """The dock is not in the caller's workspace (not bound, or bound to another one). A
    ``Forbidden``: nobody commands another workspace's dock; HTTP answers 404, which does not
    tell whether the dock exists elsewhere."""


class NotFound(DjiMediaError):
    """The media library has no such file in the workspace: never stored, deleted, gone from
    storage, or another workspace's (which is not told apart: HTTP 404 either way)."""


class BoundElsewhere(DjiMediaError):
    """The dock is bound to another workspace, which must unbind it first: a workspace's
    administrator never takes another workspace's dock (HTTP 409)."""
