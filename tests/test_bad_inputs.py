"""Bad input through the command line and through the running studio (docs/bad-inputs.md).

A refused case must give one message that names the problem: on the command line one line
`error: ...` and exit status 2, in the studio a gr.Error (never Gradio's bare "Error"), and
the studio must answer a normal request afterwards. An odd file that is accepted must give
exactly what its plain equivalent gives: the same sample from a 16-bit PNG as from its
8-bit version, from an EXIF-rotated JPEG as from the rotated pixels, from a GIF as from its
first frame. Files are real images written with Pillow and numpy; nothing of ours is mocked.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from chimle.checkpoint import load_checkpoint, model_fingerprint, save_codes
from chimle.cli import main
from chimle.codes import LatentCodes
from chimle.editing import EditError, LevelEdit
from chimle.studio.handlers import StudioSettings
from chimle.studio.security import TrainingPolicy

from .studio_helpers import free_port, one_torch_thread, photo, pixels, tiny_checkpoint
from .test_images import png_bytes

REPO = Path(__file__).resolve().parents[1]
GENERIC = "has not enabled verbose error reporting"  # Gradio's text for an unexplained failure
START_RESULT = 2  # /set_input returns model info, notes, then the result image
PHOTO_SIZE = (80, 64)  # the tiny models need sides that are multiples of 8: no padding
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")
single_thread = pytest.fixture(scope="module")(one_torch_thread)

# name, what the CLI says (after "error: <path>: "), what the studio says (max side 256).
REFUSED_IMAGES = [
    ("empty.png", "empty file", "Your photo (empty.png): empty file"),
    ("notes.png", "not an image Pillow can read", "Your photo (notes.png): not an image Pillow can read"),
    ("cut.jpg", "file is truncated (image file is truncated", "the uploaded image: file is truncated"),
    ("dot.png", "the image is 1x1; each side needs at least 16 pixels",
     "the image is 1x1; each side needs at least 16 pixels"),
    ("bomb.png", "image is too large (400,000,000 pixels; the limit is 40,000,000 pixels); refusing to decode it",
     "Your photo (bomb.png): image is too large (400,000,000 pixels; the limit is 16,000,000 pixels)"),
    ("wide.png", "the image is 4000x8; each side needs at least 16 pixels",
     "the image is 4000x8; each side needs at least 16 pixels"),
    ("elongated.png", "the image is 3000x30, too elongated: fitted to the working size it would be 512x5",
     "the image is 3000x30, too elongated: fitted to the working size it would be 256x3"),
]
# Odd files that are read, each beside a plain RGB PNG of the pixels it must give.
ACCEPTED_IMAGES = ["sixteen_bit.png", "rgba.png", "palette.png", "cmyk.jpg", "turned.jpg", "animated.gif"]


# -- files ------------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def write_bad_images(folder: Path) -> dict[str, Path]:
    """Every image case as a file; accepted ones also as `plain-<name>.png`, the RGB pixels they stand for."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    base = photo("astronaut", PHOTO_SIZE)

    files["empty.png"] = folder / "empty.png"
    files["empty.png"].write_bytes(b"")
    files["notes.png"] = folder / "notes.png"
    files["notes.png"].write_text("these are not pixels\n" * 20)
    whole = io.BytesIO()
    photo("coffee", (128, 96)).save(whole, format="JPEG", quality=90)
    files["cut.jpg"] = folder / "cut.jpg"
    files["cut.jpg"].write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    files["dot.png"] = _save(Image.new("RGB", (1, 1), (200, 30, 30)), folder / "dot.png")
    files["bomb.png"] = folder / "bomb.png"  # 20000x20000 declared, about 50 KB on disk
    files["bomb.png"].write_bytes(png_bytes(20_000, 20_000))
    files["wide.png"] = _save(photo("coffee", (4000, 8)), folder / "wide.png")
    files["elongated.png"] = _save(photo("coffee", (3000, 30)), folder / "elongated.png")
    files["colour.png"] = _save(base, folder / "colour.png")

    plain: dict[str, Image.Image] = {}
    grey = np.asarray(base.convert("L"))
    files["sixteen_bit.png"] = _save(Image.fromarray(grey.astype(np.uint16) * 257), folder / "sixteen_bit.png")
    plain["sixteen_bit.png"] = Image.fromarray(grey).convert("RGB")

    rgb = np.asarray(base)
    alpha = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    alpha[:, : PHOTO_SIZE[0] // 2] = 0  # the left half transparent: it must become white
    files["rgba.png"] = _save(Image.fromarray(np.dstack([rgb, alpha])), folder / "rgba.png")
    on_white = rgb.copy()
    on_white[alpha == 0] = 255
    plain["rgba.png"] = Image.fromarray(on_white)

    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    files["palette.png"] = _save(palette, folder / "palette.png")
    plain["palette.png"] = palette.convert("RGB")

    files["cmyk.jpg"] = _save(base.convert("CMYK"), folder / "cmyk.jpg", quality=95)
    with Image.open(files["cmyk.jpg"]) as cmyk:
        assert cmyk.mode == "CMYK"
        plain["cmyk.jpg"] = cmyk.convert("RGB")

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise
    files["turned.jpg"] = _save(base, folder / "turned.jpg", quality=95, exif=exif.tobytes())
    with Image.open(files["turned.jpg"]) as turned:
        plain["turned.jpg"] = turned.convert("RGB").transpose(Image.Transpose.ROTATE_270)  # clockwise

    frames = [photo(name, PHOTO_SIZE) for name in ("chelsea", "coffee", "astronaut")]
    files["animated.gif"] = _save(frames[0], folder / "animated.gif", save_all=True, append_images=frames[1:],
                                  duration=100, loop=0)
    with Image.open(files["animated.gif"]) as animation:
        assert animation.n_frames == 3
        plain["animated.gif"] = animation.convert("RGB")  # frame 0

    for name, image in plain.items():
        files[f"plain-{name}"] = _save(image, folder / f"plain-{name}.png")
    return files


def write_bad_codes(folder: Path, colour: Path, jpeg: Path) -> dict[str, Path]:
    """Code files that must be refused by `render` and by the studio's Load (for the 80x64 photo)."""
    folder.mkdir(parents=True, exist_ok=True)
    colour_model, jpeg_model = load_checkpoint(colour), load_checkpoint(jpeg)
    fits = colour_model.net.code_shape((PHOTO_SIZE[1], PHOTO_SIZE[0]))
    generator = torch.Generator().manual_seed(0)
    files = {}

    files["good"] = folder / "good.safetensors"
    save_codes(files["good"], LatentCodes.sample(fits, 1, generator),
               model_fingerprint(colour_model.net, colour_model.task))
    files["garbage"] = folder / "garbage.safetensors"
    files["garbage"].write_bytes(b"\x07not a safetensors header" * 10)
    files["empty"] = folder / "empty.safetensors"
    files["empty"].write_bytes(b"")
    files["truncated"] = folder / "truncated.safetensors"
    files["truncated"].write_bytes(files["good"].read_bytes()[:-40])
    nan = LatentCodes.sample(fits, 1, generator)
    nan.globals[0][0, 0] = math.nan
    files["nan"] = folder / "nan.safetensors"
    save_codes(files["nan"], nan, model_fingerprint(colour_model.net, colour_model.task))
    files["pickle"] = folder / "pickle.safetensors"
    torch.save(LatentCodes.sample(fits, 1, generator).to_tensors(), files["pickle"])
    files["checkpoint"] = colour  # a model, not a code
    files["other_model"] = folder / "other_model.safetensors"
    save_codes(files["other_model"], LatentCodes.sample(jpeg_model.net.code_shape((64, 80)), 1, generator),
               model_fingerprint(jpeg_model.net, jpeg_model.task))
    files["other_size"] = folder / "other_size.safetensors"
    save_codes(files["other_size"], LatentCodes.sample(colour_model.net.code_shape((32, 32)), 1, generator),
               model_fingerprint(colour_model.net, colour_model.task))
    return files


# name, what `render` says (after "error: <path>: "), what the studio's Load says.
REFUSED_CODES = [
    ("garbage", "not a readable safetensors file (truncated or corrupted?)",
     "the code file: not a readable safetensors file (truncated or corrupted?)"),
    ("empty", "the file is empty", "the code file: the file is empty"),
    ("truncated", "not a readable safetensors file (truncated or corrupted?)",
     "the code file: not a readable safetensors file (truncated or corrupted?)"),
    ("nan", "code global.0 contains NaN or infinite values", "the code file: code global.0 contains NaN"),
    ("pickle", "this is a pickle (torch.save) file; chimle only loads safetensors files",
     "the code file: this is a pickle (torch.save) file"),
    ("checkpoint", "expected a chimle-codes/1 file, found format 'chimle-checkpoint/1'",
     "the code file: expected a chimle-codes/1 file, found format 'chimle-checkpoint/1'"),
    ("other_model", "these codes were saved for another model",
     "the code file: these codes were saved for another model"),
    ("other_size", "the codes are for an output of another size",
     "this code is for an output whose finest level is (16, 16); this input needs (32, 40): use the same image"),
]


@pytest.fixture(scope="module")
def cases(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("bad-inputs")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    colour = tiny_checkpoint(checkpoints, "colourization", levels=3)
    jpeg = tiny_checkpoint(checkpoints, "jpeg", levels=3)
    return {"root": root, "colour": colour, "jpeg": jpeg, "images": write_bad_images(root / "images"),
            "codes": write_bad_codes(root / "codes", colour, jpeg)}


# -- the command line ---------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m chimle ARGS` in-process: (exit status, stdout, stderr)."""
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit_:  # argparse refuses by exiting
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_real_entry_point_refuses_an_empty_file_in_one_line(cases, tmp_path):
    empty = cases["images"]["empty.png"]
    result = subprocess.run([sys.executable, "-m", "chimle", "sample", "--checkpoint", str(cases["colour"]),
                             "--input", str(empty), "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    assert result.stderr == f"error: {empty}: empty file\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, cli_message, studio_message", REFUSED_IMAGES, ids=[c[0] for c in REFUSED_IMAGES])
def test_cli_refuses_a_bad_image_naming_file_and_problem(cases, tmp_path, capsys, name, cli_message, studio_message):
    path = cases["images"][name]
    code, _, error = run_cli(capsys, "sample", "--checkpoint", cases["colour"], "--input", path, "--num", 1,
                             "--out", tmp_path / "out")
    assert code == 2
    assert error.startswith(f"error: {path}: {cli_message}") and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def test_cli_names_the_ivo_target_when_it_is_the_bad_file(cases, tmp_path, capsys):
    target = cases["images"]["notes.png"]
    code, _, error = run_cli(capsys, "ivo", "--checkpoint", cases["colour"], "--input", cases["images"]["colour.png"],
                             "--target", target, "--steps", 1, "--out", tmp_path / "out")
    assert (code, error) == (2, f"error: {target}: not an image Pillow can read\n")


def _cli_sample(capsys, cases, image: Path, out: Path) -> np.ndarray:
    code, _, error = run_cli(capsys, "sample", "--checkpoint", cases["colour"], "--input", image, "--num", 1,
                             "--seed", 3, "--out", out)
    assert code == 0, error
    return pixels(out / "sample-000.png")


@pytest.mark.parametrize("name", ACCEPTED_IMAGES)
def test_cli_reads_an_odd_image_as_its_plain_equivalent(cases, tmp_path, capsys, name):
    odd = _cli_sample(capsys, cases, cases["images"][name], tmp_path / "odd")
    plain = _cli_sample(capsys, cases, cases["images"][f"plain-{name}"], tmp_path / "plain")
    np.testing.assert_array_equal(odd, plain)
    assert odd.shape == ((80, 64, 3) if name == "turned.jpg" else (64, 80, 3))  # EXIF rotation honoured


def test_cli_notes_that_a_colour_photo_was_made_grey(cases, tmp_path, capsys):
    note = "note: the colour photo was converted to grey (its lightness) before colourizing\n"
    code, out, _ = run_cli(capsys, "sample", "--checkpoint", cases["colour"], "--input",
                           cases["images"]["colour.png"], "--num", 1, "--out", tmp_path / "colour")
    assert code == 0 and out.startswith(note)
    code, out, _ = run_cli(capsys, "sample", "--checkpoint", cases["colour"], "--input",
                           cases["images"]["plain-sixteen_bit.png"], "--num", 1, "--out", tmp_path / "grey")
    assert code == 0 and "note:" not in out


@pytest.mark.parametrize("name, cli_message, studio_message", REFUSED_CODES, ids=[c[0] for c in REFUSED_CODES])
def test_cli_render_refuses_a_bad_code_file(cases, tmp_path, capsys, name, cli_message, studio_message):
    path = cases["codes"][name]
    code, _, error = run_cli(capsys, "render", "--checkpoint", cases["colour"], "--input",
                             cases["images"]["colour.png"], "--codes", path, "--out", tmp_path / "out")
    assert code == 2
    assert error.startswith(f"error: {path}: {cli_message}") and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def test_cli_render_accepts_the_good_code_file(cases, tmp_path, capsys):
    # The refusals above are about the files: the same command with a good one works.
    code, out, error = run_cli(capsys, "render", "--checkpoint", cases["colour"], "--input",
                               cases["images"]["colour.png"], "--codes", cases["codes"]["good"], "--out", tmp_path)
    assert code == 0, error
    assert pixels(tmp_path / "sample-000.png").shape == (64, 80, 3)


@pytest.mark.parametrize("args, message", [
    (["sample", "--max-side", "0"], "error: --max-side must be at least 16, got 0\n"),
    (["sample", "--num", "0"], "error: --num must be at least 1\n"),
    (["sample", "--seed", str(2 ** 64)], f"error: --seed must lie between 0 and {2 ** 64 - 1}, got {2 ** 64}\n"),
    (["sample", "--num", "many"], "argument --num: invalid int value: 'many'"),
    (["sample", "--max-side", "nan"], "argument --max-side: invalid int value: 'nan'"),
    (["ivo", "--lr", "nan"], "error: --lr must be a positive number, got nan\n"),
    (["ivo", "--lr", "-0.1"], "error: --lr must be a positive number, got -0.1\n"),
    (["ivo", "--steps", "0"], "error: --steps and --init-samples must be at least 1\n"),
], ids=["max-side-0", "num-0", "seed-65-bits", "num-text", "max-side-nan", "lr-nan", "lr-negative", "steps-0"])
def test_cli_refuses_out_of_range_and_wrong_type_options(cases, tmp_path, capsys, args, message):
    command, options = args[0], args[1:]
    needed = {"sample": [], "ivo": ["--target", cases["images"]["colour.png"]]}[command]
    code, _, error = run_cli(capsys, command, "--checkpoint", cases["colour"], "--input",
                             cases["images"]["colour.png"], "--out", tmp_path / "out", *needed, *options)
    assert code == 2
    assert error.endswith(message) or message in error.splitlines()[-1], error
    assert "Traceback" not in error and not (tmp_path / "out").exists()


def test_cli_unknown_model_and_missing_image(cases, tmp_path, capsys):
    missing_model = tmp_path / "no-such-model.safetensors"
    code, _, error = run_cli(capsys, "sample", "--checkpoint", missing_model, "--input",
                             cases["images"]["colour.png"], "--out", tmp_path / "out")
    assert (code, error) == (2, f"error: {missing_model}: no such file\n")
    missing_image = tmp_path / "no-such-photo.png"
    code, _, error = run_cli(capsys, "sample", "--checkpoint", cases["colour"], "--input", missing_image,
                             "--out", tmp_path / "out")
    assert (code, error) == (2, f"error: {missing_image}: file not found\n")


# -- the running studio ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio(cases):
    """The real app on a free port, launched once for the module; training off (not tested here)."""
    root = cases["root"]
    settings = StudioSettings(checkpoints=cases["colour"].parent, runs=root / "runs", data_root=root / "data",
                              assets=root / "assets", policy=TrainingPolicy(False, "off in these tests"))
    demo = app.build_demo(settings)
    for attempt in range(3):
        # On a loaded machine a launch can fail for reasons that are not the app's: another
        # process takes the free port first, or Gradio's reachability check (a HEAD request
        # with a 3 s timeout) times out. A fresh port and a second try get past both.
        port = free_port()
        try:
            demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options(settings))
            break
        except (OSError, ValueError):
            demo.close()
            if attempt == 2:
                raise
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "model": str(cases["colour"])}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(studio):
    """One client (one session) for the module; every test first sets the photo it needs.

    Results stay on the server (download_files=False) and only the images a test compares
    are fetched: downloading every output file made each request about four times slower.
    """
    return Client(studio["url"], verbose=False, download_files=False)


def fetch(file: dict) -> np.ndarray:
    """The RGB pixels of an output file the client left on the server."""
    response = httpx.get(file["url"], timeout=60)
    response.raise_for_status()
    with Image.open(io.BytesIO(response.content)) as image:
        return np.asarray(image.convert("RGB")).copy()


def set_input(client: Client, studio, image: Path | None, seed: int = 3):
    """Choose the colourization model and a photo; one sample drawn with a fixed seed."""
    return client.predict(studio["model"], handle_file(str(image)) if image else None, None, 256, 1, seed, False,
                          api_name="/set_input")


def refused(call, *args, **kwargs) -> str:
    """The message of a call that must fail with a gr.Error (not Gradio's generic failure)."""
    with pytest.raises(AppError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert GENERIC not in message and "Traceback" not in message and "\n" not in message
    return message


def assert_still_serving(client: Client, studio, cases) -> None:
    """A normal request after the bad one: the photo is read and a sample rendered."""
    outputs = set_input(client, studio, cases["images"]["colour.png"])
    assert fetch(outputs[START_RESULT]).shape == (64, 80, 3)


def raw_call(studio, api_name: str, body: str) -> tuple[str, dict | list]:
    """Send a hand-written JSON body to Gradio's REST API; returns the final (event, data).

    gradio_client refuses to send NaN or Infinity and checks the number of arguments, but a
    script need not: this is what such a script sends.
    """
    with httpx.Client(timeout=120) as http:
        posted = http.post(f"{studio['url']}gradio_api/call/{api_name}", content=body,
                           headers={"Content-Type": "application/json"})
        posted.raise_for_status()
        stream = http.get(f"{studio['url']}gradio_api/call/{api_name}/{posted.json()['event_id']}").text
    event = data = None
    for line in stream.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
    return event, data


@pytest.mark.parametrize("name, cli_message, studio_message", REFUSED_IMAGES, ids=[c[0] for c in REFUSED_IMAGES])
def test_studio_refuses_a_bad_photo_and_keeps_serving(studio, cases, client, name, cli_message, studio_message):
    message = refused(set_input, client, studio, cases["images"][name])
    assert studio_message in message
    assert_still_serving(client, studio, cases)


@pytest.mark.parametrize("name, message", [
    ("empty.png", "True or reference photo (optional) (empty.png): empty file"),
    ("bomb.png", "True or reference photo (optional) (bomb.png): image is too large (400,000,000 pixels"),
    ("cut.jpg", "the reference image: file is truncated"),
])
def test_studio_refuses_a_bad_reference_photo(studio, cases, client, name, message):
    set_input(client, studio, cases["images"]["colour.png"])
    assert message in refused(client.predict, handle_file(str(cases["images"][name])), api_name="/set_reference")
    assert client.predict(handle_file(str(cases["images"]["colour.png"])), api_name="/set_reference")[-1] == \
        "Reference set."


@pytest.mark.parametrize("name", ACCEPTED_IMAGES)
def test_studio_reads_an_odd_photo_as_its_plain_equivalent(studio, cases, client, name):
    odd = fetch(set_input(client, studio, cases["images"][name])[START_RESULT])
    plain = fetch(set_input(client, studio, cases["images"][f"plain-{name}"])[START_RESULT])
    np.testing.assert_array_equal(odd, plain)
    assert odd.shape == ((80, 64, 3) if name == "turned.jpg" else (64, 80, 3))  # EXIF rotation honoured


def test_studio_notes_that_a_colour_photo_was_made_grey(studio, cases, client):
    notes = set_input(client, studio, cases["images"]["colour.png"])[1]
    assert notes == "- The colour photo was converted to grey (its lightness) before colourizing."
    assert set_input(client, studio, cases["images"]["plain-sixteen_bit.png"])[1] == ""


def _edit(client: Client, directions=(0, 0, 0, 0), global_seed=0, global_blend=0.0, local_seed=0,
          local_blend=0.0, noise_scale=1.0, renormalise=True):
    return client.predict(renormalise, *directions, global_seed, global_blend, local_seed, local_blend,
                          noise_scale, api_name="/edit_level_1")


@pytest.mark.parametrize("edit, message", [
    (dict(directions=(5, 0, 0, 0)), ": 5 is out of range (allowed: from -3 to 3)"),
    (dict(global_blend=2), "Blend toward seed: 2 is out of range (allowed: from 0 to 1)"),
    (dict(noise_scale=-1), "Noise scale: -1 is out of range (allowed: from 0 to 2)"),
    (dict(local_seed=1e30), "Local seed: 1e+30 is out of range (allowed: from 0 to 4294967295)"),
    (dict(global_seed=-1), "Global seed: -1 is out of range (allowed: from 0 to 4294967295)"),
    (dict(directions=("far", 0, 0, 0)), ": expected a number, got 'far'"),
    (dict(directions=(None, 0, 0, 0)), ": a number is required"),
    (dict(noise_scale=True), "Noise scale: expected a number, got True"),
    (dict(global_seed=[1]), "Global seed: expected a number, got [1]"),
    (dict(renormalise=3), "Renormalise blends: expected true or false, got 3"),
], ids=["direction-5", "blend-2", "noise-negative", "seed-1e30", "seed-negative", "text", "null", "bool", "list",
        "checkbox-number"])
def test_studio_refuses_slider_values_out_of_range_or_of_the_wrong_type(studio, cases, client, edit, message):
    set_input(client, studio, cases["images"]["colour.png"])
    assert message in refused(_edit, client, **edit)
    # The session is intact: a normal edit of the same level renders.
    assert _edit(client, directions=(1, 0, 0, 0))[-1].startswith("Rendered levels 1–3")


@pytest.mark.parametrize("args, api_name, message", [
    ((17, 0, False), "/generate", "Samples: 17 is out of range (allowed: from 1 to 16)"),
    (("MODEL", None, None, 1000, 1, 0, False), "/set_input",
     "Working size (longest side, pixels): 1000 is out of range (allowed: from 64 to 512)"),
    ((1000, 0.05), "/reconstruct", "Reconstruction steps: 1000 is out of range (allowed: from 5 to 500)"),
    ((10, 0), "/reconstruct", "Step size: 0 is out of range (allowed: from 0.005 to 0.2)"),
], ids=["samples-17", "working-size-1000", "steps-1000", "step-size-0"])
def test_studio_refuses_other_values_out_of_range(studio, cases, client, args, api_name, message):
    set_input(client, studio, cases["images"]["colour.png"])
    args = [studio["model"] if arg == "MODEL" else arg for arg in args]
    assert refused(client.predict, *args, api_name=api_name) == message
    assert client.predict(1, 0, False, api_name="/generate")[-2][0]["caption"] == "#1"  # still drawing


@pytest.mark.parametrize("api_name, body, message", [
    ("edit_level_1", "[true, NaN, 0, 0, 0, 0, 0, 0, 0, 1]", "Direction 1: expected a finite number, got nan"),
    ("edit_level_1", "[true, 0, 0, 0, 0, 0, 0, 0, 0, Infinity]", "Noise scale: expected a finite number, got inf"),
    ("edit_level_1", "[true, 0, 0, 0, 0, -Infinity, 0, 0, 0, 1]", "Global seed: expected a finite number, got -inf"),
    ("set_input", '[MODEL, null, null, NaN, 1, 0, false]',
     "Working size (longest side, pixels): expected a finite number, got nan"),
    ("set_input", "[MODEL, null]",
     "the request could not be read: An event handler (start) didn't receive enough input values"),
    ("set_input", '[MODEL, {"path": "SERVER_FILE", "meta": {"_type": "gradio.FileData"}}, null, 256, 1, 0, false]',
     "Your photo: only files uploaded to this app are accepted"),
    ("set_input", '[MODEL, {"path": "SERVER_FILE"}, null, 256, 1, 0, false]',
     "Your photo: expected an uploaded file (with gradio_client: handle_file(path))"),
], ids=["nan-slider", "infinite-slider", "infinite-seed", "nan-working-size", "too-few-values", "server-path",
        "path-without-file-record"])
def test_studio_refuses_what_only_a_script_can_send(studio, cases, client, api_name, body, message):
    # A photo outside Gradio's upload folder must not be read, whatever the request says.
    body = body.replace("MODEL", json.dumps(studio["model"])).replace("SERVER_FILE", str(cases["images"]["colour.png"]))
    event, data = raw_call(studio, api_name, f'{{"data": {body}}}')
    assert event == "error" and data["error"].startswith(message), data
    assert_still_serving(client, studio, cases)


@pytest.mark.parametrize("image, message", [
    ("a photo.png", "Your photo: expected an uploaded file (with gradio_client: handle_file(path)), got 'a photo.png'"),
    ({"path": "/etc/hostname"}, "Your photo: expected an uploaded file"),
    (7, "Your photo: expected an uploaded file (with gradio_client: handle_file(path)), got 7"),
], ids=["text", "bare-path-record", "number"])
def test_studio_refuses_a_photo_that_is_not_an_uploaded_file(studio, cases, client, image, message):
    assert message in refused(client.predict, studio["model"], image, None, 256, 1, 0, False, api_name="/set_input")
    assert_still_serving(client, studio, cases)


@pytest.mark.parametrize("model, message", [
    ("/etc/passwd", "Model: '/etc/passwd' is not in the list of choices"),
    ("tiny-colourization", "Model: 'tiny-colourization' is not in the list of choices"),
    (5, "Model: 5 is not in the list of choices"),
])
def test_studio_refuses_an_unknown_model(studio, cases, client, model, message):
    image = handle_file(str(cases["images"]["colour.png"]))
    assert refused(client.predict, model, image, None, 256, 1, 0, False, api_name="/set_input") == message
    assert_still_serving(client, studio, cases)


def test_studio_says_what_is_missing_when_an_image_is_missing(studio, cases):
    client = Client(studio["url"], verbose=False, download_files=False)  # a new session: no photo yet
    chosen = set_input(client, studio, None)  # a model but no photo: nothing drawn, no error
    assert "colourization, 3 levels" in chosen[0] and chosen[START_RESULT] is None
    assert refused(client.predict, 1, 0, False, api_name="/generate") == "upload an image first"
    set_input(client, studio, cases["images"]["colour.png"])
    assert refused(client.predict, 5, 0.05, api_name="/reconstruct") == "give a reference image to reconstruct"
    assert refused(client.predict, None, api_name="/load_code") == "choose a .safetensors code file"
    assert_still_serving(client, studio, cases)


@pytest.mark.parametrize("name, cli_message, studio_message", REFUSED_CODES, ids=[c[0] for c in REFUSED_CODES])
def test_studio_refuses_a_bad_code_file_and_keeps_the_current_result(studio, cases, client, name, cli_message,
                                                                      studio_message):
    before = fetch(set_input(client, studio, cases["images"]["colour.png"])[START_RESULT])
    assert refused(client.predict, handle_file(str(cases["codes"][name])), api_name="/load_code") \
        .startswith(studio_message)
    downloads, _ = client.predict(api_name="/save")  # the result shown before is still the current one
    png = next(file for file in downloads["value"] if file["path"].endswith(".png"))
    np.testing.assert_array_equal(fetch(png), before)


def test_studio_loads_the_good_code_and_refuses_a_file_of_another_type(studio, cases, client, tmp_path):
    set_input(client, studio, cases["images"]["colour.png"])
    assert client.predict(handle_file(str(cases["codes"]["good"])), api_name="/load_code")[4] == \
        "Loaded the saved code."
    text = tmp_path / "code.txt"
    text.write_text("global.0 = 1, 2, 3")
    assert refused(client.predict, handle_file(str(text)), api_name="/load_code") == \
        "Invalid file type. Please upload a file that is one of these formats: ['.safetensors']"


# -- without a server: the same checks hold for direct calls ------------------------------------


@pytest.mark.parametrize("edit, message", [
    (dict(directions=(math.nan, 0, 0, 0)), "direction amounts must be finite numbers"),
    (dict(noise_scale=math.nan), "the noise scale must be a finite number"),
    (dict(noise_scale=math.inf), "the noise scale must be a finite number"),
    (dict(global_blend=math.nan), "blends must lie between 0 and 1"),
    (dict(local_seed=2 ** 40), "seeds must lie between 0 and 4294967295"),
])
def test_level_edits_refuse_values_that_cannot_render(edit, message):
    with pytest.raises(EditError, match=message):
        LevelEdit(**edit)
