"""Defaults that work for every preset and task, and training that continues a model (--init-from)."""

from __future__ import annotations

import dataclasses

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from chimle.checkpoint import load_checkpoint, save_checkpoint
from chimle.config import PRESETS, preset
from chimle.model import TowerImplicitModel
from chimle.runs import RunPaths, read_validation
from chimle.tasks import TASK_NAMES, make_task
from chimle.train import InitOptions, TrainConfig, _build_model, default_samples_per_level, init_options, train

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory) -> dict[str, Path]:
    """Real photos (scikit-image) at 200 px: a plain folder, and input/ target/ pairs."""
    from skimage import data

    root = tmp_path_factory.mktemp("defaults")
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB").resize((200, 200))
        (root / "plain").mkdir(exist_ok=True)
        image.save(root / "plain" / f"{name}.png")
        for side, picture in (("input", image.point(lambda v: v // 4)), ("target", image)):
            (root / "paired" / side).mkdir(parents=True, exist_ok=True)
            picture.save(root / "paired" / side / f"{name}.png")
    return {"plain": root / "plain", "paired": root / "paired"}


@pytest.mark.parametrize("preset_name", [name for name in PRESETS if name != "paper"])
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_preset_trains_on_every_task_with_the_defaults(preset_name, task, photo_folders, tmp_path):
    data = photo_folders["paired" if task == "night_to_day" else "plain"]
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "chimle", "train", "--task", task, "--data", str(data),
                             "--preset", preset_name, "--out", str(run), "--steps", "1", "--no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    model = load_checkpoint(run / "model.safetensors")
    assert model.net.num_levels == len(PRESETS[preset_name].values["channels"])
    assert json.loads((run / "status.json").read_text())["step"] == 1


def test_the_paper_preset_gets_a_search_budget_for_its_four_levels():
    config = TrainConfig(preset="paper", data="unused")
    task = config.build_task()
    model_config = config.model_config(task)
    assert model_config.num_levels == 4
    search = config.search_config(model_config.num_levels)
    assert len(search.samples_per_level) == 4
    sr = TrainConfig(preset="paper", task="super_resolution", data="unused").build_task()
    assert sr.factor == 16  # 2^levels: the paper's x16


def test_default_budget_fits_any_depth():
    assert default_samples_per_level(3) == (12, 6, 4)
    assert default_samples_per_level(2) == (12, 6)
    assert default_samples_per_level(5) == (12, 6, 4, 4, 4)
    assert default_samples_per_level(1) == (12,)


def quick_config(data: Path, **overrides) -> TrainConfig:
    values = dict(task="colourization", data=str(data), preset="tiny", crop_size=64, pool_size=4,
                  steps_per_pool=2, batch_size=2, steps=2, held_out_fraction=0.0, checkpoint_every=1,
                  sample_every=100, max_side=160, lr=1e-3)
    values.update(overrides)
    return TrainConfig(**values)


def test_init_from_starts_from_the_models_weights_and_records_the_lineage(photo_folders, tmp_path):
    first = tmp_path / "first"
    train(quick_config(photo_folders["plain"]), first, progress=False)
    source = load_checkpoint(first / "model.safetensors")

    config = quick_config(photo_folders["plain"], init_from=str(first / "model.safetensors"), steps=3, seed=1)
    net, lineage = _build_model(config, config.build_task())
    for name, tensor in source.net.state_dict().items():
        assert torch.equal(net.state_dict()[name], tensor), name
    assert [leg["steps"] for leg in lineage] == [2]

    second = tmp_path / "second"
    train(config, second, progress=False)
    final = load_checkpoint(second / "model.safetensors")
    legs = final.metadata["lineage"]
    assert [leg["steps"] for leg in legs] == [2, 3]
    assert legs[1]["options"]["init_from"] == str(first / "model.safetensors")
    assert all(leg["train_seconds"] > 0 for leg in legs)
    assert json.loads((second / "config.json").read_text())["lineage_before"] == lineage
    assert not torch.equal(final.net.state_dict()["levels.0.head.bias"], source.net.state_dict()["levels.0.head.bias"])

    # Validation: the starting model's figure once, before the first step, then the run's own.
    first_figures, second_figures = read_validation(RunPaths(first)), read_validation(RunPaths(second))
    assert [r["step"] for r in first_figures] == [2]  # sample_every 100: the last step's grid only
    assert [r["step"] for r in second_figures] == [0, 3]
    assert second_figures[0]["start_model"] == str(first / "model.safetensors")
    assert "start_model" not in second_figures[1] and (second / "samples" / "step-0000000.png").is_file()
    assert all(0 < r["best_lpips"] < 2 and (r["samples"], r["crops"]) == (4, 4) for r in second_figures)
    # The same routine: with the first run's seed (its crops and codes), the starting figure is the
    # figure the first run gave its final weights.
    again = tmp_path / "again"
    train(quick_config(photo_folders["plain"], init_from=str(first / "model.safetensors"), steps=1), again,
          progress=False)
    assert read_validation(RunPaths(again))[0]["best_lpips"] == pytest.approx(first_figures[-1]["best_lpips"],
                                                                              abs=1e-6)


def test_init_options_name_the_preset_and_semantic_prior_that_build_a_model(photo_folders, tmp_path):
    task = make_task("jpeg", quality=3)
    path = tmp_path / "jpeg.safetensors"
    save_checkpoint(path, TowerImplicitModel(preset("tiny", task.in_channels, task.out_channels,
                                                    semantic_encoder="alexnet")), task)
    options = init_options(path)
    assert options == InitOptions("jpeg", {"quality": 3}, "tiny", "alexnet")
    assert options.arguments() == ["--task", "jpeg", "--preset", "tiny", "--semantic-prior", "alexnet",
                                   "--task-params", '{"quality": 3}']
    config = quick_config(photo_folders["plain"], init_from=str(path), task=options.task,
                          task_params=options.task_params, preset=options.preset,
                          semantic_prior=options.semantic_prior)
    _build_model(config, config.build_task())  # passes the trainer's checks
    three_levels = preset("tiny", 1, 2, channels=(8, 8, 8), growth=(8, 8, 8), rrdbs=(1, 1, 1))
    save_checkpoint(tmp_path / "odd.safetensors", TowerImplicitModel(three_levels), make_task("colourization"))
    with pytest.raises(ValueError, match="no preset builds"):
        init_options(tmp_path / "odd.safetensors")
    # A model with the input skip: the options carry it, and a run without it is refused.
    skip_path = tmp_path / "skip.safetensors"
    save_checkpoint(skip_path, TowerImplicitModel(preset("tiny", 3, 3, input_skip=True)), task)
    options = init_options(skip_path)
    assert options.input_skip and "--input-skip" in options.arguments()
    config = quick_config(photo_folders["plain"], init_from=str(skip_path), task="jpeg",
                          task_params={"quality": 3}, preset="tiny", semantic_prior="none", input_skip=True)
    _build_model(config, config.build_task())
    # Another quality of the same task starts from the weights (blind JPEG to quality 1).
    quality_one = dataclasses.replace(config, task_params={"quality": 1})
    net, _ = _build_model(quality_one, quality_one.build_task())
    skip_weights = load_checkpoint(skip_path).net.state_dict()
    assert all(torch.equal(net.state_dict()[name], tensor) for name, tensor in skip_weights.items())
    with pytest.raises(ValueError, match="input_skip"):
        without = dataclasses.replace(config, input_skip=False)
        _build_model(without, without.build_task())


def test_a_run_from_a_model_without_region_styles_grows_them_and_its_model_carries_them(photo_folders, tmp_path):
    first = tmp_path / "first"
    train(quick_config(photo_folders["plain"], semantic_prior="alexnet"), first, progress=False)
    source = load_checkpoint(first / "model.safetensors").net
    config = quick_config(photo_folders["plain"], semantic_prior="alexnet", region_styles=3,
                          init_from=str(first / "model.safetensors"))
    net, lineage = _build_model(config, config.build_task())
    assert net.config.region_styles == 3 and [leg["steps"] for leg in lineage] == [2]
    assert all(torch.equal(net.state_dict()[name], tensor) for name, tensor in source.state_dict().items())
    second = tmp_path / "second"
    train(config, second, progress=False)
    options = init_options(second / "model.safetensors")
    assert options.region_styles == 3 and options.arguments()[-2:] == ["--region-styles", "3"]
    # Its own continuation needs the option: a run without it would drop the region styles.
    without = dataclasses.replace(config, init_from=str(second / "model.safetensors"), region_styles=0)
    with pytest.raises(ValueError, match="region_styles"):
        _build_model(without, without.build_task())


def test_init_from_refuses_a_model_of_other_sizes_or_another_task(photo_folders, tmp_path):
    task = make_task("colourization")
    path = tmp_path / "cpu.safetensors"
    save_checkpoint(path, TowerImplicitModel(preset("tiny", 1, 2, semantic_encoder="alexnet")), task)
    with pytest.raises(ValueError, match="semantic_encoder"):
        _build_model(quick_config(photo_folders["plain"], init_from=str(path)), task)
    jpeg = quick_config(photo_folders["plain"], init_from=str(path), task="jpeg")
    with pytest.raises(ValueError, match="colourization"):
        _build_model(jpeg, jpeg.build_task())


def test_rejection_thresholds_per_level_pass_from_the_command_line_to_the_search_and_back_from_json():
    from chimle.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--rejection-threshold", "0.03", "0.07", "0.08"])
    config = TrainConfig(data="d", rejection_threshold=args.rejection_threshold)
    assert config.search_config(3).rejection_threshold == (0.03, 0.07, 0.08)
    # config.json holds a list; the run it resumes searches with the same thresholds.
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.search_config(3).threshold_of(2) == 0.08
    assert TrainConfig(data="d", rejection_threshold=[0.05]).search_config(3).threshold_of(0) == 0.05
    with pytest.raises(ValueError, match="one per level"):
        config.search_config(2)
    with pytest.raises(ValueError, match="cIMLE"):
        TrainConfig(data="d", method="cimle", rejection_threshold=(0.03, 0.07, 0.08))
