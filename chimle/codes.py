"""Hierarchical latent codes: per level, a global vector and a local map (docs/method.md#code-division).

Code division (CD) is what makes CHIMLE's search cheap: the code of a batch is split into
one component per resolution level, and each component has two parts the user can steer
apart, a global vector (tone, overall look) and a local map (texture, placement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

CodePart = Literal["both", "global", "local"]


@dataclass(frozen=True)
class CodeShape:
    """Shape of one sample's code: `global_dim` per level and a local map per level.

    Attributes:
        global_dim: length of every level's global vector.
        local_channels: channels of every level's local map.
        local_sizes: (H, W) of each level's local map, coarse to fine.
    """

    global_dim: int
    local_channels: int
    local_sizes: tuple[tuple[int, int], ...]

    @property
    def num_levels(self) -> int:
        return len(self.local_sizes)


@dataclass
class LatentCodes:
    """A batch of hierarchical codes.

    Attributes:
        globals: per level, a (B, G) tensor.
        locals: per level, a (B, C, H_l, W_l) tensor at level l's working resolution.
    """

    globals: list[torch.Tensor]
    locals: list[torch.Tensor]

    def __post_init__(self) -> None:
        if len(self.globals) != len(self.locals) or not self.globals:
            raise ValueError(
                f"need the same non-zero number of global and local parts, got "
                f"{len(self.globals)} and {len(self.locals)}")
        for level, (g, loc) in enumerate(zip(self.globals, self.locals), start=1):
            if g.dim() != 2 or loc.dim() != 4:
                raise ValueError(
                    f"level {level}: expected global (B, G) and local (B, C, H, W), got "
                    f"{tuple(g.shape)} and {tuple(loc.shape)}")
        batch = self.globals[0].shape[0]
        for level, (g, loc) in enumerate(zip(self.globals, self.locals), start=1):
            if g.shape[0] != batch or loc.shape[0] != batch:
                raise ValueError(f"level {level}: batch sizes differ from level 1's {batch}")

    # -- construction ---------------------------------------------------------------------

    @staticmethod
    def sample_level(shape: CodeShape, level: int, batch: int,
                     generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Draw level `level` (0-based) of `batch` codes from N(0, I): global first, then local.

        The draw order is part of the contract: searches that draw level by level and
        searches that draw whole codes consume the generator identically.
        """
        h, w = shape.local_sizes[level]
        g = torch.randn(batch, shape.global_dim, generator=generator, device=device)
        loc = torch.randn(batch, shape.local_channels, h, w, generator=generator, device=device)
        return g, loc

    @classmethod
    def sample(cls, shape: CodeShape, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> "LatentCodes":
        """Draw `batch` whole codes from N(0, I), level by level."""
        parts = [cls.sample_level(shape, level, batch, generator, device)
                 for level in range(shape.num_levels)]
        return cls([g for g, _ in parts], [loc for _, loc in parts])

    @classmethod
    def zeros(cls, shape: CodeShape, batch: int, device: torch.device | str = "cpu") -> "LatentCodes":
        """All-zero codes: the mean of the prior (used by the unimodal baseline)."""
        return cls([torch.zeros(batch, shape.global_dim, device=device)
                    for _ in range(shape.num_levels)],
                   [torch.zeros(batch, shape.local_channels, h, w, device=device)
                    for h, w in shape.local_sizes])

    # -- inspection -----------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.globals[0].shape[0]

    @property
    def num_levels(self) -> int:
        return len(self.globals)

    @property
    def shape(self) -> CodeShape:
        """The per-sample shape of these codes."""
        return CodeShape(self.globals[0].shape[1], self.locals[0].shape[1],
                         tuple((loc.shape[2], loc.shape[3]) for loc in self.locals))

    def __len__(self) -> int:
        return self.batch_size

    # -- editing --------------------------------------------------------------------------

    def replace_level(self, level: int, other: "LatentCodes", part: CodePart = "both") -> "LatentCodes":
        """A copy with level `level` (0-based) taken from `other` (whole, or one part)."""
        if part not in ("both", "global", "local"):
            raise ValueError(f"part must be 'both', 'global' or 'local', got {part!r}")
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level {level} out of range for {self.num_levels} levels")
        globals_, locals_ = list(self.globals), list(self.locals)
        if part in ("both", "global"):
            globals_[level] = other.globals[level]
        if part in ("both", "local"):
            locals_[level] = other.locals[level]
        return LatentCodes(globals_, locals_)

    def with_level(self, level: int, global_code: torch.Tensor | None = None,
                   local_code: torch.Tensor | None = None) -> "LatentCodes":
        """A copy with level `level`'s global and/or local part set to the given tensors."""
        globals_, locals_ = list(self.globals), list(self.locals)
        if global_code is not None:
            if global_code.shape != self.globals[level].shape:
                raise ValueError(f"global code of level {level}: expected shape "
                                 f"{tuple(self.globals[level].shape)}, got {tuple(global_code.shape)}")
            globals_[level] = global_code
        if local_code is not None:
            if local_code.shape != self.locals[level].shape:
                raise ValueError(f"local code of level {level}: expected shape "
                                 f"{tuple(self.locals[level].shape)}, got {tuple(local_code.shape)}")
            locals_[level] = local_code
        return LatentCodes(globals_, locals_)

    def __getitem__(self, index) -> "LatentCodes":
        """Select samples along the batch: an int keeps a batch of one."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return LatentCodes([g[index] for g in self.globals], [loc[index] for loc in self.locals])

    @staticmethod
    def cat(codes: Sequence["LatentCodes"]) -> "LatentCodes":
        """Concatenate batches of codes of the same shape."""
        if not codes:
            raise ValueError("cannot concatenate an empty list of codes")
        levels = codes[0].num_levels
        return LatentCodes(
            [torch.cat([c.globals[level] for c in codes]) for level in range(levels)],
            [torch.cat([c.locals[level] for c in codes]) for level in range(levels)])

    def repeat_interleave(self, repeats: int) -> "LatentCodes":
        """Repeat every sample `repeats` times in place: (a, b) -> (a, a, b, b)."""
        return LatentCodes([g.repeat_interleave(repeats, 0) for g in self.globals],
                           [loc.repeat_interleave(repeats, 0) for loc in self.locals])

    def to(self, device: torch.device | str) -> "LatentCodes":
        return LatentCodes([g.to(device) for g in self.globals], [loc.to(device) for loc in self.locals])

    def clone(self) -> "LatentCodes":
        return LatentCodes([g.clone() for g in self.globals], [loc.clone() for loc in self.locals])

    def detach(self) -> "LatentCodes":
        return LatentCodes([g.detach() for g in self.globals], [loc.detach() for loc in self.locals])

    # -- serialisation --------------------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor dict (for safetensors): `global.{l}` and `local.{l}`, 0-based."""
        tensors = {}
        for level, (g, loc) in enumerate(zip(self.globals, self.locals)):
            tensors[f"global.{level}"] = g.detach().cpu().contiguous()
            tensors[f"local.{level}"] = loc.detach().cpu().contiguous()
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "LatentCodes":
        """Inverse of `to_tensors`; raises ValueError on missing or stray entries."""
        levels = len([k for k in tensors if k.startswith("global.")])
        expected = {f"{part}.{level}" for part in ("global", "local") for level in range(levels)}
        if levels == 0 or set(tensors) != expected:
            raise ValueError(
                f"not a latent code: expected entries global.0..{levels - 1} and local.0..{levels - 1}, "
                f"got {sorted(tensors)}")
        return cls([tensors[f"global.{level}"] for level in range(levels)],
                   [tensors[f"local.{level}"] for level in range(levels)])

    def equal(self, other: "LatentCodes") -> bool:
        """Bit-exact equality of every part."""
        return (self.num_levels == other.num_levels
                and all(torch.equal(a, b) for a, b in zip(self.globals, other.globals))
                and all(torch.equal(a, b) for a, b in zip(self.locals, other.locals)))
