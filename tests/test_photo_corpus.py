"""The photo corpus: dedupe, benchmark exclusion, a stable split, grey photos, terms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chimle.cli import main
from chimle.data import GREY_CHROMA, DataWarning, ImageCorpus, photo_chroma
from chimle.photo_corpus import (SHARED_TERMS, UNKNOWN_TERMS, USER_TERMS, build_photo_corpus,
                                 is_held_out)


def sample(name: str, side: int = 160) -> Image.Image:
    """A scikit-image sample photo as RGB, downscaled to `side` on its longer side."""
    from skimage import data

    array = getattr(data, name)()
    image = Image.fromarray(array[0] if isinstance(array, tuple) else array).convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def write(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def near_copy(image: Image.Image) -> Image.Image:
    """The same photo, downscaled to 70%, as it would come back from a JPEG re-encode."""
    return image.resize((image.width * 7 // 10, image.height * 7 // 10), Image.Resampling.BILINEAR)


def build(tmp_path: Path, shared: Path, **options) -> dict:
    return build_photo_corpus(tmp_path / "out", shared_data=shared, max_side=96, workers=1,
                              demo=False, **options)


def keys(manifest: dict) -> list[str]:
    return [photo["key"] for photo in manifest["photos"]]


def test_dedupe_drops_a_resized_reencoded_copy_and_keeps_different_photos(tmp_path):
    shared = tmp_path / "shared"
    write(shared / "train" / "bsds500" / "a_astronaut.png", sample("astronaut"))
    write(shared / "train" / "bsds500" / "b_coffee.png", sample("coffee"))
    write(shared / "train" / "imagenet-sample" / "copy.jpg", near_copy(sample("astronaut")), quality=70)
    write(shared / "train" / "imagenet-sample" / "chelsea.jpg", sample("chelsea"), quality=90)
    write(shared / "train" / "imagenet-sample" / "rocket.jpg", sample("rocket"), quality=90)

    manifest = build(tmp_path, shared)

    assert keys(manifest) == ["bsds500/a_astronaut.png", "bsds500/b_coffee.png",
                              "imagenet-sample/chelsea.jpg", "imagenet-sample/rocket.jpg"]
    [duplicate] = manifest["duplicates"]
    assert duplicate["key"] == "imagenet-sample/copy.jpg"
    assert duplicate["duplicate_of"] == "bsds500/a_astronaut.png"
    assert manifest["per_source"] == {"bsds500": 2, "imagenet-sample": 2}
    for photo in manifest["photos"]:
        with Image.open(tmp_path / "out" / photo["file"]) as image:
            assert max(image.size) <= 96 and tuple(photo["size"]) == image.size


def test_a_near_duplicate_of_a_test_photo_is_excluded_and_test_photos_never_used(tmp_path):
    shared = tmp_path / "shared"
    write(shared / "test" / "kodak24" / "kodim99.png", sample("chelsea", 200))
    write(shared / "train" / "bsds500" / "cat.jpg", near_copy(sample("chelsea")), quality=75)
    write(shared / "train" / "bsds500" / "coffee.jpg", sample("coffee"), quality=90)

    manifest = build(tmp_path, shared)

    assert keys(manifest) == ["bsds500/coffee.jpg"]
    [excluded] = manifest["excluded_test_matches"]
    assert excluded["key"] == "bsds500/cat.jpg"
    assert excluded["test_photo"] == "test/kodak24/kodim99.png"
    assert manifest["num_test_photos"] == 1


def test_held_out_split_is_by_key_and_stable_when_photos_are_added(tmp_path):
    names = [f"photo{i}.png" for i in range(400)]
    held = [name for name in names if is_held_out(f"bsds500/{name}")]
    train = [name for name in names if not is_held_out(f"bsds500/{name}")]
    assert 0.005 < len(held) / len(names) < 0.05  # about 2%
    assert is_held_out("skimage/chelsea")  # the demo corpus's stated held-out photos stay out

    shared = tmp_path / "shared"
    write(shared / "train" / "bsds500" / held[0], sample("astronaut"))
    write(shared / "train" / "bsds500" / train[0], sample("coffee"))
    first = build(tmp_path, shared)
    write(shared / "train" / "bsds500" / train[1], sample("rocket"))
    write(shared / "train" / "bsds500" / held[1], sample("chelsea"))
    second = build(tmp_path, shared)

    splits = [{photo["key"]: photo["split"] for photo in m["photos"]} for m in (first, second)]
    assert splits[0] == {f"bsds500/{held[0]}": "held_out", f"bsds500/{train[0]}": "train"}
    assert {key: splits[1][key] for key in splits[0]} == splits[0]
    assert splits[1][f"bsds500/{held[1]}"] == "held_out"
    assert second["per_split"] == {"held_out": 2, "train": 2}
    assert sorted(p.name for p in (tmp_path / "out" / "held_out").iterdir()) == sorted(
        f"bsds500__{Path(name).stem}.png" for name in held[:2])


def test_grey_photos_are_flagged_and_left_out_of_a_skip_grey_corpus(tmp_path):
    shared = tmp_path / "shared"
    grey = sample("coffee").convert("L").convert("RGB")
    write(shared / "train" / "imagenet-sample" / "grey.jpg", grey, quality=90)
    write(shared / "train" / "imagenet-sample" / "colour.jpg", sample("astronaut"), quality=90)
    assert photo_chroma(grey) < GREY_CHROMA < photo_chroma(sample("astronaut"))

    manifest = build(tmp_path, shared)

    flags = {photo["key"]: photo["grey"] for photo in manifest["photos"]}
    assert flags == {"imagenet-sample/grey.jpg": True, "imagenet-sample/colour.jpg": False}
    assert manifest["num_grey"] == 1
    folder = shared / "train" / "imagenet-sample"
    assert len(ImageCorpus.from_folder(folder)) == 2
    with pytest.warns(DataWarning, match="1 nearly grey"):
        corpus = ImageCorpus.from_folder(folder, skip_grey=True)
    assert corpus.paths == [folder / "colour.jpg"]
    assert corpus.skipped_grey == [folder / "grey.jpg"]


def test_a_grey_subject_with_a_little_colour_is_not_grey():
    # A colour photo of a grey thing: most pixels grey, 2% strongly coloured (an insect
    # on a white wall), which a mean chroma would call grey.
    pixels = np.array(sample("camera").convert("RGB"))  # a greyscale photo, as RGB
    assert photo_chroma(Image.fromarray(pixels)) < GREY_CHROMA
    pixels[:24, :24] = (200, 30, 30)
    assert photo_chroma(Image.fromarray(pixels)) > GREY_CHROMA


def test_terms_are_those_of_the_folder_and_missing_shared_data_is_noted(tmp_path):
    shared = tmp_path / "shared"
    write(shared / "train" / "bsds500" / "a.jpg", sample("astronaut"))
    write(shared / "train" / "debian-hugin-data" / "b.jpg", sample("coffee"))
    write(shared / "train" / "somewhere-new" / "c.jpg", sample("rocket"))
    write(shared / "train" / "debian-scratch" / "blank.jpg", Image.new("RGB", (90, 60)))
    mine = write(tmp_path / "Pictures" / "holiday" / "d.png", sample("chelsea")).parent.parent

    manifest = build(tmp_path, shared, folders=[mine])

    terms = {photo["key"]: photo["terms"] for photo in manifest["photos"]}
    assert terms == {"bsds500/a.jpg": "Berkeley: non-commercial research and education",
                     "debian-hugin-data/b.jpg": "GPL-2+ / LGPL-2.1+: train only",
                     "somewhere-new/c.jpg": UNKNOWN_TERMS,
                     "user/Pictures/holiday/d.png": USER_TERMS}
    assert SHARED_TERMS["openimages-subset"] == "CC BY 2.0"
    assert [blank["key"] for blank in manifest["blank"]] == ["debian-scratch/blank.jpg"]
    assert manifest["missing"] == []

    alone = build(tmp_path, tmp_path / "no-shared-here", folders=[mine])
    assert keys(alone) == ["user/Pictures/holiday/d.png"]
    assert len(alone["missing"]) == 1 and "no-shared-here" in alone["missing"][0]
    # The rebuild removed the earlier build's photos.
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["user__Pictures__holiday__d.png"]


def test_the_command_writes_the_corpus_and_its_manifest(tmp_path, capsys):
    # Mirrored, so that it is not a duplicate of the demo corpus's own coffee photo.
    mirrored = sample("coffee").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mine = write(tmp_path / "mine" / "a.png", mirrored).parent
    out = tmp_path / "corpus"
    code = main(["data", "photos", "--out", str(out), "--folder", str(mine), "--shared-data",
                 str(tmp_path / "none"), "--max-side", "64", "--workers", "1"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["user_folders"] == [str(mine)] and manifest["max_side"] == 64
    assert sum(manifest["per_source"].values()) == manifest["num_train"] + manifest["num_held_out"]
    assert "user/mine" in manifest["per_source"]
    assert "nearly grey" in capsys.readouterr().out
