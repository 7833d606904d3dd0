"""CHIMLE Studio: `python app.py`, then open the printed address in a browser.

Explore many plausible results for a photo, steer one level by level, reconstruct a
reference (IvO), download the result with its code, and train models on your own photos.
This file only lays out widgets and connects them; the work is in `chimle.studio` and
`chimle` (the same code the CLI runs).
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import gradio as gr
import torch

from chimle.config import PRESETS
from chimle.editing import MAX_SEED, NUM_DIRECTIONS
from chimle.images import IMAGE_EXTENSIONS
from chimle.studio.handlers import Downloads, Studio, StudioSettings, examples_for_task, find_examples, model_choices
from chimle.studio.models import default_model, find_models
from chimle.studio.memory import (RELEASE_AFTER_IDLE_SECONDS, RELEASE_AT_LEAST_EVERY_SECONDS,
                                  release_free_memory_periodically)
from chimle.studio.direct import NO_HOPS, without_hops
from chimle.studio.render_thread import RENDERS
from chimle.studio.inputs import StudioBlocks
from chimle.studio.security import on_spaces, training_policy
from chimle.studio.training import FROM_SCRATCH, start_choices
from chimle.studio.widgets import ExploreWidgets, LevelWidgets, PaintWidgets, TrainWidgets
from chimle.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parent
MAX_LEVELS = 4  # level tabs on the page; a model with more levels shows its first four

INTRO = """# CHIMLE Studio
Conditional hierarchical IMLE: one grey or badly compressed photo, many plausible results.
Pick a model, upload a photo, click the sample you like, then steer it **level by level** —
coarse levels decide the overall look, fine levels the detail."""

ABOUT = """### How the controls work
Every sample is a *code*: per resolution level, a **global** vector (the level's overall look)
and a **local** noise map (texture and placement). Editing a level re-renders only that level
and the finer ones; the strip under the result shows what each level decides.

- **Directions** move the level's global code along its main directions (found GANSpace-style
  from what the network does with the code), in standard deviations.
- **Blend toward seed**: z = (1 − a)·z₀ + a·z_seed, where z_seed is the code drawn from the
  seed. With *renormalise* on (default) the mix is divided by √((1 − a)² + a²), which keeps it
  distributed like a fresh code, so half-way blends are not washed out.
- **Noise scale** multiplies the local map (0 removes the level's local variation).
- **Randomise** draws a new code for the level, **Reset** returns to the picked sample, **Lock**
  keeps the level's code when you draw more samples or re-draw other levels.
- **Save** gives the result at your photo's own size (the gallery and sliders work at the
  *working size*, for speed) as a lossless PNG, and its code as `.safetensors`; loading the
  code back with the same model, photo and working size re-renders the result exactly.
  Colourization puts the predicted colours on your photo's own lightness, which stays exactly
  yours; the other tasks run the model at the full size.
- **Batch** takes many photos (or a zip of them) and gives a zip of full-size results, the
  first sample of the seed for each, with their codes.
- **Reconstruct** (inference via optimisation) searches the code whose result is closest to a
  reference photo; stop it any time, the best code so far stays and is editable.
- **Paint on the result**: brush over a region and **Re-draw** it (a new seed) or **Blend** it
  toward a seed, at a chosen level: only that level's local code under the region changes, so
  the rest stays as it was (a fine level's cells reach a few dozen pixels; a coarse level's reach
  across the photo). Or paint colour strokes and **Find colours**: the studio tries 64 codes
  against the strokes, then optimises the best on the painted pixels alone; the rest of the
  photo is left to the model. The found code is editable like any other.
"""

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CHIMLE Studio (Gradio app)")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: GRADIO_SERVER_PORT, else 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (turns training off)")
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"),
                        help="folder of *.safetensors models (default: checkpoints/ beside app.py)")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="folder of training runs (default: runs/)")
    parser.add_argument("--data-root", default=str(ROOT / "data"),
                        help="training data folders are confined to this folder (default: data/)")
    parser.add_argument("--assets", default=str(ROOT / "assets"), help="example photos (default: assets/)")
    parser.add_argument("--allow-training", action="store_true",
                        help="enable training even when the app is reachable from other machines (never on Spaces)")
    parser.add_argument("--max-queue", type=int, default=32,
                        help="requests waiting at most; bounds memory (default: 32)")
    parser.add_argument("--concurrency", type=int, default=2, help="renders running at once (default: 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per render (default 0: torch's choice); 1 keeps the page quick while a "
                             "training run uses the same cores")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> StudioSettings:
    host = args.host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    return StudioSettings(checkpoints=Path(args.checkpoints).resolve(), runs=Path(args.runs).resolve(),
                          data_root=Path(args.data_root).resolve(), assets=Path(args.assets).resolve(),
                          policy=training_policy(host, args.share, args.allow_training))


def build_demo(settings: StudioSettings, concurrency: int = 2, max_queue: int = 32) -> gr.Blocks:
    """The whole page, wired to a `Studio` for `settings`, with its queue configured."""
    demo, _ = build_studio(settings, concurrency, max_queue)
    return demo


def build_studio(settings: StudioSettings, concurrency: int = 2,
                 max_queue: int = 32) -> tuple[gr.Blocks, Studio]:
    """The page and its handlers: `build_demo`, also giving the `Studio` (tests call its handlers)."""
    downloads = Downloads()
    gr.set_static_paths([downloads.previews_root])
    opening = default_model(find_models(settings.checkpoints, settings.runs), settings.checkpoints)
    # The example photos of the opening model's task; they change with the model.
    opening_examples = examples_for_task(settings.assets, opening.task if opening else None)
    # StudioBlocks: malformed API inputs get a message naming the widget (chimle/studio/inputs.py).
    with StudioBlocks(title="CHIMLE Studio") as demo:
        state = gr.State(None, delete_callback=downloads.forget)
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Explore", id="explore"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=280):
                        with gr.Row():
                            # No value here: load_page chooses the default, and that change starts the page.
                            model = gr.Dropdown(label="Model", choices=model_choices(settings), scale=4,
                                                elem_id="model")
                            refresh_models = gr.Button("↻", size="sm", scale=0, min_width=40)
                        model_info = gr.Markdown()
                        # image_mode=None: the file reaches load_rgb as uploaded, not converted by Gradio.
                        image = gr.Image(label="Your photo", type="filepath", image_mode=None,
                                         sources=["upload", "clipboard"], height=260, elem_id="input-photo")
                        examples = None
                        if find_examples(settings.assets):
                            examples = gr.Dataset(components=[image], samples=[[path] for path in opening_examples],
                                                  type="index", label="Examples (for this model's task)",
                                                  visible=bool(opening_examples), elem_id="examples")
                        max_side = gr.Slider(64, 512, value=settings.default_max_side, step=32,
                                             label="Working size (longest side, pixels)",
                                             info="larger photos are explored at this size; Save and batches give "
                                                  "results at the photo's own size")
                        notes = gr.Markdown()
                    with gr.Column(scale=3):
                        with gr.Row():
                            num_samples = gr.Slider(1, 16, value=8, step=1, label="Samples", scale=2)
                            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", scale=1)
                            randomise_seed = gr.Checkbox(value=True, label="New seed each time", scale=1)
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary")
                            more = gr.Button("More")
                        sample_index = gr.Number(value=0, precision=0, visible=False)
                        pick_sample = gr.Button("Pick sample", visible=False)
                        gallery = gr.Gallery(label="Samples (click one to edit it)", columns=4, height=420,
                                             format="png", allow_preview=False, object_fit="contain",
                                             elem_id="samples")
                with gr.Row():
                    with gr.Column(scale=3):
                        # No download button: this is the working-size preview; Save gives the full size.
                        result = gr.Image(label="Current result (preview at the working size)", format="png",
                                          interactive=False, height=380, buttons=["fullscreen"], elem_id="result")
                        level_strip = gr.Gallery(label="What each level decides (coarse → fine)", columns=MAX_LEVELS,
                                                 height=170, format="png", allow_preview=False,
                                                 object_fit="contain", elem_id="level-strip")
                        status = gr.Markdown(elem_id="status")
                    with gr.Column(scale=2):
                        with gr.Row():
                            renormalise = gr.Checkbox(value=True, label="Renormalise blends")
                            randomise_unlocked = gr.Button("Re-draw unlocked levels", size="sm")
                        levels = []
                        with gr.Tabs(selected="level-tab-1"):
                            for level in range(MAX_LEVELS):
                                with gr.Tab(f"Level {level + 1}", id=f"level-tab-{level + 1}", visible=False,
                                            elem_id=f"level-{level + 1}") as level_tab:
                                    with gr.Row():
                                        randomise_level = gr.Button("Randomise", size="sm")
                                        reset_level = gr.Button("Reset", size="sm")
                                        lock = gr.Checkbox(label="Lock", value=False)
                                    global_heading = gr.Markdown("**Global code** — the level's overall look")
                                    directions = tuple(gr.Slider(-3, 3, value=0, step=0.1, label=f"Direction {i + 1}")
                                                       for i in range(NUM_DIRECTIONS))
                                    with gr.Row():
                                        global_seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                                                label="Global seed", scale=1, min_width=90)
                                        global_blend = gr.Slider(0, 1, value=0, step=0.05, label="Blend toward seed",
                                                                 scale=3)
                                    gr.Markdown("**Local code** — texture and placement")
                                    with gr.Row():
                                        local_seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                                               label="Local seed", scale=1, min_width=90)
                                        local_blend = gr.Slider(0, 1, value=0, step=0.05, label="Blend toward seed",
                                                                scale=3)
                                    noise_scale = gr.Slider(0, 2, value=1, step=0.05, label="Noise scale")
                                levels.append(LevelWidgets(
                                    tab=level_tab, randomise=randomise_level, reset=reset_level, lock=lock,
                                    global_heading=global_heading, directions=directions,
                                    global_seed=global_seed, global_blend=global_blend,
                                    local_seed=local_seed, local_blend=local_blend, noise_scale=noise_scale))
                with gr.Row():
                    with gr.Column(scale=3):
                        compare_input = gr.ImageSlider(label="Input ↔ result", format="png", interactive=False,
                                                       max_height=380)
                        compare_truth = gr.ImageSlider(label="True image ↔ result", format="png",
                                                       interactive=False, visible=False, max_height=380)
                    with gr.Column(scale=2):
                        reference = gr.Image(label="True or reference photo (optional)", type="filepath",
                                             image_mode=None, sources=["upload", "clipboard"], height=220)
                        with gr.Row():
                            ivo_steps = gr.Slider(5, 500, value=100, step=5, label="Reconstruction steps")
                            ivo_lr = gr.Slider(0.005, 0.2, value=0.05, step=0.005, label="Step size")
                        with gr.Row():
                            reconstruct = gr.Button("Reconstruct", variant="primary")
                            stop_reconstruct = gr.Button("Stop", variant="stop")
                        ivo_status = gr.Markdown()
                with gr.Accordion("Paint on the result: re-draw a region, or hint colours", open=True,
                                  elem_id="paint"):
                    with gr.Row():
                        with gr.Column(scale=3):
                            # PNG, no crop or resize tools: strokes must keep their colours and
                            # land on the result's own pixels.
                            paint_editor = gr.ImageEditor(
                                label="Paint here (press ↻ for the current result)", type="numpy",
                                image_mode="RGBA", sources=[], transforms=(), layers=False, format="png",
                                brush=gr.Brush(colors=["rgb(200, 30, 30)", "rgb(230, 140, 20)", "rgb(240, 220, 40)",
                                                       "rgb(40, 160, 60)", "rgb(40, 90, 200)", "rgb(120, 60, 30)",
                                                       "rgb(255, 255, 255)"], color_mode="defaults"),
                                height=420, elem_id="paint-editor")
                        with gr.Column(scale=2):
                            paint_current = gr.Button("↻ Paint on the current result", size="sm")
                            gr.Markdown("**Region re-draw**: paint over a region (any colour), choose a level.")
                            region_level = gr.Dropdown(label="Level", choices=[], elem_id="region-level")
                            redraw_region = gr.Button("Re-draw region", variant="primary")
                            with gr.Row():
                                region_seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                                        label="Blend seed", scale=1, min_width=90)
                                region_amount = gr.Slider(0, 1, value=0.5, step=0.05, label="Blend weight", scale=3)
                            blend_region = gr.Button("Blend region toward seed")
                            gr.Markdown("**Colour hints**: paint strokes of the colours you want.")
                            with gr.Row():
                                hint_steps = gr.Slider(5, 300, value=60, step=5, label="Optimisation steps",
                                                       elem_id="hint-steps")
                                hint_space = gr.Radio([("Colour (Lab ab)", "ab"), ("RGB", "rgb")], value="ab",
                                                      label="Match")
                            with gr.Row():
                                find_colours = gr.Button("Find colours", variant="primary")
                                stop_colours = gr.Button("Stop", variant="stop")
                            paint_status = gr.Markdown(elem_id="paint-status")
                with gr.Row():
                    save = gr.Button("Save full-size result + code", variant="primary")
                    load_code = gr.UploadButton("Load a saved code (.safetensors)", file_types=[".safetensors"],
                                                type="filepath")
                downloads_file = gr.File(label="Downloads: the result at the photo's own size (lossless PNG) and "
                                               "its code", file_count="multiple", interactive=False, visible=False,
                                         elem_id="downloads")
                with gr.Accordion("Batch: many photos at once", open=False, elem_id="batch"):
                    gr.Markdown("Each photo gets the first sample of the seed above, with the chosen model and "
                                "working size, at its own size; the zip holds each result (PNG) and its code.")
                    with gr.Row():
                        batch_files = gr.File(label="Photos, or a zip of photos", file_count="multiple",
                                              file_types=[*IMAGE_EXTENSIONS, ".zip"], type="filepath", scale=3)
                        with gr.Column(scale=2):
                            run_batch = gr.Button("Process the batch", variant="primary")
                            batch_status = gr.Markdown()
                            batch_result = gr.File(label="Results (zip)", interactive=False, visible=False)

            with gr.Tab("Train", id="train"):
                policy = settings.policy
                gr.Markdown(f"_{policy.reason}_")
                with gr.Row():
                    task = gr.Dropdown(list(TASK_NAMES), value=TASK_NAMES[0], label="Task",
                                       interactive=policy.allowed)
                    # The page load offers the task's models, its default shipped model chosen.
                    start_from = gr.Dropdown(start_choices([]), value=FROM_SCRATCH, label="Start from",
                                             info="a model of the task, trained further on your photos, or a new one",
                                             interactive=policy.allowed, elem_id="start-from")
                    preset = gr.Dropdown(list(PRESETS), value="cpu", label="Preset", interactive=policy.allowed,
                                         info="a model to start from fixes it")
                    steps = gr.Number(value=3000, precision=0, minimum=1, label="Steps", interactive=policy.allowed)
                    run_name = gr.Textbox(label="Run name (optional)", interactive=policy.allowed)
                with gr.Row():
                    data_folder = gr.Dropdown(label="Data folder (inside the data root)", choices=[],
                                              info=str(settings.data_root) if policy.allowed else None,
                                              allow_custom_value=True, interactive=policy.allowed)
                    archive = gr.File(label="…or a zip of photos", file_types=[".zip"], type="filepath",
                                      interactive=policy.allowed)
                data_help = gr.Markdown(elem_id="data-help")  # what to do while the data root is empty
                with gr.Accordion("Advanced", open=False):
                    extra_flags = gr.Textbox(label="Extra trainer flags (see python -m chimle train --help)",
                                             placeholder="--crop-size 64 --batch-size 2", interactive=policy.allowed)
                start_training = gr.Button("Start training", variant="primary", interactive=policy.allowed)
                train_message = gr.Markdown()
                runs_table = gr.Dataframe(label="Runs", interactive=False, wrap=True)
                with gr.Row():
                    run_choice = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, scale=3)
                    stop_training = gr.Button("Stop", variant="stop", interactive=False, scale=1)
                    resume_steps = gr.Number(value=0, label="Resume to total steps (0: as before)", precision=0,
                                             minimum=0, scale=1)
                    resume_training = gr.Button("Resume", interactive=False, scale=1)
                    open_in_explore = gr.Button("Open in Explore", interactive=False, scale=1)
                run_status = gr.Markdown()
                with gr.Row():
                    # No fixed height: with one, Gradio 6.31 clips the legend off the plot.
                    loss_plot = gr.LinePlot(x="step", y="loss", color="series", label="Loss (total and per level)")
                    sample_grid = gr.Image(label="Latest samples (input, samples, target)", format="png",
                                           interactive=False, height=300)
                run_log = gr.Code(label="train.log (end)", language=None, interactive=False, lines=8)
                timer = gr.Timer(3, active=policy.allowed)

            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)

        # -- wiring -------------------------------------------------------------------------------
        # Handlers return updates keyed by these widgets; the output lists below only fix the
        # order in which API clients receive them.
        explore = ExploreWidgets(state=state, model=model, model_info=model_info, notes=notes, seed=seed,
                                 gallery=gallery, result=result, level_strip=level_strip, status=status,
                                 levels=tuple(levels), compare_input=compare_input, compare_truth=compare_truth,
                                 ivo_status=ivo_status, downloads=downloads_file, batch_result=batch_result,
                                 batch_status=batch_status, examples=examples,
                                 paint=PaintWidgets(editor=paint_editor, level=region_level, status=paint_status))
        train = TrainWidgets(tabs=tabs, preset=preset, start_from=start_from, data_folder=data_folder,
                             data_help=data_help, message=train_message, runs_table=runs_table,
                             run_choice=run_choice, run_status=run_status, loss_plot=loss_plot,
                             sample_grid=sample_grid, run_log=run_log, stop=stop_training, resume=resume_training,
                             open_in_explore=open_in_explore)
        studio = Studio(settings, explore, train, downloads)
        editor, controls = explore.editor, explore.controls
        render = dict(concurrency_id="render", concurrency_limit=concurrency)
        # Quick model work runs on the process's one render thread (chimle/studio/render_thread.py);
        # slider edits hand it their renders themselves, as they stream.
        on_render = RENDERS.wrap

        demo.load(studio.load_page, None, [model, model_info], api_name="load_page")
        refresh_models.click(studio.refresh_models, model, model, api_name="refresh_models")
        if examples is not None:
            model.change(studio.show_examples, model, examples, api_name="examples", show_progress="hidden")
            examples.click(studio.load_example, [model, examples], image, api_name="load_example")
        start_inputs = [state, model, image, reference, max_side, num_samples, seed, randomise_seed]
        generate_inputs = [state, num_samples, seed, randomise_seed]
        start_outputs = [model_info, notes, *editor, *controls, gallery, seed]
        picked = [  # events after which another result is current
            model.change(on_render(studio.start), start_inputs, start_outputs, api_name="start", **render),
            image.change(on_render(studio.start), start_inputs, start_outputs, api_name="set_input", **render),
            max_side.release(on_render(studio.start), start_inputs, start_outputs, api_name="set_max_side", **render),
            generate.click(on_render(without_hops(studio.generate, generate_inputs)), generate_inputs,
                           [*editor, *controls, gallery, seed], api_name="generate", **NO_HOPS, **render)]
        more.click(on_render(studio.more), [state, num_samples], [state, gallery, status], api_name="more", **render)
        picked.append(gallery.select(on_render(studio.select), state, [*editor, *controls], api_name="select_sample",
                                     **render))
        # The same for API clients, which cannot send a gallery click (README, "Using the studio from Python").
        picked.append(pick_sample.click(on_render(studio.pick_sample), [state, sample_index], [*editor, *controls],
                                        api_name="pick_sample", **render))

        for level, widgets in enumerate(explore.levels):
            number = level + 1
            gr.on([slider.input for slider in widgets.sliders], functools.partial(studio.edit_level, level),
                  [state, renormalise, *widgets.sliders], editor, api_name=f"edit_level_{number}",
                  trigger_mode="always_last", show_progress="hidden", **NO_HOPS, **render)
            widgets.randomise.click(on_render(functools.partial(studio.randomise_level, level)), state,
                                    [*editor, *controls], api_name=f"randomise_level_{number}", **render)
            widgets.reset.click(on_render(functools.partial(studio.reset_level, level)), state, [*editor, *controls],
                                api_name=f"reset_level_{number}", **render)
            widgets.lock.input(functools.partial(studio.lock_level, level), [state, widgets.lock], [state, status],
                               api_name=f"lock_level_{number}")
        randomise_unlocked.click(on_render(studio.randomise_unlocked), state, [*editor, *controls],
                                 api_name="randomise_unlocked", **render)

        reference.change(on_render(studio.set_reference), [state, reference], editor, api_name="set_reference",
                         **render)
        save.click(studio.save, state, [downloads_file, status], api_name="save", **render)
        # One batch at a time across users: every photo is rendered at its own size.
        run_batch.click(studio.batch, [state, model, batch_files, max_side, seed], [state, batch_result, batch_status],
                        api_name="batch", concurrency_id="batch", concurrency_limit=1)
        picked.append(load_code.upload(on_render(studio.load_code), [state, load_code], [*editor, *controls, gallery],
                                       api_name="load_code", **render))
        # One reconstruction at a time across users: it is the heaviest job (gradients through the model).
        ivo_event = reconstruct.click(studio.reconstruct, [state, ivo_steps, ivo_lr], [ivo_status, *editor, *controls],
                                      api_name="reconstruct", concurrency_id="ivo", concurrency_limit=1)
        stop_reconstruct.click(None, None, None, cancels=[ivo_event])
        picked.append(ivo_event)

        paint = explore.paint.outputs
        # Never over the paint editor: its loading overlay once stayed after a re-draw had
        # finished (in CI), covering the canvas so that no stroke reached it.
        paint_progress = dict(show_progress_on=[result, paint_status])
        paint_current.click(on_render(studio.paint_current), state, paint, api_name="paint_current",
                            show_progress_on=paint_status, **render)
        # A newly picked result goes into the paint editor too (slider edits do not send it: ↻ does).
        for event in picked:
            event.then(on_render(studio.refresh_paint), [state, region_level], paint, api_visibility="private",
                       show_progress="hidden", **render)
        # After each stroke: what is painted (the user sees the editor took it).
        paint_editor.input(on_render(studio.painted), [state, paint_editor], paint_status, api_visibility="private",
                           show_progress="hidden", trigger_mode="always_last",
                           concurrency_id="paint", concurrency_limit=None)
        region_inputs = [state, paint_editor, region_level, region_seed, region_amount]
        redraw_region.click(on_render(functools.partial(studio.redraw_region, False)), region_inputs,
                            [*editor, *controls, *paint], api_name="redraw_region", **paint_progress, **render)
        blend_region.click(on_render(functools.partial(studio.redraw_region, True)), region_inputs,
                           [*editor, *controls, *paint], api_name="blend_region", **paint_progress, **render)
        # Shares the reconstruction's queue: both take gradients through the model.
        hints_event = find_colours.click(studio.colour_hints, [state, paint_editor, hint_steps, hint_space],
                                         [*editor, *controls, *paint], api_name="colour_hints", concurrency_id="ivo",
                                         concurrency_limit=1, **paint_progress)
        stop_colours.click(None, None, None, cancels=[hints_event])

        quick = dict(concurrency_id="runs", concurrency_limit=None, show_progress="hidden")
        demo.load(studio.training_form, task, train.form, api_name="training_form")
        task.change(studio.choose_task, task, [start_from, preset], api_visibility="private", **quick)
        start_from.change(studio.choose_start, [task, start_from], preset, api_visibility="private", **quick)
        demo.load(studio.refresh_runs, run_choice, train.run, api_name="refresh_runs", **quick)
        timer.tick(studio.refresh_runs, run_choice, train.run, api_visibility="private", **quick)
        run_choice.input(studio.refresh_runs, run_choice, train.run, api_visibility="private", **quick)
        start_training.click(studio.start_training,
                             [task, preset, steps, run_name, data_folder, archive, extra_flags, start_from],
                             [train_message, *train.run], api_name="start_training", **quick)
        stop_training.click(studio.stop_training, run_choice, [train_message, *train.run],
                            api_name="stop_training", **quick)
        resume_training.click(studio.resume_training, [run_choice, resume_steps], [train_message, *train.run],
                              api_name="resume_training", **quick)
        open_in_explore.click(studio.open_in_explore, run_choice, [model, tabs], api_name="open_in_explore", **quick)

    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    return demo, studio


def launch_options(settings: StudioSettings) -> dict:
    """Arguments for `demo.launch` besides host and port: theme, served folders, upload limit."""
    # Only example photos are served from disk; results and downloads go through Gradio's cache.
    allowed = [str(settings.assets)] if find_examples(settings.assets) else []
    # Zips of training photos need room; a public app (no training) takes photos and codes only.
    max_file_size = "500mb" if settings.policy.allowed else "25mb"
    return dict(theme=gr.themes.Soft(), allowed_paths=allowed, max_file_size=max_file_size)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Many users' renders otherwise leave the process holding memory it has freed; released
    # while users work, each render would fault its memory in again (chimle/studio/memory.py).
    release_free_memory_periodically(when=lambda: RENDERS.idle_seconds() >= RELEASE_AFTER_IDLE_SECONDS,
                                     at_least_every=RELEASE_AT_LEAST_EVERY_SECONDS)
    settings = settings_from_args(args)
    demo = build_demo(settings, concurrency=args.concurrency, max_queue=args.max_queue)
    host = args.host or ("0.0.0.0" if on_spaces() else None)
    demo.launch(server_name=host, server_port=args.port, share=args.share, **launch_options(settings))


if __name__ == "__main__":
    main()
