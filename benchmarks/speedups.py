"""Speed experiments on the network path: where ``register(method="net")`` spends its time, and
which CPU inference variants of :class:`regcore.RegNet` are faster.

``python -m benchmarks.run --speedups`` runs :func:`profile_register` (torch profiler, top ops),
:func:`register_breakdown` (network vs the rest of ``register()``) and :func:`forward_variants`
(eager ``no_grad`` / ``inference_mode``, channels-last, TorchScript freeze, ``torch.compile``,
ONNX Runtime when installed, at 1 and 2 threads). Variants are timed round-robin (one call of
each per round, median over rounds) so that background load falls on all alike. Each variant's
output is checked against the eager one.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from unittest import mock

import numpy as np
import torch

from regcore import losses
from regcore.api import register
from regcore.checkpoints import load_model
from regcore.inference import onnx_enabled, onnx_session, session_trunk

from .sets import EvalSet, build_pairs

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
    """torch-profiler table (self CPU time) of ``register(method="net")`` on the PyTorch path at ``side``², after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    source, target = _pair(side)
    # The PyTorch path: ONNX Runtime's work is invisible to the profiler.
    with mock.patch.dict(os.environ, {"REGCORE_ONNX": "0"}):
        register(source, target, method="net", model=model)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                register(source, target, method="net", model=model)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def register_breakdown(model: str, sides: Sequence[int] = (128, 256), rounds: int = 10) -> list[dict]:
    """Median ms of ``register(method="net")``, of the network forward inside it, and of scoring
    its result (``result.before`` and ``result.after``: image scores, folding and Jacobian), which
    register() leaves until they are first read."""

    net = load_model(model)
    out = []
    for side in sides:
        source, target = _pair(side)
        x, y = torch.from_numpy(source)[None, None], torch.from_numpy(target)[None, None]
        result = register(source, target, method="net", model=model)

        def forward(x=x, y=y):
            with torch.inference_mode():
                return net(x, y)

        def scoring(result=result):
            fresh = dataclasses.replace(result)  # a copy without the cached scores
            return fresh.before, fresh.after

        t = round_robin(
            {
                "register(net)": lambda source=source, target=target: register(source, target, method="net", model=model),
                "network forward (eager PyTorch; register() uses ONNX Runtime when installed)": forward,
                "scoring (result.before + .after, on first use)": scoring,
            },
            rounds,
        )
        out += [{"size": side, "part": k, "ms": 1000 * v} for k, v in t.items()]
    return out


def register_before_after(model: str, sides: Sequence[int] = (128, 256), rounds: int = 10) -> list[dict]:
    """Median ms of ``register()`` with ``method="net"`` and ``"net+refine"`` (30 steps), before and after the speed-ups.

    Three states, alternating in this process: "before" (contiguous-format weights, PyTorch,
    2-D ``avg_pool2d`` box mean in local NCC: the code before the speed-ups), "torch" (channels-
    last weights, :func:`regcore.filters.box_mean` as it is now (window sums of strided views), ``REGCORE_ONNX=0``) and
    "onnx" (the same with ONNX Runtime for the network, when installed: the default). The box mean
    is swapped where local NCC looks it up, ``regcore.losses.box_mean``.
    """
    import torch.nn.functional as F

    net = load_model(model)
    current = losses.box_mean

    def box_2d(x: torch.Tensor, win: int) -> torch.Tensor:
        return F.avg_pool2d(x, win, stride=1, padding=win // 2, count_include_pad=False)

    def configured(state: str, method: str, source: np.ndarray, target: np.ndarray) -> Callable[[], object]:
        def fn():
            try:
                losses.box_mean = box_2d if state == "before" else current
                os.environ["REGCORE_ONNX"] = "1" if state == "onnx" else "0"
                if state == "before":
                    net.to(memory_format=torch.contiguous_format)
                    net.to = lambda *a, **k: net  # keep register() from converting it
                return register(source, target, method=method, model=model)
            finally:
                losses.box_mean = current
                net.__dict__.pop("to", None)  # the class method is back

        return fn

    states = ["before", "torch"] + (["onnx"] if onnx_enabled() else [])
    out = []
    with mock.patch.dict(os.environ):  # REGCORE_ONNX is restored afterwards
        for side in sides:
            source, target = _pair(side)
            fns = {(method, state): configured(state, method, source, target) for method in ("net", "net+refine") for state in states}
            for (method, state), t in round_robin(fns, rounds).items():
                out.append({"size": side, "method": method, "state": state, "ms": 1000 * t})
    return out


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

            if onnx_enabled():
                # An empty cache: measure the export itself.
                with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"REGCORE_CACHE": tmp}):
                    start = time.perf_counter()
                    session = onnx_session(copy.deepcopy(net), n_threads)
                    setup["onnxruntime"] = time.perf_counter() - start
                if session is not None:
                    onnx_trunk = session_trunk(session)

                    def onnx_fn(x=x, y=y, trunk=onnx_trunk):
                        with torch.inference_mode():
                            return net(x, y, trunk=trunk)

                    variants["onnxruntime"] = onnx_fn
            else:
                log("onnxruntime or onnx not installed (or REGCORE_ONNX=0): ONNX variant skipped")

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
