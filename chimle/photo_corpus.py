"""The photo corpus: the shared training photos, the demo sources and the user's folders.

Sources, in this fixed order (the first copy of a duplicated photo is the one kept):
1. the demo corpus's sources (`chimle.corpus.find_sources`), first so that its stated
   held-out photos are always the copies kept;
2. every subfolder of `<shared data>/train` (see that folder's README.md), in name order;
   absent from a user's clone, which is then noted in the manifest's "missing";
3. any folders the user names, with terms "user-supplied".

Never trained on: any photo of `<shared data>/test` (the public benchmarks), nor a
near-duplicate of one. Photos are compared by a difference hash of a 17x16 grey
thumbnail (256 bits); two photos are the same when their hashes differ in at most
`SAME_PHOTO_BITS` bits. The same test dedupes across sources. Blank images (a few
Debian templates are all black) are left out too.

The held-out split is by photo key: the demo corpus's `HELD_OUT` plus every photo whose
key hashes into the lowest `HELD_OUT_PER_MILLE` of 1000, so a photo's split never
changes when others are added.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .corpus import HELD_OUT, SourcePhoto, find_sources
from .corpus import _open as open_demo_source
from .data import DEFAULT_MAX_SIDE, GREY_CHROMA, find_images, photo_chroma
from .fileio import atomic_write_bytes, atomic_write_json
from .images import ImageError, fit_within, load_rgb

DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Terms of the shared training folders, as the shared data README's table states them.
_CC_MIT_CC0 = "CC-BY-SA-3.0/4.0, MIT or CC0 (see the Debian package's copyright file)"
_GPL = "GPL-2+ / LGPL-2.1+: train only"
SHARED_TERMS = {
    "imagenet-sample": "ImageNet terms: non-commercial research and education",
    "bsds500": "Berkeley: non-commercial research and education",
    "openimages-subset": "CC BY 2.0",
    "debian-scratch": "CC-BY-SA-3.0",
    "debian-opencv-samples": "BSD-3 / Apache-2.0",
    **{f"debian-{name}": _CC_MIT_CC0 for name in (
        "gnome-taquin", "forensics-samples", "darknet", "jquery-backstretch",
        "jquery-colorbox", "rmagick-doc", "libjxl-wesaturate", "puzzle-jigsaw")},
    **{f"debian-{name}": _GPL for name in (
        "kphotoalbum-demo", "gnome-faces", "tuxtype", "lxqt-themes", "palapeli",
        "hugin-data", "tuxpaint-templates")},
}
UNKNOWN_TERMS = "unknown: not in the shared data README's table"
USER_TERMS = "user-supplied"

HASH_SIZE = 16       # the difference hash compares 16 x 16 neighbouring pixel pairs
# Two photos are the same when their hashes differ in at most this many of 256 bits. On
# the shared photos, the same photo re-processed measures 0-13 (LIVE1's copies of Kodak
# photos, a Hugin photo with a frame drawn on it: 8) and the closest distinct photos 28.
SAME_PHOTO_BITS = 20
# A photo whose grey thumbnail varies less than this (standard deviation, 8-bit levels)
# is blank, not a photo: some Debian "photos" are all black (templates whose drawing was
# lost with their transparency), and every blank image would hash alike.
BLANK_STD = 4.0
HELD_OUT_PER_MILLE = 20  # about 2% of the photos not in HELD_OUT


@dataclass
class Candidate:
    """A photo that may go into the corpus."""

    key: str      # unique, e.g. "bsds500/100007.jpg"; the split is a function of it
    source: str   # the folder it came from: a shared folder name, "skimage", "user/..."
    origin: str   # its file, or "skimage.data.<name>"
    terms: str


@dataclass
class Photo:
    """A photo written to the corpus, as the manifest records it."""

    key: str
    source: str
    origin: str
    terms: str
    split: str
    file: str
    size: tuple[int, int]
    sha256: str
    chroma: float
    grey: bool


@dataclass
class _Loaded:
    """What a worker returns for one candidate: its hash, colour and encoded PNG."""

    index: int
    dhash: int = 0
    chroma: float = 0.0
    grey_std: float = 0.0
    size: tuple[int, int] = (0, 0)
    png: bytes = b""
    problem: str = ""


# --- Hashing -----------------------------------------------------------------------------


def difference_hash(image: Image.Image) -> int:
    """A 256-bit perceptual hash: which pixels of a 17x16 grey thumbnail outshine their left neighbour.

    Robust to resizing, re-encoding and small colour changes; `hash_distance` compares two.
    """
    grey = image.convert("L").resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.int16)  # (16, 17)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hash_distance(a: int, b: int) -> int:
    """Hamming distance between two difference hashes (0 = same thumbnail, 256 = opposite)."""
    return (a ^ b).bit_count()


def is_held_out(key: str) -> bool:
    """The split of a photo: a function of its key alone, so adding photos moves none."""
    if key in HELD_OUT:
        return True
    digest = hashlib.blake2b(f"chimle photo corpus|{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 1000 < HELD_OUT_PER_MILLE


# --- Finding candidates ------------------------------------------------------------------


def find_candidates(shared_data: Path, folders: list[Path], *,
                    demo: bool = True) -> tuple[list[Candidate], list[str]]:
    """Every candidate photo in source order, and what is missing."""
    candidates, missing = [], []
    if demo:
        sources, missing_demo = find_sources()
        missing += missing_demo
        candidates += [Candidate(s.key, s.key.split("/", 1)[0], s.origin, s.licence) for s in sources]
    train = shared_data / "train"
    if train.is_dir():
        for folder in sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")):
            terms = SHARED_TERMS.get(folder.name, UNKNOWN_TERMS)
            candidates += [Candidate(f"{folder.name}/{path.relative_to(folder).as_posix()}", folder.name,
                                     str(path), terms) for path in find_images(folder)]
    else:
        missing.append(f"the shared training photos in {train} (only in the project's own "
                       "workspace; name your own folders with --folder)")
    names: Counter[str] = Counter()
    for folder in folders:
        folder = Path(folder).expanduser()
        names[folder.name] += 1
        name = folder.name if names[folder.name] == 1 else f"{folder.name}-{names[folder.name]}"
        candidates += [Candidate(f"user/{name}/{path.relative_to(folder).as_posix()}", f"user/{name}",
                                 str(path), USER_TERMS) for path in find_images(folder)]
    return candidates, missing


def find_test_photos(shared_data: Path) -> list[Path]:
    """The benchmark photos that must never be trained on (none when the folder is absent)."""
    test = shared_data / "test"
    return find_images(test) if test.is_dir() else []


# --- Loading (in worker processes) --------------------------------------------------------


def _open_candidate(origin: str, max_side: int) -> Image.Image:
    if origin.startswith("skimage.data."):
        return open_demo_source(SourcePhoto("", origin, ""), max_side)
    return fit_within(load_rgb(origin, max_pixels=60_000_000), max_side)


def _load(job: tuple[int, str, int]) -> _Loaded:
    """Decode, downscale, hash and encode one photo (max_side 0: hash only, no PNG)."""
    index, origin, max_side = job
    try:
        image = _open_candidate(origin, max_side or 1_000_000)
    except (ImageError, OSError) as error:
        return _Loaded(index, problem=str(error))
    thumbnail = image.convert("L")
    thumbnail.thumbnail((64, 64), Image.Resampling.BOX)
    grey_std = float(np.asarray(thumbnail, dtype=np.float32).std())
    loaded = _Loaded(index, difference_hash(image), photo_chroma(image), grey_std, image.size)
    if max_side:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        loaded.png = buffer.getvalue()
    return loaded


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _load_all(origins: list[str], max_side: int, workers: int):
    """Yield `_Loaded` for every origin, in order."""
    jobs = [(index, origin, max_side) for index, origin in enumerate(origins)]
    if workers <= 1:
        yield from map(_load, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        yield from pool.map(_load, jobs, chunksize=8)


# --- Building ----------------------------------------------------------------------------


def _file_name(key: str, taken: set[str]) -> str:
    """A flat, unique PNG name for a key: "bsds500/100007.jpg" -> "bsds500__100007.png"."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    name = stem.replace("/", "__")
    if name in taken:
        name = key.replace("/", "__").replace(".", "_")
    taken.add(name)
    return name + ".png"


def _closest(dhash: int, hashes: list[tuple[int, str]]) -> tuple[int, str]:
    """(distance, name) of the nearest hash in `hashes`; (257, "") if there are none."""
    return min(((hash_distance(dhash, other), name) for other, name in hashes), default=(257, ""))


def build_photo_corpus(out: str | Path, *, shared_data: str | Path = DEFAULT_SHARED_DATA,
                       folders: list[str | Path] = (), max_side: int = DEFAULT_MAX_SIDE,
                       workers: int = 2, demo: bool = True, progress=None) -> dict:
    """Write out/train/*.png, out/held_out/*.png and out/manifest.json; return the manifest.

    Args:
        out: the corpus folder.
        shared_data: the folder holding train/ and test/ (see the module's docs).
        folders: the user's own photo folders.
        max_side: photos are stored downscaled (Lanczos) to this longer side.
        workers: processes decoding and encoding photos (1: in this process).
        demo: include the demo corpus's sources.
        progress: called with (done, total) now and then, e.g. to print progress.
    """
    out, shared_data = Path(out), Path(shared_data)
    candidates, missing = find_candidates(shared_data, [Path(f) for f in folders], demo=demo)
    test_paths = find_test_photos(shared_data)
    test_hashes = [(loaded.dhash, test_paths[loaded.index].relative_to(shared_data).as_posix())
                   for loaded in _load_all([str(p) for p in test_paths], 0, workers)
                   if not loaded.problem]

    photos: list[Photo] = []
    kept_hashes: list[tuple[int, str]] = []
    excluded, duplicates, unreadable, blank = [], [], [], []
    taken: set[str] = set()
    total = len(candidates)
    for done, loaded in enumerate(_load_all([c.origin for c in candidates], max_side, workers), 1):
        candidate = candidates[loaded.index]
        if progress and (done % 100 == 0 or done == total):
            progress(done, total)
        if loaded.problem:
            unreadable.append({"key": candidate.key, "origin": candidate.origin,
                               "problem": loaded.problem})
            continue
        if loaded.grey_std < BLANK_STD:
            blank.append({"key": candidate.key, "origin": candidate.origin})
            continue
        distance, test_name = _closest(loaded.dhash, test_hashes)
        if distance <= SAME_PHOTO_BITS:
            excluded.append({"key": candidate.key, "origin": candidate.origin,
                             "test_photo": test_name, "distance": distance})
            continue
        distance, kept_key = _closest(loaded.dhash, kept_hashes)
        if distance <= SAME_PHOTO_BITS:
            duplicates.append({"key": candidate.key, "origin": candidate.origin,
                               "duplicate_of": kept_key, "distance": distance})
            continue
        kept_hashes.append((loaded.dhash, candidate.key))
        split = "held_out" if is_held_out(candidate.key) else "train"
        file = f"{split}/{_file_name(candidate.key, taken)}"
        atomic_write_bytes(out / file, loaded.png)
        photos.append(Photo(candidate.key, candidate.source, candidate.origin, candidate.terms,
                            split, file, loaded.size, hashlib.sha256(loaded.png).hexdigest(),
                            round(loaded.chroma, 3), loaded.chroma < GREY_CHROMA))

    # A rebuild must not leave photos of an earlier build (an excluded one, say) behind.
    written = {photo.file for photo in photos}
    stale = [path for split in ("train", "held_out") for path in sorted((out / split).glob("*.png"))
             if f"{split}/{path.name}" not in written]
    for path in stale:
        path.unlink()

    per_source = Counter(photo.source for photo in photos)
    manifest = {
        "description": "CHIMLE photo corpus: demo sources, shared training photos and user "
                       "folders; deduplicated, benchmark photos excluded, split by photo",
        "max_side": max_side,
        "shared_data": str(shared_data),
        "user_folders": [str(Path(f).expanduser()) for f in folders],
        "missing": missing,
        "same_photo": f"difference hash of a {HASH_SIZE + 1}x{HASH_SIZE} grey thumbnail, "
                      f"at most {SAME_PHOTO_BITS} of {HASH_SIZE * HASH_SIZE} bits apart",
        "grey_chroma": GREY_CHROMA,
        "num_train": sum(photo.split == "train" for photo in photos),
        "num_held_out": sum(photo.split == "held_out" for photo in photos),
        "num_grey": sum(photo.grey for photo in photos),
        "per_source": dict(sorted(per_source.items())),
        "per_split": dict(Counter(photo.split for photo in photos)),
        "num_test_photos": len(test_hashes),
        "excluded_test_matches": excluded,
        "duplicates": duplicates,
        "unreadable": unreadable,
        "blank": blank,
        "removed_stale_files": len(stale),
        "photos": [asdict(photo) for photo in photos],
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def summary(manifest: dict) -> str:
    """A few lines for the terminal: counts per source, split, duplicates, exclusions."""
    lines = [f"{manifest['num_train']} training and {manifest['num_held_out']} held-out photos "
             f"({manifest['num_grey']} nearly grey, chroma < {manifest['grey_chroma']})"]
    lines += [f"  {count:5d}  {source}" for source, count in manifest["per_source"].items()]
    lines.append(f"excluded {len(manifest['excluded_test_matches'])} near-duplicate(s) of the "
                 f"{manifest['num_test_photos']} test photos; dropped {len(manifest['duplicates'])} "
                 f"duplicate(s) across sources; left out {len(manifest['blank'])} blank and "
                 f"{len(manifest['unreadable'])} unreadable image(s)")
    lines += [f"missing: {problem}" for problem in manifest["missing"]]
    return "\n".join(lines)
