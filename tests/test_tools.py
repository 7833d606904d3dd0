"""The small report tools under tools/."""

from __future__ import annotations

import pytest
import torch

from tools.training_curves import window_means


def _record(step: int, searched: float, loss: float) -> dict:
    return {"step": step, "loss_per_level": [9.0, loss], "search_distance_per_level": [9.0, searched]}


def test_window_means_average_the_finest_level_per_window_of_steps():
    metrics = [_record(10, 0.4, 0.3), _record(20, 0.2, 0.1), _record(30, 0.5, 0.6), {"step": 25, "event": "x"}]
    means = window_means(metrics, window=20)
    assert list(means) == [20, 40]  # steps 1-20 and 21-40; records without losses are skipped
    assert means[20] == pytest.approx((0.3, 0.2))
    assert means[40] == pytest.approx((0.5, 0.6))


def test_a_run_that_searches_nothing_has_no_searched_distance():
    metrics = [{"step": 5, "loss_per_level": [0.2], "search_distance_per_level": [0.0]},
               {"step": 6, "loss_per_level": [0.4], "search_distance_per_level": []}]
    assert window_means(metrics, window=10) == {10: (None, pytest.approx(0.3))}


def test_a_cards_command_trains_the_shipped_step_count_not_a_time_budget():
    from chimle.train import TrainConfig
    from tools.model_card import reproduce_command

    train = TrainConfig(data="data/demo/train", task="jpeg", task_params={"quality": 1}, steps=100000,
                        time_budget_minutes=22.0, lr=0.001).to_dict()
    command = reproduce_command(train, steps=265)
    assert "--steps 265" in command and "--time-budget-minutes" not in command
    assert "--task jpeg" in command and """--task-params '{"quality": 1}'""" in command
    assert "--lr 0.001" in command and command.endswith("--out runs/NAME")
    assert "--semantic-prior" not in command  # today's default: the preset's prior


def test_a_run_from_before_the_semantic_prior_reproduces_without_one():
    from chimle.train import TrainConfig
    from tools.model_card import reproduce_command

    train = TrainConfig(data="data/demo/train", task="jpeg").to_dict()
    del train["semantic_prior"]  # config.json of a run that predates the option
    assert "--semantic-prior none" in reproduce_command(train, steps=10)


def test_half_precision_measures_the_rounding_and_converts_to_a_file_that_renders_the_same(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from chimle.checkpoint import load_checkpoint, save_checkpoint
    from tests.conftest import photo, tiny_model
    from tools.half_precision import compare, round_to_half

    net, task = tiny_model()
    # Scale the weights so that float16 rounding moves the pictures measurably.
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(1.0 + 2.0 ** -12)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, net, task, {"step": 7})
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for name in ("chelsea", "coffee"):
        pixels = ((photo(name, size=96)[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(pixels).save(held_out / f"{name}.png")

    result = compare(str(path), str(held_out), num_samples=2, crop_size=64, seed=0)
    assert result["photos"] == 2 and 0 < result["max_level_difference"] <= 255
    assert 0 < result["mean_level_difference"] < 5 and result["max_lpips"] >= 0

    rounded = round_to_half(load_checkpoint(path).net)
    subprocess.run([sys.executable, "-m", "tools.half_precision", "--checkpoint", str(path), "--data", str(held_out),
                    "--num-samples", "1", "--crop-size", "64", "--convert"], check=True, capture_output=True)
    converted = load_checkpoint(path)
    assert path.stat().st_size < 0.6 * result["bytes_float32"]
    assert converted.metadata["step"] == 7
    for name, tensor in rounded.state_dict().items():
        assert torch.equal(converted.net.state_dict()[name], tensor), name


def test_a_report_under_another_degradation_says_so_and_its_command_repeats_it():
    from tools.model_card import figures_section

    summary = {"baseline_lpips": 0.2, "best_lpips": 0.1, "mean_lpips": 0.15, "lpips_diversity": 0.05, "fwv": 0.01,
               "fwv_sigma": 0.1, "best_psnr": 30.0, "mean_psnr": 29.5, "baseline_psnr": 28.0, "ivo_mse": 0.01}
    report = {"checkpoint": "m.safetensors", "num_images": 2, "summary": summary,
              "per_image": [{"mean_lpips": 0.15, "baseline_lpips": 0.2}, {"mean_lpips": 0.25, "baseline_lpips": 0.2}],
              "options": {"data": "live1", "crop_size": 256, "max_side": 0, "num_samples": 16, "seed": 0,
                          "ivo_steps": 0, "ivo_init_samples": 16},
              "task": {"name": "jpeg", "quality": 20}, "model_task": {"name": "jpeg", "quality": 5, "max_quality": 40}}
    text = "\n".join(figures_section(report, "jpeg"))
    assert 'inputs degraded as `{"name": "jpeg", "quality": 20}`' in text
    assert "--task-params '{\"quality\": 20}'" in text and "| 29.50 / 28.00 |" in text
    assert "1 of 2" in text
    report["task"] = report["model_task"]
    assert "degraded as" not in "\n".join(figures_section(report, "jpeg"))


def test_the_jpeg_table_orders_qualities_and_refuses_a_blind_report():
    from tools.jpeg_table import jpeg_table

    def report(quality, psnr):
        summary = {"baseline_psnr": psnr - 1, "baseline_lpips": 0.3, "mean_psnr": psnr, "mean_lpips": 0.2,
                   "best_psnr": psnr + 0.5, "best_lpips": 0.15}
        return {"checkpoint": "m", "num_images": 29, "summary": summary, "task": {"name": "jpeg", "quality": quality}}

    rows = jpeg_table([report(30, 31.0), report(10, 27.0)]).splitlines()
    assert rows[2].startswith("| 10 | 29 | 26.00 / 0.3000 | 27.00 / 0.2000 | 27.50 / 0.1500 | 25.69 / 27.77 |")
    assert rows[3].startswith("| 30 |")
    blind = report(20, 29.0) | {"task": {"name": "jpeg", "quality": 5, "max_quality": 40}}
    with pytest.raises(ValueError, match="one JPEG quality"):
        jpeg_table([blind])
