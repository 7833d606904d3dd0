"""`python -m chimle ...`: train, resume, sample, re-render and reconstruct (IvO).

Every command calls the same library functions the tests and the studio call. Expected
failures (a missing folder, an unknown task, a broken image or checkpoint) print one line
`error: ...` and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

EXIT_USAGE = 2
EXIT_FAILED = 1
MAX_SEED = 2 ** 64 - 1  # torch's generators take seeds up to 64 bits

TRAIN_HELP = {
    "task": "what to learn",
    "task_params": "task parameters as JSON, e.g. '{\"quality\": 5}' for jpeg",
    "data": "folder of photos (searched recursively); input/ and target/ subfolders for paired tasks",
    "validation_data": "folder of held-out photos for sample grids (then all of --data trains)",
    "preset": "model size",
    "semantic_prior": "frozen AlexNet features of the input at every level: the preset's choice, alexnet or none",
    "input_skip": "every level outputs its input plus a learned correction (restoration tasks)",
    "region_styles": "the global code styles this many semantic regions of the photo separately "
                     "(needs the semantic prior; 0: one style per photo, the paper's model)",
    "region_codes": "the coarsest local code is pooled over this many semantic regions of the photo, each "
                    "region's vector styling its region: colours chosen object by object (needs the semantic "
                    "prior; 0: off, the paper's model)",
    "region_partition": "how --region-codes finds its regions: kmeans (each photo's semantic map clustered) or "
                        "learned (a trained softmax, the first models')",
    "global_code": "--no-global-code: no global code; each level's style is learned, and the code varies the "
                   "output only through its local maps (with --region-codes, colours object by object)",
    "init_from": "start from this model file's weights (not its optimiser); a shipped model keeps improving",
    "method": "code search: chimle (hierarchical) or cimle",
    "samples_per_level": "CHIMLE candidates per level, coarse to fine (default: 12 6 4..., one per level)",
    "cimle_samples": "cIMLE samples per search (default: the sum of --samples-per-level, equal cost)",
    "iterative_construction": "CHIMLE ablation switch (IC)",
    "partial_evaluation": "CHIMLE ablation switch (PE)",
    "rejection_threshold": "RS-IMLE: the search never chooses a candidate closer than this LPIPS; one value "
                           "for every level or one per level, coarse to fine (default: 0, off)",
    "samples_per_region": "redraws of each region's level-1 code in the search, region after region "
                          "(default: 3 with --region-codes, else 0)",
    "zero_codes": "fix every code to zero, no search: the unimodal baseline",
    "steps": "total gradient steps",
    "time_budget_minutes": "finish once training has run this many minutes (0: no limit)",
    "pool_size": "crops per pool; codes are searched for a whole pool at once",
    "steps_per_pool": "gradient steps on a pool before the next search",
    "batch_size": "crops per gradient step (per process)",
    "crop_size": "training crop side in pixels (a multiple of 2^levels)",
    "lr": "Adam learning rate",
    "mapping_lr_multiplier": "learning-rate factor of the mapping networks",
    "level_weights": "LPIPS weight of each level, coarse to fine (default: 1 each)",
    "l1_weight": "weight of an L1 pixel term on the final output",
    "seed": "seed of every random choice (data, codes, initial weights)",
    "held_out_fraction": "share of source photos held out for validation",
    "max_side": "photos are kept in memory downscaled to this longer side",
    "log_every": "steps between metrics lines",
    "sample_every": "steps between sample grids",
    "checkpoint_every": "steps between resumable checkpoints",
    "snapshot_every": "steps between kept model snapshots",
    "search_chunk": "candidates rendered per forward pass in the search (bounds memory)",
    "lpips_net": "LPIPS backbone: alex or vgg",
    "device": "auto (CUDA when present), cpu, cuda, cuda:N",
    "amp": "bfloat16 autocast on CUDA",
    "half_final": "store the final model in float16",
}


class CommandError(Exception):
    """An expected failure with a one-line message."""


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    from .config import PRESETS, REGION_PARTITIONS
    from .tasks import TASK_NAMES
    from .train import METHODS, SEMANTIC_PRIORS, TrainConfig

    choices = {"task": TASK_NAMES, "preset": tuple(PRESETS), "method": METHODS, "lpips_net": ("alex", "vgg"),
               "semantic_prior": SEMANTIC_PRIORS, "region_partition": REGION_PARTITIONS}
    for item in dataclasses.fields(TrainConfig):
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        flag = "--" + item.name.replace("_", "-")
        text = TRAIN_HELP[item.name]
        kwargs = {"default": None, "help": text if "default:" in text else f"{text} (default: {default})"}
        if item.name in choices:
            kwargs["choices"] = choices[item.name]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif item.name in ("samples_per_level",):
            kwargs.update(type=int, nargs="+")
        elif item.name in ("level_weights", "rejection_threshold"):
            kwargs.update(type=float, nargs="+")
        elif item.name == "task_params":
            kwargs["type"] = json.loads
        elif isinstance(default, (int, float)) and not isinstance(default, bool) or item.name in ("cimle_samples", "samples_per_region"):
            kwargs["type"] = float if isinstance(default, float) else int
        parser.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chimle", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model, or resume a run",
                                description="Train CHIMLE (or cIMLE) into a run folder.")
    train.add_argument("--out", help="run folder to create (required for a new run)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_train_options(train)

    sample = commands.add_parser(
        "sample", help="draw samples for a photo, or for every photo of a folder",
        description="Draw samples at the working size (--max-side) and write them at the photo's own size "
                    "(times the factor for super-resolution), with their codes. With a folder, every photo "
                    "in it (recursively) gets a folder of results under --out; photos whose results exist "
                    "are skipped, bad files are reported and passed over (exit status 1 if any failed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("--checkpoint", required=True, help="model file (.safetensors)")
    sample.add_argument("--input", required=True, help="input photo, or a folder of photos")
    sample.add_argument("--num", type=int, default=8, help="number of samples (per photo)")
    sample.add_argument("--out", required=True, help="output folder")
    sample.add_argument("--seed", type=int, default=0, help="seed of the codes (the same for every photo)")
    sample.add_argument("--max-side", type=int, default=512,
                        help="working size: the longest output side the codes are drawn at")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")

    render = commands.add_parser(
        "render", help="re-render samples from saved codes, at the photo's own size",
        description="Render saved codes at the photo's own size: the PNGs `sample` wrote, bit for bit. "
                    "With --input FOLDER, --codes is the --out folder of `sample --input FOLDER`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    render.add_argument("--checkpoint", required=True)
    render.add_argument("--input", required=True, help="input photo, or a folder of photos")
    render.add_argument("--codes", required=True, help="codes file written by sample or ivo, or a folder of them")
    render.add_argument("--out", required=True, help="output folder")
    render.add_argument("--max-side", type=int, default=512, help="the working size the codes were drawn at")
    render.add_argument("--no-progress", action="store_true", help="no progress bar")

    ivo = commands.add_parser("ivo", help="inference via optimisation: reconstruct a target",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ivo.add_argument("--checkpoint", required=True)
    ivo.add_argument("--input", required=True, help="input image (e.g. the grey photo)")
    ivo.add_argument("--target", required=True, help="the image to reconstruct")
    ivo.add_argument("--out", required=True, help="output folder")
    ivo.add_argument("--steps", type=int, default=200, help="optimisation steps")
    ivo.add_argument("--lr", type=float, default=0.05, help="learning rate on the code")
    ivo.add_argument("--init-samples", type=int, default=16, help="start from the best of this many codes")
    ivo.add_argument("--seed", type=int, default=0)
    ivo.add_argument("--max-side", type=int, default=512)
    from .evaluate import register as register_eval

    register_eval(commands)

    data = commands.add_parser(
        "data", help="build a training corpus: demo (offline photos) or photos (demo + shared + your folders)")
    data.add_argument("corpus", choices=["demo", "photos"], help="which corpus")
    data.add_argument("--out", help="folder to write (train/, held_out/, manifest.json); "
                                    "default data/<corpus>")
    data.add_argument("--max-side", type=int, help="photos are stored downscaled to this side "
                                                   "(default 768 for demo, 512 for photos)")
    data.add_argument("--shared-data", help="photos: the folder with train/ and test/ "
                                            "(default ../shared/data beside the repository)")
    data.add_argument("--folder", action="append", default=[],
                      help="photos: also take the photos under this folder (repeatable)")
    data.add_argument("--workers", type=int, default=2, help="photos: processes decoding photos")
    return parser


def _data(args: argparse.Namespace) -> int:
    args.out = args.out or f"data/{args.corpus}"
    if args.corpus == "photos":
        from .photo_corpus import DEFAULT_SHARED_DATA, build_photo_corpus, summary

        manifest = build_photo_corpus(
            args.out, shared_data=args.shared_data or DEFAULT_SHARED_DATA, folders=args.folder,
            max_side=args.max_side or 512, workers=args.workers,
            progress=lambda done, total: print(f"  {done}/{total} photos", file=sys.stderr))
        print(summary(manifest))
        print(f"wrote {args.out} (manifest.json records every photo, its terms and split)")
        return 0
    from .corpus import build_demo_corpus

    manifest = build_demo_corpus(args.out, args.max_side or 768)
    for problem in manifest["missing"]:
        print(f"missing: {problem}", file=sys.stderr)
    print(f"wrote {manifest['num_train']} training and {manifest['num_held_out']} held-out photos "
          f"to {args.out} (manifest.json records which file went where)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, TrainingFailed, load_run_config, train

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    if args.resume:
        run_dir = Path(args.resume)
        config = load_run_config(run_dir)
        unchangeable = set(overrides) - {"steps", "time_budget_minutes", "device", "log_every", "sample_every", "checkpoint_every"}
        if unchangeable:
            raise CommandError(f"a resumed run keeps its options; only --steps, --device and the "
                               f"logging intervals can change (got {sorted(unchangeable)})")
        config = dataclasses.replace(config, **overrides)
    else:
        if not args.out:
            raise CommandError("--out RUN_FOLDER is required for a new run (or --resume RUN_FOLDER)")
        if not overrides.get("data"):
            raise CommandError("--data DIR is required for a new run")
        run_dir = Path(args.out)
        if (run_dir / "config.json").exists():
            raise CommandError(f"{run_dir} already holds a run; resume it with --resume {run_dir}")
        config = TrainConfig(**overrides)
    try:
        result = train(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    except TrainingFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{result['state']}: {result['message']} ({run_dir})")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    from .pipeline import MIN_SIDE

    if args.max_side < MIN_SIDE:
        raise CommandError(f"--max-side must be at least {MIN_SIDE}, got {args.max_side}")
    if hasattr(args, "seed") and not 0 <= args.seed <= MAX_SEED:
        raise CommandError(f"--seed must lie between 0 and {MAX_SEED}, got {args.seed}")


def _prepare(checkpoint, path: str | Path, max_side: int):
    """The photo at `path` (its own size) and its working-size input."""
    from .images import load_rgb
    from .pipeline import prepare

    image = load_rgb(path)
    try:
        return image, prepare(checkpoint.net, checkpoint.task, image, max_side)
    except ValueError as error:  # too small or too elongated for the model
        raise ValueError(f"{path}: {error}") from None


def _load_model_and_input(args: argparse.Namespace):
    from .checkpoint import load_checkpoint

    _check_options(args)
    checkpoint = load_checkpoint(args.checkpoint)
    image, prepared = _prepare(checkpoint, args.input, args.max_side)
    for note in prepared.notes:
        print(f"note: {note}")
    return checkpoint, image, prepared


@contextlib.contextmanager
def _progress_bar(args: argparse.Namespace, total: int, unit: str):
    """A tqdm bar over `total` units, and the callback that sets the fraction done."""
    bar = tqdm(total=total, unit=unit, disable=args.no_progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} {unit}s [{elapsed}<{remaining}]")

    def update(fraction: float) -> None:
        bar.update(fraction * total - bar.n)

    try:
        yield bar, update
    finally:
        bar.close()


def _sample(args: argparse.Namespace) -> int:
    from .batch import write_results
    from .checkpoint import model_fingerprint
    from .pipeline import sample_codes

    if args.num < 1:
        raise CommandError("--num must be at least 1")
    if Path(args.input).is_dir():
        return _sample_folder(args)
    checkpoint, image, prepared = _load_model_and_input(args)
    codes = sample_codes(checkpoint.net, prepared, args.num, args.seed)
    out = Path(args.out)
    with _progress_bar(args, args.num, "sample") as (_, progress):
        paths = write_results(checkpoint.net, checkpoint.task, image, prepared, codes, out,
                              model_fingerprint(checkpoint.net, checkpoint.task),
                              {"seed": args.seed, "input": str(args.input), "checkpoint": str(args.checkpoint),
                               "max_side": args.max_side}, progress)
    print(f"wrote {args.num} samples ({_size_text(paths[0])}) and their codes to {out}")
    return 0


def _sample_folder(args: argparse.Namespace) -> int:
    """`sample` for every photo under the folder --input: one results folder each under --out."""
    from .batch import CODES_FILE, write_results
    from .checkpoint import load_checkpoint, model_fingerprint
    from .pipeline import sample_codes

    _check_options(args)
    checkpoint = load_checkpoint(args.checkpoint)
    fingerprint = model_fingerprint(checkpoint.net, checkpoint.task)
    out = Path(args.out)

    def process(job, progress) -> None:
        image, prepared = _prepare(checkpoint, job.photo, args.max_side)
        codes = sample_codes(checkpoint.net, prepared, args.num, args.seed)
        write_results(checkpoint.net, checkpoint.task, image, prepared, codes, out / job.name, fingerprint,
                      {"seed": args.seed, "input": str(job.photo), "checkpoint": str(args.checkpoint),
                       "max_side": args.max_side}, progress)

    return _run_folder(args, process, lambda job: (out / job.name / CODES_FILE).is_file())


def _run_folder(args: argparse.Namespace, process, is_done) -> int:
    """Run a batch over the photos of the folder --input with one progress bar; report and return
    the exit status (EXIT_FAILED when a photo failed)."""
    from .batch import batch_jobs, find_photos, run_batch
    from .images import IMAGE_EXTENSIONS

    jobs = batch_jobs(find_photos(args.input), args.input)
    if not jobs:
        raise CommandError(f"{args.input}: no photos in this folder ({', '.join(IMAGE_EXTENSIONS)})")
    with _progress_bar(args, len(jobs), "photo") as (bar, progress):
        report = run_batch(jobs, process, is_done, progress=progress,
                           on_failure=lambda job, message: bar.write(f"error: {message}", file=sys.stderr))
    print(f"{len(jobs)} photos in {args.input}: {report.summary()}; results in {args.out}")
    return EXIT_FAILED if report.failed else 0


def _size_text(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.size[0]}x{image.size[1]}"


def _fitting_codes(checkpoint, prepared, path: str | Path):
    """The codes in `path`, checked to be for this model and this working-size input."""
    from .checkpoint import CheckpointError, load_codes, model_fingerprint

    codes, _ = load_codes(path, model_fingerprint(checkpoint.net, checkpoint.task))
    expected = checkpoint.net.code_shape(prepared.output_size)
    if codes.shape != expected:
        raise CheckpointError(f"{path}: the codes are for an output of another size "
                           f"({codes.shape.local_sizes[-1]} at the finest level, need {expected.local_sizes[-1]}; "
                           f"same photo and --max-side as when they were drawn?)")
    return codes


def _render(args: argparse.Namespace) -> int:
    from .batch import write_results

    if Path(args.input).is_dir():
        return _render_folder(args)
    if Path(args.codes).is_dir():
        raise CommandError(f"{args.codes} is a folder: a folder of codes goes with a folder of photos (--input)")
    checkpoint, image, prepared = _load_model_and_input(args)
    codes = _fitting_codes(checkpoint, prepared, args.codes)
    out = Path(args.out)
    with _progress_bar(args, codes.batch_size, "sample") as (_, progress):
        paths = write_results(checkpoint.net, checkpoint.task, image, prepared, codes, out, progress=progress)
    print(f"rendered {codes.batch_size} images ({_size_text(paths[0])}) to {out}")
    return 0


def _render_folder(args: argparse.Namespace) -> int:
    """`render` for every photo under --input, with its codes from the same place under --codes."""
    from .batch import CODES_FILE, sample_name, write_results
    from .checkpoint import CheckpointError, load_checkpoint, load_codes

    _check_options(args)
    codes_root, out = Path(args.codes), Path(args.out)
    if not codes_root.is_dir():
        raise CommandError(f"{args.codes}: with a folder of photos, --codes must be the folder "
                           f"`sample --input FOLDER --out` wrote")
    checkpoint = load_checkpoint(args.checkpoint)

    def codes_path(job) -> Path:
        return codes_root / job.name / CODES_FILE

    def process(job, progress) -> None:
        if not codes_path(job).is_file():
            raise ValueError(f"{job.photo}: no codes for it ({codes_path(job)} not found)")
        image, prepared = _prepare(checkpoint, job.photo, args.max_side)
        codes = _fitting_codes(checkpoint, prepared, codes_path(job))
        write_results(checkpoint.net, checkpoint.task, image, prepared, codes, out / job.name, progress=progress)

    def is_done(job) -> bool:
        try:
            count = load_codes(codes_path(job))[0].batch_size
        except (CheckpointError, OSError):
            return False  # process says what is wrong with it
        return all((out / job.name / sample_name(index)).is_file() for index in range(count))

    return _run_folder(args, process, is_done)


def _ivo(args: argparse.Namespace) -> int:
    from .checkpoint import model_fingerprint, save_codes
    from .images import load_rgb, pil_to_tensor, save_png
    from .imageops import resize
    from .ivo import IvOConfig, ivo_steps
    from .perceptual import load_perceptual_distance
    from .pipeline import render_full_size

    if args.steps < 1 or args.init_samples < 1:
        raise CommandError("--steps and --init-samples must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CommandError(f"--lr must be a positive number, got {args.lr}")
    checkpoint, image, prepared = _load_model_and_input(args)
    target = resize(pil_to_tensor(load_rgb(args.target)), prepared.output_size, mode="bicubic").clamp(-1, 1)
    distance = load_perceptual_distance()
    config = IvOConfig(steps=args.steps, lr=args.lr, init_samples=args.init_samples)
    steps = ivo_steps(checkpoint.net, checkpoint.task, distance, prepared.x, target, config,
                      generator=torch.Generator().manual_seed(args.seed))
    with tqdm(total=args.steps, desc="ivo") as bar:
        for result in steps:
            bar.update(result.step - bar.n)
            bar.set_postfix(mse=f"{result.mse.item():.4f}", lpips=f"{result.lpips.item():.3f}")
    out = Path(args.out)
    # The code is for the working size, as every saved code; the picture has the photo's size.
    save_png(out / "reconstruction.png", render_full_size(checkpoint.net, checkpoint.task, image, prepared,
                                                          result.codes)[0])
    save_codes(out / "codes.safetensors", result.codes, model_fingerprint(checkpoint.net, checkpoint.task),
               {"ivo_steps": args.steps, "input": str(args.input), "target": str(args.target)})
    report = {"mse": result.mse.item(), "lpips": result.lpips.item(), "steps": args.steps}
    (out / "ivo.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"IvO after {args.steps} steps: MSE {report['mse']:.5f}, LPIPS {report['lpips']:.4f} ({out})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import run

    return run(args)


COMMANDS = {"data": _data, "train": _train, "sample": _sample, "render": _render, "ivo": _ivo, "eval": _eval}


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .images import ImageError
    from .perceptual import BackboneWeightsError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CommandError, CheckpointError, DataError, ImageError, BackboneWeightsError, ValueError,
            FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
