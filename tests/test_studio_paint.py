"""Painting on the result: the image editor's strokes (chimle/studio/paint.py), and the session's region
re-draw and colour hints with a tiny model (no server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from chimle.checkpoint import load_codes
from chimle.editing import LevelEdit, region_weights
from chimle.ivo import IvOConfig, masked_distance
from chimle.pipeline import render
from chimle.studio.models import ModelCache
from chimle.studio.paint import canvas, strokes_from_editor
from chimle.studio.session import StudioError, StudioSession, pad_painted

from .studio_helpers import one_torch_thread, photo, tiny_checkpoint


def _layer(height: int = 6, width: int = 8) -> np.ndarray:
    layer = np.zeros((height, width, 4), np.uint8)  # the canvas exports RGB 0 under alpha 0
    layer[1:3, 2:5] = (200, 30, 30, 255)
    layer[4, 6] = (40, 90, 200, 128)  # a soft edge keeps its own colour
    return layer


def test_the_layer_alpha_is_the_mask_and_its_colour_the_hint():
    background = np.full((6, 8, 4), 90, np.uint8)
    strokes = strokes_from_editor({"background": background, "layers": [_layer()], "composite": None}, (6, 8))
    expected = torch.zeros(6, 8)
    expected[1:3, 2:5] = 1
    expected[4, 6] = 128 / 255
    assert torch.equal(strokes.mask, expected)
    assert strokes.colours.shape == (1, 3, 6, 8)
    assert torch.allclose(strokes.colours[0, :, 1, 2], torch.tensor([200, 30, 30]) / 127.5 - 1)
    assert torch.allclose(strokes.colours[0, :, 4, 6], torch.tensor([40, 90, 200]) / 127.5 - 1)


def test_the_topmost_layer_gives_the_colour_and_the_layers_together_the_mask():
    bottom, top = _layer(), np.zeros((6, 8, 4), np.uint8)
    top[1, 2] = (40, 160, 60, 255)
    top[5, 0] = (255, 255, 255, 51)
    strokes = strokes_from_editor({"background": None, "layers": [bottom, top], "composite": None}, (6, 8))
    assert torch.allclose(strokes.colours[0, :, 1, 2], torch.tensor([40, 160, 60]) / 127.5 - 1)
    assert strokes.mask[1, 2] == 1 and strokes.mask[5, 0] == 51 / 255


def test_without_layers_the_pixels_the_composite_changed_are_the_strokes():
    background = np.full((6, 8, 4), 90, np.uint8)
    composite = background.copy()
    composite[2:4, 1:3, :3] = (200, 30, 30)
    strokes = strokes_from_editor({"background": background, "layers": [], "composite": composite}, (6, 8))
    assert strokes.mask.sum() == 4 and strokes.mask[2:4, 1:3].eq(1).all()
    assert torch.allclose(strokes.colours[0, :, 2, 1], torch.tensor([200, 30, 30]) / 127.5 - 1)


def test_a_canvas_of_another_size_is_fitted_to_the_result():
    layer = np.zeros((12, 16, 4), np.uint8)
    layer[:6, :8] = (200, 30, 30, 255)  # the top-left quarter
    strokes = strokes_from_editor({"background": None, "layers": [Image.fromarray(layer)], "composite": None}, (6, 8))
    assert strokes.mask.shape == (6, 8)
    assert strokes.mask[:3, :4].eq(1).all() and strokes.mask[4:, 5:].eq(0).all()


def test_nothing_painted_is_none_and_a_canvas_shows_the_image_unpainted():
    empty = np.zeros((6, 8, 4), np.uint8)
    assert strokes_from_editor({"background": empty, "layers": [empty], "composite": empty}, (6, 8)) is None
    assert strokes_from_editor(None, (6, 8)) is None
    assert canvas("result.png") == {"background": "result.png", "layers": [], "composite": "result.png"}
    assert canvas(None) is None


# -- the session's region re-draw and colour hints (tiny model, no server) --------------------

single_thread = pytest.fixture(scope="module")(one_torch_thread)
PHOTO_SIZE = (70, 50)  # (width, height): the output is padded to 72x56 for three levels


@pytest.fixture(scope="module")
def model(tmp_path_factory, single_thread):
    return ModelCache(capacity=1).get(tiny_checkpoint(tmp_path_factory.mktemp("checkpoints"), "colourization"))


@pytest.fixture
def session(model):
    session = StudioSession()
    session.set_input(model, photo("astronaut", PHOTO_SIZE), 256)
    session.draw_samples(model, 2, seed=3)
    return session


def _region(session) -> torch.Tensor:
    mask = torch.zeros(session.prepared.crop)
    mask[:16, :24] = 1
    return mask


@pytest.mark.parametrize("level", [0, 1, 2])
def test_a_region_redraw_changes_only_that_levels_local_code_under_the_region(session, model, level):
    assert session.prepared.crop != session.prepared.output_size  # the mask is padded too
    # A slider edit of the same level first: its global part stays, its local part is baked in.
    session.edit_level(model, level, LevelEdit(directions=(1.5, 0, 0, 0), local_seed=4, local_blend=0.5))
    before, images = session.current, [image.clone() for image in session.level_images]
    report = session.redraw_region(model, level, _region(session), seed=9)
    assert report.start_level == level  # rendered as a slider edit: from that level on, reusing the rest
    for index in range(level):
        assert torch.equal(session.level_images[index], images[index])
    assert not torch.equal(session.level_images[level], images[level])
    for other in range(before.num_levels):
        assert torch.equal(session.current.globals[other], before.globals[other])
        if other != level:
            assert torch.equal(session.current.locals[other], before.locals[other])
    weights = region_weights(pad_painted(session.prepared, _region(session)[None, None])[0, 0],
                             before.shape.local_sizes[level])[0, 0]
    old, new = before.locals[level][0], session.current.locals[level][0]
    assert torch.equal(new[:, weights == 0], old[:, weights == 0])
    assert not torch.equal(new[:, weights == 1], old[:, weights == 1])
    # The level's local sliders are back to neutral (their effect is in the code), the global ones stay.
    assert session.edits[level].local_blend == 0 and session.edits[level].directions[0] == 1.5
    # The incremental render is the render of the code.
    full, _ = render(model.net, model.task, session.prepared, session.current, as_result=True)
    assert all(torch.equal(a, b) for a, b in zip(full, session.level_images))


def test_the_same_region_again_and_a_blend_and_save_keeps_the_edit(session, model, tmp_path):
    session.redraw_region(model, 2, _region(session), seed=9)
    first = session.current
    session.redraw_region(model, 2, None, seed=10)  # the last region, another seed
    weights = region_weights(session.region, first.shape.local_sizes[2])[0, 0]
    assert torch.equal(session.current.locals[2][0][:, weights == 0], first.locals[2][0][:, weights == 0])
    assert not session.current.equal(first)
    blended = session.current
    session.redraw_region(model, 2, _region(session), seed=10, amount=0.0)
    assert session.current.equal(blended)  # a blend of weight 0 changes nothing
    _, codes_path = session.export(model, tmp_path, "edited")
    assert load_codes(codes_path, model.fingerprint)[0].equal(session.current)  # Save saves the edited code
    with pytest.raises(StudioError, match="paint the region"):
        session.redraw_region(model, 2, torch.zeros(session.prepared.crop), seed=1)
    with pytest.raises(StudioError, match="paint on the current result"):
        session.redraw_region(model, 2, torch.ones(10, 10), seed=1)
    with pytest.raises(StudioError, match="3 levels"):
        session.redraw_region(model, 3, _region(session), seed=1)


def _strokes(session):
    h, w = session.prepared.crop
    colours = torch.zeros(1, 3, h, w)
    colours[:, 0], colours[:, 1:] = 0.8, -0.6  # red
    mask = torch.zeros(h, w)
    mask[30:44, 20:50] = 1
    return colours, mask


def test_colour_hints_find_a_closer_code_live_and_stop_keeps_it(session, model):
    colours, mask = _strokes(session)
    target = pad_painted(session.prepared, colours, "constant")
    painted = pad_painted(session.prepared, mask[None, None], "constant")

    def distance(codes) -> float:
        images, _ = render(model.net, model.task, session.prepared, codes)
        (out_h, out_w), (h, w) = session.prepared.output_size, session.prepared.crop
        full = F.pad(images[-1], (0, out_w - w, 0, out_h - h))  # back to the padded size (no strokes there)
        return masked_distance(full, target, painted).item()

    start = distance(session.current)
    config = IvOConfig(steps=10, report_every=5, init_samples=6, chunk_size=4)
    updates = list(session.find_colour_hints(model, colours, mask, config))
    assert [u.step for u in updates] == [0, 5, 10] and all(u.lpips is None for u in updates)
    assert updates[0].mse <= start + 1e-6  # the current code was a candidate
    assert updates[-1].mse < updates[0].mse
    assert session.current.equal(session.origin)  # the found code is the sliders' new starting point
    assert distance(session.current) == pytest.approx(updates[-1].mse, rel=1e-4)
    # Again with the last strokes, stopped after the first report: that code stays current.
    running = session.find_colour_hints(model, None, None, IvOConfig(steps=50, report_every=5, init_samples=2))
    next(running)
    seen = session.current
    running.close()
    assert session.current.equal(seen) and session.cache_codes.equal(seen)
    assert all(not p.requires_grad for p in model.net.parameters())
    fresh = StudioSession()
    fresh.set_input(model, photo("astronaut", PHOTO_SIZE), 256)
    with pytest.raises(StudioError, match="colour strokes"):
        next(fresh.find_colour_hints(model, None, None, config))


def test_what_is_painted_is_described_by_its_share_and_box():
    from chimle.studio.paint import describe_strokes

    background = np.full((6, 8, 4), 90, np.uint8)
    strokes = strokes_from_editor({"background": background, "layers": [_layer()], "composite": None}, (6, 8))
    # 6 opaque pixels and one half-opaque of 48; columns 2..6, rows 1..4.
    assert describe_strokes(strokes).startswith("Painted 14% of the result, within 5 x 4 px")
    assert describe_strokes(None).startswith("Nothing painted yet")
    dot = np.zeros((100, 100, 4), np.uint8)
    dot[50, 60] = (200, 30, 30, 255)
    tiny = strokes_from_editor({"background": np.zeros((100, 100, 4), np.uint8), "layers": [dot]}, (100, 100))
    assert describe_strokes(tiny).startswith("Painted under 1% of the result, within 1 x 1 px")
