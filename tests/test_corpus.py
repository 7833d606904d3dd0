"""The demo corpus: offline photos, split by source photograph, licences recorded."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from chimle.corpus import HELD_OUT, NOT_PHOTOS, build_demo_corpus, find_sources


def test_demo_corpus_is_split_by_photo_and_records_every_file(tmp_path):
    sources, missing = find_sources()
    if missing:
        pytest.skip(f"wallpaper packages not installed: {missing[0]}")
    manifest = build_demo_corpus(tmp_path, max_side=96)
    photos = manifest["photos"]
    assert json.loads(json.dumps(manifest)) == json.loads((tmp_path / "manifest.json").read_text())
    keys = [p["key"] for p in photos]
    assert len(keys) == len(set(keys)) == manifest["num_train"] + manifest["num_held_out"]
    held_out = {p["key"] for p in photos if p["split"] == "held_out"}
    assert held_out == HELD_OUT
    for photo in photos:
        path = tmp_path / photo["file"]
        assert path.parent.name == photo["split"]
        with Image.open(path) as image:
            assert max(image.size) <= 96 and image.mode == "RGB"
        assert not any(photo["key"].endswith(name) for name in NOT_PHOTOS)
    # Training and held-out folders never share a source photo.
    train_files = {p.name for p in (tmp_path / "train").iterdir()}
    held_files = {p.name for p in (tmp_path / "held_out").iterdir()}
    assert train_files and held_files and not train_files & held_files
    licences = {p["key"]: p["licence"] for p in photos}
    assert licences["lomiri/seeding_by_Clements_Engelhardt.jpg"] == "CC0-1.0"
    assert all("GPL" in licence for key, licence in licences.items() if key.startswith("mate/"))
