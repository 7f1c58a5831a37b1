"""Similarity and regularisation losses for registration, as small ``nn.Module`` classes.

Similarity losses take ``(warped, target)`` of shape ``(N, 1, H, W)`` with intensities in [0, 1]
and return a scalar to minimise. Regularisers take a field ``(N, 2, H, W)`` in pixels.
Functions with the same names in lower case return the similarity itself (not a loss). The window
mean behind local NCC is :func:`regcore.filters.box_mean`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .filters import box_mean  # re-exported: it was defined here first

__all__ = ["MSE", "NCC", "BendingEnergy", "GlobalNCC", "Grad", "box_mean", "global_ncc", "local_ncc_map", "make_similarity"]

# Added to each image's local variances, relative to that image's global variance: on a flat window
# the variance is ~0 and NCC would be 0/0. Because the term scales with the image, NCC stays exactly
# invariant to an affine intensity change b = s a + t (s > 0); identical windows score exactly 1 and
# a flat window against a textured one scores about 0. NCC_FLOOR keeps wholly constant images finite.
NCC_EPS = 1e-3
NCC_FLOOR = 1e-10


def local_ncc_map(a: Tensor, b: Tensor, win: int = 9, squared: bool = False) -> Tensor:
    """Local normalised cross-correlation of two images over square ``win × win`` windows.

    Args:
        a, b: ``(N, 1, H, W)`` images in [0, 1].
        win: odd window side in pixels. Windows are cropped at the image border.
        squared: return NCC² (in [0, 1]), which also rewards inverted contrast.

    Returns:
        ``(N, 1, H, W)`` map in [-1, 1] (or [0, 1] if squared); 1 where the windows match up to
        an affine intensity change ``b = s·a + t`` with ``s > 0``.
    """
    if win < 1 or win % 2 == 0:
        raise ValueError(f"win must be a positive odd number, got {win}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.float(), b.float()
    stats = box_mean(torch.cat((a, b, a * a, b * b, a * b), dim=1), win)
    ma, mb, aa, bb, ab = stats.split(1, dim=1)
    var_a = (aa - ma * ma).clamp_min(0.0)
    var_b = (bb - mb * mb).clamp_min(0.0)
    cross = ab - ma * mb
    eps_a = NCC_EPS * a.var(dim=(-2, -1), keepdim=True, unbiased=False) + NCC_FLOOR
    eps_b = NCC_EPS * b.var(dim=(-2, -1), keepdim=True, unbiased=False) + NCC_FLOOR
    # |cross| for the squared form makes it exactly 1 for s < 0 too (inverted contrast).
    ncc = ((cross.abs() if squared else cross) + torch.sqrt(eps_a * eps_b)) / torch.sqrt((var_a + eps_a) * (var_b + eps_b))
    return ncc * ncc if squared else ncc


def global_ncc(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of whole images: ``(N, C, H, W)`` x2 -> ``(N,)`` in [-1, 1].

    Defined as 1 when both images are constant, 0 when exactly one is.
    """
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    cross = (a * b).mean(dim=1)
    eps = 1e-12
    return (cross + eps) / torch.sqrt((a.square().mean(dim=1) + eps) * (b.square().mean(dim=1) + eps))


class MSE(nn.Module):
    """Mean squared intensity difference: ``(N, 1, H, W)`` x2 -> scalar ≥ 0 (0 when equal)."""

    def forward(self, warped: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(warped, target)


class NCC(nn.Module):
    """Local NCC loss: ``-mean(local NCC)``, in [-1, 1] (-1 is a perfect match; minimise it).

    Parameters:
        win: odd square window side in pixels. Default 9 (VoxelMorph's).
        squared: use NCC² (range [-1, 0]), invariant to contrast inversion. Default False.
    """

    def __init__(self, win: int = 9, squared: bool = False) -> None:
        super().__init__()
        self.win = win
        self.squared = squared

    def forward(self, warped: Tensor, target: Tensor) -> Tensor:
        return -local_ncc_map(warped, target, self.win, self.squared).mean()


class GlobalNCC(nn.Module):
    """Global NCC loss: ``-mean(global_ncc)`` over the batch, in [-1, 1]."""

    def forward(self, warped: Tensor, target: Tensor) -> Tensor:
        return -global_ncc(warped, target).mean()


def _diffs(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences of ``(N, C, H, W)`` along rows and along columns."""
    return flow[:, :, 1:, :] - flow[:, :, :-1, :], flow[:, :, :, 1:] - flow[:, :, :, :-1]


class Grad(nn.Module):
    """Smoothness (diffusion) regulariser: mean squared (or absolute) spatial gradient of the field.

    ``(N, 2, H, W)`` pixels -> scalar ≥ 0; 0 for any constant field (a pure translation).

    Parameters:
        penalty: ``"l2"`` (default) or ``"l1"``.
    """

    def __init__(self, penalty: str = "l2") -> None:
        super().__init__()
        if penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
        self.penalty = penalty

    def forward(self, flow: Tensor) -> Tensor:
        dy, dx = _diffs(flow)
        if self.penalty == "l2":
            return (dy.square().mean() + dx.square().mean()) / 2
        return (dy.abs().mean() + dx.abs().mean()) / 2


class BendingEnergy(nn.Module):
    """Bending energy: mean of squared second derivatives ``u_yy² + u_xx² + 2 u_xy²``.

    ``(N, 2, H, W)`` pixels -> scalar ≥ 0; 0 for any affine field.
    """

    def forward(self, flow: Tensor) -> Tensor:
        dy, dx = _diffs(flow)
        dyy, dyx = _diffs(dy)
        _, dxx = _diffs(dx)
        return dyy.square().mean() + dxx.square().mean() + 2 * dyx.square().mean()


def make_similarity(name: str, win: int = 9) -> nn.Module:
    """The similarity loss called ``name``: ``"ncc"`` (local), ``"ncc2"`` (squared local), ``"gncc"`` or ``"mse"``."""
    losses = {"ncc": lambda: NCC(win), "ncc2": lambda: NCC(win, squared=True), "gncc": GlobalNCC, "mse": MSE}
    if name not in losses:
        raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(losses)}")
    return losses[name]()
