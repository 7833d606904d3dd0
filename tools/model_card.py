"""Write a shipped model's card from its run folder and its evaluation report.

    python -m tools.model_card --run runs/colour-cpu --checkpoint checkpoints/colourization-cpu.safetensors \
        --eval checkpoints/colourization-cpu.eval.json --name colourization-cpu --out checkpoints/colourization-cpu.md

Every figure in the card comes from those two files, so a card never states a number that
was not measured; the reproduce command is rebuilt from the run's config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


from chimle.checkpoint import load_checkpoint
from chimle.config import ModelConfig
from chimle.fileio import atomic_write_text
from chimle.model import TowerImplicitModel, count_parameters
from chimle.runs import RunPaths, read_metrics

DEFAULTS_SKIPPED = {"data", "validation_data", "task", "task_params", "preset"}
# What `python -m chimle eval` compares against when no model is used, per task.
NO_MODEL_BASELINE = {
    "colourization": "the grey input",
    "jpeg": "the decoded JPEG",
    "super_resolution": "bicubic upsampling",
    "night_to_day": "the night photo",
    "synthetic_night_to_day": "the synthetic night photo",
}


def reproduce_command(train: dict, steps: int) -> str:
    """The `train` command that makes this checkpoint: the run's options, `steps` steps.

    The shipped step replaces the run's `--steps` and `--time-budget-minutes`: a time budget
    stops at a different step on every machine (and a resumed run may have changed both),
    while the learning rate is constant and training is seeded, so N steps train this model
    again (bit for bit with the same thread count and hardware: sums change order otherwise).
    """
    from chimle.train import TrainConfig

    defaults = TrainConfig().to_dict()
    train = {**train, "steps": steps, "time_budget_minutes": defaults["time_budget_minutes"]}
    parts = ["python -m chimle train", f"--task {train['task']}"]
    if train["task_params"]:
        parts.append(f"--task-params '{json.dumps(train['task_params'])}'")
    parts += [f"--data {train['data']}", f"--validation-data {train['validation_data']}" if train["validation_data"] else "",
              f"--preset {train['preset']}"]
    for name, value in train.items():
        if name in DEFAULTS_SKIPPED or value == defaults.get(name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            parts.append(f"{flag} {' '.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {value}")
    return " \\\n    ".join(p for p in parts if p) + " \\\n    --out runs/NAME"


def stored_precision(checkpoint: str) -> str:
    """How the file stores its floating-point weights, e.g. 'float16'."""
    from safetensors import safe_open

    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    with safe_open(checkpoint, "pt") as weights:
        dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
    return " and ".join(sorted(names[d] for d in dtypes if d in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--checkpoint", required=True, help="the shipped model file (its step is read from it)")
    parser.add_argument("--eval", required=True, help="JSON written by python -m chimle eval --out")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--note", default="", help="a paragraph on what the figures mean")
    parser.add_argument("--hardware", help="what the run trained on (default: this machine, shared with "
                                           "other jobs); say so when the run came from another machine")
    args = parser.parse_args()

    paths = RunPaths(args.run)
    config = json.loads(paths.config.read_text())
    step = load_checkpoint(args.checkpoint).metadata["step"]
    report = json.loads(Path(args.eval).read_text())["reports"][0]
    summary, options = report["summary"], report["options"]
    # The metrics line of the checkpoint's step (or the last before it) holds its wall time.
    at_step = [m for m in read_metrics(paths) if m["step"] <= step]
    last = at_step[-1] if at_step else {}
    train = config["train"]
    hardware = args.hardware or f"{platform.machine()}, {os.cpu_count()} CPU cores, shared with other jobs during this run"
    lines = [
        f"# {args.name}", "",
        f"- Task: `{json.dumps(config['task'])}`; preset `{train['preset']}` "
        f"({count_parameters(TowerImplicitModel(ModelConfig.from_dict(config['model']))):,} parameters)",
        f"- Method: {train['method']}, samples per level {train['samples_per_level']}, "
        f"{train['crop_size']} px crops, batch {train['batch_size']}, pool {train['pool_size']} "
        f"x {train['steps_per_pool']} steps, Adam lr {train['lr']}",
        f"- Data: {config['data']['num_train']} training photos from `{train['data']}`, "
        f"{config['data']['num_held_out']} held-out photos from `{train['validation_data'] or 'a split of the data'}` "
        f"(the demo corpus, `python -m chimle data demo`; split by source photo, see its manifest.json)",
        f"- Trained: {step} steps in {last.get('elapsed_seconds', 0) / 60:.0f} min of wall time on "
        f"{config['device']} ({hardware}), {last.get('search_share', 0):.0%} of it in code search",
        f"- File: {Path(args.checkpoint).stat().st_size / 1e6:.1f} MB, weights stored in "
        f"{stored_precision(args.checkpoint)} (loaded as float32)",
        f"- Code version: `{config['code_version']}`", "",
        "## Reproduce", "", "```bash", reproduce_command(train, step), "```", "",
        f"## Held-out figures ({report['num_images']} photos, {options['crop_size']} px center crops, "
        f"{options['num_samples']} samples each, seed {options['seed']})", "",
        "| metric | value |", "|---|---|",
        f"| no-model baseline LPIPS ({NO_MODEL_BASELINE[config['task']['name']]}) | {summary['baseline_lpips']:.4f} |",
        f"| best-of-{options['num_samples']} LPIPS to the true photo | {summary['best_lpips']:.4f} |",
        f"| mean LPIPS to the true photo | {summary['mean_lpips']:.4f} |",
        f"| LPIPS diversity (mean pairwise, per photo) | {summary['lpips_diversity']:.4f} |",
        f"| FwV (sigma {summary['fwv_sigma']}) | {summary['fwv']:.3g} |",
        f"| best PSNR (dB) | {summary['best_psnr']:.2f} |",
        f"| IvO MSE after {options['ivo_steps']} steps | {summary['ivo_mse']:.5f} |" if options["ivo_steps"] else
        f"| MSE of the best of {options['ivo_init_samples']} random codes (IvO not run) | {summary['ivo_mse']:.5f} |",
    ]
    if summary.get("fid") is not None:
        lines.append(f"| FID / KID (tiny sets: biased upwards) | {summary['fid']:.1f} / {summary['kid_mean']:.4f} |")
    lines += ["", f"Measured with `python -m chimle eval --checkpoint checkpoints/{args.name}.safetensors "
              f"--data {options['data']} --num-samples {options['num_samples']} --crop-size {options['crop_size']} "
              f"--ivo-steps {options['ivo_steps']} --out REPORT.json`."]
    if args.note:
        lines += ["", args.note]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
