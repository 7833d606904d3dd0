"""Tests for chimle.images: defensive loading, conversions and writing, on real photos."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFile

from chimle.images import (
    ImageError,
    fit_within,
    load_rgb,
    pil_to_tensor,
    save_png,
    tensor_to_pil,
)


def photo(name: str = "astronaut", width: int = 96, height: int = 64) -> np.ndarray:
    """A real photo resized to (height, width, 3) uint8."""
    array = getattr(skimage.data, name)()[..., :3]
    return np.array(Image.fromarray(array).resize((width, height), Image.Resampling.BICUBIC))


def write(path: Path, image: Image.Image, **save_args) -> Path:
    image.save(path, **save_args)
    return path


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def png_bytes(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG, built row by row so no full image is allocated.

    A 20000x20000 one compresses to about 50 KB, but decodes to 400 MB in Pillow.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed black pixels
    compressed = b"".join(compressor.compress(row) for _ in range(height))
    compressed += compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed)
            + chunk(b"IEND", b""))


# --- Ordinary files and failures -----------------------------------------------------------


def test_png_loads_exactly_from_path_and_bytes(tmp_path):
    pixels = photo("chelsea")
    path = write(tmp_path / "cat.png", Image.fromarray(pixels))
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (96, 64)
    np.testing.assert_array_equal(np.asarray(image), pixels)
    np.testing.assert_array_equal(np.asarray(load_rgb(path.read_bytes())), pixels)
    np.testing.assert_array_equal(np.asarray(load_rgb(str(path))), pixels)


def test_loaded_image_does_not_depend_on_the_file(tmp_path):
    path = write(tmp_path / "cat.png", Image.fromarray(photo("chelsea")))
    image = load_rgb(path)
    path.unlink()
    assert np.asarray(image).shape == (64, 96, 3)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file") as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageError, match="upload.png: empty file"):
        load_rgb(b"", name="upload.png")


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(ImageError, match="missing.png: file not found"):
        load_rgb(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_rgb(tmp_path)


def test_text_renamed_to_png_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n" * 10)
    with pytest.raises(ImageError, match="not an image Pillow can read") as info:
        load_rgb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_refused_without_global_setting(tmp_path, fmt):
    whole = io.BytesIO()
    Image.fromarray(photo("coffee", 128, 96)).save(whole, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_rgb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_one_pixel_image_loads(tmp_path):
    path = write(tmp_path / "dot.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    image = load_rgb(path)
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (10, 20, 30)


# --- Decompression bombs -------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any image's pixels get decoded."""
    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_bomb_builder_makes_valid_pngs():
    # The bomb tests below only mean something if the bomb is a real, decodable image.
    with Image.open(io.BytesIO(png_bytes(37, 5))) as image:
        image.load()
        assert image.size == (37, 5) and image.getextrema() == (0, 0)


def test_bomb_over_max_pixels_is_refused_before_decoding(tmp_path, no_decoding):
    # 10000x10000: above Pillow's warning threshold, below its hard limit; our check
    # decides, from the header alone.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(10_000, 10_000))
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageError, match="too large") as info:
        load_rgb(path)
    message = str(info.value)
    assert "10000x10000" in message and "40,000,000" in message and str(path) in message


def test_huge_bomb_refused_by_pillow_becomes_image_error(tmp_path, no_decoding):
    # 20000x20000 = 400 M pixels: Pillow itself refuses it while reading the header.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20_000, 20_000))
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match="too large") as info:
        load_rgb(path)
    assert "400,000,000 pixels" in str(info.value) and str(path) in str(info.value)


def test_max_pixels_is_the_callers_limit(tmp_path):
    path = write(tmp_path / "photo.png", Image.fromarray(photo("rocket", 64, 48)))
    with pytest.raises(ImageError, match="64x48") as info:
        load_rgb(path, max_pixels=64 * 48 - 1)
    assert "3,071" in str(info.value)
    assert load_rgb(path, max_pixels=64 * 48).size == (64, 48)


# --- Conversions -----------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    pixels = photo("astronaut", 96, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; rotate 90 degrees clockwise
    path = write(tmp_path / "turned.jpg", Image.fromarray(pixels), quality=95,
                 exif=exif.tobytes())
    image = load_rgb(path)
    assert image.size == (64, 96)
    loaded = np.asarray(image)
    clockwise = np.rot90(pixels, k=-1)
    assert mean_abs_diff(loaded, clockwise) < 4
    assert mean_abs_diff(loaded, np.rot90(pixels, k=1)) > 20  # not the other way round
    assert image.getexif().get(0x0112) in (None, 1)  # not rotated twice by a later reader


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = write(tmp_path / "deep.png", Image.fromarray(values))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # really a 16-bit file
    loaded = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(loaded[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])

    grey = np.asarray(Image.fromarray(photo("coffee")).convert("L"))
    path = write(tmp_path / "photo16.png", Image.fromarray(grey.astype(np.uint16) * 257))
    np.testing.assert_array_equal(np.asarray(load_rgb(path))[..., 1], grey)


def test_transparency_is_composited_onto_white(tmp_path):
    rgb = photo("chelsea", 48, 32)
    alpha = np.full((32, 48), 255, dtype=np.uint8)
    alpha[:, :16] = 0
    alpha[:, 16:32] = 128
    path = write(tmp_path / "cutout.png", Image.fromarray(np.dstack([rgb, alpha])))
    loaded = np.asarray(load_rgb(path)).astype(np.int64)
    assert (loaded[:, :16] == 255).all()
    np.testing.assert_array_equal(loaded[:, 32:], rgb[:, 32:])
    blended = (rgb[:, 16:32].astype(np.int64) * 128 + 255 * 127) / 255
    assert np.abs(loaded[:, 16:32] - blended).max() <= 1

    grey_alpha = Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA")
    loaded = np.asarray(load_rgb(write(tmp_path / "la.png", grey_alpha)))
    assert (loaded[:, :16] == 255).all()
    np.testing.assert_array_equal(loaded[:, 32:, 2], rgb[:, 32:, 0])


def test_palette_images_with_and_without_transparency(tmp_path):
    palette_image = Image.fromarray(photo("coffee", 48, 32)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16)
    path = write(tmp_path / "palette.png", palette_image)
    np.testing.assert_array_equal(np.asarray(load_rgb(path)),
                                  np.asarray(palette_image.convert("RGB")))

    index = palette_image.getpixel((0, 0))
    path = write(tmp_path / "palette_alpha.png", palette_image, transparency=index)
    loaded = np.asarray(load_rgb(path))
    transparent = np.asarray(palette_image) == index
    assert transparent.any() and not transparent.all()
    assert (loaded[transparent] == 255).all()
    np.testing.assert_array_equal(loaded[~transparent],
                                  np.asarray(palette_image.convert("RGB"))[~transparent])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    pixels = photo("rocket", 64, 48)
    path = write(tmp_path / "print.jpg", Image.fromarray(pixels).convert("CMYK"), quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert mean_abs_diff(np.asarray(image), pixels) < 4


def test_grey_and_one_bit_images_become_rgb(tmp_path):
    grey = np.asarray(Image.fromarray(photo("astronaut")).convert("L"))
    loaded = np.asarray(load_rgb(write(tmp_path / "grey.png", Image.fromarray(grey))))
    assert loaded.shape == (64, 96, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], grey)
    bits = Image.fromarray(grey).convert("1")
    loaded = np.asarray(load_rgb(write(tmp_path / "bits.png", bits)))
    assert set(np.unique(loaded)) <= {0, 255} and len(np.unique(loaded)) == 2


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(tmp_path, fmt):
    frames = [Image.fromarray(photo(name, 48, 32)) for name in ("astronaut", "coffee", "chelsea")]
    path = tmp_path / f"anim.{fmt.lower()}"
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
        first = np.asarray(raw.convert("RGB"))
        raw.seek(1)
        second = np.asarray(raw.convert("RGB"))
    loaded = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(loaded, first)
    assert mean_abs_diff(loaded, second) > 10
    if fmt == "WEBP":  # lossless: frame 0 is the original photo
        np.testing.assert_array_equal(loaded, np.asarray(frames[0]))


# --- Tensors, saving, resizing ---------------------------------------------------------------


def test_pil_tensor_round_trip_is_exact():
    pixels = photo("chelsea", 40, 24)
    pixels[0, 0] = (0, 128, 255)
    tensor = pil_to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (1, 3, 24, 40) and tensor.dtype == torch.float32
    assert tensor.min() == -1 and tensor.max() == 1
    assert torch.equal(tensor[0, :, 0, 0], torch.tensor([0.0, 128.0, 255.0]) / 127.5 - 1)
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(tensor)), pixels)
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(tensor[0])), pixels)


def test_tensor_to_pil_rounds_and_clamps():
    levels = torch.tensor([127.6, 127.4, 0.4, 254.6]) / 127.5 - 1
    tensor = torch.cat([levels, torch.tensor([-3.0, 3.0])]).view(1, 1, 6).expand(3, 1, 6)
    assert np.asarray(tensor_to_pil(tensor))[0, :, 0].tolist() == [128, 127, 0, 255, 0, 255]


def test_tensor_to_pil_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        tensor_to_pil(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        tensor_to_pil(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="mode 'L'"):
        pil_to_tensor(Image.new("L", (2, 2)))


def test_save_png_is_lossless_atomic_and_overwrites(tmp_path):
    pixels = photo("coffee", 40, 24)
    path = tmp_path / "out" / "sample.png"
    save_png(path, pil_to_tensor(Image.fromarray(pixels)))
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), pixels)
    other = photo("rocket", 40, 24)
    save_png(path, Image.fromarray(other))
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), other)
    assert sorted(p.name for p in path.parent.iterdir()) == ["sample.png"]  # no temp left


def test_save_png_leaves_old_file_when_encoding_fails(tmp_path):
    path = tmp_path / "keep.png"
    save_png(path, Image.fromarray(photo("coffee", 8, 8)))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        save_png(path, torch.zeros(2, 2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_fit_within_downscales_and_never_upscales():
    landscape = Image.fromarray(photo("astronaut", 400, 300))
    assert fit_within(landscape, 128).size == (128, 96)
    portrait = Image.fromarray(photo("astronaut", 90, 300))
    assert fit_within(portrait, 100).size == (30, 100)
    assert fit_within(landscape, 400) is landscape
    assert fit_within(landscape, 1000) is landscape
    with pytest.raises(ValueError):
        fit_within(landscape, 0)

