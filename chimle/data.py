"""Training data: image folders, held-out splits, paired folders and the crop sampler.

The model trains on random square crops of photos. `CropSampler.batch(key, size)` is a
pure function of (seed, key): the trainer asks for the pool with key = pool index, so a
resumed run regenerates exactly the pools it would have seen, without saving them.

Images are decoded once, with `images.load_rgb`, and kept in memory as uint8 tensors
(3, H, W) (about 0.8 MB each at the default `max_side` of 512).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from chimle.color import rgb_to_lab
from chimle.imageops import resize
from chimle.images import IMAGE_EXTENSIONS, ImageError, fit_within, load_rgb
from chimle.tasks import SuperResolution, Task

DEFAULT_MAX_SIDE = 512

# A photo whose `photo_chroma` is below this is "nearly grey": it cannot teach
# colourization. Measured on the 1,863 photos of `python -m chimle data photos`:
# greyscale photos stored as RGB measure 0-0.1, toned black-and-white prints and line
# art 1.3-2.8, the least colourful colour photos (a black guitar, a grey calculator)
# 4.4 and up.
GREY_CHROMA = 3.0
# The percentile of per-pixel chroma that `photo_chroma` reports: a high one, because a
# colour photo of a grey thing on white (an insect, a plunger) has colour in only a few
# per cent of its pixels, and its mean chroma (0.9) is below a sepia print's (1.6).
_CHROMA_PERCENTILE = 0.99
# Chroma is measured on a thumbnail with this longer side: enough to see the colours,
# cheap enough to run on every photo of a corpus.
_CHROMA_THUMBNAIL = 64

# How many file names a warning or an error lists before "and N more".
_NAMES_IN_WARNING = 5
_NAMES_IN_ERROR = 10

PathLike = str | os.PathLike
Pair = tuple[Path, Path]


class DataError(ValueError):
    """A data folder cannot be used for training; the message says why."""


class DataWarning(UserWarning):
    """Some files of a data folder were skipped or adjusted (training goes on)."""


class Batch(NamedTuple):
    """A training or validation batch: model inputs x and clean targets y.

    Attributes:
        x: (B, task.in_channels, h, w) model input.
        y: (B, 3, crop, crop) RGB targets in [-1, 1].
    """

    x: torch.Tensor
    y: torch.Tensor


# --- Finding files -----------------------------------------------------------------------


def find_images(root: PathLike) -> list[Path]:
    """All image files under `root`, recursively, sorted.

    Files are recognised by extension, case-insensitively (`IMAGE_EXTENSIONS`). Hidden
    files and folders (names starting with ".") are left out: they are editor, notebook
    or macOS metadata (`._photo.jpg`), never photos.

    Raises:
        DataError: if `root` does not exist or is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a folder")
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)


def find_pairs(root: PathLike) -> list[Pair]:
    """Matching (input, target) files under `root/input/` and `root/target/`, sorted.

    Files are matched by their path relative to their folder without the extension, so
    `input/street/a.jpg` pairs with `target/street/a.png`.

    Raises:
        DataError: if either folder is missing, a name occurs twice on one side (a.jpg
            and a.png), or some files have no partner (the first 10 are listed).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    sides = {}
    for side in ("input", "target"):
        folder = root / side
        if not folder.is_dir():
            raise DataError(
                f"paired data folder {root} has no '{side}' folder; expected "
                f"{root / 'input'} and {root / 'target'} with matching file names")
        sides[side] = _by_stem(find_images(folder), folder)
    inputs, targets = sides["input"], sides["target"]
    unmatched = ([f"input/{key} has no target" for key in sorted(inputs.keys() - targets.keys())]
                 + [f"target/{key} has no input" for key in sorted(targets.keys() - inputs.keys())])
    if unmatched:
        raise DataError(f"{len(unmatched)} unmatched file(s) in {root}: "
                        f"{_name_list(unmatched, _NAMES_IN_ERROR)}")
    return [(inputs[key], targets[key]) for key in sorted(inputs)]


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    """Map each file's relative path without extension (POSIX style) to the file."""
    by_stem: dict[str, Path] = {}
    for path in paths:
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in by_stem:
            raise DataError(f"two files in {folder} have the same name {key!r}: "
                            f"{by_stem[key].name} and {path.name}; keep one")
        by_stem[key] = path
    return by_stem


def _name_list(names: Sequence[str], limit: int) -> str:
    """'a, b, c' or 'a, b, c and 4 more'."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


# --- Held-out split ----------------------------------------------------------------------


def split_by_source(paths: Sequence[PathLike | Pair], held_out_fraction: float,
                    seed: int) -> tuple[list, list]:
    """Split source images into training and held-out sets, deterministically.

    The split is by source file, so a held-out photo never gives a training crop. Each
    item is ranked by a hash of (seed, its path relative to the items' common folder);
    the lowest ranks are held out. So the split does not depend on the order of `paths`
    or on where the data folder lives, and adding photos to the same folders moves few
    others into or out of the held-out set.

    Args:
        paths: image paths, or (input, target) pairs from `find_pairs`.
        held_out_fraction: in [0, 1). When positive, at least one item is held out and
            at least one stays for training.
        seed: changes which items are held out.

    Returns:
        (train, held_out), each in the order of `paths`; both empty for no paths.

    Warns:
        DataWarning: if a positive fraction was asked for but there is only one image,
            which then goes to training and nothing is held out.
    """
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction!r}")
    items = list(paths)
    if not items:
        # Nothing to split; the corpus built from it then names the empty folder.
        return [], []
    seed = int(seed)  # numpy ints would hash differently through repr
    num_held_out = 0
    if held_out_fraction > 0:
        if len(items) == 1:
            warnings.warn("only one image: using it for training and holding none out "
                          "for validation", DataWarning, stacklevel=2)
        else:
            num_held_out = min(len(items) - 1, max(1, round(held_out_fraction * len(items))))
    keys = _relative_keys(items)
    ranked = sorted(range(len(items)), key=lambda i: (_hash_int(seed, keys[i]), keys[i]))
    held_out_indices = set(ranked[:num_held_out])
    train = [item for i, item in enumerate(items) if i not in held_out_indices]
    held_out = [item for i, item in enumerate(items) if i in held_out_indices]
    return train, held_out


def describe_split(train: Sequence[PathLike | Pair], held_out: Sequence[PathLike | Pair], *,
                   held_out_fraction: float | None = None,
                   seed: int | None = None) -> dict[str, Any]:
    """A JSON-able record of a split, for the run's config.json.

    Returns:
        {"num_train", "num_held_out", "train", "held_out", and "held_out_fraction" and
        "seed" when given}; files are strings, pairs are [input, target] lists.
    """
    def as_json(item: PathLike | Pair) -> str | list[str]:
        return [str(part) for part in item] if isinstance(item, tuple) else str(item)

    record: dict[str, Any] = {
        "num_train": len(train),
        "num_held_out": len(held_out),
        "train": [as_json(item) for item in train],
        "held_out": [as_json(item) for item in held_out],
    }
    if held_out_fraction is not None:
        record["held_out_fraction"] = held_out_fraction
    if seed is not None:
        record["seed"] = seed
    return record


def _relative_keys(items: list[PathLike | Pair]) -> list[str]:
    """Each item's path(s) relative to the folder holding all items, as one string."""
    absolute = [[os.path.abspath(part) for part in item] if isinstance(item, tuple)
                else [os.path.abspath(item)] for item in items]
    common = os.path.commonpath(sorted({os.path.dirname(path) for parts in absolute
                                        for path in parts}))
    return ["|".join(Path(os.path.relpath(path, common)).as_posix() for path in parts)
            for parts in absolute]


def _hash_int(*parts: object) -> int:
    """A stable 63-bit hash of `parts` (Python's hash() changes between processes)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# --- Colourfulness ----------------------------------------------------------------------


def photo_chroma(image: Image.Image) -> float:
    """How colourful a photo is: the 99th percentile of its CIELab chroma sqrt(a^2 + b^2).

    Measured on a 64 px thumbnail. About 0 for a greyscale photo stored as RGB, 1-3 for
    toned black-and-white, above 4 for colour photos; compare with `GREY_CHROMA`.
    """
    thumbnail = image.convert("RGB")
    thumbnail.thumbnail((_CHROMA_THUMBNAIL, _CHROMA_THUMBNAIL), Image.Resampling.BOX)
    rgb = torch.from_numpy(np.array(thumbnail, dtype=np.float32) / 255)  # (H, W, 3)
    lab = rgb_to_lab(rgb.permute(2, 0, 1)[None])  # (1, 3, H, W)
    chroma = lab[0, 1:].square().sum(dim=0).sqrt().flatten()  # (H * W,)
    return float(chroma.quantile(_CHROMA_PERCENTILE))


def is_nearly_grey(image: Image.Image) -> bool:
    """Whether a photo has too little colour to train colourization (`GREY_CHROMA`)."""
    return photo_chroma(image) < GREY_CHROMA


# --- Corpora -----------------------------------------------------------------------------


def _image_to_uint8(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _warn_skipped(skipped: list[tuple[str, str]], total: int, source: str) -> None:
    """One warning for all the files that were skipped while building a corpus."""
    if skipped:
        names = [f"{Path(path).name} ({reason})" for path, reason in skipped]
        warnings.warn(
            f"skipped {len(skipped)} of {total} file(s) in {source} that could not be "
            f"used: {_name_list(names, _NAMES_IN_WARNING)}", DataWarning, stacklevel=3)


def _reason(error: ImageError, label: str) -> str:
    """The problem part of an ImageError's "<file>: <problem>" message."""
    message = str(error)
    prefix = f"{label}: "
    return message[len(prefix):] if message.startswith(prefix) else message


class ImageCorpus:
    """Decoded photos kept in memory, for unpaired tasks.

    Each readable file becomes a uint8 tensor (3, H, W), downscaled with `fit_within` so
    its longer side is at most `max_side`. Why downscale: a 6000x4000 wallpaper would
    otherwise take 72 MB, and a 64 px crop of it is a patch of pure texture (a few
    leaves), unlike the whole-scene views the model will be asked to work on.

    Images whose short side is smaller than the crop size are not refused: the crop
    sampler upscales them (bicubic) so their short side equals the crop size. A little
    blur beats losing a photo, and refusing would make tiny datasets unusable; keep
    `max_side` >= the crop size so that only genuinely small files are affected.

    Unreadable files are skipped and reported in one `DataWarning`. With `skip_grey`,
    nearly grey photos (`is_nearly_grey`) are left out too, and reported in another:
    a greyscale photo teaches colourization that the answer is grey.

    Attributes:
        tensors: one uint8 (3, H, W) tensor per usable image.
        paths: the files behind `tensors`, in the same order.
        skipped: (file, problem) for every file that was left out.
        skipped_grey: the nearly grey files left out by `skip_grey` (empty without it).
        source: what the corpus was built from, for messages.
        paired: False; see `PairedCorpus`.
    """

    paired = False

    def __init__(self, paths: Sequence[PathLike], max_side: int = DEFAULT_MAX_SIDE, *,
                 source: str | None = None, skip_grey: bool = False):
        """Load every image in `paths`.

        Args:
            paths: image files, e.g. from `find_images`.
            max_side: the longest side images are kept at, in pixels.
            source: the folder (or other description) named in messages.
            skip_grey: leave out nearly grey photos (for colourization).

        Raises:
            DataError: if no file in `paths` is a usable image.
        """
        paths = list(paths)
        self.max_side = _check_max_side(max_side)
        self.source = source or _common_folder(paths)
        self.paths: list[Path] = []
        self.tensors: list[torch.Tensor] = []
        self.skipped: list[tuple[str, str]] = []
        self.skipped_grey: list[Path] = []
        for path in paths:
            try:
                image = load_rgb(path)
            except ImageError as error:
                self.skipped.append((str(path), _reason(error, str(path))))
                continue
            if skip_grey and is_nearly_grey(image):
                self.skipped_grey.append(Path(path))
                continue
            self.paths.append(Path(path))
            self.tensors.append(_image_to_uint8(fit_within(image, self.max_side)))
        if not self.tensors and self.skipped_grey:
            raise DataError(f"no colour photo in {self.source}: all "
                            f"{len(self.skipped_grey)} usable image(s) are nearly grey")
        _check_not_empty(self.tensors, self.skipped, len(paths), self.source)
        _warn_skipped(self.skipped, len(paths), self.source)
        if self.skipped_grey:
            names = [path.name for path in self.skipped_grey]
            warnings.warn(
                f"left out {len(self.skipped_grey)} nearly grey photo(s) of {len(paths)} in "
                f"{self.source}: {_name_list(names, _NAMES_IN_WARNING)}", DataWarning,
                stacklevel=2)

    @classmethod
    def from_folder(cls, root: PathLike, max_side: int = DEFAULT_MAX_SIDE, *,
                    skip_grey: bool = False) -> ImageCorpus:
        """Load every image found under `root` (see `find_images`)."""
        return cls(find_images(root), max_side, source=str(root), skip_grey=skip_grey)

    def __len__(self) -> int:
        return len(self.tensors)


class PairedCorpus:
    """Aligned (input, target) photos in memory, for paired tasks such as night_to_day.

    Each pair is stored as one uint8 tensor (6, H, W): input RGB in channels 0-2, target
    RGB in channels 3-5. Cropping and flipping the stacked tensor keeps the two aligned
    by construction.

    When an input's size differs from its target's, the input is resized (Lanczos) to
    the target's size before anything else: paired data is for tasks whose input and
    output have the same size, and the target is the image the loss judges, so it is
    the one kept untouched. Pairs whose aspect ratios differ by more than 1% are skipped
    (they show different framings, and stretching would misalign them). Then both are
    downscaled to `max_side` as in `ImageCorpus`, and small pairs are upscaled at crop
    time as described there.

    Attributes:
        tensors: one uint8 (6, H, W) tensor per usable pair.
        pairs: the (input, target) files behind `tensors`.
        skipped: (file, problem) for every pair that was left out.
        resized: how many inputs were resized to their target's size.
        source: what the corpus was built from, for messages.
        paired: True.
    """

    paired = True

    def __init__(self, pairs: Sequence[tuple[PathLike, PathLike]],
                 max_side: int = DEFAULT_MAX_SIDE, *, source: str | None = None):
        """Load every (input, target) pair, e.g. from `find_pairs`.

        Raises:
            DataError: if no pair is usable.
        """
        pairs = list(pairs)
        self.max_side = _check_max_side(max_side)
        self.source = source or _common_folder([path for pair in pairs for path in pair])
        self.pairs: list[Pair] = []
        self.tensors: list[torch.Tensor] = []
        self.skipped: list[tuple[str, str]] = []
        self.resized = 0
        for input_path, target_path in pairs:
            loaded = []
            for path in (input_path, target_path):
                try:
                    loaded.append(load_rgb(path))
                except ImageError as error:
                    self.skipped.append((str(path), _reason(error, str(path))))
                    break
            if len(loaded) < 2:
                continue
            source_image, target = loaded
            if source_image.size != target.size:
                (input_w, input_h), (target_w, target_h) = source_image.size, target.size
                if abs(input_w * target_h / (input_h * target_w) - 1) > 0.01:
                    self.skipped.append((str(input_path), (
                        f"input is {input_w}x{input_h} but its target is "
                        f"{target_w}x{target_h}, a different shape")))
                    continue
                source_image = source_image.resize(target.size, Image.Resampling.LANCZOS)
                self.resized += 1
            stacked = torch.cat([_image_to_uint8(fit_within(source_image, self.max_side)),
                                 _image_to_uint8(fit_within(target, self.max_side))])
            self.pairs.append((Path(input_path), Path(target_path)))
            self.tensors.append(stacked)  # (6, H, W)
        _check_not_empty(self.tensors, self.skipped, len(pairs), self.source)
        _warn_skipped(self.skipped, len(pairs), self.source)
        if self.resized:
            warnings.warn(f"resized {self.resized} input image(s) in {self.source} to "
                          f"their target's size", DataWarning, stacklevel=2)

    @classmethod
    def from_folder(cls, root: PathLike, max_side: int = DEFAULT_MAX_SIDE) -> PairedCorpus:
        """Load the pairs of `root/input/` and `root/target/` (see `find_pairs`)."""
        return cls(find_pairs(root), max_side, source=str(root))

    def __len__(self) -> int:
        return len(self.tensors)


Corpus = ImageCorpus | PairedCorpus


def _common_folder(paths: Sequence[PathLike]) -> str:
    """The deepest folder containing all `paths`, for messages; "(no files)" if none."""
    if not paths:
        return "(no files)"
    folders = {os.path.dirname(os.path.abspath(path)) for path in paths}
    return os.path.commonpath(list(folders))


def _check_max_side(max_side: int) -> int:
    """`max_side` as an int, or ValueError unless it is a positive integer."""
    if int(max_side) != max_side or max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side!r}")
    return int(max_side)


def _check_not_empty(tensors: list, skipped: list[tuple[str, str]], total: int,
                     source: str) -> None:
    """Raise DataError when a corpus ended up with no usable image."""
    if tensors:
        return
    if total == 0:
        raise DataError(f"no images found in {source} (looked for "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    first_file, first_problem = skipped[0]
    raise DataError(f"no usable image in {source}: none of its {total} file(s) could be "
                    f"read (first: {Path(first_file).name}: {first_problem})")


# --- Crops -------------------------------------------------------------------------------


def _upscale_to_crop(image: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Upscale (bicubic) a uint8 (C, H, W) image so its short side is at least crop_size."""
    height, width = image.shape[-2:]
    short = min(height, width)
    if short >= crop_size:
        return image
    scale = crop_size / short
    size = (max(crop_size, round(height * scale)), max(crop_size, round(width * scale)))
    upscaled = resize(image[None].float(), size, "bicubic")[0]
    return upscaled.round().clamp(0, 255).to(torch.uint8)


def _to_batch(crops: list[torch.Tensor], paired: bool, task: Task,
              generator: torch.Generator) -> Batch:
    """Stack uint8 crops into a Batch: y in [-1, 1], x degraded from y or the paired input."""
    stacked = torch.stack(crops).float() / 127.5 - 1  # (B, 3 or 6, crop, crop)
    if paired:
        return Batch(task.prepare_input(stacked[:, :3]), stacked[:, 3:].contiguous())
    return Batch(task.degrade(stacked, generator), stacked)


def _check_corpus_and_task(corpus: Corpus, task: Task, crop_size: int) -> None:
    """Raise ValueError when a corpus cannot feed a task at this crop size."""
    if int(crop_size) != crop_size or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
    if len(corpus) == 0:
        raise DataError(f"no images in {corpus.source}")
    if task.paired and not corpus.paired:
        raise ValueError(f"task {task.name!r} needs paired data (a folder with input/ and "
                         f"target/ subfolders); {corpus.source} holds single images")
    if corpus.paired and isinstance(task, SuperResolution):
        raise ValueError("paired data is aligned at the target's size, so it cannot train "
                         "super-resolution, whose input is smaller than its output")


class CropSampler:
    """Random training crops, as a pure function of (seed, key).

    Every call to `batch` seeds a fresh generator from (seed, key) alone, so
    `batch(k, n)` returns identical tensors however often and in whatever order it is
    called; the trainer uses key = pool index, so a resumed run regenerates exactly the
    pools it would have seen.

    Per sample: an image chosen uniformly (with replacement), a uniformly placed
    crop_size x crop_size window, and, when `augment`, a random horizontal flip. Never
    a vertical flip or a transpose: photos have a right way up (skies above, ground
    below), which the semantic prior and the model should learn, not unlearn. Images with a short
    side under crop_size are upscaled once, here, so their short side equals crop_size
    (see `ImageCorpus`).
    """

    def __init__(self, corpus: Corpus, crop_size: int, task: Task, seed: int,
                 augment: bool = True):
        """Check that `corpus` can feed `task`, and upscale its small images once.

        Raises:
            ValueError: for a bad crop size, a paired task given single images, a
                crop size larger than the corpus's `max_side` (every crop would be an
                upscaled image), or paired data for super-resolution.
        """
        _check_corpus_and_task(corpus, task, crop_size)
        if crop_size > corpus.max_side:
            raise ValueError(
                f"crop_size {crop_size} is larger than the corpus's max_side "
                f"{corpus.max_side}: every image would be upscaled before cropping; "
                f"build the corpus with max_side >= crop_size")
        self.corpus = corpus
        self.crop_size = int(crop_size)
        self.task = task
        self.seed = int(seed)
        self.augment = bool(augment)
        self._images = [_upscale_to_crop(image, self.crop_size) for image in corpus.tensors]

    def batch(self, key: int, size: int) -> Batch:
        """The batch for `key`: (x, y) with y (size, 3, crop, crop) in [-1, 1].

        Args:
            key: which batch; the same (seed, key) always gives the same tensors.
            size: number of crops.

        Returns:
            Batch(x, y); x is `task.degrade(y, generator)`, or for a paired corpus the
            aligned input crops through `task.prepare_input`.
        """
        if int(size) != size or size < 1:
            raise ValueError(f"batch size must be a positive integer, got {size!r}")
        generator = torch.Generator().manual_seed(_hash_int("CropSampler", self.seed, int(key)))
        crop = self.crop_size
        choices = torch.randint(len(self._images), (int(size),), generator=generator)
        crops = []
        for index in choices.tolist():
            image = self._images[index]
            height, width = image.shape[-2:]
            top = int(torch.randint(height - crop + 1, (), generator=generator))
            left = int(torch.randint(width - crop + 1, (), generator=generator))
            # Drawn whether or not it is used, so augment=False picks the same windows.
            flip_h = bool(torch.rand((), generator=generator) < 0.5)
            window = image[:, top:top + crop, left:left + crop]
            if self.augment and flip_h:
                window = window.flip(-1)
            crops.append(window)
        return _to_batch(crops, self.corpus.paired, self.task, generator)


def validation_batch(corpus: Corpus, crop_size: int, task: Task, size: int,
                     seed: int) -> Batch:
    """Center crops of the first `size` images of a (held-out) corpus, without augmentation.

    The same arguments always give the same batch, for sample grids and evaluation that
    are comparable across a run. Small images are upscaled as in `CropSampler`.

    Args:
        corpus: usually the held-out images.
        crop_size: side of the square crops.
        task: makes x from y (or from the paired inputs).
        size: how many images; fewer if the corpus is smaller.
        seed: seeds stochastic degradations (e.g. sensor noise).

    Returns:
        Batch(x, y) with min(size, len(corpus)) images.
    """
    _check_corpus_and_task(corpus, task, crop_size)
    if int(size) != size or size < 1:
        raise ValueError(f"validation batch size must be a positive integer, got {size!r}")
    crops = []
    for image in corpus.tensors[:int(size)]:
        image = _upscale_to_crop(image, crop_size)
        height, width = image.shape[-2:]
        top, left = (height - crop_size) // 2, (width - crop_size) // 2
        crops.append(image[:, top:top + crop_size, left:left + crop_size])
    generator = torch.Generator().manual_seed(_hash_int("validation_batch", int(seed)))
    return _to_batch(crops, corpus.paired, task, generator)


def whole_photos(corpus: Corpus, multiple: int, task: Task, seed: int) -> list[Batch]:
    """Every photo of a corpus whole, one Batch each, cropped to a multiple of `multiple`.

    For evaluation at the photo's own size. The crop removes at most `multiple - 1` rows
    and columns from the bottom and right (the model's sides must be multiples of
    2^levels, and super-resolution's of its factor).
    """
    generator = torch.Generator().manual_seed(_hash_int("whole_photos", int(seed)))
    batches = []
    for image in corpus.tensors:
        height, width = (side - side % multiple for side in image.shape[-2:])
        if min(height, width) < multiple:
            raise ValueError(f"a photo of {tuple(image.shape[-2:])} is smaller than {multiple} px")
        batches.append(_to_batch([image[:, :height, :width]], corpus.paired, task, generator))
    return batches
