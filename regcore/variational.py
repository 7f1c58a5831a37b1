"""Variational refinement near motion boundaries: each pixel's own data term, a piecewise-smooth field.

Every earlier stage fits the field over windows (Lucas–Kanade windows, patches, the boundary
votes), which is what makes it precise on smooth motion and robust in faint texture. Near a jump of
the field (objects over a background, depth edges in stereo) a window straddles two motions and
the regions a surface hides in the other image (occlusions) borrow from the wrong side. There
:func:`refine_near_boundaries` solves, pixel by pixel, for the increment ``(du, dv)`` that minimises
the variational energy of Brox et al. (ECCV 2004) with the normalised data terms of Zimmer et al.
(2011), the energy OpenCV's DIS refines with (``cv2.VariationalRefinement``); regcore's own loops:

    E = Σ  δ Ψ(brightness residual² / (|∇I|² + ζ²)) + γ Ψ(gradient residuals² / (|∇∇I|² + ζ²))
           + α Ψ(|∇(flow + d)|²),        Ψ(s²) = sqrt(s² + ε²)

- Data: the source warped by the field against the target, linearised around the field (one warp,
  the average of both images' derivatives); normalising by the gradient makes every pixel's
  residual a distance in pixels, so faint and strong texture count alike.
- Smoothness: total variation of the whole field (not of the increment), so the field stays flat
  inside a surface and may jump between surfaces.
- Solved by :data:`OUTER` lagged fixed-point iterations (the robust weights frozen), each
  :data:`INNER` red-black SOR sweeps (relaxation :data:`OMEGA`).

It runs only within :data:`REACH` px of a steep part of the field (slope ≥
:data:`regcore.boundaries.STEEP`, the gate of :func:`regcore.boundaries.sharpen_boundaries`); the
rest of the field is left exactly as it is and holds the solution's edges. Everywhere, it costs
smooth motion accuracy: on the smooth tuning pairs at 128² the whole-image refinement took the error
from 0.118 to 0.161 px (pointwise data terms fit the faint, noisy backgrounds of the photographs
that windows average out). Near jumps it gains on every kind of tuning pair
(``benchmarks/results/tuning/ablations.md``), and on a real stereo pair that the benchmark does not use
(Middlebury's "cones", with a throwaway script: the README's tuning section).

A pair whose target's intensities were remapped (:mod:`regcore.contrast`) breaks the brightness
constancy the data term assumes; :func:`regcore.pipeline.polish_and_search` then skips this step.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from torch import Tensor

from . import kernels
from .boundaries import STEEP, near_steep

__all__ = ["ALPHA", "DELTA", "EPSILON", "GAMMA", "INNER", "OMEGA", "OUTER", "REACH", "ZETA", "refine_near_boundaries"]

#: Weight of the smoothness term (OpenCV's default; 14 and 30 changed the tuning errors by under 2%).
ALPHA = 20.0
#: Weight of brightness constancy.
DELTA = 5.0
#: Weight of gradient constancy (the term that survives a change of brightness).
GAMMA = 10.0
#: Gradient magnitude (intensity per pixel, images in [0, 1]) under which a pixel's data term is
#: no longer normalised: OpenCV's 0.1 grey level (of 255) per its two-pixel difference.
ZETA = 0.1 / 510
#: ``ε`` of the robust function Ψ.
EPSILON = 1e-3
#: Fixed-point iterations (OpenCV: 5). 6 rather than 4 (once the fusion took each pixel's better-fitting
#: field): real stereo tuning pairs 0.685 -> 0.679 px (cones) and 1.234 -> 1.229 (Adirondack), layered
#: 0.875 -> 0.866 at 128² and 1.971 -> 1.950 at 256², photo256-stereo 0.450 -> 0.447, smooth pairs the
#: same, folding down on every set (layered 2.03% -> 1.92%), for about half the refinement's time again
#: (0.6 ms at 128², 1.5 ms at 256²). Within 12 px rather than :data:`REACH` gained under 1% more, for a
#: third more pixels.
OUTER = 6
#: SOR sweeps per fixed-point iteration (OpenCV: 5; 3 did as well on the tuning pairs, in 70% of the time).
INNER = 3
#: SOR relaxation.
OMEGA = 1.6
#: Distance (pixels) from a steep part of the field within which pixels are refined (about half the
#: pixels of the layered and stereo tuning pairs).
REACH = 8


def refine_near_boundaries(source: Tensor, target: Tensor, flow: Tensor, reach: int = REACH, outer: int = OUTER) -> Tensor:
    """``flow`` refined by the variational energy (see the module's docs) within ``reach`` px of its steep parts.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1] (the target with the contrast the field was found against).
        flow: ``(N, 2, H, W)`` backward field in pixels.
        reach, outer: :data:`REACH`, :data:`OUTER`.

    Returns:
        ``(N, 2, H, W)`` in pixels; equal to ``flow`` wherever the field is smooth.
    """
    weights = (np.float32(ALPHA), np.float32(DELTA), np.float32(GAMMA), np.float32(ZETA**2), np.float32(EPSILON**2))
    settings = (*weights, outer, INNER, np.float32(OMEGA))
    out = []
    for src, tgt, field in zip(kernels.arrays(source), kernels.arrays(target), kernels.arrays(flow), strict=True):
        active = near_steep(field, reach, STEEP)
        refined = field.copy()
        if active.any():
            derivatives = _derivatives(src, tgt, field)
            mine, *others = _bands(active)
            jobs = [_BANDS.submit(_solve, derivatives, field, active, *band, refined, *settings) for band in others]
            _solve(derivatives, field, active, *mine, refined, *settings)  # this thread takes a band too
            for job in jobs:
                job.result()
        out.append(refined)
    return kernels.tensor(out, flow)


#: Rows each band solves beyond the rows it keeps, so that where the bands meet each sees the other's
#: pixels refined (8 rows: against one band, the real stereo tuning pair's field moved by 0.0004 px on
#: average and 0.04 px at most).
OVERLAP = 8

_BANDS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="regcore-variational")


def _bands(active: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(top, bottom, keep_top, keep_bottom)`` row ranges for two threads, split where each has half the active pixels.

    The two bands are solved independently (one ``OVERLAP``-row margin each), so the result does not
    depend on the threads' timing.
    """
    h = active.shape[0]
    if h < 4 * OVERLAP:
        return [(0, h, 0, h)]
    counts = np.cumsum(active.sum(axis=1))
    middle = int(np.clip(np.searchsorted(counts, counts[-1] / 2), OVERLAP, h - OVERLAP))
    return [(0, middle + OVERLAP, 0, middle), (middle - OVERLAP, h, middle, h)]


@kernels.compiled
def _derivatives(source, target, flow):
    """``(8, h, w)``: Ix, Iy (mean of the warped source's and the target's), Iz (warped source −
    target), Ixz, Iyz (difference of their gradients), Ixx, Ixy, Iyy (of the mean gradient)."""
    h, w = target.shape
    warped = np.empty((h, w), np.float32)
    kernels.warp(source, flow, warped)
    sy, sx = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    ty, tx = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    kernels.gradients(warped, sy, sx)
    kernels.gradients(target, ty, tx)
    d = np.empty((8, h, w), np.float32)
    half = np.float32(0.5)
    for y in range(h):
        for x in range(w):
            d[0, y, x] = half * (sx[y, x] + tx[y, x])
            d[1, y, x] = half * (sy[y, x] + ty[y, x])
            d[2, y, x] = warped[y, x] - target[y, x]
            d[3, y, x] = sx[y, x] - tx[y, x]
            d[4, y, x] = sy[y, x] - ty[y, x]
    kernels.gradients(d[0], d[6], d[5])
    kernels.gradients(d[1], d[7], sy)  # its column derivative is Ixy again: into scratch
    return d


@kernels.compiled
def _solve(d, flow, active, top, bottom, keep_top, keep_bottom, out, alpha, delta, gamma, zeta2, eps2, outer, inner, omega):
    """Writes into ``out[:, keep_top:keep_bottom]`` ``flow`` ``(2, h, w)`` plus the increment that minimises the
    energy at the ``active`` pixels of rows ``top:bottom``; the others hold their value.

    One function on purpose (the same steps as separate compiled functions ran three times slower).
    Its arrays hold the band's rows and the one either side (pixel ``(y, x)`` at ``(y - first + 1, x + 1)``)
    in a frame of zero links, so that no update tests for the image's edge; its loops run over lists of
    the pixels they concern, not over the band.
    """
    _, h, w = flow.shape
    first, last = max(top - 1, 0), min(bottom + 1, h)
    n = last - first + 2
    # The active pixels, red (y + x even) then black, each in raster order; and those a link starts at.
    cells, linked = np.empty((2, (bottom - top) * w), np.int32), np.empty((2, (bottom - top + 1) * w), np.int32)
    count, links_count = 0, 0
    for colour in range(2):
        for y in range(top, bottom):
            for x in range((y + colour) % 2, w, 2):
                if active[y, x]:
                    cells[0, count], cells[1, count] = y - first + 1, x + 1
                    count += 1
    for y in range(first, bottom):
        for x in range(w):
            if active[y, x] or active[min(y + 1, h - 1), x] or active[y, min(x + 1, w - 1)]:
                linked[0, links_count], linked[1, links_count] = y - first + 1, x + 1
                links_count += 1
    # The field as it is (u: columns, v: rows) and as linearised around.
    u, v = np.zeros((n, w + 2), np.float32), np.zeros((n, w + 2), np.float32)
    u[1:-1, 1:-1], v[1:-1, 1:-1] = flow[1, first:last], flow[0, first:last]
    u0, v0 = u.copy(), v.copy()
    # Each pixel's data term: [a11 a12; a12 a22] (du, dv) = (b1, b2).
    a11, a12, a22 = np.zeros((n, w + 2), np.float32), np.zeros((n, w + 2), np.float32), np.zeros((n, w + 2), np.float32)
    b1, b2 = np.zeros((n, w + 2), np.float32), np.zeros((n, w + 2), np.float32)
    # Weights of the links to the right and down, and their sum at each pixel.
    across, down, links = np.zeros((n, w + 2), np.float32), np.zeros((n, w + 2), np.float32), np.zeros((n, w + 2), np.float32)
    one, zero = np.float32(1.0), np.float32(0.0)
    right_edge, bottom_edge = w, h - first  # (array) column of the image's last column, row of its last row
    for _ in range(outer):
        for k in range(count):
            i, j = cells[0, k], cells[1, k]
            y, x = i + first - 1, j - 1
            a, b = u[i, j] - u0[i, j], v[i, j] - v0[i, j]
            ix, iy, iz = d[0, y, x], d[1, y, x], d[2, y, x]
            ixz, iyz, ixx, ixy, iyy = d[3, y, x], d[4, y, x], d[5, y, x], d[6, y, x], d[7, y, x]
            norm = ix * ix + iy * iy + zeta2
            r = iz + ix * a + iy * b
            wb = delta / math.sqrt(r * r / norm + eps2) / norm
            nx, ny = one / (ixx * ixx + ixy * ixy + zeta2), one / (ixy * ixy + iyy * iyy + zeta2)
            rx, ry = ixz + ixx * a + ixy * b, iyz + ixy * a + iyy * b
            wg = gamma / math.sqrt(rx * rx * nx + ry * ry * ny + eps2)
            gx, gy = wg * nx, wg * ny
            a11[i, j] = wb * ix * ix + gx * ixx * ixx + gy * ixy * ixy
            a12[i, j] = wb * ix * iy + gx * ixx * ixy + gy * ixy * iyy
            a22[i, j] = wb * iy * iy + gx * ixy * ixy + gy * iyy * iyy
            b1[i, j] = -(wb * iz * ix + gx * ixx * ixz + gy * ixy * iyz)
            b2[i, j] = -(wb * iz * iy + gx * ixy * ixz + gy * iyy * iyz)
        for k in range(links_count):
            i, j = linked[0, k], linked[1, k]
            right = j + 1 if j < right_edge else j
            below = i + 1 if i < bottom_edge else i
            ux, uy = u[i, right] - u[i, j], u[below, j] - u[i, j]
            vx, vy = v[i, right] - v[i, j], v[below, j] - v[i, j]
            weight = alpha / math.sqrt(ux * ux + uy * uy + vx * vx + vy * vy + eps2)
            across[i, j] = weight if j < right_edge else zero
            down[i, j] = weight if i < bottom_edge else zero
        for k in range(count):
            i, j = cells[0, k], cells[1, k]
            links[i, j] = across[i, j] + across[i, j - 1] + down[i, j] + down[i - 1, j]
        for _ in range(inner):
            for k in range(count):  # all red pixels, then all black ones
                i, j = cells[0, k], cells[1, k]
                ke, kw, ks, kn, total = across[i, j], across[i, j - 1], down[i, j], down[i - 1, j], links[i, j]
                su = ke * u[i, j + 1] + kw * u[i, j - 1] + ks * u[i + 1, j] + kn * u[i - 1, j] - total * u0[i, j]
                sv = ke * v[i, j + 1] + kw * v[i, j - 1] + ks * v[i + 1, j] + kn * v[i - 1, j] - total * v0[i, j]
                a, b = u[i, j] - u0[i, j], v[i, j] - v0[i, j]
                a += omega * ((b1[i, j] + su - a12[i, j] * b) / (a11[i, j] + total) - a)
                b += omega * ((b2[i, j] + sv - a12[i, j] * a) / (a22[i, j] + total) - b)
                u[i, j], v[i, j] = u0[i, j] + a, v0[i, j] + b
    for y in range(keep_top, keep_bottom):
        i = y - first + 1
        for x in range(w):
            out[0, y, x] = v[i, x + 1]
            out[1, y, x] = u[i, x + 1]
