"""Sample efficiency, the paper's Figure 2: how many cIMLE samples match one CHIMLE search.

    OMP_NUM_THREADS=1 python -m benchmarks.sample_efficiency
        [--checkpoint checkpoints/colourization-cpu.safetensors] [--data data/demo/held_out]
        [--crop-size 64] [--images 2] [--max-side 512] [--max-samples 10000] [--seeds 8]
        [--out benchmarks/results]

On held-out photos (center crops), with a trained checkpoint:

- cIMLE: draw `max-samples` whole codes per image once and score every output against the
  true photo (LPIPS). The curve "best of N" is reported two ways: the running minimum in the
  order drawn, and its exact mean over all orderings of the same draws (the expected
  minimum of N draws without replacement), which is smooth and needs no extra renders.
- CHIMLE with the training budget per level (12, 6, 4 for the shipped models) and the
  paper's ablations (section 3.3): without iterative construction (IC); then also without
  partial evaluation (PE); then also without code division (CD), which is cIMLE with
  sum(m_l) samples. Each is run with several seeds and its final distance averaged.
- Cost: every search is priced in full-render equivalents, its FLOPs (generator and the
  LPIPS scoring, as `chimle.search` performs them) divided by those of one cIMLE candidate
  (a full render scored at full size). The factor is the number of cIMLE samples whose
  expected best distance is as small as CHIMLE's mean distance.

Distances are LPIPS-alex, which needs 32 px. A 3-level model's coarsest output is crop / 4,
so partial evaluation at crops below 128 scores the small levels upsampled (bilinear, image
and target alike) to 32 px; the final level, and so every reported distance, is scored at
full size. The defaults (64 px, 2 photos, 10,000 samples each, 8 seeds) take about 13
minutes of one idle core (a sample costs about 0.036 CPU-seconds on a 2-core AMD EPYC VM);
--crop-size 128 is the training crop and needs no upsampling, at about four times the cost
per sample. Writes sample_efficiency.json, .table.md and .png under --out (--stem renames them).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.special import gammaln

from benchmarks.render_speed import count_flops, inference_copy
from chimle.checkpoint import load_checkpoint
from chimle.codes import LatentCodes
from chimle.data import DEFAULT_MAX_SIDE, ImageCorpus, PairedCorpus, validation_batch
from chimle.fileio import atomic_write_text
from chimle.imageops import resize
from chimle.model import TowerImplicitModel
from chimle.perceptual import MIN_IMAGE_SIZE, load_perceptual_distance
from chimle.search import SearchConfig, chimle_search, level_targets
from chimle.tasks import Task

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_CHECKPOINT = "checkpoints/colourization-cpu.safetensors"
DEFAULT_DATA = "data/demo/held_out"
# The budget the shipped cpu checkpoints were trained with (their model cards).
TRAINING_BUDGET = (12, 6, 4)


class UpsampledDistance:
    """A distance that upsamples images smaller than `min_size` (with their targets) first.

    LPIPS-alex cannot score images under 32 px; partial evaluation at small crops needs it.
    Images of at least `min_size` pass through unchanged.
    """

    def __init__(self, distance: Distance, min_size: int) -> None:
        self.distance = distance
        self.min_size = min_size

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if min(height, width) < self.min_size:
            scale = self.min_size / min(height, width)
            size = (math.ceil(height * scale), math.ceil(width * scale))
            images, targets = resize(images, size), resize(targets, size)
        return self.distance(images, targets)


# -- cIMLE: many draws, best of N -------------------------------------------------------------

def draw_cimle_distances(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                         y: torch.Tensor, num_samples: int, generator: torch.Generator,
                         chunk_size: int = 32) -> torch.Tensor:
    """Distances to y of `num_samples` full samples for one input, in the order drawn.

    Codes are drawn one at a time, so which codes are scored does not depend on `chunk_size`.

    Args:
        x: (1, in_channels, h, w) one input.
        y: (1, 3, H, W) its observed image in [-1, 1].
    Returns:
        (num_samples,) float64 distances.
    """
    if x.shape[0] != 1 or y.shape[0] != 1:
        raise ValueError(f"expected one input and one target, got batches {x.shape[0]} and {y.shape[0]}")
    shape = net.code_shape(tuple(y.shape[-2:]))
    distances = []
    with torch.inference_mode():
        for begin in range(0, num_samples, chunk_size):
            count = min(chunk_size, num_samples - begin)
            codes = LatentCodes.cat([LatentCodes.sample(shape, 1, generator) for _ in range(count)])
            xs = x.expand(count, -1, -1, -1)
            images = task.to_rgb(xs, net.render(xs, codes).outputs[-1])
            distances.append(distance(images, y))  # y has batch 1: its features are computed once
    return torch.cat(distances).double()


def running_minimum(distances: torch.Tensor) -> torch.Tensor:
    """Best distance among the first N draws, for N = 1 .. len(distances)."""
    return torch.cummin(distances, 0).values


def expected_best_of(distances: torch.Tensor, counts: Sequence[int]) -> np.ndarray:
    """Mean over all orderings of the draws of the best distance among the first N.

    Equals the expected minimum of N draws taken without replacement from `distances`:
    with the draws sorted, s_1 <= ... <= s_M, the minimum is at least s_k exactly when all
    N draws avoid the k - 1 smallest, which has probability C(M - k + 1, N) / C(M, N).

    Returns:
        float64 array, one value per entry of `counts` (each in 1 .. M).
    """
    s = np.sort(distances.double().cpu().numpy())
    total = len(s)
    ranks = np.arange(2, total + 1)  # k = 2 .. M
    result = []
    for n in counts:
        if not 1 <= n <= total:
            raise ValueError(f"N must be in 1..{total}, got {n}")
        remaining = total - ranks + 1  # M - k + 1
        log_p = np.full(len(ranks), -np.inf)
        ok = remaining >= n
        log_p[ok] = (_log_comb(remaining[ok], n) - _log_comb(np.array([total]), n))
        # E[min] = s_1 + sum_{k >= 2} P(min >= s_k) (s_k - s_{k-1})
        result.append(s[0] + float(np.sum(np.exp(log_p) * np.diff(s))))
    return np.array(result)


def _log_comb(n: np.ndarray, k: int) -> np.ndarray:
    """log C(n, k), elementwise."""
    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def samples_to_match(per_image: Sequence[torch.Tensor], target: float) -> int | None:
    """Smallest N whose expected best-of-N distance, averaged over images, is <= target.

    None when even all draws do not reach it (the factor is then above the draw count).
    """
    total = min(len(d) for d in per_image)

    def mean_best(n: int) -> float:
        return float(np.mean([expected_best_of(d[:total], [n])[0] for d in per_image]))

    if mean_best(total) > target:
        return None
    low, high = 1, total  # the curve is non-increasing in N: bisect for the first N below
    while low < high:
        middle = (low + high) // 2
        if mean_best(middle) <= target:
            high = middle
        else:
            low = middle + 1
    return low


# -- cost in full-render equivalents ----------------------------------------------------------

@dataclass(frozen=True)
class SearchCosts:
    """FLOPs per sample of each level's render and of one LPIPS scoring at each level's size.

    Attributes:
        render: FLOPs of rendering level l alone (its mapping network and local stream).
        score: FLOPs of judging level l's output: its conversion to RGB (a colour-space
            matrix for colourization) and one distance to its target (both images through the
            LPIPS trunk, as the search does, plus the comparison).
    """

    render: tuple[int, ...]
    score: tuple[int, ...]

    @property
    def full_sample(self) -> int:
        """One cIMLE candidate: a full render scored at full size (the cost unit)."""
        return sum(self.render) + self.score[-1]


def measure_search_costs(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                         y: torch.Tensor) -> SearchCosts:
    """Per-level render and scoring FLOPs for one input x (1, ...) and target y (1, 3, H, W)."""
    codes = LatentCodes.sample(net.code_shape(tuple(y.shape[-2:])), 1, torch.Generator().manual_seed(0))
    targets = level_targets(net, y)
    with torch.inference_mode():
        full = net.render(x, codes)
        render = tuple(count_flops(lambda level=level: net.render(x, codes, upto=level + 1, reuse=full,
                                                                  start_level=level), net)
                       for level in range(net.num_levels))
        score = tuple(count_flops(lambda out=out, target=target: distance(task.to_rgb(x, out), target))
                      for out, target in zip(full.outputs, targets))
    return SearchCosts(render, score)


def search_flops(costs: SearchCosts, config: SearchConfig) -> int:
    """FLOPs per image of `chimle_search` with `config`, excluding its final re-scoring.

    Mirrors the search: a component's candidates render from the first level that is not
    shared (IC renders the fixed coarser levels once per image as a prefix) up to the level
    they are judged at (their own with PE, the last without), and are scored there once each.
    Without IC or PE the search re-scores the chosen code at every level to report its
    distances; that is bookkeeping, not search, and is not counted.
    """
    levels = len(costs.render)
    if config.code_division:
        components = [(level, level, m) for level, m in enumerate(config.samples_per_level)]
    else:
        components = [(0, levels - 1, config.total_candidates)]
    total = 0
    for first, last, count in components:
        upto = last + 1 if config.partial_evaluation else levels
        start = first if config.iterative_construction and first > 0 else 0
        total += sum(costs.render[:start])  # the shared prefix, once per image
        total += count * (sum(costs.render[start:upto]) + costs.score[upto - 1])
    return total


# -- the benchmark ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str
    config: SearchConfig


def ablation_variants(budget: Sequence[int], chunk_size: int = 32) -> list[Variant]:
    """CHIMLE and the paper's ablation: drop IC, then also PE, then also CD (= cIMLE)."""
    budget = tuple(budget)
    return [
        Variant("CHIMLE", SearchConfig(budget, True, True, True, chunk_size)),
        Variant("- IC", SearchConfig(budget, False, True, True, chunk_size)),
        Variant("- IC - PE", SearchConfig(budget, False, False, True, chunk_size)),
        Variant("- IC - PE - CD (cIMLE)", SearchConfig(budget, False, False, False, chunk_size)),
    ]


def curve_points(max_samples: int) -> list[int]:
    """About 20 log-spaced N per decade from 1 to max_samples, both included."""
    points = np.unique(np.round(np.logspace(0, math.log10(max_samples), 20 * max(1, round(math.log10(max_samples))) + 1)))
    return sorted({int(p) for p in points} | {max_samples})


def run_sample_efficiency(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                          y: torch.Tensor, max_samples: int, budget: Sequence[int], seeds: int,
                          chunk_size: int = 32, progress: Callable[[str], None] | None = None) -> dict:
    """The whole measurement on a batch of inputs x (B, ...) and observed images y (B, 3, H, W).

    Returns a JSON-ready dict: the cIMLE draws and curves, every variant's distances and
    cost, and the number of cIMLE samples matching each variant (None: more than drawn).
    """
    say = progress or (lambda message: None)
    batch = x.shape[0]
    started = time.perf_counter()
    draws = []
    for image in range(batch):
        generator = torch.Generator().manual_seed(1_000_003 * (image + 1))
        draws.append(draw_cimle_distances(net, task, distance, x[image:image + 1], y[image:image + 1],
                                          max_samples, generator, chunk_size))
        say(f"cIMLE: image {image + 1}/{batch}, {max_samples} samples, {time.perf_counter() - started:.0f} s")
    cimle_seconds = time.perf_counter() - started

    counts = curve_points(max_samples)
    expected = np.array([expected_best_of(d, counts) for d in draws])  # (B, len(counts))
    drawn_order = torch.stack([running_minimum(d) for d in draws]).numpy()  # (B, max_samples)

    costs = measure_search_costs(net, task, distance, x[:1], y[:1])
    variants = []
    started = time.perf_counter()
    for variant in ablation_variants(budget, chunk_size):
        finals = []
        for seed in range(seeds):
            result = chimle_search(net, task, distance, x, y, variant.config, torch.Generator().manual_seed(seed))
            finals.append(result.distances[:, -1].double())
        finals = torch.stack(finals, 1)  # (B, seeds)
        mean = float(finals.mean())
        match = samples_to_match(draws, mean)
        cost = search_flops(costs, variant.config) / costs.full_sample
        variants.append({
            "name": variant.name,
            "iterative_construction": variant.config.iterative_construction,
            "partial_evaluation": variant.config.partial_evaluation,
            "code_division": variant.config.code_division,
            "samples_per_level": list(variant.config.samples_per_level),
            "candidates": variant.config.total_candidates,
            "cost_full_renders": cost,
            "distance_mean": mean,
            # spread of the per-seed means over images: how much the result varies with the seed
            "distance_seed_sd": float(finals.mean(0).std()) if seeds > 1 else 0.0,
            "distance_per_image": finals.mean(1).tolist(),
            "cimle_samples_to_match": match,
            "matched_per_image": [samples_to_match([d], float(f)) for d, f in zip(draws, finals.mean(1))],
        })
        say(f"{variant.name}: LPIPS {mean:.4f}, cost {cost:.2f} full renders, "
            f"matched by {match if match is not None else f'> {max_samples}'} cIMLE samples")
    return {
        "max_samples": max_samples,
        "seeds": seeds,
        "budget": list(budget),
        "curve_n": counts,
        "cimle_expected_best": expected.mean(0).tolist(),
        "cimle_expected_best_per_image": expected.tolist(),
        "cimle_drawn_order_best": drawn_order.mean(0)[[n - 1 for n in counts]].tolist(),
        "cimle_draws": [[round(v, 6) for v in d.tolist()] for d in draws],
        "costs_flops": {"render_per_level": list(costs.render), "score_per_level": list(costs.score),
                        "full_sample": costs.full_sample},
        "variants": variants,
        "seconds": {"cimle_draws": cimle_seconds, "searches": time.perf_counter() - started},
    }


# -- reporting --------------------------------------------------------------------------------

def _match_text(match: int | None, max_samples: int) -> str:
    return f"> {max_samples:,}" if match is None else f"{match:,}"


def markdown_table(result: dict) -> str:
    lines = ["| search | candidates | cost (full renders) | best LPIPS (mean over images) | seed sd | "
             "cIMLE samples to match | match / cost |",
             "|---|---|---|---|---|---|---|"]
    for v in result["variants"]:
        match = v["cimle_samples_to_match"]
        ratio = "-" if match is None else f"{match / v['cost_full_renders']:.1f}x"
        lines.append(f"| {v['name']} {tuple(v['samples_per_level'])} | {v['candidates']} | "
                     f"{v['cost_full_renders']:.2f} | {v['distance_mean']:.4f} | {v['distance_seed_sd']:.4f} | "
                     f"{_match_text(match, result['max_samples'])} | {ratio} |")
    lines += ["", "| cIMLE N | expected best LPIPS (mean over orderings) | best in the drawn order |", "|---|---|---|"]
    for n in sorted({1, 10, sum(result["budget"]), 100, 1000, 10000, result["max_samples"]}):
        if n <= result["max_samples"]:
            index = result["curve_n"].index(n) if n in result["curve_n"] else None
            expected = (result["cimle_expected_best"][index] if index is not None else
                        float(np.mean([expected_best_of(torch.tensor(d), [n])[0] for d in result["cimle_draws"]])))
            drawn = float(np.mean([min(d[:n]) for d in result["cimle_draws"]]))
            lines.append(f"| {n:,} | {expected:.4f} | {drawn:.4f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    n = np.array(result["curve_n"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for per_image in result["cimle_expected_best_per_image"]:
        ax.plot(n, per_image, color="tab:blue", alpha=0.2, linewidth=0.8)
    ax.plot(n, result["cimle_drawn_order_best"], color="tab:blue", linestyle=":", linewidth=1,
            label="cIMLE, best in the order drawn")
    ax.plot(n, result["cimle_expected_best"], color="tab:blue", linewidth=2,
            label="cIMLE, best of N (mean over orderings and images)")
    markers = ["*", "o", "s", "^"]
    colours = ["tab:red", "tab:orange", "tab:green", "tab:purple"]
    for v, marker, colour in zip(result["variants"], markers, colours):
        ax.errorbar(v["cost_full_renders"], v["distance_mean"], yerr=v["distance_seed_sd"], fmt=marker,
                    color=colour, markersize=11 if marker == "*" else 7, capsize=3,
                    label=f"{v['name']}: cost {v['cost_full_renders']:.1f}")
    chimle = result["variants"][0]
    ax.axhline(chimle["distance_mean"], color="tab:red", linestyle="--", linewidth=0.8)
    if chimle["cimle_samples_to_match"] is not None:
        ax.axvline(chimle["cimle_samples_to_match"], color="tab:red", linestyle="--", linewidth=0.8)
        ax.annotate(f"cIMLE needs {chimle['cimle_samples_to_match']:,}", (chimle["cimle_samples_to_match"],
                    chimle["distance_mean"]), textcoords="offset points", xytext=(6, 8), color="tab:red")
    ax.set_xscale("log")
    ax.set_xlabel("samples (cIMLE) / cost in full-render equivalents (searches)")
    ax.set_ylabel("LPIPS of the best sample to the true photo")
    ax.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def held_out_batch(task: Task, data: str, crop_size: int, images: int, max_side: int = DEFAULT_MAX_SIDE):
    """Center crops of the first `images` held-out photos (as `chimle eval` takes them), the
    photos first fitted to `max_side` (0: their own size)."""
    max_side = max(max_side or 10 ** 6, crop_size)  # as `chimle eval` does
    corpus = (PairedCorpus.from_folder(data, max_side) if task.paired
              else ImageCorpus.from_folder(data, max_side))
    files = [target for _, target in corpus.pairs] if task.paired else corpus.paths
    count = min(images, len(corpus))
    return validation_batch(corpus, crop_size, task, count, seed=0), [Path(f).name for f in files[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--max-samples", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=8, help="CHIMLE and ablation runs per image")
    parser.add_argument("--budget", type=int, nargs="+", default=list(TRAINING_BUDGET),
                        help="CHIMLE samples per level (the training budget)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help="photos fitted to this side before the crop; 0: their own size (as eval --max-side 0)")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--stem", default="sample_efficiency",
                        help="the written files' name: STEM.json, STEM.png and STEM.table.md")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    # Weight norm folded and channels-last: the same outputs to float rounding (render_speed.py).
    net, task = inference_copy(checkpoint.net), checkpoint.task
    distance = UpsampledDistance(load_perceptual_distance("alex"), MIN_IMAGE_SIZE["alex"])
    batch, files = held_out_batch(task, args.data, args.crop_size, args.images, args.max_side)
    sizes = [2 * h for h, _ in net.code_shape((args.crop_size, args.crop_size)).local_sizes]
    upsampled = [s for s in sizes if s < MIN_IMAGE_SIZE["alex"]]
    fitted = "at their own size" if args.max_side == 0 else f"fitted to {args.max_side} px"
    settings = (f"{Path(args.checkpoint).name}, {len(files)} held-out photos {fitted}, {args.crop_size} px center crops, "
                f"cIMLE {args.max_samples:,} samples per photo, CHIMLE budget {tuple(args.budget)}, "
                f"{args.seeds} seeds, LPIPS-alex, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"settings: {settings}")
    print(f"level output sizes {sizes} px" + (f"; partial outputs of {upsampled} px are scored upsampled to "
                                              f"{MIN_IMAGE_SIZE['alex']} px" if upsampled else ""))
    print(f"photos: {', '.join(files)}", flush=True)

    result = run_sample_efficiency(net, task, distance, batch.x, batch.y, args.max_samples, args.budget,
                                   args.seeds, args.chunk_size, progress=lambda m: print(m, flush=True))
    result.update(settings=settings, checkpoint=args.checkpoint, photos=files, crop_size=args.crop_size,
                  max_side=args.max_side,
                  level_output_sizes=sizes, scored_upsampled_to=MIN_IMAGE_SIZE["alex"] if upsampled else None,
                  threads=torch.get_num_threads(), machine=f"{platform.machine()} {platform.processor()}".strip(),
                  date=time.strftime("%Y-%m-%d"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{args.stem}.json", json.dumps(result, indent=1) + "\n")
    chimle = result["variants"][0]
    factor = chimle["cimle_samples_to_match"]
    table = markdown_table(result)
    atomic_write_text(out / f"{args.stem}.table.md", f"{settings}\n\n{table}\n")
    print()
    print(table)
    print(f"\nfactor: cIMLE needs {_match_text(factor, args.max_samples)} samples to match CHIMLE's "
          f"{chimle['candidates']} candidates ({chimle['cost_full_renders']:.2f} full-render equivalents)")
    print(f"time: cIMLE draws {result['seconds']['cimle_draws']:.0f} s, searches {result['seconds']['searches']:.0f} s")
    plot(result, out / f"{args.stem}.png", settings)
    print(f"wrote {out / args.stem}.json, .table.md and .png")


if __name__ == "__main__":
    main()
