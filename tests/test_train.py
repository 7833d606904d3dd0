"""The trainer on real photos: learning, reproducibility, resume, faults, and two processes."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from chimle.checkpoint import load_checkpoint, tensor_digest
from chimle.runs import RunPaths, effective_status, read_metrics, read_status
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
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", config["code_version"])
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


CHECKPOINT_EVERY = 2  # _train_args' --checkpoint-every: the most steps a crash may lose


def _train_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--task", "jpeg", "--task-params", '{"quality": 10}', "--data", str(data),
            "--preset", "tiny", "--crop-size", "64", "--samples-per-level", "4", "4", "--pool-size", "4",
            "--steps-per-pool", "3", "--batch-size", "2", "--steps", str(steps), "--held-out-fraction", "0",
            "--checkpoint-every", str(CHECKPOINT_EVERY), "--sample-every", "100", "--lr", "0.001",
            "--max-side", "160", "--out", str(out), "--no-progress", *extra]


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


def _temporaries(run: Path) -> list[Path]:
    """Half-written files (atomic writes' temporaries) anywhere in the run folder."""
    return sorted(run.rglob(".*.tmp"))


def _logged_step(run: Path) -> int:
    """The newest step the run has reported (metrics.jsonl or status.json)."""
    paths = RunPaths(run)
    status = read_status(paths) or {}
    return max([m["step"] for m in read_metrics(paths)] + [status.get("step", 0)])


@dataclass
class _Kill:
    """When to kill: once `after_step` steps are logged plus `delay` seconds, or, with
    `checkpoint_write` k, as soon as the k-th checkpoint write has begun (its temporary exists)."""

    after_step: int = 0
    delay: float = 0.0
    checkpoint_write: int = 0


def _random_kills(rng: random.Random, count: int, steps: int, step_seconds: float) -> list[_Kill]:
    """`count` kill moments spread over a run of `steps` steps: one per equal slice of the
    run, at a random point inside its slice (a step's logging, update or checkpoint)."""
    kills = []
    for index in range(count):
        moment = (index + rng.random()) * (steps - 1) / count  # in steps; the last step left alone
        kills.append(_Kill(after_step=int(moment), delay=(moment - int(moment)) * step_seconds))
    return kills


def _kill_and_resume(data: Path, run: Path, steps: int, kill: _Kill, straight: dict) -> dict:
    """Run the CLI trainer, SIGKILL it at `kill`, check what is on disk, resume it to the end.

    Returns what the kill left: the newest logged step, the checkpoint's step, whether a
    checkpoint write was cut short.
    """
    paths = RunPaths(run)
    process = subprocess.Popen([sys.executable, "-m", "chimle", *_train_args(data, run, steps, "--log-every", "1")],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        if kill.checkpoint_write:
            # Each write has its own temporary name; poll fast, a tiny write lasts milliseconds.
            writes: set[str] = set()
            deadline = time.time() + 300
            while True:
                if paths.checkpoints.is_dir():
                    writes.update(name for name in os.listdir(paths.checkpoints)
                                  if name.startswith(".train_state.pt.") and name.endswith(".tmp"))
                if len(writes) >= kill.checkpoint_write or process.poll() is not None or time.time() > deadline:
                    break
                time.sleep(0.0002)
            assert len(writes) == kill.checkpoint_write, "never saw the checkpoint write to kill"
        else:
            _wait_for(lambda: process.poll() is not None
                      or (paths.status.exists() and _logged_step(run) >= kill.after_step), timeout=300)
            time.sleep(kill.delay)
        assert process.poll() is None, f"the run ended before the kill ({kill})"
    finally:
        process.kill()
        process.wait()

    # What the kill left: the newest checkpoint always loads, at most one interval is lost.
    logged = _logged_step(run)
    cut_short = [p.name for p in _temporaries(run)]
    checkpoint_step = 0
    if paths.latest.exists():
        checkpoint_step = load_checkpoint(paths.latest).metadata["step"]
        assert _state_step(run) >= checkpoint_step  # the resumable state loads and is not older
    assert logged - checkpoint_step <= CHECKPOINT_EVERY, (logged, checkpoint_step, kill)
    assert effective_status(paths)["state"] == "dead"

    resumed = _cli("train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    status = json.loads(paths.status.read_text())
    assert status["state"] == "finished" and status["step"] == steps
    assert [m["step"] for m in read_metrics(paths)] == list(range(1, steps + 1))  # no gap, no repeat
    assert_same_weights(weights(run), straight)
    assert _temporaries(run) == []  # the resumed trainer cleared what the kill cut short
    load_checkpoint(paths.final_model)
    return {"kill": kill, "logged": logged, "checkpoint_step": checkpoint_step, "cut_short": cut_short}


def _straight_run(data: Path, run: Path, steps: int) -> tuple[dict, float]:
    """The uninterrupted reference run (a CLI process, one thread, like the killed ones, so
    the comparison can be bit-exact) and its seconds per step."""
    straight = _cli(*_train_args(data, run, steps, "--log-every", "1"))
    assert straight.returncode == 0, straight.stderr
    metrics = read_metrics(RunPaths(run))
    return weights(run), metrics[-1]["elapsed_seconds"] / steps


def test_kill_9_at_a_random_moment_then_resume_reaches_the_straight_result(photo_folder, tmp_path):
    steps = 12
    straight, step_seconds = _straight_run(photo_folder, tmp_path / "straight", steps)
    [kill] = _random_kills(random.Random(7), 1, steps, step_seconds)
    print(_kill_and_resume(photo_folder, tmp_path / "killed", steps, kill, straight))


@pytest.mark.slow
def test_kill_9_at_random_moments_of_five_runs(photo_folder, tmp_path):
    steps = 20
    straight, step_seconds = _straight_run(photo_folder, tmp_path / "straight", steps)
    rng = random.Random(2024)
    # Four moments spread over the run, and one cut into a checkpoint write (of a random
    # one of the run's steps // CHECKPOINT_EVERY writes).
    kills = _random_kills(rng, 4, steps, step_seconds)
    kills.append(_Kill(checkpoint_write=rng.randint(1, steps // CHECKPOINT_EVERY - 1)))
    outcomes = [_kill_and_resume(photo_folder, tmp_path / f"killed-{index}", steps, kill, straight)
                for index, kill in enumerate(kills)]
    for outcome in outcomes:
        print(outcome)
    assert outcomes[-1]["cut_short"], "the kill meant for a checkpoint write did not land inside one"


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


def _tmpfs_problem(tmp_path: Path) -> str | None:
    """Why a small tmpfs cannot be mounted here (None when it can): the full-disk tests need one."""
    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    probe = tmp_path / "probe"
    probe.mkdir()
    tried = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                           capture_output=True, text=True, timeout=30)
    if tried.returncode != 0:
        return f"cannot mount a tmpfs in a user namespace here: {tried.stderr.strip() or tried.returncode}"
    return None


def _on_small_disk(tmp_path: Path, size: str, script: str, timeout: float = 300) -> tuple[int, str, Path]:
    """Run `script` (sh) with $DISK a fresh tmpfs of `size`, then copy $DISK/run out.

    The mount lives in a private mount namespace (`unshare -rm`: no root needed where user
    namespaces are allowed), so only the script sees it. Returns the trainer's exit status
    (the script writes it to $OUT/rc), its stderr, and the copied run folder.
    """
    problem = _tmpfs_problem(tmp_path)
    if problem:
        pytest.skip(problem)
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    wrapped = (f"set -u\nDISK={disk}\nOUT={out}\nmount -t tmpfs -o size={size} tmpfs $DISK || exit 3\n"
               f"{textwrap.dedent(script)}\ncp -a $DISK/run $OUT/run\n")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", wrapped], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0 and (out / "rc").exists(), done.stderr
    return int((out / "rc").read_text()), (out / "stderr").read_text(), out / "run"


def _train_command(data: Path, steps: int) -> str:
    args = _train_args(data, Path("$DISK/run"), steps, "--log-every", "1", "--sample-every", "1000")
    quoted = " ".join(arg if arg.startswith("$") else "'" + arg + "'" for arg in args)
    return f"{sys.executable} -m chimle {quoted}"


def _assert_failed_for_lack_of_space(rc: int, stderr: str, run: Path) -> dict:
    """The trainer's report of a full disk, and what it kept: returns the status."""
    assert rc == 1, stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "No space left on device" in line and "is kept" in line, line
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["message"] in line, status
    assert status["message"].startswith("could not write ") and f"at step {status['step']}:" in status["message"]
    paths = RunPaths(run)
    checkpoint = load_checkpoint(paths.latest)  # the previous checkpoint still loads
    assert f"the checkpoint of step {checkpoint.metadata['step']} is kept" in status["message"]
    assert status["step"] - checkpoint.metadata["step"] <= CHECKPOINT_EVERY
    assert _temporaries(run) == []
    return status


def test_a_full_disk_at_a_checkpoint_fails_the_run_and_keeps_the_previous_one(photo_folder, tmp_path):
    # Sizes (tiny preset): train_state.pt 0.9 MB, latest.safetensors 0.25 MB, the rest a few
    # 4 kB pages. The first checkpoint needs ~1.2 MB; the second needs room for a new
    # train_state.pt beside the old files, ~2.1 MB. 1600k fits the first, not the second.
    rc, stderr, run = _on_small_disk(tmp_path, "1600k", f"""
        {_train_command(photo_folder, 8)} 2> $OUT/stderr
        echo $? > $OUT/rc
    """)
    status = _assert_failed_for_lack_of_space(rc, stderr, run)
    assert status["step"] == 4 and "checkpoints/train_state.pt" in status["message"]
    assert load_checkpoint(RunPaths(run).latest).metadata["step"] == 2
    assert _state_step(run) == 2  # the resumable state is the previous one, whole


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run_still_gets_the_failed_status(photo_folder, tmp_path):
    # Once the first checkpoint exists, a file takes every free byte: now even status.json
    # cannot be replaced atomically, and the trainer must rewrite it in place.
    rc, stderr, run = _on_small_disk(tmp_path, "8m", f"""
        {_train_command(photo_folder, 30)} 2> $OUT/stderr &
        trainer=$!
        while [ ! -e $DISK/run/checkpoints/latest.safetensors ] && kill -0 $trainer 2>/dev/null; do sleep 0.05; done
        dd if=/dev/zero of=$DISK/filler bs=4k 2>/dev/null
        wait $trainer
        echo $? > $OUT/rc
    """)
    status = _assert_failed_for_lack_of_space(rc, stderr, run)
    assert status["step"] < 30


def test_a_failed_status_gets_out_on_a_disk_with_no_free_byte(tmp_path):
    # The status alone, without a trainer: a full tmpfs, then write_status as the trainer's
    # failure path calls it. A running status cannot be written (the atomic replace needs
    # space); a failed one is rewritten in place and reads back whole.
    rc, stderr, run = _on_small_disk(tmp_path, "64k", f"""
        mkdir $DISK/run
        {sys.executable} - 2> $OUT/stderr <<EOF
        import sys
        from chimle.runs import FAILED, RUNNING, RunPaths, write_status
        paths = RunPaths("$DISK/run")
        write_status(paths, RUNNING, 3, 10, "training")
        with open("$DISK/filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(bytes(4096))
            except OSError:
                pass
        try:
            write_status(paths, RUNNING, 4, 10, "training")
        except OSError as error:
            print("running status refused:", error, file=sys.stderr)
        else:
            sys.exit("a running status was written on a full disk")
        write_status(paths, FAILED, 4, 10, "could not write x: No space left on device; " + "detail " * 40)
        EOF
        echo $? > $OUT/rc
    """, timeout=120)
    assert rc == 0, stderr
    assert "running status refused: [Errno 28] No space left on device" in stderr
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 4 and status["message"].endswith("detail ")
    assert _temporaries(run) == []


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


def test_a_bare_cuda_device_names_the_ranks_gpu():
    # torch.cuda.set_device and DDP need an index; no GPU is needed to build the names.
    from chimle.train import pick_device

    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert pick_device("cpu", local_rank=1) == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
