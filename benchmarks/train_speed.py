"""Training speed of a preset on real photos: images/s, share of time in search, peak memory.

    python -m benchmarks.train_speed --data data/demo/train [--preset cpu] [--steps 48]
        [--method chimle cimle zero]

Runs the real trainer (`chimle.train.train`) for a few pools into a temporary run folder
per method and prints a Markdown table from its metrics. CHIMLE and cIMLE get equal
candidate budgets (cIMLE draws sum(samples_per_level) full samples); `zero` is the
unimodal baseline (every code zero, no search). The seconds per step give the step counts
that make two methods cost the same wall time.
"""

from __future__ import annotations

import argparse
import resource
import tempfile

from chimle.runs import RunPaths, read_metrics
from chimle.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--task", default="colourization")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--method", nargs="+", choices=["chimle", "cimle", "zero"], default=["chimle", "cimle"])
    args = parser.parse_args()
    print("| method | preset | crop | batch | pool | images/s | search share | s/step | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in args.method:
        zero_codes = method == "zero"
        config = TrainConfig(task=args.task, data=args.data, preset=args.preset,
                             method="chimle" if zero_codes else method, zero_codes=zero_codes,
                             steps=args.steps, held_out_fraction=0.0, sample_every=10 ** 6,
                             checkpoint_every=10 ** 6, snapshot_every=10 ** 6, log_every=args.steps)
        with tempfile.TemporaryDirectory() as run:
            train(config, run, progress=False)
            last = read_metrics(RunPaths(run))[-1]
        seconds = last["search_seconds"] + last["update_seconds"]
        images = args.steps * config.batch_size
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {method} | {args.preset} | {config.crop_size} | {config.batch_size} | {config.pool_size} | "
              f"{images / seconds:.2f} | {last['search_share']:.0%} | {seconds / args.steps:.2f} | {peak_mb:.0f} |")


if __name__ == "__main__":
    main()
