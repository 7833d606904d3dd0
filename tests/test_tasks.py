"""Tests for chimle.tasks and chimle.color on real photos from scikit-image."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from chimle.color import lab_to_rgb, rgb_to_lab
from chimle.tasks import (
    AB_SCALE,
    TASK_NAMES,
    Colourization,
    JPEGDecompression,
    NightToDay,
    SuperResolution,
    SyntheticNightToDay,
    make_task,
    task_from_dict,
)

PHOTOS = ("astronaut", "chelsea", "coffee")


def photo_uint8(name: str, size: int = 64) -> np.ndarray:
    """A central size x size crop of a scikit-image sample photo, (H, W, 3) uint8."""
    image = getattr(skimage.data, name)()
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size, :3])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


def photo(name: str, size: int = 64) -> torch.Tensor:
    return to_tensor(photo_uint8(name, size))


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Mean Rec. 709 luma of [-1, 1] RGB images, on [0, 1] intensities."""
    weights = torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)
    return (((rgb + 1) / 2) * weights).sum(dim=1).mean()


def all_tasks(num_levels: int = 3):
    return [Colourization(), JPEGDecompression(quality=10), SuperResolution(factor=2**num_levels),
            NightToDay(), SyntheticNightToDay()]


# ---------------------------------------------------------------- colour conversion

@pytest.mark.parametrize("name", PHOTOS)
def test_lab_matches_skimage_both_ways(name):
    image = photo_uint8(name, 128)
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255

    lab = rgb_to_lab(rgb)[0].permute(1, 2, 0).double().numpy()
    reference_lab = skimage.color.rgb2lab(image)
    assert np.abs(lab - reference_lab).max() < 1e-3

    rgb_back = lab_to_rgb(torch.from_numpy(reference_lab).permute(2, 0, 1)[None].float())
    reference_rgb = skimage.color.lab2rgb(reference_lab)
    assert np.abs(rgb_back[0].permute(1, 2, 0).double().numpy() - reference_rgb).max() < 1e-3

    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3


def test_lab_of_black_white_and_grey():
    rgb = torch.tensor([0.0, 1.0, 0.5]).view(1, 1, 3, 1).expand(1, 3, 3, 1)
    lab = rgb_to_lab(rgb)
    assert torch.allclose(lab[0, 0, :, 0], torch.tensor([0.0, 100.0, 53.389]), atol=1e-2)
    assert lab[:, 1:].abs().max() < 1e-2  # neutral colours have no chroma under D65


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_lab_gradients_are_finite_on_black_and_white(value):
    rgb = torch.full((1, 3, 4, 4), value, requires_grad=True)
    rgb_to_lab(rgb).sum().backward()
    assert torch.isfinite(rgb.grad).all()

    lab = torch.zeros(1, 3, 4, 4)
    lab[:, 0] = 100 * value
    lab.requires_grad_(True)
    lab_to_rgb(lab).sum().backward()
    assert torch.isfinite(lab.grad).all()


# ---------------------------------------------------------------- colourization

@pytest.mark.parametrize("name", PHOTOS)
def test_colourization_planted_ab_reconstructs_photo(name):
    image = photo_uint8(name, 64)
    clean = to_tensor(image)
    task = Colourization()
    x = task.prepare_input(clean)
    assert x.shape == (1, 1, 64, 64)
    assert x.min() >= -1 and x.max() <= 1

    # The true chroma, computed independently by scikit-image, in model space.
    true_ab = torch.from_numpy(skimage.color.rgb2lab(image)[..., 1:]).permute(2, 0, 1)[None]
    true_ab = true_ab.float() / AB_SCALE
    assert true_ab.abs().max() < 1  # reachable through tanh
    assert (task.to_rgb(x, true_ab) - clean).abs().max() < 1e-3
    assert (task.true_output(clean) - true_ab).abs().max() < 1e-5


def test_colourization_degrade_equals_prepare_input_and_colour_becomes_grey():
    clean = photo("coffee")
    task = Colourization()
    assert torch.equal(task.degrade(clean), task.prepare_input(clean))

    grey = task.input_preview(task.prepare_input(clean), (64, 64))
    assert grey.shape == (1, 3, 64, 64)
    assert (grey[:, 0] - grey[:, 1]).abs().max() < 1e-3
    assert (grey[:, 1] - grey[:, 2]).abs().max() < 1e-3
    # A grey photo given as three equal channels or one channel has the same lightness,
    # and feeding the grey preview back in gives the same input.
    one_channel = grey[:, :1]
    assert (task.prepare_input(one_channel) - task.prepare_input(grey)).abs().max() < 1e-5
    assert (task.prepare_input(grey) - task.prepare_input(clean)).abs().max() < 1e-3


def test_colourization_to_rgb_at_coarse_level():
    clean = photo("chelsea")
    task = Colourization()
    x = task.prepare_input(clean)
    coarse_ab = F.avg_pool2d(task.true_output(clean), 4)  # (1, 2, 16, 16)
    rgb = task.to_rgb(x, coarse_ab)
    assert rgb.shape == (1, 3, 16, 16)
    # The coarse rebuild is close to the downsampled photo (colour maths is nonlinear,
    # so not exact).
    assert (rgb - F.avg_pool2d(clean, 4)).abs().mean() < 0.02
    with pytest.raises(ValueError, match="ab"):
        task.to_rgb(x, torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("value", [-1.0, 1.0, 0.0])
def test_colourization_to_rgb_gradient_is_finite(value):
    task = Colourization()
    x = task.prepare_input(torch.full((2, 3, 32, 32), value))
    generator = torch.Generator().manual_seed(0)
    for output in (torch.zeros(2, 2, 16, 16),
                   torch.tanh(3 * torch.randn(2, 2, 32, 32, generator=generator))):
        output.requires_grad_(True)
        task.to_rgb(x, output).square().sum().backward()
        assert torch.isfinite(output.grad).all()


def test_colourization_to_rgb_gradient_reaches_output():
    task = Colourization()
    clean = photo("astronaut", 32)
    output = (0.5 * task.true_output(clean)).requires_grad_(True)
    loss = (task.to_rgb(task.prepare_input(clean), output) - clean).square().mean()
    loss.backward()
    assert output.grad.abs().sum() > 0


# ---------------------------------------------------------------- JPEG

def test_jpeg_quality_ordering_and_determinism():
    clean = torch.cat([photo(name, 128) for name in PHOTOS])
    errors = {}
    for quality in (1, 90):
        task = JPEGDecompression(quality=quality)
        decoded = task.degrade(clean)
        assert decoded.shape == clean.shape and decoded.dtype == clean.dtype
        assert torch.equal(decoded, task.degrade(clean))
        # Decoded pixels are 8-bit values.
        levels = (decoded + 1) * 127.5
        assert (levels - levels.round()).abs().max() < 1e-4
        errors[quality] = (decoded - clean).abs().mean().item()
    assert errors[90] < 0.03  # about 3 of 255 levels: chroma subsampling on sharp crops
    assert errors[1] > 4 * errors[90]


def test_jpeg_matches_pillow_directly():
    image = photo_uint8("chelsea", 64)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=5)
    expected = to_tensor(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
    assert torch.equal(JPEGDecompression(quality=5).degrade(to_tensor(image)), expected)


def test_jpeg_input_is_used_as_is():
    task = JPEGDecompression()
    decoded = task.degrade(photo("coffee"))
    assert torch.equal(task.prepare_input(decoded), decoded)
    assert torch.equal(task.input_preview(decoded, (64, 64)), decoded)
    output = torch.zeros(1, 3, 16, 16)
    assert torch.equal(task.to_rgb(decoded, output), output)


@pytest.mark.parametrize("quality", [0, 96, 2.5])
def test_jpeg_rejects_bad_quality(quality):
    with pytest.raises(ValueError, match="quality"):
        JPEGDecompression(quality=quality)


def test_blind_jpeg_draws_each_images_quality_from_the_range_reproducibly():
    clean = torch.cat([photo("chelsea", 64)] * 12)
    blind = JPEGDecompression(quality=5, max_quality=40)
    qualities = blind.qualities(12, torch.Generator().manual_seed(3))
    assert all(5 <= q <= 40 for q in qualities) and len(set(qualities)) > 3
    decoded = blind.degrade(clean, torch.Generator().manual_seed(3))
    for image, quality in enumerate(qualities):  # each image is exactly the JPEG at its own quality
        assert torch.equal(decoded[image:image + 1], JPEGDecompression(quality=quality).degrade(clean[:1]))
    assert torch.equal(decoded, blind.degrade(clean, torch.Generator().manual_seed(3)))
    assert JPEGDecompression(quality=7).qualities(3, torch.Generator()) == [7, 7, 7]


def test_a_fixed_quality_jpeg_task_describes_itself_as_before_blind_ones():
    # Models and saved codes are fingerprinted by this description.
    assert JPEGDecompression(quality=1).to_dict() == {"name": "jpeg", "quality": 1}
    assert JPEGDecompression(quality=5, max_quality=40).to_dict() == {"name": "jpeg", "quality": 5,
                                                                       "max_quality": 40}
    with pytest.raises(ValueError, match="below quality"):
        JPEGDecompression(quality=20, max_quality=10)
    with pytest.raises(ValueError, match="max_quality"):
        JPEGDecompression(quality=5, max_quality=96)


# ---------------------------------------------------------------- super-resolution

def test_super_resolution_is_antialiased_bicubic():
    clean = photo("astronaut", 128)
    task = SuperResolution(factor=8)
    small = task.degrade(clean)
    assert small.shape == (1, 3, 16, 16)
    expected = F.interpolate(clean, size=(16, 16), mode="bicubic", antialias=True,
                             align_corners=False).clamp(-1, 1)
    assert torch.allclose(small, expected)
    # Anti-aliasing: close to the 8x8 box average, unlike plain point-sampled bicubic.
    box = F.avg_pool2d(clean, 8)
    aliased = F.interpolate(clean, size=(16, 16), mode="bicubic", align_corners=False)
    assert (small - box).abs().mean() < 0.5 * (aliased - box).abs().mean()


def test_super_resolution_preview_is_bicubic_upsampling():
    task = SuperResolution(factor=4)
    small = task.degrade(photo("chelsea"))
    preview = task.input_preview(small, (64, 64))
    expected = F.interpolate(small, size=(64, 64), mode="bicubic",
                             align_corners=False).clamp(-1, 1)
    assert torch.allclose(preview, expected)


def test_super_resolution_rejects_bad_factor_and_size():
    for factor in (3, 6, 1, 0):
        with pytest.raises(ValueError, match="power of 2"):
            SuperResolution(factor=factor)
    with pytest.raises(ValueError, match="divisible"):
        SuperResolution(factor=8).degrade(torch.zeros(1, 3, 60, 64))


def test_super_resolution_factor_must_match_levels():
    task = SuperResolution(factor=8)
    task.check_levels(3)
    for num_levels in (2, 4):
        with pytest.raises(ValueError, match=r"2\*\*levels"):
            task.check_levels(num_levels)
        with pytest.raises(ValueError, match="levels"):
            task.level_output_sizes((16, 16), num_levels)


# ---------------------------------------------------------------- sizes

@pytest.mark.parametrize("num_levels", [1, 3, 4])
def test_level_output_sizes_for_every_task(num_levels):
    for task in all_tasks(num_levels):
        task.check_levels(num_levels)
        if isinstance(task, SuperResolution):
            input_size, final = (16, 24), (16 * 2**num_levels, 24 * 2**num_levels)
        else:
            input_size, final = (64, 96), (64, 96)
        assert task.output_size(input_size, num_levels) == final
        sizes = task.level_output_sizes(input_size, num_levels)
        assert len(sizes) == num_levels
        assert sizes[-1] == final
        assert sizes[0] == (final[0] // 2 ** (num_levels - 1), final[1] // 2 ** (num_levels - 1))
        for coarse, fine in zip(sizes, sizes[1:]):
            assert (2 * coarse[0], 2 * coarse[1]) == fine


def test_level_output_sizes_reject_non_divisible_sizes():
    task = Colourization()
    assert task.level_output_sizes((100, 64), 3) == [(25, 16), (50, 32), (100, 64)]
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(4 - 1\\) = 8"):
        task.level_output_sizes((100, 64), 4)
    with pytest.raises(ValueError, match="num_levels"):
        task.level_output_sizes((64, 64), 0)
    with pytest.raises(ValueError, match="input_size"):
        task.output_size((64, -1), 3)


# ---------------------------------------------------------------- night to day

def test_paired_night_to_day_refuses_to_degrade():
    task = NightToDay()
    assert task.paired and not SyntheticNightToDay.paired
    with pytest.raises(ValueError, match="paired"):
        task.degrade(photo("coffee"))


def test_synthetic_night_darkens_and_tints_blue():
    clean = torch.cat([photo(name) for name in PHOTOS])
    night = SyntheticNightToDay().degrade(clean)
    assert night.shape == clean.shape
    assert night.min() >= -1 and night.max() <= 1
    assert luminance(night) < 0.3 * luminance(clean)
    assert night[:, 2].mean() > night[:, 0].mean()  # blue above red: moonlight tint


def test_synthetic_night_noise_is_reproducible():
    clean = photo("chelsea")
    task = SyntheticNightToDay(noise_std=0.05)
    first = task.degrade(clean, torch.Generator().manual_seed(1))
    again = task.degrade(clean, torch.Generator().manual_seed(1))
    other = task.degrade(clean, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Without a generator there is no noise: the same as a noiseless task.
    assert torch.equal(task.degrade(clean), SyntheticNightToDay(noise_std=0).degrade(clean))
    assert not torch.equal(first, task.degrade(clean))


# ---------------------------------------------------------------- registry

def test_task_names_cover_every_task():
    assert set(TASK_NAMES) == {"colourization", "jpeg", "super_resolution", "night_to_day",
                               "synthetic_night_to_day"}
    for name in TASK_NAMES:
        assert make_task(name).name == name


def test_to_dict_round_trips_through_json():
    tasks = [Colourization(), JPEGDecompression(quality=30), SuperResolution(factor=16),
             NightToDay(), SyntheticNightToDay(gamma=2.5, tint=(0.7, 0.8, 1.3), noise_std=0)]
    for task in tasks:
        description = json.loads(json.dumps(task.to_dict()))
        assert description == task.to_dict()
        assert description["name"] == task.name
        rebuilt = task_from_dict(description)
        assert type(rebuilt) is type(task) and rebuilt == task
    assert JPEGDecompression(quality=30).to_dict() == {"name": "jpeg", "quality": 30}


def test_make_task_errors_are_clear():
    with pytest.raises(ValueError, match="known tasks: colourization, jpeg"):
        make_task("colorisation")
    with pytest.raises(ValueError, match="no parameter.*qualty"):
        make_task("jpeg", qualty=5)
    with pytest.raises(ValueError, match="name"):
        task_from_dict({"quality": 5})
