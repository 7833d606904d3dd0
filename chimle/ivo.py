"""Inference via optimisation (IvO, docs/method.md#inference-via-optimisation).

Keep the weights fixed and optimise the latent code so that T(x, z) matches a given
target. A model that covers the target's mode reconstructs it almost exactly, so the
final error measures mode coverage (the paper reports MSE); in the studio it is also a
tool: "find the sample closest to this reference".

With a mask the objective is a masked distance instead (`masked_distance`): only painted
pixels count, so the studio's colour hints ("this coat is red") pull the strokes' pixels
toward their colours and leave the rest of the image to the code prior
(docs/method.md#colour-hints). `hint_search` finds the starting code for that: the best of
many random codes under the same masked distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F

from .codes import LatentCodes
from .color import rgb_to_lab
from .imageops import to_unit_range
from .model import TowerImplicitModel
from .search import Distance, SearchResult, cimle_search, evaluate_candidates
from .tasks import AB_SCALE, Task

# Where a masked distance compares colours: CIELab's chroma (a, b; lightness left out, so a
# stroke says "red" rather than "this red, this light"), or plain RGB.
ColourSpace = Literal["ab", "rgb"]
COLOUR_SPACES = ("ab", "rgb")


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
        colour_space: where a masked objective compares colours (`masked_distance`); used only
            when `ivo_steps` is given a mask.
        chunk_size: candidates rendered per forward pass in a masked search (memory, not results).
    """

    steps: int = 200
    lr: float = 0.05
    init_samples: int = 16
    lpips_weight: float = 1.0
    prior_weight: float = 1e-3
    report_every: int = 10
    colour_space: ColourSpace = "ab"
    chunk_size: int = 16

    def __post_init__(self) -> None:
        if self.steps < 0 or self.init_samples < 1 or self.report_every < 1 or self.lr <= 0 \
                or self.colour_space not in COLOUR_SPACES or self.chunk_size < 1:
            raise ValueError(f"invalid IvO config: {self}")


@dataclass
class IvOProgress:
    """State after `step` steps: the current code, its RGB image and its errors (per image).

    With a mask, `mse` is the masked distance and `lpips` is None (LPIPS compares whole images).
    """

    step: int
    codes: LatentCodes
    image: torch.Tensor
    mse: torch.Tensor
    lpips: torch.Tensor | None


def masked_distance(images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                    space: ColourSpace = "ab") -> torch.Tensor:
    """Mean squared colour difference over the painted pixels only, weighted by the mask.

    A pixel with mask 0 takes no part: the distance, and its gradient, do not depend on it.

    Args:
        images: (B, 3, H, W) RGB in [-1, 1].
        targets: (B or 1, 3, H, W) RGB in [-1, 1]; only painted pixels matter.
        masks: (B or 1, 1, H, W) in [0, 1]; every image needs a painted pixel.
        space: "ab" compares CIELab a and b divided by `tasks.AB_SCALE` (so about [-1, 1]),
            "rgb" the RGB values.

    Returns:
        (B,) distances.
    """
    if images.dim() != 4 or images.shape[1] != 3 or targets.shape[-3:] != images.shape[-3:] \
            or masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"expected images (B, 3, H, W) with targets (B, 3, H, W) and masks (B, 1, H, W), got "
                         f"{tuple(images.shape)}, {tuple(targets.shape)} and {tuple(masks.shape)}")
    if space not in COLOUR_SPACES:
        raise ValueError(f"space must be one of {COLOUR_SPACES}, got {space!r}")
    painted = masks.sum((1, 2, 3))
    if not (painted > 0).all():
        raise ValueError("a masked distance needs at least one painted pixel per image")
    if space == "ab":
        images = rgb_to_lab(to_unit_range(images))[:, 1:] / AB_SCALE
        targets = rgb_to_lab(to_unit_range(targets))[:, 1:] / AB_SCALE
    squared = (images - targets).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
    return (masks * squared).sum((1, 2, 3)) / painted


def hint_search(net: TowerImplicitModel, task: Task, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                num_samples: int, space: ColourSpace = "ab", generator: torch.Generator | None = None,
                chunk_size: int = 16, include: LatentCodes | None = None) -> SearchResult:
    """The best of `num_samples` random codes (and `include`) under `masked_distance`: cIMLE's draw, masked.

    Candidates are rendered `chunk_size` at a time through `search.evaluate_candidates`,
    the input encoded once.

    Args:
        x: (1, in_channels, h, w) the model input.
        target: (1, 3, H, W) the strokes' colours at the output size, in [-1, 1].
        mask: (1, 1, H, W) where they are painted, in [0, 1].
        include: candidate codes to judge beside the random ones (the studio's current code),
            preferred on ties.

    Returns:
        The winner (batch 1); `distances` is (1, 1), its masked distance.
    """
    if x.shape[0] != 1 or target.shape[0] != 1 or mask.shape[0] != 1:
        raise ValueError("hint_search finds a code for one image at a time")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    shape = net.code_shape(tuple(target.shape[-2:]))
    with torch.inference_mode():
        candidates = LatentCodes.sample(shape, num_samples, generator, x.device)
        if include is not None:
            candidates = LatentCodes.cat([include.to(x.device), candidates])
        # The mask travels as a fourth channel of the target, so each chunk gets its own rows.
        packed = torch.cat([target, mask.to(target.dtype)], 1)  # (1, 4, H, W)

        def distance(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return masked_distance(images, targets[:, :3], targets[:, 3:], space)

        owners = torch.zeros(candidates.batch_size, dtype=torch.long, device=x.device)
        distances = evaluate_candidates(net, task, distance, x, candidates, owners, packed, net.num_levels,
                                        chunk_size, context=net.encode(x, shape.local_sizes))
        best = int(distances.argmin())
    return SearchResult(candidates[best], distances[best].view(1, 1), candidates.batch_size)


def ivo_steps(net: TowerImplicitModel, task: Task, distance: Distance | None, x: torch.Tensor,
              target: torch.Tensor, config: IvOConfig = IvOConfig(), init: LatentCodes | None = None,
              generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> Iterator[IvOProgress]:
    """Optimise codes for (x, target), yielding progress every `report_every` steps and at the end.

    The caller may stop iterating at any time (the studio's Stop button); the last
    progress it saw holds the best code so far. Weights are never changed.

    Args:
        distance: the perceptual distance (LPIPS) of the objective; unused with a mask.
        x: (B, in_channels, h, w) model inputs.
        target: (B, 3, H, W) RGB targets in [-1, 1].
        init: starting codes; default the best of `init_samples` random codes (under the
            masked distance with a mask: `hint_search`).
        mask: (B or 1, 1, H, W) in [0, 1]: optimise `masked_distance` in `config.colour_space`
            on the painted pixels instead of MSE + LPIPS on the whole image; the code prior stays.
    """
    if mask is None and distance is None:
        raise ValueError("IvO without a mask needs a distance (LPIPS)")
    if init is None and mask is not None:
        if x.shape[0] != 1:
            raise ValueError("a masked IvO without starting codes searches one image at a time")
        init = hint_search(net, task, x, target, mask, config.init_samples, config.colour_space, generator,
                           config.chunk_size).codes
    elif init is None:
        init = cimle_search(net, task, distance, x, target, config.init_samples, generator).codes
    parameters = [t.detach().clone().requires_grad_(True) for t in (*init.globals, *init.locals)]
    levels = init.num_levels
    optimiser = torch.optim.Adam(parameters, lr=config.lr)
    requires_grad = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)  # gradients flow to the code only
    # The semantic maps depend on x alone: computed once, not in every step's forward pass.
    with torch.no_grad():
        context = net.encode(x, init.shape.local_sizes)
    try:
        for step in range(config.steps + 1):
            codes = LatentCodes(parameters[:levels], parameters[levels:])
            image = task.to_rgb(x, net.render(x, codes, context=context).outputs[-1])
            if mask is None:
                mse = F.mse_loss(image, target, reduction="none").mean((1, 2, 3))
                lpips = distance(image, target)
                fit = mse + config.lpips_weight * lpips
            else:
                mse = fit = masked_distance(image, target, mask, config.colour_space)
                lpips = None
            if step % config.report_every == 0 or step == config.steps:
                yield IvOProgress(step, codes.detach().clone(), image.detach(), mse.detach(),
                                  lpips.detach() if lpips is not None else None)
            if step == config.steps:
                break
            prior = sum((p.pow(2).mean() - 1).pow(2) for p in parameters)
            objective = fit.sum() + config.prior_weight * prior
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
