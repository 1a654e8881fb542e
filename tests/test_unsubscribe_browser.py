"""The unsubscribe page in a real headless Chromium at phone width: read it, press the button, come back.

Uses Debian's chromium and chromedriver (`.ci/run` installs them); skipped with a message where absent.
"""
from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

from policy import suppression
from tests.conftest import free_port
from tests.test_delivery import submit, wait_states

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no browser: install Debian's chromium and chromium-driver (see .ci/run)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

RECIPIENT, MASKED = "jane@example.net", "j***@example.net"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


@pytest.fixture
def setup(relay_factory, sink):
    """A relay with the http role; the link comes from the List-Unsubscribe of a copy delivered to the sink."""
    port = free_port()
    relay = relay_factory(roles=("submission", "delivery", "http"),
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}},
                          http={"listen": (("127.0.0.1", port),), "public_url": f"http://127.0.0.1:{port}"})
    relay.add_tenant(name="Acme Inc.")
    wait_states(relay, submit(relay, (RECIPIENT,)), {"delivered"})
    link = re.search(rb"<(http://127\.0\.0\.1:\d+/u/[a-z2-7]+)>", sink.received[0][2]).group(1).decode()
    return relay.store, link


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
    store, link = setup
    browser.get(link)
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
    # chromedriver reports that either as a stale reference or as "Node with given id does not belong to
    # the document", a plain WebDriverException.
    WebDriverWait(browser, 5, ignored_exceptions=(StaleElementReferenceException, WebDriverException)).until(
        lambda d: confirmation in d.find_element(By.TAG_NAME, "body").text)
    row = suppression.find(store, "acme", RECIPIENT)
    assert row is not None and (row.scope, row.cause, row.source) == ("acme", "unsubscribe", "one-click")

    browser.get(link)
    again = browser.find_element(By.TAG_NAME, "body").text
    assert f"You are already unsubscribed from mail by Acme Inc. sent to {MASKED}." in again
    assert not browser.find_elements(By.TAG_NAME, "button")
    problems = [e["message"] for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems
