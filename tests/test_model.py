"""The Tower Implicit Model: presets, shapes, partial and incremental rendering."""

from __future__ import annotations

import pytest
import torch

from chimle.codes import LatentCodes
from chimle.config import PRESETS, ModelConfig, preset
from chimle.imageops import resize
from chimle.model import AdaIN, TowerImplicitModel, count_parameters
from chimle.tasks import TASK_NAMES, make_task

from .conftest import tiny_model


def _codes(net, size, batch=2, seed=0):
    return LatentCodes.sample(net.code_shape(size), batch, torch.Generator().manual_seed(seed))


def test_paper_preset_has_the_authors_size():
    # The authors' size, about 210 M parameters (docs/method.md#model-sizes-and-presets). Counted, never run.
    net = TowerImplicitModel(preset("paper", 1, 2))
    assert abs(count_parameters(net) - 210e6) / 210e6 < 0.10
    assert net.num_levels == 4


def test_gpu_preset_fits_the_shipped_size_limit_in_float32():
    # A checkpoint ships at most 25 MB (issue 4); the gpu preset is sized to stay in float32.
    net = TowerImplicitModel(preset("gpu", 1, 2))
    assert 2 * count_parameters(TowerImplicitModel(preset("cpu", 1, 2))) <= count_parameters(net)
    assert 4 * count_parameters(net) <= 25 * 2 ** 20


@pytest.mark.parametrize("name", ["tiny", "cpu", "gpu"])
@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_shapes_per_level_for_every_task_and_preset(name, task_name):
    params = {"factor": 2 ** len(PRESETS[name].values["channels"])} if task_name == "super_resolution" else {}
    task = make_task(task_name, **params)
    net = TowerImplicitModel(preset(name, task.in_channels, task.out_channels)).eval()
    task.check_levels(net.num_levels)
    input_size = (8, 8) if task_name == "super_resolution" else (64, 64)
    x = torch.zeros(2, task.in_channels, *input_size)
    output_size = task.output_size(input_size, net.num_levels)
    with torch.inference_mode():
        outputs = net(x, _codes(net, output_size))
    expected = task.level_output_sizes(input_size, net.num_levels)
    assert [tuple(o.shape[-2:]) for o in outputs] == expected
    assert all(o.shape[:2] == (2, task.out_channels) for o in outputs)
    assert expected[-1] == output_size
    assert all(o.abs().max() <= 1 for o in outputs)  # tanh heads


def test_any_number_of_levels():
    for levels in (1, 2, 4):
        config = ModelConfig(channels=(4,) * levels, growth=(4,) * levels, rrdbs=(1,) * levels,
                             global_code_dim=4, mapping_width=8, mapping_layers=1)
        net = TowerImplicitModel(config)
        outputs = net(torch.zeros(1, 3, 64, 64), _codes(net, (64, 64), batch=1))
        assert [o.shape[-1] for o in outputs] == [64 // 2 ** (levels - 1 - l) for l in range(levels)]


@pytest.mark.parametrize("bad, message", [
    (dict(channels=()), "at least one level"),
    (dict(growth=(8,)), "growth has 1 entries"),
    (dict(channels=(8, 0)), "channels[level 2]"),
    (dict(mapping_width=0), "mapping_width"),
    (dict(rrdbs=(1, -1)), "rrdbs[level 2]"),
    (dict(in_channels=1, out_channels=2, input_skip=True), "as many input as output channels"),
])
def test_invalid_configs_say_what_is_wrong(bad, message):
    values = dict(channels=(8, 8), growth=(8, 8), rrdbs=(1, 1)) | bad
    with pytest.raises(ValueError) as error:
        ModelConfig(**values)
    assert message in str(error.value)


def test_unknown_preset_and_config_key():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge", 3, 3)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"chanels": (8,)})


def test_sizes_that_do_not_fit_are_rejected():
    net, _ = tiny_model()
    with pytest.raises(ValueError, match="multiple of 2\\^levels = 4"):
        net.code_shape((66, 64))


def test_fully_convolutional_on_other_sizes():
    net, _ = tiny_model()
    for size in [(32, 32), (64, 96), (128, 64)]:
        outputs = net(torch.zeros(1, 1, *size), _codes(net, size, batch=1))
        assert tuple(outputs[-1].shape[-2:]) == size


def test_partial_evaluation_equals_the_full_pass_at_each_level():
    net, _ = tiny_model()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    codes = _codes(net, (64, 64))
    with torch.inference_mode():
        full = net(x, codes)
        for level in range(1, net.num_levels + 1):
            partial = net(x, codes, upto=level)
            assert len(partial) == level
            assert torch.equal(partial[-1], full[level - 1])


def test_incremental_rendering_equals_a_full_render():
    net, task = tiny_model("jpeg")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    codes = _codes(net, (64, 64), seed=0)
    other = _codes(net, (64, 64), seed=7)
    with torch.inference_mode():
        before = net.render(x, codes)
        for level in range(net.num_levels):
            edited = codes.replace_level(level, other)
            incremental = net.render(x, edited, reuse=before, start_level=level)
            full = net.render(x, edited)
            for a, b in zip(incremental.outputs, full.outputs):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_editing_a_level_leaves_coarser_levels_bit_identical_and_changes_finer_ones():
    net, _ = tiny_model()
    # A trained-looking global stream: random AdaIN weights, so global codes matter.
    torch.manual_seed(3)
    for level in net.levels:
        for adain in level.adains:
            torch.nn.init.normal_(adain.affine.weight, std=0.5)
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    codes = _codes(net, (64, 64), batch=1, seed=0)
    other = _codes(net, (64, 64), batch=1, seed=9)
    with torch.inference_mode():
        base = net(x, codes)
        for level in range(net.num_levels):
            for part in ("global", "local"):
                edited = net(x, codes.replace_level(level, other, part))
                for coarser in range(level):
                    assert torch.equal(edited[coarser], base[coarser])
                for finer in range(level, net.num_levels):
                    change = (edited[finer] - base[finer]).abs().mean().item()
                    assert change > 1e-3, (level, part, finer, change)


def test_input_and_code_mismatches_are_clear():
    net, _ = tiny_model()
    codes = _codes(net, (64, 64))
    with pytest.raises(ValueError, match="expected input \\(B, 1, H, W\\)"):
        net(torch.zeros(2, 3, 64, 64), codes)
    with pytest.raises(ValueError, match="input batch 1 != code batch 2"):
        net(torch.zeros(1, 1, 64, 64), codes)
    with pytest.raises(ValueError, match="upto must be in 1..2"):
        net(torch.zeros(2, 1, 64, 64), codes, upto=3)
    other = TowerImplicitModel(preset("tiny", 1, 2, global_code_dim=5))
    with pytest.raises(ValueError, match="do not fit this model"):
        other(torch.zeros(2, 1, 64, 64), codes)


def test_with_the_input_skip_each_level_outputs_its_input_plus_the_heads_correction():
    plain_config, skip_config = preset("tiny", 3, 3), preset("tiny", 3, 3, input_skip=True)
    torch.manual_seed(0)
    skip = TowerImplicitModel(skip_config).eval()
    plain = TowerImplicitModel(plain_config).eval()
    plain.load_state_dict(skip.state_dict())  # the same weights, without the skip
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    codes = _codes(skip, (32, 48))
    with torch.inference_mode():
        with_skip, corrections = skip(x, codes), plain(x, codes)
    for output, correction in zip(with_skip, corrections):
        torch.testing.assert_close(output, resize(x, tuple(output.shape[2:])) + correction, rtol=0, atol=1e-6)
        assert 0 < correction.abs().mean() < 0.05  # the heads start small: near the identity
    # A model without the skip is described as before the option existed (its fingerprint
    # and saved codes stay valid); one with it says so.
    assert "input_skip" not in plain_config.to_dict() and skip_config.to_dict()["input_skip"] is True
    assert ModelConfig.from_dict(skip_config.to_dict()) == skip_config
    assert ModelConfig.from_dict(plain_config.to_dict()) == plain_config


# -- region styles (ModelConfig.region_styles) ------------------------------------------------


def test_region_styles_need_the_semantic_prior_and_leave_other_models_descriptions_as_they_were():
    with pytest.raises(ValueError, match="needs a semantic encoder"):
        preset("tiny", 1, 2, region_styles=4)
    with pytest.raises(ValueError, match="region_styles must be >= 0"):
        preset("tiny", 1, 2, semantic_encoder="alexnet", region_styles=-1)
    plain = preset("tiny", 1, 2, semantic_encoder="alexnet")
    assert "region_styles" not in plain.to_dict()  # fingerprints of existing models stay
    regions = plain.replace(region_styles=4)
    assert ModelConfig.from_dict(regions.to_dict()) == regions


def test_a_region_style_moves_only_its_region():
    """With two regions, left and right half of the semantic map, a code that styles only
    the left region changes only the left half: what one style per image cannot do."""
    torch.manual_seed(0)
    adain = AdaIN(channels=3, w_dim=4, regions=2, semantic_channels=1)
    with torch.no_grad():
        adain.region_logits.weight.copy_(torch.tensor([[1.0], [-1.0]])[..., None, None] * 50)
        adain.region_logits.bias.zero_()
        adain.region_affine.weight.zero_()
        adain.region_affine.weight[0:3].normal_()  # gamma of region 0 (rows: gamma/beta, region, channel)
    semantic = torch.cat([torch.ones(1, 1, 8, 4), -torch.ones(1, 1, 8, 4)], 3)  # left: region 0
    weights = adain.region_weights(semantic)
    torch.testing.assert_close(weights.sum(1), torch.ones(1, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    one, other = adain(x, torch.randn(2, 4), semantic), adain(x, torch.randn(2, 4), semantic)
    assert (one[..., :4] - other[..., :4]).abs().mean() > 0.1
    torch.testing.assert_close(one[..., 4:], other[..., 4:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs the semantic map"):
        adain(x, torch.randn(2, 4))


def test_growing_region_styles_keeps_the_models_renders_until_it_trains():
    from chimle.train import grow_regions

    task = make_task("colourization")
    net = TowerImplicitModel(preset("tiny", task.in_channels, task.out_channels, semantic_encoder="alexnet",
                                    semantic_channels=4)).eval()
    for level in net.levels:
        for adain in level.adains:
            torch.nn.init.normal_(adain.affine.weight, std=0.5)
    grown = grow_regions(net, net.config.replace(region_styles=3)).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    codes = LatentCodes.sample(net.code_shape((32, 32)), 2, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(grown(x, codes)[-1], net(x, codes)[-1])
    with torch.no_grad():
        grown.levels[0].adains[0].region_affine.weight.normal_()
    with torch.inference_mode():
        assert not torch.equal(grown(x, codes)[-1], net(x, codes)[-1])
