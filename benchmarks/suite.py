"""Benchmark: regcore against classical registration on pairs with known deformations.

The reusable parts of ``python -m benchmarks.run`` (:mod:`benchmarks.run`):

- The evaluation sets are :mod:`benchmarks.sets` (:func:`~benchmarks.sets.build_pairs`): real
  photographs bundled with scikit-image (never used in training) under smooth, large, layered
  and stereo-like motion, some with a contrast change or noise, generated label-map images, and one real stereo
  pair, each with its true field; pairs are deformed by SciPy's cubic spline, not by regcore.
- Method adapters (:func:`classical_methods`, :func:`regcore_methods`): each returns a field in
  the project's convention, ``(2, H, W)`` float32 pixels, channel 0 rows, backward warp, so
  ``warp(source, flow) ≈ target``. Every method :func:`regcore.register` offers is called
  through it, as a user would (the classical ones, OpenCV's DIS and Farnebäck among them, are
  :mod:`regcore.classical`); the peers used only here (dipy SyN, SimpleITK demons) are adapted
  in this module, each conversion documented on its adapter. ``tests/test_bench.py`` checks them
  all on a known translation and a known smooth field.
- Scoring (:func:`score`, :func:`summarise`) and output (:func:`write_outputs`: markdown tables,
  the issue-13 :func:`bar_report`, CSV and an accuracy-vs-time PNG).
- Scaling (:func:`scaling`): time per pair against image size, and network batch throughput.

Every method is scored the same way: its field is compared with the true one (EPE where the
truth is known and the source point is inside the image, away from the border), it warps the
source with :func:`regcore.warp.warp` for the image scores, and on label images it carries the
source's label map for Dice.
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

from regcore import pipeline
from regcore.api import register
from regcore.checkpoints import load_model
from regcore.inference import network_flow
from regcore.metrics import dice, image_scores, jacobian_determinant, jacobian_summary
from regcore.warp import warp

from .sets import EvalSet, Pair, build_pairs, describe, warp_labels

__all__ = [
    "Method",
    "available",
    "bar_report",
    "classical_methods",
    "default_row",
    "epe_mask",
    "identity_method",
    "label_dice",
    "machine_description",
    "regcore_methods",
    "run_accuracy",
    "scaling",
    "score",
    "set_threads",
    "summarise",
    "write_csv",
    "write_outputs",
    "write_scaling",
]

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
#: ``"dis-fine"`` is the peer of issue 13's bar (:func:`bar_report`).
REGISTER_CLASSICAL = (
    ("dis-fast", "cv2", "OpenCV DIS optical flow, FAST preset"),
    ("dis", "cv2", "OpenCV DIS optical flow, MEDIUM preset"),
    ("dis-fine", "cv2", "OpenCV DIS optical flow, MEDIUM preset, finest scale 0, 10 variational refinement iterations"),
    ("farneback", "cv2", "OpenCV Farnebäck optical flow, OpenCV's typical parameters (regcore.classical.FARNEBACK)"),
    ("tvl1", "skimage", "scikit-image optical_flow_tvl1, default parameters"),
    ("ilk", "skimage", "scikit-image optical_flow_ilk, radius 7"),
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


def default_row(model: str | None) -> str:
    """The row name of :func:`regcore.register`'s default method with ``model``.

    The method is :data:`regcore.pipeline.DEFAULT_METHOD`, read at each call. A network method's
    row is ``"{model}:{method}"``, with its default step count appended when it takes steps
    (``"ncc:net+refine30"``); a method without a network is its own row (``"optimize"``).
    """
    method = pipeline.DEFAULT_METHOD
    spec = pipeline.METHODS[method]
    if not spec.network:
        return method
    return f"{model}:{method}{'' if spec.default_steps is None else spec.default_steps}"


def regcore_methods(
    models: dict[str, str | os.PathLike],
    refine_steps: Sequence[int] = (10, 30, 100),
    optimize: bool = True,
    optimize_steps: int | None = None,
) -> list[Method]:
    """For each model, every network method of :data:`regcore.pipeline.METHODS`; then ``"optimize"``.

    Rows: ``{model}:{method}`` for a method without steps (for ``"net"`` also ``net-raw``,
    ``polish=False``, and ``net@half``, registered at half the image's size); one
    ``{model}:{method}{steps}`` per count in ``refine_steps`` for a method with steps, plus the
    default count for register()'s default method (:func:`default_row`), so that row is always
    measured. ``optimize_steps`` overrides the optimisation steps per pyramid level of
    ``"optimize"``. Each is :func:`register_flow`, as for the classical methods.
    """

    def call(method: str, model: str | os.PathLike | None, steps: int | None, half: bool = False, polish: bool = True) -> FlowFn:
        if not half:
            return register_flow(method, model=model, refine_steps=steps, polish=polish)

        def fn(source: np.ndarray, target: np.ndarray) -> np.ndarray:
            return register(source, target, method=method, model=model, refine_steps=steps, max_side=max(source.shape) // 2).flow

        return fn

    net_variants = (  # "net"'s extra rows: (row suffix, register() options, slow, what the description adds)
        ("net-raw", {"polish": False}, False, ", polish=False): the network's field alone"),
        ("net@half", {"half": True}, True, ", max_side=side // 2): the pair at half resolution, field upsampled (speed vs accuracy)"),
    )
    methods = []
    for index, (name, path) in enumerate(models.items()):
        default = default_row(name) if index == 0 else None
        for method, spec in pipeline.METHODS.items():
            if not spec.network:
                continue
            if spec.default_steps is None:
                rows = [(method, {}, False, f"): {spec.summary}"), *(net_variants if method == "net" else ())]
                for suffix, options, slow, what in rows:
                    row = f"{name}:{suffix}"
                    methods.append(
                        Method(
                            row,
                            call(method, path, None, **options),
                            "regcore",
                            slow=slow and row != default,
                            description=f"register(method='{method}', model={name}{what}",
                        )
                    )
                continue
            counts = sorted({*refine_steps, *([spec.default_steps] if default == f"{name}:{method}{spec.default_steps}" else [])})
            for steps in counts:
                row = f"{name}:{method}{steps}"
                methods.append(
                    Method(
                        row,
                        call(method, path, steps),
                        "regcore",
                        slow=steps > 30 and row != default,
                        description=f"register(method='{method}', refine_steps={steps}, model={name}): {spec.summary}",
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
    first = default_row(next(iter(models))) if models else None
    for m in methods:
        if m.name == first:
            m.description += " (register()'s default)"
    return methods


# ---------------------------------------------------------------------------------------------
# Scoring and running
# ---------------------------------------------------------------------------------------------


#: Share of each side left out of the EPE at each border (content there may have left the image).
MARGIN_FRACTION = 0.1


def epe_mask(true_flow: np.ndarray, valid: np.ndarray | None = None, margin_fraction: float = MARGIN_FRACTION) -> np.ndarray:
    """Where the endpoint error is scored: ``(H, W)`` bool.

    The interior (``margin_fraction`` of each side left out at each border), where the true
    source point ``p + true_flow(p)`` lies inside the image (large motion brings in content the
    source does not show, which no method can know) and where ``valid`` (the truth is known).
    """
    h, w = true_flow.shape[1:]
    my, mx = round(margin_fraction * h), round(margin_fraction * w)
    mask = np.zeros((h, w), bool)
    mask[my : h - my, mx : w - mx] = True
    rows, cols = np.mgrid[0:h, 0:w]
    y, x = rows + true_flow[0], cols + true_flow[1]
    mask &= (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
    return mask if valid is None else mask & valid


def label_dice(source_labels: np.ndarray, target_labels: np.ndarray, flow: np.ndarray) -> float:
    """Mean Dice over the labels of ``target_labels`` of ``source_labels`` moved by ``flow`` (nearest neighbour)."""
    moved = warp_labels(source_labels, flow)
    return float(np.mean([dice(moved == label, target_labels == label) for label in np.unique(target_labels)]))


def score(pair: Pair, flow: np.ndarray) -> dict[str, float]:
    """Scores of one estimated field on one pair.

    Returns: ``epe`` (mean endpoint error in px over :func:`epe_mask`), ``mse`` and ``local_ncc``
    of ``warp(source, flow)`` against the target, ``folding_percent`` (pixels with Jacobian
    determinant ≤ 0), ``jac_std`` (std of the Jacobian determinant over the image) and ``dice``
    (:func:`label_dice` on label sets, NaN elsewhere).
    """
    flow = np.asarray(flow, np.float32)
    if flow.shape != pair.flow.shape:
        raise ValueError(f"method returned a field of shape {flow.shape}, expected {pair.flow.shape}")
    with torch.inference_mode():
        warped = warp(torch.from_numpy(pair.source)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    scores = image_scores(warped, pair.target)
    error = np.sqrt(((flow.astype(np.float64) - pair.flow) ** 2).sum(axis=0))
    jacobian = jacobian_determinant(flow)
    return {
        "epe": float(error[epe_mask(pair.flow, pair.valid)].mean()),
        "mse": scores["mse"],
        "local_ncc": scores["local_ncc"],
        "folding_percent": jacobian_summary(jacobian)["folding_percent"],
        "jac_std": float(jacobian.std()),
        "dice": label_dice(*pair.labels, flow) if pair.labels else math.nan,
    }


def set_threads(threads: int | None) -> None:
    """Give every method ``threads`` threads (torch, OpenCV, SimpleITK, OpenMP); 0 or None leaves each library's default."""
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


def thread_counts() -> dict[str, int]:
    """Threads each library uses now: torch, and OpenCV and SimpleITK when installed."""
    counts = {"torch": torch.get_num_threads()}
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        counts["OpenCV"] = cv2.getNumThreads()
    if importlib.util.find_spec("SimpleITK") is not None:
        import SimpleITK as sitk

        counts["SimpleITK"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    return counts


#: Fewest timed calls per method and set in ``python -m benchmarks.run`` (:func:`run_accuracy`'s
#: ``min_calls``; not with ``--quick``): sets with fewer pairs (the real stereo pair) register each pair
#: several times over.
MIN_TIMED_CALLS = 5


def run_accuracy(
    sets: dict[str, EvalSet],
    methods: Sequence[Method],
    count: int | None = None,
    log: Callable[[str], None] = print,
    min_calls: int = 1,
) -> list[dict]:
    """Register every pair of every set with every method; one row per (set, pair, method).

    Methods run interleaved (for each pair, every method in turn), so background load falls on
    all of them alike; each method is first run once on a set's first pair, untimed (warm-up:
    imports, model loading, allocator and oneDNN caches; once per image shape). In a set of fewer than
    ``min_calls`` pairs (``python -m benchmarks.run``: :data:`MIN_TIMED_CALLS`) each pair is registered
    ``ceil(min_calls / pairs)`` times over (interleaved too) and its time is the median of those calls:
    one call of a few milliseconds is at the mercy of a single scheduler hiccup. Rows: ``set``,
    ``pair``, ``method``, ``family``, ``time_s`` and the :func:`score` figures (of the first call's field).
    """
    runnable = []
    for method in methods:
        why = available(method)
        if why:
            log(why)
        else:
            runnable.append(method)
    rows = []
    warm: set[tuple[int, ...]] = set()
    for set_name, spec in sets.items():
        pairs = build_pairs(spec, count)
        log(f"{set_name}: {len(pairs)} pair(s): {describe(spec)}")
        if pairs[0].source.shape not in warm:  # oneDNN and allocator caches are per shape
            warm.add(pairs[0].source.shape)
            for method in runnable:
                method.fn(pairs[0].source, pairs[0].target)
        calls = max(1, -(-min_calls // len(pairs)))
        for i, pair in enumerate(pairs):
            flows: dict[str, np.ndarray] = {}
            times: dict[str, list[float]] = {method.name: [] for method in runnable}
            for _ in range(calls):
                for method in runnable:
                    start = time.perf_counter()
                    flow = method.fn(pair.source, pair.target)
                    times[method.name].append(time.perf_counter() - start)
                    flows.setdefault(method.name, flow)
            for method in runnable:
                elapsed = statistics.median(times[method.name])
                rows.append(
                    {"set": set_name, "pair": pair.name, "method": method.name, "family": method.family, "time_s": elapsed}
                    | score(pair, flows[method.name])
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
    "dice",
    "time_s",
    "speedup_vs_tvl1",
)


def summarise(rows: Iterable[dict]) -> list[dict]:
    """Per (set, method): mean and median over pairs of the per-pair EPE, means of the other scores
    (``dice`` NaN outside label sets), the median time per pair, and the speed ratio ``time(tvl1) / time(method)`` within the set."""
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
                "dice": float(np.mean([r["dice"] for r in group])),
                "time_s": float(statistics.median(r["time_s"] for r in group)),
            }
        )
    tvl1 = {s["set"]: s["time_s"] for s in out if s["method"] == "tvl1"}
    for s in out:
        s["speedup_vs_tvl1"] = tvl1[s["set"]] / s["time_s"] if s["set"] in tvl1 and s["time_s"] > 0 else float("nan")
    return out


def machine_description(threads: int | None = None) -> str:
    """One line: CPU model, core count, threads (``threads`` for every method, or each library's
    default when 0 or None, with the counts in effect), load average, torch version."""
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
    counts = ", ".join(f"{name} {n}" for name, n in thread_counts().items())
    given = f"{threads} thread(s) for every method" if threads else "every library at its default threads"
    return f"{cpu}, {os.cpu_count()} cores, {given} ({counts}){load}, torch {torch.__version__}"


def _cell(value: float, fmt: str) -> str:
    return "" if math.isnan(value) else format(value, fmt)


def markdown_table(summary: Sequence[dict], set_name: str) -> str:
    """The summary rows of one set as a markdown table, best mean EPE first (time in ms; Dice blank outside label sets)."""
    lines = [
        "| method | EPE mean (px) | EPE median (px) | Dice | MSE | local NCC | folding % | std J | time / pair (ms) | × TV-L1 speed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted((s for s in summary if s["set"] == set_name), key=lambda s: s["epe_mean"]):
        ratio = "–" if s["method"] == "identity" or math.isnan(s["speedup_vs_tvl1"]) else f"{s['speedup_vs_tvl1']:.2f}"
        lines.append(
            f"| {s['method']} | {s['epe_mean']:.2f} | {s['epe_median']:.2f} | {_cell(s['dice'], '.3f')} | {s['mse']:.4f} | "
            f"{s['local_ncc']:.3f} | {s['folding_percent']:.3f} | {s['jac_std']:.3f} | {1000 * s['time_s']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


#: Issue 13's bar. Photograph sets where the default must match DIS-fine's EPE at no more than
#: :data:`BAR_TIME_RATIO` times its median time; contrast-changed sets and their EPE ceiling (px);
#: sets and the folding ceiling (%).
BAR_PEER = "dis-fine"
BAR_PHOTO_SETS = (
    "photo128",
    "photo256",
    "photo128-large",
    "photo256-large",
    "photo128-layered",
    "photo256-layered",
    "photo256-stereo",
    "stereo256",
)
BAR_TIME_RATIO = 2.0
BAR_CONTRAST_SETS = ("photo128-gamma", "photo128-invert", "photo128-sigmoid")
BAR_CONTRAST_EPE = 0.15
BAR_FOLDING_SETS = ("photo128", "photo256")
BAR_FOLDING_PERCENT = 0.05


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def bar_report(summary: Sequence[dict], model: str) -> str:
    """Issue 13's bar, read from ``summary``: markdown (a table, then bullets). Nothing is asserted here.

    The default is :func:`default_row` for ``model`` (so whatever
    :data:`regcore.pipeline.DEFAULT_METHOD` is when this runs). For each of
    :data:`BAR_PHOTO_SETS` in the summary: its mean EPE against DIS-fine's and its median time as
    a multiple of DIS-fine's; for :data:`BAR_CONTRAST_SETS` its mean EPE against
    :data:`BAR_CONTRAST_EPE`; for :data:`BAR_FOLDING_SETS` its folding against
    :data:`BAR_FOLDING_PERCENT`. A set in the summary without one of the rows is said to be so.
    """
    by = {(s["set"], s["method"]): s for s in summary}
    ran = {s["set"] for s in summary}
    default = default_row(model)
    lines = [
        f"Default method: `{default}` (`regcore.pipeline.DEFAULT_METHOD = {pipeline.DEFAULT_METHOD!r}`); peer: `{BAR_PEER}`.",
        "",
    ]
    photo = [name for name in BAR_PHOTO_SETS if name in ran]
    if photo:
        lines += [
            f"| set | default EPE (px) | {BAR_PEER} EPE (px) | EPE ≤ {BAR_PEER} | default time (ms) | {BAR_PEER} time (ms) "
            f"| time ratio | ratio ≤ {BAR_TIME_RATIO:g} |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in photo:
            d, peer = by.get((name, default)), by.get((name, BAR_PEER))
            if not (d and peer):
                missing = " and ".join(f"`{m}`" for m, r in ((default, d), (BAR_PEER, peer)) if not r)
                lines.append(f"| {name} | | | {missing} not in this run | | | | |")
                continue
            ratio = d["time_s"] / peer["time_s"]
            lines.append(
                f"| {name} | {d['epe_mean']:.3f} | {peer['epe_mean']:.3f} | {_verdict(d['epe_mean'] <= peer['epe_mean'])} | "
                f"{1000 * d['time_s']:.1f} | {1000 * peer['time_s']:.1f} | {ratio:.2f}× | {_verdict(ratio <= BAR_TIME_RATIO)} |"
            )
        lines.append("")
    ceilings = (  # (sets, summary key, what, ceiling, unit)
        (BAR_CONTRAST_SETS, "epe_mean", "mean EPE", BAR_CONTRAST_EPE, " px"),
        (BAR_FOLDING_SETS, "folding_percent", "folding", BAR_FOLDING_PERCENT, "%"),
    )
    for names, key, what, ceiling, unit in ceilings:
        for name in (n for n in names if n in ran):
            d = by.get((name, default))
            lines.append(
                f"- {name}: default {what} {d[key]:.3f}{unit}, bar ≤ {ceiling:g}{unit}: {_verdict(d[key] <= ceiling)}"
                if d
                else f"- {name}: the default was not in this run"
            )
    if len(lines) == 2:
        lines.append("None of the bar's sets is in this run.")
    return "\n".join(lines).rstrip()


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    """``rows`` as CSV; NaN (no figure: Dice outside label sets, no TV-L1 row) is written as an empty cell."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows)


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
    against median time per pair, log axes, one panel per set)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = Outputs()
    parts = [
        f"# regcore benchmark\n\n{header}\n\n"
        "Pairs are deformed with SciPy's cubic spline (`benchmarks/sets.py`), not regcore's warp. In every table: EPE over the "
        f"interior ({MARGIN_FRACTION:.0%} of each side left out at each border) where the true source point lies inside the "
        "image (and, on the stereo pair, where the disparity is known), mean / median over pairs; Dice (label sets): mean over "
        "labels of the source's label map carried by the field, nearest neighbour; MSE, local NCC: the source warped by the "
        "field against the target; folding: pixels with Jacobian determinant ≤ 0; time: median per pair.\n"
    ]
    for set_name, spec in sets.items():
        if any(s["set"] == set_name for s in summary):
            parts.append(f"## {set_name}: {describe(spec)}\n\n" + markdown_table(summary, set_name) + "\n")
    if default_model:
        parts.insert(1, f"## Against issue 13's bar (default model `{default_model}`)\n\n{bar_report(summary, default_model)}\n")
    used = {s["method"] for s in summary}
    parts.append("## Methods\n\n" + "\n".join(f"- `{m.name}`: {m.description}" for m in methods if m.name in used) + "\n")
    paths.files["markdown"] = out / "results.md"
    paths.files["markdown"].write_text("\n".join(parts))
    paths.files["csv"] = out / "results.csv"
    write_csv(paths.files["csv"], summary, SUMMARY_FIELDS)
    paths.files["pairs"] = out / "pairs.csv"
    write_csv(
        paths.files["pairs"],
        rows,
        ("set", "pair", "method", "family", "epe", "mse", "local_ncc", "folding_percent", "jac_std", "dice", "time_s"),
    )
    paths.files["plot"] = out / "accuracy_vs_time.png"
    _plot_accuracy(paths.files["plot"], summary, list(sets), methods, default_row(default_model) if default_model else None)
    return paths


def _plot_accuracy(
    path: Path, summary: Sequence[dict], set_names: Sequence[str], methods: Sequence[Method], default: str | None = None
) -> None:
    """One panel per set: mean EPE against median time per pair, every method labelled; the
    ``default`` row is a star and the issue-13 peer (:data:`BAR_PEER`) a diamond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    set_names = [s for s in set_names if any(r["set"] == s and r["method"] != "identity" for r in summary)]
    cols = min(4, len(set_names)) or 1
    rows_n = math.ceil(len(set_names) / cols) or 1
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    colours = {"regcore": "tab:blue", "classical": "tab:orange", "baseline": "tab:gray"}
    family = {m.name: m.family for m in methods}
    markers = {default: ("*", 140), BAR_PEER: ("D", 45)}
    for ax, set_name in zip(axes.flat, set_names, strict=False):
        points = [r for r in summary if r["set"] == set_name and r["method"] != "identity"]
        for r in points:
            marker, size = markers.get(r["method"], ("o", 30))
            ax.scatter(r["time_s"], r["epe_mean"], color=colours.get(family.get(r["method"], ""), "k"), marker=marker, s=size)
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
    star = f"; star: the default ({default})" if default else ""
    fig.suptitle(f"accuracy vs time (lower left is better; blue: regcore, orange: classical{star}; diamond: {BAR_PEER})", fontsize=10)
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

    Time rows (``method``, ``size``, ``time_s``) for ``register()``'s default method and
    ``register(method="net")`` (when a model is given), ``register(method="optimize")`` (sides up to ``max_optimize``) and TV-L1, on the
    camera photograph deformed by a known field. Methods are interleaved per size; each call is
    timed ``3`` times (median) below 512², once above, after a warm-up call unless the previous
    size already took over 2 s (then start-up costs are negligible).

    Throughput rows (``batch``, ``size``, ``pairs_per_s``): the network alone on batches of pairs,
    through :func:`regcore.inference.network_flow` (ONNX Runtime when installed, as register() does).
    """
    fns: dict[str, Callable[[np.ndarray, np.ndarray, int], object]] = {}
    if model is not None:
        for method in dict.fromkeys((pipeline.DEFAULT_METHOD, "net")):
            fns[method] = lambda s, t, side, method=method: register(s, t, method=method, model=model, max_side=side)
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
    write_csv(paths.files["csv"], rows, ("method", "size", "time_s"))
    paths.files["throughput"] = out / "throughput.csv"
    write_csv(paths.files["throughput"], throughput, ("batch", "size", "pairs_per_s", "time_s"))
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
