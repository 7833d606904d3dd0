"""Tasks: how a clean image becomes the model's input, and how its output becomes RGB.

The generator is one network for every task, with one forward path; what differs between
tasks lives in task objects (docs/method.md#tasks). A task says what the network sees
(`degrade` for training data built from clean photos, `prepare_input` for a user's image),
how many channels it predicts, what size each level's output has, and how any level's
output maps back to an RGB image (`to_rgb`, used inside the LPIPS loss, so it is
differentiable).

Conventions: images are float tensors (B, C, H, W); RGB lives in [-1, 1]; the network's
heads end in tanh, so its outputs ("model space") are in [-1, 1] too.

Tasks are frozen dataclasses: their fields are their parameters, `to_dict` writes them
out for checkpoints and `task_from_dict` rebuilds an equal task.
"""

from __future__ import annotations

import dataclasses
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from chimle.color import lab_to_rgb, lab_to_rgb_keep_lightness, rgb_to_lab
from chimle.imageops import from_unit_range, resize, to_unit_range

# Colourization's model-space scales. L in [0, 100] maps to [-1, 1] by L / 50 - 1. The sRGB
# gamut spans about a in [-86, 98], b in [-108, 95], so ab / 110 keeps every displayable
# colour strictly inside tanh's range.
LIGHTNESS_HALF_RANGE = 50.0
AB_SCALE = 110.0


def _check_images(images: torch.Tensor, channels: int | tuple[int, ...], what: str) -> None:
    """Raise ValueError unless `images` is (B, C, H, W) with C among `channels`."""
    allowed = (channels,) if isinstance(channels, int) else channels
    if images.dim() != 4 or images.shape[1] not in allowed:
        expected = " or ".join(str(c) for c in allowed)
        raise ValueError(
            f"expected {what} of shape (B, {expected}, H, W), got {tuple(images.shape)}")


def _check_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    """Return `size` as a tuple of two positive ints, or raise ValueError."""
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{what} must be two positive integers (H, W), got {size!r}")
    return int(size[0]), int(size[1])


class Task(ABC):
    """What the generator is trained to do: the input it sees and the image it makes.

    Subclasses set the class attributes below and implement `degrade`; the defaults
    describe an RGB-in, RGB-out task at the input's resolution.
    """

    name: ClassVar[str]  # registry key
    in_channels: ClassVar[int]  # channels of the model input x
    out_channels: ClassVar[int]  # channels each output head predicts
    paired: ClassVar[bool] = False  # True when x cannot be computed from the target
    # How a result at the photo's own size is made (chimle.pipeline.render_full_size): by
    # rendering the model at that size (False), or by upsampling the working-size output
    # onto the full-size input (True: colourization, whose chroma is smooth and whose
    # detail is all in the lightness the user gave).
    full_size_by_upsampling: ClassVar[bool] = False

    @abstractmethod
    def degrade(self, clean: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Make the model input x from clean RGB images, to build training pairs.

        Args:
            clean: (B, 3, H, W) RGB in [-1, 1].
            generator: source of randomness for stochastic degradations; tasks that are
                deterministic ignore it.

        Returns:
            (B, in_channels, h, w) model input.
        """

    def prepare_input(self, image: torch.Tensor) -> torch.Tensor:
        """Turn a user's RGB image (B, 3, H, W) in [-1, 1] into the model input x."""
        _check_images(image, 3, "an RGB input image")
        return image.clamp(-1, 1)

    def check_levels(self, num_levels: int) -> None:
        """Raise ValueError if a generator with `num_levels` levels cannot do this task."""
        if int(num_levels) != num_levels or num_levels < 1:
            raise ValueError(f"num_levels must be a positive integer, got {num_levels!r}")

    def output_size(self, input_size: tuple[int, int], num_levels: int) -> tuple[int, int]:
        """Size (H, W) of the finest level's output for a model input of `input_size`."""
        self.check_levels(num_levels)
        return _check_size(input_size, "input_size")

    def level_output_sizes(self, input_size: tuple[int, int],
                           num_levels: int) -> list[tuple[int, int]]:
        """Output size of every level, coarsest first.

        Level l (1..L) outputs 1 / 2**(L - l) of the final resolution: each level doubles
        the resolution of the one before (docs/method.md#levels-and-resolutions).

        Raises:
            ValueError: if the final size is not divisible by 2**(L - 1).
        """
        height, width = self.output_size(input_size, num_levels)
        coarsest_factor = 2 ** (num_levels - 1)
        if height % coarsest_factor or width % coarsest_factor:
            raise ValueError(
                f"{self.name}: output size {(height, width)} (from input size "
                f"{tuple(input_size)}) must be divisible by 2**({num_levels} - 1) = "
                f"{coarsest_factor} for {num_levels} levels; crop or pad the input")
        return [(height // 2 ** (num_levels - level), width // 2 ** (num_levels - level))
                for level in range(1, num_levels + 1)]

    def to_rgb(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Map a network output of any level to RGB in [-1, 1], differentiably.

        Args:
            x: (B, in_channels, H, W) the full-size model input.
            output: (B, out_channels, h, w) a head's output in model space.

        Returns:
            (B, 3, h, w) RGB in [-1, 1].
        """
        _check_images(output, self.out_channels, f"{self.name} network output")
        return output

    def to_result_rgb(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The RGB image a user gets from an output, (B, 3, h, w) in [-1, 1]; not differentiable.

        `to_rgb` by default. A task overrides it where its loss-side mapping gives up
        something a user would want kept (colourization: the photo's own lightness).
        """
        return self.to_rgb(x, output)

    def input_preview(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The no-model baseline: the input x shown as RGB (B, 3, *size) in [-1, 1]."""
        _check_images(x, self.in_channels, f"{self.name} model input")
        return resize(x, _check_size(size, "size"), "bilinear").clamp(-1, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description: {"name": ..., plus every parameter}."""
        params = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        # Tuples become lists so the dict equals its own JSON round trip.
        params = {key: list(value) if isinstance(value, tuple) else value
                  for key, value in params.items()}
        return {"name": self.name, **params}


@dataclass(frozen=True)
class Colourization(Task):
    """Predict chroma from lightness in CIELab (docs/method.md#tasks).

    Model input: L / 50 - 1, one channel in [-1, 1]. Network output: ab / 110, two
    channels (`AB_SCALE`). The RGB image is rebuilt from the given L and predicted ab, so
    lightness is never altered by the model.
    """

    name: ClassVar[str] = "colourization"
    in_channels: ClassVar[int] = 1
    out_channels: ClassVar[int] = 2
    full_size_by_upsampling: ClassVar[bool] = True

    def degrade(self, clean: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Keep only the lightness of clean RGB images: (B, 3, H, W) -> (B, 1, H, W)."""
        return self.prepare_input(clean)

    def prepare_input(self, image: torch.Tensor) -> torch.Tensor:
        """Lightness of an RGB image (B, 3, H, W), or of a grey one (B, 1, H, W), in [-1, 1].

        A colour photo becomes grey: only its L channel is kept.
        """
        _check_images(image, (1, 3), "an input image")
        rgb = to_unit_range(image.expand(-1, 3, -1, -1))
        lightness = rgb_to_lab(rgb)[:, :1]  # (B, 1, H, W), L in [0, 100]
        return lightness / LIGHTNESS_HALF_RANGE - 1

    def true_output(self, clean: torch.Tensor) -> torch.Tensor:
        """The output that reproduces `clean` exactly: its ab in model space, (B, 2, H, W)."""
        _check_images(clean, 3, "clean RGB images")
        return rgb_to_lab(to_unit_range(clean))[:, 1:] / AB_SCALE

    def to_rgb(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Combine the input's L, resized to the output's size, with the predicted ab."""
        return from_unit_range(lab_to_rgb(self._lab(x, output)))

    def to_result_rgb(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """`to_rgb`, except that a colour outside sRGB loses chroma instead of being clipped.

        Clipping (what the loss sees) changes such a pixel's lightness; here the result's L
        is the input's, exactly (`color.lab_to_rgb_keep_lightness`).
        """
        return from_unit_range(lab_to_rgb_keep_lightness(self._lab(x, output)))

    def _lab(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The input's L at the output's size beside the predicted ab: (B, 3, h, w) Lab."""
        _check_images(x, 1, "colourization input (L)")
        _check_images(output, 2, "colourization output (ab)")
        # Coarse levels predict ab at a lower resolution; their L comes from the same
        # anti-aliased resize that makes the coarse targets D_l(y).
        lightness = resize(x, tuple(output.shape[-2:]), "bilinear")
        lightness = (lightness.clamp(-1, 1) + 1) * LIGHTNESS_HALF_RANGE  # (B, 1, h, w)
        return torch.cat([lightness, output * AB_SCALE], dim=1)

    def input_preview(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The grey image: the input's L with zero chroma, at `size`."""
        _check_images(x, 1, "colourization input (L)")
        zero_ab = x.new_zeros(x.shape[0], 2, *_check_size(size, "size"))
        return self.to_rgb(x, zero_ab)


@dataclass(frozen=True)
class JPEGDecompression(Task):
    """Undo heavy JPEG compression (docs/method.md#tasks).

    The model input is the decoded JPEG (RGB); the network predicts RGB directly.
    Compression uses Pillow's encoder with its default 4:2:0 chroma subsampling. It is not
    differentiable, which is fine: it is applied to data, never inside the loss.

    Attributes:
        quality: the JPEG quality (1 is the paper's setting).
        max_quality: for a blind model, each image's quality is drawn uniformly from
            `quality`..`max_quality` (from the degradation's generator), so one model
            restores the qualities people actually have; None: always `quality`.
    """

    name: ClassVar[str] = "jpeg"
    in_channels: ClassVar[int] = 3
    out_channels: ClassVar[int] = 3

    quality: int = 1
    max_quality: int | None = None

    def __post_init__(self) -> None:
        for what, value in (("quality", self.quality), ("max_quality", self.max_quality)):
            if value is None and what == "max_quality":
                continue
            if int(value) != value or not 1 <= value <= 95:
                raise ValueError(f"jpeg {what} must be an integer in 1..95, got {value!r}")
            object.__setattr__(self, what, int(value))
        if self.max_quality is not None and self.max_quality < self.quality:
            raise ValueError(f"jpeg max_quality {self.max_quality} is below quality {self.quality}")

    def to_dict(self) -> dict[str, Any]:
        # A fixed-quality task describes itself as it did before blind models existed, so
        # the fingerprints of its models and their saved codes stay the same.
        described = super().to_dict()
        if self.max_quality is None:
            del described["max_quality"]
        return described

    def qualities(self, count: int, generator: torch.Generator | None = None) -> list[int]:
        """The quality of each of `count` images: drawn for a blind model, else `quality`."""
        if self.max_quality is None:
            return [self.quality] * count
        return torch.randint(self.quality, self.max_quality + 1, (count,), generator=generator).tolist()

    def degrade(self, clean: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """JPEG-encode and decode each image at its quality (via 8-bit): (B, 3, H, W) -> same."""
        _check_images(clean, 3, "clean RGB images")
        # (B, H, W, 3) uint8, as an encoder sees a real photo.
        pixels = (to_unit_range(clean.detach()) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        qualities = self.qualities(len(pixels), generator)
        decoded = np.stack([self._jpeg_round_trip(image, quality) for image, quality in zip(pixels, qualities)])
        decoded = torch.from_numpy(decoded).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        return from_unit_range(decoded.to(clean.dtype) / 255).to(clean.device)

    @staticmethod
    def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
        """Encode one (H, W, 3) uint8 image as JPEG at `quality` in memory and decode it."""
        buffer = io.BytesIO()
        Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB"))


@dataclass(frozen=True)
class SuperResolution(Task):
    """Upscale by `factor` (16x in the paper, 8x with 3 levels; docs/method.md#tasks).

    Every level of the generator doubles the resolution, so the factor must be
    2**num_levels: the coarsest head already works at twice the input's size.
    """

    name: ClassVar[str] = "super_resolution"
    in_channels: ClassVar[int] = 3
    out_channels: ClassVar[int] = 3

    factor: int = 8

    def __post_init__(self) -> None:
        factor = self.factor
        if int(factor) != factor or factor < 2 or int(factor) & (int(factor) - 1):
            raise ValueError(f"super-resolution factor must be a power of 2 >= 2, got {factor!r}")
        object.__setattr__(self, "factor", int(factor))

    def degrade(self, clean: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Anti-aliased bicubic downsampling: (B, 3, H, W) -> (B, 3, H / factor, W / factor)."""
        _check_images(clean, 3, "clean RGB images")
        height, width = clean.shape[-2:]
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"image size {(height, width)} must be divisible by the super-resolution "
                f"factor {self.factor}")
        # Bicubic overshoots at edges; clamp so the input stays a valid image.
        small = resize(clean, (height // self.factor, width // self.factor), "bicubic")
        return small.clamp(-1, 1)

    def check_levels(self, num_levels: int) -> None:
        """Require factor == 2**num_levels, since each level upsamples by 2."""
        super().check_levels(num_levels)
        if self.factor != 2**num_levels:
            raise ValueError(
                f"super-resolution by {self.factor} needs a generator with "
                f"log2({self.factor}) = {self.factor.bit_length() - 1} levels "
                f"(2**levels == factor), got {num_levels} levels")

    def output_size(self, input_size: tuple[int, int], num_levels: int) -> tuple[int, int]:
        """The input's size times `factor`."""
        height, width = super().output_size(input_size, num_levels)
        return height * self.factor, width * self.factor

    def input_preview(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bicubic upsampling of the low-resolution input to `size`."""
        _check_images(x, 3, "super-resolution input")
        return resize(x, _check_size(size, "size"), "bicubic").clamp(-1, 1)


@dataclass(frozen=True)
class NightToDay(Task):
    """Turn a real night photo into a day one (docs/method.md#tasks).

    Night cannot be computed from day, so training needs paired folders of input (night)
    and target (day) images of the same scenes; `degrade` refuses.
    """

    name: ClassVar[str] = "night_to_day"
    in_channels: ClassVar[int] = 3
    out_channels: ClassVar[int] = 3
    paired: ClassVar[bool] = True

    def degrade(self, clean: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Always raises: the input cannot be made from the target."""
        raise ValueError(
            "night_to_day is a paired task: a night input cannot be computed from a day "
            "photo. Train it on paired data (an input folder of night images and a target "
            "folder of the matching day images), or use 'synthetic_night_to_day' for demos.")


@dataclass(frozen=True)
class SyntheticNightToDay(Task):
    """SYNTHETIC night-to-day: a stand-in for demos and tests, not real night photos.

    The "night" input is computed from a day photo: darkened by a gamma curve and an
    exposure factor, desaturated (night vision is less colourful), tinted blue, and
    optionally given Gaussian sensor noise. A model trained on it learns to invert this
    particular formula, which says nothing about real night photography.

    Attributes:
        gamma: exponent of the darkening curve on [0, 1] intensities (> 1 darkens).
        exposure: multiplier after the curve, in (0, 1].
        saturation: how much colour is kept, 0 (grey) to 1 (unchanged).
        tint: per-channel RGB gains; blue above the others gives moonlight.
        noise_std: standard deviation of the sensor noise on [0, 1] intensities; noise is
            drawn only when `degrade` is given a generator, so results are reproducible.
    """

    name: ClassVar[str] = "synthetic_night_to_day"
    in_channels: ClassVar[int] = 3
    out_channels: ClassVar[int] = 3

    gamma: float = 2.2
    exposure: float = 0.4
    saturation: float = 0.35
    tint: tuple[float, float, float] = (0.8, 0.9, 1.2)
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so equality still holds.
        object.__setattr__(self, "tint", tuple(float(t) for t in self.tint))
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma!r}")
        if not 0 < self.exposure <= 1:
            raise ValueError(f"exposure must be in (0, 1], got {self.exposure!r}")
        if not 0 <= self.saturation <= 1:
            raise ValueError(f"saturation must be in [0, 1], got {self.saturation!r}")
        if len(self.tint) != 3 or any(t < 0 for t in self.tint):
            raise ValueError(f"tint must be three non-negative gains, got {self.tint!r}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be non-negative, got {self.noise_std!r}")

    def degrade(self, clean: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Make a synthetic night image from a day one: (B, 3, H, W) -> (B, 3, H, W).

        Deterministic given the generator's state; without a generator, no noise.
        """
        _check_images(clean, 3, "clean RGB images")
        rgb = self.exposure * to_unit_range(clean) ** self.gamma
        # Rec. 709 luma as the grey the colours are pulled towards.
        luma_weights = clean.new_tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)
        grey = (rgb * luma_weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        rgb = grey + self.saturation * (rgb - grey)
        rgb = rgb * clean.new_tensor(self.tint).view(1, 3, 1, 1)
        if generator is not None and self.noise_std > 0:
            # Drawn on the generator's device so a seeded CPU generator works for any input.
            noise = torch.randn(rgb.shape, generator=generator, device=generator.device,
                                dtype=rgb.dtype)
            rgb = rgb + self.noise_std * noise.to(rgb.device)
        return from_unit_range(rgb.clamp(0, 1))


_TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (Colourization, JPEGDecompression, SuperResolution, NightToDay,
                SyntheticNightToDay)
}
TASK_NAMES: tuple[str, ...] = tuple(_TASK_CLASSES)


def make_task(name: str, **params: Any) -> Task:
    """Build the task registered as `name` with its parameters.

    Raises:
        ValueError: for an unknown name (listing the known ones) or unknown parameters.
    """
    if name not in _TASK_CLASSES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    cls = _TASK_CLASSES[name]
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"task {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"its parameters: {', '.join(sorted(known)) or 'none'}")
    return cls(**params)


def task_from_dict(d: dict[str, Any]) -> Task:
    """Rebuild a task from `Task.to_dict()`'s output."""
    if "name" not in d:
        raise ValueError(f"task description has no 'name': {d!r}")
    params = {key: value for key, value in d.items() if key != "name"}
    return make_task(d["name"], **params)
