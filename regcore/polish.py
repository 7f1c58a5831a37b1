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
coarse levels, the same pyramid from a zero field (cheap: the coarse levels are small), and at the
:data:`FUSE_LEVEL` level takes, pixel by pixel, the hypothesis whose warped source fits the target
better over the surrounding window (:func:`fuse`); the finer levels then refine that one field.

:func:`regcore.register` runs it after the network for ``"net"`` and ``"net+patches"``; what it gains is in the
benchmark's ``net`` and ``net-raw`` rows (``benchmarks/results/results.md``), and what each part
gains on the tuning pairs in ``benchmarks/results/tuning/ablations.md``.

The steps run as compiled loops (:mod:`regcore.kernels`, numba), one pair at a time; the
pyramid's resampling between levels too (:func:`regcore.kernels.pool`, :func:`regcore.kernels.resample_field`:
:func:`downsample` and :func:`resample_flow` are their PyTorch equivalents, for the other callers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels

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
#: The wide neighbourhood is averaged on a grid this many times coarser than the level (5 × 5 cells:
#: 15 px). 3 rather than 4 on the tuning pairs, with the default path's other stages as they are now:
#: smooth motion 0.132 -> 0.118 px at 128², large motion 0.112 -> 0.108, sigmoid contrast 0.119 ->
#: 0.115; noise (σ 0.05) 1.79 -> 1.85.
SPREAD_FACTOR = 3


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
    parts = kernels.arrays(image)
    out = [np.empty_like(part) for part in parts]
    for part, normalised in zip(parts, out, strict=True):
        kernels.local_normalise(part, win, eps, normalised)
    return kernels.tensor(out, image)


class _Reference(NamedTuple):
    """The target's side of every step at one level, for one pair: its normalised image and that image's gradients ``(h, w)``."""

    image: np.ndarray
    dy: np.ndarray
    dx: np.ndarray


def _reference(target: np.ndarray, norm_win: int) -> _Reference:
    image, dy, dx = (np.empty_like(target) for _ in range(3))
    kernels.local_normalise(target, norm_win, NORM_EPS, image)
    kernels.gradients(image, dy, dx)
    return _Reference(image, dy, dx)


@kernels.compiled
def _step(source, image, ref_dy, ref_dx, flow, win, norm_win, ridge, smooth, spread):
    """One Lucas–Kanade step for one pair (see :func:`lucas_kanade_step`); arrays ``(h, w)``, ``flow`` ``(2, h, w)``."""
    h, w = source.shape
    warped, normalised = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    kernels.warp(source, flow, warped)
    kernels.local_normalise(warped, norm_win, NORM_EPS, normalised)
    wy, wx = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    kernels.gradients(normalised, wy, wx)
    # Per pixel gx², gx·gy, gy², gx·r, gy·r with the gradients of both images averaged (ESM), then their window sums a, b, c, p, q.
    products = np.empty((5, h, w), np.float32)
    half = np.float32(0.5)
    for y in range(h):
        for x in range(w):
            gy, gx = half * (wy[y, x] + ref_dy[y, x]), half * (wx[y, x] + ref_dx[y, x])
            r = image[y, x] - normalised[y, x]
            products[0, y, x], products[1, y, x], products[2, y, x] = gx * gx, gx * gy, gy * gy
            products[3, y, x], products[4, y, x] = gx * r, gy * r
    sums = np.empty((5, h, w), np.float32)
    for c in range(5):
        kernels.box_mean(products[c], win, sums[c])
    # The floor keeps a pair of flat images (no gradient anywhere) at a zero update instead of 0 / 0.
    damping = np.float32(ridge * (sums[0].sum() + sums[2].sum()) / (h * w) / 2 + 1e-6)
    out = flow.copy()
    # The 2x2 normal equations [[a, b], [b, c]] (dx, dy) = (p, q) in closed form: (dy, dx) = (aq - bp, cp - bq) / det.
    # Smoothed, each window's answer is weighted by its confidence det / trace (about the smaller
    # eigenvalue: how well the window pins the motion down), so update × confidence = (aq - bp, cp - bq) / trace.
    weighted = np.empty((3, h, w), np.float32)
    for y in range(h):
        for x in range(w):
            a, b, c = sums[0, y, x] + damping, sums[1, y, x], sums[2, y, x] + damping
            p, q = sums[3, y, x], sums[4, y, x]
            det = a * c - b * b
            if smooth:
                trace = a + c
                weighted[0, y, x], weighted[1, y, x], weighted[2, y, x] = (a * q - b * p) / trace, (c * p - b * q) / trace, det / trace
            else:
                out[0, y, x] += (a * q - b * p) / det
                out[1, y, x] += (c * p - b * q) / det
    if not smooth:
        return out
    # Each pixel's update: the windows' answers around it averaged by confidence, over win × win
    # neighbours plus, weighted by spread, a wide neighbourhood (5 × 5 cells of SPREAD_FACTOR px).
    total = np.empty((3, h, w), np.float32)
    for c in range(3):
        kernels.box_mean(weighted[c], win, total[c])
    if spread > 0:
        pooled = kernels.pool(weighted, SPREAD_FACTOR)
        wide = np.empty_like(pooled)
        for c in range(3):
            kernels.box_mean(pooled[c], 5, wide[c])
        kernels.upsample_add(wide, spread, total)
    for y in range(h):
        for x in range(w):
            out[0, y, x] += total[0, y, x] / total[2, y, x]
            out[1, y, x] += total[1, y, x] / total[2, y, x]
    return out


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
    fields = []
    for src, tgt, field in zip(kernels.arrays(source), kernels.arrays(target), kernels.arrays(flow), strict=True):
        fields.append(_step(src, *_reference(tgt, norm_win), field, win, norm_win, ridge, smooth, spread))
    return kernels.tensor(fields, flow)


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
    candidates = [kernels.arrays(flow) for flow in flows]
    fused = []
    for i, (src, tgt) in enumerate(zip(kernels.arrays(source), kernels.arrays(target), strict=True)):
        fused.append(_fuse(src, _reference(tgt, norm_win), [c[i] for c in candidates], win, norm_win, margin, soften))
    return kernels.tensor(fused, flows[0])


@kernels.compiled
def _misfit(source, image, flow, win, norm_win):
    """``(h, w)``: mean absolute difference of the normalised warped source and the target's normalised ``image`` over ``win × win``."""
    h, w = source.shape
    warped, normalised, out = np.empty((h, w), np.float32), np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    kernels.warp(source, flow, warped)
    kernels.local_normalise(warped, norm_win, NORM_EPS, normalised)
    kernels.box_mean(np.abs(normalised - image), win, out)
    return out


def _fuse(
    source: np.ndarray, reference: _Reference, flows: Sequence[np.ndarray], win: int, norm_win: int, margin: float, soften: int = 1
) -> np.ndarray:
    """:func:`fuse` for one pair: ``source`` ``(h, w)``, ``flows`` ``(2, h, w)`` each."""
    best, fit = flows[0], _misfit(source, reference.image, flows[0], win, norm_win)
    for flow in flows[1:]:
        misfit = (1 + margin) * _misfit(source, reference.image, flow, win, norm_win)
        better = misfit < fit
        fit = np.where(better, misfit, fit)
        if soften > 1:
            # Softened, the choice is a weight: 1 inside a region the candidate wins, falling to 0 across its edge.
            weight = np.empty_like(fit)
            kernels.box_mean(better.astype(np.float32), soften, weight)
            best = best + weight * (flow - best)
        else:
            best = np.where(better, flow, best)
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
        ``(N, 2, H, W)`` field in pixels at the images' size, on ``source``'s device.
    """
    source, target = source.detach().cpu().float(), target.detach().cpu().float()
    starts = [None] * len(source) if flow is None else list(flow.detach().cpu().float().split(1))
    fields = [
        _polish_pair(source[i : i + 1], target[i : i + 1], start, schedule, win, norm_win, ridge, spread, fuse_level)
        for i, start in enumerate(starts)
    ]
    return torch.cat(fields).to(flow.device if flow is not None else source.device)


def _polish_pair(
    source: Tensor,
    target: Tensor,
    flow: Tensor | None,
    schedule: Sequence[Level | tuple[int, int]],
    win: int,
    norm_win: int,
    ridge: float,
    spread: float,
    fuse_level: int | None,
) -> Tensor:
    """:func:`polish` for one pair: ``(1, 1, H, W)`` CPU images, ``flow`` ``(1, 2, h, w)`` or None -> ``(1, 2, H, W)``."""
    size = tuple(source.shape[-2:])
    # Until it is fused, the zero-start hypothesis is carried as a second field (fields[1]).
    pending = flow is not None and fuse_level is not None
    fields = None if flow is None else [kernels.arrays(flow)[0]]
    if pending:
        fields.append(np.zeros_like(fields[0]))
    full = kernels.arrays(source)[0], kernels.arrays(target)[0]
    for factor, steps in schedule:
        # downsample() and resample_flow() as compiled loops: in PyTorch they took about 7 ms of a 256² pair's 40 (profiled).
        image, tgt = (kernels.pooled(array, factor) for array in full)
        level = image.shape
        if min(level) < min(MIN_LEVEL, min(size)) or steps == 0:
            continue
        fields = [np.zeros((2, *level), np.float32)] if fields is None else [kernels.resample_field(field, level) for field in fields]
        reference = _reference(tgt, norm_win)
        for _ in range(steps):
            fields = [_step(image, *reference, field, win, norm_win, ridge, True, spread) for field in fields]
        if pending and factor <= fuse_level:
            fields, pending = [_fuse(image, reference, fields, win, norm_win, FUSE_MARGIN)], False
    if fields is None:
        return _zeros(source, size)
    return kernels.tensor([kernels.resample_field(fields[0], size)], source)


def _zeros(source: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.zeros((source.shape[0], 2, *size), device=source.device, dtype=source.dtype)
