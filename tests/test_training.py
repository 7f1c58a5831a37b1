import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regcore.checkpoints import load_model
from regcore.data import label_images, label_maps, make_batch, paint_labels, photo_pairs, random_fields
from regcore.nets import RegNet
from regcore.training import LossConfig, compute_loss, load_state, lr_factor, make_losses, save_state
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--enc", "4", "8", "8", "--dec", "8", "8", "8", "--size", "32", "--batch-size", "2", "--val-pairs", "2", "--workers", "0"]


def test_generator_is_seeded_and_consistent():
    a = make_batch(3, (40, 48), 5.0, torch.Generator().manual_seed(1), contrast=False)
    b = make_batch(3, (40, 48), 5.0, torch.Generator().manual_seed(1), contrast=False)
    assert torch.equal(a.source, b.source) and torch.equal(a.flow, b.flow)
    assert a.source.shape == (3, 1, 40, 48) and a.flow.shape == (3, 2, 40, 48)
    assert float(a.source.min()) >= 0 and float(a.source.max()) <= 1
    assert torch.allclose(warp(a.source, a.flow), a.target, atol=1e-6)  # the known field explains the pair
    c = make_batch(3, (40, 48), 5.0, torch.Generator().manual_seed(2))
    assert not torch.equal(a.source, c.source)


def test_label_images_paint_the_label_maps_of_the_same_random_stream():
    images = label_images(3, (40, 48), torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    maps, labels = label_maps(3, (40, 48), g)
    assert maps.shape == (3, 1, 40, 48) and maps.dtype == torch.int64 and 0 <= int(maps.min()) <= int(maps.max()) < labels
    assert torch.equal(paint_labels(maps, labels, g), images)
    # Values label_images gave before label_maps was split out of it: seeded data stays what it was.
    assert labels == 5 and int(maps.sum()) == 10663
    assert float(images.double().sum()) == pytest.approx(2062.72376, rel=1e-6)
    assert float(images[0, 0, 5, 7]) == pytest.approx(0.0332642, abs=1e-6)
    assert float(images[2, 0, 30, 40]) == pytest.approx(0.7360430, abs=1e-6)


def test_field_magnitudes_respect_the_limit():
    flows = random_fields(8, (64, 64), 6.0, torch.Generator().manual_seed(0))
    peak = flows.square().sum(dim=1).sqrt().amax(dim=(-2, -1))
    assert float(peak.max()) <= 6.0 * 1.05 and float(peak.min()) > 0.5


def test_photo_pairs_are_real_photographs_with_known_fields():
    pairs = photo_pairs(64, 4.0, seed=0, names=("camera", "coins"))
    assert pairs.source.shape == (2, 1, 64, 64)
    assert torch.allclose(warp(pairs.source, pairs.flow), pairs.target, atol=1e-6)
    inverted = photo_pairs(64, 4.0, seed=0, names=("camera", "coins"), contrast="invert")
    assert torch.allclose(inverted.target, 1 - pairs.target, atol=1e-6)


@pytest.mark.parametrize("recipe", ["unsup", "hybrid"])
def test_loss_recipes_name_their_terms(recipe):
    batch = make_batch(2, (32, 32), 3.0, torch.Generator().manual_seed(0))
    cfg = LossConfig(recipe=recipe)
    terms = compute_loss(torch.zeros_like(batch.flow), batch, cfg, *make_losses(cfg))
    assert {"sim", "reg", "total"} <= set(terms) and ("sup" in terms) == (recipe == "hybrid")
    perfect = compute_loss(batch.flow, batch, cfg, *make_losses(cfg))
    if recipe == "hybrid":
        assert perfect["sup"] < 1e-2 < terms["sup"]


def test_schedule_warms_up_then_decays():
    assert lr_factor(0.0) < lr_factor(0.02) == pytest.approx(1.0)
    assert lr_factor(0.5) < 1.0 and lr_factor(1.0) == pytest.approx(0.05)


def test_state_round_trip(tmp_path):
    net = RegNet(enc_features=(4, 8, 8), dec_features=(8, 8, 8))
    opt = torch.optim.Adam(net.parameters())
    x = torch.rand(1, 1, 16, 16)
    net(x, x).square().mean().backward()
    opt.step()
    save_state(tmp_path, net, opt, {"step": 7})
    net2 = RegNet(enc_features=(4, 8, 8), dec_features=(8, 8, 8))
    opt2 = torch.optim.Adam(net2.parameters())
    assert load_state(tmp_path, net2, opt2) == {"step": 7}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)


def _train(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "train.py", *TINY, *args] if launcher else [sys.executable, "train.py", *TINY, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)


def test_train_writes_checkpoint_log_card_and_resumes(tmp_path):
    out = tmp_path / "model"
    run = _train("--steps", "4", "--val-every", "2", "--out", str(out), "--device", "cpu")
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("model.safetensors", "config.json", "README.md", "train_log.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert load_model(out).levels == 3
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [r["step"] for r in rows if r["split"] == "val"] == ["2", "4"]
    assert "weights sha256" in (out / "README.md").read_text()
    again = _train("--steps", "6", "--val-every", "2", "--out", str(out), "--resume", "last", "--device", "cpu")
    assert again.returncode == 0, again.stderr[-2000:]
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [r["step"] for r in rows if r["split"] == "val"] == ["2", "4", "6"]


def test_distributed_data_parallel_with_gloo(tmp_path):
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    run = _train("--steps", "3", "--val-every", "3", "--out", str(tmp_path / "ddp"), "--device", "cpu", launcher=torchrun)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
