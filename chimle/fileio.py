"""Atomic file writes: a reader never sees half a file, a crash never leaves one.

Write to a temporary file in the same folder, flush and fsync it, then rename over the
target (atomic on POSIX), then fsync the folder so the rename itself survives a crash.
A process killed mid-write leaves its temporary behind (nothing can run after SIGKILL);
`remove_stale_temporaries` clears those when the folder's owner starts again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# mkstemp creates files readable by their owner only; give written files the usual
# permissions (0666 less the umask), like open() would. Read once: os.umask has no getter.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
_TEMP_SUFFIX = ".tmp"


def naming_path(error: OSError, path: str | os.PathLike) -> OSError:
    """`error` with `path` as its filename, so its message says which file failed.

    A failed write or flush ("No space left on device") carries no filename of its own.
    """
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, error.strerror, str(path))  # OSError picks the subclass from errno


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as error:
        # Leave the previous file untouched and no temporary behind (full disk, Ctrl-C).
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        named = naming_path(error, path) if isinstance(error, OSError) else error
        if named is error:
            raise
        raise named from error
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def overwrite_in_place(path: str | os.PathLike, data: bytes) -> None:
    """Rewrite an existing small file in its own blocks: not atomic, but needs no free space.

    For the one record that must get out when the disk is full (a run's failed status):
    the atomic route needs room for a second copy, this one only rewrites blocks the file
    already holds, as long as `data` is not longer than the file's allocation.
    """
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries that killed `atomic_write_bytes` calls left in `folder`; returns them.

    Only for a folder whose writer is the caller: another process's write in progress
    looks the same.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
