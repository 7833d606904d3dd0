"""Model checkpoints and saved codes: safetensors files, never pickles.

A checkpoint is one safetensors file: the weights as tensors, and in its string metadata
the model config, the task, free-form metadata (step, data, creation time) and a SHA-256
of the tensor bytes. safetensors cannot execute code on load, and the digest catches
corruption that would otherwise load as garbage weights.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .codes import LatentCodes
from .config import ModelConfig
from .fileio import atomic_write_bytes
from .model import TowerImplicitModel
from .tasks import Task, task_from_dict

CHECKPOINT_FORMAT = "chimle-checkpoint/1"
CODES_FORMAT = "chimle-codes/1"


class CheckpointError(ValueError):
    """A checkpoint or code file that cannot be used; the message says why."""


@dataclass
class Checkpoint:
    """A loaded model: the network (eval mode), its task, and the file's metadata."""

    net: TowerImplicitModel
    task: Task
    metadata: dict = field(default_factory=dict)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a dict of tensors (order-free)."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return sha.hexdigest()


def _read_safetensors(path: Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata, turning every low-level failure into a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: the file is empty")
    try:
        tensors = load_safetensors_bytes(data)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, ValueError, OSError, RuntimeError) as error:
        # torch.save writes a zip archive (PK) or a bare pickle (protocol 2+ starts 0x80 0x0N).
        if data[:2] == b"PK" or (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise CheckpointError(
                f"{path}: this is a pickle (torch.save) file; chimle only loads safetensors files, "
                f"because unpickling can run arbitrary code") from None
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupted?): {error}") from None
    if metadata.get("format") != expected_format:
        raise CheckpointError(f"{path}: expected a {expected_format} file, found format "
                              f"{metadata.get('format')!r}")
    if metadata.get("sha256") != tensor_digest(tensors):
        raise CheckpointError(f"{path}: tensor data does not match its checksum (the file is corrupted)")
    return tensors, metadata


def save_checkpoint(path: str | os.PathLike, net: TowerImplicitModel, task: Task,
                    metadata: dict | None = None, half: bool = False) -> None:
    """Write net, task and metadata to `path` atomically.

    Args:
        half: store floating-point weights as float16 (halves the file; loads back as float32).
    """
    tensors = {}
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        tensors[name] = tensor.half() if half and tensor.is_floating_point() else tensor
    info = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    info.update(metadata or {})
    header = {
        "format": CHECKPOINT_FORMAT,
        "model_config": json.dumps(net.config.to_dict()),
        "task": json.dumps(task.to_dict()),
        "metadata": json.dumps(info),
        "sha256": tensor_digest(tensors),
    }
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=header))


def load_checkpoint(path: str | os.PathLike, expected_task: str | None = None,
                    device: torch.device | str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint; every problem raises CheckpointError naming it."""
    path = Path(path)
    tensors, header = _read_safetensors(path, CHECKPOINT_FORMAT)
    try:
        config = ModelConfig.from_dict(json.loads(header["model_config"]))
        task = task_from_dict(json.loads(header["task"]))
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: invalid model config or task in the header: {error}") from None
    if expected_task is not None and task.name != expected_task:
        raise CheckpointError(f"{path}: this checkpoint is for task {task.name!r}, not {expected_task!r}")
    net = TowerImplicitModel(config)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model config: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: weight {name} has shape {tuple(tensor.shape)}, "
                                  f"the config needs {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: weight {name} contains NaN or infinite values")
    net.load_state_dict({name: t.to(expected[name].dtype) for name, t in tensors.items()}, strict=True)
    return Checkpoint(net.to(device).eval(), task, metadata)


def read_model_header(path: str | os.PathLike) -> tuple[ModelConfig, Task]:
    """A checkpoint's model config and task, from its header alone (the weights are not read
    or checked: `load_checkpoint` does that).

    Raises:
        CheckpointError: not a readable chimle checkpoint, or its header is invalid.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: expected a {CHECKPOINT_FORMAT} file, found format {header.get('format')!r}")
    try:
        return ModelConfig.from_dict(json.loads(header["model_config"])), task_from_dict(json.loads(header["task"]))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: invalid model config or task in the header: {error}") from None


def model_fingerprint(net: TowerImplicitModel, task: Task) -> str:
    """A short id of a model's architecture and task, stored with saved codes."""
    text = json.dumps({"config": net.config.to_dict(), "task": task.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_codes(path: str | os.PathLike, codes: LatentCodes, fingerprint: str,
               metadata: dict | None = None) -> None:
    """Save codes next to an image, so it can be re-rendered bit-exactly."""
    tensors = codes.to_tensors()
    header = {"format": CODES_FORMAT, "model": fingerprint, "sha256": tensor_digest(tensors),
              "metadata": json.dumps(metadata or {})}
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=header))


def load_codes(path: str | os.PathLike, fingerprint: str | None = None) -> tuple[LatentCodes, dict]:
    """Load saved codes; with `fingerprint`, refuse codes saved for another model."""
    path = Path(path)
    tensors, header = _read_safetensors(path, CODES_FORMAT)
    if fingerprint is not None and header.get("model") != fingerprint:
        raise CheckpointError(f"{path}: these codes were saved for another model "
                              f"({header.get('model')}), not this one ({fingerprint})")
    for name, tensor in sorted(tensors.items()):
        # A checksum only proves the file is as written: it may have been written with NaNs.
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: code {name} holds {tensor.dtype} values, not floating-point numbers")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: code {name} contains NaN or infinite values")
    try:
        codes = LatentCodes.from_tensors({name: tensor.float() for name, tensor in tensors.items()})
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if codes.batch_size < 1:
        raise CheckpointError(f"{path}: the file holds no codes")
    return codes, json.loads(header.get("metadata", "{}"))
