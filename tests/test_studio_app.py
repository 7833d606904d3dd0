"""The studio app end to end over HTTP: launched on a free port, driven by gradio_client.

Every test uses its own client (its own session). Models are tiny 3-level checkpoints, so
"levels below the edited one are bit-identical" is a statement about three real levels.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import app
from chimle.checkpoint import load_codes
from chimle.cli import main as cli
from chimle.editing import region_weights
from chimle.runs import RunPaths, read_validation
from chimle.studio.handlers import StudioSettings
from chimle.studio.models import default_model, find_models, read_defaults, read_task_name
from chimle.studio.security import TrainingPolicy

from .studio_helpers import (free_port, one_torch_thread, photo, pixels, stop_leftover_runs, tiny_checkpoint,
                             write_photos)

TINY_RUN_FLAGS = ("--crop-size 64 --samples-per-level 4 4 --pool-size 4 --steps-per-pool 3 --batch-size 2 "
                  "--held-out-fraction 0 --max-side 160")
RUN_TIMEOUT = 240  # seconds: a tiny run takes ~20 s on two idle cores, far longer on busy ones
# Gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")
single_thread = pytest.fixture(scope="module")(one_torch_thread)

# Return positions of the endpoints (state outputs are not returned to clients).
STRIP = 1  # in the editor outputs: result, level strip, compare input, compare truth, status
START_RESULT = 2  # /set_input returns model info, notes, then the editor outputs


@pytest.fixture(scope="module")
def studio_app(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("studio")
    checkpoints, runs, data_root = root / "checkpoints", root / "runs", root / "data"
    checkpoints.mkdir()
    colour = tiny_checkpoint(checkpoints, "colourization", levels=3)
    jpeg = tiny_checkpoint(checkpoints, "jpeg", levels=3)
    write_photos(data_root / "photos")
    image_path = root / "input.png"
    photo("astronaut", (80, 64)).save(image_path)
    settings = StudioSettings(checkpoints=checkpoints, runs=runs, data_root=data_root, assets=root / "assets",
                              policy=TrainingPolicy(True, "enabled for tests"))
    demo = app.build_demo(settings)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options(settings))
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "colour": str(colour), "jpeg": str(jpeg),
               "image": str(image_path), "runs": runs, "root": root}
    finally:
        demo.close()
        stop_leftover_runs(runs)


def _client(studio_app) -> Client:
    return Client(studio_app["url"], verbose=False)


def _start(client: Client, studio_app, model: str = "colour", num: int = 4):
    return client.predict(studio_app[model], handle_file(studio_app["image"]), None, 256, num, 5, False,
                          api_name="/set_input")


def _strip(outputs, offset: int = 0) -> list[np.ndarray]:
    return [pixels(item["image"]) for item in outputs[offset + STRIP]]


def _edit(client: Client, level: int, directions=(0, 0, 0, 0), global_seed=0, global_blend=0.0,
          local_seed=0, local_blend=0.0, noise_scale=1.0):
    return client.predict(True, *directions, global_seed, global_blend, local_seed, local_blend, noise_scale,
                          api_name=f"/edit_level_{level}")


def _wait_for_run(client: Client, name: str, done, timeout: float = RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outputs = client.predict(name, api_name="/refresh_runs")
        if done(outputs[2]):
            return outputs
        time.sleep(1)
    raise AssertionError(f"run {name} did not get there in {timeout} s: {outputs[2]}")


def test_samples_then_level_edits_change_only_that_level_and_finer(studio_app):
    client = _client(studio_app)
    outputs = _start(client, studio_app)
    info, notes, gallery = outputs[0], outputs[1], outputs[-2]
    assert "colourization, 3 levels" in info
    assert "converted to grey" in notes
    assert len(gallery) == 4
    strip = _strip(outputs, START_RESULT)
    assert [s.shape[:2] for s in strip] == [(16, 20), (32, 40), (64, 80)]  # the whole 80x64 photo
    assert np.array_equal(pixels(outputs[START_RESULT]), strip[-1])

    # A global edit of level 2: level 1 bit-identical, levels 2 and 3 changed.
    edited = _edit(client, 2, directions=(2.5, 0, 0, 0))
    after = _strip(edited)
    assert np.array_equal(after[0], strip[0])
    assert not np.array_equal(after[1], strip[1]) and not np.array_equal(after[2], strip[2])
    assert edited[-1].startswith("Rendered levels 2–3")

    # A local edit of level 3: levels 1 and 2 bit-identical, level 3 changed.
    local = _edit(client, 3, local_seed=9, local_blend=0.7)
    final = _strip(local)
    assert np.array_equal(final[0], after[0]) and np.array_equal(final[1], after[1])
    assert not np.array_equal(final[2], after[2])
    assert local[-1].startswith("Rendered level 3 ")

    # Back to neutral on both levels: the picked sample, exactly.
    _edit(client, 2)
    neutral = _strip(_edit(client, 3, local_seed=9))
    assert all(np.array_equal(a, b) for a, b in zip(neutral, strip))


def test_more_samples_lock_and_level_buttons(studio_app):
    client = _client(studio_app)
    _start(client, studio_app)
    assert client.predict(True, api_name="/lock_level_1").startswith("Level 1 locked")
    gallery, message = client.predict(3, api_name="/more")
    assert len(gallery) == 7 and message.startswith("7 samples")
    before = _strip(client.predict(api_name="/reset_level_3"))
    randomised = _strip(client.predict(api_name="/randomise_level_3"))
    assert np.array_equal(randomised[0], before[0]) and np.array_equal(randomised[1], before[1])
    assert not np.array_equal(randomised[2], before[2])
    redrawn = _strip(client.predict(api_name="/randomise_unlocked"))
    assert np.array_equal(redrawn[0], before[0])  # level 1 is locked
    assert not np.array_equal(redrawn[1], before[1])


def test_save_then_load_the_code_reproduces_the_png_exactly(studio_app, tmp_path):
    client = _client(studio_app)
    _start(client, studio_app)
    edited = _edit(client, 1, directions=(0, 1.5, 0, 0), global_seed=3, global_blend=0.4)
    downloads, message = client.predict(api_name="/save")
    assert downloads["visible"] and "lossless PNG" in message
    png, code = sorted(downloads["value"], key=lambda p: Path(p).suffix)
    assert Path(png).suffix == ".png" and Path(code).suffix == ".safetensors"
    assert np.array_equal(pixels(png), pixels(edited[0]))
    client.predict(4, 123, False, api_name="/generate")  # something else becomes current
    loaded = client.predict(handle_file(code), api_name="/load_code")
    assert loaded[4] == "Loaded the saved code."
    assert np.array_equal(pixels(loaded[0]), pixels(png))
    # A code needs the model it was made with.
    other = _client(studio_app)
    _start(other, studio_app, model="jpeg")
    with pytest.raises(Exception, match="another model"):
        other.predict(handle_file(code), api_name="/load_code")


def _saved_code(client: Client):
    downloads, _ = client.predict(api_name="/save")
    return load_codes(next(p for p in downloads["value"] if p.endswith(".safetensors")))[0]


def test_reconstruction_streams_progress_and_stop_keeps_the_code(studio_app):
    client = _client(studio_app)
    _start(client, studio_app)
    client.predict(handle_file(studio_app["image"]), api_name="/set_reference")
    picked = _saved_code(client)
    job = client.submit(10, 0.05, api_name="/reconstruct")
    reports = [outputs[0] for outputs in job]
    assert [r.split(":")[0] for r in reports] == ["Step 0/10", "Step 5/10", "Step 10/10"]
    lpips = [float(r.split("LPIPS ")[1].split()[0]) for r in reports]
    assert lpips[-1] < lpips[0]
    found = _saved_code(client)
    assert not found.equal(picked)  # the found code became the current one

    job = client.submit(500, 0.05, api_name="/reconstruct")
    deadline = time.monotonic() + 120
    while len(job.outputs()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    job.cancel()
    time.sleep(2)
    seen = job.outputs()[-1][0]
    assert not seen.startswith("Step 500/500")
    # The stopped search's code so far is current: neither the start nor the search's end.
    stopped = _saved_code(client)
    assert not stopped.equal(found)
    assert client.predict(True, 0.5, 0, 0, 0, 0, 0, 0, 0, 1, api_name="/edit_level_1")[-1].startswith("Rendered")


def _stroke_layer(path: Path, rows: slice, cols: slice, size=(64, 80), colour=(200, 30, 30)) -> str:
    """A brush layer as the image editor sends it: RGBA, transparent except the stroke."""
    layer = np.zeros((*size, 4), np.uint8)
    layer[rows, cols] = (*colour, 255)
    Image.fromarray(layer).save(path)
    return str(path)


def test_region_redraw_and_colour_hints_over_http(studio_app, tmp_path):
    client = _client(studio_app)
    outputs = _start(client, studio_app)
    strip = _strip(outputs, START_RESULT)
    canvas, level, _ = client.predict(api_name="/paint_current")
    assert level["value"] == 2 and len(level["choices"]) == 3  # the finest of three levels
    assert np.array_equal(pixels(canvas["background"]), strip[-1])  # the current result to paint on
    before = _saved_code(client)

    # Re-draw level 3 under the top-left region: levels 1-2 bit-identical, the code only there.
    region = _stroke_layer(tmp_path / "region.png", slice(0, 16), slice(0, 24))
    value = {"background": handle_file(canvas["background"]), "layers": [handle_file(region)], "composite": None}
    redrawn = client.predict(value, 2, 0, 0.5, api_name="/redraw_region")
    after = _strip(redrawn)
    assert np.array_equal(after[0], strip[0]) and np.array_equal(after[1], strip[1])
    assert not np.array_equal(after[2], strip[2])
    assert "re-drawn with seed" in redrawn[-1] and "Rendered level 3 " in redrawn[-1]
    edited = _saved_code(client)  # Save saves the edited code
    painted = torch.zeros(64, 80)
    painted[:16, :24] = 1
    cells = region_weights(painted, edited.shape.local_sizes[2])[0, 0] == 0
    assert torch.equal(edited.locals[2][0][:, cells], before.locals[2][0][:, cells])
    assert not torch.equal(edited.locals[2], before.locals[2])
    assert all(torch.equal(a, b) for a, b in zip(edited.globals, before.globals))
    assert all(torch.equal(edited.locals[k], before.locals[k]) for k in (0, 1))
    # Blend the same region (nothing painted: the last one) toward seed 7.
    blended = client.predict(None, 2, 7, 0.5, api_name="/blend_region")
    assert "blended 50% toward seed 7" in blended[-1]

    # Colour hints: a red stroke; the masked distance falls, the found code is current and editable.
    stroke = _stroke_layer(tmp_path / "stroke.png", slice(30, 44), slice(20, 60))
    value = {"background": handle_file(canvas["background"]), "layers": [handle_file(stroke)], "composite": None}
    job = client.submit(value, 10, "ab", api_name="/colour_hints")
    reports = [outputs[-1] for outputs in job]
    assert reports[0].startswith("Trying 64 random codes and the current result")
    reports = reports[1:]
    assert [r.split(":")[0] for r in reports] == ["Step 0/10", "Step 5/10", "Step 10/10"]
    distances = [float(r.split("strokes ")[1].split()[0]) for r in reports]
    assert distances[-1] < distances[0]
    assert not _saved_code(client).equal(edited)
    assert client.predict(True, 0.5, 0, 0, 0, 0, 0, 0, 0, 1, api_name="/edit_level_1")[-1].startswith("Rendered")
    with pytest.raises(Exception, match="'lab' is not in the list of choices"):
        client.predict(value, 10, "lab", api_name="/colour_hints")
    with pytest.raises(Exception, match="expected an uploaded file"):
        client.predict({"background": None, "layers": ["/etc/passwd"], "composite": None}, 2, 0, 0.5,
                       api_name="/redraw_region")


def test_save_gives_the_result_at_the_photos_own_size(studio_app, tmp_path):
    client = _client(studio_app)
    large = tmp_path / "large.png"
    photo("coffee", (300, 240)).save(large)
    outputs = client.predict(studio_app["colour"], handle_file(str(large)), None, 128, 2, 5, False,
                             api_name="/set_input")
    assert pixels(outputs[START_RESULT]).shape == (102, 128, 3)  # the preview, at the working size
    assert "saved results are made at 300x240" in outputs[1]
    downloads, message = client.predict(api_name="/save")
    png = next(p for p in downloads["value"] if p.endswith(".png"))
    assert pixels(png).shape == (240, 300, 3) and "300×240, the photo's own size" in message


def test_a_batch_of_photos_and_a_zip_gives_a_zip_of_full_size_results(studio_app, tmp_path, capsys):
    client = _client(studio_app)
    folder = tmp_path / "upload"
    folder.mkdir()
    sizes = {"astronaut.png": (160, 160), "coffee.jpg": (200, 150), "chelsea.png": (180, 120)}
    for name, size in sizes.items():
        photo(name.split(".")[0], size).save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    (folder / "notes.png").write_text("not pixels")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(folder / "chelsea.png", "holiday/chelsea.png")
        handle.write(folder / "notes.png", "holiday/notes.png")
        handle.writestr("holiday/readme.txt", "skipped: not an image file")
    uploads = [handle_file(str(folder / name)) for name in ("astronaut.png", "coffee.jpg")] + [handle_file(str(archive))]
    result, status = client.predict(studio_app["jpeg"], uploads, 128, 9, api_name="/batch")
    assert status.startswith("3 done, 1 failed: each photo's first sample of seed 9, at its own size")
    assert "holiday/notes.png: not an image Pillow can read" in status
    with zipfile.ZipFile(result["value"]) as handle:
        names = sorted(handle.namelist())
        assert names == ["astronaut.png", "astronaut.safetensors", "coffee.png", "coffee.safetensors", "failed.txt",
                         "holiday/chelsea.png", "holiday/chelsea.safetensors"]
        handle.extractall(tmp_path / "results")
    for name, stem in (("astronaut.png", "astronaut"), ("coffee.jpg", "coffee"), ("chelsea.png", "holiday/chelsea")):
        width, height = sizes[name]
        assert pixels(tmp_path / "results" / f"{stem}.png").shape == (height, width, 3)
        # The first sample of seed 9, as the command line draws and renders it.
        assert cli(["sample", "--checkpoint", studio_app["jpeg"], "--input", str(folder / name), "--num", "1",
                    "--seed", "9", "--max-side", "128", "--out", str(tmp_path / "cli" / stem), "--no-progress"]) == 0
        assert (tmp_path / "cli" / stem / "sample-000.png").read_bytes() == \
            (tmp_path / "results" / f"{stem}.png").read_bytes()
    capsys.readouterr()
    with pytest.raises(Exception, match="upload photos"):
        client.predict(studio_app["jpeg"], [], 128, 9, api_name="/batch")


def test_unknown_model_paths_are_refused(studio_app):
    client = _client(studio_app)
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("/etc/passwd", None, None, 256, 4, 0, False, api_name="/set_input")


def test_train_a_tiny_run_to_the_end_open_it_and_fine_tune_it(studio_app):
    client = _client(studio_app)
    start_from, _, folders, data_help = client.predict("colourization", api_name="/training_form")
    assert folders["choices"] == [["photos", "photos"]] and folders["value"] == "photos" and data_help == ""
    assert start_from["value"] == "scratch"  # no model here that a preset builds: a new model
    started = client.predict("colourization", "tiny", 4, "tiny-run", "photos", None, TINY_RUN_FLAGS,
                             api_name="/start_training")
    assert started[0] == "Started run **tiny-run** on the folder photos."
    outputs = _wait_for_run(client, "tiny-run", lambda status: "finished" in status or "fail" in status)
    assert outputs[2].startswith("**tiny-run**: finished, step 4 of 4")
    assert outputs[3]["data"]  # the loss curve
    assert outputs[4] is not None  # the latest sample grid
    assert "studio:" in outputs[5] and "chimle train" in outputs[5]
    chosen = client.predict("tiny-run", api_name="/open_in_explore")
    model_path = str(studio_app["runs"] / "tiny-run" / "model.safetensors")
    assert chosen["value"] == model_path
    opened = client.predict(model_path, handle_file(studio_app["image"]), None, 256, 2, 0, False,
                            api_name="/set_input")
    assert "colourization, 2 levels" in opened[0] and "trained 4 steps" in opened[0]

    # Fine-tune it: Start from now offers tiny-run's model, with its preset fixed.
    start_from, preset, _, _ = client.predict("colourization", api_name="/training_form")
    assert start_from["choices"] == [["tiny-run (preset tiny, trained here)", model_path],
                                     ["a new model (from scratch)", "scratch"]]
    assert start_from["value"] == model_path and (preset["value"], preset["interactive"]) == ("tiny", False)
    started = client.predict("colourization", "tiny", 4, "tiny-fine", "photos", None, TINY_RUN_FLAGS, model_path,
                             api_name="/start_training")
    assert started[0] == "Started run **tiny-fine** from tiny-run on the folder photos."
    outputs = _wait_for_run(client, "tiny-fine", lambda status: "finished" in status or "fail" in status)
    assert outputs[2].startswith("**tiny-fine**: finished, step 4 of 4") and f"--init-from {model_path}" in outputs[5]
    runs = studio_app["runs"]
    before, after = read_validation(RunPaths(runs / "tiny-run")), read_validation(RunPaths(runs / "tiny-fine"))
    assert (after[0]["step"], after[0]["start_model"], after[-1]["step"]) == (0, model_path, 4)
    # Its starting figure is tiny-run's last: the same weights, crops and codes.
    assert after[0]["best_lpips"] == pytest.approx(before[-1]["best_lpips"], abs=1e-6)
    assert (f"Validation LPIPS {after[-1]['best_lpips']:.3f} at step 4 (started from tiny-run: "
            f"{after[0]['best_lpips']:.3f})") in outputs[2]
    lineage = json.loads((runs / "tiny-fine" / "config.json").read_text())["lineage_before"]
    assert [leg["steps"] for leg in lineage] == [4]


def test_stop_a_running_run(studio_app):
    client = _client(studio_app)
    client.predict("colourization", "tiny", 100_000, "stop-me", "photos", None, TINY_RUN_FLAGS + " --log-every 1",
                   api_name="/start_training")
    _wait_for_run(client, "stop-me", lambda status: "running, step" in status and "step 0 of" not in status)
    stopped = client.predict("stop-me", api_name="/stop_training")
    assert stopped[0].startswith("asked run stop-me to stop")
    outputs = _wait_for_run(client, "stop-me", lambda status: "running" not in status and "starting" not in status,
                            timeout=90)
    assert outputs[2].startswith("**stop-me**: stopped")  # a clean stop: the trainer saw SIGTERM
    with pytest.raises(Exception, match="not running"):
        client.predict("stop-me", api_name="/stop_training")
    # Resume launches `chimle train --resume` on the same folder; stop it again at once.
    resumed = client.predict("stop-me", 0, api_name="/resume_training")
    assert resumed[0] == "Resuming run **stop-me**."
    assert resumed[3].startswith("**stop-me**: starting")
    assert "--resume" in resumed[6]
    client.predict("stop-me", api_name="/stop_training")
    final = _wait_for_run(client, "stop-me", lambda status: "running" not in status and "starting" not in status,
                          timeout=90)
    assert final[2].startswith(("**stop-me**: stopped", "**stop-me**: dead"))


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_end(studio_app):
    client = _client(studio_app)
    client.predict("colourization", "tiny", 12, "resume-me", "photos", None, TINY_RUN_FLAGS + " --log-every 1",
                   api_name="/start_training")
    _wait_for_run(client, "resume-me", lambda status: "running, step" in status and "step 0 of" not in status)
    client.predict("resume-me", api_name="/stop_training")
    stopped = _wait_for_run(client, "resume-me", lambda status: "stopped" in status, timeout=90)
    step = int(stopped[2].split("step ")[1].split(" of")[0])
    assert 0 < step < 12
    client.predict("resume-me", 0, api_name="/resume_training")
    finished = _wait_for_run(client, "resume-me", lambda status: "finished" in status or "fail" in status)
    assert finished[2].startswith("**resume-me**: finished, step 12 of 12")
    assert (studio_app["runs"] / "resume-me" / "model.safetensors").is_file()


# -- handlers without a server ------------------------------------------------------------


def studio_without_server(tmp_path):
    """The studio's handlers over a tiny 3-level colourization model and one real photo."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    model_path = tiny_checkpoint(checkpoints, "colourization", levels=3)
    image_path = tmp_path / "input.png"
    photo("astronaut", (64, 64)).save(image_path)
    settings = StudioSettings(checkpoints=checkpoints, runs=tmp_path / "runs", data_root=tmp_path,
                              assets=tmp_path, policy=TrainingPolicy(False, "off"))
    return app.build_studio(settings)[1], model_path, image_path


def test_handlers_update_the_widgets_of_their_level_by_name(tmp_path, single_thread):
    studio, model_path, image_path = studio_without_server(tmp_path)
    page = studio.explore
    started = studio.start(None, str(model_path), str(image_path), None, 64, 2, 5, False)
    session = started[page.state]
    assert started[page.seed] == 5 and len(started[page.gallery]) == 2
    assert [started[level.tab]["visible"] for level in page.levels] == [True, True, True, False]
    assert started[page.levels[0].global_heading]["visible"]  # this model has a global code
    assert started[page.levels[1].lock] is False
    # An edit updates the result area only; Randomise also resets its own level's sliders.
    [edited] = studio.edit_level(2, session, True, 0, 0, 0, 0, 0, 0.0, 4, 0.5, 1.0)  # one update: no preview
    assert set(edited) == set(page.editor) and edited[page.status].startswith("Rendered level 3 ")
    randomised = studio.randomise_level(2, session)
    assert set(randomised) == set(page.editor) | set(page.levels[2].outputs)
    assert randomised[page.levels[2].local_blend] == 0.0  # back to neutral


def test_paint_handlers_update_the_paint_panel_and_the_edited_levels_widgets(tmp_path, single_thread):
    studio, model_path, image_path = studio_without_server(tmp_path)
    page = studio.explore
    session = studio.start(None, str(model_path), str(image_path), None, 64, 2, 5, False)[page.state]
    painted = studio.paint_current(session)
    assert set(painted) == set(page.paint.outputs)
    assert painted[page.paint.editor]["layers"] == [] and painted[page.paint.level]["value"] == 2
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[:16, :16] = (200, 30, 30, 255)
    value = {"background": None, "layers": [layer], "composite": None}
    # Each stroke is acknowledged; before a photo there is nothing to say.
    assert studio.painted(session, value) == {page.paint.status: "Painted 6% of the result, within 16 x 16 px: "
                                                                 "**Re-draw region** or **Find colours**."}
    assert studio.painted(None, value) == {page.paint.status: ""}
    redrawn = studio.redraw_region(False, session, value, 1, 0, 0.5)
    assert set(redrawn) == set(page.editor) | set(page.levels[1].outputs) | set(page.paint.outputs)
    assert redrawn[page.paint.level]["value"] == 1  # the chosen level stays chosen
    assert redrawn[page.status].startswith("Level 2's local code under the painted region re-drawn")
    updates = list(studio.colour_hints(session, value, 5, "rgb"))
    assert set(updates[0]) == {page.paint.status}  # at once, before the search
    assert [u[page.paint.status].split(":")[0] for u in updates[1:]] == ["Step 0/5", "Step 5/5"]
    # The editor shows the found result; the region level chosen before stays chosen (not sent).
    assert set(updates[-1]) == set(page.editor) | set(page.controls) | (set(page.paint.outputs) - {page.paint.level})
    assert updates[-1][page.paint.editor]["layers"] == []
    with pytest.raises(gr.Error, match="choose the level"):
        studio.redraw_region(False, session, value, None, 0, 0.5)
    # A newly picked result refreshes the paint panel, keeping the chosen level, and never fails.
    refreshed = studio.refresh_paint(session, 0)
    assert refreshed[page.paint.level]["value"] == 0 and refreshed[page.paint.editor]["layers"] == []
    # The editor's image is a preview file, written once: sending the same result again does not
    # rewrite it (Gradio's cache rewrote it in place while the page fetched it).
    shown = Path(refreshed[page.paint.editor]["background"])
    assert shown.parent == studio.downloads.previews(session).folder
    written = shown.stat()
    again = studio.refresh_paint(session, 0)[page.paint.editor]
    assert again["background"] == again["composite"] == str(shown)
    assert (shown.stat().st_ino, shown.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    with Image.open(shown) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(session.result_image().convert("RGB")))
    assert studio.refresh_paint(None, None)[page.paint.editor] is None


def test_training_is_refused_when_the_policy_says_so(tmp_path):
    write_photos(tmp_path / "data" / "photos")
    settings = StudioSettings(checkpoints=tmp_path, runs=tmp_path / "runs", data_root=tmp_path / "data",
                              assets=tmp_path, policy=TrainingPolicy(False, "disabled on Spaces"))
    _, studio = app.build_studio(settings)
    with pytest.raises(gr.Error, match="disabled on Spaces"):
        studio.start_training("colourization", "tiny", 4, "x", "photos", None, "")
    form = studio.training_form()
    assert form[studio.train.data_folder]["choices"] == [] and form[studio.train.data_help] == ""  # none listed
    refreshed = studio.refresh_runs(None)
    assert refreshed[studio.train.run_status] == "disabled on Spaces" and refreshed[studio.train.runs_table].empty
    assert not (tmp_path / "runs").exists()


def test_a_zip_of_photos_is_unpacked_into_the_run_or_refused_whole(tmp_path):
    photos = write_photos(tmp_path / "photos")
    settings = StudioSettings(checkpoints=tmp_path, runs=tmp_path / "runs", data_root=tmp_path / "data",
                              assets=tmp_path, policy=TrainingPolicy(True, "ok"))
    _, studio = app.build_studio(settings)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.write(photos[0], "ok.png")
        archive.write(photos[1], "../../escape.png")
    with pytest.raises(gr.Error, match="'..' is not allowed"):
        studio.start_training("colourization", "tiny", 4, "evil", None, str(evil), "")
    assert not (tmp_path / "runs" / "evil").exists() and not (tmp_path / "escape.png").exists()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        for path in photos:
            archive.write(path, f"holiday/{path.name}")
    try:
        outputs = studio.start_training("colourization", "tiny", 4, "zipped", None, str(good), TINY_RUN_FLAGS)
        assert outputs[studio.train.message] == "Started run **zipped** on 3 photos from the archive."
        assert sorted(p.name for p in (tmp_path / "runs" / "zipped" / "data" / "holiday").iterdir()) == \
            sorted(p.name for p in photos)
    finally:
        stop_leftover_runs(tmp_path / "runs")


def test_data_folders_outside_the_root_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    settings = StudioSettings(checkpoints=tmp_path, runs=tmp_path / "runs", data_root=tmp_path / "data",
                              assets=tmp_path, policy=TrainingPolicy(True, "ok"))
    _, studio = app.build_studio(settings)
    for folder in ("../elsewhere", str(tmp_path / "elsewhere")):
        with pytest.raises(gr.Error, match="'..'|outside the data root"):
            studio.start_training("colourization", "tiny", 4, "x", folder, None, "")
    assert not (tmp_path / "runs" / "x").exists()


def test_page_settings_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    defaults = app.settings_from_args(app.parse_args([]))
    assert defaults.checkpoints == app.ROOT / "checkpoints" and defaults.runs == app.ROOT / "runs"
    assert defaults.data_root == app.ROOT / "data" and defaults.policy.allowed
    public = app.settings_from_args(app.parse_args(["--host", "0.0.0.0"]))
    assert not public.policy.allowed
    assert app.settings_from_args(app.parse_args(["--host", "0.0.0.0", "--allow-training"])).policy.allowed
    monkeypatch.setenv("SPACE_ID", "someone/chimle")
    assert not app.settings_from_args(app.parse_args(["--allow-training"])).policy.allowed
    assert app.launch_options(defaults)["allowed_paths"] == ([] if not app.find_examples(defaults.assets)
                                                              else [str(defaults.assets)])
    assert app.MAX_LEVELS >= 3


def test_examples_appear_only_when_assets_hold_photos(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    settings = StudioSettings(checkpoints=tmp_path, runs=tmp_path / "runs", data_root=tmp_path, assets=assets,
                              policy=TrainingPolicy(False, "off"))
    assert app.launch_options(settings)["allowed_paths"] == []
    without = app.build_demo(settings)
    assert not any(isinstance(block, gr.Dataset) for block in without.blocks.values())
    photo("coffee", (64, 48)).save(assets / "coffee.png")
    (assets / "notes.txt").write_text("not a photo")
    assert app.find_examples(assets) == [str(assets / "coffee.png")]
    assert app.launch_options(settings)["allowed_paths"] == [str(assets)]
    with_examples = app.build_demo(settings)
    assert any(isinstance(block, gr.Dataset) for block in with_examples.blocks.values())


@pytest.fixture(scope="module")
def example_app(tmp_path_factory, single_thread):
    """An app whose assets/ list examples per task and whose default.json names the second colour model."""
    root = tmp_path_factory.mktemp("examples")
    checkpoints, assets = root / "checkpoints", root / "assets"
    checkpoints.mkdir()
    assets.mkdir()
    first = tiny_checkpoint(checkpoints, "colourization", levels=3, name="a-colour")
    best = tiny_checkpoint(checkpoints, "colourization", levels=3, seed=1, name="b-colour")
    jpeg = tiny_checkpoint(checkpoints, "jpeg", levels=3, name="c-jpeg")
    photo("coffee", (96, 64)).convert("L").convert("RGB").save(assets / "coffee-grey.png")
    photo("chelsea", (96, 64)).save(assets / "chelsea-q5.jpg", quality=5)
    (assets / "examples.json").write_text(json.dumps({"examples": {"colourization": ["coffee-grey.png"],
                                                                   "jpeg": ["chelsea-q5.jpg"]}}))
    (checkpoints / "default.json").write_text(json.dumps({"defaults": {"colourization": "b-colour"}}))
    settings = StudioSettings(checkpoints=checkpoints, runs=root / "runs", data_root=root, assets=assets,
                              policy=TrainingPolicy(False, "off"))
    demo = app.build_demo(settings)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options(settings))
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "first": str(first), "best": str(best), "jpeg": str(jpeg),
               "assets": assets}
    finally:
        demo.close()


def test_the_page_opens_with_the_default_model_and_its_tasks_examples(example_app):
    client = Client(example_app["url"], verbose=False)
    chosen, _ = client.predict(api_name="/load_page")
    assert chosen["value"] == example_app["best"]  # the default, not the first in the list
    assert [value for _, value in chosen["choices"]][0] == example_app["first"]

    def shown(model: str) -> list[str]:
        update = client.predict(model, api_name="/examples")
        return [Path(sample[0]).name for sample in update["samples"]] if update["visible"] else []

    assert shown(example_app["best"]) == ["coffee-grey.png"]
    assert shown(example_app["jpeg"]) == ["chelsea-q5.jpg"]  # another model, its task's examples
    assert shown(example_app["first"]) == ["coffee-grey.png"]
    # Clicking the example loads that photo into the input.
    loaded = client.predict(example_app["jpeg"], 0, api_name="/load_example")
    assert np.array_equal(pixels(loaded), pixels(example_app["assets"] / "chelsea-q5.jpg"))
    with pytest.raises(Exception, match="no such example"):
        client.predict(example_app["jpeg"], 1, api_name="/load_example")


def test_the_shipped_default_is_the_model_the_readme_names(tmp_path):
    checkpoints = app.ROOT / "checkpoints"
    defaults = read_defaults(checkpoints)
    readme = (checkpoints / "README.md").read_text()
    assert f"The studio opens with `{defaults['colourization']}`" in readme
    for task, name in defaults.items():
        assert read_task_name(checkpoints / f"{name}.safetensors") == task
        assert f"`{name}`" in readme
    opened = default_model(find_models(checkpoints, tmp_path / "no-runs"), checkpoints)
    assert opened.name == defaults["colourization"] and opened.task == "colourization"


def test_no_file_outside_the_apps_folders_is_served(studio_app):
    """`/gradio_api/file=` serves uploads and Gradio's cache, never the server's other files."""
    import httpx

    base = studio_app["url"].rstrip("/")
    with open(studio_app["image"], "rb") as handle:
        uploaded = httpx.post(f"{base}/gradio_api/upload", files={"files": ("input.png", handle, "image/png")})
    uploaded.raise_for_status()
    # Control: what a client uploaded comes back, so a refusal below is not a broken route.
    assert httpx.get(f"{base}/gradio_api/file={uploaded.json()[0]}").status_code == 200
    secrets = [studio_app["colour"], studio_app["image"], str(Path(app.__file__).resolve()), "/etc/passwd",
               str(studio_app["root"] / "checkpoints" / ".." / "input.png")]
    for path in secrets:
        response = httpx.get(f"{base}/gradio_api/file={path}")
        assert response.status_code in (403, 404), f"{path} was served ({response.status_code})"


def test_a_slow_edit_shows_its_coarse_level_first_then_the_result(tmp_path, single_thread):
    studio, model_path, image_path = studio_without_server(tmp_path)
    page = studio.explore
    session = studio.start(None, str(model_path), str(image_path), None, 64, 2, 5, False)[page.state]
    session.full_render_seconds = 1.0  # as if the last full render had been slow
    coarse, final = studio.edit_level(0, session, True, 2.5, 0, 0, 0, 0, 0.0, 0, 0.0, 1.0)
    assert set(coarse) == {page.result, page.status} and "refining" in coarse[page.status]
    assert set(final) == set(page.editor) and final[page.status].startswith("Rendered levels 1–3")
    # Slider edits skip Gradio's processing (chimle/studio/direct.py): they send its payloads.
    assert final[page.state] is session and final[page.compare_truth] == {"__type__": "update", "value": None,
                                                                          "visible": False}
    preview, result = pixels(coarse[page.result]["path"]), pixels(final[page.result]["path"])
    assert preview.shape == result.shape == (64, 64, 3)
    # The preview is the edited level's colours on the photo's own lightness, not the result.
    assert not np.array_equal(preview, result)
    grey = lambda image: image.astype(float) @ [0.299, 0.587, 0.114]  # noqa: E731
    assert np.abs(grey(preview) - grey(result)).mean() < 8
    # The result is the one an edit without a preview gives, and each image is one file for every widget.
    shown = [final[page.compare_input][1], final[page.result], final[page.level_strip][-1]["image"]]
    assert len({payload["path"] for payload in shown}) == 1
    session.full_render_seconds = 0.0
    [again] = studio.edit_level(0, session, True, 0, 0, 0, 0, 0, 0.0, 0, 0.0, 1.0)
    [redone] = studio.edit_level(0, session, True, 2.5, 0, 0, 0, 0, 0.0, 0, 0.0, 1.0)
    assert np.array_equal(pixels(redone[page.result]["path"]), result)


def test_pick_sample_makes_that_sample_current_and_refuses_other_numbers(tmp_path, single_thread):
    studio, model_path, image_path = studio_without_server(tmp_path)
    page = studio.explore
    session = studio.start(None, str(model_path), str(image_path), None, 64, 3, 5, False)[page.state]
    picked = studio.pick_sample(session, 2)
    assert session.current.equal(session.samples[2]) and picked[page.status] == "Sample #3 is the current result."
    for wrong in (3, -1, 1.5, None):
        with pytest.raises(gr.Error):
            studio.pick_sample(session, wrong)
    assert session.current.equal(session.samples[2])  # a refused number changes nothing
