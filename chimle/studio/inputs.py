"""What reaches the studio from a browser or an API client, checked before Gradio decodes it.

The page only sends what its widgets allow, but the API (gradio_client, curl) can send
anything: text or null for a slider, NaN, a seed far out of range, a dict where a file
belongs, too few values. Gradio turns most of these into a bare "Error" (a TypeError in
`Slider.preprocess`, a pydantic error for the file record) or passes them on (NaN). Photos
are worse: Gradio opens every upload with Pillow before the handler runs, so an empty file,
a text file called .png or a decompression bomb ends there, again as a bare "Error".

`StudioBlocks` is `gr.Blocks` with one change: before Gradio's own preprocessing, every input
of an event is checked against its widget (`check_input`), and a failure is a `gr.Error`
naming the widget by its label. A photo is checked by its header (`images.read_size`, the
first half of `load_rgb`), so Gradio's Pillow call only sees a readable image of bounded
size; the pixels are decoded once, by `load_rgb` in the handler. Photo widgets must be
`gr.Image(type="filepath", image_mode=None)`: with an image mode Gradio would decode and
convert every non-RGB upload itself (clipping 16-bit photos, dropping transparency to
black) before `load_rgb` sees it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import gradio as gr
from gradio.utils import get_upload_folder

from ..images import ImageError, read_size

UPLOAD_MAX_PIXELS = 16_000_000  # a user's photo is kept in the session: bound its memory


class StudioBlocks(gr.Blocks):
    """`gr.Blocks` whose events refuse malformed inputs with a message naming the widget."""

    async def preprocess_data(self, block_fn, inputs: list[Any], state, explicit_call: bool = False):
        for index, component in enumerate(block_fn.inputs):
            if index < len(inputs) and not component.stateful:
                # The session's copy carries what events changed (choices, labels).
                current = state[component._id] if state is not None and component._id in state else component
                check_input(current, inputs[index], uploaded_only=not explicit_call)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as error:  # whatever else Gradio cannot decode is still the request's fault
            raise gr.Error(f"the request could not be read: {_first_line(error)}", print_exception=False) from None


def check_input(component: gr.components.Component, value: Any, uploaded_only: bool = True) -> None:
    """Raise gr.Error unless `value` is something `component` could have sent from the page.

    Args:
        uploaded_only: files must lie in Gradio's upload folder (false only for Python
            calls of the Blocks, which pass local paths).
    """
    label = component.label or type(component).__name__
    if isinstance(component, (gr.Slider, gr.Number)):
        _check_number(label, value, component.minimum, component.maximum,
                      optional=not isinstance(component, gr.Slider))
    elif isinstance(component, gr.Checkbox):
        if value is not None and not isinstance(value, bool):
            _refuse(f"{label}: expected true or false, got {_short(value)}")
    elif isinstance(component, gr.Dropdown):
        _check_choice(component, label, value)
    elif isinstance(component, gr.Radio):
        if value is not None and value not in [choice for _, choice in component.choices]:
            _refuse(f"{label}: {_short(value)} is not in the list of choices")
    elif isinstance(component, gr.Textbox):
        if value is not None and not isinstance(value, str):
            _refuse(f"{label}: expected text, got {_short(value)}")
    elif isinstance(component, gr.Image):
        path = _file_path(label, value, uploaded_only)
        if path is not None:
            name = f"{label} ({_display_name(value.get('orig_name') or Path(path).name)})"
            try:
                read_size(path, UPLOAD_MAX_PIXELS, name=name)
            except ImageError as error:
                _refuse(str(error))
    elif isinstance(component, gr.ImageEditor):
        _check_editor(label, value, uploaded_only)
    elif isinstance(component, (gr.File, gr.UploadButton)):
        several = component.file_count != "single" and isinstance(value, list)
        for record in value if several else [value]:
            _file_path(label, record, uploaded_only)


def _check_editor(label: str, value: Any, uploaded_only: bool) -> None:
    """An image editor's value: None, or background, layers and composite as uploaded images of bounded size.

    (The page sends its strokes through the editor's own upload route instead and names
    them by an id; those images are not files here, and the fields are empty.)
    """
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("layers") or [], list):
        _refuse(f"{label}: expected a dict of background, layers and composite images, got {_short(value)}")
    for record in [value.get("background"), value.get("composite"), *(value.get("layers") or [])]:
        path = _file_path(label, record, uploaded_only)
        if path is not None:
            try:
                read_size(path, UPLOAD_MAX_PIXELS, name=label)
            except ImageError as error:
                _refuse(str(error))


def _check_number(label: str, value: Any, minimum: float | None, maximum: float | None, optional: bool) -> None:
    if value is None:
        if optional:
            return
        _refuse(f"{label}: a number is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _refuse(f"{label}: expected a number, got {_short(value)}")
    try:
        number = float(value)  # JSON integers have no size limit
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number) or (math.isinf(number) and isinstance(value, float)):
        _refuse(f"{label}: expected a finite number, got {value}")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        if minimum is not None and maximum is not None:
            bounds = f"from {_number_text(minimum)} to {_number_text(maximum)}"
        else:
            bounds = f"at least {_number_text(minimum)}" if minimum is not None else f"at most {_number_text(maximum)}"
        shown = _number_text(number) if math.isfinite(number) else _short(value)
        _refuse(f"{label}: {shown} is out of range (allowed: {bounds})")


def _number_text(number: float) -> str:
    """Whole numbers in full (a seed limit of 4294967295, not 4.29497e+09), others briefly."""
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else f"{number:g}"


def _check_choice(component: gr.Dropdown, label: str, value: Any) -> None:
    if value is None:
        return
    if component.allow_custom_value or component.multiselect:
        if component.multiselect or isinstance(value, str):
            return
        _refuse(f"{label}: expected text, got {_short(value)}")
    if value not in [choice for _, choice in component.choices]:
        _refuse(f"{label}: {_short(value)} is not in the list of choices")


def _file_path(label: str, value: Any, uploaded_only: bool) -> str | None:
    """The server path of a file record (None for no file), or gr.Error for anything else."""
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("path"), str) and isinstance(value.get("meta"), dict)
            and value["meta"].get("_type") == "gradio.FileData"):
        _refuse(f"{label}: expected an uploaded file (with gradio_client: handle_file(path)), got {_short(value)}")
    path = value["path"]
    if uploaded_only and not _inside(path, get_upload_folder()):
        _refuse(f"{label}: only files uploaded to this app are accepted")
    return path


def _inside(path: str, folder: str) -> bool:
    """Whether `path`, links resolved, lies in `folder`."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _display_name(name: str) -> str:
    """A client-chosen file name made safe to show: plain characters, bounded length."""
    return re.sub(r"[^\w.\- ]", "_", str(name))[:60]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _refuse(message: str) -> NoReturn:
    raise gr.Error(message, print_exception=False)
