"""The studio's torch work leaves the process with one OpenMP team: the render thread's.

A team lives as long as the thread that made it, and while a second one lives every render
of the process is about 1.8 times slower (`chimle/studio/render_thread.py`). This serves
the real app, drives the long jobs (save at full size, colour hints, reconstruction) over
HTTP and checks, from /proc, that the native threads they added are gone once they end.
A job run on one of Gradio's pooled worker threads would leave its team behind for as long
as that worker lives (anyio keeps an idle worker for 10 s).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from chimle.studio.handlers import StudioSettings
from chimle.studio.render_thread import RENDERS
from chimle.studio.security import TrainingPolicy

from .studio_helpers import photo, served_app, tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")
SETTLE_SECONDS = 5.0  # for the ended job threads' OpenMP workers to exit (well under anyio's 10 s)


def native_workers() -> set[int]:
    """The process's threads that Python did not start: torch's OpenMP workers (and any other
    native library's threads)."""
    python = {thread.native_id for thread in threading.enumerate()}
    return {int(tid) for tid in os.listdir("/proc/self/task")} - python


def settled_workers(baseline: set[int]) -> set[int]:
    """The native workers once those beyond `baseline` have had time to exit."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while (workers := native_workers()) - baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return workers


def _stroke(path, size: tuple[int, int], colour=(255, 0, 0)) -> str:
    """A layer of `size` = (width, height) with one stroke of `colour` in its middle."""
    width, height = size
    layer = np.zeros((height, width, 4), np.uint8)
    layer[height // 3:2 * height // 3, width // 4:3 * width // 4] = (*colour, 255)
    Image.fromarray(layer, "RGBA").save(path)
    return str(path)


@pytest.fixture
def render_thread_with_process_threads():
    """The render thread with as many torch threads as the test process's main thread.

    torch fixes a thread's OpenMP team size the first time that thread runs torch work, from
    the process setting of that moment, so a render thread first used under another test
    module's one-thread fixture keeps a team of one (no workers to count) for the whole
    session. The app sets its threads before its first render; this puts the render thread
    where the app's would be, and back afterwards.
    """
    process_threads, previous = torch.get_num_threads(), RENDERS.run(torch.get_num_threads)
    RENDERS.run(torch.set_num_threads, process_threads)
    yield
    RENDERS.run(torch.set_num_threads, previous)
    torch.set_num_threads(process_threads)  # set_num_threads also sets what new threads start with


def test_long_jobs_leave_no_openmp_team_behind(tmp_path, render_thread_with_process_threads):
    if RENDERS.run(torch.get_num_threads) < 2:
        pytest.skip("one torch thread: no OpenMP teams to count")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    model = tiny_checkpoint(checkpoints, "colourization", levels=3)
    image, reference = tmp_path / "input.png", tmp_path / "reference.png"
    photo("astronaut", (320, 256)).save(image)  # larger than the working size: Save renders at full size
    photo("astronaut", (320, 256)).save(reference)
    settings = StudioSettings(checkpoints=checkpoints, runs=tmp_path / "runs", data_root=tmp_path,
                              assets=tmp_path / "assets", policy=TrainingPolicy(False, "test"))
    with served_app(settings) as url:
        client = Client(url, verbose=False)
        client.predict(str(model), handle_file(str(image)), handle_file(str(reference)), 96, 4, 0, False,
                       api_name="/set_input")
        client.predict(True, 1.0, 0, 0, 0, 0, 0, 0, 0, 1, api_name="/edit_level_1")
        baseline = native_workers()
        assert baseline, "the render thread's OpenMP team should show as native threads"

        downloads, _ = client.predict(api_name="/save")
        with Image.open(next(p for p in downloads["value"] if p.endswith(".png"))) as saved:
            assert saved.size == (320, 256)
        assert settled_workers(baseline) == baseline

        canvas, _, _ = client.predict(api_name="/paint_current")
        with Image.open(canvas["background"]) as background:
            stroke = _stroke(tmp_path / "stroke.png", background.size)
        painted = {"background": handle_file(canvas["background"]), "layers": [handle_file(stroke)],
                   "composite": None}
        job = client.submit(painted, 5, "ab", api_name="/colour_hints")
        assert job.result()[-1].startswith("Step 5/5")
        assert settled_workers(baseline) == baseline

        assert client.submit(5, 0.05, api_name="/reconstruct").result()[0].startswith("Step 5/5")
        assert settled_workers(baseline) == baseline
        # And the renders still come from the same team.
        client.predict(True, -1.0, 0, 0, 0, 0, 0, 0, 0, 1, api_name="/edit_level_1")
        assert native_workers() == baseline
