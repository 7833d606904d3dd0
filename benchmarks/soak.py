"""Soak: a few gradio_client users doing random actions on the real app process for a long time.

Launches `python app.py` as its own process (`load_test.launch_app`), then `--clients` users,
each with its own `gradio_client.Client` (its own session), its own photo and its own seeded
random generator, act until `--minutes` have passed: first one of every action, then actions
drawn at random:

    generate        a new grid of samples of a seed (disjoint seeds per user)
    edit            one random level's sliders set to random values
    redraw_region   a random rectangle re-drawn at a random level (the paint editor's value)
    colour_hints    a random colour stroke, `--hint-steps` optimisation steps
    save            the result and its code, both then downloaded over HTTP
    load_code       a code this user saved earlier, uploaded again

Every user keeps a model of what its current code must be: after generate, edit and
load_code it is known exactly (`LatentCodes.sample` and `chimle.editing.apply_edits`, computed
here), and a save must download exactly that code (within float rounding after an edit along a
level's main directions, which this process and the app compute each on its own; another
user's code differs by whole units). A region re-draw draws a fresh seed on the server and
colour hints search, so after those the code is not known here; the next save's code
is then loaded back (/load_code) and saved again, and must come back as the same code with the
same PNG pixels (and is known exactly from then on). Any save of a code saved before must give
the same pixels; where the photo fits the working size, the PNG must be the image last shown.
Every saved code must be this user's own: no two users ever download the same code (they have
their own photos and seeds). Any exception is an error, recorded with its message.

The app's resident memory is sampled every `--sample-seconds`. Its level is the median of the
samples of a minute: one sample lands on whatever the renders in flight hold at that moment
(a colour-hint search and a full-size save at once add a few hundred MB for a second or two),
a minute's median is what the app keeps. The level after warm-up is that of the warm-up's last
minute (or last half, if shorter); the level drift is the largest change of each later
minute's level against it, and the run fails (exit status 1) on any error or if that grows
more than `--max-drift` (10%), which is what a leak does. The peak sample and its drift are
reported beside it (a fall is reported, not failed: the app hands freed memory back to the
system). Prints a table; writes the report as JSON (atomically) to `--out`.

    python benchmarks/soak.py                                   # 4 users, 30 minutes, shipped model
    python benchmarks/soak.py --clients 2 --minutes 5 --warm-up-minutes 1 --out /tmp/soak.json

`--max-side` defaults to 128, not the page's 256, so that a 2-core machine keeps up: colour
hints render 64 candidate codes before their gradient steps, at 256 px over 40 s of a core per
request (0.57 s per render, README), and hints share one queue across users, so with every
user asking for them a sixth of the time that queue would hold everyone up. At 128 px a render
costs about a quarter, and the same 30 minutes exercise about four times as many actions.
Saves still render at the photo's own size (384 px for the shipped examples).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.load_test import (DEFAULT_CHECKPOINT, SETTLE_SECONDS, PeakMemory, Plan,  # noqa: E402
                                  decode_pixels, fetch, launch_app, open_client, read_code, saved_file_urls,
                                  start_user, summarise)
from chimle.checkpoint import tensor_digest  # noqa: E402
from chimle.codes import LatentCodes  # noqa: E402
from chimle.editing import NUM_DIRECTIONS, LevelEdit, apply_edits  # noqa: E402
from chimle.fileio import atomic_write_json  # noqa: E402
from chimle.images import load_rgb  # noqa: E402
from chimle.pipeline import prepare  # noqa: E402
from chimle.studio.handlers import examples_for_task  # noqa: E402
from chimle.studio.models import MODELS, LoadedModel  # noqa: E402

ACTIONS = ("generate", "edit", "redraw_region", "colour_hints", "save", "load_code")
# Every user does these first, whatever the time limit, so that a short run exercises every
# action: a save of a known code, then one after actions whose code is not known here.
TOUR = ("generate", "edit", "save", "redraw_region", "colour_hints", "save", "load_code")
LATENCY_KINDS = ("start", *ACTIONS, "paint", "download")  # paint: /paint_current; download: HTTP GETs
DEFAULT_OUT = REPO / "benchmarks" / "results" / "soak.json"
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
PHOTO_SIDE = 384  # skimage photos are written at the shipped examples' size
BRUSH_COLOURS = ((200, 30, 30), (230, 140, 20), (240, 220, 40), (40, 160, 60), (40, 90, 200), (120, 60, 30))
BASELINE_WINDOW = 60.0  # seconds at the end of the warm-up whose median RSS is the baseline
KEPT_CODES = 16  # saved codes each user keeps (as files) to load again
MESSAGES_KEPT = 50  # error messages kept in the report (all are counted)
PROGRESS_SECONDS = 60.0  # a line on the terminal this often, so a long run shows it is alive
# A level's main directions come from an SVD and a least-squares fit, here and in the app's
# own process; the maths library may round those differently, and an edit along them moves
# the code by that rounding. Another user's code differs by whole standard deviations.
ROUNDING = 1e-4


# -- photos -----------------------------------------------------------------------------------------

def soak_photos(task: str, count: int, folder: Path) -> list[Path]:
    """`count` photos, one per user: the task's shipped examples, then scikit-image's sample photos
    (written into `folder` at the examples' size); they repeat only past the photos there are."""
    from skimage import data

    photos = [Path(path) for path in examples_for_task(REPO / "assets", task)]
    for name in SKIMAGE_PHOTOS:
        if len(photos) >= count:
            break
        array = np.ascontiguousarray(getattr(data, name)())
        image = Image.fromarray(array).convert("RGB")
        image.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.LANCZOS)
        path = folder / f"{name}.png"
        image.save(path)
        photos.append(path)
    return [photos[index % len(photos)] for index in range(count)]


def photo_label(path: Path) -> str:
    """A shipped photo's path in the repository, or the scikit-image photo's name."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else f"skimage {path.stem}"


def code_digest(codes: LatentCodes) -> str:
    return tensor_digest(codes.to_tensors())[:16]


def largest_difference(a: LatentCodes, b: LatentCodes) -> float:
    """The largest absolute difference between two codes' numbers; infinite if their shapes differ."""
    pairs = list(zip(a.globals, b.globals)) + list(zip(a.locals, b.locals))
    if a.num_levels != b.num_levels or any(x.shape != y.shape for x, y in pairs):
        return float("inf")
    return max(float((x - y).abs().max()) for x, y in pairs)


def pixels_digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()[:16]


# -- what every user's current code must be ---------------------------------------------------------

@dataclass
class ExpectedCode:
    """A user's model of the app's current code: the picked code and the level edits since.

    `base` None means not known here (after a region re-draw, colour hints or an error).
    """

    base: LatentCodes | None = None
    edits: dict[int, LevelEdit] = field(default_factory=dict)

    def picked(self, codes: LatentCodes) -> None:
        """A sample, a loaded code: sliders neutral."""
        self.base, self.edits = codes, {}

    def edited(self, level: int, edit: LevelEdit) -> None:
        self.edits[level] = edit

    def lost(self) -> None:
        self.base, self.edits = None, {}

    @property
    def moved(self) -> bool:
        """Whether an edit moves along a level's main directions."""
        return any(any(edit.directions) for edit in self.edits.values())

    def current(self, model: LoadedModel) -> LatentCodes | None:
        if self.base is None:
            return None
        return apply_edits(self.base, self.edits, model.directions, renormalise=True)


class CodeOwners:
    """Which user saved each code, across users; a code saved by two users is a session mix-up."""

    def __init__(self) -> None:
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()

    def claim(self, user: int, digest: str) -> None:
        with self._lock:
            owner = self._owners.setdefault(digest, user)
        if owner != user:
            raise AssertionError(f"user {user} downloaded code {digest}, which user {owner} saved")


# -- one user ---------------------------------------------------------------------------------------

@dataclass
class SoakPlan:
    """What every user does: working size, samples per grid, colour-hint steps; the seed of the
    users' random generators, and how many users there are (their sample seeds are disjoint)."""

    max_side: int = 128
    samples: int = 8
    hint_steps: int = 5
    seed: int = 0
    clients: int = 4


@dataclass
class SavedCode:
    digest: str
    codes: LatentCodes
    path: Path  # the downloaded file, to upload again


@dataclass
class SoakUserReport:
    user: int
    photo: str
    actions: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in ACTIONS})
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in LATENCY_KINDS})
    errors: list[str] = field(default_factory=list)
    errors_by_action: Counter = field(default_factory=Counter)
    errors_by_type: Counter = field(default_factory=Counter)
    exact_saves: int = 0  # saves whose code was computed here beforehand, and matched bit for bit
    close_saves: int = 0  # ... and matched within the directions' rounding (see ROUNDING)
    reload_checks: int = 0  # unknown codes loaded back and saved again identically
    repeat_pngs: int = 0  # saves of a code saved before: the same pixels
    shown_pngs: int = 0  # PNGs equal to the image last shown (photo within the working size)
    codes: set[str] = field(default_factory=set)

    def error(self, kind: str, error: BaseException) -> None:
        name = type(error).__name__
        self.errors_by_action[kind] += 1
        self.errors_by_type[name] += 1
        self.errors.append(f"user {self.user} {kind}: {name}: {error}")


class SoakUser:
    """One user: its client, photo, random generator, expected code and report."""

    def __init__(self, url: str, user: int, photo: Path, plan: SoakPlan, model: LoadedModel, owners: CodeOwners,
                 folder: Path) -> None:
        self.url, self.user, self.photo, self.plan, self.model = url, user, photo, plan, model
        self.owners, self.folder = owners, folder
        self.rng = random.Random(plan.seed * 1_000_003 + user)
        self.report = SoakUserReport(user, str(photo))
        self.expected = ExpectedCode()
        image = load_rgb(photo)
        prepared = prepare(model.net, model.task, image, plan.max_side)
        self.shape = model.net.code_shape(prepared.output_size)
        self.crop = prepared.crop  # (h, w) of the result, where the paint editor's strokes go
        # Save renders at the photo's own size; only where that is the working size is the PNG the image shown.
        self.fits = model.task.output_size((image.height, image.width), model.net.num_levels) == prepared.crop
        self.shown_url: str | None = None  # the result image of the last action, where known
        self.saved: list[SavedCode] = []
        self.pixels_of: dict[str, str] = {}  # code digest -> PNG pixels digest
        self.saves = 0
        self.client = None
        self.methods: dict[str, Callable[[], None]] = {
            "generate": self.generate, "edit": self.edit, "redraw_region": self.redraw_region,
            "colour_hints": self.colour_hints, "save": self.save, "load_code": self.load_code}

    # -- helpers --------------------------------------------------------------------------------

    def _timed(self, kind: str, call: Callable, *args, **kwargs):
        tic = time.perf_counter()
        result = call(*args, **kwargs)
        self.report.latencies[kind].append(time.perf_counter() - tic)
        return result

    def _seed(self) -> int:
        """A sample seed no other user draws: congruent to `user` modulo the number of users."""
        return self.user + self.plan.clients * self.rng.randrange(2 ** 24)

    def _paint(self, draw: Callable[..., None], name: str) -> dict:
        """The paint editor's value with one layer: what `draw(drawing, h, w, colour)` paints at the result's size."""
        from gradio_client import handle_file

        self._timed("paint", self.client.predict, api_name="/paint_current")  # "↻": the current result
        h, w = self.crop
        layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        draw(ImageDraw.Draw(layer), h, w, (*self.rng.choice(BRUSH_COLOURS), 255))
        path = self.folder / f"{name}.png"
        layer.save(path)
        # The strokes are the layers' opaque pixels (`studio.paint`); the page sends the
        # background and composite through its own route, so an API client may leave them out.
        return {"background": None, "layers": [handle_file(str(path))], "composite": None}

    def _rectangle(self, draw: ImageDraw.ImageDraw, h: int, w: int, colour: tuple) -> None:
        rh, rw = self.rng.randint(max(1, h // 8), max(1, h // 2)), self.rng.randint(max(1, w // 8), max(1, w // 2))
        top, left = self.rng.randint(0, h - rh), self.rng.randint(0, w - rw)
        draw.rectangle((left, top, left + rw - 1, top + rh - 1), fill=colour)

    def _stroke(self, draw: ImageDraw.ImageDraw, h: int, w: int, colour: tuple) -> None:
        points = [(self.rng.randrange(w), self.rng.randrange(h)) for _ in range(self.rng.randint(2, 4))]
        draw.line(points, fill=colour, width=max(2, min(h, w) // 10))
        # A dot where it starts: a stroke whose points all coincide still paints something.
        draw.ellipse((points[0][0] - 1, points[0][1] - 1, points[0][0] + 1, points[0][1] + 1), fill=colour)

    # -- the actions ----------------------------------------------------------------------------

    def start(self) -> None:
        self.client = open_client(self.url)
        seed = self._seed()
        outputs = self._timed("start", start_user, self.client,
                              Plan(self.photo, self.plan.max_side, self.plan.samples, 0), seed)
        if int(outputs[-1]) != seed:
            raise AssertionError(f"start: asked seed {seed}, got {outputs[-1]}")
        self._picked_sample(seed)
        self.shown_url = outputs[2]["url"]

    def _picked_sample(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.expected.picked(LatentCodes.sample(self.shape, self.plan.samples, generator)[0])

    def generate(self) -> None:
        seed = self._seed()
        outputs = self._timed("generate", self.client.predict, self.plan.samples, seed, False, api_name="/generate")
        gallery, seed_back = outputs[-2], outputs[-1]
        if int(seed_back) != seed or len(gallery) != self.plan.samples:
            raise AssertionError(f"asked seed {seed} x{self.plan.samples}, got seed {seed_back} x{len(gallery)}")
        self._picked_sample(seed)
        self.shown_url = outputs[0]["url"]

    def edit(self) -> None:
        rng = self.rng
        level = rng.randrange(self.model.num_levels)
        edit = LevelEdit(directions=tuple(round(rng.uniform(-3, 3), 1) for _ in range(NUM_DIRECTIONS)),
                         global_seed=rng.randrange(2 ** 31), global_blend=rng.randint(0, 20) / 20,
                         local_seed=rng.randrange(2 ** 31), local_blend=rng.randint(0, 20) / 20,
                         noise_scale=rng.randint(0, 40) / 20)  # on the sliders' steps, as the page sends them
        values = [*edit.directions, edit.global_seed, edit.global_blend, edit.local_seed, edit.local_blend,
                  edit.noise_scale]
        outputs = self._timed("edit", self.client.predict, True, *values, api_name=f"/edit_level_{level + 1}")
        if not str(outputs[-1]).startswith(("Rendered", "Nothing changed")):
            raise AssertionError(f"edit of level {level + 1}: {outputs[-1]!r}")
        self.expected.edited(level, edit)
        self.shown_url = outputs[0]["url"]

    def redraw_region(self) -> None:
        value = self._paint(self._rectangle, "region")
        level = self.rng.randrange(self.model.num_levels)
        self.expected.lost()  # a fresh seed drawn on the server
        self.shown_url = None
        outputs = self._timed("redraw_region", self.client.predict, value, level, 0, 0.5, api_name="/redraw_region")
        if "re-drawn with seed" not in str(outputs[-1]):
            raise AssertionError(f"region re-draw of level {level + 1}: {outputs[-1]!r}")
        self.shown_url = outputs[0]["url"]

    def colour_hints(self) -> None:
        value = self._paint(self._stroke, "stroke")
        space = self.rng.choice(("ab", "rgb"))
        self.expected.lost()  # a search on the server
        self.shown_url = None
        outputs = self._timed("colour_hints", self.client.predict, value, self.plan.hint_steps, space,
                              api_name="/colour_hints")
        if "(done:" not in str(outputs[-1]):
            raise AssertionError(f"colour hints ({space}): {outputs[-1]!r}")
        self.shown_url = outputs[0]["url"]

    def _download_save(self) -> tuple[LatentCodes, bytes, np.ndarray]:
        downloads, _ = self._timed("save", self.client.predict, api_name="/save")
        files = saved_file_urls(downloads)
        tic = time.perf_counter()
        png, code = fetch(files[".png"]), fetch(files[".safetensors"])
        self.report.latencies["download"].append(time.perf_counter() - tic)
        return read_code(code, self.model.fingerprint), code, decode_pixels(png)

    def save(self) -> None:
        expected = self.expected.current(self.model)
        codes, data, pixels = self._download_save()
        digest = code_digest(codes)
        self.owners.claim(self.user, digest)
        self.report.codes.add(digest)
        if expected is not None:
            if codes.equal(expected):
                self.report.exact_saves += 1
            elif self.expected.moved and largest_difference(codes, expected) <= ROUNDING:
                self.report.close_saves += 1
            else:
                raise AssertionError(f"the downloaded code is not the one this user's actions give (largest "
                                     f"difference {largest_difference(codes, expected):.3g})")
        if self._seen_before(digest, pixels):
            self.report.repeat_pngs += 1
        if self.fits and self.shown_url is not None:
            if not np.array_equal(pixels, decode_pixels(fetch(self.shown_url))):
                raise AssertionError("the downloaded PNG is not the image last shown")
            self.report.shown_pngs += 1
        saved = self._keep(digest, codes, data)
        if expected is None:
            # Not known here: loaded back and saved again, the same code must give the same pixels.
            self._load(saved)
            again, _, again_pixels = self._download_save()
            if not again.equal(codes):
                raise AssertionError("a saved code, loaded back and saved again, came back as another code")
            self._seen_before(digest, again_pixels)  # raises unless the pixels are the first save's
            self.report.reload_checks += 1

    def _seen_before(self, digest: str, pixels: np.ndarray) -> bool:
        """Whether code `digest` was saved before; AssertionError if its PNG then had other pixels."""
        found, seen = pixels_digest(pixels), self.pixels_of.get(digest)
        if seen is None:
            self.pixels_of[digest] = found
            return False
        if seen != found:
            raise AssertionError(f"code {digest}, saved again, gave other PNG pixels than before")
        return True

    def _keep(self, digest: str, codes: LatentCodes, data: bytes) -> SavedCode:
        self.saves += 1
        known = next((saved for saved in self.saved if saved.digest == digest), None)
        if known is not None:
            return known
        path = self.folder / f"saved-{self.saves}.safetensors"
        path.write_bytes(data)
        saved = SavedCode(digest, codes, path)
        self.saved.append(saved)
        if len(self.saved) > KEPT_CODES:
            self.saved.pop(0).path.unlink()
        return saved

    def _load(self, saved: SavedCode) -> None:
        from gradio_client import handle_file

        self.expected.lost()
        self.shown_url = None
        outputs = self._timed("load_code", self.client.predict, handle_file(str(saved.path)), api_name="/load_code")
        if outputs[4] != "Loaded the saved code.":
            raise AssertionError(f"load code: {outputs[4]!r}")
        self.expected.picked(saved.codes)
        self.shown_url = outputs[0]["url"]

    def load_code(self) -> None:
        self._load(self.rng.choice(self.saved))

    # -- the visit ------------------------------------------------------------------------------

    def act(self, kind: str) -> None:
        """One action; a failure is recorded, and the code is then no longer known here."""
        if kind == "load_code" and not self.saved:
            kind = "save"  # nothing saved yet to load
        self.report.actions[kind] += 1
        try:
            self.methods[kind]()
        except Exception as error:  # noqa: BLE001 - every failure is a finding to report
            self.report.error(kind, error)
            self.expected.lost()
            self.shown_url = None

    def run(self, deadline: float, app_alive: Callable[[], bool]) -> SoakUserReport:
        """Connect, then the tour, then random actions until `deadline` (time.monotonic())."""
        try:
            self.start()
        except Exception as error:  # noqa: BLE001
            self.report.error("start", error)
            if self.client is not None:
                self.client.close()
            return self.report
        try:
            for kind in TOUR:
                self.act(kind)
            while time.monotonic() < deadline:
                if not app_alive():
                    self.report.error("run", RuntimeError("the app process has exited"))
                    break
                self.act(self.rng.choice(ACTIONS))
        finally:
            self.client.close()
        return self.report


# -- the whole soak ---------------------------------------------------------------------------------

def memory_figures(samples: list[tuple[float, float]], warm_up_seconds: float, end_seconds: float,
                   final_mb: float | None) -> dict:
    """RSS after warm-up (the median of the warm-up's last minute), peak and final, and drifts against it.

    While the users act after the warm-up: `level_drift` is the largest growth of a minute's
    median (consecutive minutes from the warm-up's end; the last one counts if it holds half
    as many samples as the baseline), what fails a run; `max_drift` and `min_drift` are the
    largest growth and fall of single samples, reported only (a sample catches renders in
    flight; the app hands freed memory back, so a quiet moment after a busy baseline reads lower).

    Args:
        samples: (seconds since the users started, MB).
        end_seconds: when the last user stopped.
        final_mb: the RSS once the app has settled after the users.
    """
    window = min(BASELINE_WINDOW, warm_up_seconds / 2)
    baseline = [mb for t, mb in samples if warm_up_seconds - window <= t <= warm_up_seconds]
    during = [mb for t, mb in samples if warm_up_seconds < t <= end_seconds]
    if not baseline and during:  # no warm-up: the first sample
        baseline = during[:1]
    nan = float("nan")
    level = statistics.median(baseline) if baseline else nan
    measured = bool(baseline and during)
    minutes = []  # the median of each window of the baseline's length while the users act
    start = warm_up_seconds
    while start < end_seconds:
        in_window = [mb for t, mb in samples if start < t <= min(start + window, end_seconds)]
        if in_window and 2 * len(in_window) >= len(baseline):
            minutes.append(statistics.median(in_window))
        start += window
    return {"after_warm_up": level, "peak": max(during) if during else nan,
            "final": final_mb if final_mb is not None else nan,
            "window_levels": minutes,
            "level_drift": max(minutes) / level - 1 if minutes and baseline else nan,
            "max_drift": max(during) / level - 1 if measured else nan,
            "min_drift": min(during) / level - 1 if measured else nan,
            "final_drift": final_mb / level - 1 if final_mb is not None and baseline else nan,
            "baseline_samples": len(baseline), "samples_after_warm_up": len(during),
            "samples": [[round(t, 1), round(mb, 1)] for t, mb in samples]}


def progress_line(users: list[SoakUser], seconds: float, memory: PeakMemory) -> str:
    """How far the users are, for the terminal (read while they act: a moment's counts)."""
    actions = sum(sum(user.report.actions.values()) for user in users)
    errors = sum(len(user.report.errors) for user in users)
    rss = f", app memory {memory.samples[-1][1]:.0f} MB" if memory.samples else ""
    return f"{seconds / 60:5.1f} min: {actions} actions, {errors} errors{rss}"


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2 ** 20


def soak(checkpoint: Path, plan: SoakPlan, minutes: float, warm_up_minutes: float, max_drift: float = 0.10,
         sample_seconds: float = 2.0, max_queue: int = 32, concurrency: int = 2, threads: int = 1) -> dict:
    """Launch the app, let `plan.clients` users act for `minutes`, sample its memory; a report dict."""
    if not 0 <= warm_up_minutes < minutes:
        raise ValueError(f"the warm-up ({warm_up_minutes} min) must be shorter than the soak ({minutes} min)")
    model = MODELS.get(checkpoint)
    # The directions computed as the app computes them, on as many threads, so that edits
    # along them give the app's codes bit for bit where the maths library is deterministic.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads if threads > 0 else previous)
    try:
        for level in range(model.num_levels):
            model.directions(level)
    finally:
        torch.set_num_threads(previous)
    owners = CodeOwners()
    with tempfile.TemporaryDirectory(prefix="chimle-soak-") as scratch:
        scratch = Path(scratch)
        photos = soak_photos(model.task.name, plan.clients, scratch)
        app = launch_app(checkpoint, scratch / "app", max_queue, concurrency, threads)
        try:
            users = []
            for index, photo in enumerate(photos):
                folder = scratch / f"user-{index}"
                folder.mkdir()
                users.append(SoakUser(app.url, index, photo, plan, model, owners, folder))
            began = time.monotonic()
            deadline = began + 60 * minutes

            def alive() -> bool:
                return app.process.poll() is None

            with PeakMemory(app.pid, sample_seconds) as memory:
                with ThreadPoolExecutor(len(users)) as pool:
                    futures = [pool.submit(user.run, deadline, alive) for user in users]
                    while wait(futures, timeout=PROGRESS_SECONDS).not_done:
                        print(progress_line(users, time.monotonic() - began, memory), flush=True)
                    reports = [future.result() for future in futures]
                seconds = time.monotonic() - began
                time.sleep(SETTLE_SECONDS)  # the app hands freed memory back once a second
            alive_at_end = alive()
            final_mb = app.rss_mb() if alive_at_end else None
            files_mb = folder_mb(scratch / "app" / "gradio")
        finally:
            app.stop()
    rss = memory_figures([(t - began, mb) for t, mb in memory.samples], 60 * warm_up_minutes, seconds, final_mb)
    errors = [message for report in reports for message in report.errors]
    codes = [report.codes for report in reports]
    shared = sorted({digest for index, mine in enumerate(codes) for other in codes[index + 1:]
                     for digest in mine & other})
    failures = []
    if errors:
        failures.append(f"{len(errors)} errors")
    if not rss["level_drift"] <= max_drift:  # also NaN: no memory measured after the warm-up
        failures.append(f"memory's level grew {rss['level_drift']:+.1%} from its level after warm-up "
                        f"(allowed {max_drift:.0%})")
    if shared:
        failures.append(f"{len(shared)} codes saved by two users")
    if not alive_at_end:
        failures.append("the app exited")
    return {
        "checkpoint": str(checkpoint), "clients": plan.clients, "minutes": minutes,
        "warm_up_minutes": warm_up_minutes, "max_side": plan.max_side, "samples": plan.samples,
        "hint_steps": plan.hint_steps, "seed": plan.seed, "max_queue": max_queue, "concurrency": concurrency,
        "threads": threads, "sample_seconds": sample_seconds, "max_drift_allowed": max_drift,
        "seconds": seconds,
        "actions": {kind: sum(report.actions[kind] for report in reports) for kind in ACTIONS},
        "latency": summarise(reports, LATENCY_KINDS),
        "errors": {"count": len(errors),
                   "by_action": dict(sum((report.errors_by_action for report in reports), Counter())),
                   "by_type": dict(sum((report.errors_by_type for report in reports), Counter())),
                   "messages": errors[:MESSAGES_KEPT]},
        "checks": {"exact_saves": sum(report.exact_saves for report in reports),
                   "close_saves": sum(report.close_saves for report in reports),
                   "reload_checks": sum(report.reload_checks for report in reports),
                   "repeat_pngs": sum(report.repeat_pngs for report in reports),
                   "shown_pngs": sum(report.shown_pngs for report in reports)},
        "shared_codes": shared,
        "users": [{"user": report.user, "photo": photo_label(Path(report.photo)), "actions": report.actions,
                   "errors": len(report.errors), "exact_saves": report.exact_saves,
                   "close_saves": report.close_saves,
                   "reload_checks": report.reload_checks, "codes": sorted(report.codes)} for report in reports],
        "rss_mb": rss,
        "app_files_mb": files_mb,
        "app_alive_at_end": alive_at_end,
        "failures": failures,
        "passed": not failures,
    }


def print_report(report: dict) -> None:
    print(f"soak: {report['clients']} users x {report['minutes']:g} min (warm-up {report['warm_up_minutes']:g} min; "
          f"{report['seconds']:.0f} s in all), working size {report['max_side']}, grid of {report['samples']}, "
          f"colour hints of {report['hint_steps']} steps; app --concurrency {report['concurrency']} "
          f"--threads {report['threads']} --max-queue {report['max_queue']}")
    errors = report["errors"]
    print(f"\n{'request':15}{'count':>7}{'errors':>8}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for kind, row in report["latency"].items():
        print(f"{kind:15}{row['count']:>7}{errors['by_action'].get(kind, 0):>8}{row['p50']:>9.2f}"
              f"{row['p95']:>9.2f}{row['max']:>9.2f}")
    checks = report["checks"]
    print(f"\nsaves of a code known here that matched it: {checks['exact_saves']} bit for bit, "
          f"{checks['close_saves']} within the directions' rounding; codes not known here, "
          f"loaded back and saved again identically: {checks['reload_checks']}; saves of a code saved before "
          f"with the same pixels: {checks['repeat_pngs']}; PNGs equal to the image shown: {checks['shown_pngs']}")
    print(f"codes saved by two users: {len(report['shared_codes'])} "
          f"(distinct codes per user: {', '.join(str(len(user['codes'])) for user in report['users'])})")
    rss = report["rss_mb"]
    print(f"app memory: {rss['after_warm_up']:.0f} MB after warm-up; each later minute's median "
          f"{min(rss['window_levels'], default=float('nan')):.0f} to {max(rss['window_levels'], default=float('nan')):.0f} MB "
          f"(level drift {rss['level_drift']:+.1%}); single samples {rss['min_drift']:+.1%} to "
          f"{rss['max_drift']:+.1%} over {rss['samples_after_warm_up']} samples (peak {rss['peak']:.0f} MB); "
          f"final {rss['final']:.0f} MB ({rss['final_drift']:+.1%}); files the app keeps: "
          f"{report['app_files_mb']:.1f} MB")
    print(f"errors: {errors['count']}" + (f" {errors['by_type']}" if errors["count"] else ""))
    for message in errors["messages"][:10]:
        print(f"  {message}")
    print("PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"]))


def main(argv: list[str] | None = None) -> int:
    """Run the soak from the command line; 0 if it passed, 1 if not."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the users act, warm-up included")
    parser.add_argument("--warm-up-minutes", type=float, default=5.0,
                        help="memory is measured against its level at the end of this")
    parser.add_argument("--max-side", type=int, default=128,
                        help="working size (the page's default is 256; see the module notes for why 128)")
    parser.add_argument("--samples", type=int, default=8, help="samples per grid (the page's default: 8)")
    parser.add_argument("--hint-steps", type=int, default=5, help="optimisation steps of colour hints (at least 5)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every user's random actions")
    parser.add_argument("--max-drift", type=float, default=0.10,
                        help="largest growth of memory's level (a minute's median) above its level after "
                             "warm-up that passes (a fraction)")
    parser.add_argument("--sample-seconds", type=float, default=2.0, help="memory is sampled this often")
    parser.add_argument("--max-queue", type=int, default=32, help="the app's --max-queue")
    parser.add_argument("--concurrency", type=int, default=2, help="the app's --concurrency")
    parser.add_argument("--threads", type=int, default=1, help="the app's --threads (torch threads per render)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON report (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    plan = SoakPlan(args.max_side, args.samples, args.hint_steps, args.seed, args.clients)
    report = soak(args.checkpoint, plan, args.minutes, args.warm_up_minutes, args.max_drift, args.sample_seconds,
                  args.max_queue, args.concurrency, args.threads)
    report["command"] = " ".join(["python", "benchmarks/soak.py", *(sys.argv[1:] if argv is None else argv)])
    print_report(report)
    atomic_write_json(args.out, report)
    print(f"\nreport: {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
