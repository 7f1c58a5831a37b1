"""``register(source, target)``: the one call most users need, and what it returns.

``register()`` runs the pipeline of :mod:`regcore.pipeline` (prepare -> initial field ->
refinement -> result); the methods it can run are :data:`regcore.pipeline.METHODS`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .io import ImageLike, save_image
from .metrics import image_scores, jacobian_determinant, jacobian_stats

# The pipeline's constants are importable from here too, where they were first defined.
from .pipeline import DEFAULT_OPTIMIZE_STEPS as DEFAULT_OPTIMIZE_STEPS
from .pipeline import DEFAULT_REFINE_STEPS as DEFAULT_REFINE_STEPS
from .pipeline import DEFAULT_REG_WEIGHT, NET_MAX_SIDE, Options, Progress, choose_method, load_pair, prepare, to_source_grid
from .pipeline import INVERTED_BELOW as INVERTED_BELOW
from .pipeline import METHODS as METHODS
from .pipeline import MIN_SIDE as MIN_SIDE
from .pipeline import NET_SIDE as NET_SIDE
from .pipeline import POLARITIES as POLARITIES
from .pipeline import PRESMOOTH_MODES as PRESMOOTH_MODES
from .pipeline import REFINE_LEVELS as REFINE_LEVELS

__all__ = ["RegistrationResult", "register"]


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    Attributes:
        flow: ``(2, H, W)`` float32 displacement in pixels (channel 0 rows, 1 columns) with
            ``warped[y, x] = source[y + flow[0, y, x], x + flow[1, y, x]]``.
        warped: ``(H, W)`` float32 in [0, 1], the source warped onto the target.
        source, target: the ``(H, W)`` float32 images as registered (target at the source's size).
        method: ``"net"``, ``"net+refine"``, ``"optimize"`` (or another method's name).
        model: the checkpoint used, or None.
        time_s: wall time of the registration itself (loading and scoring excluded).
        notes: what was done that the caller did not ask for (resizing, fallbacks), one line each.
        before, after: scores of (source, target) and of (warped, target): ``mse``, ``ncc``,
            ``local_ncc``; ``after`` adds ``folding_percent`` and ``jacobian_min``. Computed on
            first use and then kept: scoring costs about as much as a network pass, and a caller
            that only wants the field should not pay for it.
    """

    flow: np.ndarray
    warped: np.ndarray
    source: np.ndarray
    target: np.ndarray
    method: str
    model: str | None
    time_s: float
    notes: list[str] = field(default_factory=list)

    @cached_property
    def before(self) -> dict[str, float]:
        return image_scores(self.source, self.target)

    @cached_property
    def after(self) -> dict[str, float]:
        return image_scores(self.warped, self.target) | jacobian_stats(self.flow)

    @property
    def mse(self) -> float:
        return self.after["mse"]

    @property
    def ncc(self) -> float:
        return self.after["ncc"]

    @property
    def local_ncc(self) -> float:
        return self.after["local_ncc"]

    @property
    def folding_percent(self) -> float:
        return self.after["folding_percent"]

    @property
    def jacobian(self) -> np.ndarray:
        """``(H, W)`` Jacobian determinant of ``p -> p + flow(p)`` (≤ 0 where it folds)."""
        return jacobian_determinant(self.flow)

    def metrics(self) -> dict:
        """JSON-ready summary: method, model, shape, before/after scores, time and notes."""
        return {
            "method": self.method,
            "model": self.model,
            "shape": list(self.flow.shape[1:]),
            "before": self.before,
            "after": self.after,
            "time_s": self.time_s,
            "notes": self.notes,
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``warped.png``, ``flow.npy`` and ``metrics.json`` into ``out_dir`` (created if needed)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"warped": out / "warped.png", "flow": out / "flow.npy", "metrics": out / "metrics.json"}
        save_image(paths["warped"], self.warped)
        np.save(paths["flow"], self.flow.astype(np.float32))
        paths["metrics"].write_text(json.dumps(self.metrics(), indent=2) + "\n")
        return paths


def register(
    source: ImageLike,
    target: ImageLike,
    *,
    method: str | None = None,
    model: str | os.PathLike | None = None,
    refine_steps: int | None = None,
    similarity: str = "ncc",
    reg_weight: float = DEFAULT_REG_WEIGHT,
    device: str | torch.device = "cpu",
    max_side: int = NET_MAX_SIDE,
    progress: Progress | None = None,
    timeout_s: float | None = None,
    polarity: str = "auto",
    presmooth: str = "auto",
    polish: bool = True,
) -> RegistrationResult:
    """Register ``source`` to ``target``: find ``flow`` with ``warp(source, flow) ≈ target``.

    Args:
        source, target: numpy arrays, PIL images, file paths or file bytes (see
            :func:`regcore.io.load_image`). The target is resampled to the source's size when
            they differ, and the result is in the source's pixel grid.
        method: a name in :data:`regcore.METHODS`: ``"net"`` (one network pass at about
            ``NET_SIDE`` px, then a Lucas–Kanade pyramid up to full resolution, see ``polish``),
            ``"net+refine"`` (the network's field, then ``refine_steps`` of per-pair Adam
            optimisation), ``"optimize"`` (optimisation only, multi-resolution, no network), or a
            classical optical flow: ``"tvl1"``, ``"ilk"`` (scikit-image), ``"dis"``,
            ``"dis-fast"``, ``"dis-fine"``, ``"farneback"`` (OpenCV; :mod:`regcore.classical`).
            Default: ``DEFAULT_METHOD`` when a checkpoint is available, else ``"optimize"`` (and
            a note says so).
        model: a checkpoint folder, shipped checkpoint name or Hub repo id; default the shipped
            local-NCC model. Used by the network methods only.
        refine_steps: optimisation steps per pyramid level (``"net+refine"``: up to
            ``REFINE_LEVELS`` levels starting from the network's field, default
            ``DEFAULT_REFINE_STEPS``; ``"optimize"``: every level down to 16 px, default
            ``DEFAULT_OPTIMIZE_STEPS``); other methods take no steps and ignore it.
        similarity: what the optimisation maximises: ``"ncc"`` (local NCC), ``"ncc2"``,
            ``"gncc"`` or ``"mse"``.
        reg_weight: smoothness weight of the optimisation.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        max_side: images with a longer side are registered at this size and the field scaled
            back (a note says so).
        progress: called as ``progress(done, total, loss)`` during optimisation.
        timeout_s: time budget in seconds for the registration (loading excluded); the
            optimisation is stopped with a RegcoreError once it is exceeded (checked after each
            step; a network pass or a classical method is not interrupted). None: no limit.
        polarity: ``"auto"``: when source and target are negatively correlated as whole images
            (below ``INVERTED_BELOW``), the target's contrast is taken as inverted and the field
            is found against ``1 - target`` (a note says so; ``warped`` and the scores still use
            the target as given). Signed local NCC, which the shipped models learned, reads an
            inversion as a mismatch everywhere. ``"keep"``: never invert.
        presmooth: what the optimisation (``"net+refine"``, ``"optimize"``) compares. ``"auto"``:
            when :func:`regcore.noise.noise_std` finds noise above ``NOISY_ABOVE`` in either
            image, both are smoothed (Gaussian, ``SMOOTH_SIGMA`` px) and compared over a wider
            window (``SMOOTH_WIN``), which keeps the field from fitting the noise (a note says
            so); clean images are compared as they are. ``"on"`` / ``"off"``: always / never.
            ``warped`` and the scores always use the images as given.
        polish: ``"net"`` only: refine the network's field by Lucas–Kanade steps on locally
            normalised images over a pyramid up to full resolution (:func:`regcore.polish.polish`),
            which corrects the network where the images are textured and catches what it missed.
            False: the network's field as it is (resampled to the images' size).

    Raises:
        ImageError: an input is not a usable image (unreadable, NaN, larger than
            ``regcore.io.MAX_PIXELS``, ...). CheckpointError: the model cannot be loaded.
        RegcoreError: another invalid argument, a side under ``MIN_SIDE`` px, the time budget
            exceeded, or an optimisation that diverged.
    """
    options = Options(
        method, model, refine_steps, similarity, reg_weight, device, max_side, progress, timeout_s, polarity, presmooth, polish
    )
    notes: list[str] = []
    src, tgt = load_pair(source, target, notes)  # 1. prepare: read and check,
    choice = choose_method(options, notes)  # pick the method and load its network,
    start = time.perf_counter()
    work = prepare(src, tgt, options, choice, notes, start)  # make the working pair
    strategy = METHODS[choice.method]
    flow = strategy.start(work)  # 2. initial field (None: zero)
    flow = strategy.refine(work, flow)  # 3. refinement
    flow, warped = to_source_grid(work, flow)  # 4. result, in the source's grid
    elapsed = time.perf_counter() - start
    return RegistrationResult(
        flow=flow[0].cpu().numpy().astype(np.float32),
        warped=warped[0, 0].cpu().numpy().astype(np.float32),
        source=src,
        target=work.full_target[0, 0].cpu().numpy().astype(np.float32),
        method=choice.method,
        model=choice.model,
        time_s=elapsed,
        notes=notes,
    )
