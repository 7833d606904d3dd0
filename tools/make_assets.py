"""Rebuild assets/: the studio's example inputs, from held-out photos of the demo corpus.

    python -m tools.make_assets --corpus data/demo

Only held-out photos with licences that allow redistribution (CC0, CC-BY, public domain)
are used, never a GPL-licensed one; assets/ATTRIBUTION.md credits each and says what was
changed. Grey versions serve colourization, heavily compressed JPEGs serve decompression.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image, ImageOps

from chimle.corpus import read_manifest
from chimle.fileio import atomic_write_bytes, atomic_write_text

EXAMPLES = [  # (corpus key, asset name, kind, author)
    ("lomiri/Picture_0B_by_freespace.jpg", "fig-grey.png", "grey", 'Trevor "Freespace"'),
    ("lomiri/friends_by_Aitzol_Berasategi.jpg", "dogs-grey.png", "grey", "Aitzol Berasategi"),
    ("lomiri/aitzgorri_by_Aitzol_Berasategi.jpg", "mountain-grey.png", "grey", "Aitzol Berasategi"),
    ("lomiri/seeding_by_Clements_Engelhardt.jpg", "dandelions-jpeg-q5.jpg", "jpeg", "Clemens Engelhardt"),
    ("skimage/chelsea", "cat-jpeg-q5.jpg", "jpeg", "Stefan van der Walt (scikit-image)"),
]
MAX_SIDE = 384


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/demo")
    parser.add_argument("--out", default="assets")
    args = parser.parse_args()
    manifest = {p["key"]: p for p in read_manifest(args.corpus)["photos"]}
    out = Path(args.out)
    lines = ["# Example inputs", "",
             "Held out from every shipped model's training. Each is a downscaled copy (longer side "
             f"{MAX_SIDE} px) of the source photo, converted to grey or re-encoded as JPEG quality 5 "
             "as its name says. Rebuilt by `python -m tools.make_assets`.", "",
             "| file | source | author | licence |", "|---|---|---|---|"]
    for key, name, kind, author in EXAMPLES:
        photo = manifest[key]
        if photo["split"] != "held_out" or "GPL" in photo["licence"]:
            raise SystemExit(f"{key} is not a held-out photo that may be committed")
        image = Image.open(Path(args.corpus) / photo["file"]).convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
        buffer = io.BytesIO()
        if kind == "grey":
            ImageOps.grayscale(image).save(buffer, format="PNG")
        else:
            image.save(buffer, format="JPEG", quality=5)
        atomic_write_bytes(out / name, buffer.getvalue())
        lines.append(f"| {name} | {photo['origin']} | {author} | "
                     f"{photo['licence']} |")
    atomic_write_text(out / "ATTRIBUTION.md", "\n".join(lines) + "\n")
    print(f"wrote {len(EXAMPLES)} examples to {out}")


if __name__ == "__main__":
    main()
