"""The benchmark: each classical adapter returns fields in the project's convention, the sets are
fixed, the scores mean what they say, and ``python -m benchmarks.run --quick`` produces sane tables."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import suite
from regcore.data import random_fields
from regcore.metrics import endpoint_error
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent
SIDE = 96
MARGIN = 12


def _deformed(photo: np.ndarray, flow: np.ndarray) -> np.ndarray:
    return warp(torch.from_numpy(photo)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()


def _translation(dy: float, dx: float) -> np.ndarray:
    flow = np.zeros((2, SIDE, SIDE), np.float32)
    flow[0], flow[1] = dy, dx
    return flow


def _smooth() -> np.ndarray:
    return random_fields(1, (SIDE, SIDE), 6.0, torch.Generator().manual_seed(0))[0].numpy()  # mean 1.7 px, peak 5.4 px inside


ADAPTERS = {m.name: m for m in suite.classical_methods()}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
@pytest.mark.parametrize("kind", ["translation", "smooth"])
def test_classical_adapter_follows_the_convention(photo, name, kind):
    """A known field is recovered as it is: not negated, not with its channels (axes) swapped."""
    method = ADAPTERS[name]  # its packages (method.requires) are in requirements-dev.txt: a missing one fails here
    true = _translation(3.0, -2.0) if kind == "translation" else _smooth()
    flow = method.fn(photo, _deformed(photo, true))
    assert flow.shape == (2, SIDE, SIDE) and flow.dtype == np.float32
    epe = endpoint_error(flow, true, MARGIN)
    wrong = {
        "zero field": endpoint_error(np.zeros_like(true), true, MARGIN),
        "negated": endpoint_error(-flow, true, MARGIN),
        "channels swapped": endpoint_error(flow[::-1], true, MARGIN),
    }
    if kind == "translation":
        assert epe < 0.8, f"{name} EPE {epe:.2f} px on a 3.6 px translation"
    for label, value in wrong.items():
        assert epe < 0.6 * value, f"{name}: EPE {epe:.2f} px, but {label} gives {value:.2f}"


def test_identity_adapter_is_the_zero_field(photo):
    assert not suite.identity_flow(photo, photo).any()


def test_sets_are_fixed_and_consistent():
    spec = suite.EvalSet("photo", 64, 4.0, seed=3, count=2)
    a, b = suite.build_pairs(spec), suite.build_pairs(spec)
    assert [p.name for p in a] == ["camera", "moon"]
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.target, q.target)
        np.testing.assert_array_equal(p.flow, q.flow)
        # Without contrast change or noise, the target is the source warped by the true field.
        assert np.abs(_deformed(p.source, p.flow) - p.target)[8:-8, 8:-8].max() < 1e-4
    other = suite.build_pairs(suite.EvalSet("photo", 64, 4.0, seed=4, count=2))
    assert not np.array_equal(other[0].flow, a[0].flow)
    noisy = suite.build_pairs(suite.EvalSet("photo", 64, 4.0, noise=0.05, seed=3, count=2))[0]
    assert 0.02 < np.std(noisy.target - a[0].target) < 0.08
    assert noisy.source.min() >= 0 and noisy.source.max() <= 1
    inverted = suite.build_pairs(suite.EvalSet("photo", 64, 4.0, contrast="invert", seed=3, count=2))[0]
    np.testing.assert_allclose(inverted.target, 1 - a[0].target, atol=1e-6)
    labels = suite.build_pairs(suite.EvalSet("labels", 48, 3.0, seed=1, count=3))
    assert len(labels) == 3 and labels[0].source.shape == (48, 48)


def test_score_of_the_true_field_is_perfect():
    pair = suite.build_pairs(suite.EvalSet("photo", 64, 4.0, seed=3, count=1))[0]
    perfect = suite.score(pair, pair.flow)
    nothing = suite.score(pair, np.zeros_like(pair.flow))
    assert perfect["epe"] == 0 and perfect["folding_percent"] == 0
    assert perfect["mse"] < nothing["mse"] and perfect["local_ncc"] > nothing["local_ncc"]
    assert nothing["epe"] > 0.5 and nothing["jac_std"] == 0


def test_summary_medians_and_speed_ratio():
    rows = [
        {
            "set": "s",
            "pair": str(i),
            "method": m,
            "time_s": t * (i + 1),
            "epe": e + i,
            "mse": 0.0,
            "local_ncc": 1.0,
            "folding_percent": 0.0,
            "jac_std": 0.1,
        }
        for i in range(3)
        for m, t, e in (("tvl1", 1.0, 1.0), ("fast", 0.1, 0.0))
    ]
    summary = {s["method"]: s for s in suite.summarise(rows)}
    assert summary["fast"]["epe_mean"] == pytest.approx(1.0) and summary["fast"]["epe_median"] == pytest.approx(1.0)
    assert summary["tvl1"]["time_s"] == pytest.approx(2.0)
    assert summary["fast"]["speedup_vs_tvl1"] == pytest.approx(10.0)


def test_missing_package_is_skipped_with_a_message():
    method = suite.Method("ghost", suite.identity_flow, "classical", ("no_such_module_xyz",))
    messages = []
    rows = suite.run_accuracy(
        {"tiny": suite.EvalSet("photo", 32, 2.0, seed=1, count=1)}, [method, suite.identity_method()], log=messages.append
    )
    assert any("ghost: skipped" in m and "no_such_module_xyz" in m for m in messages)
    assert {r["method"] for r in rows} == {"identity"}


def test_quick_benchmark_produces_sane_tables(tmp_path):
    """The CI run of the benchmark: tables written, no NaN, every real method beats doing nothing."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("results.md", "results.csv", "pairs.csv", "accuracy_vs_time.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "results.md").read_text()
    assert "| method | EPE mean (px)" in table and "tvl1" in table and "optimize" in table
    with (out / "results.csv").open() as fh:
        summary = list(csv.DictReader(fh))
    sets = {r["set"] for r in summary}
    assert sets == set(suite.QUICK_SETS)
    for row in summary:
        for key in ("epe_mean", "epe_median", "mse", "local_ncc", "folding_percent", "jac_std", "time_s"):
            assert math.isfinite(float(row[key])), (row["method"], key)
    for set_name in sets:
        rows = {r["method"]: r for r in summary if r["set"] == set_name}
        identity = float(rows.pop("identity")["epe_mean"])
        assert len(rows) >= 3  # at least TV-L1, ILK and optimize run everywhere
        for method, row in rows.items():
            assert float(row["epe_mean"]) < identity, f"{set_name}: {method} EPE {row['epe_mean']} not below identity's {identity:.3f}"


def test_bar_report_states_each_comparison():
    def row(method, epe, t, fold=0.0, speed=1.0):
        return {"set": "photo256", "method": method, "epe_mean": epe, "time_s": t, "folding_percent": fold, "speedup_vs_tvl1": speed}

    summary = [row("tvl1", 1.0, 1.0), row("syn", 0.5, 5.0), row("m:net", 0.9, 0.05, speed=20.0), row("m:net+refine30", 0.6, 0.5, 0.2)]
    text = suite.bar_report(summary, "m")
    assert "mean EPE 0.60 px, below TV-L1's 1.00; folding 0.200%" in text
    assert "m:net is 20.0× TV-L1's speed" in text and "no worse than TV-L1" in text
    assert "m:net is 100.0× SyN's speed" in text
    assert "best net+refine (m:net+refine30) EPE 0.60 px, ABOVE SyN's 0.50" in text
