"""The training loop: pools, code search, updates, logs, snapshots (DESIGN.md section 3).

Schedule: take a pool of training crops, search a code for every crop (CHIMLE, cIMLE or
an ablation), then run `steps_per_pool` gradient steps on random batches of the pool with
those cached codes, then take the next pool. Everything a run needs to continue lives in
its run folder (`chimle.runs`), and every random choice is a function of (seed, pool
index), so a resumed run is the run that was interrupted.

Multi-GPU and multi-node: launched by torchrun, every rank searches codes for its share
of the pool, DistributedDataParallel averages the updates, and rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import save_checkpoint, tensor_digest
from .codes import LatentCodes
from .config import PRESETS, dataclass_from_dict, preset
from .data import (Batch, CropSampler, ImageCorpus, PairedCorpus, describe_split, find_images,
                   find_pairs, split_by_source, validation_batch)
from .fileio import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from .images import save_png
from .loss import imle_loss
from .model import TowerImplicitModel
from .perceptual import load_perceptual_distance
from .runs import (FAILED, FINISHED, RUNNING, STOPPED, RunPaths, append_metrics, now, read_metrics,
                   truncate_metrics, write_status)
from .search import SearchConfig, chimle_search
from .tasks import TASK_NAMES, Task, make_task

METHODS = ("chimle", "cimle")


@dataclass
class TrainConfig:
    """Every option of a run; written to config.json. Defaults suit the `cpu` preset.

    Attributes:
        task, task_params: the task (`chimle.tasks.make_task`) and its parameters.
        data: folder of photos (recursive), or with input/ and target/ for paired tasks.
        validation_data: held-out photos for the sample grids; when given, all of `data`
            trains and `held_out_fraction` is not used.
        preset: model size (`chimle.config.PRESETS`).
        method: "chimle" (hierarchical search) or "cimle".
        samples_per_level: CHIMLE's candidates per level, coarse to fine.
        cimle_samples: cIMLE's samples per search; default sum(samples_per_level), the
            same number of candidate evaluations (equal cost).
        iterative_construction, partial_evaluation: CHIMLE ablation switches.
        zero_codes: fix every code to zero and skip the search: the unimodal baseline.
        steps: total gradient steps.
        time_budget_minutes: finish early once training has run this long (0: no limit);
            how runs of different methods get the same wall-clock budget.
        pool_size: crops per pool (searched together); steps_per_pool: updates per pool.
        batch_size: crops per update (per rank). crop_size: training crop side.
        lr, mapping_lr_multiplier: Adam learning rate; the mapping networks' is scaled
            (the authors use 0.01, as StyleGAN does).
        level_weights: LPIPS weight per level (default 1 each); l1_weight: pixel L1 term.
        held_out_fraction: share of source photos kept out of training.
        max_side: photos are kept in memory downscaled to this longer side.
    """

    task: str = "colourization"
    task_params: dict = field(default_factory=dict)
    data: str = ""
    validation_data: str = ""
    preset: str = "cpu"
    method: str = "chimle"
    samples_per_level: tuple[int, ...] = (12, 6, 4)
    cimle_samples: int | None = None
    iterative_construction: bool = True
    partial_evaluation: bool = True
    zero_codes: bool = False
    steps: int = 3000
    time_budget_minutes: float = 0.0
    pool_size: int = 32
    steps_per_pool: int = 24
    batch_size: int = 4
    crop_size: int = 128
    lr: float = 2e-4
    mapping_lr_multiplier: float = 0.01
    level_weights: tuple[float, ...] | None = None
    l1_weight: float = 0.0
    seed: int = 0
    held_out_fraction: float = 0.1
    max_side: int = 512
    log_every: int = 10
    sample_every: int = 250
    checkpoint_every: int = 50
    snapshot_every: int = 1000
    search_chunk: int = 32
    lpips_net: str = "alex"
    device: str = "auto"
    amp: bool = True
    half_final: bool = False

    def __post_init__(self) -> None:
        self.samples_per_level = tuple(self.samples_per_level)
        if self.level_weights is not None:
            self.level_weights = tuple(self.level_weights)
        self.validate()

    def validate(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; known tasks: {', '.join(TASK_NAMES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known presets: {', '.join(PRESETS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        positive = ("steps", "pool_size", "steps_per_pool", "batch_size", "crop_size", "log_every",
                    "sample_every", "checkpoint_every", "snapshot_every", "search_chunk")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size > self.pool_size:
            raise ValueError(f"batch_size {self.batch_size} is larger than pool_size {self.pool_size}")
        if not (self.lr > 0 and self.mapping_lr_multiplier > 0):
            raise ValueError("lr and mapping_lr_multiplier must be positive")

    def search_config(self) -> SearchConfig:
        if self.method == "cimle":
            return SearchConfig.cimle(self.cimle_samples or sum(self.samples_per_level), self.search_chunk)
        return SearchConfig(self.samples_per_level, self.iterative_construction, self.partial_evaluation,
                            True, self.search_chunk)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, values, "training options")


class TrainingFailed(RuntimeError):
    """The run stopped as failed (a non-finite loss, a write error); status.json says why."""


def _failed(paths: RunPaths, env: Distributed, step: int, total_steps: int, message: str) -> TrainingFailed:
    """Record a failure in status.json (rank 0) and return the exception to raise.

    When even the status cannot be written, the message says so: it is then the only
    report, printed by the CLI, and the studio sees the run's process gone.
    """
    if env.is_main:
        try:
            write_status(paths, FAILED, step, total_steps, message)
        except OSError as error:
            message += f" (status.json could not be updated either: {error.strerror or error})"
    return TrainingFailed(message)


def _write_failure(error: OSError, step: int, saved_step: int) -> str:
    """What a failed write of the run folder did, for status.json and the CLI."""
    kept = (f"the checkpoint of step {saved_step} is kept" if saved_step
            else "no checkpoint had been written yet")
    return f"could not write {error.filename or 'the run folder'} at step {step}: {error.strerror or error}; {kept}"


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str) -> "Distributed":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # each rank its own GPU
        device = torch.device("cuda", local_rank)
    return device


def code_version() -> str:
    """The git commit of the code, when run from a checkout (for config.json).

    "-dirty" follows the commit when tracked files differ from it: the run then used code
    that no commit holds.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class _Data:
    sampler: CropSampler
    validation: Batch
    description: dict


def _load_data(config: TrainConfig, task: Task) -> _Data:
    root = Path(config.data)
    items = find_pairs(root) if task.paired else find_images(root)
    if config.validation_data:
        validation_root = Path(config.validation_data)
        train_items = items
        held_out = find_pairs(validation_root) if task.paired else find_images(validation_root)
    else:
        train_items, held_out = split_by_source(items, config.held_out_fraction, config.seed)
    corpus_type = PairedCorpus if task.paired else ImageCorpus
    corpus = corpus_type(train_items, config.max_side, source=str(root))
    validation_corpus = corpus_type(held_out, config.max_side, source=str(root)) if held_out else corpus
    description = describe_split(train_items, held_out, held_out_fraction=config.held_out_fraction,
                                 seed=config.seed)
    description.update(root=str(root.resolve()), skipped=[name for name, _ in corpus.skipped])
    return _Data(CropSampler(corpus, config.crop_size, task, config.seed),
                 validation_batch(validation_corpus, config.crop_size, task, 4, config.seed), description)


def _optimizer(net: TowerImplicitModel, config: TrainConfig) -> torch.optim.Optimizer:
    mapping = list(net.mappings.parameters())
    mapping_ids = {id(p) for p in mapping}
    rest = [p for p in net.parameters() if id(p) not in mapping_ids]
    return torch.optim.Adam([{"params": rest, "lr": config.lr},
                             {"params": mapping, "lr": config.lr * config.mapping_lr_multiplier}],
                            betas=(0.9, 0.999))


def _seed_for(*parts: int) -> int:
    """Deterministic seed for a (seed, pool, rank, purpose) tuple."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2 ** 63 - 1)
    return value


class _StopRequest:
    """SIGTERM / Ctrl-C: finish the current step, write a checkpoint, stop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _sample_grid(net: TowerImplicitModel, task: Task, batch: Batch, seed: int, samples: int = 4) -> torch.Tensor:
    """Rows of (input, `samples` samples, target) for the fixed validation batch."""
    from torchvision.utils import make_grid

    size = tuple(batch.y.shape[-2:])
    shape = net.code_shape(size)
    device = next(net.parameters()).device
    rows = []
    with torch.inference_mode():
        for image in range(batch.y.shape[0]):
            x = batch.x[image:image + 1].expand(samples, -1, -1, -1).to(device)
            # Drawn on the CPU generator, then moved: the same grid on every device.
            codes = LatentCodes.sample(shape, samples, torch.Generator().manual_seed(seed)).to(device)
            outputs = task.to_rgb(x, net(x, codes)[-1]).float().cpu()
            rows += [task.input_preview(batch.x[image:image + 1], size)[0], *outputs, batch.y[image]]
    return make_grid(torch.stack(rows).clamp(-1, 1), nrow=samples + 2, padding=2, pad_value=1.0)


def _save_training_state(paths: RunPaths, net: TowerImplicitModel, task: Task, optimizer, step: int,
                         pool_index: int, pool_codes: LatentCodes | None, pool_distances, config: TrainConfig,
                         elapsed: float, timing: dict, description: dict) -> None:
    """Write the resumable state (one torch file, loaded with weights_only) and latest model."""
    state = {
        "step": step,
        "pool_index": pool_index,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pool_codes": pool_codes.to_tensors() if pool_codes is not None else None,
        "pool_distances": pool_distances,
        "elapsed": elapsed,
        "timing": dict(timing),
    }
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(paths.train_state, buffer.getvalue())
    metadata = {"step": step, "run": str(paths.root), "data": description.get("root", ""),
                "method": config.method, "preset": config.preset}
    save_checkpoint(paths.latest, net, task, metadata)


def _load_training_state(paths: RunPaths) -> dict:
    # weights_only=True: a run folder is not trusted to run code on load.
    return torch.load(paths.train_state, map_location="cpu", weights_only=True)


def _gather_codes(codes: LatentCodes, distances: torch.Tensor, env: Distributed):
    """Every rank's share of the pool's codes, in rank order, on every rank."""
    if env.world_size == 1:
        return codes, distances
    shares = [None] * env.world_size
    dist.all_gather_object(shares, (codes.to("cpu").to_tensors(), distances.cpu()))
    return (LatentCodes.cat([LatentCodes.from_tensors(t) for t, _ in shares]),
            torch.cat([d for _, d in shares]))


def _rank_share(pool_size: int, env: Distributed) -> slice:
    per_rank = pool_size // env.world_size
    return slice(env.rank * per_rank, (env.rank + 1) * per_rank)


def train(config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume) the run in `run_dir`; returns the final status dict.

    Raises:
        TrainingFailed: on a non-finite loss or an error while training (status says why).
    """
    paths = RunPaths(run_dir)
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and bare `.cuda()` calls use the current device
    env = Distributed.from_environment(device.type)
    if env.world_size > 1 and config.pool_size % env.world_size:
        raise ValueError(f"pool_size {config.pool_size} must divide evenly among {env.world_size} ranks")
    torch.manual_seed(config.seed)
    task = make_task(config.task, **config.task_params)
    model_config = preset(config.preset, task.in_channels, task.out_channels)
    task.check_levels(model_config.num_levels)
    net = TowerImplicitModel(model_config).to(device)
    optimizer = _optimizer(net, config)
    distance = load_perceptual_distance(config.lpips_net, device)
    data = _load_data(config, task)
    search_config = config.search_config()

    step, pool_index, elapsed = 0, -1, 0.0
    saved_step = 0  # the step of the newest complete checkpoint
    pool_codes, pool_distances = None, None
    timing = {"search_seconds": 0.0, "update_seconds": 0.0}
    if resume and paths.train_state.exists():
        state = _load_training_state(paths)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, pool_index, elapsed = state["step"], state["pool_index"], state["elapsed"]
        saved_step = step
        timing.update(state["timing"])
        if state["pool_codes"] is not None:
            pool_codes = LatentCodes.from_tensors(state["pool_codes"]).to(device)
            pool_distances = state["pool_distances"]
    if env.is_main:
        try:
            paths.root.mkdir(parents=True, exist_ok=True)
            paths.samples.mkdir(exist_ok=True)
            paths.checkpoints.mkdir(exist_ok=True)
            # Writes cut short by a kill -9 left temporaries; this process owns these folders.
            remove_stale_temporaries(paths.checkpoints)
            remove_stale_temporaries(paths.samples)
            if resume:
                truncate_metrics(paths, step)
            else:
                atomic_write_json(paths.config, {"train": config.to_dict(), "model": model_config.to_dict(),
                                                 "task": task.to_dict(), "data": data.description,
                                                 "code_version": code_version(), "created": now(),
                                                 "world_size": env.world_size, "device": str(device)})
            write_status(paths, RUNNING, step, config.steps, "resumed" if resume else "started")
        except OSError as error:
            raise _failed(paths, env, step, config.steps, _write_failure(error, step, saved_step)) from error

    model = net
    if env.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = config.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    bar = tqdm(total=config.steps, initial=step, desc="train", disable=not (progress and env.is_main),
               dynamic_ncols=True)
    share = _rank_share(config.pool_size, env)
    last_log_time, last_log_step = time.time(), step
    started = time.time() - elapsed
    message, final_state = "", FINISHED
    pool, budget_reached = None, False
    try:
        with _StopRequest() as stop:
            while step < config.steps:
                # -- search: a new pool of crops, a code for each --------------------------------
                if step // config.steps_per_pool != pool_index or pool_codes is None:
                    pool_index = step // config.steps_per_pool
                    pool = data.sampler.batch(pool_index, config.pool_size)
                    pool_codes = None
                    x_share, y_share = pool.x[share].to(device), pool.y[share].to(device)
                    tic = time.time()
                    if config.zero_codes:
                        codes = LatentCodes.zeros(net.code_shape(tuple(y_share.shape[-2:])), len(y_share), device)
                        distances = torch.zeros(len(y_share), net.num_levels)
                    else:
                        generator = torch.Generator(device).manual_seed(_seed_for(config.seed, pool_index, env.rank))
                        net.eval()
                        with autocast():
                            result = chimle_search(net, task, distance, x_share, y_share, search_config, generator)
                        codes, distances = result.codes, result.distances.float().cpu()
                    timing["search_seconds"] += time.time() - tic
                    pool_codes, pool_distances = _gather_codes(codes, distances, env)
                    net.train()
                elif pool is None:  # resumed inside a pool: same crops, codes from the state
                    pool = data.sampler.batch(pool_index, config.pool_size)
                batch_order = torch.Generator().manual_seed(_seed_for(config.seed, pool_index, env.rank, 1))
                picks = torch.randint(share.stop - share.start, (config.steps_per_pool, config.batch_size),
                                      generator=batch_order)[step % config.steps_per_pool] + share.start

                # -- step: one update on a batch of the pool with its cached codes -----------
                tic = time.time()
                x, y = pool.x[picks].to(device), pool.y[picks].to(device)
                codes = _index_codes(pool_codes, picks, device)
                with autocast():
                    loss = imle_loss(model, task, distance, x, codes, y, config.level_weights, config.l1_weight)
                if not torch.isfinite(loss.total):
                    raise TrainingFailed(f"non-finite loss ({loss.total.item()}) at step {step + 1}; "
                                         f"the last good checkpoint is kept")
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                optimizer.step()
                step += 1
                timing["update_seconds"] += time.time() - tic
                bar.update(1)

                # -- log ---------------------------------------------------------------
                if env.is_main and (step % config.log_every == 0 or step == config.steps):
                    now_time = time.time()
                    rate = (step - last_log_step) * config.batch_size * env.world_size / max(now_time - last_log_time, 1e-9)
                    elapsed = now_time - started
                    seconds_per_step = elapsed / max(step, 1)
                    eta = seconds_per_step * (config.steps - step)
                    if config.time_budget_minutes:
                        eta = min(eta, max(60 * config.time_budget_minutes - elapsed, 0.0))
                    record = {
                        "step": step, "pool": pool_index, "loss": loss.total.item(),
                        "loss_per_level": loss.per_level.tolist(),
                        "search_distance_per_level": pool_distances.mean(0).tolist(),
                        "images_per_second": rate, "elapsed_seconds": elapsed,
                        "eta_seconds": eta,
                        "search_seconds": timing["search_seconds"], "update_seconds": timing["update_seconds"],
                        "search_share": timing["search_seconds"] / max(sum(timing.values()), 1e-9),
                    }
                    append_metrics(paths, record)
                    write_status(paths, RUNNING, step, config.steps, "training",
                                 eta_seconds=record["eta_seconds"], loss=record["loss"])
                    bar.set_postfix(loss=f"{record['loss']:.3f}", search=f"{record['search_share']:.0%}")
                    last_log_time, last_log_step = now_time, step

                # -- snapshot ----------------------------------------------------------
                if env.is_main and (step % config.sample_every == 0 or step == config.steps):
                    net.eval()
                    grid = _sample_grid(net, task, data.validation, config.seed)
                    save_png(paths.samples / f"step-{step:07d}.png", grid)
                    net.train()
                if env.is_main and (step % config.checkpoint_every == 0 or step == config.steps or stop.requested):
                    _save_training_state(paths, net, task, optimizer, step, pool_index, pool_codes, pool_distances,
                                         config, time.time() - started, timing, data.description)
                    saved_step = step
                    if step % config.snapshot_every == 0:
                        save_checkpoint(paths.snapshot(step), net, task, {"step": step, "run": str(paths.root)})
                if _any_rank_stopping(stop.requested, env):
                    final_state, message = STOPPED, f"stopped at step {step} on request"
                    break
                if config.time_budget_minutes and time.time() - started >= 60 * config.time_budget_minutes:
                    if env.is_main:
                        _save_training_state(paths, net, task, optimizer, step, pool_index, pool_codes,
                                             pool_distances, config, time.time() - started, timing,
                                             data.description)
                        saved_step = step
                    budget_reached = True
                    break
        if final_state == FINISHED and env.is_main:
            save_checkpoint(paths.final_model, net, task, {"step": step, "run": str(paths.root),
                                                           "data": data.description.get("root", ""),
                                                           "method": config.method, "preset": config.preset,
                                                           "train_seconds": round(time.time() - started, 1)},
                            half=config.half_final)
            message = f"finished {step} steps" + (" (time budget reached)" if budget_reached else "")
        if env.is_main:
            write_status(paths, final_state, step, config.steps, message)
    except TrainingFailed as error:
        raise _failed(paths, env, step, config.steps, str(error)) from None
    except OSError as error:  # a full disk, a vanished folder: name the file, say what is kept
        raise _failed(paths, env, step, config.steps, _write_failure(error, step, saved_step)) from error
    except Exception as error:
        raise _failed(paths, env, step, config.steps,
                      f"training failed at step {step}: {type(error).__name__}: {error}") from error
    finally:
        bar.close()
    if env.world_size > 1:
        dist.barrier()
    # The digest lets callers (and the multi-process test) compare weights across ranks.
    return {"state": final_state, "step": step, "message": message,
            "weights_digest": tensor_digest({k: v.detach().cpu() for k, v in net.state_dict().items()})}


def _index_codes(codes: LatentCodes, picks: torch.Tensor, device: torch.device) -> LatentCodes:
    return LatentCodes([g[picks] for g in codes.globals], [loc[picks] for loc in codes.locals]).to(device)


def _any_rank_stopping(requested: bool, env: Distributed) -> bool:
    """All ranks stop together when any one was asked to (torchrun forwards signals to all)."""
    if env.world_size == 1:
        return requested
    # NCCL reduces CUDA tensors only; gloo takes CPU ones.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    dist.all_reduce(flag)
    return flag.item() > 0


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig a run was started with (for --resume)."""
    paths = RunPaths(run_dir)
    try:
        values = json.loads(paths.config.read_text())["train"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{paths.root} is not a run folder (no readable config.json): {error}") from None
    return TrainConfig.from_dict(values)
