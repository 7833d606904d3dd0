"""Rendering an output too large for one pass, tile by tile, with the result of one pass.

A level of the TIM (`model.TowerLevel`) is local except for its AdaINs: instance norm takes
each channel's mean and variance over the whole image, so cutting the image into tiles and
rendering each on its own would change every tile's colours. Here a level runs as stages
instead. The stem, each RRDB, the trunk conv and the tail are local: they run tile by tile,
each tile read with a margin as wide as the stage's receptive field and the margin cut off
again. The AdaINs run between them, on the assembled full-size map. Memory is then a few
full-size feature maps of one level, not everything a pass holds at once (the dense blocks'
concatenations, several times the features), and the result equals one pass up to float
rounding (a convolution over a tile may sum in another order than over the whole map).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .codes import LatentCodes
from .imageops import resize
from .model import TowerImplicitModel

# Receptive-field radii, in pixels of the stage's input, of the stages of `TowerLevel`.
STEM_RADIUS = 1  # one 3x3 conv
RRDB_RADIUS = 15  # three dense blocks of five chained 3x3 convs
TRUNK_RADIUS = 1  # one 3x3 conv
TAIL_RADIUS = 2  # three 3x3 convs (upsample, refine, head) at twice the resolution: 1.5 pixels
# Relative cost per input pixel of each stage (3x3 convs per pixel; the tail's three convs
# run on four times the pixels), for an even progress bar.
STEM_COST, RRDB_COST, TRUNK_COST, TAIL_COST = 1, 15, 1, 12

Progress = Callable[[float], None]  # the fraction done, 0..1


def tile_grid(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    """Tiles (y0, y1, x0, x1) of at most `size` x `size` covering a height x width map, row by row."""
    if size < 1:
        raise ValueError(f"the tile size must be positive, got {size}")
    return [(y, min(y + size, height), x, min(x + size, width))
            for y in range(0, height, size) for x in range(0, width, size)]


def map_tiles(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], radius: int, size: int,
              scale: int = 1, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """`fn(*inputs)` computed tile by tile, for a local `fn` whose receptive field is `radius`.

    Args:
        fn: maps (B, C_i, h, w) tiles of every input (None stays None) to (B, C, scale h, scale w);
            a pixel of its output may depend only on inputs within `radius` pixels.
        inputs: maps of the same height and width (or None).
        size: tile side, in input pixels (before the margin).
        scale: output pixels per input pixel.
        on_tile: called after each tile.

    Returns:
        (B, C, scale H, scale W), equal to `fn(*inputs)` up to float rounding.
    """
    height, width = next(t for t in inputs if t is not None).shape[-2:]
    output = None
    for y0, y1, x0, x1 in tile_grid(height, width, size):
        top, bottom = max(0, y0 - radius), min(height, y1 + radius)
        left, right = max(0, x0 - radius), min(width, x1 + radius)
        part = fn(*[t[..., top:bottom, left:right] if t is not None else None for t in inputs])
        if output is None:
            output = part.new_empty(*part.shape[:2], height * scale, width * scale)
        # Keep the tile itself; the margin only fed its receptive field.
        dy, dx = (y0 - top) * scale, (x0 - left) * scale
        output[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
            part[..., dy:dy + (y1 - y0) * scale, dx:dx + (x1 - x0) * scale]
        if on_tile is not None:
            on_tile()
    return output


def render_tiled(net: TowerImplicitModel, x: torch.Tensor, codes: LatentCodes,
                 context: list[torch.Tensor] | None = None, size: int = 256,
                 progress: Progress | None = None) -> torch.Tensor:
    """The finest level's output of `net.render(x, codes, context=context)`, rendered in tiles.

    Args:
        x: (B, in_channels, H, W) the full-size input.
        codes: B codes for that output size.
        context: the semantic maps for these codes' sizes; computed from x when the model
            has a prior and none is given.
        size: tile side in pixels of each stage's input.
        progress: called with the fraction done after every tile.

    Returns:
        (B, out_channels, H_out, W_out) in model space.
    """
    if x.shape[0] != codes.batch_size:
        raise ValueError(f"input batch {x.shape[0]} != code batch {codes.batch_size}")
    sizes = codes.shape.local_sizes
    total = sum(len(tile_grid(h, w, size)) * (STEM_COST + RRDB_COST * len(tower.rrdbs) + TRUNK_COST + TAIL_COST)
                for tower, (h, w) in zip(net.levels, sizes))
    done = 0.0

    def count(cost: float) -> Callable[[], None]:
        def on_tile() -> None:
            nonlocal done
            done += cost
            if progress is not None:
                progress(min(done / total, 1.0))
        return on_tile

    with torch.inference_mode():
        if context is None and net.semantic is not None:
            context = net.encode(x, sizes)
        mapped, previous = [], None
        for level, tower in enumerate(net.levels):
            # As `TowerImplicitModel.render` and `TowerLevel.forward`, stage by stage.
            w = net.style_vector(level, codes, mapped)
            mapped.append(w)
            semantic = context[level] if context is not None else None
            stem = map_tiles(tower.stem, [resize(x, sizes[level]), codes.locals[level], semantic, previous],
                             STEM_RADIUS, size, on_tile=count(STEM_COST))
            region_codes = tower.region_codes(codes.locals[level], semantic)  # pooled over the whole map
            h = stem
            for rrdb, adain in zip(tower.rrdbs, tower.adains):
                h = adain(map_tiles(rrdb, [h], RRDB_RADIUS, size, on_tile=count(RRDB_COST)), w, semantic,
                          region_codes)
            h = stem + map_tiles(tower.trunk_conv, [h], TRUNK_RADIUS, size, on_tile=count(TRUNK_COST))
            # The next level needs this level's features; of the last level only the output.
            part = 1 if level == len(net.levels) - 1 else 0
            previous = map_tiles(lambda t: tower.tail(t)[part], [h], TAIL_RADIUS, size, scale=2,
                                 on_tile=count(TAIL_COST))
            del stem, h
    return net.add_input(previous, x)  # the last level's output
