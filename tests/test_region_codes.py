"""Region codes (`ModelConfig.region_codes`): the coarsest local code divided by the photo's
objects, and the search that chooses it region by region."""

from __future__ import annotations

import pytest
import torch

from chimle.codes import LatentCodes
from chimle.config import ModelConfig, preset
from chimle.model import AdaIN, RegionPool, TowerImplicitModel
from chimle.search import SearchConfig, chimle_search, chosen_distances, level_targets
from chimle.tasks import make_task
from chimle.train import TrainConfig, can_grow, grow_regions

from .conftest import photo


def _halves_pool(code_channels: int = 2) -> tuple[RegionPool, torch.Tensor]:
    """A pool whose region 0 is the left half of an 8x8 map and region 1 the right half."""
    pool = RegionPool(1, 2)
    with torch.no_grad():
        pool.logits.weight.copy_(torch.tensor([[[[20.0]]], [[[-20.0]]]]))
        pool.logits.bias.zero_()
    semantic = torch.cat([torch.ones(1, 1, 8, 4), -torch.ones(1, 1, 8, 4)], 3)
    return pool, semantic


def test_each_region_gets_a_unit_normal_vector_of_its_own_pixels():
    pool, semantic = _halves_pool()
    z = torch.randn(4000, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    vectors = pool(z, semantic.expand(4000, -1, -1, -1)).vectors  # (N, 2 regions, 2 channels)
    # N(0, I) codes give N(0, I) region vectors whatever the region's size, independent ones
    # for regions that do not overlap.
    torch.testing.assert_close(vectors.std(0), torch.ones(2, 2), rtol=0, atol=0.05)
    correlation = torch.corrcoef(torch.stack([vectors[:, 0, 0], vectors[:, 1, 0]]))[0, 1]
    assert abs(correlation) < 0.05
    redrawn = z.clone()
    redrawn[..., :4] = torch.randn(4000, 2, 8, 4)  # the left half: region 0's pixels
    again = pool(redrawn, semantic.expand(4000, -1, -1, -1)).vectors
    assert (again[:, 0] - vectors[:, 0]).abs().mean() > 0.5
    torch.testing.assert_close(again[:, 1], vectors[:, 1], rtol=0, atol=1e-6)
    assert torch.equal(pool.partition(semantic), (torch.arange(8) >= 4).long().expand(1, 8, 8))


def test_a_region_code_styles_its_own_region_only():
    pool, semantic = _halves_pool()
    adain = AdaIN(3, 4, code_channels=2)
    torch.nn.init.normal_(adain.region_code_affine.weight)
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(1, 4)
    z = torch.randn(1, 2, 8, 8)
    redrawn = z.clone()
    redrawn[..., 4:] = torch.randn(1, 2, 8, 4)  # region 1: the right half
    one, other = adain(x, w, region_codes=pool(z, semantic)), adain(x, w, region_codes=pool(redrawn, semantic))
    assert (one[..., 4:] - other[..., 4:]).abs().mean() > 0.1
    torch.testing.assert_close(one[..., :4], other[..., :4], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs the level's RegionCodes"):
        adain(x, w)


def test_region_codes_need_the_prior_and_leave_other_models_descriptions_as_they_were():
    with pytest.raises(ValueError, match="region_codes needs a semantic encoder"):
        preset("tiny", 1, 2, region_codes=4)
    with pytest.raises(ValueError, match="needs local_code_channels"):
        preset("tiny", 1, 2, semantic_encoder="alexnet", region_codes=4, local_code_channels=0)
    plain = preset("tiny", 1, 2, semantic_encoder="alexnet")
    assert "region_codes" not in plain.to_dict()
    coded = plain.replace(region_codes=4)
    assert ModelConfig.from_dict(coded.to_dict()) == coded


def _tiny_prior_model(**extra) -> tuple[TowerImplicitModel, object]:
    task = make_task("colourization")
    torch.manual_seed(0)
    net = TowerImplicitModel(preset("tiny", task.in_channels, task.out_channels, semantic_encoder="alexnet",
                                    semantic_channels=4, **extra)).eval()
    for level in net.levels:
        for adain in level.adains:
            torch.nn.init.normal_(adain.affine.weight, std=0.5)
            if adain.region_affine is not None:
                torch.nn.init.normal_(adain.region_affine.weight, std=0.5)
    return net, task


def test_growing_region_codes_keeps_the_renders_and_takes_the_trained_regions():
    net, _ = _tiny_prior_model(region_styles=3)
    wanted = net.config.replace(region_codes=3)
    assert can_grow(net.config, wanted) and not can_grow(net.config, net.config)
    assert not can_grow(net.config, wanted.replace(global_code_dim=4))
    grown = grow_regions(net, wanted).eval()
    # The regions are the ones the first AdaIN's region styles learned.
    trained = net.levels[0].adains[0].region_logits
    assert torch.equal(grown.levels[0].region_pool.logits.weight, trained.weight)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    codes = LatentCodes.sample(net.code_shape((32, 32)), 2, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(grown(x, codes)[-1], net(x, codes)[-1])
    with torch.no_grad():
        grown.levels[0].adains[0].region_code_affine.weight.normal_()
    with torch.inference_mode():
        assert not torch.equal(grown(x, codes)[-1], net(x, codes)[-1])


def _live_region_model() -> tuple[TowerImplicitModel, object]:
    net, task = _tiny_prior_model(region_codes=3)
    for adain in net.levels[0].adains:
        torch.nn.init.normal_(adain.region_code_affine.weight, std=1.0)
    # Random logits this large divide the photos into regions that all hold pixels.
    torch.nn.init.normal_(net.levels[0].region_pool.logits.weight, std=3.0)
    return net, task


def test_the_region_search_comes_closer_at_level_one_and_reports_true_distances(lpips_alex):
    net, task = _live_region_model()
    y = torch.cat([photo(name) for name in ("chelsea", "coffee")])  # real colour photos
    x = task.degrade(y)
    plain = chimle_search(net, task, lpips_alex, x, y, SearchConfig((8, 4)), torch.Generator().manual_seed(0))
    refined = chimle_search(net, task, lpips_alex, x, y, SearchConfig((8, 4), samples_per_region=6),
                            torch.Generator().manual_seed(0))
    # The rounds start from the same level-1 winner (drawn before them) and only keep a
    # redraw that comes closer.
    assert torch.equal(refined.codes.globals[0], plain.codes.globals[0])
    assert torch.all(refined.distances[:, 0] <= plain.distances[:, 0] + 1e-6)
    assert torch.any(refined.distances[:, 0] < plain.distances[:, 0] - 1e-4), (refined.distances, plain.distances)
    with torch.inference_mode():
        truth = chosen_distances(net, task, lpips_alex, x, refined.codes, level_targets(net, y))
    torch.testing.assert_close(refined.distances, truth, rtol=0, atol=1e-5)
    with torch.inference_mode():
        regions = net.levels[0].region_pool.partition(net.encode(x, refined.codes.shape.local_sizes)[0])
    occupied = len(torch.unique(regions))
    assert occupied > 1 and refined.candidates_per_image == 12 + occupied * (6 + 1)


def test_region_search_options_are_checked():
    with pytest.raises(ValueError, match="needs code division, iterative construction"):
        SearchConfig((8, 4), iterative_construction=False, samples_per_region=2)
    with pytest.raises(ValueError, match="samples_per_region must be >= 0"):
        SearchConfig((8, 4), samples_per_region=-1)
    with pytest.raises(ValueError, match="needs region_codes"):
        TrainConfig(data="d", samples_per_region=2)
    with pytest.raises(ValueError, match="CHIMLE's"):
        TrainConfig(data="d", method="cimle", region_codes=8, samples_per_region=2)
    assert TrainConfig(data="d", region_codes=8).search_config(3).samples_per_region == 3
    assert TrainConfig(data="d", region_codes=8, samples_per_region=0).search_config(3).samples_per_region == 0
    assert TrainConfig(data="d").search_config(3).samples_per_region == 0


def test_the_region_search_refuses_a_model_without_region_codes(lpips_alex):
    net, task = _tiny_prior_model()
    y = photo("chelsea")
    with pytest.raises(ValueError, match="needs a model with region codes"):
        chimle_search(net, task, lpips_alex, task.degrade(y), y, SearchConfig((4, 2), samples_per_region=2))


def test_region_codes_pass_from_the_command_line_to_the_model_and_back():
    from chimle.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--region-codes", "8", "--samples-per-region", "2"])
    config = TrainConfig(data="d", region_codes=args.region_codes, samples_per_region=args.samples_per_region)
    task = config.build_task()
    assert config.model_config(task).region_codes == 8
    assert config.search_config(3).samples_per_region == 2
