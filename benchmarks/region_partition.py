"""How sharply a model's region styles and region codes divide photos into regions.

    python -m benchmarks.region_partition --checkpoint checkpoints/colourization-cpu.safetensors \
        --data ../shared/data/test/kodak24 --images 8 --crop-size 256

Region styles (`ModelConfig.region_styles`) and region codes (`ModelConfig.region_codes`)
only let a code colour objects apart if their soft weights divide the photo: a partition
whose weights are about 1/K everywhere gives every region the whole photo, and the model can
only tint. For every partition of the model (each AdaIN's region styles, level 1's region
pool), over center crops of the photos:

- entropy: the weights' entropy per pixel in nats, mean over pixels (log K: uniform, 0: hard);
- strongest: the mean weight of each pixel's strongest region (1/K: uniform, 1: hard);
- occupied: regions that are the strongest somewhere on at least 1% of the pixels.

Prints a table and writes region_partition-<checkpoint name>.json under --out.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
from pathlib import Path

import torch

from benchmarks.sample_efficiency import held_out_batch
from chimle.checkpoint import load_checkpoint
from chimle.fileio import atomic_write_json
from chimle.model import TowerImplicitModel

# A region counts as occupied when it is the strongest on this share of the pixels.
OCCUPIED_SHARE = 0.01


def weight_stats(weights: torch.Tensor) -> dict:
    """Sharpness of (1, K, h, w) soft region weights (summing to 1 per pixel)."""
    regions = weights.shape[1]
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(1).mean()
    strongest = weights.argmax(1).flatten()
    shares = torch.bincount(strongest, minlength=regions).float() / strongest.numel()
    return {"entropy": float(entropy), "max_entropy": math.log(regions),
            "strongest": float(weights.max(1).values.mean()),
            "occupied": int((shares >= OCCUPIED_SHARE).sum())}


def partitions(net: TowerImplicitModel, x: torch.Tensor, output_size: tuple[int, int]) -> dict[str, dict]:
    """Each partition's `weight_stats` for one input x (1, C, h, w) whose output is
    `output_size`, named by where it is."""
    if net.semantic is None:
        raise ValueError("the model has no semantic prior, so no region styles or region codes")
    with torch.inference_mode():
        semantic = net.encode(x, net.code_shape(output_size).local_sizes)
        found = {}
        for index, level in enumerate(net.levels):
            if level.region_pool is not None:
                kind = "learned" if level.region_pool.logits is not None else "k-means"
                found[f"level {index + 1} region codes ({kind})"] = weight_stats(
                    level.region_pool.region_weights(semantic[index]))
            for number, adain in enumerate(level.adains):
                if adain.region_logits is not None:
                    found[f"level {index + 1} AdaIN {number + 1} region styles"] = weight_stats(
                        adain.region_weights(semantic[index]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=0, help="photos downscaled to this first; 0: own size")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    loaded = load_checkpoint(args.checkpoint)
    net = loaded.net.eval()
    batch, names = held_out_batch(loaded.task, args.data, args.crop_size, args.images, args.max_side)
    output_size = tuple(batch.y.shape[-2:])
    per_photo = [partitions(net, batch.x[index:index + 1], output_size) for index in range(len(names))]
    print(f"{args.checkpoint}, {len(names)} photos of {args.data}, {args.crop_size} px center crops")
    print("| partition | entropy (nats; uniform = log K) | strongest weight | occupied regions |")
    print("|---|---|---|---|")
    summary = {}
    for name in per_photo[0] if per_photo else []:
        values = {key: statistics.mean(photo[name][key] for photo in per_photo)
                  for key in ("entropy", "max_entropy", "strongest", "occupied")}
        summary[name] = values
        print(f"| {name} | {values['entropy']:.2f} of {values['max_entropy']:.2f} | {values['strongest']:.2f} "
              f"| {values['occupied']:.1f} |")
    out = Path(args.out) / f"region_partition-{Path(args.checkpoint).stem}.json"
    atomic_write_json(out, {"checkpoint": args.checkpoint, "data": args.data, "photos": names,
                            "crop_size": args.crop_size, "summary": summary, "per_photo": per_photo,
                            "machine": platform.processor() or platform.machine()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
