"""What the user painted on the result (Gradio's image editor) as a mask and colours for the session.

The editor gives its background, its layers and their composite as RGBA arrays. The
strokes are the layers' opaque pixels: their alpha is the mask (soft at a brush's
antialiased edge), their colour the hint. Where a Gradio release returns no layers, the
pixels where the composite differs from the background are taken instead (a stroke of
exactly the background's colour is then lost: it would hint nothing anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .session import StudioError


@dataclass
class Strokes:
    """Painted strokes at the result's size.

    Attributes:
        mask: (h, w) in [0, 1], 0 where nothing is painted.
        colours: (1, 3, h, w) RGB in [-1, 1]; meaningful only where the mask is set.
    """

    mask: torch.Tensor
    colours: torch.Tensor


def _rgba(image: Any) -> np.ndarray | None:
    """An editor image (array or PIL image) as an (H, W, 4) uint8 array."""
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGBA"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3 + [np.full_like(array, 255)], -1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise StudioError("the painted image has an unexpected shape")
    if array.shape[2] == 3:
        array = np.concatenate([array, np.full_like(array[..., :1], 255)], -1)
    return array.astype(np.uint8)


def _fit(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """`array` (H, W, C) resized to `size` = (h, w) if it is not that size already."""
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    channels = [np.asarray(Image.fromarray(array[..., c]).resize((w, h), resample)) for c in range(array.shape[2])]
    return np.stack(channels, -1)


def strokes_from_editor(value: dict | None, size: tuple[int, int]) -> Strokes | None:
    """The strokes of an image editor's value, at `size` = (h, w); None if nothing is painted.

    Layers are merged: the mask is their combined opacity, a pixel's colour that of the
    topmost layer painted there. A canvas of another size than the result (the editor may
    scale it) is resized to the result's size.
    """
    if not value:
        return None
    layers = [array for array in (_rgba(layer) for layer in value.get("layers") or []) if array is not None]
    if layers and all(layer.shape == layers[0].shape for layer in layers):
        colour = np.zeros(layers[0].shape[:2] + (3,), np.uint8)
        clear = np.ones(layers[0].shape[:2], np.float32)  # how much shows through every layer so far
        for layer in layers:  # bottom first: a stroke's colour is the topmost layer's painted there
            painted = layer[..., 3] > 0
            colour[painted] = layer[..., :3][painted]  # the stroke's own colour, also at a soft edge
            clear *= 1 - layer[..., 3] / 255.0
        alpha = np.round((1 - clear) * 255).astype(np.uint8)
        rgba = np.concatenate([colour, alpha[..., None]], -1)
    else:
        background, composite = _rgba(value.get("background")), _rgba(value.get("composite"))
        if background is None or composite is None or background.shape != composite.shape:
            return None
        changed = (background[..., :3] != composite[..., :3]).any(-1)
        rgba = np.concatenate([composite[..., :3], (changed * 255).astype(np.uint8)[..., None]], -1)
    rgba = np.concatenate([_fit(rgba[..., :3], size, Image.Resampling.NEAREST),
                           _fit(rgba[..., 3:], size, Image.Resampling.BOX)], -1)  # area shares
    mask = torch.from_numpy(rgba[..., 3].astype(np.float32) / 255)
    if not (mask > 0).any():
        return None
    colours = torch.from_numpy(rgba[..., :3].astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    return Strokes(mask, colours)


def describe_strokes(strokes: Strokes | None) -> str:
    """What the user has painted, in words: the share of the result and the box it spans.

    Shown after every stroke, so the user sees that the editor took it (and a browser test
    can wait for the strokes to have reached the server before pressing a button).
    """
    if strokes is None:
        return "Nothing painted yet: paint a region to re-draw, or colour strokes as hints."
    painted = strokes.mask > 0
    rows, columns = painted.any(1).nonzero()[:, 0], painted.any(0).nonzero()[:, 0]
    height, width = int(rows[-1] - rows[0]) + 1, int(columns[-1] - columns[0]) + 1
    share = float(strokes.mask.mean())
    return (f"Painted {f'{share:.0%}' if share >= 0.01 else 'under 1%'} of the result, within {width} x {height} px: "
            f"**Re-draw region** or **Find colours**.")


def canvas(image_file: str | None) -> dict | None:
    """An editor value that shows the image in `image_file` with nothing painted on it.

    A file, not a PIL image: Gradio saves a PIL image into its cache by rewriting the file
    named by its content in place, once for the background and once for the composite, and
    again each time the same result is sent, while the page may be fetching it. The editor
    then loaded half a file and took no strokes (in CI). The studio's preview files are
    written once each, atomically (`previews.PreviewFiles`).
    """
    if image_file is None:
        return None
    return {"background": image_file, "layers": [], "composite": image_file}
