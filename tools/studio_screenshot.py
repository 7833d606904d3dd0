"""The README's screenshot of the studio: the shipped default model on an example photo.

Serves the studio as `python app.py` would (this checkout's checkpoints/ and assets/),
opens it in headless Chromium, picks the default task's first example, waits for its
samples, makes one of them current and saves a screenshot of the page.

    python -m tools.studio_screenshot --out docs/studio.png

Needs Debian's chromium and Python's playwright (as the browser tests do).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
from pathlib import Path

from PIL import Image

import app
from chimle.fileio import atomic_write_bytes

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TIMEOUT_MS = 180_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def screenshot(out: Path, sample: int, width: int) -> None:
    from playwright.sync_api import sync_playwright

    settings = app.settings_from_args(app.parse_args([]))
    demo = app.build_demo(settings)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options(settings))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("button", name="Generate", exact=True).wait_for()
            page.locator("#examples img, #examples button").first.click()  # the task's first example
            page.locator("#samples img").nth(7).wait_for()
            page.locator("#samples img").nth(sample).click()
            page.locator("#status").get_by_text(f"Sample #{sample + 1} is the current result").wait_for()
            page.wait_for_timeout(1000)  # the result and level strip images load
            png = page.screenshot(full_page=False)
            browser.close()
    finally:
        demo.close()
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(out, buffer.getvalue())
    print(f"wrote {out} ({len(buffer.getvalue()) / 1e3:.0f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/studio.png")
    parser.add_argument("--sample", type=int, default=2, help="which sample to make current (from 0)")
    parser.add_argument("--width", type=int, default=1400, help="browser window width in pixels")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    screenshot(Path(args.out), args.sample, args.width)


if __name__ == "__main__":
    main()
