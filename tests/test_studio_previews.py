"""Preview files: each image written once, shared by widgets, old ones removed."""

from __future__ import annotations

import numpy as np
from PIL import Image

from chimle.studio.previews import KEEP_RESPONSES, PreviewFiles


def _image(value: int, size=(24, 16)) -> Image.Image:
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    pixels[0, 0] = (value + 1) % 256, 7, 200
    return Image.fromarray(pixels)


def test_the_same_pixels_are_one_file_written_once_and_lossless(tmp_path):
    previews = PreviewFiles(tmp_path / "previews")
    first = previews.path(_image(10))
    mtime = (tmp_path / "previews" / first.split("/")[-1]).stat().st_mtime_ns
    assert previews.path(_image(10)) == first
    assert (tmp_path / "previews" / first.split("/")[-1]).stat().st_mtime_ns == mtime  # not written again
    assert previews.path(_image(11)) != first
    assert previews.path(_image(10, size=(16, 24))) != first  # same bytes, another shape
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(_image(10)))
    assert not list((tmp_path / "previews").glob(".*"))  # no partial files left behind


def test_files_no_recent_response_showed_are_deleted(tmp_path):
    previews = PreviewFiles(tmp_path)
    kept = previews.path(_image(0))
    old = [previews.path(_image(1))]
    previews.end_response()
    for response in range(KEEP_RESPONSES):
        previews.path(_image(0))  # shown in every response
        old.append(previews.path(_image(2 + response)))
        previews.end_response()
    files = {path.name for path in tmp_path.iterdir()}
    assert kept.split("/")[-1] in files
    assert old[0].split("/")[-1] not in files  # last shown KEEP_RESPONSES + 1 responses ago
    assert all(path.split("/")[-1] in files for path in old[1:])
