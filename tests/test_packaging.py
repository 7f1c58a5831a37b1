"""Packaging: the wheel carries the shipped checkpoints and an installed regcore finds them; the
pyproject's extras list what the requirements files install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from regcore.pipeline import DEFAULT_METHOD, METHODS

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.parent.name for p in (ROOT / "checkpoints").glob("*/model.safetensors"))
MODEL_FILES = ("model.safetensors", "config.json", "README.md")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requirements(path: Path) -> set[str]:
    """The requirements a file installs (following ``-r``), without regcore itself (``-e .``)."""
    found = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found |= _requirements(path.parent / line[3:].strip())
        elif line and not line.startswith("-e "):
            found.add(line)
    return found


def _extra(project: dict, name: str) -> set[str]:
    """An extra's requirements, with ``regcore[...]`` (the project's other extras) expanded."""
    found = set()
    for requirement in project["optional-dependencies"][name]:
        own = re.fullmatch(r"regcore\[(.+)\]", requirement)
        found |= set().union(*(_extra(project, e.strip()) for e in own.group(1).split(","))) if own else {requirement}
    return found


def test_extras_match_the_requirements_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = set(project["dependencies"])
    for extra, file in (("app", "requirements.txt"), ("dev", "requirements-dev.txt"), ("bench", "requirements-bench.txt")):
        installed = _requirements(ROOT / file)
        declared = core | _extra(project, extra)
        # torch: a range for the library, the pinned CPU build in the files (their only difference).
        assert {_name(r) for r in installed} == {_name(r) for r in declared}, file
        assert {r for r in installed if _name(r) != "torch"} == {r for r in declared if _name(r) != "torch"}, file
    assert "torch==2.13.0" in _requirements(ROOT / "requirements.txt")
    assert any(_name(r) == "torch" and ">=" in r and "==" not in r for r in core)
    for file in ("requirements-dev.txt", "requirements-bench.txt"):
        assert "-e ." in (ROOT / file).read_text().splitlines(), file


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of what it is made of (the checkout itself gets no build/ folder)."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is missing")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("regcore", "checkpoints"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "models"))
    # No build isolation: the build uses this environment's setuptools and downloads nothing (about 1 s).
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    (built,) = (work / "dist").glob("regcore-*.whl")
    return built


def test_the_wheel_carries_the_shipped_models(wheel):
    assert SHIPPED == ["mse", "ncc"]
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in SHIPPED:
        for file in MODEL_FILES:
            assert f"regcore/models/{model}/{file}" in names
            data = zipfile.ZipFile(wheel).read(f"regcore/models/{model}/{file}")
            assert data == (ROOT / "checkpoints" / model / file).read_bytes()
    assert not any(n.startswith(("benchmarks/", "webapp/", "tests/")) or n in ("app.py", "train.py") for n in names)


def test_the_installed_wheel_registers_with_the_network(wheel, tmp_path):
    """Unpacked as pip installs it, outside the repository: register() finds the packaged model."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import numpy as np, regcore; "
        "a = np.random.default_rng(0).random((32, 32)).astype(np.float32); "
        "print(regcore.__file__); print(regcore.checkpoints.checkpoint_dir()); "
        "print(regcore.register(a, np.roll(a, 1, 0)).method)"
    )
    env = {k: v for k, v in os.environ.items() if k != "REGCORE_CHECKPOINTS"} | {"PYTHONPATH": str(site), "REGCORE_ONNX": "0"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    package, models, method = run.stdout.split()
    assert Path(package).is_relative_to(site) and Path(models) == site / "regcore" / "models"
    assert method == DEFAULT_METHOD and METHODS[method].network  # the network path, not the fallback
