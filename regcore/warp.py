"""Differentiable warping (spatial transformer) in pixel units, field composition and integration.

Convention (the project's contract): a displacement field ``flow`` has shape ``(N, 2, H, W)``
in pixels, channel 0 the row (y) displacement and channel 1 the column (x) displacement.
Warping is backward::

    warped[y, x] = image[y + flow[0, y, x], x + flow[1, y, x]]      (bilinear)

``grid_sample`` works in normalised coordinates; with ``align_corners=True`` pixel index 0 maps
to -1 and index ``size - 1`` to +1, which is exactly ``scipy.ndimage.map_coordinates``'s
pixel-centre convention. Using ``align_corners=False`` here would shift every sample by half a
pixel and scale it by ``size / (size - 1)``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpatialTransformer", "VecInt", "compose", "identity_grid", "resize_flow", "resize_image", "warp"]


def identity_grid(size: tuple[int, int], device=None, dtype=torch.float32) -> Tensor:
    """Pixel coordinates of every pixel: ``(2, H, W)``, channel 0 the row index, 1 the column."""
    rows = torch.arange(size[0], device=device, dtype=dtype)
    cols = torch.arange(size[1], device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"))


#: Sampling grids of images up to this many pixels are kept (at most 32 of them, 2 MB each at
#: 512²): the sizes registration works at. A larger one (a 4096² warp is a 134 MB grid) is made
#: when needed and freed after, so that a long-running process does not hold it for good.
CACHED_GRID_PIXELS = 512 * 512


def _sampling_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``grid_sample``'s coordinates of every pixel of an ``h × w`` image: ``(1, H, W, 2)`` as (x, y) in [-1, 1]."""
    return (_cached_grid if h * w <= CACHED_GRID_PIXELS else _grid)(h, w, device, dtype)


def _grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # A normal tensor even when first asked for in inference mode: cached, it may later meet autograd.
    with torch.inference_mode(False):
        # Pixel index p maps to 2 p / (size - 1) - 1; a size-1 axis maps to -1 (its only pixel).
        ys = torch.arange(h, device=device, dtype=dtype) * (2.0 / max(h - 1, 1)) - 1.0
        xs = torch.arange(w, device=device, dtype=dtype) * (2.0 / max(w - 1, 1)) - 1.0
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]


_cached_grid = functools.lru_cache(maxsize=32)(_grid)


def warp(image: Tensor, flow: Tensor, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Backward-warp ``image`` by a pixel displacement field.

    Args:
        image: ``(N, C, H, W)`` images (or fields) to resample.
        flow: ``(N, 2, H, W)`` displacement in pixels (channel 0 rows, channel 1 columns).
        mode: ``"bilinear"`` or ``"nearest"`` (for label maps).
        padding_mode: how samples outside the image are filled: ``"border"`` (repeat the edge),
            ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(N, C, H, W)``: ``out[n, c, y, x] = image[n, c, y + flow[n, 0, y, x], x + flow[n, 1, y, x]]``.
    """
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected image (N, C, H, W) and flow (N, 2, H, W), got {tuple(image.shape)} and {tuple(flow.shape)}")
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in size")
    h, w = image.shape[-2:]
    # grid_sample wants (x, y) in the last axis: the flow's channels reversed, in normalised units.
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=flow.device, dtype=flow.dtype)
    grid = _sampling_grid(h, w, flow.device, flow.dtype) + flow.flip(1).permute(0, 2, 3, 1) * scale
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def compose(first: Tensor, second: Tensor) -> Tensor:
    """The single field equal to warping by ``first`` and then by ``second``.

    ``warp(warp(img, first), second) ≈ warp(img, compose(first, second))`` with one interpolation
    instead of two: ``second(x) + first(x + second(x))``. Shapes ``(N, 2, H, W)``, pixels.
    """
    return second + warp(first, second)


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample a pixel field ``(N, 2, h, w)`` to ``(N, 2, H, W)`` and rescale its vectors.

    Pixel centres are matched corner to corner (``align_corners=True``), so a displacement of
    ``d`` pixels at size ``h`` becomes ``d * (H - 1) / (h - 1)`` at size ``H``.
    """
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=True)
    scale = torch.tensor([(size[0] - 1) / max(h - 1, 1), (size[1] - 1) / max(w - 1, 1)], device=flow.device, dtype=flow.dtype)
    return out * scale.view(1, 2, 1, 1)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample images ``(N, C, h, w)`` to ``(N, C, H, W)`` on :func:`resize_flow`'s grid.

    Output pixel ``i`` samples input position ``i * (h - 1) / (H - 1)`` (pixel centres matched
    corner to corner, ``align_corners=True``), so an image resized here and a field resized by
    :func:`resize_flow` stay in register. Shrinking by a factor ``f ≥ 2`` first averages cells of
    ``floor(f)`` pixels (edges repeated where a cell reaches past the border) against aliasing, and
    samples the cell means at those positions: ``F.interpolate(antialias=True)`` would centre each
    output pixel on its cell instead (the ``align_corners=False`` grid), up to ``(f - 1) / 2`` px
    away from where the field's pixel is.
    """
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    pads, axes = [], []
    for n_in, n_out in zip((h, w), size, strict=True):
        k = max(1, n_in // n_out)  # cell side
        before = (k - 1) // 2  # cell j is centred at input position j k - before + (k - 1) / 2
        first = (k - 1) / 2 - before
        cells = math.ceil((n_in - 1 - first) / k) + 1  # enough for the last centre to reach n_in - 1
        pads.append((before, cells * k - n_in - before, k))
        at = torch.arange(n_out, device=image.device, dtype=image.dtype) * ((n_in - 1) / max(n_out - 1, 1))
        axes.append((at - first) / k * (2.0 / max(cells - 1, 1)) - 1.0)  # in the cell grid, normalised
    (top, bottom, ky), (left, right, kx) = pads
    if (ky, kx) != (1, 1):
        image = F.avg_pool2d(F.pad(image, (left, right, top, bottom), mode="replicate"), (ky, kx))
    ys, xs = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack((xs, ys), dim=-1).expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class SpatialTransformer(nn.Module):
    """Layer form of :func:`warp`: ``(image (N, C, H, W), flow (N, 2, H, W) px) -> (N, C, H, W)``."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: Tensor, flow: Tensor) -> Tensor:
        return warp(image, flow, self.mode, self.padding_mode)


class VecInt(nn.Module):
    """Integrates a stationary velocity field by scaling and squaring.

    ``(N, 2, H, W)`` velocity in pixels -> ``(N, 2, H, W)`` displacement in pixels. The field is
    divided by ``2**steps`` (small enough to be invertible), then composed with itself ``steps``
    times, which approximates the flow's exponential: a diffeomorphism in the continuum limit.
    """

    def __init__(self, steps: int = 7) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps = steps

    def forward(self, velocity: Tensor) -> Tensor:
        flow = velocity / (2**self.steps)
        for _ in range(self.steps):
            flow = compose(flow, flow)
        return flow
