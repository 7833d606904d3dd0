"""The IMLE training loss with intermediate supervision (docs/method.md#training).

Every level's output is compared with the observed image downsampled to that level, so
each partial output the search relies on is itself trained to be meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .codes import LatentCodes
from .model import TowerImplicitModel
from .search import Distance, level_targets
from .tasks import Task


@dataclass
class LossResult:
    """total: the scalar to minimise; per_level: (L,) mean LPIPS per level (detached)."""

    total: torch.Tensor
    per_level: torch.Tensor


def imle_loss(net: TowerImplicitModel | torch.nn.Module, task: Task, distance: Distance, x: torch.Tensor,
              codes: LatentCodes, y: torch.Tensor, level_weights: tuple[float, ...] | None = None,
              l1_weight: float = 0.0) -> LossResult:
    """sum_l w_l * mean_i d(T_l(x_i, z_i), D_l(y_i)), plus an optional L1 term on the final level.

    Args:
        net: the model, or a DistributedDataParallel wrapping it.
        codes: the codes the search chose for these images.
        level_weights: one weight per level; default equal weights of 1 (the authors').
        l1_weight: weight of a pixel L1 term on the final output (0 in the paper).
    """
    # Under DistributedDataParallel the forward goes through the wrapper (it syncs the
    # gradients); the model's structure is read from the wrapped module.
    core = getattr(net, "module", net)
    weights = level_weights or (1.0,) * core.num_levels
    if len(weights) != core.num_levels:
        raise ValueError(f"level_weights has {len(weights)} entries; the model has {core.num_levels} levels")
    targets = level_targets(core, y)
    images = [task.to_rgb(x, out) for out in net(x, codes)]
    per_level = torch.stack([distance(image, target).mean() for image, target in zip(images, targets)])
    total = (torch.tensor(weights, dtype=per_level.dtype, device=per_level.device) * per_level).sum()
    if l1_weight:
        total = total + l1_weight * (images[-1] - targets[-1]).abs().mean()
    return LossResult(total, per_level.detach())
