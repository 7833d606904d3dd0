"""Batches from the page: several photos, or a zip of them, in; a zip of full-size results out.

Each photo gets the first sample of one seed (the codes `python -m chimle sample --seed`
draws), rendered at its own size, and its code; the zip holds `NAME.png` and
`NAME.safetensors` per photo, and `failed.txt` when some photos could not be used (they
are passed over, one by one, as in the command line's batches: `chimle.batch`). Zips are
unpacked with `security.extract_images_zip`'s checks.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..batch import CODES_FILE, BatchJob, BatchReport, batch_jobs, run_batch, sample_name, write_results
from ..images import load_rgb
from ..pipeline import prepare, sample_codes
from .inputs import UPLOAD_MAX_PIXELS
from .models import LoadedModel
from .security import ZipLimits, extract_images_zip

MAX_BATCH_PHOTOS = 100  # photos per batch: each is rendered at its own size, seconds to minutes apiece
BATCH_ZIP_LIMITS = ZipLimits(max_files=MAX_BATCH_PHOTOS, max_total_bytes=1 << 30, max_file_bytes=64 << 20)

Progress = Callable[[float, str], None]  # fraction done, and what is being done


class BatchError(ValueError):
    """A batch that cannot start (too many photos, nothing to do); the message is for the user."""


@dataclass
class BatchResult:
    archive: Path
    report: BatchReport


def collect_jobs(paths: Sequence[str | Path], folder: Path) -> list[BatchJob]:
    """The photos of uploaded files: images as they are (named by their file names), zips unpacked
    into `folder` (their photos named by their paths in the zip)."""
    photos, names = [], []
    for index, path in enumerate(Path(p) for p in paths):
        if path.suffix.lower() == ".zip":
            extracted = extract_images_zip(path, folder / f"archive-{index}", BATCH_ZIP_LIMITS)
            for image in extracted.images:
                photos.append(image)
                names.append(image.relative_to(extracted.folder).as_posix())
        else:
            photos.append(path)
            names.append(path.name)
    if len(photos) > MAX_BATCH_PHOTOS:
        raise BatchError(f"a batch takes at most {MAX_BATCH_PHOTOS} photos; this one has {len(photos)}")
    return batch_jobs(photos, names=names)


def run_photo_batch(model: LoadedModel, paths: Sequence[str | Path], folder: str | Path, max_side: int, seed: int,
                    progress: Progress | None = None) -> BatchResult:
    """Every photo of the uploads: its first sample of `seed`, at its own size, zipped with its code.

    Args:
        folder: an empty working folder for this batch (the zip is written into it).
        max_side: the working size the code is drawn at.
    """
    folder = Path(folder)
    jobs = collect_jobs(paths, folder / "photos")
    results = folder / "results"

    def process(job: BatchJob, done: Callable[[float], None]) -> None:
        image = load_rgb(job.photo, max_pixels=UPLOAD_MAX_PIXELS, name=job.label)
        prepared = prepare(model.net, model.task, image, max_side)
        codes = sample_codes(model.net, prepared, 1, seed)
        write_results(model.net, model.task, image, prepared, codes, results / job.name, model.fingerprint,
                      {"model": model.path.name, "task": model.task.name, "seed": seed, "max_side": max_side,
                       "input": job.label}, done)

    def report_progress(fraction: float) -> None:
        if progress is not None:
            index = min(int(fraction * len(jobs)) + 1, len(jobs))
            progress(fraction, f"Photo {index} of {len(jobs)} at its own size")

    report = run_batch(jobs, process, progress=report_progress)
    archive = folder / f"chimle-{model.path.stem}-seed-{seed}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        for job in report.done:
            handle.write(results / job.name / sample_name(0), f"{job.name}.png")
            handle.write(results / job.name / CODES_FILE, f"{job.name}.safetensors")
        if report.failed:
            handle.writestr("failed.txt", "".join(f"{message}\n" for _, message in report.failed))
    return BatchResult(archive, report)
