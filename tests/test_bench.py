"""The benchmark: each classical adapter returns fields in the project's convention, the sets are
fixed and deformed independently of regcore, the scores mean what they say, and
``python -m benchmarks.run --quick`` produces sane tables."""

from __future__ import annotations

import csv
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import run, sets, suite
from regcore import pipeline
from regcore.data import PHOTO_NAMES, load_photo, random_fields, stereo_motion
from regcore.metrics import endpoint_error
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent
SIDE = 96
MARGIN = 12


def _deformed(photo: np.ndarray, flow: np.ndarray) -> np.ndarray:
    return warp(torch.from_numpy(photo)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()


def _resampled(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    return sets.resample(torch.from_numpy(image)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()


def _translation(dy: float, dx: float, side: int = SIDE) -> np.ndarray:
    flow = np.zeros((2, side, side), np.float32)
    flow[0], flow[1] = dy, dx
    return flow


def _smooth() -> np.ndarray:
    return random_fields(1, (SIDE, SIDE), 6.0, torch.Generator().manual_seed(0))[0].numpy()  # mean 1.7 px, peak 5.4 px inside


ADAPTERS = {m.name: m for m in suite.classical_methods()}
#: OpenCV DIS's FAST preset stops at a quarter of the image: it does not resolve a 96 px smooth
#: field well enough for the smooth check; the translation check covers its convention.
TOO_COARSE_FOR_SMOOTH = {"dis-fast"}


def test_the_opencv_peers_are_benchmarked():
    assert {"dis-fast", "dis", "dis-fine", "farneback"} <= set(ADAPTERS)


#: Every adapter on both fields, but the smooth one for those too coarse for it (not a skip: a skip
#: fails in CI, and there is nothing to install that would make these run).
CASES = [
    (name, kind)
    for name in sorted(ADAPTERS)
    for kind in ("translation", "smooth")
    if kind == "translation" or name not in TOO_COARSE_FOR_SMOOTH
]


@pytest.mark.parametrize(("name", "kind"), CASES)
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


def test_resample_is_exact_on_an_integer_shift_and_agrees_with_warp(photo):
    shifted = _resampled(photo, _translation(3.0, -2.0))
    # out[y, x] = image[y + 3, x - 2]; the edge is repeated outside the image.
    np.testing.assert_allclose(shifted[:-3, 2:], photo[3:, :-2], atol=1e-5)
    np.testing.assert_allclose(shifted[-1, 2:], photo[-1, :-2], atol=1e-5)
    # Same convention as regcore's bilinear warp: on a smooth field they differ only by interpolation.
    smooth = _smooth()
    difference = np.abs(_resampled(photo, smooth) - _deformed(photo, smooth))[MARGIN:-MARGIN, MARGIN:-MARGIN]
    assert difference.mean() < 0.01 and difference.max() < 0.2
    moved_back = np.abs(_resampled(photo, -smooth) - _deformed(photo, smooth))[MARGIN:-MARGIN, MARGIN:-MARGIN]
    assert moved_back.mean() > 5 * difference.mean()


def test_sets_are_fixed_and_deformed_by_the_independent_resampler():
    spec = sets.EvalSet("photo", 64, 4.0, seed=3, count=3)
    a, b = sets.build_pairs(spec), sets.build_pairs(spec)
    assert [p.name for p in a] == ["camera", "moon", "coins"]
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.target, q.target)
        np.testing.assert_array_equal(p.flow, q.flow)
        np.testing.assert_array_equal(p.source, load_photo(p.name, 64))
        # Without contrast change or noise, the target is the source resampled by the true field.
        np.testing.assert_allclose(_resampled(p.source, p.flow), p.target, atol=1e-6)
        assert p.valid.all() and p.labels is None
    # The first pairs do not depend on how many are asked for.
    np.testing.assert_array_equal(sets.build_pairs(spec, 1)[0].flow, a[0].flow)
    other = sets.build_pairs(sets.EvalSet("photo", 64, 4.0, seed=4, count=3))
    assert not np.array_equal(other[0].flow, a[0].flow)


def test_contrast_changes_and_noise():
    plain = sets.build_pairs(sets.EvalSet("photo", 64, 4.0, seed=3, count=2))[0]
    noisy = sets.build_pairs(sets.EvalSet("photo", 64, 4.0, noise=0.05, seed=3, count=2))[0]
    assert 0.02 < np.std(noisy.target - plain.target) < 0.08
    assert noisy.source.min() >= 0 and noisy.source.max() <= 1
    inverted = sets.build_pairs(sets.EvalSet("photo", 64, 4.0, contrast="invert", seed=3, count=2))[0]
    np.testing.assert_allclose(inverted.target, 1 - plain.target, atol=1e-6)
    sigmoid = sets.build_pairs(sets.EvalSet("photo", 64, 4.0, contrast="sigmoid", seed=3, count=2))[0]
    expected = (1 / (1 + np.exp(-8 * (plain.target - 0.5))) - 1 / (1 + np.exp(4))) / (1 / (1 + np.exp(-4)) - 1 / (1 + np.exp(4)))
    np.testing.assert_allclose(sigmoid.target, expected, atol=1e-5)
    assert sigmoid.target.min() >= 0 and sigmoid.target.max() <= 1
    with pytest.raises(ValueError, match="contrast"):
        sets.EvalSet("photo", 64, 4.0, contrast="augment")


def test_large_and_layered_motion_sets():
    large = sets.build_pairs(sets.EvalSet("photo", 64, 0.15 * 64, motion="large", seed=5, count=4))
    smooth = sets.build_pairs(sets.EvalSet("photo", 64, 0.15 * 64, seed=5, count=4))
    peak = max(np.sqrt((p.flow**2).sum(0)).max() for p in large)
    assert 0.15 * 64 * 0.5 < peak < 0.15 * 64 * 1.4
    # Affine motion moves the whole image: a larger mean displacement than local bends of the same peak.
    assert np.mean([np.abs(p.flow).mean() for p in large]) > np.mean([np.abs(p.flow).mean() for p in smooth])
    spec = sets.EvalSet("photo", 64, 0.15 * 64, motion="layered", seed=6, count=3)
    layered = sets.build_pairs(spec)
    np.testing.assert_array_equal(layered[0].flow, sets.build_pairs(spec)[0].flow)
    for pair in layered:
        # Objects (other photographs) are pasted over the background photograph ...
        assert np.abs(pair.source - load_photo(pair.name, 64)).max() > 0.2
        # ... and move on their own: the field jumps at their outlines, which smooth fields never do.
        jump = np.abs(np.diff(pair.flow, axis=-1)).max()
        assert jump > 1.0
        # The target is the source moved by the true field, except where the motion uncovers background.
        explained = np.abs(_resampled(pair.source, pair.flow) - pair.target) < 0.02
        assert explained.mean() > 0.7


def test_stereo_like_sets_move_along_rows_only_and_nearer_objects_move_more():
    spec = sets.EvalSet("photo", 96, 0.15 * 96, motion="stereo", seed=7, count=3)
    pairs = sets.build_pairs(spec)
    for pair in pairs:
        # Right view to left view: every true field is (0, -disparity), disparity >= 0 and up to about max_disp.
        assert np.all(pair.flow[0] == 0) and pair.flow[1].max() <= 0 and -pair.flow[1].min() < 1.2 * spec.max_disp
        # Objects sit over the background at larger disparities, with sharp jumps at their outlines.
        assert np.abs(np.diff(pair.flow[1], axis=-1)).max() > 1.0
        explained = np.abs(_resampled(pair.source, pair.flow) - pair.target) < 0.02
        assert explained.mean() > 0.7
    layers = stereo_motion(2, (64, 64), 10.0, torch.Generator().manual_seed(0))
    depths = [-layer[:, 1].mean() for layer in (layers.background, *layers.fields)]
    assert all(near > far for far, near in itertools.pairwise(depths))
    with pytest.raises(ValueError, match="label images"):
        sets.EvalSet("labels", 64, 4.0, motion="stereo")


def _spread(image: np.ndarray, labels: np.ndarray) -> float:
    """Mean over labels of the intensity std of the label's pixels."""
    return float(np.mean([image[labels == k].std() for k in np.unique(labels)]))


def test_label_sets_carry_label_maps_and_dice_scores_them():
    spec = sets.EvalSet("labels", 48, 3.0, seed=1, count=3)
    pairs = sets.build_pairs(spec)
    assert len(pairs) == 3 and pairs[0].source.shape == (48, 48)
    for i, pair in enumerate(pairs):
        source_labels, target_labels = pair.labels
        assert source_labels.shape == (48, 48) and np.issubdtype(source_labels.dtype, np.integer)
        np.testing.assert_array_equal(target_labels, sets.warp_labels(source_labels, pair.flow))
        # Each label is one intensity before blur, bias and noise: the image's own map splits it into
        # far more uniform parts than another pair's map does.
        assert _spread(pair.source, source_labels) < 0.7 * _spread(pair.source, pairs[i - 1].labels[0])
    pair = pairs[0]
    assert suite.score(pair, pair.flow)["dice"] == 1.0
    assert suite.score(pair, np.zeros_like(pair.flow))["dice"] < 0.97
    augmented = sets.build_pairs(sets.EvalSet("labels", 48, 3.0, contrast="augment", seed=1, count=3))[0]
    np.testing.assert_array_equal(augmented.labels[0], pair.labels[0])
    assert not np.allclose(augmented.target, pair.target)
    photo = sets.build_pairs(sets.EvalSet("photo", 48, 3.0, seed=1, count=1))[0]
    assert math.isnan(suite.score(photo, photo.flow)["dice"])


def test_stereo_pair_ground_truth_has_regcores_sign():
    """Warping the right view by (0, -disparity) reproduces the left view where the disparity is known."""
    (pair,) = sets.build_pairs(sets.EVAL_SETS["stereo256"])
    h = round(500 * 256 / 741)
    assert pair.source.shape == (h, 256) and pair.flow.shape == (2, h, 256)
    assert not pair.flow[0].any() and (pair.flow[1][pair.valid] < 0).all()
    assert 0.5 < pair.valid.mean() < 0.95
    residual = {
        name: np.abs(_resampled(pair.source, flow) - pair.target)[pair.valid].mean()
        for name, flow in (("truth", pair.flow), ("zero", np.zeros_like(pair.flow)), ("negated", -pair.flow))
    }
    assert residual["truth"] < 0.3 * residual["zero"] and residual["truth"] < 0.3 * residual["negated"]


def test_tuning_sets_use_other_images_and_seeds():
    tuning = sets.tuning_sets(sets.EVAL_SETS)
    assert set(tuning) == set(sets.EVAL_SETS) - {"stereo256"}
    bench_seeds = {spec.seed for spec in sets.EVAL_SETS.values()}
    assert all(spec.images == "tuning" and spec.seed not in bench_seeds for spec in tuning.values())
    assert not {*sets.TUNING_NAMES} & {*PHOTO_NAMES, "stereo_motorcycle", "cat"}
    names, images = sets.tuning_photos(32)
    assert len(names) == len(set(names)) >= 8 and images.shape == (len(names), 32, 32)
    np.testing.assert_array_equal(sets.tuning_photos(32)[1], images)
    bench = np.stack([load_photo(name, 32) for name in PHOTO_NAMES])
    pair = sets.build_pairs(sets.EvalSet("photo", 32, 2.0, seed=1, count=2, images="tuning"))[1]
    assert pair.name in names and np.abs(bench - pair.source).mean(axis=(1, 2)).min() > 0.02
    with pytest.raises(ValueError, match="tuning"):
        sets.EvalSet("stereo", 256, 0.0, images="tuning")


def test_run_refuses_the_stereo_set_on_tuning_images():
    assert "no tuning counterpart" in run._sets(run._parser().parse_args(["--tuning", "--sets", "stereo256"]))
    chosen = run._sets(run._parser().parse_args(["--tuning", "--sets", "photo128-large:2"]))
    assert chosen["photo128-large"].images == "tuning" and chosen["photo128-large"].count == 2


def test_score_of_the_true_field_is_perfect():
    pair = sets.build_pairs(sets.EvalSet("photo", 64, 4.0, seed=3, count=1))[0]
    perfect = suite.score(pair, pair.flow)
    nothing = suite.score(pair, np.zeros_like(pair.flow))
    assert perfect["epe"] == 0 and perfect["folding_percent"] == 0
    assert perfect["mse"] < nothing["mse"] and perfect["local_ncc"] > nothing["local_ncc"]
    assert nothing["epe"] > 0.5 and nothing["jac_std"] == 0


def test_epe_leaves_out_the_border_and_sources_outside_the_image():
    true = _translation(0.0, 20.0, 64)  # pixels at x > 43 sample beyond the right edge
    mask = suite.epe_mask(true)
    assert not mask[:, :6].any() and not mask[:6].any() and not mask[:, 44:].any() and mask[6:58, 6:44].all()
    photo = load_photo("camera", 64)
    pair = sets.Pair("shift", photo, _resampled(photo, true), true, np.ones((64, 64), bool))
    guess = true.copy()
    guess[:, :, 44:] = 0  # wrong only where the answer left the image
    assert suite.score(pair, guess)["epe"] == 0 < endpoint_error(guess, true, 6)
    known = np.ones((64, 64), bool)
    known[:, :20] = False
    assert not suite.epe_mask(true, known)[:, :20].any()


def test_summary_medians_dice_and_speed_ratio():
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
            "dice": math.nan,
        }
        for i in range(3)
        for m, t, e in (("tvl1", 1.0, 1.0), ("fast", 0.1, 0.0))
    ]
    summary = {s["method"]: s for s in suite.summarise(rows)}
    assert summary["fast"]["epe_mean"] == pytest.approx(1.0) and summary["fast"]["epe_median"] == pytest.approx(1.0)
    assert summary["tvl1"]["time_s"] == pytest.approx(2.0)
    assert summary["fast"]["speedup_vs_tvl1"] == pytest.approx(10.0)
    assert math.isnan(summary["fast"]["dice"])
    assert "| fast | 1.00 | 1.00 |  | 0.0000 |" in suite.markdown_table(list(summary.values()), "s")


def test_missing_package_is_skipped_with_a_message():
    method = suite.Method("ghost", suite.identity_flow, "classical", ("no_such_module_xyz",))
    messages = []
    rows = suite.run_accuracy(
        {"tiny": sets.EvalSet("photo", 32, 2.0, seed=1, count=1)}, [method, suite.identity_method()], log=messages.append
    )
    assert any("ghost: skipped" in m and "no_such_module_xyz" in m for m in messages)
    assert {r["method"] for r in rows} == {"identity"}


def test_a_set_of_one_pair_is_timed_over_several_calls_and_scored_on_the_first(monkeypatch):
    clock = iter(np.arange(0.0, 1000.0, 1.0))
    monkeypatch.setattr(suite.time, "perf_counter", lambda: next(clock))
    durations = iter([0.0, 5.0, 1.0, 2.0, 9.0])  # seconds each timed call takes, in call order
    calls = []

    def fake(source, target):
        calls.append(source.shape)
        if len(calls) > 1:  # the first call is the untimed warm-up
            for _ in range(int(next(durations))):
                suite.time.perf_counter()
        return np.zeros((2, *source.shape), np.float32)

    method = suite.Method("fake", fake, "classical")
    rows = suite.run_accuracy({"one": sets.EvalSet("photo", 32, 2.0, seed=1, count=1)}, [method], log=lambda m: None, min_calls=5)
    assert len(calls) == 1 + 5 and len(rows) == 1
    assert rows[0]["time_s"] == 3.0  # median of 1, 6, 2, 3, 10 clock ticks (each call's own ticks plus its stop)
    assert rows[0]["epe"] > 0  # the zero field, scored


def test_regcore_rows_include_the_default_method(monkeypatch):
    methods = {m.name: m for m in suite.regcore_methods({"m": "path"}, refine_steps=(10,))}
    assert list(methods)[:3] == ["m:net", "m:net-raw", "m:net@half"]
    assert "m:net+refine10" in methods and "optimize" in methods
    assert methods[f"m:{pipeline.DEFAULT_METHOD}"].description.endswith("(register()'s default)")
    # Whatever the default is, its row is there, with the step count register() uses.
    monkeypatch.setattr(pipeline, "DEFAULT_METHOD", "net+refine")
    methods = {m.name: m for m in suite.regcore_methods({"m": "path"}, refine_steps=(10,))}
    assert methods[f"m:net+refine{pipeline.DEFAULT_REFINE_STEPS}"].description.endswith("(register()'s default)")
    assert not methods["m:net"].description.endswith("(register()'s default)")


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
    assert "| method | EPE mean (px) | EPE median (px) | Dice |" in table
    assert "default threads" in table
    assert all(name in table for name in ("tvl1", "optimize", "dis-fast", "dis-fine", "farneback"))
    with (out / "results.csv").open() as fh:
        summary = list(csv.DictReader(fh))
    sets_run = {r["set"] for r in summary}
    assert sets_run == set(sets.QUICK_SETS)
    for row in summary:
        for key in ("epe_mean", "epe_median", "mse", "local_ncc", "folding_percent", "jac_std", "time_s"):
            assert math.isfinite(float(row[key])), (row["method"], key)
        if row["set"].startswith("labels"):
            assert 0 < float(row["dice"]) <= 1
        else:
            assert row["dice"] == ""
    for set_name in sets_run:
        rows = {r["method"]: r for r in summary if r["set"] == set_name}
        identity = rows.pop("identity")
        assert len(rows) >= 3  # at least TV-L1, ILK and optimize run everywhere
        for method, row in rows.items():
            epe = float(row["epe_mean"])
            assert epe < float(identity["epe_mean"]), f"{set_name}: {method} EPE {epe} not below identity's {identity['epe_mean']}"
            if row["dice"]:
                assert float(row["dice"]) > float(identity["dice"]), f"{set_name}: {method} Dice not above identity's"


def _bar_row(set_name, method, epe, t, fold=0.0):
    return {"set": set_name, "method": method, "epe_mean": epe, "time_s": t, "folding_percent": fold}


def test_bar_report_states_each_comparison_for_the_default_method(monkeypatch):
    default = suite.default_row("m")
    assert default.startswith(f"m:{pipeline.DEFAULT_METHOD}")
    summary = [
        _bar_row("photo128", default, 0.20, 0.030, 0.01),
        _bar_row("photo128", "dis-fine", 0.25, 0.010),
        _bar_row("photo256-large", default, 0.50, 0.015, 0.2),
        _bar_row("photo256-large", "dis-fine", 0.40, 0.010),
        _bar_row("stereo256", "dis-fine", 0.9, 0.04),
        _bar_row("photo128-sigmoid", default, 0.12, 0.02),
        _bar_row("photo128-gamma", default, 0.30, 0.02),
    ]
    text = suite.bar_report(summary, "m")
    assert f"`{default}`" in text and repr(pipeline.DEFAULT_METHOD) in text
    assert "| photo128 | 0.200 | 0.250 | met | 30.0 | 10.0 | 3.00× | NOT met |" in text
    assert "| photo256-large | 0.500 | 0.400 | NOT met | 15.0 | 10.0 | 1.50× | met |" in text
    assert f"| stereo256 | | | `{default}` not in this run |" in text
    assert "photo128-sigmoid: default mean EPE 0.120 px, bar ≤ 0.15 px: met" in text
    assert "photo128-gamma: default mean EPE 0.300 px, bar ≤ 0.15 px: NOT met" in text
    assert "photo128: default folding 0.010%, bar ≤ 0.05%: met" in text
    assert "photo256" not in text.replace("photo256-large", "")
    # The report follows DEFAULT_METHOD: when the default becomes "net", the "m:net" row is the one compared.
    monkeypatch.setattr(pipeline, "DEFAULT_METHOD", "net")
    assert suite.default_row("m") == "m:net"
    text = suite.bar_report([_bar_row("photo128", "m:net", 0.2, 0.01), _bar_row("photo128", "dis-fine", 0.3, 0.01)], "m")
    assert "Default method: `m:net` (`regcore.pipeline.DEFAULT_METHOD = 'net'`)" in text
    assert "| photo128 | 0.200 | 0.300 | met | 10.0 | 10.0 | 1.00× | met |" in text
