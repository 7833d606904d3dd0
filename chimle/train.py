"""The training loop: pools, code search, updates, logs, snapshots (docs/method.md#training).

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
import functools
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import load_checkpoint, read_model_header, save_checkpoint, tensor_digest
from .codes import CodeShape, LatentCodes
from .config import PRESETS, ModelConfig, dataclass_from_dict, preset
from .data import (Batch, CropSampler, ImageCorpus, PairedCorpus, describe_split, find_images,
                   find_pairs, split_by_source, validation_batch)
from .fileio import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from .images import save_png
from .loss import LossResult, imle_loss
from .model import TowerImplicitModel
from .perceptual import load_perceptual_distance
from .runs import (FINISHED, RUNNING, STOPPED, RunPaths, TrainingFailed, append_metrics, append_validation, now,
                   read_validation, record_failure, truncate_metrics, write_status)
from .search import Distance, SearchConfig, chimle_search, normalise_thresholds, threshold_values
from .tasks import TASK_NAMES, Task, make_task

METHODS = ("chimle", "cimle")
SEMANTIC_PRIORS = ("preset", "alexnet", "none")


# New region codes find their regions by k-means: learned ones stayed nearly uniform
# (docs/method.md#regions-by-k-means).
DEFAULT_REGION_PARTITION = "kmeans"
# The search's redraws per region of a model with region codes (`SearchConfig.samples_per_region`):
# 8 regions x 3 cost 24 level-1 evaluations, about what levels 2 and 3 cost.
DEFAULT_SAMPLES_PER_REGION = 3


def default_samples_per_level(num_levels: int) -> tuple[int, ...]:
    """The search budget of the shipped cpu models, (12, 6, 4), fitted to any depth.

    The coarse level gets the most candidates: its choice decides the most of the output
    (docs/method.md#the-search-budget); levels beyond the third get 4 like the third.
    """
    return ((12, 6) + (4,) * max(num_levels - 2, 0))[:num_levels]


@dataclass
class TrainConfig:
    """Every option of a run; written to config.json. Defaults suit the `cpu` preset.

    Attributes:
        task, task_params: the task (`chimle.tasks.make_task`) and its parameters.
        data: folder of photos (recursive), or with input/ and target/ for paired tasks.
        validation_data: held-out photos for the sample grids; when given, all of `data`
            trains and `held_out_fraction` is not used.
        preset: model size (`chimle.config.PRESETS`).
        semantic_prior: "preset" (the preset's choice), "alexnet" or "none": whether the
            model gets the frozen AlexNet features of its input (`chimle.semantic`).
        input_skip: every level outputs its input plus a learned correction
            (`ModelConfig.input_skip`); for restoration tasks, not colourization.
        region_styles: the global code styles this many semantic regions of the image
            separately (`ModelConfig.region_styles`; needs the semantic prior). A run from
            a model without them (`init_from`) grows them, starting as that model.
        region_codes: the coarsest local code is pooled over this many semantic regions,
            each region's vector styling its region (`ModelConfig.region_codes`; needs the
            semantic prior); grown as region styles are.
        region_partition: how region codes find their regions (`ModelConfig.region_partition`):
            "kmeans" (default) or "learned".
        global_code: False: the model has no global code (`ModelConfig.global_code_dim` 0);
            each level's style is a learned constant, and the code varies the output only
            through its local maps (with region codes, object by object). A run from a
            model with a global code (`init_from`) drops it, keeping that model's style at
            the zero global code (`drop_global_code`).
        samples_per_region: the search's redraws of each region's level-1 code
            (`SearchConfig.samples_per_region`); default `DEFAULT_SAMPLES_PER_REGION` with
            region codes, else 0.
        init_from: a model file (.safetensors) whose weights the run starts from (not its
            optimiser state); the model's sizes are then that file's.
        method: "chimle" (hierarchical search) or "cimle".
        samples_per_level: CHIMLE's candidates per level, coarse to fine; default
            `default_samples_per_level(levels)`, which fits any number of levels.
        cimle_samples: cIMLE's samples per search; default sum(samples_per_level), the
            same number of candidate evaluations (equal cost).
        iterative_construction, partial_evaluation: CHIMLE ablation switches.
        rejection_threshold: RS-IMLE's rejection in the search (`SearchConfig`): one value
            for every level or one per level; 0: off.
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
    semantic_prior: str = "preset"
    input_skip: bool = False
    region_styles: int = 0
    region_codes: int = 0
    region_partition: str = DEFAULT_REGION_PARTITION
    global_code: bool = True
    init_from: str = ""
    method: str = "chimle"
    samples_per_level: tuple[int, ...] | None = None
    cimle_samples: int | None = None
    iterative_construction: bool = True
    partial_evaluation: bool = True
    rejection_threshold: float | tuple[float, ...] = 0.0
    samples_per_region: int | None = None
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
        if self.samples_per_level is not None:
            self.samples_per_level = tuple(self.samples_per_level)
        if self.level_weights is not None:
            self.level_weights = tuple(self.level_weights)
        self.rejection_threshold = normalise_thresholds(self.rejection_threshold)
        self.validate()

    def validate(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; known tasks: {', '.join(TASK_NAMES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known presets: {', '.join(PRESETS)}")
        if self.semantic_prior not in SEMANTIC_PRIORS:
            raise ValueError(f"unknown semantic prior {self.semantic_prior!r}; choose from {', '.join(SEMANTIC_PRIORS)}")
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
        thresholds = threshold_values(self.rejection_threshold)
        if not all(t >= 0 for t in thresholds):
            raise ValueError(f"rejection_threshold must be >= 0 (0: off), got {self.rejection_threshold!r}")
        if len(thresholds) > 1 and self.method == "cimle":
            raise ValueError("cIMLE searches whole codes: give one rejection_threshold, not one per level")
        if self.samples_per_region and not self.region_codes:
            raise ValueError("samples_per_region redraws region codes: it needs region_codes")
        if self.samples_per_region and self.method == "cimle":
            raise ValueError("cIMLE searches whole codes: samples_per_region is CHIMLE's")

    def build_task(self) -> Task:
        """The task, its defaults fitted to the preset: super-resolution by 2^levels."""
        params = dict(self.task_params)
        if self.task == "super_resolution" and "factor" not in params:
            params["factor"] = 2 ** len(PRESETS[self.preset].values["channels"])
        return make_task(self.task, **params)

    def model_config(self, task: Task) -> ModelConfig:
        """The model this run builds from its preset and semantic-prior options."""
        overrides = {} if self.semantic_prior == "preset" else {
            "semantic_encoder": "" if self.semantic_prior == "none" else self.semantic_prior}
        if self.input_skip:
            overrides["input_skip"] = True
        if self.region_styles:
            overrides["region_styles"] = self.region_styles
        if self.region_codes:
            overrides["region_codes"] = self.region_codes
            overrides["region_partition"] = self.region_partition
        if not self.global_code:
            overrides["global_code_dim"] = 0
        return preset(self.preset, task.in_channels, task.out_channels, **overrides)

    def search_config(self, num_levels: int) -> SearchConfig:
        """The code search of a model with `num_levels` levels."""
        per_level = self.samples_per_level or default_samples_per_level(num_levels)
        if self.method == "cimle":
            return SearchConfig.cimle(self.cimle_samples or sum(per_level), self.search_chunk,
                                      self.rejection_threshold)
        per_region = self.samples_per_region
        if per_region is None:
            per_region = DEFAULT_SAMPLES_PER_REGION if self.region_codes else 0
        return SearchConfig(per_level, self.iterative_construction, self.partial_evaluation,
                            True, self.search_chunk, self.rejection_threshold, per_region)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        if values.get("region_codes") and "region_partition" not in values:
            # A run started before the option had learned partitions: resuming it must too.
            values = {**values, "region_partition": "learned"}
        return dataclass_from_dict(cls, values, "training options")


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for without torchrun)."""
        if self.world_size > 1:
            dist.barrier()

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


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the code this process started with, when run from a checkout.

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
    if task.paired:
        corpus = PairedCorpus(train_items, config.max_side, source=str(root))
        validation_corpus = PairedCorpus(held_out, config.max_side, source=str(root)) if held_out else corpus
    else:
        # A greyscale photo would teach colourization that the answer is grey.
        skip_grey = task.name == "colourization"
        corpus = ImageCorpus(train_items, config.max_side, source=str(root), skip_grey=skip_grey)
        validation_corpus = (ImageCorpus(held_out, config.max_side, source=str(root), skip_grey=skip_grey)
                             if held_out else corpus)
    description = describe_split(train_items, held_out, held_out_fraction=config.held_out_fraction,
                                 seed=config.seed)
    description.update(root=str(root.resolve()), skipped=[name for name, _ in corpus.skipped],
                       skipped_grey=[str(p) for p in getattr(corpus, "skipped_grey", [])])
    return _Data(CropSampler(corpus, config.crop_size, task, config.seed),
                 validation_batch(validation_corpus, config.crop_size, task, 4, config.seed), description)


def _build_model(config: TrainConfig, task: Task, resumed: RunPaths | None = None
                 ) -> tuple[TowerImplicitModel, list[dict]]:
    """A fresh model, or the `init_from` model's weights; and the training legs before this run.

    A resumed run (`resumed`: its folder) gets a fresh model, for the weights of its own
    state, and the legs its config.json recorded: the init_from file may have changed since.

    Raises:
        ValueError: the init_from model is for another task (its parameters, say the JPEG
            quality, may differ), or its sizes are not the ones
            this run's preset and semantic prior build (say which; a silent switch of
            architecture would make the run's config.json lie).
    """
    wanted = config.model_config(task)
    if resumed is not None:
        return TowerImplicitModel(wanted), _read_config(resumed).get("lineage_before", [])
    if not config.init_from:
        return TowerImplicitModel(wanted), []
    # Same task, and the parameters may differ: a model of blind JPEG (qualities 5 to 40) is a
    # good start for quality 1. The lineage keeps each leg's own task parameters.
    source = load_checkpoint(config.init_from, expected_task=task.name)
    previous = source.metadata.get("lineage") or [_leg_from_metadata(config.init_from, source.metadata)]
    if source.net.config == wanted:
        return source.net.train(), previous
    if can_grow(source.net.config, wanted):
        return grow(source.net, wanted).train(), previous
    have, want = dataclasses.asdict(source.net.config), dataclasses.asdict(wanted)
    differences = {k: (v, want[k]) for k, v in have.items() if v != want[k]}
    raise ValueError(f"{config.init_from} does not have the sizes of preset {config.preset!r} with "
                     f"semantic prior {config.semantic_prior!r}: (file, preset) differ in {differences}")


def can_grow(have: ModelConfig, wanted: ModelConfig) -> bool:
    """Whether `wanted` is `have` with region styles and/or region codes added (`grow_regions`),
    and/or its global code dropped (`drop_global_code`)."""
    dropped = not wanted.global_code_dim
    grown = have.replace(region_styles=have.region_styles or wanted.region_styles,
                         region_codes=have.region_codes or wanted.region_codes,
                         region_partition=have.region_partition if have.region_codes else wanted.region_partition,
                         global_code_dim=0 if dropped else have.global_code_dim)
    return grown == wanted and grown != have


def grow(net: TowerImplicitModel, wanted: ModelConfig) -> TowerImplicitModel:
    """`net` changed into a model of config `wanted` (`can_grow`): global code dropped first,
    then regions grown. Either step starts the new model rendering as `net` does (at the
    zero global code, for a dropped one)."""
    if net.config.global_code_dim and not wanted.global_code_dim:
        net = drop_global_code(net)
    if net.config != wanted:
        net = grow_regions(net, wanted)
    return net


def drop_global_code(net: TowerImplicitModel) -> TowerImplicitModel:
    """`net` without its global stream (`ModelConfig.global_code_dim` = 0): each level's
    constant style is the w that `net` maps the zero global code to, so the new model renders
    every code as `net` renders that code with its global parts set to zero."""
    dropped = TowerImplicitModel(net.config.replace(global_code_dim=0))
    missing, unexpected = dropped.load_state_dict(net.state_dict(), strict=False)
    if not all(name.startswith("constant_styles.") for name in missing) or not all(
            name.startswith("mappings.") for name in unexpected):
        raise ValueError(f"cannot drop the global code: unexpected {unexpected}, missing {missing}")
    shape = CodeShape(net.config.global_code_dim, net.config.local_code_channels, ((1, 1),) * net.num_levels)
    zero = LatentCodes.zeros(shape, 1)
    with torch.no_grad():
        mapped = []
        for level in range(net.num_levels):
            mapped.append(net.style_vector(level, zero, mapped))
            dropped.constant_styles[level].copy_(mapped[-1][0])
    return dropped


def grow_regions(net: TowerImplicitModel, wanted: ModelConfig) -> TowerImplicitModel:
    """A model of config `wanted` (`net`'s, with region styles or region codes added) holding
    `net`'s weights; the new styles start at zero, so it renders as `net` does until it trains.

    New region codes with a learned partition take their regions from the first AdaIN's
    trained region styles where the numbers agree (a k-means partition learns nothing).
    """
    grown = TowerImplicitModel(wanted)
    missing, unexpected = grown.load_state_dict(net.state_dict(), strict=False)
    if unexpected or not all(".region_" in name for name in missing):
        raise ValueError(f"cannot grow regions: unexpected {unexpected}, missing {missing}")
    level = grown.levels[0]
    trained = net.levels[0].adains[0].region_logits if net.levels[0].adains else None
    if (not net.config.region_codes and level.region_pool is not None and level.region_pool.logits is not None
            and trained is not None and trained.out_channels == wanted.region_codes):
        level.region_pool.logits.load_state_dict(trained.state_dict())
    return grown


@dataclass(frozen=True)
class InitOptions:
    """The options of a run that starts from a model file (`TrainConfig.init_from`): the
    file's task, and a preset and semantic prior that build its sizes."""

    task: str
    task_params: dict
    preset: str
    semantic_prior: str
    input_skip: bool = False
    region_styles: int = 0
    region_codes: int = 0
    region_partition: str = DEFAULT_REGION_PARTITION
    global_code: bool = True

    def arguments(self) -> list[str]:
        """These options as `python -m chimle train` flags."""
        flags = ["--task", self.task, "--preset", self.preset, "--semantic-prior", self.semantic_prior]
        flags += ["--input-skip"] if self.input_skip else []
        flags += ["--region-styles", str(self.region_styles)] if self.region_styles else []
        flags += ["--region-codes", str(self.region_codes), "--region-partition", self.region_partition] \
            if self.region_codes else []
        flags += [] if self.global_code else ["--no-global-code"]
        return flags + (["--task-params", json.dumps(self.task_params)] if self.task_params else [])


def init_options(path: str | os.PathLike) -> InitOptions:
    """The options under which `init_from=path` passes `_build_model`'s checks (from the
    file's header; the weights are checked when the run loads them).

    Raises:
        CheckpointError: the file is not a readable checkpoint.
        ValueError: no preset and semantic prior build the file's sizes.
    """
    wanted, task = read_model_header(path)
    params = {k: v for k, v in task.to_dict().items() if k != "name"}
    partition = wanted.region_partition if wanted.region_codes else DEFAULT_REGION_PARTITION
    for name in PRESETS:
        for prior in SEMANTIC_PRIORS:
            candidate = TrainConfig(task=task.name, task_params=params, preset=name, semantic_prior=prior,
                                    input_skip=wanted.input_skip, region_styles=wanted.region_styles,
                                    region_codes=wanted.region_codes, region_partition=partition,
                                    global_code=bool(wanted.global_code_dim))
            try:
                built = candidate.model_config(candidate.build_task())
            except ValueError:  # an impossible pair, such as region styles with no semantic prior
                continue
            if built == wanted:
                return InitOptions(task.name, params, name, prior, wanted.input_skip, wanted.region_styles,
                                   wanted.region_codes, partition, bool(wanted.global_code_dim))
    raise ValueError(f"{path}: no preset builds this model's sizes, so no run can start from it")


def _leg_from_metadata(path: str, metadata: dict) -> dict:
    """A lineage entry for a model file written before lineages were recorded."""
    return {"run": metadata.get("run", str(path)), "steps": metadata.get("step"),
            "train_seconds": metadata.get("train_seconds"), "data": metadata.get("data", ""),
            "method": metadata.get("method"), "preset": metadata.get("preset")}


def _this_leg(config: TrainConfig, paths: RunPaths, step: int, seconds: float, device: torch.device,
              description: dict) -> dict:
    """This run as one lineage entry: its options (to re-run it), its steps and its cost."""
    defaults = TrainConfig()
    options = {k: v for k, v in config.to_dict().items() if v != getattr(defaults, k)}
    return {"run": str(paths.root), "steps": step, "train_seconds": round(seconds, 1),
            "device": str(device), "data": description.get("root", ""), "code_version": code_version(),
            "options": options}


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


def _validation_samples(net: TowerImplicitModel, task: Task, batch: Batch, seed: int,
                        samples: int = 4) -> torch.Tensor:
    """`samples` outputs for each crop of the fixed validation batch, from the same codes at
    every step: (N, K, 3, H, W) RGB on the CPU."""
    shape = net.code_shape(tuple(batch.y.shape[-2:]))
    device = next(net.parameters()).device
    outputs = []
    net.eval()
    with torch.inference_mode():
        for image in range(batch.y.shape[0]):
            x = batch.x[image:image + 1].expand(samples, -1, -1, -1).to(device)
            # Drawn on the CPU generator, then moved: the same codes on every device.
            codes = LatentCodes.sample(shape, samples, torch.Generator().manual_seed(seed)).to(device)
            outputs.append(task.to_rgb(x, net(x, codes)[-1]).float().cpu())
    net.train()
    return torch.stack(outputs)


def _sample_grid(task: Task, batch: Batch, outputs: torch.Tensor) -> torch.Tensor:
    """Rows of (input, samples, target) for the validation batch and its (N, K, 3, H, W) outputs."""
    from torchvision.utils import make_grid

    size = tuple(batch.y.shape[-2:])
    rows = []
    for image, samples in enumerate(outputs):
        rows += [task.input_preview(batch.x[image:image + 1], size)[0], *samples, batch.y[image]]
    return make_grid(torch.stack(rows).clamp(-1, 1), nrow=outputs.shape[1] + 2, padding=2, pad_value=1.0)


def _validation_lpips(outputs: torch.Tensor, batch: Batch, distance: Distance, device: torch.device) -> float:
    """Best-of-K LPIPS of the (N, K, 3, H, W) outputs to their true crops, averaged over the
    crops: what `eval` reports as best LPIPS (docs/method.md#metrics), on the run's fixed
    validation batch."""
    with torch.inference_mode():
        best = [distance(samples.clamp(-1, 1).to(device), batch.y[image:image + 1].to(device)).min().item()
                for image, samples in enumerate(outputs)]
    return sum(best) / len(best)


def _validate(paths: RunPaths, net: TowerImplicitModel, task: Task, distance: Distance, batch: Batch,
              seed: int, step: int, **extra) -> None:
    """The sample grid of `step` (samples/) and its figure, a line of validation.jsonl."""
    outputs = _validation_samples(net, task, batch, seed)
    save_png(paths.sample_grid(step), _sample_grid(task, batch, outputs))
    lpips = _validation_lpips(outputs, batch, distance, next(net.parameters()).device)
    append_validation(paths, {"step": step, "best_lpips": lpips, "samples": outputs.shape[1],
                              "crops": outputs.shape[0], **extra})


@dataclass
class _RunState:
    """What changes while a run trains, in one place.

    A checkpoint keeps what a resumed run needs: train_state.pt the step, the pool's index,
    codes and distances, and the times; config.json the lineage. The pool's crops are not
    kept: (seed, pool index) draws them again.
    """

    step: int = 0  # updates done
    pool_index: int = -1  # the pool being trained on (-1: none yet)
    pool: Batch | None = None  # its crops
    pool_codes: LatentCodes | None = None  # the searched code of each crop, gathered from every rank
    pool_distances: torch.Tensor | None = None  # (pool_size, levels): each code's distance per level
    saved_step: int = 0  # the step of the newest complete checkpoint (0: none yet)
    lineage: list[dict] = field(default_factory=list)  # the training legs before this run
    elapsed: float = 0.0  # training seconds of the run's earlier processes
    timing: dict = field(default_factory=lambda: {"search_seconds": 0.0, "update_seconds": 0.0})
    clock: float = 0.0  # time.time() when this process began training
    logged_time: float = 0.0  # the last log line's time and step: images per second since
    logged_step: int = 0

    def start_clock(self) -> None:
        """Start this process's share of the training time (the set-up is not training)."""
        self.clock = self.logged_time = time.time()
        self.logged_step = self.step

    def seconds(self, at: float | None = None) -> float:
        """Training seconds of the whole run, this process's and its predecessors'."""
        return self.elapsed + (time.time() if at is None else at) - self.clock

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the seconds spent inside to `timing[phase]`."""
        tic = time.time()
        yield
        self.timing[phase] += time.time() - tic


def _starts_from_a_model(config: TrainConfig, run: _RunState, paths: RunPaths) -> bool:
    """Whether the run is at step 0 with init_from's weights, their figure not yet recorded
    (a run resumed before its first checkpoint recorded it when it began)."""
    return bool(config.init_from) and run.step == 0 and not any(
        record.get("step") == 0 for record in read_validation(paths))


def _due(step: int, every: int, last: int) -> bool:
    """Whether a task done every `every` steps (log, samples, checkpoint) is due after `step`;
    it is always due at the last step."""
    return step % every == 0 or step == last


def _place_process(config: TrainConfig) -> tuple[torch.device, Distributed]:
    """This process's device and its place among torchrun's ranks."""
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and bare `.cuda()` calls use the current device
    env = Distributed.from_environment(device.type)
    if env.world_size > 1 and config.pool_size % env.world_size:
        raise ValueError(f"pool_size {config.pool_size} must divide evenly among {env.world_size} ranks")
    return device, env


def _model_optimizer_state(config: TrainConfig, task: Task, paths: RunPaths, resume: bool, device: torch.device
                           ) -> tuple[TowerImplicitModel, torch.optim.Optimizer, _RunState]:
    """The model on `device`, its optimiser and the run's state: new (the model fresh or
    init_from's), or, when resuming a run that has a checkpoint, what train_state.pt holds."""
    resuming = resume and paths.train_state.exists()
    net, lineage = _build_model(config, task, paths if resuming else None)
    task.check_levels(net.config.num_levels)
    net = net.to(device)
    optimizer = _optimizer(net, config)
    run = _RunState(lineage=lineage)
    if resuming:
        _load_training_state(paths, run, net, optimizer, device)
    return net, optimizer, run


def _ddp_and_autocast(net: TowerImplicitModel, config: TrainConfig, env: Distributed, device: torch.device):
    """The module the updates go through (DistributedDataParallel across ranks) and the
    autocast context of the search and the updates (bfloat16 on CUDA when `amp`)."""
    model = net if env.world_size == 1 else torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.amp and device.type == "cuda":
        return model, functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    return model, nullcontext


def _config_record(config: TrainConfig, net: TowerImplicitModel, task: Task, description: dict,
                   lineage: list[dict], env: Distributed, device: torch.device) -> dict:
    """config.json: every option, the model, the task, the data, and where the weights come from."""
    return {"train": config.to_dict(), "model": net.config.to_dict(), "task": task.to_dict(), "data": description,
            "lineage_before": lineage, "code_version": code_version(), "created": now(),
            "world_size": env.world_size, "device": str(device)}


def _prepare_run_folder(paths: RunPaths, step: int, total_steps: int, new_run: dict | None) -> None:
    """Make the run folder ready to train in, and say so in status.json.

    Args:
        new_run: config.json of a new run; None for a resumed one, whose config.json stays
            and whose metrics.jsonl is cut back to `step`, the step it resumes from.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.samples.mkdir(exist_ok=True)
    paths.checkpoints.mkdir(exist_ok=True)
    # Writes cut short by a kill -9 left temporaries; this process owns these folders.
    remove_stale_temporaries(paths.checkpoints)
    remove_stale_temporaries(paths.samples)
    if new_run is None:
        truncate_metrics(paths, step)
    else:
        atomic_write_json(paths.config, new_run)
    write_status(paths, RUNNING, step, total_steps, "resumed" if new_run is None else "started")


def _search_codes(net: TowerImplicitModel, task: Task, distance: Distance, search: SearchConfig | None,
                  pool: Batch, seed: int, env: Distributed, autocast) -> tuple[LatentCodes, torch.Tensor]:
    """The searched code of every crop of this rank's share of the pool, and its distances.

    Returns:
        The codes (on the model's device) and their (N, levels) distances (CPU, float32).
        `search` None is the zero-code baseline: every code is zero, nothing is searched.
    """
    device = next(net.parameters()).device
    share = _rank_share(len(pool.x), env)
    x, y = pool.x[share].to(device), pool.y[share].to(device)
    if search is None:
        codes = LatentCodes.zeros(net.code_shape(tuple(y.shape[-2:])), len(y), device)
        return codes, torch.zeros(len(y), net.num_levels)
    generator = torch.Generator(device).manual_seed(seed)
    net.eval()
    with autocast():
        result = chimle_search(net, task, distance, x, y, search, generator)
    net.train()
    return result.codes, result.distances.float().cpu()


def _batch_picks(config: TrainConfig, run: _RunState, env: Distributed) -> torch.Tensor:
    """The pool indices of this step's batch, within this rank's share: a function of
    (seed, pool, rank, step), so a run resumed inside a pool takes the same batches."""
    share = _rank_share(config.pool_size, env)
    order = torch.Generator().manual_seed(_seed_for(config.seed, run.pool_index, env.rank, 1))
    picks = torch.randint(share.stop - share.start, (config.steps_per_pool, config.batch_size), generator=order)
    return picks[run.step % config.steps_per_pool] + share.start


def _update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, task: Task, distance: Distance,
            run: _RunState, picks: torch.Tensor, config: TrainConfig, autocast) -> LossResult:
    """One optimiser step on the pool's crops `picks` with their cached codes; returns the loss.

    Raises:
        TrainingFailed: the loss is not finite (the step is not taken).
    """
    device = next(model.parameters()).device
    x, y = run.pool.x[picks].to(device), run.pool.y[picks].to(device)
    codes = _index_codes(run.pool_codes, picks, device)
    with autocast():
        loss = imle_loss(model, task, distance, x, codes, y, config.level_weights, config.l1_weight)
    if not torch.isfinite(loss.total):
        raise TrainingFailed(f"non-finite loss ({loss.total.item()}) at step {run.step + 1}; "
                             f"the last good checkpoint is kept")
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return loss


def _log(paths: RunPaths, run: _RunState, loss: LossResult, config: TrainConfig, world_size: int, bar: tqdm) -> None:
    """Log the step just taken: a line of metrics.jsonl, status.json, the progress bar."""
    record = _metrics_record(run, loss, config, world_size)
    append_metrics(paths, record)
    write_status(paths, RUNNING, run.step, config.steps, "training", eta_seconds=record["eta_seconds"],
                 loss=record["loss"])
    bar.set_postfix(loss=f"{record['loss']:.3f}", search=f"{record['search_share']:.0%}")


def _metrics_record(run: _RunState, loss: LossResult, config: TrainConfig, world_size: int) -> dict:
    """One line of metrics.jsonl for the step just taken; the run's last log becomes now."""
    now_time = time.time()
    rate = (run.step - run.logged_step) * config.batch_size * world_size / max(now_time - run.logged_time, 1e-9)
    run.logged_time, run.logged_step = now_time, run.step
    elapsed = run.seconds(now_time)
    eta = elapsed / max(run.step, 1) * (config.steps - run.step)
    if config.time_budget_minutes:
        eta = min(eta, max(60 * config.time_budget_minutes - elapsed, 0.0))
    search, update = run.timing["search_seconds"], run.timing["update_seconds"]
    return {"step": run.step, "pool": run.pool_index, "loss": loss.total.item(),
            "loss_per_level": loss.per_level.tolist(),
            "search_distance_per_level": run.pool_distances.mean(0).tolist(),
            "images_per_second": rate, "elapsed_seconds": elapsed, "eta_seconds": eta,
            "search_seconds": search, "update_seconds": update,
            "search_share": search / max(sum(run.timing.values()), 1e-9)}


def _model_metadata(config: TrainConfig, paths: RunPaths, device: torch.device, description: dict,
                    run: _RunState) -> dict:
    """What a model file of this run says of it, with the lineage that ends in this run."""
    seconds = run.seconds()
    return {"step": run.step, "run": str(paths.root), "data": description.get("root", ""),
            "method": config.method, "preset": config.preset, "train_seconds": round(seconds, 1),
            "lineage": run.lineage + [_this_leg(config, paths, run.step, seconds, device, description)]}


def _save_training_state(paths: RunPaths, net: TowerImplicitModel, task: Task, optimizer: torch.optim.Optimizer,
                         run: _RunState, metadata: dict) -> None:
    """Write the resumable state (one torch file, loaded with weights_only), then the latest model.

    `run.saved_step` moves once both are written: a failure before then reports the
    previous checkpoint as the one kept.
    """
    state = {
        "step": run.step,
        "pool_index": run.pool_index,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pool_codes": run.pool_codes.to_tensors() if run.pool_codes is not None else None,
        "pool_distances": run.pool_distances,
        "elapsed": run.seconds(),
        "timing": dict(run.timing),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(paths.train_state, buffer.getvalue())
    save_checkpoint(paths.latest, net, task, metadata)
    run.saved_step = run.step


def _load_training_state(paths: RunPaths, run: _RunState, net: TowerImplicitModel,
                         optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Continue from train_state.pt: its weights, optimiser state, step, pool codes and clocks."""
    # weights_only=True: a run folder is not trusted to run code on load.
    state = torch.load(paths.train_state, map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    run.step = run.saved_step = state["step"]
    run.pool_index, run.elapsed = state["pool_index"], state["elapsed"]
    run.timing.update(state["timing"])
    if state["pool_codes"] is not None:
        run.pool_codes = LatentCodes.from_tensors(state["pool_codes"]).to(device)
        run.pool_distances = state["pool_distances"]


def _out_of_time(config: TrainConfig, run: _RunState) -> bool:
    """Whether the run has a time budget and has trained that long."""
    return bool(config.time_budget_minutes) and run.seconds() >= 60 * config.time_budget_minutes


def _outcome(step: int, stopped: bool, budget_spent: bool) -> tuple[str, str]:
    """The final state and status message of a run that ended at `step`."""
    if stopped:
        return STOPPED, f"stopped at step {step} on request"
    return FINISHED, f"finished {step} steps" + (" (time budget reached)" if budget_spent else "")


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
    # Set up: device and rank; task; model, optimiser and run state (new or resumed); distance; data.
    paths = RunPaths(run_dir)
    device, env = _place_process(config)
    torch.manual_seed(config.seed)
    task = config.build_task()
    net, optimizer, run = _model_optimizer_state(config, task, paths, resume, device)
    distance = load_perceptual_distance(config.lpips_net, device)
    data = _load_data(config, task)
    search = None if config.zero_codes else config.search_config(net.config.num_levels)
    model, autocast = _ddp_and_autocast(net, config, env, device)
    metadata = functools.partial(_model_metadata, config, paths, device, data.description)  # metadata(run)
    bar = tqdm(total=config.steps, initial=run.step, desc="train", disable=not (progress and env.is_main),
               dynamic_ncols=True)

    with record_failure(paths, run, config.steps, write=env.is_main), bar, _StopRequest() as stop:
        if env.is_main:  # rank 0 alone writes files
            _prepare_run_folder(paths, run.step, config.steps, None if resume else _config_record(
                config, net, task, data.description, run.lineage, env, device))
        if env.is_main and _starts_from_a_model(config, run, paths):
            # The figure the run's own are compared with: the model it starts from, on the same crops and codes.
            _validate(paths, net, task, distance, data.validation, config.seed, 0, start_model=config.init_from)
        stopped = budget_spent = False
        run.start_clock()
        while run.step < config.steps:
            # Search: a new pool of crops, a code for each (every rank its share, then gathered).
            if run.step // config.steps_per_pool != run.pool_index or run.pool_codes is None:
                run.pool_index = run.step // config.steps_per_pool
                run.pool = data.sampler.batch(run.pool_index, config.pool_size)
                seed = _seed_for(config.seed, run.pool_index, env.rank)
                with run.timed("search_seconds"):
                    codes, distances = _search_codes(net, task, distance, search, run.pool, seed, env, autocast)
                run.pool_codes, run.pool_distances = _gather_codes(codes, distances, env)
            elif run.pool is None:  # resumed inside a pool: same crops, codes from the state
                run.pool = data.sampler.batch(run.pool_index, config.pool_size)

            # Step: one update on a random batch of the pool, with its cached codes.
            picks = _batch_picks(config, run, env)
            with run.timed("update_seconds"):
                loss = _update(model, optimizer, task, distance, run, picks, config, autocast)
                run.step += 1
            bar.update(1)

            # Log: a line of metrics.jsonl, status.json, the progress bar.
            if env.is_main and _due(run.step, config.log_every, config.steps):
                _log(paths, run, loss, config, env.world_size, bar)

            # Snapshot: the sample grid and its validation figure; the resumable state (also before a
            # stop), a numbered model.
            if env.is_main and _due(run.step, config.sample_every, config.steps):
                _validate(paths, net, task, distance, data.validation, config.seed, run.step)
            if env.is_main and (_due(run.step, config.checkpoint_every, config.steps) or stop.requested):
                _save_training_state(paths, net, task, optimizer, run, metadata(run))
                if run.step % config.snapshot_every == 0:
                    save_checkpoint(paths.snapshot(run.step), net, task, {"step": run.step, "run": str(paths.root)})

            # Stop: all ranks together when one is asked to, or once the time budget is spent.
            stopped = _any_rank_stopping(stop.requested, env)
            # Agreed by all ranks too: their clocks differ, and a rank that stopped alone would hang.
            budget_spent = not stopped and _any_rank_stopping(_out_of_time(config, run), env)
            if budget_spent and env.is_main:  # the state at the last step: a longer budget resumes it
                _save_training_state(paths, net, task, optimizer, run, metadata(run))
            if stopped or budget_spent:
                break

        # Finish: the final model (unless stopped on request) and the final status.
        state, message = _outcome(run.step, stopped, budget_spent)
        if env.is_main and state == FINISHED:
            save_checkpoint(paths.final_model, net, task, metadata(run), half=config.half_final)
        if env.is_main:
            write_status(paths, state, run.step, config.steps, message)
    env.barrier()
    # The digest lets callers (and the multi-process test) compare weights across ranks.
    return {"state": state, "step": run.step, "message": message,
            "weights_digest": tensor_digest({k: v.detach().cpu() for k, v in net.state_dict().items()})}


def _index_codes(codes: LatentCodes, picks: torch.Tensor, device: torch.device) -> LatentCodes:
    return LatentCodes([g[picks] for g in codes.globals], [loc[picks] for loc in codes.locals]).to(device)


def _any_rank_stopping(requested: bool, env: Distributed) -> bool:
    """Whether any rank asks to stop (a signal: torchrun forwards it to all; or its time budget)."""
    if env.world_size == 1:
        return requested
    # NCCL reduces CUDA tensors only; gloo takes CPU ones.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    dist.all_reduce(flag)
    return flag.item() > 0


def _read_config(paths: RunPaths) -> dict:
    try:
        return json.loads(paths.config.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{paths.root} is not a run folder (no readable config.json): {error}") from None


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig a run was started with (for --resume)."""
    paths = RunPaths(run_dir)
    values = _read_config(paths)
    if "train" not in values:
        raise ValueError(f"{paths.root} is not a run folder (config.json has no 'train' section)")
    return TrainConfig.from_dict(values["train"])
