"""Level edits of hierarchical codes (chimle/editing.py): pure tensor maths, no model, no Gradio."""

from __future__ import annotations

import math

import pytest
import torch

from chimle.codes import CodeShape, LatentCodes
from chimle.directions import GlobalDirections
from chimle.editing import (EditError, LevelEdit, apply_edits, blend, edited_level, first_changed_level, keep_levels,
                            redraw_level, seeded_level)

SHAPE = CodeShape(global_dim=6, local_channels=2, local_sizes=((4, 4), (8, 8), (16, 16)))


def _code(seed: int = 0, batch: int = 1) -> LatentCodes:
    return LatentCodes.sample(SHAPE, batch, torch.Generator().manual_seed(seed))


def _directions(count: int = 4) -> GlobalDirections:
    """Direction i moves global coordinate i by i + 1 (easy to check by hand)."""
    vectors = torch.zeros(count, SHAPE.global_dim)
    for index in range(count):
        vectors[index, index] = index + 1
    return GlobalDirections(vectors, torch.full((count,), 1 / count))


def _same_level(a: LatentCodes, b: LatentCodes, level: int) -> bool:
    return torch.equal(a.globals[level], b.globals[level]) and torch.equal(a.locals[level], b.locals[level])


@pytest.mark.parametrize("edit", [LevelEdit(global_seed=3, global_blend=0.5), LevelEdit(local_seed=3, local_blend=0.5),
                                  LevelEdit(directions=(1.0, 0, 0, 0)), LevelEdit(noise_scale=0.5)])
def test_an_edit_of_level_2_changes_level_2_only(edit):
    base = _code()
    edited = apply_edits(base, {1: edit}, lambda level: _directions())
    assert _same_level(edited, base, 0) and _same_level(edited, base, 2)
    assert not _same_level(edited, base, 1)
    assert first_changed_level(base, edited) == 1
    # Only the part the edit is about moves: global for blends and directions of the global code.
    moves_global = bool(edit.global_blend or any(edit.directions))
    assert torch.equal(edited.globals[1], base.globals[1]) is not moves_global
    assert torch.equal(edited.locals[1], base.locals[1]) is moves_global


def test_neutral_edits_give_back_the_base_tensors_themselves():
    base = _code()
    asked = []
    edited = apply_edits(base, {0: LevelEdit(), 1: LevelEdit(global_seed=9, local_seed=4), 2: LevelEdit()},
                         lambda level: asked.append(level) or _directions())
    assert all(a is b for a, b in zip(edited.globals + edited.locals, base.globals + base.locals))
    assert asked == []  # nobody moved along directions, so none were computed
    assert LevelEdit(global_seed=9).neutral and not LevelEdit(noise_scale=0.99).neutral


def test_directions_move_the_global_code_by_the_amounts():
    base = _code()
    g, loc = edited_level(base, 2, LevelEdit(directions=(0.5, -1.0, 0, 2.0)), _directions())
    expected = base.globals[2].clone()
    expected[0, 0] += 0.5 * 1
    expected[0, 1] += -1.0 * 2
    expected[0, 3] += 2.0 * 4
    assert torch.allclose(g, expected, rtol=0, atol=1e-6)
    assert loc is base.locals[2]
    # A model with fewer directions than sliders: the extra amounts are ignored.
    g_short, _ = edited_level(base, 2, LevelEdit(directions=(0.5, -1.0, 0, 2.0)), _directions(count=2))
    assert torch.allclose(g_short, base.globals[2] + torch.tensor([[0.5, -2.0, 0, 0, 0, 0]]), rtol=0, atol=1e-6)
    with pytest.raises(EditError, match="needs the level's directions"):
        edited_level(base, 2, LevelEdit(directions=(1.0, 0, 0, 0)))


def test_blend_then_directions_and_scaled_local_noise():
    base = _code()
    edit = LevelEdit(directions=(1.0, 0, 0, 0), global_seed=5, global_blend=0.3, local_seed=6, local_blend=0.6,
                     noise_scale=0.5)
    g, loc = edited_level(base, 1, edit, _directions(), renormalise=True)
    target_g, _ = seeded_level(base, 1, 5)
    _, target_l = seeded_level(base, 1, 6)
    assert torch.allclose(g, _directions().apply(blend(base.globals[1], target_g, 0.3), [1.0, 0, 0, 0]))
    assert torch.allclose(loc, 0.5 * blend(base.locals[1], target_l, 0.6))
    # apply_edits is edited_level put into the code, for every edited level.
    both = apply_edits(base, {1: edit, 2: LevelEdit(noise_scale=0.0)}, lambda level: _directions())
    assert torch.equal(both.globals[1], g) and torch.equal(both.locals[1], loc)
    assert torch.equal(both.locals[2], torch.zeros_like(base.locals[2]))


def test_renormalise_is_used_for_every_level():
    base = _code()
    edits = {0: LevelEdit(global_seed=1, global_blend=0.5), 2: LevelEdit(local_seed=2, local_blend=0.5)}
    plain, renormalised = apply_edits(base, edits, renormalise=False), apply_edits(base, edits, renormalise=True)
    assert torch.allclose(renormalised.globals[0], plain.globals[0] / math.sqrt(0.5))
    assert torch.allclose(renormalised.locals[2], plain.locals[2] / math.sqrt(0.5))


def test_blend_at_0_and_1_gives_the_endpoints():
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 200_000, generator=generator)
    for renormalise in (True, False):
        assert torch.equal(blend(z0, z1, 0.0, renormalise), z0)
        assert torch.equal(blend(z0, z1, 1.0, renormalise), z1)
    assert torch.allclose(blend(z0, z1, 0.5, False), 0.5 * z0 + 0.5 * z1)
    assert torch.allclose(blend(z0, z1, 0.5, True), (0.5 * z0 + 0.5 * z1) / math.sqrt(0.5))
    # Renormalised mixes of independent N(0, 1) codes are N(0, 1) again; plain ones shrink.
    for amount in (0.25, 0.5, 0.8):
        assert abs(blend(z0, z1, amount, True).var().item() - 1) < 0.02
    assert abs(blend(z0, z1, 0.5, False).var().item() - 0.5) < 0.02


def test_seeded_levels_are_reproducible_and_are_the_seeds_whole_code():
    codes = _code(seed=123)
    whole = _code(seed=11)  # what sample_codes draws with seed 11
    for level in range(SHAPE.num_levels):
        g, loc = seeded_level(codes, level, 11)
        assert torch.equal(g, whole.globals[level]) and torch.equal(loc, whole.locals[level])
        again = seeded_level(codes, level, 11)
        assert torch.equal(again[0], g) and torch.equal(again[1], loc)
    assert not torch.equal(seeded_level(codes, 0, 11)[0], seeded_level(codes, 1, 11)[0])  # per level
    assert not torch.equal(seeded_level(codes, 0, 11)[0], seeded_level(codes, 0, 12)[0])  # per seed


def test_redraw_level_replaces_both_parts_of_that_level_only():
    base = _code()
    redrawn = redraw_level(base, 2, 77)
    assert _same_level(redrawn, base, 0) and _same_level(redrawn, base, 1)
    g, loc = seeded_level(base, 2, 77)
    assert torch.equal(redrawn.globals[2], g) and torch.equal(redrawn.locals[2], loc)
    assert first_changed_level(base, redrawn) == 2


def test_first_changed_level():
    base = _code()
    assert first_changed_level(base, base.clone()) is None  # equal values, other tensors
    assert first_changed_level(None, base) == 0
    assert first_changed_level(_code(batch=2), base) == 0  # another batch size
    changed = base.with_level(2, local_code=base.locals[2] + 1).with_level(1, global_code=base.globals[1] * 2)
    assert first_changed_level(base, changed) == 1  # the coarsest of the changed levels
    only_fine = base.with_level(2, local_code=base.locals[2] + 1)
    assert first_changed_level(base, only_fine) == 2


def test_keep_levels_copies_levels_into_every_sample():
    samples, kept = _code(seed=1, batch=3), _code(seed=2)
    mixed = keep_levels(samples, kept, [0, 2])
    assert torch.equal(mixed.globals[0], kept.globals[0].expand(3, -1))
    assert torch.equal(mixed.locals[2], kept.locals[2].expand(3, -1, -1, -1))
    assert _same_level(mixed, samples, 1)
    assert keep_levels(samples, kept, []) is samples


def test_edits_refuse_values_that_cannot_make_a_code():
    for bad in (dict(global_blend=1.5), dict(local_blend=-0.1), dict(noise_scale=math.nan),
                dict(directions=(math.inf, 0, 0, 0)), dict(global_seed=-1)):
        with pytest.raises(EditError):
            LevelEdit(**bad)
    with pytest.raises(EditError, match="3 levels, not 4"):
        apply_edits(_code(), {3: LevelEdit(noise_scale=0.5)})
