"""Differentiable sRGB <-> CIELab conversion (D65 white, 2-degree observer).

Colourization predicts the chroma (a, b) of an image whose lightness L is given, so the
RGB image has to be rebuilt from L + ab inside the perceptual loss. The conversion must
therefore be differentiable and must not produce NaN gradients at black, white or out of
gamut colours: every fractional power below is taken of a value clamped away from zero
(the other branch of `torch.where` still gets a zero-times-gradient, and 0 * inf = NaN).

Constants follow scikit-image's `rgb2lab` / `lab2rgb`, so the two agree to float
precision and tests can compare against them.

RGB is in [0, 1]; Lab has L in [0, 100] and a, b roughly in [-110, 110] (unscaled).
Tensors are (B, 3, H, W) with channels on dim 1.
"""

from __future__ import annotations

import torch

# sRGB primaries to CIE XYZ (the matrix scikit-image uses).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# Its inverse, computed once in double precision.
_RGB_FROM_XYZ = tuple(
    tuple(row)
    for row in torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).tolist())
# D65 reference white, 2-degree observer.
_WHITE_D65 = (0.95047, 1.0, 1.08883)

# sRGB companding: linear segment below these thresholds, a 2.4 power above.
_SRGB_DECODE_KNEE = 0.04045
_SRGB_ENCODE_KNEE = 0.0031308
# CIELab's f(t): cube root above (6/29)^3, a line below (scikit-image's rounded values).
_LAB_EPSILON = 0.008856
_LAB_KAPPA = 7.787
_LAB_F_KNEE = 0.2068966  # 6/29, where the inverse switches from cube to line


def _check_three_channels(images: torch.Tensor, what: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected {what} of shape (B, 3, H, W), got {tuple(images.shape)}")


def _apply_matrix(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Multiply every pixel's channel vector by `matrix` (3, 3): (B, 3, H, W) -> (B, 3, H, W)."""
    return torch.einsum("ij,bjhw->bihw", matrix, images)


def _constant(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo sRGB gamma companding: [0, 1] sRGB -> linear light."""
    power = ((rgb.clamp(min=_SRGB_DECODE_KNEE) + 0.055) / 1.055) ** 2.4
    return torch.where(rgb > _SRGB_DECODE_KNEE, power, rgb / 12.92)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Apply sRGB gamma companding: linear light -> sRGB (not clipped)."""
    power = 1.055 * linear.clamp(min=_SRGB_ENCODE_KNEE) ** (1 / 2.4) - 0.055
    return torch.where(linear > _SRGB_ENCODE_KNEE, power, linear * 12.92)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert sRGB images in [0, 1] to CIELab.

    Args:
        rgb: (B, 3, H, W) sRGB in [0, 1].

    Returns:
        (B, 3, H, W) with L in [0, 100] and a, b unscaled.
    """
    _check_three_channels(rgb, "RGB images")
    xyz = _apply_matrix(_constant(_XYZ_FROM_RGB, rgb), srgb_to_linear(rgb))
    xyz = xyz / _constant(_WHITE_D65, rgb).view(1, 3, 1, 1)
    cube_root = xyz.clamp(min=_LAB_EPSILON) ** (1 / 3)
    f = torch.where(xyz > _LAB_EPSILON, cube_root, _LAB_KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(dim=1)
    lightness = 116 * fy - 16
    a = 500 * (fx - fy)
    b = 200 * (fy - fz)
    return torch.stack([lightness, a, b], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Convert CIELab images to sRGB in [0, 1], clipping colours outside the sRGB gamut.

    Out-of-gamut colours are clipped in linear light (as scikit-image clips its result);
    their gradient in the clipped channel is zero, which is the honest answer: the
    displayed image does not change there.

    Args:
        lab: (B, 3, H, W) with L in [0, 100] and a, b unscaled.

    Returns:
        (B, 3, H, W) sRGB in [0, 1].
    """
    _check_three_channels(lab, "Lab images")
    lightness, a, b = lab.unbind(dim=1)
    fy = (lightness + 16) / 116
    fx = a / 500 + fy
    # Negative fz has no XYZ meaning (scikit-image clips it to zero too).
    fz = (fy - b / 200).clamp(min=0)
    f = torch.stack([fx, fy, fz], dim=1)
    xyz = torch.where(f > _LAB_F_KNEE, f**3, (f - 16 / 116) / _LAB_KAPPA)
    xyz = xyz * _constant(_WHITE_D65, lab).view(1, 3, 1, 1)
    linear = _apply_matrix(_constant(_RGB_FROM_XYZ, lab), xyz).clamp(0, 1)
    return linear_to_srgb(linear).clamp(0, 1)


def _lab_to_linear_unclipped(lab: torch.Tensor) -> torch.Tensor:
    """`lab_to_rgb`'s linear RGB before any clipping (its fz clamp is left out as well).

    For a colour inside the sRGB gamut every value equals `lab_to_rgb`'s, bit for bit: fz is
    then non-negative and its clamp does nothing.
    """
    lightness, a, b = lab.unbind(dim=1)
    fy = (lightness + 16) / 116
    fx = a / 500 + fy
    fz = fy - b / 200
    f = torch.stack([fx, fy, fz], dim=1)
    xyz = torch.where(f > _LAB_F_KNEE, f**3, (f - 16 / 116) / _LAB_KAPPA)
    xyz = xyz * _constant(_WHITE_D65, lab).view(1, 3, 1, 1)
    return _apply_matrix(_constant(_RGB_FROM_XYZ, lab), xyz)


def _in_gamut(linear: torch.Tensor) -> torch.Tensor:
    """(B, H, W) whether each linear RGB colour lies in [0, 1]."""
    return ((linear >= 0) & (linear <= 1)).all(dim=1)


def lab_to_rgb_keep_lightness(lab: torch.Tensor, steps: int = 16) -> torch.Tensor:
    """Convert CIELab to sRGB in [0, 1], bringing out-of-gamut colours in at their own lightness.

    `lab_to_rgb` clips out-of-gamut colours in linear light, which changes their lightness
    (a too-saturated blue comes back darker). Here such a colour keeps its L and hue and
    loses chroma instead: ab is scaled by the largest factor in [0, 1] for which it is
    displayable, found by bisection (`steps` halvings: 16 leave at most 110 / 2^16 of
    chroma on the table). The grey of the same L always fits, so every colour gets one.
    Colours already inside the gamut come out exactly as `lab_to_rgb` gives them. Not
    differentiable (for results, not for losses).

    The bisection keeps the largest scale found strictly inside, so nothing is clipped but
    the float rounding of greys at the ends (L = 100 lands a hair above 1).

    Args:
        lab: (B, 3, H, W) with L in [0, 100] and a, b unscaled.

    Returns:
        (B, 3, H, W) sRGB in [0, 1].
    """
    _check_three_channels(lab, "Lab images")
    linear = _lab_to_linear_unclipped(lab)
    outside = ~_in_gamut(linear)  # (B, H, W)
    if outside.any():
        pixels = lab.permute(0, 2, 3, 1)[outside]  # (N, 3) the colours to bring in
        to_linear = _pixel_lab_to_linear(pixels)
        low = pixels.new_zeros(pixels.shape[0], 1)  # a chroma scale known to fit (grey)
        high = pixels.new_ones(pixels.shape[0], 1)  # one known not to
        for _ in range(steps):
            middle = (low + high) / 2
            fits = to_linear(middle)
            fits = ((fits >= 0) & (fits <= 1)).all(dim=1, keepdim=True)  # (N, 1)
            low = torch.where(fits, middle, low)
            high = torch.where(fits, high, middle)
        linear = linear.permute(0, 2, 3, 1).clone()  # (B, H, W, 3)
        linear[outside] = to_linear(low)
        linear = linear.permute(0, 3, 1, 2)
    return linear_to_srgb(linear.clamp(0, 1)).clamp(0, 1)


def _pixel_lab_to_linear(pixels: torch.Tensor):
    """For (N, 3) Lab colours, the function scale (N, 1) -> (N, 3) linear RGB of (L, scale * ab)."""
    fy = (pixels[:, :1] + 16) / 116
    steps = pixels[:, 1:] * pixels.new_tensor([1 / 500, -1 / 200])  # (N, 2): fx - fy, fz - fy per unit scale
    white = pixels.new_tensor(_WHITE_D65)
    matrix = pixels.new_tensor(_RGB_FROM_XYZ).T * white[:, None]  # (3, 3): XYZ / white -> linear RGB

    def to_linear(scale: torch.Tensor) -> torch.Tensor:
        f = torch.cat([fy + steps[:, :1] * scale, fy, fy + steps[:, 1:] * scale], 1)  # (N, 3): fx, fy, fz
        xyz = torch.where(f > _LAB_F_KNEE, f**3, (f - 16 / 116) / _LAB_KAPPA)
        return xyz @ matrix

    return to_linear
