"""The studio's model registry and the shared, process-wide model cache.

Models are found on disk each time the list is refreshed: every `*.safetensors` in the
checkpoints folder and every finished run's `model.safetensors`. Loading is the expensive
part, so loaded models are shared by all users and kept by path (and file identity, so a
checkpoint rewritten on disk is loaded afresh); only codes live in per-user state.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..checkpoint import CHECKPOINT_FORMAT, Checkpoint, CheckpointError, load_checkpoint, model_fingerprint
from ..directions import GlobalDirections, global_directions
from ..editing import NUM_DIRECTIONS
from ..model import TowerImplicitModel
from ..runs import RunPaths
from ..tasks import TASK_NAMES, Task
from .render_thread import RENDERS


@dataclass(frozen=True)
class ModelEntry:
    """One model the user can pick.

    Attributes:
        name: the checkpoint's file stem, or the run's folder name.
        path: the .safetensors file.
        task: the task name stored in the file's header.
        source: "checkpoint" (the checkpoints folder) or "run" (a finished training run).
    """

    name: str
    path: Path
    task: str
    source: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.task}{', trained here' if self.source == 'run' else ''})"


def read_task_name(path: str | os.PathLike) -> str | None:
    """The task named in a checkpoint's header without loading its weights; None if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        if header.get("format") != CHECKPOINT_FORMAT:
            return None
        return str(json.loads(header["task"])["name"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        return None


def find_models(checkpoints_dir: str | os.PathLike, runs_dir: str | os.PathLike) -> list[ModelEntry]:
    """Every usable model: checkpoints first (by name), then finished runs (by name).

    Files whose header is not a chimle checkpoint are left out here; a file that passes
    this look but is corrupt still fails loudly when loaded (`load_checkpoint`).
    """
    entries = []
    checkpoints_dir, runs_dir = Path(checkpoints_dir), Path(runs_dir)
    if checkpoints_dir.is_dir():
        for path in sorted(checkpoints_dir.glob("*.safetensors")):
            task = read_task_name(path)
            if task is not None:
                entries.append(ModelEntry(path.stem, path, task, "checkpoint"))
    if runs_dir.is_dir():
        for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            path = RunPaths(run).final_model
            task = read_task_name(path) if path.is_file() else None
            if task is not None:
                entries.append(ModelEntry(run.name, path, task, "run"))
    return entries


DEFAULTS_FILE = "default.json"  # in the checkpoints folder: {"defaults": {task name: model name}}


def read_defaults(checkpoints_dir: str | os.PathLike) -> dict[str, str]:
    """Each task's default model (a checkpoint's file stem), as `checkpoints/default.json` names them.

    A missing or unreadable file names none; the page then opens with the first model.
    """
    try:
        defaults = json.loads((Path(checkpoints_dir) / DEFAULTS_FILE).read_text())["defaults"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(defaults, dict):
        return {}
    return {str(task): str(name) for task, name in defaults.items()}


def default_model(entries: list[ModelEntry], checkpoints_dir: str | os.PathLike) -> ModelEntry | None:
    """The model the page opens with: the default of the first task (in `TASK_NAMES` order) that
    has a model in `entries`, else that task's first model; None without models."""
    if not entries:
        return None
    defaults = read_defaults(checkpoints_dir)
    tasks = sorted({entry.task for entry in entries},
                   key=lambda task: TASK_NAMES.index(task) if task in TASK_NAMES else len(TASK_NAMES))
    first_task = [entry for entry in entries if entry.task == tasks[0]]
    named = [entry for entry in first_task if entry.source == "checkpoint" and entry.name == defaults.get(tasks[0])]
    return (named or first_task)[0]


@dataclass
class LoadedModel:
    """A loaded checkpoint shared by every session, with per-level directions computed once."""

    path: Path
    checkpoint: Checkpoint
    fingerprint: str
    _directions: dict[int, GlobalDirections] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def net(self) -> TowerImplicitModel:
        return self.checkpoint.net

    @property
    def task(self) -> Task:
        return self.checkpoint.task

    @property
    def num_levels(self) -> int:
        return self.net.num_levels

    def directions(self, level: int) -> GlobalDirections:
        """The main directions of level `level`'s global code (computed on first use, on the
        render thread: it runs torch ops)."""
        with self._lock:
            if level in self._directions:
                return self._directions[level]
        return RENDERS.run(self._compute_directions, level)

    def _compute_directions(self, level: int) -> GlobalDirections:
        with self._lock:
            if level in self._directions:  # computed while this call waited its turn
                return self._directions[level]
        directions = global_directions(self.net, level, NUM_DIRECTIONS)
        with self._lock:
            return self._directions.setdefault(level, directions)

    def describe(self) -> str:
        """A short description for the page: task, levels, size, training steps."""
        config = self.net.config
        parameters = sum(p.numel() for p in self.net.parameters())
        step = self.checkpoint.metadata.get("step")
        trained = f", trained {step} steps" if step is not None else ""
        global_code = f"global code {config.global_code_dim}" if config.global_code_dim else "no global code"
        regions = f" ({config.region_codes} region codes at level 1)" if config.region_codes else ""
        return (f"{self.task.name}, {self.num_levels} levels, {parameters / 1e6:.2f} M parameters, "
                f"{global_code}, local code {config.local_code_channels} channels{regions}{trained}")


class ModelCache:
    """Loaded models by file, least recently used dropped first (bounded memory)."""

    def __init__(self, capacity: int = 3) -> None:
        self.capacity = capacity
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike) -> LoadedModel:
        """The model in `path`, loading it unless the same file is already loaded.

        Raises:
            CheckpointError: the file is missing or not a valid checkpoint.
        """
        resolved = Path(path).resolve()
        try:
            info = resolved.stat()
        except OSError:
            raise CheckpointError(f"{path}: no such file") from None
        key = (str(resolved), info.st_mtime_ns, info.st_size)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        # Loading runs torch ops: on the render thread, as every torch op of the studio
        # (`render_thread` says why), and there one load at a time.
        return RENDERS.run(self._load, key, resolved)

    def _load(self, key: tuple, resolved: Path) -> LoadedModel:
        with self._lock:
            if key in self._models:  # loaded while this load waited its turn
                return self._models[key]
        checkpoint = load_checkpoint(resolved)
        # Shared weights are never trained here: IvO optimises codes only, and with the
        # flags off, concurrent IvO runs cannot leave gradients on the shared weights.
        checkpoint.net.requires_grad_(False)
        model = LoadedModel(resolved, checkpoint, model_fingerprint(checkpoint.net, checkpoint.task))
        with self._lock:
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return model


MODELS = ModelCache()
