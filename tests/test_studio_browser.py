"""The studio in real headless Chromium: load the page, draw samples, move a slider, screenshot.

Needs Debian's chromium (`apt-get install -y chromium`) and Python's playwright
(`pip install playwright`; its own browser download is not used). Screenshots are written
to the test's tmp folder (printed at the end of the test).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import app
from chimle.studio.handlers import StudioSettings
from chimle.studio.security import TrainingPolicy

from .studio_helpers import free_port, one_torch_thread, photo, tiny_checkpoint, write_photos

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000  # the page works on two shared CPU cores

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:::gradio.queueing")]
single_thread = pytest.fixture(scope="module")(one_torch_thread)


def _playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright")
    return sync_playwright


@pytest.fixture
def running_app(tmp_path, single_thread):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    tiny_checkpoint(checkpoints, "colourization", levels=3)
    write_photos(tmp_path / "data" / "photos")
    settings = StudioSettings(checkpoints=checkpoints, runs=tmp_path / "runs", data_root=tmp_path / "data",
                              assets=tmp_path / "assets", policy=TrainingPolicy(True, "Training is enabled."))
    demo = app.build_demo(settings)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options(settings))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_page_samples_and_a_slider_in_chromium(running_app, tmp_path):
    sync_playwright = _playwright()
    upload = tmp_path / "photo.png"
    photo("chelsea", (192, 144)).save(upload)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(running_app)
            page.get_by_role("button", name="Generate", exact=True).wait_for()
            page.wait_for_function("() => document.querySelector('#model input')?.value.includes('tiny-colourization')")

            # Uploading a photo draws the gallery (8 samples by default) and shows the levels.
            page.locator("#input-photo input[type=file]").set_input_files(str(upload))
            page.locator("#samples img").nth(7).wait_for()
            assert page.locator("#samples img").count() == 8
            page.locator("#level-strip img").nth(2).wait_for()
            page.get_by_text("converted to grey").wait_for()
            page.screenshot(path=str(shots / "1-samples.png"), full_page=True)

            # Clicking a sample makes it current.
            page.locator("#samples img").nth(2).click()
            page.locator("#status").get_by_text("Sample #3 is the current result").wait_for()
            before = page.locator("#result img").get_attribute("src")

            # Drag the first direction slider of level 1 to the right: levels 1-3 re-render.
            slider = page.locator("#level-1 input[type=range]").first
            slider.scroll_into_view_if_needed()
            box = slider.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2, steps=8)
            page.mouse.up()
            page.locator("#status").get_by_text("Rendered levels 1–3").wait_for()
            page.wait_for_function("before => document.querySelector('#result img')?.src !== before", arg=before)
            assert float(page.locator("#level-1 input[type=number]").first.input_value()) > 1.0
            page.screenshot(path=str(shots / "2-after-slider.png"), full_page=True)

            page.get_by_role("tab", name="Train", exact=True).click()
            page.get_by_text("Training is enabled.").wait_for()
            page.screenshot(path=str(shots / "3-train-tab.png"), full_page=True)
        finally:
            context.close()
    assert all((shots / name).stat().st_size > 10_000 for name in ("1-samples.png", "2-after-slider.png"))
    print(f"screenshots: {shots}")
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
