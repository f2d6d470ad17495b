"""Shared fixtures. The suite starts its own real S3 server (SeaweedFS, once per session) and
uses real SQLite files in temporary directories. The PostgreSQL and MariaDB/MySQL servers are
the machine's, named by DJI_MEDIA_TEST_POSTGRES_URL and DJI_MEDIA_TEST_MYSQL_URL (``.ci/run``
sets both); the tests that need one skip, saying which variable to set, when it is unset."""
from __future__ import annotations

import io
import json

import pytest
import tornado.web
from minio import Minio

from dji_media import (
    InMemoryMediaStore,
    InMemoryObjectStore,
    MediaService,
    MinioObjectStore,
    NotFoundHandler,
    PeeweeMediaStore,
    StaticCredentialProvider,
    StaticTokenAuthenticator,
    StsCredentialProvider,
    get_handlers,
)
from dji_media.backends.peewee_schema import open_database
from dji_media.embedded_s3 import EmbeddedS3
from support import (
    ADMIN_KEY,
    ADMIN_SECRET,
    BUCKET,
    ENGINES,
    OTHER_BUCKET,
    TOKEN_A,
    TOKEN_B,
    database_url_for,
    drop_store_tables,
    new_table_prefix,
    s3_options,
)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server with STS and enforced session policies, for the whole session."""
    server = EmbeddedS3(data_dir=tmp_path_factory.mktemp("seaweedfs"), access_key=ADMIN_KEY,
                        secret_key=ADMIN_SECRET, buckets=[BUCKET, OTHER_BUCKET])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_admin(s3):
    host = s3.endpoint.split("://", 1)[1]
    return Minio(host, access_key=ADMIN_KEY, secret_key=ADMIN_SECRET, secure=False, region="us-east-1")


@pytest.fixture
def put_object(s3_admin):
    def put(key: str, data: bytes = b"photo", bucket: str = BUCKET) -> None:
        s3_admin.put_object(bucket, key, io.BytesIO(data), len(data))
    return put


@pytest.fixture
def remove_object(s3_admin):
    def remove(key: str, bucket: str = BUCKET) -> None:
        s3_admin.remove_object(bucket, key)
    return remove


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/media.sqlite3"


@pytest.fixture
def fresh_tables(tmp_path):
    """``fresh_tables(engine)`` -> ``(url, table_prefix)``: tables of the test's own on "sqlite",
    "postgresql" or "mysql", dropped afterwards (after the stores built on them are closed:
    fixtures that use this one are torn down first)."""
    made = []

    def fresh(engine):
        url, prefix = database_url_for(engine, tmp_path), new_table_prefix()
        made.append((url, prefix))
        return url, prefix

    yield fresh
    for url, prefix in made:
        if url.startswith("sqlite"):
            continue  # the file goes with tmp_path
        db = open_database(url, max_connections=1)
        try:
            drop_store_tables(db, prefix)
        finally:
            db.close_all()


@pytest.fixture(params=ENGINES)
def real_database(request, fresh_tables):
    """(url, table_prefix) on each database engine in turn."""
    return fresh_tables(request.param)


@pytest.fixture
def sts_provider(s3):
    return StsCredentialProvider(**s3_options(s3))


@pytest.fixture
def authenticator():
    return StaticTokenAuthenticator(tokens={TOKEN_A: ["ws-a"], TOKEN_B: ["ws-b"]})


@pytest.fixture
def real_service(s3, real_database, sts_provider, authenticator, io_loop):
    """The production wiring: the peewee store (on each engine), SeaweedFS HEAD checks and STS."""
    url, prefix = real_database
    service = MediaService(
        media_store=PeeweeMediaStore(url=url, table_prefix=prefix),
        object_store=MinioObjectStore(**s3_options(s3)),
        credentials=sts_provider,
        authenticator=authenticator,
    )
    yield service
    io_loop.run_sync(service.close)


# ---- HTTP tests on in-memory backends (override `credentials` or `authenticator` per module)

@pytest.fixture
def store():
    return InMemoryMediaStore()


@pytest.fixture
def objects():
    return InMemoryObjectStore()


@pytest.fixture
def credentials():
    return StaticCredentialProvider(endpoint="http://storage.example:9000", access_key="AK",
                                    secret_key="SK", session_token="ST", bucket="media")


@pytest.fixture
def service(store, objects, credentials, authenticator):
    return MediaService(media_store=store, object_store=objects, credentials=credentials,
                        authenticator=authenticator)


@pytest.fixture
def app(service):
    return tornado.web.Application(get_handlers(service), default_handler_class=NotFoundHandler)


@pytest.fixture
def call(http_client, base_url):
    async def call(path, body=None, *, token=TOKEN_A, raw=None, method="POST", headers=None):
        sent = dict(headers or {})
        if token is not None:
            sent["X-Auth-Token"] = token
        if method == "POST":
            payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        else:
            payload = None
        response = await http_client.fetch(base_url + path, method=method, body=payload, headers=sent,
                                           raise_error=False, allow_nonstandard_methods=True)
        assert response.headers["Content-Type"].startswith("application/json")
        envelope = json.loads(response.body)
        assert set(envelope) == {"code", "message", "data"}
        assert isinstance(envelope["code"], int) and isinstance(envelope["message"], str)
        return response.code, envelope
    return call


def pytest_terminal_summary(terminalreporter):
    """One line per reason tests were skipped (a missing database URL skips dozens of tests for
    one reason), in place of pytest's line per test (``-rs``)."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].replace("Skipped: ", "", 1)
            reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped, by reason")
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{count:5d}  {reason}")


# The fixtures of the tests on the PostgreSQL and MySQL/MariaDB servers (engine, database_url,
# admin, make_store) live in a helper module; imported here, every test module can use them.
from databases import admin_fixture, database_url_fixture, engine_fixture, make_store_fixture  # noqa: E402, F401
