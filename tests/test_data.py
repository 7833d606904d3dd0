"""Tests for chimle.data: finding files, corpora, splits, pairs and reproducible crops."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from chimle.data import (
    CropSampler,
    DataError,
    DataWarning,
    ImageCorpus,
    PairedCorpus,
    describe_split,
    find_images,
    find_pairs,
    split_by_source,
    validation_batch,
)
from chimle.imageops import resize
from chimle.tasks import make_task

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str, width: int, height: int) -> np.ndarray:
    """A real photo resized to (height, width, 3) uint8."""
    array = getattr(skimage.data, name)()[..., :3]
    return np.array(Image.fromarray(array).resize((width, height), Image.Resampling.BICUBIC))


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats back to exact uint8 levels."""
    return ((images + 1) * 127.5).round().to(torch.uint8)


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Four real photos of different sizes, as PNG, in tmp_path/photos."""
    sizes = [(80, 60), (64, 72), (100, 48), (56, 56)]
    for name, (width, height) in zip(PHOTOS, sizes, strict=True):
        save(tmp_path / "photos" / f"{name}.png", photo(name, width, height))
    return tmp_path / "photos"


def sampler(corpus, crop=32, task="jpeg", seed=0, augment=True, **task_params) -> CropSampler:
    return CropSampler(corpus, crop, make_task(task, **task_params), seed, augment)


# --- Finding files ---------------------------------------------------------------------------


def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    pixels = photo("coffee", 8, 8)
    expected = [save(tmp_path / "a.JPG", pixels), save(tmp_path / "b.Png", pixels),
                save(tmp_path / "sub" / "deeper" / "c.jpeg", pixels),
                save(tmp_path / "sub" / "d.webp", pixels)]
    (tmp_path / "notes.txt").write_text("not an image")
    save(tmp_path / ".thumbnails" / "e.png", pixels)
    (tmp_path / "._a.JPG").write_bytes(b"\0" * 10)  # macOS metadata beside a.JPG
    (tmp_path / "folder.png").mkdir()
    assert find_images(tmp_path) == sorted(expected)


def test_find_images_names_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match=f"data folder {tmp_path / 'nope'} does not exist"):
        find_images(tmp_path / "nope")


# --- Corpora ---------------------------------------------------------------------------------


def test_corpus_keeps_uint8_images_downscaled_to_max_side(photo_folder):
    corpus = ImageCorpus.from_folder(photo_folder, max_side=64)
    assert len(corpus) == 4 and corpus.paths == find_images(photo_folder)
    shapes = [tuple(image.shape) for image in corpus.tensors]
    # astronaut 80x60, chelsea 64x72, coffee 100x48, rocket 56x56 (sorted by name)
    assert shapes == [(3, 48, 64), (3, 64, 57), (3, 31, 64), (3, 56, 56)]
    assert all(image.dtype == torch.uint8 for image in corpus.tensors)
    rocket = torch.from_numpy(photo("rocket", 56, 56)).permute(2, 0, 1)
    assert torch.equal(corpus.tensors[3], rocket)  # small enough: untouched


def test_unreadable_files_are_skipped_with_one_warning(photo_folder):
    (photo_folder / "empty.png").write_bytes(b"")
    (photo_folder / "text.jpg").write_text("hello")
    (photo_folder / "cut.png").write_bytes((photo_folder / "coffee.png").read_bytes()[:200])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = ImageCorpus.from_folder(photo_folder)
    assert len(corpus) == 4 and len(corpus.skipped) == 3
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(caught) == 1 and len(data_warnings) == 1
    message = str(data_warnings[0].message)
    assert "skipped 3 of 7" in message
    assert "empty.png (empty file)" in message and "text.jpg" in message
    assert "cut.png" in message


def test_folder_without_usable_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in .*empty"):
        ImageCorpus.from_folder(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="no usable image in .*junk.*a.png: empty file"):
        ImageCorpus.from_folder(tmp_path / "junk")


# --- Held-out split ----------------------------------------------------------------------------


def test_split_is_disjoint_deterministic_and_order_free(tmp_path):
    paths = [tmp_path / f"img{i:02d}.png" for i in range(20)]
    train, held_out = split_by_source(paths, 0.25, seed=3)
    assert len(held_out) == 5 and len(train) == 15
    assert set(train).isdisjoint(held_out) and set(train) | set(held_out) == set(paths)
    assert train == [p for p in paths if p in set(train)]  # input order kept
    assert split_by_source(paths[::-1], 0.25, seed=3)[1] == held_out[::-1]
    assert split_by_source(paths, 0.25, seed=3) == (train, held_out)
    assert set(split_by_source(paths, 0.25, seed=4)[1]) != set(held_out)
    # The split depends on names below the data folder, not on where the folder lives.
    moved = [tmp_path / "elsewhere" / p.name for p in paths]
    assert [p.name for p in split_by_source(moved, 0.25, seed=3)[1]] == \
        [p.name for p in held_out]


def test_split_edge_cases(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    assert split_by_source(paths, 0.0, seed=0) == (paths, [])
    train, held_out = split_by_source(paths, 0.01, seed=0)
    assert len(held_out) == 1 and len(train) == 2  # a positive fraction holds one out
    train, held_out = split_by_source(paths, 0.99, seed=0)
    assert len(train) == 1 and len(held_out) == 2  # and keeps one for training
    with pytest.warns(DataWarning, match="only one image"):
        assert split_by_source(paths[:1], 0.5, seed=0) == (paths[:1], [])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_by_source(paths, 1.0, seed=0)
    assert split_by_source([], 0.5, seed=0) == ([], [])


def test_split_of_pairs_and_its_record(tmp_path):
    pairs = [(tmp_path / "input" / f"{i}.png", tmp_path / "target" / f"{i}.png")
             for i in range(6)]
    train, held_out = split_by_source(pairs, 0.5, seed=1)
    assert len(train) == 3 and len(held_out) == 3 and set(train).isdisjoint(held_out)
    record = describe_split(train, held_out, held_out_fraction=0.5, seed=1)
    assert json.loads(json.dumps(record)) == record
    assert record["num_train"] == 3 and record["num_held_out"] == 3
    assert record["seed"] == 1 and record["held_out_fraction"] == 0.5
    assert record["held_out"] == [[str(a), str(b)] for a, b in held_out]


# --- Paired folders ------------------------------------------------------------------------------


def test_find_pairs_matches_by_relative_stem(tmp_path):
    pixels = photo("coffee", 8, 8)
    save(tmp_path / "input" / "a.jpg", pixels)
    save(tmp_path / "input" / "street" / "b.png", pixels)
    save(tmp_path / "target" / "a.png", pixels)
    save(tmp_path / "target" / "street" / "b.PNG", pixels)
    assert find_pairs(tmp_path) == [
        (tmp_path / "input" / "a.jpg", tmp_path / "target" / "a.png"),
        (tmp_path / "input" / "street" / "b.png", tmp_path / "target" / "street" / "b.PNG")]


def test_find_pairs_lists_unmatched_files(tmp_path):
    pixels = photo("coffee", 8, 8)
    for i in range(12):
        save(tmp_path / "input" / f"n{i:02d}.png", pixels)
    save(tmp_path / "input" / "shared.png", pixels)
    save(tmp_path / "target" / "shared.png", pixels)
    save(tmp_path / "target" / "lonely.png", pixels)
    with pytest.raises(DataError) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert message.startswith("13 unmatched file(s)")
    assert "input/n00 has no target" in message and "and 3 more" in message
    assert "shared" not in message


def test_find_pairs_needs_both_folders(tmp_path):
    save(tmp_path / "input" / "a.png", photo("coffee", 8, 8))
    with pytest.raises(DataError, match="no 'target' folder"):
        find_pairs(tmp_path)


# --- Crop sampler ------------------------------------------------------------------------------


def test_batches_are_a_pure_function_of_seed_and_key(photo_folder):
    corpus = ImageCorpus.from_folder(photo_folder)
    first = sampler(corpus, seed=5, task="synthetic_night_to_day")
    x, y = first.batch(7, 6)
    first.batch(8, 6)  # other calls in between change nothing
    again_x, again_y = sampler(corpus, seed=5, task="synthetic_night_to_day").batch(7, 6)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)  # noise included
    assert not torch.equal(first.batch(8, 6).y, y)
    assert not torch.equal(sampler(corpus, seed=6).batch(7, 6).y, y)


def find_window(image: torch.Tensor, crop: torch.Tensor) -> bool:
    """Whether `crop` (C, c, c) is some window of `image` (C, H, W), exactly."""
    c = crop.shape[-1]
    height, width = image.shape[-2:]
    if height < c or width < c:
        return False
    # Candidate corners share the crop's top-left pixel; compare those windows in full.
    corners = (image[:, :height - c + 1, :width - c + 1] == crop[:, :1, :1]).all(dim=0)
    return any(torch.equal(image[:, top:top + c, left:left + c], crop)
               for top, left in corners.nonzero().tolist())


def mirror_images(crop: torch.Tensor) -> list[torch.Tensor]:
    """A (C, c, c) crop and its left-right mirror image: the only augmentation of photos."""
    return [crop, crop.flip(-1)]


def test_crops_are_windows_of_the_corpus_images(photo_folder):
    corpus = ImageCorpus.from_folder(photo_folder)
    plain = sampler(corpus, crop=40, augment=False).batch(0, 8).y
    assert plain.shape == (8, 3, 40, 40)
    for crop in to_uint8(plain):
        assert any(find_window(image, crop) for image in corpus.tensors)

    augmented = sampler(corpus, crop=40, seed=1).batch(0, 8).y
    changed = 0
    for crop in to_uint8(augmented):
        assert any(find_window(image, candidate)
                   for image in corpus.tensors for candidate in mirror_images(crop))
        changed += not any(find_window(image, crop) for image in corpus.tensors)
    assert changed > 0  # augmentation really flips some crops, and never upside down


def test_crop_windows_reach_every_position(tmp_path):
    # A 33x33 image has four 32x32 windows; uniform sampling must use all of them,
    # edges included.
    save(tmp_path / "tight.png", photo("astronaut", 33, 33))
    corpus = ImageCorpus.from_folder(tmp_path)
    image = corpus.tensors[0]
    crops = to_uint8(sampler(corpus, crop=32, augment=False).batch(0, 64).y)
    positions = {(top, left) for crop in crops for top in (0, 1) for left in (0, 1)
                 if torch.equal(image[:, top:top + 32, left:left + 32], crop)}
    assert positions == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_small_images_are_upscaled_to_the_crop_size(tmp_path):
    save(tmp_path / "small.png", photo("chelsea", 30, 20))
    corpus = ImageCorpus.from_folder(tmp_path)
    y = sampler(corpus, crop=32, augment=False).batch(3, 4).y
    assert y.shape == (4, 3, 32, 32)
    small = corpus.tensors[0][None].float()
    upscaled = resize(small, (32, 48), "bicubic").round().clamp(0, 255)  # short side 20 -> 32
    for crop in to_uint8(y):
        assert find_window(upscaled[0].to(torch.uint8), crop)


def test_crop_larger_than_max_side_is_refused(photo_folder):
    corpus = ImageCorpus.from_folder(photo_folder, max_side=32)
    with pytest.raises(ValueError, match="max_side"):
        sampler(corpus, crop=48)


@pytest.mark.parametrize("task, params, x_shape", [
    ("colourization", {}, (5, 1, 32, 32)),
    ("jpeg", {"quality": 5}, (5, 3, 32, 32)),
    ("super_resolution", {"factor": 4}, (5, 3, 8, 8)),
])
def test_inputs_come_from_the_task(photo_folder, task, params, x_shape):
    corpus = ImageCorpus.from_folder(photo_folder)
    x, y = sampler(corpus, crop=32, task=task, **params).batch(0, 5)
    assert x.shape == x_shape and y.shape == (5, 3, 32, 32)
    task_object = make_task(task, **params)
    assert torch.equal(x, task_object.degrade(y))  # deterministic tasks


def test_paired_task_needs_paired_data(photo_folder):
    corpus = ImageCorpus.from_folder(photo_folder)
    with pytest.raises(ValueError, match="needs paired data"):
        sampler(corpus, task="night_to_day")


# --- Paired corpus ----------------------------------------------------------------------------


@pytest.fixture
def paired_folder(tmp_path) -> Path:
    """Targets are real photos; each input is its target's colour negative."""
    for name, (width, height) in zip(PHOTOS[:3], [(64, 48), (48, 64), (56, 56)], strict=True):
        target = photo(name, width, height)
        save(tmp_path / "pairs" / "target" / f"{name}.png", target)
        save(tmp_path / "pairs" / "input" / f"{name}.png", 255 - target)
    return tmp_path / "pairs"


def test_paired_crops_stay_aligned(paired_folder):
    corpus = PairedCorpus.from_folder(paired_folder)
    assert len(corpus) == 3 and corpus.tensors[0].shape[0] == 6
    x, y = sampler(corpus, crop=40, task="night_to_day", seed=2).batch(1, 10)
    assert x.shape == y.shape == (10, 3, 40, 40)
    assert torch.equal(to_uint8(x), 255 - to_uint8(y))  # same window, same flips
    assert not torch.equal(y[0], y[1])
    again = sampler(corpus, crop=40, task="night_to_day", seed=2).batch(1, 10)
    assert torch.equal(again.x, x) and torch.equal(again.y, y)


def test_paired_inputs_are_resized_to_their_targets(paired_folder):
    target = photo("rocket", 64, 48)
    save(paired_folder / "target" / "rocket.png", target)
    save(paired_folder / "input" / "rocket.png", np.array(
        Image.fromarray(255 - target).resize((32, 24), Image.Resampling.LANCZOS)))
    with pytest.warns(DataWarning, match="resized 1 input"):
        corpus = PairedCorpus.from_folder(paired_folder)
    index = [pair[1].name for pair in corpus.pairs].index("rocket.png")
    stacked = corpus.tensors[index].float()
    assert stacked.shape == (6, 48, 64)
    # A half-size negative, brought back up, is still close to the negative of the target.
    assert (stacked[:3] - (255 - stacked[3:])).abs().mean() < 20


def test_paired_inputs_of_another_shape_are_skipped(paired_folder):
    save(paired_folder / "input" / "astronaut.png", photo("astronaut", 48, 64))  # turned
    with pytest.warns(DataWarning, match="skipped 1 of 3.*different shape"):
        corpus = PairedCorpus.from_folder(paired_folder)
    assert len(corpus) == 2


def test_paired_colourization_input_is_the_inputs_lightness(paired_folder):
    corpus = PairedCorpus.from_folder(paired_folder)
    x, y = sampler(corpus, crop=32, task="colourization").batch(0, 3)
    task = make_task("colourization")
    assert x.shape == (3, 1, 32, 32)
    torch.testing.assert_close(x, task.prepare_input(-y), atol=1e-5, rtol=0)


# --- Validation batch ---------------------------------------------------------------------------


def test_validation_batch_is_fixed_center_crops(photo_folder):
    corpus = ImageCorpus.from_folder(photo_folder)
    task = make_task("synthetic_night_to_day")
    x, y = validation_batch(corpus, 32, task, size=3, seed=0)
    assert y.shape == (3, 3, 32, 32)
    astronaut = corpus.tensors[0]  # (3, 60, 80): center window starts at (14, 24)
    assert torch.equal(to_uint8(y[0]), astronaut[:, 14:46, 24:56])
    again = validation_batch(corpus, 32, task, size=3, seed=0)
    assert torch.equal(again.x, x) and torch.equal(again.y, y)
    assert not torch.equal(validation_batch(corpus, 32, task, size=3, seed=1).x, x)
    assert validation_batch(corpus, 32, task, size=10, seed=0).y.shape[0] == 4
