"""Label maps: reading, following the image (resize and warp, nearest neighbour), Dice per label,
and label maps through register(), metrics.json and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import regcore
from regcore.cli import main
from regcore.errors import ImageError, RegcoreError
from regcore.io import load_labels
from regcore.labels import label_overlap, resize_labels, warp_labels
from regcore.metrics import dice, dice_per_label
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PHANTOM = {role: EXAMPLES / f"phantom_{role}.nii.gz" for role in ("source", "target", "source_labels", "target_labels")}


def test_dice_per_label_matches_the_mask_dice_and_covers_every_label():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (40, 50)), rng.integers(0, 4, (40, 50))
    b[b == 3] = 7  # label 3 only in a, label 7 only in b
    scores = dice_per_label(a, b)
    assert list(scores) == [1, 2, 3, 7]
    for label in (1, 2):
        assert scores[label] == pytest.approx(dice(a == label, b == label))
    assert scores[3] == scores[7] == 0.0
    overlap = label_overlap(a, b)
    assert overlap["mean"] == pytest.approx(np.mean(list(scores.values()))) and set(overlap["per_label"]) == {"1", "2", "3", "7"}
    assert label_overlap(np.zeros((4, 4), int), np.zeros((4, 4), int)) == {"mean": None, "per_label": {}}


def test_warped_labels_move_like_the_image_and_keep_their_values():
    labels = np.zeros((32, 32), np.int32)
    labels[8:20, 10:16], labels[22:28, 4:30] = 3, 65535
    flow = np.zeros((2, 32, 32), np.float32)
    flow[0], flow[1] = 2.0, -3.0  # out[y, x] = labels[y + 2, x - 3]
    moved = warp_labels(labels, flow)
    assert moved.dtype == np.int32 and set(np.unique(moved)) <= {0, 3, 65535}
    assert np.array_equal(moved[6:18, 13:19], labels[8:20, 10:16])
    # The same field moves a picture of the labels (bilinear) onto the same pixels.
    picture = warp(torch.from_numpy((labels == 3).astype(np.float32))[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    assert np.array_equal(picture > 0.5, moved == 3)
    # A smooth, non-integer field: every output label is an input label (no blends such as 1.5).
    rng = np.random.default_rng(1)
    wavy = (rng.standard_normal((2, 4, 4)) * 3).repeat(8, 1).repeat(8, 2).astype(np.float32)
    assert set(np.unique(warp_labels(labels, wavy))) <= {0, 3, 65535}


def test_resized_labels_follow_the_images_grid():
    """Corner pixels map onto corner pixels, as the pipeline's bilinear resize of the image does."""
    labels = np.arange(16, dtype=np.int32).reshape(4, 4)
    up = resize_labels(labels, (7, 7))  # align_corners: old pixel i sits at new pixel 2 i
    assert np.array_equal(up[::2, ::2], labels)
    assert np.array_equal(resize_labels(up, (4, 4)), labels)


def test_label_files_keep_their_values(tmp_path):
    values = np.array([[0, 1, 2, 300], [7, 7, 0, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "labels16.png")  # 16-bit PNG
    assert np.array_equal(load_labels(tmp_path / "labels16.png"), values)
    palette = Image.fromarray(np.array([[0, 1], [2, 5]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0] * 256)  # every index red: the labels are the indices, not the colours
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(load_labels(tmp_path / "palette.png"), [[0, 1], [2, 5]])
    gray_rgb = np.repeat(np.array([[0, 4], [9, 4]], np.uint8)[..., None], 3, axis=2)
    Image.fromarray(gray_rgb).save(tmp_path / "gray_rgb.png")
    assert np.array_equal(load_labels(tmp_path / "gray_rgb.png"), [[0, 4], [9, 4]])
    colour = gray_rgb.copy()
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ImageError, match="in colour"):
        load_labels(tmp_path / "colour.png", "source labels")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=r"source labels \(.*bad.png\): the file is corrupt"):
        load_labels(tmp_path / "bad.png", "source labels")


@pytest.fixture(scope="module")
def phantom_result():
    return regcore.register(
        PHANTOM["source"], PHANTOM["target"], method="net", source_labels=PHANTOM["source_labels"], target_labels=PHANTOM["target_labels"]
    )


def test_dice_rises_when_the_labels_move_with_the_image(phantom_result):
    """The example phantom's target labels are its source labels moved by the field that moved the image."""
    result = phantom_result
    before, after = result.dice["before"], result.dice["after"]
    assert set(before["per_label"]) == set(after["per_label"]) == {"1", "2", "3", "4"}
    assert after["mean"] > before["mean"] + 0.05
    assert all(after["per_label"][k] > before["per_label"][k] for k in before["per_label"])
    assert np.array_equal(result.warped_labels, warp_labels(result.source_labels, result.flow))
    assert result.spacing == (0.9, 0.9)
    assert result.displacement["mean_mm"] == pytest.approx(0.9 * result.displacement["mean_px"], rel=1e-6)


def test_metrics_json_holds_dice_before_and_after_and_the_warped_labels_are_saved(phantom_result, tmp_path):
    paths = phantom_result.save(tmp_path)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["dice"]["before"]["mean"] < metrics["dice"]["after"]["mean"]
    assert metrics["spacing_mm"] == [0.9, 0.9] and metrics["displacement"]["max_mm"] > 0
    assert metrics["inputs"]["source_labels"] == str(PHANTOM["source_labels"]) and metrics["inputs"]["slice"] == "z=middle"
    assert np.array_equal(np.asarray(Image.open(paths["warped_labels"])), phantom_result.warped_labels)
    assert not list(tmp_path.glob("*.part"))


def test_label_maps_must_match_their_images(tmp_path, photo):
    labels = np.zeros((90, 96), np.int32)
    with pytest.raises(ImageError, match=r"source labels: the label map is 96x90 but the source image is 96x96"):
        regcore.register(photo, photo, method="optimize", refine_steps=1, source_labels=labels)
    with pytest.raises(RegcoreError, match="without source labels"):
        regcore.register(photo, photo, method="optimize", refine_steps=1, target_labels=np.zeros((96, 96), np.int32))


def test_target_labels_follow_the_target_to_the_sources_size(photo, no_checkpoints):
    """A target of another size is resampled to the source's grid; its labels go with it (nearest)."""
    small = photo[::2, ::2]
    labels = np.zeros((96, 96), np.int32)
    labels[20:60, 30:70] = 2
    result = regcore.register(photo, small, method="optimize", refine_steps=2, source_labels=labels, target_labels=labels[::2, ::2])
    assert result.target_labels.shape == (96, 96) and set(np.unique(result.target_labels)) == {0, 2}
    assert result.dice["before"]["mean"] > 0.9  # the same square, on the same grid
    only_source = regcore.register(photo, photo, method="optimize", refine_steps=1, source_labels=labels)
    assert only_source.dice is None and only_source.warped_labels.shape == (96, 96)
    assert only_source.metrics()["dice"] is None


def test_cli_registers_2d_nifti_with_labels(tmp_path, capsys):
    labels = ["--source-labels", str(PHANTOM["source_labels"]), "--target-labels", str(PHANTOM["target_labels"])]
    code = main(["register", str(PHANTOM["source"]), str(PHANTOM["target"]), "--out", str(tmp_path), "--method", "net", *labels])
    assert code == 0
    out = capsys.readouterr().out
    assert "Dice (mean)" in out and "mm)" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dice"]["after"]["mean"] > metrics["dice"]["before"]["mean"]


@pytest.mark.parametrize(
    ("axis", "index", "shape"), [("z", None, (128, 128)), ("z", 2, (128, 128)), ("y", 60, (12, 128)), ("x", 70, (12, 128))]
)
def test_cli_registers_a_slice_of_3d_nifti(tmp_path, axis, index, shape):
    args = ["register", str(EXAMPLES / "phantom3d_source.nii.gz"), str(EXAMPLES / "phantom3d_target.nii.gz"), "--out", str(tmp_path)]
    args += ["--method", "net", "--slice-axis", axis] + ([] if index is None else ["--slice-index", str(index)])
    args += ["--source-labels", str(EXAMPLES / "phantom3d_source_labels.nii.gz")]
    args += ["--target-labels", str(EXAMPLES / "phantom3d_target_labels.nii.gz")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["shape"] == list(shape) and metrics["inputs"]["slice"] == f"{axis}={'middle' if index is None else index}"
    assert np.load(tmp_path / "flow.npy").shape == (2, *shape)
    assert metrics["spacing_mm"] == ([1.5, 1.5] if axis == "z" else [4.0, 1.5])
    if axis == "z":  # the phantom moved within z slices: across them (x, y slices) part of the motion is out of plane
        assert metrics["dice"]["after"]["mean"] > metrics["dice"]["before"]["mean"] + 0.05


def test_cli_command_from_the_issue(tmp_path):
    """``python -m regcore register a.nii.gz b.nii.gz --out d`` as a user types it; bad slices exit 2 with one line."""
    run = subprocess.run(
        [sys.executable, "-m", "regcore", "register", str(PHANTOM["source"]), str(PHANTOM["target"]), "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert {"warped.png", "flow.npy", "metrics.json"} <= {p.name for p in (tmp_path / "d").iterdir()}
    volumes = [str(EXAMPLES / f"phantom3d_{role}.nii.gz") for role in ("source", "target")]
    bad = subprocess.run(
        [sys.executable, "-m", "regcore", "register", *volumes, "--out", str(tmp_path / "e"), "--slice-index", "12"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "slice z=12 is outside the volume" in bad.stderr
