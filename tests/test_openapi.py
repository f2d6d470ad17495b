"""doc/openapi.yaml against the code: a valid OpenAPI document, the same routes as
``get_handlers``, the bounds of ``dji_media.protocol``, and real answers that fit its schemas."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Dict, Tuple

import jsonschema
import pytest
import referencing
import referencing.jsonschema
import yaml
from openapi_spec_validator import validate as validate_openapi

from dji_media import BadRequest, DatabaseUnavailable, MediaFile, StorageUnavailable, UploadReport, get_handlers, rules
from dji_media.catalogue import Catalogue
from dji_media.web import DEFAULT_MAX_BODY_BYTES, wire
from support import TOKEN_B

SPEC_FILE = pathlib.Path(__file__).resolve().parent.parent / "doc" / "openapi.yaml"
SPEC_URI = "urn:dji-media:openapi"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def load_spec() -> Dict[str, Any]:
    with SPEC_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _ecma_pattern(validator, pattern, instance, schema):
    """``pattern`` as JSON Schema means it (ECMA-262): "$" is the end of the text. Python's "$"
    also matches before a final newline, which would let "ws-a\\n" pass."""
    if isinstance(instance, str) and not re.search(re.sub(r"(?<!\\)\$", r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class Spec:
    """The document plus JSON Schema validators for its request and response schemas.

    OpenAPI 3.1 schemas are JSON Schema 2020-12; ``$ref``s inside them resolve against the
    whole document, registered under one URI.
    """

    def __init__(self, document: Dict[str, Any]) -> None:
        self.doc = document
        resource = referencing.Resource.from_contents(
            document, default_specification=referencing.jsonschema.DRAFT202012)
        self._registry = referencing.Registry().with_resource(SPEC_URI, resource)

    def resolve(self, node: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
        """Follow a local ``$ref`` (a response object may be one); return the node and its pointer."""
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = self.doc
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target, ref[1:]

    def operation(self, path: str, method: str = "post") -> Dict[str, Any]:
        return self.doc["paths"][path][method]

    def statuses(self, path: str, method: str = "post") -> set:
        return {int(code) for code in self.operation(path, method)["responses"]}

    def _validator(self, pointer: str) -> jsonschema.Draft202012Validator:
        return Validator({"$ref": SPEC_URI + "#" + pointer}, registry=self._registry)

    def response_validator(self, path: str, status: int, method: str = "post") -> jsonschema.Draft202012Validator:
        response = self.operation(path, method)["responses"][str(status)]
        pointer = _pointer("paths", path, method, "responses", str(status))
        if "$ref" in response:
            response, pointer = self.resolve(response)
        assert "schema" in response["content"]["application/json"], (path, status)
        return self._validator(pointer + _pointer("content", "application/json", "schema"))

    def request_validator(self, path: str) -> jsonschema.Draft202012Validator:
        return self._validator(_pointer("paths", path, "post", "requestBody", "content",
                                        "application/json", "schema"))

    def schema(self, name: str) -> Dict[str, Any]:
        return self.doc["components"]["schemas"][name]


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec(load_spec())


WS_PATH = "/media/api/v1/workspaces/{workspace_id}"
FAST = f"{WS_PATH}/fast-upload"
TINY = f"{WS_PATH}/files/tiny-fingerprints"
CALLBACK = f"{WS_PATH}/upload-callback"
GROUP = f"{WS_PATH}/group-upload-callback"
STS = "/storage/api/v1/workspaces/{workspace_id}/sts"
MEDIA_PRIORITY = "/manage/api/v1/workspaces/{workspace_id}/devices/{gateway_sn}/jobs/{flight_id}/media-priority"
DEVICES = "/manage/api/v1/workspaces/{workspace_id}/devices"
DEVICE = "/manage/api/v1/workspaces/{workspace_id}/devices/{gateway_sn}"
PILOT_PATHS = [FAST, TINY, CALLBACK, GROUP, STS]
LIBRARY = f"{WS_PATH}/library"
# The media library's operations (mounted with a Catalogue only): (path, method) -> statuses.
LIBRARY_OPERATIONS = {
    (f"{LIBRARY}/files", "get"): {200, 400, 401, 403, 503},
    (f"{LIBRARY}/files/{{file_id}}", "get"): {200, 400, 401, 403, 404, 503},
    (f"{LIBRARY}/files/{{file_id}}", "delete"): {200, 400, 401, 403, 503},
    (f"{LIBRARY}/files/{{file_id}}/download", "get"): {200, 302, 400, 401, 403, 404, 503},
    (f"{LIBRARY}/missions", "get"): {200, 400, 401, 403, 503},
    (f"{LIBRARY}/export.csv", "get"): {200, 400, 401, 403, 503},
    (f"{LIBRARY}/export.geojson", "get"): {200, 400, 401, 403, 503},
    ("/media/api/v1/files/{workspace_id}/files", "get"): {200, 400, 401, 403, 503},
    ("/media/api/v1/files/{workspace_id}/file/{file_id}/url", "get"): {302, 400, 401, 403, 404, 503},
}
LIBRARY_PATHS = sorted({path for path, _ in LIBRARY_OPERATIONS})
# The command is mounted with a DockCommands only, the bindings with a device_admin only.
ALL_PATHS = PILOT_PATHS + [MEDIA_PRIORITY, DEVICES, DEVICE] + LIBRARY_PATHS
# The binding operations: (path, method) -> the statuses each documents.
BINDING_OPERATIONS = {
    (DEVICES, "get"): {200, 400, 401, 403, 503},
    (DEVICE, "put"): {200, 400, 401, 403, 409, 413, 503},
    (DEVICE, "delete"): {200, 400, 401, 403, 503},
}


def concrete(path: str, workspace_id: str = "ws-a") -> str:
    return (path.replace("{workspace_id}", workspace_id).replace("{gateway_sn}", "DOCK1").replace("{flight_id}", "f-1")
            .replace("{file_id}", "0b5c7e36-8a5e-4c2e-9d0e-2f6a3b1c4d5e"))


# ------------------------------------------------------------------------- the document

def test_the_document_is_valid_openapi():
    validate_openapi(load_spec())


def test_every_operation_is_a_post_with_the_token_scheme_and_the_envelope(spec):
    """Every operation needs the token and answers the envelope (but the library's redirects
    and exports); all are POSTs but the bindings' GET, PUT and DELETE and the library's."""
    doc = spec.doc
    scheme = doc["components"]["securitySchemes"]["XAuthToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-Auth-Token")
    assert doc["security"] == [{"XAuthToken": []}]
    for path, item in doc["paths"].items():
        methods = {key for key in item if key in HTTP_METHODS}
        assert methods == ({m for p, m in BINDING_OPERATIONS if p == path}
                           or {m for p, m in LIBRARY_OPERATIONS if p == path} or {"post"}), path
        for method in methods:
            operation = item[method]
            assert "security" not in operation, f"{path} overrides the token requirement"
            statuses = spec.statuses(path, method)
            # Every Pilot 2 operation can answer these; 503 where a backend is asked (all five).
            # The device command also answers 404 (another workspace's dock), 409 (the dock
            # refused) and 504 (the dock did not answer), and reads no body (no 413).
            if (path, method) in BINDING_OPERATIONS:
                expected = BINDING_OPERATIONS[path, method]
            elif (path, method) in LIBRARY_OPERATIONS:
                expected = LIBRARY_OPERATIONS[path, method]
            elif path == MEDIA_PRIORITY:
                expected = {200, 400, 401, 403, 404, 409, 503, 504}
            else:
                expected = {200, 400, 401, 403, 413, 503}
            assert expected == statuses, (path, method)
            for status in statuses:
                response = operation["responses"][str(status)]
                if "$ref" in response:
                    response, _ = spec.resolve(response)
                if status == 302:  # a redirect: no body, a Location
                    assert "Location" in response["headers"] and "content" not in response, (path, status)
                    continue
                # The exports are the only answers that are not the envelope.
                kind = {"export.csv": "text/csv", "export.geojson": "application/geo+json"}.get(
                    path.rsplit("/", 1)[1] if status == 200 else "", "application/json")
                assert set(response["content"]) == {kind}, (path, method, status)


def test_spec_paths_and_served_routes_agree(service):
    """Every route regex of get_handlers is exactly one spec path and the other way round."""
    spec_paths = list(load_spec()["paths"])
    assert sorted(spec_paths) == sorted(ALL_PATHS)
    from dji_media.devices import InMemoryDeviceDirectory
    from dji_media.dock_priority import DockCommands

    class NoDock(DockCommands):
        async def call_service(self, gateway_sn, method, data, timeout=3.0):
            raise AssertionError("not called")

    class Bindings(InMemoryDeviceDirectory):  # a directory that can list: enough to mount the routes
        async def list(self, workspace_id=None):
            return []

    assert len(get_handlers(service)) == len(PILOT_PATHS)  # without a way to reach docks
    for prefix in ("", "/dji"):
        routes = get_handlers(service, prefix=prefix, dock_commands=NoDock(), directory=InMemoryDeviceDirectory(),
                              device_admin=Bindings(), catalogue=Catalogue(service.media_store, service.object_store))
        assert len(routes) == len(spec_paths)
        matched = {path: [] for path in spec_paths}
        for pattern, _handler, _kwargs in routes:
            regex = re.compile(pattern + "$")
            assert "workspace_id" in regex.groupindex, pattern
            hits = []
            for path in spec_paths:
                match = regex.match(prefix + concrete(path, "ws-probe_1"))
                if match:
                    assert set(re.findall(r"{(\w+)}", path)) == set(regex.groupindex), path
                    assert match.group("workspace_id") == "ws-probe_1", (pattern, path)
                    assert all(match.group(name) for name in regex.groupindex), (pattern, path)
                    hits.append(path)
            assert len(hits) == 1, (pattern, hits)
            matched[hits[0]].append(pattern)
            # The methods served are the methods documented.
            documented = {key for key in load_spec()["paths"][hits[0]] if key in HTTP_METHODS}
            # OPTIONS answers CORS preflights (no token, no envelope): not an operation.
            served = {m.lower() for m in _handler.SUPPORTED_METHODS} - {"options"}
            assert served == documented, (pattern, documented)
        assert all(len(patterns) == 1 for patterns in matched.values()), matched


def test_the_workspace_parameter_is_declared_and_matches_the_code(spec):
    parameter = spec.doc["components"]["parameters"]["WorkspaceId"]
    assert (parameter["in"], parameter["required"]) == ("path", True)
    # The code matches with fullmatch; in JSON Schema (ECMA-262) "^...$" means the same.
    assert parameter["schema"]["pattern"] == "^" + rules.WORKSPACE_ID_RE.pattern.strip("^$") + "$"
    assert parameter["schema"]["maxLength"] == rules.MAX_WORKSPACE_ID
    for path, item in spec.doc["paths"].items():
        assert item["parameters"][0] == {"$ref": "#/components/parameters/WorkspaceId"}, path
        others = {p["name"] for p in item["parameters"][1:]}
        assert others == set(re.findall(r"{(\w+)}", path)) - {"workspace_id"}, path


@pytest.mark.parametrize("workspace_id", [
    "ws-a", "A_z-09", "x" * 64, "x" * 65, "", "ws-a\n", "a*b", "a.b", "a/b", "a b", "\u00e9",
])
def test_the_workspace_pattern_is_the_check_of_the_code(spec, workspace_id):
    schema = spec.doc["components"]["parameters"]["WorkspaceId"]["schema"]
    in_spec = Validator(schema).is_valid(workspace_id)
    try:
        rules.check_workspace_id(workspace_id)
        in_code = True
    except BadRequest:
        in_code = False
    assert in_spec is in_code


def test_request_bounds_are_the_ones_of_protocol_py(spec):
    s = spec.schema
    assert s("Fingerprint")["maxLength"] == rules.MAX_FINGERPRINT
    assert s("TinyFingerprint")["maxLength"] == rules.MAX_TINY_FINGERPRINT
    assert s("Name")["maxLength"] == rules.MAX_NAME
    assert s("Path")["maxLength"] == rules.MAX_PATH
    assert s("LenientShortId")["maxLength"] == rules.MAX_SHORT_ID
    tiny = s("TinyFingerprintsRequest")["properties"]["tiny_fingerprints"]
    assert (tiny["maxItems"], tiny["items"]["maxLength"]) == (
        rules.MAX_TINY_FINGERPRINTS, rules.MAX_TINY_FINGERPRINT)
    callback = s("UploadCallbackRequest")["properties"]
    assert callback["object_key"]["maxLength"] == rules.MAX_OBJECT_KEY
    assert (callback["result"]["minimum"], callback["result"]["maximum"]) == (-rules.MAX_INT, rules.MAX_INT)
    assert (callback["sub_file_type"]["minimum"], callback["sub_file_type"]["maximum"]) == (0, rules.MAX_INT)
    ext = s("UploadExt")["allOf"][1]["properties"]
    assert ext["file_group_id"]["maxLength"] == rules.MAX_SHORT_ID
    group = s("GroupUploadCallbackRequest")["properties"]
    assert group["file_group_id"]["maxLength"] == rules.MAX_SHORT_ID
    assert group["file_count"]["maximum"] == group["file_uploaded_count"]["maximum"] == rules.MAX_INT
    # The wire spelling and the accepted correct one.
    assert set(s("TinyFingerprintExt")["properties"]) == {"tinny_fingerprint", "tiny_fingerprint"}


# ------------------------------------------------ request schemas agree with the parser

KEY = "media/ws-a/DJI_202208311455_008_Waypoint1/DJI_20220831151616_0004_W_Waypoint4.JPG"
PARSERS = {FAST: wire.parse_fast_upload, TINY: wire.parse_tiny_fingerprints,
           CALLBACK: wire.parse_upload_callback, GROUP: wire.parse_group_callback,
           STS: wire.parse_sts}
# (path, body, accepted): the strict fields, where schema and parser must say the same.
REQUEST_CASES = [
    (FAST, {"fingerprint": "F" * 64, "ext": {"tinny_fingerprint": "t" * 128}}, True),
    (FAST, {"fingerprint": "F", "name": None, "path": None, "future": [1]}, True),
    (FAST, {"fingerprint": "F" * 65}, False),
    (FAST, {"fingerprint": ""}, False),
    (FAST, {"fingerprint": 7}, False),
    (FAST, {"name": "x.jpg"}, False),
    (FAST, {"fingerprint": "F", "name": "n" * 256}, False),
    (FAST, {"fingerprint": "F", "path": "p" * 1025}, False),
    (FAST, {"fingerprint": "F", "ext": {"tiny_fingerprint": "t" * 129}}, False),
    (FAST, {"fingerprint": "F", "ext": {"tinny_fingerprint": 5}}, False),
    (TINY, {"tiny_fingerprints": []}, True),
    (TINY, {"tiny_fingerprints": ["a"] * rules.MAX_TINY_FINGERPRINTS}, True),
    (TINY, {"tiny_fingerprints": ["a"] * (rules.MAX_TINY_FINGERPRINTS + 1)}, False),
    (TINY, {"tiny_fingerprints": [""]}, False),
    (TINY, {"tiny_fingerprints": ["t" * 129]}, False),
    (TINY, {"tiny_fingerprints": "abc"}, False),
    (TINY, {}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY}, True),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "result": None, "sub_file_type": None}, True),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "result": -rules.MAX_INT,
                "sub_file_type": rules.MAX_INT}, True),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "result": rules.MAX_INT + 1}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "sub_file_type": -1}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "sub_file_type": rules.MAX_INT + 1}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "result": "0"}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "result": True}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "sub_file_type": 1.5}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": ""}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": "k" * 1025}, False),
    (CALLBACK, {"fingerprint": "F"}, False),
    (CALLBACK, {"object_key": KEY}, False),
    (CALLBACK, {"fingerprint": "F", "object_key": KEY, "ext": {"file_group_id": "g" * 129}}, False),
    (GROUP, {"file_group_id": "g" * 128, "file_count": rules.MAX_INT,
            "file_uploaded_count": 0}, True),
    (GROUP, {"file_group_id": "", "file_count": 1, "file_uploaded_count": 1}, False),
    (GROUP, {"file_group_id": "g", "file_count": -1, "file_uploaded_count": 0}, False),
    (GROUP, {"file_group_id": "g", "file_count": rules.MAX_INT + 1,
            "file_uploaded_count": 0}, False),
    (GROUP, {"file_group_id": "g", "file_count": 1.5, "file_uploaded_count": 0}, False),
    (GROUP, {"file_group_id": "g", "file_count": True, "file_uploaded_count": 0}, False),
    (GROUP, {"file_group_id": "g", "file_count": 1}, False),
    (STS, {}, True),
    (STS, {"anything": [1, {"x": None}]}, True),
]


@pytest.mark.parametrize("path, body, accepted", REQUEST_CASES,
                         ids=[f"{p.rsplit('/', 1)[-1]}-{i}" for i, (p, _, _) in enumerate(REQUEST_CASES)])
def test_request_schemas_agree_with_the_parser(spec, path, body, accepted):
    schema_ok = spec.request_validator(path).is_valid(body)
    try:
        PARSERS[path](json.dumps(body).encode())
        parser_ok = True
    except BadRequest:
        parser_ok = False
    assert (schema_ok, parser_ok) == (accepted, accepted)


@pytest.mark.parametrize("key, accepted", [
    (KEY, True), ("media/ws-a/x.jpg", True), ("media/ws-a/.hidden/..x", True),
    ("media/ws-a/\u2028x", True), ("/media/ws-a/x.jpg", False), ("media/ws-a//x.jpg", False),
    ("media/ws-a/../ws-b/x.jpg", False), ("media/ws-a/./x.jpg", False), ("media/ws-a/x/", False),
    ("media/ws-a/x\n.jpg", False), ("media/ws-a/x\n", False), ("media/ws-a/x\x7f", False), ("..", False),
])
@pytest.mark.gen_test
async def test_object_key_pattern_is_the_service_rule(spec, service, key, accepted):
    body = {"fingerprint": "F", "object_key": key}
    assert spec.request_validator(CALLBACK).is_valid(body) is accepted
    try:
        # A failed upload (result 1) is checked like any other and then not recorded.
        await service.record_upload("ws-a", UploadReport(result=1, file=MediaFile(fingerprint="F", object_key=key)))
        service_ok = True
    except BadRequest:
        service_ok = False
    assert service_ok is accepted


# ------------------------------------------------------- real answers fit the schemas

CALLBACK_BODY = {
    "result": 0, "fingerprint": "7F78C9F1999425CB61F10E1FE206009E", "object_key": KEY,
    "name": "DJI_20220831151616_0004_W_Waypoint4.JPG", "path": "DJI_202208311455_008_Waypoint1",
    "sub_file_type": 0,
    "ext": {"file_group_id": "g1", "tinny_fingerprint": "297f490b0252690d3f93841818567cc6_2022_8_31_15_16_16"},
    "metadata": {"gimbal_yaw_degree": "-4.3", "created_time": "2022-08-31T15:16:16+08:00"},
}


@pytest.mark.gen_test
async def test_real_answers_validate_and_cover_every_documented_status(spec, call, objects, store, credentials,
                                                                        monkeypatch):
    """One or more real answers per (endpoint, status) the spec documents, each validated."""
    seen = set()

    async def check(path, body=None, *, expect, code=None, **options):
        status, envelope = await call(concrete(path), body, **options)
        assert status == expect, (path, status, envelope)
        if code is not None:
            assert envelope["code"] == code, envelope
        errors = [e.message for e in spec.response_validator(path, status).iter_errors(envelope)]
        assert not errors, (path, status, envelope, errors)
        seen.add((path, status))
        return envelope

    objects.put(KEY)
    tiny = CALLBACK_BODY["ext"]["tinny_fingerprint"]
    fp = CALLBACK_BODY["fingerprint"]
    # 200, both codes of each endpoint that has two.
    await check(FAST, {"fingerprint": fp}, expect=200, code=-1)
    await check(CALLBACK, CALLBACK_BODY, expect=200, code=0)
    await check(CALLBACK, dict(CALLBACK_BODY, result=3), expect=200, code=-1)
    await check(FAST, {"fingerprint": fp, "ext": {"tinny_fingerprint": tiny}}, expect=200, code=0)
    env = await check(TINY, {"tiny_fingerprints": [tiny, "unknown_1", tiny]}, expect=200, code=0)
    assert env["data"]["tiny_fingerprints"] == [tiny]
    await check(GROUP, {"file_group_id": "g1", "file_count": 3, "file_uploaded_count": 2}, expect=200, code=0)
    await check(STS, raw=b"", expect=200, code=0)
    await check(STS, {}, expect=200, code=0)
    for path in PILOT_PATHS:  # the device route's answers: tests/test_mqtt_serve.py
        await check(path, raw=b"[1]", expect=400)
        await check(path, {}, token=None, expect=401)
        await check(path, {}, token=TOKEN_B, expect=403)
        await check(path, raw=b"{" + b" " * DEFAULT_MAX_BODY_BYTES + b"}", expect=413)
    await check(FAST, {"fingerprint": 1}, expect=400)
    await check(CALLBACK, dict(CALLBACK_BODY, object_key="media/ws-b/x.jpg"), expect=400)

    # 503: the database (media endpoints) or the credential service (sts) cannot answer.
    async def database_down(*args, **kwargs):
        raise DatabaseUnavailable("the media database is unavailable")

    async def sts_down(workspace_id):
        raise StorageUnavailable("storage credentials could not be issued: STS is unreachable")

    for method in ("get", "find_by_tiny_fingerprints", "upsert", "save", "save_group"):
        monkeypatch.setattr(store, method, database_down)
    monkeypatch.setattr(credentials, "issue", sts_down)
    await check(FAST, {"fingerprint": fp}, expect=503)
    await check(TINY, {"tiny_fingerprints": [tiny]}, expect=503)
    await check(CALLBACK, CALLBACK_BODY, expect=503)
    await check(GROUP, {"file_group_id": "g1", "file_count": 3, "file_uploaded_count": 2}, expect=503)
    await check(STS, {}, expect=503)

    documented = {(path, status) for path in PILOT_PATHS for status in spec.statuses(path)}
    assert seen == documented
