"""Shared fixtures: seeded test images, offline settings, caches in a temporary folder, no skips in CI."""

from __future__ import annotations

import os
import shutil
import tempfile

# Spinning OpenMP threads starve each other when the two cores are busy (seen: 15x slower); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

# With REGCORE_NO_SKIP=1 (CI), a skip is a failure (tests/no_skips.py).
from no_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(min(2, torch.get_num_threads()))
# What the tests cache (ONNX exports; the apps they start inherit this) stays out of the user's
# home, in a folder of this session's own.
CACHE = tempfile.mkdtemp(prefix="regcore-test-cache-")
os.environ["REGCORE_CACHE"] = CACHE


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph (scikit-image's camera), 96×96, float32 in [0, 1]."""
    from regcore.data import load_photo

    return load_photo("camera", 96)


@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch) -> None:
    """Pretend no checkpoint is shipped."""
    monkeypatch.setenv("REGCORE_CHECKPOINTS", str(tmp_path / "none"))
