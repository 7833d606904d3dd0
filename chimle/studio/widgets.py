"""The page's widgets by name: `app.py` lays them out, the handlers return updates keyed by them.

A handler returns `{widgets.result: image, widgets.status: text}`; Gradio fills in the
event's other outputs with "no change". Adding a widget therefore never shifts another's
value. The lists below fix only the order in which API clients (gradio_client) receive
an endpoint's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr


@dataclass(frozen=True)
class LevelWidgets:
    """One level's tab: its buttons, lock and sliders."""

    tab: gr.Tab
    randomise: gr.Button
    reset: gr.Button
    lock: gr.Checkbox
    global_heading: gr.Markdown
    directions: tuple[gr.Slider, ...]
    global_seed: gr.Number
    global_blend: gr.Slider
    local_seed: gr.Number
    local_blend: gr.Slider
    noise_scale: gr.Slider

    @property
    def sliders(self) -> list[gr.components.Component]:
        """The edit's inputs, in the order of `editing.LevelEdit`'s fields."""
        return [*self.directions, self.global_seed, self.global_blend, self.local_seed, self.local_blend,
                self.noise_scale]

    @property
    def outputs(self) -> list[gr.blocks.Block]:
        """What a handler may update: the tab (title, visibility), the global code's heading
        (hidden for a model without one), the sliders and the lock."""
        return [self.tab, self.global_heading, *self.sliders, self.lock]


@dataclass(frozen=True)
class PaintWidgets:
    """Painting on the result: the editor, the region re-draw's level, and the panel's messages."""

    editor: gr.ImageEditor
    level: gr.Dropdown
    status: gr.Markdown

    @property
    def outputs(self) -> list[gr.blocks.Block]:
        return [self.editor, self.level, self.status]


@dataclass(frozen=True)
class ExploreWidgets:
    """The Explore tab."""

    state: gr.State
    model: gr.Dropdown
    model_info: gr.Markdown
    notes: gr.Markdown
    seed: gr.Number
    gallery: gr.Gallery
    result: gr.Image
    level_strip: gr.Gallery
    status: gr.Markdown
    levels: tuple[LevelWidgets, ...]
    compare_input: gr.ImageSlider
    compare_truth: gr.ImageSlider
    ivo_status: gr.Markdown
    downloads: gr.File
    batch_result: gr.File
    batch_status: gr.Markdown
    examples: gr.Dataset | None  # None when assets/ holds no example photos
    paint: PaintWidgets

    @property
    def editor(self) -> list[gr.blocks.Block]:
        """The session and the result area: what every edit updates."""
        return [self.state, self.result, self.level_strip, self.compare_input, self.compare_truth, self.status]

    @property
    def controls(self) -> list[gr.blocks.Block]:
        """Every level tab's widgets (updated when sliders return to a new starting point)."""
        return [widget for level in self.levels for widget in level.outputs]


@dataclass(frozen=True)
class TrainWidgets:
    """The Train tab, and the page's tabs (Open in Explore switches to Explore)."""

    tabs: gr.Tabs
    preset: gr.Dropdown
    start_from: gr.Dropdown
    data_folder: gr.Dropdown
    data_help: gr.Markdown
    message: gr.Markdown
    runs_table: gr.Dataframe
    run_choice: gr.Dropdown
    run_status: gr.Markdown
    loss_plot: gr.LinePlot
    sample_grid: gr.Image
    run_log: gr.Code
    stop: gr.Button
    resume: gr.Button
    open_in_explore: gr.Button

    @property
    def form(self) -> list[gr.blocks.Block]:
        """What the page load sets in the form: the starting model, its preset, the data folders."""
        return [self.start_from, self.preset, self.data_folder, self.data_help]

    @property
    def run(self) -> list[gr.blocks.Block]:
        """What shows the chosen run: table, choice, status, curve, samples, log, buttons."""
        return [self.runs_table, self.run_choice, self.run_status, self.loss_plot, self.sample_grid, self.run_log,
                self.stop, self.resume, self.open_in_explore]
