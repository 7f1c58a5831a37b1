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

A start is a guess, and a smooth network can guess wrong where the motion is not smooth (an object
moving over a background) or is ambiguous (a periodic texture moved by more than its period), and
Lucas–Kanade only refines locally. So :func:`polish` carries a second hypothesis through the
coarse levels, the same pyramid from a zero field (in the same batch, so nearly free), and at the
:data:`FUSE_LEVEL` level takes, pixel by pixel, the hypothesis whose warped source fits the target
better over the surrounding window (:func:`fuse`); the finer levels then refine that one field.

:func:`regcore.register` runs it after the network for ``method="net"``; what it gains is in the
benchmark's ``net`` and ``net-raw`` rows (``benchmarks/results/results.md``), and what each part
gains on the tuning pairs in ``benchmarks/results/tuning/ablations.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .filters import box_mean, gradients
from .warp import warp

__all__ = [
    "FUSE_LEVEL",
    "FUSE_MARGIN",
    "LK_WIN",
    "MIN_LEVEL",
    "NORM_WIN",
    "RIDGE",
    "SCHEDULE",
    "SPREAD",
    "Level",
    "downsample",
    "fuse",
    "local_normalise",
    "lucas_kanade_step",
    "polish",
    "resample_flow",
]

#: Side (pixels) of the least-squares window of the Lucas–Kanade step.
LK_WIN = 7
#: Side (pixels) of the window over which each image is normalised to zero mean and unit std. Small,
#: so that a non-linear change of contrast (gamma, sigmoid) is nearly affine inside it: 5 px rather
#: than 7 cut the error on the tuning pairs by 4-20% (sigmoid contrast 0.187 -> 0.148 px at 128²).
NORM_WIN = 5
#: ``eps`` of :func:`local_normalise` (intensity², images in [0, 1]): the variance below which a
#: window's contrast is no longer stretched to unit std (faint texture still counts; noise in
#: truly flat windows stays small).
NORM_EPS = 1e-5
#: Ridge weight, relative to the image's mean squared gradient: how much texture a window needs
#: before it moves.
RIDGE = 0.01
#: Weight of the wide neighbourhood in the averaging of the windows' answers (0: the ``win × win``
#: neighbours only).
SPREAD = 1.0
#: The wide neighbourhood is averaged on a grid this many times coarser than the level.
SPREAD_FACTOR = 4


class Level(NamedTuple):
    """One level of :func:`polish`'s pyramid: ``steps`` Lucas–Kanade steps on the images averaged over ``factor × factor`` blocks."""

    factor: int
    steps: int


#: :func:`polish`'s default pyramid, coarse to fine: down to 16 px blocks, so that a motion of 15% of
#: the side is a couple of pixels on the coarsest level; levels under :data:`MIN_LEVEL` are skipped.
#: Most steps at full resolution, where they buy the most (6 there and 3 on the 8-2 px levels, rather
#: than 4 everywhere: 4-12% lower error on the smooth and contrast tuning pairs for 1 ms at 128²).
SCHEDULE: tuple[Level, ...] = (Level(16, 4), Level(8, 3), Level(4, 3), Level(2, 3), Level(1, 6))
#: Levels whose shorter side is under this (px) are skipped: too little image is left to say
#: anything (a periodic texture such as brick aliases there), and the network has already given
#: the coarse motion.
MIN_LEVEL = 16
#: Block size of the level where the zero-start hypothesis is fused with the start's (the first level
#: run at or below it). At 4 px blocks both hypotheses are settled and a wrong one still costs little
#: to replace; fusing at full resolution instead gained a little on layered motion but folded more
#: and took up to 1.5x as long (``benchmarks/results/tuning/ablations.md``).
FUSE_LEVEL = 4
#: How much better (relative window misfit) the zero-start hypothesis must fit to replace the start's,
#: so that where both fit alike the start's smooth field is kept and no seams are made.
FUSE_MARGIN = 0.25


def local_normalise(image: Tensor, win: int = NORM_WIN, eps: float = NORM_EPS) -> Tensor:
    """``(N, 1, H, W)`` -> the same with zero mean and unit std over each ``win × win`` window.

    ``eps`` (intensity², images in [0, 1]) bounds the gain in flat windows, so noise there stays small.
    """
    mean, mean_sq = box_mean(torch.cat((image, image * image), dim=1), win).split(1, dim=1)
    return (image - mean) * (mean_sq - mean * mean).clamp_min(0.0).add(eps).rsqrt()


class _Reference(NamedTuple):
    """The target's side of every step at one level: its normalised image and that image's gradients."""

    image: Tensor
    dy: Tensor
    dx: Tensor


def _reference(target: Tensor, norm_win: int) -> _Reference:
    image = local_normalise(target, norm_win)
    return _Reference(image, *gradients(image))


def _average(weighted: Tensor, win: int, spread: float) -> Tensor:
    """``weighted`` ``(N, 3, H, W)`` = (update · confidence, confidence) of every window -> each pixel's
    update ``(N, 2, H, W)``: the windows' answers around it averaged by confidence, over ``win × win``
    neighbours plus, weighted by ``spread``, a wide neighbourhood."""
    total = box_mean(weighted, win)
    if spread > 0:
        coarse = box_mean(F.avg_pool2d(weighted, SPREAD_FACTOR, ceil_mode=True), 5)
        total = total + spread * F.interpolate(coarse, size=tuple(weighted.shape[-2:]), mode="bilinear", align_corners=False)
    return total[:, :2] / total[:, 2:]


def _step(
    source: Tensor, reference: _Reference, flow: Tensor, win: int, norm_win: int, ridge: float, smooth: bool, spread: float
) -> Tensor:
    warped = local_normalise(warp(source, flow), norm_win)
    wy, wx = gradients(warped)
    gy, gx = 0.5 * (wy + reference.dy), 0.5 * (wx + reference.dx)
    residual = reference.image - warped
    g = torch.cat((gx, gy), dim=1)
    # Per window: a = Σgx², b = Σgx·gy, c = Σgy², p = Σgx·r, q = Σgy·r.
    a, b, c, p, q = box_mean(torch.cat((gx * g, gy * gy, g * residual), dim=1), win).split(1, dim=1)
    # The floor keeps a pair of flat images (no gradient anywhere) at a zero update instead of 0 / 0.
    damping = ridge * (a + c).mean(dim=(-3, -2, -1), keepdim=True) / 2 + 1e-6
    a, c = a + damping, c + damping
    det = a * c - b * b
    # The 2x2 normal equations [[a, b], [b, c]] (dx, dy) = (p, q) in closed form: (dy, dx) = (aq - bp, cp - bq) / det.
    if not smooth:
        return flow + torch.cat((a * q - b * p, c * p - b * q), dim=1) / det
    # Confidence det / trace is about the smaller eigenvalue: how well the window pins the motion
    # down; update × confidence = (aq - bp, cp - bq) / trace.
    trace = a + c
    return flow + _average(torch.cat((a * q - b * p, c * p - b * q, det), dim=1) / trace, win, spread)


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


def fuse(
    source: Tensor,
    target: Tensor,
    flows: Sequence[Tensor],
    win: int = LK_WIN,
    norm_win: int = NORM_WIN,
    margin: float = FUSE_MARGIN,
    soften: int = 1,
) -> Tensor:
    """Per pixel, the field of ``flows`` whose warped source best fits the target around it.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        flows: candidate ``(N, 2, H, W)`` fields in pixels, the preferred one first.
        win: side (pixels) of the window over which the misfit (mean absolute difference of the
            locally normalised images, so a change of contrast is not a misfit) is measured.
        norm_win: local normalisation window side in pixels.
        margin: a later candidate is taken where it fits ``1 + margin`` times better than the first
            (and better than the other later ones).
        soften: side (pixels) of the box over which each choice is averaged before it is applied, so
            that the field goes from one candidate to the other over a few pixels (1: a hard choice).

    Returns:
        ``(N, 2, H, W)``: each pixel's vector from the candidate that fits best there.
    """
    return _fuse(source, _reference(target, norm_win), flows, win, norm_win, margin, soften)


def _misfit(source: Tensor, reference: _Reference, flow: Tensor, win: int, norm_win: int) -> Tensor:
    """``(N, 1, H, W)``: mean absolute difference of the normalised warped source and target over ``win × win``."""
    return box_mean((local_normalise(warp(source, flow), norm_win) - reference.image).abs(), win)


def _fuse(
    source: Tensor, reference: _Reference, flows: Sequence[Tensor], win: int, norm_win: int, margin: float, soften: int = 1
) -> Tensor:
    # A running minimum rather than an argmin over the stacked misfits: argmin across a few channels is slow on CPU.
    best, fit = flows[0], _misfit(source, reference, flows[0], win, norm_win)
    for flow in flows[1:]:
        misfit = (1 + margin) * _misfit(source, reference, flow, win, norm_win)
        better = misfit < fit
        fit = torch.where(better, misfit, fit)
        # Softened, the choice is a weight: 1 inside a region the candidate wins, falling to 0 across its edge.
        best = best + box_mean(better.to(best.dtype), soften) * (flow - best) if soften > 1 else torch.where(better, flow, best)
    return best


def polish(
    source: Tensor,
    target: Tensor,
    flow: Tensor | None,
    schedule: Sequence[Level | tuple[int, int]] = SCHEDULE,
    win: int = LK_WIN,
    norm_win: int = NORM_WIN,
    ridge: float = RIDGE,
    spread: float = SPREAD,
    fuse_level: int | None = FUSE_LEVEL,
) -> Tensor:
    """Refine ``flow`` by Lucas–Kanade steps over an image pyramid, coarse to fine.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        flow: ``(N, 2, H, W)`` starting field in pixels, or None to start from zero. (A field of
            another size is taken as one on a block-averaged level of the images, and resampled
            to each level.)
        schedule: the pyramid's :class:`Level` s, coarse to fine (``(factor, steps)``): ``steps``
            Lucas–Kanade steps on the images averaged over ``factor × factor`` blocks. Levels
            whose shorter side is under ``MIN_LEVEL`` pixels are skipped.
        win, norm_win, ridge, spread: as in :func:`lucas_kanade_step`.
        fuse_level: block size of the level at which a second hypothesis, the pyramid from a zero
            field, is fused with ``flow``'s (:func:`fuse`; see the module docstring); None: ``flow``'s
            only. Nothing to fuse when ``flow`` is None.

    Returns:
        ``(N, 2, H, W)`` field in pixels at the images' size.
    """
    size = tuple(source.shape[-2:])
    n = source.shape[0]
    # Until it is fused, the zero-start hypothesis rides in the same batch as the start's (flow[n:]):
    # one step for both costs little more than one on the small coarse levels.
    pending = flow is not None and fuse_level is not None
    for factor, steps in schedule:
        src, tgt = downsample(source, factor), downsample(target, factor)
        level = tuple(src.shape[-2:])
        if min(level) < min(MIN_LEVEL, min(size)) or steps == 0:
            continue
        flow = _zeros(source, level) if flow is None else resample_flow(flow, level)
        reference = _reference(tgt, norm_win)
        if pending:
            flow = torch.cat((flow, torch.zeros_like(flow))) if len(flow) == n else flow
            src, reference = src.repeat(2, 1, 1, 1), _Reference(*(part.repeat(2, 1, 1, 1) for part in reference))
        for _ in range(steps):
            flow = _step(src, reference, flow, win, norm_win, ridge, True, spread)
        if pending and factor <= fuse_level:
            flow = _fuse(src[:n], _Reference(*(part[:n] for part in reference)), flow.split(n), win, norm_win, FUSE_MARGIN)
            pending = False
    if flow is None:
        return _zeros(source, size)
    return resample_flow(flow[:n], size)


def _zeros(source: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.zeros((source.shape[0], 2, *size), device=source.device, dtype=source.dtype)
