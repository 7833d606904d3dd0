"""From a user's photo to model inputs and back: the path the CLI and the studio share.

The model needs output sides that are multiples of 2^levels and is sized for photos of a
few hundred pixels. `prepare` resizes a photo whose longer side exceeds `max_side` (the
caller says so to the user), pads the rest by replicating edges up to the next multiple,
and `render` crops the padding away again: nothing is silently cut off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from .codes import LatentCodes
from .images import fit_within, pil_to_tensor
from .model import Render, TowerImplicitModel
from .tasks import Task

MIN_SIDE = 16


@dataclass
class PreparedInput:
    """A photo made ready for one model.

    Attributes:
        x: (1, in_channels, h, w) model input, padded.
        output_size: (H, W) of the padded output; a multiple of 2^levels.
        crop: (H, W) of the output that corresponds to the photo (padding excluded).
        notes: what was done to the photo, in words for the user.
    """

    x: torch.Tensor
    output_size: tuple[int, int]
    crop: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def prepare(net: TowerImplicitModel, task: Task, image: Image.Image, max_side: int = 512) -> PreparedInput:
    """Turn an RGB photo into a padded model input for `net` and `task`.

    For super-resolution the photo is the low-resolution input; `max_side` then bounds the
    output (photo side times the factor).
    """
    notes = []
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"the image is {width}x{height}; each side needs at least {MIN_SIDE} pixels")
    scale = task.output_size((1, 1), net.num_levels)[0]  # output pixels per input pixel
    input_limit = max(max_side // scale, MIN_SIDE)
    if max(width, height) > input_limit:
        shrink = input_limit / max(width, height)
        small_w, small_h = max(1, round(width * shrink)), max(1, round(height * shrink))  # as fit_within
        if min(small_w, small_h) < MIN_SIDE:
            raise ValueError(f"the image is {width}x{height}, too elongated: fitted to the working size it "
                             f"would be {small_w}x{small_h}, and each side needs at least {MIN_SIDE} pixels; "
                             f"crop it or choose a larger working size")
        image = fit_within(image, input_limit)
        notes.append(f"resized from {width}x{height} to {image.size[0]}x{image.size[1]} "
                     f"(this model works at up to {max_side} pixels per side)")
    rgb = pil_to_tensor(image)  # (1, 3, h, w)
    if task.name == "colourization" and _has_colour(rgb):
        notes.append("the colour photo was converted to grey (its lightness) before colourizing")
    x = task.prepare_input(rgb)
    in_h, in_w = x.shape[-2:]
    crop = task.output_size((in_h, in_w), net.num_levels)
    multiple = 2 ** net.num_levels
    # Pad the input so the output is a multiple of 2^levels (SR outputs always are).
    unit = max(multiple // scale, 1)
    pad_h, pad_w = (-in_h) % unit, (-in_w) % unit
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    output_size = task.output_size(tuple(x.shape[-2:]), net.num_levels)
    return PreparedInput(x, output_size, crop, notes)


def _has_colour(rgb: torch.Tensor, tolerance: float = 2 / 255) -> bool:
    return bool((rgb.max(1).values - rgb.min(1).values).max() > tolerance)


def sample_codes(net: TowerImplicitModel, prepared: PreparedInput, num: int, seed: int) -> LatentCodes:
    """`num` fresh codes for this input, reproducible from `seed`."""
    return LatentCodes.sample(net.code_shape(prepared.output_size), num, torch.Generator().manual_seed(seed))


def render(net: TowerImplicitModel, task: Task, prepared: PreparedInput, codes: LatentCodes,
           reuse: Render | None = None, start_level: int = 0) -> tuple[list[torch.Tensor], Render]:
    """Every level's RGB image, padding cropped away, and the render for later reuse.

    Returns:
        (images, render): images[l] is (B, 3, h_l, w_l) in [-1, 1].
    """
    x = prepared.x.expand(codes.batch_size, -1, -1, -1)
    with torch.inference_mode():
        result = net.render(x, codes, reuse=reuse, start_level=start_level)
        images = []
        full_h, full_w = prepared.output_size
        for output in result.outputs:
            h, w = output.shape[-2:]
            crop_h = max(1, round(prepared.crop[0] * h / full_h))
            crop_w = max(1, round(prepared.crop[1] * w / full_w))
            images.append(task.to_rgb(x, output)[..., :crop_h, :crop_w].clamp(-1, 1))
    return images, result
