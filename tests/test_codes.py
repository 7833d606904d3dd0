"""Hierarchical latent codes: sampling, editing, batching, bit-exact serialisation."""

from __future__ import annotations

import pytest
import torch

from chimle.codes import CodeShape, LatentCodes

SHAPE = CodeShape(global_dim=6, local_channels=3, local_sizes=((4, 4), (8, 8), (16, 16)))


def sample(batch=3, seed=0):
    return LatentCodes.sample(SHAPE, batch, torch.Generator().manual_seed(seed))


def test_sampling_is_seeded_and_shaped():
    a, b, c = sample(seed=1), sample(seed=1), sample(seed=2)
    assert a.equal(b) and not a.equal(c)
    assert a.shape == SHAPE and a.batch_size == 3
    assert [tuple(loc.shape) for loc in a.locals] == [(3, 3, 4, 4), (3, 3, 8, 8), (3, 3, 16, 16)]
    # N(0, I): a large draw has mean ~0 and std ~1.
    big = LatentCodes.sample(SHAPE, 400, torch.Generator().manual_seed(0))
    assert abs(big.locals[2].mean().item()) < 0.02 and abs(big.locals[2].std().item() - 1) < 0.02


def test_level_by_level_draws_equal_whole_draws():
    # The search relies on this: drawing levels one at a time consumes the generator
    # exactly like drawing whole codes.
    generator = torch.Generator().manual_seed(5)
    parts = [LatentCodes.sample_level(SHAPE, level, 3, generator) for level in range(3)]
    whole = sample(seed=5)
    assert LatentCodes([g for g, _ in parts], [loc for _, loc in parts]).equal(whole)


@pytest.mark.parametrize("part", ["both", "global", "local"])
def test_replace_one_level_or_one_part(part):
    a, b = sample(seed=0), sample(seed=1)
    edited = a.replace_level(1, b, part)
    for level in range(3):
        same_global = part == "local" or level != 1
        same_local = part == "global" or level != 1
        assert torch.equal(edited.globals[level], (a if same_global else b).globals[level])
        assert torch.equal(edited.locals[level], (a if same_local else b).locals[level])
    assert sample(seed=0).equal(a)  # the original is untouched


def test_index_cat_and_repeat():
    a = sample(batch=4)
    assert a[2].batch_size == 1 and torch.equal(a[2].globals[0], a.globals[0][2:3])
    assert a[-1].equal(a[3])
    assert LatentCodes.cat([a[:2], a[2:]]).equal(a)
    repeated = a[:2].repeat_interleave(3)
    assert repeated.batch_size == 6 and repeated[4].equal(a[1])


def test_tensor_round_trip_is_bit_exact_and_validated():
    a = sample()
    assert LatentCodes.from_tensors(a.to_tensors()).equal(a)
    broken = a.to_tensors()
    del broken["local.2"]
    with pytest.raises(ValueError, match="not a latent code"):
        LatentCodes.from_tensors(broken)


def test_mismatched_parts_are_rejected():
    a = sample()
    with pytest.raises(ValueError, match="batch sizes differ"):
        LatentCodes(a.globals, [a.locals[0], a.locals[1][:1], a.locals[2]])
    with pytest.raises(ValueError, match="expected shape"):
        a.with_level(0, global_code=torch.zeros(3, 7))
    with pytest.raises(ValueError, match="part must be"):
        a.replace_level(0, a, "middle")
