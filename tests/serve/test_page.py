"""The page in a real browser: `drgrade serve` in a subprocess, driven by headless Chromium."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drgrade.inference.loader import load_grader

# Chromium from Debian's package (.ci/run installs it); Playwright's own download is not used.
CHROMIUM = os.environ.get("DRGRADE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without the networking flags Chromium keeps calling Google's hosts, which a closed network
# refuses over and over; the page itself needs nothing but the server on loopback.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
START_TIMEOUT = 90  # seconds for the server to import torch and load the model


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI must run the browser test (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    """Chromium's path; skipped without it (or Playwright), a failure under CI=true.

    Session-scoped and automatic so that it runs first: a skip trains no model.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        _missing(f"Chromium is not installed ({CHROMIUM}; apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    """Headless Chromium under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives each launch a new, empty profile folder and removes it after.
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(demo_run):
    """`drgrade serve RUN --port 0` as a user starts it; its printed URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "drgrade", "serve", str(demo_run), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    try:
        url, lines = None, []
        deadline = time.monotonic() + START_TIMEOUT
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if line.startswith("drgrade: grading with"):
                url = line.split(" at ", 1)[1].split()[0]
        assert url, "drgrade serve did not print its URL:\n" + "".join(lines)
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        yield url
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C: the way a user stops it
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(browser, server):
    """A fresh tab on the page, failing the test on any script error or console error."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    # Refused uploads log "Failed to load resource"; their statuses are checked by the tests.
    page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
            and problems.append(f"console: {m.text}"))
    page.goto(server)
    # A locator, not wait_for_function: that evaluates a string, which the page's own
    # Content-Security-Policy (no 'unsafe-eval') may refuse.
    page.locator("#model", has_text=re.compile(r"^Model:")).wait_for()
    yield page
    page.close()
    assert not problems, problems


def test_upload_shows_the_grade_and_heat_map(page, demo_run, photograph, tmp_path):
    page.set_input_files("#photo", str(photograph))  # choosing a file starts the grading
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    expected = load_grader(demo_run, device="cpu").predict_image(photograph)

    assert page.inner_text("#grade") == str(expected.grade)
    assert page.inner_text("#grade-name") == expected.grade_name
    assert page.inner_text("#file-name") == photograph.name
    referable = page.inner_text("#referable")
    assert referable.startswith("Referable" if expected.referable else "Not referable")
    rows = page.locator("#probabilities tbody tr")
    assert rows.count() == 5
    assert page.inner_text("#probabilities tr.predicted td:first-child").startswith(
        str(expected.grade))
    shown = float(rows.nth(expected.grade).locator("td").nth(1).inner_text().split()[0])
    assert shown == pytest.approx(100 * expected.probabilities[expected.grade], abs=0.06)
    heat_map = page.locator("#heat-map")
    assert heat_map.is_visible()
    assert heat_map.evaluate("img => img.complete && img.naturalWidth > 0")
    assert heat_map.get_attribute("src").startswith("data:image/png;base64,")

    screenshot = tmp_path / "serve-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_a_black_image_is_refused_on_the_page(page, black_png):
    page.set_input_files("#photo", str(black_png))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    message = page.inner_text("#error")
    assert "HTTP 422" in message and "blank" in message
    assert page.locator("#result").is_hidden()
