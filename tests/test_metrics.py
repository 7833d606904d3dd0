"""Metrics with known answers: analytic FID/KID/PRD values, exact LPIPS identities, PSNR."""

from __future__ import annotations

import math

import pytest
import torch

from chimle.ivo import IvOConfig
from torchmetrics.image.fid import FrechetInceptionDistance

from chimle.metrics import (best_and_mean_lpips, faithfulness_weighted_variance, fid_kid,
                            frechet_distance_few_samples, ivo_error, lpips_diversity, prd_scores, psnr)

from .conftest import photo, tiny_model


def l1_distance(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per image: a distance whose values are easy to work out."""
    return (images - targets).abs().mean((1, 2, 3))


def constant(*values: float, size: int = 8) -> torch.Tensor:
    """(len(values), 3, size, size) images, each filled with one value."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


def gaussian(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- FID and KID --------------------------------------------------------------------------

def test_identical_features_give_zero_fid_and_kid():
    features = gaussian(300, 8, seed=0)
    scores = fid_kid(features, features, kid_subset_size=300, kid_subsets=5)
    assert abs(scores.fid) < 1e-3
    # With subsets of the whole set, every draw is a permutation of the same rows, and the
    # unbiased MMD^2 estimate is 2 [(S - D) / (n (n - 1)) - S / n^2] (S: sum of all kernel
    # values, D: of the diagonal): O(1/n), not exactly 0, because the sets are not independent.
    kernel = (features @ features.T / 8 + 1) ** 3
    n, total, diagonal = 300, kernel.sum().item(), kernel.diagonal().sum().item()
    expected = 2 * ((total - diagonal) / (n * (n - 1)) - total / n ** 2)
    assert scores.kid_mean == pytest.approx(expected, rel=1e-9)
    assert scores.kid_std == pytest.approx(0, abs=1e-9)
    shifted = fid_kid(features, features + 2, kid_subset_size=300, kid_subsets=5)
    assert abs(scores.kid_mean) < 0.01 * shifted.kid_mean


def test_shifted_features_give_the_squared_mean_distance():
    delta = torch.tensor([1.0, -1.0, 0.5, 0, 0, 0, 0, 1.5], dtype=torch.float64)  # ||delta||^2 = 4.5
    real = gaussian(2000, 8, seed=1)
    # Same noise shifted: equal covariances, so FID = ||delta||^2 exactly.
    assert fid_kid(real, real + delta, kid_subsets=2).fid == pytest.approx(4.5, rel=1e-6)
    # Independent draws with identity covariance: FID ~ ||delta||^2 up to sampling noise
    # (the cross term 2 delta . (mean error) has a standard deviation of about 0.1 here).
    fake = gaussian(2000, 8, seed=2) + delta
    scores = fid_kid(real, fake, kid_subsets=10)
    assert scores.fid == pytest.approx(4.5, abs=0.3)
    same = fid_kid(real, gaussian(2000, 8, seed=3), kid_subsets=10)
    assert same.fid < 0.05 and abs(same.kid_mean) < 0.05 * scores.kid_mean


def test_few_sample_fid_agrees_with_torchmetrics_and_is_zero_for_identical_sets():
    real, fake = gaussian(10, 64, seed=4), gaussian(20, 64, seed=5).exp()  # fewer vectors than dimensions
    reference = FrechetInceptionDistance(feature=_Identity())
    reference.update(real, real=True)
    reference.update(fake, real=False)
    expected = float(reference.compute())
    assert frechet_distance_few_samples(real, fake) == pytest.approx(expected, rel=1e-6)
    assert fid_kid(real, fake, kid_subsets=2).fid == pytest.approx(expected, rel=1e-6)  # takes this path
    assert abs(fid_kid(real, real, kid_subsets=2).fid) < 1e-9


class _Identity(torch.nn.Identity):
    num_features = 64


def test_kid_subset_size_is_capped_by_the_smaller_set_and_tiny_sets_are_refused():
    scores = fid_kid(gaussian(5, 4, seed=0), gaussian(15, 4, seed=1), kid_subsets=3)
    assert scores.kid_subset_size == 5 and (scores.num_real, scores.num_fake) == (5, 15)
    assert fid_kid(gaussian(5, 4, 0), gaussian(15, 4, 1), kid_subsets=3, seed=7) == \
        fid_kid(gaussian(5, 4, 0), gaussian(15, 4, 1), kid_subsets=3, seed=7)  # seeded draws
    with pytest.raises(ValueError, match="at least 2"):
        fid_kid(gaussian(1, 4, 0), gaussian(15, 4, 1))


# --- Diversity, FwV, best-of-K, PSNR -----------------------------------------------------------

def test_diversity_is_zero_for_identical_samples_and_the_lpips_of_two(lpips_alex):
    same = photo("astronaut").expand(3, -1, -1, -1)
    assert lpips_diversity(same, lpips_alex) == 0
    pair = torch.cat([photo("astronaut"), photo("coffee")])
    assert lpips_diversity(pair, lpips_alex) == pytest.approx(lpips_alex(pair[:1], pair[1:]).item(), abs=1e-6)
    # Three samples: the mean of the three pairwise distances 0.2, 0.6, 0.4.
    assert lpips_diversity(constant(0.0, 0.2, 0.6), l1_distance) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="at least 2"):
        lpips_diversity(constant(0.0), l1_distance)


def test_fwv_of_identical_samples_is_zero(lpips_alex):
    observed = photo("chelsea")
    samples = photo("coffee").expand(4, -1, -1, -1)
    result = faithfulness_weighted_variance(samples, observed, lpips_alex, sigma=0.1)
    # Zero up to the rounding of the mean image (LPIPS of equal images is exactly 0).
    assert result.value == pytest.approx(0, abs=1e-6) and result.sigma == 0.1


def test_fwv_discounts_samples_far_from_the_observed_image():
    # Samples 0 and 0.5, observed 0: both lie 0.25 from their mean 0.25; the first is the
    # observed image (weight 1), the second lies 0.5 from it (weight exp(-0.5 / sigma)).
    samples, observed = constant(0.0, 0.5), constant(0.0)
    sigma = 0.25
    result = faithfulness_weighted_variance(samples, observed, l1_distance, sigma)
    assert result.value == pytest.approx(0.25 * (1 + math.exp(-0.5 / sigma)) / 2)
    assert result.sigma == sigma
    # Unweighted (sigma -> inf) the spread would be 0.25; the unfaithful sample counts less,
    # and less still with a narrower kernel.
    assert result.value < 0.25
    assert faithfulness_weighted_variance(samples, observed, l1_distance, 0.05).value < result.value
    with pytest.raises(ValueError, match="sigma"):
        faithfulness_weighted_variance(samples, observed, l1_distance, 0)


def test_best_and_mean_distance():
    result = best_and_mean_lpips(constant(0.0, 0.2, 0.6), constant(0.15), l1_distance)
    assert result.best_index == 1
    assert result.best == pytest.approx(0.05) and result.mean == pytest.approx((0.15 + 0.05 + 0.45) / 3)


def test_psnr_is_infinite_for_identical_images_and_analytic_for_a_known_mse():
    image = photo("rocket")
    assert psnr(image, image).item() == math.inf
    # A difference of 0.2 in [-1, 1] is 0.1 in [0, 1]: MSE 0.01, PSNR 20 dB.
    grey = constant(0.0)
    assert psnr(grey + 0.2, grey).item() == pytest.approx(20.0, abs=1e-4)
    # Batched against one target: one value per image.
    assert psnr(torch.cat([grey, grey + 0.2]), grey).shape == (2,)


# --- PRD -------------------------------------------------------------------------------

def _modes(num_modes: int, per_mode: int, seed: int) -> torch.Tensor:
    """Points around the first `num_modes` of four well separated centres in 16-d."""
    centres = 50 * torch.eye(16, dtype=torch.float64)[:num_modes]
    noise = gaussian(num_modes * per_mode, 16, seed)
    return centres.repeat_interleave(per_mode, 0) + noise


def test_prd_identical_and_disjoint_distributions():
    real = _modes(4, 50, seed=0)
    same = prd_scores(real, real, num_runs=3)
    assert same.f_8 == pytest.approx(1, abs=1e-3) and same.f_1_8 == pytest.approx(1, abs=1e-3)
    disjoint = prd_scores(real, real + 1000, num_runs=3)
    assert disjoint.f_8 < 1e-6 and disjoint.f_1_8 < 1e-6


def test_prd_fake_covering_half_the_modes_is_precise_but_misses_recall():
    real, fake = _modes(4, 50, seed=1), _modes(2, 100, seed=2)
    # With one cluster per mode the histograms are exact: precision 1 and recall 1/2 at
    # lambda = 2, where F_8 = 65 * 0.5 / 64.5 = 0.504 and F_1/8 = (65/64) * 0.5 / (1/64 + 0.5) = 0.985.
    scores = prd_scores(real, fake, num_clusters=4, num_runs=3)
    assert scores.f_8 == pytest.approx(0.504, abs=0.01)
    assert scores.f_1_8 == pytest.approx(0.985, abs=0.01)
    # With the default 20 clusters, modes split and the values blur, but the order holds;
    # swapped, the fake set has modes the real one lacks: recall 1, precision 1/2.
    scores = prd_scores(real, fake, num_runs=3)
    swapped = prd_scores(fake, real, num_runs=3)
    assert scores.f_1_8 > 0.85 > 0.6 > scores.f_8
    assert swapped.f_8 > 0.85 > 0.6 > swapped.f_1_8


def test_prd_uses_no_more_clusters_than_distinct_points():
    points = gaussian(3, 4, seed=0)
    scores = prd_scores(points, points, num_clusters=20, num_runs=2)
    assert scores.num_clusters == 3 and scores.f_8 == pytest.approx(1, abs=1e-3)


# --- IvO error --------------------------------------------------------------------------

def test_ivo_error_flags_convergence_by_the_stated_threshold(lpips_alex):
    net, task = tiny_model("jpeg", seed=0)
    target = photo("chelsea")  # 64 px: the coarse level's 32 px is LPIPS's minimum
    x = task.degrade(target)
    config = IvOConfig(steps=1, init_samples=1)
    loose = ivo_error(net, task, lpips_alex, x, target, config, threshold=10.0,
                      generator=torch.Generator().manual_seed(0))
    assert loose.mse.shape == loose.lpips.shape == (1,) and loose.threshold == 10.0
    assert loose.converged.tolist() == [True]
    strict = ivo_error(net, task, lpips_alex, x, target, config, threshold=loose.mse.item(),
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(strict.mse, loose.mse)  # same seed, same optimisation
    assert strict.converged.tolist() == [False]  # converged means strictly below


def test_colourfulness_is_zero_for_grey_and_grows_with_saturation():
    from chimle.metrics import colourfulness
    from tests.conftest import photo

    colour = photo("coffee")
    grey = colour.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    washed = (colour + grey) / 2  # half the chroma
    scores = colourfulness(torch.cat([grey, washed, colour]))
    assert scores[0] < 1e-3
    assert 0 < scores[1] < scores[2]
    assert abs(float(scores[1]) * 2 - float(scores[2])) < 0.05 * float(scores[2])  # linear in chroma


def test_tint_share_tells_a_cast_of_the_whole_photo_from_parts_coloured_apart():
    from chimle.color import lab_to_rgb, rgb_to_lab
    from chimle.metrics import tint_share
    from tests.conftest import photo

    lab = rgb_to_lab((photo("coffee") + 1) / 2)
    lab[:, 1:] *= 0.5  # room in the gamut for the shifts below, so clipping does not blur them

    def samples(shifts: list[torch.Tensor]) -> torch.Tensor:
        """One sample per (2, H, W) shift of (a, b), RGB in [-1, 1]."""
        return torch.cat([lab_to_rgb(torch.cat([lab[:, :1], lab[:, 1:] + shift], 1)) * 2 - 1 for shift in shifts])

    height, width = lab.shape[-2:]
    flat = torch.ones(1, height, width)
    casts = [torch.cat([a * flat, b * flat]) for a, b in ((8, 0), (-8, 4), (0, -8), (4, 8))]
    left = (torch.arange(width) < width // 2).float().expand(height, width)
    halves = left - (1 - left)  # +1 on the left half, -1 on the right: no cast of the whole photo
    parts = [torch.cat([a * halves[None], b * halves[None]]) for a, b in ((8, 0), (-8, 4), (0, -8), (4, 8))]
    assert tint_share(samples(casts)) > 0.9
    assert tint_share(samples(parts)) < 0.1
    assert tint_share(samples(casts[:1])) is None  # one sample: nothing varies
    assert tint_share(samples([casts[0], casts[0]])) is None
