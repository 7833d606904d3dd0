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
from chimle.studio.handlers import (CONTROLS_PER_LEVEL, MAX_LEVELS, NUM_DIRECTIONS, Studio, StudioSettings,
                                    find_examples)
from chimle.studio.memory import release_free_memory_periodically
from chimle.studio.inputs import StudioBlocks
from chimle.studio.security import on_spaces, training_policy
from chimle.studio.session import MAX_SEED
from chimle.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parent

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
- **Save** gives the result as a lossless PNG and its code as `.safetensors`; loading the code
  back with the same model, photo and working size re-renders the result exactly.
- **Reconstruct** (inference via optimisation) searches the code whose result is closest to a
  reference photo; stop it any time, the best code so far stays and is editable.
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
    studio = Studio(settings)
    examples = find_examples(settings.assets)
    # StudioBlocks: malformed API inputs get a message naming the widget (chimle/studio/inputs.py).
    with StudioBlocks(title="CHIMLE Studio") as demo:
        state = gr.State(None, delete_callback=studio.forget)
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Explore", id="explore"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=280):
                        with gr.Row():
                            model = gr.Dropdown(label="Model", choices=studio.model_choices(), scale=4, elem_id="model")
                            refresh_models = gr.Button("↻", size="sm", scale=0, min_width=40)
                        model_info = gr.Markdown()
                        # image_mode=None: the file reaches load_rgb as uploaded, not converted by Gradio.
                        image = gr.Image(label="Your photo", type="filepath", image_mode=None,
                                         sources=["upload", "clipboard"], height=260, elem_id="input-photo")
                        if examples:
                            gr.Examples(examples, inputs=image, label="Examples")
                        max_side = gr.Slider(64, 512, value=settings.default_max_side, step=32,
                                             label="Working size (longest side, pixels)",
                                             info="larger photos are resized to this; the result has the same size")
                        notes = gr.Markdown()
                    with gr.Column(scale=3):
                        with gr.Row():
                            num_samples = gr.Slider(1, 16, value=8, step=1, label="Samples", scale=2)
                            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", scale=1)
                            randomise_seed = gr.Checkbox(value=True, label="New seed each time", scale=1)
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary")
                            more = gr.Button("More")
                        gallery = gr.Gallery(label="Samples (click one to edit it)", columns=4, height=420,
                                             format="png", allow_preview=False, object_fit="contain",
                                             elem_id="samples")
                with gr.Row():
                    with gr.Column(scale=3):
                        result = gr.Image(label="Current result", format="png", interactive=False, height=380,
                                          buttons=["download", "fullscreen"], elem_id="result")
                        level_strip = gr.Gallery(label="What each level decides (coarse → fine)", columns=MAX_LEVELS,
                                                 height=170, format="png", allow_preview=False,
                                                 object_fit="contain", elem_id="level-strip")
                        status = gr.Markdown(elem_id="status")
                    with gr.Column(scale=2):
                        with gr.Row():
                            renormalise = gr.Checkbox(value=True, label="Renormalise blends")
                            randomise_unlocked = gr.Button("Re-draw unlocked levels", size="sm")
                        panels, level_controls, locks, randomise_buttons, reset_buttons = [], [], [], [], []
                        with gr.Tabs(selected="level-tab-1"):
                            for level in range(MAX_LEVELS):
                                with gr.Tab(f"Level {level + 1}", id=f"level-tab-{level + 1}", visible=False,
                                            elem_id=f"level-{level + 1}") as panel:
                                    with gr.Row():
                                        randomise_buttons.append(gr.Button("Randomise", size="sm"))
                                        reset_buttons.append(gr.Button("Reset", size="sm"))
                                        locks.append(gr.Checkbox(label="Lock", value=False))
                                    gr.Markdown("**Global code** — the level's overall look")
                                    controls = [gr.Slider(-3, 3, value=0, step=0.1, label=f"Direction {i + 1}")
                                                for i in range(NUM_DIRECTIONS)]
                                    with gr.Row():
                                        controls.append(gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                                                  label="Global seed", scale=1, min_width=90))
                                        controls.append(gr.Slider(0, 1, value=0, step=0.05,
                                                                  label="Blend toward seed", scale=3))
                                    gr.Markdown("**Local code** — texture and placement")
                                    with gr.Row():
                                        controls.append(gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                                                  label="Local seed", scale=1, min_width=90))
                                        controls.append(gr.Slider(0, 1, value=0, step=0.05,
                                                                  label="Blend toward seed", scale=3))
                                    controls.append(gr.Slider(0, 2, value=1, step=0.05, label="Noise scale"))
                                panels.append(panel)
                                level_controls.append(controls)
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
                with gr.Row():
                    save = gr.Button("Save result + code", variant="primary")
                    load_code = gr.UploadButton("Load a saved code (.safetensors)", file_types=[".safetensors"],
                                                type="filepath")
                downloads = gr.File(label="Downloads: the result (lossless PNG) and its code", file_count="multiple",
                                    interactive=False, visible=False)

            with gr.Tab("Train", id="train"):
                policy = settings.policy
                gr.Markdown(f"_{policy.reason}_")
                with gr.Row():
                    task = gr.Dropdown(list(TASK_NAMES), value="colourization", label="Task",
                                       interactive=policy.allowed)
                    preset = gr.Dropdown(list(PRESETS), value="cpu", label="Preset", interactive=policy.allowed)
                    steps = gr.Number(value=3000, precision=0, minimum=1, label="Steps", interactive=policy.allowed)
                    run_name = gr.Textbox(label="Run name (optional)", interactive=policy.allowed)
                with gr.Row():
                    data_folder = gr.Dropdown(label="Data folder (inside the data root)", choices=[],
                                              info=str(settings.data_root) if policy.allowed else None,
                                              allow_custom_value=True, interactive=policy.allowed)
                    archive = gr.File(label="…or a zip of photos", file_types=[".zip"], type="filepath",
                                      interactive=policy.allowed)
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
        editor = [state, result, level_strip, compare_input, compare_truth, status]
        control_outputs = []
        for level in range(MAX_LEVELS):
            control_outputs += [panels[level], *level_controls[level], locks[level]]
        assert len(control_outputs) == MAX_LEVELS * CONTROLS_PER_LEVEL
        render = dict(concurrency_id="render", concurrency_limit=concurrency)

        demo.load(studio.load_page, None, [model, model_info], api_name="load_page")
        refresh_models.click(studio.refresh_models, model, model, api_name="refresh_models")
        start_inputs = [state, model, image, reference, max_side, num_samples, seed, randomise_seed]
        start_outputs = [model_info, notes] + editor + control_outputs + [gallery, seed]
        model.change(studio.start, start_inputs, start_outputs, api_name="start", **render)
        image.change(studio.start, start_inputs, start_outputs, api_name="set_input", **render)
        max_side.release(studio.start, start_inputs, start_outputs, api_name="set_max_side", **render)
        generate.click(studio.generate, [state, num_samples, seed, randomise_seed],
                       editor + control_outputs + [gallery, seed], api_name="generate", **render)
        more.click(studio.more, [state, num_samples], [state, gallery, status], api_name="more", **render)
        gallery.select(studio.select, state, editor + control_outputs, api_name="select_sample", **render)

        for level in range(MAX_LEVELS):
            number = level + 1
            gr.on([control.input for control in level_controls[level]], functools.partial(studio.edit_level, level),
                  [state, renormalise, *level_controls[level]], editor, api_name=f"edit_level_{number}",
                  trigger_mode="always_last", show_progress="hidden", **render)
            level_outputs = editor + control_outputs
            randomise_buttons[level].click(functools.partial(studio.randomise_level, level), state, level_outputs,
                                           api_name=f"randomise_level_{number}", **render)
            reset_buttons[level].click(functools.partial(studio.reset_level, level), state, level_outputs,
                                       api_name=f"reset_level_{number}", **render)
            locks[level].input(functools.partial(studio.lock_level, level), [state, locks[level]], [state, status],
                               api_name=f"lock_level_{number}")
        randomise_unlocked.click(studio.randomise_unlocked, state, editor + control_outputs,
                                 api_name="randomise_unlocked", **render)

        reference.change(studio.set_reference, [state, reference], editor, api_name="set_reference", **render)
        save.click(studio.save, state, [downloads, status], api_name="save", **render)
        load_code.upload(studio.load_code, [state, load_code], editor + control_outputs + [gallery],
                         api_name="load_code", **render)
        # One reconstruction at a time across users: it is the heaviest job (gradients through the model).
        ivo_event = reconstruct.click(studio.reconstruct, [state, ivo_steps, ivo_lr],
                                      [ivo_status] + editor + control_outputs, api_name="reconstruct",
                                      concurrency_id="ivo", concurrency_limit=1)
        stop_reconstruct.click(None, None, None, cancels=[ivo_event])

        run_outputs = [runs_table, run_choice, run_status, loss_plot, sample_grid, run_log,
                       stop_training, resume_training, open_in_explore]
        quick = dict(concurrency_id="runs", concurrency_limit=None, show_progress="hidden")
        demo.load(studio.training_form, None, [data_folder], api_name="training_form")
        demo.load(studio.refresh_runs, run_choice, run_outputs, api_name="refresh_runs", **quick)
        timer.tick(studio.refresh_runs, run_choice, run_outputs, api_visibility="private", **quick)
        run_choice.input(studio.refresh_runs, run_choice, run_outputs, api_visibility="private", **quick)
        start_training.click(studio.start_training, [task, preset, steps, run_name, data_folder, archive, extra_flags],
                             [train_message] + run_outputs, api_name="start_training", **quick)
        stop_training.click(studio.stop_training, run_choice, [train_message] + run_outputs,
                            api_name="stop_training", **quick)
        resume_training.click(studio.resume_training, [run_choice, resume_steps], [train_message] + run_outputs,
                              api_name="resume_training", **quick)
        open_in_explore.click(studio.open_in_explore, run_choice, [model, tabs], api_name="open_in_explore", **quick)

    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    return demo


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
    # Many users' renders otherwise leave the process holding memory it has freed.
    release_free_memory_periodically()
    settings = settings_from_args(args)
    demo = build_demo(settings, concurrency=args.concurrency, max_queue=args.max_queue)
    host = args.host or ("0.0.0.0" if on_spaces() else None)
    demo.launch(server_name=host, server_port=args.port, share=args.share, **launch_options(settings))


if __name__ == "__main__":
    main()
