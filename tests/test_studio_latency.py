"""The latency benchmark's app path: timed over HTTP, coarse-first responses read as they stream.

`benchmarks/studio_latency.py` gives the figures (README, "The studio"); here it runs with a
tiny model, every edit made to stream (the threshold at 0 s), so that the coarse response
is seen arriving before the result for the levels that have finer ones.
"""

from __future__ import annotations

from benchmarks.studio_latency import app_timings
from chimle.studio import session as session_module

from .studio_helpers import photo, tiny_checkpoint


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
