"""The dashboard in a real browser: `hetcache-dashboard` serves the demo data on a free loopback port, Debian's
chromium (driven by Playwright, no browser download) visits every page; the plotly charts must be drawn with data.

Screenshots are kept under test-artifacts/dashboard/. Server and browser are stopped through their own handles.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_dashboard_data import demo_runs

__all__ = ["demo_runs"]  # the session fixture, shared with the other dashboard test modules

IN_CI = bool(os.environ.get("CI"))  # .ci/run installs chromium and the test extra: there a missing one is a failure
if not IN_CI:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
from playwright import sync_api  # noqa: E402

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None and not IN_CI, reason="chromium is not installed (apt-get install chromium)"),
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = {"overview": 0, "profile": 4, "study": 4, "policy": 2, "compare": 2}  # page → plotly charts it draws
TITLES = {"overview": "hetcache dashboard"}
TIMEOUT_MS = 90_000

# Per plot: the number of traces, and the largest number of points any trace holds (x, y or z, typed or plain).
TRACE_SIZES = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => {
    const traces = plot._fullData || [];
    const size = v => (Array.isArray(v) || ArrayBuffer.isView(v)) ? v.length : 0;
    return [traces.length, Math.max(0, ...traces.map(t => Math.max(size(t.x), size(t.y), size(t.z))))];
})"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher() -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = Path(sys.executable).with_name("hetcache-dashboard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hetcache.dashboard.cli"]


@pytest.fixture(scope="module")
def server(demo_runs, tmp_path_factory):
    """`hetcache-dashboard --runs <demo> --port <free>`; yields its URL once healthy, then terminates it."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("dashboard-server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*launcher(), "--runs", str(demo_runs), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"hetcache-dashboard exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"hetcache-dashboard did not become healthy:\n{log_path.read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium through Playwright with a new, empty profile folder."""
    assert CHROMIUM is not None, "chromium is not on PATH; .ci/run installs it with apt-get"
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 3600},  # Streamlit scrolls inside the page: a tall view shows it all
        )
        try:
            yield context
        finally:
            context.close()


def settle(page, title: str, charts: int) -> None:
    """Wait until the page titled `title` finished its script run and drew `charts` plotly charts."""
    page.wait_for_function(
        f"Array.from(document.querySelectorAll('h1')).some(h => h.innerText.trim() === {title!r})", timeout=TIMEOUT_MS
    )
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=TIMEOUT_MS)
    drawn = "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p => p.querySelector('.main-svg'))"
    page.wait_for_function(f"{drawn}.length === {charts}", timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-testid='stSkeleton']", state="detached", timeout=TIMEOUT_MS)


def test_every_page_draws_its_charts(server, browser):
    """Open the overview, then reach every page through the sidebar; each draws its charts with data, no error."""
    page = browser.new_page()
    try:
        page.goto(server, timeout=TIMEOUT_MS)  # the overview is the default page, at /
        for name, charts in PAGES.items():
            title = TITLES.get(name, name.capitalize())
            if name != "overview":
                page.get_by_role("link", name=name.capitalize(), exact=True).click()
                page.wait_for_url(f"{server}/{name}", timeout=TIMEOUT_MS)
            settle(page, title, charts)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0, name
            assert page.locator("[data-testid='stAlertContentError']").count() == 0, name
            sizes = page.evaluate(TRACE_SIZES)
            assert len(sizes) == charts and all(traces > 0 and points > 0 for traces, points in sizes), (name, sizes)
    finally:
        page.close()


def test_compare_frame_slider_reacts_to_the_keyboard(server, browser):
    """A direct link to a page works, and moving the frame slider changes the frames shown."""
    page = browser.new_page()
    try:
        page.goto(f"{server}/compare", timeout=TIMEOUT_MS)
        settle(page, "Compare", PAGES["compare"])
        captions = page.locator("[data-testid='stImageCaption']")
        assert captions.first.inner_text() == "uncached, frame 0"
        page.get_by_role("slider").first.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "document.querySelector(\"[data-testid='stImageCaption']\").innerText === 'uncached, frame 1'",
            timeout=TIMEOUT_MS,
        )
        page.screenshot(path=str(ARTIFACTS / "compare-frame1.png"), full_page=True)
    finally:
        page.close()
