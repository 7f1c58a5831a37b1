"""Low-level differentiable image filters (PyTorch) for losses, data generation and pre-smoothing.

Both act on ``(N, C, H, W)`` float tensors and keep their shape; both are differentiable.

- :func:`box_mean`: the mean over a square window around each pixel (local NCC in
  :mod:`regcore.losses`; :func:`regcore.kernels.box_mean` is the same mean compiled for one pair's
  arrays, for the per-pair refinement of :mod:`regcore.polish`).
- :func:`gaussian_blur`: a separable Gaussian blur with one std per image (the training images of
  :mod:`regcore.data`, the pre-smoothing of noisy pairs in :mod:`regcore.noise`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["box_mean", "gaussian_blur"]


@functools.lru_cache(maxsize=64)
def _window_counts(n: int, win: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """How many of ``n`` positions along an axis each ``win``-wide window covers (fewer at the ends)."""
    # A normal tensor even when first asked for in inference mode: cached, it may later meet autograd.
    with torch.inference_mode(False):
        i = torch.arange(n, device=device)
        return ((i + win // 2).clamp(max=n - 1) - (i - win // 2).clamp(min=0) + 1).to(dtype)


def box_mean(x: Tensor, win: int) -> Tensor:
    """Mean over the ``win × win`` window around each pixel of ``(N, C, H, W)``; windows cropped at the border.

    One axis at a time, each window's ``win`` values summed from a strided view of the zero-padded
    input (``unfold``): the same numbers as ``avg_pool2d(..., count_include_pad=False)`` at a
    fraction of its cost on CPU (``benchmarks/results/speedups.md``). A border window's mean is
    over the ``rows × cols`` pixels it covers.
    """
    p = win // 2
    h, w = x.shape[-2:]
    rows = F.pad(x, (p, p)).unfold(-1, win, 1).sum(-1)
    sums = F.pad(rows, (0, 0, p, p)).unfold(-2, win, 1).sum(-1)
    return sums * _inverse_counts(h, w, win, x.device, x.dtype)


@functools.lru_cache(maxsize=64)
def _inverse_counts(h: int, w: int, win: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``1 / (pixels covered)`` of each ``win × win`` window of an ``h × w`` image: ``(H, W)``."""
    with torch.inference_mode(False):
        return 1.0 / (_window_counts(h, win, device, dtype)[:, None] * _window_counts(w, win, device, dtype))


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image of ``(n, 1, H, W)`` with its own Gaussian ``sigma`` (pixels, shape ``(n,)``); borders replicated."""
    radius = math.ceil(3 * float(sigma.max())) if len(sigma) else 0
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t[None] / sigma.to(x.device).clamp_min(1e-3)[:, None]) ** 2)
    k = (k / k.sum(dim=1, keepdim=True))[:, None, None, :]  # (n, 1, 1, K)
    n = x.shape[0]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate").transpose(0, 1)  # (1, n, H, W)
    x = F.conv2d(x, k, groups=n)
    x = F.conv2d(x, k.transpose(-1, -2), groups=n)
    return x.transpose(0, 1)
