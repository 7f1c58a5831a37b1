"""Compiled image kernels (numba) for the per-pair refinement of :mod:`regcore.polish`.

The Lucas–Kanade pyramid takes a few dozen small steps per pair, each a dozen image operations;
in PyTorch on a CPU most of a step's time at 128² is spent dispatching those operations, not
computing them. These are the same operations as plain loops over ``(h, w)`` float32 arrays,
compiled once (``cache=True``: later processes load them from disk). Measured when they replaced
the PyTorch step (one pair, two threads for PyTorch, one for these): a step took 0.85 -> 0.48 ms at
128², 0.34 -> 0.05 ms at 32².

Where PyTorch has the same operation (:func:`regcore.filters.box_mean`, :func:`regcore.warp.warp`,
``avg_pool2d``, ``interpolate``; ``tests/test_kernels.py`` compares them), it is the same: same windows, same borders, same
conventions (fields in pixels, channel 0 rows, backward bilinear warp with edges repeated).
Every function writes into ``out`` (or returns a new array) and never keeps state.

:func:`arrays` and :func:`tensor` are the way in and out: a batch of tensors to one array per pair,
and back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from numba import njit
from torch import Tensor

__all__ = [
    "arrays",
    "box_mean",
    "compiled",
    "gradients",
    "local_normalise",
    "pool",
    "pooled",
    "resample_field",
    "tensor",
    "upsample_add",
    "warp",
]


def arrays(batch: Tensor) -> np.ndarray:
    """``(N, C, h, w)`` -> float32 numpy on the CPU, one entry per pair: ``(N, h, w)`` when C = 1,
    else ``(N, C, h, w)`` (a view when it can be: no PyTorch operation runs for a CPU float32 tensor)."""
    array = batch.detach().cpu().float().contiguous().numpy()
    return array[:, 0] if array.shape[1] == 1 else array


def tensor(pairs: Sequence[np.ndarray], like: Tensor) -> Tensor:
    """Per-pair arrays ``(h, w)`` or ``(C, h, w)`` -> ``(N, C, h, w)`` with ``like``'s device and dtype."""
    stacked = np.stack(pairs)
    return torch.from_numpy(stacked[:, None] if stacked.ndim == 3 else stacked).to(device=like.device, dtype=like.dtype)


def compiled(fn: Callable | None = None, **options: object) -> Callable:
    """``numba.njit`` with ``fastmath``, ``nogil`` and NumPy's error model (``options`` override them),
    cached on disk where numba finds a writable place (the package's ``__pycache__``, the user's cache,
    ``NUMBA_CACHE_DIR``).

    NumPy's error model: a division by zero gives inf or NaN, as in NumPy, instead of a check before
    every division that keeps the loop from being vectorised (every division here is guarded by a
    floor). One Lucas–Kanade step of a 256 × 177 pair took 1.2 ms instead of 2.1, ``register()`` on it
    21 ms instead of 22.5.

    Where it finds none (a read-only install and no writable home), numba refuses ``cache=True`` when
    the function is defined, which would make ``import regcore`` fail: the function is then compiled
    in each process instead (about 15 s for all of them on a 2-core CPU, once per process).
    """
    if fn is None:
        return lambda f: compiled(f, **options)
    settings = {"fastmath": True, "nogil": True, "error_model": "numpy", **options}
    try:
        return njit(cache=True, **settings)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(**settings)(fn)


@compiled
def _inverse_counts(n: int, r: int) -> np.ndarray:
    """``1 / (positions covered)`` of each ``2r + 1``-wide window along an axis of ``n`` (fewer at the ends)."""
    out = np.empty(n, np.float32)
    for i in range(n):
        out[i] = np.float32(1.0) / np.float32(min(i + r, n - 1) - max(i - r, 0) + 1)
    return out


@compiled
def box_mean(x: np.ndarray, win: int, out: np.ndarray) -> None:
    """``out`` ``(h, w)`` = the mean of ``x`` ``(h, w)`` over the ``win × win`` window around each pixel,
    windows cropped at the border (:func:`regcore.filters.box_mean`)."""
    h, w = x.shape
    r = win // 2
    along_y, along_x = _inverse_counts(h, r), _inverse_counts(w, r)
    # Row sums of each window, with r zero rows above and below; then columns of those, summed
    # directly rather than as a running sum, whose float32 drift the normalisation would amplify.
    rows = np.zeros((h + 2 * r, w), np.float32)
    padded = np.zeros(w + 2 * r, np.float32)
    for y in range(h):
        padded[r : r + w] = x[y]
        row = rows[y + r]
        for j in range(2 * r + 1):
            for i in range(w):
                row[i] += padded[i + j]
    for y in range(h):
        o = out[y]
        o[:] = rows[y]
        for j in range(1, 2 * r + 1):
            row = rows[y + j]
            for i in range(w):
                o[i] += row[i]
        for i in range(w):
            o[i] *= along_y[y] * along_x[i]


@compiled
def warp(image: np.ndarray, flow: np.ndarray, out: np.ndarray) -> None:
    """``out[y, x] = image[y + flow[0, y, x], x + flow[1, y, x]]``, bilinear, edges repeated (:func:`regcore.warp.warp`)."""
    h, w = image.shape
    top, right, zero, one = np.float32(h - 1), np.float32(w - 1), np.float32(0.0), np.float32(1.0)
    for y in range(h):
        dys, dxs, o = flow[0, y], flow[1, y], out[y]
        for x in range(w):
            sy = min(max(np.float32(y) + dys[x], zero), top)
            sx = min(max(np.float32(x) + dxs[x], zero), right)
            iy, ix = int(sy), int(sx)
            fy, fx = sy - iy, sx - ix
            iy1, ix1 = min(iy + 1, h - 1), min(ix + 1, w - 1)
            upper = (one - fx) * image[iy, ix] + fx * image[iy, ix1]
            lower = (one - fx) * image[iy1, ix] + fx * image[iy1, ix1]
            o[x] = (one - fy) * upper + fy * lower


@compiled
def local_normalise(image: np.ndarray, win: int, eps: float, out: np.ndarray) -> None:
    """``out`` = ``image`` ``(h, w)`` with zero mean and unit std over each ``win × win`` window;
    ``eps`` (intensity²) bounds the gain in flat windows (:func:`regcore.polish.local_normalise`)."""
    h, w = image.shape
    mean, mean_sq = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    box_mean(image, win, mean)
    box_mean(image * image, win, mean_sq)
    floor, zero = np.float32(eps), np.float32(0.0)
    for y in range(h):
        for x in range(w):
            m = mean[y, x]
            out[y, x] = (image[y, x] - m) / np.sqrt(max(mean_sq[y, x] - m * m, zero) + floor)


@compiled
def gradients(image: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """Central differences of ``image`` ``(h, w)`` along rows into ``dy`` and columns into ``dx``,
    edges repeated (half the one-sided difference at the border)."""
    h, w = image.shape
    half = np.float32(0.5)
    for y in range(h):
        above, below, row = image[max(y - 1, 0)], image[min(y + 1, h - 1)], image[y]
        for x in range(w):
            dy[y, x] = half * (below[x] - above[x])
            dx[y, x] = half * (row[min(x + 1, w - 1)] - row[max(x - 1, 0)])


@compiled
def pool(x: np.ndarray, factor: int) -> np.ndarray:
    """``(C, h, w)`` averaged over ``factor × factor`` blocks -> ``(C, ⌈h/f⌉, ⌈w/f⌉)``, the last, partial
    blocks over the pixels they hold (``avg_pool2d(..., ceil_mode=True)``)."""
    channels, h, w = x.shape
    hc, wc = -(-h // factor), -(-w // factor)
    out = np.zeros((channels, hc, wc), np.float32)
    for c in range(channels):
        for y in range(h):
            row, o = x[c, y], out[c, y // factor]
            for xc in range(wc):
                s = np.float32(0.0)
                for i in range(xc * factor, min(xc * factor + factor, w)):
                    s += row[i]
                o[xc] += s
        for yc in range(hc):
            for xc in range(wc):
                out[c, yc, xc] /= np.float32(min(factor, h - yc * factor) * min(factor, w - xc * factor))
    return out


@compiled
def upsample_add(coarse: np.ndarray, weight: float, out: np.ndarray) -> None:
    """``out`` ``(C, h, w)`` += ``weight`` × ``coarse`` ``(C, hc, wc)`` resized bilinearly with pixel
    centres matched (``interpolate(..., align_corners=False)``)."""
    channels, hc, wc = coarse.shape
    h, w = out.shape[1:]
    left, right, across = np.empty(w, np.int64), np.empty(w, np.int64), np.empty(w, np.float32)
    for x in range(w):
        sx = max((x + 0.5) * wc / w - 0.5, 0.0)
        left[x] = min(int(sx), wc - 1)
        right[x], across[x] = min(left[x] + 1, wc - 1), sx - left[x]
    one, scale = np.float32(1.0), np.float32(weight)
    for y in range(h):
        sy = max((y + 0.5) * hc / h - 0.5, 0.0)
        y0 = min(int(sy), hc - 1)
        y1, fy = min(y0 + 1, hc - 1), np.float32(sy - y0)
        for c in range(channels):
            upper, lower, o = coarse[c, y0], coarse[c, y1], out[c, y]
            for x in range(w):
                fx = across[x]
                top = (one - fx) * upper[left[x]] + fx * upper[right[x]]
                bottom = (one - fx) * lower[left[x]] + fx * lower[right[x]]
                o[x] += scale * ((one - fy) * top + fy * bottom)


def pooled(image: np.ndarray, factor: int) -> np.ndarray:
    """An ``(h, w)`` image averaged over ``factor × factor`` blocks (:func:`pool`; the image itself when ``factor`` is 1)."""
    return image if factor == 1 else pool(image[None], factor)[0]


def resample_field(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``(2, h, w)`` field in pixels on a grid of ``size`` made by :func:`pool` (pixel centres matched,
    vectors scaled by the size ratio: :func:`regcore.polish.resample_flow` without PyTorch)."""
    if flow.shape[1:] == tuple(size):
        return flow
    out = np.zeros((2, *size), np.float32)
    upsample_add(flow, 1.0, out)
    out[0] *= size[0] / flow.shape[1]
    out[1] *= size[1] / flow.shape[2]
    return out
