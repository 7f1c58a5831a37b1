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
from .metrics import image_scores, jacobian_determinant, jacobian_summary

# The pipeline's constants are importable from here too, where they were first defined.
from .pipeline import DEFAULT_OPTIMIZE_STEPS as DEFAULT_OPTIMIZE_STEPS
from .pipeline import DEFAULT_REFINE_STEPS as DEFAULT_REFINE_STEPS
from .pipeline import DEFAULT_REG_WEIGHT, NET_MAX_SIDE, Options, Progress, check_time, choose_method, finish, load_pair, prepare
from .pipeline import HALF_NET_FROM as HALF_NET_FROM
from .pipeline import INVERTED_BELOW as INVERTED_BELOW
from .pipeline import METHODS as METHODS
from .pipeline import MIN_SIDE as MIN_SIDE
from .pipeline import POLARITIES as POLARITIES
from .pipeline import PRESMOOTH_MODES as PRESMOOTH_MODES
from .pipeline import REFINE_LEVELS as REFINE_LEVELS
from .warp import resize_flow, warp

__all__ = ["RegistrationResult", "register"]


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, np.float32))[None]


@dataclass(eq=False)
class RegistrationResult:
    """What :func:`register` returns.

    Attributes:
        source, target: the ``(H, W)`` float32 images as registered (target at the source's size).
        method: ``"net"``, ``"net+refine"``, ``"optimize"`` (or another method's name).
        model: the checkpoint used, or None.
        time_s: wall time of the registration itself (loading, scaling back and scoring excluded).
        registered_flow: ``(2, h, w)`` float32 px, the field as found at the registered resolution
            ``(h, w)`` (the source's size with the longer side capped at ``max_side``; the same
            array as ``flow`` when nothing was capped).
        registered_source, registered_target: ``(h, w)`` the pair at that resolution (the target's
            contrast as given).
        notes: what was done that the caller did not ask for (resizing, fallbacks), one line each.
        source_shape: the full source's ``(H, W)`` when this result is :attr:`registered`, the view
            of a larger one at its registered resolution; None otherwise.

    Computed on first use and then kept (a caller who wants only part of it should not pay for the
    rest; at 4096² the full-size field alone is 134 MB):

        flow: ``(2, H, W)`` float32 displacement in pixels (channel 0 rows, 1 columns) with
            ``warped[y, x] = source[y + flow[0, y, x], x + flow[1, y, x]]``: ``registered_flow``
            resampled to the source's size, its vectors scaled (:func:`regcore.warp.resize_flow`).
        warped: ``(H, W)`` float32 in [0, 1], the source warped onto the target.
        jacobian: ``(H, W)`` Jacobian determinant of ``p -> p + flow(p)`` (≤ 0 where it folds).
        before, after: scores of (source, target) and of (warped, target): ``mse``, ``ncc``,
            ``local_ncc``; ``after`` adds ``folding_percent`` and ``jacobian_min``.
        registered: the same registration at its registered resolution, as a result of its own
            (``flow`` = ``registered_flow``, scores and pictures at that size; this result itself
            when nothing was capped): what the app shows and saves, whatever the input's size.
    """

    source: np.ndarray
    target: np.ndarray
    method: str
    model: str | None
    time_s: float
    registered_flow: np.ndarray
    registered_source: np.ndarray
    registered_target: np.ndarray
    notes: list[str] = field(default_factory=list)
    source_shape: tuple[int, int] | None = None

    @property
    def shrunk(self) -> bool:
        """Whether the registration ran at a smaller size than the source's."""
        return self.registered_flow.shape[1:] != self.source.shape

    @cached_property
    def flow(self) -> np.ndarray:
        if not self.shrunk:
            return self.registered_flow
        return resize_flow(_tensor(self.registered_flow), self.source.shape)[0].numpy()

    @cached_property
    def warped(self) -> np.ndarray:
        with torch.inference_mode():
            # Bilinear weights can sum to 1 + 1 ulp in float32: clamp to keep the [0, 1] contract.
            return warp(_tensor(self.source)[None], _tensor(self.flow)).clamp_(0.0, 1.0)[0, 0].numpy()

    @cached_property
    def jacobian(self) -> np.ndarray:
        return jacobian_determinant(self.flow)

    @cached_property
    def before(self) -> dict[str, float]:
        return image_scores(self.source, self.target)

    @cached_property
    def after(self) -> dict[str, float]:
        return image_scores(self.warped, self.target) | jacobian_summary(self.jacobian)

    @cached_property
    def registered(self) -> RegistrationResult:
        if not self.shrunk:
            return self
        h, w = self.source.shape
        small = self.registered_source, self.registered_target
        return RegistrationResult(
            *small, self.method, self.model, self.time_s, self.registered_flow, *small, notes=self.notes, source_shape=(h, w)
        )

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

    def metrics(self) -> dict:
        """JSON-ready summary: method, model, the field's grid and scale, before/after scores, time and notes.

        ``shape`` is the grid of ``flow`` (and of flow.npy); ``source_shape`` the source's.
        ``field_scale`` (rows, columns) takes that grid to the source's: a displacement ``d`` at
        grid pixel ``p`` is ``d * field_scale`` at source pixel ``p * field_scale``
        (:func:`regcore.warp.resize_flow` does both); ``[1, 1]`` when they are the same.
        """
        shape = self.flow.shape[1:]
        full = self.source_shape or shape
        return {
            "method": self.method,
            "model": self.model,
            "shape": list(shape),
            "source_shape": list(full),
            "field_scale": [(big - 1) / max(small - 1, 1) for big, small in zip(full, shape, strict=True)],
            "before": self.before,
            "after": self.after,
            "time_s": self.time_s,
            "notes": self.notes,
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``warped.png``, ``flow.npy`` (``flow``, float32) and ``metrics.json`` into ``out_dir`` (created if needed).

        For files proportional to the work whatever the input's size, save :attr:`registered`.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"warped": out / "warped.png", "flow": out / "flow.npy", "metrics": out / "metrics.json"}
        save_image(paths["warped"], self.warped)
        np.save(paths["flow"], self.flow.astype(np.float32, copy=False))
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
        method: a name in :data:`regcore.METHODS`: ``"net"`` (one network pass + a Lucas–Kanade
            polish, see ``polish``), ``"net+refine"`` (the network's field, then ``refine_steps``
            of per-pair optimisation), ``"optimize"`` (optimisation only, multi-resolution, no
            network), or a classical optical flow: ``"tvl1"``, ``"ilk"`` (scikit-image),
            ``"dis"``, ``"dis-fast"``, ``"dis-fine"``, ``"farneback"`` (OpenCV;
            :mod:`regcore.classical`). Default: ``"net+refine"`` when a checkpoint is
            available, else ``"optimize"`` (and a note says so).
        model: a checkpoint folder or a shipped checkpoint's name (``regcore.available_models()``);
            default the shipped local-NCC model. ``"hf:user/repo"`` fetches a model from the
            Hugging Face Hub: the only case in which ``register()`` makes a network request (an
            unknown name without the prefix is an error listing the shipped models). Used by the
            network methods only.
        refine_steps: optimisation steps per pyramid level (``"net+refine"``: up to
            ``REFINE_LEVELS`` levels starting from the network's field, default
            ``DEFAULT_REFINE_STEPS``; ``"optimize"``: every level down to 16 px, default
            ``DEFAULT_OPTIMIZE_STEPS``); other methods take no steps and ignore it.
        similarity: what the optimisation maximises: ``"ncc"`` (local NCC), ``"ncc2"``,
            ``"gncc"`` or ``"mse"``.
        reg_weight: smoothness weight of the optimisation.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        max_side: images with a longer side are registered at this size (a note says so); the
            field is scaled back on first use of ``result.flow``, and ``result.registered`` is
            the result at the registered size. The shorter side must stay at least ``MIN_SIDE``.
        progress: called as ``progress(done, total, loss)`` during optimisation.
        timeout_s: time budget in seconds for the whole call, from decoding the images on; once
            it is exceeded, a RegcoreError stops the work (checked after reading the images,
            between the steps and after each optimisation step; a network pass or a classical
            method is not interrupted, and scaling the field back happens later, on first use
            of ``flow``). None: no limit.
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
        polish: ``"net"`` only: follow the network's pass with a Lucas–Kanade step on locally
            normalised images (:mod:`regcore.polish`), which corrects the network where the
            images are most textured; from ``HALF_NET_FROM`` px on, the network runs at half
            resolution and two steps follow. False: the network's field as it is, at full
            resolution.

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
    received = time.perf_counter()  # timeout_s counts from here, decoding included
    src, tgt = load_pair(source, target, notes)  # 1. prepare: read and check,
    choice = choose_method(options, notes)  # pick the method and load its network,
    check_time(options, received, "while reading the images")
    start = time.perf_counter()
    work = prepare(src, tgt, options, choice, notes, received)  # make the working pair
    strategy = METHODS[choice.method]
    flow = strategy.start(work)  # 2. initial field (None: zero)
    check_time(options, received, "after the initial field")
    flow = strategy.refine(work, flow)  # 3. refinement
    check_time(options, received, "after the refinement")
    flow = finish(work, flow)  # 4. result, at the registered resolution
    elapsed = time.perf_counter() - start

    def numpy(tensor: torch.Tensor) -> np.ndarray:  # (1, C, h, w) -> (C, h, w), or (h, w) for one channel
        return tensor[0].squeeze(0).cpu().numpy().astype(np.float32, copy=False)

    target = numpy(work.full_target)
    shrunk = work.size != src.shape
    return RegistrationResult(
        source=src,
        target=target,
        method=choice.method,
        model=choice.model,
        time_s=elapsed,
        registered_flow=numpy(flow),
        registered_source=numpy(work.source) if shrunk else src,
        registered_target=numpy(work.given_target) if shrunk else target,
        notes=notes,
    )
