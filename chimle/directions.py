"""Main directions of each level's global code, for sliders (GANSpace-style).

The global code z_l is isotropic N(0, I), so its own principal directions mean nothing;
what the network does with it is the mapped vector w_l. As GANSpace does for models
without an editable w space, take the principal components of w_l over many random codes,
then regress z_l on the component scores: the regression's rows are the directions in
z_l that move w_l along its main axes. Edits stay edits of the code, so a saved code
reproduces an edited image exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import TowerImplicitModel


@dataclass
class GlobalDirections:
    """Directions of one level's global code.

    Attributes:
        vectors: (k, G) directions in z_l; moving z_l by `vectors[i]` moves the i-th
            principal score of w_l by one standard deviation.
        explained: (k,) share of w_l's variance along each component.
    """

    vectors: torch.Tensor
    explained: torch.Tensor

    def apply(self, global_code: torch.Tensor, amounts: list[float] | torch.Tensor) -> torch.Tensor:
        """Move (B, G) global codes by `amounts[i]` standard deviations along direction i."""
        amounts = torch.as_tensor(amounts, dtype=self.vectors.dtype)
        if amounts.shape != (self.vectors.shape[0],):
            raise ValueError(f"expected {self.vectors.shape[0]} amounts, got {tuple(amounts.shape)}")
        return global_code + (amounts[:, None] * self.vectors).sum(0)


def global_directions(net: TowerImplicitModel, level: int, num: int = 4, samples: int = 2048,
                      seed: int = 0) -> GlobalDirections:
    """The `num` main directions of level `level`'s (0-based) global code."""
    config = net.config
    if not 0 <= level < net.num_levels:
        raise ValueError(f"level {level} out of range for {net.num_levels} levels")
    num = min(num, config.global_code_dim)
    if num == 0:  # a model without a global code (ModelConfig.global_code_dim = 0) has no directions
        return GlobalDirections(torch.zeros(0, config.global_code_dim), torch.zeros(0))
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        mapped = []
        for coarser in range(level + 1):
            z = torch.randn(samples, config.global_code_dim, generator=generator)
            if coarser == level:
                z_level = z
            mapped.append(net.mappings[coarser](torch.cat([z, *mapped], 1)))
        w = mapped[-1]
        centred = w - w.mean(0)
        _, singular, components = torch.linalg.svd(centred, full_matrices=False)
        scores = centred @ components[:num].T  # (samples, num)
        scores = scores / scores.std(0).clamp_min(1e-8)  # in standard deviations
        # z ≈ scores @ B: least squares; B's rows are the z-space directions.
        directions = torch.linalg.lstsq(scores, z_level - z_level.mean(0)).solution  # (num, G)
        variance = singular.pow(2)
    return GlobalDirections(directions.clone(), (variance[:num] / variance.sum()).clone())
