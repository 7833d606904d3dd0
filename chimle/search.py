"""Code search: CHIMLE's hierarchical search and cIMLE's plain search (docs/method.md#chimle).

For every (x_i, y_i), find a latent code whose output is close to y_i in LPIPS. cIMLE
draws m whole codes and keeps the best. CHIMLE draws level 1's component first (m_1
candidates, judged by level 1's partial output against y downsampled), fixes the winner,
then searches level 2 given it, and so on. Three switches remove its ideas one at a time
(the paper's ablation, section 3.3):

- iterative_construction=False: each level's component is searched on its own, the
  components of coarser levels drawn at random instead of fixed to their winners;
- partial_evaluation=False: candidates are judged by the final output, the unconstructed
  finer components drawn at random;
- code_division=False: the code is one whole; this needs the other two off, and then the
  search is exactly cIMLE with sum(m_l) samples.

A model with region codes (`ModelConfig.region_codes`) has its level-1 local code divided
by the photo's objects too; with `samples_per_region` the search then chooses level 1's
component region by region, as it chooses the code level by level (`refine_regions`).

Every search runs in inference mode, batched over candidates and images in chunks of
`chunk_size` forward passes, and consumes the random generator in a fixed order (image by
image, then level by level, global before local), so results do not depend on chunking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .codes import LatentCodes
from .imageops import resize
from .model import Render, TowerImplicitModel
from .tasks import Task

# distance(images, targets) -> per-sample distances (N,); RGB in [-1, 1]. LPIPS in practice.
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SearchConfig:
    """Options of the code search.

    Attributes:
        samples_per_level: candidates m_l drawn for each level's component, coarse to fine.
        iterative_construction: fix coarser levels to their winners (IC).
        partial_evaluation: judge level l by its own output against D_l(y) (PE).
        code_division: search level by level at all (CD); off means one whole code.
        chunk_size: candidates rendered per forward pass; bounds memory, not results.
        rejection_threshold: RS-IMLE's rejection (Vashist et al., ECCV 2024): a candidate
            closer than this to its target is not chosen, unless every candidate is; 0 turns
            it off. IMLE's chosen sample is the one already nearest the photo, so training
            polishes outputs the model can already make and leaves its typical samples, the
            ones a user draws, where they are; choosing among samples at least this far
            pulls those instead (docs/method.md#rs-imle). One value for every level, or one
            per level, coarse to fine: the levels' distances differ in scale (a 64 px
            partial output is nearer its target than the full one), so one value that
            suits the last level rejects nearly every candidate of the first.
        samples_per_region: for a model with region codes, after level 1's winner is
            chosen, redraw its local code on each region's pixels this many times, region
            after region, and keep a redraw where it comes closer (`refine_regions`). K
            regions and m redraws choose among (m + 1)^K colourings for K x m cheap level-1
            evaluations; m whole level-1 candidates choose among m. 0: off.
    """

    samples_per_level: tuple[int, ...] = (16, 8, 4)
    iterative_construction: bool = True
    partial_evaluation: bool = True
    code_division: bool = True
    chunk_size: int = 32
    rejection_threshold: float | tuple[float, ...] = 0.0
    samples_per_region: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples_per_level", tuple(self.samples_per_level))
        object.__setattr__(self, "rejection_threshold", normalise_thresholds(self.rejection_threshold))
        if not self.samples_per_level or any(not isinstance(m, int) or m < 1 for m in self.samples_per_level):
            raise ValueError(f"samples_per_level must be positive integers, got {self.samples_per_level}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        thresholds = threshold_values(self.rejection_threshold)
        if not all(t >= 0 for t in thresholds):
            raise ValueError(f"rejection_threshold must be >= 0, got {self.rejection_threshold}")
        if len(thresholds) > 1 and not (self.code_division and len(thresholds) == len(self.samples_per_level)):
            raise ValueError(f"rejection_threshold has {len(thresholds)} values: give one, or one per level "
                             f"of a search with code division ({len(self.samples_per_level)} here)")
        if not isinstance(self.samples_per_region, int) or self.samples_per_region < 0:
            raise ValueError(f"samples_per_region must be >= 0 (0: off), got {self.samples_per_region!r}")
        if self.samples_per_region and not (self.code_division and self.iterative_construction
                                            and self.partial_evaluation):
            raise ValueError("samples_per_region refines level 1's chosen code with level 1's output: "
                             "it needs code division, iterative construction and partial evaluation")
        if not self.code_division and (self.iterative_construction or self.partial_evaluation):
            raise ValueError("iterative construction and partial evaluation need code division: "
                             "turn them off too (that is cIMLE)")

    def threshold_of(self, component: int) -> float:
        """The rejection threshold of the `component`-th searched component (a level, with
        code division)."""
        if isinstance(self.rejection_threshold, tuple):
            return self.rejection_threshold[component]
        return self.rejection_threshold

    @property
    def total_candidates(self) -> int:
        """Candidates evaluated per image: the search's cost in (partial) forward passes."""
        return sum(self.samples_per_level)

    @classmethod
    def cimle(cls, num_samples: int, chunk_size: int = 32,
              rejection_threshold: float | tuple[float, ...] = 0.0) -> "SearchConfig":
        """cIMLE as the ablation with every switch off."""
        return cls((num_samples,), False, False, False, chunk_size, rejection_threshold)


@dataclass
class SearchResult:
    """Chosen codes and how close they came.

    Attributes:
        codes: the chosen code per image (batch B).
        distances: (B, L) distance of each chosen code's level-l output to D_l(y).
        candidates_per_image: (partial) forward passes spent per image.
    """

    codes: LatentCodes
    distances: torch.Tensor
    candidates_per_image: int


def level_targets(net: TowerImplicitModel, y: torch.Tensor) -> list[torch.Tensor]:
    """D_l(y): the observed image downsampled to every level's output size."""
    shape = net.code_shape(tuple(y.shape[-2:]))
    return [resize(y, (2 * h, 2 * w)) for h, w in shape.local_sizes]


def _check_pair(net: TowerImplicitModel, x: torch.Tensor, y: torch.Tensor) -> None:
    if y.dim() != 4 or y.shape[1] != 3:
        raise ValueError(f"expected target RGB images (B, 3, H, W), got {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"input batch {x.shape[0]} != target batch {y.shape[0]}")


def evaluate_candidates(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                        candidates: LatentCodes, owners: torch.Tensor, target: torch.Tensor,
                        upto: int, chunk_size: int, prefix: Render | None = None,
                        start_level: int = 0, context: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Distance of every candidate's level-`upto` output to its owner image's target.

    Args:
        x: (B, ...) inputs; candidate k belongs to image owners[k].
        candidates: N codes.
        owners: (N,) image index of each candidate.
        target: (B, 3, h, w) target at level `upto`'s output size.
        prefix: a render of B codes whose levels < start_level every candidate shares
            with its owner (iterative construction), so those levels are not recomputed.
        context: `net.encode` of the B inputs: the semantic maps are computed once per
            image, not once per candidate.
    Returns:
        (N,) distances.
    """
    distances = []
    for begin in range(0, len(candidates), chunk_size):
        index = owners[begin:begin + chunk_size]
        chunk = candidates[begin:begin + chunk_size]
        reuse = None
        if prefix is not None and start_level > 0:
            reuse = Render([o[index] for o in prefix.outputs[:start_level]],
                           [f[index] for f in prefix.features[:start_level]],
                           [w[index] for w in prefix.mapped[:start_level]])
        render = net.render(x[index], chunk, upto=upto, reuse=reuse,
                            start_level=start_level if reuse is not None else 0,
                            context=[c[index] for c in context] if context is not None else None)
        images = task.to_rgb(x[index], render.outputs[-1])
        distances.append(distance(images, target[index]))
    return torch.cat(distances)


def chosen_distances(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                     codes: LatentCodes, targets: list[torch.Tensor]) -> torch.Tensor:
    """(B, L) distance of each code's output at every level to that level's target."""
    outputs = net(x, codes)
    return torch.stack([distance(task.to_rgb(x, out), target) for out, target in zip(outputs, targets)], 1)


def normalise_thresholds(value: float | Sequence[float]) -> float | tuple[float, ...]:
    """A rejection threshold as `SearchConfig` keeps it: one float for every level, or a
    tuple of one per level (a list from JSON or the command line; one value is every level's)."""
    if isinstance(value, (list, tuple)):
        values = tuple(float(v) for v in value)
        if not values:
            raise ValueError("rejection_threshold needs a value (0: off)")
        return values[0] if len(values) == 1 else values
    return float(value)


def threshold_values(value: float | tuple[float, ...]) -> tuple[float, ...]:
    """A normalised rejection threshold's values: one, or one per level."""
    return value if isinstance(value, tuple) else (value,)


def _select(distances: torch.Tensor, per_image: int, rejection_threshold: float = 0.0) -> torch.Tensor:
    """Index into the candidate list of each image's best candidate (first on ties), among
    those at least `rejection_threshold` away where there are any (`SearchConfig`)."""
    distances = distances.view(-1, per_image)
    if rejection_threshold > 0:
        rejected = distances < rejection_threshold
        allowed = distances.masked_fill(rejected, float("inf"))
        distances = torch.where(rejected.all(1, keepdim=True), distances, allowed)
    best = distances.argmin(1)
    return best + torch.arange(best.shape[0], device=best.device) * per_image


def refine_regions(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                   chosen: LatentCodes, chosen_distance: torch.Tensor, target: torch.Tensor,
                   context: list[torch.Tensor], config: SearchConfig,
                   generator: torch.Generator | None) -> tuple[LatentCodes, torch.Tensor, int]:
    """Choose the level-1 local code region by region (`SearchConfig.samples_per_region`).

    For each region k in turn (the hard partition of `RegionPool.partition`), draw m new
    local codes on region k's pixels, the rest kept, and keep whichever of the current code
    and the m redraws comes closest to level 1's target (with RS-IMLE's rejection). A region
    vector depends mostly on its own pixels, so each round chooses one object's colours
    with the others fixed: the iterative construction of CHIMLE, over regions instead of
    levels. Draws consume `generator` region by region, image by image.

    Returns:
        the refined codes, their level-1 distances (B,), and evaluations spent per image.
    """
    per_region = config.samples_per_region
    pool = net.levels[0].region_pool
    if pool is None:
        raise ValueError("samples_per_region needs a model with region codes (ModelConfig.region_codes)")
    batch = x.shape[0]
    shape = chosen.shape
    partition = pool.partition(context[0]).expand(batch, -1, -1)  # (B, h, w)
    owners = torch.arange(batch, device=x.device).repeat_interleave(per_region + 1)
    spent = 0
    for region in range(pool.regions):
        inside = (partition == region)[:, None]  # (B, 1, h, w)
        if not inside.any():  # no pixel of any image: nothing to redraw
            continue
        spent += per_region + 1
        local = chosen.locals[0].repeat_interleave(per_region + 1, 0)
        redraws = torch.stack([LatentCodes.sample_level(shape, 0, per_region, generator, x.device)[1]
                               for _ in range(batch)])  # (B, m, C, h, w)
        redraws = torch.cat([chosen.locals[0][:, None], redraws], 1).flatten(0, 1)  # current first
        mask = inside.repeat_interleave(per_region + 1, 0)
        candidates = chosen.repeat_interleave(per_region + 1).with_level(
            0, local_code=torch.where(mask, redraws, local))
        # The current code's distance is known; evaluating it again keeps the batching simple
        # and costs one of m + 1 evaluations.
        distances = evaluate_candidates(net, task, distance, x, candidates, owners, target, 1,
                                        config.chunk_size, context=context)
        best = _select(distances, per_region + 1, config.threshold_of(0))
        chosen = chosen.with_level(0, local_code=candidates.locals[0][best])
        chosen_distance = distances[best]
    return chosen, chosen_distance, spent


def chimle_search(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                  y: torch.Tensor, config: SearchConfig,
                  generator: torch.Generator | None = None) -> SearchResult:
    """Search a code for each (x_i, y_i): CHIMLE, or any of its ablations (module docstring).

    Args:
        x: (B, in_channels, h, w) model inputs.
        y: (B, 3, H, W) observed RGB images in [-1, 1]; H, W fix the codes' shape.
        generator: the source of randomness; the result is a function of its state.
    """
    _check_pair(net, x, y)
    levels = net.num_levels
    if config.code_division and len(config.samples_per_level) != levels:
        raise ValueError(f"samples_per_level has {len(config.samples_per_level)} entries; "
                         f"the model has {levels} levels")
    # A component is the group of levels searched together: one level each with code
    # division, the whole code at once without it.
    if config.code_division:
        components = [([level], m) for level, m in enumerate(config.samples_per_level)]
    else:
        components = [(list(range(levels)), config.total_candidates)]
    batch = x.shape[0]
    shape = net.code_shape(tuple(y.shape[-2:]))
    with torch.inference_mode():
        targets = level_targets(net, y)
        context = net.encode(x, shape.local_sizes)
        chosen = LatentCodes.zeros(shape, batch, x.device)
        winner_distances = []
        region_evaluations = 0
        for index, (component, per_image) in enumerate(components):
            first, last = component[0], component[-1]
            # Levels drawn at random for every candidate: the component itself, then the
            # coarser levels without IC and the finer ones without PE.
            random_levels = [level for level in range(levels) if level in component
                             or (level < first and not config.iterative_construction)
                             or (level > last and not config.partial_evaluation)]
            candidate_list = []
            for image in range(batch):
                codes = chosen[image].repeat_interleave(per_image)
                for level in random_levels:
                    g, loc = LatentCodes.sample_level(shape, level, per_image, generator, x.device)
                    codes = codes.with_level(level, g, loc)
                candidate_list.append(codes)
            candidates = LatentCodes.cat(candidate_list)
            owners = torch.arange(batch, device=x.device).repeat_interleave(per_image)
            upto = last + 1 if config.partial_evaluation else levels
            # With IC every candidate shares its image's chosen coarser levels: render
            # those once per image, not once per candidate.
            prefix = None
            if config.iterative_construction and first > 0:
                prefix = net.render(x, chosen, upto=first, context=context)
            distances = evaluate_candidates(net, task, distance, x, candidates, owners, targets[upto - 1],
                                            upto, config.chunk_size, prefix, first if prefix is not None else 0,
                                            context)
            best = _select(distances, per_image, config.threshold_of(index))
            winners = candidates[best]
            for level in component:
                chosen = chosen.replace_level(level, winners)
            winner_distance = distances[best]
            if config.samples_per_region and index == 0:
                chosen, winner_distance, spent = refine_regions(net, task, distance, x, chosen, winner_distance,
                                                                targets[0], context, config, generator)
                region_evaluations += spent
            winner_distances.append(winner_distance)
        if config.iterative_construction and config.partial_evaluation:
            # Level l's output depends on levels <= l only, all fixed by now: the distances
            # measured when each winner was chosen are final.
            final = torch.stack(winner_distances, 1)
        else:
            final = chosen_distances(net, task, distance, x, chosen, targets)
    return SearchResult(chosen, final, config.total_candidates + region_evaluations)


def cimle_search(net: TowerImplicitModel, task: Task, distance: Distance, x: torch.Tensor,
                 y: torch.Tensor, num_samples: int, generator: torch.Generator | None = None,
                 chunk_size: int = 32) -> SearchResult:
    """cIMLE: for each image draw `num_samples` whole codes and keep the closest output."""
    _check_pair(net, x, y)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch = x.shape[0]
    shape = net.code_shape(tuple(y.shape[-2:]))
    with torch.inference_mode():
        targets = level_targets(net, y)
        candidates = LatentCodes.cat([LatentCodes.sample(shape, num_samples, generator, x.device)
                                      for _ in range(batch)])
        owners = torch.arange(batch, device=x.device).repeat_interleave(num_samples)
        distances = evaluate_candidates(net, task, distance, x, candidates, owners, targets[-1],
                                        net.num_levels, chunk_size,
                                        context=net.encode(x, shape.local_sizes))
        chosen = candidates[_select(distances, num_samples)]
        final = chosen_distances(net, task, distance, x, chosen, targets)
    return SearchResult(chosen, final, num_samples)
