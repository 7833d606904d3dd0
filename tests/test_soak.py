"""The soak benchmark (`benchmarks/soak.py`) for a few seconds on a tiny model.

Two users, each with its own session and photo, do one of every action and then random
ones against the launched app (`python app.py`) for 18 s. Every save's code is checked
against what that user did, so a session mix-up fails the run as an error. The 30-minute
run with the shipped model is done by hand (docs/hardening.md, "Soak").
"""

from __future__ import annotations

import json

from benchmarks.soak import ACTIONS, main, memory_figures

from .studio_helpers import tiny_checkpoint


def test_two_users_act_at_random_and_each_gets_its_own_codes(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path, "colourization", levels=3)
    out = tmp_path / "results" / "soak.json"
    # Memory barely settles in 6 s of warm-up on a tiny model: the bound here only checks
    # that it is measured and compared; the 10% of the issue is for the 30-minute run.
    status = main(["--checkpoint", str(checkpoint), "--clients", "2", "--minutes", "0.3",
                   "--warm-up-minutes", "0.1", "--max-side", "64", "--samples", "4", "--sample-seconds", "1",
                   "--max-drift", "0.25", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["errors"]["count"] == 0, report["errors"]["messages"]
    assert status == 0 and report["passed"], report["failures"]
    assert [user["photo"] for user in report["users"]] == ["assets/fig-grey.png", "assets/dogs-grey.png"]
    for user in report["users"]:
        assert all(user["actions"][kind] >= 1 for kind in ACTIONS), user["actions"]
    for kind in ACTIONS:
        assert report["latency"][kind]["count"] >= 2, kind  # both users, every kind
    # The first save's code was known beforehand; the one after re-draw and hints was loaded back.
    assert all(user["exact_saves"] + user["close_saves"] >= 1 for user in report["users"])
    assert all(user["reload_checks"] >= 1 for user in report["users"])
    first, second = (set(user["codes"]) for user in report["users"])
    assert first and second and first.isdisjoint(second)
    assert report["shared_codes"] == []
    rss = report["rss_mb"]
    assert rss["samples_after_warm_up"] >= 5 and rss["after_warm_up"] > 0 and rss["final"] > 0
    assert rss["min_drift"] <= rss["max_drift"]
    # A minute's median is never above the largest sample; the run passed on it.
    assert rss["window_levels"] and rss["level_drift"] <= min(0.25, rss["max_drift"])


def test_memory_after_warm_up_is_the_median_of_its_last_minute():
    samples = [(float(t), 100.0) for t in range(0, 200, 10)] + [(175.0, 400.0), (200.0, 105.0)]  # warm-up
    samples += [(210.0, 95.0), (220.0, 112.0), (230.0, 80.0)]  # the users act until 225 s
    rss = memory_figures(sorted(samples), warm_up_seconds=200, end_seconds=225, final_mb=99.0)
    # 140-200 s: six samples of 100 MB, the spike and 105 MB; the median ignores the spike.
    assert rss["baseline_samples"] == 8 and rss["after_warm_up"] == 100.0
    # While the users act: 95 and 112 MB; the 80 MB after they stopped is not a drift.
    assert rss["samples_after_warm_up"] == 2 and rss["peak"] == 112.0
    assert abs(rss["max_drift"] - 0.12) < 1e-12 and abs(rss["min_drift"] + 0.05) < 1e-12
    assert abs(rss["final_drift"] + 0.01) < 1e-12


def test_memory_fails_on_a_level_that_grows_not_on_a_sample_that_catches_renders_in_flight():
    warm_up = [(float(t), 100.0) for t in range(0, 121, 10)]  # the baseline: 60-120 s, 7 samples
    first_minute = [(130.0, 100.0), (140.0, 150.0), (150.0, 100.0), (160.0, 100.0), (170.0, 100.0), (180.0, 100.0)]
    second_minute = [(190.0, 108.0), (200.0, 108.0), (210.0, 108.0), (220.0, 200.0), (230.0, 108.0), (240.0, 108.0)]
    last = [(250.0, 300.0)]  # one sample in the last window: too few to be a level
    rss = memory_figures(warm_up + first_minute + second_minute + last, warm_up_seconds=120, end_seconds=250,
                         final_mb=100.0)
    assert rss["baseline_samples"] == 7 and rss["after_warm_up"] == 100.0
    assert rss["window_levels"] == [100.0, 108.0]
    assert abs(rss["level_drift"] - 0.08) < 1e-12  # passes a 10% bound
    assert abs(rss["max_drift"] - 2.0) < 1e-12 and rss["peak"] == 300.0  # reported only
    # The same run with memory that stays 12% higher from the second minute on fails it.
    grown = [(t, 112.0 if mb == 108.0 else mb) for t, mb in second_minute]
    assert abs(memory_figures(warm_up + first_minute + grown, 120, 240, None)["level_drift"] - 0.12) < 1e-12
