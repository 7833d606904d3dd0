"""Working-size images for the page, encoded once each and shared by every widget that shows them.

An edit shows the new result in three widgets (the result, the last image of the level
strip, the input/result slider) and leaves most other images as they were. Handing Gradio
PIL images makes it encode each one again, per widget, as a PNG at zlib's default level:
about 20 ms per 256x256 image on one core, most of an edit's time outside the model. Here
each distinct image is written once, as a PNG at zlib level 1 (lossless, about 5x faster
to write and 7% larger), and the widgets get its path; an image that did not change (the
grey input, the levels below an edited one) is not encoded again. The app serves the folder
as a static path, so Gradio does not hash and copy each file into its cache either.
Downloads do not come from here: Save writes the full-size result itself.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

PNG_COMPRESS_LEVEL = 1
# The page fetches a response's images right after it arrives, straight from these files (a
# static path): those of the last few responses stay, in case it is slow to.
KEEP_RESPONSES = 8


class PreviewFiles:
    """One session's preview images as files, named by their content.

    `path(image)` gives the file for an image, writing it only if no image with the same
    pixels was written before. `end_response()` marks what the page was just given; files
    no response of the last `KEEP_RESPONSES` used are deleted, so a session keeps a few
    dozen files however long it edits.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._written: dict[str, Path] = {}
        self._recent: list[set[str]] = []
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def path(self, image: Image.Image) -> str:
        pixels = np.asarray(image)
        key = hashlib.blake2b(pixels.tobytes(), digest_size=16,
                              person=f"{pixels.shape}".encode()[:16]).hexdigest()
        with self._lock:
            self._used.add(key)
            if key not in self._written:
                self.folder.mkdir(parents=True, exist_ok=True)
                target = self.folder / f"{key}.png"
                partial = self.folder / f".{key}.{threading.get_ident()}.part"
                image.save(partial, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
                os.replace(partial, target)  # a reader never sees half a file
                self._written[key] = target
            return str(self._written[key])

    def end_response(self) -> None:
        """Forget files that none of the last `KEEP_RESPONSES` responses showed."""
        with self._lock:
            self._recent = (self._recent + [self._used])[-KEEP_RESPONSES:]
            self._used = set()
            keep = set().union(*self._recent)
            for key in [key for key in self._written if key not in keep]:
                self._written.pop(key).unlink(missing_ok=True)
