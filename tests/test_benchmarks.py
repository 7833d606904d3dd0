"""The benchmarks' core functions on the tiny preset: curves, costs, FLOP counts, variants.

The benchmarks themselves run by hand (`python -m benchmarks.sample_efficiency`,
`python -m benchmarks.render_speed`); these tests check the arithmetic they report.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from benchmarks.render_speed import (TOLERANCE, count_flops, inference_copy, make_inputs, render_flops,
                                     run_variants, time_renders)
from benchmarks.sample_efficiency import (SearchCosts, UpsampledDistance, ablation_variants,
                                          draw_cimle_distances, expected_best_of, measure_search_costs,
                                          run_sample_efficiency, running_minimum, samples_to_match,
                                          search_flops)
from chimle.codes import LatentCodes
from chimle.search import SearchConfig, chimle_search

from .conftest import photo, tiny_model


def _live_tiny_model():
    """The tiny colourization model with a global stream that matters (AdaIN starts at zero)."""
    net, task = tiny_model("colourization", seed=0)
    torch.manual_seed(1)
    for level in net.levels:
        for adain in level.adains:
            nn.init.normal_(adain.affine.weight, std=0.3)
    return net, task


def _pair(task, names=("chelsea",)):
    y = torch.cat([photo(name) for name in names])
    return task.degrade(y), y


# -- best of N --------------------------------------------------------------------------------

def test_running_minimum_is_non_increasing_and_ends_at_the_minimum():
    d = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    curve = running_minimum(d)
    assert torch.all(curve[1:] <= curve[:-1])
    assert curve[0] == d[0] and curve[-1] == d.min()


def test_expected_best_of_equals_the_mean_over_all_orderings():
    d = torch.tensor([0.31, 0.12, 0.55, 0.12, 0.40, 0.27], dtype=torch.float64)
    orderings = [running_minimum(d[list(p)]) for p in itertools.permutations(range(len(d)))]
    brute = torch.stack(orderings).mean(0).numpy()  # (6,) mean best of the first N, N = 1..6
    exact = expected_best_of(d, range(1, len(d) + 1))
    np.testing.assert_allclose(exact, brute, rtol=0, atol=1e-12)
    assert exact[0] == pytest.approx(float(d.mean())) and exact[-1] == pytest.approx(float(d.min()))


def test_samples_to_match_is_the_first_n_at_or_below_the_target():
    d = torch.rand(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    curve = expected_best_of(d, range(1, 501))
    for n in (1, 7, 60):
        target = float(curve[n - 1])
        assert samples_to_match([d], target) == n
        assert samples_to_match([d], target - 1e-9) > n
    assert samples_to_match([d], float(d.min()) - 1e-6) is None


def test_cimle_draws_are_the_scores_of_codes_drawn_in_order_and_ignore_chunking(lpips_alex):
    net, task = _live_tiny_model()
    x, y = _pair(task)
    draws = [draw_cimle_distances(net, task, lpips_alex, x, y, 5, torch.Generator().manual_seed(3), chunk_size=c)
             for c in (2, 5)]
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=1e-6)  # same codes; batch rounding aside
    generator = torch.Generator().manual_seed(3)
    codes = LatentCodes.cat([LatentCodes.sample(net.code_shape((64, 64)), 1, generator) for _ in range(5)])
    with torch.inference_mode():
        images = task.to_rgb(x.expand(5, -1, -1, -1), net(x.expand(5, -1, -1, -1), codes)[-1])
        expected = lpips_alex(images, y.expand(5, -1, -1, -1)).double()
    torch.testing.assert_close(draws[0], expected, rtol=0, atol=1e-6)


def test_upsampled_distance_only_touches_images_below_the_minimum(lpips_alex):
    distance = UpsampledDistance(lpips_alex, 32)
    a, b = photo("chelsea", 32), photo("coffee", 32)
    assert torch.equal(distance(a, b), lpips_alex(a, b))
    small = distance(photo("chelsea", 16), photo("coffee", 16))  # LPIPS-alex alone refuses 16 px
    assert small.shape == (1,) and 0 < float(small) < 1


# -- cost in full-render equivalents ----------------------------------------------------------

def test_search_flops_equal_the_flops_the_search_runs(lpips_alex):
    net, task = _live_tiny_model()
    x, y = _pair(task)
    costs = measure_search_costs(net, task, lpips_alex, x, y)
    # Every level's render and score costs something; a full render is the sum of the levels.
    assert all(c > 0 for c in costs.render + costs.score)
    inputs = make_inputs(net, 64)
    assert render_flops(net, inputs) == sum(costs.render)
    for variant in ablation_variants((3, 2)):
        counted = count_flops(lambda: chimle_search(net, task, lpips_alex, x, y, variant.config,
                                                    torch.Generator().manual_seed(0)), net)
        config = variant.config
        if not (config.iterative_construction and config.partial_evaluation):
            # the search re-scores its choice at every level to report it: not search cost
            counted -= sum(costs.render) + sum(costs.score)
        assert counted == search_flops(costs, config), variant.name


def test_search_cost_arithmetic_on_made_up_costs():
    costs = SearchCosts(render=(1, 10, 100), score=(2, 20, 200))
    assert costs.full_sample == 311
    m = (4, 3, 2)
    chimle = search_flops(costs, SearchConfig(m, True, True, True))
    # level 1: 4 (1 + 2); level 2: prefix 1 + 3 (10 + 20); level 3: prefix 11 + 2 (100 + 200)
    assert chimle == 4 * 3 + (1 + 3 * 30) + (11 + 2 * 300)
    assert search_flops(costs, SearchConfig(m, False, True, True)) == 4 * 3 + 3 * 31 + 2 * 311
    assert search_flops(costs, SearchConfig(m, False, False, True)) == 9 * 311
    assert search_flops(costs, SearchConfig.cimle(9)) == 9 * costs.full_sample


def test_run_sample_efficiency_on_the_tiny_preset(lpips_alex):
    net, task = _live_tiny_model()
    x, y = _pair(task, ("chelsea", "coffee"))
    result = run_sample_efficiency(net, task, lpips_alex, x, y, max_samples=12, budget=(3, 2), seeds=2)
    for draws in result["cimle_draws"]:
        curve = running_minimum(torch.tensor(draws))
        assert torch.all(curve[1:] <= curve[:-1]) and curve[-1] == min(draws)
    expected = np.array(result["cimle_expected_best"])
    assert np.all(np.diff(expected) <= 1e-12)
    assert result["curve_n"][0] == 1 and result["curve_n"][-1] == 12
    assert expected[-1] == pytest.approx(np.mean([min(d) for d in result["cimle_draws"]]), abs=1e-6)
    by_name = {v["name"]: v for v in result["variants"]}
    assert by_name["- IC - PE - CD (cIMLE)"]["cost_full_renders"] == pytest.approx(5.0)
    assert by_name["- IC - PE"]["cost_full_renders"] == pytest.approx(5.0)
    assert by_name["CHIMLE"]["cost_full_renders"] < by_name["- IC"]["cost_full_renders"] < 5.0
    for v in result["variants"]:
        assert v["cimle_samples_to_match"] is None or 1 <= v["cimle_samples_to_match"] <= 12


# -- render speed -----------------------------------------------------------------------------

def test_flop_count_of_a_conv_equals_the_analytic_count():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.rand(2, 3, 16, 16)
    analytic = 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3  # 2 (multiply-add) * N * C_out * H * W * C_in * k * k
    assert count_flops(lambda: conv(x), conv) == analytic
    # A weight-normalised conv in inference mode: the counter's autograd hooks must not fail.
    normalised = weight_norm(nn.Conv2d(3, 8, 3, padding=1))
    with torch.inference_mode():
        assert count_flops(lambda: normalised(x), normalised) == analytic
    assert normalised.parametrizations.weight.original1.requires_grad  # restored afterwards


def test_inference_copy_renders_the_same_and_leaves_the_model_intact():
    net, task = _live_tiny_model()
    inputs = make_inputs(net, 64)
    fast = inference_copy(net)
    assert not any(parametrize.is_parametrized(m) for m in fast.modules())
    assert all(not p.requires_grad for p in fast.parameters())
    assert fast.levels[0].input_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert parametrize.is_parametrized(net.levels[0].input_conv)  # the original keeps its weight norm
    with torch.inference_mode():
        for a, b in zip(net.render(inputs.x, inputs.codes).outputs, fast.render(inputs.x, inputs.codes).outputs):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_time_renders_and_variants_on_the_tiny_preset():
    net, task = _live_tiny_model()
    inputs = make_inputs(net, 32)
    times = time_renders(net, inputs, repeats=1)
    assert len(times["rerender_from_level"]) == net.num_levels and times["full"] > 0 and times["full_cpu"] > 0
    rows = {row["name"]: row for row in run_variants(net, task, inputs, 1, {"compile"}, lambda message: None)}
    assert rows["as loaded"]["max_abs_diff"] == 0
    for name in ("channels-last", "weight norm folded", "folded + channels-last (inference_copy)",
                 "inference_copy, 2 threads"):
        assert rows[name]["within_tolerance"], name
        assert rows[name]["max_abs_diff"] <= TOLERANCE
    assert rows["torch.compile (on inference_copy)"]["skipped"]
    assert "full" in rows["bfloat16 autocast (on inference_copy)"]



def test_level_roles_rank_the_last_level_perfectly_and_measure_shares(lpips_alex):
    from benchmarks.level_roles import level_roles, mean_pairwise
    from benchmarks.sample_efficiency import UpsampledDistance

    net, task = _live_tiny_model()
    x, y = _pair(task)
    distance = UpsampledDistance(lpips_alex, 32)
    roles = level_roles(net, task, distance, x, y, codes=12, redraws=4, generator=torch.Generator().manual_seed(0))
    assert len(roles["decides"]) == len(roles["ranks"]) == net.num_levels
    assert roles["ranks"][-1] == pytest.approx(1.0)  # the final distance ranks itself exactly
    assert all(-1 <= rank <= 1 for rank in roles["ranks"])
    assert roles["diversity_all_levels"] > 0 and all(share > 0 for share in roles["decides"])
    assert len(roles["decides_global"]) == len(roles["decides_local"]) == net.num_levels
    assert all(share > 0 for share in roles["decides_global"] + roles["decides_local"])
    assert all(0 <= share <= 1 for share in roles["tint_share"]["global"] + [roles["tint_share"]["all_levels"]])
    # The finest level's global code reaches nothing but that level's AdaINs: with their
    # styles cut from it, its global redraws change nothing, and its local ones still do.
    with torch.no_grad():
        for adain in net.levels[-1].adains:
            adain.affine.weight.zero_()
    cut = level_roles(net, task, distance, x, y, codes=4, redraws=4, generator=torch.Generator().manual_seed(0))
    assert cut["decides_global"][-1] == pytest.approx(0.0, abs=1e-6) and cut["decides_local"][-1] > 0
    image = y.expand(3, -1, -1, -1)
    assert mean_pairwise(distance, image) == pytest.approx(0.0, abs=1e-6)


def test_region_partition_tells_a_uniform_partition_from_a_kmeans_one():
    from benchmarks.region_partition import partitions
    from chimle.config import preset
    from chimle.model import TowerImplicitModel

    torch.manual_seed(0)
    net = TowerImplicitModel(preset("tiny", 1, 2, semantic_encoder="alexnet", semantic_channels=4, region_styles=3,
                                    region_codes=3, region_partition="kmeans")).eval()
    with torch.no_grad():  # the first AdaIN's styles uniform, as the trained colourization model's nearly are
        net.levels[0].adains[0].region_logits.weight.zero_()
        net.levels[0].adains[0].region_logits.bias.zero_()
    x = photo("coffee", 64)[:, :1]
    found = partitions(net, x, (64, 64))
    uniform, kmeans = found["level 1 AdaIN 1 region styles"], found["level 1 region codes (k-means)"]
    assert uniform["entropy"] == pytest.approx(np.log(3), abs=1e-5) and uniform["strongest"] == pytest.approx(1 / 3)
    assert uniform["occupied"] == 1  # every pixel ties, and the first region takes the ties
    assert kmeans["entropy"] < 0.5 * np.log(3) and kmeans["strongest"] > 0.8 and kmeans["occupied"] == 3
    assert "level 2 AdaIN 1 region styles" in found and "level 2 region codes (k-means)" not in found
