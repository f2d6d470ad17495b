"""The media library's HTTP API (dji_media.web.library) on the in-memory and SQLite stores."""
from __future__ import annotations

import datetime as _dt
import json
import urllib.parse
import uuid

import pytest
import tornado.web
from test_openapi import Spec, load_spec

from dji_media import InMemoryMediaStore, InMemoryObjectStore, MediaService, PeeweeMediaStore, StaticTokenAuthenticator
from dji_media.catalogue import Catalogue
from dji_media.testing.contracts import sample_file
from dji_media.values import GroupReport, MediaRecord
from dji_media.web import NotFoundHandler
from dji_media.web.library import get_library_handlers

UTC = _dt.timezone.utc
READER = "reader-token-123"
ADMIN = "admin-token-1234"
PILOT = "pilot-token-1234"
OTHER = "other-ws-token-1"
ORIGIN = "https://library.example"
FILES = "/media/api/v1/workspaces/ws/library/files"


@pytest.fixture(params=["memory", "sqlite"])
def media(request, sqlite_url, io_loop):
    store = InMemoryMediaStore() if request.param == "memory" else PeeweeMediaStore(url=sqlite_url)
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def bucket():
    return InMemoryObjectStore(endpoint="https://files.example")


@pytest.fixture
def app(media, bucket, credentials):
    authenticator = StaticTokenAuthenticator(tokens={
        READER: {"workspaces": ["ws"], "scopes": ["read"]},
        ADMIN: {"workspaces": ["ws"], "scopes": ["read", "delete"]},
        PILOT: {"workspaces": ["ws"], "scopes": ["upload"]},
        OTHER: {"workspaces": ["ws-b"], "scopes": ["read", "delete"]},
    })
    service = MediaService(media_store=media, object_store=bucket, credentials=credentials,
                           authenticator=authenticator)
    routes = get_library_handlers(service, Catalogue(media, bucket), cors_origins=[ORIGIN])
    return tornado.web.Application(routes, default_handler_class=NotFoundHandler)


@pytest.fixture
def fetch(http_client, base_url):
    async def fetch(path, token=READER, method="GET", headers=None, **params):
        sent = dict(headers or {})
        if token is not None:
            sent["X-Auth-Token"] = token
        url = base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        response = await http_client.fetch(url, method=method, headers=sent, raise_error=False,
                                           follow_redirects=False)
        return response
    return fetch


SPEC = Spec(load_spec())
LIBRARY = "/media/api/v1/workspaces/{workspace_id}/library"


def body(response):
    return json.loads(response.body)


def documented(response, path, method="get"):
    """The answer fits doc/openapi.yaml's schema for the operation and its status."""
    answer = body(response)
    errors = [e.message for e in SPEC.response_validator(path, response.code, method).iter_errors(answer)]
    assert not errors, (path, response.code, errors)
    return answer


async def fill(media, bucket, count=7, workspace="ws"):
    base = _dt.datetime(2024, 1, 1, tzinfo=UTC)
    records = []
    for i in range(count):
        at = base + _dt.timedelta(minutes=i // 2)
        key = f"media/{workspace}/{i}.jpg"
        records.append(MediaRecord(workspace, sample_file(f"FP{workspace}{i:04d}", object_key=key,
                                                          name=f"DJI_{i:04d}.JPG"),
                                   1, at, at, public_id=str(uuid.uuid4())))
        bucket.put(key)
    await media.insert_missing(records)
    return records


@pytest.mark.gen_test
async def test_find_pages_by_cursor_without_duplicates_or_gaps(fetch, media, bucket):
    records = await fill(media, bucket)
    seen, cursor = [], None
    while True:
        params = {"limit": 3, "count": "true"}
        if cursor:
            params["cursor"] = cursor
        response = await fetch(FILES, **params)
        assert response.code == 200, response.body
        data = documented(response, f"{LIBRARY}/files")["data"]
        assert data["total"] == len(records)
        seen += [f["id"] for f in data["files"]]
        cursor = data["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == len(records)
    assert seen == [r.public_id for r in sorted(records, key=lambda r: (r.created_at, r.public_id),
                                                reverse=True)]
    bad = await fetch(FILES, cursor="garbage")
    assert (bad.code, documented(bad, f"{LIBRARY}/files")["code"]) == (400, 400)
    assert (await fetch(FILES, kind="picture")).code == 400
    assert (await fetch(FILES, uploaded_from="yesterday")).code == 400
    assert (await fetch(FILES, bbox="1,2,3")).code == 400
    hit = body(await fetch(FILES, q="dji_0003", uploaded_from="2024-01-01T00:00:00Z"))["data"]["files"]
    assert [f["name"] for f in hit] == ["DJI_0003.JPG"] and hit[0]["kind"] == "photo"


@pytest.mark.gen_test
async def test_scopes_workspaces_get_and_delete(fetch, media, bucket):
    records = await fill(media, bucket, 2)
    theirs = await fill(media, bucket, 1, workspace="ws-b")
    one = f"{FILES}/{records[0].public_id}"
    assert (await fetch(FILES, token=PILOT)).code == 403
    assert (await fetch(FILES, token=None)).code == 401
    assert (await fetch(FILES, token=OTHER)).code == 403
    got = await fetch(one)
    assert got.code == 200 and documented(got, f"{LIBRARY}/files/{{file_id}}")["data"]["object_key"] \
        == records[0].file.object_key
    theirs_answer = await fetch(f"{FILES}/{theirs[0].public_id}")
    assert theirs_answer.code == 404  # another workspace's id
    documented(theirs_answer, f"{LIBRARY}/files/{{file_id}}")
    assert (await fetch(one, method="DELETE", token=READER)).code == 403
    deleted = await fetch(one, method="DELETE", token=ADMIN)
    assert (deleted.code, documented(deleted, f"{LIBRARY}/files/{{file_id}}", "delete")["data"]) \
        == (200, {"deleted": True})
    assert records[0].file.object_key not in bucket.keys
    assert (await fetch(one)).code == 404
    again = await fetch(one, method="DELETE", token=ADMIN)
    assert body(again)["data"] == {"deleted": False}
    bucket.unavailable = True
    down = await fetch(f"{FILES}/{records[1].public_id}", method="DELETE", token=ADMIN)
    assert down.code == 503
    bucket.unavailable = False
    assert (await fetch(f"{FILES}/{records[1].public_id}")).code == 200


@pytest.mark.gen_test
async def test_download_redirect_and_dji_endpoints(fetch, media, bucket):
    records = await fill(media, bucket, 3)
    target = records[1]
    answer = await fetch(f"{FILES}/{target.public_id}/download")
    data = documented(answer, f"{LIBRARY}/files/{{file_id}}/download")["data"]
    assert data["expires_in"] == 900 and data["url"].startswith("https://files.example/media/media/ws/1.jpg")
    assert "attachment" in urllib.parse.unquote(data["url"])
    inline = body(await fetch(f"{FILES}/{target.public_id}/download", inline="true"))["data"]["url"]
    assert "disposition" not in inline
    moved = await fetch(f"{FILES}/{target.public_id}/download", redirect="true")
    assert moved.code == 302 and moved.headers["Location"] == data["url"]
    bucket.remove(records[2].file.object_key)
    assert (await fetch(f"{FILES}/{records[2].public_id}/download")).code == 404  # stale record

    listed = await fetch("/media/api/v1/files/ws/files", page=1, page_size=2)
    data = documented(listed, "/media/api/v1/files/{workspace_id}/files")["data"]
    assert data["pagination"] == {"page": 1, "page_size": 2, "total": 3}
    first = data["list"][0]
    assert set(first) == {"file_id", "file_name", "file_path", "object_key", "is_original", "drone", "payload",
                          "tinny_fingerprint", "fingerprint", "create_time", "job_id"}
    assert first["create_time"] == "2024-01-01 00:01:00"
    second = body(await fetch("/media/api/v1/files/ws/files", page=2, page_size=2))["data"]["list"]
    assert len(second) == 1 and second[0]["file_id"] not in {f["file_id"] for f in data["list"]}
    url = await fetch(f"/media/api/v1/files/ws/file/{target.public_id}/url")
    assert url.code == 302 and url.headers["Location"].startswith("https://files.example/")
    assert (await fetch(f"/media/api/v1/files/ws/file/{target.public_id}/url", token=PILOT)).code == 403


@pytest.mark.gen_test
async def test_missions_exports_and_cors(fetch, media, bucket):
    records = await fill(media, bucket, 3)
    await media.save_group("ws", GroupReport(records[0].file.file_group_id, 3, 3))
    missions = documented(await fetch("/media/api/v1/workspaces/ws/library/missions"), f"{LIBRARY}/missions")["data"]
    assert [(m["mission"], m["state"], m["recorded_count"]) for m in missions["missions"]] \
        == [(records[0].file.file_group_id, "complete", 3)]
    csv_answer = await fetch("/media/api/v1/workspaces/ws/library/export.csv")
    assert csv_answer.headers["Content-Type"].startswith("text/csv")
    assert len(csv_answer.body.decode().splitlines()) == 4
    geo = await fetch("/media/api/v1/workspaces/ws/library/export.geojson")
    assert geo.headers["Content-Type"] == "application/geo+json"
    assert len(json.loads(geo.body)["features"]) == 3
    assert (await fetch("/media/api/v1/workspaces/ws/library/export.csv", token=PILOT)).code == 403

    preflight = await fetch(FILES, token=None, method="OPTIONS",
                            headers={"Origin": ORIGIN, "Access-Control-Request-Headers": "X-Auth-Token"})
    assert preflight.code == 204
    assert "X-Auth-Token" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    stranger = await fetch(FILES, token=None, method="OPTIONS", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers
    plain = await fetch(FILES, headers={"Origin": ORIGIN})
    assert plain.headers["Access-Control-Allow-Origin"] == ORIGIN
