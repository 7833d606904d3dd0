"""Shared fixtures: tiny models, real photos, the real LPIPS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chimle.config import preset
from chimle.model import TowerImplicitModel
from chimle.tasks import make_task


def photo(name: str = "astronaut", size: int = 64, top: int = 0, left: int = 0) -> torch.Tensor:
    """A real photo from scikit-image, cropped and resized to (1, 3, size, size) in [-1, 1]."""
    from skimage import data

    from chimle.imageops import resize

    array = getattr(data, name)()
    side = min(array.shape[:2])
    array = array[top:top + side, left:left + side, :3]
    image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return resize(image, (size, size)).clamp(-1, 1)


@pytest.fixture
def photos() -> torch.Tensor:
    """Four real 64x64 photos, (4, 3, 64, 64)."""
    return torch.cat([photo(name) for name in ("astronaut", "chelsea", "coffee", "rocket")])


def tiny_model(task_name: str = "colourization", seed: int = 0, **task_params):
    task = make_task(task_name, **task_params)
    torch.manual_seed(seed)
    net = TowerImplicitModel(preset("tiny", task.in_channels, task.out_channels)).eval()
    return net, task


@pytest.fixture(scope="session")
def lpips_alex():
    from chimle.perceptual import load_perceptual_distance

    return load_perceptual_distance("alex")
