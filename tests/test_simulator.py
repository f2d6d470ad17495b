"""The Pilot 2 simulator (dji_media.simulator) against a real `dji-media serve` process and the
session's SeaweedFS: the files it generates, the records and objects a run leaves, a second run
that uploads nothing, and failures that name their step."""
from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import io
import re
import sqlite3
import subprocess
import sys

import pytest
import yaml

from dji_media.backends.peewee_schema import table_names
from support import BUCKET, ENV, ROOT, SERVE, TOKEN, post, start, stop, write_config

# Everything here needs Pillow (the `test` extra installs it); say so rather than fail to import.
pytest.importorskip("PIL", reason="Pillow is missing: pip install '.[test]' (or '.[simulator]')")

from PIL import ExifTags, Image  # noqa: E402

from dji_media.simulator import pilot2  # noqa: E402
from dji_media.simulator.media import generate_mission  # noqa: E402

WORKSPACE = "ws-sim"        # the first of the token's workspaces: the one the command picks
FLAT_WORKSPACE = "ws-sim-flat"
TABLES = table_names("dji_")  # PeeweeMediaStore's default table prefix
SIMULATE = [sys.executable, "-m", "dji_media.simulator.command"]


def simulator_config(tmp_path, s3, **credential_options) -> str:
    """A server configuration whose token opens this module's workspaces (the session's bucket
    is shared with other modules, whose servers use ws-cli)."""
    path = tmp_path / "config.yaml"
    write_config(tmp_path, s3_endpoint=s3.endpoint)
    settings = yaml.safe_load(path.read_text())
    settings["authenticator"]["options"]["tokens"] = {TOKEN: [WORKSPACE, FLAT_WORKSPACE]}
    settings["credentials"]["options"].update(credential_options)
    path.write_text(yaml.safe_dump(settings))
    return str(path)


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    """(base URL, config path, database path) of one server for the module."""
    tmp_path = tmp_path_factory.mktemp("simulator")
    config = simulator_config(tmp_path, s3)
    proc, base = start(SERVE + [config], tmp_path)
    yield base, config, tmp_path / "media.sqlite3"
    stop(proc)


def simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(SIMULATE + list(args), capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)


def records(database, workspace):
    with sqlite3.connect(str(database)) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute(
            f"SELECT * FROM {TABLES['media_file']} WHERE workspace_id = ?", (workspace,))]
        groups = [dict(row) for row in conn.execute(
            f"SELECT * FROM {TABLES['file_group']} WHERE workspace_id = ?", (workspace,))]
    conn.close()
    return rows, groups


def stored_bytes(s3_admin, key):
    response = s3_admin.get_object(BUCKET, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def degrees(dms, ref):
    value = float(dms[0]) + float(dms[1]) / 60 + float(dms[2]) / 3600
    return -value if ref in ("S", "W") else value


# ----------------------------------------------------------------------------- generated files

@pytest.mark.parametrize("start", [(22.577666, 113.943194), (-33.45, -70.66)])
def test_generated_jpeg_carries_capture_time_and_gps(start):
    mission = generate_mission(4, seed=5, start=start)
    photos = [f for f in mission.files if f.kind == "photo"]
    assert [f.kind for f in mission.files] == ["photo", "photo", "photo", "video"]
    for file in photos:
        image = Image.open(io.BytesIO(file.data))
        assert (image.format, image.size) == ("JPEG", (640, 480))
        exif = image.getexif()
        details = exif.get_ifd(ExifTags.IFD.Exif)
        assert details[0x9003] == file.captured_at.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
        assert details[0x9011] == "+08:00"                                          # OffsetTimeOriginal
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        assert gps[0x01] == ("N" if start[0] > 0 else "S") and gps[0x03] == ("E" if start[1] > 0 else "W")
        assert degrees(gps[0x02], gps[0x01]) == pytest.approx(file.lat, abs=1e-6)
        assert degrees(gps[0x04], gps[0x03]) == pytest.approx(file.lng, abs=1e-6)
        assert float(gps[0x06]) == pytest.approx(file.absolute_altitude, abs=1e-3)
        # Within a few hundred metres of the start: a short flight around it.
        assert abs(file.lat - start[0]) < 0.01 and abs(file.lng - start[1]) < 0.01
    video = mission.files[-1]
    assert video.name.endswith(".MP4") and video.data[4:8] == b"ftyp"


def test_fingerprints_and_determinism():
    mission = generate_mission(3, seed=9, mission="Survey-2")
    assert re.fullmatch(r"DJI_\d{12}_\d{3}_Survey-2", mission.folder)
    for file in mission.files:
        assert file.fingerprint == hashlib.md5(file.data).hexdigest().upper()
        t = file.captured_at
        assert file.tiny_fingerprint.endswith(f"_{t.year}_{t.month}_{t.day}_{t.hour}_{t.minute}_{t.second}")
        assert re.fullmatch(r"[0-9a-f]{32}(_[1-9][0-9]*|_0){6}", file.tiny_fingerprint)
        assert t.utcoffset() == _dt.timedelta(hours=8)
    assert generate_mission(3, seed=9, mission="Survey-2") == mission  # a rerun recognises its files
    others = {f.fingerprint for f in generate_mission(3, seed=10, mission="Survey-2").files}
    others |= {f.fingerprint for f in generate_mission(3, seed=9, mission="Survey-3").files}
    assert not others & {f.fingerprint for f in mission.files}
    with pytest.raises(ValueError):
        generate_mission(3, mission="no/slashes")


# ------------------------------------------------------------------------ against a real server

def test_first_run_fills_the_library_and_a_second_uploads_nothing(server, s3_admin):
    base, config, database = server
    # Token and workspace come from the configuration's static token table, as on a first run.
    first = simulate("--url", base, "--config", config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("uploaded: ") == 12, first.stdout

    mission = generate_mission()  # the command's defaults: the same files
    rows, groups = records(database, WORKSPACE)
    assert collections.Counter(r["fingerprint"] for r in rows) == {f.fingerprint: 1 for f in mission.files}
    by_fingerprint = {r["fingerprint"]: r for r in rows}
    for file in mission.files:
        row = by_fingerprint[file.fingerprint]
        key = f"media/{WORKSPACE}/{mission.folder}/{file.name}"
        assert (row["object_key"], row["name"], row["path"]) == (key, file.name, mission.folder)
        assert (row["tiny_fingerprint"], row["file_group_id"], row["sn"]) == (
            file.tiny_fingerprint, mission.file_group_id, mission.sn)
        assert (row["drone_model_key"], row["payload_model_key"], row["is_original"]) == ("0-67-0", "1-53-0", 1)
        assert row["created_time_text"] == file.captured_at.isoformat()
        assert (row["shoot_lat"], row["shoot_lng"]) == (file.lat, file.lng)
        assert '"tinny_fingerprint"' in row["raw_json"]  # the wire spelling
        assert stored_bytes(s3_admin, key) == file.data
        status, envelope = post(base, f"/media/api/v1/workspaces/{WORKSPACE}/fast-upload",
                                {"fingerprint": file.fingerprint})
        assert (status, envelope["code"]) == (200, 0), envelope
    tiny = [f.tiny_fingerprint for f in mission.files]
    status, envelope = post(base, f"/media/api/v1/workspaces/{WORKSPACE}/files/tiny-fingerprints",
                            {"tiny_fingerprints": tiny})
    assert envelope["data"] == {"tiny_fingerprints": tiny}
    assert [(g["file_group_id"], g["file_count"], g["file_uploaded_count"]) for g in groups] == [
        (mission.file_group_id, 12, 12)]

    second = simulate("--url", base, "--token", TOKEN, "--workspace", WORKSPACE)
    assert second.returncode == 0, second.stderr
    assert "uploaded: " not in second.stdout
    assert "nothing new to upload, all 12 files were already on the server" in second.stdout
    rows_after, groups_after = records(database, WORKSPACE)
    assert len(rows_after) == 12 and all(r["revision"] == 1 for r in rows_after)  # nothing rewritten
    assert [(g["file_count"], g["file_uploaded_count"]) for g in groups_after] == [(12, 12)]


def test_flat_layout_and_a_removed_object_uploaded_again(server, s3_admin):
    base, _, database = server
    mission = generate_mission(3, seed=7)
    lines = []
    report = pilot2.run(mission, base_url=base, token=TOKEN, workspace=FLAT_WORKSPACE, flat=True,
                        progress=lines.append)
    keys = [f"media/{FLAT_WORKSPACE}/{f.name}" for f in mission.files]
    assert [o.object_key for o in report.uploaded] == keys and len(lines) == 3
    for file, key in zip(mission.files, keys):
        assert stored_bytes(s3_admin, key) == file.data
    assert sorted(r["object_key"] for r in records(database, FLAT_WORKSPACE)[0]) == sorted(keys)

    # The bucket is the truth: an object deleted behind the server's back is uploaded again,
    # and only that one.
    s3_admin.remove_object(BUCKET, keys[1])
    again = pilot2.run(mission, base_url=base, token=TOKEN, workspace=FLAT_WORKSPACE, flat=True)
    assert [o.object_key for o in again.uploaded] == [keys[1]]
    assert [o.known_by for o in again.skipped] == ["tiny-fingerprints", "tiny-fingerprints"]
    assert stored_bytes(s3_admin, keys[1]) == mission.files[1].data
    assert len(records(database, FLAT_WORKSPACE)[0]) == 3


def test_a_refused_token_exits_1_naming_the_step(server):
    base, _, _ = server
    wrong = "not-the-token-of-this-server"
    result = simulate("--url", base, "--token", wrong, "--workspace", WORKSPACE)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "dji-media simulate-pilot: tiny-fingerprints answered HTTP 401, code 401: invalid X-Auth-Token"]
    assert wrong not in result.stdout + result.stderr


def test_unreachable_storage_endpoint_exits_1_naming_the_put(s3, tmp_path):
    # sts hands out an endpoint this machine cannot reach: the first PUT fails and says where.
    config = simulator_config(tmp_path, s3, public_endpoint="http://127.0.0.1:1")
    proc, base = start(SERVE + [config], tmp_path)
    try:
        result = simulate("--url", base, "--token", TOKEN, "--workspace", WORKSPACE, "--files", "2")
    finally:
        stop(proc)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"dji-media simulate-pilot: PUT media/{WORKSPACE}/"), line
    assert "http://127.0.0.1:1 (from the sts answer)" in line
    assert "Traceback" not in result.stdout + result.stderr
    assert records(tmp_path / "media.sqlite3", WORKSPACE)[0] == []  # no callback without an upload
