"""The studio's run management (without real training) and its model registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from chimle.checkpoint import CheckpointError, save_codes
from chimle.codes import CodeShape, LatentCodes
from chimle.runs import RunPaths, write_status
from chimle.studio import training
from chimle.studio.models import ModelCache, find_models, read_task_name

from .studio_helpers import tiny_checkpoint

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
