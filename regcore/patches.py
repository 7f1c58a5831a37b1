"""Patch inverse search: every small patch of the target finds its own translation, coarse to fine.

The Lucas–Kanade pyramid of :mod:`regcore.polish` averages each window's answer with its
neighbours', which is what makes it accurate on smooth motion, and what pulls an object moving on
its own towards its background. This module estimates motion the other way round, as OpenCV's
DIS optical flow does (Kroeger et al., ECCV 2016; this is regcore's own implementation, in torch):

1. The target is cut into ``patch × patch`` patches every ``stride`` pixels. Each patch looks for
   the translation ``u`` that makes the source, sampled at the patch's pixels moved by ``u``, match
   it (both patches with their mean taken out, so a change of brightness is not motion): a few
   inverse-compositional Gauss–Newton steps, whose 2×2 normal matrix, from the target's gradients,
   is computed once (:func:`search_level`).
2. Before those steps, each patch also tries its four neighbours' translations and keeps whichever
   fits best (propagation): a patch that lies on an object takes the object's motion from the
   patches beside it that found it.
3. The dense field is each pixel's average of the translations of the patches that cover it,
   weighted by ``1 / |residual|`` at that pixel: the patch that fits the pixel decides, so motion
   boundaries stay sharp (densification).
4. Coarse to fine (:func:`patch_search`): the same on the images averaged over 16, 8, 4, 2 and 1
   px blocks, each level starting from the previous level's field.

:func:`regcore.register` uses it in ``method="net+patches"``: its field is a second hypothesis
next to the network's polished one, and :func:`regcore.polish.fuse` takes at each pixel the one
that fits there (``benchmarks/results/results.md``: more accurate on layered motion and periodic
textures, at about twice the default's time).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .filters import gradients
from .polish import downsample, fuse, resample_flow

__all__ = ["FACTORS", "FINE_STRIDE", "FUSE_WIN", "ITERATIONS", "PATCH", "STRIDE", "fuse_with_patches", "patch_search", "search_level"]

#: Side (pixels) of a patch.
PATCH = 8
#: Pixels between neighbouring patches on the coarse levels (each pixel in ``(PATCH / STRIDE)²`` patches).
STRIDE = 4
#: ... and on the two finest levels, where patches are most numerous (less overlap: less than half
#: the search's time at :data:`STRIDE`, and no less accurate on the tuning pairs).
FINE_STRIDE = 6
#: Gauss–Newton steps per patch after each propagation round.
ITERATIONS = 6
#: Propagation rounds per level (each followed by :data:`ITERATIONS` steps).
ROUNDS = 2
#: Block sizes of the pyramid's levels, coarse to fine (levels under 16 px are skipped).
FACTORS: tuple[int, ...] = (16, 8, 4, 2, 1)
#: Residual (intensity, images in [0, 1]) below which a pixel's fit counts as perfect in the
#: densification's ``1 / |residual|`` weights.
FLOOR = 0.01
#: Ridge on each patch's normal matrix, relative to ``patch²`` × the level's mean squared gradient.
RIDGE = 1e-3
#: Levels whose shorter side is under this (px) are skipped.
MIN_LEVEL = 16
#: Side (pixels) of the window over which :func:`fuse_with_patches` compares the two fields' fits:
#: wider than a patch, so that a few textureless pixels do not decide alone (15 rather than 7: 3.63 ->
#: 3.50 px on the layered tuning pairs at 256²).
FUSE_WIN = 15


class _Layout(NamedTuple):
    """Where the patches of an ``h × w`` level lie: ``rows``, ``cols`` ``(P, K)`` pixel indices of each
    patch's ``K = patch²`` pixels, ``grid`` ``(P, K, 2)`` the same as grid_sample's (x, y) in [-1, 1],
    ``scale`` (2,) pixels to those units, the patch grid's ``shape`` and the flat indices ``(P·K,)``."""

    rows: Tensor
    cols: Tensor
    grid: Tensor
    scale: Tensor
    shape: tuple[int, int]
    flat: Tensor


@functools.lru_cache(maxsize=32)
def _layout(h: int, w: int, patch: int, stride: int, device: torch.device) -> _Layout:
    def origins(n: int) -> Tensor:
        # Evenly spread, the last patch flush with the far border, so every pixel is covered.
        count = max(1, -(-(n - patch) // stride) + 1)
        return torch.linspace(0, max(n - patch, 0), count, device=device).round().long()

    top, left = origins(h), origins(w)
    r = torch.arange(patch, device=device)
    shape = (len(top), len(left), patch, patch)
    rows = (top[:, None, None, None] + r[None, None, :, None]).expand(shape).reshape(-1, patch * patch)
    cols = (left[None, :, None, None] + r[None, None, None, :]).expand(shape).reshape(-1, patch * patch)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=device)
    grid = torch.stack((cols * scale[0] - 1, rows * scale[1] - 1), -1).float()
    return _Layout(rows, cols, grid, scale, (len(top), len(left)), (rows * w + cols).reshape(-1))


def _centred(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


def search_level(
    source: Tensor,
    target: Tensor,
    flow: Tensor,
    patch: int = PATCH,
    stride: int = STRIDE,
    iterations: int = ITERATIONS,
    rounds: int = ROUNDS,
) -> Tensor:
    """One level of the patch search (steps 1-3 of the module docstring).

    Args:
        source, target: ``(N, 1, h, w)`` images in [0, 1].
        flow: ``(N, 2, h, w)`` starting field in pixels (channel 0 rows, 1 columns; backward warp):
            each patch starts from its mean over the patch.
        patch, stride: patch side and spacing in pixels.
        iterations, rounds: Gauss–Newton steps per propagation round, and rounds.

    Returns:
        ``(N, 2, h, w)`` field in pixels: the patches' translations, densified.
    """
    n, _, h, w = source.shape
    layout = _layout(h, w, patch, stride, source.device)
    count, size = layout.rows.shape
    template = _centred(target[:, 0][:, layout.rows, layout.cols])  # (N, P, K)
    gy, gx = gradients(target)
    grad_x, grad_y = (_centred(g[:, 0][:, layout.rows, layout.cols]) for g in (gx, gy))
    ridge = RIDGE * size * (gx.square() + gy.square()).mean(dim=(1, 2, 3))[:, None] + 1e-9
    a, b, c = (grad_x * grad_x).sum(-1) + ridge, (grad_x * grad_y).sum(-1), (grad_y * grad_y).sum(-1) + ridge
    det = a * c - b * b
    # The normal matrix's inverse, in the grid's (x, y) order and units.
    inv_xx, inv_xy, inv_yy = c / det * layout.scale[0], -b / det * layout.scale[0], a / det * layout.scale[1]
    inv_yx = -b / det * layout.scale[1]
    # Translations (N, P, 2) in grid units, (x, y): each patch's mean of the starting field.
    u = flow[:, :, layout.rows, layout.cols].mean(-1).flip(1).transpose(1, 2) * layout.scale

    def sampled(offsets: Tensor) -> Tensor:
        """The source at every patch's pixels moved by ``offsets`` ``(N, c·P, 2)`` -> ``(N, c·P, K)``, centred."""
        grid = layout.grid.repeat(offsets.shape[1] // count, 1, 1)[None] + offsets[:, :, None, :]
        return _centred(F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0])

    rows, cols = layout.shape
    for _ in range(rounds):
        spread = F.pad(u.view(n, rows, cols, 2).permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
        neighbours = [
            spread[:, 1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols].reshape(n, count, 2) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
        ]
        candidates = torch.cat((u, *neighbours), dim=1)
        residuals = sampled(candidates).view(n, 5, count, size) - template[:, None]
        before, best = residuals.square().mean(-1).min(dim=1)
        u = candidates.view(n, 5, count, 2).gather(1, best[:, None, :, None].expand(n, 1, count, 2))[:, 0]
        chosen, start = u, residuals.gather(1, best[:, None, :, None].expand(n, 1, count, size))[:, 0]
        for _ in range(iterations):
            residual = sampled(u) - template
            p, q = (grad_x * residual).sum(-1), (grad_y * residual).sum(-1)
            u = u - torch.stack((inv_xx * p + inv_xy * q, inv_yx * p + inv_yy * q), dim=-1)
        # Gauss-Newton can overshoot on a patch with little texture: keep the start if it fit better.
        residual = sampled(u) - template
        kept = (residual.square().mean(-1) <= before)[..., None]
        u, residual = torch.where(kept, u, chosen), torch.where(kept, residual, start)
    weight = 1.0 / residual.abs().clamp_min(FLOOR)  # (N, P, K), from the final translations' residuals
    pixels = (u / layout.scale).flip(-1).transpose(1, 2)  # (N, 2, P) rows, columns
    values = torch.cat((weight[:, None] * pixels[..., None], weight[:, None]), dim=1).reshape(n, 3, count * size)
    total = torch.zeros(n, 3, h * w, device=source.device, dtype=source.dtype).index_add_(2, layout.flat, values).view(n, 3, h, w)
    return total[:, :2] / total[:, 2:].clamp_min(1e-12)


def patch_search(source: Tensor, target: Tensor, factors: Sequence[int] = FACTORS) -> Tensor:
    """The patch search over a pyramid, coarse to fine, from a zero field.

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        factors: block sizes of the levels, coarse to fine; levels whose shorter side is under
            :data:`MIN_LEVEL` (or under a patch) are skipped, the two finest use :data:`FINE_STRIDE`.

    Returns:
        ``(N, 2, H, W)`` field in pixels (channel 0 rows, 1 columns; backward warp).
    """
    size = tuple(source.shape[-2:])
    flow = None
    for factor in factors:
        src, tgt = downsample(source, factor), downsample(target, factor)
        level = tuple(src.shape[-2:])
        if min(level) < max(min(MIN_LEVEL, min(size)), PATCH):
            continue
        flow = torch.zeros((source.shape[0], 2, *level), device=source.device) if flow is None else resample_flow(flow, level)
        flow = search_level(src, tgt, flow, stride=FINE_STRIDE if factor <= 2 else STRIDE)
    if flow is None:
        return torch.zeros((source.shape[0], 2, *size), device=source.device)
    return resample_flow(flow, size)


def fuse_with_patches(source: Tensor, target: Tensor, flow: Tensor) -> Tensor:
    """``flow`` fused pixel by pixel with :func:`patch_search`'s field (:func:`regcore.polish.fuse`:
    the patches' field where it fits the target clearly better over a :data:`FUSE_WIN` window).

    Args:
        source, target: ``(N, 1, H, W)`` images in [0, 1].
        flow: ``(N, 2, H, W)`` field in pixels, e.g. the network's field after the Lucas–Kanade pyramid.

    Returns:
        ``(N, 2, H, W)`` field in pixels.
    """
    return fuse(source, target, (flow, patch_search(source, target)), win=FUSE_WIN)
