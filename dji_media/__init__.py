"""dji_media: the media back end for DJI Pilot 2 and Docks, as a library.

The public surface is listed in ``__all__`` (tests/test_public_api.py keeps it honest):
plugin interfaces, the values that cross them, the service, the Tornado routes, the errors and
the shipped backends, the scopes. The runtime that serves them (``dji_media.runtime``), the rules
(``dji_media.rules``), the optional capabilities (``dji_media.capabilities``) and optional parts
(YAML configuration, the embedded S3 server) are imported from their modules:
``dji_media.config``, ``dji_media.embedded_s3``.
"""
from .access import ALL_SCOPES, DELETE, DEVICES, READ, UPLOAD, authorize
from .backends.auth import JwtAuthenticator, StaticTokenAuthenticator
from .backends.credentials import CachingCredentialProvider
from .backends.memory import InMemoryMediaStore, InMemoryObjectStore
from .backends.peewee_store import PeeweeMediaStore
from .backends.s3 import MinioObjectStore, StaticCredentialProvider, StsCredentialProvider
from .catalogue import Catalogue
from .errors import (
    BadRequest,
    ConfigError,
    DatabaseUnavailable,
    DjiMediaError,
    Forbidden,
    MissingCapability,
    NotFound,
    PayloadTooLarge,
    SchemaMismatch,
    StorageUnavailable,
    Unauthenticated,
    Unavailable,
)
from .interfaces import Authenticator, CredentialProvider, MediaStore, ObjectStore
from .service import USE_CASE_SCOPES, CallbackOutcome, MediaService
from .values import (
    FastUploadQuery,
    FileGroup,
    GroupReport,
    Identity,
    MediaFile,
    MediaRecord,
    SchemaMigration,
    StorageGrant,
    UploadCredentials,
    UploadReport,
)
from .web import NotFoundHandler, get_handlers, get_health_handlers

__version__ = "0.1.0"

__all__ = [
    # interfaces
    "Authenticator", "CredentialProvider", "MediaStore", "ObjectStore",
    # values
    "FastUploadQuery", "FileGroup", "GroupReport", "Identity", "MediaFile", "MediaRecord",
    "StorageGrant", "UploadCredentials", "UploadReport", "CallbackOutcome", "SchemaMigration",
    # the service and its HTTP routes
    "MediaService", "USE_CASE_SCOPES", "Catalogue", "get_handlers", "get_health_handlers", "NotFoundHandler",
    # backends
    "InMemoryMediaStore", "InMemoryObjectStore", "PeeweeMediaStore", "MinioObjectStore",
    "StsCredentialProvider", "StaticCredentialProvider", "CachingCredentialProvider",
    "StaticTokenAuthenticator",
    "JwtAuthenticator",
    # errors
    "DjiMediaError", "BadRequest", "PayloadTooLarge", "Unauthenticated", "Forbidden",
    "Unavailable", "StorageUnavailable", "DatabaseUnavailable", "SchemaMismatch", "ConfigError",
    "MissingCapability", "NotFound",
    # authorisation: scope names and the one check
    "ALL_SCOPES", "UPLOAD", "READ", "DELETE", "DEVICES", "authorize",
    "__version__",
]
