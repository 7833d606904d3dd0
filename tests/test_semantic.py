"""The semantic prior: real ImageNet weights, computed once per image, part of the checkpoint."""

from __future__ import annotations

import pytest
import torch

from chimle.checkpoint import load_checkpoint, save_checkpoint
from chimle.codes import LatentCodes
from chimle.config import ModelConfig, preset
from chimle.model import TowerImplicitModel
from chimle.pipeline import PreparedInput, render
from chimle.search import SearchConfig, chimle_search, cimle_search
from chimle.semantic import AlexNetTrunk, load_trunk
from chimle.tasks import make_task
from tests.conftest import photo


def semantic_model(task_name: str = "colourization", seed: int = 0):
    task = make_task(task_name)
    torch.manual_seed(seed)
    config = preset("tiny", task.in_channels, task.out_channels, semantic_encoder="alexnet")
    return TowerImplicitModel(config).eval(), task


class TrunkCalls:
    """Counts the images the shared frozen trunk encodes while the context is active."""

    def __init__(self) -> None:
        self.images = 0

    def __enter__(self) -> "TrunkCalls":
        def count(module, inputs):
            self.images += inputs[0].shape[0]
        self.handle = load_trunk("cpu").register_forward_pre_hook(count)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def test_trunk_holds_the_committed_imagenet_weights_not_random_ones():
    from safetensors.torch import load_file

    from chimle.perceptual import ALEXNET_BACKBONE_FILE

    committed = load_file(ALEXNET_BACKBONE_FILE)
    trunk = AlexNetTrunk()
    assert torch.equal(trunk.features[0].weight, committed["features.0.weight"])
    assert torch.equal(trunk.features[10].bias, committed["features.10.bias"])
    assert not any(p.requires_grad for p in trunk.parameters())


def test_the_paper_preset_stays_the_papers_model():
    assert preset("paper", 1, 2).semantic_encoder == ""
    assert preset("cpu", 1, 2).semantic_encoder == "alexnet"


def test_config_refuses_an_unknown_encoder():
    with pytest.raises(ValueError, match="semantic_encoder"):
        ModelConfig(semantic_encoder="vgg")


def test_search_encodes_each_image_once_not_once_per_candidate(lpips_alex):
    net, task = semantic_model()
    y = torch.cat([photo("chelsea"), photo("coffee")])
    x = task.degrade(y)
    for search in (lambda: chimle_search(net, task, lpips_alex, x, y, SearchConfig((6, 5)),
                                         torch.Generator().manual_seed(0)),
                   lambda: cimle_search(net, task, lpips_alex, x, y, 7, torch.Generator().manual_seed(0))):
        with TrunkCalls() as calls:
            search()
        # One pass over the two images for the candidates, one for the chosen codes' distances.
        assert calls.images <= 2 * len(y)


def test_an_edit_reuses_the_semantic_maps_and_renders_what_a_full_render_does():
    net, task = semantic_model()
    x = task.degrade(photo("chelsea"))
    prepared = PreparedInput(x, (64, 64), (64, 64))
    codes = LatentCodes.sample(net.code_shape((64, 64)), 3, torch.Generator().manual_seed(0))
    with TrunkCalls() as calls:
        _, first = render(net, task, prepared, codes)
    assert calls.images == 1  # three samples of one photo: encoded once
    g, loc = LatentCodes.sample_level(codes.shape, 1, 3, torch.Generator().manual_seed(1))
    edited = codes.with_level(1, g, loc)
    with TrunkCalls() as calls:
        images, _ = render(net, task, prepared, edited, reuse=first, start_level=1)
    assert calls.images == 0
    full, _ = render(net, task, prepared, edited)
    assert torch.equal(images[-1], full[-1])


def test_the_semantic_maps_steer_the_output():
    """Same code, same lightness statistics, different content: a trained adapter would
    make use of the difference; even at init the prior must reach the output."""
    net, task = semantic_model()
    codes = LatentCodes.sample(net.code_shape((64, 64)), 1, torch.Generator().manual_seed(0))
    x = task.degrade(photo("chelsea"))
    with torch.no_grad():
        context = net.encode(x, codes.shape.local_sizes)
        plain = net.render(x, codes).outputs[-1]
        shuffled = net.render(x, codes, context=[c.flip(-1) for c in context]).outputs[-1]
    assert (plain - shuffled).abs().max() > 1e-3


def test_checkpoint_keeps_the_prior_but_not_the_frozen_trunk(tmp_path):
    net, task = semantic_model()
    save_checkpoint(tmp_path / "m.safetensors", net, task)
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.net.config.semantic_encoder == "alexnet"
    assert not any(name.startswith("features") or ".trunk." in name for name in loaded.net.state_dict())
    codes = LatentCodes.sample(net.code_shape((64, 64)), 2, torch.Generator().manual_seed(0))
    x = task.degrade(photo("coffee")).expand(2, -1, -1, -1)
    with torch.no_grad():
        assert torch.equal(net(x, codes)[-1], loaded.net(x, codes)[-1])


def test_adding_the_prior_to_a_trained_model_keeps_its_pictures(tmp_path):
    from tools.add_semantic_prior import with_semantic_prior

    task = make_task("jpeg", quality=10)
    torch.manual_seed(0)
    old = TowerImplicitModel(preset("tiny", 3, 3)).eval()
    grown = with_semantic_prior(old).eval()
    assert grown.config.semantic_encoder == "alexnet"
    x = task.degrade(photo("rocket"))
    codes = LatentCodes.sample(old.code_shape((64, 64)), 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (grown(x, codes)[-1] - old(x, codes)[-1]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="already has"):
        with_semantic_prior(grown)
