"""Editing a hierarchical code level by level: the maths behind the studio's sliders.

The studio, the benchmarks and the tests call these functions; nothing here knows of Gradio.

An edit of one level (`LevelEdit`) is a pure function of the unedited code and the slider
values, so the same sliders always give the same code, and a neutral edit gives back the
unedited code itself, bit for bit (`apply_edits`).

Blends. A level's global (or local) part moves toward another random code z_seed drawn
from the seed field: z = (1 - a) z0 + a z_seed. With "renormalise" (the default) the mix is
divided by sqrt((1 - a)^2 + a^2): for independent z0, z_seed ~ N(0, I) that makes z exactly
N(0, I) again, so mid-way codes stay where the model was trained (a plain mix at a = 0.5
has only 71% of a code's typical length, and looks washed out).

Region edits. `redraw_region` blends one level's local map the same way, cell by cell,
weighted by how much of each cell a painted mask covers: only the painted part of that
level's local code moves (docs/method.md#region-re-draw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from .codes import LatentCodes
from .config import ModelConfig
from .directions import GlobalDirections
from .tiling import RRDB_RADIUS, STEM_RADIUS, TRUNK_RADIUS

MAX_SEED = 2 ** 32 - 1  # seeds are 0..MAX_SEED (torch's generator refuses numbers past 64 bits)
NUM_DIRECTIONS = 4  # main directions per level that an edit can move along

# A level's main directions, on demand: `LoadedModel.directions` in the studio, or
# `lambda level: global_directions(net, level, NUM_DIRECTIONS)`.
DirectionsOf = Callable[[int], GlobalDirections]


class EditError(ValueError):
    """Slider values that cannot make a code (NaN, a blend past 1, a seed out of range)."""


@dataclass(frozen=True)
class LevelEdit:
    """Slider values of one level. The defaults are the neutral edit.

    Attributes:
        directions: amounts, in standard deviations, along the level's main global directions.
        global_seed, global_blend: blend the global code toward the code drawn from this seed.
        local_seed, local_blend: the same for the local noise map.
        noise_scale: factor on the local map (0 removes local variation).
    """

    directions: tuple[float, ...] = (0.0,) * NUM_DIRECTIONS
    global_seed: int = 0
    global_blend: float = 0.0
    local_seed: int = 0
    local_blend: float = 0.0
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", tuple(float(a) for a in self.directions))
        if not all(math.isfinite(a) for a in self.directions):
            raise EditError("direction amounts must be finite numbers")
        if not 0 <= self.global_blend <= 1 or not 0 <= self.local_blend <= 1:
            raise EditError("blends must lie between 0 and 1")
        if not 0 <= self.noise_scale < math.inf:  # also refuses NaN
            raise EditError("the noise scale must be a finite number, at least 0")
        if not (0 <= self.global_seed <= MAX_SEED and 0 <= self.local_seed <= MAX_SEED):
            raise EditError(f"seeds must lie between 0 and {MAX_SEED}")

    @property
    def neutral(self) -> bool:
        """Whether the edit leaves the code as it is (seeds matter only with a blend)."""
        return not any(self.directions) and not self.global_blend and not self.local_blend \
            and self.noise_scale == 1.0


def blend(z0: torch.Tensor, z1: torch.Tensor, amount: float, renormalise: bool = True) -> torch.Tensor:
    """(1 - a) z0 + a z1, optionally divided by sqrt((1 - a)^2 + a^2) (see the module notes)."""
    mixed = (1 - amount) * z0 + amount * z1
    if renormalise:
        mixed = mixed / math.sqrt((1 - amount) ** 2 + amount ** 2)
    return mixed


def seeded_level(codes: LatentCodes, level: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level `level` of the one code `pipeline.sample_codes` would draw with `seed`, shaped like `codes`.

    Taking one level of a whole code gives every (seed, level) its own vector. Codes are drawn
    coarse to fine, so drawing up to `level` gives the same numbers as drawing the whole code.

    Returns:
        (global, local): (1, G) and (1, C, H_l, W_l).
    """
    generator = torch.Generator().manual_seed(int(seed))
    for coarser in range(level + 1):
        global_code, local_code = LatentCodes.sample_level(codes.shape, coarser, 1, generator)
    return global_code, local_code


def redraw_level(codes: LatentCodes, level: int, seed: int) -> LatentCodes:
    """`codes` (one sample) with level `level` replaced by the level `seed` draws (both parts)."""
    return codes.with_level(level, *seeded_level(codes, level, seed))


def edited_level(base: LatentCodes, level: int, edit: LevelEdit, directions: GlobalDirections | None = None,
                 renormalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Level `level`'s (global, local) code: `base`'s with `edit` applied.

    Order: blend, then move along the directions (so directions stay meaningful in
    standard deviations of the blended code's effect); local: blend, then scale.

    Args:
        directions: the level's main directions; needed only when `edit` moves along them.
            A model with a short global code has fewer directions than an edit has
            amounts: the extra amounts are ignored.
    """
    global_code, local_code = base.globals[level], base.locals[level]
    if edit.global_blend:
        global_code = blend(global_code, seeded_level(base, level, edit.global_seed)[0], edit.global_blend,
                            renormalise)
    if edit.local_blend:
        local_code = blend(local_code, seeded_level(base, level, edit.local_seed)[1], edit.local_blend,
                           renormalise)
    if any(edit.directions):
        if directions is None:
            raise EditError(f"level {level + 1}: moving along directions needs the level's directions")
        count = directions.vectors.shape[0]
        amounts = (list(edit.directions) + [0.0] * count)[:count]
        global_code = directions.apply(global_code, amounts)
    if edit.noise_scale != 1.0:
        local_code = local_code * edit.noise_scale
    return global_code, local_code


def apply_edits(base: LatentCodes, edits: Mapping[int, LevelEdit], directions: DirectionsOf | None = None,
                renormalise: bool = True) -> LatentCodes:
    """`base` with each level's edit applied; levels without an edit, or with a neutral one, keep
    `base`'s tensors themselves.

    Args:
        edits: level (0-based) -> its slider values.
        directions: a level's main directions, asked for only for levels that move along them.
    """
    codes = base
    for level, edit in sorted(edits.items()):
        if not 0 <= level < base.num_levels:
            raise EditError(f"the code has {base.num_levels} levels, not {level + 1}")
        if edit.neutral:
            continue
        level_directions = directions(level) if directions is not None and any(edit.directions) else None
        codes = codes.with_level(level, *edited_level(base, level, edit, level_directions, renormalise))
    return codes


def keep_levels(codes: LatentCodes, source: LatentCodes, levels: Iterable[int]) -> LatentCodes:
    """`codes` with the given levels copied from `source` (one code) into every sample."""
    levels = list(levels)
    if not levels:
        return codes
    repeated = source.repeat_interleave(codes.batch_size)
    for level in levels:
        codes = codes.replace_level(level, repeated)
    return codes


def first_changed_level(old: LatentCodes | None, new: LatentCodes) -> int | None:
    """The coarsest level where `new` differs from `old` (0 when there is no `old`), None if equal.

    A render of `new` may reuse a render of `old` for the levels coarser than the one returned.
    """
    if old is None or old.shape != new.shape or old.batch_size != new.batch_size:
        return 0
    for level in range(new.num_levels):
        if not (torch.equal(old.globals[level], new.globals[level])
                and torch.equal(old.locals[level], new.locals[level])):
            return level
    return None


# -- region edits ------------------------------------------------------------------------------


def region_weights(mask: torch.Tensor, local_size: tuple[int, int]) -> torch.Tensor:
    """A mask at image resolution averaged onto one level's local map: each code cell's share of painted area.

    Args:
        mask: (H, W) in [0, 1] at the code's output size (twice the finest local map); H and W
            are whole multiples of `local_size`, since each level halves the one after it.
        local_size: (h, w) of the level's local map.

    Returns:
        (1, 1, h, w) in [0, 1]: 0 exactly where no painted pixel falls in the cell.
    """
    if mask.dim() != 2:
        raise EditError(f"a region mask is (H, W), got shape {tuple(mask.shape)}")
    (height, width), (h, w) = mask.shape, local_size
    if height % h or width % w or height // h != width // w:
        raise EditError(f"a region mask of {width}x{height} does not fit a local map of {w}x{h}: "
                        f"give it at the code's output size")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise EditError("a region mask holds values between 0 and 1")
    factor = height // h
    return F.avg_pool2d(mask.float()[None, None], factor)  # (1, 1, h, w): the painted share, exactly


def region_reach(config: ModelConfig, level: int) -> int:
    """How far, in pixels of the final output, a change of one cell of level `level`'s local map reaches.

    Through the convolutions of that level and every finer one (their feature feed carries
    it on), measured from the cell's edge: an upper bound, every 3x3 conv on the longest path
    counted with a cell of slack (a tiny model's changes stopped at 60-85% of it). The AdaINs are
    left out: their instance norm takes each channel's statistics over the whole image, so
    beyond this reach a region edit still shifts the output by as much as the region moves
    those statistics (small for a small region; docs/method.md#region-re-draw).
    """
    levels = config.num_levels
    if not 0 <= level < levels:
        raise EditError(f"the model has {levels} levels, not {level + 1}")
    reach = 0
    for finer in range(level, levels):
        scale = 2 ** (levels - finer)  # final output pixels per pixel of this level's working resolution
        reach += (STEM_RADIUS + RRDB_RADIUS * config.rrdbs[finer] + TRUNK_RADIUS) * scale
        # The tail's 3x3 convs at twice the level's resolution: two before the next level, three to the head.
        reach += (3 if finer == levels - 1 else 2) * scale // 2
    return reach + 2 ** (levels - level)  # a nearest upsampling may shift by up to a cell


def redraw_region(codes: LatentCodes, level: int, mask: torch.Tensor, seed: int, amount: float = 1.0,
                  renormalise: bool = True) -> LatentCodes:
    """`codes` with level `level`'s local map blended toward `seed`'s only where `mask` is painted.

    Each code cell moves by amount x its painted share (`region_weights`): amount 1 re-draws a
    fully painted cell (it becomes the cell of the code `seed` draws, `seeded_level`), a cell
    on a soft edge is blended part way, renormalised as `blend` does. Cells with no painted
    pixel keep their values bit for bit, as do the level's global code and every other level.

    Args:
        codes: one code (or a batch: every sample moves toward the same seed).
        mask: (H, W) in [0, 1] at the codes' output size.
    """
    if not 0 <= level < codes.num_levels:
        raise EditError(f"the code has {codes.num_levels} levels, not {level + 1}")
    if not 0 <= amount <= 1:
        raise EditError("the blend amount lies between 0 and 1")
    if not 0 <= seed <= MAX_SEED:
        raise EditError(f"seeds must lie between 0 and {MAX_SEED}")
    z0 = codes.locals[level]
    weights = amount * region_weights(mask.to(z0.device), tuple(z0.shape[-2:])).to(z0.dtype)  # (1, 1, h, w)
    z1 = seeded_level(codes, level, seed)[1].to(z0.device)
    mixed = (1 - weights) * z0 + weights * z1
    if renormalise:
        mixed = mixed / ((1 - weights) ** 2 + weights ** 2).sqrt()
    return codes.with_level(level, local_code=torch.where(weights > 0, mixed, z0))
