"""Rebuild assets/: the studio's example inputs, from held-out photos of the demo corpus.

    python -m tools.make_assets --corpus data/demo

Only held-out photos with licences that allow redistribution (CC0, CC-BY, public domain)
are used, never a GPL-licensed one; assets/ATTRIBUTION.md credits each and says what was
changed. Grey versions serve colourization, heavily compressed JPEGs serve decompression,
small copies serve x8 super-resolution, and synthetic night versions (the training
degradation of `synthetic_night_to_day`, seeded) serve the synthetic night-to-day model;
assets/examples.json says which task each serves (the studio shows a model the examples
of its task).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import torch
from PIL import Image, ImageOps

from chimle.corpus import read_manifest
from chimle.fileio import atomic_write_bytes, atomic_write_text
from chimle.images import pil_to_tensor, tensor_to_pil
from chimle.tasks import SyntheticNightToDay

EXAMPLES = [  # (corpus key, asset name, kind, author)
    ("lomiri/Picture_0B_by_freespace.jpg", "fig-grey.png", "grey", 'Trevor "Freespace"'),
    ("lomiri/friends_by_Aitzol_Berasategi.jpg", "dogs-grey.png", "grey", "Aitzol Berasategi"),
    ("lomiri/aitzgorri_by_Aitzol_Berasategi.jpg", "mountain-grey.png", "grey", "Aitzol Berasategi"),
    ("lomiri/seeding_by_Clements_Engelhardt.jpg", "dandelions-jpeg-q5.jpg", "jpeg", "Clemens Engelhardt"),
    ("skimage/chelsea", "cat-jpeg-q5.jpg", "jpeg", "Stefan van der Walt (scikit-image)"),
    ("skimage/chelsea", "cat-small-48px.png", "small", "Stefan van der Walt (scikit-image)"),
    ("lomiri/friends_by_Aitzol_Berasategi.jpg", "dogs-synthetic-night.png", "night", "Aitzol Berasategi"),
]
MAX_SIDE = 384
SMALL_SIDE = 48  # x8 super-resolution turns it into a 384 px photo
# The tasks whose models the studio shows each kind of example with (assets/examples.json).
KIND_TASKS = {"grey": ("colourization",), "jpeg": ("jpeg",), "small": ("super_resolution",),
              "night": ("synthetic_night_to_day",)}
DESCRIPTIONS = {
    "grey": "converted to grey",
    "jpeg": "re-encoded as JPEG quality 5",
    "small": f"downscaled to {SMALL_SIDE} px (the input of x8 super-resolution)",
    "night": "darkened by the synthetic night formula of `synthetic_night_to_day` (seed 0)",
}


def degrade(image: Image.Image, kind: str) -> tuple[Image.Image, str]:
    """The example input of `kind` made from an RGB photo, and its image format."""
    if kind == "grey":
        return ImageOps.grayscale(image), "PNG"
    if kind == "jpeg":
        return image, "JPEG"
    if kind == "small":
        small = image.copy()
        small.thumbnail((SMALL_SIDE, SMALL_SIDE), Image.LANCZOS)
        return small, "PNG"
    if kind == "night":
        night = SyntheticNightToDay().degrade(pil_to_tensor(image), torch.Generator().manual_seed(0))
        return tensor_to_pil(night), "PNG"
    raise ValueError(f"unknown example kind {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/demo")
    parser.add_argument("--out", default="assets")
    args = parser.parse_args()
    manifest = {p["key"]: p for p in read_manifest(args.corpus)["photos"]}
    out = Path(args.out)
    lines = ["# Example inputs", "",
             "Held out from every shipped model's training. Each is a downscaled copy (longer side "
             f"{MAX_SIDE} px) of the source photo, then changed as its row says. Rebuilt by "
             "`python -m tools.make_assets`.", "",
             "| file | source | author | licence | changed |", "|---|---|---|---|---|"]
    for key, name, kind, author in EXAMPLES:
        photo = manifest[key]
        if photo["split"] != "held_out" or "GPL" in photo["licence"]:
            raise SystemExit(f"{key} is not a held-out photo that may be committed")
        image = Image.open(Path(args.corpus) / photo["file"]).convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
        example, image_format = degrade(image, kind)
        buffer = io.BytesIO()
        example.save(buffer, format=image_format, **({"quality": 5} if image_format == "JPEG" else {}))
        atomic_write_bytes(out / name, buffer.getvalue())
        lines.append(f"| {name} | {photo['origin']} | {author} | {photo['licence']} | {DESCRIPTIONS[kind]} |")
    atomic_write_text(out / "ATTRIBUTION.md", "\n".join(lines) + "\n")
    examples: dict[str, list[str]] = {}
    for _, name, kind, _ in EXAMPLES:
        for task in KIND_TASKS[kind]:
            examples.setdefault(task, []).append(name)
    about = ("Which example photos the studio shows with a model of each task. Written by python -m "
             "tools.make_assets.")
    atomic_write_text(out / "examples.json", json.dumps({"about": about, "examples": examples}, indent=2) + "\n")
    print(f"wrote {len(EXAMPLES)} examples to {out}")


if __name__ == "__main__":
    main()
