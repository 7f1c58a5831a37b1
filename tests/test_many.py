"""register-many: a CSV of pairs -> one folder per row and summary.csv; bad rows reported, re-runs
resume, network passes batched, and rows sharded across torchrun ranks (gloo)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regcore.cli import main
from regcore.errors import RegcoreError
from regcore.many import SUMMARY_COLUMNS, register_many
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _pair(folder: Path, i: int, size: int = 48) -> tuple[str, str]:
    """A textured image and the same image shifted by (1, -1) px, as 8-bit PNGs."""
    rng = np.random.default_rng(i)
    coarse = rng.random((size // 8, size // 8)).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None, None], size=(size, size), mode="bicubic", align_corners=True)
    image = image.clamp(0, 1)
    flow = torch.ones(1, 2, size, size)
    flow[:, 1] = -1
    moved = warp(image, flow)
    names = (f"s{i}.png", f"t{i}.png")
    for name, picture in zip(names, (image, moved), strict=True):
        Image.fromarray(np.round(picture[0, 0].numpy() * 255).astype(np.uint8)).save(folder / name)
    return names


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["source", "target", "source_labels", "target_labels"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def twenty(tmp_path) -> Path:
    """A 20-row CSV with relative paths; rows 3 and 4 carry label maps (the phantom, 2-D NIfTI)."""
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(20):
        source, target = _pair(data, i)
        rows.append({"source": f"data/{source}", "target": f"data/{target}"})
    for i in (2, 3):
        for role in ("source", "target", "source_labels", "target_labels"):
            shutil.copy(EXAMPLES / f"phantom_{role}.nii.gz", data)
            rows[i][role] = f"data/phantom_{role}.nii.gz"
    return _csv(tmp_path / "pairs.csv", rows)


def test_twenty_rows_give_twenty_folders_and_a_summary_and_a_rerun_does_nothing(twenty, tmp_path):
    out = tmp_path / "out"
    report = register_many(twenty, out, method="net", batch_size=8, progress=False)
    assert (report.registered, report.skipped, report.failed, report.processes) == (20, 0, 0, 1)
    folders = sorted((p for p in out.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in folders] == [str(n) for n in range(1, 21)]
    for folder in folders:
        assert {"warped.png", "flow.npy", "metrics.json"} <= {p.name for p in folder.iterdir()}
    lines = _summary(out)
    assert list(lines[0]) == list(SUMMARY_COLUMNS) and [line["row"] for line in lines] == [str(n) for n in range(1, 21)]
    assert all(line["status"] == "registered" and line["error"] == "" for line in lines)
    assert all(float(line["mse_after"]) < float(line["mse_before"]) for line in lines)
    assert lines[0]["source"] == str(tmp_path / "data" / "s0.png")  # relative to the CSV's folder
    # Dice only where labels were given; millimetres where the files have a spacing.
    assert [bool(line["dice_before"]) for line in lines] == [i in (2, 3) for i in range(20)]
    assert float(lines[2]["dice_after"]) > float(lines[2]["dice_before"]) and lines[2]["mean_displacement_mm"]
    assert (out / "3" / "warped_labels.png").exists() and not lines[0]["mean_displacement_mm"]

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "summary.csv"}
    again = register_many(twenty, out, method="net", progress=False)
    assert (again.registered, again.skipped, again.failed) == (0, 20, 0)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "summary.csv"}
    assert [line["status"] for line in _summary(out)] == ["done earlier"] * 20


def test_a_bad_row_is_reported_and_the_rest_complete_then_a_rerun_retries_it(tmp_path):
    for i in range(5):
        _pair(tmp_path, i)
    rows = [{"source": f"s{i}.png", "target": f"t{i}.png"} for i in range(5)]
    rows[1]["target"] = "missing.png"
    rows[3] = {"source": "s3.png", "target": ""}
    rows[4] |= {"source_labels": str(EXAMPLES / "phantom_source_labels.nii.gz")}  # 256² labels for a 48² image
    pairs = _csv(tmp_path / "pairs.csv", rows)
    report = register_many(pairs, tmp_path / "out", method="net", progress=False)
    assert (report.registered, report.failed) == (2, 3)
    lines = _summary(tmp_path / "out")
    assert [line["status"] for line in lines] == ["registered", "error", "registered", "error", "error"]
    assert lines[1]["error"] == f"target ({tmp_path / 'missing.png'}): no such file"
    assert lines[3]["error"] == "the target cell is empty"
    assert "the label map is 256x256 but the source image is 48x48" in lines[4]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1", "3", "summary.csv"]

    shutil.copy(tmp_path / "t1.png", tmp_path / "missing.png")  # fixed: only that row is registered now
    again = register_many(pairs, tmp_path / "out", method="net", progress=False)
    assert (again.registered, again.skipped, again.failed) == (1, 2, 2)
    assert [line["status"] for line in _summary(tmp_path / "out")][:3] == ["done earlier", "registered", "done earlier"]


def test_a_row_whose_files_or_method_changed_is_registered_again(tmp_path):
    for i in range(2):
        _pair(tmp_path, i)
    pairs = _csv(tmp_path / "pairs.csv", [{"source": "s0.png", "target": "t0.png"}])
    register_many(pairs, tmp_path / "out", method="net", progress=False)
    _csv(pairs, [{"source": "s1.png", "target": "t1.png"}])
    report = register_many(pairs, tmp_path / "out", method="net", progress=False)
    assert report.registered == 1
    metrics = tmp_path / "out" / "1" / "metrics.json"
    assert json.loads(metrics.read_text())["inputs"]["source"] == str(tmp_path / "s1.png")
    assert register_many(pairs, tmp_path / "out", method="dis-fast", progress=False).registered == 1
    assert json.loads(metrics.read_text())["method"] == "dis-fast"
    assert register_many(pairs, tmp_path / "out", method="dis-fast", progress=False).registered == 0


def test_batched_network_passes_give_the_fields_of_single_passes(tmp_path):
    for i in range(6):
        _pair(tmp_path, i)
    pairs = _csv(tmp_path / "pairs.csv", [{"source": f"s{i}.png", "target": f"t{i}.png"} for i in range(6)])
    register_many(pairs, tmp_path / "one", method="net", batch_size=1, progress=False)
    register_many(pairs, tmp_path / "six", method="net", batch_size=6, progress=False)
    for row in range(1, 7):
        single, batched = (np.load(tmp_path / run / str(row) / "flow.npy") for run in ("one", "six"))
        assert np.abs(single - batched).max() < 1e-3


def test_csv_problems_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("image,other\na.png,b.png\n")
    with pytest.raises(RegcoreError, match="needs the columns source and target"):
        register_many(tmp_path / "bad.csv", tmp_path / "out", method="net")
    assert main(["register-many", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read the pairs CSV" in capsys.readouterr().err
    with pytest.raises(RegcoreError, match="batch size"):
        register_many(tmp_path / "bad.csv", tmp_path / "out", batch_size=0)


def test_torchrun_shards_the_rows_across_two_gloo_processes(tmp_path):
    for i in range(6):
        _pair(tmp_path, i)
    pairs = _csv(tmp_path / "pairs.csv", [{"source": f"s{i}.png", "target": f"t{i}.png"} for i in range(6)])
    # Row 2 was done by an earlier run (of a CSV with that pair in its row 1): no rank gets it.
    register_many(_csv(tmp_path / "first.csv", [{"source": "s1.png", "target": "t1.png"}]), tmp_path / "early", method="net")
    shutil.copytree(tmp_path / "early" / "1", tmp_path / "out" / "2")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "REGCORE_ONNX": "0"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "regcore", "register-many"]
    started = time.monotonic()
    run = subprocess.run(
        [*command, str(pairs), "--out", str(tmp_path / "out"), "--method", "net"], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "registered 5 pairs" in run.stdout and "2 processes" in run.stdout and "1 already done" in run.stdout
    assert run.stdout.count("registered") == 1  # rank 0 reports; rank 1 stays quiet
    assert "rank 0" in run.stderr and "rank 1" in run.stderr  # one progress bar per rank
    lines = _summary(tmp_path / "out")
    assert [line["status"] for line in lines] == ["registered", "done earlier", *["registered"] * 4]
    assert all((tmp_path / "out" / str(n) / "metrics.json").exists() for n in range(1, 7))
