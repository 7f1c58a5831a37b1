"""The test set-up itself: a skip fails when CI forbids skips, and caches stay out of the user's home."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import conftest
import pytest

import regcore
from regcore import inference

TESTS = Path(__file__).resolve().parent
SKIPPING = {
    "inside a test": ("import pytest\n\ndef test_needs_a_browser():\n    pytest.skip('chromium is missing')\n", "chromium is missing"),
    "on import": (
        "import pytest\n\npytest.importorskip('no_such_module_xyz')\n\ndef test_never_runs():\n    pass\n",
        "could not import 'no_such_module_xyz'",
    ),
}


@pytest.mark.parametrize("where", SKIPPING)
@pytest.mark.parametrize("forbidden", [True, False])
def test_a_skip_fails_when_skips_are_forbidden(tmp_path, where, forbidden):
    text, reason = SKIPPING[where]
    (tmp_path / "test_skipping.py").write_text(text)
    (tmp_path / "test_passing.py").write_text("def test_passes():\n    assert True\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("REGCORE_NO_SKIP", None)
    if forbidden:
        env["REGCORE_NO_SKIP"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no_skips", "-p", "no:cacheprovider", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    if forbidden:
        assert run.returncode != 0, run.stdout
        assert f"REGCORE_NO_SKIP=1 forbids skips: {reason}" in run.stdout
    else:
        assert run.returncode == 0, run.stdout
        assert "1 passed, 1 skipped" in run.stdout


def test_the_tests_cache_their_onnx_exports_in_a_temporary_folder(photo):
    assert inference.cache_dir() == Path(conftest.CACHE)
    assert inference.cache_dir().is_relative_to(tempfile.gettempdir()) and not inference.cache_dir().is_relative_to(Path.home())
    regcore.register(photo, photo, method="net")
    if inference.onnx_enabled():  # an export made by any test lands here
        assert list(inference.cache_dir().glob("regnet-trunk-*.onnx"))
