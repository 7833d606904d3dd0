"""Results written to folders, one photo or a whole batch: the CLI's `sample` and `render` and
the studio's batch tab call these.

A photo's results go into a folder of their own: `sample-000.png`, `sample-001.png`, ...
at the photo's full size (`pipeline.render_full_size`), and `codes.safetensors`, written
last, so a folder with its codes file is complete. In a batch every photo of a folder gets
such a folder under the output folder, at the same relative place (`photos/a/cat.jpg` ->
`out/a/cat/`); a photo whose results exist is skipped, and a photo that cannot be used
(not an image, truncated, too small) is reported and passed over, so one bad file never
costs the rest of the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from .checkpoint import save_codes
from .codes import LatentCodes
from .images import IMAGE_EXTENSIONS, save_png
from .model import TowerImplicitModel
from .pipeline import PreparedInput, render_full_size
from .tasks import Task

CODES_FILE = "codes.safetensors"
# What a bad photo can raise: ImageError, CheckpointError and prepare's refusals are
# ValueErrors; a file that vanishes or cannot be written is an OSError.
BATCH_ERRORS = (ValueError, OSError)

Progress = Callable[[float], None]  # the fraction done, 0..1


def sample_name(index: int) -> str:
    return f"sample-{index:03d}.png"


def write_results(net: TowerImplicitModel, task: Task, image: Image.Image, prepared: PreparedInput,
                  codes: LatentCodes, folder: str | os.PathLike, fingerprint: str | None = None,
                  metadata: dict | None = None, progress: Progress | None = None) -> list[Path]:
    """Render every code at the photo's full size into `folder`; returns the PNGs written.

    Args:
        image: the photo at its own size; `prepared` is its working-size input.
        fingerprint: the model's (`checkpoint.model_fingerprint`); with it the codes are
            saved too, as `codes.safetensors`, after the images.
        progress: called with the fraction of all the codes done.
    """
    folder = Path(folder)
    paths = []
    count = codes.batch_size
    for index in range(count):
        def one(fraction: float, index: int = index) -> None:
            if progress is not None:
                progress((index + fraction) / count)

        result = render_full_size(net, task, image, prepared, codes[index], progress=one)
        path = folder / sample_name(index)
        save_png(path, result[0])
        paths.append(path)
    if fingerprint is not None:
        full_h, full_w = result.shape[-2:]
        save_codes(folder / CODES_FILE, codes, fingerprint,
                   {**(metadata or {}), "output_size": list(prepared.output_size), "crop": list(prepared.crop),
                    "full_size": [full_h, full_w]})
    return paths


def find_photos(folder: str | os.PathLike) -> list[Path]:
    """The image files under `folder` (by extension, searched recursively; hidden ones left out), sorted."""
    folder = Path(folder)
    found = []
    for directory, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(directory) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


@dataclass(frozen=True)
class BatchJob:
    """One photo of a batch and the name of its results (a relative folder path, or a file stem).

    Attributes:
        label: what messages call the photo (default: its path).
    """

    photo: Path
    name: str
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", str(self.photo))


def batch_jobs(photos: Sequence[Path], root: str | os.PathLike | None = None,
               names: Sequence[str] | None = None) -> list[BatchJob]:
    """Name each photo's results: its path relative to `root` (by default its file name), or
    the given `names`, without the extension. Photos that would share a name (`cat.jpg`,
    `cat.png`) keep their extension in it (`cat-jpg`, `cat-png`); any still shared get a
    number (`cat-2`). Messages call a photo by its path, or by its given name."""
    labels = [str(photo) for photo in photos] if names is None else list(names)
    if names is None:
        names = [(photo.relative_to(root) if root is not None else Path(photo.name)).as_posix() for photo in photos]
    stems = [Path(name).with_suffix("").as_posix() for name in names]
    stems = [f"{stem}-{Path(name).suffix.lstrip('.').lower()}" if stems.count(stem) > 1 else stem
             for stem, name in zip(stems, names)]
    seen: dict[str, int] = {}
    jobs = []
    for photo, stem, label in zip(photos, stems, labels):
        seen[stem] = seen.get(stem, 0) + 1
        jobs.append(BatchJob(photo, stem if seen[stem] == 1 else f"{stem}-{seen[stem]}", label))
    return jobs


@dataclass
class BatchReport:
    """What a batch did with each photo."""

    done: list[BatchJob] = field(default_factory=list)
    skipped: list[BatchJob] = field(default_factory=list)  # their results existed already
    failed: list[tuple[BatchJob, str]] = field(default_factory=list)  # and why, in one line

    def summary(self) -> str:
        parts = [f"{len(self.done)} done"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (done before)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts)


def failure_message(job: BatchJob, error: BaseException) -> str:
    """The error as one line that names the photo (by its label)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if text.startswith(job.label) else f"{job.label}: {text}"


def run_batch(jobs: Sequence[BatchJob], process: Callable[[BatchJob, Progress], None],
              is_done: Callable[[BatchJob], bool] = lambda job: False,
              on_failure: Callable[[BatchJob, str], None] | None = None,
              progress: Progress | None = None) -> BatchReport:
    """`process` every job that `is_done` does not skip; a job's expected failure is reported
    (`on_failure`, and in the report) and the batch goes on.

    Args:
        process: does one job, reporting its own fraction done to the callback it is given.
        progress: called with the fraction of the whole batch done.
    """
    report = BatchReport()
    for index, job in enumerate(jobs):
        def one(fraction: float, index: int = index) -> None:
            if progress is not None:
                progress((index + fraction) / len(jobs))

        if is_done(job):
            report.skipped.append(job)
        else:
            try:
                process(job, one)
            except BATCH_ERRORS as error:
                message = failure_message(job, error)
                report.failed.append((job, message))
                if on_failure is not None:
                    on_failure(job, message)
            else:
                report.done.append(job)
        one(1.0)
    return report
