"""Region codes whose regions come from k-means over each photo's semantic map
(`ModelConfig.region_partition` "kmeans", `chimle.regions`)."""

from __future__ import annotations

import pytest
import torch

from chimle.checkpoint import load_checkpoint, save_checkpoint
from chimle.cli import build_parser
from chimle.codes import LatentCodes
from chimle.config import ModelConfig, preset
from chimle.model import RegionPool, TowerImplicitModel
from chimle.regions import kmeans_region_weights
from chimle.search import SearchConfig, chimle_search
from chimle.tasks import make_task
from chimle.train import InitOptions, TrainConfig, can_grow, grow, init_options

from .conftest import photo


def _quadrant_map(batch: int = 1, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """(B, 6, 16, 16) maps of four areas with different features (the top-left quadrant, the
    top-right one, the bottom half's left 12 columns and its right 4), plus noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(6)[:4]
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[:8, 8:] = 1
    labels[8:, :12] = 2
    labels[8:, 12:] = 3
    maps = centres[labels].permute(2, 0, 1)[None].repeat(batch, 1, 1, 1)
    return maps + noise * torch.randn(maps.shape, generator=generator), labels


def test_kmeans_finds_the_areas_of_a_map_whatever_their_size():
    semantic, labels = _quadrant_map()
    weights = kmeans_region_weights(semantic, 4)
    assert weights.shape == (1, 4, 16, 16)
    torch.testing.assert_close(weights.sum(1), torch.ones(1, 16, 16))
    found = weights.argmax(1)[0]
    # Each area is one region, and no two areas share one (a permutation of the labels).
    pairs = {(int(a), int(b)) for a, b in zip(labels.flatten(), found.flatten())}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    assert weights.max(1).values.mean() > 0.8  # sharp: not the near-uniform softmax a learned one kept


def test_kmeans_regions_are_deterministic_and_per_photo():
    semantic, _ = _quadrant_map(noise=0.1)
    other = torch.roll(semantic, 5, dims=3)
    batch = torch.cat([semantic, other])
    weights = kmeans_region_weights(batch, 4)
    assert torch.equal(weights, kmeans_region_weights(batch, 4))
    torch.testing.assert_close(weights[:1], kmeans_region_weights(semantic, 4))
    torch.testing.assert_close(weights[1:], kmeans_region_weights(other, 4))
    assert not torch.equal(weights[0].argmax(0), weights[1].argmax(0))
    pool = RegionPool(6, 4, "kmeans")
    assert pool.logits is None and not list(pool.parameters())
    repeated = pool.region_weights(semantic.expand(3, -1, -1, -1))  # one photo, three codes
    assert torch.equal(repeated[2], repeated[0])


def test_kmeans_pooled_vectors_are_unit_normal_and_independent_across_regions():
    semantic, labels = _quadrant_map(noise=0.05)
    pool = RegionPool(6, 4, "kmeans")
    count = 3000
    z = torch.randn(count, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    vectors = pool(z, semantic.expand(count, -1, -1, -1)).vectors  # (N, 4, 2)
    torch.testing.assert_close(vectors.std(0), torch.ones(4, 2), rtol=0, atol=0.06)
    correlation = torch.corrcoef(vectors[:, :, 0].T)
    assert (correlation - torch.eye(4)).abs().max() < 0.15
    # Redrawing the code on one area's pixels redraws that area's vector, hardly the others'.
    region = int(pool.partition(semantic)[0, 0, 0])
    redrawn = z.clone()
    redrawn[..., :8, :8] = torch.randn(count, 2, 8, 8)
    again = pool(redrawn, semantic.expand(count, -1, -1, -1)).vectors
    others = [k for k in range(4) if k != region]
    assert (again[:, region] - vectors[:, region]).abs().mean() > 0.5
    assert (again[:, others] - vectors[:, others]).abs().mean() < 0.05


def test_the_partition_option_is_checked_and_saved(tmp_path):
    task = make_task("colourization")
    with pytest.raises(ValueError, match="region_partition must be one of"):
        preset("tiny", 1, 2, semantic_encoder="alexnet", region_codes=3, region_partition="slic")
    with pytest.raises(ValueError, match="needs region_codes"):
        preset("tiny", 1, 2, semantic_encoder="alexnet", region_partition="kmeans")
    learned = preset("tiny", 1, 2, semantic_encoder="alexnet", region_codes=3)
    assert "region_partition" not in learned.to_dict()  # files written before the option read the same
    kmeans = learned.replace(region_partition="kmeans")
    assert ModelConfig.from_dict(kmeans.to_dict()) == kmeans
    path = tmp_path / "kmeans.safetensors"
    save_checkpoint(path, TowerImplicitModel(kmeans), task)
    assert load_checkpoint(path).net.config == kmeans
    options = init_options(path)
    assert options == InitOptions("colourization", {}, "tiny", "alexnet", region_codes=3, region_partition="kmeans")
    assert options.arguments()[-4:] == ["--region-codes", "3", "--region-partition", "kmeans"]
    args = build_parser().parse_args(["train", "--data", "d", "--region-codes", "8"] + options.arguments()[-2:])
    config = TrainConfig(data="d", region_codes=args.region_codes, region_partition=args.region_partition)
    assert config.model_config(task).region_partition == "kmeans"
    assert TrainConfig(data="d", region_codes=8).model_config(task).region_partition == "kmeans"  # the default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--region-partition", "slic"])
    # A run written before the option resumes with the learned partition it was built with.
    old_run = {key: value for key, value in config.to_dict().items() if key != "region_partition"}
    assert TrainConfig.from_dict(old_run).region_partition == "learned"
    assert TrainConfig.from_dict(config.to_dict()).region_partition == "kmeans"


def test_a_model_grows_kmeans_region_codes_rendering_as_it_did():
    torch.manual_seed(0)
    net = TowerImplicitModel(preset("tiny", 1, 2, semantic_encoder="alexnet", semantic_channels=4,
                                    region_styles=3)).eval()
    for adain in net.levels[0].adains:
        torch.nn.init.normal_(adain.region_affine.weight, std=0.5)
    wanted = net.config.replace(region_codes=4, region_partition="kmeans", global_code_dim=0)
    assert can_grow(net.config, wanted)
    grown = grow(net, wanted).eval()
    assert grown.levels[0].region_pool.logits is None
    x = photo("coffee", 32)[:, :1]
    codes = LatentCodes.sample(grown.code_shape((32, 32)), 2, torch.Generator().manual_seed(1))
    zero_globals = LatentCodes([torch.zeros(2, net.config.global_code_dim)] * net.num_levels, codes.locals)
    with torch.inference_mode():
        torch.testing.assert_close(grown(x.expand(2, -1, -1, -1), codes)[-1],
                                   net(x.expand(2, -1, -1, -1), zero_globals)[-1], rtol=0, atol=1e-5)


def test_the_region_search_draws_kmeans_regions_one_by_one(lpips_alex):
    task = make_task("colourization")
    torch.manual_seed(0)
    net = TowerImplicitModel(preset("tiny", 1, 2, semantic_encoder="alexnet", semantic_channels=4,
                                    region_codes=4, region_partition="kmeans")).eval()
    for adain in net.levels[0].adains:
        torch.nn.init.normal_(adain.region_code_affine.weight, std=1.0)
    y = torch.cat([photo(name) for name in ("chelsea", "coffee")])
    x = task.degrade(y)
    plain = chimle_search(net, task, lpips_alex, x, y, SearchConfig((8, 4)), torch.Generator().manual_seed(0))
    refined = chimle_search(net, task, lpips_alex, x, y, SearchConfig((8, 4), samples_per_region=4),
                            torch.Generator().manual_seed(0))
    assert torch.all(refined.distances[:, 0] <= plain.distances[:, 0] + 1e-6)
    assert torch.any(refined.distances[:, 0] < plain.distances[:, 0] - 1e-4)
    with torch.inference_mode():
        regions = net.levels[0].region_pool.partition(net.encode(x, refined.codes.shape.local_sizes)[0])
    # k-means gives every photo all four regions, where a learned softmax may leave some empty.
    assert all(len(torch.unique(regions[i])) == 4 for i in range(2))
