"""The demo corpus: real photos that install offline, split by source photograph.

Sources (docs/method.md#training-data), and only these:
- scikit-image's colour sample photographs (public domain / CC0, shipped with the package);
- the Debian packages lomiri-wallpapers-16.04 and -20.04 (photos, CC-BY-4.0, CC-BY-SA-4.0,
  CC0), in /usr/share/backgrounds;
- mate-backgrounds' nature photographs (GPL-2+; used for training only, never committed),
  in /usr/share/backgrounds/mate/nature.

Wallpapers that are drawings or abstract renders are left out by name. The held-out
photos are a fixed, stated list, so every model's figures are on the same photos and the
studio's example inputs (assets/) can come from held-out CC0 / CC-BY / public-domain ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from .fileio import atomic_write_json
from .images import fit_within, save_png

BACKGROUNDS = Path("/usr/share/backgrounds")
MATE_NATURE = BACKGROUNDS / "mate" / "nature"
DEBIAN_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds")
INSTALL_HINT = "apt-get install -y " + " ".join(DEBIAN_PACKAGES)

SKIMAGE_PHOTOS = {  # name -> licence, as scikit-image's data README states
    "astronaut": "public domain (NASA)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (NASA / Bill Ingalls)",
    "hubble_deep_field": "public domain (NASA / ESA)",
    "stereo_motorcycle": "Middlebury stereo dataset (research use; left view)",
}
# Wallpapers in the lomiri packages that are drawings or abstract renders, not photos.
NOT_PHOTOS = {"Fossa_by_Jasper_Roks.jpg", "Infinite-Sea_by_Aury88.jpg", "umang_by_Abhishek_Mudgal.jpg",
              "Painting-Colors_by__herobrine7gamer.jpg", "analogpattern_by_Peter_Nerlich.jpg",
              "warty-final-ubuntu.png"}
# Held out from every shipped model's training: varied subjects, and licences that allow
# committing crops of them as the studio's examples (all but Garden).
HELD_OUT = {"skimage/chelsea", "lomiri/aitzgorri_by_Aitzol_Berasategi.jpg",
            "lomiri/Picture_0B_by_freespace.jpg", "lomiri/seeding_by_Clements_Engelhardt.jpg",
            "lomiri/friends_by_Aitzol_Berasategi.jpg", "mate/Garden.jpg"}


@dataclass
class SourcePhoto:
    """One source photograph and where it went."""

    key: str          # e.g. "lomiri/Bridge_by_Sander_Klootwijk.jpg"
    origin: str       # file path, or "skimage.data.<name>"
    licence: str
    split: str = ""   # "train" or "held_out"
    file: str = ""    # written file, relative to the corpus folder
    size: tuple[int, int] = (0, 0)


def _lomiri_licences() -> dict[str, str]:
    """File name -> licence, read from the packages' Debian copyright files."""
    licences = {}
    for package in DEBIAN_PACKAGES[:2]:
        copyright_file = Path("/usr/share/doc") / package / "copyright"
        if not copyright_file.exists():
            continue
        files = []
        for line in copyright_file.read_text(errors="replace").splitlines():
            if line.startswith("Files:"):
                files = line.split(":", 1)[1].split()
            elif line.startswith("License:"):
                for name in files:
                    licences[Path(name).name] = line.split(":", 1)[1].strip()
            elif line.startswith((" ", "\t")) and files and ":" not in line:
                files += line.split()
    return licences


def find_sources() -> tuple[list[SourcePhoto], list[str]]:
    """The available source photos, and what is missing (with how to install it)."""
    sources, missing = [], []
    for name, licence in SKIMAGE_PHOTOS.items():
        sources.append(SourcePhoto(f"skimage/{name}", f"skimage.data.{name}", licence))
    licences = _lomiri_licences()
    lomiri = sorted(p for p in BACKGROUNDS.glob("*.*") if p.is_file() and p.name not in NOT_PHOTOS)
    if not lomiri:
        missing.append(f"the lomiri wallpapers in {BACKGROUNDS} (install: {INSTALL_HINT})")
    for path in lomiri:
        sources.append(SourcePhoto(f"lomiri/{path.name}", str(path), licences.get(path.name, "see Debian copyright")))
    mate = sorted(MATE_NATURE.glob("*.*")) if MATE_NATURE.exists() else []
    if not mate:
        missing.append(f"mate-backgrounds' nature photos in {MATE_NATURE} (install: {INSTALL_HINT})")
    for path in mate:
        sources.append(SourcePhoto(f"mate/{path.name}", str(path), "GPL-2+ (never commit)"))
    return sources, missing


def _open(source: SourcePhoto, max_side: int) -> Image.Image:
    if source.origin.startswith("skimage.data."):
        from skimage import data

        array = getattr(data, source.origin.rsplit(".", 1)[1])()
        array = array[0] if isinstance(array, tuple) else array  # stereo pairs: left view
        image = Image.fromarray(array).convert("RGB")
    else:
        from .images import load_rgb

        image = load_rgb(source.origin, max_pixels=60_000_000)
    return fit_within(image, max_side)


def build_demo_corpus(out: str | Path, max_side: int = 768) -> dict:
    """Write out/train/*.png, out/held_out/*.png and out/manifest.json; return the manifest."""
    out = Path(out)
    sources, missing = find_sources()
    for source in sources:
        source.split = "held_out" if source.key in HELD_OUT else "train"
        image = _open(source, max_side)
        source.file = f"{source.split}/{source.key.replace('/', '__').rsplit('.', 1)[0]}.png"
        source.size = image.size
        save_png(out / source.file, image)
    manifest = {
        "description": "CHIMLE demo corpus: offline photos split by source photograph",
        "max_side": max_side,
        "missing": missing,
        "num_train": sum(s.split == "train" for s in sources),
        "num_held_out": sum(s.split == "held_out" for s in sources),
        "photos": [asdict(s) for s in sources],
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())
