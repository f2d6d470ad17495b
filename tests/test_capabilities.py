"""Optional capabilities: a store written against the minimal interface keeps working, and a
feature that needs more is refused by name."""
from __future__ import annotations

from typing import List, Optional, Sequence

import pytest

from dji_media import InMemoryMediaStore, PeeweeMediaStore
from dji_media.capabilities import FEATURES, capabilities_of, has_capability, require_capability
from dji_media.errors import ConfigError, MissingCapability
from dji_media.interfaces import MediaStore
from dji_media.values import FileGroup, GroupReport, MediaFile, MediaRecord


class MinimalStore(MediaStore):
    """Only the abstract methods, as a third party's store of an older release has."""

    async def get(self, workspace_id: str, fingerprint: str) -> Optional[MediaRecord]:
        return None

    async def find_by_tiny_fingerprints(self, workspace_id: str, tiny: Sequence[str]) -> List[MediaRecord]:
        return []

    async def upsert(self, workspace_id: str, file: MediaFile) -> MediaRecord:
        raise NotImplementedError

    async def forget(self, record: MediaRecord) -> bool:
        return False

    async def save_group(self, workspace_id: str, report: GroupReport) -> FileGroup:
        raise NotImplementedError

    async def get_group(self, workspace_id: str, file_group_id: str) -> Optional[FileGroup]:
        return None


def test_a_minimal_store_can_be_built_and_has_no_optional_capability():
    assert capabilities_of(MinimalStore()) == []


def test_shipped_stores_declare_what_they_implement(tmp_path):
    sweep = ["sweep_records", "sweep_confirm", "sweep_workspaces", "leases"]  # all the sweep asks of a store
    docks = ["mission_expectations"]
    catalogue = ["find_records", "count_records", "records_by_public_id", "remove_record", "mission_summaries"]
    assert capabilities_of(InMemoryMediaStore()) == ["import", "confirmations", *sweep, *docks, *catalogue]
    store = PeeweeMediaStore(url=f"sqlite:///{tmp_path}/m.sqlite3")
    assert capabilities_of(store) == ["import", "confirmations", "migrations", *sweep, *docks, *catalogue]
    for backend in (InMemoryMediaStore, PeeweeMediaStore):
        # The sweep's media-store half; "listing" is the object store's.
        assert [name for name in FEATURES["sweep"] if not has_capability(backend, name)] == ["listing"]


def test_missing_capability_names_the_feature_and_the_backend():
    with pytest.raises(MissingCapability) as refused:
        require_capability(MinimalStore(), "import")
    message = refused.value.message
    assert "dji-media import" in message and "MediaStore.insert_missing" in message
    assert "test_capabilities.MinimalStore" in message
    assert isinstance(refused.value, ConfigError)  # reported like any configuration error


def test_something_that_is_not_a_store_has_none():
    assert not has_capability(object(), "import")
    assert not has_capability(object, "import")


def test_classes_are_asked_before_they_are_built():
    assert has_capability(PeeweeMediaStore, "import") and not has_capability(MinimalStore, "import")


def _config_with(store_spec, verify_window, tmp_path):
    import os

    import yaml

    from dji_media.config import parse_config

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf",
                           "example.yaml"), encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw["media_store"] = {"backend": store_spec}
    raw["object_store"] = {"backend": "memory"}
    raw.setdefault("service", {})["verify_window_seconds"] = verify_window
    return parse_config(raw, environ={})


def test_the_wiring_refuses_a_feature_the_store_lacks(tmp_path):
    from dji_media.wiring import build_service

    with pytest.raises(MissingCapability) as refused:
        build_service(_config_with("test_capabilities:MinimalStore", 3600, tmp_path))
    assert "verify_window_seconds" in refused.value.message and "MinimalStore" in refused.value.message
    # Without the feature, the same store is accepted.
    service = build_service(_config_with("test_capabilities:MinimalStore", 0, tmp_path))
    assert isinstance(service.media_store, MinimalStore)


@pytest.mark.gen_test
async def test_import_refuses_a_store_that_cannot_insert(tmp_path, capsys):
    # On the test's own loop: asyncio.run would leave the loop pytest-tornado made current
    # unreferenced, and its garbage collection fails a later test with a ResourceWarning.
    import sqlite3

    from dji_media.importer.command import USAGE, import_command

    source = tmp_path / "old.sqlite3"
    sqlite3.connect(source).close()
    config = _config_with("test_capabilities:MinimalStore", 0, tmp_path)
    status = await import_command(config, source_url=f"sqlite:///{source}", quiet=True)
    assert status == USAGE
    assert "dji-media import (moving records in) needs MediaStore.insert_missing" in capsys.readouterr().err
