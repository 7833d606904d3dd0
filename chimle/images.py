"""Safe image reading and writing for the CLI, the Gradio app and the data pipeline.

Images from users and from data folders are untrusted: they may be empty, truncated, not
images at all, enormous, rotated by an EXIF tag, animated, 16-bit, transparent, CMYK or
palette-based. `load_rgb` turns every one of them into a plain 8-bit RGB `PIL.Image`, or
raises `ImageError` with a one-line message that names the file and the problem.

Tensors follow the package's convention: float (B, C, H, W), RGB in [-1, 1].
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from chimle.fileio import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

DEFAULT_MAX_PIXELS = 40_000_000

# 16-bit grey modes as Pillow opens them (PNG gives "I;16" in recent Pillow, "I" in older).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255, 255)


class ImageError(ValueError):
    """An image could not be loaded; the message names the file and the problem."""


def load_rgb(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *,
             name: str | None = None) -> Image.Image:
    """Read an image file (or its bytes) as an 8-bit RGB image, defensively.

    The header's size is checked against `max_pixels` before any pixel is decoded, so a
    small file declaring a huge image (a decompression bomb) costs no memory. The pixels
    are then decoded eagerly, inside the error handling, so a truncated file fails here
    rather than later in whoever uses the image. Truncated files are refused, never
    padded: Pillow's global LOAD_TRUNCATED_IMAGES is left alone.

    Conversions: the EXIF orientation is applied; animations give their first frame;
    16-bit grey is scaled to 8 bits (value / 257, so 65535 -> 255); transparency is
    composited onto white; CMYK, palette, grey and 1-bit images become RGB.

    Args:
        source: a file path, or the file's content as bytes (an upload).
        max_pixels: refuse images with more than this many pixels (width * height).
        name: what to call the image in error messages; defaults to the path, or
            "image data" for bytes.

    Returns:
        A loaded image of mode "RGB", independent of the file.

    Raises:
        ImageError: the file is missing, empty, not an image, truncated or corrupt, too
            large, or in a colour mode that has no RGB conversion.
    """
    image, label = _open_checked(source, max_pixels, name)
    with image:
        try:
            # An animation is positioned on its first frame when opened; load() decodes
            # only that frame.
            image.load()
            upright = ImageOps.exif_transpose(_to_eight_bit(image))  # a copy, off the file
        except Exception as error:  # untrusted data: any decoder failure is the file's fault
            message = _one_line(error)
            if "truncated" in message.lower():
                raise ImageError(f"{label}: file is truncated ({message})") from None
            raise ImageError(f"{label}: corrupt or unsupported image ({message})") from None
    return _to_rgb(upright, label)


def read_size(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *,
              name: str | None = None) -> tuple[int, int]:
    """An image file's (width, height) from its header, with `load_rgb`'s checks; no pixel is decoded.

    For a cheap early refusal (the studio checks an upload before Gradio opens it): a file
    that passes may still fail in `load_rgb` (a truncated one, for instance).

    Raises:
        ImageError: the file is missing, empty, not an image, or has more than `max_pixels`.
    """
    image, _ = _open_checked(source, max_pixels, name)
    with image:
        return image.size


def _open_checked(source: str | os.PathLike | bytes, max_pixels: int,
                  name: str | None) -> tuple[Image.Image, str]:
    """Open an image lazily (header only) and refuse it above `max_pixels`; returns it and its label."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image data"
        data = bytes(source)
        if not data:
            raise ImageError(f"{label}: empty file")
        opened: str | io.BytesIO = io.BytesIO(data)
    else:
        path = Path(source)
        label = name or str(path)
        _check_readable_file(path, label)
        opened = str(path)

    try:
        with warnings.catch_warnings():
            # Pillow warns between its MAX_IMAGE_PIXELS and twice that. `max_pixels` is
            # the limit here, checked just below with a clearer message, so the warning
            # would only be noise in front of the ImageError (or beside a load the
            # caller allowed on purpose).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(opened)
    except Image.DecompressionBombError as error:
        # Pillow refuses above twice its MAX_IMAGE_PIXELS before we see the size.
        pixels = _pixels_in_message(str(error))
        size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
        raise ImageError(
            f"{label}: image is too large ({size}; the limit is {max_pixels:,} pixels); "
            f"refusing to decode it") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image Pillow can read") from None
    except OSError as error:
        raise ImageError(f"{label}: cannot read file ({_one_line(error)})") from None

    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            f"{label}: image is too large ({width}x{height} = {width * height:,} "
            f"pixels; the limit is {max_pixels:,} pixels); refusing to decode it")
    return image, label


def _check_readable_file(path: Path, label: str) -> None:
    """Raise ImageError unless `path` is an existing, non-empty regular file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except OSError as error:
        raise ImageError(f"{label}: cannot read file ({_one_line(error)})") from None
    if path.is_dir():
        raise ImageError(f"{label}: is a folder, not an image file")
    if stat.st_size == 0:
        raise ImageError(f"{label}: empty file")


def _pixels_in_message(message: str) -> int | None:
    """The pixel count in Pillow's DecompressionBombError message, if present."""
    match = re.search(r"\((\d+) pixels\)", message)
    return int(match.group(1)) if match else None


def _one_line(error: BaseException) -> str:
    """An exception as a single line of text."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit grey ("I;16", "I") and float ("F") images to 8-bit "L".

    Pillow's own convert("L") clips 16-bit values at 255 instead of scaling them, which
    turns almost every pixel white. Dividing by 257 maps 0..65535 exactly onto 0..255.
    Float images have no standard range: values up to 1 are read as [0, 1], larger ones
    as [0, 255].
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64) / 257.0
    elif image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        values = np.nan_to_num(values)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
    else:
        return image
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    converted = Image.fromarray(grey, mode="L")
    converted.info = dict(image.info)  # keep the EXIF orientation for exif_transpose
    if "exif" not in converted.info:
        exif = image.getexif()
        if exif:
            converted.info["exif"] = exif.tobytes()
    return converted


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Convert a loaded single-frame image to RGB, compositing transparency onto white.

    An RGB image is returned as it is: the caller passes a copy already.
    """
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(f"{label}: colour mode {image.mode} cannot be converted to RGB "
                         f"({_one_line(error)})") from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) float tensor in [-1, 1].

    Raises:
        ValueError: if the image is not mode "RGB" (use `load_rgb` to get one).
    """
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}; "
                         "load images with chimle.images.load_rgb")
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3)
    return pixels.permute(2, 0, 1)[None].float() / 127.5 - 1


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) or (3, H, W) tensor in [-1, 1] as an RGB image.

    Values are clamped to [-1, 1] and rounded to the nearest 8-bit level, so
    `tensor_to_pil(pil_to_tensor(img))` reproduces `img` exactly.

    Raises:
        ValueError: for any other shape, or for NaN or infinite values (a model that
            diverged should not silently produce a black picture).
    """
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected an RGB image tensor of shape (1, 3, H, W) or (3, H, W), "
            f"got {tuple(image.shape)}")
    image = image.detach().cpu().float()
    if not torch.isfinite(image).all():
        raise ValueError("image tensor contains NaN or infinite values")
    levels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, H, W)
    return Image.fromarray(levels.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def save_png(path: str | os.PathLike, image: Image.Image | torch.Tensor) -> None:
    """Write an image (or an RGB tensor in [-1, 1]) as a lossless PNG, atomically.

    The PNG is encoded in memory first, so a failed encode never touches the file, and
    `atomic_write_bytes` means readers see either the old file or the complete new one.
    """
    if isinstance(image, torch.Tensor):
        image = tensor_to_pil(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale (Lanczos) so the longer side is at most `max_side`, keeping the aspect ratio.

    Never upscales: an image that already fits is returned unchanged (the same object).
    """
    if int(max_side) != max_side or max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side!r}")
    width, height = image.size
    longest = max(width, height)
    if longest <= max_side:
        return image
    scale = max_side / longest
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.LANCZOS)
