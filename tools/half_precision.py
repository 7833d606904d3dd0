"""How much storing a checkpoint's weights in float16 changes its pictures.

`save_checkpoint(..., half=True)` halves a file; the weights load back as float32, rounded.
This renders the same seeded samples of the held-out crops with the stored weights and with
their float16 rounding, and prints how far apart the two sets of pictures are: in 8-bit
levels (what a saved PNG holds), as PSNR, and as LPIPS. With --convert it then rewrites
each checkpoint with float16 weights (same header and metadata).

    python -m tools.half_precision --checkpoint checkpoints/colourization-cpu.safetensors \\
        --data data/demo/held_out --json half.json [--convert]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from chimle.checkpoint import load_checkpoint, save_checkpoint
from chimle.codes import LatentCodes
from chimle.data import DEFAULT_MAX_SIDE, ImageCorpus, PairedCorpus, validation_batch
from chimle.fileio import atomic_write_json
from chimle.metrics import psnr
from chimle.perceptual import load_perceptual_distance
from chimle.pipeline import PreparedInput, render


def round_to_half(net: torch.nn.Module) -> torch.nn.Module:
    """`net` with every floating-point weight rounded through float16, as a half file loads."""
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return net


def _to_levels(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] RGB to the 0..255 integers a PNG stores."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round()


def compare(checkpoint_path: str, data_dir: str, num_samples: int, crop_size: int, seed: int) -> dict:
    full = load_checkpoint(checkpoint_path)
    half = load_checkpoint(checkpoint_path)
    round_to_half(half.net)
    task, net = full.task, full.net
    corpus = (PairedCorpus if task.paired else ImageCorpus).from_folder(data_dir, max(DEFAULT_MAX_SIDE, crop_size))
    batch = validation_batch(corpus, crop_size, task, len(corpus), seed)
    output_size = task.output_size(tuple(batch.x.shape[-2:]), net.num_levels)
    codes = LatentCodes.sample(net.code_shape(output_size), num_samples, torch.Generator().manual_seed(seed))
    distance = load_perceptual_distance("alex")
    level_differences, psnrs, lpips_values = [], [], []
    for index in range(len(batch.x)):
        prepared = PreparedInput(batch.x[index:index + 1], output_size, output_size)
        a = render(net, task, prepared, codes)[0][-1]
        b = render(half.net, task, prepared, codes)[0][-1]
        level_differences.append((_to_levels(a) - _to_levels(b)).abs().flatten())
        psnrs.append(psnr(a, b))
        with torch.inference_mode():
            lpips_values.append(distance(a, b))
    levels = torch.cat(level_differences)
    finite_psnr = torch.cat(psnrs)[torch.isfinite(torch.cat(psnrs))]
    return {
        "checkpoint": checkpoint_path, "photos": len(batch.x), "samples_per_photo": num_samples,
        "crop_size": crop_size, "seed": seed,
        "max_level_difference": int(levels.max()),
        "mean_level_difference": float(levels.mean()),
        "share_of_values_changed": float((levels > 0).float().mean()),
        "min_psnr_db": float(finite_psnr.min()) if len(finite_psnr) else None,
        "max_lpips": float(torch.cat(lpips_values).max()),
        "bytes_float32": Path(checkpoint_path).stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", required=True)
    parser.add_argument("--data", required=True, help="held-out photos")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--convert", action="store_true", help="then rewrite each checkpoint in float16")
    args = parser.parse_args()
    results = []
    for path in args.checkpoint:
        result = compare(path, args.data, args.num_samples, args.crop_size, args.seed)
        results.append(result)
        print(f"{Path(path).name}: 8-bit levels changed: max {result['max_level_difference']}, "
              f"mean {result['mean_level_difference']:.4f}, {result['share_of_values_changed']:.2%} of values; "
              f"PSNR >= {result['min_psnr_db']:.1f} dB; LPIPS <= {result['max_lpips']:.5f}")
        if args.convert:
            model = load_checkpoint(path)
            save_checkpoint(path, model.net, model.task, model.metadata, half=True)
            print(f"rewrote {path} in float16: {result['bytes_float32']:,} -> {Path(path).stat().st_size:,} bytes")
    if args.json:
        atomic_write_json(args.json, {"results": results})


if __name__ == "__main__":
    main()
