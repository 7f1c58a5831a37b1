"""``register(source, target)``: the one call most users need."""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import available_models, load_model
from .errors import RegcoreError
from .inference import network_flow
from .io import ImageLike, input_label, load_image, save_image
from .losses import global_ncc, make_similarity
from .metrics import image_scores, jacobian_determinant, jacobian_stats
from .nets import RegNet
from .noise import NOISY_ABOVE, SMOOTH_SIGMA, SMOOTH_WIN, noise_std, smooth_image
from .optimize import optimize_flow, pyramid_levels
from .polish import lucas_kanade_step
from .warp import resize_flow, warp

__all__ = [
    "DEFAULT_REFINE_STEPS",
    "HALF_NET_FROM",
    "INVERTED_BELOW",
    "METHODS",
    "MIN_SIDE",
    "NET_MAX_SIDE",
    "POLARITIES",
    "PRESMOOTH_MODES",
    "REFINE_LEVELS",
    "RegistrationResult",
    "register",
]

METHODS = ("net", "net+refine", "optimize")
#: Refinement steps per pyramid level of ``"net+refine"`` when ``refine_steps`` is not given.
DEFAULT_REFINE_STEPS = 30
#: Pyramid levels of the ``"net+refine"`` refinement (fewer for small images). The network's
#: error is mostly smooth and low-frequency, which full-resolution steps remove slowly; starting
#: at quarter resolution, 30 steps per level cost about 1.3x 30 full-resolution steps and
#: roughly halved the error of the same model on tuning pairs (photographs deformed with another
#: seed than the benchmark's): 0.53 -> 0.23 px at 256², 0.34 -> 0.29 px at 128².
REFINE_LEVELS = 3
#: From this shorter side (px) on, ``method="net"`` (polished) runs the network at half resolution
#: and polishes at full resolution with two Lucas–Kanade steps instead of one: on 256² tuning
#: photographs 0.19 px in 17 ms, against 0.23 px in 22 ms for the full-resolution pass + one step.
#: At 128² the half-resolution network is too coarse, so smaller images use the full one.
HALF_NET_FROM = 256
#: Optimisation steps per pyramid level of ``"optimize"`` when ``refine_steps`` is not given.
DEFAULT_OPTIMIZE_STEPS = 100
#: Images whose longer side exceeds this are registered at this size; the field is scaled back.
NET_MAX_SIDE = 512
#: Default weight of the smoothness term in the per-pair optimisation.
DEFAULT_REG_WEIGHT = 1.0
#: Smallest accepted side, in pixels: below this there is too little image to align (the local
#: NCC window alone is 9 px) and the result would mean nothing.
MIN_SIDE = 8
#: ``polarity="auto"`` takes the target's contrast as inverted when the whole-image correlation of
#: source and target is below this. Deformed pairs of one image correlate at about +0.5 to +0.9,
#: inverted ones at about -0.5 to -0.9 and unrelated images near 0, so a small negative margin keeps
#: noise from flipping unrelated pairs.
INVERTED_BELOW = -0.1
POLARITIES = ("auto", "keep")
#: ``presmooth``: "auto" smooths for the optimisation only when the images look noisy (regcore.noise).
PRESMOOTH_MODES = ("auto", "on", "off")


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


def _tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(device)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=True, antialias=shrinking).clamp(0, 1)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RegcoreError(f"device {device!r} asked for, but no CUDA GPU is available")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RegcoreError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'") from None


def _check_arguments(
    method: str | None,
    refine_steps: object,
    similarity: str,
    reg_weight: object,
    max_side: object,
    progress: object,
    timeout_s: object,
    polarity: object,
    presmooth_mode: object,
    polish: object,
) -> None:
    """Refuse invalid arguments with one-line messages, before any work is done."""
    if method is not None and method not in METHODS:
        raise RegcoreError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if refine_steps is not None and (not isinstance(refine_steps, numbers.Integral) or isinstance(refine_steps, bool) or refine_steps < 0):
        raise RegcoreError(f"refine_steps must be a whole number >= 0, got {refine_steps!r}")
    try:
        make_similarity(similarity)
    except (ValueError, TypeError) as err:
        raise RegcoreError(str(err)) from None
    # A NaN or negative weight makes the optimisation diverge (and NaN fields crash grid_sample's backward).
    if not isinstance(reg_weight, numbers.Real) or not math.isfinite(reg_weight) or reg_weight < 0:
        raise RegcoreError(f"reg_weight must be a finite number >= 0, got {reg_weight!r}")
    if not isinstance(max_side, numbers.Integral) or isinstance(max_side, bool) or max_side < 16:
        raise RegcoreError(f"max_side must be a whole number of at least 16, got {max_side!r}")
    if progress is not None and not callable(progress):
        raise RegcoreError(f"progress must be a function progress(done, total, loss), got {type(progress).__name__}")
    if timeout_s is not None and (not isinstance(timeout_s, numbers.Real) or not timeout_s > 0):
        raise RegcoreError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    if polarity not in POLARITIES:
        raise RegcoreError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if presmooth_mode not in PRESMOOTH_MODES:
        raise RegcoreError(f"presmooth must be one of {', '.join(PRESMOOTH_MODES)}, got {presmooth_mode!r}")
    if not isinstance(polish, bool):
        raise RegcoreError(f"polish must be True or False, got {polish!r}")


def _check_size(image: np.ndarray, label: str) -> None:
    if min(image.shape) < MIN_SIDE:
        raise RegcoreError(f"{label}: {image.shape[1]}x{image.shape[0]} is too small to register; each side needs at least {MIN_SIDE} px")


def _with_deadline(
    progress: Callable[[int, int, float], None] | None, timeout_s: float | None, start: float
) -> Callable[[int, int, float], None] | None:
    """Wrap ``progress`` so that the optimisation stops with a RegcoreError once ``timeout_s`` has passed."""
    if timeout_s is None:
        return progress

    def check(done: int, total: int, loss: float) -> None:
        if progress is not None:
            progress(done, total, loss)
        if time.perf_counter() - start > timeout_s:
            raise RegcoreError(f"registration took longer than {timeout_s:g} s and was stopped after {done} of {total} steps")

    return check


def _for_optimisation(source: torch.Tensor, target: torch.Tensor, mode: str, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The images the optimisation compares, and its extra options (see ``presmooth`` in :func:`register`)."""
    if mode == "off":
        return source, target, {}
    if mode == "auto":
        noise = max(noise_std(source), noise_std(target))
        if noise <= NOISY_ABOVE:
            return source, target, {}
        notes.append(
            f"the images look noisy (estimated noise std {noise:.3f}): the optimisation compared them smoothed"
            f" (Gaussian {SMOOTH_SIGMA:g} px, NCC window {SMOOTH_WIN}) so that the field does not fit the noise"
        )
    return smooth_image(source), smooth_image(target), {"win": SMOOTH_WIN}


def _network_field(net: RegNet, source: torch.Tensor, target: torch.Tensor, polish: bool) -> torch.Tensor:
    """The network's field for ``(1, 1, H, W)`` images, polished by Lucas–Kanade steps if asked (see ``HALF_NET_FROM``)."""
    size = tuple(source.shape[-2:])
    if polish and min(size) >= HALF_NET_FROM:
        half = (size[0] // 2, size[1] // 2)
        flow = resize_flow(network_flow(net, _resize(source, half), _resize(target, half)), size)
        steps = 2
    else:
        flow = network_flow(net, source, target)  # ONNX Runtime or channels-last on CPU (regcore/inference.py)
        steps = 1 if polish else 0
    with torch.inference_mode():
        for _ in range(steps):
            flow = lucas_kanade_step(source, target, flow)
    return flow


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
    progress: Callable[[int, int, float], None] | None = None,
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
        method: ``"net"`` (one network pass + a Lucas–Kanade polish, see ``polish``), ``"net+refine"`` (the network's field, then
            ``refine_steps`` of per-pair optimisation) or ``"optimize"`` (optimisation only,
            multi-resolution, no network). Default: ``"net+refine"`` when a checkpoint is
            available, else ``"optimize"`` (and a note says so).
        model: a checkpoint folder, shipped checkpoint name or Hub repo id; default the shipped
            local-NCC model.
        refine_steps: optimisation steps per pyramid level (``"net+refine"``: up to
            ``REFINE_LEVELS`` levels starting from the network's field, default
            ``DEFAULT_REFINE_STEPS``; ``"optimize"``: every level down to 16 px, default
            ``DEFAULT_OPTIMIZE_STEPS``).
        similarity: what the optimisation maximises: ``"ncc"`` (local NCC), ``"ncc2"``,
            ``"gncc"`` or ``"mse"``.
        reg_weight: smoothness weight of the optimisation.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        max_side: images with a longer side are registered at this size and the field scaled
            back (a note says so).
        progress: called as ``progress(done, total, loss)`` during optimisation.
        timeout_s: time budget in seconds for the registration (loading excluded); the
            optimisation is stopped with a RegcoreError once it is exceeded (checked after each
            step; the single network pass is not interrupted). None: no limit.
        polarity: ``"auto"``: when source and target are negatively correlated as whole images
            (below ``INVERTED_BELOW``), the target's contrast is taken as inverted and the field
            is found against ``1 - target`` (a note says so; ``warped`` and the scores still use
            the target as given). Signed local NCC, which the shipped models learned, reads an
            inversion as a mismatch everywhere. ``"keep"``: never invert.
        polish: ``"net"`` only: follow the network's pass with a Lucas–Kanade step on locally
            normalised images (:mod:`regcore.polish`; about a millisecond at 128²), which roughly
            halves the network's error on textured images; from ``HALF_NET_FROM`` px on, the
            network runs at half resolution and two steps follow. False: the network's field as
            it is, at full resolution.
            (``"net+refine"`` does not use it: its optimisation does the same job and more.)
        presmooth: what the optimisation (``"net+refine"``, ``"optimize"``) compares. ``"auto"``:
            when :func:`regcore.noise.noise_std` finds noise above ``NOISY_ABOVE`` in either
            image, both are smoothed (Gaussian, ``SMOOTH_SIGMA`` px) and compared over a wider
            window (``SMOOTH_WIN``), which keeps the field from fitting the noise (a note says
            so); clean images are compared as they are. ``"on"`` / ``"off"``: always / never.
            ``warped`` and the scores always use the images as given.

    Raises:
        ImageError: an input is not a usable image (unreadable, NaN, larger than
            ``regcore.io.MAX_PIXELS``, ...). CheckpointError: the model cannot be loaded.
        RegcoreError: another invalid argument, a side under ``MIN_SIDE`` px, the time budget
            exceeded, or an optimisation that diverged.
    """
    _check_arguments(method, refine_steps, similarity, reg_weight, max_side, progress, timeout_s, polarity, presmooth, polish)
    notes: list[str] = []
    src = load_image(source, "source", notes=notes)
    tgt = load_image(target, "target", notes=notes)
    _check_size(src, input_label(source, "source"))
    _check_size(tgt, input_label(target, "target"))
    dev = _device(device)
    shipped = available_models() if model is None else {}  # scanned once: load_model gets the folder
    model_name = str(model) if model is not None else next(iter(shipped), None)
    if method is None:
        method = "net+refine" if model_name is not None else "optimize"
        if model_name is None:
            notes.append("no trained checkpoint found: used optimisation only (method 'optimize')")
    elif method != "optimize" and model_name is None:
        raise RegcoreError(f"method {method!r} needs a trained checkpoint, and none was found or given")
    net = load_model(shipped.get(model_name, model_name), dev) if method != "optimize" else None

    size = src.shape
    if tgt.shape != size:
        notes.append(f"target resized from {tgt.shape[1]}x{tgt.shape[0]} to the source's {size[1]}x{size[0]}")
    for label, image in (("source", src), ("target", tgt)):
        if float(image.max() - image.min()) < 1e-6:
            notes.append(f"the {label} image is constant: NCC is undefined and there is nothing to align, so the field is meaningless")

    start = time.perf_counter()
    src_t = _tensor(src, dev)
    tgt_t = _resize(_tensor(tgt, dev), size)
    scale = min(1.0, max_side / max(size))
    work = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    if work != size:
        notes.append(f"registered at {work[1]}x{work[0]} (longer side capped at {max_side}); the field was scaled back")
    src_w, tgt_w = _resize(src_t, work), _resize(tgt_t, work)
    if polarity == "auto":
        correlation = float(global_ncc(src_w, tgt_w)[0])
        if correlation < INVERTED_BELOW:
            tgt_w = 1.0 - tgt_w
            notes.append(
                f"source and target are anti-correlated ({correlation:.2f}): the target's contrast was taken as inverted"
                " and the field found against its negative"
            )

    flow = None
    if net is not None:
        flow = _network_field(net, src_w, tgt_w, polish and method == "net")
    if method != "net":
        steps = refine_steps if refine_steps is not None else (DEFAULT_REFINE_STEPS if net is not None else DEFAULT_OPTIMIZE_STEPS)
        levels = min(REFINE_LEVELS, pyramid_levels(work)) if net is not None else pyramid_levels(work)
        src_o, tgt_o, options = _for_optimisation(src_w, tgt_w, presmooth, notes)
        with torch.enable_grad():
            callback = _with_deadline(progress, timeout_s, start)
            flow = optimize_flow(src_o, tgt_o, flow, steps, levels, similarity, float(reg_weight), callback=callback, **options)
    flow = resize_flow(flow, size)
    with torch.inference_mode():
        # Bilinear weights can sum to 1 + 1 ulp in float32: clamp to keep the [0, 1] contract.
        warped = warp(src_t, flow).clamp_(0.0, 1.0)
    elapsed = time.perf_counter() - start

    return RegistrationResult(
        flow=flow[0].cpu().numpy().astype(np.float32),
        warped=warped[0, 0].cpu().numpy().astype(np.float32),
        source=src,
        target=tgt_t[0, 0].cpu().numpy().astype(np.float32),
        method=method,
        model=model_name if net is not None else None,
        time_s=elapsed,
        notes=notes,
    )
