"""Training runs launched from the studio: start (a new model, or from a model's weights),
list, re-attach, stop, resume; and what the Train tab says of them.

The trainer runs as its own process (`python -m chimle train`, the CLI's code path) in its
own session, so the app stays responsive and a restart of the app neither kills nor
forgets the run. The run folder is the state: the trainer keeps status.json, metrics.jsonl
and validation.jsonl there, and the launcher adds `studio.json` (the pid it started, the command)
so a run is visible as "starting" before the trainer has written its first status.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..fileio import atomic_write_json
from ..runs import FINISHED, RUNNING, RunPaths, effective_status, now, pid_alive, read_metrics, read_validation
from ..train import InitOptions, init_options
from .models import ModelEntry, find_models, read_defaults

STUDIO_FILE = "studio.json"
STOP_GRACE_SECONDS = 60.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Options the studio sets itself; extra flags may not override them.
RESERVED_FLAGS = ("--out", "--resume", "--data", "--task", "--preset", "--steps", "--init-from", "--no-progress")
# Set by the model a run starts from (`InitOptions`); extra flags may set them for a new model.
STARTING_MODEL_FLAGS = ("--semantic-prior", "--task-params")
FROM_SCRATCH = "scratch"  # the Start from choice of a new model
RESUMABLE = ("stopped", "dead", "failed")

# Children started by this app process, kept so their exit status is collected (no zombies).
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()


class TrainingError(ValueError):
    """A training action that cannot be done; the message is for the user."""


@dataclass
class RunInfo:
    """What the Train tab shows about one run folder.

    Attributes:
        state: the trainer's state (running, finished, failed, stopped), "dead" for a
            running run whose process is gone, "starting" before the first status, or
            "failed to start".
    """

    name: str
    paths: RunPaths
    state: str
    step: int = 0
    total_steps: int = 0
    message: str = ""
    eta_seconds: float | None = None
    loss: float | None = None
    updated: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def has_model(self) -> bool:
        return self.paths.final_model.is_file()

    @property
    def can_stop(self) -> bool:
        return self.state in (RUNNING, "starting")

    @property
    def can_resume(self) -> bool:
        return self.state in RESUMABLE and self.paths.config.is_file()


def demo_corpus_command(data_root: str | os.PathLike) -> str:
    """The shell line that builds the demo corpus (photos that install offline) in the data root."""
    out = Path(data_root).resolve() / "demo"
    shown = out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out
    return f"cd {shlex.quote(str(PROJECT_ROOT))} && python -m chimle data demo --out {shlex.quote(str(shown))}"


def no_data_message(data_root: str | os.PathLike) -> str:
    """What the Train tab says while the data root holds no folder: how to get photos to train on."""
    return (f"**No data folders yet** in `{Path(data_root).resolve()}`. Upload a zip of your photos above "
            f"(*…or a zip of photos*), or build the demo corpus (photos that install offline, split into "
            f"`train/` and `held_out/`), then reload the page:\n\n`{demo_corpus_command(data_root)}`")


def _reap() -> None:
    with _children_lock:
        for pid in [pid for pid, child in _children.items() if child.poll() is not None]:
            del _children[pid]


def _read_launch(paths: RunPaths) -> dict | None:
    try:
        return json.loads((paths.root / STUDIO_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_info(paths: RunPaths) -> RunInfo:
    """The run's state, as the trainer and the launcher left it in the folder."""
    _reap()
    status = effective_status(paths)
    launch = _read_launch(paths)
    launched_pid = int(launch["pid"]) if launch and "pid" in launch else None
    launched_alive = launched_pid is not None and pid_alive(launched_pid)
    if launched_alive and (status is None or int(status.get("pid", -1)) != launched_pid):
        # Started (or resumed) from here, and the trainer has not written its status yet.
        old = status or {}
        return RunInfo(paths.root.name, paths, "starting", int(old.get("step", 0)),
                       int(old.get("total_steps", 0)), "the trainer is starting (loading data and models)",
                       updated=str(launch.get("started", "")))
    if launch is not None and launch.get("stop_requested") and not launched_alive and \
            (status is None or int(status.get("pid", -1)) != launched_pid):
        return RunInfo(paths.root.name, paths, "stopped", message="stopped before training began",
                       updated=str(launch.get("started", "")))
    if status is None:
        if launch is not None:
            return RunInfo(paths.root.name, paths, "failed to start", message="see train.log",
                           updated=str(launch.get("started", "")))
        return RunInfo(paths.root.name, paths, "unknown", message="no status.json")
    return RunInfo(paths.root.name, paths, str(status.get("state")), int(status.get("step", 0)),
                   int(status.get("total_steps", 0)), str(status.get("message", "")),
                   status.get("eta_seconds"), status.get("loss"), str(status.get("updated", "")))


def list_runs(runs_dir: str | os.PathLike) -> list[RunInfo]:
    """Every run folder under `runs_dir`, newest first (by folder modification time)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
               and any((p / name).exists() for name in ("config.json", "status.json", STUDIO_FILE))]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [run_info(RunPaths(p)) for p in folders]


def runs_table(runs: list[RunInfo]) -> pd.DataFrame:
    """The runs as a table for the page."""
    rows = [{"run": r.name, "state": r.state, "step": f"{r.step}/{r.total_steps}" if r.total_steps else "",
             "ETA": format_seconds(r.eta_seconds) if r.state == RUNNING else "",
             "loss": f"{r.loss:.4f}" if isinstance(r.loss, (int, float)) else "",
             "updated": r.updated} for r in runs]
    return pd.DataFrame(rows, columns=["run", "state", "step", "ETA", "loss", "updated"])


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def check_run_name(name: str) -> str:
    name = name.strip()
    if not RUN_NAME.fullmatch(name):
        raise TrainingError("a run name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def parse_extra_flags(text: str) -> list[str]:
    """Validate extra trainer flags (e.g. "--crop-size 64 --lr 1e-4") against the CLI's parser."""
    from ..cli import build_parser

    try:
        flags = shlex.split(text or "")
    except ValueError as error:
        raise TrainingError(f"extra flags: {error}") from None
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in RESERVED_FLAGS:
            raise TrainingError(f"extra flags: {name} is set by the form above")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(["train", "--out", "run", *flags])
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        raise TrainingError(f"extra flags: {message[-1] if message else 'not understood'}") from None
    return flags


def _launch(paths: RunPaths, arguments: list[str]) -> int:
    """Start `python -m chimle train ARGUMENTS` detached, output appended to train.log."""
    command = [sys.executable, "-m", "chimle", "train", *arguments, "--no-progress"]
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.log, "ab") as log:
        log.write(f"\n[{now()}] studio: {shlex.join(command)}\n".encode())
        log.flush()
        # A new session: the run survives the app, and Stop can signal the whole group.
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=PROJECT_ROOT, env=environment, start_new_session=True)
    with _children_lock:
        _children[child.pid] = child
    atomic_write_json(paths.root / STUDIO_FILE, {"pid": child.pid, "started": now(), "command": command})
    return child.pid


@dataclass(frozen=True)
class StartingModel:
    """A model a new run can start from (`--init-from`), and the options a run from it takes."""

    entry: ModelEntry
    options: InitOptions

    @property
    def label(self) -> str:
        trained_here = ", trained here" if self.entry.source == "run" else ""
        return f"{self.entry.name} (preset {self.options.preset}{trained_here})"


def starting_models(checkpoints_dir: str | os.PathLike, runs_dir: str | os.PathLike,
                    task: str) -> list[StartingModel]:
    """The models a run of `task` can start from: the task's default shipped model first
    (`checkpoints/default.json`), then the other shipped ones, then finished runs. Models
    that no preset builds are left out: a run could not start from them."""
    default = read_defaults(checkpoints_dir).get(task)
    entries = [entry for entry in find_models(checkpoints_dir, runs_dir) if entry.task == task]
    entries.sort(key=lambda entry: not (entry.source == "checkpoint" and entry.name == default))  # stable
    models = []
    for entry in entries:
        try:
            models.append(StartingModel(entry, init_options(entry.path)))
        except ValueError:  # CheckpointError included
            continue
    return models


def start_choices(models: list[StartingModel]) -> list[tuple[str, str]]:
    """The Start from dropdown's (label, value) choices: the models' paths, then a new model."""
    return [(model.label, str(model.entry.path)) for model in models] + [("a new model (from scratch)", FROM_SCRATCH)]


def train_arguments(paths: RunPaths, task: str, preset: str, steps: int, data: str | os.PathLike,
                    extra_flags: list[str] | None = None, start: StartingModel | None = None) -> list[str]:
    """The `python -m chimle train` arguments of a new run in `paths` (`_launch` adds --no-progress).

    Args:
        start: the model the run starts from; its task and preset must be `task` and `preset`,
            and it sets the semantic prior and the task's parameters.
    """
    extra_flags = list(extra_flags or [])
    arguments = ["--out", str(paths.root), "--data", str(Path(data).resolve()), "--steps", str(int(steps))]
    if start is None:
        return arguments + ["--task", task, "--preset", preset, *extra_flags]
    if (start.options.task, start.options.preset) != (task, preset):
        raise TrainingError(f"{start.entry.name} is a {start.options.task} model of preset {start.options.preset}; "
                            f"a run from it has that task and preset")
    for flag in extra_flags:
        if flag.split("=", 1)[0] in STARTING_MODEL_FLAGS:
            raise TrainingError(f"extra flags: {flag.split('=', 1)[0]} is set by the model the run starts from")
    return arguments + ["--init-from", str(start.entry.path), *start.options.arguments(), *extra_flags]


def start_run(runs_dir: str | os.PathLike, name: str, task: str, preset: str, steps: int,
              data: str | os.PathLike, extra_flags: list[str] | None = None,
              start: StartingModel | None = None) -> RunPaths:
    """Start a new run in `runs_dir/name` training on the folder `data`, from `start`'s weights if given."""
    paths = RunPaths(Path(runs_dir).resolve() / check_run_name(name))
    if paths.config.exists() or paths.status.exists() or (paths.root / STUDIO_FILE).exists():
        raise TrainingError(f"a run named {name} exists already; pick another name or resume it")
    if int(steps) < 1:
        raise TrainingError("train for at least one step")
    _launch(paths, train_arguments(paths, task, preset, steps, data, extra_flags, start))
    return paths


def resume_run(paths: RunPaths, steps: int | None = None) -> None:
    """Continue a stopped, dead or failed run (optionally to a new total of `steps`)."""
    info = run_info(paths)
    extend = steps is not None and int(steps) > info.total_steps
    if not (info.can_resume or (info.state == FINISHED and extend)):
        raise TrainingError(f"run {info.name} is {info.state}; only stopped, dead or failed runs "
                            f"(or finished ones given more steps) can be resumed")
    _launch(paths, ["--resume", str(paths.root), *(["--steps", str(int(steps))] if extend else [])])


def _is_trainer(pid: int) -> bool:
    """Whether `pid` still runs `chimle train` (a recycled pid must not be signalled)."""
    if not Path("/proc/self").exists():
        return pid_alive(pid)  # no /proc (macOS): trust the pid the run folder names
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"chimle" in arguments and b"train" in arguments


def _signal(pid: int, signum: int) -> None:
    """Signal the trainer's process group if it leads one (it does when we started it), else it."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_after_grace(pid: int, grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not pid_alive(pid):
            return
        time.sleep(0.5)
    if pid_alive(pid) and _is_trainer(pid):
        _signal(pid, signal.SIGKILL)
    _reap()


def stop_run(paths: RunPaths, grace: float = STOP_GRACE_SECONDS) -> str:
    """Ask the trainer to stop (SIGTERM: it finishes the step and checkpoints), SIGKILL after `grace` s."""
    info = run_info(paths)
    if not info.can_stop:
        raise TrainingError(f"run {info.name} is {info.state}, not running")
    status = effective_status(paths) or {}
    launch = _read_launch(paths) or {}
    pid = int(status["pid"]) if info.state == RUNNING else int(launch.get("pid", -1))
    if pid <= 0 or not pid_alive(pid) or not _is_trainer(pid):
        raise TrainingError(f"run {info.name}: its process is not a running trainer")
    if launch.get("pid") == pid:
        atomic_write_json(paths.root / STUDIO_FILE, dict(launch, stop_requested=now()))
    _signal(pid, signal.SIGTERM)
    threading.Thread(target=_kill_after_grace, args=(pid, grace), daemon=True,
                     name=f"stop-{info.name}").start()
    return (f"asked run {info.name} to stop; it finishes its current step and saves a checkpoint "
            f"(forced after {grace:.0f} s)")


def loss_frame(paths: RunPaths) -> pd.DataFrame:
    """The loss curve: total and per-level loss against step, long format for gr.LinePlot."""
    rows = []
    for record in read_metrics(paths):
        if "step" not in record or "loss" not in record:
            continue
        rows.append({"step": record["step"], "loss": record["loss"], "series": "total"})
        for level, value in enumerate(record.get("loss_per_level") or [], start=1):
            rows.append({"step": record["step"], "loss": value, "series": f"level {level}"})
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def _model_name(path: str | os.PathLike) -> str:
    """A model's name as the model lists show it: the file's stem, or a run's folder name."""
    path = Path(path)
    return path.parent.name if path == RunPaths(path.parent).final_model else path.stem


def validation_text(paths: RunPaths) -> str:
    """The run's latest validation figure, beside the one of the model it started from
    (the trainer's validation.jsonl); empty before the first."""
    records = [r for r in read_validation(paths) if isinstance(r.get("best_lpips"), (int, float))]
    start = next((r for r in records if r.get("step") == 0 and r.get("start_model")), None)
    latest = next((r for r in reversed(records) if r.get("step", 0) > 0), None)
    shown = latest or start
    if shown is None:
        return ""
    how = (f"best of {shown.get('samples', '?')} samples on each of {shown.get('crops', '?')} fixed validation crops, "
           f"lower is better")
    if latest is None:
        return (f"Validation LPIPS of {_model_name(start['start_model'])}, the model this run started from: "
                f"{start['best_lpips']:.3f} ({how}; the run's own comes with its first sample grid).")
    text = f"Validation LPIPS {latest['best_lpips']:.3f} at step {latest['step']}"
    if start is not None:
        text += f" (started from {_model_name(start['start_model'])}: {start['best_lpips']:.3f})"
    return f"{text}; {how}."


def latest_sample(paths: RunPaths) -> Path | None:
    """The newest sample grid the trainer wrote, if any."""
    grids = sorted(paths.samples.glob("step-*.png")) if paths.samples.is_dir() else []
    return grids[-1] if grids else None


def log_tail(paths: RunPaths, max_lines: int = 15, max_bytes: int = 16_384) -> str:
    """The end of train.log (read from the end: the log can be long)."""
    try:
        with open(paths.log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # tqdm-style carriage returns: keep what a terminal would show last on each line.
    lines = [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")]
    return "\n".join(lines[-max_lines:])
