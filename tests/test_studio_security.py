"""Where the studio may train, folder confinement and safe zip extraction."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from chimle.studio.security import (UnsafePathError, ZipLimits, confine, confine_data_folder, data_folders,
                                    extract_images_zip, on_spaces, training_policy)

from .studio_helpers import photo


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    photo("coffee", (32, 24)).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path, members: dict[str, bytes], symlinks: dict[str, str] | None = None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


# -- training policy ----------------------------------------------------------------------


@pytest.mark.parametrize("environ, expected", [
    ({}, False), ({"SYSTEM": "spaces"}, True), ({"SPACE_ID": "user/app"}, True), ({"SYSTEM": "other"}, False)])
def test_spaces_detection(environ, expected):
    assert on_spaces(environ) is expected


@pytest.mark.parametrize("host, share, allow, environ, allowed, reason", [
    ("127.0.0.1", False, False, {}, True, "only listens on this machine"),
    ("localhost", False, False, {}, True, "only listens"),
    ("0.0.0.0", False, False, {}, False, "--allow-training"),
    ("0.0.0.0", False, True, {}, True, "--allow-training"),
    ("127.0.0.1", True, False, {}, False, "public link"),
    ("127.0.0.1", False, True, {"SYSTEM": "spaces"}, False, "Hugging Face Spaces"),
    ("0.0.0.0", False, True, {"SPACE_ID": "a/b"}, False, "Hugging Face Spaces"),
])
def test_training_policy(host, share, allow, environ, allowed, reason):
    policy = training_policy(host, share, allow, environ)
    assert policy.allowed is allowed
    assert reason in policy.reason


# -- folder confinement -------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "photos" / "street").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (tmp_path / "secret").mkdir()
    return root


def test_confine_accepts_names_inside_the_root(data_root):
    assert confine("photos", data_root) == (data_root / "photos").resolve()
    assert confine("photos/street", data_root) == (data_root / "photos" / "street").resolve()
    assert confine(str(data_root / "photos"), data_root) == (data_root / "photos").resolve()


@pytest.mark.parametrize("name, message", [
    ("", "no folder"), ("../secret", "'..'"), ("photos/../../secret", "'..'"), ("/etc", "outside"),
    ("photos\x00", "NUL")])
def test_confine_rejects_escapes(data_root, name, message):
    with pytest.raises(UnsafePathError, match=message):
        confine(name, data_root)


def test_symlinks_that_leave_the_root_are_rejected(data_root, tmp_path):
    (data_root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePathError, match="outside"):
        confine("link", data_root)
    # A link hidden inside an allowed folder is caught by the data-folder check.
    (tmp_path / "secret" / "x.png").write_bytes(_png_bytes())
    (data_root / "photos" / "x.png").symlink_to(tmp_path / "secret" / "x.png")
    with pytest.raises(UnsafePathError, match="link to outside"):
        confine_data_folder("photos", data_root)
    (data_root / "photos" / "x.png").unlink()
    assert confine_data_folder("photos", data_root) == (data_root / "photos").resolve()
    with pytest.raises(UnsafePathError, match="no such folder"):
        confine_data_folder("missing", data_root)


def test_data_folders_lists_visible_folders(data_root):
    assert data_folders(data_root) == ["photos", "photos/street"]
    assert data_folders(data_root / "nothing") == []


# -- zip extraction -----------------------------------------------------------------------


def test_zip_images_are_extracted_and_other_files_skipped(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"a.png": _png_bytes(), "sub/b.PNG": _png_bytes(), "notes.txt": b"x",
                                        "__MACOSX/._a.png": b"junk", ".DS_Store": b"junk"})
    result = extract_images_zip(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in result.images) == ["a.png", "sub/b.PNG"]
    assert sorted(result.skipped) == [".DS_Store", "__MACOSX/._a.png", "notes.txt"]
    assert (tmp_path / "out" / "a.png").read_bytes() == _png_bytes()


@pytest.mark.parametrize("name, message", [
    ("../evil.png", "'..'"), ("a/../../evil.png", "'..'"), ("/abs/evil.png", "absolute"),
    ("C:/evil.png", "absolute"), ("..\\evil.png", "'..'")])
def test_zip_names_that_escape_are_refused(tmp_path, name, message):
    archive = _zip(tmp_path / "a.zip", {"good.png": _png_bytes(), name: _png_bytes()})
    with pytest.raises(UnsafePathError, match=message):
        extract_images_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.png").exists()


def test_zip_symlinks_are_refused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"good.png": _png_bytes()}, symlinks={"link.png": "/etc/passwd"})
    with pytest.raises(UnsafePathError, match="symbolic link"):
        extract_images_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_limits_on_count_and_inflated_size(tmp_path):
    many = _zip(tmp_path / "many.zip", {f"{i}.png": _png_bytes() for i in range(5)})
    with pytest.raises(UnsafePathError, match="5 images; the limit is 4"):
        extract_images_zip(many, tmp_path / "out", ZipLimits(max_files=4))
    bomb = _zip(tmp_path / "bomb.zip", {"big.png": b"\0" * 3_000_000})  # compresses to a few KB
    assert bomb.stat().st_size < 50_000
    with pytest.raises(UnsafePathError, match="limit is 1,000,000"):
        extract_images_zip(bomb, tmp_path / "out", ZipLimits(max_total_bytes=1_000_000))
    assert not (tmp_path / "out").exists()


def test_zip_single_file_limit_is_counted_while_inflating(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"a.png": _png_bytes(), "big.png": b"\0" * 2_000_000})
    with pytest.raises(UnsafePathError, match="big.png' is larger than 1,000,000 bytes unpacked"):
        extract_images_zip(archive, tmp_path / "out", ZipLimits(max_file_bytes=1_000_000))
    assert not (tmp_path / "out").exists()


def test_zip_whose_directory_lies_about_sizes_is_refused(tmp_path):
    archive = _zip(tmp_path / "liar.zip", {"big.png": b"\0" * 2_000_000})
    data = bytearray(archive.read_bytes())
    # Rewrite the central directory's uncompressed size of the member to 10 bytes.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(UnsafePathError, match="could not be unpacked"):
        extract_images_zip(archive, tmp_path / "out", ZipLimits(max_total_bytes=1_000_000))
    assert not (tmp_path / "out").exists()


def test_not_a_zip_and_no_images(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(UnsafePathError, match="not a readable zip"):
        extract_images_zip(tmp_path / "x.zip", tmp_path / "out")
    archive = _zip(tmp_path / "t.zip", {"a.txt": b"x"})
    with pytest.raises(UnsafePathError, match="no image files"):
        extract_images_zip(archive, tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(UnsafePathError, match="already exists"):
        extract_images_zip(_zip(tmp_path / "ok.zip", {"a.png": _png_bytes()}), tmp_path / "exists")
