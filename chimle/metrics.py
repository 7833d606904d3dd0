"""Evaluation metrics of the paper's tables (docs/method.md#metrics), as pure functions.

Everything here takes tensors (images in [-1, 1], or feature matrices) and a distance
callable, and returns numbers; reading photos, running the model and printing belong to
`chimle.evaluate` and the CLI. `distance(images, targets) -> (N,)` is LPIPS in practice
(`chimle.perceptual.load_perceptual_distance`), but any per-image distance works, which
is what lets the tests check formulas with a distance whose values are known exactly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .color import rgb_to_lab
from .imageops import to_unit_range
from .ivo import IvOConfig, invert
from .model import TowerImplicitModel
from .search import Distance
from .tasks import Task

DEFAULT_KID_SUBSET_SIZE = 1000  # torchmetrics' and the KID paper's default
DEFAULT_KID_SUBSETS = 100
DEFAULT_IVO_THRESHOLD = 0.01  # MSE on [-1, 1] images: 0.0025 on [0, 1], a PSNR of 26 dB


# ---------------------------------------------------------------------------------------
# Fidelity: FID and KID on features
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FidelityScores:
    """FID, and KID's mean and standard deviation over random subsets.

    Attributes:
        kid_subset_size: the subset size actually used (at most the smaller set's size).
    """

    fid: float
    kid_mean: float
    kid_std: float
    kid_subset_size: int
    num_real: int
    num_fake: int


class _PrecomputedFeatures(nn.Identity):
    """The 'feature extractor' handed to torchmetrics when the features are already computed.

    torchmetrics' FID and KID metrics take the Inception network as a module and run it in
    `update`; passing features through this identity lets us extract features once (for
    FID, KID and PRD alike) and still use the library's statistics.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)  # FrechetInceptionDistance sizes its state from it


def _check_features(real_features: torch.Tensor, fake_features: torch.Tensor, minimum: int) -> None:
    if (real_features.dim() != 2 or fake_features.dim() != 2
            or real_features.shape[1] != fake_features.shape[1]):
        raise ValueError(f"expected feature matrices (N, D) and (M, D), got {tuple(real_features.shape)} "
                         f"and {tuple(fake_features.shape)}")
    if min(real_features.shape[0], fake_features.shape[0]) < minimum:
        raise ValueError(f"need at least {minimum} real and {minimum} fake feature vectors, got "
                         f"{real_features.shape[0]} and {fake_features.shape[0]}")


def frechet_distance_few_samples(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID, computed exactly through an SVD; for sets with fewer vectors than dimensions.

    With the centred feature matrices A (N x D) and B (M x D), S_r = A^T A / (N - 1) and
    S_f = B^T B / (M - 1). The non-zero eigenvalues of S_r S_f = A^T (A B^T B) / c, with
    c = (N - 1)(M - 1), are those of (A B^T)(A B^T)^T / c (AB and BA share their non-zero
    eigenvalues), i.e. the squared singular values of A B^T / sqrt(c). Hence
    Tr (S_r S_f)^(1/2) = ||A B^T||_* / sqrt(c) (nuclear norm), and
    FID = ||mu_r - mu_f||^2 + ||A||_F^2 / (N - 1) + ||B||_F^2 / (M - 1) - 2 ||A B^T||_* / sqrt(c).
    """
    real, fake = real_features.detach().double().cpu(), fake_features.detach().double().cpu()
    centred_real, centred_fake = real - real.mean(0), fake - fake.mean(0)
    n, m = real.shape[0], fake.shape[0]
    cross = torch.linalg.svdvals(centred_real @ centred_fake.T).sum() / math.sqrt((n - 1) * (m - 1))
    fid = ((real.mean(0) - fake.mean(0)).square().sum() + centred_real.square().sum() / (n - 1)
           + centred_fake.square().sum() / (m - 1) - 2 * cross)
    return float(fid)


def fid_kid(real_features: torch.Tensor, fake_features: torch.Tensor,
            kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE, kid_subsets: int = DEFAULT_KID_SUBSETS,
            seed: int = 0) -> FidelityScores:
    """Fréchet and kernel inception distances between two feature sets.

    FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), with means mu and unbiased
    covariances S of the two sets (Heusel et al. 2017).
    KID = unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3, averaged over
    `kid_subsets` random pairs of subsets of `kid_subset_size` vectors (Binkowski et al.
    2018); the standard deviation is over those subsets.

    Why torchmetrics, and where not: KID and, with at least D vectors per set, FID are
    torchmetrics' (`KernelInceptionDistance`, `FrechetInceptionDistance`), fed the
    precomputed features through an identity module, so the MMD estimator and the matrix
    square root are a maintained library's. With fewer vectors than dimensions (every
    evaluation of fewer than 2048 photos) FID goes through `frechet_distance_few_samples`
    instead, an exact identity: torchmetrics takes the eigenvalues of the non-symmetric
    D x D product S_r S_f, which took 25-80 s for D = 2048 on this project's two-core CPU
    machine (the SVD takes milliseconds), and whose ~D zero eigenvalues come back as
    rounding noise whose square roots add up to errors of about 1e-4.

    Both scores are biased upwards for small sets (FID strongly so): compare scores
    computed with the same numbers of images only.

    Args:
        real_features, fake_features: (N, D) and (M, D); N, M >= 2.
        kid_subset_size: capped at min(N, M), as KID needs subsets of both sets.
        seed: seeds KID's subset draws (without touching the global generator's state).
    """
    _check_features(real_features, fake_features, 2)
    real, fake = real_features.detach().double().cpu(), fake_features.detach().double().cpu()
    if min(real.shape[0], fake.shape[0]) < real.shape[1]:
        fid = frechet_distance_few_samples(real, fake)
    else:
        metric = FrechetInceptionDistance(feature=_PrecomputedFeatures(real.shape[1]))
        metric.update(real, real=True)
        metric.update(fake, real=False)
        fid = float(metric.compute())
    subset_size = min(int(kid_subset_size), real.shape[0], fake.shape[0])
    with warnings.catch_warnings():
        # KID warns that it keeps all features in memory: ours already are.
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_PrecomputedFeatures(real.shape[1]),
                                      subsets=int(kid_subsets), subset_size=subset_size)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    # KID draws subsets with torch.randperm on the global generator: seed a forked copy.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return FidelityScores(fid, float(kid_mean), float(kid_std), subset_size, real.shape[0], fake.shape[0])


# ---------------------------------------------------------------------------------------
# Diversity and faithfulness of the samples of one input
# ---------------------------------------------------------------------------------------

def _check_samples(samples: torch.Tensor, observed: torch.Tensor | None = None) -> None:
    if samples.dim() != 4 or samples.shape[1] != 3:
        raise ValueError(f"expected samples (K, 3, H, W), got {tuple(samples.shape)}")
    if observed is not None and (observed.dim() != 4 or observed.shape[0] != 1
                                 or observed.shape[1:] != samples.shape[1:]):
        raise ValueError(f"expected the observed image as (1, {', '.join(map(str, samples.shape[1:]))}), "
                         f"got {tuple(observed.shape)}")


def lpips_diversity(samples: torch.Tensor, distance: Distance) -> float:
    """Mean pairwise distance among the K samples of one input.

    diversity = 2 / (K (K - 1)) * sum_{i < j} d(s_i, s_j), over all K (K - 1) / 2 pairs.

    Args:
        samples: (K, 3, H, W) in [-1, 1], K >= 2.
    """
    _check_samples(samples)
    K = samples.shape[0]
    if K < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {K}")
    first, second = torch.triu_indices(K, K, offset=1)
    with torch.inference_mode():
        return float(distance(samples[first], samples[second]).mean())


@dataclass(frozen=True)
class WeightedVariance:
    """Faithfulness-weighted variance of one input's samples, with the sigma it used."""

    value: float
    sigma: float


def faithfulness_weighted_variance(samples: torch.Tensor, observed: torch.Tensor,
                                   distance: Distance, sigma: float) -> WeightedVariance:
    """Diversity that only counts samples faithful to the observed image (docs/method.md#diversity).

    FwV = 1/K * sum_k d(s_k, s_mean) * exp(-d(s_k, y) / sigma), where s_mean is the
    pixel-wise mean of the K samples and y the observed image. Higher is better: samples
    spread around their mean score, but a sample far from y (unfaithful) is discounted by
    the Gaussian-kernel weight, so wild outputs cannot buy diversity.

    Args:
        samples: (K, 3, H, W) in [-1, 1].
        observed: (1, 3, H, W) in [-1, 1].
        sigma: kernel width, in units of the distance; > 0.
    """
    _check_samples(samples, observed)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    mean_image = samples.mean(0, keepdim=True)
    with torch.inference_mode():
        spread = distance(samples, mean_image)
        weight = torch.exp(-distance(samples, observed) / sigma)
    return WeightedVariance(float((spread * weight).mean()), float(sigma))


@dataclass(frozen=True)
class SampleFidelity:
    """How close one input's samples come to its observed image.

    Attributes:
        best: min_k d(s_k, y), the best-of-K distance.
        mean: 1/K * sum_k d(s_k, y).
        best_index: k of the best sample.
    """

    best: float
    mean: float
    best_index: int


def best_and_mean_lpips(samples: torch.Tensor, observed: torch.Tensor,
                        distance: Distance) -> SampleFidelity:
    """Best-of-K and mean distance of the samples to the observed image (see `SampleFidelity`).

    Args:
        samples: (K, 3, H, W) in [-1, 1].
        observed: (1, 3, H, W) in [-1, 1].
    """
    _check_samples(samples, observed)
    with torch.inference_mode():
        distances = distance(samples, observed)
    best_index = int(distances.argmin())
    return SampleFidelity(float(distances[best_index]), float(distances.mean()), best_index)


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB, of [-1, 1] images mapped to [0, 1].

    PSNR = 10 log10(1 / MSE), MSE over the pixels of [0, 1] images (values are clamped
    to the range first). Identical images give +inf.

    Args:
        images: (N, C, H, W); targets: the same shape, or (1, C, H, W) for all.
    Returns:
        (N,) float tensor.
    """
    if images.dim() != 4 or targets.dim() != 4 or images.shape[1:] != targets.shape[1:]:
        raise ValueError(f"expected images (N, C, H, W) and targets of the same image shape, got "
                         f"{tuple(images.shape)} and {tuple(targets.shape)}")
    mse = (to_unit_range(images.double()) - to_unit_range(targets.double())).pow(2).mean((1, 2, 3))
    return (10 * torch.log10(1 / mse)).float()


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler and Suesstrunk's colourfulness M of each RGB image (2003, "Measuring
    colourfulness in natural images"): about 0 for grey, 15 "slightly", 33 "moderately",
    59 "quite", 82 "highly" colourful.

    M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2), with rg = R - G
    and yb = (R + G) / 2 - B on 0..255 values.

    Args:
        images: (N, 3, H, W) in [-1, 1].
    Returns:
        (N,) float tensor.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got {tuple(images.shape)}")
    red, green, blue = (to_unit_range(images.double()) * 255).unbind(1)
    rg, yb = red - green, (red + green) / 2 - blue
    spread = (rg.flatten(1).std(1, unbiased=False) ** 2 + yb.flatten(1).std(1, unbiased=False) ** 2).sqrt()
    offset = (rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2).sqrt()
    return (spread + 0.3 * offset).float()


def tint_share(samples: torch.Tensor) -> float | None:
    """How much of the samples' colour variation is one colour cast per sample: 1 when the
    samples of a photo differ only by a tint of the whole image, near 0 when they colour
    its parts differently (a red cap in one, a blue cap in another, the wall the same).

    In CIELab, each sample's chroma (a, b) minus the samples' mean at every pixel is its
    deviation; the share is the energy of each deviation's spatial mean (the cast) over the
    energy of the deviations. A cast that fades with lightness, as a tint of RGB values
    does, counts partly as local: the measure errs toward calling a tint local, not the
    reverse.

    Args:
        samples: (K, 3, H, W) samples of one photo, RGB in [-1, 1].
    Returns:
        The share in [0, 1]; None for fewer than 2 samples or samples of identical colour.
    """
    if samples.dim() != 4 or samples.shape[1] != 3:
        raise ValueError(f"expected RGB samples (K, 3, H, W), got {tuple(samples.shape)}")
    if samples.shape[0] < 2:
        return None
    chroma = rgb_to_lab(to_unit_range(samples.double()))[:, 1:]
    deviation = chroma - chroma.mean(0, keepdim=True)
    total = deviation.pow(2).mean()
    if total < 1e-12:
        return None
    cast = deviation.mean((2, 3), keepdim=True)
    return float(cast.pow(2).mean() / total)  # both are energies per sample, pixel and channel


# ---------------------------------------------------------------------------------------
# Precision and recall for distributions (PRD)
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PRDScores:
    """Max F_8 (recall-weighted) and max F_1/8 (precision-weighted) over the PRD curve.

    Attributes:
        num_clusters: the number of k-means clusters actually used (see `prd_scores`).
    """

    f_8: float
    f_1_8: float
    num_clusters: int


def prd_curve(real_distribution: np.ndarray, fake_distribution: np.ndarray,
              num_angles: int = 1001, epsilon: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """The PRD curve of two histograms (Sajjadi et al. 2018, eq. 3).

    precision(lambda) = sum_w min(lambda * p_real(w), p_fake(w)), recall(lambda) =
    precision(lambda) / lambda, for lambda = tan(angle) with `num_angles` angles evenly
    spaced in (0, pi/2) (the end points moved in by `epsilon`).

    Returns:
        (precision, recall), each (num_angles,), clipped to [0, 1] (they exceed 1 only by
        rounding).
    """
    slopes = np.tan(np.linspace(epsilon, math.pi / 2 - epsilon, num_angles))  # lambda
    precision = np.minimum(real_distribution[None, :] * slopes[:, None], fake_distribution[None, :]).sum(1)
    recall = precision / slopes
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def f_beta(precision: np.ndarray, recall: np.ndarray, beta: float, epsilon: float = 1e-10) -> np.ndarray:
    """F_beta = (1 + beta^2) P R / (beta^2 P + R): beta > 1 weights recall, beta < 1 precision."""
    return (1 + beta ** 2) * precision * recall / (beta ** 2 * precision + recall + epsilon)


def _cluster_histograms(real: np.ndarray, fake: np.ndarray, num_clusters: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the union of both sets, then each set's share of points per cluster."""
    union = np.concatenate([real, fake])
    with warnings.catch_warnings():
        # An empty cluster only means an empty histogram bin, which the PRD handles.
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        _, labels = kmeans2(union, num_clusters, minit="++", rng=rng)
    real_histogram = np.bincount(labels[:len(real)], minlength=num_clusters) / len(real)
    fake_histogram = np.bincount(labels[len(real):], minlength=num_clusters) / len(fake)
    return real_histogram, fake_histogram


def prd_scores(real_features: torch.Tensor, fake_features: torch.Tensor, num_clusters: int = 20,
               num_angles: int = 1001, num_runs: int = 10, seed: int = 0) -> PRDScores:
    """F_8 and F_1/8 of precision and recall for distributions (Sajjadi et al. 2018).

    Per run: cluster the union of both feature sets into `num_clusters` with k-means
    (k-means++ start, seeded), take each set's histogram over the clusters, and compute
    the PRD curve (`prd_curve`). The curves of `num_runs` runs are averaged, as in the
    authors' reference code, and F_beta (`f_beta`) is maximised over the averaged curve:
    F_8 is high when the fake set covers the real modes (recall), F_1/8 when the fake
    samples lie on real modes (precision).

    k-means weighs the sets by their sizes; the reference code insists on equal sizes, so
    pass sets of similar sizes (repeat the smaller one if need be). With fewer distinct
    points than `num_clusters`, that many clusters are used instead (and recorded).

    Args:
        real_features, fake_features: (N, D) and (M, D).
    """
    _check_features(real_features, fake_features, 1)
    real = real_features.detach().double().cpu().numpy()
    fake = fake_features.detach().double().cpu().numpy()
    distinct = np.unique(np.concatenate([real, fake]), axis=0).shape[0]
    # k-means++ cannot place more centres than there are distinct points.
    clusters = max(1, min(int(num_clusters), distinct))
    rng = np.random.default_rng(seed)
    curves = [prd_curve(*_cluster_histograms(real, fake, clusters, rng), num_angles=num_angles)
              for _ in range(num_runs)]
    precision = np.mean([p for p, _ in curves], axis=0)
    recall = np.mean([r for _, r in curves], axis=0)
    return PRDScores(float(f_beta(precision, recall, 8).max()), float(f_beta(precision, recall, 1 / 8).max()),
                     clusters)


# ---------------------------------------------------------------------------------------
# Mode coverage: IvO error
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IvOError:
    """IvO reconstruction error per input after a fixed number of steps (docs/method.md#ivo-error).

    Attributes:
        mse: (N,) MSE between the reconstruction and the target, images in [-1, 1].
        lpips: (N,) distance between them.
        converged: (N,) bool, mse < threshold.
        threshold: the MSE threshold used.
    """

    mse: torch.Tensor
    lpips: torch.Tensor
    converged: torch.Tensor
    threshold: float


def ivo_error(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
              target: torch.Tensor, config: IvOConfig = IvOConfig(),
              threshold: float = DEFAULT_IVO_THRESHOLD,
              generator: torch.Generator | None = None) -> IvOError:
    """Optimise codes to reconstruct each target (`chimle.ivo.invert`) and report the error.

    A model that covers the target's mode can reconstruct it, so a low final MSE means the
    mode is covered; `converged` is MSE = mean((T(x, z*) - y)^2) < `threshold`.

    Args:
        x: (N, in_channels, h, w) model inputs; target: (N, 3, H, W) in [-1, 1].
    """
    result = invert(net, task, distance, x, target, config, generator=generator)
    return IvOError(result.mse, result.lpips, result.mse < threshold, float(threshold))
