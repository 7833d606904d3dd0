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
from chimle.fileio import atomic_write_text
from chimle.model import count_parameters
from chimle.runs import RunPaths, read_metrics
from chimle.train import TrainConfig, default_samples_per_level

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
    defaults = TrainConfig().to_dict()
    train = {**train, "steps": steps, "time_budget_minutes": defaults["time_budget_minutes"]}
    # Runs from before the semantic prior existed trained without one; today's presets add it.
    train.setdefault("semantic_prior", "none")
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


def lineage_section(legs: list[dict], previous_card: str | None) -> list[str]:
    """Every training leg of the model, oldest first, with its command and cost, and the total."""
    lines = ["## Lineage", "", "Each leg continued the previous one's weights (`--init-from`).", "",
             "| leg | run | steps | wall time | device | data |", "|---|---|---|---|---|---|"]
    for number, leg in enumerate(legs, start=1):
        minutes = (leg.get("train_seconds") or 0) / 60
        lines.append(f"| {number} | `{leg.get('run')}` | {leg.get('steps')} | {minutes:.0f} min | "
                     f"{leg.get('device', 'cpu')} | `{leg.get('data', '')}` |")
    total_steps = sum(leg.get("steps") or 0 for leg in legs)
    total_minutes = sum(leg.get("train_seconds") or 0 for leg in legs) / 60
    lines += ["", f"Total: {total_steps} steps, {total_minutes:.0f} min of training.", ""]
    for number, leg in enumerate(legs, start=1):
        lines.append(f"Leg {number}:")
        lines.append("")
        if "options" in leg:
            options = {**TrainConfig().to_dict(), **leg["options"]}  # a leg stores what differs from the defaults
            lines += ["```bash", reproduce_command(options, leg["steps"]), "```"]
        elif previous_card:
            lines += [f"(recorded before lineages were; its command, from the card it shipped with)", "",
                      *_reproduce_block(previous_card)]
        else:
            lines.append("(recorded before lineages were: no command stored)")
        lines.append("")
    return lines


def _reproduce_block(card: str) -> list[str]:
    """The ```bash block under a card's "## Reproduce" heading, or its first leg's in a card
    with a lineage."""
    text = Path(card).read_text()
    after = text.split("## Reproduce" if "## Reproduce" in text else "Leg 1:", 1)[1]
    block = after.split("```bash", 1)[1].split("```", 1)[0]
    return ["```bash", block.strip("\n"), "```"]


def figures_section(report: dict, task: str) -> list[str]:
    """One evaluation report as a table, with the command that measured it."""
    summary, options = report["summary"], report["options"]
    what = (f"{options['crop_size']} px center crops" if options.get("crop_size") else "whole photos")
    size = " at their own size" if options.get("max_side") == 0 else ""
    # A report made with `eval --task-params` degraded its inputs otherwise than in training.
    degraded = report.get("task")
    under = (f", inputs degraded as `{json.dumps(degraded)}`"
             if degraded and degraded != report.get("model_task", degraded) else "")
    lines = [f"## Figures on `{options['data']}` ({report['num_images']} photos, {what}{size}, "
             f"{options['num_samples']} samples each, seed {options['seed']}{under})", "",
             "| metric | value |", "|---|---|",
             f"| no-model baseline LPIPS ({NO_MODEL_BASELINE[task]}) | {summary['baseline_lpips']:.4f} |",
             f"| best-of-{options['num_samples']} LPIPS to the true photo | {summary['best_lpips']:.4f} |",
             f"| mean LPIPS to the true photo | {summary['mean_lpips']:.4f} |",
             f"| best-of-{options['num_samples']} / mean, relative to the baseline | "
             f"{summary['best_lpips'] / summary['baseline_lpips']:.2f}x / "
             f"{summary['mean_lpips'] / summary['baseline_lpips']:.2f}x |",
             f"| LPIPS diversity (mean pairwise, per photo) | {summary['lpips_diversity']:.4f} |",
             f"| FwV (sigma {summary['fwv_sigma']}) | {summary['fwv']:.3g} |",
             f"| best PSNR (dB) | {summary['best_psnr']:.2f} |"]
    if summary.get("mean_psnr") is not None:  # reports from before these were measured lack them
        lines.append(f"| mean PSNR of the samples / of the baseline (dB) | "
                     f"{summary['mean_psnr']:.2f} / {summary['baseline_psnr']:.2f} |")
    if summary.get("colourfulness") is not None:
        lines.append(f"| colourfulness of the samples / of the true photos (Hasler and Suesstrunk) | "
                     f"{summary['colourfulness']:.1f} / {summary['true_colourfulness']:.1f} |")
    if summary.get("tint_share") is not None:
        lines.append(f"| tint share: of the samples' colour variation, the part that tints the whole photo "
                     f"(1: a tint only; `chimle.metrics.tint_share`) | {summary['tint_share']:.2f} |")
    if options["ivo_steps"]:
        lines.append(f"| IvO MSE after {options['ivo_steps']} steps | {summary['ivo_mse']:.5f} |")
    else:
        lines.append(f"| MSE of the best of {options['ivo_init_samples']} random codes (IvO not run) | "
                     f"{summary['ivo_mse']:.5f} |")
    if summary.get("fid") is not None:
        lines.append(f"| FID / KID (small sets: biased upwards) | {summary['fid']:.1f} / "
                     f"{summary['kid_mean']:.4f} ± {summary['kid_std']:.4f} |")
    beaten = sum(entry["mean_lpips"] < entry["baseline_lpips"] for entry in report["per_image"])
    lines.append(f"| photos whose mean sample beats the baseline | {beaten} of {report['num_images']} |")
    crop = options.get("crop_size") or 0
    lines += ["", f"Measured with `python -m chimle eval --checkpoint {report['checkpoint']} --data {options['data']} "
              f"--num-samples {options['num_samples']} --crop-size {crop} --max-side {options.get('max_side', 512)} "
              f"--ivo-steps {options['ivo_steps']}"
              + (f" --task-params '{json.dumps({k: v for k, v in degraded.items() if k != 'name'})}'" if under else "")
              + " --out REPORT.json`.", ""]
    return lines


def data_line(config: dict) -> str:
    """Where the training photos came from, with the terms the corpus manifest records."""
    train = config["train"]
    data = config["data"]
    manifest = Path(train["data"]).parent / "manifest.json"
    grey = len(data.get("skipped_grey") or [])
    line = (f"- Data: {data['num_train'] - grey} training photos from `{train['data']}`"
            + (f" (of {data['num_train']}: {grey} nearly grey ones left out)" if grey else "")
            + f", held-out photos from `{train['validation_data'] or 'a split of the data'}`")
    if not manifest.exists():
        return line
    photos = json.loads(manifest.read_text())["photos"]
    terms: dict[str, tuple[int, str]] = {}
    for photo in photos:
        if photo["split"] == "train":
            count, text = terms.get(photo["source"], (0, photo["terms"]))
            terms[photo["source"]] = (count + 1, text)
    sources = "; ".join(f"{source} ({count}): {text}" for source, (count, text) in sorted(terms.items()))
    return (line + ". Built by `python -m chimle data photos` (split by photo, deduplicated, no photo of "
            f"the Kodak24 or LIVE1 benchmarks). Sources and terms: {sources}. Weights trained on "
            "imagenet-sample or bsds500 inherit their research-and-education terms.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--checkpoint", required=True, help="the shipped model file (its step is read from it)")
    parser.add_argument("--eval", required=True, nargs="+",
                        help="JSON files written by python -m chimle eval --out; the first is the headline")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--note", default="", help="a paragraph on what the figures mean")
    parser.add_argument("--previous-card", help="the card of the model this one continues, for legs recorded "
                                                "before lineages were")
    parser.add_argument("--hardware", help="what the run trained on (default: this machine, shared with "
                                           "other jobs); say so when the run came from another machine")
    args = parser.parse_args()

    paths = RunPaths(args.run)
    config = json.loads(paths.config.read_text())
    model = load_checkpoint(args.checkpoint)
    step = model.metadata["step"]
    reports = [json.loads(Path(path).read_text())["reports"][0] for path in args.eval]
    # The metrics line of the checkpoint's step (or the last before it) holds its wall time.
    at_step = [m for m in read_metrics(paths) if m["step"] <= step]
    last = at_step[-1] if at_step else {}
    train = config["train"]
    hardware = args.hardware or f"{platform.machine()}, {os.cpu_count()} CPU cores, shared with other jobs during this run"
    search = train["samples_per_level"] or list(default_samples_per_level(model.net.num_levels))
    prior = model.net.config.semantic_encoder or "none"
    lines = [
        f"# {args.name}", "",
        f"- Task: `{json.dumps(config['task'])}`; preset `{train['preset']}` "
        f"({count_parameters(model.net):,} parameters; semantic prior: {prior})",
        f"- Method: {train['method']}, samples per level {search}, "
        f"{train['crop_size']} px crops, batch {train['batch_size']}, pool {train['pool_size']} "
        f"x {train['steps_per_pool']} steps, Adam lr {train['lr']}",
        data_line(config),
        f"- Trained: {step} steps in {last.get('elapsed_seconds', 0) / 60:.0f} min of wall time (this run) on "
        f"{config['device']} ({hardware}), {last.get('search_share', 0):.0%} of it in code search",
        f"- File: {Path(args.checkpoint).stat().st_size / 1e6:.1f} MB, weights stored in "
        f"{stored_precision(args.checkpoint)} (loaded as float32)",
        f"- Code version: `{config['code_version']}`", "",
    ]
    legs = model.metadata.get("lineage")
    if legs and len(legs) > 1:
        lines += lineage_section(legs, args.previous_card)
    else:
        lines += ["## Reproduce", "", "```bash", reproduce_command(train, step), "```", ""]
    for report in reports:
        lines += figures_section(report, config["task"]["name"])
    if args.note:
        lines += [args.note]
    atomic_write_text(args.out, "\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
