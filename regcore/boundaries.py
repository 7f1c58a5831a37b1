"""Motion boundaries: a field that jumps where objects overlap, made to jump where the image does.

Every estimate regcore makes averages over windows (the Lucas–Kanade windows, the patches, the
fusion's softening), so where one surface moves past another (objects over a background, depth
edges in stereo) the field ramps from one motion to the other over a band several pixels wide.
Inside that band each pixel belongs to one surface or the other, and the target image usually says
which, by its intensity. :func:`sharpen_boundaries` decides it, in the spirit of the weighted
median filters of classical optical flow (Sun, Roth and Black, CVPR 2010), as regcore's own
compiled loop:

1. Only pixels within :data:`REACH` px of a steep part of the field are looked at: the field's
   slope (the larger central difference of either component, px per px) is at least
   :data:`STEEP` there. Smooth motion, even a large one, has gentler slopes and is left exactly as
   it is.
2. Around such a pixel, neighbours every :data:`STEP` px out to :data:`RADIUS` px vote with their
   vectors, each weighted by how alike its target intensity is to the pixel's (Gaussian,
   :data:`SIGMA_INTENSITY`) and by how well the field fits at it (``exp(-|source warped - target|
   / CONFIDENCE)``, so pixels that the source does not show, occlusions, count little).
3. The votes are split into two groups (weighted 2-means, started from the two farthest-apart
   vectors). The pixel changes only if the groups are clearly two motions: centres more than
   :data:`JUMP` px and more than :data:`KAPPA` times the spread inside the groups apart (a
   linear ramp split in two gives about 3.5, a jump many times more).
4. It then takes the weighted mean vector of the group with the larger ``weight / sqrt(votes)``
   (a large surface must not win by its size alone). A pixel whose vector already is one group's
   (within :data:`ON_SIDE` of the separation) leaves it only for :data:`HOLD` times the weight.

Measured on the tuning pairs (``benchmarks/results/tuning/ablations.md``); the defaults were
chosen on a synthetic stereo-like set of tuning photographs (``benchmarks.sets``) and the layered
tuning sets, none of them benchmark pairs.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from torch import Tensor

from . import kernels

__all__ = [
    "CONFIDENCE",
    "HOLD",
    "JUMP",
    "KAPPA",
    "ON_SIDE",
    "RADIUS",
    "REACH",
    "SIGMA_INTENSITY",
    "STEEP",
    "STEP",
    "near_steep",
    "sharpen_boundaries",
]

#: Farthest voting neighbour (pixels, along each axis): as far as a band's far side and beyond it.
RADIUS = 24
#: Pixels between voting neighbours (``(2 * RADIUS / STEP + 1)²`` = 25 votes; every 8 px, 49 votes, cost twice
#: the time for the same accuracy on the tuning pairs but for layered motion at 128², 3% better).
STEP = 12
#: The field's slope (px per px) above which a jump may be near. Smooth and affine motion of the
#: benchmark's sizes stays under it; a jump of a few pixels blurred over a few pixels does not.
STEEP = 0.75
#: Distance (pixels) from a steep part of the field within which pixels are looked at.
REACH = 3
#: Intensity difference (images in [0, 1]) at which a neighbour's vote falls to ``exp(-1/2)``.
SIGMA_INTENSITY = 0.05
#: Residual (intensity) at which a neighbour's vote falls to ``1/e``.
CONFIDENCE = 0.05
#: Separation of the two groups, in units of their inner spread, above which the pixel takes a side.
KAPPA = 4.0
#: Smallest jump (pixels) worth taking a side for.
JUMP = 1.0
#: A pixel within this fraction of the groups' separation from one group's centre is on that side ...
ON_SIDE = 0.1
#: ... and leaves it only for a group this many times heavier.
HOLD = 3.0
#: Weighted 2-means iterations (a third changed nothing on the tuning pairs).
ITERATIONS = 2

_ROWS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="regcore-boundaries")


def sharpen_boundaries(source: Tensor, target: Tensor, flow: Tensor, radius: int = RADIUS, step: int = STEP) -> Tensor:
    """``flow`` with its motion boundaries moved onto the target's edges (see the module's docs).

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1] (the target with the contrast the field was found against).
        flow: ``(N, 2, H, W)`` backward field in pixels.
        radius, step: :data:`RADIUS`, :data:`STEP`.

    Returns:
        ``(N, 2, H, W)`` in pixels: ``flow`` where it is smooth, one side's motion near each jump.
    """
    lut = np.exp(-0.5 * (np.arange(257, dtype=np.float32) / 256 / SIGMA_INTENSITY) ** 2).astype(np.float32)
    settings = (radius, step, np.float32(KAPPA), np.float32(JUMP), np.float32(ON_SIDE), np.float32(HOLD), ITERATIONS)
    out = []
    for src, tgt, field in zip(kernels.arrays(source), kernels.arrays(target), kernels.arrays(flow), strict=True):
        warped, confidence = np.empty_like(tgt), np.empty_like(tgt)
        kernels.warp(src, field, warped)
        _confidence(warped, tgt, np.float32(CONFIDENCE), confidence)
        near = near_steep(field, REACH, STEEP)
        sharpened = field.copy()
        # Every other row to each thread: jumps are rarely spread evenly over the image.
        jobs = [_ROWS.submit(_vote, field, tgt, confidence, near, lut, first, *settings, sharpened) for first in (0, 1)]
        for job in jobs:
            job.result()
        out.append(sharpened)
    return kernels.tensor(out, flow)


@kernels.compiled
def _confidence(warped, target, scale, out):
    h, w = target.shape
    for y in range(h):
        for x in range(w):
            out[y, x] = math.exp(-abs(warped[y, x] - target[y, x]) / scale)


@kernels.compiled
def near_steep(flow: np.ndarray, radius: int, steep: float) -> np.ndarray:
    """``(h, w)`` bool: within ``radius`` px (Chebyshev) of a pixel where the slope of ``flow`` ``(2, h, w)``
    (the larger central difference of either component, px per px; 0 at the border pixels) is at least
    ``steep``. The gate of this module and of :mod:`regcore.variational`."""
    _, h, w = flow.shape
    half = np.float32(0.5)
    marked = np.zeros((h, w), np.bool_)
    for y in range(h):
        for x in range(w):
            m = np.float32(0.0)
            for c in range(2):
                if 0 < x < w - 1:
                    m = max(m, abs(flow[c, y, x + 1] - flow[c, y, x - 1]) * half)
                if 0 < y < h - 1:
                    m = max(m, abs(flow[c, y + 1, x] - flow[c, y - 1, x]) * half)
            marked[y, x] = m >= steep
    # Grown along rows, then along columns.
    return np.ascontiguousarray(_grow(np.ascontiguousarray(_grow(marked, radius).T), radius).T)


@kernels.compiled
def _grow(marked, radius):
    """``(h, w)`` bool: within ``radius`` pixels of a marked one along its row (two passes, whatever the radius)."""
    h, w = marked.shape
    out = np.zeros((h, w), np.bool_)
    far = w + radius + 1
    for y in range(h):
        last = -far
        for x in range(w):
            if marked[y, x]:
                last = x
            out[y, x] = x - last <= radius
        last = far + w
        for x in range(w - 1, -1, -1):
            if marked[y, x]:
                last = x
            out[y, x] = out[y, x] or last - x <= radius
    return out


@kernels.compiled
def _vote(flow, guide, confidence, near, lut, first, radius, step, kappa, jump, on_side, hold, iterations, out):
    """Every other row from ``first`` of :func:`sharpen_boundaries` for one pair, written into ``out`` ``(2, h, w)``."""
    _, h, w = flow.shape
    reach = (radius // step) * step
    n = (2 * (radius // step) + 1) ** 2
    us, vs, ws = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    zero = np.float32(0.0)
    for y in range(first, h, 2):
        for x in range(w):
            if not near[y, x]:
                continue
            centre = guide[y, x]
            k, total = 0, zero
            for yy in range(max(y - reach, y % step), min(y + reach + 1, h), step):
                for xx in range(max(x - reach, x % step), min(x + reach + 1, w), step):
                    weight = lut[min(256, int(abs(guide[yy, xx] - centre) * 256.0 + 0.5))] * confidence[yy, xx]
                    us[k], vs[k], ws[k] = flow[0, yy, xx], flow[1, yy, xx], weight
                    total += weight
                    k += 1
            if total <= 0:
                continue
            # The two groups start from the extremes of the component that varies more.
            iu0, iu1, iv0, iv1 = 0, 0, 0, 0
            for j in range(k):
                iu0 = j if us[j] < us[iu0] else iu0
                iu1 = j if us[j] > us[iu1] else iu1
                iv0 = j if vs[j] < vs[iv0] else iv0
                iv1 = j if vs[j] > vs[iv1] else iv1
            if max(us[iu1] - us[iu0], vs[iv1] - vs[iv0]) < jump:
                continue
            a, b = (iu0, iu1) if us[iu1] - us[iu0] > vs[iv1] - vs[iv0] else (iv0, iv1)
            au, av, bu, bv = us[a], vs[a], us[b], vs[b]
            wa, wb, na, nb = zero, zero, 0, 0
            for _ in range(iterations):
                sau, sav, wa, na, sbu, sbv, wb, nb = zero, zero, zero, 0, zero, zero, zero, 0
                for j in range(k):
                    if (us[j] - au) ** 2 + (vs[j] - av) ** 2 <= (us[j] - bu) ** 2 + (vs[j] - bv) ** 2:
                        sau, sav, wa, na = sau + ws[j] * us[j], sav + ws[j] * vs[j], wa + ws[j], na + 1
                    else:
                        sbu, sbv, wb, nb = sbu + ws[j] * us[j], sbv + ws[j] * vs[j], wb + ws[j], nb + 1
                if wa > 0:
                    au, av = sau / wa, sav / wa
                if wb > 0:
                    bu, bv = sbu / wb, sbv / wb
            spread = zero
            for j in range(k):
                spread += ws[j] * min((us[j] - au) ** 2 + (vs[j] - av) ** 2, (us[j] - bu) ** 2 + (vs[j] - bv) ** 2)
            separation = (au - bu) ** 2 + (av - bv) ** 2
            if separation < jump * jump or separation < kappa * kappa * spread / total:
                continue
            wa, wb = wa / np.sqrt(np.float32(max(na, 1))), wb / np.sqrt(np.float32(max(nb, 1)))
            if (flow[0, y, x] - au) ** 2 + (flow[1, y, x] - av) ** 2 < on_side * on_side * separation:
                wa *= hold
            elif (flow[0, y, x] - bu) ** 2 + (flow[1, y, x] - bv) ** 2 < on_side * on_side * separation:
                wb *= hold
            if wa >= wb:
                out[0, y, x], out[1, y, x] = au, av
            else:
                out[0, y, x], out[1, y, x] = bu, bv
