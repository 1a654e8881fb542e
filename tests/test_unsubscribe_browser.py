"""The unsubscribe page in a real headless Chromium at phone width: read it, press the button, come back.

Uses Debian's chromium and chromedriver (`.ci/run` installs them); skipped with a message where absent.
"""
from __future__ import annotations

import asyncio
import shutil
import struct
import threading
from pathlib import Path

import pytest
from aiohttp import web

from inbound.http import make_app
from policy import sent, suppression, tenants
from policy.store import Store
from policy.tokens import TokenKeys, ensure_secret

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no browser: install Debian's chromium and chromium-driver (see .ci/run)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

RECIPIENT, MASKED = "jane@example.net", "j***@example.net"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


class Server:
    """The HTTP app on 127.0.0.1:<ephemeral> in its own thread, with its own store connection."""

    def __init__(self, db: Path):
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(db)), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "http app did not start"

    async def _main(self, db: Path) -> None:
        store = Store(db)                      # sqlite connections must not cross threads
        runner = web.AppRunner(make_app(store, TokenKeys.load(store, None)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = "http://127.0.0.1:%d" % runner.addresses[0][1]
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            store.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def setup(tmp_path: Path):
    db = tmp_path / "store.sqlite"
    store = Store(db)
    store.migrate()
    ensure_secret(store, None)
    tenants.add(store, "acme", ["example.com"], [], None, name="Acme Inc.")
    token = TokenKeys.load(store, None).issue()
    sent.record(store, token, "acme", RECIPIENT, "<m@x>", "q1", 86400)
    server = Server(db)
    yield store, server.url, token
    server.stop()
    store.close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--lang=en-US", "--window-size=390,844"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(10)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    yield driver
    driver.quit()


def png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">I", data[16:20])[0]


def test_unsubscribe_in_a_real_browser_at_phone_width(setup, browser, tmp_path):
    store, url, token = setup
    browser.get(f"{url}/u/{token}")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Acme Inc." in body and MASKED in body and RECIPIENT not in browser.page_source
    assert browser.execute_script("return document.documentElement.lang") == "en"

    # Phone layout: a 390 px viewport, no sideways scrolling, the button whole on screen and easy to tap.
    view = browser.execute_script("return [innerWidth, innerHeight, devicePixelRatio,"
                                  " document.documentElement.scrollWidth]")
    assert view[0] == 390 and view[3] <= 390, view
    button = browser.find_element(By.CSS_SELECTOR, "form[method=post] button")
    box = browser.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return [r.left, r.top, r.right, r.bottom];", button)
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= view[0] and box[3] <= view[1], (box, view)
    assert box[3] - box[1] >= 44 and button.is_displayed() and button.text == "Unsubscribe"
    # The inline style is applied, so the CSP does not block it; nothing else reported a violation.
    assert button.value_of_css_property("background-color") in ("rgba(11, 87, 208, 1)", "rgb(11, 87, 208)")
    shot = tmp_path / "unsubscribe-390.png"
    assert browser.save_screenshot(str(shot))
    assert png_width(shot) == round(view[0] * view[2])
    assert suppression.find(store, "acme", RECIPIENT) is None      # opening the page did nothing

    button.click()
    confirmation = f"You have been unsubscribed from mail by Acme Inc. sent to {MASKED}."
    # The old page's elements go stale while the answer loads: look again until the confirmation is there.
    WebDriverWait(browser, 5, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: confirmation in d.find_element(By.TAG_NAME, "body").text)
    row = suppression.find(store, "acme", RECIPIENT)
    assert row is not None and (row.scope, row.cause, row.source) == ("acme", "unsubscribe", "one-click")

    browser.get(f"{url}/u/{token}")
    again = browser.find_element(By.TAG_NAME, "body").text
    assert f"You are already unsubscribed from mail by Acme Inc. sent to {MASKED}." in again
    assert not browser.find_elements(By.TAG_NAME, "button")
    problems = [e["message"] for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems
