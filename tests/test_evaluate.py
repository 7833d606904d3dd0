"""`evaluate_checkpoint` and the `eval` command on a tiny JPEG model and two real photos."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from chimle import evaluate
from chimle.checkpoint import save_checkpoint
from chimle.evaluate import evaluate_checkpoint, markdown_table, register, run
from chimle.images import save_png
from chimle.inception import INCEPTION_INSTALL_HINT, InceptionWeightsError, default_inception_path

from .conftest import photo, tiny_model

INSTALLED = default_inception_path()
needs_inception = pytest.mark.skipif(INSTALLED is None or not INSTALLED.is_file(),
                                     reason=f"TF-FID Inception not installed ({INCEPTION_INSTALL_HINT})")
SMALL = dict(num_samples=3, crop_size=64, ivo_steps=2, ivo_init_samples=1, progress=False)


@pytest.fixture
def held_out(tmp_path):
    """Two real photos, 64x64, in a folder."""
    folder = tmp_path / "held_out"
    for name in ("chelsea", "coffee"):
        save_png(folder / f"{name}.png", photo(name, 64))
    return folder


def _checkpoint(tmp_path, seed: int):
    net, task = tiny_model("jpeg", seed=seed, quality=5)
    path = tmp_path / f"model-{seed}.safetensors"
    save_checkpoint(path, net, task, {"step": seed})
    return path


@needs_inception
def test_report_has_every_metric_in_range(tmp_path, held_out):
    path = _checkpoint(tmp_path, seed=0)
    report = evaluate_checkpoint(path, held_out, sigma=0.2, seed=3, **SMALL)
    json.dumps(report, allow_nan=False)  # strict JSON: no inf or NaN anywhere
    assert report["format"] == "chimle-eval/1" and report["checkpoint"] == str(path)
    assert report["task"] == {"name": "jpeg", "quality": 5}
    assert report["checkpoint_metadata"]["step"] == 0
    assert report["options"]["sigma"] == 0.2
    assert report["options"]["features"] == "TF-FID Inception-v3 pool3"
    assert {k: report["options"][k] for k in ("num_samples", "crop_size", "ivo_steps", "seed")} == \
        {"num_samples": 3, "crop_size": 64, "ivo_steps": 2, "seed": 3}
    assert report["num_images"] == 2
    assert [entry["file"] for entry in report["per_image"]] == ["chelsea.png", "coffee.png"]
    assert set(report["per_image"][0]) == {"file", "baseline_lpips", "baseline_psnr", "lpips_diversity", "fwv",
                                           "best_lpips", "mean_lpips", "best_psnr", "mean_psnr", "colourfulness", "true_colourfulness",
                                           "tint_share", "ivo_mse", "ivo_lpips", "ivo_converged"}
    summary = report["summary"]
    assert set(summary) == {"baseline_lpips", "baseline_psnr", "lpips_diversity", "fwv", "fwv_sigma", "best_lpips",
                            "mean_lpips", "best_psnr", "mean_psnr", "colourfulness", "true_colourfulness", "tint_share", "ivo_mse",
                            "ivo_lpips", "ivo_converged_rate", "fid", "kid_mean", "kid_std",
                            "kid_subset_size", "prd_f8", "prd_f1_8", "prd_num_clusters"}
    for name in ("baseline_lpips", "lpips_diversity", "fwv", "best_lpips", "mean_lpips", "ivo_lpips"):
        assert 0 <= summary[name] < 2, name
    assert summary["best_lpips"] <= summary["mean_lpips"]
    assert 0 < summary["best_psnr"] < 60 and 0 <= summary["ivo_mse"] <= 4
    assert 0 < summary["mean_psnr"] < 60 and 15 < summary["baseline_psnr"] < 60  # a JPEG at quality 5
    assert summary["ivo_converged_rate"] in (0, 0.5, 1) and summary["fwv_sigma"] == 0.2
    assert summary["fid"] >= 0 and math.isfinite(summary["fid"])
    assert summary["kid_subset_size"] == 2 and summary["kid_std"] >= 0
    assert 0 <= summary["prd_f8"] <= 1 and 0 <= summary["prd_f1_8"] <= 1
    assert any("biased upwards" in note for note in report["notes"])
    assert summary["true_colourfulness"] > 5  # real colour photos
    assert summary["tint_share"] is None or 0 <= summary["tint_share"] <= 1


def test_whole_photos_are_evaluated_at_their_own_size(tmp_path):
    folder = tmp_path / "wide"
    for name in ("chelsea", "coffee"):
        save_png(folder / f"{name}.png", photo(name, 100)[..., :68, :])  # 68 x 100: not a crop's shape
    path = _checkpoint(tmp_path, seed=0)
    options = dict(SMALL, crop_size=None, max_side=0, feature_extractor=mean_colour)
    report = evaluate_checkpoint(path, folder, **options)
    assert report["options"]["crop_size"] is None and report["options"]["max_side"] == 0
    crops = evaluate_checkpoint(path, folder, **dict(options, crop_size=64))
    assert report["per_image"][0]["baseline_lpips"] != crops["per_image"][0]["baseline_lpips"]


def mean_colour(images):
    """A cheap stand-in feature extractor: (N, 3) mean colours."""
    return images.mean((2, 3))


def test_same_seed_same_draws_and_fewer_than_two_photos_skip_fid(tmp_path, held_out):
    path = _checkpoint(tmp_path, seed=0)
    options = dict(SMALL, seed=5, feature_extractor=mean_colour)
    both = evaluate_checkpoint(path, held_out, **options)
    assert both["options"]["features"] == "custom" and both["summary"]["fid"] >= 0
    one = evaluate_checkpoint(path, held_out, max_images=1, **options)
    # Codes are drawn photo by photo from one seeded generator: the first photo's samples,
    # metrics and IvO are the same whether or not a second photo follows.
    assert one["per_image"] == both["per_image"][:1]
    assert one["summary"]["fid"] is None and any("at least 2 photos" in note for note in one["notes"])


def test_crops_too_small_for_the_model_are_refused_before_any_work(tmp_path, held_out):
    path = _checkpoint(tmp_path, seed=0)
    # Two levels: a 32 px crop leaves 16 px at the coarse level, below LPIPS's 32.
    with pytest.raises(ValueError, match="crop size 32 is too small.*at least 64"):
        evaluate_checkpoint(path, held_out, crop_size=32, feature_extractor=mean_colour, progress=False)
    with pytest.raises(ValueError, match="crop size 66 does not fit this model"):
        evaluate_checkpoint(path, held_out, crop_size=66, feature_extractor=mean_colour, progress=False)


def _missing_inception(device="cpu"):
    raise InceptionWeightsError(f"the TF-FID Inception weights are missing; install them with "
                                f"`{INCEPTION_INSTALL_HINT}`")


def test_eval_command_compares_two_checkpoints_without_inception(tmp_path, held_out, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "load_inception_features", _missing_inception)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    paths = [_checkpoint(tmp_path, seed) for seed in (0, 1)]
    out, table = tmp_path / "reports" / "eval.json", tmp_path / "eval.md"
    args = parser.parse_args(["eval", "--checkpoint", *map(str, paths), "--data", str(held_out),
                              "--num-samples", "2", "--crop-size", "64", "--ivo-steps", "1",
                              "--ivo-init-samples", "1", "--max-images", "1", "--out", str(out),
                              "--markdown", str(table), "--no-progress"])
    assert run(args) == 0
    reports = json.loads(out.read_text())["reports"]
    assert [report["checkpoint"] for report in reports] == list(map(str, paths))
    for report in reports:
        assert report["summary"]["fid"] is None and report["summary"]["prd_f8"] is None
        assert report["options"]["features"] is None
        assert any(INCEPTION_INSTALL_HINT in note for note in report["notes"])
        assert report["options"]["max_images"] == 1 and report["num_images"] == 1
    # Different weights, same codes and inputs: different samples.
    assert reports[0]["per_image"][0]["best_lpips"] != reports[1]["per_image"][0]["best_lpips"]
    rows = [line for line in markdown_table(reports).splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header and one row per checkpoint
    assert rows[1].startswith(f"| {paths[0]} | jpeg | 1×2 | n/a |")
    document = table.read_text()
    assert markdown_table(reports) in document and INCEPTION_INSTALL_HINT in document
    assert markdown_table(reports) in capsys.readouterr().out
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes left nothing behind


def test_a_model_is_evaluated_under_another_degradation_of_its_task(tmp_path, held_out):
    path = _checkpoint(tmp_path, seed=0)  # trained for quality 5
    own = evaluate_checkpoint(path, held_out, **SMALL, feature_extractor=mean_colour)
    at_90 = evaluate_checkpoint(path, held_out, **SMALL, feature_extractor=mean_colour, task_params={"quality": 90})
    assert at_90["task"] == {"name": "jpeg", "quality": 90} and at_90["model_task"] == own["task"]
    # A quality-90 JPEG is much nearer its photo than a quality-5 one.
    assert at_90["summary"]["baseline_lpips"] < 0.5 * own["summary"]["baseline_lpips"]
    assert any("quality\": 90" in note for note in at_90["notes"])


def test_mean_psnr_is_the_average_of_each_samples_psnr(lpips_alex):
    observed = torch.zeros(1, 3, 32, 32)
    # Offsets of 0.1 and 0.2 in [-1, 1] are 0.05 and 0.1 in [0, 1]: PSNR 26.02 and 20.00 dB.
    samples = torch.cat([observed + 0.1, observed + 0.2])
    metrics = evaluate._sample_metrics(samples, observed, lpips_alex, sigma=0.1)
    assert metrics["mean_psnr"] == pytest.approx((26.0206 + 20.0) / 2, abs=1e-3)
    assert metrics["best_psnr"] == pytest.approx(26.0206, abs=1e-3)  # the closer sample is also LPIPS's best
