"""Noise in the images, and what the per-pair optimisation does about it.

Bilinear resampling averages neighbouring pixels by an amount that depends on the sub-pixel
shift, so warping a noisy source removes more of its noise at half-pixel shifts than at whole ones.
A similarity such as local NCC rewards that, and the optimisation drifts towards the shifts that
smooth the noise best ("interpolation bias"), and on noisy photographs ``net+refine`` ended up
worse than the network alone. Comparing slightly smoothed images with a wider NCC window removes
most of that bias, but costs accuracy on clean images, so :func:`regcore.register` does it only
when :func:`noise_std` finds noise (the benchmark's ``photo128-noise`` set,
``benchmarks/results/results.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .filters import gaussian_blur

__all__ = ["NOISY_ABOVE", "SMOOTH_SIGMA", "SMOOTH_WIN", "noise_std", "smooth_image"]

#: Estimated noise std (intensity units, images in [0, 1]) above which images count as noisy:
#: well above what clean photographs estimate at, and within the range that noise of std 0.01
#: (the level from which smoothing helped on tuning pairs) estimates at.
NOISY_ABOVE = 0.008
#: Gaussian std (pixels) of the smoothing applied to noisy images before optimisation.
SMOOTH_SIGMA = 1.0
#: Local NCC window (pixels) used with smoothed images: more pixels average out more noise.
SMOOTH_WIN = 15

# Immerkær's Laplacian-difference mask: zero response to any linear intensity ramp; its output on
# white noise of std s has std 6 s.
_MASK = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None, None]
_MAD_TO_STD = 6 * 0.6745  # median |N(0, (6 s)^2)| = 0.6745 * 6 s


def _mask_std(image: Tensor) -> float:
    """Robust (median) std of the mask response of ``(1, 1, H, W)``, in units of white-noise std."""
    if min(image.shape[-2:]) < 3:
        return 0.0
    return float(F.conv2d(image.float(), _MASK.to(image.device)).abs().median()) / _MAD_TO_STD


def noise_std(image: Tensor) -> float:
    """Estimated std of white noise in ``image`` ``(1, 1, H, W)`` in [0, 1] (0 for a clean image).

    A one-scale estimate cannot tell fine texture (grass, gravel) from noise. Texture of natural
    images has about the same mask response at half resolution, white noise half of it (averaging
    2×2 pixels halves its std); so with ``a`` and ``b`` the responses at full and half resolution,
    ``a² = n² + t²`` and ``b² = n²/4 + t²`` give ``n² = 4/3 (a² - b²)``.
    """
    a, b = _mask_std(image), _mask_std(F.avg_pool2d(image.float(), 2))
    return math.sqrt(max(a * a - b * b, 0.0) * 4.0 / 3.0)


def smooth_image(image: Tensor, sigma: float = SMOOTH_SIGMA) -> Tensor:
    """``(1, 1, H, W)`` blurred by a Gaussian of std ``sigma`` pixels (borders replicated)."""
    return gaussian_blur(image, torch.tensor([float(sigma)], device=image.device))
