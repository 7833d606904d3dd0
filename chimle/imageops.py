"""Small tensor image helpers shared by tasks, search and the model.

Images are float tensors (B, C, H, W). RGB images live in [-1, 1] throughout the package,
the range LPIPS expects, so no module has to guess a convention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, C, H, W) images to `size` = (H', W'), anti-aliased when shrinking.

    Anti-aliasing matters for the per-level targets D_l(y): plain bilinear sampling of a
    4x smaller image aliases fine texture into the coarse levels' supervision.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    antialias = shrinking and mode in ("bilinear", "bicubic")
    return F.interpolate(images, size=size, mode=mode, antialias=antialias,
                         align_corners=False if mode in ("bilinear", "bicubic") else None)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] images to [0, 1], clamped."""
    return ((images + 1) / 2).clamp(0, 1)


def from_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] images to [-1, 1]."""
    return images * 2 - 1
