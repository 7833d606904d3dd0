"""Forward-pass time per preset and size, and incremental re-render time per edited level.

    python -m benchmarks.forward_time [--sizes 128 256] [--repeats 5] [--threads N]

Prints a Markdown table: parameters, the semantic prior's cost (AlexNet maps, computed
once per photo), median full render given those maps, and median re-render after editing
each level (the studio's slider path), batch 1, CPU, inference mode.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from chimle.codes import LatentCodes
from chimle.config import preset
from chimle.model import TowerImplicitModel, count_parameters


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu", "gpu"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print("| preset | parameters | size | semantic maps, once per photo (s) | full render (s) | "
          "re-render after editing level 1..L (s) |")
    print("|---|---|---|---|---|---|")
    for name in args.presets:
        torch.manual_seed(0)
        net = TowerImplicitModel(preset(name, 1, 2)).eval()
        for size in args.sizes:
            x = torch.rand(1, 1, size, size) * 2 - 1
            codes = LatentCodes.sample(net.code_shape((size, size)), 1, torch.Generator().manual_seed(0))
            with torch.inference_mode():
                sizes = codes.shape.local_sizes
                encode = median_seconds(lambda: net.encode(x, sizes), args.repeats) if net.semantic else 0.0
                context = net.encode(x, sizes)
                full = median_seconds(lambda: net.render(x, codes, context=context), args.repeats)
                cached = net.render(x, codes, context=context)
                partial = [median_seconds(lambda level=level: net.render(x, codes, reuse=cached, start_level=level),
                                          args.repeats) for level in range(net.num_levels)]
            semantic = f"{encode:.3f}" if net.semantic else "no prior"
            print(f"| {name} | {count_parameters(net):,} | {size} | {semantic} | {full:.3f} | "
                  + " / ".join(f"{t:.3f}" for t in partial) + " |")


if __name__ == "__main__":
    main()
