"""Colour hints (chimle/ivo.py): a masked distance, a masked search, and IvO on the masked distance."""

from __future__ import annotations

import pytest
import torch

from chimle.codes import LatentCodes
from chimle.ivo import IvOConfig, hint_search, ivo_steps, masked_distance
from chimle.search import evaluate_candidates

from .conftest import photo, tiny_model

SIZE = 32


def _strokes():
    """A red stroke over the astronaut's chest, (1, 3, H, W) and its mask (1, 1, H, W)."""
    target = torch.zeros(1, 3, SIZE, SIZE)
    target[:, 0] = 0.8  # red in [-1, 1]
    target[:, 1:] = -0.6
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 20:28, 8:24] = 1
    mask[..., 18:20, 8:24] = 0.5  # a soft edge
    return target, mask


@pytest.mark.parametrize("space", ["ab", "rgb"])
def test_the_masked_distance_ignores_unpainted_pixels_and_so_does_its_gradient(space):
    target, mask = _strokes()
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    images.requires_grad_(True)
    distance = masked_distance(images, target, mask, space)
    assert distance.shape == (2,) and (distance > 0).all()
    distance.sum().backward()
    unpainted = (mask == 0).expand_as(images)
    assert torch.equal(images.grad[unpainted], torch.zeros_like(images.grad[unpainted]))
    assert (images.grad[(mask == 1).expand_as(images)] != 0).float().mean() > 0.9
    # Changing unpainted pixels does not change the distance at all.
    moved = images.detach().clone()
    moved[unpainted] = -moved[unpainted]
    assert torch.equal(masked_distance(moved, target, mask, space), distance.detach())


def test_the_rgb_masked_distance_is_the_mask_weighted_mean_squared_error():
    target, mask = _strokes()
    images = torch.zeros(1, 3, SIZE, SIZE)
    expected = (mask * (images - target).pow(2).mean(1, keepdim=True)).sum() / mask.sum()
    assert torch.allclose(masked_distance(images, target, mask, "rgb"), expected.view(1))
    assert masked_distance(target, target, mask, "ab").item() == 0
    with pytest.raises(ValueError, match="painted pixel"):
        masked_distance(images, target, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="space"):
        masked_distance(images, target, mask, "lab")


def test_the_search_keeps_the_best_candidate_under_the_masked_distance():
    net, task = tiny_model("colourization")
    x = task.prepare_input(photo("astronaut", SIZE))
    target, mask = _strokes()
    found = hint_search(net, task, x, target, mask, 12, "ab", torch.Generator().manual_seed(1), chunk_size=5)
    # The same 12 candidates, judged one by one.
    candidates = LatentCodes.sample(net.code_shape((SIZE, SIZE)), 12, torch.Generator().manual_seed(1))
    with torch.no_grad():
        each = torch.stack([masked_distance(task.to_rgb(x, net(x, candidates[k])[-1]), target, mask, "ab")[0]
                            for k in range(12)])
    assert found.codes.equal(candidates[int(each.argmin())])
    assert torch.allclose(found.distances[0, 0], each.min(), atol=1e-6)
    assert found.candidates_per_image == 12
    # A code given to `include` competes too and wins when it is best.
    winner = candidates[int(each.argmin())]
    again = hint_search(net, task, x, target, mask, 3, "ab", torch.Generator().manual_seed(7), include=winner)
    assert again.codes.equal(winner) and again.candidates_per_image == 4


def test_search_then_masked_ivo_brings_the_painted_colours_closer_than_the_best_random_code():
    net, task = tiny_model("colourization")
    x = task.prepare_input(photo("astronaut", SIZE))
    target, mask = _strokes()
    config = IvOConfig(steps=30, lr=0.05, init_samples=16, report_every=10, colour_space="ab", chunk_size=8)
    reports = list(ivo_steps(net, task, None, x, target, config, generator=torch.Generator().manual_seed(0),
                             mask=mask))
    assert [r.step for r in reports] == [0, 10, 20, 30]
    assert all(r.lpips is None for r in reports)
    best_random = hint_search(net, task, x, target, mask, 16, "ab", torch.Generator().manual_seed(0)).distances
    assert torch.allclose(reports[0].mse, best_random[0], atol=1e-6)  # IvO starts from the search's winner
    distances = [r.mse.item() for r in reports]
    assert distances == sorted(distances, reverse=True)  # it falls at every report
    assert distances[-1] < 0.95 * best_random.item()  # untrained, the tiny model moves slowly: 0.327 -> 0.295
    # Measured on the image itself: the painted pixels' chroma moved toward the stroke's.
    assert masked_distance(reports[-1].image, target, mask).item() == pytest.approx(reports[-1].mse.item())
    # The weights are untouched and still take gradients afterwards.
    assert all(p.requires_grad for p in net.parameters())


def test_the_masked_objective_gives_no_gradient_to_output_pixels_outside_the_mask():
    net, task = tiny_model("colourization")
    x = task.prepare_input(photo("astronaut", SIZE))
    target, mask = _strokes()
    codes = LatentCodes.sample(net.code_shape((SIZE, SIZE)), 1, torch.Generator().manual_seed(0))
    output = net(x, codes)[-1].detach().requires_grad_(True)  # the finest output, in model space
    masked_distance(task.to_rgb(x, output), target, mask).sum().backward()
    outside = (mask == 0).expand_as(output)
    assert torch.equal(output.grad[outside], torch.zeros_like(output.grad[outside]))
    assert output.grad[(mask > 0).expand_as(output)].abs().sum() > 0


def test_a_masked_config_is_checked():
    with pytest.raises(ValueError):
        IvOConfig(colour_space="lab")
    with pytest.raises(ValueError):
        IvOConfig(chunk_size=0)
    net, task = tiny_model("colourization")
    x = task.prepare_input(photo("astronaut", SIZE))
    target, _ = _strokes()
    with pytest.raises(ValueError, match="distance"):
        next(ivo_steps(net, task, None, x, target, IvOConfig(steps=1)))


def test_evaluate_candidates_is_the_searchs_batching():
    # hint_search packs the mask as a 4th target channel so evaluate_candidates indexes it per chunk.
    net, task = tiny_model("colourization")
    x = task.prepare_input(photo("astronaut", SIZE))
    target, mask = _strokes()
    candidates = LatentCodes.sample(net.code_shape((SIZE, SIZE)), 5, torch.Generator().manual_seed(2))
    packed = torch.cat([target, mask], 1)
    owners = torch.zeros(5, dtype=torch.long)

    def distance(images, targets):
        return masked_distance(images, targets[:, :3], targets[:, 3:], "rgb")

    with torch.inference_mode():
        by_two = evaluate_candidates(net, task, distance, x, candidates, owners, packed, net.num_levels, 2)
        at_once = evaluate_candidates(net, task, distance, x, candidates, owners, packed, net.num_levels, 5)
    assert torch.allclose(by_two, at_once, atol=1e-6)


def test_ivo_with_the_semantic_prior_reports_the_images_of_its_codes():
    """IvO computes the prior's maps of x once; each reported image is still its code's render."""
    from chimle.config import preset
    from chimle.model import TowerImplicitModel
    from chimle.tasks import make_task

    task = make_task("colourization")
    torch.manual_seed(0)
    net = TowerImplicitModel(preset("tiny", task.in_channels, task.out_channels, semantic_encoder="alexnet")).eval()
    x = task.prepare_input(photo("astronaut", SIZE))
    target, mask = _strokes()
    config = IvOConfig(steps=4, lr=0.05, init_samples=4, report_every=2, colour_space="ab")
    reports = list(ivo_steps(net, task, None, x, target, config, generator=torch.Generator().manual_seed(0),
                             mask=mask))
    assert [r.step for r in reports] == [0, 2, 4] and not reports[0].codes.equal(reports[-1].codes)
    with torch.no_grad():
        for report in reports:
            assert torch.allclose(report.image, task.to_rgb(x, net(x, report.codes)[-1]), atol=1e-6)
