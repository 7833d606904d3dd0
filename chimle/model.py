"""The Tower Implicit Model (TIM), the generator T(x, z) of CHIMLE (docs/method.md#the-tower-implicit-model).

A chain of L levels. Level l works at resolution r_l = r_1 * 2^(l-1) and outputs an image
at 2 r_l through its own head, so every level has a partial output (the paper's partial
evaluation, section 2.2). Each level has a local stream (per-pixel: conditioning image,
local code map, the previous level's features; a stack of RRDBs) steered by a global
stream (a mapping network whose output sets an AdaIN after every RRDB).

Built bottom-up: conv, dense block, RRDB, AdaIN, mapping network, level, tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .codes import CodeShape, LatentCodes
from .config import ModelConfig
from .imageops import resize
from .regions import kmeans_region_weights
from .semantic import SemanticAdapter, encoder_input, load_trunk

# ESRGAN's residual scaling: keeps the many stacked residual branches stable at init.
RESIDUAL_SCALE = 0.2
# The previous level's features enter the next level scaled by 0.1 (docs/method.md#the-feature-feed).
FEATURE_FEED_SCALE = 0.1
# With `ModelConfig.input_skip`, the heads' initial weights are scaled by this.
INPUT_SKIP_HEAD_SCALE = 0.1


def wn_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Module:
    """A weight-normalised conv that keeps the spatial size."""
    return weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))


class DenseBlock(nn.Module):
    """ESRGAN's residual dense block: 5 densely connected convs, LeakyReLU 0.2."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            wn_conv(channels + i * growth, growth if i < 4 else channels) for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside one more residual."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


@dataclass
class RegionCodes:
    """The local code of a level pooled over the soft semantic regions of its input
    (`RegionPool`): one vector per region, and where each region lies.

    Attributes:
        weights: (B, K, h, w) soft region weights, summing to 1 per pixel.
        vectors: (B, K, C) one code vector per region, each N(0, I) when the local code is.
    """

    weights: torch.Tensor
    vectors: torch.Tensor


class RegionPool(nn.Module):
    """Divides a level's local code by the objects of the photo (`ModelConfig.region_codes`).

    Each pixel has soft weights over K regions of the semantic map: with
    `ModelConfig.region_partition` "kmeans", from clustering the map (`chimle.regions`);
    with "learned", from a 1x1 conv and a softmax. Region k's vector is the local code
    summed over its pixels with those weights, divided by the root of the weights' sum of
    squares. For a local code drawn from N(0, I)
    every region's vector is then N(0, I) too, whatever the region's size, and regions that
    hardly overlap get nearly independent vectors: redrawing the code on one object's pixels
    redraws that object's vector and leaves the others'. The AdaINs turn each vector into a
    style of its own region, so one sample can make the car red and the sky grey, and the
    next the car blue, which one global code over the whole photo cannot (it can only tint).
    """

    def __init__(self, semantic_channels: int, regions: int, partition: str = "learned") -> None:
        super().__init__()
        # "kmeans" clusters each photo's map (`chimle.regions`) and learns nothing; "learned"
        # (the first models) trains a 1x1 conv whose softmax stayed nearly uniform.
        self.regions = regions
        self.logits = nn.Conv2d(semantic_channels, regions, 1) if partition == "learned" else None

    def region_weights(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) soft weights; a batch repeating one map (stride 0) is computed once."""
        if semantic.shape[0] > 1 and semantic.stride(0) == 0:
            return self.region_weights(semantic[:1]).expand(semantic.shape[0], -1, -1, -1)
        if self.logits is None:
            return kmeans_region_weights(semantic, self.regions)
        return self.logits(semantic).softmax(1)

    def forward(self, local_code: torch.Tensor, semantic: torch.Tensor) -> RegionCodes:
        weights = self.region_weights(semantic).expand(local_code.shape[0], -1, -1, -1)
        sums = torch.einsum("bkhw,bchw->bkc", weights, local_code)
        norms = weights.square().sum((2, 3)).clamp_min(1e-12).sqrt()  # (B, K)
        return RegionCodes(weights, sums / norms[:, :, None])

    def partition(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B, h, w) index of each pixel's strongest region: the hard division the search
        redraws region by region (`chimle.search`)."""
        return self.region_weights(semantic).argmax(1)


class AdaIN(nn.Module):
    """Instance-normalise, then scale by (1 + gamma) and shift by beta, linear in w.

    With `regions` > 0 (`ModelConfig.region_styles`) gamma and beta also vary over the
    image: a 1x1 conv and a softmax over the semantic map give each pixel soft weights over
    `regions` regions, and w sets a scale and a shift per region. A code then styles the
    regions of one photo separately (grass greener, the coat redder) instead of only
    tinting all of it, as one style per image must. The regions depend on the input alone:
    a batch of codes for one photo computes them once per AdaIN.

    With `code_channels` > 0 (`ModelConfig.region_codes`) each region vector of a
    `RegionCodes` adds a scale and a shift of its own over its own region.
    """

    def __init__(self, channels: int, w_dim: int, regions: int = 0, semantic_channels: int = 0,
                 code_channels: int = 0) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, 2 * channels)
        # Start as a plain instance norm so an untrained global stream does no harm.
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)
        self.region_logits = nn.Conv2d(semantic_channels, regions, 1) if regions else None
        self.region_affine = nn.Linear(w_dim, 2 * channels * regions) if regions else None
        if regions:
            # Zero: a model grown from one without regions (`--init-from`) starts as it was.
            # The logits keep their random start, which is what lets the regions differ.
            nn.init.zeros_(self.region_affine.weight)
            nn.init.zeros_(self.region_affine.bias)
        self.region_code_affine = nn.Linear(code_channels, 2 * channels, bias=False) if code_channels else None
        if code_channels:
            # Zero, as above: a model grown with region codes starts as it was.
            nn.init.zeros_(self.region_code_affine.weight)

    def forward(self, x: torch.Tensor, w: torch.Tensor, semantic: torch.Tensor | None = None,
                region_codes: RegionCodes | None = None) -> torch.Tensor:
        gamma, beta = self.affine(w)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        if self.region_affine is not None:
            if semantic is None:
                raise ValueError("an AdaIN with region styles needs the semantic map")
            weights = self.region_weights(semantic).expand(x.shape[0], -1, -1, -1)  # (B, K, h, w)
            batch, regions = w.shape[0], weights.shape[1]
            styles = self.region_affine(w).view(batch, 2, regions, -1)  # (B, 2, K, C)
            gamma = gamma + torch.einsum("bkc,bkhw->bchw", styles[:, 0], weights)
            beta = beta + torch.einsum("bkc,bkhw->bchw", styles[:, 1], weights)
        if self.region_code_affine is not None:
            if region_codes is None:
                raise ValueError("an AdaIN with region codes needs the level's RegionCodes")
            styles = self.region_code_affine(region_codes.vectors)  # (B, K, 2C)
            scale, shift = styles.chunk(2, dim=2)
            gamma = gamma + torch.einsum("bkc,bkhw->bchw", scale, region_codes.weights)
            beta = beta + torch.einsum("bkc,bkhw->bchw", shift, region_codes.weights)
        return F.instance_norm(x) * (1 + gamma) + beta

    def region_weights(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) soft region weights of a semantic map (B, S, h, w), summing to 1 per
        pixel; a batch repeating one map (stride 0) is computed once."""
        if semantic.shape[0] > 1 and semantic.stride(0) == 0:
            return self.region_weights(semantic[:1]).expand(semantic.shape[0], -1, -1, -1)
        return self.region_logits(semantic).softmax(1)


class MappingNetwork(nn.Module):
    """The global stream's MLP: global code (and earlier levels' mapped vectors) -> w."""

    def __init__(self, in_dim: int, width: int, layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [width] * layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = F.leaky_relu(layer(z), 0.2)
        return z


class TowerLevel(nn.Module):
    """One level's local stream: (x at r_l, local code, semantic map, previous features) -> 2 r_l."""

    def __init__(self, config: ModelConfig, level: int) -> None:
        super().__init__()
        channels = config.channels[level]
        previous = config.channels[level - 1] if level > 0 else 0
        semantic = config.semantic_channels if config.semantic_encoder else 0
        self.input_conv = wn_conv(config.in_channels + config.local_code_channels + semantic + previous, channels)
        self.rrdbs = nn.ModuleList(RRDB(channels, config.growth[level]) for _ in range(config.rrdbs[level]))
        # Region codes divide the coarsest level's local code, the one that sets the colours.
        region_codes = config.region_codes if level == 0 else 0
        self.region_pool = RegionPool(semantic, region_codes, config.region_partition) if region_codes else None
        code_channels = config.local_code_channels if region_codes else 0
        self.adains = nn.ModuleList(AdaIN(channels, config.mapping_width, config.region_styles, semantic,
                                          code_channels)
                                    for _ in range(config.rrdbs[level]))
        self.trunk_conv = wn_conv(channels, channels)
        self.upsample_conv = wn_conv(channels, channels)
        self.refine_conv = wn_conv(channels, channels)
        self.head = wn_conv(channels, config.out_channels)
        if config.input_skip:
            # The head predicts a correction of the input: start it small, near the identity.
            with torch.no_grad():
                self.head.parametrizations.weight.original0.mul_(INPUT_SKIP_HEAD_SCALE)
                self.head.bias.zero_()

    def forward(self, x: torch.Tensor, local_code: torch.Tensor, semantic: torch.Tensor | None,
                previous: torch.Tensor | None, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (features at 2 r_l for the next level, output image at 2 r_l)."""
        stem = self.stem(x, local_code, semantic, previous)
        region_codes = self.region_codes(local_code, semantic)
        h = stem
        for rrdb, adain in zip(self.rrdbs, self.adains):
            h = adain(rrdb(h), w, semantic, region_codes)
        return self.tail(stem + self.trunk_conv(h))  # long skip

    def region_codes(self, local_code: torch.Tensor, semantic: torch.Tensor | None) -> RegionCodes | None:
        """The local code pooled over the input's regions (None for a level without region codes)."""
        if self.region_pool is None:
            return None
        if semantic is None:
            raise ValueError("a level with region codes needs the semantic map")
        return self.region_pool(local_code, semantic)

    # The parts of `forward` between its AdaINs, which normalise over the whole image; each
    # is local (a pixel depends on a bounded neighbourhood), so `chimle.tiling` can run it
    # tile by tile for outputs too large for one pass.

    def stem(self, x: torch.Tensor, local_code: torch.Tensor, semantic: torch.Tensor | None,
             previous: torch.Tensor | None) -> torch.Tensor:
        """The first conv over the level's inputs, all at r_l: (B, C, r_l, r_l)."""
        inputs = [x, local_code]
        if semantic is not None:
            inputs.append(semantic.expand(x.shape[0], -1, -1, -1))
        if previous is not None:
            inputs.append(FEATURE_FEED_SCALE * previous)
        return self.input_conv(torch.cat(inputs, 1))

    def tail(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Upsample the trunk's output (B, C, r_l, r_l): (features, output image), both at 2 r_l."""
        h = F.leaky_relu(self.upsample_conv(F.interpolate(h, scale_factor=2.0, mode="nearest")), 0.2)
        features = F.leaky_relu(self.refine_conv(h), 0.2)  # (B, C, 2 r_l, 2 r_l)
        return features, torch.tanh(self.head(features))


@dataclass
class Render:
    """What a (partial) forward pass computed, kept so later levels can be re-rendered.

    Attributes:
        outputs: per evaluated level, the output image (B, out_channels, 2 r_l, 2 r_l).
        features: per evaluated level, the features handed to the next level.
        mapped: per evaluated level, the mapped global vector w_l (B, mapping_width).
        context: the semantic maps of the input, every level's (None without a prior);
            they depend on x alone, so a re-render of the same x reuses them.
    """

    outputs: list[torch.Tensor]
    features: list[torch.Tensor]
    mapped: list[torch.Tensor]
    context: list[torch.Tensor] | None = None

    @property
    def num_levels(self) -> int:
        return len(self.outputs)


class TowerImplicitModel(nn.Module):
    """T(x, z): the conditional generator, fully convolutional.

    Sizes: the output must be a multiple of 2^L on each side (level 1 works at output / 2^L).
    The model rejects other sizes with a ValueError; `chimle.pipeline.prepare` pads an
    input by replicating its edges and `chimle.pipeline.render` crops the result back
    (docs/method.md#sizes).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.levels = nn.ModuleList(TowerLevel(config, level) for level in range(config.num_levels))
        # Level l's mapping also sees the mapped vectors of levels < l, so coarse global
        # choices (the tone) inform finer ones.
        self.mappings = nn.ModuleList(
            MappingNetwork(config.global_code_dim + level * config.mapping_width,
                           config.mapping_width, config.mapping_layers)
            for level in range(config.num_levels) if config.global_code_dim)
        # Without a global code each level styles its AdaINs with a learned constant w
        # (`ModelConfig.global_code_dim` = 0; `train.drop_global_code` sets it from a trained
        # model's w at the zero global code).
        self.constant_styles = nn.ParameterList(
            nn.Parameter(torch.zeros(config.mapping_width))
            for _ in range(config.num_levels if not config.global_code_dim else 0))
        self.semantic = (SemanticAdapter(config.num_levels, config.semantic_channels)
                         if config.semantic_encoder else None)

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    def code_shape(self, output_size: tuple[int, int]) -> CodeShape:
        """The code shape for a final output of `output_size` = (H, W)."""
        factor = 2 ** self.num_levels
        height, width = output_size
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(
                f"output size {height}x{width} is not a positive multiple of 2^levels = {factor}: "
                f"pad the input (chimle.pipeline.prepare does) or resize it")
        sizes = tuple((height // 2 ** (self.num_levels - level), width // 2 ** (self.num_levels - level))
                      for level in range(self.num_levels))
        return CodeShape(self.config.global_code_dim, self.config.local_code_channels, sizes)

    def encode(self, x: torch.Tensor, local_sizes: tuple[tuple[int, int], ...]) -> list[torch.Tensor] | None:
        """The semantic maps of input x for codes with these local sizes (None without a prior).

        Computed once per input image: a batch that repeats one image (`x.expand(n, ...)`,
        as the pipeline and the sample grids pass it) is encoded once and expanded.
        """
        if self.semantic is None:
            return None
        if x.shape[0] > 1 and x.stride(0) == 0:
            return [m.expand(x.shape[0], -1, -1, -1) for m in self.encode(x[:1], local_sizes)]
        output_size = (2 * local_sizes[-1][0], 2 * local_sizes[-1][1])
        rgb = encoder_input(x, output_size, self.config.semantic_scale)
        taps = load_trunk(x.device)(rgb.float())  # the frozen trunk stays float32
        return self.semantic(taps, local_sizes)

    def output_sizes(self, codes: LatentCodes) -> list[tuple[int, int]]:
        """Each level's output size for these codes (twice the local map's size)."""
        return [(loc.shape[2] * 2, loc.shape[3] * 2) for loc in codes.locals]

    def _check_codes(self, codes: LatentCodes) -> None:
        expected = CodeShape(self.config.global_code_dim, self.config.local_code_channels, codes.shape.local_sizes)
        if codes.num_levels != self.num_levels or codes.shape != expected:
            raise ValueError(f"codes of shape {codes.shape} do not fit this model "
                             f"({self.num_levels} levels, global {self.config.global_code_dim}, "
                             f"local channels {self.config.local_code_channels})")
        for level in range(1, self.num_levels):
            h, w = codes.shape.local_sizes[level - 1]
            if codes.shape.local_sizes[level] != (2 * h, 2 * w):
                raise ValueError("each level's local map must be twice the size of the previous one")

    def render(self, x: torch.Tensor, codes: LatentCodes, upto: int | None = None,
               reuse: Render | None = None, start_level: int = 0,
               context: list[torch.Tensor] | None = None) -> Render:
        """Run levels `start_level`..`upto` - 1 (0-based), reusing `reuse` for the levels below.

        Args:
            x: conditioning input (B, in_channels, H, W), any size; it is resized to each
                level's working resolution.
            codes: a batch of B codes.
            upto: number of levels to evaluate (partial evaluation); default all.
            reuse: an earlier render of the same x whose levels < start_level still hold,
                because only codes of levels >= start_level changed (incremental rendering).
            start_level: first level to recompute; needs `reuse` when > 0.
            context: `encode(x, ...)` computed beforehand (the search encodes a pool once
                and indexes it per candidate); by default taken from `reuse`, else computed.
        """
        upto = self.num_levels if upto is None else upto
        if not 1 <= upto <= self.num_levels:
            raise ValueError(f"upto must be in 1..{self.num_levels}, got {upto}")
        if not 0 <= start_level < upto:
            raise ValueError(f"start_level must be in 0..{upto - 1}, got {start_level}")
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[0] != codes.batch_size:
            raise ValueError(f"input batch {x.shape[0]} != code batch {codes.batch_size}")
        self._check_codes(codes)
        if start_level > 0:
            if reuse is None or reuse.num_levels < start_level:
                raise ValueError(f"start_level {start_level} needs a render of at least {start_level} levels")
            outputs = list(reuse.outputs[:start_level])
            features = list(reuse.features[:start_level])
            mapped = list(reuse.mapped[:start_level])
        else:
            outputs, features, mapped = [], [], []
        if context is None and self.semantic is not None:
            context = reuse.context if reuse is not None and reuse.context is not None else (
                self.encode(x, codes.shape.local_sizes))

        for level in range(start_level, upto):
            w = self.style_vector(level, codes, mapped)
            local_code = codes.locals[level]
            x_level = resize(x, tuple(local_code.shape[2:]))  # (B, in_channels, r_l, r_l)
            previous = features[-1] if level > 0 else None
            semantic = context[level] if context is not None else None
            feats, out = self.levels[level](x_level, local_code, semantic, previous, w)
            outputs.append(self.add_input(out, x))
            features.append(feats)
            mapped.append(w)
        return Render(outputs, features, mapped, context)

    def style_vector(self, level: int, codes: LatentCodes, mapped: list[torch.Tensor]) -> torch.Tensor:
        """Level `level`'s w (B, mapping_width): its global code mapped with the coarser levels'
        w, or the level's learned constant for a model without a global code."""
        if not self.config.global_code_dim:
            return self.constant_styles[level].expand(codes.batch_size, -1)
        return self.mappings[level](torch.cat([codes.globals[level], *mapped], 1))

    def add_input(self, correction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A level's output from its head's (B, out_channels, h, w) result: the head's result
        itself, or with `config.input_skip` the input resized to (h, w) plus that correction."""
        if not self.config.input_skip:
            return correction
        return resize(x, tuple(correction.shape[2:])) + correction

    def forward(self, x: torch.Tensor, codes: LatentCodes, upto: int | None = None) -> list[torch.Tensor]:
        """Every evaluated level's output image, coarse to fine."""
        return self.render(x, codes, upto).outputs


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
