"""Typed configuration of the Tower Implicit Model, with named size presets.

A `ModelConfig` is written into every checkpoint, so a model can be rebuilt from the file
alone. Presets:

- ``tiny``: a few channels, for tests (a 64x64 forward pass in milliseconds).
- ``cpu``: trains usefully on two CPU cores in one to two hours.
- ``paper``: the authors' sizes, about 210 M parameters.

Why these sizes, and how they compare with the authors': docs/method.md#model-sizes-and-presets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


# How region codes find their regions (`ModelConfig.region_partition`).
REGION_PARTITIONS = ("kmeans", "learned")


def dataclass_from_dict(cls, values: dict, what: str):
    """Build dataclass `cls` from a dict, refusing unknown keys (a typo must fail loudly)."""
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}")
    return cls(**values)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a Tower Implicit Model. Per-level tuples are ordered coarse to fine.

    Attributes:
        in_channels: channels of the conditioning input x (1 for colourization's L).
        out_channels: channels every output head predicts (2 for colourization's ab).
        channels: feature channels of each level's local stream.
        growth: dense-block growth channels of each level's RRDBs.
        rrdbs: number of RRDBs in each level.
        local_code_channels: channels of each level's local code map.
        global_code_dim: length of each level's global code vector. 0: no global stream;
            each level's style vector w is a learned constant instead of the mapping of a
            global code, so the code varies the output only through its local maps (with
            region codes, object by object). Meant for colourization, where the global code
            is the cheapest way for IMLE to cover a photo's colours and so learns to tint
            the whole photo (docs/method.md#without-a-global-code).
        mapping_width: width of the mapping networks (the global stream).
        mapping_layers: depth of each mapping network.
        semantic_encoder: "alexnet" feeds every level features of a frozen ImageNet
            AlexNet of the input (`chimle.semantic`); "" (the paper's model) does not.
        semantic_channels: channels of each level's semantic map.
        semantic_scale: the encoder sees the input at this many times the output size.
        input_skip: each level's output is the input, resized to that level's output
            size, plus a learned correction (residual learning, as DnCNN and VDSR do), so
            a restorer starts from the identity instead of learning to copy its input.
            Only for tasks whose input is in the output's space (JPEG, super-resolution).
        region_styles: with a semantic encoder, each AdaIN's style also varies over the
            image: the semantic map divides it softly into this many regions and the
            global code styles each region separately (`model.AdaIN`), so that one code can
            colour the sky and the car differently rather than tint the whole photo. 0 (the
            paper's model): one style per image.
        region_codes: with a semantic encoder, the coarsest level's local code is pooled
            over this many soft semantic regions (`model.RegionPool`) and each region's
            vector styles that region: the local code then chooses the colours of the
            photo's objects one by one, and the search can choose them region by region
            (`search.SearchConfig.samples_per_region`). 0 (the paper's model): the local
            code acts pixel by pixel only.
        region_partition: how region codes find their regions. "kmeans": k-means over
            each photo's semantic map (`chimle.regions`), K regions per photo whatever it
            shows. "learned" (the first models): a trained 1x1 conv and softmax, which
            stayed nearly uniform, so that each region's vector was the whole photo's.
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (32, 32, 32)
    growth: tuple[int, ...] = (16, 16, 16)
    rrdbs: tuple[int, ...] = (1, 1, 1)
    local_code_channels: int = 5
    global_code_dim: int = 32
    mapping_width: int = 64
    mapping_layers: int = 4
    semantic_encoder: str = ""
    semantic_channels: int = 32
    semantic_scale: int = 2
    input_skip: bool = False
    region_styles: int = 0
    region_codes: int = 0
    region_partition: str = "learned"

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so equality still holds.
        for name in ("channels", "growth", "rrdbs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    def validate(self) -> None:
        """Raise ValueError naming the first problem found."""
        if self.num_levels < 1:
            raise ValueError("channels must name at least one level")
        for name in ("growth", "rrdbs"):
            if len(getattr(self, name)) != self.num_levels:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries but channels has "
                    f"{self.num_levels}: give one value per level")
        positive = {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "mapping_width": self.mapping_width, "mapping_layers": self.mapping_layers,
            "semantic_channels": self.semantic_channels,
            "semantic_scale": self.semantic_scale,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.global_code_dim, int) or self.global_code_dim < 0:
            raise ValueError(f"global_code_dim must be >= 0 (0: no global stream), got {self.global_code_dim!r}")
        if not self.global_code_dim and not self.local_code_channels:
            raise ValueError("a model needs a code: global_code_dim and local_code_channels cannot both be 0")
        if not isinstance(self.local_code_channels, int) or self.local_code_channels < 0:
            raise ValueError(f"local_code_channels must be >= 0, got {self.local_code_channels!r}")
        from .semantic import ENCODERS

        if self.semantic_encoder not in ENCODERS:
            raise ValueError(f"semantic_encoder must be one of {ENCODERS}, got {self.semantic_encoder!r}")
        for name in ("channels", "growth"):
            for level, value in enumerate(getattr(self, name), start=1):
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name}[level {level}] must be a positive integer, got {value!r}")
        for level, value in enumerate(self.rrdbs, start=1):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"rrdbs[level {level}] must be >= 0, got {value!r}")
        if not isinstance(self.input_skip, bool):
            raise ValueError(f"input_skip must be true or false, got {self.input_skip!r}")
        if self.input_skip and self.in_channels != self.out_channels:
            raise ValueError(f"input_skip adds the input to the output, so it needs as many input as "
                             f"output channels (got {self.in_channels} and {self.out_channels})")
        if not isinstance(self.region_styles, int) or self.region_styles < 0:
            raise ValueError(f"region_styles must be >= 0 (0: one style per image), got {self.region_styles!r}")
        if self.region_styles and not self.semantic_encoder:
            raise ValueError("region_styles needs a semantic encoder: its maps say where the regions are")
        if not isinstance(self.region_codes, int) or self.region_codes < 0:
            raise ValueError(f"region_codes must be >= 0 (0: off), got {self.region_codes!r}")
        if self.region_codes and not self.semantic_encoder:
            raise ValueError("region_codes needs a semantic encoder: its maps say where the regions are")
        if self.region_codes and not self.local_code_channels:
            raise ValueError("region_codes pools the local code: it needs local_code_channels >= 1")
        if self.region_partition not in REGION_PARTITIONS:
            raise ValueError(f"region_partition must be one of {REGION_PARTITIONS}, got {self.region_partition!r}")
        if self.region_partition != "learned" and not self.region_codes:
            raise ValueError("region_partition divides region codes: it needs region_codes >= 1")

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        # Models without the skip, the region styles or the region codes describe themselves
        # as before these existed, so their fingerprints (and the codes saved for them) stay valid.
        if not self.input_skip:
            del values["input_skip"]
        for name in ("region_styles", "region_codes"):
            if not values[name]:
                del values[name]
        if values["region_partition"] == "learned":
            del values["region_partition"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        return dataclass_from_dict(cls, values, "model config keys")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class _Preset:
    description: str
    values: dict = field(default_factory=dict)


PRESETS: dict[str, _Preset] = {
    "tiny": _Preset(
        "a few channels, for tests",
        dict(channels=(8, 8), growth=(8, 8), rrdbs=(1, 1), local_code_channels=2,
             global_code_dim=8, mapping_width=16, mapping_layers=2),
    ),
    "cpu": _Preset(
        "trains on two CPU cores in an hour or two (about 3.1 M parameters, 6 MB in float16), "
        "with the frozen AlexNet semantic prior",
        dict(channels=(64, 48, 32), growth=(32, 24, 16), rrdbs=(2, 2, 1),
             local_code_channels=4, global_code_dim=32, mapping_width=128, mapping_layers=4,
             semantic_encoder="alexnet"),
    ),
    "gpu": _Preset(
        "twice the cpu preset's weights, mostly at the coarsest level, where they cost little "
        "time (about 6.2 M parameters, 25 MB): trains on one GPU in minutes and still renders "
        "on a CPU at 1.4-1.7 times the cpu preset's time",
        dict(channels=(96, 64, 48), growth=(48, 32, 24), rrdbs=(2, 2, 1),
             local_code_channels=4, global_code_dim=64, mapping_width=192, mapping_layers=4,
             semantic_encoder="alexnet"),
    ),
    "paper": _Preset(
        "the authors' sizes: 4 levels, about 210 M parameters (needs a large GPU)",
        dict(channels=(128, 64, 64, 64), growth=(256, 192, 128, 64), rrdbs=(6, 6, 6, 6),
             local_code_channels=5, global_code_dim=128, mapping_width=512, mapping_layers=8),
    ),
}


def preset(name: str, in_channels: int, out_channels: int, **overrides) -> ModelConfig:
    """Build the named preset for a task's channel counts, with optional overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    values = dict(PRESETS[name].values, in_channels=in_channels, out_channels=out_channels)
    values.update(overrides)
    return ModelConfig(**values)
