import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import regcore
from regcore.errors import ImageError, RegcoreError
from regcore.metrics import endpoint_error, image_scores, jacobian_stats
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent


def _shifted(image: np.ndarray, dy: float, dx: float) -> tuple[np.ndarray, np.ndarray]:
    flow = np.zeros((2, *image.shape), np.float32)
    flow[0], flow[1] = dy, dx
    moved = warp(torch.from_numpy(image)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    return moved, flow


@pytest.mark.parametrize("shift", [(3.0, -2.0), (0.4, 0.7), (-0.25, 1.5), (8.0, 5.0)])
def test_optimize_recovers_translations(photo, shift, no_checkpoints):
    target, true = _shifted(photo, *shift)
    result = regcore.register(photo, target, method="optimize", similarity="mse", refine_steps=80)
    assert endpoint_error(result.flow, true, margin=12) < 0.1
    assert result.after["mse"] < result.before["mse"] / 10


def test_optimize_with_ncc_recovers_a_shift(photo, no_checkpoints):
    target, true = _shifted(photo, 2.5, -1.5)
    result = regcore.register(photo, target, method="optimize", refine_steps=80)
    assert endpoint_error(result.flow, true, margin=12) < 0.1
    assert result.local_ncc > result.before["local_ncc"]


def test_result_follows_the_contract(photo, no_checkpoints):
    target, _ = _shifted(photo, 1.0, 1.0)
    result = regcore.register(Image.fromarray((photo * 255).astype(np.uint8)), target, refine_steps=5)
    assert result.method == "optimize" and any("no trained checkpoint" in n for n in result.notes)
    assert result.flow.shape == (2, *photo.shape) and result.flow.dtype == np.float32
    assert result.warped.shape == photo.shape and result.warped.dtype == np.float32
    assert set(result.before) >= {"mse", "ncc", "local_ncc"}
    assert {"folding_percent", "jacobian_min"} <= set(result.after)
    again = warp(torch.from_numpy(result.source)[None, None], torch.from_numpy(result.flow)[None])[0, 0].numpy()
    assert np.allclose(again, result.warped, atol=1e-6)


def test_scores_are_computed_on_first_use_and_match_the_images(photo, no_checkpoints):
    target, _ = _shifted(photo, 1.0, -1.0)
    result = regcore.register(photo, target, refine_steps=5)
    assert "before" not in vars(result) and "after" not in vars(result)  # nothing scored yet
    assert result.before == image_scores(photo, result.target)
    assert result.after == image_scores(result.warped, result.target) | jacobian_stats(result.flow)
    assert result.after is result.after  # kept once computed


def test_inverted_contrast_is_detected_and_registered(photo, no_checkpoints):
    target, true = _shifted(photo, 2.5, -1.5)
    result = regcore.register(photo, 1.0 - target, method="optimize", refine_steps=80)
    assert any("anti-correlated" in n for n in result.notes)
    assert endpoint_error(result.flow, true, margin=12) < 0.1
    assert result.after["ncc"] < -0.99  # the scores compare with the target as given
    kept = regcore.register(photo, 1.0 - target, method="optimize", refine_steps=80, polarity="keep")
    assert not any("anti-correlated" in n for n in kept.notes)
    assert endpoint_error(kept.flow, true, margin=12) > 0.5
    same = regcore.register(photo, target, refine_steps=2)
    assert not any("anti-correlated" in n for n in same.notes)


def test_unknown_polarity_is_refused(photo, no_checkpoints):
    with pytest.raises(RegcoreError, match="polarity must be one of auto, keep"):
        regcore.register(photo, photo, polarity="flip")


def test_mismatched_sizes_resample_the_target(photo, no_checkpoints):
    small = photo[::2, ::2].copy()
    result = regcore.register(photo, small, refine_steps=2)
    assert result.flow.shape == (2, *photo.shape)
    assert any("target resized" in n for n in result.notes)


def test_large_images_are_registered_at_a_capped_size(no_checkpoints):
    image = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    result = regcore.register(image, image, refine_steps=1, max_side=64)
    assert result.flow.shape == (2, 300, 200)
    assert any("capped" in n for n in result.notes)


def test_net_method_needs_a_checkpoint(photo, no_checkpoints):
    with pytest.raises(RegcoreError, match="needs a trained checkpoint"):
        regcore.register(photo, photo, method="net")


def test_net_methods_with_a_checkpoint(photo, tmp_path):
    net = regcore.RegNet(enc_features=(4, 8, 8), dec_features=(8, 8, 8), final_features=(4,))
    regcore.save_model(net, tmp_path / "tiny")
    result = regcore.register(photo, photo, method="net", model=tmp_path / "tiny")
    assert result.method == "net" and result.model == str(tmp_path / "tiny")
    assert np.abs(result.flow).max() < 0.05  # untrained, near-zero head
    refined = regcore.register(photo, _shifted(photo, 1, 0)[0], method="net+refine", model=tmp_path / "tiny", refine_steps=3)
    assert refined.method == "net+refine"


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((0, 5)), "empty"),
        (np.zeros((2, 3, 4, 5)), "expected a 2-D image"),
        (np.array([["a"]]), "dtype"),
        ("does/not/exist.png", "no such file"),
        (b"", "empty"),
        (42, "expected a numpy array"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, message, photo):
    with pytest.raises(ImageError, match=re.escape(message)):
        regcore.register(bad, photo)


def test_bad_arguments(photo):
    with pytest.raises(RegcoreError, match="unknown method"):
        regcore.register(photo, photo, method="magic")
    with pytest.raises(RegcoreError, match="refine_steps"):
        regcore.register(photo, photo, refine_steps=-1)


def test_loader_converts_modes(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    assert np.allclose(regcore.load_image(rgba), 1.0)
    Image.fromarray(np.arange(36, dtype=np.uint16).reshape(6, 6) * 1000).save(tmp_path / "a16.png")
    img16 = regcore.load_image(tmp_path / "a16.png")
    assert img16.dtype == np.float32 and img16.min() == 0.0 and img16.max() == pytest.approx(1.0)  # by its actual range
    assert regcore.load_image(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert regcore.load_image(np.array([[-2.0, 2.0]])).tolist() == [[0.0, 1.0]]
    (tmp_path / "trunc.png").write_bytes((tmp_path / "a16.png").read_bytes()[:40])
    with pytest.raises(ImageError, match=r"trunc\.png"):
        regcore.load_image(tmp_path / "trunc.png")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {"REGCORE_CHECKPOINTS": "/nonexistent", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "regcore", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_cli_end_to_end(photo, tmp_path):
    target, true = _shifted(photo, 2.0, -1.0)
    regcore.save_image(tmp_path / "a.png", photo)
    regcore.save_image(tmp_path / "b.png", target)
    run = _cli("register", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "out"), "--refine-steps", "60")
    assert run.returncode == 0, run.stderr
    flow = np.load(tmp_path / "out" / "flow.npy")
    assert flow.shape == (2, *photo.shape)
    assert endpoint_error(flow, true, margin=12) < 0.25  # 8-bit quantisation of the PNGs costs a little
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["after"]["local_ncc"] > metrics["before"]["local_ncc"]
    assert Image.open(tmp_path / "out" / "warped.png").size == (96, 96)
    warp_run = _cli("warp", str(tmp_path / "a.png"), str(tmp_path / "out" / "flow.npy"), "--out", str(tmp_path / "w.png"))
    assert warp_run.returncode == 0, warp_run.stderr
    assert np.abs(regcore.load_image(tmp_path / "w.png") - regcore.load_image(tmp_path / "out" / "warped.png")).max() <= 1 / 255 + 1e-6


def test_cli_polarity_and_presmooth_options(photo, tmp_path):
    target, _ = _shifted(photo, 2.0, -1.0)
    regcore.save_image(tmp_path / "a.png", photo)
    regcore.save_image(tmp_path / "inv.png", 1.0 - target)
    common = ("register", str(tmp_path / "a.png"), str(tmp_path / "inv.png"), "--refine-steps", "2")
    auto = _cli(*common, "--out", str(tmp_path / "auto"))
    assert auto.returncode == 0 and "anti-correlated" in auto.stderr
    keep = _cli(*common, "--out", str(tmp_path / "keep"), "--polarity", "keep")
    assert keep.returncode == 0 and "anti-correlated" not in keep.stderr

    noisy = np.clip(target + np.random.default_rng(0).normal(0, 0.05, target.shape), 0, 1)
    regcore.save_image(tmp_path / "noisy.png", noisy)
    noisy_pair = ("register", str(tmp_path / "a.png"), str(tmp_path / "noisy.png"), "--refine-steps", "2")
    smoothed = _cli(*noisy_pair, "--out", str(tmp_path / "smoothed"))
    assert smoothed.returncode == 0 and "look noisy" in smoothed.stderr
    plain = _cli(*noisy_pair, "--out", str(tmp_path / "plain"), "--presmooth", "off")
    assert plain.returncode == 0 and "look noisy" not in plain.stderr


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    run = _cli("register", str(tmp_path / "bad.png"), str(tmp_path / "bad.png"), "--out", str(tmp_path / "o"))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()
