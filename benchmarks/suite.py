"""Benchmark: regcore against classical registration on pairs with known deformations.

The reusable parts of ``python -m benchmarks.run`` (:mod:`benchmarks.run`):

- :func:`build_pairs`: the fixed, seeded evaluation sets (:data:`EVAL_SETS`): real photographs
  bundled with scikit-image (:func:`regcore.data.photo_pairs`, never used in training), some with
  a contrast change or noise, and generated label-map images (:func:`regcore.data.make_batch`),
  each deformed by a known smooth random field.
- Method adapters (:func:`classical_methods`, :func:`regcore_methods`): each returns a field in
  the project's convention, ``(2, H, W)`` float32 pixels, channel 0 rows, backward warp, so
  ``warp(source, flow) ≈ target``. Every method :func:`regcore.register` offers is called
  through it, as a user would (the classical ones are :mod:`regcore.classical`); the peers used
  only here (dipy SyN, SimpleITK demons) are adapted in this module, each conversion documented
  on its adapter. ``tests/test_bench.py`` checks them all on a known translation and a known
  smooth field.
- Scoring (:func:`score`, :func:`summarise`) and output (:func:`write_outputs`: markdown table,
  CSV and an accuracy-vs-time PNG).
- Scaling (:func:`scaling`): time per pair against image size, and network batch throughput.

Every method is scored the same way: its field warps the source with :func:`regcore.warp.warp`
and the result is compared with the target; the field is compared with the true one.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from regcore.api import DEFAULT_REFINE_STEPS, register
from regcore.checkpoints import load_model
from regcore.data import PHOTO_NAMES, make_batch, photo_pairs
from regcore.inference import network_flow
from regcore.metrics import endpoint_error, folding_percent, image_scores, jacobian_determinant
from regcore.warp import warp

__all__ = [
    "EVAL_SETS",
    "QUICK_SETS",
    "EvalSet",
    "Method",
    "Pair",
    "available",
    "bar_report",
    "build_pairs",
    "classical_methods",
    "identity_method",
    "machine_description",
    "regcore_methods",
    "run_accuracy",
    "scaling",
    "score",
    "set_threads",
    "summarise",
    "write_outputs",
    "write_scaling",
]

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Evaluation sets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    """A seeded family of pairs.

    Attributes:
        kind: ``"photo"`` (scikit-image photographs) or ``"labels"`` (generated label maps).
        size: side in pixels (square images).
        max_disp: largest displacement of the random fields, pixels (each field's peak is drawn
            in ``[0.2, 1] * max_disp``).
        contrast: ``"none"``; photographs: ``"gamma"`` (target gamma 0.5 or 2) or ``"invert"``;
            label images: ``"augment"`` (independent random bias field, gamma and noise on each
            image, as in training).
        noise: std of Gaussian noise added independently to source and target (0 = none).
        seed: the generator seed; the same seed gives the same pairs.
        count: pairs in the set (photographs: at most ``len(PHOTO_NAMES)``).
    """

    kind: str
    size: int
    max_disp: float
    contrast: str = "none"
    noise: float = 0.0
    seed: int = 0
    count: int = len(PHOTO_NAMES)


#: The full benchmark's sets. Displacements ~6% of the side (8 px at 128², 12 px at 256²), as in issue 4's bar.
EVAL_SETS: dict[str, EvalSet] = {
    "photo128": EvalSet("photo", 128, 8.0, seed=1128),
    "photo256": EvalSet("photo", 256, 12.0, seed=1256),
    "photo128-gamma": EvalSet("photo", 128, 8.0, contrast="gamma", seed=2128),
    "photo128-invert": EvalSet("photo", 128, 8.0, contrast="invert", seed=3128),
    "photo128-noise": EvalSet("photo", 128, 8.0, noise=0.05, seed=4128),
    "labels128": EvalSet("labels", 128, 8.0, seed=5128),
    "labels128-augment": EvalSet("labels", 128, 8.0, contrast="augment", seed=6128),
}

#: ``--quick``: a few small pairs, no contrast change (where every real method must beat identity).
QUICK_SETS: dict[str, EvalSet] = {
    "photo96": EvalSet("photo", 96, 6.0, seed=1096, count=3),
    "labels96": EvalSet("labels", 96, 6.0, seed=5096, count=2),
}


@dataclass
class Pair:
    """One evaluation pair: ``source``, ``target`` ``(H, W)`` float32 in [0, 1], ``flow`` ``(2, H, W)`` px, true field."""

    name: str
    source: np.ndarray
    target: np.ndarray
    flow: np.ndarray


def build_pairs(spec: EvalSet, count: int | None = None) -> list[Pair]:
    """The pairs of ``spec`` (the first ``count`` of them if given), identical on every call."""
    n = min(spec.count if count is None else count, spec.count)
    if spec.kind == "photo":
        names = PHOTO_NAMES[:n]
        batch = photo_pairs(spec.size, spec.max_disp, spec.seed, names, spec.contrast)
    elif spec.kind == "labels":
        if spec.contrast not in ("none", "augment"):
            raise ValueError(f"label images take contrast 'none' or 'augment', got {spec.contrast!r}")
        names = tuple(f"labels{i}" for i in range(n))
        g = torch.Generator().manual_seed(spec.seed)
        batch = make_batch(n, (spec.size, spec.size), spec.max_disp, g, kind="labels", contrast=spec.contrast == "augment")
    else:
        raise ValueError(f"unknown kind {spec.kind!r}")
    source, target = batch.source[:, 0].numpy(), batch.target[:, 0].numpy()
    if spec.noise > 0:
        rng = np.random.default_rng(spec.seed)
        source = source + rng.normal(0.0, spec.noise, source.shape)
        target = target + rng.normal(0.0, spec.noise, target.shape)
    source = np.clip(source, 0, 1).astype(np.float32)
    target = np.clip(target, 0, 1).astype(np.float32)
    flows = batch.flow.numpy().astype(np.float32)
    return [Pair(name, source[i], target[i], flows[i]) for i, name in enumerate(names)]


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


@dataclass
class Method:
    """A registration method under test.

    Attributes:
        name: short unique name (table rows, CSV).
        fn: ``fn(source, target) -> flow``: ``(H, W)`` float32 images in [0, 1] -> ``(2, H, W)``
            float32 pixels in the project's convention (``warp(source, flow) ≈ target``).
        family: ``"regcore"``, ``"classical"`` or ``"baseline"``.
        requires: modules that must be importable (the method is skipped, with a message, if not).
        slow: left out of ``--quick``.
        description: what it is and how it is configured (one line, for the table's notes).
    """

    name: str
    fn: FlowFn
    family: str
    requires: tuple[str, ...] = ()
    slow: bool = False
    description: str = ""


def available(method: Method) -> str | None:
    """None if ``method`` can run here, else why not (the missing module)."""
    missing = [m for m in method.requires if importlib.util.find_spec(m) is None]
    return (
        f"{method.name}: skipped, needs the Python package {', '.join(missing)} (pip install -r requirements-bench.txt)"
        if missing
        else None
    )


def identity_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The zero field: the score of doing nothing (every real method must beat it)."""
    return np.zeros((2, *source.shape), np.float32)


def register_flow(method: str, **options) -> FlowFn:
    """``fn(source, target)``: the field of ``register(source, target, method=method, **options)``.

    ``max_side`` is lifted to the image size so that nothing is resampled. register() scores its
    result only when asked, so the time is the registration alone.
    """

    def fn(source: np.ndarray, target: np.ndarray) -> np.ndarray:
        return register(source, target, method=method, max_side=max(source.shape), **options).flow

    return fn


#: dipy SyN: iterations per level, coarsest first (dipy's default ``[100, 100, 25]``).
SYN_LEVEL_ITERS = (100, 100, 25)


def syn_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """dipy ``SymmetricDiffeomorphicRegistration`` with ``CCMetric(2)`` (SyN, local cross-correlation).

    ``optimize(static, moving)`` with identity affines returns a ``DiffeomorphicMap`` whose
    ``transform(moving)`` samples ``moving`` at ``x + forward(x)``; ``get_forward_field()`` is
    ``(H, W, 2)`` in voxels, components in array-axis order (row, column). So ``static = target``,
    ``moving = source``, and the field is ``forward`` with its last axis moved first.
    """
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    logging.getLogger("dipy").setLevel(logging.WARNING)  # SyN logs every level at INFO
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(2), level_iters=list(SYN_LEVEL_ITERS))
    mapping = sdr.optimize(target.astype(np.float64), source.astype(np.float64))
    return np.ascontiguousarray(np.moveaxis(np.asarray(mapping.get_forward_field()), -1, 0), np.float32)


#: SimpleITK demons: shrink factors of the pyramid (coarsest first, then full resolution) and
#: iterations per level; the displacement field is smoothed with this std (pixels) each iteration.
DEMONS_SHRINK = (4, 2, 1)
DEMONS_ITERATIONS = 50
DEMONS_SMOOTHING = 1.0


def demons_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SimpleITK ``FastSymmetricForcesDemonsRegistrationFilter``, multi-resolution, in our convention.

    ``Execute(fixed, moving, initial_field)`` returns a displacement field image ``d`` in physical
    units with ``warped(p) = moving(p + d(p))`` for ``p`` on the fixed grid: backward, as ours,
    with ``fixed = target``, ``moving = source``. The images get origin 0 and spacing 1, so
    physical units are pixels; ``GetArrayFromImage`` gives ``(H, W, 2)`` with components in ITK's
    (x, y) = (column, row) order, so they are reversed and moved first. The pyramid follows
    SimpleITK's multi-resolution demons example: smooth, resample at ``1 / shrink``, register,
    resample the field onto the next finer grid as the next level's initial field.
    """
    import SimpleITK as sitk

    fixed = sitk.GetImageFromArray(target.astype(np.float32))
    moving = sitk.GetImageFromArray(source.astype(np.float32))
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(DEMONS_ITERATIONS)
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(DEMONS_SMOOTHING)
    disp = None
    for shrink in DEMONS_SHRINK:
        f_level, m_level = _sitk_shrink(fixed, shrink), _sitk_shrink(moving, shrink)
        if disp is None:
            disp = sitk.Image(f_level.GetSize(), sitk.sitkVectorFloat64)
            disp.CopyInformation(f_level)
        else:
            disp = sitk.Resample(disp, f_level)  # physical units: no rescaling of the vectors needed
        disp = demons.Execute(f_level, m_level, disp)
    field = sitk.GetArrayFromImage(disp)  # (H, W, 2) as (x, y)
    return np.ascontiguousarray(np.moveaxis(field[..., ::-1], -1, 0), np.float32)


def _sitk_shrink(image, shrink: int):
    """Gaussian-smoothed copy of a SimpleITK image on a grid ``shrink`` times coarser, same physical extent."""
    import SimpleITK as sitk

    if shrink == 1:
        return image
    smoothed = sitk.SmoothingRecursiveGaussian(image, 0.5 * shrink)
    size = [max(2, round(s / shrink)) for s in image.GetSize()]
    spacing = [(s - 1) * sp / (n - 1) for s, sp, n in zip(image.GetSize(), image.GetSpacing(), size, strict=True)]
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing, image.GetDirection(), 0.0)


def identity_method() -> Method:
    """The zero-field baseline."""
    return Method("identity", identity_flow, "baseline", description="zero field (no registration)")


#: The classical methods of :func:`regcore.register` in the benchmark: (name, required module, description).
#: ``"dis-fast"`` is left out: at the benchmark's sizes its finest scale (a quarter of the image)
#: is too coarse for smooth fields (``tests/test_bench.py``'s convention check fails it on them).
REGISTER_CLASSICAL = (
    ("tvl1", "skimage", "scikit-image optical_flow_tvl1, default parameters"),
    ("ilk", "skimage", "scikit-image optical_flow_ilk, radius 7"),
    ("dis", "cv2", "OpenCV DIS optical flow, MEDIUM preset"),
    ("dis-fine", "cv2", "OpenCV DIS optical flow, MEDIUM preset, finest scale 0, 10 variational refinement iterations"),
    ("farneback", "cv2", "OpenCV Farnebäck optical flow, OpenCV's typical parameters (regcore.classical.FARNEBACK)"),
)


def classical_methods() -> list[Method]:
    """register()'s classical methods (:data:`REGISTER_CLASSICAL`), SyN (dipy) and fast symmetric demons (SimpleITK).

    The register() methods run with ``polarity="keep"``: each peer as its library gives it,
    without regcore's contrast-inversion check.
    """
    return [
        *(
            Method(name, register_flow(name, polarity="keep"), "classical", (module,), description=f"{what} (register(method='{name}'))")
            for name, module, what in REGISTER_CLASSICAL
        ),
        Method(
            "syn",
            syn_flow,
            "classical",
            ("dipy",),
            description=f"dipy SyN, CCMetric(2), level_iters {list(SYN_LEVEL_ITERS)}",
        ),
        Method(
            "demons",
            demons_flow,
            "classical",
            ("SimpleITK",),
            description=f"SimpleITK fast symmetric forces demons, shrink {list(DEMONS_SHRINK)}, "
            f"{DEMONS_ITERATIONS} it/level, field smoothing σ={DEMONS_SMOOTHING}",
        ),
    ]


def regcore_methods(
    models: dict[str, str | os.PathLike],
    refine_steps: Sequence[int] = (10, 30, 100),
    optimize: bool = True,
    optimize_steps: int | None = None,
) -> list[Method]:
    """regcore's ``"net"`` and ``"net+refine"`` (one per step count) for each model, and ``"optimize"``.

    ``optimize_steps`` overrides the optimisation steps per pyramid level of ``"optimize"``.
    Each is :func:`register_flow`, as for the classical methods (``net@half`` registers at half
    the image's size instead).
    """

    def call(method: str, model: str | os.PathLike | None, steps: int | None, half: bool = False, polish: bool = True) -> FlowFn:
        if not half:
            return register_flow(method, model=model, refine_steps=steps, polish=polish)

        def fn(source: np.ndarray, target: np.ndarray) -> np.ndarray:
            return register(source, target, method=method, model=model, refine_steps=steps, max_side=max(source.shape) // 2).flow

        return fn

    methods = []
    for index, (name, path) in enumerate(models.items()):
        net_variants = (  # (name suffix, register() options, slow, what the description adds)
            ("net", {}, False, "): network + Lucas–Kanade polish"),
            ("net-raw", {"polish": False}, False, ", polish=False): the network's field alone"),
            ("net@half", {"half": True}, True, ", max_side=side // 2): the pair at half resolution, field upsampled (speed vs accuracy)"),
        )
        for suffix, options, slow, what in net_variants:
            methods.append(
                Method(
                    f"{name}:{suffix}",
                    call("net", path, None, **options),
                    "regcore",
                    slow=slow,
                    description=f"register(method='net', model={name}{what}",
                )
            )
        for steps in refine_steps:
            default = " (register()'s default when this is the default model)" if steps == DEFAULT_REFINE_STEPS and index == 0 else ""
            methods.append(
                Method(
                    f"{name}:net+refine{steps}",
                    call("net+refine", path, steps),
                    "regcore",
                    slow=steps > 30,
                    description=f"register(method='net+refine', refine_steps={steps}, model={name}){default}",
                )
            )
    if optimize:
        steps = f"refine_steps={optimize_steps}" if optimize_steps else "default steps"
        methods.append(
            Method(
                "optimize",
                call("optimize", None, optimize_steps),
                "regcore",
                description=f"register(method='optimize', {steps}): no network",
            )
        )
    return methods


# ---------------------------------------------------------------------------------------------
# Scoring and running
# ---------------------------------------------------------------------------------------------


def margin_for(size: int, fraction: float = 0.1) -> int:
    """Border left out of the EPE: ``fraction`` of the side (content there may have left the image)."""
    return round(fraction * size)


def score(pair: Pair, flow: np.ndarray, margin_fraction: float = 0.1) -> dict[str, float]:
    """Scores of one estimated field on one pair.

    Returns: ``epe`` (mean endpoint error in px over the interior, ``margin_fraction`` of the side
    left out at each border), ``mse`` and ``local_ncc`` of ``warp(source, flow)`` against the
    target, ``folding_percent`` (pixels with Jacobian determinant ≤ 0) and ``jac_std`` (std of
    the Jacobian determinant over the image).
    """
    flow = np.asarray(flow, np.float32)
    if flow.shape != pair.flow.shape:
        raise ValueError(f"method returned a field of shape {flow.shape}, expected {pair.flow.shape}")
    with torch.inference_mode():
        warped = warp(torch.from_numpy(pair.source)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    scores = image_scores(warped, pair.target)
    return {
        "epe": endpoint_error(flow, pair.flow, margin_for(pair.source.shape[0], margin_fraction)),
        "mse": scores["mse"],
        "local_ncc": scores["local_ncc"],
        "folding_percent": folding_percent(flow),
        "jac_std": float(jacobian_determinant(flow).std()),
    }


def set_threads(threads: int | None) -> None:
    """Give every method the same number of threads (torch, SimpleITK); None leaves the defaults."""
    if not threads:
        return
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by libraries that start OpenMP later
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        cv2.setNumThreads(threads)
    if importlib.util.find_spec("SimpleITK") is not None:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def run_accuracy(
    sets: dict[str, EvalSet],
    methods: Sequence[Method],
    count: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Register every pair of every set with every method; one row per (set, pair, method).

    Methods run interleaved (for each pair, every method in turn), so background load falls on
    all of them alike; each method is first run once on a set's first pair, untimed (warm-up:
    imports, model loading, allocator and oneDNN caches; once per image size). Rows: ``set``, ``pair``, ``method``,
    ``family``, ``time_s`` and the :func:`score` figures.
    """
    runnable = []
    for method in methods:
        why = available(method)
        if why:
            log(why)
        else:
            runnable.append(method)
    rows = []
    warm: set[int] = set()
    for set_name, spec in sets.items():
        pairs = build_pairs(spec, count)
        log(f"{set_name}: {len(pairs)} pairs of {spec.size}², fields up to {spec.max_disp:g} px")
        if spec.size not in warm:  # per image size: oneDNN and allocator caches are per shape
            warm.add(spec.size)
            for method in runnable:
                method.fn(pairs[0].source, pairs[0].target)
        for i, pair in enumerate(pairs):
            for method in runnable:
                start = time.perf_counter()
                flow = method.fn(pair.source, pair.target)
                elapsed = time.perf_counter() - start
                rows.append(
                    {"set": set_name, "pair": pair.name, "method": method.name, "family": method.family, "time_s": elapsed}
                    | score(pair, flow)
                )
            log(f"  {set_name} pair {i + 1}/{len(pairs)} ({pair.name}) done")
    return rows


SUMMARY_FIELDS = (
    "set",
    "method",
    "pairs",
    "epe_mean",
    "epe_median",
    "mse",
    "local_ncc",
    "folding_percent",
    "jac_std",
    "time_s",
    "speedup_vs_tvl1",
)


def summarise(rows: Iterable[dict]) -> list[dict]:
    """Per (set, method): mean and median over pairs of the per-pair EPE, means of the other scores,
    the median time per pair, and the speed ratio ``time(tvl1) / time(method)`` within the set."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["set"], row["method"]), []).append(row)
    out = []
    for (set_name, method), group in groups.items():
        out.append(
            {
                "set": set_name,
                "method": method,
                "pairs": len(group),
                "epe_mean": float(np.mean([r["epe"] for r in group])),
                "epe_median": float(np.median([r["epe"] for r in group])),
                "mse": float(np.mean([r["mse"] for r in group])),
                "local_ncc": float(np.mean([r["local_ncc"] for r in group])),
                "folding_percent": float(np.mean([r["folding_percent"] for r in group])),
                "jac_std": float(np.mean([r["jac_std"] for r in group])),
                "time_s": float(statistics.median(r["time_s"] for r in group)),
            }
        )
    tvl1 = {s["set"]: s["time_s"] for s in out if s["method"] == "tvl1"}
    for s in out:
        s["speedup_vs_tvl1"] = tvl1[s["set"]] / s["time_s"] if s["set"] in tvl1 and s["time_s"] > 0 else float("nan")
    return out


def machine_description(threads: int | None = None) -> str:
    """One line: CPU model, core count, threads given to each method, load average, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at start"
    return f"{cpu}, {os.cpu_count()} cores, {threads or torch.get_num_threads()} thread(s) per method{load}, torch {torch.__version__}"


def markdown_table(summary: Sequence[dict], set_name: str) -> str:
    """The summary rows of one set as a markdown table (time in ms)."""
    lines = [
        "| method | EPE mean (px) | EPE median (px) | MSE | local NCC | folding % | std J | time / pair (ms) | × TV-L1 speed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted((s for s in summary if s["set"] == set_name), key=lambda s: s["epe_mean"]):
        ratio = "–" if s["method"] == "identity" or math.isnan(s["speedup_vs_tvl1"]) else f"{s['speedup_vs_tvl1']:.2f}"
        lines.append(
            f"| {s['method']} | {s['epe_mean']:.2f} | {s['epe_median']:.2f} | {s['mse']:.4f} | {s['local_ncc']:.3f} | "
            f"{s['folding_percent']:.3f} | {s['jac_std']:.3f} | {1000 * s['time_s']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def bar_report(summary: Sequence[dict], model: str, default_steps: int = 30) -> str:
    """Markdown bullets comparing the figures with the project's bar (issues 4 and 6), from ``summary``.

    ``model`` is the default checkpoint's name; ``register()``'s default is ``model:net+refine{default_steps}``.
    Only what the summary holds is reported; nothing is asserted here.
    """
    by = {(s["set"], s["method"]): s for s in summary}
    net, default = f"{model}:net", f"{model}:net+refine{default_steps}"
    refines = sorted({s["method"] for s in summary if s["method"].startswith(f"{model}:net+refine")})
    lines = []
    for set_name in ("photo128", "photo256"):
        tv, d, n, syn = (by.get((set_name, m)) for m in ("tvl1", default, net, "syn"))
        if tv and d:
            verdict = "below" if d["epe_mean"] < tv["epe_mean"] else "NOT below"
            lines.append(
                f"- {set_name}: default register() ({default}) mean EPE {d['epe_mean']:.2f} px, {verdict} TV-L1's "
                f"{tv['epe_mean']:.2f}; folding {d['folding_percent']:.3f}% (bar < 0.1%)"
            )
        if tv and n:
            verdict = "no worse than" if n["epe_mean"] <= tv["epe_mean"] else "WORSE than"
            lines.append(
                f"- {set_name}: {net} is {n['speedup_vs_tvl1']:.1f}× TV-L1's speed (bar ≥ 20× at 256²), "
                f"EPE {n['epe_mean']:.2f} px, {verdict} TV-L1"
            )
        if syn and n:
            lines.append(
                f"- {set_name}: {net} is {syn['time_s'] / n['time_s']:.1f}× SyN's speed (bar ≥ 50×); SyN EPE {syn['epe_mean']:.2f} px"
            )
        if syn and refines:
            best = min((by[(set_name, m)] for m in refines if (set_name, m) in by), key=lambda r: r["epe_mean"], default=None)
            if best:
                verdict = "at or below" if best["epe_mean"] <= syn["epe_mean"] else "ABOVE"
                lines.append(
                    f"- {set_name}: best net+refine ({best['method']}) EPE {best['epe_mean']:.2f} px, {verdict} SyN's {syn['epe_mean']:.2f}"
                )
    for set_name in sorted({s["set"] for s in summary if "gamma" in s["set"] or "invert" in s["set"]}):
        ident, n, d = (by.get((set_name, m)) for m in ("identity", net, default))
        if ident and (n or d):
            got = ", ".join(f"{r['method']} {r['epe_mean']:.2f}" for r in (n, d) if r)
            lines.append(f"- {set_name}: mean EPE {got} px (identity {ident['epe_mean']:.2f})")
    return "\n".join(lines)


def _write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Outputs:
    """Paths written by :func:`write_outputs` / :func:`write_scaling`."""

    files: dict[str, Path] = field(default_factory=dict)


def write_outputs(
    out_dir: str | os.PathLike,
    rows: Sequence[dict],
    summary: Sequence[dict],
    sets: dict[str, EvalSet],
    methods: Sequence[Method],
    header: str,
    default_model: str | None = None,
) -> Outputs:
    """Write ``results.md`` (the :func:`bar_report` for ``default_model``, then one table per set),
    ``results.csv`` (summary), ``pairs.csv`` (every pair) and ``accuracy_vs_time.png`` (mean EPE
    against median time per pair, log time axis)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = Outputs()
    parts = [f"# regcore benchmark\n\n{header}\n"]
    for set_name, spec in sets.items():
        if not any(s["set"] == set_name for s in summary):
            continue
        what = "scikit-image photographs" if spec.kind == "photo" else "generated label-map images"
        extra = {
            "gamma": ", target gamma 0.5 or 2",
            "invert": ", target intensities inverted",
            "augment": ", independent random bias field, gamma and noise on each image",
        }.get(spec.contrast, "")
        extra += f", Gaussian noise σ={spec.noise:g} on both" if spec.noise else ""
        parts.append(
            f"## {set_name}: {what}, {spec.size}², fields up to {spec.max_disp:g} px{extra}\n\n"
            f"EPE over the interior ({margin_for(spec.size)} px border left out); mean / median over pairs; time: median per pair.\n\n"
            + markdown_table(summary, set_name)
            + "\n"
        )
    bar = bar_report(summary, default_model) if default_model else ""
    if bar:
        parts.insert(1, f"## Against the bar (default model `{default_model}`)\n\n{bar}\n")
    used = {s["method"] for s in summary}
    parts.append("## Methods\n\n" + "\n".join(f"- `{m.name}`: {m.description}" for m in methods if m.name in used) + "\n")
    paths.files["markdown"] = out / "results.md"
    paths.files["markdown"].write_text("\n".join(parts))
    paths.files["csv"] = out / "results.csv"
    _write_csv(paths.files["csv"], summary, SUMMARY_FIELDS)
    paths.files["pairs"] = out / "pairs.csv"
    _write_csv(
        paths.files["pairs"], rows, ("set", "pair", "method", "family", "epe", "mse", "local_ncc", "folding_percent", "jac_std", "time_s")
    )
    paths.files["plot"] = out / "accuracy_vs_time.png"
    _plot_accuracy(paths.files["plot"], summary, list(sets), methods)
    return paths


def _plot_accuracy(path: Path, summary: Sequence[dict], set_names: Sequence[str], methods: Sequence[Method]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    set_names = [s for s in set_names if any(r["set"] == s and r["method"] != "identity" for r in summary)]
    cols = min(3, len(set_names)) or 1
    rows_n = math.ceil(len(set_names) / cols) or 1
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    colours = {"regcore": "tab:blue", "classical": "tab:orange", "baseline": "tab:gray"}
    family = {m.name: m.family for m in methods}
    for ax, set_name in zip(axes.flat, set_names, strict=False):
        points = [r for r in summary if r["set"] == set_name and r["method"] != "identity"]
        for r in points:
            ax.scatter(r["time_s"], r["epe_mean"], color=colours.get(family.get(r["method"], ""), "k"), s=30)
            ax.annotate(r["method"], (r["time_s"], r["epe_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ident = [r for r in summary if r["set"] == set_name and r["method"] == "identity"]
        if ident:
            ax.axhline(ident[0]["epe_mean"], color="tab:gray", ls="--", lw=0.8, label="identity (no registration)")
            ax.legend(fontsize=7, loc="best")
        ax.set_xscale("log")
        ax.set_yscale("log")  # failures (tens of px) and sub-pixel results on one axis
        ax.set_xlabel("time per pair (s, log)")
        ax.set_ylabel("mean EPE (px, log)")
        ax.set_title(set_name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(set_names) :]:
        ax.axis("off")
    fig.suptitle("accuracy vs time (lower left is better; blue: regcore, orange: classical)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Scaling
# ---------------------------------------------------------------------------------------------


def call_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times in seconds of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _time_calls(fn: Callable[[], object], repeats: int, warmup: bool) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    return float(statistics.median(call_times(fn, repeats, int(warmup))))


def growth_exponent(sides: Sequence[int], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(pixel count): time ∝ pixels ** slope."""
    x = np.log(np.asarray(sides, np.float64) ** 2)
    y = np.log(np.asarray(times, np.float64))
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")


def scaling(
    sizes: Sequence[int],
    model: str | os.PathLike | None,
    batch_sizes: Sequence[int] = (1, 4, 16),
    batch_sides: Sequence[int] = (128, 256),
    max_optimize: int = 1024,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], list[dict]]:
    """Time per pair against image side, and network batch throughput.

    Time rows (``method``, ``size``, ``time_s``) for ``register(method="net")`` (when a model is
    given), ``register(method="optimize")`` (sides up to ``max_optimize``) and TV-L1, on the
    camera photograph deformed by a known field. Methods are interleaved per size; each call is
    timed ``3`` times (median) below 512², once above, after a warm-up call unless the previous
    size already took over 2 s (then start-up costs are negligible).

    Throughput rows (``batch``, ``size``, ``pairs_per_s``): the network alone on batches of pairs,
    through :func:`regcore.inference.network_flow` (ONNX Runtime when installed, as register() does).
    """
    fns: dict[str, Callable[[np.ndarray, np.ndarray, int], object]] = {}
    if model is not None:
        fns["net"] = lambda s, t, side: register(s, t, method="net", model=model, max_side=side)
    fns["optimize"] = lambda s, t, side: register(s, t, method="optimize", max_side=side)
    fns["tvl1"] = lambda s, t, side: register(s, t, method="tvl1", polarity="keep", max_side=side)
    rows: list[dict] = []
    last: dict[str, float] = {}
    for side in sizes:
        pair = build_pairs(EvalSet("photo", side, side / 16, seed=7000 + side, count=1))[0]
        for name, fn in fns.items():
            if name == "optimize" and side > max_optimize:
                continue
            t = _time_calls(
                lambda fn=fn, side=side, pair=pair: fn(pair.source, pair.target, side), 3 if side < 512 else 1, last.get(name, 0) < 2
            )
            last[name] = t
            rows.append({"method": name, "size": side, "time_s": t})
            log(f"  scaling {name} {side}²: {1000 * t:.1f} ms")
    throughput: list[dict] = []
    if model is not None:
        net = load_model(model)
        for side in batch_sides:
            for batch in batch_sizes:
                image = build_pairs(EvalSet("photo", side, side / 16, seed=8000 + side, count=1))[0].source
                x = torch.from_numpy(np.stack([image] * batch))[:, None]
                t = _time_calls(lambda x=x: network_flow(net, x, x.flip(-1)), 3, True)
                throughput.append({"batch": batch, "size": side, "pairs_per_s": batch / t, "time_s": t})
                log(f"  throughput batch {batch} at {side}²: {batch / t:.1f} pairs/s")
    return rows, throughput


def write_scaling(out_dir: str | os.PathLike, rows: Sequence[dict], throughput: Sequence[dict], header: str) -> Outputs:
    """Write ``scaling.md``, ``scaling.csv``, ``throughput.csv`` and ``scaling.png`` (log-log time
    against side, and pairs/s against batch size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = Outputs()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    lines = [
        f"# scaling\n\n{header}\n",
        "| method | " + " | ".join(f"{s}²" for s in sizes) + " | growth (time ∝ pixels^a, sides ≥ 128) |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    for m in methods:
        by_size = {r["size"]: r["time_s"] for r in rows if r["method"] == m}
        big = [(s, t) for s, t in sorted(by_size.items()) if s >= 128]
        a = growth_exponent([s for s, _ in big], [t for _, t in big])
        cells = " | ".join(f"{1000 * by_size[s]:.0f} ms" if s in by_size else "–" for s in sizes)
        lines.append(f"| {m} | {cells} | a = {a:.2f} |")
    if throughput:
        lines += [
            "",
            "Network batch throughput (regcore.inference.network_flow: ONNX Runtime when installed, else PyTorch):",
            "",
            "| batch | side | pairs/s |",
            "|---|---|---|",
        ]
        lines += [f"| {r['batch']} | {r['size']}² | {r['pairs_per_s']:.1f} |" for r in throughput]
    paths.files["markdown"] = out / "scaling.md"
    paths.files["markdown"].write_text("\n".join(lines) + "\n")
    paths.files["csv"] = out / "scaling.csv"
    _write_csv(paths.files["csv"], rows, ("method", "size", "time_s"))
    paths.files["throughput"] = out / "throughput.csv"
    _write_csv(paths.files["throughput"], throughput, ("batch", "size", "pairs_per_s", "time_s"))
    fig, axes = plt.subplots(1, 2 if throughput else 1, figsize=(11 if throughput else 5.5, 4.2), squeeze=False)
    ax = axes[0, 0]
    for m in methods:
        pts = sorted((r["size"], r["time_s"]) for r in rows if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("time per pair (s)")
    ax.set_title("time per pair vs size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if throughput:
        ax = axes[0, 1]
        for side in sorted({r["size"] for r in throughput}):
            pts = sorted((r["batch"], r["pairs_per_s"]) for r in throughput if r["size"] == side)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{side}²")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("pairs / s")
        ax.set_title("network throughput")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    paths.files["plot"] = out / "scaling.png"
    fig.savefig(paths.files["plot"], dpi=110)
    plt.close(fig)
    return paths
