"""Run folders: how an error that ends a training run is recorded in status.json."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from chimle.runs import RUNNING, RunPaths, TrainingFailed, read_status, record_failure, write_status


@dataclass
class _Progress:
    step: int
    saved_step: int


def test_a_failed_write_is_recorded_with_the_file_and_the_checkpoint_kept(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    write_status(paths, RUNNING, 5, 10, "training")
    progress = _Progress(step=5, saved_step=4)
    state_file = paths.checkpoints / "train_state.pt"  # checkpoints/ was never made: a real OSError
    with pytest.raises(TrainingFailed) as failed:
        with record_failure(paths, progress, total_steps=10):
            progress.step = 6  # read when the error happens, not on entry
            state_file.write_bytes(b"state")
    status = read_status(paths)
    assert status["state"] == "failed" and status["step"] == 6 and status["total_steps"] == 10
    assert status["message"] == (f"could not write {state_file} at step 6: No such file or directory; "
                                 f"the checkpoint of step 4 is kept")
    assert str(failed.value) == status["message"]
    assert isinstance(failed.value.__cause__, FileNotFoundError)  # the traceback is kept


def test_other_errors_are_worded_by_kind_and_only_the_writing_rank_records_them(tmp_path):
    paths = RunPaths(tmp_path)
    progress = _Progress(step=3, saved_step=0)
    with pytest.raises(TrainingFailed) as failed:
        with record_failure(paths, progress, 10):
            raise TrainingFailed("non-finite loss (nan) at step 4; the last good checkpoint is kept")
    assert failed.value.__cause__ is None  # it already says everything
    assert read_status(paths)["message"] == "non-finite loss (nan) at step 4; the last good checkpoint is kept"

    with pytest.raises(TrainingFailed, match=r"^training failed at step 3: ValueError: bad shape$"):
        with record_failure(paths, progress, 10):
            raise ValueError("bad shape")
    assert read_status(paths)["message"] == "training failed at step 3: ValueError: bad shape"

    paths.status.unlink()
    with pytest.raises(TrainingFailed, match=r"at step 3: .*; no checkpoint had been written yet$"):
        with record_failure(paths, progress, 10, write=False):  # not rank 0
            (tmp_path / "gone" / "x").write_text("")
    assert not paths.status.exists()
    with pytest.raises(KeyboardInterrupt):  # not an error of the run: passes through unrecorded
        with record_failure(paths, progress, 10):
            raise KeyboardInterrupt
    assert not paths.status.exists()


def test_a_status_that_cannot_be_written_is_named_in_the_message(tmp_path):
    paths = RunPaths(tmp_path)
    paths.status.mkdir()  # status.json cannot be replaced
    with pytest.raises(TrainingFailed, match=r"^training failed at step 1: ValueError: x \(status.json could "
                                             r"not be updated either: Is a directory\)$"):
        with record_failure(paths, _Progress(step=1, saved_step=0), 10):
            raise ValueError("x")
