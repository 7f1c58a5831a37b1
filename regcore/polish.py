"""Lucas–Kanade refinement of the network's field over an image pyramid (the "polish").

The network's field is close but not exact: it is least precise where the images are most
textured, exactly where a linearised, local least-squares update (Lucas & Kanade, 1981) is most
reliable, and it can miss motions larger than it was trained on. :func:`polish` refines it
coarse to fine: at each level of a pyramid (the images averaged over ``factor × factor`` blocks)
it takes a few :func:`lucas_kanade_step` s, then hands the field to the next finer level.

One step solves, in every ``win × win`` window, for the small displacement ``d`` that best
explains the residual ``target - warp(source, flow) ≈ g · d``, with ``g`` the mean of both
images' gradients (symmetric, as in ESM), and adds it to the field. Both images are locally
normalised first (:func:`local_normalise`), so a change of brightness or contrast (gamma, bias
field) is not taken for motion; the target's normalised image and gradients are computed once
per level. A ridge term keeps flat windows, where nothing can be measured, from moving.

Each window's answer is then averaged with its neighbours', weighted by how well determined it
is (normalised convolution), over two ranges: the ``win × win`` neighbours, and, with weight
``spread``, a neighbourhood ``SPREAD_FACTOR × 5`` times wider, so that a flat region far from any
texture takes the motion of the textured regions around it instead of answering with noise.

:func:`regcore.register` runs it after the network for ``method="net"``; what it gains is in the
benchmark's ``net`` and ``net-raw`` rows (``benchmarks/results/results.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .filters import box_mean
from .warp import warp

__all__ = [
    "LK_WIN",
    "NORM_WIN",
    "RIDGE",
    "SCHEDULE",
    "SPREAD",
    "downsample",
    "local_normalise",
    "lucas_kanade_step",
    "polish",
    "resample_flow",
]

#: Side (pixels) of the least-squares window of the Lucas–Kanade step.
LK_WIN = 7
#: Side (pixels) of the window over which each image is normalised to zero mean and unit std.
NORM_WIN = 11
#: Ridge weight, relative to the image's mean squared gradient: how much texture a window needs
#: before it moves.
RIDGE = 0.01
#: Weight of the wide neighbourhood in the averaging of the windows' answers (0: the ``win × win``
#: neighbours only).
SPREAD = 2.0
#: The wide neighbourhood is averaged on a grid this many times coarser than the level.
SPREAD_FACTOR = 4
#: :func:`polish`'s default pyramid: ``(factor, steps)`` from coarse to fine.
SCHEDULE: tuple[tuple[int, int], ...] = ((8, 6), (4, 6), (2, 6), (1, 6))
#: ``eps`` of :func:`local_normalise` (intensity², images in [0, 1]).
NORM_EPS = 1e-4


def local_normalise(image: Tensor, win: int = NORM_WIN, eps: float = NORM_EPS) -> Tensor:
    """``(N, 1, H, W)`` -> the same with zero mean and unit std over each ``win × win`` window.

    ``eps`` (intensity², images in [0, 1]) bounds the gain in flat windows, so noise there stays small.
    """
    mean, mean_sq = box_mean(torch.cat((image, image * image), dim=1), win).split(1, dim=1)
    return (image - mean) / (mean_sq - mean * mean).clamp_min(0.0).add(eps).sqrt()


def _gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences of ``(N, 1, H, W)`` along rows and columns (edges replicated, so half the one-sided difference at the border)."""
    p = F.pad(image, (1, 1, 1, 1), mode="replicate")
    return 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]), 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])


class _Reference(NamedTuple):
    """The target's side of every step at one level: its normalised image and that image's gradients."""

    image: Tensor
    dy: Tensor
    dx: Tensor


def _reference(target: Tensor, norm_win: int) -> _Reference:
    image = local_normalise(target, norm_win)
    return _Reference(image, *_gradients(image))


def _average(update: Tensor, confidence: Tensor, win: int, spread: float) -> Tensor:
    """Each pixel's update ``(N, 2, H, W)``: the windows' answers around it, weighted by ``confidence``
    ``(N, 1, H, W)``, over ``win × win`` neighbours plus, weighted by ``spread``, a wide neighbourhood."""
    weighted = torch.cat((update * confidence, confidence), dim=1)
    total = box_mean(weighted, win)
    if spread > 0:
        coarse = box_mean(F.avg_pool2d(weighted, SPREAD_FACTOR, ceil_mode=True), 5)
        total = total + spread * F.interpolate(coarse, size=tuple(update.shape[-2:]), mode="bilinear", align_corners=False)
    return total[:, :2] / total[:, 2:]


def _step(
    source: Tensor, reference: _Reference, flow: Tensor, win: int, norm_win: int, ridge: float, smooth: bool, spread: float
) -> Tensor:
    warped = local_normalise(warp(source, flow), norm_win)
    wy, wx = _gradients(warped)
    gy, gx = 0.5 * (wy + reference.dy), 0.5 * (wx + reference.dx)
    residual = reference.image - warped
    a, b, c, p, q = box_mean(torch.cat((gx * gx, gx * gy, gy * gy, gx * residual, gy * residual), dim=1), win).split(1, dim=1)
    # The floor keeps a pair of flat images (no gradient anywhere) at a zero update instead of 0 / 0.
    damping = ridge * (gx * gx + gy * gy).mean(dim=(-3, -2, -1), keepdim=True) + 1e-6
    a, c = a + damping, c + damping
    det = a * c - b * b
    # The 2x2 normal equations [[a, b], [b, c]] (dx, dy) = (p, q), solved in closed form.
    update = torch.cat(((a * q - b * p) / det, (c * p - b * q) / det), dim=1)
    if not smooth:
        return flow + update
    # det / trace is about the smaller eigenvalue: how well the window pins the motion down.
    return flow + _average(update, det / (a + c), win, spread)


def lucas_kanade_step(
    source: Tensor,
    target: Tensor,
    flow: Tensor,
    win: int = LK_WIN,
    norm_win: int = NORM_WIN,
    ridge: float = RIDGE,
    smooth: bool = True,
    spread: float = 0.0,
) -> Tensor:
    """One Lucas–Kanade update of ``flow``.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        flow: ``(N, 2, H, W)`` current field in pixels (channel 0 rows, 1 columns; backward warp).
        win: least-squares window side in pixels.
        norm_win: local normalisation window side in pixels.
        ridge: ridge weight relative to the mean squared gradient of each pair.
        smooth: average each window's update over its neighbours, weighted by confidence (False:
            each window's least-squares answer as it is; noisier, folds more).
        spread: weight of the wide neighbourhood in that average (see the module docstring).

    Returns:
        ``(N, 2, H, W)``: ``flow`` plus the update, in pixels.
    """
    return _step(source, _reference(target, norm_win), flow, win, norm_win, ridge, smooth, spread)


def downsample(image: Tensor, factor: int) -> Tensor:
    """``(N, C, H, W)`` averaged over ``factor × factor`` blocks: coarse pixel ``i`` is centred on fine ``factor·i + (factor-1)/2``."""
    return image if factor == 1 else F.avg_pool2d(image, factor, ceil_mode=True)


def resample_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """A field moved between pyramid levels made by :func:`downsample`: pixel centres matched as
    block averaging places them (``align_corners=False``), vectors scaled by the size ratio."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    scale = torch.tensor([size[0] / h, size[1] / w], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * scale


def polish(
    source: Tensor,
    target: Tensor,
    flow: Tensor | None,
    schedule: Sequence[tuple[int, int]] = SCHEDULE,
    win: int = LK_WIN,
    norm_win: int = NORM_WIN,
    ridge: float = RIDGE,
    spread: float = SPREAD,
) -> Tensor:
    """Refine ``flow`` by Lucas–Kanade steps over an image pyramid, coarse to fine.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        flow: ``(N, 2, H, W)`` starting field in pixels, or None to start from zero. (A field of
            another size is taken as one on a block-averaged level of the images, and resampled
            to each level.)
        schedule: ``(factor, steps)`` per level, coarse to fine: ``steps`` Lucas–Kanade steps on
            the images averaged over ``factor × factor`` blocks. Levels smaller than ``win``
            pixels are skipped.
        win, norm_win, ridge, spread: as in :func:`lucas_kanade_step`.

    Returns:
        ``(N, 2, H, W)`` field in pixels at the images' size.
    """
    size = tuple(source.shape[-2:])
    for factor, steps in schedule:
        src, tgt = downsample(source, factor), downsample(target, factor)
        level = tuple(src.shape[-2:])
        if min(level) < win or steps == 0:
            continue
        flow = torch.zeros((source.shape[0], 2, *level), device=source.device) if flow is None else resample_flow(flow, level)
        reference = _reference(tgt, norm_win)
        for _ in range(steps):
            flow = _step(src, reference, flow, win, norm_win, ridge, True, spread)
    if flow is None:
        return torch.zeros((source.shape[0], 2, *size), device=source.device)
    return resample_flow(flow, size)
