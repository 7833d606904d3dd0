"""One user's studio state and the operations on it (no Gradio here; the handlers call these).

The state holds codes, never models: the model is shared (`models.MODELS`) and passed in.

Codes of the current result, per level:

    origin   the code the user picked (a gallery sample, an IvO result, a loaded file);
             Reset returns a level to it.
    base     origin, with levels re-drawn by Randomise.
    current  base with the levels' slider edits applied (`editing.apply_edits`): what is
             shown, saved and reloaded.

Painting on the result edits the code too: a region re-draw writes the current code's
level, with the region re-drawn, into base (`redraw_region`), and colour hints find a new
code (`find_colour_hints`) that is adopted like a reconstruction's.

The code maths (edits, blends, seeded levels, which level changed) is `chimle.editing`,
shared with the benchmarks; this module keeps the state and renders.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..batch import CODES_FILE, Progress, write_results
from ..checkpoint import CheckpointError, load_codes
from ..codes import LatentCodes
from ..editing import (MAX_SEED, LevelEdit, apply_edits, first_changed_level, keep_levels, redraw_level,
                       redraw_region)
from ..imageops import resize
from ..images import pil_to_tensor, tensor_to_pil
from ..ivo import IvOConfig, hint_search, ivo_steps
from ..model import Render
from ..pipeline import PreparedInput, coarse_result, prepare, render, sample_codes, semantic_context
from ..search import Distance
from .models import LoadedModel

MAX_SAMPLES = 48  # gallery size bound: each sample keeps its code and a thumbnail in memory
RENDER_CHUNK = 4  # samples rendered per forward pass (bounds peak memory for big inputs)
# All sessions' render caches together (see RenderCaches): three users' at 256x256 with the
# cpu model. A dropped cache costs little: the edit renders every level, as a level-1 edit
# does anyway (README: 0.66 s against 0.51 s for level 3).
RENDER_CACHE_BYTES = 32 * 2 ** 20
# An edit that would keep the user waiting longer than this shows its first level's result
# first (issue: a slider edit answers within 100 ms; every level has its own output).
COARSE_FIRST_ABOVE_SECONDS = 0.1
CoarseResult = Callable[[torch.Tensor], None]  # receives (1, 3, H, W) in [-1, 1]


class StudioError(ValueError):
    """An operation the current state does not allow; the message is for the user."""


def derived_seed(*parts: int) -> int:
    """A 31-bit seed determined by `parts` (for "More" batches), well mixed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def fresh_seed() -> int:
    return secrets.randbelow(2 ** 31)


def prepare_reference(prepared: PreparedInput, image: Image.Image) -> tuple[torch.Tensor, Image.Image]:
    """A reference photo as an IvO target and a preview, matched to the result's size.

    Returns:
        (target, preview): target (1, 3, H, W) at the padded output size, in [-1, 1], the
        padding filled by repeating edges as `prepare` does; preview at the result's size.
    """
    crop_h, crop_w = prepared.crop
    rgb = resize(pil_to_tensor(image), (crop_h, crop_w), mode="bicubic").clamp(-1, 1)  # (1, 3, h, w)
    out_h, out_w = prepared.output_size
    target = rgb
    if (out_h, out_w) != (crop_h, crop_w):
        target = F.pad(rgb, (0, out_w - crop_w, 0, out_h - crop_h), mode="replicate")
    return target, tensor_to_pil(rgb)


def pad_painted(prepared: PreparedInput, painted: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    """A (C, h, w) or (B, C, h, w) map painted on the result (the photo's extent) padded to the output size.

    "replicate" (region masks) gives the padding the photo's edge, as `prepare` pads the
    input; "constant" fills it with zeros (hint masks: nobody painted there).
    """
    crop_h, crop_w = prepared.crop
    if tuple(painted.shape[-2:]) != (crop_h, crop_w):
        raise StudioError(f"the painting is {painted.shape[-1]}x{painted.shape[-2]}; the result is "
                          f"{crop_w}x{crop_h}: paint on the current result")
    out_h, out_w = prepared.output_size
    if (out_h, out_w) == (crop_h, crop_w):
        return painted
    return F.pad(painted, (0, out_w - crop_w, 0, out_h - crop_h), mode=mode)


def gallery_images(model: LoadedModel, prepared: PreparedInput, codes: LatentCodes,
                   context: list[torch.Tensor] | None = None) -> list[Image.Image]:
    """Each code's result as a picture for the gallery, `RENDER_CHUNK` codes per forward pass.

    `context`: the input's semantic maps (`pipeline.semantic_context`), computed once.
    """
    images = []
    for start in range(0, codes.batch_size, RENDER_CHUNK):
        [results], _ = render(model.net, model.task, prepared, codes[start:start + RENDER_CHUNK],
                              as_result=True, map_levels="final", context=context)
        images.extend(tensor_to_pil(image) for image in results)
    return images


def render_bytes(cached: Render | None) -> int:
    """Memory held by a render cache's tensors."""
    if cached is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (*cached.outputs, *cached.features, *cached.mapped))


class RenderCaches:
    """Bounds the memory of all sessions' render caches together; least recently used go first.

    A session's cache (every level's features for its current code: 8.7 MB for the cpu
    model at 256x256) lets its next edit re-render only the edited level and finer ones.
    Kept for every session it would grow memory with the number of users, and Gradio keeps
    a closed session's state for an hour: twelve users at 256x256 added 32% to the app's
    memory. Over `budget_bytes`, the least recently rendered sessions drop their caches;
    such a session's next render computes all levels and caches again. The result is the
    same either way, since `_render_current` compares codes instead of trusting a cache.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._recent: OrderedDict[int, weakref.ref] = OrderedDict()  # id -> session, oldest first
        self._lock = threading.Lock()

    def used(self, session: StudioSession) -> None:
        """`session` has just rendered: make it the most recent, and trim the others to the budget."""
        with self._lock:
            self._recent.pop(id(session), None)
            self._recent[id(session)] = weakref.ref(session)
            total = 0
            for key, ref in reversed(list(self._recent.items())):  # newest first
                other = ref()
                if other is None:
                    del self._recent[key]
                    continue
                total += render_bytes(other.cache)
                if total <= self.budget_bytes or other is session:
                    continue
                # Never wait for a busy session (it may be waiting for this lock in turn);
                # busy means in use, so its cache stays.
                if other.lock.acquire(blocking=False):
                    try:
                        total -= render_bytes(other.cache)
                        other.cache = other.cache_codes = None
                    finally:
                        other.lock.release()
                    del self._recent[key]

    def total_bytes(self) -> int:
        with self._lock:
            return sum(render_bytes(session.cache) for ref in self._recent.values() if (session := ref()))


RENDER_CACHES = RenderCaches(RENDER_CACHE_BYTES)


@dataclass
class RenderReport:
    """What the last render of the current code did: first level recomputed, and time taken."""

    start_level: int | None
    seconds: float


@dataclass
class IvOUpdate:
    """One IvO progress report for the page."""

    step: int
    total_steps: int
    mse: float  # with colour hints: the masked colour distance
    lpips: float | None  # None for colour hints


@dataclass
class StudioSession:
    """Everything one user has on the page; see the module notes for origin/base/current."""

    model_path: str | None = None
    source_image: Image.Image | None = None
    max_side: int = 256
    prepared: PreparedInput | None = None
    # (model fingerprint, the semantic prior's maps of `prepared` for it), computed on first use.
    context: tuple[str, list[torch.Tensor] | None] | None = None
    # (the `prepared` it shows, model fingerprint, image): every editor update shows the
    # input beside the result, and recomputing it cost 2 to 4 ms per slider edit.
    _input_preview: tuple[PreparedInput, str, Image.Image] | None = field(default=None, repr=False, compare=False)
    reference: torch.Tensor | None = None
    reference_preview: Image.Image | None = None
    samples: LatentCodes | None = None
    sample_images: list[Image.Image] = field(default_factory=list)
    sample_seed: int = 0
    batches_drawn: int = 0
    origin: LatentCodes | None = None
    base: LatentCodes | None = None
    edits: list[LevelEdit] = field(default_factory=list)
    locked: list[bool] = field(default_factory=list)
    renormalise: bool = True
    current: LatentCodes | None = None
    cache: Render | None = None
    cache_codes: LatentCodes | None = None
    level_images: list[torch.Tensor] = field(default_factory=list)
    last_render: RenderReport | None = None
    full_render_seconds: float = 0.0  # the last render of every level: decides `streams_coarse_first`
    # The last region re-drawn and the last colour strokes, at the output size, so that the
    # same region can be re-drawn again (another seed) without painting it again.
    region: torch.Tensor | None = None
    hints: tuple[torch.Tensor, torch.Tensor] | None = None
    # One user's events may overlap (a slider moved while IvO runs); they take turns here.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def notes(self) -> list[str]:
        return list(self.prepared.notes) if self.prepared else []

    def result_image(self) -> Image.Image | None:
        return tensor_to_pil(self.level_images[-1][0]) if self.level_images else None

    def level_strip(self) -> list[Image.Image]:
        return [tensor_to_pil(image[0]) for image in self.level_images]

    def input_preview(self, model: LoadedModel) -> Image.Image | None:
        """The input as the model sees it (grey for colourization), at the result's size."""
        if self.prepared is None:
            return None
        cached = self._input_preview
        if cached is not None and cached[0] is self.prepared and cached[1] == model.fingerprint:
            return cached[2]
        preview = model.task.input_preview(self.prepared.x, self.prepared.output_size)
        crop_h, crop_w = self.prepared.crop
        image = tensor_to_pil(preview[..., :crop_h, :crop_w].clamp(-1, 1)[0])
        self._input_preview = (self.prepared, model.fingerprint, image)
        return image

    def context_for(self, model: LoadedModel) -> list[torch.Tensor] | None:
        """The input's semantic maps for `model` (None without the prior), computed once per
        input: every render of this photo needs them, and they cost a third of a full render."""
        if self.context is None or self.context[0] != model.fingerprint:
            self.context = (model.fingerprint, semantic_context(model.net, self.require_input()))
        return self.context[1]

    def require_input(self) -> PreparedInput:
        if self.prepared is None:
            raise StudioError("upload an image first")
        return self.prepared

    def require_current(self) -> LatentCodes:
        if self.current is None:
            raise StudioError("generate samples (or load a code) first")
        return self.current

    # -- input and model ----------------------------------------------------------------------

    def set_model(self, model: LoadedModel) -> None:
        """Switch models: codes of another model do not fit, so they are dropped."""
        with self.lock:
            self.model_path = str(model.path)
            self._clear_codes()
            self.context = None
            if self.source_image is not None:
                self.prepared = prepare(model.net, model.task, self.source_image, self.max_side)
            self.reference = self.reference_preview = None

    def set_input(self, model: LoadedModel, image: Image.Image, max_side: int) -> list[str]:
        """Use a new photo (an RGB PIL image); returns what was done to it, in words."""
        with self.lock:
            try:
                prepared = prepare(model.net, model.task, image, int(max_side))
            except ValueError as error:  # e.g. a photo smaller than the model's minimum
                raise StudioError(str(error)) from None
            self.model_path = str(model.path)
            self.source_image, self.max_side, self.prepared = image, int(max_side), prepared
            self.context = None
            self.reference = self.reference_preview = None
            self._clear_codes()
            return list(prepared.notes)

    def set_reference(self, image: Image.Image | None) -> None:
        """The true photo, if the user has it: shown beside the result and used as IvO target."""
        with self.lock:
            if image is None:
                self.reference = self.reference_preview = None
                return
            self.reference, self.reference_preview = prepare_reference(self.require_input(), image)

    def _clear_codes(self) -> None:
        self.samples, self.sample_images, self.batches_drawn = None, [], 0
        self.origin = self.base = self.current = None
        self.cache = self.cache_codes = None
        self.level_images, self.edits, self.locked = [], [], []
        self.last_render = None
        self.region = self.hints = None

    # -- samples ------------------------------------------------------------------------------

    def draw_samples(self, model: LoadedModel, num: int, seed: int | None = None, more: bool = False) -> None:
        """Draw `num` fresh samples into the gallery (replacing it, or adding with `more`).

        Locked levels of the current code are copied into every new sample. The first
        batch of seed s has the codes `python -m chimle sample --seed s` draws.
        """
        with self.lock:
            prepared = self.require_input()
            num = int(num)
            if num < 1:
                raise StudioError("draw at least one sample")
            if seed is not None and not 0 <= seed <= MAX_SEED:
                raise StudioError(f"the seed must lie between 0 and {MAX_SEED}")
            if not more or self.samples is None:
                self.sample_seed = fresh_seed() if seed is None else int(seed)
                self.samples, self.sample_images, self.batches_drawn = None, [], 0
            existing = 0 if self.samples is None else self.samples.batch_size
            if existing + num > MAX_SAMPLES:
                raise StudioError(f"the gallery holds at most {MAX_SAMPLES} samples; "
                                  f"generate a new set instead")
            draw_seed = (self.sample_seed if self.batches_drawn == 0
                         else derived_seed(self.sample_seed, self.batches_drawn))
            codes = self._with_locked_levels(sample_codes(model.net, prepared, num, draw_seed))
            images = gallery_images(model, prepared, codes, self.context_for(model))
            self.samples = codes if self.samples is None else LatentCodes.cat([self.samples, codes])
            self.sample_images.extend(images)
            self.batches_drawn += 1
            if not more or self.current is None:
                self.adopt(model, self.samples[0])

    def _with_locked_levels(self, codes: LatentCodes) -> LatentCodes:
        if self.current is None or self.current.shape != codes.shape:
            return codes
        return keep_levels(codes, self.current, [level for level, locked in enumerate(self.locked) if locked])

    def select_sample(self, model: LoadedModel, index: int) -> None:
        """Make gallery sample `index` the current code."""
        with self.lock:
            if self.samples is None or not 0 <= index < self.samples.batch_size:
                raise StudioError("no such sample")
            self.adopt(model, self.samples[index])

    # -- the current code ---------------------------------------------------------------------

    def adopt(self, model: LoadedModel, codes: LatentCodes) -> RenderReport:
        """Make `codes` (one sample) the current code, all sliders neutral; locks are kept."""
        with self.lock:
            prepared = self.require_input()
            expected = model.net.code_shape(prepared.output_size)
            if codes.batch_size != 1 or codes.shape != expected:
                raise StudioError(f"this code does not fit the input: it is for an output with a "
                                  f"finest level of {codes.shape.local_sizes[-1]}, this input needs "
                                  f"{expected.local_sizes[-1]} (same model, same image size?)")
            levels = codes.num_levels
            self.origin = codes.clone()
            self.base = self.origin
            self.current = self.origin
            self.edits = [LevelEdit() for _ in range(levels)]
            if len(self.locked) != levels:
                self.locked = [False] * levels
            return self._render_current(model)

    def edit_level(self, model: LoadedModel, level: int, edit: LevelEdit,
                   renormalise: bool | None = None, on_coarse: CoarseResult | None = None) -> RenderReport:
        """Apply one level's slider values; re-renders from that level upward.

        Args:
            on_coarse: called with a preview of the result, (1, 3, H, W) in [-1, 1], as soon
                as the first re-rendered level is done and before the finer ones are
                (`pipeline.coarse_result`); not called when only the finest level changes.
        """
        with self.lock:
            self.require_current()
            self._check_level(level)
            if renormalise is not None:
                self.renormalise = bool(renormalise)
            self.edits[level] = edit
            self._apply_edits(model)
            return self._render_current(model, on_coarse)

    def streams_coarse_first(self, level: int) -> bool:
        """Whether an edit of `level` should show a coarse preview first: when the last full
        render took longer than `COARSE_FIRST_ABOVE_SECONDS` and there are finer levels to wait for."""
        return (self.current is not None and level < self.current.num_levels - 1
                and self.full_render_seconds > COARSE_FIRST_ABOVE_SECONDS)

    def randomise_level(self, model: LoadedModel, level: int, seed: int | None = None) -> RenderReport:
        """Draw a new base code for `level` (both parts); its sliders return to neutral."""
        with self.lock:
            self.require_current()
            self._check_level(level)
            self.base = redraw_level(self.base, level, fresh_seed() if seed is None else seed)
            self.edits[level] = LevelEdit()
            self._apply_edits(model)
            return self._render_current(model)

    def randomise_unlocked(self, model: LoadedModel) -> RenderReport:
        """Re-draw every unlocked level of the current code."""
        with self.lock:
            self.require_current()
            unlocked = [level for level, locked in enumerate(self.locked) if not locked]
            if not unlocked:
                raise StudioError("every level is locked; unlock one to re-draw it")
            for level in unlocked:
                self.base = redraw_level(self.base, level, fresh_seed())
                self.edits[level] = LevelEdit()
            self._apply_edits(model)
            return self._render_current(model)

    def reset_level(self, model: LoadedModel, level: int) -> RenderReport:
        """Return `level` to the picked code, sliders neutral."""
        with self.lock:
            self.require_current()
            self._check_level(level)
            self.base = self.base.replace_level(level, self.origin)
            self.edits[level] = LevelEdit()
            self._apply_edits(model)
            return self._render_current(model)

    def set_locked(self, level: int, locked: bool) -> None:
        with self.lock:
            self.require_current()
            self._check_level(level)
            self.locked[level] = bool(locked)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.current.num_levels:
            raise StudioError(f"this model has {self.current.num_levels} levels, not {level + 1}")

    def _apply_edits(self, model: LoadedModel) -> None:
        # Every level from base and its sliders: the current code never depends on the order
        # of edits (nor on when "renormalise" was switched), and an unedited level is
        # bit-exactly base's.
        self.current = apply_edits(self.base, dict(enumerate(self.edits)), model.directions, self.renormalise)

    def _render_current(self, model: LoadedModel, on_coarse: CoarseResult | None = None) -> RenderReport:
        """Render the current code, reusing the cached levels below the first changed one.

        The first changed level is found by comparing codes rather than trusted from the
        caller, so whatever happened to the state in between, the cache is only reused
        where it is still right.
        """
        tic = time.perf_counter()
        start = first_changed_level(self.cache_codes if self.cache is not None else None, self.current)
        if start is not None:
            # The images of the levels below `start` belong to the reused render: kept, not mapped again.
            reuse, rest, images = (self.cache if start > 0 else None), start, self.level_images[:start]
            if on_coarse is not None and start < self.current.num_levels - 1:
                # The same computation in two calls (bit-identical): the first level, shown, then the rest.
                coarse, reuse = render(model.net, model.task, self.prepared, self.current, reuse=reuse,
                                       start_level=start, upto=start + 1, as_result=True, map_levels="new",
                                       context=self.context_for(model))
                on_coarse(coarse_result(model.task, self.prepared, reuse.outputs[start]))
                images, rest = images + [image.clone() for image in coarse], start + 1
            finer, self.cache = render(model.net, model.task, self.prepared, self.current,
                                       reuse=reuse, start_level=rest, as_result=True, map_levels="new",
                                       context=self.context_for(model))
            self.level_images = images + [image.clone() for image in finer]
            self.cache_codes = self.current
            RENDER_CACHES.used(self)
        seconds = time.perf_counter() - tic
        if start == 0 and on_coarse is None:
            self.full_render_seconds = seconds
        self.last_render = RenderReport(start, seconds)
        return self.last_render

    # -- painting on the result: region re-draw and colour hints -------------------------------

    def redraw_region(self, model: LoadedModel, level: int, mask: torch.Tensor | None, seed: int,
                      amount: float = 1.0) -> RenderReport:
        """Re-draw (amount 1) or blend toward `seed` level `level`'s local code under a painted region.

        The level's local code as shown (its local blend and noise scale applied), with the
        region edited (`editing.redraw_region`), becomes the level's base; its local sliders
        return to neutral, its global ones stay. Then it renders as a slider edit does, from
        `level` on, reusing the coarser levels.

        Args:
            mask: (h, w) in [0, 1] at the result's size; None re-draws the last region again.
        """
        with self.lock:
            current = self.require_current()
            self._check_level(level)
            if mask is None:
                if self.region is None:
                    raise StudioError("paint the region to re-draw on the result first")
                region = self.region
            else:
                region = pad_painted(self.prepared, mask.float()[None, None])[0, 0]  # (H, W) at the output size
                if not (region > 0).any():
                    raise StudioError("paint the region to re-draw on the result first")
            edited = redraw_region(current, level, region, int(seed), float(amount), self.renormalise)
            self.region = region
            self.base = self.base.with_level(level, local_code=edited.locals[level])
            self.edits[level] = replace(self.edits[level], local_blend=0.0, noise_scale=1.0)
            self._apply_edits(model)
            return self._render_current(model)

    def find_colour_hints(self, model: LoadedModel, colours: torch.Tensor | None, mask: torch.Tensor | None,
                          config: IvOConfig, seed: int = 0) -> Iterator[IvOUpdate]:
        """Find a code whose result has the painted colours under the strokes, yielding progress.

        The best of `config.init_samples` random codes and the current one under the masked
        colour distance (`ivo.hint_search`), then IvO on that distance alone (`ivo_steps` with
        a mask): nothing pulls the unpainted part of the image, which the code prior keeps
        plausible. Every report's code becomes the current code, as in `reconstruct`, so the
        page shows it live and a Stop keeps it, editable with the sliders.

        Args:
            colours: (1, 3, h, w) RGB in [-1, 1] and mask (h, w) in [0, 1], at the result's
                size; both None re-uses the last strokes.
        """
        with self.lock:
            prepared = self.require_input()
            if mask is None:
                if self.hints is None:
                    raise StudioError("paint colour strokes on the result first")
                target, painted = self.hints
            else:
                target = pad_painted(prepared, colours.float(), "constant")  # (1, 3, H, W)
                painted = pad_painted(prepared, mask.float()[None, None], "constant")  # (1, 1, H, W)
                if not (painted > 0).any():
                    raise StudioError("paint colour strokes on the result first")
            include = self.require_current()
            self.hints = (target, painted)
        generator = torch.Generator().manual_seed(seed)
        found = hint_search(model.net, model.task, prepared.x, target, painted, config.init_samples,
                            config.colour_space, generator, config.chunk_size, include=include)
        steps = ivo_steps(model.net, model.task, None, prepared.x, target, config, init=found.codes, mask=painted)
        try:
            for progress in steps:
                with self.lock:
                    if self.prepared is not prepared:
                        raise StudioError("the input changed while finding the colours; it was abandoned")
                    self.adopt(model, progress.codes)
                yield IvOUpdate(progress.step, config.steps, float(progress.mse[0]), None)
        finally:
            steps.close()  # restores the model's gradient flags at once, also when stopped early

    # -- saving and loading codes -------------------------------------------------------------

    def export(self, model: LoadedModel, folder: str | Path, stem: str,
               progress: Progress | None = None) -> tuple[Path, Path]:
        """Write the result at the photo's own size as a lossless PNG, and its code as .safetensors.

        The code is the working-size code: loaded back with the same model, photo and
        working size, it gives this PNG again, bit for bit (`pipeline.render_full_size`).
        The full-size render runs outside the session lock, so the page stays responsive.

        Args:
            progress: called with the fraction of the full-size render done.
        """
        with self.lock:
            codes = self.require_current()
            prepared, image, max_side = self.require_input(), self.source_image, self.max_side
        folder = Path(folder)
        paths = write_results(model.net, model.task, image, prepared, codes, folder, model.fingerprint,
                              {"model": model.path.name, "task": model.task.name, "max_side": max_side},
                              progress)
        image_path, codes_path = folder / f"{stem}.png", folder / f"{stem}.safetensors"
        paths[0].replace(image_path)
        (folder / CODES_FILE).replace(codes_path)
        return image_path, codes_path

    def load_code_file(self, model: LoadedModel, path: str | Path) -> int:
        """Load codes saved by the studio or the CLI; returns how many samples the file held.

        One code becomes the current code; several fill the gallery and the first is picked.
        """
        with self.lock:
            prepared = self.require_input()
            try:
                codes, _ = load_codes(path, model.fingerprint)
            except CheckpointError as error:
                raise StudioError(str(error).replace(str(path), "the code file")) from None
            expected = model.net.code_shape(prepared.output_size)
            if codes.shape != expected:
                raise StudioError(f"this code is for an output whose finest level is "
                                  f"{codes.shape.local_sizes[-1]}; this input needs {expected.local_sizes[-1]}: "
                                  f"use the same image and working size as when it was saved")
            if codes.batch_size > 1:
                codes = codes[:MAX_SAMPLES]
                self.samples, self.sample_images, self.batches_drawn = codes, gallery_images(model, prepared, codes, self.context_for(model)), 1
            self.adopt(model, codes[0])
            return codes.batch_size

    # -- reconstruction (IvO) -----------------------------------------------------------------

    def reconstruct(self, model: LoadedModel, distance: Distance, config: IvOConfig,
                    seed: int = 0) -> Iterator[IvOUpdate]:
        """Optimise the current code toward the reference photo, yielding progress.

        Starts from the current code (or, without one, the best of `config.init_samples`
        random codes). At every report the code so far becomes the current code and is
        rendered, so the page shows it live and a Stop keeps it, editable with the sliders.
        The optimisation runs outside the session lock; only adopting a code takes it.
        """
        with self.lock:
            self.require_input()
            if self.reference is None:
                raise StudioError("give a reference image to reconstruct")
            prepared, target, init = self.prepared, self.reference, self.current
        steps = ivo_steps(model.net, model.task, distance, prepared.x, target, config, init=init,
                          generator=torch.Generator().manual_seed(seed))
        try:
            for progress in steps:
                with self.lock:
                    if self.prepared is not prepared:
                        raise StudioError("the input changed during the reconstruction; it was abandoned")
                    self.adopt(model, progress.codes)
                yield IvOUpdate(progress.step, config.steps, float(progress.mse[0]), float(progress.lpips[0]))
        finally:
            steps.close()  # restores the model's gradient flags at once, also when stopped early
