"""Run folders: everything about one training run lives in one folder.

Layout (the run folder is the whole state of a run: a resumed run and a restarted studio
read nothing else):

    config.json        all options, code version, data description: enough to reproduce
    status.json        state (running / finished / failed / stopped), message, pid, step
    metrics.jsonl      one JSON line per logging step
    validation.jsonl   one JSON line per sample grid: its samples' best LPIPS to the truth
                       (step 0: the model the run started from, when it started from one)
    samples/           PNG grids for a fixed validation batch
    checkpoints/       latest.safetensors, step-NNNNNNN.safetensors, train_state.pt
    model.safetensors  the final model, once the run has finished
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .fileio import atomic_write_json, atomic_write_text, naming_path, overwrite_in_place

RUNNING, FINISHED, FAILED, STOPPED = "running", "finished", "failed", "stopped"
STATES = (RUNNING, FINISHED, FAILED, STOPPED)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunPaths:
    """The files of one run folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def validation(self) -> Path:
        return self.root / "validation.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.safetensors"

    @property
    def train_state(self) -> Path:
        return self.checkpoints / "train_state.pt"

    @property
    def final_model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def log(self) -> Path:
        """Where a launcher (the studio) sends the trainer's stdout and stderr."""
        return self.root / "train.log"

    def snapshot(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}.safetensors"

    def sample_grid(self, step: int) -> Path:
        return self.samples / f"step-{step:07d}.png"


def write_status(paths: RunPaths, state: str, step: int, total_steps: int, message: str = "",
                 **extra) -> None:
    """Replace status.json atomically.

    A failed status must get out even when the disk is full (the usual reason for failing
    there): the atomic replace needs room for a second copy, so a `failed` record that
    cannot get it overwrites the existing file in place instead (no new blocks needed).
    """
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    record = {"state": state, "message": message, "pid": os.getpid(), "step": step, "total_steps": total_steps,
              "updated": now(), **extra}
    try:
        atomic_write_json(paths.status, record)
    except OSError:
        if state != FAILED or not paths.status.is_file():
            raise
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        overwrite_in_place(paths.status, text.encode("utf-8"))



class TrainingFailed(RuntimeError):
    """The run stopped as failed (a non-finite loss, a write error); status.json says why."""


class Progress(Protocol):
    """How far a run has got, as `record_failure` reads it when an error ends the run."""

    step: int  # the steps done
    saved_step: int  # the step of the newest complete checkpoint (0: none yet)


def failure_message(error: Exception, step: int, saved_step: int) -> str:
    """What status.json says of an error that ended a run at `step`."""
    if isinstance(error, TrainingFailed):
        return str(error)
    if isinstance(error, OSError):  # a full disk, a vanished folder: name the file, say what is kept
        kept = (f"the checkpoint of step {saved_step} is kept" if saved_step
                else "no checkpoint had been written yet")
        return f"could not write {error.filename or 'the run folder'} at step {step}: {error.strerror or error}; {kept}"
    return f"training failed at step {step}: {type(error).__name__}: {error}"


@contextmanager
def record_failure(paths: RunPaths, progress: Progress, total_steps: int, write: bool = True) -> Iterator[None]:
    """Any error inside ends the run as failed: status.json says why, TrainingFailed is raised.

    Args:
        progress: read when the error happens, for the step and the checkpoint that is kept.
        write: whether this process writes the status (rank 0 alone in a distributed run).

    Raises:
        TrainingFailed: with the status message; the original error is its cause (a
            TrainingFailed inside already says everything and is not chained).

    When even the status cannot be written, the message says so: it is then the only
    report, printed by the CLI, and the studio sees the run's process gone.
    """
    try:
        yield
    except Exception as error:
        message = failure_message(error, progress.step, progress.saved_step)
        if write:
            try:
                write_status(paths, FAILED, progress.step, total_steps, message)
            except OSError as status_error:
                message += f" (status.json could not be updated either: {status_error.strerror or status_error})"
        raise TrainingFailed(message) from (None if isinstance(error, TrainingFailed) else error)


def read_status(paths: RunPaths) -> dict | None:
    """The run's status, or None when it has none (yet) or it is unreadable."""
    try:
        return json.loads(paths.status.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies of our own children count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def effective_status(paths: RunPaths) -> dict | None:
    """The status, with a 'running' run whose process is gone reported as dead.

    A trainer killed with SIGKILL cannot update its own status; whoever looks at the run
    (the studio, the CLI) sees state 'dead' and can resume it.
    """
    status = read_status(paths)
    if status and status.get("state") == RUNNING and not pid_alive(int(status.get("pid", -1))):
        status = dict(status, state="dead", message="the training process is gone; resume to continue")
    return status


def _append_line(path: Path, record: dict) -> None:
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    except OSError as error:  # a full disk fails the flush, which names no file
        named = naming_path(error, path)
        if named is error:
            raise
        raise named from error


def _read_lines(path: Path) -> list[dict]:
    """All complete JSON lines of `path` (a torn last line from a kill is skipped)."""
    records = []
    try:
        with open(path) as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        return []
    return records


def append_metrics(paths: RunPaths, record: dict) -> None:
    _append_line(paths.metrics, record)


def read_metrics(paths: RunPaths) -> list[dict]:
    """All complete metric lines (a torn last line from a kill is skipped)."""
    return _read_lines(paths.metrics)


def append_validation(paths: RunPaths, record: dict) -> None:
    _append_line(paths.validation, record)


def read_validation(paths: RunPaths) -> list[dict]:
    """All complete lines of validation.jsonl, oldest first (none for a run that has not sampled yet)."""
    return _read_lines(paths.validation)


def truncate_metrics(paths: RunPaths, last_step: int) -> None:
    """Drop metric and validation lines logged after `last_step`: a resumed run logs those steps again."""
    for path in (paths.metrics, paths.validation):
        kept = [r for r in _read_lines(path) if r.get("step", 0) <= last_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
