"""Shared pieces of the studio tests: tiny checkpoints, small real photos, free ports."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from chimle.checkpoint import save_checkpoint
from chimle.config import preset
from chimle.model import TowerImplicitModel
from chimle.tasks import make_task

PHOTO_NAMES = ("astronaut", "chelsea", "coffee")


def tiny_checkpoint(folder: Path, task_name: str = "colourization", levels: int = 3, seed: int = 0,
                    name: str | None = None) -> Path:
    """A tiny model with `levels` levels saved as a checkpoint; random AdaIN weights so that
    global codes visibly change the output (an untrained AdaIN starts as a plain instance norm)."""
    task = make_task(task_name)
    config = preset("tiny", task.in_channels, task.out_channels, channels=(8,) * levels,
                    growth=(8,) * levels, rrdbs=(1,) * levels)
    torch.manual_seed(seed)
    net = TowerImplicitModel(config).eval()
    for level in net.levels:
        for adain in level.adains:
            torch.nn.init.normal_(adain.affine.weight, std=0.5)
    path = Path(folder) / f"{name or f'tiny-{task_name}'}.safetensors"
    save_checkpoint(path, net, task, {"step": 0})
    return path


def photo(name: str = "astronaut", size: tuple[int, int] = (80, 64)) -> Image.Image:
    """A real photo from scikit-image as a small RGB image of `size` = (width, height)."""
    from skimage import data

    array = getattr(data, name)()
    return Image.fromarray(np.ascontiguousarray(array[..., :3])).convert("RGB").resize(size, Image.LANCZOS)


def write_photos(folder: Path, side: int = 160) -> list[Path]:
    """A few real photos as PNG thumbnails (longer side `side`), for training runs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTO_NAMES:
        image = photo(name, (side, side * 3 // 4) if name != "astronaut" else (side, side))
        path = folder / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_app(settings) -> Iterator[str]:
    """The studio for `settings` (a `StudioSettings`) served on a free port: its URL, closed after."""
    import app

    demo = app.build_demo(settings)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options(settings))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def one_torch_thread():
    """Generator for a module-scoped fixture: one torch thread while the module runs.

    These tests share two cores with other CPU-heavy jobs, where oversubscribed intra-op
    threads made IvO steps 5-10x slower than one thread. Test modules bind it with
    `single_thread = pytest.fixture(scope="module")(one_torch_thread)`.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def stop_leftover_runs(runs_dir: Path) -> None:
    """Stop trainers a failed test left running (they run in their own sessions and would outlive pytest)."""
    from chimle.studio import training

    for run in training.list_runs(runs_dir):
        if run.can_stop:
            try:
                training.stop_run(run.paths, grace=5)
            except training.TrainingError:
                continue
