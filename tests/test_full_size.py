"""Results at the photo's own size (`pipeline.render_full_size`), tiles, and the colour mapping.

Tiny models with random AdaIN weights (so global codes and the untrained heads produce strong,
often out-of-gamut colours) on real photos from scikit-image, larger than the working size.
"""

from __future__ import annotations

import pytest
import torch

from chimle.codes import LatentCodes
from chimle.color import _in_gamut, _lab_to_linear_unclipped, lab_to_rgb, lab_to_rgb_keep_lightness, rgb_to_lab
from chimle.config import preset
from chimle.imageops import resize, to_unit_range
from chimle.images import pil_to_tensor
from chimle.model import TowerImplicitModel
from chimle.pipeline import (full_size_codes, prepare, prepare_full_size, render, render_full_size, resample_maps,
                             sample_codes)
from chimle.tasks import make_task
from chimle.tiling import render_tiled, tile_grid

from .studio_helpers import one_torch_thread, photo

single_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def live_model(task_name: str, levels: int = 3, semantic: bool = False, seed: int = 0,
               input_skip: bool = False, region_styles: int = 0, region_codes: int = 0,
               region_partition: str = "learned"):
    """A tiny model whose global stream matters (random AdaIN weights), optionally with the
    prior, the input skip, region styles and region codes (which need the prior)."""
    task = make_task(task_name)
    extra = dict(semantic_encoder="alexnet", semantic_channels=4) if semantic or region_styles or region_codes else {}
    extra |= dict(input_skip=True) if input_skip else {}
    extra |= dict(region_styles=region_styles) if region_styles else {}
    extra |= dict(region_codes=region_codes, region_partition=region_partition) if region_codes else {}
    config = preset("tiny", task.in_channels, task.out_channels, channels=(8,) * levels, growth=(8,) * levels,
                    rrdbs=(1,) * levels, **extra)
    torch.manual_seed(seed)
    net = TowerImplicitModel(config).eval()
    for level in net.levels:
        for adain in level.adains:
            torch.nn.init.normal_(adain.affine.weight, std=0.5)
            if adain.region_affine is not None:
                torch.nn.init.normal_(adain.region_affine.weight, std=0.5)
            if adain.region_code_affine is not None:
                torch.nn.init.normal_(adain.region_code_affine.weight, std=0.5)
    return net, task


def lightness(rgb: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab(to_unit_range(rgb))[:, :1]


# -- the colour mapping ---------------------------------------------------------------------


def test_keeping_lightness_changes_only_out_of_gamut_colours_and_only_their_chroma():
    generator = torch.Generator().manual_seed(0)
    lab = torch.cat([torch.rand(1, 1, 48, 48, generator=generator) * 100,
                     torch.randn(1, 2, 48, 48, generator=generator) * 60], 1)
    lab[0, :, 0, :3] = torch.tensor([[0.0, 100.0, 50.0], [0, 0, 0], [0, 0, 0]])  # black, white, grey
    kept = lab_to_rgb_keep_lightness(lab)
    inside = _in_gamut(_lab_to_linear_unclipped(lab))
    assert 0.2 < inside.float().mean() < 0.8  # both kinds are tested
    # Inside the gamut: exactly lab_to_rgb's colours. Outside: the same L and hue, less chroma.
    assert torch.equal(kept.permute(0, 2, 3, 1)[inside], lab_to_rgb(lab).permute(0, 2, 3, 1)[inside])
    result = rgb_to_lab(kept)
    torch.testing.assert_close(result[:, :1], lab[:, :1], rtol=0, atol=1e-3)
    outside = ~inside[0] & (lab[0, 1:].norm(dim=0) > 1)  # (white may land a hair outside: no chroma to lose)
    given, got = lab[0, 1:, outside], result[0, 1:, outside]  # (2, N) ab
    scale = (got * given).sum(0) / (given * given).sum(0)
    assert scale.min() >= 0 and scale.max() < 1
    torch.testing.assert_close(got, given * scale, rtol=0, atol=0.05)  # the same hue
    assert clipped_lightness_changes(lab)  # what keeping the lightness avoids


def clipped_lightness_changes(lab: torch.Tensor) -> bool:
    """Whether plain clipping (lab_to_rgb) changes some pixel's lightness by more than 1 (what is avoided)."""
    return bool((rgb_to_lab(lab_to_rgb(lab))[:, :1] - lab[:, :1]).abs().max() > 1)


def test_the_chroma_found_is_the_most_that_fits():
    generator = torch.Generator().manual_seed(1)
    lab = torch.cat([torch.rand(1, 1, 1, 400, generator=generator) * 90 + 5,
                     torch.randn(1, 2, 1, 400, generator=generator) * 80], 1)
    outside = ~_in_gamut(_lab_to_linear_unclipped(lab))[0, 0]
    fitted = rgb_to_lab(lab_to_rgb_keep_lightness(lab))[..., outside]  # (1, 3, 1, N)
    # 1% more chroma at the same L leaves the gamut for (nearly) every fitted colour.
    wider = torch.cat([fitted[:, :1], fitted[:, 1:] * 1.01], 1)
    assert (~_in_gamut(_lab_to_linear_unclipped(wider))).float().mean() > 0.95


# -- colourization: the photo's own lightness -----------------------------------------------


def test_colourization_at_full_size_keeps_the_photos_lightness_exactly():
    net, task = live_model("colourization")
    with torch.no_grad():  # saturated chroma: many predicted colours outside sRGB
        net.levels[-1].head.parametrizations.weight.original0.mul_(30)
    image = photo("chelsea", (200, 150))
    prepared = prepare(net, task, image, max_side=64)
    assert prepared.crop == (48, 64)
    codes = sample_codes(net, prepared, 2, seed=3)
    result = render_full_size(net, task, image, prepared, codes)
    assert result.shape == (2, 3, 150, 200)
    original = lightness(pil_to_tensor(image))
    torch.testing.assert_close(lightness(result), original.expand(2, -1, -1, -1), rtol=0, atol=2e-3)
    # The chroma is the working-size prediction, upsampled (where the colour is displayable).
    with torch.inference_mode():
        ab = net.render(prepared.x.expand(2, -1, -1, -1), codes).outputs[-1][..., :48, :64] * 110
    upsampled = resize(ab, (150, 200), "bilinear")
    lab = torch.cat([original.expand(2, -1, -1, -1), upsampled], 1)
    inside = _in_gamut(_lab_to_linear_unclipped(lab))
    assert 0.05 < inside.float().mean() < 0.95 and clipped_lightness_changes(lab)  # the test has teeth
    got = rgb_to_lab(to_unit_range(result))[:, 1:].permute(0, 2, 3, 1)[inside]
    torch.testing.assert_close(got, upsampled.permute(0, 2, 3, 1)[inside], rtol=0, atol=0.05)


def test_a_photo_that_fits_the_working_size_gives_the_preview_itself():
    for task_name in ("colourization", "jpeg"):
        net, task = live_model(task_name)
        image = photo("coffee", (64, 48))
        prepared = prepare(net, task, image, max_side=64)
        codes = sample_codes(net, prepared, 1, seed=0)
        preview = render(net, task, prepared, codes, as_result=True)[0][-1]
        assert torch.equal(render_full_size(net, task, image, prepared, codes), preview)


# -- the other tasks: the model at full size -------------------------------------------------


def test_super_resolution_at_full_size_is_the_photo_times_the_factor():
    net, task = live_model("super_resolution")  # 3 levels: x8
    image = photo("astronaut", (60, 45))
    prepared = prepare(net, task, image, max_side=256)  # the input is shrunk to 32x24
    assert prepared.crop == (192, 256)
    codes = sample_codes(net, prepared, 1, seed=0)
    result = render_full_size(net, task, image, prepared, codes)
    assert result.shape == (1, 3, 45 * 8, 60 * 8) and torch.isfinite(result).all()


def test_full_size_codes_keep_globals_and_resample_locals_to_the_full_code_shape():
    net, task = live_model("jpeg")
    image = photo("coffee", (200, 150))
    prepared, full = prepare(net, task, image, 64), prepare_full_size(net, task, image)
    codes = sample_codes(net, prepared, 2, seed=1)
    resized = full_size_codes(net, prepared, full, codes)
    assert resized.shape == net.code_shape(full.output_size)
    assert all(torch.equal(a, b) for a, b in zip(resized.globals, codes.globals))
    # Renormalised: the resampled noise is still N(0, 1), not the smoother, weaker plain mix.
    finest = resized.locals[-1]
    assert abs(float(finest.std()) - 1) < 0.05 and abs(float(finest.mean())) < 0.05


def test_resampling_maps_the_photo_onto_itself():
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 4, 8)  # value = column index
    # Identity at the same size and scale.
    assert torch.equal(resample_maps(ramp, (4, 8), (1.0, 1.0)), ramp)
    # Twice the size: target column j samples source position (j + 0.5) / 2 - 0.5 (edges repeated).
    doubled = resample_maps(ramp, (8, 16), (0.5, 0.5))[0, 0, 0]
    expected = ((torch.arange(16.0) + 0.5) / 2 - 0.5).clamp(0, 7)
    torch.testing.assert_close(doubled, expected, rtol=0, atol=1e-6)
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = resample_maps(noise, (128, 128), (0.25, 0.25))
    renormalised = resample_maps(noise, (128, 128), (0.25, 0.25), renormalise=True)
    assert float(plain.std()) < 0.85 and abs(float(renormalised.std()) - 1) < 0.05


# -- tiles ------------------------------------------------------------------------------------


def test_tile_grid_covers_the_map_once():
    tiles = tile_grid(10, 7, 4)
    covered = torch.zeros(10, 7, dtype=torch.int64)
    for y0, y1, x0, x1 in tiles:
        covered[y0:y1, x0:x1] += 1
    assert torch.equal(covered, torch.ones(10, 7, dtype=torch.int64)) and len(tiles) == 3 * 2


@pytest.mark.parametrize("semantic, input_skip, region_styles, region_codes, region_partition",
                         [(False, False, 0, 0, "learned"), (True, False, 0, 0, "learned"),
                          (False, True, 0, 0, "learned"), (True, False, 3, 0, "learned"),
                          (True, False, 0, 3, "learned"), (True, False, 0, 3, "kmeans")],
                         ids=["plain", "semantic-prior", "input-skip", "region-styles", "region-codes",
                              "kmeans-region-codes"])
def test_tiles_give_what_one_pass_gives(semantic, input_skip, region_styles, region_codes, region_partition):
    net, task = live_model("jpeg", semantic=semantic, input_skip=input_skip, region_styles=region_styles,
                           region_codes=region_codes, region_partition=region_partition)
    x = pil_to_tensor(photo("astronaut", (96, 64)))  # (1, 3, 64, 96): several tiles per level
    codes = LatentCodes.sample(net.code_shape((64, 96)), 2, torch.Generator().manual_seed(0))
    x = x.expand(2, -1, -1, -1)
    with torch.inference_mode():
        whole = net.render(x, codes).outputs[-1]
    fractions = []
    tiled = render_tiled(net, x, codes, size=8, progress=fractions.append)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and len(fractions) > 20


def test_a_full_size_render_in_tiles_equals_one_in_one_pass():
    net, task = live_model("jpeg", semantic=True)
    image = photo("chelsea", (120, 90))
    prepared = prepare(net, task, image, max_side=64)
    codes = sample_codes(net, prepared, 1, seed=2)
    one_pass = render_full_size(net, task, image, prepared, codes)
    fractions = []
    tiled = render_full_size(net, task, image, prepared, codes, progress=fractions.append, tile_size=16,
                             tiled_above=0)
    torch.testing.assert_close(tiled, one_pass, rtol=0, atol=1e-5)
    assert tiled.shape == (1, 3, 90, 120) and fractions[-1] == 1.0
