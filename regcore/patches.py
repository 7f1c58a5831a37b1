"""Patch inverse search: every small patch of the target finds its own translation, coarse to fine.

The Lucas–Kanade pyramid of :mod:`regcore.polish` averages each window's answer with its
neighbours', which is what makes it accurate on smooth motion, and what pulls an object moving on
its own towards its background. This module estimates motion the other way round, as OpenCV's
DIS optical flow does (Kroeger et al., ECCV 2016; this is regcore's own implementation, compiled
with numba because it is a loop over patches that each take a few cheap, data-dependent steps):

1. The target is cut into ``patch × patch`` patches every ``stride`` pixels. Each patch looks for
   the translation ``u`` that makes the source, sampled at the patch's pixels moved by ``u``, match
   it (both patches with their mean taken out, so a change of brightness is not motion): up to
   ``iterations`` inverse-compositional Gauss–Newton steps, whose 2×2 normal matrix, from the
   target's gradients, is computed once; a patch stops as soon as a step no longer lowers its
   misfit, and keeps the best translation it has seen.
2. Patches are visited in two sweeps, in reading order and then back (propagation): before its
   steps, each patch also tries the translations just found by its neighbours on the side the
   sweep comes from, and starts from whichever fits best. So a patch on an object takes the
   object's motion from a patch that found it, however far along the sweep that one lies.
3. The dense field is each pixel's average of the translations of the patches that cover it,
   weighted by ``1 / |residual|`` at that pixel: the patch that fits the pixel decides, so motion
   boundaries stay sharp (densification).
4. Coarse to fine (:func:`patch_search`): the same on the images averaged over 16, 8, 4, 2 and 1
   px blocks, each level starting from the previous level's field.

:func:`regcore.register` uses it in ``method="net+patches"``: its field is a second hypothesis next
to the network's polished one, and :func:`fuse_with_patches` takes, around each pixel, the one that
fits there (``benchmarks/results/results.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from . import kernels
from .polish import SCHEDULE, Level, fuse

__all__ = [
    "FACTORS",
    "FINE_STRIDE",
    "FUSE_MARGIN",
    "FUSE_SOFTEN",
    "FUSE_WIN",
    "ITERATIONS",
    "PATCH",
    "PYRAMID_UNDER_PATCHES",
    "STRIDE",
    "fuse_with_patches",
    "patch_search",
    "search_level",
]

#: Side (pixels) of a patch.
PATCH = 8
#: Pixels between neighbouring patches on the coarse levels (each pixel in ``(PATCH / STRIDE)²`` patches).
STRIDE = 4
#: ... and on the two finest levels, where patches are most numerous (fewer patches: about half the
#: search's time at :data:`STRIDE`, and within 1% once fused, on the tuning pairs).
FINE_STRIDE = 6
#: Most Gauss–Newton steps a patch takes in each sweep (it stops earlier once a step stops helping).
ITERATIONS = 12
#: Block sizes of the pyramid's levels, coarse to fine (levels under 16 px are skipped).
FACTORS: tuple[int, ...] = (16, 8, 4, 2, 1)
#: Residual (intensity, images in [0, 1]) below which a pixel's fit counts as perfect in the
#: densification's ``1 / |residual|`` weights: one gray level of 8-bit images, as in DIS (0.004 rather
#: than 0.01: layered tuning pairs 1.66 -> 1.62 px at 128², smooth pairs unchanged).
FLOOR = 0.004
#: Ridge on each patch's normal matrix, relative to ``patch²`` × the level's mean squared gradient.
RIDGE = 1e-3
#: Levels whose shorter side is under this (px) are skipped.
MIN_LEVEL = 16
#: The Lucas–Kanade pyramid whose field the search's is fused with (``"net+patches"``): ``"net"``'s
#: without its 16 px level. The search's own coarse levels catch the large motions that level is there
#: for, and without it an object of a few blocks is not averaged into its background before the finer
#: levels see it: layered tuning pairs 3.20 -> 2.72 px at 256² (large motion 0.092 -> 0.120, smooth
#: 0.071 -> 0.073; 128² images have no 16 px level).
PYRAMID_UNDER_PATCHES: tuple[Level, ...] = tuple(level for level in SCHEDULE if level.factor < 16)
#: Side (pixels) of the window over which :func:`fuse_with_patches` compares the two fields' fits:
#: wider than a patch, so that a few textureless pixels do not decide alone.
FUSE_WIN = 15
#: How much better the patches' field must fit to be taken (see :func:`regcore.polish.fuse`): none,
#: each pixel takes the field that fits better around it. A margin (0.25 until the boundary
#: sharpening and the variational refinement came after the fusion) kept the pyramid's field where
#: the search fitted a little better, on real stereo mostly the search's correct disparity in
#: textured regions and on thin objects. 0 rather than 0.25, whole default path: real stereo tuning
#: pairs 0.734 -> 0.684 px (cones) and 1.309 -> 1.232 (Adirondack), layered 0.955 -> 0.875 at 128²
#: (1.941 -> 1.971 at 256²), smooth pairs 0.118 -> 0.116, folding on smooth pairs 0.002-0.014% ->
#: 0.006-0.018% (``benchmarks/results/tuning/ablations.md``).
FUSE_MARGIN = 0.0
#: Side (pixels) of the box over which each pixel's choice between the two fields is averaged, so
#: the fused field changes over a few pixels rather than at one: the seams of a hard choice folded
#: 0.05-0.25% of the pixels of smoothly deformed tuning pairs, this 0.01-0.06%.
FUSE_SOFTEN = 11


@kernels.compiled(fastmath=False)
def _origins(n: int, patch: int, stride: int) -> np.ndarray:
    """Patch origins along an axis of ``n`` pixels: evenly spread, the last flush with the far border."""
    count = max(1, -(-(n - patch) // stride) + 1)
    span = max(n - patch, 0)
    out = np.zeros(count, np.int64)
    for i in range(1, count):
        out[i] = round(span * i / (count - 1))
    return out


@kernels.compiled(inline="always")
def _bilinear(y: float, x: float) -> tuple[int, int, float, float, float, float]:
    """The top-left pixel and the four bilinear weights of the point ``(y, x)``."""
    fy, fx = np.floor(y), np.floor(x)
    dy, dx = y - fy, x - fx
    one = np.float32(1.0)
    return int(fy), int(fx), (one - dy) * (one - dx), (one - dy) * dx, dy * (one - dx), dy * dx


@kernels.compiled
def _sums(source, target, gx, gy, top, left, uy, ux, patch):
    """Sums over the patch at ``(top, left)`` of the source sampled there moved by ``(uy, ux)``:
    ``Σv, Σv², Σv·target, Σv·gx, Σv·gy`` (edges repeated outside the image)."""
    h, w = source.shape
    iy, ix, w00, w01, w10, w11 = _bilinear(np.float32(top) + uy, np.float32(left) + ux)
    s = s2 = st = sx = sy = np.float32(0.0)
    inside = iy >= 0 and ix >= 0 and iy + patch < h and ix + patch < w
    for i in range(patch):
        y0 = iy + i if inside else min(max(iy + i, 0), h - 1)
        y1 = y0 + 1 if inside else min(max(iy + i + 1, 0), h - 1)
        for j in range(patch):
            x0 = ix + j if inside else min(max(ix + j, 0), w - 1)
            x1 = x0 + 1 if inside else min(max(ix + j + 1, 0), w - 1)
            v = w00 * source[y0, x0] + w01 * source[y0, x1] + w10 * source[y1, x0] + w11 * source[y1, x1]
            s += v
            s2 += v * v
            st += v * target[top + i, left + j]
            sx += v * gx[top + i, left + j]
            sy += v * gy[top + i, left + j]
    return s, s2, st, sx, sy


@kernels.compiled
def _search(target, source, flow, patch, stride, iterations, floor, ridge):
    """One level for one pair: ``target``, ``source`` ``(h, w)`` float32, ``flow`` ``(2, h, w)`` -> ``(2, h, w)``."""
    h, w = target.shape
    tops, lefts = _origins(h, patch, stride), _origins(w, patch, stride)
    rows, cols = tops.size, lefts.size
    count, size = rows * cols, np.float32(patch * patch)
    # The target's central differences (edges repeated) and its mean squared gradient.
    gy, gx = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    kernels.gradients(target, gy, gx)
    energy = (gy * gy).sum() + (gx * gx).sum()
    damping = np.float32(ridge * size * energy / (h * w) + 1e-9)
    # Per patch, everything that does not depend on u: means of the target and its gradients, the
    # centred sums Σg·t and Σt², the inverse normal matrix; and the start, the field's patch mean.
    mean_t, mean_x, mean_y = np.empty(count, np.float32), np.empty(count, np.float32), np.empty(count, np.float32)
    gt_x, gt_y, tt = np.empty(count, np.float32), np.empty(count, np.float32), np.empty(count, np.float32)
    inv_xx, inv_xy, inv_yy = np.empty(count, np.float32), np.empty(count, np.float32), np.empty(count, np.float32)
    u = np.empty((count, 2), np.float32)
    for p in range(count):
        top, left = tops[p // cols], lefts[p % cols]
        st = sx = sy = a = b = c = xt = yt = t2 = fy = fx = np.float32(0.0)
        for i in range(patch):
            for j in range(patch):
                t, ex, ey = target[top + i, left + j], gx[top + i, left + j], gy[top + i, left + j]
                st += t
                sx += ex
                sy += ey
                a += ex * ex
                b += ex * ey
                c += ey * ey
                xt += ex * t
                yt += ey * t
                t2 += t * t
                fy += flow[0, top + i, left + j]
                fx += flow[1, top + i, left + j]
        mean_t[p], mean_x[p], mean_y[p] = st / size, sx / size, sy / size
        a = a - size * mean_x[p] * mean_x[p] + damping
        b = b - size * mean_x[p] * mean_y[p]
        c = c - size * mean_y[p] * mean_y[p] + damping
        det = a * c - b * b
        inv_xx[p], inv_xy[p], inv_yy[p] = c / det, -b / det, a / det
        gt_x[p], gt_y[p] = xt - size * mean_x[p] * mean_t[p], yt - size * mean_y[p] * mean_t[p]
        tt[p] = t2 - size * mean_t[p] * mean_t[p]
        u[p, 0], u[p, 1] = fy / size, fx / size

    for sweep in range(2):
        for visit in range(count):
            p = visit if sweep == 0 else count - 1 - visit
            row, col = p // cols, p % cols
            top, left = tops[row], lefts[col]
            best, by, bx = np.float32(np.inf), u[p, 0], u[p, 1]
            px = py = np.float32(0.0)
            # Candidates: the patch's own translation, then its neighbours' on the side the sweep comes from.
            for k in range(3):
                if k == 0:
                    q = p
                elif sweep == 0:
                    q = p - 1 if k == 1 and col > 0 else (p - cols if k == 2 and row > 0 else -1)
                else:
                    q = p + 1 if k == 1 and col < cols - 1 else (p + cols if k == 2 and row < rows - 1 else -1)
                if q < 0 or (k > 0 and u[q, 0] == u[p, 0] and u[q, 1] == u[p, 1]):
                    continue
                cy, cx = u[q, 0], u[q, 1]
                s, s2, st, sx, sy = _sums(source, target, gx, gy, top, left, cy, cx, patch)
                m = s / size
                # Σ((v - mean v) - (t - mean t))², from the sums.
                misfit = s2 - size * m * m - 2 * (st - size * m * mean_t[p]) + tt[p]
                if misfit < best:
                    best, by, bx = misfit, cy, cx
                    px, py = sx - size * m * mean_x[p] - gt_x[p], sy - size * m * mean_y[p] - gt_y[p]
            cy, cx = by, bx
            for _ in range(iterations):
                cx -= inv_xx[p] * px + inv_xy[p] * py
                cy -= inv_xy[p] * px + inv_yy[p] * py
                s, s2, st, sx, sy = _sums(source, target, gx, gy, top, left, cy, cx, patch)
                m = s / size
                misfit = s2 - size * m * m - 2 * (st - size * m * mean_t[p]) + tt[p]
                if not misfit < best:
                    break
                best, by, bx = misfit, cy, cx
                px, py = sx - size * m * mean_x[p] - gt_x[p], sy - size * m * mean_y[p] - gt_y[p]
            u[p, 0], u[p, 1] = by, bx

    # Densification: each pixel's translations of the patches covering it, weighted by 1 / |residual| there.
    total = np.zeros((h, w, 3), np.float32)
    for p in range(count):
        top, left = tops[p // cols], lefts[p % cols]
        uy, ux = u[p, 0], u[p, 1]
        s = _sums(source, target, gx, gy, top, left, uy, ux, patch)[0]
        offset = s / size - mean_t[p]
        iy, ix, w00, w01, w10, w11 = _bilinear(np.float32(top) + uy, np.float32(left) + ux)
        for i in range(patch):
            y0, y1 = min(max(iy + i, 0), h - 1), min(max(iy + i + 1, 0), h - 1)
            for j in range(patch):
                x0, x1 = min(max(ix + j, 0), w - 1), min(max(ix + j + 1, 0), w - 1)
                v = w00 * source[y0, x0] + w01 * source[y0, x1] + w10 * source[y1, x0] + w11 * source[y1, x1]
                weight = np.float32(1.0) / max(abs(v - offset - target[top + i, left + j]), np.float32(floor))
                total[top + i, left + j, 0] += weight * uy
                total[top + i, left + j, 1] += weight * ux
                total[top + i, left + j, 2] += weight
    out = np.empty((2, h, w), np.float32)
    for y in range(h):
        for x in range(w):
            weight = max(total[y, x, 2], np.float32(1e-12))
            out[0, y, x], out[1, y, x] = total[y, x, 0] / weight, total[y, x, 1] / weight
    return out


def search_level(
    source: Tensor,
    target: Tensor,
    flow: Tensor,
    patch: int = PATCH,
    stride: int = STRIDE,
    iterations: int = ITERATIONS,
    floor: float = FLOOR,
) -> Tensor:
    """One level of the patch search (steps 1-3 of the module docstring), pair by pair.

    Args:
        source, target: ``(N, 1, h, w)`` images in [0, 1].
        flow: ``(N, 2, h, w)`` starting field in pixels (channel 0 rows, 1 columns; backward warp):
            each patch starts from its mean over the patch.
        patch, stride: patch side and spacing in pixels.
        iterations: most Gauss–Newton steps per patch and sweep.
        floor: residual below which a pixel's fit counts as perfect in the densification (:data:`FLOOR`).

    Returns:
        ``(N, 2, h, w)`` field in pixels: the patches' translations, densified.
    """
    pairs = zip(kernels.arrays(source), kernels.arrays(target), kernels.arrays(flow), strict=True)
    return kernels.tensor([_search(tgt, src, field, patch, stride, iterations, floor, RIDGE) for src, tgt, field in pairs], flow)


def patch_search(
    source: Tensor,
    target: Tensor,
    factors: Sequence[int] = FACTORS,
    stride: int = STRIDE,
    fine_stride: int = FINE_STRIDE,
    floor: float = FLOOR,
) -> Tensor:
    """The patch search over a pyramid, coarse to fine, from a zero field.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        factors: block sizes of the levels, coarse to fine; levels whose shorter side is under
            :data:`MIN_LEVEL` (or under a patch) are skipped.
        stride, fine_stride: pixels between patches on the levels of 4 px blocks and coarser, and on
            the two finest levels.
        floor: as in :func:`search_level`.

    Returns:
        ``(N, 2, H, W)`` field in pixels (channel 0 rows, 1 columns; backward warp).
    """
    # Pyramid and all in numpy and compiled loops, no PyTorch operation: register() runs this on a
    # second thread, where PyTorch would start a second OpenMP team whose idle threads spin and slow
    # every later PyTorch call of the process (measured: net+refine 1.6x slower after one search).
    pairs = zip(kernels.arrays(source), kernels.arrays(target), strict=True)
    return kernels.tensor([_search_pair(src, tgt, factors, stride, fine_stride, floor) for src, tgt in pairs], source)


def _search_pair(source: np.ndarray, target: np.ndarray, factors: Sequence[int], stride: int, fine_stride: int, floor: float) -> np.ndarray:
    """:func:`patch_search` for one pair of ``(H, W)`` arrays -> ``(2, H, W)``."""
    size = source.shape
    flow = None
    for factor in factors:
        src, tgt = kernels.pooled(source, factor), kernels.pooled(target, factor)
        if min(src.shape) < max(min(MIN_LEVEL, min(size)), PATCH):
            continue
        flow = np.zeros((2, *src.shape), np.float32) if flow is None else kernels.resample_field(flow, src.shape)
        flow = _search(tgt, src, flow, PATCH, fine_stride if factor <= 2 else stride, ITERATIONS, floor, RIDGE)
    return np.zeros((2, *size), np.float32) if flow is None else kernels.resample_field(flow, size)


def fuse_with_patches(
    source: Tensor,
    target: Tensor,
    flow: Tensor,
    searched: Tensor | None = None,
    win: int = FUSE_WIN,
    margin: float = FUSE_MARGIN,
    soften: int = FUSE_SOFTEN,
) -> Tensor:
    """``flow`` fused with :func:`patch_search`'s field (:func:`regcore.polish.fuse`: the patches'
    field where it fits the target clearly better over a :data:`FUSE_WIN` window, the choice
    softened over :data:`FUSE_SOFTEN` px).

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        flow: ``(N, 2, H, W)`` field in pixels, e.g. the network's field after the Lucas–Kanade pyramid.
        searched: :func:`patch_search`'s field for the pair, if already found (None: found here).
        win, margin, soften: as in :func:`regcore.polish.fuse`.

    Returns:
        ``(N, 2, H, W)`` field in pixels.
    """
    searched = patch_search(source, target) if searched is None else searched
    return fuse(source, target, (flow, searched), win=win, margin=margin, soften=soften)
