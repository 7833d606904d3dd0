"""Inference via optimisation (IvO, docs/method.md#inference-via-optimisation).

Keep the weights fixed and optimise the latent code so that T(x, z) matches a given
target. A model that covers the target's mode reconstructs it almost exactly, so the
final error measures mode coverage (the paper reports MSE); in the studio it is also a
tool: "find the sample closest to this reference".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .codes import LatentCodes
from .model import TowerImplicitModel
from .search import Distance, cimle_search
from .tasks import Task


@dataclass(frozen=True)
class IvOConfig:
    """Options of the code optimisation.

    Attributes:
        steps: Adam steps on the code.
        lr: Adam learning rate on the code (the code is N(0, I), so ~0.05 moves it quickly).
        init_samples: start from the best of this many random codes (a cIMLE search).
        lpips_weight: weight of LPIPS in the objective next to the MSE; LPIPS pulls out of
            the blurry minima that MSE alone settles in.
        prior_weight: pull toward the N(0, I) shell, so the code stays one the model knows.
        report_every: yield progress every this many steps.
    """

    steps: int = 200
    lr: float = 0.05
    init_samples: int = 16
    lpips_weight: float = 1.0
    prior_weight: float = 1e-3
    report_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 0 or self.init_samples < 1 or self.report_every < 1 or self.lr <= 0:
            raise ValueError(f"invalid IvO config: {self}")


@dataclass
class IvOProgress:
    """State after `step` steps: the current code, its RGB image and its errors (per image)."""

    step: int
    codes: LatentCodes
    image: torch.Tensor
    mse: torch.Tensor
    lpips: torch.Tensor


def ivo_steps(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
              target: torch.Tensor, config: IvOConfig = IvOConfig(), init: LatentCodes | None = None,
              generator: torch.Generator | None = None) -> Iterator[IvOProgress]:
    """Optimise codes for (x, target), yielding progress every `report_every` steps and at the end.

    The caller may stop iterating at any time (the studio's Stop button); the last
    progress it saw holds the best code so far. Weights are never changed.

    Args:
        x: (B, in_channels, h, w) model inputs.
        target: (B, 3, H, W) RGB targets in [-1, 1].
        init: starting codes; default the best of `init_samples` random codes.
    """
    if init is None:
        init = cimle_search(net, task, distance, x, target, config.init_samples, generator).codes
    parameters = [t.detach().clone().requires_grad_(True) for t in (*init.globals, *init.locals)]
    levels = init.num_levels
    optimiser = torch.optim.Adam(parameters, lr=config.lr)
    requires_grad = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)  # gradients flow to the code only
    try:
        for step in range(config.steps + 1):
            codes = LatentCodes(parameters[:levels], parameters[levels:])
            image = task.to_rgb(x, net(x, codes)[-1])
            mse = F.mse_loss(image, target, reduction="none").mean((1, 2, 3))
            lpips = distance(image, target)
            if step % config.report_every == 0 or step == config.steps:
                yield IvOProgress(step, codes.detach().clone(), image.detach(), mse.detach(), lpips.detach())
            if step == config.steps:
                break
            prior = sum((p.pow(2).mean() - 1).pow(2) for p in parameters)
            objective = (mse + config.lpips_weight * lpips).sum() + config.prior_weight * prior
            optimiser.zero_grad(set_to_none=True)
            objective.backward()
            optimiser.step()
    finally:
        for parameter, flag in zip(net.parameters(), requires_grad):
            parameter.requires_grad_(flag)


def invert(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
           target: torch.Tensor, config: IvOConfig = IvOConfig(), init: LatentCodes | None = None,
           generator: torch.Generator | None = None) -> IvOProgress:
    """Run IvO to the end and return the final progress (codes, image, MSE, LPIPS)."""
    last = None
    for last in ivo_steps(net, task, distance, x, target, config, init, generator):
        pass
    return last
