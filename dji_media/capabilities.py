"""Optional capabilities of the plugin interfaces, and which feature needs which.

A third party's ``MediaStore`` written against an older release must keep working, so new
abilities never arrive as abstract methods: they arrive as methods with a documented default
(``MediaStore.insert_missing`` raises ``NotImplementedError``; ``mark_verified`` does nothing).
A feature that cannot work on that default says so here, once, and the wiring refuses a
configuration that turns the feature on for a backend without it, naming both, at start-up
rather than on the first request that needs it.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

from .errors import MissingCapability
from .interfaces import MediaStore, ObjectStore

__all__ = ["Capability", "CAPABILITIES", "FEATURES", "has_capability", "require_capability", "capabilities_of"]


@dataclasses.dataclass(frozen=True)
class Capability:
    """An optional method of an interface: ``method`` of ``interface``, needed by ``feature``."""

    name: str
    interface: type
    method: str
    feature: str
    without: str  # what the interface's default does, for the error message


CAPABILITIES: Dict[str, Capability] = {c.name: c for c in (
    Capability("import", MediaStore, "insert_missing", "dji-media import (moving records in)",
               "cannot store imported records"),
    Capability("confirmations", MediaStore, "mark_verified",
               "service.verify_window_seconds > 0 (answering from recent storage confirmations)",
               "forgets every confirmation, so every request asks storage again"),
    Capability("migrations", MediaStore, "migrate", "dji-media migrate",
               "has no versioned schema to upgrade"),
    # The storage sweep (dji_media.sweep) needs every one of these; "sweep" names the set.
    Capability("sweep_records", MediaStore, "records_by_object_key", "the storage sweep (sweep.enabled)",
               "cannot read records in object-key order"),
    Capability("sweep_confirm", MediaStore, "confirm", "the storage sweep (sweep.enabled)",
               "cannot record confirmations with their ETag and size"),
    Capability("sweep_workspaces", MediaStore, "workspaces", "the storage sweep (sweep.enabled)",
               "cannot list the workspaces that hold records"),
    Capability("leases", MediaStore, "acquire_lease", "the storage sweep (sweep.enabled)",
               "has no lease, so the sweep could not run once per deployment"),
    Capability("mission_expectations", MediaStore, "save_mission_expectation",
               "docks (a mission's expected file count)", "cannot record a mission's expected file count"),
    # The media library (dji_media.catalogue) needs every one of these; "catalogue" names the set.
    Capability("find_records", MediaStore, "find_records", "the media library (catalogue)",
               "cannot search records"),
    Capability("count_records", MediaStore, "count_records", "the media library (catalogue)",
               "cannot count records"),
    Capability("records_by_public_id", MediaStore, "get_by_public_id", "the media library (catalogue)",
               "cannot read a record by its public id"),
    Capability("remove_record", MediaStore, "remove_record", "the media library (catalogue)",
               "cannot delete a record"),
    Capability("mission_summaries", MediaStore, "mission_summaries", "the media library (catalogue)",
               "cannot summarise missions"),
    Capability("presign", ObjectStore, "presign_get", "the media library (catalogue)",
               "cannot hand out download URLs"),
    Capability("object_delete", ObjectStore, "delete", "the media library (catalogue)",
               "cannot delete objects"),
    Capability("listing", ObjectStore, "list_page", "the storage sweep (sweep.enabled)",
               "cannot list the bucket"),
)}

# The capabilities a feature needs, by feature.
FEATURES: Dict[str, Tuple[str, ...]] = {
    "sweep": ("sweep_records", "sweep_confirm", "sweep_workspaces", "leases", "listing"),
    "docks": ("mission_expectations",),
    "catalogue": ("find_records", "count_records", "records_by_public_id", "remove_record", "mission_summaries",
                  "presign", "object_delete"),
}


def has_capability(backend: object, name: str) -> bool:
    """Whether ``backend`` (an instance, or a class before it is built) implements the
    capability itself rather than keeping the interface's default."""
    capability = CAPABILITIES[name]
    cls = backend if isinstance(backend, type) else type(backend)
    if not issubclass(cls, capability.interface):
        return False
    default = getattr(capability.interface, capability.method)
    return getattr(cls, capability.method, default) is not default


def require_capability(backend: object, name: str) -> None:
    """Raise ``MissingCapability`` naming the feature and the backend when it lacks ``name``."""
    if not has_capability(backend, name):
        capability = CAPABILITIES[name]
        cls = backend if isinstance(backend, type) else type(backend)
        raise MissingCapability(
            "", f"{capability.feature} needs {capability.interface.__name__}.{capability.method}, "
                f"which {cls.__module__}.{cls.__qualname__} does not implement "
                f"(its default {capability.without})")


def capabilities_of(backend: object) -> List[str]:
    """The names of the optional capabilities ``backend`` implements (for ``dji-media check``)."""
    return [name for name in CAPABILITIES if has_capability(backend, name)]
