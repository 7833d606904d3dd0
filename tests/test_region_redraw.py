"""Region re-draw (chimle/editing.py): one level's local code changes under a painted mask only."""

from __future__ import annotations

import math

import pytest
import torch

from chimle.codes import LatentCodes
from chimle.config import preset
from chimle.editing import EditError, redraw_region, region_reach, region_weights, seeded_level
from chimle.model import AdaIN, TowerImplicitModel
from chimle.tasks import make_task

from .conftest import photo

SIZE = 128  # output side: large enough that the finest level's reach leaves pixels beyond it
PAINTED = 24  # the mask paints the top-left PAINTED x PAINTED pixels


def _model(rrdbs: int = 1, levels: int = 2, adain_std: float = 0.5):
    """A tiny colourization model; random AdaIN weights so that AdaIN does something (as trained ones do)."""
    task = make_task("colourization")
    config = preset("tiny", task.in_channels, task.out_channels, channels=(8,) * levels, growth=(8,) * levels,
                    rrdbs=(rrdbs,) * levels)
    torch.manual_seed(0)
    net = TowerImplicitModel(config).eval()
    for level in net.levels:
        for adain in level.adains:
            torch.nn.init.normal_(adain.affine.weight, std=adain_std)
    return net, task


def _mask(size: int = SIZE) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[:PAINTED, :PAINTED] = 1
    return mask


def _setup(net, size: int = SIZE):
    x = make_task("colourization").prepare_input(photo("astronaut", size))
    codes = LatentCodes.sample(net.code_shape((size, size)), 1, torch.Generator().manual_seed(0))
    return x, codes


def _render(net, task, x, codes) -> torch.Tensor:
    with torch.inference_mode():
        return task.to_rgb(x, net(x, codes)[-1])


def _far(level: int, net, size: int = SIZE) -> torch.Tensor:
    """Pixels farther than the level's reach from every code cell the mask touches."""
    cell = size // net.code_shape((size, size)).local_sizes[level][0]
    edge = math.ceil(PAINTED / cell) * cell + region_reach(net.config, level)
    far = torch.ones(size, size, dtype=torch.bool)
    far[:edge, :edge] = False
    return far


def test_region_weights_are_each_cells_painted_share():
    mask = torch.zeros(8, 8)
    mask[0, 0] = 1  # a quarter of cell (0, 0) of a 4x4 map
    mask[2:4, 2:4] = 0.5  # all of cell (1, 1), half strength
    weights = region_weights(mask, (4, 4))
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0, 0], expected[0, 0, 1, 1] = 0.25, 0.5
    assert torch.equal(weights, expected)
    with pytest.raises(EditError, match="does not fit"):
        region_weights(torch.zeros(8, 6), (4, 4))
    with pytest.raises(EditError, match="between 0 and 1"):
        region_weights(torch.full((8, 8), 1.5), (4, 4))
    with pytest.raises(EditError, match=r"\(H, W\)"):
        region_weights(torch.zeros(1, 8, 8), (4, 4))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_only_the_painted_cells_of_the_levels_local_map_change(level):
    net, _ = _model(levels=3)
    _, codes = _setup(net)
    mask = torch.zeros(SIZE, SIZE)
    mask[:64, :64] = 1
    mask[64:, 64:72] = 0.5  # a soft stroke
    edited = redraw_region(codes, level, mask, seed=11)
    for other in range(codes.num_levels):
        assert torch.equal(edited.globals[other], codes.globals[other])
        if other != level:
            assert torch.equal(edited.locals[other], codes.locals[other])
    weights = region_weights(mask, codes.shape.local_sizes[level])[0, 0]
    old, new = codes.locals[level][0], edited.locals[level][0]
    seeded = seeded_level(codes, level, 11)[1][0]
    assert torch.equal(new[:, weights == 0], old[:, weights == 0])  # unpainted cells bit for bit
    assert torch.equal(new[:, weights == 1], seeded[:, weights == 1])  # fully painted: the seed's cells
    half = weights == 0.5
    assert half.any()
    expected = (old[:, half] + seeded[:, half]) / math.sqrt(0.5)  # (0.5 z0 + 0.5 z1) / sqrt(0.5)
    assert torch.allclose(new[:, half], 0.5 * expected)
    # A blend part way moves the painted cells part way; amount 0 changes nothing.
    assert redraw_region(codes, level, mask, seed=11, amount=0.0).equal(codes)
    partial = redraw_region(codes, level, mask, seed=11, amount=0.3, renormalise=False).locals[level][0]
    assert torch.allclose(partial[:, weights == 1], 0.7 * old[:, weights == 1] + 0.3 * seeded[:, weights == 1])


@pytest.mark.parametrize("rrdbs", [0, 1])
@pytest.mark.parametrize("level", [0, 1])
def test_without_adain_pixels_beyond_the_reach_are_bit_identical(level, rrdbs, monkeypatch):
    # AdaIN is the one non-local part of a level. Without it (no RRDBs, or AdaIN made the
    # identity) nothing may change beyond region_reach at all.
    monkeypatch.setattr(AdaIN, "forward", lambda self, x, w, semantic=None, region_codes=None: x)
    net, task = _model(rrdbs=rrdbs, levels=2)
    size = 2 * SIZE if rrdbs and level == 0 else SIZE  # room beyond the coarse level's reach of 113 px
    x, codes = _setup(net, size)
    before = _render(net, task, x, codes)
    after = _render(net, task, x, redraw_region(codes, level, _mask(size), seed=5))
    far = _far(level, net, size)
    assert far.sum() > 0.25 * size * size, "the test needs pixels beyond the reach"
    assert torch.equal(after[..., far], before[..., far])
    # Inside they change (a coarse level's only through the 0.1-scaled feature feed of an untrained model).
    assert (after - before)[..., :PAINTED, :PAINTED].abs().max() > 1e-3


def test_beyond_the_reach_only_adains_statistics_move_pixels_and_little():
    # AdaIN's instance norm takes each channel's statistics over the whole image: a re-drawn
    # region moves them a little, and so every pixel, by far less than the region itself.
    net, task = _model(rrdbs=1, levels=2)
    x, codes = _setup(net)
    level = 1
    before = _render(net, task, x, codes)
    after = _render(net, task, x, redraw_region(codes, level, _mask(), seed=5))
    change = (after - before).abs()
    far = _far(level, net)
    assert far.sum() > 0.3 * SIZE * SIZE
    inside = change[..., :PAINTED, :PAINTED].mean()
    assert change[..., far].max() < 1 / 255  # under half a grey level of an 8-bit image ([-1, 1] spans 2)
    assert change[..., far].max() < 0.1 * inside


def test_reach_counts_every_finer_levels_convolutions():
    net, _ = _model(rrdbs=1, levels=2)
    # Level 2 (finest, working at half the output): (1 + 15 + 1) cells x 2 px + 3 tail convs
    # at output resolution + a cell of slack; level 1 adds its own (x 4 px) and 2 tail convs.
    assert region_reach(net.config, 1) == 17 * 2 + 3 + 2
    assert region_reach(net.config, 0) == 17 * 4 + 2 * 2 + 17 * 2 + 3 + 4
    with pytest.raises(EditError):
        region_reach(net.config, 2)
