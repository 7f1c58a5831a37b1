"""A short version of benchmarks/load.py: the real app under 2 concurrent API users for a few seconds.

Also sends the bad uploads of ``--probe`` first: each must get an error (never a hang or a
crash), and the server must keep serving afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _load_module():
    spec = importlib.util.spec_from_file_location("load_benchmark", ROOT / "benchmarks" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_app_under_concurrent_users_and_bad_uploads(photo, tmp_path):
    load = _load_module()
    # 64² keeps each request cheap: the test checks the machinery (queue, concurrency, outputs),
    # not the speed.
    small = np.round(photo[:64, :64] * 255).astype(np.uint8)
    Image.fromarray(small).save(tmp_path / "source.png")
    Image.fromarray(np.roll(small, (2, -1), axis=(0, 1))).save(tmp_path / "target.png")
    report = load.run_load(
        users=2,
        duration=4.0,
        pair=(tmp_path / "source.png", tmp_path / "target.png"),
        max_requests=3,
        request_timeout=120.0,
        warmup=None,
        sample_every=0.25,
        probe_bad=True,
        mix=load.parse_mix("register=2,deform=1,walkthrough=1"),
    )
    assert report["errors"] == 0, report["error_messages"]
    assert report["requests"] >= 2 and report["bad_outputs"] == 0  # every answer was what its endpoint returns
    assert set(report["endpoints"]) == {"register", "deform", "walkthrough"}
    assert sum(e["requests"] for e in report["endpoints"].values()) == report["requests"]
    assert report["server_alive_at_end"] and report["rss_peak_mb"] > 50
    assert 0 <= report["temp_peak_mb"] < 50  # the uploads and the files handed back, no more
    assert len(report["probe"]) == 6
    for name, outcome in report["probe"]:
        assert outcome.startswith("AppError: "), (name, outcome)  # an error message, not a hang or acceptance
    assert report["still_serving_after_probe"]
    too_small = dict(report["probe"])["4x4 image"]
    assert "too small to register" in too_small
    text = "\n".join(load._lines(report))
    assert "requests" in text and "p99" in text and "server temporary folder" in text


def test_the_mix_names_endpoints_and_weights():
    load = _load_module()
    assert load.parse_mix("register=5,deform=2") == {"register": 5.0, "deform": 2.0}
    assert load.parse_mix("register") == {"register": 1.0}
    for bad in ("bogus=1", "register=-1", "register=0", ""):
        with pytest.raises(ValueError):
            load.parse_mix(bad)


def test_the_temporary_folder_is_measured_while_files_come_and_go(tmp_path, monkeypatch):
    """The sampler walked the server's temporary folder while the app deleted old results: a folder
    vanishing mid-walk stopped it (and the RSS samples) halfway through a 10-minute run."""
    load = _load_module()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.bin").write_bytes(b"x" * 2**20)
    (tmp_path / "b").mkdir()  # listed, then gone when the walk reads it
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == tmp_path / "b":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert load.folder_mb(tmp_path) == 1.0
    assert load.folder_mb(tmp_path / "missing") == 0.0
