"""The steps of :func:`regcore.register` and the methods it runs.

``register()`` is a short pipeline, one function per step:

1. **prepare**: :func:`load_pair` reads and checks both images, :func:`choose_method` picks the
   method (and loads its network), :func:`prepare` makes the working pair (target at the source's
   size, longer side capped at ``max_side``, contrast inversion detected);
2. **initial field**: ``METHODS[name].start(work)``: the network's field, or None (zero);
3. **refinement**: ``METHODS[name].refine(work, flow)``: the method's own per-pair work;
4. **result**: :func:`working_field` gives the field at the registered (working) resolution; the result
   (:class:`regcore.api.RegistrationResult`) scales it back to the source's size only when asked,
   so that a caller who wants pictures of a 4096² pair never pays for a 4096² field.

``options.timeout_s`` covers all of it, from decoding the images on: :func:`check_time` is
called between the steps and after every optimisation step.

Every method is one :class:`Method` entry in :data:`METHODS`. To add one, write its ``start``
and ``refine`` functions (or reuse those here) and add an entry: the Python API, the CLI's
``--method`` choices and the app's method list all read :data:`METHODS`.

Fields here are ``(1, 2, h, w)`` float32 tensors in pixels (channel 0 rows, 1 columns; backward
warp), images ``(1, 1, h, w)`` in [0, 1].
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .boundaries import sharpen_boundaries
from .checkpoints import available_models, load_model
from .classical import dis_flow, farneback_flow, ilk_flow, tvl1_flow
from .contrast import DIFFERENT_ABOVE, histogram_distance, match_histogram
from .errors import RegcoreError
from .inference import network_flow
from .io import ImageLike, input_label, load_image
from .losses import global_ncc, make_similarity
from .nets import RegNet
from .noise import NOISY_ABOVE, SMOOTH_SIGMA, SMOOTH_WIN, noise_std, smooth_image
from .optimize import optimize_flow, pyramid_levels
from .patches import PYRAMID_UNDER_PATCHES, fuse_with_patches, patch_search
from .polish import SCHEDULE, Level, downsample, resample_flow
from .polish import polish as polish_flow
from .variational import refine_near_boundaries
from .volumes import Slicing
from .warp import resize_image

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_OPTIMIZE_STEPS",
    "DEFAULT_REFINE_STEPS",
    "DEFAULT_REG_WEIGHT",
    "FALLBACK_METHOD",
    "INVERTED_BELOW",
    "METHODS",
    "MIN_SIDE",
    "NET_MAX_SIDE",
    "NET_SIDE",
    "POLARITIES",
    "PRESMOOTH_MODES",
    "REFINE_LEVELS",
    "Choice",
    "Method",
    "Options",
    "Work",
    "check_time",
    "choose_method",
    "load_pair",
    "prepare",
    "working_field",
]

#: Refinement steps per pyramid level of ``"net+refine"`` when ``refine_steps`` is not given.
DEFAULT_REFINE_STEPS = 30
#: Pyramid levels of the ``"net+refine"`` refinement (fewer for small images): the network's error
#: is mostly smooth and low-frequency, which full-resolution steps remove slowly, so the
#: refinement starts at quarter resolution.
REFINE_LEVELS = 3
#: ``method="net"`` runs the network on the pair averaged over ``2**k × 2**k`` blocks, the smallest
#: ``k`` that brings the longer side to at most this (px); the Lucas–Kanade pyramid of
#: :func:`regcore.polish.polish` then refines the field up to full resolution. The network's cost
#: stays that of one pass at this size however large the images, and it was trained at about it.
NET_SIDE = 128
#: Optimisation steps per pyramid level of ``"optimize"`` when ``refine_steps`` is not given.
DEFAULT_OPTIMIZE_STEPS = 100
#: Images whose longer side exceeds this are registered at this size; the field is scaled back.
NET_MAX_SIDE = 512
#: Default weight of the smoothness term in the per-pair optimisation.
DEFAULT_REG_WEIGHT = 1.0
#: Smallest accepted side, in pixels, as given and as registered (after the longer side is capped
#: at ``max_side``): below this there is too little image to align (the local NCC window alone is
#: 9 px) and the result would mean nothing.
MIN_SIDE = 8
#: ``polarity="auto"`` takes the target's contrast as inverted when the whole-image correlation of
#: source and target is below this. Deformed pairs of one image correlate at about +0.5 to +0.9,
#: inverted ones at about -0.5 to -0.9 and unrelated images near 0, so a small negative margin keeps
#: noise from flipping unrelated pairs.
INVERTED_BELOW = -0.1
POLARITIES = ("auto", "keep")
#: ``presmooth``: "auto" smooths for the optimisation only when the images look noisy (regcore.noise).
PRESMOOTH_MODES = ("auto", "on", "off")

Progress = Callable[[int, int, float], None]


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Options:
    """:func:`regcore.register`'s options, grouped and checked on creation (a one-line RegcoreError
    for an invalid one, before any work is done). Each is documented on ``register()``."""

    method: str | None = None
    model: str | os.PathLike | None = None
    refine_steps: int | None = None
    similarity: str = "ncc"
    reg_weight: float = DEFAULT_REG_WEIGHT
    device: str | torch.device = "cpu"
    max_side: int = NET_MAX_SIDE
    progress: Progress | None = None
    timeout_s: float | None = None
    polarity: str = "auto"
    presmooth: str = "auto"
    polish: bool = True

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise RegcoreError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.refine_steps is not None and not (_is_count(self.refine_steps) and self.refine_steps >= 0):
            raise RegcoreError(f"refine_steps must be a whole number >= 0, got {self.refine_steps!r}")
        try:
            make_similarity(self.similarity)
        except (ValueError, TypeError) as err:
            raise RegcoreError(str(err)) from None
        # A NaN or negative weight makes the optimisation diverge (and NaN fields crash grid_sample's backward).
        if not isinstance(self.reg_weight, numbers.Real) or not math.isfinite(self.reg_weight) or self.reg_weight < 0:
            raise RegcoreError(f"reg_weight must be a finite number >= 0, got {self.reg_weight!r}")
        if not (_is_count(self.max_side) and self.max_side >= 16):
            raise RegcoreError(f"max_side must be a whole number of at least 16, got {self.max_side!r}")
        if self.progress is not None and not callable(self.progress):
            raise RegcoreError(f"progress must be a function progress(done, total, loss), got {type(self.progress).__name__}")
        if self.timeout_s is not None and (not isinstance(self.timeout_s, numbers.Real) or not self.timeout_s > 0):
            raise RegcoreError(f"timeout_s must be a number of seconds > 0, got {self.timeout_s!r}")
        if self.polarity not in POLARITIES:
            raise RegcoreError(f"polarity must be one of {', '.join(POLARITIES)}, got {self.polarity!r}")
        if self.presmooth not in PRESMOOTH_MODES:
            raise RegcoreError(f"presmooth must be one of {', '.join(PRESMOOTH_MODES)}, got {self.presmooth!r}")
        if not isinstance(self.polish, bool):
            raise RegcoreError(f"polish must be True or False, got {self.polish!r}")


# ---------------------------------------------------------------------------------------------
# 1. Prepare
# ---------------------------------------------------------------------------------------------


def _tensor(image: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(device)


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``(1, 1, h, w)`` -> ``(1, 1, *size)`` on the fields' grid (:func:`regcore.warp.resize_image`), values kept in [0, 1]."""
    return resize_image(image, size).clamp(0, 1)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RegcoreError(f"device {device!r} asked for, but no CUDA GPU is available")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RegcoreError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'") from None


def check_time(options: Options, since: float, stage: str) -> None:
    """Raise a RegcoreError when more than ``options.timeout_s`` seconds have passed since ``since`` (``time.perf_counter()``)."""
    if options.timeout_s is not None and time.perf_counter() - since > options.timeout_s:
        raise RegcoreError(f"registration took longer than {options.timeout_s:g} s and was stopped {stage}")


def load_pair(source: ImageLike, target: ImageLike, notes: list[str], slicing: Slicing | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both images as ``(H, W)`` float32 in [0, 1] (:func:`regcore.io.load_image`; ``slicing``: the slice
    of a 3-D medical volume), each side at least ``MIN_SIDE`` px."""
    images = load_image(source, "source", notes=notes, slicing=slicing), load_image(target, "target", notes=notes, slicing=slicing)
    for image, given, role in zip(images, (source, target), ("source", "target"), strict=True):
        if min(image.shape) < MIN_SIDE:
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise RegcoreError(f"{input_label(given, role)}: {size} is too small to register; each side needs at least {MIN_SIDE} px")
    return images


class Choice(NamedTuple):
    """What :func:`choose_method` settled: the method's name, its network (or None), the model's name, the device."""

    method: str
    net: RegNet | None
    model: str | None
    device: torch.device


def choose_method(options: Options, notes: list[str]) -> Choice:
    """The method to run (``options.method``, else :data:`DEFAULT_METHOD` when a checkpoint is
    available and :data:`FALLBACK_METHOD` when not, with a note) and, if it needs one, its network."""
    device = _device(options.device)
    shipped = available_models() if options.model is None else {}  # scanned once: load_model gets the folder
    model = str(options.model) if options.model is not None else next(iter(shipped), None)
    method = options.method
    if method is None:
        method = DEFAULT_METHOD if model is not None else FALLBACK_METHOD
        if model is None:
            notes.append(f"no trained checkpoint found: used {METHODS[method].label} (method {method!r})")
    elif METHODS[method].network and model is None:
        raise RegcoreError(f"method {method!r} needs a trained checkpoint, and none was found or given")
    net = load_model(shipped.get(model, model), device) if METHODS[method].network else None
    return Choice(method, net, model if net is not None else None, device)


@dataclass
class Work:
    """A pair ready to register (what :func:`prepare` makes and every method works on).

    Attributes:
        source, target: ``(1, 1, h, w)`` at the working size; the target contrast-inverted when
            ``polarity="auto"`` found it anti-correlated.
        given_target: ``(1, 1, h, w)``, the target at the working size with its contrast as given
            (the result's pictures and scores at the registered resolution).
        full_source, full_target: ``(1, 1, H, W)`` at the source's size, as given (warping, scores).
        options, net, notes: register()'s options, the network (or None), the notes so far.
        steps: optimisation steps per pyramid level (``refine_steps`` or the method's default).
        start: ``time.perf_counter()`` when the request began, before decoding (for ``timeout_s``).
        remapped: whether ``target``'s intensities were matched to the source's (:mod:`regcore.contrast`).
    """

    source: Tensor
    target: Tensor
    given_target: Tensor
    full_source: Tensor
    full_target: Tensor
    options: Options
    net: RegNet | None
    notes: list[str]
    steps: int | None
    start: float
    remapped: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.source.shape[-2:])


def prepare(source: np.ndarray, target: np.ndarray, options: Options, choice: Choice, notes: list[str], start: float) -> Work:
    """The working pair: target resampled to the source's size, longer side capped at
    ``max_side``, and with ``polarity="auto"`` the target's contrast inverted when the pair is
    anti-correlated (below :data:`INVERTED_BELOW`) and its intensities matched to the source's when
    their distributions clearly differ (:mod:`regcore.contrast`); each of these adds a note.

    Raises:
        RegcoreError: capping the longer side would leave the shorter one under ``MIN_SIDE`` px
            (an 8x2048 image would be registered at 2x512, a field that means nothing).
    """
    size = source.shape
    if target.shape != size:
        notes.append(f"target resized from {target.shape[1]}x{target.shape[0]} to the source's {size[1]}x{size[0]}")
    for label, image in (("source", source), ("target", target)):
        if float(image.max() - image.min()) < 1e-6:
            notes.append(f"the {label} image is constant: NCC is undefined and there is nothing to align, so the field is meaningless")
    src_t = _tensor(source, choice.device)
    tgt_t = _resize(_tensor(target, choice.device), size)
    scale = min(1.0, options.max_side / max(size))
    work = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    if min(work) < MIN_SIDE:
        raise RegcoreError(
            f"source: {size[1]}x{size[0]} would be registered at {work[1]}x{work[0]} (longer side capped at {options.max_side}),"
            f" under the minimum of {MIN_SIDE} px a side; crop it to a less elongated shape"
        )
    if work != size:
        notes.append(f"registered at {work[1]}x{work[0]} (longer side capped at {options.max_side}); the field was scaled back")
    src_w, tgt_w = _resize(src_t, work), _resize(tgt_t, work)
    given_w, remapped = tgt_w, False
    if options.polarity == "auto":
        correlation = float(global_ncc(src_w, tgt_w)[0])
        if correlation < INVERTED_BELOW:
            tgt_w = 1.0 - tgt_w
            notes.append(
                f"source and target are anti-correlated ({correlation:.2f}): the target's contrast was taken as inverted"
                " and the field found against its negative"
            )
        unmatched = tgt_w
        tgt_w = _matched(src_w, tgt_w, notes)
        remapped = tgt_w is not unmatched
    default_steps = METHODS[choice.method].default_steps
    steps = options.refine_steps if options.refine_steps is not None else default_steps
    return Work(src_w, tgt_w, given_w, src_t, tgt_t, options, choice.net, notes, steps, start, remapped)


# ---------------------------------------------------------------------------------------------
# 2. Initial fields
# ---------------------------------------------------------------------------------------------


def _matched(source: Tensor, target: Tensor, notes: list[str]) -> Tensor:
    """``target`` ``(1, 1, h, w)``, its intensities matched to ``source``'s where their distributions clearly differ
    (:mod:`regcore.contrast`), with a note; else ``target`` itself."""
    src, tgt = source[0, 0].cpu().numpy(), target[0, 0].cpu().numpy()
    distance = histogram_distance(src, tgt)
    if distance <= DIFFERENT_ABOVE:
        return target
    notes.append(
        f"the images' intensity distributions differ (mean quantile difference {distance:.2f}): the field was found"
        " with the target's intensities matched to the source's (a change of contrast)"
    )
    return torch.from_numpy(match_histogram(tgt, src))[None, None].to(target.device)


def zero_start(work: Work) -> None:
    """No initial field: the method starts from the identity."""
    return None


def network_start(work: Work) -> Tensor:
    """The network's field on the working pair (ONNX Runtime or channels-last on CPU, :mod:`regcore.inference`)."""
    return network_flow(work.net, work.source, work.target)


def net_factor(size: tuple[int, int]) -> int:
    """The block size ``2**k`` at which ``"net"`` runs the network on images of ``size`` (see :data:`NET_SIDE`)."""
    factor = 1
    while max(size) / factor > NET_SIDE and min(size) / (2 * factor) >= MIN_SIDE:
        factor *= 2
    return factor


def net_start(work: Work) -> Tensor:
    """``"net"``'s initial field: the network's, on the pair block-averaged by :func:`net_factor`,
    ``(1, 2, h / f, w / f)`` in pixels of that grid (``polish=False``: resampled to the working size)."""
    factor = net_factor(work.size)
    source, target = downsample(work.source, factor), downsample(work.target, factor)
    flow = network_flow(work.net, source, target)
    return flow if work.options.polish else resample_flow(flow, work.size)


def polish(work: Work, flow: Tensor, schedule: Sequence[Level] = SCHEDULE) -> Tensor:
    """The Lucas–Kanade pyramid of :func:`regcore.polish.polish` from the network's field (nothing with ``polish=False``)."""
    if not work.options.polish:
        return flow
    with torch.inference_mode():
        return polish_flow(work.source, work.target, flow, schedule)


#: Threads that run the patch search of ``"net+patches"`` beside the Lucas–Kanade pyramid: both are
#: compiled loops that let go of the GIL, each on one core, so on two cores the search costs little
#: more than the fusion (``benchmarks/results/results.md``). One per core, for concurrent calls.
_SEARCHES = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="regcore-patch-search")


def polish_and_search(work: Work, flow: Tensor) -> Tensor:
    """``"net+patches"``: :func:`polish`'s field fused with the patch search's (:func:`regcore.patches.fuse_with_patches`),
    the search run on another thread meanwhile, then its motion boundaries sharpened (:func:`regcore.boundaries.sharpen_boundaries`)
    and refined near them (:func:`regcore.variational.refine_near_boundaries`, unless the target's intensities were remapped)."""
    if not work.options.polish:
        return polish(work, flow)
    searched = _SEARCHES.submit(patch_search, work.source, work.target)
    polished = polish(work, flow, PYRAMID_UNDER_PATCHES)
    with torch.inference_mode():
        flow = sharpen_boundaries(work.source, work.target, fuse_with_patches(work.source, work.target, polished, searched.result()))
        # The variational data term assumes the target's intensities are the source's: not after a remapping.
        return flow if work.remapped else refine_near_boundaries(work.source, work.target, flow)


def _with_deadline(progress: Progress | None, options: Options, start: float) -> Progress | None:
    """Wrap ``progress`` so that the optimisation stops with a RegcoreError once ``options.timeout_s`` has passed."""
    if options.timeout_s is None:
        return progress

    def check(done: int, total: int, loss: float) -> None:
        if progress is not None:
            progress(done, total, loss)
        check_time(options, start, f"after {done} of {total} steps")

    return check


def _for_optimisation(work: Work) -> tuple[Tensor, Tensor, dict]:
    """The images the optimisation compares, and its extra options (see ``presmooth`` on register())."""
    mode = work.options.presmooth
    if mode == "off":
        return work.source, work.target, {}
    if mode == "auto":
        noise = max(noise_std(work.source), noise_std(work.target))
        if noise <= NOISY_ABOVE:
            return work.source, work.target, {}
        work.notes.append(
            f"the images look noisy (estimated noise std {noise:.3f}): the optimisation compared them smoothed"
            f" (Gaussian {SMOOTH_SIGMA:g} px, NCC window {SMOOTH_WIN}) so that the field does not fit the noise"
        )
    return smooth_image(work.source), smooth_image(work.target), {"win": SMOOTH_WIN}


def optimise(work: Work, flow: Tensor | None, max_levels: int | None = None) -> Tensor:
    """Per-pair optimisation from ``flow`` (:func:`regcore.optimize.optimize_flow`): ``work.steps``
    Adam steps per pyramid level, over at most ``max_levels`` levels (None: down to 16 px)."""
    levels = pyramid_levels(work.size) if max_levels is None else min(max_levels, pyramid_levels(work.size))
    source, target, extra = _for_optimisation(work)
    opts = work.options
    with torch.enable_grad():
        callback = _with_deadline(opts.progress, opts, work.start)
        return optimize_flow(source, target, flow, work.steps, levels, opts.similarity, float(opts.reg_weight), callback=callback, **extra)


def classical(flow_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Work, None], Tensor]:
    """A refinement that runs a :mod:`regcore.classical` method on the working pair (from zero)."""

    def refine(work: Work, flow: None) -> Tensor:
        field = flow_fn(work.source[0, 0].cpu().numpy(), work.target[0, 0].cpu().numpy())
        return torch.from_numpy(field)[None].to(work.source.device)

    return refine


# ---------------------------------------------------------------------------------------------
# 4. Result
# ---------------------------------------------------------------------------------------------


def working_field(work: Work, flow: Tensor | None) -> Tensor:
    """The field found, ``(1, 2, h, w)`` px at the working size (zero if None), detached.

    Scaling it to the source's size is left to the result, on first use: a 4096² field is 134 MB
    that a caller who wants the registration's pictures and scores never needs.
    """
    return torch.zeros((1, 2, *work.size), device=work.source.device) if flow is None else flow.detach()


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One registration method: where its field starts (step 2) and how it is refined (step 3).

    Attributes:
        label: a short human name (the app's method list, notes).
        summary: what it does, one line.
        start: ``start(work)``: the initial field ``(1, 2, h, w)`` px, or None for zero.
        refine: ``refine(work, flow)``: the field after the method's per-pair work.
        network: whether it needs a trained checkpoint (register() loads it into ``work.net``).
        default_steps: ``refine_steps`` when not given; None when the method takes no steps
            (``refine_steps`` is then ignored).
    """

    label: str
    summary: str
    start: Callable[[Work], Tensor | None]
    refine: Callable[[Work, Tensor | None], Tensor]
    network: bool = False
    default_steps: int | None = None


def _classical_method(label: str, summary: str, flow_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Method:
    return Method(label, summary, zero_start, classical(flow_fn))


#: Every method :func:`regcore.register` runs, by name (``method=``). Classical methods see the
#: same working pair as the network (size cap, contrast inversion) and ignore ``refine_steps``,
#: ``similarity``, ``reg_weight``, ``presmooth`` and ``progress``; ``timeout_s`` cannot stop them.
METHODS: dict[str, Method] = {
    "net": Method(
        "network",
        "one network pass at about 128 px, then a Lucas–Kanade pyramid up to full resolution (polish=False: the network's field alone)",
        net_start,
        polish,
        network=True,
    ),
    "net+patches": Method(
        "network + patches",
        "net's field fused, region by region, with a patch search's (every 8x8 patch finds its own "
        "motion), then its motion boundaries put on the image's edges and refined pixel by pixel: objects moving "
        "over a background, depth edges, periodic textures and large motion, 1.2-1.6x net's time",
        net_start,
        polish_and_search,
        network=True,
    ),
    "net+refine": Method(
        "network + refinement",
        f"the network's field, then per-pair optimisation over up to {REFINE_LEVELS} pyramid levels",
        network_start,
        partial(optimise, max_levels=REFINE_LEVELS),
        network=True,
        default_steps=DEFAULT_REFINE_STEPS,
    ),
    "optimize": Method(
        "optimisation only",
        "per-pair optimisation from zero over a pyramid down to 16 px; no network",
        zero_start,
        optimise,
        default_steps=DEFAULT_OPTIMIZE_STEPS,
    ),
    "tvl1": _classical_method("TV-L1 (scikit-image)", "scikit-image's TV-L1 optical flow, default parameters", tvl1_flow),
    "ilk": _classical_method("ILK (scikit-image)", "scikit-image's iterative Lucas–Kanade, radius 7", ilk_flow),
    "dis": _classical_method("DIS (OpenCV)", "OpenCV's DIS optical flow, MEDIUM preset", dis_flow),
    "dis-fast": _classical_method("DIS fast (OpenCV)", "OpenCV's DIS optical flow, FAST preset", partial(dis_flow, preset="fast")),
    "dis-fine": _classical_method(
        "DIS fine (OpenCV)",
        "OpenCV's DIS optical flow, MEDIUM preset down to full resolution, 10 variational refinement iterations",
        partial(dis_flow, preset="fine"),
    ),
    "farneback": _classical_method("Farnebäck (OpenCV)", "OpenCV's Farnebäck optical flow, OpenCV's typical parameters", farneback_flow),
}
#: The method ``register()`` runs when none is given and a checkpoint is available (``"net"`` alone is
#: 15-30% faster and as accurate on smooth motion at 128², ``benchmarks/results/results.md``) ...
DEFAULT_METHOD = "net+patches"
#: ... and when none is (it needs no network).
FALLBACK_METHOD = "optimize"
