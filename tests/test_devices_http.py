"""The binding endpoints (``GET .../devices``, ``PUT`` and ``DELETE .../devices/{sn}``): in-memory
media backends, the bindings in a DatabaseDeviceDirectory on a real SQLite file; every answer is
checked against doc/openapi.yaml. Last, ``Runtime.from_config`` mounts them for ``devices:
{backend: database}``."""
from __future__ import annotations

import json

import pytest
import tornado.web
from test_openapi import DEVICE, DEVICES, Spec, load_spec

from dji_media import NotFoundHandler, PeeweeMediaStore, StaticTokenAuthenticator, get_handlers
from dji_media.backends.peewee_devices import DatabaseDeviceDirectory
from dji_media.config import load_config
from dji_media.errors import DatabaseUnavailable
from dji_media.runtime import Runtime

DOCK = "4TADKAQ000002J"
OTHER_DOCK = "7CTDM3D00BVY4K"
ADMIN_A = "devices-admin-of-ws-a"
ADMIN_B = "devices-admin-of-ws-b"
PILOT_A = "pilot-upload-only-ws-a"
EVERYTHING_A = "old-form-token-every-scope"
WILDCARD = "devices-admin-of-every-workspace"
SPEC = Spec(load_spec())


@pytest.fixture
def authenticator():
    return StaticTokenAuthenticator(tokens={
        ADMIN_A: {"workspaces": ["ws-a"], "scopes": ["devices"]},
        ADMIN_B: {"workspaces": ["ws-b"], "scopes": ["devices"]},
        PILOT_A: {"workspaces": ["ws-a"], "scopes": ["upload"]},
        EVERYTHING_A: ["ws-a"],  # the list form: every scope
        WILDCARD: {"workspaces": ["*"], "scopes": ["devices"]},
    })


@pytest.fixture
def bindings_store(tmp_path, io_loop):
    store = PeeweeMediaStore(url=f"sqlite:///{tmp_path}/devices.sqlite3")
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def directory(bindings_store):
    # The cache as in production: the endpoints must not decide a PUT from a stale answer.
    return DatabaseDeviceDirectory(bindings_store, cache_seconds=60)


@pytest.fixture
def app(service, directory):
    return tornado.web.Application(get_handlers(service, device_admin=directory),
                                   default_handler_class=NotFoundHandler)


@pytest.fixture
def send(http_client, base_url):
    """``send(method, path, body=None, token=ADMIN_A)`` -> (status, envelope), the envelope
    checked against the spec's schema for that operation and status."""
    async def send(method, path, body=None, *, token=ADMIN_A, raw=None, documented=True):
        headers = {"X-Auth-Token": token} if token is not None else {}
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if method == "PUT" and payload is None:
            payload = b""
        response = await http_client.fetch(base_url + path, method=method, body=payload, headers=headers,
                                           raise_error=False, allow_nonstandard_methods=True)
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Cache-Control"] == "no-store"
        envelope = json.loads(response.body)
        if documented:
            spec_path = DEVICES if path.endswith("/devices") else DEVICE
            validator = SPEC.response_validator(spec_path, response.code, method.lower())
            errors = [e.message for e in validator.iter_errors(envelope)]
            assert not errors, (method, path, response.code, envelope, errors)
        return response.code, envelope
    return send


def listing(ws="ws-a"):
    return f"/manage/api/v1/workspaces/{ws}/devices"


def device(sn=DOCK, ws="ws-a"):
    return f"/manage/api/v1/workspaces/{ws}/devices/{sn}"


@pytest.mark.gen_test(timeout=60)
async def test_bind_list_rebind_and_unbind(send, directory):
    assert await send("GET", listing()) == (200, {"code": 0, "message": "success", "data": {"devices": []}})
    status, envelope = await send("PUT", device(), {"note": "roof, building 3"})
    assert status == 200 and envelope["code"] == 0
    data = envelope["data"]
    assert (data["gateway_sn"], data["workspace_id"], data["note"]) == (DOCK, "ws-a", "roof, building 3")
    assert await directory.workspace_of(DOCK) == "ws-a"  # the docks' lookup sees it at once
    status, envelope = await send("PUT", device(OTHER_DOCK))  # no body: no note
    assert status == 200 and envelope["data"]["note"] is None
    status, envelope = await send("GET", listing())
    assert [d["gateway_sn"] for d in envelope["data"]["devices"]] == [DOCK, OTHER_DOCK]
    # Binding again in the same workspace replaces the note.
    status, envelope = await send("PUT", device(), {"note": None})
    assert status == 200 and envelope["data"]["note"] is None
    assert await send("GET", listing("ws-b"), token=ADMIN_B) == (
        200, {"code": 0, "message": "success", "data": {"devices": []}})
    # Unbind: idempotent.
    assert await send("DELETE", device()) == (200, {"code": 0, "message": "success",
                                                    "data": {"gateway_sn": DOCK, "removed": True}})
    assert await send("DELETE", device()) == (200, {"code": 0, "message": "success",
                                                    "data": {"gateway_sn": DOCK, "removed": False}})
    assert await directory.workspace_of(DOCK) is None
    status, envelope = await send("GET", listing())
    assert [d["gateway_sn"] for d in envelope["data"]["devices"]] == [OTHER_DOCK]
    # A token of the list form has every scope, devices included.
    assert (await send("GET", listing(), token=EVERYTHING_A))[0] == 200


@pytest.mark.gen_test(timeout=60)
async def test_a_dock_bound_elsewhere_is_409_and_stays_there(send, directory, bindings_store):
    assert (await send("PUT", device(ws="ws-b"), token=ADMIN_B))[0] == 200
    status, envelope = await send("PUT", device(), {"note": "mine now"})
    assert status == 409 and envelope["code"] == 409 and "another workspace" in envelope["message"]
    assert await directory.workspace_of(DOCK) == "ws-b"
    # DELETE from the wrong workspace leaves it alone and says no more than for an unknown dock.
    assert await send("DELETE", device()) == (200, {"code": 0, "message": "success",
                                                    "data": {"gateway_sn": DOCK, "removed": False}})
    assert await directory.workspace_of(DOCK) == "ws-b"
    # Bound elsewhere by another process (another directory on the same database) after this
    # directory cached "unbound": the PUT still sees it.
    assert await directory.workspace_of(OTHER_DOCK) is None
    await DatabaseDeviceDirectory(bindings_store).bind(OTHER_DOCK, "ws-b")
    assert (await send("PUT", device(OTHER_DOCK)))[0] == 409
    # Once ws-b lets it go, ws-a may bind it.
    assert (await send("DELETE", device(ws="ws-b"), token=ADMIN_B))[1]["data"]["removed"] is True
    assert (await send("PUT", device()))[0] == 200
    assert await directory.workspace_of(DOCK) == "ws-a"


@pytest.mark.gen_test(timeout=60)
async def test_without_the_devices_scope_or_for_another_workspace_it_is_403(send, directory):
    await directory.bind(DOCK, "ws-a")
    for method, path in (("GET", listing()), ("PUT", device(OTHER_DOCK)), ("DELETE", device())):
        status, envelope = await send(method, path, token=PILOT_A)  # a pilot's upload-only token
        assert (status, envelope["code"]) == (403, 403) and "'devices' scope" in envelope["message"], method
        status, envelope = await send(method, path, token=ADMIN_B)  # another workspace's admin
        assert status == 403 and "workspace" in envelope["message"], method
        assert (await send(method, path, token=None))[0] == 401
        assert (await send(method, path, token="not-a-token-at-all"))[0] == 401
    assert await directory.workspace_of(DOCK) == "ws-a"
    assert await directory.workspace_of(OTHER_DOCK) is None


@pytest.mark.gen_test(timeout=60)
async def test_bad_serial_numbers_workspaces_and_bodies_are_400(send, directory):
    for sn in ("4TAD%2B1", "4TAD%20KAQ", "a" * 129, "%E8%88%AA"):
        for method in ("PUT", "DELETE"):
            status, envelope = await send(method, device(sn))
            assert (status, envelope["code"]) == (400, 400) and "gateway_sn" in envelope["message"], (sn, method)
    # The workspace id's format is checked after the token (401) and the workspace (403): a
    # token for ws-a learns only that it may not go there; one for every workspace gets 400.
    assert (await send("GET", listing("a*b")))[0] == 403
    for ws in ("a*b", "x" * 65, "a.b"):
        status, envelope = await send("GET", listing(ws), token=WILDCARD)
        assert status == 400 and "workspace_id" in envelope["message"], ws
    for body, field in ((b"[1]", "body"), (b"{", "body"), (json.dumps({"note": 5}).encode(), "note"),
                        (json.dumps({"note": "n" * 256}).encode(), "note")):
        status, envelope = await send("PUT", device(), raw=body)
        assert status == 400 and field in envelope["message"], (body, envelope)
    status, envelope = await send("PUT", device(), raw=b'{"note": "' + b"n" * 5000 + b'"}')
    assert (status, envelope["code"]) == (413, 413)
    assert await directory.list() == []


@pytest.mark.gen_test(timeout=60)
async def test_a_database_that_cannot_answer_is_503(send, directory, monkeypatch):
    async def down(*args, **kwargs):
        raise DatabaseUnavailable("the media database is unavailable")

    monkeypatch.setattr(directory.store, "run_unit", down)
    for method, path in (("GET", listing()), ("PUT", device()), ("DELETE", device())):
        status, envelope = await send(method, path)
        assert (status, envelope["code"]) == (503, 503) and envelope["message"] == "the media database is unavailable"


@pytest.mark.gen_test(timeout=60)
async def test_other_methods_are_405_envelopes(send):
    for method, path in (("POST", listing()), ("DELETE", listing()), ("GET", device()), ("POST", device())):
        status, envelope = await send(method, path, {} if method == "POST" else None, documented=False)
        assert (status, envelope["code"]) == (405, 405), (method, path)


@pytest.mark.gen_test(timeout=60)
async def test_serve_mounts_the_binding_endpoints_for_a_database_directory(tmp_path, http_client):
    """``Runtime.from_config`` with ``devices: {backend: database}`` and no ``mqtt``: the routes
    are served over the service's own database, and the pilot routes still answer."""
    import yaml

    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0, "demo_banner": False},
        "logging": {"level": "warning"},
        "media_store": {"backend": "peewee", "options": {"url": f"sqlite:///{tmp_path}/media.sqlite3"}},
        "object_store": {"backend": "memory"},
        "credentials": {"backend": "static", "options": {
            "endpoint": "http://storage.example:9000", "access_key": "AK", "secret_key": "SK", "bucket": "media"}},
        "authenticator": {"backend": "static", "options": {"tokens": {
            ADMIN_A: {"workspaces": ["ws-a"], "scopes": ["devices"]},
            PILOT_A: {"workspaces": ["ws-a"], "scopes": ["upload"]}}}},
        "devices": {"backend": "database"},
    }))
    runtime = Runtime.from_config(load_config(str(config_file)), embedded_s3=False, banner=False)
    await runtime.start()
    try:
        base = f"http://127.0.0.1:{runtime.transports[0].port}"

        async def fetch(method, path, token, body=None):
            response = await http_client.fetch(base + path, method=method, headers={"X-Auth-Token": token},
                                               body=body, raise_error=False, allow_nonstandard_methods=True)
            return response.code, json.loads(response.body)

        assert (await fetch("PUT", device(), ADMIN_A, b'{"note": "served"}'))[0] == 200
        status, envelope = await fetch("GET", listing(), ADMIN_A)
        assert status == 200 and [(d["gateway_sn"], d["note"]) for d in envelope["data"]["devices"]] == [
            (DOCK, "served")]
        assert (await fetch("GET", listing(), PILOT_A))[0] == 403
        assert (await fetch("POST", "/storage/api/v1/workspaces/ws-a/sts", PILOT_A, b"{}"))[0] == 200
        assert (await fetch("DELETE", device(), ADMIN_A))[1]["data"]["removed"] is True
    finally:
        await runtime.stop()
