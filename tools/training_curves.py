"""Compare runs step for step: the finest level's searched distance and loss, averaged per window.

    python -m tools.training_curves runs/colour-cpu runs/colour-cimle runs/colour-zero --window 100

The searched distance is the LPIPS of the code the search picked for a training crop,
before the update: how close the model's best sample already was. It falling means the
model has learned to put the photos' variation into its codes. Runs with `--zero-codes`
search nothing, so they show no distance. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from chimle.runs import RunPaths, read_metrics


def window_means(metrics: list[dict], window: int) -> dict[int, tuple[float | None, float]]:
    """{last step of the window: (mean searched distance or None, mean loss)} at the finest level."""
    windows: dict[int, list[dict]] = {}
    for record in metrics:
        if "loss_per_level" in record:
            end = -(-record["step"] // window) * window  # the window's last step (ceil)
            windows.setdefault(end, []).append(record)
    means = {}
    for end, records in sorted(windows.items()):
        searched = [r["search_distance_per_level"][-1] for r in records if r.get("search_distance_per_level")]
        distance = statistics.mean(searched) if searched and any(searched) else None
        means[end] = (distance, statistics.mean(r["loss_per_level"][-1] for r in records))
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--window", type=int, default=100, help="steps per row")
    args = parser.parse_args()

    curves = {run: window_means(read_metrics(RunPaths(run)), args.window) for run in args.runs}
    header = "| steps | " + " | ".join(f"{run.name} searched / loss" for run in args.runs) + " |"
    print(header)
    print("|---" * (len(args.runs) + 1) + "|")
    for end in sorted(set().union(*curves.values())):
        cells = []
        for run in args.runs:
            if end not in curves[run]:
                cells.append("")
                continue
            distance, loss = curves[run][end]
            cells.append(f"{'-' if distance is None else f'{distance:.3f}'} / {loss:.3f}")
        print(f"| {end - args.window + 1}-{end} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
