"""A Lucas–Kanade step that polishes the network's field, in about a millisecond per 128² pair.

The network's field is smooth and already close (within a pixel on photographs), but it
is least precise where the images are most textured, which is exactly where a linearised, local
least-squares update (Lucas & Kanade, 1981) is most reliable. :func:`lucas_kanade_step` solves, in
every ``win × win`` window, for the small displacement ``d`` that best explains the residual
``target - warp(source, flow) ≈ g · d``, with ``g`` the mean of both images' gradients (symmetric,
as in ESM), and adds it to the field. The images are locally normalised first
(:func:`local_normalise`), so a change of brightness or contrast (gamma, bias field) is not taken
for motion. A ridge term keeps flat windows, where nothing can be measured, from moving.

Each window's answer is then averaged with its neighbours', weighted by how well determined it is,
so that windows with little texture borrow from textured ones instead of answering with noise.

:func:`regcore.register` runs it after the network for ``method="net"`` (two steps after a
half-resolution network from ``regcore.pipeline.HALF_NET_FROM`` px on); what it gains is in the
benchmark's ``net`` and ``net-raw`` rows (``benchmarks/results/results.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .filters import box_mean
from .warp import warp

__all__ = ["LK_WIN", "NORM_WIN", "RIDGE", "local_normalise", "lucas_kanade_step"]

#: Side (pixels) of the least-squares window of the Lucas–Kanade step.
LK_WIN = 7
#: Side (pixels) of the window over which each image is normalised to zero mean and unit std.
NORM_WIN = 11
#: Ridge weight, relative to the image's mean squared gradient: how much texture a window needs
#: before it moves.
RIDGE = 0.01


def local_normalise(image: Tensor, win: int = NORM_WIN, eps: float = 1e-4) -> Tensor:
    """``(N, 1, H, W)`` -> the same with zero mean and unit std over each ``win × win`` window.

    ``eps`` (intensity², images in [0, 1]) bounds the gain in flat windows, so noise there stays small.
    """
    mean, mean_sq = box_mean(torch.cat((image, image * image), dim=1), win).split(1, dim=1)
    return (image - mean) / (mean_sq - mean * mean).clamp_min(0.0).add(eps).sqrt()


def _gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences of ``(N, 1, H, W)`` along rows and columns (edges replicated, so half the one-sided difference at the border)."""
    p = F.pad(image, (1, 1, 1, 1), mode="replicate")
    return 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]), 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])


def lucas_kanade_step(
    source: Tensor, target: Tensor, flow: Tensor, win: int = LK_WIN, norm_win: int = NORM_WIN, ridge: float = RIDGE, smooth: bool = True
) -> Tensor:
    """One Lucas–Kanade update of ``flow``.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        flow: ``(N, 2, H, W)`` current field in pixels (channel 0 rows, 1 columns; backward warp).
        win: least-squares window side in pixels.
        norm_win: local normalisation window side in pixels.
        ridge: ridge weight relative to the mean squared gradient of each pair.
        smooth: average each window's update over its ``win × win`` neighbours, weighted by
            confidence (False: each window's least-squares answer as it is; noisier, folds more).

    Returns:
        ``(N, 2, H, W)``: ``flow`` plus the update, in pixels.
    """
    warped, tgt = local_normalise(torch.cat((warp(source, flow), target)), norm_win).chunk(2)
    wy, wx = _gradients(warped)
    ty, tx = _gradients(tgt)
    gy, gx = 0.5 * (wy + ty), 0.5 * (wx + tx)
    residual = tgt - warped
    a, b, c, p, q = box_mean(torch.cat((gx * gx, gx * gy, gy * gy, gx * residual, gy * residual), dim=1), win).split(1, dim=1)
    # The floor keeps a pair of flat images (no gradient anywhere) at a zero update instead of 0 / 0.
    damping = ridge * (gx * gx + gy * gy).mean(dim=(-3, -2, -1), keepdim=True) + 1e-6
    a, c = a + damping, c + damping
    det = a * c - b * b
    # The 2x2 normal equations [[a, b], [b, c]] (dx, dy) = (p, q), solved in closed form.
    update = torch.cat(((a * q - b * p) / det, (c * p - b * q) / det), dim=1)
    if not smooth:
        return flow + update
    # Each window's answer, averaged over the neighbouring windows by how well each is determined
    # (det / trace, about the smaller eigenvalue): unsure windows borrow from sure ones.
    confidence = det / (a + c)
    weighted = box_mean(torch.cat((update * confidence, confidence), dim=1), win)
    return flow + weighted[:, :2] / weighted[:, 2:]
