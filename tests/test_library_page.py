"""The media library's page in a real browser (headless Chromium through Selenium) against a
real ``dji-media serve`` process, on the session's SeaweedFS, with files uploaded through the
real Pilot 2 flow (the simulator). What is checked is what an operator sees and clicks.

Without Chromium, chromedriver or selenium the browser tests skip and say which is missing
(``.ci/run`` installs Debian's chromium and chromium-driver). ``DJI_MEDIA_SCREENSHOTS=<dir>``
saves a screenshot of each step there, for a person to look at.
"""
from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request

import browser
import pytest
import yaml

from dji_media.simulator import pilot2
from dji_media.simulator.media import generate_mission
from dji_media.web.page import STATIC_DIR, get_page_handlers
from support import SERVE, TOKEN, start, stop, write_config

WORKSPACE = "ws-cli"
READER = "reader-token-no-delete"   # may read the library, not delete
UPLOADER = "upload-only-token"      # Pilot 2's token: upload only
PAGE = "/media/library/"


def _config(tmp_path, s3) -> str:
    path = write_config(tmp_path, s3_endpoint=s3.endpoint)
    with open(path) as file:
        config = yaml.safe_load(file)
    config["authenticator"]["options"]["tokens"] = {
        TOKEN: [WORKSPACE],  # every scope
        READER: {"workspaces": [WORKSPACE], "scopes": ["upload", "read"]},
        UPLOADER: {"workspaces": [WORKSPACE], "scopes": ["upload"]},
    }
    with open(path, "w") as file:
        yaml.safe_dump(config, file)
    return path


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    """A ``dji-media serve`` process with two missions uploaded the way Pilot 2 does: 4 files
    (3 photos and a video) and 3 files (2 photos and a video)."""
    tmp_path = tmp_path_factory.mktemp("library-page")
    proc, base = start(SERVE + [_config(tmp_path, s3)], tmp_path)
    try:
        missions = [generate_mission(4, mission="North-field", seed=1),
                    generate_mission(3, mission="Roof-survey", seed=2)]
        for mission in missions:
            pilot2.run(mission, base_url=base, token=TOKEN, workspace=WORKSPACE)
        yield base, missions
    finally:
        stop(proc)


@pytest.fixture
def driver(tmp_path):
    """A headless Chromium with a fresh profile (so a fresh sessionStorage), quit afterwards."""
    why = browser.unavailable()
    if why:
        pytest.skip(f"no browser for the page tests: {why}")
    chromium = browser.start_chromium(str(tmp_path / "chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.quit()


def _api(base, path, token=TOKEN, method="GET"):
    request = urllib.request.Request(f"{base}/media/api/v1/workspaces/{WORKSPACE}/library/{path}",
                                     headers={"X-Auth-Token": token}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def _sign_in(driver, base, token=TOKEN, workspace=WORKSPACE, page=PAGE):
    driver.get(base + page)
    browser.wait_for(lambda: _by_id(driver, "login").is_displayed(), "the sign-in form")
    _by_id(driver, "login-workspace").send_keys(workspace)
    _by_id(driver, "login-token").send_keys(token)
    _by_id(driver, "login-submit").click()


def _tiles(driver):
    return browser.visible_texts(driver, "#gallery li")


def _wait_for_tiles(driver, count, what):
    return browser.wait_for(lambda: len(_tiles(driver)) == count and _tiles(driver), what)


# --- served by the package, under the host's prefix -------------------------------------------

def test_routes_follow_the_prefix():
    routes = [route[0] for route in get_page_handlers("/dji/")]
    assert routes == ["/dji/media/library/", "/dji/media/library", "/dji/media/library/static/(.*)"]
    assert [route[0] for route in get_page_handlers()][0] == PAGE


def test_the_page_is_three_files_of_the_package():
    # package_data ships this folder; nothing in the page is fetched from another origin.
    for name in ("index.html", "library.js", "library.css"):
        with open(f"{STATIC_DIR}/{name}", encoding="utf-8") as file:
            text = file.read()
        for outside in ("https://", "http://", "cdn", "fonts.googleapis"):
            assert outside not in text.lower(), (name, outside)


def test_serve_serves_the_page_and_its_assets(server):
    base, _ = server
    with urllib.request.urlopen(base + PAGE, timeout=10) as response:
        html = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert 'src="static/library.js"' in html
    for asset, kind in (("library.js", "javascript"), ("library.css", "text/css")):
        with urllib.request.urlopen(f"{base}{PAGE}static/{asset}", timeout=10) as response:
            assert kind in response.headers["Content-Type"]
    # Without the slash the page's relative URLs would miss: it redirects to the slash.
    with urllib.request.urlopen(base + PAGE.rstrip("/"), timeout=10) as response:
        assert response.url == base + PAGE


# --- in the browser ----------------------------------------------------------------------------

def test_the_page_asks_for_the_token_and_keeps_it_in_this_tab_only(server, driver):
    base, _ = server
    driver.get(base + PAGE)
    browser.wait_for(lambda: _by_id(driver, "login").is_displayed(), "the sign-in form")
    assert not _by_id(driver, "library").is_displayed()
    assert driver.get_window_size()["width"] == browser.WIDTH
    browser.save_screenshot(driver, "sign-in")
    _sign_in(driver, base)
    browser.wait_for(lambda: _by_id(driver, "library").is_displayed(), "the library after signing in")
    assert driver.execute_script("return sessionStorage.getItem('dji_media.token')") == TOKEN
    assert driver.execute_script("return localStorage.length") == 0
    assert driver.get_cookies() == []
    assert _by_id(driver, "who").text == f"Workspace {WORKSPACE}"


# --- against the library API -------------------------------------------------------------------

def _open_details(driver, index=0):
    from selenium.webdriver.common.by import By

    tile = driver.find_elements(By.CSS_SELECTOR, "#gallery li")[index]
    name = tile.find_element(By.CSS_SELECTOR, ".name").text
    tile.click()
    browser.wait_for(lambda: _by_id(driver, "details").is_displayed() and _by_id(driver, "d-name").text == name,
                     f"the details of {name}")
    return name


def _apply(driver, **fields):
    from selenium.webdriver.support.ui import Select

    for element_id, value in fields.items():
        element = _by_id(driver, element_id)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        elif element.get_attribute("type") == "date":
            # Typing into a date field depends on the browser's locale; the value is yyyy-mm-dd.
            driver.execute_script("arguments[0].value = arguments[1]", element, value)
        else:
            element.clear()
            element.send_keys(value)
    _by_id(driver, "f-apply").click()


def test_gallery_newest_first_filters_and_details(server, driver, s3):
    from selenium.webdriver.common.by import By

    base, missions = server
    every = [f for m in missions for f in m.files]
    _sign_in(driver, base)
    tiles = _wait_for_tiles(driver, len(every), f"the {len(every)} uploaded files")
    # Newest upload first: the second mission's last file was uploaded last.
    assert tiles[0].splitlines()[-2] == missions[1].files[-1].name
    assert f"({len(every)} of {len(every)})" in _by_id(driver, "count").text
    # Photos get their preview from storage (the inline presigned URL); videos a placeholder.
    browser.wait_for(lambda: driver.execute_script(
        "return Array.from(document.querySelectorAll('#gallery .thumb img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length") == sum(f.kind == "photo" for f in every),
        "every photo's preview to load")
    assert sum("VIDEO" in text for text in _tiles(driver)) == 2
    # The missions table shows both, with their completeness.
    rows = browser.wait_for(lambda: len(browser.visible_texts(driver, "#missions tbody tr")) == 2
                            and browser.visible_texts(driver, "#missions tbody tr"), "the missions table")
    assert {m.file_group_id for m in missions} == {row.split()[0] for row in rows}
    assert all("complete" in row for row in rows), rows
    browser.save_screenshot(driver, "gallery")

    _apply(driver, **{"f-kind": "video"})
    videos = _wait_for_tiles(driver, 2, "the two videos")
    assert all(".MP4" in text for text in videos)
    _apply(driver, **{"f-kind": "", "f-mission": missions[0].file_group_id})
    _wait_for_tiles(driver, len(missions[0].files), "the first mission's files")
    assert {t.splitlines()[-2] for t in _tiles(driver)} == {f.name for f in missions[0].files}
    _apply(driver, **{"f-mission": "", "f-q": missions[1].files[0].name[4:18]})  # its capture time
    _wait_for_tiles(driver, 1, "the one file whose name holds the text")
    # Capture days, in the browser's time zone: a day either side of the second mission's.
    day = missions[1].files[0].captured_at.date()
    _apply(driver, **{"f-q": "", "f-from": str(day - datetime.timedelta(days=1)),
                      "f-to": str(day + datetime.timedelta(days=1))})
    _wait_for_tiles(driver, len(missions[1].files), "the files captured on the second mission's day")
    assert {t.splitlines()[-2] for t in _tiles(driver)} == {f.name for f in missions[1].files}
    _by_id(driver, "f-reset").click()
    _wait_for_tiles(driver, len(every), "every file again after Reset")

    # A photo's details: metadata, position, times, a preview and a download link to storage.
    photo = missions[1].files[0]
    index = [t.splitlines()[-2] for t in _tiles(driver)].index(photo.name)
    _open_details(driver, index)
    fields = dict(zip(browser.visible_texts(driver, "#d-fields dt"), browser.visible_texts(driver, "#d-fields dd")))
    assert fields["Position"] == f"{photo.lat:.6f}, {photo.lng:.6f}"
    assert fields["Mission"] == missions[1].file_group_id
    assert fields["Aircraft SN"] == missions[1].sn
    assert fields["Path"] == missions[1].folder
    assert fields["Captured"] and fields["Uploaded"] != "–"
    link = browser.wait_for(lambda: _by_id(driver, "d-download").get_attribute("href"), "the download link")
    assert link.startswith(s3.endpoint + "/") and "X-Amz-Signature=" in link  # presigned, at storage
    with urllib.request.urlopen(link, timeout=10) as response:
        assert response.read() == photo.data
    browser.wait_for(lambda: driver.execute_script(
        "const i = document.getElementById('d-preview'); return !i.hidden && i.complete && i.naturalWidth > 0"),
        "the preview in the details")
    browser.save_screenshot(driver, "details")
    assert not driver.find_elements(By.CSS_SELECTOR, "#message:not([hidden])")


def test_delete_asks_first_then_the_file_is_gone(server, driver):
    base, missions = server
    victim = missions[0].files[1]
    _sign_in(driver, base)
    total = len([f for m in missions for f in m.files])
    _wait_for_tiles(driver, total, "the uploaded files")
    index = [t.splitlines()[-2] for t in _tiles(driver)].index(victim.name)
    _open_details(driver, index)
    file_id = driver.execute_script("return document.querySelectorAll('#gallery li')[arguments[0]].dataset.id", index)

    _by_id(driver, "d-delete").click()   # the operator changes their mind: nothing happens
    alert = browser.wait_for(lambda: driver.switch_to.alert, "the confirmation")
    assert victim.name in alert.text
    alert.dismiss()
    assert _api(base, f"files/{file_id}")[0] == 200

    _by_id(driver, "d-delete").click()
    browser.wait_for(lambda: driver.switch_to.alert, "the confirmation").accept()
    browser.wait_for(lambda: _by_id(driver, "message").text == f"Deleted {victim.name}.", "the deleted message")
    browser.save_screenshot(driver, "deleted")
    assert victim.name not in "\n".join(_tiles(driver))
    assert len(_tiles(driver)) == total - 1
    assert not _by_id(driver, "details").is_displayed()
    assert _api(base, f"files/{file_id}")[0] == 404
    driver.refresh()   # the token is still in the tab: the page comes back without the file
    _wait_for_tiles(driver, total - 1, "the files left after a reload")


def test_a_token_without_delete_sees_why_and_the_file_stays(server, driver):
    base, _ = server
    _sign_in(driver, base, token=READER)
    browser.wait_for(lambda: _tiles(driver), "the files")
    count = len(_tiles(driver))
    name = _open_details(driver, 0)
    _by_id(driver, "d-delete").click()
    browser.wait_for(lambda: driver.switch_to.alert, "the confirmation").accept()
    message = browser.wait_for(lambda: _by_id(driver, "message").is_displayed() and _by_id(driver, "message").text,
                               "the refusal")
    browser.save_screenshot(driver, "forbidden")
    assert message == f"This token may not delete files (it lacks the delete scope): {name} was not deleted."
    assert len(_tiles(driver)) == count and _by_id(driver, "details").is_displayed()


def test_an_upload_only_token_is_told_it_cannot_read(server, driver):
    base, _ = server
    _sign_in(driver, base, token=UPLOADER)
    message = browser.wait_for(lambda: _by_id(driver, "message").is_displayed() and _by_id(driver, "message").text,
                               "the refusal")
    assert message.startswith(f"This token may not see the library of workspace {WORKSPACE} (") and "read" in message
    assert _tiles(driver) == []


def test_a_refused_token_is_asked_for_again(server, driver):
    base, _ = server
    _sign_in(driver, base, token="not-a-token")
    browser.wait_for(lambda: _by_id(driver, "login").is_displayed(), "the sign-in form again")
    assert _by_id(driver, "message").text == "The server did not accept the token. Enter it again."
    assert driver.execute_script("return sessionStorage.getItem('dji_media.token')") is None
    assert _by_id(driver, "login-workspace").get_attribute("value") == WORKSPACE
    _by_id(driver, "login-token").send_keys(TOKEN)
    _by_id(driver, "login-submit").click()
    browser.wait_for(lambda: _tiles(driver), "the files with the right token")


def test_load_more_follows_the_cursor(server, driver):
    base, _ = server
    total = _api(base, "files?count=true&limit=1")[1]["data"]["total"]  # a test before deleted one
    assert total > 3
    _sign_in(driver, base, page=PAGE + "?page_size=3")
    seen = []
    for shown in range(3, total + 3, 3):
        tiles = _wait_for_tiles(driver, min(shown, total), f"{min(shown, total)} files")
        if shown < total:
            assert _by_id(driver, "more").is_displayed()
            assert f"({shown} of " in _by_id(driver, "count").text
            _by_id(driver, "more").click()
        seen = tiles
    assert not _by_id(driver, "more").is_displayed()
    assert len({t.splitlines()[-2] for t in seen}) == len(seen)  # no file twice across pages
