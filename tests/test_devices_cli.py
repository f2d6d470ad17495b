"""``dji-media devices`` (bind, unbind, list) and ``devices: {backend: database}`` in the YAML
configuration: on a real SQLite file always, on PostgreSQL and MariaDB/MySQL when
DJI_MEDIA_TEST_POSTGRES_URL / DJI_MEDIA_TEST_MYSQL_URL are set."""
from __future__ import annotations

import concurrent.futures
import re

import pytest
import yaml

from dji_media.backends.peewee_devices import DatabaseDeviceDirectory
from dji_media.cli import main
from dji_media.config import load_config
from dji_media.errors import ConfigError
from dji_media.wiring import build_device_directory, build_service
from support import TOKEN, run_cli

DOCK = "4TADKAQ000002J"
OTHER_DOCK = "7CTDM3D00BVY4K"


def write_config(tmp_path, *, url, table_prefix="dji_", devices=None, media_store=None):
    """A configuration that needs no storage server: the database is real, the bucket in memory."""
    config = {
        "logging": {"level": "warning"},
        "media_store": media_store or {"backend": "peewee", "options": {"url": url, "table_prefix": table_prefix}},
        "object_store": {"backend": "memory"},
        "credentials": {"backend": "static", "options": {
            "endpoint": "http://storage.example:9000", "access_key": "AK", "secret_key": "SK", "bucket": "media"}},
        "authenticator": {"backend": "static", "options": {"tokens": {TOKEN: ["ws-a"]}}},
        "devices": {"backend": "database"} if devices is None else devices,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def config_file(tmp_path, real_database):
    url, prefix = real_database
    return write_config(tmp_path, url=url, table_prefix=prefix)


def run(capsys, *args):
    """``dji-media <args>`` in this process: (status, stdout lines, stderr lines). On a thread
    of its own: the command's asyncio.run would reset the main thread's current event loop, and
    a loop left there by another fixture would then be collected unclosed, failing whichever
    later test the garbage collector runs in."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        status = pool.submit(main, list(args)).result()
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def test_bind_list_and_unbind(capsys, config_file):
    assert run(capsys, "devices", "--config", config_file, "list") == (0, [], [])
    status, out, err = run(capsys, "devices", "--config", config_file, "bind", DOCK, "ws-a", "--note",
                           "roof, building 3")
    assert (status, out, err) == (0, [f"bound {DOCK} to ws-a"], [])
    assert run(capsys, "devices", "-c", config_file, "bind", OTHER_DOCK, "ws-b")[0] == 0
    status, out, _ = run(capsys, "devices", "--config", config_file, "list")
    assert status == 0 and len(out) == 2
    sn, workspace, bound_at, note = out[0].split("\t")
    assert (sn, workspace, note) == (DOCK, "ws-a", "roof, building 3")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bound_at)
    assert out[1].split("\t")[:2] == [OTHER_DOCK, "ws-b"] and len(out[1].split("\t")) == 3  # no note
    status, out, _ = run(capsys, "devices", "--config", config_file, "list", "--workspace", "ws-b")
    assert status == 0 and [line.split("\t")[0] for line in out] == [OTHER_DOCK]
    # The operator may move a dock; the command says so.
    assert run(capsys, "devices", "--config", config_file, "bind", OTHER_DOCK, "ws-a")[1] == [
        f"bound {OTHER_DOCK} to ws-a (moved from ws-b)"]
    assert run(capsys, "devices", "--config", config_file, "unbind", DOCK) == (0, [f"unbound {DOCK}"], [])
    assert run(capsys, "devices", "--config", config_file, "unbind", DOCK) == (
        0, [f"{DOCK} was not bound: nothing to do"], [])
    status, out, _ = run(capsys, "devices", "--config", config_file, "list")
    assert status == 0 and [line.split("\t")[:2] for line in out] == [[OTHER_DOCK, "ws-a"]]


def test_a_note_cannot_split_a_line(capsys, tmp_path):
    config_file = write_config(tmp_path, url=f"sqlite:///{tmp_path}/media.sqlite3")
    assert run(capsys, "devices", "--config", config_file, "bind", DOCK, "ws-a", "--note", "a\tb\nc")[0] == 0
    status, out, _ = run(capsys, "devices", "--config", config_file, "list")
    assert status == 0 and out == [out[0]] and out[0].split("\t")[3] == "a b c"


@pytest.mark.parametrize("args, field", [
    (["bind", "4TAD/+", "ws-a"], "gateway_sn"),
    (["bind", "4TAD KAQ", "ws-a"], "gateway_sn"),
    (["bind", "a" * 129, "ws-a"], "gateway_sn"),
    (["bind", DOCK, "a*b"], "workspace_id"),
    (["bind", DOCK, "x" * 65], "workspace_id"),
    (["unbind", "航拍"], "gateway_sn"),
    (["list", "--workspace", "../x"], "workspace_id"),
    (["bind", DOCK, "ws-a", "--note", "n" * 256], "note"),
])
def test_bad_input_is_one_line_and_status_2(capsys, tmp_path, args, field):
    config_file = write_config(tmp_path, url=f"sqlite:///{tmp_path}/media.sqlite3")
    status, out, err = run(capsys, "devices", "--config", config_file, *args)
    assert status == 2 and out == [] and len(err) == 1, err
    assert err[0].startswith("dji-media: devices: ") and field in err[0]
    assert run(capsys, "devices", "--config", config_file, "list") == (0, [], [])  # nothing written


def test_a_static_device_table_is_refused_naming_the_key(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/media.sqlite3"
    for devices in ({DOCK: "ws-a"}, {}):
        config_file = write_config(tmp_path, url=url, devices=devices)
        status, out, err = run(capsys, "devices", "--config", config_file, "bind", DOCK, "ws-a")
        assert status == 2 and out == [] and len(err) == 1 and "devices.backend" in err[0], err


def test_a_store_without_a_database_is_refused(capsys, tmp_path):
    config_file = write_config(tmp_path, url="", media_store={"backend": "memory"})
    status, _, err = run(capsys, "devices", "--config", config_file, "list")
    assert status == 2 and len(err) == 1 and "devices.backend" in err[0] and "InMemoryMediaStore" in err[0]
    with pytest.raises(ConfigError) as refused:
        build_device_directory(load_config(config_file), build_service(load_config(config_file)))
    assert refused.value.key == "devices.backend"


def test_an_unreachable_database_is_status_1(capsys, tmp_path):
    config_file = write_config(tmp_path, url=f"sqlite:///{tmp_path}/missing/dir/media.sqlite3")
    status, out, err = run(capsys, "devices", "--config", config_file, "list")
    assert status == 1 and out == [] and len(err) == 1 and err[0].startswith("dji-media: devices: "), err


@pytest.mark.gen_test(timeout=60)
async def test_the_configured_directory_is_the_database_one_on_the_service_store(tmp_path):
    """``build_device_directory`` builds DatabaseDeviceDirectory with its real constructor, over
    the service's store (one database, one pool), and sees what the command bound."""
    config = load_config(write_config(tmp_path, url=f"sqlite:///{tmp_path}/media.sqlite3"))
    service = build_service(config)
    try:
        directory = build_device_directory(config, service)
        assert isinstance(directory, DatabaseDeviceDirectory) and directory.store is service.media_store
        await directory.bind(DOCK, "ws-a")
        assert await directory.workspace_of(DOCK) == "ws-a"
        await directory.close()
        await service.media_store.ping()  # the service's store stays open
    finally:
        await service.close()


def test_check_passes_with_the_database_directory_and_reads_its_table(tmp_path):
    """The real command, in a process of its own, as an operator runs it."""
    config_file = write_config(tmp_path, url=f"sqlite:///{tmp_path}/media.sqlite3")
    result = run_cli("devices", "--config", config_file, "bind", DOCK, "ws-a")
    assert result.returncode == 0, result.stderr
    result = run_cli("check", "--config", config_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "devices: ok (database, 1 dock(s) bound)" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "configuration: ok"
    result = run_cli("devices", "--config", config_file, "list")
    assert result.returncode == 0 and result.stdout.split("\t")[:2] == [DOCK, "ws-a"]
