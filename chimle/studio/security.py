"""What the studio lets a visitor touch on the server, and how uploads are unpacked.

Training runs arbitrary amounts of compute and reads folders on the server, so it is only
offered where the person at the browser is the person who owns the machine: an app bound to
localhost and not shared, or one started with --allow-training. On Hugging Face Spaces it
is always off (the disk is wiped on restart and the hardware is shared).

Folder names typed into the page are confined to the data root; uploaded zip archives are
unpacked member by member with checks on names, links, counts and sizes, since a zip can
name `../../.bashrc`, hold a symlink to `/etc`, or inflate a few kilobytes into gigabytes.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping

from ..images import IMAGE_EXTENSIONS

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class UnsafePathError(ValueError):
    """A path or archive member that would reach outside where it is allowed to."""


def on_spaces(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the app runs on Hugging Face Spaces (which sets SYSTEM=spaces and SPACE_ID)."""
    environ = os.environ if environ is None else environ
    return environ.get("SYSTEM") == "spaces" or bool(environ.get("SPACE_ID"))


@dataclass(frozen=True)
class TrainingPolicy:
    """Whether the Train tab (and server-side folders) is enabled, and why (shown in the tab)."""

    allowed: bool
    reason: str


def training_policy(host: str, share: bool, allow_training: bool,
                    environ: Mapping[str, str] | None = None) -> TrainingPolicy:
    """Decide whether this app instance may start training runs.

    Args:
        host: the address the server listens on.
        share: whether a public share link is made (that exposes even a localhost app).
        allow_training: the --allow-training flag.
    """
    if on_spaces(environ):
        return TrainingPolicy(False, "Training is disabled on Hugging Face Spaces: the disk is wiped "
                                     "on restart and the hardware is shared. Run the app on your own "
                                     "machine to train.")
    if allow_training:
        return TrainingPolicy(True, "Training is enabled by --allow-training.")
    if share:
        return TrainingPolicy(False, "Training is disabled because the app is shared through a public "
                                     "link; start it with --allow-training to enable it anyway.")
    if host not in LOCAL_HOSTS:
        return TrainingPolicy(False, f"Training is disabled because the app listens on {host}, not only "
                                     f"on this machine; start it with --allow-training to enable it.")
    return TrainingPolicy(True, "Training is enabled (the app only listens on this machine).")


def confine(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Resolve a user-given folder name inside `root`; raise UnsafePathError otherwise.

    Relative names are taken relative to `root`. Rejected: empty names, NUL bytes, any `..`
    component, absolute paths outside `root`, and names whose resolved target (after
    following symlinks) lies outside `root`.
    """
    text = os.fspath(path).strip()
    if not text:
        raise UnsafePathError("no folder given")
    if "\x00" in text:
        raise UnsafePathError("the folder name contains a NUL byte")
    candidate = Path(text)
    if ".." in candidate.parts:
        raise UnsafePathError(f"{text}: '..' is not allowed in folder names")
    root_resolved = Path(root).resolve()
    target = candidate if candidate.is_absolute() else root_resolved / candidate
    resolved = target.resolve()
    if not resolved.is_relative_to(root_resolved):
        raise UnsafePathError(f"{text}: outside the data root {root_resolved}")
    return resolved


def confine_data_folder(path: str | os.PathLike, root: str | os.PathLike, max_entries: int = 200_000) -> Path:
    """`confine`, then check the folder exists and no symlink inside it leads out of `root`.

    The trainer reads every image under the folder, so a link inside it to a file elsewhere
    would let a visitor train on (and see samples of) files outside the data root.
    """
    folder = confine(path, root)
    if not folder.is_dir():
        raise UnsafePathError(f"{path}: no such folder under the data root")
    root_resolved = Path(root).resolve()
    for entries, (directory, dirnames, filenames) in enumerate(os.walk(folder)):
        if entries > max_entries:
            raise UnsafePathError(f"{path}: too many folders to check")
        for name in dirnames + filenames:
            entry = Path(directory) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root_resolved):
                raise UnsafePathError(f"{path}: {entry.relative_to(folder)} is a link to outside the data root")
    return folder


def data_folders(root: str | os.PathLike, depth: int = 2) -> list[str]:
    """Folders under `root` (relative names, up to `depth` levels, hidden ones left out)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for directory, dirnames, _ in os.walk(root):
        relative = Path(directory).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(relative.parts) >= depth:
            dirnames[:] = []
        if relative.parts:
            found.append(relative.as_posix())
    return found


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on an uploaded archive of training photos.

    Attributes:
        max_files: image files in the archive.
        max_total_bytes: their total uncompressed size (counted while writing, not trusted
            from the archive's directory, which an attacker writes).
        max_file_bytes: one file's uncompressed size.
    """

    max_files: int = 5000
    max_total_bytes: int = 1 << 30
    max_file_bytes: int = 64 << 20


@dataclass
class ExtractedArchive:
    """What `extract_images_zip` wrote and what it left out (non-images, metadata)."""

    folder: Path
    images: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive member name, or UnsafePathError."""
    if "\x00" in name:
        raise UnsafePathError(f"archive member {name!r}: NUL byte in the name")
    posix = name.replace("\\", "/")  # archives made on Windows may use backslashes
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafePathError(f"archive member {name!r}: absolute names are not allowed")
    parts = tuple(p for p in PurePosixPath(posix).parts if p not in ("", "."))
    if ".." in parts:
        raise UnsafePathError(f"archive member {name!r}: '..' is not allowed")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def extract_images_zip(archive: str | os.PathLike, folder: str | os.PathLike,
                       limits: ZipLimits = ZipLimits()) -> ExtractedArchive:
    """Unpack the image files of a zip archive into `folder` (which must not exist yet), safely.

    The whole archive is refused (UnsafePathError) when any member has an absolute name,
    a `..` component or is a symlink, when it holds too many images, or when the images
    inflate past the limits; nothing is left behind then. Non-image files and hidden or
    macOS metadata entries are skipped and listed.
    """
    folder = Path(folder)
    if folder.exists():
        raise UnsafePathError(f"{folder} already exists; archives are unpacked into a new folder")
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise UnsafePathError(f"the upload is not a readable zip archive ({error})") from None
    with handle:
        result = ExtractedArchive(folder)
        chosen: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        seen: set[tuple[str, ...]] = set()
        for info in handle.infolist():
            parts = _member_parts(info.filename)
            if _is_symlink(info):
                raise UnsafePathError(f"archive member {info.filename!r} is a symbolic link")
            if info.is_dir() or not parts:
                continue
            if any(p.startswith(".") or p == "__MACOSX" for p in parts) or \
                    Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
                result.skipped.append(info.filename)
                continue
            if info.flag_bits & 0x1:
                raise UnsafePathError(f"archive member {info.filename!r} is encrypted")
            if parts in seen:
                raise UnsafePathError(f"archive member {info.filename!r} appears twice")
            seen.add(parts)
            chosen.append((info, parts))
        if not chosen:
            raise UnsafePathError("the archive holds no image files "
                                  f"({', '.join(IMAGE_EXTENSIONS)})")
        if len(chosen) > limits.max_files:
            raise UnsafePathError(f"the archive holds {len(chosen)} images; the limit is {limits.max_files}")
        declared = sum(info.file_size for info, _ in chosen)
        if declared > limits.max_total_bytes:
            raise UnsafePathError(f"the images would take {declared:,} bytes unpacked; "
                                  f"the limit is {limits.max_total_bytes:,}")
        folder.mkdir(parents=True)
        try:
            total = 0
            for info, parts in chosen:
                target = folder.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with handle.open(info) as source, open(target, "xb") as sink:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        total += len(chunk)
                        # The sizes in the archive's directory can lie: count what inflates.
                        if written > limits.max_file_bytes:
                            raise UnsafePathError(f"archive member {info.filename!r} is larger than "
                                                  f"{limits.max_file_bytes:,} bytes unpacked")
                        if total > limits.max_total_bytes:
                            raise UnsafePathError(f"the images are larger than {limits.max_total_bytes:,} "
                                                  f"bytes unpacked")
                        sink.write(chunk)
                result.images.append(target)
        except (UnsafePathError, zipfile.BadZipFile, OSError, RuntimeError, EOFError) as error:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-unpacked is left behind
            if isinstance(error, UnsafePathError):
                raise
            raise UnsafePathError(f"the archive could not be unpacked ({error})") from None
    return result
