"""Hand memory that renders have freed back to the operating system.

glibc's malloc keeps freed memory in its arenas for reuse, and a render's activations
(tens to hundreds of MB) came and went on whichever of Gradio's worker threads ran it
(before the render thread; long jobs still run on threads of their own). Over many users
the app's resident memory then grew far past what it held: with the shipped
colourization model at 256x256, 16 users at once took the app from 1030 to 1358 MB
(+32%) and a burst of 48 requests to 1918 MB (+86%), of which the sessions' own data is
about 80 MB. `malloc_trim(0)` returns the free pages of every arena; called once a second
it kept the same load within +19% (+21% after the burst). Forcing big blocks into mmap
(MALLOC_MMAP_THRESHOLD_) also bounded it, but made renders three times slower.

Released memory is not free to get back: the next render faults its pages in again, zeroed.
With a release every second, one user clicking every 1.5 s waited 866 ms for a grid of 8
instead of 792, and 124 / 102 / 62 ms for a level 1 / 2 / 3 edit instead of 106 / 88 / 47
(colourization-cpu, 171x256, in-process on the render thread, 2026-12-03). Since every
render now runs on one thread (render_thread.py), its freed memory is the next render's, so
the app releases only once renders have paused, and under steady load once a minute.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from typing import Callable

# The app's schedule: after this long without a render, and at least this often.
RELEASE_AFTER_IDLE_SECONDS = 5.0
RELEASE_AT_LEAST_EVERY_SECONDS = 60.0

_trimmer: threading.Thread | None = None
_lock = threading.Lock()


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return freed heap memory to the operating system now; False where that is not possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def release_free_memory_periodically(interval: float = 1.0, when: Callable[[], bool] | None = None,
                                    at_least_every: float | None = None) -> bool:
    """Call `release_free_memory` from a daemon thread (one per process), checking every
    `interval` seconds: when `when()` says so (always, without it), and in any case once
    `at_least_every` seconds have passed since the last release.

    Returns False where the C library cannot release memory (then nothing is started).
    """
    global _trimmer
    if _TRIM is None:
        return False
    with _lock:
        if _trimmer is None:
            def loop() -> None:
                last = time.monotonic()
                while True:
                    time.sleep(interval)
                    overdue = at_least_every is not None and time.monotonic() - last >= at_least_every
                    if when is None or overdue or when():
                        _TRIM(0)
                        last = time.monotonic()

            _trimmer = threading.Thread(target=loop, name="release-free-memory", daemon=True)
            _trimmer.start()
    return True
