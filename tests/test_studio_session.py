"""The studio's per-user session: samples, level edits, locks, save/load, IvO (no server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chimle.editing import EditError, LevelEdit, apply_edits, first_changed_level
from chimle.ivo import IvOConfig
from chimle.pipeline import sample_codes
from chimle.studio.models import ModelCache
from chimle.studio import session as session_module
from chimle.studio.session import MAX_SAMPLES, RenderCaches, StudioError, StudioSession, render_bytes

from .studio_helpers import one_torch_thread, photo, pixels, tiny_checkpoint

single_thread = pytest.fixture(scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def models(tmp_path_factory, single_thread):
    folder = tmp_path_factory.mktemp("checkpoints")
    cache = ModelCache(capacity=4)
    return {"colour": cache.get(tiny_checkpoint(folder, "colourization")),
            "jpeg": cache.get(tiny_checkpoint(folder, "jpeg"))}


@pytest.fixture
def session(models):
    """A session with a 64x64 grey-to-colour input and 4 samples drawn with seed 3."""
    session = StudioSession()
    session.set_input(models["colour"], photo("astronaut", (64, 64)), 64)
    session.draw_samples(models["colour"], 4, seed=3)
    return session


def _images(session):
    return [image.clone() for image in session.level_images]


def test_first_batch_is_what_the_cli_draws(session, models):
    expected = sample_codes(models["colour"].net, session.prepared, 4, 3)
    assert session.samples.equal(expected)
    assert session.current.equal(expected[0])
    assert len(session.sample_images) == 4


def test_notes_say_grey_and_resize_and_nothing_is_cropped(models):
    session = StudioSession()
    notes = session.set_input(models["colour"], photo("chelsea", (100, 80)), 64)
    assert any("grey" in note for note in notes)
    assert any("resized from 100x80 to 64x51" in note for note in notes)
    session.draw_samples(models["colour"], 1, seed=0)
    assert session.result_image().size == (64, 51)  # the whole photo, padding cropped away
    assert [image.shape[-2:] for image in session.level_images] == [(13, 16), (26, 32), (51, 64)]


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("part", ["global", "local"])
def test_an_edit_rerenders_only_the_edited_level_and_finer(session, models, level, part):
    before = _images(session)
    edit = LevelEdit(directions=(2.5, 0, 0, 0)) if part == "global" else LevelEdit(local_seed=7, local_blend=0.8)
    report = session.edit_level(models["colour"], level, edit)
    assert report.start_level == level
    for index, (old, new) in enumerate(zip(before, session.level_images)):
        if index < level:
            assert torch.equal(old, new), f"level {index + 1} changed after editing level {level + 1}"
        elif index == level:
            assert (old - new).abs().max() > 1e-2, f"the edited level {index + 1} barely changed"
        else:
            # Finer levels see the edit through the fed-forward features (scaled by 0.1 in
            # an untrained tiny model), so the change can be small, but it is there.
            assert not torch.equal(old, new), f"level {index + 1} did not change"
    # Only the edited level's code (and only the edited part) moved.
    assert first_changed_level(session.origin, session.current) == level
    changed_global = not torch.equal(session.current.globals[level], session.origin.globals[level])
    changed_local = not torch.equal(session.current.locals[level], session.origin.locals[level])
    assert (changed_global, changed_local) == ((True, False) if part == "global" else (False, True))


def test_the_incremental_render_equals_a_full_render(session, models):
    session.edit_level(models["colour"], 1, LevelEdit(global_seed=5, global_blend=0.5, noise_scale=0.3))
    incremental = _images(session)
    session.cache = None  # force every level to be recomputed
    session._render_current(models["colour"])
    assert all(torch.equal(a, b) for a, b in zip(incremental, session.level_images))


def test_returning_the_sliders_to_neutral_gives_back_the_exact_code(session, models):
    before = _images(session)
    session.edit_level(models["colour"], 1, LevelEdit(directions=(1, -2, 0, 0.5), global_blend=0.3,
                                                      local_blend=0.6, noise_scale=1.5))
    report = session.edit_level(models["colour"], 1, LevelEdit(global_seed=99, local_seed=4))
    assert session.current.equal(session.origin)
    assert report.start_level == 1
    assert all(torch.equal(a, b) for a, b in zip(before, session.level_images))
    # A seed change with blend 0 changes nothing, and nothing is rendered.
    assert session.edit_level(models["colour"], 1, LevelEdit(global_seed=5)).start_level is None


def test_the_current_code_is_the_base_with_every_levels_sliders(session, models):
    model = models["colour"]
    blended, moved = LevelEdit(global_seed=5, global_blend=0.5), LevelEdit(directions=(1.0, 0, 0, 0))
    session.edit_level(model, 0, blended)
    # Level 1's edit is recomputed with every edit, to the same bits: level 3's edit renders level 3 only.
    assert session.edit_level(model, 2, LevelEdit(noise_scale=0.5)).start_level == 2
    # Switching "renormalise" off applies to the blend of level 1 too, not only to the level now edited.
    session.edit_level(model, 2, moved, renormalise=False)
    assert session.current.equal(apply_edits(session.origin, {0: blended, 2: moved}, model.directions,
                                             renormalise=False))
    assert session.last_render.start_level == 0


def test_locked_levels_are_kept_in_new_samples(session, models):
    session.edit_level(models["colour"], 0, LevelEdit(directions=(1.5, 0, 0, 0)))
    locked_global, locked_local = session.current.globals[0], session.current.locals[0]
    session.set_locked(0, True)
    session.draw_samples(models["colour"], 3, more=True)
    new = session.samples[4:]
    assert torch.equal(new.globals[0], locked_global.expand(3, -1))
    assert torch.equal(new.locals[0], locked_local.expand(3, -1, -1, -1))
    assert not torch.equal(new.globals[1][0], new.globals[1][1])  # unlocked levels are fresh
    # A new gallery keeps the lock too, and its first sample becomes current.
    session.draw_samples(models["colour"], 2, seed=8)
    assert torch.equal(session.current.globals[0], locked_global)
    assert session.locked == [True, False, False]


def test_randomise_and_reset_a_level(session, models):
    origin = session.current
    session.randomise_level(models["colour"], 2, seed=1234)
    assert first_changed_level(origin, session.current) == 2
    assert not torch.equal(session.current.locals[2], origin.locals[2])
    session.reset_level(models["colour"], 2)
    assert session.current.equal(origin)


def test_redraw_unlocked_levels_keeps_locked_ones(session, models):
    origin = session.current
    session.set_locked(0, True)
    session.randomise_unlocked(models["colour"])
    assert torch.equal(session.current.globals[0], origin.globals[0])
    assert torch.equal(session.current.locals[0], origin.locals[0])
    assert not torch.equal(session.current.globals[1], origin.globals[1])
    session.set_locked(1, True)
    session.set_locked(2, True)
    with pytest.raises(StudioError, match="every level is locked"):
        session.randomise_unlocked(models["colour"])


def test_saved_png_and_code_reload_bit_exactly(session, models, tmp_path):
    session.edit_level(models["colour"], 1, LevelEdit(directions=(0.7, 0, -1.2, 0), local_blend=0.4, local_seed=2))
    image_path, codes_path = session.export(models["colour"], tmp_path, "result")
    assert np.array_equal(pixels(image_path), np.asarray(session.result_image()))
    fresh = StudioSession()
    fresh.set_input(models["colour"], photo("astronaut", (64, 64)), 64)
    assert fresh.load_code_file(models["colour"], codes_path) == 1
    assert fresh.current.equal(session.current)
    assert np.array_equal(np.asarray(fresh.result_image()), pixels(image_path))


@pytest.mark.parametrize("task", ["colour", "jpeg"])
def test_save_gives_the_photos_own_size_and_its_code_gives_it_again(models, tmp_path, task):
    model, image = models[task], photo("chelsea", (150, 100))
    session = StudioSession()
    assert any("saved results are made at 150x100" in note for note in session.set_input(model, image, 64))
    session.draw_samples(model, 2, seed=5)
    session.edit_level(model, 1, LevelEdit(directions=(1.0, 0, 0, 0), local_seed=3, local_blend=0.5))
    assert session.result_image().size == (64, 43)  # the gallery and sliders work at the working size
    fractions = []
    image_path, codes_path = session.export(model, tmp_path / "first", "result", fractions.append)
    assert pixels(image_path).shape == (100, 150, 3) and fractions[-1] == 1.0
    fresh = StudioSession()
    fresh.set_input(model, image, 64)
    fresh.load_code_file(model, codes_path)
    again, _ = fresh.export(model, tmp_path / "again", "result")
    assert again.read_bytes() == image_path.read_bytes()


def test_a_code_for_another_model_or_size_is_refused(session, models, tmp_path):
    _, codes_path = session.export(models["colour"], tmp_path, "result")
    other_model = StudioSession()
    other_model.set_input(models["jpeg"], photo("astronaut", (64, 64)), 64)
    with pytest.raises(StudioError, match="another model"):
        other_model.load_code_file(models["jpeg"], codes_path)
    other_size = StudioSession()
    other_size.set_input(models["colour"], photo("astronaut", (128, 128)), 128)
    with pytest.raises(StudioError, match="same image and working size"):
        other_size.load_code_file(models["colour"], codes_path)


def test_a_file_of_several_codes_fills_the_gallery(session, models, tmp_path):
    from chimle.checkpoint import save_codes

    path = tmp_path / "many.safetensors"
    save_codes(path, session.samples, models["colour"].fingerprint)
    fresh = StudioSession()
    fresh.set_input(models["colour"], photo("astronaut", (64, 64)), 64)
    assert fresh.load_code_file(models["colour"], path) == 4
    assert fresh.samples.equal(session.samples) and fresh.current.equal(session.samples[0])


def test_ivo_moves_toward_the_reference_and_stopping_keeps_the_code(session, models, lpips_alex):
    model = models["colour"]
    session.set_reference(photo("astronaut", (64, 64)))
    start = session.current
    updates = list(session.reconstruct(model, lpips_alex, IvOConfig(steps=10, report_every=5)))
    assert [u.step for u in updates] == [0, 5, 10]
    assert updates[-1].lpips < updates[0].lpips
    assert not session.current.equal(start)
    assert session.current.equal(session.origin)  # the found code is the new starting point
    # Stop after the first report: the code seen at that report stays current and rendered.
    running = session.reconstruct(model, lpips_alex, IvOConfig(steps=50, report_every=5))
    next(running)
    next(running)
    seen = session.current
    running.close()
    assert session.current.equal(seen)
    assert session.cache_codes.equal(seen)
    assert all(not p.requires_grad for p in model.net.parameters())


def test_operations_need_their_inputs(models):
    session = StudioSession()
    with pytest.raises(StudioError, match="upload an image"):
        session.draw_samples(models["colour"], 2)
    session.set_input(models["colour"], photo(), 64)
    with pytest.raises(StudioError, match="generate samples"):
        session.edit_level(models["colour"], 0, LevelEdit())
    with pytest.raises(StudioError, match="reference"):
        next(session.reconstruct(models["colour"], None, IvOConfig(steps=1)))
    session.draw_samples(models["colour"], 1, seed=0)
    with pytest.raises(StudioError, match="3 levels"):
        session.edit_level(models["colour"], 3, LevelEdit())
    with pytest.raises(StudioError, match="at most"):
        session.draw_samples(models["colour"], MAX_SAMPLES + 1)
    with pytest.raises(EditError, match="blends"):
        LevelEdit(global_blend=1.5)


def test_switching_models_drops_codes_and_keeps_the_photo(session, models):
    session.set_model(models["jpeg"])
    assert session.current is None and session.samples is None
    assert session.prepared.x.shape[1] == 3  # re-prepared for the RGB-input model
    session.draw_samples(models["jpeg"], 2, seed=0)
    assert session.result_image().size == (64, 64)


def test_the_input_preview_is_the_input_of_the_current_photo_and_model(models):
    session = StudioSession()
    session.set_input(models["colour"], photo("astronaut", (64, 64)), 64)
    grey = session.input_preview(models["colour"])
    assert session.input_preview(models["colour"]) is grey  # an edit does not compute it again
    assert np.asarray(grey, dtype=float).std(axis=2).max() < 1  # grey, to rounding: colourization's input
    session.set_input(models["colour"], photo("chelsea", (64, 64)), 64)
    assert not np.array_equal(np.asarray(session.input_preview(models["colour"])), np.asarray(grey))
    session.set_model(models["jpeg"])
    assert np.asarray(session.input_preview(models["jpeg"]), dtype=float).std(axis=2).max() > 10  # the JPEG's colours


def test_reference_is_matched_to_the_result_size(models):
    session = StudioSession()
    session.set_input(models["colour"], photo("chelsea", (100, 80)), 64)
    session.set_reference(photo("chelsea", (300, 240)))
    assert session.reference_preview.size == (64, 51)
    assert tuple(session.reference.shape[-2:]) == session.prepared.output_size


def test_render_caches_stay_within_budget_and_a_dropped_cache_changes_no_pixel(models, monkeypatch):
    model = models["colour"]

    def opened(seed: int) -> StudioSession:
        user = StudioSession()
        user.set_input(model, photo("astronaut", (64, 64)), 64)
        user.draw_samples(model, 2, seed=seed)
        return user

    one_cache = render_bytes(opened(0).cache)
    caches = RenderCaches(budget_bytes=2 * one_cache + one_cache // 2)  # room for two
    monkeypatch.setattr(session_module, "RENDER_CACHES", caches)
    first, second, third = opened(1), opened(2), opened(3)
    assert first.cache is None  # the least recently used went
    assert second.cache is not None and third.cache is not None
    assert caches.total_bytes() == 2 * one_cache
    edit = LevelEdit(local_seed=5, local_blend=0.6)
    assert second.edit_level(model, 2, edit).start_level == 2  # still cached: only the last level
    assert first.edit_level(model, 2, edit).start_level == 0  # dropped: every level again
    assert third.cache is None and caches.total_bytes() == 2 * one_cache  # now the third went

    monkeypatch.setattr(session_module, "RENDER_CACHES", RenderCaches(budget_bytes=2 ** 40))
    reference = opened(1)
    reference.edit_level(model, 2, edit)
    assert all(torch.equal(a, b) for a, b in zip(first.level_images, reference.level_images))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_a_coarse_preview_first_gives_the_same_result_bit_for_bit(models, level):
    edit = LevelEdit(directions=(2.5, 0, 0, 0), local_seed=7, local_blend=0.8)
    one_call, two_calls = (_fresh_session(models) for _ in range(2))
    one_call.edit_level(models["colour"], level, edit)
    shown = []
    report = two_calls.edit_level(models["colour"], level, edit, on_coarse=shown.append)
    assert report.start_level == level
    assert all(torch.equal(a, b) for a, b in zip(one_call.level_images, two_calls.level_images))
    # One preview, at the result's size, unless the finest level alone changed.
    assert [tuple(image.shape) for image in shown] == ([] if level == 2 else [(1, 3, 64, 64)])
    if shown:
        assert not torch.equal(shown[0], two_calls.level_images[-1])


def _fresh_session(models):
    session = StudioSession()
    session.set_input(models["colour"], photo("astronaut", (64, 64)), 64)
    session.draw_samples(models["colour"], 4, seed=3)
    return session


def test_only_a_slow_full_render_streams_and_only_for_levels_with_finer_ones(session, models):
    assert session.full_render_seconds > 0  # measured when the first sample became the current code
    session.full_render_seconds = session_module.COARSE_FIRST_ABOVE_SECONDS / 2
    assert not any(session.streams_coarse_first(level) for level in range(3))
    session.full_render_seconds = session_module.COARSE_FIRST_ABOVE_SECONDS * 2
    assert [session.streams_coarse_first(level) for level in range(3)] == [True, True, False]


def test_the_semantic_maps_are_computed_once_per_photo_and_change_no_pixel(tmp_path, monkeypatch):
    """The prior's maps depend on the photo alone: the gallery and every edit reuse one
    computation, and give the pixels of renders that compute them afresh."""
    from chimle.checkpoint import save_checkpoint
    from chimle.config import preset
    from chimle.model import TowerImplicitModel
    from chimle.pipeline import render
    from chimle.tasks import make_task

    task = make_task("colourization")
    torch.manual_seed(0)
    path = tmp_path / "prior.safetensors"
    save_checkpoint(path, TowerImplicitModel(preset("tiny", 1, 2, semantic_encoder="alexnet")).eval(), task)
    model = ModelCache(capacity=1).get(path)
    calls = []
    encode = model.net.encode
    monkeypatch.setattr(model.net, "encode", lambda *args: calls.append(args[0].shape) or encode(*args))
    session = StudioSession()
    session.set_input(model, photo("astronaut", (64, 48)), 64)
    session.draw_samples(model, 6, seed=1)  # two chunks of the gallery, then the first sample's levels
    for level in range(model.num_levels):
        session.edit_level(model, level, LevelEdit(global_seed=level + 2, global_blend=0.5))
    assert len(calls) == 1 and calls[0][0] == 1
    afresh, _ = render(model.net, model.task, session.prepared, session.current, as_result=True)
    assert all(torch.equal(a, b) for a, b in zip(afresh, session.level_images))
    gallery = session_module.gallery_images(model, session.prepared, session.samples)  # maps computed again
    assert [np.asarray(image).tobytes() for image in gallery] == [np.asarray(image).tobytes()
                                                                  for image in session.sample_images]
    calls.clear()
    session.set_input(model, photo("coffee", (64, 48)), 64)  # a new photo: its own maps
    session.draw_samples(model, 1, seed=1)
    assert len(calls) == 1
