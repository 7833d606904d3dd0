"""Checkpoints and saved codes: bit-exact round trips, and every broken file refused."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from chimle.checkpoint import (CheckpointError, load_checkpoint, load_codes, model_fingerprint,
                               save_checkpoint, save_codes)
from chimle.codes import LatentCodes

from .conftest import tiny_model


def _saved(tmp_path, **kwargs):
    net, task = tiny_model("colourization", seed=4)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, net, task, {"step": 17, "data": "unit test"}, **kwargs)
    return net, task, path


def test_round_trip_is_bit_exact(tmp_path):
    net, task, path = _saved(tmp_path)
    loaded = load_checkpoint(path, expected_task="colourization")
    assert loaded.task == task
    assert loaded.net.config == net.config
    assert loaded.metadata["step"] == 17 and "created" in loaded.metadata
    for name, tensor in net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[name], tensor), name
    codes = LatentCodes.sample(net.code_shape((64, 64)), 2, torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.net(x, codes)[-1], net(x, codes)[-1])
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_half_precision_is_smaller_and_close(tmp_path):
    net, _, full_path = _saved(tmp_path)
    half_path = tmp_path / "half.safetensors"
    save_checkpoint(half_path, net, load_checkpoint(full_path).task, half=True)
    assert half_path.stat().st_size < 0.6 * full_path.stat().st_size
    loaded = load_checkpoint(half_path)
    codes = LatentCodes.sample(net.code_shape((64, 64)), 2, torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        error = (loaded.net(x, codes)[-1] - net(x, codes)[-1]).abs().max().item()
    assert 0 < error < 5e-3


class _Payload:
    """Unpickling this would create a marker file: the attack a checkpoint must not allow."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    payload = {"state_dict": _Payload(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_file(tmp_path):
    _, _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_flipped_bytes_fail_the_checksum(tmp_path):
    _, _, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_wrong_task(tmp_path):
    _, _, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="for task 'colourization', not 'jpeg'"):
        load_checkpoint(path, expected_task="jpeg")


def _rewrite(path, edit_tensors=None, edit_header=None):
    """Re-save a checkpoint with edited tensors or header, with a valid checksum."""
    from safetensors import safe_open

    from chimle.checkpoint import tensor_digest

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    header["sha256"] = tensor_digest(tensors)
    save_file(tensors, str(path), metadata=header)


def test_wrong_shapes(tmp_path):
    _, _, path = _saved(tmp_path)

    def widen(header):
        config = json.loads(header["model_config"])
        config["channels"] = [16, 8]
        header["model_config"] = json.dumps(config)

    _rewrite(path, edit_header=widen)
    with pytest.raises(CheckpointError, match="has shape .* the config needs"):
        load_checkpoint(path)


def test_missing_weights(tmp_path):
    _, _, path = _saved(tmp_path)
    _rewrite(path, edit_tensors=lambda t: t.pop(sorted(t)[0]))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)


def test_nan_weights(tmp_path):
    _, _, path = _saved(tmp_path)

    def poison(tensors):
        name = next(k for k in sorted(tensors) if tensors[k].is_floating_point())
        tensors[name][...] = float("nan")

    _rewrite(path, edit_tensors=poison)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(path)


def test_codes_round_trip_and_model_check(tmp_path):
    net, task, _ = _saved(tmp_path)
    codes = LatentCodes.sample(net.code_shape((64, 64)), 3, torch.Generator().manual_seed(0))
    path = tmp_path / "codes.safetensors"
    save_codes(path, codes, model_fingerprint(net, task), {"seed": 0})
    loaded, metadata = load_codes(path, model_fingerprint(net, task))
    assert loaded.equal(codes) and metadata == {"seed": 0}
    other_net, other_task = tiny_model("jpeg")
    with pytest.raises(CheckpointError, match="saved for another model"):
        load_codes(path, model_fingerprint(other_net, other_task))
    with pytest.raises(CheckpointError, match="expected a chimle-codes/1 file"):
        load_codes(tmp_path / "model.safetensors")


def test_a_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    net, task, path = _saved(tmp_path)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, net, task, {"step": 18})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).metadata["step"] == 17
    assert not list(tmp_path.glob(".*.tmp"))
