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
from .warp import resize_flow, warp

__all__ = ["optimize_flow", "pyramid_levels"]


def pyramid_levels(size: tuple[int, int], coarsest: int = 16) -> int:
    """How many pyramid levels (each half the previous) keep the coarsest side ≥ ``coarsest`` px."""
    levels, side = 1, min(size)
    while side // 2 >= coarsest:
        side //= 2
        levels += 1
    return levels


def _downsample(image: Tensor, factor: int) -> Tensor:
    return image if factor == 1 else F.avg_pool2d(image, factor, ceil_mode=True)


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
    for level in reversed(range(levels)):
        factor = 2**level
        src, tgt = _downsample(source, factor), _downsample(target, factor)
        level_size = tuple(src.shape[-2:])
        base = resize_flow(flow, level_size)
        coarse = (max(1, (level_size[0] + 1) // 2), max(1, (level_size[1] + 1) // 2))
        delta = torch.zeros((1, 2, *coarse), device=source.device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        for _ in range(steps):
            current = base + _upsample(delta, level_size)
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
            flow = resize_flow(base + _upsample(delta, level_size), size)
    return flow.detach()
