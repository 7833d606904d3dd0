"""The latency benchmark's app path: timed over HTTP, coarse-first responses read as they stream.

`benchmarks/studio_latency.py` gives the figures (README, "The studio"); here it runs with a
tiny model, every edit made to stream (the threshold at 0 s), so that the coarse response
is seen arriving before the result for the levels that have finer ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.studio_latency import PHASES, app_timings
from chimle.studio import session as session_module

from .studio_helpers import photo, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_edits_of_levels_with_finer_ones_stream_a_coarse_image_first_over_http(tmp_path, monkeypatch):
    monkeypatch.setattr(session_module, "COARSE_FIRST_ABOVE_SECONDS", 0.0)
    checkpoint = tiny_checkpoint(tmp_path, "colourization", levels=3)
    image = tmp_path / "input.png"
    photo("astronaut", (80, 64)).save(image)
    timings = app_timings(checkpoint, image, max_side=64, samples=2, edits=2)
    assert sorted(timings["per_level"]) == [0, 1, 2]
    for level, finals in timings["per_level"].items():
        firsts = timings["first_image"][level]
        assert len(firsts) == len(finals) == 2
        if level < 2:  # two responses: the coarse image, then the result
            assert all(first < final for first, final in zip(firsts, finals))
        else:  # the finest level alone: one response
            assert firsts == finals
    assert len(timings["fetch"]) == 6 and all(seconds > 0 for seconds in timings["fetch"])
    assert timings["grid"] > 0
    assert len(timings["after_save"]) == 2 and all(seconds > 0 for seconds in timings["after_save"])


def test_the_benchmark_splits_the_apps_time_on_the_server_into_gradios_phases(tmp_path):
    """Run as users run it (its own process, so that Gradio's profiler is on from import):
    the table of server phases has a row per endpoint, each phase within the request's total
    and the total within what the client waited."""
    checkpoint = tiny_checkpoint(tmp_path, "colourization", levels=2)
    image = tmp_path / "input.png"
    photo("astronaut", (80, 64)).save(image)
    env = {key: value for key, value in os.environ.items() if key != "GRADIO_PROFILING"}
    run = subprocess.run([sys.executable, "benchmarks/studio_latency.py", "--checkpoint", str(checkpoint),
                          "--image", str(image), "--max-side", "64", "--samples", "2", "--edits", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.split("on the server, median ms per request")[1].splitlines()
    header = table[1].split()
    assert header[:6] == list(PHASES)
    rows = {line.split()[0]: [float(cell) for cell in line.split()[1:]] for line in table[2:] if line.strip()}
    assert sorted(rows) == ["edit_level_1", "edit_level_2", "generate"]
    for endpoint, cells in rows.items():
        phases, left_to_http = dict(zip(PHASES, cells[:6])), cells[6]
        assert phases["fn_call"] > 0, endpoint
        inside = phases["preprocess"] + phases["fn_call"] + phases["postprocess"] + phases["streaming_diff"]
        assert inside <= phases["total"] + 1.0, (endpoint, phases)
        assert left_to_http >= 0, (endpoint, cells)
