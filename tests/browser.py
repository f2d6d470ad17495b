"""A real headless browser for the page tests: Debian's Chromium driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them) and nothing
downloaded: Selenium is given both paths, so its manager never looks for a browser online.
``unavailable()`` says why a browser cannot run here (the tests skip with that reason).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, List, Optional

CHROMIUM = os.environ.get("DJI_MEDIA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DJI_MEDIA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WIDTH, HEIGHT = 1280, 800  # the screen the page is made for

# As the machines' notes run Chromium headless: no sandbox (tests run as root), no GPU, and none
# of its own traffic (this network refuses it, and a test must not wait on Google's hosts).
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--password-store=basic",
         f"--window-size={WIDTH},{HEIGHT}"]


def unavailable() -> Optional[str]:
    """Why no browser can be started here, or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (f"{path} is missing: install Debian's {package} "
                    "(apt-get install -y chromium chromium-driver; .ci/run does it)")
    return None


def start_chromium(user_data_dir: str) -> Any:
    """A headless Chromium with a fresh profile in ``user_data_dir``; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it returns something true, and return that; AssertionError
    naming ``what`` after ``timeout`` seconds. Exceptions from the page being redrawn (a stale
    element) count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # noqa: BLE001 - StaleElementReference and the like: try again
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def visible_texts(driver: Any, css: str) -> List[str]:
    """The text a person sees in each element matching ``css`` (hidden ones excluded)."""
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def save_screenshot(driver: Any, name: str) -> None:
    """With DJI_MEDIA_SCREENSHOTS=<dir>: a PNG of the page there, for a person to look at while
    developing (never committed)."""
    folder = os.environ.get("DJI_MEDIA_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        driver.save_screenshot(os.path.join(folder, name + ".png"))


__all__ = ["CHROMIUM", "CHROMEDRIVER", "unavailable", "start_chromium", "wait_for", "visible_texts",
           "save_screenshot"]
