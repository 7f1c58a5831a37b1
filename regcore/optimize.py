"""Per-pair optimisation of a displacement field ("instance optimisation").

Used two ways by :func:`regcore.register`: from a zero field over a multi-resolution pyramid
(``"optimize"``, the classical iterative method, no network), and from the network's field over
a short pyramid (``"net+refine"``, see ``regcore.pipeline.REFINE_LEVELS``). At each level the field is
parameterised as a correction on a grid twice as coarse as the level being optimised, upsampled
bilinearly: that keeps it smooth where the images are flat (where Adam would otherwise amplify
tiny gradients into noise) and halves the work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import RegcoreError
from .losses import Grad, make_similarity
from .warp import resize_flow, resize_image, warp

__all__ = ["level_size", "optimize_flow", "pyramid", "pyramid_levels"]


def pyramid_levels(size: tuple[int, int], coarsest: int = 16) -> int:
    """How many pyramid levels (each half the previous) keep the coarsest side ≥ ``coarsest`` px."""
    levels, side = 1, min(size)
    while side // 2 >= coarsest:
        side //= 2
        levels += 1
    return levels


def level_size(size: tuple[int, int], level: int) -> tuple[int, int]:
    """The image size at pyramid ``level`` (0 = full resolution, each level half the previous, rounded up)."""
    factor = 2**level
    return (-(-size[0] // factor), -(-size[1] // factor))


def pyramid(source: Tensor, target: Tensor, levels: int) -> list[tuple[Tensor, Tensor]]:
    """The pair at each of ``levels`` pyramid levels, coarsest first, on :func:`regcore.warp.resize_flow`'s grid.

    Images are shrunk with :func:`regcore.warp.resize_image`, which matches pixel centres corner
    to corner as ``resize_flow`` does for the fields passed between levels, so a displacement of
    ``d`` px at full resolution is ``d * (h - 1) / (H - 1)`` px at a level of side ``h``, at the same
    place, at every level (cell averages with ``avg_pool2d`` are centred ``(f - 1) / 2`` px off).
    """
    size = tuple(source.shape[-2:])
    sizes = [level_size(size, level) for level in reversed(range(levels))]
    return [(resize_image(source, s), resize_image(target, s)) for s in sizes]


def _upsample(delta: Tensor, size: tuple[int, int]) -> Tensor:
    """Coarse correction -> level grid; its values are already in the level's pixels."""
    return F.interpolate(delta, size=size, mode="bilinear", align_corners=True)


def optimize_flow(
    source: Tensor,
    target: Tensor,
    init_flow: Tensor | None = None,
    steps: int = 100,
    levels: int = 1,
    similarity: str = "ncc",
    reg_weight: float = 1.0,
    lr: float = 0.1,
    win: int = 9,
    callback: Callable[[int, int, float], None] | None = None,
) -> Tensor:
    """Find ``flow`` minimising ``similarity(warp(source, flow), target) + reg_weight * Grad(flow)``.

    Args:
        source, target: ``(1, 1, H, W)`` images in [0, 1].
        init_flow: ``(1, 2, H, W)`` starting field in pixels (zero if None).
        steps: Adam steps per pyramid level.
        levels: pyramid levels, coarsest first (1 = full resolution only).
        similarity: ``"ncc"``, ``"ncc2"``, ``"gncc"`` or ``"mse"`` (see :func:`make_similarity`).
        reg_weight: weight of the smoothness term (mean squared gradient of the field in pixels).
        lr: Adam step size, in pixels of the level being optimised.
        win: local NCC window side in pixels (at every level).
        callback: called as ``callback(done, total, loss)`` after each step (progress bars).

    Returns:
        ``(1, 2, H, W)`` field in pixels, detached.

    Raises:
        RegcoreError: the field became NaN or infinite (a non-finite start field or weight).
    """
    size = tuple(source.shape[-2:])
    sim, reg = make_similarity(similarity, win), Grad()
    flow = torch.zeros((1, 2, *size), device=source.device) if init_flow is None else init_flow.detach().float()
    total, done = steps * levels, 0
    for src, tgt in pyramid(source, target, levels):
        here = tuple(src.shape[-2:])
        base = resize_flow(flow, here)
        coarse = (max(1, (here[0] + 1) // 2), max(1, (here[1] + 1) // 2))
        delta = torch.zeros((1, 2, *coarse), device=source.device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        for _ in range(steps):
            current = base + _upsample(delta, here)
            # A NaN in the sampling grid makes grid_sample's CPU backward crash the whole process
            # (segfault, torch 2.13), so stop before warping with a field that is not finite.
            if not bool(torch.isfinite(current).all()):
                raise RegcoreError(f"the optimisation diverged: the field became NaN or infinite at step {done + 1} of {total}")
            loss = sim(warp(src, current), tgt) + reg_weight * reg(current)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if callback is not None:
                callback(done, total, float(loss.detach()))
        with torch.no_grad():
            flow = resize_flow(base + _upsample(delta, here), size)
    return flow.detach()
