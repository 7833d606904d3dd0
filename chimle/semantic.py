"""The semantic prior: a frozen ImageNet AlexNet that tells the TIM what is in its input.

A model that has seen a few hundred photos cannot learn from them alone that grass is green
and skies are blue. An ImageNet-trained encoder already tells grass from sky, so the TIM
gets its features as an extra input at every level (docs/method.md#the-semantic-prior).

Two parts:

- `AlexNetTrunk`: torchvision's AlexNet conv layers with the ImageNet weights committed in
  `chimle/weights` (the LPIPS backbone: same file, same checksum, never unpickled). Frozen,
  not part of any checkpoint, shared by every model on a device.
- `SemanticAdapter`: learned, part of the model. Per level, one 1x1 conv per AlexNet layer
  maps that layer's (unit-normalised) activations to `semantic_channels`; the maps are
  resized to the level's working resolution and summed (a learned hypercolumn).

The features depend on the input x only, never on the code: they are computed once per
input image (`TowerImplicitModel.encode`) and reused by every search candidate and every
slider edit of that image.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .imageops import resize

ENCODERS = ("", "alexnet")  # "" = no semantic prior (the paper's model)
# torchvision AlexNet.features: the ReLUs after each of the five convs, as LPIPS taps them.
ALEXNET_TAPS = (1, 4, 7, 9, 11)
ALEXNET_TAP_CHANNELS = (64, 192, 384, 256, 256)
# ImageNet normalisation of torchvision's models, for RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AlexNetTrunk(nn.Module):
    """Frozen ImageNet AlexNet conv layers; `forward` gives the five tapped activations."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import alexnet

        from .perceptual import ALEXNET_BACKBONE_FILE, BackboneSearchPaths, find_backbone_weights

        # Only the committed file: the prior must be the same on every machine, whatever
        # torchvision happens to have cached.
        paths = BackboneSearchPaths(None, ALEXNET_BACKBONE_FILE, None)
        weights, _ = find_backbone_weights("alex", paths)
        self.features = alexnet(weights=None).features[:ALEXNET_TAPS[-1] + 1]
        self.features.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items()})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> AlexNetTrunk:
        return super().train(False)  # a fixed feature extractor

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """RGB (B, 3, H, W) in [-1, 1] -> five maps (B, C_k, h_k, w_k), unit length per pixel."""
        h = ((rgb + 1) / 2 - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in ALEXNET_TAPS:
                # Unit-normalised over channels, as LPIPS does: the five layers' scales differ
                # by orders of magnitude, and the adapter should not have to learn that.
                taps.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return taps


@functools.lru_cache(maxsize=None)
def _trunk_on(device: str) -> AlexNetTrunk:
    return AlexNetTrunk().to(device)


def load_trunk(device: torch.device | str) -> AlexNetTrunk:
    """One shared frozen trunk per device, built on first use."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _trunk_on(str(device))


def encoder_input(x: torch.Tensor, output_size: tuple[int, int], scale: int) -> torch.Tensor:
    """The RGB image the trunk sees: x at `scale` times the final output size.

    A one-channel input (colourization's lightness, in [-1, 1]) is shown as a grey photo.
    Twice the output size puts AlexNet's deepest layer at about the coarsest level's
    resolution, so even level 1 gets a feature per working pixel.
    """
    rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    size = (output_size[0] * scale, output_size[1] * scale)
    return resize(rgb, size, "bilinear").clamp(-1, 1)


class SemanticAdapter(nn.Module):
    """Learned per-level projections of the trunk's taps (a hypercolumn per level)."""

    def __init__(self, num_levels: int, channels: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(c, channels, 1) for c in ALEXNET_TAP_CHANNELS) for _ in range(num_levels))

    def forward(self, taps: list[torch.Tensor], sizes: tuple[tuple[int, int], ...]) -> list[torch.Tensor]:
        """Per level, a (B, channels, h_l, w_l) map at that level's working size `sizes[l]`."""
        maps = []
        for projections, size in zip(self.levels, sizes):
            # Project at the tap's own resolution, then resize: the 1x1 conv and the
            # bilinear resize commute, and the narrow map is much cheaper to resize.
            total = sum(resize(conv(tap), tuple(size), "bilinear") for conv, tap in zip(projections, taps))
            maps.append(F.leaky_relu(total, 0.2))
        return maps
