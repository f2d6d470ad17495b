"""The media library's page in a real browser (headless Chromium through Selenium) against a
real ``dji-media serve`` process, on the session's SeaweedFS, with files uploaded through the
real Pilot 2 flow (the simulator). What is checked is what an operator sees and clicks.

Without Chromium, chromedriver or selenium the browser tests skip and say which is missing
(``.ci/run`` installs Debian's chromium and chromium-driver). ``DJI_MEDIA_SCREENSHOTS=<dir>``
saves a screenshot of each step there, for a person to look at.
"""
from __future__ import annotations

import json
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


def _sign_in(driver, base, token=TOKEN, workspace=WORKSPACE):
    driver.get(base + PAGE)
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

