"""Fixtures for tests that run on the PostgreSQL and MySQL/MariaDB servers. A helper module,
not a test module (test modules never import each other); conftest.py imports these fixtures,
so every test module can ask for them by name. Each is named by ``name=``: the functions' own
names differ, so that importing them shadows no parameter of the same name.

``engine`` runs a test once per server; a server whose URL (``DJI_MEDIA_TEST_POSTGRES_URL``,
``DJI_MEDIA_TEST_MYSQL_URL``) is unset skips, naming the variable.
"""
from __future__ import annotations

import pytest

from dji_media import PeeweeMediaStore
from dji_media.backends.peewee_schema import open_database
from support import SERVER_ENGINES, database_url_for


@pytest.fixture(name="engine", params=sorted(SERVER_ENGINES))
def engine_fixture(request):
    return request.param


@pytest.fixture(name="database_url")
def database_url_fixture(engine, tmp_path):
    return database_url_for(engine, tmp_path)


@pytest.fixture(name="admin")
def admin_fixture(database_url):
    """A connection of the test's own, outside any store."""
    db = open_database(database_url, max_connections=1)
    db.connect()
    yield db
    db.close_all()


@pytest.fixture(name="make_store")
def make_store_fixture(engine, fresh_tables, io_loop):
    """Stores on fresh tables (one prefix per call); their tables are dropped afterwards.
    ``make_store(share=store)`` opens another store on ``store``'s tables instead, as another
    process would."""
    made = []
    tables = {}

    def make(share=None, **options):
        if share is not None:
            url, prefix = tables[id(share)]
        else:
            url, prefix = fresh_tables(engine)
        options["table_prefix"] = prefix
        store = PeeweeMediaStore(url=url, **options)
        tables[id(store)] = (url, prefix)
        made.append(store)
        return store

    yield make
    for store in made:
        io_loop.run_sync(store.close)
