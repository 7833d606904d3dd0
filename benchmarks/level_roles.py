"""What each level's code decides, and how well its partial output ranks search candidates.

    python -m benchmarks.level_roles --checkpoint checkpoints/colourization-cpu.safetensors \
        --data ../shared/data/test/kodak24 --images 8 --crop-size 256 --max-side 0

CHIMLE's search can only be as good as its coarse choices (docs/method.md#chimle): it fixes
level 1's code from level 1's partial output before it has seen the finer ones. For each
photo (a center crop, degraded as the model's task), two measurements per level l:

- decides: the diversity of the final outputs (mean pairwise LPIPS) when only level l's
  code is re-drawn, the other levels fixed to one random code, as a share of the
  diversity when every level is re-drawn. Shares near 1 for level 1 and near 0 for the
  others mean level 1 decides nearly everything users see vary. The same share for its
  global code alone and its local code alone says which stream carries it, and the tint
  share of those redraws (`chimle.metrics.tint_share`) whether it recolours the photo's
  objects or tints the whole photo.
- ranks: the Spearman correlation, across `--codes` random whole codes, between level l's
  partial distance (its output against the photo downsampled to its size: what the search
  judges it by) and the final distance. 1 means choosing by the partial output is as good
  as choosing by the final one; the search's efficiency rests on it.

Prints a table (mean and spread over photos) and writes level_roles.json under --out.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from benchmarks.sample_efficiency import UpsampledDistance, held_out_batch
from chimle.checkpoint import load_checkpoint
from chimle.codes import LatentCodes
from chimle.fileio import atomic_write_json
from chimle.model import TowerImplicitModel
from chimle.perceptual import MIN_IMAGE_SIZE, load_perceptual_distance
from chimle.metrics import tint_share
from chimle.search import Distance, level_targets
from chimle.tasks import Task


def _finals(net: TowerImplicitModel, task: Task, x: torch.Tensor, codes: LatentCodes, chunk: int) -> torch.Tensor:
    """Every code's final output for input x (1, C, h, w): (N, 3, H, W)."""
    images = []
    for begin in range(0, codes.batch_size, chunk):
        part = codes[begin:begin + chunk]
        xs = x.expand(part.batch_size, -1, -1, -1)
        images.append(task.to_rgb(xs, net.render(xs, part).outputs[-1]))
    return torch.cat(images)


def mean_pairwise(distance: Distance, images: torch.Tensor) -> float:
    """Mean LPIPS over all pairs of `images` (N, 3, H, W)."""
    pairs = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images))]
    first = torch.stack([images[i] for i, _ in pairs])
    second = torch.stack([images[j] for _, j in pairs])
    return float(distance(first, second).mean())


def level_roles(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor, y: torch.Tensor,
                codes: int, redraws: int, generator: torch.Generator, chunk: int = 16) -> dict:
    """Both measurements for one photo: x (1, C, h, w), y (1, 3, H, W). Returns per-level lists."""
    shape = net.code_shape(tuple(y.shape[-2:]))
    with torch.inference_mode():
        # decides: re-draw one level at a time around one random code.
        base = LatentCodes.sample(shape, 1, generator)
        all_redrawn = _finals(net, task, x, LatentCodes.sample(shape, redraws, generator), chunk)
        everything = mean_pairwise(distance, all_redrawn)
        decides = {"both": [], "global": [], "local": []}
        tints = {"all_levels": tint_share(all_redrawn), "global": [], "local": []}
        for level in range(net.num_levels):
            g, loc = LatentCodes.sample_level(shape, level, redraws, generator)
            around = base.repeat_interleave(redraws)
            for part, varied in (("both", around.with_level(level, g, loc)),
                                 ("global", around.with_level(level, global_code=g)),
                                 ("local", around.with_level(level, local_code=loc))):
                if part == "global" and not shape.global_dim:
                    decides[part].append(0.0)
                    tints[part].append(None)
                    continue
                finals = _finals(net, task, x, varied, chunk)
                decides[part].append(mean_pairwise(distance, finals) / everything)
                if part != "both":
                    tints[part].append(tint_share(finals))
        # ranks: partial against final distance over random whole codes.
        targets = level_targets(net, y)
        drawn = LatentCodes.sample(shape, codes, generator)
        partial = [[] for _ in range(net.num_levels)]
        for begin in range(0, codes, chunk):
            part = drawn[begin:begin + chunk]
            xs = x.expand(part.batch_size, -1, -1, -1)
            for level, output in enumerate(net.render(xs, part).outputs):
                partial[level].append(distance(task.to_rgb(xs, output), targets[level]))
        partial = [torch.cat(scores) for scores in partial]
        ranks = [float(spearmanr(scores.numpy(), partial[-1].numpy()).statistic) for scores in partial]
    return {"decides": decides["both"], "decides_global": decides["global"], "decides_local": decides["local"],
            "tint_share": tints, "ranks": ranks, "diversity_all_levels": everything}


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _mean_of(values: list[float | None]) -> str:
    """The mean of the measured values ("-" where none was: grey samples have no tint share)."""
    measured = [value for value in values if value is not None]
    return f"{statistics.mean(measured):.2f}" if measured else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=0, help="photos downscaled to this first; 0: own size")
    parser.add_argument("--codes", type=int, default=64, help="random whole codes ranked per photo")
    parser.add_argument("--redraws", type=int, default=8, help="codes per diversity measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    tic = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint)
    net, task = loaded.net, loaded.task
    # Partial outputs smaller than LPIPS-alex's minimum are scored upsampled, as the search does.
    distance = UpsampledDistance(load_perceptual_distance("alex"), MIN_IMAGE_SIZE["alex"])
    batch, names = held_out_batch(task, args.data, args.crop_size, args.images, args.max_side)
    generator = torch.Generator().manual_seed(args.seed)
    photos = []
    for index, name in enumerate(names):
        roles = level_roles(net, task, distance, batch.x[index:index + 1], batch.y[index:index + 1],
                            args.codes, args.redraws, generator)
        photos.append({"file": name, **roles})
        print(f"{name}: decides {[round(v, 2) for v in roles['decides']]}, "
              f"ranks {[round(v, 2) for v in roles['ranks']]}", flush=True)

    print(f"\n{args.checkpoint}, {len(names)} photos of {args.data}, {args.crop_size} px center crops, "
          f"{args.codes} codes ranked and {args.redraws} per diversity, seed {args.seed}")
    print("| level | output size | decides: diversity share (mean, min-max) | its global code alone | its local code "
          "alone | tint share of global / local redraws | ranks: Spearman with final (mean, min-max) |")
    print("|---|---|---|---|---|---|---|")
    size = args.crop_size
    for level in range(net.num_levels):
        side = size // 2 ** (net.num_levels - 1 - level)
        tints = [_mean_of([photo["tint_share"][part][level] for photo in photos]) for part in ("global", "local")]
        print(f"| {level + 1} | {side} px | {_spread([photo['decides'][level] for photo in photos])} "
              f"| {_spread([photo['decides_global'][level] for photo in photos])} "
              f"| {_spread([photo['decides_local'][level] for photo in photos])} | {tints[0]} / {tints[1]} "
              f"| {_spread([photo['ranks'][level] for photo in photos])} |")
    print(f"tint share when every level is redrawn: "
          f"{_mean_of([photo['tint_share']['all_levels'] for photo in photos])}")
    record = {"checkpoint": args.checkpoint, "data": args.data, "crop_size": args.crop_size,
              "max_side": args.max_side, "codes": args.codes, "redraws": args.redraws, "seed": args.seed,
              "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "seconds": round(time.perf_counter() - tic, 1), "photos": photos}
    out = Path(args.out) / f"level_roles-{Path(args.checkpoint).stem}.json"
    atomic_write_json(out, record)
    print(f"wrote {out} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
