"""Gradio-facing handlers: widget values in, updates keyed by widget out.

`app.py` lays out the widgets, names them in `widgets.ExploreWidgets` and `TrainWidgets`,
and connects them to the methods of `Studio`. Each method returns a dict
{widget: value or gr.update(...)} for the widgets it changes; the event's other outputs
stay as they are. The work itself happens in `session.StudioSession`, `chimle.editing`
and `training`; this module only translates.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
import pandas as pd
import torch
from PIL import Image

from ..checkpoint import CheckpointError, tensor_digest
from ..config import PRESETS
from ..data import DataError
from ..editing import EditError, LevelEdit, region_reach
from ..images import IMAGE_EXTENSIONS, ImageError, load_rgb, tensor_to_pil
from ..ivo import COLOUR_SPACES, IvOConfig
from ..perceptual import BackboneWeightsError, load_perceptual_distance
from ..runs import FINISHED, RunPaths
from ..tasks import TASK_NAMES
from . import training
from .inputs import UPLOAD_MAX_PIXELS
from .batches import BatchError, run_photo_batch
from .direct import Updates, preprocessed, serialised
from .models import MODELS, LoadedModel, default_model, find_models, read_task_name
from .security import (TrainingPolicy, UnsafePathError, ZipLimits, confine_data_folder, data_folders,
                       extract_images_zip)
from .paint import canvas, describe_strokes, strokes_from_editor
from .previews import PreviewFiles
from .render_thread import RENDERS, iterate_as_job, run_as_job
from .session import RenderReport, StudioError, StudioSession, fresh_seed
from .widgets import ExploreWidgets, TrainWidgets

IVO_REPORT_EVERY = 5
HINT_CANDIDATES = 64  # random codes judged against the colour strokes before IvO refines the best
HINT_CHUNK = 16  # of them rendered per forward pass
DEFAULT_MAX_SIDE = 256

USER_ERRORS = (StudioError, EditError, ImageError, CheckpointError, DataError, UnsafePathError,
               training.TrainingError, BackboneWeightsError, BatchError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show expected failures as a message on the page instead of a server traceback."""
    try:
        yield
    except USER_ERRORS as error:
        raise gr.Error(str(error).splitlines()[0] if str(error) else type(error).__name__,
                       print_exception=False) from None


@dataclass(frozen=True)
class StudioSettings:
    """Where the studio finds things, and what it may do (from app.py's command line)."""

    checkpoints: Path
    runs: Path
    data_root: Path
    assets: Path
    policy: TrainingPolicy
    default_max_side: int = DEFAULT_MAX_SIDE


def model_choices(settings: StudioSettings) -> list[tuple[str, str]]:
    """The model dropdown's (label, path) choices, freshly scanned."""
    return [(entry.label, str(entry.path)) for entry in find_models(settings.checkpoints, settings.runs)]


class Downloads:
    """Saved results, one folder per session, in a temporary folder removed when the app exits."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chimle-studio-"))
        self._previews: dict[int, PreviewFiles] = {}
        # Served as they are (gr.set_static_paths): Gradio neither hashes nor copies a preview
        # into its cache on every edit. Their names are random-looking content hashes.
        self.previews_root = self.root / "previews"
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)

    def folder(self, session: StudioSession, kind: str = "") -> Path:
        """The session's folder, or its subfolder for one kind of download (a save, a batch)."""
        return self.root / f"{id(session):x}" / kind

    def previews(self, session: StudioSession) -> PreviewFiles:
        """The session's working-size images as files (`previews.PreviewFiles`)."""
        return self._previews.setdefault(id(session), PreviewFiles(self.previews_root / f"{id(session):x}"))

    def forget(self, session: StudioSession | None) -> None:
        """gr.State's delete callback: drop the session's saved files and previews."""
        if session is not None:
            self._previews.pop(id(session), None)
            shutil.rmtree(self.folder(session), ignore_errors=True)
            shutil.rmtree(self.previews_root / f"{id(session):x}", ignore_errors=True)


EXAMPLES_FILE = "examples.json"  # in assets/: {"examples": {task name: [file names]}}


def find_examples(assets: Path) -> list[str]:
    """Example photos shipped in `assets/` (may be none)."""
    if not assets.is_dir():
        return []
    return [str(p) for p in sorted(assets.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]


def examples_for_task(assets: Path, task: str | None) -> list[str]:
    """The example photos of a task: those `assets/examples.json` lists for it (a grey photo for
    colourization, a JPEG for decompression...); without that file, every photo in `assets/`."""
    photos = find_examples(assets)
    try:
        listed = json.loads((assets / EXAMPLES_FILE).read_text())["examples"]
    except (OSError, ValueError, KeyError, TypeError):
        return photos
    names = listed.get(task, []) if isinstance(listed, dict) and task else []
    return [str(assets / name) for name in names if str(assets / name) in photos]


def _level_caption(session: StudioSession, level: int) -> str:
    h, w = session.level_images[level].shape[-2:]
    return f"Level {level + 1} · {w}×{h}"


def describe_render(report: RenderReport | None, num_levels: int) -> str:
    if report is None:
        return ""
    if report.start_level is None:
        return "Nothing changed (the edit gives the same code)."
    levels = (f"level {num_levels}" if report.start_level == num_levels - 1
              else f"levels {report.start_level + 1}–{num_levels}")
    return f"Rendered {levels} in {report.seconds:.2f} s."


class Studio:
    """The handlers of one app instance, and the widgets they update.

    Args:
        settings: folders and the training policy.
        explore, train: the page's widgets, which the handlers' updates are keyed by.
        downloads: where saved results go (its `forget` is the session state's delete callback).
    """

    def __init__(self, settings: StudioSettings, explore: ExploreWidgets, train: TrainWidgets,
                 downloads: Downloads) -> None:
        self.settings, self.explore, self.train, self.downloads = settings, explore, train, downloads

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _session(session: StudioSession | None) -> StudioSession:
        return session if session is not None else StudioSession()

    @staticmethod
    def _model(session: StudioSession) -> LoadedModel:
        if session.model_path is None:
            raise StudioError("choose a model first")
        return MODELS.get(session.model_path)

    def open_model(self, model_path: str) -> LoadedModel:
        """Load a model the registry lists; any other path is refused (it comes from the browser)."""
        if model_path not in [value for _, value in self.model_choices()]:
            raise StudioError("that model is not in the list; refresh the model list")
        return MODELS.get(model_path)

    def model_choices(self) -> list[tuple[str, str]]:
        return model_choices(self.settings)

    def editor_values(self, session: StudioSession, model: LoadedModel | None, message: str = "") -> Updates:
        """The session and the result area (`ExploreWidgets.editor`)."""
        page = self.explore
        previews = self.downloads.previews(session)
        # Each image is encoded once however many widgets show it, and not again while unchanged.
        strip = [(previews.path(image), _level_caption(session, level))
                 for level, image in enumerate(session.level_strip())]
        result = strip[-1][0] if strip else None
        compare_input = (previews.path(session.input_preview(model)), result) if result and model else None
        if session.reference_preview is not None and result is not None:
            compare_truth = gr.update(value=(previews.path(session.reference_preview), result), visible=True)
        else:
            compare_truth = gr.update(value=None, visible=False)
        previews.end_response()
        status = message or describe_render(session.last_render, len(session.level_images))
        return {page.state: session, page.result: result, page.level_strip: strip,
                page.compare_input: compare_input, page.compare_truth: compare_truth, page.status: status}

    def control_values(self, session: StudioSession, model: LoadedModel | None,
                       levels: list[int] | None = None) -> Updates:
        """The level tabs' widgets set to the session's sliders, for `levels` (default: every tab)."""
        num_levels = model.num_levels if model is not None else 0
        updates = {}
        for level, widgets in enumerate(self.explore.levels):
            if levels is not None and level not in levels:
                continue
            visible = level < num_levels and session.current is not None
            edit = session.edits[level] if visible else LevelEdit()
            title = f"Level {level + 1}"
            if visible:
                h, w = session.current.locals[level].shape[-2:]
                title += f" · {2 * w}×{2 * h}"  # the level's output size
            updates[widgets.tab] = gr.update(visible=visible, label=title)
            explained = model.directions(level).explained.tolist() if visible else []
            for index, (slider, amount) in enumerate(zip(widgets.directions, edit.directions)):
                label = (f"Direction {index + 1} ({explained[index]:.0%} of variance)" if index < len(explained)
                         else f"Direction {index + 1}")
                updates[slider] = gr.update(value=amount, label=label, visible=not visible or index < len(explained))
            # A level with region codes pools its local code object by object: its seed picks
            # the objects' colours, not only texture (docs/method.md#region-codes).
            by_object = visible and model.net.levels[level].region_pool is not None
            local_seed = gr.update(value=edit.local_seed,
                                   label="Local seed (colours object by object)" if by_object else "Local seed")
            # A model without a global code (ModelConfig.global_code_dim 0) has nothing for them to move.
            has_global = not visible or model.net.config.global_code_dim > 0
            updates.update({widgets.global_heading: gr.update(visible=has_global),
                            widgets.global_seed: gr.update(value=edit.global_seed, visible=has_global),
                            widgets.global_blend: gr.update(value=edit.global_blend, visible=has_global),
                            widgets.local_seed: local_seed, widgets.local_blend: edit.local_blend,
                            widgets.noise_scale: edit.noise_scale,
                            widgets.lock: session.locked[level] if visible else False})
        return updates

    def _full(self, session: StudioSession, model: LoadedModel | None, message: str = "") -> Updates:
        return self.editor_values(session, model, message) | self.control_values(session, model)

    def gallery_values(self, session: StudioSession) -> list[tuple[str, str]]:
        previews = self.downloads.previews(session)
        return [(previews.path(image), f"#{index + 1}") for index, image in enumerate(session.sample_images)]

    def _gallery_and_seed(self, session: StudioSession) -> Updates:
        return {self.explore.gallery: self.gallery_values(session), self.explore.seed: session.sample_seed}

    # -- page load and model ------------------------------------------------------------------

    def default_model_path(self) -> str | None:
        """The model the page opens with (`models.default_model`: the first task's default)."""
        entry = default_model(find_models(self.settings.checkpoints, self.settings.runs), self.settings.checkpoints)
        return str(entry.path) if entry is not None else None

    def load_page(self) -> Updates:
        """On page load: the model list, freshly scanned, with the default model chosen."""
        choices = self.model_choices()
        info = "" if choices else (f"No models found: put a `.safetensors` checkpoint in "
                                   f"`{self.settings.checkpoints}` or train one in the Train tab.")
        return {self.explore.model: gr.update(choices=choices, value=self.default_model_path()),
                self.explore.model_info: info}

    def examples_of(self, model_path: str | None) -> list[str]:
        """The example photos of the task of the model at `model_path`."""
        return examples_for_task(self.settings.assets, read_task_name(model_path) if model_path else None)

    def show_examples(self, model_path: str | None) -> gr.Dataset:
        """The examples widget with the photos of the chosen model's task (hidden if there are none)."""
        examples = self.examples_of(model_path)
        return gr.Dataset(samples=[[path] for path in examples], visible=bool(examples))

    def load_example(self, model_path: str | None, index: int | None) -> str:
        """The example photo clicked (by its index among the chosen model's task's examples)."""
        with user_errors():
            examples = self.examples_of(model_path)
            if not isinstance(index, int) or not 0 <= index < len(examples):
                raise StudioError("no such example for this model")
            return examples[index]

    def refresh_models(self, current: str | None) -> dict:
        choices = self.model_choices()
        values = [value for _, value in choices]
        return gr.update(choices=choices, value=current if current in values else (values[0] if values else None))

    def start(self, session: StudioSession | None, model_path: str | None, image_path: str | None,
              reference_path: str | None, max_side: float, num: float, seed: float, randomise_seed: bool) -> Updates:
        """A new model, photo or working size: prepare the input and draw a fresh gallery.

        Updates model info, notes, the editor, the level tabs, the gallery and the seed.
        """
        session = self._session(session)
        page = self.explore
        if not model_path:
            return ({page.model_info: "No model chosen.", page.notes: ""} | self._full(session, None)
                    | self._gallery_and_seed(session))
        with user_errors():
            model = self.open_model(model_path)
            session.set_model(model)
            notes: list[str] = []
            if image_path:
                image = load_rgb(image_path, max_pixels=UPLOAD_MAX_PIXELS, name="the uploaded image")
                notes = session.set_input(model, image, int(max_side))
                if reference_path:
                    session.set_reference(load_rgb(reference_path, max_pixels=UPLOAD_MAX_PIXELS,
                                                   name="the reference image"))
                session.draw_samples(model, int(num), None if randomise_seed else int(seed or 0))
            notes_text = "\n".join(f"- {note[0].upper()}{note[1:]}." for note in notes)
            return ({page.model_info: model.describe(), page.notes: notes_text} | self._full(session, model)
                    | self._gallery_and_seed(session))

    # -- samples ------------------------------------------------------------------------------

    def generate(self, session: StudioSession | None, num: float, seed: float, randomise_seed: bool) -> Updates:
        """A fresh gallery; updates the editor, the level tabs, the gallery and the seed used."""
        session = self._session(session)
        with user_errors():
            model = self._model(session)
            session.draw_samples(model, int(num), None if randomise_seed else int(seed or 0))
            return self._full(session, model) | self._gallery_and_seed(session)

    def more(self, session: StudioSession | None, num: float) -> Updates:
        session = self._session(session)
        page = self.explore
        with user_errors():
            model = self._model(session)
            session.draw_samples(model, int(num), more=True)
            return {page.state: session, page.gallery: self.gallery_values(session),
                    page.status: f"{len(session.sample_images)} samples; click one to make it the current result."}

    def select(self, session: StudioSession | None, evt: gr.SelectData) -> Updates:
        return self.pick_sample(session, evt.index)

    def pick_sample(self, session: StudioSession | None, index: float) -> Updates:
        """Gallery sample `index` (0-based) becomes the current result: a click on the gallery,
        or `/pick_sample` for API clients, which cannot send a click."""
        session = self._session(session)
        with user_errors():
            model = self._model(session)
            if index is None or int(index) != index:
                raise StudioError("give the sample's number in the gallery, counting from 0")
            session.select_sample(model, int(index))
            return self._full(session, model, f"Sample #{int(index) + 1} is the current result.")

    # -- level edits --------------------------------------------------------------------------

    def edit_level(self, level: int, session: StudioSession | None, renormalise: bool,
                   *values: float) -> Iterator[Updates]:
        """One level's sliders moved: `values` are its `LevelWidgets.sliders` (the directions, then
        global seed and blend, local seed and blend, noise scale). Updates the editor.

        Where the render would keep the user waiting (`StudioSession.streams_coarse_first`),
        the result is first shown from the edited level alone, then refined in place.

        The event is registered without Gradio's own processing (`direct.NO_HOPS`, the hot
        path): the values come raw and the updates go out serialised.
        """
        session = self._session(session)
        with user_errors():
            model = self._model(session)
            widgets = self.explore.levels[level]
            values = preprocessed(widgets.sliders, values)
            count = len(widgets.directions)
            directions = values[:count]
            global_seed, global_blend, local_seed, local_blend, noise_scale = values[count:]
            edit = LevelEdit(tuple(float(a or 0) for a in directions), int(global_seed or 0),
                             float(global_blend or 0), int(local_seed or 0), float(local_blend or 0),
                             float(1.0 if noise_scale is None else noise_scale))
            # All of it on the render thread, the images' conversion too (torch parallelises
            # that as well); only the streaming loop runs here.
            if not session.streams_coarse_first(level):
                yield RENDERS.run(self._edited, session, model, level, edit, renormalise)
                return
            previews = self.downloads.previews(session)

            def render(show: Callable[[Updates], None]) -> None:
                def show_coarse(coarse: torch.Tensor) -> None:
                    show(serialised({self.explore.result: previews.path(tensor_to_pil(coarse[0])),
                                     self.explore.status: f"Level {level + 1} drawn; refining the finer levels…"}))
                show(self._edited(session, model, level, edit, renormalise, show_coarse))

            yield from RENDERS.stream(render)

    def _edited(self, session: StudioSession, model: LoadedModel, level: int, edit: LevelEdit, renormalise: bool,
                on_coarse: Callable[[torch.Tensor], None] | None = None) -> Updates:
        """Apply a level edit and give the editor's new values, serialised (the event skips Gradio's processing)."""
        session.edit_level(model, level, edit, renormalise, on_coarse)
        return serialised(self.editor_values(session, model))

    def randomise_level(self, level: int, session: StudioSession | None) -> Updates:
        session = self._session(session)
        with user_errors():
            model = self._model(session)
            session.randomise_level(model, level)
            return self.editor_values(session, model) | self.control_values(session, model, [level])

    def reset_level(self, level: int, session: StudioSession | None) -> Updates:
        session = self._session(session)
        with user_errors():
            model = self._model(session)
            session.reset_level(model, level)
            return self.editor_values(session, model) | self.control_values(session, model, [level])

    def lock_level(self, level: int, session: StudioSession | None, locked: bool) -> Updates:
        session = self._session(session)
        with user_errors():
            session.set_locked(level, locked)
            state = "locked: it keeps its code when samples or levels are re-drawn" if locked else "unlocked"
            return {self.explore.state: session, self.explore.status: f"Level {level + 1} {state}."}

    def randomise_unlocked(self, session: StudioSession | None) -> Updates:
        session = self._session(session)
        with user_errors():
            model = self._model(session)
            session.randomise_unlocked(model)
            return self._full(session, model)

    # -- compare, save, load ------------------------------------------------------------------

    def set_reference(self, session: StudioSession | None, reference_path: str | None) -> Updates:
        session = self._session(session)
        with user_errors():
            image = load_rgb(reference_path, max_pixels=UPLOAD_MAX_PIXELS, name="the reference image") \
                if reference_path else None
            if image is not None and session.prepared is None:
                return self.editor_values(session, None, "Reference kept for later: upload the input photo too.")
            session.set_reference(image)
            model = self._model(session) if session.model_path else None
            return self.editor_values(session, model, "Reference set." if image else "Reference removed.")

    def save(self, session: StudioSession | None, progress: gr.Progress = gr.Progress()) -> Updates:
        """Write the result at the photo's own size (PNG) and its code (.safetensors) for download,
        on a thread of its own (`run_as_job`)."""
        return run_as_job(self._save, self._session(session), progress)

    def _save(self, session: StudioSession, progress: gr.Progress) -> Updates:
        with user_errors():
            model = self._model(session)
            codes = session.require_current()
            # One folder per session: a new save replaces the previous files.
            folder = self.downloads.folder(session, "save")
            shutil.rmtree(folder, ignore_errors=True)
            stem = f"chimle-{model.path.stem}-{tensor_digest(codes.to_tensors())[:8]}"
            progress(0, desc="Rendering at the photo's own size")
            image_path, codes_path = session.export(
                model, folder, stem, lambda fraction: progress(fraction, desc="Rendering at the photo's own size"))
            with Image.open(image_path) as saved:
                width, height = saved.size
            return {self.explore.downloads: gr.update(value=[str(image_path), str(codes_path)], visible=True),
                    self.explore.status: f"Saved `{image_path.name}` ({width}×{height}, the photo's own size, "
                                         f"lossless PNG) and `{codes_path.name}` (its code: load it back with the "
                                         f"same model, photo and working size to re-render it exactly)."}

    def batch(self, session: StudioSession | None, model_path: str | None, files: list[str] | None,
              max_side: float, seed: float, progress: gr.Progress = gr.Progress()) -> Updates:
        """Every photo uploaded (or in an uploaded zip), first sample of the seed, at its own size: a zip."""
        session = self._session(session)
        page = self.explore
        with user_errors():
            if not model_path:
                raise StudioError("choose a model first")
            model = self.open_model(model_path)
            paths = [files] if isinstance(files, str) else list(files or [])
            if not paths:
                raise StudioError("upload photos (or a zip of photos) for the batch")
            folder = self.downloads.folder(session, "batch")  # a new batch replaces the previous one
            shutil.rmtree(folder, ignore_errors=True)
            result = run_as_job(run_photo_batch, model, paths, folder, int(max_side), int(seed or 0),
                                lambda fraction, text: progress(fraction, desc=text))
            lines = [f"{result.report.summary()}: each photo's first sample of seed {int(seed or 0)}, at its own "
                     f"size, with its code, in `{result.archive.name}`."]
            lines += [f"- {message}" for _, message in result.report.failed]
            return {page.state: session, page.batch_result: gr.update(value=str(result.archive), visible=True),
                    page.batch_status: "\n".join(lines)}

    def load_code(self, session: StudioSession | None, codes_path: str | None) -> Updates:
        """Updates the editor, the level tabs and the gallery."""
        session = self._session(session)
        with user_errors():
            if not codes_path:
                raise StudioError("choose a .safetensors code file")
            model = self._model(session)
            count = session.load_code_file(model, codes_path)
            message = ("Loaded the saved code." if count == 1
                       else f"Loaded {count} codes into the gallery; the first is the current result.")
            return self._full(session, model, message) | {self.explore.gallery: self.gallery_values(session)}

    # -- reconstruction -----------------------------------------------------------------------

    def reconstruct(self, session: StudioSession | None, steps: float, lr: float) -> Iterator[Updates]:
        """IvO toward the reference, streaming: each report updates the progress text and the editor.

        All of it, the images' conversion too, runs on a thread of its own (`iterate_as_job`).
        """
        yield from iterate_as_job(self._reconstruct(self._session(session), steps, lr))

    def _reconstruct(self, session: StudioSession, steps: float, lr: float) -> Iterator[Updates]:
        with user_errors():
            model = self._model(session)
            distance = load_perceptual_distance("alex")
            config = IvOConfig(steps=int(steps), lr=float(lr), init_samples=8, report_every=IVO_REPORT_EVERY)
            first = True
            for update in session.reconstruct(model, distance, config):
                text = (f"Step {update.step}/{update.total_steps}: MSE {update.mse:.5f}, "
                        f"LPIPS {update.lpips:.4f}")
                if update.step == update.total_steps:
                    text += " (done: the result is the current code; edit it with the sliders)"
                updates = {self.explore.ivo_status: text} | self.editor_values(session, model, text)
                # Sliders are reset once at the start and at the end: the found code is their
                # new starting point.
                if first or update.step == update.total_steps:
                    updates |= self.control_values(session, model)
                first = False
                yield updates

    # -- painting on the result: region re-draw and colour hints -------------------------------

    def paint_values(self, session: StudioSession, model: LoadedModel | None, message: str = "",
                     level: int | None = None) -> Updates:
        """The paint panel: the current result to paint on (nothing painted), the model's levels, a message.

        Args:
            level: the level to keep chosen (default the finest).
        """
        page = self.explore.paint
        choices = []
        if model is not None and session.current is not None:
            out_h = session.prepared.output_size[0]
            for index in range(model.num_levels):
                cell = out_h // session.current.locals[index].shape[-2]
                choices.append((f"Level {index + 1}: cells of {cell} px, reach ≤ "
                                f"{region_reach(model.net.config, index)} px", index))
        if level is None or not 0 <= level < len(choices):
            level = len(choices) - 1 if choices else None
        result = session.result_image()
        image_file = self.downloads.previews(session).path(result) if result is not None else None
        return {page.editor: canvas(image_file), page.level: gr.update(choices=choices, value=level),
                page.status: message}

    def paint_current(self, session: StudioSession | None) -> Updates:
        """Put the current result into the paint editor."""
        session = self._session(session)
        with user_errors():
            model = self._model(session) if session.model_path else None
            session.require_current()
            return self.paint_values(session, model, "Paint a region to re-draw, or colour strokes as hints.")

    def refresh_paint(self, session: StudioSession | None, level: int | None) -> Updates:
        """After a new result is picked: the paint editor shows it, the chosen level kept; never an error."""
        session = self._session(session)
        model = None
        if session.model_path and session.current is not None:
            with contextlib.suppress(*USER_ERRORS):
                model = MODELS.get(session.model_path)
        return self.paint_values(session, model, "", level if isinstance(level, int) else None)

    def painted(self, session: StudioSession | None, painted: dict | None) -> Updates:
        """The user painted on the editor: say what (never an error; the buttons say what is missing)."""
        session = self._session(session)
        with contextlib.suppress(*USER_ERRORS):  # no photo yet, or an unreadable canvas
            return {self.explore.paint.status: describe_strokes(self._strokes(session, painted))}
        return {self.explore.paint.status: ""}

    def _strokes(self, session: StudioSession, painted: dict | None):
        return strokes_from_editor(painted, session.require_input().crop)

    def redraw_region(self, blend: bool, session: StudioSession | None, painted: dict | None, level: int | None,
                      seed: float, amount: float) -> Updates:
        """Re-draw (a fresh seed) or blend toward `seed` by `amount` the painted region of one level's local code.

        With nothing painted, the last region is re-drawn again. Updates the editor, the
        level's sliders and the paint panel (the new result, nothing painted).
        """
        session = self._session(session)
        with user_errors():
            model = self._model(session)
            if level is None:
                raise StudioError("choose the level to re-draw")
            level = int(level)
            strokes = self._strokes(session, painted)
            seed = int(seed or 0) if blend else fresh_seed()
            amount = float(amount) if blend else 1.0
            session.redraw_region(model, level, strokes.mask if strokes else None, seed, amount)
            what = f"blended {amount:.0%} toward seed {seed}" if blend else f"re-drawn with seed {seed}"
            again = "blend it further" if blend else "draw the same region again"
            message = (f"Level {level + 1}'s local code under the {'painted' if strokes else 'last'} region "
                       f"{what}. {describe_render(session.last_render, len(session.level_images))} "
                       f"Press again to {again}, or paint a new region.")
            return (self.editor_values(session, model, message) | self.control_values(session, model, [level])
                    | self.paint_values(session, model, message, level))

    def colour_hints(self, session: StudioSession | None, painted: dict | None, steps: float,
                     space: str) -> Iterator[Updates]:
        """Find the code whose result has the painted colours, streaming: search, then IvO on the strokes.

        Each report updates the paint panel's message and the editor; the sliders start from
        the found code; at the end the paint editor shows the result, nothing painted, and the
        region level is left as it was. All of it runs on a thread of its own (`iterate_as_job`).
        """
        yield from iterate_as_job(self._colour_hints(self._session(session), painted, steps, space))

    def _colour_hints(self, session: StudioSession, painted: dict | None, steps: float,
                      space: str) -> Iterator[Updates]:
        with user_errors():
            model = self._model(session)
            strokes = self._strokes(session, painted)
            if space not in COLOUR_SPACES or not steps or int(steps) < 1:
                raise StudioError(f"colour hints need at least one step and a colour space among {COLOUR_SPACES}")
            config = IvOConfig(steps=int(steps), lr=0.05, init_samples=HINT_CANDIDATES, report_every=IVO_REPORT_EVERY,
                               colour_space=space, chunk_size=HINT_CHUNK)
            yield {self.explore.paint.status: f"Trying {HINT_CANDIDATES} random codes and the current result "
                                              f"against the strokes…"}
            updates_seen = False
            for update in session.find_colour_hints(model, strokes.colours if strokes else None,
                                                    strokes.mask if strokes else None, config):
                text = f"Step {update.step}/{update.total_steps}: colour distance under the strokes {update.mse:.4f}"
                if update.step == 0:
                    text += f" (the best of {HINT_CANDIDATES} random codes and the current result)"
                done = update.step == update.total_steps
                if done:
                    text += " (done: the result is the current code; edit it with the sliders)"
                updates = self.editor_values(session, model, text) | {self.explore.paint.status: text}
                if not updates_seen or done:
                    updates |= self.control_values(session, model)
                if done:
                    # The same photo, so the same levels: the region level stays as the user chose it.
                    final = self.paint_values(session, model, text, None)
                    updates |= {key: value for key, value in final.items() if key is not self.explore.paint.level}
                updates_seen = True
                yield updates

    # -- training -----------------------------------------------------------------------------

    def training_form(self, task: str = TASK_NAMES[0]) -> Updates:
        """On page load: the models a run of `task` can start from (`choose_task`), and the data
        folders inside the data root, or what to do while there are none (server folders are
        listed only when training is allowed)."""
        allowed = self.settings.policy.allowed
        folders = data_folders(self.settings.data_root) if allowed else []
        hint = training.no_data_message(self.settings.data_root) if allowed and not folders else ""
        folder = gr.update(choices=folders, value=folders[0] if folders else None)
        return self.choose_task(task) | {self.train.data_folder: folder, self.train.data_help: hint}

    def choose_task(self, task: str) -> Updates:
        """A task chosen: the models its runs can start from, the default one chosen (the task's
        default shipped model where it can start a run), and that choice's preset."""
        models = training.starting_models(self.settings.checkpoints, self.settings.runs, task)
        value = str(models[0].entry.path) if models else training.FROM_SCRATCH
        return ({self.train.start_from: gr.update(choices=training.start_choices(models), value=value)}
                | self._preset_for(models[0] if models else None))

    def choose_start(self, task: str, start_from: str | None) -> Updates:
        """A starting model chosen: its preset, fixed (a run from it has its sizes); any preset for a new model."""
        with user_errors():
            return self._preset_for(self._starting_model(task, start_from))

    def _preset_for(self, start: training.StartingModel | None) -> Updates:
        if start is None:
            return {self.train.preset: gr.update(interactive=self.settings.policy.allowed)}
        return {self.train.preset: gr.update(value=start.options.preset, interactive=False)}

    def _starting_model(self, task: str, start_from: str | None) -> training.StartingModel | None:
        """The model a run of `task` starts from, None for a new model; a model that is not in
        the task's list is refused (the value comes from the browser)."""
        if not start_from or start_from == training.FROM_SCRATCH:
            return None
        for model in training.starting_models(self.settings.checkpoints, self.settings.runs, task):
            if str(model.entry.path) == start_from:
                return model
        raise training.TrainingError(f"a {task} run cannot start from that model; choose one from the list")

    def _require_training(self) -> None:
        if not self.settings.policy.allowed:
            raise training.TrainingError(self.settings.policy.reason)

    def refresh_runs(self, selected: str | None) -> Updates:
        """Runs table, run choice, and the chosen run's status, curve, samples, log and buttons."""
        if not self.settings.policy.allowed:
            return self._no_run([], self.settings.policy.reason)
        runs = training.list_runs(self.settings.runs)
        names = [run.name for run in runs]
        if selected not in names:
            selected = names[0] if names else None
        run = next((r for r in runs if r.name == selected), None)
        if run is None:
            return self._no_run(runs, "No runs yet.")
        status = f"**{run.name}**: {run.state}"
        if run.total_steps:
            status += f", step {run.step} of {run.total_steps}"
        if run.state == "running" and run.eta_seconds is not None:
            status += f", about {training.format_seconds(run.eta_seconds)} left"
        if run.message:
            status += f" — {run.message}"
        figure = training.validation_text(run.paths)
        if figure:
            status += f"\n\n{figure}"
        grid_path = training.latest_sample(run.paths)
        grid = None
        if grid_path is not None:
            with contextlib.suppress(ImageError):
                grid = load_rgb(grid_path)
        log = training.log_tail(run.paths) if run.paths.log.is_file() else \
            "(no train.log: this run was not started from the studio)"
        page = self.train
        return {page.runs_table: training.runs_table(runs), page.run_choice: gr.update(choices=names, value=selected),
                page.run_status: status, page.loss_plot: training.loss_frame(run.paths), page.sample_grid: grid,
                page.run_log: log, page.stop: gr.update(interactive=run.can_stop),
                page.resume: gr.update(interactive=run.can_resume or run.state == FINISHED),
                page.open_in_explore: gr.update(interactive=run.has_model)}

    def _no_run(self, runs: list[training.RunInfo], message: str) -> Updates:
        """refresh_runs' updates when no run is chosen: the table, the message, nothing to act on."""
        page = self.train
        disabled = gr.update(interactive=False)
        return {page.runs_table: training.runs_table(runs),
                page.run_choice: gr.update(choices=[run.name for run in runs], value=None), page.run_status: message,
                page.loss_plot: pd.DataFrame(columns=["step", "loss", "series"]), page.sample_grid: None,
                page.run_log: "", page.stop: disabled, page.resume: disabled, page.open_in_explore: disabled}

    def start_training(self, task: str, preset: str, steps: float, name: str, data_folder: str | None,
                       archive: str | None, extra_flags: str, start_from: str | None = training.FROM_SCRATCH
                       ) -> Updates:
        """Start a run (from the weights of `start_from`, a path the Start from list offers, with
        that model's preset); updates the message and the run widgets (the new run selected)."""
        with user_errors():
            self._require_training()
            if task not in TASK_NAMES or preset not in PRESETS:
                raise training.TrainingError("choose a task and a preset")
            start = self._starting_model(task, start_from)
            if start is not None:
                preset = start.options.preset  # the model's sizes decide
            if not steps or int(steps) < 1:
                raise training.TrainingError("train for at least one step")
            flags = training.parse_extra_flags(extra_flags)
            name = (name or "").strip() or f"{task}-{preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
            name = training.check_run_name(name)
            run_dir = self.settings.runs / name
            if run_dir.exists():
                raise training.TrainingError(f"a run named {name} exists already")
            if archive:
                try:
                    extracted = extract_images_zip(archive, run_dir / "data", ZipLimits())
                except UnsafePathError:
                    shutil.rmtree(run_dir, ignore_errors=True)  # the folder was made for this archive only
                    raise
                data, source = extracted.folder, f"{len(extracted.images)} photos from the archive"
            elif data_folder:
                data = confine_data_folder(data_folder, self.settings.data_root)
                source = f"the folder {data_folder}"
            else:
                raise training.TrainingError("choose a data folder or upload a zip of photos")
            training.start_run(self.settings.runs, name, task, preset, int(steps), data, flags, start)
            origin = f" from {start.entry.name}" if start is not None else ""
            return {self.train.message: f"Started run **{name}**{origin} on {source}."} | self.refresh_runs(name)

    def stop_training(self, selected: str | None) -> Updates:
        with user_errors():
            self._require_training()
            message = training.stop_run(self._run_paths(selected))
            return {self.train.message: message} | self.refresh_runs(selected)

    def resume_training(self, selected: str | None, steps: float | None) -> Updates:
        with user_errors():
            self._require_training()
            training.resume_run(self._run_paths(selected), int(steps) if steps else None)
            return {self.train.message: f"Resuming run **{selected}**."} | self.refresh_runs(selected)

    def open_in_explore(self, selected: str | None) -> Updates:
        """The run's final model chosen in Explore, and the Explore tab shown."""
        with user_errors():
            self._require_training()
            paths = self._run_paths(selected)
            if not paths.final_model.is_file():
                raise training.TrainingError(f"run {selected} has no final model yet")
            choices = self.model_choices()
            return {self.explore.model: gr.update(choices=choices, value=str(paths.final_model)),
                    self.train.tabs: gr.Tabs(selected="explore")}

    def _run_paths(self, selected: str | None) -> RunPaths:
        if not selected:
            raise training.TrainingError("choose a run")
        return RunPaths(self.settings.runs / training.check_run_name(selected))
