"""Models without a global code (`ModelConfig.global_code_dim` = 0, `--no-global-code`): each
level's style is a learned constant, so the code varies the output through its local maps only,
and a model with a global code can be grown into one that renders as it did at the zero
global code."""

from __future__ import annotations

import pytest
import torch

import app
from chimle.checkpoint import load_checkpoint, save_checkpoint
from chimle.cli import build_parser
from chimle.codes import LatentCodes
from chimle.config import ModelConfig, preset
from chimle.directions import global_directions
from chimle.model import TowerImplicitModel
from chimle.search import SearchConfig, chimle_search, chosen_distances, level_targets
from chimle.studio.handlers import StudioSettings
from chimle.studio.security import TrainingPolicy
from chimle.tasks import make_task
from chimle.train import InitOptions, TrainConfig, can_grow, drop_global_code, grow, init_options, train

from .conftest import photo
from .studio_helpers import one_torch_thread
from .studio_helpers import photo as studio_photo
from .test_train_defaults import photo_folders, quick_config  # noqa: F401 (a fixture)

single_thread = pytest.fixture(scope="module")(one_torch_thread)


def _trained_looking(config: ModelConfig) -> TowerImplicitModel:
    """A model whose zero-initialised styles are not zero, as a trained model's are not."""
    torch.manual_seed(0)
    net = TowerImplicitModel(config).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return net


def test_a_model_without_a_global_code_has_no_global_stream_and_describes_itself():
    config = preset("tiny", 1, 2, global_code_dim=0)
    net = TowerImplicitModel(config)
    assert len(net.mappings) == 0 and len(net.constant_styles) == config.num_levels
    assert net.code_shape((32, 32)).global_dim == 0
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert preset("tiny", 1, 2).to_dict()["global_code_dim"] == 8  # other models as before
    with pytest.raises(ValueError, match="cannot both be 0"):
        preset("tiny", 1, 2, global_code_dim=0, local_code_channels=0)
    with pytest.raises(ValueError, match="global_code_dim must be >= 0"):
        preset("tiny", 1, 2, global_code_dim=-1)
    assert global_directions(net, 0).vectors.shape == (0, 0)  # nothing for the studio's sliders


def test_dropping_the_global_code_renders_as_the_model_did_at_the_zero_global_code():
    net = _trained_looking(preset("tiny", 1, 2, semantic_encoder="alexnet", semantic_channels=4, region_styles=3))
    wanted = net.config.replace(global_code_dim=0, region_codes=3)
    assert can_grow(net.config, wanted) and can_grow(net.config, net.config.replace(global_code_dim=0))
    assert not can_grow(net.config, net.config.replace(global_code_dim=4))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    codes = LatentCodes.sample(net.code_shape((32, 32)), 2, torch.Generator().manual_seed(1))
    zero_global = LatentCodes([torch.zeros_like(g) for g in codes.globals], codes.locals)
    without = LatentCodes([g[:, :0] for g in codes.globals], codes.locals)
    for dropped in (drop_global_code(net).eval(), grow(net, wanted).eval()):
        with torch.inference_mode():
            same, source = dropped(x, without)[-1], net(x, zero_global)[-1]
            torch.testing.assert_close(same, source, rtol=0, atol=1e-6)
            # The global code did matter to the source: the drop is not a no-op.
            assert (net(x, codes)[-1] - source).abs().max() > 1e-3
    assert grow(net, wanted).config == wanted


def test_the_region_search_draws_colours_region_by_region_without_a_global_code(lpips_alex):
    task = make_task("colourization")
    net = _trained_looking(preset("tiny", task.in_channels, task.out_channels, semantic_encoder="alexnet",
                                  semantic_channels=4, region_codes=3, global_code_dim=0))
    with torch.no_grad():
        for adain in net.levels[0].adains:
            torch.nn.init.normal_(adain.region_code_affine.weight, std=1.0)
        torch.nn.init.normal_(net.levels[0].region_pool.logits.weight, std=3.0)
    y = torch.cat([photo(name) for name in ("chelsea", "coffee")])
    x = task.degrade(y)
    found = chimle_search(net, task, lpips_alex, x, y, SearchConfig((8, 4), samples_per_region=4),
                          torch.Generator().manual_seed(0))
    assert found.codes.globals[0].shape == (2, 0)
    with torch.inference_mode():
        truth = chosen_distances(net, task, lpips_alex, x, found.codes, level_targets(net, y))
        # Only the local code is left to vary the colours, and it does.
        other = found.codes.with_level(0, local_code=torch.randn_like(found.codes.locals[0]))
        assert (net(x, other)[-1] - net(x, found.codes)[-1]).abs().max() > 1e-3
    torch.testing.assert_close(found.distances, truth, rtol=0, atol=1e-5)


def test_a_run_drops_the_global_code_of_the_model_it_starts_from(photo_folders, tmp_path):  # noqa: F811
    task = make_task("colourization")
    source = tmp_path / "source.safetensors"
    save_checkpoint(source, _trained_looking(preset("tiny", task.in_channels, task.out_channels)), task)
    args = build_parser().parse_args(["train", "--data", "d", "--no-global-code"])
    assert args.global_code is False
    config = quick_config(photo_folders["plain"], init_from=str(source), global_code=False, steps=2)
    run = tmp_path / "run"
    train(config, run, progress=False)
    trained = load_checkpoint(run / "model.safetensors")
    assert trained.net.config.global_code_dim == 0
    options = init_options(run / "model.safetensors")
    assert options == InitOptions("colourization", {}, "tiny", "preset", global_code=False)
    assert "--no-global-code" in options.arguments()
    # Its constant styles started from the source's w at the zero global code, then trained.
    start = drop_global_code(load_checkpoint(source).net)
    assert not torch.equal(trained.net.constant_styles[0], start.constant_styles[0])
    torch.testing.assert_close(trained.net.constant_styles[0], start.constant_styles[0], rtol=0, atol=0.05)
    assert TrainConfig(data="d", global_code=False).model_config(task).global_code_dim == 0


def test_the_studio_shows_no_global_controls_for_a_model_without_a_global_code(tmp_path, single_thread):
    task = make_task("colourization")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    model_path = checkpoints / "no-global.safetensors"
    save_checkpoint(model_path, _trained_looking(preset("tiny", task.in_channels, task.out_channels,
                                                        channels=(8, 8, 8), growth=(8, 8, 8), rrdbs=(1, 1, 1),
                                                        global_code_dim=0)), task, {"step": 0})
    image_path = tmp_path / "input.png"
    studio_photo("astronaut", (64, 64)).save(image_path)
    settings = StudioSettings(checkpoints=checkpoints, runs=tmp_path / "runs", data_root=tmp_path,
                              assets=tmp_path, policy=TrainingPolicy(False, "off"))
    studio = app.build_studio(settings)[1]
    page = studio.explore
    started = studio.start(None, str(model_path), str(image_path), None, 64, 2, 5, False)
    level = page.levels[0]
    assert started[level.tab]["visible"]
    assert not started[level.global_seed]["visible"] and not started[level.global_blend]["visible"]
    assert not started[level.global_heading]["visible"]
    assert not any(started[slider]["visible"] for slider in level.directions)
    # The local code is what is left to steer, and it does.
    before = started[page.state].current.clone()
    # A slow edit (this machine may be busy) first shows its coarse level: the last update is the result.
    edited = list(studio.edit_level(0, started[page.state], True, 0, 0, 0, 0, 0, 0.0, 4, 1.0, 1.0))[-1]
    assert edited[page.status].startswith("Rendered levels 1–3 ")
    assert not torch.equal(started[page.state].current.locals[0], before.locals[0])
