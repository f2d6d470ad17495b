"""Optional capabilities: a store written against the minimal interface keeps working, and a
feature that needs more is refused by name."""
from __future__ import annotations

from typing import List, Optional, Sequence

import pytest

from dji_media import InMemoryMediaStore, PeeweeMediaStore
from dji_media.capabilities import capabilities_of, has_capability, require_capability
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
    assert set(capabilities_of(InMemoryMediaStore())) >= {"import", "confirmations"}
    store = PeeweeMediaStore(url=f"sqlite:///{tmp_path}/m.sqlite3")
    assert capabilities_of(store) == ["import", "confirmations", "migrations"]


def test_missing_capability_names_the_feature_and_the_backend():
    with pytest.raises(MissingCapability) as refused:
        require_capability(MinimalStore(), "import")
    message = refused.value.message
    assert "dji-media import" in message and "MediaStore.insert_missing" in message
    assert "test_capabilities.MinimalStore" in message
    assert isinstance(refused.value, ConfigError)  # reported like any configuration error


def test_something_that_is_not_a_store_has_none():
    assert not has_capability(object(), "import")
