"""The studio's run management (without real training), its model registry, and the Train
tab's handlers: the model a run starts from, its command line, the validation figure against
that model, and what the tab says while there is no data."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

import app
from chimle.checkpoint import CheckpointError, load_checkpoint, save_codes
from chimle.cli import build_parser
from chimle.codes import CodeShape, LatentCodes
from chimle.data import ImageCorpus, validation_batch
from chimle.perceptual import load_perceptual_distance
from chimle.runs import RunPaths, read_validation, write_status
from chimle.studio import training
from chimle.studio.handlers import Studio, StudioSettings
from chimle.studio.models import ModelCache, find_models, read_defaults, read_task_name
from chimle.studio.security import TrainingPolicy
from chimle.tasks import TASK_NAMES
from chimle.train import TrainConfig, _build_model, _validate

from .studio_helpers import tiny_checkpoint, write_photos

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints"
SCRATCH = ("a new model (from scratch)", training.FROM_SCRATCH)

# A stand-in trainer: its command line names "chimle train", it ignores SIGTERM (so Stop
# must escalate) and it has a child in its process group (which Stop must reach too).
STUBBORN_TRAINER = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _status(paths: RunPaths, state: str, pid: int, step: int = 3, total: int = 10) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    write_status(paths, state, step, total, "training")
    status = json.loads(paths.status.read_text())
    paths.status.write_text(json.dumps(dict(status, pid=pid)))


def _launch_record(paths: RunPaths, pid: int, **extra) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / training.STUDIO_FILE).write_text(json.dumps({"pid": pid, "started": "now", **extra}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def sleeper():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def test_run_states_from_the_folder(tmp_path, sleeper):
    runs = tmp_path / "runs"
    _status(RunPaths(runs / "alive"), "running", os.getpid())
    _status(RunPaths(runs / "gone"), "running", _dead_pid())
    _status(RunPaths(runs / "done"), "finished", _dead_pid(), step=10)
    _launch_record(RunPaths(runs / "booting"), sleeper.pid)
    _launch_record(RunPaths(runs / "broken"), _dead_pid())
    _launch_record(RunPaths(runs / "halted"), _dead_pid(), stop_requested="now")
    (runs / "not-a-run").mkdir()
    states = {run.name: run.state for run in training.list_runs(runs)}
    assert states == {"alive": "running", "gone": "dead", "done": "finished", "booting": "starting",
                      "broken": "failed to start", "halted": "stopped"}
    table = training.runs_table(training.list_runs(runs))
    assert list(table.columns) == ["run", "state", "step", "ETA", "loss", "updated"]
    assert len(table) == 6


def test_a_resumed_run_shows_starting_until_the_trainer_writes_its_status(tmp_path, sleeper):
    paths = RunPaths(tmp_path / "run")
    _status(paths, "stopped", _dead_pid(), step=5)
    _launch_record(paths, sleeper.pid)
    info = training.run_info(paths)
    assert (info.state, info.step, info.can_stop) == ("starting", 5, True)


def test_stop_refuses_a_pid_that_is_not_a_trainer(tmp_path, sleeper):
    paths = RunPaths(tmp_path / "run")
    _status(paths, "running", sleeper.pid)
    with pytest.raises(training.TrainingError, match="not a running trainer"):
        training.stop_run(paths)
    assert sleeper.poll() is None
    _status(paths, "finished", sleeper.pid)
    with pytest.raises(training.TrainingError, match="not running"):
        training.stop_run(paths)


def test_stop_signals_the_group_and_kills_after_the_grace_period(tmp_path):
    trainer = subprocess.Popen([sys.executable, "-c", STUBBORN_TRAINER, "chimle", "train"],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        grandchild = int(trainer.stdout.readline())
        paths = RunPaths(tmp_path / "run")
        _status(paths, "running", trainer.pid)
        message = training.stop_run(paths, grace=1.0)
        assert "forced after 1 s" in message
        trainer.wait(timeout=20)  # SIGTERM is ignored: only the SIGKILL ends it
        assert trainer.returncode == -9
        deadline = time.monotonic() + 10
        while training.pid_alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not training.pid_alive(grandchild)
        assert training.run_info(paths).state == "dead"
    finally:
        trainer.kill()
        trainer.wait()


def test_extra_flags_are_checked_against_the_trainer_cli():
    assert training.parse_extra_flags("--crop-size 64 --samples-per-level 4 4") == [
        "--crop-size", "64", "--samples-per-level", "4", "4"]
    assert training.parse_extra_flags("") == []
    with pytest.raises(training.TrainingError, match="--data is set by the form"):
        training.parse_extra_flags("--data /etc")
    with pytest.raises(training.TrainingError, match="unrecognized arguments"):
        training.parse_extra_flags("--rm-rf /")
    with pytest.raises(training.TrainingError, match="invalid int"):
        training.parse_extra_flags("--crop-size big")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65, "a b"])
def test_run_names_are_plain(name):
    with pytest.raises(training.TrainingError):
        training.check_run_name(name)


def test_start_refuses_an_existing_run(tmp_path):
    paths = RunPaths(tmp_path / "runs" / "taken")
    _status(paths, "finished", _dead_pid())
    with pytest.raises(training.TrainingError, match="exists already"):
        training.start_run(tmp_path / "runs", "taken", "colourization", "tiny", 4, tmp_path)
    with pytest.raises(training.TrainingError, match="finished"):
        training.resume_run(paths)


def test_loss_curve_and_log_tail(tmp_path):
    paths = RunPaths(tmp_path)
    lines = [{"step": 10, "loss": 1.0, "loss_per_level": [0.4, 0.6]},
             {"step": 20, "loss": 0.8, "loss_per_level": [0.3, 0.5]}]
    paths.metrics.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 30, "lo')
    frame = training.loss_frame(paths)
    assert list(frame.columns) == ["step", "loss", "series"]
    assert frame[frame.series == "total"].loss.tolist() == [1.0, 0.8]
    assert frame[frame.series == "level 2"].loss.tolist() == [0.6, 0.5]
    assert sorted(set(frame.series)) == ["level 1", "level 2", "total"]
    paths.log.write_text("start\nstep 1\rstep 2\rstep 3\nend\n")
    assert training.log_tail(paths) == "start\nstep 3\nend"
    assert training.log_tail(RunPaths(tmp_path / "missing")) == ""
    assert training.latest_sample(paths) is None


def test_format_seconds():
    assert training.format_seconds(None) == ""
    assert training.format_seconds(75) == "1m 15s"
    assert training.format_seconds(3 * 3600 + 120) == "3h 02m"


# -- model registry -----------------------------------------------------------------------


def test_find_models_lists_checkpoints_and_finished_runs(tmp_path):
    checkpoints, runs = tmp_path / "checkpoints", tmp_path / "runs"
    checkpoints.mkdir()
    tiny_checkpoint(checkpoints, "jpeg", levels=2)
    (checkpoints / "garbage.safetensors").write_bytes(b"not safetensors")
    codes = LatentCodes.zeros(CodeShape(2, 1, ((4, 4),)), 1)
    save_codes(checkpoints / "codes.safetensors", codes, "x")  # a code file is not a model
    (runs / "finished").mkdir(parents=True)
    tiny_checkpoint(runs / "finished", "colourization", levels=2, name="model")
    (runs / "unfinished" / "checkpoints").mkdir(parents=True)
    entries = find_models(checkpoints, runs)
    assert [(e.name, e.task, e.source) for e in entries] == [("tiny-jpeg", "jpeg", "checkpoint"),
                                                             ("finished", "colourization", "run")]
    assert entries[1].label == "finished (colourization, trained here)"
    assert read_task_name(checkpoints / "garbage.safetensors") is None
    assert find_models(tmp_path / "none", tmp_path / "none") == []


def test_model_cache_shares_and_reloads_changed_files(tmp_path):
    path = tiny_checkpoint(tmp_path, "colourization", levels=2, seed=0)
    cache = ModelCache(capacity=1)
    first = cache.get(path)
    assert cache.get(str(path)) is first
    assert not any(p.requires_grad for p in first.net.parameters())
    tiny_checkpoint(tmp_path, "colourization", levels=2, seed=1)  # rewritten in place
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    second = cache.get(path)
    assert second is not first
    assert first.directions(0).vectors.shape == (4, 8)
    with pytest.raises(CheckpointError, match="no such file"):
        cache.get(tmp_path / "missing.safetensors")


# -- the Train tab: where a run starts from, and what it says ------------------------------


def _studio(tmp_path: Path, checkpoints: Path = SHIPPED) -> Studio:
    """The page's handlers, training allowed, over `checkpoints` and an empty data root."""
    settings = StudioSettings(checkpoints=checkpoints, runs=tmp_path / "runs", data_root=tmp_path / "data",
                              assets=tmp_path, policy=TrainingPolicy(True, "enabled for tests"))
    return app.build_studio(settings)[1]


def test_each_task_starts_from_its_default_shipped_model_or_from_scratch(tmp_path):
    defaults = read_defaults(SHIPPED)
    assert defaults, "checkpoints/default.json names no default models"
    for task in TASK_NAMES:
        models = training.starting_models(SHIPPED, tmp_path / "runs", task)
        assert all(model.options.task == model.entry.task == task for model in models)
        assert [model.entry.name for model in models[:1]] == ([defaults[task]] if task in defaults else [])
        assert training.start_choices(models) == [(m.label, str(m.entry.path)) for m in models] + [SCRATCH]
    colour = training.starting_models(SHIPPED, tmp_path / "runs", "colourization")[0]
    assert (colour.label, colour.options.preset, colour.options.semantic_prior) == (
        "colourization-cpu (preset cpu)", "cpu", "preset")


def test_starting_models_are_shipped_ones_then_finished_runs_that_a_preset_builds(tmp_path):
    checkpoints, runs = tmp_path / "checkpoints", tmp_path / "runs"
    checkpoints.mkdir()
    (runs / "mine").mkdir(parents=True)
    tiny_checkpoint(checkpoints, "colourization", levels=3)  # no preset has three tiny levels
    tiny_checkpoint(checkpoints, "colourization", levels=2, name="another")
    tiny_checkpoint(checkpoints, "colourization", levels=2, name="small")
    tiny_checkpoint(checkpoints, "jpeg", levels=2)
    tiny_checkpoint(runs / "mine", "colourization", levels=2, name="model")
    (checkpoints / "default.json").write_text(json.dumps({"defaults": {"colourization": "small"}}))
    models = training.starting_models(checkpoints, runs, "colourization")
    assert [(m.entry.name, m.entry.source, m.options.preset) for m in models] == [
        ("small", "checkpoint", "tiny"), ("another", "checkpoint", "tiny"), ("mine", "run", "tiny")]
    assert models[2].label == "mine (preset tiny, trained here)"


def test_a_run_from_each_default_shipped_model_gets_a_command_line_the_trainer_accepts(tmp_path):
    paths = RunPaths(tmp_path / "run")
    for task, name in read_defaults(SHIPPED).items():
        start = training.starting_models(SHIPPED, tmp_path / "runs", task)[0]
        arguments = training.train_arguments(paths, task, start.options.preset, 10, tmp_path,
                                             ["--crop-size", "64"], start)
        assert arguments[arguments.index("--init-from") + 1] == str(SHIPPED / f"{name}.safetensors")
        assert arguments[-2:] == ["--crop-size", "64"]
        # As `python -m chimle train` reads it, then the trainer's own checks of init_from.
        parsed = build_parser().parse_args(["train", *arguments])
        config = TrainConfig(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(TrainConfig)
                                if getattr(parsed, f.name) is not None})
        assert (config.init_from, config.task, config.steps) == (str(SHIPPED / f"{name}.safetensors"), task, 10)
        _build_model(config, config.build_task())
    assert training.train_arguments(paths, "jpeg", "tiny", 4, tmp_path) == [
        "--out", str(paths.root), "--data", str(tmp_path.resolve()), "--steps", "4", "--task", "jpeg",
        "--preset", "tiny"]


def test_a_run_from_a_model_keeps_its_task_preset_and_prior(tmp_path):
    paths = RunPaths(tmp_path / "run")
    start = training.starting_models(SHIPPED, tmp_path / "runs", "colourization")[0]
    with pytest.raises(training.TrainingError, match="preset cpu"):
        training.train_arguments(paths, "colourization", "tiny", 10, tmp_path, [], start)
    with pytest.raises(training.TrainingError, match="a colourization model"):
        training.train_arguments(paths, "jpeg", "cpu", 10, tmp_path, [], start)
    with pytest.raises(training.TrainingError, match="--semantic-prior is set by the model the run starts from"):
        training.train_arguments(paths, "colourization", "cpu", 10, tmp_path, ["--semantic-prior=none"], start)
    assert training.train_arguments(paths, "jpeg", "tiny", 4, tmp_path, ["--task-params", '{"quality": 5}'])[-2:] == [
        "--task-params", '{"quality": 5}']  # a new model takes them
    with pytest.raises(training.TrainingError, match="--init-from is set by the form"):
        training.parse_extra_flags("--init-from checkpoints/jpeg-q1-cpu.safetensors")


def test_the_train_tab_offers_the_tasks_default_model_and_fixes_its_preset(tmp_path):
    studio = _studio(tmp_path)
    page = studio.train
    form = studio.training_form("colourization")
    assert form[page.start_from]["value"] == str(SHIPPED / "colourization-cpu.safetensors")
    assert form[page.start_from]["choices"][-1] == SCRATCH
    assert (form[page.preset]["value"], form[page.preset]["interactive"]) == ("cpu", False)
    jpeg = studio.choose_task("jpeg")
    assert jpeg[page.start_from]["value"] == str(SHIPPED / "jpeg-blind-cpu.safetensors")
    blind = studio._starting_model("jpeg", jpeg[page.start_from]["value"])
    assert blind.options.input_skip and "--input-skip" in blind.options.arguments()  # its sizes, as built
    assert (jpeg[page.preset]["value"], jpeg[page.preset]["interactive"]) == ("cpu", False)
    paired = studio.choose_task("night_to_day")  # no shipped model: a new one
    assert paired[page.start_from]["choices"] == [SCRATCH]
    assert paired[page.start_from]["value"] == training.FROM_SCRATCH
    assert paired[page.preset]["interactive"] is True and "value" not in paired[page.preset]
    assert studio.choose_start("colourization", training.FROM_SCRATCH)[page.preset]["interactive"] is True
    for model in (str(SHIPPED / "colourization-cpu.safetensors"), "/etc/passwd"):
        with pytest.raises(gr.Error, match="cannot start from that model"):
            studio.choose_start("jpeg", model)
        with pytest.raises(gr.Error, match="cannot start from that model"):
            studio.start_training("jpeg", "cpu", 10, "refused", "photos", None, "", model)
    assert not (tmp_path / "runs" / "refused").exists()


def test_an_empty_data_root_says_how_to_get_photos(tmp_path):
    studio = _studio(tmp_path)
    page = studio.train
    form = studio.training_form()
    assert form[page.data_folder]["choices"] == [] and form[page.data_folder]["value"] is None
    command = training.demo_corpus_command(tmp_path / "data")
    assert command == (f"cd {shlex.quote(str(REPO))} && python -m chimle data demo --out "
                       f"{shlex.quote(str(tmp_path / 'data' / 'demo'))}")
    assert form[page.data_help] == training.no_data_message(tmp_path / "data")
    assert "No data folders yet" in form[page.data_help] and "Upload a zip of your photos" in form[page.data_help]
    assert f"`{command}`" in form[page.data_help]
    # The default data root gets the README's command, which the command line takes.
    readme_command = "python -m chimle data demo --out data/demo"
    assert training.demo_corpus_command(REPO / "data") == f"cd {shlex.quote(str(REPO))} && {readme_command}"
    assert readme_command in (REPO / "README.md").read_text()
    parsed = build_parser().parse_args(shlex.split(readme_command)[3:])
    assert (parsed.command, parsed.corpus, parsed.out) == ("data", "demo", "data/demo")
    (tmp_path / "data" / "demo" / "train").mkdir(parents=True)
    form = studio.training_form()
    assert form[page.data_folder]["choices"] == ["demo", "demo/train"] and form[page.data_help] == ""


def test_the_run_status_shows_the_validation_figure_beside_the_starting_models(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    start_path = tiny_checkpoint(tmp_path / "checkpoints", "colourization", levels=2)
    start = load_checkpoint(start_path)
    corpus = ImageCorpus.from_folder(write_photos(tmp_path / "photos")[0].parent)
    batch = validation_batch(corpus, 64, start.task, 4, seed=0)
    distance = load_perceptual_distance("alex")
    how = "best of 4 samples on each of 3 fixed validation crops, lower is better"

    # The trainer's validation routine: at step 0 on the starting weights, then (weights unchanged) at step 4.
    fine = RunPaths(tmp_path / "runs" / "fine")
    fine.samples.mkdir(parents=True)
    assert training.validation_text(fine) == ""
    _validate(fine, start.net, start.task, distance, batch, 0, 0, start_model=str(start_path))
    [first] = read_validation(fine)
    assert (fine.samples / "step-0000000.png").is_file()
    assert training.validation_text(fine) == (
        f"Validation LPIPS of tiny-colourization, the model this run started from: {first['best_lpips']:.3f} "
        f"({how}; the run's own comes with its first sample grid).")
    _validate(fine, start.net, start.task, distance, batch, 0, 4)
    figures = read_validation(fine)
    assert [r["step"] for r in figures] == [0, 4]
    assert figures[1]["best_lpips"] == first["best_lpips"]  # the same weights, crops and codes
    text = training.validation_text(fine)
    assert text == (f"Validation LPIPS {first['best_lpips']:.3f} at step 4 (started from tiny-colourization: "
                    f"{first['best_lpips']:.3f}); {how}.")

    # A new model's run has no starting figure; the status panel shows whichever the run has.
    scratch = RunPaths(tmp_path / "runs" / "scratch")
    scratch.samples.mkdir(parents=True)
    _validate(scratch, start.net, start.task, distance, batch, 0, 4)
    assert training.validation_text(scratch) == f"Validation LPIPS {first['best_lpips']:.3f} at step 4; {how}."
    write_status(fine, "running", 4, 10, "training")
    studio = _studio(tmp_path, tmp_path / "checkpoints")
    status = studio.refresh_runs("fine")[studio.train.run_status]
    assert status.startswith("**fine**: running, step 4 of 10") and status.endswith(f"\n\n{text}")
