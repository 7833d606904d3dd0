"""The trainer on real photos: learning, reproducibility, resume, faults, and two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from chimle.checkpoint import load_checkpoint, tensor_digest
from chimle.runs import RunPaths, effective_status, read_metrics
from chimle.train import TrainConfig, TrainingFailed, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Four real photos (scikit-image), stored small so tests stay fast."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((160, 160))
        image.save(folder / f"{name}.png")
    return folder


def tiny_config(data: Path, **overrides) -> TrainConfig:
    values = dict(task="jpeg", task_params={"quality": 10}, data=str(data), preset="tiny", crop_size=64,
                  samples_per_level=(4, 4), pool_size=4, steps_per_pool=3, batch_size=2, steps=8,
                  held_out_fraction=0.0, log_every=1, sample_every=4, checkpoint_every=2,
                  snapshot_every=4, lr=1e-3, max_side=160)
    values.update(overrides)
    return TrainConfig(**values)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(RunPaths(run).train_state, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_run_folder_is_complete(photo_folder, tmp_path):
    result = train(tiny_config(photo_folder, held_out_fraction=0.25), tmp_path / "run", progress=False)
    paths = RunPaths(tmp_path / "run")
    assert result["state"] == "finished" and result["step"] == 8
    config = json.loads(paths.config.read_text())
    assert config["train"]["steps"] == 8 and config["model"]["channels"] == [8, 8]
    assert config["data"]["num_train"] == 3 and config["data"]["num_held_out"] == 1
    assert len(config["code_version"]) in (40, 7) or config["code_version"] == "unknown"
    metrics = read_metrics(paths)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    for key in ("loss_per_level", "search_distance_per_level", "images_per_second", "eta_seconds",
                "search_share", "elapsed_seconds"):
        assert key in metrics[-1]
    assert len(metrics[-1]["loss_per_level"]) == 2
    assert sorted(p.name for p in paths.samples.iterdir()) == ["step-0000004.png", "step-0000008.png"]
    grid = Image.open(paths.samples / "step-0000008.png")
    assert grid.size == (2 + 6 * 66, 2 + 66)  # one held-out row: input, 4 samples, target
    status = json.loads(paths.status.read_text())
    assert status["state"] == "finished" and status["step"] == 8 and status["total_steps"] == 8
    model = load_checkpoint(paths.final_model, expected_task="jpeg")
    assert model.metadata["step"] == 8
    assert paths.snapshot(4).exists() and paths.snapshot(8).exists()


def test_overfitting_four_photos_lowers_loss_and_searched_distance(photo_folder, tmp_path):
    config = tiny_config(photo_folder, steps=60, pool_size=4, steps_per_pool=10, batch_size=4,
                         samples_per_level=(6, 6), lr=3e-3, log_every=1, sample_every=1000,
                         checkpoint_every=1000, snapshot_every=1000)
    train(config, tmp_path / "run", progress=False)
    metrics = read_metrics(RunPaths(tmp_path / "run"))
    loss_start = sum(m["loss"] for m in metrics[:5]) / 5
    loss_end = sum(m["loss"] for m in metrics[-10:]) / 10
    # One searched distance per pool: the first pool's against the last one's.
    distance_start = sum(metrics[0]["search_distance_per_level"])
    distance_end = sum(metrics[-1]["search_distance_per_level"])
    # Measured: loss 0.897 -> 0.479 (-47%), searched distance 1.109 -> 0.520 (-53%).
    print(f"loss {loss_start:.3f} -> {loss_end:.3f}; searched distance {distance_start:.3f} -> {distance_end:.3f}")
    assert loss_end < 0.75 * loss_start, (loss_start, loss_end)
    assert distance_end < 0.7 * distance_start, (distance_start, distance_end)


def test_a_seeded_run_is_reproducible(photo_folder, tmp_path):
    a = train(tiny_config(photo_folder), tmp_path / "a", progress=False)
    b = train(tiny_config(photo_folder), tmp_path / "b", progress=False)
    c = train(tiny_config(photo_folder, seed=1), tmp_path / "c", progress=False)
    assert a["weights_digest"] == b["weights_digest"] != c["weights_digest"]


def test_resuming_gives_the_same_weights_as_a_straight_run(photo_folder, tmp_path):
    # 8 steps with 3 steps per pool: the break at step 4 falls inside a pool.
    straight = train(tiny_config(photo_folder), tmp_path / "straight", progress=False)
    train(tiny_config(photo_folder, steps=4), tmp_path / "split", progress=False)
    resumed = train(tiny_config(photo_folder), tmp_path / "split", resume=True, progress=False)
    assert resumed["weights_digest"] == straight["weights_digest"]
    assert_same_weights(weights(tmp_path / "split"), weights(tmp_path / "straight"))
    assert [m["step"] for m in read_metrics(RunPaths(tmp_path / "split"))] == list(range(1, 9))


def test_the_zero_code_baseline_skips_the_search(photo_folder, tmp_path):
    result = train(tiny_config(photo_folder, zero_codes=True, steps=3), tmp_path / "run", progress=False)
    metrics = read_metrics(RunPaths(tmp_path / "run"))
    assert result["state"] == "finished"
    assert metrics[-1]["search_distance_per_level"] == [0.0, 0.0]


def test_a_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(photo_folder, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(photo_folder, steps=4), run, progress=False)
    paths = RunPaths(run)
    latest_before = paths.latest.read_bytes()
    state = torch.load(paths.train_state, weights_only=True)
    for tensor in state["model"].values():
        tensor.fill_(float("nan"))
    torch.save(state, paths.train_state)
    with pytest.raises(TrainingFailed, match="non-finite loss .* at step 5"):
        train(tiny_config(photo_folder), run, resume=True, progress=False)
    status = json.loads(paths.status.read_text())
    assert status["state"] == "failed" and "step 5" in status["message"]
    assert paths.latest.read_bytes() == latest_before
    assert load_checkpoint(paths.latest).metadata["step"] == 4


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "chimle", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _train_args(data: Path, out: Path, steps: int) -> list[str]:
    return ["train", "--task", "jpeg", "--task-params", '{"quality": 10}', "--data", str(data),
            "--preset", "tiny", "--crop-size", "64", "--samples-per-level", "4", "4", "--pool-size", "4",
            "--steps-per-pool", "3", "--batch-size", "2", "--steps", str(steps), "--held-out-fraction", "0",
            "--checkpoint-every", "2", "--sample-every", "100", "--lr", "0.001", "--max-side", "160",
            "--out", str(out), "--no-progress"]


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _state_step(run: Path) -> int:
    try:
        return torch.load(RunPaths(run).train_state, weights_only=True)["step"]
    except Exception:
        return -1


def test_kill_9_mid_run_then_resume_reaches_the_straight_result(photo_folder, tmp_path):
    # The reference runs the same way as the killed run (a CLI process, one thread), so the
    # comparison can be bit-exact: thread counts change float summation order.
    straight = _cli(*_train_args(photo_folder, tmp_path / "straight", 20))
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "chimle", *_train_args(photo_folder, run, 20)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    _wait_for(lambda: _state_step(run) >= 6)
    process.kill()
    process.wait()
    killed_at = _state_step(run)
    assert 6 <= killed_at < 20
    assert effective_status(RunPaths(run))["state"] == "dead"
    load_checkpoint(RunPaths(run).latest)  # the newest checkpoint always loads
    result = _cli("train", "--resume", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert_same_weights(weights(run), weights(tmp_path / "straight"))
    assert json.loads(RunPaths(run).status.read_text())["state"] == "finished"


def test_sigterm_stops_after_the_step_with_a_checkpoint(photo_folder, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "chimle", *_train_args(photo_folder, run, 500)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    _wait_for(lambda: _state_step(run) >= 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, process.stderr.read()
    status = json.loads(RunPaths(run).status.read_text())
    assert status["state"] == "stopped"
    assert _state_step(run) == status["step"] < 500  # the checkpoint holds the last step done


def test_cli_errors_are_one_line_with_status_2(photo_folder, tmp_path, capsys):
    from chimle.cli import main

    # The real entry point once, as a process: exit status and stderr as a user sees them.
    missing = _cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr

    # The other cases through the same `main`, in-process (a process start costs seconds).
    def run(*args: str) -> str:
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse rejects a bad choice by exiting
            code = exit_.code
        error = capsys.readouterr().err
        assert code == 2, (args, error)
        return error

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.png").write_text("not an image")
    error = run("train", "--data", str(empty), "--out", str(tmp_path / "r2"), "--preset", "tiny")
    assert "no usable image" in error.lower() and error.count("\n") == 1
    assert "invalid choice: 'painting'" in run("train", "--task", "painting", "--data", str(photo_folder))
    assert "invalid choice: 'huge'" in run("train", "--preset", "huge", "--data", str(photo_folder))
    assert "not a run folder" in run("train", "--resume", str(tmp_path))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    error = run("sample", "--checkpoint", str(broken), "--input", str(photo_folder / "chelsea.png"),
                "--out", str(tmp_path / "s"))
    assert "broken.safetensors" in error and error.count("\n") == 1
    text = tmp_path / "text.png"
    text.write_text("hello")
    error = run("ivo", "--checkpoint", str(broken), "--input", str(text), "--target", str(text),
                "--out", str(tmp_path / "i"))
    assert error.startswith("error: ") and error.count("\n") == 1


def test_cli_sample_render_and_ivo(photo_folder, tmp_path):
    run = tmp_path / "run"
    assert _cli(*_train_args(photo_folder, run, 2)).returncode == 0
    checkpoint = str(RunPaths(run).final_model)
    image = str(photo_folder / "chelsea.png")
    sampled = _cli("sample", "--checkpoint", checkpoint, "--input", image, "--num", "3", "--out",
                   str(tmp_path / "s"), "--seed", "5")
    assert sampled.returncode == 0, sampled.stderr
    files = sorted((tmp_path / "s").glob("sample-*.png"))
    assert len(files) == 3 and (tmp_path / "s" / "codes.safetensors").exists()
    rendered = _cli("render", "--checkpoint", checkpoint, "--input", image, "--codes",
                    str(tmp_path / "s" / "codes.safetensors"), "--out", str(tmp_path / "r"))
    assert rendered.returncode == 0, rendered.stderr
    for file in files:  # re-rendered from the saved codes: the same pixels
        assert Image.open(file).tobytes() == Image.open(tmp_path / "r" / file.name).tobytes()
    ivo = _cli("ivo", "--checkpoint", checkpoint, "--input", image, "--target", image, "--steps", "5",
               "--init-samples", "2", "--out", str(tmp_path / "i"))
    assert ivo.returncode == 0, ivo.stderr
    report = json.loads((tmp_path / "i" / "ivo.json").read_text())
    assert report["steps"] == 5 and report["mse"] >= 0 and (tmp_path / "i" / "reconstruction.png").exists()


def _distributed_worker(rank: int, world_size: int, port: int, config: TrainConfig, run: str, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(config, run, progress=False)
    queue.put((rank, result["weights_digest"], result["state"]))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_end_with_identical_weights(photo_folder, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tiny_config(photo_folder, steps=6)
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_distributed_worker, args=(rank, 2, port, config, str(tmp_path / "run"), queue))
                 for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get(timeout=240) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    (_, digest0, state0), (_, digest1, state1) = results
    assert state0 == state1 == "finished"
    assert digest0 == digest1
    paths = RunPaths(tmp_path / "run")
    assert json.loads(paths.config.read_text())["world_size"] == 2
    assert paths.final_model.exists() and paths.train_state.exists() and paths.status.exists()
    assert [m["step"] for m in read_metrics(paths)] == list(range(1, 7))
    # The pool's codes were searched by both ranks and gathered: all 4 are in the state.
    state = torch.load(paths.train_state, weights_only=True)
    assert state["pool_codes"]["global.0"].shape[0] == 4
    single = train(config, tmp_path / "single", progress=False)
    assert single["weights_digest"] != digest0  # two ranks really split the work
