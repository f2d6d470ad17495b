"""Service rules that need no HTTP: answering from the database within the verification
window and its trade-off, the bounded storage checks of a request, stale records (gone or
overwritten), who may do what (authentication, then authorisation by scope), and the docks'
use cases (a file recorded without a fingerprint, a mission's expected count)."""
from __future__ import annotations

import datetime as _dt
import logging

import pytest

from dji_media import (
    Authenticator,
    BadRequest,
    Forbidden,
    Identity,
    InMemoryMediaStore,
    InMemoryObjectStore,
    MediaService,
    MediaStore,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
    Unauthenticated,
)
from dji_media.access import ALL_SCOPES, DELETE, DEVICES, READ, UPLOAD
from dji_media.docks import DockUpload
from dji_media.service import USE_CASE_SCOPES
from dji_media.testing.contracts import sample_file
from dji_media.values import FastUploadQuery, GroupReport, UploadReport, utc_now


def make(window=0, authenticator=None, store=None, **options):
    store, objects = store or InMemoryMediaStore(), InMemoryObjectStore()
    service = MediaService(
        media_store=store, object_store=objects,
        credentials=StaticCredentialProvider(endpoint="http://s3:9000", access_key="a", secret_key="b",
                                             bucket="media"),
        authenticator=authenticator or StaticTokenAuthenticator(tokens={"token-1234": ["ws"]}),
        verify_window=window, **options)
    return service, store, objects


@pytest.mark.gen_test
async def test_window_skips_storage_for_recent_confirmations():
    service, store, objects = make(window=300)
    file = sample_file("F1", object_key="media/ws/a.jpg")
    await store.upsert("ws", file)
    objects.put(file.object_key)
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    assert objects.calls == 1
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    assert await service.existing_tiny_fingerprints("ws", [file.tiny_fingerprint]) == [file.tiny_fingerprint]
    assert objects.calls == 1  # both answered from the stored confirmation
    objects.remove(file.object_key)  # the documented trade-off: still "present" inside the window
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    await store.upsert("ws", file)  # a new callback clears the confirmation
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is False
    assert objects.calls == 2


@pytest.mark.gen_test
async def test_window_zero_always_asks_storage():
    service, store, objects = make(window=0)
    file = sample_file("F1", object_key="media/ws/a.jpg")
    await store.upsert("ws", file)
    objects.put(file.object_key)
    for _ in range(3):
        assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    assert objects.calls == 3
    # The first confirmation records the object's ETag and size (a later overwrite shows in
    # them); the time is never read without a window.
    assert (await store.get("ws", "F1")).size == len(b"photo")


@pytest.mark.gen_test
async def test_unreachable_storage_is_not_remembered():
    service, store, objects = make(window=300)
    file = sample_file("F1", object_key="media/ws/a.jpg")
    await store.upsert("ws", file)
    objects.put(file.object_key)
    objects.unavailable = True
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is False
    assert (await store.get("ws", "F1")).verified_at is None


def tinies_of(n, prefix="t"):
    return [f"{i:032x}_{prefix}_{i}" for i in range(n)]


async def recorded(store, objects, n, *, stored=True):
    """n records of the workspace "ws" (object keys media/ws/f<i>.jpg), their objects in the bucket."""
    for i, tiny in enumerate(tinies_of(n)):
        file = sample_file(f"FP{i}", object_key=f"media/ws/f{i}.jpg", tiny_fingerprint=tiny)
        await store.upsert("ws", file)
        if stored:
            objects.put(file.object_key)
    return tinies_of(n)


class CountingReads(InMemoryMediaStore):
    """Counts the full records the service reads itself, apart from the slim confirmation
    lookup (whose default here happens to derive from them)."""

    def __init__(self):
        super().__init__()
        self.record_reads = 0
        self.asked = []  # the tiny fingerprints whose full records the service read
        self._slim = False

    async def find_by_tiny_fingerprints(self, workspace_id, tiny_fingerprints):
        if not self._slim:
            self.record_reads += 1
            self.asked.extend(tiny_fingerprints)
        return await super().find_by_tiny_fingerprints(workspace_id, tiny_fingerprints)

    async def tiny_fingerprint_confirmations(self, workspace_id, tiny_fingerprints):
        self._slim = True
        try:
            return await super().tiny_fingerprint_confirmations(workspace_id, tiny_fingerprints)
        finally:
            self._slim = False


@pytest.mark.gen_test
async def test_a_request_heads_at_most_max_checks_records_and_answers_the_rest_unknown(caplog):
    service, store, objects = make(window=3600, max_checks_per_request=32, store=CountingReads())
    tinies = await recorded(store, objects, 100)
    with caplog.at_level(logging.INFO, logger="dji_media.service"):
        known = await service.existing_tiny_fingerprints("ws", tinies)
    assert known == tinies[:32]  # the first ones, in request order
    assert objects.calls_by_kind == {"stat": 32}  # no listing, whatever the folder holds
    assert store.asked == tinies[:32]  # full records only of those it checks
    assert [r.getMessage() for r in caplog.records if "without a storage check" in r.getMessage()] == [
        "68 of 100 unconfirmed tiny fingerprint(s) of ws answered unknown without a storage check "
        "(max_checks_per_request=32)"]
    # Confirmed ones are answered from the database: each request checks the next 32.
    assert await service.existing_tiny_fingerprints("ws", tinies) == tinies[:64]
    assert objects.calls_by_kind == {"stat": 64}


@pytest.mark.gen_test
async def test_confirmed_tiny_fingerprints_are_answered_without_reading_records():
    service, store, objects = make(window=3600, store=CountingReads())
    tinies = await recorded(store, objects, 10)
    assert await service.existing_tiny_fingerprints("ws", tinies) == tinies
    assert store.record_reads == 1  # the unconfirmed ones, to HEAD them
    assert await service.existing_tiny_fingerprints("ws", tinies + ["unknown_1"]) == tinies
    assert store.record_reads == 1 and objects.calls_by_kind == {"stat": 10}


@pytest.mark.gen_test
async def test_a_confirmation_older_than_the_window_is_checked_again():
    now = [utc_now()]
    service, store, objects = make(window=3600, clock=lambda: now[0])
    [tiny] = await recorded(store, objects, 1)
    assert await service.existing_tiny_fingerprints("ws", [tiny]) == [tiny]
    now[0] += _dt.timedelta(seconds=3599)
    objects.remove("media/ws/f0.jpg")
    assert await service.existing_tiny_fingerprints("ws", [tiny]) == [tiny]  # inside the window
    now[0] += _dt.timedelta(seconds=1)  # the sweep stopped: the confirmation lapses
    assert await service.existing_tiny_fingerprints("ws", [tiny]) == []
    assert await store.get("ws", "FP0") is None  # gone: the stale record is removed
    assert objects.calls_by_kind == {"stat": 2}


@pytest.mark.gen_test
async def test_an_object_overwritten_since_its_first_confirmation_is_stale(caplog):
    now = [utc_now()]
    service, store, objects = make(window=3600, clock=lambda: now[0])
    file = sample_file("F1", object_key="media/ws/a.jpg")
    await store.upsert("ws", file)
    objects.put(file.object_key, b"the photo")
    assert await service.fast_upload("ws", FastUploadQuery("F1")) is True
    first = await store.get("ws", "F1")
    assert first.size == len(b"the photo") and first.etag
    objects.put(file.object_key, b"another file's bytes")
    now[0] += _dt.timedelta(seconds=3600)
    with caplog.at_level(logging.INFO, logger="dji_media.service"):
        assert await service.fast_upload("ws", FastUploadQuery("F1")) is False
    assert await store.get("ws", "F1") is None
    assert "'media/ws/a.jpg' was overwritten by other bytes; stale record of ws/'F1' removed" in caplog.text


@pytest.mark.gen_test
async def test_a_store_without_confirm_has_its_confirmations_marked_as_before():
    class OlderStore(InMemoryMediaStore):
        """A store of an older release: mark_verified, no confirm."""

    OlderStore.confirm = MediaStore.confirm  # the interface's default: not implemented
    marked = []

    class Marking(OlderStore):
        async def mark_verified(self, records, when):
            marked.extend(r.file.fingerprint for r in records)
            await super().mark_verified(records, when)

    service, store, objects = make(window=3600, store=Marking())
    await recorded(store, objects, 2)
    assert await service.fast_upload("ws", FastUploadQuery("FP0")) is True
    assert await service.fast_upload("ws", FastUploadQuery("FP0")) is True
    assert marked == ["FP0"] and objects.calls_by_kind == {"stat": 1}


@pytest.mark.gen_test
async def test_two_callbacks_with_one_object_key_leave_the_last_record():
    service, store, objects = make(window=3600)
    key = "media/ws/DJI_0001.JPG"
    for fingerprint in ("FIRST", "SECOND"):
        await service.record_upload("ws", UploadReport(result=0, file=sample_file(fingerprint, object_key=key)))
    assert await store.get("ws", "FIRST") is None
    assert (await store.get("ws", "SECOND")).file.object_key == key
    objects.put(key)
    assert await service.fast_upload("ws", FastUploadQuery("FIRST")) is False
    assert await service.fast_upload("ws", FastUploadQuery("SECOND")) is True


# ------------------------------------------------------------------------------- access

SCOPED = StaticTokenAuthenticator(tokens={
    "every-scope-1": ["ws"],
    "upload-only-1": {"workspaces": ["ws"], "scopes": ["upload"]},
    "read-only-123": {"workspaces": ["ws"], "scopes": ["read"]},
    "any-ws-upload": {"workspaces": ["*"], "scopes": ["upload"]},
})


@pytest.mark.gen_test
async def test_a_scope_the_token_lacks_is_forbidden_naming_it():
    service, _, _ = make(authenticator=SCOPED)
    identity = await service.authenticate("upload-only-1", "ws", UPLOAD)
    assert identity.scopes == {UPLOAD}
    for scope in (READ, DELETE, DEVICES):
        with pytest.raises(Forbidden, match=f"lacks the '{scope}' scope"):
            await service.authenticate("upload-only-1", "ws", scope)
    with pytest.raises(Forbidden, match="'upload' scope"):
        await service.authenticate("read-only-123", "ws", UPLOAD)
    await service.authenticate("read-only-123", "ws", READ)
    for scope in ALL_SCOPES:  # a token configured without scopes keeps every one
        await service.authenticate("every-scope-1", "ws", scope)


@pytest.mark.gen_test
async def test_order_of_checks_token_then_authorisation_then_workspace_format():
    service, _, _ = make(authenticator=SCOPED)
    for token in (None, "", "not-a-known-token"):
        with pytest.raises(Unauthenticated):
            await service.authenticate(token, "a*b", DELETE)
    # A token for other workspaces is told 403 before it learns anything about the id's form.
    with pytest.raises(Forbidden, match="workspace"):
        await service.authenticate("upload-only-1", "a*b", UPLOAD)
    with pytest.raises(Forbidden, match="scope"):
        await service.authenticate("any-ws-upload", "a*b", READ)
    with pytest.raises(BadRequest, match="workspace_id"):
        await service.authenticate("any-ws-upload", "a*b", UPLOAD)


def test_every_use_case_states_its_scope():
    use_cases = {"fast_upload", "existing_tiny_fingerprints", "issue_credentials", "record_upload",
                 "record_group"}
    assert set(USE_CASE_SCOPES) == use_cases
    assert all(callable(getattr(MediaService, name)) for name in use_cases)
    # The Pilot 2 / dock upload flow is the upload scope, all of it.
    assert set(USE_CASE_SCOPES.values()) == {UPLOAD}
    with pytest.raises(TypeError):
        USE_CASE_SCOPES["fast_upload"] = READ  # one table, not changed at run time


class OldStyleAuthenticator(Authenticator):
    """A third party's authenticator written for the interface before scopes."""

    async def authenticate(self, token, workspace_id):
        if token != "old-token-123":
            raise Unauthenticated("invalid X-Auth-Token")
        if workspace_id != "ws":
            raise Forbidden("this token may not access this workspace")
        return Identity(subject="legacy-user", workspace_id=workspace_id)


class OptionalHintAuthenticator(Authenticator):
    """The current interface, with an optional parameter it is never given."""

    async def authenticate(self, token, workspace_hint=None):
        assert workspace_hint is None
        return Identity("hinted", ["ws"], [READ])


@pytest.mark.gen_test
async def test_an_authenticator_with_the_old_signature_keeps_working(caplog):
    with caplog.at_level(logging.WARNING, logger="dji_media.auth"):
        service, _, _ = make(authenticator=OldStyleAuthenticator())
    assert "OldStyleAuthenticator.authenticate(token, workspace_id)" in caplog.text
    # Its "yes" meant "may do anything there": one workspace, every scope.
    for scope in ALL_SCOPES:
        identity = await service.authenticate("old-token-123", "ws", scope)
    assert identity == Identity(subject="legacy-user", workspaces={"ws"}, scopes=ALL_SCOPES)
    with pytest.raises(Forbidden):
        await service.authenticate("old-token-123", "ws-2", UPLOAD)
    with pytest.raises(Unauthenticated):
        await service.authenticate("other-token", "ws", UPLOAD)
    service, _, _ = make(authenticator=OptionalHintAuthenticator())
    assert (await service.authenticate("any", "ws", READ)).subject == "hinted"
    with pytest.raises(Forbidden):
        await service.authenticate("any", "ws", UPLOAD)


def test_identity_old_constructor_forms_still_build():
    assert Identity("s", "ws") == Identity(subject="s", workspace_id="ws") == Identity("s", {"ws"})
    assert Identity("s", "ws").scopes == frozenset()
    assert Identity("s", ["a", "b", "a"], ("read",)) == Identity("s", frozenset({"a", "b"}), frozenset({"read"}))
    with pytest.raises(TypeError):
        Identity("s", ["ws"], "read")  # a string would be its letters


# ------------------------------------------------------------------- docks (MQTT transport)

def dock_upload(**changes):
    values = dict(
        result=0, object_key="media/ws/DJI_202404111632_005_ac793856/DJI_20240411163430_0001_V.jpeg",
        name="DJI_20240411163430_0001_V.jpeg", path="DJI_202404111632_005_ac793856", flight_id="ac793856",
        drone_model_key="0-91-0", payload_model_key="1-81-0", is_original=True, sn="1581F5BKD223Q00A",
        gateway_sn="4TADKAQ000002J", gimbal_yaw_degree=-91.4, absolute_altitude=56.311, relative_altitude=41.124,
        create_time_text="2024-04-11 16:34:30", shoot_lat=22.1, shoot_lng=113.9, cloud_to_cloud_id="DEFAULT",
        raw_json='{"method":"file_upload_callback"}', expected_file_count=14, uploaded_file_count=12,
        flight_type=0)
    values.update(changes)
    return DockUpload(**values)


async def dock_records(store, workspace_id="ws"):
    return await store.records_by_object_key(workspace_id, None, None, 100)


@pytest.mark.gen_test
async def test_a_dock_upload_is_recorded_without_a_fingerprint_once():
    service, store, _ = make()
    report = dock_upload()
    outcome = await service.record_dock_upload("ws", report)
    assert (outcome.recorded, outcome.object_key, outcome.result) == (True, report.object_key, 0)
    [record] = await dock_records(store)
    file = record.file
    assert file.fingerprint is None and file.tiny_fingerprint is None
    assert (file.object_key, file.name, file.path) == (report.object_key, report.name, report.path)
    assert (file.file_group_id, file.job_id) == ("ac793856", "ac793856")
    assert (file.drone_model_key, file.payload_model_key, file.is_original, file.sn) == (
        "0-91-0", "1-81-0", True, "1581F5BKD223Q00A")
    assert (file.gimbal_yaw_degree, file.absolute_altitude, file.relative_altitude) == (-91.4, 56.311, 41.124)
    # The dock's local time without a zone: kept as sent, none invented.
    assert (file.created_time, file.created_time_text) == (None, "2024-04-11 16:34:30")
    assert (file.shoot_lat, file.shoot_lng, file.raw_json) == (22.1, 113.9, report.raw_json)
    # The mission's expected count came with it.
    group = await store.get_group("ws", "ac793856")
    assert group.expected_file_count == 14
    # The dock sends the event again (no reply reached it): still one record.
    await service.record_dock_upload("ws", report)
    [again] = await dock_records(store)
    assert again.revision == record.revision + 1 and again.public_id == record.public_id
    # Never an answer to a Pilot's fast-upload.
    assert await store.get("ws", "") is None


@pytest.mark.gen_test
async def test_a_failed_dock_upload_is_acknowledged_not_recorded():
    service, store, _ = make()
    outcome = await service.record_dock_upload("ws", dock_upload(result=3))
    assert (outcome.recorded, outcome.result) == (False, 3)
    assert await dock_records(store) == [] and await store.get_group("ws", "ac793856") is None


@pytest.mark.gen_test
async def test_a_dock_upload_without_a_mission_or_counts():
    service, store, _ = make()
    await service.record_dock_upload("ws", dock_upload(flight_id="", expected_file_count=None))
    [record] = await dock_records(store)
    assert (record.file.file_group_id, record.file.job_id) == (None, None)
    # Dock 3 sends no flight_task: a mission without a count makes no group.
    await service.record_dock_upload("ws", dock_upload(object_key="media/ws/b.obs", expected_file_count=None))
    assert await store.get_group("ws", "ac793856") is None


@pytest.mark.gen_test
async def test_a_dock_upload_is_checked():
    service, store, _ = make()
    with pytest.raises(BadRequest) as refused:
        await service.record_dock_upload("ws", dock_upload(object_key="media/other-ws/a.jpeg"))
    assert refused.value.field == "object_key"
    with pytest.raises(BadRequest) as refused:
        await service.record_dock_upload("ws", dock_upload(object_key="media/ws/../other/a.jpeg"))
    assert refused.value.field == "object_key"
    with pytest.raises(BadRequest) as refused:
        await service.record_dock_upload("a*b", dock_upload())
    assert refused.value.field == "workspace_id"
    with pytest.raises(BadRequest) as refused:
        await service.record_dock_upload("ws", dock_upload(flight_id="f" * 129))
    assert refused.value.field == "flight_id"
    with pytest.raises(BadRequest) as refused:
        await service.record_dock_upload("ws", dock_upload(expected_file_count=-1))
    assert refused.value.field == "expected_file_count"
    assert await dock_records(store) == []


@pytest.mark.gen_test
async def test_the_dock_key_prefix_is_enforced_separately():
    # Docks cache their storage configuration: a deployment that moved its prefix may let
    # docks write under the old one for a while, and still hold Pilot 2 to the new one.
    service, store, _ = make(enforce_dock_key_prefix=False)
    assert service.enforce_key_prefix is True
    outcome = await service.record_dock_upload("ws", dock_upload(object_key="old-prefix/ws/a.jpeg"))
    assert outcome.recorded
    with pytest.raises(BadRequest):
        await service.record_upload("ws", UploadReport(0, sample_file("F1", object_key="old-prefix/ws/a.jpeg")))
    with pytest.raises(BadRequest):  # the key's form is checked still
        await service.record_dock_upload("ws", dock_upload(object_key="/a.jpeg"))
    service, _, _ = make(enforce_key_prefix=False)
    assert service.enforce_dock_key_prefix is True
    with pytest.raises(BadRequest):
        await service.record_dock_upload("ws", dock_upload(object_key="old-prefix/ws/a.jpeg"))


@pytest.mark.gen_test
async def test_a_dock_upload_supersedes_a_pilot_record_of_its_key():
    service, store, _ = make()
    report = dock_upload()
    await service.record_upload("ws", UploadReport(0, sample_file("F1", object_key=report.object_key)))
    await service.record_dock_upload("ws", report)
    assert await store.get("ws", "F1") is None
    [record] = await dock_records(store)
    assert record.file.fingerprint is None


@pytest.mark.gen_test
async def test_a_repeated_expected_count_is_written_once():
    """A Dock 1 or 2 repeats the mission's count in every file's callback: one write per change."""
    service, store, _ = make()
    writes = []
    save = store.save_mission_expectation

    async def counting(workspace_id, flight_id, count):
        writes.append((workspace_id, flight_id, count))
        await save(workspace_id, flight_id, count)

    store.save_mission_expectation = counting
    for i in range(5):
        await service.record_dock_upload("ws", dock_upload(object_key=f"media/ws/m/{i}.jpeg"))
    assert writes == [("ws", "ac793856", 14)]
    await service.record_dock_upload("ws", dock_upload(object_key="media/ws/m/5.jpeg", expected_file_count=15))
    await service.record_mission_expectation("ws", "ac793856", 15)
    await service.record_mission_expectation("ws", "ac793856", 14)
    assert writes[1:] == [("ws", "ac793856", 15), ("ws", "ac793856", 14)]
    assert (await store.get_group("ws", "ac793856")).expected_file_count == 14
    assert len(await dock_records(store)) == 6


@pytest.mark.gen_test
async def test_record_mission_expectation():
    service, store, _ = make()
    await service.record_mission_expectation("ws", "flight-1", 20)
    await service.record_group("ws", GroupReport("flight-1", 18, 7))
    await service.record_mission_expectation("ws", "flight-1", 21)  # latest wins, the totals stay
    group = await store.get_group("ws", "flight-1")
    assert (group.expected_file_count, group.file_count, group.file_uploaded_count) == (21, 18, 7)
    await service.record_mission_expectation("ws", "flight-2", 0)
    assert (await store.get_group("ws", "flight-2")).expected_file_count == 0
    for workspace_id, flight_id, count, field in (("a*b", "f", 1, "workspace_id"), ("ws", "", 1, "flight_id"),
                                                  ("ws", "f" * 129, 1, "flight_id"),
                                                  ("ws", "f", -1, "expected_file_count"),
                                                  ("ws", "f", True, "expected_file_count")):
        with pytest.raises(BadRequest) as refused:
            await service.record_mission_expectation(workspace_id, flight_id, count)
        assert refused.value.field == field
    assert await store.get_group("ws", "f") is None
