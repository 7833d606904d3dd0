"""The command line's full-size results and batches: `sample` and `render` on a photo or a folder.

Real photos from scikit-image, larger than the working size, a broken file and a truncated
one; tiny 3-level checkpoints. `python -m chimle` runs in-process (`chimle.cli.main`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chimle import pipeline
from chimle.checkpoint import load_codes
from chimle.cli import main

from .studio_helpers import one_torch_thread, photo, pixels, tiny_checkpoint

single_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)
WORKING = "64"  # --max-side: the photos below are larger


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {task: tiny_checkpoint(folder, task, levels=3) for task in ("colourization", "jpeg", "super_resolution")}


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def errors(stderr: str) -> list[str]:
    """The `error: ...` lines of stderr (the progress bar writes there too)."""
    return [line[line.index("error: "):] for line in stderr.replace("\r", "\n").splitlines() if "error: " in line]


def write_folder(folder: Path) -> dict[str, Path]:
    """Three real photos (one in a subfolder), a text file named .png and a truncated JPEG."""
    (folder / "trip").mkdir(parents=True)
    files = {"astronaut": folder / "astronaut.png", "coffee": folder / "coffee.jpg",
             "chelsea": folder / "trip" / "chelsea.png", "notes": folder / "notes.png", "cut": folder / "cut.jpg"}
    photo("astronaut", (120, 120)).save(files["astronaut"])
    photo("coffee", (160, 120)).save(files["coffee"], quality=95)
    photo("chelsea", (150, 100)).save(files["chelsea"])
    files["notes"].write_text("these are not pixels\n" * 10)
    whole = io.BytesIO()
    photo("coffee", (128, 96)).save(whole, format="JPEG", quality=90)
    files["cut"].write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (folder / "readme.txt").write_text("not a photo, not an image file name: ignored")
    return files


@pytest.mark.parametrize("task, tiled", [("colourization", False), ("jpeg", False), ("jpeg", True)],
                         ids=["colourization", "jpeg", "jpeg-in-tiles"])
def test_sample_writes_the_photos_size_and_render_gives_it_again_bit_for_bit(models, tmp_path, capsys,
                                                                              monkeypatch, task, tiled):
    if tiled:
        monkeypatch.setattr(pipeline, "TILED_ABOVE_PIXELS", 0)
        monkeypatch.setattr(pipeline, "TILE_SIZE", 16)
    image = tmp_path / "photo.png"
    photo("chelsea", (200, 150)).save(image)
    code, out, err = run(capsys, "sample", "--checkpoint", models[task], "--input", image, "--num", 2, "--seed", 4,
                         "--max-side", WORKING, "--out", tmp_path / "sampled")
    assert code == 0, err
    assert "resized from 200x150 to 64x48 to explore it" in out and "saved results are made at 200x150" in out
    assert "wrote 2 samples (200x150)" in out
    first, second = (pixels(tmp_path / "sampled" / f"sample-00{i}.png") for i in (0, 1))
    assert first.shape == (150, 200, 3) and not np.array_equal(first, second)
    codes, metadata = load_codes(tmp_path / "sampled" / "codes.safetensors")
    assert codes.batch_size == 2 and metadata["full_size"] == [150, 200] and metadata["max_side"] == 64
    code, out, err = run(capsys, "render", "--checkpoint", models[task], "--input", image, "--codes",
                         tmp_path / "sampled" / "codes.safetensors", "--max-side", WORKING, "--out", tmp_path / "again")
    assert code == 0, err
    for index in (0, 1):
        name = f"sample-00{index}.png"
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "sampled" / name).read_bytes()


def test_super_resolution_writes_the_photo_times_eight(models, tmp_path, capsys):
    image = tmp_path / "small.png"
    photo("astronaut", (60, 45)).save(image)
    code, out, err = run(capsys, "sample", "--checkpoint", models["super_resolution"], "--input", image, "--num", 1,
                         "--max-side", 256, "--out", tmp_path / "out", "--no-progress")
    assert code == 0, err
    assert pixels(tmp_path / "out" / "sample-000.png").shape == (45 * 8, 60 * 8, 3)
    assert err == ""  # --no-progress: nothing on stderr


def test_a_folder_is_sampled_photo_by_photo_bad_files_reported_and_done_ones_skipped(models, tmp_path, capsys):
    files = write_folder(tmp_path / "photos")
    out = tmp_path / "results"
    args = ["sample", "--checkpoint", models["colourization"], "--input", tmp_path / "photos", "--num", 2,
            "--seed", 7, "--max-side", WORKING, "--out", out]
    code, stdout, stderr = run(capsys, *args)
    assert code == 1  # some photos failed
    reported = errors(stderr)  # one line per bad file, in the folder's order, as they happen
    assert len(reported) == 2 and reported[0].startswith(f"error: {files['cut']}: file is truncated")
    assert reported[1] == f"error: {files['notes']}: not an image Pillow can read"
    assert "5 photos in" in stdout and "3 done, 2 failed" in stdout
    done = {"astronaut": (120, 120), "coffee": (120, 160), "trip/chelsea": (100, 150)}
    for name, size in done.items():
        assert pixels(out / name / "sample-001.png").shape[:2] == size
        assert load_codes(out / name / "codes.safetensors")[0].batch_size == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("codes.safetensors")) == \
        sorted(f"{name}/codes.safetensors" for name in done)
    # Each photo's results are what sampling that photo alone gives.
    code, _, err = run(capsys, "sample", "--checkpoint", models["colourization"], "--input", files["chelsea"],
                       "--num", 2, "--seed", 7, "--max-side", WORKING, "--out", tmp_path / "alone")
    assert code == 0, err
    assert (tmp_path / "alone" / "sample-001.png").read_bytes() == (out / "trip/chelsea/sample-001.png").read_bytes()

    # A rerun skips the photos done; a photo whose results were removed is done again.
    stamps = {name: (out / name / "sample-000.png").stat().st_mtime_ns for name in done}
    (out / "coffee" / "codes.safetensors").unlink()
    code, stdout, stderr = run(capsys, *args)
    assert code == 1 and "1 done, 2 skipped (done before), 2 failed" in stdout
    assert len(errors(stderr)) == 2
    assert (out / "astronaut" / "sample-000.png").stat().st_mtime_ns == stamps["astronaut"]
    assert (out / "coffee" / "codes.safetensors").is_file()

    # Without the bad files, everything is done: exit status 0.
    files["notes"].unlink()
    files["cut"].unlink()
    code, stdout, stderr = run(capsys, *args)
    assert code == 0 and "0 done, 3 skipped (done before)" in stdout and errors(stderr) == []


def test_a_folder_of_codes_renders_the_same_pictures(models, tmp_path, capsys):
    files = write_folder(tmp_path / "photos")
    files["notes"].unlink()
    sampled, rendered = tmp_path / "sampled", tmp_path / "rendered"
    code, _, err = run(capsys, "sample", "--checkpoint", models["jpeg"], "--input", tmp_path / "photos", "--num", 1,
                       "--max-side", WORKING, "--out", sampled)
    assert code == 1 and len(errors(err)) == 1  # the truncated JPEG
    (tmp_path / "photos" / "late.png").write_bytes((tmp_path / "photos" / "astronaut.png").read_bytes())
    args = ["render", "--checkpoint", models["jpeg"], "--input", tmp_path / "photos", "--codes", sampled,
            "--max-side", WORKING, "--out", rendered]
    code, stdout, err = run(capsys, *args)
    assert code == 1 and "3 done, 2 failed" in stdout
    assert sorted(errors(err)) == sorted([
        f"error: {files['cut']}: no codes for it ({sampled / 'cut' / 'codes.safetensors'} not found)",
        f"error: {tmp_path / 'photos' / 'late.png'}: no codes for it ({sampled / 'late' / 'codes.safetensors'} "
        f"not found)"])
    for name in ("astronaut", "coffee", "trip/chelsea"):
        assert (rendered / name / "sample-000.png").read_bytes() == (sampled / name / "sample-000.png").read_bytes()
    code, stdout, _ = run(capsys, *args)
    assert "0 done, 3 skipped (done before), 2 failed" in stdout


def test_folder_mistakes_are_refused_in_one_line(models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "sample", "--checkpoint", models["jpeg"], "--input", tmp_path / "empty",
                       "--out", tmp_path / "out", "--no-progress")
    assert (code, err) == (2, f"error: {tmp_path / 'empty'}: no photos in this folder "
                              f"(.jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff)\n")
    photo("coffee", (64, 48)).save(tmp_path / "one.png")
    code, _, err = run(capsys, "render", "--checkpoint", models["jpeg"], "--input", tmp_path / "one.png",
                       "--codes", tmp_path / "empty", "--out", tmp_path / "out")
    assert code == 2 and err.startswith(f"error: {tmp_path / 'empty'} is a folder")
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path / "empty") == []
