"""From a user's photo to model inputs and back: the path the CLI and the studio share.

The model needs output sides that are multiples of 2^levels and is sized for photos of a
few hundred pixels. `prepare` resizes a photo whose longer side exceeds `max_side` (the
caller says so to the user), pads the rest by replicating edges up to the next multiple,
and `render` crops the padding away again: nothing is silently cut off.

That working size is for exploring: codes are drawn and edited there, where a render takes
a fraction of a second. `render_full_size` makes a code's result at the photo's own size
(docs/method.md#results-at-the-photos-own-size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from .codes import LatentCodes
from .imageops import resize
from .images import fit_within, pil_to_tensor
from .model import Render, TowerImplicitModel
from .tasks import Task
from .tiling import render_tiled

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
        full_h, full_w = task.output_size((height, width), net.num_levels)
        notes.append(f"resized from {width}x{height} to {image.size[0]}x{image.size[1]} to explore it (the "
                     f"working size is at most {max_side} pixels per side); saved results are made at "
                     f"{full_w}x{full_h}")
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


def _cropped(prepared: PreparedInput, image: torch.Tensor) -> torch.Tensor:
    """`image` (at any level's size) with the padding `prepare` added cropped away."""
    h, w = image.shape[-2:]
    full_h, full_w = prepared.output_size
    crop_h = max(1, round(prepared.crop[0] * h / full_h))
    crop_w = max(1, round(prepared.crop[1] * w / full_w))
    return image[..., :crop_h, :crop_w].clamp(-1, 1)


def semantic_context(net: TowerImplicitModel, prepared: PreparedInput) -> list[torch.Tensor] | None:
    """The semantic prior's maps of the prepared input (None for a model without the prior).

    They depend on the photo alone, not on the code, and take about a third of a full
    render's time: a caller that renders one input many times (the studio) computes them
    once and passes them to `render`.
    """
    if net.semantic is None:
        return None
    with torch.inference_mode():
        return net.encode(prepared.x, net.code_shape(prepared.output_size).local_sizes)


def render(net: TowerImplicitModel, task: Task, prepared: PreparedInput, codes: LatentCodes,
           reuse: Render | None = None, start_level: int = 0, as_result: bool = False,
           upto: int | None = None, map_levels: str = "all",
           context: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], Render]:
    """Every level's RGB image, padding cropped away, and the render for later reuse.

    Args:
        as_result: map outputs to RGB as results are given to users (`Task.to_result_rgb`:
            colourization keeps the photo's lightness exactly), not as the loss sees them
            (`Task.to_rgb`, the default, which evaluation and the pinned outputs use).
        upto: render only the first `upto` levels (default all); a later call can go on from
            the returned render with `reuse` and `start_level=upto`.
        map_levels: which levels' outputs become images: "all", "new" (the levels this call
            rendered, from `start_level`: the caller keeps its images of the reused ones) or
            "final" (the last level alone: a gallery needs no partial outputs).
        context: `semantic_context(net, prepared)`, computed once for many renders; by default
            taken from `reuse`, else computed.

    Returns:
        (images, render): images[l] is (B, 3, h_l, w_l) in [-1, 1], for the levels
        `map_levels` names (images[0] is level `start_level`'s for "new", the last's for "final").
    """
    x = prepared.x.expand(codes.batch_size, -1, -1, -1)
    to_rgb = task.to_result_rgb if as_result else task.to_rgb
    if context is not None:
        context = [maps.expand(codes.batch_size, -1, -1, -1) for maps in context]
    with torch.inference_mode():
        result = net.render(x, codes, upto=upto, reuse=reuse, start_level=start_level, context=context)
        outputs = {"all": result.outputs, "new": result.outputs[start_level:],
                   "final": result.outputs[-1:]}[map_levels]
        images = [_cropped(prepared, to_rgb(x, output)) for output in outputs]
    return images, result


def coarse_result(task: Task, prepared: PreparedInput, output: torch.Tensor) -> torch.Tensor:
    """A result at the final size from one coarse level's output (B, C, h, w): a preview to show
    while the finer levels render.

    The output is upsampled bilinearly before it is mapped to RGB, so colourization's
    preview already has the photo's own lightness at full detail, only its colours coarse.
    """
    x = prepared.x.expand(output.shape[0], -1, -1, -1)
    with torch.inference_mode():
        upsampled = F.interpolate(output, size=prepared.output_size, mode="bilinear", align_corners=False)
        return _cropped(prepared, task.to_result_rgb(x, upsampled))


# -- results at the photo's own size ---------------------------------------------------------
#
# Codes are drawn, and edited, for the working size. A result at the photo's size is a
# function of the photo, the working-size input and the code alone, so a saved code gives
# the same full-size result again, bit for bit.

# Full-size outputs with more pixels than this are rendered in tiles (`chimle.tiling`).
# Measured with the cpu preset: one pass holds about 0.7 kB per output pixel (0.7 GB at
# 1 MP), tiles about 0.2 kB (0.8 GB at 4 MP), in about the same time.
TILED_ABOVE_PIXELS = 1_000_000
TILE_SIZE = 256  # tile side in pixels of a level's working resolution

Progress = Callable[[float], None]  # the fraction done, 0..1


def prepare_full_size(net: TowerImplicitModel, task: Task, image: Image.Image) -> PreparedInput:
    """`prepare` without resizing: the photo at its own size, padded (its output is the photo's
    size, or the photo's size times the factor for super-resolution)."""
    scale = task.output_size((1, 1), net.num_levels)[0]
    return prepare(net, task, image, max_side=max(image.size) * scale)


def resample_maps(maps: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
                  renormalise: bool = False) -> torch.Tensor:
    """Bilinear resampling of (B, C, h, w) maps onto a (B, C, *size) grid, `scale` source pixels per
    target pixel, both grids anchored at the top-left corner (edges repeated past the source).

    Args:
        renormalise: divide each value by the square root of its weights' squares summed,
            so that maps of independent N(0, 1) values (local codes) stay N(0, 1) at every
            position, as `editing.blend` does for blends; plain interpolation would shrink
            their variance to as little as a quarter between source pixels.
    """
    (h, w), (height, width) = maps.shape[-2:], size

    def axis(count: int, step: float, limit: int):
        position = ((torch.arange(count, dtype=torch.float64) + 0.5) * step - 0.5).clamp(0, limit - 1)
        first = position.floor().long()
        second = (first + 1).clamp(max=limit - 1)
        weight = (position - first).to(maps.dtype)
        return first, second, weight

    top, bottom, fy = axis(height, scale[0], h)
    left, right, fx = axis(width, scale[1], w)
    rows = maps[..., top, :] * (1 - fy)[:, None] + maps[..., bottom, :] * fy[:, None]  # (B, C, height, w)
    result = rows[..., left] * (1 - fx) + rows[..., right] * fx  # (B, C, height, width)
    if renormalise:
        norm_y = ((1 - fy) ** 2 + fy ** 2).sqrt()
        norm_x = ((1 - fx) ** 2 + fx ** 2).sqrt()
        result = result / (norm_y[:, None] * norm_x)
    return result


def _scale(prepared: PreparedInput, full: PreparedInput) -> tuple[float, float]:
    """Working-size pixels per full-size pixel, per axis (the photo's extent maps onto itself)."""
    return prepared.crop[0] / full.crop[0], prepared.crop[1] / full.crop[1]


def full_size_codes(net: TowerImplicitModel, prepared: PreparedInput, full: PreparedInput,
                    codes: LatentCodes) -> LatentCodes:
    """Working-size codes made into codes for the full-size output.

    Globals stay as they are. Each local map is resampled to the full-size map of its
    level, so a place in the photo gets the code it had at the working size: bilinear, and
    renormalised so the values stay distributed as the model was trained on
    (`resample_maps`).
    """
    shape = net.code_shape(full.output_size)
    scale = _scale(prepared, full)
    locals_ = [resample_maps(local, size, scale, renormalise=True)
               for local, size in zip(codes.locals, shape.local_sizes)]
    return LatentCodes(list(codes.globals), locals_)


def render_full_size(net: TowerImplicitModel, task: Task, image: Image.Image, prepared: PreparedInput,
                     codes: LatentCodes, progress: Progress | None = None, tile_size: int = TILE_SIZE,
                     tiled_above: int | None = None) -> torch.Tensor:
    """The result of each code at the photo's own size: (B, 3, H, W) in [-1, 1].

    H x W is the photo's size (times the factor for super-resolution), whatever the working
    size the codes were drawn at. A photo that fits the working size gives the working-size
    result itself (`render(..., as_result=True)`).

    Colourization (`Task.full_size_by_upsampling`): the predicted chroma (ab), upsampled
    bilinearly from the working-size output, on the photo's own full-resolution lightness;
    the result's L is the photo's, exactly. Other tasks render the model at the full size
    with `full_size_codes` (the semantic maps of the working-size input, resampled the same
    way: they describe the scene at the scale the model was trained on), in tiles when the
    output has more than `tiled_above` pixels.

    Args:
        image: the photo `prepared` was made from, at its own size (RGB).
        prepared: the working-size input the codes are for.
        progress: called with the fraction done.
        tiled_above: render in tiles above this many output pixels (default `TILED_ABOVE_PIXELS`).
    """
    tiled_above = TILED_ABOVE_PIXELS if tiled_above is None else tiled_above
    full = prepare_full_size(net, task, image)
    if full.crop == prepared.crop:  # no resize happened: the working size is the full size
        result = render(net, task, prepared, codes, as_result=True)[0][-1]
    else:
        result = _render_resized(net, task, full, prepared, codes, progress, tile_size, tiled_above)
    if progress is not None:
        progress(1.0)
    return result


def _render_resized(net: TowerImplicitModel, task: Task, full: PreparedInput, prepared: PreparedInput,
                    codes: LatentCodes, progress: Progress | None, tile_size: int, tiled_above: int) -> torch.Tensor:
    """`render_full_size` for a photo the working size shrank."""
    batch = codes.batch_size
    crop_h, crop_w = full.crop
    x = full.x.expand(batch, -1, -1, -1)
    with torch.inference_mode():
        if task.full_size_by_upsampling:
            output = net.render(prepared.x.expand(batch, -1, -1, -1), codes).outputs[-1]
            output = resize(output[..., :prepared.crop[0], :prepared.crop[1]], full.crop, "bilinear")
            x = x[..., :crop_h, :crop_w]
        else:
            context = None
            if net.semantic is not None:
                working = net.encode(prepared.x, codes.shape.local_sizes)
                sizes = net.code_shape(full.output_size).local_sizes
                context = [resample_maps(maps, size, _scale(prepared, full)) for maps, size in zip(working, sizes)]
            full_codes = full_size_codes(net, prepared, full, codes)
            if full.output_size[0] * full.output_size[1] > tiled_above:
                output = render_tiled(net, x, full_codes, context, tile_size, progress)
            else:
                output = net.render(x, full_codes, context=context).outputs[-1]
        return task.to_result_rgb(x, output)[..., :crop_h, :crop_w].clamp(-1, 1)
