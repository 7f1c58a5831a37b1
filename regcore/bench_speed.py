"""Speed experiments on the network path: where ``register(method="net")`` spends its time, and
which CPU inference variants of :class:`regcore.RegNet` are faster.

``python benchmarks/run.py --speedups`` runs :func:`profile_register` (torch profiler, top ops),
:func:`register_breakdown` (network vs the rest of ``register()``) and :func:`forward_variants`
(eager ``no_grad`` / ``inference_mode``, channels-last, TorchScript freeze, ``torch.compile``,
ONNX Runtime when installed, at 1 and 2 threads). Variants are timed round-robin (one call of
each per round, median over rounds) so that background load falls on all alike. Each variant's
output is checked against the eager one.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .bench import EvalSet, build_pairs
from .checkpoints import load_model
from .metrics import folding_percent, image_scores, jacobian_determinant

__all__ = ["forward_variants", "profile_register", "register_before_after", "register_breakdown", "round_robin"]


def round_robin(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, called in turn once per round after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: float(statistics.median(t)) for name, t in times.items()}


def _pair(side: int) -> tuple[np.ndarray, np.ndarray]:
    pair = build_pairs(EvalSet("photo", side, side / 16, seed=9000 + side, count=1))[0]
    return pair.source, pair.target


def profile_register(model: str, side: int = 256, calls: int = 5, rows: int = 12) -> str:
    """torch-profiler table (self CPU time) of ``register(method="net")`` at ``side``², after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    from .api import register

    source, target = _pair(side)
    register(source, target, method="net", model=model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            register(source, target, method="net", model=model)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def register_breakdown(model: str, sides: Sequence[int] = (128, 256), rounds: int = 10) -> list[dict]:
    """Median ms of ``register(method="net")`` and of its parts: the network forward and the scoring
    of the result (before/after image scores, folding and Jacobian) that register() also does."""
    from .api import register

    net = load_model(model)
    out = []
    for side in sides:
        source, target = _pair(side)
        x, y = torch.from_numpy(source)[None, None], torch.from_numpy(target)[None, None]
        flow = register(source, target, method="net", model=model).flow

        def forward(x=x, y=y):
            with torch.inference_mode():
                return net(x, y)

        def scoring(source=source, target=target, flow=flow):
            image_scores(source, target)
            image_scores(source, target)
            folding_percent(flow)
            jacobian_determinant(flow).min()

        t = round_robin(
            {
                "register(net)": lambda source=source, target=target: register(source, target, method="net", model=model),
                "network forward": forward,
                "scoring in register()": scoring,
            },
            rounds,
        )
        out += [{"size": side, "part": k, "ms": 1000 * v} for k, v in t.items()]
    return out


def register_before_after(model: str, sides: Sequence[int] = (128, 256), rounds: int = 10) -> list[dict]:
    """Median ms of ``register(method="net")`` and ``register()`` (net+refine, 30 steps) with and without the speed-ups kept in regcore.

    "before" restores, in this process, what the code did before: a contiguous-format model and
    a 2-D ``avg_pool2d`` box mean in local NCC; "after" is the code as it is (channels-last
    weights on CPU, :func:`regcore.losses.box_mean` in two 1-D passes). The two run alternately.
    """
    import torch.nn.functional as F

    from . import losses
    from .api import register

    net = load_model(model)
    separable = losses.box_mean

    def box_2d(x: torch.Tensor, win: int) -> torch.Tensor:
        return F.avg_pool2d(x, win, stride=1, padding=win // 2, count_include_pad=False)

    def configured(before: bool, method: str, source: np.ndarray, target: np.ndarray) -> Callable[[], object]:
        def fn():
            losses.box_mean = box_2d if before else separable
            original_to = net.to
            if before:
                net.to(memory_format=torch.contiguous_format)
                net.to = lambda *a, **k: net  # keep register() from converting it
            try:
                return register(source, target, method=method, model=model)
            finally:
                losses.box_mean = separable
                net.to = original_to

        return fn

    out = []
    try:
        for side in sides:
            source, target = _pair(side)
            fns = {
                f"{method} {label}": configured(label == "before", method, source, target)
                for method in ("net", "net+refine")
                for label in ("before", "after")
            }
            for name, t in round_robin(fns, rounds).items():
                out.append({"size": side, "what": name, "ms": 1000 * t})
    finally:
        losses.box_mean = separable
        net.__dict__.pop("to", None)  # drop the instance attribute left behind; the class method is back
    return out


def _onnx_session(net: torch.nn.Module, side: int, threads: int):
    """An ONNX Runtime session of ``net`` (dynamic batch and size), or None when onnxruntime is missing."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return None
    import onnxruntime as ort

    buf = io.BytesIO()
    x = torch.rand(1, 1, side, side)
    torch.onnx.export(
        net,
        (x, x),
        buf,
        input_names=["source", "target"],
        output_names=["flow"],
        dynamic_axes={"source": {0: "n", 2: "h", 3: "w"}, "target": {0: "n", 2: "h", 3: "w"}, "flow": {0: "n", 2: "h", 3: "w"}},
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


def forward_variants(
    model: str,
    sides: Sequence[int] = (128, 256),
    threads: Sequence[int] = (1, 2),
    rounds: int = 10,
    compile_: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Median ms per forward pass of each inference variant, per thread count and side.

    Rows: ``threads``, ``size``, ``variant``, ``ms``, ``max_abs_diff`` (px, against eager), and
    ``setup_s`` (export / compile time, paid once per process).
    """
    net = load_model(model)
    out = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for side in sides:
            source, target = _pair(side)
            x, y = torch.from_numpy(source)[None, None], torch.from_numpy(target)[None, None]
            with torch.inference_mode():
                ref = net(x, y)
            variants: dict[str, Callable[[], torch.Tensor]] = {}
            setup: dict[str, float] = {}

            def eager_no_grad(x=x, y=y):
                with torch.no_grad():
                    return net(x, y)

            def eager_inference(x=x, y=y):
                with torch.inference_mode():
                    return net(x, y)

            variants["eager no_grad"] = eager_no_grad
            variants["eager inference_mode"] = eager_inference

            net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)  # a copy: the cached model stays as loaded
            xc, yc = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)

            def channels_last(xc=xc, yc=yc, net_cl=net_cl):
                with torch.inference_mode():
                    return net_cl(xc, yc)

            variants["channels_last"] = channels_last

            start = time.perf_counter()
            with torch.no_grad():
                traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, (x, y), check_trace=False).eval()))
            setup["torchscript freeze+optimize"] = time.perf_counter() - start

            def torchscript(x=x, y=y, traced=traced):
                with torch.no_grad():
                    return traced(x, y)

            variants["torchscript freeze+optimize"] = torchscript

            if compile_:
                try:
                    compiled = torch.compile(net, dynamic=False)
                    start = time.perf_counter()
                    with torch.inference_mode():
                        compiled(x, y)
                    setup["torch.compile"] = time.perf_counter() - start

                    def compiled_fn(x=x, y=y, compiled=compiled):
                        with torch.inference_mode():
                            return compiled(x, y)

                    variants["torch.compile"] = compiled_fn
                except Exception as err:  # inductor needs a working C++ toolchain; report, don't stop
                    log(f"torch.compile unavailable: {type(err).__name__}: {str(err).splitlines()[0][:120]}")

            try:
                start = time.perf_counter()
                session = _onnx_session(net, side, n_threads)
                if session is not None:
                    setup["onnxruntime"] = time.perf_counter() - start
                    feeds = {"source": source[None, None], "target": target[None, None]}

                    def onnx_fn(session=session, feeds=feeds):
                        return torch.from_numpy(session.run(None, feeds)[0])

                    variants["onnxruntime"] = onnx_fn
                else:
                    log("onnxruntime not installed: ONNX variant skipped")
            except Exception as err:  # exporter problems are reported, not fatal
                log(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")

            times = round_robin(variants, rounds)
            for name, fn in variants.items():
                diff = float((fn() - ref).abs().max())
                out.append(
                    {
                        "threads": n_threads,
                        "size": side,
                        "variant": name,
                        "ms": 1000 * times[name],
                        "max_abs_diff": diff,
                        "setup_s": setup.get(name, 0.0),
                    }
                )
                log(f"  {n_threads} thread(s) {side}² {name}: {1000 * times[name]:.1f} ms (max diff {diff:.1e} px)")
    return out
